//! Helpers shared by the `audit_*` integration tests (included with `#[path]`; no tests here).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use gate::audit::{
    AuditConfig, AuditLog, Decision, FindingKind, Object, Op, PublicKey, RecordBody, Severity,
    Verdict, VerifyReport,
};

pub fn config(dir: &Path, every: u64) -> AuditConfig {
    let mut cfg = AuditConfig::new(dir.join("keys/gate.key"));
    cfg.checkpoint_every = every;
    cfg.checkpoint_interval = Duration::from_secs(3600);
    cfg.host = Some("test-host".into());
    cfg.boot_id = Some("00000000-0000-0000-0000-000000000001".into());
    cfg
}

pub fn decision(i: u64) -> RecordBody {
    let object = if i % 7 == 3 {
        Object::Socket {
            addr: "192.0.2.7".parse().unwrap(),
            port: 443,
        }
    } else {
        Object::Path {
            path: format!("/home/agent/project/src/file-{i}.rs"),
        }
    };
    RecordBody::Decision(Decision {
        agent: "/sys/fs/cgroup/gate.slice/agent-1".into(),
        pid: 1000 + (i % 50) as u32,
        tgid: 1000,
        ppid: 999,
        uid: 1000,
        comm: "claude".into(),
        exe: Some("/usr/bin/node".into()),
        op: if i % 7 == 3 { Op::Connect } else { Op::Write },
        hook: if i % 7 == 3 {
            "connect".into()
        } else {
            "open".into()
        },
        object,
        decision: if i.is_multiple_of(5) {
            Verdict::Deny
        } else {
            Verdict::Allow
        },
        enforced: true,
        rule: format!("rule-{}", i % 13),
        policy_digest: "5e".repeat(32),
        correlation: None,
        over_limit: false,
        flow: false,
    })
}

/// Appends `n` decisions.
pub fn append_n(log: &mut AuditLog, n: u64) {
    for i in 0..n {
        log.append(&decision(i)).unwrap();
    }
}

/// A closed log of `n` decisions with a checkpoint every `every` records.
pub fn write_log(dir: &Path, n: u64, every: u64) -> (PathBuf, PublicKey) {
    let path = dir.join("audit.jsonl");
    let mut log = AuditLog::open(&path, config(dir, every)).unwrap();
    append_n(&mut log, n);
    let pk = log.public_key();
    log.close().unwrap();
    (path, pk)
}

pub fn lines(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap();
    assert_eq!(data.last(), Some(&b'\n'));
    data[..data.len() - 1]
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

pub fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    let mut data = Vec::new();
    for l in lines {
        data.extend_from_slice(l);
        data.push(b'\n');
    }
    std::fs::write(path, data).unwrap();
}

pub fn value(line: &[u8]) -> serde_json::Value {
    serde_json::from_slice(line).unwrap()
}

pub fn seq_of(line: &[u8]) -> u64 {
    value(line)["seq"].as_u64().unwrap()
}

pub fn is_checkpoint(line: &[u8]) -> bool {
    value(line)["kind"] == "checkpoint"
}

/// The findings of one severity, as (kind, line, seq).
pub fn findings(r: &VerifyReport, sev: Severity) -> Vec<(FindingKind, u64, Option<u64>)> {
    r.findings
        .iter()
        .filter(|f| f.severity == sev)
        .map(|f| (f.kind, f.line, f.seq))
        .collect()
}

pub fn errors(r: &VerifyReport) -> Vec<(FindingKind, u64, Option<u64>)> {
    findings(r, Severity::Error)
}

pub fn warnings(r: &VerifyReport) -> Vec<(FindingKind, u64, Option<u64>)> {
    findings(r, Severity::Warning)
}

/// Verifies and prints the report (shown when a test fails).
pub fn check(files: &[PathBuf], pk: &PublicKey) -> VerifyReport {
    let r = gate::audit::verify(files, pk).unwrap();
    let mut out = Vec::new();
    gate::audit::write_report(&mut out, &r, false).unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out));
    r
}
