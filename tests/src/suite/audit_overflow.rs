//! Nothing lost silently: a kernel ring buffer made to overflow becomes a signed gap record, and
//! `audit = "required"` denies what cannot be recorded.
//!
//! The overflow is made deterministic rather than hoped for: gate (the only reader of the ring
//! buffer) is stopped with SIGSTOP while the confined command floods the kernel with 500 denied
//! writes into a 64 KiB buffer (about 58 events fit). The command keeps running, since gate's
//! enforcement does not depend on gate's process. Then gate is continued, drains what fit, and
//! must account for every event it did not get.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::single::setup;
use super::{Ctx, Failure, GateOpts, Notes, OrFail, TestFn, TestResult};
use crate::events::{Log, ev};
use crate::outcome::Status;
use crate::run::{Cmd, wait_until};

pub fn tests() -> Vec<(&'static str, TestFn)> {
    vec![
        (
            "audit/ring-buffer-overflow-becomes-a-signed-gap-record",
            best_effort,
        ),
        ("audit/required-denies-what-cannot-be-recorded", required),
    ]
}

/// Denied writes in the burst.
const BURST: u64 = 500;

/// Events the confined command asks the kernel to record, whatever the buffer does: the exec of
/// the shell, two execs of the probe, the burst, the audited write while the buffer is full, the
/// exec of /usr/bin/true while it is full, and the audited write after gate drained it.
const WANTED: u64 = 1 + 2 + BURST + 1 + 1 + 1;

struct Outcome {
    log: Log,
    log_path: PathBuf,
    cmd: Cmd,
    out: crate::outcome::Outcome,
    pubkey: PathBuf,
}

fn best_effort(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    let o = flood(ctx, "best-effort", false)?;
    let fail = |f: Failure| f.command(&o.cmd, &o.out).log(&o.log_path, &o.log);
    if o.out.status != Status::Exited(0) {
        return Err(fail(Failure::new(format!(
            "expected exit 0, got {}",
            o.out.summary()
        ))));
    }
    for want in [
        format!("open-write x{BURST}: errno=EPERM x{BURST}"),
        "open-write x1: ok x1".to_string(),
        "create x1: ok x1".to_string(),
        "exec-while-full=0".to_string(),
    ] {
        if !o.out.stdout.lines().any(|l| l.trim() == want) {
            return Err(fail(Failure::new(format!(
                "expected the line {want:?} from the confined command (enforcement does not wait \
                 for the log), it is missing"
            ))));
        }
    }
    let lost = account(ctx, &o).map_err(fail)?;
    notes.push(format!(
        "{lost} of {WANTED} events lost, all in signed gap records"
    ));
    Ok(())
}

fn required(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    let o = flood(ctx, "required", true)?;
    let fail = |f: Failure| f.command(&o.cmd, &o.out).log(&o.log_path, &o.log);
    for (want, why) in [
        (
            format!("open-write x{BURST}: errno=EPERM x{BURST}"),
            "the burst is denied by rule",
        ),
        (
            "open-write x1: errno=EPERM x1".to_string(),
            "an audited write that cannot be recorded is denied",
        ),
        (
            "create x1: ok x1".to_string(),
            "a write nobody asked to record is not affected",
        ),
        (
            "exec-while-full=126".to_string(),
            "an exec (always recorded) cannot be recorded, so it is denied",
        ),
        (
            "open-write x1: ok x1".to_string(),
            "after gate drained the buffer, the audited write is allowed again",
        ),
    ] {
        if !o.out.stdout.lines().any(|l| l.trim() == want) {
            return Err(fail(Failure::new(format!(
                "expected the line {want:?} ({why}), it is missing"
            ))));
        }
    }
    let lost = account(ctx, &o).map_err(fail)?;
    notes.push(format!(
        "{lost} of {WANTED} events could not be recorded: the allowed ones among them were denied"
    ));
    Ok(())
}

