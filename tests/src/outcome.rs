//! What a command did, and whether that is what a step expected.

use std::fmt;
use std::str::FromStr;

use crate::probe::strerror_text;

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Exited(i32),
    Signaled(i32),
    /// Killed by the runner after its time limit.
    TimedOut,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Exited(c) => write!(f, "exit:{c}"),
            Status::Signaled(s) => write!(f, "signal {s}"),
            Status::TimedOut => write!(f, "timeout"),
        }
    }
}

impl FromStr for Status {
    type Err = String;

    /// Parses what `Display` writes.
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "timeout" {
            return Ok(Status::TimedOut);
        }
        if let Some(n) = s.strip_prefix("exit:") {
            return n
                .parse()
                .map(Status::Exited)
                .map_err(|_| format!("bad status {s:?}"));
        }
        if let Some(n) = s.strip_prefix("signal ") {
            return n
                .parse()
                .map(Status::Signaled)
                .map_err(|_| format!("bad status {s:?}"));
        }
        Err(format!("bad status {s:?}"))
    }
}

/// A finished command: status and captured output.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub status: Status,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        match self.status {
            Status::Exited(c) => Some(c),
            _ => None,
        }
    }

    /// The errno a probe reported (`errno=NAME` line on stdout), the last one if several.
    pub fn probe_errno(&self) -> Option<&str> {
        self.stdout
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("errno="))
    }

    /// Whether this outcome shows a failure with errno `name`: a probe line `errno=NAME`, or,
    /// for shell commands, the errno's message on stderr. The command must have failed.
    pub fn shows_errno(&self, name: &str) -> bool {
        if matches!(self.code(), Some(0) | None) {
            return false;
        }
        if let Some(e) = self.probe_errno() {
            return e == name;
        }
        strerror_text(name).is_some_and(|t| self.stderr.contains(t))
    }

    /// Short description for failure messages: `ok`, `errno=EPERM (exit:1)`, `exit:3`, ….
    pub fn summary(&self) -> String {
        match (self.status, self.probe_errno()) {
            (Status::Exited(0), None) => "ok".to_string(),
            (st, Some(e)) => format!("errno={e} ({st})"),
            (st, None) => {
                let hint = ["Operation not permitted", "Permission denied"]
                    .iter()
                    .find(|t| self.stderr.contains(*t))
                    .map(|t| format!(" [stderr: {t}]"))
                    .unwrap_or_default();
                format!("{st}{hint}")
            }
        }
    }
}

/// The status `gate run` exits with when gate itself fails. It never counts as a command's
/// failure with some errno, even when the command printed one before gate failed.
pub const GATE_FAILED: i32 = 125;

/// What a step expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Exit status 0 and no errno reported.
    Ok,
    /// Failure with this errno (`EPERM`, …).
    Errno(String),
    /// This exact exit status.
    Exit(i32),
}

impl Expect {
    pub fn matches(&self, o: &Outcome) -> bool {
        match self {
            Expect::Ok => o.status == Status::Exited(0) && o.probe_errno().is_none(),
            Expect::Errno(e) => o.code() != Some(GATE_FAILED) && o.shows_errno(e),
            Expect::Exit(n) => o.status == Status::Exited(*n),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Ok => write!(f, "ok"),
            Expect::Errno(e) => write!(f, "{e}"),
            Expect::Exit(n) => write!(f, "exit:{n}"),
        }
    }
}

impl FromStr for Expect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "ok" {
            return Ok(Expect::Ok);
        }
        if let Some(n) = s.strip_prefix("exit:") {
            return n
                .parse()
                .map(Expect::Exit)
                .map_err(|_| format!("bad exit status in {s:?}"));
        }
        let errno_like = s.len() > 1
            && s.starts_with('E')
            && s.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if errno_like {
            return Ok(Expect::Errno(s.to_string()));
        }
        Err(format!(
            "expect must be \"ok\", an errno name like \"EPERM\", or \"exit:N\"; got {s:?}"
        ))
    }
}

impl<'de> serde::Deserialize<'de> for Expect {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(status: Status, stdout: &str, stderr: &str) -> Outcome {
        Outcome {
            status,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn parse() {
        assert_eq!("ok".parse::<Expect>().unwrap(), Expect::Ok);
        assert_eq!(
            "EPERM".parse::<Expect>().unwrap(),
            Expect::Errno("EPERM".into())
        );
        assert_eq!("exit:7".parse::<Expect>().unwrap(), Expect::Exit(7));
        assert!("exit:x".parse::<Expect>().is_err());
        assert!("eperm".parse::<Expect>().is_err());
        assert!("E".parse::<Expect>().is_err());
        assert!("".parse::<Expect>().is_err());
    }

    #[test]
    fn probe_outcomes() {
        let ok = o(Status::Exited(0), "ok\n", "");
        let eperm = o(Status::Exited(1), "errno=EPERM\n", "");
        let eacces = o(Status::Exited(1), "errno=EACCES\n", "");
        assert!(Expect::Ok.matches(&ok));
        assert!(!Expect::Ok.matches(&eperm));
        assert!(Expect::Errno("EPERM".into()).matches(&eperm));
        assert!(!Expect::Errno("EPERM".into()).matches(&eacces));
        assert!(!Expect::Errno("EPERM".into()).matches(&ok));
        assert_eq!(eperm.summary(), "errno=EPERM (exit:1)");
        assert_eq!(ok.summary(), "ok");
    }

    #[test]
    fn shell_outcomes() {
        let dash = o(
            Status::Exited(2),
            "",
            "sh: 1: cannot create /root/.bashrc: Operation not permitted\n",
        );
        assert!(Expect::Errno("EPERM".into()).matches(&dash));
        assert!(!Expect::Errno("EACCES".into()).matches(&dash));
        assert!(dash.summary().contains("Operation not permitted"));
        // A message on stderr with a zero exit is not a failure.
        let zero = o(Status::Exited(0), "", "Operation not permitted");
        assert!(!Expect::Errno("EPERM".into()).matches(&zero));
        // A probe line wins over stderr text.
        let mixed = o(
            Status::Exited(1),
            "errno=ENOENT\n",
            "Operation not permitted",
        );
        assert!(!Expect::Errno("EPERM".into()).matches(&mixed));
        // An errno line with exit 0 (script went on) is not ok.
        let went_on = o(Status::Exited(0), "errno=EPERM\n", "");
        assert!(!Expect::Ok.matches(&went_on));
    }

    #[test]
    fn status_round_trips() {
        for s in [
            Status::Exited(0),
            Status::Exited(-1),
            Status::Signaled(9),
            Status::TimedOut,
        ] {
            assert_eq!(s.to_string().parse::<Status>().unwrap(), s);
        }
        assert!("exit:x".parse::<Status>().is_err());
    }

    #[test]
    fn gate_failure_is_not_an_errno() {
        let o = o(
            Status::Exited(125),
            "errno=EPERM\n",
            "gate: removing the cgroup: busy\n",
        );
        assert!(!Expect::Errno("EPERM".into()).matches(&o));
        assert!(Expect::Exit(125).matches(&o));
    }

    #[test]
    fn exit_and_signals() {
        assert!(Expect::Exit(7).matches(&o(Status::Exited(7), "", "")));
        assert!(!Expect::Exit(7).matches(&o(Status::Signaled(7), "", "")));
        assert!(!Expect::Ok.matches(&o(Status::TimedOut, "", "")));
        assert!(!Expect::Errno("EPERM".into()).matches(&o(Status::TimedOut, "errno=EPERM", "")));
    }
}
