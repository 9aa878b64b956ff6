//! Requests raised by `ask` rules and the answers written into the kernel.
//!
//! The kernel denies an action an `ask` rule matches at once (it never waits for userspace)
//! and reports it. The event thread turns the report into a request here: one per agent,
//! operation, rule and object, which repeats of the same attempt join. A person's answer
//! becomes a verdict in the kernel's `VERDICTS` map for that agent and object (or the whole
//! rule), with its expiry in the entry: the kernel checks it on every use, so an approval ends
//! on time whether or not the daemon runs. Answers are remembered here until they expire, to
//! link the actions they let through to them and to record their end.
use std::collections::{BTreeMap, HashMap};

use gate_common::{Event, VerdictKey, VerdictValue, decision, flag, verdict_kind};
use gate_protocol::ApprovalRequest;
use serde::{Deserialize, Serialize};

/// Requests kept at once per agent; past this, its new attempts are denied and recorded but
/// raise no request (an agent cannot flood the people who answer, nor crowd out others).
pub const MAX_PENDING: usize = 64;

/// One request for approval: what `gate approvals` shows, and the kernel's key for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    pub info: ApprovalRequest,
    pub agent_id: u32,
    pub key: VerdictKey,
}

/// An answer written into the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub id: String,
    pub agent: String,
    pub agent_id: u32,
    pub allow: bool,
    /// `object` or `rule`.
    pub scope: String,
    pub by: String,
    pub op: String,
    pub object: String,
    pub rule: String,
    /// Unix seconds, and the boot-clock nanoseconds the kernel compares.
    pub expires: u64,
    pub expires_boot_ns: u64,
    pub key: KeyBytes,
}

/// A `VerdictKey` as stored in the daemon's state file: its 32 bytes, hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyBytes(pub VerdictKey);

impl Serialize for KeyBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // SAFETY: VerdictKey is repr(C), 32 bytes without padding (asserted in gate-common).
        let b: [u8; 32] = unsafe { std::mem::transmute(self.0) };
        s.serialize_str(&hex::encode(b))
    }
}

impl<'de> Deserialize<'de> for KeyBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let b: [u8; 32] = hex::decode(&text)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| serde::de::Error::custom("a verdict key is 32 bytes of hex"))?;
        // SAFETY: every bit pattern is a valid VerdictKey (integers and bytes only).
        Ok(KeyBytes(unsafe {
            std::mem::transmute::<[u8; 32], VerdictKey>(b)
        }))
    }
}

/// The kernel's object key for an event, as `decide::answered` builds it: a file by device
/// and inode, an address and port; `None` for anything else (only rule verdicts apply).
pub fn object_key(e: &Event, file: bool) -> Option<VerdictKey> {
    let mut k = VerdictKey {
        agent_id: e.agent_id,
        rule: e.rule,
        op: e.op,
        kind: verdict_kind::OBJECT,
        ..Default::default()
    };
    if file {
        if e.ino == 0 {
            return None;
        }
        k.dev = e.dev;
        k.obj[..8].copy_from_slice(&e.ino.to_ne_bytes());
    } else if e.family != 0 {
        k.family = e.family;
        k.port = e.port;
        k.obj = e.addr;
    } else {
        return None;
    }
    Some(k)
}

/// An agent's run: the boot's id (first 8 hex digits) and the agent's cgroup id, unique
/// across boots and daemon restarts.
pub fn run_id(cgroup_id: u64) -> String {
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let boot = BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|b| b.trim().replace('-', "").chars().take(8).collect())
            .unwrap_or_else(|_| "noboot".into())
    });
    format!("{boot}/{cgroup_id}")
}

