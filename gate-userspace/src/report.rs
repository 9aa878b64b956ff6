//! What a run reports: the decision log (`--log`) and the summary printed at the end.
use std::{collections::BTreeMap, ffi::OsString, path::Path};

use gate_common::counter;

use crate::{
    audit::{
        AuditConfig, AuditError, AuditLog, Decision as AuditDecision, Lifecycle, Object,
        Op as AuditOp, PolicyLoad, PolicyMode, RecordBody, Scope, Verdict,
    },
    events::Decision,
    policy::{CompiledPolicy, Mode},
};

/// The decision log: gate's signed, hash-chained audit stream (see [`crate::audit`]).
/// A run writes its policy load and start, one record per decision, a signed gap record for
/// events the kernel could not queue, and its stop.
pub struct LogSink {
    log: AuditLog,
    agent: String,
    digest: String,
    command: Vec<String>,
}

impl LogSink {
    pub fn open(
        path: &Path,
        key: &Path,
        policy: &CompiledPolicy,
        agent: &str,
        command: &[OsString],
    ) -> Result<Self, AuditError> {
        if let Some(dir) = key.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut log = AuditLog::open(path, AuditConfig::new(key))?;
        let digest = policy.digest_hex();
        log.append(&RecordBody::PolicyLoad(policy_load(policy, None, None)))?;
        let command: Vec<String> = command
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        let mut start = Lifecycle::new(Scope::Run);
        start.agent = Some(agent.to_owned());
        start.pid = Some(std::process::id());
        start.version = Some(env!("CARGO_PKG_VERSION").to_owned());
        start.command = Some(command.clone());
        log.append(&RecordBody::Start(start))?;
        Ok(LogSink {
            log,
            agent: agent.to_owned(),
            digest,
            command,
        })
    }

    pub fn decision(&mut self, d: &Decision) -> Result<(), AuditError> {
        let rec = decision_record(d, &self.agent, &self.digest);
        self.log.append(&rec).map(|_| ())
    }

    /// Records the counted actions of a network flow.
    pub fn flow(
        &mut self,
        f: &crate::flows::FlowReport,
        policy: &CompiledPolicy,
    ) -> Result<(), AuditError> {
        let rec = flow_record(f, &self.agent, Some(policy), &self.digest);
        self.log.append(&rec).map(|_| ())
    }

    /// Records `lost` events the kernel could not queue (a signed gap in the stream).
    pub fn gap(&mut self, lost: u64, cpu: Option<u32>) -> Result<(), AuditError> {
        self.log
            .append_gap(
                lost,
                cpu,
                "kernel ring buffer full: events were dropped, decisions were still enforced",
            )
            .map(|_| ())
    }

    /// Flushes a drained batch and signs a checkpoint when one is due.
    pub fn tick(&mut self) -> Result<(), AuditError> {
        self.log.flush()?;
        self.log.tick().map(|_| ())
    }

    pub fn finish(
        mut self,
        exit_code: Option<i32>,
        reason: Option<String>,
    ) -> Result<(), AuditError> {
        let mut stop = Lifecycle::new(Scope::Run);
        stop.agent = Some(self.agent.clone());
        stop.pid = Some(std::process::id());
        stop.command = Some(std::mem::take(&mut self.command));
        stop.exit_code = exit_code;
        stop.reason = reason;
        self.log.append(&RecordBody::Stop(stop))?;
        self.log.close()
    }
}

/// Counts for the end-of-run summary.
#[derive(Debug, Default)]
pub struct Summary {
    pub exit_code: i32,
    /// (op, decision) → count.
    pub counts: BTreeMap<(&'static str, &'static str), u64>,
    /// Distinct denials (op, object, rule) → count, for the list a person reads.
    pub denials: BTreeMap<(&'static str, String, String), u64>,
    pub counters: [u64; counter::COUNT as usize],
}

impl Summary {
    pub fn add(&mut self, d: &Decision) {
        *self.counts.entry((d.op, d.decision)).or_default() += 1;
        if d.denied() {
            *self
                .denials
                .entry((d.op, d.object(), d.rule.clone()))
                .or_default() += 1;
        }
    }

