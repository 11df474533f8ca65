//! The guest scheduler's policy on one LP: which VP runs next, how long it
//! may run, and what a run costs it. Pure: the LP loop (`lp.rs`) gives it
//! the clock, each VP's controls and whether the VP can run.
//!
//! Fair share by weight (virtual runtime: time run × 100 / weight; the least
//! runs next), a reserve (a VP below its reserve in the current window runs
//! before any that is not), a limit (a VP that used its limit in the window
//! waits for the next). A VP that slept comes back at the floor, the highest
//! virtual runtime charged so far less one slice: no credit for sleeping.

/// A partition's CPU controls, as `vm cpu` sets them (percent of one LP;
/// weight relative to the others', at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controls {
    pub reserve: u64,
    pub limit: u64,
    pub weight: u64,
}

/// One VP's standing on its LP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub vruntime: u64,
    /// Time run in the current window.
    pub window_used: u64,
}

/// What the scheduler needs of a VP.
pub trait Candidate {
    fn account(&mut self) -> &mut Account;
    fn controls(&self) -> Controls;
    /// Whether it may run now (not suspended, not halted without an
    /// interrupt to take).
    fn runnable(&mut self, now: u64) -> bool;
}

pub struct Scheduler {
    /// The accounting window and the time slice, in clock ticks.
    window: u64,
    slice: u64,
    window_start: u64,
    /// The highest virtual runtime charged so far.
    floor: u64,
    /// The last pick skipped a runnable VP at its limit: it runs again in
    /// the next window (`next_window`).
    throttled: bool,
}

impl Scheduler {
    pub fn new(window: u64, slice: u64, now: u64) -> Self {
        Scheduler {
            window: window.max(1),
            slice,
            window_start: now,
            floor: 0,
            throttled: false,
        }
    }

    /// The VP to run next among `vps`, if any may: below its reserve first,
    /// then the least virtual runtime; those at their limit for the window
    /// or not runnable are skipped. Starts a new window when the last one
    /// is over.
    pub fn pick<C: Candidate>(&mut self, now: u64, vps: &mut [C]) -> Option<usize> {
        self.throttled = false;
        if vps.is_empty() {
            return None;
        }
        if now.saturating_sub(self.window_start) >= self.window {
            self.window_start = now;
            for v in vps.iter_mut() {
                // A run past the limit is paid back in the next window:
                // preemption comes a little after the limit is reached (the
                // exit's latency; the host timer's whole counts), and the
                // limit must still hold on average.
                let limit = self.share(v.controls().limit);
                let a = v.account();
                a.window_used = a.window_used.saturating_sub(limit);
            }
        }
        let low = self.floor.saturating_sub(self.slice);
        let mut best: Option<(bool, u64, usize)> = None;
        for (i, v) in vps.iter_mut().enumerate() {
            if !v.runnable(now) {
                continue;
            }
            let c = v.controls();
            let a = v.account();
            if a.window_used >= self.share(c.limit) {
                self.throttled = true;
                continue;
            }
            a.vruntime = a.vruntime.max(low);
            let starved = a.window_used < self.share(c.reserve);
            best = match best {
                Some((true, _, _)) if !starved => best,
                Some((bs, bv, _)) if bs == starved && bv <= a.vruntime => best,
                _ => Some((starved, a.vruntime, i)),
            };
        }
        best.map(|(_, _, i)| i)
    }

    /// When the LP must pick again although nothing wakes a VP: the next
    /// window, if the last pick held back a runnable VP at its limit.
    pub fn next_window(&self) -> Option<u64> {
        self.throttled
            .then(|| self.window_start.saturating_add(self.window))
    }

    /// How long a VP with `controls` may run from now before it reaches its
    /// limit for the window (`None`: no limit).
    pub fn allowance(&self, account: &Account, controls: Controls) -> Option<u64> {
        (controls.limit < 100).then(|| {
            self.share(controls.limit)
                .saturating_sub(account.window_used)
        })
    }

