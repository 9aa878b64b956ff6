//! The ancestor walk: from an object's dentry up to the root, crossing mount points, looking
//! each (device, inode) up in the rule map.
//!
//! The walk follows `d_parent` to the root of the object's *filesystem* (not just to the root
//! of the mount it was reached through), then continues from the mount point. So a file
//! reached through a bind mount of a protected directory still meets the rules of that
//! directory, and rules on directories above a mount point still apply below it.
use gate_common::{InodeKey, KernelOffsets, MAX_PATH_DEPTH, decision, rule};

use crate::{
    decide::Verdict,
    kernel::{ReadError, ptr, read},
    maps::INODES,
};

/// Where a walk starts: the object's dentry (may be negative, for a name being created) and
/// the vfsmount it was reached through (0 when the hook does not know it: the walk then stops
/// at the root of the filesystem).
#[derive(Clone, Copy)]
pub struct Start {
    pub dentry: u64,
    pub vfsmnt: u64,
}

pub enum Step {
    Up(u64, u64),
    Done,
}

/// One step towards the root: the parent dentry, or the mount point when at the root of a
/// filesystem, or `Done` at the root of the mount tree.
#[inline(always)]
pub fn step(o: &KernelOffsets, dentry: u64, vfsmnt: u64) -> Result<Step, ReadError> {
    let parent = ptr(dentry, o.dentry_d_parent)?;
    if parent != dentry && parent != 0 {
        return Ok(Step::Up(parent, vfsmnt));
    }
    if vfsmnt == 0 {
        return Ok(Step::Done);
    }
    let mount = vfsmnt - o.mount_mnt as u64;
    let mparent = ptr(mount, o.mount_mnt_parent)?;
    if mparent == mount || mparent == 0 {
        return Ok(Step::Done);
    }
    let mountpoint = ptr(mount, o.mount_mnt_mountpoint)?;
    Ok(Step::Up(mountpoint, mparent + o.mount_mnt as u64))
}

/// (device, inode) of a dentry, or None for a negative dentry.
#[inline(always)]
pub fn identity(o: &KernelOffsets, dentry: u64) -> Result<Option<InodeKey>, ReadError> {
    let inode = ptr(dentry, o.dentry_d_inode)?;
    if inode == 0 {
        return Ok(None);
    }
    let ino: u64 = read(inode, o.inode_i_ino)?;
    let sb = ptr(dentry, o.dentry_d_sb)?;
    let dev: u32 = read(sb, o.sb_s_dev)?;
    Ok(Some(InodeKey { dev, _pad: 0, ino }))
}

/// Evaluates the file rules for `op` on the object at `start`: the most severe of the
/// object's exact rule and every ancestor's subtree rule.
#[inline(always)]
pub fn file_verdict(o: &KernelOffsets, op: usize, start: Start) -> Result<Verdict, ReadError> {
    let mut v = Verdict::none();
    let mut dentry = start.dentry;
    let mut vfsmnt = start.vfsmnt;
    let mut first = true;
    for _ in 0..MAX_PATH_DEPTH {
        if let Some(key) = identity(o, dentry)? {
            // SAFETY: the value is only read, within this program run.
            if let Some(r) = unsafe { INODES.get(&key) } {
                if op < r.exact.len() {
                    if first {
                        v.merge(r.exact[op], r.exact_rule[op]);
                    } else {
                        v.merge(r.subtree[op], r.subtree_rule[op]);
                    }
                }
                if v.severity() == decision::DENY {
                    return Ok(v);
                }
            }
        }
        first = false;
        match step(o, dentry, vfsmnt)? {
            Step::Up(d, m) => {
                dentry = d;
                vfsmnt = m;
            }
            Step::Done => return Ok(v),
        }
    }
    Ok(Verdict::internal(rule::INTERNAL, true))
}
