//! gate-probe: performs exactly one governed syscall and reports the errno the kernel returned.
//!
//! Output contract (relied on by `gate-kernel-tests` and the scenarios):
//! - success: prints `ok`, exits 0;
//! - failure: prints `errno=NAME` (symbolic, e.g. `errno=EPERM`), exits 1;
//! - usage error: message on stderr, exits 2.
//!
//! `exec` replaces the probe on success, so the exec'd program's status is the result.
//! `seq N OP ARGS... [+ N OP ARGS...]...` runs each operation N times in this one process (no exec
//! between them) and prints one line per part, `OP xN: RESULT xCOUNT ...` (e.g.
//! `open-write x500: errno=EPERM x500`), then exits 0; it floods the kernel with decisions.
//! `listen` is a helper for loopback tests, not a probe: it prints `listening` once bound,
//! accepts connections until its time is up, then prints `ok`.
//!
//! Network probes that could block on a real network (connect, fastopen) give up after
//! `GATE_PROBE_TIMEOUT` seconds (default 5) and report `errno=ETIMEDOUT`, so a missing denial
//! shows up as a wrong errno rather than a hung test. A denial by gate never waits: the LSM hook
//! fails the syscall before any packet leaves.

use std::ffi::{CString, OsString};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gate_tests::probe::{OPS, errno_name};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let Some(op) = args.first().and_then(|a| a.to_str()) else {
        return usage("missing operation");
    };
    let Some(spec) = OPS.iter().find(|s| s.name == op) else {
        return usage(&format!("unknown operation {op:?}"));
    };
    let rest = &args[1..];
    if op == "seq" {
        return match seq(rest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => usage(&msg),
        };
    }
    if !spec.takes(rest.len()) {
        return usage(&format!("{} takes {}", spec.name, spec.usage));
    }
    match run(op, rest) {
        Ok(Ok(())) => report(None),
        Ok(Err(errno)) => report(Some(errno)),
        Err(msg) => usage(&msg),
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("gate-probe: {msg}");
    eprintln!("usage: gate-probe OP ARGS...");
    for s in OPS {
        eprintln!("  {} {}", s.name, s.usage);
    }
    ExitCode::from(2)
}

fn report(errno: Option<i32>) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let code = match errno {
        None => {
            let _ = writeln!(out, "ok");
            0
        }
        Some(e) => {
            let _ = writeln!(out, "errno={}", errno_name(e));
            1
        }
    };
    let _ = out.flush();
    ExitCode::from(code)
}

/// Outer error: usage problem (exit 2). Inner error: the syscall's errno (exit 1).
type ProbeResult = Result<Result<(), i32>, String>;

fn cstr(a: &OsString) -> Result<CString, String> {
    CString::new(a.as_bytes()).map_err(|_| format!("argument {a:?} contains a NUL byte"))
}

fn text(a: &OsString) -> Result<&str, String> {
    a.to_str()
        .ok_or_else(|| format!("argument {a:?} is not UTF-8"))
}

fn int(a: &OsString) -> Result<i32, String> {
    text(a)?
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not a number"))
}

/// The start of a process's stack (field 28 of /proc/PID/stat; 0 when the kernel withholds
/// it from the reader).
fn stack_start(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace()
        .nth(25)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Turns a libc return value into the probe's result.
fn check(ret: libc::c_int) -> Result<(), i32> {
    if ret < 0 { Err(last_errno()) } else { Ok(()) }
}

fn open_with(path: &OsString, flags: libc::c_int) -> ProbeResult {
    let p = cstr(path)?;
    // SAFETY: p is a valid NUL-terminated string; mode is only read with O_CREAT.
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, 0o644 as libc::c_uint) };
    if fd < 0 {
        return Ok(Err(last_errno()));
    }
    // SAFETY: fd was just returned by open and is owned here.
    unsafe { libc::close(fd) };
    Ok(Ok(()))
}

