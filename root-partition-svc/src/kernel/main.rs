//! The root partition's kernel. The hypervisor starts every root VP at
//! `_start` in 64-bit mode (contract: `hv_abi::root_boot`); VP 0 runs the
//! shell on COM1, the others halt.
#![no_std]
#![no_main]

mod arch;
mod device_irq;
mod fpu;
mod guest_ring;
mod heap;
mod host_disk;
mod hypercall;
mod idt;
mod network;
mod phys;
mod power;
mod ram_disk;
mod serial;
mod shell;
mod synic;
mod virtio;
mod virtio_disk;
mod virtio_net;
mod vm;
mod vmbus_server;

extern crate alloc;

use core::arch::global_asm;
use hv_abi::{cpuid, root_boot, RootBoot};
use root_partition_svc::boot::{self, HvIdentity};

// Entered with RSP at the top of this VP's 64 KiB stack and RDI = the GPA of
// its boot block. Aligns the stack for the SysV ABI and calls `root_main`.
global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    cli",
    "    cld",
    "    and rsp, -16",
    "    xor ebp, ebp",
    "    call {main}",
    "1:  cli",
    "    hlt",
    "    jmp 1b",
    ".text",
    main = sym root_main,
);

extern "C" fn root_main(block: u64) -> ! {
    let mut bytes = [0u8; root_boot::SIZE];
    // SAFETY: the hypervisor put the block at `block` in root memory, inside
    // its identity map, `root_boot::SIZE` bytes long; it is copied out once.
    unsafe { core::ptr::copy_nonoverlapping(block as *const u8, bytes.as_mut_ptr(), bytes.len()) };
    let boot = RootBoot::decode(&bytes);
    match boot {
        Some(b) if b.vp_index == 0 => {}
        // Other VPs answer IPIs, asleep with interrupts enabled in between.
        Some(_) => secondary_vp(),
        None => {
            // Unknown VP: it may be VP 0, so say why nothing happens.
            serial::init();
            println!("root partition: the boot block at {block:#x} is not valid (magic or ABI version); halted");
            arch::halt_forever()
        }
    }
    let boot = boot.unwrap_or_else(|| arch::halt_forever());
    serial::init();
    idt::init();

    let hv = hv_identity();
    let _ = root_partition_svc::format::banner(
        &mut serial::Com1,
        &hv,
        boot.vp_count,
        boot::ram_bytes(boot.ranges()),
    );
    if hv.may_use_hypercalls() {
        if let Err(head) = hypercall::enable() {
            println!("root partition: the hypervisor did not fill the hypercall page (it starts {head:02x?}); host commands are unavailable");
        }
    } else {
        println!("root partition: no hypercall MSRs granted; host commands are unavailable");
    }
    shell::run(boot, hv)
}

fn hv_identity() -> HvIdentity {
    let leaf1 = arch::cpuid(1, 0)[2];
    let mut leaves = [[0u32; 4]; 4];
    if leaf1 & cpuid::HYPERVISOR_PRESENT != 0 {
        for (i, l) in leaves.iter_mut().enumerate() {
            *l = arch::cpuid(cpuid::VENDOR_AND_MAX + i as u32, 0);
        }
    }
    HvIdentity::from_cpuid(leaf1, leaves)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("ROOT PANIC: {info}");
    arch::halt_forever()
}

/// VPs other than 0: the shared IDT, the (virtual) x2APIC enabled, then sleep
/// with interrupts enabled; the IPI handler counts what arrives.
fn secondary_vp() -> ! {
    idt::load();
    // SAFETY: x2APIC SVR: software-enable this VP's APIC, spurious vector 0xFF.
    unsafe { arch::wrmsr(0x80F, 0x1FF) };
    loop {
        // SAFETY: the IDT handles the APIC's vectors; HLT waits for the next one.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
}
