//! Typed audit records.
//!
//! A record is a common header (`seq`, `time`, `host`, `boot_id`, `kind`, `prev`) followed by the
//! fields of its kind ([`RecordBody`]). Callers build a [`RecordBody`]; the writer
//! ([`super::AuditLog`]) fills in the header. The byte layout on disk is defined in
//! [`super::chain`].
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::chain::{Encoder, Hash, write_json_str, write_u64};

/// What a record is about (the `kind` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Decision,
    Approval,
    PolicyLoad,
    Start,
    Stop,
    Gap,
    Checkpoint,
    Flow,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::Approval => "approval",
            Kind::PolicyLoad => "policy_load",
            Kind::Start => "start",
            Kind::Stop => "stop",
            Kind::Gap => "gap",
            Kind::Checkpoint => "checkpoint",
            Kind::Flow => "flow",
        }
    }
}

/// The governed operation (`op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Exec,
    Write,
    Read,
    Connect,
    Socket,
    Bpf,
    Capability,
    Process,
    Mount,
    Namespace,
    Module,
}

impl Op {
    pub const fn as_str(self) -> &'static str {
        match self {
            Op::Exec => "exec",
            Op::Write => "write",
            Op::Read => "read",
            Op::Connect => "connect",
            Op::Socket => "socket",
            Op::Bpf => "bpf",
            Op::Capability => "capability",
            Op::Process => "process",
            Op::Mount => "mount",
            Op::Namespace => "namespace",
            Op::Module => "module",
        }
    }
}

/// A decision (`decision`), also the answer recorded by an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    Ask,
}

impl Verdict {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Ask => "ask",
        }
    }
}

/// The object of a decision: a path for file operations, an address and port for `connect`
/// (flattened into the record: `path`, or `addr` + `port`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Object {
    /// A kernel action on a file or directory (`mount tmpfs` on its mount point, `kernel
    /// reads a module file`). First: the untagged form is read back by trying variants in
    /// order, and `Path` alone would drop the action.
    Action {
        syscall: String,
        path: String,
    },
    Path {
        path: String,
    },
    Socket {
        addr: IpAddr,
        port: u16,
    },
    /// A socket that was to be created (`socket`): its family, type and protocol.
    Kind {
        socket: String,
    },
    /// A system call refused as a whole (`bpf`): its name and command.
    Syscall {
        syscall: String,
    },
    /// A capability a confined task was refused.
    Capability {
        capability: String,
    },
    /// Another process a confined task tried to reach: what it tried (`signal SIGTERM`,
    /// `ptrace attach`) and the target's pid and command name.
    Process {
        action: String,
        target_pid: u32,
        target_comm: String,
    },
}

impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Object::Path { path } => f.write_str(path),
            Object::Action { syscall, path } => write!(f, "{syscall} {path}"),
            Object::Socket {
                addr: IpAddr::V6(a),
                port,
            } => write!(f, "[{a}]:{port}"),
            Object::Socket { addr, port } => write!(f, "{addr}:{port}"),
            Object::Kind { socket } => f.write_str(socket),
            Object::Syscall { syscall } => f.write_str(syscall),
            Object::Capability { capability } => f.write_str(capability),
            Object::Process {
                action,
                target_pid,
                target_comm,
            } => write!(f, "{action} to pid {target_pid} ({target_comm})"),
        }
    }
}

/// One decision taken by the kernel programs (or the userspace approval path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The confined agent: its cgroup path or systemd unit.
    pub agent: String,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub op: Op,
    /// The kernel hook that saw the action (`gate_common::hook::NAMES`).
    pub hook: String,
    #[serde(flatten)]
    pub object: Object,
    pub decision: Verdict,
    /// False when audit mode let a would-be denial through.
    pub enforced: bool,
    /// The rule id, or `default` / `internal`.
    pub rule: String,
    /// Hex digest of the policy in force.
    pub policy_digest: String,
    /// Links an `ask` to its approval and to the retried action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<String>,
    /// The rule's quota (`limit`) was used up: its `over_limit` decision applied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub over_limit: bool,
    /// The first allowed action of a network flow (a socket's datagrams to one destination,
    /// a process's connects to one): the flow's later actions are counted in `flow` records.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flow: bool,
}

