//! The partition reference time (TLFS "Partition Reference Counter" and
//! "Partition Reference TSC Mechanism"): 100 ns units since the hypervisor
//! booted, read through TIME_REF_COUNT or computed by the guest itself from
//! the TSC with the scale and offset of its reference TSC page. Both use the
//! one formula here, so the two clocks agree to the tick.

/// `time = ((tsc * scale) >> 64) + offset`, in 100 ns units. The scale is
/// a 64.64 fraction below one, so a TSC of 10 MHz or less cannot be
/// described by a page (emulators can be that slow): then `page` is `None`,
/// the feature is not offered, and the counter divides instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefTime {
    pub scale: u64,
    pub offset: i64,
    tsc_hz: u64,
    boot_tsc: u64,
}

/// The slowest TSC a reference TSC page can describe, exclusive.
pub const MIN_PAGE_TSC_HZ: u64 = 10_000_000;

impl RefTime {
    /// For a TSC of `tsc_hz` that read `boot_tsc` when time began.
    pub fn new(tsc_hz: u64, boot_tsc: u64) -> Self {
        let hz = tsc_hz.max(MIN_PAGE_TSC_HZ + 1) as u128;
        let scale = ((10_000_000u128 << 64) / hz) as u64;
        let at_boot = (boot_tsc as u128 * scale as u128) >> 64;
        RefTime {
            scale,
            offset: (at_boot as i64).wrapping_neg(),
            tsc_hz: tsc_hz.max(1),
            boot_tsc,
        }
    }

    /// A reference TSC page can describe this TSC.
    pub fn page_usable(&self) -> bool {
        self.tsc_hz > MIN_PAGE_TSC_HZ
    }

    /// The reference time at TSC value `tsc`: the page's formula when a
    /// page can describe the TSC (the two then agree to the tick).
    pub fn at(&self, tsc: u64) -> u64 {
        if !self.page_usable() {
            let ticks = tsc.wrapping_sub(self.boot_tsc) as u128;
            return (ticks * 10_000_000 / self.tsc_hz as u128) as u64;
        }
        let scaled = ((tsc as u128 * self.scale as u128) >> 64) as u64;
        scaled.wrapping_add(self.offset as u64)
    }

    /// The first TSC value at which the reference time is `time` or later
    /// (within a tick): when a timer due at `time` may fire.
    pub fn tsc_at(&self, time: u64) -> u64 {
        let ticks = (time as u128 * self.tsc_hz as u128).div_ceil(10_000_000);
        let ticks = u64::try_from(ticks).unwrap_or(u64::MAX);
        // A margin of two TSC ticks covers the page formula's rounding.
        self.boot_tsc.saturating_add(ticks).saturating_add(2)
    }

    /// The first bytes of a reference TSC page: TscSequence (non-zero:
    /// valid), reserved, TscScale, TscOffset; the rest of the page is zero.
    pub fn page(&self, sequence: u32) -> Option<[u8; 24]> {
        if !self.page_usable() {
            return None;
        }
        let mut p = [0u8; 24];
        p[0..4].copy_from_slice(&sequence.to_le_bytes());
        p[8..16].copy_from_slice(&self.scale.to_le_bytes());
        p[16..24].copy_from_slice(&self.offset.to_le_bytes());
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_100ns_from_boot() {
        let t = RefTime::new(2_000_000_000, 5_000_000_000);
        assert!(t.at(5_000_000_000) <= 1);
        // One second later: 10^7 units, within rounding.
        let one = t.at(7_000_000_000);
        assert!((9_999_990..=10_000_001).contains(&one), "{one}");
    }

    #[test]
    fn tsc_at_is_when_the_time_has_come() {
        for hz in [5_000_000u64, 2_000_000_000, 2_603_000_000] {
            let t = RefTime::new(hz, 123_456_789);
            for time in [0u64, 1, 10_000, 10_000_000, 123_456_789_012] {
                let tsc = t.tsc_at(time);
                assert!(t.at(tsc) >= time, "{hz} Hz: {time}");
                // Two TSC ticks of margin, one of rounding.
                let slack = 1 + 3 * 10_000_000u64.div_ceil(hz);
                assert!(
                    t.at(tsc) <= time + slack,
                    "{hz} Hz: {time}: not later than needed"
                );
            }
        }
    }

    #[test]
    fn the_page_holds_what_the_formula_uses() {
        let t = RefTime::new(3_000_000_000, 42);
        let p = t.page(1).unwrap();
        assert_eq!(u32::from_le_bytes(p[0..4].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(p[8..16].try_into().unwrap()), t.scale);
        assert_eq!(i64::from_le_bytes(p[16..24].try_into().unwrap()), t.offset);
    }

    #[test]
    fn a_slow_tsc_has_no_page_but_a_counter() {
        let t = RefTime::new(9_000_000, 1000);
        assert_eq!(t.page(1), None);
        assert_eq!(t.at(1000 + 9_000_000), 10_000_000);
    }

    proptest::proptest! {
        #[test]
        fn monotonic(hz in 1_000_000u64..10_000_000_000, boot: u32, a: u32, b: u32) {
            let t = RefTime::new(hz, boot as u64);
            let (lo, hi) = (boot as u64 + a.min(b) as u64, boot as u64 + a.max(b) as u64);
            proptest::prop_assert!(t.at(lo) <= t.at(hi));
        }
    }
}