/// Runs the flood under base.toml (with `audit = "required"` added when `required`).
fn flood(ctx: &Ctx, name: &str, required: bool) -> Result<Outcome, Failure> {
    let s = setup(ctx, "audit-overflow", name, "base")?;
    let m = s.dir.join("marks");
    std::fs::create_dir_all(&m).or_fail("mkdir marks")?;
    std::fs::create_dir_all(s.ws.join("audited")).or_fail("mkdir audited")?;
    for f in ["full", "drained"] {
        std::fs::write(s.ws.join("audited").join(f), "").or_fail("create audited file")?;
    }
    for f in ["go", "again"] {
        nix::unistd::mkfifo(&m.join(f), nix::sys::stat::Mode::from_bits_truncate(0o600))
            .or_fail("mkfifo")?;
    }
    let mut policy = std::fs::read_to_string(&s.opts.policy).or_fail("read base policy")?;
    if required {
        policy = policy.replacen(
            "mode = \"enforce\"\n",
            "mode = \"enforce\"\naudit = \"required\"\n",
            1,
        );
        if !policy.contains("audit = \"required\"") {
            return Err(Failure::new(
                "setup: base.toml has no `mode = \"enforce\"` line",
            ));
        }
    }
    let policy_path = s.dir.join("policy.toml");
    std::fs::write(&policy_path, policy).or_fail("write policy")?;
    let key = s.dir.join("audit.key");
    let opts = GateOpts {
        policy: policy_path,
        user: None,
        extra: vec![
            "--ringbuf-bytes".into(),
            "65536".into(),
            "--audit-key".into(),
            key.display().to_string(),
        ],
        ..s.opts.clone()
    };
    let script = format!(
        ": > {m}/ready; read x < {m}/go; \
         {p} seq {BURST} open-write {secret} + 1 open-write {ws}/audited/full + 1 create {ws}/plain; \
         /usr/bin/true; echo exec-while-full=$?; \
         : > {m}/probed; read x < {m}/again; \
         {p} seq 1 open-write {ws}/audited/drained",
        m = m.display(),
        p = s.probe,
        secret = format_args!("{}/.ssh/id_rsa", ctx.home()),
        ws = s.ws.display(),
    );
    let argv = vec!["/bin/sh".to_string(), "-c".into(), script];
    let cmd = ctx.gate_cmd(&opts, &argv);
    let mut bg = cmd.spawn()?;
    let early = |bg: &mut crate::run::Background, what: &str| {
        bg.signal(libc::SIGCONT);
        let o = bg.wait(Duration::from_secs(5));
        Failure::new(what.to_string()).command(&cmd, &o)
    };
    if !bg.wait_for_file(
        &m.join("ready"),
        Duration::from_secs(super::GATE_RUN_TIMEOUT),
    ) {
        return Err(early(&mut bg, "setup: the confined shell never started"));
    }
    // From here until SIGCONT nobody reads the ring buffer.
    bg.signal(libc::SIGSTOP);
    release(&m.join("go"))?;
    if !bg.wait_for_file(&m.join("probed"), Duration::from_secs(300)) {
        return Err(early(
            &mut bg,
            "the confined command did not finish its burst within 300 s",
        ));
    }
    bg.signal(libc::SIGCONT);
    // gate drains the buffer and writes the gap; then the command goes on.
    let drained = wait_until(Duration::from_secs(120), || {
        Log::read(&opts.log).lines.iter().any(|v| kind(v) == "gap")
    });
    if !drained {
        let log = Log::read(&opts.log);
        return Err(early(
            &mut bg,
            "expected a gap record in the log within 120 s after gate was continued, found none",
        )
        .log(&opts.log, &log));
    }
    release(&m.join("again"))?;
    let out = bg.finish();
    let log = Log::read(&opts.log);
    Ok(Outcome {
        log,
        log_path: opts.log.clone(),
        cmd,
        out,
        pubkey: key.with_extension("pub"),
    })
}

/// Opens a FIFO the confined shell is blocked reading and writes a line.
fn release(fifo: &Path) -> Result<(), Failure> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(fifo)
        .or_fail(&format!("open {}", fifo.display()))?;
    f.write_all(b"go\n").or_fail("write fifo")
}

fn kind(v: &Value) -> &str {
    v.get("kind").and_then(Value::as_str).unwrap_or("")
}

/// Every event the command asked for is in the log or counted by a gap record; the gaps are
/// signed (`gate audit verify` passes and reports them); recording resumed after the drain.
/// Returns the number lost.
fn account(ctx: &Ctx, o: &Outcome) -> Result<u64, Failure> {
    let decisions = o.log.decisions().count() as u64;
    let lost: u64 = o
        .log
        .lines
        .iter()
        .filter(|v| kind(v) == "gap")
        .filter_map(|v| v.get("lost").and_then(Value::as_u64))
        .sum();
    let burst_logged = o.log.find(&ev("write", "deny").rule("ssh-write")).is_some();
    if lost < BURST - 100 {
        return Err(Failure::new(format!(
            "expected at least {} events reported lost (a 64 KiB buffer holds about 58), gap records say {lost}",
            BURST - 100
        )));
    }
    if decisions + lost != WANTED {
        return Err(Failure::new(format!(
            "expected decision records + lost events = {WANTED} (every event accounted for), \
             got {decisions} + {lost} = {}",
            decisions + lost
        )));
    }
    if !burst_logged {
        return Err(Failure::new(
            "expected the first denials of the burst (those that fit in the buffer) in the log",
        ));
    }
    if o.log
        .find(
            &ev("write", "allow")
                .rule("audited")
                .path_suffix("/audited/drained"),
        )
        .is_none()
    {
        return Err(Failure::new(
            "expected the audited write made after the drain in the log: recording did not resume",
        ));
    }
    let verify = Cmd::new(&[
        ctx.gate.display().to_string(),
        "audit".into(),
        "verify".into(),
        o.log_path.display().to_string(),
        "--pubkey".into(),
        o.pubkey.display().to_string(),
    ]);
    let v = verify.run();
    let said = format!("{lost} events lost");
    if v.status != Status::Exited(0) || !v.stdout.contains(&said) {
        return Err(Failure::new(format!(
            "expected `gate audit verify` to pass and report {said:?}, got {}",
            v.summary()
        ))
        .command(&verify, &v));
    }
    Ok(lost)
}
