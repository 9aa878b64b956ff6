//! `cargo xtask setup`: make this machine able to build gate and run its kernel tests. Every
//! step checks first and installs only what is missing, printing one line; a second run changes
//! nothing. Other commands call this quietly (it then prints only what it installs).
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::apt::{self, Apt};
use crate::guest::Guest;
use crate::initramfs::{self, Initramfs};
use crate::kernels::{self, Kernel, Series};
use crate::{paths, toolchain, vmlinux};

/// zstd: the 6.12 kernel image is zstd-compressed (see vmlinux.rs). systemd: one guest per
/// kernel boots the host's systemd as PID 1 to test gate.service under it (test.rs).
/// libpython3.11-testsuite: CPython's own tests, a real workload the kernel suite runs
/// confined (tests/workloads/cpython.toml).
const APT_PACKAGES: &[&str] = &[
    "busybox-static",
    "cpio",
    "xz-utils",
    "zstd",
    "gcc",
    "git",
    "make",
    "systemd",
    "libpython3.11-testsuite",
];
const QEMU_PACKAGE: &str = "qemu-system-x86";

pub struct Options {
    /// Print only the steps that change something.
    pub quiet: bool,
    /// Look for newer guest kernels than the cached ones.
    pub update_kernels: bool,
}

/// A guest kernel ready to boot.
pub struct GuestImage {
    pub kernel: Kernel,
    /// The PVH-bootable vmlinux, or the bzImage if it could not be extracted.
    pub boot_image: PathBuf,
    pub initramfs: Initramfs,
}

impl GuestImage {
    pub fn guest(&self) -> Guest<'_> {
        Guest {
            kernel: &self.kernel,
            boot_image: &self.boot_image,
            initramfs: &self.initramfs.path,
        }
    }
}

/// What setup leaves in place for the other commands.
pub struct Environment {
    pub guests: BTreeMap<Series, GuestImage>,
}

impl Environment {
    pub fn guest(&self, series: Series) -> &GuestImage {
        &self.guests[&series]
    }
}

pub fn run(options: &Options) -> Result<Environment> {
    let mut setup = Setup {
        quiet: options.quiet,
        apt: Apt::default(),
        changes: 0,
    };
    setup.backports_source()?;
    setup.apt_packages()?;
    setup.qemu()?;
    setup.nightly()?;
    setup.rust_src()?;
    setup.bpf_linker()?;
    let mut guests = BTreeMap::new();
    for series in Series::ALL {
        let kernel = setup.kernel(series, options.update_kernels)?;
        let boot_image = setup.vmlinux(&kernel);
        let initramfs = setup.initramfs(&kernel)?;
        guests.insert(
            series,
            GuestImage {
                kernel,
                boot_image,
                initramfs,
            },
        );
    }
    if setup.changes == 0 && !setup.quiet {
        println!("setup: everything is in place, nothing to do");
    }
    Ok(Environment { guests })
}

struct Setup {
    quiet: bool,
    apt: Apt,
    changes: usize,
}

impl Setup {
    fn present(&self, step: &str, detail: &str) {
        if !self.quiet {
            println!("setup: {step:<34} ok: {detail}");
        }
    }

    fn acting(&self, step: &str, what: &str) {
        println!("setup: {step:<34} {what}…");
    }

    fn done(&mut self, step: &str, detail: &str) {
        self.changes += 1;
        println!("setup: {step:<34} done: {detail}");
    }

    fn backports_source(&mut self) -> Result<()> {
        let step = "apt suite bookworm-backports";
        if let Some(file) = apt::backports_source() {
            self.present(step, &format!("in {}", file.display()));
            return Ok(());
        }
        self.acting(step, "adding");
        let file = apt::add_backports_source()?;
        self.apt.invalidate();
        self.done(step, &format!("wrote {}", file.display()));
        Ok(())
    }

    fn apt_packages(&mut self) -> Result<()> {
        let step = "apt packages";
        let missing: Vec<&str> = APT_PACKAGES
            .iter()
            .copied()
            .filter(|p| apt::installed_version(p).is_none())
            .collect();
        if missing.is_empty() {
            self.present(step, &APT_PACKAGES.join(" "));
            return Ok(());
        }
        self.acting(step, &format!("installing {}", missing.join(" ")));
        self.apt.install(&missing, None)?;
        self.done(step, &format!("installed {}", missing.join(" ")));
        Ok(())
    }

