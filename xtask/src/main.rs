//! `cargo xtask`: set up this machine, and build and test gate on the host and in qemu guests.
//! See `cargo xtask --help`.
mod apt;
mod bench;
mod cmd;
mod cpio;
mod demo;
mod elf;
mod guest;
mod initramfs;
mod install;
mod kernels;
mod modules;
mod paths;
mod setup;
mod test;
mod toolchain;
mod vmlinux;
mod workspace;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

use crate::kernels::Series;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Set up, build and test gate (host and qemu guests)."
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing needs (apt packages, qemu, nightly, bpf-linker, guest
    /// kernels); idempotent.
    Setup {
        /// Also look for guest kernels newer than the cached ones.
        #[arg(long)]
        update_kernels: bool,
    },
    /// Boot a guest and run a command in it; exits with the command's status.
    Guest(GuestArgs),
    /// Host tests, release build, then the kernel tests in a guest per kernel.
    Test(TestArgs),
    /// Run tests/demo/demo.sh in a 6.1 guest.
    Demo,
    /// Install gate on this host: binary, systemd unit, /etc/gate config and policies, group
    /// gate (root).
    Install {
        /// Install under this directory instead of / (for packaging).
        #[arg(long)]
        root: Option<std::path::PathBuf>,
    },
    /// `cargo fmt --check` and `cargo clippy` with warnings as errors (as CI runs them).
    Lint,
    /// Benchmarks in icount guests (6.1 and 6.12 side by side); writes BENCHMARKS.md and
    /// benchmarks.json.
    Bench(BenchArgs),
}

#[derive(Args)]
struct GuestArgs {
    /// Guest kernel: 6.1 or 6.12.
    #[arg(long, default_value = "6.1")]
    kernel: Series,
    /// Deterministic virtual time: `-icount shift=0,sleep=off`.
    #[arg(long)]
    icount: bool,
    /// Seconds before the guest is killed (and the run fails).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Extra kernel command-line arguments (e.g. `loglevel=7` to see the whole boot).
    #[arg(long)]
    append: Option<String>,
    /// Boot the host's systemd as PID 1 and run the command as a oneshot unit of it.
    #[arg(long)]
    systemd: bool,
    /// Extra environment for the command, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// Benchmark this kernel only (6.1 or 6.12).
    #[arg(long)]
    kernel: Option<Series>,
    /// Fewer rounds and iterations: a smoke run, not figures to publish.
    #[arg(long)]
    quick: bool,
    /// Boot the guests one after the other instead of side by side.
    #[arg(long)]
    sequential: bool,
    /// Seconds each guest may run before it is killed (and the benchmark fails).
    #[arg(long, default_value_t = 2400)]
    timeout: u64,
    /// Only re-render BENCHMARKS.md from an earlier benchmarks.json (no guests).
    #[arg(long, value_name = "BENCHMARKS_JSON")]
    from_json: Option<std::path::PathBuf>,
    /// Extra arguments for `gate-bench suite` in the guest, e.g. `--only micro,workload`.
    #[arg(last = true)]
    suite_args: Vec<String>,
}

#[derive(Args)]
struct TestArgs {
    /// Run the kernel tests on this kernel only (6.1 or 6.12).
    #[arg(long)]
    kernel: Option<Series>,
    /// Skip `cargo test --workspace` on the host.
    #[arg(long)]
    no_host: bool,
    /// Seconds each guest may run before it is killed and its suite fails.
    #[arg(long, default_value_t = 3300)]
    timeout: u64,
    /// Boot both kernels' guests at once (on a 2-core host this is slower: see `test.rs`).
    #[arg(long)]
    side_by_side: bool,
    /// Every scenario standalone and through the daemon on every kernel (by default 6.12
    /// runs each scenario once: through the daemon, or standalone when it needs another user).
    #[arg(long)]
    full: bool,
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode> {
    match task {
        Task::Setup { update_kernels } => {
            setup::run(&setup::Options {
                quiet: false,
                update_kernels,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Guest(args) => guest(args),
        Task::Test(args) => test::run(&test::Options {
            kernels: args
                .kernel
                .map_or_else(|| Series::ALL.to_vec(), |k| vec![k]),
            host: !args.no_host,
            timeout: Duration::from_secs(args.timeout),
            full: args.full,
            side_by_side: args.side_by_side,
        }),
        Task::Demo => demo::run(),
        Task::Install { root } => {
            install::run(&install::Options { root }).map(|()| ExitCode::SUCCESS)
        }
        Task::Lint => {
            // clippy builds gate-userspace, whose build script compiles the eBPF crate.
            setup::run(&setup::Options {
                quiet: true,
                update_kernels: false,
            })?;
            workspace::lint()?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Bench(args) => bench::run(&bench::Options {
            kernels: args
                .kernel
                .map_or_else(|| Series::ALL.to_vec(), |k| vec![k]),
            quick: args.quick,
            sequential: args.sequential,
            timeout: Duration::from_secs(args.timeout),
            suite_args: args.suite_args,
            from_json: args.from_json,
        })
        .map(|()| ExitCode::SUCCESS),
    }
}

fn guest(args: GuestArgs) -> Result<ExitCode> {
    let env = setup::run(&setup::Options {
        quiet: true,
        update_kernels: false,
    })?;
    let guest = env.guest(args.kernel).guest();
    let options = guest::RunOptions {
        icount: args.icount,
        timeout: Duration::from_secs(args.timeout),
        env: args
            .env
            .iter()
            .map(|kv| parse_env(kv))
            .collect::<Result<_>>()?,
        cwd: std::env::current_dir().ok(),
        shares: guest::project_shares()?,
        append: args.append,
        systemd: args.systemd,
    };
    let outcome = guest::run(&guest, &options, &args.command)?;
    Ok(exit_code(outcome.exit_code))
}

fn parse_env(kv: &str) -> Result<(String, String)> {
    let (key, value) = kv
        .split_once('=')
        .with_context(|| format!("--env {kv}: expected KEY=VALUE"))?;
    Ok((key.to_owned(), value.to_owned()))
}

/// A guest command's exit code as our own (out-of-range codes become 1).
pub fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
