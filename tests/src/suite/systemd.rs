//! `gate.service` under real systemd. These tests run only in a guest that booted the host's
//! systemd as PID 1 (`gate-kernel-tests --systemd`, run by `cargo xtask test` in a systemd
//! boot per kernel); the chroot suite never runs them, and that boot runs nothing else.
//!
//! The shipped unit (`packaging/gate.service`) is installed as it is, with its sandboxing;
//! only `ExecStart=` is pointed at the gate binary under test and a test configuration that
//! confines `agents.slice`. Agents are started with `systemd-run --slice agents.slice`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Ctx, Failure, Notes, OrFail, SCRATCH, TestFn, TestResult};
use crate::outcome::Outcome;
use crate::run::{Background, Cmd, wait_until};

pub fn tests() -> Vec<(&'static str, TestFn)> {
    vec![
        ("systemd/pid-1-is-the-hosts-systemd", pid1),
        (
            "systemd/gate-service-confines-agents-slice-across-stop-and-kill-9",
            lifecycle,
        ),
        ("systemd/analyze-security-of-the-shipped-unit", analyze),
    ]
}

const UNIT: &str = "/run/systemd/system/gate.service";
/// The test configuration lives outside /tmp, so that only the policy's paths depend on the
/// daemon seeing the host's /tmp.
const CONFIG_DIR: &str = "/run/gate-systemd-test";
const AGENT_UNIT: &str = "gate-test-agent";
/// systemd under TCG, and gate's start (programs loaded and a canary denied) in particular.
const SLOW: Duration = Duration::from_secs(600);

fn base() -> PathBuf {
    Path::new(SCRATCH).join("systemd")
}

fn cmd(argv: &[&str]) -> Cmd {
    Cmd::new(argv)
        .env("PATH", super::PATH)
        // sd-bus gives a method call 25 s by default; systemd under TCG can take longer.
        .env("SYSTEMD_BUS_TIMEOUT", "300")
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .cwd("/")
        .timeout(SLOW)
}

fn run_ok(argv: &[&str]) -> Result<Outcome, Failure> {
    let c = cmd(argv);
    let o = c.run();
    if o.code() != Some(0) {
        return Err(Failure::new(format!("`{}` failed", c.display())).command(&c, &o));
    }
    Ok(o)
}

/// `systemctl show gate -p P` for each property, as `P=value` pairs in order.
fn show(unit: &str, props: &[&str]) -> Result<Vec<(String, String)>, Failure> {
    let joined = props.join(",");
    let o = run_ok(&["systemctl", "show", unit, "-p", &joined])?;
    Ok(props
        .iter()
        .map(|p| {
            let v = o
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{p}=")))
                .unwrap_or_default();
            ((*p).to_owned(), v.to_owned())
        })
        .collect())
}

fn prop(unit: &str, p: &str) -> Result<String, Failure> {
    Ok(show(unit, &[p])?.remove(0).1)
}

fn render(props: &[(String, String)]) -> String {
    props
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The daemon's messages in the journal (this boot).
fn journal() -> String {
    cmd(&[
        "journalctl",
        "-u",
        "gate.service",
        "-b",
        "-o",
        "cat",
        "--no-pager",
    ])
    .run()
    .stdout
}

fn pid1_is_systemd() -> Result<(), Failure> {
    let comm = std::fs::read_to_string("/proc/1/comm").or_fail("read /proc/1/comm")?;
    if comm.trim() != "systemd" {
        return Err(Failure::new(format!(
            "PID 1 is {:?}, not systemd: these tests need the systemd boot (`cargo xtask guest \
             --systemd`)",
            comm.trim()
        )));
    }
    Ok(())
}

/// Waits until PID 1 owns `org.freedesktop.systemd1` on the system bus. systemd connects to
/// D-Bus only once dbus.service is up, and `systemd-run --wait` goes through D-Bus: asked too
/// early, dbus-daemon tries to activate systemd and gives up after 25 s.
fn wait_for_bus() -> Result<(), Failure> {
    let on_bus = || {
        cmd(&["busctl", "list", "--no-pager", "--no-legend"])
            .timeout(Duration::from_secs(60))
            .run()
            .stdout
            .lines()
            .any(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some("org.freedesktop.systemd1") && w.next() == Some("1")
            })
    };
    if !wait_until(Duration::from_secs(180), on_bus) {
        let o = cmd(&["busctl", "list", "--no-pager"]).run();
        return Err(
            Failure::new("systemd (PID 1) did not appear on the system bus within 180 s")
                .detail(o.stdout)
                .detail(o.stderr),
        );
    }
    Ok(())
}

