//! The state the processor does not switch between VPs and the hypervisor
//! switches only when an LP changes VPs (as for extended state, `xstate`):
//! the debug registers DR0-DR3, DR6 on VMX (SVM's VMCB holds DR6 and DR7,
//! VMX's VMCS only DR7), and TSC_AUX (read by RDTSCP and RDPID, which SVM
//! cannot intercept). When the partition changes too, the branch predictors
//! and the L1 data cache and CPU buffers are cleared where the processor
//! offers it (docs/security.md).
use crate::x86::{cpu, msr};

const IA32_PRED_CMD: u32 = 0x49;
const IA32_FLUSH_CMD: u32 = 0x10B;
const IA32_TSC_AUX: u32 = 0xC000_0103;

pub struct DebugState {
    dr: [u64; 4],
    dr6: u64,
    tsc_aux: u64,
    /// The VP has used a debug register: its MOV DR no longer exit and
    /// DR0-3 are switched with it. Until then they exit (a VP that never
    /// uses them, most do not, costs no switch of them) and hold nothing of
    /// its in the processor, whatever another VP left there: the first use
    /// loads them (`take_over`) before the instruction runs.
    owned: bool,
    /// The VP writes TSC_AUX itself (the root: its WRMSR pass); read back
    /// when it leaves the LP. A guest's cannot change (WRMSR refused).
    writes_tsc_aux: bool,
}

/// What this processor offers (CPUID), read once per LP.
#[derive(Clone, Copy)]
pub struct Barriers {
    /// IBPB: IA32_PRED_CMD bit 0 (CPUID 7.0 EDX 26 on Intel, 0x80000008 EBX 12 on AMD).
    ibpb: bool,
    /// L1D flush: IA32_FLUSH_CMD bit 0 (CPUID 7.0 EDX 28).
    l1d_flush: bool,
    /// VERW clears CPU buffers (MD_CLEAR, CPUID 7.0 EDX 10).
    md_clear: bool,
    /// TSC_AUX exists (RDTSCP, 0x80000001 EDX 27, or RDPID, 7.0 ECX 22).
    tsc_aux: bool,
    /// VMX: DR6 is not in the VMCS and is switched here.
    dr6: bool,
}

impl Barriers {
    pub fn detect(vmx: bool) -> Self {
        let max = cpu::cpuid(0, 0).eax;
        let (l7_ecx, l7_edx) = if max >= 7 {
            let l7 = cpu::cpuid(7, 0);
            (l7.ecx, l7.edx)
        } else {
            (0, 0)
        };
        let ext_max = cpu::cpuid(0x8000_0000, 0).eax;
        let ext1_edx = if ext_max >= 0x8000_0001 {
            cpu::cpuid(0x8000_0001, 0).edx
        } else {
            0
        };
        let ext8_ebx = if ext_max >= 0x8000_0008 {
            cpu::cpuid(0x8000_0008, 0).ebx
        } else {
            0
        };
        Barriers {
            ibpb: l7_edx & (1 << 26) != 0 || ext8_ebx & (1 << 12) != 0,
            l1d_flush: l7_edx & (1 << 28) != 0,
            md_clear: l7_edx & (1 << 10) != 0,
            tsc_aux: ext1_edx & (1 << 27) != 0 || l7_ecx & (1 << 22) != 0,
            dr6: vmx,
        }
    }

    /// Between two partitions' VPs: nothing the first left in the branch
    /// predictors, the L1 data cache or the CPU's buffers reaches the second.
    pub fn between_partitions(&self) {
        // SAFETY: command MSRs with no state: they only flush.
        unsafe {
            if self.ibpb {
                msr::write(IA32_PRED_CMD, 1);
            }
            if self.l1d_flush {
                msr::write(IA32_FLUSH_CMD, 1);
            }
        }
        if self.md_clear {
            cpu::clear_cpu_buffers();
        }
    }
}

impl DebugState {
    /// A VP's state at reset: no breakpoint addresses, DR6 as after reset,
    /// TSC_AUX `tsc_aux`; `writes_tsc_aux`: its WRMSR of it pass.
    pub const fn initial(tsc_aux: u64, writes_tsc_aux: bool) -> Self {
        DebugState {
            dr: [0; 4],
            dr6: 0xFFFF_0FF0,
            tsc_aux,
            owned: false,
            writes_tsc_aux,
        }
    }

    /// The VP's first MOV DR (`Exit::DebugRegisterAccess`): its DR0-3 into
    /// the processor, and its MOV DR pass from now on (the instruction runs
    /// again, natively). DR6 is switched for every VP on VMX already.
    pub fn take_over(&mut self, vcpu: &mut crate::vcpu::Vcpu) {
        cpu::write_dr::<0>(self.dr[0]);
        cpu::write_dr::<1>(self.dr[1]);
        cpu::write_dr::<2>(self.dr[2]);
        cpu::write_dr::<3>(self.dr[3]);
        vcpu.pass_debug_registers();
        self.owned = true;
    }

    /// Saves the live registers into this VP's copy. `live_tsc_aux`: the
    /// LP's TSC_AUX as the hypervisor last knew it.
    pub fn save(&mut self, b: &Barriers, live_tsc_aux: &mut u64) {
        if self.owned {
            self.dr = [
                cpu::read_dr::<0>(),
                cpu::read_dr::<1>(),
                cpu::read_dr::<2>(),
                cpu::read_dr::<3>(),
            ];
        }
        if b.dr6 {
            self.dr6 = cpu::read_dr::<6>();
        }
        if b.tsc_aux && self.writes_tsc_aux {
            self.tsc_aux = msr::read(IA32_TSC_AUX);
            *live_tsc_aux = self.tsc_aux;
        }
    }

    /// Loads this VP's copy into the registers (TSC_AUX only if it differs
    /// from `live_tsc_aux`, which it then becomes).
    pub fn restore(&self, b: &Barriers, live_tsc_aux: &mut u64) {
        if self.owned {
            cpu::write_dr::<0>(self.dr[0]);
            cpu::write_dr::<1>(self.dr[1]);
            cpu::write_dr::<2>(self.dr[2]);
            cpu::write_dr::<3>(self.dr[3]);
        }
        if b.dr6 {
            cpu::write_dr::<6>(self.dr6);
        }
        if b.tsc_aux && self.tsc_aux != *live_tsc_aux {
            // SAFETY: TSC_AUX is only read by RDTSCP/RDPID; the hypervisor
            // uses neither. Bits 63:32 are reserved.
            unsafe { msr::write(IA32_TSC_AUX, self.tsc_aux & 0xFFFF_FFFF) };
            *live_tsc_aux = self.tsc_aux;
        }
    }
}
