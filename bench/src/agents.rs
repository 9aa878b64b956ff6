//! Many agents in one engine, loaded through the library as the daemon loads them: one
//! `Engine` with room for `n` agents, each agent its own cgroup under `gate/` and its own
//! compiled policy (alternately `coding-agent` and `ci-runner`, each with a workspace of its
//! own), added and removed with `Engine::add_agent` / `remove_agent` while the programs stay
//! attached. Agent 0 is `coding-agent` with the benchmark's workspace, so a worker that joins its
//! cgroup runs the same loops as the "confined: coding-agent" condition. Agent 0's policy is
//! compiled against the real root; the others are compiled chrooted in the daemon benchmark's
//! tmpfs root (`daemon::Root`), where their paths are looked up in memory rather than over 9p.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};
use gate::{
    cgroup::{self, Cgroup},
    engine::{Capacity, Counters, DEFAULT_RINGBUF_BYTES, Engine},
    policy::{self, CompiledPolicy, Vars},
    state,
};
use serde_json::{Value, json};

use crate::{
    gatecond::{Drain, PIN_ROOT},
    util::{bpf_maps, now_ns, rss_kib, say},
};

struct Agent {
    cg: Cgroup,
    policy: Arc<CompiledPolicy>,
}

pub struct ManyAgents {
    engine: Option<Engine>,
    agents: Vec<Agent>,
    /// How many of `agents` (a prefix) the engine confines now.
    loaded: usize,
    counters: Counters,
    drain: Option<Drain>,
    pin_dir: PathBuf,
    pub setup: Value,
}

/// Memory of the calling process (the one holding the engine) and of its BPF maps.
fn memory() -> Value {
    let maps = bpf_maps("self");
    let bytes: u64 = maps.iter().filter_map(|m| m["memlock"].as_u64()).sum();
    json!({ "rss_kib": rss_kib("self").0, "bpf_map_memlock_bytes": bytes, "bpf_maps": maps })
}

impl ManyAgents {
    /// Compiles `n` policies, creates `n` cgroups, loads one engine with room for all of them,
    /// confines agent 0 and attaches; then adds the other agents (timed) and takes them out
    /// again, so the engine starts with one agent.
    pub fn start(
        n: usize,
        ws: &Path,
        ws_root: &Path,
        coding: &Path,
        other: &Path,
        chroot: &Path,
    ) -> Result<ManyAgents> {
        let h = cgroup::hierarchy()?;
        state::ensure_bpffs()?;
        let real_root = fs::File::open("/")?;
        let t0 = now_ns();
        let mut t_first = t0;
        let mut agents = Vec::with_capacity(n);
        for i in 0..n {
            if i == 1 {
                t_first = now_ns();
                let dir = crate::util::cstring(chroot);
                // SAFETY: plain syscalls on a valid C string.
                if unsafe { libc::chroot(dir.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 } {
                    return Err(std::io::Error::last_os_error()).context("chroot");
                }
            }
            let (file, workspace) = if i == 0 {
                (coding, ws.to_path_buf())
            } else {
                let w = ws_root.join(format!("a{i:03}"));
                fs::create_dir_all(w.join("src"))?;
                (if i % 2 == 0 { coding } else { other }, w)
            };
            let vars = Vars {
                workspace: Some(workspace),
                home: PathBuf::from(crate::fsprep::HOME),
            };
            let policy = policy::load(file, &vars)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("compiling {}", file.display()))?;
            let name = format!("bench-agent-{i:03}");
            let _ = fs::remove_dir(h.mount.join("gate").join(&name));
            let cg = Cgroup::create(&h, &name)?;
            agents.push(Agent {
                cg,
                policy: Arc::new(policy),
            });
        }
        if n > 1 {
            use std::os::fd::AsRawFd;
            // SAFETY: back to the real root through the directory opened before the chroot.
            let back = unsafe {
                libc::fchdir(real_root.as_raw_fd()) != 0
                    || libc::chroot(c".".as_ptr()) != 0
                    || libc::chdir(c"/".as_ptr()) != 0
            };
            if back {
                return Err(std::io::Error::last_os_error()).context("leaving the chroot");
            }
        }
        drop(real_root);
        let t1 = now_ns();
        let inodes: usize = agents.iter().map(|a| a.policy.inodes.len()).sum();
        let net4: usize = agents.iter().map(|a| a.policy.net4.len()).sum();
        let net6: usize = agents.iter().map(|a| a.policy.net6.len()).sum();
        let room = |x: usize| ((x as u32).saturating_mul(2)).max(2);
        let capacity = Capacity {
            agents: n as u32 + 1,
            inodes: room(inodes),
            net4: room(net4),
            net6: room(net6),
            verdicts: 1,
        };
        let mut engine = Engine::load(capacity, DEFAULT_RINGBUF_BYTES)?;
        let t2 = now_ns();
        let a0 = &agents[0];
        engine.add_agent(a0.cg.id, a0.cg.level, 1, &a0.policy, &[])?;
        let pin_dir = Path::new(PIN_ROOT).join("agents");
        fs::create_dir_all(&pin_dir)?;
        say(&format!(
            "{n} agents: {n} policies compiled in {:.3} s; attaching (the kernel verifies gate's programs now)",
            (t1 - t0) as f64 / 1e9
        ));
        engine.attach(&pin_dir)?;
        let t3 = now_ns();
        let events = engine.take_events()?;
        let counters = engine.take_counters()?;
        let drain = Some(Drain::start(events, a0.policy.clone()));
        let mut m = ManyAgents {
            engine: Some(engine),
            agents,
            loaded: 1,
            counters,
            drain,
            pin_dir,
            setup: Value::Null,
        };
        let mem_1 = memory();
        let add = m.set(n)?;
        let mem_n = memory();
        let remove = m.set(1)?;
        let per_policy = |name: &str| m.agents.iter().filter(|a| a.policy.name == name).count();
        m.setup = json!({
            "agents": n,
            "policies": {
                "coding-agent": per_policy("coding-agent"),
                "ci-runner": per_policy("ci-runner"),
            },
            "capacity": {
                "agents": capacity.agents,
                "inodes": capacity.inodes,
                "net4": capacity.net4,
                "net6": capacity.net6,
            },
            "inode_entries": inodes,
            "net_entries": net4 + net6,
            "compile_all_ns": t1 - t0,
            "compile_first_ns": t_first - t0,
            "compile_rest_ns": t1 - t_first,
            "load_ns": t2 - t1,
            "attach_ns": t3 - t2,
            "add_agents": add,
            "remove_agents": remove,
            "memory_1": mem_1,
            "memory_n": mem_n,
            "confined_cgroup": m.agents[0].cg.path.display().to_string(),
            "levels": m.agents.iter().map(|a| a.cg.level).collect::<std::collections::BTreeSet<_>>(),
        });
        say(&format!(
            "{n} agents: load {:.3} s, attach {:.3} s, adding {} agents {:.3} s (virtual)",
            (t2 - t1) as f64 / 1e9,
            (t3 - t2) as f64 / 1e9,
            n - 1,
            add["ns"].as_f64().unwrap_or(0.0) / 1e9
        ));
        Ok(m)
    }

