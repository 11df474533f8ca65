//! The MSRs a partition touched that the hypervisor answered with #GP: the
//! first few distinct ones are kept with a count, for the root to report
//! once per VM (`vm show`), since a guest kernel warns only once itself.
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub const KEPT: usize = 16;

/// One entry: the MSR in bits 31:0, bit 32 set for a write, the count of
/// such accesses above bit 33. Zero: unused.
pub struct GpMsrs {
    entries: [AtomicU64; KEPT],
}

impl GpMsrs {
    pub const fn new() -> Self {
        GpMsrs {
            entries: [const { AtomicU64::new(0) }; KEPT],
        }
    }

    /// Counts an access to `msr`; `true` the first time it is seen.
    pub fn record(&self, msr: u32, write: bool) -> bool {
        let key = msr as u64 | (write as u64) << 32;
        for e in &self.entries {
            let cur = e.load(Relaxed);
            if cur != 0 && cur & 0x1_FFFF_FFFF == key {
                e.fetch_add(1 << 33, Relaxed);
                return false;
            }
            if cur == 0
                && e.compare_exchange(0, key | 1 << 33, Relaxed, Relaxed)
                    .is_ok()
            {
                return true;
            }
        }
        false
    }

    /// Entry `i` as `(msr, write, count)`.
    pub fn get(&self, i: usize) -> Option<(u32, bool, u64)> {
        let v = self.entries.get(i)?.load(Relaxed);
        (v != 0).then_some((v as u32, v & 1 << 32 != 0, v >> 33))
    }

    /// The raw entry (what GetPartitionProperty returns), 0 if unused.
    pub fn raw(&self, i: usize) -> u64 {
        self.entries.get(i).map_or(0, |e| e.load(Relaxed))
    }

    pub fn clear(&self) {
        for e in &self.entries {
            e.store(0, Relaxed);
        }
    }
}

impl Default for GpMsrs {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_once_and_counted() {
        let r = GpMsrs::new();
        assert!(r.record(0xC001_0000, false));
        assert!(!r.record(0xC001_0000, false));
        assert!(r.record(0xC001_0000, true), "a write is its own entry");
        assert_eq!(r.get(0), Some((0xC001_0000, false, 2)));
        assert_eq!(r.get(1), Some((0xC001_0000, true, 1)));
        assert_eq!(r.get(2), None);
        for m in 0..100 {
            r.record(m, false);
        }
        assert!(r.get(KEPT - 1).is_some());
        assert_eq!(r.get(KEPT), None);
        r.clear();
        assert_eq!(r.get(0), None);
    }
}
