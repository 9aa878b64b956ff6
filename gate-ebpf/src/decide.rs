//! Verdicts: merging rule decisions, applying the default and the mode, and turning the
//! result into the hook's return value.
use crate::kernel::Offs;
use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_probe_read_kernel, generated::bpf_ktime_get_boot_ns,
    },
};
use gate_common::{
    AgentConfig, MAX_LEVELS, MODE_AUDIT, counter, decision, flag, rule, verdict_kind,
};

use crate::{
    event::{self, Object},
    maps::{AGENTS, HOST, VERDICTS, WALK, count},
};

/// `-EPERM` and the lowest errno, as read-only data: the compiler cannot fold them into
/// branch-free arithmetic (`-(cond as i32)`) whose result the verifier cannot bound, while
/// the verifier sees the constants. Kernels from 6.12 check that an LSM program returns a
/// value in [-4095, 0].
#[unsafe(no_mangle)]
static EPERM_RET: Global<i32> = Global::new(-1);
#[unsafe(no_mangle)]
static MIN_ERRNO_RET: Global<i32> = Global::new(-4095);

#[inline(always)]
pub fn eperm() -> i32 {
    EPERM_RET.load()
}

/// The previous program's verdict, passed on unchanged when it is a denial (an errno); any
/// other non-zero value is not a valid verdict and becomes a denial.
#[inline(always)]
pub fn pass_on(ret: i32) -> i32 {
    if ret < MIN_ERRNO_RET.load() || ret > 0 {
        eperm()
    } else {
        ret
    }
}

/// The evaluated decision for one action.
#[derive(Clone, Copy)]
pub struct Verdict {
    /// `decision::*` with possibly `decision::AUDIT`.
    pub decision: u8,
    pub rule: u16,
    pub flags: u8,
}

impl Verdict {
    #[inline(always)]
    pub fn none() -> Self {
        Self {
            decision: decision::NONE,
            rule: rule::DEFAULT,
            flags: 0,
        }
    }

    /// The fail-closed verdict for an internal error.
    #[inline(always)]
    pub fn internal(rule: u16, depth: bool) -> Self {
        count(if depth {
            counter::DEPTH_EXCEEDED
        } else {
            counter::INTERNAL_ERROR
        });
        Self {
            decision: decision::DENY,
            rule,
            flags: flag::INTERNAL_ERROR,
        }
    }

    /// Packs decision and rule into one word (and back), to carry across walk levels.
    #[inline(always)]
    pub fn pack(&self) -> u64 {
        self.decision as u64 | (self.rule as u64) << 8 | (self.flags as u64) << 24
    }

    #[inline(always)]
    pub fn unpack(p: u64) -> Self {
        Self {
            decision: p as u8,
            rule: (p >> 8) as u16,
            flags: (p >> 24) as u8,
        }
    }

    #[inline(always)]
    pub fn severity(&self) -> u8 {
        self.decision & decision::MASK
    }

    /// Adds one matching rule: the more severe decision wins; an audit request on an equally
    /// severe rule is kept.
    #[inline(always)]
    pub fn merge(&mut self, d: u8, r: u16) {
        let sev = d & decision::MASK;
        if sev == decision::NONE {
            return;
        }
        if sev > self.severity() {
            self.decision = d;
            self.rule = r;
        } else if sev == self.severity() {
            self.decision |= d & decision::AUDIT;
        }
    }

    /// Falls back to the policy default when no rule matched; in lockdown, denies every
    /// operation the agent's policy does not keep.
    #[inline(always)]
    pub fn or_default(mut self, a: &Agent, op: usize) -> Self {
        let cfg = &a.cfg;
        if self.severity() == decision::NONE && op < cfg.defaults.len() {
            self.decision = cfg.defaults[op];
            self.rule = rule::DEFAULT;
            if self.severity() == decision::NONE {
                self.decision = decision::DENY;
            }
        }
        if a.locked != 0 && !a.keeps(op) {
            count(counter::LOCKDOWN);
            self.decision = decision::DENY;
            self.rule = rule::LOCKDOWN;
            self.flags |= flag::LOCKDOWN;
        }
        self
    }
}

