//! `gate daemon`: one engine for many agents, runs through the control socket as the calling
//! user, refusals, 100 agents at once, kill -9, heartbeat lockdown, hot reload.
//!
//! Users for these tests are added by bind-mounting extended copies of /etc/passwd and
//! /etc/group (the guest's root file system is the host's, read-only): `gate-dev` (uid 4711,
//! in group `gate`) and `gate-out` (uid 4712, not in it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Ctx, Failure, Notes, OrFail, SCRATCH, TestFn, TestResult};
use crate::run::{Background, Cmd, wait_until};

pub fn tests() -> Vec<(&'static str, TestFn)> {
    vec![
        ("daemon/run-through-the-daemon-as-the-calling-user", as_user),
        (
            "daemon/refuses-users-outside-the-group-and-confined-callers",
            refusals,
        ),
        (
            "daemon/a-hundred-agents-each-with-its-own-policy",
            hundred_agents,
        ),
        ("daemon/reload-keeps-a-broken-policy-out", reload),
        (
            "daemon/a-full-disk-under-the-audit-stream-becomes-a-signed-gap",
            audit_disk_full,
        ),
        (
            "daemon/an-edited-policy-file-reloads-and-metrics-over-tcp",
            watch_and_metrics,
        ),
        ("daemon/heartbeat-lockdown-and-back", lockdown),
        (
            "daemon/kill-9-of-the-daemon-never-lets-a-write-through",
            kill_daemon,
        ),
        (
            "daemon/ask-reject-approve-and-expiry-enforced-by-the-kernel-after-kill-9",
            ask_round_trip,
        ),
        (
            "daemon/a-confined-root-agent-cannot-answer-its-own-request",
            root_self_approval,
        ),
        (
            "daemon/two-of-three-signed-approvals-replays-and-strangers-refused",
            signed_approvals,
        ),
        ("daemon/quotas-counted-by-the-kernel-per-window", quotas),
        (
            "daemon/network-flows-counted-and-reported-when-the-daemon-stops",
            flows,
        ),
        (
            "daemon/a-used-up-denial-budget-locks-the-agent-down-until-restored",
            trust_budget,
        ),
    ]
}

/// The scenario suites again, each `gate run` through a daemon (as root, the suite's
/// caller): the same steps and expectations, the records read from the daemon's stream.
pub fn scenarios_through_the_daemon(ctx: &Ctx, rep: &mut super::Reporter) {
    let via = Ctx {
        gate: ctx.gate.clone(),
        probe: ctx.probe.clone(),
        repo: ctx.repo.clone(),
        env: ctx.env.clone(),
        isolate: ctx.isolate,
        scenarios_once: ctx.scenarios_once,
        via_daemon: Some(super::ViaDaemon {
            socket: PathBuf::from(SOCKET),
            log: base().join("audit.jsonl"),
            key: base().join("audit.key"),
        }),
    };
    if !super::scenarios::any_selected(&via, rep) {
        return;
    }
    let _ = std::fs::remove_file(base().join("audit.jsonl"));
    let d = match Daemon::start(ctx, "") {
        Ok(d) => d,
        Err(f) => {
            rep.record("via-daemon/start the daemon", Err(f));
            return;
        }
    };
    super::scenarios::run_all(&via, rep);
    drop(d);
}

pub(crate) const DEV_UID: u32 = 4711;
const OUT_UID: u32 = 4712;
const GATE_GID: u32 = 4700;
const SOCKET: &str = "/run/gate-test/gate.sock";
const PIN_ROOT: &str = "/sys/fs/bpf/gate";

/// The daemon's pins: `host-v` and the kernel ABI version.
fn pins() -> String {
    format!("host-v{}", gate_common::ABI_VERSION)
}

fn base() -> PathBuf {
    Path::new(SCRATCH).join("daemon")
}

/// Where the test users run `gate` and `gate-probe` from: copies of the suite's binaries,
/// installed once per boot as `cargo xtask install` would (root-owned, mode 0755). The
/// build's own copies may be out of the users' reach (a clone under /root, mode 0700).
fn user_bin(name: &str) -> PathBuf {
    Path::new(SCRATCH).join("bin").join(name)
}

fn user_gate() -> String {
    user_bin("gate").display().to_string()
}

fn user_probe() -> String {
    user_bin("gate-probe").display().to_string()
}

/// The home directory of a test user.
pub(crate) fn user_home(name: &str) -> PathBuf {
    Path::new(SCRATCH).join("users").join(name)
}

/// Adds the test users and group, and installs the binaries they run, once per boot.
pub(crate) fn ensure_users(ctx: &Ctx) -> Result<(), Failure> {
    let etc = Path::new(SCRATCH).join("etc");
    if etc.join("done").exists() {
        return Ok(());
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
        let bin = user_bin("");
        std::fs::create_dir_all(&bin).or_fail("mkdir bin")?;
        for dir in [Path::new(SCRATCH), bin.as_path()] {
            mode(dir).or_fail("chmod 0755 bin dir")?;
        }
        for (from, name) in [(&ctx.gate, "gate"), (&ctx.probe, "gate-probe")] {
            std::fs::copy(from, user_bin(name)).or_fail(&format!("install {name}"))?;
            mode(&user_bin(name)).or_fail("chmod 0755 binary")?;
        }
    }
    std::fs::create_dir_all(&etc).or_fail("mkdir etc")?;
    let mut passwd = std::fs::read_to_string("/etc/passwd").or_fail("read /etc/passwd")?;
    let mut group = std::fs::read_to_string("/etc/group").or_fail("read /etc/group")?;
    for (name, uid) in [("gate-dev", DEV_UID), ("gate-out", OUT_UID)] {
        let home = user_home(name);
        std::fs::create_dir_all(&home).or_fail("mkdir home")?;
        std::os::unix::fs::chown(&home, Some(uid), Some(uid)).or_fail("chown home")?;
        let _ = writeln!(passwd, "{name}:x:{uid}:{uid}::{}:/bin/sh", home.display());
        let _ = writeln!(group, "{name}:x:{uid}:");
    }
    let _ = writeln!(group, "gate:x:{GATE_GID}:gate-dev");
    for (file, text) in [("passwd", &passwd), ("group", &group)] {
        let copy = etc.join(file);
        std::fs::write(&copy, text).or_fail("write etc copy")?;
        nix::mount::mount(
            Some(&copy),
            Path::new("/etc").join(file).as_path(),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .or_fail(&format!("bind-mount /etc/{file}"))?;
    }
    std::fs::write(etc.join("done"), "").or_fail("mark")?;
    Ok(())
}

/// A running daemon (SIGTERM and `gate unload` when dropped, so no test leaves programs
/// behind for the next).
struct Daemon {
    bg: Option<Background>,
    gate: PathBuf,
}

impl Daemon {
    fn start(ctx: &Ctx, extra: &str) -> Result<Daemon, Failure> {
        Self::start_in(ctx, extra, &base())
    }

    /// A daemon whose audit stream (log and key) is in `audit`.
    fn start_in(ctx: &Ctx, extra: &str, audit: &Path) -> Result<Daemon, Failure> {
        ensure_users(ctx)?;
        let dir = base();
        std::fs::create_dir_all(&dir).or_fail("mkdir daemon dir")?;
        let policies = ctx.repo.join("tests/scenarios/policies");
        let cfg = dir.join("gate.toml");
        let text = format!(
            "version = 1\n[daemon]\nsocket = \"{SOCKET}\"\ngroup = \"gate\"\n{extra}\n\
             [audit]\nlog = \"{d}/audit.jsonl\"\nkey = \"{d}/audit.key\"\n\
             [[allow]]\ngroup = \"gate\"\npolicies = [\"{p}/daemon-*.toml\"]\n",
            d = audit.display(),
            p = policies.display(),
        );
        std::fs::write(&cfg, text).or_fail("write gate.toml")?;
        let cmd = Cmd::new(&[
            ctx.gate.display().to_string(),
            "daemon".into(),
            "--config".into(),
            cfg.display().to_string(),
        ])
        .env("GATE_LOG", "info")
        .timeout(Duration::from_secs(3600));
        let mut bg = cmd.spawn()?;
        let ready = bg.wait_for_stdout_or_stderr("ready: enforcing", Duration::from_secs(600));
        if !ready {
            let o = bg.wait(Duration::from_secs(2));
            return Err(Failure::new("the daemon did not become ready").command(&cmd, &o));
        }
        Ok(Daemon {
            bg: Some(bg),
            gate: ctx.gate.clone(),
        })
    }

    fn pid(&self) -> i32 {
        self.bg.as_ref().map_or(0, |b| b.pid())
    }

    fn log(&self) -> String {
        self.bg.as_ref().map(|b| b.stderr()).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut bg) = self.bg.take() {
            bg.signal(libc::SIGCONT);
            bg.signal(libc::SIGTERM);
            let _ = bg.wait(Duration::from_secs(20));
        }
        let _ = Cmd::new(&[self.gate.display().to_string(), "unload".into()])
            .env("GATE_SOCKET", SOCKET)
            .run();
    }
}

