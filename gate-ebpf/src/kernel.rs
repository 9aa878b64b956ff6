//! Reads of kernel memory at offsets taken from the running kernel's BTF.
use aya_ebpf::{Global, helpers::bpf_probe_read_kernel};
use gate_common::KernelOffsets;

/// Filled by userspace from /sys/kernel/btf/vmlinux before load (read-only data, so the
/// verifier sees constants). `valid == 0` means it was not filled: programs then deny.
#[unsafe(no_mangle)]
pub static KOFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    file_f_path: 0,
    file_f_mode: 0,
    file_f_flags: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_d_parent: 0,
    dentry_d_name: 0,
    dentry_d_inode: 0,
    dentry_d_sb: 0,
    qstr_name: 0,
    inode_i_ino: 0,
    sb_s_dev: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    bprm_file: 0,
    task_real_parent: 0,
    task_tgid: 0,
    task_fs: 0,
    fs_struct_root: 0,
    msghdr_msg_name: 0,
    msghdr_msg_namelen: 0,
    fmode_backing: 0,
    setattr_args: 0,
    valid: 0,
});

/// Argument count of `inode_setattr` on this kernel (2 before 6.3, 3 after), set before load.
/// Kept apart from `KOFFSETS` so the hook can find its return-value argument cheaply.
#[unsafe(no_mangle)]
pub static SETATTR_ARGS: Global<u32> = Global::new(0);

/// A failed kernel read. Inside a confined cgroup it resolves to a denial.
pub struct ReadError;

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    KOFFSETS.load()
}

/// Reads a `T` at `base + off`. `base == 0` is an error, never a read of address `off`.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Result<T, ReadError> {
    if base == 0 {
        return Err(ReadError);
    }
    // SAFETY: bpf_probe_read_kernel faults safely on a bad address and reports it.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.map_err(|_| ReadError)
}

/// Reads a pointer-sized field.
#[inline(always)]
pub fn ptr(base: u64, off: u32) -> Result<u64, ReadError> {
    read::<u64>(base, off)
}
