//! The real `gate daemon` (the release binary, copied into tmpfs), as a host runs it: its
//! start-up, its memory and its BPF maps' with 0, 1, 10 and 100 agents, and the time from
//! `gate run` to the command's first instruction.
//!
//! Each agent is a `gate run --policy P --workspace W --name bench-NNN -- W/bin/gate-stamp`
//! client: the client asks the daemon over the control socket, the daemon compiles the policy,
//! creates the agent's cgroup, adds the agent to its one engine and moves the client into the
//! cgroup, and the client execs `gate-stamp` (bench/src/stamp.c: static, no libc), whose first
//! instructions read `CLOCK_MONOTONIC` and print it. The sample is that stamp minus the
//! benchmark's clock read just before it spawned the client. The stamps then wait for end of
//! file on their stdin, so the agents stay alive until all of them are measured. Launch k runs
//! with k − 1 agents already confined. Policies alternate between `coding-agent` and
//! `ci-runner`, each agent with a workspace of its own.
//!
//! Then the daemon is stopped and unloaded, and a few `gate run --no-daemon` runs (each loads
//! and verifies its own programs) are timed the same way.
//!
//! The daemon and every client run chrooted in a root built in tmpfs ([`Root`]): the host root
//! the guest sees over 9p has no cache (every lookup is a round trip to the host), and while the
//! guest waits for the host its virtual clock jumps to the next timer, by amounts that depend on
//! the host's load. In the tmpfs root, what the launch path looks up (the dynamic loader and
//! libraries, /etc/passwd, the directories and files the policies name) is in memory, and the
//! kernel's file systems (/proc, /sys with cgroup2 and bpffs, /dev, /run, /root, /tmp) are
//! bound in at their own paths, so every path means what it means outside.
use std::{
    fs,
    io::{BufRead, BufReader},
    os::{fd::OwnedFd, unix::fs::PermissionsExt, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};
use gate_protocol::{Client, Request, Response};
use serde_json::{Value, json};

use crate::util::{bpf_maps, now_ns, rss_kib, say};

pub struct Options<'a> {
    /// The `gate` release binary (copied into tmpfs before anything is timed).
    pub gate: &'a Path,
    /// The `gate-stamp` binary.
    pub stamp: &'a Path,
    /// Where the copies, the config, the logs and the workspaces go (tmpfs).
    pub dir: &'a Path,
    /// The two policies agents alternate between.
    pub policies: [&'a Path; 2],
    pub agents: usize,
    pub no_daemon_runs: usize,
}

pub const SOCKET: &str = "/run/gate-bench-daemon/gate.sock";

/// Where [`Root`] builds the chroot.
pub const ROOT: &str = "/tmp/gate-bench-root";

/// The chroot: a tmpfs with the host's files the daemon's launch path needs, and the kernel's
/// file systems bound in. Unmounted when dropped.
pub struct Root {
    pub dir: PathBuf,
    mounts: Vec<PathBuf>,
}

fn mount(src: &Path, dst: &Path, fstype: Option<&str>, flags: nix::mount::MsFlags) -> Result<()> {
    nix::mount::mount(Some(src), dst, fstype, flags, None::<&str>)
        .with_context(|| format!("mounting {} on {}", src.display(), dst.display()))
}

/// Copies the host file `p` into the root at its path with the directories resolved (the root
/// has the host's /bin, /lib, /lib64 and /sbin symlinks), following a symlink at the end.
fn copy_in(root: &Path, p: &Path) -> Result<()> {
    let parent = fs::canonicalize(p.parent().context("no parent")?)?;
    let dst = root
        .join(parent.strip_prefix("/")?)
        .join(p.file_name().context("no file name")?);
    fs::create_dir_all(dst.parent().unwrap())?;
    fs::copy(p, &dst).with_context(|| format!("copying {} into the root", p.display()))?;
    Ok(())
}

impl Root {
    /// Builds the root for `exe` (its loader and libraries, from `ldd`) and `policies` (the
    /// directories their `/…/**` rules name are created; the files their exact host paths name,
    /// where they exist on the host, get an empty stand-in, so the policies compile to as many
    /// entries as outside).
    pub fn build(dir: &Path, exe: &Path, policies: &[PathBuf]) -> Result<Root> {
        use nix::mount::MsFlags;
        fs::create_dir_all(dir)?;
        let mut root = Root {
            dir: dir.to_path_buf(),
            mounts: Vec::new(),
        };
        mount(Path::new("tmpfs"), dir, Some("tmpfs"), MsFlags::empty())?;
        root.mounts.push(dir.to_path_buf());
        for d in [
            "usr/bin",
            "usr/sbin",
            "usr/lib",
            "usr/lib64",
            "etc",
            "var/tmp",
        ] {
            fs::create_dir_all(dir.join(d))?;
        }
        for (l, t) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            std::os::unix::fs::symlink(t, dir.join(l))?;
        }
        let ldd = Command::new("ldd")
            .arg(exe)
            .output()
            .context("running ldd")?;
        anyhow::ensure!(ldd.status.success(), "ldd {} failed", exe.display());
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                copy_in(dir, Path::new(p))?;
            }
        }
        for f in ["/etc/passwd", "/etc/group", "/etc/ld.so.cache"] {
            copy_in(dir, Path::new(f))?;
        }
        fs::write(
            dir.join("etc/nsswitch.conf"),
            "passwd: files\ngroup: files\n",
        )?;
        for p in policies {
            let text = fs::read_to_string(p)?;
            for q in text.split('"').skip(1).step_by(2) {
                if !q.starts_with('/') || q.contains('$') {
                    continue;
                }
                let base = q.trim_end_matches("/**");
                if ["/proc", "/sys", "/dev", "/run", "/root", "/tmp", "/home"]
                    .iter()
                    .any(|m| base == *m || base.starts_with(&format!("{m}/")))
                {
                    continue;
                }
                let inside = dir.join(&base[1..]);
                if q.ends_with("/**") {
                    fs::create_dir_all(&inside)?;
                } else if Path::new(base).exists() && !inside.exists() {
                    fs::create_dir_all(inside.parent().unwrap())?;
                    fs::write(&inside, b"")?;
                }
            }
        }
        for m in ["/proc", "/sys", "/dev", "/run", "/root", "/tmp", "/home"] {
            let dst = dir.join(&m[1..]);
            fs::create_dir_all(&dst)?;
            let rec = if m == "/tmp" {
                MsFlags::MS_BIND
            } else {
                MsFlags::MS_BIND | MsFlags::MS_REC
            };
            mount(Path::new(m), &dst, None, rec)?;
            root.mounts.push(dst);
        }
        Ok(root)
    }

    /// Makes `cmd` run chrooted here (and on every CPU: the benchmark pins itself to CPU 0).
    pub fn enter(&self, cmd: &mut Command) {
        let dir = crate::util::cstring(&self.dir);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                for cpu in 0..libc::CPU_SETSIZE as usize {
                    libc::CPU_SET(cpu, &mut set);
                }
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                if libc::chroot(dir.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Memory snapshots are taken after these many launches.
const SNAPSHOTS: [usize; 3] = [1, 10, 100];

pub fn copy_exe(src: &Path, dst: &Path) -> Result<()> {
    if let Some(d) = dst.parent() {
        fs::create_dir_all(d)?;
    }
    crate::workload::copy_big(src, dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The daemon's memory and the memlock of the BPF maps it holds.
fn memory(pid: u32, agents: usize) -> Value {
    let (rss, hwm) = rss_kib(&pid.to_string());
    let maps = bpf_maps(&pid.to_string());
    let bytes: u64 = maps.iter().filter_map(|m| m["memlock"].as_u64()).sum();
    json!({
        "agents": agents,
        "rss_kib": rss,
        "hwm_kib": hwm,
        "bpf_map_memlock_bytes": bytes,
        "bpf_maps": maps,
    })
}

pub fn status() -> Result<gate_protocol::Status> {
    let mut c = Client::connect(Path::new(SOCKET))?;
    match c.call(&Request::Status {})? {
        Response::Status(s) => Ok(s),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// Sleeps `ms` (virtual) milliseconds.
pub fn nap(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

/// Reads the stamp's one line; the sample is its clock minus `t0`.
fn stamp_of(child: &mut Child, t0: u64) -> Result<u64> {
    let out = child.stdout.take().context("piped stdout")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let t1: u64 = line
        .trim()
        .parse()
        .with_context(|| format!("the command printed {line:?}, not its clock"))?;
    anyhow::ensure!(t1 > t0, "the stamp {t1} is before the spawn {t0}");
    Ok(t1 - t0)
}

/// `path` opened for appending (created if missing): where the clients' stderr goes.
pub fn append_to(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new().create(true).append(true).open(path)
}

pub fn tail(path: &Path) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

struct Running {
    daemon: Child,
    clients: Vec<Child>,
    /// The write end of the stamps' shared stdin: dropping it lets them all exit.
    hold: Option<OwnedFd>,
}

impl Running {
    /// Ends the stamps, then the daemon (SIGTERM), then detaches what it left pinned.
    fn finish(&mut self, root: &Root, gate: &Path, log: &Path) -> Result<Value> {
        self.hold = None;
        let mut codes = Vec::new();
        for c in &mut self.clients {
            codes.push(c.wait().map(|s| s.code().unwrap_or(-1)).unwrap_or(-1));
        }
        let failed = codes.iter().filter(|&&c| c != 0).count();
        // The daemon removes an agent once its cgroup has emptied (it looks every 200 ms).
        let t0 = now_ns();
        let mut left = usize::MAX;
        for _ in 0..200 {
            left = status().map(|s| s.agents.len()).unwrap_or(usize::MAX);
            if left == 0 {
                break;
            }
            nap(50);
        }
        let reaped_ns = now_ns() - t0;
        let code = stop(&mut self.daemon, root, gate)?;
        anyhow::ensure!(
            failed == 0,
            "{failed} of {} gate run clients exited with an error; daemon log:\n{}",
            codes.len(),
            tail(log)
        );
        Ok(json!({
            "clients_exit_codes_nonzero": failed,
            "agents_left_after_exit": left,
            "all_agents_removed_ns": reaped_ns,
            "daemon_exit": code,
        }))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.hold = None;
        for c in &mut self.clients {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// The daemon's config: its socket and audit stream in `dir`.
pub fn write_config(dir: &Path) -> Result<PathBuf> {
    let cfg = dir.join("gate.toml");
    fs::write(
        &cfg,
        format!(
            "version = 1\n[daemon]\nsocket = \"{SOCKET}\"\n\n[audit]\nlog = \"{d}/audit.jsonl\"\n\
             key = \"{d}/audit.key\"\n",
            d = dir.display()
        ),
    )?;
    Ok(cfg)
}

/// Starts `gate daemon --config cfg` in the root (its stderr into `log`) and waits until it
/// answers on its socket with no agents: the daemon and the virtual ns that took.
pub fn start(root: &Root, gate: &Path, cfg: &Path, log: &Path) -> Result<(Child, u64)> {
    let _ = fs::remove_file(SOCKET);
    let t0 = now_ns();
    let mut cmd = Command::new(gate);
    cmd.args(["daemon", "--config"])
        .arg(cfg)
        .env("GATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log)?);
    root.enter(&mut cmd);
    let mut daemon = cmd.spawn().context("starting gate daemon")?;
    for _ in 0..2400 {
        if let Ok(s) = status() {
            if !s.agents.is_empty() {
                let _ = daemon.kill();
                let _ = daemon.wait();
                bail!("a fresh daemon has agents: {:?}", s.agents);
            }
            return Ok((daemon, now_ns() - t0));
        }
        if let Some(st) = daemon.try_wait()? {
            bail!(
                "gate daemon exited ({st}) before it was ready:\n{}",
                tail(log)
            );
        }
        nap(50);
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    bail!("gate daemon never became ready:\n{}", tail(log))
}

/// Stops the daemon (SIGTERM) and detaches what it left pinned (`gate unload`).
pub fn stop(daemon: &mut Child, root: &Root, gate: &Path) -> Result<Option<i32>> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let st = daemon.wait()?;
    let mut unload = Command::new(gate);
    unload.arg("unload").env("GATE_SOCKET", SOCKET);
    root.enter(&mut unload);
    let unload = unload.output()?;
    if !unload.status.success() {
        bail!(
            "gate unload failed: {}",
            String::from_utf8_lossy(&unload.stderr)
        );
    }
    Ok(st.code())
}

pub fn run(o: &Options<'_>) -> Result<Value> {
    let bin = o.dir.join("bin");
    let gate = bin.join("gate");
    copy_exe(o.gate, &gate)?;
    let mut policies = Vec::new();
    for p in o.policies {
        let dst = o.dir.join(p.file_name().context("policy file name")?);
        fs::copy(p, &dst).with_context(|| format!("copying {}", p.display()))?;
        policies.push(dst);
    }
    let workspaces: Vec<PathBuf> = (0..o.agents.max(1))
        .map(|i| o.dir.join(format!("ws/a{i:03}")))
        .collect();
    for w in &workspaces {
        copy_exe(o.stamp, &w.join("bin/gate-stamp"))?;
        fs::create_dir_all(w.join("src"))?;
    }
    let cfg = write_config(o.dir)?;
    let root = Root::build(Path::new(ROOT), &gate, &policies)?;
    let log = o.dir.join("daemon.log");
    let client_log = o.dir.join("clients.log");

    say("daemon: starting gate daemon (the kernel verifies gate's programs now)");
    let (daemon, ready_ns) = start(&root, &gate, &cfg, &log)?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut r = Running {
        daemon,
        clients: Vec::new(),
        hold: Some(wr),
    };
    let pid = r.daemon.id();
    say(&format!(
        "daemon: ready after {:.3} virtual s",
        ready_ns as f64 / 1e9
    ));
    let mut memory_at = vec![memory(pid, 0)];

    let mut launches = Vec::new();
    for (i, w) in workspaces.iter().enumerate().take(o.agents) {
        let policy = &policies[i % 2];
        let mut c = Command::new(&gate);
        c.arg("run")
            .arg("--policy")
            .arg(policy)
            .arg("--workspace")
            .arg(w)
            .args(["--name", &format!("bench-{i:03}"), "--"])
            .arg(w.join("bin/gate-stamp"))
            .env("GATE_SOCKET", SOCKET)
            .stdin(Stdio::from(rd.try_clone()?))
            .stdout(Stdio::piped())
            .stderr(append_to(&client_log)?);
        root.enter(&mut c);
        let t0 = now_ns();
        let mut child = c.spawn().context("starting gate run")?;
        let dt = stamp_of(&mut child, t0).with_context(|| {
            format!(
                "launch {i}: clients' log:\n{}\ndaemon log:\n{}",
                tail(&client_log),
                tail(&log)
            )
        });
        r.clients.push(child);
        let dt = dt?;
        launches.push(json!({ "i": i, "agents_before": i, "ns": dt, "policy": i % 2 }));
        if SNAPSHOTS.contains(&(i + 1)) {
            memory_at.push(memory(pid, i + 1));
            say(&format!(
                "daemon: {} agents, last launch {:.1} ms, daemon RSS {} KiB",
                i + 1,
                dt as f64 / 1e6,
                memory_at.last().unwrap()["rss_kib"]
            ));
        }
    }
    drop(rd);
    let listed = status()?.agents.len();
    anyhow::ensure!(
        listed == o.agents,
        "gate status lists {listed} agents, expected {}",
        o.agents
    );
    let end = r.finish(&root, &gate, &log)?;
    say(&format!(
        "daemon: stopped; agents removed {:.3} virtual s after their commands ended",
        end["all_agents_removed_ns"].as_f64().unwrap_or(0.0) / 1e9
    ));

    // Without the daemon: each run loads and verifies its own programs.
    let mut no_daemon = Vec::new();
    for k in 0..o.no_daemon_runs {
        let w = &workspaces[0];
        let mut c = Command::new(&gate);
        c.args([
            "run",
            "--no-daemon",
            "--user",
            "root",
            "--quiet",
            "--policy",
        ])
        .arg(&policies[0])
        .arg("--workspace")
        .arg(w)
        .arg("--")
        .arg(w.join("bin/gate-stamp"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(append_to(&client_log)?);
        root.enter(&mut c);
        say(&format!("daemon: gate run --no-daemon {}", k + 1));
        let t0 = now_ns();
        let mut child = c.spawn().context("starting gate run --no-daemon")?;
        let dt = stamp_of(&mut child, t0);
        drop(child.stdin.take());
        let st = child.wait()?;
        let dt = dt.with_context(|| format!("gate run --no-daemon:\n{}", tail(&client_log)))?;
        anyhow::ensure!(
            st.success(),
            "gate run --no-daemon exited with {st}:\n{}",
            tail(&client_log)
        );
        no_daemon.push(json!({ "ns": dt }));
    }
    let audit_lines = fs::read_to_string(o.dir.join("audit.jsonl"))
        .map(|s| s.lines().count())
        .unwrap_or(0);
    Ok(json!({
        "config": "max_agents 256, max_file_rules 262144, max_net_rules 16384, ring buffer 4 MiB",
        "ready_ns": ready_ns,
        "memory": memory_at,
        "launches": launches,
        "no_daemon": no_daemon,
        "end": end,
        "audit_records": audit_lines,
        "policies": policies.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
    }))
}
