//! Time from the time-stamp counter, calibrated once against the PIT.
use crate::x86::{cpu, port};
use core::sync::atomic::{AtomicU64, Ordering};

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);

const PIT_HZ: u64 = 1_193_182;
const CALIBRATION_MS: u64 = 10;

/// Measures the TSC frequency over 10 ms of PIT channel 2 (mode 0, gate
/// through port 0x61; the same on QEMU, Bochs and PC hardware).
pub fn calibrate() {
    TSC_AT_BOOT.store(cpu::rdtsc(), Ordering::Relaxed);
    let count = (PIT_HZ * CALIBRATION_MS / 1000) as u16;
    let p61 = port::inb(0x61) & !0x03;
    port::outb(0x61, p61); // gate low, speaker off
    port::outb(0x43, 0xB0); // channel 2, lobyte/hibyte, mode 0
    port::outb(0x42, count as u8);
    port::outb(0x42, (count >> 8) as u8);
    port::outb(0x61, p61 | 1); // gate high: counting starts
    let start = cpu::rdtsc();
    let mut spins = 0u64;
    // OUT2 (port 0x61 bit 5) rises at terminal count. Bounded: without a PIT
    // the loop ends and a nominal 1 GHz is assumed.
    while port::inb(0x61) & 0x20 == 0 && spins < 50_000_000 {
        spins += 1;
    }
    let ticks = cpu::rdtsc() - start;
    let hz = if spins >= 50_000_000 || ticks == 0 {
        1_000_000_000
    } else {
        ticks * 1000 / CALIBRATION_MS
    };
    TSC_HZ.store(hz, Ordering::Relaxed);
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

pub fn since_boot_us() -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    let ticks = cpu::rdtsc().wrapping_sub(TSC_AT_BOOT.load(Ordering::Relaxed));
    (ticks as u128 * 1_000_000 / hz as u128) as u64
}

/// The partition reference time (100 ns units since boot) as every
/// partition reads it, through TIME_REF_COUNT or its reference TSC page.
/// Computed once (the first partition asks after `calibrate`): it is on
/// the CPUID and MSR exit paths.
pub fn reference() -> &'static hypervisor_core::ref_time::RefTime {
    static REFERENCE: spin::Once<hypervisor_core::ref_time::RefTime> = spin::Once::new();
    REFERENCE.call_once(|| {
        hypervisor_core::ref_time::RefTime::new(tsc_hz(), TSC_AT_BOOT.load(Ordering::Relaxed))
    })
}

/// The TSC value `us` microseconds from now.
pub fn deadline_us(us: u64) -> u64 {
    cpu::rdtsc() + (tsc_hz() as u128 * us as u128 / 1_000_000) as u64
}

pub fn passed(deadline: u64) -> bool {
    cpu::rdtsc() >= deadline
}

pub fn delay_us(us: u64) {
    let end = deadline_us(us);
    while !passed(end) {
        cpu::pause();
    }
}
