//! The daemon's state and lifecycle logic, over any [`Enforcer`]: agents by name, their
//! policies, ids and slots; adding, reloading and removing them; the heartbeat. The owner
//! thread is the only one that touches it (others send it jobs), and host tests drive it
//! with the in-memory enforcer.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use gate_common::{InodeKey, InodeRule, counter};
use gate_protocol::{AgentStatus, Capacity as WireCapacity, ReloadResult, Status};

use crate::{
    enforcer::Enforcer,
    policy::{CompiledPolicy, Mode, Vars},
};

/// Where an agent came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A `gate run` through the daemon: removed once its cgroup is empty.
    Run,
    /// An `[[agent]]` of the daemon's config: kept while the daemon runs.
    Config,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Run => "run",
            Origin::Config => "config",
        }
    }
}

/// What the event thread and status need to know of an agent.
pub struct AgentMeta {
    pub name: String,
    pub agent_id: u32,
    pub level: u32,
    pub cgroup: PathBuf,
    pub cgroup_name: String,
    pub cgroup_id: u64,
    pub uid: u32,
    pub origin: Origin,
    pub command: Vec<String>,
    pub policy_path: PathBuf,
    pub vars: Vars,
    pub mode: Option<Mode>,
    /// The policy in force (replaced on reload).
    pub policy: RwLock<Arc<CompiledPolicy>>,
    pub decisions: AtomicU64,
    pub denied: AtomicU64,
    /// Reported decisions by operation (`op::*`) and outcome (0 allowed, 1 denied).
    pub by_op: [[AtomicU64; 2]; 4],
    /// Why the agent is in trust lockdown (its denial budget was used up); None: trusted.
    pub distrusted: std::sync::Mutex<Option<String>>,
}

