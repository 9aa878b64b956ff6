//! gate's control protocol, spoken on the daemon's Unix socket (`/run/gate/gate.sock`).
//!
//! One JSON object per line each way. A client opens with [`Request::Hello`] naming the
//! protocol version it speaks; the daemon answers [`Response::Hello`] or refuses with
//! [`Response::Error`]. Then each request gets exactly one response. A request that is not
//! understood gets an error and changes nothing. New requests and fields are added, never
//! renumbered or repurposed: unknown fields are refused so that a mismatch is loud.
use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// The version of this protocol.
pub const VERSION: u32 = 1;

/// Where the daemon listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/gate/gate.sock";

/// Longest line either side accepts (a request or response is far smaller).
pub const MAX_LINE: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Hello {
        version: u32,
    },
    /// Agents, their policies, counters, the heartbeat.
    Status {},
    /// Confine the calling process: the daemon creates an agent cgroup with the policy and
    /// moves the caller (identified by the socket's peer credentials) into it; the caller
    /// then execs the command itself, as itself.
    Run(RunRequest),
    /// Recompile and atomically replace the policy of one agent, or of every agent.
    Reload {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
    },
    /// Kill an agent's processes and remove it.
    Stop {
        agent: String,
    },
    /// Prometheus text exposition of the daemon's metrics.
    Metrics {},
    /// The pending requests for approval (raised by `ask` rules).
    Approvals {},
    /// Approves a pending request: the kernel lets the agent's retries through for `ttl_s`
    /// seconds, for that object or (`scope_rule`) everything the request's rule matches.
    Approve {
        id: String,
        ttl_s: u64,
        #[serde(default)]
        scope_rule: bool,
        /// Signed approval tokens (one JSON line each), for rules that require approvers.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tokens: Vec<String>,
    },
    /// Takes an agent out of trust lockdown (its policy goes back in).
    TrustRestore {
        agent: String,
    },
    /// Rejects a pending request: the agent's retries stay denied for `ttl_s` seconds without
    /// raising a new request.
    Reject {
        id: String,
        ttl_s: u64,
        #[serde(default)]
        scope_rule: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Absolute path of the policy file.
    pub policy: PathBuf,
    /// Absolute path of the workspace (`${workspace}`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<PathBuf>,
    /// "enforce" or "audit", overriding the policy's mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The command, for the audit stream and `gate status`.
    pub command: Vec<String>,
    /// A name for the agent (unique among running agents); the daemon picks one if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Hello {
        version: u32,
        daemon: String,
    },
    Error {
        message: String,
    },
    Status(Status),
    /// The caller is in the agent's cgroup now: exec the command.
    Started {
        agent: String,
        cgroup: String,
        policy_digest: String,
        /// Policy entries that have no effect on this host (missing paths).
        warnings: usize,
    },
    Reloaded {
        agents: Vec<ReloadResult>,
    },
    Stopped {
        agent: String,
        killed: usize,
    },
    Metrics {
        text: String,
    },
    Approvals {
        requests: Vec<ApprovalRequest>,
    },
    /// The answer is in the kernel until `expires` (unix seconds); `closed` lists the requests
    /// it answered (more than one for a rule-wide answer).
    Answered {
        id: String,
        allow: bool,
        expires: u64,
        closed: Vec<String>,
    },
    /// Signatures were accepted but fewer than the rule requires: the request stays pending.
    Signed {
        id: String,
        have: u32,
        need: u32,
    },
    /// The agent is out of trust lockdown.
    Restored {
        agent: String,
    },
    /// Sent on a run's connection (to `gate run`, which prints it on the agent's terminal).
    Notice {
        message: String,
    },
}

