//! The whole benchmark in one boot, in this order:
//!
//! 1. prepare the files (tmpfs), the synthetic policies and the workload's tool root;
//! 2. settle: repeat a no-BPF open+close loop until two runs in a row agree within 0.5 %;
//! 3. phase A, interleaved rounds of the conditions that can be switched cheaply: no BPF program,
//!    the empty BPF LSM programs (attached and detached every round) and Landlock (applied
//!    per worker); the order is reversed every other round (A B C, C B A, …);
//! 4. phase B, one block per gate policy (coding-agent, +1,000 rules, +10,000 rules): load and
//!    attach gate, then interleaved rounds of "gate loaded, worker not confined" and "worker
//!    confined", detach, and a no-BPF run right after (loading gate takes minutes of wall
//!    time under TCG, so it is not re-loaded every round);
//! 5. `gate run --log` over a loop of denied opens: start-up time, events per second, memory.
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
    fsprep::{self, Layout},
    gatecond::{self, Gate},
    lockdown,
    micro::{self, Fixture, Op, Plan},
    userspace,
    util::{self, Holder, now_ns, say},
    workload::{self, Workload},
};

pub struct Options {
    pub quick: bool,
    pub repo: PathBuf,
    pub parts: BTreeSet<String>,
    pub rounds_a: usize,
    pub rounds_b: usize,
    pub workload_rounds: usize,
    pub events: usize,
}

impl Options {
    pub fn from_args(args: &[String]) -> Result<Options> {
        let mut o = Options {
            quick: false,
            repo: PathBuf::from("/work/main"),
            parts: ["micro", "workload", "gate", "userspace"].map(String::from).into(),
            rounds_a: 4,
            rounds_b: 3,
            workload_rounds: 3,
            events: 3000,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().cloned().with_context(|| format!("{a} needs a value"));
            match a.as_str() {
                "--quick" => {
                    o.quick = true;
                    o.rounds_a = 2;
                    o.rounds_b = 2;
                    o.workload_rounds = 1;
                    o.events = 500;
                }
                "--repo" => o.repo = PathBuf::from(val()?),
                "--only" => o.parts = val()?.split(',').map(String::from).collect(),
                "--rounds" => o.rounds_a = val()?.parse()?,
                "--gate-rounds" => o.rounds_b = val()?.parse()?,
                "--workload-rounds" => o.workload_rounds = val()?.parse()?,
                "--events" => o.events = val()?.parse()?,
                other => bail!("unknown option {other}"),
            }
        }
        Ok(o)
    }

    fn plans(&self) -> Vec<(Op, Plan)> {
        let q = if self.quick { 4 } else { 1 };
        let p = |warmup: usize, n: usize, samples: usize| Plan { warmup, n: n / q, samples };
        vec![
            (Op::Exec, p(3, 20, 3)),
            (Op::OpenWrite, p(200, 500, 4)),
            (Op::OpenRead, p(200, 500, 4)),
            (Op::Rename, p(200, 500, 4)),
            (Op::TcpConnect, p(20, 100, 4)),
            (Op::UdpSendto, p(100, 500, 4)),
        ]
    }
}

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
}

