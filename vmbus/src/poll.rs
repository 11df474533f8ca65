//! When a reader polls a busy channel instead of waiting for its signal.
//!
//! A reader that keeps its ring's interrupt mask set and looks at the ring
//! again and again spares the writer a signal (an exit, and for the host a
//! wake-up) per batch. That pays only while the writer runs at the same
//! time, on another processor: on one processor, or with a peer that is
//! not running, the spin only delays the peer. So the polling window
//! adapts, as halt polling does: after a polling period that caught
//! packets (they arrived while the reader looked, unsignalled) it doubles,
//! after one that caught none it halves, not below its base; after
//! [`MISSES_TO_CLOSE`] such periods in a row it closes (zero), and from
//! zero it is tried again, at its base, every [`RETRY_EVERY`] bursts. (A
//! peer that is descheduled now and then, as an emulator's threads are,
//! costs a few halvings, not the window.)
//!
//! The window counts looks at the ring, not time: a look costs what the
//! reader's loop costs, so the window scales with the processor's speed
//! (an emulated one's too), as the peer's turnaround does.

/// A window of zero is tried again at its base after this many bursts.
pub const RETRY_EVERY: u32 = 64;
/// Periods in a row that catch nothing close the window.
pub const MISSES_TO_CLOSE: u32 = 4;

/// The adaptive polling window of one channel's reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollWindow {
    base: u64,
    max: u64,
    window: u64,
    polling: bool,
    /// Empty looks since the last packet.
    empty_looks: u64,
    caught: bool,
    bursts_unpolled: u32,
    /// Periods in a row that caught nothing.
    misses: u32,
    /// Polling periods ended, and those that caught packets.
    pub periods: u64,
    pub caught_periods: u64,
}

impl PollWindow {
    /// A window starting at `base`, never above `max` (`max >= base`).
    pub const fn new(base: u64, max: u64) -> Self {
        Self {
            base,
            max: if max < base { base } else { max },
            window: base,
            polling: false,
            empty_looks: 0,
            caught: false,
            bursts_unpolled: 0,
            misses: 0,
            periods: 0,
            caught_periods: 0,
        }
    }

    /// Whether the reader polls now (its interrupt mask stays set).
    pub fn polling(&self) -> bool {
        self.polling
    }

    /// Whether the current period caught packets: the peer runs beside
    /// the reader, so polling pays.
    pub fn paying(&self) -> bool {
        self.polling && self.caught
    }

    /// How many empty looks the reader makes after the last packet.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// After one look at the ring that found `packets`: whether to poll
    /// from now on. A look that finds packets while not polling starts a
    /// period (if the window is open); a period ends after a window of
    /// empty looks, and sizes the next window.
    pub fn observe(&mut self, packets: usize) -> bool {
        if packets > 0 {
            if self.polling {
                self.caught = true;
            } else {
                if self.window == 0 {
                    self.bursts_unpolled += 1;
                    if self.bursts_unpolled >= RETRY_EVERY {
                        self.bursts_unpolled = 0;
                        self.window = self.base;
                    }
                }
                self.polling = self.window > 0;
                self.caught = false;
            }
            self.empty_looks = 0;
        } else if self.polling {
            self.empty_looks += 1;
            if self.empty_looks <= self.window {
                return true;
            }
            self.polling = false;
            self.periods += 1;
            self.caught_periods += u64::from(self.caught);
            self.misses = if self.caught { 0 } else { self.misses + 1 };
            self.window = if self.caught {
                self.window.saturating_mul(2).min(self.max)
            } else if self.misses >= MISSES_TO_CLOSE {
                0
            } else {
                (self.window / 2).max(self.base)
            };
        }
        self.polling
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst, then empty looks until the period ends; the looks made.
    fn burst_alone(w: &mut PollWindow) -> u64 {
        w.observe(32);
        let mut looks = 0;
        while w.polling() {
            looks += 1;
            w.observe(0);
        }
        looks
    }

    /// A burst, packets caught after `gap` empty looks, then silence.
    fn burst_caught(w: &mut PollWindow, gap: u64) {
        w.observe(32);
        for _ in 0..gap {
            w.observe(0);
        }
        w.observe(1);
        while w.polling() {
            w.observe(0);
        }
    }

    #[test]
    fn a_peer_that_keeps_sending_while_polled_keeps_it_polling_and_widens_the_window() {
        let mut w = PollWindow::new(32, 256);
        assert!(w.observe(32));
        // Packets keep arriving, a few empty looks apart: the period lasts.
        for _ in 0..1000 {
            for _ in 0..20 {
                assert!(w.observe(0));
            }
            assert!(w.observe(1));
        }
        // The stream stops: the period ends after a window of empty looks.
        for _ in 0..32 {
            assert!(w.observe(0));
        }
        assert!(!w.observe(0));
        assert_eq!(w.window(), 64);
        assert_eq!((w.periods, w.caught_periods), (1, 1));
        for _ in 0..10 {
            burst_caught(&mut w, 10);
        }
        assert_eq!(w.window(), 256);
    }

    #[test]
    fn on_one_processor_polling_fails_and_costs_one_base_window_per_sixteen_bursts() {
        // The peer cannot run while the reader spins: nothing is caught.
        let mut w = PollWindow::new(32, 256);
        for _ in 0..MISSES_TO_CLOSE {
            assert_eq!(burst_alone(&mut w), 33);
        }
        assert_eq!(w.window(), 0, "failed periods in a row close it");
        let looks: u64 = (0..RETRY_EVERY * 4).map(|_| burst_alone(&mut w)).sum();
        assert_eq!(
            looks,
            4 * 33,
            "one retry per {RETRY_EVERY} bursts, closed again at once"
        );
        assert_eq!(w.window(), 0);
        assert_eq!((w.periods, w.caught_periods), (8, 0));
    }

    #[test]
    fn a_failed_period_halves_a_wide_window() {
        let mut w = PollWindow::new(32, 256);
        for _ in 0..5 {
            burst_caught(&mut w, 1);
        }
        assert_eq!(w.window(), 256);
        burst_alone(&mut w);
        assert_eq!(w.window(), 128);
        burst_alone(&mut w);
        burst_alone(&mut w);
        assert_eq!(w.window(), 32);
        burst_alone(&mut w);
        assert_eq!(w.window(), 0, "the fourth miss in a row");
    }

    #[test]
    fn a_miss_between_catches_only_halves() {
        let mut w = PollWindow::new(32, 256);
        for _ in 0..20 {
            burst_caught(&mut w, 5);
            burst_caught(&mut w, 5);
            burst_alone(&mut w);
            assert!(w.window() >= 64, "window {}", w.window());
        }
    }

    #[test]
    fn a_zero_base_never_polls() {
        let mut z = PollWindow::new(0, 0);
        for _ in 0..100 {
            assert!(!z.observe(5));
        }
    }
}
