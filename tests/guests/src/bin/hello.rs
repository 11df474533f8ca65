//! Serial output reaches `vm console`, then exit code 0.
#![no_std]
#![no_main]
use test_guests::{exit, println};

test_guests::entry!(main);

fn main(vp: u64, vps: u64, memory: u64) -> ! {
    println!(
        "hello from a guest partition: VP {vp} of {vps}, {} MiB",
        memory >> 20
    );
    exit(0)
}