/// The command line of `pid` and of its parents (nearest first, up to 6), read from /proc
/// (best effort). A process that ended before it could be read (a short-lived child) is named
/// by its command name, and the chain goes on from its parent `ppid`.
pub fn process_chain(pid: u32, comm: &str, ppid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut p = pid;
    while out.len() < 7 && p > 1 {
        let Some((cmd, parent)) = read_process(p) else {
            if p != pid {
                break;
            }
            out.push(format!("{pid}: {comm} (ended before it could be read)"));
            p = ppid;
            continue;
        };
        out.push(format!("{p}: {cmd}"));
        p = parent;
    }
    out
}

/// A process's command line (at most 512 bytes) and parent, from /proc; None when it is gone
/// (or a zombie, whose command line is empty).
fn read_process(p: u32) -> Option<(String, u32)> {
    let raw = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
    let mut cmd: String = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    if cmd.is_empty() {
        return None;
    }
    if cmd.len() > 512 {
        let mut cut = 512;
        while !cmd.is_char_boundary(cut) {
            cut -= 1;
        }
        cmd.truncate(cut);
        cmd.push('…');
    }
    // Field 4 of /proc/PID/stat, after the command name in parentheses.
    let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let parent = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((cmd, parent))
}

/// The rule-wide key of an object key.
pub fn rule_key(k: &VerdictKey) -> VerdictKey {
    VerdictKey {
        agent_id: k.agent_id,
        rule: k.rule,
        op: k.op,
        kind: verdict_kind::RULE,
        ..Default::default()
    }
}

/// An accepted signature of a request whose rule requires approvers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub key: crate::audit::PublicKey,
    /// The token as submitted.
    pub token: String,
    /// Unix seconds until which it approves.
    pub expires: u64,
}

/// Pending requests and live answers.
#[derive(Default)]
pub struct Asks {
    pending: BTreeMap<String, Ask>,
    /// Signatures collected so far, by request.
    signed: HashMap<String, Vec<Signed>>,
    index: HashMap<VerdictKey, String>,
    answers: Vec<Answer>,
    /// Requests not kept because their agent had [`MAX_PENDING`] pending.
    pub dropped: u64,
}

/// What the event thread learns from an `ask` event.
pub enum Seen {
    /// A new request (record it, tell the agent's terminal).
    New(Box<Ask>),
    /// A repeat of a pending request.
    Repeat(String),
    /// Let through or kept denied by an answer (its id), or not an open ask.
    Answered(Option<String>),
}

impl Asks {
    pub fn pending(&self) -> Vec<Ask> {
        let mut v: Vec<Ask> = self.pending.values().cloned().collect();
        v.sort_by_key(|a| (a.info.first, a.info.id.clone()));
        v
    }

    pub fn get(&self, id: &str) -> Option<&Ask> {
        self.pending.get(id)
    }

    /// The pending request `id`, or what to tell a person who named another.
    pub fn request(&self, id: &str) -> Result<&Ask, String> {
        self.pending.get(id).ok_or_else(|| {
            format!(
                "no pending request {id:?}: it was answered already, its agent ended, or the id \
                 is mistyped; `gate approvals` lists the pending ones"
            )
        })
    }

    pub fn answers(&self) -> &[Answer] {
        &self.answers
    }

    /// The answer in force for `key` (object first, then rule), if any.
    fn answer_for(&self, key: &VerdictKey, now_boot_ns: u64) -> Option<&Answer> {
        let rk = rule_key(key);
        let live = |k: &VerdictKey| {
            self.answers
                .iter()
                .find(|a| a.key.0 == *k && a.expires_boot_ns > now_boot_ns)
        };
        live(key).or_else(|| live(&rk))
    }

