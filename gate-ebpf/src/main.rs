//! gate's BPF LSM programs. One file per hook family; the shared decision logic is in
//! `decide` and `walk`, event emission in `event`.
//!
//! Everything the programs decide comes from maps that userspace fills from a compiled
//! policy: no policy is compiled into this object. Every hook first asks whether the current
//! task is confined (one inlined array read and one helper call); everyone else is let through
//! with the previous LSM program's return value untouched.
#![no_std]
#![no_main]
// `atomic_xadd` for quota counters (decide::over_limit).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod bpf;
mod capable;
mod decide;
mod event;
mod exec;
mod file_open;
mod flow;
mod kernel;
mod maps;
mod net;
mod path_ops;
mod process;
mod socket;
mod system;
mod unix;
mod walk;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
