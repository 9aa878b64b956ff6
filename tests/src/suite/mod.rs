//! The kernel suite: shared context, failure reports, and the list of tests.
//!
//! Every test runs `gate run` for real, so this only works where BPF LSM is active (a guest
//! booted by `cargo xtask test`). Tests run one after the other; each gets its own directory
//! under [`SCRATCH`] and its own log file.

pub mod audit_overflow;
pub mod daemon;
pub mod flows;
pub mod lifecycle;
pub mod process_tree;
pub mod scenarios;
pub mod single;
pub mod systemd;
pub mod workloads;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::env::Env;
use crate::events::{EventMatcher, Log};
use crate::outcome::{Expect, Outcome};
use crate::run::Cmd;

/// Everything the suite creates lives under here (test policies name paths below it).
pub const SCRATCH: &str = "/tmp/gate-tests";

/// Seconds a `gate run` of a short command may take: loading the programs is slow under TCG.
pub const GATE_RUN_TIMEOUT: u64 = 600;

/// PATH for commands the suite runs: /usr/bin first, so the distribution's git and tools are used.
pub const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// `s` with everything but ASCII letters, digits and `-` replaced by `_`.
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What every test gets.
pub struct Ctx {
    pub gate: PathBuf,
    pub probe: PathBuf,
    pub repo: PathBuf,
    pub env: Env,
    /// One `gate run` per scenario step instead of one per batch.
    pub isolate: bool,
    /// Each scenario once (`--scenarios-once`): the standalone pass runs only the scenarios
    /// the pass through the daemon cannot (those of another user).
    pub scenarios_once: bool,
    /// Run `gate run` through a running daemon instead of with `--no-daemon`.
    pub via_daemon: Option<ViaDaemon>,
}

/// A daemon the suite's `gate run`s go through: its control socket and its audit stream.
#[derive(Clone, Debug)]
pub struct ViaDaemon {
    pub socket: PathBuf,
    pub log: PathBuf,
    /// The daemon's audit signing key.
    pub key: PathBuf,
}

impl Ctx {
    /// The audit stream a scenario's first `gate run` writes: the daemon's, or its own log.
    pub fn audit_log(&self, scratch: &Path) -> PathBuf {
        match &self.via_daemon {
            Some(v) => v.log.clone(),
            None => scratch.join("logs").join("run-1.jsonl"),
        }
    }

    /// The signing key of the audit stream a scenario's runs write: the daemon's, or the one
    /// `gate run` uses (`GATE_AUDIT_KEY`, which the guest sets, or gate's default).
    pub fn audit_key(&self) -> PathBuf {
        match &self.via_daemon {
            Some(v) => v.key.clone(),
            None => std::env::var_os("GATE_AUDIT_KEY")
                .map_or_else(|| PathBuf::from("/var/lib/gate/gate.key"), PathBuf::from),
        }
    }
}

/// Why a test failed: a one-line summary (`expected …, got …`) and details.
#[derive(Debug)]
pub struct Failure {
    pub summary: String,
    pub details: Vec<String>,
}

pub type TestResult = Result<(), Failure>;

impl Failure {
    pub fn new(summary: impl Into<String>) -> Self {
        Self {
            summary: summary.into(),
            details: Vec::new(),
        }
    }

    pub fn detail(mut self, line: impl Into<String>) -> Self {
        self.details.push(line.into());
        self
    }

    /// Adds the command and what it printed.
    pub fn command(mut self, cmd: &Cmd, o: &Outcome) -> Self {
        self.details.push(format!("command: {}", cmd.display()));
        self.details.push(format!("status: {}", o.status));
        push_block(&mut self.details, "stdout", &o.stdout);
        push_block(&mut self.details, "stderr", &o.stderr);
        self
    }

    /// Adds the decision lines of a log.
    pub fn log(mut self, path: &Path, log: &Log) -> Self {
        self.details.push(format!("log {}:", path.display()));
        for l in log.excerpt(20) {
            self.details.push(format!("  {l}"));
        }
        self
    }
}

fn push_block(out: &mut Vec<String>, what: &str, text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return;
    }
    out.push(format!("{what}:"));
    // Long output (a verifier log): its first lines say what failed, its last ones why.
    let (head, tail) = (8, 25);
    if lines.len() > head + tail + 1 {
        out.extend(lines[..head].iter().map(|l| format!("  {l}")));
        out.push(format!("  … {} lines", lines.len() - head - tail));
        out.extend(lines[lines.len() - tail..].iter().map(|l| format!("  {l}")));
    } else {
        out.extend(lines.iter().map(|l| format!("  {l}")));
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.summary)?;
        for d in &self.details {
            write!(f, "\n    {d}")?;
        }
        Ok(())
    }
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure::new(s)
    }
}

