//! `gate doctor`: can this host enforce? Each check says what it found and, when it fails,
//! how to fix it. The last check does what `gate run` does before starting a command: load,
//! attach, and prove with a canary that a confined process is actually stopped.
use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{
    btf::{self, Btf},
    cgroup, run, state,
};

pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: &'static str,
}

fn check(name: &'static str, fix: &'static str, r: Result<String, String>) -> Check {
    match r {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
            fix,
        },
        Err(detail) => Check {
            name,
            ok: false,
            detail,
            fix,
        },
    }
}

fn lsm_list() -> Result<String, String> {
    let p = Path::new("/sys/kernel/security/lsm");
    if !p.exists() {
        let _ = nix::mount::mount(
            Some("securityfs"),
            "/sys/kernel/security",
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    let list = fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    if list.split(',').any(|l| l.trim() == "bpf") {
        Ok(format!("active LSMs: {}", list.trim()))
    } else {
        Err(format!(
            "`bpf` is not among the active LSMs ({})",
            list.trim()
        ))
    }
}

pub fn checks() -> Vec<Check> {
    let mut out = vec![
        check(
            "kernel BTF",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian, Ubuntu, Fedora kernels are)",
            Btf::from_sys_fs()
                .and_then(|b| btf::kernel_offsets(&b))
                .map(|_| format!("{} parsed, every field gate needs found", btf::VMLINUX_BTF))
                .map_err(|e| e.to_string()),
        ),
        check(
            "BPF LSM active",
            "add `bpf` to the kernel command line's lsm= list, e.g. \
             lsm=lockdown,capability,landlock,yama,apparmor,bpf, and reboot \
             (needs CONFIG_BPF_LSM=y)",
            lsm_list(),
        ),
        check(
            "cgroup v2",
            "mount the unified hierarchy: mount -t cgroup2 none /sys/fs/cgroup",
            cgroup::hierarchy()
                .map(|h| format!("mounted at {}", h.mount.display()))
                .map_err(|e| e.to_string()),
        ),
        check(
            "bpffs",
            "mount it: mount -t bpf bpf /sys/fs/bpf",
            state::ensure_bpffs()
                .map(|()| format!("{} is a bpf filesystem", state::BPFFS))
                .map_err(|e| e.to_string()),
        ),
    ];
    let prior_ok = out.iter().all(|c| c.ok);
    out.push(check(
        "enforcement self-test",
        "run as root on a kernel where the checks above pass; the message says what failed",
        if prior_ok {
            self_test()
        } else {
            Err("skipped: an earlier check failed".into())
        },
    ));
    out
}

/// Confines `true` under a policy that allows it, which runs gate's full start-up: load,
/// attach, pin, and the canary self-test.
fn self_test() -> Result<String, String> {
    // A private directory (mode 0700, a name nobody can guess): the test policy is written
    // as root.
    let template = std::env::temp_dir().join("gate-doctor-XXXXXX");
    let mut t = std::ffi::CString::new(template.as_os_str().as_encoded_bytes())
        .map_err(|e| e.to_string())?
        .into_bytes_with_nul();
    // SAFETY: a NUL-terminated template that mkdtemp rewrites in place.
    if unsafe { libc::mkdtemp(t.as_mut_ptr().cast()) }.is_null() {
        return Err(format!(
            "creating a private directory in {}: {}",
            std::env::temp_dir().display(),
            std::io::Error::last_os_error()
        ));
    }
    t.pop();
    let dir = PathBuf::from(String::from_utf8(t).map_err(|e| e.to_string())?);
    let policy = dir.join("doctor.toml");
    let text = "version = 1\nname = \"doctor\"\nmode = \"enforce\"\n\n[[rule]]\nid = \"true\"\n\
                op = \"exec\"\npath = [\"/usr/bin/**\", \"/bin/**\"]\ndecision = \"allow\"\n";
    fs::write(&policy, text).map_err(|e| e.to_string())?;
    let opts = run::RunOptions {
        policy: policy.clone(),
        workspace: None,
        mode: None,
        log: None,
        audit_key: PathBuf::from(crate::audit::DEFAULT_KEY_PATH),
        command: vec!["true".into()],
        ringbuf_bytes: 1 << 16,
        quiet: true,
        user: Some("nobody".into()),
    };
    let code = run::run(&opts);
    let _ = fs::remove_dir_all(&dir);
    if code == 0 {
        Ok("programs loaded and attached; a confined test process was denied".into())
    } else {
        Err(format!(
            "gate could not confine a test command (status {code}, reason above)"
        ))
    }
}

/// Prints the report; returns the exit status (0 when every check passed).
pub fn report() -> i32 {
    let checks = checks();
    for c in &checks {
        let mark = if c.ok { "ok  " } else { "FAIL" };
        println!("{mark} {:<22} {}", c.name, c.detail);
        if !c.ok {
            println!("     {:<22} fix: {}", "", c.fix);
        }
    }
    if checks.iter().all(|c| c.ok) {
        println!("This host can enforce gate policies.");
        0
    } else {
        println!(
            "This host cannot enforce gate policies; `gate run` will refuse to start commands."
        );
        1
    }
}