impl Decision {
    /// The hot path: the same bytes as `serde_json::to_writer(buf, self)` (a test holds them
    /// equal), without serde's per-field overhead.
    fn write_json(&self, buf: &mut Vec<u8>) {
        let field = |buf: &mut Vec<u8>, name: &[u8]| {
            buf.extend_from_slice(b",\"");
            buf.extend_from_slice(name);
            buf.extend_from_slice(b"\":");
        };
        buf.extend_from_slice(b"{\"agent\":");
        write_json_str(buf, &self.agent);
        for (name, v) in [
            (&b"pid"[..], self.pid),
            (b"tgid", self.tgid),
            (b"ppid", self.ppid),
            (b"uid", self.uid),
        ] {
            field(buf, name);
            write_u64(buf, v.into());
        }
        field(buf, b"comm");
        write_json_str(buf, &self.comm);
        if let Some(exe) = &self.exe {
            field(buf, b"exe");
            write_json_str(buf, exe);
        }
        field(buf, b"op");
        write_json_str(buf, self.op.as_str());
        field(buf, b"hook");
        write_json_str(buf, &self.hook);
        match &self.object {
            Object::Path { path } => {
                field(buf, b"path");
                write_json_str(buf, path);
            }
            Object::Action { syscall, path } => {
                field(buf, b"syscall");
                write_json_str(buf, syscall);
                field(buf, b"path");
                write_json_str(buf, path);
            }
            Object::Socket { addr, port } => {
                field(buf, b"addr");
                write_json_str(buf, &addr.to_string());
                field(buf, b"port");
                write_u64(buf, (*port).into());
            }
            Object::Kind { socket } => {
                field(buf, b"socket");
                write_json_str(buf, socket);
            }
            Object::Syscall { syscall } => {
                field(buf, b"syscall");
                write_json_str(buf, syscall);
            }
            Object::Capability { capability } => {
                field(buf, b"capability");
                write_json_str(buf, capability);
            }
            Object::Process {
                action,
                target_pid,
                target_comm,
            } => {
                field(buf, b"action");
                write_json_str(buf, action);
                field(buf, b"target_pid");
                write_u64(buf, (*target_pid).into());
                field(buf, b"target_comm");
                write_json_str(buf, target_comm);
            }
        }
        field(buf, b"decision");
        write_json_str(buf, self.decision.as_str());
        field(buf, b"enforced");
        buf.extend_from_slice(if self.enforced { b"true" } else { b"false" });
        field(buf, b"rule");
        write_json_str(buf, &self.rule);
        field(buf, b"policy_digest");
        write_json_str(buf, &self.policy_digest);
        if let Some(c) = &self.correlation {
            field(buf, b"correlation");
            write_json_str(buf, c);
        }
        if self.over_limit {
            field(buf, b"over_limit");
            buf.extend_from_slice(b"true");
        }
        if self.flow {
            field(buf, b"flow");
            buf.extend_from_slice(b"true");
        }
        buf.push(b'}');
    }
}

/// A step of an `ask`'s life: the request the kernel's denial raised, a person's approval
/// or rejection, the end of its time, or a refused approval token. `correlation` is the
/// request's id; the decisions it was raised by and those its approval let through carry the
/// same `correlation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The `correlation` of the `ask` decision this answers.
    pub correlation: String,
    pub agent: String,
    /// `allow` (approved), `deny` (rejected, expired, refused) or `ask` (a new request).
    pub decision: Verdict,
    /// Who answered: a user name, `uid:N`, the signing keys, `kernel` (a request), `expiry`.
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `request`, `approve`, `reject`, `expire` or `refuse` (absent in older streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The agent's run (`boot id/cgroup id`): an approval is bound to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// What was asked for: a path, `addr:port`, or what the rule names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_digest: Option<String>,
    /// `object` (that object only) or `rule` (everything the rule matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Unix time (s) at which the approval or rejection ends, enforced by the kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// The process that asked: its command line, then its parents' (nearest first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub process: Vec<String>,
    /// The signed statements that approved it (each a token as submitted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<String>,
}

impl Approval {
    pub fn new(correlation: &str, agent: &str, decision: Verdict, by: &str, step: &str) -> Self {
        Approval {
            correlation: correlation.to_owned(),
            agent: agent.to_owned(),
            decision,
            by: by.to_owned(),
            reason: None,
            step: Some(step.to_owned()),
            run: None,
            op: None,
            object: None,
            rule: None,
            policy_digest: None,
            scope: None,
            expires: None,
            process: Vec::new(),
            signatures: Vec::new(),
        }
    }
}

/// Enforcement mode of a loaded policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    Enforce,
    Audit,
}

/// A policy was compiled and loaded into the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyLoad {
    pub policy_digest: String,
    /// Where it came from (a path, or `inline`).
    pub source: String,
    pub mode: PolicyMode,
    pub rules: u32,
    /// The agent it was loaded for (daemon streams carry many agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The digest of the policy it replaced (a reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_digest: Option<String>,
}

/// Whose life cycle a `start` / `stop` record marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The gate daemon.
    Daemon,
    /// One `gate run` confined command tree.
    Run,
}

