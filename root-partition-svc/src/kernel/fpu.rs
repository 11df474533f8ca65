//! `debug fpu`: XMM0-15 loaded with distinct patterns, 1000 CPUID exits, read back.
use core::arch::asm;
use root_partition_svc::fpu::{patterns, EXITS, REGISTERS};

/// Returns the first register that changed, if any.
pub fn check() -> Option<usize> {
    let expected = patterns();
    let mut got = [[0u8; 16]; REGISTERS];
    let mut saved = [[0u8; 16]; REGISTERS];
    // SAFETY: CR4.OSFXSR is set by the hypervisor's start state, so SSE
    // instructions work; the target is soft-float, so no Rust code keeps values
    // in XMM registers, and the block restores XMM0-15 from `saved` anyway
    // before it ends. The three buffers are 256 bytes each, as addressed.
    // RBX (reserved by LLVM, written by CPUID) is kept in a scratch register.
    unsafe {
        asm!(
            "movdqu [{s} + 0], xmm0", "movdqu [{s} + 16], xmm1", "movdqu [{s} + 32], xmm2", "movdqu [{s} + 48], xmm3",
            "movdqu [{s} + 64], xmm4", "movdqu [{s} + 80], xmm5", "movdqu [{s} + 96], xmm6", "movdqu [{s} + 112], xmm7",
            "movdqu [{s} + 128], xmm8", "movdqu [{s} + 144], xmm9", "movdqu [{s} + 160], xmm10", "movdqu [{s} + 176], xmm11",
            "movdqu [{s} + 192], xmm12", "movdqu [{s} + 208], xmm13", "movdqu [{s} + 224], xmm14", "movdqu [{s} + 240], xmm15",
            "movdqu xmm0, [{p} + 0]", "movdqu xmm1, [{p} + 16]", "movdqu xmm2, [{p} + 32]", "movdqu xmm3, [{p} + 48]",
            "movdqu xmm4, [{p} + 64]", "movdqu xmm5, [{p} + 80]", "movdqu xmm6, [{p} + 96]", "movdqu xmm7, [{p} + 112]",
            "movdqu xmm8, [{p} + 128]", "movdqu xmm9, [{p} + 144]", "movdqu xmm10, [{p} + 160]", "movdqu xmm11, [{p} + 176]",
            "movdqu xmm12, [{p} + 192]", "movdqu xmm13, [{p} + 208]", "movdqu xmm14, [{p} + 224]", "movdqu xmm15, [{p} + 240]",
            "mov {rbx_save}, rbx",
            "2:",
            "mov eax, 1",
            "xor ecx, ecx",
            "cpuid",
            "dec {n}",
            "jnz 2b",
            "mov rbx, {rbx_save}",
            "movdqu [{g} + 0], xmm0", "movdqu [{g} + 16], xmm1", "movdqu [{g} + 32], xmm2", "movdqu [{g} + 48], xmm3",
            "movdqu [{g} + 64], xmm4", "movdqu [{g} + 80], xmm5", "movdqu [{g} + 96], xmm6", "movdqu [{g} + 112], xmm7",
            "movdqu [{g} + 128], xmm8", "movdqu [{g} + 144], xmm9", "movdqu [{g} + 160], xmm10", "movdqu [{g} + 176], xmm11",
            "movdqu [{g} + 192], xmm12", "movdqu [{g} + 208], xmm13", "movdqu [{g} + 224], xmm14", "movdqu [{g} + 240], xmm15",
            "movdqu xmm0, [{s} + 0]", "movdqu xmm1, [{s} + 16]", "movdqu xmm2, [{s} + 32]", "movdqu xmm3, [{s} + 48]",
            "movdqu xmm4, [{s} + 64]", "movdqu xmm5, [{s} + 80]", "movdqu xmm6, [{s} + 96]", "movdqu xmm7, [{s} + 112]",
            "movdqu xmm8, [{s} + 128]", "movdqu xmm9, [{s} + 144]", "movdqu xmm10, [{s} + 160]", "movdqu xmm11, [{s} + 176]",
            "movdqu xmm12, [{s} + 192]", "movdqu xmm13, [{s} + 208]", "movdqu xmm14, [{s} + 224]", "movdqu xmm15, [{s} + 240]",
            s = in(reg) saved.as_mut_ptr(),
            p = in(reg) expected.as_ptr(),
            g = in(reg) got.as_mut_ptr(),
            n = inout(reg) EXITS as u64 => _,
            rbx_save = out(reg) _,
            out("eax") _,
            out("ecx") _,
            out("edx") _,
            options(nostack),
        )
    };
    root_partition_svc::fpu::first_corrupted(&expected, &got)
}
