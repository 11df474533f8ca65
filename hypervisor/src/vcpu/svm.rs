//! AMD-V: EFER.SVME, the VMCB of a 64-bit VP with nested paging and an ASID,
//! the world switch (VMLOAD/VMRUN/VMSAVE), and exit translation (AMD APM
//! vol. 2 chapter 15; VMCB layout from appendix B, exit codes from appendix C).
use super::{
    Exit, GuestRegs, StartState, START_CR0, START_CR0_WP, START_CR4, START_EFER, START_PAT,
};
use crate::memory;
use crate::virt::SvmCaps;
use crate::x86::msr;
use core::arch::global_asm;

const EFER_SVME: u64 = 1 << 12;
const VM_HSAVE_PA: u32 = 0xC001_0117;

/// VMCB offsets: control area, then the state-save area at 0x400.
mod vmcb {
    /// CR reads (bits 15:0) and writes (bits 31:16).
    pub const INTERCEPT_CR: u64 = 0x000;
    /// DR reads (bits 15:0) and writes (bits 31:16).
    pub const INTERCEPT_DR: u64 = 0x004;
    pub const INTERCEPT_EXCEPTIONS: u64 = 0x008;
    pub const INTERCEPT_MISC1: u64 = 0x00C;
    pub const INTERCEPT_MISC2: u64 = 0x010;
    pub const IOPM_BASE: u64 = 0x040;
    pub const MSRPM_BASE: u64 = 0x048;
    pub const GUEST_ASID: u64 = 0x058;
    pub const INT_CONTROL: u64 = 0x060;
    pub const INTERRUPT_SHADOW: u64 = 0x068;
    pub const TLB_CONTROL: u64 = 0x05C;
    pub const EXIT_CODE: u64 = 0x070;
    pub const EXIT_INFO1: u64 = 0x078;
    pub const EXIT_INFO2: u64 = 0x080;
    pub const EXIT_INT_INFO: u64 = 0x088;
    pub const NP_ENABLE: u64 = 0x090;
    pub const EVENT_INJECTION: u64 = 0x0A8;
    pub const NESTED_CR3: u64 = 0x0B0;
    pub const CLEAN_BITS: u64 = 0x0C0;
    pub const NEXT_RIP: u64 = 0x0C8;
    pub const ES: u64 = 0x400;
    pub const GDTR: u64 = 0x460;
    pub const LDTR: u64 = 0x470;
    pub const IDTR: u64 = 0x480;
    pub const TR: u64 = 0x490;
    pub const EFER: u64 = 0x4D0;
    pub const CR4: u64 = 0x548;
    pub const CR3: u64 = 0x550;
    pub const CR0: u64 = 0x558;
    pub const DR7: u64 = 0x560;
    pub const DR6: u64 = 0x568;
    pub const RFLAGS: u64 = 0x570;
    pub const RIP: u64 = 0x578;
    pub const RSP: u64 = 0x5D8;
    pub const RAX: u64 = 0x5F8;
    pub const G_PAT: u64 = 0x668;
    pub const CR2: u64 = 0x640;
    /// The dword holding CPL in its top byte (CPL is at 0x4CB).
    pub const CPL_WORD: u64 = 0x4C8;
}

// With GIF clear, `sti` lets physical interrupts end the VP's run (INTR
// exit) without the host taking them; `cli` before `stgi` keeps them pending
// until the dispatcher takes them (`cpu::take_pending_interrupts`).
// The world switch: save the host's extra state (FS/GS/TR/LDTR, KernelGsBase,
// the syscall MSRs: VMRUN does not), load the guest's, run, and reverse.
// RAX is in the VMCB; the other general registers travel through `regs`.
// `svm_enter(regs, vmcb, host_save)`.
global_asm!(concat!(
    r#"
.section .text
.global svm_enter
svm_enter:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    push rdi
    push rdx
    push rsi
    clgi
    sti
    mov rax, rdx
    vmsave rax
"#,
    guest_gprs!(load "rdi"),
    r#"
    mov rax, [rsp]
    vmload rax
    vmrun rax
    vmsave rax
    mov rax, [rsp + 16]
"#,
    guest_gprs!(store "rax"),
    r#"
    mov rax, [rsp + 8]
    vmload rax
    cli
    stgi
    add rsp, 24
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
"#
));

extern "C" {
    fn svm_enter(regs: *mut GuestRegs, vmcb: u64, host_save: u64);
}

/// The shared I/O permission map (12 KiB, one bit per port; all clear: the
/// root owns every port). Guest partitions will get maps of their own.
static IOPM: spin::Once<u64> = spin::Once::new();

fn io_permission_map() -> Result<u64, &'static str> {
    memory::shared_pages(&IOPM, 3, |_| {})
}

