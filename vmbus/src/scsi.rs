//! A SCSI direct-access disk (one logical unit) over a [`BlockDevice`]: the
//! commands Linux's `sd` driver and SCSI mid-layer send, answered as SPC-4
//! and SBC-3 define them (T10), with fixed-format sense data for errors.
//!
//! The caller moves the data: a data-out command (WRITE) gets the bytes the
//! initiator sent, a data-in command returns the bytes to send back, at
//! most the transfer length the initiator allowed. Nothing here trusts the
//! command descriptor block: every length and address is checked against
//! the disk and the buffer before use.

use alloc::vec;
use alloc::vec::Vec;

/// Bytes per logical block.
pub const BLOCK_SIZE: usize = 512;

/// A disk as the SCSI layer sees it: blocks of [`BLOCK_SIZE`] bytes.
pub trait BlockDevice {
    /// Number of blocks.
    fn blocks(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Reads `buf.len() / BLOCK_SIZE` blocks from `lba` (in range: checked
    /// by the caller).
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError>;
    /// Writes whole blocks at `lba` (in range).
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError>;
    /// Makes every write so far durable.
    fn flush(&mut self) -> Result<(), IoError>;
    /// Whether [`read_to`](Self::read_to) and
    /// [`write_from`](Self::write_from) work: the disk moves data to and
    /// from memory by address (a device's DMA), with no buffer between.
    fn direct(&self) -> bool {
        false
    }
    /// Reads the blocks from `lba` into the memory `to` names, in order
    /// (whole blocks in all, in range: checked by the caller).
    fn read_to(&mut self, _lba: u64, _to: &[Segment]) -> Result<(), IoError> {
        Err(IoError)
    }
    /// Writes the bytes `from` names, in order, as the blocks from `lba`.
    fn write_from(&mut self, _lba: u64, _from: &[Segment]) -> Result<(), IoError> {
        Err(IoError)
    }
}

/// A piece of memory a disk reaches by address: where it is (the root's
/// address, which is the bus address: no IOMMU) and how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: usize,
}

/// Total bytes of `segments`.
pub fn segments_len(segments: &[Segment]) -> usize {
    segments.iter().map(|s| s.len).sum()
}

/// The pieces of `segments` that hold bytes `skip..skip + len` of what they
/// name together, in order (shorter if they end first).
pub fn sub_segments(segments: &[Segment], skip: usize, len: usize) -> Vec<Segment> {
    let mut out = Vec::new();
    let (mut at, end) = (0usize, skip.saturating_add(len));
    for s in segments {
        let (start, stop) = (at.max(skip), (at + s.len).min(end));
        if start < stop {
            out.push(Segment {
                addr: s.addr + (start - at) as u64,
                len: stop - start,
            });
        }
        at += s.len;
        if at >= end {
            break;
        }
    }
    out
}

/// `segments` with neighbours that touch merged (fewer descriptors for a
/// device).
pub fn merge_segments(segments: impl IntoIterator<Item = Segment>) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for s in segments.into_iter().filter(|s| s.len > 0) {
        match out.last_mut() {
            Some(l) if l.addr.checked_add(l.len as u64) == Some(s.addr) => l.len += s.len,
            _ => out.push(s),
        }
    }
    out
}

/// The backing store failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoError;

/// A test double: `disk`, which also moves data by address into a memory
/// of its own (an address indexes `memory`), as a DMA-capable device does.
#[cfg(any(test, feature = "test-support"))]
pub struct DmaMemoryDisk<D: BlockDevice> {
    pub disk: D,
    pub memory: Vec<u8>,
}

