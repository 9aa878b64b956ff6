//! The running daemon: the owner thread (the only one that touches the engine), the event
//! thread (the host's one audit writer), the control socket, systemd notification.
//!
//! Start-up order, each step fail-closed: config → engine loaded and attached → a canary
//! process in a probe cgroup must be denied → configured agents confined → socket open →
//! `READY=1`. Maps and links are pinned under `/sys/fs/bpf/gate/host-v<ABI>/`, so a daemon
//! killed with SIGKILL leaves every agent enforced with its last policy (with no heartbeat
//! any more, the agents fall to their lockdown decisions), and the next daemon adopts them.
use std::{
    collections::HashMap,
    ffi::CString,
    fs,
    io::{self, BufReader, Write as _},
    os::{
        fd::AsRawFd,
        unix::{
            fs::{MetadataExt, PermissionsExt},
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use gate_common::{InodeRule, decision, op, rule};
use gate_protocol::{Request, Response, RunRequest, read_line, write_line};

use super::{
    config::{self, DaemonConfig, Who},
    core::{AuditMsg, Core, Directory, NewAgent, Origin},
    peer::{Peer, peer_of},
};
use crate::{
    audit::{AuditConfig, AuditLog, Lifecycle, RecordBody, Scope},
    cgroup::{self, Cgroup, Hierarchy},
    engine::{Capacity, Counters, Engine},
    events,
    policy::{self, Mode, Vars},
    report::{decision_record, flow_record, policy_load},
    session::Session,
    state,
};

/// A job for the owner thread.
type Job = Box<dyn FnOnce(&mut Core) + Send>;

/// How other threads reach the owner thread.
#[derive(Clone)]
pub struct Owner(mpsc::Sender<Job>);

impl Owner {
    /// Runs `f` on the owner thread and returns its result.
    pub fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut Core) -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let sent = self.0.send(Box::new(move |c| {
            let _ = tx.send(f(c));
        }));
        match sent.ok().and_then(|()| rx.recv().ok()) {
            Some(r) => r,
            // The owner thread has ended: the daemon is stopping. This thread (a connection's)
            // ends with it, quietly: unwinding without the panic hook's message and backtrace.
            None => std::panic::resume_unwind(Box::new("the daemon is stopping")),
        }
    }
}

static HUP: AtomicBool = AtomicBool::new(false);
static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_hup(_: i32) {
    HUP.store(true, Ordering::SeqCst);
}
extern "C" fn on_term(_: i32) {
    TERM.store(true, Ordering::SeqCst);
}

/// `gate daemon`: returns the exit status.
pub fn run(config_path: &Path) -> i32 {
    match run_inner(config_path) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("gate daemon: {e}");
            notify(&format!("STATUS=failed: {e}"));
            1
        }
    }
}

fn run_inner(config_path: &Path) -> Result<(), String> {
    let cfg = config::load(config_path).map_err(|e| e.to_string())?;
    // gate's own state, in every policy the daemon loads: its config, socket, keys, logs.
    let mut own = crate::state::gate_state(&cfg.audit_key, cfg.audit_log.as_deref());
    for p in [Some(cfg.file.as_path()), cfg.socket.parent()]
        .into_iter()
        .flatten()
    {
        own.push(policy::Protected {
            path: p.to_path_buf(),
            read: false,
        });
    }
    policy::protect(own);
    // SAFETY: handlers only store to atomics.
    unsafe {
        libc::signal(libc::SIGHUP, on_hup as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let h = cgroup::hierarchy().map_err(|e| e.to_string())?;
    state::ensure_bpffs().map_err(|e| e.to_string())?;
    let capacity = Capacity {
        agents: cfg.max_agents + 1,
        inodes: cfg.max_file_rules,
        net4: cfg.max_net_rules,
        net6: cfg.max_net_rules,
        // Answers to requests, and two entries per quota per agent (allocated as used).
        verdicts: 65_536,
    };
    let t = Instant::now();
    let saved = read_saved();
    let (mut engine, adopted) = open_engine(capacity, cfg.ringbuf_bytes, &saved)?;
    let pin_dir = host_dir();
    let (events, ring_size) = engine.take_events_sized().map_err(|e| e.to_string())?;
    let fill = Arc::new(super::ringfill::RingFill::new(
        events.as_raw_fd(),
        ring_size,
    ));
    let counters = engine.take_counters().map_err(|e| e.to_string())?;
    let flows = engine.take_flows().map_err(|e| e.to_string())?;
    tracing::info!(
        ms = t.elapsed().as_millis() as u64,
        pins = %pin_dir.display(),
        adopted,
        "{}",
        if adopted {
            "adopted the programs and maps a previous daemon left attached"
        } else {
            "programs loaded and attached"
        }
    );
    let (audit_tx, audit_rx) = mpsc::channel();
    let audit = match &cfg.audit_log {
        Some(path) => {
            if let Some(dir) = path.parent() {
                let _ = fs::create_dir_all(dir);
            }
            if let Some(dir) = cfg.audit_key.parent() {
                let _ = fs::create_dir_all(dir);
            }
            let mut log = AuditLog::open(path, AuditConfig::new(&cfg.audit_key))
                .map_err(|e| format!("audit stream: {e}"))?;
            let mut start = Lifecycle::new(Scope::Daemon);
            start.pid = Some(std::process::id());
            start.version = Some(env!("CARGO_PKG_VERSION").to_owned());
            log.append(&RecordBody::Start(start))
                .map_err(|e| format!("audit stream: {e}"))?;
            Some((
                log,
                AuditTarget {
                    path: path.clone(),
                    key: cfg.audit_key.clone(),
                },
            ))
        }
        None => None,
    };
    let mut core = Core::new(Box::new(engine), cfg.lockdown_after, Some(audit_tx));
    core.ring = Some(fill.clone());
    core.state_file = Some(PathBuf::from(STATE_FILE));
    core.answers_file = Some(PathBuf::from(ANSWERS_FILE));
    core.approvers = cfg.approvers.clone();
    core.replay = crate::approval::ReplayStore::open(Path::new(USED_TOKENS_FILE)).map_err(|e| {
        format!(
            "{USED_TOKENS_FILE}: {e}: the daemon keeps the approval tokens used so far there \
             (so none is accepted twice); fix or remove the file"
        )
    })?;
    let _ = core.replay.prune(crate::approval::unix_now());
    core.heartbeat();
    if adopted {
        adopt_agents(&mut core, saved);
        core.restore_answers();
    }
    let directory = core.directory();
    let (trust_tx, trust_rx) = mpsc::channel::<(String, String)>();
    let asks = AskSink {
        asks: core.asks.clone(),
        notices: core.notices.clone(),
        budget: Budget::default(),
        trust: trust_tx,
        notify: cfg.notify.clone(),
    };
    let shared_counters = core.counters.clone();
    let stop_events = Arc::new(AtomicBool::new(false));
    let event_thread = {
        let stop = stop_events.clone();
        thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                event_loop(
                    (events, flows),
                    counters,
                    audit,
                    audit_rx,
                    directory,
                    asks,
                    shared_counters,
                    fill,
                    &stop,
                )
            })
            .map_err(|e| e.to_string())?
    };
    self_test(&mut core, &h)?;
    for a in &cfg.agents {
        add_config_agent(&mut core, &h, a)?;
    }
    let listener = bind(&cfg)?;
    let (tx, rx) = mpsc::channel::<Job>();
    let owner = Owner(tx);
    {
        let (owner, cfg, h) = (owner.clone(), cfg.clone(), h.clone());
        thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(listener, owner, cfg, h))
            .map_err(|e| e.to_string())?;
    }
    if let Some(addr) = cfg.metrics {
        let l = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("metrics: cannot listen on {addr}: {e} (set [daemon] metrics to a free loopback port, or remove it)"))?;
        let owner = owner.clone();
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve_metrics(l, owner))
            .map_err(|e| e.to_string())?;
        tracing::info!(%addr, "serving Prometheus metrics on GET /metrics");
    }
    notify("READY=1\nSTATUS=enforcing");
    tracing::info!(socket = %cfg.socket.display(), agents = cfg.agents.len(), "ready: enforcing");
    let watchdog = std::env::var("WATCHDOG_USEC").is_ok();
    let mut last_reap = Instant::now();
    let mut watched = PolicyWatch::default();
    let mut failing = HashMap::new();
    while !TERM.load(Ordering::SeqCst) {
        match rx.recv_timeout(cfg.heartbeat) {
            Ok(job) => job(&mut core),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if core.last_heartbeat.elapsed() >= cfg.heartbeat {
            core.heartbeat();
            if watchdog && core.heartbeat_error.is_none() {
                notify("WATCHDOG=1");
            }
        }
        if last_reap.elapsed() >= Duration::from_millis(200) {
            reap(&mut core);
            recheck_config_agents(&mut core, &h, &cfg.agents, &mut failing);
            core.expire_retired(Duration::from_secs(30));
            core.expire_answers();
            for (agent, reason) in trust_rx.try_iter() {
                if let Err(e) = core.distrust(&agent, &reason) {
                    tracing::error!(agent, error = %e, "an agent that used up its denial budget could not be put in lockdown");
                }
            }
            last_reap = Instant::now();
            if cfg.watch_policies {
                for r in watched.changed(&mut core) {
                    tracing::info!(agent = r.agent, error = ?r.error, new = ?r.new_digest, "reload (policy file changed)");
                }
            }
        }
        if HUP.swap(false, Ordering::SeqCst) {
            let names = core.agent_names();
            for r in reload(&mut core, &names) {
                tracing::info!(agent = r.agent, error = ?r.error, new = ?r.new_digest, "reload (SIGHUP)");
            }
        }
    }
    notify("STOPPING=1");
    tracing::info!(
        "stopping: the programs stay attached (pinned under {}); agents stay confined with \
         their policies and fall to lockdown without a heartbeat; the next daemon adopts \
         them; `gate unload` removes them",
        pin_dir.display()
    );
    let _ = fs::remove_file(&cfg.socket);
    stop_events.store(true, Ordering::SeqCst);
    let _ = event_thread.join();
    Ok(())
}

