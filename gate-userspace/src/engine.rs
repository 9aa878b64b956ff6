//! The enforcement engine: loads gate's eBPF object with the running kernel's offsets, sizes
//! and fills its maps from a compiled policy, attaches every LSM program and pins the links
//! so that enforcement outlives the process that set it up.
//!
//! One `Engine` confines any number of agents (cgroup subtrees), each with its own policy
//! under its own slot of the shared rule maps; a policy is replaced atomically by writing it
//! under a fresh slot and switching the agent's one entry. Several engines (several
//! `gate run`s without a daemon) coexist: each program passes on a denial by an earlier one.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, Map, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        Lsm,
        links::{FdLink, PinnedLink},
    },
};
use gate_common::{
    AgentConfig, HostConfig, InodeKey, InodeRule, KernelOffsets, MAX_LEVELS, NetRule, PendingKey,
    PendingRule, VerdictKey, VerdictValue, counter,
};

use crate::{
    btf::{self, Btf, BtfError},
    policy::CompiledPolicy,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gate"));
/// Programs that only pass the previous verdict on (gate-ebpf/src/null.rs), for benchmarks.
static NULL_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gate-null"));

/// Default size of the event ring buffer.
pub const DEFAULT_RINGBUF_BYTES: u32 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "this gate binary was built without its eBPF programs (AYA_BUILD_SKIP was set); \
         rebuild it without AYA_BUILD_SKIP"
    )]
    NoObject,
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {0}; the binary and its programs do not match")]
    Missing(&'static str),
    #[error("the kernel refused program {program}: {source}")]
    Program {
        program: String,
        source: aya::programs::ProgramError,
    },
    #[error("writing map {map} failed: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error(
        "map {map} is full ({capacity} entries): {source}; the engine was loaded with room \
         for fewer rules than this policy needs"
    )]
    Full {
        map: &'static str,
        capacity: u32,
        source: aya::maps::MapError,
    },
    #[error("{0}")]
    Agent(String),
    #[error("pinning {path} failed: {reason}")]
    Pin { path: PathBuf, reason: String },
}

/// Sizes of the rule maps, fixed when the object is loaded: all agents' rules share them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub agents: u32,
    pub inodes: u32,
    pub net4: u32,
    pub net6: u32,
    pub verdicts: u32,
}

impl Capacity {
    /// Room for one agent with `policy` and `extra` inode entries of its own, and for one
    /// replacement of its policy by one of the same size (old and new rules coexist while the
    /// agent switches slots).
    pub fn for_policy(policy: &CompiledPolicy, extra: usize) -> Self {
        let room = |n: usize| ((n as u32).saturating_mul(2)).max(2);
        Capacity {
            agents: 1,
            inodes: room(policy.inodes.len() + policy.pending.len() + extra),
            net4: room(policy.net4.len()),
            net6: room(policy.net6.len()),
            verdicts: room(policy.quota_entries(0).len()),
        }
    }
}

/// The map entries one agent's current policy occupies (its slot's keys).
#[derive(Default)]
struct SlotRules {
    slot: u32,
    inodes: Vec<InodeKey>,
    pending: Vec<PendingKey>,
    net4: Vec<Key<[u8; 8]>>,
    net6: Vec<Key<[u8; 20]>>,
}

/// An agent the engine confines.
struct Agent {
    /// Its root cgroup's level; None for an agent adopted from pins whose level nobody
    /// saved (the kernel keeps only the set of levels): every level the kernel held at
    /// adoption then stays in `HOST` while it lives.
    level: Option<u32>,
    config: AgentConfig,
    rules: SlotRules,
    /// The `VERDICTS` keys of its policy's quotas.
    quotas: Vec<VerdictKey>,
}

/// What the engine knows of one agent, for status and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    pub cgroup_id: u64,
    pub level: u32,
    pub config: AgentConfig,
    pub inode_entries: usize,
    pub net_entries: usize,
}

/// A loaded and (after [`Engine::attach`]) enforcing instance: one set of programs for every
/// agent it is given.
pub struct Engine {
    /// The loaded object (its programs); None for an engine adopted from pins, whose
    /// programs are already attached.
    ebpf: Option<Ebpf>,
    /// The shared maps ([`SHARED_MAPS`]), taken out of the object or opened from pins.
    maps: BTreeMap<&'static str, Map>,
    links: Vec<PinnedLink>,
    /// Bits of the inode filter minus one (`gate_common::filter`), and a copy of its words.
    filter_mask: u64,
    filter: Vec<u64>,
    /// The running kernel's BTF (read once: it is megabytes) and the programs that match its
    /// hooks.
    kernel: Option<aya::Btf>,
    hooks: Vec<(&'static str, &'static str)>,
    capacity: Capacity,
    agents: BTreeMap<u64, Agent>,
    host: HostConfig,
    /// The levels `HOST` held when this engine adopted it (kept for agents of unknown level).
    adopted_levels: BTreeSet<u32>,
    /// Rules of replaced policies and removed agents, with when they stopped being reachable
    /// from `AGENTS`: a program run that read the old entry just before the switch may still
    /// look them up, so they are deleted a grace period later ([`Engine::reap`]).
    retired: Vec<(std::time::Instant, SlotRules)>,
    last_slot: u32,
}

