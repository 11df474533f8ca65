//! Fills its memory with a pattern and checks it forever: reports each
//! round, and fails loudly if anything else changed it.
#![no_std]
#![no_main]
use test_guests::{exit, println};

test_guests::entry!(main);

const START: u64 = 0x40_0000;
/// The checked span: enough to show nothing reached it, small enough for a
/// round to take well under a second under emulation.
const SPAN: u64 = 0x4_0000;

fn main(_vp: u64, _vps: u64, memory: u64) -> ! {
    let words = SPAN.min(memory - START) / 8;
    let at = |i: u64| (START + 8 * i) as *mut u64;
    for i in 0..words {
        // SAFETY: [START, START + SPAN) is this guest's RAM, unused by its image
        // (linked at 2 MiB, small) and stacks (below 1 MiB).
        unsafe { core::ptr::write_volatile(at(i), i ^ 0x5A5A_5A5A_5A5A_5A5A) };
    }
    let mut round = 0u64;
    loop {
        for i in 0..words {
            // SAFETY: as above.
            let v = unsafe { core::ptr::read_volatile(at(i)) };
            if v != i ^ 0x5A5A_5A5A_5A5A_5A5A {
                println!("victim: memory changed at GPA {:#x}", START + 8 * i);
                exit(2);
            }
        }
        round += 1;
        println!("victim: pattern intact, round {round}");
    }
}
