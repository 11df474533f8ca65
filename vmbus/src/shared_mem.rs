//! Memory shared with the peer: the only module of the crate with `unsafe`.
//!
//! The peer (another partition, or another thread in tests) may change any
//! byte at any time. All access therefore goes through atomics: the ring
//! header words are `AtomicU32`, the ring data area is `AtomicU64` words
//! (ring packets are 8-byte aligned and sized), and guest-RAM byte copies use
//! `AtomicU8`. Relaxed atomic loads and stores compile to plain moves, so this
//! costs nothing over volatile access, but unlike volatile it keeps
//! concurrent access by two Rust threads free of data races.
//!
//! Types here:
//! - [`RingHeader`]: the first 68 bytes of a ring's header page.
//! - [`RingMemory`]: what the ring code needs from "the memory of one ring".
//! - [`HeapRing`]: a heap-allocated ring (tests, benchmarks, fuzzing). Safe.
//! - [`RawRing`]: a ring at a raw mapping (the root partition). Unsafe to make.
//! - [`GuestRam`] / [`PagedRing`]: simulated guest-physical memory and a ring
//!   made of a page list in it, for the in-process host/guest tests.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::PAGE_SIZE;

/// u64 words in one page.
pub const PAGE_WORDS: usize = PAGE_SIZE / 8;

/// The control fields at the start of a ring's 4 KiB header page
/// (`struct hv_ring_buffer`); the rest of the page is reserved.
#[repr(C)]
pub struct RingHeader {
    /// Offset 0: byte offset into the data area where the producer writes next.
    pub write_index: AtomicU32,
    /// Offset 4: byte offset where the consumer reads next.
    pub read_index: AtomicU32,
    /// Offset 8: set by the consumer: 1 = "don't signal me".
    pub interrupt_mask: AtomicU32,
    /// Offset 12: set by a blocked producer: "signal me when more than this
    /// many bytes are free".
    pub pending_send_size: AtomicU32,
    /// Offsets 16..64.
    pub reserved: [AtomicU32; 12],
    /// Offset 64: bit 0 = the consumer honours `pending_send_size`.
    pub feature_bits: AtomicU32,
}

const _: () = assert!(core::mem::size_of::<RingHeader>() == 68);
const _: () = assert!(core::mem::offset_of!(RingHeader, feature_bits) == 64);

impl RingHeader {
    /// A zeroed header.
    pub fn new() -> Self {
        Self {
            write_index: AtomicU32::new(0),
            read_index: AtomicU32::new(0),
            interrupt_mask: AtomicU32::new(0),
            pending_send_size: AtomicU32::new(0),
            reserved: Default::default(),
            feature_bits: AtomicU32::new(0),
        }
    }
}

impl Default for RingHeader {
    fn default() -> Self {
        Self::new()
    }
}

/// The memory of one ring: a header and a data area of `data_words()` u64
/// words, possibly split into runs (pages) that are not contiguous here.
///
/// Implementations are trusted (they are ours or the embedder's); the bytes
/// inside them are not.
pub trait RingMemory {
    /// The header page's control fields.
    fn header(&self) -> &RingHeader;
    /// Size of the data area in u64 words.
    fn data_words(&self) -> usize;
    /// The longest contiguous run of data words starting at word `start`
    /// (`start < data_words()`). Must not be empty.
    fn data_run(&self, start: usize) -> &[AtomicU64];
}

impl<T: RingMemory + ?Sized> RingMemory for &T {
    fn header(&self) -> &RingHeader {
        (**self).header()
    }
    fn data_words(&self) -> usize {
        (**self).data_words()
    }
    fn data_run(&self, start: usize) -> &[AtomicU64] {
        (**self).data_run(start)
    }
}

impl<T: RingMemory + ?Sized> RingMemory for Arc<T> {
    fn header(&self) -> &RingHeader {
        (**self).header()
    }
    fn data_words(&self) -> usize {
        (**self).data_words()
    }
    fn data_run(&self, start: usize) -> &[AtomicU64] {
        (**self).data_run(start)
    }
}

/// A ring in ordinary heap memory, shared between threads with `Arc`.
pub struct HeapRing {
    header: Box<RingHeader>,
    data: Box<[AtomicU64]>,
}

