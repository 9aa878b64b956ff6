//! Runs one command in a qemu guest (TCG) booted from a cached Debian kernel and initramfs. The
//! host root is shared read-only over virtio-9p, so host-built binaries run as they are. The
//! guest's serial console is streamed to our stdout, prefixed with the kernel series; the result
//! is the command's exit code, taken only from the exit line carrying this run's nonce. A guest
//! that times out, dies, or never reports is an error — never a pass.
use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, initramfs, kernels::Kernel, paths};

const QEMU: &str = "qemu-system-x86_64";
const KERNEL_CMDLINE: &str = "console=ttyS0 lsm=lockdown,capability,landlock,bpf panic=-1 quiet";
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Host environment variables handed to the guest command (plus every `GATE_*`).
const PASSTHROUGH_ENV: &[&str] = &["RUST_LOG", "RUST_BACKTRACE"];
/// How long qemu may take to power off after the command reported its exit code.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);
const EXIT_MARKER: &str = "GATE-GUEST-EXIT=";
const INIT_ERROR_MARKER: &str = "GATE-GUEST-INIT-ERROR";
/// How many of the guest's last console lines a timeout error repeats, so the summary at the end
/// of a long log still shows where the guest was stuck.
const TAIL_LINES: usize = 25;
/// Directories of the shared host root that the guest replaces with its own empty, writable
/// tmpfs (init.sh). A host directory below one of them is invisible in the guest unless shared.
pub const SCRATCH_DIRS: &[&str] = &["/tmp", "/var/tmp", "/home", "/root", "/run"];

/// A bootable guest: kernel, the image qemu boots (vmlinux or vmlinuz), and the cached base
/// initramfs.
pub struct Guest<'a> {
    pub kernel: &'a Kernel,
    pub boot_image: &'a Path,
    pub initramfs: &'a Path,
}

pub struct RunOptions {
    /// `-icount shift=0,sleep=off`: guest time advances 1 ns per instruction (for benchmarks).
    pub icount: bool,
    pub timeout: Duration,
    /// Extra environment for the command, on top of the passed-through host variables.
    pub env: Vec<(String, String)>,
    /// Working directory in the guest (a host path). It is shared into the guest like `shares`.
    pub cwd: Option<PathBuf>,
    /// Host directories the command needs (the repository, cargo's target directory). The
    /// guest covers its scratch directories (`SCRATCH_DIRS`) with tmpfs; each of these that lies
    /// under one is bind-mounted back, read-only, at the same path.
    pub shares: Vec<PathBuf>,
    /// Appended to the kernel command line (e.g. `loglevel=7` to see the whole boot).
    pub append: Option<String>,
    /// Boot the host's systemd as PID 1 (gate-guest.target, written by init.sh) and run the
    /// command as a oneshot unit of it, instead of in a chroot under /init.
    pub systemd: bool,
}

pub struct Outcome {
    pub exit_code: i32,
}

/// What the console reader saw that matters.
enum Event {
    Exit(i32),
    InitError(String),
}

