//! The ancestor walk: from an object's dentry up to the root, crossing mount points, looking
//! each (device, inode) up in the rule map.
//!
//! The walk follows `d_parent` to the root of the object's *filesystem* (not just to the root
//! of the mount it was reached through), then continues from the mount point. So a file
//! reached through a bind mount of a protected directory still meets the rules of that
//! directory, and rules on directories above a mount point still apply below it.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use gate_common::{EVENT_NAMES, InodeKey, MAX_PATH_DEPTH, decision, rule};

use crate::{
    decide::Verdict,
    kernel::{Offs, ReadError, offsets, ptr, read},
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
pub fn step(o: &Offs, dentry: u64, vfsmnt: u64) -> Result<Step, ReadError> {
    let parent = ptr(dentry, o.dentry_d_parent())?;
    if parent != dentry && parent != 0 {
        return Ok(Step::Up(parent, vfsmnt));
    }
    if vfsmnt == 0 {
        return Ok(Step::Done);
    }
    let mount = vfsmnt - o.mount_mnt() as u64;
    let mparent = ptr(mount, o.mount_mnt_parent())?;
    if mparent == mount || mparent == 0 {
        return Ok(Step::Done);
    }
    let mountpoint = ptr(mount, o.mount_mnt_mountpoint())?;
    Ok(Step::Up(mountpoint, mparent + o.mount_mnt() as u64))
}

/// (device, inode) of a dentry, or None for a negative dentry.
#[inline(always)]
pub fn identity(o: &Offs, dentry: u64) -> Result<Option<InodeKey>, ReadError> {
    let inode = ptr(dentry, o.dentry_d_inode())?;
    if inode == 0 {
        return Ok(None);
    }
    let ino: u64 = read(inode, o.inode_i_ino())?;
    let sb = ptr(dentry, o.dentry_d_sb())?;
    let dev: u32 = read(sb, o.sb_s_dev())?;
    Ok(Some(InodeKey { dev, _pad: 0, ino }))
}

const RUNNING: u32 = 0;
const FINISHED: u32 = 1;
const FAILED: u32 = 2;

/// State of one rule walk, shared with the `bpf_loop` callback (which the verifier checks once,
/// instead of once per level as it would an unrolled loop).
#[repr(C)]
struct RuleWalk {
    dentry: u64,
    vfsmnt: u64,
    op: u32,
    first: u32,
    status: u32,
    verdict: Verdict,
}

/// One level: look the dentry up, then move to its parent. Returns whether to go on.
#[inline(always)]
fn rule_level(w: &mut RuleWalk) -> Result<bool, ReadError> {
    let o = offsets();
    if let Some(key) = identity(&o, w.dentry)? {
        // SAFETY: the value is only read, within this program run.
        if let Some(r) = unsafe { INODES.get(&key) } {
            let op = (w.op & 3) as usize;
            if w.first != 0 {
                w.verdict.merge(r.exact[op], r.exact_rule[op]);
            } else {
                w.verdict.merge(r.subtree[op], r.subtree_rule[op]);
            }
            if w.verdict.severity() == decision::DENY {
                return Ok(false);
            }
        }
    }
    w.first = 0;
    match step(&o, w.dentry, w.vfsmnt)? {
        Step::Up(d, m) => {
            w.dentry = d;
            w.vfsmnt = m;
            Ok(true)
        }
        Step::Done => Ok(false),
    }
}

extern "C" fn rule_level_cb(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: ctx is the RuleWalk passed to bpf_loop by `file_verdict`.
    let w = unsafe { &mut *ctx.cast::<RuleWalk>() };
    match rule_level(w) {
        Ok(true) => 0,
        Ok(false) => {
            w.status = FINISHED;
            1
        }
        Err(_) => {
            w.status = FAILED;
            1
        }
    }
}

/// Evaluates the file rules for `op` on the object at `start`: the most severe of the
/// object's exact rule and every ancestor's subtree rule. A failed read, or a path deeper than
/// `MAX_PATH_DEPTH`, gives the fail-closed verdict.
#[inline(always)]
pub fn file_verdict(op: usize, start: Start) -> Verdict {
    let mut w = RuleWalk {
        dentry: start.dentry,
        vfsmnt: start.vfsmnt,
        op: op as u32,
        first: 1,
        status: RUNNING,
        verdict: Verdict::none(),
    };
    // SAFETY: bpf_loop calls the callback with a pointer to `w`, on this stack.
    unsafe {
        bpf_loop(
            MAX_PATH_DEPTH,
            rule_level_cb as *mut c_void,
            (&mut w as *mut RuleWalk).cast(),
            0,
        )
    };
    match w.status {
        FINISHED => w.verdict,
        FAILED => Verdict::internal(rule::INTERNAL, false),
        _ => Verdict::internal(rule::INTERNAL, true),
    }
}

/// Dentries whose names make up a path, leaf first, for an event.
#[repr(C)]
pub struct NameWalk {
    pub dentry: u64,
    pub vfsmnt: u64,
    pub root_dentry: u64,
    pub root_mnt: u64,
    pub count: u32,
    pub truncated: u32,
    pub names: [u64; EVENT_NAMES],
}

extern "C" fn name_level_cb(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: ctx is the NameWalk passed to bpf_loop by `collect_names`.
    let w = unsafe { &mut *ctx.cast::<NameWalk>() };
    let o = offsets();
    if w.dentry == w.root_dentry && w.vfsmnt == w.root_mnt {
        return 1;
    }
    let Ok(parent) = ptr(w.dentry, o.dentry_d_parent()) else { return 1 };
    if parent != w.dentry && parent != 0 {
        let n = w.count as usize;
        if n >= EVENT_NAMES {
            w.truncated = 1;
            return 1;
        }
        w.names[n] = w.dentry;
        w.count += 1;
    }
    match step(&o, w.dentry, w.vfsmnt) {
        Ok(Step::Up(d, m)) => {
            w.dentry = d;
            w.vfsmnt = m;
            0
        }
        _ => 1,
    }
}

/// Collects up to `EVENT_NAMES` dentries from `start` up to the task's root directory.
#[inline(always)]
pub fn collect_names(w: &mut NameWalk) {
    // SAFETY: bpf_loop calls the callback with a pointer to `w`, on the caller's stack.
    unsafe {
        bpf_loop(MAX_PATH_DEPTH, name_level_cb as *mut c_void, (w as *mut NameWalk).cast(), 0)
    };
}
