//! Runs `tests/scenarios/*.toml`: each step is one test named `scenario/<file>/<step>`, and each
//! `gate run` of a scenario is one more, `scenario/<file>/gate run N`, which checks that gate
//! started, ran the batch and exited cleanly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Ctx, Failure, GateOpts, Reporter, SCRATCH, TestResult};
use crate::driver::{self, Plan, PlanStep, StepResult};
use crate::events::Log;
use crate::outcome::{Expect, Outcome, Status};
use crate::run::{Background, Cmd};
use crate::scenario::{self, Scenario, Step};
use crate::subst::Vars;

/// Default time limit of one step.
const STEP_TIMEOUT: u64 = 120;
/// Time a `gate run` may take beyond its steps (loading programs in a TCG guest is slow).
const GATE_OVERHEAD: u64 = 600;

pub fn run_all(ctx: &Ctx, rep: &mut Reporter) {
    let dir = ctx.repo.join("tests/scenarios");
    let files = match scenario::list(&dir) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            rep.record(
                "scenarios",
                Err(Failure::new(format!("no scenarios in {}", dir.display()))),
            );
            return;
        }
        Err(e) => {
            rep.record("scenarios", Err(Failure::new(e)));
            return;
        }
    };
    for f in files {
        match Scenario::load(&f) {
            // Through the daemon a command runs as its caller: scenarios of another user run
            // with `gate run --user` only.
            Ok(s) if s.user.is_some() && ctx.via_daemon.is_some() => {}
            // Once per kernel: the pass through the daemon runs this one.
            Ok(s) if s.user.is_none() && ctx.via_daemon.is_none() && ctx.scenarios_once => {}
            Ok(s) => run_scenario(ctx, rep, &s),
            Err(e) => {
                let name = format!(
                    "{}/{}",
                    ctx.scenario_prefix(),
                    f.file_stem().unwrap_or_default().to_string_lossy()
                );
                if rep.wants(&name) {
                    rep.record(&name, Err(Failure::new(format!("invalid scenario: {e}"))));
                }
            }
        }
    }
}

/// Whether the filters select any step of any scenario under `ctx`'s prefix.
pub fn any_selected(ctx: &Ctx, rep: &Reporter) -> bool {
    let Ok(files) = scenario::list(&ctx.repo.join("tests/scenarios")) else {
        return false;
    };
    files
        .iter()
        .filter_map(|f| Scenario::load(f).ok())
        .any(|s| {
            s.steps
                .iter()
                .any(|step| rep.selected(&step_name(ctx, &s, &step.name)))
        })
}

/// Lists the step names of every scenario (invalid ones by file name).
pub fn list(repo: &Path, rep: &mut Reporter) {
    let Ok(files) = scenario::list(&repo.join("tests/scenarios")) else {
        return;
    };
    for f in files {
        match Scenario::load(&f) {
            Ok(s) => {
                for step in &s.steps {
                    rep.wants(&format!("scenario/{}/{}", s.name, step.name));
                }
            }
            Err(e) => println!("invalid scenario: {e}"),
        }
    }
}

fn step_name(ctx: &Ctx, s: &Scenario, step: &str) -> String {
    format!("{}/{}/{}", ctx.scenario_prefix(), s.name, step)
}

/// Paths and variables of one scenario run.
struct Layout {
    vars: Vars,
    scratch: PathBuf,
    ws: PathBuf,
    probe_dir: PathBuf,
}

