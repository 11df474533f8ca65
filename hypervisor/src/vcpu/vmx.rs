//! Intel VT-x: VMXON, the VMCS of a 64-bit VP with EPT and VPID, the world
//! switch, and exit translation (Intel SDM vol. 3 chapters 25-29; field
//! encodings from appendix B, exit reasons from appendix C).
use super::{
    Exit, GuestRegs, StartState, START_CR0, START_CR0_WP, START_CR4, START_EFER, START_PAT,
};
use crate::memory;
use crate::virt::VmxCaps;
use crate::x86::{cpu, msr};
use core::arch::global_asm;

/// VMCS field encodings.
mod field {
    pub const VPID: u32 = 0x0000;
    pub const GUEST_ES: u32 = 0x0800;
    pub const HOST_ES: u32 = 0x0C00;
    pub const HOST_CS: u32 = 0x0C02;
    pub const HOST_SS: u32 = 0x0C04;
    pub const HOST_DS: u32 = 0x0C06;
    pub const HOST_FS: u32 = 0x0C08;
    pub const HOST_GS: u32 = 0x0C0A;
    pub const HOST_TR: u32 = 0x0C0C;
    pub const IO_BITMAP_A: u32 = 0x2000;
    pub const IO_BITMAP_B: u32 = 0x2002;
    pub const MSR_BITMAP: u32 = 0x2004;
    pub const EXIT_MSR_STORE_ADDRESS: u32 = 0x2006;
    pub const EXIT_MSR_LOAD_ADDRESS: u32 = 0x2008;
    pub const ENTRY_MSR_LOAD_ADDRESS: u32 = 0x200A;
    pub const EPT_POINTER: u32 = 0x201A;
    pub const GUEST_PHYSICAL_ADDRESS: u32 = 0x2400;
    pub const VMCS_LINK_POINTER: u32 = 0x2800;
    pub const GUEST_DEBUGCTL: u32 = 0x2802;
    pub const GUEST_PAT: u32 = 0x2804;
    pub const GUEST_EFER: u32 = 0x2806;
    pub const HOST_PAT: u32 = 0x2C00;
    pub const HOST_EFER: u32 = 0x2C02;
    pub const PIN_CONTROLS: u32 = 0x4000;
    pub const PROC_CONTROLS: u32 = 0x4002;
    pub const EXCEPTION_BITMAP: u32 = 0x4004;
    pub const EXIT_CONTROLS: u32 = 0x400C;
    pub const EXIT_MSR_STORE_COUNT: u32 = 0x400E;
    pub const EXIT_MSR_LOAD_COUNT: u32 = 0x4010;
    pub const ENTRY_CONTROLS: u32 = 0x4012;
    pub const ENTRY_MSR_LOAD_COUNT: u32 = 0x4014;
    pub const ENTRY_INTERRUPTION_INFO: u32 = 0x4016;
    pub const ENTRY_EXCEPTION_ERROR_CODE: u32 = 0x4018;
    pub const ENTRY_INSTRUCTION_LENGTH: u32 = 0x401A;
    pub const IDT_VECTORING_INFO: u32 = 0x4408;
    pub const IDT_VECTORING_ERROR_CODE: u32 = 0x440A;
    pub const PROC_CONTROLS2: u32 = 0x401E;
    pub const VM_INSTRUCTION_ERROR: u32 = 0x4400;
    pub const EXIT_REASON: u32 = 0x4402;
    pub const EXIT_INTERRUPTION_INFO: u32 = 0x4404;
    pub const EXIT_INTERRUPTION_ERROR_CODE: u32 = 0x4406;
    pub const EXIT_INSTRUCTION_LENGTH: u32 = 0x440C;
    pub const GUEST_ES_LIMIT: u32 = 0x4800;
    pub const GUEST_GDTR_LIMIT: u32 = 0x4810;
    pub const GUEST_IDTR_LIMIT: u32 = 0x4812;
    pub const GUEST_ES_ACCESS: u32 = 0x4814;
    pub const GUEST_INTERRUPTIBILITY: u32 = 0x4824;
    pub const GUEST_ACTIVITY: u32 = 0x4826;
    pub const GUEST_SYSENTER_CS: u32 = 0x482A;
    pub const PREEMPTION_TIMER: u32 = 0x482E;
    pub const HOST_SYSENTER_CS: u32 = 0x4C00;
    pub const CR0_MASK: u32 = 0x6000;
    pub const CR4_MASK: u32 = 0x6002;
    pub const CR0_SHADOW: u32 = 0x6004;
    pub const CR4_SHADOW: u32 = 0x6006;
    pub const EXIT_QUALIFICATION: u32 = 0x6400;
    pub const GUEST_CR0: u32 = 0x6800;
    pub const GUEST_CR3: u32 = 0x6802;
    pub const GUEST_CR4: u32 = 0x6804;
    pub const GUEST_ES_BASE: u32 = 0x6806;
    pub const GUEST_GDTR_BASE: u32 = 0x6816;
    pub const GUEST_IDTR_BASE: u32 = 0x6818;
    pub const GUEST_DR7: u32 = 0x681A;
    pub const GUEST_RSP: u32 = 0x681C;
    pub const GUEST_RIP: u32 = 0x681E;
    pub const GUEST_RFLAGS: u32 = 0x6820;
    pub const GUEST_PENDING_DEBUG: u32 = 0x6822;
    pub const GUEST_SYSENTER_ESP: u32 = 0x6824;
    pub const GUEST_SYSENTER_EIP: u32 = 0x6826;
    pub const HOST_CR0: u32 = 0x6C00;
    pub const HOST_CR3: u32 = 0x6C02;
    pub const HOST_CR4: u32 = 0x6C04;
    pub const HOST_FS_BASE: u32 = 0x6C06;
    pub const HOST_GS_BASE: u32 = 0x6C08;
    pub const HOST_TR_BASE: u32 = 0x6C0A;
    pub const HOST_GDTR_BASE: u32 = 0x6C0C;
    pub const HOST_IDTR_BASE: u32 = 0x6C0E;
    pub const HOST_SYSENTER_ESP: u32 = 0x6C10;
    pub const HOST_SYSENTER_EIP: u32 = 0x6C12;
    pub const HOST_RIP: u32 = 0x6C16;
}

const IA32_VMX_CR0_FIXED0: u32 = 0x486;
const IA32_VMX_CR0_FIXED1: u32 = 0x487;
const IA32_VMX_CR4_FIXED0: u32 = 0x488;
const IA32_VMX_CR4_FIXED1: u32 = 0x489;
const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48D;
const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48E;
const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48F;
const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
const IA32_VMX_EXIT_CTLS: u32 = 0x483;
const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
const IA32_PAT: u32 = 0x277;
const IA32_VMX_MISC: u32 = 0x485;
const CR4_VMXE: u64 = 1 << 13;

/// The VMX instructions. Each reports failure (CF or ZF set) as `Err`.
mod insn {
    use core::arch::asm;