/// The agent a confined task belongs to. `cfg` points into `AGENTS`: userspace replaces an
/// entry (never writes into it) and the old one is freed only after the program run (RCU,
/// `BPF_F_NO_PREALLOC`), so one run sees one consistent entry.
#[derive(Clone, Copy)]
pub struct Agent {
    pub cfg: &'static AgentConfig,
    /// 1: the engine's owner missed its heartbeat (lockdown decisions apply).
    pub locked: u32,
    /// The agent's cgroup (its kernfs id) and its level in the hierarchy.
    pub cgroup_id: u64,
    pub level: u32,
}

impl Agent {
    /// Whether `op` is still decided by the policy in lockdown.
    #[inline(always)]
    pub fn keeps(&self, op: usize) -> bool {
        op < 8 && self.cfg.lockdown_keep & (1u8 << op) != 0
    }
}

/// The agent, if the current task is confined: it runs in an agent's root cgroup or below
/// one. For everyone else this is the whole cost: per level agents sit at (almost always
/// one), one helper call and one hash lookup.
#[inline(always)]
pub fn confined() -> Option<Agent> {
    let host = HOST.get(0)?;
    let n = host.level_count;
    for i in 0..MAX_LEVELS {
        if i as u32 >= n {
            return None;
        }
        // SAFETY: plain helper call; a level below the task's own gives 0, never a key.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(host.levels[i] as i32) };
        // SAFETY: entries are replaced, not written into, and freed after a grace period.
        if let Some(cfg) = unsafe { AGENTS.get(&id) } {
            let mut locked = 0;
            if host.lockdown_after_ns != 0 {
                // SAFETY: plain helper call.
                let now = unsafe { bpf_ktime_get_boot_ns() };
                if now > host.heartbeat_ns && now - host.heartbeat_ns > host.lockdown_after_ns {
                    locked = 1;
                }
            }
            return Some(Agent {
                cfg,
                locked,
                cgroup_id: id,
                level: host.levels[i],
            });
        }
    }
    None
}

