//! `/etc/gate/gate.toml`: the daemon's configuration, parsed strictly (unknown keys are
//! errors) with `FILE:LINE:COLUMN` locations, like policies.
//!
//! ```toml
//! version = 1
//!
//! [daemon]
//! socket = "/run/gate/gate.sock"   # the control socket
//! group = "gate"                   # members may use it (root always may)
//! heartbeat = "1s"                 # how often the daemon proves it is alive to the kernel
//! lockdown_after = "15s"           # a heartbeat this old puts every agent in lockdown
//! max_agents = 256
//! max_file_rules = 262144          # inode entries, all agents together
//! max_net_rules = 16384            # prefixes per address family, all agents together
//! watch_policies = true            # reload an agent when its policy file changes
//! metrics = "127.0.0.1:9464"       # opt-in: Prometheus text on a loopback TCP port
//!
//! [audit]
//! log = "/var/log/gate/audit.jsonl"
//! key = "/var/lib/gate/audit.key"
//!
//! [[allow]]                        # which policies unprivileged users may choose
//! group = "gate"                   # or user = "alice"
//! policies = ["/etc/gate/policies/*.toml"]
//!
//! [approvers.release-managers]     # who may sign approvals of rules naming this group
//! keys = ["/etc/gate/approvers/alice.pub", "BASE64 OF A 32-BYTE ED25519 KEY"]
//!
//! [approvals]
//! notify = ["/usr/local/bin/notify-chat", "--channel", "ops"]   # run per new request, JSON on stdin
//! notify_timeout = "10s"
//!
//! [[agent]]                        # cgroups confined from the daemon's start
//! name = "ci"
//! slice = "agents.slice"           # or cgroup = "some/path" under the cgroup mount
//! policy = "/etc/gate/policies/ci-runner.toml"
//! workspace = "/srv/ci"
//! user = "ci"                      # whose home `~/` means (default root)
//! ```
use std::{
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use crate::policy::{LineIndex, Location};

pub const DEFAULT_CONFIG: &str = "/etc/gate/gate.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },
}

/// Who an `[[allow]]` entry is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    User(String),
    Group(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allow {
    pub who: Who,
    /// Absolute path patterns (`*` matches within one path component).
    pub policies: Vec<String>,
}

/// A cgroup the daemon confines from its start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigAgent {
    pub name: String,
    /// Relative to the cgroup mount, e.g. `agents.slice`.
    pub cgroup: PathBuf,
    pub policy: PathBuf,
    pub workspace: Option<PathBuf>,
    pub user: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    pub file: PathBuf,
    pub socket: PathBuf,
    pub group: String,
    pub heartbeat: Duration,
    pub lockdown_after: Duration,
    pub max_agents: u32,
    pub max_file_rules: u32,
    pub max_net_rules: u32,
    pub ringbuf_bytes: u32,
    /// Reload an agent when its policy file changes (checked every heartbeat).
    pub watch_policies: bool,
    /// Loopback address to serve `GET /metrics` on; `None`: the control socket only.
    pub metrics: Option<std::net::SocketAddr>,
    pub audit_log: Option<PathBuf>,
    pub audit_key: PathBuf,
    pub allow: Vec<Allow>,
    pub agents: Vec<ConfigAgent>,
    /// Groups of approvers by name (`[approvers.NAME]`), each with its public keys.
    pub approvers: ApproverGroups,
    /// `[approvals] notify`: a command run for each new request (its JSON on stdin), and how
    /// long it may take.
    pub notify: Option<(Vec<String>, Duration)>,
}

/// Approver groups by name, each with its Ed25519 public keys.
pub type ApproverGroups = std::collections::BTreeMap<String, Vec<crate::audit::PublicKey>>;

