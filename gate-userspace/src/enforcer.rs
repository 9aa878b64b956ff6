//! The seam in front of the kernel: what the daemon and `gate run` need from an enforcement
//! engine, with two implementations.
//!
//! - [`Engine`] (aya): the real programs and maps.
//! - [`MemEnforcer`]: the same maps as plain collections and the same decision model as the
//!   kernel programs (exact rule on the object, subtree rules on every ancestor, the most
//!   severe wins, then the default, then lockdown), so lifecycle logic — adding, replacing and
//!   removing agents, slots, heartbeats — is unit-tested on the host without root.
use std::{collections::BTreeMap, time::Duration};

use gate_common::{
    AgentConfig, HostConfig, InodeKey, InodeRule, MODE_AUDIT, NetRule, VerdictKey, VerdictValue,
    counter, decision, rule,
};

use crate::{
    engine::{AgentInfo, Capacity, Engine, EngineError},
    policy::CompiledPolicy,
};

/// Exact rules an agent gets beyond its policy's (the self-test canary).
pub type Extra = [(InodeKey, InodeRule)];

/// What gate asks of an enforcement engine.
pub trait Enforcer: Send {
    /// Starts confining cgroup `cgroup_id` (at `level`) and below with `policy`; the slot.
    fn add_agent(
        &mut self,
        cgroup_id: u64,
        level: u32,
        agent_id: u32,
        policy: &CompiledPolicy,
        extra: &Extra,
    ) -> Result<u32, EngineError>;
    /// Replaces an agent's policy atomically; on failure the old one stays. The new slot.
    fn replace_policy(
        &mut self,
        cgroup_id: u64,
        policy: &CompiledPolicy,
        extra: &Extra,
    ) -> Result<u32, EngineError>;
    /// Stops confining an agent and drops its rules.
    fn remove_agent(&mut self, cgroup_id: u64) -> Result<(), EngineError>;
    /// Writes a verdict for one agent (approvals, rejections, quotas).
    fn write_verdict(&mut self, key: VerdictKey, value: VerdictValue) -> Result<(), EngineError>;
    /// Removes a verdict (absent is not an error).
    fn remove_verdict(&mut self, key: VerdictKey) -> Result<(), EngineError>;
    /// Writes the heartbeat; `lockdown_after`: when a missed heartbeat means lockdown.
    fn heartbeat(&mut self, lockdown_after: Option<Duration>) -> Result<(), EngineError>;
    /// The kernel's counters, summed over CPUs.
    fn counters(&self) -> Result<[u64; counter::COUNT as usize], EngineError>;
    /// The agents, by cgroup id.
    fn agents(&self) -> Vec<AgentInfo>;
    fn capacity(&self) -> Capacity;
    /// Whether any of `cgroup_ids` (a process's cgroup and its ancestors) is an agent's root
    /// cgroup in the enforcer itself (for the kernel: its `AGENTS` map, read now, not a copy).
    fn confines(&self, cgroup_ids: &[u64]) -> bool {
        let agents = self.agents();
        cgroup_ids
            .iter()
            .any(|id| agents.iter().any(|a| a.cgroup_id == *id))
    }
}

impl Enforcer for Engine {
    fn add_agent(
        &mut self,
        cgroup_id: u64,
        level: u32,
        agent_id: u32,
        policy: &CompiledPolicy,
        extra: &Extra,
    ) -> Result<u32, EngineError> {
        Engine::add_agent(self, cgroup_id, level, agent_id, policy, extra)
    }
    fn replace_policy(
        &mut self,
        cgroup_id: u64,
        policy: &CompiledPolicy,
        extra: &Extra,
    ) -> Result<u32, EngineError> {
        Engine::replace_policy(self, cgroup_id, policy, extra)
    }
    fn remove_agent(&mut self, cgroup_id: u64) -> Result<(), EngineError> {
        Engine::remove_agent(self, cgroup_id)
    }
    fn write_verdict(&mut self, key: VerdictKey, value: VerdictValue) -> Result<(), EngineError> {
        Engine::write_verdict(self, key, value)
    }
    fn remove_verdict(&mut self, key: VerdictKey) -> Result<(), EngineError> {
        Engine::remove_verdict(self, key)
    }
    fn heartbeat(&mut self, lockdown_after: Option<Duration>) -> Result<(), EngineError> {
        Engine::heartbeat(self, lockdown_after)
    }
    fn counters(&self) -> Result<[u64; counter::COUNT as usize], EngineError> {
        Engine::read_counters(self)
    }
    fn agents(&self) -> Vec<AgentInfo> {
        Engine::agents(self)
    }
    fn capacity(&self) -> Capacity {
        Engine::capacity(self)
    }
    fn confines(&self, cgroup_ids: &[u64]) -> bool {
        Engine::confines(self, cgroup_ids)
    }
}

