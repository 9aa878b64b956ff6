//! Local sockets: `unix_stream_connect` (stream and seqpacket connects) and `unix_may_send`
//! (datagram connects and sends), both with the peer socket already found.
//!
//! A confined task may talk to every unix socket its own agent created (the creator's cgroup,
//! kept in the socket, is the agent's or below it). A socket created outside the agent (a
//! container engine's, an ssh-agent, a root daemon, gate's own) is decided by the policy:
//! `unix` paths on connect rules (the socket file's inode, its directories' subtree rules),
//! else `[default] unix` (`grant::UNIX_OUTSIDE`; deny when absent). Abstract sockets
//! (`@name` in `unix`) are found by a hash of their name (`gate_common::unix_name`).
use aya_ebpf::{
    helpers::generated::{bpf_probe_read_kernel, bpf_skc_to_unix_sock},
    macros::lsm,
    programs::LsmContext,
};
use gate_common::{InodeKey, decision, grant, hook, op, rule, unix_name};

use crate::{
    decide::{Agent, Verdict, confined, finish},
    event::Object,
    kernel::{Offs, load, offsets, read},
    maps::UNIX_NAME,
    process::cgroup_in_agent,
    walk::{Start, apply, file_verdict},
};

#[lsm(hook = "unix_stream_connect")]
pub fn unix_stream_connect(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(3);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    peer(&a, ctx.arg(1), hook::UNIX_STREAM_CONNECT)
}

#[lsm(hook = "unix_may_send")]
pub fn unix_may_send(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(2);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let other: u64 = ctx.arg(1);
    let sk: u64 = load(other, offsets().socket_sk());
    peer(&a, sk, hook::UNIX_MAY_SEND)
}

/// The decision for reaching the unix socket `sk` (a `struct sock *`).
#[inline(always)]
fn peer(a: &Agent, sk: u64, hook: u8) -> i32 {
    let o = offsets();
    let mut v = Verdict::none();
    let mut start = Start {
        dentry: 0,
        vfsmnt: 0,
    };
    let mut name: (u64, u16) = (0, 0);
    let usk = if sk == 0 || o.valid() == 0 {
        0
    } else {
        // SAFETY: `sk` is a non-NULL socket; the helper returns NULL for anything but a unix
        // socket.
        unsafe { bpf_skc_to_unix_sock(sk as *mut core::ffi::c_void) as u64 }
    };
    if usk == 0 {
        v = Verdict::internal(rule::INTERNAL, false);
    } else {
        let cg: u64 = load(sk, o.sock_cgroup());
        match cgroup_in_agent(&o, a, cg) {
            Ok(true) => return 0,
            Ok(false) => {}
            Err(_) => v = Verdict::internal(rule::INTERNAL, false),
        }
        if v.severity() == decision::NONE {
            start.dentry = load(usk, o.unix_sock_path() + o.path_dentry());
            start.vfsmnt = load(usk, o.unix_sock_path() + o.path_mnt());
            if start.dentry != 0 {
                v = file_verdict(&o, op::CONNECT as usize, start, a.cfg.slot);
            } else {
                let (av, ptr, len) = abstract_verdict(&o, usk, a.cfg.slot);
                v = av;
                name = (ptr, len);
            }
        }
    }
    if v.severity() == decision::NONE {
        let d = if a.cfg.grants & grant::UNIX_OUTSIDE != 0 {
            decision::ALLOW
        } else {
            decision::DENY
        };
        v.merge(d, rule::DEFAULT);
    }
    let obj = if name.0 != 0 {
        Object::KernelString {
            code: unix_name::EVENT_CODE | name.1 << 8,
            ptr: name.0,
        }
    } else {
        Object::File(start)
    };
    finish(a, &o, op::CONNECT, hook, v, &obj)
}

/// The rules on the abstract name the unix socket `usk` is bound to, with the name's kernel
/// address and length (0, 0: not bound to an abstract name).
#[inline(always)]
fn abstract_verdict(o: &Offs, usk: u64, slot: u32) -> (Verdict, u64, u16) {
    let none = (Verdict::none(), 0, 0);
    let addr: u64 = load(usk, o.unix_sock_addr());
    if addr == 0 {
        return none;
    }
    let Ok(len) = read::<i32>(addr, o.unix_address_len()) else {
        return (Verdict::internal(rule::INTERNAL, false), 0, 0);
    };
    // `sun_path` follows the 2-byte family; an abstract name is all of it after a leading NUL.
    let path = addr + o.unix_address_name() as u64 + 2;
    let n = len as i64 - 3;
    if n < 1 || n > unix_name::MAX_LEN as i64 {
        return none;
    }
    match read::<u8>(path, 0) {
        Ok(0) => {}
        Ok(_) => return none,
        Err(_) => return (Verdict::internal(rule::INTERNAL, false), 0, 0),
    }
    let Some(buf) = UNIX_NAME.get_ptr_mut(0) else {
        return (Verdict::internal(rule::INTERNAL, false), 0, 0);
    };
    let size = (n as u32) & 127;
    if size == 0 || size as usize > unix_name::MAX_LEN {
        return none;
    }
    // SAFETY: `buf` is this CPU's scratch entry, `size` bytes fit in it.
    let read_ok = unsafe {
        *buf = [0; unix_name::WORDS];
        bpf_probe_read_kernel(buf.cast(), size, (path + 1) as *const core::ffi::c_void) == 0
    };
    if !read_ok {
        return (Verdict::internal(rule::INTERNAL, false), 0, 0);
    }
    // SAFETY: as above.
    let key = InodeKey {
        dev: unix_name::DEV,
        slot,
        ino: unix_name::hash(unsafe { &*buf }),
    };
    let mut v = Verdict::none();
    // The name is the object itself: its exact rules (level 0).
    apply(&mut v, &key, op::CONNECT as usize, 0);
    (v, path + 1, size as u16)
}
