//! The APIC in xAPIC mode, reached through its register page by MMIO (the
//! hypervisor decodes the MOV and emulates the register). Two VPs. VP 0
//! leaves x2APIC mode through the disabled state (IA32_APIC_BASE), reads
//! its ID and version from the page, runs the timer from the page with EOIs
//! written there, reads a register a byte at a time and writes one with an
//! immediate; VP 1 does the same switch and sets its logical destination
//! (flat model); VP 0 sends it a fixed IPI by logical destination through
//! the ICR's two halves. Both go back to x2APIC mode; VP 0 exits 0.
#![no_std]
#![no_main]
use core::sync::atomic::{AtomicU64, Ordering};
use test_guests::{exit, println, rdmsr, wrmsr};

test_guests::entry!(main);

const APIC: u64 = 0xFEE0_0000;
const APIC_BASE_MSR: u32 = 0x1B;
const TIMER: u8 = 0x33;
const IPI: u8 = 0x34;
static TICKS: AtomicU64 = AtomicU64::new(0);
static IPIS: AtomicU64 = AtomicU64::new(0);
/// VP 1's progress: 1 in xAPIC mode with its LDR set, 2 done.
static VP1: AtomicU64 = AtomicU64::new(0);

// Handlers that count and write the EOI register on the page (the x2APIC
// EOI MSR faults in xAPIC mode).
macro_rules! mmio_eoi_handler {
    ($name:ident, $counter:path) => {
        core::arch::global_asm!(
            concat!(".global ", stringify!($name)),
            concat!(stringify!($name), ":"),
            "    push rax",
            "    lock inc qword ptr [rip + {counter}]",
            "    mov rax, 0xFEE000B0",
            "    mov dword ptr [rax], 0",
            "    pop rax",
            "    iretq",
            counter = sym $counter,
        );
        extern "C" {
            fn $name();
        }
    };
}
mmio_eoi_handler!(on_timer, TICKS);
mmio_eoi_handler!(on_ipi, IPIS);

/// The page directory for the fourth GiB, with the APIC's 2 MiB page
/// (uncached); the loader maps only the first GiB of a small VM.
#[repr(C, align(4096))]
struct Directory(core::cell::UnsafeCell<[u64; 512]>);
// SAFETY: written by VP 0 before VP 1 is let on; then only read by the MMU.
unsafe impl Sync for Directory {}
static TOP_GIB: Directory = Directory(core::cell::UnsafeCell::new([0; 512]));

fn map_apic_page() {
    let cr3: u64;
    // SAFETY: reads CR3.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    let pml4 = (cr3 & !0xFFF) as *const u64;
    // SAFETY: the loader's identity-mapped tables: PML4[0] names the PDPT;
    // our directory goes into its fourth entry (unused: the VM has less
    // than 3 GiB). The CR3 write flushes the TLB.
    unsafe {
        let pdpt = (pml4.read_volatile() & !0xFFF) as *mut u64;
        let dir = TOP_GIB.0.get() as *mut u64;
        dir.add(((APIC >> 21) & 511) as usize)
            .write_volatile(APIC | 0x83 | 0x10);
        pdpt.add(3).write_volatile(dir as u64 | 3);
        core::arch::asm!("mov cr3, {}", in(reg) cr3, options(nostack));
    }
}

/// A 32-bit read as a MOV, as a kernel's `readl` does (a compiler may
/// fold a volatile read into a CMP, which is no device access form).
fn read(offset: u64) -> u32 {
    let v: u32;
    // SAFETY: the APIC page, mapped by `map_apic_page`.
    unsafe {
        core::arch::asm!("mov {:e}, dword ptr [{}]", out(reg) v, in(reg) APIC + offset, options(nostack))
    };
    v
}

fn write(offset: u64, value: u32) {
    // SAFETY: as in `read`, a 32-bit MOV to the page.
    unsafe {
        core::arch::asm!("mov dword ptr [{}], {:e}", in(reg) APIC + offset, in(reg) value, options(nostack))
    };
}

fn check(what: &str, ok: bool) {
    if !ok {
        println!("xapic: FAILED: {what}");
        exit(1);
    }
}

