//! Userspace figures through the real `gate run`: start-up time with a large policy, events per
//! second from the kernel to the audit file, and the memory of the gate process (RSS and the
//! BPF maps it holds).
use std::{
    fs,
    io::{Read, Seek, SeekFrom},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::util::{bpf_maps, cstring, errno, now_ns, rss_kib, say};

const DECISION: &str = "\"kind\":\"decision\"";
const GAP: &str = "\"kind\":\"gap\"";

/// `gate-bench deny-loop N PATH LOG`, run by `gate run --log LOG`: N opens for write of PATH,
/// which the policy denies, then wait until LOG holds N decision records.
pub fn deny_loop(args: &[String]) -> Result<()> {
    let [n, path, log] = args else { bail!("usage: deny-loop N PATH LOG") };
    let n: usize = n.parse()?;
    let path = cstring(Path::new(path));
    let t_start = now_ns();
    for i in 0..n {
        // SAFETY: plain syscall on a valid C string.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: closing what we opened.
            unsafe { libc::close(fd) };
            bail!("open {i} of the denied file succeeded: not confined");
        }
        if errno() != libc::EPERM {
            bail!("open {i} failed with errno {} instead of EPERM", errno());
        }
    }
    let t_loop = now_ns();
    let (mut records, mut gaps, mut offset, mut partial) = (0usize, 0usize, 0u64, String::new());
    let deadline = t_loop + 120_000_000_000;
    let mut f = fs::File::open(log).with_context(|| format!("opening {log}"))?;
    while records < n && now_ns() < deadline {
        f.seek(SeekFrom::Start(offset))?;
        let mut chunk = String::new();
        offset += f.read_to_string(&mut chunk)? as u64;
        partial.push_str(&chunk);
        if let Some(end) = partial.rfind('\n') {
            for line in partial[..end].lines() {
                records += line.contains(DECISION) as usize;
                gaps += line.contains(GAP) as usize;
            }
            partial.drain(..=end);
        }
        if records < n {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let t_logged = now_ns();
    let gate = std::os::unix::process::parent_id().to_string();
    let (rss, hwm) = rss_kib(&gate);
    let maps = bpf_maps(&gate);
    let doc = json!({
        "n": n,
        "t_start_ns": t_start,
        "loop_ns": t_loop - t_start,
        "logged_ns": t_logged - t_start,
        "decision_records_seen": records,
        "gap_records_seen": gaps,
        "gate_rss_kib": rss,
        "gate_hwm_kib": hwm,
        "gate_bpf_maps": maps,
        "gate_bpf_map_memlock_bytes": maps.iter().filter_map(|m| m["memlock"].as_u64()).sum::<u64>(),
    });
    println!("{doc}");
    Ok(())
}

/// Runs `gate run --log` over `deny-loop` with `policy`; returns the figures.
pub fn gate_run_events(
    gate_bin: &Path,
    bench_copy: &Path,
    policy: &Path,
    ws: &Path,
    state: &Path,
    denied: &Path,
    n: usize,
) -> Result<Value> {
    let log = state.join("audit.jsonl");
    let _ = fs::remove_file(&log);
    let _ = fs::remove_file(state.join("audit.jsonl.state"));
    let key = state.join("audit.key");
    say(&format!("gate run --log with {}: {n} denied opens", policy.display()));
    let t0 = now_ns();
    let out = Command::new(gate_bin)
        .arg("run")
        .arg("--policy")
        .arg(policy)
        .arg("--workspace")
        .arg(ws)
        .arg("--log")
        .arg(&log)
        .arg("--audit-key")
        .arg(&key)
        .arg("--quiet")
        .arg("--")
        .arg(bench_copy)
        .arg("deny-loop")
        .arg(n.to_string())
        .arg(denied)
        .arg(&log)
        .output()
        .context("running gate")?;
    let t1 = now_ns();
    if !out.status.success() {
        bail!(
            "gate run failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).context("no deny-loop output")?;
    let mut v: Value = serde_json::from_str(line)?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let decisions = text.lines().filter(|l| l.contains(DECISION)).count();
    let gaps = text.lines().filter(|l| l.contains(GAP)).count();
    let t_start = v["t_start_ns"].as_u64().unwrap_or(t0);
    let logged = v["logged_ns"].as_u64().unwrap_or(1).max(1);
    v["startup_ns"] = json!(t_start.saturating_sub(t0));
    v["gate_run_total_ns"] = json!(t1 - t0);
    v["decision_records_in_log"] = json!(decisions);
    v["gap_records_in_log"] = json!(gaps);
    v["log_bytes"] = json!(text.len());
    v["events_per_virtual_second"] = json!(n as f64 * 1e9 / logged as f64);
    v["policy"] = json!(policy.display().to_string());
    Ok(v)
}
