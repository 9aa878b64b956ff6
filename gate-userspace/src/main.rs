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
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// Work with policy files.
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
            command,
        } => {
            let mode = mode.map(|m| match m {
                ModeArg::Enforce => Mode::Enforce,
                ModeArg::Audit => Mode::Audit,
            });
            run::run(&RunOptions {
                policy,
                workspace,
                mode,
                log,
                audit_key,
                command,
                ringbuf_bytes,
                quiet,
            })
        }
        Cmd::Policy {
            cmd:
                PolicyCmd::Check {
                    file,
                    workspace,
                    dump,
                },
        } => policy_check(&file, workspace, dump),
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

fn policy_check(file: &std::path::Path, workspace: Option<PathBuf>, dump: bool) -> i32 {
    let workspace = workspace.or_else(|| std::env::current_dir().ok());
    let vars = Vars {
        workspace,
        home: run::home_dir(),
    };
    match policy::load(file, &vars) {
        Ok(p) => {
            for w in &p.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok — policy {:?}, {} rules, {} file entries, {} network prefixes, digest {}",
                file.display(),
                p.name,
                p.rules.len(),
                p.inodes.len(),
                p.net4.len() + p.net6.len(),
                hex::encode(p.digest)
            );
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