/// `systemctl daemon-reload`. PID 1 gives up its bus name while it reloads and takes it
/// again only afterwards: systemd-run must wait for that.
fn daemon_reload() -> Result<(), Failure> {
    run_ok(&["systemctl", "daemon-reload"])?;
    wait_for_bus()
}

fn pid1(_: &Ctx, notes: &mut Notes) -> TestResult {
    pid1_is_systemd()?;
    wait_for_bus()?;
    let v = run_ok(&["systemctl", "--version"])?;
    notes.push(v.stdout.lines().next().unwrap_or_default().to_owned());
    let state = cmd(&["systemctl", "is-system-running"]).run();
    notes.push(format!("system state: {}", state.stdout.trim()));
    let failed = run_ok(&["systemctl", "--failed", "--no-legend", "--plain"])?;
    for l in failed.stdout.lines().filter(|l| !l.trim().is_empty()) {
        notes.push(format!("failed unit at boot (not gate's): {}", l.trim()));
    }
    // systemd manages the cgroup v2 tree gate confines agents in.
    let cg = std::fs::read_to_string("/proc/self/cgroup").or_fail("read /proc/self/cgroup")?;
    if !cg.contains("/system.slice/gate-guest.service") {
        return Err(Failure::new(format!(
            "expected this suite to run in systemd's gate-guest.service cgroup, /proc/self/cgroup is {cg:?}"
        )));
    }
    Ok(())
}

/// A value safe to put in a unit file's `ExecStart=` as one word.
fn unit_word(p: &Path) -> Result<String, Failure> {
    let s = p.display().to_string();
    let plain = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@".contains(c));
    if !plain {
        return Err(Failure::new(format!(
            "setup: {s} cannot be written unquoted into ExecStart="
        )));
    }
    Ok(s)
}

/// The shipped unit with `ExecStart=` pointing at the binary under test and `config`.
fn test_unit(ctx: &Ctx, config: &Path) -> Result<String, Failure> {
    let shipped = ctx.repo.join("packaging/gate.service");
    let text = std::fs::read_to_string(&shipped).or_fail("read packaging/gate.service")?;
    let exec = format!(
        "ExecStart={} daemon --config {}",
        unit_word(&ctx.gate)?,
        unit_word(config)?
    );
    let mut replaced = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                replaced += 1;
                exec.clone()
            } else {
                l.to_owned()
            }
        })
        .collect();
    if replaced != 1 {
        return Err(Failure::new(format!(
            "expected exactly one ExecStart= line in {}, found {replaced}",
            shipped.display()
        )));
    }
    Ok(lines.join("\n") + "\n")
}

/// The shipped configuration, with `agents.slice` confined by the test policy. Lockdown is put
/// out of reach (it has its own test, daemon/heartbeat-lockdown-and-back): here the allowed
/// write must still succeed while no daemon runs, so every denial seen is the agent's own
/// policy staying in force, not lockdown.
fn test_config(ctx: &Ctx) -> Result<String, Failure> {
    let shipped = std::fs::read_to_string(ctx.repo.join("packaging/gate.toml"))
        .or_fail("read packaging/gate.toml")?;
    let from = "lockdown_after = \"15s\"";
    if !shipped.contains(from) {
        return Err(Failure::new(format!(
            "packaging/gate.toml no longer says {from}; update this test"
        )));
    }
    Ok(format!(
        "{}\n[[agent]]\nname = \"sd-agents\"\nslice = \"agents.slice\"\npolicy = \"{}\"\n",
        shipped.replace(from, "lockdown_after = \"60m\""),
        ctx.test_policy("systemd-agents").display()
    ))
}

