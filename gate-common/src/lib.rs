//! The binary contract between gate's kernel programs and its userspace.
//!
//! Every type here crosses the user/kernel boundary through a BPF map or the event ring buffer,
//! so each is `#[repr(C)]`, has explicit padding fields and a size pinned at compile time.
//! Shipped constants are never renumbered: a new value gets a new number.
#![no_std]

/// Operations a policy rule can govern.
pub mod op {
    pub const EXEC: u8 = 0;
    pub const WRITE: u8 = 1;
    pub const READ: u8 = 2;
    pub const CONNECT: u8 = 3;
    /// Number of file operations kept per inode rule (exec, write, read, one spare).
    pub const FILE_OPS: usize = 4;
    /// Creating a socket of a family (or kind) the policy does not allow; decided by
    /// `AgentConfig::sockets`, not by rules or defaults.
    pub const SOCKET: u8 = 4;
    /// The bpf() system call: denied to every confined task (loading programs, reading or
    /// writing maps, opening pins, detaching links).
    pub const BPF: u8 = 5;
    /// A capability a confined task used (its kernel capability check), decided by
    /// `AgentConfig::caps`: a confined root is no stronger than its policy.
    pub const CAPABILITY: u8 = 6;
    /// Reaching another process: ptrace access (attach, seize, process_vm_readv/writev,
    /// `/proc/PID/mem` and the other ptrace-guarded /proc files, pidfd_getfd, kcmp) and
    /// signals. A confined task may reach only tasks of its own agent.
    pub const PROCESS: u8 = 7;
    /// Changing the mount table: mount (new, bind, move, remount, propagation), umount,
    /// pivot_root, move_mount. Denied to every confined task.
    pub const MOUNT: u8 = 8;
    /// Creating a namespace the policy does not allow (`AgentConfig::grants`): user
    /// namespaces, inside which an unprivileged task gets capabilities of its own.
    pub const NAMESPACE: u8 = 9;
    /// Kernel modules and what the kernel loads for a task: module autoload requests (the
    /// kernel would start modprobe outside every cgroup), module, firmware, kexec and policy
    /// loads from files or memory. Denied to every confined task.
    pub const MODULE: u8 = 10;
}

/// Switches a policy may turn on (`AgentConfig::grants`); everything they guard is denied to
/// a confined task by default.
pub mod grant {
    /// Creating user namespaces (`[namespaces] allow = ["user"]`).
    pub const USER_NAMESPACE: u64 = 1 << 0;
    /// Reaching unix sockets created outside the agent that no `unix` rule names
    /// (`[default] unix = "allow"`).
    pub const UNIX_OUTSIDE: u64 = 1 << 1;
}

/// Socket families and kinds a policy may allow (`AgentConfig::sockets`). A confined task
/// may always create AF_UNIX sockets, TCP/UDP/ICMP sockets over IPv4 and IPv6 and
/// NETLINK_ROUTE sockets (what name resolution needs); everything else needs its bit: bit
/// `f` (below 60) for address family `f`, and the kinds below.
pub mod sock {
    /// SOCK_RAW over IPv4/IPv6.
    pub const RAW: u64 = 1 << 60;
    /// SCTP over IPv4/IPv6.
    pub const SCTP: u64 = 1 << 61;
    /// Netlink protocols other than NETLINK_ROUTE.
    pub const NETLINK: u64 = 1 << 62;
    /// Families below this have a bit of their own.
    pub const MAX_FAMILY: u32 = 60;
}

/// Decisions, ordered by severity: when several rules match, the highest wins
/// (deny overrides ask overrides allow); `NONE` means no rule matched.
pub mod decision {
    pub const NONE: u8 = 0;
    pub const ALLOW: u8 = 1;
    pub const ASK: u8 = 2;
    pub const DENY: u8 = 3;
    /// Low bits of a decision byte hold the decision itself.
    pub const MASK: u8 = 0x03;
    /// A matching rule asked that allowed actions be audited too.
    pub const AUDIT: u8 = 0x80;
    /// The rule has a quota (`limit`): its counter in `VERDICTS` (`verdict_kind::QUOTA`)
    /// decides whether this allow stands.
    pub const LIMITED: u8 = 0x40;
}