/// Turns a setup error into a failure.
pub trait OrFail<T> {
    fn or_fail(self, what: &str) -> Result<T, Failure>;
}

impl<T, E: fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, what: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(format!("setup: {what}: {e}")))
    }
}

/// Options of one `gate run`.
#[derive(Clone, Debug)]
pub struct GateOpts {
    pub policy: PathBuf,
    pub workspace: PathBuf,
    pub log: PathBuf,
    pub mode: Option<String>,
    pub timeout: Duration,
    /// More `gate run` options (`--ringbuf-bytes 65536`).
    pub extra: Vec<String>,
    /// `--user` (default root).
    pub user: Option<String>,
}

impl Ctx {
    /// A test policy shipped in `tests/scenarios/policies/`.
    pub fn test_policy(&self, name: &str) -> PathBuf {
        self.repo
            .join("tests/scenarios/policies")
            .join(format!("{name}.toml"))
    }

    pub fn home(&self) -> &str {
        &self.env.home
    }

    /// A fresh directory for one test: `SCRATCH/<group>/<slug>`, emptied first.
    pub fn fresh_dir(&self, group: &str, name: &str) -> Result<PathBuf, Failure> {
        let d = Path::new(SCRATCH).join(group).join(slug(name));
        remove_tree(&d);
        std::fs::create_dir_all(&d).or_fail(&format!("mkdir {}", d.display()))?;
        Ok(d)
    }

