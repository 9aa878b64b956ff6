//! Kernel decision events, decoded into what a person or a log wants to read.
use gate_common::{Event, decision, flag, hook, op, rule};
use serde::Serialize;

use crate::policy::CompiledPolicy;

/// One decision as gate reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Decision {
    pub op: &'static str,
    pub hook: &'static str,
    pub decision: &'static str,
    /// False when audit mode let a would-be denial through.
    pub enforced: bool,
    pub rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A socket that was to be created: family, type and protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// A system call refused as a whole (`bpf BPF_MAP_CREATE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// A capability a confined task was refused (`CAP_SYS_ADMIN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// Another process a confined task tried to reach (ptrace, a signal).
    #[serde(flatten)]
    pub target: Option<Target>,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    /// The kernel's decision came from the fail-closed rule for internal errors.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub internal_error: bool,
    /// The rule's quota was used up: its `over_limit` decision applied.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub over_limit: bool,
    /// The first allowed action of a network flow: the kernel counts the flow's later ones.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub flow: bool,
}

/// The process a ptrace access or a signal was aimed at, and what was tried.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Target {
    pub target_pid: u32,
    pub target_comm: String,
    /// `signal SIGTERM`, `ptrace attach`, `ptrace read`.
    pub action: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.target_pid == 0 {
            return f.write_str(&self.action);
        }
        write!(
            f,
            "{} to pid {} ({})",
            self.action, self.target_pid, self.target_comm
        )
    }
}

/// `SIGTERM`, `SIGRTMIN+3`, or the number.
pub fn signal_name(sig: u16) -> String {
    match nix::sys::signal::Signal::try_from(i32::from(sig)) {
        Ok(s) => s.as_str().to_owned(),
        Err(_) if (34..=64).contains(&sig) => format!("SIGRTMIN+{}", sig - 34),
        Err(_) => format!("signal {sig}"),
    }
}

/// A ptrace access mode (`PTRACE_MODE_*`): `ptrace attach`, `ptrace read`.
pub fn ptrace_mode_name(mode: u16) -> String {
    let kind = if mode & 0x02 != 0 { "attach" } else { "read" };
    format!("ptrace {kind}")
}

impl Decision {
    pub fn denied(&self) -> bool {
        self.decision != "allow"
    }

    /// The object in human terms: a path or address:port.
    pub fn object(&self) -> String {
        if let (Some(s), Some(p)) = (&self.syscall, &self.path) {
            return format!("{s} {p}");
        }
        if let Some(s) = self
            .socket
            .as_ref()
            .or(self.syscall.as_ref())
            .or(self.capability.as_ref())
        {
            return s.clone();
        }
        if let Some(t) = &self.target {
            return t.to_string();
        }
        match (&self.path, &self.addr, self.port) {
            (Some(p), _, _) => p.clone(),
            (None, Some(a), Some(port)) if a.contains(':') => format!("[{a}]:{port}"),
            (None, Some(a), Some(port)) => format!("{a}:{port}"),
            _ => String::from("?"),
        }
    }
}

/// Reads an `Event` out of a ring-buffer record; None if the record is too short.
pub fn parse(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < core::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: Event is repr(C) plain data, any bit pattern is valid, length checked above.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Rebuilds the path from the leaf-first components the kernel sent.
pub fn path_of(e: &Event) -> String {
    let n = (e.name_count as usize).min(e.names.len());
    // One slot per level; a filesystem root is named "/" (or empty if unreadable) and is not
    // part of the path.
    let mut parts: Vec<String> = e.names[..n]
        .iter()
        .map(|c| cstr(c))
        .filter(|c| !c.is_empty() && c != "/")
        .collect();
    parts.reverse();
    let joined = parts.join("/");
    if e.flags & flag::PATH_TRUNCATED != 0 {
        format!("…/{joined}")
    } else {
        format!("/{joined}")
    }
}

pub fn op_name(o: u8) -> &'static str {
    match o {
        op::EXEC => "exec",
        op::WRITE => "write",
        op::READ => "read",
        op::CONNECT => "connect",
        op::SOCKET => "socket",
        op::BPF => "bpf",
        op::CAPABILITY => "capability",
        op::PROCESS => "process",
        op::MOUNT => "mount",
        op::NAMESPACE => "namespace",
        op::MODULE => "module",
        _ => "unknown",
    }
}