impl AgentMeta {
    /// Counts one reported decision.
    pub fn count(&self, op: u8, denied: bool) {
        self.decisions.fetch_add(1, Ordering::Relaxed);
        if denied {
            self.denied.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(c) = self.by_op.get(op as usize) {
            c[usize::from(denied)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `n` allowed actions of `op` at once (a network flow's counted actions).
    pub fn count_allowed(&self, op: u8, n: u64) {
        self.decisions.fetch_add(n, Ordering::Relaxed);
        if let Some(c) = self.by_op.get(op as usize) {
            c[0].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn policy(&self) -> Arc<CompiledPolicy> {
        self.policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
}

/// A new agent, before it is given to the enforcer.
pub struct NewAgent {
    pub name: String,
    pub cgroup: PathBuf,
    pub cgroup_name: String,
    pub cgroup_id: u64,
    pub level: u32,
    pub uid: u32,
    pub origin: Origin,
    pub command: Vec<String>,
    pub policy_path: PathBuf,
    pub vars: Vars,
    pub mode: Option<Mode>,
}

/// What the daemon keeps of an agent across its own restarts (`/run/gate/daemon/agents.json`),
/// to adopt the agents the kernel still confines.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedAgent {
    pub name: String,
    pub agent_id: u32,
    pub cgroup: PathBuf,
    pub cgroup_name: String,
    pub cgroup_id: u64,
    pub level: u32,
    pub uid: u32,
    pub run: bool,
    pub command: Vec<String>,
    pub policy_path: PathBuf,
    pub workspace: Option<PathBuf>,
    pub home: PathBuf,
    pub mode: Option<String>,
    pub policy_digest: String,
}

/// Records for the audit stream's one writer.
pub enum AuditMsg {
    PolicyLoad {
        agent: String,
        policy: Arc<CompiledPolicy>,
        previous: Option<String>,
    },
    Start {
        agent: String,
        uid: u32,
        command: Vec<String>,
    },
    Stop {
        agent: String,
        reason: String,
    },
    /// A step of an `ask`'s life (request, answer, expiry).
    Approval(Box<crate::audit::Approval>),
}

/// Agents by id, for the event thread (which decodes with each agent's policy).
pub type Directory = Arc<RwLock<BTreeMap<u32, Arc<AgentMeta>>>>;

pub struct Core {
    enforcer: Box<dyn Enforcer>,
    agents: BTreeMap<String, Arc<AgentMeta>>,
    directory: Directory,
    next_id: u32,
    /// Removed agents still in the event thread's directory, and since when.
    retired: Vec<(std::time::Instant, u32)>,
    audit: Option<std::sync::mpsc::Sender<AuditMsg>>,
    lockdown_after: Duration,
    pub reloads: u64,
    pub reload_failures: u64,
    /// Kernel counters as last read by the event thread (it owns the map).
    pub counters: Arc<RwLock<[u64; counter::COUNT as usize]>>,
    /// How full the event ring buffer gets (the daemon's; None in tests).
    pub ring: Option<Arc<super::ringfill::RingFill>>,
    pub last_heartbeat: std::time::Instant,
    pub heartbeat_error: Option<String>,
    /// Where the agents are saved after every change (None in tests).
    pub state_file: Option<PathBuf>,
    /// Requests raised by `ask` rules and the answers in the kernel (shared with the event
    /// thread, which raises the requests).
    pub asks: Arc<std::sync::Mutex<super::asks::Asks>>,
    /// Where the answers are saved after every change (None in tests).
    pub answers_file: Option<PathBuf>,
    /// Lines in the answers file: one per answer given since it was last rewritten whole.
    answers_lines: usize,
    /// Runs' connections by agent id, to tell `gate run` (and so the agent's terminal) about
    /// new requests.
    pub notices: Notices,
    /// Approver groups (the daemon's `[approvers.NAME]`).
    pub approvers: super::config::ApproverGroups,
    /// Nonces of the approval tokens used so far.
    pub replay: crate::approval::ReplayStore,
}

/// Runs' connections by agent id.
pub type Notices = Arc<std::sync::Mutex<BTreeMap<u32, std::os::unix::net::UnixStream>>>;

/// Writes `value` as JSON to `path` atomically: a crash leaves the old file or the new one.
fn write_json<T: serde::Serialize + ?Sized>(
    path: &std::path::Path,
    value: &T,
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` atomically: a crash leaves the old file or the new one.
fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// `CLOCK_BOOTTIME` in nanoseconds: the kernel's `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain clock_gettime(2) into a local.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut t) } != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

impl Core {
    pub fn new(
        enforcer: Box<dyn Enforcer>,
        lockdown_after: Duration,
        audit: Option<std::sync::mpsc::Sender<AuditMsg>>,
    ) -> Self {
        Core {
            ring: None,
            enforcer,
            agents: BTreeMap::new(),
            directory: Arc::default(),
            next_id: 0,
            retired: Vec::new(),
            audit,
            lockdown_after,
            reloads: 0,
            reload_failures: 0,
            counters: Arc::default(),
            last_heartbeat: std::time::Instant::now(),
            heartbeat_error: None,
            state_file: None,
            asks: Arc::default(),
            answers_file: None,
            answers_lines: 0,
            notices: Arc::default(),
            approvers: Default::default(),
            replay: crate::approval::ReplayStore::memory(),
        }
    }

    /// Answers a pending request: writes the verdict into the kernel (with its expiry), then
    /// records it. Nothing changes when the kernel write fails. A rule that names approvers
    /// is approved only by `tokens` signed by enough distinct keys of its group: each token
    /// is checked against the request (and used up), refused ones are recorded with the
    /// reason, and the request stays pending until the threshold is met.
    pub fn answer(
        &mut self,
        id: &str,
        allow: bool,
        scope_rule: bool,
        ttl_s: u64,
        by: &str,
        tokens: &[String],
    ) -> Result<gate_protocol::Response, String> {
        let (now_boot, now) = (boot_ns(), crate::approval::unix_now());
        let asks = self.asks.clone();
        let mut asks = asks.lock().unwrap_or_else(|e| e.into_inner());
        let ask = asks.request(id)?.clone();
        let policy = self.agents.get(&ask.info.agent).map(|m| m.policy());
        if policy.as_ref().map(|p| p.digest_hex()) != Some(ask.info.policy_digest.clone()) {
            asks.drop_request(id);
            return Err(format!(
                "request {id} is void: agent {} ended or its policy changed since it was \
                 raised; its next attempt raises a new request",
                ask.info.agent
            ));
        }
        let approvers = policy
            .as_ref()
            .and_then(|p| p.rules.get(usize::from(ask.key.rule)))
            .and_then(|r| r.approvers.clone());
        let mut ttl_s = ttl_s;
        let mut by = by.to_owned();
        let mut signatures = Vec::new();
        match (&approvers, allow) {
            (Some(ap), true) => {
                let have = self.take_tokens(&mut asks, &ask, ap, scope_rule, tokens, now)?;
                if have.len() < ap.threshold as usize {
                    return Ok(gate_protocol::Response::Signed {
                        id: id.to_owned(),
                        have: have.len() as u32,
                        need: ap.threshold,
                    });
                }
                let until = have.iter().map(|s| s.expires).min().unwrap_or(now);
                ttl_s = until.saturating_sub(now).max(1);
                by = format!(
                    "{} of approver group {:?}: {}",
                    have.len(),
                    ap.group,
                    have.iter()
                        .map(|s| s.key.key_id().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                signatures = have.into_iter().map(|s| s.token).collect();
            }
            _ if !tokens.is_empty() => {
                return Err(format!(
                    "{}: tokens are for approving rules that name approvers; rule {} {}",
                    if allow { "approve" } else { "reject" },
                    ask.info.rule,
                    if allow {
                        "names none: approve it with `gate approve ID`"
                    } else {
                        "is rejected without one: `gate reject ID`"
                    }
                ));
            }
            _ => {}
        }
        let (key, value, answer) = asks.answer(id, allow, scope_rule, ttl_s, &by, now_boot, now)?;
        self.enforcer.write_verdict(key, value).map_err(|e| {
            format!("writing the answer into the kernel failed: {e}; nothing changed")
        })?;
        let mut rec = self.approval_record(&ask, if allow { "approve" } else { "reject" }, &by);
        rec.decision = if allow {
            crate::audit::Verdict::Allow
        } else {
            crate::audit::Verdict::Deny
        };
        rec.object = Some(answer.object.clone());
        rec.scope = Some(answer.scope.clone());
        rec.expires = Some(answer.expires);
        rec.signatures = signatures;
        self.audit(AuditMsg::Approval(Box::new(rec)));
        let expires = answer.expires;
        let line = answer.clone();
        let closed = asks.settle(answer);
        self.journal_answer(&asks, &line);
        Ok(gate_protocol::Response::Answered {
            id: id.to_owned(),
            allow,
            expires,
            closed,
        })
    }

    /// Every approver group a policy's rules name is configured, with at least as many keys
    /// as the rule's threshold.
    pub fn check_approvers(&self, p: &CompiledPolicy) -> Result<(), String> {
        for r in &p.rules {
            let Some(a) = &r.approvers else { continue };
            match self.approvers.get(&a.group) {
                None => {
                    return Err(format!(
                        "{}: approver group {:?} is not in the daemon's configuration: add \
                         [approvers.{}] with its public keys (gate keygen) and restart the \
                         daemon",
                        a.at, a.group, a.group
                    ));
                }
                Some(keys) if (keys.len() as u32) < a.threshold => {
                    return Err(format!(
                        "{}: rule {} requires {} signatures but approver group {:?} has {} keys",
                        a.at,
                        r.id,
                        a.threshold,
                        a.group,
                        keys.len()
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// An approval record naming the request.
    fn approval_record(
        &self,
        ask: &super::asks::Ask,
        step: &str,
        by: &str,
    ) -> crate::audit::Approval {
        let a = &ask.info;
        let mut rec =
            crate::audit::Approval::new(&a.id, &a.agent, crate::audit::Verdict::Deny, by, step);
        rec.run = Some(a.run.clone());
        rec.op = Some(a.op.clone());
        rec.object = Some(a.object.clone());
        rec.rule = Some(a.rule.clone());
        rec.policy_digest = Some(a.policy_digest.clone());
        rec
    }

    /// Checks and takes the tokens for a request whose rule requires approvers: each valid
    /// one (signature, request, agent run, object, policy, scope, time, a key of the group
    /// not used for this request yet, a nonce never seen) is used up and kept; each refused
    /// one is recorded with its reason. Returns the request's signatures so far; an error
    /// when no token was given or none was accepted.
    fn take_tokens(
        &mut self,
        asks: &mut super::asks::Asks,
        ask: &super::asks::Ask,
        ap: &crate::policy::Approvers,
        scope_rule: bool,
        tokens: &[String],
        now: u64,
    ) -> Result<Vec<super::asks::Signed>, String> {
        use crate::approval::{Refusal, RequestFacts, Token, check_statement};
        let a = &ask.info;
        if tokens.is_empty() {
            return Err(format!(
                "rule {} requires {} signatures of approver group {:?}: sign with `gate approve \
                 {} --key FILE` (or `--sign-only` on the approver's machine, then submit the \
                 token here with `gate approve --token FILE`)",
                a.rule, ap.threshold, ap.group, a.id
            ));
        }
        let keys = self.approvers.get(&ap.group).cloned().unwrap_or_default();
        let facts = RequestFacts {
            request: a.id.clone(),
            agent: a.agent.clone(),
            run: a.run.clone(),
            op: a.op.clone(),
            object: a.object.clone(),
            rule: a.rule.clone(),
            policy_digest: a.policy_digest.clone(),
        };
        let scope = if scope_rule { "rule" } else { "object" };
        let mut refused = Vec::new();
        let mut accepted = 0;
        for t in tokens {
            let checked = Token::parse(t).and_then(|tok| {
                let (st, key) = tok.verify()?;
                check_statement(&st, &facts, scope, now)?;
                if !keys.contains(&key) {
                    return Err(Refusal::UnknownKey(key.key_id().to_string()));
                }
                if self.replay.seen(&st.nonce) {
                    return Err(Refusal::Replayed);
                }
                if asks.signatures(&a.id).iter().any(|s| s.key == key) {
                    return Err(Refusal::SameKey(key.key_id().to_string()));
                }
                self.replay.mark(&st.nonce, st.expires).map_err(|e| {
                    Refusal::Malformed(format!("the daemon cannot record the token's use: {e}"))
                })?;
                Ok(super::asks::Signed {
                    key,
                    token: t.trim().to_owned(),
                    expires: st.expires,
                })
            });
            match checked {
                Ok(s) => {
                    let mut rec = self.approval_record(ask, "sign", &s.key.key_id().to_string());
                    rec.decision = crate::audit::Verdict::Ask;
                    rec.signatures = vec![s.token.clone()];
                    rec.expires = Some(s.expires);
                    self.audit(AuditMsg::Approval(Box::new(rec)));
                    asks.add_signature(&a.id, s);
                    accepted += 1;
                }
                Err(r) => {
                    let mut rec = self.approval_record(ask, "refuse", r.code());
                    rec.reason = Some(format!("approval token refused: {r}"));
                    rec.signatures = vec![t.trim().to_owned()];
                    self.audit(AuditMsg::Approval(Box::new(rec)));
                    refused.push(r.to_string());
                }
            }
        }
        if accepted == 0 {
            return Err(format!(
                "request {} is still pending: {}",
                a.id,
                refused.join("; ")
            ));
        }
        Ok(asks.signatures(&a.id).to_vec())
    }

    /// Removes the kernel entries of answers that ended and records their end.
    pub fn expire_answers(&mut self) {
        let asks = self.asks.clone();
        let mut asks = asks.lock().unwrap_or_else(|e| e.into_inner());
        // Requests raised by events an agent queued just before it ended.
        let live: Vec<u32> = self.agents.values().map(|a| a.agent_id).collect();
        asks.forget_requests_except(&live);
        let gone = asks.expire(boot_ns());
        if gone.is_empty() {
            return;
        }
        for a in &gone {
            self.end_answer(
                a,
                "expiry",
                "its time ended; the kernel stopped applying it on time",
            );
        }
        self.persist_answers(&asks);
    }

    fn end_answer(&mut self, a: &super::asks::Answer, by: &str, reason: &str) {
        if let Err(e) = self.enforcer.remove_verdict(a.key.0) {
            tracing::warn!(id = a.id, error = %e, "removing an ended answer from the kernel failed (it no longer applies: the kernel checks its expiry)");
        }
        let mut rec =
            crate::audit::Approval::new(&a.id, &a.agent, crate::audit::Verdict::Deny, by, "expire");
        rec.reason = Some(format!(
            "the {} of {} {} ({}) ended: {reason}",
            if a.allow { "approval" } else { "rejection" },
            a.op,
            a.object,
            a.scope
        ));
        rec.op = Some(a.op.clone());
        rec.object = Some(a.object.clone());
        rec.rule = Some(a.rule.clone());
        rec.scope = Some(a.scope.clone());
        rec.expires = Some(a.expires);
        self.audit(AuditMsg::Approval(Box::new(rec)));
    }

    /// Rewrites the answers file whole (JSON lines, one answer each): after answers ended.
    fn persist_answers(&mut self, asks: &super::asks::Asks) {
        let Some(path) = &self.answers_file else {
            return;
        };
        let mut text = Vec::new();
        for a in asks.answers() {
            if serde_json::to_writer(&mut text, a).is_ok() {
                text.push(b'\n');
            }
        }
        match write_atomic(path, &text) {
            Ok(()) => self.answers_lines = asks.answers().len(),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "saving the answers failed; a restarted daemon would not record their expiry")
            }
        }
    }

    /// Adds a new answer to the answers file: one appended line, so that an answer costs the
    /// same however many are in force. The file is rewritten whole once replaced answers make
    /// up most of it.
    fn journal_answer(&mut self, asks: &super::asks::Asks, answer: &super::asks::Answer) {
        use std::io::Write;
        let Some(path) = &self.answers_file else {
            return;
        };
        if self.answers_lines >= 2 * asks.answers().len() + 64 {
            return self.persist_answers(asks);
        }
        let mut line = match serde_json::to_vec(answer) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "an answer cannot be saved");
                return;
            }
        };
        line.push(b'\n');
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(&line));
        match appended {
            Ok(()) => self.answers_lines += 1,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "saving an answer failed; a restarted daemon would not record its expiry");
            }
        }
    }

    /// Takes back the answers a previous daemon wrote (their entries are in the pinned map):
    /// the file's lines in order, a later answer for a key replacing an earlier one. A line
    /// that cannot be read (cut by a crash mid-write) is passed over with a warning.
    pub fn restore_answers(&mut self) {
        let Some(path) = &self.answers_file else {
            return;
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        let mut answers = Vec::new();
        let mut lines = 0;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            lines += 1;
            match serde_json::from_str::<super::asks::Answer>(line) {
                Ok(a) => answers.push(a),
                Err(e) => {
                    tracing::warn!(file = %path.display(), line = n + 1, error = %e, "a saved answer cannot be read; its kernel entry still ends on time")
                }
            }
        }
        let known: Vec<super::asks::Answer> = answers
            .into_iter()
            .filter(|a| {
                self.directory
                    .read()
                    .is_ok_and(|d| d.contains_key(&a.agent_id))
            })
            .collect();
        self.asks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(known);
        self.answers_lines = lines;
    }

    /// The agents as saved for a restart.
    pub fn saved(&self) -> Vec<SavedAgent> {
        self.agents
            .values()
            .filter(|a| a.policy_path.is_absolute())
            .map(|a| SavedAgent {
                name: a.name.clone(),
                agent_id: a.agent_id,
                cgroup: a.cgroup.clone(),
                cgroup_name: a.cgroup_name.clone(),
                cgroup_id: a.cgroup_id,
                level: a.level,
                uid: a.uid,
                run: a.origin == Origin::Run,
                command: a.command.clone(),
                policy_path: a.policy_path.clone(),
                workspace: a.vars.workspace.clone(),
                home: a.vars.home.clone(),
                mode: a.mode.map(|m| m.name().to_string()),
                policy_digest: a.policy().digest_hex(),
            })
            .collect()
    }

    /// Writes the saved agents (atomically: a crash leaves the old file or the new one).
    fn persist(&self) {
        let Some(path) = &self.state_file else { return };
        if let Err(e) = write_json(path, &self.saved()) {
            tracing::error!(file = %path.display(), error = %e, "saving the agents failed; a restarted daemon would not adopt them by name");
        }
    }

    /// Takes over an agent the kernel still confines (a previous daemon's): registers it
    /// without touching its entry, then replaces its policy with `policy` (recompiled from
    /// its file) atomically. The agent is confined throughout.
    pub fn adopt(&mut self, s: SavedAgent, policy: CompiledPolicy) -> gate_protocol::ReloadResult {
        let mode = match s.mode.as_deref() {
            Some("audit") => Some(Mode::Audit),
            Some(_) => Some(Mode::Enforce),
            None => None,
        };
        self.next_id = self.next_id.max(s.agent_id);
        let meta = Arc::new(AgentMeta {
            name: s.name.clone(),
            agent_id: s.agent_id,
            level: s.level,
            cgroup: s.cgroup,
            cgroup_name: s.cgroup_name,
            cgroup_id: s.cgroup_id,
            uid: s.uid,
            origin: if s.run { Origin::Run } else { Origin::Config },
            command: s.command,
            policy_path: s.policy_path,
            vars: Vars {
                workspace: s.workspace,
                home: s.home,
            },
            mode,
            policy: RwLock::new(Arc::new(policy.clone())),
            decisions: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            by_op: Default::default(),
            distrusted: Default::default(),
        });
        if let Ok(mut d) = self.directory.write() {
            d.insert(s.agent_id, meta.clone());
        }
        self.agents.insert(s.name.clone(), meta);
        let mut r = self.replace(&s.name, policy);
        r.old_digest = s.policy_digest;
        r
    }

    /// New agents get ids above `id` (ids the kernel still uses for agents adopted without a
    /// record).
    pub fn reserve_ids(&mut self, id: u32) {
        self.next_id = self.next_id.max(id);
    }

    /// Removes a kernel agent entry the daemon has no record of, or whose cgroup is gone.
    pub fn drop_kernel_agent(&mut self, cgroup_id: u64) -> Result<(), String> {
        self.enforcer
            .remove_agent(cgroup_id)
            .map_err(|e| e.to_string())
    }

    /// The kernel's agents (cgroup id, agent id), whether the daemon knows them or not.
    pub fn kernel_agents(&self) -> Vec<(u64, u32)> {
        self.enforcer
            .agents()
            .iter()
            .map(|a| (a.cgroup_id, a.config.agent_id))
            .collect()
    }

    pub fn directory(&self) -> Directory {
        self.directory.clone()
    }

    fn audit(&self, m: AuditMsg) {
        if let Some(tx) = &self.audit {
            let _ = tx.send(m);
        }
    }

    /// Writes the heartbeat; a failure is kept for `status` and the log.
    pub fn heartbeat(&mut self) {
        match self.enforcer.heartbeat(Some(self.lockdown_after)) {
            Ok(()) => {
                self.last_heartbeat = std::time::Instant::now();
                self.heartbeat_error = None;
            }
            Err(e) => {
                if self.heartbeat_error.is_none() {
                    tracing::error!(error = %e, "writing the heartbeat failed; agents fall into lockdown if this goes on");
                }
                self.heartbeat_error = Some(e.to_string());
            }
        }
    }

    pub fn agent(&self, name: &str) -> Option<Arc<AgentMeta>> {
        self.agents.get(name).cloned()
    }

    pub fn agent_names(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }

    /// Whether any of `cgroup_ids` (a process's cgroup and its ancestors) is an agent's.
    /// Both in the daemon's list and in the enforcer's own map (the kernel's: an agent
    /// adopted from pins, or one whose removal failed half-way, is confined there).
    pub fn confines(&self, cgroup_ids: &[u64]) -> bool {
        self.agents
            .values()
            .any(|a| cgroup_ids.contains(&a.cgroup_id))
            || self.enforcer.confines(cgroup_ids)
    }

    /// A free name like `prefix-N`.
    pub fn fresh_name(&self, prefix: &str) -> String {
        (1..)
            .map(|i| format!("{prefix}-{i}"))
            .find(|n| !self.agents.contains_key(n))
            .expect("some name is free")
    }

    /// Confines a new agent with `policy` (already compiled) and `extra` exact rules.
    pub fn add(
        &mut self,
        a: NewAgent,
        policy: CompiledPolicy,
        extra: &[(InodeKey, InodeRule)],
    ) -> Result<Arc<AgentMeta>, String> {
        if self.agents.contains_key(&a.name) {
            return Err(format!("an agent named {:?} is already running", a.name));
        }
        self.check_approvers(&policy)?;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        while self
            .directory
            .read()
            .map(|d| d.contains_key(&self.next_id))
            .unwrap_or(false)
        {
            self.next_id = self.next_id.wrapping_add(1).max(1);
        }
        let agent_id = self.next_id;
        self.enforcer
            .add_agent(a.cgroup_id, a.level, agent_id, &policy, extra)
            .map_err(|e| format!("confining agent {:?} failed: {e}", a.name))?;
        let policy = Arc::new(policy);
        let meta = Arc::new(AgentMeta {
            name: a.name.clone(),
            agent_id,
            level: a.level,
            cgroup: a.cgroup,
            cgroup_name: a.cgroup_name,
            cgroup_id: a.cgroup_id,
            uid: a.uid,
            origin: a.origin,
            command: a.command.clone(),
            policy_path: a.policy_path,
            vars: a.vars,
            mode: a.mode,
            policy: RwLock::new(policy.clone()),
            decisions: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            by_op: Default::default(),
            distrusted: Default::default(),
        });
        if let Ok(mut d) = self.directory.write() {
            d.insert(agent_id, meta.clone());
        }
        self.agents.insert(a.name.clone(), meta.clone());
        self.persist();
        self.audit(AuditMsg::PolicyLoad {
            agent: a.name.clone(),
            policy,
            previous: None,
        });
        self.audit(AuditMsg::Start {
            agent: a.name,
            uid: a.uid,
            command: a.command,
        });
        Ok(meta)
    }

    /// Replaces an agent's policy with `new` (compiled by the caller: a policy that does not
    /// compile never gets here). On a failure the old policy stays in force.
    pub fn replace(&mut self, name: &str, new: CompiledPolicy) -> ReloadResult {
        let Some(meta) = self.agents.get(name).cloned() else {
            return ReloadResult {
                agent: name.to_string(),
                old_digest: String::new(),
                new_digest: None,
                error: Some(format!("no agent named {name:?}")),
            };
        };
        let old = meta.policy();
        let old_digest = old.digest_hex();
        if let Err(e) = self.check_approvers(&new) {
            return self.failed_reload(name, old_digest, e);
        }
        if let Some(why) = meta.distrusted.lock().ok().and_then(|d| d.clone()) {
            return self.failed_reload(
                name,
                old_digest,
                format!(
                    "agent {name} is in trust lockdown ({why}); a person restores it first: \
                     gate trust restore {name}"
                ),
            );
        }
        match self.enforcer.replace_policy(meta.cgroup_id, &new, &[]) {
            Ok(_) => {
                self.reloads += 1;
                let new = Arc::new(new);
                let new_digest = new.digest_hex();
                if let Ok(mut p) = meta.policy.write() {
                    *p = new.clone();
                }
                self.persist();
                self.audit(AuditMsg::PolicyLoad {
                    agent: name.to_string(),
                    policy: new,
                    previous: Some(old_digest.clone()),
                });
                ReloadResult {
                    agent: name.to_string(),
                    old_digest,
                    new_digest: Some(new_digest),
                    error: None,
                }
            }
            Err(e) => self.failed_reload(name, old_digest, e.to_string()),
        }
    }

    /// Puts an agent in trust lockdown (its denial budget was used up): its policy's lockdown
    /// variant goes in (reads decided as before; exec, write and connect denied), enforced
    /// until a person restores it, whether or not the daemon runs.
    pub fn distrust(&mut self, name: &str, reason: &str) -> Result<(), String> {
        let meta = self.agent_named(name)?;
        let mut d = meta.distrusted.lock().unwrap_or_else(|e| e.into_inner());
        if d.is_some() {
            return Ok(());
        }
        let variant = meta.policy().lockdown_variant();
        self.enforcer
            .replace_policy(meta.cgroup_id, &variant, &[])
            .map_err(|e| format!("putting agent {name} in trust lockdown failed: {e}"))?;
        *d = Some(reason.to_owned());
        drop(d);
        tracing::warn!(
            agent = name,
            reason,
            "agent put in trust lockdown: exec, write and connect denied until `gate trust restore {name}`"
        );
        self.trust_record(
            &meta,
            false,
            "daemon",
            format!(
                "{reason}: the agent is in lockdown (reads decided by its policy; exec, write \
                 and connect denied) until a person restores it"
            ),
        );
        Ok(())
    }

    /// Takes an agent out of trust lockdown: its policy goes back in.
    pub fn restore_trust(&mut self, name: &str, by: &str) -> Result<(), String> {
        let meta = self.agent_named(name)?;
        let mut d = meta.distrusted.lock().unwrap_or_else(|e| e.into_inner());
        let Some(why) = d.clone() else {
            return Err(format!("agent {name} is not in trust lockdown"));
        };
        self.enforcer
            .replace_policy(meta.cgroup_id, &meta.policy(), &[])
            .map_err(|e| format!("restoring agent {name} failed: {e}; it stays in lockdown"))?;
        *d = None;
        drop(d);
        self.trust_record(&meta, true, by, format!("restored after: {why}"));
        Ok(())
    }

    fn agent_named(&self, name: &str) -> Result<Arc<AgentMeta>, String> {
        self.agents
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no agent named {name:?}"))
    }

    /// The record of an agent's trust lockdown (`distrust`) or its end (`restore`).
    fn trust_record(&self, meta: &AgentMeta, restored: bool, by: &str, reason: String) {
        let (verdict, step) = if restored {
            (crate::audit::Verdict::Allow, "restore")
        } else {
            (crate::audit::Verdict::Deny, "distrust")
        };
        let name = &meta.name;
        let mut rec =
            crate::audit::Approval::new(&format!("trust-{name}"), name, verdict, by, step);
        rec.reason = Some(reason);
        rec.policy_digest = Some(meta.policy().digest_hex());
        self.audit(AuditMsg::Approval(Box::new(rec)));
    }

    /// Records a reload that did not happen (the policy did not compile, or did not fit).
    pub fn failed_reload(&mut self, name: &str, old_digest: String, error: String) -> ReloadResult {
        self.reload_failures += 1;
        tracing::error!(agent = name, %error, "reload refused; the old policy stays in force");
        ReloadResult {
            agent: name.to_string(),
            old_digest,
            new_digest: None,
            error: Some(error),
        }
    }

    /// Forgets, for events, the agents removed more than `after` ago.
    pub fn expire_retired(&mut self, after: Duration) {
        let (old, keep): (Vec<_>, Vec<_>) = self
            .retired
            .drain(..)
            .partition(|(t, _)| t.elapsed() >= after);
        self.retired = keep;
        if let Ok(mut d) = self.directory.write() {
            for (_, id) in old {
                d.remove(&id);
            }
        }
    }

    /// Stops confining an agent (its processes must be gone, or it is a deliberate stop).
    pub fn remove(&mut self, name: &str, reason: &str) -> Result<Arc<AgentMeta>, String> {
        let meta = self
            .agents
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no agent named {name:?}"))?;
        self.enforcer
            .remove_agent(meta.cgroup_id)
            .map_err(|e| format!("removing agent {name:?} failed: {e}"))?;
        self.agents.remove(name);
        {
            let asks = self.asks.clone();
            let mut asks = asks.lock().unwrap_or_else(|e| e.into_inner());
            for a in asks.forget_agent(meta.agent_id) {
                self.end_answer(&a, "stop", "its agent ended");
            }
            self.persist_answers(&asks);
        }
        if let Ok(mut n) = self.notices.lock() {
            n.remove(&meta.agent_id);
        }
        // Events the agent queued before it was removed may still be in the ring buffer:
        // the event thread keeps finding its name and policy for a while.
        self.retired
            .push((std::time::Instant::now(), meta.agent_id));
        self.persist();
        self.audit(AuditMsg::Stop {
            agent: name.to_string(),
            reason: reason.to_string(),
        });
        Ok(meta)
    }

    pub fn status(&self) -> Status {
        let infos = self.enforcer.agents();
        let counters = self.counters.read().map(|c| *c).unwrap_or_default();
        let cap = self.enforcer.capacity();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            agents: self
                .agents
                .values()
                .map(|a| {
                    let info = infos.iter().find(|i| i.cgroup_id == a.cgroup_id);
                    let policy = a.policy();
                    AgentStatus {
                        name: a.name.clone(),
                        agent_id: a.agent_id,
                        cgroup: a.cgroup_name.clone(),
                        cgroup_id: a.cgroup_id,
                        policy: a.policy_path.display().to_string(),
                        policy_digest: policy.digest_hex(),
                        mode: policy.mode.name().to_string(),
                        slot: info.map_or(0, |i| i.config.slot),
                        uid: a.uid,
                        origin: a.origin.name().to_string(),
                        command: a.command.clone(),
                        decisions: a.decisions.load(Ordering::Relaxed),
                        denied: a.denied.load(Ordering::Relaxed),
                        inode_entries: info.map_or(0, |i| i.inode_entries),
                        net_entries: info.map_or(0, |i| i.net_entries),
                        trust_lockdown: a.distrusted.lock().ok().and_then(|d| d.clone()),
                    }
                })
                .collect(),
            counters: COUNTER_NAMES
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), counters[i]))
                .collect(),
            events_lost: counters[counter::RINGBUF_FULL as usize],
            heartbeat_ms: self.last_heartbeat.elapsed().as_millis() as u64,
            lockdown_after_ms: self.lockdown_after.as_millis() as u64,
            capacity: WireCapacity {
                agents: cap.agents,
                inodes: cap.inodes,
                net4: cap.net4,
                net6: cap.net6,
            },
        }
    }

    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        let s = self.status();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<String>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for l in lines {
                out.push_str(&format!("{name}{l}\n"));
            }
        };
        metric(
            "gate_agents",
            "gauge",
            "Agents the daemon confines.",
            vec![format!(" {}", s.agents.len())],
        );
        let metas: Vec<Arc<AgentMeta>> = {
            let mut v: Vec<_> = self.agents.values().cloned().collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v
        };
        metric(
            "gate_decisions_total",
            "counter",
            "Reported decisions by agent, operation and outcome.",
            metas
                .iter()
                .flat_map(|a| {
                    (0..a.by_op.len()).flat_map(move |o| {
                        ["allow", "deny"]
                            .into_iter()
                            .enumerate()
                            .map(move |(i, d)| {
                                format!(
                                    "{{agent=\"{}\",op=\"{}\",decision=\"{d}\"}} {}",
                                    a.name,
                                    crate::events::op_name(o as u8),
                                    a.by_op[o][i].load(Ordering::Relaxed)
                                )
                            })
                    })
                })
                .collect(),
        );
        metric(
            "gate_kernel_decisions_total",
            "counter",
            "Decisions the kernel took for confined tasks (reported or not).",
            vec![format!(" {}", s.counters[counter::DECISIONS as usize].1)],
        );
        metric(
            "gate_events_lost_total",
            "counter",
            "Events the kernel could not queue (each recorded as a signed gap).",
            vec![format!(" {}", s.events_lost)],
        );
        metric(
            "gate_lockdown_decisions_total",
            "counter",
            "Decisions taken in lockdown (stale heartbeat).",
            vec![format!(" {}", s.counters[counter::LOCKDOWN as usize].1)],
        );
        metric(
            "gate_reloads_total",
            "counter",
            "Policy reloads by result.",
            vec![
                format!("{{result=\"ok\"}} {}", self.reloads),
                format!("{{result=\"refused\"}} {}", self.reload_failures),
            ],
        );
        if let Some(r) = self.ring.as_ref().filter(|r| r.known() && r.size > 0) {
            let ratio =
                |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64 / r.size as f64;
            metric(
                "gate_ringbuf_bytes",
                "gauge",
                "Size of the kernel's event ring buffer.",
                vec![format!(" {}", r.size)],
            );
            metric(
                "gate_ringbuf_fill_ratio",
                "gauge",
                "Share of the event ring buffer waiting to be read, when the daemon last \
                 looked (before reading it).",
                vec![format!(" {:.6}", ratio(&r.now))],
            );
            metric(
                "gate_ringbuf_fill_max_ratio",
                "gauge",
                "The most of the event ring buffer ever found waiting since the daemon \
                 started (1 means events were lost: see gate_events_lost_total).",
                vec![format!(" {:.6}", ratio(&r.max))],
            );
        }
        metric(
            "gate_heartbeat_age_seconds",
            "gauge",
            "Time since the daemon last wrote its heartbeat.",
            vec![format!(" {:.3}", s.heartbeat_ms as f64 / 1000.0)],
        );
        out
    }
}