fn run(op: &str, a: &[OsString]) -> ProbeResult {
    match op {
        "open-read" => open_with(&a[0], libc::O_RDONLY),
        "open-write" => open_with(&a[0], libc::O_WRONLY),
        "open-append" => open_with(&a[0], libc::O_WRONLY | libc::O_APPEND),
        "open-trunc" => open_with(&a[0], libc::O_WRONLY | libc::O_TRUNC),
        "create" => open_with(&a[0], libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL),
        "exec" => exec(a),
        "unlink" => {
            let p = cstr(&a[0])?;
            // SAFETY: valid C string.
            Ok(check(unsafe { libc::unlink(p.as_ptr()) }))
        }
        "mkdir" => {
            let p = cstr(&a[0])?;
            // SAFETY: valid C string.
            Ok(check(unsafe { libc::mkdir(p.as_ptr(), 0o755) }))
        }
        "rmdir" => {
            let p = cstr(&a[0])?;
            // SAFETY: valid C string.
            Ok(check(unsafe { libc::rmdir(p.as_ptr()) }))
        }
        "rename" => {
            let (from, to) = (cstr(&a[0])?, cstr(&a[1])?);
            // SAFETY: valid C strings.
            Ok(check(unsafe { libc::rename(from.as_ptr(), to.as_ptr()) }))
        }
        "link" => {
            let (from, to) = (cstr(&a[0])?, cstr(&a[1])?);
            // SAFETY: valid C strings.
            Ok(check(unsafe { libc::link(from.as_ptr(), to.as_ptr()) }))
        }
        "symlink" => {
            let (target, link) = (cstr(&a[0])?, cstr(&a[1])?);
            // SAFETY: valid C strings.
            Ok(check(unsafe {
                libc::symlink(target.as_ptr(), link.as_ptr())
            }))
        }
        "mknod-fifo" => {
            let p = cstr(&a[0])?;
            // SAFETY: valid C string; a FIFO needs no device number.
            Ok(check(unsafe {
                libc::mknod(p.as_ptr(), libc::S_IFIFO | 0o644, 0)
            }))
        }
        "truncate" => {
            let p = cstr(&a[0])?;
            let len: libc::off_t = text(&a[1])?
                .parse()
                .map_err(|_| format!("bad length {:?}", a[1]))?;
            // SAFETY: valid C string.
            Ok(check(unsafe { libc::truncate(p.as_ptr(), len) }))
        }
        "chmod" => {
            let p = cstr(&a[0])?;
            let mode = libc::mode_t::from_str_radix(text(&a[1])?, 8)
                .map_err(|_| format!("bad octal mode {:?}", a[1]))?;
            // SAFETY: valid C string.
            Ok(check(unsafe { libc::chmod(p.as_ptr(), mode) }))
        }
        "chown" => {
            let p = cstr(&a[0])?;
            let uid: libc::uid_t = text(&a[1])?
                .parse()
                .map_err(|_| format!("bad uid {:?}", a[1]))?;
            let gid: libc::gid_t = text(&a[2])?
                .parse()
                .map_err(|_| format!("bad gid {:?}", a[2]))?;
            // SAFETY: valid C string.
            Ok(check(unsafe { libc::chown(p.as_ptr(), uid, gid) }))
        }
        "utimes" => {
            let p = cstr(&a[0])?;
            // SAFETY: valid C string; a null times pointer sets both times to now.
            Ok(check(unsafe {
                libc::utimensat(libc::AT_FDCWD, p.as_ptr(), std::ptr::null(), 0)
            }))
        }
        // bpf(BPF_MAP_CREATE) of a one-entry array map.
        "bpf-map-create" => {
            let mut attr = [0u32; 32];
            attr[..4].copy_from_slice(&[2, 4, 4, 1]); // array, key 4, value 4, 1 entry
            // SAFETY: bpf() reads `size` bytes of the attribute buffer.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    0,
                    attr.as_ptr(),
                    std::mem::size_of_val(&attr) as u32,
                )
            };
            if fd < 0 {
                return Ok(Err(last_errno()));
            }
            // SAFETY: fd is ours.
            unsafe { libc::close(fd as libc::c_int) };
            Ok(Ok(()))
        }
        // socket(2) with numeric family, type and protocol.
        "socket" => {
            let n = |x: &OsString| -> Result<libc::c_int, String> {
                text(x)?.parse().map_err(|_| format!("bad number {x:?}"))
            };
            let (f, t, p) = (n(&a[0])?, n(&a[1])?, n(&a[2])?);
            // SAFETY: plain syscall.
            let fd = unsafe { libc::socket(f, t | libc::SOCK_CLOEXEC, p) };
            if fd < 0 {
                return Ok(Err(last_errno()));
            }
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
            Ok(Ok(()))
        }
        // pidfd_open of the probe itself (since 6.9 every new pidfd is opened read-write).
        "pidfd-open" => {
            // SAFETY: plain syscall; the result is a new descriptor or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
            if fd < 0 {
                return Ok(Err(last_errno()));
            }
            // SAFETY: fd was just returned and is owned here.
            unsafe { libc::close(fd as libc::c_int) };
            Ok(Ok(()))
        }
        // Another process: a signal, a ptrace seize, a read of its memory (process_vm_readv
        // at its stack start, or an open of /proc/PID/mem), an fd taken with pidfd_getfd.
        "kill" => {
            let (sig, pid) = (int(&a[0])?, int(&a[1])?);
            // SAFETY: plain syscall.
            Ok(check(unsafe { libc::kill(pid, sig) }))
        }
        "ptrace-seize" => {
            let pid = int(&a[0])?;
            // SAFETY: plain syscall; the tracee is released when the probe exits.
            let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) };
            Ok(check(r as libc::c_int))
        }
        "vm-read" => {
            let pid = int(&a[0])?;
            let at = stack_start(pid);
            let mut buf = [0u8; 8];
            let local = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let remote = libc::iovec {
                iov_base: at as *mut libc::c_void,
                iov_len: buf.len(),
            };
            // SAFETY: one local iovec over `buf`; the remote one is only read by the kernel.
            let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
            Ok(check(n as libc::c_int))
        }
        "proc-mem" => open_with(
            &OsString::from(format!("/proc/{}/mem", int(&a[0])?)),
            libc::O_RDONLY,
        ),
        "pidfd-getfd" => {
            let (pid, target_fd) = (int(&a[0])?, int(&a[1])?);
            // SAFETY: plain syscalls; descriptors returned are closed here.
            unsafe {
                let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
                if pidfd < 0 {
                    return Ok(Err(last_errno()));
                }
                let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd, target_fd, 0);
                let r = if fd < 0 { Err(last_errno()) } else { Ok(()) };
                if fd >= 0 {
                    libc::close(fd as libc::c_int);
                }
                libc::close(pidfd as libc::c_int);
                Ok(r)
            }
        }
        // clone3(CLONE_INTO_CGROUP): a child started in another cgroup; it exits at once.
        "clone-into-cgroup" => {
            let dir = cstr(&a[0])?;
            // SAFETY: a NUL-terminated path.
            let cg = unsafe { libc::open(dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY) };
            if cg < 0 {
                return Ok(Err(last_errno()));
            }
            // struct clone_args, version 2 (with `cgroup`): 11 u64 fields.
            let mut args = [0u64; 11];
            args[0] = 0x2_0000_0000; // CLONE_INTO_CGROUP
            args[4] = libc::SIGCHLD as u64; // exit_signal
            args[10] = cg as u64;
            // SAFETY: clone3 with a valid args block and no new stack: the child runs on a copy
            // of this one and only calls _exit.
            let pid = unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    args.as_ptr(),
                    std::mem::size_of_val(&args),
                )
            };
            if pid == 0 {
                // SAFETY: the child leaves at once.
                unsafe { libc::_exit(0) };
            }
            let r = if pid < 0 { Err(last_errno()) } else { Ok(()) };
            if pid > 0 {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
            }
            // SAFETY: cg is ours.
            unsafe { libc::close(cg) };
            Ok(r)
        }
        // memfd_create, then ftruncate and a write-open of it through /proc/self/fd.
        "memfd-truncate" => {
            let name = c"gate-probe";
            // SAFETY: a NUL-terminated name.
            let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Ok(Err(last_errno()));
            }
            // SAFETY: fd is ours.
            let r = check(unsafe { libc::ftruncate(fd, 4096) });
            let reopened = r.and_then(|()| {
                let p = CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
                // SAFETY: a NUL-terminated path.
                let fd2 = unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
                if fd2 < 0 {
                    return Err(last_errno());
                }
                // SAFETY: fd2 is ours.
                unsafe { libc::close(fd2) };
                Ok(())
            });
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
            Ok(reopened)
        }
        // renameat2(RENAME_EXCHANGE): the two names swap their files.
        "rename-exchange" => {
            let (x, y) = (cstr(&a[0])?, cstr(&a[1])?);
            const RENAME_EXCHANGE: libc::c_uint = 2;
            // SAFETY: NUL-terminated paths.
            Ok(check(unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    x.as_ptr(),
                    libc::AT_FDCWD,
                    y.as_ptr(),
                    RENAME_EXCHANGE,
                )
            }))
        }
        // SIGIO by F_SETOWN: a socket pair whose first end signals PID when data arrives
        // (O_ASYNC), then data sent to it. The kernel sends the signal; the probe reports
        // whether the set-up calls succeeded.
        "sigio" => {
            let pid = int(&a[0])?;
            let mut fds = [0; 2];
            // SAFETY: plain syscalls on descriptors made and closed here.
            unsafe {
                if libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) < 0 {
                    return Ok(Err(last_errno()));
                }
                let r = check(libc::fcntl(fds[0], libc::F_SETOWN, pid))
                    .and_then(|()| check(libc::fcntl(fds[0], libc::F_SETFL, libc::O_ASYNC)))
                    .and_then(|()| check(libc::write(fds[1], b"x".as_ptr().cast(), 1) as i32));
                libc::close(fds[0]);
                libc::close(fds[1]);
                Ok(r)
            }
        }
        // Unix sockets: a stream connect, a datagram sent (to a path, or `@name` for an
        // abstract socket), and a socket of the probe's own (bound in DIR, then connected to).
        "unix-connect" => Ok(unix_to(&a[0], libc::SOCK_STREAM)?),
        "unix-send" => Ok(unix_to(&a[0], libc::SOCK_DGRAM)?),
        "unix-self" => {
            let path =
                std::path::Path::new(&a[0]).join(format!("probe-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let listener = match std::os::unix::net::UnixListener::bind(&path) {
                Ok(l) => l,
                Err(e) => return Ok(Err(e.raw_os_error().unwrap_or(libc::EIO))),
            };
            let r = std::os::unix::net::UnixStream::connect(&path)
                .map(drop)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
            drop(listener);
            let _ = std::fs::remove_file(&path);
            Ok(r)
        }
        // Code without exec: a file's first page mapped executable (mmap with PROT_EXEC, or
        // mapped readable, then mprotect to PROT_EXEC), and anonymous executable memory.
        "mmap-exec" | "mprotect-exec" => {
            let p = cstr(&a[0])?;
            let direct = op == "mmap-exec";
            // SAFETY: a NUL-terminated path; the mapping and descriptor are released here.
            unsafe {
                let fd = libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Ok(Err(last_errno()));
                }
                let prot = if direct {
                    libc::PROT_READ | libc::PROT_EXEC
                } else {
                    libc::PROT_READ
                };
                let m = libc::mmap(std::ptr::null_mut(), 4096, prot, libc::MAP_PRIVATE, fd, 0);
                let r = if m == libc::MAP_FAILED {
                    Err(last_errno())
                } else if direct {
                    Ok(())
                } else {
                    check(libc::mprotect(m, 4096, libc::PROT_READ | libc::PROT_EXEC))
                };
                if m != libc::MAP_FAILED {
                    libc::munmap(m, 4096);
                }
                libc::close(fd);
                Ok(r)
            }
        }
        "mmap-anon-exec" => {
            // SAFETY: an anonymous mapping, released here.
            unsafe {
                let m = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if m == libc::MAP_FAILED {
                    return Ok(Err(last_errno()));
                }
                libc::munmap(m, 4096);
                Ok(Ok(()))
            }
        }
        // Extended attributes, and a POSIX ACL that lets user nobody (65534) read and write.
        "setxattr" => {
            let (p, name) = (cstr(&a[0])?, cstr(&a[1])?);
            let value = a[2].as_bytes();
            // SAFETY: NUL-terminated path and name; the value outlives the call.
            Ok(check(unsafe {
                libc::setxattr(
                    p.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            }))
        }
        "removexattr" => {
            let (p, name) = (cstr(&a[0])?, cstr(&a[1])?);
            // SAFETY: NUL-terminated path and name.
            Ok(check(unsafe {
                libc::removexattr(p.as_ptr(), name.as_ptr())
            }))
        }
        "set-acl" => {
            let p = cstr(&a[0])?;
            // posix_acl_xattr (include/uapi/linux/posix_acl_xattr.h): version 2, then (tag,
            // perm, id) entries sorted by tag: user::rw- user:65534:rw- group::r-- mask::rw-
            // other::---.
            const UNDEFINED: u32 = u32::MAX;
            let entries: [(u16, u16, u32); 5] = [
                (0x01, 6, UNDEFINED),
                (0x02, 6, 65534),
                (0x04, 4, UNDEFINED),
                (0x10, 6, UNDEFINED),
                (0x20, 0, UNDEFINED),
            ];
            let mut value = 2u32.to_le_bytes().to_vec();
            for (tag, perm, id) in entries {
                value.extend_from_slice(&tag.to_le_bytes());
                value.extend_from_slice(&perm.to_le_bytes());
                value.extend_from_slice(&id.to_le_bytes());
            }
            let name = c"system.posix_acl_access";
            // SAFETY: NUL-terminated path and name; the value outlives the call.
            Ok(check(unsafe {
                libc::setxattr(
                    p.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            }))
        }
        // The mount table, in a mount namespace of the probe's own (its mounts are private
        // first, so nothing reaches the caller's namespace): a tmpfs, a bind mount, an umount,
        // pivot_root, the new mount API's move_mount. Each reports the call it is named for;
        // the set-up calls before it (making mounts private, a bind to make a mount point) are
        // best effort.
        "mount-tmpfs" => {
            let dir = cstr(&a[0])?;
            if let Err(e) = private_mount_ns(false) {
                return Ok(Err(e));
            }
            Ok(mount(c"none", &dir, Some(c"tmpfs"), 0))
        }
        "bind-mount" => {
            let (src, dst) = (cstr(&a[0])?, cstr(&a[1])?);
            if let Err(e) = private_mount_ns(false) {
                return Ok(Err(e));
            }
            Ok(mount(&src, &dst, None, libc::MS_BIND))
        }
        "umount" => {
            let dir = cstr(&a[0])?;
            if let Err(e) = private_mount_ns(false) {
                return Ok(Err(e));
            }
            // SAFETY: a NUL-terminated path.
            Ok(check(unsafe { libc::umount2(dir.as_ptr(), 0) }))
        }
        "pivot-root" => {
            let dir = cstr(&a[0])?;
            if let Err(e) = private_mount_ns(false) {
                return Ok(Err(e));
            }
            // pivot_root needs the new root to be a mount point.
            let _ = mount(&dir, &dir, None, libc::MS_BIND);
            // SAFETY: NUL-terminated paths; the pivot happens in the probe's own namespace.
            unsafe {
                if libc::chdir(dir.as_ptr()) < 0 {
                    return Ok(Err(last_errno()));
                }
                let dot = c".";
                Ok(check(
                    libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int,
                ))
            }
        }
        "move-mount" => {
            let (src, dst) = (cstr(&a[0])?, cstr(&a[1])?);
            if let Err(e) = private_mount_ns(false) {
                return Ok(Err(e));
            }
            const OPEN_TREE_CLONE: libc::c_long = 1;
            const MOVE_MOUNT_F_EMPTY_PATH: libc::c_long = 4;
            // SAFETY: NUL-terminated paths; the detached tree's descriptor is closed here.
            unsafe {
                let fd = libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    src.as_ptr(),
                    OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_long,
                );
                if fd < 0 {
                    return Ok(Err(last_errno()));
                }
                let r = libc::syscall(
                    libc::SYS_move_mount,
                    fd,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    dst.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                );
                let r = check(r as libc::c_int);
                libc::close(fd as libc::c_int);
                Ok(r)
            }
        }
        // A user namespace, and a tmpfs mounted inside one (with a mount namespace of its own).
        "unshare-user" => {
            // SAFETY: plain syscall; the probe is single-threaded.
            Ok(check(unsafe { libc::unshare(libc::CLONE_NEWUSER) }))
        }
        "userns-mount" => {
            let dir = cstr(&a[0])?;
            if let Err(e) = private_mount_ns(true) {
                return Ok(Err(e));
            }
            Ok(mount(c"none", &dir, Some(c"tmpfs"), 0))
        }
        // Kernel code: a module image from memory (init_module) or from a file
        // (finit_module).
        "init-module" => {
            let image = std::fs::read(&a[0]).map_err(|e| format!("reading {:?}: {e}", a[0]))?;
            // SAFETY: the image buffer and the empty parameter string outlive the call.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_init_module,
                    image.as_ptr(),
                    image.len(),
                    c"".as_ptr(),
                )
            };
            Ok(check(r as libc::c_int))
        }
        "finit-module" => {
            let p = cstr(&a[0])?;
            // SAFETY: a NUL-terminated path; the descriptor is closed here.
            unsafe {
                let fd = libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Ok(Err(last_errno()));
                }
                let r = libc::syscall(libc::SYS_finit_module, fd, c"".as_ptr(), 0);
                let r = check(r as libc::c_int);
                libc::close(fd);
                Ok(r)
            }
        }
        "connect" => connect(sockaddr_arg(&a[0], &a[1])?),
        "sendto" => sendto_udp(sockaddr_arg(&a[0], &a[1])?),
        "sendto-burst" => {
            let count: u32 = text(&a[2])?
                .parse()
                .map_err(|_| format!("bad count {:?}", a[2]))?;
            sendto_burst(sockaddr_arg(&a[0], &a[1])?, count)
        }
        "fastopen" => fastopen(sockaddr_arg(&a[0], &a[1])?),
        "listen" => {
            let secs: u64 = text(&a[2])?
                .parse()
                .map_err(|_| format!("bad seconds {:?}", a[2]))?;
            listen(sockaddr_arg(&a[0], &a[1])?, Duration::from_secs(secs))
        }
        other => Err(format!("operation {other:?} not implemented")),
    }
}