fn decision_name(d: u8) -> &'static str {
    match d & decision::MASK {
        decision::ALLOW => "allow",
        decision::ASK => "ask",
        _ => "deny",
    }
}

/// The rule's id, or what decided when no rule did.
/// The rule's id; without the policy that decided (an event of an agent the reader no longer
/// knows), its number.
pub fn rule_name(policy: Option<&CompiledPolicy>, r: u16) -> String {
    match r {
        rule::DEFAULT => "default".into(),
        rule::LOCKDOWN => "lockdown".into(),
        rule::GATE_SELF => "gate-self".into(),
        rule::SOCKET_FAMILY => "socket-family".into(),
        rule::BPF => "bpf".into(),
        rule::CAPABILITY => "capability".into(),
        rule::OUTSIDE_AGENT => "outside-agent".into(),
        rule::CGROUP_MOVE => "cgroup-move".into(),
        rule::MOUNT => "mount".into(),
        rule::USER_NAMESPACE => "user-namespace".into(),
        rule::MODULE => "module".into(),
        rule::INTERNAL => "internal".into(),
        rule::INTERNAL_DISCONNECTED => "internal-disconnected".into(),
        rule::SELFTEST => "gate-selftest".into(),
        rule::AUDIT_REQUIRED => "audit-required".into(),
        i => policy
            .and_then(|p| p.rules.get(i as usize))
            .map(|m| m.id.clone())
            .unwrap_or_else(|| format!("#{i}")),
    }
}

/// The name of a bpf() command (`include/uapi/linux/bpf.h`).
pub fn bpf_cmd_name(cmd: u16) -> String {
    const NAMES: [&str; 37] = [
        "BPF_MAP_CREATE",
        "BPF_MAP_LOOKUP_ELEM",
        "BPF_MAP_UPDATE_ELEM",
        "BPF_MAP_DELETE_ELEM",
        "BPF_MAP_GET_NEXT_KEY",
        "BPF_PROG_LOAD",
        "BPF_OBJ_PIN",
        "BPF_OBJ_GET",
        "BPF_PROG_ATTACH",
        "BPF_PROG_DETACH",
        "BPF_PROG_TEST_RUN",
        "BPF_PROG_GET_NEXT_ID",
        "BPF_MAP_GET_NEXT_ID",
        "BPF_PROG_GET_FD_BY_ID",
        "BPF_MAP_GET_FD_BY_ID",
        "BPF_OBJ_GET_INFO_BY_FD",
        "BPF_PROG_QUERY",
        "BPF_RAW_TRACEPOINT_OPEN",
        "BPF_BTF_LOAD",
        "BPF_BTF_GET_FD_BY_ID",
        "BPF_TASK_FD_QUERY",
        "BPF_MAP_LOOKUP_AND_DELETE_ELEM",
        "BPF_MAP_FREEZE",
        "BPF_BTF_GET_NEXT_ID",
        "BPF_MAP_LOOKUP_BATCH",
        "BPF_MAP_LOOKUP_AND_DELETE_BATCH",
        "BPF_MAP_UPDATE_BATCH",
        "BPF_MAP_DELETE_BATCH",
        "BPF_LINK_CREATE",
        "BPF_LINK_UPDATE",
        "BPF_LINK_GET_FD_BY_ID",
        "BPF_LINK_GET_NEXT_ID",
        "BPF_ENABLE_STATS",
        "BPF_ITER_CREATE",
        "BPF_LINK_DETACH",
        "BPF_PROG_BIND_MAP",
        "BPF_TOKEN_CREATE",
    ];
    NAMES
        .get(usize::from(cmd))
        .map_or_else(|| format!("command {cmd}"), |n| (*n).to_string())
}

/// Waits until `fd` (the event ring buffer's) is readable or `timeout_ms` passed.
pub fn wait_readable(fd: std::os::fd::RawFd, timeout_ms: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polling one fd, with a pollfd that lives across the call.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}