#[cfg(any(test, feature = "test-support"))]
impl<D: BlockDevice> BlockDevice for DmaMemoryDisk<D> {
    fn blocks(&self) -> u64 {
        self.disk.blocks()
    }
    fn read_only(&self) -> bool {
        self.disk.read_only()
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.disk.read(lba, buf)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        self.disk.write(lba, buf)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.disk.flush()
    }
    fn direct(&self) -> bool {
        true
    }
    fn read_to(&mut self, mut lba: u64, to: &[Segment]) -> Result<(), IoError> {
        for s in to {
            let at = usize::try_from(s.addr).map_err(|_| IoError)?;
            let piece = self.memory.get_mut(at..at + s.len).ok_or(IoError)?;
            self.disk.read(lba, piece)?;
            lba += (s.len / BLOCK_SIZE) as u64;
        }
        Ok(())
    }
    fn write_from(&mut self, mut lba: u64, from: &[Segment]) -> Result<(), IoError> {
        for s in from {
            let at = usize::try_from(s.addr).map_err(|_| IoError)?;
            let piece = self.memory.get(at..at + s.len).ok_or(IoError)?;
            self.disk.write(lba, piece)?;
            lba += (s.len / BLOCK_SIZE) as u64;
        }
        Ok(())
    }
}

/// A disk in memory (the root's RAM disks; tests).
#[derive(Debug, Clone)]
pub struct MemoryDisk {
    bytes: Vec<u8>,
    read_only: bool,
}

impl MemoryDisk {
    /// A zeroed disk of `blocks` blocks.
    pub fn new(blocks: u64, read_only: bool) -> Self {
        MemoryDisk {
            bytes: vec![0; blocks as usize * BLOCK_SIZE],
            read_only,
        }
    }

    /// The disk's contents.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl BlockDevice for MemoryDisk {
    fn blocks(&self) -> u64 {
        (self.bytes.len() / BLOCK_SIZE) as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let at = usize::try_from(lba).map_err(|_| IoError)? * BLOCK_SIZE;
        let src = self.bytes.get(at..at + buf.len()).ok_or(IoError)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        let at = usize::try_from(lba).map_err(|_| IoError)? * BLOCK_SIZE;
        let dst = self.bytes.get_mut(at..at + buf.len()).ok_or(IoError)?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }
}

/// A zeroed buffer of `len` bytes, or `None` if memory is short (a
/// request's data is up to 1 MiB: its failure is the request's, never a
/// panic of the server).
pub fn buffer(len: usize) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).ok()?;
    v.resize(len, 0);
    Some(v)
}

/// SCSI status: GOOD.
pub const GOOD: u8 = 0x00;
/// SCSI status: CHECK CONDITION (sense data says why).
pub const CHECK_CONDITION: u8 = 0x02;

/// Sense keys (SPC-4 table 45).
pub mod sense_key {
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xB;
}

/// A sense key with its additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl Sense {
    const INVALID_OPCODE: Sense = Sense::illegal(0x20, 0);
    const LBA_OUT_OF_RANGE: Sense = Sense::illegal(0x21, 0);
    const INVALID_FIELD_IN_CDB: Sense = Sense::illegal(0x24, 0);
    /// The data the initiator sent is shorter than the command says.
    const PARAMETER_LIST_LENGTH: Sense = Sense::illegal(0x1A, 0);
    const WRITE_PROTECTED: Sense = Sense {
        key: sense_key::DATA_PROTECT,
        asc: 0x27,
        ascq: 0,
    };
    const UNRECOVERED_READ: Sense = Sense {
        key: sense_key::MEDIUM_ERROR,
        asc: 0x11,
        ascq: 0,
    };
    const WRITE_ERROR: Sense = Sense {
        key: sense_key::MEDIUM_ERROR,
        asc: 0x0C,
        ascq: 0,
    };
    /// No memory for the transfer's buffer: the initiator may retry.
    pub const INSUFFICIENT_RESOURCES: Sense = Sense {
        key: sense_key::ABORTED_COMMAND,
        asc: 0x55,
        ascq: 0x03,
    };

    const fn illegal(asc: u8, ascq: u8) -> Sense {
        Sense {
            key: sense_key::ILLEGAL_REQUEST,
            asc,
            ascq,
        }
    }

    /// Fixed-format sense data (SPC-4 4.5.3), 18 bytes.
    pub fn fixed(&self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70; // current error, fixed format
        s[2] = self.key;
        s[7] = 10; // additional sense length
        s[12] = self.asc;
        s[13] = self.ascq;
        s
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// GOOD; for a data-in command, the bytes to send (already cut to the
    /// allowed transfer length).
    Good(Vec<u8>),
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

/// The identity the disk reports (INQUIRY and its VPD pages).
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// Unit serial number (VPD 0x80), ASCII.
    pub serial: [u8; 16],
    /// A 64-bit identifier, unique per disk (VPD 0x83, NAA IEEE
    /// Registered form: the top nibble forced to 5).
    pub id: u64,
}