/// Rule indexes with a meaning of their own (real rules are numbered from 0).
pub mod rule {
    /// No rule matched: the policy default decided.
    pub const DEFAULT: u16 = 0xffff;
    /// The kernel could not evaluate the rules (failed read, path too deep); fail-closed.
    pub const INTERNAL: u16 = 0xfffe;
    /// gate's own start-up self-test canary.
    pub const SELFTEST: u16 = 0xfffd;
    /// The action could not be recorded and the policy requires an audit record.
    pub const AUDIT_REQUIRED: u16 = 0xfffc;
    /// Kernel-internal: the path was deeper than the walk (reported as `INTERNAL`).
    pub const INTERNAL_DEPTH: u16 = 0xfffb;
    /// Kernel-internal: the object's dentry is not connected to its file system's root (a
    /// file opened by handle): its path, and so its rules, are unknown (reported as
    /// `INTERNAL`).
    pub const INTERNAL_DISCONNECTED: u16 = 0xfff0;
    /// The engine's owner missed its heartbeat: the agent's lockdown decisions applied.
    pub const LOCKDOWN: u16 = 0xfffa;
    /// gate's own state (its keys, binary, config, logs, pins): built into every policy,
    /// enforced even in audit mode.
    pub const GATE_SELF: u16 = 0xfff9;
    /// A socket family or kind the policy does not allow (`[sockets]`).
    pub const SOCKET_FAMILY: u16 = 0xfff8;
    /// bpf() by a confined task.
    pub const BPF: u16 = 0xfff7;
    /// A capability the policy does not grant (`[capabilities]`).
    pub const CAPABILITY: u16 = 0xfff6;
    /// A confined task reaching a process outside its agent (ptrace, signals).
    pub const OUTSIDE_AGENT: u16 = 0xfff5;
    /// A confined task starting a child in another cgroup (`clone3(CLONE_INTO_CGROUP)`).
    pub const CGROUP_MOVE: u16 = 0xfff4;
    /// A confined task changing the mount table.
    pub const MOUNT: u16 = 0xfff3;
    /// A confined task creating a user namespace the policy does not allow (`[namespaces]`).
    pub const USER_NAMESPACE: u16 = 0xfff2;
    /// A confined task loading kernel code or making the kernel load a module for it.
    pub const MODULE: u16 = 0xfff1;
}

/// Which kernel hook produced an event.
pub mod hook {
    pub const BPRM_CHECK: u8 = 0;
    pub const FILE_OPEN: u8 = 1;
    pub const PATH_MKNOD: u8 = 2;
    pub const PATH_MKDIR: u8 = 3;
    pub const PATH_RMDIR: u8 = 4;
    pub const PATH_UNLINK: u8 = 5;
    pub const PATH_SYMLINK: u8 = 6;
    pub const PATH_LINK_SRC: u8 = 7;
    pub const PATH_LINK_DST: u8 = 8;
    pub const PATH_RENAME_SRC: u8 = 9;
    pub const PATH_RENAME_DST: u8 = 10;
    pub const PATH_TRUNCATE: u8 = 11;
    pub const PATH_CHMOD: u8 = 12;
    pub const PATH_CHOWN: u8 = 13;
    pub const INODE_SETATTR: u8 = 14;
    pub const SOCKET_CONNECT: u8 = 15;
    pub const SOCKET_SENDMSG: u8 = 16;
    pub const SOCKET_CREATE: u8 = 17;
    pub const BPF: u8 = 18;
    pub const CAPABLE: u8 = 19;
    pub const PTRACE_ACCESS_CHECK: u8 = 20;
    pub const TASK_KILL: u8 = 21;
    pub const TASK_ALLOC: u8 = 22;
    pub const SB_MOUNT: u8 = 23;
    pub const SB_UMOUNT: u8 = 24;
    pub const SB_PIVOTROOT: u8 = 25;
    pub const MOVE_MOUNT: u8 = 26;
    pub const USERNS_CREATE: u8 = 27;
    pub const KERNEL_MODULE_REQUEST: u8 = 28;
    pub const KERNEL_READ_FILE: u8 = 29;
    pub const KERNEL_LOAD_DATA: u8 = 30;
    pub const INODE_SETXATTR: u8 = 31;
    pub const INODE_REMOVEXATTR: u8 = 32;
    pub const INODE_SET_ACL: u8 = 33;
    pub const INODE_REMOVE_ACL: u8 = 34;
    pub const MMAP_FILE: u8 = 35;
    pub const FILE_MPROTECT: u8 = 36;
    pub const UNIX_STREAM_CONNECT: u8 = 37;
    pub const UNIX_MAY_SEND: u8 = 38;
    pub const FILE_SEND_SIGIOTASK: u8 = 39;
    pub const NAMES: [&str; 40] = [
        "exec",
        "open",
        "mknod",
        "mkdir",
        "rmdir",
        "unlink",
        "symlink",
        "link-source",
        "link",
        "rename-source",
        "rename",
        "truncate",
        "chmod",
        "chown",
        "setattr",
        "connect",
        "sendmsg",
        "socket",
        "bpf",
        "capable",
        "ptrace",
        "kill",
        "clone",
        "mount",
        "umount",
        "pivot_root",
        "move_mount",
        "userns",
        "module-request",
        "kernel-read-file",
        "kernel-load-data",
        "setxattr",
        "removexattr",
        "set-acl",
        "remove-acl",
        "mmap",
        "mprotect",
        "unix-connect",
        "unix-send",
        "sigio",
    ];
}

