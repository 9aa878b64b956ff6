//! Addresses, port ranges, and their compilation into the kernel's LPM tries.
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use gate_common::{MAX_PORT_RULES, NetRule, PortRule, decision};

use super::error::{Location, PolicyError, Pos};

/// An address prefix. IPv4-mapped IPv6 prefixes (`::ffff:a.b.c.d/n`, n >= 96) are parsed as the
/// IPv4 prefix they denote, since the kernel looks up mapped addresses as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cidr {
    V4 { addr: [u8; 4], len: u8 },
    V6 { addr: [u8; 16], len: u8 },
}

impl Cidr {
    /// Every IPv4 address.
    pub const ANY_V4: Cidr = Cidr::V4 {
        addr: [0; 4],
        len: 0,
    };
    /// Every IPv6 address.
    pub const ANY_V6: Cidr = Cidr::V6 {
        addr: [0; 16],
        len: 0,
    };

    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address (a host prefix). Host bits must be zero.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && l.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("prefix length `{l}` is not a number in 0..={max}")),
            },
        };
        let cidr = match ip {
            IpAddr::V4(a) => Cidr::V4 {
                addr: a.octets(),
                len,
            },
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) if len >= 96 => Cidr::V4 {
                    addr: v4.octets(),
                    len: len - 96,
                },
                _ => Cidr::V6 {
                    addr: a.octets(),
                    len,
                },
            },
        };
        if cidr.masked() != cidr {
            return Err(format!(
                "host bits are set (did you mean {}?)",
                cidr.masked()
            ));
        }
        Ok(cidr)
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        match *self {
            Cidr::V4 { len, .. } | Cidr::V6 { len, .. } => len,
        }
    }

    /// The prefix with its host bits cleared.
    pub fn masked(&self) -> Cidr {
        match *self {
            Cidr::V4 { mut addr, len } => {
                mask_bytes(&mut addr, len);
                Cidr::V4 { addr, len }
            }
            Cidr::V6 { mut addr, len } => {
                mask_bytes(&mut addr, len);
                Cidr::V6 { addr, len }
            }
        }
    }

    /// Whether every address under `other` is under `self` (same family only).
    pub fn contains(&self, other: &Cidr) -> bool {
        match (*self, *other) {
            (Cidr::V4 { addr, len }, Cidr::V4 { addr: o, len: ol }) if len <= ol => {
                Cidr::V4 { addr: o, len }.masked() == Cidr::V4 { addr, len }
            }
            (Cidr::V6 { addr, len }, Cidr::V6 { addr: o, len: ol }) if len <= ol => {
                Cidr::V6 { addr: o, len }.masked() == Cidr::V6 { addr, len }
            }
            _ => false,
        }
    }
}