/// An object as the kernel's walk sees it.
#[derive(Clone, Debug)]
pub enum MemObject {
    /// (device, inode) of the object, then of each ancestor up to the root (mount points
    /// crossed as the kernel crosses them).
    File(Vec<(u32, u64)>),
    /// IPv4 address and port.
    V4([u8; 4], u16),
    /// IPv6 address and port.
    V6([u8; 16], u16),
}

/// The in-memory enforcer: the kernel's maps and decisions without a kernel.
#[derive(Default)]
pub struct MemEnforcer {
    capacity: Option<Capacity>,
    host: HostConfig,
    agents: BTreeMap<u64, (u32, AgentConfig)>,
    inodes: BTreeMap<InodeKey, InodeRule>,
    net4: BTreeMap<(u32, u32, [u8; 4]), NetRule>,
    net6: BTreeMap<(u32, u32, [u8; 16]), NetRule>,
    verdicts: std::collections::HashMap<VerdictKey, VerdictValue>,
    counters: [u64; counter::COUNT as usize],
    last_slot: u32,
    /// Boot-clock now, set by tests.
    pub now_ns: u64,
}

/// The outcome of [`MemEnforcer::decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemDecision {
    /// The hook's errno result: 0 or -EPERM.
    pub ret: i32,
    pub decision: u8,
    pub rule: u16,
    pub agent_id: u32,
    pub slot: u32,
    /// `flag::APPROVED` / `flag::REJECTED` when a verdict answered an `ask`.
    pub flags: u8,
}

impl MemEnforcer {
    pub fn new(capacity: Capacity) -> Self {
        MemEnforcer {
            capacity: Some(capacity),
            ..Default::default()
        }
    }

    fn cap(&self) -> Capacity {
        self.capacity.unwrap_or(Capacity {
            agents: u32::MAX,
            inodes: u32::MAX,
            net4: u32::MAX,
            net6: u32::MAX,
            verdicts: u32::MAX,
        })
    }

    fn fresh_slot(&mut self) -> u32 {
        loop {
            self.last_slot = self.last_slot.wrapping_add(1).max(1);
            let s = self.last_slot;
            if self.agents.values().all(|(_, c)| c.slot != s) {
                return s;
            }
        }
    }

    fn write_rules(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        extra: &Extra,
    ) -> Result<(), EngineError> {
        let cap = self.cap();
        let n = policy.inodes.len() + extra.len();
        if self.inodes.len() + n > cap.inodes as usize {
            return Err(full("INODES", cap.inodes));
        }
        if self.net4.len() + policy.net4.len() > cap.net4 as usize {
            return Err(full("NET4", cap.net4));
        }
        if self.net6.len() + policy.net6.len() > cap.net6 as usize {
            return Err(full("NET6", cap.net6));
        }
        for (k, v) in policy
            .inodes
            .iter()
            .chain(extra.iter().map(|(k, v)| (k, v)))
        {
            self.inodes.insert(InodeKey { slot, ..*k }, *v);
        }
        for ((p, a), v) in &policy.net4 {
            self.net4.insert((slot, *p, *a), *v);
        }
        for ((p, a), v) in &policy.net6 {
            self.net6.insert((slot, *p, *a), *v);
        }
        Ok(())
    }

    fn drop_slot(&mut self, slot: u32) {
        self.inodes.retain(|k, _| k.slot != slot);
        self.net4.retain(|k, _| k.0 != slot);
        self.net6.retain(|k, _| k.0 != slot);
    }

    /// `HOST.levels` as the engine writes them (position-stable, see
    /// [`crate::engine::place_levels`]).
    fn write_levels(&mut self) {
        let want = self.agents.values().map(|(l, _)| *l).collect();
        self.host = crate::engine::place_levels(&self.host, &want)
            .expect("checked when the agent was added");
    }

