//! `cargo xtask test`: host tests, a release build, then the kernel test suite in a qemu guest
//! for each kernel, one after the other (side by side with `--side-by-side`), each suite
//! followed by a second boot of its kernel with the host's systemd as PID 1 that tests
//! gate.service under it (`gate-kernel-tests --systemd`). A guest that cannot boot or does not
//! report fails its suite. Ends with a summary table and a `N passed, N failed` line.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::guest::{self, RunOptions};
use crate::kernels::Series;
use crate::setup::{self, Environment};
use crate::{paths, workspace};

pub const SKIP_GUESTS_ENV: &str = "GATE_SKIP_GUEST_TESTS";
const TESTS_CRATE_HINT: &str = "the kernel-test crate in tests/ (binaries `gate-kernel-tests` and `gate-probe`) \
     is missing or not a member of the workspace; add it to [workspace] members in Cargo.toml";

pub struct Options {
    pub kernels: Vec<Series>,
    pub host: bool,
    pub timeout: Duration,
    /// Every scenario standalone and through the daemon on every kernel (see `suite_args`).
    pub full: bool,
    /// Both kernels' guests at once instead of one after the other.
    pub side_by_side: bool,
}

enum Verdict {
    Passed,
    Failed(String),
    NotRun(String),
}

struct SuiteResult {
    name: String,
    verdict: Verdict,
    duration: Duration,
}

/// The binaries a guest suite runs.
struct Binaries {
    gate: PathBuf,
    kernel_tests: PathBuf,
    probe: PathBuf,
}

pub fn run(options: &Options) -> Result<ExitCode> {
    let env = setup::run(&setup::Options {
        quiet: true,
        update_kernels: false,
    })?;
    let mut results = Vec::new();
    if options.host {
        results.push(timed("host tests", || {
            workspace::host_tests().map(|()| Verdict::Passed)
        }));
    }
    let skip_guests = skip_guests_requested();
    if skip_guests {
        banner(&format!(
            "{SKIP_GUESTS_ENV}=1: the kernel tests will NOT be run"
        ));
        for series in &options.kernels {
            for boot in Boot::ALL {
                results.push(not_run(series, boot, &format!("{SKIP_GUESTS_ENV}=1")));
            }
        }
    } else {
        run_guest_suites(&env, options, &mut results);
    }
    Ok(report(&results, skip_guests))
}

fn run_guest_suites(env: &Environment, options: &Options, results: &mut Vec<SuiteResult>) {
    let started = Instant::now();
    let binaries = workspace::release(&[]).and_then(|()| release_binaries());
    let binaries = match binaries {
        Ok(binaries) => binaries,
        Err(error) => {
            eprintln!("error: {error:#}");
            let duration = started.elapsed();
            for series in &options.kernels {
                for boot in Boot::ALL {
                    let verdict = Verdict::Failed(format!("not run: {error}"));
                    results.push(SuiteResult {
                        name: boot.suite_name(*series),
                        verdict,
                        duration,
                    });
                }
            }
            return;
        }
    };
    // Side by side, every console line carries its kernel's label. On a 2-core host it is
    // slower than one after the other: each guest's two emulated CPUs use both cores in the
    // real workloads (measured: CPython's suite took 988 s instead of about 400 s).
    let binaries = &binaries;
    let suites = |series: Series| -> Vec<SuiteResult> {
        Boot::ALL
            .iter()
            .map(|&boot| {
                timed(&boot.suite_name(series), || {
                    guest_suite(env, series, boot, binaries, options)
                })
            })
            .collect()
    };
    if !options.side_by_side {
        for &series in &options.kernels {
            results.extend(suites(series));
        }
        return;
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = options
            .kernels
            .iter()
            .map(|&series| (series, scope.spawn(move || suites(series))))
            .collect();
        for (series, handle) in handles {
            match handle.join() {
                Ok(done) => results.extend(done),
                Err(_) => results.extend(Boot::ALL.iter().map(|&boot| SuiteResult {
                    name: boot.suite_name(series),
                    verdict: Verdict::Failed("the thread running this guest panicked".into()),
                    duration: Duration::ZERO,
                })),
            }
        }
    });
}

/// How a kernel is booted for a suite.
#[derive(Clone, Copy)]
enum Boot {
    /// /init runs the whole kernel suite in a chroot of the host root.
    Chroot,
    /// The host's systemd is PID 1 and runs the systemd tests as a unit.
    Systemd,
}

impl Boot {
    const ALL: [Boot; 2] = [Boot::Chroot, Boot::Systemd];

    fn suite_name(self, series: Series) -> String {
        match self {
            Boot::Chroot => format!("kernel {series}"),
            Boot::Systemd => format!("systemd {series}"),
        }
    }
}

