//! Unit tests of parsing and compilation: every error kind with its location, and the semantics.
use std::io;
use std::path::{Path, PathBuf};

use gate_common::{InodeKey, InodeRule, PendingKey, PendingRule, decision, op, rule as rule_idx};

use super::*;

const HEAD: &str = "version = 1\nname = \"t\"\nmode = \"enforce\"\n";

fn parse_str(src: &str) -> Result<Policy, PolicyError> {
    parse(src, Path::new("p.toml"))
}

/// The error message of a policy that must not parse.
fn parse_err(src: &str) -> String {
    parse_str(src)
        .expect_err("policy should be rejected")
        .to_string()
}

/// The error message of a policy (after `HEAD`) that must not parse.
fn rule_err(body: &str) -> String {
    parse_err(&format!("{HEAD}{body}"))
}

fn vars() -> Vars {
    Vars {
        workspace: Some(PathBuf::from("/work/ws")),
        home: PathBuf::from("/home/u"),
    }
}

fn fs() -> MemResolver {
    MemResolver::new()
        .dir("/usr/bin")
        .file("/usr/bin/curl")
        .file("/usr/bin/git")
        .dir("/home/u/.ssh")
        .file("/home/u/.ssh/id_ed25519")
        .file("/home/u/.bashrc")
        .dir("/work/ws/.git/hooks")
        .file("/work/ws/.git/config")
        .dir("/tmp")
}

fn compile_with(body: &str, r: &dyn Resolver) -> Result<CompiledPolicy, PolicyError> {
    compile(&parse_str(&format!("{HEAD}{body}"))?, &vars(), r)
}

fn compile_ok(body: &str) -> CompiledPolicy {
    compile_with(body, &fs()).expect("policy should compile")
}

fn compile_err(body: &str) -> String {
    compile_with(body, &fs())
        .expect_err("policy should not compile")
        .to_string()
}

fn inode(c: &CompiledPolicy, r: &MemResolver, path: &str) -> InodeRule {
    let key = r.resolve(Path::new(path)).unwrap().key;
    *c.inodes
        .get(&key)
        .unwrap_or_else(|| panic!("no inode entry for {path}"))
}

fn rule_index(c: &CompiledPolicy, id: &str) -> u16 {
    c.rules.iter().position(|r| r.id == id).unwrap() as u16
}

// ---- syntax and shape errors, located by the TOML parser ----

#[test]
fn toml_syntax_error_is_located() {
    assert_eq!(
        parse_err("version = 1\nname = \n"),
        "p.toml:2:8: string values must be quoted, expected literal string"
    );
}

#[test]
fn unknown_keys_are_rejected_everywhere() {
    let top = parse_err(&format!("{HEAD}colour = \"red\"\n"));
    assert!(
        top.starts_with("p.toml:4:1: unknown field `colour`"),
        "{top}"
    );
    let default = rule_err("[default]\nexec = \"deny\"\nexecute = \"deny\"\n");
    assert!(
        default.starts_with("p.toml:6:1: unknown field `execute`"),
        "{default}"
    );
    let rule =
        rule_err("[[rule]]\nid = \"a\"\nop = \"exec\"\npaths = [\"/x\"]\ndecision = \"allow\"\n");
    assert!(
        rule.starts_with("p.toml:7:1: unknown field `paths`"),
        "{rule}"
    );
}

#[test]
fn wrong_version_points_at_the_value() {
    let e = parse_err("name = \"t\"\nversion = 2\nmode = \"enforce\"\n");
    assert_eq!(
        e,
        "p.toml:2:11: unsupported policy version 2, this gate supports version 1"
    );
    let e = parse_err("version = \"1\"\nname = \"t\"\nmode = \"enforce\"\n");
    assert!(
        e.starts_with("p.toml:1:11: invalid type: string \"1\", expected i64"),
        "{e}"
    );
}

#[test]
fn bad_names_of_modes_ops_and_decisions() {
    let e = parse_err("version = 1\nname = \"t\"\nmode = \"permissive\"\n");
    assert_eq!(
        e,
        "p.toml:3:8: unknown variant `permissive`, expected `enforce` or `audit`"
    );
    let e = parse_err(&format!("{HEAD}audit = \"always\"\n"));
    assert_eq!(
        e,
        "p.toml:4:9: unknown variant `always`, expected `best-effort` or `required`"
    );
    let e = rule_err("[[rule]]\nid = \"a\"\nop = \"run\"\npath = [\"/x\"]\ndecision = \"allow\"\n");
    assert_eq!(
        e,
        "p.toml:6:6: unknown variant `run`, expected one of `exec`, `write`, `read`, `connect`"
    );
    let e =
        rule_err("[[rule]]\nid = \"a\"\nop = \"exec\"\npath = [\"/x\"]\ndecision = \"maybe\"\n");
    assert_eq!(
        e,
        "p.toml:8:12: unknown variant `maybe`, expected one of `allow`, `ask`, `deny`"
    );
    let e = rule_err("[default]\nread = \"block\"\n");
    assert_eq!(
        e,
        "p.toml:5:8: unknown variant `block`, expected one of `allow`, `ask`, `deny`"
    );
}

#[test]
fn missing_required_keys() {
    let e = parse_err("version = 1\nmode = \"enforce\"\n");
    assert!(e.starts_with("p.toml:1:1: missing field `name`"), "{e}");
    let e = rule_err("[[rule]]\nop = \"exec\"\npath = [\"/x\"]\ndecision = \"allow\"\n");
    assert!(e.starts_with("p.toml:4:1: missing field `id`"), "{e}");
}

// ---- value errors ----

#[test]
fn empty_policy_name() {
    let e = parse_err("version = 1\nname = \" \"\nmode = \"audit\"\n");
    assert_eq!(
        e,
        "p.toml:2:8: policy name must be non-empty, without control characters"
    );
}

#[test]
fn bad_rule_ids() {
    for id in ["", "has space", "slash/y", "ünïcode"] {
        let e = rule_err(&format!(
            "[[rule]]\nid = \"{id}\"\nop = \"exec\"\npath = [\"/x\"]\ndecision = \"allow\"\n"
        ));
        assert_eq!(
            e,
            format!("p.toml:5:6: rule id `{id}` must be non-empty and use only A-Z a-z 0-9 _ . -")
        );
    }
}

#[test]
fn duplicate_rule_ids() {
    let rule = "[[rule]]\nid = \"same\"\nop = \"exec\"\npath = [\"/x\"]\ndecision = \"allow\"\n";
    let e = rule_err(&format!("{rule}{rule}"));
    assert_eq!(
        e,
        "p.toml:10:6: duplicate rule id `same` (first defined at 5:6)"
    );
}