/// Event flags.
pub mod flag {
    /// Policy mode is audit: the action would have been denied but was let through.
    pub const AUDIT_MODE: u8 = 0x01;
    /// The path had more components than an event carries; the leading ones were dropped.
    pub const PATH_TRUNCATED: u8 = 0x02;
    /// The decision came from the fail-closed rule for internal errors.
    pub const INTERNAL_ERROR: u8 = 0x04;
    /// Decided in lockdown (stale heartbeat); enforced even in audit mode.
    pub const LOCKDOWN: u8 = 0x08;
    /// An `ask` decision turned into an allow by a verdict the daemon wrote (an approval).
    pub const APPROVED: u8 = 0x10;
    /// An `ask` decision turned into a deny by a verdict the daemon wrote (a rejection, whose
    /// request is not raised again until it expires).
    pub const REJECTED: u8 = 0x20;
    /// The rule's quota was used up in its window: its `over_limit` decision applied.
    pub const OVER_LIMIT: u8 = 0x40;
    /// The first allowed action of a network flow (`FlowKey`) in its epoch: the flow's later
    /// actions are counted in the kernel (`FLOWS`), not sent one by one, and reported in
    /// `flow` records.
    pub const FLOW: u8 = 0x80;
}

/// Per-CPU counter slots (`COUNTERS` map).
pub mod counter {
    /// Events that could not be reserved in the ring buffer (lost, to be reported as a gap).
    pub const RINGBUF_FULL: u32 = 0;
    /// Internal errors inside confined cgroups (each resolved by denying).
    pub const INTERNAL_ERROR: u32 = 1;
    /// Paths deeper than the kernel walks (resolved by denying).
    pub const DEPTH_EXCEEDED: u32 = 2;
    /// Decisions taken for confined tasks.
    pub const DECISIONS: u32 = 3;
    /// Decisions taken in lockdown (stale heartbeat).
    pub const LOCKDOWN: u32 = 4;
    /// Objects whose dentry is not connected to their file system's root (resolved by
    /// denying).
    pub const DISCONNECTED: u32 = 5;
    pub const COUNT: u32 = 8;
}

/// Maximum dentries the kernel walks from an object to the root, mount crossings included.
pub const MAX_PATH_DEPTH: u32 = 64;
/// Path components an event carries (leaf first).
pub const EVENT_NAMES: usize = 16;
/// Bytes per path component in an event (a longer name is cut, NUL-terminated).
pub const EVENT_NAME_LEN: usize = 64;
/// Port ranges one address prefix can carry.
pub const MAX_PORT_RULES: usize = 16;

/// Key of the inode rule map: a file or directory identified by device and inode number, in
/// one policy slot.
/// `dev` is the kernel's internal encoding (`MKDEV`: major << 20 | minor), as in `super_block.s_dev`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct InodeKey {
    pub dev: u32,
    /// The policy slot the rule belongs to (`AgentConfig::slot`); 0 in a compiled policy,
    /// set when the engine writes it.
    pub slot: u32,
    pub ino: u64,
}

/// Abstract unix socket names (`@name` in a policy's `unix` list) are kept in the inode rule
/// map under this device, which no file system has (major 4095, minor 2^20 - 1), with a
/// hash of the name as the inode number.
pub mod unix_name {
    use super::InodeKey;

    pub const DEV: u32 = u32::MAX;
    /// An event's `port` for a peer bound to an abstract name (low byte; the name's length in
    /// the high byte), the name's first bytes in `names[0]`.
    pub const EVENT_CODE: u16 = 1;
    /// The longest abstract name: `sun_path` (108 bytes) less its leading NUL.
    pub const MAX_LEN: usize = 107;
    /// 64-bit words a name is hashed in (zero-padded).
    pub const WORDS: usize = MAX_LEN.div_ceil(8);

