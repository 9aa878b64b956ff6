//! [`Policy`] → [`CompiledPolicy`]: the contents of the kernel maps.
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use gate_common::{
    AgentConfig, InodeKey, InodeRule, PendingKey, PendingRule, decision, op, pending,
    rule as rule_idx,
};

use super::error::{Location, PolicyError};
use super::net::{Net4, Net6, NetEntry, compile_net};
use super::resolve::{HardlinkScan, Resolved, Resolver};
use super::{Decision, Mode, Op, PathSpec, Policy, Rule, Target, Vars};

/// Most rules a policy may have: rule indexes are u16 and the values from 0xfff0 up are
/// reserved (`rule::*`).
pub const MAX_RULES: usize = 0xfff0 - 1;
/// Directory entries visited per deny/ask subtree when looking for hard-linked files.
pub const HARDLINK_WALK_LIMIT: usize = 10_000;

/// What the kernel's events refer to by rule index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleMeta {
    pub id: String,
    pub op: Op,
    pub decision: Decision,
    pub audit: bool,
    pub approvers: Option<super::Approvers>,
    pub limit: Option<super::Limit>,
}

/// Entry counts, for sizing the kernel maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub rules: usize,
    pub inodes: usize,
    pub net4: usize,
    pub net6: usize,
}

/// A policy compiled into the contents of the kernel maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub name: String,
    pub mode: Mode,
    /// `audit = "required"`: an action that cannot be recorded is denied.
    pub audit_required: bool,
    /// Default decision per operation, indexed by `op::*`.
    pub defaults: [u8; 4],
    /// The rules, sorted by id; map values refer to them by index.
    pub rules: Vec<RuleMeta>,
    /// Inode map contents.
    pub inodes: BTreeMap<InodeKey, InodeRule>,
    /// Pending-name map contents: rules on paths that did not exist when compiled, below the
    /// nodes that `inodes` entries of their deepest existing directories point to.
    pub pending: BTreeMap<PendingKey, PendingRule>,
    /// Each path a pending rule watches, and the directory it hangs from (for humans).
    pub pending_paths: Vec<(PathBuf, PathBuf)>,
    /// A path of each inode in `inodes` (for humans: dumps and messages).
    pub inode_paths: BTreeMap<InodeKey, PathBuf>,
    /// IPv4 LPM trie contents, keyed by (prefix length, address).
    pub net4: Net4,
    /// IPv6 LPM trie contents, keyed by (prefix length, address).
    pub net6: Net6,
    /// Some inode entry has a read decision (otherwise reads need no walk).
    pub has_read_rules: bool,
    /// `AgentConfig::sockets`: the socket families and kinds allowed beyond the base set.
    pub sockets: u64,
    /// `AgentConfig::caps`: the capabilities a confined task may use.
    pub caps: u64,
    /// `AgentConfig::grants`: the switches the policy turns on (`[namespaces]`).
    pub grants: u64,
    /// Operations (`1 << op::*`) still decided by the policy when the daemon's heartbeat is
    /// stale; every other operation is denied then. Default: reads only.
    pub lockdown_keep: u8,
    /// SHA-256 of the canonical form of the policy ([`Policy::canonical`]).
    pub digest: [u8; 32],
    /// Things that did not stop compilation but a user should know (missing paths…).
    pub warnings: Vec<String>,
    /// `[trust] max_denials`: (count, seconds).
    pub max_denials: Option<(u32, u64)>,
}

impl CompiledPolicy {
    /// The policy an agent falls to when it used up its denial budget: reads are decided as
    /// before, every exec, write and connect is denied (the decisions of the heartbeat's
    /// lockdown, held until a person restores the agent), enforced whatever the mode.
    pub fn lockdown_variant(&self) -> CompiledPolicy {
        let mut p = self.clone();
        p.mode = Mode::Enforce;
        let keep = |r: &mut InodeRule| {
            for op in [op::EXEC, op::WRITE] {
                let i = usize::from(op);
                r.exact[i] = decision::NONE;
                r.subtree[i] = decision::NONE;
                r.exact_rule[i] = rule_idx::DEFAULT;
                r.subtree_rule[i] = rule_idx::DEFAULT;
            }
        };
        p.inodes.values_mut().for_each(keep);
        p.pending.values_mut().for_each(|r| keep(&mut r.rule));
        p.net4.clear();
        p.net6.clear();
        for op in [op::EXEC, op::WRITE, op::CONNECT] {
            p.defaults[usize::from(op)] = decision::DENY;
        }
        p
    }

