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
    sb_s_magic: 0,
    inode_i_private: 0,
    kernfs_node_priv: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    vfsmount_mnt_sb: 0,
    vfsmount_mnt_flags: 0,
    vfsmount_mnt_root: 0,
    sb_s_root: 0,
    sb_s_flags: 0,
    vma_vm_file: 0,
    sock_cgroup: 0,
    socket_sk: 0,
    unix_sock_path: 0,
    unix_sock_addr: 0,
    unix_address_len: 0,
    unix_address_name: 0,
    fown_file: 0,
    file_f_owner: 0,
    bprm_file: 0,
    task_real_parent: 0,
    task_tgid: 0,
    task_fs: 0,
    task_cred: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_level: 0,
    cgroup_ancestors: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    task_comm: 0,
    fs_struct_root: 0,
    msghdr_msg_name: 0,
    msghdr_msg_namelen: 0,
    fmode_backing: 0,
    setattr_args: 0,
    valid: 0,
});

/// A failed kernel read. Inside a confined cgroup it resolves to a denial.
pub struct ReadError;

/// Handle on the offsets. Each field is read on its own, with a volatile load from the
/// read-only data (the verifier sees a constant), so no copy of the struct lands on the stack.
#[derive(Clone, Copy)]
pub struct Offs;

#[inline(always)]
pub fn offsets() -> Offs {
    Offs
}

macro_rules! offset_fields {
    ($($f:ident),* $(,)?) => {
        impl Offs {
            $(
                #[inline(always)]
                pub fn $f(&self) -> u32 {
                    let p = core::ptr::addr_of!(KOFFSETS).cast::<KernelOffsets>();
                    // SAFETY: Global<T> is a transparent wrapper around an initialised T.
                    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*p).$f)) }
                }
            )*
        }
    };
}

offset_fields!(
    file_f_path,
    file_f_mode,
    file_f_flags,
    path_mnt,
    path_dentry,
    dentry_d_parent,
    dentry_d_name,
    dentry_d_inode,
    dentry_d_sb,
    qstr_name,
    inode_i_ino,
    sb_s_dev,
    sb_s_magic,
    inode_i_private,
    kernfs_node_priv,
    mount_mnt,
    mount_mnt_parent,
    mount_mnt_mountpoint,
    vfsmount_mnt_sb,
    vfsmount_mnt_flags,
    vfsmount_mnt_root,
    sb_s_root,
    sb_s_flags,
    vma_vm_file,
    sock_cgroup,
    socket_sk,
    unix_sock_path,
    unix_sock_addr,
    unix_address_len,
    unix_address_name,
    fown_file,
    file_f_owner,
    bprm_file,
    task_real_parent,
    task_tgid,
    task_fs,
    task_cred,
    task_cgroups,
    css_set_dfl_cgrp,
    cgroup_level,
    cgroup_ancestors,
    cgroup_kn,
    kernfs_node_id,
    task_comm,
    fs_struct_root,
    msghdr_msg_name,
    msghdr_msg_namelen,
    fmode_backing,
    valid
);

/// Reads a `T` at `base + off`. `base == 0` is an error, never a read of address `off`.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Result<T, ReadError> {
    if base == 0 {
        return Err(ReadError);
    }
    // SAFETY: bpf_probe_read_kernel faults safely on a bad address and reports it.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.map_err(|_| ReadError)
}

/// Loads a `T` at `base + off` with one plain load instruction. `base` must be a pointer the
/// verifier knows by its BTF type (a hook argument, or a pointer loaded from one this way) and
/// `off` an offset it sees as a constant (from `KOFFSETS`): it then checks the access against
/// the kernel's BTF, and the kernel turns a fault into a zero result.
#[inline(always)]
pub fn load<T: Copy>(base: u64, off: u32) -> T {
    // SAFETY: see above; the verifier rejects any other use, and faults are handled.
    unsafe { core::ptr::read_volatile((base + off as u64) as *const T) }
}

/// Reads a `T` at `base + off` into `dst` (which may be in a caller's stack frame, e.g. a
/// `bpf_loop` context, so that no copy lands on the reader's own stack).
#[inline(always)]
pub fn read_into<T>(dst: &mut T, base: u64, off: u32) -> Result<(), ReadError> {
    if base == 0 {
        return Err(ReadError);
    }
    // SAFETY: the helper writes exactly size_of::<T>() bytes to `dst`, or zeroes on a fault.
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            (dst as *mut T).cast(),
            core::mem::size_of::<T>() as u32,
            (base + off as u64) as *const core::ffi::c_void,
        )
    };
    if r == 0 { Ok(()) } else { Err(ReadError) }
}

/// Reads a pointer-sized field.
#[inline(always)]
pub fn ptr(base: u64, off: u32) -> Result<u64, ReadError> {
    read::<u64>(base, off)
}

/// `MNT_INTERNAL` (include/linux/mount.h, the same in every kernel gate supports).
const MNT_INTERNAL: i32 = 0x4000;

/// Whether `vfsmnt` is a kernel-internal mount (pipes, sockets, pidfds, anonymous inodes,
/// memfds: `kern_mount`ed file systems that no path names). A failed read is not internal.
#[inline(always)]
pub fn internal_mount(o: &Offs, vfsmnt: u64) -> bool {
    read::<i32>(vfsmnt, o.vfsmount_mnt_flags()).is_ok_and(|f| f & MNT_INTERNAL != 0)
}
