//! FAT32, as Microsoft's "FAT: General Overview of On-Disk Format" (1.03)
//! lays it out: the root partition's own disk keeps the administrator's VHD
//! files in it, so that standard tools (mtools, Linux, Windows) copy them in
//! and out.
//!
//! What is supported, and its limits (docs/storage.md): a FAT32 volume on
//! the whole disk or in the first FAT32 partition of an MBR; 512-byte
//! sectors; files in the root directory only; long names are read and
//! made (with a short alias); a file holds at
//! most 4 GiB - 1 byte, as FAT32 itself; files grow, and are never shrunk
//! or deleted here.
//!
//! Every value read from the disk is checked before it is used (the boot
//! sector's fields, every cluster number, chains that loop) and errors are
//! values. A file grows in an order that survives a crash at any point: its
//! new clusters are chained and marked in every FAT copy, then linked to the
//! file, then the data written, and its size in the directory entry last;
//! a cut before the size leaves lost clusters (what fsck frees), never a
//! file that reads what was not written.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use vmbus::scsi::{segments_len, sub_segments, BlockDevice, Segment, BLOCK_SIZE};

const SECTOR: u64 = BLOCK_SIZE as u64;
const ENTRY: usize = 32;
const FREE: u32 = 0;
const END_OF_CHAIN: u32 = 0x0FFF_FFFF;
/// Entries at or above this end a chain.
const END_MIN: u32 = 0x0FFF_FFF8;
const MASK: u32 = 0x0FFF_FFFF;
const ATTR_LONG_NAME: u8 = 0x0F;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_ARCHIVE: u8 = 0x20;
/// NTRes bits: the base name, the extension, shown in lower case.
const LOWER_BASE: u8 = 0x08;
const LOWER_EXT: u8 = 0x10;
/// The largest file FAT32 records.
pub const MAX_FILE: u64 = u32::MAX as u64;
/// The most bytes one device request moves.
const IO_CHUNK: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatError {
    /// The disk failed a read or write.
    Io,
    /// Not a FAT32 volume: what is wrong.
    NotFat32(&'static str),
    /// The volume's metadata contradicts itself: what is wrong.
    Damaged(&'static str),
    /// Not a valid 8.3 name for a new file.
    BadName,
    NotFound,
    Exists,
    /// No free cluster left.
    Full,
    /// Past FAT32's 4 GiB - 1 file size.
    TooLarge,
    /// Read past the end of the file.
    PastEnd,
}

impl core::fmt::Display for FatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FatError::Io => f.write_str("the disk failed a read or write"),
            FatError::NotFat32(why) => write!(f, "not a FAT32 volume ({why})"),
            FatError::Damaged(why) => write!(f, "the file system is damaged ({why})"),
            FatError::BadName => f.write_str(
                "not a file name (1-255 characters, none of \\ / : * ? \" < > | or control characters)",
            ),
            FatError::NotFound => f.write_str("no such file"),
            FatError::Exists => f.write_str("the file exists already"),
            FatError::Full => f.write_str("the disk is full"),
            FatError::TooLarge => f.write_str("a FAT32 file holds at most 4 GiB - 1 byte"),
            FatError::PastEnd => f.write_str("read past the end of the file"),
        }
    }
}

impl From<vmbus::scsi::IoError> for FatError {
    fn from(_: vmbus::scsi::IoError) -> Self {
        FatError::Io
    }
}

/// A file's place on the disk: its directory entry and its clusters, as
/// runs of consecutive clusters (usually one: files copied to a fresh
/// volume are contiguous).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// As a directory listing shows it: the long name if there is one.
    pub name: String,
    /// Byte offset of its 32-byte short entry from the volume's start.
    entry: u64,
    size: u64,
    runs: Vec<(u32, u32)>,
}

impl File {
    pub fn size(&self) -> u64 {
        self.size
    }

    fn clusters(&self) -> u64 {
        self.runs.iter().map(|&(_, n)| u64::from(n)).sum()
    }

    fn last_cluster(&self) -> Option<u32> {
        self.runs.last().map(|&(s, n)| s + n - 1)
    }
}

/// A line of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub size: u64,
    pub directory: bool,
    /// What is wrong with a file's chain, if anything (it cannot be opened;
    /// the other files can).
    pub damaged: Option<&'static str>,
    /// Its 11-byte short name.
    pub short: [u8; 11],
}

/// A mounted FAT32 volume on `disk`.
pub struct Volume<D: BlockDevice> {
    disk: D,
    /// The volume's first sector on the disk.
    start: u64,
    cluster_bytes: u64,
    sectors_per_cluster: u64,
    /// First sector of the first FAT, relative to `start`.
    fat_start: u64,
    fat_sectors: u64,
    fats: u64,
    /// Sector of cluster 2, relative to `start`.
    data_start: u64,
    /// Valid cluster numbers are `2..clusters + 2`.
    clusters: u32,
    root_cluster: u32,
    fsinfo: Option<u64>,
    free: u32,
    next_free: u32,
    label: [u8; 11],
    /// One FAT sector (of the first FAT), written to every copy when dirty.
    cache: Option<(u64, [u8; 512], bool)>,
}

/// What the boot sector says, checked (`Volume`'s fields but the disk
/// and the running state).
struct Layout {
    start: u64,
    sectors_per_cluster: u64,
    fat_start: u64,
    fat_sectors: u64,
    fats: u64,
    data_start: u64,
    clusters: u32,
    root_cluster: u32,
    fsinfo: Option<u64>,
    label: [u8; 11],
}

/// The volume's layout from its boot sector (or its MBR's first FAT32
/// partition's), checked.
fn read_layout<D: BlockDevice>(disk: &mut D) -> Result<Layout, FatError> {
    let mut s0 = [0u8; 512];
    if disk.blocks() == 0 {
        return Err(FatError::NotFat32("the disk is empty"));
    }
    disk.read(0, &mut s0)?;
    let mut start = 0;
    if !looks_like_fat(&s0) && s0[510..] == [0x55, 0xAA] {
        // An MBR: the first partition of a FAT32 type (0x0B, 0x0C).
        let found = (0..4).find_map(|i| {
            let p = &s0[446 + 16 * i..462 + 16 * i];
            matches!(p[4], 0x0B | 0x0C).then(|| u64::from(le32(p, 8)))
        });
        let Some(lba) = found else {
            return Err(FatError::NotFat32("no FAT32 boot sector or partition"));
        };
        if lba == 0 || lba >= disk.blocks() {
            return Err(FatError::NotFat32("the partition starts outside the disk"));
        }
        start = lba;
        disk.read(start, &mut s0)?;
    }
    if !looks_like_fat(&s0) {
        return Err(FatError::NotFat32("no FAT boot sector"));
    }
    if le16(&s0, 11) != 512 {
        return Err(FatError::NotFat32("sectors are not 512 bytes"));
    }
    let spc = u64::from(s0[13]);
    if spc == 0 || !spc.is_power_of_two() || spc > 128 {
        return Err(FatError::NotFat32("bad sectors per cluster"));
    }
    let reserved = u64::from(le16(&s0, 14));
    let fats = u64::from(s0[16]);
    if le16(&s0, 17) != 0 || le16(&s0, 22) != 0 {
        return Err(FatError::NotFat32(
            "FAT12 or FAT16: format it FAT32 (mformat -F)",
        ));
    }
    let total = match le16(&s0, 19) {
        0 => u64::from(le32(&s0, 32)),
        n => u64::from(n),
    };
    let fat_sectors = u64::from(le32(&s0, 36));
    if reserved == 0 || fats == 0 || fats > 4 || fat_sectors == 0 {
        return Err(FatError::NotFat32(
            "bad reserved sectors, FAT count or FAT size",
        ));
    }
    if start + total > disk.blocks() {
        return Err(FatError::NotFat32("the volume is larger than the disk"));
    }
    let data_start = reserved + fats * fat_sectors;
    if data_start >= total {
        return Err(FatError::NotFat32("no data area"));
    }
    let clusters = (total - data_start) / spc;
    if clusters < 65525 {
        return Err(FatError::NotFat32("too few clusters for FAT32"));
    }
    // Entries the FAT has room for (the first two are reserved).
    let clusters = clusters.min(fat_sectors * 128 - 2).min(0x0FFF_FFF5) as u32;
    // ExtFlags bit 7: only one FAT is active, not mirrored.
    if le16(&s0, 40) & 0x80 != 0 {
        return Err(FatError::NotFat32(
            "FAT mirroring is disabled (not supported)",
        ));
    }
    let root_cluster = le32(&s0, 44);
    let fsinfo = match le16(&s0, 48) {
        0 | 0xFFFF => None,
        n if u64::from(n) < reserved => Some(u64::from(n)),
        _ => None,
    };
    let mut label = [b' '; 11];
    label.copy_from_slice(&s0[71..82]);
    Ok(Layout {
        start,
        sectors_per_cluster: spc,
        fat_start: reserved,
        fat_sectors,
        fats,
        data_start,
        clusters,
        root_cluster,
        fsinfo,
        label,
    })
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The 11-byte short name and its NTRes case bits for `name`, if it is a
/// valid 8.3 name (a name of one case: mixed case has no short form).
pub fn short_name(name: &str) -> Option<([u8; 11], u8)> {
    let name = name.strip_prefix('/').unwrap_or(name);
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) => (b, e),
        None => (name, ""),
    };
    if base.is_empty() || base.len() > 8 || ext.len() > 3 {
        return None;
    }
    let valid = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_-~!#$%&'()@^{}".contains(&c))
    };
    if !valid(base) || !valid(ext) {
        return None;
    }
    let case = |s: &str, bit: u8| -> Option<u8> {
        let lower = s.bytes().any(|c| c.is_ascii_lowercase());
        let upper = s.bytes().any(|c| c.is_ascii_uppercase());
        match (lower, upper) {
            (true, true) => None,
            (true, false) => Some(bit),
            _ => Some(0),
        }
    };
    let bits = case(base, LOWER_BASE)? | case(ext, LOWER_EXT)?;
    let mut out = [b' '; 11];
    for (o, c) in out.iter_mut().zip(base.bytes()) {
        *o = c.to_ascii_uppercase();
    }
    for (o, c) in out[8..].iter_mut().zip(ext.bytes()) {
        *o = c.to_ascii_uppercase();
    }
    Some((out, bits))
}

