//! The processor a guest VP is offered: CPUID leaves as a list we choose.
//! Every leaf and feature bit a guest sees is named here; anything else the
//! host has (new leaves, new bits) is hidden until someone decides it works
//! in a guest on both vendors. Bit positions: Intel SDM vol. 2A "CPUID",
//! AMD APM vol. 3 appendix E.

/// The highest basic leaf a guest sees (0xD: XSAVE, answered as zero).
pub const MAX_BASIC: u32 = 0xD;
/// The highest extended leaf a guest sees (address sizes).
pub const MAX_EXTENDED: u32 = 0x8000_0008;

const fn bits(list: &[u32]) -> u32 {
    let mut m = 0;
    let mut i = 0;
    while i < list.len() {
        m |= 1 << list[i];
        i += 1;
    }
    m
}

/// Leaf 1 EDX kept: FPU VME DE PSE TSC MSR PAE CX8 APIC SEP PGE CMOV PAT
/// PSE36 CLFSH MMX FXSR SSE SSE2. Hidden: MCE and MCA (no machine-check
/// banks), MTRR (no MTRR MSRs: memory types come from PAT), PN, DS, ACPI
/// thermal, SS, HTT, TM, PBE.
pub const LEAF1_EDX: u32 = bits(&[
    0, 1, 2, 3, 4, 5, 6, 8, 9, 11, 13, 15, 16, 17, 19, 23, 24, 25, 26,
]);
/// Leaf 1 ECX kept: SSE3 PCLMULQDQ SSSE3 CX16 PCID SSE4.1 SSE4.2 MOVBE
/// POPCNT AES RDRAND; x2APIC and the hypervisor bit are set. Hidden:
/// DTES64, MONITOR, DS-CPL, VMX, SMX, EST, TM2, CNXT-ID, SDBG, FMA (AVX
/// state needs XSAVE), xTPR, PDCM (no performance MSRs), DCA, TSC-deadline
/// (the virtual APIC has no deadline mode), XSAVE, OSXSAVE, AVX, F16C.
pub const LEAF1_ECX: u32 = bits(&[0, 1, 9, 13, 17, 19, 20, 22, 23, 25, 30]);
pub const LEAF1_ECX_SET: u32 = bits(&[21, 31]);
/// Leaf 6 EAX: only ARAT (the APIC timer runs in every C-state), which
/// Linux needs to use the APIC timer without a PIT or HPET.
pub const LEAF6_EAX: u32 = 1 << 2;
/// Leaf 7.0 EBX kept: FSGSBASE BMI1 SMEP BMI2 ERMS RDSEED ADX SMAP
/// CLFLUSHOPT CLWB SHA. Hidden: TSC_ADJUST (not switched per VP), HLE and
/// RTM, AVX2 and AVX-512 (XSAVE), INVPCID (not enabled on VMX), RDT, MPX,
/// PT.
pub const LEAF7_EBX: u32 = bits(&[0, 3, 7, 8, 9, 18, 19, 20, 23, 24, 29]);
/// Leaf 7.0 ECX kept: UMIP (its CR4 bit follows it). Hidden: PKU, WAITPKG,
/// LA57, RDPID, CET, PKS and the rest.
pub const LEAF7_ECX: u32 = 1 << 2;
/// Leaf 7.0 EDX: nothing (SPEC_CTRL, ARCH_CAPABILITIES and the other
/// speculation-control MSRs are not switched per VP).
pub const LEAF7_EDX: u32 = 0;
/// Leaf 0x80000001 ECX kept: LAHF/SAHF, LZCNT, SSE4A, misaligned SSE,
/// PREFETCHW. Hidden: SVM, extended APIC space, OSVW, IBS, SKINIT, WDT,
/// TopoExt, the performance-counter extensions, MONITORX.
pub const EXT1_ECX: u32 = bits(&[0, 5, 6, 7, 8]);
/// Leaf 0x80000001 EDX kept: the leaf-1 bits AMD repeats here (less MCE,
/// MTRR, MCA), SYSCALL, NX, MMXEXT, FFXSR, 1 GiB pages, long mode. Hidden:
/// RDTSCP (TSC_AUX is not switched per VP), 3DNow!.
pub const EXT1_EDX: u32 = bits(&[
    0, 1, 2, 3, 4, 5, 6, 8, 9, 11, 13, 15, 16, 17, 20, 22, 23, 24, 25, 26, 29,
]);

