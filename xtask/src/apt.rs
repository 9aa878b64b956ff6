//! Debian package management: query dpkg, add the bookworm-backports suite, and install packages,
//! running `apt-get update` at most once per xtask run and only when something must be fetched.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

pub const BACKPORTS: &str = "bookworm-backports";
const SOURCES_DIR: &str = "/etc/apt/sources.list.d";
const DEBIAN_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/gate-bookworm-backports.sources";

#[derive(Default)]
pub struct Apt {
    updated: bool,
}

impl Apt {
    /// `apt-get update`, once per run.
    pub fn update_once(&mut self) -> Result<()> {
        if self.updated {
            return Ok(());
        }
        require_root("apt-get update")?;
        cmd::run(apt_get().arg("update")).context(
            "refreshing the package lists failed; check the network and /etc/apt/sources.list.d",
        )?;
        self.updated = true;
        Ok(())
    }

    /// Forget an earlier update (a source was added since).
    pub fn invalidate(&mut self) {
        self.updated = false;
    }

    /// `apt-get install -y [-t release] packages…` (after a one-time `apt-get update`).
    pub fn install(&mut self, packages: &[&str], release: Option<&str>) -> Result<()> {
        self.update_once()?;
        require_root("apt-get install")?;
        let mut command = apt_get();
        command.args(["install", "-y", "--no-install-recommends"]);
        if let Some(release) = release {
            command.args(["-t", release]);
        }
        cmd::run(command.args(packages)).with_context(|| {
            format!(
                "installing {} failed; read apt's messages above",
                packages.join(" ")
            )
        })
    }
}

fn apt_get() -> Command {
    let mut command = Command::new("apt-get");
    command.arg("-q").env("DEBIAN_FRONTEND", "noninteractive");
    command
}

/// The installed version of `package`, if dpkg has it fully installed.
pub fn installed_version(package: &str) -> Option<String> {
    let out =
        cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}\t${Version}", package]))?;
    let (status, version) = out.split_once('\t')?;
    (status == "install ok installed").then(|| version.to_owned())
}

/// The sources file that already enables bookworm-backports, if any.
pub fn backports_source() -> Option<PathBuf> {
    source_files().into_iter().find(|path| {
        std::fs::read_to_string(path).is_ok_and(|text| {
            text.lines()
                .map(str::trim)
                .filter(|line| !line.starts_with('#'))
                .any(|line| line.split_whitespace().any(|word| word == BACKPORTS))
        })
    })
}

fn source_files() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir(SOURCES_DIR) {
        files.extend(
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|ext| ext == "sources" || ext == "list")
                }),
        );
    }
    files.sort();
    files
}

/// Writes a deb822 file enabling bookworm-backports from the same mirror and keyring as the
/// `bookworm` suite in debian.sources. Returns the file written.
pub fn add_backports_source() -> Result<PathBuf> {
    require_root("adding the bookworm-backports apt source")?;
    let text = std::fs::read_to_string(DEBIAN_SOURCES).with_context(|| {
        format!("reading {DEBIAN_SOURCES} to copy its mirror for bookworm-backports")
    })?;
    let stanza = bookworm_stanza(&text).with_context(|| {
        format!("{DEBIAN_SOURCES} has no stanza with `Suites: bookworm`; add bookworm-backports to apt by hand")
    })?;
    let uris = field(stanza, "URIs")
        .with_context(|| format!("the bookworm stanza in {DEBIAN_SOURCES} has no URIs"))?;
    let mut out = format!("Types: deb\nURIs: {uris}\nSuites: {BACKPORTS}\nComponents: main\n");
    if let Some(keyring) = field(stanza, "Signed-By") {
        out.push_str(&format!("Signed-By: {keyring}\n"));
    }
    std::fs::write(BACKPORTS_SOURCES, out)
        .with_context(|| format!("writing {BACKPORTS_SOURCES}"))?;
    Ok(PathBuf::from(BACKPORTS_SOURCES))
}

fn bookworm_stanza(text: &str) -> Option<&str> {
    text.split("\n\n").find(|stanza| {
        field(stanza, "Suites")
            .is_some_and(|suites| suites.split_whitespace().any(|s| s == "bookworm"))
    })
}

fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

pub fn require_root(what: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    if uid != 0 {
        bail!("{what} needs root; run `cargo xtask setup` as root (or with sudo) once");
    }
    Ok(())
}

/// `apt-cache search --names-only REGEX`: the package names found.
pub fn search_names(regex: &str) -> Result<Vec<String>> {
    let out = cmd::output(Command::new("apt-cache").args(["search", "--names-only", regex]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// `apt-get download PACKAGE` into `dir`; returns the .deb written.
pub fn download(package: &str, dir: &Path) -> Result<PathBuf> {
    // As root apt would fall back from its sandbox user with a warning; say so up front.
    cmd::run(
        apt_get()
            .args(["-o", "APT::Sandbox::User=root", "download", package])
            .current_dir(dir),
    )?;
    let deb = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension().is_some_and(|e| e == "deb")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        });
    deb.with_context(|| {
        format!(
            "`apt-get download {package}` left no .deb in {}",
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCES: &str = "Types: deb\n# comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n";

    #[test]
    fn finds_the_bookworm_stanza_and_its_fields() {
        let stanza = bookworm_stanza(SOURCES).unwrap();
        assert_eq!(field(stanza, "URIs"), Some("http://deb.debian.org/debian"));
        assert_eq!(
            field(stanza, "Signed-By"),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
    }
}
