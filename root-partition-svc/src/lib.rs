//! The root partition's logic that needs no hardware: the shell's command
//! parser and line editor, the formats of its output, reading the ACPI
//! tables, the integration services' messages. Unit-tested on the host, linked into the bare-metal kernel
//! (`src/kernel/main.rs`) unchanged.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod boot;
pub mod cmos;
pub mod command;
pub mod fat;
pub mod format;
pub mod fpu;
pub mod guest_acpi;
pub mod ic;
pub mod ioapic;
pub mod line;
pub mod linux_boot;
pub mod page_audit;
pub mod vhd;
pub mod vhd_command;
pub mod vhdx;
pub mod vm_command;
pub mod vmm;
pub mod vswitch;

#[cfg(test)]
mod test_files;

/// The shell's prompt.
pub const PROMPT: &str = "root> ";
