//! Network records per flow: the first allowed datagram of a socket to a destination, and the
//! first allowed connect of a process to one, in an epoch (5 s), are `decision` records
//! flagged `flow`; the kernel counts the rest and `flow` records carry the counts. Every
//! allowed action is in exactly one of the two; denials stay one record each. The stream still
//! verifies.
use serde_json::Value;

use super::single::setup;
use super::{Ctx, Failure, GateOpts, Notes, TestFn, TestResult};
use crate::events::Log;
use crate::outcome::Status;
use crate::run::Cmd;

pub fn tests() -> Vec<(&'static str, TestFn)> {
    vec![(
        "audit/network-flows-one-record-then-counts",
        flows_are_counted,
    )]
}

/// Datagrams from one socket, connects from one process.
const DATAGRAMS: u64 = 300;
const CONNECTS: u64 = 6;
const DENIED: u64 = 3;

fn flows_are_counted(ctx: &Ctx, notes: &mut Notes) -> TestResult {
    let s = setup(ctx, "flows", "counted", "base")?;
    let key = s.dir.join("audit.key");
    let opts = GateOpts {
        extra: vec!["--audit-key".into(), key.display().to_string()],
        ..s.opts.clone()
    };
    // Nothing listens on these ports: the datagrams go out (UDP does not wait for a reader),
    // the connects are refused by the peer, after gate allowed them.
    let argv = s.probe(&[
        "seq",
        &DATAGRAMS.to_string(),
        "sendto-burst",
        "127.0.0.1",
        "40999",
        "1",
        "+",
        "1",
        "sendto-burst",
        "::1",
        "40998",
        &DATAGRAMS.to_string(),
        "+",
        &CONNECTS.to_string(),
        "connect",
        "127.0.0.1",
        "40997",
        "+",
        &DENIED.to_string(),
        "sendto",
        "192.0.2.1",
        "53",
    ]);
    let cmd = ctx.gate_cmd(&opts, &argv);
    let out = cmd.run();
    let log = Log::read(&opts.log);
    let fail = |m: String| Failure::new(m).command(&cmd, &out).log(&opts.log, &log);
    if out.status != Status::Exited(0) {
        return Err(fail(format!("expected exit 0, got {}", out.summary())));
    }
    // Each action is in a decision record flagged flow or counted in a flow record, once: the
    // sum is exact whatever epochs the actions fell in (a burst straddling an epoch's end starts
    // its flow again, with a second flagged record).
    let exact = |seen: &Seen, n: u64| {
        seen.first >= 1 && seen.first + seen.counted == n && seen.unflagged == 0
    };
    let v6 = flow(&log, "sendmsg", "::1", 40998);
    if !exact(&v6, DATAGRAMS) || v6.first > 2 {
        return Err(fail(format!(
            "{DATAGRAMS} datagrams from one socket to [::1]:40998: expected one decision record \
             flagged flow (two if an epoch ended during the burst) and the rest counted in flow \
             records; found {v6:?}"
        )));
    }
    // One socket per datagram: a socket's address may be reused by the next one, whose
    // datagram then joins the earlier socket's flow.
    let v4 = flow(&log, "sendmsg", "127.0.0.1", 40999);
    if !exact(&v4, DATAGRAMS) {
        return Err(fail(format!(
            "{DATAGRAMS} sockets sending one datagram each to 127.0.0.1:40999: expected every \
             datagram either in a decision record flagged flow or counted; found {v4:?}"
        )));
    }
    let tcp = flow(&log, "connect", "127.0.0.1", 40997);
    if !exact(&tcp, CONNECTS) || tcp.first > 2 {
        return Err(fail(format!(
            "{CONNECTS} connects from one process to 127.0.0.1:40997: expected one decision \
             record flagged flow and the rest counted; found {tcp:?}"
        )));
    }
    let denied = log
        .decisions()
        .filter(|d| d["decision"] == "deny" && d["addr"] == "192.0.2.1")
        .count() as u64;
    if denied != DENIED {
        return Err(fail(format!(
            "expected each of the {DENIED} denied datagrams as a record of its own, found {denied}"
        )));
    }
    let verify = Cmd::new(&[
        ctx.gate.display().to_string(),
        "audit".into(),
        "verify".into(),
        opts.log.display().to_string(),
        "--pubkey".into(),
        key.with_extension("pub").display().to_string(),
    ]);
    let v = verify.run();
    if v.status != Status::Exited(0) {
        return Err(fail(format!(
            "expected `gate audit verify` to pass on a stream with flow records, got {}",
            v.summary()
        ))
        .command(&verify, &v));
    }
    notes.push(format!(
        "{} records for {} allowed datagrams and connects ({} datagrams over {} sockets to \
         127.0.0.1 in {} decision records)",
        log.lines.len(),
        2 * DATAGRAMS + CONNECTS,
        DATAGRAMS,
        DATAGRAMS,
        v4.first
    ));
    Ok(())
}

/// What the log holds of one destination's allowed actions through one hook.
#[derive(Debug, Default)]
struct Seen {
    /// Decision records flagged `flow`.
    first: u64,
    /// Allowed decision records not flagged (there should be none: every allowed network
    /// action belongs to a flow while the map has room).
    unflagged: u64,
    /// The sum of the flow records' counts.
    counted: u64,
}

fn flow(log: &Log, hook: &str, addr: &str, port: u16) -> Seen {
    let mut seen = Seen::default();
    let here = |v: &Value| v["hook"] == hook && v["addr"] == addr && v["port"] == port;
    for v in log.lines.iter().filter(|v| here(v)) {
        match v["kind"].as_str() {
            Some("decision") if v["decision"] == "allow" => {
                if v["flow"] == true {
                    seen.first += 1;
                } else {
                    seen.unflagged += 1;
                }
            }
            Some("flow") => seen.counted += v["count"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    seen
}
