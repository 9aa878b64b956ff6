//! `[sockets]`: socket families and kinds a confined task may create beyond the base set
//! (AF_UNIX; TCP, UDP and ICMP over IPv4 and IPv6; NETLINK_ROUTE), as the kernel's
//! `socket_create` program reads them (`AgentConfig::sockets`, `gate_common::sock`).
use gate_common::sock;

/// Names a policy may use, with their bits. Families by their `AF_*` number.
pub const SOCKET_KINDS: &[(&str, u64)] = &[
    ("raw", sock::RAW),
    ("sctp", sock::SCTP),
    ("netlink", sock::NETLINK),
    ("ax25", 1 << 3),
    ("ipx", 1 << 4),
    ("appletalk", 1 << 5),
    ("netrom", 1 << 6),
    ("bridge", 1 << 7),
    ("atmpvc", 1 << 8),
    ("x25", 1 << 9),
    ("rose", 1 << 11),
    ("decnet", 1 << 12),
    ("netbeui", 1 << 13),
    ("security", 1 << 14),
    ("key", 1 << 15),
    ("packet", 1 << 17),
    ("ash", 1 << 18),
    ("econet", 1 << 19),
    ("atmsvc", 1 << 20),
    ("rds", 1 << 21),
    ("sna", 1 << 22),
    ("irda", 1 << 23),
    ("pppox", 1 << 24),
    ("wanpipe", 1 << 25),
    ("llc", 1 << 26),
    ("ib", 1 << 27),
    ("mpls", 1 << 28),
    ("can", 1 << 29),
    ("tipc", 1 << 30),
    ("bluetooth", 1 << 31),
    ("iucv", 1 << 32),
    ("rxrpc", 1 << 33),
    ("isdn", 1 << 34),
    ("phonet", 1 << 35),
    ("ieee802154", 1 << 36),
    ("caif", 1 << 37),
    ("alg", 1 << 38),
    ("nfc", 1 << 39),
    ("vsock", 1 << 40),
    ("kcm", 1 << 41),
    ("qipcrtr", 1 << 42),
    ("smc", 1 << 43),
    ("xdp", 1 << 44),
    ("mctp", 1 << 45),
];

/// The bit of a name, if it is one.
pub fn socket_bit(name: &str) -> Option<u64> {
    SOCKET_KINDS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
}

/// A socket the kernel refused to a confined task, in words: `packet (type 3, protocol 768)`.
pub fn socket_kind_name(family: u16, stype: u16, protocol: i32) -> String {
    let fam = match family {
        1 => "unix".to_string(),
        2 => "inet".to_string(),
        10 => "inet6".to_string(),
        16 => "netlink".to_string(),
        f => SOCKET_KINDS
            .iter()
            .find(|(_, b)| u32::from(f) < sock::MAX_FAMILY && *b == 1u64 << f)
            .map_or_else(|| format!("family {f}"), |(n, _)| (*n).to_string()),
    };
    let kind = match stype {
        1 => "stream".to_string(),
        2 => "dgram".to_string(),
        3 => "raw".to_string(),
        5 => "seqpacket".to_string(),
        t => format!("type {t}"),
    };
    format!("{fam} {kind} protocol {protocol}")
}