    fn qemu(&mut self) -> Result<()> {
        let step = "qemu-system-x86 (backports)";
        if let Some(version) = apt::installed_version(QEMU_PACKAGE) {
            self.present(step, &version);
            return Ok(());
        }
        self.acting(step, "installing from bookworm-backports");
        self.apt.install(&[QEMU_PACKAGE], Some(apt::BACKPORTS))?;
        let version = apt::installed_version(QEMU_PACKAGE).unwrap_or_default();
        self.done(step, &format!("installed {version}"));
        Ok(())
    }

    fn nightly(&mut self) -> Result<()> {
        let step = "rust nightly";
        if toolchain::nightly_installed() {
            self.present(step, &toolchain::nightly_version()?);
            return Ok(());
        }
        self.acting(step, "installing");
        toolchain::install_nightly()?;
        self.done(step, &toolchain::nightly_version()?);
        Ok(())
    }

    fn rust_src(&mut self) -> Result<()> {
        let step = "rust-src (nightly)";
        if toolchain::rust_src_installed() {
            self.present(step, "installed");
            return Ok(());
        }
        self.acting(step, "adding");
        toolchain::install_rust_src()?;
        self.done(step, "added");
        Ok(())
    }

    fn bpf_linker(&mut self) -> Result<()> {
        let step = format!("bpf-linker {}", toolchain::BPF_LINKER_VERSION);
        let llvm = toolchain::nightly_llvm()?;
        let prefix = paths::cache_dir()?.join("llvm-prefix");
        let relinked = toolchain::ensure_llvm_prefix(&prefix, &llvm)?;
        if let Some(version) =
            toolchain::bpf_linker_version().filter(|v| toolchain::bpf_linker_ok(v))
        {
            let note = if relinked {
                format!(" (refreshed {})", prefix.display())
            } else {
                String::new()
            };
            self.present(&step, &format!("{version}{note}"));
            return Ok(());
        }
        self.acting(
            &step,
            &format!(
                "building against nightly's LLVM {} (takes minutes)",
                llvm.major
            ),
        );
        toolchain::install_bpf_linker(&prefix, &llvm)?;
        let version = toolchain::bpf_linker_version().unwrap_or_default();
        self.done(
            &step,
            &format!("{version}, LLVM prefix {}", prefix.display()),
        );
        Ok(())
    }

    fn kernel(&mut self, series: Series, update: bool) -> Result<Kernel> {
        let step = format!("guest kernel {series}");
        let cached = kernels::cached(series)?;
        if let Some(kernel) = &cached {
            if !update {
                self.present(
                    &step,
                    &format!("{} (cached in {})", kernel.release, kernel.dir.display()),
                );
                return Ok(kernel.clone());
            }
            self.apt.update_once()?;
            if kernels::newest_available(series)?.as_deref() == Some(kernel.release.as_str()) {
                self.present(&step, &format!("{} is the newest", kernel.release));
                return Ok(kernel.clone());
            }
        }
        self.acting(
            &step,
            &format!("downloading the newest from {}", series.suite()),
        );
        let kernel = kernels::download_newest(series, &mut self.apt)
            .with_context(|| format!("getting the {series} guest kernel"))?;
        self.done(
            &step,
            &format!("{} in {}", kernel.release, kernel.dir.display()),
        );
        Ok(kernel)
    }

    /// The uncompressed kernel boots in half the time; the bzImage is the fallback.
    fn vmlinux(&mut self, kernel: &Kernel) -> PathBuf {
        let step = format!("guest vmlinux {}", kernel.series);
        match vmlinux::ensure(kernel) {
            Ok((path, false)) => {
                self.present(&step, &format!("PVH entry, {}", path.display()));
                path
            }
            Ok((path, true)) => {
                self.done(&step, &format!("extracted {}", path.display()));
                path
            }
            Err(error) => {
                println!(
                    "setup: {step:<34} WARNING: {error:#}; booting the slower bzImage instead"
                );
                kernel.vmlinuz()
            }
        }
    }

    fn initramfs(&mut self, kernel: &Kernel) -> Result<Initramfs> {
        let step = format!("guest initramfs {}", kernel.series);
        let initramfs = initramfs::ensure(kernel)?;
        let detail = format!("modules: {}", initramfs.modules.join(" "));
        if initramfs.built {
            self.done(&step, &format!("built; {detail}"));
        } else {
            self.present(&step, &detail);
        }
        Ok(initramfs)
    }
}
