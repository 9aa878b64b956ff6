//! A stable, human-readable text form of a [`CompiledPolicy`] (golden tests, `policy show`).
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use gate_common::{InodeKey, InodeRule, MAX_PORT_RULES, NetRule, decision, op};

use super::{CompiledPolicy, Op};

/// Text of a decision byte: `allow`, `ask`, `deny`, `none`, with `+audit` when the bit is set.
pub(super) fn decision_text(byte: u8) -> String {
    let base = match byte & decision::MASK {
        decision::ALLOW => "allow",
        decision::ASK => "ask",
        decision::DENY => "deny",
        _ => "none",
    };
    if byte & decision::AUDIT != 0 {
        format!("{base}+audit")
    } else {
        base.to_owned()
    }
}

impl CompiledPolicy {
    /// Every setting and map entry as text, one item per line, in a stable order:
    /// header, rules (by index), inodes (by device and inode number), the paths watched for
    /// (pending-name entries, by the count), IPv4 then IPv6 prefixes
    /// (by length then address), warnings. Device numbers print as `major:minor`.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        self.dump_header(&mut out);
        let _ = writeln!(out, "rules {}", self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            let audit = if r.audit { " audit" } else { "" };
            let _ = writeln!(out, "  #{i} {} {} {}{audit}", r.id, r.op, r.decision);
        }
        let _ = writeln!(out, "inodes {}", self.inodes.len());
        for (key, value) in &self.inodes {
            self.dump_inode(&mut out, key, value);
        }
        let _ = writeln!(out, "pending {}", self.pending.len());
        for (watched, below) in &self.pending_paths {
            let _ = writeln!(
                out,
                "  {} (watched below {})",
                watched.display(),
                below.display()
            );
        }
        let _ = writeln!(out, "net4 {}", self.net4.len());
        for ((len, addr), value) in &self.net4 {
            let prefix = format!("{}/{len}", Ipv4Addr::from(*addr));
            let _ = writeln!(out, "  {prefix:<18} {}", self.ports_text(value));
        }
        let _ = writeln!(out, "net6 {}", self.net6.len());
        for ((len, addr), value) in &self.net6 {
            let prefix = format!("{}/{len}", Ipv6Addr::from(*addr));
            let _ = writeln!(out, "  {prefix:<18} {}", self.ports_text(value));
        }
        let _ = writeln!(out, "warnings {}", self.warnings.len());
        for w in &self.warnings {
            let _ = writeln!(out, "  {w}");
        }
        out
    }

    fn dump_header(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "policy {}",
            serde_json::to_string(&self.name).unwrap_or_default()
        );
        let _ = writeln!(out, "mode {}", self.mode.name());
        let _ = writeln!(
            out,
            "audit {}",
            if self.audit_required {
                "required"
            } else {
                "best-effort"
            }
        );
        let _ = writeln!(out, "digest {}", self.digest_hex());
        let defaults: Vec<String> = Op::ALL
            .iter()
            .map(|op| format!("{op}={}", decision_text(self.defaults[op.index()])))
            .collect();
        let _ = writeln!(out, "defaults {}", defaults.join(" "));
        let _ = writeln!(out, "has_read_rules {}", self.has_read_rules);
    }

    fn dump_inode(&self, out: &mut String, key: &InodeKey, value: &InodeRule) {
        let path = self
            .inode_paths
            .get(key)
            .map_or("?".into(), |p| p.display().to_string());
        let (major, minor) = (key.dev >> 20, key.dev & 0xf_ffff);
        let _ = writeln!(out, "  {major}:{minor}/{} {path}", key.ino);
        if value.pending != 0 {
            let _ = writeln!(out, "    names watched below (node {})", value.pending);
        }
        for (label, decisions, rules) in [
            ("exact", &value.exact, &value.exact_rule),
            ("subtree", &value.subtree, &value.subtree_rule),
        ] {
            let slots: Vec<String> = (0..op::FILE_OPS)
                .filter(|&i| decisions[i] != decision::NONE)
                .map(|i| {
                    let op_name = Op::ALL.get(i).map_or("spare", |op| op.name());
                    format!("{op_name}={}", self.slot_text(decisions[i], rules[i]))
                })
                .collect();
            if !slots.is_empty() {
                let _ = writeln!(out, "    {label} {}", slots.join(" "));
            }
        }
    }

    fn slot_text(&self, byte: u8, rule: u16) -> String {
        format!("{}(#{rule} {})", decision_text(byte), self.rule_name(rule))
    }

    fn ports_text(&self, value: &NetRule) -> String {
        let count = (value.count as usize).min(MAX_PORT_RULES);
        let ranges: Vec<String> = value.ports[..count]
            .iter()
            .map(|p| {
                let range = if p.lo == p.hi {
                    p.lo.to_string()
                } else {
                    format!("{}-{}", p.lo, p.hi)
                };
                format!("{range}={}", self.slot_text(p.decision, p.rule))
            })
            .collect();
        ranges.join(" ")
    }
}
