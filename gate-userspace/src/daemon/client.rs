//! The CLI's side of the control socket. The CLI never opens pins or maps itself when a
//! daemon runs: it asks the daemon.
use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicI32, Ordering},
};

use gate_protocol::{Client, Request, Response, RunRequest, unexpected};

use crate::run::{EXIT_GATE_FAILED, RunOptions};

fn connect(socket: &Path) -> Result<Client, String> {
    Client::connect(socket).map_err(|e| e.to_string())
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    std::env::current_dir()
        .map(|d| d.join(p))
        .map_err(|e| format!("the current directory: {e}"))
}

/// `gate run` through the daemon: this process is moved into the agent's cgroup, then runs
/// the command as the calling user and waits for it, holding its connection to the daemon:
/// when the connection closes (the command ended, or this process was killed), the daemon
/// ends what is left of the agent's tree, as `gate run` without the daemon does. The daemon
/// answers nothing more on that connection: this process is confined now.
pub fn run(socket: &Path, opts: &RunOptions, name: Option<String>) -> i32 {
    match run_inner(socket, opts, name) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gate: {e}");
            EXIT_GATE_FAILED
        }
    }
}

fn run_inner(socket: &Path, opts: &RunOptions, name: Option<String>) -> Result<i32, String> {
    if opts.log.is_some() {
        return Err(
            "--log is for runs without the daemon; the daemon writes the host's audit stream \
             (see [audit] in its config); pass --no-daemon to keep a log of your own"
                .into(),
        );
    }
    if opts.user.is_some() {
        return Err(
            "--user is for runs without the daemon: through the daemon the command runs as \
             you (pass --no-daemon as root to run it as someone else)"
                .into(),
        );
    }
    let mut c = connect(socket)?;
    let req = RunRequest {
        policy: absolute(&opts.policy)?,
        workspace: opts.workspace.as_deref().map(absolute).transpose()?,
        mode: opts.mode.map(|m| m.name().to_string()),
        command: opts
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        name,
    };
    let (agent, cgroup, digest, warnings) =
        match c.call(&Request::Run(req)).map_err(|e| e.to_string())? {
            Response::Started {
                agent,
                cgroup,
                policy_digest,
                warnings,
            } => (agent, cgroup, policy_digest, warnings),
            other => return Err(unexpected(&other).to_string()),
        };
    if !opts.quiet {
        eprintln!(
            "gate: confined by the gate daemon as agent {agent} ({cgroup}, policy {} digest {})",
            opts.policy.display(),
            &digest[..12.min(digest.len())]
        );
        if warnings > 0 {
            eprintln!(
                "gate: note: {warnings} policy entries have no effect on this host (paths that \
                 do not exist); `gate policy check {}` lists them",
                opts.policy.display()
            );
        }
    }
    // The daemon sends a notice for each new approval request of this agent: print it
    // where the agent (and its user) can read it.
    if let Ok(conn) = c.stream().try_clone() {
        let _ = conn.set_read_timeout(None);
        let _ = std::thread::Builder::new()
            .name("notices".into())
            .spawn(move || print_notices(conn));
    }
    let (prog, args) = opts.command.split_first().ok_or("no command given")?;
    let mut command = Command::new(prog);
    command.args(args);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let hint = if err.raw_os_error() == Some(libc::EPERM) {
                " (the policy does not allow executing it: add an exec rule for it)"
            } else {
                ""
            };
            eprintln!(
                "gate: could not start {}: {err}{hint}",
                prog.to_string_lossy()
            );
            return Ok(if err.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    // The terminal's ^C and ^\ reach the command (same process group); this process waits on.
    // SIGTERM and SIGHUP sent to gate are passed on to the command.
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    // SAFETY: the handler only reads an atomic and calls kill(2).
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, forward as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, forward as *const () as libc::sighandler_t);
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the command: {e}"))?;
    // Closes the connection for the notice thread's copy too: the daemon takes the close
    // as the end of the run.
    let _ = c.stream().shutdown(std::net::Shutdown::Both);
    drop(c);
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

fn print_notices(conn: std::os::unix::net::UnixStream) {
    let mut r = std::io::BufReader::new(conn);
    while let Ok(Some(line)) = gate_protocol::read_line(&mut r) {
        if let Ok(Response::Notice { message }) = serde_json::from_str(&line) {
            eprintln!("gate: {message}");
        }
    }
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// `gate status` / `gate agents`.
pub fn status(socket: &Path, json: bool, agents_only: bool) -> i32 {
    let r =
        connect(socket).and_then(|mut c| c.call(&Request::Status {}).map_err(|e| e.to_string()));
    let s = match r {
        Ok(Response::Status(s)) => s,
        Ok(other) => return fail(&unexpected(&other).to_string()),
        Err(e) => return fail(&e),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return 0;
    }
    if !agents_only {
        println!(
            "gate daemon {} (pid {}): {} agents, heartbeat {} ms ago (lockdown after {} ms), \
             {} events lost",
            s.version,
            s.pid,
            s.agents.len(),
            s.heartbeat_ms,
            s.lockdown_after_ms,
            s.events_lost
        );
        println!(
            "capacity: {} agents, {} file rules, {}+{} network prefixes",
            s.capacity.agents, s.capacity.inodes, s.capacity.net4, s.capacity.net6
        );
        let counters: Vec<String> = s
            .counters
            .iter()
            .filter(|(n, _)| !n.starts_with("spare"))
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        println!("kernel counters: {}", counters.join(" "));
    }
    if s.agents.is_empty() {
        println!("no agents");
    }
    for a in &s.agents {
        if let Some(why) = &a.trust_lockdown {
            println!(
                "{:<20} IN TRUST LOCKDOWN ({why}); `gate trust restore {}` ends it",
                a.name, a.name
            );
        }
        println!(
            "{:<20} uid {:<6} {:<7} {} ({} {}) decisions {} denied {} — {}",
            a.name,
            a.uid,
            a.mode,
            a.cgroup,
            a.policy,
            &a.policy_digest[..12.min(a.policy_digest.len())],
            a.decisions,
            a.denied,
            a.command.join(" ")
        );
    }
    0
}

pub fn reload(socket: &Path, agent: Option<String>) -> i32 {
    let r = connect(socket).and_then(|mut c| {
        c.call(&Request::Reload { agent })
            .map_err(|e| e.to_string())
    });
    match r {
        Ok(Response::Reloaded { agents }) => {
            let mut failed = false;
            for a in agents {
                match (a.error, a.new_digest) {
                    (Some(e), _) => {
                        failed = true;
                        eprintln!(
                            "gate reload: {}: refused, the old policy stays: {e}",
                            a.agent
                        );
                    }
                    (None, Some(new)) => println!(
                        "gate reload: {}: {} -> {}",
                        a.agent,
                        &a.old_digest[..12.min(a.old_digest.len())],
                        &new[..12.min(new.len())]
                    ),
                    (None, None) => {}
                }
            }
            i32::from(failed)
        }
        Ok(other) => fail(&unexpected(&other).to_string()),
        Err(e) => fail(&e),
    }
}

pub fn stop(socket: &Path, agent: String) -> i32 {
    let r = connect(socket)
        .and_then(|mut c| c.call(&Request::Stop { agent }).map_err(|e| e.to_string()));
    match r {
        Ok(Response::Stopped { agent, killed }) => {
            println!("gate stop: agent {agent} ended ({killed} processes killed)");
            0
        }
        Ok(other) => fail(&unexpected(&other).to_string()),
        Err(e) => fail(&e),
    }
}

/// `gate trust restore AGENT`.
pub fn trust_restore(socket: &Path, agent: String) -> i32 {
    let r = connect(socket).and_then(|mut c| {
        c.call(&Request::TrustRestore { agent })
            .map_err(|e| e.to_string())
    });
    match r {
        Ok(Response::Restored { agent }) => {
            println!("gate: agent {agent} is out of lockdown: its policy is in force again");
            0
        }
        Ok(other) => fail(&unexpected(&other).to_string()),
        Err(e) => fail(&e),
    }
}

pub fn metrics(socket: &Path) -> i32 {
    let r =
        connect(socket).and_then(|mut c| c.call(&Request::Metrics {}).map_err(|e| e.to_string()));
    match r {
        Ok(Response::Metrics { text }) => {
            print!("{text}");
            0
        }
        Ok(other) => fail(&unexpected(&other).to_string()),
        Err(e) => fail(&e),
    }
}

fn ago(t: u64) -> String {
    let d = crate::approval::unix_now().saturating_sub(t);
    match d {
        0..=119 => format!("{d}s ago"),
        120..=7199 => format!("{}m ago", d / 60),
        _ => format!("{}h ago", d / 3600),
    }
}

fn print_request(a: &gate_protocol::ApprovalRequest) {
    println!(
        "{}  {}  {} {}  (rule {}, {} attempt{}, first {}, last {})",
        a.id,
        a.agent,
        a.op,
        a.object,
        a.rule,
        a.attempts,
        if a.attempts == 1 { "" } else { "s" },
        ago(a.first),
        ago(a.last)
    );
    for p in &a.process {
        println!("        {p}");
    }
    if !a.has_object {
        println!("        (no single object: approve with --scope rule)");
    }
}

/// `gate approvals [--json] [-f]`: the pending requests; with `-f`, new ones as they come.
pub fn approvals(socket: &Path, json: bool, follow: bool) -> i32 {
    let mut c = match connect(socket) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let mut shown = std::collections::HashSet::new();
    loop {
        let reqs = match c.call(&Request::Approvals {}) {
            Ok(Response::Approvals { requests }) => requests,
            Ok(other) => return fail(&unexpected(&other).to_string()),
            Err(e) => return fail(&e.to_string()),
        };
        if !follow {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&reqs).unwrap_or_default()
                );
            } else if reqs.is_empty() {
                println!("no pending requests");
            } else {
                for a in &reqs {
                    print_request(a);
                }
                println!(
                    "approve: gate approve ID [--ttl 10m] [--scope object|rule]; reject: gate reject ID"
                );
            }
            return 0;
        }
        for a in reqs {
            if shown.insert(a.id.clone()) {
                if json {
                    println!("{}", serde_json::to_string(&a).unwrap_or_default());
                } else {
                    print_request(&a);
                }
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// How `gate approve` / `gate reject` was asked to answer.
pub struct AnswerOptions {
    /// The request (optional with `tokens`: the tokens name it).
    pub id: Option<String>,
    pub allow: bool,
    pub ttl: String,
    pub scope: String,
    /// Sign with this private key (`gate keygen`).
    pub key: Option<PathBuf>,
    /// Print the signed token instead of submitting it.
    pub sign_only: bool,
    /// The request's JSON (`gate approvals --json` on the agent's host), to sign without the
    /// daemon.
    pub request: Option<PathBuf>,
    /// Token files to submit (one token per line).
    pub tokens: Vec<PathBuf>,
}

fn parse_scope(scope: &str) -> Result<bool, String> {
    match scope {
        "object" => Ok(false),
        "rule" => Ok(true),
        other => Err(format!(
            "--scope {other:?}: use object (that file or address only) or rule (everything \
             the request's rule matches)"
        )),
    }
}

/// The request `id`, from `--request FILE` (one request or the list `gate approvals --json`
/// prints) or from the daemon.
fn find_request(
    socket: &Path,
    id: &str,
    file: Option<&Path>,
) -> Result<gate_protocol::ApprovalRequest, String> {
    let all: Vec<gate_protocol::ApprovalRequest> = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            serde_json::from_str::<Vec<gate_protocol::ApprovalRequest>>(&text)
                .or_else(|_| serde_json::from_str(&text).map(|one| vec![one]))
                .map_err(|e| {
                    format!(
                        "{}: not a request as `gate approvals --json` prints it: {e}",
                        f.display()
                    )
                })?
        }
        None => match connect(socket)?.call(&Request::Approvals {}) {
            Ok(Response::Approvals { requests }) => requests,
            Ok(other) => return Err(unexpected(&other).to_string()),
            Err(e) => return Err(e.to_string()),
        },
    };
    all.into_iter().find(|r| r.id == id).ok_or_else(|| {
        format!("no pending request {id:?}; `gate approvals` lists the pending ones")
    })
}

/// Signs an approval of request `r` with the key at `key`.
fn sign(
    r: &gate_protocol::ApprovalRequest,
    key: &Path,
    scope_rule: bool,
    ttl: std::time::Duration,
) -> Result<crate::approval::Token, String> {
    let k = crate::audit::SigningKey::load(key).map_err(|e| e.to_string())?;
    let st = crate::approval::Statement {
        v: 1,
        request: crate::approval::RequestFacts {
            request: r.id.clone(),
            agent: r.agent.clone(),
            run: r.run.clone(),
            op: r.op.clone(),
            object: r.object.clone(),
            rule: r.rule.clone(),
            policy_digest: r.policy_digest.clone(),
        },
        scope: if scope_rule { "rule" } else { "object" }.into(),
        expires: crate::approval::unix_now() + ttl.as_secs(),
        nonce: crate::approval::nonce(),
        key: String::new(),
    };
    Ok(crate::approval::Token::sign(st, &k))
}

/// `gate approve` / `gate reject`.
pub fn answer(socket: &Path, o: AnswerOptions) -> i32 {
    match answer_inner(socket, o) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn answer_inner(socket: &Path, o: AnswerOptions) -> Result<i32, String> {
    let ttl = crate::approval::parse_ttl(&o.ttl).map_err(|e| format!("--ttl: {e}"))?;
    let mut scope_rule = parse_scope(&o.scope)?;
    let mut tokens: Vec<String> = Vec::new();
    let mut id = o.id.clone();
    for f in &o.tokens {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("--token {}: {e}", f.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (st, _) = crate::approval::Token::parse(line)
                .and_then(|t| t.verify())
                .map_err(|e| format!("--token {}: {e}", f.display()))?;
            if id.as_ref().is_some_and(|i| *i != st.request.request) {
                return Err(format!(
                    "--token {}: the token approves request {}, not {}",
                    f.display(),
                    st.request.request,
                    id.unwrap_or_default()
                ));
            }
            id = Some(st.request.request.clone());
            scope_rule = st.scope == "rule";
            tokens.push(line.trim().to_owned());
        }
    }
    let id = id.ok_or("name the request: gate approve ID (`gate approvals` lists them)")?;
    if let Some(key) = &o.key {
        if !o.allow {
            return Err("--key signs approvals; a rejection needs no signature".into());
        }
        let r = find_request(socket, &id, o.request.as_deref())?;
        let token = sign(&r, key, scope_rule, ttl)?;
        if o.sign_only {
            println!("{}", token.to_line());
            eprintln!(
                "gate: signed an approval of request {id} ({} {}) until unix time {}; carry the \
                 line above to the agent's host and submit it there: gate approve --token FILE",
                r.op,
                r.object,
                crate::approval::unix_now() + ttl.as_secs()
            );
            return Ok(0);
        }
        tokens.push(token.to_line());
    } else if o.sign_only {
        return Err("--sign-only needs --key FILE (the approver's private key)".into());
    }
    let ttl_s = ttl.as_secs();
    let req = if o.allow {
        Request::Approve {
            id,
            ttl_s,
            scope_rule,
            tokens,
        }
    } else {
        Request::Reject {
            id,
            ttl_s,
            scope_rule,
        }
    };
    match connect(socket)?.call(&req).map_err(|e| e.to_string())? {
        Response::Answered {
            id,
            allow,
            expires,
            closed,
        } => {
            let left = expires.saturating_sub(crate::approval::unix_now());
            println!(
                "gate: {} {id} for {left} s (the kernel ends it on time, daemon or not){}",
                if allow { "approved" } else { "rejected" },
                if closed.len() > 1 {
                    format!(
                        "; it answers {} requests: {}",
                        closed.len(),
                        closed.join(" ")
                    )
                } else {
                    String::new()
                }
            );
            Ok(0)
        }
        Response::Signed { id, have, need } => {
            println!(
                "gate: signature accepted: request {id} has {have} of the {need} signatures its \
                 rule requires; it stays denied until {} more approver(s) sign",
                need - have
            );
            Ok(0)
        }
        other => Err(unexpected(&other).to_string()),
    }
}

/// `gate keygen FILE`: a new approver key (private key in FILE, mode 0600; public key in
/// FILE's `.pub`).
pub fn keygen(file: &Path) -> i32 {
    if file.exists() {
        return fail(&format!(
            "{} exists already; gate never replaces a key (remove it first if you mean to)",
            file.display()
        ));
    }
    match crate::audit::SigningKey::create(file) {
        Ok(k) => {
            println!("{}", k.public_key().to_base64());
            eprintln!(
                "gate: private key in {} (keep it to yourself), public key above and in {}; \
                 an administrator adds the public key to an [approvers.GROUP] of the daemon's \
                 config",
                file.display(),
                crate::audit::public_key_path(file).display()
            );
            0
        }
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(e: &str) -> i32 {
    eprintln!("gate: {e}");
    1
}