    /// A VMX instruction whose operand is an 8-byte physical address in memory.
    macro_rules! vmx_pa_instruction {
        ($(#[$doc:meta])* $name:ident, $mnemonic:literal) => {
            $(#[$doc])*
            pub unsafe fn $name(pa: u64) -> Result<(), ()> {
                let failed: u8;
                // SAFETY: the caller's contract; the instruction reads the 8-byte
                // operand only and reports failure in CF or ZF.
                unsafe { asm!(concat!($mnemonic, " [{0}]"), "setna {1}", in(reg) &pa, out(reg_byte) failed, options(nostack)) };
                if failed == 0 { Ok(()) } else { Err(()) }
            }
        };
    }

    vmx_pa_instruction!(
        /// # Safety
        /// `pa` is this processor's VMXON region, initialised with the VMCS
        /// revision identifier; CR0/CR4 meet the fixed bits.
        vmxon, "vmxon"
    );
    vmx_pa_instruction!(
        /// # Safety
        /// `pa` is a VMCS region owned by this processor.
        vmclear, "vmclear"
    );
    vmx_pa_instruction!(
        /// # Safety
        /// As for `vmclear`; the VMCS becomes current on this processor.
        vmptrld, "vmptrld"
    );

    /// A VMX invalidation instruction: a type in a register, a 16-byte
    /// descriptor in memory.
    macro_rules! vmx_invalidation {
        ($(#[$doc:meta])* $name:ident, $mnemonic:literal) => {
            $(#[$doc])*
            pub unsafe fn $name(kind: u64, descriptor: [u64; 2]) -> Result<(), ()> {
                let failed: u8;
                // SAFETY: the caller's contract; the instruction only reads the descriptor.
                unsafe { asm!(concat!($mnemonic, " {0}, [{1}]"), "setna {2}", in(reg) kind, in(reg) &descriptor, out(reg_byte) failed, options(nostack)) };
                if failed == 0 { Ok(()) } else { Err(()) }
            }
        };
    }

    vmx_invalidation!(
        /// Drops cached EPT translations: `kind` 1 for the context of the EPTP in
        /// the descriptor, 2 for every context (Intel SDM vol. 3, INVEPT).
        ///
        /// # Safety
        /// VMX operation is on; `kind` is one the capability MSR advertises.
        invept, "invept"
    );
    vmx_invalidation!(
        /// Drops cached translations tagged with the descriptor's VPID: `kind` 1
        /// for that VPID, 2 for every VPID (Intel SDM vol. 3, INVVPID).
        ///
        /// # Safety
        /// As for `invept`.
        invvpid, "invvpid"
    );

    /// Reads a field of the current VMCS (0 if there is none or the field does not exist).
    pub fn vmread(field: u32) -> u64 {
        let value: u64;
        // SAFETY: VMREAD only reads the current VMCS; outside VMX operation it
        // raises #UD, which cannot happen here: callers run after VMXON.
        unsafe { asm!("vmread {0}, {1}", out(reg) value, in(reg) field as u64, options(nostack)) };
        value
    }

    /// Writes a field of the current VMCS.
    ///
    /// # Safety
    /// The field's new value must keep the host state (and so every Rust
    /// invariant) intact at the next VM exit.
    pub unsafe fn vmwrite(field: u32, value: u64) -> Result<(), ()> {
        let failed: u8;
        // SAFETY: the caller's contract.
        unsafe {
            asm!("vmwrite {0}, {1}", "setna {2}", in(reg) field as u64, in(reg) value, out(reg_byte) failed, options(nostack))
        };
        if failed == 0 {
            Ok(())
        } else {
            Err(())
        }
    }
}

// The world switch. `vmx_enter(regs, launched)` loads the guest's general
// registers and enters the VP; the next VM exit arrives at `vmx_exit` on the
// same stack (HOST_RSP is written just before entry), stores the guest's
// registers and returns 0. A failed VMLAUNCH/VMRESUME returns 1.
global_asm!(concat!(
    r#"
.section .text
.global vmx_enter
vmx_enter:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    push rdi
    mov rax, 0x6C14
    vmwrite rax, rsp
    test rsi, rsi
    mov rax, [rdi + 0]
"#,
    guest_gprs!(load "rdi"),
    r#"
    jnz 2f
    vmlaunch
    jmp 3f
2:  vmresume
3:  pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    mov eax, 1
    ret

.global vmx_exit
vmx_exit:
    push rax
    mov rax, [rsp + 8]
"#,
    guest_gprs!(store "rax"),
    r#"
    pop qword ptr [rax]
    add rsp, 8
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    xor eax, eax
    ret
"#
));

extern "C" {
    fn vmx_enter(regs: *mut GuestRegs, launched: u64) -> u64;
    fn vmx_exit();
}

pub struct VmxVcpu {
    pub regs: GuestRegs,
    /// This VP's VMCS (current on its LP while the LP runs it).
    vmcs: u64,
    launched: bool,
    /// Primary processor-based controls (interrupt-window exiting toggles).
    proc: u32,
    /// VM-entry controls (IA-32e mode guest follows the VP's EFER.LMA).
    entry: u32,
    /// CR0 bits the VP may not own (VMX's fixed bits, less PE and PG under
    /// unrestricted guest).
    cr0_fixed0: u64,
    /// Preemption-timer units: TSC >> shift.
    timer_shift: u64,
    /// The time slice in TSC ticks.
    slice: u64,
    timer_deadline: Option<u64>,
    /// The preemption timer must be set at the next entry (a new deadline
    /// or slice). Where the processor saves the timer's value at exits, it
    /// counts on across re-entries in between; elsewhere it is set always.
    timer_dirty: bool,
    timer_saved: bool,
    /// The VP's CR2, which VMX does not switch.
    cr2: u64,
    /// The processor's CR2 is `cr2` (it ran last on this LP, and the
    /// hypervisor takes no page faults): nothing to load before an entry.
    cr2_live: bool,
    /// A guest VP's KERNEL_GS_BASE, STAR, LSTAR, CSTAR, SFMASK: VMX does not
    /// switch them unless asked, and the root's must neither leak to a guest
    /// (SWAPGS, SYSCALL run natively) nor be changed by one. The VMCS's MSR
    /// lists switch them (`SyscallMsrLists`). `None`: the root's VP, whose
    /// values simply stay live.
    syscall_msrs: Option<SyscallMsrLists>,
}

/// A guest VP's page of VMCS MSR lists (SDM vol. 3 sections 24.7.2, 24.8.2,
/// 25.7): the guest's syscall MSRs, loaded at entry and stored at exit, at
/// offset 0; the root's, loaded at exit, at `HOST_LIST`. Entries are 16
/// bytes: the MSR's index (u32), reserved (u32), its value (u64).
struct SyscallMsrLists {
    page: u64,
}

const HOST_LIST: u64 = 0x100;
const MSR_ENTRY: u64 = 16;

impl SyscallMsrLists {
    /// A zeroed page, both lists naming `SYSCALL_MSRS`, the guest's values 0;
    /// the current VMCS pointed at them.
    fn new() -> Result<Self, &'static str> {
        let page = memory::alloc_zeroed_page().ok_or("no memory for the MSR lists")?;
        let lists = SyscallMsrLists { page };
        for (i, &m) in SYSCALL_MSRS.iter().enumerate() {
            let i = i as u64 * MSR_ENTRY;
            // SAFETY: the page is ours (allocated above), identity-mapped;
            // both offsets are inside it and 4-byte aligned.
            unsafe {
                *((page + i) as *mut u32) = m;
                *((page + HOST_LIST + i) as *mut u32) = m;
            }
        }
        let n = SYSCALL_MSRS.len() as u64;
        for (f, v) in [
            (field::ENTRY_MSR_LOAD_ADDRESS, page),
            (field::ENTRY_MSR_LOAD_COUNT, n),
            (field::EXIT_MSR_STORE_ADDRESS, page),
            (field::EXIT_MSR_STORE_COUNT, n),
            (field::EXIT_MSR_LOAD_ADDRESS, page + HOST_LIST),
            (field::EXIT_MSR_LOAD_COUNT, n),
        ] {
            if let Err(e) = vmwrite(f, v) {
                memory::free_pages(page, 1);
                return Err(e);
            }
        }
        Ok(lists)
    }

    fn value_at(&self, offset: u64) -> *mut u64 {
        (self.page + offset + 8) as *mut u64
    }

    /// The guest's value of `SYSCALL_MSRS[i]` (stored at its last exit).
    fn guest(&self, i: usize) -> u64 {
        // SAFETY: inside our page, 8-byte aligned; the processor writes it
        // only at this VP's exits, which this LP is not in.
        unsafe { self.value_at(i as u64 * MSR_ENTRY).read_volatile() }
    }

    fn set_guest(&mut self, i: usize, v: u64) {
        // SAFETY: as in `guest`; read by the processor at this VP's entries.
        unsafe { self.value_at(i as u64 * MSR_ENTRY).write_volatile(v) }
    }

    /// Before an entry: the root's live values, for the exit to load back.
    fn keep_root_values(&mut self) {
        for (i, &m) in SYSCALL_MSRS.iter().enumerate() {
            // SAFETY: as in `set_guest`, in the host list.
            unsafe {
                self.value_at(HOST_LIST + i as u64 * MSR_ENTRY)
                    .write_volatile(msr::read(m))
            }
        }
    }
}

/// Interruption-information type field (SDM vol. 3 section 24.8.3).
const EVENT_TYPE_SHIFT: u64 = 8;
const EVENT_VALID: u64 = 1 << 31;
const EVENT_HAS_ERROR: u64 = 1 << 11;
const TYPE_NMI: u64 = 2;
/// VM-exit control 22: the preemption timer's value is saved at exits.
const SAVE_PREEMPTION_TIMER: u32 = 1 << 22;
const TYPE_HARDWARE_EXCEPTION: u64 = 3;
const TYPE_PRIVILEGED_SOFTWARE_EXCEPTION: u64 = 5;
const TYPE_SOFTWARE_EXCEPTION: u64 = 6;
/// Guest interruptibility state: the STI and MOV SS shadows (bits 0, 1), and
/// blocking by NMI (bit 3; with virtual NMIs, until the handler's IRET).
const BLOCKING_BY_STI_MOV_SS: u64 = 3;
const BLOCKING_BY_NMI: u64 = 1 << 3;

/// KERNEL_GS_BASE, STAR, LSTAR, CSTAR, SFMASK.
pub const SYSCALL_MSRS: [u32; 5] = [
    0xC000_0102,
    0xC000_0081,
    0xC000_0082,
    0xC000_0083,
    0xC000_0084,
];

fn vmwrite(field: u32, value: u64) -> Result<(), &'static str> {
    // SAFETY: called only while building or loading the current VMCS, with
    // the values the SDM's entry checks require (host state copied from the
    // live registers, guest state checked by the caller or by VM entry).
    unsafe { insn::vmwrite(field, value) }.map_err(|_| "VMWRITE failed")
}

/// The shared I/O bitmaps A (ports 0-0x7FFF) and B (0x8000-0xFFFF) of the
/// root: all clear, the root owns every port.
static IO_BITMAP_PAGES: spin::Once<u64> = spin::Once::new();
/// Guest partitions' I/O bitmaps: all set, every port access exits (the
/// root's VM worker emulates the devices).
static GUEST_IO_BITMAP_PAGES: spin::Once<u64> = spin::Once::new();

fn io_bitmaps(guest: bool) -> Result<u64, &'static str> {
    if guest {
        memory::shared_pages(&GUEST_IO_BITMAP_PAGES, 2, |page| {
            // SAFETY: the two zeroed pages were just allocated for the bitmaps.
            unsafe { core::ptr::write_bytes(page as *mut u8, 0xFF, 8192) }
        })
    } else {
        memory::shared_pages(&IO_BITMAP_PAGES, 2, |_| {})
    }
}

/// The shared MSR bitmap: which MSR accesses of the root exit.
static MSR_BITMAP: spin::Once<u64> = spin::Once::new();
/// Guests: every MSR access exits (the hypervisor emulates the few they
/// get) but the `GUEST_PASSTHROUGH_MSRS`.
static GUEST_MSR_BITMAP: spin::Once<u64> = spin::Once::new();

fn msr_bitmap(guest: bool) -> Result<u64, &'static str> {
    if guest {
        return memory::shared_pages(&GUEST_MSR_BITMAP, 1, |page| {
            // SAFETY: the zeroed page was just allocated for the bitmap.
            unsafe { core::ptr::write_bytes(page as *mut u8, 0xFF, 4096) }
            for m in super::GUEST_PASSTHROUGH_MSRS {
                // Read-high at 0x400, write-high at 0xC00, a bit per MSR.
                let bit = (m & 0x1FFF) as u64;
                for half in [0x400, 0xC00] {
                    let byte = page + half + bit / 8;
                    // SAFETY: `byte` lies in the bitmap's page (bit / 8 < 0x400).
                    unsafe { *(byte as *mut u8) &= !(1 << (bit % 8)) };
                }
            }
        });
    }
    memory::shared_pages(&MSR_BITMAP, 1, |page| {
        // Layout: read-low 0x000, read-high 0x400, write-low 0x800, write-high 0xC00,
        // one bit per MSR (low: 0..0x1FFF, high: 0xC0000000..0xC0001FFF).
        let set = |offset: u64, msr: u32| {
            let bit = (msr & 0x1FFF) as u64;
            let byte = page + offset + bit / 8;
            // SAFETY: `byte` lies in the zeroed page just allocated for the bitmap.
            unsafe { *(byte as *mut u8) |= 1 << (bit % 8) };
        };
        // The virtualization MSRs, feature control, and the local APIC (the
        // hypervisor keeps it): reads and writes exit.
        for m in (0x480..=0x491)
            .chain([0x3A, msr::IA32_APIC_BASE])
            .chain(0x800..=0x8FF)
        {
            set(0x000, m);
            set(0x800, m);
        }
    })
}