/// A unix socket of type `ty` connected to `target` (a path, or `@name`: abstract); for a
/// datagram socket, one datagram sent to it instead.
fn unix_to(target: &OsString, ty: libc::c_int) -> ProbeResult {
    let name = target.as_bytes();
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (bytes, abstract_) = match name.strip_prefix(b"@") {
        Some(rest) => (rest, true),
        None => (name, false),
    };
    let start = usize::from(abstract_);
    if bytes.len() + start >= addr.sun_path.len() {
        return Err(format!("{target:?} is too long for a unix socket address"));
    }
    for (i, b) in bytes.iter().enumerate() {
        addr.sun_path[start + i] = *b as libc::c_char;
    }
    let len =
        std::mem::size_of::<libc::sa_family_t>() + start + bytes.len() + usize::from(!abstract_);
    // SAFETY: plain syscalls with a valid address of `len` bytes; the socket is closed here.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Ok(Err(last_errno()));
        }
        let sa = (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>();
        let r = if ty == libc::SOCK_DGRAM {
            let msg = b"gate-probe";
            let n = libc::sendto(
                fd,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                sa,
                len as libc::socklen_t,
            );
            check(n as libc::c_int)
        } else {
            check(libc::connect(fd, sa, len as libc::socklen_t))
        };
        libc::close(fd);
        Ok(r)
    }
}

