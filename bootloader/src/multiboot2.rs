//! Writing the Multiboot2 boot information structure (Multiboot2
//! Specification 2.0, section 3.6) that the hypervisor reads.
use alloc::string::String;
use uefi::boot::MemoryType;

pub const BOOT_MAGIC: u32 = 0x36D7_6289;

pub struct Module {
    pub start: u64,
    pub end: u64,
    pub name: String,
}

/// The Multiboot2 memory type for a UEFI memory type: only memory that is free
/// once boot services are gone is "available"; our own allocations (loader
/// code and data: the hypervisor, modules, this structure) stay reserved.
pub fn memory_type(ty: MemoryType) -> u32 {
    match ty {
        MemoryType::CONVENTIONAL
        | MemoryType::BOOT_SERVICES_CODE
        | MemoryType::BOOT_SERVICES_DATA => 1,
        MemoryType::ACPI_RECLAIM => 3,
        MemoryType::ACPI_NON_VOLATILE => 4,
        MemoryType::UNUSABLE => 5,
        _ => 2,
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        // Truncation would corrupt the structure; the buffer is sized far above
        // any real memory map, and `build` checks the end tag fits.
        let end = (self.at + b.len()).min(self.buf.len());
        let n = end - self.at;
        self.buf[self.at..end].copy_from_slice(&b[..n]);
        self.at = end;
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn align8(&mut self) {
        while !self.at.is_multiple_of(8) && self.at < self.buf.len() {
            self.bytes(&[0]);
        }
    }
    /// Starts a tag; returns where its size field is.
    fn begin(&mut self, kind: u32) -> usize {
        self.align8();
        self.u32(kind);
        let size_at = self.at;
        self.u32(0);
        size_at
    }
    fn end(&mut self, size_at: usize) {
        let size = (self.at - (size_at - 4)) as u32;
        self.buf[size_at..size_at + 4].copy_from_slice(&size.to_le_bytes());
    }
    fn string_tag(&mut self, kind: u32, s: &str) {
        let t = self.begin(kind);
        self.bytes(s.as_bytes());
        self.bytes(&[0]);
        self.end(t);
    }
}

pub fn build(
    buf: &mut [u8],
    cmdline: &str,
    loader: &str,
    modules: &[Module],
    regions: impl Iterator<Item = (u64, u64, u32)>,
    rsdp: Option<(u32, &[u8])>,
) {
    let mut w = Writer { buf, at: 8 };
    w.string_tag(1, cmdline);
    w.string_tag(2, loader);
    for m in modules {
        let t = w.begin(3);
        w.u32(m.start as u32);
        w.u32(m.end as u32);
        w.bytes(m.name.as_bytes());
        w.bytes(&[0]);
        w.end(t);
    }
    let t = w.begin(6);
    w.u32(24);
    w.u32(0);
    // Adjacent regions of one type become one entry: firmware maps are long.
    let mut pending: Option<(u64, u64, u32)> = None;
    for (start, len, kind) in regions {
        match pending {
            Some((s, l, k)) if k == kind && s + l == start => pending = Some((s, l + len, k)),
            _ => {
                if let Some((s, l, k)) = pending {
                    w.u64(s);
                    w.u64(l);
                    w.u32(k);
                    w.u32(0);
                }
                pending = Some((start, len, kind));
            }
        }
    }
    if let Some((s, l, k)) = pending {
        w.u64(s);
        w.u64(l);
        w.u32(k);
        w.u32(0);
    }
    w.end(t);
    if let Some((kind, bytes)) = rsdp {
        let t = w.begin(kind);
        w.bytes(bytes);
        w.end(t);
    }
    let t = w.begin(0);
    w.end(t);
    let total = w.at as u32;
    w.buf[..4].copy_from_slice(&total.to_le_bytes());
    w.buf[4..8].copy_from_slice(&0u32.to_le_bytes());
}
