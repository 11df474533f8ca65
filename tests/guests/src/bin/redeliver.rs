//! An interrupt whose delivery faults is delivered again (Intel SDM vol. 3
//! section 28.2.4, IDT-vectoring information; AMD APM vol. 2 section 15.7.2,
//! EXITINTINFO). The guest asks the root's test device (port 0xF6) to unmap
//! a page, moves its stack there, and sends itself an IPI: delivering it
//! pushes the interrupt frame onto the unmapped page, the second-level
//! fault exits mid-delivery, the root maps the page back and resumes the
//! VP, and the hypervisor must inject the interrupt again. If it did not,
//! the interrupt would be lost (already taken into service by the virtual
//! APIC) and never arrive. Then the same for an NMI sent to itself.
#![no_std]
#![no_main]
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use test_guests::{exit, println};

test_guests::entry!(main);

const VECTOR: u8 = 0x40;
static TAKEN: AtomicU64 = AtomicU64::new(0);
test_guests::counting_handler!(on_interrupt, TAKEN);

static NMIS: AtomicU64 = AtomicU64::new(0);
core::arch::global_asm!(
    ".global on_nmi",
    "on_nmi:",
    "    lock inc qword ptr [rip + {nmis}]",
    "    iretq",
    nmis = sym NMIS,
);
extern "C" {
    fn on_nmi();
}

/// The stack the events are delivered onto (one page, unmapped each time).
#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut STACK: Page = Page([0; 4096]);

/// Has the root unmap the stack page, moves RSP onto it and writes
/// `icr_low` to the x2APIC ICR (a WRMSR that exits): the event it sends is
/// injected at the next entry and its delivery faults on the stack page.
fn send_on_unmapped_stack(icr_low: u32) {
    let top = core::ptr::addr_of!(STACK) as u64 + 4096;
    // SAFETY: the test device unmaps the page until this VP next touches
    // it, which the root answers by mapping it back; the handler runs on it
    // and returns; RSP is restored before anything else uses the stack.
    unsafe {
        asm!(
            "out dx, eax",
            "mov {saved}, rsp",
            "mov rsp, {top}",
            "mov eax, {low:e}",
            "xor edx, edx",
            "mov ecx, 0x830",
            "sti",
            "wrmsr",
            "nop",
            "nop",
            "cli",
            "mov rsp, {saved}",
            saved = out(reg) _,
            top = in(reg) top,
            low = in(reg) icr_low,
            inout("dx") 0xF6u16 => _,
            inout("eax") (top - 4096) as u32 => _,
            out("ecx") _,
            options(nostack)
        );
    }
}

fn main(_vp: u64, _vps: u64, _memory: u64) -> ! {
    test_guests::set_handler(VECTOR, on_interrupt);
    test_guests::set_handler(2, on_nmi);
    test_guests::load_idt_and_enable_apic();
    // A fixed self IPI (shorthand self).
    send_on_unmapped_stack((1 << 18) | VECTOR as u32);
    let got = TAKEN.load(Ordering::SeqCst);
    println!("redeliver: interrupt taken {got} time(s) after its delivery faulted");
    // An NMI to itself (shorthand all including self, one VP).
    send_on_unmapped_stack((2 << 18) | (4 << 8));
    let nmis = NMIS.load(Ordering::SeqCst);
    println!("redeliver: NMI taken {nmis} time(s) after its delivery faulted");
    if got != 1 || nmis != 1 {
        println!("redeliver: FAILED, an event whose delivery faulted was lost or repeated");
        exit(1);
    }
    println!("redeliver: events interrupted mid-delivery arrive once");
    exit(0)
}
