//! Approvals and quotas through the real `gate daemon` (in the tmpfs root of
//! bench/src/daemon.rs), with one agent: `gate run --name bench-approvals -- gate-asker`
//! (bench/src/asker.c, no libc) under a policy whose connects to 127.0.0.1 ports 20000-29999
//! ask a person.
//!
//! 1. **The round trip**, `n` times, each on a port of its own (a new request): the agent's UDP
//!    connect is denied (EPERM); the daemon raises the request and sends its notice on the
//!    run's connection, which `gate run` prints on the agent's stderr (read here as it
//!    arrives); the benchmark, as the approver (root over the control socket), sends `Approve`
//!    for that id at once and waits for `Answered` (the daemon has written the verdict into the
//!    kernel's map and the record into the audit stream); the agent's retry then succeeds.
//!    Each leg is timed: denial → notice, the `Approve` call, the retry; and denial → allowed
//!    retry as a whole.
//! 2. **What a decision costs in the kernel**: a UDP connect repeated on one socket (each call
//!    goes through `socket_connect`), ns per connect, in rounds (the order rotated every
//!    round), for an agent-less process (gate-asker started outside the agent), and for the
//!    agent connecting to a port allowed by a plain rule, by a rule with a `limit` it never
//!    reaches (the kernel counts every call), by an `ask` rule approved for that address (the
//!    object's verdict is found first), and by an `ask` rule approved rule-wide (the object's
//!    lookup misses, the rule's finds it).
use std::{
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use gate_protocol::{Client, Request, Response};
use serde_json::{Value, json};

use crate::daemon::{self, ROOT, Root, SOCKET};
use crate::util::{now_ns, say};

pub struct Options<'a> {
    pub gate: &'a Path,
    pub asker: &'a Path,
    /// Where the copies, the policy, the config and the logs go (tmpfs).
    pub dir: &'a Path,
    /// Round trips.
    pub n: usize,
    /// Rounds of the per-connect costs and connects per sample.
    pub rounds: usize,
    pub per_sample: u32,
}

const ASK_PORT: u32 = 20000;
/// The ports of the cost conditions, by condition name.
const COST_PORTS: [(&str, u32); 4] = [
    ("allowed", 30001),
    ("limited", 30002),
    ("approved_object", 30003),
    ("approved_rule", 30004),
];

const POLICY: &str = r#"# The approvals benchmark's policy (bench/src/approvals.rs).
version = 1
name = "bench-approvals"
mode = "enforce"

[default]
exec = "allow"
write = "allow"
read = "allow"
connect = "allow"

[[rule]]
id = "asked"
op = "connect"
addr = ["127.0.0.1"]
port = ["20000-29999"]
decision = "ask"

[[rule]]
id = "allowed"
op = "connect"
addr = ["127.0.0.1"]
port = [30001]
decision = "allow"

[[rule]]
id = "limited"
op = "connect"
addr = ["127.0.0.1"]
port = [30002]
decision = "allow"
limit = "1000000/s"

[[rule]]
id = "approved-object"
op = "connect"
addr = ["127.0.0.1"]
port = [30003]
decision = "ask"

[[rule]]
id = "approved-rule"
op = "connect"
addr = ["127.0.0.1"]
port = [30004]
decision = "ask"
"#;

const EPERM: i64 = -1;

/// gate-asker's pipes.
struct Asker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

/// One answer of gate-asker: the result, when it was done, how long it took.
struct Answer {
    ret: i64,
    at: u64,
    took: u64,
}

