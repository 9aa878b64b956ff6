//! The writer: keys, checkpoints, gaps, errors, and the chain across restarts and rotations.
#[path = "audit_support.rs"]
mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use gate::audit::{AuditError, AuditLog, FindingKind, RecordBody, Severity, hash_line};
use support::*;

#[test]
fn key_is_created_0600_and_public_key_exported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 100);
    let log = AuditLog::open(&dir.path().join("audit.jsonl"), cfg.clone()).unwrap();
    let meta = fs::metadata(&cfg.key_path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let exported = gate::audit::PublicKey::load(&dir.path().join("keys/gate.pub")).unwrap();
    assert_eq!(exported, log.public_key());
    // No temporary key file is left behind.
    let names: Vec<_> = fs::read_dir(dir.path().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn decision_line_has_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_log(dir.path(), 1, 100);
    let line = String::from_utf8(lines(&path)[0].clone()).unwrap();
    let v = value(line.as_bytes());
    let mut keys: Vec<(usize, &str)> = v
        .as_object()
        .unwrap()
        .keys()
        .map(|k| (line.find(&format!("\"{k}\":")).unwrap(), k.as_str()))
        .collect();
    keys.sort();
    assert_eq!(
        keys.into_iter().map(|(_, k)| k).collect::<Vec<_>>(),
        [
            "seq",
            "time",
            "host",
            "boot_id",
            "kind",
            "prev",
            "agent",
            "pid",
            "tgid",
            "ppid",
            "uid",
            "comm",
            "exe",
            "op",
            "hook",
            "path",
            "decision",
            "enforced",
            "rule",
            "policy_digest"
        ]
    );
    let time = v["time"].as_str().unwrap();
    assert_eq!(time.len(), 30);
    assert!(
        time.ends_with('Z') && time.as_bytes()[10] == b'T' && time.as_bytes()[19] == b'.',
        "{time}"
    );
    assert_eq!(v["host"], "test-host");
}

#[test]
fn checkpoints_every_n_records() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_log(dir.path(), 1000, 100);
    let lines = lines(&path);
    let cps: Vec<u64> = lines
        .iter()
        .filter(|l| is_checkpoint(l))
        .map(|l| seq_of(l))
        .collect();
    assert_eq!(cps.len(), 11);
    for w in cps.windows(2).take(9) {
        assert_eq!(w[1] - w[0], 101);
    }
    let cp = value(&lines[100]);
    assert_eq!(
        (
            cp["first"].as_u64(),
            cp["last"].as_u64(),
            cp["reason"].as_str()
        ),
        (Some(0), Some(99), Some("count"))
    );
    assert_eq!(cp["head"], cp["prev"]);
}

#[test]
fn time_based_checkpoint_on_tick() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1000);
    cfg.checkpoint_interval = Duration::from_millis(20);
    let mut log = AuditLog::open(&dir.path().join("audit.jsonl"), cfg).unwrap();
    assert_eq!(log.next_checkpoint_due(), None);
    log.append(&decision(1)).unwrap();
    assert!(log.next_checkpoint_due().is_some());
    assert_eq!(log.tick().unwrap(), None);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(log.tick().unwrap(), Some(1));
    assert_eq!(log.unsigned(), 0);
    assert_eq!(log.next_checkpoint_due(), None);
    // The next append past the interval signs without a tick.
    log.append(&decision(2)).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    log.append(&decision(3)).unwrap();
    assert_eq!(log.unsigned(), 0);
    let lines = lines(log.path());
    assert_eq!(value(&lines[1])["reason"], "time");
    assert_eq!(value(&lines[4])["reason"], "time");
}

#[test]
fn gap_records_are_chained_signed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path, config(dir.path(), 1000)).unwrap();
    append_n(&mut log, 10);
    let seq = log.append_gap(17, Some(3), "ring buffer full").unwrap();
    assert_eq!(seq, 10);
    assert_eq!(log.unsigned(), 0, "a gap is followed by a checkpoint");
    append_n(&mut log, 5);
    let pk = log.public_key();
    log.close().unwrap();
    let lines = lines(&path);
    let gap = value(&lines[10]);
    assert_eq!(
        (
            gap["kind"].as_str(),
            gap["lost"].as_u64(),
            gap["cpu"].as_u64()
        ),
        (Some("gap"), Some(17), Some(3))
    );
    assert_eq!(value(&lines[11])["reason"], "gap");
    let r = check(&[path], &pk);
    assert!(r.passed(true));
    assert_eq!(r.lost_events, 17);
    assert_eq!(
        findings(&r, Severity::Info),
        vec![(FindingKind::Gap, 11, Some(10))]
    );
}

