//! The mount table, namespaces and kernel code: `sb_mount`, `sb_umount`, `sb_pivotroot`,
//! `move_mount`, `userns_create`, `kernel_module_request`, `kernel_read_file`,
//! `kernel_load_data`.
//!
//! Each is a capability check's second line: a policy that grants no `CAP_SYS_ADMIN` or
//! `CAP_SYS_MODULE` already stops these at the kernel's capability check (`capable`). These
//! hooks hold when a policy grants them, and inside a user namespace, where capabilities are
//! the namespace's own:
//! - a confined task may not change the mount table at all (a mount over an allowed path could
//!   put a denied binary there, an umount could uncover what a mount hid, a move could take
//!   gate's bpffs away);
//! - it may create a user namespace only when its policy says so (`[namespaces]`);
//! - it may not load kernel code (modules, firmware, kexec images, from files or memory), nor
//!   make the kernel load a module for it: an autoload request (an unknown binary format, a
//!   terminal line discipline, a device number) starts modprobe as root outside every cgroup.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use gate_common::{decision, grant, hook, op, rule};

use crate::{
    decide::{Agent, Verdict, confined, finish},
    event::Object,
    kernel::{load, offsets},
    walk::Start,
};

/// `MS_*` mount flags (include/uapi/linux/mount.h).
const MS_REMOUNT: u64 = 0x20;
const MS_BIND: u64 = 0x1000;
const MS_MOVE: u64 = 0x2000;
const MS_PROPAGATION: u64 = (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20);

/// What a mount(2) call was about, as sent in the event (`events::mount_action`).
pub mod mount_kind {
    pub const NEW: u16 = 0;
    pub const BIND: u16 = 1;
    pub const MOVE: u16 = 2;
    pub const REMOUNT: u16 = 3;
    pub const PROPAGATION: u16 = 4;
    pub const UMOUNT: u16 = 5;
    pub const PIVOT_ROOT: u16 = 6;
    pub const MOVE_MOUNT: u16 = 7;
}

#[inline(always)]
fn deny(a: &Agent, o: u8, r: u16, hook: u8, obj: &Object) -> i32 {
    let mut v = Verdict::none();
    v.merge(decision::DENY, r);
    finish(a, &offsets(), o, hook, v, obj)
}

/// The object a `struct path *` points at.
#[inline(always)]
fn at_path(path: u64) -> Start {
    let o = offsets();
    Start {
        dentry: load(path, o.path_dentry()),
        vfsmnt: load(path, o.path_mnt()),
    }
}

#[lsm(hook = "sb_mount")]
pub fn sb_mount(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(5);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let path: u64 = ctx.arg(1);
    let fstype: u64 = ctx.arg(2);
    let flags: u64 = ctx.arg(3);
    let code = if flags & MS_REMOUNT != 0 {
        mount_kind::REMOUNT
    } else if flags & MS_BIND != 0 {
        mount_kind::BIND
    } else if flags & MS_MOVE != 0 {
        mount_kind::MOVE
    } else if flags & MS_PROPAGATION != 0 {
        mount_kind::PROPAGATION
    } else {
        mount_kind::NEW
    };
    let obj = Object::FileAction {
        start: at_path(path),
        code,
        // The type names the file system of a new mount (read when the event is sent).
        string: if code == mount_kind::NEW { fstype } else { 0 },
    };
    deny(&a, op::MOUNT, rule::MOUNT, hook::SB_MOUNT, &obj)
}

#[lsm(hook = "sb_umount")]
pub fn sb_umount(ctx: LsmContext) -> i32 {
    let mnt: u64 = ctx.arg(0);
    let start = Start {
        dentry: load(mnt, offsets().vfsmount_mnt_root()),
        vfsmnt: mnt,
    };
    refuse_mount(ctx.arg(2), start, mount_kind::UMOUNT, hook::SB_UMOUNT)
}

#[lsm(hook = "sb_pivotroot")]
pub fn sb_pivotroot(ctx: LsmContext) -> i32 {
    let new_root = at_path(ctx.arg(1));
    refuse_mount(
        ctx.arg(2),
        new_root,
        mount_kind::PIVOT_ROOT,
        hook::SB_PIVOTROOT,
    )
}

#[lsm(hook = "move_mount")]
pub fn move_mount(ctx: LsmContext) -> i32 {
    let to = at_path(ctx.arg(1));
    refuse_mount(ctx.arg(2), to, mount_kind::MOVE_MOUNT, hook::MOVE_MOUNT)
}

/// Refuses a confined task a mount-table change at `start` (`mount_kind::*` in `code`).
#[inline(always)]
fn refuse_mount(ret: i32, start: Start, code: u16, hook: u8) -> i32 {
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let obj = Object::FileAction {
        start,
        code,
        string: 0,
    };
    deny(&a, op::MOUNT, rule::MOUNT, hook, &obj)
}

#[lsm(hook = "userns_create")]
pub fn userns_create(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(1);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    if a.cfg.grants & grant::USER_NAMESPACE != 0 {
        return 0;
    }
    let obj = Object::Named { code: 0 };
    deny(
        &a,
        op::NAMESPACE,
        rule::USER_NAMESPACE,
        hook::USERNS_CREATE,
        &obj,
    )
}

#[lsm(hook = "kernel_module_request")]
pub fn kernel_module_request(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(1);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let obj = Object::KernelString {
        code: 0,
        ptr: ctx.arg(0),
    };
    deny(
        &a,
        op::MODULE,
        rule::MODULE,
        hook::KERNEL_MODULE_REQUEST,
        &obj,
    )
}

#[lsm(hook = "kernel_read_file")]
pub fn kernel_read_file(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(3);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let file: u64 = ctx.arg(0);
    let id: u32 = ctx.arg(1);
    let start = crate::exec::file_start(&offsets(), file).unwrap_or(Start {
        dentry: 0,
        vfsmnt: 0,
    });
    let obj = Object::FileAction {
        start,
        code: id as u16,
        string: 0,
    };
    deny(&a, op::MODULE, rule::MODULE, hook::KERNEL_READ_FILE, &obj)
}

#[lsm(hook = "kernel_load_data")]
pub fn kernel_load_data(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(2);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let id: u32 = ctx.arg(0);
    let obj = Object::Named { code: id as u16 };
    deny(&a, op::MODULE, rule::MODULE, hook::KERNEL_LOAD_DATA, &obj)
}