    /// The hash of a name, as zero-padded little-endian words: one multiply and rotate per
    /// word, no branches (the programs run it over a fixed number of words). Trailing NUL
    /// bytes are not part of a name: a program that binds the whole `sun_path` pads its name
    /// with them, and a rule names the socket all the same.
    #[inline(always)]
    pub fn hash(words: &[u64; WORDS]) -> u64 {
        let mut h = 0x243f_6a88_85a3_08d3u64;
        let mut i = 0;
        while i < WORDS {
            h = (h ^ words[i])
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(29);
            i += 1;
        }
        h ^ (h >> 32)
    }

    /// The rule map key of `name` (without the `@`), or None when it is empty (or all NUL)
    /// or longer than [`MAX_LEN`].
    pub fn key(name: &[u8]) -> Option<InodeKey> {
        if name.is_empty() || name.len() > MAX_LEN || name.iter().all(|b| *b == 0) {
            return None;
        }
        let mut words = [0u64; WORDS];
        for (i, b) in name.iter().enumerate() {
            words[i / 8] |= u64::from(*b) << (8 * (i % 8));
        }
        Some(InodeKey {
            dev: DEV,
            slot: 0,
            ino: hash(&words),
        })
    }
}

/// The inode filter: a one-hash Bloom filter over every `InodeKey` in the rule map, so that
/// the walk skips the hash lookup for the ancestors that have no rule (almost all of them).
/// `FILTER` is an array of `u64` words; bit `bit(key, mask)` of it (`slot`: word `bit / 64`,
/// bit `bit % 64`) is set for every key. A clear bit means "no rule"; a set bit means "look".
pub mod filter {
    use super::InodeKey;

    /// Bits for `keys` keys: 16 per key (about 6 % false positives), a power of two, at
    /// least 4,096.
    pub const fn bits_for(keys: usize) -> u64 {
        let want = if keys > (1 << 40) {
            1u64 << 44
        } else {
            keys as u64 * 16
        };
        let bits = want.next_power_of_two();
        if bits < 4096 { 4096 } else { bits }
    }

    /// The key's bit, below `mask + 1` (a power of two).
    #[inline(always)]
    pub fn bit(key: &InodeKey, mask: u64) -> u64 {
        let h = (key.ino ^ ((key.dev as u64) << 40) ^ ((key.slot as u64) << 20))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> 24) & mask
    }

    /// Where the key's bit lives: the word's index in `FILTER` and the bit within that word.
    #[inline(always)]
    pub fn slot(key: &InodeKey, mask: u64) -> (u32, u64) {
        let b = bit(key, mask);
        ((b >> 6) as u32, 1u64 << (b & 63))
    }
}

/// What the rules say about one inode, per operation (indexed by `op::*`).
/// `exact` applies when the inode itself is the object; `subtree` when it is an ancestor.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InodeRule {
    pub exact: [u8; op::FILE_OPS],
    pub subtree: [u8; op::FILE_OPS],
    pub exact_rule: [u16; op::FILE_OPS],
    pub subtree_rule: [u16; op::FILE_OPS],
    /// Names below this directory that rules name but that did not exist when the policy was
    /// compiled: the node whose children `PENDING` holds (`PendingKey::node`); 0: none.
    pub pending: u32,
}

/// Key of the pending-name map: a name below a node (an existing directory's `pending`, or a
/// pending name's own), in one policy slot, by its length and [`pending::hash`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PendingKey {
    pub slot: u32,
    pub node: u32,
    pub len: u32,
    pub _pad: u32,
    pub hash: u64,
}

/// Value of the pending-name map: the rules of the path ending in that name (`rule.exact`
/// when the name is the object, `rule.subtree` when it is above it; `rule.pending`: the node
/// of the names below it), and `guard`: the deny or ask rule by which no existing object nor
/// symlink may be given this name (rename, hard link, symlink), `rule::DEFAULT` for none. A
/// symlink put there would lead the path, and the rules on it, elsewhere.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PendingRule {
    pub rule: InodeRule,
    pub guard: u16,
    pub _pad: u16,
}