/// Whether the event is about a unix socket (its object is the socket's file, if any).
fn is_unix(e: &Event) -> bool {
    e.hook == hook::UNIX_STREAM_CONNECT || e.hook == hook::UNIX_MAY_SEND
}

/// `@name` of a unix socket's abstract name (its length in the high byte of `port`; the
/// kernel sent its bytes up to the first NUL, as many as fit in `names[0]`), bytes other than
/// printable ASCII escaped, `…` for what was not sent.
fn abstract_name(e: &Event) -> String {
    let sent = e.names[0]
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(e.names[0].len());
    let len = usize::from(e.port >> 8).min(sent);
    let name: String = e.names[0][..len]
        .iter()
        .flat_map(|b| b.escape_ascii())
        .map(char::from)
        .collect();
    let more = if usize::from(e.port >> 8) > len {
        "…"
    } else {
        ""
    };
    format!("@{name}{more}")
}

/// Whether the event's object is (or has) a file: its path was sent.
fn has_path(e: &Event) -> bool {
    match e.op {
        op::EXEC | op::WRITE | op::READ | op::MOUNT => true,
        op::CONNECT => is_unix(e),
        op::MODULE => e.hook == hook::KERNEL_READ_FILE,
        _ => false,
    }
}

/// A system call or kernel action refused as a whole: `bpf BPF_MAP_CREATE`, `mount tmpfs`,
/// `module autoload binfmt-4d5a`.
fn syscall_of(e: &Event) -> Option<String> {
    Some(match e.op {
        op::BPF => format!("bpf {}", bpf_cmd_name(e.port)),
        op::MOUNT => mount_action(e.port, &cstr(&e.addr)),
        op::NAMESPACE => "create a user namespace".to_owned(),
        op::MODULE => match e.hook {
            hook::KERNEL_MODULE_REQUEST => format!("module autoload {}", cstr(&e.names[0])),
            hook::KERNEL_READ_FILE => format!("kernel reads a {} file", kernel_load_kind(e.port)),
            _ => format!("kernel loads a {} from memory", kernel_load_kind(e.port)),
        },
        _ => return None,
    })
}

/// What a mount-table change was (`mount_kind` in the programs' `system.rs`).
fn mount_action(code: u16, fstype: &str) -> String {
    match code {
        0 if fstype.is_empty() => "mount".to_owned(),
        0 => format!("mount {fstype}"),
        1 => "bind mount".to_owned(),
        2 => "move mount".to_owned(),
        3 => "remount".to_owned(),
        4 => "mount propagation change".to_owned(),
        5 => "umount".to_owned(),
        6 => "pivot_root".to_owned(),
        7 => "move_mount".to_owned(),
        n => format!("mount (kind {n})"),
    }
}

/// What the kernel was to load (`enum kernel_read_file_id`, `enum kernel_load_data_id`: the
/// same order).
fn kernel_load_kind(id: u16) -> &'static str {
    match id {
        1 => "firmware",
        2 => "module",
        3 => "kexec image",
        4 => "kexec initramfs",
        5 => "security policy",
        6 => "X.509 certificate",
        _ => "kernel data",
    }
}

/// A network destination as the kernel reports it: AF_INET's address in the first 4 bytes
/// (v4-mapped IPv6 addresses come as AF_INET), else the 16 bytes of an IPv6 address.
pub fn ip_addr(family: u16, addr: &[u8; 16]) -> std::net::IpAddr {
    if family == 2 {
        std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).into()
    } else {
        std::net::Ipv6Addr::from(*addr).into()
    }
}

pub fn decode(e: &Event, policy: &CompiledPolicy) -> Decision {
    decode_in(e, Some(policy))
}

