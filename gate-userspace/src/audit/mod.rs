//! Signed, hash-chained audit stream.
//!
//! Every decision gate takes, and every approval, policy load, start, stop, lost-event gap and
//! checkpoint, is one JSON line in an append-only file (default `/var/log/gate/audit.jsonl`).
//! The lines form a hash chain, and signed checkpoints make the chain evidence that a third
//! party can check with nothing but the public key. This page is the specification a
//! reimplementation of the verifier needs.
//!
//! # Records
//!
//! Every record starts with the same fields, in this order:
//!
//! | field     | meaning                                                                  |
//! |-----------|--------------------------------------------------------------------------|
//! | `seq`     | u64, +1 per record across the whole chain (across restarts and rotation) |
//! | `time`    | RFC 3339 UTC with nanoseconds, `2026-05-01T12:34:56.123456789Z`          |
//! | `host`    | host name of the writer                                                  |
//! | `boot_id` | `/proc/sys/kernel/random/boot_id` of the writer                          |
//! | `kind`    | `decision` `approval` `policy_load` `start` `stop` `gap` `checkpoint`    |
//! | `prev`    | hex SHA-256 of the previous record's canonical encoding (64 zeros first)|
//!
//! followed by the fields of its kind (see [`record`]). A `decision` carries `agent`, `pid`,
//! `tgid`, `ppid`, `uid`, `comm`, `exe` (optional), `op` (`exec|write|read|connect`), `hook`,
//! `path` or `addr` + `port`, `decision` (`allow|deny|ask`), `enforced` (false when audit mode
//! let a would-be denial through), `rule` (rule id, `default` or `internal`), `policy_digest`
//! `correlation` (optional, links an `ask` to its `approval` and the retried action) and
//! `over_limit` (optional, `true` when the rule's quota was used up and its `over_limit`
//! decision applied).
//!
//! An `approval` is a step of an `ask`'s life: `correlation` (the request's id), `agent`,
//! `decision` (`ask` for a request, `allow` for an approval, `deny` otherwise), `by` (the
//! approver's user name and uid, `kernel` for a request, `expiry`), `reason`, `step`
//! (`request|approve|reject|expire|refuse`), `run` (the agent's run, `boot/cgroup id`), `op`,
//! `object`, `rule`, `policy_digest`, `scope` (`object|rule`), `expires` (unix seconds; the
//! kernel ends the answer then), `process` (the asking process's command line and its
//! parents'), `signatures` (the approval tokens that carried it); all but the first four
//! optional. The decisions an approval lets through are `allow` records with its
//! `correlation`.
//!
//! # Canonical encoding and chain
//!
//! The canonical encoding of a record is **its line exactly as written, without the final
//! `\n`**. The writer produces it deterministically (compact JSON, fields in the order above then
//! in the kind's declared order, `serde_json` string escaping, absent optional fields omitted,
//! no `hash` field; see [`chain`]), but a verifier never re-serializes anything: it hashes the
//! bytes of each line as they are. So lines must be shipped byte-exact.
//!
//! `prev` of record *n* is `hex(SHA-256(line n-1))`; record 0 has 64 `0`s.
//!
//! # Checkpoints and signatures
//!
//! A `checkpoint` record is written every `checkpoint_every` records (N, default 1000) or once
//! the oldest unsigned record is `checkpoint_interval` old (T, default 1000 ms), whichever comes
//! first, right after every `gap` record, when the file is rotated, and at clean shutdown. Its
//! fields:
//!
//! - `first`, `last`: the records it newly covers (`first` is the previous checkpoint's own seq,
//!   `last` is always this record's `seq - 1`);
//! - `head`: hex SHA-256 of record `last` (equal to this record's `prev`);
//! - `key_id`: hex of the first 8 bytes of SHA-256 of the raw 32-byte Ed25519 public key;
//! - `reason`: `count` `time` `gap` `shutdown` `rotate` `recovery` `manual`;
//! - `sig`: hex of the 64-byte Ed25519 signature of the message
//!
//! ```text
//! "gate-audit-checkpoint-v1" 0x00 || head (32 bytes) || last (u64 big-endian)
//!   || first (u64 big-endian) || key_id (8 bytes) || len(reason) (1 byte) || reason (ASCII)
//! ```
//!
//! Because `head` commits to the whole chain before it, one valid checkpoint vouches for every
//! record up to `last`. Records after the last checkpoint are not signed yet (a live log
//! normally has up to N of them, for at most T).
//!
//! The signing key is a PKCS#8 file (mode 0600, created on first use with `O_CREAT|O_EXCL`).
//! Its public half is exported next to it (`gate.key` → `gate.pub`): one line of standard base64
//! of the raw 32-byte key.
//!
//! # Continuity
//!
//! [`AuditLog::open`] continues the chain from the last line of the file, or, if the file is new
//! or empty because it was rotated away, from a state file next to it (`audit.jsonl.state`: next
//! seq, head hash, and the identity of the file they came from, which is looked up by inode in
//! the same directory in case more was written before the rotation). [`AuditLog::reopen`]
//! (on SIGHUP after logrotate) and [`AuditLog::rotate_to`] end the old file with a `rotate`
//! checkpoint and start the new file with a record whose `prev` is the old file's last record.
//! Use rename-based rotation: `copytruncate` can lose records.
//!
//! # Verification
//!
//! Read the files oldest first, as one sequence of lines, and for each line: SHA-256 it; parse
//! `seq` and `prev`; require `seq` = previous + 1 and `prev` = hash of the previous line; for a
//! checkpoint check `last = seq - 1`, `head = prev`, the key id and the signature. Then require a
//! checkpoint near the end: records after the last one are unsigned. [`verify()`] does this and
//! tells altered, removed, reordered, duplicated and cut records apart, with file and line.
//!
//! # Losing nothing silently
//!
//! Events the kernel could not deliver become `gap` records ([`AuditLog::append_gap`]) that are
//! chained and signed like any other. A failed write is returned to the caller, and the log
//! refuses further writes until it is reopened; a record cut in half by a crash is removed at
//! the next open and replaced by a `gap` record.
pub mod chain;
pub mod record;
pub mod sign;
pub mod tail;
pub mod verify;
pub mod writer;

pub use chain::{Encoder, GENESIS, Hash, Rfc3339, hash_line};
pub use record::{
    Approval, Checkpoint, CheckpointReason, Decision, Flow, Gap, Kind, Lifecycle, Object, Op,
    PolicyLoad, PolicyMode, Record, RecordBody, Scope, Verdict,
};
pub use sign::{KeyError, KeyId, PublicKey, SigningKey, public_key_path};
pub use tail::{TailError, TailOptions, Tailer, format_record, tail_cmd};
pub use verify::{
    ChainVerifier, Finding, FindingKind, Severity, VerifyError, VerifyReport, verify, verify_cmd,
    write_report,
};
pub use writer::{
    AuditConfig, AuditError, AuditLog, DEFAULT_KEY_PATH, DEFAULT_LOG_PATH, default_state_path,
};