/// `argv` as the user `uid` (with that user's groups), or as root for uid 0.
fn as_uid(uid: u32, argv: &[String]) -> Cmd {
    let mut a: Vec<String> = Vec::new();
    if uid != 0 {
        a.extend([
            "/usr/bin/setpriv".into(),
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--init-groups".into(),
            "--".into(),
        ]);
    }
    a.extend(argv.iter().cloned());
    Cmd::new(&a)
        .env("GATE_SOCKET", SOCKET)
        .env("PATH", super::PATH)
        .cwd("/")
}

fn gate_run(ctx: &Ctx, uid: u32, policy: &str, name: Option<&str>, script: &str) -> Cmd {
    let mut a = vec![
        user_gate(),
        "run".into(),
        "--policy".into(),
        ctx.test_policy(policy).display().to_string(),
    ];
    if let Some(n) = name {
        a.extend(["--name".into(), n.into()]);
    }
    a.extend(["--".into(), "/bin/sh".into(), "-c".into(), script.into()]);
    as_uid(uid, &a).timeout(Duration::from_secs(600))
}

/// Files A and B, writable by the test users.
fn targets() -> Result<(PathBuf, PathBuf), Failure> {
    let b = base();
    let (fa, fb) = (b.join("a/file"), b.join("b/file"));
    for f in [&fa, &fb] {
        let dir = f.parent().expect("has a parent");
        std::fs::create_dir_all(dir).or_fail("mkdir target")?;
        std::fs::write(f, "x\n").or_fail("write target")?;
        for p in [dir, f.as_path()] {
            std::os::unix::fs::chown(p, Some(DEV_UID), Some(GATE_GID)).or_fail("chown")?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).or_fail("chmod")?;
        }
    }
    Ok((fa, fb))
}

fn status_json(ctx: &Ctx) -> Result<serde_json::Value, Failure> {
    gate_json(ctx, "status")
}

/// `gate SUBCOMMAND --json` as root, parsed.
fn gate_json(ctx: &Ctx, sub: &str) -> Result<serde_json::Value, Failure> {
    let cmd = as_uid(
        0,
        &[ctx.gate.display().to_string(), sub.into(), "--json".into()],
    );
    let o = cmd.run();
    if o.code() != Some(0) {
        return Err(Failure::new(format!("gate {sub} failed")).command(&cmd, &o));
    }
    serde_json::from_str(&o.stdout).or_fail(&format!("gate {sub} --json output"))
}

fn as_user(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let d = Daemon::start(ctx, "")?;
    let (fa, fb) = targets()?;
    let p = user_probe();
    let script = format!(
        "echo UID=$(id -u); echo HOME=$HOME; echo A=$({p} open-write {}); echo B=$({p} open-write {})",
        fa.display(),
        fb.display()
    );
    let cmd = gate_run(ctx, DEV_UID, "daemon-a", Some("dev-a"), &script);
    let o = cmd.run();
    let fail = |m: &str| {
        Failure::new(m.to_string())
            .command(&cmd, &o)
            .detail(format!("daemon log:\n{}", d.log()))
    };
    if o.code() != Some(0) {
        return Err(fail("gate run through the daemon failed"));
    }
    for want in [
        format!("UID={DEV_UID}"),
        "A=ok".into(),
        "B=errno=EPERM".into(),
    ] {
        if !o.stdout.contains(&want) {
            return Err(fail(&format!("expected {want} in the command's output")));
        }
    }
    if !o
        .stderr
        .contains("confined by the gate daemon as agent dev-a")
    {
        return Err(fail("expected gate run to say which agent it is"));
    }
    // The agent is removed once its processes are gone, and its decisions are in the host's
    // stream under its name.
    let gone = wait_until(Duration::from_secs(30), || {
        status_json(ctx).is_ok_and(|s| {
            s["agents"]
                .as_array()
                .is_some_and(|a| a.iter().all(|x| x["name"] != "dev-a"))
        })
    });
    if !gone {
        return Err(fail("the ended agent is still listed by gate status"));
    }
    drop(d);
    let log = std::fs::read_to_string(base().join("audit.jsonl")).or_fail("read audit log")?;
    let deny = log.lines().any(|l| {
        l.contains("\"agent\":\"dev-a\"")
            && l.contains("\"rule\":\"deny-b\"")
            && l.contains("\"deny\"")
    });
    if !deny {
        return Err(Failure::new(
            "the host's audit stream has no deny-b decision of agent dev-a",
        ));
    }
    verify_stream(ctx)?;
    Ok(())
}

fn refusals(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let d = Daemon::start(ctx, "")?;
    let cmd = gate_run(ctx, OUT_UID, "daemon-a", None, "echo RAN");
    let o = cmd.run();
    if o.code() != Some(125)
        || o.stdout.contains("RAN")
        || !o.stderr.contains("members of the daemon's group")
    {
        return Err(Failure::new("a user outside group gate was not refused")
            .command(&cmd, &o)
            .detail(d.log()));
    }
    // A policy the config does not allow unprivileged users.
    let cmd = as_uid(
        DEV_UID,
        &[
            user_gate(),
            "run".into(),
            "--policy".into(),
            ctx.repo
                .join("policies/coding-agent.toml")
                .display()
                .to_string(),
            "--".into(),
            "/bin/true".into(),
        ],
    );
    let o = cmd.run();
    if o.code() != Some(125) || !o.stderr.contains("[[allow]]") {
        return Err(
            Failure::new("a policy outside the allowed ones was not refused").command(&cmd, &o),
        );
    }
    // A confined process must never be able to ask the daemon for anything: the kernel refuses
    // its connect (the socket is not its agent's), and the daemon would refuse it by cgroup.
    let script = format!("{} status; echo STATUS=$?", user_gate());
    let cmd = gate_run(ctx, DEV_UID, "daemon-a", None, &script);
    let o = cmd.run();
    if !o.stdout.contains("STATUS=1") || !o.stderr.contains("confined by gate") {
        return Err(Failure::new("a confined process talked to the daemon").command(&cmd, &o));
    }
    Ok(())
}

fn hundred_agents(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    let d = Daemon::start(ctx, "")?;
    let (fa, fb) = targets()?;
    let marks = base().join("marks100");
    super::remove_tree(&marks);
    std::fs::create_dir_all(&marks).or_fail("mkdir marks")?;
    std::os::unix::fs::chown(&marks, Some(DEV_UID), Some(GATE_GID)).or_fail("chown marks")?;
    let done = marks.join("done");
    // The agents wait on a FIFO with shell builtins only (a `sleep` loop in 100 agents is
    // hundreds of execs a second in a TCG guest): each `read` takes one line.
    let fifo = marks.join("wake");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666))
        .or_fail("mkfifo")?;
    std::os::unix::fs::chown(&fifo, Some(DEV_UID), Some(GATE_GID)).or_fail("chown fifo")?;
    let p = user_probe();
    let mut runs = Vec::new();
    for i in 0..100 {
        let policy = if i % 2 == 0 { "daemon-a" } else { "daemon-b" };
        let script = format!(
            "echo A=$({p} open-write {fa}) B=$({p} open-write {fb}) > {m}/r{i}.tmp; \
             mv {m}/r{i}.tmp {m}/r{i}; while [ ! -e {done} ]; do read x <> {fifo}; done",
            fa = fa.display(),
            fb = fb.display(),
            m = marks.display(),
            done = done.display(),
            fifo = fifo.display(),
        );
        let cmd = gate_run(ctx, DEV_UID, policy, Some(&format!("many-{i}")), &script);
        runs.push((i, cmd.spawn()?, cmd));
    }
    let all = wait_until(Duration::from_secs(600), || {
        (0..100).all(|i| marks.join(format!("r{i}")).exists())
    });
    let listed = status_json(ctx)?["agents"]
        .as_array()
        .map_or(0, |a| a.len());
    std::fs::write(&done, "").or_fail("create done")?;
    {
        // O_RDWR never blocks on a FIFO; one line per waiting agent, and some to spare.
        use std::io::Write;
        let mut w = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .or_fail("open fifo")?;
        w.write_all(&[b'\n'; 256]).or_fail("wake the agents")?;
    }
    if !all {
        let missing: Vec<i32> = (0..100)
            .filter(|i| !marks.join(format!("r{i}")).exists())
            .collect();
        let (_, bg, cmd) = runs
            .iter_mut()
            .find(|(i, _, _)| *i == missing[0])
            .expect("a missing run");
        let o = bg.wait(Duration::from_secs(5));
        return Err(Failure::new(format!(
            "{} agents never reported: {missing:?}",
            missing.len()
        ))
        .command(cmd, &o)
        .detail(d.log()));
    }
    if listed < 100 {
        return Err(Failure::new(format!(
            "gate status listed {listed} agents while 100 ran"
        )));
    }
    for (i, bg, cmd) in runs.iter_mut() {
        let got = std::fs::read_to_string(marks.join(format!("r{i}"))).unwrap_or_default();
        let want = if *i % 2 == 0 {
            "A=ok B=errno=EPERM"
        } else {
            "A=errno=EPERM B=ok"
        };
        if got.trim() != want {
            let o = bg.wait(Duration::from_secs(5));
            return Err(
                Failure::new(format!("agent many-{i}: expected {want:?}, got {got:?}"))
                    .command(cmd, &o),
            );
        }
    }
    for (_, bg, _) in runs.iter_mut() {
        let _ = bg.wait(Duration::from_secs(60));
    }
    notes.push(format!("{listed} agents were listed at once"));
    Ok(())
}

