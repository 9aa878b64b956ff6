//! Scenarios as data: `tests/scenarios/*.toml`.
//!
//! ```toml
//! description = "what this scenario shows"
//! policy = "policies/coding-agent.toml"   # relative to the repository root
//! workspace = "/tmp/gate-tests/coding-agent/ws"
//! mode = "enforce"                        # optional: passed as --mode
//! probe_dir = "${workspace}/.bin"         # optional: where gate-probe is copied (default: workspace)
//! setup = ["mkdir -p ${home}/.ssh", "…"] # run unconfined with /bin/sh -c, in order, before the steps
//! teardown = ["umount /tmp/x || true"]    # run unconfined after the steps, even after failures
//! listen = [{ addr = "127.0.0.1", port = 18080 }]  # unconfined loopback listeners during the steps
//!
//! [[step]]
//! name = "ssh key is not writable"
//! probe = ["open-write", "${home}/.ssh/id_rsa"]   # or: sh = "cd ${home}/.ssh && ${probe} …"
//! expect = "EPERM"                                # "ok" | errno name | "exit:N"
//! expect_event = { op = "write", decision = "deny", path_suffix = ".ssh/id_rsa" }
//! unconfined = true      # also run it outside gate and require success
//! unconfined_expect = "ENOEXEC"  # or outside gate, this outcome (the kernel's own refusal)
//! new_run = true         # start a new `gate run` here (default: one run for all steps)
//! expect_no_event = { path = "${workspace}/x" }   # no decision of this step may match
//! ```
//!
//! Steps run in order inside one `gate run` (see [`crate::driver`]); a step with `new_run`
//! starts another. `isolate = true` (or `--isolate`) runs each step in its own.
//!
//! Variables: `${workspace}`, `${home}`, `${probe}`, `${repo}`, `${scratch}` (a per-scenario
//! directory, emptied before the setup; the workspace may live in it), `${cgroup}` (where cgroup
//! v2 is mounted). Probe arguments must only use known variables; shell text
//! may use its own `${var}`s, which are left alone.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::events::EventMatcher;
use crate::outcome::Expect;
use crate::subst::Vars;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Set from the file name; not read from the file.
    #[serde(skip)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub policy: String,
    pub workspace: String,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub probe_dir: Option<String>,
    #[serde(default)]
    pub setup: Vec<String>,
    #[serde(default)]
    pub teardown: Vec<String>,
    #[serde(default)]
    pub listen: Vec<Listener>,
    /// Who the confined steps run as (`gate run --user`); default root. Scenarios with a user
    /// are not rerun through the daemon (which runs its callers' commands as themselves).
    #[serde(default)]
    pub user: Option<String>,
    /// Run every step in its own `gate run` (slow in guests; for debugging).
    #[serde(default)]
    pub isolate: bool,
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub addr: String,
    pub port: u16,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    #[serde(default)]
    pub probe: Option<Vec<String>>,
    #[serde(default)]
    pub sh: Option<String>,
    pub expect: Expect,
    #[serde(default)]
    pub expect_event: Option<EventMatcher>,
    /// No decision of the step may match this.
    #[serde(default)]
    pub expect_no_event: Option<EventMatcher>,
    /// Start a new `gate run` with this step (so that what earlier steps created exists when the
    /// policy is loaded: rules name inodes, resolved at load).
    #[serde(default)]
    pub new_run: bool,
    /// Also run the step outside gate and require that it succeeds.
    #[serde(default)]
    pub unconfined: bool,
    /// Also run the step outside gate and require this outcome instead: where the kernel
    /// itself refuses the attempt later, for its own reason (a module image that is not a
    /// module), a different errno outside proves that the refusal inside was gate's.
    #[serde(default)]
    pub unconfined_expect: Option<Expect>,
    /// Seconds before the step is killed (default 120: guests run under TCG).
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// What a step runs, after substitution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `${probe}` followed by these arguments.
    Probe(Vec<String>),
    /// `/bin/sh -c` with this script.
    Sh(String),
}

impl Action {
    /// The command line, the probe's path first for probes.
    pub fn argv(&self, probe: &str) -> Vec<String> {
        match self {
            Action::Probe(args) => std::iter::once(probe.to_string())
                .chain(args.iter().cloned())
                .collect(),
            Action::Sh(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        }
    }
}

impl Step {
    /// The step's action with variables substituted.
    pub fn action(&self, vars: &Vars) -> Result<Action, String> {
        match (&self.probe, &self.sh) {
            (Some(p), None) => {
                let args = p
                    .iter()
                    .map(|a| vars.expand(a, true))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Action::Probe(args))
            }
            (None, Some(s)) => Ok(Action::Sh(vars.expand(s, false)?)),
            _ => Err(format!(
                "step {:?}: needs exactly one of probe or sh",
                self.name
            )),
        }
    }
}

