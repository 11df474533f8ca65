//! VHDX disk images, fixed and dynamic, read and write, as Microsoft's
//! "[MS-VHDX]: Virtual Hard Disk v2 (VHDX) File Format" (v20160714) lays
//! them out: a file identifier, two headers (the current one has the
//! higher sequence number), two copies of the region table naming the
//! block allocation table (BAT) and the metadata region, a log, the
//! metadata items (block size, disk size, sector sizes, disk id), the BAT
//! (one 64-bit entry per payload block, a sector-bitmap entry after every
//! chunk of them) and the payload blocks, each at a 1 MiB-aligned offset.
//!
//! Everything read is checked before use (signatures, CRC-32C checksums,
//! region and item bounds, every BAT entry against the file); errors are
//! values. A file whose log holds entries to replay (a non-zero log GUID
//! in the current header) is refused with the reason: replaying is left to
//! `qemu-img check -r all` or Hyper-V. Differencing disks and 4096-byte
//! logical sectors are refused.
//!
//! A block is allocated in an order that survives a crash at any point:
//! the block, zeroed and then written, at the 1 MiB-aligned end of the
//! file; a flush; then its BAT entry. The entry is 8 bytes inside one
//! sector, written once, so it is old or new after a cut: the log, which
//! the format offers for metadata updates that span sectors, is not needed
//! for it (we depart from the specification's advice to log BAT updates,
//! not from its layout).

use crate::vhd::{Extent, Kind, Storage, StorageError};
use alloc::vec::Vec;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const SECTOR: u64 = 512;
/// The largest virtual disk the format allows: 64 TiB.
pub const MAX_SIZE: u64 = 64 << 40;
/// The block size of the images made here.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;

const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
const HEADER_SIGNATURE: u32 = 0x6461_6568; // "head"
const REGION_SIGNATURE: u32 = 0x6967_6572; // "regi"
const METADATA_SIGNATURE: &[u8; 8] = b"metadata";
const HEADER_1: u64 = 64 * KIB;
const HEADER_2: u64 = 128 * KIB;
const HEADER_BYTES: usize = 4096;
const REGION_1: u64 = 192 * KIB;
const REGION_2: u64 = 256 * KIB;
const REGION_BYTES: usize = 64 * 1024;
const MAX_ENTRIES: usize = 2047;

/// A GUID as the format stores it: Data1-3 little-endian, Data4 as is.
const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

