//! Policy v1: parse TOML, compile to map contents.
//!
//! A policy file is parsed by [`parse`] into a validated [`Policy`] (no filesystem access), then
//! [`compile`]d against a [`Resolver`] into a [`CompiledPolicy`]: the exact contents of the
//! kernel's inode map and IPv4/IPv6 LPM tries, plus the defaults and rule table. [`load`] does
//! both with the real filesystem. Any error means nothing is compiled; every error but an
//! unreadable file displays as `FILE:LINE:COLUMN: message`.
//!
//! Semantics: rules are order-independent and every matching rule counts; deny overrides ask
//! overrides allow; when no rule matches, the per-operation default decides.
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use gate_common::{decision, op};
use serde::Deserialize;

mod caps;
mod compile;
mod diff;
mod dump;
mod error;
mod net;
mod parse;
mod resolve;
mod sockets;
#[cfg(test)]
mod tests;

pub use caps::{CAPABILITIES, capability_bit, capability_name};
pub use compile::{
    CompiledPolicy, HARDLINK_WALK_LIMIT, MAX_RULES, MapSizes, Protected, RuleMeta, compile,
    protect, protect_into, protected,
};
pub use diff::{Change, diff, render as render_diff};
pub use error::{LineIndex, Location, PolicyError, Pos};
pub use net::{Cidr, Net4, Net6, PortRange, evaluate_ports};
pub use parse::parse;
pub use resolve::{FsResolver, HardlinkScan, MemResolver, Resolved, Resolver, kernel_dev};
pub use sockets::{SOCKET_KINDS, socket_bit, socket_kind_name};

/// The policy format version this gate reads.
pub const VERSION: u32 = 1;

/// Whether a policy blocks what it denies or only reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denied actions fail.
    Enforce,
    /// Denied actions are let through and reported.
    Audit,
}

impl Mode {
    /// The kernel's encoding (`gate_common::MODE_*`).
    pub fn code(self) -> u8 {
        match self {
            Mode::Enforce => gate_common::MODE_ENFORCE,
            Mode::Audit => gate_common::MODE_AUDIT,
        }
    }

    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// Whether a confined action that cannot be recorded is still allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditLevel {
    /// Lost audit records are reported as gaps, actions go on.
    #[default]
    BestEffort,
    /// An action that cannot be recorded is denied.
    Required,
}

impl AuditLevel {
    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        match self {
            AuditLevel::BestEffort => "best-effort",
            AuditLevel::Required => "required",
        }
    }
}

/// An operation a rule governs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Exec,
    Write,
    Read,
    Connect,
}

impl Op {
    /// All operations, in `op::*` order.
    pub const ALL: [Op; 4] = [Op::Exec, Op::Write, Op::Read, Op::Connect];

    /// The kernel's encoding (`gate_common::op::*`), also the index into per-op arrays.
    pub fn code(self) -> u8 {
        match self {
            Op::Exec => op::EXEC,
            Op::Write => op::WRITE,
            Op::Read => op::READ,
            Op::Connect => op::CONNECT,
        }
    }

    /// `code()` as an array index.
    pub fn index(self) -> usize {
        usize::from(self.code())
    }

    /// Whether this operation is on files (as opposed to `connect`).
    pub fn is_file(self) -> bool {
        self != Op::Connect
    }

    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Op::Exec => "exec",
            Op::Write => "write",
            Op::Read => "read",
            Op::Connect => "connect",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a rule decides, ordered by severity (`Allow < Ask < Deny`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Ask,
    Deny,
}

impl Decision {
    /// The kernel's encoding (`gate_common::decision::*`), which is also the severity.
    pub fn code(self) -> u8 {
        match self {
            Decision::Allow => decision::ALLOW,
            Decision::Ask => decision::ASK,
            Decision::Deny => decision::DENY,
        }
    }

    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Ask => "ask",
            Decision::Deny => "deny",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed, validated policy. Paths keep their variables: they are substituted by [`compile`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The file it was read from (for error and warning locations).
    pub file: PathBuf,
    pub name: String,
    pub mode: Mode,
    pub audit: AuditLevel,
    /// Default decision per operation, indexed by `op::*` ([`Op::index`]).
    pub defaults: [Decision; 4],
    /// The rules, in file order.
    pub rules: Vec<Rule>,
    /// `[sockets] allow`: the socket families and kinds allowed beyond the base set, sorted.
    pub sockets: Vec<String>,
    /// `[capabilities] allow`: the capabilities a confined task may use, sorted.
    pub capabilities: Vec<String>,
    /// `[namespaces] allow`: the namespaces a confined task may create, sorted.
    pub namespaces: Vec<String>,
    /// `[default] unix`: unix sockets created outside the agent that no `unix` rule names
    /// (allow or deny; deny when omitted).
    pub unix_default: Decision,
    /// `[trust] max_denials`: denials per period (count, seconds) past which the daemon puts
    /// the agent in lockdown until a person restores it.
    pub max_denials: Option<(u32, u64)>,
}

/// `[namespaces]` names and the switch each turns on (`AgentConfig::grants`). Without one, a
/// confined task cannot create a user namespace (inside one, an unprivileged task holds
/// every capability over its own mounts and network).
pub const NAMESPACES: [(&str, u64); 1] = [("user", gate_common::grant::USER_NAMESPACE)];

/// The `AgentConfig::grants` bit of a `[namespaces]` name.
pub fn namespace_grant(name: &str) -> Option<u64> {
    NAMESPACES.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

impl Policy {
    /// The default decisions when the `[default]` table leaves an operation out.
    pub const DEFAULTS: [Decision; 4] = [
        Decision::Deny,
        Decision::Deny,
        Decision::Allow,
        Decision::Deny,
    ];
}

/// One `[[rule]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub op: Op,
    pub decision: Decision,
    /// Emit events for allowed actions matching this rule too.
    pub audit: bool,
    pub description: Option<String>,
    pub target: Target,
    /// Where the rule's id is.
    pub pos: Pos,
    /// Who must sign an approval of an `ask` rule (none: members of the daemon's group
    /// approve with their socket credentials).
    pub approvers: Option<Approvers>,
    /// How often the rule may allow per agent (`limit`), and what applies past it.
    pub limit: Option<Limit>,
}

/// The largest count a `limit` may name.
pub const MAX_LIMIT: u32 = 1_000_000;

/// `limit = "COUNT/PERIOD"` and `over_limit` of an allow rule, counted by the kernel per
/// agent and rule in fixed windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub count: u32,
    pub window_s: u64,
    /// `Deny` or `Ask`.
    pub over: Decision,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per = match self.window_s {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => "day",
        };
        write!(f, "{}/{per}", self.count)
    }
}

