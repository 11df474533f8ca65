//! The root's IDT: every exception vector (0-31) reports
//! `ROOT EXCEPTION vector N rip=... cr2=...` on COM1 and stops the machine
//! with failure (`power::fail`), so a root bug is visible instead of ending
//! in a silent triple fault. NMIs are reported
//! and resumed. Vectors 32-255 stay absent: interrupts are off, and a stray
//! `int n` arrives as #NP (vector 11) and is reported.
//!
//! #DF, NMI and #MC run on their own stack (IST1, set in the TSS the
//! hypervisor gave the root), so a stack overflow still gets a report.
use crate::arch::cr2;
use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Registers as the common stub leaves them on the stack.
#[repr(C)]
pub struct Frame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

// Stubs: push a zero error code where the CPU pushes none, then the vector;
// the common part saves every general register, calls `root_exception` on a
// 16-byte aligned stack and, if it returns (NMI), restores and IRETQs.
global_asm!(
    ".section .text.root_isr, \"ax\"",
    ".macro ROOT_ISR n, has_error",
    "root_isr_\\n:",
    ".if \\has_error == 0",
    "    push 0",
    ".endif",
    "    push \\n",
    "    jmp root_isr_common",
    ".endm",
    "ROOT_ISR 0, 0", "ROOT_ISR 1, 0", "ROOT_ISR 2, 0", "ROOT_ISR 3, 0",
    "ROOT_ISR 4, 0", "ROOT_ISR 5, 0", "ROOT_ISR 6, 0", "ROOT_ISR 7, 0",
    "ROOT_ISR 8, 1", "ROOT_ISR 9, 0", "ROOT_ISR 10, 1", "ROOT_ISR 11, 1",
    "ROOT_ISR 12, 1", "ROOT_ISR 13, 1", "ROOT_ISR 14, 1", "ROOT_ISR 15, 0",
    "ROOT_ISR 16, 0", "ROOT_ISR 17, 1", "ROOT_ISR 18, 0", "ROOT_ISR 19, 0",
    "ROOT_ISR 20, 0", "ROOT_ISR 21, 1", "ROOT_ISR 22, 0", "ROOT_ISR 23, 0",
    "ROOT_ISR 24, 0", "ROOT_ISR 25, 0", "ROOT_ISR 26, 0", "ROOT_ISR 27, 0",
    "ROOT_ISR 28, 0", "ROOT_ISR 29, 1", "ROOT_ISR 30, 1", "ROOT_ISR 31, 0",
    "root_isr_common:",
    "    push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
    "    push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
    "    cld",
    "    mov rdi, rsp",
    "    mov rbx, rsp",
    "    and rsp, -16",
    "    call {handler}",
    "    mov rsp, rbx",
    "    pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
    "    pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
    "    add rsp, 16",
    "    iretq",
    ".section .rodata.root_isr_table, \"a\"",
    ".balign 8",
    ".global root_isr_table",
    "root_isr_table:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "    .quad root_isr_\\n",
    ".endr",
    ".text",
    handler = sym root_exception,
);

extern "C" {
    static root_isr_table: [u64; 32];
    fn root_irq_timer();
    fn root_irq_ipi();
    fn root_irq_sint();
    fn root_irq_vmbus();
    fn root_irq_serial();
}

