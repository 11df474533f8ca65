//! Powering the machine off, with a success or a failure status.
//!
//! Success: a Bochs magic breakpoint (our Bochs runs quit on it, status 0; a
//! no-op elsewhere), then ACPI S5 through PM1a/PM1b_CNT (QEMU exits 0; real
//! machines power off), then QEMU's isa-debug-exit as a last resort. Failure:
//! isa-debug-exit (QEMU exits 3) and the Bochs shutdown port (status 1); on a
//! real machine the processor halts with the report on the console.
use crate::x86::{cpu, port};
use core::arch::asm;
use spin::Once;

#[derive(Clone, Copy, Debug)]
pub struct AcpiPower {
    pub pm1a_control: u16,
    pub pm1b_control: Option<u16>,
    pub s5: (u8, u8),
}

static ACPI_POWER: Once<AcpiPower> = Once::new();

/// QEMU `-device isa-debug-exit,iobase=0xf4,iosize=0x04` exits with (value << 1) | 1.
const QEMU_EXIT_PORT: u16 = 0xF4;
pub const QEMU_EXIT_SUCCESS: u8 = 0x10;
pub const QEMU_EXIT_FAILURE: u8 = 0x01;
const BOCHS_SHUTDOWN_PORT: u16 = 0x8900;

pub fn set_acpi(p: AcpiPower) {
    ACPI_POWER.call_once(|| p);
}

pub fn power_off() -> ! {
    log::info!("powering off");
    // SAFETY: `xchg bx, bx` exchanges a register with itself; only Bochs gives it meaning.
    unsafe { asm!("xchg bx, bx", options(nomem, nostack, preserves_flags)) };
    if let Some(p) = ACPI_POWER.get() {
        const SLP_EN: u16 = 1 << 13;
        port::outw(p.pm1a_control, (p.s5.0 as u16) << 10 | SLP_EN);
        if let Some(b) = p.pm1b_control {
            port::outw(b, (p.s5.1 as u16) << 10 | SLP_EN);
        }
        crate::time::delay_us(100_000);
    }
    port::outb(QEMU_EXIT_PORT, QEMU_EXIT_SUCCESS);
    cpu::halt_forever()
}

pub fn fail() -> ! {
    port::outb(QEMU_EXIT_PORT, QEMU_EXIT_FAILURE);
    for b in b"Shutdown" {
        port::outb(BOCHS_SHUTDOWN_PORT, *b);
    }
    cpu::halt_forever()
}