impl HeapRing {
    /// A zeroed ring whose data area is `data_bytes` long (rounded down to
    /// whole words).
    pub fn new(data_bytes: usize) -> Self {
        let words = data_bytes / 8;
        Self {
            header: Box::new(RingHeader::new()),
            data: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Direct access to the data words, e.g. for a test playing a hostile
    /// peer that scribbles over the ring.
    pub fn data(&self) -> &[AtomicU64] {
        &self.data
    }
}

impl RingMemory for HeapRing {
    fn header(&self) -> &RingHeader {
        &self.header
    }
    fn data_words(&self) -> usize {
        self.data.len()
    }
    fn data_run(&self, start: usize) -> &[AtomicU64] {
        self.data.get(start..).unwrap_or(&[])
    }
}

/// A ring at a raw mapping: a header page and a virtually contiguous data
/// area, e.g. GPADL pages the root partition mapped into its address space.
pub struct RawRing {
    header: NonNull<RingHeader>,
    data: NonNull<AtomicU64>,
    words: usize,
}

// SAFETY: RawRing only hands out shared references to atomics, which may be
// used from any thread; the memory's validity is the constructor's contract.
unsafe impl Send for RawRing {}
// SAFETY: as above: all access through the references is atomic.
unsafe impl Sync for RawRing {}

impl RawRing {
    /// Wraps a mapped ring.
    ///
    /// # Safety
    /// `header` must point to at least 68 bytes and `data` to `data_words`
    /// u64 words, both 8-byte aligned, readable and writable, and valid for
    /// as long as the `RawRing` lives. The memory may be changed at any time
    /// by the peer, but within this program it must only be accessed through
    /// atomics (this type and other `RawRing`s or atomic views).
    pub unsafe fn new(
        header: NonNull<RingHeader>,
        data: NonNull<AtomicU64>,
        data_words: usize,
    ) -> Self {
        Self {
            header,
            data,
            words: data_words,
        }
    }
}

impl RingMemory for RawRing {
    fn header(&self) -> &RingHeader {
        // SAFETY: the constructor's contract: valid, aligned, atomically
        // accessed for the lifetime of self.
        unsafe { self.header.as_ref() }
    }
    fn data_words(&self) -> usize {
        self.words
    }
    fn data_run(&self, start: usize) -> &[AtomicU64] {
        if start >= self.words {
            return &[];
        }
        // SAFETY: the constructor guarantees `words` valid, aligned atomics
        // at `data` for the lifetime of self; `start < words` keeps the
        // slice inside them.
        unsafe { core::slice::from_raw_parts(self.data.as_ptr().add(start), self.words - start) }
    }
}

/// Error for a guest-physical access outside [`GuestRam`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange;

/// Simulated guest-physical memory: `pages` zeroed 4 KiB pages at GPA 0.
///
/// A page may serve as a ring header (viewed as [`RingHeader`]), as ring data
/// (viewed as `AtomicU64`s) or as a DMA buffer (viewed as `AtomicU8`s). Mixed
/// sizes only ever meet across a hand-over (a message or a ring index), never
/// concurrently, which keeps every view sound.
pub struct GuestRam {
    base: NonNull<u8>,
    pages: usize,
}

// SAFETY: the allocation is owned by GuestRam and only ever accessed through
// shared references to atomics.
unsafe impl Send for GuestRam {}
// SAFETY: as above.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    fn layout(pages: usize) -> Layout {
        // At least one page so the layout is never zero-sized.
        pages
            .max(1)
            .checked_mul(PAGE_SIZE)
            .and_then(|size| Layout::from_size_align(size, PAGE_SIZE).ok())
            .unwrap_or_else(|| alloc::alloc::handle_alloc_error(Layout::new::<u64>()))
    }

    /// Allocates `pages` zeroed pages.
    pub fn new(pages: usize) -> Self {
        let layout = Self::layout(pages);
        // SAFETY: the layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let Some(base) = NonNull::new(ptr) else {
            alloc::alloc::handle_alloc_error(layout);
        };
        Self { base, pages }
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Page `pfn` viewed as a ring header.
    pub fn header_page(&self, pfn: u64) -> Option<&RingHeader> {
        let pfn = usize::try_from(pfn).ok().filter(|&p| p < self.pages)?;
        // SAFETY: pfn < pages, so the page lies inside the allocation; pages
        // are 4096-aligned (enough for AtomicU32) and larger than RingHeader;
        // all access is atomic; the borrow of self keeps the memory alive.
        Some(unsafe { &*self.base.as_ptr().add(pfn * PAGE_SIZE).cast::<RingHeader>() })
    }

    /// Page `pfn` viewed as u64 words.
    pub fn data_page(&self, pfn: u64) -> Option<&[AtomicU64]> {
        let pfn = usize::try_from(pfn).ok().filter(|&p| p < self.pages)?;
        // SAFETY: as in header_page; 512 u64 words fill exactly one page.
        Some(unsafe {
            core::slice::from_raw_parts(
                self.base.as_ptr().add(pfn * PAGE_SIZE).cast::<AtomicU64>(),
                PAGE_WORDS,
            )
        })
    }

    fn bytes(&self, gpa: u64, len: usize) -> Result<&[AtomicU8], OutOfRange> {
        let start = usize::try_from(gpa).map_err(|_| OutOfRange)?;
        let end = start.checked_add(len).ok_or(OutOfRange)?;
        if end > self.pages * PAGE_SIZE {
            return Err(OutOfRange);
        }
        // SAFETY: [start, end) lies inside the allocation (checked above);
        // AtomicU8 has alignment 1; all access is atomic.
        Ok(unsafe {
            core::slice::from_raw_parts(self.base.as_ptr().add(start).cast::<AtomicU8>(), len)
        })
    }

