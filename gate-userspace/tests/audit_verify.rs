//! Verification of a real log, and of the same log tampered with in every way we know.
#[path = "audit_support.rs"]
mod support;

use std::path::{Path, PathBuf};

use gate::audit::{
    FindingKind, PublicKey, Record, RecordBody, SigningKey, hash_line, verify_cmd, write_report,
};
use support::*;

const RECORDS: u64 = 3000;
const EVERY: u64 = 250;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    pk: PublicKey,
    lines: Vec<Vec<u8>>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (path, pk) = write_log(dir.path(), RECORDS, EVERY);
    let lines = lines(&path);
    Fixture {
        _dir: dir,
        path,
        pk,
        lines,
    }
}

impl Fixture {
    fn verify_with(&self, lines: &[Vec<u8>]) -> gate::audit::VerifyReport {
        write_lines(&self.path, lines);
        check(std::slice::from_ref(&self.path), &self.pk)
    }

    /// Index (= seq = line - 1) of a decision record at or after `i`.
    fn decision_at(&self, mut i: usize) -> usize {
        while is_checkpoint(&self.lines[i]) {
            i += 1;
        }
        i
    }
}

fn replace_once(line: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = line
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in line");
    let mut out = line[..at].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&line[at + from.len()..]);
    out
}

#[test]
fn clean_log_passes_strict() {
    let f = fixture();
    // 3000 decisions, a checkpoint after every 250, and the shutdown checkpoint.
    assert_eq!(f.lines.len() as u64, RECORDS + RECORDS / EVERY + 1);
    for (i, line) in f.lines.iter().enumerate() {
        assert_eq!(seq_of(line), i as u64);
    }
    let r = check(std::slice::from_ref(&f.path), &f.pk);
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert!(r.passed(true));
    assert_eq!(r.records, f.lines.len() as u64);
    assert_eq!(r.checkpoints, RECORDS / EVERY + 1);
    assert_eq!(r.last_checkpoint, Some(f.lines.len() as u64 - 1));
    let last = value(f.lines.last().unwrap());
    assert_eq!(last["reason"], "shutdown");
    assert_eq!(value(&f.lines[0])["prev"], "0".repeat(64));
    assert_eq!(
        value(&f.lines[1])["prev"],
        hex::encode(hash_line(&f.lines[0]))
    );
}

#[test]
fn one_altered_byte_is_found_at_its_record() {
    let f = fixture();
    let k = f.decision_at(1234);
    let mut lines = f.lines.clone();
    lines[k] = replace_once(&lines[k], b"file-", b"filf-");
    let r = f.verify_with(&lines);
    assert_eq!(
        errors(&r),
        vec![(FindingKind::Altered, k as u64 + 1, Some(k as u64))]
    );
    let first = r.first_failure(false).unwrap();
    assert!(
        first
            .message
            .contains("record altered: hash does not match the next record's prev"),
        "{first}"
    );
    assert!(!r.passed(false));
}

#[test]
fn altered_prev_field_blames_that_record() {
    let f = fixture();
    let k = f.decision_at(2100);
    let mut lines = f.lines.clone();
    let prev = value(&lines[k])["prev"].as_str().unwrap().to_owned();
    let forged = format!(
        "{}{}",
        if prev.starts_with('0') { "1" } else { "0" },
        &prev[1..]
    );
    lines[k] = replace_once(&lines[k], prev.as_bytes(), forged.as_bytes());
    let r = f.verify_with(&lines);
    assert_eq!(
        errors(&r),
        vec![(FindingKind::Altered, k as u64 + 1, Some(k as u64))]
    );
}

#[test]
fn removed_line_is_a_seq_gap() {
    let f = fixture();
    let k = f.decision_at(700);
    let mut lines = f.lines.clone();
    lines.remove(k);
    let r = f.verify_with(&lines);
    // Record k+1 now sits on line k+1.
    assert_eq!(
        errors(&r),
        vec![(FindingKind::Removed, k as u64 + 1, Some(k as u64))]
    );
    assert!(
        r.first_failure(false)
            .unwrap()
            .message
            .contains(&format!("seq {k} is missing"))
    );
}

#[test]
fn removed_run_of_lines_is_one_finding() {
    let f = fixture();
    let mut lines = f.lines.clone();
    lines.drain(100..140);
    let r = f.verify_with(&lines);
    assert_eq!(errors(&r), vec![(FindingKind::Removed, 101, Some(100))]);
    assert!(
        r.first_failure(false)
            .unwrap()
            .message
            .starts_with("40 records removed")
    );
}

#[test]
fn swapped_lines_are_reordered() {
    let f = fixture();
    let k = f.decision_at(1500);
    let mut lines = f.lines.clone();
    lines.swap(k, k + 1);
    let r = f.verify_with(&lines);
    // Line k+1 now holds seq k+1, ahead of seq k.
    assert_eq!(
        errors(&r),
        vec![(FindingKind::Reordered, k as u64 + 1, Some(k as u64 + 1))]
    );
}

#[test]
fn distant_swap_is_one_reordering() {
    let f = fixture();
    let mut lines = f.lines.clone();
    lines.swap(300, 310);
    let r = f.verify_with(&lines);
    assert_eq!(errors(&r), vec![(FindingKind::Reordered, 301, Some(310))]);
}

#[test]
fn duplicated_line_is_found() {
    let f = fixture();
    let mut lines = f.lines.clone();
    lines.insert(901, lines[900].clone());
    let r = f.verify_with(&lines);
    assert_eq!(errors(&r), vec![(FindingKind::Duplicated, 902, Some(900))]);
}

