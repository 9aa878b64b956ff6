//! The enforcement engine: loads gate's eBPF object with the running kernel's offsets, sizes
//! and fills its maps from a compiled policy, attaches every LSM program and pins the links
//! so that enforcement outlives the process that set it up.
//!
//! One `Engine` confines one cgroup subtree with one policy. Several engines (several
//! `gate run`s) coexist: each program passes on a denial by an earlier one.
use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        Lsm,
        links::{FdLink, PinnedLink},
    },
};
use gate_common::{Config, InodeKey, InodeRule, KernelOffsets, NetRule, counter};

use crate::{
    btf::{self, Btf, BtfError},
    policy::CompiledPolicy,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gate"));
/// Programs that only pass the previous verdict on (gate-ebpf/src/null.rs), for benchmarks.
static NULL_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gate-null"));

/// Default size of the event ring buffer.
pub const DEFAULT_RINGBUF_BYTES: u32 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "this gate binary was built without its eBPF programs (AYA_BUILD_SKIP was set); \
         rebuild it without AYA_BUILD_SKIP"
    )]
    NoObject,
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {0}; the binary and its programs do not match")]
    Missing(&'static str),
    #[error("the kernel refused program {program}: {source}")]
    Program {
        program: String,
        source: aya::programs::ProgramError,
    },
    #[error("writing map {map} failed: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("pinning {path} failed: {reason}")]
    Pin { path: PathBuf, reason: String },
}

/// A loaded, filled and (after [`Engine::attach`]) enforcing instance.
pub struct Engine {
    ebpf: Ebpf,
    links: Vec<PinnedLink>,
    /// Bits of the inode filter minus one (`gate_common::filter`).
    filter_mask: u64,
    /// The running kernel's BTF (read once: it is megabytes) and the programs that match its
    /// hooks.
    kernel: aya::Btf,
    hooks: Vec<(&'static str, &'static str)>,
}

/// The kernel's view of the running kernel's BTF, for attaching.
fn kernel_btf() -> Result<aya::Btf, EngineError> {
    aya::Btf::from_sys_fs()
        .map_err(|e| EngineError::Btf(BtfError::Missing(format!("loadable BTF ({e})"))))
}

impl Engine {
    /// Loads the object and fills every map from `policy`, with nothing confined yet.
    pub fn load(policy: &CompiledPolicy, ringbuf_bytes: u32) -> Result<Self, EngineError> {
        if OBJECT.is_empty() {
            return Err(EngineError::NoObject);
        }
        let t = std::time::Instant::now();
        let ours = Btf::from_sys_fs()?;
        let offsets: KernelOffsets = btf::kernel_offsets(&ours)?;
        let hooks = btf::programs_for(&ours)?;
        drop(ours);
        let kernel = kernel_btf()?;
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "kernel BTF read");
        let inodes = (policy.inodes.len() as u32 + 1).max(1);
        let net4 = (policy.net4.len() as u32).max(1);
        let net6 = (policy.net6.len() as u32).max(1);
        // Room for the policy's keys and the self-test canary.
        let filter_bits = gate_common::filter::bits_for(policy.inodes.len() + 1);
        let filter_mask = filter_bits - 1;
        let ebpf = EbpfLoader::new()
            .btf(Some(&kernel))
            .override_global("KOFFSETS", &offsets, true)
            .override_global("FILTER_MASK", &filter_mask, true)
            .map_max_entries("FILTER", (filter_bits / 64) as u32)
            .map_max_entries("INODES", inodes)
            .map_max_entries("NET4", net4)
            .map_max_entries("NET6", net6)
            .map_max_entries("EVENTS", ringbuf_bytes.next_power_of_two().max(1 << 16))
            .load(OBJECT)
            .map_err(EngineError::Load)?;
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "object loaded");
        let mut engine = Engine {
            ebpf,
            links: Vec::new(),
            filter_mask,
            kernel,
            hooks,
        };
        engine.fill(policy)?;
        Ok(engine)
    }

    fn fill(&mut self, policy: &CompiledPolicy) -> Result<(), EngineError> {
        // The filter first: a key must never be in the rule map with its filter bit clear.
        let mut words = vec![0u64; ((self.filter_mask + 1) / 64) as usize];
        for k in policy.inodes.keys() {
            let (word, bit) = gate_common::filter::slot(k, self.filter_mask);
            words[word as usize] |= bit;
        }
        let mut filter: Array<_, u64> = self.map("FILTER")?;
        for (i, w) in words.iter().enumerate().filter(|(_, w)| **w != 0) {
            filter
                .set(i as u32, w, 0)
                .map_err(|source| EngineError::Map {
                    map: "FILTER",
                    source,
                })?;
        }
        let mut inodes: HashMap<_, InodeKey, InodeRule> = self.map("INODES")?;
        for (k, v) in &policy.inodes {
            inodes.insert(k, v, 0).map_err(|source| EngineError::Map {
                map: "INODES",
                source,
            })?;
        }
        let mut net4: LpmTrie<_, [u8; 4], NetRule> = self.map("NET4")?;
        for ((prefix, addr), v) in &policy.net4 {
            net4.insert(&Key::new(*prefix, *addr), v, 0)
                .map_err(|source| EngineError::Map {
                    map: "NET4",
                    source,
                })?;
        }
        let mut net6: LpmTrie<_, [u8; 16], NetRule> = self.map("NET6")?;
        for ((prefix, addr), v) in &policy.net6 {
            net6.insert(&Key::new(*prefix, *addr), v, 0)
                .map_err(|source| EngineError::Map {
                    map: "NET6",
                    source,
                })?;
        }
        Ok(())
    }

    fn map<'a, T>(&'a mut self, name: &'static str) -> Result<T, EngineError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(EngineError::Missing(name))?;
        T::try_from(map).map_err(|source| EngineError::Map { map: name, source })
    }

    /// Adds one exact-file rule (used for the start-up self-test canary).
    pub fn add_inode(&mut self, key: InodeKey, rule: InodeRule) -> Result<(), EngineError> {
        let (word, bit) = gate_common::filter::slot(&key, self.filter_mask);
        let mut filter: Array<_, u64> = self.map("FILTER")?;
        let err = |source| EngineError::Map {
            map: "FILTER",
            source,
        };
        let old = filter.get(&word, 0).map_err(err)?;
        filter.set(word, old | bit, 0).map_err(err)?;
        let mut inodes: HashMap<_, InodeKey, InodeRule> = self.map("INODES")?;
        inodes
            .insert(key, rule, 0)
            .map_err(|source| EngineError::Map {
                map: "INODES",
                source,
            })
    }

    /// Starts confining the cgroup `(id, level)` and everything below it.
    pub fn set_config(&mut self, cfg: Config) -> Result<(), EngineError> {
        let mut config: Array<_, Config> = self.map("CONFIG")?;
        config.set(0, cfg, 0).map_err(|source| EngineError::Map {
            map: "CONFIG",
            source,
        })
    }

    /// Loads and attaches every program, pinning each link under `pin_dir` (a bpffs
    /// directory) so that enforcement stays in place if this process dies.
    pub fn attach(&mut self, pin_dir: &Path) -> Result<(), EngineError> {
        for (name, link) in attach_all(&mut self.ebpf, &self.kernel, &self.hooks)? {
            let path = pin_dir.join(name);
            let pinned = link.pin(&path).map_err(|e| EngineError::Pin {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            self.links.push(pinned);
        }
        Ok(())
    }

    /// The event ring buffer (can be taken once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, EngineError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(EngineError::Missing("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| EngineError::Map {
            map: "EVENTS",
            source,
        })
    }

    /// The per-CPU counters (can be taken once).
    pub fn take_counters(&mut self) -> Result<Counters, EngineError> {
        let map = self
            .ebpf
            .take_map("COUNTERS")
            .ok_or(EngineError::Missing("COUNTERS"))?;
        PerCpuArray::try_from(map)
            .map(Counters)
            .map_err(|source| EngineError::Map {
                map: "COUNTERS",
                source,
            })
    }

    /// Stops enforcing: unpins and detaches every link.
    pub fn detach(mut self) -> Result<(), std::io::Error> {
        for link in self.links.drain(..) {
            drop(link.unpin()?);
        }
        Ok(())
    }
}

