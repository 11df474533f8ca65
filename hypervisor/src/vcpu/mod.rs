//! One virtual-processor interface over VMX and SVM, and the one exit
//! dispatcher both use. The vendor modules only translate: they start a VP,
//! run it, and turn their exit codes into [`Exit`].
/// Assembly moving a VP's general registers, all but RAX and RSP, between the
/// processor and the `GuestRegs` at the address in register `$base`; both world
/// switches use it. `load` reads RDI last, so RDI may be the base.
macro_rules! guest_gprs {
    (load $base:literal) => {
        concat!(
            "mov rbx, [",
            $base,
            " + 8]\n",
            "mov rcx, [",
            $base,
            " + 16]\n",
            "mov rdx, [",
            $base,
            " + 24]\n",
            "mov rsi, [",
            $base,
            " + 32]\n",
            "mov rbp, [",
            $base,
            " + 48]\n",
            "mov r8, [",
            $base,
            " + 56]\n",
            "mov r9, [",
            $base,
            " + 64]\n",
            "mov r10, [",
            $base,
            " + 72]\n",
            "mov r11, [",
            $base,
            " + 80]\n",
            "mov r12, [",
            $base,
            " + 88]\n",
            "mov r13, [",
            $base,
            " + 96]\n",
            "mov r14, [",
            $base,
            " + 104]\n",
            "mov r15, [",
            $base,
            " + 112]\n",
            "mov rdi, [",
            $base,
            " + 40]\n",
        )
    };
    (store $base:literal) => {
        concat!(
            "mov [",
            $base,
            " + 8], rbx\n",
            "mov [",
            $base,
            " + 16], rcx\n",
            "mov [",
            $base,
            " + 24], rdx\n",
            "mov [",
            $base,
            " + 32], rsi\n",
            "mov [",
            $base,
            " + 40], rdi\n",
            "mov [",
            $base,
            " + 48], rbp\n",
            "mov [",
            $base,
            " + 56], r8\n",
            "mov [",
            $base,
            " + 64], r9\n",
            "mov [",
            $base,
            " + 72], r10\n",
            "mov [",
            $base,
            " + 80], r11\n",
            "mov [",
            $base,
            " + 88], r12\n",
            "mov [",
            $base,
            " + 96], r13\n",
            "mov [",
            $base,
            " + 104], r14\n",
            "mov [",
            $base,
            " + 112], r15\n",
        )
    };
}

pub mod lazy;
pub mod svm;
pub mod vmx;
pub mod xstate;

use crate::virt::Caps;
use hv_abi::partition::VpContext;
use hv_abi::synic::InterceptHeader;
use hv_abi::ExitReason;

/// The general registers of a VP while the hypervisor handles an exit. RSP
/// and RIP live in the VMCS/VMCB. The field order is used by the world-switch
/// assembly (offset = 8 × position).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

/// An intercepted IN or OUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoAccess {
    pub port: u16,
    /// 1, 2 or 4 bytes.
    pub size: u8,
    /// OUT (else IN).
    pub write: bool,
    /// INS/OUTS.
    pub string: bool,
    pub rep: bool,
    /// The instruction's length in bytes.
    pub length: u8,
}

/// Why a VP stopped running, in terms common to both vendors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Cpuid,
    MsrRead,
    MsrWrite,
    Io(IoAccess),
    Halt,
    Hypercall,
    SlatViolation {
        gpa: u64,
        write: bool,
        execute: bool,
    },
    Xsetbv,
    /// INVD (would discard dirty cache lines of every partition) or WBINVD
    /// (a guest's: costly for everyone on the socket); both done as a no-op.
    Invd,
    /// A MOV to or from a control register that exits: CR8 (the TPR, on VMX),
    /// CR4 (a guest's write of a bit it does not own), CR0 fixed bits.
    /// `gpr`: the general register (0 RAX .. 15 R15), when the processor says.
    CrAccess {
        cr: u8,
        write: bool,
        gpr: Option<u8>,
    },
    /// RDPMC by a guest: no performance counters are offered (#GP).
    Rdpmc,
    Nmi,
    /// A physical interrupt arrived while the VP ran (SVM: the host timer).
    ExternalInterrupt,
    /// The VMX preemption timer expired: the VP's time slice is over.
    Preemption,
    /// The VP can take an interrupt now (requested with `set_interrupt_window`).
    InterruptWindow,
    MachineCheck,
    /// An exception the partition's exception intercepts name.
    Exception {
        vector: u8,
        error_code: Option<u32>,
        /// #PF: the faulting linear address.
        parameter: u64,
        /// A software exception (ICEBP, INT3, INTO): the instruction's length,
        /// which delivery skips; 0 for every other exception.
        length: u8,
    },
    TripleFault,
    /// A MOV to or from a debug register of a VP that has not used them
    /// yet: the LP makes them the VP's (`lazy::DebugState::take_over`) and
    /// the instruction runs again, natively.
    DebugRegisterAccess,
    /// An instruction the VP may not use, #UD as on a processor without it:
    /// VMX and SVM instructions; for guests also MONITOR/MWAIT (a guest must
    /// not keep its LP in a deep C-state), RDTSCP (its TSC_AUX is the
    /// hypervisor's to switch), INVLPGA.
    Undefined,
    /// The processor refused to enter the VP; the vendor's detail code.
    EntryFailed(u64),
    Other(u64),
}