impl Asker {
    fn spawn(mut cmd: Command) -> Result<(Asker, Option<std::process::ChildStderr>)> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().context("starting gate-asker")?;
        let stdin = child.stdin.take().context("piped stdin")?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let stderr = child.stderr.take();
        Ok((
            Asker {
                child,
                stdin,
                stdout,
            },
            stderr,
        ))
    }

    fn ask(&mut self, op: u32, port: u32, n: u32) -> Result<Answer> {
        let mut cmd = [0u8; 12];
        for (i, v) in [op, port, n].into_iter().enumerate() {
            cmd[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        self.stdin
            .write_all(&cmd)
            .context("writing to gate-asker")?;
        let mut out = [0u8; 24];
        self.stdout
            .read_exact(&mut out)
            .context("reading gate-asker's answer (did it exit?)")?;
        let word = |i: usize| i64::from_ne_bytes(out[i * 8..i * 8 + 8].try_into().unwrap());
        Ok(Answer {
            ret: word(0),
            at: word(1) as u64,
            took: word(2) as u64,
        })
    }

    /// One connect to `port`.
    fn connect(&mut self, port: u32) -> Result<Answer> {
        self.ask(1, port, 1)
    }

    fn finish(mut self) -> Result<std::process::ExitStatus> {
        drop(self.stdin);
        Ok(self.child.wait()?)
    }
}

/// The approval ids of the notices `gate run` prints, with the virtual ns each arrived at.
fn notices(stderr: std::process::ChildStderr) -> Receiver<(String, u64)> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let at = now_ns();
            let id = line
                .split_once("approval needed [")
                .and_then(|(_, rest)| rest.split_once(']'))
                .map(|(id, _)| id.to_owned());
            let msg = id.unwrap_or_else(|| format!("!{line}"));
            if tx.send((msg, at)).is_err() {
                break;
            }
        }
    });
    rx
}

/// What `gate run` printed that was not a notice, waiting up to a second for it: for errors.
fn printed(rx: &Receiver<(String, u64)>) -> String {
    let mut lines = Vec::new();
    while let Ok((line, _)) = rx.recv_timeout(Duration::from_secs(1)) {
        lines.push(line.strip_prefix('!').unwrap_or(&line).to_owned());
    }
    lines.join("\n")
}

/// The next notice's id and arrival (other lines of `gate run`, such as the one saying the
/// agent is confined, are passed over).
fn next_notice(rx: &Receiver<(String, u64)>) -> Result<(String, u64)> {
    loop {
        let (id, at) = rx
            .recv_timeout(Duration::from_secs(60))
            .context("no approval notice from the daemon within 60 s")?;
        if !id.starts_with('!') {
            return Ok((id, at));
        }
    }
}

fn approve(c: &mut Client, id: &str, scope_rule: bool) -> Result<()> {
    match c.call(&Request::Approve {
        id: id.to_owned(),
        ttl_s: 3600,
        scope_rule,
        tokens: Vec::new(),
    })? {
        Response::Answered { allow: true, .. } => Ok(()),
        other => bail!("approving {id}: the daemon answered {other:?}"),
    }
}

pub fn run(o: &Options<'_>) -> Result<Value> {
    let bin = o.dir.join("bin");
    let gate = bin.join("gate");
    let asker_bin = bin.join("gate-asker");
    daemon::copy_exe(o.gate, &gate)?;
    daemon::copy_exe(o.asker, &asker_bin)?;
    let policy = o.dir.join("approvals.toml");
    std::fs::write(&policy, POLICY)?;
    let cfg = daemon::write_config(o.dir)?;
    let root = Root::build(Path::new(ROOT), &gate, std::slice::from_ref(&policy))?;
    let log = o.dir.join("daemon.log");
    say("approvals: starting gate daemon");
    let (mut d, ready_ns) = daemon::start(&root, &gate, &cfg, &log)?;
    let r = measure(o, &root, &gate, &asker_bin, &policy);
    let stopped = daemon::stop(&mut d, &root, &gate);
    let mut doc = r.with_context(|| format!("daemon log:\n{}", daemon::tail(&log)))?;
    doc["daemon_exit"] = json!(stopped?);
    doc["ready_ns"] = json!(ready_ns);
    Ok(doc)
}

fn measure(
    o: &Options<'_>,
    root: &Root,
    gate: &Path,
    asker_bin: &Path,
    policy: &Path,
) -> Result<Value> {
    let mut c = Command::new(gate);
    c.arg("run")
        .arg("--policy")
        .arg(policy)
        .args(["--name", "bench-approvals", "--"])
        .arg(asker_bin)
        .env("GATE_SOCKET", SOCKET)
        .stderr(Stdio::piped());
    root.enter(&mut c);
    let (mut agent, stderr) = Asker::spawn(c)?;
    let rx = notices(stderr.context("piped stderr")?);
    let mut control = Client::connect(Path::new(SOCKET))?;
    let r = round_trips_and_costs(o, root, asker_bin, &mut agent, &rx, &mut control);
    let r = r.with_context(|| format!("gate run printed:\n{}", printed(&rx)));
    let st = agent.finish()?;
    let mut doc = r?;
    anyhow::ensure!(st.success(), "gate run (gate-asker) exited with {st}");
    doc["agent_exit"] = json!(st.code());
    Ok(doc)
}

