//! Powering off and resetting the machine, which the root owns.
//!
//! Power-off, in the hypervisor's order (hypervisor/src/power.rs): the Bochs
//! magic breakpoint, ACPI S5 through PM1a/PM1b control, QEMU's isa-debug-exit
//! (0x10 to port 0xF4), then halt. Reset: the FADT reset register, port 0xCF9,
//! the keyboard controller, then halt.
use crate::arch::{delay_us, halt_forever, inb, inw, outb, outl, outw};
use crate::phys::Identity;
use crate::println;
use core::arch::asm;
use root_partition_svc::acpi::{space, Platform, PowerOff};

const QEMU_EXIT_PORT: u16 = 0xF4;
const QEMU_EXIT_SUCCESS: u8 = 0x10;
/// Any other value makes QEMU exit with failure.
const QEMU_EXIT_FAILURE: u8 = 0x11;
/// Bochs shuts down when "Shutdown" is written here.
const BOCHS_SHUTDOWN_PORT: u16 = 0x8900;

/// The root cannot go on (an exception in the root): stop the machine with
/// failure where an emulator lets us (as the hypervisor does), else halt.
pub fn fail() -> ! {
    outb(QEMU_EXIT_PORT, QEMU_EXIT_FAILURE);
    for b in b"Shutdown" {
        outb(BOCHS_SHUTDOWN_PORT, *b);
    }
    halt_forever()
}

pub fn power_off(acpi: Option<&Platform>, tsc_hz: u64) -> ! {
    println!("root partition: powering off");
    // SAFETY: `xchg bx, bx` exchanges a register with itself; only Bochs gives it meaning.
    unsafe { asm!("xchg bx, bx", options(nomem, nostack, preserves_flags)) };
    if let Some(p) = acpi.and_then(|a| a.power_off) {
        outw(
            p.pm1a_control,
            PowerOff::control_value(inw(p.pm1a_control), p.s5.0),
        );
        if let Some(b) = p.pm1b_control {
            outw(b, PowerOff::control_value(inw(b), p.s5.1));
        }
        delay_us(tsc_hz, 100_000);
    }
    outb(QEMU_EXIT_PORT, QEMU_EXIT_SUCCESS);
    delay_us(tsc_hz, 10_000);
    println!("root partition: the machine did not power off; halted");
    halt_forever()
}

pub fn reboot(acpi: Option<&Platform>, mem: &Identity, tsc_hz: u64) -> ! {
    println!("root partition: rebooting");
    if let Some(r) = acpi.and_then(|a| a.reset) {
        let a = r.register.address;
        let done = match r.register.space {
            space::SYSTEM_IO if a <= 0xFFFF => {
                outb(a as u16, r.value);
                true
            }
            space::SYSTEM_MEMORY => mem.write_u8(a, r.value),
            space::PCI_CONFIG => {
                let (dev, func, offset) = r.pci_location();
                let addr =
                    1 << 31 | (dev as u32) << 11 | (func as u32) << 8 | (offset as u32 & 0xFC);
                outl(0xCF8, addr);
                outb(0xCFC + (offset as u16 & 3), r.value);
                true
            }
            _ => false,
        };
        if done {
            delay_us(tsc_hz, 100_000);
        }
    }
    // The PCI reset control register of PC chipsets: full reset.
    outb(0xCF9, 0x06);
    delay_us(tsc_hz, 100_000);
    // The keyboard controller's pulse-reset command, once its input buffer is empty.
    for _ in 0..100_000 {
        if inb(0x64) & 2 == 0 {
            break;
        }
        core::hint::spin_loop();
    }
    outb(0x64, 0xFE);
    delay_us(tsc_hz, 100_000);
    println!("root partition: the machine did not reset; halted");
    halt_forever()
}
