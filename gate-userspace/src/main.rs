//! The `gate` command line.
use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use gate::{
    policy::{self, Mode, Vars},
    run::{self, RunOptions},
};

#[derive(Parser)]
#[command(
    name = "gate",
    version,
    about = "Confine AI agents in the kernel with BPF LSM"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Enforce,
    Audit,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a command confined by a policy, with its whole process tree.
    Run {
        /// Policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// Directory substituted for ${workspace} in the policy.
        #[arg(long)]
        workspace: Option<PathBuf>,
        /// Override the policy's mode (audit: report what would be denied, deny nothing).
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// Append the signed, hash-chained audit stream (one JSON record per line) to this file.
        #[arg(long)]
        log: Option<PathBuf>,
        /// Ed25519 key signing the log's checkpoints; created (mode 0600, public key beside it
        /// as .pub) if missing.
        #[arg(long, env = "GATE_AUDIT_KEY", default_value = gate::audit::DEFAULT_KEY_PATH)]
        audit_key: PathBuf,
        /// Size of the kernel event ring buffer.
        #[arg(long, default_value_t = gate::engine::DEFAULT_RINGBUF_BYTES)]
        ringbuf_bytes: u32,
        /// Do not print the summary at the end.
        #[arg(long, short)]
        quiet: bool,
        /// Run the command as this user (name or uid). Default: the user who ran sudo
        /// (SUDO_UID); running an agent as root needs `--user root`.
        #[arg(long)]
        user: Option<String>,
        /// Never go through the gate daemon: load a private engine (needs root).
        #[arg(long)]
        no_daemon: bool,
        /// The daemon's control socket.
        #[arg(long, env = "GATE_SOCKET", default_value = gate_protocol::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// A name for the agent (through the daemon; unique among running agents).
        #[arg(long)]
        name: Option<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// Run the host's enforcement daemon (as the gate.service systemd unit does).
    Daemon {
        /// Configuration file.
        #[arg(long, default_value = gate::daemon::config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// The daemon's agents, policies, counters and heartbeat.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, env = "GATE_SOCKET", default_value = gate_protocol::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// The daemon's agents, one line each.
    Agents {
        #[arg(long, env = "GATE_SOCKET", default_value = gate_protocol::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Recompile and atomically replace the policy of one agent, or of all (root).
    Reload {
        agent: Option<String>,
        #[arg(long, env = "GATE_SOCKET", default_value = gate_protocol::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// End an agent: kill its processes and remove it.
    Stop {
        agent: String,
        #[arg(long, env = "GATE_SOCKET", default_value = gate_protocol::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// The daemon's metrics (Prometheus text format).
    Metrics {
        #[arg(long, env = "GATE_SOCKET", default_value = gate_protocol::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Detach every program gate pinned (the daemon's and every run's), on purpose (root).
    Unload {
        #[arg(long, env = "GATE_SOCKET", default_value = gate_protocol::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Work with policy files.
    /// Requests for approval raised by `ask` rules, pending an answer.
    Approvals {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Keep printing new requests as they come.
        #[arg(long, short)]
        follow: bool,
        #[arg(long, env = "GATE_SOCKET", default_value = gate_protocol::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Approve a pending request: the kernel lets the agent's retries through until the
    /// approval ends (also if the daemon stops).
    Approve(ApproveArgs),
    /// Reject a pending request: the agent's retries stay denied, without a new request,
    /// until the rejection ends.
    Reject(AnswerArgs),
    /// An agent's trust: `gate trust restore AGENT` takes it out of the lockdown its denial
    /// budget (`[trust] max_denials`) put it in.
    Trust {
        #[command(subcommand)]
        cmd: TrustCmd,
    },
    /// Make an approver key: the private key into FILE (mode 0600), the public key into
    /// FILE.pub and on stdout (for the daemon's `[approvers.GROUP]`).
    Keygen { file: PathBuf },
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Check whether this host can enforce, and say how to fix what is missing.
    Doctor,
    /// Verify and follow the signed audit stream.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand)]
enum TrustCmd {
    /// Put the agent's policy back in force.
    Restore {
        agent: String,
        #[arg(long, env = "GATE_SOCKET", default_value = gate_protocol::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

/// What `gate approve` takes.
#[derive(clap::Args)]
struct ApproveArgs {
    /// The request's id (`gate approvals`); not needed with --token.
    id: Option<String>,
    /// How long the approval lasts: 90s, 10m, 2h, 1d (at most 7d).
    #[arg(long, default_value = "10m")]
    ttl: String,
    /// `object`: that file or address only; `rule`: everything the request's rule matches.
    #[arg(long, default_value = "object")]
    scope: String,
    /// Sign the approval with this private key (`gate keygen`), for rules that require
    /// approvers.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Print the signed token instead of submitting it (to carry to the agent's host).
    #[arg(long, requires = "key")]
    sign_only: bool,
    /// The request as `gate approvals --json` printed it, to sign away from the agent's host.
    #[arg(long, requires = "sign_only")]
    request: Option<PathBuf>,
    /// Submit signed tokens from these files (one per line).
    #[arg(long)]
    token: Vec<PathBuf>,
    #[arg(long, env = "GATE_SOCKET", default_value = gate_protocol::DEFAULT_SOCKET)]
    socket: PathBuf,
}

/// What `gate reject` takes.
#[derive(clap::Args)]
struct AnswerArgs {
    /// The request's id (`gate approvals`).
    id: String,
    /// How long the answer lasts: 90s, 10m, 2h, 1d (at most 7d).
    #[arg(long, default_value = "10m")]
    ttl: String,
    /// `object`: that file or address only; `rule`: everything the request's rule matches.
    #[arg(long, default_value = "object")]
    scope: String,
    #[arg(long, env = "GATE_SOCKET", default_value = gate_protocol::DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain and checkpoint signatures of log files (oldest first); exit
    /// status 0 when they verify, 1 when not, with the exact record that broke.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The signer's public key (`gate.pub`, written next to the signing key).
        #[arg(long)]
        pubkey: PathBuf,
        /// Also fail on warnings (records after the last checkpoint, no clean shutdown).
        #[arg(long)]
        strict: bool,
    },
    /// Show the log's last records and, with -f, follow it (readable columns on a terminal).
    Tail {
        #[arg(default_value = gate::audit::DEFAULT_LOG_PATH)]
        file: PathBuf,
        #[arg(short, long)]
        follow: bool,
        /// Raw JSON lines.
        #[arg(long)]
        json: bool,
        /// Check the chain while following and report the first break.
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        pubkey: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate a policy and show what it compiles to.
    Check {
        file: PathBuf,
        /// Directory substituted for ${workspace}.
        #[arg(long)]
        workspace: Option<PathBuf>,
        /// Print every compiled map entry.
        #[arg(long)]
        dump: bool,
    },
    /// What NEW allows that OLD does not (and what it no longer allows), rule item by rule
    /// item, as written. Exit status 1 when NEW allows anything OLD does not.
    Diff { old: PathBuf, new: PathBuf },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("GATE_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Run {
            policy,
            workspace,
            mode,
            log,
            audit_key,
            ringbuf_bytes,
            quiet,
            user,
            no_daemon,
            socket,
            name,
            command,
        } => {
            let mode = mode.map(|m| match m {
                ModeArg::Enforce => Mode::Enforce,
                ModeArg::Audit => Mode::Audit,
            });
            let opts = RunOptions {
                policy,
                workspace,
                mode,
                log,
                audit_key,
                command,
                ringbuf_bytes,
                quiet,
                user,
            };
            if !no_daemon && gate::daemon::server::socket_exists(&socket) {
                gate::daemon::client::run(&socket, &opts, name)
            } else {
                run::run(&opts)
            }
        }
        Cmd::Daemon { config } => gate::daemon::server::run(&config),
        Cmd::Status { json, socket } => gate::daemon::client::status(&socket, json, false),
        Cmd::Agents { socket } => gate::daemon::client::status(&socket, false, true),
        Cmd::Reload { agent, socket } => gate::daemon::client::reload(&socket, agent),
        Cmd::Stop { agent, socket } => gate::daemon::client::stop(&socket, agent),
        Cmd::Metrics { socket } => gate::daemon::client::metrics(&socket),
        Cmd::Unload { socket } => gate::daemon::server::unload(&socket),
        Cmd::Approvals {
            json,
            follow,
            socket,
        } => gate::daemon::client::approvals(&socket, json, follow),
        Cmd::Approve(a) => gate::daemon::client::answer(
            &a.socket,
            gate::daemon::client::AnswerOptions {
                id: a.id,
                allow: true,
                ttl: a.ttl,
                scope: a.scope,
                key: a.key,
                sign_only: a.sign_only,
                request: a.request,
                tokens: a.token,
            },
        ),
        Cmd::Reject(a) => gate::daemon::client::answer(
            &a.socket,
            gate::daemon::client::AnswerOptions {
                id: Some(a.id),
                allow: false,
                ttl: a.ttl,
                scope: a.scope,
                key: None,
                sign_only: false,
                request: None,
                tokens: Vec::new(),
            },
        ),
        Cmd::Keygen { file } => gate::daemon::client::keygen(&file),
        Cmd::Trust {
            cmd: TrustCmd::Restore { agent, socket },
        } => gate::daemon::client::trust_restore(&socket, agent),
        Cmd::Policy {
            cmd:
                PolicyCmd::Check {
                    file,
                    workspace,
                    dump,
                },
        } => policy_check(&file, workspace, dump),
        Cmd::Policy {
            cmd: PolicyCmd::Diff { old, new },
        } => policy_diff(&old, &new),
        Cmd::Doctor => gate::doctor::report(),
        Cmd::Audit {
            cmd:
                AuditCmd::Verify {
                    files,
                    pubkey,
                    strict,
                },
        } => gate::audit::verify_cmd(&files, &pubkey, strict),
        Cmd::Audit {
            cmd:
                AuditCmd::Tail {
                    file,
                    follow,
                    json,
                    verify,
                    pubkey,
                },
        } => match gate::audit::tail_cmd(&file, follow, json, verify, pubkey.as_deref()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("gate audit tail: {e}");
                1
            }
        },
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn policy_diff(old: &std::path::Path, new: &std::path::Path) -> i32 {
    match (policy::read(old), policy::read(new)) {
        (Ok(o), Ok(n)) => {
            let changes = policy::diff(&o, &n);
            print!(
                "{}",
                policy::render_diff(
                    &old.display().to_string(),
                    &new.display().to_string(),
                    &changes
                )
            );
            i32::from(changes.iter().any(|c| c.widens))
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            2
        }
    }
}

fn policy_check(file: &std::path::Path, workspace: Option<PathBuf>, dump: bool) -> i32 {
    let workspace = workspace.or_else(|| std::env::current_dir().ok());
    let vars = Vars {
        workspace,
        home: run::home_dir(),
    };
    match policy::load(file, &vars) {
        Ok(p) => {
            for w in &p.warnings {
                eprintln!("{w}");
            }
            println!(
                "{}: ok — policy {:?}, {} rules, {} file entries, {} paths watched for, {} network prefixes, digest {}",
                file.display(),
                p.name,
                p.rules.len(),
                p.inodes.len(),
                p.pending_paths.len(),
                p.net4.len() + p.net6.len(),
                hex::encode(p.digest)
            );
            for r in &p.rules {
                if let Some(a) = &r.approvers {
                    println!(
                        "  rule {}: ask, approved by {} signature(s) of approver group {:?} \
                         (the daemon's config must list the group)",
                        r.id, a.threshold, a.group
                    );
                }
                if let Some(l) = &r.limit {
                    println!(
                        "  rule {}: at most {l} per agent, then {}",
                        r.id,
                        l.over.name()
                    );
                }
            }
            if let Some((n, secs)) = p.max_denials {
                println!(
                    "  denial budget: more than {n} denials in {secs} s put the agent in \
                     lockdown (under the daemon) until `gate trust restore`"
                );
            }
            if dump {
                print!("{}", p.dump());
            }
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
