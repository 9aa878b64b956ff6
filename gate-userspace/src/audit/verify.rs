//! Chain and signature verification, for whole rotated sets ([`verify`]) and live streams
//! ([`ChainVerifier`], used by `tail --verify`).
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use super::chain::{GENESIS, Hash, hash_line, parse_hash};
use super::record::CheckpointReason;
use super::sign::{KeyId, PublicKey, checkpoint_message};

/// Records kept in memory to match reordered records and check links out of order.
pub const DEFAULT_WINDOW: u64 = 4096;

#[derive(Debug, Error)]
pub enum VerifyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// How bad a finding is. Errors always fail verification, warnings only with `--strict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// A record's bytes changed (its hash no longer matches the next record's `prev`).
    Altered,
    /// A line is not an audit record at all.
    Malformed,
    /// Seqs are missing.
    Removed,
    /// Records are out of seq order.
    Reordered,
    /// The same seq appears twice.
    Duplicated,
    /// A file ends in the middle of a line.
    Truncated,
    /// A checkpoint's signature does not verify.
    BadSignature,
    /// A checkpoint was signed by another key than the one given.
    WrongKey,
    /// A checkpoint's fields contradict the chain.
    BadCheckpoint,
    /// Records after the last checkpoint carry no signature.
    Unsigned,
    /// The chain does not end with a `shutdown` checkpoint.
    NotClosed,
    /// Records were signed only at restart, after an unclean stop.
    Recovered,
    /// The set does not start at seq 0.
    Incomplete,
    /// Events were lost before reaching the log (a `gap` record).
    Gap,
    /// No records at all.
    Empty,
}

/// One thing verification noticed, with where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub kind: FindingKind,
    pub file: PathBuf,
    /// 1-based line number in `file`.
    pub line: u64,
    pub seq: Option<u64>,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The outcome of verifying a set of files.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub files: Vec<PathBuf>,
    /// Lines read as records (malformed ones included).
    pub records: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Seq of the last valid checkpoint.
    pub last_checkpoint: Option<u64>,
    /// Events reported lost by `gap` records.
    pub lost_events: u64,
    pub key_id: Option<String>,
    /// In file and line order.
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }

    /// The first finding that fails verification (an error, or with `strict` a warning).
    pub fn first_failure(&self, strict: bool) -> Option<&Finding> {
        self.errors()
            .next()
            .or_else(|| if strict { self.warnings().next() } else { None })
    }

    pub fn passed(&self, strict: bool) -> bool {
        self.first_failure(strict).is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    file: usize,
    line: u64,
}

/// A record seen recently.
struct Seen {
    hash: Hash,
    prev: Option<Hash>,
    loc: Loc,
}

/// Seqs `start..=end` not seen (yet) between `before` and `after`.
struct Hole {
    start: u64,
    end: u64,
    before: (u64, Loc),
    after: (u64, Loc),
    reordered: bool,
}

/// The fields verification reads from a line; everything else is only hashed.
#[derive(Deserialize)]
struct Head {
    seq: u64,
    prev: String,
    kind: String,
    first: Option<u64>,
    last: Option<u64>,
    head: Option<String>,
    key_id: Option<String>,
    sig: Option<String>,
    reason: Option<String>,
    lost: Option<u64>,
    cpu: Option<u32>,
}

/// What a checkpoint claims (the signed fields).
struct Claim {
    first: u64,
    last: u64,
    head: Hash,
    key_id: KeyId,
    reason: CheckpointReason,
}

impl Claim {
    fn parse(h: &Head) -> Result<Self, &'static str> {
        let missing = "checkpoint is missing first, last, head or key_id";
        let reason = h
            .reason
            .as_deref()
            .and_then(|r| serde_json::from_value(r.into()).ok());
        Ok(Self {
            first: h.first.ok_or(missing)?,
            last: h.last.ok_or(missing)?,
            head: h.head.as_deref().and_then(parse_hash).ok_or(missing)?,
            key_id: h.key_id.as_deref().and_then(KeyId::parse).ok_or(missing)?,
            reason: reason.ok_or("checkpoint has no valid reason")?,
        })
    }
}

