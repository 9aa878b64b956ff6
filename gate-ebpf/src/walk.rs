//! The ancestor walk: from an object's dentry up to the root, crossing mount points, looking
//! each (device, inode) up in the rule map.
//!
//! The walk follows `d_parent` to the root of the object's *filesystem* (not just to the root
//! of the mount it was reached through), then continues from the mount point. So a file
//! reached through a bind mount of a protected directory still meets the rules of that
//! directory, and rules on directories above a mount point still apply below it.
use aya_ebpf::helpers::generated::bpf_loop;
use core::ffi::c_void;
use gate_common::{EVENT_NAMES, InodeKey, MAX_PATH_DEPTH, counter, decision, flag, pending, rule};

use crate::{
    decide::Verdict,
    kernel::{Offs, ReadError, load, ptr, read, read_into},
    maps::{INODES, PENDING, WALK, WalkScratch, count, may_have_rule},
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
    Ok(match cross_mount(o, vfsmnt)? {
        Some((d, m)) => Step::Up(d, m),
        None => Step::Done,
    })
}

/// From the root of the filesystem mounted at `vfsmnt`: the mount point and the parent
/// mount (one read of the mount's window; `cross` is the rule walk's crossing), or None at
/// the root of the mount tree (or when the hook gave no vfsmount).
#[inline(always)]
fn cross_mount(o: &Offs, vfsmnt: u64) -> Result<Option<(u64, u64)>, ReadError> {
    if vfsmnt == 0 {
        return Ok(None);
    }
    let mount = vfsmnt - o.mount_mnt() as u64;
    let mut w = MountWindow {
        parent: 0,
        mountpoint: 0,
        root: 0,
        sb: 0,
    };
    mount_window(o, &mut w, mount)?;
    if w.parent == mount || w.parent == 0 {
        return Ok(None);
    }
    Ok(Some((w.mountpoint, w.parent + o.mount_mnt() as u64)))
}

/// (device, inode) of a dentry, or None for a negative dentry.
#[inline(always)]
pub fn identity(o: &Offs, dentry: u64) -> Result<Option<InodeKey>, ReadError> {
    let inode = ptr(dentry, o.dentry_d_inode())?;
    if inode == 0 {
        return Ok(None);
    }
    let ino: u64 = read(inode, o.inode_i_ino())?;
    Ok(Some(InodeKey {
        dev: device(o, dentry)?,
        slot: 0,
        ino,
    }))
}

/// The device of the filesystem a dentry belongs to.
#[inline(always)]
fn device(o: &Offs, dentry: u64) -> Result<u32, ReadError> {
    let sb = ptr(dentry, o.dentry_d_sb())?;
    read(sb, o.sb_s_dev())
}

/// `struct dentry` from `d_parent` to `d_inode`, read in one go: `d_parent`, `d_name`
/// (two words), `d_inode`. This has been the layout on 64-bit kernels for over a decade; on a
/// kernel where it differs (checked against the BTF offsets, which the verifier sees as
/// constants, so only one of the two ways is ever verified) the fields are read one by one.
#[repr(C)]
#[derive(Clone, Copy)]
struct DentryWindow {
    d_parent: u64,
    d_name: [u64; 2],
    d_inode: u64,
}

/// (parent, inode) of a dentry, with one kernel read where the layout allows.
#[inline(always)]
fn parent_and_inode(o: &Offs, dentry: u64) -> Result<(u64, u64), ReadError> {
    if o.dentry_d_inode() == o.dentry_d_parent() + 24 {
        let w: DentryWindow = read(dentry, o.dentry_d_parent())?;
        Ok((w.d_parent, w.d_inode))
    } else {
        Ok((
            ptr(dentry, o.dentry_d_parent())?,
            ptr(dentry, o.dentry_d_inode())?,
        ))
    }
}

/// Where the walk above the first mount point stands.
#[repr(C)]
#[derive(Clone, Copy)]
struct WalkState {
    dentry: u64,
    vfsmnt: u64,
    packed: u64,
}