impl Layout {
    fn new(ctx: &Ctx, s: &Scenario) -> Result<Self, Failure> {
        let scratch = Path::new(SCRATCH).join("scn").join(&s.name);
        let mut v = Vars::new();
        v.set("home", ctx.home())
            .set("repo", ctx.repo.display().to_string())
            .set("gate", ctx.gate.display().to_string())
            .set("audit_key", ctx.audit_key().display().to_string())
            .set("audit_log", ctx.audit_log(&scratch).display().to_string())
            .set("scratch", scratch.display().to_string())
            .set("cgroup", ctx.env.cgroup_root.display().to_string());
        let ws = PathBuf::from(v.expand(&s.workspace, true)?);
        v.set("workspace", ws.display().to_string());
        let probe_dir = match &s.probe_dir {
            Some(d) => PathBuf::from(v.expand(d, true)?),
            None => ws.clone(),
        };
        v.set("probe", probe_dir.join("gate-probe").display().to_string());
        Ok(Self {
            vars: v,
            scratch,
            ws,
            probe_dir,
        })
    }

    fn driver(&self) -> PathBuf {
        self.probe_dir.join("gate-tests-driver")
    }
}

/// Runs shell commands unconfined, in order; the first failure stops them.
fn run_shell_list(ctx: &Ctx, what: &str, cmds: &[String], vars: &Vars, cwd: &Path) -> TestResult {
    for c in cmds {
        let script = vars.expand(c, false)?;
        let cmd = ctx.plain_cmd(&["/bin/sh".into(), "-c".into(), script], cwd);
        let out = cmd.run();
        if out.code() != Some(0) {
            return Err(
                Failure::new(format!("{what} failed: {}", out.summary())).command(&cmd, &out)
            );
        }
    }
    Ok(())
}

fn start_listeners(ctx: &Ctx, s: &Scenario, l: &Layout) -> Result<Vec<Background>, Failure> {
    let mut out = Vec::new();
    for li in &s.listen {
        let probe = l.vars.get("probe").unwrap_or_default().to_string();
        let argv = [
            probe,
            "listen".into(),
            li.addr.clone(),
            li.port.to_string(),
            "3600".into(),
        ];
        let cmd = ctx.plain_cmd(&argv, &l.ws);
        let mut bg = cmd.spawn()?;
        if !bg.wait_for_stdout("listening", Duration::from_secs(30)) {
            let o = bg.wait(Duration::from_secs(1));
            return Err(Failure::new(format!(
                "setup: listener {}:{} did not start",
                li.addr, li.port
            ))
            .command(&cmd, &o));
        }
        out.push(bg);
    }
    Ok(out)
}

fn prepare(ctx: &Ctx, s: &Scenario, l: &Layout) -> Result<Vec<Background>, Failure> {
    let policy = ctx.repo.join(&s.policy);
    if !policy.is_file() {
        return Err(Failure::new(format!(
            "policy {} does not exist",
            policy.display()
        )));
    }
    super::remove_tree(&l.scratch);
    super::remove_tree(&l.ws);
    for d in [&l.scratch.join("logs"), &l.ws] {
        std::fs::create_dir_all(d)
            .map_err(|e| Failure::new(format!("setup: mkdir {}: {e}", d.display())))?;
    }
    ctx.install_probe(&l.probe_dir)?;
    // The driver is this very program; policies that only allow exec from the workspace allow
    // the copy next to the probe.
    let me =
        std::env::current_exe().map_err(|e| Failure::new(format!("setup: current_exe: {e}")))?;
    std::fs::copy(&me, l.driver()).map_err(|e| Failure::new(format!("setup: copy driver: {e}")))?;
    run_shell_list(ctx, "setup", &s.setup, &l.vars, &l.ws)?;
    start_listeners(ctx, s, l)
}

fn teardown(ctx: &Ctx, s: &Scenario, l: &Layout) {
    let cwd = if l.ws.is_dir() {
        l.ws.clone()
    } else {
        PathBuf::from("/")
    };
    for c in &s.teardown {
        // Best effort: every command runs; failures are noted, not counted.
        if let Err(f) = run_shell_list(ctx, "teardown", std::slice::from_ref(c), &l.vars, &cwd) {
            println!("    note: scenario {} teardown: {}", s.name, f.summary);
        }
    }
}