/// Incremental verifier: feed it lines in file order.
pub struct ChainVerifier {
    pubkey: Option<PublicKey>,
    window: u64,
    recent: HashMap<u64, Seen>,
    max: Option<(u64, Loc)>,
    holes: Vec<Hole>,
    /// Links that do not match, by the seq of their earlier record.
    mismatches: BTreeMap<u64, Loc>,
    /// Last valid checkpoint: seq, location, reason.
    last_cp: Option<(u64, Loc, CheckpointReason)>,
    /// Records after the last valid checkpoint, and the first of them.
    after_cp: u64,
    first_after_cp: Option<(u64, Loc)>,
    last_was_checkpoint: bool,
    report: VerifyReport,
    emitted: usize,
}

impl ChainVerifier {
    /// Without a public key, only links and seqs are checked (checkpoint signatures are not).
    pub fn new(pubkey: Option<PublicKey>) -> Self {
        Self {
            pubkey,
            window: DEFAULT_WINDOW,
            recent: HashMap::new(),
            max: None,
            holes: Vec::new(),
            mismatches: BTreeMap::new(),
            last_cp: None,
            after_cp: 0,
            first_after_cp: None,
            last_was_checkpoint: false,
            report: VerifyReport {
                key_id: pubkey.map(|k| k.key_id().to_string()),
                ..Default::default()
            },
            emitted: 0,
        }
    }

    /// How many records back a reordered record is still recognised as such (default 4096).
    pub fn with_window(mut self, window: u64) -> Self {
        self.window = window;
        self
    }

    /// Lines that follow belong to `path`.
    pub fn begin_file(&mut self, path: &Path) {
        self.report.files.push(path.to_owned());
    }

    fn here(&self, line: u64) -> Loc {
        Loc {
            file: self.report.files.len().saturating_sub(1),
            line,
        }
    }

    fn add(
        &mut self,
        severity: Severity,
        kind: FindingKind,
        loc: Loc,
        seq: Option<u64>,
        message: String,
    ) {
        let file = self.report.files.get(loc.file).cloned().unwrap_or_default();
        self.report.findings.push(Finding {
            severity,
            kind,
            file,
            line: loc.line,
            seq,
            message,
        });
    }

    /// `line 12`, or `other.jsonl line 12` when in another file than `from`.
    fn at(&self, loc: Loc, from: Loc) -> String {
        match self.report.files.get(loc.file) {
            Some(f) if loc.file != from.file => format!("{} line {}", f.display(), loc.line),
            _ => format!("line {}", loc.line),
        }
    }

    /// Findings added since the last call.
    pub fn new_findings(&mut self) -> &[Finding] {
        let from = self.emitted;
        self.emitted = self.report.findings.len();
        &self.report.findings[from..]
    }

    /// The file's last line had no newline: it was cut.
    pub fn cut_line(&mut self, line: u64, len: usize) {
        let loc = self.here(line);
        let seq = self.max.map(|(m, _)| m.saturating_add(1));
        let msg = format!(
            "file ends in the middle of a record ({len} bytes without a newline): the log was cut"
        );
        self.add(Severity::Error, FindingKind::Truncated, loc, seq, msg);
    }

    /// One line (without its newline), `line` counting from 1 in the current file.
    pub fn push_line(&mut self, line: u64, bytes: &[u8]) {
        self.report.records += 1;
        let loc = self.here(line);
        let hash = hash_line(bytes);
        let head: Head = match serde_json::from_slice(bytes) {
            Ok(h) => h,
            Err(e) => return self.malformed(loc, &e.to_string()),
        };
        let seq = head.seq;
        if !self.place(seq, &hash, loc) {
            return;
        }
        let prev = parse_hash(&head.prev);
        self.link(seq, hash, prev, loc);
        self.report.first_seq.get_or_insert(seq);
        self.report.last_seq = Some(self.report.last_seq.map_or(seq, |l| l.max(seq)));
        let checkpoint = head.kind == "checkpoint" && self.checkpoint(&head, prev, loc);
        if !checkpoint && self.last_cp.is_none_or(|(c, ..)| seq > c) {
            self.after_cp += 1;
            self.first_after_cp.get_or_insert((seq, loc));
        }
        self.last_was_checkpoint = checkpoint;
        if head.kind == "gap" {
            self.gap(&head, loc);
        }
        self.resolve(false);
        self.prune();
    }

