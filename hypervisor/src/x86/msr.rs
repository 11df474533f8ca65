//! Model-specific registers.
use core::arch::asm;

pub const IA32_APIC_BASE: u32 = 0x1B;
pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
pub const IA32_VMX_BASIC: u32 = 0x480;
pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48B;
pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48C;
pub const IA32_EFER: u32 = 0xC000_0080;
pub const IA32_GS_BASE: u32 = 0xC000_0101;
/// x2APIC registers are MSRs 0x800 + (xAPIC offset >> 4).
pub const X2APIC_BASE: u32 = 0x800;

/// Reads an MSR. The caller names an MSR the processor implements (CPUID says
/// so); reading one it lacks raises #GP, which the hypervisor reports as fatal.
pub fn read(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdmsr` has no memory effects; an unimplemented MSR faults into
    // the exception handler, never into undefined behaviour.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (hi as u64) << 32 | lo as u64
}

/// Writes an MSR.
///
/// # Safety
/// MSRs change how the processor runs (paging, segment bases, the APIC): the
/// caller makes sure the new value keeps every Rust invariant.
pub unsafe fn write(msr: u32, value: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}
