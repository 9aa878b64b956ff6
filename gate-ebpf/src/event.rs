//! Decision events into the ring buffer. The path is rebuilt from dentry names only when an
//! event is actually sent, so allowed actions that nobody asked to audit cost no name reads.
use crate::kernel::Offs;
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid,
    bpf_ktime_get_ns,
    generated::{bpf_probe_read_kernel, bpf_probe_read_kernel_str},
};
use gate_common::{EVENT_NAME_LEN, EVENT_NAMES, Event, counter, flag};

use crate::{
    decide::Request,
    kernel::{ptr, read},
    maps::{EVENTS, count},
    walk::{Names, Start},
};

/// What an action was about.
pub enum Object {
    File(Start),
    Net {
        family: u16,
        port: u16,
        addr: [u8; 16],
    },
    /// A network destination of a flow (`flow`): `socket` is the sending socket, or 0 for a
    /// process's connects.
    Dest {
        family: u16,
        port: u16,
        addr: [u8; 16],
        socket: u64,
    },
    /// Another task: its thread-group id, its command name, and the signal or ptrace mode.
    Task {
        tgid: u32,
        code: u16,
        comm: [u8; 16],
    },
    /// A file or directory and what was done to it (a mount point and the kind of mount),
    /// with a kernel string (a file system type; 0: none) read into the event's address
    /// bytes when the event is sent.
    FileAction {
        start: Start,
        code: u16,
        string: u64,
    },
    /// An action without a file, named by a code.
    Named {
        code: u16,
    },
    /// An action named by a kernel string (a module the kernel was asked to load), read into
    /// the event's first name slot.
    KernelString {
        code: u16,
        ptr: u64,
    },
}

/// `Request::is_file` values: what `Request::dentry` holds.
pub mod kind {
    /// Nothing to rebuild (a task's tgid, or 0).
    pub const PLAIN: u8 = 0;
    /// A file: the walk starts at `dentry`/`vfsmnt`.
    pub const FILE: u8 = 1;
    /// A kernel string's address.
    pub const STRING: u8 = 2;
    /// A file, and a kernel string's address in the first 8 bytes of `Request::addr`.
    pub const FILE_STRING: u8 = 3;
    /// A network destination of a flow (`flow`): the socket's address (0 for a process's
    /// connects) in `vfsmnt`.
    pub const FLOW: u8 = 4;
}

/// Sends one event; false when the ring buffer had no room (counted as lost).
#[inline(always)]
pub fn emit(o: &Offs, r: &Request) -> bool {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(counter::RINGBUF_FULL);
        return false;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to a reserved, writable Event in the ring buffer.
    unsafe {
        fill_task(e, o);
        (*e).op = r.op;
        (*e).decision = r.decision;
        (*e).hook = r.hook;
        (*e).flags = r.flags;
        (*e).rule = r.rule;
        (*e).agent_id = r.agent_id;
        (*e).slot = r.slot;
        (*e).name_count = 0;
        (*e).ino = 0;
        (*e).dev = 0;
        (*e).family = r.family;
        (*e).port = r.port;
        (*e).addr = r.addr;
        if r.is_file == kind::FILE || r.is_file == kind::FILE_STRING {
            fill_path(
                e,
                o,
                Start {
                    dentry: r.dentry,
                    vfsmnt: r.vfsmnt,
                },
            );
            if r.is_file == kind::FILE_STRING {
                let s = core::ptr::read_unaligned(r.addr.as_ptr().cast::<u64>());
                (*e).addr = [0; 16];
                bpf_probe_read_kernel_str(
                    (*e).addr.as_mut_ptr().cast(),
                    16,
                    s as *const core::ffi::c_void,
                );
            }
        } else if r.is_file == kind::STRING {
            (*e).names[0][0] = 0;
            bpf_probe_read_kernel_str(
                (*e).names[0].as_mut_ptr().cast(),
                EVENT_NAME_LEN as u32,
                r.dentry as *const core::ffi::c_void,
            );
        } else {
            // A task object's tgid travels in the dentry slot (see decide::finish).
            (*e).ino = r.dentry;
        }
    }
    entry.submit(wakeup(r));
    true
}