/// Which policy files changed since they were last seen: (device, inode, size, mtime) of
/// each agent's policy file, so an edit, a replacement by rename and a truncation all count.
#[derive(Default)]
struct PolicyWatch {
    seen: HashMap<String, Option<Fingerprint>>,
}

/// Device, inode, size, mtime seconds and nanoseconds.
type Fingerprint = (u64, u64, u64, i64, i64);

impl PolicyWatch {
    fn fingerprint(p: &Path) -> Option<Fingerprint> {
        let m = fs::metadata(p).ok()?;
        Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
    }

    /// Reloads the agents whose policy file changed; a file that does not compile is tried
    /// once per change (the old policy stays in force, the error is logged), and a file
    /// that compiles to the policy already in force changes nothing.
    fn changed(&mut self, core: &mut Core) -> Vec<gate_protocol::ReloadResult> {
        let names = core.agent_names();
        self.seen.retain(|n, _| names.contains(n));
        let mut due = Vec::new();
        for name in names {
            let Some(a) = core.agent(&name) else { continue };
            if a.policy_path.as_os_str() == "<probe>" {
                continue;
            }
            let now = Self::fingerprint(&a.policy_path);
            match self.seen.insert(name.clone(), now) {
                Some(before) if before != now && now.is_some() => due.push(name),
                _ => {}
            }
        }
        due.iter()
            .filter_map(|name| recompile(core, name, true))
            .collect()
    }
}

/// Serves `GET /metrics` (Prometheus text exposition) on the opt-in loopback port; anything
/// else gets 404. One short-lived thread per connection, as on the control socket.
fn serve_metrics(l: std::net::TcpListener, owner: Owner) {
    for conn in l.incoming() {
        let Ok(mut s) = conn else { continue };
        let owner = owner.clone();
        let _ = thread::Builder::new().name("metrics-client".into()).spawn(move || {
            use std::io::BufRead;
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut line = String::new();
            let Ok(r) = s.try_clone() else { return };
            let mut r = BufReader::new(r);
            if r.read_line(&mut line).is_err() {
                return;
            }
            // Read the request headers up to the blank line.
            loop {
                let mut h = String::new();
                match r.read_line(&mut h) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if h.trim().is_empty() => break,
                    Ok(_) => {}
                }
            }
            let mut parts = line.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, body) = if method == "GET" && (target == "/metrics" || target == "/") {
                ("200 OK", owner.call(|c| c.metrics()))
            } else {
                ("404 Not Found", "gate serves GET /metrics only\n".to_string())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        });
    }
}

/// Where the daemon saves its agents for a restart.
pub const STATE_FILE: &str = "/run/gate/daemon/agents.json";

/// The answers to `ask` requests in the kernel, for a restarted daemon to record their end.
pub const ANSWERS_FILE: &str = "/run/gate/daemon/answers.jsonl";

/// Nonces of the approval tokens accepted in this boot (a token names its agent's run, which
/// names the boot, so none could be used in another).
pub const USED_TOKENS_FILE: &str = "/run/gate/daemon/used-tokens";

/// The host engine's pins: `/sys/fs/bpf/gate/host-v<ABI>/{maps,links}`. The ABI version is in
/// the name, so a daemon of another version never opens maps laid out differently.
pub fn host_dir() -> PathBuf {
    Path::new(state::PIN_ROOT).join(format!("host-v{}", gate_common::ABI_VERSION))
}

fn read_saved() -> Vec<super::core::SavedAgent> {
    match fs::read(STATE_FILE) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::error!(file = STATE_FILE, error = %e, "the saved agents cannot be read; adopted agents stay confined but unnamed");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

/// Adopts the pinned engine when one is attached, or loads, pins and attaches a new one.
/// Never half-adopts: the links directory appears (by rename) only once every program is
/// attached, and every map must open.
fn open_engine(
    capacity: Capacity,
    ringbuf_bytes: u32,
    saved: &[super::core::SavedAgent],
) -> Result<(Engine, bool), String> {
    let root = Path::new(state::PIN_ROOT);
    let dir = host_dir();
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("host-v") && e.path() != dir {
                return Err(format!(
                    "{} holds the pinned state of a gate daemon of another kernel ABI ({name}; \
                    this gate uses host-v{}): nothing was adopted. Start the gate that \
                    matches it, or detach it with `gate unload` (its agents are then no \
                    longer confined)",
                    e.path().display(),
                    gate_common::ABI_VERSION
                ));
            }
        }
    }
    let (maps, links) = (dir.join("maps"), dir.join("links"));
    let attached = fs::read_dir(&links).is_ok_and(|mut r| r.next().is_some());
    if attached {
        let levels = saved.iter().map(|a| (a.cgroup_id, a.level)).collect();
        let engine = Engine::adopt(&maps, &links, &levels).map_err(|e| {
            format!(
                "the pinned engine at {} cannot be adopted: {e}. Its programs stay attached; \
                `gate unload` detaches them",
                dir.display()
            )
        })?;
        return Ok((engine, true));
    }
    // Nothing attached: whatever is pinned is left over from a start that did not finish.
    let _ = remove_pins(&dir);
    let mut engine = Engine::load(capacity, ringbuf_bytes).map_err(|e| e.to_string())?;
    // bpffs refuses names with dots.
    let staging = dir.join("links-staging");
    for d in [&maps, &staging] {
        fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    engine.pin_maps(&maps).map_err(|e| e.to_string())?;
    if let Err(e) = engine.attach(&staging) {
        let _ = remove_pins(&dir);
        return Err(format!("attaching the programs: {e}"));
    }
    fs::rename(&staging, &links).map_err(|e| {
        let _ = remove_pins(&dir);
        format!("publishing {}: {e}", links.display())
    })?;
    Ok((engine, false))
}