    fn malformed(&mut self, loc: Loc, why: &str) {
        let seq = self.max.map_or(0, |(m, _)| m.saturating_add(1));
        self.add(
            Severity::Error,
            FindingKind::Malformed,
            loc,
            Some(seq),
            format!("record altered: not a valid audit record ({why})"),
        );
        // Let it stand in for the expected seq so that the next record does not look like a gap.
        if self.max.is_some() {
            self.max = Some((seq, loc));
        }
        self.last_was_checkpoint = false;
    }

    /// Checks the seq order; returns whether the record is new (to be linked).
    fn place(&mut self, seq: u64, hash: &Hash, loc: Loc) -> bool {
        let Some((max, max_loc)) = self.max else {
            self.max = Some((seq, loc));
            return true;
        };
        if seq > max {
            if seq > max + 1 {
                let hole = Hole {
                    start: max + 1,
                    end: seq - 1,
                    before: (max, max_loc),
                    after: (seq, loc),
                    reordered: false,
                };
                self.holes.push(hole);
            }
            self.max = Some((seq, loc));
            return true;
        }
        if let Some(i) = self
            .holes
            .iter()
            .position(|h| (h.start..=h.end).contains(&seq))
        {
            self.fill(i, seq, loc);
            return true;
        }
        self.backwards(seq, hash, loc, max, max_loc);
        false
    }

    /// A record arrived late, inside a hole: the records were reordered.
    fn fill(&mut self, i: usize, seq: u64, loc: Loc) {
        let h = self.holes.remove(i);
        if !h.reordered {
            let (aseq, aloc) = h.after;
            let msg = format!(
                "records reordered: seq {aseq} comes before seq {seq} ({})",
                self.at(loc, aloc)
            );
            self.add(
                Severity::Error,
                FindingKind::Reordered,
                aloc,
                Some(aseq),
                msg,
            );
        }
        if h.start < seq {
            self.holes.push(Hole {
                end: seq - 1,
                reordered: true,
                ..h
            });
        }
        if seq < h.end {
            self.holes.push(Hole {
                start: seq + 1,
                reordered: true,
                ..h
            });
        }
    }

    fn backwards(&mut self, seq: u64, hash: &Hash, loc: Loc, max: u64, max_loc: Loc) {
        let (kind, msg) = match self.recent.get(&seq) {
            Some(s) if s.hash == *hash => (
                FindingKind::Duplicated,
                format!(
                    "record duplicated: seq {seq} repeats {}",
                    self.at(s.loc, loc)
                ),
            ),
            Some(s) => (
                FindingKind::Duplicated,
                format!(
                    "two different records claim seq {seq} (the other is at {})",
                    self.at(s.loc, loc)
                ),
            ),
            None => (
                FindingKind::Reordered,
                format!(
                    "records reordered: seq goes backwards from {max} ({}) to {seq}",
                    self.at(max_loc, loc)
                ),
            ),
        };
        self.add(Severity::Error, kind, loc, Some(seq), msg);
    }

    /// Stores the record and checks its links to its neighbours, whichever arrived first.
    fn link(&mut self, seq: u64, hash: Hash, prev: Option<Hash>, loc: Loc) {
        if seq == 0 && prev != Some(GENESIS) {
            self.add(
                Severity::Error,
                FindingKind::Altered,
                loc,
                Some(0),
                "record altered: the first record's prev is not all zeros".into(),
            );
        }
        if let Some(p) = seq.checked_sub(1).and_then(|s| self.recent.get(&s))
            && prev != Some(p.hash)
        {
            self.mismatches.insert(seq - 1, p.loc);
        }
        if let Some(n) = seq.checked_add(1).and_then(|s| self.recent.get(&s))
            && n.prev != Some(hash)
        {
            self.mismatches.insert(seq, loc);
        }
        self.recent.insert(seq, Seen { hash, prev, loc });
    }

    /// Turns broken links into findings. Two broken links in a row around one record mean that
    /// record was changed (including its `prev`); a single one blames the earlier record.
    fn resolve(&mut self, all: bool) {
        let max = self.max.map_or(0, |(m, _)| m);
        while let Some((&a, &loc)) = self.mismatches.first_key_value() {
            if !all && a.saturating_add(2) > max {
                break;
            }
            self.mismatches.remove(&a);
            if let Some(next_loc) = self.mismatches.remove(&(a + 1)) {
                let msg = "record altered: its prev does not match the previous record and its hash does not match the next record's prev";
                self.add(
                    Severity::Error,
                    FindingKind::Altered,
                    next_loc,
                    Some(a + 1),
                    msg.into(),
                );
            } else {
                let msg = "record altered: hash does not match the next record's prev";
                self.add(
                    Severity::Error,
                    FindingKind::Altered,
                    loc,
                    Some(a),
                    msg.into(),
                );
            }
        }
    }

