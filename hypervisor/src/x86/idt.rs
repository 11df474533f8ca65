//! The interrupt descriptor table and the exception report.
//!
//! Every vector has a 16-byte stub that pushes a uniform frame (a zero error
//! code where the processor pushes none, and the vector) and jumps to common
//! code that saves the general registers and calls `interrupt_entry`. The
//! vectors the host expects return: its own timer ([`HOST_TIMER_VECTOR`]),
//! a kick ([`HOST_KICK_VECTOR`]) and the root's device interrupts
//! (`hv_abi::ROOT_DEVICE_VECTORS`, handed on to the root VP); every other
//! vector is a fatal report naming the processor.
use super::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI, KERNEL_CODE};
use core::arch::global_asm;

/// The host's local APIC timer (preemption; wake-ups of halted VPs):
/// acknowledged and returned from.
pub const HOST_TIMER_VECTOR: u64 = 0xF0;
/// A kick from another LP (an interrupt is pending for a VP here): acknowledged.
pub const HOST_KICK_VECTOR: u64 = 0xF1;

/// The stack at `interrupt_entry`, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

global_asm!(
    r#"
.section .text
.balign 16
.global exception_stubs
exception_stubs:
.set vec, 0
.rept 256
    .balign 16
    /* Vectors where the processor pushes an error code (Intel SDM vol. 3 table 6-1). */
    .if (vec == 8) | (vec == 10) | (vec == 11) | (vec == 12) | (vec == 13) | (vec == 14) | (vec == 17) | (vec == 21) | (vec == 29) | (vec == 30)
        .byte 0x66, 0x90                 /* two-byte nop keeps every stub the same size */
    .else
        .byte 0x6a, 0x00                 /* push 0 */
    .endif
    .byte 0x68                           /* push imm32 */
    .long vec
    .byte 0xe9                           /* jmp rel32 */
    .long exception_common - . - 4
    .set vec, vec + 1
.endr

/* An NMI in the hypervisor (one that arrived while a guest ran, held
   until SVM's GIF was set again, or a platform NMI) is dropped: the
   hypervisor sends none, and a guest must not be able to stop the host. */
.global nmi_dropped
nmi_dropped:
    iretq

exception_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    cld
    mov rdi, rsp
    call interrupt_entry
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq
"#
);

extern "C" {
    static exception_stubs: u8;
    static nmi_dropped: u8;
}

#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

fn gate(handler: u64, ist: u8) -> (u64, u64) {
    let low = (handler & 0xFFFF)
        | (KERNEL_CODE as u64) << 16
        | (ist as u64) << 32
        | 0x8E << 40 // present, DPL 0, 64-bit interrupt gate
        | ((handler >> 16) & 0xFFFF) << 48;
    (low, handler >> 32)
}

/// Fills the IDT (once, on the boot processor).
pub fn init() {
    let stubs = core::ptr::addr_of!(exception_stubs) as u64;
    // SAFETY: called once on the boot processor before any other processor
    // runs and before the IDT is loaded anywhere.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(IDT) };
    for v in 0..256 {
        let ist = match v {
            2 => IST_NMI,
            8 => IST_DOUBLE_FAULT,
            18 => IST_MACHINE_CHECK,
            _ => 0,
        };
        let handler = if v == 2 {
            core::ptr::addr_of!(nmi_dropped) as u64
        } else {
            stubs + 16 * v as u64
        };
        let (lo, hi) = gate(handler, ist);
        idt.0[2 * v] = lo;
        idt.0[2 * v + 1] = hi;
    }
}

/// Loads the IDT on this processor.
pub fn load() {
    let ptr = x86_64::structures::DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: x86_64::VirtAddr::new(core::ptr::addr_of!(IDT) as u64),
    };
    // SAFETY: the IDT is static and filled by `init` with gates to the stubs.
    unsafe { x86_64::instructions::tables::lidt(&ptr) };
}
