//! The hypervisor's access to a partition's memory: by copy, after checking
//! that the range is the partition's. The one place that turns a partition's
//! GPA into a pointer (the root's GPAs are SPAs, identity-mapped in the
//! hypervisor). Nothing here hands out a reference into partition memory: the
//! partition's own VPs may change it at any time.

use core::sync::atomic::{AtomicUsize, Ordering};

/// A partition's RAM: sorted, disjoint `[start, end)` ranges.
#[derive(Clone, Copy)]
pub struct PartitionMemory<'a> {
    ranges: &'a [(u64, u64)],
    /// The range that held the last lookup, tried first: the SynIC's slots
    /// and the hypercall pages of the root lie in one range, looked up
    /// several times per message.
    hint: Option<&'a AtomicUsize>,
}

/// The range is not (all) the partition's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotOwned;

impl<'a> PartitionMemory<'a> {
    pub fn new(ranges: &'a [(u64, u64)]) -> Self {
        PartitionMemory { ranges, hint: None }
    }

    /// As `new`, remembering in `hint` where the last lookup succeeded (any
    /// value is safe: it is only tried).
    pub fn with_hint(ranges: &'a [(u64, u64)], hint: &'a AtomicUsize) -> Self {
        PartitionMemory {
            ranges,
            hint: Some(hint),
        }
    }

    /// Whether `[gpa, gpa + len)` lies in one of the partition's ranges.
    pub fn owns(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        let holds = |i: usize| {
            self.ranges
                .get(i)
                .is_some_and(|&(s, e)| s <= gpa && end <= e)
        };
        if let Some(hint) = self.hint {
            if holds(hint.load(Ordering::Relaxed)) {
                return true;
            }
        }
        // Sorted and disjoint: only the last range starting at or below
        // `gpa` can hold it (the root's RAM is some 30 ranges).
        let after = self.ranges.partition_point(|&(s, _)| s <= gpa);
        let found = after > 0 && holds(after - 1);
        if let (true, Some(hint)) = (found, self.hint) {
            hint.store(after - 1, Ordering::Relaxed);
        }
        found
    }

    /// Copies `buf.len()` bytes from `gpa`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), NotOwned> {
        if !self.owns(gpa, buf.len() as u64) {
            return Err(NotOwned);
        }
        // SAFETY: as in `write`; the destination is hypervisor memory.
        unsafe { core::ptr::copy_nonoverlapping(gpa as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `bytes` to `gpa`.
    pub fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), NotOwned> {
        if !self.owns(gpa, bytes.len() as u64) {
            return Err(NotOwned);
        }
        // SAFETY: the range is the partition's RAM (checked), which the
        // hypervisor's identity map covers and never uses itself; no reference
        // into it exists (the source is hypervisor memory).
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), gpa as *mut u8, bytes.len()) };
        Ok(())
    }

    /// Sets `len` bytes at `gpa` to zero.
    pub fn zero(&self, gpa: u64, len: u64) -> Result<(), NotOwned> {
        if !self.owns(gpa, len) {
            return Err(NotOwned);
        }
        // SAFETY: as in `write`.
        unsafe { core::ptr::write_bytes(gpa as *mut u8, 0, len as usize) };
        Ok(())
    }

    /// The aligned u64 at `gpa` (page-table entries the hypervisor builds).
    pub fn read_u64(&self, gpa: u64) -> Result<u64, NotOwned> {
        if !gpa.is_multiple_of(8) || !self.owns(gpa, 8) {
            return Err(NotOwned);
        }
        // SAFETY: as in `write`; aligned, and read by value.
        Ok(unsafe { core::ptr::read_volatile(gpa as *const u64) })
    }

    pub fn write_u64(&self, gpa: u64, value: u64) -> Result<(), NotOwned> {
        if !gpa.is_multiple_of(8) || !self.owns(gpa, 8) {
            return Err(NotOwned);
        }
        // SAFETY: as in `write`; aligned.
        unsafe { core::ptr::write_volatile(gpa as *mut u64, value) };
        Ok(())
    }

    /// Atomically replaces the aligned u64 at `gpa` with `new` if it holds
    /// `current` (message slots the partition empties concurrently).
    /// `Err(Some(actual))` when it held something else.
    pub fn compare_exchange_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<(), Option<u64>> {
        if !gpa.is_multiple_of(8) || !self.owns(gpa, 8) {
            return Err(None);
        }
        // SAFETY: as in `write`; the address is aligned and the atomic is
        // used only for this one operation (the partition's own accesses are
        // its business: an atomic RMW is sound against them).
        let cell = unsafe { core::sync::atomic::AtomicU64::from_ptr(gpa as *mut u64) };
        cell.compare_exchange(
            current,
            new,
            core::sync::atomic::Ordering::AcqRel,
            core::sync::atomic::Ordering::Acquire,
        )
        .map(|_| ())
        .map_err(Some)
    }

    /// Atomically ORs `bits` into the aligned u64 at `gpa` (event flags the
    /// partition clears concurrently); the old value.
    pub fn fetch_or_u64(&self, gpa: u64, bits: u64) -> Result<u64, NotOwned> {
        if !gpa.is_multiple_of(8) || !self.owns(gpa, 8) {
            return Err(NotOwned);
        }
        // SAFETY: as in `compare_exchange_u64`.
        let cell = unsafe { core::sync::atomic::AtomicU64::from_ptr(gpa as *mut u64) };
        Ok(cell.fetch_or(bits, core::sync::atomic::Ordering::AcqRel))
    }
}
