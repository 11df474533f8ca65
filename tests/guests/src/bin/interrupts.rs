//! An interrupt from the root ends a halt: the guest asks for vector 0x30
//! through the test port 0xF5 (the root asserts it with
//! AssertVirtualInterrupt), halts with interrupts enabled, and counts what
//! its handler saw. Then asks with interrupts disabled, to see the
//! interrupt wait until it enables them.
#![no_std]
#![no_main]
use core::sync::atomic::{AtomicU64, Ordering};
use test_guests::{exit, outb, println};

test_guests::entry!(main);

const VECTOR: u8 = 0x30;
static TAKEN: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    ".global guest_irq_0x30",
    "guest_irq_0x30:",
    "    lock inc qword ptr [rip + {taken}]",
    "    iretq",
    taken = sym TAKEN,
);

extern "C" {
    fn guest_irq_0x30();
}

#[repr(C, align(16))]
struct Idt([u64; 512]);
static mut IDT: Idt = Idt([0; 512]);

fn halt_until_taken(n: u64) -> bool {
    for _ in 0..1000 {
        if TAKEN.load(Ordering::SeqCst) >= n {
            return true;
        }
        // SAFETY: the IDT handles VECTOR; HLT waits for it.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    TAKEN.load(Ordering::SeqCst) >= n
}

fn main(_vp: u64, _vps: u64, _memory: u64) -> ! {
    let handler = guest_irq_0x30 as *const () as u64;
    // Present, DPL 0, 64-bit interrupt gate, selector 0x08 (the loader's code segment).
    let low = (handler & 0xFFFF) | 0x08 << 16 | 0x8E << 40 | ((handler >> 16) & 0xFFFF) << 48;
    // SAFETY: the IDT is this guest's, written before it is loaded; one VP.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        idt.0[VECTOR as usize * 2] = low;
        idt.0[VECTOR as usize * 2 + 1] = handler >> 32;
        let pointer: [u16; 5] = {
            let base = idt.0.as_ptr() as u64;
            [
                4095,
                base as u16,
                (base >> 16) as u16,
                (base >> 32) as u16,
                (base >> 48) as u16,
            ]
        };
        core::arch::asm!("lidt [{}]", in(reg) &pointer, options(nostack));
    }
    outb(0xF5, VECTOR);
    if !halt_until_taken(1) {
        println!("interrupts: FAILED, vector {VECTOR:#x} never arrived");
        exit(1);
    }
    println!("interrupts: vector {VECTOR:#x} arrived and ended the halt");
    // With interrupts disabled the interrupt must wait.
    outb(0xF5, VECTOR);
    for _ in 0..100_000 {
        core::hint::spin_loop();
    }
    if TAKEN.load(Ordering::SeqCst) != 1 {
        println!("interrupts: FAILED, delivered while interrupts were disabled");
        exit(1);
    }
    if !halt_until_taken(2) {
        println!("interrupts: FAILED, the second interrupt was lost");
        exit(1);
    }
    println!("interrupts: the second waited for STI, then arrived");
    exit(0)
}
