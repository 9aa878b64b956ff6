//! Batches of steps inside one `gate run`.
//!
//! Loading gate's programs takes tens of seconds in a TCG guest (the verifier runs emulated), so
//! the suite does not start one `gate run` per step. Instead the runner writes a [`Plan`] and
//! runs `gate run … -- <copy of gate-kernel-tests> --driver PLAN`; the driver, confined like any
//! command, runs the steps one after the other and prints one [`RESULT_PREFIX`] line per step
//! with its status, output and the pid of the process it started.
//!
//! Every step begins with an exec by that pid, and gate logs every exec (allowed or denied) in
//! the order the kernel saw them; the steps run one after the other. So a step's events are the
//! log's decisions from its first exec up to the next step's ([`crate::events::Log::segments`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::outcome::{Outcome, Status};
use crate::run::Cmd;

/// Prefix of a result line on the driver's stdout.
pub const RESULT_PREFIX: &str = "GATE-TESTS-RESULT ";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlanStep {
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub timeout_secs: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<PlanStep>,
}

/// What the driver reports for one step.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepResult {
    pub index: usize,
    /// Pid of the process the step started (its first exec is logged with it).
    #[serde(default)]
    pub pid: Option<u32>,
    /// CLOCK_MONOTONIC (ns) just before the step started and just after it ended.
    pub t0: u64,
    pub t1: u64,
    /// `exit:N`, `signal N` or `timeout`.
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

impl StepResult {
    pub fn outcome(&self) -> Outcome {
        Outcome {
            status: self.status.parse().unwrap_or(Status::Exited(-1)),
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: t is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Runs a plan, printing one result line per step. Returns how many steps ran.
pub fn run_plan(plan: &Plan) -> usize {
    use std::io::Write;
    for (index, step) in plan.steps.iter().enumerate() {
        let cmd = Cmd::new(&step.argv)
            .cwd(&step.cwd)
            .timeout(Duration::from_secs(step.timeout_secs));
        let t0 = monotonic_ns();
        let (pid, o) = match cmd.spawn() {
            Ok(mut bg) => (Some(bg.pid() as u32), bg.finish()),
            Err(e) => (
                None,
                Outcome {
                    status: Status::Exited(127),
                    stdout: String::new(),
                    stderr: e,
                },
            ),
        };
        let t1 = monotonic_ns();
        let r = StepResult {
            index,
            pid,
            t0,
            t1,
            status: o.status.to_string(),
            stdout: o.stdout,
            stderr: o.stderr,
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{RESULT_PREFIX}{}",
            serde_json::to_string(&r).unwrap_or_default()
        );
        let _ = out.flush();
    }
    plan.steps.len()
}

/// The result lines in a driver's output, by step index.
pub fn parse_results(stdout: &str) -> Vec<StepResult> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(RESULT_PREFIX))
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect()
}

/// The runner's `--driver PLAN` mode.
pub fn main(plan_path: &std::path::Path) -> i32 {
    let plan: Plan = match std::fs::read_to_string(plan_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "gate-tests driver: cannot read plan {}: {e}",
                plan_path.display()
            );
            return 2;
        }
    };
    run_plan(&plan);
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_a_plan_and_reports_windows() {
        let plan = Plan {
            steps: vec![
                PlanStep {
                    argv: vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        "echo out; echo err >&2; exit 3".into(),
                    ],
                    cwd: "/".into(),
                    timeout_secs: 10,
                },
                PlanStep {
                    argv: vec!["/bin/sh".into(), "-c".into(), "kill -9 $$".into()],
                    cwd: "/tmp".into(),
                    timeout_secs: 10,
                },
                PlanStep {
                    argv: vec!["/bin/sleep".into(), "5".into()],
                    cwd: "/".into(),
                    timeout_secs: 1,
                },
            ],
        };
        // Run in a child process' worth of logic, capturing what it prints is not possible here,
        // so check the pieces: each step's result round-trips through a result line.
        let mut lines = String::new();
        let mut last_t1 = 0;
        for (index, step) in plan.steps.iter().enumerate() {
            let t0 = monotonic_ns();
            let o = Cmd::new(&step.argv)
                .cwd(&step.cwd)
                .timeout(Duration::from_secs(step.timeout_secs))
                .run();
            let t1 = monotonic_ns();
            assert!(t0 >= last_t1 && t1 >= t0);
            last_t1 = t1;
            let r = StepResult {
                index,
                pid: None,
                t0,
                t1,
                status: o.status.to_string(),
                stdout: o.stdout,
                stderr: o.stderr,
            };
            lines.push_str(&format!(
                "noise\n{RESULT_PREFIX}{}\n",
                serde_json::to_string(&r).unwrap()
            ));
        }
        let rs = parse_results(&lines);
        assert_eq!(rs.len(), 3);
        assert_eq!(rs[0].outcome().status, Status::Exited(3));
        assert_eq!(rs[0].outcome().stdout, "out\n");
        assert_eq!(rs[0].outcome().stderr, "err\n");
        assert_eq!(rs[1].outcome().status, Status::Signaled(9));
        assert_eq!(rs[2].outcome().status, Status::TimedOut);
    }

    #[test]
    fn plan_round_trips() {
        let p = Plan {
            steps: vec![PlanStep {
                argv: vec!["a".into()],
                cwd: "/w".into(),
                timeout_secs: 3,
            }],
        };
        let back: Plan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