/// Largest transfer one command may ask for, in blocks (VPD 0xB0; the
/// storage properties say the same in bytes): 1 MiB, so that Linux's `dd
/// bs=1M` is one request (one signal, one completion) and not two.
pub const MAX_TRANSFER_BLOCKS: u32 = 2048;

/// One logical unit: a [`BlockDevice`] with an identity.
pub struct ScsiDisk<D: BlockDevice> {
    pub disk: D,
    identity: Identity,
}

/// `Some(true)` for a READ (6, 10, 16), `Some(false)` for a WRITE, `None`
/// for any other command: the commands whose data a disk may move itself.
pub fn is_read(cdb: &[u8]) -> Option<bool> {
    match cdb.first()? {
        0x08 | 0x28 | 0x88 => Some(true),
        0x0A | 0x2A | 0x8A => Some(false),
        _ => None,
    }
}

impl<D: BlockDevice> ScsiDisk<D> {
    pub fn new(disk: D, identity: Identity) -> Self {
        ScsiDisk { disk, identity }
    }

    /// Runs one command. `data_out` is what the initiator sent (for
    /// WRITE); `allowed` is the transfer length it allows for data in.
    pub fn execute(&mut self, cdb: &[u8], data_out: &[u8], allowed: usize) -> Outcome {
        match self.run(cdb, data_out) {
            Ok(mut data) => {
                data.truncate(allowed);
                Outcome::Good(data)
            }
            Err(sense) => Outcome::Check(sense),
        }
    }

    /// Runs a READ or WRITE whose data the disk moves straight to or from
    /// the memory `segments` names (data in when `data_in`): `None` when
    /// that is not the way (another command, a disk that cannot, segments
    /// that are not exactly the command's bytes), and the caller copies
    /// through a buffer with [`execute`](Self::execute) instead.
    pub fn execute_direct(
        &mut self,
        cdb: &[u8],
        data_in: bool,
        segments: &[Segment],
    ) -> Option<Result<(), Sense>> {
        let read = is_read(cdb)?;
        if read != data_in || !self.disk.direct() {
            return None;
        }
        let (lba, blocks) = match rw_range(cdb) {
            Ok(r) => r,
            Err(sense) => return Some(Err(sense)),
        };
        if let Err(sense) = self.check_range(lba, blocks) {
            return Some(Err(sense));
        }
        let bytes = blocks as usize * BLOCK_SIZE;
        if blocks == 0 || segments_len(segments) != bytes {
            return None;
        }
        Some(if read {
            self.disk
                .read_to(lba, segments)
                .map_err(|_| Sense::UNRECOVERED_READ)
        } else if self.disk.read_only() {
            Err(Sense::WRITE_PROTECTED)
        } else {
            self.disk
                .write_from(lba, segments)
                .map_err(|_| Sense::WRITE_ERROR)
        })
    }

