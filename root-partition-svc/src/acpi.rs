//! Reading what power-off and reset need from the ACPI tables: the FADT's PM1
//! control blocks and reset register, and `\_S5` from the DSDT (parsed by
//! `hypervisor_core::acpi_sleep::s5_sleep_types`). The RSDP is read and
//! validated, and on BIOS machines found, by `hypervisor_core::bootinfo`
//! (`read_rsdp`, `find_rsdp_bios`: the same code the hypervisor runs), through
//! [`Reader`].
//!
//! Tables are reached through [`PhysMem`] (the kernel's identity map, a fake
//! memory in tests). Only signatures and lengths are checked, not checksums:
//! firmware with a wrong checksum still powers off.

use hypervisor_core::bootinfo::{self, PhysRead};

/// Physical memory as the root sees it.
pub trait PhysMem {
    /// `len` bytes at physical address `addr`, or `None` if the root cannot read them.
    fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]>;
}

/// ACPI generic address space ids (ACPI 6.5 table 5.25).
pub mod space {
    pub const SYSTEM_MEMORY: u8 = 0;
    pub const SYSTEM_IO: u8 = 1;
    pub const PCI_CONFIG: u8 = 2;
}

/// An ACPI Generic Address Structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gas {
    pub space: u8,
    pub bit_width: u8,
    pub bit_offset: u8,
    pub access_size: u8,
    pub address: u64,
}

impl Gas {
    fn parse(b: &[u8]) -> Option<Self> {
        Some(Gas {
            space: *b.first()?,
            bit_width: *b.get(1)?,
            bit_offset: *b.get(2)?,
            access_size: *b.get(3)?,
            address: u64::from_le_bytes(b.get(4..12)?.try_into().ok()?),
        })
    }
}

/// How to enter S5: write `SLP_TYPx << 10 | SLP_EN` to PM1a (and PM1b) control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerOff {
    pub pm1a_control: u16,
    pub pm1b_control: Option<u16>,
    /// `(SLP_TYPa, SLP_TYPb)` from `\_S5`.
    pub s5: (u8, u8),
}

impl PowerOff {
    pub const SLP_EN: u16 = 1 << 13;
    const SLP_TYP_MASK: u16 = 7 << 10;

    /// The value for a PM1 control register that read `current`: the other
    /// bits (SCI_EN among them) kept, as ACPI asks.
    pub fn control_value(current: u16, slp_typ: u8) -> u16 {
        (current & !(Self::SLP_TYP_MASK | Self::SLP_EN))
            | ((slp_typ as u16 & 7) << 10)
            | Self::SLP_EN
    }
}

/// The FADT's reset register (present when `RESET_REG_SUP` is set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reset {
    pub register: Gas,
    pub value: u8,
}

impl Reset {
    /// For a PCI-configuration reset register: (device, function, offset) on bus 0
    /// (ACPI 6.5 section 5.2.3.2).
    pub fn pci_location(&self) -> (u8, u8, u8) {
        let a = self.register.address;
        (
            ((a >> 32) & 0x1F) as u8,
            ((a >> 16) & 0x7) as u8,
            (a & 0xFF) as u8,
        )
    }
}

/// What the root learnt from ACPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    /// Revision of the RSDP (0: RSDT, ≥ 2: XSDT).
    pub revision: u8,
    pub fadt: u64,
    pub dsdt: u64,
    /// `None`: no PM1a control port or no usable `\_S5` in the DSDT.
    pub power_off: Option<PowerOff>,
    pub reset: Option<Reset>,
    /// FADT flag HW_REDUCED_ACPI: PM1 blocks are absent (not supported here).
    pub hardware_reduced: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    BadRsdp,
    Unreadable(u64),
    BadTable(&'static str),
    NoFadt,
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AcpiError::BadRsdp => write!(f, "no valid RSDP"),
            AcpiError::Unreadable(a) => write!(f, "table at {a:#x} cannot be read"),
            AcpiError::BadTable(s) => write!(f, "malformed {s}"),
            AcpiError::NoFadt => write!(f, "no FADT"),
        }
    }
}

