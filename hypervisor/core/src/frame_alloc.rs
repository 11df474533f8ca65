//! The physical frame allocator: 4 KiB frames from the memory the firmware
//! calls usable, minus everything reserved.
//!
//! Free memory is a sorted list of disjoint page ranges. The lowest address is
//! handed out first, so the structures made early in boot (page tables the AP
//! trampoline loads with a 32-bit CR3 write, the trampoline page itself) land
//! low. A page is usable only when a usable region names it and no other region
//! overlaps it: firmware maps do overlap, and the safe reading wins.

use crate::bootinfo::{MemoryRegion, RegionKind};

pub const PAGE_SIZE: u64 = 4096;
const MAX_RANGES: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    start: u64,
    end: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FreeError {
    Misaligned(u64),
    /// The frame is already free: a double free, refused.
    NotAllocated(u64),
    /// The free list is full and the frame borders no free range.
    ListFull(u64),
}

pub struct FrameAllocator {
    free: [Range; MAX_RANGES],
    count: usize,
    /// Pages lost because the free list was full when a reservation split a range.
    pub pages_lost: u64,
}

impl Default for FrameAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameAllocator {
    pub const fn new() -> Self {
        Self {
            free: [Range { start: 0, end: 0 }; MAX_RANGES],
            count: 0,
            pages_lost: 0,
        }
    }

    /// Builds the allocator from a memory map: usable regions, minus every
    /// non-usable region that overlaps them.
    pub fn from_memory_map(regions: &[MemoryRegion]) -> Self {
        let mut fa = Self::new();
        for r in regions.iter().filter(|r| r.kind == RegionKind::Usable) {
            fa.add(r.start, r.end);
        }
        for r in regions.iter().filter(|r| r.kind != RegionKind::Usable) {
            fa.reserve(r.start, r.end);
        }
        fa
    }

    fn ranges(&self) -> &[Range] {
        &self.free[..self.count]
    }

    /// Adds `[start, end)` shrunk to whole pages.
    pub fn add(&mut self, start: u64, end: u64) {
        let start = start.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        let end = end & !(PAGE_SIZE - 1);
        if end > start {
            self.insert(Range { start, end });
        }
    }

    /// Removes `[start, end)` grown to whole pages from the free set: they are
    /// not handed out (until freed; pages already handed out are unaffected).
    pub fn reserve(&mut self, start: u64, end: u64) {
        let start = start & !(PAGE_SIZE - 1);
        let end = end.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        if end <= start {
            return;
        }
        let mut i = 0;
        while i < self.count {
            let r = self.free[i];
            if r.end <= start || r.start >= end {
                i += 1;
                continue;
            }
            let left = Range {
                start: r.start,
                end: start.max(r.start),
            };
            let right = Range {
                start: end.min(r.end),
                end: r.end,
            };
            self.remove_at(i);
            // Insert what remains, in address order, at `i`; skip past it.
            for part in [left, right] {
                if part.end > part.start {
                    if self.count == MAX_RANGES {
                        self.pages_lost += (part.end - part.start) / PAGE_SIZE;
                    } else {
                        self.insert_at(i, part);
                        i += 1;
                    }
                }
            }
        }
    }

    /// Pages currently free.
    pub fn free_pages(&self) -> u64 {
        self.ranges()
            .iter()
            .map(|r| (r.end - r.start) / PAGE_SIZE)
            .sum()
    }

    /// The lowest free frame.
    pub fn alloc(&mut self) -> Option<u64> {
        self.alloc_contiguous(1, 1, u64::MAX)
    }

    /// `pages` contiguous frames whose first address is a multiple of
    /// `align_pages` pages and whose last byte lies below `below`.
    pub fn alloc_contiguous(&mut self, pages: u64, align_pages: u64, below: u64) -> Option<u64> {
        if pages == 0 || align_pages == 0 || !align_pages.is_power_of_two() {
            return None;
        }
        let size = pages.checked_mul(PAGE_SIZE)?;
        let align = align_pages.checked_mul(PAGE_SIZE)?;
        for i in 0..self.count {
            let r = self.free[i];
            let start = r.start.checked_add(align - 1)? & !(align - 1);
            let Some(end) = start.checked_add(size) else {
                continue;
            };
            if end <= r.end && end <= below {
                self.reserve(start, end);
                return Some(start);
            }
        }
        None
    }

