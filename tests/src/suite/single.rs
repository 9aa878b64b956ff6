//! Tests of one `gate run` each: exit status, policy errors, the cgroup, the fields of an event.
//! They use `tests/scenarios/policies/base.toml`: everything allowed except writes and reads
//! under ~/.ssh, exec of SCRATCH/tools/denied-tool, and connects to documentation prefixes.
//! (Decisions and events of each kind are scenarios: tests/scenarios/events.toml and others.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Ctx, Failure, GateOpts, Notes, OrFail, TestFn, TestResult};
use crate::env::cgroup_path;
use crate::events::{Log, ev};
use crate::outcome::{Expect, Status};

pub fn tests() -> Vec<(&'static str, TestFn)> {
    vec![
        ("exit/command-status-passed-through", exit_status),
        ("exit/killed-by-signal-is-128-plus-signal", exit_signal),
        (
            "exit/policy-syntax-error-is-125-with-location",
            policy_syntax_error,
        ),
        ("exit/policy-unknown-op-is-125", policy_semantic_error),
        ("exit/policy-missing-is-125", policy_missing),
        (
            "cgroup/fresh-cgroup-removed-afterwards-nested-too",
            fresh_cgroup,
        ),
        ("events/decision-fields", event_fields),
    ]
}

/// A workspace with the probe in it, and options for a `gate run` under `base.toml`.
pub struct Setup {
    pub dir: PathBuf,
    pub ws: PathBuf,
    pub probe: String,
    pub opts: GateOpts,
}

pub fn setup(ctx: &Ctx, group: &str, name: &str, policy: &str) -> Result<Setup, Failure> {
    let dir = ctx.fresh_dir(group, name)?;
    let ws = dir.join("ws");
    let probe = ctx.install_probe(&ws)?.display().to_string();
    let opts = GateOpts {
        policy: ctx.test_policy(policy),
        workspace: ws.clone(),
        log: dir.join("log.jsonl"),
        mode: None,
        timeout: Duration::from_secs(super::GATE_RUN_TIMEOUT),
        user: None,
        extra: Vec::new(),
    };
    Ok(Setup {
        dir,
        ws,
        probe,
        opts,
    })
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

impl Setup {
    pub fn probe(&self, args: &[&str]) -> Vec<String> {
        std::iter::once(self.probe.clone())
            .chain(args.iter().map(|s| s.to_string()))
            .collect()
    }
}

fn ssh_key(ctx: &Ctx) -> String {
    format!("{}/.ssh/id_rsa", ctx.home())
}

fn exit_status(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let s = setup(ctx, "single", "exit-status", "base")?;
    ctx.expect_gate(&s.opts, &sh("exit 7"), &Expect::Exit(7), None)
}

fn exit_signal(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let s = setup(ctx, "single", "exit-signal", "base")?;
    ctx.expect_gate(&s.opts, &sh("kill -TERM $$"), &Expect::Exit(128 + 15), None)
}

/// Runs gate with a broken policy; requires 125, a message naming `must_mention`, and that the
/// command did not run.
fn expect_gate_fails(ctx: &Ctx, s: &Setup, policy: &Path, must_mention: &str) -> TestResult {
    let marker = s.dir.join("command-ran");
    let mut opts = s.opts.clone();
    opts.policy = policy.to_path_buf();
    let cmd = ctx.gate_cmd(&opts, &sh(&format!("touch {}", marker.display())));
    let out = cmd.run();
    if out.status != Status::Exited(125) {
        return Err(
            Failure::new(format!("expected exit:125, got {}", out.summary())).command(&cmd, &out),
        );
    }
    if !out.stderr.contains(must_mention) {
        return Err(
            Failure::new(format!("expected stderr to mention {must_mention:?}"))
                .command(&cmd, &out),
        );
    }
    if marker.exists() {
        return Err(Failure::new("expected the command not to run, but it did").command(&cmd, &out));
    }
    Ok(())
}

fn policy_syntax_error(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let s = setup(ctx, "single", "policy-syntax", "base")?;
    let bad = s.dir.join("broken.toml");
    // Line 4 has the error: a table header without its closing bracket.
    let text = "version = 1\nname = \"broken\"\nmode = \"enforce\"\n[default\nexec = \"allow\"\n";
    std::fs::write(&bad, text).or_fail("write policy")?;
    let path = bad.display().to_string();
    expect_gate_fails(ctx, &s, &bad, &format!("{path}:4:"))?;
    // The column follows the line: file:line:column.
    let cmd = ctx.gate_cmd(
        &GateOpts {
            policy: bad.clone(),
            ..s.opts.clone()
        },
        &sh("true"),
    );
    let out = cmd.run();
    let after = out.stderr.split(&format!("{path}:4:")).nth(1).unwrap_or("");
    if !after.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(Failure::new(format!("expected {path}:4:COLUMN on stderr")).command(&cmd, &out));
    }
    Ok(())
}

