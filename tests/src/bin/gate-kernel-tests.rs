//! gate's kernel test suite. Runs inside a guest with BPF LSM active (`cargo xtask test`):
//!
//!     gate-kernel-tests --gate /abs/gate --probe /abs/gate-probe --repo /abs/repo [FILTER…]
//!
//! With `--systemd` it runs only the tests of gate.service under systemd (suite::systemd),
//! which need the host's systemd as PID 1 (`cargo xtask guest --systemd`); without it, never
//! those.
//!
//! Prints `PASS name [secs]` or `FAIL name [secs]: expected …, got …` (with details) per test
//! (secs: time since the previous result), then
//! `N passed, N failed`. Exits 1 if anything failed, if nothing ran, or if the machine cannot
//! run the suite (BPF LSM or cgroup v2 missing): that is a failure, never a skip.

use std::path::PathBuf;
use std::process::ExitCode;

use gate_tests::suite::{self, Ctx, Failure, Reporter};

struct Args {
    gate: Option<PathBuf>,
    probe: Option<PathBuf>,
    repo: Option<PathBuf>,
    filters: Vec<String>,
    skips: Vec<String>,
    scenarios_once: bool,
    list: bool,
    allow_host_home: bool,
    keep: bool,
    isolate: bool,
    systemd: bool,
    driver: Option<PathBuf>,
}

const USAGE: &str = "usage: gate-kernel-tests --gate PATH --probe PATH --repo DIR [--list] [--keep] \
                     [--isolate] [--systemd] [--allow-host-home] [--skip PATTERN]... [--scenarios-once] \
                     [FILTER...]\n\
                     FILTER: run only tests whose name contains one of these strings\n\
                     --skip PATTERN: do not run tests whose name contains PATTERN (repeatable)\n\
                     --scenarios-once: run each scenario once, through the daemon where it can \
                     (`via-daemon/`), standalone only when it needs `gate run --user`\n\
                     --systemd: only the tests of gate.service under systemd (PID 1 must be systemd)\n\
                     --keep: leave /tmp/gate-tests (logs, plans) in place\n\
                     --isolate: one gate run per scenario step (slow in TCG guests)";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        gate: None,
        probe: None,
        repo: None,
        filters: Vec::new(),
        skips: Vec::new(),
        scenarios_once: false,
        list: false,
        allow_host_home: false,
        keep: false,
        isolate: false,
        systemd: false,
        driver: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .map(PathBuf::from)
                .ok_or(format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--gate" => a.gate = Some(value("--gate")?),
            "--probe" => a.probe = Some(value("--probe")?),
            "--repo" => a.repo = Some(value("--repo")?),
            "--list" => a.list = true,
            "--keep" => a.keep = true,
            "--isolate" => a.isolate = true,
            "--systemd" => a.systemd = true,
            "--driver" => a.driver = Some(value("--driver")?),
            "--skip" => a
                .skips
                .push(value("--skip")?.to_string_lossy().into_owned()),
            "--scenarios-once" => a.scenarios_once = true,
            "--allow-host-home" => a.allow_host_home = true,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => a.filters.push(s.to_string()),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("gate-kernel-tests: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(plan) = &args.driver {
        // Inside `gate run`: run a batch of scenario steps (see gate_tests::driver).
        return ExitCode::from(gate_tests::driver::main(plan) as u8);
    }
    let mut rep = Reporter::new(args.filters.clone(), args.list).skipping(args.skips.clone());
    if args.list {
        // Names only; scenario steps are listed from their files.
        if args.systemd {
            suite::list_systemd(&mut rep);
        } else {
            suite::list(
                &args.repo.clone().unwrap_or_else(|| PathBuf::from(".")),
                &mut rep,
            );
        }
        return ExitCode::SUCCESS;
    }
    let (Some(gate), Some(probe), Some(repo)) = (args.gate, args.probe, args.repo) else {
        eprintln!("gate-kernel-tests: --gate, --probe and --repo are required\n{USAGE}");
        return ExitCode::from(2);
    };

    let env = match gate_tests::env::check(&gate, &probe, &repo, args.allow_host_home) {
        Ok(env) => env,
        Err(problems) => {
            rep.record(
                "environment",
                Err(Failure::new("this machine cannot run the kernel suite").detail(problems)),
            );
            println!("{} passed, {} failed", rep.passed, rep.failed);
            return ExitCode::FAILURE;
        }
    };
    for n in &env.notes {
        println!("env: {n}");
    }
    let ctx = Ctx {
        gate,
        probe,
        repo,
        env,
        isolate: args.isolate,
        scenarios_once: args.scenarios_once,
        via_daemon: None,
    };
    if let Err(e) = suite::prepare(&ctx) {
        rep.record(
            "environment",
            Err(Failure::new(format!("cannot prepare test files: {e}"))),
        );
        println!("{} passed, {} failed", rep.passed, rep.failed);
        return ExitCode::FAILURE;
    }

    if args.systemd {
        suite::run_systemd(&ctx, &mut rep);
    } else {
        suite::run_all(&ctx, &mut rep);
    }

    if !args.keep {
        suite::remove_tree(std::path::Path::new(suite::SCRATCH));
    }
    println!("{} passed, {} failed", rep.passed, rep.failed);
    if rep.failed > 0 || rep.passed == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