    /// Entry counts of every map.
    pub fn map_sizes(&self) -> MapSizes {
        MapSizes {
            rules: self.rules.len(),
            inodes: self.inodes.len(),
            net4: self.net4.len(),
            net6: self.net6.len(),
        }
    }

    /// The rule a kernel event names: a rule id, or the name of a reserved index.
    pub fn rule_name(&self, index: u16) -> String {
        crate::events::rule_name(Some(self), index)
    }

    /// The `VERDICTS` entries of this policy's quotas for agent `agent_id`: per rule with a
    /// `limit`, its terms and a fresh counter (the kernel starts the first window).
    pub fn quota_entries(
        &self,
        agent_id: u32,
    ) -> Vec<(gate_common::VerdictKey, gate_common::VerdictValue)> {
        let mut out = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let Some(l) = r.limit else { continue };
            let key = |kind| gate_common::VerdictKey {
                agent_id,
                rule: i as u16,
                op: r.op.code(),
                kind,
                ..Default::default()
            };
            out.push((
                key(gate_common::verdict_kind::QUOTA_TERMS),
                gate_common::VerdictValue {
                    expires_ns: l.window_s * 1_000_000_000,
                    decision: l.over.code(),
                    _pad: [0; 3],
                    source: l.count,
                },
            ));
            out.push((
                key(gate_common::verdict_kind::QUOTA),
                gate_common::VerdictValue::default(),
            ));
        }
        out
    }

    /// The `AGENTS` map value for this policy, its rules written under `slot`, for the agent
    /// `agent_id`.
    pub fn agent_config(&self, slot: u32, agent_id: u32) -> AgentConfig {
        AgentConfig {
            slot,
            agent_id,
            mode: self.mode.code(),
            audit_required: u8::from(self.audit_required),
            has_read_rules: u8::from(self.has_read_rules),
            lockdown_keep: self.lockdown_keep,
            defaults: self.defaults,
            sockets: self.sockets,
            caps: self.caps,
            grants: self.grants,
        }
    }

    /// The digest as lowercase hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }
}

/// A piece of gate's own state that no confined process may change (nor read, with `read`):
/// built into every policy as rule `gate-self`, deny-wins over the policy's own rules and
/// enforced even in audit mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protected {
    pub path: PathBuf,
    /// Reads are denied too (key material).
    pub read: bool,
}

/// What [`super::load`] protects in every policy it compiles, set once by `gate run` and the
/// daemon for the state they use ([`protect`]).
static PROTECTED: std::sync::RwLock<Vec<Protected>> = std::sync::RwLock::new(Vec::new());

/// Sets gate's own state that every policy loaded from now on protects.
pub fn protect(list: Vec<Protected>) {
    if let Ok(mut p) = PROTECTED.write() {
        *p = list;
    }
}

/// What [`protect`] set.
pub fn protected() -> Vec<Protected> {
    PROTECTED.read().map(|p| p.clone()).unwrap_or_default()
}

/// Adds `gate-self` deny entries for `list` to `c` (a path that does not exist is skipped:
/// there is nothing to protect yet; a directory is protected with everything below it).
pub fn protect_into(c: &mut CompiledPolicy, list: &[Protected], resolver: &dyn Resolver) {
    for p in list {
        let Ok(r) = resolver.resolve(&p.path) else {
            continue;
        };
        let entry = c.inodes.entry(r.key).or_insert_with(empty_inode_rule);
        c.inode_paths
            .entry(r.key)
            .or_insert_with(|| r.canonical.clone());
        let mut ops = vec![op::WRITE];
        if p.read {
            ops.push(op::READ);
            c.has_read_rules = true;
        }
        for o in ops {
            let i = usize::from(o);
            merge(
                &mut entry.exact[i],
                &mut entry.exact_rule[i],
                decision::DENY,
                rule_idx::GATE_SELF,
            );
            if r.is_dir {
                merge(
                    &mut entry.subtree[i],
                    &mut entry.subtree_rule[i],
                    decision::DENY,
                    rule_idx::GATE_SELF,
                );
            }
        }
    }
}

