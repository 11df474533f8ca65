//! VHD disk images, fixed and dynamic, read and write, as Microsoft's
//! "Virtual Hard Disk Image Format Specification" (version 1.0) lays them
//! out: a 512-byte footer at the end (and, for a dynamic disk, a copy at
//! the start), then for a dynamic disk a 1024-byte header, the block
//! allocation table (BAT: one big-endian sector number per block, or
//! 0xFFFFFFFF), and blocks of a sector bitmap followed by the data.
//!
//! Everything read from the image is checked before it is used (cookies,
//! checksums, sizes, every BAT entry against the file) and errors are
//! values, never panics. A block is allocated in an order that survives a
//! crash at any point: the block (bitmap and data) where the footer was,
//! the footer after it, a flush, then the BAT entry; until the entry is
//! written the block is unreachable, and the copy of the footer at the
//! start still opens the image if the end was cut.
//!
//! Differencing disks (type 4) are refused. The sector bitmap of an
//! allocated block is written all ones (every sector present), as QEMU
//! does, so a block reads as data, zeros where nothing was written.

use alloc::vec;
use alloc::vec::Vec;

/// Bytes per sector.
pub const SECTOR: u64 = 512;
/// The default block size of a dynamic disk.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
/// The largest disk: 2040 GiB. (The CHS geometry stops at about 127 GiB;
/// past that the footer's size is what tools read.)
pub const MAX_SIZE: u64 = 2040 << 30;
/// The largest CHS geometry, in sectors.
const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;
const FOOTER_COOKIE: &[u8; 8] = b"conectix";
const HEADER_COOKIE: &[u8; 8] = b"cxsparse";
const UNALLOCATED: u32 = 0xFFFF_FFFF;
const FIXED: u32 = 2;
const DYNAMIC: u32 = 3;
const DIFFERENCING: u32 = 4;

/// Where the image's bytes are: a file on the root's disk, memory in tests.
pub trait Storage {
    /// The current length in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError>;
    /// Writes, growing the storage if `offset + data.len()` is past its end.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError>;
    /// Makes every write so far durable.
    fn flush(&mut self) -> Result<(), StorageError>;
}

/// The storage failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageError;

/// Where a run of a virtual disk's bytes lies: `len` bytes in the image
/// file from `at`, or nowhere yet (they read as zeros). A device moves
/// them between the file and memory itself (`vmbus::scsi::Segment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    File { at: u64, len: u64 },
    Zeros(u64),
}

impl Extent {
    pub fn len(&self) -> u64 {
        match *self {
            Extent::File { len, .. } | Extent::Zeros(len) => len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhdError {
    Storage,
    /// Shorter than a footer.
    TooSmall,
    /// No valid footer at the end nor (dynamic) at the start.
    BadFooter(&'static str),
    BadHeader(&'static str),
    /// A BAT entry points outside the file or into the metadata.
    BadBat,
    /// Differencing disks (type 4) and unknown types.
    Unsupported(u32),
    /// A size that is not whole sectors, zero, or over [`MAX_SIZE`].
    BadSize,
    /// An access past the disk's end.
    OutOfRange,
    /// No memory for the block table.
    NoMemory,
}

impl From<StorageError> for VhdError {
    fn from(_: StorageError) -> Self {
        VhdError::Storage
    }
}

impl core::fmt::Display for VhdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VhdError::Storage => write!(f, "the file could not be read or written"),
            VhdError::TooSmall => write!(f, "too small to be a VHD"),
            VhdError::BadFooter(why) => write!(f, "not a VHD (footer: {why})"),
            VhdError::BadHeader(why) => write!(f, "a damaged dynamic VHD (header: {why})"),
            VhdError::BadBat => write!(f, "a damaged dynamic VHD (a block outside the file)"),
            VhdError::Unsupported(4) => write!(f, "differencing VHDs are not supported"),
            VhdError::Unsupported(t) => write!(f, "VHD disk type {t} is not supported"),
            VhdError::BadSize => write!(f, "a size of whole sectors, up to 2040 GiB"),
            VhdError::NoMemory => write!(f, "no memory for its block allocation table"),
            VhdError::OutOfRange => write!(f, "past the end of the disk"),
        }
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// The one's complement of the sum of the bytes, the checksum field (4
/// bytes at `field`) counted as zero.
fn checksum(bytes: &[u8], field: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(u32::from(b)));
    !sum
}

/// The specification's CHS geometry for a disk of `sectors` sectors
/// (cylinders, heads, sectors per track).
pub fn geometry(sectors: u64) -> (u16, u8, u8) {
    let total = sectors.min(MAX_CHS_SECTORS);
    let (spt, heads, cth) = if total >= 65535 * 16 * 63 {
        (255, 16, total / 255)
    } else {
        let mut spt = 17;
        let mut cth = total / spt;
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cth = total / spt;
        }
        if cth >= heads * 1024 {
            spt = 63;
            heads = 16;
            cth = total / spt;
        }
        (spt, heads, cth)
    };
    ((cth / heads) as u16, heads as u8, spt as u8)
}

/// The footer's fields this code uses or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub disk_type: u32,
    /// The disk's size in bytes (what the guest sees).
    pub current_size: u64,
    /// Offset of the dynamic header (0xFFFFFFFF_FFFFFFFF for fixed).
    pub data_offset: u64,
    /// Seconds since 2000-01-01 00:00 UTC.
    pub timestamp: u32,
    pub creator_app: [u8; 4],
    pub unique_id: [u8; 16],
    pub geometry: (u16, u8, u8),
}

impl Footer {
    fn parse(b: &[u8; 512]) -> Result<Footer, VhdError> {
        if &b[..8] != FOOTER_COOKIE {
            return Err(VhdError::BadFooter("no \"conectix\" cookie"));
        }
        if be32(b, 64) != checksum(b, 64) {
            return Err(VhdError::BadFooter("checksum"));
        }
        if be32(b, 12) >> 16 != 1 {
            return Err(VhdError::BadFooter("format version"));
        }
        let f = Footer {
            disk_type: be32(b, 60),
            current_size: be64(b, 48),
            data_offset: be64(b, 16),
            timestamp: be32(b, 24),
            creator_app: [b[28], b[29], b[30], b[31]],
            unique_id: b[68..84].try_into().unwrap_or([0; 16]),
            geometry: (u16::from_be_bytes([b[56], b[57]]), b[58], b[59]),
        };
        if f.current_size == 0
            || !f.current_size.is_multiple_of(SECTOR)
            || f.current_size > MAX_SIZE
        {
            return Err(VhdError::BadFooter("size"));
        }
        Ok(f)
    }

    fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[..8].copy_from_slice(FOOTER_COOKIE);
        b[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit
        b[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator_app);
        b[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        b[36..40].copy_from_slice(b"Wi2k");
        b[40..48].copy_from_slice(&self.current_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..58].copy_from_slice(&self.geometry.0.to_be_bytes());
        b[58] = self.geometry.1;
        b[59] = self.geometry.2;
        b[60..64].copy_from_slice(&self.disk_type.to_be_bytes());
        b[68..84].copy_from_slice(&self.unique_id);
        let sum = checksum(&b, 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        b
    }
}

/// A dynamic disk's layout.
#[derive(Debug)]
struct Dynamic {
    bat_offset: u64,
    block_size: u32,
    bat: Vec<u32>,
    /// Where the next block goes: the footer's place at the end.
    next_free: u64,
}

impl Dynamic {
    fn bitmap_bytes(&self) -> u64 {
        (u64::from(self.block_size) / SECTOR)
            .div_ceil(8)
            .next_multiple_of(SECTOR)
    }
}

/// An open VHD.
pub struct Vhd<S: Storage> {
    storage: S,
    footer: Footer,
    dynamic: Option<Dynamic>,
}

/// What to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Fixed,
    Dynamic,
}

/// A disk's size rounded down to its CHS geometry, as QEMU and Virtual PC
/// compute the size they show for a VHD this code makes (its creator is
/// not one they trust the footer's size from).
pub fn usable_size(size: u64) -> u64 {
    let (c, h, s) = geometry(size / SECTOR);
    let chs = u64::from(c) * u64::from(h) * u64::from(s);
    if chs == MAX_CHS_SECTORS {
        // The geometry is saturated: tools (QEMU among them) read the
        // footer's size, whole sectors.
        return size.min(MAX_SIZE) / SECTOR * SECTOR;
    }
    chs * SECTOR
}

impl<S: Storage> Vhd<S> {
    /// Makes a new image of `size` bytes (rounded down to its geometry,
    /// [`usable_size`]) in empty `storage`. A fixed disk's data is
    /// written as zeros (its whole size); a dynamic one has no block yet.
    pub fn create(
        mut storage: S,
        kind: Kind,
        size: u64,
        unique_id: [u8; 16],
        timestamp: u32,
    ) -> Result<Self, VhdError> {
        let size = usable_size(size.min(MAX_SIZE));
        if size == 0 {
            return Err(VhdError::BadSize);
        }
        let mut footer = Footer {
            disk_type: FIXED,
            current_size: size,
            data_offset: u64::MAX,
            timestamp,
            creator_app: *b"rshv",
            unique_id,
            geometry: geometry(size / SECTOR),
        };
        match kind {
            Kind::Fixed => {
                let zeros = vec![0u8; 64 << 10];
                let mut at = 0;
                while at < size {
                    let n = (size - at).min(zeros.len() as u64) as usize;
                    storage.write_at(at, &zeros[..n])?;
                    at += n as u64;
                }
                storage.write_at(size, &footer.encode())?;
                storage.flush()?;
                Ok(Vhd {
                    storage,
                    footer,
                    dynamic: None,
                })
            }
            Kind::Dynamic => {
                footer.disk_type = DYNAMIC;
                footer.data_offset = 512;
                let block_size = DEFAULT_BLOCK_SIZE;
                let entries = size.div_ceil(u64::from(block_size)) as u32;
                let bat_offset: u64 = 512 + 1024;
                let bat_bytes = (u64::from(entries) * 4).next_multiple_of(SECTOR);
                let mut header = [0u8; 1024];
                header[..8].copy_from_slice(HEADER_COOKIE);
                header[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
                header[16..24].copy_from_slice(&bat_offset.to_be_bytes());
                header[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
                header[28..32].copy_from_slice(&entries.to_be_bytes());
                header[32..36].copy_from_slice(&block_size.to_be_bytes());
                let sum = checksum(&header, 36);
                header[36..40].copy_from_slice(&sum.to_be_bytes());
                let encoded = footer.encode();
                storage.write_at(0, &encoded)?;
                storage.write_at(512, &header)?;
                let mut bat = Vec::new();
                bat.try_reserve_exact(entries as usize)
                    .map_err(|_| VhdError::NoMemory)?;
                bat.resize(entries as usize, UNALLOCATED);
                let ones = [0xFFu8; 4096];
                let mut at = 0;
                while at < bat_bytes {
                    let n = (bat_bytes - at).min(ones.len() as u64) as usize;
                    storage.write_at(bat_offset + at, &ones[..n])?;
                    at += n as u64;
                }
                let next_free = bat_offset + bat_bytes;
                storage.write_at(next_free, &encoded)?;
                storage.flush()?;
                Ok(Vhd {
                    storage,
                    footer,
                    dynamic: Some(Dynamic {
                        bat_offset,
                        block_size,
                        bat,
                        next_free,
                    }),
                })
            }
        }
    }

    /// Opens an image: the footer at the end (for a dynamic disk whose end
    /// was cut, the copy at the start), the header and BAT checked.
    pub fn open(mut storage: S) -> Result<Self, VhdError> {
        let len = storage.len();
        if len < 512 {
            return Err(VhdError::TooSmall);
        }
        let mut b = [0u8; 512];
        storage.read_at(len - 512, &mut b)?;
        // Where the data may end: before the footer at the end, or (that
        // footer cut) the end of the file.
        let (footer, data_end) = match Footer::parse(&b) {
            Ok(f) => (f, len - 512),
            Err(e) => {
                storage.read_at(0, &mut b)?;
                match Footer::parse(&b) {
                    Ok(f) if f.disk_type == DYNAMIC => (f, len),
                    _ => return Err(e),
                }
            }
        };
        match footer.disk_type {
            FIXED => {
                if footer.current_size > data_end {
                    return Err(VhdError::BadFooter("size past the end of the file"));
                }
                Ok(Vhd {
                    storage,
                    footer,
                    dynamic: None,
                })
            }
            DYNAMIC => {
                let dynamic = Self::read_dynamic(&mut storage, &footer, data_end)?;
                Ok(Vhd {
                    storage,
                    footer,
                    dynamic: Some(dynamic),
                })
            }
            t @ DIFFERENCING => Err(VhdError::Unsupported(t)),
            t => Err(VhdError::Unsupported(t)),
        }
    }

    /// The header and BAT of a dynamic image whose data (blocks) must end
    /// by `len`.
    fn read_dynamic(storage: &mut S, footer: &Footer, len: u64) -> Result<Dynamic, VhdError> {
        let at = footer.data_offset;
        if at.checked_add(1024).is_none_or(|end| end > len) {
            return Err(VhdError::BadHeader("outside the file"));
        }
        let mut h = [0u8; 1024];
        storage.read_at(at, &mut h)?;
        if &h[..8] != HEADER_COOKIE {
            return Err(VhdError::BadHeader("no \"cxsparse\" cookie"));
        }
        if be32(&h, 36) != checksum(&h, 36) {
            return Err(VhdError::BadHeader("checksum"));
        }
        let bat_offset = be64(&h, 16);
        let entries = be32(&h, 28);
        let block_size = be32(&h, 32);
        if !block_size.is_power_of_two() || !(SECTOR as u32 * 8..=256 << 20).contains(&block_size) {
            return Err(VhdError::BadHeader("block size"));
        }
        let needed = footer.current_size.div_ceil(u64::from(block_size));
        if u64::from(entries) < needed || u64::from(entries) > needed + 1 {
            return Err(VhdError::BadHeader("table entries for the size"));
        }
        let bat_bytes = (u64::from(entries) * 4).next_multiple_of(SECTOR);
        let bat_end = bat_offset
            .checked_add(bat_bytes)
            .filter(|&e| e <= len && bat_offset >= at + 1024)
            .ok_or(VhdError::BadHeader("table outside the file"))?;
        // The table may be megabytes (the root's heap is small): allocated
        // fallibly, read in pieces.
        let mut bat: Vec<u32> = Vec::new();
        bat.try_reserve_exact(entries as usize)
            .map_err(|_| VhdError::NoMemory)?;
        let mut raw = [0u8; 4096];
        let mut at = 0u64;
        while at < u64::from(entries) * 4 {
            let n = (u64::from(entries) * 4 - at).min(raw.len() as u64) as usize;
            storage.read_at(bat_offset + at, &mut raw[..n])?;
            bat.extend(raw[..n].chunks_exact(4).map(|c| be32(c, 0)));
            at += n as u64;
        }
        let mut dynamic = Dynamic {
            bat_offset,
            block_size,
            bat,
            next_free: bat_end,
        };
        let block_bytes = dynamic.bitmap_bytes() + u64::from(block_size);
        let mut next_free = bat_end;
        for &entry in dynamic.bat.iter().filter(|&&e| e != UNALLOCATED) {
            let start = u64::from(entry) * SECTOR;
            let end = start + block_bytes;
            if start < bat_end || end > len {
                return Err(VhdError::BadBat);
            }
            next_free = next_free.max(end);
        }
        dynamic.next_free = next_free;
        Ok(dynamic)
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.footer.current_size
    }

    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// Fixed or dynamic.
    pub fn kind(&self) -> Kind {
        if self.dynamic.is_some() {
            Kind::Dynamic
        } else {
            Kind::Fixed
        }
    }

    /// Blocks allocated and the block size (a dynamic disk).
    pub fn allocation(&self) -> Option<(usize, u32)> {
        self.dynamic.as_ref().map(|d| {
            (
                d.bat.iter().filter(|&&e| e != UNALLOCATED).count(),
                d.block_size,
            )
        })
    }

    /// The storage, for the caller to take back.
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// The storage, for a device to move data to and from the places
    /// [`extent`](Self::extent) gives.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), VhdError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(VhdError::OutOfRange),
        }
    }

