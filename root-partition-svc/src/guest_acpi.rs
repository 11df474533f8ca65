//! The ACPI tables a guest boots with: an RSDP, an XSDT naming a
//! hardware-reduced FADT and a MADT, and a DSDT assembled here from a few AML
//! encodings. A stock Linux guest needs them: VMBus is an ACPI device, the
//! MADT's local APICs make the LAPIC timer and SMP work without a PIC, and
//! its I/O APIC (emulated by the VM's worker, [`crate::ioapic`]) carries
//! COM1's interrupt, so the 8250 driver does not poll.
//!
//! The tables go into a caller's buffer (no heap); the guest sees it at
//! guest-physical `base`, typically in the e820-reserved area below 1 MiB.
//! The VMM emulates the few registers the FADT names: the sleep control and
//! status registers (power-off, see [`sleep_control_powers_off`]) and the
//! reset register.
//!
//! Section and table numbers are those of the ACPI 6.5 specification.

/// I/O port of the FADT's SLEEP_CONTROL_REG (8 bits).
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// I/O port of the FADT's SLEEP_STATUS_REG (8 bits). OSPM writes WAK_STS (bit 7)
/// here to clear it before it writes the sleep control register.
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// SLP_TYP for S5 (soft off), as `\_S5` in the DSDT gives it.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Sleep control register: SLP_EN (section 4.8.3.7).
pub const SLP_EN: u8 = 1 << 5;
/// Sleep control register: SLP_TYP, bits 4:2 (section 4.8.3.7).
pub const SLP_TYP_SHIFT: u8 = 2;
pub const SLP_TYP_MASK: u8 = 7 << SLP_TYP_SHIFT;
/// Sleep status register: WAK_STS (section 4.8.3.7).
pub const WAK_STS: u8 = 1 << 7;
/// I/O port of the FADT's reset register (8 bits).
pub const RESET_PORT: u16 = 0xCF9;
/// The value OSPM writes to [`RESET_PORT`] to reset the machine.
pub const RESET_VALUE: u8 = 0x06;
/// The local APIC address the MADT reports (the xAPIC default).
pub const LOCAL_APIC_ADDRESS: u32 = 0xFEE0_0000;
/// Most VPs the tables describe: one Processor Local APIC structure each, with
/// APIC ID = VP index, which must stay below 255 (0xFF is the broadcast ID).
pub const MAX_VPS: u32 = 64;
/// Bytes that always suffice for [`build`] with up to [`MAX_VPS`] VPs.
pub const MAX_SIZE: usize = 2048;
/// OEMID in the RSDP and in every table header.
pub const OEM_ID: [u8; 6] = *b"HVRUST";

const OEM_TABLE_ID: [u8; 8] = *b"HVRUSTVM";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: [u8; 4] = *b"HVRS";
const CREATOR_REVISION: u32 = 1;
/// FADT "Hypervisor Vendor Identity" (section 5.2.9, ACPI 6.0 and later).
const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"HVRUST  ";

/// What the tables describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    /// Number of virtual processors, 1..=[`MAX_VPS`]; VP `i` has ACPI
    /// processor UID `i` and APIC ID `i`.
    pub vps: u32,
}

/// Whether a byte written to [`SLEEP_CONTROL_PORT`] asks for soft off:
/// SLP_EN set and SLP_TYP (bits 4:2) equal to [`S5_SLEEP_TYPE`] (section
/// 4.8.3.7, Sleep Control Register). Other bits are ignored.
pub fn sleep_control_powers_off(value: u8) -> bool {
    value & SLP_EN != 0 && (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == S5_SLEEP_TYPE
}

/// Bytes [`build`] writes for `p` (0 to this length of `out`).
pub fn size(p: &Platform) -> Result<usize, &'static str> {
    let mut scratch = [0u8; DSDT_SCRATCH];
    let dsdt_len = write_dsdt(&mut scratch)?;
    Ok(Layout::new(p, dsdt_len)?.total)
}

/// Builds RSDP, XSDT, FADT, MADT and DSDT into `out`, which the guest sees at
/// guest-physical `base` (16-byte aligned, e.g. 0xE0000). Writes the first
/// [`size`] bytes of `out` (padding zeroed) and leaves the rest alone. Returns
/// the RSDP's guest-physical address (`base`: the RSDP comes first), which the
/// guest is given (Linux: `boot_params.acpi_rsdp_addr`); with `base` in
/// 0xE0000..0x100000 a BIOS-style search finds it too (section 5.2.5.1).
pub fn build(p: &Platform, base: u64, out: &mut [u8]) -> Result<u64, &'static str> {
    if !base.is_multiple_of(16) {
        return Err("guest ACPI: base must be 16-byte aligned");
    }
    let mut dsdt = [0u8; DSDT_SCRATCH];
    let dsdt_len = write_dsdt(&mut dsdt)?;
    let l = Layout::new(p, dsdt_len)?;
    base.checked_add(l.total as u64)
        .ok_or("guest ACPI: tables would end beyond the address space")?;
    let out = out
        .get_mut(..l.total)
        .ok_or("guest ACPI: output buffer too small")?;
    out.fill(0);
    let gpa = |offset: usize| base + offset as u64;

    write_rsdp(&mut out[l.rsdp..l.rsdp + RSDP_LEN], gpa(l.xsdt));
    write_xsdt(
        &mut out[l.xsdt..l.xsdt + XSDT_LEN],
        &[gpa(l.fadt), gpa(l.madt)],
    );
    write_fadt(&mut out[l.fadt..l.fadt + FADT_LEN], gpa(l.dsdt));
    write_madt(&mut out[l.madt..l.madt + madt_len(p.vps)], p.vps);
    out[l.dsdt..l.dsdt + dsdt_len].copy_from_slice(&dsdt[..dsdt_len]);
    Ok(gpa(l.rsdp))
}

// ---------------------------------------------------------------------------
// Layout

const RSDP_LEN: usize = 36;
const HEADER_LEN: usize = 36;
const XSDT_LEN: usize = HEADER_LEN + 2 * 8;
const FADT_LEN: usize = 276;
const MADT_FIXED_LEN: usize = HEADER_LEN + 8;
const LOCAL_APIC_LEN: usize = 8;
const IO_APIC_LEN: usize = 12;
/// Room for the DSDT while it is assembled (it is about 140 bytes).
const DSDT_SCRATCH: usize = 512;
/// Tables start on 16-byte boundaries (the RSDP must, section 5.2.5.1).
const ALIGN: usize = 16;