/// Rules on paths that do not exist yet. The deepest existing directory of such a path gets
/// an `INODES` entry whose `pending` node leads, name by name (`PENDING`), to the rules of the
/// path: the kernel compares the names of the object's ancestors below that directory as it
/// decides, so the rules apply to whatever is created there, by whomever, however.
pub mod pending {
    /// Components a path may have below its deepest existing directory.
    pub const MAX_DEPTH: u32 = 8;
    /// The longest name (`NAME_MAX`).
    pub const MAX_NAME: usize = 255;
    /// 64-bit words of a name that are hashed: its first 64 bytes (with its length in the
    /// key, two names that differ only after them match alike: a deny rule on a longer name
    /// denies more; the compiler refuses such names in allow rules).
    pub const WORDS: usize = 8;
    /// Pending directories a walk remembers (the lowest first); a walk that meets more on
    /// one path denies (fail closed).
    pub const HITS: usize = 4;
    /// `op` bit for an operation that gives an existing object a new name (rename, link,
    /// symlink): refused where names below are watched (`PendingRule::guard`).
    pub const NEW_NAME: usize = 0x10;

    pub const SEED: u64 = 0x452821e6_38d01377;

    /// The hash of a name's first bytes as `WORDS` little-endian words, zero-padded (the
    /// programs hash the whole buffer, with no branch; the name's length is in the map key).
    #[inline(always)]
    pub fn hash_words(words: &[u64; WORDS]) -> u64 {
        let mut h = SEED;
        let mut i = 0;
        while i < WORDS {
            h = mix(h, words[i]);
            i += 1;
        }
        finish(h)
    }

    /// One word into the hash.
    #[inline(always)]
    pub fn mix(h: u64, word: u64) -> u64 {
        (h ^ word)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(31)
    }

    #[inline(always)]
    pub fn finish(h: u64) -> u64 {
        h ^ (h >> 29)
    }

    /// The hash of a name (its first `8 * WORDS` bytes).
    pub fn hash(name: &[u8]) -> u64 {
        let mut words = [0u64; WORDS];
        for (i, b) in name.iter().take(8 * WORDS).enumerate() {
            words[i / 8] |= u64::from(*b) << (8 * (i % 8));
        }
        hash_words(&words)
    }
}

/// One port range with its decision, inside a `NetRule`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortRule {
    pub lo: u16,
    pub hi: u16,
    pub decision: u8,
    pub _pad: u8,
    pub rule: u16,
}

/// Value of the LPM tries for IPv4 and IPv6: every port range that applies to addresses under
/// the prefix, the rules of less specific prefixes already merged in by the compiler. The
/// tries' keys are the policy slot (4 bytes, big-endian) then the address, with a prefix
/// length of 32 plus the address prefix's: a lookup never leaves its slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetRule {
    pub count: u32,
    /// For an address learned from a DNS answer (hostname rules): the name it was learned
    /// for, as an index the daemon keeps; 0 for a policy's own prefixes.
    pub host: u32,
    /// `bpf_ktime_get_boot_ns` after which the entry no longer applies; 0: never. Reserved
    /// for learned addresses; the programs do not read it yet.
    pub expires_ns: u64,
    pub ports: [PortRule; MAX_PORT_RULES],
}

impl Default for NetRule {
    fn default() -> Self {
        Self {
            count: 0,
            host: 0,
            expires_ns: 0,
            ports: [PortRule::default(); MAX_PORT_RULES],
        }
    }
}

/// Version of the kernel ABI: the maps, their key and value layouts, their pin names and what
/// the programs read from them. Pinned state is adopted only by a gate of the same version.
/// Bump it with any change to a type or map in this file.
pub const ABI_VERSION: u32 = 8;

/// Cgroup levels at which agents' root cgroups may sit at once (`HostConfig::levels`).
pub const MAX_LEVELS: usize = 4;