/// Removes a pin directory tree (unpinning what is in it).
fn remove_pins(dir: &Path) -> io::Result<()> {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_pins(&e.path())?;
            } else {
                fs::remove_file(e.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Takes over the agents a previous daemon left confined: each saved agent whose cgroup still
/// exists gets its policy recompiled and swapped in; kernel entries of cgroups that are gone
/// are removed; entries the daemon has no record of stay confined as they are.
fn adopt_agents(core: &mut Core, saved: Vec<super::core::SavedAgent>) {
    let kernel = core.kernel_agents();
    for (cgroup_id, agent_id) in &kernel {
        core.reserve_ids(*agent_id);
        let known = saved
            .iter()
            .any(|s| s.cgroup_id == *cgroup_id && s.agent_id == *agent_id);
        if !known {
            tracing::warn!(
                cgroup_id,
                agent_id,
                "a confined cgroup the daemon has no record of stays confined with its last policy"
            );
        }
    }
    for s in saved {
        let alive = fs::metadata(&s.cgroup).is_ok_and(|m| m.ino() == s.cgroup_id);
        let in_kernel = kernel
            .iter()
            .any(|(c, a)| *c == s.cgroup_id && *a == s.agent_id);
        if !in_kernel {
            continue;
        }
        if !alive {
            let _ = core.drop_kernel_agent(s.cgroup_id);
            tracing::info!(agent = s.name, "its cgroup is gone: removed");
            continue;
        }
        let vars = Vars {
            workspace: s.workspace.clone(),
            home: s.home.clone(),
        };
        match policy::load(&s.policy_path, &vars) {
            Ok(mut p) => {
                if s.mode.as_deref() == Some("audit") {
                    p.mode = Mode::Audit;
                } else if s.mode.is_some() {
                    p.mode = Mode::Enforce;
                }
                let name = s.name.clone();
                let r = core.adopt(s, p);
                tracing::info!(agent = name, error = ?r.error, "adopted");
            }
            Err(e) => {
                tracing::error!(agent = s.name, error = %e, "its policy no longer compiles; it stays confined with its last policy, unnamed");
            }
        }
    }
}

/// Tells systemd (when it started us with `Type=notify`).
pub fn notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), Path::new(&path))
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// Proves enforcement before anything is reported ready: a process in a probe cgroup must be
/// denied writing a canary file.
fn self_test(core: &mut Core, h: &Hierarchy) -> Result<(), String> {
    let dir = Path::new("/run/gate/daemon");
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let canary = dir.join("canary");
    fs::write(&canary, b"gate self-test\n").map_err(|e| format!("{}: {e}", canary.display()))?;
    let m = fs::metadata(&canary).map_err(|e| format!("{}: {e}", canary.display()))?;
    let key = gate_common::InodeKey {
        dev: crate::policy::kernel_dev(m.dev()),
        slot: 0,
        ino: m.ino(),
    };
    let name = format!("daemon-probe-{}", std::process::id());
    let session = Session::create(h, &name).map_err(|e| e.to_string())?;
    let cg = session.cgroup();
    let policy = policy::compile(
        &policy::parse(PROBE_POLICY, Path::new("<probe>")).map_err(|e| e.to_string())?,
        &Vars {
            workspace: None,
            home: "/".into(),
        },
        &policy::FsResolver,
    )
    .map_err(|e| e.to_string())?;
    let mut r = InodeRule::default();
    r.exact[op::WRITE as usize] = decision::DENY;
    r.exact_rule[op::WRITE as usize] = rule::SELFTEST;
    let probe = NewAgent {
        name: name.clone(),
        cgroup: cg.path.clone(),
        cgroup_name: cg.name.clone(),
        cgroup_id: cg.id,
        level: cg.level,
        uid: 0,
        origin: Origin::Config,
        command: vec!["self-test".into()],
        policy_path: "<probe>".into(),
        vars: Vars {
            workspace: None,
            home: "/".into(),
        },
        mode: None,
    };
    core.add(probe, policy, &[(key, r)])?;
    let result = session
        .self_test(&canary, Mode::Enforce)
        .map_err(|e| e.to_string());
    session.end(|| core.remove(&name, "self-test done").map(|_| ()))?;
    result
}

const PROBE_POLICY: &str = "version = 1\nname = \"gate-probe\"\nmode = \"enforce\"\n";

fn add_config_agent(core: &mut Core, h: &Hierarchy, a: &config::ConfigAgent) -> Result<(), String> {
    let path = h.mount.join(&a.cgroup);
    fs::create_dir_all(&path)
        .map_err(|e| format!("agent {}: creating {}: {e}", a.name, path.display()))?;
    let cg = Cgroup::open(h, &path).map_err(|e| e.to_string())?;
    let (uid, home) = match &a.user {
        Some(u) => {
            let user = nix::unistd::User::from_name(u)
                .ok()
                .flatten()
                .ok_or_else(|| format!("agent {}: no user {u:?}", a.name))?;
            (user.uid.as_raw(), user.dir)
        }
        None => (0, PathBuf::from("/root")),
    };
    let vars = Vars {
        workspace: a.workspace.clone(),
        home,
    };
    let policy = policy::load(&a.policy, &vars).map_err(|e| format!("agent {}: {e}", a.name))?;
    if let Some(existing) = core.agent(&a.name) {
        // Adopted from the daemon before this one (stopped, killed or crashed): its cgroup is
        // confined already. It keeps running; the configured policy is swapped in atomically
        // if it differs from the one the adoption recompiled.
        if existing.cgroup_id != cg.id {
            return Err(format!(
                "agent {}: an agent of that name already confines {}, not {}",
                a.name,
                existing.cgroup.display(),
                cg.path.display()
            ));
        }
        if existing.policy().digest_hex() != policy.digest_hex() {
            let r = core.replace(&a.name, policy);
            if let Some(e) = r.error {
                return Err(format!("agent {}: {e}", a.name));
            }
        }
        tracing::info!(
            agent = a.name,
            cgroup = cg.name,
            "configured cgroup confined since the previous daemon; adopted"
        );
        return Ok(());
    }
    core.add(
        NewAgent {
            name: a.name.clone(),
            cgroup: cg.path.clone(),
            cgroup_name: cg.name.clone(),
            cgroup_id: cg.id,
            level: cg.level,
            uid,
            origin: Origin::Config,
            command: Vec::new(),
            policy_path: a.policy.clone(),
            vars,
            mode: None,
        },
        policy,
        &[],
    )?;
    tracing::info!(
        agent = a.name,
        cgroup = cg.name,
        "confining configured cgroup"
    );
    Ok(())
}

