//! Synthetic timers (TLFS "Synthetic Timers"): four per VP, each a
//! configuration MSR and a count MSR (STIMERn_CONFIG = 0x400000B0 + 2n,
//! STIMERn_COUNT = CONFIG + 1). The count is in 100 ns units of the
//! partition reference time: an absolute expiration for a one-shot timer,
//! the period for a periodic one. Writing a count of 0 disables the timer;
//! with AutoEnable a non-zero count enables it. At expiry the VP gets the
//! timer's APIC vector (direct mode) or a TimerExpired message in SINTx;
//! a one-shot timer is then disabled, a periodic one rearmed (missed
//! periods collapse into one expiry).

/// STIMER0_CONFIG; timer n is at `CONFIG0 + 2 * n`.
pub const CONFIG0: u32 = 0x4000_00B0;
pub const TIMERS: usize = 4;
/// The SynIC message type of an expiry (HvMessageTimerExpired).
pub const TIMER_EXPIRED: u32 = 0x8000_0010;

pub const ENABLE: u64 = 1 << 0;
pub const PERIODIC: u64 = 1 << 1;
pub const LAZY: u64 = 1 << 2;
pub const AUTO_ENABLE: u64 = 1 << 3;
pub const DIRECT_MODE: u64 = 1 << 12;
/// Bits a guest may set: enable, periodic, lazy, auto-enable, the vector
/// (11:4), direct mode, SINTx (19:16).
const WRITABLE: u64 = 0xF_1FFF;

/// A write the guest gets #GP for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadWrite;

/// What an expiry delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Direct mode: this vector in the VP's APIC.
    Vector(u8),
    /// A TimerExpired message in `sint`: payload `{u32 timer index, u32
    /// reserved, u64 expiration time, u64 delivery time}`.
    Message {
        sint: u8,
        index: u32,
        expiration: u64,
        delivery: u64,
    },
}

impl Expiry {
    /// The TimerExpired message's payload.
    pub fn payload(index: u32, expiration: u64, delivery: u64) -> [u8; 24] {
        let mut p = [0u8; 24];
        p[0..4].copy_from_slice(&index.to_le_bytes());
        p[8..16].copy_from_slice(&expiration.to_le_bytes());
        p[16..24].copy_from_slice(&delivery.to_le_bytes());
        p
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Timer {
    config: u64,
    count: u64,
    /// When it next expires (reference time), while armed.
    due: Option<u64>,
}

impl Timer {
    fn arm(&mut self, now: u64) {
        let enabled = self.config & ENABLE != 0 && self.count != 0;
        self.due = match (enabled, self.config & PERIODIC != 0) {
            (false, _) => None,
            (true, true) => Some(now.saturating_add(self.count)),
            (true, false) => Some(self.count),
        };
    }
}

/// A VP's four timers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynTimers {
    timers: [Timer; TIMERS],
}

impl SynTimers {
    /// Whether `msr` is a timer MSR.
    pub fn owns(msr: u32) -> bool {
        (CONFIG0..CONFIG0 + 2 * TIMERS as u32).contains(&msr)
    }

    fn at(msr: u32) -> Option<(usize, bool)> {
        Self::owns(msr).then(|| (((msr - CONFIG0) / 2) as usize, (msr - CONFIG0) % 2 == 1))
    }

    /// An RDMSR; `None` for an MSR that is not a timer's.
    pub fn read(&self, msr: u32) -> Option<u64> {
        let (i, count) = Self::at(msr)?;
        let t = &self.timers[i];
        Some(if count { t.count } else { t.config })
    }

    /// A WRMSR at reference time `now`; `Err` (#GP) for reserved bits, a
    /// direct-mode vector below 16, or an MSR that is not a timer's.
    pub fn write(&mut self, msr: u32, value: u64, now: u64) -> Result<(), BadWrite> {
        let (i, count) = Self::at(msr).ok_or(BadWrite)?;
        let t = &mut self.timers[i];
        if count {
            t.count = value;
            if value == 0 {
                t.config &= !ENABLE;
            } else if t.config & AUTO_ENABLE != 0 {
                t.config |= ENABLE;
            }
        } else {
            let vector = (value >> 4) & 0xFF;
            if value & !WRITABLE != 0 || (value & DIRECT_MODE != 0 && vector < 16) {
                return Err(BadWrite);
            }
            t.config = value;
        }
        t.arm(now);
        Ok(())
    }

