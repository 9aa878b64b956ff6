//! Network flows the kernel counts (`FLOWS`, see `gate_common::FlowKey`): the first allowed
//! action of a flow in an epoch is an event like any other (flagged `flow`); the kernel counts
//! the later ones. [`Flows::sweep`] ends an epoch every [`REPORT_EVERY`] and turns its
//! counts into `flow` records: it switches the kernel to the other epoch (`FLOW_EPOCH`), waits
//! for an RCU grace period (every program that read the old epoch has returned: LSM programs
//! run inside an RCU read-side section), then takes the old epoch's flows out of the map.
//! Nothing counts into a flow once it is taken, so every allowed action is either in a
//! decision record or in one flow record, once.
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use gate_common::{FlowKey, FlowValue};

/// How often an epoch ends and its flows are reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// The counted actions of one flow in one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowReport {
    pub key: FlowKey,
    /// Actions after the flow's first in the epoch.
    pub count: u64,
}

impl FlowReport {
    /// The destination, as events show it.
    pub fn addr(&self) -> std::net::IpAddr {
        crate::events::ip_addr(self.key.family, &self.key.addr)
    }
}

/// The kernel's flow map and its epoch.
pub struct Flows {
    map: Map,
    epoch_map: Map,
    epoch: u64,
    last: Option<Instant>,
    /// Flows are off in the kernel (`OFF` in `FLOW_EPOCH`).
    off: bool,
}

/// A `FLOW_EPOCH` value that turns flows off.
const OFF: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("the kernel's flow maps: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error(
        "cannot wait for the kernel's programs to leave an epoch (membarrier: {0}); flow counts \
         would not be exact"
    )]
    Barrier(std::io::Error),
}

impl Flows {
    /// The flows and the epoch map (`FLOW_EPOCH`); the epoch in force is read from the kernel
    /// (an adopted engine may be in either). Where epochs cannot be ended exactly (no
    /// `membarrier`), flows are turned off in the kernel: every allowed network action is then
    /// an event of its own, as the warning says.
    pub fn new(map: Map, mut epoch_map: Map) -> Self {
        let epoch = Array::<&MapData, u64>::try_from(&epoch_map)
            .and_then(|a| a.get(&0, 0))
            .unwrap_or(0);
        let mut off = false;
        if let Err(e) = wait_for_programs() {
            tracing::warn!(
                error = %e,
                "membarrier(2) is not available: allowed network actions are recorded one by \
                 one instead of per flow"
            );
            off = Array::<&mut MapData, u64>::try_from(&mut epoch_map)
                .and_then(|mut a| a.set(0, OFF, 0))
                .is_ok();
        }
        Flows {
            map,
            epoch_map,
            epoch: epoch & 1,
            last: None,
            off,
        }
    }

    /// Ends the epoch and returns its flows' counts: not before [`REPORT_EVERY`] has passed
    /// since the last sweep, unless `now`. With `all`, the flows of both epochs are taken (at
    /// the end of a run, when nothing confined is left to count). An error leaves the counts in
    /// the kernel for a later sweep.
    pub fn sweep(&mut self, now: bool, all: bool) -> Result<Vec<FlowReport>, FlowError> {
        let t = Instant::now();
        if self.off
            || (!now
                && self
                    .last
                    .is_some_and(|l| t.duration_since(l) < REPORT_EVERY))
        {
            return Ok(Vec::new());
        }
        self.last = Some(t);
        let old = self.epoch;
        let next = old ^ 1;
        Array::<&mut MapData, u64>::try_from(&mut self.epoch_map)?.set(0, next, 0)?;
        self.epoch = next;
        wait_for_programs().map_err(FlowError::Barrier)?;
        let mut flows = BpfHashMap::<&mut MapData, FlowKey, FlowValue>::try_from(&mut self.map)?;
        let keys: Vec<FlowKey> = flows
            .keys()
            .filter_map(Result::ok)
            .filter(|k| all || u64::from(k.epoch) == old)
            .collect();
        let mut out = Vec::new();
        for key in keys {
            // No program counts into an old epoch's flow any more: read, then remove.
            let Ok(value) = flows.get(&key, 0) else {
                continue;
            };
            let _ = flows.remove(&key);
            if value.count > 0 {
                out.push(FlowReport {
                    key,
                    count: value.count,
                });
            }
        }
        Ok(out)
    }
}

/// Returns once every BPF program that was running has returned: `membarrier(2)`'s
/// `MEMBARRIER_CMD_GLOBAL` waits for an RCU grace period, and gate's programs run inside RCU
/// read-side sections.
fn wait_for_programs() -> std::io::Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: a system call without pointers.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
