//! Cargo builds driven by xtask, always from the workspace root into cargo's own target dir.
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::{cmd, paths};

/// The eBPF crate targets bpfel-unknown-none and is built by gate-userspace's build.rs; building
/// it for the host as part of `--workspace` would fail.
const HOST_EXCLUDED: &[&str] = &["gate-ebpf"];

/// `cargo test --workspace` (without the eBPF crate).
pub fn host_tests() -> Result<()> {
    let mut command = paths::cargo();
    command
        .args(["test", "--workspace"])
        .current_dir(paths::repo_root());
    for package in HOST_EXCLUDED {
        command.args(["--exclude", package]);
    }
    cmd::run(&mut command).context("host tests failed; see cargo's output above")
}

/// `cargo build --release` of `packages` (the whole workspace if empty).
pub fn release(packages: &[&str]) -> Result<()> {
    let mut command = paths::cargo();
    command
        .args(["build", "--release"])
        .current_dir(paths::repo_root());
    if packages.is_empty() {
        command.arg("--workspace");
        for package in HOST_EXCLUDED {
            command.args(["--exclude", package]);
        }
    }
    for package in packages {
        command.args(["--package", package]);
    }
    cmd::run(&mut command).context("the release build failed; see cargo's output above")
}

/// `target/release/<name>`, which must exist; `hint` says where it should come from.
pub fn release_binary(name: &str, hint: &str) -> Result<PathBuf> {
    let path = paths::target_dir()?.join("release").join(name);
    if !path.is_file() {
        bail!("{} was not built: {hint}", path.display());
    }
    Ok(path)
}

/// `cargo fmt --all --check`, then `cargo clippy` on every host crate and target with warnings
/// as errors (the lints are the workspace's, in Cargo.toml).
pub fn lint() -> Result<()> {
    cmd::run(
        paths::cargo()
            .args(["fmt", "--all", "--check"])
            .current_dir(paths::repo_root()),
    )
    .context("the code is not formatted as rustfmt.toml says; run `cargo fmt --all`")?;
    let mut command = paths::cargo();
    command
        .args(["clippy", "--workspace", "--all-targets"])
        .current_dir(paths::repo_root());
    for package in HOST_EXCLUDED {
        command.args(["--exclude", package]);
    }
    command.args(["--", "-D", "warnings"]);
    cmd::run(&mut command).context("clippy found problems (warnings are errors); see above")
}