const HEADER: usize = 36;

/// A whole table (header included) at `addr`, checked for `signature`.
fn table<'m>(
    mem: &'m dyn PhysMem,
    addr: u64,
    signature: &'static str,
) -> Result<&'m [u8], AcpiError> {
    let header = mem.bytes(addr, HEADER).ok_or(AcpiError::Unreadable(addr))?;
    if &header[..4] != signature.as_bytes() {
        return Err(AcpiError::BadTable(signature));
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len < HEADER {
        return Err(AcpiError::BadTable(signature));
    }
    mem.bytes(addr, len).ok_or(AcpiError::Unreadable(addr))
}

fn u32_at(t: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(t.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(t: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(t.get(at..at + 8)?.try_into().ok()?))
}

/// The physical address of the first table with `signature` listed in the
/// RSDT (`revision` 0) or XSDT.
pub fn find_table(
    mem: &dyn PhysMem,
    revision: u8,
    root: u64,
    signature: &'static str,
) -> Result<Option<u64>, AcpiError> {
    let (sig, entry) = if revision >= 2 {
        ("XSDT", 8)
    } else {
        ("RSDT", 4)
    };
    let t = table(mem, root, sig)?;
    for e in t[HEADER..].chunks_exact(entry) {
        let addr = if entry == 8 {
            u64_at(e, 0).unwrap_or(0)
        } else {
            u32_at(e, 0).unwrap_or(0) as u64
        };
        if addr == 0 {
            continue;
        }
        if mem
            .bytes(addr, 4)
            .is_some_and(|s| s == signature.as_bytes())
        {
            return Ok(Some(addr));
        }
    }
    Ok(None)
}

/// [`PhysMem`] as the `PhysRead` that `hypervisor_core::bootinfo`'s readers
/// take: copies the bytes `PhysMem` lends, `false` where it has none.
pub struct Reader<'m>(pub &'m dyn PhysMem);

impl PhysRead for Reader<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        match self.0.bytes(addr, buf.len()) {
            Some(bytes) if bytes.len() == buf.len() => {
                buf.copy_from_slice(bytes);
                true
            }
            _ => false,
        }
    }
}

/// The RSDP's address, found where BIOS machines keep it by the search the
/// hypervisor uses too (`hypervisor_core::bootinfo::find_rsdp_bios`: the
/// EBDA's first KiB, then 0xE0000..0x100000). The kernel's identity map
/// leaves page 0 unmapped, so the EBDA pointer at 0x40E reads as absent
/// there and only the BIOS area is searched.
pub fn find_rsdp_bios(mem: &dyn PhysMem) -> Option<u64> {
    bootinfo::find_rsdp_bios(&Reader(mem)).map(|(addr, _)| addr)
}

