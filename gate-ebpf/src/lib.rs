#![no_std]
// The programs live in the `gate` binary target (src/main.rs); this library target exists so
// that gate-userspace can name gate-ebpf as a build dependency and be rebuilt when it changes.
