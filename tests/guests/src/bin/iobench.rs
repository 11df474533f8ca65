//! Times intercepted port writes: each OUT to COM1's scratch register goes
//! guest → hypervisor → the root's VM worker → hypervisor → guest. Prints
//! the TSC ticks per round trip (under QEMU -icount, instructions).
#![no_std]
#![no_main]
use test_guests::{exit, outb, println};

test_guests::entry!(main);

/// Round trips timed (`cargo xtask bench` divides the world switches by it).
const WRITES: u64 = 20_000;

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn main(_vp: u64, _vps: u64, _memory: u64) -> ! {
    outb(0x3FF, 0);
    let start = rdtsc();
    for i in 0..WRITES {
        outb(0x3FF, i as u8);
    }
    let ticks = rdtsc() - start;
    println!(
        "iobench: {WRITES} intercepted port writes in {ticks} TSC ticks, {} ticks per round trip",
        ticks / WRITES
    );
    exit(0)
}