    /// Removes free memory from the top down until only `keep_pages` remain,
    /// and returns what was removed (sorted): the hypervisor hands it on.
    pub fn take_all_but(&mut self, keep_pages: u64, out: &mut dyn FnMut(u64, u64)) {
        let mut excess = self.free_pages().saturating_sub(keep_pages);
        let mut taken = [Range { start: 0, end: 0 }; MAX_RANGES];
        let mut n = 0;
        while excess > 0 && self.count > 0 {
            let last = self.count - 1;
            let r = self.free[last];
            let pages = (r.end - r.start) / PAGE_SIZE;
            let take = pages.min(excess);
            let cut = r.end - take * PAGE_SIZE;
            taken[n] = Range {
                start: cut,
                end: r.end,
            };
            n += 1;
            if take == pages {
                self.count -= 1;
            } else {
                self.free[last].end = cut;
            }
            excess -= take;
        }
        for r in taken[..n].iter().rev() {
            out(r.start, r.end);
        }
    }

    /// Returns one frame. A frame that is already free is refused.
    pub fn free(&mut self, frame: u64) -> Result<(), FreeError> {
        if !frame.is_multiple_of(PAGE_SIZE) {
            return Err(FreeError::Misaligned(frame));
        }
        if self
            .ranges()
            .iter()
            .any(|r| r.start <= frame && frame < r.end)
        {
            return Err(FreeError::NotAllocated(frame));
        }
        let before = self.count;
        let lost = self.pages_lost;
        self.insert(Range {
            start: frame,
            end: frame + PAGE_SIZE,
        });
        if self.count == before && self.pages_lost != lost {
            self.pages_lost = lost;
            return Err(FreeError::ListFull(frame));
        }
        Ok(())
    }

    /// Inserts a range, merging with neighbours that touch or overlap it.
    fn insert(&mut self, mut new: Range) {
        let mut i = 0;
        while i < self.count {
            let r = self.free[i];
            if r.end < new.start {
                i += 1;
                continue;
            }
            if r.start > new.end {
                break;
            }
            new = Range {
                start: r.start.min(new.start),
                end: r.end.max(new.end),
            };
            self.remove_at(i);
        }
        if self.count == MAX_RANGES {
            self.pages_lost += (new.end - new.start) / PAGE_SIZE;
            return;
        }
        self.insert_at(i, new);
    }

    fn insert_at(&mut self, i: usize, r: Range) {
        self.free.copy_within(i..self.count, i + 1);
        self.free[i] = r;
        self.count += 1;
    }

