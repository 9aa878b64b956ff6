//! Real workloads: third-party test suites (tests/workloads/*.toml), run unchanged as an
//! unprivileged agent, once unconfined and once confined under each shipped policy they name,
//! in the same boot. Every test that passes unconfined must pass confined, unless the workload
//! lists it under `[[intended]]` with the denial its policy exists for.
//!
//! Tests: `workload/NAME/unconfined` (the reference run: it must run and reach `min_passed`)
//! and `workload/NAME/POLICY` per policy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{Ctx, Failure, GateOpts, Notes, OrFail, Reporter, SCRATCH, TestResult};
use crate::events::Log;

/// The unprivileged user the workloads run as (added by the daemon tests' `ensure_users`;
/// its group has the same id).
const USER: &str = "gate-dev";
const UID: u32 = super::daemon::DEV_UID;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub description: String,
    /// A file that exists when the workload is installed.
    pub requires: PathBuf,
    /// The Debian package that provides it (`cargo xtask setup` installs it).
    pub package: String,
    /// argv; `${results}` is the results file, `${workspace}` the workspace.
    pub command: Vec<String>,
    /// Format of the results file: "junit".
    pub results: String,
    pub min_passed: usize,
    /// Seconds one run may take.
    pub timeout: u64,
    /// Shipped policies, relative to the repository.
    pub policies: Vec<String>,
    /// The policies a kernel series ("6.1") runs the workload under, when not all of them:
    /// each confined run costs minutes in an emulated guest, and between them the kernels
    /// of `cargo xtask test` run every policy.
    #[serde(default)]
    pub kernels: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub intended: Vec<Intended>,
}

/// A test that passes unconfined and is meant to fail confined.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intended {
    /// The policy it fails under ("*": every policy).
    pub policy: String,
    /// Test id, or a prefix of ids ending in `*`.
    pub test: String,
    /// The denial, and why the policy makes it.
    pub reason: String,
    /// The rule of the denial that must be in the confined run's records.
    pub rule: String,
}

impl Workload {
    /// Whether the kernel series `series` runs the workload under `policy`.
    fn runs_on(&self, series: &str, policy: &str) -> bool {
        self.kernels
            .get(series)
            .is_none_or(|list| list.iter().any(|p| p == policy))
    }
}

/// The running kernel's series: "6.12" for 6.12.57-amd64.
fn kernel_series() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    release
        .trim()
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".")
}

impl Intended {
    fn covers(&self, policy: &str, id: &str) -> bool {
        (self.policy == "*" || self.policy == policy)
            && match self.test.strip_suffix('*') {
                Some(prefix) => id.starts_with(prefix),
                None => id == self.test,
            }
    }
}

/// The outcome of one test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Passed,
    Skipped,
    Failed,
}

/// Per-test results of one run.
#[derive(Debug, Default)]
pub struct Results {
    pub tests: BTreeMap<String, Verdict>,
    /// Tests the file records without a name (a test whose subtests failed).
    pub unnamed: usize,
}

impl Results {
    pub fn count(&self, v: Verdict) -> usize {
        self.tests.values().filter(|x| **x == v).count()
    }

    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} skipped, {} failed{}",
            self.count(Verdict::Passed),
            self.count(Verdict::Skipped),
            self.count(Verdict::Failed),
            if self.unnamed > 0 {
                format!(", {} unnamed failures", self.unnamed)
            } else {
                String::new()
            }
        )
    }
}

/// Reads a JUnit XML file as CPython's regrtest writes it (`--junit-xml`): one `testcase` per
/// test, named by its id; a child `error` or `failure` means failed, `skipped` skipped.
pub fn parse_junit(text: &str) -> Result<Results, String> {
    let doc = roxmltree::Document::parse(text).map_err(|e| format!("not XML: {e}"))?;
    let mut r = Results::default();
    for case in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
        let Some(name) = case.attribute("name") else {
            r.unnamed += 1;
            continue;
        };
        let child = |tag: &str| case.children().any(|c| c.has_tag_name(tag));
        let v = if child("error") || child("failure") {
            Verdict::Failed
        } else if child("skipped") {
            Verdict::Skipped
        } else {
            Verdict::Passed
        };
        // A name seen twice (a test re-run) keeps its worst outcome.
        let e = r.tests.entry(name.to_string()).or_insert(v);
        *e = (*e).max(v);
    }
    Ok(r)
}

