//! A guest's reset leaves nothing of its first boot in its processor: the
//! first boot leaves a self-IPI waiting in its APIC (interrupts off) and
//! the APIC timer armed, then resets the machine through port 0xCF9; the
//! second boot (it knows it from a CMOS RAM byte, kept across the reset as
//! on a PC) finds its APIC as after reset, enables interrupts and sees none
//! arrive.
#![no_std]
#![no_main]
use core::sync::atomic::{AtomicU64, Ordering};
use test_guests::{exit, inb, outb, println, rdmsr, wrmsr};

test_guests::entry!(main);

const LEFT_PENDING: u8 = 0x40;
const TIMER: u8 = 0x41;
static TAKEN: AtomicU64 = AtomicU64::new(0);
test_guests::counting_handler!(on_interrupt, TAKEN);

/// A CMOS RAM byte past the clock's registers: the boot count.
const BOOT_BYTE: u8 = 0x40;
const LVT_MASKED: u64 = 1 << 16;

fn cmos_read(index: u8) -> u8 {
    outb(0x70, index);
    inb(0x71)
}

fn cmos_write(index: u8, value: u8) {
    outb(0x70, index);
    outb(0x71, value);
}

fn main(_vp: u64, _vps: u64, _memory: u64) -> ! {
    test_guests::set_handler(LEFT_PENDING, on_interrupt);
    test_guests::set_handler(TIMER, on_interrupt);
    match cmos_read(BOOT_BYTE) {
        0 => first_boot(),
        1 => second_boot(),
        n => {
            println!("reset: FAILED, CMOS RAM says boot {n}");
            exit(1);
        }
    }
}

fn first_boot() -> ! {
    test_guests::load_idt_and_enable_apic();
    // SAFETY: the x2APIC the hypervisor offers; interrupts stay off, so
    // both wait in the APIC.
    unsafe {
        wrmsr(0x83F, u64::from(LEFT_PENDING)); // self IPI
        wrmsr(0x83E, 0xB); // divide by 1
        wrmsr(0x832, u64::from(TIMER) | 1 << 17); // periodic
        wrmsr(0x838, 10_000);
    }
    let irr = rdmsr(0x820 + u32::from(LEFT_PENDING) / 32);
    if irr & 1 << (LEFT_PENDING % 32) == 0 {
        println!("reset: FAILED, the self IPI is not pending");
        exit(1);
    }
    cmos_write(BOOT_BYTE, 1);
    println!("reset: first boot: a self IPI pending, the APIC timer armed; resetting");
    outb(0xCF9, 6);
    test_guests::halt();
}

fn second_boot() -> ! {
    cmos_write(BOOT_BYTE, 0);
    println!("reset: second boot");
    // The state after reset (SDM vol. 3 section 11.4.7.1): every LVT masked,
    // the timer stopped, nothing requested or in service.
    let lvt_timer = rdmsr(0x832);
    let initial = rdmsr(0x838);
    let irr = (0..8).fold(0, |a, i| a | rdmsr(0x820 + i));
    let isr = (0..8).fold(0, |a, i| a | rdmsr(0x810 + i));
    let clean = lvt_timer & LVT_MASKED != 0 && initial == 0 && irr == 0 && isr == 0;
    if !clean {
        println!(
            "reset: FAILED, the APIC kept the first boot's state: LVT timer {lvt_timer:#x}, initial count {initial}, IRR {irr:#x}, ISR {isr:#x}"
        );
        exit(1);
    }
    test_guests::load_idt_and_enable_apic();
    // SAFETY: interrupts on for a while: nothing may arrive.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
    let start = rdtsc();
    while rdtsc() - start < 50_000_000 {
        core::hint::spin_loop();
    }
    // SAFETY: as above.
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
    let taken = TAKEN.load(Ordering::SeqCst);
    if taken != 0 {
        println!("reset: FAILED, {taken} interrupts of the first boot arrived in the second");
        exit(1);
    }
    println!("reset: the APIC is as after reset, and no interrupt of the first boot arrives: ok");
    exit(0);
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}
