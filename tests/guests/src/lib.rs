//! What every test guest shares: the entry point, COM1 output, the test
//! exit port, and the hypercall page. Guests run in 64-bit mode with the
//! root's identity map of their memory (root-partition-svc `vmm::layout`).
#![no_std]

use core::arch::asm;
use core::fmt::{self, Write};

/// Defines `_start`, which calls `$main(vp, vps, memory_bytes) -> !`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        core::arch::global_asm!(
            ".section .text._start, \"ax\"",
            ".global _start",
            "_start:",
            "    cli",
            "    and rsp, -16",
            "    call {main}",
            "2:  hlt",
            "    jmp 2b",
            ".text",
            main = sym __guest_entry,
        );
        extern "C" fn __guest_entry(vp: u64, vps: u64, memory: u64) -> ! {
            $main(vp, vps, memory)
        }
        #[panic_handler]
        fn panic(info: &core::panic::PanicInfo) -> ! {
            $crate::println!("guest panic: {}", info);
            $crate::exit(99)
        }
    };
}

pub fn outb(port: u16, v: u8) {
    // SAFETY: port output; the root's VM worker emulates the ports guests use.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port input, as above.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
    v
}

const COM1: u16 = 0x3F8;

pub fn write_byte(b: u8) {
    while inb(COM1 + 5) & 0x20 == 0 {}
    outb(COM1, b);
}

pub struct Com1;

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            write_byte(b);
        }
        Ok(())
    }
}

/// A spin lock so lines from several VPs do not interleave.
static CONSOLE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

pub fn print(args: fmt::Arguments) {
    use core::sync::atomic::Ordering;
    while CONSOLE
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let _ = Com1.write_fmt(args);
    CONSOLE.store(false, Ordering::Release);
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Ends the guest: the exit code on the test exit port (0xF4), after which
/// the worker stops the VM; halts in case it does not.
pub fn exit(code: u8) -> ! {
    outb(0xF4, code);
    halt()
}

pub fn halt() -> ! {
    loop {
        // SAFETY: halting with interrupts off; the root decides what follows.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

#[repr(C, align(4096))]
pub struct Page(pub core::cell::UnsafeCell<[u8; 4096]>);
// SAFETY: the guests use their pages from one VP at a time.
unsafe impl Sync for Page {}

pub static HYPERCALL_PAGE: Page = Page(core::cell::UnsafeCell::new([0; 4096]));

/// Sets the guest OS id and enables the hypercall page; false if refused.
pub fn enable_hypercalls() -> bool {
    let page = HYPERCALL_PAGE.0.get() as u64;
    // SAFETY: the synthetic MSRs a guest is granted (CPUID 0x40000003).
    unsafe {
        wrmsr(hv_abi::msr::GUEST_OS_ID, 0x8100_0000_0000_0001);
        wrmsr(hv_abi::msr::HYPERCALL, page | 1);
    }
    // SAFETY: our own page, written by the hypervisor.
    let head = unsafe { core::ptr::read_volatile(page as *const [u8; 4]) };
    head == hv_abi::hypercall::VMCALL_PAGE || head == hv_abi::hypercall::VMMCALL_PAGE
}

/// # Safety
/// The MSR and value must be ones the hypervisor emulates for guests.
pub unsafe fn wrmsr(msr: u32, v: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack))
    };
}

pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads an MSR the hypervisor emulates for guests (others #GP,
    // which these guests do not do).
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (hi as u64) << 32 | lo as u64
}

/// A hypercall through the page: RCX, RDX, R8 in; RAX out.
pub fn hypercall(rcx: u64, rdx: u64, r8: u64) -> u64 {
    let rax: u64;
    // SAFETY: the page holds `vmcall; ret` or `vmmcall; ret` (checked by
    // `enable_hypercalls`); the hypervisor changes only RAX (and memory at
    // the output GPA).
    unsafe {
        asm!("call {p}", p = in(reg) HYPERCALL_PAGE.0.get() as u64,
            inout("rcx") rcx => _, inout("rdx") rdx => _, inout("r8") r8 => _,
            lateout("rax") rax, lateout("r9") _, lateout("r10") _, lateout("r11") _)
    };
    rax
}

/// Defines `extern "C" fn $name()`, an interrupt handler that counts into
/// the `AtomicU64` `$counter`, writes EOI to the x2APIC and returns.
#[macro_export]
macro_rules! counting_handler {
    ($name:ident, $counter:path) => {
        core::arch::global_asm!(
            concat!(".global ", stringify!($name)),
            concat!(stringify!($name), ":"),
            "    push rax",
            "    push rcx",
            "    push rdx",
            "    lock inc qword ptr [rip + {counter}]",
            "    mov ecx, 0x80B",
            "    xor eax, eax",
            "    xor edx, edx",
            "    wrmsr",
            "    pop rdx",
            "    pop rcx",
            "    pop rax",
            "    iretq",
            counter = sym $counter,
        );
        extern "C" {
            fn $name();
        }
    };
}

#[repr(C, align(16))]
struct Idt(core::cell::UnsafeCell<[u64; 512]>);
// SAFETY: entries are written before any VP loads the table (VP 0 builds it
// before the others are asked to use it), then only read by the processor.
unsafe impl Sync for Idt {}
static IDT: Idt = Idt(core::cell::UnsafeCell::new([0; 512]));

/// Points `vector` at `handler` (a 64-bit interrupt gate, selector 0x08:
/// the loader's code segment).
pub fn set_handler(vector: u8, handler: unsafe extern "C" fn()) {
    let h = handler as *const () as u64;
    let low = (h & 0xFFFF) | 0x08 << 16 | 0x8E << 40 | ((h >> 16) & 0xFFFF) << 48;
    // SAFETY: see `Idt`.
    unsafe {
        (*IDT.0.get())[vector as usize * 2] = low;
        (*IDT.0.get())[vector as usize * 2 + 1] = h >> 32;
    }
}

/// The operand of LGDT/LIDT: limit, then the 64-bit base.
pub fn table_pointer(limit: u16, base: u64) -> [u16; 5] {
    [
        limit,
        base as u16,
        (base >> 16) as u16,
        (base >> 32) as u16,
        (base >> 48) as u16,
    ]
}

/// The operand of LIDT for the shared IDT.
pub fn idt_pointer() -> [u16; 5] {
    table_pointer(4095, IDT.0.get() as u64)
}

/// Loads the IDT and software-enables this VP's x2APIC (spurious vector 0xFF).
pub fn load_idt_and_enable_apic() {
    let pointer = idt_pointer();
    // SAFETY: the IDT is static and its handlers are valid; SVR enables the
    // (virtual) x2APIC the hypervisor offers in CPUID.
    unsafe {
        asm!("lidt [{}]", in(reg) &pointer, options(nostack));
        wrmsr(0x80F, 0x1FF);
    }
}

/// Sleeps with interrupts enabled until `done` or `tries` wake-ups passed.
pub fn halt_until(tries: u32, done: impl Fn() -> bool) -> bool {
    for _ in 0..tries {
        if done() {
            return true;
        }
        // SAFETY: the IDT handles the vectors this guest enabled; HLT waits.
        unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    done()
}
