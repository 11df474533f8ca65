//! The hypervisor's logic that needs no hardware: parsed on the host by unit
//! tests, linked into the bare-metal binary (`main.rs`) unchanged.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod acpi_sleep;
pub mod bootinfo;
pub mod cmdline;
pub mod control_regs;
pub mod cpuid_policy;
pub mod elf;
pub mod exceptions;
pub mod frame_alloc;
pub mod host_timer;
pub mod hypercall;
pub mod hypercall_msrs;
pub mod lifecycle;
pub mod log_ring;
pub mod mmio;
pub mod msr_report;
pub mod page_table;
pub mod pending;
pub mod ref_time;
pub mod sched;
pub mod stimer;
pub mod vapic;
pub mod vmx_controls;
