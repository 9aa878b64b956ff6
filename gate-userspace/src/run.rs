//! `gate run`: confine one command tree with one policy.
//!
//! Order matters and every step fails closed:
//! 1. compile the policy (nothing touches the kernel if it is invalid);
//! 2. create a fresh cgroup, load the programs with the policy in their maps, attach them and
//!    pin the links (so enforcement outlives gate if it is killed);
//! 3. prove that enforcement is in effect with a self-test: a forked process in the cgroup
//!    must be stopped (and reported) opening a canary file gate protects;
//! 4. only then start the command, moved into the cgroup before it execs;
//! 5. when it exits, kill what is left of its tree, drain the events, detach, remove the cgroup.
use std::{
    ffi::{CString, OsString},
    io,
    os::{
        fd::{AsFd, AsRawFd},
        unix::process::{CommandExt, ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use gate_common::{InodeRule, decision, op, rule};

use crate::{
    cgroup::{self, Cgroup, CgroupError, Hierarchy},
    engine::{Capacity, Counters, Engine, EngineError},
    events,
    flows::Flows,
    policy::{self, CompiledPolicy, Mode, PolicyError, Vars},
    report::{LogSink, Summary},
    session::Session,
    state,
};

/// Exit status when gate itself fails (as `env`/`timeout` do).
pub const EXIT_GATE_FAILED: i32 = 125;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("{0}")]
    User(String),
    #[error("enforcement is not in effect, refusing to start the command: {0}")]
    SelfTest(String),
    #[error("ending the run: {0}")]
    End(String),
    #[error("could not start {cmd}: {source}{hint}")]
    Spawn {
        cmd: String,
        source: io::Error,
        hint: &'static str,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// What `gate run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub policy: PathBuf,
    pub workspace: Option<PathBuf>,
    pub mode: Option<Mode>,
    pub log: Option<PathBuf>,
    /// Ed25519 key that signs the log's checkpoints (created on first use).
    pub audit_key: PathBuf,
    pub command: Vec<OsString>,
    pub ringbuf_bytes: u32,
    pub quiet: bool,
    /// `--user`: who the command runs as.
    pub user: Option<String>,
}

/// Who the confined command runs as, and what `~/` means for its policy.
#[derive(Clone, Debug)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (resolved before the fork: the child only makes syscalls).
    pub groups: Vec<libc::gid_t>,
    pub name: String,
    pub home: PathBuf,
    /// Whether gate changes identity for the command (it runs as someone other than gate).
    pub switch: bool,
}

/// `--user NAME|UID`; else the user who ran sudo (`SUDO_UID`); else gate's own user, which
/// must not be root unless asked for (`--user root`).
pub fn resolve_user(requested: Option<&str>) -> Result<RunAs, RunError> {
    use nix::unistd::{Uid, User, getuid};
    let bad = |m: String| RunError::User(m);
    let me = getuid();
    let user = match requested {
        Some(r) => match r.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(r),
        }
        .ok()
        .flatten()
        .ok_or_else(|| bad(format!("--user {r}: no such user")))?,
        None => match std::env::var("SUDO_UID")
            .ok()
            .and_then(|u| u.parse::<u32>().ok())
        {
            Some(uid) if me.is_root() => User::from_uid(Uid::from_raw(uid))
                .ok()
                .flatten()
                .ok_or_else(|| bad(format!("SUDO_UID={uid} names no user")))?,
            _ if me.is_root() => {
                return Err(bad(
                    "gate run would run the agent as root; agents run as their user. Run gate \
                     through sudo (the command then runs as you), name the user with --user \
                     NAME, or pass --user root to run it as root on purpose"
                        .into(),
                ));
            }
            _ => User::from_uid(me)
                .ok()
                .flatten()
                .ok_or_else(|| bad(format!("uid {me} has no passwd entry")))?,
        },
    };
    let switch = user.uid != me;
    // Not switching identity: the person's own $HOME; switching: the target's home.
    let home = if !switch && std::env::var_os("SUDO_UID").is_none() {
        home_dir()
    } else {
        user.dir.clone()
    };
    let name = CString::new(user.name.as_bytes()).map_err(|_| bad("user name has a NUL".into()))?;
    let groups = if switch {
        nix::unistd::getgrouplist(&name, user.gid)
            .map_err(|e| bad(format!("groups of {}: {e}", user.name)))?
            .into_iter()
            .map(|g| g.as_raw())
            .collect()
    } else {
        Vec::new()
    };
    Ok(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups,
        name: user.name,
        home,
        switch,
    })
}