    /// Adds or removes agents (the last added goes first) until `n` are confined.
    pub fn set(&mut self, n: usize) -> Result<Value> {
        anyhow::ensure!(
            (1..=self.agents.len()).contains(&n),
            "between 1 and {} agents",
            self.agents.len()
        );
        let engine = self.engine.as_mut().context("detached")?;
        let t0 = now_ns();
        let (from, mut changed) = (self.loaded, 0usize);
        while self.loaded < n {
            let a = &self.agents[self.loaded];
            engine.add_agent(a.cg.id, a.cg.level, self.loaded as u32 + 1, &a.policy, &[])?;
            self.loaded += 1;
            changed += 1;
        }
        while self.loaded > n {
            let a = &self.agents[self.loaded - 1];
            engine.remove_agent(a.cg.id)?;
            self.loaded -= 1;
            changed += 1;
        }
        let ns = now_ns() - t0;
        anyhow::ensure!(
            engine.agents().len() == n,
            "the engine lists {} agents, expected {n}",
            engine.agents().len()
        );
        Ok(json!({ "from": from, "to": n, "changed": changed, "ns": ns }))
    }

    pub fn stop(mut self) -> Result<Value> {
        let drained = match self.drain.take() {
            Some(d) => d.finish()?.1,
            None => 0,
        };
        let counters = self.counters.read()?;
        for a in &self.agents {
            a.cg.kill_all(std::time::Duration::from_secs(10))?;
        }
        if let Some(e) = self.engine.take() {
            e.detach().context("detaching")?;
        }
        for a in &self.agents {
            a.cg.remove()?;
        }
        let _ = fs::remove_dir_all(&self.pin_dir);
        say("many agents: detached");
        Ok(json!({
            "events_drained": drained,
            "events_lost_ringbuf_full": counters[gate_common::counter::RINGBUF_FULL as usize],
            "decisions_counted": counters[gate_common::counter::DECISIONS as usize],
        }))
    }
}