    /// Reads `buf.len()` bytes of the disk from `offset`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), VhdError> {
        self.check(offset, buf.len())?;
        let Some(d) = &self.dynamic else {
            return Ok(self.storage.read_at(offset, buf)?);
        };
        let block = u64::from(d.block_size);
        let bitmap = d.bitmap_bytes();
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let (index, within) = ((at / block) as usize, at % block);
            let n = ((block - within) as usize).min(buf.len() - done);
            let piece = &mut buf[done..done + n];
            match d.bat.get(index).copied().unwrap_or(UNALLOCATED) {
                UNALLOCATED => piece.fill(0),
                entry => self
                    .storage
                    .read_at(u64::from(entry) * SECTOR + bitmap + within, piece)?,
            }
            done += n;
        }
        Ok(())
    }

    /// Where the first of `len` bytes of the disk at `offset` lie: the
    /// run up to the end of their block. For a write (`allocate`), a block
    /// not yet in the file is allocated first, as [`write`](Self::write)
    /// does.
    pub fn extent(&mut self, offset: u64, len: u64, allocate: bool) -> Result<Extent, VhdError> {
        self.check(
            offset,
            usize::try_from(len).map_err(|_| VhdError::OutOfRange)?,
        )?;
        let Some(d) = &self.dynamic else {
            return Ok(Extent::File { at: offset, len });
        };
        let block = u64::from(d.block_size);
        let (index, within) = ((offset / block) as usize, offset % block);
        let n = (block - within).min(len);
        let entry = match d.bat.get(index).copied().unwrap_or(UNALLOCATED) {
            UNALLOCATED if !allocate => return Ok(Extent::Zeros(n)),
            UNALLOCATED => self.block(index)?,
            entry => entry,
        };
        let bitmap = self.dynamic.as_ref().map_or(0, |d| d.bitmap_bytes());
        Ok(Extent::File {
            at: u64::from(entry) * SECTOR + bitmap + within,
            len: n,
        })
    }

