//! The policies shipped in `policies/`: each parses and compiles, on this machine's real
//! filesystem and on a model machine, and `coding-agent.toml` means what its comments say.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use gate::policy::{
    CompiledPolicy, FsResolver, MemResolver, Op, Vars, compile, evaluate_ports, parse,
};
use gate_common::{MAX_PORT_RULES, decision};

#[path = "golden/machine.rs"]
mod machine;

fn shipped() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "expected the shipped policies in {}",
        dir.display()
    );
    files
}

fn load_model(name: &str) -> CompiledPolicy {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../policies/{name}.toml"));
    let policy =
        parse(&std::fs::read_to_string(&file).unwrap(), &file).unwrap_or_else(|e| panic!("{e}"));
    compile(&policy, &machine::vars(), &machine::machine()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_shipped_policy_compiles_on_this_machine() {
    let home = tempfile::tempdir().unwrap();
    let workspace = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(workspace.path().join(".git/hooks")).unwrap();
    std::fs::write(workspace.path().join(".git/config"), "").unwrap();
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    let vars = Vars {
        workspace: Some(workspace.path().to_path_buf()),
        home: home.path().to_path_buf(),
    };
    for file in shipped() {
        let source = std::fs::read_to_string(&file).unwrap();
        let policy = parse(&source, &file).unwrap_or_else(|e| panic!("{e}"));
        let compiled = compile(&policy, &vars, &FsResolver).unwrap_or_else(|e| panic!("{e}"));
        assert!(!compiled.rules.is_empty(), "{}", file.display());
        for w in &compiled.warnings {
            assert!(w.contains(": warning: rule `"), "{w}");
        }
    }
}

#[test]
fn every_shipped_policy_compiles_on_the_model_machine() {
    for file in shipped() {
        let name = file.file_stem().unwrap().to_str().unwrap().to_owned();
        let compiled = load_model(&name);
        assert_eq!(compiled.name, name, "a policy's name matches its file name");
    }
}

/// What the kernel decides for `op` on `path`: the leaf's exact entry and the subtree entries of
/// its ancestors, most severe wins, none → default.
fn decide(c: &CompiledPolicy, r: &MemResolver, path: &str, op: Op) -> &'static str {
    use gate::policy::Resolver;
    let leaf = r
        .resolve(Path::new(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let i = op.index();
    let mut best = c
        .inodes
        .get(&leaf.key)
        .map_or(decision::NONE, |v| v.exact[i])
        & decision::MASK;
    for ancestor in leaf.canonical.ancestors().skip(1) {
        let key = r.resolve(ancestor).unwrap().key;
        if let Some(v) = c.inodes.get(&key) {
            best = best.max(v.subtree[i] & decision::MASK);
        }
    }
    machine::name(if best == decision::NONE {
        c.defaults[i]
    } else {
        best
    })
}

/// What the kernel decides for a connection: longest matching prefix, most severe range
/// containing the port, none → default.
fn decide_connect(c: &CompiledPolicy, addr: &str, port: u16) -> &'static str {
    let value = match addr.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => c
            .net4
            .iter()
            .filter(|((len, p), _)| {
                *len == 0 || u32::from_be_bytes(*p) >> (32 - len) == a.to_bits() >> (32 - len)
            })
            .max_by_key(|((len, _), _)| *len)
            .map(|(_, v)| v),
        IpAddr::V6(a) => c
            .net6
            .iter()
            .filter(|((len, p), _)| {
                *len == 0 || u128::from_be_bytes(*p) >> (128 - len) == a.to_bits() >> (128 - len)
            })
            .max_by_key(|((len, _), _)| *len)
            .map(|(_, v)| v),
    };
    let hit = value.and_then(|v| evaluate_ports(v, port));
    machine::name(hit.map_or(c.defaults[Op::Connect.index()], |p| p.decision))
}

#[test]
fn coding_agent_means_what_it_says() {
    let (c, r) = (load_model("coding-agent"), machine::machine());
    let ws = machine::WORKSPACE;
    let cases = [
        ("/usr/bin/git", Op::Exec, "allow"),
        ("/bin/bash", Op::Exec, "allow"),
        ("/usr/lib/gcc/x86_64-linux-gnu/12/cc1", Op::Exec, "allow"),
        ("/usr/bin/curl", Op::Exec, "deny"),
        ("/usr/bin/nc", Op::Exec, "deny"),
        ("/bin/nc.openbsd", Op::Exec, "deny"),
        ("/usr/bin/ssh", Op::Exec, "deny"),
        ("/home/dev/.cargo/bin", Op::Exec, "deny"),
        ("/home/dev/.gitconfig", Op::Exec, "deny"),
        ("/home/dev/project/src/main.c", Op::Exec, "allow"),
        ("/home/dev/project/src/main.c", Op::Write, "allow"),
        ("/home/dev/project/.git/hooks", Op::Write, "deny"),
        ("/home/dev/project/.git/config", Op::Write, "deny"),
        ("/tmp/innocent-looking", Op::Read, "deny"),
        ("/home/dev/.ssh/id_ed25519", Op::Read, "deny"),
        ("/home/dev/.ssh/authorized_keys", Op::Write, "deny"),
        ("/home/dev/.aws/credentials", Op::Read, "deny"),
        ("/home/dev/.netrc", Op::Read, "deny"),
        ("/home/dev/.gitconfig", Op::Read, "allow"),
        ("/home/dev/.gitconfig", Op::Write, "deny"),
        ("/home/dev/.bashrc", Op::Write, "deny"),
        ("/home/dev/.bashrc", Op::Read, "allow"),
        ("/home/dev/.cache", Op::Write, "deny"),
        ("/dev/null", Op::Write, "allow"),
        ("/dev/tty", Op::Write, "allow"),
        ("/usr/bin/git", Op::Write, "deny"),
        ("/tmp", Op::Write, "deny"),
    ];
    for (path, op, expected) in cases {
        assert_eq!(decide(&c, &r, path, op), expected, "{op} {path}");
    }
    // A write deny on `dir/**` covers the directory itself too: it cannot be moved away and
    // replaced by an unprotected one.
    assert_eq!(
        decide(&c, &r, &format!("{ws}/.git/hooks"), Op::Write),
        "deny"
    );
    for (addr, port, expected) in [
        ("127.0.0.1", 8080, "allow"),
        ("127.0.0.53", 53, "allow"),
        ("::1", 5432, "allow"),
        ("127.0.0.1", 0, "deny"),
        ("10.0.0.1", 443, "deny"),
        ("1.1.1.1", 53, "deny"),
        ("2606:4700::1111", 443, "deny"),
    ] {
        assert_eq!(
            decide_connect(&c, addr, port),
            expected,
            "connect {addr}:{port}"
        );
    }
}

#[test]
fn audit_only_blocks_nothing_but_names_its_rules() {
    let c = load_model("audit-only");
    assert_eq!(c.mode, gate::policy::Mode::Audit);
    assert!(c.defaults.iter().all(|&d| d == decision::ALLOW));
    let everything = c.net4[&(0, [0; 4])];
    assert_eq!(
        everything.ports[0].decision,
        decision::ALLOW | decision::AUDIT
    );
    let r = machine::machine();
    assert_eq!(
        decide(&c, &r, "/home/dev/.ssh/id_ed25519", Op::Read),
        "deny"
    );
    assert_eq!(decide(&c, &r, "/usr/bin/make", Op::Exec), "allow");
}

#[test]
fn ci_runner_reaches_loopback_and_the_mirror_only() {
    let c = load_model("ci-runner");
    assert!(c.audit_required);
    assert_eq!(decide_connect(&c, "192.0.2.10", 443), "allow");
    assert_eq!(decide_connect(&c, "192.0.2.10", 80), "deny");
    assert_eq!(decide_connect(&c, "2001:db8::1", 443), "allow");
    assert_eq!(decide_connect(&c, "127.0.0.1", 5432), "allow");
    assert_eq!(decide_connect(&c, "198.51.100.1", 443), "deny");
    assert!(
        c.net4
            .values()
            .chain(c.net6.values())
            .all(|v| v.count as usize <= MAX_PORT_RULES)
    );
}
