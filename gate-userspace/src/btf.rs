//! Kernel struct offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The eBPF object has no offsets of its own: they are read here at load time and handed to it
//! as read-only data, so one object works on every kernel with BTF. A kernel whose hooks do
//! not have the argument lists the programs expect is refused rather than guessed at.
use std::{collections::HashMap, path::Path};

use gate_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF at {path}: {source}; the kernel needs CONFIG_DEBUG_INFO_BTF=y")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no {0}; this kernel is not supported")]
    Missing(String),
    #[error(
        "LSM hook {hook} takes {found} arguments on this kernel, gate expects {expected}; \
         this kernel is not supported"
    )]
    HookSignature {
        hook: &'static str,
        found: usize,
        expected: String,
    },
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_TYPE_TAG: u32 = 18;

struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
}

struct Type {
    name: u32,
    kind: u32,
    /// Referenced type (typedef, const, func → proto).
    ty: u32,
    members: Vec<Member>,
    params: usize,
}

/// The subset of BTF gate needs: structs, unions, functions and their prototypes.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<(u32, String), u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != 0xeb9f {
            return Err(BtfError::Malformed(
                "bad magic (only little-endian BTF is supported)",
            ));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types_raw = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let types = parse_types(types_raw)?;
        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for id in 1..btf.types.len() {
            let t = &btf.types[id];
            if matches!(t.kind, KIND_STRUCT | KIND_UNION | KIND_FUNC) && t.name != 0 {
                let name = btf.str_at(t.name).to_owned();
                btf.by_name.entry((t.kind, name)).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn str_at(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.ty
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `member` in `struct name`, looking into anonymous structs and unions.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = self
            .by_name
            .get(&(KIND_STRUCT, name.to_owned()))
            .copied()
            .ok_or_else(|| BtfError::Missing(format!("struct {name}")))?;
        self.find_member(id, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::Missing(format!("field {member} in struct {name}")))
    }

    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        let t = self.types.get(self.strip(id) as usize)?;
        if depth > 8 || !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for m in &t.members {
            if m.name == 0 {
                if let Some(off) = self.find_member(m.ty, member, depth + 1) {
                    return Some(m.bit_offset + off);
                }
            } else if self.str_at(m.name) == member {
                return Some(m.bit_offset);
            }
        }
        None
    }

    /// Number of arguments of the kernel function `name` (e.g. `bpf_lsm_file_open`).
    pub fn func_params(&self, name: &str) -> Result<usize, BtfError> {
        let id = self
            .by_name
            .get(&(KIND_FUNC, name.to_owned()))
            .copied()
            .ok_or_else(|| BtfError::Missing(format!("function {name}")))?;
        let proto = &self.types[self.types[id as usize].ty as usize];
        if proto.kind != KIND_FUNC_PROTO {
            return Err(BtfError::Malformed("function without prototype"));
        }
        Ok(proto.params)
    }
}

fn parse_types(raw: &[u8]) -> Result<Vec<Type>, BtfError> {
    // Type ids start at 1; 0 is void.
    let mut types = vec![Type {
        name: 0,
        kind: 0,
        ty: 0,
        members: Vec::new(),
        params: 0,
    }];
    let mut off = 0;
    while off < raw.len() {
        let name = u32_at(raw, off)?;
        let info = u32_at(raw, off + 4)?;
        let ty = u32_at(raw, off + 8)?;
        let (kind, vlen, kflag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31);
        off += 12;
        let mut t = Type {
            name,
            kind,
            ty,
            members: Vec::new(),
            params: 0,
        };
        let extra = match kind {
            1 | 14 | 17 => 4, // int, var, decl_tag
            3 => 12,          // array
            KIND_STRUCT | KIND_UNION => {
                for i in 0..vlen {
                    let m = off + i * 12;
                    let raw_off = u32_at(raw, m + 8)?;
                    let bit_offset = if kflag == 1 {
                        raw_off & 0xff_ffff
                    } else {
                        raw_off
                    };
                    t.members.push(Member {
                        name: u32_at(raw, m)?,
                        ty: u32_at(raw, m + 4)?,
                        bit_offset,
                    });
                }
                vlen * 12
            }
            6 => vlen * 8, // enum
            KIND_FUNC_PROTO => {
                t.params = vlen;
                vlen * 8
            }
            15 | 19 => vlen * 12, // datasec, enum64
            2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC | 16
            | KIND_TYPE_TAG => 0,
            _ => return Err(BtfError::Malformed("unknown BTF kind")),
        };
        off += extra;
        types.push(t);
    }
    Ok(types)
}