fn mask_bytes(bytes: &mut [u8], len: u8) {
    for (i, b) in bytes.iter_mut().enumerate() {
        let keep = (usize::from(len).saturating_sub(i * 8)).min(8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Cidr::V4 { addr, len } => write!(f, "{}/{len}", Ipv4Addr::from(addr)),
            Cidr::V6 { addr, len } => write!(f, "{}/{len}", Ipv6Addr::from(addr)),
        }
    }
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    /// Every port, 0 to 65535.
    pub const ALL: PortRange = PortRange { lo: 0, hi: 65535 };

    /// Parses `"N"` or `"N-M"` (0 <= N <= M <= 65535).
    pub fn parse(text: &str) -> Result<PortRange, String> {
        let (lo, hi) = text.split_once('-').unwrap_or((text, text));
        let (lo, hi) = (parse_port(lo.trim())?, parse_port(hi.trim())?);
        if lo > hi {
            return Err(format!("{lo} is above {hi}"));
        }
        Ok(PortRange { lo, hi })
    }

    /// An integer port from the TOML file.
    pub fn from_int(n: i64) -> Result<PortRange, String> {
        let p = u16::try_from(n).map_err(|_| format!("{n} is not a port in 0..=65535"))?;
        Ok(PortRange { lo: p, hi: p })
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{s}` is not a port number"));
    }
    s.parse()
        .map_err(|_| format!("{s} is not a port in 0..=65535"))
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// One (prefix, port range) of one connect rule, ready to merge.
#[derive(Clone, Debug)]
pub(super) struct NetEntry {
    pub cidr: Cidr,
    pub ports: PortRange,
    /// Decision byte (`decision::*`, `decision::AUDIT` possibly set).
    pub decision: u8,
    /// Index into the compiled rules.
    pub rule: u16,
    pub rule_id: String,
    /// Where the address came from, for errors.
    pub pos: Pos,
}

/// IPv4 LPM trie contents: (prefix length, address) → port ranges.
pub type Net4 = BTreeMap<(u32, [u8; 4]), NetRule>;
/// IPv6 LPM trie contents: (prefix length, address) → port ranges.
pub type Net6 = BTreeMap<(u32, [u8; 16]), NetRule>;

/// Builds both tries: every distinct prefix gets the port ranges of every entry whose prefix
/// contains it, so the kernel's longest-prefix match alone finds all applicable rules.
pub(super) fn compile_net(entries: &[NetEntry], file: &Path) -> Result<(Net4, Net6), PolicyError> {
    let mut net4 = Net4::new();
    let mut net6 = Net6::new();
    let mut prefixes: BTreeMap<Cidr, Pos> = BTreeMap::new();
    for e in entries {
        let pos = prefixes.entry(e.cidr).or_insert(e.pos);
        *pos = (*pos).min(e.pos);
    }
    for (prefix, pos) in prefixes {
        let value = net_rule_for(&prefix, entries, &Location::new(file, pos))?;
        match prefix {
            Cidr::V4 { addr, len } => net4.insert((u32::from(len), addr), value),
            Cidr::V6 { addr, len } => net6.insert((u32::from(len), addr), value),
        };
    }
    Ok((net4, net6))
}

fn net_rule_for(
    prefix: &Cidr,
    entries: &[NetEntry],
    at: &Location,
) -> Result<NetRule, PolicyError> {
    let mut covering: Vec<&NetEntry> = entries.iter().filter(|e| e.cidr.contains(prefix)).collect();
    covering.sort_by_key(|e| (e.rule, e.ports, e.cidr.prefix_len()));
    covering.dedup_by_key(|e| (e.rule, e.ports));
    if covering.len() > MAX_PORT_RULES {
        let mut ids: Vec<&str> = covering.iter().map(|e| e.rule_id.as_str()).collect();
        ids.dedup();
        return Err(PolicyError::TooManyPortRules {
            at: at.clone(),
            prefix: prefix.to_string(),
            count: covering.len(),
            max: MAX_PORT_RULES,
            rules: ids
                .iter()
                .map(|id| format!("`{id}`"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut value = NetRule::default();
    for (slot, e) in value.ports.iter_mut().zip(&covering) {
        *slot = PortRule {
            lo: e.ports.lo,
            hi: e.ports.hi,
            decision: e.decision,
            _pad: 0,
            rule: e.rule,
        };
    }
    value.count = covering.len() as u32;
    Ok(value)
}

/// The decision the kernel takes for `port` given a trie value: the most severe range that
/// contains the port (on a tie the first, keeping the audit bit of equally severe ones), `None`
/// when none does (then the default applies).
pub fn evaluate_ports(value: &NetRule, port: u16) -> Option<PortRule> {
    let count = (value.count as usize).min(MAX_PORT_RULES);
    let matching = value.ports[..count]
        .iter()
        .filter(|p| p.lo <= port && port <= p.hi);
    matching.fold(None, |best: Option<PortRule>, p| match best {
        Some(mut b) if b.decision & decision::MASK >= p.decision & decision::MASK => {
            if b.decision & decision::MASK == p.decision & decision::MASK {
                b.decision |= p.decision & decision::AUDIT;
            }
            Some(b)
        }
        _ => Some(*p),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs_and_bare_addresses() {
        assert_eq!(
            Cidr::parse("127.0.0.0/8"),
            Ok(Cidr::V4 {
                addr: [127, 0, 0, 0],
                len: 8
            })
        );
        assert_eq!(
            Cidr::parse("10.1.2.3"),
            Ok(Cidr::V4 {
                addr: [10, 1, 2, 3],
                len: 32
            })
        );
        let mut one = [0u8; 16];
        one[15] = 1;
        assert_eq!(
            Cidr::parse("::1"),
            Ok(Cidr::V6 {
                addr: one,
                len: 128
            })
        );
        assert_eq!(Cidr::parse("::/0"), Ok(Cidr::ANY_V6));
    }

    #[test]
    fn v4_mapped_prefixes_become_v4() {
        assert_eq!(
            Cidr::parse("::ffff:10.0.0.0/104"),
            Ok(Cidr::V4 {
                addr: [10, 0, 0, 0],
                len: 8
            })
        );
        assert_eq!(
            Cidr::parse("::ffff:1.2.3.4"),
            Ok(Cidr::V4 {
                addr: [1, 2, 3, 4],
                len: 32
            })
        );
        assert_eq!(Cidr::parse("::ffff:0.0.0.0/96"), Ok(Cidr::ANY_V4));
        // Shorter than /96 it is an IPv6 prefix that merely contains the mapped range.
        assert!(matches!(Cidr::parse("::/80"), Ok(Cidr::V6 { len: 80, .. })));
        assert!(Cidr::parse("::ffff:0:0/95").is_err(), "host bits set");
    }

    #[test]
    fn rejects_bad_cidrs() {
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "example.com",
            "10.0.0.1/8",
            "",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(
            Cidr::parse("10.0.0.1/8").unwrap_err(),
            "host bits are set (did you mean 10.0.0.0/8?)"
        );
    }

    #[test]
    fn containment() {
        let a = Cidr::parse("10.0.0.0/8").unwrap();
        let b = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(a.contains(&b) && a.contains(&a) && !b.contains(&a));
        assert!(Cidr::ANY_V4.contains(&b) && !Cidr::ANY_V6.contains(&b));
        assert!(!Cidr::parse("11.0.0.0/8").unwrap().contains(&b));
        let c = Cidr::parse("fd00::/8").unwrap();
        assert!(Cidr::ANY_V6.contains(&c) && !c.contains(&Cidr::parse("fe00::/8").unwrap()));
    }

    #[test]
    fn port_ranges() {
        assert_eq!(PortRange::parse("443"), Ok(PortRange { lo: 443, hi: 443 }));
        assert_eq!(PortRange::parse("0-65535"), Ok(PortRange::ALL));
        assert_eq!(
            PortRange::parse("1024 - 2048"),
            Ok(PortRange { lo: 1024, hi: 2048 })
        );
        for bad in [
            "",
            "-",
            "1-",
            "-5",
            "65536",
            "10-5",
            "a",
            "+1",
            "1-2-3",
            "99999999999999999999",
        ] {
            assert!(PortRange::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(PortRange::from_int(22), Ok(PortRange { lo: 22, hi: 22 }));
        assert!(PortRange::from_int(-1).is_err() && PortRange::from_int(65536).is_err());
    }
}
