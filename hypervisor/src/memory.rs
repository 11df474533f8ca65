//! The hypervisor's memory: the frame allocator, its own page tables, the heap
//! and guarded stacks.
//!
//! Address space: physical memory identity-mapped read-write and
//! non-executable, except page 0 (unmapped, so a null dereference faults) and
//! the image, mapped by section: text read+execute, rodata read-only, data and
//! bss read-write. No page is both writable and executable. Stacks live in the
//! top 512 GiB (PML4 slot 511), each with an unmapped guard page below it.
use crate::bootinfo::{BootInfo, PhysRead};
use crate::frame_alloc::{FrameAllocator, PAGE_SIZE};
use crate::page_table::{MapError, PageTable, Perms, TableMemory, SIZE_1G, SIZE_2M, X86};
use crate::x86::cpu;
use core::sync::atomic::{AtomicU64, Ordering};
use linked_list_allocator::LockedHeap;
use spin::Mutex;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

pub static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator::new());
static KERNEL_TABLES: Mutex<Option<PageTable<X86>>> = Mutex::new(None);
static KERNEL_CR3: AtomicU64 = AtomicU64::new(0);

const STACK_REGION: u64 = 0xFFFF_FF80_0000_0000;
/// Each stack gets a 1 MiB slot of address space: guard page, then the stack.
const STACK_SLOT: u64 = 1 << 20;
static NEXT_STACK_SLOT: AtomicU64 = AtomicU64::new(0);

extern "C" {
    static __image_start: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __image_end: u8;
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// The image's span, for reservations and reports.
pub fn image_range() -> (u64, u64) {
    // SAFETY: linker-script symbols; only their addresses are taken.
    unsafe { (sym(&__image_start), sym(&__image_end)) }
}

/// Reads physical memory through the boot tables' identity map of 0..4 GiB
/// (used before the hypervisor's own tables, which leave page 0 unmapped).
pub struct IdentityPhys {
    pub limit: u64,
}

impl PhysRead for IdentityPhys {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            return false;
        };
        if end > self.limit {
            return false;
        }
        // SAFETY: [addr, end) lies in the identity-mapped range below `limit`;
        // firmware and loader structures are plain memory, copied byte for byte.
        unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
        true
    }
}

/// Page-table pages from the frame allocator, reached through the identity map.
struct FrameTables<'a>(&'a mut FrameAllocator);

impl TableMemory for FrameTables<'_> {
    fn alloc_table(&mut self) -> Option<u64> {
        let pa = self.0.alloc()?;
        // SAFETY: the frame was just taken from the allocator (no other user)
        // and is identity-mapped writable.
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, PAGE_SIZE as usize) };
        Some(pa)
    }
    fn read(&self, table: u64, index: usize) -> u64 {
        // SAFETY: `table` is a page-table frame this allocator handed out and
        // `index` < 512 (the builder masks it).
        unsafe { core::ptr::read_volatile((table as *const u64).add(index & 511)) }
    }
    fn write(&mut self, table: u64, index: usize, value: u64) {
        // SAFETY: as in `read`; the table is owned by the hypervisor's tables.
        unsafe { core::ptr::write_volatile((table as *mut u64).add(index & 511), value) };
    }
}

/// The numbers `init` reports.
pub struct MemoryReport {
    pub trampoline_page: u64,
    pub heap_bytes: u64,
    pub identity_top: u64,
    pub free_pages: u64,
}

/// Builds the frame allocator from the memory map, takes the AP trampoline
/// page, builds and loads the hypervisor's page tables and starts the heap.
pub fn init(bi: &BootInfo, reserve: &[(u64, u64)]) -> Result<MemoryReport, &'static str> {
    let (image_start, image_end) = image_range();
    let mut fa = FrameAllocator::from_memory_map(bi.regions());
    fa.reserve(0, PAGE_SIZE);
    fa.reserve(image_start, image_end);
    for m in bi.modules() {
        fa.reserve(m.start, m.end);
    }
    for &(s, e) in reserve {
        fa.reserve(s, e);
    }
    let trampoline = fa
        .alloc_contiguous(1, 1, 0x10_0000)
        .ok_or("no free page below 1 MiB for the AP trampoline")?;

    // Identity-map all RAM and at least the 32-bit space (APIC, I/O APIC,
    // firmware and PCI holes).
    let identity_top = bi.identity_top();
    let max_page = if cpu::has_1g_pages() {
        SIZE_1G
    } else {
        SIZE_2M
    };
    let mut mem = FrameTables(&mut fa);
    let map_err = |_: MapError| "building the hypervisor's page tables failed";
    let mut pt = PageTable::<X86>::new(&mut mem, max_page, true).map_err(map_err)?;
    // SAFETY: linker-script symbols; only their addresses are taken.
    let (text, text_end, rodata, rodata_end, data) = unsafe {
        (
            sym(&__text_start),
            sym(&__text_end),
            sym(&__rodata_start),
            sym(&__rodata_end),
            sym(&__data_start),
        )
    };
    for (start, end, perms) in [
        (PAGE_SIZE, image_start, Perms::RW),
        (image_start, text, Perms::R),
        (text, text_end, Perms::RX),
        (rodata, rodata_end, Perms::R),
        (data, image_end, Perms::RW),
        (image_end, identity_top, Perms::RW),
    ] {
        if end > start {
            pt.map(&mut mem, start, start, end - start, perms)
                .map_err(map_err)?;
        }
    }
    let root = pt.root();
    // SAFETY: the new tables map this code, the boot stack (bss) and every
    // object in use at the same addresses as the boot tables, which map
    // 0..4 GiB identically. NX-marked pages need EFER.NXE, set by the entry code.
    unsafe { cpu::write_cr3(root) };
    KERNEL_CR3.store(root, Ordering::Relaxed);
    *KERNEL_TABLES.lock() = Some(pt);

    // Heap: 1/32 of usable memory, between 1 and 16 MiB.
    let heap_pages = (bi.usable_bytes() / 32 / PAGE_SIZE).clamp(256, 4096);
    let heap = fa
        .alloc_contiguous(heap_pages, 1, u64::MAX)
        .ok_or("no memory for the heap")?;
    // SAFETY: the frames are ours alone from now on and identity-mapped writable.
    unsafe {
        HEAP.lock()
            .init(heap as *mut u8, (heap_pages * PAGE_SIZE) as usize)
    };

    let free_pages = fa.free_pages();
    *FRAMES.lock() = fa;
    Ok(MemoryReport {
        trampoline_page: trampoline,
        heap_bytes: heap_pages * PAGE_SIZE,
        identity_top,
        free_pages,
    })
}