#[test]
fn keys_that_do_not_fit_the_op() {
    let e =
        rule_err("[[rule]]\nid = \"a\"\nop = \"connect\"\npath = [\"/x\"]\ndecision = \"allow\"\n");
    assert_eq!(
        e,
        "p.toml:7:8: `path` does not apply to connect rules (they take `addr` and `port`, or `unix` for local sockets)"
    );
    let e = rule_err(
        "[[rule]]\nid = \"a\"\nop = \"write\"\npath = [\"/x\"]\naddr = [\"::1\"]\ndecision = \"allow\"\n",
    );
    assert_eq!(
        e,
        "p.toml:8:8: `addr` only applies to connect rules, not to a `write` rule"
    );
    let e = rule_err(
        "[[rule]]\nid = \"a\"\nop = \"read\"\npath = [\"/x\"]\nport = [22]\ndecision = \"allow\"\n",
    );
    assert_eq!(
        e,
        "p.toml:8:8: `port` only applies to connect rules, not to a `read` rule"
    );
    let e = rule_err("[[rule]]\nid = \"a\"\nop = \"exec\"\ndecision = \"allow\"\n");
    assert_eq!(e, "p.toml:6:6: a `exec` rule needs `path`");
}

#[test]
fn empty_lists() {
    let e = rule_err("[[rule]]\nid = \"a\"\nop = \"exec\"\npath = []\ndecision = \"allow\"\n");
    assert_eq!(
        e,
        "p.toml:7:8: `path` is empty: leave it out or list at least one value"
    );
    let e = rule_err("[[rule]]\nid = \"a\"\nop = \"connect\"\naddr = []\ndecision = \"allow\"\n");
    assert_eq!(
        e,
        "p.toml:7:8: `addr` is empty: leave it out or list at least one value"
    );
    let e = rule_err("[[rule]]\nid = \"a\"\nop = \"connect\"\nport = []\ndecision = \"allow\"\n");
    assert_eq!(
        e,
        "p.toml:7:8: `port` is empty: leave it out or list at least one value"
    );
}

fn path_err(path: &str) -> String {
    rule_err(&format!(
        "[[rule]]\nid = \"a\"\nop = \"exec\"\npath = [\"/ok\", '{path}']\ndecision = \"allow\"\n"
    ))
}

#[test]
fn unsupported_globs() {
    for glob in [
        "/usr/*/bin",
        "/usr/bin/*",
        "/a/**/b",
        "/a/b/**/",
        "/a?",
        "/a[bc]",
        "/a/{b,c}",
        "/a**",
        "**",
        "${home}/*",
    ] {
        assert_eq!(
            path_err(glob),
            format!("p.toml:7:16: unsupported glob `{glob}`, only a trailing /** is supported"),
        );
    }
}

#[test]
fn bad_variables() {
    assert_eq!(
        path_err("${HOME}/x"),
        "p.toml:7:16: unknown variable `${HOME}` in `${HOME}/x` (known: ${workspace}, ${home})"
    );
    assert_eq!(
        path_err("${workspace/x"),
        "p.toml:7:16: unterminated `${` in `${workspace/x`"
    );
}

#[test]
fn relative_paths() {
    for rel in ["usr/bin", "", "./x", "~user/x", "$home/x", "x/${home}"] {
        assert_eq!(
            path_err(rel),
            format!("p.toml:7:16: path `{rel}` is not absolute (after substitution)")
        );
    }
}

fn connect_err(field: &str) -> String {
    rule_err(&format!(
        "[[rule]]\nid = \"a\"\nop = \"connect\"\n{field}\ndecision = \"allow\"\n"
    ))
}

#[test]
fn bad_addresses() {
    assert_eq!(
        connect_err("addr = [\"::1\", \"10.0.0.0/33\"]"),
        "p.toml:7:16: bad address `10.0.0.0/33`: prefix length `33` is not a number in 0..=32"
    );
    assert_eq!(
        connect_err("addr = [\"localhost\"]"),
        "p.toml:7:9: bad address `localhost`: `localhost` is not an IP address"
    );
    assert_eq!(
        connect_err("addr = [\"192.168.1.1/24\"]"),
        "p.toml:7:9: bad address `192.168.1.1/24`: host bits are set (did you mean 192.168.1.0/24?)"
    );
    let e = connect_err("addr = [10]");
    assert!(
        e.starts_with("p.toml:7:9: invalid type: integer `10`, expected a string"),
        "{e}"
    );
}

#[test]
fn bad_ports() {
    assert_eq!(
        connect_err("port = [22, \"70000\"]"),
        "p.toml:7:13: bad port range `70000`: 70000 is not a port in 0..=65535"
    );
    assert_eq!(
        connect_err("port = [\"10-5\"]"),
        "p.toml:7:9: bad port range `10-5`: 10 is above 5"
    );
    assert_eq!(
        connect_err("port = [-1]"),
        "p.toml:7:9: bad port range `-1`: -1 is not a port in 0..=65535"
    );
    assert_eq!(
        connect_err("port = [\"ssh\"]"),
        "p.toml:7:9: bad port range `ssh`: `ssh` is not a port number"
    );
    let e = connect_err("port = [true]");
    assert!(
        e.starts_with("p.toml:7:9: invalid type: boolean `true`, expected a port number"),
        "{e}"
    );
}

// ---- compile errors ----

#[test]
fn workspace_variable_without_workspace() {
    let policy = parse_str(&format!(
        "{HEAD}[[rule]]\nid = \"ws\"\nop = \"write\"\npath = [\"${{workspace}}/**\"]\ndecision = \"allow\"\n"
    ))
    .unwrap();
    let no_ws = Vars {
        workspace: None,
        home: "/home/u".into(),
    };
    let e = compile(&policy, &no_ws, &fs()).unwrap_err().to_string();
    assert_eq!(
        e,
        "p.toml:7:9: `${workspace}` is used but no workspace was given (--workspace)"
    );
    let gone = Vars {
        workspace: Some("/nowhere".into()),
        home: "/home/u".into(),
    };
    let e = compile(&policy, &gone, &fs()).unwrap_err().to_string();
    assert!(
        e.starts_with("p.toml:7:9: the workspace `/nowhere` cannot be resolved: "),
        "{e}"
    );
    let relative = Vars {
        workspace: Some("ws".into()),
        home: "/home/u".into(),
    };
    let r = MemResolver::new().dir("/ws");
    let e = compile(&policy, &relative, &r).unwrap_err().to_string();
    assert_eq!(
        e,
        "p.toml:7:9: path `ws` is not absolute (after substitution)"
    );
}

#[test]
fn subtree_of_a_file() {
    let e = compile_err(
        "[[rule]]\nid = \"a\"\nop = \"exec\"\npath = [\"/usr/bin/curl/**\"]\ndecision = \"deny\"\n",
    );
    assert_eq!(
        e,
        "p.toml:7:9: `/usr/bin/curl` is not a directory, so `/usr/bin/curl/**` cannot match anything below it"
    );
}