const BAT_REGION: [u8; 16] = guid(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
const METADATA_REGION: [u8; 16] = guid(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
const FILE_PARAMETERS: [u8; 16] = guid(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
const VIRTUAL_DISK_SIZE: [u8; 16] = guid(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
const VIRTUAL_DISK_ID: [u8; 16] = guid(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
const LOGICAL_SECTOR_SIZE: [u8; 16] = guid(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
const PHYSICAL_SECTOR_SIZE: [u8; 16] = guid(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
const PARENT_LOCATOR: [u8; 16] = guid(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);

/// Payload block states (BAT entry bits 0-2).
const NOT_PRESENT: u64 = 0;
const UNDEFINED: u64 = 1;
const ZERO: u64 = 2;
const UNMAPPED: u64 = 3;
const FULLY_PRESENT: u64 = 6;
const PARTIALLY_PRESENT: u64 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhdxError {
    Storage,
    /// No "vhdxfile" signature: not a VHDX.
    NotVhdx,
    /// A damaged structure: which, and what is wrong.
    Damaged(&'static str),
    /// The log holds updates not yet applied.
    Dirty,
    /// A feature this code does not implement.
    Unsupported(&'static str),
    /// A size of zero, not whole sectors, or over 64 TiB.
    BadSize,
    OutOfRange,
    /// No memory for the block table.
    NoMemory,
}

impl From<StorageError> for VhdxError {
    fn from(_: StorageError) -> Self {
        VhdxError::Storage
    }
}

impl core::fmt::Display for VhdxError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VhdxError::Storage => write!(f, "the file could not be read or written"),
            VhdxError::NotVhdx => write!(f, "not a VHDX (no \"vhdxfile\" signature)"),
            VhdxError::Damaged(why) => write!(f, "a damaged VHDX ({why})"),
            VhdxError::Dirty => write!(
                f,
                "the VHDX was not closed cleanly: its log must be replayed first (qemu-img check -r all, or Hyper-V)"
            ),
            VhdxError::Unsupported(what) => write!(f, "{what} are not supported"),
            VhdxError::BadSize => write!(f, "a size of whole sectors, up to 64 TiB"),
            VhdxError::OutOfRange => write!(f, "past the end of the disk"),
            VhdxError::NoMemory => write!(f, "no memory for its block allocation table"),
        }
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as the format's
/// checksums use.
const CRC32C: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

pub fn crc32c(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |c, &b| {
        CRC32C[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// The checksum of a structure whose 4-byte checksum field is at offset 4.
fn checksum(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for (i, &b) in bytes.iter().enumerate() {
        let b = if (4..8).contains(&i) { 0 } else { b };
        c = CRC32C[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// A VHDX image on `S`.
pub struct Vhdx<S: Storage> {
    storage: S,
    size: u64,
    block_size: u32,
    chunk_ratio: u64,
    bat_offset: u64,
    /// The payload blocks' entries.
    bat: Vec<u64>,
    /// Where the next block goes (1 MiB-aligned, past every structure).
    next_free: u64,
    fixed: bool,
    creator: [u8; CREATOR],
    /// The current header and where it is (on the heap: the root's stack
    /// is small).
    header: alloc::boxed::Box<[u8; HEADER_BYTES]>,
    header_at: u64,
    /// The header's write GUIDs were changed since the image was opened
    /// (MS-VHDX 2.2.2: before the first write of each open).
    guids_changed: bool,
}

/// Characters of the creator shown.
const CREATOR: usize = 32;

/// Where the regions are.
struct Regions {
    bat: (u64, u64),
    metadata: (u64, u64),
}

fn read_regions<S: Storage>(s: &mut S, len: u64) -> Result<Regions, VhdxError> {
    let mut last = VhdxError::Damaged("no valid region table");
    for at in [REGION_1, REGION_2] {
        let mut t = alloc::vec![0u8; REGION_BYTES];
        s.read_at(at, &mut t)?;
        if le32(&t, 0) != REGION_SIGNATURE || le32(&t, 4) != checksum(&t) {
            continue;
        }
        let count = le32(&t, 8) as usize;
        if count > MAX_ENTRIES {
            last = VhdxError::Damaged("region table entry count");
            continue;
        }
        let (mut bat, mut metadata) = (None, None);
        let mut bad = None;
        for e in t[16..16 + count * 32].chunks_exact(32) {
            let offset = le64(e, 16);
            let length = u64::from(le32(e, 24));
            let required = le32(e, 28) & 1 != 0;
            let inside = offset >= MIB
                && offset.is_multiple_of(MIB)
                && length.is_multiple_of(MIB)
                && length > 0
                && offset.checked_add(length).is_some_and(|end| end <= len);
            if e[..16] == BAT_REGION {
                bat = Some((offset, length));
            } else if e[..16] == METADATA_REGION {
                metadata = Some((offset, length));
            } else if required {
                bad = Some(VhdxError::Unsupported(
                    "VHDX files with unknown required regions",
                ));
            }
            if (e[..16] == BAT_REGION || e[..16] == METADATA_REGION) && !inside {
                bad = Some(VhdxError::Damaged("a region outside the file"));
            }
        }
        if let Some(e) = bad {
            last = e;
            continue;
        }
        match (bat, metadata) {
            (Some(bat), Some(metadata)) => return Ok(Regions { bat, metadata }),
            _ => last = VhdxError::Damaged("no BAT or metadata region"),
        }
    }
    Err(last)
}

/// The metadata items this code reads.
struct Metadata {
    block_size: u32,
    /// LeaveBlocksAllocated: a fixed disk.
    fixed: bool,
    size: u64,
    logical_sector: u32,
}

fn read_metadata<S: Storage>(s: &mut S, (at, len): (u64, u64)) -> Result<Metadata, VhdxError> {
    let mut table = alloc::vec![0u8; REGION_BYTES];
    s.read_at(at, &mut table)?;
    if &table[..8] != METADATA_SIGNATURE {
        return Err(VhdxError::Damaged("no metadata table"));
    }
    let count = le16(&table, 10) as usize;
    if count > MAX_ENTRIES {
        return Err(VhdxError::Damaged("metadata entry count"));
    }
    let (mut params, mut size, mut logical) = (None, None, None);
    for e in table[32..32 + count * 32].chunks_exact(32) {
        let offset = u64::from(le32(e, 16));
        let length = u64::from(le32(e, 20));
        let required = le32(e, 24) & 4 != 0;
        if length == 0 {
            continue;
        }
        if offset < 64 * KIB || offset.checked_add(length).is_none_or(|end| end > len) {
            return Err(VhdxError::Damaged("a metadata item outside its region"));
        }
        let mut item = [0u8; 16];
        let read = |s: &mut S, item: &mut [u8; 16], n: u64| -> Result<(), VhdxError> {
            if length < n {
                return Err(VhdxError::Damaged("a metadata item too short"));
            }
            s.read_at(at + offset, &mut item[..n as usize])?;
            Ok(())
        };
        let id = &e[..16];
        if id == FILE_PARAMETERS {
            read(s, &mut item, 8)?;
            params = Some((le32(&item, 0), le32(&item, 4)));
        } else if id == VIRTUAL_DISK_SIZE {
            read(s, &mut item, 8)?;
            size = Some(le64(&item, 0));
        } else if id == LOGICAL_SECTOR_SIZE {
            read(s, &mut item, 4)?;
            logical = Some(le32(&item, 0));
        } else if id == PARENT_LOCATOR {
            return Err(VhdxError::Unsupported("differencing VHDX files"));
        } else if id == VIRTUAL_DISK_ID || id == PHYSICAL_SECTOR_SIZE {
        } else if required {
            return Err(VhdxError::Unsupported(
                "VHDX files with unknown required metadata",
            ));
        }
    }
    let (block_size, flags) = params.ok_or(VhdxError::Damaged("no file parameters"))?;
    if flags & 2 != 0 {
        return Err(VhdxError::Unsupported("differencing VHDX files"));
    }
    if !block_size.is_power_of_two() || !(MIB as u32..=256 * MIB as u32).contains(&block_size) {
        return Err(VhdxError::Damaged("block size"));
    }
    let logical_sector = logical.ok_or(VhdxError::Damaged("no logical sector size"))?;
    if logical_sector != 512 {
        return Err(if logical_sector == 4096 {
            VhdxError::Unsupported("VHDX files with 4096-byte logical sectors")
        } else {
            VhdxError::Damaged("logical sector size")
        });
    }
    let size = size.ok_or(VhdxError::Damaged("no virtual disk size"))?;
    if size == 0 || !size.is_multiple_of(SECTOR) || size > MAX_SIZE {
        return Err(VhdxError::Damaged("virtual disk size"));
    }
    Ok(Metadata {
        block_size,
        fixed: flags & 1 != 0,
        size,
        logical_sector,
    })
}

/// The current header: the valid one with the higher sequence number.
fn current_header<S: Storage>(s: &mut S) -> Result<(u64, [u8; HEADER_BYTES]), VhdxError> {
    let mut best: Option<(u64, u64, [u8; HEADER_BYTES])> = None;
    for at in [HEADER_1, HEADER_2] {
        let mut h = [0u8; HEADER_BYTES];
        s.read_at(at, &mut h)?;
        let valid = le32(&h, 0) == HEADER_SIGNATURE
            && le32(&h, 4) == checksum(&h)
            && le16(&h, 66) == 1
            && le16(&h, 64) == 0;
        let seq = le64(&h, 8);
        if valid && best.as_ref().is_none_or(|b| seq > b.0) {
            best = Some((seq, at, h));
        }
    }
    best.map(|b| (b.1, b.2))
        .ok_or(VhdxError::Damaged("no valid header"))
}

impl<S: Storage> Vhdx<S> {
    /// Opens an image: headers, region table, metadata and BAT checked.
    pub fn open(mut storage: S) -> Result<Self, VhdxError> {
        let len = storage.len();
        if len < 3 * MIB {
            return Err(VhdxError::NotVhdx);
        }
        let mut id = [0u8; 8 + 2 * CREATOR];
        storage.read_at(0, &mut id)?;
        if &id[..8] != FILE_SIGNATURE {
            return Err(VhdxError::NotVhdx);
        }
        // The creator: UTF-16, shown as ASCII up to the first other unit.
        let mut creator = [0u8; CREATOR];
        for (i, c) in creator.iter_mut().enumerate() {
            match le16(&id, 8 + 2 * i) {
                u @ 0x20..0x7F => *c = u as u8,
                _ => break,
            }
        }
        let (header_at, header) = current_header(&mut storage)?;
        if header[48..64].iter().any(|&b| b != 0) {
            return Err(VhdxError::Dirty);
        }
        let regions = read_regions(&mut storage, len)?;
        let m = read_metadata(&mut storage, regions.metadata)?;
        let log = (le64(&header, 72), u64::from(le32(&header, 68)));
        let metadata = [regions.bat, regions.metadata, log];
        let chunk_ratio = (1u64 << 23) * u64::from(m.logical_sector) / u64::from(m.block_size);
        let blocks = m.size.div_ceil(u64::from(m.block_size));
        let total = blocks + (blocks - 1) / chunk_ratio;
        if total * 8 > regions.bat.1 {
            return Err(VhdxError::Damaged(
                "the BAT region is too small for the disk",
            ));
        }
        let mut bat: Vec<u64> = Vec::new();
        bat.try_reserve_exact(blocks as usize)
            .map_err(|_| VhdxError::NoMemory)?;
        let mut raw = [0u8; 4096];
        let mut index = 0u64;
        // Where present blocks start: two blocks sharing bytes would make a
        // write to one change the other.
        let mut present: Vec<u64> = Vec::new();
        let mut next_free = [regions.bat, regions.metadata]
            .iter()
            .map(|&(o, l)| o + l)
            .max()
            .unwrap_or(0)
            .max(len.next_multiple_of(MIB));
        while index < total {
            let n = ((total - index) * 8).min(raw.len() as u64) as usize;
            storage.read_at(regions.bat.0 + index * 8, &mut raw[..n])?;
            for e in raw[..n].chunks_exact(8) {
                let entry = le64(e, 0);
                let is_bitmap = (index + 1).is_multiple_of(chunk_ratio + 1);
                index += 1;
                if is_bitmap {
                    continue;
                }
                let state = entry & 7;
                let offset = (entry >> 20) * MIB;
                match state {
                    FULLY_PRESENT => {
                        let end = offset.checked_add(u64::from(m.block_size));
                        let Some(end) =
                            end.filter(|&e| offset >= MIB && e <= len.next_multiple_of(MIB))
                        else {
                            return Err(VhdxError::Damaged("a block outside the file"));
                        };
                        // Never over the image's own structures (a guest's
                        // writes would land in them).
                        if metadata.iter().any(|&(s, l)| offset < s + l && s < end) {
                            return Err(VhdxError::Damaged(
                                "a block over the BAT, metadata or log",
                            ));
                        }
                        next_free = next_free.max(end);
                        present.try_reserve(1).map_err(|_| VhdxError::NoMemory)?;
                        present.push(offset);
                    }
                    NOT_PRESENT | UNDEFINED | ZERO | UNMAPPED => {}
                    PARTIALLY_PRESENT => {
                        return Err(VhdxError::Unsupported("differencing VHDX files"))
                    }
                    _ => return Err(VhdxError::Damaged("a BAT entry's state")),
                }
                bat.push(entry);
            }
        }
        present.sort_unstable();
        if present
            .windows(2)
            .any(|w| w[1] - w[0] < u64::from(m.block_size))
        {
            return Err(VhdxError::Damaged("two blocks share bytes of the file"));
        }
        Ok(Vhdx {
            storage,
            size: m.size,
            block_size: m.block_size,
            chunk_ratio,
            bat_offset: regions.bat.0,
            bat,
            next_free,
            fixed: m.fixed,
            creator,
            header: alloc::boxed::Box::new(header),
            header_at,
            guids_changed: false,
        })
    }

    /// Makes a new image of `size` bytes (rounded down to whole sectors)
    /// in empty `storage`: a fixed one has every block allocated and
    /// zeroed, a dynamic one none.
    pub fn create(mut storage: S, kind: Kind, size: u64, id: [u8; 16]) -> Result<Self, VhdxError> {
        let size = size / SECTOR * SECTOR;
        if size == 0 || size > MAX_SIZE {
            return Err(VhdxError::BadSize);
        }
        let block_size = DEFAULT_BLOCK_SIZE;
        let chunk_ratio = (1u64 << 23) * SECTOR / u64::from(block_size);
        let blocks = size.div_ceil(u64::from(block_size));
        let total = blocks + (blocks - 1) / chunk_ratio;
        let (log_offset, metadata_offset, bat_offset) = (MIB, 2 * MIB, 3 * MIB);
        let bat_length = (total * 8).next_multiple_of(MIB);
        // File identifier.
        let mut first = alloc::vec![0u8; 64 * 1024];
        first[..8].copy_from_slice(FILE_SIGNATURE);
        for (i, c) in "rshv".encode_utf16().enumerate() {
            first[8 + 2 * i..10 + 2 * i].copy_from_slice(&c.to_le_bytes());
        }
        storage.write_at(0, &first)?;
        // Headers: sequence 0 and 1, both valid.
        let mut current = [0u8; HEADER_BYTES];
        for (seq, at) in [(0u64, HEADER_1), (1, HEADER_2)] {
            let mut h = [0u8; HEADER_BYTES];
            h[..4].copy_from_slice(&HEADER_SIGNATURE.to_le_bytes());
            h[8..16].copy_from_slice(&seq.to_le_bytes());
            h[16..32].copy_from_slice(&id);
            h[32..48].copy_from_slice(&id);
            h[66..68].copy_from_slice(&1u16.to_le_bytes());
            h[68..72].copy_from_slice(&(MIB as u32).to_le_bytes());
            h[72..80].copy_from_slice(&log_offset.to_le_bytes());
            let sum = checksum(&h);
            h[4..8].copy_from_slice(&sum.to_le_bytes());
            storage.write_at(at, &h)?;
            current = h;
        }
        // Region tables, both the same.
        let mut r = alloc::vec![0u8; REGION_BYTES];
        r[..4].copy_from_slice(&REGION_SIGNATURE.to_le_bytes());
        r[8..12].copy_from_slice(&2u32.to_le_bytes());
        for (i, (gid, offset, length)) in [
            (BAT_REGION, bat_offset, bat_length),
            (METADATA_REGION, metadata_offset, MIB),
        ]
        .into_iter()
        .enumerate()
        {
            let e = &mut r[16 + 32 * i..48 + 32 * i];
            e[..16].copy_from_slice(&gid);
            e[16..24].copy_from_slice(&offset.to_le_bytes());
            e[24..28].copy_from_slice(&(length as u32).to_le_bytes());
            e[28..32].copy_from_slice(&1u32.to_le_bytes());
        }
        let sum = checksum(&r);
        r[4..8].copy_from_slice(&sum.to_le_bytes());
        storage.write_at(REGION_1, &r)?;
        storage.write_at(REGION_2, &r)?;
        // An empty log.
        let zeros = alloc::vec![0u8; 64 * 1024];
        for k in 0..16 {
            storage.write_at(log_offset + k * 64 * KIB, &zeros)?;
        }
        // Metadata: the table, then the items at 64 KiB.
        let mut md = alloc::vec![0u8; 64 * 1024 + 64];
        md[..8].copy_from_slice(METADATA_SIGNATURE);
        const REQUIRED: u32 = 4;
        const VIRTUAL_DISK: u32 = 2;
        let items: [([u8; 16], u32, u32, u32); 5] = [
            (FILE_PARAMETERS, 0, 8, REQUIRED),
            (VIRTUAL_DISK_SIZE, 8, 8, REQUIRED | VIRTUAL_DISK),
            (LOGICAL_SECTOR_SIZE, 16, 4, REQUIRED | VIRTUAL_DISK),
            (PHYSICAL_SECTOR_SIZE, 20, 4, REQUIRED | VIRTUAL_DISK),
            (VIRTUAL_DISK_ID, 24, 16, REQUIRED | VIRTUAL_DISK),
        ];
        md[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
        for (i, (gid, offset, length, flags)) in items.into_iter().enumerate() {
            let e = &mut md[32 + 32 * i..64 + 32 * i];
            e[..16].copy_from_slice(&gid);
            e[16..20].copy_from_slice(&(64 * 1024 + offset).to_le_bytes());
            e[20..24].copy_from_slice(&length.to_le_bytes());
            e[24..28].copy_from_slice(&flags.to_le_bytes());
        }
        let item = &mut md[64 * 1024..];
        item[..4].copy_from_slice(&block_size.to_le_bytes());
        // LeaveBlocksAllocated for a fixed disk.
        item[4] = u8::from(kind == Kind::Fixed);
        item[8..16].copy_from_slice(&size.to_le_bytes());
        item[16..20].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        item[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        item[24..40].copy_from_slice(&id);
        storage.write_at(metadata_offset, &md)?;
        // Fill the metadata region to its 1 MiB.
        storage.write_at(metadata_offset + MIB - SECTOR, &[0u8; SECTOR as usize])?;
        // The BAT: a fixed disk's blocks follow it, each present.
        let mut bat: Vec<u64> = Vec::new();
        bat.try_reserve_exact(blocks as usize)
            .map_err(|_| VhdxError::NoMemory)?;
        let data_start = bat_offset + bat_length;
        let mut raw = Vec::new();
        raw.try_reserve_exact(64 * 1024)
            .map_err(|_| VhdxError::NoMemory)?;
        let mut at = bat_offset;
        for index in 0..total {
            let entry = if (index + 1).is_multiple_of(chunk_ratio + 1) {
                0
            } else {
                let block = bat.len() as u64;
                let e = match kind {
                    Kind::Fixed => {
                        FULLY_PRESENT | ((data_start + block * u64::from(block_size)) / MIB) << 20
                    }
                    Kind::Dynamic => NOT_PRESENT,
                };
                bat.push(e);
                e
            };
            raw.extend_from_slice(&entry.to_le_bytes());
            if raw.len() == 64 * 1024 {
                storage.write_at(at, &raw)?;
                at += raw.len() as u64;
                raw.clear();
            }
        }
        raw.resize((bat_offset + bat_length - at).min(64 * 1024) as usize, 0);
        while at < bat_offset + bat_length {
            storage.write_at(at, &raw)?;
            at += raw.len() as u64;
            raw.clear();
            raw.resize((bat_offset + bat_length - at).min(64 * 1024) as usize, 0);
        }
        let mut next_free = data_start;
        if kind == Kind::Fixed {
            let end = data_start + blocks * u64::from(block_size);
            while next_free < end {
                let n = (end - next_free).min(zeros.len() as u64) as usize;
                storage.write_at(next_free, &zeros[..n])?;
                next_free += n as u64;
            }
        }
        storage.flush()?;
        let mut creator = [0u8; CREATOR];
        creator[..4].copy_from_slice(b"rshv");
        Ok(Vhdx {
            storage,
            size,
            block_size,
            chunk_ratio,
            bat_offset,
            bat,
            next_free,
            fixed: kind == Kind::Fixed,
            creator,
            header: alloc::boxed::Box::new(current),
            header_at: HEADER_2,
            guids_changed: true,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn kind(&self) -> Kind {
        if self.fixed {
            Kind::Fixed
        } else {
            Kind::Dynamic
        }
    }

    /// Blocks allocated and the block size.
    pub fn allocation(&self) -> (usize, u32) {
        (
            self.bat.iter().filter(|&&e| e & 7 == FULLY_PRESENT).count(),
            self.block_size,
        )
    }

    /// The creator the file identifier names (ASCII, NUL-padded).
    pub fn creator(&self) -> &[u8] {
        let n = self.creator.iter().position(|&c| c == 0).unwrap_or(CREATOR);
        &self.creator[..n]
    }

    pub fn into_storage(self) -> S {
        self.storage
    }

    /// The storage, for a device to move data to and from the places
    /// [`extent`](Self::extent) gives.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), VhdxError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(VhdxError::OutOfRange),
        }
    }

    /// The file offset of block `b` if it is present.
    fn present(&self, b: usize) -> Option<u64> {
        let e = self.bat[b];
        (e & 7 == FULLY_PRESENT).then_some((e >> 20) * MIB)
    }

    /// Reads `buf.len()` bytes of the disk from `offset`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), VhdxError> {
        self.check(offset, buf.len())?;
        let bs = u64::from(self.block_size);
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let (b, within) = ((at / bs) as usize, at % bs);
            let n = ((bs - within) as usize).min(buf.len() - done);
            match self.present(b) {
                Some(file) => self
                    .storage
                    .read_at(file + within, &mut buf[done..done + n])?,
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// Where the first of `len` bytes of the disk at `offset` lie: the
    /// run up to the end of their block. For a write (`allocate`), the
    /// write GUIDs are changed and a block not yet present is allocated
    /// first, as [`write`](Self::write) does.
    pub fn extent(&mut self, offset: u64, len: u64, allocate: bool) -> Result<Extent, VhdxError> {
        self.check(
            offset,
            usize::try_from(len).map_err(|_| VhdxError::OutOfRange)?,
        )?;
        if allocate && !self.guids_changed {
            self.change_write_guids()?;
        }
        let bs = u64::from(self.block_size);
        let (b, within) = ((offset / bs) as usize, offset % bs);
        let n = (bs - within).min(len);
        let file = match self.present(b) {
            Some(f) => f,
            None if !allocate => return Ok(Extent::Zeros(n)),
            None => self.allocate(b)?,
        };
        Ok(Extent::File {
            at: file + within,
            len: n,
        })
    }

    /// Writes `data` to the disk at `offset`, allocating blocks as needed.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), VhdxError> {
        self.check(offset, data.len())?;
        if !self.guids_changed {
            self.change_write_guids()?;
        }
        let bs = u64::from(self.block_size);
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let (b, within) = ((at / bs) as usize, at % bs);
            let n = ((bs - within) as usize).min(data.len() - done);
            let file = match self.present(b) {
                Some(f) => f,
                None => self.allocate(b)?,
            };
            self.storage
                .write_at(file + within, &data[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Before the first write of this open (MS-VHDX 2.2.2.1): new
    /// FileWriteGuid and DataWriteGuid in a header of the next sequence
    /// number, written over the other header and flushed; a cut leaves the
    /// old current header valid.
    fn change_write_guids(&mut self) -> Result<(), VhdxError> {
        let mut h = *self.header;
        let seq = le64(&h, 8).wrapping_add(1);
        h[8..16].copy_from_slice(&seq.to_le_bytes());
        // New GUIDs: derived from the old ones and the sequence number
        // (no random source here); version 4 and variant bits set.
        for (field, salt) in [(16usize, 0x5Au8), (32, 0xA5)] {
            let mut g = [0u8; 16];
            for (k, part) in g.chunks_exact_mut(4).enumerate() {
                let mut input = [0u8; 26];
                input[..16].copy_from_slice(&h[field..field + 16]);
                input[16..24].copy_from_slice(&seq.to_le_bytes());
                input[24] = salt;
                input[25] = k as u8;
                part.copy_from_slice(&crc32c(&input).to_le_bytes());
            }
            g[7] = (g[7] & 0x0F) | 0x40;
            g[8] = (g[8] & 0x3F) | 0x80;
            h[field..field + 16].copy_from_slice(&g);
        }
        h[4..8].fill(0);
        let sum = checksum(&h);
        h[4..8].copy_from_slice(&sum.to_le_bytes());
        let other = if self.header_at == HEADER_1 {
            HEADER_2
        } else {
            HEADER_1
        };
        self.storage.write_at(other, &h)?;
        self.storage.flush()?;
        *self.header = h;
        self.header_at = other;
        self.guids_changed = true;
        Ok(())
    }

    /// Gives block `b` its place: zeroed at the aligned end of the file, a
    /// flush, then its BAT entry.
    fn allocate(&mut self, b: usize) -> Result<u64, VhdxError> {
        let start = self.next_free.max(self.storage.len()).next_multiple_of(MIB);
        let end = start + u64::from(self.block_size);
        let zeros = [0u8; 4096];
        let mut big = Vec::new();
        let chunk = if big.try_reserve_exact(64 * 1024).is_ok() {
            big.resize(64 * 1024, 0u8);
            &big[..]
        } else {
            &zeros[..]
        };
        let mut at = start;
        while at < end {
            let n = (end - at).min(chunk.len() as u64) as usize;
            self.storage.write_at(at, &chunk[..n])?;
            at += n as u64;
        }
        self.storage.flush()?;
        // Taken from here on, even if the entry's write fails.
        self.next_free = end;
        let entry = FULLY_PRESENT | (start / MIB) << 20;
        let index = b as u64 + b as u64 / self.chunk_ratio;
        self.storage
            .write_at(self.bat_offset + index * 8, &entry.to_le_bytes())?;
        self.bat[b] = entry;
        Ok(start)
    }

    pub fn flush(&mut self) -> Result<(), VhdxError> {
        Ok(self.storage.flush()?)
    }
}

/// A disk a guest reads and writes through the SCSI controller.
impl<S: Storage> vmbus::scsi::BlockDevice for Vhdx<S> {
    fn blocks(&self) -> u64 {
        self.size / SECTOR
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), vmbus::scsi::IoError> {
        let at = lba.checked_mul(SECTOR).ok_or(vmbus::scsi::IoError)?;
        Vhdx::read(self, at, buf).map_err(|_| vmbus::scsi::IoError)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), vmbus::scsi::IoError> {
        let at = lba.checked_mul(SECTOR).ok_or(vmbus::scsi::IoError)?;
        Vhdx::write(self, at, buf).map_err(|_| vmbus::scsi::IoError)
    }
    fn flush(&mut self) -> Result<(), vmbus::scsi::IoError> {
        Vhdx::flush(self).map_err(|_| vmbus::scsi::IoError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhd::MemoryStorage;
    use proptest::prelude::*;
    use std::path::Path;
    use std::process::Command;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 10) as u8)
            .collect()
    }

    fn new(kind: Kind, size: u64) -> Vhdx<MemoryStorage> {
        Vhdx::create(MemoryStorage::default(), kind, size, [7; 16]).unwrap()
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // RFC 3720's check value of "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(
            BAT_REGION,
            [
                0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD,
                0x4A, 0x08
            ]
        );
    }

    #[test]
    fn both_kinds_keep_what_is_written_across_a_reopen() {
        for kind in [Kind::Dynamic, Kind::Fixed] {
            let size = 9 * MIB + 512;
            let mut v = new(kind, size);
            assert_eq!(v.size(), size);
            assert_eq!(v.kind(), kind);
            let data = pattern(3 * MIB as usize + 1000, 3);
            v.write(MIB - 500, &data).unwrap();
            v.write(size - 512, &[9; 512]).unwrap();
            assert_eq!(v.write(size - 511, &[1; 512]), Err(VhdxError::OutOfRange));
            let (used, bs) = v.allocation();
            assert_eq!(bs, DEFAULT_BLOCK_SIZE);
            assert_eq!(used, if kind == Kind::Fixed { 5 } else { 4 });
            let mut v = Vhdx::open(v.into_storage()).unwrap();
            assert_eq!(v.kind(), kind);
            let mut back = vec![0u8; data.len()];
            v.read(MIB - 500, &mut back).unwrap();
            assert!(back == data);
            let mut zeros = vec![1u8; 1000];
            v.read(0, &mut zeros).unwrap();
            assert!(zeros.iter().all(|&b| b == 0));
            let mut end = [0u8; 512];
            v.read(size - 512, &mut end).unwrap();
            assert_eq!(end, [9; 512]);
            assert_eq!(v.creator(), b"rshv");
        }
    }

    /// A write that allocates a block, cut after every number of storage
    /// writes: the image opens, earlier data is intact, the block reads
    /// zeros or the new data.
    #[test]
    fn a_crash_at_any_point_of_an_allocation_leaves_a_good_image() {
        struct Cut {
            inner: MemoryStorage,
            budget: usize,
        }
        impl Storage for Cut {
            fn len(&self) -> u64 {
                self.inner.len()
            }
            fn read_at(&mut self, o: u64, b: &mut [u8]) -> Result<(), StorageError> {
                self.inner.read_at(o, b)
            }
            fn write_at(&mut self, o: u64, d: &[u8]) -> Result<(), StorageError> {
                if self.budget == 0 {
                    return Err(StorageError);
                }
                self.budget -= 1;
                self.inner.write_at(o, d)
            }
            fn flush(&mut self) -> Result<(), StorageError> {
                self.inner.flush()
            }
        }
        let mut v = new(Kind::Dynamic, 16 * MIB);
        let first = pattern(4096, 1);
        v.write(0, &first).unwrap();
        let base = v.into_storage();
        let data = pattern(8192, 2);
        for budget in 0.. {
            let mut v = Vhdx::open(Cut {
                inner: base.clone(),
                budget,
            })
            .unwrap();
            let done = v.write(5 * MIB, &data).is_ok();
            let mut v = Vhdx::open(v.into_storage().inner).unwrap();
            let mut back = vec![0u8; 4096];
            v.read(0, &mut back).unwrap();
            assert_eq!(back, first, "cut {budget}");
            let mut new = vec![0u8; 8192];
            v.read(5 * MIB, &mut new).unwrap();
            assert!(
                new == data || new.iter().all(|&b| b == 0) || !done,
                "cut {budget}"
            );
            if done {
                assert!(new == data);
                assert!(budget > 2);
                break;
            }
            // Writes work again on what the cut left.
            v.write(5 * MIB, &data).unwrap();
        }
    }

    /// The first write after an open changes the write GUIDs in a header
    /// of the next sequence number (the other slot); later writes do not.
    #[test]
    fn the_first_write_of_an_open_changes_the_write_guids() {
        let image = new(Kind::Dynamic, 8 * MIB).into_storage();
        let mut v = Vhdx::open(image).unwrap();
        let (at0, h0) = (v.header_at, *v.header);
        let mut buf = [0u8; 512];
        v.read(0, &mut buf).unwrap();
        assert_eq!(v.header_at, at0, "a read changes nothing");
        v.write(0, &[1; 512]).unwrap();
        let (at1, h1) = (v.header_at, *v.header);
        assert_ne!(at1, at0);
        assert_eq!(le64(&h1, 8), le64(&h0, 8) + 1);
        assert_ne!(h1[16..48], h0[16..48]);
        assert_eq!(h1[48..], h0[48..], "the log and version fields are kept");
        v.write(512, &[2; 512]).unwrap();
        assert_eq!(v.header_at, at1);
        let mut s = v.into_storage();
        assert_eq!(current_header(&mut s).unwrap(), (at1, h1));
        let mut v = Vhdx::open(s).unwrap();
        v.read(0, &mut buf).unwrap();
        assert_eq!(buf, [1; 512]);
    }

    #[test]
    fn damaged_and_dirty_images_are_refused_with_a_reason() {
        let good = new(Kind::Dynamic, 8 * MIB).into_storage();
        let open = |m: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.0.clone();
            m(&mut b);
            Vhdx::open(MemoryStorage(b)).err()
        };
        assert_eq!(open(&|_| {}), None);
        assert_eq!(open(&|b| b[0] = b'x'), Some(VhdxError::NotVhdx));
        // One header damaged: the other is used; both: refused.
        assert_eq!(open(&|b| b[HEADER_1 as usize + 20] ^= 1), None);
        assert_eq!(
            open(&|b| {
                b[HEADER_1 as usize + 20] ^= 1;
                b[HEADER_2 as usize + 20] ^= 1;
            }),
            Some(VhdxError::Damaged("no valid header"))
        );
        // A log to replay in the current header (sequence 1: header 2).
        assert_eq!(
            open(&|b| {
                let h = &mut b[HEADER_2 as usize..HEADER_2 as usize + HEADER_BYTES];
                h[48] = 1;
                let sum = checksum(h);
                h[4..8].copy_from_slice(&sum.to_le_bytes());
            }),
            Some(VhdxError::Dirty)
        );
        assert_eq!(
            open(&|b| {
                b[REGION_1 as usize + 100] ^= 1;
                b[REGION_2 as usize + 100] ^= 1;
            }),
            Some(VhdxError::Damaged("no valid region table"))
        );
        // A BAT entry past the end of the file.
        assert_eq!(
            open(&|b| {
                let e = FULLY_PRESENT | (4096u64 << 20);
                b[3 * MIB as usize..3 * MIB as usize + 8].copy_from_slice(&e.to_le_bytes());
            }),
            Some(VhdxError::Damaged("a block outside the file"))
        );
        assert_eq!(
            open(&|b| b[3 * MIB as usize] = 5),
            Some(VhdxError::Damaged("a BAT entry's state"))
        );
        // Two blocks at the same place in the file.
        assert_eq!(
            open(&|b| {
                b.resize(8 * MIB as usize, 0);
                let e = FULLY_PRESENT | (6u64 << 20);
                for i in 0..2 {
                    let at = 3 * MIB as usize + 8 * i;
                    b[at..at + 8].copy_from_slice(&e.to_le_bytes());
                }
            }),
            Some(VhdxError::Damaged("two blocks share bytes of the file"))
        );
        // A block placed over the BAT itself (at 3 MiB) or the log (1 MiB).
        for mb in [3u64, 1] {
            assert_eq!(
                open(&|b| {
                    // Long enough that the block lies inside the file.
                    b.resize(8 * MIB as usize, 0);
                    let e = FULLY_PRESENT | (mb << 20);
                    b[3 * MIB as usize..3 * MIB as usize + 8].copy_from_slice(&e.to_le_bytes());
                }),
                Some(VhdxError::Damaged("a block over the BAT, metadata or log"))
            );
        }
    }

    proptest! {
        // Each case makes an 8 MiB image: fewer cases.
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The extents of any range are where `read` finds the bytes; a
        /// write through them is what `read` gives after a reopen.
        #[test]
        fn extents_are_where_the_bytes_are(
            dynamic: bool,
            writes in proptest::collection::vec((0u64..(8 << 20), 1usize..20000), 0..4),
            at in 0u64..(8 << 20),
            len in 1u64..(3 << 20),
            seed: u8,
        ) {
            let kind = if dynamic { Kind::Dynamic } else { Kind::Fixed };
            let image = new(kind, 8 * MIB);
            prop_assert!(crate::vhd::extent_check::holds(image, &writes, at, len, seed));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Any damage to the first 4 MiB (every structure) opens or is
        /// refused, and an opened image reads and writes without a panic.
        #[test]
        fn damaged_bytes_never_panic(edits in proptest::collection::vec((0usize..4 << 20, any::<u8>()), 1..30)) {
            static GOOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let good = GOOD.get_or_init(|| {
                let mut v = new(Kind::Dynamic, 8 * MIB);
                v.write(MIB, &[5; 4096]).unwrap();
                v.into_storage().0
            });
            let mut b = good.clone();
            for (at, x) in edits {
                if at < b.len() {
                    b[at] = x;
                }
            }
            if let Ok(mut v) = Vhdx::open(MemoryStorage(b)) {
                let mut buf = vec![0u8; 8192];
                let _ = v.read(0, &mut buf);
                let _ = v.write(3 * MIB, &buf);
                let _ = v.read(v.size() - 512, &mut buf[..512]);
            }
        }
    }

    fn qemu_img() -> bool {
        match Command::new("qemu-img").arg("--version").output() {
            Ok(o) if o.status.success() => true,
            _ if std::env::var("XTASK_REQUIRE_QEMU_IMG").as_deref() == Ok("1") => {
                panic!("qemu-img not found: apt-get install qemu-utils")
            }
            _ => {
                std::eprintln!("note: qemu-img not found, VHDX interoperability check skipped");
                false
            }
        }
    }

    fn temp(name: &str) -> crate::test_files::TempFile {
        crate::test_files::TempFile::new("vhdx-test", name)
    }

    fn qemu(args: &[&str]) -> String {
        let out = Command::new("qemu-img").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn raw(image: &Path) -> Vec<u8> {
        let out = temp("raw");
        qemu(&[
            "convert",
            "-f",
            "vhdx",
            "-O",
            "raw",
            image.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        std::fs::read(out).unwrap()
    }

    /// Images qemu-img makes open here and take writes that `qemu-img
    /// check` passes and `convert` shows; images made here pass `check`
    /// and convert to the same bytes.
    #[test]
    fn qemu_img_reads_ours_and_we_read_its() {
        if !qemu_img() {
            return;
        }
        let data = pattern(3 * MIB as usize + 4096, 5);
        for subformat in ["dynamic", "fixed"] {
            let path = temp(&format!("theirs-{subformat}.vhdx"));
            let p = path.to_str().unwrap();
            let _ = std::fs::remove_file(&path);
            qemu(&[
                "create",
                "-q",
                "-f",
                "vhdx",
                "-o",
                &format!("subformat={subformat}"),
                p,
                "40M",
            ]);
            let mut v = Vhdx::open(MemoryStorage(std::fs::read(&path).unwrap())).unwrap();
            assert_eq!(v.size(), 40 * MIB);
            let kind = if subformat == "fixed" {
                Kind::Fixed
            } else {
                Kind::Dynamic
            };
            assert_eq!(v.kind(), kind);
            assert!(v.creator().starts_with(b"QEMU v"), "{:?}", v.creator());
            v.write(7 * MIB + 512, &data).unwrap();
            std::fs::write(&path, v.into_storage().0).unwrap();
            qemu(&["check", "-f", "vhdx", p]);
            let disk = raw(&path);
            assert!(
                disk[7 * MIB as usize + 512..][..data.len()] == data[..],
                "{subformat}"
            );
            assert!(disk[..7 * MIB as usize].iter().all(|&b| b == 0));

            let mut ours = new(kind, 40 * MIB);
            ours.write(7 * MIB + 512, &data).unwrap();
            let path = temp(&format!("ours-{subformat}.vhdx"));
            std::fs::write(&path, ours.into_storage().0).unwrap();
            qemu(&["check", "-f", "vhdx", path.to_str().unwrap()]);
            let info = qemu(&["info", "-f", "vhdx", path.to_str().unwrap()]);
            assert!(info.contains("virtual size: 40 MiB"), "{info}");
            assert!(raw(&path) == disk, "{subformat}");
        }
    }
}
