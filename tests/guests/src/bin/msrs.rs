//! The architectural MSRs a kernel touches early (Linux writes GS_BASE in its
//! first instructions): FS_BASE and GS_BASE reach the segments (a load
//! through GS reads where GS_BASE points), SYSENTER_CS/ESP/EIP and PAT keep
//! what is written, the TSC MSR reads the TSC, and bad values (a
//! non-canonical base, a PAT entry of a reserved type) give #GP.
#![no_std]
#![no_main]
use core::arch::asm;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering::SeqCst};
use test_guests::{exit, println, rdmsr, wrmsr};

test_guests::entry!(main);

static FAULT: AtomicU8 = AtomicU8::new(0);
// #GP handler: note it, skip the 2-byte WRMSR/RDMSR that raised it.
core::arch::global_asm!(
    ".global gp_skip",
    "gp_skip:",
    "    add rsp, 8",
    "    mov byte ptr [rip + {fault}], 13",
    "    add qword ptr [rsp], 2",
    "    iretq",
    fault = sym FAULT,
);
extern "C" {
    fn gp_skip();
}

static TARGET: AtomicU64 = AtomicU64::new(0x1234_5678_9ABC_DEF0);
static FAILED: AtomicU64 = AtomicU64::new(0);

fn check(what: &str, ok: bool) {
    if ok {
        println!("msrs: {what}: ok");
    } else {
        println!("msrs: {what}: FAILED");
        FAILED.fetch_add(1, SeqCst);
    }
}

/// WRMSR that may fault: whether it raised #GP.
fn write_faults(msr: u32, v: u64) -> bool {
    FAULT.store(0, SeqCst);
    // SAFETY: a faulting write is skipped by `gp_skip`; the others set the
    // VP's own state, restored by the caller.
    unsafe { wrmsr(msr, v) };
    FAULT.load(SeqCst) == 13
}

fn main(_vp: u64, _vps: u64, _memory: u64) -> ! {
    test_guests::set_handler(13, gp_skip);
    test_guests::load_idt_and_enable_apic();

    // GS_BASE and FS_BASE: a load through the segment reads the target.
    let target = TARGET.as_ptr() as u64;
    for (reaches, refuses, msr) in [
        (
            "GS_BASE reaches GS",
            "GS_BASE non-canonical is #GP",
            0xC000_0101u32,
        ),
        (
            "FS_BASE reaches FS",
            "FS_BASE non-canonical is #GP",
            0xC000_0100,
        ),
    ] {
        let ok = !write_faults(msr, target);
        let through: u64;
        // SAFETY: the base names a static u64.
        unsafe {
            if msr == 0xC000_0101 {
                asm!("mov {}, gs:[0]", out(reg) through, options(nostack, readonly));
            } else {
                asm!("mov {}, fs:[0]", out(reg) through, options(nostack, readonly));
            }
        }
        check(
            reaches,
            ok && rdmsr(msr) == target && through == 0x1234_5678_9ABC_DEF0,
        );
        // FS_BASE and GS_BASE are the processor's own (no exit): it checks
        // the address. QEMU's TCG does not (an emulator's gap; AMD and Intel
        // processors raise #GP): there the check is skipped, and said so.
        if qemu_tcg() {
            println!("msrs: {refuses}: skipped (QEMU's TCG takes a non-canonical base)");
        } else {
            check(
                refuses,
                write_faults(msr, 0x0000_8000_0000_0000) && rdmsr(msr) == target,
            );
        }
        write_faults(msr, 0);
    }
    // SYSENTER_*: kept.
    for (msr, v) in [
        (0x174u32, 0x10u64),
        (0x175, 0xFFFF_8000_0000_1000),
        (0x176, 0x20_0000),
    ] {
        check(
            "SYSENTER MSR kept",
            !write_faults(msr, v) && rdmsr(msr) == v,
        );
    }
    // PAT: the reset value, a new one kept, a reserved type refused.
    let pat = rdmsr(0x277);
    check(
        "PAT resets to 0x0007040600070406",
        pat == 0x0007_0406_0007_0406,
    );
    check(
        "PAT written and read",
        !write_faults(0x277, 0x0007_0106_0007_0406) && rdmsr(0x277) == 0x0007_0106_0007_0406,
    );
    check(
        "PAT with type 2 is #GP",
        write_faults(0x277, 0x0007_0206_0007_0406) && rdmsr(0x277) == 0x0007_0106_0007_0406,
    );
    write_faults(0x277, pat);
    // The TSC MSR reads the TSC.
    let before = rdtsc();
    let tsc = rdmsr(0x10);
    let after = rdtsc();
    check("TSC MSR between two RDTSCs", before <= tsc && tsc <= after);

    let failed = FAILED.load(SeqCst);
    if failed != 0 {
        println!("msrs: {failed} FAILED");
        exit(1);
    }
    println!("msrs: the architectural MSRs work");
    exit(0)
}

/// The processor's brand string is QEMU's own model ("QEMU Virtual CPU").
fn qemu_tcg() -> bool {
    let mut brand = [0u8; 16];
    // Leaf 0x80000002 exists on every x86-64 processor.
    let r = core::arch::x86_64::__cpuid(0x8000_0002);
    for (i, w) in [r.eax, r.ebx, r.ecx, r.edx].iter().enumerate() {
        brand[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    brand.starts_with(b"QEMU Virtual CPU")
}

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (hi as u64) << 32 | lo as u64
}