fn run_scenario(ctx: &Ctx, rep: &mut Reporter, s: &Scenario) {
    let wanted: Vec<usize> = (0..s.steps.len())
        .filter(|&i| rep.wants(&step_name(ctx, s, &s.steps[i].name)))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let layout = match Layout::new(ctx, s) {
        Ok(l) => l,
        Err(f) => {
            rep.record(&format!("{}/{}", ctx.scenario_prefix(), s.name), Err(f));
            return;
        }
    };
    let listeners = match prepare(ctx, s, &layout) {
        Ok(l) => l,
        Err(f) => {
            for &i in &wanted {
                let f2 = Failure {
                    summary: f.summary.clone(),
                    details: f.details.clone(),
                };
                rep.record(&step_name(ctx, s, &s.steps[i].name), Err(f2));
            }
            teardown(ctx, s, &layout);
            return;
        }
    };
    // Consecutive wanted steps share a `gate run` unless a step asks for a new one.
    let isolate = s.isolate || ctx.isolate;
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &i in &wanted {
        let fresh = groups.is_empty() || isolate || s.steps[i].new_run;
        if fresh {
            groups.push(vec![i]);
        } else if let Some(g) = groups.last_mut() {
            g.push(i);
        }
    }
    for (k, group) in groups.iter().enumerate() {
        run_group(ctx, rep, s, &layout, k + 1, group);
    }
    drop(listeners);
    teardown(ctx, s, &layout);
}

fn step_argv(step: &Step, vars: &Vars) -> Result<Vec<String>, String> {
    let probe = vars.get("probe").unwrap_or_default().to_string();
    Ok(step.action(vars)?.argv(&probe))
}

/// Runs some steps of a scenario in one `gate run`, and records their results.
fn run_group(ctx: &Ctx, rep: &mut Reporter, s: &Scenario, l: &Layout, k: usize, group: &[usize]) {
    let run_name = format!("{}/{}/gate run {k}", ctx.scenario_prefix(), s.name);
    let mut plan = Plan::default();
    let mut argvs = Vec::new();
    for &i in group {
        let step = &s.steps[i];
        let argv = step_argv(step, &l.vars).unwrap_or_else(|e| {
            vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("echo {e:?} >&2; exit 99"),
            ]
        });
        plan.steps.push(PlanStep {
            argv: argv.clone(),
            cwd: l.ws.clone(),
            timeout_secs: step.timeout.unwrap_or(STEP_TIMEOUT),
        });
        argvs.push(argv);
    }
    let plan_path = l.scratch.join(format!("plan-{k}.json"));
    let log = l.scratch.join("logs").join(format!("run-{k}.jsonl"));
    let _ = std::fs::remove_file(&log);
    if let Err(e) = std::fs::write(
        &plan_path,
        serde_json::to_string_pretty(&plan).unwrap_or_default(),
    ) {
        let f = Failure::new(format!("setup: write {}: {e}", plan_path.display()));
        rep.record(&run_name, Err(f));
        return;
    }
    let step_time: u64 = plan.steps.iter().map(|p| p.timeout_secs).sum();
    let opts = GateOpts {
        policy: ctx.repo.join(&s.policy),
        workspace: l.ws.clone(),
        log: log.clone(),
        mode: s.mode.map(|m| m.as_str().to_string()),
        timeout: Duration::from_secs(step_time + GATE_OVERHEAD),
        extra: Vec::new(),
        user: s.user.clone(),
    };
    let driver_argv = vec![
        l.driver().display().to_string(),
        "--driver".into(),
        plan_path.display().to_string(),
    ];
    let gate_cmd = ctx.gate_cmd(&opts, &driver_argv);
    let gate_out = gate_cmd.run();
    if let Err(f) = ctx.collect_daemon_log(&opts) {
        rep.record(&run_name, Err(f));
        return;
    }
    let results = driver::parse_results(&gate_out.stdout);
    let log_all = Log::read(&log);
    let pids: Vec<Option<u32>> = (0..group.len())
        .map(|pos| results.iter().find(|r| r.index == pos).and_then(|r| r.pid))
        .collect();
    let segments = log_all.segments(&pids);

    // The run itself: gate started the driver, every step reported, gate exited with the
    // driver's status (0) and said nothing went wrong.
    let run_result = if results.len() != group.len() || gate_out.status != Status::Exited(0) {
        Err(Failure::new(format!(
            "expected gate to run the batch of {} steps and exit 0, got {} with {} step results",
            group.len(),
            gate_out.summary(),
            results.len()
        ))
        .command(
            &gate_cmd,
            &Outcome {
                stdout: strip_results(&gate_out.stdout),
                ..gate_out.clone()
            },
        ))
    } else {
        Ok(())
    };
    rep.record(&run_name, run_result);

    for (pos, &i) in group.iter().enumerate() {
        let step = &s.steps[i];
        let r = match results.iter().find(|r| r.index == pos) {
            Some(res) => check_step(
                ctx,
                step,
                &l.vars,
                &argvs[pos],
                res,
                &segments[pos],
                &log,
                &opts.workspace,
                s.user.as_deref(),
            ),
            None => Err(Failure::new(format!(
                "expected {}, got no result: the batch did not reach this step",
                step.expect
            ))
            .detail(format!("see {run_name}"))),
        };
        rep.record(&step_name(ctx, s, &step.name), r);
    }
}