/// The shared MSR permission map (8 KiB): two bits per MSR, read then write.
static MSRPM: spin::Once<u64> = spin::Once::new();

fn msr_permission_map() -> Result<u64, &'static str> {
    memory::shared_pages(&MSRPM, 2, |base| {
        let intercept = |msr: u32, read: bool, write: bool| {
            let (offset, index) = match msr {
                0..=0x1FFF => (0, msr),
                0xC000_0000..=0xC000_1FFF => (0x800, msr - 0xC000_0000),
                0xC001_0000..=0xC001_1FFF => (0x1000, msr - 0xC001_0000),
                _ => return,
            };
            let bit = index as u64 * 2;
            let byte = base + offset + bit / 8;
            let bits = (read as u8) << (bit % 8) | (write as u8) << (bit % 8 + 1);
            // SAFETY: `byte` lies in the two zeroed pages just allocated for the map.
            unsafe { *(byte as *mut u8) |= bits };
        };
        // EFER writes (SVME must stay set), the SVM MSRs, and the local APIC
        // (the hypervisor keeps it).
        intercept(msr::IA32_EFER, false, true);
        intercept(0xC001_0114, true, true); // VM_CR
        intercept(VM_HSAVE_PA, true, true);
        intercept(msr::IA32_APIC_BASE, true, true);
        for m in 0x800..=0x8FF {
            intercept(m, true, true);
        }
    })
}

pub struct SvmVcpu {
    pub regs: GuestRegs,
    vmcb: u64,
    host_save: u64,
    nrip_save: bool,
    /// The VP handles an injected NMI: the next waits for its IRET (SVM does
    /// not track this for injected NMIs; the IRET intercept shows it).
    nmi_masked: bool,
    /// The RIP of that IRET, once intercepted: NMIs are unmasked when the
    /// VP is seen past it.
    nmi_iret_rip: Option<u64>,
}

/// EVENTINJ / EXITINTINFO (APM vol. 2 section 15.20): vector 7:0, type 10:8,
/// error code valid 11, valid 31, error code 63:32.
const EVENT_VALID: u64 = 1 << 31;
const EVENT_TYPE_NMI: u64 = 2;
const EVENT_TYPE_EXCEPTION: u64 = 3;
const EVENT_TYPE_SOFTWARE_INTERRUPT: u64 = 4;
/// Intercept word 3 (`INTERCEPT_MISC1`) bit 20: IRET.
const INTERCEPT_IRET: u32 = 1 << 20;
/// The bits EVENTINJ defines (the rest are reserved).
const EVENT_BITS: u64 = 0xFFFF_FFFF_8000_0FFF;

/// Turns SVM on for this logical processor (once per LP, before any of its
/// VPs is created): EFER.SVME and the host save area.
pub fn enable(caps: &SvmCaps) -> Result<(), &'static str> {
    if !caps.npt {
        return Err("SVM without nested paging is not supported");
    }
    let efer = msr::read(msr::IA32_EFER);
    let hsave = memory::alloc_zeroed_page().ok_or("no memory for the host save area")?;
    // SAFETY: SVME only enables the SVM instructions; VM_HSAVE_PA names a
    // page the hypervisor keeps for the processor's own use.
    unsafe {
        msr::write(msr::IA32_EFER, efer | EFER_SVME);
        msr::write(VM_HSAVE_PA, hsave);
    }
    Ok(())
}

/// Guest partitions' I/O permission map: all set, every port exits.
static GUEST_IOPM: spin::Once<u64> = spin::Once::new();
/// Guest partitions' MSR permission map: every MSR access exits but the
/// `GUEST_PASSTHROUGH_MSRS`.
static GUEST_MSRPM: spin::Once<u64> = spin::Once::new();

/// VMX-style access rights (type 3:0, S, DPL, P, AVL 12, L 13, D/B 14, G 15)
/// to the VMCB's 12-bit attribute field, and back.
fn vmcb_attrib(ar: u16) -> u16 {
    (ar & 0xFF) | ((ar >> 4) & 0xF00)
}

fn access_rights(attrib: u16) -> u16 {
    (attrib & 0xFF) | ((attrib & 0xF00) << 4)
}

impl SvmVcpu {
    fn write(&self, offset: u64, value: u64) {
        // SAFETY: `vmcb` is this VP's VMCB page (4 KiB, ours alone, identity-
        // mapped) and every offset used is a constant below 0x1000.
        unsafe { core::ptr::write_volatile((self.vmcb + (offset & 0xFF8)) as *mut u64, value) }
    }

    fn write32(&self, offset: u64, value: u32) {
        // SAFETY: as in `write`.
        unsafe { core::ptr::write_volatile((self.vmcb + (offset & 0xFFC)) as *mut u32, value) }
    }

