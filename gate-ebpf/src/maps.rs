//! Maps shared with userspace. Sizes here are placeholders: userspace sets the real ones from
//! the compiled policy at load time (`EbpfLoader::set_max_entries`).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
};
use gate_common::{Config, InodeKey, InodeRule, NetRule, counter};

/// Runtime configuration, one entry.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// File rules keyed by (device, inode).
#[map]
pub static INODES: HashMap<InodeKey, InodeRule> = HashMap::with_max_entries(1, 0);

/// Connect rules, longest-prefix match on the destination address.
#[map]
pub static NET4: LpmTrie<[u8; 4], NetRule> = LpmTrie::with_max_entries(1, 0);
#[map]
pub static NET6: LpmTrie<[u8; 16], NetRule> = LpmTrie::with_max_entries(1, 0);

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
