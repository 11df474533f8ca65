//! A VMBus ring in a guest's memory, as the root reaches it: the guest's
//! RAM is one block of root RAM (`base` up to `base + bytes`), so a GPADL's
//! page numbers become root addresses by adding `base`, after a check that
//! each page lies inside the block. The one place that turns guest pages
//! into references; every access through them is atomic (the guest writes
//! the same words at any time). Also the devices' copies to and from the
//! pages a request names ([`GuestMemoryBlock`]).
use alloc::vec::Vec;
use core::sync::atomic::AtomicU64;
use vmbus::scsi::Segment;
use vmbus::shared_mem::{RingHeader, RingMemory};
use vmbus::storvsp::{GuestMemory, OutsideGuest};

const PAGE: u64 = 4096;
const WORDS_PER_PAGE: usize = 512;

pub struct GuestRing {
    header: *const RingHeader,
    /// The data pages, in ring order.
    pages: Vec<*const AtomicU64>,
}

impl GuestRing {
    /// The ring on guest pages `pfns` (header page first) of the guest RAM
    /// block at `base`, `bytes` long; `None` if a page lies outside it.
    ///
    /// The caller keeps the block the guest's, and its memory allocated,
    /// for as long as the ring lives (the VM's VMBus state, which owns the
    /// rings, is dropped before its memory goes back to the pool).
    pub fn new(base: u64, bytes: u64, pfns: &[u64]) -> Option<Self> {
        let inside = |pfn: u64| pfn.checked_mul(PAGE).is_some_and(|gpa| gpa < bytes);
        let (&header, data) = pfns.split_first()?;
        if data.is_empty() || !pfns.iter().all(|&p| inside(p)) {
            return None;
        }
        Some(GuestRing {
            header: (base + header * PAGE) as *const RingHeader,
            pages: data
                .iter()
                .map(|&p| (base + p * PAGE) as *const AtomicU64)
                .collect(),
        })
    }
}

impl RingMemory for GuestRing {
    fn header(&self) -> &RingHeader {
        // SAFETY: a page of the guest's block (checked in `new`), 4 KiB
        // aligned, identity-mapped and allocated while the ring lives (the
        // constructor's contract); RingHeader is atomics only.
        unsafe { &*self.header }
    }

    fn data_words(&self) -> usize {
        self.pages.len() * WORDS_PER_PAGE
    }

    fn data_run(&self, start: usize) -> &[AtomicU64] {
        let Some(&page) = self.pages.get(start / WORDS_PER_PAGE) else {
            return &[];
        };
        let at = start % WORDS_PER_PAGE;
        // SAFETY: as in `header`: a whole aligned page of the guest's block,
        // viewed as atomics from word `at` to its end.
        unsafe { core::slice::from_raw_parts(page.add(at), WORDS_PER_PAGE - at) }
    }
}

/// A guest's whole RAM block, as a device reaches the pages a request
/// names (`vmbus::storvsp::GuestMemory`): every access is checked to lie
/// inside the block and copied once; the guest may change the bytes at any
/// time, so only the copies are looked at.
pub struct GuestMemoryBlock {
    base: u64,
    bytes: u64,
}

impl GuestMemoryBlock {
    /// The guest RAM block at `base`, `bytes` long. The caller keeps it
    /// the guest's, and allocated, while this lives (as for [`GuestRing`]).
    pub fn new(base: u64, bytes: u64) -> Self {
        GuestMemoryBlock { base, bytes }
    }

    /// The root address of `len` bytes at `gpa`, if all inside the block.
    fn at(&self, gpa: u64, len: usize) -> Result<u64, OutsideGuest> {
        let end = gpa.checked_add(len as u64).ok_or(OutsideGuest)?;
        if end > self.bytes {
            return Err(OutsideGuest);
        }
        Ok(self.base + gpa)
    }
}

impl GuestMemory for GuestMemoryBlock {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), OutsideGuest> {
        let at = self.at(gpa, buf.len())?;
        // SAFETY: inside the guest's block (checked above), identity-mapped
        // root RAM allocated while this lives (the constructor's contract);
        // plain bytes, copied once.
        unsafe { core::ptr::copy_nonoverlapping(at as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), OutsideGuest> {
        let at = self.at(gpa, data.len())?;
        // SAFETY: as in `read`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), at as *mut u8, data.len()) };
        Ok(())
    }

    /// The guest's bytes at their root address, which is their bus
    /// address: the root's disk moves a request's data to and from the
    /// guest's pages directly.
    fn segment(&self, gpa: u64, len: usize) -> Option<Segment> {
        let addr = self.at(gpa, len).ok()?;
        Some(Segment { addr, len })
    }
}

/// Zeros the memory `segments` name: a read of a disk's blocks that are not
/// stored yet (a dynamic image's), into a guest's pages.
pub fn zero(segments: &[Segment]) {
    for s in segments {
        // SAFETY: a segment given to a disk names memory its caller lends
        // it for the call (`BlockDevice::read_to`): here a guest's pages
        // inside its block ([`GuestMemoryBlock::segment`]), allocated while
        // its channel is served; plain bytes, written once.
        unsafe { core::ptr::write_bytes(s.addr as *mut u8, 0, s.len) };
    }
}
