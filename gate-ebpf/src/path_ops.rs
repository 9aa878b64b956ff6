//! Writes that change the file tree without an open: the `path_*` hooks (they carry the
//! vfsmount, so rules above mount points apply) and `inode_setattr` for timestamp changes.
//! Each is a `write` on its object; link and rename check both ends.
use crate::kernel::Offs;
use aya_ebpf::{macros::lsm, programs::LsmContext};
use gate_common::{hook, op, pending, rule};

use crate::{
    decide::{Agent, Verdict, confined, finish},
    event::Object,
    kernel::{internal_mount, load, offsets, read},
    walk::{Start, file_verdict},
};

/// The object named `dentry` inside the directory `dir` (a `struct path *`).
#[inline(always)]
fn in_dir(o: &Offs, dir: u64, dentry: u64) -> Start {
    Start {
        dentry,
        vfsmnt: load(dir, o.path_mnt()),
    }
}

/// The object a `struct path *` points at.
#[inline(always)]
fn at_path(o: &Offs, path: u64) -> Start {
    Start {
        dentry: load(path, o.path_dentry()),
        vfsmnt: load(path, o.path_mnt()),
    }
}

/// Checks a write to `start` for a confined task; 0 for everyone else.
#[inline(always)]
fn check_write(a: &Agent, o: &Offs, hook: u8, start: Start) -> i32 {
    check_write_as(a, o, hook, start, op::WRITE as usize)
}

/// Checks a write that puts an existing object (or a symlink) at the name `start`: also
/// refused where the policy watches names below that one (`gate_common::PendingRule`).
#[inline(always)]
fn check_new_name(a: &Agent, o: &Offs, hook: u8, start: Start) -> i32 {
    check_write_as(a, o, hook, start, op::WRITE as usize | pending::NEW_NAME)
}

#[inline(always)]
fn check_write_as(a: &Agent, o: &Offs, hook: u8, start: Start, walk_op: usize) -> i32 {
    // ftruncate, fchmod, fchown of a memfd, pipe or socket: no file a policy names.
    if start.vfsmnt != 0 && internal_mount(o, start.vfsmnt) {
        return 0;
    }
    let v = if o.valid() == 0 || start.dentry == 0 {
        Verdict::internal(rule::INTERNAL, false)
    } else {
        file_verdict(o, walk_op, start, a.cfg.slot)
    };
    let v = v.or_default(&a, op::WRITE as usize);
    finish(&a, o, op::WRITE, hook, v, &Object::File(start))
}

#[lsm(hook = "path_mknod")]
pub fn path_mknod(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(4);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    check_write(&a, &o, hook::PATH_MKNOD, in_dir(&o, ctx.arg(0), ctx.arg(1)))
}

#[lsm(hook = "path_mkdir")]
pub fn path_mkdir(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(3);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    check_write(&a, &o, hook::PATH_MKDIR, in_dir(&o, ctx.arg(0), ctx.arg(1)))
}

#[lsm(hook = "path_rmdir")]
pub fn path_rmdir(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(2);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    check_write(&a, &o, hook::PATH_RMDIR, in_dir(&o, ctx.arg(0), ctx.arg(1)))
}

#[lsm(hook = "path_unlink")]
pub fn path_unlink(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(2);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    check_write(
        &a,
        &o,
        hook::PATH_UNLINK,
        in_dir(&o, ctx.arg(0), ctx.arg(1)),
    )
}

#[lsm(hook = "path_symlink")]
pub fn path_symlink(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(3);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    check_new_name(
        &a,
        &o,
        hook::PATH_SYMLINK,
        in_dir(&o, ctx.arg(0), ctx.arg(1)),
    )
}

/// A new name for an existing inode: a write at the new name (`path_link`), and a write on
/// the source file itself (`path_link_src`), so a protected file cannot be given a name
/// outside the rules that cover it. Two programs on one hook, each with one walk: the second
/// to run gets the first one's verdict and passes a denial on.
#[lsm(hook = "path_link")]
pub fn path_link(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(3);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    check_new_name(
        &a,
        &o,
        hook::PATH_LINK_DST,
        in_dir(&o, ctx.arg(1), ctx.arg(2)),
    )
}