/// An agent (as root, through the daemon) that tries to write `target` once per step, when
/// the test says so, then waits for a last `go` before it ends (so it is still running while
/// the test looks at it).
struct Stepped {
    marks: PathBuf,
    bg: Background,
    cmd: Cmd,
}

impl Stepped {
    fn start(
        ctx: &Ctx,
        name: &str,
        policy: &Path,
        target: &Path,
        steps: u32,
    ) -> Result<Self, Failure> {
        let m = base().join(format!("marks-{name}"));
        super::remove_tree(&m);
        std::fs::create_dir_all(&m).or_fail("mkdir")?;
        let script = format!(
            "for step in $(seq {steps}); do while [ ! -e {m}/go$step ]; do sleep 0.1; done; \
             {p} open-write {t} > {m}/r$step.tmp 2>&1; mv {m}/r$step.tmp {m}/r$step; done; \
             while [ ! -e {m}/end ]; do sleep 0.1; done",
            m = m.display(),
            p = user_probe(),
            t = target.display()
        );
        let cmd = as_uid(
            0,
            &[
                ctx.gate.display().to_string(),
                "run".into(),
                "--policy".into(),
                policy.display().to_string(),
                "--name".into(),
                name.into(),
                "--".into(),
                "/bin/sh".into(),
                "-c".into(),
                script,
            ],
        );
        let bg = cmd.spawn()?;
        Ok(Stepped { marks: m, bg, cmd })
    }

    /// Lets step `n` run and returns what the write printed.
    fn step(&mut self, n: u32) -> Result<String, Failure> {
        let m = &self.marks;
        std::fs::write(m.join(format!("go{n}")), "").or_fail("go")?;
        if !self
            .bg
            .wait_for_file(&m.join(format!("r{n}")), Duration::from_secs(120))
        {
            return Err(Failure::new(format!("step {n} never ran")));
        }
        Ok(std::fs::read_to_string(m.join(format!("r{n}"))).unwrap_or_default())
    }

    /// Lets the agent end and waits for it.
    fn end(mut self) -> Result<(Cmd, crate::outcome::Outcome), Failure> {
        std::fs::write(self.marks.join("end"), "").or_fail("end")?;
        let o = self.bg.wait(Duration::from_secs(30));
        Ok((self.cmd, o))
    }
}

fn reload(ctx: &Ctx, _: &mut Notes) -> TestResult {
    // Explicit reloads only: the file watcher has a test of its own.
    let d = Daemon::start(ctx, "watch_policies = false")?;
    let (_, fb) = targets()?;
    let policy = base().join("reload.toml");
    let good = std::fs::read_to_string(ctx.test_policy("daemon-a")).or_fail("read daemon-a")?;
    std::fs::write(&policy, &good).or_fail("write reload.toml")?;
    let mut run = Stepped::start(ctx, "reloaded", &policy, &fb, 3)?;
    let r1 = run.step(1)?;
    // A broken policy: the reload is refused with the error's place, the old policy stays.
    std::fs::write(
        &policy,
        good.replace("decision = \"deny\"", "decision = \"perhaps\""),
    )
    .or_fail("write broken")?;
    let reload_cmd = as_uid(
        0,
        &[
            ctx.gate.display().to_string(),
            "reload".into(),
            "reloaded".into(),
        ],
    );
    let bad = reload_cmd.run();
    let r2 = run.step(2)?;
    // A good one without the deny: the next attempt sees it.
    std::fs::write(
        &policy,
        good.replace("decision = \"deny\"", "decision = \"allow\""),
    )
    .or_fail("write good")?;
    let ok = reload_cmd.run();
    let r3 = run.step(3)?;
    let (cmd, o) = run.end()?;
    let fail = |msg: String| {
        Failure::new(msg)
            .command(&cmd, &o)
            .detail(format!("reload 1: {} {}", bad.stdout, bad.stderr))
            .detail(format!("reload 2: {} {}", ok.stdout, ok.stderr))
            .detail(d.log())
    };
    if !r1.contains("EPERM") {
        return Err(fail(format!(
            "before the reloads the write was not denied: {r1:?}"
        )));
    }
    if bad.code() != Some(1)
        || !bad.stderr.contains("reload.toml:")
        || !bad.stderr.contains("old policy stays")
    {
        return Err(fail(
            "the broken policy's reload was not refused with its location".into(),
        ));
    }
    if !r2.contains("EPERM") {
        return Err(fail(format!(
            "after a refused reload the old policy did not hold: {r2:?}"
        )));
    }
    if ok.code() != Some(0) || !ok.stdout.contains("->") {
        return Err(fail("the good reload failed".into()));
    }
    if r3.trim() != "ok" {
        return Err(fail(format!(
            "after the reload the write was still denied: {r3:?}"
        )));
    }
    drop(d);
    let log = std::fs::read_to_string(base().join("audit.jsonl")).or_fail("read audit log")?;
    if !log
        .lines()
        .any(|l| l.contains("\"agent\":\"reloaded\"") && l.contains("previous_digest"))
    {
        return Err(Failure::new(
            "no policy-load record with the previous digest for the reload",
        ));
    }
    Ok(())
}

const METRICS: &str = "127.0.0.1:9464";

/// `GET path` on the daemon's metrics port: (status line, body).
fn http_get(path: &str) -> Result<(String, String), Failure> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(METRICS).or_fail("connect to the metrics port")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .or_fail("timeout")?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").or_fail("send request")?;
    let mut r = String::new();
    s.read_to_string(&mut r).or_fail("read response")?;
    let (head, body) = r.split_once("\r\n\r\n").unwrap_or((r.as_str(), ""));
    Ok((
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    ))
}

/// The value of one exposition line `name{labels}` (exactly as written), if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn watch_and_metrics(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let d = Daemon::start(ctx, &format!("metrics = \"{METRICS}\""))?;
    let (_, fb) = targets()?;
    let policy = base().join("watched.toml");
    let good = std::fs::read_to_string(ctx.test_policy("daemon-a")).or_fail("read daemon-a")?;
    std::fs::write(&policy, &good).or_fail("write watched.toml")?;
    let mut run = Stepped::start(ctx, "watched", &policy, &fb, 3)?;
    let digest = || -> Result<String, Failure> {
        let s = status_json(ctx)?;
        Ok(s["agents"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == "watched"))
            .and_then(|x| x["policy_digest"].as_str())
            .unwrap_or_default()
            .to_string())
    };
    let wait_digest_change = |from: &str| -> Result<String, Failure> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let now = digest()?;
            if now != from || std::time::Instant::now() >= deadline {
                return Ok(now);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let r1 = run.step(1)?;
    let d0 = digest()?;
    // A broken edit is refused: the old policy stays (checked after the good edit below
    // would be too late, so give the watcher time and look at the digest and the log).
    std::fs::write(
        &policy,
        good.replace("decision = \"deny\"", "decision = \"perhaps\""),
    )
    .or_fail("write broken")?;
    std::thread::sleep(Duration::from_secs(2));
    let d1 = digest()?;
    let r2 = run.step(2)?;
    // An editor's save: a new file renamed over the old one.
    let tmp = base().join("watched.toml.new");
    std::fs::write(
        &tmp,
        good.replace("decision = \"deny\"", "decision = \"allow\""),
    )
    .or_fail("write new")?;
    std::fs::rename(&tmp, &policy).or_fail("rename over the policy")?;
    let d2 = wait_digest_change(&d0)?;
    let r3 = run.step(3)?;
    // The metrics port, while the agent runs (an ended agent's series go with it): the
    // denied writes, the reload and the refused reload are counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = http_get("/metrics")?;
        let denied = metric(
            &body,
            "gate_decisions_total{agent=\"watched\",op=\"write\",decision=\"deny\"}",
        );
        if denied >= Some(2.0) || std::time::Instant::now() >= deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (nf, _) = http_get("/secrets")?;
    let (cmd, o) = run.end()?;
    let fail = |msg: String| Failure::new(msg).command(&cmd, &o).detail(d.log());
    if !r1.contains("EPERM") || !r2.contains("EPERM") {
        return Err(fail(format!(
            "before the good edit the write was not denied: {r1:?}, {r2:?}"
        )));
    }
    if d1 != d0 || !d.log().contains("watched.toml:") {
        return Err(fail(format!(
            "a broken edit changed the policy ({d0} -> {d1}) or its error was not logged with its place"
        )));
    }
    if d2 == d0 {
        return Err(fail("the edited policy file was never reloaded".into()));
    }
    if r3.trim() != "ok" {
        return Err(fail(format!(
            "after the edit was reloaded the write was still denied: {r3:?}"
        )));
    }
    // (series, at least, at most): a save may be seen half-written once more than once.
    let want = [
        (
            "gate_decisions_total{agent=\"watched\",op=\"write\",decision=\"deny\"}",
            2.0,
            2.0,
        ),
        ("gate_reloads_total{result=\"ok\"}", 1.0, 1.0),
        ("gate_reloads_total{result=\"refused\"}", 1.0, 3.0),
        // The daemon found the denials' events waiting in the ring buffer.
        ("gate_ringbuf_bytes", 4096.0, 1e12),
        ("gate_ringbuf_fill_max_ratio", 1e-9, 1.0),
    ];
    for (series, lo, hi) in want {
        let v = metric(&body, series);
        if status != "HTTP/1.1 200 OK" || v < Some(lo) || v > Some(hi) {
            return Err(fail(format!(
                "metrics over TCP: expected {series} in {lo}..={hi}; got {status}:\n{body}"
            )));
        }
    }
    if !nf.contains("404") {
        return Err(fail(format!("GET /secrets answered {nf}, not 404")));
    }
    drop(d);
    Ok(())
}

