//! exec: `bprm_check_security`, called for the program and again for each interpreter.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use gate_common::{hook, op};

use crate::{
    decide::{Verdict, confined, finish},
    event::Object,
    kernel::{load, offsets},
    walk::{Start, file_verdict},
};

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(1);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    let bprm: u64 = ctx.arg(0);
    let file: u64 = load(bprm, o.bprm_file());
    let start = if file == 0 {
        Err(crate::kernel::ReadError)
    } else {
        file_start(&o, file)
    };
    let v = match start {
        Ok(start) if o.valid() != 0 => file_verdict(&o, op::EXEC as usize, start, a.cfg.slot),
        _ => Verdict::internal(gate_common::rule::INTERNAL, false),
    };
    let v = v.or_default(&a, op::EXEC as usize);
    let obj = match start {
        Ok(s) => Object::File(s),
        Err(_) => Object::File(Start {
            dentry: 0,
            vfsmnt: 0,
        }),
    };
    finish(&a, &o, op::EXEC, hook::BPRM_CHECK, v, &obj)
}

/// Where the walk starts for an open `struct file`.
#[inline(always)]
pub fn file_start(o: &crate::kernel::Offs, file: u64) -> Result<Start, crate::kernel::ReadError> {
    // BTF-typed loads: the walk goes on from these pointers with plain loads.
    let dentry: u64 = load(file, o.file_f_path() + o.path_dentry());
    let vfsmnt: u64 = load(file, o.file_f_path() + o.path_mnt());
    if dentry == 0 {
        return Err(crate::kernel::ReadError);
    }
    Ok(Start { dentry, vfsmnt })
}
