//! Network flows the kernel counts (`FLOWS`, see `gate_common::FlowKey`): the first allowed
//! action of a flow is an event like any other (flagged `flow`); the kernel counts the later
//! ones. [`Flows::sweep`] turns the counts into `flow` audit records: every
//! [`REPORT_EVERY`] for flows whose count grew, and once more when a flow is retired (idle
//! for [`IDLE`], or its agent gone, or the run over). Retiring is an atomic lookup-and-delete
//! of the kernel's entry; a program that counted into an entry just retired sends its action
//! as an event instead, so every action is either counted here or recorded on its own.
use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use gate_common::{FlowKey, FlowValue};

/// How often flows whose count grew are reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);
/// A flow with no action for this long is retired (reported a last time and removed from the
/// kernel's map; its next action starts a new flow).
pub const IDLE: Duration = Duration::from_secs(30);

/// The actions of one flow to put in a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowReport {
    pub key: FlowKey,
    /// Actions since the flow's previous report.
    pub count: u64,
    /// Actions after the first, in all.
    pub total: u64,
    pub ended: bool,
}

impl FlowReport {
    /// The destination, as events show it.
    pub fn addr(&self) -> std::net::IpAddr {
        let a = self.key.addr;
        if self.key.family == 2 {
            std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()
        } else {
            std::net::Ipv6Addr::from(a).into()
        }
    }
}

/// The kernel's flow map and what was reported of each flow so far.
pub struct Flows {
    map: Map,
    reported: HashMap<FlowKey, u64>,
    last: Option<Instant>,
}

impl Flows {
    pub fn new(map: Map) -> Self {
        Flows {
            map,
            reported: HashMap::new(),
            last: None,
        }
    }

    /// The reports due now: none until [`REPORT_EVERY`] has passed since the last sweep,
    /// unless `force`. Flows of agents for which `gone` is true are retired whatever their
    /// age (`|_| true` at the end of a run: every flow). A map that cannot be read gives no
    /// report this time (the counts stay in the kernel for the next sweep).
    pub fn sweep(&mut self, force: bool, gone: impl Fn(u32) -> bool) -> Vec<FlowReport> {
        let now = Instant::now();
        if !force
            && self
                .last
                .is_some_and(|t| now.duration_since(t) < REPORT_EVERY)
        {
            return Vec::new();
        }
        self.last = Some(now);
        let boot_now = boot_ns();
        let entries: Vec<(FlowKey, FlowValue)> =
            match BpfHashMap::<&MapData, FlowKey, FlowValue>::try_from(&self.map) {
                Ok(m) => m.iter().filter_map(Result::ok).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "the kernel's flow map cannot be read; flow counts are reported later");
                    return Vec::new();
                }
            };
        let mut out = Vec::new();
        for (key, value) in entries {
            let idle = boot_now.saturating_sub(value.last_ns) >= IDLE.as_nanos() as u64;
            let (value, ended) = if idle || gone(key.agent_id) {
                match self.take(&key) {
                    Some(v) => (v, true),
                    // Taken already (another sweeper): nothing more to count here.
                    None => continue,
                }
            } else {
                (value, false)
            };
            let before = if ended {
                self.reported.remove(&key).unwrap_or(0)
            } else {
                self.reported.insert(key, value.count).unwrap_or(0)
            };
            let count = value.count.saturating_sub(before);
            if count > 0 {
                out.push(FlowReport {
                    key,
                    count,
                    total: value.count,
                    ended,
                });
            }
        }
        out
    }

    /// Removes a flow from the kernel's map and returns its last value, in one step
    /// (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`, which aya does not offer for hash maps).
    fn take(&self, key: &FlowKey) -> Option<FlowValue> {
        const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
        #[repr(C)]
        struct Attr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let Map::HashMap(data) = &self.map else {
            return None;
        };
        let mut value = FlowValue::default();
        let attr = Attr {
            map_fd: data.fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: key as *const FlowKey as u64,
            value: &mut value as *mut FlowValue as u64,
            flags: 0,
        };
        // SAFETY: `attr` names a live key and a value buffer of the map's value size, both
        // outliving the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_ELEM,
                &attr as *const Attr,
                std::mem::size_of::<Attr>(),
            )
        };
        (r == 0).then_some(value)
    }
}

/// `CLOCK_BOOTTIME` in ns: the kernel's `bpf_ktime_get_boot_ns`.
fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