/// Lets a scripted agent take step `n` (it waits for `MARKS/goN`) and returns the line it
/// reports for it (`RN ...`).
fn step_agent(m: &Path, bg: &mut crate::run::Background, n: u32) -> Result<String, Failure> {
    std::fs::write(m.join(format!("go{n}")), "").or_fail("go")?;
    if !bg.wait_for_stdout(&format!("R{n} "), Duration::from_secs(120)) {
        return Err(Failure::new(format!("step {n} never ran")).detail(bg.stderr()));
    }
    Ok(bg
        .stdout()
        .lines()
        .find(|l| l.starts_with(&format!("R{n} ")))
        .unwrap_or_default()
        .to_string())
}

fn lockdown(ctx: &Ctx, _: &mut Notes) -> TestResult {
    let d = Daemon::start(ctx, "heartbeat = \"300ms\"\nlockdown_after = \"2s\"\n")?;
    let (fa, _) = targets()?;
    let m = base().join("marks-lockdown");
    super::remove_tree(&m);
    std::fs::create_dir_all(&m).or_fail("mkdir")?;
    std::os::unix::fs::chown(&m, Some(DEV_UID), Some(GATE_GID)).or_fail("chown marks")?;
    // Shell builtins only: in lockdown the agent may not exec or write anything, and it
    // reports on its stdout (an open pipe).
    let script = format!(
        "for step in 1 2 3; do while [ ! -e {m}/go$step ]; do :; done; \
         if (echo x >> {fa}); then W=ok; else W=denied; fi; \
         if read l < {fa}; then R=ok; else R=denied; fi; echo \"R$step W=$W R=$R\"; done",
        m = m.display(),
        fa = fa.display()
    );
    let cmd = gate_run(ctx, DEV_UID, "daemon-a", Some("locked"), &script);
    let mut bg = cmd.spawn()?;
    let mut step = |n: u32| step_agent(&m, &mut bg, n);
    let r1 = step(1)?;
    // SAFETY: plain kill(2) of the daemon this test started.
    unsafe { libc::kill(d.pid(), libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(4));
    let r2 = step(2);
    // SAFETY: as above.
    unsafe { libc::kill(d.pid(), libc::SIGCONT) };
    let r2 = r2?;
    std::thread::sleep(Duration::from_secs(2));
    let r3 = step(3)?;
    let want = ["R1 W=ok R=ok", "R2 W=denied R=ok", "R3 W=ok R=ok"];
    if [r1.as_str(), r2.as_str(), r3.as_str()] != want {
        return Err(Failure::new(format!(
            "expected {want:?} (normal, lockdown with the daemon stopped, normal again), got {:?}",
            [r1, r2, r3]
        ))
        .detail(d.log()));
    }
    Ok(())
}

/// `gate approvals --json` as root.
fn approvals_json(ctx: &Ctx) -> Result<Vec<serde_json::Value>, Failure> {
    Ok(gate_json(ctx, "approvals")?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// The request ids `gate run` printed on the agent's terminal, in order.
fn notice_ids(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.split("approval needed [").nth(1))
        .filter_map(|r| r.split(']').next())
        .map(str::to_owned)
        .collect()
}

/// `DIR/file` (an existing file the test user may write) and an empty marks directory for
/// a scripted agent, under the daemon tests' base.
fn ask_target(dir: &str) -> Result<(PathBuf, PathBuf), Failure> {
    let d = base().join(dir);
    let m = base().join(format!("marks-{dir}"));
    for p in [&d, &m] {
        super::remove_tree(p);
        std::fs::create_dir_all(p).or_fail("mkdir")?;
        std::os::unix::fs::chown(p, Some(DEV_UID), Some(GATE_GID)).or_fail("chown")?;
    }
    let f = d.join("file");
    std::fs::write(&f, "x\n").or_fail("write target")?;
    std::os::unix::fs::chown(&f, Some(DEV_UID), Some(GATE_GID)).or_fail("chown")?;
    Ok((f, m))
}

/// An `ask` rule end to end: the kernel denies at once and the daemon raises a request that
/// `gate run` shows on the agent's terminal; the agent itself cannot approve it; a rejection
/// keeps retries denied without a new request until it ends; an approval lets the retry
/// through, also after the daemon was killed with SIGKILL, and the kernel ends it on time.
fn ask_round_trip(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    // No lockdown during the test: what ends the approval must be its own expiry.
    let notified = base().join("notified.jsonl");
    let _ = std::fs::remove_file(&notified);
    let mut d = Daemon::start(
        ctx,
        &format!(
            "lockdown_after = \"600s\"\n[approvals]\nnotify = [\"/bin/sh\", \"-c\", \"cat >> {}\"]\n",
            notified.display()
        ),
    )?;
    let (f, m) = ask_target("ask")?;
    // A second file under the same rule.
    let f2 = f.with_file_name("other");
    std::fs::write(&f2, "x\n").or_fail("write target")?;
    std::os::unix::fs::chown(&f2, Some(DEV_UID), Some(GATE_GID)).or_fail("chown")?;
    let gate = user_gate();
    let script = format!(
        "for step in 1 2 3 4 5 6 7 8 9; do while [ ! -e {m}/go$step ]; do sleep 0.05; done; \
         if [ $step = 2 ]; then {gate} approve $(cat {m}/id) --ttl 1h > {m}/self 2>&1; \
         echo \"R2 self=$?\"; continue; fi; t={f}; \
         if [ $step = 6 ] || [ $step = 7 ]; then t={f2}; fi; \
         if (echo x >> $t) 2>&-; then W=ok; else W=denied; fi; echo \"R$step W=$W\"; done",
        m = m.display(),
        f = f.display(),
        f2 = f2.display(),
    );
    let cmd = gate_run(ctx, DEV_UID, "daemon-ask", Some("asker"), &script);
    let mut bg = cmd.spawn()?;
    let step = |n: u32, bg: &mut crate::run::Background| step_agent(&m, bg, n);
    let answer = |verb: &str, id: &str, ttl: &str, scope: &str| -> Result<(), Failure> {
        let c = as_uid(
            DEV_UID,
            &[
                gate.clone(),
                verb.into(),
                id.into(),
                "--ttl".into(),
                ttl.into(),
                "--scope".into(),
                scope.into(),
            ],
        );
        let o = c.run();
        if o.code() != Some(0) {
            return Err(Failure::new(format!("gate {verb} {id} failed")).command(&c, &o));
        }
        Ok(())
    };
    let approve = |verb: &str, id: &str, ttl: &str| answer(verb, id, ttl, "object");
    let expect = |what: &str, got: &str, want: &str, bg: &crate::run::Background| {
        if got == want {
            Ok(())
        } else {
            Err(Failure::new(format!("{what}: expected {want:?}, got {got:?}")).detail(bg.stderr()))
        }
    };
    // 1: denied at once; one request, shown on the agent's terminal.
    let r1 = step(1, &mut bg)?;
    expect("first write", &r1, "R1 W=denied", &bg)?;
    if !bg.wait_for_stdout_or_stderr("approval needed [", Duration::from_secs(30)) {
        return Err(Failure::new("gate run never showed the approval request").detail(bg.stderr()));
    }
    let id = notice_ids(&bg.stderr())
        .first()
        .cloned()
        .unwrap_or_default();
    let pending = approvals_json(ctx)?;
    let listed = pending.iter().any(|a| {
        a["id"] == id.as_str()
            && a["op"] == "write"
            && a["object"] == f.display().to_string().as_str()
            && a["agent"] == "asker"
            && a["process"].as_array().is_some_and(|p| !p.is_empty())
    });
    if pending.len() != 1 || !listed {
        return Err(Failure::new(format!(
            "expected one pending request {id} for writing {}, got {pending:?}",
            f.display()
        )));
    }
    // The notify command got the request as JSON on its stdin.
    let _ = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&notified).is_ok_and(|t| t.contains(&id))
    });
    let told = std::fs::read_to_string(&notified).unwrap_or_default();
    let parsed = told
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|v| v["id"] == id.as_str() && v["op"] == "write");
    if !parsed {
        return Err(Failure::new(format!(
            "the notify command did not get request {id} as JSON: {told:?}"
        ))
        .detail(d.log()));
    }
    // 2: the agent tries to approve its own request: refused (a confined process cannot
    // reach the daemon).
    std::fs::write(m.join("id"), &id).or_fail("write id")?;
    let r2 = step(2, &mut bg)?;
    let said = std::fs::read_to_string(m.join("self")).unwrap_or_default();
    if r2 == "R2 self=0" || !said.contains("confined") || approvals_json(ctx)?.len() != 1 {
        return Err(Failure::new(format!(
            "the agent's own `gate approve` must be refused, got {r2:?}: {said}"
        )));
    }
    // 3: rejected for 3 s: denied, and no new request.
    approve("reject", &id, "3s")?;
    let rejected_at = std::time::Instant::now();
    let r3 = step(3, &mut bg)?;
    expect("write after the rejection", &r3, "R3 W=denied", &bg)?;
    if !approvals_json(ctx)?.is_empty() {
        return Err(Failure::new("a rejected attempt raised a new request"));
    }
    // 4: the rejection ended: denied again, with a new request.
    std::thread::sleep(Duration::from_millis(3500).saturating_sub(rejected_at.elapsed()));
    let r4 = step(4, &mut bg)?;
    expect("write after the rejection ended", &r4, "R4 W=denied", &bg)?;
    if !bg.wait_for_stdout_or_stderr("approval needed [", Duration::from_secs(30))
        || notice_ids(&bg.stderr()).len() < 2
    {
        let _ = wait_until(Duration::from_secs(10), || {
            notice_ids(&bg.stderr()).len() >= 2
        });
    }
    let ids = notice_ids(&bg.stderr());
    let Some(id2) = ids.get(1).cloned() else {
        return Err(
            Failure::new(format!("no new request after the rejection ended: {ids:?}"))
                .detail(bg.stderr()),
        );
    };
    // 5: approved for 20 s (that file): the retry goes through.
    approve("approve", &id2, "20s")?;
    let approved_at = std::time::Instant::now();
    let r5 = step(5, &mut bg)?;
    expect("write after the approval", &r5, "R5 W=ok", &bg)?;
    // 6: another file under the same rule is not covered: a new request, approved for the
    // whole rule (5 s), which covers it.
    let r6 = step(6, &mut bg)?;
    expect("another file under the rule", &r6, "R6 W=denied", &bg)?;
    let _ = wait_until(Duration::from_secs(10), || {
        notice_ids(&bg.stderr()).len() >= 3
    });
    let Some(id3) = notice_ids(&bg.stderr()).get(2).cloned() else {
        return Err(Failure::new("no request for the other file").detail(bg.stderr()));
    };
    answer("approve", &id3, "5s", "rule")?;
    let r7 = step(7, &mut bg)?;
    expect(
        "the other file after a rule-wide approval",
        &r7,
        "R7 W=ok",
        &bg,
    )?;
    // 8: the daemon is killed: the approval still holds (the kernel has it).
    if let Some(dbg) = d.bg.as_mut() {
        dbg.signal(libc::SIGKILL);
        let _ = dbg.wait(Duration::from_secs(10));
    }
    let log = d.log();
    d.bg = None;
    let r8 = step(8, &mut bg)?;
    expect("write after the daemon's SIGKILL", &r8, "R8 W=ok", &bg)?;
    // 9: both approvals' time is over: the kernel denies again, with no daemon to tell it.
    std::thread::sleep(Duration::from_millis(20_500).saturating_sub(approved_at.elapsed()));
    let r9 = step(9, &mut bg)?;
    expect("write after the approvals ended", &r9, "R9 W=denied", &bg)?;
    let _ = bg.wait(Duration::from_secs(60));
    // The stream has the whole story.
    let audit =
        std::fs::read_to_string(base().join("audit.jsonl")).or_fail("read the audit stream")?;
    let approvals: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["kind"] == "approval")
        .collect();
    let has = |step: &str, id: &str| {
        approvals
            .iter()
            .any(|r| r["step"] == step && r["correlation"] == id)
    };
    let allowed_write = audit.lines().any(|l| {
        l.contains("\"decision\":\"allow\"") && l.contains(&format!("\"correlation\":\"{id2}\""))
    });
    let complete = has("request", &id)
        && has("reject", &id)
        && has("expire", &id)
        && has("request", &id2)
        && has("approve", &id2)
        && approvals.iter().any(|r| {
            r["step"] == "approve" && r["correlation"] == id3.as_str() && r["scope"] == "rule"
        })
        && allowed_write;
    if !complete {
        return Err(Failure::new(format!(
            "the audit stream lacks steps of {id} (request, reject, expire), {id2} (request, \
             approve, the allowed write) or {id3} (approved for the rule): {approvals:?}"
        ))
        .detail(log));
    }
    notes.push(format!(
        "request {id} rejected for 3 s, {id2} approved for 20 s (object), {id3} for 5 s (rule); \
         the write went through after the daemon's SIGKILL and was denied again once the \
         approvals ended"
    ));
    Ok(())
}