#[lsm(hook = "path_link")]
pub fn path_link_src(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(3);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    check_write(
        &a,
        &o,
        hook::PATH_LINK_SRC,
        in_dir(&o, ctx.arg(1), ctx.arg(0)),
    )
}

/// rename: both ends, one program each (see `path_link`).
#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(5);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    check_new_name(
        &a,
        &o,
        hook::PATH_RENAME_DST,
        in_dir(&o, ctx.arg(2), ctx.arg(3)),
    )
}

#[lsm(hook = "path_rename")]
pub fn path_rename_src(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(5);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    check_write(
        &a,
        &o,
        hook::PATH_RENAME_SRC,
        in_dir(&o, ctx.arg(0), ctx.arg(1)),
    )
}

#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(1);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    check_write(&a, &o, hook::PATH_TRUNCATE, at_path(&o, ctx.arg(0)))
}

#[lsm(hook = "path_chmod")]
pub fn path_chmod(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(2);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    check_write(&a, &o, hook::PATH_CHMOD, at_path(&o, ctx.arg(0)))
}

#[lsm(hook = "path_chown")]
pub fn path_chown(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(3);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    check_write(&a, &o, hook::PATH_CHOWN, at_path(&o, ctx.arg(0)))
}

const ATTR_MODE: u32 = 1 << 0;
const ATTR_UID: u32 = 1 << 1;
const ATTR_GID: u32 = 1 << 2;
const ATTR_SIZE: u32 = 1 << 3;
const ATTR_ATIME: u32 = 1 << 4;
const ATTR_MTIME: u32 = 1 << 5;

/// `inode_setattr` has no vfsmount (the walk stops at the filesystem root), and mode, owner
/// and size changes were already checked by the path hooks; it covers what they do not:
/// timestamp changes (utimes). Its argument list gained an idmap in 6.3, so there are two
/// programs and userspace loads the one that matches the running kernel.
#[lsm(hook = "inode_setattr")]
pub fn inode_setattr(ctx: LsmContext) -> i32 {
    setattr(ctx.arg(2), ctx.arg(0), ctx.arg(1))
}

#[lsm(hook = "inode_setattr")]
pub fn inode_setattr_idmap(ctx: LsmContext) -> i32 {
    setattr(ctx.arg(3), ctx.arg(1), ctx.arg(2))
}

#[inline(always)]
fn setattr(ret: i32, dentry: u64, attr: u64) -> i32 {
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let valid: u32 = read(attr, 0).unwrap_or(ATTR_MTIME);
    if valid & (ATTR_MODE | ATTR_UID | ATTR_GID | ATTR_SIZE) != 0
        || valid & (ATTR_ATIME | ATTR_MTIME) == 0
    {
        return 0;
    }
    let o = offsets();
    check_write(&a, &o, hook::INODE_SETATTR, Start { dentry, vfsmnt: 0 })
}

/// Extended attributes and POSIX ACLs (`inode_setxattr`, `inode_removexattr`, and from 6.2
/// `inode_set_acl`, `inode_remove_acl`; before 6.2 ACLs pass through the xattr hooks): each
/// is a write to its file (an ACL can widen who may write it; `security.capability` gives a
/// binary capabilities). Like `inode_setattr` they have no vfsmount: the walk stops at the
/// file system's root.
#[inline(always)]
fn xattr(ret: i32, dentry: u64, hook: u8) -> i32 {
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    check_write(&a, &o, hook, Start { dentry, vfsmnt: 0 })
}

#[lsm(hook = "inode_setxattr")]
pub fn inode_setxattr(ctx: LsmContext) -> i32 {
    xattr(ctx.arg(6), ctx.arg(1), hook::INODE_SETXATTR)
}

#[lsm(hook = "inode_removexattr")]
pub fn inode_removexattr(ctx: LsmContext) -> i32 {
    xattr(ctx.arg(3), ctx.arg(1), hook::INODE_REMOVEXATTR)
}

#[lsm(hook = "inode_set_acl")]
pub fn inode_set_acl(ctx: LsmContext) -> i32 {
    xattr(ctx.arg(4), ctx.arg(1), hook::INODE_SET_ACL)
}

#[lsm(hook = "inode_remove_acl")]
pub fn inode_remove_acl(ctx: LsmContext) -> i32 {
    xattr(ctx.arg(3), ctx.arg(1), hook::INODE_REMOVE_ACL)
}