/// The programs and the LSM hooks they attach to, with the argument count each was written
/// for. A hook with several programs has one per kernel signature; the one whose count
/// matches the running kernel is loaded.
pub const PROGRAMS: &[(&str, &str, usize)] = &[
    ("bprm_check_security", "bprm_check_security", 1),
    ("file_open", "file_open", 1),
    ("path_mknod", "path_mknod", 4),
    ("path_mkdir", "path_mkdir", 3),
    ("path_rmdir", "path_rmdir", 2),
    ("path_unlink", "path_unlink", 2),
    ("path_symlink", "path_symlink", 3),
    ("path_link", "path_link", 3),
    ("path_link_src", "path_link", 3),
    ("path_rename", "path_rename", 5),
    ("path_rename_src", "path_rename", 5),
    ("path_truncate", "path_truncate", 1),
    ("path_chmod", "path_chmod", 2),
    ("path_chown", "path_chown", 3),
    ("inode_setattr", "inode_setattr", 2),
    ("inode_setattr_idmap", "inode_setattr", 3),
    ("socket_connect", "socket_connect", 3),
    ("socket_sendmsg", "socket_sendmsg", 3),
    ("socket_create", "socket_create", 4),
    ("bpf", "bpf", 3),
    ("bpf_kernel", "bpf", 4),
    ("capable", "capable", 4),
    ("ptrace_access_check", "ptrace_access_check", 2),
    ("task_kill", "task_kill", 4),
    ("task_alloc", "task_alloc", 2),
    ("sb_mount", "sb_mount", 5),
    ("sb_umount", "sb_umount", 2),
    ("sb_pivotroot", "sb_pivotroot", 2),
    ("move_mount", "move_mount", 2),
    ("userns_create", "userns_create", 1),
    ("kernel_module_request", "kernel_module_request", 1),
    ("kernel_read_file", "kernel_read_file", 3),
    ("kernel_load_data", "kernel_load_data", 2),
    ("inode_setxattr", "inode_setxattr", 6),
    ("inode_removexattr", "inode_removexattr", 3),
    ("inode_set_acl", "inode_set_acl", 4),
    ("inode_remove_acl", "inode_remove_acl", 3),
    ("mmap_file", "mmap_file", 4),
    ("file_mprotect", "file_mprotect", 3),
    ("unix_stream_connect", "unix_stream_connect", 3),
    ("unix_may_send", "unix_may_send", 2),
    ("file_set_fowner", "file_set_fowner", 1),
    ("file_send_sigiotask", "file_send_sigiotask", 3),
];

/// Hooks a kernel may lack because it routes what they see through another hook gate also
/// uses: before 6.2, POSIX ACLs are set and removed as extended attributes
/// (`inode_setxattr`, `inode_removexattr`).
pub const OPTIONAL_HOOKS: &[&str] = &["inode_set_acl", "inode_remove_acl"];

/// The programs to load on this kernel: (program, hook). Every hook must have at least one
/// program whose signature matches, or the kernel is refused.
pub fn programs_for(btf: &Btf) -> Result<Vec<(&'static str, &'static str)>, BtfError> {
    let mut out = Vec::new();
    let mut hooks: Vec<&str> = PROGRAMS.iter().map(|p| p.1).collect();
    hooks.dedup();
    for hook in hooks {
        let n = match btf.func_params(&format!("bpf_lsm_{hook}")) {
            Err(BtfError::Missing(_)) if OPTIONAL_HOOKS.contains(&hook) => continue,
            n => n?,
        };
        let candidates: Vec<_> = PROGRAMS.iter().filter(|p| p.1 == hook).collect();
        let matching: Vec<_> = candidates.iter().filter(|p| p.2 == n).collect();
        if matching.is_empty() {
            let expected = candidates
                .iter()
                .map(|p| p.2.to_string())
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(BtfError::HookSignature {
                hook,
                found: n,
                expected,
            });
        }
        out.extend(matching.iter().map(|p| (p.0, p.1)));
    }
    Ok(out)
}