impl Exit {
    pub fn reason(&self) -> ExitReason {
        match self {
            Exit::Cpuid => ExitReason::Cpuid,
            Exit::MsrRead => ExitReason::MsrRead,
            Exit::MsrWrite => ExitReason::MsrWrite,
            Exit::Io(_) => ExitReason::IoPort,
            Exit::Halt => ExitReason::Halt,
            Exit::Hypercall => ExitReason::Hypercall,
            Exit::SlatViolation { .. } => ExitReason::SlatViolation,
            Exit::Xsetbv => ExitReason::Xsetbv,
            Exit::Invd | Exit::Rdpmc | Exit::DebugRegisterAccess => ExitReason::Other,
            Exit::CrAccess { .. } => ExitReason::ControlRegister,
            Exit::Nmi => ExitReason::Nmi,
            Exit::ExternalInterrupt => ExitReason::ExternalInterrupt,
            Exit::Preemption => ExitReason::Preemption,
            Exit::InterruptWindow => ExitReason::Other,
            Exit::MachineCheck | Exit::Exception { .. } => ExitReason::Exception,
            Exit::TripleFault => ExitReason::TripleFault,
            Exit::Undefined | Exit::EntryFailed(_) | Exit::Other(_) => ExitReason::Other,
        }
    }
}

/// The state a VP starts in: 64-bit mode with paging (the root partition's
/// start contract, `hv_abi::root_boot`).
#[derive(Clone, Copy, Debug)]
pub struct StartState {
    pub rip: u64,
    pub rsp: u64,
    pub rdi: u64,
    pub cr3: u64,
    pub gdt_base: u64,
    pub gdt_limit: u16,
    pub tr_base: u64,
    /// Root of the partition's second-level tables (EPT or NPT).
    pub slat_root: u64,
    /// The tag of this VP's TLB entries (VPID or ASID), non-zero.
    pub tlb_tag: u16,
}

/// How long a VP runs before the hypervisor takes the processor back.
pub const TIME_SLICE_US: u64 = 10_000;

/// Initial control registers of a 64-bit VP.
pub const START_CR0: u64 = 0x8000_0033; // PG, NE, ET, MP, PE (+ WP below)
pub const START_CR0_WP: u64 = 1 << 16;
pub const START_CR4: u64 = (1 << 5) | (1 << 9) | (1 << 10); // PAE, OSFXSR, OSXMMEXCPT
pub const START_EFER: u64 = (1 << 8) | (1 << 10) | (1 << 11); // LME, LMA, NXE
pub const START_PAT: u64 = 0x0007_0406_0007_0406;

pub enum Vcpu {
    Vmx(vmx::VmxVcpu),
    Svm(svm::SvmVcpu),
}

/// Enables VMX or SVM on this logical processor (once, before its first VP).
pub fn enable(caps: &Caps) -> Result<(), &'static str> {
    match caps {
        Caps::Vmx(v) => vmx::enable(v),
        Caps::Svm(s) => svm::enable(s),
        Caps::None => Err("no hardware virtualization"),
    }
}

