//! What each processor offers for virtualization: VMX with EPT (Intel SDM
//! vol. 3 appendix A) or SVM with nested paging (AMD APM vol. 2 section 15 and
//! CPUID Fn8000_000A). Optional capability MSRs are read only when advertised:
//! reading one the processor lacks faults.
use crate::x86::{cpu, msr};
use core::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VmxCaps {
    pub revision_id: u32,
    /// IA32_FEATURE_CONTROL: locked, and VMX outside SMX allowed.
    pub feature_control_locked: bool,
    pub enabled_outside_smx: bool,
    pub true_controls: bool,
    pub secondary_controls: bool,
    pub ept: bool,
    pub vpid: bool,
    pub unrestricted_guest: bool,
    pub preemption_timer: bool,
    pub ept_2m: bool,
    pub ept_1g: bool,
    pub ept_wb: bool,
    pub ept_accessed_dirty: bool,
    pub invept: bool,
    pub invvpid: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SvmCaps {
    pub npt: bool,
    pub nrip_save: bool,
    pub flush_by_asid: bool,
    pub vmcb_clean: bool,
    pub decode_assists: bool,
    pub lbr_virt: bool,
    pub pause_filter: bool,
    pub avic: bool,
    pub asids: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caps {
    Vmx(VmxCaps),
    Svm(SvmCaps),
    None,
}

impl Caps {
    /// The second-level translation the summary line names.
    pub fn slat(&self) -> &'static str {
        match self {
            Caps::Vmx(v) if v.ept => "ept",
            Caps::Svm(s) if s.npt => "npt",
            _ => "none",
        }
    }
}

pub fn detect() -> Caps {
    match cpu::vendor() {
        cpu::Vendor::Intel if cpu::cpuid(1, 0).ecx & (1 << 5) != 0 => Caps::Vmx(detect_vmx()),
        cpu::Vendor::Amd
            if cpu::cpuid(0x8000_0000, 0).eax >= 0x8000_000A
                && cpu::cpuid(0x8000_0001, 0).ecx & (1 << 2) != 0 =>
        {
            Caps::Svm(detect_svm())
        }
        _ => Caps::None,
    }
}

fn bit(v: u64, n: u32) -> bool {
    v & (1 << n) != 0
}

fn detect_vmx() -> VmxCaps {
    let fc = msr::read(msr::IA32_FEATURE_CONTROL);
    let basic = msr::read(msr::IA32_VMX_BASIC);
    let pin = msr::read(msr::IA32_VMX_PINBASED_CTLS);
    let proc = msr::read(msr::IA32_VMX_PROCBASED_CTLS);
    // Allowed-1 settings are the high 32 bits of each control MSR.
    let secondary_controls = bit(proc, 32 + 31);
    let proc2 = if secondary_controls {
        msr::read(msr::IA32_VMX_PROCBASED_CTLS2)
    } else {
        0
    };
    let (ept, vpid) = (bit(proc2, 32 + 1), bit(proc2, 32 + 5));
    let cap = if ept || vpid {
        msr::read(msr::IA32_VMX_EPT_VPID_CAP)
    } else {
        0
    };
    VmxCaps {
        revision_id: basic as u32 & 0x7FFF_FFFF,
        feature_control_locked: bit(fc, 0),
        enabled_outside_smx: bit(fc, 2),
        true_controls: bit(basic, 55),
        secondary_controls,
        ept,
        vpid,
        unrestricted_guest: bit(proc2, 32 + 7),
        preemption_timer: bit(pin, 32 + 6),
        ept_2m: ept && bit(cap, 16),
        ept_1g: ept && bit(cap, 17),
        ept_wb: ept && bit(cap, 14),
        ept_accessed_dirty: ept && bit(cap, 21),
        invept: ept && bit(cap, 20),
        invvpid: vpid && bit(cap, 32),
    }
}

fn detect_svm() -> SvmCaps {
    let r = cpu::cpuid(0x8000_000A, 0);
    let edx = r.edx as u64;
    SvmCaps {
        npt: bit(edx, 0),
        lbr_virt: bit(edx, 1),
        nrip_save: bit(edx, 3),
        vmcb_clean: bit(edx, 5),
        flush_by_asid: bit(edx, 6),
        decode_assists: bit(edx, 7),
        pause_filter: bit(edx, 10),
        avic: bit(edx, 13),
        asids: r.ebx,
    }
}

impl fmt::Display for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        match self {
            Caps::Vmx(v) => write!(
                f,
                "VMX rev {:#x}: feature-control {} (vmx {}), true-ctls {}, EPT {} (2M {}, 1G {}, WB {}, A/D {}, INVEPT {}), \
                 VPID {} (INVVPID {}), unrestricted-guest {}, preemption-timer {}",
                v.revision_id,
                if v.feature_control_locked { "locked" } else { "unlocked" },
                if v.enabled_outside_smx { "on" } else { "off" },
                yn(v.true_controls),
                yn(v.ept),
                yn(v.ept_2m),
                yn(v.ept_1g),
                yn(v.ept_wb),
                yn(v.ept_accessed_dirty),
                yn(v.invept),
                yn(v.vpid),
                yn(v.invvpid),
                yn(v.unrestricted_guest),
                yn(v.preemption_timer),
            ),
            Caps::Svm(s) => write!(
                f,
                "SVM: NPT {}, ASIDs {}, flush-by-ASID {}, NRIP-save {}, VMCB-clean {}, decode-assists {}, LBR-virt {}, \
                 pause-filter {}, AVIC {}",
                yn(s.npt),
                s.asids,
                yn(s.flush_by_asid),
                yn(s.nrip_save),
                yn(s.vmcb_clean),
                yn(s.decode_assists),
                yn(s.lbr_virt),
                yn(s.pause_filter),
                yn(s.avic),
            ),
            Caps::None => write!(f, "no hardware virtualization (VMX or SVM) found"),
        }
    }
}