/// A name a long-name entry may hold: 1-255 characters, none of the
/// reserved ones.
fn valid_long_name(name: &str) -> bool {
    !name.is_empty()
        && name.encode_utf16().count() <= 255
        && name != "."
        && name != ".."
        && !name.ends_with('.')
        && !name.ends_with(' ')
        && !name
            .chars()
            .any(|c| (c as u32) < 0x20 || "\"*/:<>?\\|".contains(c))
}

/// How a listing shows a short entry: `NAME.EXT`, lower case where NTRes says.
fn display_short(raw: &[u8], nt: u8) -> String {
    let part = |b: &[u8], lower: bool| -> String {
        let s = b.iter().rev().skip_while(|&&c| c == b' ').count();
        b[..s]
            .iter()
            .map(|&c| {
                let c = if c == 0x05 { 0xE5 } else { c };
                let c = if c.is_ascii() { c as char } else { '?' };
                if lower {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect()
    };
    let mut s = part(&raw[..8], nt & LOWER_BASE != 0);
    let ext = part(&raw[8..11], nt & LOWER_EXT != 0);
    if !ext.is_empty() {
        s.push('.');
        s.push_str(&ext);
    }
    s
}

/// The checksum of a short name that its long-name entries carry.
fn short_checksum(raw: &[u8]) -> u8 {
    raw[..11]
        .iter()
        .fold(0u8, |sum, &c| sum.rotate_right(1).wrapping_add(c))
}

/// Where a long-name entry keeps its 13 UTF-16 units.
const LFN_UNITS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/// Collects the long name spread over the entries before a short entry.
#[derive(Default)]
struct LongName {
    /// UTF-16 units by entry ordinal (1-based).
    parts: Vec<(u8, [u16; 13])>,
    checksum: u8,
}

impl LongName {
    fn add(&mut self, e: &[u8]) {
        let ord = e[0];
        if ord & 0x40 != 0 {
            self.parts.clear();
        }
        // A long name has at most 20 parts (255 characters): more is damage.
        if self.parts.len() >= 20 {
            return;
        }
        let mut units = [0u16; 13];
        for (u, &o) in units.iter_mut().zip(LFN_UNITS.iter()) {
            *u = le16(e, o);
        }
        self.checksum = e[13];
        self.parts.push((ord & 0x3F, units));
    }

    /// The long name, if these parts belong to the short entry `raw`.
    fn take(&mut self, raw: &[u8]) -> Option<String> {
        let parts = core::mem::take(&mut self.parts);
        if parts.is_empty() || self.checksum != short_checksum(raw) {
            return None;
        }
        let mut ordered = parts;
        ordered.sort_by_key(|p| p.0);
        let units: Vec<u16> = ordered
            .iter()
            .flat_map(|p| p.1.iter().copied())
            .take_while(|&u| u != 0)
            .collect();
        Some(
            char::decode_utf16(units)
                .map(|c| c.unwrap_or('?'))
                .collect(),
        )
    }
}

impl<D: BlockDevice> Volume<D> {
    /// Mounts the FAT32 volume on `disk` (whole disk, or the first FAT32
    /// partition of its MBR) and counts its free clusters.
    pub fn open(disk: D) -> Result<Self, FatError> {
        Self::mount(disk).map_err(|(e, _)| e)
    }

    /// As [`Volume::open`], giving the disk back when there is no volume
    /// on it (the root keeps its device to say so, and to format it).
    pub fn mount(mut disk: D) -> Result<Self, (FatError, D)> {
        let l = match read_layout(&mut disk) {
            Ok(l) => l,
            Err(e) => return Err((e, disk)),
        };
        let mut v = Volume {
            disk,
            start: l.start,
            cluster_bytes: l.sectors_per_cluster * SECTOR,
            sectors_per_cluster: l.sectors_per_cluster,
            fat_start: l.fat_start,
            fat_sectors: l.fat_sectors,
            fats: l.fats,
            data_start: l.data_start,
            clusters: l.clusters,
            root_cluster: l.root_cluster,
            fsinfo: l.fsinfo,
            free: 0,
            next_free: 2,
            label: l.label,
            cache: None,
        };
        if !v.valid_cluster(v.root_cluster) {
            return Err((
                FatError::Damaged("the root directory's cluster is outside the volume"),
                v.disk,
            ));
        }
        match v.count_free() {
            Ok(free) => v.free = free,
            Err(e) => return Err((e, v.disk)),
        }
        Ok(v)
    }

    fn valid_cluster(&self, c: u32) -> bool {
        c >= 2 && c - 2 < self.clusters
    }

    fn count_free(&mut self) -> Result<u32, FatError> {
        let mut free = 0;
        let mut buf = vec![0u8; IO_CHUNK];
        let entries = u64::from(self.clusters) + 2;
        let sectors = (entries * 4).div_ceil(SECTOR);
        let mut at = 0;
        while at < sectors {
            let n = (sectors - at).min(buf.len() as u64 / SECTOR);
            let bytes = &mut buf[..(n * SECTOR) as usize];
            self.disk.read(self.start + self.fat_start + at, bytes)?;
            for (i, e) in bytes.chunks_exact(4).enumerate() {
                let cluster = at * 128 + i as u64;
                if (2..entries).contains(&cluster) && le32(e, 0) & MASK == FREE {
                    free += 1;
                }
            }
            at += n;
        }
        Ok(free)
    }

    pub fn label(&self) -> String {
        display_short(&self.label, 0)
    }

    pub fn free_bytes(&self) -> u64 {
        u64::from(self.free) * self.cluster_bytes
    }

    pub fn total_bytes(&self) -> u64 {
        u64::from(self.clusters) * self.cluster_bytes
    }

    pub fn cluster_bytes(&self) -> u64 {
        self.cluster_bytes
    }

    /// The disk the volume is on.
    pub fn disk(&mut self) -> &mut D {
        &mut self.disk
    }

    fn cluster_sector(&self, c: u32) -> u64 {
        self.start + self.data_start + u64::from(c - 2) * self.sectors_per_cluster
    }

    fn load_fat_sector(&mut self, sector: u64) -> Result<&mut [u8; 512], FatError> {
        if self.cache.as_ref().is_none_or(|c| c.0 != sector) {
            self.write_back()?;
            let mut b = [0u8; 512];
            self.disk
                .read(self.start + self.fat_start + sector, &mut b)?;
            self.cache = Some((sector, b, false));
        }
        Ok(&mut self.cache.as_mut().ok_or(FatError::Io)?.1)
    }

    /// Writes the cached FAT sector to every FAT copy if it changed.
    fn write_back(&mut self) -> Result<(), FatError> {
        if let Some((sector, b, true)) = self.cache {
            for copy in 0..self.fats {
                let lba = self.start + self.fat_start + copy * self.fat_sectors + sector;
                self.disk.write(lba, &b)?;
            }
            if let Some(c) = self.cache.as_mut() {
                c.2 = false;
            }
        }
        Ok(())
    }

    fn entry(&mut self, c: u32) -> Result<u32, FatError> {
        let at = u64::from(c) * 4;
        let b = self.load_fat_sector(at / SECTOR)?;
        Ok(le32(b, (at % SECTOR) as usize) & MASK)
    }

    fn set_entry(&mut self, c: u32, value: u32) -> Result<(), FatError> {
        let at = u64::from(c) * 4;
        let b = self.load_fat_sector(at / SECTOR)?;
        let o = (at % SECTOR) as usize;
        // The top four bits are reserved: kept as they are.
        let v = (le32(b, o) & !MASK) | (value & MASK);
        b[o..o + 4].copy_from_slice(&v.to_le_bytes());
        if let Some(c) = self.cache.as_mut() {
            c.2 = true;
        }
        Ok(())
    }

    /// The runs of the chain that starts at `first`.
    fn chain(&mut self, first: u32) -> Result<Vec<(u32, u32)>, FatError> {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        if first == 0 {
            return Ok(runs);
        }
        let mut c = first;
        let mut steps = 0u32;
        loop {
            if !self.valid_cluster(c) {
                return Err(FatError::Damaged(
                    "a chain names a cluster outside the volume",
                ));
            }
            steps += 1;
            if steps > self.clusters {
                return Err(FatError::Damaged("a chain loops"));
            }
            match runs.last_mut() {
                Some((s, n)) if *s + *n == c => *n += 1,
                _ => runs.push((c, 1)),
            }
            let next = self.entry(c)?;
            if next >= END_MIN {
                return Ok(runs);
            }
            if next == FREE {
                return Err(FatError::Damaged("a chain runs into a free cluster"));
            }
            c = next;
        }
    }

    /// Each 32-byte entry of the root directory, with its byte offset from
    /// the volume's start; `visit` returns `true` to stop.
    fn walk_root(
        &mut self,
        mut visit: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<Vec<(u32, u32)>, FatError> {
        let runs = self.chain(self.root_cluster)?;
        let mut buf = vec![0u8; self.cluster_bytes as usize];
        for &(s, n) in &runs {
            for c in s..s + n {
                let lba = self.cluster_sector(c);
                self.disk.read(lba, &mut buf)?;
                for (i, e) in buf.chunks_exact(ENTRY).enumerate() {
                    let at = (lba - self.start) * SECTOR + (i * ENTRY) as u64;
                    if visit(at, e) {
                        return Ok(runs);
                    }
                }
            }
        }
        Ok(runs)
    }

    /// Every file and directory in the root directory (not the volume
    /// label, `.` or deleted entries).
    pub fn list(&mut self) -> Result<Vec<(DirEntry, File)>, FatError> {
        let mut out = Vec::new();
        let mut long = LongName::default();
        self.walk_root(|at, e| {
            match e[0] {
                0x00 => return true,
                0xE5 => {
                    long.parts.clear();
                    return false;
                }
                _ => {}
            }
            let attr = e[11];
            if attr & 0x3F == ATTR_LONG_NAME {
                long.add(e);
                return false;
            }
            let long_name = long.take(e);
            if attr & ATTR_VOLUME_ID != 0 || e[0] == b'.' {
                return false;
            }
            let first = (u32::from(le16(e, 20)) << 16) | u32::from(le16(e, 26));
            let name = long_name.unwrap_or_else(|| display_short(&e[..11], e[12]));
            let size = u64::from(le32(e, 28));
            let mut short = [0u8; 11];
            short.copy_from_slice(&e[..11]);
            out.push((
                DirEntry {
                    name: name.clone(),
                    size,
                    directory: attr & ATTR_DIRECTORY != 0,
                    damaged: None,
                    short,
                },
                (first, name, at, size),
            ));
            false
        })?;
        let mut files = Vec::new();
        for (mut d, (first, name, at, size)) in out {
            let runs = if d.directory {
                Vec::new()
            } else {
                match self.chain(first) {
                    Ok(r) => r,
                    Err(FatError::Damaged(why)) => {
                        d.damaged = Some(why);
                        Vec::new()
                    }
                    Err(e) => return Err(e),
                }
            };
            let file = File {
                name,
                entry: at,
                size,
                runs,
            };
            if !d.directory && d.damaged.is_none() && file.clusters() * self.cluster_bytes < size {
                d.damaged = Some("a file is longer than its clusters");
            }
            files.push((d, file));
        }
        Ok(files)
    }

    /// Opens the file `name` of the root directory (its long or short
    /// name, any case; a leading `/` is allowed).
    pub fn open_file(&mut self, name: &str) -> Result<File, FatError> {
        let name = name.strip_prefix('/').unwrap_or(name);
        let short = short_name(name).map(|s| display_short(&s.0, 0));
        let matches = |n: &str| {
            n.eq_ignore_ascii_case(name)
                || short.as_deref().is_some_and(|s| n.eq_ignore_ascii_case(s))
        };
        // Listing gives the long name; the short one matches too.
        let mut short_hit = None;
        if let Some(s) = short_name(name) {
            self.walk_root(|at, e| {
                if e[0] == 0 {
                    return true;
                }
                if e[0] != 0xE5 && e[11] & 0x3F != ATTR_LONG_NAME && e[..11] == s.0 {
                    short_hit = Some(at);
                    return true;
                }
                false
            })?;
        }
        for (d, f) in self.list()? {
            if (matches(&d.name) || short_hit == Some(f.entry)) && !d.directory {
                return match d.damaged {
                    Some(why) => Err(FatError::Damaged(why)),
                    None => Ok(f),
                };
            }
        }
        Err(FatError::NotFound)
    }

    /// Makes an empty file `name` in the root directory; `stamp` is its
    /// FAT (date, time). A name that is not 8.3 gets long-name entries and
    /// a short alias (`WEB~1.VHD` for `web.vhdx`).
    pub fn create(&mut self, name: &str, stamp: (u16, u16)) -> Result<File, FatError> {
        let name = name.strip_prefix('/').unwrap_or(name);
        if !valid_long_name(name) {
            return Err(FatError::BadName);
        }
        // Any entry of that name, long or short: files, directories, the
        // label (walked raw: a label is not listed).
        let short = short_name(name).map(|s| s.0);
        let mut label_or_short = false;
        self.walk_root(|_, e| {
            if e[0] == 0 {
                return true;
            }
            if e[0] != 0xE5 && e[11] & 0x3F != ATTR_LONG_NAME && short.is_some_and(|s| e[..11] == s)
            {
                label_or_short = true;
                return true;
            }
            false
        })?;
        let taken = self
            .list()?
            .iter()
            .any(|(d, _)| d.name.eq_ignore_ascii_case(name) || short.is_some_and(|s| d.short == s));
        if taken || label_or_short {
            return Err(FatError::Exists);
        }
        let (raw, case, long) = match short_name(name) {
            Some((raw, case)) => (raw, case, None),
            None => (self.alias(name)?, 0, Some(name)),
        };
        let units: Vec<u16> = long.map_or(Vec::new(), |l| l.encode_utf16().collect());
        let need = 1 + units.len().div_ceil(13);
        // `need` consecutive free entries, the directory grown if needed.
        let mut run: Vec<u64> = Vec::new();
        let mut found = false;
        let chain = self.walk_root(|at, e| {
            if e[0] == 0x00 || e[0] == 0xE5 {
                run.push(at);
                found = run.len() == need;
                return found;
            }
            run.clear();
            false
        })?;
        let mut last = chain
            .last()
            .map(|&(s, n)| s + n - 1)
            .ok_or(FatError::Damaged("the root directory has no cluster"))?;
        while run.len() < need {
            // Zeroed before it is linked: a cut never leaves old bytes in
            // the directory.
            let c = self.allocate(1, None)?;
            let zeros = vec![0u8; self.cluster_bytes as usize];
            self.disk.write(self.cluster_sector(c), &zeros)?;
            self.set_entry(last, c)?;
            self.write_back()?;
            let base = (self.cluster_sector(c) - self.start) * SECTOR;
            for i in 0..self.cluster_bytes / ENTRY as u64 {
                run.push(base + i * ENTRY as u64);
            }
            last = c;
        }
        let sum = short_checksum(&raw);
        let parts = need - 1;
        for (k, &at) in run[..parts].iter().enumerate() {
            // The first entry on the disk holds the last part.
            let ord = parts - k;
            let mut e = [0u8; ENTRY];
            e[0] = ord as u8 | if k == 0 { 0x40 } else { 0 };
            e[11] = ATTR_LONG_NAME;
            e[13] = sum;
            for (j, &o) in LFN_UNITS.iter().enumerate() {
                let i = (ord - 1) * 13 + j;
                let u = match i.cmp(&units.len()) {
                    core::cmp::Ordering::Less => units[i],
                    core::cmp::Ordering::Equal => 0,
                    core::cmp::Ordering::Greater => 0xFFFF,
                };
                e[o..o + 2].copy_from_slice(&u.to_le_bytes());
            }
            self.write_bytes(at, &e)?;
        }
        let at = run[parts];
        let mut e = [0u8; ENTRY];
        e[..11].copy_from_slice(&raw);
        e[11] = ATTR_ARCHIVE;
        e[12] = case;
        let (date, time) = stamp;
        e[14..16].copy_from_slice(&time.to_le_bytes());
        e[16..18].copy_from_slice(&date.to_le_bytes());
        e[18..20].copy_from_slice(&date.to_le_bytes());
        e[22..24].copy_from_slice(&time.to_le_bytes());
        e[24..26].copy_from_slice(&date.to_le_bytes());
        self.write_bytes(at, &e)?;
        Ok(File {
            name: long.map_or_else(|| display_short(&raw, case), String::from),
            entry: at,
            size: 0,
            runs: Vec::new(),
        })
    }

    /// A short name for long name `name` that no entry has: the first six
    /// valid characters of its base, `~N`, the first three of its extension.
    fn alias(&mut self, name: &str) -> Result<[u8; 11], FatError> {
        let mut taken: Vec<[u8; 11]> = Vec::new();
        self.walk_root(|_, e| {
            if e[0] == 0 {
                return true;
            }
            if e[0] != 0xE5 && e[11] & 0x3F != ATTR_LONG_NAME {
                let mut n = [0u8; 11];
                n.copy_from_slice(&e[..11]);
                taken.push(n);
            }
            false
        })?;
        let (base, ext) = match name.rsplit_once('.') {
            Some((b, e)) if !b.is_empty() => (b, e),
            _ => (name, ""),
        };
        let clean = |s: &str| -> Vec<u8> {
            s.bytes()
                .filter(|&c| c != b' ' && c != b'.')
                .map(|c| {
                    let c = c.to_ascii_uppercase();
                    if c.is_ascii_alphanumeric() || b"_-~!#$%&'()@^{}".contains(&c) {
                        c
                    } else {
                        b'_'
                    }
                })
                .collect()
        };
        let (base, ext) = (clean(base), clean(ext));
        for n in 1..1_000_000u32 {
            let tail = alloc::format!("~{n}");
            let keep = (8 - tail.len()).min(base.len());
            let mut raw = [b' '; 11];
            raw[..keep].copy_from_slice(&base[..keep]);
            raw[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
            for (o, &c) in raw[8..].iter_mut().zip(ext.iter()) {
                *o = c;
            }
            if !taken.contains(&raw) {
                return Ok(raw);
            }
        }
        Err(FatError::Full)
    }

    /// Reads `out.len()` bytes at byte `at` from the volume's start.
    fn read_bytes(&mut self, at: u64, out: &mut [u8]) -> Result<(), FatError> {
        let first = at / SECTOR;
        let last = (at + out.len() as u64).div_ceil(SECTOR);
        let mut buf = vec![0u8; ((last - first) * SECTOR) as usize];
        self.disk.read(self.start + first, &mut buf)?;
        let o = (at - first * SECTOR) as usize;
        out.copy_from_slice(&buf[o..o + out.len()]);
        Ok(())
    }

    /// Writes `data` at byte `at` from the volume's start (read, modify,
    /// write of the sectors it touches).
    fn write_bytes(&mut self, at: u64, data: &[u8]) -> Result<(), FatError> {
        let first = at / SECTOR;
        let last = (at + data.len() as u64).div_ceil(SECTOR);
        let mut buf = vec![0u8; ((last - first) * SECTOR) as usize];
        self.disk.read(self.start + first, &mut buf)?;
        let o = (at - first * SECTOR) as usize;
        buf[o..o + data.len()].copy_from_slice(data);
        self.disk.write(self.start + first, &buf)?;
        Ok(())
    }

    /// Takes `n` free clusters, chains them, and links the chain after
    /// `after` (or leaves it unlinked: the caller records the first). The
    /// new chain is complete in every FAT before it is linked.
    fn allocate(&mut self, n: u32, after: Option<u32>) -> Result<u32, FatError> {
        if n == 0 || n > self.free {
            return Err(FatError::Full);
        }
        // Each free cluster found is chained to the one before (no list:
        // a growth may take a million clusters); none is reachable until
        // the chain is complete and linked below.
        let mut c = if self.valid_cluster(self.next_free) {
            self.next_free
        } else {
            2
        };
        let (mut first, mut last) = (None, 0u32);
        let (mut taken, mut looked) = (0u32, 0u32);
        while taken < n {
            if looked >= self.clusters {
                return Err(FatError::Full);
            }
            if self.entry(c)? == FREE {
                self.set_entry(c, END_OF_CHAIN)?;
                match first {
                    None => first = Some(c),
                    Some(_) => self.set_entry(last, c)?,
                }
                last = c;
                taken += 1;
            }
            looked += 1;
            c = if c > self.clusters { 2 } else { c + 1 };
        }
        let first = first.ok_or(FatError::Full)?;
        self.write_back()?;
        if let Some(prev) = after {
            self.set_entry(prev, first)?;
            self.write_back()?;
        }
        self.free -= n;
        self.next_free = c;
        Ok(first)
    }

    /// The disk sector holding byte `offset` of `f`, and how many bytes
    /// from there are contiguous on the disk (to the end of its run).
    fn locate(&self, f: &File, offset: u64) -> Option<(u64, u64)> {
        let mut index = offset / self.cluster_bytes;
        for &(s, n) in &f.runs {
            if index < u64::from(n) {
                let c = s + index as u32;
                let within = offset % self.cluster_bytes;
                let lba = self.cluster_sector(c) + within / SECTOR;
                let contiguous = (u64::from(n) - index) * self.cluster_bytes - within;
                return Some((lba, contiguous));
            }
            index -= u64::from(n);
        }
        None
    }

    /// Reads `buf.len()` bytes of `f` at `offset` (inside the file).
    pub fn read(&mut self, f: &File, offset: u64, buf: &mut [u8]) -> Result<(), FatError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or(FatError::PastEnd)?;
        if end > f.size {
            return Err(FatError::PastEnd);
        }
        self.transfer(f, offset, Transfer::Read(buf))
    }

    /// Reads bytes of `f` from `offset` straight into the memory `to`
    /// names (whole sectors inside the file): one transfer of the disk's
    /// own per contiguous run of clusters, no buffer between.
    pub fn read_to(&mut self, f: &File, offset: u64, to: &[Segment]) -> Result<(), FatError> {
        self.direct(f, offset, to, false)
    }

    /// Writes the bytes `from` names over `f` from `offset` (whole sectors
    /// inside the file, which does not grow), as [`read_to`](Self::read_to).
    pub fn write_from(&mut self, f: &File, offset: u64, from: &[Segment]) -> Result<(), FatError> {
        self.direct(f, offset, from, true)
    }

    fn direct(
        &mut self,
        f: &File,
        offset: u64,
        segments: &[Segment],
        write: bool,
    ) -> Result<(), FatError> {
        let len = segments_len(segments) as u64;
        let end = offset.checked_add(len).ok_or(FatError::PastEnd)?;
        if end > f.size || !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) {
            return Err(FatError::PastEnd);
        }
        let mut done = 0u64;
        while done < len {
            let (lba, contiguous) = self
                .locate(f, offset + done)
                .ok_or(FatError::Damaged("a file is shorter than its size"))?;
            let n = contiguous.min(len - done);
            let part = sub_segments(segments, done as usize, n as usize);
            if write {
                self.disk.write_from(lba, &part)?;
            } else {
                self.disk.read_to(lba, &part)?;
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data` to `f` at `offset`, growing the file if it ends past
    /// the end (the gap reads as zeros).
    pub fn write(&mut self, f: &mut File, offset: u64, data: &[u8]) -> Result<(), FatError> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FatError::TooLarge)?;
        if end > MAX_FILE {
            return Err(FatError::TooLarge);
        }
        let old = f.size;
        if end > old {
            self.reserve(f, end)?;
            if offset > old {
                self.zero(f, old, offset)?;
            }
        }
        self.transfer(f, offset, Transfer::Write(data))?;
        if end > old {
            self.set_size(f, end)?;
        }
        Ok(())
    }

    /// Grows `f` to `len` bytes of zeros past its end.
    pub fn extend(&mut self, f: &mut File, len: u64) -> Result<(), FatError> {
        if len > MAX_FILE {
            return Err(FatError::TooLarge);
        }
        if len <= f.size {
            return Ok(());
        }
        self.reserve(f, len)?;
        let old = f.size;
        self.zero(f, old, len)?;
        self.set_size(f, len)
    }

    fn zero(&mut self, f: &File, from: u64, to: u64) -> Result<(), FatError> {
        let zeros = vec![0u8; IO_CHUNK.min((to - from) as usize)];
        let mut at = from;
        while at < to {
            let n = (to - at).min(zeros.len() as u64) as usize;
            self.transfer(f, at, Transfer::Write(&zeros[..n]))?;
            at += n as u64;
        }
        Ok(())
    }

    /// Gives `f` the clusters to hold `len` bytes (its size unchanged).
    fn reserve(&mut self, f: &mut File, len: u64) -> Result<(), FatError> {
        let need = len.div_ceil(self.cluster_bytes);
        let have = f.clusters();
        if need <= have {
            return Ok(());
        }
        let n = u32::try_from(need - have).map_err(|_| FatError::TooLarge)?;
        let first = self.allocate(n, f.last_cluster())?;
        // The chain is on the disk before anything names it: a disk that
        // reorders cached writes must not keep the link without the chain
        // (the clusters would still read as free and be given out twice).
        self.barrier()?;
        if f.runs.is_empty() {
            // A file without clusters: its entry names the first one, both
            // halves in one write (one sector: a cut leaves old or new,
            // never half a cluster number).
            let mut field = [0u8; 8];
            self.read_bytes(f.entry + 20, &mut field)?;
            field[..2].copy_from_slice(&((first >> 16) as u16).to_le_bytes());
            field[6..].copy_from_slice(&(first as u16).to_le_bytes());
            self.write_bytes(f.entry + 20, &field)?;
        }
        // Only the new part of the chain is walked (walking all of it at
        // every growth would make a file's growth quadratic).
        for (s, n) in self.chain(first)? {
            match f.runs.last_mut() {
                Some((ls, ln)) if *ls + *ln == s => *ln += n,
                _ => f.runs.push((s, n)),
            }
        }
        Ok(())
    }

    /// Whatever was written so far is on the disk before what follows (a
    /// flush: the disk's cache may reorder writes between flushes).
    fn barrier(&mut self) -> Result<(), FatError> {
        self.write_back()?;
        self.disk.flush()?;
        Ok(())
    }

    /// The file's new size, after its clusters, link and data are on the
    /// disk (a cut never leaves a size covering what was not written).
    fn set_size(&mut self, f: &mut File, len: u64) -> Result<(), FatError> {
        self.barrier()?;
        let size = u32::try_from(len).map_err(|_| FatError::TooLarge)?;
        self.write_bytes(f.entry + 28, &size.to_le_bytes())?;
        f.size = len;
        Ok(())
    }

    fn transfer(&mut self, f: &File, mut offset: u64, mut t: Transfer) -> Result<(), FatError> {
        let mut done = 0usize;
        let total = t.len();
        let mut bounce = [0u8; 512];
        while done < total {
            let (lba, contiguous) = self
                .locate(f, offset)
                .ok_or(FatError::Damaged("a file is shorter than its size"))?;
            let within = (offset % SECTOR) as usize;
            let left = total - done;
            if within != 0 || left < SECTOR as usize {
                // A partial sector: through a bounce buffer.
                let n = (SECTOR as usize - within).min(left);
                self.disk.read(lba, &mut bounce)?;
                match &mut t {
                    Transfer::Read(b) => {
                        b[done..done + n].copy_from_slice(&bounce[within..within + n])
                    }
                    Transfer::Write(d) => {
                        bounce[within..within + n].copy_from_slice(&d[done..done + n]);
                        self.disk.write(lba, &bounce)?;
                    }
                }
                done += n;
                offset += n as u64;
                continue;
            }
            let n = (left as u64 / SECTOR * SECTOR)
                .min(contiguous)
                .min(IO_CHUNK as u64) as usize;
            match &mut t {
                Transfer::Read(b) => self.disk.read(lba, &mut b[done..done + n])?,
                Transfer::Write(d) => self.disk.write(lba, &d[done..done + n])?,
            }
            done += n;
            offset += n as u64;
        }
        Ok(())
    }

    /// Writes the FSInfo sector's free count and hint, then flushes the disk.
    pub fn flush(&mut self) -> Result<(), FatError> {
        self.write_back()?;
        if let Some(s) = self.fsinfo {
            let mut b = [0u8; 512];
            self.disk.read(self.start + s, &mut b)?;
            if le32(&b, 0) == 0x4161_5252 && le32(&b, 484) == 0x6141_7272 {
                b[488..492].copy_from_slice(&self.free.to_le_bytes());
                b[492..496].copy_from_slice(&self.next_free.to_le_bytes());
                self.disk.write(self.start + s, &b)?;
            }
        }
        self.disk.flush()?;
        Ok(())
    }
}

enum Transfer<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Transfer<'_> {
    fn len(&self) -> usize {
        match self {
            Transfer::Read(b) => b.len(),
            Transfer::Write(d) => d.len(),
        }
    }
}

fn looks_like_fat(s: &[u8; 512]) -> bool {
    s[510..] == [0x55, 0xAA] && matches!(s[0], 0xEB | 0xE9) && le16(s, 11) != 0
}

/// A FAT (date, time) from a calendar time (years 1980-2107).
pub fn stamp(year: u32, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> (u16, u16) {
    let y = year.clamp(1980, 2107) - 1980;
    let date = (y << 9) as u16 | (u16::from(month) << 5) | u16::from(day);
    let time = (u16::from(hour) << 11) | (u16::from(minute) << 5) | u16::from(second / 2);
    (date, time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;
    use std::process::Command;
    use std::string::ToString;
    use vmbus::scsi::IoError;

    /// A disk in memory whose writes fail after `budget` of them (a power
    /// cut); `None`: no limit.
    #[derive(Clone)]
    struct TestDisk {
        bytes: Vec<u8>,
        budget: Option<usize>,
    }

    impl BlockDevice for TestDisk {
        fn blocks(&self) -> u64 {
            (self.bytes.len() / 512) as u64
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
            let at = lba as usize * 512;
            buf.copy_from_slice(self.bytes.get(at..at + buf.len()).ok_or(IoError)?);
            Ok(())
        }
        fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
            if let Some(b) = self.budget.as_mut() {
                if *b == 0 {
                    return Err(IoError);
                }
                *b -= 1;
            }
            let at = lba as usize * 512;
            self.bytes
                .get_mut(at..at + buf.len())
                .ok_or(IoError)?
                .copy_from_slice(buf);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), IoError> {
            Ok(())
        }
    }

    /// mtools is there (`cargo xtask test` installs and requires it).
    fn tool(name: &str, package: &str) -> bool {
        match Command::new(name).arg("--version").output() {
            Ok(_) => true,
            Err(_) if std::env::var("XTASK_REQUIRE_MTOOLS").as_deref() == Ok("1") => {
                panic!("{name} not found: apt-get install {package}")
            }
            Err(_) => {
                std::eprintln!("note: {name} not found, FAT interoperability check skipped");
                false
            }
        }
    }

    fn temp(name: &str) -> crate::test_files::TempFile {
        crate::test_files::TempFile::new("fat-test", name)
    }

    fn run(cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// A 64 MiB FAT32 volume made by mformat (at `offset` sectors into the
    /// image, behind an MBR, when given).
    fn mformat(path: &Path, offset: Option<u64>) -> Vec<u8> {
        let sectors = 131_072u64;
        let total = sectors + offset.unwrap_or(0);
        std::fs::write(path, vec![0u8; (total * 512) as usize]).unwrap();
        let p = path.to_str().unwrap();
        let spec = match offset {
            Some(o) => format!("{p}@@{}", o * 512),
            None => p.to_string(),
        };
        let t = sectors.to_string();
        run(
            "mformat",
            &[
                "-i", &spec, "-F", "-c", "1", "-T", &t, "-h", "64", "-s", "32", "-v", "ROOTDISK",
                "::",
            ],
        );
        let mut bytes = std::fs::read(path).unwrap();
        if let Some(o) = offset {
            let e = &mut bytes[446..462];
            e[4] = 0x0C;
            e[8..12].copy_from_slice(&(o as u32).to_le_bytes());
            e[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
            bytes[510] = 0x55;
            bytes[511] = 0xAA;
            std::fs::write(path, &bytes).unwrap();
        }
        bytes
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    fn disk(bytes: Vec<u8>) -> TestDisk {
        TestDisk {
            bytes,
            budget: None,
        }
    }

    #[test]
    fn short_names_follow_the_8_3_rule() {
        assert_eq!(short_name("DISK1.VHD").unwrap().0, *b"DISK1   VHD");
        assert_eq!(
            short_name("/disk1.vhd"),
            Some((*b"DISK1   VHD", LOWER_BASE | LOWER_EXT))
        );
        assert_eq!(short_name("Readme"), None, "mixed case has no short form");
        assert_eq!(short_name("README").unwrap().0, *b"README     ");
        for bad in [
            "",
            ".vhd",
            "toolongname.vhd",
            "a.vhdx",
            "a b.vhd",
            "a.b.c",
            "é.vhd",
            "a/b",
        ] {
            assert_eq!(short_name(bad), None, "{bad}");
        }
        assert_eq!(
            display_short(b"DISK1   VHD", LOWER_BASE | LOWER_EXT),
            "disk1.vhd"
        );
        assert_eq!(
            stamp(2026, 11, 30, 14, 30, 59),
            ((46 << 9) | (11 << 5) | 30, (14 << 11) | (30 << 5) | 29)
        );
    }

    /// Files mtools copies in (long and short names) read back the same
    /// here; files made here are what mtools copies out, and fsck.fat finds
    /// the volume clean; with and without a partition table.
    #[test]
    fn mtools_and_this_module_agree() {
        if !tool("mformat", "mtools") || !tool("fsck.fat", "dosfstools") {
            return;
        }
        for offset in [None, Some(2048)] {
            let image = temp(&format!("vol-{}.img", offset.is_some()));
            mformat(&image, offset);
            let spec = match offset {
                Some(o) => format!("{}@@{}", image.display(), o * 512),
                None => image.display().to_string(),
            };
            let long = pattern(300_000, 1);
            let src = temp("long-source");
            std::fs::write(&src, &long).unwrap();
            run(
                "mcopy",
                &["-i", &spec, src.to_str().unwrap(), "::debian-disk.vhd"],
            );
            run(
                "mcopy",
                &["-i", &spec, src.to_str().unwrap(), "::SHORT.BIN"],
            );

            let mut v = Volume::open(disk(std::fs::read(&image).unwrap())).unwrap();
            assert_eq!(v.label(), "ROOTDISK");
            let names: Vec<String> = v.list().unwrap().into_iter().map(|(d, _)| d.name).collect();
            assert_eq!(names, ["debian-disk.vhd", "SHORT.BIN"]);
            for name in [
                "debian-disk.vhd",
                "DEBIAN-DISK.VHD",
                "short.bin",
                "/SHORT.BIN",
            ] {
                let f = v.open_file(name).unwrap();
                assert_eq!(f.size(), long.len() as u64);
                let mut back = vec![0u8; long.len()];
                v.read(&f, 0, &mut back).unwrap();
                assert!(back == long, "{name}");
                let mut mid = vec![0u8; 1000];
                v.read(&f, 4097, &mut mid).unwrap();
                assert_eq!(mid, long[4097..5097]);
            }
            assert_eq!(v.open_file("none.vhd"), Err(FatError::NotFound));
            assert_eq!(v.create("short.bin", (0, 0)), Err(FatError::Exists));

            // Made here: grown in pieces, unaligned, with a gap, and one
            // file per root-directory slot of a cluster and more (the root
            // directory grows).
            let free = v.free_bytes();
            let mut f = v.create("mine.vhd", stamp(2026, 11, 30, 12, 0, 0)).unwrap();
            let ours = pattern(1_000_000, 7);
            v.write(&mut f, 0, &ours[..1000]).unwrap();
            v.write(&mut f, 1000, &ours[1000..600_000]).unwrap();
            v.write(&mut f, 700_000, &ours[700_000..]).unwrap();
            v.write(&mut f, 600_000, &ours[600_000..700_000]).unwrap();
            v.write(&mut f, 3, &ours[3..70_000]).unwrap();
            let mut big = v.create("ZEROS", (0, 0)).unwrap();
            v.extend(&mut big, 5 << 20).unwrap();
            for i in 0..20 {
                let mut e = v.create(&format!("f{i}.txt"), (0, 0)).unwrap();
                v.write(&mut e, 0, format!("file {i}\n").as_bytes())
                    .unwrap();
            }
            // Long names: aliases that do not collide, the name as typed.
            for long in [
                "web-disk.vhdx",
                "web-disk2.vhdx",
                "A Mixed Case Name of forty characters.bin",
            ] {
                let mut e = v.create(long, (0, 0)).unwrap();
                assert_eq!(e.name, long);
                v.write(&mut e, 0, long.as_bytes()).unwrap();
            }
            assert_eq!(v.create("WEB-DISK.VHDX", (0, 0)), Err(FatError::Exists));
            for bad in ["a/b", "a:b", "x.", "", "tab\there"] {
                assert_eq!(v.create(bad, (0, 0)), Err(FatError::BadName), "{bad}");
            }
            v.flush().unwrap();
            assert!(v.free_bytes() <= free - 6_242_880 - 3 * 4096);
            assert_eq!(v.read(&f, 999_999, &mut [0u8; 2]), Err(FatError::PastEnd));
            std::fs::write(&image, &v.disk().bytes).unwrap();

            let out = temp("mine-out");
            let _ = std::fs::remove_file(&out);
            run("mcopy", &["-i", &spec, "::mine.vhd", out.to_str().unwrap()]);
            assert!(std::fs::read(&out).unwrap() == ours);
            let _ = std::fs::remove_file(&out);
            run("mcopy", &["-i", &spec, "::zeros", out.to_str().unwrap()]);
            assert!(std::fs::read(&out).unwrap() == vec![0u8; 5 << 20]);
            assert_eq!(run("mtype", &["-i", &spec, "::f19.txt"]), "file 19\n");
            for long in [
                "web-disk.vhdx",
                "web-disk2.vhdx",
                "A Mixed Case Name of forty characters.bin",
            ] {
                assert_eq!(run("mtype", &["-i", &spec, &format!("::{long}")]), long);
            }
            let short = run("mdir", &["-i", &spec, "::"]);
            assert!(
                short.contains("WEB-DI~1 VHD") && short.contains("WEB-DI~2 VHD"),
                "{short}"
            );
            let dir = run("mdir", &["-i", &spec, "-b", "::"]);
            assert!(dir.contains("mine.vhd"), "{dir}");
            // fsck.fat reads a partition only from its own device: the
            // volume alone.
            let vol = temp("vol-alone.img");
            let bytes = std::fs::read(&image).unwrap();
            let skip = offset.unwrap_or(0) as usize * 512;
            std::fs::write(&vol, &bytes[skip..]).unwrap();
            run("fsck.fat", &["-n", "-v", vol.to_str().unwrap()]);
            // And it all reads the same after a remount.
            let mut v = Volume::open(disk(bytes)).unwrap();
            let f = v.open_file("MINE.VHD").unwrap();
            let mut back = vec![0u8; ours.len()];
            v.read(&f, 0, &mut back).unwrap();
            assert!(back == ours);
        }
    }

    /// A fresh volume with GROW.BIN of 5000 bytes, flushed: its image, the
    /// file's bytes, and the 20 000 bytes the cut tests append.
    fn grow_fixture(image: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut v = Volume::open(disk(mformat(image, None))).unwrap();
        let mut f = v.create("GROW.BIN", (0, 0)).unwrap();
        let first = pattern(5000, 3);
        v.write(&mut f, 0, &first).unwrap();
        v.flush().unwrap();
        (v.disk().bytes.clone(), first, pattern(20_000, 9))
    }

    /// After a cut, GROW.BIN in `image` is the old file or the whole new
    /// one; `what` names the cut in a failure.
    fn old_or_new(image: Vec<u8>, first: &[u8], more: &[u8], what: &str) {
        let mut v = Volume::open(disk(image)).unwrap();
        let f = v.open_file("grow.bin").unwrap();
        let mut back = vec![0u8; f.size() as usize];
        v.read(&f, 0, &mut back).unwrap();
        if f.size() == 5000 {
            assert_eq!(back, first, "{what}");
        } else {
            assert_eq!(f.size(), 25_000, "{what}");
            assert_eq!(&back[..5000], first, "{what}");
            assert_eq!(&back[5000..], more, "{what}: data not written");
        }
    }

    /// A file grown with the power cut after every number of writes: the
    /// volume mounts, the file has its old size and bytes or its new ones,
    /// and fsck.fat finds nothing worse than lost clusters.
    #[test]
    fn a_cut_at_any_write_of_a_growth_leaves_a_good_volume() {
        if !tool("mformat", "mtools") || !tool("fsck.fat", "dosfstools") {
            return;
        }
        let (before, first, more) = grow_fixture(&temp("cut.img"));
        let mut cut = 0;
        loop {
            let mut d = disk(before.clone());
            d.budget = Some(cut);
            let mut v = Volume::open(d).unwrap();
            let mut f = v.open_file("GROW.BIN").unwrap();
            let done = v.write(&mut f, 5000, &more).is_ok() && v.flush().is_ok();
            let after = v.disk().bytes.clone();
            old_or_new(after.clone(), &first, &more, &format!("cut {cut}"));
            let path = temp("cut-now.img");
            std::fs::write(&path, &after).unwrap();
            let out = Command::new("fsck.fat")
                .args(["-n", path.to_str().unwrap()])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            // Exit 1: errors found; lost clusters and a free count that
            // was not written yet are all it may find.
            for line in text.lines().filter(|l| !l.is_empty()) {
                let known = [
                    "fsck.fat ",
                    "FATs differ but appear to be intact.",
                    "  Using first FAT.",
                    "Reclaimed ",
                    "Free cluster summary wrong",
                    "  Auto-correcting.",
                    "Leaving filesystem unchanged.",
                    "/GROW.BIN",
                    "  File size is 5000 bytes, cluster chain length is",
                    "  Truncating file to 5000 bytes.",
                    "Perform changes",
                ];
                assert!(
                    known.iter().any(|k| line.starts_with(k))
                        || line.starts_with(path.to_str().unwrap()),
                    "cut {cut}: fsck.fat says {line}\n{text}"
                );
            }
            if done {
                assert_eq!(out.status.code(), Some(0), "{text}");
                break;
            }
            cut += 1;
        }
        assert!(cut > 3, "the growth took {cut} writes");
    }

    /// A disk with a write-back cache: writes since the last flush may
    /// reach the medium in any order, or not at all, when the power goes.
    struct CachedDisk {
        /// What reads see, and the write budget.
        disk: TestDisk,
        /// What a power cut keeps for certain.
        durable: Vec<u8>,
        /// The writes since the last flush, in order.
        cached: Vec<(usize, Vec<u8>)>,
    }

    impl BlockDevice for CachedDisk {
        fn blocks(&self) -> u64 {
            self.disk.blocks()
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
            self.disk.read(lba, buf)
        }
        fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
            self.disk.write(lba, buf)?;
            self.cached.push((lba as usize * 512, buf.to_vec()));
            Ok(())
        }
        fn flush(&mut self) -> Result<(), IoError> {
            self.durable.clone_from(&self.disk.bytes);
            self.cached.clear();
            Ok(())
        }
    }

    /// A growth cut after every number of writes, on a disk that keeps any
    /// subset of the writes it had not flushed: the file has its old size
    /// and bytes or its new ones, never a size over bytes not written (it
    /// did before the flushes before a growth's link and its size).
    #[test]
    fn a_cut_with_reordered_cached_writes_leaves_old_or_new() {
        if !tool("mformat", "mtools") {
            return;
        }
        let (before, first, more) = grow_fixture(&temp("reorder.img"));
        for cut in 0.. {
            let d = CachedDisk {
                disk: TestDisk {
                    bytes: before.clone(),
                    budget: Some(cut),
                },
                durable: before.clone(),
                cached: Vec::new(),
            };
            let mut v = Volume::open(d).unwrap();
            let mut f = v.open_file("GROW.BIN").unwrap();
            let done = v.write(&mut f, 5000, &more).is_ok();
            let d = v.disk();
            let n = d.cached.len().min(10);
            // Every subset of the last (up to 10) cached writes lands.
            let skip = d.cached.len() - n;
            for keep in 0u32..1 << n {
                let mut image = d.durable.clone();
                for (i, (at, data)) in d.cached.iter().enumerate() {
                    if i < skip || keep & 1 << (i - skip) != 0 {
                        image[*at..*at + data.len()].copy_from_slice(data);
                    }
                }
                old_or_new(image, &first, &more, &format!("cut {cut}, kept {keep:b}"));
            }
            if done {
                break;
            }
        }
    }

    /// The first write to an empty file, cut after every number of
    /// writes: the other file on the volume reads back the same, the new
    /// file is empty or whole (its first cluster is never half written,
    /// which would cross-link it into the other file), and the file can be
    /// grown again.
    #[test]
    fn a_cut_first_write_never_cross_links() {
        if !tool("mformat", "mtools") {
            return;
        }
        let image = temp("cross.img");
        let mut v = Volume::open(disk(mformat(&image, None))).unwrap();
        // Past cluster 65 536 (512-byte clusters), so that the new file's
        // first cluster needs both halves of the entry's cluster field.
        let big = pattern(34 << 20, 4);
        let mut a = v.create("A.VHD", (0, 0)).unwrap();
        v.write(&mut a, 0, &big).unwrap();
        v.create("B.BIN", (0, 0)).unwrap();
        v.flush().unwrap();
        let base = v.disk().bytes.clone();
        let data = pattern(70_000, 8);
        for cut in 0.. {
            let mut d = disk(base.clone());
            d.budget = Some(cut);
            let mut v = Volume::open(d).unwrap();
            let mut b = v.open_file("B.BIN").unwrap();
            let done = v.write(&mut b, 0, &data).is_ok();
            let after = v.disk().bytes.clone();
            let mut v = Volume::open(disk(after)).unwrap();
            let a = v.open_file("a.vhd").unwrap();
            let mut back = vec![0u8; big.len()];
            v.read(&a, 0, &mut back).unwrap();
            assert!(back == big, "cut {cut}: A changed");
            let mut b = v.open_file("b.bin").unwrap();
            assert!(b.size() == 0 || b.size() == data.len() as u64, "cut {cut}");
            v.extend(&mut b, 200_000).unwrap();
            v.read(&a, 0, &mut back).unwrap();
            assert!(back == big, "cut {cut}: growing B changed A");
            if done {
                break;
            }
        }
    }

    /// A damaged entry is that file's problem alone; names of directories
    /// (and of the label) are taken too.
    #[test]
    fn one_damaged_entry_and_directory_names() {
        if !tool("mformat", "mtools") {
            return;
        }
        let image = temp("names.img");
        mformat(&image, None);
        let spec = image.display().to_string();
        run("mmd", &["-i", &spec, "::data"]);
        let src = temp("names-src");
        std::fs::write(&src, pattern(5000, 1)).unwrap();
        run(
            "mcopy",
            &["-i", &spec, src.to_str().unwrap(), "::OTHER.BIN"],
        );
        run("mcopy", &["-i", &spec, src.to_str().unwrap(), "::GOOD.VHD"]);
        let mut bytes = std::fs::read(&image).unwrap();
        // OTHER.BIN's size: far past its clusters.
        let at = bytes.windows(11).position(|w| w == b"OTHER   BIN").unwrap();
        bytes[at + 28..at + 32].copy_from_slice(&9_000_000u32.to_le_bytes());
        let mut v = Volume::open(disk(bytes)).unwrap();
        assert_eq!(
            v.open_file("other.bin"),
            Err(FatError::Damaged("a file is longer than its clusters"))
        );
        assert_eq!(v.open_file("good.vhd").unwrap().size(), 5000);
        let list = v.list().unwrap();
        assert!(list
            .iter()
            .any(|(d, _)| d.name == "OTHER.BIN" && d.damaged.is_some()));
        assert!(v.create("new.vhd", (0, 0)).is_ok());
        for taken in ["data", "DATA", "rootdisk"] {
            assert_eq!(v.create(taken, (0, 0)), Err(FatError::Exists), "{taken}");
        }
    }

    /// Reads and writes by address over files whose clusters interleave
    /// (so every transfer crosses runs) give what `read` gives.
    #[test]
    fn direct_transfers_follow_the_cluster_runs() {
        if !tool("mformat", "mtools") {
            return;
        }
        let image = temp("direct.img");
        let bytes = mformat(&image, None);
        let mut v = Volume::mount(vmbus::scsi::DmaMemoryDisk {
            disk: disk(bytes),
            memory: vec![0; 1 << 20],
        })
        .map_err(|(e, _)| e)
        .unwrap();
        let mut a = v.create("a.bin", (0, 0)).unwrap();
        let mut b = v.create("b.bin", (0, 0)).unwrap();
        for i in 0..24u64 {
            v.write(&mut a, i * 1536, &pattern(1536, i as u8)).unwrap();
            v.write(&mut b, i * 1024, &pattern(1024, 99)).unwrap();
        }
        let whole = {
            let mut w = vec![0u8; 24 * 1536];
            v.read(&a, 0, &mut w).unwrap();
            w
        };
        // Scattered memory: 3 sectors at 0x8000, 5 at 0x1000, the rest
        // at 0x20000; from sector 7 of the file.
        let segs = [
            Segment {
                addr: 0x8000,
                len: 1536,
            },
            Segment {
                addr: 0x1000,
                len: 2560,
            },
            Segment {
                addr: 0x20000,
                len: 20 * 512,
            },
        ];
        v.read_to(&a, 7 * 512, &segs).unwrap();
        let m = &v.disk().memory;
        let mut got = Vec::new();
        for s in &segs {
            got.extend_from_slice(&m[s.addr as usize..s.addr as usize + s.len]);
        }
        assert_eq!(got, &whole[7 * 512..7 * 512 + got.len()]);
        // Written back shifted by 2 sectors: read shows it.
        v.write_from(&a, 9 * 512, &segs).unwrap();
        let mut back = vec![0u8; got.len()];
        v.read(&a, 9 * 512, &mut back).unwrap();
        assert_eq!(back, got);
        // b is untouched.
        let mut bb = vec![0u8; 1024];
        v.read(&b, 23 * 1024, &mut bb).unwrap();
        assert_eq!(bb, pattern(1024, 99));
        // Past the end, or part of a sector: refused.
        let one = [Segment { addr: 0, len: 512 }];
        assert_eq!(v.read_to(&a, 24 * 1536, &one), Err(FatError::PastEnd));
        assert_eq!(v.read_to(&a, 100, &one), Err(FatError::PastEnd));
        assert_eq!(
            v.read_to(&a, 0, &[Segment { addr: 0, len: 100 }]),
            Err(FatError::PastEnd)
        );
    }

    fn volume_bytes() -> Option<Vec<u8>> {
        if !tool("mformat", "mtools") {
            return None;
        }
        let image = temp("damage.img");
        mformat(&image, None);
        let spec = image.display().to_string();
        let src = temp("damage-src");
        std::fs::write(&src, pattern(40_000, 5)).unwrap();
        run(
            "mcopy",
            &["-i", &spec, src.to_str().unwrap(), "::a-long-name.bin"],
        );
        // The metadata only: boot sector to the root directory's cluster.
        Some(std::fs::read(&image).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Damaged metadata (boot sector, FAT, root directory) never
        /// panics: every call returns a value.
        #[test]
        fn damaged_volumes_give_errors(edits in proptest::collection::vec((0usize..(32 + 2 * 1020 + 2) * 512, any::<u8>()), 1..40)) {
            static BYTES: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
            let Some(base) = BYTES.get_or_init(volume_bytes) else { return Ok(()) };
            let mut bytes = base.clone();
            for (at, b) in edits {
                bytes[at] = b;
            }
            if let Ok(mut v) = Volume::open(disk(bytes)) {
                if let Ok(list) = v.list() {
                    for (d, mut f) in list {
                        let mut buf = vec![0u8; (d.size as usize).min(50_000)];
                        let _ = v.read(&f, 0, &mut buf);
                        let _ = v.write(&mut f, 100, &[1, 2, 3]);
                    }
                }
                let _ = v.open_file("a-long-name.bin");
                let _ = v.create("NEW.BIN", (0, 0)).map(|mut f| v.write(&mut f, 0, &[0; 9000]));
                let _ = v.flush();
            }
        }
    }
}