/// Evaluates the file rules for `op` on the object at `start`: the most severe of the
/// object's exact rule and every ancestor's subtree rule. A failed read, or a path deeper than
/// `MAX_PATH_DEPTH`, gives the fail-closed verdict.
#[inline(always)]
pub fn file_verdict(o: &Offs, op: usize, start: Start, slot: u32) -> Verdict {
    let packed = walk_rules(o, op & (3 | pending::NEW_NAME), start, slot);
    let v = Verdict::unpack(packed);
    if v.flags & flag::INTERNAL_ERROR != 0 {
        count(match v.rule {
            rule::INTERNAL_DEPTH => counter::DEPTH_EXCEEDED,
            rule::INTERNAL_DISCONNECTED => counter::DISCONNECTED,
            _ => counter::INTERNAL_ERROR,
        });
        return Verdict {
            decision: decision::DENY,
            rule: rule::INTERNAL,
            flags: flag::INTERNAL_ERROR,
        };
    }
    v
}

const FAILED: u64 =
    (decision::DENY as u64) | (rule::INTERNAL as u64) << 8 | (flag::INTERNAL_ERROR as u64) << 24;
const TOO_DEEP: u64 = (decision::DENY as u64)
    | (rule::INTERNAL_DEPTH as u64) << 8
    | (flag::INTERNAL_ERROR as u64) << 24;
const DISCONNECTED: u64 = (decision::DENY as u64)
    | (rule::INTERNAL_DISCONNECTED as u64) << 8
    | (flag::INTERNAL_ERROR as u64) << 24;

/// Merges the rule of `key`, if any, into `v`: the object's exact rule at level 0, subtree
/// rules above. Returns true when the verdict is final (a deny).
#[inline(always)]
pub fn apply(v: &mut Verdict, key: &InodeKey, op: usize, level: u32) -> bool {
    if !may_have_rule(key) {
        return false;
    }
    // SAFETY: the value is only read, within this program run.
    let Some(r) = (unsafe { INODES.get(key) }) else {
        return false;
    };
    if level == 0 {
        v.merge(r.exact[op], r.exact_rule[op]);
    } else {
        v.merge(r.subtree[op], r.subtree_rule[op]);
    }
    v.severity() == decision::DENY
}

/// The walk itself; returns a packed verdict (internal errors flagged, not yet counted).
///
/// First the object's own file system, with BTF-typed loads (`kernel::load`: one instruction
/// per field, the start pointers come from the hook's arguments): per level the parent, the
/// inode, its number and a test of the inode filter (the rule lookup only on "maybe"). Then,
/// past the first mount point, the rest of the way with helper reads (`walk_above`), since a
/// `struct mount` is only reachable by `container_of`. Each level is one `bpf_loop`
/// iteration, so the verifier checks a level once, whatever the depth.
#[inline(always)]
fn walk_rules(o: &Offs, op: usize, start: Start, slot: u32) -> u64 {
    let sb: u64 = load(start.dentry, o.dentry_d_sb());
    if sb == 0 {
        return FAILED;
    }
    let dev: u32 = load(sb, o.sb_s_dev());
    if !forget_hits(start.dentry) {
        return FAILED;
    }
    let mut own = Own {
        dentry: start.dentry,
        packed: Verdict::none().pack(),
        dev: dev as u64,
        op: op as u64 | (slot as u64) << 32,
        result: TOO_DEEP,
        above: 0,
    };
    // SAFETY: the callback only touches `own`, which outlives the call.
    let r = unsafe {
        bpf_loop(
            MAX_PATH_DEPTH,
            own_level as *const () as *mut c_void,
            (&mut own as *mut Own).cast(),
            0,
        )
    };
    if r < 0 {
        return FAILED;
    }
    if own.above == 0 {
        return own.result;
    }
    // Where the walk stopped must be the file system's root or the root of the mount the
    // object was reached through (a file system may expose several roots, as NFS does). A
    // dentry with no parent anywhere else is disconnected (opened by handle): the
    // directories above it, and their rules, are unknown.
    match connected(sb, own.dentry, start.vfsmnt) {
        CONNECTED => {}
        NOT_CONNECTED => return DISCONNECTED,
        _ => return FAILED,
    }
    // Names below the pending directories met on the way (rare: read from the scratch map).
    let packed = pending_rules(op as u64 | (slot as u64) << 32, own.packed);
    let v = Verdict::unpack(packed);
    if packed == FAILED || v.severity() == decision::DENY {
        return packed;
    }
    // The root of this file system: on to the mount point, if any.
    walk_above(
        o,
        (op & 3) | (slot as usize) << 32,
        start.vfsmnt,
        v,
        own.above as u32,
    )
}

