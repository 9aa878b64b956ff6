//! Runs that overlap and runs whose gate dies.

use std::path::Path;
use std::time::Duration;

use super::single::setup;
use super::{Ctx, Failure, GateOpts, Notes, OrFail, SCRATCH, TestFn, TestResult};
use crate::events::{Log, ev};
use crate::run::wait_until;

pub fn tests() -> Vec<(&'static str, TestFn)> {
    vec![
        ("concurrent/two-runs-keep-their-own-policies", two_policies),
        (
            "lifecycle/kill-9-of-gate-never-lets-the-write-through",
            kill_gate,
        ),
    ]
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// Two runs at once: A (concurrent-a.toml) denies writes under SCRATCH/concurrent/b and allows
/// SCRATCH/concurrent/a; B the opposite. Both probe both files while both are alive.
fn two_policies(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let base = Path::new(SCRATCH).join("concurrent");
    super::remove_tree(&base);
    let marks = base.join("marks");
    for d in [base.join("a"), base.join("b"), marks.clone()] {
        std::fs::create_dir_all(&d).or_fail("mkdir")?;
    }
    let fa = base.join("a/file");
    let fb = base.join("b/file");
    std::fs::write(&fa, "a\n").or_fail("write a/file")?;
    std::fs::write(&fb, "b\n").or_fail("write b/file")?;
    let go = marks.join("go");
    let done = marks.join("done");

    let mut runs = Vec::new();
    for side in ["a", "b"] {
        let s = setup(ctx, "concurrent-runs", side, &format!("concurrent-{side}"))?;
        let script = format!(
            "touch {m}/ready-{side}; while [ ! -e {go} ]; do sleep 0.1; done; \
             echo A=$({p} open-write {fa}); echo B=$({p} open-write {fb}); \
             touch {m}/probed-{side}; while [ ! -e {done} ]; do sleep 0.1; done",
            m = marks.display(),
            go = go.display(),
            done = done.display(),
            p = s.probe,
            fa = fa.display(),
            fb = fb.display(),
        );
        let cmd = ctx.gate_cmd(&s.opts, &sh(&script));
        let bg = cmd.spawn()?;
        runs.push((side, s.opts.clone(), cmd, bg));
    }
    for (side, _, cmd, bg) in runs.iter_mut() {
        if !bg.wait_for_file(
            &marks.join(format!("ready-{side}")),
            Duration::from_secs(super::GATE_RUN_TIMEOUT),
        ) {
            let o = bg.wait(Duration::from_secs(1));
            return Err(Failure::new(format!("setup: run {side} never started")).command(cmd, &o));
        }
    }
    std::fs::write(&go, "").or_fail("create go")?;
    for (side, _, cmd, bg) in runs.iter_mut() {
        if !bg.wait_for_file(
            &marks.join(format!("probed-{side}")),
            Duration::from_secs(120),
        ) {
            let o = bg.wait(Duration::from_secs(1));
            return Err(
                Failure::new(format!("run {side} never finished its probes")).command(cmd, &o),
            );
        }
    }
    // Both probed while both were alive (each waits for `done`).
    for (side, _, cmd, bg) in runs.iter_mut() {
        if let Some(st) = bg.poll() {
            let o = bg.wait(Duration::from_secs(1));
            return Err(
                Failure::new(format!("setup: run {side} ended early ({st})")).command(cmd, &o),
            );
        }
    }
    std::fs::write(&done, "").or_fail("create done")?;
    for (side, opts, cmd, bg) in runs.iter_mut() {
        let out = bg.finish();
        let (want_a, want_b, rule) = match *side {
            "a" => ("A=ok", "B=errno=EPERM", "deny-b"),
            _ => ("A=errno=EPERM", "B=ok", "deny-a"),
        };
        let log_path = opts.log.clone();
        let log = Log::read(&log_path);
        if !(out.stdout.contains(want_a) && out.stdout.contains(want_b)) {
            return Err(Failure::new(format!(
                "run {side}: expected {want_a} and {want_b}, got {:?}",
                out.stdout
                    .lines()
                    .filter(|l| l.starts_with("A=") || l.starts_with("B="))
                    .collect::<Vec<_>>()
            ))
            .command(cmd, &out)
            .log(&log_path, &log));
        }
        if log.find(&ev("write", "deny").rule(rule)).is_none() {
            return Err(Failure::new(format!(
                "run {side}: expected a deny event of rule {rule} in its own log"
            ))
            .command(cmd, &out)
            .log(&log_path, &log));
        }
        let other = if *side == "a" { "deny-a" } else { "deny-b" };
        if log.find(&ev("write", "deny").rule(other)).is_some() {
            return Err(Failure::new(format!(
                "run {side}: its log has a decision of the other run's rule {other}"
            ))
            .command(cmd, &out)
            .log(&log_path, &log));
        }
    }
    Ok(())
}

fn kill_gate(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    let s = setup(ctx, "lifecycle", "kill-9", "base")?;
    let m = s.dir.join("m");
    std::fs::create_dir_all(&m).or_fail("mkdir marks")?;
    let key = format!("{}/.ssh/id_rsa", ctx.home());
    let script = format!(
        "echo $$ > {m}/pid.tmp && mv {m}/pid.tmp {m}/pid; sleep 2; {p} open-write {key} > {m}/out 2>&1; echo $? > {m}/result",
        m = m.display(),
        p = s.probe,
    );
    let opts = GateOpts {
        timeout: Duration::from_secs(super::GATE_RUN_TIMEOUT),
        ..s.opts.clone()
    };
    let cmd = ctx.gate_cmd(&opts, &sh(&script));
    let mut bg = cmd.spawn()?;
    if !bg.wait_for_file(&m.join("pid"), Duration::from_secs(super::GATE_RUN_TIMEOUT)) {
        let o = bg.wait(Duration::from_secs(1));
        return Err(Failure::new("setup: the confined shell never started").command(&cmd, &o));
    }
    let shell: i32 = std::fs::read_to_string(m.join("pid"))
        .or_fail("read pid")?
        .trim()
        .parse()
        .or_fail("parse pid")?;
    bg.signal(libc::SIGKILL);
    let gate_status = bg.wait(Duration::from_secs(10)).status;

    let result = m.join("result");
    let alive = |pid: i32| Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid);
    let settled = wait_until(Duration::from_secs(60), || result.exists() || !alive(shell));
    // Let a result being written land.
    std::thread::sleep(Duration::from_millis(200));
    let out = std::fs::read_to_string(m.join("out")).unwrap_or_default();
    let detail = |f: Failure| {
        f.detail(format!("command: {}", cmd.display()))
            .detail(format!("gate after SIGKILL: {gate_status}"))
            .detail(format!("probe output: {:?}", out.trim()))
    };
    if out.lines().any(|l| l.trim() == "ok") {
        return Err(detail(Failure::new(
            "expected EPERM or a killed tree, got ok: the write went through after gate died",
        )));
    }
    match std::fs::read_to_string(&result) {
        Ok(r) if r.trim() == "1" && out.contains("errno=EPERM") => {
            notes.push("the tree outlived gate and stayed confined".into());
            Ok(())
        }
        Ok(r) => Err(detail(Failure::new(format!(
            "expected the write to fail with EPERM (or the tree to be killed), got probe status {} ({})",
            r.trim(),
            out.trim()
        )))),
        Err(_) if settled => {
            notes.push("gate's death took the confined tree with it".into());
            Ok(())
        }
        Err(_) => Err(detail(Failure::new(format!(
            "expected the tree to finish or be killed within 60 s after gate died; shell {shell} still runs"
        )))),
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