    /// Takes one decision event of an `ask` rule. `new` builds the request when there is none
    /// yet for this agent, operation, rule and object.
    pub fn observe(
        &mut self,
        e: &Event,
        key: VerdictKey,
        now_boot_ns: u64,
        now: u64,
        new: impl FnOnce(String) -> Ask,
    ) -> Seen {
        if e.flags & (flag::APPROVED | flag::REJECTED) != 0 {
            return Seen::Answered(self.answer_for(&key, now_boot_ns).map(|a| a.id.clone()));
        }
        if e.decision & decision::MASK != decision::ASK {
            return Seen::Answered(None);
        }
        if let Some(id) = self.index.get(&key)
            && let Some(a) = self.pending.get_mut(id)
        {
            a.info.last = now;
            a.info.attempts += 1;
            return Seen::Repeat(id.clone());
        }
        if self
            .pending
            .values()
            .filter(|a| a.agent_id == key.agent_id)
            .count()
            >= MAX_PENDING
        {
            self.dropped += 1;
            return Seen::Answered(None);
        }
        let id = loop {
            let id = crate::approval::nonce()[..6].to_owned();
            if !self.pending.contains_key(&id) && !self.answers.iter().any(|a| a.id == id) {
                break id;
            }
        };
        let mut a = new(id.clone());
        a.key = key;
        a.info.first = now;
        a.info.last = now;
        a.info.attempts = 1;
        self.index.insert(key, id.clone());
        self.pending.insert(id, a.clone());
        Seen::New(Box::new(a))
    }

    /// Answers a pending request: the verdict to write into the kernel and the answer to
    /// remember. The request stays pending until [`Asks::settle`] (the kernel write worked).
    #[allow(clippy::too_many_arguments)]
    pub fn answer(
        &self,
        id: &str,
        allow: bool,
        scope_rule: bool,
        ttl_s: u64,
        by: &str,
        now_boot_ns: u64,
        now: u64,
    ) -> Result<(VerdictKey, VerdictValue, Answer), String> {
        let a = self.request(id)?;
        let (agent_id, a) = (a.agent_id, &a.info);
        if !scope_rule && !a.has_object {
            return Err(format!(
                "request {id} has no single object to approve ({}: a file that did not exist \
                 yet, or neither a file nor an address); approve it with --scope rule \
                 (everything rule {} matches)",
                a.object, a.rule
            ));
        }
        let key = self.pending[id].key;
        let key = if scope_rule { rule_key(&key) } else { key };
        let value = VerdictValue {
            expires_ns: now_boot_ns + ttl_s * 1_000_000_000,
            decision: if allow {
                decision::ALLOW
            } else {
                decision::DENY
            },
            _pad: [0; 3],
            source: u32::from_str_radix(id, 16).unwrap_or(0),
        };
        let answer = Answer {
            id: id.to_owned(),
            agent: a.agent.clone(),
            agent_id,
            allow,
            scope: if scope_rule { "rule" } else { "object" }.into(),
            by: by.to_owned(),
            op: a.op.clone(),
            object: if scope_rule {
                format!("everything rule {} matches", a.rule)
            } else {
                a.object.clone()
            },
            rule: a.rule.clone(),
            expires: now + ttl_s,
            expires_boot_ns: value.expires_ns,
            key: KeyBytes(key),
        };
        Ok((key, value, answer))
    }

    /// The answer is in the kernel: the request is closed and the answer kept until it ends.
    /// A rule-wide answer also closes the rule's other pending requests of that agent.
    pub fn settle(&mut self, answer: Answer) -> Vec<String> {
        let key = answer.key.0;
        let mut closed = Vec::new();
        let ids: Vec<String> = self
            .pending
            .values()
            .filter(|a| {
                a.info.id == answer.id
                    || (key.kind == verdict_kind::RULE && rule_key(&a.key) == key)
            })
            .map(|a| a.info.id.clone())
            .collect();
        for id in ids {
            self.signed.remove(&id);
            if let Some(a) = self.pending.remove(&id) {
                self.index.remove(&a.key);
                closed.push(id);
            }
        }
        self.put(answer);
        closed
    }

    /// Puts `answer` in force, in place of any earlier answer for its key.
    fn put(&mut self, answer: Answer) {
        self.answers.retain(|a| a.key.0 != answer.key.0);
        self.answers.push(answer);
    }