#[test]
fn chain_continues_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path, config(dir.path(), 100)).unwrap();
    append_n(&mut log, 150);
    log.close().unwrap();
    let before = lines(&path);
    let mut log = AuditLog::open(&path, config(dir.path(), 100)).unwrap();
    assert_eq!(log.next_seq(), before.len() as u64);
    assert_eq!(log.head(), hash_line(before.last().unwrap()));
    append_n(&mut log, 150);
    let pk = log.public_key();
    log.close().unwrap();
    let after = lines(&path);
    assert_eq!(
        value(&after[before.len()])["prev"],
        hex::encode(hash_line(before.last().unwrap()))
    );
    let r = check(&[path], &pk);
    assert!(r.findings.is_empty() && r.passed(true), "{:?}", r.findings);
}

#[test]
fn crash_leaves_unsigned_records_signed_at_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path, config(dir.path(), 100)).unwrap();
    append_n(&mut log, 130);
    drop(log); // no clean shutdown
    let mut log = AuditLog::open(&path, config(dir.path(), 100)).unwrap();
    assert_eq!(log.unsigned(), 0);
    append_n(&mut log, 10);
    let pk = log.public_key();
    log.close().unwrap();
    let lines = lines(&path);
    let rec = value(&lines[131]);
    assert_eq!(
        (
            rec["reason"].as_str(),
            rec["first"].as_u64(),
            rec["last"].as_u64()
        ),
        (Some("recovery"), Some(100), Some(130))
    );
    let r = check(&[path], &pk);
    assert!(errors(&r).is_empty());
    assert_eq!(warnings(&r), vec![(FindingKind::Recovered, 132, Some(131))]);
}

#[test]
fn record_cut_by_a_crash_becomes_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (_, pk) = write_log(dir.path(), 20, 100);
    let mut data = fs::read(&path).unwrap();
    let n = lines(&path).len() as u64;
    let cut = b"{\"seq\":21,\"time\":\"2026-01";
    data.extend_from_slice(cut);
    fs::write(&path, &data).unwrap();
    let log = AuditLog::open(&path, config(dir.path(), 100)).unwrap();
    log.close().unwrap();
    let lines = lines(&path);
    let gap = value(&lines[n as usize]);
    assert_eq!(
        (gap["kind"].as_str(), gap["lost"].as_u64()),
        (Some("gap"), Some(1))
    );
    assert!(
        gap["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("partially written record ({} bytes)", cut.len()))
    );
    let r = check(&[path], &pk);
    assert!(errors(&r).is_empty(), "{:?}", r.findings);
    assert_eq!(r.lost_events, 1);
}

#[test]
fn rotation_in_process_links_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let old = dir.path().join("audit.jsonl.1");
    let mut log = AuditLog::open(&path, config(dir.path(), 100)).unwrap();
    append_n(&mut log, 250);
    log.rotate_to(&old).unwrap();
    append_n(&mut log, 250);
    let pk = log.public_key();
    log.close().unwrap();
    let (a, b) = (lines(&old), lines(&path));
    assert_eq!(value(a.last().unwrap())["reason"], "rotate");
    assert_eq!(
        value(&b[0])["prev"],
        hex::encode(hash_line(a.last().unwrap()))
    );
    assert_eq!(seq_of(&b[0]), seq_of(a.last().unwrap()) + 1);
    let r = check(&[old.clone(), path.clone()], &pk);
    assert!(r.findings.is_empty() && r.passed(true), "{:?}", r.findings);
    // The newer file alone is a valid tail of the chain, not its start.
    let r = check(std::slice::from_ref(&path), &pk);
    assert!(errors(&r).is_empty());
    assert_eq!(
        warnings(&r),
        vec![(FindingKind::Incomplete, 1, Some(seq_of(&b[0])))]
    );
    // Out of order files are reported.
    let r = check(&[path, old], &pk);
    assert!(!r.passed(false));
}

