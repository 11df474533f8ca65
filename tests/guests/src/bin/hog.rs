//! Spins forever, counting: a CPU hog for the scheduler tests. Reports its
//! count now and then so progress is visible.
#![no_std]
#![no_main]
use test_guests::println;

test_guests::entry!(main);

fn main(vp: u64, _vps: u64, _memory: u64) -> ! {
    let mut n = 0u64;
    loop {
        n = n.wrapping_add(1);
        if n.is_multiple_of(1 << 26) {
            println!("hog: VP {vp} at {}M iterations", n >> 20);
        }
        core::hint::black_box(n);
    }
}
