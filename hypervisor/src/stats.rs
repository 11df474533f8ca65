//! Per-logical-processor counters: exits by reason, world switches, time in
//! the hypervisor. Each LP writes only its own; anyone may read.
use crate::x86::cpu;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use hv_abi::{ExitReason, LpStats};

pub struct Lp {
    exits: [AtomicU64; ExitReason::COUNT],
    hypervisor_tsc: AtomicU64,
    started_tsc: AtomicU64,
}

impl Lp {
    pub const fn new() -> Self {
        Lp {
            exits: [const { AtomicU64::new(0) }; ExitReason::COUNT],
            hypervisor_tsc: AtomicU64::new(0),
            started_tsc: AtomicU64::new(0),
        }
    }

    pub fn start(&self, tsc: u64) {
        self.started_tsc.store(tsc, Relaxed);
    }

    /// One exit, and so one round trip of the world switch.
    pub fn count(&self, reason: ExitReason) {
        self.exits[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn add_hypervisor_time(&self, ticks: u64) {
        self.hypervisor_tsc.fetch_add(ticks, Relaxed);
    }
}

/// The counters of every LP that has started a VP, from `lps` in LP order.
pub fn snapshot<'a>(lps: impl Iterator<Item = &'a Lp>) -> Vec<LpStats> {
    let now = cpu::rdtsc();
    lps.take_while(|lp| lp.started_tsc.load(Relaxed) != 0)
        .map(|lp| {
            let mut s = LpStats::default();
            for (out, c) in s.exits.iter_mut().zip(lp.exits.iter()) {
                *out = c.load(Relaxed);
            }
            // Every exit ends one world switch round trip.
            s.world_switches = s.exits.iter().sum();
            s.hypervisor_tsc = lp.hypervisor_tsc.load(Relaxed);
            s.total_tsc = now.saturating_sub(lp.started_tsc.load(Relaxed));
            s
        })
        .collect()
}