/// Body of `start` and `stop` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    pub scope: Scope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Lifecycle {
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            agent: None,
            pid: None,
            version: None,
            command: None,
            exit_code: None,
            reason: None,
        }
    }
}

/// The allowed actions of a network flow the kernel counted in one epoch (5 s): a socket's
/// datagrams to one destination (`hook` `sendmsg`), or a process's connects to one (`hook`
/// `connect`). The flow's first action in the epoch is a `decision` record with `flow: true`;
/// the kernel counts the rest, and this record reports them when the epoch ends (none when
/// there were none). Denials are never counted: each is a `decision` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub agent: String,
    /// The process whose actions these are.
    pub tgid: u32,
    pub op: Op,
    pub hook: String,
    #[serde(flatten)]
    pub object: Object,
    pub decision: Verdict,
    pub rule: String,
    pub policy_digest: String,
    /// Actions after the flow's first in the epoch.
    pub count: u64,
}

/// Events that were lost before reaching the log (ring buffer full, a record cut by a crash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub lost: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    pub reason: String,
}

/// Why a checkpoint was written. Part of the signed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointReason {
    /// `checkpoint_every` records since the last one.
    Count,
    /// `checkpoint_interval` elapsed since the oldest unsigned record.
    Time,
    /// Right after a gap record.
    Gap,
    /// The writer is closing the log cleanly.
    Shutdown,
    /// The log file is being rotated; this is the last record of the old file.
    Rotate,
    /// Written at open: the previous writer stopped without signing its last records.
    Recovery,
    /// Asked for explicitly.
    Manual,
}

impl CheckpointReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            CheckpointReason::Count => "count",
            CheckpointReason::Time => "time",
            CheckpointReason::Gap => "gap",
            CheckpointReason::Shutdown => "shutdown",
            CheckpointReason::Rotate => "rotate",
            CheckpointReason::Recovery => "recovery",
            CheckpointReason::Manual => "manual",
        }
    }
}

/// A signed checkpoint: `sig` is the Ed25519 signature of
/// [`super::sign::checkpoint_message`]`(head, last, first, key_id, reason)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// First record not covered by the previous checkpoint (that checkpoint's own seq).
    pub first: u64,
    /// Last covered record (the chain head); always this record's `seq - 1`.
    pub last: u64,
    /// Hex SHA-256 of record `last`'s canonical encoding; equals this record's `prev`.
    pub head: String,
    /// Hex of the first 8 bytes of SHA-256 of the raw Ed25519 public key.
    pub key_id: String,
    pub reason: CheckpointReason,
    /// Hex Ed25519 signature (64 bytes).
    pub sig: String,
}

/// The kind-specific part of a record.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordBody {
    Decision(Decision),
    Approval(Approval),
    PolicyLoad(PolicyLoad),
    Start(Lifecycle),
    Stop(Lifecycle),
    Gap(Gap),
    Checkpoint(Checkpoint),
    Flow(Flow),
}

impl RecordBody {
    pub fn kind(&self) -> Kind {
        match self {
            RecordBody::Decision(_) => Kind::Decision,
            RecordBody::Approval(_) => Kind::Approval,
            RecordBody::PolicyLoad(_) => Kind::PolicyLoad,
            RecordBody::Start(_) => Kind::Start,
            RecordBody::Stop(_) => Kind::Stop,
            RecordBody::Gap(_) => Kind::Gap,
            RecordBody::Checkpoint(_) => Kind::Checkpoint,
            RecordBody::Flow(_) => Kind::Flow,
        }
    }

    /// Appends the body's fields as a JSON object (`{...}`), in declaration order.
    pub(crate) fn write_object(&self, buf: &mut Vec<u8>) -> serde_json::Result<()> {
        match self {
            RecordBody::Decision(b) => {
                b.write_json(buf);
                Ok(())
            }
            RecordBody::Approval(b) => serde_json::to_writer(buf, b),
            RecordBody::PolicyLoad(b) => serde_json::to_writer(buf, b),
            RecordBody::Start(b) | RecordBody::Stop(b) => serde_json::to_writer(buf, b),
            RecordBody::Gap(b) => serde_json::to_writer(buf, b),
            RecordBody::Checkpoint(b) => serde_json::to_writer(buf, b),
            RecordBody::Flow(b) => serde_json::to_writer(buf, b),
        }
    }
}

/// One full record as read back from a log line.
///
/// Records are written by [`super::AuditLog`]; to get the exact bytes of a record use
/// [`Record::canonical`] (there is deliberately no `Serialize`: a generic serializer could pick
/// another field order, and the hash chain is over exact bytes).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub time: String,
    pub host: String,
    pub boot_id: String,
    /// Hex SHA-256 of the previous record's canonical encoding (all zeros for the first).
    pub prev: String,
    #[serde(flatten)]
    pub body: RecordBody,
}

