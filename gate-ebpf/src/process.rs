//! Reaching other processes: `ptrace_access_check` (ptrace attach and seize, peeks and pokes
//! of an attached tracee, `process_vm_readv`/`process_vm_writev`, `/proc/PID/mem`, `environ`
//! and the other ptrace-guarded /proc files, `pidfd_getfd`, `kcmp`) and `task_kill` (signals
//! sent by a task: kill, tgkill, pidfd_send_signal, sigqueue).
//!
//! A confined task may reach only tasks of its own agent: tasks whose cgroup is the agent's
//! root cgroup or below it. Everything else (gate itself, the person's shell, a root daemon,
//! another agent) is refused with EPERM and recorded, whatever the task's uid and
//! capabilities. Signal 0 (does the process exist?) is let through: it reveals nothing
//! `/proc` does not. The kernel's own signals (SIGCHLD to a parent, a pipe's SIGPIPE) do not
//! pass through this hook. Probes the kernel makes without auditing
//! (`PTRACE_MODE_NOAUDIT`: the wait channel in `/proc/PID/stat`) are refused silently.
use aya_ebpf::{EbpfContext, helpers::bpf_probe_read_kernel, macros::lsm, programs::LsmContext};
use gate_common::{MODE_AUDIT, counter, decision, hook, op, rule};

use crate::{
    decide::{Agent, Verdict, confined, eperm, finish},
    event::Object,
    kernel::{Offs, ReadError, offsets, ptr, read},
    maps::{AGENTS, FOWNERS, count},
};

/// `PTRACE_MODE_NOAUDIT` (include/linux/ptrace.h).
const PTRACE_MODE_NOAUDIT: u32 = 0x04;

#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(2);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let child: u64 = ctx.arg(0);
    let mode: u32 = ctx.arg(1);
    reach(
        &a,
        child,
        hook::PTRACE_ACCESS_CHECK,
        mode as u16,
        mode & PTRACE_MODE_NOAUDIT != 0,
    )
}

#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(4);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    // A signal sent on behalf of other credentials (USB asynchronous I/O completion) is not
    // the current task's doing. The argument is read as plain data: newer verifiers take a
    // typed hook argument for non-NULL and would fold this test away.
    let cred = raw_arg(&ctx, 3);
    let sig: i32 = ctx.arg(2);
    if cred != 0 || sig == 0 {
        return 0;
    }
    let p: u64 = ctx.arg(0);
    reach(&a, p, hook::TASK_KILL, sig as u16, false)
}

/// `CLONE_INTO_CGROUP` (include/uapi/linux/sched.h).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

#[lsm(hook = "task_alloc")]
pub fn task_alloc(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(2);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let flags: u64 = ctx.arg(1);
    if flags & CLONE_INTO_CGROUP == 0 {
        return 0;
    }
    let Some(a) = confined() else { return 0 };
    let mut v = Verdict::none();
    v.merge(decision::DENY, rule::CGROUP_MOVE);
    let obj = Object::Task {
        tgid: 0,
        code: 0,
        comm: [0; 16],
    };
    finish(&a, &offsets(), op::PROCESS, hook::TASK_ALLOC, v, &obj)
}

/// `F_SETOWN` (and the ioctls and leases that set a file's signal owner): remembers which
/// agent chose the owner of `file`, or forgets it when anyone else sets it. The hook cannot
/// refuse (the kernel ignores its result); `file_send_sigiotask` decides the signals.
#[lsm(hook = "file_set_fowner")]
pub fn file_set_fowner(ctx: LsmContext) -> i32 {
    let file: u64 = ctx.arg(0);
    match confined() {
        Some(a) => {
            if FOWNERS
                .insert(&file, &[a.cgroup_id, u64::from(a.level)], 0)
                .is_err()
            {
                count(counter::INTERNAL_ERROR);
            }
        }
        None => {
            let _ = FOWNERS.remove(&file);
        }
    }
    0
}

