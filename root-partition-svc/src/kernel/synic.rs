//! The root's side of the SynIC (TLFS "Inter-Partition Communication"): the
//! message and event-flag pages, the intercept SINT and the VMBus SINT,
//! taking messages out of their slot and event flags out of their page.
use crate::arch::wrmsr;
use crate::idt::{SINT_VECTOR, VMBUS_VECTOR};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use hv_abi::synic::{
    msr, Message, EVENT_FLAGS_BYTES, INTERCEPT_SINT, MESSAGE_PENDING, SLOT_SIZE, VMBUS_SINT,
};

#[repr(C, align(4096))]
struct Page(UnsafeCell<[u8; 4096]>);
// SAFETY: the hypervisor writes slots; VP 0 alone reads and empties them,
// through volatile accesses of the slot header.
unsafe impl Sync for Page {}

static SIMP: Page = Page(UnsafeCell::new([0; 4096]));
/// Event flags: the hypervisor sets bits atomically, VP 0 takes them with
/// atomic swaps.
static SIEFP: Page = Page(UnsafeCell::new([0; 4096]));

/// Enables the message and event-flag pages, the intercept SINT and the
/// VMBus SINT (unmasked, each with its vector: the worker reads the VMBus
/// slot and flags only after the VMBus one).
pub fn enable() {
    // SAFETY: the SynIC MSRs the hypervisor emulates for the root; the pages
    // are this crate's own, used for nothing else.
    unsafe {
        wrmsr(msr::SIMP, SIMP.0.get() as u64 | msr::PAGE_ENABLE);
        wrmsr(msr::SIEFP, SIEFP.0.get() as u64 | msr::PAGE_ENABLE);
        // AutoEOI: the interrupt only wakes the loop, which reads the
        // slots; no EOI, so no exit, per message.
        let auto_eoi = msr::SINT_AUTO_EOI;
        wrmsr(
            msr::SINT0 + INTERCEPT_SINT as u32,
            SINT_VECTOR as u64 | auto_eoi,
        );
        wrmsr(
            msr::SINT0 + VMBUS_SINT as u32,
            VMBUS_VECTOR as u64 | auto_eoi,
        );
        wrmsr(msr::SCONTROL, 1);
    }
}

/// Moves the message in the intercept slot, if any, into `m` (its payload
/// bytes the header counts; the rest are left as they were); the slot is
/// emptied (and EOM written when another message waits behind it).
pub fn take(m: &mut Message) -> bool {
    take_from(INTERCEPT_SINT, m)
}

/// As [`take`], for the next message guests posted to the root's VMBus ports.
pub fn take_vmbus(m: &mut Message) -> bool {
    take_from(VMBUS_SINT, m)
}

/// Takes the VMBus SINT's event flags that are set (clearing them); calls
/// `f` with each flag number.
pub fn take_vmbus_events(mut f: impl FnMut(u32)) {
    let base = SIEFP.0.get() as usize + VMBUS_SINT * EVENT_FLAGS_BYTES;
    for word in 0..EVENT_FLAGS_BYTES / 8 {
        // SAFETY: an aligned u64 inside our own page, which the hypervisor
        // only ever changes with atomic ORs; every access here is atomic.
        let cell = unsafe { AtomicU64::from_ptr((base + word * 8) as *mut u64) };
        if cell.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let mut bits = cell.swap(0, Ordering::AcqRel);
        while bits != 0 {
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            f(word as u32 * 64 + bit);
        }
    }
}

fn take_from(sint: usize, m: &mut Message) -> bool {
    let slot = SIMP.0.get() as u64 + (sint * SLOT_SIZE) as u64;
    // SAFETY: the slot lies in our page; the header is read with one aligned
    // volatile load, so a message being written shows as empty or complete.
    let head = unsafe { core::ptr::read_volatile(slot as *const u64) };
    if head as u32 == 0 {
        return false;
    }
    // SAFETY: as above; the sender, the second aligned u64 of the header.
    let sender = unsafe { core::ptr::read_volatile((slot + 8) as *const u64) };
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&head.to_le_bytes());
    header[8..].copy_from_slice(&sender.to_le_bytes());
    m.set_header(header);
    // SAFETY: the hypervisor wrote the body before the header it read above,
    // and does not touch a full slot; at most PAYLOAD_MAX bytes after the
    // 16-byte header, inside the slot, into `m`'s payload of that size.
    unsafe {
        core::ptr::copy_nonoverlapping(
            (slot + 16) as *const u8,
            m.payload.as_mut_ptr(),
            m.size as usize,
        )
    };
    // SAFETY: emptying the slot: type 0, with one aligned volatile store.
    unsafe { core::ptr::write_volatile(slot as *mut u32, 0) };
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    // SAFETY: as above; re-reading the flags the hypervisor may have set.
    let flags = unsafe { core::ptr::read_volatile((slot + 5) as *const u8) };
    if flags & MESSAGE_PENDING != 0 {
        // SAFETY: EOM asks the hypervisor to deliver the next message.
        unsafe { wrmsr(msr::EOM, 0) };
    }
    true
}