struct FailingResolver;

impl Resolver for FailingResolver {
    fn resolve(&self, _: &Path) -> io::Result<Resolved> {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
    fn hardlinked_files_under(&self, _: &Path, _: usize) -> io::Result<HardlinkScan> {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
}

#[test]
fn unresolvable_path_is_an_error_but_a_missing_one_is_not() {
    let body = "[[rule]]\nid = \"a\"\nop = \"read\"\npath = [\"/secret\"]\ndecision = \"deny\"\n";
    let e = compile_with(body, &FailingResolver)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "p.toml:7:9: cannot resolve `/secret`: permission denied");
    let c = compile_ok(body);
    assert_eq!(
        c.warnings,
        [
            "p.toml:7:9: warning: rule `a`: `/secret` does not exist yet; the rule applies to it once created (its name is watched below `/`)"
        ]
    );
    let through_file = compile_ok(
        "[[rule]]\nid = \"a\"\nop = \"read\"\npath = [\"/usr/bin/curl/x\"]\ndecision = \"deny\"\n",
    );
    assert_eq!(through_file.warnings.len(), 1);
}

/// The pending entry of `names` below the existing directory `base`, following the nodes.
fn pending_rule(c: &CompiledPolicy, r: &MemResolver, base: &str, names: &[&str]) -> PendingRule {
    let mut node = inode(c, r, base).pending;
    assert_ne!(node, 0, "{base} has no pending node");
    let mut found = None;
    for name in names {
        assert_ne!(node, 0, "no node below {name}");
        let key = PendingKey {
            slot: 0,
            node,
            len: name.len() as u32,
            _pad: 0,
            hash: gate_common::pending::hash(name.as_bytes()),
        };
        let p = *c
            .pending
            .get(&key)
            .unwrap_or_else(|| panic!("no pending entry for {name}"));
        node = p.rule.pending;
        found = Some(p);
    }
    found.expect("at least one name")
}

#[test]
fn rules_on_missing_paths_are_watched_by_name_below_their_deepest_existing_directory() {
    let body = "[[rule]]\nid = \"hooks\"\nop = \"write\"\npath = [\"${workspace}/.git/hooks/pre-commit\", \"${home}/.config/autostart/**\"]\ndecision = \"deny\"\n\n[[rule]]\nid = \"build\"\nop = \"exec\"\npath = [\"${home}/.config/tools/**\"]\ndecision = \"allow\"\n";
    let c = compile_ok(body);
    let r = fs();
    let (hooks, build) = (rule_index(&c, "hooks"), rule_index(&c, "build"));
    let w = usize::from(op::WRITE);
    let x = usize::from(op::EXEC);
    // An exact name below an existing directory: its exact rule, guarded.
    let p = pending_rule(&c, &r, "/work/ws/.git/hooks", &["pre-commit"]);
    assert_eq!(p.rule.exact[w], decision::DENY);
    assert_eq!(p.rule.exact_rule[w], hooks);
    assert_eq!(p.rule.subtree[w], decision::NONE);
    assert_eq!(p.guard, hooks);
    assert_eq!(p.rule.pending, 0);
    // Two missing levels: the first is a node on the way, guarded, with no rule of its own;
    // the last protects its own name and everything below.
    let mid = pending_rule(&c, &r, "/home/u", &[".config"]);
    assert_eq!(mid.rule.exact, [decision::NONE; 4]);
    assert_eq!(mid.guard, hooks);
    let p = pending_rule(&c, &r, "/home/u", &[".config", "autostart"]);
    assert_eq!(
        (p.rule.exact[w], p.rule.subtree[w]),
        (decision::DENY, decision::DENY)
    );
    // An allow rule shares the nodes on the way and guards nothing.
    let p = pending_rule(&c, &r, "/home/u", &[".config", "tools"]);
    assert_eq!(
        (p.rule.subtree[x], p.rule.subtree_rule[x]),
        (decision::ALLOW, build)
    );
    assert_eq!(p.guard, rule_idx::DEFAULT);
    assert_eq!(c.pending.len(), 4);
    assert_eq!(c.pending_paths.len(), 3);
}

#[test]
fn missing_paths_too_deep_with_dots_or_long_allowed_names_are_errors() {
    let deep = "[[rule]]\nid = \"a\"\nop = \"write\"\npath = [\"/tmp/1/2/3/4/5/6/7/8/9\"]\ndecision = \"deny\"\n";
    assert_eq!(
        compile_err(deep),
        "p.toml:7:9: `/tmp/1/2/3/4/5/6/7/8/9` has 9 components below `/tmp`, its deepest existing directory; gate watches for at most 8 (create some of them first)"
    );
    let long = "x".repeat(65);
    let allow = format!(
        "[[rule]]\nid = \"a\"\nop = \"write\"\npath = [\"/tmp/{long}\"]\ndecision = \"allow\"\n"
    );
    assert!(
        compile_err(&allow).contains("longer than 64 bytes"),
        "{}",
        compile_err(&allow)
    );
    let deny = allow.replace("\"allow\"", "\"deny\"");
    assert_eq!(compile_ok(&deny).pending.len(), 1);
    let dots =
        "[[rule]]\nid = \"a\"\nop = \"write\"\npath = [\"/tmp/x/../y\"]\ndecision = \"deny\"\n";
    assert!(
        compile_err(dots).contains("without `.` or `..`"),
        "{}",
        compile_err(dots)
    );
}

#[test]
fn too_many_port_ranges_for_one_prefix() {
    let ports: Vec<String> = (1..=17).map(|p| p.to_string()).collect();
    let body = format!(
        "[[rule]]\nid = \"many\"\nop = \"connect\"\naddr = [\"10.0.0.0/8\"]\nport = [{}]\ndecision = \"allow\"\n",
        ports.join(", ")
    );
    assert_eq!(
        compile_err(&body),
        "p.toml:7:9: prefix 10.0.0.0/8 collects 17 port ranges (at most 16) from rules `many`"
    );
    // Spread over two rules, the more specific prefix inherits the less specific one's ranges.
    let body = format!(
        "[[rule]]\nid = \"wide\"\nop = \"connect\"\naddr = [\"10.0.0.0/8\"]\nport = [{}]\ndecision = \"allow\"\n\
         [[rule]]\nid = \"narrow\"\nop = \"connect\"\naddr = [\"10.1.0.0/16\"]\nport = [1, 2]\ndecision = \"deny\"\n",
        ports[..15].join(", ")
    );
    assert_eq!(
        compile_err(&body),
        "p.toml:13:9: prefix 10.1.0.0/16 collects 17 port ranges (at most 16) from rules `narrow`, `wide`"
    );
}

#[test]
fn too_many_rules() {
    let one = parse_str(&format!(
        "{HEAD}[[rule]]\nid = \"r\"\nop = \"exec\"\npath = [\"/x\"]\ndecision = \"allow\"\n"
    ))
    .unwrap();
    let mut many = one.clone();
    many.rules = (0..=MAX_RULES)
        .map(|i| Rule {
            id: format!("r{i}"),
            ..one.rules[0].clone()
        })
        .collect();
    let e = compile(&many, &vars(), &fs()).unwrap_err().to_string();
    assert_eq!(e, "p.toml:5:6: 65520 rules, at most 65519 are supported");
    many.rules.pop();
    assert!(compile(&many, &vars(), &fs()).is_ok());
}

#[test]
fn unreadable_file() {
    let e = load(Path::new("/nonexistent/p.toml"), &vars()).unwrap_err();
    assert!(matches!(e, PolicyError::Read { .. }));
    assert!(e.location().is_none());
    assert!(
        e.to_string()
            .starts_with("/nonexistent/p.toml: cannot read policy: "),
        "{e}"
    );
}

// ---- semantics ----

#[test]
fn defaults_when_left_out_and_when_given() {
    let c = compile_ok("");
    assert_eq!(
        c.defaults,
        [
            decision::DENY,
            decision::DENY,
            decision::ALLOW,
            decision::DENY
        ]
    );
    let c = compile_ok("[default]\nexec = \"allow\"\nread = \"ask\"\n");
    assert_eq!(c.defaults[usize::from(op::EXEC)], decision::ALLOW);
    assert_eq!(c.defaults[usize::from(op::WRITE)], decision::DENY);
    assert_eq!(c.defaults[usize::from(op::READ)], decision::ASK);
    assert_eq!(c.defaults[usize::from(op::CONNECT)], decision::DENY);
    assert!(!c.has_read_rules && c.inodes.is_empty() && c.net4.is_empty() && c.net6.is_empty());
}

#[test]
fn mode_and_audit_level() {
    let c = compile_with("", &fs()).unwrap();
    assert_eq!((c.mode, c.audit_required), (Mode::Enforce, false));
    let p =
        parse_str("version = 1\nname = \"t\"\nmode = \"audit\"\naudit = \"required\"\n").unwrap();
    let c = compile(&p, &vars(), &fs()).unwrap();
    assert_eq!((c.mode, c.audit_required), (Mode::Audit, true));
    let cfg = c.agent_config(42, 3);
    assert_eq!(
        (cfg.slot, cfg.agent_id, cfg.mode, cfg.audit_required),
        (42, 3, gate_common::MODE_AUDIT, 1)
    );
    assert_eq!(cfg.defaults, c.defaults);
    assert_eq!(cfg.lockdown_keep, 1 << op::READ);
}

fn three_rules(order: &[usize]) -> String {
    let rules = [
        "[[rule]]\nid = \"c-allow\"\nop = \"exec\"\npath = [\"/usr/bin/**\", \"/usr/bin/curl\"]\ndecision = \"allow\"\n",
        "[[rule]]\nid = \"b-ask\"\nop = \"exec\"\npath = [\"/usr/bin/curl\"]\ndecision = \"ask\"\n",
        "[[rule]]\nid = \"a-deny\"\nop = \"exec\"\npath = [\"/usr/bin/curl\", \"/usr/./bin/../bin/curl\"]\ndecision = \"deny\"\n",
    ];
    order.iter().map(|&i| rules[i]).collect()
}

#[test]
fn deny_overrides_ask_overrides_allow_in_any_order() {
    let r = fs();
    let c = compile_ok(&three_rules(&[0, 1, 2]));
    let curl = inode(&c, &r, "/usr/bin/curl");
    let e = usize::from(op::EXEC);
    assert_eq!(
        (curl.exact[e], curl.exact_rule[e]),
        (decision::DENY, rule_index(&c, "a-deny"))
    );
    let bin = inode(&c, &r, "/usr/bin");
    assert_eq!(
        (bin.subtree[e], bin.subtree_rule[e]),
        (decision::ALLOW, rule_index(&c, "c-allow"))
    );
    assert_eq!(
        bin.exact,
        [decision::NONE; 4],
        "a subtree rule leaves the exact slots alone"
    );
    assert_eq!(bin.exact_rule, [rule_idx::DEFAULT; 4]);
    for order in [[2, 1, 0], [1, 2, 0], [1, 0, 2]] {
        assert_eq!(
            compile_ok(&three_rules(&order)).dump(),
            c.dump(),
            "order {order:?}"
        );
    }
    let ask = compile_ok(&three_rules(&[0, 1]));
    let curl = inode(&ask, &r, "/usr/bin/curl");
    assert_eq!(
        (curl.exact[e], curl.exact_rule[e]),
        (decision::ASK, rule_index(&ask, "b-ask"))
    );
}

#[test]
fn rules_are_indexed_by_sorted_id() {
    let c = compile_ok(&three_rules(&[0, 1, 2]));
    let ids: Vec<&str> = c.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["a-deny", "b-ask", "c-allow"]);
    assert_eq!(c.rule_name(1), "b-ask");
    assert_eq!(c.rule_name(rule_idx::DEFAULT), "default");
    assert_eq!(c.rule_name(rule_idx::INTERNAL), "internal");
    assert_eq!(c.rule_name(77), "#77");
}