pub fn run(guest: &Guest<'_>, options: &RunOptions, command: &[String]) -> Result<Outcome> {
    if command.is_empty() {
        bail!("no command given to run in the guest");
    }
    let label = guest.kernel.series.name();
    let nonce = nonce();
    let cwd = options
        .cwd
        .as_deref()
        .map(|dir| {
            std::fs::canonicalize(dir).with_context(|| {
                format!(
                    "the guest's working directory {} is not a directory on this host",
                    dir.display()
                )
            })
        })
        .transpose()?;
    let shares = shares_to_mount(options.shares.iter().chain(cwd.as_ref()))?;
    let workdir = TempDir::create(&format!("gate-guest-{nonce}"))?;
    let initrd = workdir.path.join("initrd.cpio");
    write_initrd(
        guest.initramfs,
        &initrd,
        &initramfs::RunFiles {
            script: &run_script(command, &env_for(options)?, cwd.as_deref()),
            nonce: &nonce,
            shares: &shares,
            cwd: cwd.as_deref(),
            systemd: options.systemd,
        },
    )?;

    let mut qemu = qemu_command(guest.boot_image, &initrd, options);
    say(
        label,
        &format!(
            "booting {} (TCG{}{}, timeout {}s): {}",
            guest.kernel.release,
            if options.icount { ", icount" } else { "" },
            if options.systemd {
                ", systemd as PID 1"
            } else {
                ""
            },
            options.timeout.as_secs(),
            command
                .iter()
                .map(|a| cmd::shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    let started = Instant::now();
    let mut child = qemu.spawn().with_context(|| {
        format!("could not start {QEMU}; run `cargo xtask setup` (installs qemu-system-x86)")
    })?;
    let (tx, rx) = mpsc::channel();
    let tail = Tail::default();
    let readers = [
        stream(
            child.stdout.take().expect("piped"),
            label.to_owned(),
            nonce.clone(),
            Some((tx.clone(), tail.clone())),
        ),
        stream(
            child.stderr.take().expect("piped"),
            format!("{label} qemu"),
            nonce,
            None,
        ),
    ];
    drop(tx);
    let waited = wait(&mut child, &rx, options.timeout);
    for reader in readers {
        let _ = reader.join();
    }
    let duration = started.elapsed();
    let (status, event) = waited?;
    let exit_code = interpret(label, status, event, options.timeout, &tail)?;
    say(
        label,
        &format!(
            "guest command exited with code {exit_code} after {:.1}s",
            duration.as_secs_f64()
        ),
    );
    Ok(Outcome { exit_code })
}

/// What the wait produced: qemu's status (None if we killed it on timeout) and the report.
type Waited = (Option<ExitStatus>, Option<Event>);

fn wait(child: &mut Child, events: &Receiver<Event>, timeout: Duration) -> Result<Waited> {
    let deadline = Instant::now() + timeout;
    // The report, and until when qemu may take to power off after it.
    let mut report: Option<(Event, Instant)> = None;
    loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            // The reader may still be delivering the last lines: wait for it to hang up.
            return Ok((
                Some(status),
                report.map(|(e, _)| e).or_else(|| drain(events)),
            ));
        }
        let now = Instant::now();
        if let Some((_, poweroff_deadline)) = &report
            && now >= *poweroff_deadline
        {
            eprintln!(
                "warning: the guest reported its exit code but did not power off; killing qemu"
            );
            kill(child);
            return Ok((None, report.map(|(e, _)| e)));
        }
        if now >= deadline {
            kill(child);
            return Ok((None, report.map(|(e, _)| e).or_else(|| drain(events))));
        }
        if report.is_some() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(event) => report = Some((event, now + POWEROFF_GRACE)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn drain(events: &Receiver<Event>) -> Option<Event> {
    let mut last = None;
    while let Ok(e) = events.recv_timeout(Duration::from_secs(2)) {
        last = Some(e);
    }
    last
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The guest console's last lines.
#[derive(Clone, Default)]
struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: &str) {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_owned());
    }

    fn render(&self, label: &str) -> String {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().map(|l| format!("\n  [{label}] {l}")).collect()
    }
}

fn interpret(
    label: &str,
    status: Option<ExitStatus>,
    event: Option<Event>,
    timeout: Duration,
    tail: &Tail,
) -> Result<i32> {
    match (event, status) {
        (Some(Event::Exit(code)), _) => Ok(code),
        (Some(Event::InitError(msg)), _) => {
            bail!("the {label} guest's /init failed: {msg}; see the guest output above")
        }
        (None, None) => bail!(
            "the {label} guest did not finish within {}s and was killed. TCG is slow: raise \
             --timeout if the work just needs longer. Its last output:{}",
            timeout.as_secs(),
            tail.render(label)
        ),
        (None, Some(status)) => bail!(
            "the {label} guest stopped without reporting an exit code (qemu {status}); the kernel \
             may have panicked or qemu refused its arguments: see the output above"
        ),
    }
}

/// Copies each line of `source` to our stdout as `[label] line`; reports exit/init-error lines
/// carrying `nonce` on `events`.
fn stream(
    source: impl Read + Send + 'static,
    label: String,
    nonce: String,
    events: Option<(Sender<Event>, Tail)>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = printable(&String::from_utf8_lossy(&raw));
            say(&label, &line);
            if let Some((events, tail)) = &events {
                tail.push(&line);
                if let Some(event) = parse_line(&line, &nonce) {
                    let _ = events.send(event);
                }
            }
        }
    })
}