/// Runs the command confined; returns the exit status for gate to exit with.
pub fn run(opts: &RunOptions) -> i32 {
    match run_inner(opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gate: {e}");
            EXIT_GATE_FAILED
        }
    }
}

pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn run_inner(opts: &RunOptions) -> Result<i32, RunError> {
    let who = resolve_user(opts.user.as_deref())?;
    let vars = Vars {
        workspace: opts.workspace.clone(),
        home: who.home.clone(),
    };
    // The signing key and the log exist before the policy is compiled, so that their inodes
    // are protected (`gate-self`).
    if let Some(log) = &opts.log {
        if let Some(dir) = opts.audit_key.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        crate::audit::SigningKey::load_or_create(&opts.audit_key)
            .map_err(|e| RunError::Audit(e.into()))?;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(log)
            .map_err(io_err(format!("creating the audit log {}", log.display())))?;
    }
    policy::protect(state::gate_state(&opts.audit_key, opts.log.as_deref()));
    let t = Instant::now();
    let mut policy = policy::load(&opts.policy, &vars)?;
    tracing::debug!(ms = t.elapsed().as_millis() as u64, "policy compiled");
    if let Some(mode) = opts.mode {
        policy.mode = mode;
    }
    if !policy.warnings.is_empty() && !opts.quiet {
        let watched = policy.pending_paths.len();
        let other = policy.warnings.len().saturating_sub(watched);
        let check = format!("`gate policy check {}` lists them", opts.policy.display());
        if watched > 0 {
            eprintln!(
                "gate: note: {watched} paths the policy names do not exist yet: their rules \
                 apply once they are created; {check}"
            );
        }
        if other > 0 {
            eprintln!("gate: note: the policy has {other} warnings; {check}");
        }
    }
    let asks = policy
        .rules
        .iter()
        .filter(|r| r.decision == policy::Decision::Ask)
        .count();
    if asks > 0 && !opts.quiet {
        eprintln!(
            "gate: note: without the gate daemon, the policy's {asks} `ask` rules only deny \
             (nobody can approve); start `gate daemon` (or the gate service) to answer them \
             with `gate approve`"
        );
    }
    let policy = Arc::new(policy);
    let h = cgroup::hierarchy()?;
    state::ensure_bpffs()?;
    state::collect_stale(&h);
    let run = state::RunState::create()?;
    let result = confine_and_run(opts, &policy, &h, &run, &who);
    if result.is_ok() {
        run.remove();
    }
    result
}

fn confine_and_run(
    opts: &RunOptions,
    policy: &Arc<CompiledPolicy>,
    h: &Hierarchy,
    run: &state::RunState,
    who: &RunAs,
) -> Result<i32, RunError> {
    let session = Session::create(h, &run.id)?;
    let cg = session.cgroup();
    run.record_cgroup(&cg.path)?;
    let mut engine = Engine::load(Capacity::for_policy(policy, 1), opts.ringbuf_bytes)?;
    let canary = run.canary()?;
    engine.add_agent(cg.id, cg.level, 1, policy, &[(canary, canary_rule())])?;
    let attached = engine.attach(&run.pin_dir);
    let mut events = engine.take_events()?;
    let counters = engine.take_counters()?;
    let flows = engine.take_flows()?;
    let outcome = attached.map_err(RunError::from).and_then(|()| {
        let t = Instant::now();
        session.self_test(&run.canary_path(), policy.mode)?;
        wait_selftest_event(&mut events)?;
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "self-test passed");
        supervise(opts, policy, cg, (events, flows), counters, who)
    });
    // Whatever happened, nothing confined may be left running unconfined: the session ends
    // the tree before enforcement is removed (when dropped on an error, too).
    let summary = outcome?;
    session.end(|| engine.detach()).map_err(RunError::End)?;
    if !opts.quiet {
        eprint!("{}", summary.render(&opts.command));
    }
    Ok(summary.exit_code)
}

