//! Small helpers: the clock, CPU pinning, forked workers, progress lines.
use std::{
    ffi::CString,
    io::{Read, Write},
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// `CLOCK_MONOTONIC` in ns. Under `-icount shift=0,sleep=off` this is virtual time: one ns per
/// guest instruction (summed over the vCPUs that run), independent of how busy the host is.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writing into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Progress on stderr (the guest console), stamped with virtual seconds since boot.
pub fn say(msg: &str) {
    eprintln!("gate-bench [{:9.3}] {msg}", now_ns() as f64 / 1e9);
}

/// Pins the calling process (and what it forks) to one CPU.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

pub fn cstring(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL in bench paths")
}

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Runs `f` in a forked child and returns the JSON it produced. The caller must be
/// single-threaded (it is: the bench never starts threads in the measuring process). The child
/// is where confinement is applied, so every condition starts from the same clean process and
/// nothing leaks from one condition into the next.
pub fn in_worker<F: FnOnce() -> Result<Value>>(f: F) -> Result<Value> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 into a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: fresh fds we own.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let _ = std::io::stderr().flush();
    // SAFETY: the process is single-threaded, so the child may run ordinary Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        drop(rd);
        let out = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(v)) => serde_json::json!({ "ok": v }),
            Ok(Err(e)) => serde_json::json!({ "err": format!("{e:#}") }),
            Err(_) => serde_json::json!({ "err": "worker panicked" }),
        };
        let mut file = std::fs::File::from(wr);
        let _ = file.write_all(out.to_string().as_bytes());
        drop(file);
        // SAFETY: leave without running the parent's destructors (engines, cgroups).
        unsafe { libc::_exit(0) };
    }
    drop(wr);
    let mut text = String::new();
    std::fs::File::from(rd)
        .read_to_string(&mut text)
        .context("reading the worker's result")?;
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("worker ended with status {status:#x}");
    }
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("worker output {text:?}"))?;
    match v {
        Value::Object(mut m) => {
            if let Some(e) = m.remove("err") {
                bail!("worker failed: {}", e.as_str().unwrap_or("?"));
            }
            m.remove("ok").context("worker gave no result")
        }
        _ => bail!("worker output is not an object"),
    }
}

/// VmRSS and VmHWM of a process, in KiB.
pub fn rss_kib(pid: &str) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The BPF maps a process holds open, from /proc/PID/fdinfo: name-less list of
/// (map_type, key_size, value_size, max_entries, memlock bytes), de-duplicated by map id.
pub fn bpf_maps(pid: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |k: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        if !seen.insert(field("map_id:")) {
            continue;
        }
        out.push(serde_json::json!({
            "map_type": field("map_type:"),
            "key_size": field("key_size:"),
            "value_size": field("value_size:"),
            "max_entries": field("max_entries:"),
            "memlock": field("memlock:"),
        }));
    }
    out
}

pub fn uname_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A forked child that sets something up (loads BPF programs), reports, serves commands
/// (one line each) until told to stop, then tears it down and reports again. Loading gate parses
/// the kernel's BTF and grows the loading process by tens of MB; doing it in a child keeps the
/// measuring process small and the same size for every condition (fork+exec cost grows with
/// the size of the process that forks).
pub struct Holder {
    pid: i32,
    commands: Option<std::fs::File>,
    reports: std::io::BufReader<std::fs::File>,
    pub setup: Value,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 into a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: fresh fds we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Writes one report line (`{"ok": …}` or `{"err": …}`).
pub fn report_line(out: &mut std::fs::File, r: Result<Value>) {
    let v = match r {
        Ok(v) => serde_json::json!({ "ok": v }),
        Err(e) => serde_json::json!({ "err": format!("{e:#}") }),
    };
    let _ = writeln!(out, "{v}");
}

fn read_report(r: &mut std::io::BufReader<std::fs::File>) -> Result<Value> {
    use std::io::BufRead;
    let mut line = String::new();
    r.read_line(&mut line)
        .context("reading the holder's report")?;
    if line.is_empty() {
        bail!("the holder process ended without reporting");
    }
    let v: Value = serde_json::from_str(&line)?;
    if let Some(e) = v.get("err") {
        bail!("{}", e.as_str().unwrap_or("?"));
    }
    Ok(v["ok"].clone())
}

impl Holder {
    /// `serve(held, command, out)` handles one command line, writing its report line(s).
    pub fn spawn<T>(
        setup: impl FnOnce() -> Result<(Value, T)>,
        mut serve: impl FnMut(&mut T, &str, &mut std::fs::File),
        teardown: impl FnOnce(T) -> Result<Value>,
    ) -> Result<Holder> {
        use std::io::BufRead;
        let (cmd_rd, cmd_wr) = pipe()?;
        let (rep_rd, rep_wr) = pipe()?;
        let _ = std::io::stderr().flush();
        // SAFETY: the process is single-threaded.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            drop(cmd_wr);
            drop(rep_rd);
            let _ = unpin();
            let mut out = std::fs::File::from(rep_wr);
            let code = match setup() {
                Ok((v, mut held)) => {
                    report_line(&mut out, Ok(v));
                    // Serve until "stop" or EOF (the parent is gone).
                    let mut lines = std::io::BufReader::new(std::fs::File::from(cmd_rd)).lines();
                    while let Some(Ok(cmd)) = lines.next() {
                        if cmd == "stop" {
                            break;
                        }
                        serve(&mut held, &cmd, &mut out);
                    }
                    report_line(&mut out, teardown(held));
                    0
                }
                Err(e) => {
                    report_line(&mut out, Err(e));
                    1
                }
            };
            drop(out);
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        drop(cmd_rd);
        drop(rep_wr);
        let mut reports = std::io::BufReader::new(std::fs::File::from(rep_rd));
        let commands = Some(std::fs::File::from(cmd_wr));
        match read_report(&mut reports) {
            Ok(setup) => Ok(Holder {
                pid,
                commands,
                reports,
                setup,
            }),
            Err(e) => {
                let mut status = 0;
                // SAFETY: reaping our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                Err(e)
            }
        }
    }

    pub fn send(&mut self, cmd: &str) -> Result<()> {
        let c = self.commands.as_mut().context("holder already stopped")?;
        writeln!(c, "{cmd}").context("sending a command to the holder")
    }

    pub fn read(&mut self) -> Result<Value> {
        read_report(&mut self.reports)
    }

    /// Tells the holder to tear down; returns its final report.
    pub fn stop(mut self) -> Result<Value> {
        let _ = self.send("stop");
        self.commands = None;
        let r = read_report(&mut self.reports);
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
        r
    }
}

/// Lets the calling process run on every CPU again.
fn unpin() -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    Ok(())
}
