//! The Landlock condition: the coding-agent restrictions, as far as Landlock can express them,
//! applied by the worker to itself.
//!
//! - exec (and read) only below the system program directories and the workspace;
//! - write (create, remove, rename, truncate…) only below the workspace and the scratch
//!   directories, and to /dev/null;
//! - read everywhere: Landlock cannot deny a subtree (the secrets) below an allowed parent, so
//!   reading is handled and allowed on `/`, which makes Landlock check every open for read as
//!   gate does for a policy with read rules;
//! - TCP connect only to the benchmark's loopback port, on kernels with Landlock ABI ≥ 4
//!   (6.7+; Landlock filters ports, not addresses). UDP is outside Landlock's reach.
use std::path::Path;

use anyhow::{Context, Result};
use landlock::{
    ABI, Access, AccessFs, AccessNet, LandlockStatus, NetPort, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, path_beneath_rules,
};
use serde_json::{Value, json};

const TARGET_ABI: ABI = ABI::V5;
const EXEC_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64"];
const SCRATCH_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];

/// Restricts the calling process; returns what the kernel enforced.
pub fn restrict(ws: &Path, tcp_port: u16) -> Result<Value> {
    let fs_all = AccessFs::from_all(TARGET_ABI);
    let read = AccessFs::from_read(TARGET_ABI);
    let status = Ruleset::default()
        .handle_access(fs_all)?
        .handle_access(AccessNet::ConnectTcp)?
        .create()?
        .add_rules(path_beneath_rules(["/"], read))?
        .add_rules(path_beneath_rules(EXEC_DIRS, read | AccessFs::Execute))?
        .add_rules(path_beneath_rules(
            SCRATCH_DIRS,
            fs_all & !AccessFs::Execute,
        ))?
        .add_rules(path_beneath_rules(
            ["/dev/null"],
            AccessFs::from_file(TARGET_ABI),
        ))?
        .add_rules(path_beneath_rules([ws], fs_all))?
        .add_rule(NetPort::new(tcp_port, AccessNet::ConnectTcp))?
        .restrict_self()
        .context("landlock_restrict_self")?;
    let abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi as i32,
        _ => 0,
    };
    let ruleset = match status.ruleset {
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => "partially enforced",
        RulesetStatus::NotEnforced => "NOT enforced",
    };
    anyhow::ensure!(
        status.ruleset != RulesetStatus::NotEnforced,
        "Landlock is not enforced"
    );
    Ok(json!({ "abi": abi, "ruleset": ruleset }))
}
