//! The LP's own timer, one-shot: armed for the moment the LP must look
//! again (a VP's slice or limit ends, a virtual timer falls due, the next
//! scheduling window), never on a fixed period. An idle LP so sleeps until
//! its next deadline, and a VP is not interrupted by ticks it has no use for.
//!
//! Pure: the LP loop (`lp.rs`) gives it the TSC and writes the counts it
//! returns into the local APIC's initial-count register.

/// The one-shot timer of one LP, in APIC timer counts and TSC ticks.
#[derive(Clone, Copy, Debug)]
pub struct OneShot {
    counts_per_ms: u64,
    tsc_per_ms: u64,
    /// When the armed timer fires (TSC), until the LP sees it fire.
    armed: Option<u64>,
}

impl OneShot {
    pub fn new(counts_per_ms: u64, tsc_per_ms: u64) -> Self {
        OneShot {
            counts_per_ms: counts_per_ms.max(1),
            tsc_per_ms: tsc_per_ms.max(1),
            armed: None,
        }
    }

    /// Before a VP's entry: the count to write so that the timer fires by
    /// `deadline`, or `None` when the armed timer fires by then already
    /// (the entry costs no APIC write then; an early interrupt is only an
    /// exit more).
    #[inline]
    pub fn arm_by(&mut self, deadline: u64, now: u64) -> Option<u32> {
        if self.armed.is_some_and(|a| a <= deadline) {
            return None;
        }
        Some(self.arm_at(deadline, now))
    }

    /// Before the LP sleeps: the count that makes the timer fire at
    /// `deadline` (rounded down to a whole count, so never later; at once
    /// for a deadline already passed), replacing whatever was armed.
    pub fn arm_at(&mut self, deadline: u64, now: u64) -> u32 {
        let ticks = deadline.saturating_sub(now) as u128;
        let count = (ticks * self.counts_per_ms as u128 / self.tsc_per_ms as u128)
            .clamp(1, u32::MAX as u128);
        let fires = now as u128 + count * self.tsc_per_ms as u128 / self.counts_per_ms as u128;
        // A deadline less than one count away gets the shortest count: it
        // fires as soon as it can, which counts as on time.
        let on_time = fires.min(deadline.max(now) as u128);
        self.armed = Some(on_time.min(u64::MAX as u128) as u64);
        count as u32
    }

    /// Its interrupt came: nothing is armed.
    pub fn fired(&mut self) {
        self.armed = None;
    }

    /// When the armed timer fires, if one is armed.
    pub fn armed(&self) -> Option<u64> {
        self.armed
    }
}

/// A down-counting timer's rate in counts per millisecond, from two
/// samples `(tsc, count)` taken `first` then `last` (at least 1; a
/// count that did not go down gives 1).
pub fn counts_per_ms(first: (u64, u64), last: (u64, u64), tsc_per_ms: u64) -> u64 {
    let counts = first.1.saturating_sub(last.1) as u128;
    let tsc = last.0.saturating_sub(first.0).max(1) as u128;
    (counts * tsc_per_ms as u128 / tsc).clamp(1, u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_comes_from_the_samples_own_times() {
        // 62 500 counts over 2.5 ms of TSC at 2 GHz (2 000 000 per ms).
        assert_eq!(
            counts_per_ms((1_000, 100_000), (5_001_000, 37_500), 2_000_000),
            25_000
        );
        // A count that did not go down, or no time between: never zero.
        assert_eq!(counts_per_ms((5, 10), (5, 10), 1_000), 1);
        assert_eq!(counts_per_ms((5, 10), (9, 20), 1_000), 1);
    }
    use proptest::prelude::*;

    /// 1 000 counts and 2 000 000 TSC ticks per ms: 2 000 ticks a count.
    fn timer() -> OneShot {
        OneShot::new(1_000, 2_000_000)
    }

    #[test]
    fn a_deadline_becomes_a_count_that_fires_no_later() {
        let mut t = timer();
        assert_eq!(t.arm_at(10_000 + 2_000_000, 10_000), 1_000);
        assert_eq!(t.armed(), Some(2_010_000));
        // Not a whole count: rounded down.
        assert_eq!(t.arm_at(10_000 + 3_999, 10_000), 1);
        assert_eq!(t.armed(), Some(12_000));
        // Less than a count away: as soon as it can.
        assert_eq!(t.arm_at(10_000 + 500, 10_000), 1);
        assert_eq!(t.armed(), Some(10_500));
    }

    #[test]
    fn a_passed_deadline_fires_at_once() {
        let mut t = timer();
        assert_eq!(t.arm_at(5, 1_000), 1);
        assert_eq!(t.arm_at(1_000, 1_000), 1);
    }

    #[test]
    fn a_far_deadline_is_cut_to_the_longest_count() {
        let mut t = timer();
        assert_eq!(t.arm_at(u64::MAX, 0), u32::MAX);
        assert_eq!(t.armed(), Some(u32::MAX as u64 * 2_000));
        // A deadline past what was armed re-arms only once it has fired.
        assert_eq!(t.arm_by(u64::MAX, 1), None);
        t.fired();
        assert!(t.arm_by(u64::MAX, 1).is_some());
    }

    #[test]
    fn an_entry_keeps_a_timer_that_fires_first() {
        let mut t = timer();
        assert_eq!(t.arm_by(1_000_000, 0), Some(500));
        assert_eq!(t.arm_by(3_000_000, 100), None, "the armed one is earlier");
        assert_eq!(t.arm_by(1_000_000, 100), None, "the same deadline");
        assert_eq!(
            t.arm_by(500_000, 100_000),
            Some(200),
            "an earlier one re-arms"
        );
        assert_eq!(t.armed(), Some(500_000));
    }

    #[test]
    fn nothing_is_kept_once_it_fired() {
        let mut t = timer();
        t.arm_by(1_000_000, 0);
        t.fired();
        assert_eq!(t.armed(), None);
        assert_eq!(t.arm_by(3_000_000, 1_000_000), Some(1_000));
    }

    proptest! {
        /// Whatever the rates and times: the timer fires no later than the
        /// deadline asked for (unless the longest count cannot reach it), and
        /// no more than one count early; it never gets a count of 0 (which
        /// would stop the APIC's timer).
        #[test]
        fn fires_on_time(
            counts in 1u64..100_000,
            tsc in 1u64..10_000_000,
            now in 0u64..1 << 62,
            ahead in prop_oneof![0u64..10_000, 0u64..1 << 40],
        ) {
            let mut t = OneShot::new(counts, tsc);
            let deadline = now + ahead;
            let count = t.arm_at(deadline, now);
            prop_assert!(count >= 1);
            let fires = t.armed().unwrap();
            let one_count = tsc.div_ceil(counts);
            if count < u32::MAX && count > 1 {
                prop_assert!(fires <= deadline, "late: {fires} > {deadline}");
                prop_assert!(deadline - fires <= one_count + 1, "early by {}", deadline - fires);
            }
            if count == 1 {
                prop_assert!(fires <= now + one_count);
                prop_assert!(fires <= deadline.max(now));
            }
            if count == u32::MAX {
                prop_assert!(fires <= deadline);
            }
            // An entry before the same deadline keeps it.
            prop_assert_eq!(t.arm_by(deadline, now), None);
        }
    }
}