/// `bpf_ringbuf_submit` flags (include/uapi/linux/bpf.h) and `bpf_ringbuf_query` ones.
const RB_NO_WAKEUP: u64 = 1;
const RB_FORCE_WAKEUP: u64 = 2;
const RB_AVAIL_DATA: u64 = 0;
const RB_RING_SIZE: u64 = 1;

/// Whether userspace is woken for this event: at once for a denial (a person or an agent may
/// be waiting on its record or its approval notice), and for anything once a quarter of the
/// ring is waiting to be read; otherwise not (userspace reads the ring at least every 100 ms),
/// so a busy agent's allowed actions cost no wake-up each.
#[inline(always)]
fn wakeup(r: &Request) -> u64 {
    let sev = r.decision & gate_common::decision::MASK;
    if sev != gate_common::decision::ALLOW {
        return RB_FORCE_WAKEUP;
    }
    let waiting = EVENTS.query(RB_AVAIL_DATA);
    if waiting.saturating_mul(4) >= EVENTS.query(RB_RING_SIZE) {
        RB_FORCE_WAKEUP
    } else {
        RB_NO_WAKEUP
    }
}

/// # Safety
/// `e` must point to a writable Event.
#[inline(always)]
unsafe fn fill_task(e: *mut Event, o: &Offs) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: caller guarantees `e`; helpers are plain calls.
    unsafe {
        (*e).ktime_ns = bpf_ktime_get_ns();
        (*e).cgroup_id = aya_ebpf::helpers::bpf_get_current_cgroup_id();
        (*e).pid = pid_tgid as u32;
        (*e).tgid = (pid_tgid >> 32) as u32;
        (*e).uid = uid_gid as u32;
        (*e).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let task = bpf_get_current_task();
        (*e).ppid = ptr(task, o.task_real_parent())
            .and_then(|parent| read::<u32>(parent, o.task_tgid()))
            .unwrap_or(0);
    }
}

/// The task's root directory (chroot), where path names stop.
#[inline(always)]
fn task_root(o: &Offs) -> (u64, u64) {
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    let Ok(fs) = ptr(task, o.task_fs()) else {
        return (0, 0);
    };
    let root = fs + o.fs_struct_root() as u64;
    let mnt = ptr(root, o.path_mnt()).unwrap_or(0);
    let dentry = ptr(root, o.path_dentry()).unwrap_or(0);
    (dentry, mnt)
}

/// Fills identity and path components (one slot per level, leaf first; empty for a
/// filesystem root) of a file object.
///
/// # Safety
/// `e` must point to a writable Event.
#[inline(always)]
unsafe fn fill_path(e: *mut Event, o: &Offs, start: Start) {
    let (root_dentry, root_mnt) = task_root(o);
    let mut names = Names::new(start, root_dentry, root_mnt);
    names.collect();
    // SAFETY: caller guarantees `e`.
    unsafe {
        if let Ok(Some(key)) = crate::walk::identity(o, start.dentry) {
            (*e).dev = key.dev;
            (*e).ino = key.ino;
        }
        if names.truncated() {
            (*e).flags |= flag::PATH_TRUNCATED;
        }
        // No branches in this loop: a branch per slot would double the verifier's work per
        // slot. A failed read (no dentry, no name) leaves the slot zeroed, i.e. empty.
        for i in 0..EVENT_NAMES {
            let mut name: u64 = 0;
            let addr = names.dentries[i] + o.dentry_d_name() as u64 + o.qstr_name() as u64;
            bpf_probe_read_kernel(
                (&mut name as *mut u64).cast(),
                8,
                addr as *const core::ffi::c_void,
            );
            bpf_probe_read_kernel_str(
                (*e).names[i].as_mut_ptr().cast(),
                EVENT_NAME_LEN as u32,
                name as *const core::ffi::c_void,
            );
        }
        (*e).name_count = names.levels as u16;
    }
}