#[test]
fn logrotate_rename_then_sighup_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let old = dir.path().join("audit.jsonl-20260101");
    let mut log = AuditLog::open(&path, config(dir.path(), 100)).unwrap();
    append_n(&mut log, 120);
    assert!(
        !log.reopen().unwrap(),
        "nothing to reopen before the rename"
    );
    fs::rename(&path, &old).unwrap();
    append_n(&mut log, 5); // still goes to the renamed file
    assert!(log.reopen().unwrap());
    append_n(&mut log, 5);
    let pk = log.public_key();
    log.close().unwrap();
    assert_eq!(lines(&old).len(), 120 + 1 + 5 + 1);
    let r = check(&[old, path], &pk);
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

#[test]
fn restart_after_rotation_continues_from_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let old = dir.path().join("audit.jsonl.1");
    let (_, pk) = write_log(dir.path(), 300, 100);
    fs::rename(&path, &old).unwrap();
    let mut log = AuditLog::open(&path, config(dir.path(), 100)).unwrap();
    append_n(&mut log, 10);
    log.close().unwrap();
    let r = check(&[old, path], &pk);
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

#[test]
fn crash_after_rotation_finds_the_renamed_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let old = dir.path().join("audit.jsonl.1");
    let mut log = AuditLog::open(&path, config(dir.path(), 100)).unwrap();
    append_n(&mut log, 150);
    fs::rename(&path, &old).unwrap();
    append_n(&mut log, 20); // after the last state save
    let pk = log.public_key();
    drop(log); // crash before any reopen
    let mut log = AuditLog::open(&path, config(dir.path(), 100)).unwrap();
    append_n(&mut log, 10);
    log.close().unwrap();
    let first = value(&lines(&path)[0]);
    assert_eq!(first["reason"], "recovery");
    assert_eq!(
        first["last"].as_u64(),
        Some(seq_of(lines(&old).last().unwrap()))
    );
    let r = check(&[old, path], &pk);
    assert!(errors(&r).is_empty(), "{:?}", r.findings);
}

#[test]
fn failed_write_is_returned_and_stops_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 100);
    cfg.flush_each_record = true;
    cfg.state_path = Some(dir.path().join("full.state"));
    let mut log = AuditLog::open(std::path::Path::new("/dev/full"), cfg).unwrap();
    let err = log.append(&decision(0)).unwrap_err();
    assert!(
        matches!(&err, AuditError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)),
        "{err}"
    );
    assert!(matches!(
        log.append(&decision(1)),
        Err(AuditError::Broken { .. })
    ));
    assert!(matches!(log.checkpoint(), Err(AuditError::Broken { .. })));
    assert!(log.close().is_err());
}

#[test]
fn decisions_are_buffered_until_checkpoint_or_flush() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path, config(dir.path(), 100)).unwrap();
    append_n(&mut log, 5);
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    log.flush().unwrap();
    assert_eq!(lines(&path).len(), 5);
    append_n(&mut log, 95);
    assert_eq!(lines(&path).len(), 101, "the checkpoint flushes");
    append_n(&mut log, 3);
    assert_eq!(lines(&path).len(), 101);
    // Records other than decisions are written at once, and the buffered ones before them.
    let stop = RecordBody::Stop(gate::audit::Lifecycle::new(gate::audit::Scope::Run));
    assert_eq!(log.append(&stop).unwrap(), 104);
    assert_eq!(lines(&path).len(), 105);
    log.close().unwrap();
}

#[test]
fn write_through_mode_writes_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut cfg = config(dir.path(), 100);
    cfg.flush_each_record = true;
    let mut log = AuditLog::open(&path, cfg).unwrap();
    append_n(&mut log, 5);
    assert_eq!(lines(&path).len(), 5);
    log.close().unwrap();
}

#[test]
fn checkpoint_bodies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path, config(dir.path(), 100)).unwrap();
    append_n(&mut log, 3);
    let cp = log.checkpoint().unwrap().unwrap();
    let rec = gate::audit::Record::parse(&lines(&path)[cp as usize]).unwrap();
    assert!(matches!(
        log.append(&rec.body),
        Err(AuditError::CheckpointBody)
    ));
    assert_eq!(log.checkpoint().unwrap(), None, "nothing unsigned");
}

#[test]
fn a_second_writer_is_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let first = AuditLog::open(&path, config(dir.path(), 100)).unwrap();
    let err = match AuditLog::open(&path, config(dir.path(), 100)) {
        Err(e) => e,
        Ok(_) => panic!("a second writer opened the same log"),
    };
    assert!(matches!(err, AuditError::Locked { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("pid {}", std::process::id())) && msg.contains("another process"),
        "{msg}"
    );
    first.close().unwrap();
    AuditLog::open(&path, config(dir.path(), 100)).unwrap();
}