const CONNECTED: u64 = 0;
const NOT_CONNECTED: u64 = 1;

/// Whether `top`, a dentry that is its own parent, is the root of the file system `sb` or
/// of the mount `vfsmnt` (0: unknown): `CONNECTED`, `NOT_CONNECTED`, or 2 when a read
/// failed. Objects of the kernel's own file systems (a memfd, a pipe: every one its own
/// root) have no path to be disconnected from: the policy's defaults decide them, as before.
/// A function of its own (a BPF subprogram): its locals stay out of the hooks' stack frames,
/// which are near the verifier's limit.
#[inline(never)]
fn connected(sb: u64, top: u64, vfsmnt: u64) -> u64 {
    /// `SB_KERNMOUNT` (include/linux/fs.h).
    const SB_KERNMOUNT: u64 = 1 << 22;
    let o = crate::kernel::offsets();
    let Ok(root) = ptr(sb, o.sb_s_root()) else {
        return 2;
    };
    if top == root {
        return CONNECTED;
    }
    if vfsmnt != 0 {
        match ptr(vfsmnt, o.vfsmount_mnt_root()) {
            Ok(r) if r == top => return CONNECTED,
            Ok(_) => {}
            Err(_) => return 2,
        }
    }
    match read::<u64>(sb, o.sb_s_flags()) {
        Ok(f) if f & SB_KERNMOUNT != 0 => CONNECTED,
        Ok(_) => NOT_CONNECTED,
        Err(_) => 2,
    }
}

/// What `own_level` works on. `dentry` holds a BTF-typed pointer: the verifier keeps its type
/// across the stack, so the loads through it stay plain loads.
#[repr(C)]
struct Own {
    dentry: u64,
    packed: u64,
    dev: u64,
    /// The operation (low bits) and the policy slot (high 32 bits).
    op: u64,
    /// The packed verdict once the walk ended here (a deny, or too deep).
    result: u64,
    /// When the file system's root was reached: the number of levels walked (the walk goes on
    /// above the mount point with `packed`).
    above: u64,
}

/// One level in the object's own file system: 0 to go on, 1 when done.
#[inline(never)]
extern "C" fn own_level(level: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `walk_rules` passes its `Own`.
    let w = unsafe { &mut *ctx.cast::<Own>() };
    let o = crate::kernel::offsets();
    let dentry = w.dentry;
    let mut v = Verdict::unpack(w.packed);
    let parent: u64 = load(dentry, o.dentry_d_parent());
    let inode: u64 = load(dentry, o.dentry_d_inode());
    if inode != 0 {
        let ino: u64 = load(inode, o.inode_i_ino());
        let key = InodeKey {
            dev: w.dev as u32,
            slot: (w.op >> 32) as u32,
            ino,
        };
        if may_have_rule(&key) {
            // SAFETY: the value is only read, within this program run.
            if let Some(r) = unsafe { INODES.get(&key) } {
                let op = (w.op & 3) as usize;
                if level == 0 {
                    v.merge(r.exact[op], r.exact_rule[op]);
                } else {
                    v.merge(r.subtree[op], r.subtree_rule[op]);
                }
                if v.severity() == decision::DENY {
                    w.result = v.pack();
                    return 1;
                }
                if r.pending != 0 && level != 0 && !remember(r.pending, level) {
                    // More pending directories on one path than a walk keeps: fail closed.
                    w.result = FAILED;
                    return 1;
                }
            }
        }
    }
    w.packed = v.pack();
    if parent == dentry || parent == 0 {
        w.above = level + 1;
        return 1;
    }
    w.dentry = parent;
    0
}