impl Record {
    /// Parses one log line (with or without its trailing newline).
    pub fn parse(line: &[u8]) -> serde_json::Result<Record> {
        serde_json::from_slice(line)
    }

    pub fn kind(&self) -> Kind {
        self.body.kind()
    }

    /// The canonical encoding of this record (the log line without its newline).
    pub fn canonical(&self) -> Result<Vec<u8>, super::chain::EncodeError> {
        let mut prev: Hash = [0; 32];
        hex::decode_to_slice(&self.prev, &mut prev).map_err(|_| super::chain::EncodeError::Prev)?;
        let mut buf = Vec::with_capacity(512);
        Encoder::new(&self.host, &self.boot_id)
            .encode(&mut buf, self.seq, &self.time, &prev, &self.body)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn decision() -> Decision {
        Decision {
            agent: "/sys/fs/cgroup/gate/agent-1".into(),
            pid: 4242,
            tgid: 4242,
            ppid: 1,
            uid: 1000,
            comm: "python3".into(),
            exe: Some("/usr/bin/python3".into()),
            op: Op::Write,
            hook: "open".into(),
            object: Object::Path {
                path: "/home/u/.ssh/id_ed25519".into(),
            },
            decision: Verdict::Deny,
            enforced: true,
            rule: "ssh-keys".into(),
            policy_digest: "ab".repeat(32),
            correlation: None,
            over_limit: false,
            flow: false,
        }
    }

    #[test]
    fn decision_fields_are_flat_and_named() {
        let mut buf = Vec::new();
        RecordBody::Decision(decision())
            .write_object(&mut buf)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        for key in [
            "agent", "pid", "tgid", "ppid", "uid", "comm", "exe", "op", "hook", "path",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["op"], "write");
        assert!(v.get("correlation").is_none());
    }

    #[test]
    fn fast_decision_encoding_matches_serde() {
        let mut variants = vec![decision()];
        let mut d = decision();
        d.exe = None;
        d.correlation = Some("ask-\"7\"".into());
        d.over_limit = true;
        d.flow = true;
        d.comm = "we\tird\u{1}".into();
        d.enforced = false;
        d.decision = Verdict::Ask;
        variants.push(d.clone());
        for (addr, port) in [("10.0.0.1", 0u16), ("::1", 65535), ("fe80::1:2", 53)] {
            d.object = Object::Socket {
                addr: addr.parse().unwrap(),
                port,
            };
            d.op = Op::Connect;
            variants.push(d.clone());
        }
        for d in variants {
            let mut fast = Vec::new();
            d.write_json(&mut fast);
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                serde_json::to_string(&d).unwrap()
            );
        }
    }

    #[test]
    fn connect_object_round_trips() {
        let mut d = decision();
        d.op = Op::Connect;
        d.object = Object::Socket {
            addr: "2001:db8::1".parse().unwrap(),
            port: 443,
        };
        let body = RecordBody::Decision(d.clone());
        let mut line = Vec::new();
        Encoder::new("h", "b")
            .encode(
                &mut line,
                7,
                "2026-01-01T00:00:00.000000000Z",
                &[1; 32],
                &body,
            )
            .unwrap();
        let rec = Record::parse(&line).unwrap();
        assert_eq!(rec.body, body);
        assert_eq!(rec.seq, 7);
        assert_eq!(rec.canonical().unwrap(), line);
        assert_eq!(d.object.to_string(), "[2001:db8::1]:443");
    }

    #[test]
    fn flow_records_round_trip_with_their_counts() {
        let body = RecordBody::Flow(Flow {
            agent: "/gate/run-1".into(),
            tgid: 77,
            op: Op::Connect,
            hook: "sendmsg".into(),
            object: Object::Socket {
                addr: "10.0.0.53".parse().unwrap(),
                port: 53,
            },
            decision: Verdict::Allow,
            rule: "dns".into(),
            policy_digest: "ab".repeat(32),
            count: 1200,
        });
        let mut line = Vec::new();
        Encoder::new("h", "b")
            .encode(
                &mut line,
                3,
                "2026-01-01T00:00:00.000000000Z",
                &[2; 32],
                &body,
            )
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["kind"], "flow");
        assert_eq!(v["addr"], "10.0.0.53");
        assert_eq!(v["port"], 53);
        assert_eq!(v["count"], 1200);
        let rec = Record::parse(&line).unwrap();
        assert_eq!(rec.body, body);
        assert_eq!(rec.canonical().unwrap(), line);
    }
}
