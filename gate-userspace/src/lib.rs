//! gate: confine AI agents in the kernel with BPF LSM.
//!
//! - [`policy`]: TOML policy parsing and compilation into map contents (pure, no kernel).
//! - [`audit`]: the signed, hash-chained audit stream.
//! - [`btf`]: kernel struct offsets from the running kernel's BTF.
//! - [`engine`]: loads the eBPF object, fills its maps, attaches and pins it.
//! - [`enforcer`]: the seam in front of the kernel, and an in-memory engine for host tests.
//! - [`cgroup`], [`state`]: the run's cgroup, pins and state directories.
//! - [`run`]: `gate run`, confining one command tree in a fresh cgroup.
//! - [`events`], [`report`]: decoding kernel events; the decision log and the summary.
//! - [`doctor`]: can this host enforce?
//! - [`approval`]: approvals of `ask` rules: durations, signed tokens, the replay store.

pub mod approval;
pub mod audit;
pub mod btf;
pub mod cgroup;
pub mod daemon;
pub mod doctor;
pub mod enforcer;
pub mod engine;
pub mod events;
pub mod flows;
pub mod policy;
pub mod report;
pub mod run;
pub mod session;
pub mod state;