pub const COUNTER_NAMES: [&str; counter::COUNT as usize] = [
    "ringbuf_full",
    "internal_error",
    "depth_exceeded",
    "decisions",
    "lockdown",
    "spare5",
    "spare6",
    "spare7",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        enforcer::{MemEnforcer, MemObject},
        engine::Capacity,
        policy::{MemResolver, compile, parse},
    };
    use gate_common::op;

    fn compiled(src: &str, res: &MemResolver) -> CompiledPolicy {
        let p = parse(src, std::path::Path::new("/etc/gate/policies/p.toml")).unwrap();
        compile(
            &p,
            &Vars {
                workspace: None,
                home: "/home/u".into(),
            },
            res,
        )
        .unwrap()
    }

    const DENY_SSH: &str = r#"version = 1
name = "a"
mode = "enforce"
[[rule]]
id = "no-ssh"
op = "write"
decision = "deny"
path = ["/home/u/.ssh/**"]
[[rule]]
id = "home"
op = "write"
decision = "allow"
path = ["/home/u/**"]
"#;

    fn new_agent(name: &str, id: u64) -> NewAgent {
        NewAgent {
            name: name.into(),
            cgroup: format!("/sys/fs/cgroup/gate/{name}").into(),
            cgroup_name: format!("/gate/{name}"),
            cgroup_id: id,
            level: 2,
            uid: 1000,
            origin: Origin::Run,
            command: vec!["agent".into()],
            policy_path: "/etc/gate/policies/p.toml".into(),
            vars: Vars {
                workspace: None,
                home: "/home/u".into(),
            },
            mode: None,
        }
    }

    struct Shared(std::sync::Arc<std::sync::Mutex<MemEnforcer>>);
    impl Enforcer for Shared {
        fn add_agent(
            &mut self,
            c: u64,
            l: u32,
            a: u32,
            p: &CompiledPolicy,
            e: &crate::enforcer::Extra,
        ) -> Result<u32, crate::engine::EngineError> {
            self.0.lock().unwrap().add_agent(c, l, a, p, e)
        }
        fn replace_policy(
            &mut self,
            c: u64,
            p: &CompiledPolicy,
            e: &crate::enforcer::Extra,
        ) -> Result<u32, crate::engine::EngineError> {
            self.0.lock().unwrap().replace_policy(c, p, e)
        }
        fn remove_agent(&mut self, c: u64) -> Result<(), crate::engine::EngineError> {
            self.0.lock().unwrap().remove_agent(c)
        }
        fn write_verdict(
            &mut self,
            k: gate_common::VerdictKey,
            v: gate_common::VerdictValue,
        ) -> Result<(), crate::engine::EngineError> {
            self.0.lock().unwrap().write_verdict(k, v)
        }
        fn remove_verdict(
            &mut self,
            k: gate_common::VerdictKey,
        ) -> Result<(), crate::engine::EngineError> {
            self.0.lock().unwrap().remove_verdict(k)
        }
        fn heartbeat(&mut self, d: Option<Duration>) -> Result<(), crate::engine::EngineError> {
            self.0.lock().unwrap().heartbeat(d)
        }
        fn counters(&self) -> Result<[u64; counter::COUNT as usize], crate::engine::EngineError> {
            self.0.lock().unwrap().counters()
        }
        fn agents(&self) -> Vec<crate::engine::AgentInfo> {
            self.0.lock().unwrap().agents()
        }
        fn capacity(&self) -> Capacity {
            self.0.lock().unwrap().capacity()
        }
    }

    fn setup(
        inodes: u32,
    ) -> (
        Core,
        std::sync::Arc<std::sync::Mutex<MemEnforcer>>,
        MemResolver,
        std::sync::mpsc::Receiver<AuditMsg>,
    ) {
        let mem = std::sync::Arc::new(std::sync::Mutex::new(MemEnforcer::new(Capacity {
            agents: 128,
            inodes,
            net4: 16,
            net6: 16,
            verdicts: 16,
        })));
        let (tx, rx) = std::sync::mpsc::channel();
        let core = Core::new(
            Box::new(Shared(mem.clone())),
            Duration::from_secs(10),
            Some(tx),
        );
        // Inodes: / 2, /home 3, /home/u 4, /home/u/.ssh 5, /home/u/.ssh/id_rsa 6.
        let res = MemResolver::new()
            .dir("/home/u/.ssh")
            .file("/home/u/.ssh/id_rsa");
        (core, mem, res, rx)
    }

    const SSH_KEY: &[u64] = &[6, 5, 4, 3, 2];
    const OTHER: &[u64] = &[99, 4, 3, 2];

    fn write(mem: &std::sync::Mutex<MemEnforcer>, cg: u64, chain: &[u64]) -> i32 {
        let dev = crate::policy::MemResolver::DEV;
        mem.lock()
            .unwrap()
            .decide(
                &[1, 2, cg],
                op::WRITE,
                &MemObject::File(chain.iter().map(|i| (dev, *i)).collect()),
            )
            .map_or(0, |d| d.ret)
    }

    fn decide_write(
        mem: &std::sync::Mutex<MemEnforcer>,
        chain: &[u64],
    ) -> crate::enforcer::MemDecision {
        let dev = crate::policy::MemResolver::DEV;
        mem.lock()
            .unwrap()
            .decide(
                &[1, 2, 50],
                op::WRITE,
                &MemObject::File(chain.iter().map(|i| (dev, *i)).collect()),
            )
            .unwrap()
    }

    /// Agent "a" (cgroup 50) under `src`, denied writing the SSH key by its `ask` rule; the
    /// request the event thread raises for it.
    fn raise_ask(
        core: &mut Core,
        mem: &std::sync::Mutex<MemEnforcer>,
        res: &MemResolver,
        src: &str,
    ) -> super::super::asks::Ask {
        let policy = compiled(src, res);
        let digest = policy.digest_hex();
        core.add(new_agent("a", 50), policy, &[]).unwrap();
        let d = decide_write(mem, SSH_KEY);
        assert_eq!(
            (d.ret, d.decision),
            (-libc::EPERM, gate_common::decision::ASK)
        );
        // The event the kernel sends, as the event thread sees it.
        // SAFETY: Event is plain old data; all-zero is a valid value.
        let mut e: gate_common::Event = unsafe { std::mem::zeroed() };
        e.agent_id = d.agent_id;
        e.rule = d.rule;
        e.op = op::WRITE;
        e.decision = d.decision;
        e.dev = crate::policy::MemResolver::DEV;
        e.ino = SSH_KEY[0];
        let key = super::super::asks::object_key(&e, true).unwrap();
        let seen = core.asks.lock().unwrap().observe(&e, key, 0, 0, |id| {
            let mut a = super::super::asks::tests::ask(id);
            a.agent_id = d.agent_id;
            a.info.policy_digest = digest;
            a
        });
        let super::super::asks::Seen::New(a) = seen else {
            panic!("a new request")
        };
        mem.lock().unwrap().now_ns = boot_ns();
        *a
    }

    /// An approval written for one object lets exactly that object through until the
    /// kernel's clock passes its expiry; other objects of the rule stay asked.
    #[test]
    fn answers_go_into_the_kernel_with_their_expiry() {
        let (mut core, mem, res, rx) = setup(64);
        let src = DENY_SSH.replace("decision = \"deny\"", "decision = \"ask\"");
        let a = raise_ask(&mut core, &mem, &res, &src);
        let decide = decide_write;
        let now = mem.lock().unwrap().now_ns;
        assert!(core.answer("nope", true, false, 60, "root", &[]).is_err());
        core.answer(&a.info.id, true, false, 60, "root (uid 0)", &[])
            .unwrap();
        let d = decide(&mem, SSH_KEY);
        assert_eq!(d.ret, 0);
        assert_eq!(d.flags, gate_common::flag::APPROVED);
        // Another object under the same rule is still asked.
        assert_eq!(decide(&mem, &[7, 5, 4, 3, 2]).ret, -libc::EPERM);
        // The kernel's clock passes the expiry: denied again, daemon or not.
        mem.lock().unwrap().now_ns = now + 61_000_000_000;
        assert_eq!(decide(&mem, SSH_KEY).ret, -libc::EPERM);
        assert!(core.asks.lock().unwrap().pending().is_empty());
        let steps: Vec<String> = rx
            .try_iter()
            .filter_map(|m| match m {
                AuditMsg::Approval(a) => Some(format!(
                    "{} {} {}",
                    a.step.unwrap_or_default(),
                    a.by,
                    a.scope.unwrap_or_default()
                )),
                _ => None,
            })
            .collect();
        assert_eq!(steps, ["approve root (uid 0) object"]);
    }

    /// Each answer is one line appended to the answers file; a restarted daemon takes them
    /// back in order (a later answer for a key replaces the earlier one) and passes over a
    /// line cut by a crash.
    #[test]
    fn answers_are_journaled_and_restored_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("answers.jsonl");
        let (mut core, mem, res, _rx) = setup(64);
        core.answers_file = Some(file.clone());
        let src = DENY_SSH.replace("decision = \"deny\"", "decision = \"ask\"");
        let a = raise_ask(&mut core, &mem, &res, &src);
        core.answer(&a.info.id, true, false, 60, "root", &[])
            .unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let first: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let mut later = first.clone();
        later["id"] = "later".into();
        let mut other = first.clone();
        other["id"] = "other".into();
        other["key"] = "ab".repeat(32).into();
        std::fs::write(&file, format!("{first}\n{later}\n{other}\n{{\"id\":\"cut")).unwrap();
        core.restore_answers();
        let asks = core.asks.lock().unwrap();
        let mut ids: Vec<&str> = asks.answers().iter().map(|a| a.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["later", "other"]);
    }

    /// A rule requiring 2 of 3 approvers: no token, one signature, the same key again, a
    /// replayed token, a token for another run, a forged one and an expired one do not
    /// approve (each refusal recorded); a second distinct key does.
    #[test]
    fn two_of_three_signatures_approve_and_nothing_less() {
        use crate::approval::{RequestFacts, Statement, Token, nonce, unix_now};
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<crate::audit::SigningKey> = (0..4)
            .map(|i| crate::audit::SigningKey::create(&dir.path().join(format!("k{i}"))).unwrap())
            .collect();
        let (mut core, mem, res, rx) = setup(64);
        core.approvers.insert(
            "rm".into(),
            keys[..3].iter().map(|k| k.public_key()).collect(),
        );
        let src = DENY_SSH.replace(
            "decision = \"deny\"",
            "decision = \"ask\"\napprovers = { group = \"rm\", threshold = 2 }",
        );
        let a = raise_ask(&mut core, &mem, &res, &src);
        let id = a.info.id.clone();
        let token = |k: usize, change: &dyn Fn(&mut Statement)| {
            let mut st = Statement {
                v: 1,
                request: RequestFacts {
                    request: id.clone(),
                    agent: a.info.agent.clone(),
                    run: a.info.run.clone(),
                    op: a.info.op.clone(),
                    object: a.info.object.clone(),
                    rule: a.info.rule.clone(),
                    policy_digest: a.info.policy_digest.clone(),
                },
                scope: "object".into(),
                expires: unix_now() + 300,
                nonce: nonce(),
                key: String::new(),
            };
            change(&mut st);
            Token::sign(st, &keys[k]).to_line()
        };
        let mut approve = |tokens: &[String]| core.answer(&id, true, false, 60, "x", tokens);
        let e = approve(&[]).unwrap_err();
        assert!(e.contains("requires 2 signatures"), "{e}");
        let first = token(0, &|_| {});
        assert_eq!(
            approve(std::slice::from_ref(&first)).unwrap(),
            gate_protocol::Response::Signed {
                id: id.clone(),
                have: 1,
                need: 2
            }
        );
        assert_eq!(decide_write(&mem, SSH_KEY).ret, -libc::EPERM);
        let mut forged = Token::parse(&token(1, &|_| {})).unwrap();
        forged.statement = forged
            .statement
            .replace("\"scope\":\"object\"", "\"scope\":\"rule\"");
        for (t, why) in [
            (first.clone(), "replayed"),
            (token(0, &|_| {}), "signed this request already"),
            (token(3, &|_| {}), "not one of the group's approvers"),
            (
                token(1, &|s| s.request.run = "other/1".into()),
                "another agent run",
            ),
            (token(1, &|s| s.expires = unix_now() - 1), "expired"),
            (forged.to_line(), "does not verify"),
        ] {
            let e = approve(&[t]).unwrap_err();
            assert!(e.contains(why), "expected {why:?}: {e}");
            assert_eq!(decide_write(&mem, SSH_KEY).ret, -libc::EPERM);
        }
        let r = approve(&[token(1, &|s| s.expires = unix_now() + 120)]).unwrap();
        let gate_protocol::Response::Answered { expires, .. } = r else {
            panic!("{r:?}")
        };
        assert!(
            expires <= unix_now() + 120,
            "the earliest signature's expiry bounds it"
        );
        let d = decide_write(&mem, SSH_KEY);
        assert_eq!((d.ret, d.flags), (0, gate_common::flag::APPROVED));
        let steps: Vec<String> = rx
            .try_iter()
            .filter_map(|m| match m {
                AuditMsg::Approval(a) => Some(format!(
                    "{}:{}:{}",
                    a.step.unwrap_or_default(),
                    a.by.split(':').next().unwrap_or_default(),
                    a.signatures.len()
                )),
                _ => None,
            })
            .collect();
        assert_eq!(steps.len(), 9, "{steps:?}");
        assert_eq!(
            steps.iter().filter(|s| s.starts_with("refuse:")).count(),
            6,
            "{steps:?}"
        );
        assert!(
            steps
                .last()
                .unwrap()
                .starts_with("approve:2 of approver group"),
            "{steps:?}"
        );
        assert!(steps.last().unwrap().ends_with(":2"), "{steps:?}");
    }

    /// A quota of 3 a minute: 3 writes allowed, the 4th denied and marked, allowed again once
    /// the kernel's clock enters the next window; a reload with another quota starts afresh.
    #[test]
    fn quotas_count_per_window_and_fall_to_their_over_limit_decision() {
        let (mut core, mem, res, _rx) = setup(64);
        let src = DENY_SSH.replace(
            "decision = \"deny\"",
            "decision = \"allow\"\nlimit = \"3/min\"",
        );
        core.add(new_agent("a", 50), compiled(&src, &res), &[])
            .unwrap();
        mem.lock().unwrap().now_ns = 1_000;
        let rets: Vec<(i32, u8)> = (0..4)
            .map(|_| {
                let d = decide_write(&mem, SSH_KEY);
                (d.ret, d.flags)
            })
            .collect();
        let over = gate_common::flag::OVER_LIMIT;
        assert_eq!(rets, [(0, 0), (0, 0), (0, 0), (-libc::EPERM, over)]);
        mem.lock().unwrap().now_ns = 1_000 + 60_000_000_000;
        assert_eq!(decide_write(&mem, SSH_KEY).ret, 0);
        let ask = src.replace("limit = \"3/min\"", "limit = \"1/h\"\nover_limit = \"ask\"");
        assert!(core.replace("a", compiled(&ask, &res)).error.is_none());
        assert_eq!(decide_write(&mem, SSH_KEY).ret, 0);
        let d = decide_write(&mem, SSH_KEY);
        assert_eq!(
            (d.ret, d.decision & gate_common::decision::MASK, d.flags),
            (-libc::EPERM, gate_common::decision::ASK, over)
        );
        core.remove("a", "done").unwrap();
        assert_eq!(mem.lock().unwrap().verdict_count(), 0);
    }

    /// Trust lockdown: writes the policy allows are denied, reads still decided by it, a
    /// reload is refused until a person restores the agent; both steps recorded.
    #[test]
    fn trust_lockdown_holds_until_restored() {
        let (mut core, mem, res, rx) = setup(64);
        let src = DENY_SSH.replacen("[[rule]]", "[trust]\nmax_denials = \"3/min\"\n[[rule]]", 1);
        core.add(new_agent("a", 50), compiled(&src, &res), &[])
            .unwrap();
        assert_eq!(write(&mem, 50, OTHER), 0);
        core.distrust("a", "more than 3 denials").unwrap();
        assert_eq!(write(&mem, 50, OTHER), -libc::EPERM);
        let r = core.replace("a", compiled(&src, &res));
        assert!(r.error.unwrap().contains("gate trust restore a"));
        assert!(core.status().agents[0].trust_lockdown.is_some());
        assert!(core.restore_trust("b", "root").is_err());
        core.restore_trust("a", "root (uid 0)").unwrap();
        assert_eq!(write(&mem, 50, OTHER), 0);
        assert!(
            core.restore_trust("a", "root")
                .unwrap_err()
                .contains("not in trust lockdown")
        );
        let steps: Vec<String> = rx
            .try_iter()
            .filter_map(|m| match m {
                AuditMsg::Approval(a) => Some(a.step.unwrap_or_default()),
                _ => None,
            })
            .collect();
        assert_eq!(steps, ["distrust", "restore"]);
    }

    #[test]
    fn a_policy_naming_an_unknown_group_or_too_few_keys_is_refused_with_its_location() {
        let (mut core, _mem, res, _rx) = setup(64);
        let src = DENY_SSH.replace(
            "decision = \"deny\"",
            "decision = \"ask\"\napprovers = { group = \"rm\", threshold = 2 }",
        );
        let e = core
            .add(new_agent("a", 50), compiled(&src, &res), &[])
            .err()
            .unwrap();
        assert!(
            e.contains("p.toml:8:23: approver group \"rm\" is not in"),
            "{e}"
        );
        core.approvers.insert(
            "rm".into(),
            vec![crate::audit::PublicKey::from_bytes([7; 32])],
        );
        let e = core
            .add(new_agent("a", 50), compiled(&src, &res), &[])
            .err()
            .unwrap();
        assert!(
            e.contains("requires 2 signatures but approver group \"rm\" has 1 keys"),
            "{e}"
        );
    }

    #[test]
    fn a_hundred_agents_with_alternating_policies_each_decided_by_their_own() {
        let (mut core, mem, res, _rx) = setup(4096);
        let allow_ssh = DENY_SSH.replace("decision = \"deny\"", "decision = \"allow\"");
        for i in 0..100u64 {
            let src = if i % 2 == 0 {
                DENY_SSH.to_string()
            } else {
                allow_ssh.clone()
            };
            core.add(
                new_agent(&format!("a{i}"), 1000 + i),
                compiled(&src, &res),
                &[],
            )
            .unwrap();
        }
        assert_eq!(core.status().agents.len(), 100);
        for i in 0..100u64 {
            let ssh_key = write(&mem, 1000 + i, SSH_KEY);
            let expect = if i % 2 == 0 { -libc::EPERM } else { 0 };
            assert_eq!(ssh_key, expect, "agent a{i}");
        }
        assert_eq!(write(&mem, 5000, SSH_KEY), 0, "not an agent");
    }

    #[test]
    fn names_are_unique_and_removal_unconfines() {
        let (mut core, mem, res, rx) = setup(64);
        core.add(new_agent("a", 50), compiled(DENY_SSH, &res), &[])
            .unwrap();
        let e = core
            .add(new_agent("a", 51), compiled(DENY_SSH, &res), &[])
            .err()
            .unwrap();
        assert!(e.contains("already running"), "{e}");
        assert!(core.confines(&[1, 2, 50]) && !core.confines(&[1, 2, 51]));
        assert_eq!(write(&mem, 50, SSH_KEY), -libc::EPERM);
        core.remove("a", "stopped").unwrap();
        assert_eq!(write(&mem, 50, SSH_KEY), 0);
        let kinds: Vec<&str> = rx
            .try_iter()
            .map(|m| match m {
                AuditMsg::PolicyLoad { .. } => "load",
                AuditMsg::Start { .. } => "start",
                AuditMsg::Stop { .. } => "stop",
                AuditMsg::Approval(_) => "approval",
            })
            .collect();
        assert_eq!(kinds, ["load", "start", "stop"]);
        assert!(core.remove("a", "again").is_err());
    }

    #[test]
    fn a_reload_that_does_not_fit_keeps_the_old_policy_and_says_so() {
        let (mut core, mem, res, rx) = setup(3);
        core.add(new_agent("a", 50), compiled(DENY_SSH, &res), &[])
            .unwrap();
        let before = core.status().agents[0].policy_digest.clone();
        let r = core.replace(
            "a",
            compiled(&DENY_SSH.replace("name = \"a\"", "name = \"b\""), &res),
        );
        assert!(r.error.as_deref().unwrap().contains("INODES"), "{r:?}");
        assert_eq!(r.new_digest, None);
        assert_eq!(core.status().agents[0].policy_digest, before);
        assert_eq!(write(&mem, 50, SSH_KEY), -libc::EPERM);
        assert_eq!(core.reload_failures, 1);
        // Only the first load was recorded.
        assert_eq!(
            rx.try_iter()
                .filter(|m| matches!(m, AuditMsg::PolicyLoad { .. }))
                .count(),
            1
        );
    }

    #[test]
    fn a_reload_swaps_the_policy_and_records_both_digests() {
        let (mut core, mem, res, rx) = setup(64);
        core.add(new_agent("a", 50), compiled(DENY_SSH, &res), &[])
            .unwrap();
        let open = DENY_SSH.replace("decision = \"deny\"", "decision = \"allow\"");
        let r = core.replace("a", compiled(&open, &res));
        assert_eq!(r.error, None);
        assert_ne!(Some(r.old_digest.clone()), r.new_digest);
        assert_eq!(write(&mem, 50, SSH_KEY), 0);
        let prev: Vec<Option<String>> = rx
            .try_iter()
            .filter_map(|m| match m {
                AuditMsg::PolicyLoad { previous, .. } => Some(previous),
                _ => None,
            })
            .collect();
        assert_eq!(prev, [None, Some(r.old_digest)]);
        assert!(
            core.metrics()
                .contains("gate_reloads_total{result=\"ok\"} 1")
        );
    }

    #[test]
    fn a_new_core_adopts_the_agents_the_kernel_still_confines() {
        let (mut core, mem, res, _rx) = setup(64);
        core.add(new_agent("a", 50), compiled(DENY_SSH, &res), &[])
            .unwrap();
        let saved = core.saved();
        assert_eq!(saved.len(), 1);
        drop(core);
        // The daemon died; the kernel state (the shared enforcer) remains.
        assert_eq!(write(&mem, 50, SSH_KEY), -libc::EPERM);
        let mut again = Core::new(Box::new(Shared(mem.clone())), Duration::from_secs(10), None);
        let before = mem.lock().unwrap().agents()[0].config.slot;
        let r = again.adopt(saved[0].clone(), compiled(DENY_SSH, &res));
        assert_eq!(r.error, None, "{r:?}");
        let after = mem.lock().unwrap().agents()[0].config.slot;
        assert_ne!(
            before, after,
            "adoption rewrites the policy under a fresh slot"
        );
        assert_eq!(write(&mem, 50, SSH_KEY), -libc::EPERM);
        assert_eq!(again.status().agents[0].name, "a");
        // New agents do not reuse the adopted one's id.
        let b = again
            .add(new_agent("b", 60), compiled(DENY_SSH, &res), &[])
            .unwrap();
        assert_ne!(b.agent_id, saved[0].agent_id);
    }

    #[test]
    fn heartbeats_keep_agents_out_of_lockdown() {
        let (mut core, mem, res, _rx) = setup(64);
        core.add(new_agent("a", 50), compiled(DENY_SSH, &res), &[])
            .unwrap();
        mem.lock().unwrap().now_ns = 1;
        core.heartbeat();
        // /home/u/x: allowed by "home".
        assert_eq!(write(&mem, 50, OTHER), 0);
        mem.lock().unwrap().now_ns = 11_000_000_000;
        assert_eq!(write(&mem, 50, OTHER), -libc::EPERM, "stale heartbeat");
        core.heartbeat();
        assert_eq!(write(&mem, 50, OTHER), 0);
    }
}
