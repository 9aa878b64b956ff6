//! `cargo xtask install`: the gate binary, the systemd unit, the daemon's config and the
//! shipped policies on this host, and group `gate` for the people who may use the daemon.
//! Existing config and policy files are kept (a new version is written beside them as
//! `.new`). Then `systemctl enable --now gate` starts enforcing.
use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{paths, workspace};

pub struct Options {
    /// Install under this root instead of / (packaging).
    pub root: Option<std::path::PathBuf>,
}

pub fn run(o: &Options) -> Result<()> {
    workspace::release(&["gate-userspace"])?;
    let gate = workspace::release_binary("gate", "gate-userspace should provide `gate`")?;
    let root = o.root.clone().unwrap_or_else(|| "/".into());
    let repo = paths::repo_root();
    let put = |src: &Path, dst: &str, mode: u32, keep: bool| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dst = root.join(dst.trim_start_matches('/'));
        if let Some(dir) = dst.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let target = if keep && dst.exists() {
            let new = dst.with_extension(format!(
                "{}.new",
                dst.extension().and_then(|e| e.to_str()).unwrap_or("")
            ));
            println!(
                "install: keeping {} (the shipped one is {})",
                dst.display(),
                new.display()
            );
            new
        } else {
            dst
        };
        let tmp = target.with_extension("tmp-install");
        fs::copy(src, &tmp)
            .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
        fs::rename(&tmp, &target)?;
        println!("install: {}", target.display());
        Ok(())
    };
    put(&gate, "/usr/local/bin/gate", 0o755, false)?;
    put(
        &repo.join("packaging/gate.service"),
        "/etc/systemd/system/gate.service",
        0o644,
        false,
    )?;
    put(
        &repo.join("packaging/gate.toml"),
        "/etc/gate/gate.toml",
        0o644,
        true,
    )?;
    for e in fs::read_dir(repo.join("policies"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let name = p
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            put(&p, &format!("/etc/gate/policies/{name}"), 0o644, true)?;
        }
    }
    if o.root.is_none() {
        let has_group = Command::new("getent")
            .args(["group", "gate"])
            .output()?
            .status
            .success();
        if !has_group {
            let st = Command::new("groupadd")
                .args(["--system", "gate"])
                .status()?;
            if !st.success() {
                bail!("groupadd --system gate failed");
            }
            println!("install: created group gate (add people with: usermod -aG gate USER)");
        }
        let _ = Command::new("systemctl").arg("daemon-reload").status();
        println!("install: done; start enforcing with: systemctl enable --now gate");
    }
    Ok(())
}
