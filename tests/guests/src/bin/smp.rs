//! Every VP runs: each checks in; VP 0 waits for all of them, then sends an
//! IPI to all the others (x2APIC ICR, all-excluding-self), which sleep until
//! it arrives; VP 0 reports and exits 0.
#![no_std]
#![no_main]
use core::sync::atomic::{AtomicU64, Ordering};
use test_guests::{exit, println};

test_guests::entry!(main);

const IPI: u8 = 0x32;
static CHECKED_IN: AtomicU64 = AtomicU64::new(0);
static IPIS: AtomicU64 = AtomicU64::new(0);
test_guests::counting_handler!(on_ipi, IPIS);

fn main(vp: u64, vps: u64, _memory: u64) -> ! {
    if vp == 0 {
        test_guests::set_handler(IPI, on_ipi);
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
    let mut spins = 0u64;
    while IPIS.load(Ordering::SeqCst) < vps - 1 && spins < 200_000_000 {
        core::hint::spin_loop();
        spins += 1;
    }
    let got = IPIS.load(Ordering::SeqCst);
    if got != vps - 1 {
        println!(
            "smp: FAILED, the IPI reached {got} of {} other VPs",
            vps - 1
        );
        exit(1);
    }
    println!("smp: the IPI woke all {got} other VPs");
    exit(0)
}
