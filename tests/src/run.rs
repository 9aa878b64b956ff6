//! Running commands with time limits and captured output, in the foreground or background.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::outcome::{Outcome, Status};

/// A command to run: argv, working directory, environment overrides, time limit.
#[derive(Clone, Debug)]
pub struct Cmd {
    pub argv: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

impl Cmd {
    pub fn new<S: AsRef<str>>(argv: &[S]) -> Self {
        Self {
            argv: argv.iter().map(|s| s.as_ref().to_string()).collect(),
            cwd: None,
            env: Vec::new(),
            timeout: Duration::from_secs(120),
        }
    }

    pub fn sh(script: &str) -> Self {
        Self::new(&["/bin/sh", "-c", script])
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The command as a shell would read it.
    pub fn display(&self) -> String {
        let words: Vec<String> = self.argv.iter().map(|a| shell_quote(a)).collect();
        match &self.cwd {
            Some(d) => format!(
                "(cd {} && {})",
                shell_quote(&d.to_string_lossy()),
                words.join(" ")
            ),
            None => words.join(" "),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.argv[0]);
        c.args(&self.argv[1..]);
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Own process group, so a time-out can kill the whole tree the runner started.
        c.process_group(0);
        c
    }

    /// Starts the command in the background.
    pub fn spawn(&self) -> Result<Background, String> {
        let mut child = self
            .command()
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.display()))?;
        let out = Capture::start(child.stdout.take());
        let err = Capture::start(child.stderr.take());
        Ok(Background {
            child,
            out,
            err,
            status: None,
            timeout: self.timeout,
            started: Instant::now(),
        })
    }

    /// Runs the command to completion (or its time limit).
    pub fn run(&self) -> Outcome {
        match self.spawn() {
            Ok(mut bg) => bg.wait(self.timeout),
            Err(e) => Outcome {
                status: Status::Exited(127),
                stdout: String::new(),
                stderr: e,
            },
        }
    }
}

/// Quotes a word for display in a shell command line.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Output of a pipe, collected by a thread.
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    done: Arc<Mutex<bool>>,
}

impl Capture {
    fn start<R: Read + Send + 'static>(pipe: Option<R>) -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(Mutex::new(false));
        if let Some(mut pipe) = pipe {
            let (b, d) = (buf.clone(), done.clone());
            thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => b.lock().unwrap().extend_from_slice(&chunk[..n]),
                    }
                }
                *d.lock().unwrap() = true;
            });
        } else {
            *done.lock().unwrap() = true;
        }
        Self { buf, done }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }

    fn is_done(&self) -> bool {
        *self.done.lock().unwrap()
    }
}

/// A running command. Dropping it kills its process group.
pub struct Background {
    child: Child,
    out: Capture,
    err: Capture,
    status: Option<Status>,
    timeout: Duration,
    started: Instant,
}

fn to_status(s: ExitStatus) -> Status {
    match (s.code(), s.signal()) {
        (Some(c), _) => Status::Exited(c),
        (None, Some(sig)) => Status::Signaled(sig),
        _ => Status::Exited(-1),
    }
}

impl Background {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stdout(&self) -> String {
        self.out.text()
    }

    pub fn stderr(&self) -> String {
        self.err.text()
    }

    /// Has it exited? (Reaps it if so.)
    pub fn poll(&mut self) -> Option<Status> {
        if self.status.is_none()
            && let Ok(Some(s)) = self.child.try_wait()
        {
            self.status = Some(to_status(s));
        }
        self.status
    }

    /// Waits until stdout contains `needle`; false if the process exits or time runs out first.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().contains(needle) {
                return true;
            }
            if self.poll().is_some() {
                thread::sleep(Duration::from_millis(50));
                return self.stdout().contains(needle);
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until stdout or stderr contains `needle`; false if the process exits or time
    /// runs out first.
    pub fn wait_for_stdout_or_stderr(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = || self.stdout().contains(needle) || self.stderr().contains(needle);
            if seen() {
                return true;
            }
            if self.poll().is_some() {
                thread::sleep(Duration::from_millis(50));
                return self.stdout().contains(needle) || self.stderr().contains(needle);
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `path` exists; false if the process exits first or time runs out.
    pub fn wait_for_file(&mut self, path: &std::path::Path, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if path.exists() {
                return true;
            }
            if self.poll().is_some() || Instant::now() >= deadline {
                return path.exists();
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal to the process itself (not its group).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on a pid this value owns (not yet reaped while status is None).
        if self.status.is_none() {
            unsafe { libc::kill(self.pid(), sig) };
        }
    }

    /// Kills the process group the command runs in.
    pub fn kill_group(&self) {
        // SAFETY: plain syscall; the group was created for this command.
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
    }

    /// Waits for the exit (killing the group after `timeout`) and returns the outcome.
    /// Output still held open by surviving descendants is collected for at most two seconds.
    pub fn wait(&mut self, timeout: Duration) -> Outcome {
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        while self.poll().is_none() {
            if Instant::now() >= deadline {
                self.kill_group();
                let _ = self.child.wait().map(|s| self.status = Some(to_status(s)));
                timed_out = true;
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let drain = Instant::now() + Duration::from_secs(2);
        while !(self.out.is_done() && self.err.is_done()) && Instant::now() < drain {
            thread::sleep(Duration::from_millis(10));
        }
        Outcome {
            status: if timed_out {
                Status::TimedOut
            } else {
                self.status.unwrap_or(Status::Exited(-1))
            },
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    /// Waits with the time limit the command was given.
    pub fn finish(&mut self) -> Outcome {
        let left = self.timeout.saturating_sub(self.started.elapsed());
        self.wait(left)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.poll().is_none() {
            self.kill_group();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_captures() {
        let o = Cmd::sh("echo out; echo err >&2; exit 3").run();
        assert_eq!(o.status, Status::Exited(3));
        assert_eq!(o.stdout, "out\n");
        assert_eq!(o.stderr, "err\n");
    }

    #[test]
    fn signals_and_timeouts() {
        assert_eq!(Cmd::sh("kill -TERM $$").run().status, Status::Signaled(15));
        let t = Instant::now();
        let o = Cmd::sh("sleep 30")
            .timeout(Duration::from_millis(300))
            .run();
        assert_eq!(o.status, Status::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn surviving_descendant_does_not_block() {
        // The grandchild keeps stdout open after the shell exits.
        let t = Instant::now();
        let mut bg = Cmd::sh("echo hi; sleep 20 & exit 0").spawn().unwrap();
        let o = bg.wait(Duration::from_secs(10));
        assert_eq!(o.status, Status::Exited(0));
        assert_eq!(o.stdout, "hi\n");
        assert!(t.elapsed() < Duration::from_secs(6));
        bg.kill_group();
    }

    #[test]
    fn background_readiness() {
        let mut bg = Cmd::sh("sleep 0.2; echo ready; sleep 20").spawn().unwrap();
        assert!(bg.wait_for_stdout("ready", Duration::from_secs(5)));
        assert!(bg.poll().is_none());
        drop(bg);
        let mut quick = Cmd::sh("exit 0").spawn().unwrap();
        assert!(!quick.wait_for_stdout("ready", Duration::from_secs(5)));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b-c.d"), "/a/b-c.d");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(
            Cmd::new(&["x", "a b"]).cwd("/t").display(),
            "(cd /t && x 'a b')"
        );
    }
}
