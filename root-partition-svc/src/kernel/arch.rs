//! The few instructions the root needs: port I/O, CPUID, MSRs, TSC, halting.
//! Every function here is safe to call from the root (it owns the I/O ports;
//! the MSRs used are the hypervisor's synthetic ones, which the hypervisor
//! emulates).
use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub fn outb(port: u16, v: u8) {
    // SAFETY: the root owns the I/O ports; a port write touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
    v
}

pub fn outw(port: u16, v: u16) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    };
}

pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags))
    };
    v
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    };
}

pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// CPUID leaf 0, `n` times (at least once), in a loop of four more
/// instructions: what `bench exits` times.
pub fn cpuid_loop(n: u64) {
    // SAFETY: CPUID only writes EAX, EBX, ECX, EDX; RBX (reserved by LLVM) is
    // kept in a scratch register around the loop.
    unsafe {
        asm!(
            "mov {save}, rbx",
            "2:",
            "xor eax, eax",
            "xor ecx, ecx",
            "cpuid",
            "dec {n}",
            "jnz 2b",
            "mov rbx, {save}",
            save = out(reg) _,
            n = inout(reg) n.max(1) => _,
            out("eax") _,
            out("ecx") _,
            out("edx") _,
            options(nostack, nomem)
        )
    };
}

/// (EAX, EBX, ECX, EDX) of CPUID `leaf`/`sub` (a VM exit under the hypervisor).
pub fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: CPUID only writes the four registers; RBX is reserved by LLVM,
    // so it is saved in a scratch register around the instruction.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) b,
            inout("eax") leaf => a,
            inout("ecx") sub => c,
            out("edx") d,
            options(nomem, nostack, preserves_flags),
        )
    };
    [a, b, c, d]
}

/// Writes an MSR.
///
/// # Safety
/// The MSR and the value must not break the memory safety of the root (the
/// synthetic Hyper-V MSRs are fine: the hypervisor emulates them; an MSR it
/// does not know raises #GP, which the IDT reports).
pub unsafe fn wrmsr(msr: u32, v: u64) {
    // SAFETY: the caller vouches for the MSR and value.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// RDMSR.
///
/// # Safety
/// The MSR must exist (the synthetic ones the hypervisor grants do); one it
/// does not know raises #GP.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller vouches for the MSR.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (hi as u64) << 32 | lo as u64
}

pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (hi as u64) << 32 | lo as u64
}

pub fn cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effect (and causes no VM exit).
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effect (and causes no VM exit).
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Busy-waits about `us` microseconds, on the TSC at `tsc_hz`.
pub fn delay_us(tsc_hz: u64, us: u64) {
    let ticks = (tsc_hz / 1_000_000).max(1).saturating_mul(us);
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
}

/// `cli; hlt` forever (the hypervisor parks the logical processor).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: disabling interrupts and halting touch no memory.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Takes the interrupts that wait, if any, and returns with interrupts off.
/// (Sleeping until one comes is `hypercall::idle`, which also sends a
/// deferred VP resume.)
pub fn take_interrupts() {
    // SAFETY: the IDT handles every vector the root enables (timer, IPI,
    // SINTs); the one instruction after STI is where a waiting interrupt
    // arrives.
    unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
}

/// How often the idle root wakes while it polls COM1 (µs): often enough
/// that the UART's 16-byte FIFO does not overflow at 115200 baud (11.5
/// bytes a millisecond) when a line is pasted.
pub const POLLED_TICK_US: u64 = 1_000;
/// How often it wakes when COM1's input interrupts and the host NIC's
/// receive queue is polled (µs).
pub const INTERRUPT_TICK_US: u64 = 10_000;
/// How often it wakes when nothing is polled but VMBus work waits for a
/// tick (µs): messages a guest's SynIC could not take yet, frames queued
/// for an adapter, an adapter being removed (`VmBus::wants_tick_soon`).
/// Every wake-up of an idle root preempts the guest on its LP.
pub const QUIET_TICK_US: u64 = 100_000;
/// How often it wakes when nothing waits for a tick (µs): VMBus
/// housekeeping of seconds (heartbeats, time samples), the shell's own
/// time limits, and rings a guest filled without signalling.
pub const SLEEPY_TICK_US: u64 = 1_000_000;