fn round_trips_and_costs(
    o: &Options<'_>,
    root: &Root,
    asker_bin: &Path,
    agent: &mut Asker,
    rx: &Receiver<(String, u64)>,
    control: &mut Client,
) -> Result<Value> {
    // 1. Round trips.
    say(&format!("approvals: {} round trips", o.n));
    let (mut notice, mut call, mut retry, mut total) = (vec![], vec![], vec![], vec![]);
    for i in 0..o.n {
        let port = ASK_PORT + i as u32;
        let denied = agent.connect(port)?;
        anyhow::ensure!(
            denied.ret == EPERM,
            "round trip {i}: the first connect to port {port} returned {} (expected -EPERM)",
            denied.ret
        );
        let (id, seen) = next_notice(rx).with_context(|| format!("round trip {i}"))?;
        let t0 = now_ns();
        approve(control, &id, false)?;
        let t1 = now_ns();
        let allowed = agent.connect(port)?;
        anyhow::ensure!(
            allowed.ret == 0,
            "round trip {i}: the connect after approval {id} returned {}",
            allowed.ret
        );
        notice.push(seen.saturating_sub(denied.at));
        call.push(t1 - t0);
        retry.push(allowed.at.saturating_sub(t1));
        total.push(allowed.at - denied.at);
        if (i + 1) % 250 == 0 {
            say(&format!("approvals: {} round trips done", i + 1));
        }
    }

    // 2. Costs. The two ask rules approved first (object-wide and rule-wide).
    for (name, port) in COST_PORTS {
        let rule_wide = match name {
            "approved_object" => false,
            "approved_rule" => true,
            _ => continue,
        };
        let denied = agent.connect(port)?;
        anyhow::ensure!(
            denied.ret == EPERM,
            "port {port}: not asked ({})",
            denied.ret
        );
        let (id, _) = next_notice(rx)?;
        approve(control, &id, rule_wide)?;
    }
    let mut outside_cmd = Command::new(asker_bin);
    outside_cmd.stderr(Stdio::null());
    root.enter(&mut outside_cmd);
    let (mut outside, _) = Asker::spawn(outside_cmd)?;
    let mut conditions: Vec<(&str, u32, bool)> = vec![("unconfined", 30001, false)];
    conditions.extend(COST_PORTS.iter().map(|&(name, port)| (name, port, true)));
    let mut samples: serde_json::Map<String, Value> = serde_json::Map::new();
    say(&format!(
        "approvals: connect costs, {} rounds of {} connects per condition",
        o.rounds, o.per_sample
    ));
    for round in 0..=o.rounds {
        let k = conditions.len();
        for j in 0..k {
            let (name, port, confined) = conditions[(j + round) % k];
            let a = if confined { &mut *agent } else { &mut outside };
            // Round 0 warms up (caches, the verdict entries, the routes) and is not kept.
            let r = a.ask(2, port, o.per_sample)?;
            anyhow::ensure!(
                r.ret == 0,
                "{name}: a connect to port {port} returned {}",
                r.ret
            );
            if round > 0 {
                samples
                    .entry(name.to_owned())
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .unwrap()
                    .push(json!(r.took as f64 / o.per_sample as f64));
            }
        }
    }
    let st = outside.finish()?;
    anyhow::ensure!(st.success(), "the unconfined gate-asker exited with {st}");
    Ok(json!({
        "n": o.n,
        "notice_ns": notice,
        "approve_call_ns": call,
        "retry_ns": retry,
        "round_trip_ns": total,
        "connect_ns": samples,
        "per_sample": o.per_sample,
        "rounds": o.rounds,
    }))
}