/// Moves the probe into a mount namespace of its own (and a user namespace first with
/// `user`), whose mounts are then made private (best effort) so that nothing done in it
/// reaches the caller's namespace.
fn private_mount_ns(user: bool) -> Result<(), i32> {
    let flags = if user {
        libc::CLONE_NEWUSER | libc::CLONE_NEWNS
    } else {
        libc::CLONE_NEWNS
    };
    // SAFETY: plain syscall; the probe is single-threaded.
    check(unsafe { libc::unshare(flags) })?;
    let _ = mount(c"none", c"/", None, libc::MS_REC | libc::MS_PRIVATE);
    Ok(())
}

/// mount(2) without data.
fn mount(
    src: &std::ffi::CStr,
    dst: &std::ffi::CStr,
    fstype: Option<&std::ffi::CStr>,
    flags: libc::c_ulong,
) -> Result<(), i32> {
    let t = fstype.map_or(std::ptr::null(), |t| t.as_ptr());
    // SAFETY: NUL-terminated strings (or NULL for the type), no data.
    check(unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), t, flags, std::ptr::null()) })
}

/// `seq`: each part (`N OP ARGS...`, parts separated by `+`) runs N times; one tally line each.
fn seq(args: &[OsString]) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    for part in args.split(|a| a.as_bytes() == b"+") {
        let [n, op, rest @ ..] = part else {
            return Err("seq parts are N OP ARGS...".into());
        };
        let n: u32 = text(n)?.parse().map_err(|_| format!("bad count {n:?}"))?;
        let op = text(op)?;
        let spec = OPS
            .iter()
            .find(|s| s.name == op && s.name != "exec" && s.name != "seq" && s.name != "listen")
            .ok_or_else(|| format!("seq cannot repeat {op:?}"))?;
        if !spec.takes(rest.len()) {
            return Err(format!("{} takes {}", spec.name, spec.usage));
        }
        // Results in the order first seen, with counts.
        let mut tally: Vec<(String, u32)> = Vec::new();
        for _ in 0..n {
            let r = match run(op, rest)? {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("errno={}", errno_name(e)),
            };
            match tally.iter_mut().find(|(k, _)| *k == r) {
                Some((_, c)) => *c += 1,
                None => tally.push((r, 1)),
            }
        }
        let counts: Vec<String> = tally.iter().map(|(k, c)| format!("{k} x{c}")).collect();
        let _ = writeln!(out, "{op} x{n}: {}", counts.join(" "));
        let _ = out.flush();
    }
    Ok(())
}