/// Reads the FADT and the DSDT's `\_S5` through the RSDP at `rsdp_addr`.
pub fn read_platform(mem: &dyn PhysMem, rsdp_addr: u64) -> Result<Platform, AcpiError> {
    let root = bootinfo::read_rsdp(&Reader(mem), rsdp_addr).ok_or(AcpiError::BadRsdp)?;
    let fadt_addr =
        find_table(mem, root.revision, root.table_address, "FACP")?.ok_or(AcpiError::NoFadt)?;
    let fadt = table(mem, fadt_addr, "FACP")?;
    let len = fadt.len();
    // Offsets: ACPI 6.5 table 5.9.
    let has = |at: usize, size: usize| at + size <= len;
    let flags = u32_at(fadt, 112).unwrap_or(0);
    let hardware_reduced = flags & (1 << 20) != 0;

    let x_dsdt = if has(140, 8) {
        u64_at(fadt, 140).unwrap_or(0)
    } else {
        0
    };
    let dsdt = if x_dsdt != 0 {
        x_dsdt
    } else {
        u32_at(fadt, 40).unwrap_or(0) as u64
    };

    // PM1x control: the extended GAS when it names an I/O port, else the 32-bit port field.
    let pm1 = |legacy: usize, x: usize| -> Option<u16> {
        if has(x, 12) {
            if let Some(g) = Gas::parse(&fadt[x..x + 12]) {
                if g.address != 0 {
                    return (g.space == space::SYSTEM_IO && g.address <= 0xFFFF)
                        .then_some(g.address as u16);
                }
            }
        }
        let port = u32_at(fadt, legacy).unwrap_or(0);
        (port != 0 && port <= 0xFFFF).then_some(port as u16)
    };
    let pm1a = pm1(64, 172);
    let pm1b = pm1(68, 184);

    let power_off = match (pm1a, dsdt) {
        (Some(pm1a_control), d) if d != 0 => {
            let aml = table(mem, d, "DSDT")?;
            hypervisor_core::acpi_sleep::s5_sleep_types(&aml[HEADER..]).map(|s5| PowerOff {
                pm1a_control,
                pm1b_control: pm1b,
                s5,
            })
        }
        _ => None,
    };

    const RESET_REG_SUP: u32 = 1 << 10;
    let reset = if flags & RESET_REG_SUP != 0 && has(116, 13) {
        Gas::parse(&fadt[116..128])
            .filter(|g| g.address != 0)
            .map(|register| Reset {
                register,
                value: fadt[128],
            })
    } else {
        None
    };

    Ok(Platform {
        revision: root.revision,
        fadt: fadt_addr,
        dsdt,
        power_off,
        reset,
        hardware_reduced,
    })
}

/// Where an ISA interrupt line reaches the I/O APICs (MADT, ACPI 6.5
/// section 5.2.12): the I/O APIC's registers, its input pin, and the
/// line's polarity and trigger mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsaRoute {
    pub io_apic: u64,
    pub pin: u32,
    pub active_low: bool,
    pub level: bool,
}

/// The MADT (signature "APIC") through the RSDP at `rsdp_addr`, whole.
pub fn read_madt(mem: &dyn PhysMem, rsdp_addr: u64) -> Result<Option<&[u8]>, AcpiError> {
    let root = bootinfo::read_rsdp(&Reader(mem), rsdp_addr).ok_or(AcpiError::BadRsdp)?;
    match find_table(mem, root.revision, root.table_address, "APIC")? {
        Some(addr) => table(mem, addr, "APIC").map(Some),
        None => Ok(None),
    }
}

