//! Starting the application processors (INIT-SIPI-SIPI, Intel SDM vol. 3
//! section 9.4.4; the same on AMD) one at a time, each on its own guarded
//! stacks and per-CPU data, and waiting for each to check in.
use crate::boot::{self, AP_LAUNCH};
use crate::percpu::PerCpu;
use crate::x86::apic;
use crate::{lp_state, memory, time};
use alloc::boxed::Box;
use core::sync::atomic::{AtomicU32, Ordering};

pub const STACK_PAGES: u64 = 16;
pub const IST_STACK_PAGES: u64 = 4;
/// How long one processor may take from INIT to check-in.
const CHECK_IN_TIMEOUT_US: u64 = 2_000_000;

/// Processors running hypervisor code, the boot processor included.
pub static ONLINE: AtomicU32 = AtomicU32::new(1);
/// Set by a starting AP once it no longer needs `AP_LAUNCH`.
static CHECKED_IN: AtomicU32 = AtomicU32::new(0);

/// Gives `tables` guarded stacks for NMI, double fault and machine check.
pub fn give_ist_stacks(cpu: &mut PerCpu) -> Result<(), &'static str> {
    use crate::x86::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI};
    for slot in [IST_NMI, IST_DOUBLE_FAULT, IST_MACHINE_CHECK] {
        cpu.tables
            .set_ist(slot, memory::alloc_stack(IST_STACK_PAGES)?);
    }
    Ok(())
}

/// Copies the trampoline to its page below 1 MiB and patches its GDT pointer.
fn install_trampoline(page: u64) {
    // Symbols bounding the trampoline's bytes in .rodata (addresses only).
    let (start, end, gdt, gdtr) = (
        core::ptr::addr_of!(boot::ap_trampoline_start) as u64,
        core::ptr::addr_of!(boot::ap_trampoline_end) as u64,
        core::ptr::addr_of!(boot::ap_trampoline_gdt) as u64,
        core::ptr::addr_of!(boot::ap_trampoline_gdtr) as u64,
    );
    let len = (end - start) as usize;
    assert!(len <= 4096, "AP trampoline larger than a page");
    // SAFETY: `page` was reserved for the trampoline by `memory::init` and is
    // identity-mapped writable; the source is the image's read-only copy.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, page as *mut u8, len);
        let base = (page + (gdtr - start) + 2) as *mut u32;
        base.write_unaligned((page + (gdt - start)) as u32);
    }
}

/// Starts every enabled processor but this one; returns how many checked in.
pub fn start_aps(apic_ids: &[u32], trampoline_page: u64) -> u32 {
    install_trampoline(trampoline_page);
    let bsp = apic::id();
    let mut started = 0;
    let others: alloc::vec::Vec<u32> = apic_ids.iter().copied().filter(|&id| id != bsp).collect();
    // Per-LP structures (counters, the root's boot area) are sized for MAX_LPS.
    if others.len() >= lp_state::MAX_LPS {
        log::warn!(
            "{} processors: starting the first {} only",
            others.len() + 1,
            lp_state::MAX_LPS
        );
    }
    for &apic_id in others.iter().take(lp_state::MAX_LPS - 1) {
        let index = started + 1;
        lp_state::get(index)
            .apic_id
            .store(apic_id, Ordering::Relaxed);
        let prepared = (|| -> Result<(u64, u64), &'static str> {
            let mut cpu = Box::new(PerCpu::new(index, apic_id));
            give_ist_stacks(&mut cpu)?;
            let stack = memory::alloc_stack(STACK_PAGES)?;
            Ok((stack, Box::into_raw(cpu) as u64))
        })();
        let (stack_top, percpu) = match prepared {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot prepare processor with APIC ID {apic_id}: {e}");
                break;
            }
        };
        // SAFETY: only the boot processor writes AP_LAUNCH, and only while no AP
        // is between SIPI and check-in (they start one at a time).
        unsafe {
            let l = &mut *core::ptr::addr_of_mut!(AP_LAUNCH);
            l.cr3 = memory::kernel_cr3();
            l.stack_top = stack_top;
            l.percpu = percpu;
        }
        CHECKED_IN.store(0, Ordering::Release);
        apic::send_init(apic_id);
        time::delay_us(10_000);
        let page = (trampoline_page >> 12) as u8;
        apic::send_startup(apic_id, page);
        time::delay_us(200);
        if CHECKED_IN.load(Ordering::Acquire) == 0 {
            apic::send_startup(apic_id, page);
        }
        let deadline = time::deadline_us(CHECK_IN_TIMEOUT_US);
        while CHECKED_IN.load(Ordering::Acquire) == 0 && !time::passed(deadline) {
            core::hint::spin_loop();
        }
        if CHECKED_IN.load(Ordering::Acquire) == 0 {
            log::error!("processor with APIC ID {apic_id} did not start");
            continue;
        }
        started += 1;
    }
    started
}

/// Interrupts LP `lp` (the kick vector) so that it looks again at what
/// other LPs changed for it; nothing to do for the calling LP itself.
pub fn kick(lp: u32) {
    if lp == crate::percpu::index() {
        return;
    }
    apic::send_fixed(
        lp_state::get(lp).apic_id.load(Ordering::Relaxed),
        crate::x86::idt::HOST_KICK_VECTOR as u8,
    );
}

/// Called by an AP on its own stack: takes its per-CPU data (leaked by
/// `start_aps`, owned by that AP alone from now on) and releases the boot
/// processor to start the next.
pub fn take_launch(percpu: u64) -> &'static mut PerCpu {
    CHECKED_IN.store(1, Ordering::Release);
    // SAFETY: `percpu` is the Box leaked for exactly this AP in `start_aps`;
    // no other reference to it exists.
    unsafe { &mut *(percpu as *mut PerCpu) }
}