/// Tests that passed in `reference` and did not in `confined`, split into those `intended`
/// covers for `policy` and the rest.
pub fn regressions<'a>(
    reference: &'a Results,
    confined: &Results,
    policy: &str,
    intended: &[Intended],
) -> (Vec<&'a str>, Vec<&'a str>) {
    let (mut meant, mut lost) = (Vec::new(), Vec::new());
    for (id, v) in &reference.tests {
        if *v != Verdict::Passed || confined.tests.get(id) == Some(&Verdict::Passed) {
            continue;
        }
        if intended.iter().any(|i| i.covers(policy, id)) {
            meant.push(id.as_str());
        } else {
            lost.push(id.as_str());
        }
    }
    (meant, lost)
}

fn dir() -> PathBuf {
    Path::new(SCRATCH).join("workloads")
}

fn load(repo: &Path) -> Vec<(String, Result<Workload, String>)> {
    let wdir = repo.join("tests/workloads");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&wdir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let w = std::fs::read_to_string(&p)
                .map_err(|e| format!("read {}: {e}", p.display()))
                .and_then(|t| toml::from_str(&t).map_err(|e| format!("{}: {e}", p.display())));
            (name, w)
        })
        .collect()
}

fn policy_name(p: &str) -> String {
    Path::new(p)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.to_string())
}

fn test_names(name: &str, w: &Result<Workload, String>) -> Vec<String> {
    let mut v = vec![format!("workload/{name}/unconfined")];
    if let Ok(w) = w {
        v.extend(
            w.policies
                .iter()
                .map(|p| format!("workload/{name}/{}", policy_name(p))),
        );
    }
    v
}

pub fn list(repo: &Path, rep: &mut Reporter) {
    for (name, w) in load(repo) {
        for t in test_names(&name, &w) {
            rep.wants(&t);
        }
    }
}

/// One run: its results and how long it took.
struct Run {
    results: Results,
    took: Duration,
}

fn subst(arg: &str, results: &Path, ws: &Path) -> String {
    arg.replace("${results}", &results.display().to_string())
        .replace("${workspace}", &ws.display().to_string())
}

/// A fresh workspace owned by the workload's user.
fn workspace(name: &str, run: &str) -> Result<PathBuf, Failure> {
    let ws = dir().join(name).join(run);
    super::remove_tree(&ws);
    std::fs::create_dir_all(&ws).or_fail(&format!("mkdir {}", ws.display()))?;
    for d in ws.ancestors().take_while(|d| d.starts_with(SCRATCH)) {
        use std::os::unix::fs::PermissionsExt;
        if d == ws {
            std::os::unix::fs::chown(d, Some(UID), Some(UID)).or_fail("chown workspace")?;
        } else {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .or_fail("chmod 0755")?;
        }
    }
    Ok(ws)
}

fn read_results(w: &Workload, file: &Path) -> Result<Results, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::new(format!("no results file {}: {e}", file.display())))?;
    match w.results.as_str() {
        "junit" => parse_junit(&text).map_err(|e| Failure::new(format!("{}: {e}", file.display()))),
        other => Err(Failure::new(format!("unknown results format {other:?}"))),
    }
}

