//! `gate policy diff OLD NEW`: what NEW would allow that OLD does not, and what it no longer
//! allows, read from the two policies as written (paths keep their variables: nothing is
//! looked up on this host). Rules are compared item by item (one path, unix socket, or address
//! and port range of a rule): a broader pattern in NEW shows as an item OLD does not have,
//! not as the narrower items it covers. An item only one side names, with the decision the
//! other side's default gives it anyway, is no difference.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{Decision, Mode, Op, Policy, Target};
use crate::policy::AuditLevel;

/// One difference; `widens` when NEW allows more than OLD there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub widens: bool,
    pub text: String,
}

/// How much a decision lets through: deny < ask < allow.
fn openness(d: Decision) -> u8 {
    match d {
        Decision::Deny => 0,
        Decision::Ask => 1,
        Decision::Allow => 2,
    }
}

/// Every item the rules of `p` name, by (op, item), with the most severe decision any rule
/// gives it (deny wins, as in the kernel) and the id of the rule that gives it.
fn items(p: &Policy) -> BTreeMap<(Op, String), (Decision, String)> {
    let mut out: BTreeMap<(Op, String), (Decision, String)> = BTreeMap::new();
    for r in &p.rules {
        let names: Vec<String> = match &r.target {
            Target::Paths(specs) => {
                let key = if r.op == Op::Connect { "unix" } else { "path" };
                specs.iter().map(|s| format!("{key} {}", s.raw)).collect()
            }
            Target::Net { addrs, ports } => addrs
                .iter()
                .flat_map(|a| {
                    ports
                        .iter()
                        .map(move |p| format!("addr {} port {p}", a.cidr))
                })
                .collect(),
        };
        for name in names {
            let key = (r.op, name);
            let e = out.entry(key).or_insert((r.decision, r.id.clone()));
            if openness(r.decision) < openness(e.0) {
                *e = (r.decision, r.id.clone());
            }
        }
    }
    out
}

fn set_changes(out: &mut Vec<Change>, what: &str, old: &[String], new: &[String]) {
    for n in new.iter().filter(|n| !old.contains(n)) {
        out.push(Change {
            widens: true,
            text: format!("{what} {n} allowed"),
        });
    }
    for o in old.iter().filter(|o| !new.contains(o)) {
        out.push(Change {
            widens: false,
            text: format!("{what} {o} no longer allowed"),
        });
    }
}

fn decision_change(out: &mut Vec<Change>, what: &str, old: Decision, new: Decision) {
    if old != new {
        out.push(Change {
            widens: openness(new) > openness(old),
            text: format!("{what}: {old} → {new}"),
        });
    }
}

/// What `p` decides for an item no rule names: `[default] unix` for unix sockets, else the
/// operation's default.
fn default_for(p: &Policy, op: Op, item: &str) -> Decision {
    if item.starts_with("unix ") {
        return p.unix_default;
    }
    p.defaults[op.index()]
}

/// The differences between OLD and NEW, widening ones first.
pub fn diff(old: &Policy, new: &Policy) -> Vec<Change> {
    let mut out = Vec::new();
    if old.mode != new.mode {
        out.push(Change {
            widens: new.mode == Mode::Audit,
            text: match new.mode {
                Mode::Audit => "mode enforce → audit: denials are reported, not enforced".into(),
                Mode::Enforce => "mode audit → enforce: denials are enforced".into(),
            },
        });
    }
    if old.audit != new.audit {
        out.push(Change {
            widens: new.audit == AuditLevel::BestEffort,
            text: match new.audit {
                AuditLevel::BestEffort => {
                    "audit required → best-effort: an action that cannot be recorded is no \
                     longer denied"
                        .into()
                }
                AuditLevel::Required => {
                    "audit best-effort → required: an action that cannot be recorded is denied"
                        .into()
                }
            },
        });
    }
    for op in Op::ALL {
        let i = op.index();
        decision_change(
            &mut out,
            &format!("default {}", op.name()),
            old.defaults[i],
            new.defaults[i],
        );
    }
    decision_change(&mut out, "default unix", old.unix_default, new.unix_default);
    set_changes(&mut out, "capability", &old.capabilities, &new.capabilities);
    set_changes(&mut out, "namespace", &old.namespaces, &new.namespaces);
    set_changes(&mut out, "socket kind", &old.sockets, &new.sockets);
    let (old_items, new_items) = (items(old), items(new));
    for ((op, item), (d, id)) in &new_items {
        let op_name = op.name();
        match old_items.get(&(*op, item.clone())) {
            None => {
                let before = default_for(old, *op, item);
                if before == *d {
                    continue;
                }
                out.push(Change {
                    widens: openness(*d) > openness(before),
                    text: format!(
                        "{d} {op_name} {item} (rule `{id}`, new; {before} by default before)"
                    ),
                });
            }
            Some((od, oid)) if od != d => out.push(Change {
                widens: openness(*d) > openness(*od),
                text: format!("{op_name} {item}: {od} (rule `{oid}`) → {d} (rule `{id}`)"),
            }),
            Some(_) => {}
        }
    }
    for ((op, item), (d, id)) in &old_items {
        if !new_items.contains_key(&(*op, item.clone())) {
            let after = default_for(new, *op, item);
            if after == *d {
                continue;
            }
            out.push(Change {
                widens: openness(after) > openness(*d),
                text: format!(
                    "{} {item}: {d} (rule `{id}`) → {after} by default (no rule names it)",
                    op.name()
                ),
            });
        }
    }
    out.sort_by_key(|c| !c.widens);
    out
}

/// The report `gate policy diff` prints.
pub fn render(old_name: &str, new_name: &str, changes: &[Change]) -> String {
    let mut s = String::new();
    let (wider, narrower): (Vec<&Change>, Vec<&Change>) = changes.iter().partition(|c| c.widens);
    if changes.is_empty() {
        let _ = writeln!(s, "{new_name} allows and denies what {old_name} does");
        return s;
    }
    if wider.is_empty() {
        let _ = writeln!(s, "{new_name} allows nothing {old_name} does not");
    } else {
        let _ = writeln!(s, "{new_name} allows what {old_name} does not:");
        for c in wider {
            let _ = writeln!(s, "  + {}", c.text);
        }
    }
    if !narrower.is_empty() {
        let _ = writeln!(s, "{new_name} allows less than {old_name}:");
        for c in narrower {
            let _ = writeln!(s, "  - {}", c.text);
        }
    }
    s
}
