//! The boot information every boot path ends in: memory map, ACPI root, command
//! line and modules.
//!
//! Three loaders reach the hypervisor: QEMU `-kernel` (Multiboot 1), GRUB
//! (Multiboot 2) and our UEFI loader (which hands over a Multiboot 2 structure,
//! so one parser serves both). The structures are read by copying through
//! [`PhysRead`], never by holding references into loader memory, so the parser
//! is safe code and unit-tested on the host with fabricated structures.
//!
//! Layouts: Multiboot Specification 0.6.96 (section 3.3) and Multiboot2
//! Specification 2.0 (section 3.6).

/// Magic in EAX when a Multiboot 1 loader enters the kernel.
pub const MULTIBOOT1_BOOT_MAGIC: u32 = 0x2BAD_B002;
/// Magic in EAX when a Multiboot 2 loader enters the kernel.
pub const MULTIBOOT2_BOOT_MAGIC: u32 = 0x36D7_6289;

pub const MAX_REGIONS: usize = 160;
pub const MAX_MODULES: usize = 32;
pub const MAX_CMDLINE: usize = 512;
pub const MAX_NAME: usize = 96;
/// A Multiboot 2 information structure larger than this is rejected as corrupt.
const MAX_MB2_INFO: u32 = 1 << 20;

/// Reads physical memory by copy. `false` when the range cannot be read.
pub trait PhysRead {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    Usable,
    Reserved,
    AcpiReclaimable,
    AcpiNvs,
    Defective,
}

impl RegionKind {
    /// The Multiboot 1 and 2 memory-map type codes are the same.
    fn from_multiboot(kind: u32) -> Self {
        match kind {
            1 => Self::Usable,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Defective,
            _ => Self::Reserved,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub start: u64,
    /// Exclusive.
    pub end: u64,
    pub kind: RegionKind,
}

/// A short string kept inline (no heap exists when boot information is read).
#[derive(Clone, Copy)]
pub struct InlineStr<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> InlineStr<N> {
    pub const fn new() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
        }
    }

    /// Keeps the longest prefix that fits and is valid UTF-8.
    pub fn from_bytes(src: &[u8]) -> Self {
        let mut s = Self::new();
        let n = src.len().min(N);
        let valid = match core::str::from_utf8(&src[..n]) {
            Ok(v) => v.len(),
            Err(e) => e.valid_up_to(),
        };
        s.bytes[..valid].copy_from_slice(&src[..valid]);
        s.len = valid;
        s
    }

    pub fn as_str(&self) -> &str {
        // Only valid UTF-8 prefixes are stored (see `from_bytes`).
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> Default for InlineStr<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Debug for InlineStr<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Module {
    pub start: u64,
    /// Exclusive.
    pub end: u64,
    /// The loader's string for the module: its path and arguments.
    pub name: InlineStr<MAX_NAME>,
}

/// Where the ACPI tables start: the RSDT (revision 0) or the XSDT (revision ≥ 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiRoot {
    pub revision: u8,
    pub table_address: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Multiboot1,
    Multiboot2,
}

#[derive(Debug, PartialEq, Eq)]
pub enum BootInfoError {
    UnknownMagic(u32),
    Unreadable(u64),
    Corrupt(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    pub protocol: Protocol,
    pub loader_name: InlineStr<MAX_NAME>,
    pub cmdline: InlineStr<MAX_CMDLINE>,
    regions: [MemoryRegion; MAX_REGIONS],
    region_count: usize,
    /// Firmware regions beyond `MAX_REGIONS`: they are dropped, which loses
    /// usable memory at worst, never hands out reserved memory, because a page is
    /// only used when a Usable region names it and no other region does.
    pub regions_dropped: usize,
    modules: [Module; MAX_MODULES],
    module_count: usize,
    pub acpi: Option<AcpiRoot>,
}

impl BootInfo {
    pub const fn empty(protocol: Protocol) -> Self {
        const NO_REGION: MemoryRegion = MemoryRegion {
            start: 0,
            end: 0,
            kind: RegionKind::Reserved,
        };
        const NO_MODULE: Module = Module {
            start: 0,
            end: 0,
            name: InlineStr::new(),
        };
        Self {
            protocol,
            loader_name: InlineStr::new(),
            cmdline: InlineStr::new(),
            regions: [NO_REGION; MAX_REGIONS],
            region_count: 0,
            regions_dropped: 0,
            modules: [NO_MODULE; MAX_MODULES],
            module_count: 0,
            acpi: None,
        }
    }

    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions[..self.region_count]
    }