impl Scenario {
    pub fn parse(name: &str, text: &str) -> Result<Self, String> {
        let mut s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.name = name.to_string();
        s.validate()?;
        Ok(s)
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("scenario");
        Self::parse(name, &text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks what can be checked without running anything, with placeholder variables.
    pub fn validate(&self) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err("scenario has no [[step]]".into());
        }
        let vars = placeholder_vars();
        let mut names = std::collections::BTreeSet::new();
        for step in &self.steps {
            if !names.insert(step.name.as_str()) {
                return Err(format!("two steps are named {:?}", step.name));
            }
            if let Action::Probe(args) = step.action(&vars)? {
                crate::probe::validate(&args).map_err(|e| format!("step {:?}: {e}", step.name))?;
            }
            for m in [&step.expect_event, &step.expect_no_event]
                .into_iter()
                .flatten()
            {
                m.expand(&vars)
                    .map_err(|e| format!("step {:?}: expect_event: {e}", step.name))?;
            }
        }
        for cmd in self.setup.iter().chain(&self.teardown) {
            vars.expand(cmd, false)?;
        }
        vars.expand(&self.workspace, true)
            .map_err(|e| format!("workspace: {e}"))?;
        if let Some(d) = &self.probe_dir {
            vars.expand(d, true)
                .map_err(|e| format!("probe_dir: {e}"))?;
        }
        for l in &self.listen {
            l.addr
                .parse::<std::net::IpAddr>()
                .map_err(|_| format!("listen: bad address {:?}", l.addr))?;
        }
        Ok(())
    }
}

/// Variables with dummy values, for validation.
fn placeholder_vars() -> Vars {
    let mut v = Vars::new();
    for k in [
        "workspace",
        "home",
        "probe",
        "repo",
        "gate",
        "audit_key",
        "audit_log",
        "scratch",
        "cgroup",
    ] {
        v.set(k, format!("/{k}"));
    }
    v
}

/// Every `*.toml` directly in `dir`, sorted by name.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
description = "d"
policy = "policies/coding-agent.toml"
workspace = "/tmp/gt/ws"
setup = ["mkdir -p ${home}/.ssh"]
listen = [{ addr = "127.0.0.1", port = 18080 }]

[[step]]
name = "write key"
probe = ["open-write", "${home}/.ssh/id_rsa"]
expect = "EPERM"
expect_event = { op = "write", decision = "deny", path_suffix = ".ssh/id_rsa" }
unconfined = true

[[step]]
name = "shell"
sh = "cg=${cg}; cd ${home} && ${probe} open-write x"
expect = "exit:0"
"#;

    #[test]
    fn parses() {
        let s = Scenario::parse("x", GOOD).unwrap();
        assert_eq!(s.name, "x");
        assert_eq!(s.steps.len(), 2);
        assert!(s.steps[0].unconfined);
        assert_eq!(s.steps[0].expect, Expect::Errno("EPERM".into()));
        assert_eq!(s.listen[0].port, 18080);
        let mut v = Vars::new();
        v.set("home", "/root").set("probe", "/ws/gate-probe");
        assert_eq!(
            s.steps[0].action(&v).unwrap(),
            Action::Probe(vec!["open-write".into(), "/root/.ssh/id_rsa".into()])
        );
        assert_eq!(
            s.steps[1].action(&v).unwrap(),
            Action::Sh("cg=${cg}; cd /root && /ws/gate-probe open-write x".into())
        );
        assert_eq!(s.steps[0].action(&v).unwrap().argv("/p")[0], "/p");
    }

    #[test]
    fn rejects_bad_scenarios() {
        let bad = |text: &str| Scenario::parse("x", text).unwrap_err();
        let head = "policy = \"p\"\nworkspace = \"/w\"\n";
        assert!(bad(&format!("{head}polcy = 1\n")).contains("unknown field"));
        assert!(bad(head).contains("no [[step]]"));
        let e = bad(&format!(
            "{head}[[step]]\nname = \"a\"\nprobe = [\"open-write\"]\nexpect = \"EPERM\"\n"
        ));
        assert!(e.contains("takes"), "{e}");
        let e = bad(&format!(
            "{head}[[step]]\nname = \"a\"\nprobe = [\"nope\", \"x\"]\nexpect = \"ok\"\n"
        ));
        assert!(e.contains("unknown probe operation"), "{e}");
        let e = bad(&format!("{head}[[step]]\nname = \"a\"\nexpect = \"ok\"\n"));
        assert!(e.contains("exactly one"), "{e}");
        let e = bad(&format!(
            "{head}[[step]]\nname = \"a\"\nsh = \"true\"\nprobe = [\"open-read\", \"/x\"]\nexpect = \"ok\"\n"
        ));
        assert!(e.contains("exactly one"), "{e}");
        let e = bad(&format!(
            "{head}[[step]]\nname = \"a\"\nsh = \"true\"\nexpect = \"maybe\"\n"
        ));
        assert!(e.contains("expect must be"), "{e}");
        let e = bad(&format!(
            "{head}[[step]]\nname = \"a\"\nprobe = [\"open-read\", \"${{hme}}/x\"]\nexpect = \"ok\"\n"
        ));
        assert!(e.contains("unknown variable"), "{e}");
        let e = bad(&format!(
            "{head}[[step]]\nname = \"a\"\nsh = \"true\"\nexpect = \"ok\"\n[[step]]\nname = \"a\"\nsh = \"true\"\nexpect = \"ok\"\n"
        ));
        assert!(e.contains("two steps"), "{e}");
        let e = bad(&format!(
            "{head}[[step]]\nname = \"a\"\nsh = \"true\"\nexpect = \"ok\"\nexpect_event = {{ opp = \"x\" }}\n"
        ));
        assert!(e.contains("unknown field"), "{e}");
    }

    /// Every scenario shipped in this directory parses and validates.
    #[test]
    fn shipped_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let files = list(&dir).unwrap();
        assert!(!files.is_empty(), "no scenarios in {}", dir.display());
        for f in files {
            Scenario::load(&f).unwrap();
        }
    }
}