/// A guest's answer for processor leaf `leaf`/`sub`, given the host's
/// answer `host` for the same leaf. Leaves outside the list read as zero.
pub fn guest_leaf(
    leaf: u32,
    sub: u32,
    host: (u32, u32, u32, u32),
    vp: u32,
) -> (u32, u32, u32, u32) {
    let (a, b, c, d) = host;
    match leaf {
        0 => (a.min(MAX_BASIC), b, c, d),
        // Signature; brand index, CLFLUSH size, logical count, APIC ID.
        1 => (
            a,
            (b & 0x00FF_FFFF) | (vp << 24),
            (c & LEAF1_ECX) | LEAF1_ECX_SET,
            d & LEAF1_EDX,
        ),
        // Cache descriptors and deterministic cache parameters.
        2 | 4 => (a, b, c, d),
        6 => (LEAF6_EAX, 0, 0, 0),
        7 if sub == 0 => (0, b & LEAF7_EBX, c & LEAF7_ECX, d & LEAF7_EDX),
        // x2APIC topology: the x2APIC ID is the VP index.
        0xB => (a, b, c, vp),
        0x8000_0000 => (a.min(MAX_EXTENDED), b, c, d),
        0x8000_0001 => (a, b, c & EXT1_ECX, d & EXT1_EDX),
        // Brand string; L1 and L2/L3 cache and TLB information.
        0x8000_0002..=0x8000_0006 => (a, b, c, d),
        // Address sizes and core count; no speculation-control bits (EBX).
        0x8000_0008 => (a, 0, c, 0),
        _ => (0, 0, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: (u32, u32, u32, u32) = (!0, !0, !0, !0);

    #[test]
    fn what_linux_must_not_see_is_hidden() {
        let (_, _, c, d) = guest_leaf(1, 0, ALL, 0);
        for bit in [7, 12, 14] {
            assert_eq!(d & (1 << bit), 0, "leaf 1 EDX bit {bit} (MCE/MTRR/MCA)");
        }
        for bit in [3, 5, 15, 24, 26, 27, 28] {
            assert_eq!(c & (1 << bit), 0, "leaf 1 ECX bit {bit}");
        }
        assert_ne!(c & (1 << 21), 0, "x2APIC");
        assert_ne!(c & (1 << 31), 0, "hypervisor");
        let (_, b, c, d) = guest_leaf(7, 0, ALL, 0);
        assert_eq!(b & (1 << 10), 0, "INVPCID");
        assert_eq!(b & (1 << 1), 0, "TSC_ADJUST");
        assert_eq!(c & (1 << 16), 0, "LA57");
        assert_eq!(c & (1 << 22), 0, "RDPID");
        assert_eq!(d, 0, "speculation control");
        let (_, _, c, d) = guest_leaf(0x8000_0001, 0, ALL, 0);
        assert_eq!(d & (1 << 27), 0, "RDTSCP");
        assert_eq!(c & (1 << 2), 0, "SVM");
        assert_eq!(c & (1 << 23), 0, "PerfCtrExtCore");
        // SEV, SVM features, performance monitoring: gone.
        for leaf in [0xA, 0xD, 0x12, 0x14, 0x8000_000A, 0x8000_001F] {
            assert_eq!(guest_leaf(leaf, 0, ALL, 0), (0, 0, 0, 0), "leaf {leaf:#x}");
        }
        assert_eq!(guest_leaf(0, 0, ALL, 0).0, MAX_BASIC);
        assert_eq!(guest_leaf(0x8000_0000, 0, ALL, 0).0, MAX_EXTENDED);
        assert_eq!(guest_leaf(6, 0, ALL, 0), (4, 0, 0, 0), "ARAT only");
        assert_eq!(guest_leaf(7, 1, ALL, 0), (0, 0, 0, 0));
    }

    #[test]
    fn the_vp_index_is_the_apic_id() {
        assert_eq!(guest_leaf(1, 0, ALL, 3).1 >> 24, 3);
        assert_eq!(guest_leaf(0xB, 0, ALL, 5).3, 5);
    }

    proptest::proptest! {
        #[test]
        fn never_more_than_the_host(leaf in proptest::prelude::any::<u32>(), sub in 0u32..4,
                                    a: u32, b: u32, c: u32, d: u32) {
            let (ga, gb, gc, gd) = guest_leaf(leaf, sub, (a, b, c, d), 0);
            if leaf == 1 {
                proptest::prop_assert_eq!(gc & !LEAF1_ECX_SET & !c, 0);
                proptest::prop_assert_eq!(gd & !d, 0);
            }
            if matches!(leaf, 7 | 0x8000_0001) {
                proptest::prop_assert_eq!((gb & !b, gc & !c, gd & !d), (0, 0, 0));
            }
            let _ = ga;
        }
    }
}
