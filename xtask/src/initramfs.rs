//! The guest's initramfs: busybox-static, `/init` (init.sh) and the kernel modules needed to
//! mount the host root over virtio-9p, in dependency order. Built once per kernel (and per
//! change of its inputs) and cached beside the unpacked kernel as `initramfs-<fingerprint>.cpio`.
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::{cpio::Archive, elf, kernels::Kernel, modules};

const INIT_TEMPLATE: &str = include_str!("init.sh");
/// Bump when the layout produced by `build` changes without the inputs below changing.
const FORMAT_VERSION: u32 = 2;
/// What the guest needs; their dependencies are read from the modules themselves. overlay:
/// the systemd boot makes the host's /var writable with it.
pub const MODULE_ROOTS: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];
/// Cached initramfs files of other fingerprints older than this are removed.
const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);
const BUSYBOX_CANDIDATES: &[&str] = &["/usr/bin/busybox", "/bin/busybox"];

/// A built initramfs and the modules it loads, in order.
pub struct Initramfs {
    pub path: PathBuf,
    pub modules: Vec<String>,
    /// False if it was taken from the cache.
    pub built: bool,
}

/// The cached initramfs for `kernel`, built first if missing or stale.
pub fn ensure(kernel: &Kernel) -> Result<Initramfs> {
    let busybox = busybox()?;
    let stem = format!("initramfs-{}", fingerprint(kernel, &busybox)?);
    let path = kernel.dir.join(format!("{stem}.cpio"));
    let list = kernel.dir.join(format!("{stem}.modules"));
    if path.is_file() && list.is_file() {
        let modules = std::fs::read_to_string(&list)?
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        return Ok(Initramfs {
            path,
            modules,
            built: false,
        });
    }
    let (bytes, modules) = build(kernel, &busybox)?;
    remove_stale(&kernel.dir)?;
    write_atomically(&list, modules.join(" ").as_bytes())?;
    write_atomically(&path, &bytes)?;
    Ok(Initramfs {
        path,
        modules,
        built: true,
    })
}

fn build(kernel: &Kernel, busybox: &Path) -> Result<(Vec<u8>, Vec<String>)> {
    let modules = modules::resolve(&kernel.modules_dir()?, MODULE_ROOTS)
        .with_context(|| format!("collecting the 9p/virtio modules of {}", kernel.release))?;
    let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
    let mut archive = Archive::new();
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "host",
        "gate",
        "lib",
        "lib/modules",
    ] {
        archive.dir(dir, 0o755);
    }
    archive.char_device("dev/console", 0o600, 5, 1);
    archive.char_device("dev/null", 0o666, 1, 3);
    let busybox_bytes =
        std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    archive.file("bin/busybox", 0o755, &busybox_bytes);
    archive.symlink("bin/sh", "busybox");
    archive.file("init", 0o755, init_script(&names).as_bytes());
    for module in &modules {
        archive.file(
            &format!("lib/modules/{}.ko", module.name),
            0o644,
            &module.data,
        );
    }
    Ok((archive.finish(), names))
}

fn init_script(modules: &[String]) -> String {
    INIT_TEMPLATE
        .replace("@MODULES@", &modules.join(" "))
        .replace("@SCRATCH_DIRS@", &crate::guest::SCRATCH_DIRS.join(" "))
}

/// What one guest run adds to the cached initramfs.
pub struct RunFiles<'a> {
    /// The command script, run in the chroot of the host root.
    pub script: &'a str,
    pub nonce: &'a str,
    /// Host directories to mount back over the guest's scratch tmpfs, at the same paths.
    pub shares: &'a [PathBuf],
    /// The directory the command must start in; /init refuses to run it if it is not visible.
    pub cwd: Option<&'a Path>,
    /// Boot the host's systemd as PID 1 and run the command as a unit of it (init.sh).
    pub systemd: bool,
}

/// The per-run archive appended to the cached one: the command script, the run's nonce, the
/// shared directories (one per line), the working directory and the boot mode (`chroot` or
/// `systemd`).
pub fn run_archive(files: &RunFiles<'_>) -> Vec<u8> {
    let mut archive = Archive::new();
    archive.dir("gate", 0o755);
    archive.file("gate/run.sh", 0o755, files.script.as_bytes());
    archive.file("gate/nonce", 0o644, format!("{}\n", files.nonce).as_bytes());
    let shares: String = files
        .shares
        .iter()
        .map(|s| format!("{}\n", s.display()))
        .collect();
    archive.file("gate/shares", 0o644, shares.as_bytes());
    let cwd = files
        .cwd
        .map(|c| format!("{}\n", c.display()))
        .unwrap_or_default();
    archive.file("gate/cwd", 0o644, cwd.as_bytes());
    let mode = if files.systemd { "systemd" } else { "chroot" };
    archive.file("gate/mode", 0o644, format!("{mode}\n").as_bytes());
    archive.finish()
}

/// The static busybox from busybox-static (a dynamic one would not run in the initramfs).
fn busybox() -> Result<PathBuf> {
    for candidate in BUSYBOX_CANDIDATES {
        let Ok(bytes) = std::fs::read(candidate) else {
            continue;
        };
        if elf::is_static(&bytes).unwrap_or(false) {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!(
        "no statically linked busybox in {BUSYBOX_CANDIDATES:?}; run `cargo xtask setup` (installs busybox-static)"
    )
}

fn fingerprint(kernel: &Kernel, busybox: &Path) -> Result<String> {
    let meta =
        std::fs::metadata(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let mut hasher = DefaultHasher::new();
    (FORMAT_VERSION, &kernel.release, INIT_TEMPLATE, MODULE_ROOTS).hash(&mut hasher);
    (busybox, meta.len(), meta.modified().ok()).hash(&mut hasher);
    Ok(format!("{:016x}", hasher.finish()))
}

/// Removes initramfs files of other fingerprints not used for a day. Recent ones stay: another
/// xtask build (a colleague's, or a concurrent run) may be about to boot one.
fn remove_stale(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let stale = entry
            .metadata()?
            .modified()?
            .elapsed()
            .is_ok_and(|age| age > STALE_AFTER);
        if stale
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with("initramfs-")
        {
            let path = entry.path();
            std::fs::remove_file(&path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
    }
    Ok(())
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_loads_modules_in_order_and_reports_exit() {
        let script = init_script(&["virtio".into(), "9p".into()]);
        assert!(script.contains("for m in virtio 9p; do"));
        assert!(!script.contains('@'));
        assert!(script.contains("GATE-GUEST-EXIT=$rc nonce=$NONCE"));
        assert!(script.trim_end().ends_with("poweroff -f"));
    }

    #[test]
    fn init_covers_exactly_the_scratch_directories_with_tmpfs() {
        let script = init_script(&["9p".to_owned()]);
        let covered: Vec<&str> = script
            .lines()
            .filter_map(|l| l.strip_prefix("mnt tmpfs "))
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter_map(|target| target.strip_prefix("$H"))
            .filter(|target| *target != "/dev/shm")
            .collect();
        assert_eq!(covered, crate::guest::SCRATCH_DIRS);
        assert!(script.contains("for scratch in /tmp /var/tmp /home /root /run; do"));
    }
}