fn madt_len(vps: u32) -> usize {
    MADT_FIXED_LEN + vps as usize * LOCAL_APIC_LEN + IO_APIC_LEN
}

/// Offsets of the tables in the output.
struct Layout {
    rsdp: usize,
    xsdt: usize,
    fadt: usize,
    madt: usize,
    dsdt: usize,
    total: usize,
}

impl Layout {
    fn new(p: &Platform, dsdt_len: usize) -> Result<Self, &'static str> {
        if p.vps == 0 || p.vps > MAX_VPS {
            return Err("guest ACPI: VP count must be 1..=64");
        }
        let next = |at: usize, len: usize| (at + len).next_multiple_of(ALIGN);
        let rsdp = 0;
        let xsdt = next(rsdp, RSDP_LEN);
        let fadt = next(xsdt, XSDT_LEN);
        let madt = next(fadt, FADT_LEN);
        let dsdt = next(madt, madt_len(p.vps));
        Ok(Layout {
            rsdp,
            xsdt,
            fadt,
            madt,
            dsdt,
            total: dsdt + dsdt_len,
        })
    }
}

// ---------------------------------------------------------------------------
// Tables

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

fn put_u16(t: &mut [u8], at: usize, v: u16) {
    t[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(t: &mut [u8], at: usize, v: u32) {
    t[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(t: &mut [u8], at: usize, v: u64) {
    t[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// RSDP, revision 2 (section 5.2.5.3, table 5.3). No RSDT: RsdtAddress is 0
/// and OSPM uses the XSDT.
fn write_rsdp(r: &mut [u8], xsdt: u64) {
    r[..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(&OEM_ID);
    r[15] = 2; // Revision
    put_u32(r, 20, RSDP_LEN as u32); // Length
    put_u64(r, 24, xsdt); // XsdtAddress
    r[8] = 0u8.wrapping_sub(sum(&r[..20])); // Checksum: the ACPI 1.0 part
    r[32] = 0u8.wrapping_sub(sum(&r[..RSDP_LEN])); // Extended Checksum
}

/// System description table header (section 5.2.6, table 5.4). The checksum is
/// set by [`seal`] once the body is written.
fn write_header(t: &mut [u8], signature: &[u8; 4], revision: u8) {
    t[..4].copy_from_slice(signature);
    put_u32(t, 4, t.len() as u32); // Length
    t[8] = revision;
    t[10..16].copy_from_slice(&OEM_ID);
    t[16..24].copy_from_slice(&OEM_TABLE_ID);
    put_u32(t, 24, OEM_REVISION);
    t[28..32].copy_from_slice(&CREATOR_ID);
    put_u32(t, 32, CREATOR_REVISION);
}

/// Sets the header's checksum (byte 9) so that the whole table sums to 0.
fn seal(t: &mut [u8]) {
    t[9] = 0;
    t[9] = 0u8.wrapping_sub(sum(t));
}

/// XSDT (section 5.2.8): 64-bit addresses of the other tables.
fn write_xsdt(t: &mut [u8], entries: &[u64]) {
    write_header(t, b"XSDT", 1);
    for (i, e) in entries.iter().enumerate() {
        put_u64(t, HEADER_LEN + 8 * i, *e);
    }
    seal(t);
}

/// Generic Address Structure (section 5.2.3.2).
mod gas {
    /// Address Space ID: system I/O.
    pub const SYSTEM_IO: u8 = 1;
    /// Access Size: byte.
    pub const BYTE: u8 = 1;

    /// An 8-bit register at I/O port `port`, accessed as a byte.
    pub fn io8(port: u16) -> [u8; 12] {
        let mut g = [0u8; 12];
        g[0] = SYSTEM_IO;
        g[1] = 8; // Register Bit Width
        g[2] = 0; // Register Bit Offset
        g[3] = BYTE;
        g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
        g
    }
}

/// FADT field offsets (section 5.2.9, table 5.9).
mod fadt {
    pub const DSDT: usize = 40;
    pub const IAPC_BOOT_ARCH: usize = 109;
    pub const FLAGS: usize = 112;
    pub const RESET_REG: usize = 116;
    pub const RESET_VALUE: usize = 128;
    pub const MINOR_VERSION: usize = 131;
    pub const X_DSDT: usize = 140;
    pub const SLEEP_CONTROL_REG: usize = 244;
    pub const SLEEP_STATUS_REG: usize = 256;
    pub const HYPERVISOR_VENDOR_ID: usize = 268;

    // Fixed feature flags.
    /// WBINVD works (OSPM may flush caches with it before S1-S3).
    pub const WBINVD: u32 = 1 << 0;
    /// No fixed-hardware power button (there is none at all).
    pub const PWR_BUTTON: u32 = 1 << 4;
    /// No fixed-hardware sleep button (there is none at all).
    pub const SLP_BUTTON: u32 = 1 << 5;
    pub const RESET_REG_SUP: u32 = 1 << 10;
    /// Every local APIC in physical destination mode: the only mode the
    /// I/O APIC's entries are delivered in ([`crate::ioapic`]).
    pub const FORCE_APIC_PHYSICAL_DESTINATION_MODE: u32 = 1 << 19;
    pub const HW_REDUCED_ACPI: u32 = 1 << 20;

    // IA-PC boot architecture flags. LEGACY_DEVICES (bit 0) and
    // 8042 (bit 1) stay clear: no ISA devices OSPM cannot enumerate, no
    // keyboard controller. MSI_NOT_SUPPORTED (bit 3) stays clear so a later
    // virtual PCI bus may use MSI; CMOS_RTC_NOT_PRESENT (bit 5) stays clear
    // because the VMM emulates the RTC at ports 0x70/0x71.
    pub const VGA_NOT_PRESENT: u16 = 1 << 2;
    /// OSPM must not enable ASPM control (there is no PCIe).
    pub const PCIE_ASPM_CONTROLS: u16 = 1 << 4;
}

/// FADT revision 6 (section 5.2.9), hardware-reduced (section 4.1): no SCI,
/// no SMI command port, no PM1/PM2/PM timer/GPE blocks and no FACS, all of
/// which stay 0. Sleep goes through the sleep control and status registers,
/// reset through the reset register.
fn write_fadt(t: &mut [u8], dsdt: u64) {
    write_header(t, b"FACP", 6);
    // FIRMWARE_CTRL and X_FIRMWARE_CTRL stay 0: a hardware-reduced platform
    // needs no FACS. The 32-bit DSDT field repeats X_DSDT when it fits.
    put_u32(t, fadt::DSDT, u32::try_from(dsdt).unwrap_or(0));
    put_u16(
        t,
        fadt::IAPC_BOOT_ARCH,
        fadt::VGA_NOT_PRESENT | fadt::PCIE_ASPM_CONTROLS,
    );
    put_u32(
        t,
        fadt::FLAGS,
        fadt::WBINVD
            | fadt::PWR_BUTTON
            | fadt::SLP_BUTTON
            | fadt::RESET_REG_SUP
            | fadt::FORCE_APIC_PHYSICAL_DESTINATION_MODE
            | fadt::HW_REDUCED_ACPI,
    );
    t[fadt::RESET_REG..fadt::RESET_REG + 12].copy_from_slice(&gas::io8(RESET_PORT));
    t[fadt::RESET_VALUE] = RESET_VALUE;
    t[fadt::MINOR_VERSION] = 5; // ACPI 6.5
    put_u64(t, fadt::X_DSDT, dsdt);
    t[fadt::SLEEP_CONTROL_REG..fadt::SLEEP_CONTROL_REG + 12]
        .copy_from_slice(&gas::io8(SLEEP_CONTROL_PORT));
    t[fadt::SLEEP_STATUS_REG..fadt::SLEEP_STATUS_REG + 12]
        .copy_from_slice(&gas::io8(SLEEP_STATUS_PORT));
    t[fadt::HYPERVISOR_VENDOR_ID..fadt::HYPERVISOR_VENDOR_ID + 8]
        .copy_from_slice(&HYPERVISOR_VENDOR_ID);
    seal(t);
}

/// MADT (section 5.2.12), revision 5: the local APIC address,
/// flags 0 (no PCAT_COMPAT: no 8259 PICs to disable), one Processor Local
/// APIC structure (section 5.2.12.2) per VP and the I/O APIC (section
/// 5.2.12.3; ID 0, GSI base 0: ISA IRQ n is pin n, as on a PC without
/// overrides).
fn write_madt(t: &mut [u8], vps: u32) {
    const PROCESSOR_LOCAL_APIC: u8 = 0;
    const IO_APIC: u8 = 1;
    const ENABLED: u32 = 1 << 0;
    write_header(t, b"APIC", 5);
    put_u32(t, HEADER_LEN, LOCAL_APIC_ADDRESS);
    put_u32(t, HEADER_LEN + 4, 0); // Flags
    for vp in 0..vps {
        let at = MADT_FIXED_LEN + vp as usize * LOCAL_APIC_LEN;
        t[at] = PROCESSOR_LOCAL_APIC;
        t[at + 1] = LOCAL_APIC_LEN as u8;
        t[at + 2] = vp as u8; // ACPI Processor UID
        t[at + 3] = vp as u8; // APIC ID
        put_u32(t, at + 4, ENABLED);
    }
    let at = MADT_FIXED_LEN + vps as usize * LOCAL_APIC_LEN;
    t[at] = IO_APIC;
    t[at + 1] = IO_APIC_LEN as u8;
    t[at + 2] = 0; // I/O APIC ID
    t[at + 3] = 0;
    put_u32(t, at + 4, crate::ioapic::BASE as u32);
    put_u32(t, at + 8, 0); // Global System Interrupt Base
    seal(t);
}

/// The whole DSDT (header and AML) into `buf`; returns its length.
///
/// ```text
/// Scope (\_SB) {
///     Device (VMBS) { Name (_HID, "VMBUS") Name (_UID, 0) Name (_CRS, ResourceTemplate () {}) }
///     Device (COM1) {
///         Name (_HID, EisaId ("PNP0501")) Name (_UID, 0)
///         Name (_CRS, ResourceTemplate () { IO (Decode16, 0x3F8, 0x3F8, 1, 8) IRQNoFlags () { 4 } })
///     }
/// }
/// Name (\_S5, Package () { 5, 0 })
/// ```
///
/// COM1's interrupt is ISA IRQ 4, edge-triggered and active high (what
/// `IRQNoFlags` means, section 6.4.2.1): pin 4 of the I/O APIC. `\_S5` gives SLP_TYP 5 (section
/// 7.4.2.6); hardware-reduced OSPM writes it to the sleep control register.
fn write_dsdt(buf: &mut [u8]) -> Result<usize, &'static str> {
    let mut a = Aml::new(buf);
    a.raw(&[0; HEADER_LEN])?;
    a.scope("\\_SB", |a| {
        a.device("VMBS", |a| {
            a.name("_HID", |a| a.string("VMBUS"))?;
            a.name("_UID", |a| a.integer(0))?;
            a.name("_CRS", |a| a.resource_template(&[]))
        })?;
        a.device("COM1", |a| {
            a.name("_HID", |a| a.eisa_id("PNP0501"))?;
            a.name("_UID", |a| a.integer(0))?;
            a.name("_CRS", |a| {
                a.resource_template(&[
                    Resource::Io16 {
                        min: 0x3F8,
                        max: 0x3F8,
                        align: 1,
                        len: 8,
                    },
                    Resource::Irq(crate::ioapic::COM1_PIN as u8),
                ])
            })
        })
    })?;
    a.name("\\_S5", |a| a.package(&[u64::from(S5_SLEEP_TYPE), 0]))?;
    let len = a.pos;
    // Revision 2: integers are 64 bits (section 5.2.11.1).
    let t = &mut buf[..len];
    write_header(t, b"DSDT", 2);
    seal(t);
    Ok(len)
}

// ---------------------------------------------------------------------------
// AML (section 20.2) and resource descriptors (section 6.4)

const TOO_LONG: &str = "guest ACPI: AML does not fit";

mod op {
    pub const ZERO: u8 = 0x00;
    pub const ONE: u8 = 0x01;
    pub const NAME: u8 = 0x08;
    pub const BYTE_PREFIX: u8 = 0x0A;
    pub const WORD_PREFIX: u8 = 0x0B;
    pub const DWORD_PREFIX: u8 = 0x0C;
    pub const STRING_PREFIX: u8 = 0x0D;
    pub const QWORD_PREFIX: u8 = 0x0E;
    pub const SCOPE: u8 = 0x10;
    pub const BUFFER: u8 = 0x11;
    pub const PACKAGE: u8 = 0x12;
    pub const EXT_PREFIX: u8 = 0x5B;
    pub const DEVICE: u8 = 0x82; // after EXT_PREFIX
    pub const ROOT_CHAR: u8 = b'\\';
}

/// A resource data descriptor in a `ResourceTemplate`.
#[derive(Clone, Copy, Debug)]
enum Resource {
    /// I/O Port Descriptor (section 6.4.2.5) with 16-bit decode.
    Io16 {
        min: u16,
        max: u16,
        align: u8,
        len: u8,
    },
    /// IRQ Descriptor (section 6.4.2.1) without its information byte: one
    /// ISA IRQ (0-15), edge-triggered, active high, exclusive.
    Irq(u8),
}

impl Resource {
    const IO_LEN: usize = 8;
    const IRQ_LEN: usize = 3;

    fn len(&self) -> usize {
        match self {
            Resource::Io16 { .. } => Self::IO_LEN,
            Resource::Irq(_) => Self::IRQ_LEN,
        }
    }
}

/// End Tag (section 6.4.2.9): small item 0xF, length 1; a checksum byte follows.
const END_TAG: u8 = 0x79;

/// PkgLength (section 20.2.4) for a package whose contents after the PkgLength
/// take `body` bytes: the encoded length counts the PkgLength bytes too. One
/// byte holds lengths below 2^6; otherwise bits 7:6 of the lead byte give the
/// number (1-3) of following bytes, its bits 3:0 the low nibble of the length,
/// and the following bytes the rest, least significant first (up to 2^28).
fn pkg_length(body: usize) -> Result<([u8; 4], usize), &'static str> {
    for n in 1..=4usize {
        let total = body + n;
        let limit = if n == 1 {
            1 << 6
        } else {
            1 << (4 + 8 * (n - 1))
        };
        if total < limit {
            let mut enc = [0u8; 4];
            if n == 1 {
                enc[0] = total as u8;
            } else {
                enc[0] = (((n - 1) as u8) << 6) | (total & 0xF) as u8;
                for (i, e) in enc.iter_mut().enumerate().take(n).skip(1) {
                    *e = (total >> (4 + 8 * (i - 1))) as u8;
                }
            }
            return Ok((enc, n));
        }
    }
    Err(TOO_LONG)
}

/// The 32-bit compressed EISA ID of `id` ("PNP0501"): three letters of 5 bits
/// each (A = 1), then four hex digits, big-endian: what the ASL `EISAID`
/// macro computes (section 19.6). AML stores it as an integer, i.e.
/// little-endian.
fn eisa_id(id: &str) -> Result<u32, &'static str> {
    const BAD: &str = "guest ACPI: bad EISA ID";
    let b = id.as_bytes();
    if b.len() != 7 {
        return Err(BAD);
    }
    let mut v: u32 = 0;
    for &c in &b[..3] {
        if !c.is_ascii_uppercase() {
            return Err(BAD);
        }
        v = (v << 5) | u32::from(c - b'@');
    }
    for &c in &b[3..] {
        let d = (c as char).to_digit(16).ok_or(BAD)?;
        if c.is_ascii_lowercase() {
            return Err(BAD);
        }
        v = (v << 4) | d;
    }
    Ok(u32::from_be_bytes(v.to_le_bytes()))
}

/// An AML writer over a caller's buffer.
struct Aml<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

type AmlResult = Result<(), &'static str>;

impl<'b> Aml<'b> {
    fn new(buf: &'b mut [u8]) -> Self {
        Aml { buf, pos: 0 }
    }

    fn raw(&mut self, bytes: &[u8]) -> AmlResult {
        let end = self.pos + bytes.len();
        self.buf
            .get_mut(self.pos..end)
            .ok_or(TOO_LONG)?
            .copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    /// `PkgLength` followed by what `body` writes: room for the longest
    /// PkgLength is kept, then the body is moved down to the encoding's size.
    fn package_length(&mut self, body: impl FnOnce(&mut Self) -> AmlResult) -> AmlResult {
        let start = self.pos;
        self.raw(&[0; 4])?;
        body(self)?;
        let (enc, n) = pkg_length(self.pos - start - 4)?;
        self.buf.copy_within(start + 4..self.pos, start + n);
        self.buf[start..start + n].copy_from_slice(&enc[..n]);
        self.pos -= 4 - n;
        Ok(())
    }

    /// NameString (section 20.2.2): an optional root prefix and one NameSeg,
    /// padded with '_' to 4 characters as ASL does.
    fn name_string(&mut self, path: &str) -> AmlResult {
        const BAD: &str = "guest ACPI: bad AML name";
        let seg = match path.strip_prefix('\\') {
            Some(seg) => {
                self.raw(&[op::ROOT_CHAR])?;
                seg
            }
            None => path,
        };
        let b = seg.as_bytes();
        if b.is_empty() || b.len() > 4 || b[0].is_ascii_digit() {
            return Err(BAD);
        }
        let mut s = [b'_'; 4];
        for (d, &c) in s.iter_mut().zip(b) {
            if !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_') {
                return Err(BAD);
            }
            *d = c;
        }
        self.raw(&s)
    }

    /// DefScope := ScopeOp PkgLength NameString TermList (section 20.2.5.1).
    fn scope(&mut self, path: &str, body: impl FnOnce(&mut Self) -> AmlResult) -> AmlResult {
        self.raw(&[op::SCOPE])?;
        self.package_length(|a| {
            a.name_string(path)?;
            body(a)
        })
    }

    /// DefDevice := DeviceOp PkgLength NameString TermList, DeviceOp =
    /// ExtOpPrefix 0x82 (section 20.2.5.2).
    fn device(&mut self, name: &str, body: impl FnOnce(&mut Self) -> AmlResult) -> AmlResult {
        self.raw(&[op::EXT_PREFIX, op::DEVICE])?;
        self.package_length(|a| {
            a.name_string(name)?;
            body(a)
        })
    }

    /// DefName := NameOp NameString DataRefObject (section 20.2.5.1).
    fn name(&mut self, path: &str, value: impl FnOnce(&mut Self) -> AmlResult) -> AmlResult {
        self.raw(&[op::NAME])?;
        self.name_string(path)?;
        value(self)
    }

    /// An integer in its shortest encoding: ZeroOp, OneOp, or Byte/Word/
    /// DWord/QWordConst (section 20.2.3).
    fn integer(&mut self, v: u64) -> AmlResult {
        match v {
            0 => self.raw(&[op::ZERO]),
            1 => self.raw(&[op::ONE]),
            2..=0xFF => self.raw(&[op::BYTE_PREFIX, v as u8]),
            0x100..=0xFFFF => {
                self.raw(&[op::WORD_PREFIX])?;
                self.raw(&(v as u16).to_le_bytes())
            }
            0x1_0000..=0xFFFF_FFFF => self.dword(v as u32),
            _ => {
                self.raw(&[op::QWORD_PREFIX])?;
                self.raw(&v.to_le_bytes())
            }
        }
    }

    fn dword(&mut self, v: u32) -> AmlResult {
        self.raw(&[op::DWORD_PREFIX])?;
        self.raw(&v.to_le_bytes())
    }

    /// String := StringPrefix AsciiCharList NullChar (section 20.2.3).
    fn string(&mut self, s: &str) -> AmlResult {
        if !s.bytes().all(|c| (0x01..=0x7F).contains(&c)) {
            return Err("guest ACPI: AML strings are ASCII without NUL");
        }
        self.raw(&[op::STRING_PREFIX])?;
        self.raw(s.as_bytes())?;
        self.raw(&[0])
    }

    /// `EisaId ("...")`: a DWordConst, as ASL compilers emit it.
    fn eisa_id(&mut self, id: &str) -> AmlResult {
        self.dword(eisa_id(id)?)
    }

    /// DefPackage := PackageOp PkgLength NumElements PackageElementList
    /// (section 20.2.5.4), of integers.
    fn package(&mut self, elements: &[u64]) -> AmlResult {
        let count = u8::try_from(elements.len()).map_err(|_| TOO_LONG)?;
        self.raw(&[op::PACKAGE])?;
        self.package_length(|a| {
            a.raw(&[count])?;
            elements.iter().try_for_each(|&e| a.integer(e))
        })
    }

    /// `ResourceTemplate () { ... }`: DefBuffer := BufferOp PkgLength
    /// BufferSize ByteList (section 20.2.5.4) holding the descriptors and an
    /// End Tag. Its checksum byte is 0, which means "treat the checksum as
    /// correct" (section 6.4.2.9): what iasl emits for the same ASL and what
    /// ACPICA writes when it encodes resources. (A computed checksum is valid
    /// too, but ACPICA's acpiexec then reports a mismatch on re-encoding.)
    fn resource_template(&mut self, items: &[Resource]) -> AmlResult {
        let size = items.iter().map(Resource::len).sum::<usize>() + 2;
        self.raw(&[op::BUFFER])?;
        self.package_length(|a| {
            a.integer(size as u64)?;
            for item in items {
                match *item {
                    Resource::Io16 {
                        min,
                        max,
                        align,
                        len,
                    } => {
                        // Small item 0x08, length 7; Information bit 0: 16-bit decode.
                        a.raw(&[0x47, 0x01])?;
                        a.raw(&min.to_le_bytes())?;
                        a.raw(&max.to_le_bytes())?;
                        a.raw(&[align, len])?;
                    }
                    Resource::Irq(irq) => {
                        // Small item 0x04, length 2: the IRQ mask.
                        let mask = 1u16.checked_shl(u32::from(irq)).ok_or(TOO_LONG)?;
                        a.raw(&[0x22])?;
                        a.raw(&mask.to_le_bytes())?;
                    }
                }
            }
            a.raw(&[END_TAG, 0])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::path::{Path, PathBuf};
    use std::string::String;
    use std::vec;
    use std::vec::Vec;

    const BASE: u64 = 0xE0000;

    fn built(vps: u32, base: u64) -> (Vec<u8>, u64) {
        let mut out = vec![0u8; MAX_SIZE];
        let rsdp = build(&Platform { vps }, base, &mut out).expect("build");
        out.truncate(size(&Platform { vps }).unwrap());
        (out, rsdp)
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// The table at guest-physical `gpa`, its length from its header.
    fn table(out: &[u8], base: u64, gpa: u64) -> &[u8] {
        let at = usize::try_from(gpa - base).unwrap();
        let len = u32_at(out, at + 4) as usize;
        &out[at..at + len]
    }

    /// The tables by signature, after checking everything the guest relies on.
    fn check(out: &[u8], base: u64, rsdp: u64, vps: u32) -> [Vec<u8>; 5] {
        assert_eq!(rsdp, base);
        let r = &out[(rsdp - base) as usize..][..36];
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0, "RSDP checksum");
        assert_eq!(sum(r), 0, "RSDP extended checksum");
        assert_eq!(r[15], 2);
        assert_eq!(&r[9..15], b"HVRUST");
        assert_eq!(u32_at(r, 16), 0, "no RSDT");
        assert_eq!(u32_at(r, 20), 36);
        let root = hypervisor_core::bootinfo::parse_rsdp(r).expect("parse_rsdp");
        assert_eq!(root.revision, 2);

        let xsdt = table(out, base, u64_at(r, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(root.table_address, u64_at(r, 24));
        assert_eq!(xsdt.len(), 36 + 16);
        let entries: Vec<u64> = xsdt[36..].chunks(8).map(|e| u64_at(e, 0)).collect();
        let fadt = table(out, base, entries[0]);
        let madt = table(out, base, entries[1]);
        assert_eq!(&fadt[..4], b"FACP");
        assert_eq!(&madt[..4], b"APIC");

        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6, "FADT revision");
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_ne!(flags & (1 << 19), 0, "FORCE_APIC_PHYSICAL_DESTINATION_MODE");
        assert_eq!(u32_at(fadt, 36), 0, "FIRMWARE_CTRL");
        assert_eq!(u64_at(fadt, 132), 0, "X_FIRMWARE_CTRL");
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 0, "SCI_INT");
        assert_eq!(u32_at(fadt, 76), 0, "PM_TMR_BLK");
        assert!(fadt[208..220].iter().all(|&b| b == 0), "X_PM_TMR_BLK");
        let boot_arch = u16::from_le_bytes([fadt[109], fadt[110]]);
        assert_eq!(boot_arch & 0b11, 0, "no legacy devices, no 8042");
        assert_ne!(boot_arch & (1 << 2), 0, "VGA not present");
        let x_dsdt = u64_at(fadt, 140);
        if x_dsdt <= u64::from(u32::MAX) {
            assert_eq!(u64::from(u32_at(fadt, 40)), x_dsdt);
        } else {
            assert_eq!(u32_at(fadt, 40), 0);
        }
        let gas = |at: usize| (fadt[at], fadt[at + 1], fadt[at + 3], u64_at(fadt, at + 4));
        assert_eq!(gas(116), (1, 8, 1, 0xCF9), "RESET_REG");
        assert_eq!(fadt[128], 0x06, "RESET_VALUE");
        assert_eq!(gas(244), (1, 8, 1, 0x600), "SLEEP_CONTROL_REG");
        assert_eq!(gas(256), (1, 8, 1, 0x601), "SLEEP_STATUS_REG");

        let dsdt = table(out, base, x_dsdt);
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(
            hypervisor_core::acpi_sleep::s5_sleep_types(&dsdt[36..]),
            Some((S5_SLEEP_TYPE, 0))
        );

        assert_eq!(madt.len(), 44 + 8 * vps as usize + 12);
        assert_eq!(u32_at(madt, 36), 0xFEE0_0000);
        assert_eq!(u32_at(madt, 40), 0, "MADT flags (no PCAT_COMPAT)");
        let mut count = 0;
        let mut at = 44;
        while at < madt.len() - 12 {
            let s = &madt[at..at + madt[at + 1] as usize];
            assert_eq!((s[0], s[1]), (0, 8), "Processor Local APIC");
            assert_eq!(s[2], count as u8, "ACPI processor UID");
            assert_eq!(s[3], count as u8, "APIC ID");
            assert_eq!(u32_at(s, 4), 1, "enabled");
            count += 1;
            at += s.len();
        }
        let io = &madt[at..];
        assert_eq!((io[0], io[1], io[2]), (1, 12, 0), "I/O APIC, ID 0");
        assert_eq!(u32_at(io, 4), 0xFEC0_0000);
        assert_eq!(u32_at(io, 8), 0, "GSI base");
        assert_eq!(count, vps);

        for t in [xsdt, fadt, madt, dsdt] {
            assert_eq!(sum(t), 0, "{} checksum", String::from_utf8_lossy(&t[..4]));
            assert_eq!(&t[10..16], b"HVRUST");
            assert_eq!(&t[28..32], b"HVRS");
            let end = (t.as_ptr() as usize - out.as_ptr() as usize) + t.len();
            assert!(end <= out.len());
        }
        [r, xsdt, fadt, madt, dsdt].map(|t| t.to_vec())
    }

    #[test]
    fn tables_for_one_four_and_64_vps() {
        for vps in [1, 4, MAX_VPS] {
            let (out, rsdp) = built(vps, BASE);
            check(&out, BASE, rsdp, vps);
        }
    }

    #[test]
    fn sizes() {
        let s = |vps| size(&Platform { vps }).unwrap();
        // RSDP 36 | XSDT 52 | FADT 276 | MADT 44 + 8n + 12 | DSDT 137,
        // 16-aligned.
        assert_eq!(s(1), 464 + 137);
        assert_eq!(s(MAX_VPS), 976 + 137);
        assert!(s(MAX_VPS) <= MAX_SIZE);
    }

    #[test]
    fn dsdt_aml_bytes() {
        let (out, rsdp) = built(1, BASE);
        let [.., dsdt] = check(&out, BASE, rsdp, 1);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            // Scope (\_SB), PkgLength 88 (2 bytes)
            0x10, 0x48, 0x05, b'\\', b'_', b'S', b'B', b'_',
            // Device (VMBS), PkgLength 34
            0x5B, 0x82, 0x22, b'V', b'M', b'B', b'S',
            // Name (_HID, "VMBUS")
            0x08, b'_', b'H', b'I', b'D', 0x0D, b'V', b'M', b'B', b'U', b'S', 0x00,
            // Name (_UID, Zero)
            0x08, b'_', b'U', b'I', b'D', 0x00,
            // Name (_CRS, Buffer (0x02) { End Tag })
            0x08, b'_', b'C', b'R', b'S', 0x11, 0x05, 0x0A, 0x02, 0x79, 0x00,
            // Device (COM1), PkgLength 43
            0x5B, 0x82, 0x2B, b'C', b'O', b'M', b'1',
            // Name (_HID, EisaId ("PNP0501"))
            0x08, b'_', b'H', b'I', b'D', 0x0C, 0x41, 0xD0, 0x05, 0x01,
            // Name (_UID, Zero)
            0x08, b'_', b'U', b'I', b'D', 0x00,
            // Name (_CRS, Buffer (0x0D) { IO (Decode16, 0x3F8, 0x3F8, 1, 8),
            // IRQNoFlags () { 4 }, End Tag })
            0x08, b'_', b'C', b'R', b'S', 0x11, 0x10, 0x0A, 0x0D,
            0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00,
            // Name (\_S5, Package (0x02) { 0x05, Zero })
            0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x05, 0x02, 0x0A, 0x05, 0x00,
        ];
        assert_eq!(&dsdt[36..], expected);
        assert_eq!(dsdt.len(), 137);
        assert_eq!(dsdt[8], 2, "DSDT revision");
    }

    #[test]
    fn the_root_partitions_own_readers_agree() {
        struct Mem(Vec<u8>);
        impl crate::acpi::PhysMem for Mem {
            fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
                let a = usize::try_from(addr).ok()?;
                self.0.get(a..a.checked_add(len)?)
            }
        }
        let (out, rsdp) = built(2, BASE);
        let mut mem = vec![0u8; 0x10_0000];
        mem[BASE as usize..BASE as usize + out.len()].copy_from_slice(&out);
        let mem = Mem(mem);
        assert_eq!(crate::acpi::find_rsdp_bios(&mem), Some(rsdp));
        let p = crate::acpi::read_platform(&mem, rsdp).expect("read_platform");
        assert_eq!(p.revision, 2);
        assert!(p.hardware_reduced);
        let reset = p.reset.expect("reset register");
        assert_eq!(reset.value, RESET_VALUE);
        assert_eq!(reset.register.space, crate::acpi::space::SYSTEM_IO);
        assert_eq!(reset.register.address, u64::from(RESET_PORT));
        assert_eq!(&mem.0[p.dsdt as usize..][..4], b"DSDT");
    }

    #[test]
    fn errors() {
        let mut out = [0u8; MAX_SIZE];
        let p = Platform { vps: 1 };
        let need = size(&p).unwrap();
        assert!(build(&p, BASE, &mut out[..need - 1]).is_err());
        assert!(build(&p, BASE, &mut []).is_err());
        assert!(build(&p, BASE, &mut out[..need]).is_ok());
        assert!(build(&Platform { vps: 0 }, BASE, &mut out).is_err());
        assert!(build(&Platform { vps: MAX_VPS + 1 }, BASE, &mut out).is_err());
        assert!(build(&p, BASE + 8, &mut out).is_err(), "unaligned");
        assert!(build(&p, !15, &mut out).is_err(), "wraps");
    }

    #[test]
    fn above_4_gib_the_32_bit_dsdt_pointer_is_0() {
        let base = 0x1_0000_0000 - 0x100;
        let (out, rsdp) = built(3, base);
        let [_, _, fadt, ..] = check(&out, base, rsdp, 3);
        assert_eq!(u32_at(&fadt, 40), 0);
        assert!(u64_at(&fadt, 140) > u64::from(u32::MAX));
    }

    #[test]
    fn pkg_length_encodings() {
        let enc = |body| {
            let (e, n) = pkg_length(body).unwrap();
            e[..n].to_vec()
        };
        assert_eq!(enc(0), [0x01]);
        assert_eq!(enc(62), [0x3F]);
        assert_eq!(enc(63), [0x41, 0x04]); // 65
        assert_eq!(enc(0xFFD), [0x4F, 0xFF]); // 0xFFF
        assert_eq!(enc(0xFFE), [0x81, 0x00, 0x01]); // 0x1001
        assert_eq!(enc(0xF_FFFC), [0x8F, 0xFF, 0xFF]); // 0xFFFFF
        assert_eq!(enc(0xF_FFFD), [0xC1, 0x00, 0x00, 0x01]); // 0x100001
        assert_eq!(enc(0xFFF_FFFB), [0xCF, 0xFF, 0xFF, 0xFF]);
        assert!(pkg_length(0xFFF_FFFC).is_err());
    }

    #[test]
    fn package_length_moves_long_bodies() {
        let mut buf = vec![0u8; 6000];
        let mut a = Aml::new(&mut buf);
        a.package_length(|a| (0..5000u32).try_for_each(|i| a.raw(&[i as u8])))
            .unwrap();
        assert_eq!(a.pos, 5003);
        // 5000 + 3 = 0x138B
        assert_eq!(&buf[..3], [0x8B, 0x38, 0x01]);
        assert!((0..5000).all(|i| buf[3 + i] == i as u8));
        let mut small = [0u8; 8];
        let mut a = Aml::new(&mut small);
        assert!(a.package_length(|a| a.raw(&[1; 5])).is_err());
    }

    #[test]
    fn aml_names_and_integers() {
        let enc = |f: &dyn Fn(&mut Aml) -> AmlResult| {
            let mut buf = [0u8; 16];
            let mut a = Aml::new(&mut buf);
            f(&mut a).map(|()| a.pos).map(|n| buf[..n].to_vec())
        };
        assert_eq!(enc(&|a| a.name_string("_S5")).unwrap(), b"_S5_");
        assert_eq!(enc(&|a| a.name_string("\\_SB")).unwrap(), b"\\_SB_");
        assert!(enc(&|a| a.name_string("1ABC")).is_err());
        assert!(enc(&|a| a.name_string("ABCDE")).is_err());
        assert!(enc(&|a| a.name_string("ab")).is_err());
        assert!(enc(&|a| a.name_string("")).is_err());
        assert_eq!(enc(&|a| a.integer(0)).unwrap(), [0x00]);
        assert_eq!(enc(&|a| a.integer(1)).unwrap(), [0x01]);
        assert_eq!(enc(&|a| a.integer(5)).unwrap(), [0x0A, 5]);
        assert_eq!(enc(&|a| a.integer(0x3F8)).unwrap(), [0x0B, 0xF8, 0x03]);
        assert_eq!(enc(&|a| a.integer(0x1_0000)).unwrap(), [0x0C, 0, 0, 1, 0]);
        assert_eq!(
            enc(&|a| a.integer(1 << 32)).unwrap(),
            [0x0E, 0, 0, 0, 0, 1, 0, 0, 0]
        );
        assert!(enc(&|a| a.string("a\0b")).is_err());
    }

    #[test]
    fn eisa_ids() {
        assert_eq!(eisa_id("PNP0501"), Ok(0x0105_D041));
        assert_eq!(eisa_id("PNP0A03"), Ok(0x030A_D041));
        assert!(eisa_id("PNP050").is_err());
        assert!(eisa_id("pNP0501").is_err());
        assert!(eisa_id("PNP0a03").is_err());
        assert!(eisa_id("PNP0G03").is_err());
    }

    #[test]
    fn sleep_control_values() {
        let s5 = (S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN;
        assert_eq!(s5, 0x34);
        assert!(sleep_control_powers_off(s5));
        assert!(
            sleep_control_powers_off(s5 | WAK_STS | 0x03),
            "other bits ignored"
        );
        assert!(
            !sleep_control_powers_off(S5_SLEEP_TYPE << SLP_TYP_SHIFT),
            "no SLP_EN"
        );
        assert!(!sleep_control_powers_off(SLP_EN), "S0");
        assert!(
            !sleep_control_powers_off((3 << SLP_TYP_SHIFT) | SLP_EN),
            "S3"
        );
        assert!(!sleep_control_powers_off((7 << SLP_TYP_SHIFT) | SLP_EN));
        assert_eq!(
            (0..=255u8).filter(|&v| sleep_control_powers_off(v)).count(),
            16
        );
    }

    proptest::proptest! {
        #[test]
        fn any_vp_count_builds_valid_tables(
            vps in 1..=MAX_VPS,
            page in 0u64..(1 << 36),
            slot in 0u64..256,
            fill in proptest::prelude::any::<u8>(),
            extra in 0usize..64,
        ) {
            let base = (page << 12) + slot * 16;
            let p = Platform { vps };
            let need = size(&p).unwrap();
            let mut out = vec![fill; need + extra];
            let rsdp = build(&p, base, &mut out).unwrap();
            proptest::prop_assert!(out[need..].iter().all(|&b| b == fill), "wrote past size()");
            check(&out[..need], base, rsdp, vps);
            let mut clean = vec![0u8; need];
            build(&p, base, &mut clean).unwrap();
            proptest::prop_assert_eq!(&out[..need], &clean[..], "stale bytes left");
            proptest::prop_assert!(build(&p, base, &mut out[..need - 1]).is_err());
        }
    }

    // -----------------------------------------------------------------------
    // Disassembly by ACPICA's iasl

    /// A fresh directory for this test's files.
    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("guest_acpi-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// `iasl -d` of `bytes` written to `dir/file`: the .dsl text.
    fn disassemble(dir: &Path, file: &str, bytes: &[u8]) -> String {
        let path = dir.join(file);
        std::fs::write(&path, bytes).unwrap();
        let run = std::process::Command::new("iasl")
            .arg("-d")
            .arg(&path)
            .current_dir(dir)
            .output()
            .expect("run iasl");
        let dsl = path.with_extension("dsl");
        assert!(
            run.status.success() && dsl.exists(),
            "iasl -d {file}: {}\n{}{}",
            run.status,
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        let text = std::fs::read_to_string(dsl).unwrap();
        let log = String::from_utf8_lossy(&run.stdout) + String::from_utf8_lossy(&run.stderr);
        assert!(
            !text.contains("Incorrect checksum") && !log.contains("Warning"),
            "iasl -d {file}:\n{log}\n{text}"
        );
        text
    }

    fn iasl_present() -> bool {
        match std::process::Command::new("iasl").arg("-v").output() {
            Ok(_) => true,
            Err(_) if std::env::var("XTASK_REQUIRE_IASL").as_deref() == Ok("1") => {
                panic!("iasl not found: apt-get install acpica-tools")
            }
            Err(_) => {
                std::eprintln!("note: iasl not found, guest ACPI disassembly check skipped");
                false
            }
        }
    }

    /// The values iasl prints for `name` in a data table's disassembly, from
    /// lines `[Offset Offset Size]  Name : Value` and decoded flag lines
    /// `  Name : Value`.
    fn fields<'t>(dsl: &'t str, name: &str) -> Vec<&'t str> {
        dsl.lines()
            .filter_map(|l| {
                let (n, v) = l.split_once(" : ")?;
                let n = n.split_once(']').map_or(n, |(_, n)| n);
                (n.trim() == name).then(|| v.trim())
            })
            .collect()
    }

    /// The first value iasl prints for `name`.
    fn field<'t>(dsl: &'t str, name: &str) -> &'t str {
        fields(dsl, name)
            .first()
            .copied()
            .unwrap_or_else(|| panic!("no {name:?} in\n{dsl}"))
    }

    #[test]
    fn iasl_disassembles_the_tables() {
        if !iasl_present() {
            return;
        }
        let vps = 4;
        let (out, rsdp) = built(vps, BASE);
        // iasl cannot disassemble a lone RSDP (it has no table header);
        // `check` verifies it.
        let [_, xsdt, fadt, madt, dsdt] = check(&out, BASE, rsdp, vps);
        let dir = temp_dir("iasl");
        let x_dsdt = u64_at(&fadt, 140);
        let entries = [u64_at(&xsdt, 36), u64_at(&xsdt, 44)];

        let dsl = disassemble(&dir, "dsdt.dat", &dsdt);
        for want in [
            "DefinitionBlock (\"\", \"DSDT\", 2, \"HVRUST\", \"HVRUSTVM\", 0x00000001)",
            "Scope (\\_SB)",
            "Device (VMBS)",
            "Name (_HID, \"VMBUS\")",
            "Name (_UID, Zero)",
            "Device (COM1)",
            "Name (_HID, EisaId (\"PNP0501\")",
            "IO (Decode16,",
            "0x03F8,             // Range Minimum",
            "0x03F8,             // Range Maximum",
            "0x08,               // Length",
            "IRQNoFlags ()",
            "{4}",
            "Name (\\_S5, Package (0x02)",
        ] {
            assert!(dsl.contains(want), "DSDT: no {want:?} in\n{dsl}");
        }
        // iasl shows an empty ResourceTemplate (End Tag only) as the Buffer it is.
        assert!(dsl.contains("Name (_CRS, Buffer (0x02)"), "{dsl}");
        assert!(dsl.contains("0x79, 0x00"), "{dsl}");

        let dsl = disassemble(&dir, "facp.dat", &fadt);
        assert!(field(&dsl, "Signature").starts_with("\"FACP\""));
        assert_eq!(field(&dsl, "Table Length"), "00000114");
        assert_eq!(field(&dsl, "Revision"), "06");
        assert_eq!(field(&dsl, "FADT Minor Revision"), "05");
        assert_eq!(field(&dsl, "Hardware Reduced (V5)"), "1");
        assert_eq!(field(&dsl, "Reset Register Supported (V2)"), "1");
        assert_eq!(field(&dsl, "Legacy Devices Supported (V2)"), "0");
        assert_eq!(field(&dsl, "8042 Present on ports 60/64 (V2)"), "0");
        assert_eq!(field(&dsl, "VGA Not Present (V4)"), "1");
        assert_eq!(field(&dsl, "CMOS RTC Not Present (V5)"), "0");
        assert_eq!(field(&dsl, "SCI Interrupt"), "0000");
        assert_eq!(field(&dsl, "PM Timer Block Address"), "00000000");
        assert_eq!(
            fields(&dsl, "FACS Address"),
            ["00000000", "0000000000000000"]
        );
        assert_eq!(
            fields(&dsl, "DSDT Address"),
            [format!("{x_dsdt:08X}"), format!("{x_dsdt:016X}")]
        );
        assert_eq!(field(&dsl, "Value to cause reset"), "06");
        assert_eq!(field(&dsl, "Hypervisor ID"), "2020545355525648"); // "HVRUST  "
        let io = |port: u16| format!("{port:016X}");
        let addresses = fields(&dsl, "Address");
        for port in [RESET_PORT, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT] {
            assert!(
                addresses.contains(&io(port).as_str()),
                "{port:#x} in\n{dsl}"
            );
        }
        assert_eq!(
            fields(&dsl, "Space ID")
                .iter()
                .filter(|s| **s == "01 [SystemIO]")
                .count(),
            3
        );

        let dsl = disassemble(&dir, "apic.dat", &madt);
        assert!(field(&dsl, "Signature").starts_with("\"APIC\""));
        assert_eq!(field(&dsl, "Local Apic Address"), "FEE00000");
        assert_eq!(field(&dsl, "PC-AT Compatibility"), "0");
        assert_eq!(
            fields(&dsl, "Subtable Type"),
            [
                "00 [Processor Local APIC]",
                "00 [Processor Local APIC]",
                "00 [Processor Local APIC]",
                "00 [Processor Local APIC]",
                "01 [I/O APIC]"
            ]
        );
        assert_eq!(field(&dsl, "Address"), "FEC00000");
        assert_eq!(field(&dsl, "Interrupt"), "00000000");
        assert_eq!(fields(&dsl, "Processor ID"), ["00", "01", "02", "03"]);
        assert_eq!(fields(&dsl, "Local Apic ID"), ["00", "01", "02", "03"]);
        assert_eq!(fields(&dsl, "Processor Enabled"), ["1"; 4]);

        let dsl = disassemble(&dir, "xsdt.dat", &xsdt);
        assert_eq!(
            [
                field(&dsl, "ACPI Table Address   0"),
                field(&dsl, "ACPI Table Address   1")
            ],
            entries.map(|e| format!("{e:016X}"))
        );

        let _ = std::fs::remove_dir_all(&dir);
    }
}