    fn run(&mut self, cdb: &[u8], data_out: &[u8]) -> Result<Vec<u8>, Sense> {
        let op = *cdb.first().ok_or(Sense::INVALID_OPCODE)?;
        let need = |n: usize| {
            if cdb.len() >= n {
                Ok(())
            } else {
                Err(Sense::INVALID_FIELD_IN_CDB)
            }
        };
        match op {
            // TEST UNIT READY, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL,
            // VERIFY(10/16): nothing to do for a disk always present.
            0x00 | 0x1B | 0x1E | 0x2F | 0x8F => Ok(Vec::new()),
            // REQUEST SENSE: nothing pending.
            0x03 => Ok(Sense {
                key: 0,
                asc: 0,
                ascq: 0,
            }
            .fixed()
            .to_vec()),
            0x12 => {
                need(6)?;
                self.inquiry(cdb[1] & 1 != 0, cdb[2])
            }
            0x1A => {
                need(6)?;
                self.mode_sense(cdb[2], false)
            }
            0x5A => {
                need(10)?;
                self.mode_sense(cdb[2], true)
            }
            0x25 => {
                need(10)?;
                let last = self.disk.blocks().saturating_sub(1);
                let mut d = Vec::with_capacity(8);
                d.extend_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
                d.extend_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
                Ok(d)
            }
            // SERVICE ACTION IN(16) / READ CAPACITY(16).
            0x9E if cdb.get(1).is_some_and(|b| b & 0x1F == 0x10) => {
                need(16)?;
                let mut d = vec![0u8; 32];
                d[..8].copy_from_slice(&self.disk.blocks().saturating_sub(1).to_be_bytes());
                d[8..12].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
                Ok(d)
            }
            0xA0 => {
                // REPORT LUNS: LUN 0 alone.
                need(12)?;
                let mut d = vec![0u8; 16];
                d[3] = 8;
                Ok(d)
            }
            0x08 | 0x28 | 0x88 => {
                let (lba, blocks) = rw_range(cdb)?;
                self.read(lba, blocks)
            }
            0x0A | 0x2A | 0x8A => {
                let (lba, blocks) = rw_range(cdb)?;
                self.write(lba, blocks, data_out)
            }
            // SYNCHRONIZE CACHE(10/16).
            0x35 | 0x91 => {
                self.disk.flush().map_err(|_| Sense::WRITE_ERROR)?;
                Ok(Vec::new())
            }
            _ => Err(Sense::INVALID_OPCODE),
        }
    }