/// Compiles `policy`, substituting `vars` and resolving paths with `resolver`.
pub fn compile(
    policy: &Policy,
    vars: &Vars,
    resolver: &dyn Resolver,
) -> Result<CompiledPolicy, PolicyError> {
    if policy.rules.len() > MAX_RULES {
        let at = Location::new(&policy.file, policy.rules[MAX_RULES].pos);
        return Err(PolicyError::TooManyRules {
            at,
            count: policy.rules.len(),
            max: MAX_RULES,
        });
    }
    let mut order: Vec<&Rule> = policy.rules.iter().collect();
    order.sort_by(|a, b| a.id.cmp(&b.id));
    let mut c = Compiler::new(policy, vars, resolver);
    for (index, rule) in order.iter().enumerate() {
        c.rule(index as u16, rule)?;
    }
    c.harden_hardlinks();
    let (net4, net6) = compile_net(&c.net, &policy.file)?;
    let warnings = c.take_warnings();
    let has_read_rules = c
        .inodes
        .values()
        .chain(c.pending.values().map(|p| &p.rule))
        .any(|v| {
            v.exact[usize::from(op::READ)] != decision::NONE
                || v.subtree[usize::from(op::READ)] != decision::NONE
        });
    Ok(CompiledPolicy {
        name: policy.name.clone(),
        mode: policy.mode,
        audit_required: policy.audit == super::AuditLevel::Required,
        defaults: Op::ALL.map(|op| policy.defaults[op.index()].code()),
        rules: order
            .iter()
            .map(|r| RuleMeta {
                id: r.id.clone(),
                op: r.op,
                decision: r.decision,
                audit: r.audit,
                approvers: r.approvers.clone(),
                limit: r.limit,
            })
            .collect(),
        inodes: c.inodes,
        inode_paths: c.paths,
        pending: c.pending,
        pending_paths: c.pending_paths,
        net4,
        net6,
        has_read_rules,
        sockets: policy
            .sockets
            .iter()
            .filter_map(|s| super::socket_bit(s))
            .fold(0, |a, b| a | b),
        caps: policy
            .capabilities
            .iter()
            .filter_map(|c| super::capability_bit(c))
            .fold(0, |a, b| a | b),
        grants: policy
            .namespaces
            .iter()
            .filter_map(|n| super::namespace_grant(n))
            .fold(0, |a, b| a | b)
            | if policy.unix_default == Decision::Allow {
                gate_common::grant::UNIX_OUTSIDE
            } else {
                0
            },
        lockdown_keep: 1 << op::READ,
        digest: policy.digest(),
        warnings,
        max_denials: policy.max_denials,
    })
}

/// The decision byte a rule puts into the maps.
fn decision_byte(rule: &Rule) -> u8 {
    let audit = if rule.decision == Decision::Allow && rule.audit {
        decision::AUDIT
    } else {
        0
    };
    let limited = if rule.limit.is_some() {
        decision::LIMITED
    } else {
        0
    };
    rule.decision.code() | audit | limited
}

/// Merges a rule into one map slot the way the kernel merges matches: the more severe decision
/// wins (on a tie, the rule met first, i.e. the lower index) and an audit request from an
/// equally severe rule is kept.
fn merge(slot: &mut u8, slot_rule: &mut u16, byte: u8, index: u16) {
    let (new, cur) = (byte & decision::MASK, *slot & decision::MASK);
    if new > cur {
        *slot = byte;
        *slot_rule = index;
    } else if new == cur {
        *slot |= byte & decision::AUDIT;
    }
}

fn empty_inode_rule() -> InodeRule {
    InodeRule {
        exact_rule: [rule_idx::DEFAULT; op::FILE_OPS],
        subtree_rule: [rule_idx::DEFAULT; op::FILE_OPS],
        ..InodeRule::default()
    }
}

/// Merges a rule into an entry's exact or subtree slot for `op`.
fn merge_rule(r: &mut InodeRule, subtree: bool, op: Op, byte: u8, index: u16) {
    let i = op.index();
    if subtree {
        merge(&mut r.subtree[i], &mut r.subtree_rule[i], byte, index);
    } else {
        merge(&mut r.exact[i], &mut r.exact_rule[i], byte, index);
    }
}