    pub fn modules(&self) -> &[Module] {
        &self.modules[..self.module_count]
    }

    /// Bytes of memory the firmware calls usable (saturating: a corrupt map
    /// may name more than 2^64 bytes).
    pub fn usable_bytes(&self) -> u64 {
        self.regions()
            .iter()
            .filter(|r| r.kind == RegionKind::Usable)
            .fold(0u64, |sum, r| sum.saturating_add(r.end - r.start))
    }

    /// Where identity maps of this machine end: all RAM and at least the
    /// 32-bit space (APIC, I/O APIC, firmware, PCI holes), in whole GiB. A
    /// usable region reaching the last GiB of the address space (a corrupt
    /// map) gives the highest GiB boundary, not a wrapped-around small one.
    pub fn identity_top(&self) -> u64 {
        const GIB: u64 = 1 << 30;
        self.usable_top()
            .max(4 * GIB)
            .checked_add(GIB - 1)
            .map_or(!(GIB - 1), |t| t & !(GIB - 1))
    }

    /// The highest address any usable region reaches.
    pub fn usable_top(&self) -> u64 {
        self.regions()
            .iter()
            .filter(|r| r.kind == RegionKind::Usable)
            .map(|r| r.end)
            .max()
            .unwrap_or(0)
    }

    pub fn push_region(&mut self, start: u64, len: u64, kind: RegionKind) {
        let end = start.saturating_add(len);
        if end <= start {
            return;
        }
        if self.region_count == MAX_REGIONS {
            self.regions_dropped += 1;
            return;
        }
        self.regions[self.region_count] = MemoryRegion { start, end, kind };
        self.region_count += 1;
    }