/// Keeps each configured agent's cgroup confined when it is removed and made again (systemd
/// removes a slice's cgroup when its last unit stops and makes a new one, with a new id, when
/// the next starts): a missing cgroup is created again at once and confined, and a cgroup
/// whose id changed is confined anew. Errors are logged when they change (`failing`).
fn recheck_config_agents(
    core: &mut Core,
    h: &Hierarchy,
    agents: &[config::ConfigAgent],
    failing: &mut HashMap<String, String>,
) {
    for a in agents {
        let path = h.mount.join(&a.cgroup);
        let current = fs::metadata(&path).map(|m| m.ino()).ok();
        let known = core.agent(&a.name).map(|x| x.cgroup_id);
        if current.is_some() && current == known {
            failing.remove(&a.name);
            continue;
        }
        if known.is_some() {
            tracing::warn!(
                agent = a.name,
                cgroup = %path.display(),
                "the configured cgroup was removed (and perhaps made again, with a new id): \
                 confining it anew"
            );
            let _ = core.remove(&a.name, "its cgroup was removed");
        }
        match add_config_agent(core, h, a) {
            Ok(()) => {
                failing.remove(&a.name);
            }
            Err(e) => {
                if failing.get(&a.name) != Some(&e) {
                    tracing::error!(agent = a.name, error = %e, "cannot confine a configured cgroup; retrying");
                    failing.insert(a.name.clone(), e);
                }
            }
        }
    }
}

/// Removes `gate run` agents whose cgroups have emptied.
fn reap(core: &mut Core) {
    for name in core.agent_names() {
        let Some(a) = core.agent(&name) else { continue };
        if a.origin != Origin::Run {
            continue;
        }
        if cgroup::populated(&a.cgroup) {
            continue;
        }
        if core.remove(&name, "its processes have exited").is_ok() {
            let _ = cgroup::remove_tree(&a.cgroup);
            tracing::info!(agent = name, "agent ended");
        }
    }
}

/// Recompiles each agent's policy from its file, then swaps it in; a policy that does not
/// compile leaves the old one in force.
fn reload(core: &mut Core, names: &[String]) -> Vec<gate_protocol::ReloadResult> {
    names
        .iter()
        .filter_map(|name| recompile(core, name, false))
        .collect()
}

/// Recompiles one agent's policy from its file and swaps it in; a policy that does not
/// compile leaves the old one in force. `None` for the probe agent, and, with `if_changed`,
/// when the file compiles to the policy already in force.
fn recompile(core: &mut Core, name: &str, if_changed: bool) -> Option<gate_protocol::ReloadResult> {
    let Some(a) = core.agent(name) else {
        return Some(gate_protocol::ReloadResult {
            agent: name.to_string(),
            old_digest: String::new(),
            new_digest: None,
            error: Some(format!("no agent named {name:?}")),
        });
    };
    if a.policy_path.as_os_str() == "<probe>" {
        return None;
    }
    let old = a.policy().digest_hex();
    match policy::load(&a.policy_path, &a.vars) {
        Ok(mut p) => {
            if let Some(m) = a.mode {
                p.mode = m;
            }
            if if_changed && p.digest_hex() == old {
                return None;
            }
            Some(core.replace(name, p))
        }
        Err(e) => Some(core.failed_reload(name, old, e.to_string())),
    }
}

fn bind(cfg: &DaemonConfig) -> Result<UnixListener, String> {
    if let Some(dir) = cfg.socket.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    }
    if UnixStream::connect(&cfg.socket).is_ok() {
        return Err(format!(
            "another gate daemon is listening on {}; stop it first (systemctl stop gate)",
            cfg.socket.display()
        ));
    }
    let _ = fs::remove_file(&cfg.socket);
    let l = UnixListener::bind(&cfg.socket)
        .map_err(|e| format!("listening on {}: {e}", cfg.socket.display()))?;
    let gid = nix::unistd::Group::from_name(&cfg.group)
        .ok()
        .flatten()
        .map(|g| g.gid);
    if let Some(gid) = gid {
        nix::unistd::chown(&cfg.socket, Some(nix::unistd::Uid::from_raw(0)), Some(gid))
            .map_err(|e| format!("chown {}: {e}", cfg.socket.display()))?;
    } else {
        tracing::warn!(
            group = cfg.group,
            "the socket's group does not exist: only root can use the daemon"
        );
    }
    fs::set_permissions(&cfg.socket, fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("chmod {}: {e}", cfg.socket.display()))?;
    Ok(l)
}

fn accept_loop(l: UnixListener, owner: Owner, cfg: DaemonConfig, h: Hierarchy) {
    let gate_gid = nix::unistd::Group::from_name(&cfg.group)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    let cfg = Arc::new(cfg);
    for conn in l.incoming() {
        let Ok(s) = conn else { continue };
        let (owner, cfg, h) = (owner.clone(), cfg.clone(), h.clone());
        let _ = thread::Builder::new().name("client".into()).spawn(move || {
            if let Err(e) = serve(s, &owner, &cfg, &h, gate_gid) {
                tracing::debug!(error = %e, "client connection ended");
            }
        });
    }
}

fn serve(
    s: UnixStream,
    owner: &Owner,
    cfg: &DaemonConfig,
    h: &Hierarchy,
    gate_gid: Option<u32>,
) -> io::Result<()> {
    let mut w = s.try_clone()?;
    let refuse = |w: &mut UnixStream, message: String| {
        tracing::warn!(%message, "client refused");
        write_line(w, &Response::Error { message })
    };
    let peer = match peer_of(&s, h) {
        Ok(p) => p,
        Err(e) => return refuse(&mut w, format!("cannot identify you: {e}")),
    };
    let ids = peer.cgroup_ids.clone();
    if owner.call(move |c| c.confines(&ids)) {
        return refuse(
            &mut w,
            "refused: this process is confined by gate; a confined process cannot talk to \
             the daemon"
                .into(),
        );
    }
    let member =
        peer.uid == 0 || gate_gid.is_some_and(|g| peer.gid == g || peer.groups.contains(&g));
    if !member {
        return refuse(
            &mut w,
            format!(
                "refused: uid {} is not root and not in group {:?}; ask an administrator to \
                 add you (usermod -aG {} USER, then log in again)",
                peer.uid, cfg.group, cfg.group
            ),
        );
    }
    let mut r = BufReader::new(s);
    let mut hello = false;
    while let Some(line) = read_line(&mut r)? {
        let req: Request = match serde_json::from_str(&line) {
            Ok(q) => q,
            Err(e) => {
                write_line(
                    &mut w,
                    &Response::Error {
                        message: format!("bad request: {e}"),
                    },
                )?;
                continue;
            }
        };
        let resp = match req {
            Request::Hello { version } if version == gate_protocol::VERSION => {
                hello = true;
                Response::Hello {
                    version,
                    daemon: env!("CARGO_PKG_VERSION").into(),
                }
            }
            Request::Hello { version } => Response::Error {
                message: format!(
                    "this daemon speaks protocol {}, the client {version}; use the gate \
                     binary that matches the daemon",
                    gate_protocol::VERSION
                ),
            },
            _ if !hello => Response::Error {
                message: "say hello first".into(),
            },
            Request::Status {} => Response::Status(owner.call(|c| c.status())),
            Request::Metrics {} => Response::Metrics {
                text: owner.call(|c| c.metrics()),
            },
            Request::Run(req) => {
                let (resp, session) = handle_run(owner, cfg, h, &peer, req);
                if let (Response::Started { agent, .. }, Some(session)) = (&resp, session) {
                    let started = answer_started(owner, agent, &mut w, &resp)?;
                    return hold_run(r, owner, agent, peer.pid, session, started);
                }
                resp
            }
            Request::Approvals {} => Response::Approvals {
                requests: owner.call(|c| {
                    let asks = c.asks.lock().unwrap_or_else(|e| e.into_inner());
                    asks.pending().into_iter().map(|a| a.info).collect()
                }),
            },
            Request::Approve {
                id,
                ttl_s,
                scope_rule,
                tokens,
            } => handle_answer(owner, &peer, id, true, ttl_s, scope_rule, tokens),
            Request::Reject {
                id,
                ttl_s,
                scope_rule,
            } => handle_answer(owner, &peer, id, false, ttl_s, scope_rule, Vec::new()),
            Request::TrustRestore { agent } => {
                let by = user_label(peer.uid);
                let name = agent.clone();
                match owner.call(move |c| c.restore_trust(&name, &by)) {
                    Ok(()) => Response::Restored { agent },
                    Err(message) => Response::Error { message },
                }
            }
            Request::Reload { agent } if peer.uid == 0 => {
                let names = agent.map(|a| vec![a]);
                Response::Reloaded {
                    agents: owner.call(move |c| {
                        let names = names.unwrap_or_else(|| c.agent_names());
                        reload(c, &names)
                    }),
                }
            }
            Request::Stop { agent } => handle_stop(owner, &peer, agent),
            Request::Reload { .. } => Response::Error {
                message: "refused: only root reloads policies".into(),
            },
        };
        write_line(&mut w, &resp)?;
    }
    Ok(())
}