/// A write deny (or ask) on `dir/**` protects the directory's own name too: moved away (its
/// contents keep their rules) and replaced by a new directory of the same name, it would
/// leave that name unprotected.
fn protects_own_name(rule: &Rule, spec: &PathSpec) -> bool {
    spec.subtree && rule.decision != Decision::Allow && rule.op == Op::Write
}

/// The next pending node after `last` (which it becomes).
fn next_node(last: &mut u32) -> u32 {
    *last += 1;
    *last
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// A deny/ask subtree whose hard-linked files get exact entries of their own.
struct HardlinkJob {
    dir: PathBuf,
    op: Op,
    byte: u8,
    index: u16,
    rule_id: String,
    at: Location,
}

struct Compiler<'a> {
    policy: &'a Policy,
    vars: &'a Vars,
    resolver: &'a dyn Resolver,
    inodes: BTreeMap<InodeKey, InodeRule>,
    paths: BTreeMap<InodeKey, PathBuf>,
    net: Vec<NetEntry>,
    jobs: Vec<HardlinkJob>,
    pending: BTreeMap<PendingKey, PendingRule>,
    pending_paths: Vec<(PathBuf, PathBuf)>,
    /// The last pending node handed out.
    last_node: u32,
    /// Warnings with where they point, sorted by position at the end.
    warnings: Vec<(Location, String)>,
    workspace_checked: bool,
}

impl<'a> Compiler<'a> {
    fn new(policy: &'a Policy, vars: &'a Vars, resolver: &'a dyn Resolver) -> Self {
        Compiler {
            policy,
            vars,
            resolver,
            inodes: BTreeMap::new(),
            paths: BTreeMap::new(),
            net: Vec::new(),
            jobs: Vec::new(),
            pending: BTreeMap::new(),
            pending_paths: Vec::new(),
            last_node: 0,
            warnings: Vec::new(),
            workspace_checked: false,
        }
    }

    fn warn(&mut self, at: &Location, message: String) {
        self.warnings
            .push((at.clone(), format!("{at}: warning: {message}")));
    }

    /// The warnings in file order.
    fn take_warnings(&mut self) -> Vec<String> {
        let mut warnings = std::mem::take(&mut self.warnings);
        warnings.sort_by_key(|(at, _)| at.pos);
        warnings.into_iter().map(|(_, w)| w).collect()
    }

    fn rule(&mut self, index: u16, rule: &Rule) -> Result<(), PolicyError> {
        let byte = decision_byte(rule);
        match &rule.target {
            Target::Paths(specs) => specs
                .iter()
                .try_for_each(|spec| self.path(index, rule, byte, spec)),
            Target::Net { addrs, ports } => {
                for addr in addrs {
                    for ports in ports {
                        let (cidr, pos, rule_id) = (addr.cidr, addr.pos, rule.id.clone());
                        self.net.push(NetEntry {
                            cidr,
                            ports: *ports,
                            decision: byte,
                            rule: index,
                            rule_id,
                            pos,
                        });
                    }
                }
                Ok(())
            }
        }
    }

    fn path(
        &mut self,
        index: u16,
        rule: &Rule,
        byte: u8,
        spec: &PathSpec,
    ) -> Result<(), PolicyError> {
        let at = Location::new(&self.policy.file, spec.pos);
        if let Some(name) = spec.raw.strip_prefix('@') {
            // An abstract unix socket name (checked when parsed): no file to resolve.
            let key = gate_common::unix_name::key(name.as_bytes()).ok_or_else(|| {
                PolicyError::Invalid {
                    at: at.clone(),
                    message: "not an abstract socket name".to_owned(),
                }
            })?;
            let resolved = Resolved {
                canonical: PathBuf::from(&spec.raw),
                key,
                is_dir: false,
            };
            self.set(&resolved, false, rule.op, byte, index);
            return Ok(());
        }
        let text = self.substitute(spec.base(), &at)?;
        if !Path::new(&text).is_absolute() {
            return Err(PolicyError::NotAbsolute { at, path: text });
        }
        let resolved = match self.resolver.resolve(Path::new(&text)) {
            Ok(resolved) => resolved,
            Err(e) if is_missing(&e) => {
                return self.pending_path(index, rule, byte, spec, &text, &at);
            }
            Err(source) => {
                return Err(PolicyError::Resolve {
                    at,
                    path: text.into(),
                    source,
                });
            }
        };
        if spec.subtree && !resolved.is_dir {
            return Err(PolicyError::NotDirectory {
                at,
                path: resolved.canonical,
                pattern: spec.raw.clone(),
            });
        }
        self.set(&resolved, spec.subtree, rule.op, byte, index);
        if protects_own_name(rule, spec) {
            self.set(&resolved, false, rule.op, byte, index);
        }
        if spec.subtree && rule.decision != Decision::Allow {
            let (dir, op, rule_id) = (resolved.canonical, rule.op, rule.id.clone());
            self.jobs.push(HardlinkJob {
                dir,
                op,
                byte,
                index,
                rule_id,
                at,
            });
        }
        Ok(())
    }

