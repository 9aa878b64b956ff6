//! The whole benchmark in one boot, in this order:
//!
//! 1. prepare the files (tmpfs), the synthetic policies and the workload's tool root;
//! 2. settle: repeat a no-BPF open+close loop until two runs in a row agree within 0.5 %;
//! 3. phase A, interleaved rounds of the conditions that can be switched cheaply: no BPF program,
//!    the empty BPF LSM programs (attached and detached every round) and Landlock (applied
//!    per worker); the order is reversed every other round (A B C, C B A, …);
//! 4. phase B, one block per gate policy (coding-agent, +1,000 rules, +10,000 rules): load and
//!    attach gate, then interleaved rounds of "gate loaded, worker not confined" and "worker
//!    confined", detach, and a no-BPF run right after (loading gate takes seconds of virtual
//!    time, so it is not re-loaded every round);
//! 5. `gate run --log` over a loop of denied opens: start-up time, events per second, memory;
//! 6. many agents in one engine (`agents`): gate loaded once with room for 100 agents, rounds
//!    of unconfined workers with 1, 10 and 100 agents confined, and of a worker confined as one
//!    of the 100;
//! 7. the real `gate daemon` (`daemon`): its memory and BPF maps with 0, 1, 10 and 100 agents,
//!    and the time from `gate run` to the command's first instruction (bench/src/daemon.rs);
//! 8. approvals and quotas through the daemon (`approvals`): the ask round trip 1,000 times, and
//!    what a connect costs under a plain rule, a `limit` and an approved `ask`
//!    (bench/src/approvals.rs).
//!
//! Each measurement runs in a freshly forked worker that confines itself as its condition says
//! (joins the cgroup, or applies Landlock) and first checks that confinement is what it should
//! be (a write outside the allowed places fails, or succeeds when unconfined).
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    agents::ManyAgents,
    approvals, daemon,
    fsprep::{self, Layout},
    gatecond::{self, Gate},
    lockdown,
    micro::{self, Fixture, Op, Plan},
    pysuite::{self, PySuite},
    userspace,
    util::{self, Holder, now_ns, say},
    workload::{self, Workload},
};

pub struct Options {
    pub quick: bool,
    pub repo: PathBuf,
    /// micro, workload, gate (phase B), events, agents, daemon, approvals, pysuite.
    pub parts: BTreeSet<String>,
    /// Which gate policies get a phase-B block: ca, 1k, 10k.
    pub policies: BTreeSet<String>,
    pub rounds_a: usize,
    pub rounds_b: usize,
    pub workload_rounds: usize,
    pub events: usize,
    /// Agents in the many-agents engine and through the daemon.
    pub agents: usize,
    pub rounds_agents: usize,
    /// The `gate` binary and `gate-stamp` (for the daemon part).
    pub gate: Option<PathBuf>,
    pub stamp: Option<PathBuf>,
    /// `gate-asker` (for the approvals part).
    pub asker: Option<PathBuf>,
    /// Approval round trips.
    pub approvals: usize,
    /// Python and its library as one tar archive (made by `cargo xtask bench`).
    pub python_tar: Option<PathBuf>,
    pub no_daemon_runs: usize,
}