/// Interrupts from the virtual APIC's timer, counted by `root_irq_timer`.
pub static TIMER_TICKS: AtomicU64 = AtomicU64::new(0);
/// IPIs received (vector `IPI_VECTOR`), counted by `root_irq_ipi` on any VP.
pub static IPIS: AtomicU64 = AtomicU64::new(0);
pub const TIMER_VECTOR: u8 = 0x40;
pub const IPI_VECTOR: u8 = 0x41;
/// The SynIC's intercept SINT: a message waits in the SIMP page.
pub const SINT_VECTOR: u8 = 0x42;
/// SINT interrupts taken.
pub static SINTS: AtomicU64 = AtomicU64::new(0);
/// The VMBus SINT: a message in its slot, or event flags set.
pub const VMBUS_VECTOR: u8 = 0x43;
/// VMBus SINT interrupts taken: the worker reads the VMBus slot and flags
/// only after one (or at its housekeeping tick).
pub static VMBUS_SINTS: AtomicU64 = AtomicU64::new(0);
/// COM1's receive interrupt, from the machine's I/O APIC through the
/// hypervisor (the first of `hv_abi::ROOT_DEVICE_VECTORS`).
pub const SERIAL_VECTOR: u8 = 0x50;
/// COM1 interrupts taken: each wakes the idle shell to read the UART.
pub static SERIAL_IRQS: AtomicU64 = AtomicU64::new(0);
/// Set once VP 0 has built the IDT: the other VPs then load it.
static READY: AtomicBool = AtomicBool::new(false);

// Count, then EOI to the x2APIC (MSR 0x80B), then return: no Rust, no stack
// beyond the three saved registers.
global_asm!(
    ".section .text.root_irq, \"ax\"",
    ".global root_irq_timer",
    "root_irq_timer:",
    "    push rax", "push rcx", "push rdx",
    "    lock inc qword ptr [rip + {ticks}]",
    "    mov ecx, 0x80B", "xor eax, eax", "xor edx, edx", "wrmsr",
    "    pop rdx", "pop rcx", "pop rax",
    "    iretq",
    ".global root_irq_ipi",
    "root_irq_ipi:",
    "    push rax", "push rcx", "push rdx",
    "    lock inc qword ptr [rip + {ipis}]",
    "    mov ecx, 0x80B", "xor eax, eax", "xor edx, edx", "wrmsr",
    "    pop rdx", "pop rcx", "pop rax",
    "    iretq",
    // The SINTs are AutoEOI (kernel/synic.rs): no EOI.
    ".global root_irq_sint",
    "root_irq_sint:",
    "    lock inc qword ptr [rip + {sints}]",
    "    iretq",
    ".global root_irq_vmbus",
    "root_irq_vmbus:",
    "    lock inc qword ptr [rip + {vmbus_sints}]",
    "    iretq",
    ".global root_irq_serial",
    "root_irq_serial:",
    "    push rax", "push rcx", "push rdx",
    "    lock inc qword ptr [rip + {serial_irqs}]",
    "    mov ecx, 0x80B", "xor eax, eax", "xor edx, edx", "wrmsr",
    "    pop rdx", "pop rcx", "pop rax",
    "    iretq",
    ".text",
    serial_irqs = sym SERIAL_IRQS,
    ticks = sym TIMER_TICKS,
    ipis = sym IPIS,
    sints = sym SINTS,
    vmbus_sints = sym VMBUS_SINTS,
);

extern "C" fn root_exception(f: &mut Frame) {
    let v = f.vector as usize;
    if v == 2 {
        crate::println!("root partition: NMI at rip={:#x}, resumed", f.rip);
        return;
    }
    crate::println!(
        "ROOT EXCEPTION vector {v} rip={:#x} cr2={:#x} error={:#x} ({})",
        f.rip,
        cr2(),
        f.error,
        hypervisor_core::exceptions::name(v as u64)
    );
    crate::println!(
        "  rsp={:#x} rflags={:#x} cs={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}",
        f.rsp, f.rflags, f.cs, f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp
    );
    crate::println!(
        "  r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}",
        f.r8,
        f.r9,
        f.r10,
        f.r11,
        f.r12,
        f.r13,
        f.r14,
        f.r15
    );
    crate::println!("root partition halted");
    crate::power::fail()
}

#[repr(C, align(16))]
struct Idt(UnsafeCell<[u64; 512]>);
// SAFETY: written once by VP 0 before `lidt`; no other VP uses it.
unsafe impl Sync for Idt {}
static IDT: Idt = Idt(UnsafeCell::new([0; 512]));