/// Notes a pending directory at `level` (above the object); false when the walk already
/// holds as many as it keeps.
#[inline(always)]
fn remember(node: u32, level: u64) -> bool {
    let Some(s) = WALK.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch entry, used by this program run alone.
    let s = unsafe { &mut *s };
    let i = s.hits as usize;
    if i >= pending::HITS {
        return false;
    }
    s.hit[i & (pending::HITS - 1)] = crate::maps::Hit {
        node,
        level: level as u32,
    };
    s.hits = i as u64 + 1;
    true
}

/// Starts a walk's record of pending directories; false when the scratch map is missing.
#[inline(always)]
fn forget_hits(start: u64) -> bool {
    let Some(s) = WALK.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch entry, used by this program run alone.
    unsafe {
        (*s).hits = 0;
        (*s).start = start;
    }
    true
}

/// Merges the rules of the names below the pending directories the walk met (`WALK.hit`)
/// into the packed verdict `packed`: from each such directory down, name by name, as far as
/// the names match. `op` carries the slot in its high 32 bits.
#[inline(always)]
fn pending_rules(op: u64, packed: u64) -> u64 {
    let Some(s) = WALK.get_ptr_mut(0) else {
        return FAILED;
    };
    // SAFETY: this CPU's scratch entry, used by this program run alone.
    let s = unsafe { &mut *s };
    if s.hits == 0 {
        return packed;
    }
    s.packed = packed;
    s.op = op;
    s.current = 0;
    // SAFETY: the callback takes no context; it works on this CPU's scratch entry.
    let r = unsafe {
        bpf_loop(
            pending::HITS as u32 * (pending::MAX_DEPTH + 1),
            pending_step as *const () as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    if r < 0 { FAILED } else { s.packed }
}

/// `WalkScratch::current` once every pending directory is done.
const ALL_DONE: u64 = u64::MAX;

/// One name of `pending_rules`: `current` is the hit (high bits) and how many names below it
/// matched so far (low 8 bits; 0: none looked at yet). 0 to go on, 1 when done.
#[inline(never)]
extern "C" fn pending_step(_: u64, _: *mut c_void) -> i64 {
    let Some(s) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch entry, used by this program run alone.
    let s = unsafe { &mut *s };
    let (i, j) = (s.current >> 8, s.current & 0xff);
    if i >= s.hits || i >= pending::HITS as u64 {
        return 1;
    }
    let next_hit = |s: &mut WalkScratch| {
        s.current = (i + 1) << 8;
        0
    };
    let hit = i as usize & (pending::HITS - 1);
    let level = s.hit[hit].level as u64;
    if j == 0 {
        s.key.node = s.hit[hit].node;
    }
    let j = j + 1;
    if j > level || j > pending::MAX_DEPTH as u64 {
        return next_hit(s);
    }
    // The name's dentry: `level - j` levels above the object.
    s.dentry = s.start;
    s.climb = level - j;
    // SAFETY: the callback takes no context; it works on this CPU's scratch entry.
    let r = unsafe {
        bpf_loop(
            MAX_PATH_DEPTH,
            climb_step as *const () as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let Some(s) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: as above.
    let s = unsafe { &mut *s };
    if r < 0 || s.climb != 0 || s.dentry == 0 {
        s.packed = FAILED;
        return 1;
    }
    let dentry = s.dentry;
    let o = crate::kernel::offsets();
    let (Ok(hash_len), Ok(name)) = (
        read::<u64>(dentry, o.dentry_d_name()),
        ptr(dentry, o.dentry_d_name() + o.qstr_name()),
    ) else {
        s.packed = FAILED;
        return 1;
    };
    let len = hash_len >> 32;
    if len == 0 || len > pending::MAX_NAME as u64 {
        return next_hit(s);
    }
    let Some(h) = name_hash(s, name, len) else {
        s.packed = FAILED;
        return 1;
    };
    s.key.slot = (s.op >> 32) as u32;
    s.key.len = len as u32;
    s.key._pad = 0;
    s.key.hash = h;
    // SAFETY: the value is only read, within this program run.
    let Some(p) = (unsafe { PENDING.get(&s.key) }) else {
        return next_hit(s);
    };
    let op = (s.op & 3) as usize;
    let mut v = Verdict::unpack(s.packed);
    if j == level {
        // The name is the object's own.
        v.merge(p.rule.exact[op], p.rule.exact_rule[op]);
        if s.op & pending::NEW_NAME as u64 != 0 && p.guard != rule::DEFAULT {
            v.merge(decision::DENY, p.guard);
        }
    } else {
        v.merge(p.rule.subtree[op], p.rule.subtree_rule[op]);
    }
    s.packed = v.pack();
    if v.severity() == decision::DENY {
        s.current = ALL_DONE;
        return 1;
    }
    if p.rule.pending == 0 {
        return next_hit(s);
    }
    s.key.node = p.rule.pending;
    s.current = i << 8 | j;
    0
}

/// One level up from `WalkScratch::dentry` while `climb` levels remain: 0 to go on, 1 when
/// done (`dentry` 0 when a read failed).
#[inline(never)]
extern "C" fn climb_step(_: u64, _: *mut c_void) -> i64 {
    let Some(s) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch entry, used by this program run alone.
    let s = unsafe { &mut *s };
    if s.climb == 0 {
        return 1;
    }
    match ptr(s.dentry, crate::kernel::offsets().dentry_d_parent()) {
        Ok(parent) => {
            s.dentry = parent;
            s.climb -= 1;
            0
        }
        Err(_) => {
            s.dentry = 0;
            1
        }
    }
}

/// `gate_common::pending::hash` of the `len` (1 to `MAX_NAME`) bytes at `name` (kernel
/// memory): its first bytes read in one go into the zeroed scratch buffer, then hashed word
/// by word over the whole buffer, with no branch for the verifier to follow. None when the
/// read fails.
#[inline(always)]
fn name_hash(s: &mut WalkScratch, name: u64, len: u64) -> Option<u64> {
    let mut i = 0usize;
    while i < pending::WORDS {
        s.name[i] = 0;
        i += 1;
    }
    let n = if len > 8 * pending::WORDS as u64 {
        8 * pending::WORDS as u64
    } else {
        len
    };
    // Through memory and checked again: the verifier must see the bound on the very register
    // passed (the compiler would fold the check above into one on the unshifted word).
    s.key.hash = n;
    // SAFETY: a plain read of this CPU's scratch entry.
    let n = unsafe { core::ptr::read_volatile(&s.key.hash) };
    if n > 8 * pending::WORDS as u64 {
        return None;
    }
    let n = n as u32;
    // SAFETY: the helper writes at most `n` bytes, the size of `s.name`, into it.
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            s.name.as_mut_ptr().cast(),
            n,
            name as *const c_void,
        )
    };
    if r != 0 {
        return None;
    }
    // In place (`pending::hash_words`, without a copy of the buffer on the stack).
    let mut h = pending::SEED;
    let mut i = 0usize;
    while i < pending::WORDS {
        // A volatile load per word, at its use: else the compiler loads them all up front and
        // spills them to the stack, which has no room.
        // SAFETY: a plain read of this CPU's scratch entry.
        let w = unsafe { core::ptr::read_volatile(&s.name[i]) };
        h = pending::mix(h, w);
        i += 1;
    }
    Some(pending::finish(h))
}

/// From the root of the file system mounted at `vfsmnt` up through the mount points above
/// it, with helper reads. `levels` have been walked already; `op` carries the policy slot in
/// its high 32 bits.
///
/// One level per `bpf_loop` iteration: the verifier checks the level once, not once per
/// possible depth, which keeps loading the programs fast.
#[inline(always)]
fn walk_above(o: &Offs, op: usize, vfsmnt: u64, v: Verdict, levels: u32) -> u64 {
    if vfsmnt == 0 {
        return v.pack();
    }
    let mut above = Above {
        st: WalkState {
            dentry: 0,
            vfsmnt,
            packed: v.pack(),
        },
        op: op as u64,
        done: levels as u64,
        result: TOO_DEEP,
        up: MountWindow {
            parent: 0,
            mountpoint: 0,
            root: 0,
            sb: 0,
        },
    };
    if mount_window(o, &mut above.up, vfsmnt - o.mount_mnt() as u64).is_err() {
        return FAILED;
    }
    match cross(o, &mut above, v) {
        Ok(true) => {}
        Ok(false) => return v.pack(),
        Err(_) => return FAILED,
    }
    // SAFETY: the callback only touches `above`, which outlives the call.
    let r = unsafe {
        bpf_loop(
            MAX_PATH_DEPTH,
            above_level as *const () as *mut c_void,
            (&mut above as *mut Above).cast(),
            0,
        )
    };
    if r < 0 { FAILED } else { above.result }
}

/// What `above_level` works on: the level to look at next, and the result once done.
#[repr(C)]
struct Above {
    st: WalkState,
    op: u64,
    /// Levels walked before the first mount point.
    done: u64,
    result: u64,
    /// The window of the mount `st` is in: where the walk goes at its file system's root.
    up: MountWindow,
}

/// `struct mount` from `mnt_parent` on: the parent mount, the mount point (a dentry in the
/// parent's file system), and the embedded `struct vfsmount`'s `mnt_root` and `mnt_sb`. One
/// kernel read where the layout allows (it has been this one for over a decade; checked
/// against the BTF offsets, which the verifier sees as constants), else one per field.
#[repr(C)]
struct MountWindow {
    parent: u64,
    mountpoint: u64,
    root: u64,
    sb: u64,
}

/// Reads the window of `mount` into `w` (in place: `w` lives in the loop context).
#[inline(always)]
fn mount_window(o: &Offs, w: &mut MountWindow, mount: u64) -> Result<(), ReadError> {
    if o.mount_mnt_mountpoint() == o.mount_mnt_parent() + 8
        && o.mount_mnt() + o.vfsmount_mnt_sb() == o.mount_mnt_parent() + 24
    {
        read_into(w, mount, o.mount_mnt_parent())
    } else {
        w.parent = ptr(mount, o.mount_mnt_parent())?;
        w.mountpoint = ptr(mount, o.mount_mnt_mountpoint())?;
        w.sb = ptr(mount, o.mount_mnt() + o.vfsmount_mnt_sb())?;
        Ok(())
    }
}

/// From the root of the file system of the mount `a.up` describes, to its mount point in the
/// parent mount, carrying `v`: false at the root of the mount tree. Two reads: the parent's
/// window (kept for the next crossing) and its device.
#[inline(always)]
fn cross(o: &Offs, a: &mut Above, v: Verdict) -> Result<bool, ReadError> {
    let mount = a.st.vfsmnt - o.mount_mnt() as u64;
    let (parent, mountpoint) = (a.up.parent, a.up.mountpoint);
    if parent == mount || parent == 0 {
        return Ok(false);
    }
    mount_window(o, &mut a.up, parent)?;
    let dev: u32 = read(a.up.sb, o.sb_s_dev())?;
    a.st = WalkState {
        dentry: mountpoint,
        vfsmnt: parent + o.mount_mnt() as u64,
        packed: v.pack() | (dev as u64) << 32,
    };
    Ok(true)
}

/// One level of `walk_above`: 0 to go on, 1 when `result` is set.
#[inline(never)]
extern "C" fn above_level(level: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `walk_above` passes its `Above`.
    let a = unsafe { &mut *ctx.cast::<Above>() };
    let o = crate::kernel::offsets();
    let finish = |a: &mut Above, result: u64| {
        a.result = result;
        1
    };
    if level + a.done >= MAX_PATH_DEPTH as u64 {
        return finish(a, TOO_DEEP);
    }
    let (dentry, vfsmnt) = (a.st.dentry, a.st.vfsmnt);
    let mut v = Verdict::unpack(a.st.packed);
    let dev = (a.st.packed >> 32) as u32;
    let Ok((parent, inode)) = parent_and_inode(&o, dentry) else {
        return finish(a, FAILED);
    };
    if inode != 0 {
        let Ok(ino) = read::<u64>(inode, o.inode_i_ino()) else {
            return finish(a, FAILED);
        };
        if apply(
            &mut v,
            &InodeKey {
                dev,
                slot: (a.op >> 32) as u32,
                ino,
            },
            (a.op & 3) as usize,
            1,
        ) {
            return finish(a, v.pack());
        }
    }
    if parent != dentry && parent != 0 {
        a.st = WalkState {
            dentry: parent,
            vfsmnt,
            packed: v.pack() | (dev as u64) << 32,
        };
        return 0;
    }
    match cross(&o, a, v) {
        Ok(true) => 0,
        Ok(false) => finish(a, v.pack()),
        Err(_) => finish(a, FAILED),
    }
}

/// Dentries whose names make up a path, one slot per level from the object up (a filesystem
/// root's name is "/", which userspace leaves out when it joins the names), and where the
/// name walk stands. Filled one level per `bpf_loop` iteration (`name_level`), in place: the
/// event code's stack frame has no room for a copy.
#[repr(C)]
pub struct Names {
    dentry: u64,
    vfsmnt: u64,
    root_dentry: u64,
    root_mnt: u64,
    pub levels: u64,
    /// Set when the walk reached the root (of the task or of everything) before running out
    /// of slots.
    ended: u64,
    pub dentries: [u64; EVENT_NAMES],
}

impl Names {
    /// Nothing collected yet: a walk from `start` up to the task's root directory.
    #[inline(always)]
    pub fn new(start: Start, root_dentry: u64, root_mnt: u64) -> Self {
        Names {
            dentry: start.dentry,
            vfsmnt: start.vfsmnt,
            root_dentry,
            root_mnt,
            levels: 0,
            ended: 0,
            dentries: [0; EVENT_NAMES],
        }
    }

    /// Walks to the task's root directory, keeping the first `EVENT_NAMES` levels. On a
    /// failure, the levels read so far.
    #[inline(always)]
    pub fn collect(&mut self) {
        // SAFETY: the callback only touches `self`, which outlives the call.
        let r = unsafe {
            bpf_loop(
                EVENT_NAMES as u32,
                name_level as *const () as *mut c_void,
                (self as *mut Names).cast(),
                0,
            )
        };
        if r < 0 {
            self.ended = 1;
        }
    }

    /// Whether the path has more levels than `EVENT_NAMES`.
    #[inline(always)]
    pub fn truncated(&self) -> bool {
        self.ended == 0 && !(self.dentry == self.root_dentry && self.vfsmnt == self.root_mnt)
    }
}

/// One level of `Names::collect`: 0 to go on, 1 when done.
#[inline(never)]
extern "C" fn name_level(level: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `Names::collect` passes its `Names`.
    let w = unsafe { &mut *ctx.cast::<Names>() };
    if (w.dentry == w.root_dentry && w.vfsmnt == w.root_mnt) || level >= EVENT_NAMES as u64 {
        w.ended = 1;
        return 1;
    }
    w.dentries[level as usize] = w.dentry;
    w.levels = level + 1;
    match step(&crate::kernel::offsets(), w.dentry, w.vfsmnt) {
        Ok(Step::Up(d, m)) => {
            w.dentry = d;
            w.vfsmnt = m;
            0
        }
        _ => {
            w.ended = 1;
            1
        }
    }
}