/// One zeroed page the hypervisor keeps (VMCS, VMCB, bitmaps).
pub fn alloc_zeroed_page() -> Option<u64> {
    alloc_zeroed_pages(1)
}

/// `pages` contiguous zeroed pages the hypervisor keeps.
pub fn alloc_zeroed_pages(pages: u64) -> Option<u64> {
    let pa = FRAMES.lock().alloc_contiguous(pages, 1, u64::MAX)?;
    // SAFETY: the frames were just taken from the allocator (ours alone) and
    // are identity-mapped writable.
    unsafe { core::ptr::write_bytes(pa as *mut u8, 0, (pages * PAGE_SIZE) as usize) };
    Some(pa)
}

/// Returns `pages` pages from `pa` to the hypervisor's allocator.
pub fn free_pages(pa: u64, pages: u64) {
    let mut fa = FRAMES.lock();
    for i in 0..pages {
        if fa.free(pa + i * PAGE_SIZE).is_err() {
            log::warn!(
                "page {:#x} freed twice or not the hypervisor's",
                pa + i * PAGE_SIZE
            );
        }
    }
}

/// Pages the hypervisor allocates once and shares (bitmaps, permission maps):
/// zeroed, filled by `fill` the first time, the same base ever after.
pub fn shared_pages(
    cell: &'static spin::Once<u64>,
    pages: u64,
    fill: impl FnOnce(u64),
) -> Result<u64, &'static str> {
    let base = *cell.call_once(|| match alloc_zeroed_pages(pages) {
        Some(base) => {
            fill(base);
            base
        }
        None => 0,
    });
    if base == 0 {
        Err("out of memory for a shared bitmap")
    } else {
        Ok(base)
    }
}

/// Builds page tables (a partition's EPT/NPT) in frames the hypervisor keeps.
pub fn with_tables<R>(f: impl FnOnce(&mut dyn TableMemory) -> R) -> R {
    let mut fa = FRAMES.lock();
    f(&mut FrameTables(&mut fa))
}

/// Hands every free page but `keep_bytes` to the root partition: returns the
/// ranges, which the hypervisor no longer owns.
pub fn hand_over_free_memory(keep_bytes: u64) -> alloc::vec::Vec<(u64, u64)> {
    let mut out = alloc::vec::Vec::new();
    FRAMES
        .lock()
        .take_all_but(keep_bytes / PAGE_SIZE, &mut |s, e| out.push((s, e)));
    out
}

/// Bytes the hypervisor can still allocate.
pub fn free_bytes() -> u64 {
    FRAMES.lock().free_pages() * PAGE_SIZE
}

/// The hypervisor's CR3, for application processors.
pub fn kernel_cr3() -> u64 {
    KERNEL_CR3.load(Ordering::Relaxed)
}

/// Allocates a stack of `pages` pages with an unmapped guard page below it;
/// returns the top (16-byte aligned).
pub fn alloc_stack(pages: u64) -> Result<u64, &'static str> {
    assert!(pages * PAGE_SIZE < STACK_SLOT, "stack larger than its slot");
    let slot = NEXT_STACK_SLOT.fetch_add(1, Ordering::Relaxed);
    let base = STACK_REGION + slot * STACK_SLOT + PAGE_SIZE;
    let mut fa = FRAMES.lock();
    let mut tables = KERNEL_TABLES.lock();
    let pt = tables.as_mut().ok_or("page tables not built yet")?;
    for i in 0..pages {
        let frame = fa.alloc().ok_or("out of memory for a stack")?;
        let mut mem = FrameTables(&mut fa);
        pt.map(&mut mem, base + i * PAGE_SIZE, frame, PAGE_SIZE, Perms::RW)
            .map_err(|_| "mapping a stack failed")?;
    }
    Ok(base + pages * PAGE_SIZE)
}

/// Continues on another stack; never returns.
pub fn run_on_stack(top: u64, f: extern "C" fn(u64) -> !, arg: u64) -> ! {
    // SAFETY: `top` is the top of a mapped stack from `alloc_stack`; the current
    // stack is abandoned (nothing on it is used again) and `f` never returns.
    unsafe {
        core::arch::asm!("mov rsp, {top}", "xor ebp, ebp", "call {f}", "ud2",
            top = in(reg) top, f = in(reg) f, in("rdi") arg, options(noreturn))
    }
}
