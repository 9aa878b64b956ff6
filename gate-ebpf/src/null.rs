//! Empty BPF LSM programs on gate's hooks, for the benchmarks: each passes the previous
//! program's verdict on and does nothing else. The difference between these and no program
//! at all is what the kernel charges any BPF LSM enforcer; the difference between these and
//! gate's own programs for an unconfined task is gate's cost for everyone else.
#![no_std]
#![no_main]

use aya_ebpf::{Global, macros::lsm, programs::LsmContext};

#[unsafe(no_mangle)]
static EPERM_RET: Global<i32> = Global::new(-1);
#[unsafe(no_mangle)]
static MIN_ERRNO_RET: Global<i32> = Global::new(-4095);

#[inline(always)]
fn pass_on(ret: i32) -> i32 {
    if ret < MIN_ERRNO_RET.load() || ret > 0 {
        EPERM_RET.load()
    } else {
        ret
    }
}

macro_rules! null_program {
    ($name:ident, $hook:literal, $ret:literal) => {
        #[lsm(hook = $hook)]
        pub fn $name(ctx: LsmContext) -> i32 {
            pass_on(ctx.arg($ret))
        }
    };
}

null_program!(bprm_check_security, "bprm_check_security", 1);
null_program!(file_open, "file_open", 1);
null_program!(path_mknod, "path_mknod", 4);
null_program!(path_mkdir, "path_mkdir", 3);
null_program!(path_rmdir, "path_rmdir", 2);
null_program!(path_unlink, "path_unlink", 2);
null_program!(path_symlink, "path_symlink", 3);
null_program!(path_link, "path_link", 3);
null_program!(path_link_src, "path_link", 3);
null_program!(path_rename, "path_rename", 5);
null_program!(path_rename_src, "path_rename", 5);
null_program!(path_truncate, "path_truncate", 1);
null_program!(path_chmod, "path_chmod", 2);
null_program!(path_chown, "path_chown", 3);
null_program!(inode_setattr, "inode_setattr", 2);
null_program!(inode_setattr_idmap, "inode_setattr", 3);
null_program!(socket_connect, "socket_connect", 3);
null_program!(socket_sendmsg, "socket_sendmsg", 3);
null_program!(socket_create, "socket_create", 4);
null_program!(bpf, "bpf", 3);
null_program!(bpf_kernel, "bpf", 4);
null_program!(capable, "capable", 4);
null_program!(ptrace_access_check, "ptrace_access_check", 2);
null_program!(task_kill, "task_kill", 4);
null_program!(task_alloc, "task_alloc", 2);
null_program!(sb_mount, "sb_mount", 5);
null_program!(sb_umount, "sb_umount", 2);
null_program!(sb_pivotroot, "sb_pivotroot", 2);
null_program!(move_mount, "move_mount", 2);
null_program!(userns_create, "userns_create", 1);
null_program!(kernel_module_request, "kernel_module_request", 1);
null_program!(kernel_read_file, "kernel_read_file", 3);
null_program!(kernel_load_data, "kernel_load_data", 2);
null_program!(inode_setxattr, "inode_setxattr", 6);
null_program!(inode_removexattr, "inode_removexattr", 3);
null_program!(inode_set_acl, "inode_set_acl", 4);
null_program!(inode_remove_acl, "inode_remove_acl", 3);
null_program!(mmap_file, "mmap_file", 4);
null_program!(file_mprotect, "file_mprotect", 3);
null_program!(unix_stream_connect, "unix_stream_connect", 3);
null_program!(unix_may_send, "unix_may_send", 2);
null_program!(file_send_sigiotask, "file_send_sigiotask", 3);

/// `file_set_fowner` returns nothing: there is no verdict to pass on.
#[lsm(hook = "file_set_fowner")]
pub fn file_set_fowner(_ctx: LsmContext) -> i32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