/// Sends `Started` on a run's connection and, in the same step, makes the connection the
/// agent's notice channel: the notices lock is held while `Started` is written, so a request
/// the agent raises at once (its first action, within microseconds of starting) gets its
/// notice, and no notice can come before `Started`. The agent's id, if it is still there.
fn answer_started(
    owner: &Owner,
    agent: &str,
    w: &mut UnixStream,
    started: &Response,
) -> io::Result<Option<u32>> {
    let (id, notices) = owner.call({
        let agent = agent.to_string();
        move |c| (c.agent(&agent).map(|a| a.agent_id), c.notices.clone())
    });
    let mut n = notices.lock().unwrap_or_else(|e| e.into_inner());
    write_line(w, started)?;
    if let Some(id) = id {
        let notice = w.try_clone()?;
        let _ = notice.set_write_timeout(Some(Duration::from_millis(200)));
        n.insert(id, notice);
    }
    Ok(id)
}

/// The connection of a started run: its caller is confined now, so nothing it sends is
/// answered. When it closes (the command ended, or the caller was killed), what is left of
/// the agent's tree is ended and the agent removed.
fn hold_run(
    mut r: BufReader<UnixStream>,
    owner: &Owner,
    agent: &str,
    caller: i32,
    session: Session,
    started: Option<u32>,
) -> io::Result<()> {
    // `started`: the agent this connection started, by id (its name may be taken by another
    // agent once this one is reaped).
    let mut ignored = 0u64;
    while let Ok(Some(_)) = read_line(&mut r) {
        ignored += 1;
        if ignored == 1 {
            tracing::warn!(
                agent,
                "a request on a run's connection was ignored: its caller is confined"
            );
        }
    }
    let Some(id) = started else {
        // Removed already (gate stop): its cgroup went with it.
        let _ = session.keep();
        return Ok(());
    };
    // The caller closes the connection just before it exits with the command's status: let
    // it leave first (at most 5 s), so that only what the command left behind is ended.
    session.wait_left(caller, Duration::from_secs(5));
    if session.cgroup().populated() {
        tracing::info!(
            agent,
            "the run's command ended: ending what is left of its tree"
        );
    }
    // Ending the processes can take seconds: here, not on the owner thread, which writes
    // the heartbeat. Only then is the agent removed, on the owner thread.
    let agent = agent.to_string();
    let ended = session.end(|| {
        owner.call(move |c| {
            if c.agent(&agent).is_some_and(|a| a.agent_id == id) {
                c.remove(&agent, "its command ended").map(|_| ())
            } else {
                Ok(())
            }
        })
    });
    if let Err(e) = ended {
        tracing::error!(error = %e, "could not end a run's agent");
    }
    Ok(())
}

/// A user as records name them: `alice (uid 1000)`, or `uid:N` without a name.
fn user_label(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid:{uid}"),
    }
}

/// `gate approve` / `gate reject`: by root or a member of the daemon's group (the
/// connection was let in only then), named in the record by user name and uid.
fn handle_answer(
    owner: &Owner,
    peer: &Peer,
    id: String,
    allow: bool,
    ttl_s: u64,
    scope_rule: bool,
    tokens: Vec<String>,
) -> Response {
    if let Err(e) = crate::approval::check_ttl(ttl_s) {
        return Response::Error {
            message: format!("the answer's time: {e}"),
        };
    }
    let by = user_label(peer.uid);
    match owner.call(move |c| c.answer(&id, allow, scope_rule, ttl_s, &by, &tokens)) {
        Ok(r) => r,
        Err(message) => Response::Error { message },
    }
}

/// `gate stop AGENT`: the agent is found by name once; from then on it is that agent (its
/// id and cgroup), whatever takes the name. Its processes are ended off the owner thread
/// (that can take seconds; the owner writes the heartbeat).
fn handle_stop(owner: &Owner, peer: &Peer, agent: String) -> Response {
    let uid = peer.uid;
    let found = owner.call({
        let agent = agent.clone();
        move |c| {
            let Some(a) = c.agent(&agent) else {
                return Err(format!("no agent named {agent:?} (see `gate status`)"));
            };
            if uid != 0 && (a.uid != uid || a.origin != Origin::Run) {
                return Err(format!("refused: agent {agent:?} is not yours"));
            }
            Ok((a.agent_id, a.cgroup.clone()))
        }
    });
    let (id, cgroup) = match found {
        Ok(f) => f,
        Err(message) => return Response::Error { message },
    };
    let killed = fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|s| s.lines().count())
        .unwrap_or(0);
    let root = Hierarchy {
        mount: "/".into(),
        root: "/".into(),
    };
    if let Ok(cg) = Cgroup::open(&root, &cgroup)
        && let Err(e) = cg.kill_all(crate::session::KILL_TIMEOUT)
    {
        return Response::Error {
            message: format!("could not end agent {agent:?}'s processes (it stays confined): {e}"),
        };
    }
    owner.call(move |c| {
        if c.agent(&agent).is_none_or(|a| a.agent_id != id) {
            // Ended and removed meanwhile (its run's connection closed).
            return Response::Stopped { agent, killed };
        }
        match c.remove(&agent, "stopped with gate stop") {
            Ok(_) => {
                let _ = cgroup::remove_tree(&cgroup);
                Response::Stopped { agent, killed }
            }
            Err(message) => Response::Error { message },
        }
    })
}

