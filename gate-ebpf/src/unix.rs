//! Local sockets: `unix_stream_connect` (stream and seqpacket connects) and `unix_may_send`
//! (datagram connects and sends), both with the peer socket already found.
//!
//! A confined task may talk to every unix socket its own agent created (the creator's cgroup,
//! kept in the socket, is the agent's or below it). A socket created outside the agent (a
//! container engine's, an ssh-agent, a root daemon, gate's own) is decided by the policy:
//! `unix` paths on connect rules (the socket file's inode, its directories' subtree rules),
//! else `[default] unix` (`grant::UNIX_OUTSIDE`; deny when absent). Abstract sockets have no
//! file and follow the default.
use aya_ebpf::{helpers::generated::bpf_skc_to_unix_sock, macros::lsm, programs::LsmContext};
use gate_common::{decision, grant, hook, op, rule};

use crate::{
    decide::{Agent, Verdict, confined, finish},
    event::Object,
    kernel::{load, offsets},
    process::cgroup_in_agent,
    walk::{Start, file_verdict},
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
    finish(a, &o, op::CONNECT, hook, v, &Object::File(start))
}