    /// Writes `data` to the disk at `offset`, allocating blocks as needed.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), VhdError> {
        self.check(offset, data.len())?;
        if self.dynamic.is_none() {
            return Ok(self.storage.write_at(offset, data)?);
        }
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let block = u64::from(self.dynamic.as_ref().map_or(1, |d| d.block_size));
            let (index, within) = ((at / block) as usize, at % block);
            let n = ((block - within) as usize).min(data.len() - done);
            let entry = self.block(index)?;
            let bitmap = self.dynamic.as_ref().map_or(0, |d| d.bitmap_bytes());
            self.storage.write_at(
                u64::from(entry) * SECTOR + bitmap + within,
                &data[done..done + n],
            )?;
            done += n;
        }
        Ok(())
    }

    /// The sector where block `index` starts, allocating it if needed: the
    /// bitmap and zeroed data where the footer was, the footer after it, a
    /// flush, then the BAT entry.
    fn block(&mut self, index: usize) -> Result<u32, VhdError> {
        let footer = self.footer.encode();
        let Some(d) = self.dynamic.as_mut() else {
            return Err(VhdError::OutOfRange);
        };
        let entry = *d.bat.get(index).ok_or(VhdError::OutOfRange)?;
        if entry != UNALLOCATED {
            return Ok(entry);
        }
        let start = d.next_free;
        let sector = u32::try_from(start / SECTOR).map_err(|_| VhdError::BadSize)?;
        let bitmap = d.bitmap_bytes();
        let end = start + bitmap + u64::from(d.block_size);
        let mut head = vec![0u8; bitmap as usize];
        head[..(u64::from(d.block_size) / SECTOR / 8) as usize].fill(0xFF);
        self.storage.write_at(start, &head)?;
        let zeros = vec![0u8; 64 << 10];
        let mut at = start + bitmap;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            self.storage.write_at(at, &zeros[..n])?;
            at += n as u64;
        }
        self.storage.write_at(end, &footer)?;
        self.storage.flush()?;
        // The space is taken from here on, even if the entry's write fails
        // (it may have reached the disk all the same).
        d.next_free = end;
        self.storage
            .write_at(d.bat_offset + index as u64 * 4, &sector.to_be_bytes())?;
        d.bat[index] = sector;
        Ok(sector)
    }

    /// Makes every write so far durable.
    pub fn flush(&mut self) -> Result<(), VhdError> {
        Ok(self.storage.flush()?)
    }
}