    /// Forgets records too old to be matched; holes that old become removals.
    fn prune(&mut self) {
        let Some((max, _)) = self.max else { return };
        let Some(floor) = max.checked_sub(self.window) else {
            return;
        };
        if self.recent.len() as u64 > self.window.saturating_mul(2) {
            self.recent.retain(|&s, _| s >= floor);
        }
        self.close_holes(|h| h.end < floor);
    }

    fn close_holes(&mut self, done: impl Fn(&Hole) -> bool) {
        let (closed, open): (Vec<Hole>, Vec<Hole>) = std::mem::take(&mut self.holes)
            .into_iter()
            .partition(|h| done(h));
        self.holes = open;
        for h in closed {
            let n = h.end - h.start + 1;
            let what = if n == 1 {
                format!("record removed: seq {} is missing", h.start)
            } else {
                format!(
                    "{n} records removed: seqs {}..={} are missing",
                    h.start, h.end
                )
            };
            let (bseq, bloc) = h.before;
            let msg = format!(
                "{what} (seq {bseq} is at {}, seq {} at line {})",
                self.at(bloc, h.after.1),
                h.after.0,
                h.after.1.line
            );
            self.add(
                Severity::Error,
                FindingKind::Removed,
                h.after.1,
                Some(h.start),
                msg,
            );
        }
    }

    /// Reports what is still pending (broken links, holes) as of now.
    pub fn settle(&mut self) {
        self.resolve(true);
        self.close_holes(|_| true);
    }

    fn gap(&mut self, head: &Head, loc: Loc) {
        let lost = head.lost.unwrap_or(0);
        self.report.lost_events += lost;
        let cpu = head.cpu.map(|c| format!(" on cpu {c}")).unwrap_or_default();
        let reason = head.reason.as_deref().unwrap_or("no reason given");
        let msg = format!("{lost} events were lost before reaching the log{cpu}: {reason}");
        self.add(Severity::Info, FindingKind::Gap, loc, Some(head.seq), msg);
    }

    /// Validates a checkpoint; returns whether it is a valid signature point.
    fn checkpoint(&mut self, head: &Head, prev: Option<Hash>, loc: Loc) -> bool {
        let seq = head.seq;
        let claim = match Claim::parse(head) {
            Ok(c) => c,
            Err(msg) => {
                self.add(
                    Severity::Error,
                    FindingKind::BadCheckpoint,
                    loc,
                    Some(seq),
                    msg.into(),
                );
                return false;
            }
        };
        let Claim {
            first,
            last,
            head: cp_head,
            reason,
            ..
        } = claim;
        if last.checked_add(1) != Some(seq) || prev != Some(cp_head) || first > last {
            let msg = format!(
                "checkpoint does not match the chain: it covers {first}..={last} up to head {}, but sits at seq {seq} after prev {}",
                hex::encode(cp_head),
                head.prev
            );
            self.add(
                Severity::Error,
                FindingKind::BadCheckpoint,
                loc,
                Some(seq),
                msg,
            );
            return false;
        }
        if !self.signature_ok(&claim, head, loc) {
            return false;
        }
        self.report.checkpoints += 1;
        self.report.last_checkpoint = Some(seq);
        self.last_cp = Some((seq, loc, reason));
        self.after_cp = 0;
        self.first_after_cp = None;
        if reason == CheckpointReason::Recovery {
            let msg = format!(
                "records {first}..={last} were signed only when the log was reopened: the previous writer stopped without signing them, so they were unprotected in between"
            );
            self.add(
                Severity::Warning,
                FindingKind::Recovered,
                loc,
                Some(seq),
                msg,
            );
        }
        true
    }

