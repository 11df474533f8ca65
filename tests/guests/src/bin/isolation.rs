//! Touches memory that is not its own (just past its RAM, then far away):
//! the hypervisor must stop it with the address, and nobody else may notice.
#![no_std]
#![no_main]
use test_guests::{exit, println};

test_guests::entry!(main);

fn main(_vp: u64, _vps: u64, memory: u64) -> ! {
    let target = memory + 0x1000;
    println!(
        "isolation: writing GPA {target:#x}, outside my {} MiB",
        memory >> 20
    );
    // SAFETY: deliberately not: the address is outside this guest's memory
    // (identity-mapped by the loader's 2 MiB pages up to the next 2 MiB).
    unsafe { core::ptr::write_volatile(target as *mut u64, 0xDEAD_BEEF) };
    println!("isolation: FAILED, the write went through");
    exit(1)
}