    /// Charges a run of `ran` ticks to a VP.
    pub fn charge(&mut self, account: &mut Account, controls: Controls, ran: u64) {
        account.vruntime += ran * 100 / controls.weight.max(1);
        account.window_used += ran;
        self.floor = self.floor.max(account.vruntime);
    }

    /// `percent` of the window.
    fn share(&self, percent: u64) -> u64 {
        self.window.saturating_mul(percent) / 100
    }
}

/// The LP a new guest VP is placed on, among `lps`, given each LP's guest
/// VPs: the one with the fewest; equal counts spread a VM's VPs by their
/// index (VP n of the first VM on LP n).
pub fn place_vp(lps: u32, guest_vps: impl Fn(u32) -> u32, index: u32) -> u32 {
    let lps = lps.max(1);
    (0..lps)
        .min_by_key(|&l| (guest_vps(l), (l + index) % lps))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    struct Vp {
        account: Account,
        controls: Controls,
        awake: bool,
    }

    impl Candidate for Vp {
        fn account(&mut self) -> &mut Account {
            &mut self.account
        }
        fn controls(&self) -> Controls {
            self.controls
        }
        fn runnable(&mut self, _: u64) -> bool {
            self.awake
        }
    }

    fn vp(reserve: u64, limit: u64, weight: u64) -> Vp {
        Vp {
            account: Account::default(),
            controls: Controls {
                reserve,
                limit,
                weight,
            },
            awake: true,
        }
    }

    const WINDOW: u64 = 100_000;
    const SLICE: u64 = 1_000;

    /// Runs the LP for `windows` windows in slices (cut short at a VP's
    /// limit, as the LP loop does); each VP's share of the time.
    fn simulate(vps: &mut [Vp], windows: u64) -> Vec<f64> {
        simulate_with(vps, windows, None)
    }

    /// As `simulate`; with `tick`, a run lasts a whole tick whatever the
    /// allowance (SVM: no preemption timer, the host's periodic tick).
    fn simulate_with(vps: &mut [Vp], windows: u64, tick: Option<u64>) -> Vec<f64> {
        let mut s = Scheduler::new(WINDOW, SLICE, 0);
        let mut ran = std::vec![0u64; vps.len()];
        let mut now = 0;
        while now < windows * WINDOW {
            match s.pick(now, vps) {
                Some(i) => {
                    let allowed = s.allowance(&vps[i].account, vps[i].controls);
                    let cut = allowed.map_or(SLICE, |a| a.min(SLICE)).max(1);
                    let t = tick.unwrap_or(cut);
                    let c = vps[i].controls;
                    s.charge(&mut vps[i].account, c, t);
                    ran[i] += t;
                    now += t;
                }
                // Idle: the LP sleeps until the next window if a VP waits
                // for it (nothing else wakes these VPs).
                None => match s.next_window() {
                    Some(w) => {
                        assert!(w > now, "the window that frees a VP is ahead");
                        now = w;
                    }
                    None => now += SLICE,
                },
            }
        }
        ran.iter().map(|&r| r as f64 / now as f64).collect()
    }

    #[test]
    fn weights_share_the_lp() {
        let share = simulate(&mut [vp(0, 100, 100), vp(0, 100, 300)], 20);
        assert!((share[0] - 0.25).abs() < 0.02, "{share:?}");
        assert!((share[1] - 0.75).abs() < 0.02, "{share:?}");
    }

    #[test]
    fn a_reserve_is_honoured_against_heavier_weights() {
        let share = simulate(&mut [vp(40, 100, 1), vp(0, 100, 1000)], 20);
        assert!(share[0] >= 0.39, "{share:?}");
    }

    #[test]
    fn a_limit_holds_even_when_the_lp_is_otherwise_idle() {
        let share = simulate(&mut [vp(0, 5, 100)], 20);
        assert!(share[0] <= 0.051 && share[0] >= 0.049, "{share:?}");
    }

    #[test]
    fn a_limit_holds_on_average_when_runs_end_only_at_a_tick() {
        // Runs of 3% of the window: 20% is never a whole number of them.
        let share = simulate_with(&mut [vp(0, 20, 100), vp(0, 100, 100)], 50, Some(3_000));
        assert!(share[0] <= 0.202, "{share:?}");
        assert!(share[0] >= 0.19, "{share:?}");
    }

    #[test]
    fn a_sleeper_gets_no_credit_for_sleeping() {
        let mut s = Scheduler::new(WINDOW, SLICE, 0);
        let mut vps = [vp(0, 100, 100), vp(0, 100, 100)];
        vps[1].awake = false;
        for t in 0..50 {
            assert_eq!(s.pick(t * SLICE, &mut vps), Some(0));
            let c = vps[0].controls;
            s.charge(&mut vps[0].account, c, SLICE);
        }
        vps[1].awake = true;
        s.pick(50 * SLICE, &mut vps);
        assert_eq!(
            vps[1].account.vruntime,
            vps[0].account.vruntime - SLICE,
            "raised to the floor less a slice"
        );
    }

    #[test]
    fn a_throttled_vp_names_the_window_that_frees_it() {
        let mut s = Scheduler::new(WINDOW, SLICE, 0);
        let mut vps = [vp(0, 10, 100)];
        assert_eq!(s.pick(0, &mut vps), Some(0));
        assert_eq!(s.next_window(), None, "it runs: nothing to wait for");
        let c = vps[0].controls;
        s.charge(&mut vps[0].account, c, WINDOW / 10);
        assert_eq!(s.pick(WINDOW / 10, &mut vps), None, "at its limit");
        assert_eq!(s.next_window(), Some(WINDOW));
        assert_eq!(s.pick(WINDOW, &mut vps), Some(0), "free in the next window");
        vps[0].awake = false;
        assert_eq!(s.pick(WINDOW + 1, &mut vps), None);
        assert_eq!(
            s.next_window(),
            None,
            "asleep: its wake-up is not the scheduler's"
        );
    }

    proptest! {
        /// Whatever the controls (reserves adding up to at most 100%): no VP
        /// runs past its limit (by more than a tick of rounding), every VP
        /// gets its reserve when it can use it, and the LP never idles
        /// while a VP below its limit is runnable.
        #[test]
        fn reserves_and_limits_hold(
            controls in prop::collection::vec((0u64..=50, 1u64..=100, 1u64..=1000), 1..5),
        ) {
            let total: u64 = controls.iter().map(|c| c.0).sum();
            prop_assume!(total <= 100);
            let mut vps: Vec<Vp> = controls
                .iter()
                .map(|&(r, l, w)| vp(r.min(l), l, w))
                .collect();
            let share = simulate(&mut vps, 10);
            for (v, s) in vps.iter().zip(&share) {
                prop_assert!(*s <= v.controls.limit as f64 / 100.0 + 0.001, "{share:?}");
                prop_assert!(*s >= v.controls.reserve as f64 / 100.0 - 0.011, "{share:?}");
            }
            let limits: u64 = vps.iter().map(|v| v.controls.limit).sum();
            let used: f64 = share.iter().sum();
            prop_assert!(used >= (limits.min(100) as f64 / 100.0) - 0.011, "idle while work waits: {share:?}");
        }
    }

    /// Places `vps` VPs of one VM on `lps` empty LPs.
    fn place_all(lps: u32, vps: u32) -> Vec<u32> {
        let mut load = vec![0u32; lps as usize];
        (0..vps)
            .map(|i| {
                let lp = place_vp(lps, |l| load[l as usize], i);
                load[lp as usize] += 1;
                lp
            })
            .collect()
    }

    #[test]
    fn guest_vps_go_to_the_lp_with_the_fewest() {
        assert_eq!(place_all(1, 3), [0, 0, 0]);
        assert_eq!(place_all(2, 1), [0]);
        assert_eq!(place_all(2, 4), [0, 1, 0, 1]);
        assert_eq!(place_all(4, 4), [0, 3, 2, 1], "one each");
        // A second VM goes where the first is not.
        let load = [1u32, 0];
        assert_eq!(place_vp(2, |l| load[l as usize], 0), 1);
        assert_eq!(place_vp(0, |_| 0, 0), 0, "no LP count: LP 0");
    }
}