    fn signature_ok(&mut self, claim: &Claim, head: &Head, loc: Loc) -> bool {
        let Some(pk) = self.pubkey else { return true };
        let (first, last) = (claim.first, claim.last);
        if claim.key_id != pk.key_id() {
            let msg = format!(
                "checkpoint was signed by key {}, not by the given public key {}",
                claim.key_id,
                pk.key_id()
            );
            self.add(
                Severity::Error,
                FindingKind::WrongKey,
                loc,
                Some(head.seq),
                msg,
            );
            return false;
        }
        let sig = head
            .sig
            .as_deref()
            .and_then(|s| hex::decode(s).ok())
            .unwrap_or_default();
        if !pk.verify(
            &checkpoint_message(&claim.head, last, first, claim.key_id, claim.reason),
            &sig,
        ) {
            let msg = format!(
                "checkpoint signature is invalid (forged or altered checkpoint over {first}..={last})"
            );
            self.add(
                Severity::Error,
                FindingKind::BadSignature,
                loc,
                Some(head.seq),
                msg,
            );
            return false;
        }
        true
    }

    /// Ends verification: pending findings, then what is true of the chain as a whole.
    pub fn finish(mut self) -> VerifyReport {
        self.settle();
        self.end_of_chain();
        self.report.findings.sort_by_key(|f| {
            let file = self
                .report
                .files
                .iter()
                .position(|p| *p == f.file)
                .unwrap_or(usize::MAX);
            (file, f.line)
        });
        self.report
    }

    fn end_of_chain(&mut self) {
        let Some((_, end)) = self.max else {
            let loc = self.here(0);
            self.add(
                Severity::Error,
                FindingKind::Empty,
                loc,
                None,
                "no audit records".into(),
            );
            return;
        };
        if let Some(first) = self.report.first_seq.filter(|&s| s > 0) {
            let loc = self
                .recent
                .get(&first)
                .map_or(Loc { file: 0, line: 1 }, |s| s.loc);
            let msg = format!(
                "the set starts at seq {first}: records 0..{first} are not included, so the start of the chain is not checked"
            );
            self.add(
                Severity::Warning,
                FindingKind::Incomplete,
                loc,
                Some(first),
                msg,
            );
        }
        if let Some((seq, loc)) = self.first_after_cp.filter(|_| self.after_cp > 0) {
            let n = self.after_cp;
            let msg = match self.last_cp {
                Some((c, ..)) => format!(
                    "{n} records after the last checkpoint at seq {c} are not covered by a signature"
                ),
                None => format!("{n} records are not covered by any checkpoint signature"),
            };
            self.add(
                Severity::Warning,
                FindingKind::Unsigned,
                loc,
                Some(seq),
                msg,
            );
        } else if let Some((c, loc, reason)) = self.last_cp.filter(|_| self.last_was_checkpoint) {
            if reason != CheckpointReason::Shutdown {
                let msg = format!(
                    "the chain ends with a {} checkpoint, not a shutdown one: the writer was still running or stopped uncleanly, or records after seq {c} were cut",
                    reason.as_str()
                );
                self.add(Severity::Warning, FindingKind::NotClosed, loc, Some(c), msg);
            }
        } else {
            let seq = self.max.map(|(m, _)| m);
            let msg = "the chain does not end with a valid checkpoint".to_string();
            self.add(Severity::Warning, FindingKind::NotClosed, end, seq, msg);
        }
    }
}

/// Verifies a set of log files in order (oldest first) as one chain.
pub fn verify(files: &[PathBuf], pubkey: &PublicKey) -> Result<VerifyReport, VerifyError> {
    let mut v = ChainVerifier::new(Some(*pubkey));
    for path in files {
        v.begin_file(path);
        feed_file(&mut v, path)?;
    }
    Ok(v.finish())
}

fn feed_file(v: &mut ChainVerifier, path: &Path) -> Result<(), VerifyError> {
    let io = |source| VerifyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut r = BufReader::with_capacity(256 * 1024, File::open(path).map_err(io)?);
    let mut line = Vec::with_capacity(1024);
    let mut n = 0;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).map_err(io)? == 0 {
            return Ok(());
        }
        n += 1;
        match line.pop() {
            Some(b'\n') => v.push_line(n, &line),
            _ => v.cut_line(n, line.len() + 1),
        }
    }
}

