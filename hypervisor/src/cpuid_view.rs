//! CPUID as a partition sees it: the Hyper-V leaves with the partition's
//! privileges and limits, and the processor's own leaves with the
//! hypervisor bit set and what the partition may not use hidden.
use crate::x86::cpu;
use hv_abi::cpuid;

/// What differs between the root's view and a guest's.
pub struct View {
    /// Leaf 0x40000003 EAX, EBX and EDX (the partition's privileges and
    /// the optional features it may use).
    pub privileges: (u32, u32, u32),
    /// Leaf 0x40000004 EAX (recommendations) and EBX (spinlock retries:
    /// all ones, never notify).
    pub hints: (u32, u32),
    /// Leaf 0x40000005 EAX and EBX (VPs and LPs the partition may have).
    pub limits: (u32, u32),
    /// A guest partition: the processor's leaves go through
    /// `hypervisor_core::cpuid_policy` (a list we choose). The root sees the
    /// processor's own, less VMX, SVM and the TSC-deadline timer.
    pub guest: bool,
}

/// The answer for `leaf`/`sub` on VP `vp` (whose APIC id is its index).
pub fn answer(view: &View, leaf: u32, sub: u32, vp: u32) -> (u32, u32, u32, u32) {
    match leaf {
        cpuid::VENDOR_AND_MAX => (
            cpuid::MAX_LEAF,
            cpuid::VENDOR[0],
            cpuid::VENDOR[1],
            cpuid::VENDOR[2],
        ),
        cpuid::INTERFACE => (cpuid::INTERFACE_HV1, 0, 0, 0),
        cpuid::VERSION => {
            let (maj, min) = crate::version_numbers();
            (0, (maj as u32) << 16 | min as u32, 0, 0)
        }
        cpuid::FEATURES => (view.privileges.0, view.privileges.1, 0, view.privileges.2),
        cpuid::RECOMMENDATIONS => (view.hints.0, view.hints.1, 0, 0),
        cpuid::LIMITS => (view.limits.0, view.limits.1, 0, 0),
        cpuid::HARDWARE_FEATURES..=0x4000_00FF => (0, 0, 0, 0),
        _ if view.guest => {
            let r = cpu::cpuid(leaf, sub);
            hypervisor_core::cpuid_policy::guest_leaf(leaf, sub, (r.eax, r.ebx, r.ecx, r.edx), vp)
        }
        _ => {
            let r = cpu::cpuid(leaf, sub);
            let (mut a, mut b, mut c, mut d) = (r.eax, r.ebx, r.ecx, r.edx);
            match leaf {
                1 => {
                    // x2APIC (virtual) and the hypervisor bit; VMX and the
                    // TSC-deadline timer hidden.
                    c = (c | cpuid::HYPERVISOR_PRESENT | 1 << 21) & !((1 << 5) | (1 << 24));
                    b = (b & 0x00FF_FFFF) | (vp << 24);
                }
                // x2APIC topology: the x2APIC ID is the VP index.
                0xB | 0x1F => d = vp,
                0x8000_0001 => c &= !(1 << 2), // SVM
                0x8000_000A => (a, b, c, d) = (0, 0, 0, 0),
                _ => {}
            }
            (a, b, c, d)
        }
    }
}

/// The answers of one VP's leaves that depend on nothing but the VP, for
/// sub-leaf 0: the basic leaves but XSAVE's (0xD follows XCR0), the Hyper-V
/// leaves and the extended leaves up to 0x80000008. Computed once, so the
/// common exits do not execute CPUID in the hypervisor (on hardware the
/// costliest part of answering one).
pub struct CpuidCache {
    basic: [(u32, u32, u32, u32); 0x20],
    hyperv: [(u32, u32, u32, u32); 7],
    extended: [(u32, u32, u32, u32); 9],
}

impl CpuidCache {
    pub fn new(answer: impl Fn(u32) -> (u32, u32, u32, u32)) -> Self {
        CpuidCache {
            basic: core::array::from_fn(|i| answer(i as u32)),
            hyperv: core::array::from_fn(|i| answer(0x4000_0000 + i as u32)),
            extended: core::array::from_fn(|i| answer(0x8000_0000 + i as u32)),
        }
    }