    /// Entries of `VERDICTS` (answers, quota terms and counters).
    pub fn verdict_count(&self) -> usize {
        self.verdicts.len()
    }

    /// Rule entries in the maps, all slots together (for tests: replaced slots are gone).
    pub fn entries(&self) -> usize {
        self.inodes.len() + self.net4.len() + self.net6.len()
    }

    /// The kernel's decision for a task whose cgroup ancestors, from the root (level 0) down,
    /// are `ancestors`, doing `op` on `obj`; None when the task is not confined.
    pub fn decide(&mut self, ancestors: &[u64], op: u8, obj: &MemObject) -> Option<MemDecision> {
        let host = self.host;
        let cfg = (0..host.level_count as usize).find_map(|i| {
            let id = *ancestors.get(host.levels[i] as usize)?;
            self.agents.get(&id).map(|(_, c)| *c)
        })?;
        let locked = host.lockdown_after_ns != 0
            && self.now_ns > host.heartbeat_ns
            && self.now_ns - host.heartbeat_ns > host.lockdown_after_ns;
        let (mut d, mut r) = (decision::NONE, rule::DEFAULT);
        let merge = |d: &mut u8, r: &mut u16, dd: u8, rr: u16| {
            let sev = dd & decision::MASK;
            if sev > *d & decision::MASK {
                *d = dd;
                *r = rr;
            } else if sev != decision::NONE && sev == *d & decision::MASK {
                *d |= dd & decision::AUDIT;
            }
        };
        match obj {
            MemObject::File(chain) => {
                let o = usize::from(op & 3);
                for (level, (dev, ino)) in chain.iter().enumerate() {
                    let key = InodeKey {
                        dev: *dev,
                        slot: cfg.slot,
                        ino: *ino,
                    };
                    if let Some(x) = self.inodes.get(&key) {
                        if level == 0 {
                            merge(&mut d, &mut r, x.exact[o], x.exact_rule[o]);
                        } else {
                            merge(&mut d, &mut r, x.subtree[o], x.subtree_rule[o]);
                        }
                    }
                    if d & decision::MASK == decision::DENY {
                        break;
                    }
                }
            }
            MemObject::V4(addr, port) => {
                let a = u32::from_be_bytes(*addr);
                let best = self
                    .net4
                    .iter()
                    .filter(|((s, p, pa), _)| {
                        *s == cfg.slot
                            && (*p == 0 || (a ^ u32::from_be_bytes(*pa)) >> (32 - p.min(&32)) == 0)
                    })
                    .max_by_key(|((_, p, _), _)| *p)
                    .map(|(_, v)| *v);
                if let Some(v) = best {
                    for pr in v.ports.iter().take(v.count as usize) {
                        if pr.lo <= *port && *port <= pr.hi {
                            merge(&mut d, &mut r, pr.decision, pr.rule);
                        }
                    }
                }
            }
            MemObject::V6(addr, port) => {
                let a = u128::from_be_bytes(*addr);
                let best = self
                    .net6
                    .iter()
                    .filter(|((s, p, pa), _)| {
                        *s == cfg.slot
                            && (*p == 0
                                || (a ^ u128::from_be_bytes(*pa)) >> (128 - p.min(&128)) == 0)
                    })
                    .max_by_key(|((_, p, _), _)| *p)
                    .map(|(_, v)| *v);
                if let Some(v) = best {
                    for pr in v.ports.iter().take(v.count as usize) {
                        if pr.lo <= *port && *port <= pr.hi {
                            merge(&mut d, &mut r, pr.decision, pr.rule);
                        }
                    }
                }
            }
        }
        if d & decision::MASK == decision::NONE {
            d = cfg.defaults[usize::from(op & 3)];
            r = rule::DEFAULT;
            if d & decision::MASK == decision::NONE {
                d = decision::DENY;
            }
        }
        let mut lockdown = false;
        if locked && cfg.lockdown_keep & (1 << op) == 0 {
            self.counters[counter::LOCKDOWN as usize] += 1;
            d = decision::DENY;
            r = rule::LOCKDOWN;
            lockdown = true;
        }
        let mut flags = 0;
        if d & decision::LIMITED != 0 && d & decision::MASK == decision::ALLOW {
            // As `decide::over_limit`.
            let key = |kind| VerdictKey {
                agent_id: cfg.agent_id,
                rule: r,
                op,
                kind,
                ..Default::default()
            };
            let terms = self
                .verdicts
                .get(&key(gate_common::verdict_kind::QUOTA_TERMS))
                .copied();
            let now = self.now_ns;
            let over = match (
                terms,
                self.verdicts
                    .get_mut(&key(gate_common::verdict_kind::QUOTA)),
            ) {
                (Some(t), Some(c)) => {
                    if now >= c.expires_ns {
                        c.expires_ns = now + t.expires_ns;
                        c.source = 0;
                    }
                    c.source += 1;
                    (c.source > t.source).then_some(t.decision)
                }
                _ => Some(decision::DENY),
            };
            if let Some(o) = over {
                d = o;
                flags |= gate_common::flag::OVER_LIMIT;
            }
        }
        if d & decision::MASK == decision::ASK {
            // As `decide::answered`: the object's verdict first, then the rule's.
            let mut key = VerdictKey {
                agent_id: cfg.agent_id,
                rule: r,
                op,
                kind: gate_common::verdict_kind::OBJECT,
                ..Default::default()
            };
            match obj {
                MemObject::File(chain) => {
                    if let Some((dev, ino)) = chain.first() {
                        key.dev = *dev;
                        key.obj[..8].copy_from_slice(&ino.to_ne_bytes());
                    }
                }
                MemObject::V4(a, port) => {
                    key.family = libc::AF_INET as u16;
                    key.port = *port;
                    key.obj[..4].copy_from_slice(a);
                }
                MemObject::V6(a, port) => {
                    key.family = libc::AF_INET6 as u16;
                    key.port = *port;
                    key.obj = *a;
                }
            }
            let rule_key = crate::daemon::asks::rule_key(&key);
            let now = self.now_ns;
            let answer = [key, rule_key]
                .iter()
                .find_map(|k| self.verdicts.get(k).filter(|v| now < v.expires_ns))
                .map(|v| v.decision & decision::MASK);
            if answer == Some(decision::ALLOW) {
                d = decision::ALLOW | decision::AUDIT;
                flags |= gate_common::flag::APPROVED;
            } else if answer == Some(decision::DENY) {
                flags |= gate_common::flag::REJECTED;
            }
        }
        self.counters[counter::DECISIONS as usize] += 1;
        let sev = d & decision::MASK;
        let denied = sev == decision::DENY || sev == decision::ASK;
        let ret = if denied && (cfg.mode != MODE_AUDIT || lockdown) {
            -libc::EPERM
        } else {
            0
        };
        Some(MemDecision {
            ret,
            decision: d,
            rule: r,
            agent_id: cfg.agent_id,
            slot: cfg.slot,
            flags,
        })
    }
}