/// As [`decode`]; `None` when the policy that decided is not known (rules by number).
pub fn decode_in(e: &Event, policy: Option<&CompiledPolicy>) -> Decision {
    let net = e.op == op::CONNECT && !is_unix(e);
    let socket = (e.op == op::SOCKET).then(|| {
        let protocol = i32::from_le_bytes([e.addr[0], e.addr[1], e.addr[2], e.addr[3]]);
        crate::policy::socket_kind_name(e.family, e.port, protocol)
    });
    let addr = net.then(|| ip_addr(e.family, &e.addr).to_string());
    let sev = e.decision & decision::MASK;
    Decision {
        op: op_name(e.op),
        hook: hook::NAMES
            .get(e.hook as usize)
            .copied()
            .unwrap_or("unknown"),
        decision: decision_name(e.decision),
        enforced: sev == decision::ALLOW || e.flags & flag::AUDIT_MODE == 0,
        rule: rule_name(policy, e.rule),
        path: has_path(e).then(|| {
            if is_unix(e) && e.port & 0xff == gate_common::unix_name::EVENT_CODE {
                abstract_name(e)
            } else if is_unix(e) && e.ino == 0 {
                "(unnamed unix socket)".to_owned()
            } else {
                path_of(e)
            }
        }),
        addr,
        port: net.then_some(e.port),
        socket,
        syscall: syscall_of(e),
        capability: (e.op == op::CAPABILITY).then(|| crate::policy::capability_name(e.port)),
        target: (e.op == op::PROCESS).then(|| Target {
            target_pid: e.ino as u32,
            target_comm: cstr(&e.addr),
            action: match e.hook {
                hook::TASK_KILL => format!("signal {}", signal_name(e.port)),
                // Signal 0: the default, SIGIO (F_SETSIG chooses another).
                hook::FILE_SEND_SIGIOTASK => {
                    let sig = if e.port == 0 {
                        libc::SIGIO as u16
                    } else {
                        e.port
                    };
                    format!("signal {} (F_SETOWN)", signal_name(sig))
                }
                hook::TASK_ALLOC => "clone into another cgroup".to_owned(),
                _ => ptrace_mode_name(e.port),
            },
        }),
        pid: e.pid,
        tgid: e.tgid,
        ppid: e.ppid,
        uid: e.uid,
        comm: cstr(&e.comm),
        cgroup_id: e.cgroup_id,
        ktime_ns: e.ktime_ns,
        internal_error: e.flags & flag::INTERNAL_ERROR != 0,
        over_limit: e.flags & flag::OVER_LIMIT != 0,
        flow: e.flags & flag::FLOW != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        // SAFETY: all-zero is a valid Event.
        unsafe { core::mem::zeroed() }
    }

    #[test]
    fn path_is_rebuilt_leaf_first() {
        let mut e = event();
        // Level 2 is a filesystem root (mount point crossing): its slot is empty.
        for (i, n) in ["id_rsa", ".ssh", "/", "root", "/"].iter().enumerate() {
            e.names[i][..n.len()].copy_from_slice(n.as_bytes());
        }
        e.name_count = 5;
        assert_eq!(path_of(&e), "/root/.ssh/id_rsa");
        e.flags = flag::PATH_TRUNCATED;
        assert_eq!(path_of(&e), "…/root/.ssh/id_rsa");
        e.name_count = 0;
        e.flags = 0;
        assert_eq!(path_of(&e), "/");
    }

    #[test]
    fn abstract_socket_names_are_shown_with_an_at_sign() {
        let mut e = event();
        e.op = op::CONNECT;
        e.hook = hook::UNIX_STREAM_CONNECT;
        e.port = gate_common::unix_name::EVENT_CODE | 7 << 8;
        e.names[0][..7].copy_from_slice(b"x11/\x01ab");
        assert_eq!(decode_in(&e, None).path.as_deref(), Some("@x11/\\x01ab"));
        // A NUL inside the name ends what the kernel sent.
        e.names[0][2] = 0;
        assert_eq!(decode_in(&e, None).path.as_deref(), Some("@x1…"));
        e.port = 0;
        assert_eq!(
            decode_in(&e, None).path.as_deref(),
            Some("(unnamed unix socket)")
        );
    }

    #[test]
    fn short_records_are_rejected() {
        assert!(parse(&[0u8; 10]).is_none());
        assert!(parse(&vec![0u8; core::mem::size_of::<Event>()]).is_some());
    }
}
