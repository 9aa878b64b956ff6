//! Maps shared with userspace. Sizes here are placeholders: userspace sets the real ones from
//! the compiled policy at load time (`EbpfLoader::set_max_entries`).
use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use gate_common::{
    AgentConfig, FLOW_ENTRIES, FlowKey, FlowValue, HostConfig, InodeKey, InodeRule, NetRule,
    PendingKey, PendingRule, VerdictKey, VerdictValue, counter, pending,
};

/// Hash maps that userspace updates while programs read them allocate entries on demand
/// (`BPF_F_NO_PREALLOC`). Up to 6.0 a replaced entry was freed after an RCU grace period; from
/// 6.1 the kernel's BPF allocator may hand a freed entry out again at once, so a program must
/// not count on an entry it found staying the same while it runs (flows do not: see
/// `gate_common::FlowValue`).
const NO_PREALLOC: u32 = 1;

/// Host-wide configuration, one entry: the cgroup levels agents sit at, the heartbeat.
#[map]
pub static HOST: Array<HostConfig> = Array::with_max_entries(1, 0);

/// Agents keyed by the cgroup id of their root cgroup.
#[map]
pub static AGENTS: HashMap<u64, AgentConfig> = HashMap::with_max_entries(1, NO_PREALLOC);

/// File rules keyed by (device, policy slot, inode).
#[map]
pub static INODES: HashMap<InodeKey, InodeRule> = HashMap::with_max_entries(1, NO_PREALLOC);

/// Rules on names that did not exist when the policy was compiled (`gate_common::pending`).
#[map]
pub static PENDING: HashMap<PendingKey, PendingRule> = HashMap::with_max_entries(1, NO_PREALLOC);

/// One pending directory a walk met: its node and its level.
#[repr(C)]
pub struct Hit {
    pub node: u32,
    pub level: u32,
}

/// What a file walk keeps beyond the programs' stack (which is full): the pending
/// directories it met, and the comparison of the names below them. Per CPU; a program runs to
/// its end on its CPU before another uses it.
#[repr(C)]
pub struct WalkScratch {
    /// The object's dentry (level 0).
    pub start: u64,
    pub hits: u64,
    pub hit: [Hit; pending::HITS],
    /// The comparison in progress: its key, the packed verdict, the op (and slot, high 32
    /// bits), which hit and name (`pending_step`), and the climb to that name's dentry.
    pub key: PendingKey,
    pub packed: u64,
    pub op: u64,
    pub current: u64,
    pub dentry: u64,
    pub climb: u64,
    /// The name being hashed, zero-padded.
    pub name: [u64; pending::WORDS],
    /// The key of a `VERDICTS` lookup (`decide::answered`, `decide::over_limit`), after the
    /// walk.
    pub verdict: VerdictKey,
    /// A network flow's key and first value (`flow::counted`).
    pub flow: FlowKey,
    pub flow_value: FlowValue,
}

#[map]
pub static WALK: PerCpuArray<WalkScratch> = PerCpuArray::with_max_entries(1, 0);

/// Files whose signal owner (`F_SETOWN`) a confined task set, by the `struct file` address:
/// the agent's cgroup id and its level, so that the kernel's SIGIO to the owner can be
/// checked against the agent that chose it. Kernel-only; an owner set by anyone else removes
/// the entry. Entries outlive their files (nothing is run when a file is freed, which every
/// process on the host would pay for): least recently used ones give way to new ones.
#[map]
pub static FOWNERS: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(8192, 0);

/// Verdicts the daemon writes for one agent: approvals and rejections, read for `ask`
/// decisions (`decide::answered`) with their expiry, and quotas' terms and counters
/// (`decide::over_limit`, which counts in them).
#[map]
pub static VERDICTS: HashMap<VerdictKey, VerdictValue> = HashMap::with_max_entries(1, NO_PREALLOC);

/// Network flows whose later allowed actions are counted, not sent (`flow::counted`).
#[map]
pub static FLOWS: HashMap<FlowKey, FlowValue> =
    HashMap::with_max_entries(FLOW_ENTRIES, NO_PREALLOC);

/// The epoch new flows start in (0 or 1), written by userspace only (`gate_common::FlowValue`).
#[map]
pub static FLOW_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// Bloom filter over the keys of `INODES` (`gate_common::filter`); sized at load, and
/// `FILTER_MASK` (read-only data) set to its number of bits minus one.
#[map]
pub static FILTER: Array<u64> = Array::with_max_entries(64, 0);
#[unsafe(no_mangle)]
pub static FILTER_MASK: Global<u64> = Global::new(64 * 64 - 1);

/// Whether `key` may have a rule: false only when the filter proves it has none.
#[inline(always)]
pub fn may_have_rule(key: &InodeKey) -> bool {
    let (word, bit) = gate_common::filter::slot(key, FILTER_MASK.load());
    match FILTER.get(word) {
        Some(w) => *w & bit != 0,
        None => true,
    }
}

/// Connect rules, longest-prefix match on the policy slot (big-endian) and the destination
/// address. LPM tries are always allocated on demand and freed after a grace period.
#[map]
pub static NET4: LpmTrie<[u8; 8], NetRule> = LpmTrie::with_max_entries(1, NO_PREALLOC);
#[map]
pub static NET6: LpmTrie<[u8; 20], NetRule> = LpmTrie::with_max_entries(1, NO_PREALLOC);

/// Scratch space for an abstract unix socket name being hashed (`unix::abstract_verdict`):
/// too large for the programs' stack.
#[map]
pub static UNIX_NAME: PerCpuArray<[u64; gate_common::unix_name::WORDS]> =
    PerCpuArray::with_max_entries(1, 0);

/// Decision events for userspace (size set at load time).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Per-CPU counters, indexed by `gate_common::counter::*`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot owned by this CPU while the program runs.
        unsafe { *p += 1 };
    }
}
