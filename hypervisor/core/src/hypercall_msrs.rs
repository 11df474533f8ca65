//! The two synthetic MSRs that set a partition up for hypercalls (TLFS
//! "Hypercall Interface"): GUEST_OS_ID and HYPERCALL, one pair per partition,
//! the same rules for the root and for guests.
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use hv_abi::msr::{GUEST_OS_ID, HYPERCALL, HYPERCALL_ENABLE};

/// HYPERCALL bits 11:1 are reserved and read as zero.
const HYPERCALL_RESERVED: u64 = 0xFFE;

pub struct HypercallMsrs {
    guest_os_id: AtomicU64,
    hypercall: AtomicU64,
}

impl HypercallMsrs {
    pub const fn new() -> Self {
        HypercallMsrs {
            guest_os_id: AtomicU64::new(0),
            hypercall: AtomicU64::new(0),
        }
    }

    /// RDMSR of one of the two; `None` for any other MSR.
    pub fn read(&self, m: u32) -> Option<u64> {
        match m {
            GUEST_OS_ID => Some(self.guest_os_id.load(Relaxed)),
            HYPERCALL => Some(self.hypercall.load(Relaxed)),
            _ => None,
        }
    }

    /// WRMSR of one of the two (`None` for any other MSR); `Some(false)`
    /// means #GP. Enabling the hypercall page needs a guest OS id first and
    /// `install(gpa)` to put the hypercall code at the page's GPA. Clearing
    /// the guest OS id disables the page.
    pub fn write(&self, m: u32, v: u64, install: impl FnOnce(u64) -> bool) -> Option<bool> {
        match m {
            GUEST_OS_ID => {
                self.guest_os_id.store(v, Relaxed);
                if v == 0 {
                    self.hypercall.fetch_and(!HYPERCALL_ENABLE, Relaxed);
                }
                Some(true)
            }
            HYPERCALL => {
                let enable = v & HYPERCALL_ENABLE != 0;
                if enable && (self.guest_os_id.load(Relaxed) == 0 || !install(v & !0xFFF)) {
                    return Some(false);
                }
                self.hypercall.store(v & !HYPERCALL_RESERVED, Relaxed);
                Some(true)
            }
            _ => None,
        }
    }
}

impl Default for HypercallMsrs {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_needs_a_guest_os_id_and_a_place() {
        let m = HypercallMsrs::new();
        let page = 0x5000 | HYPERCALL_ENABLE;
        assert_eq!(
            m.write(HYPERCALL, page, |_| unreachable!("no guest OS id yet")),
            Some(false)
        );
        assert_eq!(m.write(GUEST_OS_ID, 0x8100, |_| unreachable!()), Some(true));
        assert_eq!(
            m.write(HYPERCALL, page, |_| false),
            Some(false),
            "not installed"
        );
        assert_eq!(m.read(HYPERCALL), Some(0));
        let mut at = 0;
        assert_eq!(
            m.write(HYPERCALL, page | 0xFFE, |gpa| {
                at = gpa;
                true
            }),
            Some(true)
        );
        assert_eq!(at, 0x5000);
        assert_eq!(m.read(HYPERCALL), Some(page), "reserved bits read as zero");
        assert_eq!(m.write(GUEST_OS_ID, 0, |_| unreachable!()), Some(true));
        assert_eq!(m.read(HYPERCALL), Some(0x5000), "disabled with the OS id");
        assert_eq!(m.read(0x4000_0002), None);
        assert_eq!(m.write(0x4000_0002, 1, |_| true), None);
    }
}
