//! The root's side of the SynIC (TLFS "Inter-Partition Communication"): the
//! message page, the intercept SINT, and taking messages out of their slot.
use crate::arch::wrmsr;
use crate::idt::SINT_VECTOR;
use core::cell::UnsafeCell;
use hv_abi::synic::{msr, Message, INTERCEPT_SINT, MESSAGE_PENDING, SLOT_SIZE};

#[repr(C, align(4096))]
struct Page(UnsafeCell<[u8; 4096]>);
// SAFETY: the hypervisor writes slots; VP 0 alone reads and empties them,
// through volatile accesses of the slot header.
unsafe impl Sync for Page {}

static SIMP: Page = Page(UnsafeCell::new([0; 4096]));

/// Enables the message page and the intercept SINT (unmasked, SINT_VECTOR).
pub fn enable() {
    // SAFETY: the SynIC MSRs the hypervisor emulates for the root; the page
    // is this crate's own, used for nothing else.
    unsafe {
        wrmsr(msr::SIMP, SIMP.0.get() as u64 | msr::PAGE_ENABLE);
        wrmsr(msr::SINT0 + INTERCEPT_SINT as u32, SINT_VECTOR as u64);
        wrmsr(msr::SCONTROL, 1);
    }
}

/// The message in the intercept slot, if any; the slot is emptied (and EOM
/// written when another message waits behind it).
pub fn take() -> Option<Message> {
    let slot = SIMP.0.get() as u64 + (INTERCEPT_SINT * SLOT_SIZE) as u64;
    // SAFETY: the slot lies in our page; the header is read with one aligned
    // volatile load, so a message being written shows as empty or complete.
    let head = unsafe { core::ptr::read_volatile(slot as *const u64) };
    if head as u32 == 0 {
        return None;
    }
    let mut bytes = [0u8; SLOT_SIZE];
    // SAFETY: the hypervisor wrote the body before the header it read above,
    // and does not touch a full slot.
    unsafe { core::ptr::copy_nonoverlapping(slot as *const u8, bytes.as_mut_ptr(), SLOT_SIZE) };
    let message = Message::decode(&bytes);
    // SAFETY: emptying the slot: type 0, with one aligned volatile store.
    unsafe { core::ptr::write_volatile(slot as *mut u32, 0) };
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    // SAFETY: as above; re-reading the flags the hypervisor may have set.
    let flags = unsafe { core::ptr::read_volatile((slot + 5) as *const u8) };
    if flags & MESSAGE_PENDING != 0 {
        // SAFETY: EOM asks the hypervisor to deliver the next message.
        unsafe { wrmsr(msr::EOM, 0) };
    }
    Some(message)
}