/// The self-approval attack as root: a confined root agent whose write was asked tries to
/// approve (and reject, rule-wide) its own request, first as it is, then after trying to leave
/// its cgroup; each is refused, the request stays pending and the write denied. The same
/// `gate approve` run by root outside the agent then works, and the retry goes through.
fn root_self_approval(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    let d = Daemon::start(ctx, "lockdown_after = \"600s\"\n")?;
    let (f, m) = ask_target("ask/root")?;
    // The agent is root without the capabilities its policy does not grant (no
    // CAP_DAC_OVERRIDE): the file and the marks are root's.
    for p in [&f, &m] {
        std::os::unix::fs::chown(p, Some(0), Some(0)).or_fail("chown to root")?;
    }
    let gate = user_gate();
    let script = format!(
        "for step in 1 2 3 4; do while [ ! -e {m}/go$step ]; do sleep 0.05; done; \
         case $step in \
         2) {gate} approve $(cat {m}/id) --ttl 1h --scope rule > {m}/self 2>&1; a=$?; \
            {gate} reject $(cat {m}/id) --ttl 1s > {m}/self-reject 2>&1; r=$?; \
            echo \"R2 approve=$a reject=$r\";; \
         3) if echo $$ > /sys/fs/cgroup/cgroup.procs 2>/dev/null; then e=left; else e=stayed; fi; \
            {gate} approve $(cat {m}/id) --ttl 1h > {m}/self2 2>&1; echo \"R3 $e approve=$?\";; \
         *) if (echo x >> {f}) 2>&-; then W=ok; else W=denied; fi; echo \"R$step W=$W\";; \
         esac; done",
        m = m.display(),
        f = f.display(),
    );
    let cmd = gate_run(ctx, 0, "daemon-ask", Some("root-asker"), &script);
    let mut bg = cmd.spawn()?;
    let r1 = step_agent(&m, &mut bg, 1)?;
    if r1 != "R1 W=denied" {
        return Err(Failure::new(format!(
            "first write: expected denied, got {r1:?}"
        )));
    }
    if !bg.wait_for_stdout_or_stderr("approval needed [", Duration::from_secs(30)) {
        return Err(Failure::new("gate run never showed the approval request")
            .detail(bg.stderr())
            .detail(format!("pending: {:?}", approvals_json(ctx)))
            .detail(d.log()));
    }
    let id = notice_ids(&bg.stderr())
        .first()
        .cloned()
        .unwrap_or_default();
    std::fs::write(m.join("id"), &id).or_fail("write id")?;
    let r2 = step_agent(&m, &mut bg, 2)?;
    let said = std::fs::read_to_string(m.join("self")).unwrap_or_default();
    if r2 != "R2 approve=1 reject=1" || !said.contains("confined") {
        return Err(Failure::new(format!(
            "a confined root agent's `gate approve`/`gate reject` of its own request must be \
             refused, got {r2:?}: {said}"
        )));
    }
    let r3 = step_agent(&m, &mut bg, 3)?;
    if r3 != "R3 stayed approve=1" {
        let said = std::fs::read_to_string(m.join("self2")).unwrap_or_default();
        return Err(Failure::new(format!(
            "leaving the agent's cgroup and approving must both fail, got {r3:?}: {said}"
        )));
    }
    let pending = approvals_json(ctx)?;
    if pending.len() != 1 || pending[0]["id"] != id.as_str() {
        return Err(Failure::new(format!(
            "request {id} must still be pending (and alone), got {pending:?}"
        )));
    }
    // The same command outside the agent, as root: approved.
    let c = as_uid(
        0,
        &[
            gate.clone(),
            "approve".into(),
            id.clone(),
            "--ttl".into(),
            "1h".into(),
        ],
    );
    let o = c.run();
    if o.code() != Some(0) {
        return Err(Failure::new("root's `gate approve` outside the agent failed").command(&c, &o));
    }
    let r4 = step_agent(&m, &mut bg, 4)?;
    if r4 != "R4 W=ok" {
        return Err(Failure::new(format!(
            "after root approved {id} from outside, expected the write to go through, got {r4:?}"
        ))
        .detail(bg.stderr()));
    }
    let _ = bg.wait(Duration::from_secs(60));
    notes.push(format!(
        "request {id}: the confined root agent's approve, reject and cgroup escape were refused; \
         root's approve from outside let the write through"
    ));
    Ok(())
}