#[test]
fn audit_bit_comes_from_allow_rules_only() {
    let body = "[[rule]]\nid = \"log-git\"\nop = \"exec\"\npath = [\"/usr/bin/git\"]\ndecision = \"allow\"\naudit = true\n\
                [[rule]]\nid = \"plain\"\nop = \"exec\"\npath = [\"/usr/bin/git\", \"/usr/bin/curl\"]\ndecision = \"allow\"\n\
                [[rule]]\nid = \"no-curl\"\nop = \"exec\"\npath = [\"/usr/bin/curl\"]\ndecision = \"deny\"\naudit = true\n";
    let (c, r, e) = (compile_ok(body), fs(), usize::from(op::EXEC));
    let git = inode(&c, &r, "/usr/bin/git");
    assert_eq!(git.exact[e], decision::ALLOW | decision::AUDIT);
    assert_eq!(git.exact_rule[e], rule_index(&c, "log-git"));
    let curl = inode(&c, &r, "/usr/bin/curl");
    assert_eq!(
        curl.exact[e],
        decision::DENY,
        "audit on a deny rule sets nothing"
    );
    let loses = "[[rule]]\nid = \"a\"\nop = \"exec\"\npath = [\"/usr/bin/git\"]\ndecision = \"allow\"\naudit = true\n\
                 [[rule]]\nid = \"b\"\nop = \"exec\"\npath = [\"/usr/bin/git\"]\ndecision = \"ask\"\n";
    let ask_wins = compile_ok(loses);
    let git = inode(&ask_wins, &r, "/usr/bin/git").exact[e];
    assert_eq!(git, decision::ASK, "the audit bit goes with its allow");
    assert!(c.rules[usize::from(rule_index(&c, "log-git"))].audit);
}

