//! gate loaded through its library exactly as `gate run` does it: compile the policy, create
//! the cgroup, load the engine with the policy in its maps, configure it for the cgroup, attach
//! and pin. A worker becomes confined by writing its pid into the cgroup's `cgroup.procs`.
use std::{
    fs,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use aya::maps::{MapData, RingBuf};

use anyhow::{Context, Result};
use gate::{
    cgroup::{self, Cgroup},
    engine::{Capacity, Counters, DEFAULT_RINGBUF_BYTES, Engine},
    events,
    policy::{self, CompiledPolicy, Vars},
    report::LogSink,
    state,
};
use serde_json::{Value, json};

use crate::util::{bpf_maps, now_ns, rss_kib, say};

pub const PIN_ROOT: &str = "/sys/fs/bpf/gate-bench";

pub struct Gate {
    pub name: String,
    engine: Option<Engine>,
    policy: Arc<CompiledPolicy>,
    counters: Counters,
    drain: Option<Drain>,
    drained: u64,
    pub cg: Cgroup,
    pin_dir: PathBuf,
    /// Timings and sizes of the set-up (virtual ns, entries, KiB).
    pub setup: Value,
}

impl Gate {
    pub fn start(name: &str, policy_file: &Path, ws: &Path) -> Result<Gate> {
        let vars = Vars {
            workspace: Some(ws.to_path_buf()),
            home: PathBuf::from(crate::fsprep::HOME),
        };
        let (rss0, _) = rss_kib("self");
        let t0 = now_ns();
        let policy = policy::load(policy_file, &vars)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("compiling {}", policy_file.display()))?;
        let t1 = now_ns();
        let h = cgroup::hierarchy()?;
        state::ensure_bpffs()?;
        let _ = fs::remove_dir(h.mount.join("gate").join(name));
        let cg = Cgroup::create(&h, name)?;
        let t2 = now_ns();
        let mut engine = Engine::load(Capacity::for_policy(&policy, 0), DEFAULT_RINGBUF_BYTES)?;
        let t3 = now_ns();
        engine.add_agent(cg.id, cg.level, 1, &policy, &[])?;
        let pin_dir = Path::new(PIN_ROOT).join(name);
        fs::create_dir_all(&pin_dir)?;
        say(&format!(
            "{name}: attaching (the kernel verifies gate's programs now)"
        ));
        engine.attach(&pin_dir)?;
        let t4 = now_ns();
        let events = engine.take_events()?;
        let counters = engine.take_counters()?;
        let policy = Arc::new(policy);
        let (rss1, _) = rss_kib("self");
        let maps = bpf_maps("self");
        let map_bytes: u64 = maps.iter().filter_map(|m| m["memlock"].as_u64()).sum();
        let sizes = policy.map_sizes();
        let setup = json!({
            "cgroup": cg.path.display().to_string(),
            "policy": policy_file.display().to_string(),
            "rules": sizes.rules,
            "inode_entries": sizes.inodes,
            "net_entries": sizes.net4 + sizes.net6,
            "warnings": policy.warnings.len(),
            "compile_ns": t1 - t0,
            "load_ns": t3 - t2,
            "attach_ns": t4 - t3,
            "loader_rss_kib_before": rss0,
            "loader_rss_kib_after": rss1,
            "bpf_maps": maps,
            "bpf_map_memlock_bytes": map_bytes,
        });
        say(&format!(
            "{name}: {} rules, {} inode entries; compile {:.3}s, load {:.3}s, attach {:.3}s (virtual)",
            sizes.rules,
            sizes.inodes,
            (t1 - t0) as f64 / 1e9,
            (t3 - t2) as f64 / 1e9,
            (t4 - t3) as f64 / 1e9
        ));
        let drain = Some(Drain::start(events, policy.clone()));
        Ok(Gate {
            name: name.to_owned(),
            engine: Some(engine),
            policy,
            counters,
            drain,
            drained: 0,
            cg,
            pin_dir,
            setup,
        })
    }

    /// Drains the kernel's events into a signed audit log at `log` (as `gate run --log` does,
    /// through [`gate::report::LogSink`]) until `n` decisions are written. Reports "ready"
    /// first, then the virtual time the n-th record was flushed.
    pub fn collect_events(
        &mut self,
        n: usize,
        log: &Path,
        key: &Path,
        out: &mut fs::File,
    ) -> Result<Value> {
        let mut events = self.stop_drain()?;
        let _ = fs::remove_file(log);
        let command = [std::ffi::OsString::from("gate-bench deny-loop")];
        let mut sink = LogSink::open(log, key, &self.policy, &self.cg.name, &command)?;
        // What the kernel reported before (every confined exec and connect is reported) goes
        // to the log first and does not count.
        let mut backlog = 0usize;
        while let Some(item) = events.next() {
            if let Some(e) = events::parse(&item) {
                sink.decision(&events::decode(&e, &self.policy))?;
                backlog += 1;
            }
        }
        sink.tick()?;
        crate::util::report_line(out, Ok(json!("ready")));
        let fd = events.as_fd().as_raw_fd();
        let (mut written, mut batches) = (0usize, 0usize);
        let deadline = now_ns() + 300_000_000_000;
        let mut t_done = 0;
        while now_ns() < deadline {
            while let Some(item) = events.next() {
                let Some(e) = events::parse(&item) else {
                    continue;
                };
                if e.rule == gate_common::rule::SELFTEST {
                    continue;
                }
                sink.decision(&events::decode(&e, &self.policy))?;
                written += 1;
            }
            sink.tick()?;
            batches += 1;
            if written >= n {
                t_done = now_ns();
                break;
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polling one valid fd.
            unsafe { libc::poll(&mut pfd, 1, 50) };
        }
        let lost = self.counters.read()?[gate_common::counter::RINGBUF_FULL as usize];
        sink.finish(Some(0), None)?;
        self.drain = Some(Drain::start(events, self.policy.clone()));
        let text = fs::read_to_string(log).unwrap_or_default();
        Ok(json!({
            "t_done_ns": t_done,
            "backlog_written_first": backlog,
            "decisions_written": written,
            "batches": batches,
            "lost_in_kernel": lost,
            "decision_records_in_log": text.lines().filter(|l| l.contains("\"kind\":\"decision\"")).count(),
            "log_records": text.lines().count(),
            "log_bytes": text.len(),
        }))
    }

    fn stop_drain(&mut self) -> Result<RingBuf<MapData>> {
        let d = self
            .drain
            .take()
            .context("the ring buffer is not being drained")?;
        let (events, n) = d.finish()?;
        self.drained += n;
        Ok(events)
    }

    /// Stops enforcing; reports how many events were drained and lost over the block.
    pub fn stop(mut self) -> Result<Value> {
        let _ = self.stop_drain();
        let counters = self.counters.read()?;
        self.cg.kill_all(std::time::Duration::from_secs(10))?;
        if let Some(e) = self.engine.take() {
            e.detach().context("detaching")?;
        }
        self.cg.remove()?;
        let _ = fs::remove_dir_all(&self.pin_dir);
        say(&format!("{}: detached", self.name));
        Ok(json!({
            "events_drained": self.drained,
            "events_lost_ringbuf_full": counters[gate_common::counter::RINGBUF_FULL as usize],
            "decisions_counted": counters[gate_common::counter::DECISIONS as usize],
        }))
    }
}

/// What `gate run` does with events when it has no log: a thread drains the ring buffer as
/// it fills and decodes every event (for the end-of-run summary). Without it the ring buffer
/// would fill up during the loops and later events would cost less than earlier ones.
pub struct Drain {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(RingBuf<MapData>, u64)>,
}

impl Drain {
    /// Stops draining; gives the ring buffer back with the number of events drained.
    pub fn finish(self) -> Result<(RingBuf<MapData>, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("drain thread panicked"))
    }

    pub fn start(mut events: RingBuf<MapData>, policy: Arc<CompiledPolicy>) -> Drain {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let fd = events.as_fd().as_raw_fd();
            let mut n = 0u64;
            let mut summary = gate::report::Summary::default();
            loop {
                while let Some(item) = events.next() {
                    if let Some(e) = events::parse(&item) {
                        summary.add(&events::decode(&e, &policy));
                        n += 1;
                    }
                }
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: polling one valid fd.
                unsafe { libc::poll(&mut pfd, 1, 50) };
            }
            (events, n)
        });
        Drain { stop, handle }
    }
}

/// Writes the calling process's pid into an open `cgroup.procs`.
pub fn join(procs: &fs::File) -> Result<()> {
    use std::io::Write;
    let mut f = procs;
    f.write_all(std::process::id().to_string().as_bytes())
        .context("joining the cgroup")
}