fn run_unconfined(ctx: &Ctx, name: &str, w: &Workload) -> Result<Run, Failure> {
    let ws = workspace(name, "unconfined")?;
    let results = ws.join("results.xml");
    let mut argv: Vec<String> = vec![
        "/usr/bin/setpriv".into(),
        format!("--reuid={UID}"),
        format!("--regid={UID}"),
        "--init-groups".into(),
        "--".into(),
    ];
    argv.extend(w.command.iter().map(|a| subst(a, &results, &ws)));
    let cmd = ctx
        .plain_cmd(&argv, &ws)
        .env(
            "HOME",
            &super::daemon::user_home(USER).display().to_string(),
        )
        .timeout(Duration::from_secs(w.timeout));
    let start = Instant::now();
    let out = cmd.run();
    let took = start.elapsed();
    let results = read_results(w, &results).map_err(|f| f.command(&cmd, &out))?;
    if results.count(Verdict::Passed) < w.min_passed {
        return Err(Failure::new(format!(
            "only {} tests passed unconfined, fewer than the floor of {} ({}): the workload \
             is not set up right in this guest",
            results.count(Verdict::Passed),
            w.min_passed,
            results.summary()
        ))
        .command(&cmd, &out));
    }
    Ok(Run { results, took })
}

fn run_confined(
    ctx: &Ctx,
    name: &str,
    w: &Workload,
    policy: &str,
    reference: &Run,
    notes: &mut Notes,
) -> TestResult {
    let pname = policy_name(policy);
    let ws = workspace(name, &pname)?;
    let results = ws.join("results.xml");
    let log = dir().join(name).join(format!("{pname}.jsonl"));
    let _ = std::fs::remove_file(&log);
    let o = GateOpts {
        policy: ctx.repo.join(policy),
        workspace: ws.clone(),
        log: log.clone(),
        mode: None,
        timeout: Duration::from_secs(w.timeout),
        extra: Vec::new(),
        user: Some(USER.into()),
    };
    let argv: Vec<String> = w.command.iter().map(|a| subst(a, &results, &ws)).collect();
    let cmd = ctx.gate_cmd(&o, &argv);
    let start = Instant::now();
    let out = cmd.run();
    let took = start.elapsed();
    let audit = Log::read(&log);
    let confined = read_results(w, &results).map_err(|f| f.command(&cmd, &out))?;
    let (meant, lost) = regressions(&reference.results, &confined, &pname, &w.intended);

    notes.push(format!(
        "unconfined: {} in {:.0} s; confined: {} in {:.0} s ({:+.1} % wall, TCG)",
        reference.results.summary(),
        reference.took.as_secs_f64(),
        confined.summary(),
        took.as_secs_f64(),
        (took.as_secs_f64() / reference.took.as_secs_f64().max(0.001) - 1.0) * 100.0,
    ));
    let denials = denial_counts(&audit);
    if !denials.is_empty() {
        notes.push(format!(
            "denials: {}",
            denials
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for id in &meant {
        if let Some(i) = w.intended.iter().find(|i| i.covers(&pname, id)) {
            notes.push(format!("intended: {id}: {} (rule {})", i.reason, i.rule));
        }
    }

    if !lost.is_empty() {
        let mut f = Failure::new(format!(
            "{} tests that pass unconfined do not pass under {pname}",
            lost.len()
        ));
        for id in lost.iter().take(40) {
            f = f.detail(format!(
                "{id}: {:?} confined",
                confined.tests.get(*id).copied()
            ));
        }
        return Err(f.command(&cmd, &out).log(&log, &audit));
    }
    // Every intended denial that happened must show its rule in the records.
    let rules: BTreeSet<&str> = audit
        .lines
        .iter()
        .filter(|l| l.get("decision").and_then(|d| d.as_str()) == Some("deny"))
        .filter_map(|l| l.get("rule").and_then(|r| r.as_str()))
        .collect();
    for i in &w.intended {
        let used = meant.iter().any(|id| i.covers(&pname, id));
        if used && !rules.contains(i.rule.as_str()) {
            return Err(Failure::new(format!(
                "tests listed as intended denials ({}) failed, but the records have no denial \
                 by rule {}",
                i.test, i.rule
            ))
            .log(&log, &audit));
        }
    }
    Ok(())
}

/// `op rule` → number of denial records.
fn denial_counts(log: &Log) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in &log.lines {
        if l.get("decision").and_then(|d| d.as_str()) != Some("deny") {
            continue;
        }
        let s = |k: &str| l.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
        *m.entry(format!("{} {}", s("op"), s("rule"))).or_insert(0) += 1;
    }
    m
}

pub fn run_all(ctx: &Ctx, rep: &mut Reporter) {
    for (name, w) in load(&ctx.repo) {
        let names = test_names(&name, &w);
        if !names.iter().any(|n| rep.selected(n)) {
            continue;
        }
        let w = match w {
            Ok(w) => w,
            Err(e) => {
                rep.record(&names[0], Err(Failure::new(e)));
                continue;
            }
        };
        if !w.requires.exists() {
            let f = Failure::new(format!(
                "{} is missing: the workload needs Debian's {} (`cargo xtask setup` installs it)",
                w.requires.display(),
                w.package
            ));
            rep.record(&names[0], Err(f));
            continue;
        }
        if let Err(f) = super::daemon::ensure_users(ctx) {
            rep.record(&names[0], Err(f));
            continue;
        }
        let reference = run_unconfined(ctx, &name, &w);
        let reference = match reference {
            Ok(r) => {
                let note = format!(
                    "{} in {:.0} s — {}",
                    r.results.summary(),
                    r.took.as_secs_f64(),
                    w.description
                );
                rep.record_with_notes(&names[0], Ok(()), &[note]);
                r
            }
            Err(f) => {
                rep.record(&names[0], Err(f));
                continue;
            }
        };
        let series = kernel_series();
        for (policy, tname) in w.policies.iter().zip(&names[1..]) {
            if rep.wants(tname) && w.runs_on(&series, policy) {
                let mut notes = Notes::new();
                let r = run_confined(ctx, &name, &w, policy, &reference, &mut notes);
                rep.record_with_notes(tname, r, &notes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<testsuites><testsuite tests="4">
        <testcase name="a.T.ok" status="run" result="completed" time="0.1"/>
        <testcase name="a.T.skip" status="run" result="completed"><skipped>no</skipped></testcase>
        <testcase name="a.T.fail" status="run" result="completed"><failure type="X">m</failure></testcase>
        <testcase name="a.T.err" status="run" result="completed"><error type="X">m</error></testcase>
        <testcase/>
    </testsuite></testsuites>"#;

    #[test]
    fn junit_verdicts() {
        let r = parse_junit(XML).unwrap();
        assert_eq!(r.tests["a.T.ok"], Verdict::Passed);
        assert_eq!(r.tests["a.T.skip"], Verdict::Skipped);
        assert_eq!(r.tests["a.T.fail"], Verdict::Failed);
        assert_eq!(r.tests["a.T.err"], Verdict::Failed);
        assert_eq!(r.unnamed, 1);
        assert!(parse_junit("<testsuites>").is_err());
    }

    #[test]
    fn regressions_split_intended_from_lost() {
        let reference = parse_junit(XML).unwrap();
        let mut confined = Results::default();
        confined.tests.insert("a.T.skip".into(), Verdict::Passed);
        let intended = vec![Intended {
            policy: "coding-agent".into(),
            test: "a.T.o*".into(),
            reason: "r".into(),
            rule: "x".into(),
        }];
        let (meant, lost) = regressions(&reference, &confined, "coding-agent", &intended);
        assert_eq!(meant, vec!["a.T.ok"]);
        assert!(lost.is_empty());
        let (meant, lost) = regressions(&reference, &confined, "ci-runner", &intended);
        assert!(meant.is_empty());
        assert_eq!(lost, vec!["a.T.ok"]);
    }

    #[test]
    fn shipped_workloads_parse() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let all = load(&repo);
        assert!(!all.is_empty());
        for (name, w) in all {
            let w = w.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(w.command.iter().any(|a| a.contains("${results}")), "{name}");
            for p in &w.policies {
                assert!(repo.join(p).is_file(), "{name}: {p}");
                let kernels = w.kernels.values().filter(|l| l.contains(p)).count();
                assert!(
                    w.kernels.is_empty() || kernels > 0,
                    "{name}: no kernel runs {p}"
                );
            }
            for list in w.kernels.values() {
                assert!(
                    list.iter().all(|p| w.policies.contains(p)),
                    "{name}: {list:?}"
                );
            }
        }
    }
}
