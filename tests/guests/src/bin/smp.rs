//! Every VP runs: each checks in; VP 0 waits for all of them, then sends an
//! IPI to all the others (x2APIC ICR, all-excluding-self), which sleep until
//! it arrives. Then NMIs: one to all the others (it wakes them too), then
//! the masking rule: while VP 1 is inside its NMI handler, two more NMIs to
//! it are held back until the handler's IRET and arrive as one. VP 0 reports
//! and exits 0.
#![no_std]
#![no_main]
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use test_guests::{exit, println};

test_guests::entry!(main);

const IPI: u8 = 0x32;
static CHECKED_IN: AtomicU64 = AtomicU64::new(0);
static IPIS: AtomicU64 = AtomicU64::new(0);
test_guests::counting_handler!(on_ipi, IPIS);

/// NMIs taken, by any VP.
static NMIS: AtomicU64 = AtomicU64::new(0);
/// NMIs taken, per VP.
static VP_NMIS: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];
/// VP 1's NMI handler waits inside until VP 0 clears it.
static HOLD: AtomicBool = AtomicBool::new(false);
static IN_HANDLER: AtomicBool = AtomicBool::new(false);
/// An NMI handler was entered while one ran on the same VP.
static NESTED: AtomicBool = AtomicBool::new(false);
static INSIDE: [AtomicBool; 64] = [const { AtomicBool::new(false) }; 64];

// Saves the caller-saved registers (nine: the stack stays 16-byte aligned
// for the call) around the Rust handler.
core::arch::global_asm!(
    ".global on_nmi",
    "on_nmi:",
    "    push rax",
    "    push rcx",
    "    push rdx",
    "    push rsi",
    "    push rdi",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    call {handler}",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rdi",
    "    pop rsi",
    "    pop rdx",
    "    pop rcx",
    "    pop rax",
    "    iretq",
    handler = sym nmi_handler,
);
extern "C" {
    fn on_nmi();
}

/// Our x2APIC ID (the VP index).
fn apic_id() -> usize {
    test_guests::rdmsr(0x802) as usize % 64
}

extern "C" fn nmi_handler() {
    let id = apic_id();
    if INSIDE[id].swap(true, Ordering::SeqCst) {
        NESTED.store(true, Ordering::SeqCst);
    }
    NMIS.fetch_add(1, Ordering::SeqCst);
    VP_NMIS[id].fetch_add(1, Ordering::SeqCst);
    if id == 1 && HOLD.load(Ordering::SeqCst) {
        IN_HANDLER.store(true, Ordering::SeqCst);
        while HOLD.load(Ordering::SeqCst) {
            core::hint::spin_loop();
        }
    }
    INSIDE[id].store(false, Ordering::SeqCst);
}

/// Sends an NMI (delivery mode 4): `shorthand` 3 is all excluding self, 0
/// the x2APIC ID `dest`.
fn send_nmi(shorthand: u64, dest: u64) {
    // SAFETY: the x2APIC ICR of the virtual APIC.
    unsafe { test_guests::wrmsr(0x830, dest << 32 | shorthand << 18 | 4 << 8) };
}

/// Spins until `done` or about `spins` iterations passed.
fn wait_for(spins: u64, done: impl Fn() -> bool) -> bool {
    for _ in 0..spins {
        if done() {
            return true;
        }
        core::hint::spin_loop();
    }
    done()
}

fn main(vp: u64, vps: u64, _memory: u64) -> ! {
    if vp == 0 {
        test_guests::set_handler(IPI, on_ipi);
        test_guests::set_handler(2, on_nmi);
    }
    // The others wait for VP 0's handler to be in place.
    while vp != 0 && CHECKED_IN.load(Ordering::SeqCst) & 1 == 0 {
        core::hint::spin_loop();
    }
    test_guests::load_idt_and_enable_apic();
    println!("smp: VP {vp} running");
    CHECKED_IN.fetch_or(1 << vp, Ordering::SeqCst);
    if vp != 0 {
        // Asleep with interrupts enabled: the IPI wakes it, then again.
        loop {
            test_guests::halt_until(u32::MAX, || false);
        }
    }
    let all = if vps >= 64 { u64::MAX } else { (1 << vps) - 1 };
    while CHECKED_IN.load(Ordering::SeqCst) != all {
        core::hint::spin_loop();
    }
    println!("smp: all {vps} VPs ran");
    // SAFETY: x2APIC ICR: fixed, all excluding self (shorthand 3), vector IPI.
    unsafe { test_guests::wrmsr(0x830, (3 << 18) | IPI as u64) };
    wait_for(200_000_000, || IPIS.load(Ordering::SeqCst) >= vps - 1);
    let got = IPIS.load(Ordering::SeqCst);
    if got != vps - 1 {
        println!(
            "smp: FAILED, the IPI reached {got} of {} other VPs",
            vps - 1
        );
        exit(1);
    }
    println!("smp: the IPI woke all {got} other VPs");
    if vps < 2 {
        exit(0);
    }

    send_nmi(3, 0);
    wait_for(200_000_000, || NMIS.load(Ordering::SeqCst) >= vps - 1);
    let got = NMIS.load(Ordering::SeqCst);
    if got != vps - 1 {
        println!(
            "smp: FAILED, the NMI reached {got} of {} other VPs",
            vps - 1
        );
        exit(1);
    }
    println!("smp: the NMI woke all {got} other VPs");

    // Masking: VP 1 holds in its handler while two more NMIs are sent to it.
    let vp1 = || VP_NMIS[1].load(Ordering::SeqCst);
    let base = vp1();
    HOLD.store(true, Ordering::SeqCst);
    send_nmi(0, 1);
    if !wait_for(200_000_000, || IN_HANDLER.load(Ordering::SeqCst)) {
        println!("smp: FAILED, VP 1 took no NMI");
        exit(1);
    }
    send_nmi(0, 1);
    send_nmi(0, 1);
    // Time for them to reach VP 1 (and, wrongly, be delivered).
    wait_for(5_000_000, || vp1() - base > 1);
    let during = vp1() - base;
    HOLD.store(false, Ordering::SeqCst);
    // The latched one follows the IRET.
    wait_for(200_000_000, || vp1() - base >= 2);
    wait_for(5_000_000, || vp1() - base > 2);
    let total = vp1() - base;
    let nested = NESTED.load(Ordering::SeqCst);
    println!(
        "smp: NMI masking: {during} taken while in the handler, {total} in all, nested {nested}"
    );
    if during != 1 || total != 2 || nested {
        println!("smp: FAILED, expected 1 while in the handler and 2 in all, never nested");
        exit(1);
    }
    println!("smp: NMIs are held until IRET and latched once");
    exit(0)
}
