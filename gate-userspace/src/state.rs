//! Where a run keeps its state: the pinned links in bpffs (`/sys/fs/bpf/gate/<run>/`) and a
//! small record in `/run/gate/runs/<run>/` (owner pid, cgroup, the self-test canary).
//!
//! A run whose gate died keeps enforcing through its pinned links for as long as its cgroup
//! has processes. [`collect_stale`] removes what such runs left once their cgroup is empty.
use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use gate_common::InodeKey;

use crate::{cgroup::Hierarchy, policy::kernel_dev};

pub const BPFFS: &str = "/sys/fs/bpf";
pub const PIN_ROOT: &str = "/sys/fs/bpf/gate";
pub const STATE_ROOT: &str = "/run/gate/runs";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{BPFFS} is not a bpf filesystem and mounting one failed ({0}); \
         mount it with: mount -t bpf bpf {BPFFS}"
    )]
    NoBpffs(io::Error),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Mounts bpffs at /sys/fs/bpf if it is not there yet.
pub fn ensure_bpffs() -> Result<(), StateError> {
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| StateError::NoBpffs(io::Error::from(e)))
}

/// One run's state directories.
pub struct RunState {
    pub id: String,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl RunState {
    pub fn create() -> Result<Self, StateError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let id = format!("run-{}-{:08x}", std::process::id(), nanos);
        let pin_dir = Path::new(PIN_ROOT).join(&id);
        let state_dir = Path::new(STATE_ROOT).join(&id);
        fs::create_dir_all(&pin_dir).map_err(io_err("creating", &pin_dir))?;
        fs::create_dir_all(&state_dir).map_err(io_err("creating", &state_dir))?;
        let owner = state_dir.join("owner");
        fs::write(&owner, std::process::id().to_string()).map_err(io_err("writing", &owner))?;
        Ok(RunState {
            id,
            pin_dir,
            state_dir,
        })
    }

    pub fn record_cgroup(&self, cgroup: &Path) -> Result<(), StateError> {
        let p = self.state_dir.join("cgroup");
        fs::write(&p, cgroup.as_os_str().as_encoded_bytes()).map_err(io_err("writing", &p))
    }

    pub fn canary_path(&self) -> PathBuf {
        self.state_dir.join("canary")
    }

    /// Creates the self-test canary file and returns its identity.
    pub fn canary(&self) -> Result<InodeKey, StateError> {
        let p = self.canary_path();
        fs::write(&p, b"gate self-test canary\n").map_err(io_err("writing", &p))?;
        let m = fs::metadata(&p).map_err(io_err("reading", &p))?;
        Ok(InodeKey {
            dev: kernel_dev(m.dev()),
            slot: 0,
            ino: m.ino(),
        })
    }

    /// Removes the state after a clean end (the links are already unpinned).
    pub fn remove(&self) {
        let _ = fs::remove_dir_all(&self.state_dir);
        let _ = fs::remove_dir_all(&self.pin_dir);
    }
}

fn owner_alive(state_dir: &Path) -> bool {
    let Ok(pid) = fs::read_to_string(state_dir.join("owner")) else {
        return false;
    };
    let Ok(pid) = pid.trim().parse::<u32>() else {
        return false;
    };
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim() == "gate")
        .unwrap_or(false)
}

/// Cleans up after runs whose gate died: once their cgroup is empty their pins, cgroup and
/// state go. A dead run whose cgroup still has processes keeps enforcing and is reported.
pub fn collect_stale(h: &Hierarchy) {
    let Ok(rd) = fs::read_dir(STATE_ROOT) else {
        return;
    };
    for entry in rd.flatten() {
        let dir = entry.path();
        if owner_alive(&dir) {
            continue;
        }
        let id = entry.file_name();
        let cgroup = fs::read(dir.join("cgroup"))
            .ok()
            .map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned()));
        if let Some(cg) = &cgroup
            && let Ok(c) = crate::cgroup::Cgroup::open(h, cg)
        {
            if c.populated() {
                eprintln!(
                    "gate: warning: the gate that confined {} died; its processes stay \
                         confined by the pinned programs. Stop them with: echo 1 > {}/cgroup.kill",
                    cg.display(),
                    cg.display()
                );
                continue;
            }
            let _ = c.remove();
        }
        let _ = fs::remove_dir_all(Path::new(PIN_ROOT).join(&id));
        let _ = fs::remove_dir_all(&dir);
    }
}

/// gate's own state that every policy protects (rule `gate-self`): its config and policies,
/// keys, logs, runtime files, pins and binary, plus the audit stream this process writes:
/// `key` (neither read nor written by a confined process) and `log` (not written).
pub fn gate_state(key: &Path, log: Option<&Path>) -> Vec<crate::policy::Protected> {
    use crate::policy::Protected;
    let w = |p: &Path| Protected {
        path: p.to_path_buf(),
        read: false,
    };
    let rw = |p: &Path| Protected {
        path: p.to_path_buf(),
        read: true,
    };
    let mut v = vec![
        w(Path::new("/etc/gate")),
        rw(Path::new("/var/lib/gate")),
        w(Path::new("/var/log/gate")),
        w(Path::new("/run/gate")),
        w(Path::new(PIN_ROOT)),
        rw(key),
    ];
    if let Ok(exe) = std::env::current_exe() {
        v.push(w(&exe));
    }
    if let Some(log) = log {
        v.push(w(log));
        v.push(w(&crate::audit::default_state_path(log)));
    }
    v
}
