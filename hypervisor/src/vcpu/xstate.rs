//! A VP's extended register state, saved after every exit and restored before
//! every entry, so the registers a partition left are its own whatever runs on
//! the LP in between (Intel SDM vol. 1 chapters 10.5 and 13).
//!
//! x87 and SSE go through FXSAVE/FXRSTOR, which do not depend on XCR0: a
//! partition may use SSE without ever enabling it in XCR0. The components
//! beyond them (AVX, ...) that the partition's XCR0 enables go through
//! XSAVE/XRSTOR into the same image, whose first 512 bytes are the FXSAVE
//! format (the requested-feature mask leaves x87 and SSE to FXSAVE).
use crate::memory;
use crate::x86::cpu;
use core::arch::asm;

pub struct XState {
    /// Page-aligned area in hypervisor memory (XSAVE needs 64-byte alignment).
    area: u64,
    xsave: bool,
}

/// x87 and SSE: the components FXSAVE covers.
const LEGACY: u64 = 0b11;

impl XState {
    /// An area big enough for every component the processor supports,
    /// holding the current (initial) state.
    pub fn new() -> Result<Self, &'static str> {
        let xsave = cpu::cpuid(1, 0).ecx & (1 << 26) != 0 && cpu::read_cr4() & (1 << 18) != 0;
        let size = if xsave {
            (cpu::cpuid(0xD, 0).ecx as u64).max(512 + 64)
        } else {
            512
        };
        let area = memory::alloc_zeroed_pages(size.div_ceil(4096))
            .ok_or("no memory for extended state")?;
        let s = XState { area, xsave };
        s.save();
        Ok(s)
    }

    /// An area holding the state after reset (x87 control word 0x37F, MXCSR
    /// 0x1F80, every other component initial): a new guest VP's, so it
    /// sees nothing of whatever ran on the LP before.
    pub fn new_initial() -> Result<Self, &'static str> {
        let s = Self::new()?;
        let len = if s.xsave {
            (cpu::cpuid(0xD, 0).ecx as u64).max(512 + 64)
        } else {
            512
        };
        // SAFETY: the area is ours, `len` bytes long (as allocated in `new`).
        unsafe {
            core::ptr::write_bytes(s.area as *mut u8, 0, len as usize);
            *(s.area as *mut u16) = 0x37F;
            *((s.area + 24) as *mut u32) = 0x1F80;
        }
        Ok(s)
    }

    /// Returns the area's pages.
    pub fn release(self) {
        let len = if self.xsave {
            (cpu::cpuid(0xD, 0).ecx as u64).max(512 + 64)
        } else {
            512
        };
        memory::free_pages(self.area, len.div_ceil(4096));
    }

    /// The components beyond x87 and SSE that XCR0 enables now.
    fn extended(&self) -> u64 {
        if self.xsave {
            cpu::xgetbv0() & !LEGACY
        } else {
            0
        }
    }

    /// Saves the live extended registers into the area.
    pub fn save(&self) {
        // SAFETY: the area is ours, page-aligned and at least 512 bytes.
        unsafe { asm!("fxsave64 [{}]", in(reg) self.area, options(nostack)) };
        let mask = self.extended();
        if mask != 0 {
            // SAFETY: the area is as large as CPUID 0xD says XSAVE may write for
            // every supported component; the mask excludes the legacy region.
            unsafe {
                asm!("xsave64 [{}]", in(reg) self.area, in("eax") mask as u32, in("edx") (mask >> 32) as u32, options(nostack))
            };
        }
    }

    /// Loads the extended registers from the area.
    pub fn restore(&self) {
        // SAFETY: the area holds an FXSAVE image written by `save` (MXCSR valid).
        unsafe { asm!("fxrstor64 [{}]", in(reg) self.area, options(nostack, readonly)) };
        let mask = self.extended();
        if mask != 0 {
            // SAFETY: the area's XSAVE header was written by `save` or is still
            // zero (components then initialised); XRSTOR only loads registers.
            unsafe {
                asm!("xrstor64 [{}]", in(reg) self.area, in("eax") mask as u32, in("edx") (mask >> 32) as u32, options(nostack, readonly))
            };
        }
    }
}