    /// Copies guest memory at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let src = self.bytes(gpa, buf.len())?;
        for (d, s) in buf.iter_mut().zip(src) {
            *d = s.load(Ordering::Relaxed);
        }
        Ok(())
    }

    /// Copies `data` into guest memory at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), OutOfRange> {
        let dst = self.bytes(gpa, data.len())?;
        for (d, s) in dst.iter().zip(data) {
            d.store(*s, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Zeroes the given pages (a guest allocating fresh ring pages).
    pub fn zero_pages(&self, pfns: &[u64]) -> Result<(), OutOfRange> {
        for &pfn in pfns {
            let page = self.data_page(pfn).ok_or(OutOfRange)?;
            for w in page {
                w.store(0, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: base was allocated in `new` with exactly this layout, and
        // no reference into it outlives self.
        unsafe { dealloc(self.base.as_ptr(), Self::layout(self.pages)) }
    }
}

/// A ring made of a page list in [`GuestRam`]: the first page is the header,
/// the others the data area, in order (a GPADL-described ring).
pub struct PagedRing {
    ram: Arc<GuestRam>,
    header_pfn: u64,
    data_pfns: Vec<u64>,
}

impl PagedRing {
    /// Builds a ring over `pfns` (header page first); every page must exist.
    pub fn new(ram: Arc<GuestRam>, pfns: &[u64]) -> Result<Self, OutOfRange> {
        let (&header_pfn, data) = pfns.split_first().ok_or(OutOfRange)?;
        if data.is_empty() || pfns.iter().any(|&p| ram.data_page(p).is_none()) {
            return Err(OutOfRange);
        }
        Ok(Self {
            ram,
            header_pfn,
            data_pfns: data.to_vec(),
        })
    }
}

impl RingMemory for PagedRing {
    fn header(&self) -> &RingHeader {
        // The constructor checked the page exists; fall back to a static
        // zero header rather than panic if that ever changed.
        static EMPTY: RingHeader = RingHeader {
            write_index: AtomicU32::new(0),
            read_index: AtomicU32::new(0),
            interrupt_mask: AtomicU32::new(0),
            pending_send_size: AtomicU32::new(0),
            reserved: [const { AtomicU32::new(0) }; 12],
            feature_bits: AtomicU32::new(0),
        };
        self.ram.header_page(self.header_pfn).unwrap_or(&EMPTY)
    }
    fn data_words(&self) -> usize {
        self.data_pfns.len() * PAGE_WORDS
    }
    fn data_run(&self, start: usize) -> &[AtomicU64] {
        let Some(&pfn) = self.data_pfns.get(start / PAGE_WORDS) else {
            return &[];
        };
        self.ram
            .data_page(pfn)
            .and_then(|p| p.get(start % PAGE_WORDS..))
            .unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_views_share_bytes() {
        let ram = GuestRam::new(4);
        ram.write(PAGE_SIZE as u64 + 8, &[1, 2, 3, 4, 5, 6, 7, 8])
            .unwrap();
        let page = ram.data_page(1).unwrap();
        assert_eq!(page[1].load(Ordering::Relaxed), 0x0807_0605_0403_0201);
        ram.header_page(2)
            .unwrap()
            .feature_bits
            .store(0xAABB_CCDD, Ordering::Relaxed);
        let mut b = [0u8; 4];
        ram.read(2 * PAGE_SIZE as u64 + 64, &mut b).unwrap();
        assert_eq!(b, [0xDD, 0xCC, 0xBB, 0xAA]);
        assert_eq!(ram.read(4 * PAGE_SIZE as u64 - 2, &mut b), Err(OutOfRange));
        assert!(ram.data_page(4).is_none());
        assert_eq!(ram.write(u64::MAX, &b), Err(OutOfRange));
    }

    #[test]
    fn paged_ring_runs_follow_pages() {
        let ram = Arc::new(GuestRam::new(8));
        let ring = PagedRing::new(ram.clone(), &[5, 2, 7]).unwrap();
        assert_eq!(ring.data_words(), 2 * PAGE_WORDS);
        assert_eq!(ring.data_run(0).len(), PAGE_WORDS);
        assert_eq!(ring.data_run(PAGE_WORDS + 3).len(), PAGE_WORDS - 3);
        ring.data_run(PAGE_WORDS)[0].store(42, Ordering::Relaxed);
        assert_eq!(ram.data_page(7).unwrap()[0].load(Ordering::Relaxed), 42);
        assert!(ring.data_run(2 * PAGE_WORDS).is_empty());
        assert!(PagedRing::new(ram.clone(), &[1]).is_err());
        assert!(PagedRing::new(ram, &[1, 8]).is_err());
    }

    #[test]
    fn raw_ring_over_heap_words() {
        let header = Box::new(RingHeader::new());
        let data: Box<[AtomicU64]> = (0..16).map(AtomicU64::new).collect();
        // SAFETY: both allocations outlive `raw` (dropped at the end of the
        // test after it) and are only accessed atomically.
        let raw =
            unsafe { RawRing::new(NonNull::from(&*header), NonNull::from(&data[0]), data.len()) };
        assert_eq!(raw.data_run(10)[0].load(Ordering::Relaxed), 10);
        assert!(raw.data_run(16).is_empty());
        raw.header().write_index.store(8, Ordering::Relaxed);
        assert_eq!(header.write_index.load(Ordering::Relaxed), 8);
    }
}