fn full(map: &'static str, capacity: u32) -> EngineError {
    EngineError::Full {
        map,
        capacity,
        source: aya::maps::MapError::OutOfBounds {
            index: capacity,
            max_entries: capacity,
        },
    }
}

impl Enforcer for MemEnforcer {
    fn add_agent(
        &mut self,
        cgroup_id: u64,
        level: u32,
        agent_id: u32,
        policy: &CompiledPolicy,
        extra: &Extra,
    ) -> Result<u32, EngineError> {
        if self.agents.contains_key(&cgroup_id) {
            return Err(EngineError::Agent(format!(
                "cgroup {cgroup_id} is already an agent"
            )));
        }
        let mut want: std::collections::BTreeSet<u32> =
            self.agents.values().map(|(l, _)| *l).collect();
        want.insert(level);
        crate::engine::place_levels(&self.host, &want).map_err(EngineError::Agent)?;
        if self.agents.len() as u32 >= self.cap().agents {
            return Err(EngineError::Agent(format!(
                "the engine has room for {} agents and all are in use",
                self.cap().agents
            )));
        }
        let slot = self.fresh_slot();
        if let Err(e) = self.write_rules(slot, policy, extra) {
            self.drop_slot(slot);
            return Err(e);
        }
        self.verdicts.extend(policy.quota_entries(agent_id));
        self.agents
            .insert(cgroup_id, (level, policy.agent_config(slot, agent_id)));
        self.write_levels();
        Ok(slot)
    }