/// The files the policy names: `allowed/file` and `denied/file`.
fn targets() -> Result<(PathBuf, PathBuf), Failure> {
    let b = base();
    let (allowed, denied) = (b.join("allowed/file"), b.join("denied/file"));
    for f in [&allowed, &denied] {
        std::fs::create_dir_all(f.parent().expect("a parent")).or_fail("mkdir target")?;
        std::fs::write(f, "x\n").or_fail("write target")?;
    }
    Ok((allowed, denied))
}

/// `systemd-run --wait --pipe [--slice SLICE] PROBE open-write FILE`: what the probe printed.
fn one_shot(ctx: &Ctx, slice: Option<&str>, file: &Path) -> (Cmd, Outcome) {
    let probe = ctx.probe.display().to_string();
    let file = file.display().to_string();
    let mut a = vec!["systemd-run", "--wait", "--pipe", "--quiet", "--collect"];
    let slice_arg;
    if let Some(s) = slice {
        slice_arg = format!("--slice={s}");
        a.push(&slice_arg);
    }
    a.extend(["--", &probe, "open-write", &file]);
    let c = cmd(&a);
    let o = c.run();
    (c, o)
}

fn expect_probe(what: &str, c: &Cmd, o: &Outcome, want: &str) -> TestResult {
    if o.stdout.trim() != want {
        return Err(Failure::new(format!(
            "{what}: expected `{want}`, got {:?}",
            o.stdout.trim()
        ))
        .command(c, o));
    }
    Ok(())
}

/// Stops gate (if running) and detaches what it pinned, so nothing outlives the test.
struct Cleanup<'a> {
    ctx: &'a Ctx,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = cmd(&["systemctl", "stop", "gate.service"]).run();
        let _ = cmd(&["systemctl", "stop", &format!("{AGENT_UNIT}.service")]).run();
        let _ = cmd(&["systemctl", "reset-failed"]).run();
        let _ = Cmd::new(&[self.ctx.gate.display().to_string(), "unload".into()]).run();
    }
}

/// A long-running agent in agents.slice: at each step (file `go<N>` appears) it tries the
/// denied write (by exec of the probe and by the shell itself) and the allowed one, and prints
/// `R<N> denied=… shell=… allowed=…` on its stdout, which `--pipe` connects to ours.
fn start_agent(ctx: &Ctx, marks: &Path, allowed: &Path, denied: &Path) -> (Cmd, Background) {
    let script = format!(
        "echo CGROUP=$(cat /proc/self/cgroup); \
         for step in 1 2 3 4 5; do while [ ! -e {m}/go$step ]; do sleep 0.1; done; \
         d=$({p} open-write {denied}); \
         if (echo x >> {denied}) 2>/dev/null; then s=ok; else s=denied; fi; \
         a=$({p} open-write {allowed}); \
         echo \"R$step denied=$d shell=$s allowed=$a\"; done",
        m = marks.display(),
        p = ctx.probe.display(),
        denied = denied.display(),
        allowed = allowed.display(),
    );
    let c = cmd(&[
        "systemd-run",
        &format!("--unit={AGENT_UNIT}"),
        "--slice=agents.slice",
        "--wait",
        "--pipe",
        "--quiet",
        "--collect",
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    let bg = c.spawn();
    (c, bg.expect("systemd-run starts"))
}

const CONFINED: &str = "denied=errno=EPERM shell=denied allowed=ok";

struct Agent<'a> {
    marks: &'a Path,
    cmd: Cmd,
    bg: Background,
    lines: Vec<String>,
}

impl Agent<'_> {
    /// Runs step `n` and checks that it was confined by its policy.
    fn step(&mut self, n: u32, when: &str) -> TestResult {
        std::fs::write(self.marks.join(format!("go{n}")), "").or_fail("go")?;
        let tag = format!("R{n} ");
        if !self.bg.wait_for_stdout(&tag, Duration::from_secs(120)) {
            return Err(
                Failure::new(format!("agent step {n} ({when}) never reported"))
                    .detail(format!("agent stdout: {}", self.bg.stdout()))
                    .detail(format!("agent stderr: {}", self.bg.stderr()))
                    .detail(format!("command: {}", self.cmd.display())),
            );
        }
        let line = self
            .bg
            .stdout()
            .lines()
            .find(|l| l.starts_with(&tag))
            .unwrap_or_default()
            .to_owned();
        self.lines.push(format!("{when}: {line}"));
        if line.strip_prefix(&tag) != Some(CONFINED) {
            return Err(Failure::new(format!(
                "agent step {n} ({when}): expected `{tag}{CONFINED}`, got `{line}`"
            ))
            .detail(format!("agent stdout so far: {}", self.bg.stdout()))
            .detail(format!("gate's journal:\n{}", journal())));
        }
        Ok(())
    }
}