/// How long rules that no `AGENTS` entry points at any more stay in the maps: far longer than
/// any program run that read the old entry (LSM programs run under RCU and never sleep).
pub const RETIRE_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// `HOST.levels` for the levels in `want`, position-stable: a level that stays keeps its
/// position, a level no longer wanted becomes 0 (level 0 is the root cgroup, never an
/// agent's: a program that reads it finds no agent and goes on), a new level takes the first
/// free position. A program reading `HOST` while it is rewritten sees every level that
/// stays, whatever it reads of the others. Errors when more than [`MAX_LEVELS`] are wanted.
pub fn place_levels(host: &HostConfig, want: &BTreeSet<u32>) -> Result<HostConfig, String> {
    let mut h = *host;
    let used = (h.level_count as usize).min(MAX_LEVELS);
    for l in &mut h.levels[..used] {
        if !want.contains(l) {
            *l = 0;
        }
    }
    h.levels[used..].iter_mut().for_each(|l| *l = 0);
    let mut count = used;
    for &l in want.iter().filter(|&&l| l != 0) {
        if h.levels[..count].contains(&l) {
            continue;
        }
        if let Some(free) = h.levels[..count].iter().position(|&x| x == 0) {
            h.levels[free] = l;
        } else if count < MAX_LEVELS {
            h.levels[count] = l;
            count += 1;
        } else {
            return Err(format!(
                "agents' cgroups may sit at no more than {MAX_LEVELS} different depths \
                 (wanted: {want:?}); put agents under a common parent cgroup"
            ));
        }
    }
    while count > 0 && h.levels[count - 1] == 0 {
        count -= 1;
    }
    h.level_count = count as u32;
    Ok(h)
}

/// The maps userspace works with, by name and kind. They are what gets pinned under
/// `<dir>/maps/` and adopted back (the programs' read-only data stays with the programs).
pub const SHARED_MAPS: [&str; 12] = [
    "HOST",
    "AGENTS",
    "INODES",
    "PENDING",
    "VERDICTS",
    "FILTER",
    "NET4",
    "NET6",
    "EVENTS",
    "COUNTERS",
    "FLOWS",
    "FLOW_EPOCH",
];

fn wrap(name: &str, data: MapData) -> Map {
    match name {
        "HOST" | "FILTER" | "FLOW_EPOCH" => Map::Array(data),
        "AGENTS" | "INODES" | "PENDING" | "VERDICTS" | "FLOWS" => Map::HashMap(data),
        "NET4" | "NET6" => Map::LpmTrie(data),
        "EVENTS" => Map::RingBuf(data),
        _ => Map::PerCpuArray(data),
    }
}

fn map_data(m: &Map) -> &MapData {
    match m {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::RingBuf(d)
        | Map::PerCpuArray(d) => d,
        _ => unreachable!("gate's shared maps are of these kinds"),
    }
}

/// The kernel's view of the running kernel's BTF, for attaching.
fn kernel_btf() -> Result<aya::Btf, EngineError> {
    aya::Btf::from_sys_fs()
        .map_err(|e| EngineError::Btf(BtfError::Missing(format!("loadable BTF ({e})"))))
}

/// `CLOCK_BOOTTIME` in nanoseconds: the clock of `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The LPM trie keys of a policy's IPv4 prefix under `slot`.
pub fn net4_key(slot: u32, prefix: u32, addr: [u8; 4]) -> Key<[u8; 8]> {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&slot.to_be_bytes());
    k[4..].copy_from_slice(&addr);
    Key::new(32 + prefix, k)
}

/// The LPM trie keys of a policy's IPv6 prefix under `slot`.
pub fn net6_key(slot: u32, prefix: u32, addr: [u8; 16]) -> Key<[u8; 20]> {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&slot.to_be_bytes());
    k[4..].copy_from_slice(&addr);
    Key::new(32 + prefix, k)
}

