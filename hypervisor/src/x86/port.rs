//! Port I/O.
use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// Port writes can reconfigure devices; callers name ports of devices the
/// hypervisor owns (serial, PIT, ACPI PM, emulator exit devices).
pub fn outb(port: u16, value: u8) {
    // SAFETY: `out` has no memory effects visible to Rust; the devices written
    // are owned by the hypervisor at the call sites.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    };
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: `in` from a port owned by the hypervisor; no memory effects.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}
