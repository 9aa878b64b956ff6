//! A third-party test suite as a workload: CPython 3.11's own regression tests (the modules the
//! kernel suite's `workload/cpython` tests run, tests/workloads/cpython.toml), run once
//! unconfined and once confined under coding-agent, as an unprivileged user.
//!
//! Python and its standard library (tests included) are unpacked into the workspace's tmpfs
//! first from an archive `cargo xtask bench` makes on the host, times kept so the compiled
//! `.pyc` files stay valid: reading them over the host's 9p root would make the icount clock
//! jump. It runs with `-j1` (one process, tests in order), so
//! its virtual time is its instruction count; sleeps cost nothing (`sleep=off`).
use std::{
    ffi::CString,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::util::{cstring, errno, now_ns, say};

/// The kernel suite's CPython workload (its command names the modules).
const WORKLOAD: &str = include_str!("../../tests/workloads/cpython.toml");

/// The modules tests/workloads/cpython.toml runs: the benchmark measures the same suite.
pub fn modules() -> Result<Vec<String>> {
    let v: toml::Value =
        toml::from_str(WORKLOAD).context("tests/workloads/cpython.toml is not valid TOML")?;
    let modules: Vec<String> = v
        .get("command")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(toml::Value::as_str)
        .filter(|a| a.starts_with("test_"))
        .map(str::to_owned)
        .collect();
    if modules.is_empty() {
        bail!("tests/workloads/cpython.toml's command names no test_* module");
    }
    Ok(modules)
}

/// The user it runs as (nobody).
const UID: u32 = 65534;

pub struct PySuite {
    /// PYTHONHOME: bin/python3.11 and lib/python3.11 below it (the archive's usr/).
    pub home: PathBuf,
    pub info: Value,
    /// The test modules, in the order regrtest is given them.
    pub modules: Vec<String>,
}

pub fn prepare(ws: &Path, tar: &Path) -> Result<PySuite> {
    let root = ws.join("python");
    fs::create_dir_all(&root)?;
    if !Path::new("/usr/lib/python3.11/test/test_os.py").exists() {
        bail!(
            "CPython's test suite is missing (/usr/lib/python3.11/test/test_os.py): \
             `cargo xtask setup` installs Debian's libpython3.11-testsuite"
        );
    }
    let t0 = now_ns();
    // One archive read with 1 MiB records: 9p round trips are what the icount clock pays for.
    let status = Command::new("tar")
        .args(["-b", "2048", "-xpf"])
        .arg(tar)
        .arg("-C")
        .arg(&root)
        .status()
        .context("running tar")?;
    if !status.success() {
        bail!(
            "unpacking {} into the workspace failed ({status})",
            tar.display()
        );
    }
    say(&format!(
        "python unpacked into the workspace ({:.1} virtual s)",
        (now_ns() - t0) as f64 / 1e9
    ));
    let home = root.join("usr");
    let modules = modules()?;
    Ok(PySuite {
        info: json!({
            "description": format!(
                "CPython 3.11's own regression tests (Debian's libpython3.11-testsuite), {} modules \
                 about files, paths, permissions, processes, pidfds, temp files, archives, loopback \
                 sockets and locks: python3.11 -m test -j1 {}; as an unprivileged user, Python and \
                 its library unpacked into the workspace's tmpfs",
                modules.len(),
                modules.join(" ")
            ),
            "modules": modules,
        }),
        home,
        modules,
    })
}

/// Becomes nobody (groups, gid, uid), before any confinement.
pub fn drop_privileges() -> Result<()> {
    // SAFETY: plain syscalls.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(UID) != 0
            || libc::setuid(UID) != 0
        {
            bail!("dropping privileges to uid {UID} failed: errno {}", errno());
        }
    }
    Ok(())
}

/// A fresh directory the suite runs in, writable by its user.
pub fn rundir(py: &PySuite, cond: &str) -> Result<PathBuf> {
    let d = py.home.with_file_name(format!("pyrun-{cond}"));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d)?;
    fs::set_permissions(&d, fs::Permissions::from_mode(0o1777))?;
    Ok(d)
}

/// Runs the suite once (round `round` of condition `cond`) in this (already confined or not)
/// worker; returns its virtual time and the last lines regrtest printed.
pub fn run_once(py: &PySuite, cond: &str, round: usize, dir: &Path) -> Result<Value> {
    let out_path = dir.join("regrtest.out");
    let exe = py.home.join("bin/python3.11");
    let argv: Vec<CString> = [exe.to_string_lossy().as_ref(), "-m", "test", "-j1"]
        .into_iter()
        .chain(py.modules.iter().map(String::as_str))
        .map(|a| CString::new(a).unwrap())
        .collect();
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let envs: Vec<CString> = [
        format!("PYTHONHOME={}", py.home.display()),
        format!("HOME={}", dir.display()),
        "PATH=/usr/bin:/bin".into(),
        "LANG=C.UTF-8".into(),
        "TMPDIR=/tmp".into(),
    ]
    .into_iter()
    .map(|e| CString::new(e).unwrap())
    .collect();
    let mut env_ptrs: Vec<*const libc::c_char> = envs.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let dir_c = cstring(dir);
    let out_c = cstring(&out_path);

    say(&format!("GATE-BENCH-MARK pysuite-{cond}-{round}-begin"));
    let t0 = now_ns();
    // SAFETY: the child only makes async-signal-safe calls before execve.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork failed: errno {}", errno());
    }
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            let fd = libc::open(
                out_c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                0o644,
            );
            if fd >= 0 {
                libc::dup2(fd, 1);
                libc::dup2(fd, 2);
            }
            if libc::chdir(dir_c.as_ptr()) != 0 {
                libc::_exit(126);
            }
            libc::execve(ptrs[0], ptrs.as_ptr(), env_ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let t = now_ns() - t0;
    say(&format!("GATE-BENCH-MARK pysuite-{cond}-{round}-end"));
    let out = fs::read_to_string(&out_path).unwrap_or_default();
    let tail: Vec<&str> = out
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(6)
        .collect();
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    say(&format!(
        "{cond} pysuite (round {round}): {:.2} virtual s, {}",
        t as f64 / 1e9,
        if ok {
            "all modules passed"
        } else {
            "some modules failed"
        }
    ));
    // Under icount the clock jumps while every CPU idles, so a test that races a timeout
    // against a sleeping child can fail in both conditions: what failed is recorded with the
    // time, and the suite must have run to its summary.
    if !out.contains("Tests result:") {
        bail!(
            "the CPython suite did not finish under condition {cond} (status {status:#x}): {}",
            tail.iter().rev().cloned().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(json!({
        "condition": cond,
        "round": round,
        "virtual_ns": t,
        "all_passed": ok,
        "result": tail.iter().rev().cloned().collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_modules_are_the_kernel_suites() {
        let m = super::modules().unwrap();
        assert_eq!(m.first().map(String::as_str), Some("test_subprocess"));
        assert!(m.iter().all(|t| t.starts_with("test_")), "{m:?}");
        assert!(m.len() >= 12, "{m:?}");
    }
}