/// Host-wide configuration (`HOST` array map, one entry), written by the engine's owner.
///
/// A task is confined when, at one of `levels`, its ancestor cgroup is an agent's root cgroup
/// (a key of `AGENTS`). Almost always there is one level, so an unconfined task pays one
/// helper call and one hash lookup, whatever the number of agents.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostConfig {
    /// Distinct levels of the agents' root cgroups (the root cgroup is level 0), sorted; the
    /// first `level_count` are used.
    pub levels: [u32; MAX_LEVELS],
    pub level_count: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_boot_ns` of the owner's last heartbeat.
    pub heartbeat_ns: u64,
    /// When the heartbeat is older than this, every agent falls to its lockdown decisions
    /// (`AgentConfig::lockdown_keep`). 0: no heartbeat is kept (a `gate run` without daemon).
    pub lockdown_after_ns: u64,
}

/// One agent: its policy's slot and settings (`AGENTS` hash map, keyed by the cgroup id of the
/// agent's root cgroup).
///
/// An agent's rules are the entries of `INODES`, `NET4` and `NET6` whose key carries its
/// `slot`. A policy is replaced atomically: the new rules are written under a fresh slot, then
/// this one entry is updated (each program run reads it once), then the old slot's entries
/// are removed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AgentConfig {
    /// Key prefix of the rules of the agent's current policy (never 0: 0 is no policy).
    pub slot: u32,
    /// The agent, in events (stays the same when its policy is replaced).
    pub agent_id: u32,
    /// 0 enforce, 1 audit.
    pub mode: u8,
    /// 1: a confined action that cannot be recorded is denied.
    pub audit_required: u8,
    /// 1: the policy has read rules (otherwise reads skip the walk).
    pub has_read_rules: u8,
    /// In lockdown (stale heartbeat), operations whose bit (`1 << op::*`) is set here are
    /// still decided by the policy; every other operation is denied.
    pub lockdown_keep: u8,
    /// Default decision per operation (`op::*`), with `decision::AUDIT` possibly set.
    pub defaults: [u8; 4],
    /// Socket families and kinds allowed beyond the base set (`sock::*`).
    pub sockets: u64,
    /// Capabilities (bit `CAP_*`) a confined task may use; every other capability check of a
    /// confined task fails.
    pub caps: u64,
    /// Switches the policy turns on (`grant::*`).
    pub grants: u64,
}

/// Key of the `VERDICTS` map: a decision the daemon wrote for one agent (an approval, a
/// rejection, a used-up quota), for one object or for a whole rule. The programs look it up
/// when a rule's decision is `ask`: first for the object (`verdict_kind::OBJECT`), then for
/// the rule (`verdict_kind::RULE`, every object field zero); a verdict applies while
/// `bpf_ktime_get_boot_ns` is below its `expires_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VerdictKey {
    pub agent_id: u32,
    pub rule: u16,
    pub op: u8,
    /// `verdict_kind::*`.
    pub kind: u8,
    /// File objects: device (kernel encoding) and inode number (native byte order) in
    /// `obj[..8]`. Network objects: `family`, `port` (host byte order) and the address in
    /// `obj` (v4-mapped IPv6 addresses as AF_INET, the address in `obj[..4]`), as in events.
    /// Other objects have no object verdicts: only rule verdicts apply to them.
    pub dev: u32,
    pub port: u16,
    pub family: u16,
    pub obj: [u8; 16],
}

/// What a `VerdictKey` names.
pub mod verdict_kind {
    /// One object (file or address and port), for one rule.
    pub const OBJECT: u8 = 1;
    /// Everything the rule matches.
    pub const RULE: u8 = 2;
    /// A quota's counter (object fields zero): `expires_ns` is the end of the current window,
    /// `source` the actions counted in it. The kernel starts a new window and counts.
    pub const QUOTA: u8 = 3;
    /// A quota's terms (object fields zero): `expires_ns` is the window's length in ns,
    /// `source` the actions allowed per window, `decision` what applies past them.
    pub const QUOTA_TERMS: u8 = 4;
}

/// Value of the `VERDICTS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VerdictValue {
    /// `bpf_ktime_get_boot_ns` after which the verdict no longer applies (checked by the
    /// kernel itself, so it ends on time even if the daemon is dead).
    pub expires_ns: u64,
    /// `decision::*`.
    pub decision: u8,
    pub _pad: [u8; 3],
    /// The approval or quota record that wrote it (for the audit record of its use).
    pub source: u32,
}

/// A network flow of one agent's process whose allowed actions the kernel counts instead of
/// sending an event for each (`FLOWS`): the datagrams one socket sends to one destination
/// (`socket_sendmsg`, `socket` the `struct socket` address), or the connects the process
/// makes to one destination (`socket_connect`, `socket` 0), in one epoch (`FLOW_EPOCH`). The
/// decision, rule and flags are part of the flow: a different verdict starts another one.
/// Denials are never counted: each is sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub socket: u64,
    pub agent_id: u32,
    pub tgid: u32,
    pub rule: u16,
    /// `hook::SOCKET_CONNECT` or `hook::SOCKET_SENDMSG`.
    pub hook: u8,
    pub decision: u8,
    pub flags: u8,
    /// `FLOW_EPOCH` when the flow started (0 or 1; any other value there turns flows off:
    /// every allowed network action is sent).
    pub epoch: u8,
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    pub _pad: [u16; 3],
    /// As in events (v4-mapped IPv6 as AF_INET, the address in `addr[..4]`).
    pub addr: [u8; 16],
}

