//! Touches memory that is not its own (just past its RAM, then far away):
//! nothing is there for it, as for a device that is absent. Writes go
//! nowhere and reads give all ones; the root reports each page once, and
//! nobody else may notice (the victim guest checks its memory).
#![no_std]
#![no_main]
use test_guests::{exit, println};

test_guests::entry!(main);

fn main(_vp: u64, _vps: u64, memory: u64) -> ! {
    // Just past its RAM, and 1 GiB up (within the loader's identity map).
    for target in [memory + 0x1000, 0x4000_0000 - 0x1000] {
        println!(
            "isolation: writing GPA {target:#x}, outside my {} MiB",
            memory >> 20
        );
        // SAFETY: deliberately not: the address is outside this guest's
        // memory (identity-mapped by the loader's 2 MiB pages).
        unsafe { core::ptr::write_volatile(target as *mut u64, 0xDEAD_BEEF) };
        // SAFETY: as above.
        let back = unsafe { core::ptr::read_volatile(target as *const u64) };
        // SAFETY: as above; a byte read into a byte register.
        let byte = unsafe { core::ptr::read_volatile(target as *const u8) };
        if back != u64::MAX || byte != 0xFF {
            println!("isolation: FAILED, read back {back:#x} and {byte:#x}, not all ones");
            exit(1)
        }
        println!("isolation: {target:#x} reads all ones: nothing there");
    }
    println!("isolation: done");
    exit(0)
}
