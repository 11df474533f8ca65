//! Physical memory through the identity map the hypervisor built (GPA = SPA =
//! virtual address below [`Identity::top`]).
use core::arch::asm;
use root_partition_svc::acpi::PhysMem;

pub struct Identity {
    /// A lower bound of the identity map's end (`boot::identity_top`).
    pub top: u64,
}

impl Identity {
    /// Whether `[addr, addr + len)` is mapped: below `top`, and not in page 0
    /// (unmapped, so that null pointers fault).
    pub fn covers(&self, addr: u64, len: u64) -> bool {
        addr >= 4096 && addr.checked_add(len).is_some_and(|end| end <= self.top)
    }

    /// Reads the u64 at `addr` (any alignment) with one load. Memory the
    /// root does not own (the hypervisor's) makes the hypervisor stop the
    /// root, by design: `debug read` is how tests check that.
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        if !self.covers(addr, 8) {
            return None;
        }
        let v: u64;
        // SAFETY: the address is identity-mapped (checked above); a read has
        // no side effect on RAM; an unaligned load is allowed (AC is off).
        unsafe {
            asm!("mov {v}, qword ptr [{a}]", a = in(reg) addr, v = out(reg) v, options(readonly, nostack, preserves_flags))
        };
        Some(v)
    }

    /// Reads a 32-bit device register (MMIO, aligned) at `addr`.
    pub fn mmio_read_u32(&self, addr: u64) -> Option<u32> {
        if !self.covers(addr, 4) || !addr.is_multiple_of(4) {
            return None;
        }
        // SAFETY: identity-mapped and aligned (checked above); the caller
        // names a device register the firmware's tables gave it.
        Some(unsafe { core::ptr::read_volatile(addr as *const u32) })
    }

    /// Writes a 32-bit device register (MMIO, aligned) at `addr`.
    pub fn mmio_write_u32(&self, addr: u64, v: u32) -> bool {
        if !self.covers(addr, 4) || !addr.is_multiple_of(4) {
            return false;
        }
        // SAFETY: as in `mmio_read_u32`.
        unsafe { core::ptr::write_volatile(addr as *mut u32, v) };
        true
    }

    /// Writes one byte (the ACPI reset register in memory space).
    pub fn write_u8(&self, addr: u64, v: u8) -> bool {
        if !self.covers(addr, 1) {
            return false;
        }
        // SAFETY: identity-mapped (checked above); the caller writes a
        // device register the firmware named for this purpose.
        unsafe { core::ptr::write_volatile(addr as *mut u8, v) };
        true
    }
}

impl PhysMem for Identity {
    fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        // Page 0 is not mapped: the EBDA pointer at 0x40E reads as absent
        // (the hypervisor hands the root the RSDP it found).
        if !self.covers(addr, len as u64) {
            return None;
        }
        // SAFETY: the range is identity-mapped (checked above) and outside
        // the hypervisor's memory as far as the caller (ACPI tables, BIOS
        // areas) knows; firmware tables are not written while the root runs.
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    }
}