/// Value of the `FLOWS` map. The kernel inserts it with the flow's first action in an epoch
/// (which it sends as an event flagged `flag::FLOW`), then adds one to `count` (atomically)
/// for each later one.
///
/// Userspace reports the flows epoch by epoch: it switches `FLOW_EPOCH` to the other epoch,
/// waits until every program that may have read the old one has returned (an RCU grace
/// period: LSM programs run inside an RCU read-side section), and only then takes the old
/// epoch's flows out of the map. No program counts into a flow after it was taken, so every
/// allowed action is either sent or counted, once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    /// Actions after the first.
    pub count: u64,
    /// `bpf_ktime_get_boot_ns` of the first action.
    pub first_ns: u64,
}

/// Entries of `FLOWS`. When it is full, new flows are not counted: each of their actions is
/// sent as an event, as before flows existed.
pub const FLOW_ENTRIES: u32 = 16384;

pub const MODE_ENFORCE: u8 = 0;
pub const MODE_AUDIT: u8 = 1;

/// Struct field offsets of the running kernel, read from its BTF at load time and handed to
/// the programs as read-only data, so one object works across kernel versions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KernelOffsets {
    pub file_f_path: u32,
    pub file_f_mode: u32,
    pub file_f_flags: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub dentry_d_inode: u32,
    pub dentry_d_sb: u32,
    pub qstr_name: u32,
    pub inode_i_ino: u32,
    pub sb_s_dev: u32,
    /// `super_block.s_magic` (cgroup2: `CGROUP2_SUPER_MAGIC`), `inode.i_private` (a kernfs
    /// inode's `kernfs_node`), `kernfs_node.priv` (a cgroup directory's `struct cgroup`).
    pub sb_s_magic: u32,
    pub inode_i_private: u32,
    pub kernfs_node_priv: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    /// `struct vfsmount.mnt_sb` (a `struct mount` embeds its vfsmount at `mount_mnt`).
    pub vfsmount_mnt_sb: u32,
    /// `struct vfsmount.mnt_flags` (`MNT_INTERNAL`: a kernel-internal mount no path reaches).
    pub vfsmount_mnt_flags: u32,
    /// `struct vfsmount.mnt_root` (a mount's root dentry: where an umount's path starts).
    pub vfsmount_mnt_root: u32,
    /// `super_block.s_root`: a walk that ends elsewhere than here or at its mount's root
    /// started from a disconnected dentry.
    pub sb_s_root: u32,
    /// `super_block.s_flags` (`SB_KERNMOUNT`: a file system the kernel mounted for itself).
    pub sb_s_flags: u32,
    /// `vm_area_struct.vm_file` (the file a mapping made executable by mprotect maps).
    pub vma_vm_file: u32,
    /// `sock.sk_cgrp_data` + `sock_cgroup_data.cgroup`: the cgroup of a socket's creator.
    pub sock_cgroup: u32,
    /// `socket.sk`, `unix_sock.path` (a bound unix socket's file).
    pub socket_sk: u32,
    pub unix_sock_path: u32,
    /// `unix_sock.addr` (the bound address, NULL for none), `unix_address.len` (bytes of the
    /// `sockaddr_un` used) and `unix_address.name` (the `sockaddr_un`).
    pub unix_sock_addr: u32,
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    /// `fown_struct.file` (6.12: the owner is allocated apart from its file), or `file.f_owner`
    /// (the owner embedded in its file) with `fown_file` = `u32::MAX`.
    pub fown_file: u32,
    pub file_f_owner: u32,
    pub bprm_file: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_fs: u32,
    /// `struct task_struct.cred` (the task's effective credentials).
    pub task_cred: u32,
    /// `task_struct.cgroups` → `css_set.dfl_cgrp` → `cgroup.level`, `cgroup.ancestors[]`,
    /// `cgroup.kn` → `kernfs_node.id`: the cgroup v2 ancestry of another task.
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_level: u32,
    pub cgroup_ancestors: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `task_struct.comm` (another task's command name, for the record).
    pub task_comm: u32,
    pub fs_struct_root: u32,
    pub msghdr_msg_name: u32,
    pub msghdr_msg_namelen: u32,
    /// `FMODE_BACKING` on kernels that have it (overlayfs' internal files), else 0.
    pub fmode_backing: u32,
    /// Argument count of `inode_setattr` (2 before 6.3, 3 with the idmap argument).
    pub setattr_args: u32,
    /// 1 once filled from BTF; programs deny confined actions while 0.
    pub valid: u32,
}

