//! Who is on the other end of a control connection.
//!
//! `SO_PEERCRED` gives the uid, gid and pid the peer had when it connected; the groups and the
//! cgroup (is it confined?) come from the pid's /proc entry. A pid alone is not an identity: a
//! confined process could connect, hand the connection to a child and exit, and let the pid
//! be reused by an unconfined process. So the peer is held by a pidfd: `SO_PEERPIDFD` (Linux
//! 6.5+) names exactly the process that connected; older kernels get `pidfd_open` of the pid,
//! plus a check that the process started before the connection was accepted. Whatever is
//! read from /proc counts only if the pidfd's process is still alive afterwards (a pid is not
//! reused while its process lives), and its effective uid must be the one `SO_PEERCRED` gave.

use std::{
    fs, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{fs::MetadataExt, net::UnixStream},
    },
    path::Path,
    sync::Arc,
};

use crate::cgroup::Hierarchy;

/// `SO_PEERPIDFD` (include/uapi/asm-generic/socket.h, Linux 6.5).
const SO_PEERPIDFD: libc::c_int = 77;

/// The peer of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The peer's cgroup and its ancestors, by id (root first).
    pub cgroup_ids: Vec<u64>,
    /// The process itself (see the module's text).
    pidfd: Arc<OwnedFd>,
    /// Whether the pidfd came from `SO_PEERPIDFD` (exact) or `pidfd_open` of the pid.
    pub exact: bool,
}

impl Peer {
    /// Whether the process that connected is still alive.
    pub fn alive(&self) -> bool {
        // SAFETY: pidfd_send_signal with signal 0 only checks; the fd is ours.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) == 0
        }
    }
}

fn getsockopt<T>(s: &UnixStream, opt: libc::c_int, v: &mut T) -> io::Result<()> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: getsockopt into a value of the size given.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (v as *mut T).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The peer's pidfd: exact from the socket when the kernel can, else from its pid.
fn pidfd_of(s: &UnixStream, pid: i32) -> Result<(OwnedFd, bool), String> {
    let mut fd: libc::c_int = -1;
    if getsockopt(s, SO_PEERPIDFD, &mut fd).is_ok() && fd >= 0 {
        // SAFETY: the kernel gave us this new descriptor.
        return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, true));
    }
    // SAFETY: plain syscall; the result is a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(format!(
            "the connecting process (pid {pid}) is gone: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: as above.
    Ok((unsafe { OwnedFd::from_raw_fd(r as libc::c_int) }, false))
}

/// Clock ticks since boot when process `pid` started (/proc/PID/stat, field 22).
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Clock ticks since boot now (CLOCK_BOOTTIME, the clock of /proc/PID/stat's start time).
fn now_ticks() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ts.tv_sec as u64 * hz + ts.tv_nsec as u64 * hz / 1_000_000_000
}

/// Identifies the peer of `s`, a connection accepted just now.
pub fn peer_of(s: &UnixStream, h: &Hierarchy) -> Result<Peer, String> {
    let accepted = now_ticks();
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    getsockopt(s, libc::SO_PEERCRED, &mut cred).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let (pidfd, exact) = pidfd_of(s, cred.pid)?;
    let status = fs::read_to_string(format!("/proc/{}/status", cred.pid))
        .map_err(|e| format!("reading the peer's /proc entry: {e}"))?;
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let groups = field("Groups:");
    let euid = field("Uid:").get(1).copied();
    let cgroup = fs::read_to_string(format!("/proc/{}/cgroup", cred.pid))
        .map_err(|e| format!("reading the peer's cgroup: {e}"))?;
    let started = start_ticks(cred.pid);
    let rel = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("the peer is in no cgroup v2 (cannot tell whether it is confined)")?;
    let mut ids = Vec::new();
    let mut p = h.mount.clone();
    ids.push(fs::metadata(&p).map(|m| m.ino()).unwrap_or(0));
    for c in Path::new(rel.trim()).components() {
        if let std::path::Component::Normal(n) = c {
            p.push(n);
            ids.push(
                fs::metadata(&p)
                    .map(|m| m.ino())
                    .map_err(|e| format!("reading the peer's cgroup {}: {e}", p.display()))?,
            );
        }
    }
    let peer = Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        groups,
        cgroup_ids: ids,
        pidfd: Arc::new(pidfd),
        exact,
    };
    // Everything above was read from the process the pidfd holds only if it still lives.
    if !peer.alive() {
        return Err(format!(
            "the connecting process (pid {}) exited while it was identified",
            cred.pid
        ));
    }
    if euid != Some(cred.uid) {
        return Err(format!(
            "pid {} is not the process that connected (its uid is {euid:?}, the \
             connection's {})",
            cred.pid, cred.uid
        ));
    }
    if !exact && started.is_none_or(|t| t > accepted) {
        return Err(format!(
            "pid {} started after the connection was made: it is not the process that \
             connected",
            cred.pid
        ));
    }
    Ok(peer)
}
