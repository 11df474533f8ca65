//! Per-processor data, found through the GS base.
use crate::x86::{gdt::CpuTables, msr};

#[repr(C)]
pub struct PerCpu {
    /// First field: `gs:[0]` is the structure's own address.
    self_addr: u64,
    pub index: u32,
    pub apic_id: u32,
    pub tables: CpuTables,
}

impl PerCpu {
    pub const fn new(index: u32, apic_id: u32) -> Self {
        Self {
            self_addr: 0,
            index,
            apic_id,
            tables: CpuTables::new(),
        }
    }
}

/// Makes `p` this processor's data.
pub fn install(p: &'static mut PerCpu) {
    p.self_addr = p as *mut PerCpu as u64;
    // SAFETY: GS is not used by Rust code; only `current` reads through it.
    unsafe { msr::write(msr::IA32_GS_BASE, p.self_addr) };
}

pub fn current() -> Option<&'static PerCpu> {
    let base = msr::read(msr::IA32_GS_BASE);
    // SAFETY: a non-zero GS base was set by `install` to a 'static PerCpu.
    (base != 0).then(|| unsafe { &*(base as *const PerCpu) })
}

/// This processor's index (0 for the boot processor, also before `install`).
pub fn index() -> u32 {
    current().map_or(0, |p| p.index)
}