    fn check_range(&self, lba: u64, blocks: u32) -> Result<(), Sense> {
        if blocks > MAX_TRANSFER_BLOCKS {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        match lba.checked_add(u64::from(blocks)) {
            Some(end) if end <= self.disk.blocks() => Ok(()),
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }

    fn read(&mut self, lba: u64, blocks: u32) -> Result<Vec<u8>, Sense> {
        self.check_range(lba, blocks)?;
        let mut d = buffer(blocks as usize * BLOCK_SIZE).ok_or(Sense::INSUFFICIENT_RESOURCES)?;
        if blocks > 0 {
            self.disk
                .read(lba, &mut d)
                .map_err(|_| Sense::UNRECOVERED_READ)?;
        }
        Ok(d)
    }

    fn write(&mut self, lba: u64, blocks: u32, data: &[u8]) -> Result<Vec<u8>, Sense> {
        self.check_range(lba, blocks)?;
        if self.disk.read_only() {
            return Err(Sense::WRITE_PROTECTED);
        }
        let bytes = blocks as usize * BLOCK_SIZE;
        let data = data.get(..bytes).ok_or(Sense::PARAMETER_LIST_LENGTH)?;
        if blocks > 0 {
            self.disk.write(lba, data).map_err(|_| Sense::WRITE_ERROR)?;
        }
        Ok(Vec::new())
    }

    fn inquiry(&self, vpd: bool, page: u8) -> Result<Vec<u8>, Sense> {
        if !vpd {
            if page != 0 {
                return Err(Sense::INVALID_FIELD_IN_CDB);
            }
            let mut d = vec![0u8; 36];
            d[0] = 0x00; // connected, direct-access block device
            d[2] = 0x06; // SPC-4
            d[3] = 0x02; // response data format 2
            d[4] = 31; // additional length
            d[7] = 0x02; // CmdQue
            d[8..16].copy_from_slice(b"RustHV  ");
            d[16..32].copy_from_slice(b"Virtual Disk    ");
            d[32..36].copy_from_slice(b"1.0 ");
            return Ok(d);
        }
        let body: Vec<u8> = match page {
            0x00 => vec![0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2],
            0x80 => self.identity.serial.to_vec(),
            0x83 => {
                // One designator: NAA (type 3), binary, associated with the
                // logical unit; NAA 5 (IEEE Registered), 8 bytes.
                let mut d = vec![0x01, 0x03, 0x00, 0x08];
                let naa = (self.identity.id & 0x0FFF_FFFF_FFFF_FFFF) | 0x5000_0000_0000_0000;
                d.extend_from_slice(&naa.to_be_bytes());
                d
            }
            0xB0 => {
                // Block limits: the maximum and optimal transfer lengths.
                let mut d = vec![0u8; 60];
                d[4..8].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
                d[8..12].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
                d
            }
            0xB1 => {
                // Block device characteristics: non-rotating.
                let mut d = vec![0u8; 60];
                d[1] = 1;
                d
            }
            // Logical block provisioning: no unmap, fully provisioned.
            0xB2 => vec![0u8; 4],
            _ => return Err(Sense::INVALID_FIELD_IN_CDB),
        };
        let mut d = vec![0x00, page];
        d.extend_from_slice(&(body.len() as u16).to_be_bytes());
        d.extend_from_slice(&body);
        Ok(d)
    }

    /// MODE SENSE(6) or (10) (`control`: the page control and code byte):
    /// the header (write protection), no block descriptor, the caching
    /// page (write cache enabled: the initiator sends SYNCHRONIZE CACHE to
    /// make its writes durable) when asked for it or for all pages. Other
    /// pages are refused; the changeable values are all zero (no MODE
    /// SELECT); saved values are not supported.
    fn mode_sense(&self, control: u8, ten: bool) -> Result<Vec<u8>, Sense> {
        let (pc, page) = (control >> 6, control & 0x3F);
        if !matches!(page, 0x08 | 0x3F) || pc == 3 {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let mut caching = vec![0u8; 20];
        caching[0] = 0x08;
        caching[1] = 0x12;
        if pc != 1 {
            caching[2] = 0x04; // WCE
        }
        let pages = caching;
        let wp = if self.disk.read_only() { 0x80 } else { 0 };
        let mut d = if ten {
            let len = (6 + pages.len()) as u16;
            let mut h = vec![0u8; 8];
            h[..2].copy_from_slice(&len.to_be_bytes());
            h[3] = wp;
            h
        } else {
            vec![(3 + pages.len()) as u8, 0, wp, 0]
        };
        d.extend_from_slice(&pages);
        Ok(d)
    }
}

/// Operation codes an initiator builds with [`rw10`].
pub const READ_10: u8 = 0x28;
pub const WRITE_10: u8 = 0x2A;

/// The CDB of READ(10) or WRITE(10) (`op`): `blocks` blocks from `lba`
/// (an initiator's side: tests and test guests).
pub fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// The LBA and block count of READ/WRITE(6), (10) or (16).
fn rw_range(cdb: &[u8]) -> Result<(u64, u32), Sense> {
    let be = |r: core::ops::Range<usize>| -> Result<u64, Sense> {
        let b = cdb.get(r).ok_or(Sense::INVALID_FIELD_IN_CDB)?;
        Ok(b.iter().fold(0u64, |a, &x| a << 8 | u64::from(x)))
    };
    match cdb[0] {
        0x08 | 0x0A => {
            let lba = be(1..4)? & 0x1F_FFFF;
            // A length of 0 means 256 blocks (SBC-3 5.8).
            let n = be(4..5)?;
            Ok((lba, if n == 0 { 256 } else { n as u32 }))
        }
        0x28 | 0x2A => Ok((be(2..6)?, be(7..9)? as u32)),
        _ => Ok((be(2..10)?, be(10..14)? as u32)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn disk(blocks: u64) -> ScsiDisk<MemoryDisk> {
        ScsiDisk::new(
            MemoryDisk::new(blocks, false),
            Identity {
                serial: *b"0123456789ABCDEF",
                id: 0x1234,
            },
        )
    }

    fn read10(lba: u32, n: u16) -> [u8; 10] {
        rw10(READ_10, lba, n)
    }

    fn write16(lba: u64, n: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x8A;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&n.to_be_bytes());
        c
    }

    #[test]
    fn what_is_written_reads_back() {
        let mut d = disk(64);
        let data: Vec<u8> = (0..1024).map(|i| i as u8).collect();
        assert_eq!(d.execute(&write16(10, 2), &data, 0), Outcome::Good(vec![]));
        assert_eq!(d.execute(&read10(10, 2), &[], 4096), Outcome::Good(data));
        assert_eq!(&d.disk.bytes()[..512], &[0u8; 512][..]);
    }

    #[test]
    fn capacity_and_identity() {
        let mut d = disk(2048);
        let Outcome::Good(c) = d.execute(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8) else {
            panic!()
        };
        assert_eq!(c, [0, 0, 7, 0xFF, 0, 0, 2, 0]);
        let mut rc16 = [0u8; 16];
        rc16[0] = 0x9E;
        rc16[1] = 0x10;
        let Outcome::Good(c) = d.execute(&rc16, &[], 32) else {
            panic!()
        };
        assert_eq!(c[..12], [0, 0, 0, 0, 0, 0, 7, 0xFF, 0, 0, 2, 0]);
        let Outcome::Good(i) = d.execute(&[0x12, 0, 0, 0, 36, 0], &[], 36) else {
            panic!()
        };
        assert_eq!(&i[8..16], b"RustHV  ");
        let Outcome::Good(p) = d.execute(&[0x12, 1, 0x80, 0, 255, 0], &[], 255) else {
            panic!()
        };
        assert_eq!(&p[4..], b"0123456789ABCDEF");
        let Outcome::Good(p) = d.execute(&[0x12, 1, 0x00, 0, 255, 0], &[], 255) else {
            panic!()
        };
        assert_eq!(p, [0, 0, 0, 6, 0, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
        // The allowed length cuts the data.
        let Outcome::Good(i) = d.execute(&[0x12, 0, 0, 0, 5, 0], &[], 5) else {
            panic!()
        };
        assert_eq!(i.len(), 5);
    }

    #[test]
    fn errors_carry_sense() {
        let mut d = disk(16);
        assert_eq!(
            d.execute(&read10(15, 2), &[], 1024),
            Outcome::Check(Sense::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            d.execute(&[0xC0, 0, 0, 0, 0, 0], &[], 0),
            Outcome::Check(Sense::INVALID_OPCODE)
        );
        assert_eq!(
            d.execute(&write16(0, 2), &[0; 512], 0),
            Outcome::Check(Sense::PARAMETER_LIST_LENGTH)
        );
        assert_eq!(
            d.execute(&[0x12, 1, 0x55, 0, 255, 0], &[], 255),
            Outcome::Check(Sense::INVALID_FIELD_IN_CDB)
        );
        assert_eq!(
            d.execute(&[], &[], 0),
            Outcome::Check(Sense::INVALID_OPCODE)
        );
        let mut ro = ScsiDisk::new(MemoryDisk::new(16, true), d.identity);
        assert_eq!(
            ro.execute(&write16(0, 1), &[0; 512], 0),
            Outcome::Check(Sense::WRITE_PROTECTED)
        );
        let Outcome::Good(m) = ro.execute(&[0x1A, 0, 0x3F, 0, 255, 0], &[], 255) else {
            panic!()
        };
        assert_eq!(m[2] & 0x80, 0x80, "write protected in the header");
        assert_eq!(m[4], 0x08, "the caching page");
        assert_eq!(usize::from(m[0]) + 1, m.len());
        // A page not supported; the changeable values (nothing changes).
        assert_eq!(
            ro.execute(&[0x1A, 0, 0x0A, 0, 255, 0], &[], 255),
            Outcome::Check(Sense::INVALID_FIELD_IN_CDB)
        );
        let Outcome::Good(m) = ro.execute(&[0x5A, 0, 0x48, 0, 0, 0, 0, 0, 255, 0], &[], 255) else {
            panic!()
        };
        assert_eq!((m[8], m[10]), (0x08, 0), "caching page, WCE not changeable");
        let s = Sense::LBA_OUT_OF_RANGE.fixed();
        assert_eq!((s[0], s[2], s[12]), (0x70, 5, 0x21));
    }

    #[test]
    fn only_reads_and_writes_have_a_direction() {
        for (op, read) in [(0x08, true), (0x28, true), (0x88, true)] {
            assert_eq!(is_read(&[op]), Some(read));
        }
        for op in [0x0A, 0x2A, 0x8A] {
            assert_eq!(is_read(&[op]), Some(false));
        }
        for op in [0x00, 0x12, 0x25, 0x35, 0x9E, 0xA0] {
            assert_eq!(is_read(&[op]), None);
        }
        assert_eq!(is_read(&[]), None);
    }

    #[test]
    fn reads_and_writes_go_direct_when_the_segments_are_the_data() {
        let mut d = ScsiDisk::new(
            DmaMemoryDisk {
                disk: MemoryDisk::new(16, false),
                memory: (0..8192u32).map(|i| i as u8).collect(),
            },
            disk(1).identity,
        );
        // Two blocks from scattered memory, out of order.
        let from = [
            Segment {
                addr: 4096,
                len: 512,
            },
            Segment { addr: 0, len: 512 },
        ];
        assert_eq!(d.execute_direct(&write16(3, 2), false, &from), Some(Ok(())));
        let mut back = vec![0u8; 1024];
        d.disk.disk.read(3, &mut back).unwrap();
        assert_eq!(&back[..512], &d.disk.memory[4096..4608]);
        assert_eq!(&back[512..], &d.disk.memory[..512]);
        let to = [Segment {
            addr: 1024,
            len: 1024,
        }];
        assert_eq!(d.execute_direct(&read10(3, 2), true, &to), Some(Ok(())));
        assert_eq!(&d.disk.memory[1024..2048], &back[..]);
        // Not the way: the wrong direction, a length that does not match,
        // a command with no data, no blocks.
        assert_eq!(d.execute_direct(&read10(3, 2), false, &to), None);
        assert_eq!(d.execute_direct(&read10(3, 1), true, &to), None);
        assert_eq!(d.execute_direct(&[0x00; 6], true, &to), None);
        assert_eq!(d.execute_direct(&read10(3, 0), true, &[]), None);
        // Errors the command has whatever the way.
        assert_eq!(
            d.execute_direct(&read10(15, 2), true, &to),
            Some(Err(Sense::LBA_OUT_OF_RANGE))
        );
        // A disk that cannot: the buffered way.
        let mut plain = disk(16);
        assert_eq!(plain.execute_direct(&read10(3, 2), true, &to), None);
    }

    #[test]
    fn segments_merge_where_they_touch() {
        let s = |addr, len| Segment { addr, len };
        assert_eq!(
            merge_segments([s(0, 512), s(512, 512), s(2048, 0), s(4096, 8), s(1024, 1)]),
            vec![s(0, 1024), s(4096, 8), s(1024, 1)]
        );
    }

    proptest! {
        /// Any command descriptor block and data: an outcome, never a panic;
        /// data in never longer than allowed.
        #[test]
        fn any_cdb_is_answered(
            cdb in proptest::collection::vec(any::<u8>(), 0..20),
            op in prop_oneof![Just(0x08u8), Just(0x0A), Just(0x28), Just(0x2A), Just(0x88),
                              Just(0x8A), Just(0x12), Just(0x1A), Just(0x5A), Just(0x9E),
                              Just(0x25), Just(0xA0), Just(0x35), any::<u8>()],
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            allowed in 0usize..70000,
        ) {
            let mut cdb = cdb;
            if let Some(first) = cdb.first_mut() {
                *first = op;
            }
            let mut d = disk(100);
            if let Outcome::Good(v) = d.execute(&cdb, &data, allowed) {
                prop_assert!(v.len() <= allowed);
            }
        }

        /// Any window of any segments: the pieces name exactly the bytes of
        /// the window, in order.
        #[test]
        fn sub_segments_name_the_window(
            lens in proptest::collection::vec(0usize..5000, 0..12),
            skip in 0usize..40000,
            len in 0usize..40000,
        ) {
            // Segment i at 100 000 * i: every byte has its own address.
            let segs: Vec<Segment> = lens
                .iter()
                .enumerate()
                .map(|(i, &len)| Segment { addr: 100_000 * i as u64, len })
                .collect();
            let every: Vec<u64> = segs
                .iter()
                .flat_map(|s| (0..s.len as u64).map(move |o| s.addr + o))
                .collect();
            let want: Vec<u64> = every.iter().skip(skip).take(len).copied().collect();
            let got: Vec<u64> = sub_segments(&segs, skip, len)
                .iter()
                .flat_map(|s| {
                    assert!(s.len > 0);
                    (0..s.len as u64).map(move |o| s.addr + o)
                })
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