#[repr(C, align(16))]
struct Stack(UnsafeCell<[u8; 16384]>);
// SAFETY: used only by the processor as VP 0's IST1 stack.
unsafe impl Sync for Stack {}
static IST_STACK: Stack = Stack(UnsafeCell::new([0; 16384]));

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

/// The base of the TSS that TR selects, from the live GDT (0: none).
fn tss_base() -> u64 {
    let mut gdtr = Pointer { limit: 0, base: 0 };
    let tr: u16;
    // SAFETY: SGDT stores 10 bytes into `gdtr`; STR reads the task register.
    unsafe {
        asm!("sgdt [{}]", in(reg) &mut gdtr, options(nostack, preserves_flags));
        asm!("str {0:x}", out(reg) tr, options(nomem, nostack, preserves_flags));
    }
    let (base, limit) = (gdtr.base, gdtr.limit as u64);
    let sel = (tr & !7) as u64;
    if sel == 0 || sel + 15 > limit {
        return 0;
    }
    // SAFETY: the GDT lies in root memory (the hypervisor's boot area), which
    // the identity map covers; the descriptor is within its limit.
    let (lo, hi) = unsafe {
        (
            core::ptr::read_unaligned((base + sel) as *const u64),
            core::ptr::read_unaligned((base + sel + 8) as *const u64),
        )
    };
    ((lo >> 16) & 0xFF_FFFF) | ((lo >> 56) & 0xFF) << 24 | (hi & 0xFFFF_FFFF) << 32
}

/// Builds and loads the IDT (VP 0 only, once).
pub fn init() {
    let tss = tss_base();
    let ist = if tss != 0 {
        let top = IST_STACK.0.get() as u64 + 16384;
        // SAFETY: IST1 is the u64 at offset 0x24 of the 64-bit TSS, which the
        // hypervisor put in root memory for this VP; nothing else uses IST1.
        unsafe { core::ptr::write_unaligned((tss + 0x24) as *mut u64, top) };
        1
    } else {
        0
    };
    let cs: u16;
    // SAFETY: reading CS has no side effect.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    // SAFETY: the table is an immutable array of 32 stub addresses built by the assembler.
    let stubs = unsafe { core::ptr::addr_of!(root_isr_table).read() };
    let idt = IDT.0.get();
    let irqs = [
        (TIMER_VECTOR as usize, root_irq_timer as *const () as u64),
        (IPI_VECTOR as usize, root_irq_ipi as *const () as u64),
        (SINT_VECTOR as usize, root_irq_sint as *const () as u64),
        (VMBUS_VECTOR as usize, root_irq_vmbus as *const () as u64),
        (SERIAL_VECTOR as usize, root_irq_serial as *const () as u64),
    ];
    for (v, stub) in stubs.iter().copied().enumerate().chain(irqs) {
        let ist = if matches!(v, 2 | 8 | 18) { ist } else { 0 };
        // Present, DPL 0, 64-bit interrupt gate.
        let low = (stub & 0xFFFF)
            | (cs as u64) << 16
            | ist << 32
            | 0x8E << 40
            | ((stub >> 16) & 0xFFFF) << 48;
        // SAFETY: VP 0 is the only writer, before the table is loaded.
        unsafe {
            (*idt)[v * 2] = low;
            (*idt)[v * 2 + 1] = stub >> 32;
        }
    }
    READY.store(true, Ordering::Release);
    load();
}

/// Loads the IDT VP 0 built (waits for it): for the other VPs.
pub fn load() {
    while !READY.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    let idt = IDT.0.get();
    let ptr = Pointer {
        limit: (256 * 16 - 1) as u16,
        base: idt as u64,
    };
    // SAFETY: the IDT is static and fully built; its handlers are the stubs above.
    unsafe { asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) };
}
