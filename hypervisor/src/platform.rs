//! The platform as ACPI describes it: the processors and I/O APICs (MADT)
//! and how to power off (FADT PM1 control blocks, `\_S5` in the DSDT).
//! Tables are parsed by the `acpi` crate through the identity map. The RSDP
//! comes from the loader or, on BIOS machines, from
//! `hypervisor_core::bootinfo::find_rsdp_bios` (shared with the root partition).
use crate::bootinfo::{AcpiRoot, PhysRead};
use crate::power::AcpiPower;
use acpi::address::AddressSpace;
use acpi::fadt::Fadt;
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use alloc::vec::Vec;
use core::ptr::NonNull;

#[derive(Clone)]
struct IdentityMapped;

impl AcpiHandler for IdentityMapped {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        // The `acpi` crate hands out references into the mapping; the tables
        // are firmware memory that nothing writes while the hypervisor runs.
        let ptr = NonNull::new(physical_address as *mut T).unwrap_or(NonNull::dangling());
        // SAFETY: all physical memory is identity-mapped, so the virtual address
        // of the region is its physical address; the caller vouches for the contents.
        unsafe { PhysicalMapping::new(physical_address, ptr, size, size, self.clone()) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Processor {
    pub apic_id: u32,
    /// Enabled now; "online capable" processors are not started (hot-add is not supported).
    pub enabled: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct IoApic {
    pub id: u8,
    pub address: u32,
    pub gsi_base: u32,
}

pub struct PlatformInfo {
    pub processors: Vec<Processor>,
    pub io_apics: Vec<IoApic>,
    pub power: Option<AcpiPower>,
}

pub fn read(root: AcpiRoot) -> Result<PlatformInfo, acpi::AcpiError> {
    // SAFETY: `root` came from a checksummed RSDP given by the loader or found
    // in the BIOS area; the tables it names are identity-mapped.
    let tables = unsafe {
        AcpiTables::from_rsdt(IdentityMapped, root.revision, root.table_address as usize)?
    };
    let mut processors = Vec::new();
    let mut io_apics = Vec::new();
    let madt = tables.find_table::<Madt>()?;
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::LocalApic(e) => {
                let flags = e.flags;
                processors.push(Processor {
                    apic_id: e.apic_id as u32,
                    enabled: flags & 1 != 0,
                });
            }
            MadtEntry::LocalX2Apic(e) => {
                let (id, flags) = (e.x2apic_id, e.flags);
                processors.push(Processor {
                    apic_id: id,
                    enabled: flags & 1 != 0,
                });
            }
            MadtEntry::IoApic(e) => io_apics.push(IoApic {
                id: e.io_apic_id,
                address: e.io_apic_address,
                gsi_base: e.global_system_interrupt_base,
            }),
            _ => {}
        }
    }
    let power = tables.find_table::<Fadt>().ok().and_then(|fadt| {
        let io_port = |a: acpi::address::GenericAddress| {
            (a.address_space == AddressSpace::SystemIo && a.address != 0)
                .then_some(a.address as u16)
        };
        let pm1a = io_port(fadt.pm1a_control_block().ok()?)?;
        let pm1b = fadt.pm1b_control_block().ok().flatten().and_then(io_port);
        let dsdt = tables.dsdt().ok()?;
        let mut aml = alloc::vec![0u8; dsdt.length as usize];
        let phys = crate::memory::IdentityPhys { limit: u64::MAX };
        if !phys.read(dsdt.address as u64, &mut aml) {
            return None;
        }
        let s5 = hypervisor_core::acpi_sleep::s5_sleep_types(&aml)?;
        Some(AcpiPower {
            pm1a_control: pm1a,
            pm1b_control: pm1b,
            s5,
        })
    });
    Ok(PlatformInfo {
        processors,
        io_apics,
        power,
    })
}
