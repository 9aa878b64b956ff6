//! capabilities: `capable`, the kernel's capability check. A confined task may use only the
//! capabilities its policy grants (`[capabilities]`, `AgentConfig::caps`): a confined root is
//! no stronger than its policy says. Checks of other credentials than the task's own (a file
//! opener's, another task's) are not decided. Checks the kernel makes without auditing
//! (`CAP_OPT_NOAUDIT`: probes such as the memory overcommit reserve) are denied without an
//! event, as the kernel's own audit does.
use aya_ebpf::{helpers::bpf_get_current_task, macros::lsm, programs::LsmContext};
use gate_common::{MODE_AUDIT, decision, hook, op, rule};

use crate::{
    decide::{Verdict, confined, eperm, finish},
    event::Object,
    kernel::{offsets, ptr},
};

/// `CAP_OPT_NOAUDIT` (include/linux/security.h).
const CAP_OPT_NOAUDIT: u32 = 1 << 1;

#[lsm(hook = "capable")]
pub fn capable(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(4);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    let cred: u64 = ctx.arg(0);
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    let Ok(own) = ptr(task, o.task_cred()) else {
        return eperm();
    };
    if cred != own {
        return 0;
    }
    let cap: i32 = ctx.arg(2);
    if (0..64).contains(&cap) && a.cfg.caps & (1u64 << cap) != 0 {
        return 0;
    }
    let opts: u32 = ctx.arg(3);
    if opts & CAP_OPT_NOAUDIT != 0 {
        return if a.cfg.mode == MODE_AUDIT { 0 } else { eperm() };
    }
    let mut v = Verdict::none();
    v.merge(decision::DENY, rule::CAPABILITY);
    let obj = Object::Net {
        family: 0,
        port: cap as u16,
        addr: [0; 16],
    };
    finish(&a, &o, op::CAPABILITY, hook::CAPABLE, v, &obj)
}
