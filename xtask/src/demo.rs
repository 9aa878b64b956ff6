//! `cargo xtask demo`: build `gate` and run tests/demo/demo.sh in a 6.1 guest.
use std::os::unix::fs::PermissionsExt as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::guest::{self, RunOptions};
use crate::kernels::Series;
use crate::{paths, setup, workspace};

const DEMO_TIMEOUT: Duration = Duration::from_secs(1200);

pub fn run() -> Result<ExitCode> {
    let env = setup::run(&setup::Options {
        quiet: true,
        update_kernels: false,
    })?;
    let repo = paths::repo_root();
    let script = repo.join("tests/demo/demo.sh");
    match std::fs::metadata(&script) {
        Err(_) => bail!(
            "{} does not exist yet: the demo script has not been written",
            script.display()
        ),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
            bail!(
                "{} is not executable; run `chmod +x {}`",
                script.display(),
                script.display()
            )
        }
        Ok(_) => {}
    }
    workspace::release(&["gate-userspace"])?;
    let gate =
        workspace::release_binary("gate", "gate-userspace should provide the `gate` binary")?;
    let guest = env.guest(Series::V6_1).guest();
    let command = [script, gate, repo.clone()].map(|p| p.to_string_lossy().into_owned());
    let options = RunOptions {
        icount: false,
        timeout: DEMO_TIMEOUT,
        env: Vec::new(),
        cwd: Some(repo),
        shares: guest::project_shares()?,
        append: None,
        systemd: false,
    };
    let outcome = guest::run(&guest, &options, &command)?;
    Ok(crate::exit_code(outcome.exit_code))
}