/// Loads and attaches the programs of `ebpf` named in `hooks` (those that match this kernel's
/// hook signatures, `btf::programs_for`).
fn attach_all(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    hooks: &[(&'static str, &'static str)],
) -> Result<Vec<(&'static str, FdLink)>, EngineError> {
    let mut links = Vec::new();
    for &(name, hook) in hooks {
        let err = |source| EngineError::Program {
            program: name.to_string(),
            source,
        };
        let prog: &mut Lsm = ebpf
            .program_mut(name)
            .ok_or(EngineError::Missing("an LSM program"))?
            .try_into()
            .map_err(err)?;
        let p = std::time::Instant::now();
        prog.load(hook, btf).map_err(err)?;
        tracing::debug!(
            program = name,
            ms = p.elapsed().as_millis() as u64,
            insns = prog
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count()),
            xlated = prog.info().ok().and_then(|i| i.size_translated()),
            "verified"
        );
        let id = prog.attach().map_err(err)?;
        links.push((name, prog.take_link(id).map_err(err)?.into()));
    }
    Ok(links)
}

/// Empty programs on gate's hooks (the benchmarks' "any BPF LSM enforcer" floor); detached
/// when dropped.
pub struct NullEngine {
    _links: Vec<FdLink>,
    _ebpf: Ebpf,
}

impl NullEngine {
    pub fn attach() -> Result<Self, EngineError> {
        if NULL_OBJECT.is_empty() {
            return Err(EngineError::NoObject);
        }
        let hooks = btf::programs_for(&Btf::from_sys_fs()?)?;
        let kernel = kernel_btf()?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&kernel))
            .load(NULL_OBJECT)
            .map_err(EngineError::Load)?;
        let links = attach_all(&mut ebpf, &kernel, &hooks)?
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        Ok(NullEngine {
            _links: links,
            _ebpf: ebpf,
        })
    }
}

/// The kernel's per-CPU counters (`gate_common::counter::*`).
pub struct Counters(PerCpuArray<MapData, u64>);

impl Counters {
    /// Totals over all CPUs.
    pub fn read(&self) -> Result<[u64; counter::COUNT as usize], EngineError> {
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = self
                .0
                .get(&(i as u32), 0)
                .map_err(|source| EngineError::Map {
                    map: "COUNTERS",
                    source,
                })?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}
