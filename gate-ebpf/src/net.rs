//! connect: `socket_connect`, and `socket_sendmsg` when the message names a destination
//! (unconnected UDP `sendto`, TCP fast open). IPv4, IPv6, and v4-mapped IPv6 treated as IPv4.
use crate::kernel::Offs;
use aya_ebpf::{macros::lsm, maps::lpm_trie::Key, programs::LsmContext};
use gate_common::{MAX_PORT_RULES, hook, op, rule};

use crate::{
    decide::{Agent, Verdict, confined, finish},
    event::Object,
    kernel::{offsets, ptr, read},
    maps::{NET4, NET6},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[lsm(hook = "socket_connect")]
pub fn socket_connect(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(3);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    // Repeated connects of one process to one destination make one flow.
    check_addr(&a, &o, hook::SOCKET_CONNECT, ctx.arg(1), ctx.arg(2), 0)
}

#[lsm(hook = "socket_sendmsg")]
pub fn socket_sendmsg(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(3);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let Some(a) = confined() else { return 0 };
    let o = offsets();
    let msg: u64 = ctx.arg(1);
    // A destination that cannot be read is denied (and counted), never let through.
    let (Ok(name), Ok(namelen)) = (
        ptr(msg, o.msghdr_msg_name()),
        read::<i32>(msg, o.msghdr_msg_namelen()),
    ) else {
        return unreadable(&a, &o, hook::SOCKET_SENDMSG);
    };
    if name == 0 || namelen <= 0 {
        return 0;
    }
    // The datagrams one socket sends to one destination make one flow.
    let sock: u64 = ctx.arg(0);
    check_addr(&a, &o, hook::SOCKET_SENDMSG, name, namelen, sock)
}

/// A destination that could not be read: an internal error, denied and counted.
#[inline(always)]
fn unreadable(a: &Agent, o: &Offs, hook: u8) -> i32 {
    let v = Verdict::internal(rule::INTERNAL, false);
    let obj = Object::Net {
        family: 0,
        port: 0,
        addr: [0; 16],
    };
    finish(a, o, op::CONNECT, hook, v, &obj)
}

/// Checks a destination given as a kernel copy of a `struct sockaddr`.
#[inline(always)]
fn check_addr(a: &Agent, o: &Offs, hook: u8, sa: u64, len: i32, socket: u64) -> i32 {
    let family: u16 = match read(sa, 0) {
        Ok(f) => f,
        Err(_) => return unreadable(a, o, hook),
    };
    let parsed = match family {
        AF_INET if len >= 8 => read::<[u8; 8]>(sa, 0).map(|b| {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&b[4..8]);
            (AF_INET, u16::from_be_bytes([b[2], b[3]]), a)
        }),
        AF_INET6 if len >= 24 => read::<[u8; 24]>(sa, 0).map(|b| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[8..24]);
            let port = u16::from_be_bytes([b[2], b[3]]);
            if a[..10] == [0u8; 10] && a[10] == 0xff && a[11] == 0xff {
                let mut v4 = [0u8; 16];
                v4[..4].copy_from_slice(&a[12..16]);
                (AF_INET, port, v4)
            } else {
                (AF_INET6, port, a)
            }
        }),
        // AF_UNSPEC (dissolve association), AF_UNIX and other families are not network
        // destinations this policy governs; a short address is rejected by the kernel itself.
        _ => return 0,
    };
    let (family, port, addr) = match parsed {
        Ok(p) => p,
        Err(_) => (family, 0, [0u8; 16]),
    };
    let v = if parsed.is_err() {
        Verdict::internal(rule::INTERNAL, false)
    } else {
        net_verdict(a.cfg.slot, family, port, &addr)
    };
    let v = v.or_default(a, op::CONNECT as usize);
    finish(
        a,
        o,
        op::CONNECT,
        hook,
        v,
        &Object::Dest {
            family,
            port,
            addr,
            socket,
        },
    )
}

#[inline(always)]
fn net_verdict(slot: u32, family: u16, port: u16, addr: &[u8; 16]) -> Verdict {
    let mut v = Verdict::none();
    let s = slot.to_be_bytes();
    let rule = if family == AF_INET {
        let key = Key::new(
            64,
            [s[0], s[1], s[2], s[3], addr[0], addr[1], addr[2], addr[3]],
        );
        NET4.get(&key)
    } else {
        let mut k = [0u8; 20];
        k[..4].copy_from_slice(&s);
        k[4..].copy_from_slice(addr);
        NET6.get(&Key::new(160, k))
    };
    let Some(r) = rule else { return v };
    for i in 0..MAX_PORT_RULES {
        if i as u32 >= r.count {
            break;
        }
        let p = &r.ports[i];
        if p.lo <= port && port <= p.hi {
            v.merge(p.decision, p.rule);
        }
    }
    v
}
