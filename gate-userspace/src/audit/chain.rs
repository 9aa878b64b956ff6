//! Canonical encoding, hashing and timestamps.
//!
//! The canonical encoding of a record is exactly its log line without the trailing `\n`:
//!
//! ```text
//! {"seq":N,"time":"…","host":"…","boot_id":"…","kind":"…","prev":"<64 hex>",<kind fields>}
//! ```
//!
//! compact JSON (no whitespace), header fields in that order, then the kind's fields in the
//! order their struct declares them, strings escaped the way `serde_json` escapes them, absent
//! optional fields omitted. A verifier never re-serializes: it hashes the bytes of each line as
//! they are, so any JSON library (or none) can check the chain.
use std::time::{SystemTime, UNIX_EPOCH};

use ring::digest;
use thiserror::Error;

use super::record::RecordBody;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// `prev` of the very first record of a chain.
pub const GENESIS: Hash = [0; 32];

/// Length of a timestamp as written: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub const TIME_LEN: usize = 30;

#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("serializing the record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the record's prev is not 64 hex digits")]
    Prev,
    #[error("the record body serialized to something other than a JSON object")]
    Body,
}

/// SHA-256 of a canonical encoding (a log line without its newline).
pub fn hash_line(line: &[u8]) -> Hash {
    let d = digest::digest(&digest::SHA256, line);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex of a hash.
pub fn hash_hex(h: &Hash) -> String {
    hex::encode(h)
}

/// Parses 64 hex digits.
pub fn parse_hash(s: &str) -> Option<Hash> {
    let mut out = [0; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Writes records of one host and boot: the constant part of the header is escaped once.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// `,"host":"…","boot_id":"…","kind":"`
    host_boot: Vec<u8>,
}

impl Encoder {
    pub fn new(host: &str, boot_id: &str) -> Self {
        let mut host_boot = Vec::with_capacity(host.len() + boot_id.len() + 32);
        host_boot.extend_from_slice(b",\"host\":");
        write_json_str(&mut host_boot, host);
        host_boot.extend_from_slice(b",\"boot_id\":");
        write_json_str(&mut host_boot, boot_id);
        host_boot.extend_from_slice(b",\"kind\":\"");
        Self { host_boot }
    }

    /// Appends the canonical encoding of a record to `buf` (no newline).
    pub fn encode(
        &self,
        buf: &mut Vec<u8>,
        seq: u64,
        time: &str,
        prev: &Hash,
        body: &RecordBody,
    ) -> Result<(), EncodeError> {
        buf.extend_from_slice(b"{\"seq\":");
        write_u64(buf, seq);
        buf.extend_from_slice(b",\"time\":");
        write_json_str(buf, time);
        buf.extend_from_slice(&self.host_boot);
        buf.extend_from_slice(body.kind().as_str().as_bytes());
        buf.extend_from_slice(b"\",\"prev\":\"");
        let at = buf.len();
        buf.resize(at + 64, 0);
        hex::encode_to_slice(prev, &mut buf[at..]).expect("64 bytes for 32");
        buf.push(b'"');
        // The body is written as its own object, then its opening brace becomes the comma that
        // joins it to the header.
        let at = buf.len();
        body.write_object(buf)?;
        match &buf[at..] {
            b"{}" => {
                buf.truncate(at);
                buf.push(b'}');
            }
            [b'{', .., b'}'] => buf[at] = b',',
            _ => return Err(EncodeError::Body),
        }
        Ok(())
    }
}

/// Appends `v` in decimal.
pub(crate) fn write_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// Appends `s` as a JSON string, escaped exactly as `serde_json` escapes it (`\"`, `\\`,
/// `\b \t \n \f \r`, other control characters as `\u00xx`, everything else as is).
pub(crate) fn write_json_str(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    buf.reserve(bytes.len() + 2);
    buf.push(b'"');
    // No early exit, so that the common case (nothing to escape) vectorizes.
    let plain = !bytes.iter().fold(false, |acc, &b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        buf.extend_from_slice(bytes);
    } else {
        write_escaped(buf, bytes);
    }
    buf.push(b'"');
}

fn write_escaped(buf: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if short.is_empty() {
            buf.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            buf.extend_from_slice(short);
        }
    }
    buf.extend_from_slice(&bytes[start..]);
}

/// An RFC 3339 UTC timestamp with nanoseconds, kept on the stack.
#[derive(Clone, Copy)]
pub struct Rfc3339([u8; TIME_LEN]);

impl Rfc3339 {
    /// Formats `t` (times before 1970 are written as the epoch, after 9999 as 9999).
    pub fn new(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs().min(253_402_300_799); // 9999-12-31T23:59:59
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, day) = civil_from_days(days);
        let mut out = *b"0000-00-00T00:00:00.000000000Z";
        put(&mut out[0..4], y);
        put(&mut out[5..7], m);
        put(&mut out[8..10], day);
        put(&mut out[11..13], rem / 3600);
        put(&mut out[14..16], rem / 60 % 60);
        put(&mut out[17..19], rem % 60);
        put(&mut out[20..29], u64::from(d.subsec_nanos()));
        Self(out)
    }

    pub fn now() -> Self {
        Self::new(SystemTime::now())
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII digits")
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes `v` as zero-padded decimal filling `out` exactly.
fn put(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::record::{Gap, RecordBody};

    fn at(secs: u64, nanos: u32) -> String {
        Rfc3339::new(UNIX_EPOCH + Duration::new(secs, nanos)).to_string()
    }

    #[test]
    fn formats_rfc3339_nanos() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(
            at(1_709_251_199, 999_999_999),
            "2024-02-29T23:59:59.999999999Z"
        );
        assert_eq!(
            at(1_735_689_600, 123_456_789),
            "2025-01-01T00:00:00.123456789Z"
        );
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000000000Z");
        assert_eq!(at(u64::MAX / 2, 0), "9999-12-31T23:59:59.000000000Z");
    }

    #[test]
    fn canonical_layout_is_fixed() {
        let body = RecordBody::Gap(Gap {
            lost: 3,
            cpu: Some(1),
            reason: "ringbuf \"full\"".into(),
        });
        let mut buf = Vec::new();
        let enc = Encoder::new("h\u{1}", "b");
        enc.encode(
            &mut buf,
            12,
            "2026-01-01T00:00:00.000000000Z",
            &GENESIS,
            &body,
        )
        .unwrap();
        let expect = format!(
            "{{\"seq\":12,\"time\":\"2026-01-01T00:00:00.000000000Z\",\"host\":\"h\\u0001\",\
             \"boot_id\":\"b\",\"kind\":\"gap\",\"prev\":\"{}\",\"lost\":3,\"cpu\":1,\
             \"reason\":\"ringbuf \\\"full\\\"\"}}",
            "0".repeat(64)
        );
        assert_eq!(String::from_utf8(buf).unwrap(), expect);
    }

    #[test]
    fn strings_escape_like_serde_json() {
        let all: String = (0u8..0x80).map(char::from).collect();
        for s in [
            "",
            "plain /path",
            "quote \" and \\ back",
            "tab\tnl\ncr\r",
            "ctl \u{1}\u{1f}\u{7f}",
            "ünï ✓ 😀",
            &all,
        ] {
            let mut ours = Vec::new();
            write_json_str(&mut ours, s);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    #[test]
    fn u64_digits() {
        for v in [0, 9, 10, 1234567890, u64::MAX] {
            let mut b = Vec::new();
            write_u64(&mut b, v);
            assert_eq!(b, v.to_string().as_bytes());
        }
    }
}