/// x2APIC to xAPIC through the disabled state, then software-enabled.
fn enter_xapic() -> u64 {
    let before = rdmsr(APIC_BASE_MSR);
    // SAFETY: IA32_APIC_BASE transitions the SDM allows.
    unsafe {
        wrmsr(APIC_BASE_MSR, before & !(3 << 10));
        wrmsr(APIC_BASE_MSR, (before & !(3 << 10)) | 1 << 11);
    }
    load_idt();
    write(0xF0, 0x1FF);
    before
}

fn load_idt() {
    test_guests::set_handler(TIMER, on_timer);
    test_guests::set_handler(IPI, on_ipi);
    let pointer = test_guests::idt_pointer();
    // SAFETY: the static IDT with valid handlers.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &pointer, options(nostack)) };
}

fn main(vp: u64, _vps: u64, _memory: u64) -> ! {
    if vp == 1 {
        // Wait for VP 0's page tables (the same CR3), then switch.
        while VP1.load(Ordering::Acquire) == 0 {
            core::hint::spin_loop();
        }
        enter_xapic();
        write(0xD0, 0x0200_0000);
        VP1.store(2, Ordering::Release);
        let ok = test_guests::halt_until(1000, || IPIS.load(Ordering::SeqCst) >= 1);
        check("VP 1 got the logical IPI", ok);
        println!(
            "xapic: VP 1 (ID {} on its page) took the IPI sent to logical destination 2",
            read(0x20) >> 24
        );
        // SAFETY: xAPIC to x2APIC, allowed directly.
        unsafe { wrmsr(APIC_BASE_MSR, rdmsr(APIC_BASE_MSR) | 1 << 10) };
        VP1.store(3, Ordering::Release);
        test_guests::halt()
    }
    map_apic_page();
    let before = enter_xapic();
    let base = rdmsr(APIC_BASE_MSR);
    println!(
        "xapic: IA32_APIC_BASE {before:#x} -> {base:#x}; ID {:#x}, version {:#x}",
        read(0x20),
        read(0x30)
    );
    check("xAPIC mode at the base", base == 0xFEE0_0900);
    check(
        "ID 0 and version 0x50014",
        read(0x20) == 0 && read(0x30) == 0x0005_0014,
    );
    // A byte read of the version, an immediate written to the TPR.
    let low: u8;
    // SAFETY: the mapped APIC page; `mov al, byte ptr [..]`.
    unsafe {
        core::arch::asm!("mov {}, byte ptr [{}]", out(reg_byte) low, in(reg) APIC + 0x30, options(nostack))
    };
    // SAFETY: as above; `mov dword ptr [rax], imm32`.
    unsafe { core::arch::asm!("mov dword ptr [{}], 0x20", in(reg) APIC + 0x80, options(nostack)) };
    check("a byte of the version register", low == 0x14);
    check("the TPR written with an immediate", read(0x80) == 0x20);
    write(0x80, 0);
    // The timer on the page: divide by 1, periodic, 200 000 ticks.
    write(0x3E0, 0xB);
    write(0x320, (1 << 17) | TIMER as u32);
    write(0x380, 200_000);
    let ok = test_guests::halt_until(10_000, || TICKS.load(Ordering::SeqCst) >= 5);
    write(0x320, 1 << 16);
    write(0x380, 0);
    check("five timer interrupts, each ended on the page", ok);
    println!("xapic: the timer ticked 5 times, each EOI written on the page");
    // VP 1's turn: it switches and takes logical destination bit 1.
    VP1.store(1, Ordering::Release);
    while VP1.load(Ordering::Acquire) < 2 {
        core::hint::spin_loop();
    }
    write(0x310, 0x0200_0000);
    write(0x300, (1 << 11) | IPI as u32);
    check("the ICR reads back idle", read(0x300) & (1 << 12) == 0);
    while VP1.load(Ordering::Acquire) < 3 {
        core::hint::spin_loop();
    }
    // SAFETY: xAPIC to x2APIC.
    unsafe { wrmsr(APIC_BASE_MSR, rdmsr(APIC_BASE_MSR) | 1 << 10) };
    check(
        "back in x2APIC mode, the ID MSR answers",
        rdmsr(APIC_BASE_MSR) == 0xFEE0_0D00 && rdmsr(0x802) == 0,
    );
    println!("xapic: both VPs back in x2APIC mode: ok");
    exit(0)
}