/// Whether `peer` may run `policy` (an absolute, canonical path).
fn may_use_policy(cfg: &DaemonConfig, peer: &Peer, policy: &Path) -> bool {
    if peer.uid == 0 {
        return true;
    }
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let Ok(path) = CString::new(policy.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    cfg.allow.iter().any(|a| {
        let who = match &a.who {
            Who::User(u) => user.as_deref() == Some(u.as_str()),
            Who::Group(g) => nix::unistd::Group::from_name(g)
                .ok()
                .flatten()
                .is_some_and(|g| {
                    let g = g.gid.as_raw();
                    peer.gid == g || peer.groups.contains(&g)
                }),
        };
        who && a.policies.iter().any(|p| {
            CString::new(p.as_str()).is_ok_and(|pat| {
                // SAFETY: two NUL-terminated strings.
                unsafe { libc::fnmatch(pat.as_ptr(), path.as_ptr(), libc::FNM_PATHNAME) == 0 }
            })
        })
    })
}

/// Starts an agent for the caller; its session goes to the connection that holds the run.
fn handle_run(
    owner: &Owner,
    cfg: &DaemonConfig,
    h: &Hierarchy,
    peer: &Peer,
    req: RunRequest,
) -> (Response, Option<Session>) {
    match start_run(owner, cfg, h, peer, req) {
        Ok((r, s)) => (r, Some(s)),
        Err(message) => (Response::Error { message }, None),
    }
}

fn start_run(
    owner: &Owner,
    cfg: &DaemonConfig,
    h: &Hierarchy,
    peer: &Peer,
    req: RunRequest,
) -> Result<(Response, Session), String> {
    let err = |message: String| Err(message);
    if !req.policy.is_absolute() {
        return err(format!(
            "the policy path {} is not absolute",
            req.policy.display()
        ));
    }
    let policy_path = match fs::canonicalize(&req.policy) {
        Ok(p) => p,
        Err(e) => return err(format!("{}: {e}", req.policy.display())),
    };
    if !may_use_policy(cfg, peer, &policy_path) {
        return err(format!(
            "refused: the daemon's config ({}) does not let uid {} run with {}; an \
             administrator can add it to an [[allow]] entry",
            cfg.file.display(),
            peer.uid,
            policy_path.display()
        ));
    }
    let user = match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid)) {
        Ok(Some(u)) => u,
        _ => {
            return err(format!(
                "uid {} has no passwd entry (no home directory)",
                peer.uid
            ));
        }
    };
    if let Some(w) = &req.workspace
        && !w.is_absolute()
    {
        return err(format!("the workspace {} is not absolute", w.display()));
    }
    let vars = Vars {
        workspace: req.workspace.clone(),
        home: user.dir.clone(),
    };
    let mode = match req.mode.as_deref() {
        None => None,
        Some("enforce") => Some(Mode::Enforce),
        Some("audit") => Some(Mode::Audit),
        Some(m) => return err(format!("unknown mode {m:?} (enforce or audit)")),
    };
    // Compile first: nothing touches the kernel for a policy that does not compile.
    let mut policy = match policy::load(&policy_path, &vars) {
        Ok(p) => p,
        Err(e) => return err(e.to_string()),
    };
    if let Some(m) = mode {
        policy.mode = m;
    }
    let warnings = policy.warnings.len();
    let digest = policy.digest_hex();
    if let Some(n) = &req.name
        && !config::valid_name(n)
    {
        return err("agent names are 1-64 letters, digits, '.', '_' or '-'".into());
    }
    let (h, peer, cmd) = (h.clone(), peer.clone(), req.command.clone());
    let requested = req.name.clone();
    owner.call(move |c| {
        let name = requested.unwrap_or_else(|| c.fresh_name(&user.name));
        if c.agent(&name).is_some() {
            return err(format!("an agent named {name:?} is already running"));
        }
        // Dropped on any error below: its cgroup goes with it.
        let session = Session::create(&h, &format!("agent-{name}")).map_err(|e| e.to_string())?;
        let cg = session.cgroup();
        let added = c.add(
            NewAgent {
                name: name.clone(),
                cgroup: cg.path.clone(),
                cgroup_name: cg.name.clone(),
                cgroup_id: cg.id,
                level: cg.level,
                uid: peer.uid,
                origin: Origin::Run,
                command: cmd,
                policy_path: policy_path.clone(),
                vars,
                mode,
            },
            policy,
            &[],
        );
        added?;
        // The caller joins the cgroup; it execs the command itself, as itself.
        // The pid is the caller's only while the caller lives: checked before and after
        // the move (a pid is not reused while its process is alive).
        let moved = if peer.alive() {
            fs::write(cg.path.join("cgroup.procs"), peer.pid.to_string())
        } else {
            Err(io::Error::from_raw_os_error(libc::ESRCH))
        };
        if let Err(e) = moved {
            let _ = c.remove(&name, "the caller could not be moved into its cgroup");
            return err(format!("moving you (pid {}) into {}: {e}", peer.pid, cg.name));
        }
        if !peer.alive() {
            tracing::error!(
                agent = name,
                pid = peer.pid,
                "the caller exited while it was moved into its agent's cgroup; the agent \
                 is removed (a process that took its pid, if any, is left in the cgroup, \
                 unconfined)"
            );
            let _ = c.remove(&name, "the caller exited while it was moved");
            // Not ended: what is in the cgroup is not the caller.
            let _ = session.keep();
            return err("you exited while you were moved into your cgroup".into());
        }
        tracing::info!(agent = name, uid = peer.uid, policy = %policy_path.display(), "agent started");
        let cgroup = cg.name.clone();
        Ok((
            Response::Started {
                agent: name,
                cgroup,
                policy_digest: digest,
                warnings,
            },
            session,
        ))
    })
}

/// Records waiting for an audit stream that cannot be written, at most this many; beyond it
/// they are counted and the count goes into the signed gap record written when the stream
/// works again.
const AUDIT_QUEUE: usize = 100_000;

/// Appends one record; a gap is signed at once.
fn append(log: &mut AuditLog, rec: &RecordBody) -> Result<(), crate::audit::AuditError> {
    match rec {
        RecordBody::Gap(g) => log.append_gap(g.lost, g.cpu, &g.reason).map(|_| ()),
        _ => log.append(rec).map(|_| ()),
    }
}

/// Where the daemon's audit stream is, to open it again after a write failed.
pub struct AuditTarget {
    pub path: PathBuf,
    pub key: PathBuf,
}

/// The daemon's audit stream across write failures (disk full, I/O errors): records are
/// queued while it cannot be written, it is opened again every second (which repairs a
/// record cut in half and signs what the failed writer left unsigned), and then a signed gap
/// record says how many records are missing before the queued ones follow. Nothing is
/// dropped without a signed record of the gap.
struct AuditSink {
    log: Option<AuditLog>,
    target: AuditTarget,
    /// Why the stream is down, and when it was last tried.
    down: Option<(String, Instant)>,
    queue: Vec<RecordBody>,
    /// Records that may not be in the file: the batch being written when a write failed, and
    /// any that did not fit in the queue.
    missing: u64,
}

impl AuditSink {
    fn write(&mut self, records: Vec<RecordBody>) {
        if self.down.is_some() {
            self.queue(records);
            self.retry();
            return;
        }
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let mut r = Ok(());
        for rec in &records {
            r = r.and_then(|()| append(log, rec));
        }
        r = r
            .and_then(|()| log.flush())
            .and_then(|()| log.tick().map(|_| ()));
        if let Err(e) = r {
            self.fail(e.to_string(), records.len() as u64);
        }
    }

    fn queue(&mut self, records: Vec<RecordBody>) {
        for r in records {
            if self.queue.len() < AUDIT_QUEUE {
                self.queue.push(r);
            } else {
                self.missing += 1;
            }
        }
    }

    fn fail(&mut self, error: String, missing: u64) {
        tracing::error!(
            error = %error,
            path = %self.target.path.display(),
            "the audit stream cannot be written; decisions are still enforced, records are \
             queued (up to {AUDIT_QUEUE}) and the stream is opened again every second; free \
             space or fix the file system"
        );
        self.missing += missing;
        // Dropping the writer releases its lock; it is opened anew (and repaired) on retry.
        self.log = None;
        self.down = Some((error, Instant::now()));
    }

