//! The root's heap: a block of its free RAM, taken once at start, for the
//! VMBus server's state (channels, GPADLs, queued messages).
use core::sync::atomic::{AtomicBool, Ordering};
use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Bytes the heap takes from the pool: what the per-guest budgets add up
/// to (GPADL page lists, 512 KiB a VM; frames waiting in switches, 1 MiB a
/// switch; network buffers' page lists), with room to spare.
pub const HEAP_BYTES: u64 = 16 << 20;

/// Hands `[start, start + HEAP_BYTES)` to the allocator.
pub fn init(start: u64) {
    // SAFETY: the range is root RAM the caller took from its pool for the
    // heap alone (identity-mapped, writable, never used for anything else),
    // and init runs once, before the first allocation.
    unsafe { HEAP.lock().init(start as *mut u8, HEAP_BYTES as usize) };
    READY.store(true, Ordering::Relaxed);
}

static READY: AtomicBool = AtomicBool::new(false);

/// Whether the heap has memory (what needs it is unavailable otherwise).
pub fn ready() -> bool {
    READY.load(Ordering::Relaxed)
}
