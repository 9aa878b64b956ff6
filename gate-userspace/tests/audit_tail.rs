//! `tail`: backlog, raw lines, columns, following rotations, verifying as it goes.
#[path = "audit_support.rs"]
mod support;

use std::fs;

use gate::audit::{AuditLog, Record, TailOptions, Tailer, format_record};
use support::*;

fn opts(json: bool) -> TailOptions {
    TailOptions {
        follow: true,
        json,
        backlog: Some(10),
        ..Default::default()
    }
}

fn poll(t: &mut Tailer) -> (String, String) {
    let (mut out, mut alerts) = (Vec::new(), Vec::new());
    t.poll(&mut out, &mut alerts).unwrap();
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(alerts).unwrap(),
    )
}

#[test]
fn json_mode_prints_last_lines_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_log(dir.path(), 50, 20);
    let all = lines(&path);
    for verify in [false, true] {
        let mut t = Tailer::new(
            &path,
            TailOptions {
                verify,
                ..opts(true)
            },
        );
        let (out, alerts) = poll(&mut t);
        let mut expect = Vec::new();
        for l in &all[all.len() - 10..] {
            expect.extend_from_slice(l);
            expect.push(b'\n');
        }
        assert_eq!(out.as_bytes(), expect, "verify={verify}");
        assert_eq!(alerts, "");
    }
}

#[test]
fn follows_appends_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path, config(dir.path(), 100)).unwrap();
    append_n(&mut log, 3);
    log.flush().unwrap();
    let mut t = Tailer::new(
        &path,
        TailOptions {
            verify: true,
            pubkey: Some(log.public_key()),
            ..opts(true)
        },
    );
    assert_eq!(poll(&mut t).0.lines().count(), 3);
    append_n(&mut log, 4);
    log.flush().unwrap();
    assert_eq!(poll(&mut t).0.lines().count(), 4);
    log.rotate_to(&dir.path().join("audit.jsonl.1")).unwrap();
    append_n(&mut log, 2);
    log.flush().unwrap();
    let (out, alerts) = poll(&mut t);
    // The rotate checkpoint from the old file, then the two new records.
    let seqs: Vec<u64> = out.lines().map(|l| seq_of(l.as_bytes())).collect();
    assert_eq!(seqs, [7, 8, 9]);
    assert_eq!(alerts, "");
    assert_eq!(poll(&mut t).0, "");
    log.close().unwrap();
    assert_eq!(poll(&mut t).0.lines().count(), 1);
    assert_eq!(t.errors(), 0);
}

#[test]
fn verify_shouts_on_a_broken_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (path, pk) = write_log(dir.path(), 40, 20);
    let mut all = lines(&path);
    all[5] = String::from_utf8(all[5].clone())
        .unwrap()
        .replace("file-", "evil-")
        .into_bytes();
    write_lines(&path, &all);
    let mut t = Tailer::new(
        &path,
        TailOptions {
            verify: true,
            pubkey: Some(pk),
            ..opts(true)
        },
    );
    let (_, alerts) = poll(&mut t);
    assert!(
        alerts.starts_with(&format!(
            "CHAIN BROKEN: {} line 6 (seq 5): record altered: hash does not match the next record's prev",
            path.display()
        )),
        "{alerts}"
    );
    assert_eq!(t.errors(), 1);
    // A line appended by someone else does not link to the chain either.
    let mut data = fs::read(&path).unwrap();
    data.extend_from_slice(&all[10]);
    data.push(b'\n');
    fs::write(&path, data).unwrap();
    let (_, alerts) = poll(&mut t);
    assert!(
        alerts.contains("CHAIN BROKEN") && alerts.contains("seq 10"),
        "{alerts}"
    );
}

#[test]
fn columns_for_people() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_log(dir.path(), 5, 100);
    let all = lines(&path);
    let deny = Record::parse(&all[0]).unwrap(); // decision(0) is a deny
    let plain = format_record(&deny, false);
    assert!(plain.contains("  deny  "), "{plain}");
    assert!(
        plain.contains("write") && plain.contains("/home/agent/project/src/file-0.rs"),
        "{plain}"
    );
    assert!(
        plain.contains("rule-0") && plain.ends_with("claude[1000]"),
        "{plain}"
    );
    assert!(plain.starts_with(&value(&all[0])["time"].as_str().unwrap()[..10]));
    assert!(format_record(&deny, true).contains("\x1b[31mdeny"));
    let allow = Record::parse(&all[1]).unwrap();
    assert!(format_record(&allow, true).contains("\x1b[32mallow"));
    let connect = Record::parse(&all[3]).unwrap();
    assert!(format_record(&connect, false).contains("192.0.2.7:443"));
    let cp = Record::parse(all.last().unwrap()).unwrap();
    assert!(format_record(&cp, false).contains("signed"));
    let mut hostile = deny.clone();
    if let gate::audit::RecordBody::Decision(d) = &mut hostile.body {
        d.object = gate::audit::Object::Path {
            path: "/tmp/\x1b[2J\x1b[32mallow\n".into(),
        };
    }
    let shown = format_record(&hostile, false);
    assert!(!shown.contains('\x1b') && !shown.contains('\n'), "{shown}");
    assert!(
        shown.contains(r"/tmp/\u{1b}[2J\u{1b}[32mallow\n"),
        "{shown}"
    );
    let mut t = Tailer::new(&path, opts(false));
    let (out, _) = poll(&mut t);
    assert_eq!(out.lines().count(), 6);
    assert!(!out.contains('\x1b'));
}

#[test]
fn whole_file_without_follow_reports_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (path, pk) = write_log(dir.path(), 30, 10);
    let mut data = fs::read(&path).unwrap();
    data.truncate(data.len() - 20);
    fs::write(&path, data).unwrap();
    let o = TailOptions {
        follow: false,
        json: true,
        backlog: None,
        verify: true,
        pubkey: Some(pk),
        ..Default::default()
    };
    let mut t = Tailer::new(&path, o);
    let (out, _) = poll(&mut t);
    assert_eq!(out.lines().count(), lines_in(&path) - 1);
    let mut alerts = Vec::new();
    assert_eq!(t.finish(&mut alerts).unwrap(), 1);
    assert!(
        String::from_utf8(alerts)
            .unwrap()
            .contains("file ends in the middle of a record")
    );
}

fn lines_in(path: &std::path::Path) -> usize {
    fs::read(path).unwrap().split(|&b| b == b'\n').count()
}
