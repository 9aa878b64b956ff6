//! bpf(): `bpf`. A confined task may not use the bpf() system call at all: loading programs
//! (a cgroup program could rewrite its connects' destinations), creating, reading or writing
//! maps (gate's own among them), opening pins, attaching or detaching links. The hook's
//! argument list gained `kernel` (calls the kernel makes for itself, not decided) in newer
//! kernels: one program per signature, userspace loads the one that matches.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use gate_common::{decision, hook, op, rule};

use crate::{
    decide::{Verdict, confined, finish},
    event::Object,
    kernel::offsets,
};

#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    decide(ctx.arg(3), ctx.arg(0))
}

#[lsm(hook = "bpf")]
pub fn bpf_kernel(ctx: LsmContext) -> i32 {
    let kernel: u8 = ctx.arg(3);
    let ret: i32 = ctx.arg(4);
    if ret == 0 && kernel != 0 {
        return 0;
    }
    decide(ret, ctx.arg(0))
}

#[inline(always)]
fn decide(ret: i32, cmd: i32) -> i32 {
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let mut v = Verdict::none();
    v.merge(decision::DENY, rule::BPF);
    let obj = Object::Net {
        family: 0,
        port: cmd as u16,
        addr: [0; 16],
    };
    finish(&a, &offsets(), op::BPF, hook::BPF, v, &obj)
}