/// Turns VMX operation on for this logical processor (once per LP, before
/// any of its VPs is created).
pub fn enable(caps: &VmxCaps) -> Result<(), &'static str> {
    if !caps.ept || !caps.vpid {
        return Err("VMX without EPT and VPID is not supported");
    }
    // Feature control: lock it with VMX on when the firmware left it open.
    let fc = msr::read(msr::IA32_FEATURE_CONTROL);
    if fc & 1 == 0 {
        // SAFETY: sets "VMX outside SMX" and the lock bit, as the SDM's
        // VMXON preconditions require; no memory effect.
        unsafe { msr::write(msr::IA32_FEATURE_CONTROL, fc | 1 | 4) };
    } else if fc & 4 == 0 {
        return Err("VMX disabled by the firmware (IA32_FEATURE_CONTROL locked)");
    }
    // CR0 and CR4 must meet the fixed bits (NE, and VMXE itself).
    let cr0 = (cpu::read_cr0() | msr::read(IA32_VMX_CR0_FIXED0)) & msr::read(IA32_VMX_CR0_FIXED1);
    let cr4 = (cpu::read_cr4() | CR4_VMXE | msr::read(IA32_VMX_CR4_FIXED0))
        & msr::read(IA32_VMX_CR4_FIXED1);
    // SAFETY: the fixed bits only add NE (native FPU errors) and VMXE.
    unsafe {
        cpu::write_cr0(cr0);
        cpu::write_cr4(cr4);
    }
    let vmxon = memory::alloc_zeroed_page().ok_or("no memory for the VMXON region")?;
    // SAFETY: the page is fresh, ours, identity-mapped; its first 4 bytes
    // hold the revision identifier (SDM 25.2).
    unsafe {
        *(vmxon as *mut u32) = revision();
        insn::vmxon(vmxon).map_err(|_| "VMXON failed")?;
    }
    Ok(())
}

fn revision() -> u32 {
    (msr::read(msr::IA32_VMX_BASIC) & 0x7FFF_FFFF) as u32
}

/// A fresh VMCS, cleared and made current on this LP.
fn new_vmcs() -> Result<u64, &'static str> {
    let vmcs = memory::alloc_zeroed_page().ok_or("no memory for the VMCS")?;
    // SAFETY: the page is fresh, ours, identity-mapped, and holds the
    // revision identifier; VMX operation is on (`enable`).
    unsafe {
        *(vmcs as *mut u32) = revision();
        insn::vmclear(vmcs).map_err(|_| "VMCLEAR failed")?;
        insn::vmptrld(vmcs).map_err(|_| "VMPTRLD failed")?;
    }
    Ok(vmcs)
}

/// Drops translations a recycled EPTP or VPID may still have cached (single
/// context where the processor offers it, else all contexts).
fn flush_tlb(caps: &VmxCaps, tag: u16) -> Result<(), &'static str> {
    let cap = msr::read(msr::IA32_VMX_EPT_VPID_CAP);
    let eptp = insn::vmread(field::EPT_POINTER);
    // SAFETY: VMX is on; each kind is one the capability MSR advertises.
    unsafe {
        if caps.invept {
            insn::invept(if cap & (1 << 25) != 0 { 1 } else { 2 }, [eptp, 0])
                .map_err(|_| "INVEPT failed")?;
        }
        if caps.invvpid {
            insn::invvpid(if cap & (1 << 41) != 0 { 1 } else { 2 }, [tag as u64, 0])
                .map_err(|_| "INVVPID failed")?;
        }
    }
    Ok(())
}

/// Primary processor-based control 23: MOV DR exits. Set until the VP
/// first uses a debug register (`VmxVcpu::pass_debug_registers`).
const MOV_DR_EXITING: u32 = 1 << 23;