/// A rule that requires 2 signatures of group `release-managers` (3 keys): approving with
/// socket credentials is refused; one signature is not enough; the same token again
/// (replayed), the same key again, a key outside the group and a token for another agent run
/// are refused and recorded; a second key's token, signed away from the daemon with
/// `--sign-only --request`, approves; the stream verifies and carries both signatures.
fn signed_approvals(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    ensure_users(ctx)?;
    let keys = base().join("approver-keys");
    super::remove_tree(&keys);
    std::fs::create_dir_all(&keys).or_fail("mkdir keys")?;
    std::os::unix::fs::chown(&keys, Some(DEV_UID), Some(GATE_GID)).or_fail("chown keys")?;
    let gate = user_gate();
    let run_gate = |args: &[String]| {
        let mut a = vec![gate.clone()];
        a.extend(args.iter().cloned());
        let c = as_uid(DEV_UID, &a);
        let o = c.run();
        (c, o)
    };
    for i in 0..4 {
        let (c, o) = run_gate(&[
            "keygen".into(),
            keys.join(format!("k{i}")).display().to_string(),
        ]);
        if o.code() != Some(0) {
            return Err(Failure::new("gate keygen failed").command(&c, &o));
        }
    }
    let group: Vec<String> = (0..3)
        .map(|i| format!("\"{}\"", keys.join(format!("k{i}.pub")).display()))
        .collect();
    let d = Daemon::start(
        ctx,
        &format!(
            "lockdown_after = \"600s\"\n[approvers.release-managers]\nkeys = [{}]\n",
            group.join(", ")
        ),
    )?;
    let (f, m) = ask_target("ask-signed")?;
    let script = format!(
        "for step in 1 2 3; do while [ ! -e {m}/go$step ]; do sleep 0.05; done; \
         if (echo x >> {f}) 2>&-; then W=ok; else W=denied; fi; echo \"R$step W=$W\"; done",
        m = m.display(),
        f = f.display(),
    );
    let cmd = gate_run(ctx, DEV_UID, "daemon-ask-signed", Some("signed"), &script);
    let mut bg = cmd.spawn()?;
    let r1 = step_agent(&m, &mut bg, 1)?;
    if r1 != "R1 W=denied"
        || !bg.wait_for_stdout_or_stderr("approval needed [", Duration::from_secs(30))
    {
        return Err(
            Failure::new(format!("expected a denied write and a request, got {r1:?}"))
                .detail(bg.stderr()),
        );
    }
    let id = notice_ids(&bg.stderr())
        .first()
        .cloned()
        .unwrap_or_default();
    let pending = approvals_json(ctx)?;
    let request = m.join("request.json");
    std::fs::write(
        &request,
        serde_json::to_string(&pending).unwrap_or_default(),
    )
    .or_fail("write request.json")?;
    let mut other_run = pending.clone();
    if let Some(r) = other_run.first_mut() {
        r["run"] = serde_json::Value::from("00000000/1");
    }
    let other = m.join("other-run.json");
    std::fs::write(
        &other,
        serde_json::to_string(&other_run).unwrap_or_default(),
    )
    .or_fail("write other-run.json")?;
    for p in [&request, &other] {
        std::os::unix::fs::chown(p, Some(DEV_UID), Some(GATE_GID)).or_fail("chown")?;
    }
    let sign_for = |k: usize, req: &Path, out: &str, ttl: &str| -> Result<PathBuf, Failure> {
        let (c, o) = run_gate(&[
            "approve".into(),
            id.clone(),
            "--key".into(),
            keys.join(format!("k{k}")).display().to_string(),
            "--sign-only".into(),
            "--request".into(),
            req.display().to_string(),
            "--ttl".into(),
            ttl.into(),
        ]);
        if o.code() != Some(0) {
            return Err(Failure::new("gate approve --sign-only failed").command(&c, &o));
        }
        let p = m.join(out);
        std::fs::write(&p, &o.stdout).or_fail("write token")?;
        Ok(p)
    };
    let sign_only = |k: usize, req: &Path, out: &str| sign_for(k, req, out, "10m");
    let submit = |token: &Path| {
        run_gate(&[
            "approve".into(),
            "--token".into(),
            token.display().to_string(),
        ])
    };
    let mut seen = Vec::new();
    let mut expect = |what: &str, (c, o): (Cmd, crate::outcome::Outcome), ok: bool, says: &str| {
        let text = format!("{}{}", o.stdout, o.stderr);
        seen.push(format!("{what}: {}", text.trim()));
        if (o.code() == Some(0)) != ok || !text.contains(says) {
            return Err(Failure::new(format!(
                "{what}: expected {} saying {says:?}",
                if ok { "success" } else { "a refusal" }
            ))
            .command(&c, &o));
        }
        Ok(())
    };
    // Socket credentials are not enough for this rule.
    expect(
        "unsigned",
        run_gate(&["approve".into(), id.clone()]),
        false,
        "requires 2 signatures",
    )?;
    let t0 = sign_only(0, &request, "t0")?;
    expect(
        "first signature",
        submit(&t0),
        true,
        "1 of the 2 signatures",
    )?;
    let r2 = step_agent(&m, &mut bg, 2)?;
    if r2 != "R2 W=denied" {
        return Err(Failure::new(format!(
            "one signature of two let the write through: {r2}"
        )));
    }
    expect("the same token again", submit(&t0), false, "replayed")?;
    let k0 = keys.join("k0").display().to_string();
    expect(
        "the same key again",
        run_gate(&["approve".into(), id.clone(), "--key".into(), k0]),
        false,
        "signed this request already",
    )?;
    let stranger = sign_only(3, &request, "t3")?;
    expect(
        "a key outside the group",
        submit(&stranger),
        false,
        "not one of the group's approvers",
    )?;
    // A token whose statement was altered after signing (here: the scope widened).
    let t2 = sign_only(2, &request, "t2")?;
    let forged = std::fs::read_to_string(&t2)
        .or_fail("read token")?
        .replace("\\\"scope\\\":\\\"object\\\"", "\\\"scope\\\":\\\"rule\\\"");
    let forged_path = m.join("t2-forged");
    std::fs::write(&forged_path, forged).or_fail("write forged token")?;
    expect(
        "a forged token",
        submit(&forged_path),
        false,
        "does not verify",
    )?;
    // A token past its expiry.
    let stale = sign_for(2, &request, "t2-stale", "1s")?;
    std::thread::sleep(Duration::from_millis(1500));
    expect("an expired token", submit(&stale), false, "expired")?;
    let moved = sign_only(1, &other, "t1-other")?;
    expect(
        "a token for another run",
        submit(&moved),
        false,
        "another agent run",
    )?;
    let t1 = sign_only(1, &request, "t1")?;
    expect("second signature", submit(&t1), true, "approved")?;
    let r3 = step_agent(&m, &mut bg, 3)?;
    if r3 != "R3 W=ok" {
        return Err(Failure::new(format!(
            "two signatures did not let the write through: {r3}"
        ))
        .detail(seen.join("\n")));
    }
    let _ = bg.wait(Duration::from_secs(60));
    drop(d);
    let audit =
        std::fs::read_to_string(base().join("audit.jsonl")).or_fail("read the audit stream")?;
    let recs: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["kind"] == "approval" && r["correlation"] == id.as_str())
        .collect();
    let count = |step: &str| recs.iter().filter(|r| r["step"] == step).count();
    let approved_with_two = recs.iter().any(|r| {
        r["step"] == "approve" && r["signatures"].as_array().is_some_and(|s| s.len() == 2)
    });
    if count("refuse") != 5 || count("sign") != 2 || !approved_with_two {
        return Err(Failure::new(format!(
            "expected 5 refusals (replayed, same key, stranger, other run, expired), 2 \
             signatures and an approval carrying both in the stream: {recs:?}"
        )));
    }
    verify_stream(ctx)?;
    notes.push(format!(
        "request {id}: unsigned, replayed, same-key, stranger, other-run, forged and expired \
         tokens refused; 2 of 3 approved"
    ));
    Ok(())
}

