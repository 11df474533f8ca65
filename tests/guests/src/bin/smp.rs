//! Every VP runs: each checks in; VP 0 waits for all of them, reports, exits 0.
#![no_std]
#![no_main]
use core::sync::atomic::{AtomicU64, Ordering};
use test_guests::{exit, halt, println};

test_guests::entry!(main);

static CHECKED_IN: AtomicU64 = AtomicU64::new(0);

fn main(vp: u64, vps: u64, _memory: u64) -> ! {
    println!("smp: VP {vp} running");
    CHECKED_IN.fetch_or(1 << vp, Ordering::SeqCst);
    if vp != 0 {
        halt();
    }
    let all = if vps >= 64 { u64::MAX } else { (1 << vps) - 1 };
    while CHECKED_IN.load(Ordering::SeqCst) != all {
        core::hint::spin_loop();
    }
    println!("smp: all {vps} VPs ran");
    exit(0)
}