#[test]
fn variables_and_tilde_are_substituted() {
    let body = "[[rule]]\nid = \"a\"\nop = \"read\"\npath = [\"~/.ssh/**\", \"${home}/.bashrc\", \"${workspace}/.git/config\", \"~\"]\ndecision = \"deny\"\n";
    let (c, r) = (compile_ok(body), fs());
    let rd = usize::from(op::READ);
    assert_eq!(inode(&c, &r, "/home/u/.ssh").subtree[rd], decision::DENY);
    assert_eq!(inode(&c, &r, "/home/u/.bashrc").exact[rd], decision::DENY);
    assert_eq!(
        inode(&c, &r, "/work/ws/.git/config").exact[rd],
        decision::DENY
    );
    assert_eq!(inode(&c, &r, "/home/u").exact[rd], decision::DENY);
    assert!(
        c.has_read_rules && c.warnings.is_empty(),
        "{:?}",
        c.warnings
    );
    let slash = Vars {
        home: "/home/u/".into(),
        ..vars()
    };
    let p = parse_str(&format!("{HEAD}{body}")).unwrap();
    assert_eq!(compile(&p, &slash, &fs()).unwrap(), c);
}

#[test]
fn symlinks_resolve_to_their_target() {
    let r = fs().symlink("/bin", "/usr/bin");
    let c = compile_with(
        "[[rule]]\nid = \"a\"\nop = \"exec\"\npath = [\"/bin/**\"]\ndecision = \"allow\"\n",
        &r,
    )
    .unwrap();
    let key = r.resolve(Path::new("/usr/bin")).unwrap().key;
    assert_eq!(c.inodes.keys().collect::<Vec<_>>(), [&key]);
    assert_eq!(c.inode_paths[&key], Path::new("/usr/bin"));
}

#[test]
fn hard_links_below_denied_subtrees_get_exact_entries() {
    let r = fs()
        .hardlink("/home/u/.ssh/id_ed25519", "/tmp/innocent")
        .hardlink("/usr/bin/git", "/usr/bin/git2");
    let body = "[[rule]]\nid = \"ssh\"\nop = \"read\"\npath = [\"~/.ssh/**\"]\ndecision = \"deny\"\n\
                [[rule]]\nid = \"bin\"\nop = \"exec\"\npath = [\"/usr/bin/**\"]\ndecision = \"allow\"\n";
    let c = compile_with(body, &r).unwrap();
    let key = r.resolve(Path::new("/tmp/innocent")).unwrap().key;
    let rd = usize::from(op::READ);
    assert_eq!(c.inodes[&key].exact[rd], decision::DENY);
    assert_eq!(c.inodes[&key].exact_rule[rd], rule_index(&c, "ssh"));
    let git = r.resolve(Path::new("/usr/bin/git")).unwrap().key;
    assert!(
        !c.inodes.contains_key(&git),
        "allow subtrees are not hardened"
    );
    assert_eq!(
        c.inodes.len(),
        3,
        "~/.ssh, /usr/bin, and the hard-linked key"
    );
}

#[test]
fn hard_link_walk_is_bounded() {
    let mut r = fs();
    for i in 0..=HARDLINK_WALK_LIMIT {
        r = r.file(format!("/big/f{i:05}"));
    }
    let c = compile_with(
        "[[rule]]\nid = \"big\"\nop = \"write\"\npath = [\"/big/**\"]\ndecision = \"deny\"\n",
        &r,
    )
    .unwrap();
    assert_eq!(
        c.warnings,
        [
            "p.toml:7:9: warning: rule `big`: `/big` has more than 10000 entries; hard links beyond them are not covered"
        ]
    );
    let c = compile_with(
        "[[rule]]\nid = \"a\"\nop = \"write\"\npath = [\"/tmp/**\"]\ndecision = \"deny\"\n",
        &FailingResolver,
    );
    assert!(c.is_err(), "resolving fails first");
}

fn net_key4(c: &str) -> (u32, [u8; 4]) {
    match Cidr::parse(c).unwrap() {
        Cidr::V4 { addr, len } => (u32::from(len), addr),
        other => panic!("{other} is not v4"),
    }
}

#[test]
fn net_prefixes_inherit_less_specific_rules() {
    let body = "[[rule]]\nid = \"https\"\nop = \"connect\"\naddr = [\"10.0.0.0/8\"]\nport = [443, \"8000-8080\"]\ndecision = \"allow\"\n\
                [[rule]]\nid = \"lab\"\nop = \"connect\"\naddr = [\"10.1.0.0/16\"]\ndecision = \"deny\"\n\
                [[rule]]\nid = \"host\"\nop = \"connect\"\naddr = [\"10.1.2.3\"]\nport = [\"443\"]\ndecision = \"ask\"\n";
    let c = compile_ok(body);
    assert_eq!(c.net4.len(), 3);
    assert!(c.net6.is_empty());
    let wide = &c.net4[&net_key4("10.0.0.0/8")];
    assert_eq!(wide.count, 2);
    let lab = &c.net4[&net_key4("10.1.0.0/16")];
    assert_eq!(lab.count, 3);
    assert_eq!(evaluate_ports(lab, 443).unwrap().decision, decision::DENY);
    let host = &c.net4[&net_key4("10.1.2.3/32")];
    assert_eq!(host.count, 4);
    let hit = evaluate_ports(host, 443).unwrap();
    assert_eq!(
        (hit.decision, hit.rule),
        (decision::DENY, rule_index(&c, "lab"))
    );
    assert_eq!(
        evaluate_ports(wide, 8080).unwrap().rule,
        rule_index(&c, "https")
    );
    assert!(
        evaluate_ports(wide, 22).is_none(),
        "no range: the default decides"
    );
}

#[test]
fn missing_addr_means_both_families_and_missing_port_all_ports() {
    let c = compile_ok(
        "[[rule]]\nid = \"dns\"\nop = \"connect\"\nport = [53]\ndecision = \"allow\"\naudit = true\n",
    );
    let v4 = &c.net4[&(0, [0; 4])];
    let v6 = &c.net6[&(0, [0; 16])];
    assert_eq!((v4.count, v6.count), (1, 1));
    assert_eq!(
        (v4.ports[0].lo, v4.ports[0].hi, v4.ports[0].decision),
        (53, 53, decision::ALLOW | decision::AUDIT)
    );
    let c = compile_ok(
        "[[rule]]\nid = \"lo\"\nop = \"connect\"\naddr = [\"::1\"]\ndecision = \"allow\"\n",
    );
    let mut one = [0u8; 16];
    one[15] = 1;
    let lo = &c.net6[&(128, one)];
    assert_eq!((lo.count, lo.ports[0].lo, lo.ports[0].hi), (1, 0, 65535));
}

