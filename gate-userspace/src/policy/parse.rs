//! TOML → validated [`Policy`]: shape checks by serde (unknown keys are errors), value checks
//! here, each error located at the offending value.
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use super::error::{LineIndex, Location, PolicyError, Pos};
use super::net::{Cidr, PortRange};
use super::{AddrSpec, AuditLevel, Decision, Mode, Op, PathSpec, Policy, Rule, Target, VERSION};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<i64>,
    name: Spanned<String>,
    mode: Mode,
    #[serde(default)]
    audit: AuditLevel,
    #[serde(default)]
    default: RawDefaults,
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    sockets: RawSockets,
    #[serde(default)]
    capabilities: RawSockets,
    #[serde(default)]
    namespaces: RawSockets,
    #[serde(default)]
    trust: RawTrust,
}

/// `[trust] max_denials = "20/min"`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    max_denials: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSockets {
    allow: Option<SpannedList<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    exec: Option<Decision>,
    write: Option<Decision>,
    read: Option<Decision>,
    connect: Option<Decision>,
    unix: Option<Spanned<Decision>>,
}

type SpannedList<T> = Spanned<Vec<Spanned<T>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    op: Spanned<Op>,
    decision: Decision,
    #[serde(default)]
    audit: bool,
    #[serde(default)]
    description: Option<String>,
    path: Option<SpannedList<String>>,
    addr: Option<SpannedList<String>>,
    port: Option<SpannedList<RawPort>>,
    unix: Option<SpannedList<String>>,
    approvers: Option<Spanned<RawApprovers>>,
    limit: Option<Spanned<String>>,
    over_limit: Option<Spanned<Decision>>,
}

/// `approvers = { group = "release-managers", threshold = 2 }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovers {
    group: Spanned<String>,
    threshold: Spanned<i64>,
}

/// A port as written: an integer or a `"N"` / `"N-M"` string.
enum RawPort {
    Int(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = RawPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a \"lo-hi\" port range string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPort, E> {
                Ok(RawPort::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawPort, E> {
                Ok(RawPort::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPort, E> {
                Ok(RawPort::Text(v.to_owned()))
            }
        }
        d.deserialize_any(PortVisitor)
    }
}

/// Parses and validates a policy. `file` is only used to locate errors.
pub fn parse(source: &str, file: &Path) -> Result<Policy, PolicyError> {
    let raw: RawPolicy = toml::from_str(source).map_err(|e| {
        let pos = Pos::from_offset(source, e.span().map_or(0, |s| s.start));
        PolicyError::Syntax {
            at: Location::new(file, pos),
            message: e.message().trim_end().to_owned(),
        }
    })?;
    Checker {
        lines: LineIndex::new(source),
        file,
    }
    .policy(raw)
}

/// Turns spans into locations while checking values.
struct Checker<'a> {
    lines: LineIndex<'a>,
    file: &'a Path,
}

impl Checker<'_> {
    fn pos(&self, span: Range<usize>) -> Pos {
        self.lines.pos(span.start)
    }

    fn at<T>(&self, value: &Spanned<T>) -> Location {
        Location::new(self.file, self.pos(value.span()))
    }