impl Options {
    pub fn from_args(args: &[String]) -> Result<Options> {
        let set = |s: &str| s.split(',').map(String::from).collect::<BTreeSet<_>>();
        let mut o = Options {
            quick: false,
            repo: PathBuf::from("/work/main"),
            parts: set("micro,workload,gate,events,agents,daemon,approvals,pysuite"),
            policies: set("ca,1k,10k"),
            rounds_a: 4,
            rounds_b: 3,
            workload_rounds: 2,
            events: 2000,
            agents: 100,
            rounds_agents: 4,
            gate: None,
            stamp: None,
            asker: None,
            approvals: 1000,
            python_tar: None,
            no_daemon_runs: 3,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .with_context(|| format!("{a} needs a value"))
            };
            match a.as_str() {
                "--quick" => {
                    o.quick = true;
                    o.rounds_a = 2;
                    o.rounds_b = 2;
                    o.workload_rounds = 1;
                    o.events = 500;
                    o.rounds_agents = 2;
                    o.no_daemon_runs = 1;
                    o.approvals = 100;
                }
                "--repo" => o.repo = PathBuf::from(val()?),
                "--only" => o.parts = set(&val()?),
                "--policies" => o.policies = set(&val()?),
                "--rounds" => o.rounds_a = val()?.parse()?,
                "--gate-rounds" => o.rounds_b = val()?.parse()?,
                "--workload-rounds" => o.workload_rounds = val()?.parse()?,
                "--events" => o.events = val()?.parse()?,
                "--agents" => o.agents = val()?.parse()?,
                "--agents-rounds" => o.rounds_agents = val()?.parse()?,
                "--gate" => o.gate = Some(PathBuf::from(val()?)),
                "--stamp" => o.stamp = Some(PathBuf::from(val()?)),
                "--asker" => o.asker = Some(PathBuf::from(val()?)),
                "--approvals" => o.approvals = val()?.parse()?,
                "--python-tar" => o.python_tar = Some(PathBuf::from(val()?)),
                "--no-daemon-runs" => o.no_daemon_runs = val()?.parse()?,
                other => bail!("unknown option {other}"),
            }
        }
        Ok(o)
    }

    fn plans(&self) -> Vec<(Op, Plan)> {
        let q = if self.quick { 4 } else { 1 };
        let p = |warmup: usize, n: usize, samples: usize| Plan {
            warmup,
            n: n / q,
            samples,
        };
        vec![
            (Op::Exec, p(3, 20, 3)),
            (Op::OpenWrite, p(200, 500, 4)),
            (Op::OpenRead, p(200, 500, 4)),
            (Op::Rename, p(200, 500, 4)),
            (Op::TcpConnect, p(20, 100, 4)),
            (Op::UdpSendto, p(100, 500, 4)),
            (Op::MmapExec, p(200, 500, 4)),
            (Op::UnixConnect, p(20, 100, 4)),
            (Op::Signal, p(200, 500, 4)),
        ]
    }
}

/// Runs of the CPython suite per condition: its virtual time varies from run to run (tests
/// that sleep or race timeouts), and one run cannot show by how much.
const PYSUITE_ROUNDS: usize = 2;

/// How a worker is confined.
#[derive(Clone, Copy)]
enum Confine<'a> {
    Nothing,
    Cgroup(&'a fs::File),
    Landlock,
}

/// What a worker measures.
#[derive(Clone, Copy)]
enum Task {
    Micro,
    Workload,
    Settle,
    DenyLoop(usize),
}

struct Bench<'a> {
    opts: &'a Options,
    layout: Layout,
    fx: Fixture,
    plans: Vec<(Op, Plan)>,
    workload: Option<Workload>,
    runs: Vec<Value>,
    pysuite: Option<PySuite>,
    pysuite_runs: Vec<Value>,
}