/// A disk a guest reads and writes through the SCSI controller.
impl<S: Storage> vmbus::scsi::BlockDevice for Vhd<S> {
    fn blocks(&self) -> u64 {
        self.size() / SECTOR
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), vmbus::scsi::IoError> {
        let at = lba.checked_mul(SECTOR).ok_or(vmbus::scsi::IoError)?;
        Vhd::read(self, at, buf).map_err(|_| vmbus::scsi::IoError)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), vmbus::scsi::IoError> {
        let at = lba.checked_mul(SECTOR).ok_or(vmbus::scsi::IoError)?;
        Vhd::write(self, at, buf).map_err(|_| vmbus::scsi::IoError)
    }
    fn flush(&mut self) -> Result<(), vmbus::scsi::IoError> {
        Vhd::flush(self).map_err(|_| vmbus::scsi::IoError)
    }
}

/// Storage in memory (tests; the root's RAM).
#[derive(Debug, Default, Clone)]
pub struct MemoryStorage(pub Vec<u8>);

impl Storage for MemoryStorage {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        let at = usize::try_from(offset).map_err(|_| StorageError)?;
        let src = self
            .0
            .get(at..at.checked_add(buf.len()).ok_or(StorageError)?)
            .ok_or(StorageError)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        let at = usize::try_from(offset).map_err(|_| StorageError)?;
        let end = at.checked_add(data.len()).ok_or(StorageError)?;
        if end > self.0.len() {
            self.0.resize(end, 0);
        }
        self.0[at..end].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// The property both image formats' extents keep, for their tests.
#[cfg(test)]
pub(crate) mod extent_check {
    use super::{Extent, MemoryStorage, Storage, Vhd};
    use crate::vhdx::Vhdx;
    use alloc::vec;
    use alloc::vec::Vec;

    /// An image in memory, as the check uses it.
    pub(crate) trait Image: Sized {
        fn size(&self) -> u64;
        fn read(&mut self, offset: u64, buf: &mut [u8]);
        fn write(&mut self, offset: u64, data: &[u8]);
        fn extent(&mut self, offset: u64, len: u64, allocate: bool) -> Extent;
        fn file(&mut self) -> &mut MemoryStorage;
        fn reopen(self) -> Self;
    }

    impl Image for Vhd<MemoryStorage> {
        fn size(&self) -> u64 {
            Vhd::size(self)
        }
        fn read(&mut self, offset: u64, buf: &mut [u8]) {
            Vhd::read(self, offset, buf).unwrap()
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            Vhd::write(self, offset, data).unwrap()
        }
        fn extent(&mut self, offset: u64, len: u64, allocate: bool) -> Extent {
            Vhd::extent(self, offset, len, allocate).unwrap()
        }
        fn file(&mut self) -> &mut MemoryStorage {
            self.storage_mut()
        }
        fn reopen(self) -> Self {
            Vhd::open(self.into_storage()).unwrap()
        }
    }

    impl Image for Vhdx<MemoryStorage> {
        fn size(&self) -> u64 {
            Vhdx::size(self)
        }
        fn read(&mut self, offset: u64, buf: &mut [u8]) {
            Vhdx::read(self, offset, buf).unwrap()
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            Vhdx::write(self, offset, data).unwrap()
        }
        fn extent(&mut self, offset: u64, len: u64, allocate: bool) -> Extent {
            Vhdx::extent(self, offset, len, allocate).unwrap()
        }
        fn file(&mut self) -> &mut MemoryStorage {
            self.storage_mut()
        }
        fn reopen(self) -> Self {
            Vhdx::open(self.into_storage()).unwrap()
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13) ^ seed ^ (i >> 9) as u8)
            .collect()
    }