    /// A rule on a path that does not exist (yet): kept by name below its deepest existing
    /// directory, for the kernel to compare as it decides (`gate_common::pending`).
    fn pending_path(
        &mut self,
        index: u16,
        rule: &Rule,
        byte: u8,
        spec: &PathSpec,
        text: &str,
        at: &Location,
    ) -> Result<(), PolicyError> {
        let path = Path::new(text);
        let mut names: Vec<&std::ffi::OsStr> = Vec::new();
        let mut dir = path;
        let base = loop {
            // The last normal component (`Path` drops `.`; a `..` ends the path's names).
            let Some(name) = dir.file_name() else {
                return Err(PolicyError::Invalid {
                    at: at.clone(),
                    message: format!(
                        "`{text}` does not exist and cannot be watched for: name it without `.` or `..`"
                    ),
                });
            };
            names.push(name);
            dir = dir.parent().unwrap_or(Path::new("/"));
            match self.resolver.resolve(dir) {
                Ok(resolved) => break resolved,
                Err(e) if is_missing(&e) => continue,
                Err(source) => {
                    return Err(PolicyError::Resolve {
                        at: at.clone(),
                        path: dir.into(),
                        source,
                    });
                }
            }
        };
        let id = &rule.id;
        if !base.is_dir {
            let message = format!(
                "rule `{id}`: `{text}` cannot exist (`{}` is not a directory), skipped",
                base.canonical.display()
            );
            self.warn(at, message);
            return Ok(());
        }
        names.reverse();
        // Names are told apart by their length and a hash of their first bytes: a longer name
        // in an allow rule would allow every name of its length that starts the same.
        let hashed = 8 * pending::WORDS;
        if rule.decision == Decision::Allow
            && let Some(long) = names.iter().find(|n| n.len() > hashed)
        {
            return Err(PolicyError::Invalid {
                at: at.clone(),
                message: format!(
                    "`{text}` does not exist and its name `{}` is longer than {hashed} bytes: \
                     an allow rule can watch only names up to {hashed} bytes (create the path first)",
                    long.display()
                ),
            });
        }
        if names.len() > pending::MAX_DEPTH as usize {
            return Err(PolicyError::Invalid {
                at: at.clone(),
                message: format!(
                    "`{text}` has {} components below `{}`, its deepest existing directory; \
                     gate watches for at most {} (create some of them first)",
                    names.len(),
                    base.canonical.display(),
                    pending::MAX_DEPTH
                ),
            });
        }
        let watched = names.iter().fold(base.canonical.clone(), |p, n| p.join(n));
        // The deepest existing directory points to the first node.
        let entry = self.inodes.entry(base.key).or_insert_with(empty_inode_rule);
        self.paths
            .entry(base.key)
            .or_insert_with(|| base.canonical.clone());
        if entry.pending == 0 {
            entry.pending = next_node(&mut self.last_node);
        }
        let mut node = entry.pending;
        let guard = rule.decision != Decision::Allow;
        for (depth, name) in names.iter().enumerate() {
            let bytes = name.as_encoded_bytes();
            let key = PendingKey {
                slot: 0,
                node,
                len: bytes.len() as u32,
                _pad: 0,
                hash: pending::hash(bytes),
            };
            let p = self.pending.entry(key).or_insert_with(|| PendingRule {
                rule: empty_inode_rule(),
                guard: rule_idx::DEFAULT,
                _pad: 0,
            });
            if guard && (p.guard == rule_idx::DEFAULT || index < p.guard) {
                p.guard = index;
            }
            if depth + 1 == names.len() {
                merge_rule(&mut p.rule, spec.subtree, rule.op, byte, index);
                if protects_own_name(rule, spec) {
                    merge_rule(&mut p.rule, false, rule.op, byte, index);
                }
                break;
            }
            if p.rule.pending == 0 {
                p.rule.pending = next_node(&mut self.last_node);
            }
            node = p.rule.pending;
        }
        self.pending_paths
            .push((watched.clone(), base.canonical.clone()));
        let message = format!(
            "rule `{id}`: `{}` does not exist yet; the rule applies to it once created (its name is watched below `{}`)",
            watched.display(),
            base.canonical.display()
        );
        self.warn(at, message);
        Ok(())
    }