#[test]
fn v4_mapped_prefixes_land_in_the_v4_trie() {
    let body = "[[rule]]\nid = \"m\"\nop = \"connect\"\naddr = [\"::ffff:192.168.0.0/112\", \"192.168.0.0/16\"]\ndecision = \"deny\"\n";
    let c = compile_ok(body);
    assert!(c.net6.is_empty());
    let v = &c.net4[&net_key4("192.168.0.0/16")];
    assert_eq!(v.count, 1, "the same rule's identical ranges are merged");
}

#[test]
fn digest_ignores_formatting_order_and_spelled_out_defaults() {
    let a = format!("{HEAD}{}", three_rules(&[0, 1, 2]));
    let b = format!(
        "# reformatted\nmode='enforce'\nversion=1\nname='t'\n[default]\nread='allow'\n\n{}",
        three_rules(&[2, 0, 1]).replace(" = ", "=")
    );
    let (pa, pb) = (parse_str(&a).unwrap(), parse_str(&b).unwrap());
    assert_eq!(pa.canonical(), pb.canonical());
    assert_eq!(pa.digest(), pb.digest());
    let c = parse_str(&a.replace("\"ask\"", "\"deny\"")).unwrap();
    assert_ne!(pa.digest(), c.digest());
    let paths_swapped = parse_str(&a.replace(
        "[\"/usr/bin/**\", \"/usr/bin/curl\"]",
        "[\"/usr/bin/curl\", \"/usr/bin/**\"]",
    ))
    .unwrap();
    assert_eq!(pa.digest(), paths_swapped.digest());
    assert_eq!(compile(&pa, &vars(), &fs()).unwrap().digest, pa.digest());
}

#[test]
fn errors_know_their_location() {
    let e = parse_str(&format!(
        "{HEAD}[[rule]]\nid = \"a\"\nop = \"exec\"\npath = [\"/a/*\"]\ndecision = \"deny\"\n"
    ))
    .unwrap_err();
    let at = e.location().unwrap();
    assert_eq!(
        (at.file.as_path(), at.pos),
        (Path::new("p.toml"), Pos { line: 7, col: 9 })
    );
    assert!(matches!(e, PolicyError::UnsupportedGlob { .. }));
}

#[test]
fn has_read_rules_follows_compiled_read_entries() {
    assert!(
        !compile_ok(
            "[[rule]]\nid = \"a\"\nop = \"write\"\npath = [\"/tmp/**\"]\ndecision = \"allow\"\n"
        )
        .has_read_rules
    );
    assert!(
        compile_ok(
            "[[rule]]\nid = \"a\"\nop = \"read\"\npath = [\"/tmp/**\"]\ndecision = \"allow\"\n"
        )
        .has_read_rules
    );
    let missing = compile_ok(
        "[[rule]]\nid = \"a\"\nop = \"read\"\npath = [\"/gone\"]\ndecision = \"deny\"\n",
    );
    assert!(
        missing.has_read_rules,
        "a read rule on a missing path is watched for: reads need the walk"
    );
}

#[test]
fn map_sizes_count_entries() {
    let c = compile_ok(&three_rules(&[0, 1, 2]));
    assert_eq!(
        c.map_sizes(),
        MapSizes {
            rules: 3,
            inodes: 2,
            net4: 0,
            net6: 0
        }
    );
    let _: &InodeKey = c.inodes.keys().next().unwrap();
}

#[test]
fn gate_self_rules_win_over_an_allow_and_skip_what_does_not_exist() {
    let r = fs().dir("/var/lib/gate").file("/var/lib/gate/gate.key");
    let body = "[default]\nread = \"allow\"\nwrite = \"allow\"\n\
                [[rule]]\nid = \"all\"\nop = \"write\"\npath = [\"/var/lib/gate/**\"]\n\
                decision = \"allow\"\n";
    let mut c = compile_with(body, &r).unwrap();
    assert!(!c.has_read_rules);
    let list = [
        Protected {
            path: "/var/lib/gate".into(),
            read: true,
        },
        Protected {
            path: "/nonexistent/gate".into(),
            read: false,
        },
    ];
    protect_into(&mut c, &list, &r);
    let key = r.resolve(Path::new("/var/lib/gate")).unwrap().key;
    let e = c.inodes[&key];
    for o in [op::READ, op::WRITE] {
        let i = usize::from(o);
        assert_eq!(e.subtree[i] & decision::MASK, decision::DENY);
        assert_eq!(e.subtree_rule[i], rule_idx::GATE_SELF);
        assert_eq!(e.exact_rule[i], rule_idx::GATE_SELF);
    }
    assert!(c.has_read_rules, "reads must be walked to find the key");
    assert_eq!(c.rule_name(rule_idx::GATE_SELF), "gate-self");
}

#[test]
fn sockets_section_names_kinds_and_rejects_unknown_ones_where_they_are() {
    let c = compile_ok("[sockets]\nallow = [\"packet\", \"raw\", \"packet\"]\n");
    assert_eq!(c.sockets, (1 << 17) | gate_common::sock::RAW);
    let e = compile_err("[sockets]\nallow = [\"packet\", \"wifi\"]\n");
    assert!(e.starts_with("p.toml:5:20: "), "{e}");
    assert!(e.contains("unknown socket kind \"wifi\""), "{e}");
    // No section: nothing beyond the base set, and the digest of a policy without it is
    // what it was.
    let plain = compile_ok("");
    assert_eq!(plain.sockets, 0);
    let with = compile_ok("[sockets]\nallow = [\"packet\"]\n");
    assert_ne!(plain.digest, with.digest);
}

#[test]
fn capabilities_section_grants_named_capabilities_only() {
    let c = compile_ok("[capabilities]\nallow = [\"CAP_CHOWN\", \"CAP_NET_RAW\"]\n");
    assert_eq!(c.caps, (1 << 0) | (1 << 13));
    assert_eq!(c.agent_config(1, 1).caps, c.caps);
    assert_eq!(compile_ok("").caps, 0, "no section: no capabilities");
    let e = compile_err("[capabilities]\nallow = [\"chown\"]\n");
    assert!(
        e.starts_with("p.toml:5:10: unknown capability \"chown\""),
        "{e}"
    );
}

#[test]
fn namespaces_section_turns_on_user_namespaces_only_when_named() {
    let c = compile_ok("[namespaces]\nallow = [\"user\"]\n");
    assert_eq!(c.grants, gate_common::grant::USER_NAMESPACE);
    assert_eq!(c.agent_config(1, 1).grants, c.grants);
    let plain = compile_ok("");
    assert_eq!(plain.grants, 0, "no section: no user namespaces");
    assert_ne!(plain.digest, c.digest, "the switch is part of the digest");
    let e = compile_err("[namespaces]\nallow = [\"user\", \"net\"]\n");
    assert!(
        e.starts_with("p.toml:5:18: unknown namespace \"net\"; known: user"),
        "{e}"
    );
}