pub fn run(opts: &Options) -> Result<Value> {
    let t_begin = now_ns();
    util::pin_to_cpu(0)?;
    let layout = Layout::new();
    layout.create()?;
    let base = fsprep::copy_policy(
        &opts.repo.join("policies/coding-agent.toml"),
        &layout.state.join("coding-agent.toml"),
    )?;
    let mut policies = Vec::new();
    for (key, name, cond, n) in [
        ("ca", "coding-agent", "gate_coding_agent", 0),
        ("1k", "coding-agent + 1,000 rules", "gate_1k", 1_000),
        ("10k", "coding-agent + 10,000 rules", "gate_10k", 10_000),
    ] {
        if opts.policies.contains(key) {
            let file = if n == 0 {
                layout.state.join("coding-agent.toml")
            } else {
                layout.synthetic_policy(&base, n)?
            };
            policies.push((key, name, cond, file));
        }
    }
    let workload = if opts.parts.contains("workload") {
        say("copying the toolchain into the workload's tool root");
        let w = workload::prepare(&layout.ws)?;
        say("tool root ready");
        Some(w)
    } else {
        None
    };
    let pysuite = if opts.parts.contains("pysuite") {
        say("copying python and its test suite into the workspace");
        let tar = opts
            .python_tar
            .as_deref()
            .context("the CPython suite needs --python-tar (cargo xtask bench passes it)")?;
        Some(pysuite::prepare(&layout.ws, tar)?)
    } else {
        None
    };
    let mut b = Bench {
        fx: Fixture::new(&layout.ws),
        plans: opts.plans(),
        opts,
        layout,
        workload,
        runs: Vec::new(),
        pysuite,
        pysuite_runs: Vec::new(),
    };
    let micro = opts.parts.contains("micro");
    let wl = b.workload.is_some();
    let settle = b.settle()?;
    // One discarded pass of everything, so first-run effects land nowhere.
    if micro {
        b.measure("none", "warm-up", 0, Confine::Nothing, Task::Micro)?;
    }
    if wl {
        b.measure("none", "warm-up", 0, Confine::Nothing, Task::Workload)?;
    }

    // Phase A.
    let mut null_attach = Vec::new();
    for round in 0..opts.rounds_a {
        let mut order = ["none", "null", "landlock"];
        if round % 2 == 1 {
            order.reverse();
        }
        let mut tasks = Vec::new();
        if micro {
            tasks.push(Task::Micro);
        }
        if wl && round < opts.workload_rounds {
            tasks.push(Task::Workload);
        }
        if tasks.is_empty() {
            break;
        }
        for cond in order {
            match cond {
                "null" => {
                    let null = Holder::spawn(
                        || {
                            let t0 = now_ns();
                            let n = gate::engine::NullEngine::attach()
                                .context("attaching the empty programs")?;
                            Ok((json!(now_ns() - t0), n))
                        },
                        |_, _, _| {},
                        |n| {
                            drop(n);
                            Ok(json!(null))
                        },
                    )?;
                    null_attach.push(null.setup.clone());
                    for &t in &tasks {
                        b.measure("null", "A", round, Confine::Nothing, t)?;
                    }
                    null.stop()?;
                }
                "landlock" => {
                    for &t in &tasks {
                        b.measure("landlock", "A", round, Confine::Landlock, t)?;
                    }
                }
                _ => {
                    for &t in &tasks {
                        b.measure("none", "A", round, Confine::Nothing, t)?;
                    }
                }
            }
        }
    }

    // The CPython suite unconfined (it takes minutes of virtual time: PYSUITE_ROUNDS runs);
    // confined in the coding-agent block below.
    if b.pysuite.is_some() {
        for round in 1..=PYSUITE_ROUNDS {
            b.measure_pysuite("none", round, Confine::Nothing)?;
        }
    }

    // Phase B. A policy whose programs the kernel refuses is recorded, not fatal: the rest of
    // the benchmark still runs, and the later blocks are skipped (same programs, and a refusal
    // after a million verifier steps costs minutes of wall time each under TCG).
    let mut setups = serde_json::Map::new();
    let mut events = None;
    let mut errors = Vec::new();
    let gate_on = opts.parts.contains("gate");
    let want_events = opts.parts.contains("events");
    for (i, p) in policies.iter().enumerate() {
        let last = i + 1 == policies.len();
        let run_events = last && want_events;
        let run_pysuite = p.0 == "ca" && b.pysuite.is_some();
        if !gate_on && !run_events && !run_pysuite {
            continue;
        }
        let wl_rounds = match p.0 {
            "ca" => opts.workload_rounds,
            "10k" => opts.workload_rounds.min(1),
            _ => 0,
        };
        match b.gate_block(i, p, gate_on, wl_rounds, run_events, run_pysuite) {
            Ok((setup, ev)) => {
                setups.insert(p.2.to_owned(), setup);
                if ev.is_some() {
                    events = ev;
                }
            }
            Err(e) => {
                let msg = short_error(&format!("{e:#}"));
                say(&format!("{}: FAILED: {msg}", p.1));
                errors.push(json!({ "policy": p.1, "error": msg }));
                break;
            }
        }
    }
    if let Some(w) = &b.workload {
        workload::cleanup(w);
    }

    // Many agents in one engine.
    let mut agents = Value::Null;
    if opts.parts.contains("agents") {
        match b.agents_block() {
            Ok(v) => agents = v,
            Err(e) => {
                let msg = short_error(&format!("{e:#}"));
                say(&format!("many agents: FAILED: {msg}"));
                errors.push(json!({ "part": "agents", "error": msg }));
            }
        }
    }
    // The daemon, last: it leaves nothing behind once unloaded, but it is the part most
    // likely to fail, and nothing after it would be measured then.
    let mut daemon_doc = Value::Null;
    if opts.parts.contains("daemon") {
        match b.daemon_block() {
            Ok(v) => daemon_doc = v,
            Err(e) => {
                let msg = short_error(&format!("{e:#}"));
                say(&format!("daemon: FAILED: {msg}"));
                errors.push(json!({ "part": "daemon", "error": msg }));
            }
        }
    }

    let mut approvals_doc = Value::Null;
    if opts.parts.contains("approvals") {
        match b.approvals_block() {
            Ok(v) => approvals_doc = v,
            Err(e) => {
                let msg = short_error(&format!("{e:#}"));
                say(&format!("approvals: FAILED: {msg}"));
                errors.push(json!({ "part": "approvals", "error": msg }));
            }
        }
    }

    let plans: serde_json::Map<String, Value> = b
        .plans
        .iter()
        .map(|(op, p)| {
            (
                op.id().to_owned(),
                json!({ "warmup": p.warmup, "n": p.n, "samples": p.samples, "what": op.describe() }),
            )
        })
        .collect();
    Ok(json!({
        "kernel": util::uname_release(),
        "cpus_online": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "quick": opts.quick,
        "rounds": { "phase_a": opts.rounds_a, "phase_b": opts.rounds_b, "workload": opts.workload_rounds, "agents": opts.rounds_agents },
        "plans": plans,
        "settle": settle,
        "runs": b.runs,
        "gate_setups": setups,
        "null_attach_ns": null_attach,
        "workload": b.workload.as_ref().map(|w| w.info.clone()),
        "pysuite": b.pysuite.as_ref().map(|p| json!({ "info": p.info, "runs": b.pysuite_runs })),
        "events": events,
        "agents": agents,
        "daemon": daemon_doc,
        "approvals": approvals_doc,
        "errors": errors,
        "total_virtual_ns": now_ns() - t_begin,
    }))
}