    fn retry(&mut self) {
        let Some((error, last)) = self.down.clone() else {
            return;
        };
        if last.elapsed() < Duration::from_secs(1) {
            return;
        }
        let opened = AuditLog::open(&self.target.path, AuditConfig::new(&self.target.key));
        let mut log = match opened {
            Ok(l) => l,
            Err(e) => {
                self.down = Some((format!("{error}; reopening: {e}"), Instant::now()));
                return;
            }
        };
        let queued = std::mem::take(&mut self.queue);
        let n = queued.len();
        let mut r = Ok(());
        if self.missing > 0 {
            let reason = format!(
                "the audit stream could not be written ({error}): up to {} records (the batch \
                 being written when it failed, and any beyond the daemon's queue of \
                 {AUDIT_QUEUE}) are missing before this one; decisions were enforced",
                self.missing
            );
            r = log.append_gap(self.missing, None, &reason).map(|_| ());
        }
        for rec in &queued {
            r = r.and_then(|()| append(&mut log, rec));
        }
        r = r.and_then(|()| log.flush());
        match r {
            Ok(()) => {
                tracing::info!(
                    queued = n,
                    missing = self.missing,
                    "the audit stream is written again"
                );
                self.missing = 0;
                self.down = None;
                self.log = Some(log);
            }
            Err(e) => {
                self.missing += n as u64;
                drop(log);
                self.down = Some((e.to_string(), Instant::now()));
            }
        }
    }

    fn close(mut self) {
        if self.down.is_some() {
            self.down = self
                .down
                .take()
                .map(|(e, _)| (e, Instant::now() - Duration::from_secs(2)));
            self.retry();
        }
        if let Some(mut log) = self.log.take() {
            let mut stop = Lifecycle::new(Scope::Daemon);
            stop.pid = Some(std::process::id());
            stop.reason = Some("daemon stopped; agents stay confined".into());
            let _ = log.append(&RecordBody::Stop(stop));
            let _ = log.close();
        }
    }
}

/// The event thread: drains the ring buffer into the audit stream, per agent, and writes the
/// lifecycle records the owner sends; reports the network flows the kernel counted, an epoch
/// every few seconds (`flows`); records lost events as signed gaps.
#[allow(clippy::too_many_arguments)]
fn event_loop(
    (mut events, mut flows): (RingBuf<MapData>, crate::flows::Flows),
    counters: Counters,
    audit: Option<(AuditLog, AuditTarget)>,
    rx: mpsc::Receiver<AuditMsg>,
    directory: Directory,
    mut asks: AskSink,
    shared: Arc<RwLock<[u64; gate_common::counter::COUNT as usize]>>,
    fill: Arc<super::ringfill::RingFill>,
    stop: &AtomicBool,
) {
    let fd = events.as_raw_fd();
    let mut lost_seen = 0u64;
    let mut sink = audit.map(|(log, target)| AuditSink {
        log: Some(log),
        target,
        down: None,
        queue: Vec::new(),
        missing: 0,
    });
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        fill.sample();
        let mut records: Vec<RecordBody> = Vec::new();
        for m in rx.try_iter() {
            records.push(lifecycle_record(m));
        }
        while let Some(item) = events.next() {
            let Some(e) = events::parse(&item) else {
                continue;
            };
            if e.rule == rule::SELFTEST {
                continue;
            }
            let meta = directory
                .read()
                .ok()
                .and_then(|d| d.get(&e.agent_id).cloned());
            let Some(meta) = meta else {
                // An agent this daemon no longer (or not yet) knows: its decision is still
                // recorded, with the rule by number, never dropped.
                let d = events::decode_in(&e, None);
                let name = unknown_agent(e.agent_id);
                records.push(decision_record(&d, &name, ""));
                continue;
            };
            let policy = meta.policy();
            let d = events::decode(&e, &policy);
            meta.count(e.op, d.denied());
            let digest = policy.digest_hex();
            let correlation = asks.observe(&e, &d, &meta, &digest, &mut records);
            asks.count_denial(&d, &meta, &policy);
            let mut rec = decision_record(&d, &meta.name, &digest);
            if let RecordBody::Decision(r) = &mut rec {
                r.correlation = correlation;
            }
            records.push(rec);
        }
        // At the stop, the epoch so far; what the agents do after it is counted for the next
        // daemon.
        let reports = flows.sweep(stopping, false).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "flow counts not read this time");
            Vec::new()
        });
        for f in reports {
            let meta = directory
                .read()
                .ok()
                .and_then(|d| d.get(&f.key.agent_id).cloned());
            records.push(match meta {
                Some(meta) => {
                    let policy = meta.policy();
                    meta.count_allowed(gate_common::op::CONNECT, f.count);
                    flow_record(&f, &meta.name, Some(&policy), &policy.digest_hex())
                }
                None => flow_record(&f, &unknown_agent(f.key.agent_id), None, ""),
            });
        }
        let now = counters.read().unwrap_or_default();
        if let Ok(mut s) = shared.write() {
            *s = now;
        }
        let lost = now[gate_common::counter::RINGBUF_FULL as usize];
        if lost > lost_seen {
            records.push(RecordBody::Gap(crate::audit::Gap {
                lost: lost - lost_seen,
                cpu: None,
                reason: "kernel ring buffer full: events were dropped, decisions were still \
                         enforced"
                    .into(),
            }));
        }
        lost_seen = lost;
        if let Some(sink) = sink.as_mut() {
            sink.write(records);
        }
        if stopping {
            break;
        }
        events::wait_readable(fd, 100);
    }
    if let Some(sink) = sink {
        sink.close();
    }
}

/// How records name an agent this daemon no longer (or not yet) knows.
fn unknown_agent(id: u32) -> String {
    format!("agent-{id} (not known to this daemon)")
}

/// The event thread's side of `ask` requests and denial budgets.
struct AskSink {
    asks: Arc<std::sync::Mutex<super::asks::Asks>>,
    notices: super::core::Notices,
    budget: Budget,
    /// Agents that used up their denial budget, for the owner thread to lock down.
    trust: mpsc::Sender<(String, String)>,
    /// `[approvals] notify`: the command and its time limit.
    notify: Option<(Vec<String>, Duration)>,
}

/// Enforced denials per agent in the current window of its policy's `[trust] max_denials`.
#[derive(Default)]
struct Budget {
    /// By agent id: the window's start, denials in it, whether it was reported.
    windows: HashMap<u32, (Instant, u32, bool)>,
}

impl Budget {
    /// Counts one denial; true the first time a window goes past `max`.
    fn count(&mut self, agent_id: u32, max: u32, window: Duration, now: Instant) -> bool {
        let w = self.windows.entry(agent_id).or_insert((now, 0, false));
        if now.duration_since(w.0) >= window {
            *w = (now, 0, false);
        }
        w.1 += 1;
        if w.1 > max && !w.2 {
            w.2 = true;
            return true;
        }
        false
    }
}

impl AskSink {
    /// Counts an enforced denial against the agent's denial budget, and asks for its lockdown
    /// when the budget is used up.
    fn count_denial(
        &mut self,
        d: &events::Decision,
        meta: &super::core::AgentMeta,
        policy: &crate::policy::CompiledPolicy,
    ) {
        let Some((max, secs)) = policy.max_denials else {
            return;
        };
        if !d.denied() || !d.enforced {
            return;
        }
        let window = Duration::from_secs(secs);
        let over = self
            .budget
            .count(meta.agent_id, max, window, Instant::now());
        if over {
            let reason = format!(
                "more than {max} denials within {secs} s (the policy's [trust] max_denials), \
                 the last: {} {} (rule {})",
                d.op,
                d.object(),
                d.rule
            );
            let _ = self.trust.send((meta.name.clone(), reason));
        }
    }