struct Bench<'a> {
    opts: &'a Options,
    layout: Layout,
    fx: Fixture,
    plans: Vec<(Op, Plan)>,
    workload: Option<Workload>,
    runs: Vec<Value>,
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
    let policies = [
        ("coding-agent", "gate_coding_agent", layout.state.join("coding-agent.toml")),
        ("coding-agent+1k", "gate_1k", layout.synthetic_policy(&base, 1_000)?),
        ("coding-agent+10k", "gate_10k", layout.synthetic_policy(&base, 10_000)?),
    ];
    let workload = if opts.parts.contains("workload") {
        say("copying the toolchain into the workload's tool root");
        Some(workload::prepare(&layout.ws)?)
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
    };
    let settle = b.settle()?;
    // One discarded pass of everything, so first-run effects land nowhere.
    b.measure("none", "warm-up", 0, Confine::Nothing, Task::Micro)?;
    if b.workload.is_some() {
        b.measure("none", "warm-up", 0, Confine::Nothing, Task::Workload)?;
    }

    let mut null_attach = Vec::new();
    let micro = opts.parts.contains("micro");
    let wl = b.workload.is_some();
    for round in 0..opts.rounds_a {
        let mut order = ["none", "null", "landlock"];
        if round % 2 == 1 {
            order.reverse();
        }
        for cond in order {
            let tasks: Vec<Task> = [(micro, Task::Micro), (wl && round < opts.workload_rounds, Task::Workload)]
                .into_iter()
                .filter_map(|(on, t)| on.then_some(t))
                .collect();
            if tasks.is_empty() {
                continue;
            }
            match cond {
                "null" => {
                    let null = Holder::spawn(
                        || {
                            let t0 = now_ns();
                            let n = gate::engine::NullEngine::attach()
                                .context("attaching the empty programs")?;
                            Ok((json!(now_ns() - t0), n))
                        },
                        |n| {
                            drop(n);
                            Ok(json!(null))
                        },
                    )?;
                    null_attach.push(null.setup.clone());
                    for t in tasks {
                        b.measure("null", "A", round, Confine::Nothing, t)?;
                    }
                    null.stop()?;
                }
                "landlock" => {
                    for t in tasks {
                        b.measure("landlock", "A", round, Confine::Landlock, t)?;
                    }
                }
                _ => {
                    for t in tasks {
                        b.measure("none", "A", round, Confine::Nothing, t)?;
                    }
                }
            }
        }
    }

    let mut setups = serde_json::Map::new();
    if opts.parts.contains("gate") && (micro || wl) {
        for (i, (name, cond, file)) in policies.iter().enumerate() {
            let ws = b.layout.ws.clone();
            let gate = Holder::spawn(
                || {
                    let g = Gate::start(&format!("bench-{i}"), file, &ws)?;
                    Ok((g.setup.clone(), g))
                },
                |g| {
                    g.stop()?;
                    Ok(json!(null))
                },
            )?;
            let cg = PathBuf::from(gate.setup["cgroup"].as_str().context("no cgroup")?);
            let procs = fs::OpenOptions::new()
                .write(true)
                .open(cg.join("cgroup.procs"))
                .context("opening cgroup.procs")?;
            for round in 0..opts.rounds_b {
                let mut order = [("gate_unconfined", Confine::Nothing), (*cond, Confine::Cgroup(&procs))];
                if round % 2 == 1 {
                    order.reverse();
                }
                for (c, confine) in order {
                    if micro {
                        b.measure(c, name, round, confine, Task::Micro)?;
                    }
                    // The workload under gate: every round with the shipped policy, once with
                    // the others.
                    if wl && (i == 0 && round < opts.workload_rounds || i > 0 && round == 0) {
                        b.measure(c, name, round, confine, Task::Workload)?;
                    }
                }
            }
            drop(procs);
            let mut setup = gate.setup.clone();
            gate.stop()?;
            say(&format!("{name}: detached"));
            setup["block"] = json!(name);
            setups.insert(cond.to_string(), setup);
            if micro {
                b.measure("none", &format!("after {name}"), 0, Confine::Nothing, Task::Micro)?;
            }
        }
    }

    let gate_run = if opts.parts.contains("userspace") {
        Some(b.gate_run(&policies[2].2)?)
    } else {
        None
    };
    if let Some(w) = &b.workload {
        workload::cleanup(w);
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
        "rounds": { "phase_a": opts.rounds_a, "phase_b": opts.rounds_b, "workload": opts.workload_rounds },
        "plans": plans,
        "settle": settle,
        "runs": b.runs,
        "gate_setups": setups,
        "null_attach_ns": null_attach,
        "workload": b.workload.as_ref().map(|w| w.info.clone()),
        "gate_run": gate_run,
        "total_virtual_ns": now_ns() - t_begin,
    }))
}

impl Bench<'_> {
    /// Repeats a no-BPF open+close loop until two consecutive runs agree within 0.5 %.
    fn settle(&mut self) -> Result<Value> {
        const TOLERANCE: f64 = 0.005;
        let mut seen: Vec<f64> = Vec::new();
        let mut converged = false;
        for _ in 0..40 {
            let v = self.worker(Confine::Nothing, Task::Settle)?;
            let ns = v["samples"]["open_write"][0].as_f64().context("settle sample")?;
            seen.push(ns);
            say(&format!("settling: open+close {ns:.0} ns/op"));
            if let [.., a, b] = seen[..] {
                if (a - b).abs() / a.min(b) <= TOLERANCE {
                    converged = true;
                    break;
                }
            }
        }
        Ok(json!({ "tolerance": TOLERANCE, "open_write_ns": seen, "converged": converged }))
    }

    fn measure(&mut self, cond: &str, block: &str, round: usize, confine: Confine<'_>, task: Task) -> Result<()> {
        let t = now_ns();
        let mut v = self
            .worker(confine, task)
            .with_context(|| format!("condition {cond} ({block}, round {round})"))?;
        let kind = match task {
            Task::Micro => "micro",
            Task::Workload => "workload",
            Task::Settle => "settle",
        };
        if let Task::Workload = task {
            say(&format!("{cond} [{block}] workload: {:.3} s", v["samples"]["workload"][0].as_f64().unwrap_or(0.0) / 1e9));
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

    fn worker(&self, confine: Confine<'_>, task: Task) -> Result<Value> {
        let plans = match task {
            Task::Settle => vec![(Op::OpenWrite, Plan { warmup: 100, n: 1000, samples: 1 })],
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

    fn gate_run(&self, policy: &Path) -> Result<Value> {
        let exe = std::env::current_exe()?;
        let gate_bin = exe.with_file_name("gate");
        // The confined command must be one the policy lets run: a copy in the workspace.
        let copy = self.layout.ws.join("bin/gate-bench");
        fs::copy(&exe, &copy)?;
        userspace::gate_run_events(
            &gate_bin,
            &copy,
            policy,
            &self.layout.ws,
            &self.layout.state,
            &self.layout.denied,
            self.opts.events,
        )
    }
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