/// Where ISA IRQ `irq` goes, from the MADT's bytes: its GSI is `irq` unless
/// an interrupt source override says otherwise (with its polarity and
/// trigger; ISA's own are active high, edge); the I/O APIC is the one whose
/// GSI range holds it. `None` if no I/O APIC does, or the table is short.
pub fn isa_irq_route(madt: &[u8], irq: u8) -> Option<IsaRoute> {
    // Entries follow the header and the local APIC address and flags.
    let mut entries = madt.get(HEADER + 8..)?;
    let mut gsi = irq as u32;
    let (mut active_low, mut level) = (false, false);
    let mut io_apics: [Option<(u64, u32)>; 8] = [None; 8];
    let mut n = 0;
    while let [kind, len, ..] = *entries {
        let len = len as usize;
        if len < 2 || len > entries.len() {
            break;
        }
        let e = &entries[..len];
        match (kind, len) {
            // I/O APIC: ID, reserved, address (u32), GSI base (u32).
            (1, 12) => {
                if let Some(slot) = io_apics.get_mut(n) {
                    *slot = Some((u32_at(e, 4)? as u64, u32_at(e, 8)?));
                    n += 1;
                }
            }
            // Interrupt source override: bus 0 (ISA), source, GSI, flags.
            (2, 10) if e[2] == 0 && e[3] == irq => {
                gsi = u32_at(e, 4)?;
                let flags = u16::from_le_bytes([e[8], e[9]]);
                // Polarity bits 1:0 and trigger bits 3:2; 0 = the bus's own.
                active_low = flags & 0b11 == 0b11;
                level = (flags >> 2) & 0b11 == 0b11;
            }
            _ => {}
        }
        entries = &entries[len..];
    }
    // The I/O APIC with the highest base at or below the GSI.
    let (io_apic, base) = io_apics
        .iter()
        .flatten()
        .filter(|(_, base)| *base <= gsi)
        .max_by_key(|(_, base)| *base)?;
    let pin = gsi - base;
    // An I/O APIC has at most 240 inputs (its version register says how many).
    (pin < 240).then_some(IsaRoute {
        io_apic: *io_apic,
        pin,
        active_low,
        level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Fabricated physical memory starting at 0.
    struct FakeMem(Vec<u8>);

    impl PhysMem for FakeMem {
        fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
            let a = usize::try_from(addr).ok()?;
            self.0.get(a..a.checked_add(len)?)
        }
    }

    impl FakeMem {
        fn put(&mut self, addr: usize, b: &[u8]) {
            self.0[addr..addr + b.len()].copy_from_slice(b);
        }
    }

    fn header(sig: &[u8; 4], len: usize) -> Vec<u8> {
        let mut t = std::vec![0u8; len];
        t[..4].copy_from_slice(sig);
        t[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        t
    }

    fn fix_checksum(b: &mut [u8], range: core::ops::Range<usize>, at: usize) {
        b[at] = 0;
        let s = b[range].iter().fold(0u8, |a, x| a.wrapping_add(*x));
        b[at] = 0u8.wrapping_sub(s);
    }

    const RSDP: usize = 0xE0010;
    const XSDT: usize = 0x7000;
    const FADT: usize = 0x8000;
    const DSDT: usize = 0x9000;

    /// QEMU-like tables: RSDP rev 2 → XSDT → (APIC, FACP) → DSDT with `\_S5`.
    fn machine(revision: u8, fadt_len: usize) -> FakeMem {
        let mut m = FakeMem(std::vec![0u8; 0x10_0000]);
        let mut rsdp = std::vec![0u8; 36];
        rsdp[..8].copy_from_slice(b"RSD PTR ");
        rsdp[15] = revision;
        rsdp[16..20].copy_from_slice(&0x6000u32.to_le_bytes());
        rsdp[20..24].copy_from_slice(&36u32.to_le_bytes());
        rsdp[24..32].copy_from_slice(&(XSDT as u64).to_le_bytes());
        fix_checksum(&mut rsdp, 0..20, 8);
        fix_checksum(&mut rsdp, 0..36, 32);
        m.put(RSDP, &rsdp);

        let mut xsdt = header(b"XSDT", HEADER + 16);
        xsdt[HEADER..HEADER + 8].copy_from_slice(&0xA000u64.to_le_bytes());
        xsdt[HEADER + 8..].copy_from_slice(&(FADT as u64).to_le_bytes());
        m.put(XSDT, &xsdt);
        let mut rsdt = header(b"RSDT", HEADER + 8);
        rsdt[HEADER..HEADER + 4].copy_from_slice(&0xA000u32.to_le_bytes());
        rsdt[HEADER + 4..].copy_from_slice(&(FADT as u32).to_le_bytes());
        m.put(0x6000, &rsdt);
        m.put(0xA000, &header(b"APIC", 44));

        let mut fadt = header(b"FACP", fadt_len);
        fadt[40..44].copy_from_slice(&(DSDT as u32).to_le_bytes());
        fadt[64..68].copy_from_slice(&0x604u32.to_le_bytes());
        if fadt_len >= 129 {
            fadt[112..116].copy_from_slice(&(1u32 << 10).to_le_bytes());
            // Reset register: I/O port 0xCF9, value 6.
            fadt[116] = space::SYSTEM_IO;
            fadt[117] = 8;
            fadt[120..128].copy_from_slice(&0xCF9u64.to_le_bytes());
            fadt[128] = 6;
        }
        m.put(FADT, &fadt);

        // DefinitionBlock body: Name (\_S5, Package (4) { 5, 5, 0, 0 }) after filler.
        let mut dsdt = header(b"DSDT", HEADER + 16);
        dsdt[HEADER..HEADER + 16].copy_from_slice(&[
            0x10, 0x01, 0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x0A, 0x05, 0x0A,
            0x05, 0x00,
        ]);
        m.put(DSDT, &dsdt);
        m
    }

    #[test]
    fn qemu_like_tables() {
        let m = machine(2, 276);
        assert_eq!(find_rsdp_bios(&m), Some(RSDP as u64));
        let p = read_platform(&m, RSDP as u64).unwrap();
        assert_eq!(p.revision, 2);
        assert_eq!(p.fadt, FADT as u64);
        assert_eq!(p.dsdt, DSDT as u64);
        assert_eq!(
            p.power_off,
            Some(PowerOff {
                pm1a_control: 0x604,
                pm1b_control: None,
                s5: (5, 5)
            })
        );
        let r = p.reset.unwrap();
        assert_eq!(
            (r.register.space, r.register.address, r.value),
            (space::SYSTEM_IO, 0xCF9, 6)
        );
        assert!(!p.hardware_reduced);
    }

    #[test]
    fn acpi_1_tables() {
        // Revision 0 RSDP → RSDT; a 116-byte FADT has no reset register.
        let m = machine(0, 116);
        let p = read_platform(&m, RSDP as u64).unwrap();
        assert_eq!(p.revision, 0);
        assert_eq!(p.power_off.map(|p| p.pm1a_control), Some(0x604));
        assert_eq!(p.reset, None);
    }

    #[test]
    fn extended_pm1_blocks_win() {
        let mut m = machine(2, 276);
        let mut gas = [0u8; 12];
        gas[0] = space::SYSTEM_IO;
        gas[4..12].copy_from_slice(&0xB004u64.to_le_bytes());
        m.put(FADT + 172, &gas);
        gas[4..12].copy_from_slice(&0xB008u64.to_le_bytes());
        m.put(FADT + 184, &gas);
        let p = read_platform(&m, RSDP as u64).unwrap().power_off.unwrap();
        assert_eq!((p.pm1a_control, p.pm1b_control), (0xB004, Some(0xB008)));
    }

    #[test]
    fn broken_tables() {
        let mut m = machine(2, 276);
        assert_eq!(read_platform(&m, 0x1234), Err(AcpiError::BadRsdp));
        // No \_S5: no ACPI power-off, the reset register is still found.
        m.put(DSDT + HEADER + 5, b"X");
        let p = read_platform(&m, RSDP as u64).unwrap();
        assert_eq!(p.power_off, None);
        assert!(p.reset.is_some());
        // A FADT whose signature is wrong is not found.
        m.put(FADT, b"FACX");
        assert_eq!(read_platform(&m, RSDP as u64), Err(AcpiError::NoFadt));
        // An XSDT pointing outside memory.
        let mut m = machine(2, 276);
        m.put(RSDP + 24, &0xFFFF_0000u64.to_le_bytes());
        let mut rsdp = m.0[RSDP..RSDP + 36].to_vec();
        fix_checksum(&mut rsdp, 0..36, 32);
        m.put(RSDP, &rsdp);
        assert_eq!(
            read_platform(&m, RSDP as u64),
            Err(AcpiError::Unreadable(0xFFFF_0000))
        );
        // A table claiming to be shorter than its header.
        let mut m = machine(2, 276);
        m.put(XSDT + 4, &8u32.to_le_bytes());
        assert_eq!(
            read_platform(&m, RSDP as u64),
            Err(AcpiError::BadTable("XSDT"))
        );
    }

    #[test]
    fn pm1_control_values() {
        // SCI_EN (bit 0) kept, an old SLP_TYP replaced.
        assert_eq!(PowerOff::control_value(0x0001, 5), 0x2000 | 5 << 10 | 1);
        assert_eq!(PowerOff::control_value(0x1C01, 0), 0x2001);
        let r = Reset {
            register: Gas {
                space: space::PCI_CONFIG,
                bit_width: 8,
                bit_offset: 0,
                access_size: 1,
                address: (0x1F << 32) | (3 << 16) | 0x4C,
            },
            value: 2,
        };
        assert_eq!(r.pci_location(), (0x1F, 3, 0x4C));
    }

    /// A MADT: the header, the local APIC address and flags, then `entries`.
    fn madt(entries: &[&[u8]]) -> Vec<u8> {
        let len = HEADER + 8 + entries.iter().map(|e| e.len()).sum::<usize>();
        let mut t = header(b"APIC", len);
        let mut at = HEADER + 8;
        for e in entries {
            t[at..at + e.len()].copy_from_slice(e);
            at += e.len();
        }
        t
    }

    fn io_apic(address: u32, gsi_base: u32) -> Vec<u8> {
        let mut e = std::vec![1u8, 12, 0, 0];
        e.extend_from_slice(&address.to_le_bytes());
        e.extend_from_slice(&gsi_base.to_le_bytes());
        e
    }

    fn source_override(source: u8, gsi: u32, flags: u16) -> Vec<u8> {
        let mut e = std::vec![2u8, 10, 0, source];
        e.extend_from_slice(&gsi.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }

    #[test]
    fn an_isa_irq_without_override_is_its_own_gsi_active_high_edge() {
        let local_apic = [0u8, 8, 0, 0, 1, 0, 0, 0];
        let t = madt(&[
            &local_apic,
            &io_apic(0xFEC0_0000, 0),
            &source_override(0, 2, 0),
        ]);
        assert_eq!(
            isa_irq_route(&t, 4),
            Some(IsaRoute {
                io_apic: 0xFEC0_0000,
                pin: 4,
                active_low: false,
                level: false
            })
        );
        assert_eq!(
            isa_irq_route(&t, 0).map(|r| r.pin),
            Some(2),
            "IRQ 0 on pin 2"
        );
    }

    #[test]
    fn an_override_names_the_gsi_polarity_and_trigger_and_the_io_apic_that_holds_it() {
        let t = madt(&[
            &io_apic(0xFEC0_0000, 0),
            &io_apic(0xFEC0_1000, 24),
            &source_override(4, 26, 0b1111),
        ]);
        assert_eq!(
            isa_irq_route(&t, 4),
            Some(IsaRoute {
                io_apic: 0xFEC0_1000,
                pin: 2,
                active_low: true,
                level: true
            })
        );
    }

    #[test]
    fn a_madt_without_an_io_apic_or_with_bad_entries_routes_nothing() {
        assert_eq!(isa_irq_route(&madt(&[]), 4), None);
        assert_eq!(
            isa_irq_route(&[0u8; 10], 4),
            None,
            "shorter than its header"
        );
        // A zero length entry ends the walk rather than looping.
        let t = madt(&[&[9u8, 0, 0, 0], &io_apic(0xFEC0_0000, 0)]);
        assert_eq!(isa_irq_route(&t, 4), None);
        // An entry running past the table's end is not read.
        let mut t = madt(&[&io_apic(0xFEC0_0000, 0)]);
        t.truncate(t.len() - 1);
        assert_eq!(isa_irq_route(&t, 4), None);
    }

    proptest::proptest! {
        /// Whatever the bytes: no panic, and a route names a pin below 240.
        #[test]
        fn any_madt_bytes_are_safe(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200), irq in 0u8..16) {
            if let Some(r) = isa_irq_route(&bytes, irq) {
                proptest::prop_assert!(r.pin < 240);
            }
        }
    }
}