/// `gate audit verify` of the daemon's stream must pass.
fn verify_stream(ctx: &Ctx) -> Result<(), Failure> {
    let verify = Cmd::new(&[
        ctx.gate.display().to_string(),
        "audit".into(),
        "verify".into(),
        "--pubkey".into(),
        base().join("audit.pub").display().to_string(),
        base().join("audit.jsonl").display().to_string(),
    ])
    .run();
    if verify.code() != Some(0) {
        return Err(Failure::new("the daemon's audit stream does not verify")
            .detail(verify.stdout)
            .detail(verify.stderr));
    }
    Ok(())
}

/// Quotas counted in the kernel: 5 writes a second, the sixth denied (its record says the
/// limit was hit), allowed again in the next second; past a `2/min` limit with
/// `over_limit = "ask"`, a request is raised. Through the daemon as an unprivileged user,
/// and as root without the daemon (its own engine).
fn quotas(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    let d = Daemon::start(ctx, "")?;
    let q = base().join("quota");
    super::remove_tree(&q);
    // The files exist: each write is one open, one check (creating a file with
    // open(O_CREAT) is two: the creation and the open).
    let files = |q: &Path| -> Result<(), Failure> {
        for sub in ["burst", "slow"] {
            std::fs::create_dir_all(q.join(sub)).or_fail("mkdir")?;
            std::fs::write(q.join(sub).join("f"), "").or_fail("write")?;
            // Writable by a confined root too (it has no CAP_DAC_OVERRIDE).
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                q.join(sub).join("f"),
                std::fs::Permissions::from_mode(0o666),
            )
            .or_fail("chmod")?;
            for p in [q.join(sub), q.join(sub).join("f")] {
                std::os::unix::fs::chown(p, Some(DEV_UID), Some(GATE_GID)).or_fail("chown")?;
            }
        }
        Ok(())
    };
    files(&q)?;
    std::os::unix::fs::chown(&q, Some(DEV_UID), Some(GATE_GID)).or_fail("chown")?;
    // Shell builtins only (no fork between writes): the burst takes microseconds.
    let script = format!(
        "b={q}/burst/f; s={q}/slow/f; n=0; for i in 1 2 3 4 5 6 7 8; do \
         if {{ echo x >> $b; }} 2>&-; then n=$((n+1)); fi; done; echo BURST=$n; sleep 1.2; \
         if {{ echo x >> $b; }} 2>&-; then echo NEXT=ok; else echo NEXT=denied; fi; \
         n=0; for i in 1 2 3; do if {{ echo x >> $s; }} 2>&-; then n=$((n+1)); fi; done; \
         echo SLOW=$n",
        q = q.display()
    );
    let want = "BURST=5\nNEXT=ok\nSLOW=2";
    let cmd = gate_run(ctx, DEV_UID, "daemon-quota", Some("quota"), &script);
    let o = cmd.run();
    if o.stdout.trim() != want {
        return Err(
            Failure::new(format!("through the daemon: expected {want:?}"))
                .command(&cmd, &o)
                .detail(d.log()),
        );
    }
    drop(d);
    let audit =
        std::fs::read_to_string(base().join("audit.jsonl")).or_fail("read the audit stream")?;
    let over = audit
        .lines()
        .filter(|l| l.contains("\"over_limit\":true") && l.contains("\"agent\":\"quota\""))
        .count();
    if over < 3 {
        return Err(Failure::new(format!(
            "expected the 3 writes past the burst limit recorded with over_limit, found {over}"
        )));
    }
    let asked = audit.lines().any(|l| {
        l.contains("\"kind\":\"approval\"")
            && l.contains("\"step\":\"request\"")
            && l.contains("\"agent\":\"quota\"")
            && l.contains("\"rule\":\"slow\"")
    });
    if !asked {
        return Err(Failure::new(
            "past the slow rule's limit (over_limit = ask), no request was recorded",
        ));
    }
    // Without the daemon, as root: the same counts.
    files(&q)?;
    let cmd = Cmd::new(&[
        ctx.gate.display().to_string(),
        "run".into(),
        "--no-daemon".into(),
        "--user".into(),
        "root".into(),
        "--policy".into(),
        ctx.test_policy("daemon-quota").display().to_string(),
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        script,
    ])
    .timeout(Duration::from_secs(600));
    let o = cmd.run();
    if o.stdout.trim() != want {
        return Err(
            Failure::new(format!("without the daemon, as root: expected {want:?}"))
                .command(&cmd, &o),
        );
    }
    notes.push(format!(
        "{over} writes past the limit recorded; same counts as root without the daemon"
    ));
    Ok(())
}

/// Network records per flow through the daemon: an unprivileged agent's 200 datagrams from
/// one socket are a decision record flagged `flow` (two if an epoch ended during the burst)
/// and flow records counting the rest, written by the time the daemon has stopped; the stream
/// verifies.
fn flows(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    const DATAGRAMS: u64 = 200;
    let d = Daemon::start(ctx, "")?;
    let script = format!("{} sendto-burst 127.0.0.1 40995 {DATAGRAMS}", user_probe());
    let cmd = gate_run(ctx, DEV_UID, "daemon-a", Some("flows"), &script);
    let o = cmd.run();
    if o.code() != Some(0) {
        return Err(Failure::new("the confined burst failed")
            .command(&cmd, &o)
            .detail(d.log()));
    }
    drop(d);
    let audit =
        std::fs::read_to_string(base().join("audit.jsonl")).or_fail("read the audit stream")?;
    let ours = |v: &serde_json::Value| {
        v["agent"] == "flows" && v["hook"] == "sendmsg" && v["port"] == 40995
    };
    let (mut first, mut counted) = (0u64, 0u64);
    for v in audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| ours(v))
    {
        match v["kind"].as_str() {
            Some("decision") if v["flow"] == true => first += 1,
            Some("flow") => counted += v["count"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    if !(1..=2).contains(&first) || first + counted != DATAGRAMS {
        return Err(Failure::new(format!(
            "expected {DATAGRAMS} datagrams as one decision record flagged flow (two if an \
             epoch ended during the burst) and the rest counted in flow records; found {first} \
             flagged, {counted} counted"
        )));
    }
    verify_stream(ctx)?;
    notes.push(format!(
        "{DATAGRAMS} datagrams: {first} decision record(s), {counted} counted in flow records"
    ));
    Ok(())
}

/// More than 3 denials a minute (`[trust] max_denials`): the daemon puts the agent in
/// lockdown (writes it was allowed are denied, reads still decided by its policy) until a
/// person runs `gate trust restore`; both steps are recorded.
fn trust_budget(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    let d = Daemon::start(ctx, "")?;
    let (fa, fb) = targets()?;
    let m = base().join("marks-trust");
    super::remove_tree(&m);
    std::fs::create_dir_all(&m).or_fail("mkdir")?;
    std::os::unix::fs::chown(&m, Some(DEV_UID), Some(GATE_GID)).or_fail("chown marks")?;
    // Shell builtins only: in lockdown the agent may not exec.
    let script = format!(
        "for step in 1 2 3; do while [ ! -e {m}/go$step ]; do :; done; \
         if {{ echo x >> {fa}; }} 2>&-; then W=ok; else W=denied; fi; \
         if read l < {fa}; then R=ok; else R=denied; fi; \
         if [ $step = 1 ]; then for i in 1 2 3 4; do {{ echo x >> {fb}; }} 2>&-; done; fi; \
         echo \"R$step W=$W R=$R\"; done",
        m = m.display(),
        fa = fa.display(),
        fb = fb.display()
    );
    let cmd = gate_run(ctx, DEV_UID, "daemon-trust", Some("trusty"), &script);
    let mut bg = cmd.spawn()?;
    let r1 = step_agent(&m, &mut bg, 1)?;
    let locked = wait_until(Duration::from_secs(20), || {
        status_json(ctx).is_ok_and(|s| {
            s["agents"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| x["name"] == "trusty" && x["trust_lockdown"].is_string())
            })
        })
    });
    if !locked {
        return Err(Failure::new(format!(
            "4 denials did not put the agent in trust lockdown (first step: {r1})"
        ))
        .detail(d.log()));
    }
    let r2 = step_agent(&m, &mut bg, 2)?;
    let restore = as_uid(
        DEV_UID,
        &[
            user_gate(),
            "trust".into(),
            "restore".into(),
            "trusty".into(),
        ],
    );
    let o = restore.run();
    if o.code() != Some(0) {
        return Err(Failure::new("gate trust restore failed").command(&restore, &o));
    }
    let r3 = step_agent(&m, &mut bg, 3)?;
    let want = ["R1 W=ok R=ok", "R2 W=denied R=ok", "R3 W=ok R=ok"];
    if [r1.as_str(), r2.as_str(), r3.as_str()] != want {
        return Err(Failure::new(format!(
            "expected {want:?} (before, in trust lockdown, restored), got {:?}",
            [r1, r2, r3]
        ))
        .detail(d.log()));
    }
    let _ = bg.wait(Duration::from_secs(60));
    drop(d);
    let audit =
        std::fs::read_to_string(base().join("audit.jsonl")).or_fail("read the audit stream")?;
    let step = |name: &str| {
        audit.lines().any(|l| {
            l.contains("\"correlation\":\"trust-trusty\"")
                && l.contains(&format!("\"step\":\"{name}\""))
        })
    };
    if !step("distrust") || !step("restore") {
        return Err(Failure::new(
            "the audit stream lacks the agent's distrust or restore record",
        ));
    }
    notes.push(
        "4 denials within a minute: lockdown (writes denied, reads decided), restored by the user"
            .into(),
    );
    Ok(())
}

