//! Link flags for the BPF object.
//!
//! bpf-linker passes `--bpf-expand-memcpy-in-order` to LLVM by default, and with it LLVM never
//! expands a `memset` into stores: every zeroed array or struct literal becomes a call to a
//! byte-at-a-time loop, which the kernel's verifier then walks one byte per instruction on
//! every path that reaches it (more than half of each program's verification, and what made
//! `gate run` take seconds to start). Without the flag, LLVM expands small memsets and memcpys
//! into word stores, as clang does for C BPF programs.
fn main() {
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
