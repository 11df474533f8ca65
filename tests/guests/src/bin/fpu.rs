//! Its SSE registers are its own: loads XMM0-15 with a pattern drawn from its
//! memory size (so two VMs of different sizes differ), then exits to the root
//! 2000 times (port writes) while other VPs share the processor, and checks
//! every register after each. Exit code 0 when nothing changed.
#![no_std]
#![no_main]
use core::arch::asm;
use test_guests::{exit, outb, println};

test_guests::entry!(main);

fn load(seed: u64) {
    let pattern: [u64; 32] = core::array::from_fn(|i| seed.rotate_left(i as u32) ^ i as u64);
    // SAFETY: reads 256 bytes of the array into XMM0-15; SSE is on (the
    // loader sets CR4.OSFXSR) and nothing else here uses them.
    unsafe {
        asm!(
            "movdqu xmm0, [{p}]", "movdqu xmm1, [{p} + 16]", "movdqu xmm2, [{p} + 32]",
            "movdqu xmm3, [{p} + 48]", "movdqu xmm4, [{p} + 64]", "movdqu xmm5, [{p} + 80]",
            "movdqu xmm6, [{p} + 96]", "movdqu xmm7, [{p} + 112]", "movdqu xmm8, [{p} + 128]",
            "movdqu xmm9, [{p} + 144]", "movdqu xmm10, [{p} + 160]", "movdqu xmm11, [{p} + 176]",
            "movdqu xmm12, [{p} + 192]", "movdqu xmm13, [{p} + 208]", "movdqu xmm14, [{p} + 224]",
            "movdqu xmm15, [{p} + 240]",
            p = in(reg) pattern.as_ptr(),
            options(nostack, readonly),
        )
    };
}

fn store() -> [u64; 32] {
    let mut out = [0u64; 32];
    // SAFETY: writes 256 bytes into the array from XMM0-15.
    unsafe {
        asm!(
            "movdqu [{p}], xmm0", "movdqu [{p} + 16], xmm1", "movdqu [{p} + 32], xmm2",
            "movdqu [{p} + 48], xmm3", "movdqu [{p} + 64], xmm4", "movdqu [{p} + 80], xmm5",
            "movdqu [{p} + 96], xmm6", "movdqu [{p} + 112], xmm7", "movdqu [{p} + 128], xmm8",
            "movdqu [{p} + 144], xmm9", "movdqu [{p} + 160], xmm10", "movdqu [{p} + 176], xmm11",
            "movdqu [{p} + 192], xmm12", "movdqu [{p} + 208], xmm13", "movdqu [{p} + 224], xmm14",
            "movdqu [{p} + 240], xmm15",
            p = in(reg) out.as_mut_ptr(),
            options(nostack),
        )
    };
    out
}

fn main(_vp: u64, _vps: u64, memory: u64) -> ! {
    let seed = 0x9E37_79B9_7F4A_7C15u64 ^ memory;
    let want: [u64; 32] = core::array::from_fn(|i| seed.rotate_left(i as u32) ^ i as u64);
    load(seed);
    for round in 0..2000 {
        // An exit through the root (and, with other VMs on this LP, a turn
        // for them), then a look at every register.
        outb(0x3FF, round as u8);
        for _ in 0..200 {
            core::hint::spin_loop();
        }
        if store() != want {
            println!("fpu: FAILED, XMM registers changed after {round} exits");
            exit(1);
        }
    }
    println!(
        "fpu: XMM0-15 kept across 2000 exits ({} MiB VM)",
        memory >> 20
    );
    exit(0)
}