impl Bench<'_> {
    /// Repeats a no-BPF open+close run (the median of 5 batches of 1,000) until two runs in a
    /// row agree within 0.5 %.
    fn settle(&mut self) -> Result<Value> {
        const TOLERANCE: f64 = 0.005;
        let mut seen: Vec<f64> = Vec::new();
        let mut converged = false;
        for _ in 0..30 {
            let v = self.worker(Confine::Nothing, Task::Settle)?;
            let mut s: Vec<f64> = v["samples"]["open_write"]
                .as_array()
                .context("settle samples")?
                .iter()
                .filter_map(Value::as_f64)
                .collect();
            s.sort_by(f64::total_cmp);
            let ns = s[s.len() / 2];
            seen.push(ns);
            say(&format!("settling: open+close median {ns:.0} ns/op"));
            if let [.., a, b] = seen[..]
                && (a - b).abs() / a.min(b) <= TOLERANCE
            {
                converged = true;
                break;
            }
        }
        Ok(json!({ "tolerance": TOLERANCE, "open_write_median_ns": seen, "converged": converged }))
    }

    fn measure(
        &mut self,
        cond: &str,
        block: &str,
        round: usize,
        confine: Confine<'_>,
        task: Task,
    ) -> Result<()> {
        let t = now_ns();
        let mut v = self
            .worker(confine, task)
            .with_context(|| format!("condition {cond} ({block}, round {round})"))?;
        let kind = match task {
            Task::Micro => "micro",
            Task::Workload => "workload",
            Task::Settle => "settle",
            Task::DenyLoop(_) => "deny-loop",
        };
        if let Task::Workload = task {
            say(&format!(
                "{cond} [{block}] workload: {:.3} s",
                v["samples"]["workload"][0].as_f64().unwrap_or(0.0) / 1e9
            ));
        } else {
            let s = &v["samples"];
            say(&format!(
                "{cond} [{block}] open_write {:.0}, exec {:.0} ns/op",
                s["open_write"][0].as_f64().unwrap_or(0.0),
                s["exec"][0].as_f64().unwrap_or(0.0)
            ));
        }
        v["condition"] = json!(cond);
        v["block"] = json!(block);
        v["round"] = json!(round);
        v["kind"] = json!(kind);
        v["t_ns"] = json!(t);
        self.runs.push(v);
        Ok(())
    }

    /// One run of the CPython suite in a worker confined as `confine` says.
    fn measure_pysuite(&mut self, cond: &str, round: usize, confine: Confine<'_>) -> Result<()> {
        let py = self.pysuite.as_ref().context("no python prepared")?;
        let v = util::in_worker(|| {
            // The suite runs as nobody: privileges are dropped first (a confined root may not
            // use CAP_SETUID), then the worker joins through the cgroup.procs descriptor opened
            // as root (cgroup v2 checks the opener's credentials).
            let before = fs::read_to_string("/proc/self/cgroup")?;
            let dir = pysuite::rundir(py, cond)?;
            pysuite::drop_privileges()?;
            match confine {
                Confine::Cgroup(procs) => {
                    gatecond::join(procs)?;
                    let after = fs::read_to_string("/proc/self/cgroup")?;
                    if after == before {
                        bail!(
                            "the worker did not move into gate's cgroup ({})",
                            after.trim()
                        );
                    }
                }
                Confine::Landlock => bail!("the CPython suite has no Landlock condition"),
                Confine::Nothing => {}
            }
            pysuite::run_once(py, cond, round, &dir)
        })
        .with_context(|| format!("the CPython suite, condition {cond}, round {round}"))?;
        self.pysuite_runs.push(v);
        Ok(())
    }

    fn worker(&self, confine: Confine<'_>, task: Task) -> Result<Value> {
        let plans = match task {
            Task::Settle => vec![(
                Op::OpenWrite,
                Plan {
                    warmup: 100,
                    n: 1000,
                    samples: 5,
                },
            )],
            _ => self.plans.clone(),
        };
        let layout = &self.layout;
        let fx = &self.fx;
        let root = self.workload.as_ref().map(|w| w.root.clone());
        util::in_worker(|| {
            let mut info = json!({});
            let expect = match confine {
                Confine::Nothing => 0,
                Confine::Cgroup(procs) => {
                    gatecond::join(procs)?;
                    libc::EPERM
                }
                Confine::Landlock => {
                    info = lockdown::restrict(&layout.ws, micro::TCP_PORT)?;
                    libc::EACCES
                }
            };
            if let Task::DenyLoop(n) = task {
                return userspace::deny_loop(&layout.denied, n);
            }
            check_confinement(&layout.denied, expect)?;
            let samples = match task {
                Task::Workload => {
                    let root = root.context("no workload prepared")?;
                    json!({ "workload": [workload::run_once(&root)?] })
                }
                _ => micro::run_all(fx, &plans)?,
            };
            Ok(json!({ "samples": samples, "confinement": info }))
        })
    }

    /// One phase-B block: gate loaded with one policy in a holder, rounds of "not confined" and
    /// "confined" workers, optionally the events measurement, detach, one no-BPF run.
    fn gate_block(
        &mut self,
        i: usize,
        (key, name, cond, file): &(&str, &str, &str, PathBuf),
        gate_on: bool,
        wl_rounds: usize,
        run_events: bool,
        run_pysuite: bool,
    ) -> Result<(Value, Option<Value>)> {
        let micro = self.opts.parts.contains("micro");
        let wl = self.workload.is_some();
        let ws = self.layout.ws.clone();
        say(&format!("{name}: compiling, loading and attaching gate"));
        let mut gate = Holder::spawn(
            || {
                let g = Gate::start(&format!("bench-{key}"), file, &ws)?;
                Ok((g.setup.clone(), g))
            },
            |g, cmd, out| {
                let r = match cmd.split(' ').collect::<Vec<_>>()[..] {
                    ["collect", n, log, key] => match n.parse() {
                        Ok(n) => g.collect_events(n, Path::new(log), Path::new(key), out),
                        Err(e) => Err(e.into()),
                    },
                    _ => Err(anyhow::anyhow!("unknown command {cmd}")),
                };
                util::report_line(out, r);
            },
            |g| g.stop(),
        )?;
        let cg = PathBuf::from(gate.setup["cgroup"].as_str().context("no cgroup")?);
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(cg.join("cgroup.procs"))
            .context("opening cgroup.procs")?;
        let mut result = Ok(None);
        if gate_on {
            'rounds: for round in 0..self.opts.rounds_b {
                let mut order = [
                    ("gate_unconfined", Confine::Nothing),
                    (*cond, Confine::Cgroup(&procs)),
                ];
                if round % 2 == 1 {
                    order.reverse();
                }
                for (c, confine) in order {
                    let confined = matches!(confine, Confine::Cgroup(_));
                    let mut r = Ok(());
                    if micro {
                        r = self.measure(c, name, round, confine, Task::Micro);
                    }
                    if r.is_ok() && wl && confined && round < wl_rounds {
                        r = self.measure(c, name, round, confine, Task::Workload);
                    }
                    if let Err(e) = r {
                        result = Err(e);
                        break 'rounds;
                    }
                }
            }
        }
        for round in 1..=PYSUITE_ROUNDS {
            if result.is_ok() && run_pysuite {
                result = self
                    .measure_pysuite(cond, round, Confine::Cgroup(&procs))
                    .map(|()| None);
            }
        }
        if result.is_ok() && run_events {
            result = self
                .events(&mut gate, &procs)
                .context("events per second")
                .map(Some);
        }
        drop(procs);
        let mut setup = gate.setup.clone();
        let stopped = gate.stop();
        say(&format!("{name}: detached"));
        let events = result?;
        setup["after"] = stopped?;
        setup["block"] = json!(name);
        setup["index"] = json!(i);
        if micro && gate_on {
            self.measure(
                "none",
                &format!("after {name}"),
                0,
                Confine::Nothing,
                Task::Micro,
            )?;
        }
        Ok((setup, events))
    }

    /// Many agents in one engine: rounds of unconfined workers with 1, 10 and `n` agents
    /// confined (agents added and removed between them, the programs staying attached), the
    /// order reversed every other round, and a worker confined as agent 0 while all `n` are.
    fn agents_block(&mut self) -> Result<Value> {
        let n = self.opts.agents.max(10);
        let micro = self.opts.parts.contains("micro");
        let ws = self.layout.ws.clone();
        let ws_root = self.layout.state.join("agents");
        let coding = self.layout.state.join("coding-agent.toml");
        let other = self.layout.state.join("ci-runner.toml");
        fsprep::copy_policy(&self.opts.repo.join("policies/ci-runner.toml"), &other)?;
        say(&format!(
            "many agents: compiling {n} policies, loading and attaching gate"
        ));
        let exe = std::env::current_exe()?;
        let root = daemon::Root::build(
            Path::new(daemon::ROOT),
            &exe,
            &[coding.clone(), other.clone()],
        )?;
        let mut h = Holder::spawn(
            || {
                let m = ManyAgents::start(n, &ws, &ws_root, &coding, &other, &root.dir)?;
                Ok((m.setup.clone(), m))
            },
            |m, cmd, out| {
                let r = match cmd.split(' ').collect::<Vec<_>>()[..] {
                    ["agents", k] => match k.parse() {
                        Ok(k) => m.set(k),
                        Err(e) => Err(e.into()),
                    },
                    _ => Err(anyhow::anyhow!("unknown command {cmd}")),
                };
                util::report_line(out, r);
            },
            |m| m.stop(),
        )?;
        let mut setup = h.setup.clone();
        let cg = PathBuf::from(
            setup["confined_cgroup"]
                .as_str()
                .context("no confined cgroup")?,
        );
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(cg.join("cgroup.procs"))
            .context("opening cgroup.procs")?;
        let mut switches = Vec::new();
        let mut result = Ok(());
        if micro {
            let counts = [1, 10, n];
            'rounds: for round in 0..self.opts.rounds_agents {
                let mut order = counts;
                if round % 2 == 1 {
                    order.reverse();
                }
                for k in order {
                    let r = h.send(&format!("agents {k}")).and_then(|()| h.read());
                    match r {
                        Ok(v) => switches.push(v),
                        Err(e) => {
                            result = Err(e);
                            break 'rounds;
                        }
                    }
                    let mut conds = vec![(format!("agents_{k}"), Confine::Nothing)];
                    if k == n {
                        conds.push(("agents_n_confined".to_owned(), Confine::Cgroup(&procs)));
                        if round % 2 == 1 {
                            conds.reverse();
                        }
                    }
                    for (c, confine) in conds {
                        if let Err(e) = self.measure(&c, "agents", round, confine, Task::Micro) {
                            result = Err(e);
                            break 'rounds;
                        }
                    }
                }
            }
        }
        drop(procs);
        let stopped = h.stop();
        drop(root);
        result?;
        setup["after"] = stopped?;
        setup["switches"] = json!(switches);
        if micro {
            self.measure("none", "after agents", 0, Confine::Nothing, Task::Micro)?;
        }
        Ok(setup)
    }

    /// The `gate` release binary the daemon parts run.
    fn gate_bin(&self) -> Result<&Path> {
        self.opts
            .gate
            .as_deref()
            .context("no --gate binary given (cargo xtask bench passes target/release/gate)")
    }

    /// The real `gate daemon` with `agents` agents (bench/src/daemon.rs).
    fn daemon_block(&mut self) -> Result<Value> {
        let gate = self.gate_bin()?;
        let stamp = self
            .opts
            .stamp
            .as_deref()
            .context("no --stamp binary given (cargo xtask bench builds bench/src/stamp.c)")?;
        let coding = self.layout.state.join("coding-agent.toml");
        let other = self.layout.state.join("ci-runner.toml");
        fsprep::copy_policy(&self.opts.repo.join("policies/ci-runner.toml"), &other)?;
        daemon::run(&daemon::Options {
            gate,
            stamp,
            dir: &self.layout.state.join("daemon"),
            policies: [&coding, &other],
            agents: self.opts.agents,
            no_daemon_runs: self.opts.no_daemon_runs,
        })
    }

    /// Approvals and quotas through the real daemon (bench/src/approvals.rs).
    fn approvals_block(&mut self) -> Result<Value> {
        let gate = self.gate_bin()?;
        let asker = self
            .opts
            .asker
            .as_deref()
            .context("no --asker binary given (cargo xtask bench builds bench/src/asker.c)")?;
        approvals::run(&approvals::Options {
            gate,
            asker,
            dir: &self.layout.state.join("approvals"),
            n: self.opts.approvals,
            rounds: if self.opts.quick { 2 } else { 5 },
            per_sample: if self.opts.quick { 500 } else { 2000 },
        })
    }

    /// Events per second, kernel → audit file: the holder drains while a confined worker
    /// makes `n` denied opens. Also the memory of the process holding gate.
    fn events(&mut self, gate: &mut Holder, procs: &fs::File) -> Result<Value> {
        let n = self.opts.events;
        let log = self.layout.state.join("audit.jsonl");
        let key = self.layout.state.join("audit.key");
        say(&format!(
            "events: {n} denied opens, drained into {}",
            log.display()
        ));
        gate.send(&format!("collect {n} {} {}", log.display(), key.display()))?;
        let ready = gate.read()?;
        anyhow::ensure!(ready == json!("ready"), "holder said {ready}");
        let w = self.worker(Confine::Cgroup(procs), Task::DenyLoop(n))?;
        let mut done = gate.read()?;
        let t_start = w["t_start_ns"].as_u64().context("t_start")?;
        let t_done = done["t_done_ns"].as_u64().unwrap_or(0);
        anyhow::ensure!(
            t_done > t_start,
            "the audit log did not get {n} decisions: {done}"
        );
        done["n"] = json!(n);
        done["loop_ns"] = w["loop_ns"].clone();
        done["kernel_to_log_ns"] = json!(t_done - t_start);
        done["events_per_second"] = json!(n as f64 * 1e9 / (t_done - t_start) as f64);
        say(&format!(
            "events: {:.0} per virtual second",
            done["events_per_second"].as_f64().unwrap_or(0.0)
        ));
        Ok(done)
    }
}

/// An error message short enough for a table: a verifier log is thousands of lines.
fn short_error(msg: &str) -> String {
    let lines: Vec<&str> = msg.lines().collect();
    if lines.len() <= 8 && msg.len() <= 1500 {
        return msg.to_owned();
    }
    let head: String = lines.iter().take(3).copied().collect::<Vec<_>>().join("\n");
    let tail: String = lines[lines.len().saturating_sub(4)..].join("\n");
    let cut = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    format!(
        "{}\n[… {} lines …]\n{}",
        cut(&head, 700),
        lines.len().saturating_sub(7),
        cut(&tail, 700)
    )
}

/// A write outside the allowed places must fail with `expect` (or succeed when 0).
fn check_confinement(denied: &Path, expect: i32) -> Result<()> {
    let p = util::cstring(denied);
    // SAFETY: plain syscalls on a valid C string.
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    let err = if fd < 0 { util::errno() } else { 0 };
    if fd >= 0 {
        // SAFETY: closing what we opened.
        unsafe { libc::close(fd) };
    }
    if err != expect {
        bail!(
            "confinement is not what this condition needs: writing {} gave errno {err}, expected {expect}",
            denied.display()
        );
    }
    Ok(())
}