/// `line` without terminal control: escape sequences (SeaBIOS clears the screen) and other
/// control characters except tabs.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' if chars.peek() == Some(&'[') => {
                chars.next();
                // CSI: parameters and intermediates, then one final byte in @..~.
                for p in chars.by_ref() {
                    if ('@'..='~').contains(&p) {
                        break;
                    }
                }
            }
            '\u{1b}' => {
                chars.next();
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn parse_line(line: &str, nonce: &str) -> Option<Event> {
    let nonce_tag = format!("nonce={nonce}");
    if let Some(rest) = line.strip_prefix(EXIT_MARKER) {
        let (code, tag) = rest.split_once(' ')?;
        return (tag.trim() == nonce_tag)
            .then(|| code.parse().ok())
            .flatten()
            .map(Event::Exit);
    }
    let rest = line.strip_prefix(INIT_ERROR_MARKER)?.trim_start();
    let msg = rest
        .strip_prefix(&nonce_tag)?
        .trim_start_matches(':')
        .trim();
    Some(Event::InitError(msg.to_owned()))
}

fn say(label: &str, line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "[{label}] {line}");
    let _ = out.flush();
}

fn qemu_command(boot_image: &Path, initrd: &Path, options: &RunOptions) -> Command {
    let cmdline = match &options.append {
        Some(extra) => format!("{KERNEL_CMDLINE} {extra}"),
        None => KERNEL_CMDLINE.to_owned(),
    };
    let mut qemu = Command::new(QEMU);
    qemu.args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(boot_image)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(cmdline)
        // multidevs=remap: the host root spans several filesystems (/, /proc, /sys…); without
        // it their inode numbers can collide in the guest.
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ]);
    if options.icount {
        qemu.args(["-icount", "shift=0,sleep=off"]);
    }
    qemu.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    qemu
}

/// What every guest command of this project needs from the host beyond its root: the
/// repository and cargo's target directory (which `CARGO_TARGET_DIR` may put elsewhere).
pub fn project_shares() -> Result<Vec<PathBuf>> {
    Ok(vec![paths::repo_root(), paths::target_dir()?])
}

/// The directories among `dirs` that lie under a scratch directory and so must be mounted back
/// in the guest: canonical (the guest sees the host's real layout), without duplicates and
/// without directories inside another one of the list (its mount brings them along). A scratch
/// directory itself (`/tmp`) is never shared: the guest keeps its own writable one.
fn shares_to_mount<'p>(dirs: impl Iterator<Item = &'p PathBuf>) -> Result<Vec<PathBuf>> {
    let mut canonical = Vec::new();
    for dir in dirs {
        let real = std::fs::canonicalize(dir).with_context(|| {
            format!(
                "{} is to be shared into the guest but is not a directory on this host",
                dir.display()
            )
        })?;
        if !real.is_dir() {
            bail!(
                "{} is to be shared into the guest but is not a directory",
                real.display()
            );
        }
        let text = real.to_string_lossy();
        if text.contains('\n') || real.to_str().is_none() {
            bail!(
                "{} cannot be shared into the guest: its path is not UTF-8 or contains a newline",
                real.display()
            );
        }
        canonical.push(real);
    }
    canonical.sort();
    canonical.dedup();
    let mut shares: Vec<PathBuf> = Vec::new();
    for dir in canonical {
        // A scratch directory itself stays the guest's own (writable) one.
        let below_scratch = under_scratch(&dir).is_some_and(|scratch| dir != Path::new(scratch));
        if !below_scratch || shares.iter().any(|s| dir.starts_with(s)) {
            continue;
        }
        shares.push(dir);
    }
    Ok(shares)
}

/// The scratch directory that covers `dir` in the guest, if any.
pub fn under_scratch(dir: &Path) -> Option<&'static str> {
    SCRATCH_DIRS
        .iter()
        .copied()
        .find(|scratch| dir.starts_with(scratch))
}

fn write_initrd(base: &Path, initrd: &Path, files: &initramfs::RunFiles<'_>) -> Result<()> {
    let mut bytes = std::fs::read(base).with_context(|| {
        format!(
            "reading the cached initramfs {}; run `cargo xtask setup`",
            base.display()
        )
    })?;
    bytes.extend_from_slice(&initramfs::run_archive(files));
    std::fs::write(initrd, bytes).with_context(|| format!("writing {}", initrd.display()))
}

/// The guest command's environment: passed-through host variables, then `options.env`.
fn env_for(options: &RunOptions) -> Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| PASSTHROUGH_ENV.contains(&k.as_str()) || k.starts_with("GATE_"))
        .collect();
    env.extend(options.env.iter().cloned());
    for (key, _) in &env {
        let valid = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            bail!("`{key}` is not a valid environment variable name for the guest");
        }
    }
    Ok(env)
}