impl VmxVcpu {
    /// The VMCS and its event and exit fields, for the report of a VP
    /// stopped on a fault (its VMCS is current: it has just exited).
    pub fn structures(&self) -> alloc::string::String {
        alloc::format!(
            "VMCS {:#x}, IDT vectoring {:#x}, entry event {:#x}, exit {:#x}/{:#x}/{:#x}",
            self.vmcs,
            insn::vmread(field::IDT_VECTORING_INFO),
            insn::vmread(field::ENTRY_INTERRUPTION_INFO),
            insn::vmread(field::EXIT_REASON),
            insn::vmread(field::EXIT_QUALIFICATION),
            insn::vmread(field::GUEST_PHYSICAL_ADDRESS),
        )
    }

    /// A root VP: the VMCS is created and left current.
    pub fn new(caps: &VmxCaps, s: &StartState) -> Result<Self, &'static str> {
        let vmcs = new_vmcs()?;
        let (proc, entry, cr0_fixed0) = Self::write_controls(caps, s.slat_root, s.tlb_tag, false)?;
        flush_tlb(caps, s.tlb_tag)?;
        Self::write_host_state()?;
        Self::write_guest_state(s)?;
        let regs = GuestRegs {
            rdi: s.rdi,
            ..Default::default()
        };
        Ok(Self::with(vmcs, proc, entry, cr0_fixed0, regs))
    }

    /// A guest partition's VP in the state `ctx`; its VMCS is left current.
    pub fn new_guest(
        caps: &VmxCaps,
        ctx: &hv_abi::partition::VpContext,
        slat_root: u64,
        tag: u16,
    ) -> Result<Self, &'static str> {
        let vmcs = new_vmcs()?;
        let (proc, entry, cr0_fixed0) = Self::write_controls(caps, slat_root, tag, true)?;
        flush_tlb(caps, tag)?;
        Self::write_host_state()?;
        for (f, v) in [
            (field::GUEST_DR7, 0x400),
            (field::GUEST_PENDING_DEBUG, 0),
            (field::GUEST_SYSENTER_CS, 0),
            (field::GUEST_SYSENTER_ESP, 0),
            (field::GUEST_SYSENTER_EIP, 0),
            (field::GUEST_DEBUGCTL, 0),
            (field::VMCS_LINK_POINTER, u64::MAX),
            (field::GUEST_INTERRUPTIBILITY, 0),
            (field::GUEST_ACTIVITY, 0),
        ] {
            vmwrite(f, v)?;
        }
        let mut v = Self::with(vmcs, proc, entry, cr0_fixed0, GuestRegs::default());
        v.syscall_msrs = Some(SyscallMsrLists::new()?);
        v.load_context(ctx)?;
        Ok(v)
    }

    fn with(vmcs: u64, proc: u32, entry: u32, cr0_fixed0: u64, regs: GuestRegs) -> Self {
        let timer_shift = msr::read(IA32_VMX_MISC) & 0x1F;
        let slice =
            (crate::time::tsc_hz() as u128 * super::TIME_SLICE_US as u128 / 1_000_000) as u64;
        VmxVcpu {
            regs,
            vmcs,
            launched: false,
            proc,
            entry,
            cr0_fixed0,
            timer_shift,
            slice,
            timer_deadline: None,
            timer_dirty: true,
            timer_saved: insn::vmread(field::EXIT_CONTROLS) & SAVE_PREEMPTION_TIMER as u64 != 0,
            cr2: 0,
            cr2_live: false,
            syscall_msrs: None,
        }
    }

    /// Makes this VP's VMCS the current one on this LP (its own LP: VPs do
    /// not move between LPs).
    pub fn activate(&mut self) {
        // SAFETY: the VMCS is this VP's, launched (if at all) only on this LP.
        let _ = unsafe { insn::vmptrld(self.vmcs) };
        // Another VP may have run here since: CR2 is set at the next entry.
        self.cr2_live = false;
    }

    /// Flushes the VP's cached guest-physical translations (after its
    /// partition's second-level table lost a mapping). The VMCS is current.
    pub fn flush(&self, caps: &VmxCaps) {
        let _ = flush_tlb(caps, insn::vmread(field::VPID) as u16);
    }

    /// Clears the VMCS and returns its page (the VP is gone; this runs on its LP).
    pub fn release(self) {
        // SAFETY: the VMCS is this VP's and is not used again.
        let _ = unsafe { insn::vmclear(self.vmcs) };
        memory::free_pages(self.vmcs, 1);
        if let Some(lists) = self.syscall_msrs {
            memory::free_pages(lists.page, 1);
        }
    }

    /// Loads a guest VP's architectural state into the current VMCS.
    pub fn load_context(&mut self, c: &hv_abi::partition::VpContext) -> Result<(), &'static str> {
        for (i, sg) in c.seg.iter().enumerate() {
            let i = i as u32 * 2;
            // A segment that is not present is "unusable" to VMX (bit 16).
            let access = if sg.attributes & 0x80 == 0 {
                1 << 16
            } else {
                (sg.attributes & 0xF0FF) as u64
            };
            vmwrite(field::GUEST_ES + i, sg.selector as u64)?;
            vmwrite(field::GUEST_ES_LIMIT + i, sg.limit as u64)?;
            vmwrite(field::GUEST_ES_ACCESS + i, access)?;
            vmwrite(field::GUEST_ES_BASE + i, sg.base)?;
        }
        vmwrite(field::GUEST_GDTR_BASE, c.gdtr.base)?;
        vmwrite(field::GUEST_GDTR_LIMIT, c.gdtr.limit as u64)?;
        vmwrite(field::GUEST_IDTR_BASE, c.idtr.base)?;
        vmwrite(field::GUEST_IDTR_LIMIT, c.idtr.limit as u64)?;
        let fixed1 = msr::read(IA32_VMX_CR0_FIXED1);
        vmwrite(field::GUEST_CR0, (c.cr0 | self.cr0_fixed0) & fixed1)?;
        vmwrite(field::CR0_SHADOW, c.cr0)?;
        self.write_cr4(c.cr4)?;
        vmwrite(field::GUEST_CR3, c.cr3)?;
        vmwrite(field::GUEST_RSP, c.gpr[4])?;
        vmwrite(field::GUEST_RIP, c.rip)?;
        vmwrite(field::GUEST_RFLAGS, c.rflags)?;
        vmwrite(field::GUEST_EFER, c.efer)?;
        vmwrite(field::GUEST_PAT, c.pat)?;
        const GUEST_64BIT: u32 = 1 << 9;
        self.entry = if c.efer & (1 << 10) != 0 {
            self.entry | GUEST_64BIT
        } else {
            self.entry & !GUEST_64BIT
        };
        vmwrite(field::ENTRY_CONTROLS, self.entry as u64)?;
        self.set_pending_event(c.pending_event);
        self.regs = super::regs_from_context(c);
        self.cr2 = c.cr2;
        self.cr2_live = false;
        Ok(())
    }

    /// The general registers, RIP and RFLAGS of `c` (the VMCS is current).
    pub fn load_registers(&mut self, c: &hv_abi::partition::VpContext) {
        let _ = vmwrite(field::GUEST_RSP, c.gpr[4]);
        let _ = vmwrite(field::GUEST_RIP, c.rip);
        let _ = vmwrite(field::GUEST_RFLAGS, c.rflags);
        self.regs = super::regs_from_context(c);
    }

    /// Reads the VP's architectural state out of the current VMCS.
    pub fn save_context(&self, c: &mut hv_abi::partition::VpContext) {
        for (i, sg) in c.seg.iter_mut().enumerate() {
            let i = i as u32 * 2;
            let access = insn::vmread(field::GUEST_ES_ACCESS + i);
            sg.selector = insn::vmread(field::GUEST_ES + i) as u16;
            sg.limit = insn::vmread(field::GUEST_ES_LIMIT + i) as u32;
            sg.base = insn::vmread(field::GUEST_ES_BASE + i);
            sg.attributes = if access & (1 << 16) != 0 {
                0
            } else {
                (access & 0xF0FF) as u16
            };
        }
        c.gdtr.base = insn::vmread(field::GUEST_GDTR_BASE);
        c.gdtr.limit = insn::vmread(field::GUEST_GDTR_LIMIT) as u16;
        c.idtr.base = insn::vmread(field::GUEST_IDTR_BASE);
        c.idtr.limit = insn::vmread(field::GUEST_IDTR_LIMIT) as u16;
        let (cr0, efer) = self.cr0_efer();
        c.cr0 = cr0;
        c.cr4 = self.cr4_cr3().0;
        c.cr3 = insn::vmread(field::GUEST_CR3);
        c.rip = insn::vmread(field::GUEST_RIP);
        c.rflags = insn::vmread(field::GUEST_RFLAGS);
        c.efer = efer;
        c.pat = insn::vmread(field::GUEST_PAT);
        c.cr2 = self.cr2;
        c.pending_event = self.pending_event();
        super::regs_to_context(&self.regs, insn::vmread(field::GUEST_RSP), c);
    }

    /// CS as the intercept messages report it.
    pub fn cs(&self) -> hv_abi::partition::Segment {
        let access = insn::vmread(field::GUEST_ES_ACCESS + 2);
        hv_abi::partition::Segment {
            selector: insn::vmread(field::GUEST_ES + 2) as u16,
            limit: insn::vmread(field::GUEST_ES_LIMIT + 2) as u32,
            base: insn::vmread(field::GUEST_ES_BASE + 2),
            attributes: (access & 0xF0FF) as u16,
        }
    }

    pub fn rflags(&self) -> u64 {
        insn::vmread(field::GUEST_RFLAGS)
    }

    /// CR0 as the VP sees it, and EFER.
    pub fn cr0_efer(&self) -> (u64, u64) {
        let mask = insn::vmread(field::CR0_MASK);
        let cr0 =
            (insn::vmread(field::GUEST_CR0) & !mask) | (insn::vmread(field::CR0_SHADOW) & mask);
        (cr0, insn::vmread(field::GUEST_EFER))
    }

    /// SS.DPL: the current privilege level.
    pub fn cpl(&self) -> u8 {
        ((insn::vmread(field::GUEST_ES_ACCESS + 4) >> 5) & 3) as u8
    }

    /// Length of the instruction that caused the last exit.
    pub fn instruction_length(&self) -> u8 {
        insn::vmread(field::EXIT_INSTRUCTION_LENGTH) as u8
    }

    pub fn set_exception_intercepts(&mut self, mask: u32) {
        let _ = vmwrite(field::EXCEPTION_BITMAP, mask as u64);
    }

    fn state_field(m: super::StateMsr) -> u32 {
        use super::StateMsr::*;
        match m {
            FsBase => field::GUEST_ES_BASE + 2 * 4,
            GsBase => field::GUEST_ES_BASE + 2 * 5,
            SysenterCs => field::GUEST_SYSENTER_CS,
            SysenterEsp => field::GUEST_SYSENTER_ESP,
            SysenterEip => field::GUEST_SYSENTER_EIP,
            Pat => field::GUEST_PAT,
        }
    }

    /// The VMCS is current.
    pub fn state_msr(&self, m: super::StateMsr) -> u64 {
        insn::vmread(Self::state_field(m))
    }

    pub fn set_state_msr(&mut self, m: super::StateMsr, v: u64) {
        let _ = vmwrite(Self::state_field(m), v);
    }

    /// A guest VP's copy of a syscall MSR (`SYSCALL_MSRS`).
    pub fn syscall_msr(&self, m: u32) -> Option<u64> {
        let i = SYSCALL_MSRS.iter().position(|&x| x == m)?;
        Some(self.syscall_msrs.as_ref()?.guest(i))
    }

    pub fn set_syscall_msr(&mut self, m: u32, v: u64) -> bool {
        let Some(i) = SYSCALL_MSRS.iter().position(|&x| x == m) else {
            return false;
        };
        match self.syscall_msrs.as_mut() {
            Some(lists) => {
                lists.set_guest(i, v);
                true
            }
            None => false,
        }
    }

    /// Writes the VP's EFER (an intercepted WRMSR): LMA is the processor's,
    /// it follows LME while paging is on; IA-32e mode follows it at entry.
    pub fn write_efer(&mut self, value: u64) -> bool {
        const ALLOWED: u64 = 1 | (1 << 8) | (1 << 10) | (1 << 11);
        if value & !ALLOWED != 0 {
            return false;
        }
        let old = insn::vmread(field::GUEST_EFER);
        let v = (value & !(1 << 10)) | (old & (1 << 10));
        vmwrite(field::GUEST_EFER, v).is_ok()
    }

    /// Writes the control fields of the current VMCS; returns the primary
    /// processor-based and entry controls and the CR0 bits the VP may not
    /// own. `guest`: a guest partition's VP (every port and MSR exits; real
    /// and protected mode without paging where the processor offers
    /// unrestricted guest).
    fn write_controls(
        caps: &VmxCaps,
        slat_root: u64,
        tag: u16,
        guest: bool,
    ) -> Result<(u32, u32, u64), &'static str> {
        let true_ctls = caps.true_controls;
        let pick = |plain: u32, truer: u32| msr::read(if true_ctls { truer } else { plain });
        let err = |_| "a required VMX control is not supported";
        const EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
        // A guest never receives an NMI meant for the host (the exit consumes it).
        const NMI_EXITING: u32 = 1 << 3;
        // A guest's own NMIs (IPIs from its VPs) are injected; the processor
        // blocks the next until the handler's IRET, as for a real NMI.
        const VIRTUAL_NMIS: u32 = 1 << 5;
        const PREEMPTION_TIMER: u32 = 1 << 6;
        let pin_needed = PREEMPTION_TIMER
            | EXTERNAL_INTERRUPT_EXITING
            | if guest { NMI_EXITING | VIRTUAL_NMIS } else { 0 };
        let pin = hypervisor_core::vmx_controls::adjust(
            pick(msr::IA32_VMX_PINBASED_CTLS, IA32_VMX_TRUE_PINBASED_CTLS),
            pin_needed,
            pin_needed,
        )
        .map_err(|_| "VMX without the preemption timer is not supported")?;
        // The timer counts down at the TSC rate divided by 2^IA32_VMX_MISC[4:0];
        // it restarts from this value at every VM entry (its value is not saved).
        let shift = msr::read(IA32_VMX_MISC) & 0x1F;
        let slice = (crate::time::tsc_hz() as u128 * super::TIME_SLICE_US as u128 / 1_000_000)
            as u64
            >> shift;
        vmwrite(field::PREEMPTION_TIMER, slice.clamp(1, u32::MAX as u64))?;
        const HLT_EXITING: u32 = 1 << 7;
        const MWAIT_EXITING: u32 = 1 << 10;
        const RDPMC_EXITING: u32 = 1 << 11;
        // CR8 is the VP's virtual TPR: the physical one would mask the
        // hypervisor's timer and kicks on this LP.
        const CR8_LOAD_EXITING: u32 = 1 << 19;
        const CR8_STORE_EXITING: u32 = 1 << 20;
        const IO_BITMAPS: u32 = 1 << 25;
        const MSR_BITMAPS: u32 = 1 << 28;
        const MONITOR_EXITING: u32 = 1 << 29;
        const SECONDARY: u32 = 1 << 31;
        let proc_needed = HLT_EXITING
            | MOV_DR_EXITING
            | IO_BITMAPS
            | MSR_BITMAPS
            | SECONDARY
            | CR8_LOAD_EXITING
            | CR8_STORE_EXITING
            | if guest {
                MWAIT_EXITING | RDPMC_EXITING | MONITOR_EXITING
            } else {
                0
            };
        let proc = hypervisor_core::vmx_controls::adjust(
            pick(msr::IA32_VMX_PROCBASED_CTLS, IA32_VMX_TRUE_PROCBASED_CTLS),
            proc_needed,
            proc_needed,
        )
        .map_err(err)?;
        const EPT: u32 = 1 << 1;
        const RDTSCP: u32 = 1 << 3;
        const VPID: u32 = 1 << 5;
        const INVPCID: u32 = 1 << 12;
        const XSAVES: u32 = 1 << 20;
        const UNRESTRICTED: u32 = 1 << 7;
        const WBINVD_EXITING: u32 = 1 << 6;
        let wanted2 = if guest {
            EPT | VPID | UNRESTRICTED | WBINVD_EXITING
        } else {
            EPT | VPID | RDTSCP | INVPCID | XSAVES
        };
        let proc2 = hypervisor_core::vmx_controls::adjust(
            msr::read(msr::IA32_VMX_PROCBASED_CTLS2),
            wanted2,
            EPT | VPID,
        )
        .map_err(err)?;
        // DR7 and DEBUGCTL are the VP's: saved at exit, loaded at entry (the
        // exit leaves the host DR7 = 0x400, so no guest breakpoint fires here).
        const SAVE_DEBUG: u32 = 1 << 2;
        const HOST_64BIT: u32 = 1 << 9;
        const SAVE_PAT: u32 = 1 << 18;
        const LOAD_PAT: u32 = 1 << 19;
        const SAVE_EFER: u32 = 1 << 20;
        const LOAD_EFER: u32 = 1 << 21;
        let exit = hypervisor_core::vmx_controls::adjust(
            pick(IA32_VMX_EXIT_CTLS, IA32_VMX_TRUE_EXIT_CTLS),
            SAVE_DEBUG
                | HOST_64BIT
                | SAVE_PAT
                | LOAD_PAT
                | SAVE_EFER
                | LOAD_EFER
                | SAVE_PREEMPTION_TIMER,
            SAVE_DEBUG | HOST_64BIT | SAVE_EFER | LOAD_EFER,
        )
        .map_err(err)?;
        const LOAD_DEBUG: u32 = 1 << 2;
        const GUEST_64BIT: u32 = 1 << 9;
        const ENTRY_LOAD_PAT: u32 = 1 << 14;
        const ENTRY_LOAD_EFER: u32 = 1 << 15;
        let entry = hypervisor_core::vmx_controls::adjust(
            pick(IA32_VMX_ENTRY_CTLS, IA32_VMX_TRUE_ENTRY_CTLS),
            LOAD_DEBUG | GUEST_64BIT | ENTRY_LOAD_PAT | ENTRY_LOAD_EFER,
            LOAD_DEBUG | GUEST_64BIT | ENTRY_LOAD_EFER,
        )
        .map_err(err)?;
        log::debug!(
            "VMX controls: pin {pin:#x} proc {proc:#x} proc2 {proc2:#x} exit {exit:#x} entry {entry:#x} (procbased capability {:#x})",
            pick(msr::IA32_VMX_PROCBASED_CTLS, IA32_VMX_TRUE_PROCBASED_CTLS)
        );
        vmwrite(field::PIN_CONTROLS, pin as u64)?;
        vmwrite(field::PROC_CONTROLS, proc as u64)?;
        vmwrite(field::PROC_CONTROLS2, proc2 as u64)?;
        vmwrite(field::EXIT_CONTROLS, exit as u64)?;
        vmwrite(field::ENTRY_CONTROLS, entry as u64)?;
        // Machine checks exit; every other exception is the partition's own.
        vmwrite(field::EXCEPTION_BITMAP, 1 << 18)?;
        vmwrite(field::MSR_BITMAP, msr_bitmap(guest)?)?;
        let io = io_bitmaps(guest)?;
        vmwrite(field::IO_BITMAP_A, io)?;
        vmwrite(field::IO_BITMAP_B, io + 4096)?;
        // EPTP: 4-level walk; the paging structures' memory type is write-back
        // where IA32_VMX_EPT_VPID_CAP[14] allows it, else uncached (SDM 25.6.11).
        let structures_type = if caps.ept_wb { 6 } else { 0 };
        vmwrite(field::EPT_POINTER, slat_root | (3 << 3) | structures_type)?;
        vmwrite(field::VPID, tag as u64)?;
        // The VP owns CR0 and CR4 except the bits VMX fixes; VMXE is hidden.
        // Unrestricted guest lifts PE and PG from the fixed bits.
        let mut cr0_fixed = msr::read(IA32_VMX_CR0_FIXED0);
        if proc2 & UNRESTRICTED != 0 {
            cr0_fixed &= !((1 << 31) | 1);
        }
        let cr4_fixed = msr::read(IA32_VMX_CR4_FIXED0);
        // A guest's PE and PG writes exit too: a mode switch (an AP started
        // in real mode going to long mode) is emulated in one place
        // (`write_cr0`), which keeps EFER.LMA and the IA-32e entry control.
        let cr0_mask = if guest {
            cr0_fixed | (1 << 31) | 1
        } else {
            cr0_fixed
        };
        vmwrite(field::CR0_MASK, cr0_mask)?;
        // A guest owns only the CR4 bits it may set: writing any other exits
        // (and is refused, `cpuid_view::guest_cr4_allowed`).
        let cr4_mask = if guest {
            cr4_fixed | !crate::cpuid_view::guest_cr4_allowed()
        } else {
            cr4_fixed
        };
        vmwrite(field::CR4_MASK, cr4_mask)?;
        vmwrite(field::CR0_SHADOW, START_CR0 | START_CR0_WP)?;
        vmwrite(field::CR4_SHADOW, START_CR4)?;
        Ok((proc, entry, cr0_fixed))
    }

    fn write_host_state() -> Result<(), &'static str> {
        let (gdt, idt) = {
            let g = x86_64::instructions::tables::sgdt();
            let i = x86_64::instructions::tables::sidt();
            (g.base.as_u64(), i.base.as_u64())
        };
        let tss = crate::percpu::current()
            .ok_or("no per-CPU data")?
            .tables
            .tss_address();
        vmwrite(field::HOST_CR0, cpu::read_cr0())?;
        vmwrite(field::HOST_CR3, cpu::read_cr3())?;
        vmwrite(field::HOST_CR4, cpu::read_cr4())?;
        for (f, sel) in [
            (field::HOST_ES, 0x10),
            (field::HOST_CS, 0x08),
            (field::HOST_SS, 0x10),
            (field::HOST_DS, 0x10),
            (field::HOST_FS, 0),
            (field::HOST_GS, 0),
            (field::HOST_TR, 0x18),
        ] {
            vmwrite(f, sel)?;
        }
        vmwrite(field::HOST_FS_BASE, 0)?;
        vmwrite(field::HOST_GS_BASE, msr::read(msr::IA32_GS_BASE))?;
        vmwrite(field::HOST_TR_BASE, tss)?;
        vmwrite(field::HOST_GDTR_BASE, gdt)?;
        vmwrite(field::HOST_IDTR_BASE, idt)?;
        vmwrite(field::HOST_SYSENTER_CS, 0)?;
        vmwrite(field::HOST_SYSENTER_ESP, 0)?;
        vmwrite(field::HOST_SYSENTER_EIP, 0)?;
        vmwrite(field::HOST_EFER, msr::read(msr::IA32_EFER))?;
        vmwrite(field::HOST_PAT, msr::read(IA32_PAT))?;
        vmwrite(field::HOST_RIP, vmx_exit as *const () as u64)?;
        Ok(())
    }

    fn write_guest_state(s: &StartState) -> Result<(), &'static str> {
        // Segments ES, CS, SS, DS, FS, GS, LDTR, TR: selector, limit, access rights, base.
        // Access rights: 0xA09B = 64-bit code; 0xC093 = data; LDTR unusable; 0x8B = busy TSS.
        let segs: [(u64, u64, u64, u64); 8] = [
            (0x10, 0xFFFF_FFFF, 0xC093, 0),
            (0x08, 0xFFFF_FFFF, 0xA09B, 0),
            (0x10, 0xFFFF_FFFF, 0xC093, 0),
            (0x10, 0xFFFF_FFFF, 0xC093, 0),
            (0x10, 0xFFFF_FFFF, 0xC093, 0),
            (0x10, 0xFFFF_FFFF, 0xC093, 0),
            (0, 0, 1 << 16, 0),
            (0x18, 0x67, 0x8B, s.tr_base),
        ];
        for (i, (sel, limit, access, base)) in segs.into_iter().enumerate() {
            let i = i as u32 * 2;
            vmwrite(field::GUEST_ES + i, sel)?;
            vmwrite(field::GUEST_ES_LIMIT + i, limit)?;
            vmwrite(field::GUEST_ES_ACCESS + i, access)?;
            vmwrite(field::GUEST_ES_BASE + i, base)?;
        }
        vmwrite(field::GUEST_GDTR_BASE, s.gdt_base)?;
        vmwrite(field::GUEST_GDTR_LIMIT, s.gdt_limit as u64)?;
        vmwrite(field::GUEST_IDTR_BASE, 0)?;
        vmwrite(field::GUEST_IDTR_LIMIT, 0)?;
        let cr0 = (START_CR0 | START_CR0_WP | msr::read(IA32_VMX_CR0_FIXED0))
            & msr::read(IA32_VMX_CR0_FIXED1);
        let cr4 = (START_CR4 | msr::read(IA32_VMX_CR4_FIXED0)) & msr::read(IA32_VMX_CR4_FIXED1);
        vmwrite(field::GUEST_CR0, cr0)?;
        vmwrite(field::GUEST_CR3, s.cr3)?;
        vmwrite(field::GUEST_CR4, cr4)?;
        vmwrite(field::GUEST_DR7, 0x400)?;
        vmwrite(field::GUEST_RSP, s.rsp)?;
        vmwrite(field::GUEST_RIP, s.rip)?;
        vmwrite(field::GUEST_RFLAGS, 0x2)?;
        vmwrite(field::GUEST_PENDING_DEBUG, 0)?;
        vmwrite(field::GUEST_SYSENTER_CS, 0)?;
        vmwrite(field::GUEST_SYSENTER_ESP, 0)?;
        vmwrite(field::GUEST_SYSENTER_EIP, 0)?;
        vmwrite(field::GUEST_DEBUGCTL, 0)?;
        vmwrite(field::GUEST_PAT, START_PAT)?;
        vmwrite(field::GUEST_EFER, START_EFER)?;
        vmwrite(field::VMCS_LINK_POINTER, u64::MAX)?;
        vmwrite(field::GUEST_INTERRUPTIBILITY, 0)?;
        vmwrite(field::GUEST_ACTIVITY, 0)?;
        Ok(())
    }

    pub fn run(&mut self) -> Exit {
        if self.timer_dirty || !self.timer_saved {
            // The slice, cut short by the VP's virtual timer.
            let ticks = match self.timer_deadline {
                Some(d) => d.saturating_sub(cpu::rdtsc()).min(self.slice),
                None => self.slice,
            };
            let _ = vmwrite(
                field::PREEMPTION_TIMER,
                (ticks >> self.timer_shift).clamp(1, u32::MAX as u64),
            );
            self.timer_dirty = false;
        }
        if !self.cr2_live {
            cpu::write_cr2(self.cr2);
        }
        if let Some(lists) = self.syscall_msrs.as_mut() {
            lists.keep_root_values();
        }
        // SAFETY: this VP's VMCS is current (the LP's scheduler activates
        // it before running the VP); `regs` outlives the call; the host state
        // in the VMCS returns to `vmx_exit` on this stack with every
        // callee-saved register restored by the assembly.
        let failed = unsafe { vmx_enter(&mut self.regs, self.launched as u64) };
        self.cr2 = cpu::read_cr2();
        self.cr2_live = true;
        if failed != 0 {
            return Exit::EntryFailed(insn::vmread(field::VM_INSTRUCTION_ERROR));
        }
        let reason = insn::vmread(field::EXIT_REASON);
        if reason & (1 << 31) != 0 {
            // VM-entry failure (invalid guest state: basic reason 33, and so
            // on): the VMCS stays unlaunched (SDM vol. 3 section 26.8).
            return Exit::EntryFailed(reason);
        }
        self.launched = true;
        let basic = reason & 0xFFFF;
        // The exits of instructions the VP executed: never during an event's
        // delivery, no IDT-vectoring information (SDM vol. 3 section
        // 28.2.4). The commonest exits, answered without further VMREADs.
        match basic {
            10 => return Exit::Cpuid,
            31 => return Exit::MsrRead,
            32 => return Exit::MsrWrite,
            18 => return Exit::Hypercall,
            12 => return Exit::Halt,
            29 => return Exit::DebugRegisterAccess,
            _ => {}
        }
        // An event whose delivery exited is delivered again at the next entry
        // (SDM vol. 3 section 28.2.4), unless the exit handler injects another.
        let vectoring = insn::vmread(field::IDT_VECTORING_INFO);
        if vectoring & EVENT_VALID != 0 {
            let error = insn::vmread(field::IDT_VECTORING_ERROR_CODE);
            let length = insn::vmread(field::EXIT_INSTRUCTION_LENGTH) & 0xF;
            self.set_pending_event(vectoring & 0x8000_0FFF | length << 12 | error << 32);
        }
        let qualification = insn::vmread(field::EXIT_QUALIFICATION);
        self.reblock_nmi_after_faulting_iret(basic, qualification, vectoring);
        match basic {
            // Interruption information: vector 7:0, type 10:8, error code valid 11.
            0 => {
                let info = insn::vmread(field::EXIT_INTERRUPTION_INFO);
                let kind = (info >> EVENT_TYPE_SHIFT) & 7;
                match info & 0xFF {
                    2 if kind == 2 => Exit::Nmi,
                    18 => Exit::MachineCheck,
                    v => {
                        let software = matches!(
                            kind,
                            TYPE_PRIVILEGED_SOFTWARE_EXCEPTION | TYPE_SOFTWARE_EXCEPTION
                        );
                        // A #DB exit leaves DR6 unchanged and reports its bits
                        // (B0-B3, BD, BS) in the qualification instead (SDM
                        // vol. 3 section 28.2.1): they go to DR6 for the VP.
                        if v == 1 && kind == TYPE_HARDWARE_EXCEPTION {
                            let bits = qualification & (0xF | 1 << 13 | 1 << 14);
                            cpu::write_dr::<6>(cpu::read_dr::<6>() | bits);
                        }
                        Exit::Exception {
                            vector: v as u8,
                            error_code: (info & EVENT_HAS_ERROR != 0)
                                .then(|| insn::vmread(field::EXIT_INTERRUPTION_ERROR_CODE) as u32),
                            parameter: qualification,
                            length: if software {
                                self.instruction_length()
                            } else {
                                0
                            },
                        }
                    }
                }
            }
            1 => Exit::ExternalInterrupt,
            2 => Exit::TripleFault,
            13 | 54 => Exit::Invd,
            15 => Exit::Rdpmc,
            19..=27 | 36 | 39 | 50 | 53 => Exit::Undefined,
            // Qualification: CR 3:0, access type 5:4 (0 MOV to, 1 MOV from,
            // 2 CLTS, 3 LMSW), general register 11:8.
            28 => {
                let kind = (qualification >> 4) & 3;
                Exit::CrAccess {
                    cr: (qualification & 0xF) as u8,
                    write: kind != 1,
                    gpr: (kind < 2).then_some(((qualification >> 8) & 0xF) as u8),
                }
            }
            // Qualification: size - 1 in 2:0, IN 3, string 4, REP 5, port 31:16.
            30 => Exit::Io(super::IoAccess {
                port: (qualification >> 16) as u16,
                size: (qualification & 7) as u8 + 1,
                write: qualification & 8 == 0,
                string: qualification & 16 != 0,
                rep: qualification & 32 != 0,
                length: self.instruction_length(),
            }),
            41 => Exit::MachineCheck,
            7 | 8 => Exit::InterruptWindow,
            52 => Exit::Preemption,
            48 => Exit::SlatViolation {
                gpa: insn::vmread(field::GUEST_PHYSICAL_ADDRESS),
                write: qualification & 2 != 0,
                execute: qualification & 4 != 0,
            },
            55 => Exit::Xsetbv,
            other => Exit::Other(other),
        }
    }

    pub fn rip(&self) -> u64 {
        insn::vmread(field::GUEST_RIP)
    }

    /// Moves RIP past the exiting instruction. The STI / MOV SS shadow ended
    /// with it (it was the instruction the shadow covered), as it would have
    /// on hardware: clear it, or it would cover the next instruction too.
    pub fn skip_instruction(&mut self) {
        self.advance_rip(insn::vmread(field::EXIT_INSTRUCTION_LENGTH) as u8);
    }

    /// Moves RIP `length` bytes on (an instruction the hypervisor decoded).
    pub fn advance_rip(&mut self, length: u8) {
        self.move_past(self.rip() + length as u64);
    }

    /// RIP set to `rip`, past the instruction at the old one: its STI or
    /// MOV SS shadow is over.
    pub fn move_past(&mut self, rip: u64) {
        let _ = vmwrite(field::GUEST_RIP, rip);
        let blocking = insn::vmread(field::GUEST_INTERRUPTIBILITY);
        if blocking & 3 != 0 {
            let _ = vmwrite(field::GUEST_INTERRUPTIBILITY, blocking & !3);
        }
    }

    pub fn interrupts_enabled(&self) -> bool {
        insn::vmread(field::GUEST_RFLAGS) & (1 << 9) != 0
    }

    pub fn interruptible(&self) -> bool {
        self.interrupts_enabled()
            && insn::vmread(field::GUEST_INTERRUPTIBILITY) & 3 == 0
            && insn::vmread(field::ENTRY_INTERRUPTION_INFO) & (1 << 31) == 0
    }

    /// No virtual-NMI blocking, no STI or MOV SS shadow, nothing injected.
    pub fn nmi_allowed(&self) -> bool {
        insn::vmread(field::GUEST_INTERRUPTIBILITY) & (BLOCKING_BY_STI_MOV_SS | BLOCKING_BY_NMI)
            == 0
            && insn::vmread(field::ENTRY_INTERRUPTION_INFO) & EVENT_VALID == 0
    }

    pub fn inject_nmi(&mut self) {
        let _ = vmwrite(
            field::ENTRY_INTERRUPTION_INFO,
            2 | TYPE_NMI << EVENT_TYPE_SHIFT | EVENT_VALID,
        );
    }

    /// NMI-window exiting: an exit as soon as the VP could take an NMI.
    pub fn set_nmi_window(&mut self, on: bool) {
        const NMI_WINDOW_EXITING: u32 = 1 << 22;
        let proc = if on {
            self.proc | NMI_WINDOW_EXITING
        } else {
            self.proc & !NMI_WINDOW_EXITING
        };
        if proc != self.proc {
            self.proc = proc;
            let _ = vmwrite(field::PROC_CONTROLS, proc as u64);
        }
    }

    /// An exception or EPT violation during an IRET that had unblocked NMIs
    /// (bit 12 of the interruption information or qualification): the IRET
    /// did not complete, so the blocking is restored (SDM vol. 3 section
    /// 28.2.3), unless the exit interrupted an event's delivery.
    fn reblock_nmi_after_faulting_iret(&mut self, reason: u64, qualification: u64, vectoring: u64) {
        const NMI_UNBLOCKED_BY_IRET: u64 = 1 << 12;
        let unblocked = match reason {
            0 => insn::vmread(field::EXIT_INTERRUPTION_INFO) & NMI_UNBLOCKED_BY_IRET != 0,
            48 => qualification & NMI_UNBLOCKED_BY_IRET != 0,
            _ => false,
        };
        if unblocked && vectoring & EVENT_VALID == 0 {
            let blocking = insn::vmread(field::GUEST_INTERRUPTIBILITY);
            let _ = vmwrite(field::GUEST_INTERRUPTIBILITY, blocking | BLOCKING_BY_NMI);
        }
    }

    pub fn inject_interrupt(&mut self, vector: u8) {
        // Type 0: external interrupt.
        let _ = vmwrite(field::ENTRY_INTERRUPTION_INFO, vector as u64 | (1 << 31));
    }

    /// The VP's first MOV DR: from now on its debug registers are its own
    /// in the processor (the LP switches them, `lazy::DebugState`).
    pub fn pass_debug_registers(&mut self) {
        self.proc &= !MOV_DR_EXITING;
        let _ = vmwrite(field::PROC_CONTROLS, self.proc as u64);
    }

    pub fn set_interrupt_window(&mut self, on: bool) {
        const INTERRUPT_WINDOW_EXITING: u32 = 1 << 2;
        let proc = if on {
            self.proc | INTERRUPT_WINDOW_EXITING
        } else {
            self.proc & !INTERRUPT_WINDOW_EXITING
        };
        if proc != self.proc {
            self.proc = proc;
            let _ = vmwrite(field::PROC_CONTROLS, proc as u64);
        }
    }

    pub fn set_timer_deadline(&mut self, deadline: Option<u64>) {
        self.timer_deadline = deadline;
        self.timer_dirty = true;
    }

    /// Interruption information: the vector, its type (a software exception
    /// when `length` > 0: ICEBP is privileged, INT3/INTO are not; delivery
    /// then skips the instruction), valid.
    pub fn inject_exception(&mut self, vector: u8, error_code: Option<u32>, length: u8) {
        let kind = match (length, vector) {
            (0, _) => TYPE_HARDWARE_EXCEPTION,
            (_, 1) => TYPE_PRIVILEGED_SOFTWARE_EXCEPTION,
            _ => TYPE_SOFTWARE_EXCEPTION,
        };
        let mut info = vector as u64 | kind << EVENT_TYPE_SHIFT | EVENT_VALID;
        if let Some(code) = error_code {
            info |= EVENT_HAS_ERROR | (code as u64) << 32;
        }
        self.set_pending_event(info | (length as u64 & 0xF) << 12);
    }

    /// Injects an event in the `VpContext::pending_event` format at the next
    /// entry (0: none).
    fn set_pending_event(&mut self, event: u64) {
        if event & EVENT_VALID != 0 {
            let _ = vmwrite(field::ENTRY_EXCEPTION_ERROR_CODE, event >> 32);
            let _ = vmwrite(field::ENTRY_INSTRUCTION_LENGTH, (event >> 12) & 0xF);
        }
        let _ = vmwrite(field::ENTRY_INTERRUPTION_INFO, event & 0x8000_0FFF);
    }

    fn pending_event(&self) -> u64 {
        let info = insn::vmread(field::ENTRY_INTERRUPTION_INFO);
        if info & EVENT_VALID == 0 {
            return 0;
        }
        info & 0x8000_0FFF
            | (insn::vmread(field::ENTRY_INSTRUCTION_LENGTH) & 0xF) << 12
            | insn::vmread(field::ENTRY_EXCEPTION_ERROR_CODE) << 32
    }

    pub fn rsp(&self) -> u64 {
        insn::vmread(field::GUEST_RSP)
    }

    pub fn set_rsp(&mut self, v: u64) {
        let _ = vmwrite(field::GUEST_RSP, v);
    }

    /// CR4 as the VP sees it (the shadow for the bits it does not own), CR3.
    pub fn cr4_cr3(&self) -> (u64, u64) {
        let mask = insn::vmread(field::CR4_MASK);
        let cr4 =
            (insn::vmread(field::GUEST_CR4) & !mask) | (insn::vmread(field::CR4_SHADOW) & mask);
        (cr4, insn::vmread(field::GUEST_CR3))
    }

    /// Sets CR4 as the VP sees it; the processor's has VMX's fixed bits too.
    pub fn set_cr4(&mut self, v: u64) {
        let _ = self.write_cr4(v);
    }

    /// A guest's MOV to CR0 that exited (a bit it may not own changed):
    /// the new value as the VP sees it, with the checks of the SDM's MOV to
    /// CR0 (#GP: bits 63:32, PG without PE, NW without CD, long-mode paging
    /// without PAE); PG set with EFER.LME enters IA-32e mode (LMA and the
    /// entry control), PG cleared leaves it. `false`: #GP.
    pub fn write_cr0(&mut self, v: u64) -> bool {
        const PE: u64 = 1;
        const NW: u64 = 1 << 29;
        const CD: u64 = 1 << 30;
        const PG: u64 = 1 << 31;
        const LME: u64 = 1 << 8;
        const LMA: u64 = 1 << 10;
        const GUEST_64BIT: u32 = 1 << 9;
        let (old, mut efer) = self.cr0_efer();
        if v >> 32 != 0 || (v & PG != 0 && v & PE == 0) || (v & NW != 0 && v & CD == 0) {
            return false;
        }
        let (cr4, _) = self.cr4_cr3();
        if v & PG != 0 && old & PG == 0 && efer & LME != 0 {
            if cr4 & (1 << 5) == 0 {
                return false;
            }
            efer |= LMA;
        } else if v & PG == 0 && old & PG != 0 {
            efer &= !LMA;
        }
        self.entry = if efer & LMA != 0 {
            self.entry | GUEST_64BIT
        } else {
            self.entry & !GUEST_64BIT
        };
        let fixed1 = msr::read(IA32_VMX_CR0_FIXED1);
        vmwrite(field::GUEST_CR0, (v | self.cr0_fixed0) & fixed1).is_ok()
            && vmwrite(field::CR0_SHADOW, v).is_ok()
            && vmwrite(field::GUEST_EFER, efer).is_ok()
            && vmwrite(field::ENTRY_CONTROLS, self.entry as u64).is_ok()
    }

    fn write_cr4(&self, v: u64) -> Result<(), &'static str> {
        let real = (v | msr::read(IA32_VMX_CR4_FIXED0)) & msr::read(IA32_VMX_CR4_FIXED1);
        vmwrite(field::GUEST_CR4, real)?;
        vmwrite(field::CR4_SHADOW, v)
    }
}
