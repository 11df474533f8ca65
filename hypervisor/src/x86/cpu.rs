//! CPUID, control registers, the time-stamp counter and halting.
use core::arch::asm;
use core::arch::x86_64::{__cpuid_count, _rdtsc, CpuidResult};

pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    __cpuid_count(leaf, subleaf)
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is always available in ring 0 and only reads the counter.
    unsafe { _rdtsc() }
}

pub fn read_cr0() -> u64 {
    let v;
    // SAFETY: reading a control register has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn read_cr2() -> u64 {
    let v;
    // SAFETY: as above.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Sets CR2 (a VP's last page-fault address, which VMX does not switch).
pub fn write_cr2(v: u64) {
    // SAFETY: CR2 only records the last page-fault address; nothing in the
    // hypervisor reads it except to hand it back to the VP it belongs to.
    unsafe { asm!("mov cr2, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
}

pub fn read_cr3() -> u64 {
    let v;
    // SAFETY: as above.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn read_cr4() -> u64 {
    let v;
    // SAFETY: as above.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// # Safety
/// The new value must keep paging, caching and protection consistent with
/// what the running code relies on.
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: the caller's contract.
    unsafe { asm!("mov cr0, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// # Safety
/// The tables must map this code, its stack and every live object at the
/// same addresses as the tables they replace.
pub unsafe fn write_cr3(v: u64) {
    // SAFETY: the caller's contract.
    unsafe { asm!("mov cr3, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// # Safety
/// As for `write_cr0`.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: the caller's contract.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Sets XCR0 (the caller validated `value` against CPUID leaf 0xD; CR4.OSXSAVE is set).
pub fn xsetbv(value: u64) {
    // SAFETY: a validated XCR0 value only changes which extended state XSAVE
    // manages; the hypervisor itself uses no extended state.
    unsafe {
        asm!("xsetbv", in("ecx") 0, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack))
    };
}

/// XCR0 (CR4.OSXSAVE must be set).
pub fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0; callers check OSXSAVE first.
    unsafe {
        asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (hi as u64) << 32 | lo as u64
}

/// Stops this processor for good: interrupts off, halt forever (an NMI or SMI
/// returns to the loop).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: disabling interrupts and halting touch no memory.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}

/// Lets pending interrupts in for one instruction (the host's timer after an
/// SVM interrupt exit), then masks them again.
pub fn take_pending_interrupts() {
    // SAFETY: the only unmasked interrupt sources are the host's own timer,
    // whose handler acknowledges and returns (the PIC is masked at boot).
    unsafe { asm!("sti", "nop", "cli", options(nomem, nostack)) };
}

/// Sleeps until an interrupt arrives (taken with interrupts enabled for the
/// `hlt` only; the host's own vectors are acknowledged and return).
pub fn sleep_until_interrupt() {
    // SAFETY: as for `take_pending_interrupts`; `sti; hlt` cannot miss a
    // wake-up: the interrupt shadow of STI covers HLT.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

pub fn pause() {
    core::hint::spin_loop();
}

/// MFENCE; LFENCE: earlier stores are globally visible before a following
/// x2APIC ICR write (a WRMSR that does not serialize) sends the IPI.
pub fn store_fence_for_ipi() {
    // SAFETY: fences only order this processor's memory accesses.
    unsafe { asm!("mfence", "lfence", options(nostack, preserves_flags)) };
}

/// The processor vendor, from CPUID leaf 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

pub fn vendor() -> Vendor {
    let r = cpuid(0, 0);
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&r.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&r.edx.to_le_bytes());
    id[8..].copy_from_slice(&r.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Whether the processor maps 1 GiB pages (CPUID 0x80000001 EDX bit 26).
pub fn has_1g_pages() -> bool {
    cpuid(0x8000_0000, 0).eax >= 0x8000_0001 && cpuid(0x8000_0001, 0).edx & (1 << 26) != 0
}

/// This processor's initial APIC ID (CPUID 1 EBX bits 31:24; the x2APIC ID
/// from leaf 0xB when present).
pub fn apic_id() -> u32 {
    if cpuid(0, 0).eax >= 0xB && cpuid(0xB, 0).ebx != 0 {
        return cpuid(0xB, 0).edx;
    }
    cpuid(1, 0).ebx >> 24
}

/// Reads debug register DR`N` (0-3 or 6).
pub fn read_dr<const N: u8>() -> u64 {
    let v: u64;
    // SAFETY: reading a debug register has no side effects at CPL 0.
    unsafe {
        match N {
            0 => asm!("mov {}, dr0", out(reg) v, options(nomem, nostack, preserves_flags)),
            1 => asm!("mov {}, dr1", out(reg) v, options(nomem, nostack, preserves_flags)),
            2 => asm!("mov {}, dr2", out(reg) v, options(nomem, nostack, preserves_flags)),
            3 => asm!("mov {}, dr3", out(reg) v, options(nomem, nostack, preserves_flags)),
            _ => asm!("mov {}, dr6", out(reg) v, options(nomem, nostack, preserves_flags)),
        }
    }
    v
}

/// Writes debug register DR`N` (0-3 or 6). Breakpoint addresses take effect
/// only where DR7 enables them, and the hypervisor's DR7 is 0x400 (VM exits
/// load it, VMX; the host save area holds it, SVM): no breakpoint fires in it.
pub fn write_dr<const N: u8>(v: u64) {
    // SAFETY: see above; DR6 is a status register.
    unsafe {
        match N {
            0 => asm!("mov dr0, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            1 => asm!("mov dr1, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            2 => asm!("mov dr2, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            3 => asm!("mov dr3, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            _ => asm!("mov dr6, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
        }
    }
}

/// VERW with a valid data selector: on processors that enumerate MD_CLEAR it
/// also overwrites the CPU's internal buffers (MDS mitigation).
pub fn clear_cpu_buffers() {
    let selector: u16 = super::gdt::KERNEL_DATA;
    // SAFETY: VERW only sets ZF from the selector's descriptor.
    unsafe { asm!("verw word ptr [{}]", in(reg) &selector, options(nostack)) };
}
