//! Audit chain throughput on one core: encode + SHA-256 chain + Ed25519 checkpoint every N
//! records + write to a file, for 1,000,000 decision records; then verification of the result.
//!
//! `cargo bench -p gate-userspace --bench audit_chain [-- RECORDS]`
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use gate::audit::{AuditConfig, AuditLog, Decision, Object, Op, RecordBody, Verdict};

const DEFAULT_RECORDS: u64 = 1_000_000;
const CHECKPOINT_EVERY: u64 = 1000;

fn body() -> RecordBody {
    RecordBody::Decision(Decision {
        agent: "/sys/fs/cgroup/gate.slice/gate-run-4711.scope".into(),
        pid: 4711,
        tgid: 4711,
        ppid: 4700,
        uid: 1000,
        comm: "node".into(),
        exe: Some("/usr/bin/node".into()),
        op: Op::Write,
        hook: "open".into(),
        object: Object::Path {
            path: String::with_capacity(128),
        },
        decision: Verdict::Allow,
        enforced: true,
        rule: "workspace-rw".into(),
        policy_digest: "3f".repeat(32),
        correlation: None,
        over_limit: false,
        flow: false,
    })
}

struct Run {
    label: &'static str,
    records: u64,
    elapsed: Duration,
    /// CPU time of this thread (user + system): what one core spent, whatever else runs.
    cpu: Duration,
    bytes: u64,
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Run {
    fn print(&self) {
        let n = self.records as f64;
        let (wall, cpu) = (self.elapsed.as_secs_f64(), self.cpu.as_secs_f64());
        println!(
            "{:<30} {:>8} records {:>5.0} bytes/record | wall {:>6.2} s {:>8.0} records/s {:>5.0} ns/record | cpu {:>6.2} s {:>8.0} records/s {:>5.0} ns/record",
            self.label,
            self.records,
            self.bytes as f64 / n,
            wall,
            n / wall,
            wall * 1e9 / n,
            cpu,
            n / cpu,
            cpu * 1e9 / n,
        );
    }
}

fn write_run(dir: &Path, label: &'static str, records: u64, flush_each_record: bool) -> Run {
    let path = dir.join(format!("{label}.jsonl").replace(' ', "-"));
    let mut cfg = AuditConfig::new(dir.join("gate.key"));
    cfg.checkpoint_every = CHECKPOINT_EVERY;
    cfg.flush_each_record = flush_each_record;
    let mut log = AuditLog::open(&path, cfg).expect("open");
    let mut body = body();
    let (start, cpu) = (Instant::now(), thread_cpu());
    for i in 0..records {
        if let RecordBody::Decision(Decision {
            object: Object::Path { path },
            pid,
            ..
        }) = &mut body
        {
            path.clear();
            let _ = write!(
                path,
                "/home/dev/work/repo/src/module_{}/file_{i}.rs",
                i % 97
            );
            *pid = 4711 + (i % 8) as u32;
        }
        log.append(&body).expect("append");
    }
    log.close().expect("close");
    let (elapsed, cpu) = (start.elapsed(), thread_cpu() - cpu);
    let bytes = std::fs::metadata(&path).expect("stat").len();
    Run {
        label,
        records,
        elapsed,
        cpu,
        bytes,
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let records = args
        .iter()
        .find_map(|a| a.parse::<u64>().ok())
        .unwrap_or(DEFAULT_RECORDS);
    let only = |phase: &str| {
        !args.iter().any(|a| a.parse::<u64>().is_err()) || args.iter().any(|a| a == phase)
    };
    let dir = tempfile::tempdir_in(
        std::env::var_os("AUDIT_BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
    )
    .expect("tempdir");
    println!(
        "audit chain: {records} decision records, checkpoint every {CHECKPOINT_EVERY}, file in {}",
        dir.path().display()
    );
    if only("each") {
        write_run(dir.path(), "append, write(2) per record", records, true).print();
    }
    if only("buffered") || only("verify") {
        let run = write_run(dir.path(), "append, buffered", records, false);
        run.print();
        if only("verify") {
            verify_run(dir.path(), &run).print();
        }
    }
}

fn verify_run(dir: &Path, written: &Run) -> Run {
    let file = dir.join(format!("{}.jsonl", written.label).replace(' ', "-"));
    let pk = gate::audit::PublicKey::load(&dir.join("gate.pub")).expect("pub");
    let (start, cpu) = (Instant::now(), thread_cpu());
    let report = gate::audit::verify(&[file], &pk).expect("verify");
    let (elapsed, cpu) = (start.elapsed(), thread_cpu() - cpu);
    assert!(
        report.passed(true),
        "benchmark log does not verify: {:?}",
        report.findings.first()
    );
    Run {
        label: "verify",
        records: report.records,
        elapsed,
        cpu,
        bytes: written.bytes,
    }
}