    fn read32(&self, offset: u64) -> u32 {
        // SAFETY: as in `write`.
        unsafe { core::ptr::read_volatile((self.vmcb + (offset & 0xFFC)) as *const u32) }
    }

    fn read(&self, offset: u64) -> u64 {
        // SAFETY: as in `write`.
        unsafe { core::ptr::read_volatile((self.vmcb + (offset & 0xFF8)) as *const u64) }
    }

    /// A segment register in the VMCB: selector, attributes, limit, base.
    fn segment(&self, offset: u64, selector: u16, attrib: u16, limit: u32, base: u64) {
        self.write(
            offset,
            selector as u64 | (attrib as u64) << 16 | (limit as u64) << 32,
        );
        self.write(offset + 8, base);
    }

    fn read_segment(&self, offset: u64) -> hv_abi::partition::Segment {
        let w = self.read(offset);
        hv_abi::partition::Segment {
            selector: w as u16,
            attributes: access_rights((w >> 16) as u16),
            limit: (w >> 32) as u32,
            base: self.read(offset + 8),
        }
    }

    /// A VMCB and host-state page with the intercepts every VP has.
    fn create(
        caps: &SvmCaps,
        slat_root: u64,
        tag: u16,
        regs: GuestRegs,
        guest: bool,
    ) -> Result<Self, &'static str> {
        let host_save = memory::alloc_zeroed_page().ok_or("no memory for the host state page")?;
        let vmcb = memory::alloc_zeroed_page().ok_or("no memory for the VMCB")?;
        let v = SvmVcpu {
            regs,
            vmcb,
            host_save,
            nrip_save: caps.nrip_save,
            nmi_masked: false,
            nmi_iret_rip: None,
        };
        // Intercepts: word 3 bits: 0 INTR (the host timer preempts the VP), 18
        // CPUID, 22 INVD (it would run natively and discard every partition's
        // dirty cache lines), 24 HLT, 27 IOIO_PROT (through the map), 28
        // MSR_PROT, 31 SHUTDOWN.
        // Guests also: 1 NMI (an NMI for the host never reaches a guest), 15
        // RDPMC (no counters offered), 26 INVLPGA (their EFER.SVME is forced on).
        let guest_misc1 = if guest {
            (1 << 1) | (1 << 15) | (1 << 26)
        } else {
            0
        };
        v.write32(
            vmcb::INTERCEPT_MISC1,
            1 | (1 << 18) | (1 << 22) | (1 << 24) | (1 << 27) | (1 << 28) | (1 << 31) | guest_misc1,
        );
        let (iopm, msrpm) = if guest {
            (
                memory::shared_pages(&GUEST_IOPM, 3, |page| {
                    // SAFETY: the three zeroed pages were just allocated for the map.
                    unsafe { core::ptr::write_bytes(page as *mut u8, 0xFF, 3 * 4096) }
                })?,
                memory::shared_pages(&GUEST_MSRPM, 2, |page| {
                    // SAFETY: the two zeroed pages were just allocated for the map.
                    unsafe { core::ptr::write_bytes(page as *mut u8, 0xFF, 2 * 4096) }
                    for m in super::GUEST_PASSTHROUGH_MSRS {
                        // Read bit 2n, write bit 2n + 1 of the 0xC000_0000 range at 0x800.
                        let bit = (m - 0xC000_0000) as u64 * 2;
                        let byte = page + 0x800 + bit / 8;
                        // SAFETY: `byte` lies in the map's first page (m is below 0xC000_0400).
                        unsafe { *(byte as *mut u8) &= !(3 << (bit % 8)) };
                    }
                })?,
            )
        } else {
            (io_permission_map()?, msr_permission_map()?)
        };
        v.write(vmcb::IOPM_BASE, iopm);
        v.write(vmcb::MSRPM_BASE, msrpm);
        // V_INTR_MASKING: physical interrupts follow the host's IF (set around
        // VMRUN), not the VP's; the VP's IF masks only virtual interrupts.
        v.write32(vmcb::INT_CONTROL, 1 << 24);
        // Word 4: VMRUN (required), VMMCALL, VMLOAD, VMSAVE, STGI, CLGI, SKINIT,
        // XSETBV; guests also 7 RDTSCP (TSC_AUX is switched, not offered), 8
        // ICEBP (delivered once, as hardware does), 9 WBINVD, 10 MONITOR, 11
        // MWAIT, 12 MWAIT armed (a guest must not keep its LP in a C-state).
        let guest_misc2 = if guest { 0x3F << 7 } else { 0 };
        v.write32(vmcb::INTERCEPT_MISC2, 0x7F | (1 << 13) | guest_misc2);
        // A guest's writes of CR4 exit, to be checked (`cpuid_view::guest_cr4_allowed`),
        // and of CR8, its virtual TPR: V_TPR alone would hold back nothing
        // the hypervisor injects, and a lowered one would not be noticed.
        // Its CR8 reads see V_TPR, kept equal to the TPR.
        if guest {
            v.write32(vmcb::INTERCEPT_CR, 1 << (16 + 4) | 1 << (16 + 8));
        }
        v.write32(vmcb::INTERCEPT_EXCEPTIONS, 1 << 18);
        // DR0-3 (not in the VMCB) exit until the VP first uses one
        // (`pass_debug_registers`), and so do DR7 writes: a breakpoint
        // enabled before its address is the VP's own would watch whatever
        // another VP left in DR0-3. DR6 and DR7 themselves are the VMCB's.
        v.write32(vmcb::INTERCEPT_DR, 0x008F_000F);
        v.write32(vmcb::GUEST_ASID, tag as u32);
        // The first run starts from a clean TLB: this ASID's entries only where
        // the processor can (flush-by-ASID), else everything.
        v.write32(vmcb::TLB_CONTROL, if caps.flush_by_asid { 3 } else { 1 });
        v.write(vmcb::NP_ENABLE, 1);
        v.write(vmcb::NESTED_CR3, slat_root);
        v.write(vmcb::CLEAN_BITS, 0);
        v.write(vmcb::DR6, 0xFFFF_0FF0);
        v.write(vmcb::DR7, 0x400);
        Ok(v)
    }

    /// A root VP in `s`.
    pub fn new(caps: &SvmCaps, s: &StartState) -> Result<Self, &'static str> {
        let regs = GuestRegs {
            rdi: s.rdi,
            ..Default::default()
        };
        let v = Self::create(caps, s.slat_root, s.tlb_tag, regs, false)?;
        // 64-bit code: type 0xB, S, P, L, G = attrib 0xA9B; data: 0xC93; busy TSS: 0x8B.
        for (i, sel) in [0x10u16, 0x08, 0x10, 0x10, 0x10, 0x10]
            .into_iter()
            .enumerate()
        {
            let attrib = if i == 1 { 0xA9B } else { 0xC93 };
            v.segment(vmcb::ES + 16 * i as u64, sel, attrib, 0xFFFF_FFFF, 0);
        }
        v.segment(vmcb::GDTR, 0, 0, s.gdt_limit as u32, s.gdt_base);
        v.segment(vmcb::LDTR, 0, 0, 0, 0);
        v.segment(vmcb::IDTR, 0, 0, 0, 0);
        v.segment(vmcb::TR, 0x18, 0x8B, 0x67, s.tr_base);
        v.write(vmcb::EFER, START_EFER | EFER_SVME);
        v.write(vmcb::CR0, START_CR0 | START_CR0_WP);
        v.write(vmcb::CR3, s.cr3);
        v.write(vmcb::CR4, START_CR4);
        v.write(vmcb::RFLAGS, 0x2);
        v.write(vmcb::RIP, s.rip);
        v.write(vmcb::RSP, s.rsp);
        v.write(vmcb::G_PAT, START_PAT);
        Ok(v)
    }

    /// A guest partition's VP in the state `ctx`.
    pub fn new_guest(
        caps: &SvmCaps,
        ctx: &hv_abi::partition::VpContext,
        slat_root: u64,
        tag: u16,
    ) -> Result<Self, &'static str> {
        let mut v = Self::create(caps, slat_root, tag, GuestRegs::default(), true)?;
        v.load_context(ctx);
        Ok(v)
    }

    /// Drops the ASID's cached translations at the next entry.
    pub fn flush(&self, caps: &SvmCaps) {
        self.write32(vmcb::TLB_CONTROL, if caps.flush_by_asid { 3 } else { 1 });
    }

    /// The structures behind the VP and the event fields, for the report
    /// of a VP stopped on a fault: a VMCB that holds the host's state (its
    /// RIP after VMRUN) would show here as a VMCB equal to a host save area.
    pub fn structures(&self) -> alloc::string::String {
        alloc::format!(
            "VMCB {:#x}, VMSAVE page {:#x}, VM_HSAVE_PA {:#x}, EXITINTINFO {:#x}, EVENTINJ {:#x}, exit {:#x}/{:#x}/{:#x}",
            self.vmcb,
            self.host_save,
            msr::read(VM_HSAVE_PA),
            self.read(vmcb::EXIT_INT_INFO),
            self.read(vmcb::EVENT_INJECTION),
            self.read(vmcb::EXIT_CODE),
            self.read(vmcb::EXIT_INFO1),
            self.read(vmcb::EXIT_INFO2),
        )
    }

    /// The VP's first MOV DR: from now on DR0-3 are its own in the
    /// processor (the LP switches them, `lazy::DebugState`).
    pub fn pass_debug_registers(&mut self) {
        self.write32(vmcb::INTERCEPT_DR, 0);
    }

    /// Returns the VMCB and host-state pages (the VP is gone).
    pub fn release(self) {
        memory::free_pages(self.vmcb, 1);
        memory::free_pages(self.host_save, 1);
    }

    pub fn load_context(&mut self, c: &hv_abi::partition::VpContext) {
        // ES, CS, SS, DS, FS, GS at 0x400 + 16 i; LDTR 0x470, TR 0x490.
        for (i, sg) in c.seg.iter().enumerate() {
            let offset = match i {
                0..=5 => vmcb::ES + 16 * i as u64,
                6 => vmcb::LDTR,
                _ => vmcb::TR,
            };
            self.segment(
                offset,
                sg.selector,
                vmcb_attrib(sg.attributes),
                sg.limit,
                sg.base,
            );
        }
        self.segment(vmcb::GDTR, 0, 0, c.gdtr.limit as u32, c.gdtr.base);
        self.segment(vmcb::IDTR, 0, 0, c.idtr.limit as u32, c.idtr.base);
        // CPL: SS.DPL in protected mode, 0 in real mode.
        let cpl = if c.cr0 & 1 != 0 {
            (c.seg[2].attributes >> 5) & 3
        } else {
            0
        };
        let w = self.read32(vmcb::CPL_WORD) & 0x00FF_FFFF;
        self.write32(vmcb::CPL_WORD, w | (cpl as u32) << 24);
        self.write(vmcb::EFER, c.efer | EFER_SVME);
        self.write(vmcb::CR0, c.cr0);
        self.write(vmcb::CR2, c.cr2);
        self.write(vmcb::CR3, c.cr3);
        self.write(vmcb::CR4, c.cr4);
        self.write(vmcb::RFLAGS, c.rflags);
        self.write(vmcb::RIP, c.rip);
        self.write(vmcb::RSP, c.gpr[4]);
        self.write(vmcb::G_PAT, c.pat);
        self.write(vmcb::EVENT_INJECTION, c.pending_event & EVENT_BITS);
        self.regs = super::regs_from_context(c);
    }

    pub fn load_registers(&mut self, c: &hv_abi::partition::VpContext) {
        self.write(vmcb::RFLAGS, c.rflags);
        self.write(vmcb::RIP, c.rip);
        self.write(vmcb::RSP, c.gpr[4]);
        self.regs = super::regs_from_context(c);
    }

    pub fn save_context(&self, c: &mut hv_abi::partition::VpContext) {
        for (i, sg) in c.seg.iter_mut().enumerate() {
            let offset = match i {
                0..=5 => vmcb::ES + 16 * i as u64,
                6 => vmcb::LDTR,
                _ => vmcb::TR,
            };
            *sg = self.read_segment(offset);
        }
        let g = self.read_segment(vmcb::GDTR);
        c.gdtr = hv_abi::partition::Table {
            limit: g.limit as u16,
            base: g.base,
        };
        let i = self.read_segment(vmcb::IDTR);
        c.idtr = hv_abi::partition::Table {
            limit: i.limit as u16,
            base: i.base,
        };
        c.efer = self.read(vmcb::EFER) & !EFER_SVME;
        c.cr0 = self.read(vmcb::CR0);
        c.cr2 = self.read(vmcb::CR2);
        c.cr3 = self.read(vmcb::CR3);
        c.cr4 = self.read(vmcb::CR4);
        c.rflags = self.read(vmcb::RFLAGS);
        c.rip = self.read(vmcb::RIP);
        c.pat = self.read(vmcb::G_PAT);
        c.pending_event = self.read(vmcb::EVENT_INJECTION);
        super::regs_to_context(&self.regs, self.read(vmcb::RSP), c);
    }

    pub fn cs(&self) -> hv_abi::partition::Segment {
        self.read_segment(vmcb::ES + 16)
    }

    pub fn rflags(&self) -> u64 {
        self.read(vmcb::RFLAGS)
    }

    pub fn cr0_efer(&self) -> (u64, u64) {
        (self.read(vmcb::CR0), self.read(vmcb::EFER) & !EFER_SVME)
    }

    pub fn set_exception_intercepts(&mut self, mask: u32) {
        self.write32(vmcb::INTERCEPT_EXCEPTIONS, mask);
    }

    /// The VMCB slot of a syscall MSR (VMLOAD/VMSAVE switch them).
    fn syscall_slot(m: u32) -> Option<u64> {
        Some(match m {
            0xC000_0081 => 0x600, // STAR
            0xC000_0082 => 0x608, // LSTAR
            0xC000_0083 => 0x610, // CSTAR
            0xC000_0084 => 0x618, // SFMASK
            0xC000_0102 => 0x620, // KERNEL_GS_BASE
            _ => return None,
        })
    }

    /// VMCB offsets of the state MSRs (FS and GS bases in their segments;
    /// the rest in the state-save area, which VMLOAD/VMSAVE also carry).
    fn state_slot(m: super::StateMsr) -> u64 {
        use super::StateMsr::*;
        match m {
            FsBase => vmcb::ES + 16 * 4 + 8,
            GsBase => vmcb::ES + 16 * 5 + 8,
            SysenterCs => 0x628,
            SysenterEsp => 0x630,
            SysenterEip => 0x638,
            Pat => vmcb::G_PAT,
        }
    }

    pub fn state_msr(&self, m: super::StateMsr) -> u64 {
        self.read(Self::state_slot(m))
    }

    pub fn set_state_msr(&mut self, m: super::StateMsr, v: u64) {
        self.write(Self::state_slot(m), v);
    }

    pub fn syscall_msr(&self, m: u32) -> Option<u64> {
        Some(self.read(Self::syscall_slot(m)?))
    }

    pub fn set_syscall_msr(&mut self, m: u32, v: u64) -> bool {
        match Self::syscall_slot(m) {
            Some(at) => {
                self.write(at, v);
                true
            }
            None => false,
        }
    }

    pub fn cpl(&self) -> u8 {
        (self.read32(vmcb::CPL_WORD) >> 24) as u8 & 3
    }

    pub fn run(&mut self) -> Exit {
        self.write(vmcb::RAX, self.regs.rax);
        // SAFETY: the VMCB and host-state pages are this processor's; `regs`
        // outlives the call; VMRUN returns to the instruction after it with the
        // host's RSP, and the assembly restores every callee-saved register.
        unsafe { svm_enter(&mut self.regs, self.vmcb, self.host_save) };
        self.regs.rax = self.read(vmcb::RAX);
        self.write32(vmcb::TLB_CONTROL, 0);
        // An event whose delivery exited is delivered again at the next entry
        // (APM vol. 2 section 15.7.2), unless the handler injects another. A
        // software interrupt, INT3 or INTO is not: RIP is still at its
        // instruction, which raises it again.
        let pending = self.read(vmcb::EXIT_INT_INFO);
        let again = if pending & EVENT_VALID == 0 {
            0
        } else {
            let kind = (pending >> 8) & 7;
            let software = kind == EVENT_TYPE_SOFTWARE_INTERRUPT
                || (kind == EVENT_TYPE_EXCEPTION && matches!(pending & 0xFF, 3 | 4));
            if software {
                0
            } else {
                pending & EVENT_BITS
            }
        };
        self.write(vmcb::EVENT_INJECTION, again);
        if self.nmi_iret_rip.is_some_and(|rip| rip != self.rip()) {
            self.nmi_masked = false;
            self.nmi_iret_rip = None;
        }
        let code = self.read(vmcb::EXIT_CODE);
        let info1 = self.read(vmcb::EXIT_INFO1);
        match code {
            0x52 => Exit::MachineCheck,
            // Exceptions 0x40 + vector; EXITINFO1 the error code, EXITINFO2 the #PF address.
            0x40..=0x5F if code != 0x42 => {
                let vector = (code - 0x40) as u8;
                Exit::Exception {
                    vector,
                    error_code: matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
                        .then_some(info1 as u32),
                    parameter: self.read(vmcb::EXIT_INFO2),
                    length: 0,
                }
            }
            // MOV to CR4 or CR8; with decode assists EXITINFO1 bit 63 says
            // the general register (3:0) is valid.
            0x14 | 0x18 => Exit::CrAccess {
                cr: (code - 0x10) as u8,
                write: true,
                gpr: (info1 & (1 << 63) != 0).then_some((info1 & 0xF) as u8),
            },
            0x6F => Exit::Rdpmc,
            0x20..=0x3F => Exit::DebugRegisterAccess,
            0x7A | 0x87 | 0x8A..=0x8C => Exit::Undefined,
            // ICEBP (INT1): a #DB delivered past the one-byte instruction.
            0x88 => Exit::Exception {
                vector: 1,
                error_code: None,
                parameter: 0,
                length: 1,
            },
            0x89 => Exit::Invd,
            0x60 => Exit::ExternalInterrupt,
            0x64 => Exit::InterruptWindow,
            // The NMI handler's IRET, about to run: unmasked once it has.
            0x74 => {
                self.write32(
                    vmcb::INTERCEPT_MISC1,
                    self.read32(vmcb::INTERCEPT_MISC1) & !INTERCEPT_IRET,
                );
                self.nmi_iret_rip = Some(self.rip());
                Exit::InterruptWindow
            }
            0x61 => Exit::Nmi,
            0x72 => Exit::Cpuid,
            0x76 => Exit::Invd,
            0x78 => Exit::Halt,
            // EXITINFO1: IN 0, string 2, REP 3, size one-hot 6:4, port 31:16;
            // EXITINFO2: the next RIP.
            0x7B => Exit::Io(super::IoAccess {
                port: (info1 >> 16) as u16,
                size: match (info1 >> 4) & 7 {
                    1 => 1,
                    2 => 2,
                    _ => 4,
                },
                write: info1 & 1 == 0,
                string: info1 & 4 != 0,
                rep: info1 & 8 != 0,
                length: self.read(vmcb::EXIT_INFO2).wrapping_sub(self.rip()).min(15) as u8,
            }),
            0x7C if info1 == 0 => Exit::MsrRead,
            0x7C => Exit::MsrWrite,
            0x7F => Exit::TripleFault,
            0x80 | 0x82..=0x86 => Exit::Undefined,
            0x81 => Exit::Hypercall,
            0x8D => Exit::Xsetbv,
            0x400 => Exit::SlatViolation {
                gpa: self.read(vmcb::EXIT_INFO2),
                write: info1 & 2 != 0,
                execute: info1 & 16 != 0,
            },
            // VMEXIT_INVALID (-1; QEMU reports its low 32 bits).
            0xFFFF_FFFF | u64::MAX => Exit::EntryFailed(code),
            other => Exit::Other(other),
        }
    }

    pub fn rip(&self) -> u64 {
        self.read(vmcb::RIP)
    }

    /// Next RIP from the processor where it saves one (NRIP save); otherwise
    /// from the length of the instructions this hypervisor intercepts.
    pub fn skip_instruction(&mut self) {
        let len = if self.nrip_save {
            0 // unused: NEXT_RIP says
        } else {
            match self.read(vmcb::EXIT_CODE) {
                0x72 | 0x7C | 0x76 => 2, // CPUID, RDMSR/WRMSR, INVD
                0x78 => 1,               // HLT
                0x81 | 0x8D => 3,        // VMMCALL, XSETBV
                0x89 => 2,               // WBINVD
                _ => 0,
            }
        };
        self.skip_known(len);
    }

    /// As `skip_instruction`, for an instruction whose length the caller
    /// knows (NRIP save, where the processor offers it, says the same).
    pub fn skip_known(&mut self, length: u8) {
        if self.nrip_save {
            let next = self.read(vmcb::NEXT_RIP);
            self.set_rip_past_shadow(next);
        } else {
            self.advance_rip(length);
        }
    }

    /// RIP moves on past an instruction: the interrupt shadow that covered it
    /// is over.
    fn set_rip_past_shadow(&mut self, rip: u64) {
        self.write(vmcb::RIP, rip);
        let shadow = self.read(vmcb::INTERRUPT_SHADOW);
        if shadow & 1 != 0 {
            self.write(vmcb::INTERRUPT_SHADOW, shadow & !1);
        }
    }

    pub fn interrupts_enabled(&self) -> bool {
        self.read(vmcb::RFLAGS) & (1 << 9) != 0
    }

    /// Also not while the NMI handler's IRET has not been seen to complete:
    /// an interrupt taken at it would run inside the NMI handler, and the
    /// first exit in that interrupt's handler would unmask NMIs too early.
    pub fn interruptible(&self) -> bool {
        self.interrupts_enabled()
            && self.nmi_iret_rip.is_none()
            && self.read(vmcb::INTERRUPT_SHADOW) & 1 == 0
            && self.read(vmcb::EVENT_INJECTION) & (1 << 31) == 0
    }

    pub fn nmi_allowed(&self) -> bool {
        !self.nmi_masked
            && self.read(vmcb::INTERRUPT_SHADOW) & 1 == 0
            && self.read(vmcb::EVENT_INJECTION) & EVENT_VALID == 0
    }

    /// Injects an NMI, masked until the handler's IRET has run.
    pub fn inject_nmi(&mut self) {
        self.write(vmcb::EVENT_INJECTION, 2 | EVENT_TYPE_NMI << 8 | EVENT_VALID);
        self.nmi_masked = true;
        self.nmi_iret_rip = None;
        self.write32(
            vmcb::INTERCEPT_MISC1,
            self.read32(vmcb::INTERCEPT_MISC1) | INTERCEPT_IRET,
        );
    }

    /// Whether the interrupt window may be asked for: not while waiting for
    /// the NMI handler's IRET with the VP's IF set (the window is open at the
    /// IRET itself and would exit before it, again and again; the next exit
    /// shows it done). With IF clear, the window shows exactly the IRET's end.
    pub fn window_usable(&self) -> bool {
        self.nmi_iret_rip.is_none() || !self.interrupts_enabled()
    }

    pub fn inject_interrupt(&mut self, vector: u8) {
        // EVENTINJ type 0: external interrupt.
        self.write(vmcb::EVENT_INJECTION, vector as u64 | (1 << 31));
    }

    /// A virtual interrupt request (V_IRQ, top priority, TPR ignored) with the
    /// VINTR intercept: the VP exits as soon as it could take it.
    pub fn set_interrupt_window(&mut self, on: bool) {
        const V_INTR_MASKING: u32 = 1 << 24;
        const V_IRQ_PENDING: u32 = (1 << 8) | (0xF << 16) | (1 << 20);
        const VINTR: u32 = 1 << 4;
        let misc1 = self.read32(vmcb::INTERCEPT_MISC1);
        // Off already: V_IRQ is only ever set with the intercept, and
        // cleared with it (the common case: nothing to change).
        if !on && misc1 & VINTR == 0 {
            return;
        }
        // V_TPR (3:0) is the VP's CR8: kept.
        let tpr = self.read32(vmcb::INT_CONTROL) & 0xF;
        if on {
            self.write32(vmcb::INT_CONTROL, V_INTR_MASKING | V_IRQ_PENDING | tpr);
            self.write32(vmcb::INTERCEPT_MISC1, misc1 | VINTR);
        } else {
            self.write32(vmcb::INT_CONTROL, V_INTR_MASKING | tpr);
            self.write32(vmcb::INTERCEPT_MISC1, misc1 & !VINTR);
        }
    }

    /// V_TPR: the VP's CR8 (with V_INTR_MASKING, MOV CR8 reaches only this).
    pub fn v_tpr(&self) -> u32 {
        self.read32(vmcb::INT_CONTROL) & 0xF
    }

    pub fn set_v_tpr(&mut self, tpr: u32) {
        let c = self.read32(vmcb::INT_CONTROL);
        if c & 0xF != tpr & 0xF {
            self.write32(vmcb::INT_CONTROL, (c & !0xF) | (tpr & 0xF));
        }
    }

    pub fn rsp(&self) -> u64 {
        self.read(vmcb::RSP)
    }

    pub fn set_rsp(&mut self, v: u64) {
        self.write(vmcb::RSP, v);
    }

    pub fn cr4_cr3(&self) -> (u64, u64) {
        (self.read(vmcb::CR4), self.read(vmcb::CR3))
    }

    pub fn set_cr4(&mut self, v: u64) {
        self.write(vmcb::CR4, v);
    }

    /// A MOV to CR0 the hypervisor emulates. Guests' CR0 writes do not exit
    /// on SVM (the processor switches modes itself); kept for the common
    /// interface: the checks of the SDM/APM, then the value.
    pub fn write_cr0(&mut self, v: u64) -> bool {
        if v >> 32 != 0 || (v >> 31 & 1 != 0 && v & 1 == 0) {
            return false;
        }
        self.write(vmcb::CR0, v);
        true
    }

    /// Moves RIP `length` bytes on (an instruction the hypervisor decoded).
    pub fn advance_rip(&mut self, length: u8) {
        self.set_rip_past_shadow(self.rip() + length as u64);
    }

    /// RIP set to `rip`, past the instruction at the old one.
    pub fn move_past(&mut self, rip: u64) {
        self.set_rip_past_shadow(rip);
    }

    /// EFER writes exit (the MSR permission map says so): keep SVME, which
    /// VMRUN requires, and refuse reserved bits.
    pub fn set_efer(&mut self, value: u64) -> bool {
        const ALLOWED: u64 =
            1 | (1 << 8) | (1 << 10) | (1 << 11) | EFER_SVME | (1 << 13) | (1 << 14) | (1 << 15);
        if value & !ALLOWED != 0 {
            return false;
        }
        self.write(vmcb::EFER, value | EFER_SVME);
        true
    }

    /// A software exception (`length` > 0) is delivered past its instruction.
    pub fn inject_exception(&mut self, vector: u8, error_code: Option<u32>, length: u8) {
        if length > 0 {
            self.advance_rip(length);
        }
        // EVENTINJ: vector, type 3 (exception), error-code valid (bit 11), valid (bit 31).
        let mut e = vector as u64 | (EVENT_TYPE_EXCEPTION << 8) | EVENT_VALID;
        if let Some(code) = error_code {
            e |= 1 << 11 | (code as u64) << 32;
        }
        self.write(vmcb::EVENT_INJECTION, e);
    }
}
