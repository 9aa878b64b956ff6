//! Network flows: an allowed connect or datagram whose flow (`gate_common::FlowKey`: the
//! agent, the process and its socket, the destination, the verdict and the epoch) was
//! recorded already is counted in `FLOWS` instead of sent as an event. Userspace reports the
//! counts in `flow` records, one epoch at a time (see `gate_common::FlowValue`).
use aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns;

use crate::{
    decide::Request,
    maps::{FLOW_EPOCH, FLOWS, WALK},
};

/// `BPF_NOEXIST`: insert only when the key is absent.
const NOEXIST: u64 = 1;

/// What `counted` found.
pub const SEND: u64 = 0;
pub const COUNTED: u64 = 1;
pub const FIRST: u64 = 2;

/// Counts an allowed network action of a flow: `COUNTED` when its flow was recorded already
/// in this epoch (nothing to send); `FIRST` when this action starts the flow (to be sent,
/// flagged `flag::FLOW`); `SEND` when it is to be sent unflagged (the map is full, or another
/// CPU started the same flow first).
#[inline(always)]
pub fn counted(req: &Request) -> u64 {
    let Some(s) = WALK.get_ptr_mut(0) else {
        return SEND;
    };
    // SAFETY: the per-CPU scratch is this program run's alone until it ends; the walk and the
    // verdict lookups that also use it are over.
    let k = unsafe { &mut (*s).flow };
    k.socket = req.vfsmnt;
    k.agent_id = req.agent_id;
    k.tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    k.rule = req.rule;
    k.hook = req.hook;
    k.decision = req.decision;
    k.flags = req.flags;
    k.epoch = 0;
    k.family = req.family;
    k.port = req.port;
    k._pad = [0; 3];
    k.addr = req.addr;
    count_in_scratch()
}

/// The map work of `counted`, on the key in the per-CPU scratch. A BPF subprogram of its own,
/// taking no arguments: its frame adds to the hook's, which is near the verifier's limit.
#[inline(never)]
fn count_in_scratch() -> u64 {
    let Some(s) = WALK.get_ptr_mut(0) else {
        return SEND;
    };
    // SAFETY: as in `counted`.
    let s = unsafe { &mut *s };
    // An epoch past 1: userspace cannot end epochs exactly, flows are off.
    match FLOW_EPOCH.get(0) {
        Some(e) if *e <= 1 => s.flow.epoch = *e as u8,
        _ => return SEND,
    }
    if let Some(v) = FLOWS.get_ptr_mut(&s.flow) {
        // SAFETY: `v` points into the flow's map value, which userspace takes out of the map
        // only after every program that could reach it (this one) has returned; programs
        // only add to `count`, atomically.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                &mut (*v).count,
                1,
            );
        }
        return COUNTED;
    }
    // Field by field, in place (no value on this frame).
    s.flow_value.count = 0;
    // SAFETY: plain helper call.
    s.flow_value.first_ns = unsafe { bpf_ktime_get_boot_ns() };
    if FLOWS.insert(&s.flow, &s.flow_value, NOEXIST).is_ok() {
        FIRST
    } else {
        SEND
    }
}

/// Removes the flow `counted` just started (its first action could not be sent): the next
/// action of the flow is sent again rather than counted under a flow with no record. A
/// subprogram taking no arguments, as `count_in_scratch`.
#[inline(never)]
pub fn forget() {
    if let Some(s) = WALK.get_ptr_mut(0) {
        // SAFETY: as in `counted`; the key is still the one it wrote.
        let _ = FLOWS.remove(unsafe { &(*s).flow });
    }
}
