//! Where things live: the repository, cargo's target directory, and gate's cache directory.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::cmd;

/// The workspace root (the parent of this crate's manifest directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// `$XDG_CACHE_HOME/gate`, else `$HOME/.cache/gate`. Kept outside the repository because the
/// bpf-linker binary carries an rpath into it and kernels are large.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("gate"));
    }
    let home =
        std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set; set HOME")?;
    Ok(PathBuf::from(home).join(".cache").join("gate"))
}

/// The `cargo` that runs us (cargo sets `$CARGO`), else `cargo` from PATH.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Cargo's target directory for this workspace, honouring `CARGO_TARGET_DIR` and cargo config.
pub fn target_dir() -> Result<PathBuf> {
    let json = cmd::output(
        cargo()
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(repo_root()),
    )
    .context("asking cargo for the target directory")?;
    let meta: serde_json::Value =
        serde_json::from_str(&json).context("parsing `cargo metadata` output")?;
    let dir = meta["target_directory"]
        .as_str()
        .context("`cargo metadata` output has no target_directory")?;
    Ok(PathBuf::from(dir))
}
