//! Interrupts of the root's own devices. The root owns the machine's I/O
//! APIC (the hypervisor never touches it): an ISA line is routed there to
//! LP 0's physical APIC, with a vector the hypervisor hands on to root VP 0
//! (`hv_abi::ROOT_DEVICE_VECTORS`), edge-triggered only.
use crate::phys::Identity;
use root_partition_svc::acpi::{self, IsaRoute};
use root_partition_svc::ioapic::{device_entry, redirection_register, IOREGSEL, IOWIN};

const VERSION_REGISTER: u32 = 0x01;

/// Routes ISA IRQ `irq` (as the MADT at `rsdp` places it) to the processor
/// with physical APIC ID `lp0_apic_id` as `vector`.
pub fn route_isa(
    mem: &Identity,
    rsdp: u64,
    irq: u8,
    vector: u8,
    lp0_apic_id: u32,
) -> Result<IsaRoute, &'static str> {
    if !hv_abi::ROOT_DEVICE_VECTORS.contains(&vector) {
        return Err("the vector is not one the hypervisor hands to the root");
    }
    let dest = u8::try_from(lp0_apic_id)
        .map_err(|_| "LP 0's APIC ID does not fit the I/O APIC's 8-bit destination")?;
    let madt = acpi::read_madt(mem, rsdp)
        .map_err(|_| "the ACPI tables cannot be read")?
        .ok_or("ACPI has no MADT")?;
    let route = acpi::isa_irq_route(madt, irq).ok_or("no I/O APIC input for the line")?;
    if route.level {
        return Err("the line is level-triggered (edge-triggered lines only)");
    }
    let select = |register: u32| mem.mmio_write_u32(route.io_apic + IOREGSEL, register);
    if !select(VERSION_REGISTER) {
        return Err("the I/O APIC's registers are not mapped");
    }
    let version = mem.mmio_read_u32(route.io_apic + IOWIN).unwrap_or(u32::MAX);
    let last_entry = (version >> 16) & 0xFF;
    if version == u32::MAX || route.pin > last_entry {
        return Err("the I/O APIC has no such input");
    }
    let low = redirection_register(route.pin);
    let write = |register: u32, value: u64| {
        select(register);
        mem.mmio_write_u32(route.io_apic + IOWIN, value as u32);
    };
    // Masked while its halves change; unmasked by the last write.
    let entry = device_entry(vector, dest, route.active_low, false);
    write(low, device_entry(vector, dest, route.active_low, true));
    write(low + 1, entry >> 32);
    write(low, entry);
    Ok(route)
}
