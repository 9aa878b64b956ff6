//! Processes outside the confined tree while a run is active. (Descendants, nested cgroups and
//! escape attempts inside the tree are in tests/scenarios/process-tree.toml.)

use std::time::Duration;

use super::single::setup;
use super::{Ctx, Failure, Notes, OrFail, TestFn, TestResult};
use crate::outcome::Expect;

pub fn tests() -> Vec<(&'static str, TestFn)> {
    vec![(
        "tree/unconfined-processes-untouched-during-run",
        unconfined_untouched,
    )]
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

fn key(ctx: &Ctx) -> String {
    format!("{}/.ssh/id_rsa", ctx.home())
}

fn eperm() -> Expect {
    Expect::Errno("EPERM".into())
}

fn unconfined_untouched(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let s = setup(ctx, "tree", "unconfined", "base")?;
    let ready = s.dir.join("ready");
    let go = s.dir.join("go");
    // The confined side signals that it runs, waits, then proves it is still confined.
    let script = format!(
        "touch {ready}; while [ ! -e {go} ]; do sleep 0.1; done; exec {probe} open-write {key}",
        ready = ready.display(),
        go = go.display(),
        probe = s.probe,
        key = key(ctx)
    );
    let _ = std::fs::remove_file(&s.opts.log);
    let gate_cmd = ctx.gate_cmd(&s.opts, &sh(&script));
    let mut bg = gate_cmd.spawn()?;
    if !bg.wait_for_file(&ready, Duration::from_secs(super::GATE_RUN_TIMEOUT)) {
        let o = bg.wait(Duration::from_secs(1));
        return Err(
            Failure::new("setup: the confined command never started").command(&gate_cmd, &o)
        );
    }

    // Outside the tree: the same write works, also from a freshly created cgroup of its own.
    let plain = ctx.plain_cmd(&[s.probe.clone(), "open-write".into(), key(ctx)], &s.ws);
    let o = plain.run();
    if !Expect::Ok.matches(&o) {
        return Err(Failure::new(format!(
            "expected ok outside gate during a run, got {}",
            o.summary()
        ))
        .command(&plain, &o));
    }
    let own_cg = ctx.env.cgroup_root.join("gate-tests-unconfined");
    let _ = std::fs::remove_dir(&own_cg);
    let script2 = format!(
        "mkdir -p {d} && echo $$ > {d}/cgroup.procs && grep -q gate-tests-unconfined /proc/self/cgroup && \
         {probe} open-write {key}; rc=$?; echo $$ > {root}/cgroup.procs; exit $rc",
        d = own_cg.display(),
        root = ctx.env.cgroup_root.display(),
        probe = s.probe,
        key = key(ctx)
    );
    let nested = ctx.plain_cmd(&sh(&script2), &s.ws);
    let o2 = nested.run();
    let _ = std::fs::remove_dir(&own_cg);
    if !Expect::Ok.matches(&o2) {
        return Err(Failure::new(format!(
            "expected ok for an unconfined process in a new cgroup during a run, got {}",
            o2.summary()
        ))
        .command(&nested, &o2));
    }

    // And the run itself was enforcing all along.
    std::fs::write(&go, "").or_fail("create go file")?;
    let out = bg.finish();
    if !eperm().matches(&out) {
        return Err(Failure::new(format!(
            "expected EPERM from the confined side, got {}",
            out.summary()
        ))
        .command(&gate_cmd, &out));
    }
    Ok(())
}
