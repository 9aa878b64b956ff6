//! Preconditions of the kernel suite: checked first, each failure said plainly.

use std::path::{Path, PathBuf};

/// Where cgroup v2 is mounted, from a mountinfo text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        // "36 25 0:30 / /sys/fs/cgroup rw,… shared:9 - cgroup2 cgroup2 rw"
        let (left, right) = l.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path of a process, from its /proc/PID/cgroup text ("0::/a/b" → "/a/b").
pub fn cgroup_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// Whether an LSM list ("lockdown,capability,bpf") has `bpf`.
pub fn lsm_has_bpf(list: &str) -> bool {
    list.trim().split(',').any(|x| x == "bpf")
}

/// Facts about the machine the suite runs on.
#[derive(Clone, Debug)]
pub struct Env {
    pub cgroup_root: PathBuf,
    pub home: String,
    pub notes: Vec<String>,
}

fn mount_securityfs() -> Result<(), String> {
    nix::mount::mount(
        Some("securityfs"),
        "/sys/kernel/security",
        Some("securityfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mount securityfs on /sys/kernel/security: {e}"))
}

fn is_tmpfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// Brings the loopback interface up if it is down (a bare guest init may not have).
fn loopback_up() -> Result<bool, String> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, c) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *c as libc::c_char;
        }
        let mut res = Ok(false);
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            res = Err(format!(
                "SIOCGIFFLAGS lo: {}",
                std::io::Error::last_os_error()
            ));
        } else if ifr.ifr_ifru.ifru_flags & libc::IFF_UP as libc::c_short == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            res = if libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) < 0 {
                Err(format!(
                    "SIOCSIFFLAGS lo up: {}",
                    std::io::Error::last_os_error()
                ))
            } else {
                Ok(true)
            };
        }
        libc::close(fd);
        res
    }
}

/// Checks everything the suite needs; the error lists every problem found.
pub fn check(gate: &Path, probe: &Path, repo: &Path, allow_host_home: bool) -> Result<Env, String> {
    let mut problems = Vec::new();
    let mut notes = Vec::new();

    if !nix::unistd::geteuid().is_root() {
        problems.push("not running as root (gate needs root to load BPF programs)".to_string());
    }

    let lsm_file = Path::new("/sys/kernel/security/lsm");
    if !lsm_file.exists() {
        match mount_securityfs() {
            Ok(()) => notes.push("mounted securityfs".to_string()),
            Err(e) => problems.push(e),
        }
    }
    match std::fs::read_to_string(lsm_file) {
        Ok(l) if lsm_has_bpf(&l) => notes.push(format!("lsm: {}", l.trim())),
        Ok(l) => problems.push(format!(
            "BPF LSM is not active: /sys/kernel/security/lsm is {:?}; boot with lsm=...,bpf",
            l.trim()
        )),
        Err(e) => problems.push(format!("cannot read {}: {e}", lsm_file.display())),
    }

    let cgroup_root = match std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| cgroup2_mount(&m))
    {
        Some(p) => {
            notes.push(format!("cgroup2 at {}", p.display()));
            p
        }
        None => {
            problems
                .push("cgroup v2 is not mounted (no cgroup2 line in /proc/self/mountinfo)".into());
            PathBuf::from("/sys/fs/cgroup")
        }
    };
    if !Path::new("/sys/fs/bpf").is_dir() {
        notes.push("no /sys/fs/bpf directory".into());
    }

    for (what, p) in [("--gate", gate), ("--probe", probe)] {
        let ok = std::fs::metadata(p).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        });
        if !ok {
            problems.push(format!("{what} {} is not an executable file", p.display()));
        }
        if !p.is_absolute() {
            problems.push(format!("{what} {} must be an absolute path", p.display()));
        }
    }
    if !repo.join("policies").is_dir() {
        problems.push(format!("--repo {}: no policies/ directory", repo.display()));
    }

    let home = std::env::var("HOME").unwrap_or_default();
    if home.is_empty() || !Path::new(&home).is_dir() {
        problems.push(format!("HOME {home:?} is not a directory"));
    } else if !is_tmpfs(Path::new(&home)) && !allow_host_home {
        problems.push(format!(
            "HOME {home} is not a tmpfs: the suite writes fake keys and shell rc files there and is \
             meant for throw-away guests (pass --allow-host-home to override)"
        ));
    }
    if !is_tmpfs(Path::new("/tmp")) && !allow_host_home {
        problems
            .push("/tmp is not a tmpfs (the suite keeps its files under /tmp/gate-tests)".into());
    }

    match loopback_up() {
        Ok(true) => notes.push("brought lo up".into()),
        Ok(false) => {}
        Err(e) => problems.push(format!("loopback: {e}")),
    }

    if problems.is_empty() {
        Ok(Env {
            cgroup_root,
            home,
            notes,
        })
    } else {
        Err(problems.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2() {
        let mi = "25 1 0:23 / /sys rw - sysfs sysfs rw\n\
                  36 25 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("25 1 0:23 / /sys rw - sysfs sysfs rw\n"),
            None
        );
        let spaced = "36 25 0:30 / /mnt/a\\040b rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(spaced), Some(PathBuf::from("/mnt/a b")));
    }

    #[test]
    fn parses_proc_cgroup() {
        assert_eq!(
            cgroup_path("0::/gate/run-1\n").as_deref(),
            Some("/gate/run-1")
        );
        assert_eq!(
            cgroup_path("12:pids:/x\n1:name=systemd:/y\n0::/user.slice\n").as_deref(),
            Some("/user.slice")
        );
        assert_eq!(cgroup_path("3:cpu:/\n"), None);
    }

    #[test]
    fn lsm_list() {
        assert!(lsm_has_bpf("lockdown,capability,landlock,bpf\n"));
        assert!(!lsm_has_bpf("lockdown,capability,landlock"));
        assert!(!lsm_has_bpf("bpfx"));
    }

    #[test]
    fn this_host_has_cgroup2() {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(cgroup2_mount(&mi).is_some());
    }
}