    /// Answers that ended by `now_boot_ns` (their kernel entries no longer apply; the caller
    /// deletes them and records their end).
    pub fn expire(&mut self, now_boot_ns: u64) -> Vec<Answer> {
        let (gone, live): (Vec<Answer>, Vec<Answer>) = std::mem::take(&mut self.answers)
            .into_iter()
            .partition(|a| a.expires_boot_ns <= now_boot_ns);
        self.answers = live;
        gone
    }

    /// Everything of an agent that ended: its pending requests and answers (the caller
    /// deletes the answers' kernel entries).
    pub fn forget_agent(&mut self, agent_id: u32) -> Vec<Answer> {
        let gone: Vec<String> = self
            .pending
            .values()
            .filter(|a| a.agent_id == agent_id)
            .map(|a| a.info.id.clone())
            .collect();
        for id in gone {
            self.signed.remove(&id);
        }
        self.pending.retain(|_, a| a.agent_id != agent_id);
        self.index.retain(|k, _| k.agent_id != agent_id);
        let (gone, live): (Vec<Answer>, Vec<Answer>) = std::mem::take(&mut self.answers)
            .into_iter()
            .partition(|a| a.agent_id == agent_id);
        self.answers = live;
        gone
    }

    /// Drops the pending requests of agents not in `live`.
    pub fn forget_requests_except(&mut self, live: &[u32]) {
        let gone: Vec<String> = self
            .pending
            .values()
            .filter(|a| !live.contains(&a.agent_id))
            .map(|a| a.info.id.clone())
            .collect();
        for id in gone {
            self.drop_request(&id);
        }
    }

    /// The signatures collected for a request.
    pub fn signatures(&self, id: &str) -> &[Signed] {
        self.signed.get(id).map_or(&[], Vec::as_slice)
    }

    pub fn add_signature(&mut self, id: &str, s: Signed) {
        self.signed.entry(id.to_owned()).or_default().push(s);
    }

    /// Drops a request (its agent's policy changed since it was raised).
    pub fn drop_request(&mut self, id: &str) {
        self.signed.remove(id);
        if let Some(a) = self.pending.remove(id) {
            self.index.remove(&a.key);
        }
    }