/// Reads every offset the programs need and checks the hook signatures.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let setattr_args = btf.func_params("bpf_lsm_inode_setattr")? as u32;
    programs_for(btf)?;
    let f = |s: &str, m: &str| btf.member_offset(s, m);
    Ok(KernelOffsets {
        file_f_path: f("file", "f_path")?,
        file_f_mode: f("file", "f_mode")?,
        file_f_flags: f("file", "f_flags")?,
        path_mnt: f("path", "mnt")?,
        path_dentry: f("path", "dentry")?,
        dentry_d_parent: f("dentry", "d_parent")?,
        dentry_d_name: f("dentry", "d_name")?,
        dentry_d_inode: f("dentry", "d_inode")?,
        dentry_d_sb: f("dentry", "d_sb")?,
        qstr_name: f("qstr", "name")?,
        inode_i_ino: f("inode", "i_ino")?,
        sb_s_dev: f("super_block", "s_dev")?,
        sb_s_magic: f("super_block", "s_magic")?,
        inode_i_private: f("inode", "i_private")?,
        kernfs_node_priv: f("kernfs_node", "priv")?,
        mount_mnt: f("mount", "mnt")?,
        mount_mnt_parent: f("mount", "mnt_parent")?,
        mount_mnt_mountpoint: f("mount", "mnt_mountpoint")?,
        vfsmount_mnt_sb: f("vfsmount", "mnt_sb")?,
        vfsmount_mnt_flags: f("vfsmount", "mnt_flags")?,
        vfsmount_mnt_root: f("vfsmount", "mnt_root")?,
        sb_s_root: f("super_block", "s_root")?,
        sb_s_flags: f("super_block", "s_flags")?,
        vma_vm_file: f("vm_area_struct", "vm_file")?,
        sock_cgroup: f("sock", "sk_cgrp_data")? + f("sock_cgroup_data", "cgroup")?,
        socket_sk: f("socket", "sk")?,
        unix_sock_path: f("unix_sock", "path")?,
        unix_sock_addr: f("unix_sock", "addr")?,
        unix_address_len: f("unix_address", "len")?,
        unix_address_name: f("unix_address", "name")?,
        fown_file: f("fown_struct", "file").unwrap_or(u32::MAX),
        file_f_owner: f("file", "f_owner")?,
        bprm_file: f("linux_binprm", "file")?,
        task_real_parent: f("task_struct", "real_parent")?,
        task_tgid: f("task_struct", "tgid")?,
        task_fs: f("task_struct", "fs")?,
        task_cred: f("task_struct", "cred")?,
        task_cgroups: f("task_struct", "cgroups")?,
        css_set_dfl_cgrp: f("css_set", "dfl_cgrp")?,
        cgroup_level: f("cgroup", "level")?,
        cgroup_ancestors: f("cgroup", "ancestors")?,
        cgroup_kn: f("cgroup", "kn")?,
        kernfs_node_id: f("kernfs_node", "id")?,
        task_comm: f("task_struct", "comm")?,
        fs_struct_root: f("fs_struct", "root")?,
        msghdr_msg_name: f("msghdr", "msg_name")?,
        msghdr_msg_namelen: f("msghdr", "msg_namelen")?,
        // overlayfs backing files are checked like any other file (fail-closed); see README.
        fmode_backing: 0,
        setattr_args,
        valid: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host kernel's BTF parses and yields plausible offsets. (The guest suites check
    /// that the offsets are right by enforcing with them on 6.1 and 6.12.)
    #[test]
    fn host_btf_offsets() {
        let btf = Btf::from_sys_fs().expect("host kernel BTF");
        let o = kernel_offsets(&btf).expect("offsets");
        assert_eq!(o.qstr_name, 8);
        assert_eq!(o.path_mnt, 0);
        assert_eq!(o.path_dentry, 8);
        assert!(o.dentry_d_parent > 0 && o.dentry_d_inode > o.dentry_d_parent);
        assert!(o.task_tgid > 0 && o.task_real_parent > o.task_tgid);
        assert!(o.setattr_args == 2 || o.setattr_args == 3);
    }

    #[test]
    fn one_program_per_hook_on_the_host() {
        let btf = Btf::from_sys_fs().expect("host kernel BTF");
        let progs = programs_for(&btf).expect("programs");
        assert_eq!(
            progs.len(),
            PROGRAMS.len() - 2,
            "one program per hook signature"
        );
        assert_eq!(progs.iter().filter(|p| p.1 == "inode_setattr").count(), 1);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Btf::parse(b"not btf at all, clearly"),
            Err(BtfError::Malformed(_))
        ));
    }
}