/// `s` with control characters escaped: paths and names come from the confined agent, and must
/// not be able to move the cursor or recolour a person's terminal.
pub(crate) fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Prints the findings and the verdict; returns whether verification passed.
pub fn write_report(out: &mut dyn Write, report: &VerifyReport, strict: bool) -> io::Result<bool> {
    const MAX_SHOWN: usize = 100;
    for f in report.findings.iter().take(MAX_SHOWN) {
        let label = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "note",
        };
        writeln!(out, "{label}: {}", printable(&f.to_string()))?;
    }
    if report.findings.len() > MAX_SHOWN {
        writeln!(
            out,
            "... and {} more findings",
            report.findings.len() - MAX_SHOWN
        )?;
    }
    let (errors, warnings) = (report.errors().count(), report.warnings().count());
    match report.first_failure(strict) {
        Some(f) => {
            let strict_note = if errors == 0 { " (--strict)" } else { "" };
            writeln!(out, "FAIL{strict_note}: {}", printable(&f.to_string()))?;
            writeln!(
                out,
                "{errors} errors, {warnings} warnings in {} records",
                report.records
            )?;
            Ok(false)
        }
        None => {
            let range = match (report.first_seq, report.last_seq) {
                (Some(a), Some(b)) => format!(" (seq {a}..={b})"),
                _ => String::new(),
            };
            let key = report.key_id.as_deref().unwrap_or("-");
            writeln!(
                out,
                "PASS: {} records{range} in {} files, {} checkpoints verified with key {key}, {warnings} warnings, {} events lost",
                report.records,
                report.files.len(),
                report.checkpoints,
                report.lost_events
            )?;
            Ok(true)
        }
    }
}

/// `gate audit verify [--strict] --pubkey KEY FILES...`: exit status 0 pass, 1 fail.
pub fn verify_cmd(files: &[PathBuf], pubkey_path: &Path, strict: bool) -> i32 {
    let mut out = io::stdout().lock();
    let pk = match PublicKey::load(pubkey_path) {
        Ok(pk) => pk,
        Err(e) => {
            let _ = writeln!(out, "FAIL: cannot read the public key: {e}");
            return 1;
        }
    };
    let report = match verify(files, &pk) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(out, "FAIL: cannot read {e}");
            return 1;
        }
    };
    match write_report(&mut out, &report, strict) {
        Ok(true) => 0,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, prev: &Hash) -> Vec<u8> {
        format!(r#"{{"seq":{seq},"time":"t","host":"h","boot_id":"b","kind":"start","prev":"{}","scope":"daemon"}}"#, hex::encode(prev)).into_bytes()
    }

    /// Hostile input produces findings, never a panic.
    #[test]
    fn hostile_lines_do_not_panic() {
        let mut v = ChainVerifier::new(Some(PublicKey::from_bytes([9; 32]))).with_window(2);
        v.begin_file(Path::new("x"));
        let a = line(0, &GENESIS);
        let lines: Vec<Vec<u8>> = vec![
            a.clone(),
            Vec::new(),
            b"not json".to_vec(),
            line(u64::MAX, &[1; 32]),
            line(u64::MAX, &[1; 32]),
            line(u64::MAX - 1, &[2; 32]),
            line(3, &hash_line(&a)),
            br#"{"seq":4,"prev":"zz","kind":"checkpoint"}"#.to_vec(),
            br#"{"seq":5,"prev":"00","kind":"checkpoint","first":9,"last":4,"head":"00","key_id":"00","reason":"x"}"#.to_vec(),
            br#"{"seq":6,"prev":"00","kind":"gap"}"#.to_vec(),
        ];
        for (i, l) in lines.iter().enumerate() {
            v.push_line(i as u64 + 1, l);
        }
        v.cut_line(99, 3);
        let r = v.finish();
        assert!(!r.passed(false));
        assert!(
            r.findings
                .iter()
                .any(|f| f.kind == FindingKind::Malformed && f.line == 2)
        );
        assert!(
            r.findings
                .iter()
                .any(|f| f.kind == FindingKind::Duplicated && f.line == 5)
        );
        assert!(
            r.findings
                .iter()
                .any(|f| f.kind == FindingKind::BadCheckpoint && f.line == 8)
        );
    }

    #[test]
    fn empty_set_fails() {
        let r = ChainVerifier::new(None).finish();
        assert_eq!(r.findings.len(), 1);
        assert_eq!(r.findings[0].kind, FindingKind::Empty);
        assert!(!r.passed(false));
    }
}
