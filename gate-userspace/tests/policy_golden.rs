//! Golden tests: policies compiled against a model machine, `dump()` compared with the files in
//! `tests/golden/`. The committed `.dump` files are the truth; after an intended change,
//! regenerate them with `GATE_UPDATE_GOLDEN=1 cargo test -p gate-userspace --test policy_golden`
//! and review the diff.
use std::path::{Path, PathBuf};

use gate::policy::{compile, parse};

#[path = "golden/machine.rs"]
mod machine;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compiles `input` (named by its file name only, so locations are machine-independent) and
/// compares its dump with `tests/golden/<name>.dump`.
fn check(input: &Path, name: &str) {
    let source =
        std::fs::read_to_string(input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    let file_name = Path::new(input.file_name().unwrap());
    let policy = parse(&source, file_name).unwrap_or_else(|e| panic!("{e}"));
    let compiled =
        compile(&policy, &machine::vars(), &machine::machine()).unwrap_or_else(|e| panic!("{e}"));
    let actual = compiled.dump();
    let golden = manifest_dir()
        .join("tests/golden")
        .join(format!("{name}.dump"));
    if std::env::var_os("GATE_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&golden, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (GATE_UPDATE_GOLDEN=1 creates it)",
            golden.display()
        )
    });
    if actual != expected {
        let line = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .map_or_else(
                || actual.lines().count().min(expected.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "{name}: dump differs from {} at line {line}\n--- actual ---\n{actual}\n\
             (GATE_UPDATE_GOLDEN=1 regenerates the golden files; review the diff)",
            golden.display()
        );
    }
}

#[test]
fn golden_semantics() {
    check(
        &manifest_dir().join("tests/golden/semantics.toml"),
        "semantics",
    );
}

#[test]
fn golden_network() {
    check(&manifest_dir().join("tests/golden/network.toml"), "network");
}

#[test]
fn golden_shipped_policies() {
    for name in ["coding-agent", "ci-runner", "audit-only"] {
        check(
            &manifest_dir().join(format!("../policies/{name}.toml")),
            name,
        );
    }
}