    fn policy(&self, raw: RawPolicy) -> Result<Policy, PolicyError> {
        if *raw.version.get_ref() != i64::from(VERSION) {
            return Err(PolicyError::Version {
                at: self.at(&raw.version),
                found: *raw.version.get_ref(),
            });
        }
        let name = raw.name.get_ref();
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            let message = "policy name must be non-empty, without control characters".to_owned();
            return Err(PolicyError::Invalid {
                at: self.at(&raw.name),
                message,
            });
        }
        let d = &raw.default;
        let fallback = Policy::DEFAULTS;
        let defaults = [
            d.exec.unwrap_or(fallback[0]),
            d.write.unwrap_or(fallback[1]),
            d.read.unwrap_or(fallback[2]),
            d.connect.unwrap_or(fallback[3]),
        ];
        let unix_default = self.decision_but(
            &d.unix,
            Decision::Deny,
            Decision::Ask,
            "`unix` takes \"allow\" or \"deny\" (nobody is asked about a local socket yet)",
        )?;
        let mut first_seen: HashMap<String, Pos> = HashMap::new();
        let mut rules = Vec::with_capacity(raw.rule.len());
        for r in &raw.rule {
            let rule = self.rule(r)?;
            if let Some(&first) = first_seen.get(&rule.id) {
                let at = self.at(&r.id);
                return Err(PolicyError::DuplicateId {
                    at,
                    id: rule.id,
                    first,
                });
            }
            first_seen.insert(rule.id.clone(), rule.pos);
            rules.push(rule);
        }
        let mut sockets = Vec::new();
        for s in raw.sockets.allow.iter().flat_map(|l| l.get_ref()) {
            if super::socket_bit(s.get_ref()).is_none() {
                let known: Vec<&str> = super::SOCKET_KINDS.iter().map(|(n, _)| *n).collect();
                return Err(PolicyError::Invalid {
                    at: self.at(s),
                    message: format!(
                        "unknown socket kind {:?}; known: {}",
                        s.get_ref(),
                        known.join(", ")
                    ),
                });
            }
            sockets.push(s.get_ref().clone());
        }
        sockets.sort();
        sockets.dedup();
        let mut capabilities = Vec::new();
        for c in raw.capabilities.allow.iter().flat_map(|l| l.get_ref()) {
            if super::capability_bit(c.get_ref()).is_none() {
                return Err(PolicyError::Invalid {
                    at: self.at(c),
                    message: format!(
                        "unknown capability {:?} (names as in capabilities(7), e.g. \
                         \"CAP_CHOWN\")",
                        c.get_ref()
                    ),
                });
            }
            capabilities.push(c.get_ref().clone());
        }
        capabilities.sort();
        capabilities.dedup();
        let mut namespaces = Vec::new();
        for n in raw.namespaces.allow.iter().flat_map(|l| l.get_ref()) {
            if super::namespace_grant(n.get_ref()).is_none() {
                return Err(PolicyError::Invalid {
                    at: self.at(n),
                    message: format!(
                        "unknown namespace {:?}; known: {}",
                        n.get_ref(),
                        super::NAMESPACES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            namespaces.push(n.get_ref().clone());
        }
        namespaces.sort();
        namespaces.dedup();
        let max_denials = raw
            .trust
            .max_denials
            .as_ref()
            .map(|t| self.rate(t, "denial budget"))
            .transpose()?;
        let file = self.file.to_path_buf();
        Ok(Policy {
            file,
            name: name.clone(),
            mode: raw.mode,
            audit: raw.audit,
            defaults,
            rules,
            sockets,
            capabilities,
            namespaces,
            unix_default,
            max_denials,
        })
    }

    fn rule(&self, r: &RawRule) -> Result<Rule, PolicyError> {
        let id = r.id.get_ref();
        let id_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if id.is_empty() || !id.chars().all(id_ok) {
            let message =
                format!("rule id `{id}` must be non-empty and use only A-Z a-z 0-9 _ . -");
            return Err(PolicyError::Invalid {
                at: self.at(&r.id),
                message,
            });
        }
        let pos = self.pos(r.id.span());
        let target = if r.op.get_ref().is_file() {
            self.file_target(r)?
        } else {
            self.net_target(r, pos)?
        };
        let approvers = match &r.approvers {
            None => None,
            Some(a) if r.decision != Decision::Ask => {
                return Err(PolicyError::WrongField {
                    at: self.at(a),
                    message: format!(
                        "`approvers` only applies to rules with decision = \"ask\" (rule `{id}` \
                         decides {:?})",
                        r.decision
                    ),
                });
            }
            Some(a) => {
                let a = a.get_ref();
                let group = a.group.get_ref();
                if group.is_empty() || !group.chars().all(id_ok) {
                    return Err(PolicyError::Invalid {
                        at: self.at(&a.group),
                        message: format!(
                            "approver group `{group}` must be non-empty and use only A-Z a-z \
                             0-9 _ . -"
                        ),
                    });
                }
                let t = *a.threshold.get_ref();
                if !(1..=super::MAX_APPROVERS as i64).contains(&t) {
                    return Err(PolicyError::Invalid {
                        at: self.at(&a.threshold),
                        message: format!(
                            "threshold {t} is out of range: between 1 and {}",
                            super::MAX_APPROVERS
                        ),
                    });
                }
                Some(super::Approvers {
                    group: group.clone(),
                    threshold: t as u32,
                    at: self.at(&a.group),
                })
            }
        };
        let limit = self.limit(r)?;
        Ok(Rule {
            id: id.clone(),
            op: *r.op.get_ref(),
            decision: r.decision,
            audit: r.audit,
            description: r.description.clone(),
            target,
            pos,
            approvers,
            limit,
        })
    }

    /// `limit = "30/min"` (per `s`, `min`, `h`, `day`) and `over_limit = "deny" | "ask"`, on
    /// allow rules.
    fn limit(&self, r: &RawRule) -> Result<Option<super::Limit>, PolicyError> {
        let Some(l) = &r.limit else {
            if let Some(o) = &r.over_limit {
                return Err(PolicyError::WrongField {
                    at: self.at(o),
                    message: "`over_limit` needs a `limit` on the same rule".into(),
                });
            }
            return Ok(None);
        };
        if r.decision != Decision::Allow {
            return Err(PolicyError::WrongField {
                at: self.at(l),
                message: format!(
                    "`limit` applies to allow rules (this one decides {:?}): it bounds how \
                     often an allowed action may happen",
                    r.decision
                ),
            });
        }
        let (count, window_s) = self.rate(l, "limit")?;
        let over = self.decision_but(
            &r.over_limit,
            Decision::Deny,
            Decision::Allow,
            "`over_limit` is \"deny\" or \"ask\" (past its limit an action is not allowed)",
        )?;
        Ok(Some(super::Limit {
            count,
            window_s,
            over,
        }))
    }

    /// `COUNT/PERIOD` (`s`, `min`, `h`, `day`): the count and the period in seconds.
    fn rate(&self, l: &Spanned<String>, what: &str) -> Result<(u32, u64), PolicyError> {
        let text = l.get_ref().trim();
        let bad = || PolicyError::Invalid {
            at: self.at(l),
            message: format!(
                "cannot read the {what} {text:?}: write COUNT/PERIOD with PERIOD one of s, min, \
                 h, day (e.g. \"30/min\"), COUNT between 1 and {}",
                super::MAX_LIMIT
            ),
        };
        let (count, per) = text.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let window_s = match per.trim() {
            "s" => 1,
            "min" | "m" => 60,
            "h" => 3600,
            "day" | "d" => 86400,
            _ => return Err(bad()),
        };
        if count == 0 || count > super::MAX_LIMIT {
            return Err(bad());
        }
        Ok((count, window_s))
    }

    /// A decision that may be anything but `refused` (`default` when absent).
    fn decision_but(
        &self,
        v: &Option<Spanned<Decision>>,
        default: Decision,
        refused: Decision,
        message: &str,
    ) -> Result<Decision, PolicyError> {
        match v {
            None => Ok(default),
            Some(d) if *d.get_ref() == refused => Err(PolicyError::Invalid {
                at: self.at(d),
                message: message.to_owned(),
            }),
            Some(d) => Ok(*d.get_ref()),
        }
    }

    fn file_target(&self, r: &RawRule) -> Result<Target, PolicyError> {
        let op = r.op.get_ref();
        for (key, span) in [
            ("addr", r.addr.as_ref().map(Spanned::span)),
            ("port", r.port.as_ref().map(Spanned::span)),
            ("unix", r.unix.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = span {
                let message =
                    format!("`{key}` only applies to connect rules, not to a `{op}` rule");
                return Err(PolicyError::WrongField {
                    at: Location::new(self.file, self.pos(span)),
                    message,
                });
            }
        }
        let Some(paths) = &r.path else {
            let message = format!("a `{op}` rule needs `path`");
            return Err(PolicyError::WrongField {
                at: self.at(&r.op),
                message,
            });
        };
        self.non_empty(paths, "path")?;
        let specs = paths
            .get_ref()
            .iter()
            .map(|p| self.path_spec(p))
            .collect::<Result<_, _>>()?;
        Ok(Target::Paths(specs))
    }

    fn net_target(&self, r: &RawRule, rule_pos: Pos) -> Result<Target, PolicyError> {
        if let Some(unix) = &r.unix {
            return self.unix_target(r, unix);
        }
        if let Some(path) = &r.path {
            let message = "`path` does not apply to connect rules (they take `addr` and `port`, \
                           or `unix` for local sockets)"
                .to_owned();
            return Err(PolicyError::WrongField {
                at: self.at(path),
                message,
            });
        }
        let addrs = match &r.addr {
            None => [Cidr::ANY_V4, Cidr::ANY_V6]
                .map(|cidr| AddrSpec {
                    cidr,
                    pos: rule_pos,
                })
                .to_vec(),
            Some(list) => {
                self.non_empty(list, "addr")?;
                list.get_ref()
                    .iter()
                    .map(|a| self.addr(a))
                    .collect::<Result<_, _>>()?
            }
        };
        let ports = match &r.port {
            None => vec![PortRange::ALL],
            Some(list) => {
                self.non_empty(list, "port")?;
                list.get_ref()
                    .iter()
                    .map(|p| self.port(p))
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(Target::Net { addrs, ports })
    }

    /// A connect rule for unix sockets: the socket files (or directories of them, `dir/**`)
    /// it names, decided like file paths.
    fn unix_target(&self, r: &RawRule, unix: &SpannedList<String>) -> Result<Target, PolicyError> {
        for (key, span) in [
            ("addr", r.addr.as_ref().map(Spanned::span)),
            ("port", r.port.as_ref().map(Spanned::span)),
            ("path", r.path.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = span {
                let message = format!(
                    "`{key}` does not go with `unix` in one rule: a rule is about unix sockets \
                     or about addresses"
                );
                return Err(PolicyError::WrongField {
                    at: Location::new(self.file, self.pos(span)),
                    message,
                });
            }
        }
        self.non_empty(unix, "unix")?;
        let mut specs = Vec::new();
        for u in unix.get_ref() {
            if let Some(name) = u.get_ref().strip_prefix('@') {
                specs.push(self.abstract_name(u, name)?);
                continue;
            }
            specs.push(self.path_spec(u)?);
        }
        Ok(Target::Paths(specs))
    }

    /// An abstract socket name (`@name`), matched exactly: no patterns, no variables.
    fn abstract_name(&self, u: &Spanned<String>, name: &str) -> Result<PathSpec, PolicyError> {
        let message = if name.bytes().all(|b| b == 0) {
            Some("an abstract socket name is empty: write `@` and the name".to_owned())
        } else if name.len() > gate_common::unix_name::MAX_LEN {
            Some(format!(
                "an abstract socket name is {} bytes long; the kernel allows at most {}",
                name.len(),
                gate_common::unix_name::MAX_LEN
            ))
        } else if name.contains(['*', '?', '[', '{']) || name.contains("${") {
            Some(
                "abstract socket names are matched exactly: patterns and variables do not \
                 apply to them (a `unix` rule for a directory of socket files takes `dir/**`)"
                    .to_owned(),
            )
        } else {
            None
        };
        if let Some(message) = message {
            return Err(PolicyError::Invalid {
                at: self.at(u),
                message,
            });
        }
        Ok(PathSpec {
            raw: u.get_ref().clone(),
            subtree: false,
            pos: self.at(u).pos,
        })
    }

    fn non_empty<T>(&self, list: &SpannedList<T>, key: &str) -> Result<(), PolicyError> {
        if list.get_ref().is_empty() {
            let message = format!("`{key}` is empty: leave it out or list at least one value");
            return Err(PolicyError::Invalid {
                at: self.at(list),
                message,
            });
        }
        Ok(())
    }

    fn addr(&self, a: &Spanned<String>) -> Result<AddrSpec, PolicyError> {
        let value = a.get_ref();
        let cidr = Cidr::parse(value).map_err(|reason| PolicyError::BadAddress {
            at: self.at(a),
            value: value.clone(),
            reason,
        })?;
        Ok(AddrSpec {
            cidr,
            pos: self.pos(a.span()),
        })
    }

    fn port(&self, p: &Spanned<RawPort>) -> Result<PortRange, PolicyError> {
        let (parsed, value) = match p.get_ref() {
            RawPort::Int(n) => (PortRange::from_int(*n), n.to_string()),
            RawPort::Text(s) => (PortRange::parse(s), s.clone()),
        };
        parsed.map_err(|reason| PolicyError::BadPort {
            at: self.at(p),
            value,
            reason,
        })
    }

    fn path_spec(&self, p: &Spanned<String>) -> Result<PathSpec, PolicyError> {
        let raw = p.get_ref();
        let at = self.at(p);
        let literal = strip_variables(raw).map_err(|message| PolicyError::Variable {
            at: at.clone(),
            message,
        })?;
        let is_glob = |s: &str| s.contains(['*', '?', '[', '{']);
        let subtree = literal.ends_with("/**");
        let body = if subtree {
            &literal[..literal.len() - 3]
        } else {
            literal.as_str()
        };
        if is_glob(body) {
            return Err(PolicyError::UnsupportedGlob {
                at,
                pattern: raw.clone(),
            });
        }
        let absolute = ["/", "~/", "${home}", "${workspace}"]
            .iter()
            .any(|s| raw.starts_with(s))
            || raw == "~";
        if !absolute {
            return Err(PolicyError::NotAbsolute {
                at,
                path: raw.clone(),
            });
        }
        Ok(PathSpec {
            raw: raw.clone(),
            subtree,
            pos: at.pos,
        })
    }
}

/// The pattern with its `${…}` variables removed; an error for unknown or unterminated ones.
fn strip_variables(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated `${{` in `{raw}`"));
        };
        let name = &after[..end];
        if !matches!(name, "workspace" | "home") {
            return Err(format!(
                "unknown variable `${{{name}}}` in `{raw}` (known: ${{workspace}}, ${{home}})"
            ));
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Policy {
    /// A canonical text form of the policy: one line per setting and per rule, rules sorted by
    /// id and each rule's paths, addresses and ports sorted, defaults spelled out. Formatting,
    /// comments, rule order and keys left at their default do not change it.
    pub fn canonical(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut out = format!(
            "gate-policy v{VERSION}\nname {}\nmode {}\naudit {}\n",
            q(&self.name),
            self.mode.name(),
            self.audit.name()
        );
        for op in Op::ALL {
            out += &format!(
                "default {} {}\n",
                op.name(),
                self.defaults[op.index()].name()
            );
        }
        // Only when present: the digests of policies without the section stay as they were.
        if !self.sockets.is_empty() {
            out += &format!("sockets {}\n", self.sockets.join(","));
        }
        if !self.capabilities.is_empty() {
            out += &format!("capabilities {}\n", self.capabilities.join(","));
        }
        if !self.namespaces.is_empty() {
            out += &format!("namespaces {}\n", self.namespaces.join(","));
        }
        if self.unix_default == Decision::Allow {
            out += "default unix allow\n";
        }
        if let Some((n, w)) = self.max_denials {
            out += &format!("trust max_denials {n}/{w}s\n");
        }
        let mut rules: Vec<String> = self.rules.iter().map(|r| canonical_rule(r, &q)).collect();
        rules.sort();
        for r in rules {
            out += &r;
            out.push('\n');
        }
        out
    }

    /// SHA-256 of [`Policy::canonical`].
    pub fn digest(&self) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, self.canonical().as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

fn canonical_rule(r: &Rule, q: &dyn Fn(&str) -> String) -> String {
    let mut items: Vec<String> = match &r.target {
        Target::Paths(paths) => {
            let key = if r.op.is_file() { "path" } else { "unix" };
            paths
                .iter()
                .map(|p| format!("{key} {}", q(&p.raw)))
                .collect()
        }
        Target::Net { addrs, ports } => {
            let a = addrs.iter().map(|a| format!("addr {}", a.cidr));
            a.chain(ports.iter().map(|p| format!("port {p}"))).collect()
        }
    };
    items.sort();
    items.dedup();
    // Only when present: the digests of rules without them stay as they were.
    if let Some(a) = &r.approvers {
        items.push(format!("approvers {} {}", q(&a.group), a.threshold));
    }
    if let Some(l) = &r.limit {
        items.push(format!(
            "limit {}/{}s over {}",
            l.count,
            l.window_s,
            l.over.name()
        ));
    }
    let description = r.description.as_deref().map_or("-".to_owned(), q);
    format!(
        "rule {} op {} decision {} audit {} description {} {}",
        q(&r.id),
        r.op.name(),
        r.decision.name(),
        r.audit,
        description,
        items.join(" ")
    )
}
