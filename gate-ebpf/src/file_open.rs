//! open: `file_open`. Opens with write intent (write, append, O_TRUNC) are `write`; other
//! opens are `read`. Creation itself is checked earlier by `path_mknod`. Files on
//! kernel-internal mounts (pidfds, pipes, sockets, memfds) are not decided here.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use gate_common::{decision, hook, op, rule};

use crate::{
    decide::{Agent, Verdict, confined, finish},
    event::Object,
    exec::file_start,
    kernel::{Offs, ReadError, internal_mount, load, offsets, ptr, read},
    process::cgroup_in_agent,
    walk::{Start, file_verdict},
};

const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
const O_TRUNC: u32 = 0o1000;

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(1);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    let file: u64 = ctx.arg(0);
    // BTF-typed loads (`file` is the hook's argument).
    let mode: u32 = load(file, o.file_f_mode());
    let flags: u32 = load(file, o.file_f_flags());
    // overlayfs opens the real file behind an already checked overlay file ("backing file").
    if o.fmode_backing() != 0 && mode & o.fmode_backing() != 0 {
        return 0;
    }
    let fop = if mode & FMODE_WRITE != 0 || flags & O_TRUNC != 0 {
        op::WRITE
    } else if mode & FMODE_READ != 0 {
        let cfg = &a.cfg;
        if cfg.has_read_rules == 0
            && cfg.defaults[op::READ as usize] & gate_common::decision::MASK
                == gate_common::decision::ALLOW
            && cfg.defaults[op::READ as usize] & gate_common::decision::AUDIT == 0
            && (a.locked == 0 || a.keeps(op::READ as usize))
        {
            return 0;
        }
        op::READ
    } else {
        // Neither read nor write (O_PATH never gets here; e.g. open for ioctl only).
        return 0;
    };
    let start = file_start(&o, file);
    // A file on a kernel-internal mount is no file a policy can name: a pipe or socket
    // reopened through /proc/self/fd, a pidfd (opened read-write since 6.9), a memfd.
    // What reaches another process through such an object is governed where it happens.
    if let Ok(s) = start
        && internal_mount(&o, s.vfsmnt)
    {
        return 0;
    }
    let v = match start {
        Ok(s) if o.valid() != 0 => file_verdict(&o, fop as usize, s, a.cfg.slot),
        _ => Verdict::internal(rule::INTERNAL, false),
    };
    let mut v = v.or_default(&a, fop as usize);
    // Files of cgroups outside the agent (another cgroup's cgroup.procs: moving a task out of
    // the agent; cgroup.kill, cgroup.freeze, limits of gate's own cgroup) are never writable,
    // whatever the policy allows: only the agent's own subtree is.
    if fop == op::WRITE
        && let Ok(s) = start
    {
        match cgroup_file_outside(&o, &a, s.dentry) {
            Ok(false) => {}
            Ok(true) => v.merge(decision::DENY, rule::OUTSIDE_AGENT),
            Err(_) => v.merge(decision::DENY, rule::INTERNAL),
        }
    }
    let obj = Object::File(start.unwrap_or(Start {
        dentry: 0,
        vfsmnt: 0,
    }));
    finish(&a, &o, fop, hook::FILE_OPEN, v, &obj)
}

/// `CGROUP2_SUPER_MAGIC` (include/uapi/linux/magic.h).
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// Whether `dentry` is a file of a cgroup v2 directory outside the agent's subtree: its
/// parent directory's inode holds the kernfs node whose `priv` is the `struct cgroup`.
#[inline(always)]
fn cgroup_file_outside(o: &Offs, a: &Agent, dentry: u64) -> Result<bool, ReadError> {
    let sb = ptr(dentry, o.dentry_d_sb())?;
    let magic: u64 = read(sb, o.sb_s_magic())?;
    if magic != CGROUP2_SUPER_MAGIC {
        return Ok(false);
    }
    let dir = ptr(dentry, o.dentry_d_parent())?;
    let inode = ptr(dir, o.dentry_d_inode())?;
    let kn = ptr(inode, o.inode_i_private())?;
    let cg = ptr(kn, o.kernfs_node_priv())?;
    cgroup_in_agent(o, a, cg).map(|inside| !inside)
}