/// Records the verdict as needed and returns the hook's return value.
///
/// Everything the rest needs is packed into one request and laundered (hidden from the
/// verifier) first, so that however the verdict was reached, the event code is verified as
/// one state rather than once per way in.
#[inline(always)]
pub fn finish(a: &Agent, o: &Offs, op: u8, hook: u8, v: Verdict, obj: &Object) -> i32 {
    count(counter::DECISIONS);
    // The fast exit: a plain allow with nothing to record or count (no audit request, no
    // quota, not an exec's or a connect's record) returns before any event preparation.
    if v.decision == decision::ALLOW
        && v.flags == 0
        && op != gate_common::op::CONNECT
        && !(op == gate_common::op::EXEC && hook == gate_common::hook::BPRM_CHECK)
    {
        return 0;
    }
    let cfg = &a.cfg;
    let mut req = Request {
        op,
        hook,
        decision: v.decision,
        flags: v.flags,
        rule: v.rule,
        family: 0,
        port: 0,
        mode: cfg.mode,
        audit_required: cfg.audit_required,
        is_file: event::kind::PLAIN,
        _pad: [0; 5],
        agent_id: cfg.agent_id,
        slot: cfg.slot,
        dentry: 0,
        vfsmnt: 0,
        addr: [0; 16],
    };
    match obj {
        Object::File(s) => {
            req.is_file = event::kind::FILE;
            req.dentry = s.dentry;
            req.vfsmnt = s.vfsmnt;
        }
        Object::FileAction {
            start,
            code,
            string,
        } => {
            req.is_file = if *string != 0 {
                event::kind::FILE_STRING
            } else {
                event::kind::FILE
            };
            req.dentry = start.dentry;
            req.vfsmnt = start.vfsmnt;
            req.port = *code;
            req.addr[..8].copy_from_slice(&string.to_ne_bytes());
        }
        Object::Named { code } => {
            req.port = *code;
        }
        Object::KernelString { code, ptr } => {
            req.is_file = event::kind::STRING;
            req.port = *code;
            req.dentry = *ptr;
        }
        Object::Net { family, port, addr } => {
            req.family = *family;
            req.port = *port;
            req.addr = *addr;
        }
        Object::Dest {
            family,
            port,
            addr,
            socket,
        } => {
            req.family = *family;
            req.port = *port;
            req.addr = *addr;
            req.is_file = event::kind::FLOW;
            req.vfsmnt = *socket;
        }
        Object::Task { tgid, code, comm } => {
            req.dentry = *tgid as u64;
            req.port = *code;
            req.addr = *comm;
        }
    }
    // SAFETY: reads this program's own stack.
    let Ok(mut req) = (unsafe { bpf_probe_read_kernel(&req as *const Request) }) else {
        return eperm();
    };
    if req.decision & decision::LIMITED != 0 && req.decision & decision::MASK == decision::ALLOW {
        let over = over_limit(&req);
        if over != decision::NONE {
            req.decision = over;
            req.flags |= flag::OVER_LIMIT;
        }
    }
    if req.decision & decision::MASK == decision::ASK {
        // A person's answer the daemon wrote into VERDICTS, while it lasts: an approval lets
        // the action through (and records it), a rejection keeps it denied without a new
        // request.
        let answer = answered(o, &req) & decision::MASK;
        if answer == decision::ALLOW {
            req.decision = decision::ALLOW | decision::AUDIT;
            req.flags |= flag::APPROVED;
        } else if answer == decision::DENY {
            req.flags |= flag::REJECTED;
        }
    }
    let sev = req.decision & decision::MASK;
    let denied = sev == decision::DENY || sev == decision::ASK;
    // Lockdown and gate's own state are enforced whatever the policy's mode.
    let lockdown = req.flags & flag::LOCKDOWN != 0 || req.rule == gate_common::rule::GATE_SELF;
    if denied && req.mode == MODE_AUDIT && !lockdown {
        req.flags |= flag::AUDIT_MODE;
    }
    let wanted = denied
        || req.decision & decision::AUDIT != 0
        || (req.op == gate_common::op::EXEC && req.hook == gate_common::hook::BPRM_CHECK)
        || req.op == gate_common::op::CONNECT;
    // An allowed network action of a flow already recorded is counted, not sent.
    if wanted && !denied && req.is_file == event::kind::FLOW {
        match crate::flow::counted(&req) {
            crate::flow::COUNTED => return 0,
            crate::flow::FIRST => req.flags |= gate_common::flag::FLOW,
            _ => {}
        }
    }
    if wanted && !event::emit(o, &req) {
        if req.flags & gate_common::flag::FLOW != 0 {
            crate::flow::forget();
        }
        if req.audit_required != 0 {
            // The action cannot be recorded and the policy requires a record: deny it.
            return eperm();
        }
    }
    if denied && (req.mode != MODE_AUDIT || lockdown) {
        eperm()
    } else {
        0
    }
}

/// The `VERDICTS` key of `kind` for the request's agent, rule and operation (object fields
/// zero), built in the per-CPU scratch: the programs' stack is full.
#[inline(always)]
fn verdict_key(req: &Request, kind: u8) -> Option<&'static mut gate_common::VerdictKey> {
    let s = WALK.get_ptr_mut(0)?;
    // SAFETY: the per-CPU scratch is this program run's alone until it ends; the walk that
    // also uses it is over.
    let k = unsafe { &mut (*s).verdict };
    k.agent_id = req.agent_id;
    k.rule = req.rule;
    k.op = req.op;
    k.kind = kind;
    k.dev = 0;
    k.port = 0;
    k.family = 0;
    k.obj = [0; 16];
    Some(k)
}