fn exec(a: &[OsString]) -> ProbeResult {
    let path = cstr(&a[0])?;
    let argv: Vec<CString> = a.iter().map(cstr).collect::<Result<_, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).map_err(|_| "environment contains a NUL byte".to_string())
        })
        .collect::<Result<_, _>>()?;
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|c| c.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let _ = std::io::stdout().flush();
    // SAFETY: all pointers are NUL-terminated strings kept alive above, arrays null-terminated.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
    Ok(Err(last_errno()))
}

fn sockaddr_arg(addr: &OsString, port: &OsString) -> Result<SocketAddr, String> {
    let ip: IpAddr = text(addr)?
        .parse()
        .map_err(|_| format!("bad address {addr:?}"))?;
    let port: u16 = text(port)?
        .parse()
        .map_err(|_| format!("bad port {port:?}"))?;
    Ok(SocketAddr::new(ip, port))
}

/// A socket address in its C form, with its length.
struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
    family: libc::c_int,
}

impl RawAddr {
    fn new(addr: SocketAddr) -> Self {
        // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let (len, family) = match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
                (std::mem::size_of::<libc::sockaddr_in>(), libc::AF_INET)
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: 0,
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
                (std::mem::size_of::<libc::sockaddr_in6>(), libc::AF_INET6)
            }
        };
        Self {
            storage,
            len: len as libc::socklen_t,
            family,
        }
    }

    fn ptr(&self) -> *const libc::sockaddr {
        &self.storage as *const _ as *const libc::sockaddr
    }
}

