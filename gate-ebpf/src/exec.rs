//! exec: `bprm_check_security`, called for the program and again for each interpreter; and
//! code run without exec: `mmap_file` and `file_mprotect` when a file's pages become
//! executable (a dynamic loader mapping a library or a program by hand, `LD_PRELOAD`).
//!
//! A file mapped executable gets the exec rules of the file itself, so running a denied
//! binary through `ld.so`, or a library the agent wrote where it may not run programs, fails
//! like exec would. Executable memory without a file (a JIT's anonymous mappings) and files
//! of the kernel's own mounts (memfds: code without a path, no more than anonymous memory)
//! stay allowed. Allowed mappings are not reported (a program start maps a dozen
//! libraries); denied ones are.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use gate_common::hook as hooks;
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

/// `PROT_EXEC` (include/uapi/asm-generic/mman-common.h).
const PROT_EXEC: u64 = 0x4;

#[lsm(hook = "mmap_file")]
pub fn mmap_file(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(4);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let prot: u64 = ctx.arg(2);
    let file: u64 = ctx.arg(0);
    if prot & PROT_EXEC == 0 || file == 0 {
        return 0;
    }
    map_exec(file, hooks::MMAP_FILE)
}

#[lsm(hook = "file_mprotect")]
pub fn file_mprotect(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(3);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let prot: u64 = ctx.arg(2);
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let vma: u64 = ctx.arg(0);
    let file: u64 = load(vma, offsets().vma_vm_file());
    if file == 0 {
        return 0;
    }
    map_exec(file, hooks::FILE_MPROTECT)
}

/// The exec decision for a file whose pages become executable.
#[inline(always)]
fn map_exec(file: u64, hook: u8) -> i32 {
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    let start = file_start(&o, file);
    if let Ok(s) = start
        && s.vfsmnt != 0
        && crate::kernel::internal_mount(&o, s.vfsmnt)
    {
        return 0;
    }
    let v = match start {
        Ok(start) if o.valid() != 0 => file_verdict(&o, op::EXEC as usize, start, a.cfg.slot),
        _ => Verdict::internal(gate_common::rule::INTERNAL, false),
    };
    let v = v.or_default(&a, op::EXEC as usize);
    let obj = Object::File(start.unwrap_or(Start {
        dentry: 0,
        vfsmnt: 0,
    }));
    finish(&a, &o, op::EXEC, hook, v, &obj)
}