impl DaemonConfig {
    /// The configuration when no file exists: socket for root and group `gate`, no
    /// unprivileged policy choices, no configured agents.
    pub fn defaults(file: &Path) -> Self {
        DaemonConfig {
            file: file.to_path_buf(),
            socket: PathBuf::from(gate_protocol::DEFAULT_SOCKET),
            group: "gate".into(),
            heartbeat: Duration::from_secs(1),
            lockdown_after: Duration::from_secs(15),
            max_agents: 256,
            max_file_rules: 262_144,
            max_net_rules: 16_384,
            ringbuf_bytes: crate::engine::DEFAULT_RINGBUF_BYTES,
            watch_policies: true,
            metrics: None,
            audit_log: Some(PathBuf::from(crate::audit::DEFAULT_LOG_PATH)),
            audit_key: PathBuf::from(crate::audit::DEFAULT_KEY_PATH),
            allow: Vec::new(),
            agents: Vec::new(),
            approvers: ApproverGroups::new(),
            notify: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    version: Spanned<u32>,
    #[serde(default)]
    daemon: Option<RawDaemon>,
    #[serde(default)]
    audit: Option<RawAudit>,
    #[serde(default)]
    allow: Vec<RawAllow>,
    #[serde(default)]
    agent: Vec<RawAgent>,
    #[serde(default)]
    approvers: std::collections::BTreeMap<String, RawApproverGroup>,
    #[serde(default)]
    approvals: Option<RawApprovals>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    /// A command (absolute path, then its arguments) run for each new request.
    notify: Option<Spanned<Vec<String>>>,
    notify_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproverGroup {
    /// Ed25519 public keys: base64 (or hex) of the 32 bytes, or the absolute path of a
    /// `.pub` file (`gate keygen`).
    keys: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    socket: Option<Spanned<String>>,
    group: Option<String>,
    heartbeat: Option<Spanned<String>>,
    lockdown_after: Option<Spanned<String>>,
    max_agents: Option<Spanned<u32>>,
    max_file_rules: Option<Spanned<u32>>,
    max_net_rules: Option<Spanned<u32>>,
    ringbuf_bytes: Option<Spanned<u32>>,
    watch_policies: Option<bool>,
    metrics: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    /// `false` or a path.
    log: Option<Spanned<toml::Value>>,
    key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    user: Option<String>,
    group: Option<String>,
    policies: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: Spanned<String>,
    slice: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
    policy: Spanned<String>,
    workspace: Option<Spanned<String>>,
    user: Option<String>,
}

/// Reads and checks the configuration; a missing file at the default place means defaults.
pub fn load(file: &Path) -> Result<DaemonConfig, ConfigError> {
    match std::fs::read_to_string(file) {
        Ok(s) => parse(&s, file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && file == Path::new(DEFAULT_CONFIG) => {
            Ok(DaemonConfig::defaults(file))
        }
        Err(source) => Err(ConfigError::Read {
            file: file.to_path_buf(),
            source,
        }),
    }
}

/// Parses a configuration's text; `file` names it in errors.
pub fn parse(source: &str, file: &Path) -> Result<DaemonConfig, ConfigError> {
    let lines = LineIndex::new(source);
    let err = |span: Range<usize>, message: String| ConfigError::Invalid {
        at: Location::new(file, lines.pos(span.start)),
        message,
    };
    let raw: Raw = toml::from_str(source)
        .map_err(|e| err(e.span().unwrap_or(0..0), e.message().trim_end().to_string()))?;
    if *raw.version.get_ref() != 1 {
        return Err(err(
            raw.version.span(),
            format!(
                "version {} is not supported; this gate reads version 1",
                raw.version.get_ref()
            ),
        ));
    }
    let mut c = DaemonConfig::defaults(file);
    if let Some(d) = raw.daemon {
        if let Some(s) = d.socket {
            c.socket = absolute(&s, &err)?;
        }
        if let Some(g) = d.group {
            c.group = g;
        }
        if let Some(h) = d.heartbeat {
            c.heartbeat = duration(&h, &err)?;
        }
        if let Some(l) = d.lockdown_after {
            c.lockdown_after = duration(&l, &err)?;
        }
        if c.lockdown_after < c.heartbeat * 3 {
            return Err(err(
                0..0,
                format!(
                    "lockdown_after ({:?}) must be at least three heartbeats ({:?}), or a busy \
                     host would fall into lockdown",
                    c.lockdown_after, c.heartbeat
                ),
            ));
        }
        if let Some(w) = d.watch_policies {
            c.watch_policies = w;
        }
        if let Some(m) = d.metrics {
            let addr: std::net::SocketAddr = m.get_ref().parse().map_err(|_| {
                err(
                    m.span(),
                    format!(
                        "{:?} is not an address and port (like \"127.0.0.1:9464\" or \"[::1]:9464\")",
                        m.get_ref()
                    ),
                )
            })?;
            if !addr.ip().is_loopback() {
                return Err(err(
                    m.span(),
                    format!(
                        "metrics are served on loopback only ({addr} is not): they name every \
                         agent on the host; scrape them through a proxy or an SSH tunnel"
                    ),
                ));
            }
            c.metrics = Some(addr);
        }
        for (v, slot, min) in [
            (d.max_agents, &mut c.max_agents, 1),
            (d.max_file_rules, &mut c.max_file_rules, 16),
            (d.max_net_rules, &mut c.max_net_rules, 16),
            (d.ringbuf_bytes, &mut c.ringbuf_bytes, 1 << 16),
        ] {
            if let Some(v) = v {
                if *v.get_ref() < min {
                    return Err(err(v.span(), format!("must be at least {min}")));
                }
                *slot = *v.get_ref();
            }
        }
    }
    if let Some(a) = raw.audit {
        if let Some(log) = a.log {
            c.audit_log = match log.get_ref() {
                toml::Value::Boolean(false) => None,
                toml::Value::String(s) if s.starts_with('/') => Some(PathBuf::from(s)),
                _ => {
                    return Err(err(
                        log.span(),
                        "log must be an absolute path, or false for no audit stream".into(),
                    ));
                }
            };
        }
        if let Some(k) = a.key {
            c.audit_key = absolute(&k, &err)?;
        }
    }
    for a in raw.allow {
        let who = match (a.user, a.group) {
            (Some(u), None) => Who::User(u),
            (None, Some(g)) => Who::Group(g),
            _ => {
                let at = a.policies.first().map_or(0..0, Spanned::span);
                return Err(err(
                    at,
                    "an [[allow]] names exactly one of user or group".into(),
                ));
            }
        };
        let mut policies = Vec::new();
        for p in a.policies {
            if !p.get_ref().starts_with('/') {
                return Err(err(
                    p.span(),
                    "policy patterns must be absolute paths".into(),
                ));
            }
            policies.push(p.into_inner());
        }
        c.allow.push(Allow { who, policies });
    }
    for a in raw.agent {
        let name = a.name.get_ref().clone();
        if !valid_name(&name) {
            return Err(err(
                a.name.span(),
                "agent names are 1-64 letters, digits, '.', '_' or '-'".into(),
            ));
        }
        if c.agents.iter().any(|x| x.name == name) {
            return Err(err(
                a.name.span(),
                format!("agent {name:?} is defined twice"),
            ));
        }
        let cgroup = match (a.slice, a.cgroup) {
            (Some(s), None) => slice_path(s.get_ref()).ok_or_else(|| {
                err(
                    s.span(),
                    format!(
                        "{:?} is not a systemd slice name (like agents.slice)",
                        s.get_ref()
                    ),
                )
            })?,
            (None, Some(p)) => {
                let rel = PathBuf::from(p.get_ref().trim_start_matches('/'));
                if rel.as_os_str().is_empty()
                    || rel
                        .components()
                        .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err(err(
                        p.span(),
                        "cgroup is a path below the cgroup mount, without . or ..".into(),
                    ));
                }
                rel
            }
            _ => {
                return Err(err(
                    a.name.span(),
                    "an [[agent]] names exactly one of slice or cgroup".into(),
                ));
            }
        };
        let policy = absolute(&a.policy, &err)?;
        let workspace = a.workspace.map(|w| absolute(&w, &err)).transpose()?;
        c.agents.push(ConfigAgent {
            name,
            cgroup,
            policy,
            workspace,
            user: a.user,
        });
    }
    if let Some(a) = raw.approvals {
        let timeout = match &a.notify_timeout {
            Some(t) => duration(t, &err)?,
            None => Duration::from_secs(10),
        };
        if let Some(cmd) = a.notify {
            let argv = cmd.get_ref().clone();
            if !argv.first().is_some_and(|p| p.starts_with('/')) {
                return Err(err(
                    cmd.span(),
                    "notify is a command as a list, its absolute path first (it is run \
                     without a shell), e.g. [\"/usr/local/bin/notify-chat\", \"--channel\", \
                     \"ops\"]"
                        .into(),
                ));
            }
            c.notify = Some((argv, timeout));
        }
    }
    for (name, g) in raw.approvers {
        let mut keys: Vec<crate::audit::PublicKey> = Vec::new();
        for k in &g.keys {
            let text = k.get_ref();
            let key = if text.starts_with('/') {
                crate::audit::PublicKey::load(Path::new(text))
            } else {
                crate::audit::PublicKey::parse(text)
            }
            .map_err(|e| err(k.span(), format!("approver group {name:?}: {e}")))?;
            if keys.contains(&key) {
                return Err(err(
                    k.span(),
                    format!("approver group {name:?} lists this key twice"),
                ));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(err(0..0, format!("approver group {name:?} has no keys")));
        }
        c.approvers.insert(name, keys);
    }
    Ok(c)
}

fn absolute(
    v: &Spanned<String>,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<PathBuf, ConfigError> {
    if v.get_ref().starts_with('/') {
        Ok(PathBuf::from(v.get_ref()))
    } else {
        Err(err(
            v.span(),
            format!("{:?} is not an absolute path", v.get_ref()),
        ))
    }
}

/// `500ms`, `2s`, `1m`.
fn duration(
    v: &Spanned<String>,
    err: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<Duration, ConfigError> {
    let s = v.get_ref().trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| {
        err(
            v.span(),
            format!("{s:?} is not a duration (like 500ms, 2s or 1m)"),
        )
    })?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => {
            return Err(err(
                v.span(),
                format!("{s:?} is not a duration (like 500ms, 2s or 1m)"),
            ));
        }
    };
    if d.is_zero() {
        return Err(err(v.span(), "a duration must be more than 0".into()));
    }
    Ok(d)
}

/// A systemd slice's cgroup path: `a-b.slice` is `a.slice/a-b.slice`.
pub fn slice_path(name: &str) -> Option<PathBuf> {
    let stem = name.strip_suffix(".slice")?;
    if stem.is_empty() || !valid_name(stem) || stem.starts_with('-') || stem.ends_with('-') {
        return None;
    }
    let mut path = PathBuf::new();
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    for i in 1..=parts.len() {
        path.push(format!("{}.slice", parts[..i].join("-")));
    }
    Some(path)
}

pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<DaemonConfig, String> {
        parse(s, Path::new("/etc/gate/gate.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_config_parses() {
        let c = p(r#"version = 1
[daemon]
socket = "/run/gate/x.sock"
heartbeat = "500ms"
lockdown_after = "5s"
max_agents = 100
[audit]
log = false
[[allow]]
group = "gate"
policies = ["/etc/gate/policies/*.toml"]
[[agent]]
name = "ci"
slice = "agents-ci.slice"
policy = "/etc/gate/policies/ci-runner.toml"
user = "ci"
"#)
        .unwrap();
        assert_eq!(c.heartbeat, Duration::from_millis(500));
        assert_eq!(c.lockdown_after, Duration::from_secs(5));
        assert_eq!((c.max_agents, c.audit_log.clone()), (100, None));
        assert_eq!(c.allow[0].who, Who::Group("gate".into()));
        assert_eq!(
            c.agents[0].cgroup,
            PathBuf::from("agents.slice/agents-ci.slice")
        );
    }

    #[test]
    fn errors_say_where() {
        let e = p("version = 1\n[daemon]\nsokcet = \"/x\"\n").unwrap_err();
        assert!(
            e.starts_with("/etc/gate/gate.toml:3:1: unknown field `sokcet`"),
            "{e}"
        );
        let e = p("version = 1\n[daemon]\nheartbeat = \"soon\"\n").unwrap_err();
        assert!(e.starts_with("/etc/gate/gate.toml:3:13:"), "{e}");
        assert!(e.contains("not a duration"), "{e}");
        let e = p("version = 2\n").unwrap_err();
        assert!(e.starts_with("/etc/gate/gate.toml:1:11: version 2"), "{e}");
        let e = p("version = 1\n[[agent]]\nname = \"a\"\ncgroup = \"../x\"\npolicy = \"/p\"\n")
            .unwrap_err();
        assert!(e.starts_with("/etc/gate/gate.toml:4:10:"), "{e}");
        let e =
            p("version = 1\n[[allow]]\nuser = \"a\"\ngroup = \"b\"\npolicies = []\n").unwrap_err();
        assert!(e.contains("exactly one of user or group"), "{e}");
        let e =
            p("version = 1\n[daemon]\nheartbeat = \"5s\"\nlockdown_after = \"6s\"\n").unwrap_err();
        assert!(e.contains("three heartbeats"), "{e}");
        let e = p("version = 1\n[daemon]\nmetrics = \"0.0.0.0:9464\"\n").unwrap_err();
        assert!(e.starts_with("/etc/gate/gate.toml:3:11:"), "{e}");
        assert!(e.contains("loopback only"), "{e}");
        let e = p("version = 1\n[daemon]\nmetrics = \"9464\"\n").unwrap_err();
        assert!(e.contains("not an address and port"), "{e}");
    }

    #[test]
    fn approver_groups_take_keys_inline_or_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let k = crate::audit::SigningKey::create(&dir.path().join("alice.key")).unwrap();
        let other = crate::audit::PublicKey::from_bytes([9; 32]).to_base64();
        let text = format!(
            "version = 1\n[approvers.release-managers]\nkeys = [\"{}\", \"{other}\"]\n",
            dir.path().join("alice.pub").display()
        );
        let c = p(&text).unwrap();
        assert_eq!(
            c.approvers["release-managers"],
            vec![k.public_key(), crate::audit::PublicKey::from_bytes([9; 32])]
        );
        let e = p("version = 1\n[approvers.rm]\nkeys = [\"not a key\"]\n").unwrap_err();
        assert!(
            e.starts_with("/etc/gate/gate.toml:3:9: approver group \"rm\":"),
            "{e}"
        );
        let e = p(&format!(
            "version = 1\n[approvers.rm]\nkeys = [\"{other}\", \"{other}\"]\n"
        ))
        .unwrap_err();
        assert!(e.contains("lists this key twice"), "{e}");
        let e = p("version = 1\n[approvers.rm]\nkeys = []\n").unwrap_err();
        assert!(e.contains("has no keys"), "{e}");
        let e = p("version = 1\n[approvers.rm]\nkey = []\n").unwrap_err();
        assert!(e.contains("unknown field `key`"), "{e}");
        let c = p("version = 1\n[approvals]\nnotify = [\"/bin/notify\", \"-x\"]\n").unwrap();
        assert_eq!(
            c.notify,
            Some((
                vec!["/bin/notify".into(), "-x".into()],
                Duration::from_secs(10)
            ))
        );
        let e = p("version = 1\n[approvals]\nnotify = [\"notify | sh\"]\n").unwrap_err();
        assert!(
            e.starts_with("/etc/gate/gate.toml:3:10: notify is a command"),
            "{e}"
        );
    }

    #[test]
    fn metrics_and_policy_watching() {
        let c =
            p("version = 1\n[daemon]\nmetrics = \"[::1]:9464\"\nwatch_policies = false\n").unwrap();
        assert_eq!(c.metrics, Some("[::1]:9464".parse().unwrap()));
        assert!(!c.watch_policies);
        let d = p("version = 1\n").unwrap();
        assert_eq!((d.metrics, d.watch_policies), (None, true));
    }

    #[test]
    fn slices_map_to_their_cgroup_paths() {
        assert_eq!(slice_path("a.slice"), Some(PathBuf::from("a.slice")));
        assert_eq!(
            slice_path("a-b-c.slice"),
            Some(PathBuf::from("a.slice/a-b.slice/a-b-c.slice"))
        );
        assert_eq!(slice_path("a--b.slice"), None);
        assert_eq!(slice_path("a.service"), None);
        assert_eq!(slice_path("../.slice"), None);
    }
}