/// The general registers in the TLFS's order (rax, rcx, rdx, rbx, rsp, rbp,
/// rsi, rdi, r8..r15) from a context; RSP lives in the VMCS/VMCB.
fn regs_from_context(c: &VpContext) -> GuestRegs {
    let g = &c.gpr;
    GuestRegs {
        rax: g[0],
        rcx: g[1],
        rdx: g[2],
        rbx: g[3],
        rbp: g[5],
        rsi: g[6],
        rdi: g[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
    }
}

fn regs_to_context(r: &GuestRegs, rsp: u64, c: &mut VpContext) {
    c.gpr = [
        r.rax, r.rcx, r.rdx, r.rbx, rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ];
}

impl Vcpu {
    /// Creates a root VP in `start` (after `enable` on this LP); it is the
    /// LP's active VP.
    pub fn new(caps: &Caps, start: &StartState) -> Result<Self, &'static str> {
        match caps {
            Caps::Vmx(v) => vmx::VmxVcpu::new(v, start).map(Vcpu::Vmx),
            Caps::Svm(s) => svm::SvmVcpu::new(s, start).map(Vcpu::Svm),
            Caps::None => Err("no hardware virtualization"),
        }
    }

    /// Creates a guest partition's VP in `ctx` on this LP; it becomes the
    /// LP's active VP.
    pub fn new_guest(
        caps: &Caps,
        ctx: &VpContext,
        slat_root: u64,
        tag: u16,
    ) -> Result<Self, &'static str> {
        match caps {
            Caps::Vmx(v) => vmx::VmxVcpu::new_guest(v, ctx, slat_root, tag).map(Vcpu::Vmx),
            Caps::Svm(s) => svm::SvmVcpu::new_guest(s, ctx, slat_root, tag).map(Vcpu::Svm),
            Caps::None => Err("no hardware virtualization"),
        }
    }

    /// Makes this VP the one the LP's virtualization instructions act on
    /// (VMX: VMPTRLD; SVM needs nothing).
    pub fn activate(&mut self) {
        if let Vcpu::Vmx(v) = self {
            v.activate();
        }
    }

    /// Drops the VP's cached guest-physical translations before its next run.
    pub fn flush(&self, caps: &Caps) {
        match (self, caps) {
            (Vcpu::Vmx(v), Caps::Vmx(c)) => v.flush(c),
            (Vcpu::Svm(s), Caps::Svm(c)) => s.flush(c),
            _ => {}
        }
    }

    /// Frees the VP's hardware structures (on its own LP).
    pub fn release(self) {
        match self {
            Vcpu::Vmx(v) => v.release(),
            Vcpu::Svm(s) => s.release(),
        }
    }

    /// Loads a guest VP's state (the VP is active).
    pub fn load_context(&mut self, ctx: &VpContext) -> Result<(), &'static str> {
        match self {
            Vcpu::Vmx(v) => v.load_context(ctx),
            Vcpu::Svm(s) => {
                s.load_context(ctx);
                Ok(())
            }
        }
    }

    /// Loads only the general registers, RIP and RFLAGS of `ctx` (all that a
    /// resume after an intercept changes).
    pub fn load_registers(&mut self, ctx: &VpContext) {
        match self {
            Vcpu::Vmx(v) => v.load_registers(ctx),
            Vcpu::Svm(s) => s.load_registers(ctx),
        }
    }

    /// Saves only the general registers, RIP and RFLAGS into `ctx`.
    pub fn save_registers(&self, ctx: &mut VpContext) {
        let (regs, rsp, rip, rflags) = match self {
            Vcpu::Vmx(v) => (&v.regs, v.rsp(), v.rip(), v.rflags()),
            Vcpu::Svm(s) => (&s.regs, s.rsp(), s.rip(), s.rflags()),
        };
        regs_to_context(regs, rsp, ctx);
        ctx.rip = rip;
        ctx.rflags = rflags;
    }

    pub fn save_context(&self, ctx: &mut VpContext) {
        match self {
            Vcpu::Vmx(v) => v.save_context(ctx),
            Vcpu::Svm(s) => s.save_context(ctx),
        }
    }

    /// The VP's state in one line, for the report of a VP stopped on a
    /// fault (where it was, on which stack and tables, what it was
    /// delivering, and the vendor structures behind it).
    pub fn describe(&self) -> alloc::string::String {
        let mut c = VpContext::reset();
        self.save_context(&mut c);
        let vendor = match self {
            Vcpu::Vmx(v) => v.structures(),
            Vcpu::Svm(s) => s.structures(),
        };
        alloc::format!(
            "RIP {:#x} RSP {:#x} RFLAGS {:#x} CR0 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x} IDTR {:#x}/{:#x} CS {:#x} pending event {:#x}; {vendor}",
            c.rip,
            c.gpr[4],
            c.rflags,
            c.cr0,
            c.cr3,
            c.cr4,
            c.efer,
            c.idtr.base,
            c.idtr.limit,
            c.seg[1].selector,
            c.pending_event,
        )
    }

    /// Stops intercepting the VP's debug registers (its first use of one).
    pub fn pass_debug_registers(&mut self) {
        match self {
            Vcpu::Vmx(v) => v.pass_debug_registers(),
            Vcpu::Svm(s) => s.pass_debug_registers(),
        }
    }

    /// What an intercept message's header says about the VP now.
    pub fn intercept_header(&self, vp_index: u32, length: u8, access: u8) -> InterceptHeader {
        let (cs, rflags, (cr0, efer), cpl) = match self {
            Vcpu::Vmx(v) => (v.cs(), v.rflags(), v.cr0_efer(), v.cpl()),
            Vcpu::Svm(s) => (s.cs(), s.rflags(), s.cr0_efer(), s.cpl()),
        };
        // Execution state: CPL 1:0, CR0.PE 2, CR0.AM 3, EFER.LMA 4.
        let state = cpl as u16
            | ((cr0 & 1) as u16) << 2
            | (((cr0 >> 18) & 1) as u16) << 3
            | (((efer >> 10) & 1) as u16) << 4;
        InterceptHeader {
            vp_index,
            instruction_length: length,
            access,
            execution_state: state,
            cs,
            rip: self.rip(),
            rflags,
        }
    }

    /// Runs the VP until its next exit.
    pub fn run(&mut self) -> Exit {
        match self {
            Vcpu::Vmx(v) => v.run(),
            Vcpu::Svm(s) => s.run(),
        }
    }

    pub fn regs(&mut self) -> &mut GuestRegs {
        match self {
            Vcpu::Vmx(v) => &mut v.regs,
            Vcpu::Svm(s) => &mut s.regs,
        }
    }

    pub fn rip(&self) -> u64 {
        match self {
            Vcpu::Vmx(v) => v.rip(),
            Vcpu::Svm(s) => s.rip(),
        }
    }

    /// General register `n` in instruction-encoding order (0 RAX, 1 RCX, 2
    /// RDX, 3 RBX, 4 RSP, 5 RBP, 6 RSI, 7 RDI, 8-15 R8-R15).
    pub fn gpr(&mut self, n: u8) -> u64 {
        if n & 15 == 4 {
            return self.rsp();
        }
        *self.gpr_slot(n)
    }

    pub fn set_gpr(&mut self, n: u8, value: u64) {
        if n & 15 == 4 {
            return self.set_rsp(value);
        }
        *self.gpr_slot(n) = value;
    }

    fn gpr_slot(&mut self, n: u8) -> &mut u64 {
        let r = self.regs();
        match n & 15 {
            0 => &mut r.rax,
            1 => &mut r.rcx,
            2 => &mut r.rdx,
            3 => &mut r.rbx,
            5 => &mut r.rbp,
            6 => &mut r.rsi,
            7 => &mut r.rdi,
            8 => &mut r.r8,
            9 => &mut r.r9,
            10 => &mut r.r10,
            11 => &mut r.r11,
            12 => &mut r.r12,
            13 => &mut r.r13,
            14 => &mut r.r14,
            _ => &mut r.r15,
        }
    }

    fn rsp(&self) -> u64 {
        match self {
            Vcpu::Vmx(v) => v.rsp(),
            Vcpu::Svm(s) => s.rsp(),
        }
    }

    fn set_rsp(&mut self, value: u64) {
        match self {
            Vcpu::Vmx(v) => v.set_rsp(value),
            Vcpu::Svm(s) => s.set_rsp(value),
        }
    }

    /// Whether the VP may make a hypercall now: TLFS "Hypercall Interface":
    /// only from CPL 0 in protected or long mode; otherwise #UD, so a guest's
    /// user code can never reach its partition's hypercalls.
    pub fn hypercall_allowed(&self) -> bool {
        let (cpl, rflags, (cr0, _)) = match self {
            Vcpu::Vmx(v) => (v.cpl(), v.rflags(), v.cr0_efer()),
            Vcpu::Svm(s) => (s.cpl(), s.rflags(), s.cr0_efer()),
        };
        const VM: u64 = 1 << 17;
        cpl == 0 && cr0 & 1 != 0 && rflags & VM == 0
    }

    /// The VP's CR4 and CR3, as it sees them.
    pub fn cr4_cr3(&self) -> (u64, u64) {
        match self {
            Vcpu::Vmx(v) => v.cr4_cr3(),
            Vcpu::Svm(s) => s.cr4_cr3(),
        }
    }

    /// Sets the VP's CR4 (already checked by the caller) and drops its
    /// cached translations when the change requires it.
    /// A guest's MOV to CR0 (`false`: #GP). Paging changes flush the VP's
    /// TLB, as the processor's own CR0 write would.
    pub fn set_cr0(&mut self, caps: &Caps, value: u64) -> bool {
        let (old, _) = match self {
            Vcpu::Vmx(v) => v.cr0_efer(),
            Vcpu::Svm(s) => s.cr0_efer(),
        };
        let done = match self {
            Vcpu::Vmx(v) => v.write_cr0(value),
            Vcpu::Svm(s) => s.write_cr0(value),
        };
        if done && (old ^ value) & ((1 << 31) | (1 << 16) | 1) != 0 {
            self.flush(caps);
        }
        done
    }

    pub fn set_cr4(&mut self, caps: &Caps, value: u64) {
        let (old, _) = self.cr4_cr3();
        match self {
            Vcpu::Vmx(v) => v.set_cr4(value),
            Vcpu::Svm(s) => s.set_cr4(value),
        }
        if hypervisor_core::control_regs::cr4_change_flushes(old, value) {
            self.flush(caps);
        }
    }

    /// The VP's paging mode and CR3, and whether it runs 64-bit code (to
    /// fetch and decode the instruction at its RIP); CS's base.
    pub fn fetch_state(&self) -> (hypervisor_core::control_regs::Paging, u64, bool, u64) {
        let ((cr0, efer), (cr4, cr3), cs) = match self {
            Vcpu::Vmx(v) => (v.cr0_efer(), v.cr4_cr3(), v.cs()),
            Vcpu::Svm(s) => (s.cr0_efer(), s.cr4_cr3(), s.cs()),
        };
        let code64 = efer & (1 << 10) != 0 && cs.attributes & (1 << 13) != 0;
        (
            hypervisor_core::control_regs::Paging::of(cr0, cr4, efer),
            cr3,
            code64,
            if code64 { 0 } else { cs.base },
        )
    }

    /// The virtual APIC's TPR follows what the VP wrote to CR8 without an exit:
    /// the root's VPs on SVM (V_TPR in the VMCB; with V_INTR_MASKING CR8 never
    /// reaches the physical TPR). A guest's CR8 writes exit on both vendors,
    /// and VMX's reads too; SVM's read V_TPR, kept equal by `offer_interrupt`.
    pub fn pull_tpr(&self, vapic: &mut hypervisor_core::vapic::VirtualApic) {
        if let Vcpu::Svm(s) = self {
            if vapic.cr8() != s.v_tpr() as u64 {
                vapic.set_cr8(s.v_tpr() as u64);
            }
        }
    }

    /// A MOV to or from CR8: the virtual APIC's TPR (CR8 = TPR[7:4]); never
    /// the physical one, which masks the hypervisor's own timer and kicks.
    /// Returns false for a reserved value (#GP).
    pub fn emulate_cr8(
        &mut self,
        vapic: &mut hypervisor_core::vapic::VirtualApic,
        write: bool,
        gpr: u8,
    ) -> bool {
        if write {
            if !vapic.set_cr8(self.gpr(gpr)) {
                return false;
            }
        } else {
            self.set_gpr(gpr, vapic.cr8());
        }
        self.skip_instruction();
        true
    }

    /// Moves RIP past an instruction of `length` bytes that the hypervisor
    /// decoded itself.
    pub fn advance_rip(&mut self, length: u8) {
        match self {
            Vcpu::Vmx(v) => v.advance_rip(length),
            Vcpu::Svm(s) => s.advance_rip(length),
        }
    }

    /// An intercepted instruction done by the root: RAX as it says, RIP
    /// past the instruction (`rip`), its interrupt shadow over.
    pub fn complete_intercept(&mut self, rax: u64, rip: u64) {
        self.regs().rax = rax;
        match self {
            Vcpu::Vmx(v) => v.move_past(rip),
            Vcpu::Svm(s) => s.move_past(rip),
        }
    }

    /// Moves past the instruction that caused the last exit.
    pub fn skip_instruction(&mut self) {
        match self {
            Vcpu::Vmx(v) => v.skip_instruction(),
            Vcpu::Svm(s) => s.skip_instruction(),
        }
    }

    /// Finishes an intercepted RDMSR: the value in EDX:EAX and the VP past
    /// the instruction, or #GP when the MSR is not the VP's to read.
    pub fn finish_rdmsr(&mut self, value: Option<u64>) {
        match value {
            Some(v) => {
                let r = self.regs();
                (r.rax, r.rdx) = (v & 0xFFFF_FFFF, v >> 32);
                self.skip_instruction();
            }
            None => self.inject_exception(GP, Some(0)),
        }
    }

    /// The MSR (ECX) and value (EDX:EAX) of an intercepted WRMSR.
    pub fn wrmsr_operands(&mut self) -> (u32, u64) {
        let r = self.regs();
        (r.rcx as u32, (r.rdx << 32) | (r.rax & 0xFFFF_FFFF))
    }

    /// Finishes an intercepted WRMSR: past the instruction when it was
    /// taken, #GP otherwise.
    pub fn finish_wrmsr(&mut self, done: bool) {
        if done {
            self.skip_instruction();
        } else {
            self.inject_exception(GP, Some(0));
        }
    }

    /// Raises an exception in the VP at its next entry.
    pub fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        self.reinject_exception(vector, error_code, 0);
    }

    /// Delivers an intercepted exception as the processor would have: a
    /// software exception (`length` > 0: ICEBP, INT3, INTO) once, past its
    /// instruction; any other as a hardware exception.
    pub fn reinject_exception(&mut self, vector: u8, error_code: Option<u32>, length: u8) {
        match self {
            Vcpu::Vmx(v) => v.inject_exception(vector, error_code, length),
            Vcpu::Svm(s) => s.inject_exception(vector, error_code, length),
        }
    }

    /// RFLAGS.IF of the VP.
    pub fn interrupts_enabled(&self) -> bool {
        match self {
            Vcpu::Vmx(v) => v.interrupts_enabled(),
            Vcpu::Svm(s) => s.interrupts_enabled(),
        }
    }

    /// Whether an external interrupt can be injected at the next entry: IF set,
    /// no STI/MOV SS shadow, no other event being injected.
    pub fn interruptible(&self) -> bool {
        match self {
            Vcpu::Vmx(v) => v.interruptible(),
            Vcpu::Svm(s) => s.interruptible(),
        }
    }

    /// Delivers external interrupt `vector` at the next entry.
    pub fn inject_interrupt(&mut self, vector: u8) {
        match self {
            Vcpu::Vmx(v) => v.inject_interrupt(vector),
            Vcpu::Svm(s) => s.inject_interrupt(vector),
        }
    }

    /// Before an entry: injects the NMI `vapic` holds, else the highest
    /// interrupt it can deliver, if the VP can take it now; otherwise asks for
    /// an exit as soon as it can. Whether one was waiting (it ends a halt).
    #[inline]
    pub fn offer_interrupt(&mut self, vapic: &mut hypervisor_core::vapic::VirtualApic) -> bool {
        if let Vcpu::Svm(s) = self {
            s.set_v_tpr(vapic.cr8() as u32);
        }
        let nmi = vapic.nmi_pending();
        let mut nmi_window = false;
        if nmi {
            if self.nmi_allowed() {
                self.inject_nmi();
                vapic.accept_nmi();
            } else {
                nmi_window = true;
            }
        }
        let irq = vapic.deliverable();
        let irq_window = match irq {
            Some(v) if self.interruptible() => {
                self.inject_interrupt(v);
                vapic.accept(v);
                // An AutoEOI vector is not in service: another may be
                // deliverable at once, and no EOI exit will come to offer it.
                vapic.deliverable().is_some()
            }
            Some(_) => true,
            None => false,
        };
        match self {
            Vcpu::Vmx(v) => {
                v.set_nmi_window(nmi_window);
                v.set_interrupt_window(irq_window);
            }
            // SVM has no NMI window: the interrupt window stands in (it
            // shows the end of a shadow, or of the NMI handler's IRET),
            // except where it would exit before that IRET again and again.
            Vcpu::Svm(s) => {
                let window = (irq_window || nmi_window) && s.window_usable();
                s.set_interrupt_window(window);
            }
        }
        nmi || irq.is_some()
    }

    /// Whether an NMI can be injected at the next entry: none being handled
    /// (virtual-NMI blocking until the handler's IRET), no interrupt shadow,
    /// no other event being injected.
    fn nmi_allowed(&self) -> bool {
        match self {
            Vcpu::Vmx(v) => v.nmi_allowed(),
            Vcpu::Svm(s) => s.nmi_allowed(),
        }
    }

    fn inject_nmi(&mut self) {
        match self {
            Vcpu::Vmx(v) => v.inject_nmi(),
            Vcpu::Svm(s) => s.inject_nmi(),
        }
    }

    /// The exits the root's and guests' dispatchers answer alike: an
    /// instruction the VP is not offered (#UD), RDPMC (#GP: no counters
    /// offered), a host interrupt that ended the run (taken here), the
    /// preemption timer and the interrupt window (nothing more to do).
    /// Whether `exit` was one of them (the VP then simply resumes).
    pub fn handle_common(&mut self, exit: &Exit) -> bool {
        match exit {
            Exit::Undefined => self.inject_exception(UD, None),
            Exit::Rdpmc => self.inject_exception(GP, Some(0)),
            Exit::ExternalInterrupt => crate::x86::cpu::take_pending_interrupts(),
            Exit::Preemption | Exit::InterruptWindow => {}
            _ => return false,
        }
        true
    }

    /// Finishes an intercepted CPUID with its answer in EAX, EBX, ECX, EDX.
    pub fn finish_cpuid(&mut self, (a, b, c, d): (u32, u32, u32, u32)) {
        let r = self.regs();
        (r.rax, r.rbx, r.rcx, r.rdx) = (a as u64, b as u64, c as u64, d as u64);
        match self {
            // Prefixes may make it longer than 0F A2: the exit says how long.
            Vcpu::Vmx(v) => v.skip_instruction(),
            // NRIP save says where the next instruction is; without it (QEMU's
            // models) the length is taken as 2, as `skip_instruction` does.
            Vcpu::Svm(s) => s.skip_known(2),
        }
    }

    /// The TSC at which the VP's virtual timer needs the hypervisor (VMX: the
    /// preemption timer is shortened to it; SVM: the LP's one-shot host timer, `lp.rs`).
    pub fn set_timer_deadline(&mut self, deadline: Option<u64>) {
        if let Vcpu::Vmx(v) = self {
            v.set_timer_deadline(deadline);
        }
    }

    /// A write of EFER that exited (the root on SVM: SVME must stay set;
    /// guests on both).
    pub fn set_efer(&mut self, value: u64) -> bool {
        match self {
            Vcpu::Vmx(v) => v.write_efer(value),
            Vcpu::Svm(s) => s.set_efer(value),
        }
    }

    /// Which exception vectors of a guest VP exit (bit n: vector n), besides
    /// `GUEST_EXCEPTIONS_ALWAYS`.
    pub fn set_exception_intercepts(&mut self, mask: u32) {
        let mask = mask | GUEST_EXCEPTIONS_ALWAYS;
        match self {
            Vcpu::Vmx(v) => v.set_exception_intercepts(mask),
            Vcpu::Svm(s) => s.set_exception_intercepts(mask),
        }
    }

    /// A guest VP's KERNEL_GS_BASE, STAR, LSTAR, CSTAR or SFMASK.
    pub fn syscall_msr(&self, m: u32) -> Option<u64> {
        match self {
            Vcpu::Vmx(v) => v.syscall_msr(m),
            Vcpu::Svm(s) => s.syscall_msr(m),
        }
    }

    /// The architectural MSRs whose values the VMCS/VMCB holds for the VP:
    /// FS_BASE, GS_BASE, SYSENTER_CS/ESP/EIP, PAT. `None` for any other MSR.
    pub fn state_msr(&self, m: u32) -> Option<u64> {
        let m = StateMsr::of(m)?;
        Some(match self {
            Vcpu::Vmx(v) => v.state_msr(m),
            Vcpu::Svm(s) => s.state_msr(m),
        })
    }

    /// Sets one of them (`None`: not one); `Some(false)` means #GP: a
    /// non-canonical address, or a PAT entry of a reserved memory type.
    pub fn set_state_msr(&mut self, m: u32, v: u64) -> Option<bool> {
        let m = StateMsr::of(m)?;
        let ok = match m {
            StateMsr::FsBase | StateMsr::GsBase | StateMsr::SysenterEsp | StateMsr::SysenterEip => {
                matches!(v >> 47, 0 | 0x1_FFFF)
            }
            StateMsr::SysenterCs => v >> 32 == 0,
            // Types 0 (UC), 1 (WC), 4 (WT), 5 (WP), 6 (WB), 7 (UC-) in bits 2:0
            // of each byte, the rest zero (SDM vol. 3 section 13.12.2).
            StateMsr::Pat => v
                .to_le_bytes()
                .iter()
                .all(|&b| b & !7 == 0 && !matches!(b, 2 | 3)),
        };
        if ok {
            match self {
                Vcpu::Vmx(x) => x.set_state_msr(m, v),
                Vcpu::Svm(s) => s.set_state_msr(m, v),
            }
        }
        Some(ok)
    }

    /// Sets one of them; a non-canonical address is refused (#GP).
    pub fn set_syscall_msr(&mut self, m: u32, v: u64) -> bool {
        let address = matches!(m, 0xC000_0082 | 0xC000_0083 | 0xC000_0102);
        if address && !matches!(v >> 47, 0 | 0x1_FFFF) {
            return false;
        }
        match self {
            Vcpu::Vmx(x) => x.set_syscall_msr(m, v),
            Vcpu::Svm(s) => s.set_syscall_msr(m, v),
        }
    }

    /// EFER as the VP sees it.
    pub fn efer(&self) -> u64 {
        match self {
            Vcpu::Vmx(v) => v.cr0_efer().1,
            Vcpu::Svm(s) => s.cr0_efer().1,
        }
    }

    /// `vmcall; ret` or `vmmcall; ret`: what the hypercall page holds.
    pub fn hypercall_page(&self) -> [u8; 4] {
        match self {
            Vcpu::Vmx(_) => hv_abi::hypercall::VMCALL_PAGE,
            Vcpu::Svm(_) => hv_abi::hypercall::VMMCALL_PAGE,
        }
    }
}