impl Engine {
    /// Loads the object with maps of `capacity`, with nothing confined yet.
    pub fn load(capacity: Capacity, ringbuf_bytes: u32) -> Result<Self, EngineError> {
        if OBJECT.is_empty() {
            return Err(EngineError::NoObject);
        }
        let t = std::time::Instant::now();
        let ours = Btf::from_sys_fs()?;
        let offsets: KernelOffsets = btf::kernel_offsets(&ours)?;
        let hooks = btf::programs_for(&ours)?;
        drop(ours);
        let kernel = kernel_btf()?;
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "kernel BTF read");
        let filter_bits = gate_common::filter::bits_for(capacity.inodes as usize);
        let filter_mask = filter_bits - 1;
        let ebpf = EbpfLoader::new()
            .btf(Some(&kernel))
            .override_global("KOFFSETS", &offsets, true)
            .override_global("FILTER_MASK", &filter_mask, true)
            .map_max_entries("FILTER", (filter_bits / 64) as u32)
            .map_max_entries("AGENTS", capacity.agents.max(1))
            .map_max_entries("INODES", capacity.inodes.max(1))
            .map_max_entries("PENDING", capacity.inodes.max(1))
            .map_max_entries("NET4", capacity.net4.max(1))
            .map_max_entries("NET6", capacity.net6.max(1))
            .map_max_entries("VERDICTS", capacity.verdicts.max(1))
            .map_max_entries("EVENTS", ringbuf_bytes.next_power_of_two().max(1 << 16))
            .load(OBJECT)
            .map_err(EngineError::Load)?;
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "object loaded");
        let mut ebpf = ebpf;
        let mut maps = BTreeMap::new();
        for name in SHARED_MAPS {
            maps.insert(name, ebpf.take_map(name).ok_or(EngineError::Missing(name))?);
        }
        Ok(Engine {
            ebpf: Some(ebpf),
            maps,
            links: Vec::new(),
            filter_mask,
            filter: vec![0; (filter_bits / 64) as usize],
            kernel: Some(kernel),
            hooks,
            capacity,
            agents: BTreeMap::new(),
            host: HostConfig::default(),
            adopted_levels: BTreeSet::new(),
            retired: Vec::new(),
            last_slot: 0,
        })
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// A slot no agent uses (slots are not reused soon, so a program run that read an old
    /// agent entry finds no stray rules).
    fn fresh_slot(&mut self) -> u32 {
        loop {
            self.last_slot = self.last_slot.wrapping_add(1).max(1);
            let s = self.last_slot;
            if self.agents.values().all(|a| a.rules.slot != s)
                && self.retired.iter().all(|(_, r)| r.slot != s)
            {
                return s;
            }
        }
    }

    /// Writes `policy`'s rules and `extra` exact rules under `slot`. On a failure, removes
    /// what it wrote and says what failed: the maps are as before (up to filter bits, which
    /// only cost a lookup).
    fn write_rules(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        extra: &[(InodeKey, InodeRule)],
    ) -> Result<SlotRules, EngineError> {
        let mut written = SlotRules {
            slot,
            ..SlotRules::default()
        };
        match self.write_rules_into(&mut written, policy, extra) {
            Ok(()) => Ok(written),
            Err(e) => {
                self.delete_rules(&written);
                Err(e)
            }
        }
    }

    fn write_rules_into(
        &mut self,
        w: &mut SlotRules,
        policy: &CompiledPolicy,
        extra: &[(InodeKey, InodeRule)],
    ) -> Result<(), EngineError> {
        let slot = w.slot;
        let inodes: Vec<(InodeKey, InodeRule)> = policy
            .inodes
            .iter()
            .map(|(k, v)| (*k, *v))
            .chain(extra.iter().copied())
            .map(|(k, v)| (InodeKey { slot, ..k }, v))
            .collect();
        // The filter first: a key must never be in the rule map with its filter bit clear.
        let mut changed = BTreeMap::new();
        for (k, _) in &inodes {
            let (word, bit) = gate_common::filter::slot(k, self.filter_mask);
            let w = &mut self.filter[word as usize];
            if *w & bit == 0 {
                *w |= bit;
                changed.insert(word, *w);
            }
        }
        let mut filter: Array<_, u64> = self.map("FILTER")?;
        for (i, w) in changed {
            filter.set(i, w, 0).map_err(|source| EngineError::Map {
                map: "FILTER",
                source,
            })?;
        }
        let full = |map: &'static str, cap: u32| {
            move |source: aya::maps::MapError| EngineError::Full {
                map,
                capacity: cap,
                source,
            }
        };
        let cap = self.capacity;
        let mut map: HashMap<_, InodeKey, InodeRule> = self.map("INODES")?;
        for (k, v) in &inodes {
            map.insert(k, v, 0).map_err(full("INODES", cap.inodes))?;
            w.inodes.push(*k);
        }
        let mut pending: HashMap<_, PendingKey, PendingRule> = self.map("PENDING")?;
        for (k, v) in &policy.pending {
            let k = PendingKey { slot, ..*k };
            pending
                .insert(k, v, 0)
                .map_err(full("PENDING", cap.inodes))?;
            w.pending.push(k);
        }
        let mut net4: LpmTrie<_, [u8; 8], NetRule> = self.map("NET4")?;
        for ((prefix, addr), v) in &policy.net4 {
            let key = net4_key(slot, *prefix, *addr);
            net4.insert(&key, v, 0).map_err(full("NET4", cap.net4))?;
            w.net4.push(key);
        }
        let mut net6: LpmTrie<_, [u8; 20], NetRule> = self.map("NET6")?;
        for ((prefix, addr), v) in &policy.net6 {
            let key = net6_key(slot, *prefix, *addr);
            net6.insert(&key, v, 0).map_err(full("NET6", cap.net6))?;
            w.net6.push(key);
        }
        Ok(())
    }

    /// Removes a slot's entries (nothing reads them any more). A failure is logged: it leaves
    /// unreachable entries, never a wrong decision.
    fn delete_rules(&mut self, rules: &SlotRules) {
        let mut failed = 0usize;
        if let Ok(mut m) = self.map::<HashMap<_, InodeKey, InodeRule>>("INODES") {
            failed += rules.inodes.iter().filter(|k| m.remove(k).is_err()).count();
        }
        if let Ok(mut m) = self.map::<HashMap<_, PendingKey, PendingRule>>("PENDING") {
            failed += rules
                .pending
                .iter()
                .filter(|k| m.remove(k).is_err())
                .count();
        }
        if let Ok(mut m) = self.map::<LpmTrie<_, [u8; 8], NetRule>>("NET4") {
            failed += rules.net4.iter().filter(|k| m.remove(k).is_err()).count();
        }
        if let Ok(mut m) = self.map::<LpmTrie<_, [u8; 20], NetRule>>("NET6") {
            failed += rules.net6.iter().filter(|k| m.remove(k).is_err()).count();
        }
        if failed > 0 {
            tracing::warn!(
                slot = rules.slot,
                failed,
                "some rule entries of a replaced policy could not be removed; \
                they are unreachable and only take room"
            );
        }
    }

    /// The levels `HOST` must hold: every agent's, and while an agent's level is unknown,
    /// every level the kernel held at adoption (a level is never dropped while an agent may
    /// sit at it).
    fn wanted_levels(&self, extra: Option<u32>) -> BTreeSet<u32> {
        let mut want: BTreeSet<u32> = self.agents.values().filter_map(|a| a.level).collect();
        if self.agents.values().any(|a| a.level.is_none()) {
            want.extend(self.adopted_levels.iter().copied());
        }
        want.extend(extra);
        want
    }

    /// Deletes the retired rules whose grace period is over (called with every heartbeat).
    pub fn reap(&mut self, all: bool) {
        let now = std::time::Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|(at, _)| all || now.duration_since(*at) >= RETIRE_AFTER);
        self.retired = keep;
        for (_, rules) in due {
            self.delete_rules(&rules);
        }
    }

    fn retire(&mut self, rules: SlotRules) {
        self.retired.push((std::time::Instant::now(), rules));
    }

    fn write_host(&mut self) -> Result<(), EngineError> {
        let want = self.wanted_levels(None);
        let host = place_levels(&self.host, &want).map_err(EngineError::Agent)?;
        let mut map: Array<_, HostConfig> = self.map("HOST")?;
        map.set(0, host, 0).map_err(|source| EngineError::Map {
            map: "HOST",
            source,
        })?;
        self.host = host;
        Ok(())
    }

    /// Starts confining the cgroup `cgroup_id` (at `level` in the hierarchy) and everything
    /// below it with `policy`, plus `extra` exact rules (the self-test canary). Returns the
    /// slot of its rules.
    pub fn add_agent(
        &mut self,
        cgroup_id: u64,
        level: u32,
        agent_id: u32,
        policy: &CompiledPolicy,
        extra: &[(InodeKey, InodeRule)],
    ) -> Result<u32, EngineError> {
        if self.agents.contains_key(&cgroup_id) {
            return Err(EngineError::Agent(format!(
                "cgroup {cgroup_id} is already an agent"
            )));
        }
        place_levels(&self.host, &self.wanted_levels(Some(level))).map_err(EngineError::Agent)?;
        if self.agents.len() as u32 >= self.capacity.agents {
            return Err(EngineError::Agent(format!(
                "the engine has room for {} agents and all are in use",
                self.capacity.agents
            )));
        }
        let (slot, rules, config, quotas) = self.install(cgroup_id, agent_id, policy, extra)?;
        self.agents.insert(
            cgroup_id,
            Agent {
                level: Some(level),
                config,
                rules,
                quotas,
            },
        );
        if let Err(e) = self.write_host() {
            let _ = self.remove_agent(cgroup_id);
            return Err(e);
        }
        Ok(slot)
    }

    /// Writes `policy`'s rules under a fresh slot, then points the agent's one `AGENTS` entry
    /// at them; on a failure the new rules are removed and the entry is as it was.
    fn install(
        &mut self,
        cgroup_id: u64,
        agent_id: u32,
        policy: &CompiledPolicy,
        extra: &[(InodeKey, InodeRule)],
    ) -> Result<(u32, SlotRules, AgentConfig, Vec<VerdictKey>), EngineError> {
        let slot = self.fresh_slot();
        let rules = self.write_rules(slot, policy, extra)?;
        // The quotas' terms and counters go in before the policy that reads them.
        let mut quotas = Vec::new();
        for (k, v) in policy.quota_entries(agent_id) {
            if let Err(e) = self.write_verdict(k, v) {
                self.delete_rules(&rules);
                return Err(e);
            }
            quotas.push(k);
        }
        let config = policy.agent_config(slot, agent_id);
        if let Err(e) = self.set_agent(cgroup_id, config) {
            self.delete_rules(&rules);
            return Err(e);
        }
        Ok((slot, rules, config, quotas))
    }

    fn set_agent(&mut self, cgroup_id: u64, config: AgentConfig) -> Result<(), EngineError> {
        let mut map: HashMap<_, u64, AgentConfig> = self.map("AGENTS")?;
        map.insert(cgroup_id, config, 0)
            .map_err(|source| EngineError::Map {
                map: "AGENTS",
                source,
            })
    }

    /// Replaces an agent's policy atomically: the new rules go in under a fresh slot, then
    /// the agent's one entry switches to it, then the old rules go. Every decision is taken
    /// wholly by the old policy or wholly by the new one. On a failure the old one stays.
    pub fn replace_policy(
        &mut self,
        cgroup_id: u64,
        policy: &CompiledPolicy,
        extra: &[(InodeKey, InodeRule)],
    ) -> Result<u32, EngineError> {
        let Some(agent_id) = self.agents.get(&cgroup_id).map(|a| a.config.agent_id) else {
            return Err(EngineError::Agent(format!(
                "cgroup {cgroup_id} is no agent"
            )));
        };
        let (slot, rules, config, quotas) = self.install(cgroup_id, agent_id, policy, extra)?;
        let agent = self.agents.get_mut(&cgroup_id).expect("checked above");
        agent.config = config;
        let old = std::mem::replace(&mut agent.rules, rules);
        let old_quotas = std::mem::replace(&mut agent.quotas, quotas.clone());
        self.retire(old);
        for k in old_quotas.iter().filter(|k| !quotas.contains(k)) {
            let _ = self.remove_verdict(*k);
        }
        Ok(slot)
    }

    /// Stops confining an agent's cgroup and removes its rules.
    pub fn remove_agent(&mut self, cgroup_id: u64) -> Result<(), EngineError> {
        let Some(agent) = self.agents.remove(&cgroup_id) else {
            return Err(EngineError::Agent(format!(
                "cgroup {cgroup_id} is no agent"
            )));
        };
        let mut map: HashMap<_, u64, AgentConfig> = self.map("AGENTS")?;
        map.remove(&cgroup_id).map_err(|source| EngineError::Map {
            map: "AGENTS",
            source,
        })?;
        self.retire(agent.rules);
        // Its quotas and answers go with it (agent ids are not reused while entries remain).
        let agent_id = agent.config.agent_id;
        if let Ok(map) = self.map::<HashMap<_, VerdictKey, VerdictValue>>("VERDICTS") {
            let keys: Vec<VerdictKey> = map
                .keys()
                .flatten()
                .filter(|k| k.agent_id == agent_id)
                .collect();
            for k in keys {
                let _ = self.remove_verdict(k);
            }
        }
        self.write_host()?;
        Ok(())
    }

    /// Whether any of `cgroup_ids` is a key of the kernel's `AGENTS` map, read now: what
    /// the programs see, whatever this engine's copy says. A map that cannot be read counts
    /// as confining (the caller refuses).
    pub fn confines(&self, cgroup_ids: &[u64]) -> bool {
        let Some(m) = self.maps.get("AGENTS") else {
            return true;
        };
        let Ok(map) = HashMap::<_, u64, AgentConfig>::try_from(m) else {
            return true;
        };
        cgroup_ids.iter().any(|id| match map.get(id, 0) {
            Ok(_) => true,
            Err(aya::maps::MapError::KeyNotFound) => false,
            Err(_) => true,
        })
    }

    /// The agents, by cgroup id.
    pub fn agents(&self) -> Vec<AgentInfo> {
        self.agents
            .iter()
            .map(|(id, a)| AgentInfo {
                cgroup_id: *id,
                level: a.level.unwrap_or(0),
                config: a.config,
                inode_entries: a.rules.inodes.len(),
                net_entries: a.rules.net4.len() + a.rules.net6.len(),
            })
            .collect()
    }

    /// Writes the heartbeat (now) and the time after which a missed heartbeat puts every
    /// agent in lockdown (`None`: never).
    pub fn heartbeat(
        &mut self,
        lockdown_after: Option<std::time::Duration>,
    ) -> Result<(), EngineError> {
        self.host.heartbeat_ns = boot_ns();
        self.host.lockdown_after_ns = lockdown_after.map_or(0, |d| d.as_nanos() as u64);
        self.write_host()?;
        self.reap(false);
        Ok(())
    }

    /// Writes a verdict for one agent into `VERDICTS`.
    pub fn write_verdict(
        &mut self,
        key: VerdictKey,
        value: VerdictValue,
    ) -> Result<(), EngineError> {
        let cap = self.capacity.verdicts;
        let mut map: HashMap<_, VerdictKey, VerdictValue> = self.map("VERDICTS")?;
        map.insert(key, value, 0)
            .map_err(|source| EngineError::Full {
                map: "VERDICTS",
                capacity: cap,
                source,
            })
    }

    /// Removes a verdict from `VERDICTS` (absent is not an error).
    pub fn remove_verdict(&mut self, key: VerdictKey) -> Result<(), EngineError> {
        let mut map: HashMap<_, VerdictKey, VerdictValue> = self.map("VERDICTS")?;
        match map.remove(&key) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(EngineError::Map {
                map: "VERDICTS",
                source,
            }),
        }
    }

    /// The counters, summed over CPUs (unless taken with [`Engine::take_counters`]).
    pub fn read_counters(&self) -> Result<[u64; counter::COUNT as usize], EngineError> {
        let map = self
            .maps
            .get("COUNTERS")
            .ok_or(EngineError::Missing("COUNTERS"))?;
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| EngineError::Map {
                map: "COUNTERS",
                source,
            })?;
        read_counters(&arr)
    }

    fn map<'a, T>(&'a mut self, name: &'static str) -> Result<T, EngineError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.maps.get_mut(name).ok_or(EngineError::Missing(name))?;
        T::try_from(map).map_err(|source| EngineError::Map { map: name, source })
    }

    /// Loads and attaches every program, pinning each link under `pin_dir` (a bpffs
    /// directory) so that enforcement stays in place if this process dies.
    pub fn attach(&mut self, pin_dir: &Path) -> Result<(), EngineError> {
        let (Some(ebpf), Some(kernel)) = (self.ebpf.as_mut(), self.kernel.as_ref()) else {
            return Err(EngineError::Agent(
                "an adopted engine's programs are attached already".into(),
            ));
        };
        for (name, link) in attach_all(ebpf, kernel, &self.hooks)? {
            let path = pin_dir.join(name);
            let pinned = link.pin(&path).map_err(|e| EngineError::Pin {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            self.links.push(pinned);
        }
        Ok(())
    }

    /// The event ring buffer (can be taken once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, EngineError> {
        Ok(self.take_events_sized()?.0)
    }

    /// The event ring buffer and its size in bytes.
    pub fn take_events_sized(&mut self) -> Result<(RingBuf<MapData>, u64), EngineError> {
        let size = self
            .maps
            .get("EVENTS")
            .and_then(|m| map_data(m).info().ok())
            .map_or(0, |i| u64::from(i.max_entries()));
        let map = self
            .maps
            .remove("EVENTS")
            .ok_or(EngineError::Missing("EVENTS"))?;
        let ring = RingBuf::try_from(map).map_err(|source| EngineError::Map {
            map: "EVENTS",
            source,
        })?;
        Ok((ring, size))
    }

    /// The network flows the kernel counts (can be taken once).
    pub fn take_flows(&mut self) -> Result<crate::flows::Flows, EngineError> {
        let map = self
            .maps
            .remove("FLOWS")
            .ok_or(EngineError::Missing("FLOWS"))?;
        let epoch = self
            .maps
            .remove("FLOW_EPOCH")
            .ok_or(EngineError::Missing("FLOW_EPOCH"))?;
        Ok(crate::flows::Flows::new(map, epoch))
    }

    /// The per-CPU counters (can be taken once).
    pub fn take_counters(&mut self) -> Result<Counters, EngineError> {
        let map = self
            .maps
            .remove("COUNTERS")
            .ok_or(EngineError::Missing("COUNTERS"))?;
        PerCpuArray::try_from(map)
            .map(Counters)
            .map_err(|source| EngineError::Map {
                map: "COUNTERS",
                source,
            })
    }

    /// Pins the shared maps as `<dir>/<NAME>` (before the events or counters are taken), so
    /// that a later daemon can adopt them.
    pub fn pin_maps(&self, dir: &Path) -> Result<(), EngineError> {
        for (name, map) in &self.maps {
            let path = dir.join(name);
            map.pin(&path).map_err(|e| EngineError::Pin {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Opens an engine a previous process left pinned: the maps in `maps_dir` (all of
    /// [`SHARED_MAPS`], or nothing is adopted) and the links in `links_dir`, which stay
    /// attached throughout. `levels` gives each agent's cgroup level (the kernel keeps only
    /// the set of levels); agents missing from it are adopted at the deepest level in use.
    pub fn adopt(
        maps_dir: &Path,
        links_dir: &Path,
        levels: &BTreeMap<u64, u32>,
    ) -> Result<Self, EngineError> {
        let mut maps = BTreeMap::new();
        for name in SHARED_MAPS {
            let path = maps_dir.join(name);
            let data = MapData::from_pin(&path).map_err(|e| EngineError::Pin {
                path: path.clone(),
                reason: format!("cannot open the pinned map ({e}); nothing was adopted"),
            })?;
            maps.insert(name, wrap(name, data));
        }
        let mut links = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(links_dir)
            .map_err(|e| EngineError::Pin {
                path: links_dir.to_path_buf(),
                reason: e.to_string(),
            })?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let link = PinnedLink::from_pin(e.path()).map_err(|err| EngineError::Pin {
                path: e.path(),
                reason: err.to_string(),
            })?;
            links.push(link);
        }
        let max = |name: &str| -> Result<u32, EngineError> {
            map_data(&maps[name])
                .info()
                .map(|i| i.max_entries())
                .map_err(|source| EngineError::Map {
                    map: "info",
                    source,
                })
        };
        let capacity = Capacity {
            agents: max("AGENTS")?,
            inodes: max("INODES")?,
            net4: max("NET4")?,
            net6: max("NET6")?,
            verdicts: max("VERDICTS")?,
        };
        let words = max("FILTER")?;
        let mut engine = Engine {
            ebpf: None,
            maps,
            links,
            filter_mask: words as u64 * 64 - 1,
            filter: vec![0; words as usize],
            kernel: None,
            hooks: Vec::new(),
            capacity,
            agents: BTreeMap::new(),
            host: HostConfig::default(),
            adopted_levels: BTreeSet::new(),
            retired: Vec::new(),
            last_slot: 0,
        };
        engine.read_back(levels)?;
        Ok(engine)
    }

    /// Rebuilds the engine's view (filter words, host config, agents and their rule keys)
    /// from the maps.
    fn read_back(&mut self, levels: &BTreeMap<u64, u32>) -> Result<(), EngineError> {
        let err = |map: &'static str| move |source| EngineError::Map { map, source };
        let n = self.filter.len() as u32;
        let filter: Array<_, u64> = self.map("FILTER")?;
        let words: Vec<u64> = (0..n)
            .map(|i| filter.get(&i, 0).unwrap_or(u64::MAX))
            .collect();
        self.filter = words;
        let host: Array<_, HostConfig> = self.map("HOST")?;
        self.host = host.get(&0, 0).map_err(err("HOST"))?;
        let mut by_slot: BTreeMap<u32, SlotRules> = BTreeMap::new();
        let inodes: HashMap<_, InodeKey, InodeRule> = self.map("INODES")?;
        for k in inodes.keys() {
            let k = k.map_err(err("INODES"))?;
            by_slot.entry(k.slot).or_default().inodes.push(k);
        }
        let pending: HashMap<_, PendingKey, PendingRule> = self.map("PENDING")?;
        for k in pending.keys() {
            let k = k.map_err(err("PENDING"))?;
            by_slot.entry(k.slot).or_default().pending.push(k);
        }
        let net4: LpmTrie<_, [u8; 8], NetRule> = self.map("NET4")?;
        for k in net4.keys() {
            let k = k.map_err(err("NET4"))?;
            let slot = u32::from_be_bytes(k.data()[..4].try_into().expect("4 bytes"));
            by_slot.entry(slot).or_default().net4.push(k);
        }
        let net6: LpmTrie<_, [u8; 20], NetRule> = self.map("NET6")?;
        for k in net6.keys() {
            let k = k.map_err(err("NET6"))?;
            let slot = u32::from_be_bytes(k.data()[..4].try_into().expect("4 bytes"));
            by_slot.entry(slot).or_default().net6.push(k);
        }
        let agents: HashMap<_, u64, AgentConfig> = self.map("AGENTS")?;
        let mut found = Vec::new();
        for item in agents.iter() {
            found.push(item.map_err(err("AGENTS"))?);
        }
        self.adopted_levels = self.host.levels
            [..self.host.level_count.min(MAX_LEVELS as u32) as usize]
            .iter()
            .copied()
            .filter(|&l| l != 0)
            .collect();
        let quota_keys: Vec<VerdictKey> = self
            .map::<HashMap<_, VerdictKey, VerdictValue>>("VERDICTS")
            .map(|m| {
                m.keys()
                    .flatten()
                    .filter(|k| {
                        k.kind == gate_common::verdict_kind::QUOTA
                            || k.kind == gate_common::verdict_kind::QUOTA_TERMS
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (cgroup_id, config) in found {
            let mut rules = by_slot.remove(&config.slot).unwrap_or_default();
            rules.slot = config.slot;
            self.last_slot = self.last_slot.max(config.slot);
            self.agents.insert(
                cgroup_id,
                Agent {
                    level: levels.get(&cgroup_id).copied(),
                    config,
                    rules,
                    quotas: quota_keys
                        .iter()
                        .filter(|k| k.agent_id == config.agent_id)
                        .copied()
                        .collect(),
                },
            );
        }
        // Entries of slots no agent uses (an operation cut short): unreachable, removed.
        for (slot, mut rules) in by_slot {
            rules.slot = slot;
            self.delete_rules(&rules);
        }
        Ok(())
    }

    /// Stops enforcing: unpins every link, then lets the kernel detach them.
    ///
    /// The kernel's release of an LSM link waits, under a mutex all hooks share, for every
    /// task to pass a voluntary context switch (an RCU-tasks grace period: 0.1 s per link in a
    /// guest without hardware virtualisation, 41 links). Only the last reference to a link
    /// pays that, so a child process takes over this process's open files, waits until this
    /// process has closed its own references, and closes them in the background: `gate run`
    /// returns as soon as the agent's processes are gone (they are, before this is called),
    /// and the hooks it leaves behind for those seconds have no agent to decide for.
    pub fn detach(mut self) -> Result<(), std::io::Error> {
        let mut unpinned = Vec::with_capacity(self.links.len());
        for link in self.links.drain(..) {
            unpinned.push(link.unpin()?);
        }
        let releaser = release_in_background();
        drop(unpinned);
        drop(self);
        drop(releaser);
        Ok(())
    }
}

/// Forks the process that closes the last references to this process's open files (see
/// [`Engine::detach`]); returns the pipe end whose closing tells it to start. None when the
/// fork fails: the references are then closed here, just more slowly.
fn release_in_background() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd as _;
    let (read_end, write_end) = nix::unistd::pipe().ok()?;
    // SAFETY: the child makes async-signal-safe calls only, then _exit.
    match unsafe { libc::fork() } {
        0 => unsafe {
            let r = read_end.as_raw_fd();
            // Whoever reads gate's output must not wait for this process: its standard
            // streams go first.
            for fd in 0..3 {
                if fd != r {
                    libc::close(fd);
                }
            }
            libc::close(write_end.as_raw_fd());
            let mut byte = 0u8;
            while libc::read(r, (&raw mut byte).cast(), 1) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
            libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
            libc::_exit(0)
        },
        pid if pid > 0 => {
            drop(read_end);
            Some(write_end)
        }
        _ => None,
    }
}

/// Loads and attaches the programs of `ebpf` named in `hooks` (those that match this kernel's
/// hook signatures, `btf::programs_for`).
fn attach_all(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    hooks: &[(&'static str, &'static str)],
) -> Result<Vec<(&'static str, FdLink)>, EngineError> {
    let err = |name: &str, source| EngineError::Program {
        program: name.to_string(),
        source,
    };
    // The programs, in the order of `hooks`.
    let mut progs: Vec<(&'static str, &'static str, &mut Lsm)> = Vec::new();
    let mut by_name: BTreeMap<&str, &mut aya::programs::Program> = ebpf.programs_mut().collect();
    for &(name, hook) in hooks {
        let prog = by_name
            .remove(name)
            .ok_or(EngineError::Missing("an LSM program"))?;
        let prog: &mut Lsm = prog.try_into().map_err(|e| err(name, e))?;
        progs.push((name, hook, prog));
    }
    // Loading is the kernel's verifier at work, one program per call and CPU: spread over the
    // CPUs, the start takes a fraction of the time. Nothing is attached before every program
    // is loaded.
    let started = std::time::Instant::now();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let per = progs.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = progs
            .chunks_mut(per)
            .map(|chunk| {
                scope.spawn(move || {
                    for (name, hook, prog) in chunk.iter_mut() {
                        let p = std::time::Instant::now();
                        prog.load(hook, btf).map_err(|e| err(name, e))?;
                        tracing::debug!(
                            program = *name,
                            ms = p.elapsed().as_millis() as u64,
                            insns = prog
                                .info()
                                .ok()
                                .and_then(|i| i.verified_instruction_count()),
                            xlated = prog.info().ok().and_then(|i| i.size_translated()),
                            "verified"
                        );
                    }
                    Ok::<(), EngineError>(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(EngineError::Missing("a program loader thread")))
        })
    })?;
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        threads,
        "programs loaded"
    );
    let mut links = Vec::new();
    for (name, _, prog) in progs {
        let id = prog.attach().map_err(|e| err(name, e))?;
        links.push((name, prog.take_link(id).map_err(|e| err(name, e))?.into()));
    }
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "programs attached"
    );
    Ok(links)
}

/// Empty programs on gate's hooks (the benchmarks' "any BPF LSM enforcer" floor); detached
/// when dropped.
pub struct NullEngine {
    _links: Vec<FdLink>,
    _ebpf: Ebpf,
}

impl NullEngine {
    pub fn attach() -> Result<Self, EngineError> {
        if NULL_OBJECT.is_empty() {
            return Err(EngineError::NoObject);
        }
        let hooks = btf::programs_for(&Btf::from_sys_fs()?)?;
        let kernel = kernel_btf()?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&kernel))
            .load(NULL_OBJECT)
            .map_err(EngineError::Load)?;
        let links = attach_all(&mut ebpf, &kernel, &hooks)?
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        Ok(NullEngine {
            _links: links,
            _ebpf: ebpf,
        })
    }
}

/// The kernel's per-CPU counters (`gate_common::counter::*`).
pub struct Counters(PerCpuArray<MapData, u64>);

impl Counters {
    /// Totals over all CPUs.
    pub fn read(&self) -> Result<[u64; counter::COUNT as usize], EngineError> {
        read_counters(&self.0)
    }
}

fn read_counters<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, u64>,
) -> Result<[u64; counter::COUNT as usize], EngineError> {
    {
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = map.get(&(i as u32), 0).map_err(|source| EngineError::Map {
                map: "COUNTERS",
                source,
            })?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}