#[test]
fn file_cut_mid_line_fails() {
    let f = fixture();
    let data = std::fs::read(&f.path).unwrap();
    let start: usize = f.lines[..2000].iter().map(|l| l.len() + 1).sum();
    std::fs::write(&f.path, &data[..start + 40]).unwrap();
    let r = check(std::slice::from_ref(&f.path), &f.pk);
    assert_eq!(errors(&r), vec![(FindingKind::Truncated, 2001, Some(2000))]);
    assert!(!r.passed(false));
}

#[test]
fn records_after_last_checkpoint_are_unsigned_warning() {
    let f = fixture();
    // Keep 20 decisions after the checkpoint at seq 2008 (the 8th).
    let cp = f
        .lines
        .iter()
        .position(|l| is_checkpoint(l) && seq_of(l) > 2000)
        .unwrap();
    let lines = f.lines[..=cp + 20].to_vec();
    let r = f.verify_with(&lines);
    assert!(errors(&r).is_empty(), "{:?}", r.findings);
    assert_eq!(
        warnings(&r),
        vec![(FindingKind::Unsigned, cp as u64 + 2, Some(cp as u64 + 1))]
    );
    let w = r.first_failure(true).unwrap();
    assert!(
        w.message.contains(&format!(
            "20 records after the last checkpoint at seq {cp} are not covered by a signature"
        )),
        "{w}"
    );
    assert!(r.passed(false));
    assert!(!r.passed(true));
}

#[test]
fn log_cut_at_a_checkpoint_is_not_closed() {
    let f = fixture();
    let cp = f
        .lines
        .iter()
        .position(|l| is_checkpoint(l) && seq_of(l) > 1000)
        .unwrap();
    let r = f.verify_with(&f.lines[..=cp]);
    assert!(errors(&r).is_empty());
    assert_eq!(
        warnings(&r),
        vec![(FindingKind::NotClosed, cp as u64 + 1, Some(cp as u64))]
    );
    assert!(r.passed(false) && !r.passed(true));
}

#[test]
fn forged_checkpoint_signature_fails() {
    let f = fixture();
    let cp = f.lines.iter().position(|l| is_checkpoint(l)).unwrap();
    let mut lines = f.lines.clone();
    let sig = value(&lines[cp])["sig"].as_str().unwrap().to_owned();
    let forged = format!(
        "{}{}",
        if sig.starts_with('a') { "b" } else { "a" },
        &sig[1..]
    );
    lines[cp] = replace_once(&lines[cp], sig.as_bytes(), forged.as_bytes());
    let r = f.verify_with(&lines);
    let line = cp as u64 + 1;
    let seq = Some(cp as u64);
    assert_eq!(
        errors(&r),
        vec![
            (FindingKind::BadSignature, line, seq),
            (FindingKind::Altered, line, seq)
        ]
    );
    assert_eq!(r.checkpoints, RECORDS / EVERY);
}

/// Changing a record and recomputing every later link is caught by the signatures.
#[test]
fn rechained_log_fails_every_later_checkpoint() {
    let f = fixture();
    let mut lines = f.lines.clone();
    lines[10] = replace_once(&lines[10], b"\"deny\"", b"\"allow\"");
    for i in 11..lines.len() {
        let mut rec = Record::parse(&lines[i]).unwrap();
        rec.prev = hex::encode(hash_line(&lines[i - 1]));
        if let RecordBody::Checkpoint(c) = &mut rec.body {
            c.head = rec.prev.clone();
        }
        lines[i] = rec.canonical().unwrap();
    }
    let r = f.verify_with(&lines);
    let errs = errors(&r);
    assert_eq!(errs.len() as u64, RECORDS / EVERY + 1, "{errs:?}");
    assert!(errs.iter().all(|e| e.0 == FindingKind::BadSignature));
    assert_eq!(r.checkpoints, 0);
}

#[test]
fn wrong_public_key_fails() {
    let f = fixture();
    let other = SigningKey::create(&f._dir.path().join("other.key"))
        .unwrap()
        .public_key();
    let r = check(std::slice::from_ref(&f.path), &other);
    let errs = errors(&r);
    assert_eq!(errs.len() as u64, RECORDS / EVERY + 1);
    assert!(errs.iter().all(|e| e.0 == FindingKind::WrongKey));
    assert!(
        r.first_failure(false)
            .unwrap()
            .message
            .contains("not by the given public key")
    );
}

#[test]
fn verify_cmd_exit_status_and_verdict() {
    let f = fixture();
    let pub_path = f._dir.path().join("keys/gate.pub");
    assert_eq!(PublicKey::load(&pub_path).unwrap(), f.pk);
    let files = vec![f.path.clone()];
    assert_eq!(verify_cmd(&files, &pub_path, true), 0);
    let mut lines = f.lines.clone();
    lines[1233] = replace_once(&lines[1233], b"file-", b"fyle-");
    write_lines(&f.path, &lines);
    assert_eq!(verify_cmd(&files, &pub_path, false), 1);
    assert_eq!(verify_cmd(&files, Path::new("/nonexistent.pub"), false), 1);
    let r = gate::audit::verify(&files, &f.pk).unwrap();
    let mut out = Vec::new();
    assert!(!write_report(&mut out, &r, false).unwrap());
    let out = String::from_utf8(out).unwrap();
    let expect = format!(
        "FAIL: {} line 1234 (seq 1233): record altered: hash does not match the next record's prev",
        f.path.display()
    );
    assert!(out.lines().any(|l| l == expect), "{out}");
}
