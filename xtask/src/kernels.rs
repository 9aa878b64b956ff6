//! Debian guest kernels (plain flavour: it has 9p, virtio and overlay as modules), downloaded
//! with `apt-get download`, unpacked with `dpkg-deb -x`, and cached per release under
//! `<cache>/kernels/<release>/` with the .deb kept beside the unpacked tree.
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use anyhow::{Context as _, Result, bail};

use crate::{apt::Apt, cmd, paths};

const COMPLETE_STAMP: &str = ".complete";

/// A kernel series we test on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Series {
    V6_1,
    V6_12,
}

impl Series {
    pub const ALL: [Series; 2] = [Series::V6_1, Series::V6_12];

    pub fn name(self) -> &'static str {
        match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }

    /// `(prefix, suffix)` of a release: the part between them is the number that moves.
    fn release_pattern(self) -> (&'static str, &'static str) {
        match self {
            Series::V6_1 => ("6.1.0-", "-amd64"),
            Series::V6_12 => ("6.12.", "+deb12-amd64"),
        }
    }

    /// The Debian suite the kernel comes from (bookworm-security or bookworm for 6.1).
    pub fn suite(self) -> &'static str {
        match self {
            Series::V6_1 => "bookworm-security",
            Series::V6_12 => "bookworm-backports",
        }
    }

    /// The sequence number of `release` in this series (`6.1.0-56-amd64` → 56).
    fn number(self, release: &str) -> Option<u32> {
        let (prefix, suffix) = self.release_pattern();
        release
            .strip_prefix(prefix)?
            .strip_suffix(suffix)?
            .parse()
            .ok()
    }

    fn package(release: &str) -> String {
        format!("linux-image-{release}-unsigned")
    }

    fn search_regex(self) -> String {
        let (prefix, suffix) = self.release_pattern();
        let escape = |s: &str| s.replace('.', r"\.").replace('+', r"\+");
        format!(
            "^linux-image-{}[0-9]+{}-unsigned$",
            escape(prefix),
            escape(suffix)
        )
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Series {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "6.1" => Ok(Series::V6_1),
            "6.12" => Ok(Series::V6_12),
            _ => bail!("unknown kernel `{s}`; choose 6.1 or 6.12"),
        }
    }
}

/// An unpacked guest kernel in the cache.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub series: Series,
    /// `uname -r` of the guest, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// `<cache>/kernels/<release>`.
    pub dir: PathBuf,
}

impl Kernel {
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.root()
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    /// `lib/modules/<release>` (or its usr-merged spelling) inside the unpacked package.
    pub fn modules_dir(&self) -> Result<PathBuf> {
        ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|base| self.root().join(base).join(&self.release))
            .find(|dir| dir.is_dir())
            .with_context(|| {
                format!(
                    "the unpacked {} kernel has no lib/modules/{}",
                    self.series, self.release
                )
            })
    }
}

pub fn kernels_dir() -> Result<PathBuf> {
    Ok(paths::cache_dir()?.join("kernels"))
}

/// The newest fully unpacked kernel of `series` in the cache.
pub fn cached(series: Series) -> Result<Option<Kernel>> {
    let dir = kernels_dir()?;
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let newest = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(COMPLETE_STAMP).is_file())
        .filter_map(|e| {
            let release = e.file_name().into_string().ok()?;
            Some((series.number(&release)?, release))
        })
        .max();
    Ok(newest.map(|(_, release)| Kernel {
        series,
        dir: dir.join(&release),
        release,
    }))
}

/// The release of the newest `series` kernel the package lists offer.
pub fn newest_available(series: Series) -> Result<Option<String>> {
    let packages = crate::apt::search_names(&series.search_regex())?;
    Ok(packages
        .iter()
        .filter_map(|p| p.strip_prefix("linux-image-")?.strip_suffix("-unsigned"))
        .filter_map(|release| Some((series.number(release)?, release.to_owned())))
        .max()
        .map(|(_, release)| release))
}

/// Downloads and unpacks the newest `series` kernel (refreshing the package lists first).
pub fn download_newest(series: Series, apt: &mut Apt) -> Result<Kernel> {
    apt.update_once()?;
    let release = newest_available(series)?.with_context(|| {
        format!(
            "apt offers no package matching {}; is the {} suite in /etc/apt/sources.list.d?",
            series.search_regex(),
            series.suite()
        )
    })?;
    download(series, &release)
}

fn download(series: Series, release: &str) -> Result<Kernel> {
    let final_dir = kernels_dir()?.join(release);
    let partial = kernels_dir()?.join(format!("{release}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let package = Series::package(release);
    let deb = crate::apt::download(&package, &partial).with_context(|| {
        format!("downloading {package} failed; check the network and the apt sources")
    })?;
    unpack(&deb, &partial.join("root"))?;
    std::fs::write(partial.join(COMPLETE_STAMP), format!("{package}\n"))?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)
            .with_context(|| format!("removing {}", final_dir.display()))?;
    }
    std::fs::rename(&partial, &final_dir)
        .with_context(|| format!("moving {} to {}", partial.display(), final_dir.display()))?;
    let kernel = Kernel {
        series,
        release: release.to_owned(),
        dir: final_dir,
    };
    if !kernel.vmlinuz().is_file() {
        bail!(
            "{package} has no {}; the package layout changed",
            kernel.vmlinuz().display()
        );
    }
    kernel.modules_dir()?;
    Ok(kernel)
}

fn unpack(deb: &Path, into: &Path) -> Result<()> {
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(into))
        .with_context(|| format!("unpacking {}", deb.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_releases_within_their_series_only() {
        assert_eq!(Series::V6_1.number("6.1.0-56-amd64"), Some(56));
        assert_eq!(Series::V6_1.number("6.1.0-56-cloud-amd64"), None);
        assert_eq!(Series::V6_12.number("6.12.57+deb12-amd64"), Some(57));
        assert_eq!(Series::V6_12.number("6.12.57+deb12-cloud-amd64"), None);
        assert_eq!(Series::V6_1.number("6.12.57+deb12-amd64"), None);
    }

    #[test]
    fn search_regex_matches_plain_flavour_only() {
        assert_eq!(
            Series::V6_1.search_regex(),
            r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"
        );
        assert_eq!(
            Series::V6_12.search_regex(),
            r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$"
        );
    }
}
