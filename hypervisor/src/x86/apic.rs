//! The local APIC in xAPIC (MMIO) or x2APIC (MSR) mode (Intel SDM vol. 3
//! chapter 11). The boot processor picks the mode; every processor uses it.
use super::{cpu, msr};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static X2APIC: AtomicBool = AtomicBool::new(false);
static XAPIC_BASE: AtomicU64 = AtomicU64::new(0xFEE0_0000);

const REG_ID: u32 = 0x20;
const REG_SPURIOUS: u32 = 0xF0;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const SPURIOUS_VECTOR: u64 = 0xFF;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    XApic,
    X2Apic,
}

pub fn x2apic_supported() -> bool {
    cpu::cpuid(1, 0).ecx & (1 << 21) != 0
}

pub fn mode() -> Mode {
    if X2APIC.load(Ordering::Relaxed) {
        Mode::X2Apic
    } else {
        Mode::XApic
    }
}

/// Chooses the mode on the boot processor.
pub fn select(mode: Mode) {
    X2APIC.store(mode == Mode::X2Apic, Ordering::Relaxed);
    XAPIC_BASE.store(
        msr::read(msr::IA32_APIC_BASE) & 0xF_FFFF_F000,
        Ordering::Relaxed,
    );
}

/// Enables this processor's local APIC in the chosen mode, software-enabled
/// with the spurious vector.
pub fn enable() {
    let base = msr::read(msr::IA32_APIC_BASE);
    let mut want = base | (1 << 11);
    if mode() == Mode::X2Apic {
        want |= 1 << 10;
    }
    if want != base {
        // SAFETY: enabling the APIC (and x2APIC mode, which CPUID advertises)
        // changes no memory mapping; the xAPIC page stays where it was.
        unsafe { msr::write(msr::IA32_APIC_BASE, want) };
    }
    write(REG_SPURIOUS, (1 << 8) | SPURIOUS_VECTOR);
}

fn read(reg: u32) -> u64 {
    match mode() {
        Mode::X2Apic => msr::read(msr::X2APIC_BASE + (reg >> 4)),
        Mode::XApic => {
            let addr = XAPIC_BASE.load(Ordering::Relaxed) + reg as u64;
            // SAFETY: the APIC page is identity-mapped and the register offset is
            // one of the constants above; APIC registers are 32-bit aligned.
            unsafe { core::ptr::read_volatile(addr as *const u32) as u64 }
        }
    }
}

fn write(reg: u32, value: u64) {
    match mode() {
        // SAFETY: writing an x2APIC register changes no memory.
        Mode::X2Apic => unsafe { msr::write(msr::X2APIC_BASE + (reg >> 4), value) },
        Mode::XApic => {
            let addr = XAPIC_BASE.load(Ordering::Relaxed) + reg as u64;
            // SAFETY: as in `read`.
            unsafe { core::ptr::write_volatile(addr as *mut u32, value as u32) };
        }
    }
}

/// This processor's APIC ID.
pub fn id() -> u32 {
    match mode() {
        Mode::X2Apic => read(REG_ID) as u32,
        Mode::XApic => (read(REG_ID) >> 24) as u32,
    }
}

/// Sends an interprocessor interrupt with the given ICR low bits.
fn send_ipi(dest: u32, icr_low: u64) {
    match mode() {
        // In x2APIC mode the ICR is one 64-bit MSR; the destination is bits 63:32.
        // That WRMSR does not serialize: the fence keeps the stores the IPI
        // announces (a pending interrupt, a chore) ahead of it (SDM vol. 3
        // section 11.12.3).
        Mode::X2Apic => {
            cpu::store_fence_for_ipi();
            write(REG_ICR_LOW, (dest as u64) << 32 | icr_low)
        }
        Mode::XApic => {
            write(REG_ICR_HIGH, (dest as u64) << 24);
            write(REG_ICR_LOW, icr_low);
            // Wait for the delivery status bit to clear.
            while read(REG_ICR_LOW) & (1 << 12) != 0 {
                cpu::pause();
            }
        }
    }
}

const REG_EOI: u32 = 0xB0;
const REG_LVT_TIMER: u32 = 0x320;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3E0;

pub fn eoi() {
    write(REG_EOI, 0);
}

/// Sets this processor's APIC timer up one-shot on `vector`, stopped, and
/// returns its rate (counts per millisecond, measured against the TSC).
pub fn start_oneshot_timer(vector: u8) -> u64 {
    write(REG_TIMER_DIVIDE, 0x3); // divide by 16
    write(REG_LVT_TIMER, 1 << 16); // masked while measuring
    write(REG_TIMER_INITIAL, u32::MAX as u64);
    let tsc_per_ms = crate::time::tsc_hz() / 1000;
    let first = timer_sample(tsc_per_ms);
    crate::time::delay_us(1000);
    let last = timer_sample(tsc_per_ms);
    write(REG_TIMER_INITIAL, 0); // stopped until armed
    write(REG_LVT_TIMER, vector as u64); // one-shot, unmasked
    hypervisor_core::host_timer::counts_per_ms(first, last, tsc_per_ms)
}

/// The timer's current count and the TSC when it was read. A read whose
/// TSC before and after lie more than 20 µs apart (the processor was away
/// meanwhile, as an emulator's thread can be under load) is taken again: a
/// count read late would make the timer seem faster than it is, and every
/// deadline of the LP's life fire that much late.
fn timer_sample(tsc_per_ms: u64) -> (u64, u64) {
    let tight = (tsc_per_ms / 50).max(1);
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..100 {
        let before = cpu::rdtsc();
        let count = read(REG_TIMER_CURRENT);
        let after = cpu::rdtsc();
        let width = after.wrapping_sub(before);
        if width < best.0 {
            best = (width, before + width / 2, count);
        }
        if width <= tight {
            break;
        }
    }
    (best.1, best.2)
}

/// Starts the one-shot timer counting `count` down (a new count replaces
/// the one running; its interrupt comes at 0).
pub fn arm_timer(count: u32) {
    write(REG_TIMER_INITIAL, count as u64);
}

/// A fixed interrupt with `vector` to the processor with APIC ID `dest`.
pub fn send_fixed(dest: u32, vector: u8) {
    send_ipi(dest, vector as u64);
}

/// INIT (delivery mode 101b, level assert).
pub fn send_init(dest: u32) {
    send_ipi(dest, 0x4500);
}

/// Start-up IPI: the processor starts in real mode at `page << 12`.
pub fn send_startup(dest: u32, page: u8) {
    send_ipi(dest, 0x4600 | page as u64);
}