    pub fn render(&self, command: &[OsString]) -> String {
        let cmd = command
            .first()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut s = format!("gate: {cmd} exited with status {}\n", self.exit_code);
        let mut ops: Vec<String> = Vec::new();
        for op in [
            "exec",
            "write",
            "read",
            "connect",
            "socket",
            "bpf",
            "capability",
            "process",
            "mount",
            "namespace",
            "module",
        ] {
            let n = |d| self.counts.get(&(op, d)).copied().unwrap_or(0);
            let (a, d) = (n("allow"), n("deny") + n("ask"));
            if a + d > 0 {
                ops.push(format!("{op} {a} allowed/{d} denied"));
            }
        }
        if ops.is_empty() {
            s.push_str("gate: no reported decisions\n");
        } else {
            s.push_str(&format!("gate: reported decisions: {}\n", ops.join(", ")));
        }
        for (i, ((op, obj, rule), n)) in self.denials.iter().enumerate() {
            if i == 10 {
                s.push_str(&format!("gate:   … and {} more\n", self.denials.len() - 10));
                break;
            }
            s.push_str(&format!(
                "gate:   denied {op:<7} {obj} (rule {rule}){}\n",
                times(*n)
            ));
        }
        let lost = self.counters[counter::RINGBUF_FULL as usize];
        if lost > 0 {
            s.push_str(&format!(
                "gate: {lost} events were lost because the ring buffer was full \
                 (the decisions were still enforced); raise --ringbuf-bytes\n"
            ));
        }
        let internal = self.counters[counter::INTERNAL_ERROR as usize]
            + self.counters[counter::DEPTH_EXCEEDED as usize]
            + self.counters[counter::DISCONNECTED as usize];
        if internal > 0 {
            s.push_str(&format!(
                "gate: {internal} actions were denied by internal errors (fail-closed)\n"
            ));
        }
        s
    }
}

fn times(n: u64) -> String {
    if n > 1 {
        format!(" ×{n}")
    } else {
        String::new()
    }
}

/// The `policy_load` record of `policy`, loaded for `agent` (daemon streams), replacing the
/// policy of digest `previous` (a reload).
pub fn policy_load(
    policy: &CompiledPolicy,
    agent: Option<String>,
    previous: Option<String>,
) -> PolicyLoad {
    PolicyLoad {
        policy_digest: policy.digest_hex(),
        source: policy.name.clone(),
        mode: if policy.mode == Mode::Audit {
            PolicyMode::Audit
        } else {
            PolicyMode::Enforce
        },
        rules: policy.rules.len() as u32,
        agent,
        previous_digest: previous,
    }
}

/// The audit record of one kernel decision, for `agent` under the policy `digest`.
pub fn decision_record(d: &Decision, agent: &str, digest: &str) -> RecordBody {
    let object = match (&d.path, &d.addr, d.port) {
        _ if d.socket.is_some() => Object::Kind {
            socket: d.socket.clone().unwrap_or_default(),
        },
        (Some(p), _, _) if let Some(syscall) = &d.syscall => Object::Action {
            syscall: syscall.clone(),
            path: p.clone(),
        },
        _ if d.syscall.is_some() => Object::Syscall {
            syscall: d.syscall.clone().unwrap_or_default(),
        },
        _ if d.capability.is_some() => Object::Capability {
            capability: d.capability.clone().unwrap_or_default(),
        },
        _ if let Some(t) = &d.target => Object::Process {
            action: t.action.clone(),
            target_pid: t.target_pid,
            target_comm: t.target_comm.clone(),
        },
        (_, Some(a), Some(port)) => match a.parse() {
            Ok(addr) => Object::Socket { addr, port },
            Err(_) => Object::Path {
                path: format!("{a}:{port}"),
            },
        },
        (Some(p), _, _) => Object::Path { path: p.clone() },
        _ => Object::Path {
            path: String::from("?"),
        },
    };
    let op = match d.op {
        "exec" => AuditOp::Exec,
        "write" => AuditOp::Write,
        "read" => AuditOp::Read,
        "socket" => AuditOp::Socket,
        "bpf" => AuditOp::Bpf,
        "capability" => AuditOp::Capability,
        "process" => AuditOp::Process,
        "mount" => AuditOp::Mount,
        "namespace" => AuditOp::Namespace,
        "module" => AuditOp::Module,
        _ => AuditOp::Connect,
    };
    let decision = match d.decision {
        "allow" => Verdict::Allow,
        "ask" => Verdict::Ask,
        _ => Verdict::Deny,
    };
    let rec = AuditDecision {
        agent: agent.to_owned(),
        pid: d.pid,
        tgid: d.tgid,
        ppid: d.ppid,
        uid: d.uid,
        comm: d.comm.clone(),
        exe: None,
        op,
        hook: d.hook.to_owned(),
        object,
        decision,
        enforced: d.enforced,
        rule: d.rule.clone(),
        policy_digest: digest.to_owned(),
        correlation: None,
        over_limit: d.over_limit,
        flow: d.flow,
    };
    RecordBody::Decision(rec)
}

/// The audit record of a network flow's counted actions, for `agent` under the policy
/// `digest` (`policy` None: the rule by number).
pub fn flow_record(
    f: &crate::flows::FlowReport,
    agent: &str,
    policy: Option<&CompiledPolicy>,
    digest: &str,
) -> RecordBody {
    let sev = f.key.decision & gate_common::decision::MASK;
    RecordBody::Flow(crate::audit::Flow {
        agent: agent.to_owned(),
        tgid: f.key.tgid,
        op: AuditOp::Connect,
        hook: gate_common::hook::NAMES
            .get(f.key.hook as usize)
            .copied()
            .unwrap_or("unknown")
            .to_owned(),
        object: Object::Socket {
            addr: f.addr(),
            port: f.key.port,
        },
        decision: if sev == gate_common::decision::ALLOW {
            Verdict::Allow
        } else {
            Verdict::Deny
        },
        rule: crate::events::rule_name(policy, f.key.rule),
        policy_digest: digest.to_owned(),
        count: f.count,
    })
}
