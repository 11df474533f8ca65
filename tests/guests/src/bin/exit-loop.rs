//! Exits as fast as it can, for the scheduler tests: CPUID (handled in the
//! hypervisor), an I/O port write (served by the root's VM worker) or a
//! hypercall, chosen by its memory size: 4 MiB CPUID, 6 MiB I/O, 8 MiB
//! hypercall. Its exit handling and the root's time serving it must be
//! charged to it, so a CPU hog beside it keeps its share.
#![no_std]
#![no_main]
use hv_abi::hypercall::Input;
use hv_abi::layout::FlushVirtualAddressSpace;
use hv_abi::partition::{code, flush};
use test_guests::{hypercall, println};

test_guests::entry!(main);

fn main(vp: u64, _vps: u64, memory: u64) -> ! {
    let kind = match memory >> 20 {
        0..=4 => "CPUID",
        5..=6 => "I/O",
        _ => "hypercall",
    };
    if kind == "hypercall" && !test_guests::enable_hypercalls() {
        println!("exit-loop: FAILED to enable the hypercall page");
        test_guests::exit(1);
    }
    // FlushVirtualAddressSpace of all VPs: its input block.
    static INPUT: test_guests::Page = test_guests::Page(core::cell::UnsafeCell::new([0; 4096]));
    let input = INPUT.0.get() as u64;
    let flush = FlushVirtualAddressSpace {
        address_space: 0,
        flags: flush::ALL_PROCESSORS,
        processor_mask: 1,
    };
    // SAFETY: our own page, page-aligned (so aligned for the block).
    unsafe { core::ptr::write_volatile(input as *mut FlushVirtualAddressSpace, flush) };
    let value = Input::slow(code::FLUSH_VIRTUAL_ADDRESS_SPACE, 0).encode();
    println!("exit-loop: VP {vp} exiting by {kind}");
    let mut n = 0u64;
    loop {
        match kind {
            "CPUID" => {
                core::hint::black_box(core::arch::x86_64::__cpuid(0));
            }
            // COM1's scratch register: the root's VM worker keeps it.
            "I/O" => test_guests::outb(0x3FF, n as u8),
            _ => {
                core::hint::black_box(hypercall(value, input, 0));
            }
        }
        n = n.wrapping_add(1);
        if n.is_multiple_of(1 << 16) {
            println!("exit-loop: VP {vp} at {} exits", n);
        }
    }
}