#[test]
fn unix_rules_name_socket_files_and_the_default_decides_the_rest() {
    let body = "[[rule]]\nid = \"agent-socket\"\nop = \"connect\"\ndecision = \"allow\"\n\
                unix = [\"/tmp/**\", \"/usr/bin/git\"]\n";
    let c = compile_ok(body);
    let r = fs();
    let i = usize::from(op::CONNECT);
    let idx = rule_index(&c, "agent-socket");
    let tmp = inode(&c, &r, "/tmp");
    assert_eq!(
        (tmp.subtree[i], tmp.subtree_rule[i]),
        (decision::ALLOW, idx)
    );
    assert_eq!(tmp.exact[usize::from(op::WRITE)], decision::NONE);
    let exact = inode(&c, &r, "/usr/bin/git");
    assert_eq!(
        (exact.exact[i], exact.exact_rule[i]),
        (decision::ALLOW, idx)
    );
    assert_eq!(
        c.grants & gate_common::grant::UNIX_OUTSIDE,
        0,
        "deny by default"
    );
    let open = compile_ok("[default]\nunix = \"allow\"\n");
    assert_ne!(open.grants & gate_common::grant::UNIX_OUTSIDE, 0);
    assert_ne!(open.digest, compile_ok("").digest);
    assert_eq!(
        compile_ok("[default]\nunix = \"deny\"\n").digest,
        compile_ok("").digest,
        "an explicit deny is the default"
    );
    let e = compile_err("[default]\nunix = \"ask\"\n");
    assert!(
        e.starts_with("p.toml:5:8: `unix` takes \"allow\" or \"deny\""),
        "{e}"
    );
    let e = compile_err(
        "[[rule]]\nid = \"x\"\nop = \"connect\"\ndecision = \"allow\"\nunix = [\"@bus-*\"]\n",
    );
    assert!(
        e.starts_with("p.toml:8:9: abstract socket names are matched exactly"),
        "{e}"
    );
    let e = compile_err(
        "[[rule]]\nid = \"x\"\nop = \"connect\"\ndecision = \"allow\"\nunix = [\"@\"]\n",
    );
    assert!(
        e.starts_with("p.toml:8:9: an abstract socket name is empty"),
        "{e}"
    );
    let long = format!("@{}", "n".repeat(108));
    let e = compile_err(&format!(
        "[[rule]]\nid = \"x\"\nop = \"connect\"\ndecision = \"allow\"\nunix = [\"{long}\"]\n"
    ));
    assert!(
        e.contains("108 bytes long; the kernel allows at most 107"),
        "{e}"
    );
    let e = compile_err(
        "[[rule]]\nid = \"x\"\nop = \"connect\"\ndecision = \"allow\"\nunix = [\"/tmp\"]\n\
         port = [80]\n",
    );
    assert!(
        e.starts_with("p.toml:9:8: `port` does not go with `unix`"),
        "{e}"
    );
    let e = compile_err(
        "[[rule]]\nid = \"x\"\nop = \"write\"\ndecision = \"allow\"\nunix = [\"/tmp\"]\n",
    );
    assert!(e.contains("`unix` only applies to connect rules"), "{e}");
}

#[test]
fn abstract_unix_names_are_exact_keys_and_deny_wins() {
    let body = "[[rule]]\nid = \"bus\"\nop = \"connect\"\ndecision = \"allow\"\n\
                unix = [\"@/tmp/dbus-session\", \"@x11\"]\n\
                [[rule]]\nid = \"no-x11\"\nop = \"connect\"\ndecision = \"deny\"\n\
                unix = [\"@x11\"]\n";
    let c = compile_ok(body);
    let i = usize::from(op::CONNECT);
    let key = |n: &str| gate_common::unix_name::key(n.as_bytes()).unwrap();
    let bus = c.inodes[&key("/tmp/dbus-session")];
    assert_eq!(
        (bus.exact[i], bus.exact_rule[i], bus.subtree[i]),
        (decision::ALLOW, rule_index(&c, "bus"), decision::NONE)
    );
    let x11 = c.inodes[&key("x11")];
    assert_eq!(
        (x11.exact[i], x11.exact_rule[i]),
        (decision::DENY, rule_index(&c, "no-x11"))
    );
    assert_eq!(c.inode_paths[&key("x11")], std::path::PathBuf::from("@x11"));
    assert!(!c.inodes.contains_key(&key("x1")));
    assert_eq!(key("x11").dev, gate_common::unix_name::DEV);
    assert_ne!(key("x11").ino, key("x12").ino);
    assert_eq!(
        key("ab").ino,
        key("ab\0\0").ino,
        "trailing NULs (a whole sun_path bound) are not part of the name"
    );
    assert_ne!(key("ab").ino, key("a\0b").ino);
}

#[test]
fn diff_lists_what_a_new_policy_allows_beyond_the_old() {
    let old = parse_str(&format!(
        "{HEAD}[[rule]]\nid = \"ssh\"\nop = \"read\"\ndecision = \"deny\"\npath = [\"~/.ssh/**\"]\n\
         [[rule]]\nid = \"git\"\nop = \"exec\"\ndecision = \"allow\"\npath = [\"/usr/bin/git\"]\n"
    ))
    .unwrap();
    let same = super::diff(&old, &old);
    assert!(same.is_empty(), "{same:?}");
    assert_eq!(
        super::render_diff("a", "b", &same),
        "b allows and denies what a does\n"
    );
    let new = parse_str(
        "version = 1\nname = \"t\"\nmode = \"audit\"\n[default]\nexec = \"deny\"\nwrite = \"allow\"\n\
         [capabilities]\nallow = [\"CAP_CHOWN\"]\n\
         [[rule]]\nid = \"git\"\nop = \"exec\"\ndecision = \"ask\"\npath = [\"/usr/bin/git\"]\n\
         [[rule]]\nid = \"web\"\nop = \"connect\"\ndecision = \"allow\"\naddr = [\"0.0.0.0/0\"]\nport = [443]\n\
         [[rule]]\nid = \"no-curl\"\nop = \"exec\"\ndecision = \"deny\"\npath = [\"/usr/bin/curl\"]\n"
    )
    .unwrap();
    let changes = super::diff(&old, &new);
    let text: Vec<(bool, &str)> = changes
        .iter()
        .map(|c| (c.widens, c.text.as_str()))
        .collect();
    let has = |widens: bool, s: &str| text.iter().any(|(w, t)| *w == widens && t.contains(s));
    assert!(has(true, "mode enforce → audit"), "{text:?}");
    assert!(has(true, "capability CAP_CHOWN allowed"), "{text:?}");
    assert!(
        has(
            true,
            "allow connect addr 0.0.0.0/0 port 443 (rule `web`, new"
        ),
        "{text:?}"
    );
    assert!(
        has(
            true,
            "read path ~/.ssh/**: deny (rule `ssh`) → allow by default"
        ),
        "{text:?}"
    );
    assert!(
        has(
            false,
            "exec path /usr/bin/git: allow (rule `git`) → ask (rule `git`)"
        ),
        "{text:?}"
    );
    // Denied before by default, denied now by a rule: no difference.
    assert!(!text.iter().any(|(_, t)| t.contains("curl")), "{text:?}");
    assert!(changes.first().is_some_and(|c| c.widens), "widening first");
    let shown = super::render_diff("old.toml", "new.toml", &changes);
    assert!(
        shown.starts_with("new.toml allows what old.toml does not:\n  + "),
        "{shown}"
    );
    assert!(
        shown.contains("new.toml allows less than old.toml:\n  - "),
        "{shown}"
    );
}

