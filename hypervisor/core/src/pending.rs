//! Interrupts sent to a VP that its LP has not yet moved into the VP's
//! virtual APIC: 256 vector bits and an NMI, set from any LP, taken by the
//! VP's own. One type for the root's VPs and guests' alike.
use crate::vapic::VirtualApic;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub struct PendingInterrupts {
    /// Set after a bit: the owner skips the words when nothing came.
    any: AtomicBool,
    vectors: [AtomicU64; 4],
    nmi: AtomicBool,
}

impl PendingInterrupts {
    pub const fn new() -> Self {
        PendingInterrupts {
            any: AtomicBool::new(false),
            vectors: [const { AtomicU64::new(0) }; 4],
            nmi: AtomicBool::new(false),
        }
    }

    /// Adds `vector`; whether it was not pending already.
    pub fn post(&self, vector: u8) -> bool {
        let bit = 1u64 << (vector % 64);
        let old = self.vectors[vector as usize / 64].fetch_or(bit, Ordering::AcqRel);
        self.any.store(true, Ordering::Release);
        old & bit == 0
    }

    /// Adds an NMI; whether none was pending already.
    pub fn post_nmi(&self) -> bool {
        let new = !self.nmi.swap(true, Ordering::AcqRel);
        self.any.store(true, Ordering::Release);
        new
    }

    /// Whether anything was posted and not yet taken (checked on every
    /// fast exit: inlined across the crate boundary).
    #[inline]
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// Moves everything posted into `vapic` (vectors requested, the NMI).
    /// Inline: nothing posted is the common case of every entry, a load.
    #[inline]
    pub fn take_into(&self, vapic: &mut VirtualApic) {
        if self.any.load(Ordering::Acquire) && self.any.swap(false, Ordering::AcqRel) {
            self.take_posted(vapic);
        }
    }

    #[inline(never)]
    fn take_posted(&self, vapic: &mut VirtualApic) {
        for (i, word) in self.vectors.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                vapic.request((i as u32 * 64 + bits.trailing_zeros()) as u8);
                bits &= bits - 1;
            }
        }
        if self.nmi.swap(false, Ordering::AcqRel) {
            vapic.request_nmi();
        }
    }
}

impl Default for PendingInterrupts {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> VirtualApic {
        let mut a = VirtualApic::new(0);
        a.write(0x80F, 0x1FF, 0);
        a
    }

    #[test]
    fn posts_are_taken_once() {
        let p = PendingInterrupts::new();
        assert!(!p.any());
        assert!(p.post(0x41));
        assert!(!p.post(0x41), "already pending");
        assert!(p.post(0xFE));
        assert!(p.post_nmi());
        assert!(!p.post_nmi());
        assert!(p.any());
        let mut a = enabled();
        p.take_into(&mut a);
        assert!(!p.any());
        assert!(a.nmi_pending());
        assert_eq!(a.deliverable(), Some(0xFE));
        a.accept(0xFE);
        let mut b = enabled();
        p.take_into(&mut b);
        assert_eq!(b.deliverable(), None, "taken once");
        assert!(!b.nmi_pending());
    }
}