    /// Substitutes `~`, `${home}` and `${workspace}` in a path pattern's base.
    fn substitute(&mut self, base: &str, at: &Location) -> Result<String, PolicyError> {
        let mut text = match base.strip_prefix('~') {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("${{home}}{rest}"),
            _ => base.to_owned(),
        };
        if text.contains("${home}") {
            text = text.replace("${home}", &var_text(&self.vars.home, "home", at)?);
        }
        if text.contains("${workspace}") {
            let workspace = self.workspace(at)?;
            text = text.replace("${workspace}", &workspace);
        }
        Ok(text)
    }

    /// The workspace, checked to exist the first time a rule uses it.
    fn workspace(&mut self, at: &Location) -> Result<String, PolicyError> {
        let Some(workspace) = &self.vars.workspace else {
            let message =
                "`${workspace}` is used but no workspace was given (--workspace)".to_owned();
            return Err(PolicyError::Variable {
                at: at.clone(),
                message,
            });
        };
        if !self.workspace_checked {
            self.resolver
                .resolve(workspace)
                .map_err(|e| PolicyError::Variable {
                    at: at.clone(),
                    message: format!(
                        "the workspace `{}` cannot be resolved: {e}",
                        workspace.display()
                    ),
                })?;
            self.workspace_checked = true;
        }
        var_text(workspace, "workspace", at)
    }

    fn set(&mut self, resolved: &Resolved, subtree: bool, op: Op, byte: u8, index: u16) {
        let entry = self
            .inodes
            .entry(resolved.key)
            .or_insert_with(empty_inode_rule);
        self.paths
            .entry(resolved.key)
            .or_insert_with(|| resolved.canonical.clone());
        merge_rule(entry, subtree, op, byte, index);
    }

    /// Gives every multiply-linked file below a deny/ask subtree an exact entry, so that its
    /// other names, outside the subtree, are covered too.
    fn harden_hardlinks(&mut self) {
        let mut scans: BTreeMap<PathBuf, io::Result<HardlinkScan>> = BTreeMap::new();
        for job in std::mem::take(&mut self.jobs) {
            let scan = scans.entry(job.dir.clone()).or_insert_with(|| {
                self.resolver
                    .hardlinked_files_under(&job.dir, HARDLINK_WALK_LIMIT)
            });
            let scan = match scan {
                Ok(scan) => scan.clone(),
                Err(e) => {
                    let message = format!(
                        "rule `{}`: cannot scan `{}` for hard links: {e}",
                        job.rule_id,
                        job.dir.display()
                    );
                    self.warn(&job.at, message);
                    continue;
                }
            };
            for file in &scan.files {
                self.set(file, false, job.op, job.byte, job.index);
            }
            self.warn_scan(&job, &scan);
        }
    }

    fn warn_scan(&mut self, job: &HardlinkJob, scan: &HardlinkScan) {
        let (id, dir) = (&job.rule_id, job.dir.display());
        if scan.truncated {
            let message = format!(
                "rule `{id}`: `{dir}` has more than {HARDLINK_WALK_LIMIT} entries; hard links beyond them are not covered"
            );
            self.warn(&job.at, message);
        }
        for unreadable in &scan.unreadable {
            let message = format!(
                "rule `{id}`: cannot read `{}` to look for hard links",
                unreadable.display()
            );
            self.warn(&job.at, message);
        }
    }
}

/// A variable's value as text, without a trailing slash (so `${home}/x` has no `//`).
fn var_text(value: &Path, name: &str, at: &Location) -> Result<String, PolicyError> {
    let Some(text) = value.to_str() else {
        let message = format!("`${{{name}}}` (`{}`) is not valid UTF-8", value.display());
        return Err(PolicyError::Variable {
            at: at.clone(),
            message,
        });
    };
    let trimmed = text.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        text.to_owned()
    } else {
        trimmed.to_owned()
    })
}
