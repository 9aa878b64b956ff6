//! Events per second from the kernel to the audit file: a confined worker opens a file for
//! writing that the policy denies, N times; the process holding gate's engine drains the ring
//! buffer into a signed audit log through `gate::report::LogSink`, as `gate run --log` does.
use std::path::Path;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::util::{cstring, errno, now_ns};

/// N denied opens for write of `path`; each must fail with EPERM.
pub fn deny_loop(path: &Path, n: usize) -> Result<Value> {
    let path = cstring(path);
    let t_start = now_ns();
    for i in 0..n {
        // SAFETY: plain syscall on a valid C string.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: closing what we opened.
            unsafe { libc::close(fd) };
            bail!("open {i} of the denied file succeeded: not confined");
        }
        if errno() != libc::EPERM {
            bail!("open {i} failed with errno {} instead of EPERM", errno());
        }
    }
    Ok(json!({ "n": n, "t_start_ns": t_start, "loop_ns": now_ns() - t_start }))
}
