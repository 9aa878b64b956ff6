//! The Rust side of the eBPF toolchain: nightly with rust-src, and bpf-linker 0.13.0 built
//! against nightly's own libLLVM (see /work/shared/PLATFORM.md, "Rust eBPF toolchain").
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

pub const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn nightly_installed() -> bool {
    cmd::probe(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|out| out.lines().any(|l| l.starts_with("nightly-")))
}

pub fn install_nightly() -> Result<()> {
    cmd::run(Command::new("rustup").args(["toolchain", "install", "nightly"])).context(
        "installing the nightly Rust toolchain failed; check the network and `rustup` itself",
    )
}

pub fn nightly_version() -> Result<String> {
    Ok(
        cmd::output(Command::new("rustc").arg("+nightly").arg("--version"))?
            .trim()
            .to_owned(),
    )
}

pub fn rust_src_installed() -> bool {
    cmd::probe(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .is_some_and(|out| out.lines().any(|l| l.starts_with("rust-src")))
}

pub fn install_rust_src() -> Result<()> {
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("adding the rust-src component to nightly failed")
}

/// What `bpf-linker --version` says, if it runs.
pub fn bpf_linker_version() -> Option<String> {
    cmd::probe(Command::new("bpf-linker").arg("--version")).map(|s| s.trim().to_owned())
}

pub fn bpf_linker_ok(version: &str) -> bool {
    version
        .split_whitespace()
        .any(|word| word == BPF_LINKER_VERSION)
}

/// Nightly's libLLVM, e.g. `<sysroot>/lib/libLLVM.so.22.1-rust-1.97.0-nightly`.
pub struct NightlyLlvm {
    pub library: PathBuf,
    /// The LLVM major version, which names bpf-linker's `llvm-N` feature.
    pub major: u32,
}

pub fn nightly_llvm() -> Result<NightlyLlvm> {
    let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let library = std::fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so.")))
        .with_context(|| {
            format!("no libLLVM.so.* in {}; reinstall nightly with `rustup toolchain install nightly --force`", lib.display())
        })?;
    let major = llvm_major(&library.file_name().unwrap_or_default().to_string_lossy())
        .with_context(|| format!("cannot read the LLVM version from {}", library.display()))?;
    Ok(NightlyLlvm { library, major })
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` → 22.
fn llvm_major(file_name: &str) -> Option<u32> {
    file_name
        .strip_prefix("libLLVM.so.")?
        .split(['.', '-'])
        .next()?
        .parse()
        .ok()
}

/// Makes `prefix/lib` hold `<libLLVM file name>` → nightly's library and `libLLVM.so` → that
/// name. Returns true if anything changed.
pub fn ensure_llvm_prefix(prefix: &Path, llvm: &NightlyLlvm) -> Result<bool> {
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let name = llvm
        .library
        .file_name()
        .context("libLLVM path has no file name")?;
    let changed_versioned = ensure_symlink(&lib.join(name), &llvm.library)?;
    let changed_plain = ensure_symlink(&lib.join("libLLVM.so"), Path::new(name))?;
    Ok(changed_versioned || changed_plain)
}

fn ensure_symlink(link: &Path, target: &Path) -> Result<bool> {
    if std::fs::read_link(link).is_ok_and(|current| current == target) {
        return Ok(false);
    }
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link).with_context(|| format!("removing stale {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))?;
    Ok(true)
}

pub fn install_bpf_linker(prefix: &Path, llvm: &NightlyLlvm) -> Result<()> {
    let feature = format!("llvm-{}", llvm.major);
    cmd::run(
        Command::new("cargo")
            .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}"), "--locked", "--force"])
            .args(["--no-default-features", "--features", &feature])
            .env("LLVM_PREFIX", prefix),
    )
    .with_context(|| {
        format!(
            "building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {} failed; if the feature \
             `{feature}` does not exist, nightly's LLVM is newer than this bpf-linker supports",
            llvm.major
        )
    })?;
    match bpf_linker_version() {
        Some(v) if bpf_linker_ok(&v) => Ok(()),
        Some(v) => {
            bail!("bpf-linker installed but reports `{v}`; is an older one earlier in PATH?")
        }
        None => {
            bail!("bpf-linker installed but `bpf-linker --version` fails; is ~/.cargo/bin in PATH?")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_llvm_major_version() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.19-rust-1.84.0-nightly"), Some(19));
        assert_eq!(llvm_major("libLLVM-19.so"), None);
    }

    #[test]
    fn accepts_only_the_pinned_linker_version() {
        assert!(bpf_linker_ok("bpf-linker 0.13.0"));
        assert!(!bpf_linker_ok("bpf-linker 0.9.13"));
    }
}
