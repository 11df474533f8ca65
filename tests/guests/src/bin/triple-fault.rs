//! An exception with no IDT: a triple fault. The guest alone must fail.
#![no_std]
#![no_main]
use test_guests::println;

test_guests::entry!(main);

fn main(_vp: u64, _vps: u64, _memory: u64) -> ! {
    println!("triple-fault: loading an empty IDT and raising #BP");
    let idtr = [0u16; 5];
    // SAFETY: deliberately fatal to this guest: #BP with an IDT of limit 0
    // becomes #GP, then #DF, then a triple fault.
    unsafe { core::arch::asm!("lidt [{}]", "int3", in(reg) &idtr, options(nostack)) };
    println!("triple-fault: FAILED, still running");
    test_guests::exit(1)
}
