//! One confined cgroup's life, the same for `gate run` and the daemon: the cgroup is created
//! fresh, the agent is confined in an enforcer (by the caller: `gate run` gives its engine,
//! the daemon its core), a self-test proves the kernel denies a process in it, and the end
//! goes in the one safe order: every process of the tree is ended, then the agent is
//! unconfined, then the cgroup removed. A session dropped without [`Session::end`] (an
//! error, a panic) still ends the tree's processes and removes the cgroup: nothing that was
//! confined is left running unconfined. Its enforcer entry is left (the cgroup id is not
//! reused, so it confines nothing).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    cgroup::{Cgroup, CgroupError, Hierarchy},
    policy::Mode,
    run::{RunError, canary_probe, probe},
};

/// How long ending a tree's processes may take before the end fails (the tree then stays
/// confined and its cgroup in place).
pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Session {
    cg: Option<Cgroup>,
}

impl Session {
    /// Creates the cgroup `<mount>/gate/<name>`; an empty leftover of the same name (a
    /// previous process that died) is removed first, a populated one is an error.
    pub fn create(h: &Hierarchy, name: &str) -> Result<Session, CgroupError> {
        let _ = std::fs::remove_dir(h.mount.join("gate").join(name));
        Ok(Session {
            cg: Some(Cgroup::create(h, name)?),
        })
    }

    /// A session for an existing cgroup (an agent adopted from a previous daemon).
    pub fn of(cg: Cgroup) -> Session {
        Session { cg: Some(cg) }
    }

    pub fn cgroup(&self) -> &Cgroup {
        self.cg.as_ref().expect("present until end or drop")
    }

    /// Proves enforcement: a forked process joins the cgroup and opens `canary` for writing,
    /// which the agent's exact rule denies. In enforce mode the kernel must refuse it with
    /// EPERM; in audit mode let it through (the caller checks the reported event).
    pub fn self_test(&self, canary: &Path, mode: Mode) -> Result<(), RunError> {
        let procs = self.cgroup().procs_file()?;
        let code = canary_probe(&procs, canary)?;
        let expected = if mode == Mode::Audit {
            probe::OPENED
        } else {
            probe::DENIED
        };
        if code == expected {
            return Ok(());
        }
        Err(RunError::SelfTest(match code {
            probe::NOT_MOVED => "could not move a test process into the cgroup".into(),
            probe::OPENED => "a confined test process opened a protected file; the BPF LSM is \
                              not active on this kernel (check `gate doctor`)"
                .into(),
            probe::DENIED => "the test process was denied, but the policy is in audit mode: \
                              enforcement does not match the policy"
                .into(),
            probe::OTHER_ERROR => "the self-test failed with an unexpected error".into(),
            _ => format!("the self-test ended with status {code}"),
        }))
    }

    /// Ends the session: every process of the tree, then `unconfine` (the enforcer's entry),
    /// then the cgroup. If the processes cannot all be ended, the agent stays confined and
    /// the cgroup stays (nothing runs unconfined); the error says so.
    pub fn end<E: std::fmt::Display>(
        mut self,
        unconfine: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), String> {
        let cg = self.cg.take().expect("present until end or drop");
        cg.kill_all(KILL_TIMEOUT).map_err(|e| {
            // Still confined: the processes keep their policy. Forget the cgroup here so
            // that drop does not try again.
            format!("{e}; its processes stay confined")
        })?;
        unconfine().map_err(|e| e.to_string())?;
        cg.remove().map_err(|e| e.to_string())
    }

    /// Ends the tree's processes without unconfining (the daemon's end of a run, whose
    /// agent is removed on the owner thread afterwards).
    pub fn end_processes(&self) -> Result<(), CgroupError> {
        self.cgroup().kill_all(KILL_TIMEOUT)
    }

    /// Waits (at most `timeout`) until process `pid` has left the cgroup.
    pub fn wait_left(&self, pid: i32, timeout: Duration) {
        let procs = self.cgroup().path.join("cgroup.procs");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline
            && std::fs::read_to_string(&procs)
                .is_ok_and(|p| p.lines().any(|l| l.trim() == pid.to_string()))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Gives up the session without ending anything (the cgroup outlives this process: an
    /// agent the daemon keeps confined across its restart).
    pub fn keep(mut self) -> Cgroup {
        self.cg.take().expect("present until end or drop")
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(cg) = self.cg.take() {
            if let Err(e) = cg.kill_all(KILL_TIMEOUT) {
                tracing::error!(cgroup = cg.name, error = %e, "a dropped session's processes could not all be ended; they stay confined");
                return;
            }
            let _ = cg.remove();
        }
    }
}