/// A request for approval, raised by an `ask` rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    pub id: String,
    pub agent: String,
    /// The agent's run (`boot id/cgroup id`).
    pub run: String,
    pub policy_digest: String,
    pub op: String,
    pub rule: String,
    /// A path, `addr:port`, or what was attempted.
    pub object: String,
    /// False when only the whole rule can be approved (no single file or address).
    pub has_object: bool,
    pub pid: u32,
    pub comm: String,
    /// The process's command line, then its parents' (nearest first).
    pub process: Vec<String>,
    /// Unix seconds of the first and latest attempt, and how many there were.
    pub first: u64,
    pub last: u64,
    pub attempts: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub agents: Vec<AgentStatus>,
    /// The kernel's counters by name.
    pub counters: Vec<(String, u64)>,
    /// Events the kernel could not queue (each recorded as a signed gap).
    pub events_lost: u64,
    pub heartbeat_ms: u64,
    pub lockdown_after_ms: u64,
    pub capacity: Capacity,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    pub agents: u32,
    pub inodes: u32,
    pub net4: u32,
    pub net6: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentStatus {
    pub name: String,
    pub agent_id: u32,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub policy: String,
    pub policy_digest: String,
    pub mode: String,
    pub slot: u32,
    pub uid: u32,
    /// "run" (started by `gate run`) or "config" (a cgroup named in the daemon's config).
    pub origin: String,
    pub command: Vec<String>,
    pub decisions: u64,
    pub denied: u64,
    pub inode_entries: usize,
    pub net_entries: usize,
    /// Why the agent is in trust lockdown (its denial budget was used up), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_lockdown: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadResult {
    pub agent: String,
    pub old_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_digest: Option<String>,
    /// Why the old policy stays (file:line:column for a policy error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the gate daemon at {path}: {source}; is it running \
         (`systemctl status gate`)? Without a daemon, `gate run` needs root"
    )]
    Connect { path: PathBuf, source: io::Error },
    #[error(
        "{path}: permission denied: only root and members of the daemon's group (usually \
         `gate`) may use the gate daemon; ask an administrator to add you (usermod -aG gate \
         USER, then log in again)"
    )]
    Denied { path: PathBuf },
    #[error(
        "{path}: refused by gate: this process is confined by gate, and confined processes may \
         not use the gate daemon; run gate commands from outside the agent"
    )]
    Confined { path: PathBuf },
    #[error("talking to the gate daemon: {0}")]
    Io(#[from] io::Error),
    #[error("the gate daemon sent something this client does not understand: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("the gate daemon closed the connection")]
    Closed,
    #[error("{0}")]
    Refused(String),
}

/// Reads one line (without its newline), at most [`MAX_LINE`] bytes; None at end of stream.
pub fn read_line<R: BufRead>(r: &mut R) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = io::Read::take(r, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        if buf.len() > MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
    } else {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Writes one value as a line.
pub fn write_line<W: Write, T: Serialize>(w: &mut W, v: &T) -> io::Result<()> {
    let mut s = serde_json::to_vec(v).map_err(io::Error::other)?;
    s.push(b'\n');
    w.write_all(&s)?;
    w.flush()
}

/// A connection to the daemon, past the hello.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub daemon: String,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| {
            // EPERM: gate's own unix-socket hook (a confined caller); EACCES: the socket's
            // file permissions.
            const EPERM: i32 = 1;
            if source.raw_os_error() == Some(EPERM) {
                ClientError::Confined {
                    path: path.to_path_buf(),
                }
            } else if source.kind() == io::ErrorKind::PermissionDenied {
                ClientError::Denied {
                    path: path.to_path_buf(),
                }
            } else {
                ClientError::Connect {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let writer = stream.try_clone()?;
        let mut c = Client {
            reader: BufReader::new(stream),
            writer,
            daemon: String::new(),
        };
        match c.call(&Request::Hello { version: VERSION })? {
            Response::Hello { daemon, .. } => {
                c.daemon = daemon;
                Ok(c)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a request and reads its response; a daemon error becomes `Refused`.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        write_line(&mut self.writer, req)?;
        let line = read_line(&mut self.reader)?.ok_or(ClientError::Closed)?;
        match serde_json::from_str(&line)? {
            Response::Error { message } => Err(ClientError::Refused(message)),
            r => Ok(r),
        }
    }

    /// The socket, e.g. to keep it open across an exec (it is close-on-exec).
    pub fn stream(&self) -> &UnixStream {
        &self.writer
    }
}

/// An error for a response of the wrong kind.
pub fn unexpected(r: &Response) -> ClientError {
    ClientError::Refused(format!("unexpected response from the daemon: {r:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_fields_are_refused() {
        let r = Request::Run(RunRequest {
            policy: "/etc/gate/policies/coding-agent.toml".into(),
            workspace: Some("/home/dev/src".into()),
            mode: None,
            command: vec!["claude".into()],
            name: None,
        });
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.starts_with(r#"{"request":"run","#), "{s}");
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"request":"status","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"request":"format_disk"}"#).is_err());
        let e = serde_json::from_str::<Request>(r#"{"request":"stop"}"#).unwrap_err();
        assert!(e.to_string().contains("agent"), "{e}");
    }

    #[test]
    fn lines_are_bounded() {
        let mut ok = io::Cursor::new(b"{\"a\":1}\nrest".to_vec());
        assert_eq!(read_line(&mut ok).unwrap().unwrap(), "{\"a\":1}");
        assert_eq!(read_line(&mut ok).unwrap().unwrap(), "rest");
        assert_eq!(read_line(&mut ok).unwrap(), None);
        let mut long = io::Cursor::new(vec![b'x'; MAX_LINE + 10]);
        assert!(read_line(&mut long).is_err());
    }
}