fn start_gate(what: &str) -> Result<Duration, Failure> {
    let t = Instant::now();
    let c = cmd(&["systemctl", "start", "gate.service"]);
    let o = c.run();
    let took = t.elapsed();
    if o.code() != Some(0) {
        return Err(Failure::new(format!("{what}: systemctl start gate failed"))
            .command(&c, &o)
            .detail(format!(
                "status:\n{}",
                cmd(&[
                    "systemctl",
                    "status",
                    "--no-pager",
                    "--full",
                    "gate.service"
                ])
                .run()
                .stdout
            ))
            .detail(format!("journal:\n{}", journal())));
    }
    // Type=notify: start returns only once the daemon sent READY=1, after its canary self-test.
    let props = show("gate.service", &["ActiveState", "SubState", "StatusText"])?;
    let want = ["active", "running", "enforcing"];
    if props.iter().map(|(_, v)| v.as_str()).ne(want) {
        return Err(Failure::new(format!(
            "{what}: after systemctl start, expected ActiveState=active SubState=running \
             StatusText=enforcing, got {}",
            render(&props)
        ))
        .detail(format!("journal:\n{}", journal())));
    }
    Ok(took)
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn lifecycle(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    pid1_is_systemd()?;
    wait_for_bus()?;
    let _cleanup = Cleanup { ctx };
    let b = base();
    super::remove_tree(&b);
    let (allowed, denied) = targets()?;
    let marks = b.join("marks");
    std::fs::create_dir_all(&marks).or_fail("mkdir marks")?;
    std::fs::create_dir_all(CONFIG_DIR).or_fail("mkdir config dir")?;
    let config = Path::new(CONFIG_DIR).join("gate.toml");
    std::fs::write(&config, test_config(ctx)?).or_fail("write gate.toml")?;
    std::fs::write(UNIT, test_unit(ctx, &config)?).or_fail("write gate.service")?;
    daemon_reload()?;
    // systemd ignores what it does not understand, with a message naming the unit.
    let j = journal();
    if let Some(l) = j
        .lines()
        .find(|l| l.contains("Unknown key") || l.contains("gnoring"))
    {
        return Err(Failure::new(format!(
            "systemd did not take the unit as written: {l}"
        )));
    }

    // Before gate: the same write succeeds, in agents.slice too.
    let (c, o) = one_shot(ctx, Some("agents.slice"), &denied);
    expect_probe(
        "before gate started, the write in agents.slice",
        &c,
        &o,
        "ok",
    )?;

    let took = start_gate("first start")?;
    notes.push(format!(
        "systemctl start gate returned after {:.1}s (READY=1 after the canary)",
        took.as_secs_f64()
    ));
    let j = journal();
    for want in ["programs loaded and attached", "ready: enforcing"] {
        if !j.contains(want) {
            return Err(
                Failure::new(format!("expected `{want}` in gate's journal")).detail(j.clone())
            );
        }
    }

    // Confined in agents.slice, unconfined outside it: the same command each time.
    let (c, o) = one_shot(ctx, Some("agents.slice"), &denied);
    expect_probe(
        "systemd-run --slice agents.slice, denied write",
        &c,
        &o,
        "errno=EPERM",
    )?;
    let (c, o) = one_shot(ctx, Some("agents.slice"), &allowed);
    expect_probe(
        "systemd-run --slice agents.slice, allowed write",
        &c,
        &o,
        "ok",
    )?;
    let (c, o) = one_shot(ctx, None, &denied);
    expect_probe("systemd-run in system.slice, same write", &c, &o, "ok")?;
    let c = cmd(&[
        &ctx.probe.display().to_string(),
        "open-write",
        &denied.display().to_string(),
    ]);
    let o = c.run();
    expect_probe(
        "the test itself (gate-guest.service), same write",
        &c,
        &o,
        "ok",
    )?;

    let (agent_cmd, bg) = start_agent(ctx, &marks, &allowed, &denied);
    let mut agent = Agent {
        marks: &marks,
        cmd: agent_cmd,
        bg,
        lines: Vec::new(),
    };
    if !agent
        .bg
        .wait_for_stdout("CGROUP=", Duration::from_secs(120))
    {
        let o = agent.bg.wait(Duration::from_secs(5));
        return Err(Failure::new("the agent never started").command(&agent.cmd, &o));
    }
    let cg = agent.bg.stdout();
    if !cg.contains(&format!("/agents.slice/{AGENT_UNIT}.service")) {
        return Err(Failure::new(format!(
            "the agent is not in agents.slice: {}",
            cg.trim()
        )));
    }
    agent.step(1, "gate running")?;

    // systemctl stop: the daemon exits cleanly, the agent keeps its policy.
    run_ok(&["systemctl", "stop", "gate.service"])?;
    let props = show("gate.service", &["ActiveState", "Result", "MainPID"])?;
    if props[0].1 != "inactive" || props[1].1 != "success" {
        return Err(Failure::new(format!(
            "after systemctl stop gate, expected ActiveState=inactive Result=success, got {}",
            render(&props)
        ))
        .detail(journal()));
    }
    notes.push(format!("after systemctl stop: {}", render(&props)));
    agent.step(2, "after systemctl stop gate")?;
    let (c, o) = one_shot(ctx, Some("agents.slice"), &denied);
    expect_probe(
        "a new agent in agents.slice while gate is stopped",
        &c,
        &o,
        "errno=EPERM",
    )?;

    // Started again: it adopts the pinned engine and the configured agent.
    start_gate("start after stop")?;
    if !journal().contains("adopted the programs and maps a previous daemon left attached") {
        return Err(Failure::new(
            "the daemon started after a stop did not adopt the pinned engine",
        )
        .detail(journal()));
    }
    agent.step(3, "gate started again (adopted)")?;

    // kill -9 of the main process: systemd restarts it (Restart=on-failure), the agent stays
    // confined throughout.
    let pid: i32 = prop("gate.service", "MainPID")?
        .parse()
        .or_fail("MainPID")?;
    if pid <= 0 {
        return Err(Failure::new(format!("gate.service has no MainPID ({pid})")));
    }
    // SAFETY: plain kill(2) of the daemon systemd started for this test.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    if !wait_until(Duration::from_secs(30), || !pid_alive(pid)) {
        return Err(Failure::new(format!(
            "the daemon (pid {pid}) survived SIGKILL"
        )));
    }
    let after_kill = show(
        "gate.service",
        &["ActiveState", "SubState", "Result", "MainPID"],
    )?;
    notes.push(format!(
        "right after kill -9 {pid}: {}",
        render(&after_kill)
    ));
    agent.step(4, "right after kill -9 of the daemon")?;
    let restarted = wait_until(SLOW, || {
        show(
            "gate.service",
            &["ActiveState", "SubState", "MainPID", "StatusText"],
        )
        .is_ok_and(|p| {
            p[0].1 == "active"
                && p[1].1 == "running"
                && p[2].1 != pid.to_string()
                && p[3].1 == "enforcing"
        })
    });
    let props = show(
        "gate.service",
        &["ActiveState", "SubState", "Result", "MainPID", "NRestarts"],
    )?;
    if !restarted {
        return Err(Failure::new(format!(
            "systemd did not restart gate after kill -9 (Restart=on-failure): {}",
            render(&props)
        ))
        .detail(journal()));
    }
    notes.push(format!("after systemd's restart: {}", render(&props)));
    if props[4].1 == "0" {
        return Err(Failure::new(format!(
            "gate runs again but systemd counted no restart: {}",
            render(&props)
        )));
    }
    let adoptions = journal()
        .matches("adopted the programs and maps a previous daemon left attached")
        .count();
    if adoptions < 2 {
        return Err(Failure::new(format!(
            "expected the daemon restarted after kill -9 to adopt the pinned engine (adoptions \
             in the journal: {adoptions})"
        ))
        .detail(journal()));
    }
    agent.step(5, "after systemd restarted the killed daemon (adopted)")?;
    let (c, o) = one_shot(ctx, Some("agents.slice"), &denied);
    expect_probe(
        "a new agent in agents.slice after the restart",
        &c,
        &o,
        "errno=EPERM",
    )?;
    let (c, o) = one_shot(ctx, None, &denied);
    expect_probe("system.slice after the restart, same write", &c, &o, "ok")?;

    let o = agent.bg.wait(Duration::from_secs(60));
    if o.code() != Some(0) {
        return Err(Failure::new("the agent did not finish cleanly").command(&agent.cmd, &o));
    }
    notes.extend(agent.lines.iter().map(|l| format!("agent {l}")));

    // systemd removes the slice's cgroup when the slice stops and makes a new one (a new
    // cgroup id) for the next unit in it: the daemon confines the new one too.
    run_ok(&["systemctl", "stop", "agents.slice"])?;
    std::thread::sleep(Duration::from_secs(1));
    let (c, o) = one_shot(ctx, Some("agents.slice"), &denied);
    expect_probe(
        "agents.slice stopped (its cgroup removed) and started again, denied write",
        &c,
        &o,
        "errno=EPERM",
    )?;
    let j = journal();
    if !j.contains("confining it anew") {
        return Err(Failure::new(
            "the journal does not say the configured cgroup was confined anew",
        )
        .detail(j));
    }
    notes.push("agents.slice stopped and started again: still confined".into());

    // The daemon's audit stream, written under LogsDirectory= by the sandboxed service, has
    // the agent's denials under its name and verifies.
    let log = std::fs::read_to_string("/var/log/gate/audit.jsonl").or_fail("read audit log")?;
    let denials = log
        .lines()
        .filter(|l| {
            l.contains("\"agent\":\"sd-agents\"")
                && l.contains("\"rule\":\"deny-denied\"")
                && l.contains("\"deny\"")
        })
        .count();
    if denials == 0 {
        return Err(Failure::new(
            "the audit stream has no deny-denied decision of agent sd-agents",
        ));
    }
    run_ok(&["systemctl", "stop", "gate.service"])?;
    run_ok(&[
        &ctx.gate.display().to_string(),
        "audit",
        "verify",
        "--pubkey",
        "/var/lib/gate/audit.pub",
        "/var/log/gate/audit.jsonl",
    ])?;
    notes.push(format!(
        "{denials} deny-denied decisions of agent sd-agents in /var/log/gate/audit.jsonl, which verifies"
    ));
    Ok(())
}

fn analyze(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    pid1_is_systemd()?;
    let config = Path::new(CONFIG_DIR).join("gate.toml");
    std::fs::create_dir_all(CONFIG_DIR).or_fail("mkdir config dir")?;
    std::fs::write(&config, test_config(ctx)?).or_fail("write gate.toml")?;
    std::fs::write(UNIT, test_unit(ctx, &config)?).or_fail("write gate.service")?;
    daemon_reload()?;
    let o = run_ok(&["systemd-analyze", "security", "--no-pager", "gate.service"])?;
    let line = o
        .stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for gate.service"))
        .ok_or_else(|| {
            Failure::new("systemd-analyze security printed no overall exposure level")
                .detail(o.stdout.clone())
        })?;
    let text: String = line
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .collect();
    let score = text
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or_else(|| Failure::new(format!("cannot read the exposure level from {text:?}")))?;
    notes.push(format!("systemd-analyze security: {}", text.trim()));
    let exposed: Vec<&str> = o
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix('✗'))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    notes.push(format!("not restricted: {}", exposed.join(" ")));
    if !(0.0..=10.0).contains(&score) {
        return Err(Failure::new(format!(
            "exposure level {score} is out of range"
        )));
    }
    Ok(())
}
