//! The first instructions: loader headers, the 32-bit Multiboot entry, the
//! 64-bit entry of our UEFI loader, and the application-processor trampoline.
//!
//! Every path reaches `hypervisor_entry(magic, info)` (or `ap_entry`) in long
//! mode on the boot page tables: an identity map of the first 4 GiB in 2 MiB
//! pages, in `.bss`. Rust code then builds the real tables (W^X) and switches.

use core::arch::global_asm;

/// The magic our UEFI loader looks for in the first 32 KiB of the image,
/// followed by the 64-bit entry address ("HV64ENTR" as little-endian u64).
pub const ENTRY64_MAGIC: u64 = u64::from_le_bytes(*b"HV64ENTR");

/// Page tables for the switch to long mode and for the AP trampoline:
/// PML4, PDPT and four page directories mapping 0..4 GiB.
#[repr(C, align(4096))]
pub struct BootTables {
    pub pml4: [u64; 512],
    pub pdpt: [u64; 512],
    pub pd: [[u64; 512]; 4],
}

#[no_mangle]
pub static mut BOOT_TABLES: BootTables = BootTables {
    pml4: [0; 512],
    pdpt: [0; 512],
    pd: [[0; 512]; 4],
};

/// The stack of the boot processor until it moves to a guarded one.
#[repr(C, align(16))]
pub struct BootStack(pub [u8; 32 * 1024]);
#[no_mangle]
pub static mut BOOT_STACK: BootStack = BootStack([0; 32 * 1024]);

/// What the next application processor needs: written by the boot processor
/// before each INIT-SIPI-SIPI, read by `ap_entry64`. One AP starts at a time.
#[repr(C)]
pub struct ApLaunch {
    pub cr3: u64,
    pub stack_top: u64,
    /// The `PerCpu` this AP will own.
    pub percpu: u64,
}
#[no_mangle]
pub static mut AP_LAUNCH: ApLaunch = ApLaunch {
    cr3: 0,
    stack_top: 0,
    percpu: 0,
};

extern "C" {
    pub static ap_trampoline_start: u8;
    pub static ap_trampoline_end: u8;
    pub static ap_trampoline_gdt: u8;
    pub static ap_trampoline_gdtr: u8;
}

// Multiboot 1 (with the a.out-kludge address fields QEMU needs for an ELF64),
// Multiboot 2, and the 64-bit entry for our UEFI loader.
global_asm!(
    r#"
.section .boot_header, "a"
.balign 4
multiboot1_header:
    .long 0x1BADB002
    .long 0x00010003                     /* page-aligned modules, memory map, address fields */
    .long 0x100000000 - (0x1BADB002 + 0x00010003)
    .long multiboot1_header              /* header_addr */
    .long __image_start                  /* load_addr */
    .long __load_end                     /* load_end_addr */
    .long __bss_end                      /* bss_end_addr */
    .long _start32                       /* entry_addr */

.balign 8
multiboot2_header:
    .long 0xE85250D6
    .long 0                              /* i386 protected mode */
    .long multiboot2_header_end - multiboot2_header
    .long 0x100000000 - (0xE85250D6 + (multiboot2_header_end - multiboot2_header))
    .short 6, 0                          /* module alignment: page-aligned modules */
    .long 8
    .short 0, 0                          /* end tag */
    .long 8
multiboot2_header_end:

.balign 8
entry64_header:
    .quad {entry64_magic}
    .quad _start64
"#,
    entry64_magic = const ENTRY64_MAGIC,
);

// The 32-bit Multiboot entry: EAX = magic, EBX = information structure,
// protected mode, paging off. Zero .bss, build the boot tables, enter long mode.
global_asm!(
    r#"
.section .text.boot32, "ax"
.code32
.global _start32
_start32:
    cli
    cld
    mov ebp, eax
    mov esi, ebx

    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    xor eax, eax
    rep stosb

    /* PML4[0] -> PDPT; PDPT[0..4] -> PD; PD entries map 2 MiB pages. */
    mov eax, offset BOOT_TABLES + 4096
    or eax, 3
    mov dword ptr [BOOT_TABLES], eax
    mov edi, offset BOOT_TABLES + 4096
    mov eax, offset BOOT_TABLES + 8192
    or eax, 3
    mov ecx, 4
2:  mov dword ptr [edi], eax
    add edi, 8
    add eax, 4096
    loop 2b
    mov edi, offset BOOT_TABLES + 8192
    xor ecx, ecx
3:  mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov dword ptr [edi + ecx * 8], eax
    inc ecx
    cmp ecx, 2048
    jne 3b

    mov eax, offset BOOT_TABLES
    mov cr3, eax
    mov eax, cr4
    or eax, 1 << 5                       /* PAE */
    mov cr4, eax
    mov ecx, 0xC0000080                  /* EFER */
    rdmsr
    or eax, (1 << 8) | (1 << 11)         /* LME, NXE */
    wrmsr
    mov eax, cr0
    or eax, (1 << 31) | 1                /* PG, PE */
    mov cr0, eax

    lgdt [boot_gdtr]
    push 0x08
    .byte 0x68                           /* push imm32: the assembler picks a 16-bit push for `push offset` */
    .long start64_from32
    retf

.code64
start64_from32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + BOOT_STACK + {boot_stack_size}]
    mov edi, ebp                         /* magic */
    mov esi, esi                         /* information; clears bits 63:32 */
    call hypervisor_entry
    ud2

