//! cgroup v2: where it is mounted, gate's run cgroups, moving a process in, emptying one.
use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo); \
         mount one with: mount -t cgroup2 none /sys/fs/cgroup"
    )]
    NotMounted,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cgroup {0} still has processes after they were killed")]
    Busy(PathBuf),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The cgroup v2 mount point and the hierarchy path it shows (not "/" inside a cgroup
/// namespace or a bind mount of a subtree).
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub mount: PathBuf,
    pub root: PathBuf,
}

/// Finds the cgroup v2 mount from /proc/self/mountinfo.
pub fn hierarchy() -> Result<Hierarchy, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
    parse_mountinfo(&info).ok_or(CgroupError::NotMounted)
}

fn parse_mountinfo(info: &str) -> Option<Hierarchy> {
    info.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let f: Vec<&str> = pre.split_whitespace().collect();
        Some(Hierarchy {
            mount: unescape(f.get(4)?).into(),
            root: unescape(f.get(3)?).into(),
        })
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.by_ref().take(3).collect();
            if let Ok(v) = u8::from_str_radix(&oct, 8) {
                out.push(v as char);
                continue;
            }
            out.push('\\');
            out.push_str(&oct);
        } else {
            out.push(c);
        }
    }
    out
}

/// One cgroup gate created; removed (after its processes are killed) by [`Cgroup::remove`].
#[derive(Debug)]
pub struct Cgroup {
    pub path: PathBuf,
    /// Kernel cgroup id (the inode number of its directory).
    pub id: u64,
    /// Depth in the whole hierarchy (root is 0), as `bpf_get_current_ancestor_cgroup_id` counts.
    pub level: u32,
    /// Path as the hierarchy names it, e.g. `/gate/run-123`.
    pub name: String,
}

impl Cgroup {
    /// Creates `<mount>/gate/<name>`.
    pub fn create(h: &Hierarchy, name: &str) -> Result<Self, CgroupError> {
        let parent = h.mount.join("gate");
        match fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("creating cgroup", &parent)(e)),
        }
        let path = parent.join(name);
        fs::create_dir(&path).map_err(io_err("creating cgroup", &path))?;
        Self::open(h, &path)
    }

    /// An existing cgroup directory under the mount `h`.
    pub fn open(h: &Hierarchy, path: &Path) -> Result<Self, CgroupError> {
        let id = fs::metadata(path)
            .map_err(io_err("reading cgroup", path))?
            .ino();
        let rel = path.strip_prefix(&h.mount).unwrap_or(path);
        let depth = |p: &Path| {
            p.components()
                .filter(|c| matches!(c, std::path::Component::Normal(_)))
                .count()
        };
        let level = (depth(&h.root) + depth(rel)) as u32;
        let name = Path::new("/")
            .join(h.root.strip_prefix("/").unwrap_or(&h.root))
            .join(rel);
        Ok(Cgroup {
            path: path.to_path_buf(),
            id,
            level,
            name: name.display().to_string(),
        })
    }

    /// `cgroup.procs`, opened for writing a pid into (done in the child before exec).
    pub fn procs_file(&self) -> Result<fs::File, CgroupError> {
        let p = self.path.join("cgroup.procs");
        fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(io_err("opening", &p))
    }

    pub fn populated(&self) -> bool {
        populated(&self.path)
    }

    /// Kills every process in the subtree and waits until it is empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + timeout;
        while self.populated() {
            if fs::write(self.path.join("cgroup.kill"), "1").is_err() {
                self.kill_procs_fallback();
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Busy(self.path.clone()));
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Kernels before 5.14 have no cgroup.kill: SIGKILL each listed process, subtree included.
    fn kill_procs_fallback(&self) {
        let mut dirs = vec![self.path.clone()];
        while let Some(d) = dirs.pop() {
            if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
                for pid in s.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: plain kill(2).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            if let Ok(rd) = fs::read_dir(&d) {
                dirs.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            }
        }
    }

    /// Removes the cgroup and any cgroups the confined tree created below it (must be empty).
    pub fn remove(&self) -> Result<(), CgroupError> {
        remove_tree(&self.path)
    }
}

/// Whether the cgroup directory `dir` or one below it has a process (`cgroup.events`); false
/// when it cannot be read.
pub fn populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Removes the cgroup directory `dir` and the cgroups below it (all must be empty); one that is
/// gone already is not an error.
pub fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("removing cgroup", dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        let info = "\
24 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw,nsdelegate
";
        let h = parse_mountinfo(info).unwrap();
        assert_eq!(h.mount, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(h.root, PathBuf::from("/"));
    }

    #[test]
    fn no_cgroup2_is_none_and_escapes_are_decoded() {
        assert!(parse_mountinfo("24 30 0:22 / /sys rw - sysfs sysfs rw\n").is_none());
        assert_eq!(unescape(r"/a\040b"), "/a b");
    }
}