fn canary_rule() -> InodeRule {
    let mut r = InodeRule::default();
    r.exact[op::WRITE as usize] = decision::DENY;
    r.exact_rule[op::WRITE as usize] = rule::SELFTEST;
    r
}

/// What [`canary_probe`]'s child reports.
pub mod probe {
    /// The canary opened for writing: nothing denied it.
    pub const OPENED: i32 = 10;
    /// EPERM: enforcement is in effect.
    pub const DENIED: i32 = 11;
    pub const OTHER_ERROR: i32 = 12;
    /// It could not join the cgroup.
    pub const NOT_MOVED: i32 = 13;
}

/// Forks a process that joins the cgroup of `procs` (its `cgroup.procs`) and opens `canary`
/// for writing; returns its exit code ([`probe`]).
pub fn canary_probe(procs: &std::fs::File, canary: &Path) -> Result<i32, RunError> {
    let path = CString::new(canary.as_os_str().as_encoded_bytes())
        .map_err(|_| RunError::SelfTest("canary path has a NUL byte".into()))?;
    // SAFETY: the child only makes async-signal-safe calls.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io_err("fork for the self-test")(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: raw syscalls only, then _exit.
        unsafe {
            let code = if write_pid(procs.as_raw_fd(), libc::getpid()) {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    probe::OPENED
                } else if *libc::__errno_location() == libc::EPERM {
                    probe::DENIED
                } else {
                    probe::OTHER_ERROR
                }
            } else {
                probe::NOT_MOVED
            };
            libc::_exit(code);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    })
}