/// The idle timer's period in use (µs): `POLLED_TICK_US` until COM1's
/// interrupt is routed.
static IDLE_TICK_US: AtomicU64 = AtomicU64::new(POLLED_TICK_US);
/// COM1's input interrupts (`serial_interrupts`).
static SERIAL_INTERRUPTS: AtomicBool = AtomicBool::new(false);

pub fn idle_tick_us() -> u64 {
    IDLE_TICK_US.load(Ordering::Relaxed)
}

/// Sets the idle timer's period, from its next start.
pub fn set_idle_tick_us(us: u64) {
    IDLE_TICK_US.store(us, Ordering::Relaxed);
}

/// COM1's input has its interrupt from now on: the idle tick need not poll it.
pub fn serial_interrupts() {
    SERIAL_INTERRUPTS.store(true, Ordering::Relaxed);
}

/// The idle tick that what is polled needs (µs): COM1 without its
/// interrupt, then the host NIC's receive queue (`host_nic_polled`), then
/// VMBus work that waits for a tick (`tick_soon`).
pub fn wanted_idle_tick_us(host_nic_polled: bool, tick_soon: bool) -> u64 {
    match (
        SERIAL_INTERRUPTS.load(Ordering::Relaxed),
        host_nic_polled,
        tick_soon,
    ) {
        (false, _, _) => POLLED_TICK_US,
        (true, true, _) => INTERRUPT_TICK_US,
        (true, false, true) => QUIET_TICK_US,
        (true, false, false) => SLEEPY_TICK_US,
    }
}

/// Starts this VP's x2APIC timer, periodic every [`idle_tick_us`] on
/// `vector`: it wakes the idle shell for what it polls.
pub fn start_idle_timer(tsc_hz: u64, vector: u8) {
    start_timer_every(tsc_hz, vector, idle_tick_us());
}

/// Starts this VP's x2APIC timer, periodic every `us` on `vector`.
pub fn start_timer_every(tsc_hz: u64, vector: u8, us: u64) {
    // SAFETY: x2APIC registers of this VP's (virtual) APIC: enable (SVR),
    // divide by 1, periodic on `vector`, initial count.
    unsafe {
        wrmsr(0x80F, 0x1FF);
        wrmsr(0x83E, 0xB);
        wrmsr(0x832, (1 << 17) | vector as u64);
        wrmsr(0x838, (tsc_hz / 1_000_000 * us).clamp(1, u32::MAX as u64));
    }
}

/// Stops the idle timer (an initial count of 0): a root that polls does
/// not sleep, and each tick would cost it an exit.
pub fn stop_idle_timer() {
    // SAFETY: the x2APIC timer's initial count register of this VP's APIC.
    unsafe { wrmsr(0x838, 0) };
}

/// The host's real-time clock (CMOS at ports 0x70/0x71), Unix seconds (the
/// RTC holds UTC, as QEMU and Bochs keep it by default). Read outside an
/// update (status A bit 7), twice until two reads agree.
pub fn read_rtc() -> u64 {
    use root_partition_svc::cmos::{reg, DateTime, DATA_PORT, INDEX_PORT};
    let read = |i: u8| {
        outb(INDEX_PORT, i);
        inb(DATA_PORT)
    };
    let mut last = 0;
    for _ in 0..5 {
        let mut spins = 0;
        while read(reg::STATUS_A) & 0x80 != 0 && spins < 1_000_000 {
            spins += 1;
        }
        let t = DateTime::from_registers(read).to_unix();
        if t == last {
            break;
        }
        last = t;
    }
    last
}