    fn remove_at(&mut self, i: usize) {
        self.free.copy_within(i + 1..self.count, i);
        self.count -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::vec::Vec;

    fn region(start: u64, end: u64, kind: RegionKind) -> MemoryRegion {
        MemoryRegion { start, end, kind }
    }

    #[test]
    fn never_hands_out_reserved_pages() {
        // A map in the shape QEMU gives, with overlaps and unaligned edges.
        let map = [
            region(0, 0x9fc00, RegionKind::Usable),
            region(0x9fc00, 0xa0000, RegionKind::Reserved),
            region(0xf0000, 0x100000, RegionKind::Reserved),
            region(0x100000, 0x7fe0000, RegionKind::Usable),
            region(0x7fe0000, 0x8000000, RegionKind::AcpiReclaimable),
            region(0x3000_0000 - 0x800, 0x3000_0800, RegionKind::Reserved),
        ];
        let mut fa = FrameAllocator::from_memory_map(&map);
        fa.reserve(0x100000, 0x180000); // the hypervisor image
        fa.reserve(0, 0x1000); // page 0
        let mut seen = BTreeSet::new();
        while let Some(f) = fa.alloc() {
            assert_eq!(f % PAGE_SIZE, 0);
            assert!(f >= 0x1000);
            assert!(
                f + PAGE_SIZE <= 0x9f000 || (0x180000..0x7fe0000).contains(&f),
                "{f:#x}"
            );
            assert!(seen.insert(f), "frame {f:#x} handed out twice");
        }
        assert_eq!(
            seen.len() as u64,
            (0x9f000 - 0x1000) / PAGE_SIZE + (0x7fe0000 - 0x180000) / PAGE_SIZE
        );
    }

    #[test]
    fn lowest_first_and_alignment() {
        let mut fa = FrameAllocator::new();
        fa.add(0x5000, 0x40_0000);
        assert_eq!(fa.alloc(), Some(0x5000));
        let big = fa.alloc_contiguous(16, 512, u64::MAX).unwrap();
        assert_eq!(big, 0x20_0000);
        assert_eq!(fa.alloc_contiguous(1, 1, 0x7000), Some(0x6000));
        assert_eq!(fa.alloc_contiguous(0x400, 1, u64::MAX), None);
        assert_eq!(
            fa.alloc_contiguous(1, 3, u64::MAX),
            None,
            "alignment must be a power of two"
        );
    }

    #[test]
    fn allocation_respects_the_ceiling() {
        let mut fa = FrameAllocator::new();
        fa.add(0x10_0000, 0x20_0000);
        assert_eq!(fa.alloc_contiguous(1, 1, 0x10_0000), None);
        assert_eq!(fa.alloc_contiguous(1, 1, 0x10_1000), Some(0x10_0000));
    }

    #[test]
    fn taking_all_but_a_reserve_leaves_the_lowest_pages() {
        let mut fa = FrameAllocator::new();
        fa.add(0x1000, 0x5000);
        fa.add(0x10_0000, 0x20_0000);
        let mut taken = Vec::new();
        fa.take_all_but(2 + 16, &mut |s, e| taken.push((s, e)));
        assert_eq!(fa.free_pages(), 18);
        // 260 free pages, keep 18: 242 come off the top of the upper range.
        assert_eq!(taken, [(0x10_E000, 0x20_0000)]);
        // Nothing taken is still free, nothing free was taken.
        while let Some(f) = fa.alloc() {
            assert!(taken.iter().all(|&(s, e)| f < s || f >= e));
        }
    }

    #[test]
    fn double_free_is_refused() {
        let mut fa = FrameAllocator::new();
        fa.add(0, 0x10000);
        let f = fa.alloc().unwrap();
        assert_eq!(fa.free(f), Ok(()));
        assert_eq!(fa.free(f), Err(FreeError::NotAllocated(f)));
        assert_eq!(fa.free(f + 1), Err(FreeError::Misaligned(f + 1)));
        assert_eq!(fa.free_pages(), 16);
    }

    #[test]
    fn a_full_list_loses_pages_but_never_lies() {
        let mut fa = FrameAllocator::new();
        fa.add(0, 0x1000_0000);
        // Punch 400 holes: more ranges than the list holds.
        for i in 0..400u64 {
            fa.reserve(i * 0x10000 + 0x8000, i * 0x10000 + 0x9000);
        }
        assert!(fa.pages_lost > 0);
        let mut seen = BTreeSet::new();
        while let Some(f) = fa.alloc() {
            assert!(
                f % 0x10000 != 0x8000 || f >= 400 * 0x10000,
                "reserved {f:#x} handed out"
            );
            assert!(seen.insert(f));
        }
    }

    proptest! {
        /// Any sequence of adds, reservations, allocations and frees: no frame is
        /// handed out twice while held, no reserved frame is ever handed out, and
        /// the free count matches what was handed back.
        #[test]
        fn model_check(ops in proptest::collection::vec((0u8..4, 0u64..256, 1u64..16), 1..200)) {
            let mut fa = FrameAllocator::new();
            let mut added = BTreeSet::new();
            let mut reserved = BTreeSet::new();
            let mut held: Vec<u64> = Vec::new();
            for (op, page, n) in ops {
                match op {
                    0 => {
                        fa.add(page * PAGE_SIZE, (page + n) * PAGE_SIZE);
                        for p in page..page + n {
                            if !reserved.contains(&p) && !held.contains(&(p * PAGE_SIZE)) { added.insert(p); }
                        }
                        // Adding memory never revives reserved or held pages: take them
                        // out again, as the hypervisor does at boot.
                        for p in reserved.iter() { fa.reserve(p * PAGE_SIZE, (p + 1) * PAGE_SIZE); }
                        for f in held.iter() { fa.reserve(*f, f + PAGE_SIZE); }
                    }
                    1 => {
                        fa.reserve(page * PAGE_SIZE, (page + n) * PAGE_SIZE);
                        // Pages currently held are not affected by a reservation.
                        for p in page..page + n {
                            if !held.contains(&(p * PAGE_SIZE)) { reserved.insert(p); added.remove(&p); }
                        }
                    }
                    2 => {
                        if let Some(f) = fa.alloc() {
                            let p = f / PAGE_SIZE;
                            prop_assert!(!reserved.contains(&p), "reserved page {p} allocated");
                            prop_assert!(!held.contains(&f), "page {p} allocated twice");
                            prop_assert!(added.remove(&p), "page {p} was never added");
                            held.push(f);
                        }
                    }
                    _ => {
                        if let Some(f) = held.pop() {
                            prop_assert_eq!(fa.free(f), Ok(()));
                            added.insert(f / PAGE_SIZE);
                            reserved.remove(&(f / PAGE_SIZE));
                            prop_assert!(fa.free(f).is_err());
                        }
                    }
                }
                prop_assert_eq!(fa.free_pages(), added.len() as u64);
            }
        }
    }
}
