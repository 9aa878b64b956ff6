//! socket creation: `socket_create`. A confined task may create AF_UNIX sockets, TCP, UDP and
//! ICMP sockets over IPv4 and IPv6, and NETLINK_ROUTE sockets; any other family or kind
//! (packet and raw sockets, SCTP, other netlink protocols, vsock, AF_ALG, …) only if its
//! policy's `[sockets]` allows it (`AgentConfig::sockets`). Sockets the kernel makes for itself
//! are not decided.
use aya_ebpf::{macros::lsm, programs::LsmContext};
use gate_common::{decision, hook, op, rule, sock};

use crate::{
    decide::{Verdict, confined, finish},
    event::Object,
    kernel::offsets,
};

const AF_UNIX: i32 = 1;
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const AF_NETLINK: i32 = 16;
const SOCK_RAW: i32 = 3;
/// The type's low bits; the rest are SOCK_NONBLOCK and SOCK_CLOEXEC.
const SOCK_TYPE_MASK: i32 = 0xf;
const IPPROTO_SCTP: i32 = 132;
const NETLINK_ROUTE: i32 = 0;

#[lsm(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    let ret: i32 = ctx.arg(4);
    if ret != 0 {
        return crate::decide::pass_on(ret);
    }
    let kern: i32 = ctx.arg(3);
    if kern != 0 {
        return 0;
    }
    let Some(a) = confined() else { return 0 };
    let family: i32 = ctx.arg(0);
    let stype: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    let bits = a.cfg.sockets;
    let allowed = match family {
        AF_UNIX => true,
        AF_INET | AF_INET6 => {
            if stype & SOCK_TYPE_MASK == SOCK_RAW {
                bits & sock::RAW != 0
            } else if protocol == IPPROTO_SCTP {
                bits & sock::SCTP != 0
            } else {
                true
            }
        }
        AF_NETLINK => protocol == NETLINK_ROUTE || bits & sock::NETLINK != 0,
        f if f >= 0 && (f as u32) < sock::MAX_FAMILY => bits & (1u64 << f) != 0,
        _ => false,
    };
    if allowed {
        return 0;
    }
    let mut v = Verdict::none();
    v.merge(decision::DENY, rule::SOCKET_FAMILY);
    let p = protocol.to_le_bytes();
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&p);
    let obj = Object::Net {
        family: family as u16,
        port: (stype & SOCK_TYPE_MASK) as u16,
        addr,
    };
    finish(&a, &offsets(), op::SOCKET, hook::SOCKET_CREATE, v, &obj)
}
