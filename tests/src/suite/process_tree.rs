//! The confined process tree: descendants, nested cgroups, escape attempts, and processes
//! outside the tree while a run is active.

use std::time::Duration;

use super::single::setup;
use super::{Ctx, Failure, Notes, OrFail, TestFn, TestResult};
use crate::outcome::Expect;
use crate::run::wait_until;

pub fn tests() -> Vec<(&'static str, TestFn)> {
    vec![
        ("tree/grandchildren-stay-confined", grandchildren),
        ("tree/background-child-stays-confined", background_child),
        ("tree/nested-cgroup-stays-confined", nested_cgroup),
        ("tree/move-to-root-cgroup-does-not-escape", escape_to_root),
        ("tree/unconfined-processes-untouched-during-run", unconfined_untouched),
    ]
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

fn grandchildren(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let s = setup(ctx, "tree", "grandchildren", "base")?;
    let script = format!("sh -c 'sh -c \"{} open-write {}\"'", s.probe, key(ctx));
    ctx.expect_gate(&s.opts, &sh(&script), &eperm(), None)
}

fn background_child(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let s = setup(ctx, "tree", "background", "base")?;
    let script = format!("( sleep 0.2; exec {} open-write {} ) & wait $!", s.probe, key(ctx));
    ctx.expect_gate(&s.opts, &sh(&script), &eperm(), None)
}

/// Shell that prints the cgroup v2 directory of the shell itself into `$cg`.
fn cg_script(ctx: &Ctx) -> String {
    format!("cg={}$(sed -n 's/^0:://p' /proc/self/cgroup)", ctx.env.cgroup_root.display())
}

fn nested_cgroup(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let s = setup(ctx, "tree", "nested-cgroup", "base")?;
    // Moves itself into a child cgroup of its own, checks that it is there, then probes.
    let script = format!(
        "{cg}; mkdir \"$cg/gate-tests-nested\" && echo $$ > \"$cg/gate-tests-nested/cgroup.procs\" && \
         grep -q '^0::.*/gate-tests-nested$' /proc/self/cgroup && echo moved=\"$cg/gate-tests-nested\" && \
         exec {probe} open-write {key}",
        cg = cg_script(ctx),
        probe = s.probe,
        key = key(ctx)
    );
    let cmd = ctx.gate_cmd(&s.opts, &sh(&script));
    let out = cmd.run();
    if !out.stdout.contains("moved=") {
        return Err(Failure::new(format!("setup: the confined shell could not move into a nested cgroup ({})", out.summary()))
            .command(&cmd, &out));
    }
    if !eperm().matches(&out) {
        return Err(Failure::new(format!("expected EPERM after moving to a nested cgroup, got {}", out.summary()))
            .command(&cmd, &out));
    }
    // gate removes its cgroup afterwards, nested ones included.
    let moved = out.stdout.lines().find_map(|l| l.strip_prefix("moved=")).unwrap_or_default();
    let parent = std::path::Path::new(moved).parent().map(|p| p.to_path_buf());
    if let Some(p) = parent.filter(|p| p.exists()) {
        return Err(Failure::new(format!(
            "expected gate to remove its cgroup {} (with the nested one) after the run, it still exists",
            p.display()
        ))
        .command(&cmd, &out));
    }
    Ok(())
}

fn escape_to_root(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    let s = setup(ctx, "tree", "escape-root", "base")?;
    // base.toml allows writes outside ~/.ssh, so the only thing between the shell and the root
    // cgroup is gate. Either the move fails or the process stays confined afterwards.
    let root = ctx.env.cgroup_root.display();
    let script = format!(
        "if echo $$ > {root}/cgroup.procs; then echo moved; else echo move-failed; fi; cat /proc/self/cgroup; \
         exec {probe} open-write {key}",
        probe = s.probe,
        key = key(ctx)
    );
    let cmd = ctx.gate_cmd(&s.opts, &sh(&script));
    let out = cmd.run();
    // If the shell did get out, put nothing else at risk: it has exited already.
    if !eperm().matches(&out) {
        let how = if out.stdout.contains("moved") && !out.stdout.contains("move-failed") {
            "the confined shell moved itself into the root cgroup and was no longer confined"
        } else {
            "unexpected result"
        };
        return Err(Failure::new(format!("expected EPERM, got {} ({how})", out.summary())).command(&cmd, &out));
    }
    notes.push(if out.stdout.contains("move-failed") {
        "moving to the root cgroup was refused".into()
    } else {
        "the move to the root cgroup succeeded, yet the process stayed confined".into()
    });
    Ok(())
}

/// Waits for a file the confined side creates.
fn wait_file(p: &std::path::Path, secs: u64) -> bool {
    wait_until(Duration::from_secs(secs), || p.exists())
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
    if !wait_file(&ready, 60) {
        let o = bg.wait(Duration::from_secs(1));
        return Err(Failure::new("setup: the confined command never started").command(&gate_cmd, &o));
    }

    // Outside the tree: the same write works, also from a freshly created cgroup of its own.
    let plain = ctx.plain_cmd(&[s.probe.clone(), "open-write".into(), key(ctx)], &s.ws);
    let o = plain.run();
    if !Expect::Ok.matches(&o) {
        return Err(Failure::new(format!("expected ok outside gate during a run, got {}", o.summary()))
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
        return Err(Failure::new(format!("expected EPERM from the confined side, got {}", out.summary()))
            .command(&gate_cmd, &out));
    }
    Ok(())
}