    /// Raises, joins or links a request for an `ask` decision (enforced ones only: in audit
    /// mode the action went through). Returns the request's id for the decision's record,
    /// after pushing the request's own record when it is new.
    fn observe(
        &self,
        e: &gate_common::Event,
        d: &events::Decision,
        meta: &super::core::AgentMeta,
        digest: &str,
        records: &mut Vec<RecordBody>,
    ) -> Option<String> {
        use super::asks::{Ask, Seen, object_key, rule_key};
        let answered = e.flags & (gate_common::flag::APPROVED | gate_common::flag::REJECTED) != 0;
        if !answered && (e.decision & decision::MASK != decision::ASK || !d.enforced) {
            return None;
        }
        let object = object_key(e, d.path.is_some());
        let key = object.unwrap_or_else(|| {
            rule_key(&gate_common::VerdictKey {
                agent_id: e.agent_id,
                rule: e.rule,
                op: e.op,
                ..Default::default()
            })
        });
        let what = d.object();
        let seen = self.asks.lock().unwrap_or_else(|p| p.into_inner()).observe(
            e,
            key,
            super::core::boot_ns(),
            crate::approval::unix_now(),
            |id| Ask {
                info: gate_protocol::ApprovalRequest {
                    id,
                    agent: meta.name.clone(),
                    run: super::asks::run_id(meta.cgroup_id),
                    policy_digest: digest.to_owned(),
                    op: d.op.to_owned(),
                    rule: d.rule.clone(),
                    object: what.clone(),
                    has_object: object.is_some(),
                    pid: e.tgid,
                    comm: d.comm.clone(),
                    process: super::asks::process_chain(e.tgid, &d.comm, e.ppid),
                    first: 0,
                    last: 0,
                    attempts: 0,
                },
                agent_id: meta.agent_id,
                key,
            },
        );
        match seen {
            Seen::New(ask) => {
                let a = &ask.info;
                let mut rec = crate::audit::Approval::new(
                    &a.id,
                    &a.agent,
                    crate::audit::Verdict::Ask,
                    "kernel",
                    "request",
                );
                rec.run = Some(a.run.clone());
                rec.op = Some(a.op.clone());
                rec.object = Some(a.object.clone());
                rec.rule = Some(a.rule.clone());
                rec.policy_digest = Some(a.policy_digest.clone());
                rec.process = a.process.clone();
                records.push(RecordBody::Approval(rec));
                self.notify(&ask);
                if let Some((argv, timeout)) = &self.notify {
                    run_notify(argv.clone(), *timeout, &ask.info);
                }
                Some(ask.info.id)
            }
            Seen::Repeat(id) => Some(id),
            Seen::Answered(id) => id,
        }
    }

    /// One line on the agent's terminal (through `gate run`'s connection), never blocking
    /// the event thread for long.
    fn notify(&self, ask: &super::asks::Ask) {
        let a = &ask.info;
        let message = format!(
            "approval needed [{id}]: {op} {object} (rule {rule}, pid {pid} {comm}) was denied; \
             to allow it, run outside the agent: gate approve {id}  (or: gate reject {id})",
            id = a.id,
            op = a.op,
            object = a.object,
            rule = a.rule,
            pid = a.pid,
            comm = a.comm,
        );
        let Ok(mut n) = self.notices.lock() else {
            return;
        };
        if let Some(w) = n.get_mut(&ask.agent_id)
            && write_line(w, &Response::Notice { message }).is_err()
        {
            n.remove(&ask.agent_id);
        }
    }
}

/// Runs the `[approvals] notify` command for a new request, off the event thread: not through
/// a shell, with a clean environment, the request's JSON on stdin, killed past `timeout`.
fn run_notify(argv: Vec<String>, timeout: Duration, req: &gate_protocol::ApprovalRequest) {
    let json = serde_json::to_string(req).unwrap_or_default();
    let id = req.id.clone();
    let spawned = thread::Builder::new().name("notify".into()).spawn(move || {
        let child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(request = id, command = argv[0], error = %e, "the approval notify command could not start");
                return;
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(json.as_bytes());
            let _ = stdin.write_all(b"\n");
        }
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return,
                Ok(Some(status)) => {
                    tracing::warn!(request = id, command = argv[0], %status, "the approval notify command failed");
                    return;
                }
                Ok(None) if started.elapsed() >= timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    tracing::warn!(request = id, command = argv[0], ?timeout, "the approval notify command took too long and was killed");
                    return;
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(_) => return,
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread for the approval notify command");
    }
}

fn lifecycle_record(m: AuditMsg) -> RecordBody {
    match m {
        AuditMsg::PolicyLoad {
            agent,
            policy,
            previous,
        } => RecordBody::PolicyLoad(policy_load(&policy, Some(agent), previous)),
        AuditMsg::Start {
            agent,
            uid,
            command,
        } => {
            let mut l = Lifecycle::new(Scope::Run);
            l.agent = Some(agent);
            l.command = Some(command);
            l.reason = Some(format!("uid {uid}"));
            RecordBody::Start(l)
        }
        AuditMsg::Stop { agent, reason } => {
            let mut l = Lifecycle::new(Scope::Run);
            l.agent = Some(agent);
            l.reason = Some(reason);
            RecordBody::Stop(l)
        }
        AuditMsg::Approval(a) => RecordBody::Approval(*a),
    }
}

/// `gate unload`: detaches every program gate pinned (the daemon's and every run's) and says
/// what it removed. Refused while a daemon answers on `socket` (it holds the programs too).
pub fn unload(socket: &Path) -> i32 {
    if UnixStream::connect(socket).is_ok() {
        eprintln!(
            "gate unload: a gate daemon is running ({}); stop it first (systemctl stop gate): \
             it would keep its programs attached",
            socket.display()
        );
        return 1;
    }
    let root = Path::new(state::PIN_ROOT);
    let Ok(rd) = fs::read_dir(root) else {
        println!("gate unload: nothing pinned under {}", root.display());
        return 0;
    };
    fn count(dir: &Path, links: &mut usize, maps: &mut usize) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                count(&e.path(), links, maps);
            } else if dir.file_name().is_some_and(|n| n == "maps") {
                *maps += 1;
            } else {
                *links += 1;
            }
        }
    }
    let mut failed = false;
    let mut any = false;
    for e in rd.flatten() {
        let (mut links, mut maps) = (0, 0);
        count(&e.path(), &mut links, &mut maps);
        match remove_pins(&e.path()) {
            Ok(()) => {
                any = true;
                println!(
                    "gate unload: detached {links} programs and unpinned {maps} maps of {}",
                    e.file_name().to_string_lossy()
                );
            }
            Err(err) => {
                eprintln!("gate unload: {}: {err}", e.path().display());
                failed = true;
            }
        }
    }
    if any {
        println!(
            "gate unload: nothing gate attached is enforcing any more; processes that were \
             confined and still run are no longer confined"
        );
    } else {
        println!("gate unload: nothing pinned under {}", root.display());
    }
    i32::from(failed)
}

/// Whether a daemon socket answers.
pub fn socket_exists(path: &Path) -> bool {
    fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket_like())
        .unwrap_or(false)
}

trait SocketLike {
    fn is_socket_like(&self) -> bool;
}

impl SocketLike for fs::FileType {
    fn is_socket_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_socket()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_budget_is_reported_once_per_window() {
        let mut b = Budget::default();
        let t = Instant::now();
        let w = Duration::from_secs(60);
        let over: Vec<bool> = (0..5)
            .map(|i| b.count(1, 3, w, t + Duration::from_secs(i)))
            .collect();
        assert_eq!(over, [false, false, false, true, false]);
        // Another agent counts on its own; a new window starts afresh.
        assert!(!b.count(2, 3, w, t));
        let later = t + Duration::from_secs(61);
        let over: Vec<bool> = (0..4).map(|_| b.count(1, 3, w, later)).collect();
        assert_eq!(over, [false, false, false, true]);
    }
}