/* Our UEFI loader's entry: long mode, RDI = magic, RSI = information. */
.global _start64
_start64:
    cli
    cld
    mov r12, rdi
    mov r13, rsi
    lea rdi, [rip + __bss_start]
    lea rcx, [rip + __bss_end]
    sub rcx, rdi
    xor eax, eax
    rep stosb
    lea rsp, [rip + BOOT_STACK + {boot_stack_size}]
    mov rdi, r12
    mov rsi, r13
    call hypervisor_entry
    ud2

.section .rodata
.balign 8
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF             /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF             /* 0x10: data */
boot_gdtr:
    .short 23
    .quad boot_gdt
"#,
    boot_stack_size = const core::mem::size_of::<BootStack>(),
);

// The AP trampoline, copied to a page below 1 MiB and started by SIPI in real
// mode with CS = page >> 4, IP = 0. It goes straight to long mode on the boot
// tables (setting PE and PG together is allowed: Intel SDM vol. 3 section
// 10.8.5) and jumps into the image; `ap_entry64` then loads the real CR3.
// The GDT pointer's base is patched with the page's address when copied.
global_asm!(
    r#"
.section .rodata.ap_trampoline, "a"
.code16
.global ap_trampoline_start
ap_trampoline_start:
    cli
    cld
    mov ax, cs
    mov ds, ax
    .byte 0x0F, 0x01, 0x16               /* lgdt [disp16] (DS = CS) */
    .short ap_trampoline_gdtr - ap_trampoline_start
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov eax, offset BOOT_TABLES
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, (1 << 8) | (1 << 11)
    wrmsr
    mov eax, cr0
    and eax, 0x9FFFFFFF                  /* caches on: INIT leaves CD and NW set */
    or eax, 0x80000001
    mov cr0, eax
    .byte 0x66, 0xEA                     /* jmp far ptr16:32 */
    .long ap_entry64
    .short 0x08
.balign 8
.global ap_trampoline_gdt
ap_trampoline_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
.global ap_trampoline_gdtr
ap_trampoline_gdtr:
    .short 23
    .long 0
.global ap_trampoline_end
ap_trampoline_end:
.code64

.section .text
.global ap_entry64
ap_entry64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rax, [rip + AP_LAUNCH]
    mov cr3, rax
    mov rsp, [rip + AP_LAUNCH + 8]
    mov rdi, [rip + AP_LAUNCH + 16]
    call ap_entry
    ud2
"#
);

/// Fills the boot tables from Rust. The Multiboot path built them in assembly;
/// the UEFI path arrives on the firmware's tables, which live in memory the
/// frame allocator is about to hand out, so it must move off them first.
pub fn enter_boot_tables() {
    // SAFETY: single-threaded early boot; nothing else uses BOOT_TABLES yet
    // except as the CR3 we are about to (re)load, whose contents stay identical
    // for every address the code touches (identity, 0..4 GiB).
    let t = unsafe { &mut *core::ptr::addr_of_mut!(BOOT_TABLES) };
    let base = core::ptr::addr_of!(t.pml4) as u64;
    t.pml4[0] = (base + 4096) | 3;
    for i in 0..4 {
        t.pdpt[i] = (base + 8192 + 4096 * i as u64) | 3;
        for j in 0..512 {
            t.pd[i][j] = ((i as u64 * 512 + j as u64) << 21) | 0x83;
        }
    }
    // SAFETY: the tables identity-map 0..4 GiB, which holds this image, its
    // stack and the loader's structures (our loader keeps them below 4 GiB).
    unsafe { crate::x86::cpu::write_cr3(base) };
}
