//! What the hypervisor keeps for each logical processor that other LPs read
//! or write, in one structure per LP. What only the LP itself uses lives on
//! its stack (`lp::run`) or in `percpu`. Two per-LP things live beside their
//! own types instead, sized by `MAX_LPS` too: the root VP's SynIC
//! (`synic.rs`) and the inbox of guest VPs placed on the LP (`partition.rs`).
use crate::stats;
use crate::x86::cpu;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use hypervisor_core::pending::PendingInterrupts;

/// LPs the hypervisor runs on; more are left offline.
pub const MAX_LPS: usize = 64;

pub struct LpState {
    /// Its local APIC ID, for the kicks other LPs send it (`smp::kick`).
    pub apic_id: AtomicU32,
    /// Exits, world switches, time in the hypervisor (`stats`).
    pub stats: stats::Lp,
    /// Interrupts for the root VP that runs here (root VP n on LP n).
    pub root_pending: PendingInterrupts,
    /// The root VP's busy time, to charge its service to guests.
    pub root_clock: RootClock,
    /// How many guest VPs live here (for placing new ones).
    pub guest_vps: AtomicU32,
    /// How many guest VPs wait in this LP's inbox (read without its lock).
    pub inbox_count: AtomicU32,
    /// A VP here was deleted or its context asked for: the LP looks at its
    /// VPs (set after the VP's own flag; one load per loop otherwise).
    pub chores: AtomicBool,
    /// Its host timer interrupted (set by the interrupt handler, taken by
    /// the LP loop: the one-shot timer is no longer armed).
    pub timer_fired: AtomicBool,
}

impl LpState {
    /// Something for `chores`: the LP sees it at its next look.
    pub fn add_chore(&self) {
        self.chores.store(true, Ordering::Release);
    }
}

static LPS: [LpState; MAX_LPS] = [const {
    LpState {
        apic_id: AtomicU32::new(0),
        stats: stats::Lp::new(),
        root_pending: PendingInterrupts::new(),
        root_clock: RootClock::new(),
        guest_vps: AtomicU32::new(0),
        inbox_count: AtomicU32::new(0),
        chores: AtomicBool::new(false),
        timer_fired: AtomicBool::new(false),
    }
}; MAX_LPS];

/// LP `lp`'s state (an index past `MAX_LPS` folds into the table).
pub fn get(lp: u32) -> &'static LpState {
    &LPS[lp as usize % MAX_LPS]
}

/// Every LP's state, in LP order.
pub fn all() -> impl Iterator<Item = &'static LpState> {
    LPS.iter()
}

/// The root VP's busy time on its LP (its guest mode and its exits), so the
/// root's time serving a guest's intercepts can be charged to that guest.
pub struct RootClock {
    /// TSC ticks the root VP ran, up to its last exit's end.
    busy: AtomicU64,
    /// When its current run began.
    entered: AtomicU64,
    /// `busy` when it last resumed a guest VP.
    mark: AtomicU64,
}

impl RootClock {
    const fn new() -> Self {
        RootClock {
            busy: AtomicU64::new(0),
            entered: AtomicU64::new(0),
            mark: AtomicU64::new(0),
        }
    }

    /// The root VP's run began at `tsc`.
    pub fn enter(&self, tsc: u64) {
        self.entered.store(tsc, Ordering::Relaxed);
    }

    /// The root VP's run (from `enter`) and its exit's handling took `ticks`.
    pub fn add_busy(&self, ticks: u64) {
        self.busy.fetch_add(ticks, Ordering::Relaxed);
    }
}

/// Called by a root VP (on its own LP) as it resumes a guest VP whose
/// intercept was posted at `posted`: the root's busy time since it last
/// resumed one, at most the time since `posted`, served this VP.
#[inline]
pub fn root_service_since(posted: u64) -> u64 {
    let c = &get(crate::percpu::index()).root_clock;
    let now = cpu::rdtsc();
    let busy =
        c.busy.load(Ordering::Relaxed) + now.saturating_sub(c.entered.load(Ordering::Relaxed));
    let since = busy.saturating_sub(c.mark.swap(busy, Ordering::Relaxed));
    since.min(now.saturating_sub(posted))
}