    /// After `writes`, the extents of `len` bytes at `at` (both cut to the
    /// disk), read from the file where they lie or as zeros, are what
    /// `read` gives; bytes written through extents that allocate are what
    /// `read` gives after a reopen.
    pub(crate) fn holds<I: Image>(
        mut v: I,
        writes: &[(u64, usize)],
        at: u64,
        len: u64,
        seed: u8,
    ) -> bool {
        let size = v.size();
        for (i, &(w, n)) in writes.iter().enumerate() {
            let w = w.min(size - 1);
            v.write(w, &pattern(n.min((size - w) as usize), i as u8));
        }
        let at = at.min(size - 1);
        let len = len.min(size - at);
        let mut want = vec![0u8; len as usize];
        v.read(at, &mut want);
        let mut got = Vec::new();
        while (got.len() as u64) < len {
            let o = at + got.len() as u64;
            match v.extent(o, len - got.len() as u64, false) {
                Extent::Zeros(n) => got.resize(got.len() + n as usize, 0),
                Extent::File { at, len } => {
                    let mut b = vec![0u8; len as usize];
                    v.file().read_at(at, &mut b).unwrap();
                    got.extend_from_slice(&b);
                }
            }
        }
        if got != want {
            return false;
        }
        let data = pattern(len as usize, seed);
        let mut done = 0u64;
        while done < len {
            let Extent::File { at: f, len: n } = v.extent(at + done, len - done, true) else {
                return false;
            };
            let piece = &data[done as usize..(done + n) as usize];
            v.file().write_at(f, piece).unwrap();
            done += n;
        }
        let mut v = v.reopen();
        let mut back = vec![0u8; len as usize];
        v.read(at, &mut back);
        back == data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;

    const MIB: u64 = 1 << 20;

    fn new(kind: Kind, size: u64) -> Vhd<MemoryStorage> {
        Vhd::create(MemoryStorage::default(), kind, size, [7; 16], 1000).unwrap()
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn geometry_follows_the_specification() {
        // 8 GiB: 16 heads, 63 sectors per track, 16644 cylinders.
        assert_eq!(geometry(8 << 21), (16644, 16, 63));
        // 16 MiB: 17 sectors per track, 4 heads.
        assert_eq!(geometry(32768), (481, 4, 17));
        assert_eq!(usable_size(16 * MIB), 481 * 4 * 17 * 512);
        // The largest geometry; past it the size is kept (whole sectors).
        assert_eq!(geometry(u64::MAX / 512), (65535, 16, 255));
        assert_eq!(usable_size(1 << 40), 1 << 40);
        assert_eq!(usable_size(u64::MAX), MAX_SIZE);
    }

    #[test]
    fn both_kinds_keep_what_is_written_across_a_reopen() {
        for kind in [Kind::Fixed, Kind::Dynamic] {
            let mut v = new(kind, 16 * MIB);
            let size = v.size();
            // Across a block boundary (2 MiB), and the last sector.
            let a = pattern(3 * 4096 + 512, 1);
            v.write(2 * MIB - 4096, &a).unwrap();
            let b = pattern(512, 2);
            v.write(size - 512, &b).unwrap();
            assert_eq!(v.write(size - 511, &b), Err(VhdError::OutOfRange));
            let mut v = Vhd::open(v.into_storage()).unwrap();
            assert_eq!(v.kind(), kind);
            let mut back = vec![0u8; a.len()];
            v.read(2 * MIB - 4096, &mut back).unwrap();
            assert_eq!(back, a);
            let mut back = vec![0u8; 512];
            v.read(size - 512, &mut back).unwrap();
            assert_eq!(back, b);
            // Never written: zeros.
            let mut back = vec![1u8; 4096];
            v.read(8 * MIB, &mut back).unwrap();
            assert!(back.iter().all(|&x| x == 0));
            if kind == Kind::Dynamic {
                assert_eq!(v.allocation(), Some((3, DEFAULT_BLOCK_SIZE)));
            }
        }
    }

    /// Storage that stops writing after `left` writes (the last one torn
    /// in half): a crash at that point.
    struct Cut {
        inner: MemoryStorage,
        left: usize,
    }

    impl Storage for Cut {
        fn len(&self) -> u64 {
            self.inner.len()
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
            self.inner.read_at(offset, buf)
        }
        fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
            match self.left {
                0 => Err(StorageError),
                1 => {
                    // Torn: the whole sectors of its first half reach the
                    // disk (a sector is written whole or not at all).
                    self.left = 0;
                    let half = offset + data.len() as u64 / 2;
                    let kept = (half - half % SECTOR).saturating_sub(offset) as usize;
                    self.inner.write_at(offset, &data[..kept])?;
                    Err(StorageError)
                }
                _ => {
                    self.left -= 1;
                    self.inner.write_at(offset, data)
                }
            }
        }
        fn flush(&mut self) -> Result<(), StorageError> {
            Ok(())
        }
    }

    /// A write that allocates a block, cut after every possible number of
    /// storage writes (the last one torn at a sector boundary): the image
    /// always opens, what was written before is intact, each sector of the
    /// cut write (never acknowledged) is old or new, and the image takes
    /// writes again.
    #[test]
    fn a_crash_at_any_point_of_an_allocation_leaves_a_good_image() {
        let mut v = new(Kind::Dynamic, 16 * MIB);
        let first = pattern(4096, 3);
        v.write(MIB, &first).unwrap();
        let before = v.into_storage();
        let second = pattern(8192, 4);
        for cut in 0.. {
            let mut v = Vhd::open(Cut {
                inner: before.clone(),
                left: cut,
            })
            .unwrap();
            let done = v.write(5 * MIB, &second).is_ok();
            let crashed = v.into_storage().inner;
            let mut v = Vhd::open(crashed).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            let mut back = vec![0u8; 4096];
            v.read(MIB, &mut back).unwrap();
            assert_eq!(back, first, "cut at {cut}");
            let mut back = vec![0u8; 8192];
            v.read(5 * MIB, &mut back).unwrap();
            // Each sector of the cut write: old or new, nothing else.
            for (got, want) in back.chunks(512).zip(second.chunks(512)) {
                assert!(
                    got == want || got.iter().all(|&b| b == 0),
                    "cut at {cut}: a sector of the cut write is neither old nor new"
                );
            }
            // The image still takes writes after the crash.
            v.write(9 * MIB, &first).unwrap();
            let mut v = Vhd::open(v.into_storage()).unwrap();
            let mut back = vec![0u8; 4096];
            v.read(9 * MIB, &mut back).unwrap();
            assert_eq!(back, first, "cut at {cut}: a write after recovery");
            if done {
                assert_eq!(back.len(), 4096);
                break;
            }
        }
    }

    #[test]
    fn damaged_images_are_refused_with_a_reason() {
        assert_eq!(
            Vhd::open(MemoryStorage(vec![0; 100])).err(),
            Some(VhdError::TooSmall)
        );
        let fixed = new(Kind::Fixed, MIB).into_storage();
        let mut bad = fixed.clone();
        let n = bad.0.len();
        bad.0[n - 512 + 50] ^= 1; // the size, not the checksum
        assert_eq!(Vhd::open(bad).err(), Some(VhdError::BadFooter("checksum")));
        let mut v = new(Kind::Dynamic, 16 * MIB);
        v.write(0, &[1; 512]).unwrap();
        let dynamic = v.into_storage();
        // A BAT entry pointing past the end of the file.
        let mut bad = dynamic.clone();
        bad.0[1536..1540].copy_from_slice(&0x00F0_0000u32.to_be_bytes());
        assert_eq!(Vhd::open(bad).err(), Some(VhdError::BadBat));
        // A header whose checksum is wrong.
        let mut bad = dynamic.clone();
        bad.0[512 + 33] ^= 0x10;
        assert_eq!(Vhd::open(bad).err(), Some(VhdError::BadHeader("checksum")));
        // A differencing disk.
        let mut diff = dynamic.clone();
        let n = diff.0.len();
        let mut footer: [u8; 512] = diff.0[n - 512..].try_into().unwrap();
        footer[60..64].copy_from_slice(&4u32.to_be_bytes());
        let sum = checksum(&footer, 64);
        footer[64..68].copy_from_slice(&sum.to_be_bytes());
        diff.0[n - 512..].copy_from_slice(&footer);
        diff.0[..512].copy_from_slice(&footer);
        assert_eq!(Vhd::open(diff).err(), Some(VhdError::Unsupported(4)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random writes against a plain byte model, with reopens.
        #[test]
        fn writes_match_a_model(
            dynamic: bool,
            ops in proptest::collection::vec((0u64..(6 << 20), 1usize..20000, any::<u8>(), any::<bool>()), 1..12),
        ) {
            let kind = if dynamic { Kind::Dynamic } else { Kind::Fixed };
            let mut v = new(kind, 6 * MIB);
            let size = v.size();
            let mut model = vec![0u8; size as usize];
            for (at, len, seed, reopen) in ops {
                let at = at.min(size - 1);
                let len = len.min((size - at) as usize);
                let data = pattern(len, seed);
                v.write(at, &data).unwrap();
                model[at as usize..at as usize + len].copy_from_slice(&data);
                if reopen {
                    v = Vhd::open(v.into_storage()).unwrap();
                }
            }
            let mut all = vec![0u8; size as usize];
            v.read(0, &mut all).unwrap();
            prop_assert!(all == model);
        }

        /// The extents of any range are where `read` finds the bytes; a
        /// write through them is what `read` gives after a reopen.
        #[test]
        fn extents_are_where_the_bytes_are(
            dynamic: bool,
            writes in proptest::collection::vec((0u64..(6 << 20), 1usize..20000), 0..6),
            at in 0u64..(6 << 20),
            len in 1u64..(3 << 20),
            seed: u8,
        ) {
            let kind = if dynamic { Kind::Dynamic } else { Kind::Fixed };
            prop_assert!(super::extent_check::holds(new(kind, 6 * MIB), &writes, at, len, seed));
        }

        /// Any bytes: open answers, never panics; what opens reads.
        #[test]
        fn any_file_opens_or_is_refused(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            footer_at_end: bool,
        ) {
            let mut file = bytes;
            if footer_at_end && file.len() >= 512 {
                // A valid-looking footer over random content.
                let f = Footer {
                    disk_type: 3,
                    current_size: 1 << 20,
                    data_offset: 512,
                    timestamp: 0,
                    creator_app: *b"test",
                    unique_id: [0; 16],
                    geometry: geometry(2048),
                };
                let n = file.len();
                file[n - 512..].copy_from_slice(&f.encode());
            }
            if let Ok(mut v) = Vhd::open(MemoryStorage(file)) {
                let mut b = [0u8; 512];
                let _ = v.read(0, &mut b);
            }
        }
    }

    /// qemu-img is there (`cargo xtask test` installs it and requires it).
    fn qemu_img() -> bool {
        match std::process::Command::new("qemu-img")
            .arg("--version")
            .output()
        {
            Ok(o) if o.status.success() => true,
            _ if std::env::var("XTASK_REQUIRE_QEMU_IMG").as_deref() == Ok("1") => {
                panic!("qemu-img not found: apt-get install qemu-utils")
            }
            _ => {
                std::eprintln!("note: qemu-img not found, VHD interoperability check skipped");
                false
            }
        }
    }

    /// This test's own directory under the temporary one.
    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vhd-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn temp(name: &str) -> PathBuf {
        temp_dir().join(name)
    }

    /// The disk in the VHD at `image` as qemu-img converts it to raw.
    fn qemu_raw(image: &std::path::Path, raw: &std::path::Path) -> Vec<u8> {
        run(&[
            "convert",
            "-f",
            "vpc",
            "-O",
            "raw",
            image.to_str().unwrap(),
            raw.to_str().unwrap(),
        ]);
        std::fs::read(raw).unwrap()
    }

    fn run(args: &[&str]) {
        let out = std::process::Command::new("qemu-img")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Images qemu-img makes open here and take writes that qemu-img then
    /// reads; images made here read back through qemu-img the same.
    #[test]
    fn qemu_img_reads_ours_and_we_read_its() {
        if !qemu_img() {
            return;
        }
        for (subformat, kind) in [("dynamic", Kind::Dynamic), ("fixed", Kind::Fixed)] {
            // Theirs, written here.
            let path = temp(&format!("theirs-{subformat}.vhd"));
            let p = path.to_str().unwrap();
            run(&[
                "create",
                "-q",
                "-f",
                "vpc",
                "-o",
                &format!("subformat={subformat}"),
                p,
                "24M",
            ]);
            let mut v = Vhd::open(MemoryStorage(std::fs::read(&path).unwrap())).unwrap();
            assert_eq!(v.kind(), kind);
            let data = pattern(3 * MIB as usize, 9);
            v.write(MIB + 512, &data).unwrap();
            let size = v.size();
            std::fs::write(&path, &v.into_storage().0).unwrap();
            let raw = temp(&format!("theirs-{subformat}.raw"));
            let bytes = qemu_raw(&path, &raw);
            assert_eq!(
                bytes.len() as u64,
                size,
                "{subformat}: the size qemu-img sees"
            );
            assert_eq!(
                &bytes[(MIB + 512) as usize..][..data.len()],
                &data[..],
                "{subformat}"
            );
            assert!(bytes[..(MIB + 512) as usize].iter().all(|&b| b == 0));
            // Ours, read by qemu-img.
            let mut v = new(kind, 20 * MIB);
            v.write(7 * MIB - 100, &data).unwrap();
            let size = v.size();
            let ours = temp(&format!("ours-{subformat}.vhd"));
            std::fs::write(&ours, &v.into_storage().0).unwrap();
            let bytes = qemu_raw(&ours, &raw);
            assert_eq!(
                bytes.len() as u64,
                size,
                "{subformat}: our size, as qemu-img sees it"
            );
            assert_eq!(&bytes[(7 * MIB - 100) as usize..][..data.len()], &data[..]);
        }
        let _ = std::fs::remove_dir_all(temp_dir());
    }
}