fn policy_semantic_error(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let s = setup(ctx, "single", "policy-semantic", "base")?;
    let bad = s.dir.join("unknown-op.toml");
    let text = "version = 1\nname = \"unknown-op\"\nmode = \"enforce\"\n\n[default]\nexec = \"allow\"\n\
                write = \"allow\"\nread = \"allow\"\nconnect = \"allow\"\n\n[[rule]]\nid = \"x\"\n\
                op = \"teleport\"\npath = [\"/tmp\"]\ndecision = \"deny\"\n";
    std::fs::write(&bad, text).or_fail("write policy")?;
    expect_gate_fails(ctx, &s, &bad, &bad.display().to_string())
}

fn policy_missing(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let s = setup(ctx, "single", "policy-missing", "base")?;
    let missing = s.dir.join("no-such-policy.toml");
    expect_gate_fails(ctx, &s, &missing, "no-such-policy.toml")
}

fn own_cgroup() -> Result<String, Failure> {
    let text = std::fs::read_to_string("/proc/self/cgroup").or_fail("read /proc/self/cgroup")?;
    cgroup_path(&text).ok_or_else(|| Failure::new("setup: no cgroup v2 line in /proc/self/cgroup"))
}

fn fresh_cgroup(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let s = setup(ctx, "single", "cgroup", "base")?;
    let mine = own_cgroup()?;
    // The command moves itself into a cgroup below gate's, which gate must remove too.
    let script = format!(
        "cg={}$(sed -n 's/^0:://p' /proc/self/cgroup); mkdir \"$cg/gate-tests-nested\" && \
         echo $$ > \"$cg/gate-tests-nested/cgroup.procs\" && cat /proc/self/cgroup",
        ctx.env.cgroup_root.display()
    );
    let cmd = ctx.gate_cmd(&s.opts, &sh(&script));
    let out = cmd.run();
    if out.status != Status::Exited(0) {
        return Err(
            Failure::new(format!("expected exit:0, got {}", out.summary())).command(&cmd, &out),
        );
    }
    let Some(theirs) = cgroup_path(&out.stdout) else {
        return Err(Failure::new("expected a 0:: line from /proc/self/cgroup").command(&cmd, &out));
    };
    let Some(gates) = theirs.strip_suffix("/gate-tests-nested") else {
        return Err(Failure::new(format!(
            "expected the command in gate-tests-nested, got {theirs}"
        ))
        .command(&cmd, &out));
    };
    if gates == mine || mine.starts_with(&format!("{gates}/")) || gates.is_empty() {
        return Err(Failure::new(format!(
            "expected the command in a new cgroup, got {gates} (the runner is in {mine})"
        ))
        .command(&cmd, &out));
    }
    let dir = ctx.env.cgroup_root.join(gates.trim_start_matches('/'));
    if dir.exists() {
        return Err(Failure::new(format!(
            "expected {} to be removed after gate exited, it still exists",
            dir.display()
        ))
        .command(&cmd, &out));
    }
    Ok(())
}
fn event_fields(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let s = setup(ctx, "single", "ev-fields", "base")?;
    let key = ssh_key(ctx);
    // sh runs the probe as a child, so the probe's ppid is the shell's pid.
    let script = format!("echo shell=$$; {} open-write {key}; true", s.probe);
    let cmd = ctx.gate_cmd(&s.opts, &sh(&script));
    let _ = std::fs::remove_file(&s.opts.log);
    let out = cmd.run();
    let log = Log::read(&s.opts.log);
    let fail = |msg: String| Failure::new(msg).command(&cmd, &out).log(&s.opts.log, &log);
    let Some(e) = log.find(&ev("write", "deny").path(&key)) else {
        return Err(fail("expected a deny event for the write".into()));
    };
    let shell_pid: Option<u64> = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("shell="))
        .and_then(|p| p.trim().parse().ok());
    let num = |k: &str| e.get(k).and_then(serde_json::Value::as_u64);
    if num("pid").is_none_or(|p| p == 0) {
        return Err(fail(format!("expected a nonzero pid in {e}")));
    }
    if num("ppid") != shell_pid {
        return Err(fail(format!(
            "expected ppid {shell_pid:?} (the shell), got {:?}",
            num("ppid")
        )));
    }
    if num("uid") != Some(0) {
        return Err(fail(format!("expected uid 0, got {:?}", e.get("uid"))));
    }
    if e.get("comm").and_then(|c| c.as_str()) != Some("gate-probe") {
        return Err(fail(format!(
            "expected comm \"gate-probe\", got {:?}",
            e.get("comm")
        )));
    }
    Ok(())
}
