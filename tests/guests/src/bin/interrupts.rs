//! Interrupts into a guest: one asserted by the root ends a halt (the guest
//! asks for it through the test port 0xF5, the root calls
//! AssertVirtualInterrupt); one asserted while interrupts are disabled waits
//! for STI; its own x2APIC timer interrupts it periodically. Also: a
//! single-step #DB reaches its own handler (the hypervisor intercepts #DB
//! and re-injects it), and its syscall MSRs are its own.
#![no_std]
#![no_main]
use core::sync::atomic::{AtomicU64, Ordering};
use test_guests::{exit, outb, println};

test_guests::entry!(main);

const ASSERTED: u8 = 0x30;
const TIMER: u8 = 0x31;
static TAKEN: AtomicU64 = AtomicU64::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);
test_guests::counting_handler!(on_asserted, TAKEN);
test_guests::counting_handler!(on_timer, TICKS);

static DEBUGS: AtomicU64 = AtomicU64::new(0);
// #DB handler: count, clear TF in the saved RFLAGS (at RSP + 16), return.
core::arch::global_asm!(
    ".global on_debug",
    "on_debug:",
    "    lock inc qword ptr [rip + {debugs}]",
    "    and qword ptr [rsp + 16], ~0x100",
    "    iretq",
    debugs = sym DEBUGS,
);
extern "C" {
    fn on_debug();
}

fn main(_vp: u64, _vps: u64, _memory: u64) -> ! {
    test_guests::set_handler(ASSERTED, on_asserted);
    test_guests::set_handler(TIMER, on_timer);
    test_guests::set_handler(1, on_debug);
    test_guests::load_idt_and_enable_apic();
    outb(0xF5, ASSERTED);
    if !test_guests::halt_until(1000, || TAKEN.load(Ordering::SeqCst) >= 1) {
        println!("interrupts: FAILED, vector {ASSERTED:#x} never arrived");
        exit(1);
    }
    println!("interrupts: vector {ASSERTED:#x} arrived and ended the halt");
    // With interrupts disabled the interrupt must wait.
    outb(0xF5, ASSERTED);
    for _ in 0..100_000 {
        core::hint::spin_loop();
    }
    if TAKEN.load(Ordering::SeqCst) != 1 {
        println!("interrupts: FAILED, delivered while interrupts were disabled");
        exit(1);
    }
    if !test_guests::halt_until(1000, || TAKEN.load(Ordering::SeqCst) >= 2) {
        println!("interrupts: FAILED, the second interrupt was lost");
        exit(1);
    }
    println!("interrupts: the second waited for STI, then arrived");
    // The x2APIC timer: divide by 1, periodic, 200 000 TSC ticks.
    // SAFETY: x2APIC timer registers of this VP's virtual APIC.
    unsafe {
        test_guests::wrmsr(0x83E, 0xB);
        test_guests::wrmsr(0x832, (1 << 17) | TIMER as u64);
        test_guests::wrmsr(0x838, 200_000);
    }
    let ok = test_guests::halt_until(10_000, || TICKS.load(Ordering::SeqCst) >= 5);
    // SAFETY: masks and stops the timer.
    unsafe {
        test_guests::wrmsr(0x832, 1 << 16);
        test_guests::wrmsr(0x838, 0);
    }
    if !ok {
        println!(
            "interrupts: FAILED, the timer ticked {} times",
            TICKS.load(Ordering::SeqCst)
        );
        exit(1);
    }
    println!("interrupts: the x2APIC timer ticked 5 times while the VP halted");
    // Single step: TF set by POPFQ traps after the next instruction.
    // SAFETY: the IDT's #DB handler clears TF; the stack is balanced.
    unsafe {
        core::arch::asm!(
            "pushfq",
            "or qword ptr [rsp], 0x100",
            "popfq",
            "nop",
            "nop",
            options(nomem)
        )
    };
    let debugs = DEBUGS.load(Ordering::SeqCst);
    if debugs != 1 {
        println!("interrupts: FAILED, {debugs} single-step #DB taken (expected 1)");
        exit(1);
    }
    println!("interrupts: a single-step #DB reached the guest's handler once");
    // LSTAR: the guest's own, kept across exits.
    // SAFETY: a canonical address; this guest never executes SYSCALL.
    unsafe { test_guests::wrmsr(0xC000_0082, 0xFFFF_8000_1234_5000) };
    outb(0x3FF, 0); // an exit through the root and back
    let lstar = test_guests::rdmsr(0xC000_0082);
    if lstar != 0xFFFF_8000_1234_5000 {
        println!("interrupts: FAILED, LSTAR reads {lstar:#x}");
        exit(1);
    }
    println!("interrupts: LSTAR is the guest's own across exits");
    exit(0)
}