    fn replace_policy(
        &mut self,
        cgroup_id: u64,
        policy: &CompiledPolicy,
        extra: &Extra,
    ) -> Result<u32, EngineError> {
        let Some(&(level, old)) = self.agents.get(&cgroup_id) else {
            return Err(EngineError::Agent(format!(
                "cgroup {cgroup_id} is no agent"
            )));
        };
        let slot = self.fresh_slot();
        if let Err(e) = self.write_rules(slot, policy, extra) {
            self.drop_slot(slot);
            return Err(e);
        }
        self.verdicts.retain(|k, _| {
            k.agent_id != old.agent_id
                || (k.kind != gate_common::verdict_kind::QUOTA
                    && k.kind != gate_common::verdict_kind::QUOTA_TERMS)
        });
        self.verdicts.extend(policy.quota_entries(old.agent_id));
        self.agents
            .insert(cgroup_id, (level, policy.agent_config(slot, old.agent_id)));
        self.drop_slot(old.slot);
        Ok(slot)
    }

    fn remove_agent(&mut self, cgroup_id: u64) -> Result<(), EngineError> {
        let Some((_, cfg)) = self.agents.remove(&cgroup_id) else {
            return Err(EngineError::Agent(format!(
                "cgroup {cgroup_id} is no agent"
            )));
        };
        self.write_levels();
        self.drop_slot(cfg.slot);
        self.verdicts.retain(|k, _| k.agent_id != cfg.agent_id);
        Ok(())
    }

    fn write_verdict(&mut self, key: VerdictKey, value: VerdictValue) -> Result<(), EngineError> {
        let k = key;
        if !self.verdicts.contains_key(&k) && self.verdicts.len() >= self.cap().verdicts as usize {
            return Err(full("VERDICTS", self.cap().verdicts));
        }
        self.verdicts.insert(k, value);
        Ok(())
    }

    fn remove_verdict(&mut self, key: VerdictKey) -> Result<(), EngineError> {
        self.verdicts.remove(&key);
        Ok(())
    }

    fn heartbeat(&mut self, lockdown_after: Option<Duration>) -> Result<(), EngineError> {
        self.host.heartbeat_ns = self.now_ns;
        self.host.lockdown_after_ns = lockdown_after.map_or(0, |d| d.as_nanos() as u64);
        Ok(())
    }

    fn counters(&self) -> Result<[u64; counter::COUNT as usize], EngineError> {
        Ok(self.counters)
    }

    fn agents(&self) -> Vec<AgentInfo> {
        self.agents
            .iter()
            .map(|(id, (level, cfg))| AgentInfo {
                cgroup_id: *id,
                level: *level,
                config: *cfg,
                inode_entries: self.inodes.keys().filter(|k| k.slot == cfg.slot).count(),
                net_entries: self.net4.keys().filter(|k| k.0 == cfg.slot).count()
                    + self.net6.keys().filter(|k| k.0 == cfg.slot).count(),
            })
            .collect()
    }