    /// Answers kept across a daemon restart (their kernel entries stay in the pinned map), in
    /// the order they were given: a later answer for a key replaces the earlier one.
    pub fn restore(&mut self, answers: Vec<Answer>) {
        self.answers.clear();
        for a in answers {
            self.put(a);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn event(ino: u64, flags: u8) -> Event {
        // SAFETY: Event is plain old data; all-zero is a valid value.
        let mut e: Event = unsafe { std::mem::zeroed() };
        e.agent_id = 7;
        e.rule = 3;
        e.op = gate_common::op::WRITE;
        e.decision = decision::ASK;
        e.flags = flags;
        e.dev = 0x801;
        e.ino = ino;
        e
    }

    /// A request as the event thread builds it (the daemon core's tests use it too).
    /// A request as the event thread builds it (the daemon core's tests use it too).
    pub(crate) fn ask(id: String) -> Ask {
        Ask {
            info: ApprovalRequest {
                id,
                agent: "a".into(),
                run: "b/1".into(),
                policy_digest: "d".into(),
                op: "write".into(),
                rule: "ask-config".into(),
                object: "/etc/app.conf".into(),
                has_object: true,
                pid: 1,
                comm: "sh".into(),
                process: vec![],
                first: 0,
                last: 0,
                attempts: 0,
            },
            agent_id: 7,
            key: VerdictKey::default(),
        }
    }

    #[test]
    fn repeats_join_one_request_and_an_answer_closes_it_until_it_expires() {
        let mut s = Asks::default();
        let e = event(42, 0);
        let k = object_key(&e, true).unwrap();
        let Seen::New(a) = s.observe(&e, k, 10, 100, ask) else {
            panic!("a new request")
        };
        let a = a.info;
        assert!(matches!(s.observe(&e, k, 11, 101, ask), Seen::Repeat(ref id) if *id == a.id));
        assert_eq!(s.get(&a.id).unwrap().info.attempts, 2);
        // Another object: another request.
        let e2 = event(43, 0);
        let k2 = object_key(&e2, true).unwrap();
        assert!(matches!(s.observe(&e2, k2, 12, 102, ask), Seen::New(_)));
        let (key, value, answer) = s
            .answer(&a.id, true, false, 60, "uid:0", 1_000, 200)
            .unwrap();
        assert_eq!(key, k);
        assert_eq!(value.decision, decision::ALLOW);
        assert_eq!(value.expires_ns, 1_000 + 60_000_000_000);
        assert_eq!(answer.expires, 260);
        assert_eq!(s.settle(answer), vec![a.id.clone()]);
        assert!(s.get(&a.id).is_none());
        assert_eq!(s.pending().len(), 1);
        // The approved retry is linked to the answer.
        let ok = event(42, flag::APPROVED);
        assert!(
            matches!(s.observe(&ok, k, 2_000, 201, ask), Seen::Answered(Some(ref id)) if *id == a.id)
        );
        assert!(s.expire(60_000_000_000).is_empty());
        assert_eq!(s.expire(60_000_001_000).len(), 1);
        assert!(s.answers().is_empty());
        assert!(
            s.answer(&a.id, true, false, 60, "x", 0, 0)
                .unwrap_err()
                .contains("no pending")
        );
    }

    #[test]
    fn an_agent_cannot_raise_more_than_its_share_of_requests() {
        let mut s = Asks::default();
        for ino in 1..=(MAX_PENDING as u64 + 5) {
            let e = event(ino, 0);
            let k = object_key(&e, true).unwrap();
            s.observe(&e, k, 0, 0, ask);
        }
        assert_eq!(s.pending().len(), MAX_PENDING);
        assert_eq!(s.dropped, 5);
        // Another agent still gets its requests through.
        let mut e = event(1, 0);
        e.agent_id = 8;
        let k = object_key(&e, true).unwrap();
        assert!(matches!(s.observe(&e, k, 0, 0, ask), Seen::New(_)));
    }

    #[test]
    fn a_rule_wide_answer_closes_every_request_of_the_rule() {
        let mut s = Asks::default();
        let mut ids = Vec::new();
        for ino in [1, 2, 3] {
            let e = event(ino, 0);
            let k = object_key(&e, true).unwrap();
            if let Seen::New(a) = s.observe(&e, k, 0, 0, ask) {
                ids.push(a.info.id);
            }
        }
        let (key, _, answer) = s.answer(&ids[0], false, true, 60, "uid:0", 0, 0).unwrap();
        assert_eq!(key.kind, verdict_kind::RULE);
        assert_eq!(key.dev, 0);
        let mut closed = s.settle(answer);
        closed.sort();
        ids.sort();
        assert_eq!(closed, ids);
        assert!(s.pending().is_empty());
    }

    #[test]
    fn requests_without_an_object_can_only_be_answered_for_the_rule() {
        let mut s = Asks::default();
        let e = event(0, 0);
        assert!(object_key(&e, true).is_none());
        let k = rule_key(&VerdictKey {
            agent_id: 7,
            rule: 3,
            op: e.op,
            ..Default::default()
        });
        let Seen::New(a) = s.observe(&e, k, 0, 0, |id| {
            let mut a = ask(id);
            a.info.has_object = false;
            a
        }) else {
            panic!("a new request")
        };
        let a = a.info;
        assert!(
            s.answer(&a.id, true, false, 60, "x", 0, 0)
                .unwrap_err()
                .contains("--scope rule")
        );
        assert!(s.answer(&a.id, true, true, 60, "x", 0, 0).is_ok());
    }
}