/// The decision of an unexpired verdict the daemon wrote for this agent and the request's
/// rule: for its object (a file by device and inode, an address and port) first, then for the
/// whole rule; `decision::NONE` when there is none. The expiry is checked here, against the
/// boot-time clock, so an approval ends on time whether or not the daemon runs.
#[inline(always)]
fn answered(o: &Offs, req: &Request) -> u8 {
    let Some(k) = verdict_key(req, verdict_kind::RULE) else {
        return decision::NONE;
    };
    let mut object = false;
    if req.is_file == event::kind::FILE || req.is_file == event::kind::FILE_STRING {
        if let Ok(Some(id)) = crate::walk::identity(o, req.dentry) {
            k.dev = id.dev;
            // SAFETY: `obj` is 16 bytes; the write is unaligned-safe.
            unsafe { core::ptr::write_unaligned(k.obj.as_mut_ptr().cast::<u64>(), id.ino) };
            object = true;
        }
    } else if req.family != 0 {
        k.family = req.family;
        k.port = req.port;
        k.obj = req.addr;
        object = true;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if object {
        k.kind = verdict_kind::OBJECT;
        // SAFETY: entries are replaced, not written into, and freed after a grace period.
        if let Some(v) = unsafe { VERDICTS.get(&*k) } {
            if now < v.expires_ns {
                return v.decision;
            }
        }
        k.kind = verdict_kind::RULE;
        k.dev = 0;
        k.port = 0;
        k.family = 0;
        k.obj = [0; 16];
    }
    // SAFETY: as above.
    match unsafe { VERDICTS.get(&*k) } {
        Some(v) if now < v.expires_ns => v.decision,
        _ => decision::NONE,
    }
}

/// Counts an allow of a rule with a quota, per agent and rule: `decision::NONE` while the
/// window's count is within the quota's terms, else the decision past it. Terms or counter
/// missing (the daemon writes both before the policy goes live): deny, fail closed. The count
/// is an atomic add; the window's restart is not, so at a window's boundary CPUs racing may
/// let one action each more through.
#[inline(always)]
fn over_limit(req: &Request) -> u8 {
    let Some(k) = verdict_key(req, verdict_kind::QUOTA_TERMS) else {
        return decision::DENY;
    };
    // SAFETY: entries are replaced, not written into, and freed after a grace period.
    let Some(terms) = (unsafe { VERDICTS.get(&*k) }) else {
        return decision::DENY;
    };
    let (window, max, over) = (terms.expires_ns, terms.source, terms.decision);
    k.kind = verdict_kind::QUOTA;
    let Some(c) = VERDICTS.get_ptr_mut(&*k) else {
        return decision::DENY;
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: `c` points into the counter's map value, which the kernel keeps alive for this
    // program run; only programs write into it.
    unsafe {
        if now >= (*c).expires_ns {
            (*c).expires_ns = now + window;
            (*c).source = 0;
        }
        // An atomic add (BPF_ATOMIC BPF_ADD, its result unused): the BPF target offers no
        // `fetch_add` on its atomic types.
        core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(
            &mut (*c).source,
            1,
        );
        if core::ptr::read_volatile(&(*c).source) > max {
            over
        } else {
            decision::NONE
        }
    }
}

/// What an event is made of, flattened for laundering.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Request {
    pub op: u8,
    pub hook: u8,
    pub decision: u8,
    pub flags: u8,
    pub rule: u16,
    pub family: u16,
    pub port: u16,
    pub mode: u8,
    pub audit_required: u8,
    pub is_file: u8,
    pub _pad: [u8; 5],
    pub agent_id: u32,
    pub slot: u32,
    pub dentry: u64,
    pub vfsmnt: u64,
    pub addr: [u8; 16],
}