    fn push_module(&mut self, start: u64, end: u64, name: &[u8]) -> Result<(), BootInfoError> {
        if end < start {
            return Err(BootInfoError::Corrupt("module ends before it starts"));
        }
        if self.module_count == MAX_MODULES {
            return Err(BootInfoError::Corrupt("too many modules"));
        }
        self.modules[self.module_count] = Module {
            start,
            end,
            name: InlineStr::from_bytes(name),
        };
        self.module_count += 1;
        Ok(())
    }
}

fn read_u32(mem: &dyn PhysRead, addr: u64) -> Result<u32, BootInfoError> {
    let mut b = [0u8; 4];
    if mem.read(addr, &mut b) {
        Ok(u32::from_le_bytes(b))
    } else {
        Err(BootInfoError::Unreadable(addr))
    }
}

fn read_u64(mem: &dyn PhysRead, addr: u64) -> Result<u64, BootInfoError> {
    let mut b = [0u8; 8];
    if mem.read(addr, &mut b) {
        Ok(u64::from_le_bytes(b))
    } else {
        Err(BootInfoError::Unreadable(addr))
    }
}

/// Copies a NUL-terminated string of at most `buf.len()` bytes; returns its length.
fn read_cstr(mem: &dyn PhysRead, addr: u64, buf: &mut [u8]) -> Result<usize, BootInfoError> {
    for (i, slot) in buf.iter_mut().enumerate() {
        let mut b = [0u8];
        if !mem.read(addr + i as u64, &mut b) {
            return Err(BootInfoError::Unreadable(addr + i as u64));
        }
        if b[0] == 0 {
            return Ok(i);
        }
        *slot = b[0];
    }
    Ok(buf.len())
}

/// Parses the structure a loader left in EBX, choosing the format by the magic in EAX.
pub fn parse(magic: u32, info: u64, mem: &dyn PhysRead) -> Result<BootInfo, BootInfoError> {
    match magic {
        MULTIBOOT1_BOOT_MAGIC => parse_multiboot1(info, mem),
        MULTIBOOT2_BOOT_MAGIC => parse_multiboot2(info, mem),
        other => Err(BootInfoError::UnknownMagic(other)),
    }
}

fn parse_multiboot1(info: u64, mem: &dyn PhysRead) -> Result<BootInfo, BootInfoError> {
    let mut bi = BootInfo::empty(Protocol::Multiboot1);
    let flags = read_u32(mem, info)?;
    let mut buf = [0u8; MAX_CMDLINE];

    if flags & (1 << 2) != 0 {
        let n = read_cstr(mem, read_u32(mem, info + 16)? as u64, &mut buf)?;
        bi.cmdline = InlineStr::from_bytes(&buf[..n]);
    }
    if flags & (1 << 9) != 0 {
        let n = read_cstr(mem, read_u32(mem, info + 64)? as u64, &mut buf[..MAX_NAME])?;
        bi.loader_name = InlineStr::from_bytes(&buf[..n]);
    }
    if flags & (1 << 3) != 0 {
        let count = read_u32(mem, info + 20)?;
        let base = read_u32(mem, info + 24)? as u64;
        if count as usize > MAX_MODULES {
            return Err(BootInfoError::Corrupt("too many modules"));
        }
        for i in 0..count as u64 {
            let entry = base + i * 16;
            let start = read_u32(mem, entry)? as u64;
            let end = read_u32(mem, entry + 4)? as u64;
            let n = read_cstr(mem, read_u32(mem, entry + 8)? as u64, &mut buf[..MAX_NAME])?;
            bi.push_module(start, end, &buf[..n])?;
        }
    }
    if flags & (1 << 6) == 0 {
        return Err(BootInfoError::Corrupt("no memory map"));
    }
    let length = read_u32(mem, info + 44)? as u64;
    let base = read_u32(mem, info + 48)? as u64;
    let mut off = 0u64;
    // Each entry is preceded by its own size (which excludes the size field).
    while off + 24 <= length {
        let size = read_u32(mem, base + off)? as u64;
        if size < 20 {
            return Err(BootInfoError::Corrupt("memory map entry too small"));
        }
        let start = read_u64(mem, base + off + 4)?;
        let len = read_u64(mem, base + off + 12)?;
        let kind = read_u32(mem, base + off + 20)?;
        bi.push_region(start, len, RegionKind::from_multiboot(kind));
        off += size + 4;
    }
    Ok(bi)
}

fn parse_multiboot2(info: u64, mem: &dyn PhysRead) -> Result<BootInfo, BootInfoError> {
    let mut bi = BootInfo::empty(Protocol::Multiboot2);
    let total = read_u32(mem, info)?;
    if !(16..=MAX_MB2_INFO).contains(&total) {
        return Err(BootInfoError::Corrupt("Multiboot2 information size"));
    }
    let end = info + total as u64;
    let mut tag = info + 8;
    let mut saw_end = false;
    let mut saw_map = false;
    let mut buf = [0u8; MAX_CMDLINE];
    while tag + 8 <= end {
        let kind = read_u32(mem, tag)?;
        let size = read_u32(mem, tag + 4)? as u64;
        if size < 8 || tag + size > end {
            return Err(BootInfoError::Corrupt("Multiboot2 tag size"));
        }
        // Strings end at the tag's end even when the NUL is missing.
        let text = |buf: &mut [u8], at: u64| -> Result<usize, BootInfoError> {
            let room = (tag + size).saturating_sub(at) as usize;
            let lim = room.min(buf.len());
            read_cstr(mem, at, &mut buf[..lim])
        };
        match kind {
            0 => {
                saw_end = true;
                break;
            }
            1 => {
                let n = text(&mut buf, tag + 8)?;
                bi.cmdline = InlineStr::from_bytes(&buf[..n]);
            }
            2 => {
                let n = text(&mut buf[..MAX_NAME], tag + 8)?;
                bi.loader_name = InlineStr::from_bytes(&buf[..n]);
            }
            3 => {
                if size < 16 {
                    return Err(BootInfoError::Corrupt("module tag size"));
                }
                let start = read_u32(mem, tag + 8)? as u64;
                let mod_end = read_u32(mem, tag + 12)? as u64;
                let n = text(&mut buf[..MAX_NAME], tag + 16)?;
                bi.push_module(start, mod_end, &buf[..n])?;
            }
            6 => {
                if size < 16 {
                    return Err(BootInfoError::Corrupt("memory map tag size"));
                }
                let entry_size = read_u32(mem, tag + 8)? as u64;
                if entry_size < 24 {
                    return Err(BootInfoError::Corrupt("memory map entry size"));
                }
                let mut e = tag + 16;
                while e + entry_size <= tag + size {
                    let start = read_u64(mem, e)?;
                    let len = read_u64(mem, e + 8)?;
                    let kind = read_u32(mem, e + 16)?;
                    bi.push_region(start, len, RegionKind::from_multiboot(kind));
                    e += entry_size;
                }
                saw_map = true;
            }
            // ACPI 1.0 RSDP copy (14) or ACPI 2.0+ RSDP copy (15); prefer the newer.
            14 | 15 => {
                let n = (size - 8).min(36) as usize;
                let mut rsdp = [0u8; 36];
                if !mem.read(tag + 8, &mut rsdp[..n]) {
                    return Err(BootInfoError::Unreadable(tag + 8));
                }
                if let Some(root) = parse_rsdp(&rsdp[..n]) {
                    if bi.acpi.is_none() || kind == 15 {
                        bi.acpi = Some(root);
                    }
                }
            }
            _ => {}
        }
        tag += (size + 7) & !7;
    }
    if !saw_end {
        return Err(BootInfoError::Corrupt("Multiboot2 end tag missing"));
    }
    if !saw_map {
        return Err(BootInfoError::Corrupt("no memory map"));
    }
    Ok(bi)
}

/// Validates an ACPI RSDP (ACPI 6.5 section 5.2.5.3) and says where the tables are.
pub fn parse_rsdp(bytes: &[u8]) -> Option<AcpiRoot> {
    if bytes.len() < 20 || &bytes[..8] != b"RSD PTR " {
        return None;
    }
    let sum = |b: &[u8]| b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
    if sum(&bytes[..20]) != 0 {
        return None;
    }
    let revision = bytes[15];
    let rsdt = u32::from_le_bytes(bytes[16..20].try_into().ok()?) as u64;
    if revision >= 2 && bytes.len() >= 36 {
        let len = u32::from_le_bytes(bytes[20..24].try_into().ok()?) as usize;
        let xsdt = u64::from_le_bytes(bytes[24..32].try_into().ok()?);
        if len >= 36 && sum(&bytes[..36]) == 0 && xsdt != 0 {
            return Some(AcpiRoot {
                revision,
                table_address: xsdt,
            });
        }
    }
    (rsdt != 0).then_some(AcpiRoot {
        revision: 0,
        table_address: rsdt,
    })
}

/// The RSDP at `addr`, validated by [`parse_rsdp`]: its 20 ACPI 1.0 bytes,
/// or all 36 when its revision is 2 or more and they can be read (a
/// revision 0 RSDP may end right before memory the reader must not touch).
pub fn read_rsdp(mem: &dyn PhysRead, addr: u64) -> Option<AcpiRoot> {
    let mut rsdp = [0u8; 36];
    if !mem.read(addr, &mut rsdp[..20]) {
        return None;
    }
    if rsdp[15] >= 2 && mem.read(addr, &mut rsdp) {
        return parse_rsdp(&rsdp);
    }
    parse_rsdp(&rsdp[..20])
}

/// Looks for the RSDP where BIOS machines keep it (ACPI 6.5 section
/// 5.2.5.1): the first KiB of the EBDA (its segment is the u16 at 0x40E),
/// then 0xE0000..0x100000, on 16-byte boundaries; an RSDP whose checksum
/// fails is passed over. When the EBDA pointer cannot be read (a reader that
/// leaves page 0 unmapped) or is 0, only the BIOS area is searched. Returns
/// the RSDP's address and the tables it names. Used by the hypervisor (when
/// no loader reported ACPI) and by the root partition (when the hypervisor
/// handed it no RSDP).
pub fn find_rsdp_bios(mem: &dyn PhysRead) -> Option<(u64, AcpiRoot)> {
    let mut segment = [0u8; 2];
    let ebda = if mem.read(0x40E, &mut segment) {
        u64::from(u16::from_le_bytes(segment)) << 4
    } else {
        0
    };
    let areas = [(ebda, ebda + 1024), (0xE0000, 0x10_0000)];
    for (start, end) in areas.into_iter().filter(|&(start, _)| start != 0) {
        for addr in (start..end.saturating_sub(19)).step_by(16) {
            let mut signature = [0u8; 8];
            if mem.read(addr, &mut signature) && &signature == b"RSD PTR " {
                if let Some(root) = read_rsdp(mem, addr) {
                    return Some((addr, root));
                }
            }
        }
    }
    None
}

/// An RSDP naming `root`'s tables, checksummed (ACPI 6.5 section 5.2.5.3):
/// what the root partition gets, whichever way the loader reported ACPI.
pub fn make_rsdp(root: AcpiRoot) -> [u8; 36] {
    let mut r = [0u8; 36];
    r[..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(b"HVROOT");
    if root.revision >= 2 {
        r[15] = 2;
        r[20..24].copy_from_slice(&36u32.to_le_bytes());
        r[24..32].copy_from_slice(&root.table_address.to_le_bytes());
    } else {
        r[16..20].copy_from_slice(&(root.table_address as u32).to_le_bytes());
    }
    let sum = |b: &[u8]| b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
    r[8] = 0u8.wrapping_sub(sum(&r[..20]));
    if root.revision >= 2 {
        r[32] = 0u8.wrapping_sub(sum(&r[..36]));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Fabricated physical memory: a byte vector starting at `base`.
    struct FakeMem {
        base: u64,
        bytes: Vec<u8>,
    }

    impl FakeMem {
        fn new(base: u64, size: usize) -> Self {
            Self {
                base,
                bytes: std::vec![0; size],
            }
        }
        fn put(&mut self, addr: u64, data: &[u8]) {
            let o = (addr - self.base) as usize;
            self.bytes[o..o + data.len()].copy_from_slice(data);
        }
        fn put32(&mut self, addr: u64, v: u32) {
            self.put(addr, &v.to_le_bytes());
        }
        fn put64(&mut self, addr: u64, v: u64) {
            self.put(addr, &v.to_le_bytes());
        }
    }

    impl PhysRead for FakeMem {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            let Some(o) = addr.checked_sub(self.base) else {
                return false;
            };
            let o = o as usize;
            match self.bytes.get(o..o + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
    }

    fn rsdp_v2(xsdt: u64) -> [u8; 36] {
        let mut r = [0u8; 36];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[15] = 2;
        r[16..20].copy_from_slice(&0x1234u32.to_le_bytes());
        r[20..24].copy_from_slice(&36u32.to_le_bytes());
        r[24..32].copy_from_slice(&xsdt.to_le_bytes());
        let s1 = r[..20].iter().fold(0u8, |a, x| a.wrapping_add(*x));
        r[8] = 0u8.wrapping_sub(s1);
        let s2 = r[..36].iter().fold(0u8, |a, x| a.wrapping_add(*x));
        r[32] = 0u8.wrapping_sub(s2);
        r
    }

    #[test]
    fn made_rsdps_parse_back() {
        for root in [
            AcpiRoot {
                revision: 2,
                table_address: 0x7FE_1234,
            },
            AcpiRoot {
                revision: 0,
                table_address: 0xF_5000,
            },
        ] {
            assert_eq!(parse_rsdp(&make_rsdp(root)), Some(root));
        }
    }

    #[test]
    fn rsdp_checksums_and_revisions() {
        let r = rsdp_v2(0xdead_0000);
        assert_eq!(
            parse_rsdp(&r),
            Some(AcpiRoot {
                revision: 2,
                table_address: 0xdead_0000
            })
        );
        // Only the ACPI 1.0 part: falls back to the RSDT.
        assert_eq!(
            parse_rsdp(&r[..20]),
            Some(AcpiRoot {
                revision: 0,
                table_address: 0x1234
            })
        );
        let mut bad = r;
        bad[9] ^= 1;
        assert_eq!(parse_rsdp(&bad), None);
        assert_eq!(parse_rsdp(b"RSD PTX 0123456789ab"), None);
    }

    fn rsdp_v0(rsdt: u32) -> [u8; 20] {
        let mut r = [0u8; 20];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[16..20].copy_from_slice(&rsdt.to_le_bytes());
        r[8] = 0u8.wrapping_sub(r.iter().fold(0u8, |a, x| a.wrapping_add(*x)));
        r
    }

    /// The first MiB of a BIOS machine, its EBDA at 0x9FC00.
    fn low_memory() -> FakeMem {
        let mut m = FakeMem::new(0, 0x10_0000);
        m.put(0x40E, &(0x9FC00u32 >> 4).to_le_bytes()[..2]);
        m
    }

    /// Leaves page 0 unmapped, as the root partition's identity map does.
    struct NoPageZero(FakeMem);

    impl PhysRead for NoPageZero {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            addr >= 4096 && self.0.read(addr, buf)
        }
    }

    #[test]
    fn rsdp_search_in_the_ebda_and_the_bios_area() {
        let xsdt = AcpiRoot {
            revision: 2,
            table_address: 0x7FE_0000,
        };
        let rsdt = AcpiRoot {
            revision: 0,
            table_address: 0x7FD_0000,
        };
        // In the EBDA's first KiB: found before one in the BIOS area.
        let mut m = low_memory();
        m.put(0x9FC00 + 0x30, &rsdp_v2(0x7FE_0000));
        m.put(0xF5A40, &rsdp_v0(0x7FD_0000));
        assert_eq!(find_rsdp_bios(&m), Some((0x9FC30, xsdt)));
        // Past the EBDA's first KiB it is not looked for there.
        let mut m = low_memory();
        m.put(0x9FC00 + 1024, &rsdp_v2(0x7FE_0000));
        m.put(0xF5A40, &rsdp_v0(0x7FD_0000));
        assert_eq!(find_rsdp_bios(&m), Some((0xF5A40, rsdt)));
        // A bad checksum is passed over; a signature off the 16-byte grid is
        // not seen.
        let mut m = low_memory();
        let mut bad = rsdp_v0(0x1000);
        bad[9] ^= 1;
        m.put(0xE0000, &bad);
        m.put(0xE0018, &rsdp_v0(0x2000));
        m.put(0xFFFE0, &rsdp_v0(0x7FD_0000));
        assert_eq!(find_rsdp_bios(&m), Some((0xFFFE0, rsdt)));
        // A revision 2 RSDP with a bad extended checksum falls back to its RSDT.
        let mut m = low_memory();
        let mut v2 = rsdp_v2(0x7FE_0000);
        v2[32] ^= 1;
        m.put(0xE4000, &v2);
        assert_eq!(
            find_rsdp_bios(&m),
            Some((
                0xE4000,
                AcpiRoot {
                    revision: 0,
                    table_address: 0x1234
                }
            ))
        );
        // Nothing there.
        assert_eq!(find_rsdp_bios(&low_memory()), None);
        assert_eq!(find_rsdp_bios(&FakeMem::new(0, 0x1000)), None);
    }

    #[test]
    fn rsdp_search_without_page_zero_reads_the_bios_area_only() {
        let mut m = low_memory();
        m.put(0x9FC00, &rsdp_v2(0x7FE_0000));
        assert_eq!(find_rsdp_bios(&m).map(|(a, _)| a), Some(0x9FC00));
        assert_eq!(find_rsdp_bios(&NoPageZero(m)), None, "the EBDA is unknown");
        let mut m = low_memory();
        m.put(0x9FC00, &rsdp_v2(0x7FE_0000));
        m.put(0xE0010, &rsdp_v0(0x7FD_0000));
        assert_eq!(
            find_rsdp_bios(&NoPageZero(m)),
            Some((
                0xE0010,
                AcpiRoot {
                    revision: 0,
                    table_address: 0x7FD_0000
                }
            ))
        );
    }

    #[test]
    fn read_rsdp_reads_what_the_revision_needs() {
        // A revision 0 RSDP in the last 20 readable bytes.
        let mut m = FakeMem::new(0x1000, 0x40);
        m.put(0x102C, &rsdp_v0(0x5000));
        assert_eq!(
            read_rsdp(&m, 0x102C),
            Some(AcpiRoot {
                revision: 0,
                table_address: 0x5000
            })
        );
        m.put(0x1000, &rsdp_v2(0x9000));
        assert_eq!(read_rsdp(&m, 0x1000).map(|r| r.table_address), Some(0x9000));
        assert_eq!(read_rsdp(&m, 0x1010), None);
        assert_eq!(read_rsdp(&m, 0x2000), None, "unreadable");
    }

    fn multiboot1_fixture() -> FakeMem {
        let mut m = FakeMem::new(0x1000, 0x3000);
        let info = 0x1000;
        m.put32(info, (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9));
        m.put32(info + 16, 0x2000); // cmdline
        m.put(0x2000, b"log=debug poweroff\0");
        m.put32(info + 20, 1); // one module
        m.put32(info + 24, 0x2100);
        m.put32(0x2100, 0x40_0000);
        m.put32(0x2104, 0x40_1234);
        m.put32(0x2108, 0x2200);
        m.put(0x2200, b"/boot/root.elf arg\0");
        m.put32(info + 44, 48); // two map entries of 24 bytes
        m.put32(info + 48, 0x2300);
        m.put32(0x2300, 20);
        m.put64(0x2304, 0);
        m.put64(0x230c, 0x9fc00);
        m.put32(0x2314, 1);
        m.put32(0x2318, 20);
        m.put64(0x231c, 0x10_0000);
        m.put64(0x2324, 0x7ee_0000);
        m.put32(0x232c, 1);
        m.put32(info + 64, 0x2400);
        m.put(0x2400, b"qemu\0");
        m
    }

    #[test]
    fn multiboot1_everything() {
        let m = multiboot1_fixture();
        let bi = parse(MULTIBOOT1_BOOT_MAGIC, 0x1000, &m).unwrap();
        assert_eq!(bi.protocol, Protocol::Multiboot1);
        assert_eq!(bi.cmdline.as_str(), "log=debug poweroff");
        assert_eq!(bi.loader_name.as_str(), "qemu");
        assert_eq!(bi.modules().len(), 1);
        assert_eq!(bi.modules()[0].start, 0x40_0000);
        assert_eq!(bi.modules()[0].end, 0x40_1234);
        assert_eq!(bi.modules()[0].name.as_str(), "/boot/root.elf arg");
        assert_eq!(bi.regions().len(), 2);
        assert_eq!(bi.usable_bytes(), 0x9fc00 + 0x7ee_0000);
        assert_eq!(bi.usable_top(), 0x7fe_0000);
        assert_eq!(bi.identity_top(), 4 << 30);
    }

    /// Found by the boot_info fuzz target: a usable region ending in the last
    /// GiB of the address space wrapped the identity map's top around to 0, and
    /// usable regions of more than 2^64 bytes in all overflowed the sum.
    #[test]
    fn regions_at_the_top_of_the_address_space_do_not_wrap() {
        let mut bi = BootInfo::empty(Protocol::Multiboot2);
        bi.push_region(0x10_0000, 0x1000, RegionKind::Usable);
        bi.push_region(u64::MAX - 0x2000_0000, u64::MAX, RegionKind::Usable);
        bi.push_region(0, u64::MAX, RegionKind::Usable);
        assert_eq!(bi.usable_top(), u64::MAX);
        assert_eq!(bi.identity_top(), !((1 << 30) - 1));
        assert_eq!(bi.usable_bytes(), u64::MAX);
    }

    #[test]
    fn multiboot1_pointer_outside_memory_is_an_error() {
        let mut m = multiboot1_fixture();
        m.put32(0x1000 + 48, 0xffff_0000);
        assert_eq!(
            parse(MULTIBOOT1_BOOT_MAGIC, 0x1000, &m).unwrap_err(),
            BootInfoError::Unreadable(0xffff_0000)
        );
    }

    #[test]
    fn multiboot1_tiny_map_entry_is_corrupt_not_a_loop() {
        let mut m = multiboot1_fixture();
        m.put32(0x2300, 0);
        assert!(matches!(
            parse(MULTIBOOT1_BOOT_MAGIC, 0x1000, &m),
            Err(BootInfoError::Corrupt(_))
        ));
    }

    /// Builds a Multiboot2 information structure from (type, payload) tags.
    fn mb2(tags: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut v = std::vec![0u8; 8];
        for (kind, payload) in tags {
            v.extend_from_slice(&kind.to_le_bytes());
            v.extend_from_slice(&((payload.len() + 8) as u32).to_le_bytes());
            v.extend_from_slice(payload);
            while !v.len().is_multiple_of(8) {
                v.push(0);
            }
        }
        v.extend_from_slice(&[0, 0, 0, 0, 8, 0, 0, 0]);
        let total = v.len() as u32;
        v[..4].copy_from_slice(&total.to_le_bytes());
        v
    }

    fn mmap_payload(entries: &[(u64, u64, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&24u32.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        for (s, l, k) in entries {
            p.extend_from_slice(&s.to_le_bytes());
            p.extend_from_slice(&l.to_le_bytes());
            p.extend_from_slice(&k.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
        }
        p
    }

    #[test]
    fn multiboot2_everything() {
        let mut module = Vec::new();
        module.extend_from_slice(&0x50_0000u32.to_le_bytes());
        module.extend_from_slice(&0x50_2000u32.to_le_bytes());
        module.extend_from_slice(b"guest.elf\0");
        let info = mb2(&[
            (1, b"poweroff\0".to_vec()),
            (2, b"GRUB 2.06\0".to_vec()),
            (3, module),
            (
                6,
                mmap_payload(&[
                    (0, 0x9f000, 1),
                    (0xf0000, 0x10000, 2),
                    (0x10_0000, 0x1ff0_0000, 1),
                    (0x1fff_0000, 0x1_0000, 3),
                ]),
            ),
            (14, rsdp_v2(0)[..20].to_vec()),
            (15, rsdp_v2(0xbeef_0000).to_vec()),
        ]);
        let mut m = FakeMem::new(0x8000, 0x2000);
        m.put(0x8000, &info);
        let bi = parse(MULTIBOOT2_BOOT_MAGIC, 0x8000, &m).unwrap();
        assert_eq!(bi.protocol, Protocol::Multiboot2);
        assert_eq!(bi.cmdline.as_str(), "poweroff");
        assert_eq!(bi.loader_name.as_str(), "GRUB 2.06");
        assert_eq!(bi.modules()[0].name.as_str(), "guest.elf");
        assert_eq!(bi.regions().len(), 4);
        assert_eq!(bi.regions()[3].kind, RegionKind::AcpiReclaimable);
        assert_eq!(bi.usable_bytes(), 0x9f000 + 0x1ff0_0000);
        assert_eq!(
            bi.acpi,
            Some(AcpiRoot {
                revision: 2,
                table_address: 0xbeef_0000
            })
        );
    }

    #[test]
    fn multiboot2_string_without_nul_stops_at_tag_end() {
        let info = mb2(&[(1, b"abc".to_vec()), (6, mmap_payload(&[(0, 0x1000, 1)]))]);
        let mut m = FakeMem::new(0, 0x1000);
        m.put(0, &info);
        assert_eq!(
            parse(MULTIBOOT2_BOOT_MAGIC, 0, &m)
                .unwrap()
                .cmdline
                .as_str(),
            "abc"
        );
    }

    #[test]
    fn multiboot2_corrupt_inputs_are_errors() {
        let good = mb2(&[(6, mmap_payload(&[(0, 0x1000, 1)]))]);
        let run = |v: &[u8]| {
            let mut m = FakeMem::new(0, 0x1000);
            m.put(0, v);
            parse(MULTIBOOT2_BOOT_MAGIC, 0, &m)
        };
        assert!(run(&good).is_ok());
        // A tag claiming to run past the end.
        let mut v = good.clone();
        v[12..16].copy_from_slice(&0x4000u32.to_le_bytes());
        assert!(run(&v).is_err());
        // A zero-size tag would loop forever if accepted.
        let mut v = good.clone();
        v[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert!(run(&v).is_err());
        // Missing end tag.
        let mut v = good.clone();
        let n = v.len();
        v.truncate(n - 8);
        let total = v.len() as u32;
        v[..4].copy_from_slice(&total.to_le_bytes());
        assert!(run(&v).is_err());
        // No memory map.
        assert!(run(&mb2(&[(1, b"x\0".to_vec())])).is_err());
        assert_eq!(
            parse(0x1234, 0, &FakeMem::new(0, 16)).unwrap_err(),
            BootInfoError::UnknownMagic(0x1234)
        );
    }

    proptest::proptest! {
        /// Whatever bytes a loader leaves, parsing returns, and never panics.
        #[test]
        fn multiboot2_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), total in 0u32..600) {
            let mut m = FakeMem::new(0, 1024);
            m.put(0, &bytes);
            m.put32(0, total);
            let _ = parse(MULTIBOOT2_BOOT_MAGIC, 0, &m);
            let _ = parse(MULTIBOOT1_BOOT_MAGIC, 0, &m);
        }
    }
}