/// The script /init runs inside the chroot: environment, working directory, then the command.
fn run_script(command: &[String], env: &[(String, String)], cwd: Option<&Path>) -> String {
    let mut script = String::from("# generated by xtask/src/guest.rs\n");
    script.push_str(&format!(
        "export HOME=/root PATH={GUEST_PATH} TERM=dumb LANG=C.UTF-8\n"
    ));
    for (key, value) in env {
        script.push_str(&format!("export {key}={}\n", cmd::shell_quote(value)));
    }
    // /init has already checked that the directory is visible; failing here is still fatal.
    if let Some(cwd) = cwd {
        let dir = cmd::shell_quote(&cwd.to_string_lossy());
        script.push_str(&format!(
            "cd {dir} || {{ echo \"gate-guest: cannot cd to {dir}\" >&2; exit 125; }}\n"
        ));
    }
    script.push_str("exec </dev/null\n");
    let words: Vec<String> = command.iter().map(|a| cmd::shell_quote(a)).collect();
    script.push_str(&format!("exec {}\n", words.join(" ")));
    script
}

fn nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}{:08x}", std::process::id(), nanos)
}

/// A directory removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn create(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusts_only_exit_lines_with_this_runs_nonce() {
        assert!(matches!(
            parse_line("GATE-GUEST-EXIT=3 nonce=ab12", "ab12"),
            Some(Event::Exit(3))
        ));
        assert!(parse_line("GATE-GUEST-EXIT=0 nonce=other", "ab12").is_none());
        assert!(parse_line("GATE-GUEST-EXIT=0", "ab12").is_none());
        assert!(parse_line("echo GATE-GUEST-EXIT=0 nonce=ab12", "ab12").is_none());
    }

    #[test]
    fn strips_terminal_control() {
        assert_eq!(
            printable("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS (version 1)\r\n"),
            "SeaBIOS (version 1)"
        );
        assert_eq!(printable("a\tb"), "a\tb");
    }

    #[test]
    fn reports_init_errors() {
        let event = parse_line("GATE-GUEST-INIT-ERROR nonce=ab12: insmod 9p failed", "ab12");
        assert!(matches!(event, Some(Event::InitError(m)) if m == "insmod 9p failed"));
    }

    #[test]
    fn run_script_sets_env_cwd_and_execs_the_quoted_command() {
        let script = run_script(
            &["/bin/sh".into(), "-c".into(), "exit 3".into()],
            &[("RUST_LOG".into(), "debug".into())],
            Some(Path::new("/work/main")),
        );
        assert!(script.contains("export RUST_LOG=debug\n"));
        assert!(script.contains("cd /work/main || { echo"));
        assert!(script.contains("exit 125; }"));
        assert!(script.ends_with("exec /bin/sh -c 'exit 3'\n"));
    }

    #[test]
    fn shares_only_what_a_scratch_tmpfs_would_hide() {
        let dir = tempfile_dir();
        let inner = dir.join("target");
        std::fs::create_dir_all(&inner).unwrap();
        let outside = PathBuf::from("/usr");
        let scratch = PathBuf::from("/tmp");
        let shares =
            shares_to_mount([dir.clone(), inner, outside, scratch, dir.clone()].iter()).unwrap();
        assert_eq!(shares, vec![std::fs::canonicalize(&dir).unwrap()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_to_share_what_does_not_exist() {
        let error = shares_to_mount([PathBuf::from("/tmp/gate-no-such-dir-x")].iter())
            .unwrap_err()
            .to_string();
        assert!(error.contains("/tmp/gate-no-such-dir-x"), "{error}");
    }

    #[test]
    fn knows_which_directories_the_guest_covers() {
        assert_eq!(under_scratch(Path::new("/root/nc")), Some("/root"));
        assert_eq!(
            under_scratch(Path::new("/home/dev/src/gate")),
            Some("/home")
        );
        assert_eq!(under_scratch(Path::new("/tmp")), Some("/tmp"));
        assert_eq!(under_scratch(Path::new("/work/main")), None);
        assert_eq!(under_scratch(Path::new("/rooted")), None);
    }

    /// A fresh directory under /tmp (a scratch directory of the guest).
    fn tempfile_dir() -> PathBuf {
        let dir = PathBuf::from(format!("/tmp/gate-xtask-test-{}", nonce()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