fn strip_results(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| !l.starts_with(driver::RESULT_PREFIX))
        .collect::<Vec<_>>()
        .join("\n")
}

#[allow(clippy::too_many_arguments)]
fn check_step(
    ctx: &Ctx,
    step: &Step,
    vars: &Vars,
    argv: &[String],
    res: &StepResult,
    log: &Log,
    log_path: &Path,
    ws: &Path,
    user: Option<&str>,
) -> TestResult {
    let out = res.outcome();
    let shown = Cmd::new(argv).cwd(ws);
    let fail = |msg: String| {
        Failure::new(msg)
            .command(&shown, &out)
            .log(log_path, log)
            .detail("(command ran confined, in a batch; log lines are this step's)")
    };
    if !step.expect.matches(&out) {
        return Err(fail(format!(
            "expected {}, got {}",
            step.expect,
            out.summary()
        )));
    }
    if let Some(m) = &step.expect_event {
        let m = m.expand(vars)?;
        if log.find(&m).is_none() {
            return Err(fail(format!("expected event {m} in the log, found none")));
        }
    }
    if let Some(m) = &step.expect_no_event {
        let m = m.expand(vars)?;
        if let Some(e) = log.find(&m) {
            return Err(fail(format!("expected no event matching {m}, found {e}")));
        }
    }
    if step.unconfined || step.unconfined_expect.is_some() {
        let want = step.unconfined_expect.clone().unwrap_or(Expect::Ok);
        // As the scenario's user, when it has one.
        let mut a: Vec<String> = Vec::new();
        if let Some(u) = user {
            let gid = nix::unistd::User::from_name(u)
                .ok()
                .flatten()
                .map_or_else(|| u.to_string(), |x| x.gid.to_string());
            a.extend(
                [
                    "/usr/bin/setpriv",
                    "--reuid",
                    u,
                    "--regid",
                    &gid,
                    "--clear-groups",
                    "--",
                ]
                .map(String::from),
            );
        }
        a.extend(argv.iter().cloned());
        let cmd = ctx
            .plain_cmd(&a, ws)
            .timeout(Duration::from_secs(step.timeout.unwrap_or(STEP_TIMEOUT)));
        let o = cmd.run();
        if !want.matches(&o) {
            return Err(Failure::new(format!(
                "confined run was right, but outside gate expected {want}, got {}",
                o.summary()
            ))
            .command(&cmd, &o));
        }
    }
    Ok(())
}