    fn capacity(&self) -> Capacity {
        self.cap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Mode;
    use gate_common::{PortRule, op};

    const DEV: u32 = 0x0800_0001;

    /// A policy denying writes under inode 100 (rule 0) and allowing them under 200 (rule 1),
    /// allowing 10.0.0.0/8 port 443 (rule 2); defaults: deny writes, allow reads.
    fn policy(deny_ino: u64, allow_ino: u64) -> CompiledPolicy {
        let mut inodes = BTreeMap::new();
        let mut deny = InodeRule::default();
        deny.subtree[op::WRITE as usize] = decision::DENY;
        deny.subtree_rule[op::WRITE as usize] = 0;
        deny.exact = deny.subtree;
        deny.exact_rule = deny.subtree_rule;
        let mut allow = InodeRule::default();
        allow.subtree[op::WRITE as usize] = decision::ALLOW;
        allow.subtree_rule[op::WRITE as usize] = 1;
        allow.exact = allow.subtree;
        allow.exact_rule = allow.subtree_rule;
        let key = |ino| InodeKey {
            dev: DEV,
            slot: 0,
            ino,
        };
        inodes.insert(key(deny_ino), deny);
        inodes.insert(key(allow_ino), allow);
        let mut net = NetRule {
            count: 1,
            ..NetRule::default()
        };
        net.ports[0] = PortRule {
            lo: 443,
            hi: 443,
            decision: decision::ALLOW,
            _pad: 0,
            rule: 2,
        };
        let mut net4 = BTreeMap::new();
        net4.insert((8, [10, 0, 0, 0]), net);
        CompiledPolicy {
            name: "t".into(),
            mode: Mode::Enforce,
            audit_required: false,
            defaults: [
                decision::DENY,
                decision::DENY,
                decision::ALLOW,
                decision::DENY,
            ],
            rules: Vec::new(),
            inodes,
            inode_paths: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_paths: Vec::new(),
            net4,
            net6: Default::default(),
            has_read_rules: false,
            sockets: 0,
            caps: 0,
            grants: 0,
            lockdown_keep: 1 << op::READ,
            digest: [0; 32],
            warnings: Vec::new(),
            max_denials: None,
        }
    }

    fn file(inos: &[u64]) -> MemObject {
        MemObject::File(inos.iter().map(|i| (DEV, *i)).collect())
    }

    fn cap(agents: u32, inodes: u32) -> Capacity {
        Capacity {
            agents,
            inodes,
            net4: 64,
            net6: 64,
            verdicts: 4,
        }
    }

    #[test]
    fn unconfined_tasks_get_no_decision() {
        let mut e = MemEnforcer::new(cap(4, 64));
        e.add_agent(50, 2, 1, &policy(100, 200), &[]).unwrap();
        assert_eq!(e.decide(&[1, 7, 51], op::WRITE, &file(&[5, 100])), None);
        assert_eq!(e.decide(&[1, 7], op::WRITE, &file(&[5, 100])), None);
        let d = e
            .decide(&[1, 7, 50, 99], op::WRITE, &file(&[5, 100]))
            .unwrap();
        assert_eq!((d.ret, d.rule, d.agent_id), (-libc::EPERM, 0, 1));
    }

    #[test]
    fn agents_are_decided_by_their_own_policies() {
        let mut e = MemEnforcer::new(cap(4, 64));
        let a = e.add_agent(50, 2, 1, &policy(100, 200), &[]).unwrap();
        let b = e.add_agent(60, 2, 2, &policy(200, 100), &[]).unwrap();
        assert_ne!(a, b);
        let under_100 = file(&[5, 100, 1]);
        assert_eq!(
            e.decide(&[1, 7, 50], op::WRITE, &under_100).unwrap().ret,
            -libc::EPERM
        );
        assert_eq!(e.decide(&[1, 7, 60], op::WRITE, &under_100).unwrap().ret, 0);
        // Reads: the default allows them for both.
        assert_eq!(e.decide(&[1, 7, 50], op::READ, &under_100).unwrap().ret, 0);
        // Network: the slot prefix keeps each agent's prefixes its own.
        let v4 = MemObject::V4([10, 1, 2, 3], 443);
        assert_eq!(e.decide(&[1, 7, 60], op::CONNECT, &v4).unwrap().rule, 2);
        e.remove_agent(50).unwrap();
        assert_eq!(e.decide(&[1, 7, 50], op::WRITE, &under_100), None);
        assert_eq!(e.decide(&[1, 7, 60], op::WRITE, &under_100).unwrap().ret, 0);
    }

    #[test]
    fn replacing_a_policy_switches_slots_and_drops_the_old_rules() {
        let mut e = MemEnforcer::new(cap(2, 8));
        let s1 = e.add_agent(50, 2, 7, &policy(100, 200), &[]).unwrap();
        let entries = e.entries();
        let s2 = e.replace_policy(50, &policy(200, 100), &[]).unwrap();
        assert_ne!(s1, s2);
        assert_eq!(e.entries(), entries, "the old slot's entries are gone");
        let d = e.decide(&[1, 7, 50], op::WRITE, &file(&[5, 100])).unwrap();
        assert_eq!((d.ret, d.slot, d.agent_id), (0, s2, 7));
    }

    #[test]
    fn a_replacement_that_does_not_fit_leaves_the_old_policy() {
        let mut e = MemEnforcer::new(cap(2, 3));
        let s1 = e.add_agent(50, 2, 7, &policy(100, 200), &[]).unwrap();
        let err = e.replace_policy(50, &policy(200, 100), &[]).unwrap_err();
        assert!(err.to_string().contains("INODES"), "{err}");
        let d = e.decide(&[1, 7, 50], op::WRITE, &file(&[5, 100])).unwrap();
        assert_eq!((d.ret, d.slot), (-libc::EPERM, s1));
        assert_eq!(e.entries(), 3);
    }

    #[test]
    fn levels_are_limited_and_follow_the_agents() {
        let mut e = MemEnforcer::new(cap(8, 64));
        for (i, level) in [1u32, 2, 3, 4].iter().enumerate() {
            e.add_agent(100 + i as u64, *level, i as u32, &policy(1, 2), &[])
                .unwrap();
        }
        let err = e.add_agent(200, 5, 9, &policy(1, 2), &[]).unwrap_err();
        assert!(err.to_string().contains("different depths"), "{err}");
        e.add_agent(201, 4, 9, &policy(1, 2), &[]).unwrap();
        assert!(e.add_agent(201, 4, 9, &policy(1, 2), &[]).is_err());
        assert!(
            e.decide(&[1, 0, 0, 0, 201], op::WRITE, &file(&[1]))
                .is_some()
        );
    }

    #[test]
    fn levels_keep_their_positions_while_others_come_and_go() {
        use crate::engine::place_levels;
        use std::collections::BTreeSet;
        let set = |l: &[u32]| l.iter().copied().collect::<BTreeSet<u32>>();
        let h = place_levels(&HostConfig::default(), &set(&[3, 5])).unwrap();
        assert_eq!((h.levels, h.level_count), ([3, 5, 0, 0], 2));
        // Level 3 goes: 5 stays where a reader finds it, 3's place is free.
        let h = place_levels(&h, &set(&[5])).unwrap();
        assert_eq!((h.levels, h.level_count), ([0, 5, 0, 0], 2));
        // A new level takes the free place; 5 never moved.
        let h = place_levels(&h, &set(&[2, 5])).unwrap();
        assert_eq!((h.levels, h.level_count), ([2, 5, 0, 0], 2));
        let h = place_levels(&h, &set(&[2, 5, 7, 9])).unwrap();
        assert_eq!((h.levels, h.level_count), ([2, 5, 7, 9], 4));
        assert!(place_levels(&h, &set(&[1, 2, 5, 7, 9])).is_err());
        // Trailing free places are not scanned.
        let h = place_levels(&h, &set(&[2])).unwrap();
        assert_eq!((h.levels, h.level_count), ([2, 0, 0, 0], 1));
        let h = place_levels(&h, &set(&[])).unwrap();
        assert_eq!(h.level_count, 0);
    }

    #[test]
    fn a_stale_heartbeat_means_lockdown_and_a_fresh_one_lifts_it() {
        let mut e = MemEnforcer::new(cap(2, 64));
        e.add_agent(50, 2, 1, &policy(100, 200), &[]).unwrap();
        e.now_ns = 1_000;
        e.heartbeat(Some(Duration::from_nanos(500))).unwrap();
        let allowed = file(&[5, 200]);
        e.now_ns = 1_400;
        assert_eq!(e.decide(&[1, 7, 50], op::WRITE, &allowed).unwrap().ret, 0);
        e.now_ns = 1_600;
        let d = e.decide(&[1, 7, 50], op::WRITE, &allowed).unwrap();
        assert_eq!((d.ret, d.rule), (-libc::EPERM, rule::LOCKDOWN));
        // Reads are kept: still decided by the policy.
        assert_eq!(e.decide(&[1, 7, 50], op::READ, &allowed).unwrap().ret, 0);
        assert_eq!(e.counters().unwrap()[counter::LOCKDOWN as usize], 1);
        e.heartbeat(Some(Duration::from_nanos(500))).unwrap();
        assert_eq!(e.decide(&[1, 7, 50], op::WRITE, &allowed).unwrap().ret, 0);
    }

    #[test]
    fn lockdown_is_enforced_in_audit_mode() {
        let mut e = MemEnforcer::new(cap(2, 64));
        let mut p = policy(100, 200);
        p.mode = Mode::Audit;
        e.add_agent(50, 2, 1, &p, &[]).unwrap();
        assert_eq!(
            e.decide(&[1, 7, 50], op::WRITE, &file(&[5, 100]))
                .unwrap()
                .ret,
            0
        );
        e.heartbeat(Some(Duration::from_nanos(1))).unwrap();
        e.now_ns = 10;
        assert_eq!(
            e.decide(&[1, 7, 50], op::WRITE, &file(&[5, 100]))
                .unwrap()
                .ret,
            -libc::EPERM
        );
    }
}