/// The most signatures a rule may require.
pub const MAX_APPROVERS: u32 = 16;

/// `approvers = { group = "...", threshold = N }` of an `ask` rule: N distinct keys of the
/// daemon's `[approvers.GROUP]` must sign an approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approvers {
    pub group: String,
    pub threshold: u32,
    /// Where the group is named (for errors about the group).
    pub at: Location,
}

/// What a rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// File operations: exact paths and `dir/**` subtrees; for `connect`, unix socket files
    /// (`unix = [...]`).
    Paths(Vec<PathSpec>),
    /// `connect`: every combination of these prefixes and port ranges.
    Net {
        addrs: Vec<AddrSpec>,
        ports: Vec<PortRange>,
    },
}

/// A path pattern as written, variables not yet substituted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathSpec {
    /// The pattern as written (e.g. `${workspace}/**`).
    pub raw: String,
    /// Whether it ends in `/**` (everything below the directory).
    pub subtree: bool,
    pub pos: Pos,
}

impl PathSpec {
    /// The pattern without its trailing `/**` (`/` for `/**`).
    pub fn base(&self) -> &str {
        if !self.subtree {
            return &self.raw;
        }
        match self.raw.strip_suffix("/**") {
            Some("") | None => "/",
            Some(base) => base,
        }
    }
}

/// An address prefix and where it was written (the rule's id when `addr` is left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrSpec {
    pub cidr: Cidr,
    pub pos: Pos,
}

/// Values for path variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vars {
    /// `${workspace}` (from `--workspace`); using it without a value is an error.
    pub workspace: Option<PathBuf>,
    /// `${home}` and a leading `~/`: the invoking user's home directory.
    pub home: PathBuf,
}

impl Vars {
    /// Variables for the user who invoked gate: under `sudo` (root with `SUDO_UID` set) the home
    /// of that user, otherwise `$HOME`, otherwise the password database entry of the real uid.
    pub fn for_invoking_user(workspace: Option<PathBuf>) -> io::Result<Vars> {
        Ok(Vars {
            workspace,
            home: invoking_home()?,
        })
    }
}

fn invoking_home() -> io::Result<PathBuf> {
    use nix::unistd::{Uid, User};
    let sudo_uid = std::env::var("SUDO_UID")
        .ok()
        .and_then(|u| u.parse::<u32>().ok());
    let uid = match sudo_uid {
        Some(uid) if Uid::effective().is_root() => Uid::from_raw(uid),
        _ => {
            if let Some(home) = std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|h| h.is_absolute())
            {
                return Ok(home);
            }
            Uid::current()
        }
    };
    match User::from_uid(uid) {
        Ok(Some(user)) => Ok(user.dir),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no passwd entry for uid {uid}"),
        )),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Reads and parses the policy in `file` (paths keep their variables).
pub fn read(file: &Path) -> Result<Policy, PolicyError> {
    let source = std::fs::read_to_string(file).map_err(|source| PolicyError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    parse(&source, file)
}

/// Reads, parses and compiles the policy in `file` against the real filesystem.
pub fn load(file: &Path, vars: &Vars) -> Result<CompiledPolicy, PolicyError> {
    let policy = read(file)?;
    let mut c = compile(&policy, vars, &FsResolver)?;
    // gate's own state, and the policy file itself, whatever the policy says.
    let mut list = protected();
    list.push(Protected {
        path: file.to_path_buf(),
        read: false,
    });
    protect_into(&mut c, &list, &FsResolver);
    Ok(c)
}
