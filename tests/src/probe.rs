//! The probe's operation table, shared by `gate-probe` and the scenario validator, and errno names.

/// One probe operation and its argument count.
pub struct OpSpec {
    pub name: &'static str,
    pub min_args: usize,
    /// `None`: any number of extra arguments (exec).
    pub max_args: Option<usize>,
    pub usage: &'static str,
}

const fn op(name: &'static str, n: usize, usage: &'static str) -> OpSpec {
    OpSpec {
        name,
        min_args: n,
        max_args: Some(n),
        usage,
    }
}

/// Every operation `gate-probe` knows.
pub const OPS: &[OpSpec] = &[
    op("open-read", 1, "PATH"),
    op("open-write", 1, "PATH"),
    op("open-append", 1, "PATH"),
    op("open-trunc", 1, "PATH"),
    op("create", 1, "PATH"),
    OpSpec {
        name: "exec",
        min_args: 1,
        max_args: None,
        usage: "PATH [ARGS...]",
    },
    op("unlink", 1, "PATH"),
    op("mkdir", 1, "PATH"),
    op("rmdir", 1, "PATH"),
    op("rename", 2, "FROM TO"),
    op("link", 2, "EXISTING NEW"),
    op("symlink", 2, "TARGET LINK"),
    op("mknod-fifo", 1, "PATH"),
    op("truncate", 2, "PATH LEN"),
    op("chmod", 2, "PATH OCTAL-MODE"),
    op("chown", 3, "PATH UID GID"),
    op("utimes", 1, "PATH"),
    op("pidfd-open", 0, ""),
    op("kill", 2, "SIGNAL PID"),
    op("ptrace-seize", 1, "PID"),
    op("vm-read", 1, "PID"),
    op("proc-mem", 1, "PID"),
    op("pidfd-getfd", 2, "PID FD"),
    op("clone-into-cgroup", 1, "CGROUP-DIR"),
    op("bpf-map-create", 0, ""),
    op("socket", 3, "FAMILY TYPE PROTOCOL"),
    op("memfd-truncate", 0, ""),
    op("setxattr", 3, "PATH NAME VALUE"),
    op("removexattr", 2, "PATH NAME"),
    op("set-acl", 1, "PATH"),
    op("sigio", 1, "PID"),
    op("rename-exchange", 2, "A B"),
    op("unix-connect", 1, "PATH|@NAME"),
    op("unix-send", 1, "PATH|@NAME"),
    op("unix-self", 1, "DIR"),
    op("mmap-exec", 1, "FILE"),
    op("mprotect-exec", 1, "FILE"),
    op("mmap-anon-exec", 0, ""),
    op("unshare-user", 0, ""),
    op("userns-mount", 1, "DIR"),
    op("mount-tmpfs", 1, "DIR"),
    op("bind-mount", 2, "SRC DST"),
    op("umount", 1, "DIR"),
    op("pivot-root", 1, "DIR"),
    op("move-mount", 2, "SRC DST"),
    op("init-module", 1, "FILE"),
    op("finit-module", 1, "FILE"),
    op("connect", 2, "ADDR PORT"),
    op("sendto", 2, "ADDR PORT"),
    op("sendto-burst", 3, "ADDR PORT COUNT"),
    op("fastopen", 2, "ADDR PORT"),
    op("listen", 3, "ADDR PORT SECONDS"),
    OpSpec {
        name: "seq",
        min_args: 2,
        max_args: None,
        usage: "N OP ARGS... [+ N OP ARGS...]...",
    },
];

impl OpSpec {
    /// Whether `n` arguments (after the operation's name) are right for it.
    pub fn takes(&self, n: usize) -> bool {
        n >= self.min_args && self.max_args.is_none_or(|m| n <= m)
    }
}

/// Looks an operation up by name.
pub fn find_op(name: &str) -> Option<&'static OpSpec> {
    OPS.iter().find(|s| s.name == name)
}

/// Checks an argument list (operation first) against the table.
pub fn validate(args: &[String]) -> Result<(), String> {
    let Some(name) = args.first() else {
        return Err("empty probe command".into());
    };
    let spec = find_op(name).ok_or_else(|| format!("unknown probe operation {name:?}"))?;
    let n = args.len() - 1;
    if !spec.takes(n) {
        return Err(format!(
            "probe {} takes {} (got {n} arguments)",
            spec.name, spec.usage
        ));
    }
    Ok(())
}

/// Symbolic name of an errno value (`EPERM`), or `E<number>` when unknown.
pub fn errno_name(e: i32) -> String {
    let errno = nix::errno::Errno::from_raw(e);
    if errno == nix::errno::Errno::UnknownErrno {
        format!("E{e}")
    } else {
        format!("{errno:?}")
    }
}

/// The message `strerror` gives for a symbolic errno name, for the few names scenarios use.
/// Shell steps have no probe output to read, only the message of the failing program.
pub fn strerror_text(name: &str) -> Option<&'static str> {
    Some(match name {
        "EPERM" => "Operation not permitted",
        "EACCES" => "Permission denied",
        "ENOENT" => "No such file or directory",
        "EXDEV" => "Invalid cross-device link",
        "ENETUNREACH" => "Network is unreachable",
        "ECONNREFUSED" => "Connection refused",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(errno_name(libc::EPERM), "EPERM");
        assert_eq!(errno_name(libc::EACCES), "EACCES");
        assert_eq!(errno_name(libc::ETIMEDOUT), "ETIMEDOUT");
        assert_eq!(errno_name(99999), "E99999");
    }

    #[test]
    fn arity() {
        let v = |a: &[&str]| validate(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(v(&["open-write", "/x"]).is_ok());
        assert!(v(&["open-write"]).is_err());
        assert!(v(&["rename", "a"]).is_err());
        assert!(v(&["exec", "/bin/true", "a", "b"]).is_ok());
        assert!(v(&["frobnicate"]).is_err());
        assert!(v(&[]).is_err());
    }
}
