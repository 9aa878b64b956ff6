//! Runs `tests/scenarios/*.toml`: each step is one test named `scenario/<file>/<step>`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Ctx, Failure, GateOpts, Reporter, SCRATCH, TestResult};
use crate::outcome::Expect;
use crate::run::{Background, Cmd};
use crate::scenario::{self, Scenario};
use crate::subst::Vars;

pub fn run_all(ctx: &Ctx, rep: &mut Reporter) {
    let dir = ctx.repo.join("tests/scenarios");
    let files = match scenario::list(&dir) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            rep.record("scenarios", Err(Failure::new(format!("no scenarios in {}", dir.display()))));
            return;
        }
        Err(e) => {
            rep.record("scenarios", Err(Failure::new(e)));
            return;
        }
    };
    for f in files {
        match Scenario::load(&f) {
            Ok(s) => run_scenario(ctx, rep, &s),
            Err(e) => {
                let name = format!("scenario/{}", f.file_stem().unwrap_or_default().to_string_lossy());
                if rep.wants(&name) {
                    rep.record(&name, Err(Failure::new(format!("invalid scenario: {e}"))));
                }
            }
        }
    }
}

fn step_name(s: &Scenario, step: &str) -> String {
    format!("scenario/{}/{}", s.name, step)
}

/// The variables of a scenario run.
fn vars(ctx: &Ctx, s: &Scenario) -> Result<(Vars, PathBuf, PathBuf, PathBuf), Failure> {
    let scratch = Path::new(SCRATCH).join("scn").join(&s.name);
    let mut v = Vars::new();
    v.set("home", ctx.home())
        .set("repo", ctx.repo.display().to_string())
        .set("scratch", scratch.display().to_string())
        .set("cgroup", ctx.env.cgroup_root.display().to_string());
    let ws = PathBuf::from(v.expand(&s.workspace, true)?);
    v.set("workspace", ws.display().to_string());
    let probe_dir = match &s.probe_dir {
        Some(d) => PathBuf::from(v.expand(d, true)?),
        None => ws.clone(),
    };
    let probe = probe_dir.join("gate-probe");
    v.set("probe", probe.display().to_string());
    Ok((v, scratch, ws, probe_dir))
}

/// Runs shell commands unconfined, in order; the first failure stops them.
fn run_shell_list(ctx: &Ctx, what: &str, cmds: &[String], vars: &Vars, cwd: &Path) -> TestResult {
    for c in cmds {
        let script = vars.expand(c, false)?;
        let cmd = ctx.plain_cmd(&["/bin/sh".into(), "-c".into(), script], cwd);
        let out = cmd.run();
        if out.code() != Some(0) {
            return Err(Failure::new(format!("{what} failed: {}", out.summary())).command(&cmd, &out));
        }
    }
    Ok(())
}

fn start_listeners(ctx: &Ctx, s: &Scenario, probe: &Path, cwd: &Path) -> Result<Vec<Background>, Failure> {
    let mut out = Vec::new();
    for l in &s.listen {
        let argv = [probe.display().to_string(), "listen".into(), l.addr.clone(), l.port.to_string(), "3600".into()];
        let cmd = ctx.plain_cmd(&argv, cwd);
        let mut bg = cmd.spawn()?;
        if !bg.wait_for_stdout("listening", Duration::from_secs(30)) {
            let o = bg.wait(Duration::from_secs(1));
            return Err(Failure::new(format!("listener {}:{} did not start", l.addr, l.port)).command(&cmd, &o));
        }
        out.push(bg);
    }
    Ok(out)
}