/// The kernel's SIGIO/SIGURG to a file's owner: if a confined task chose that owner, it must
/// be a task of the same agent, like any signal it sends. Runs in whatever context the I/O
/// completes in, so the agent is the one recorded by `file_set_fowner`, not the current
/// task's; an agent that has ended takes its signals with it.
#[lsm(hook = "file_send_sigiotask")]
pub fn file_send_sigiotask(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(3);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let o = offsets();
    let fown: u64 = ctx.arg(1);
    let file = if o.fown_file() == u32::MAX {
        fown.wrapping_sub(o.file_f_owner() as u64)
    } else {
        match ptr(fown, o.fown_file()) {
            Ok(f) => f,
            Err(_) => return 0,
        }
    };
    // SAFETY: the value is copied out at once.
    let Some([cgroup_id, level]) = (unsafe { FOWNERS.get(&file) }).copied() else {
        return 0;
    };
    // SAFETY: entries are replaced, not written into, and freed after a grace period.
    let Some(cfg) = (unsafe { AGENTS.get(&cgroup_id) }) else {
        return eperm();
    };
    let a = Agent {
        cfg,
        locked: 0,
        cgroup_id,
        level: level as u32,
    };
    let task: u64 = ctx.arg(0);
    let sig: i32 = ctx.arg(2);
    reach(&a, task, hook::FILE_SEND_SIGIOTASK, sig as u16, false)
}

/// Hook argument `n` as a plain number (see `task_kill`); a failed read counts as non-zero.
#[inline(always)]
fn raw_arg(ctx: &LsmContext, n: usize) -> u64 {
    let slot = (ctx.as_ptr() as *const u64).wrapping_add(n);
    // SAFETY: bpf_probe_read_kernel faults safely and reports it.
    unsafe { bpf_probe_read_kernel(slot) }.unwrap_or(1)
}

/// Allows when `task` belongs to the agent `a`; otherwise denies and records the target.
#[inline(always)]
fn reach(a: &Agent, task: u64, hook: u8, code: u16, quiet: bool) -> i32 {
    let o = offsets();
    let mut v = Verdict::none();
    match same_agent(&o, a, task) {
        Ok(true) => return 0,
        Ok(false) => v.merge(decision::DENY, rule::OUTSIDE_AGENT),
        Err(ReadError) => v.merge(decision::DENY, rule::INTERNAL),
    }
    if quiet {
        return if a.cfg.mode == MODE_AUDIT { 0 } else { eperm() };
    }
    let tgid: u32 = read(task, o.task_tgid()).unwrap_or(0);
    let comm: [u8; 16] = read(task, o.task_comm()).unwrap_or([0; 16]);
    let obj = Object::Task { tgid, code, comm };
    finish(a, &o, op::PROCESS, hook, v, &obj)
}

/// Whether `task`'s cgroup is the agent's root cgroup or below it: its ancestor at the
/// agent's level is the agent's cgroup.
#[inline(always)]
fn same_agent(o: &Offs, a: &Agent, task: u64) -> Result<bool, ReadError> {
    let css = ptr(task, o.task_cgroups())?;
    let cg = ptr(css, o.css_set_dfl_cgrp())?;
    cgroup_in_agent(o, a, cg)
}

/// Whether the cgroup `cg` (a `struct cgroup *`) is the agent's root cgroup or below it.
#[inline(always)]
pub fn cgroup_in_agent(o: &Offs, a: &Agent, cg: u64) -> Result<bool, ReadError> {
    let level: i32 = read(cg, o.cgroup_level())?;
    if level < 0 || (level as u32) < a.level {
        return Ok(false);
    }
    let lvl = a.level & 0xff;
    let anc = ptr(cg, o.cgroup_ancestors() + lvl * 8)?;
    let kn = ptr(anc, o.cgroup_kn())?;
    let id: u64 = read(kn, o.kernfs_node_id())?;
    Ok(id == a.cgroup_id)
}