/// A socket closed on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by this value.
        unsafe { libc::close(self.0) };
    }
}

fn socket(family: libc::c_int, ty: libc::c_int) -> Result<Fd, i32> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        Err(last_errno())
    } else {
        Ok(Fd(fd))
    }
}

fn probe_timeout() -> Duration {
    let secs = std::env::var("GATE_PROBE_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

/// Waits until the socket is writable (connected) or failed; returns its pending error.
fn wait_connected(fd: &Fd, timeout: Duration) -> Result<(), i32> {
    let mut pfd = libc::pollfd {
        fd: fd.0,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        return Err(last_errno());
    }
    if n == 0 {
        return Err(libc::ETIMEDOUT);
    }
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err and len are valid for getsockopt(SO_ERROR).
    let r = unsafe {
        libc::getsockopt(
            fd.0,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut _ as *mut _,
            &mut len,
        )
    };
    if r < 0 {
        return Err(last_errno());
    }
    if err != 0 { Err(err) } else { Ok(()) }
}

fn connect(addr: SocketAddr) -> ProbeResult {
    let raw = RawAddr::new(addr);
    let fd = match socket(raw.family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => return Ok(Err(e)),
    };
    // SAFETY: raw holds a valid address of raw.len bytes.
    let r = unsafe { libc::connect(fd.0, raw.ptr(), raw.len) };
    if r == 0 {
        return Ok(Ok(()));
    }
    let e = last_errno();
    if e != libc::EINPROGRESS {
        return Ok(Err(e));
    }
    Ok(wait_connected(&fd, probe_timeout()))
}

fn sendto_udp(addr: SocketAddr) -> ProbeResult {
    let raw = RawAddr::new(addr);
    let fd = match socket(raw.family, libc::SOCK_DGRAM) {
        Ok(fd) => fd,
        Err(e) => return Ok(Err(e)),
    };
    let buf = b"gate-probe";
    // SAFETY: buf and raw are valid for the given lengths.
    let r = unsafe { libc::sendto(fd.0, buf.as_ptr().cast(), buf.len(), 0, raw.ptr(), raw.len) };
    Ok(if r < 0 { Err(last_errno()) } else { Ok(()) })
}

/// `count` datagrams from one UDP socket to `addr`: the first failure ends the burst.
fn sendto_burst(addr: SocketAddr, count: u32) -> ProbeResult {
    let raw = RawAddr::new(addr);
    let fd = match socket(raw.family, libc::SOCK_DGRAM) {
        Ok(fd) => fd,
        Err(e) => return Ok(Err(e)),
    };
    let buf = b"gate-probe";
    for _ in 0..count {
        // SAFETY: buf and raw are valid for the given lengths.
        let r =
            unsafe { libc::sendto(fd.0, buf.as_ptr().cast(), buf.len(), 0, raw.ptr(), raw.len) };
        if r < 0 {
            return Ok(Err(last_errno()));
        }
    }
    Ok(Ok(()))
}

fn fastopen(addr: SocketAddr) -> ProbeResult {
    let raw = RawAddr::new(addr);
    let fd = match socket(raw.family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => return Ok(Err(e)),
    };
    let buf = b"gate-probe";
    // SAFETY: buf and raw are valid for the given lengths.
    let r = unsafe {
        libc::sendto(
            fd.0,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_FASTOPEN,
            raw.ptr(),
            raw.len,
        )
    };
    if r >= 0 {
        return Ok(Ok(()));
    }
    let e = last_errno();
    if e != libc::EINPROGRESS {
        return Ok(Err(e));
    }
    // No cookie yet: the kernel sent a plain SYN and the connect is under way.
    Ok(wait_connected(&fd, probe_timeout()))
}

fn listen(addr: SocketAddr, duration: Duration) -> ProbeResult {
    let raw = RawAddr::new(addr);
    let fd = match socket(raw.family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => return Ok(Err(e)),
    };
    let one: libc::c_int = 1;
    // SAFETY: valid option value.
    unsafe {
        libc::setsockopt(
            fd.0,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const _,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // SAFETY: raw holds a valid address of raw.len bytes.
    if let Err(e) = check(unsafe { libc::bind(fd.0, raw.ptr(), raw.len) }) {
        return Ok(Err(e));
    }
    // SAFETY: plain syscall.
    if let Err(e) = check(unsafe { libc::listen(fd.0, 128) }) {
        return Ok(Err(e));
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening");
        let _ = out.flush();
    }
    let deadline = Instant::now() + duration;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Ok(()));
        }
        let mut pfd = libc::pollfd {
            fd: fd.0,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            // SAFETY: null address pointers are allowed.
            let c = unsafe {
                libc::accept4(
                    fd.0,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if c >= 0 {
                drop(Fd(c));
            }
        }
    }
}