fn run_scenario(ctx: &Ctx, rep: &mut Reporter, s: &Scenario) {
    let wanted: Vec<usize> =
        (0..s.steps.len()).filter(|&i| rep.wants(&step_name(s, &s.steps[i].name))).collect();
    if wanted.is_empty() {
        return;
    }
    let prepared = prepare(ctx, s);
    let (vars, scratch, ws, _listeners) = match prepared {
        Ok(p) => p,
        Err(f) => {
            for &i in &wanted {
                let f2 = Failure { summary: f.summary.clone(), details: f.details.clone() };
                rep.record(&step_name(s, &s.steps[i].name), Err(f2));
            }
            teardown(ctx, s);
            return;
        }
    };
    let policy = ctx.repo.join(&s.policy);
    for &i in &wanted {
        let step = &s.steps[i];
        let log = scratch.join("logs").join(format!("{i:02}.jsonl"));
        let opts = GateOpts {
            policy: policy.clone(),
            workspace: ws.clone(),
            log,
            mode: s.mode.map(|m| m.as_str().to_string()),
            timeout: Duration::from_secs(step.timeout.unwrap_or(120)),
        };
        let r = run_step(ctx, step, &vars, &opts);
        rep.record(&step_name(s, &step.name), r);
    }
    drop(_listeners);
    teardown(ctx, s);
}

type Prepared = (Vars, PathBuf, PathBuf, Vec<Background>);

fn prepare(ctx: &Ctx, s: &Scenario) -> Result<Prepared, Failure> {
    let (vars, scratch, ws, probe_dir) = vars(ctx, s)?;
    let policy = ctx.repo.join(&s.policy);
    if !policy.is_file() {
        return Err(Failure::new(format!("policy {} does not exist", policy.display())));
    }
    super::remove_tree(&scratch);
    super::remove_tree(&ws);
    for d in [&scratch.join("logs"), &ws] {
        std::fs::create_dir_all(d).map_err(|e| Failure::new(format!("setup: mkdir {}: {e}", d.display())))?;
    }
    ctx.install_probe(&probe_dir)?;
    run_shell_list(ctx, "setup", &s.setup, &vars, &ws)?;
    let listeners = start_listeners(ctx, s, &probe_dir.join("gate-probe"), &ws)?;
    Ok((vars, scratch, ws, listeners))
}

fn teardown(ctx: &Ctx, s: &Scenario) {
    if let Ok((vars, _, ws, _)) = vars(ctx, s) {
        let cwd = if ws.is_dir() { ws } else { PathBuf::from("/") };
        for c in &s.teardown {
            // Teardown is best effort: every command runs; failures are printed, not counted.
            if let Err(f) = run_shell_list(ctx, "teardown", std::slice::from_ref(c), &vars, &cwd) {
                println!("    note: scenario {} teardown: {}", s.name, f.summary);
            }
        }
    }
}

fn run_step(ctx: &Ctx, step: &scenario::Step, vars: &Vars, opts: &GateOpts) -> TestResult {
    let probe = vars.get("probe").unwrap_or_default().to_string();
    let action = step.action(vars)?;
    let argv = action.argv(&probe);
    let event = match &step.expect_event {
        Some(m) => Some(m.expand(vars)?),
        None => None,
    };
    ctx.expect_gate(opts, &argv, &step.expect, event.as_ref())?;
    if step.unconfined {
        let cmd: Cmd = ctx.plain_cmd(&argv, &opts.workspace).timeout(opts.timeout);
        let out = cmd.run();
        if !Expect::Ok.matches(&out) {
            return Err(Failure::new(format!(
                "confined run was right, but outside gate expected ok, got {}",
                out.summary()
            ))
            .command(&cmd, &out));
        }
    }
    Ok(())
}

/// Lists the step names of every scenario (invalid ones by file name).
pub fn list(repo: &Path, rep: &mut Reporter) {
    let Ok(files) = scenario::list(&repo.join("tests/scenarios")) else { return };
    for f in files {
        match Scenario::load(&f) {
            Ok(s) => {
                for step in &s.steps {
                    rep.wants(&step_name(&s, &step.name));
                }
            }
            Err(e) => println!("invalid scenario: {e}"),
        }
    }
}