    /// The answer for `leaf`/`sub` if it is cached.
    pub fn get(&self, leaf: u32, sub: u32) -> Option<(u32, u32, u32, u32)> {
        if sub != 0 {
            return None;
        }
        match leaf {
            0xD => None,
            0..=0x1F => Some(self.basic[leaf as usize]),
            0x4000_0000..=0x4000_0006 => Some(self.hyperv[(leaf - 0x4000_0000) as usize]),
            0x8000_0000..=0x8000_0008 => Some(self.extended[(leaf - 0x8000_0000) as usize]),
            _ => None,
        }
    }
}

/// CPUID as a guest sees it: the processor's leaves as
/// `hypervisor_core::cpuid_policy` lists them, and the Hyper-V leaves with
/// a guest's privileges (no partition management) and the enlightenments
/// that work for guests: the reference counter and reference TSC page, the
/// frequency MSRs, the hypercall and VP-index MSRs, the SynIC with
/// HvPostMessage and HvSignalEvent, the synthetic timers with their
/// direct mode, the APIC MSRs and the VP assist page's EOI assist
/// (docs/hypercalls.md); the recommendation not to use AutoEOI (hint bit
/// 9: the guest EOIs its SynIC interrupts) and to use the APIC MSRs and the
/// EOI assist (hint bit 3).
pub fn for_guest(leaf: u32, sub: u32, vp: u32) -> (u32, u32, u32, u32) {
    use cpuid::privilege::*;
    let view = View {
        privileges: (
            ACCESS_PARTITION_REFERENCE_COUNTER
                | ACCESS_SYNIC_REGS
                | ACCESS_HYPERCALL_MSRS
                | ACCESS_VP_INDEX
                | ACCESS_FREQUENCY_MSRS
                | ACCESS_SYNTHETIC_TIMER_REGS
                | ACCESS_INTR_CTRL_REGS
                // Only where a page can describe the TSC (above 10 MHz).
                | if crate::time::reference().page_usable() {
                    ACCESS_PARTITION_REFERENCE_TSC
                } else {
                    0
                },
            POST_MESSAGES | SIGNAL_EVENTS,
            cpuid::features_edx::FREQUENCY_MSRS_AVAILABLE
                | cpuid::features_edx::GUEST_CRASH_MSRS
                | cpuid::features_edx::DIRECT_SYNTHETIC_TIMERS,
        ),
        hints: (
            cpuid::hints::DEPRECATE_AUTO_EOI | cpuid::hints::APIC_ACCESS_RECOMMENDED,
            0,
        ),
        limits: (hv_abi::partition::MAX_VPS, 0),
        guest: true,
    };
    answer(&view, leaf, sub, vp)
}

/// The CR4 bits a guest VP may own: those of the features its CPUID offers
/// (`hypervisor_core::control_regs`). Computed once.
pub fn guest_cr4_allowed() -> u64 {
    static ALLOWED: spin::Once<u64> = spin::Once::new();
    *ALLOWED.call_once(|| {
        let (_, _, leaf1_ecx, _) = for_guest(1, 0, 0);
        let max = for_guest(0, 0, 0).0;
        let (_, leaf7_ebx, leaf7_ecx, _) = if max >= 7 {
            for_guest(7, 0, 0)
        } else {
            (0, 0, 0, 0)
        };
        hypervisor_core::control_regs::Cr4Features::from_cpuid(leaf1_ecx, leaf7_ebx, leaf7_ecx)
            .guest_allowed()
    })
}

/// CPUID as the root sees it: the processor's, with the hypervisor bit set,
/// VMX and SVM hidden, and the Hyper-V leaves.
pub fn for_root(leaf: u32, sub: u32, vp: u32, vp_count: u32) -> (u32, u32, u32, u32) {
    use cpuid::privilege::*;
    let view = View {
        privileges: (
            ACCESS_PARTITION_REFERENCE_COUNTER
                | ACCESS_SYNIC_REGS
                | ACCESS_HYPERCALL_MSRS
                | ACCESS_VP_INDEX,
            CREATE_PARTITIONS
                | CPU_MANAGEMENT
                | POST_MESSAGES
                | SIGNAL_EVENTS
                | CREATE_PORT
                | CONNECT_PORT,
            0,
        ),
        hints: (0, 0xFFFF_FFFF),
        limits: (vp_count, vp_count),
        guest: false,
    };
    answer(&view, leaf, sub, vp)
}