    /// Copies gate-probe into `dir` (so policies that only allow exec from the workspace allow it).
    pub fn install_probe(&self, dir: &Path) -> Result<PathBuf, Failure> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).or_fail(&format!("mkdir {}", dir.display()))?;
        let dst = dir.join("gate-probe");
        std::fs::copy(&self.probe, &dst).or_fail(&format!("copy probe to {}", dst.display()))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
            .or_fail("chmod probe")?;
        Ok(dst)
    }

    /// Names of scenario results: `scenario`, or `via-daemon` when runs go through a daemon.
    pub fn scenario_prefix(&self) -> &'static str {
        if self.via_daemon.is_some() {
            "via-daemon"
        } else {
            "scenario"
        }
    }

    /// The agent name a run through the daemon gets: from its log's path below SCRATCH, so
    /// its records can be found in the daemon's stream.
    fn daemon_agent_name(o: &GateOpts) -> String {
        let rel = o.log.strip_prefix(SCRATCH).unwrap_or(&o.log);
        let mut n = slug(&rel.with_extension("").to_string_lossy());
        if n.len() > 60 {
            n = n.split_off(n.len() - 60);
        }
        format!("t-{}", n.trim_start_matches('_'))
    }

    /// `gate run …opts… -- argv`, run in the workspace with HOME and PATH set.
    pub fn gate_cmd(&self, o: &GateOpts, argv: &[String]) -> Cmd {
        let mut a: Vec<String> = vec![
            self.gate.display().to_string(),
            "run".into(),
            "--policy".into(),
            o.policy.display().to_string(),
            "--workspace".into(),
            o.workspace.display().to_string(),
        ];
        match &self.via_daemon {
            // Through the daemon: as the caller (root here), the records in the host's
            // stream under the agent's name.
            Some(_) => a.extend(["--name".into(), Self::daemon_agent_name(o)]),
            // The suite's agents run as root (it tests what root can and cannot do); runs
            // through the daemon and as other users have tests of their own.
            None => a.extend([
                "--log".into(),
                o.log.display().to_string(),
                "--user".into(),
                o.user.clone().unwrap_or_else(|| "root".into()),
                "--no-daemon".into(),
            ]),
        }
        if let Some(m) = &o.mode {
            a.push("--mode".into());
            a.push(m.clone());
        }
        a.extend(o.extra.iter().cloned());
        a.push("--".into());
        a.extend(argv.iter().cloned());
        let mut cmd = self.plain_cmd(&a, &o.workspace).timeout(o.timeout);
        if let Some(v) = &self.via_daemon {
            cmd = cmd.env("GATE_SOCKET", &v.socket.display().to_string());
        }
        cmd
    }

    /// After a run through the daemon: waits until the daemon recorded the agent's end, then
    /// writes the agent's records from the host's stream to the run's own log (`o.log`), so
    /// the checks read them as they read a `gate run --log` file.
    pub fn collect_daemon_log(&self, o: &GateOpts) -> TestResult {
        let Some(v) = &self.via_daemon else {
            return Ok(());
        };
        let name = Self::daemon_agent_name(o);
        let mine = |l: &serde_json::Value| l.get("agent").and_then(|a| a.as_str()) == Some(&name);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let log = Log::read(&v.log);
            let ended = log
                .lines
                .iter()
                .any(|l| mine(l) && l.get("kind").and_then(|k| k.as_str()) == Some("stop"));
            if ended {
                let text: String = log
                    .lines
                    .iter()
                    .filter(|l| mine(l))
                    .map(|l| format!("{l}\n"))
                    .collect();
                if let Some(d) = o.log.parent() {
                    std::fs::create_dir_all(d).or_fail("mkdir log dir")?;
                }
                return std::fs::write(&o.log, text).or_fail("write the run's records");
            }
            if std::time::Instant::now() >= deadline {
                return Err(Failure::new(format!(
                    "the daemon's stream {} has no stop record for agent {name} 30 s after its \
                     command ended",
                    v.log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A command run outside gate, with the same environment as confined ones.
    pub fn plain_cmd(&self, argv: &[String], cwd: &Path) -> Cmd {
        Cmd::new(argv)
            .cwd(cwd)
            .env("HOME", self.home())
            .env("PATH", PATH)
    }

    /// Runs `argv` under gate and checks the outcome and, optionally, one event in the log.
    pub fn expect_gate(
        &self,
        o: &GateOpts,
        argv: &[String],
        expect: &Expect,
        event: Option<&EventMatcher>,
    ) -> TestResult {
        let _ = std::fs::remove_file(&o.log);
        let cmd = self.gate_cmd(o, argv);
        let out = cmd.run();
        self.collect_daemon_log(o)?;
        let log = Log::read(&o.log);
        if !expect.matches(&out) {
            return Err(
                Failure::new(format!("expected {expect}, got {}", out.summary()))
                    .command(&cmd, &out)
                    .log(&o.log, &log),
            );
        }
        if let Some(m) = event
            && log.find(m).is_none()
        {
            return Err(
                Failure::new(format!("expected event {m} in the log, found none"))
                    .command(&cmd, &out)
                    .log(&o.log, &log),
            );
        }
        Ok(())
    }

    /// Runs `argv` outside gate and requires success.
    pub fn expect_unconfined_ok(&self, argv: &[String], cwd: &Path) -> TestResult {
        let cmd = self.plain_cmd(argv, cwd);
        let out = cmd.run();
        if Expect::Ok.matches(&out) {
            Ok(())
        } else {
            Err(Failure::new(format!(
                "expected ok when run outside gate, got {}",
                out.summary()
            ))
            .command(&cmd, &out))
        }
    }
}

/// Removes a directory tree, unmounting nothing (scenarios unmount in their teardown).
pub fn remove_tree(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}

/// Files every test relies on: fake secrets in HOME, a tool the test policies deny.
pub fn prepare(ctx: &Ctx) -> Result<(), String> {
    let home = Path::new(ctx.home());
    let w = |p: PathBuf, text: &str| -> Result<(), String> {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        std::fs::write(&p, text).map_err(|e| format!("write {}: {e}", p.display()))
    };
    w(
        home.join(".ssh/id_rsa"),
        "-----BEGIN FAKE KEY (gate tests)-----\n",
    )?;
    w(
        home.join(".ssh/authorized_keys"),
        "ssh-ed25519 AAAAfake gate-tests\n",
    )?;
    w(home.join(".bashrc"), "# gate tests\n")?;
    w(home.join(".profile"), "# gate tests\n")?;
    std::fs::create_dir_all(SCRATCH).map_err(|e| format!("mkdir {SCRATCH}: {e}"))?;
    let tools = Path::new(SCRATCH).join("tools");
    std::fs::create_dir_all(&tools).map_err(|e| format!("mkdir {}: {e}", tools.display()))?;
    let tool = tools.join("denied-tool");
    if !tool.exists() {
        std::fs::copy("/usr/bin/true", &tool).map_err(|e| format!("copy /usr/bin/true: {e}"))?;
    }
    Ok(())
}

/// Prints results as they come and counts them.
pub struct Reporter {
    pub passed: usize,
    pub failed: usize,
    filters: Vec<String>,
    /// Tests whose name contains one of these are not run (`--skip`).
    skips: Vec<String>,
    list_only: bool,
    /// When the previous result was printed: each line shows the time since, so a slow test
    /// stands out in a guest log.
    last: std::time::Instant,
}

impl Reporter {
    pub fn new(filters: Vec<String>, list_only: bool) -> Self {
        Self {
            passed: 0,
            failed: 0,
            filters,
            skips: Vec::new(),
            list_only,
            last: std::time::Instant::now(),
        }
    }

    /// Leaves out tests whose name contains one of `skips`, whatever the filters select.
    pub fn skipping(mut self, skips: Vec<String>) -> Self {
        self.skips = skips;
        self
    }

    /// Whether the filters select `name` and no skip pattern leaves it out.
    fn matches(&self, name: &str) -> bool {
        (self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str())))
            && !self.skips.iter().any(|s| name.contains(s.as_str()))
    }

    /// Whether a test with this name should run.
    /// Whether the filters select `name` (without listing it).
    pub fn selected(&self, name: &str) -> bool {
        !self.list_only && self.matches(name)
    }

    pub fn wants(&self, name: &str) -> bool {
        let selected = self.matches(name);
        if selected && self.list_only {
            println!("{name}");
            return false;
        }
        selected
    }

    pub fn record(&mut self, name: &str, r: TestResult) {
        self.record_with_notes(name, r, &[]);
    }

    /// Records a result, then notes that explain it (indented, not results themselves).
    pub fn record_with_notes(&mut self, name: &str, r: TestResult, notes: &[String]) {
        use std::io::Write;
        let took = self.last.elapsed().as_secs_f64();
        self.last = std::time::Instant::now();
        match r {
            Ok(()) => {
                self.passed += 1;
                println!("PASS {name} [{took:.1}s]");
            }
            Err(f) => {
                self.failed += 1;
                println!("FAIL {name} [{took:.1}s]: {f}");
            }
        }
        for n in notes {
            println!("    note: {n}");
        }
        let _ = std::io::stdout().flush();
    }
}

/// Notes a test leaves for the report (which of several acceptable outcomes happened, …).
pub type Notes = Vec<String>;

/// A test written in Rust.
pub type TestFn = fn(&Ctx, &mut Notes) -> TestResult;

/// Every Rust test, in the order they run.
pub fn rust_tests() -> Vec<(&'static str, TestFn)> {
    let mut v = Vec::new();
    v.extend(single::tests());
    v.extend(process_tree::tests());
    v.extend(lifecycle::tests());
    v.extend(audit_overflow::tests());
    v.extend(flows::tests());
    // Last: they add users (bind mounts over /etc/passwd and /etc/group) for the boot.
    v.extend(daemon::tests());
    v
}

/// The tests of the systemd boot (`--systemd`): gate.service under the host's systemd as PID
/// 1. They run there only, and nothing else runs there.
pub fn systemd_tests() -> Vec<(&'static str, TestFn)> {
    systemd::tests()
}

/// Lists the systemd boot's test names.
pub fn list_systemd(rep: &mut Reporter) {
    for (name, _) in systemd_tests() {
        rep.wants(name);
    }
}

/// Runs the systemd boot's tests.
pub fn run_systemd(ctx: &Ctx, rep: &mut Reporter) {
    run_tests(ctx, rep, systemd_tests());
}

fn run_tests(ctx: &Ctx, rep: &mut Reporter, tests: Vec<(&'static str, TestFn)>) {
    for (name, f) in tests {
        if rep.wants(name) {
            let mut notes = Notes::new();
            let r = f(ctx, &mut notes);
            rep.record_with_notes(name, r, &notes);
        }
    }
}

/// Lists test names (scenario steps from their files) without running anything.
pub fn list(repo: &Path, rep: &mut Reporter) {
    scenarios::list(repo, rep);
    for (name, _) in rust_tests() {
        rep.wants(name);
    }
    workloads::list(repo, rep);
}

/// Runs everything: scenarios first (the real workload), then the Rust tests.
pub fn run_all(ctx: &Ctx, rep: &mut Reporter) {
    scenarios::run_all(ctx, rep);
    run_tests(ctx, rep, rust_tests());
    // Last: the scenarios again, every `gate run` through a daemon.
    daemon::scenarios_through_the_daemon(ctx, rep);
    // Then third-party test suites, unconfined and under each shipped policy.
    workloads::run_all(ctx, rep);
}