    /// The earliest expiry (reference time), if a timer is armed.
    #[inline]
    pub fn next_due(&self) -> Option<u64> {
        self.timers.iter().filter_map(|t| t.due).min()
    }

    /// Expires the timers due at reference time `now`, calling `deliver`
    /// with each expiry.
    pub fn tick(&mut self, now: u64, mut deliver: impl FnMut(Expiry)) {
        for (i, t) in self.timers.iter_mut().enumerate() {
            let Some(due) = t.due.filter(|&d| d <= now) else {
                continue;
            };
            deliver(if t.config & DIRECT_MODE != 0 {
                Expiry::Vector((t.config >> 4) as u8)
            } else {
                Expiry::Message {
                    sint: ((t.config >> 16) & 0xF) as u8,
                    index: i as u32,
                    expiration: due,
                    delivery: now,
                }
            });
            if t.config & PERIODIC != 0 && t.count != 0 {
                let periods = (now - due) / t.count + 1;
                t.due = Some(due.saturating_add(periods.saturating_mul(t.count)));
            } else {
                t.config &= !ENABLE;
                t.due = None;
            }
        }
    }

    /// Every timer off, as at VP creation.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    const CONFIG1: u32 = CONFIG0 + 2;
    const COUNT0: u32 = CONFIG0 + 1;

    fn expiries(t: &mut SynTimers, now: u64) -> Vec<Expiry> {
        let mut v = Vec::new();
        t.tick(now, |e| v.push(e));
        v
    }

    #[test]
    fn one_shot_direct_mode_fires_once_at_its_absolute_time() {
        let mut t = SynTimers::default();
        t.write(CONFIG0, ENABLE | DIRECT_MODE | 0xED << 4, 100)
            .unwrap();
        assert_eq!(t.next_due(), None, "no count yet");
        t.write(COUNT0, 5000, 100).unwrap();
        assert_eq!(t.next_due(), Some(5000));
        assert!(expiries(&mut t, 4999).is_empty());
        assert_eq!(expiries(&mut t, 5003), [Expiry::Vector(0xED)]);
        assert!(expiries(&mut t, 9000).is_empty());
        assert_eq!(t.read(CONFIG0).unwrap() & ENABLE, 0, "one-shot: disabled");
    }

    #[test]
    fn auto_enable_rearms_on_each_count_as_linux_does() {
        let mut t = SynTimers::default();
        t.write(CONFIG0, AUTO_ENABLE | DIRECT_MODE | 0xED << 4, 0)
            .unwrap();
        for at in [1000u64, 2000, 3000] {
            t.write(COUNT0, at, at - 500).unwrap();
            assert_eq!(expiries(&mut t, at), [Expiry::Vector(0xED)]);
        }
        t.write(COUNT0, 0, 0).unwrap();
        assert_eq!(t.read(CONFIG0).unwrap() & ENABLE, 0, "count 0 disables");
    }

    #[test]
    fn periodic_message_mode_collapses_missed_periods() {
        let mut t = SynTimers::default();
        t.write(COUNT0 + 2, 100, 0).unwrap();
        t.write(CONFIG1, ENABLE | PERIODIC | 2 << 16, 1000).unwrap();
        assert_eq!(t.next_due(), Some(1100));
        assert_eq!(
            expiries(&mut t, 1100),
            [Expiry::Message {
                sint: 2,
                index: 1,
                expiration: 1100,
                delivery: 1100
            }]
        );
        // Five periods late: one expiry, next due after now.
        assert_eq!(expiries(&mut t, 1650).len(), 1);
        assert_eq!(t.next_due(), Some(1700));
    }

    #[test]
    fn reserved_bits_and_low_vectors_are_refused() {
        let mut t = SynTimers::default();
        assert!(t.write(CONFIG0, 1 << 20, 0).is_err());
        assert!(t.write(CONFIG0, ENABLE | DIRECT_MODE | 3 << 4, 0).is_err());
        assert!(t.write(CONFIG0 + 8, 0, 0).is_err());
        assert_eq!(t.read(CONFIG0 + 8), None);
        assert_eq!(t, SynTimers::default());
    }

    #[test]
    fn payload_layout() {
        let p = Expiry::payload(3, 0x1122, 0x3344);
        assert_eq!(p[0..4], 3u32.to_le_bytes());
        assert_eq!(p[4..8], [0; 4]);
        assert_eq!(p[8..16], 0x1122u64.to_le_bytes());
        assert_eq!(p[16..24], 0x3344u64.to_le_bytes());
    }
}