/// What a kernel's suite leaves out, to keep `cargo xtask test` within CI's time: each
/// scenario runs once, through the daemon where it can and standalone when it needs another
/// user (the kernel's decisions are the same programs and maps either way; a standalone run
/// loads its own programs, 10 s on 6.1 and 35 s on 6.12 in an emulated guest). Every other
/// standalone test (exit codes, lifecycle, concurrent runs, audit, flows) runs on both.
/// `--full` runs every scenario both ways on both kernels.
fn suite_args(_series: Series) -> &'static [&'static str] {
    &["--scenarios-once"]
}

/// The systemd boot runs a few tests: a guest stuck in it fails sooner than the whole suite.
const SYSTEMD_TIMEOUT: Duration = Duration::from_secs(900);

fn release_binaries() -> Result<Binaries> {
    Ok(Binaries {
        gate: workspace::release_binary("gate", "gate-userspace should provide the `gate` binary")?,
        kernel_tests: workspace::release_binary("gate-kernel-tests", TESTS_CRATE_HINT)?,
        probe: workspace::release_binary("gate-probe", TESTS_CRATE_HINT)?,
    })
}

fn guest_suite(
    env: &Environment,
    series: Series,
    boot: Boot,
    binaries: &Binaries,
    options: &Options,
) -> Result<Verdict> {
    let timeout = options.timeout;
    let guest = env.guest(series).guest();
    let repo = paths::repo_root();
    let mut command = vec![
        path_arg(&binaries.kernel_tests),
        "--gate".into(),
        path_arg(&binaries.gate),
        "--probe".into(),
        path_arg(&binaries.probe),
        "--repo".into(),
        path_arg(&repo),
    ];
    let systemd = matches!(boot, Boot::Systemd);
    if systemd {
        command.push("--systemd".into());
    } else if !options.full {
        command.extend(suite_args(series).iter().map(|a| (*a).to_owned()));
    }
    let options = RunOptions {
        icount: false,
        timeout: if systemd {
            timeout.min(SYSTEMD_TIMEOUT)
        } else {
            timeout
        },
        env: Vec::new(),
        cwd: Some(repo),
        shares: guest::project_shares()?,
        append: None,
        systemd,
    };
    let outcome = guest::run(&guest, &options, &command)?;
    Ok(match outcome.exit_code {
        0 => Verdict::Passed,
        code => Verdict::Failed(format!(
            "gate-kernel-tests{} exited with {code}",
            if systemd { " --systemd" } else { "" }
        )),
    })
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn not_run(series: &Series, boot: Boot, why: &str) -> SuiteResult {
    SuiteResult {
        name: boot.suite_name(*series),
        verdict: Verdict::NotRun(why.to_owned()),
        duration: Duration::ZERO,
    }
}

fn timed(name: &str, suite: impl FnOnce() -> Result<Verdict>) -> SuiteResult {
    let started = Instant::now();
    let verdict = suite().unwrap_or_else(|error| {
        eprintln!("error: {name}: {error:#}");
        Verdict::Failed(error.to_string())
    });
    SuiteResult {
        name: name.to_owned(),
        verdict,
        duration: started.elapsed(),
    }
}

fn banner(message: &str) {
    let rule = "!".repeat(message.len() + 6);
    println!("\n{rule}\n!! {message} !!\n{rule}");
}

fn skip_guests_requested() -> bool {
    std::env::var(SKIP_GUESTS_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Prints the table and the final count; the exit code is failure if any suite failed.
fn report(results: &[SuiteResult], skipped_guests: bool) -> ExitCode {
    println!();
    println!("{:<14} {:<8} {:>9}  detail", "suite", "result", "duration");
    for r in results {
        let (result, detail) = match &r.verdict {
            Verdict::Passed => ("PASS", ""),
            Verdict::Failed(why) => ("FAIL", why.as_str()),
            Verdict::NotRun(why) => ("NOT RUN", why.as_str()),
        };
        let detail = detail.lines().next().unwrap_or_default();
        println!(
            "{:<14} {:<8} {:>8.1}s  {detail}",
            r.name,
            result,
            r.duration.as_secs_f64()
        );
    }
    // The rest of each failure's story (a stuck guest's last lines) under the table, where a
    // truncated log still shows it.
    for r in results {
        if let Verdict::Failed(why) = &r.verdict
            && why.lines().nth(1).is_some()
        {
            println!("\n{}: {why}", r.name);
        }
    }
    let passed = results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Passed))
        .count();
    let failed = results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Failed(_)))
        .count();
    if skipped_guests {
        banner(&format!(
            "KERNEL TESTS WERE NOT RUN ({SKIP_GUESTS_ENV}=1): BPF LSM enforcement is UNTESTED"
        ));
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