// The world-switch assembly addresses `GuestRegs` fields by offset.
const _: () = assert!(core::mem::size_of::<GuestRegs>() == 15 * 8);

/// The MSRs a guest VP reads and writes without an exit: FS_BASE and
/// GS_BASE, which the entry loads and the exit saves (VMCS guest-state
/// fields; VMLOAD/VMSAVE of the VP's VMCB) and the processor checks itself
/// (#GP for a non-canonical base). Linux writes FS_BASE at most context
/// switches back to a user task: an exit each, about one per disk request.
pub const GUEST_PASSTHROUGH_MSRS: [u32; 2] = [0xC000_0100, 0xC000_0101];

/// The architectural MSRs kept in the VMCS/VMCB (`Vcpu::state_msr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateMsr {
    FsBase,
    GsBase,
    SysenterCs,
    SysenterEsp,
    SysenterEip,
    Pat,
}

impl StateMsr {
    fn of(m: u32) -> Option<StateMsr> {
        Some(match m {
            0xC000_0100 => StateMsr::FsBase,
            0xC000_0101 => StateMsr::GsBase,
            0x174 => StateMsr::SysenterCs,
            0x175 => StateMsr::SysenterEsp,
            0x176 => StateMsr::SysenterEip,
            0x277 => StateMsr::Pat,
            _ => return None,
        })
    }
}

pub const GP: u8 = 13;
pub const UD: u8 = 6;
pub const DB: u8 = 1;
pub const AC: u8 = 17;

/// Exceptions a guest VP always exits on: machine checks (the hypervisor's),
/// and #DB and #AC, which a guest can make recur during their own delivery
/// forever inside the processor, where no interrupt ends it (the known
/// "benign exception loop" attacks): intercepted, each delivery is an exit,
/// and the hypervisor re-injects it.
pub const GUEST_EXCEPTIONS_ALWAYS: u32 = 1 << DB | 1 << AC | 1 << 18;