#[test]
fn approvers_belong_to_ask_rules_with_a_sane_threshold() {
    let rule = |decision: &str, approvers: &str| {
        format!(
            "[[rule]]\nid = \"r\"\nop = \"write\"\npath = [\"/x\"]\ndecision = \"{decision}\"\n\
             approvers = {approvers}\n"
        )
    };
    let p = parse_str(&format!(
        "{HEAD}{}",
        rule("ask", "{ group = \"release-managers\", threshold = 2 }")
    ))
    .unwrap();
    let a = p.rules[0].approvers.as_ref().unwrap();
    assert_eq!((a.group.as_str(), a.threshold), ("release-managers", 2));
    assert_eq!(a.at.to_string(), "p.toml:9:23");
    let e = rule_err(&rule("deny", "{ group = \"g\", threshold = 1 }"));
    assert!(
        e.starts_with("p.toml:9:13: `approvers` only applies to rules with decision = \"ask\""),
        "{e}"
    );
    let e = rule_err(&rule("ask", "{ group = \"g\", threshold = 0 }"));
    assert!(
        e.starts_with("p.toml:9:40: threshold 0 is out of range"),
        "{e}"
    );
    let e = rule_err(&rule("ask", "{ group = \"g\", threshold = 17 }"));
    assert!(e.contains("between 1 and 16"), "{e}");
    let e = rule_err(&rule("ask", "{ group = \"a b\", threshold = 1 }"));
    assert!(e.starts_with("p.toml:9:23: approver group `a b`"), "{e}");
    let e = rule_err(&rule("ask", "{ group = \"g\", threshold = 1, quorum = 2 }"));
    assert!(e.contains("unknown field `quorum`"), "{e}");
}

#[test]
fn limits_belong_to_allow_rules_and_say_count_per_period() {
    let rule = |decision: &str, extra: &str| {
        format!(
            "[[rule]]\nid = \"r\"\nop = \"write\"\npath = [\"/x\"]\ndecision = \"{decision}\"\n{extra}\n"
        )
    };
    let p = parse_str(&format!(
        "{HEAD}{}",
        rule("allow", "limit = \"30/min\"\nover_limit = \"ask\"")
    ))
    .unwrap();
    let l = p.rules[0].limit.unwrap();
    assert_eq!((l.count, l.window_s, l.over), (30, 60, Decision::Ask));
    assert_eq!(l.to_string(), "30/min");
    let p = parse_str(&format!("{HEAD}{}", rule("allow", "limit = \"5/s\""))).unwrap();
    assert_eq!(p.rules[0].limit.unwrap().over, Decision::Deny);
    let e = rule_err(&rule("deny", "limit = \"5/s\""));
    assert!(
        e.starts_with("p.toml:9:9: `limit` applies to allow rules"),
        "{e}"
    );
    for bad in ["5", "0/s", "5/week", "x/min", "2000000/day"] {
        let e = rule_err(&rule("allow", &format!("limit = \"{bad}\"")));
        assert!(
            e.starts_with("p.toml:9:9: cannot read the limit"),
            "{bad}: {e}"
        );
    }
    let e = rule_err(&rule("allow", "over_limit = \"deny\""));
    assert!(e.contains("`over_limit` needs a `limit`"), "{e}");
    let e = rule_err(&rule("allow", "limit = \"5/s\"\nover_limit = \"allow\""));
    assert!(
        e.starts_with("p.toml:10:14: `over_limit` is \"deny\" or \"ask\""),
        "{e}"
    );
    // The kernel sees the quota in the rule's decision byte, and its terms and counter.
    let c = compile(
        &parse_str(&format!("{HEAD}{}", rule("allow", "limit = \"5/s\""))).unwrap(),
        &vars(),
        &MemResolver::new().file("/x"),
    )
    .unwrap();
    let entry = c.inodes.values().next().unwrap();
    assert_eq!(entry.exact[1], decision::ALLOW | decision::LIMITED);
    let q = c.quota_entries(9);
    assert_eq!(q.len(), 2);
    assert_eq!(q[0].0.kind, gate_common::verdict_kind::QUOTA_TERMS);
    assert_eq!(
        (q[0].1.expires_ns, q[0].1.source, q[0].1.decision),
        (1_000_000_000, 5, decision::DENY)
    );
    assert_eq!(
        (q[1].0.agent_id, q[1].0.kind),
        (9, gate_common::verdict_kind::QUOTA)
    );
}

#[test]
fn a_denial_budget_is_read_and_counted_in_the_digest() {
    let with = parse_str(&format!("{HEAD}[trust]\nmax_denials = \"20/min\"\n")).unwrap();
    assert_eq!(with.max_denials, Some((20, 60)));
    let without = parse_str(HEAD).unwrap();
    assert_ne!(with.digest(), without.digest());
    let e = parse_err(&format!("{HEAD}[trust]\nmax_denials = \"lots\"\n"));
    assert!(
        e.starts_with("p.toml:5:15: cannot read the denial budget"),
        "{e}"
    );
    let e = parse_err(&format!("{HEAD}[trust]\nmax_denial = \"2/s\"\n"));
    assert!(e.contains("unknown field `max_denial`"), "{e}");
    // Its lockdown variant: reads as before, everything else denied, enforced.
    let p = parse_str(&format!(
        "{HEAD}[default]\nexec = \"allow\"\nwrite = \"allow\"\nread = \"allow\"\nconnect = \"allow\"\n\
         [[rule]]\nid = \"r\"\nop = \"read\"\npath = [\"/usr/bin/git\"]\ndecision = \"deny\"\n"
    ))
    .unwrap();
    let c = compile(&p, &vars(), &fs()).unwrap();
    let v = c.lockdown_variant();
    assert_eq!(
        v.defaults,
        [
            decision::DENY,
            decision::DENY,
            decision::ALLOW,
            decision::DENY
        ]
    );
    assert_eq!(v.inodes, c.inodes);
    assert_eq!(v.mode, Mode::Enforce);
}