/// One decision, as sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    pub ktime_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub op: u8,
    /// The decision as evaluated (`decision::*`, never NONE).
    pub decision: u8,
    pub hook: u8,
    pub flags: u8,
    pub rule: u16,
    /// Path components filled in `names`, leaf first.
    pub name_count: u16,
    pub comm: [u8; 16],
    pub ino: u64,
    pub dev: u32,
    pub port: u16,
    /// AF_INET or AF_INET6 for network events (v4-mapped addresses are reported as AF_INET).
    pub family: u16,
    pub addr: [u8; 16],
    /// `AgentConfig::agent_id` of the confined task's agent, and the policy slot that decided.
    pub agent_id: u32,
    pub slot: u32,
    pub names: [[u8; EVENT_NAME_LEN]; EVENT_NAMES],
}

const _: () = assert!(core::mem::size_of::<InodeKey>() == 16);
const _: () = assert!(core::mem::size_of::<InodeRule>() == 28);
const _: () = assert!(core::mem::size_of::<PendingKey>() == 24);
const _: () = assert!(core::mem::size_of::<PendingRule>() == 32);
const _: () = assert!(core::mem::size_of::<PortRule>() == 8);
const _: () = assert!(core::mem::size_of::<NetRule>() == 16 + 8 * MAX_PORT_RULES);
const _: () = assert!(core::mem::size_of::<HostConfig>() == 40);
const _: () = assert!(core::mem::size_of::<AgentConfig>() == 40);
const _: () = assert!(core::mem::size_of::<VerdictKey>() == 32);
const _: () = assert!(core::mem::size_of::<VerdictValue>() == 16);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 48);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 16);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 50 * 4);
const _: () = assert!(core::mem::size_of::<Event>() == 96 + EVENT_NAMES * EVENT_NAME_LEN);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, with explicit padding and no pointers.
    unsafe impl aya::Pod for super::InodeKey {}
    unsafe impl aya::Pod for super::InodeRule {}
    unsafe impl aya::Pod for super::PendingKey {}
    unsafe impl aya::Pod for super::PendingRule {}
    unsafe impl aya::Pod for super::NetRule {}
    unsafe impl aya::Pod for super::HostConfig {}
    unsafe impl aya::Pod for super::AgentConfig {}
    unsafe impl aya::Pod for super::VerdictKey {}
    unsafe impl aya::Pod for super::VerdictValue {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::{InodeKey, filter};
    use std::vec;

    #[test]
    fn pending_name_hash_is_the_programs_word_hash() {
        use super::pending::{WORDS, hash, hash_words};
        let mut words = [0u64; WORDS];
        words[0] = u64::from_le_bytes(*b"pre-comm");
        words[1] = u64::from(b'i') | u64::from(b't') << 8;
        assert_eq!(hash(b"pre-commit"), hash_words(&words));
        assert_ne!(hash(b"pre-commit"), hash(b"pre-commiu"));
        // Only the first 64 bytes count (the length, in the key, tells longer names apart).
        let (a, b) = ([b'a'; 100], [b'a'; 64]);
        assert_eq!(hash(&a), hash(&b));
    }

    #[test]
    fn filter_sizes() {
        assert_eq!(filter::bits_for(0), 4096);
        assert_eq!(filter::bits_for(16), 4096);
        assert_eq!(filter::bits_for(1_000), 16_384);
        assert_eq!(filter::bits_for(10_001), 262_144);
    }

    /// Keys as a policy has them: one device, inode numbers in runs (a directory tree made at
    /// once) and scattered. The filter must say "maybe" for every key and rarely for others.
    #[test]
    fn filter_false_positives_stay_low() {
        for n in [20usize, 1_000, 10_000] {
            let mask = filter::bits_for(n) - 1;
            let key = |i: u64| InodeKey {
                dev: 0x0800_0001,
                slot: 1,
                ino: 1_000 + i * 3,
            };
            let mut words = vec![0u64; ((mask + 1) / 64) as usize];
            for i in 0..n as u64 {
                assert!(filter::bit(&key(i), mask) <= mask);
                let (w, b) = filter::slot(&key(i), mask);
                words[w as usize] |= b;
            }
            let probe = |k: &InodeKey| {
                let (w, b) = filter::slot(k, mask);
                words[w as usize] & b != 0
            };
            assert!((0..n as u64).all(|i| probe(&key(i))));
            let others = 100_000u64;
            let hits = (0..others)
                .filter(|i| {
                    probe(&InodeKey {
                        dev: 0x0800_0001,
                        slot: 1,
                        ino: 5_000_000 + i,
                    })
                })
                .count() as f64;
            let rate = hits / others as f64;
            assert!(
                rate < 0.10,
                "{n} keys: {:.1} % false positives",
                rate * 100.0
            );
        }
    }
}
