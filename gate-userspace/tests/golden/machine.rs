//! A model of a Debian-like machine for policy tests: merged /usr, a user `dev` with a project,
//! the usual network tools (nc through the alternatives symlinks), some credentials.
//! Shared by the policy integration tests through `#[path]`; each uses part of it.
#![allow(dead_code)]
use std::path::PathBuf;

use gate::policy::{MemResolver, Vars};
use gate_common::decision;

pub const HOME: &str = "/home/dev";
pub const WORKSPACE: &str = "/home/dev/project";

pub fn vars() -> Vars {
    Vars {
        workspace: Some(PathBuf::from(WORKSPACE)),
        home: PathBuf::from(HOME),
    }
}

pub fn machine() -> MemResolver {
    let mut r = MemResolver::new()
        .dir("/usr/bin")
        .dir("/usr/lib/gcc/x86_64-linux-gnu/12")
        .file("/usr/lib/gcc/x86_64-linux-gnu/12/cc1")
        .dir("/usr/lib/git-core")
        .dir("/usr/lib64")
        .dir("/usr/libexec")
        .dir("/usr/local/bin")
        .symlink("/bin", "usr/bin")
        .symlink("/lib", "usr/lib")
        .symlink("/lib64", "usr/lib64")
        .dir("/tmp")
        .dir("/var/tmp")
        .dir("/dev/shm")
        .dir("/dev/pts")
        .file("/dev/null")
        .file("/dev/tty")
        .file("/dev/ptmx");
    for tool in [
        "bash", "sh", "cc", "gcc", "git", "make", "python3", "curl", "wget", "ssh", "scp", "sftp",
        "rsync",
    ] {
        r = r.file(format!("/usr/bin/{tool}"));
    }
    r = r
        .file("/usr/bin/nc.openbsd")
        .symlink("/etc/alternatives/nc", "/bin/nc.openbsd")
        .symlink("/etc/alternatives/netcat", "/bin/nc.openbsd")
        .symlink("/usr/bin/nc", "/etc/alternatives/nc")
        .symlink("/usr/bin/netcat", "/etc/alternatives/netcat");
    r.dir(format!("{HOME}/.cache"))
        .dir(format!("{HOME}/.cargo/bin"))
        .file(format!("{HOME}/.ssh/id_ed25519"))
        .file(format!("{HOME}/.ssh/authorized_keys"))
        .file(format!("{HOME}/.aws/credentials"))
        .file(format!("{HOME}/.gitconfig"))
        .file(format!("{HOME}/.bashrc"))
        .file(format!("{HOME}/.profile"))
        .file(format!("{HOME}/.netrc"))
        .file(format!("{WORKSPACE}/src/main.c"))
        .dir(format!("{WORKSPACE}/.git/hooks"))
        .file(format!("{WORKSPACE}/.git/config"))
        // Another name of the private key, outside ~/.ssh.
        .hardlink(format!("{HOME}/.ssh/id_ed25519"), "/tmp/innocent-looking")
}

/// Decision text (`allow`, `ask`, `deny`) of a decision byte.
pub fn name(byte: u8) -> &'static str {
    match byte & decision::MASK {
        decision::ALLOW => "allow",
        decision::ASK => "ask",
        decision::DENY => "deny",
        _ => "none",
    }
}