fn wait_selftest_event(events: &mut RingBuf<MapData>) -> Result<(), RunError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        while let Some(item) = events.next() {
            if let Some(e) = events::parse(&item)
                && e.rule == rule::SELFTEST
            {
                return Ok(());
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    Err(RunError::SelfTest(
        "the kernel denied the test but reported no event".into(),
    ))
}

/// Writes `pid` in decimal to `fd` without allocating (safe between fork and exec).
fn write_pid(fd: i32, pid: i32) -> bool {
    let mut buf = [0u8; 12];
    let mut i = buf.len();
    let mut n = pid as u32;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // SAFETY: writing from a valid buffer.
    unsafe { libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i) > 0 }
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: i32) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// SIGTERM and SIGHUP go to the command; SIGINT and SIGQUIT reach it from the terminal
/// directly, so gate itself ignores them while the command runs.
fn install_signal_handlers() {
    // SAFETY: installing handlers that only call kill(2).
    unsafe {
        libc::signal(
            libc::SIGTERM,
            forward_signal as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGHUP,
            forward_signal as *const () as libc::sighandler_t,
        );
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
}

/// Starts the command in the cgroup, collects events until it and its tree are gone.
fn supervise(
    opts: &RunOptions,
    policy: &Arc<CompiledPolicy>,
    cg: &Cgroup,
    (events, flows): (RingBuf<MapData>, Flows),
    counters: Counters,
    who: &RunAs,
) -> Result<Summary, RunError> {
    let sink = match &opts.log {
        Some(p) => Some(LogSink::open(
            p,
            &opts.audit_key,
            policy,
            &cg.name,
            &opts.command,
        )?),
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (stop, policy) = (stop.clone(), policy.clone());
        thread::spawn(move || collect((events, flows), counters, sink, &policy, &stop))
    };
    let status = spawn_and_wait(opts, cg, who);
    // The command's own exit does not end what it left running: end the tree.
    let _ = cg.kill_all(Duration::from_secs(10));
    stop.store(true, Ordering::SeqCst);
    let (mut summary, sink) = collector
        .join()
        .map_err(|_| RunError::SelfTest("event thread panicked".into()))??;
    let (code, reason) = match &status {
        Ok(c) => (Some(*c), None),
        Err(e) => (None, Some(e.to_string())),
    };
    if let Some(sink) = sink {
        sink.finish(code, reason)?;
    }
    summary.exit_code = status?;
    Ok(summary)
}

fn spawn_and_wait(opts: &RunOptions, cg: &Cgroup, who: &RunAs) -> Result<i32, RunError> {
    let procs = cg.procs_file()?;
    let fd = procs.as_fd().as_raw_fd();
    let (prog, args) = opts.command.split_first().ok_or_else(|| RunError::Spawn {
        cmd: String::new(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "no command given"),
        hint: "",
    })?;
    let mut cmd = Command::new(prog);
    cmd.args(args);
    if who.switch {
        cmd.env("HOME", &who.home)
            .env("USER", &who.name)
            .env("LOGNAME", &who.name);
    }
    let (switch, uid, gid, groups) = (who.switch, who.uid, who.gid, who.groups.clone());
    // SAFETY: the closure only makes syscalls (getpid, write, setgroups, setgid, setuid).
    unsafe {
        // Identity first, then the cgroup: a confined task has no capabilities its policy
        // does not grant (setuid needs CAP_SETUID). The cgroup is joined through a
        // `cgroup.procs` opened by gate before the fork: the kernel checks the opener's
        // credentials, not the writer's.
        cmd.pre_exec(move || {
            if switch
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            if !write_pid(fd, libc::getpid()) {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
        cmd: prog.to_string_lossy().into_owned(),
        hint: if source.raw_os_error() == Some(libc::EPERM) {
            " (the policy does not allow executing it: add an exec rule for it)"
        } else {
            ""
        },
        source,
    })?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    install_signal_handlers();
    drop(procs);
    let status = child.wait().map_err(io_err("waiting for the command"))?;
    CHILD.store(0, Ordering::SeqCst);
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Drains the ring buffer into the log and the summary until told to stop, then once more;
/// reports the network flows the kernel counted (every few seconds, and all at the end).
/// Events the kernel could not queue become signed gap records.
fn collect(
    (mut events, mut flows): (RingBuf<MapData>, Flows),
    counters: Counters,
    mut sink: Option<LogSink>,
    policy: &CompiledPolicy,
    stop: &AtomicBool,
) -> Result<(Summary, Option<LogSink>), RunError> {
    let mut summary = Summary::default();
    let fd = events.as_fd().as_raw_fd();
    let mut lost_seen = 0u64;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        while let Some(item) = events.next() {
            let Some(e) = events::parse(&item) else {
                continue;
            };
            if e.rule == rule::SELFTEST {
                continue;
            }
            let d = events::decode(&e, policy);
            summary.add(&d);
            if let Some(s) = sink.as_mut() {
                s.decision(&d)?;
            }
        }
        // At the end (the agent's processes are gone) the flows of both epochs.
        match flows.sweep(stopping, stopping) {
            Ok(reports) => {
                for f in reports {
                    *summary.counts.entry(("connect", "allow")).or_default() += f.count;
                    if let Some(s) = sink.as_mut() {
                        s.flow(&f, policy)?;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "flow counts not read this time"),
        }
        summary.counters = counters.read()?;
        let lost = summary.counters[gate_common::counter::RINGBUF_FULL as usize];
        if let Some(s) = sink.as_mut() {
            if lost > lost_seen {
                s.gap(lost - lost_seen, None)?;
            }
            s.tick()?;
        }
        lost_seen = lost;
        if stopping {
            break;
        }
        events::wait_readable(fd, 50);
    }
    Ok((summary, sink))
}