fn links_dir() -> PathBuf {
    Path::new(PIN_ROOT).join(pins()).join("links")
}

fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"]
        .as_array()
        .and_then(|c| c.iter().find(|x| x[0] == name))
        .and_then(|x| x[1].as_u64())
        .unwrap_or(0)
}

fn kill_daemon(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    let mut d = Daemon::start(ctx, "")?;
    let (_, fb) = targets()?;
    let m = base().join("marks-kill");
    super::remove_tree(&m);
    std::fs::create_dir_all(&m).or_fail("mkdir")?;
    std::os::unix::fs::chown(&m, Some(DEV_UID), Some(GATE_GID)).or_fail("chown marks")?;
    let p = user_probe();
    // Denied attempts in a stream, before, during and after the daemon's death and restart.
    // The result goes to stdout (an open pipe): while no daemon writes the heartbeat the
    // agent may fall to lockdown, where it may neither exec nor write files.
    let script = format!(
        "i=0; ok=0; while [ $i -lt 100 ]; do i=$((i+1)); \
         if [ \"$({p} open-write {fb})\" = ok ]; then ok=$((ok+1)); fi; \
         if (echo x >> {fb}) 2>&-; then ok=$((ok+1)); fi; \
         [ $i -eq 10 ] && touch {m}/ten; [ -e {m}/stop ] && break; sleep 0.05; done; \
         while [ ! -e {m}/stop ]; do sleep 0.1; done; echo TRIES=$i OK=$ok",
        m = m.display(),
        fb = fb.display()
    );
    let cmd = gate_run(ctx, DEV_UID, "daemon-a", Some("doomed"), &script);
    let mut bg = cmd.spawn()?;
    if !bg.wait_for_file(&m.join("ten"), Duration::from_secs(120)) {
        let o = bg.wait(Duration::from_secs(2));
        return Err(Failure::new("the agent never got going")
            .command(&cmd, &o)
            .detail(d.log()));
    }
    let before = status_json(ctx)?;
    let links = std::fs::read_dir(links_dir())
        .map(|r| r.count())
        .unwrap_or(0);
    if let Some(dbg) = d.bg.as_mut() {
        dbg.signal(libc::SIGKILL);
        let _ = dbg.wait(Duration::from_secs(10));
    }
    d.bg = None;
    std::mem::forget(d);
    // A new daemon adopts what the dead one left: same links, the agent by name, counters
    // going on.
    let d2 = Daemon::start(ctx, "")?;
    let after = status_json(ctx)?;
    let links_after = std::fs::read_dir(links_dir())
        .map(|r| r.count())
        .unwrap_or(0);
    let pins: Vec<String> = std::fs::read_dir(PIN_ROOT)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    std::fs::write(m.join("stop"), "").or_fail("stop")?;
    let o = bg.wait(Duration::from_secs(300));
    let fail = |msg: String| {
        Failure::new(msg)
            .command(&cmd, &o)
            .detail(format!("new daemon's log:\n{}", d2.log()))
    };
    if !d2.log().contains("adopted the programs and maps") {
        return Err(fail(
            "the restarted daemon did not adopt the pinned engine".into(),
        ));
    }
    if links == 0 || links_after != links || pins != [self::pins()] {
        return Err(fail(format!(
            "expected the same {links} links and one pin directory after the restart, got \
             {links_after} links and {pins:?}"
        )));
    }
    let listed = after["agents"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["name"] == "doomed"));
    if !listed {
        return Err(fail(format!("the adopted agent is not listed: {after}")));
    }
    let (c1, c2) = (counter(&before, "decisions"), counter(&after, "decisions"));
    if c2 < c1 || c1 == 0 {
        return Err(fail(format!(
            "the kernel counters did not go on: {c1} before, {c2} after"
        )));
    }
    let tries: u32 = o
        .stdout
        .trim()
        .strip_prefix("TRIES=")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    if !o.stdout.trim().ends_with(" OK=0") || tries < 11 {
        return Err(fail(
            "expected every attempt (by exec and by the shell) denied across the daemon's \
             SIGKILL and restart"
                .into(),
        ));
    }
    drop(d2);
    let left = std::fs::read_dir(PIN_ROOT).map(|r| r.count()).unwrap_or(0);
    if left != 0 {
        return Err(Failure::new(format!(
            "gate unload left {left} pin directories"
        )));
    }
    notes.push(format!(
        "{} attempts denied across kill -9 and adoption; {links} links kept; decisions counter {c1} -> {c2}",
        tries * 2
    ));
    Ok(())
}

/// The audit stream's file system fills up while an agent is denied again and again: the
/// daemon keeps enforcing, queues the records, and once there is room again writes a signed
/// gap record for what may be missing and then the queued records; the stream verifies and
/// every attempt is in it or counted in a gap.
fn audit_disk_full(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    let dir = base().join("small-fs");
    let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
    std::fs::create_dir_all(&dir).or_fail("mkdir small-fs")?;
    nix::mount::mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=2m"),
    )
    .or_fail("mount a 2 MiB tmpfs")?;
    let unmount = Unmount(dir.clone());
    let d = Daemon::start_in(ctx, "", &dir)?;
    let (_, fb) = targets()?;
    let m = base().join("marks-full");
    super::remove_tree(&m);
    std::fs::create_dir_all(&m).or_fail("mkdir marks")?;
    let script = format!(
        "for step in 1 2; do while [ ! -e {m}/go$step ]; do sleep 0.05; done; i=0; \
         while [ $i -lt 100 ]; do i=$((i+1)); (echo x >> {fb}) 2>/dev/null; done; \
         touch {m}/done$step; done",
        m = m.display(),
        fb = fb.display()
    );
    let cmd = gate_run(ctx, 0, "daemon-a", Some("disk-full"), &script);
    let mut bg = cmd.spawn()?;
    // Fill the file system.
    let filler = dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).or_fail("create filler")?;
        let chunk = vec![0u8; 16 * 1024];
        while f.write_all(&chunk).is_ok() {}
    }
    let step = |n: u32, bg: &mut crate::run::Background| -> TestResult {
        std::fs::write(m.join(format!("go{n}")), "").or_fail("go")?;
        if !bg.wait_for_file(&m.join(format!("done{n}")), Duration::from_secs(120)) {
            return Err(
                Failure::new(format!("the agent's step {n} never ended")).detail(bg.stderr())
            );
        }
        Ok(())
    };
    step(1, &mut bg)?;
    let noticed = wait_until(Duration::from_secs(30), || {
        d.log().contains("the audit stream cannot be written")
    });
    if !noticed {
        return Err(Failure::new("the daemon never noticed the full file system").detail(d.log()));
    }
    std::fs::remove_file(&filler).or_fail("remove filler")?;
    step(2, &mut bg)?;
    let log_path = dir.join("audit.jsonl");
    let back = wait_until(Duration::from_secs(60), || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| {
            l.contains("could not be written")
                && l.lines()
                    .filter(|x| x.contains("\"agent\":\"disk-full\"") && x.contains("\"deny-b\""))
                    .count()
                    >= 100
        })
    });
    let _ = bg.wait(Duration::from_secs(30));
    let daemon_log = d.log();
    drop(d);
    if !back {
        return Err(Failure::new(
            "the audit stream never recorded the gap and the queued records once there was room",
        )
        .detail(daemon_log));
    }
    let log = std::fs::read_to_string(&log_path).or_fail("read audit log")?;
    let denied = log
        .lines()
        .filter(|l| l.contains("\"agent\":\"disk-full\"") && l.contains("\"deny-b\""))
        .count() as u64;
    let missing: u64 = log
        .lines()
        .filter(|l| l.contains("could not be written"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["lost"].as_u64())
        .sum();
    notes.push(format!(
        "200 denied writes while the audit file system was full and after: {denied} decision \
         records in the stream, {missing} counted missing in signed gap records"
    ));
    if denied + missing < 200 {
        return Err(Failure::new(format!(
            "{denied} records + {missing} counted missing < 200 attempts: records were lost \
             without a gap"
        ))
        .detail(daemon_log));
    }
    let verify = Cmd::new(&[
        ctx.gate.display().to_string(),
        "audit".into(),
        "verify".into(),
        "--pubkey".into(),
        dir.join("audit.pub").display().to_string(),
        log_path.display().to_string(),
    ])
    .run();
    notes.push(format!("gate audit verify: {}", verify.stdout.trim()));
    if verify.code() != Some(0) {
        return Err(
            Failure::new("the audit stream does not verify after the full disk")
                .detail(verify.stdout)
                .detail(verify.stderr),
        );
    }
    drop(unmount);
    Ok(())
}

/// Unmounts (lazily) when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
