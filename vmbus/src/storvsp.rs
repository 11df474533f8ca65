//! The synthetic SCSI controller's host side (Hyper-V's "storvsp"), as
//! Linux's `hv_storvsc` drives it: the `vstor_packet` protocol (version
//! negotiation, properties, SCSI requests), one disk at path 0, target 0,
//! LUN 0, its data moved to and from the guest pages a request names.
//!
//! Every request is a 64-byte `vstor_packet` (Linux's
//! `drivers/scsi/storvsc_drv.c`), in band or after a GPA-direct header
//! naming the data's pages; each gets a completion packet carrying the
//! packet back with its status. Nothing the guest sends is trusted: the
//! packet is copied, its lengths checked against the pages it names, and
//! the pages reached only through [`GuestMemory`], which refuses a page
//! that is not the guest's. A malformed request is answered with an error
//! status; it never stops the device.

use alloc::collections::VecDeque;
use alloc::vec;
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::channel::{Channel, ChannelError, Notify, SendResult};
use crate::packet::{GpaRange, OutgoingPacket, PacketKind};
use crate::scsi::{
    merge_segments, BlockDevice, Outcome, ScsiDisk, Segment, Sense, BLOCK_SIZE, CHECK_CONDITION,
    GOOD,
};
use crate::shared_mem::RingMemory;
use crate::PAGE_SIZE;

/// `enum vstor_packet_operation`.
pub mod op {
    pub const COMPLETE_IO: u32 = 1;
    pub const REMOVE_DEVICE: u32 = 2;
    pub const EXECUTE_SRB: u32 = 3;
    pub const RESET_LUN: u32 = 4;
    pub const RESET_ADAPTER: u32 = 5;
    pub const RESET_BUS: u32 = 6;
    pub const BEGIN_INITIALIZATION: u32 = 7;
    pub const END_INITIALIZATION: u32 = 8;
    pub const QUERY_PROTOCOL_VERSION: u32 = 9;
    pub const QUERY_PROPERTIES: u32 = 10;
}

/// NTSTATUS values in `vstor_packet.status`.
pub mod status {
    pub const SUCCESS: u32 = 0;
    pub const INVALID_PARAMETER: u32 = 0xC000_000D;
    pub const INVALID_DEVICE_REQUEST: u32 = 0xC000_0010;
    pub const REVISION_MISMATCH: u32 = 0xC000_0059;
}

/// `srb_status` values (and flag bits).
pub mod srb {
    pub const SUCCESS: u8 = 0x01;
    pub const ERROR: u8 = 0x04;
    pub const INVALID_REQUEST: u8 = 0x06;
    pub const SELECTION_TIMEOUT: u8 = 0x0A;
    pub const INVALID_LUN: u8 = 0x20;
    pub const AUTOSENSE_VALID: u8 = 0x80;
}

/// Protocol versions (major << 8 | minor) this device answers: Windows 10
/// (6.2), 8.1 (6.0) and 8 (5.1), whose packets are all 64 bytes.
pub const VERSIONS: [u16; 3] = [0x0602, 0x0600, 0x0501];
/// The largest transfer one request may ask for.
pub const MAX_TRANSFER_BYTES: u32 = crate::scsi::MAX_TRANSFER_BLOCKS * BLOCK_SIZE as u32;
/// Longest packet the device's reader accepts: a GPA-direct header naming
/// the pages of [`MAX_TRANSFER_BYTES`] (one more for an offset into the
/// first), and the request.
pub const MAX_PACKET: u32 = 16 + 8 + 8 + 8 * (MAX_TRANSFER_BYTES / PAGE_SIZE as u32 + 1) + 64;
/// Completions waiting for room in the guest's ring, at most: the device
/// reads no more requests while this many wait.
const QUEUE: usize = 256;
/// Requests read per call of [`StorageServer::serve`].
const PER_CALL: usize = 256;

/// `struct vmscsi_request` (52 bytes, the Windows 8 extension included).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct ScsiRequest {
    /// @0
    pub length: U16,
    /// @2
    pub srb_status: u8,
    /// @3
    pub scsi_status: u8,
    /// @4
    pub port_number: u8,
    /// @5
    pub path_id: u8,
    /// @6
    pub target_id: u8,
    /// @7
    pub lun: u8,
    /// @8
    pub cdb_length: u8,
    /// @9
    pub sense_info_length: u8,
    /// @10: 0 write (data out), 1 read (data in), 2 no data.
    pub data_in: u8,
    /// @11
    pub reserved: u8,
    /// @12
    pub data_transfer_length: U32,
    /// @16: the CDB in a request, the sense data in a completion.
    pub cdb_or_sense: [u8; 20],
    /// @36 (the Windows 8 extension from here)
    pub reserve: U16,
    /// @38
    pub queue_tag: u8,
    /// @39
    pub queue_action: u8,
    /// @40
    pub srb_flags: U32,
    /// @44
    pub time_out_value: U32,
    /// @48
    pub queue_sort_key: U32,
}
const _: () = assert!(core::mem::size_of::<ScsiRequest>() == 52);

/// `struct vstor_packet` (64 bytes): operation, flags, status, then the
/// operation's body (a [`ScsiRequest`], a version, the properties).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct VstorPacket {
    /// @0
    pub operation: U32,
    /// @4: bit 0 REQUEST_COMPLETION.
    pub flags: U32,
    /// @8: NTSTATUS.
    pub status: U32,
    /// @12
    pub body: ScsiRequest,
}
const _: () = assert!(core::mem::size_of::<VstorPacket>() == 64);

impl VstorPacket {
    /// A request for `operation` asking for its completion, its body zero
    /// (an initiator's side: tests and test guests).
    pub fn request(operation: u32) -> Self {
        let mut p = Self::new_zeroed();
        p.operation = operation.into();
        p.flags = 1.into();
        p
    }

    /// An EXECUTE_SRB request for path 0, target 0, LUN 0: `cdb` (at most
    /// 16 bytes), the direction (`data_in`: 0 out, 1 in, 2 none) and the
    /// transfer length.
    pub fn execute_srb(cdb: &[u8], data_in: u8, length: u32) -> Self {
        let mut p = Self::request(op::EXECUTE_SRB);
        let n = cdb.len().min(16);
        p.body.length = (core::mem::size_of::<ScsiRequest>() as u16).into();
        p.body.cdb_length = n as u8;
        p.body.cdb_or_sense[..n].copy_from_slice(&cdb[..n]);
        p.body.data_in = data_in;
        p.body.data_transfer_length = length.into();
        p
    }
}

/// `struct vmstorage_channel_properties` (24 bytes), in the body.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct ChannelProperties {
    pub reserved: U32,
    pub max_channel_cnt: U16,
    pub reserved1: U16,
    /// Bit 0: sub-channels supported (never, here).
    pub flags: U32,
    pub max_transfer_bytes: U32,
    pub reserved2: [u8; 8],
}
const _: () = assert!(core::mem::size_of::<ChannelProperties>() == 24);

/// The guest's memory as the device reaches it: a page outside the guest
/// is refused.
pub trait GuestMemory {
    /// Copies `buf.len()` bytes from `gpa` (within one page).
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), OutsideGuest>;
    /// Copies `data` to `gpa` (within one page).
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), OutsideGuest>;
    /// Where a disk's DMA reaches `len` bytes at `gpa` (within one page),
    /// if it can: `None` for memory that is not the guest's, or when the
    /// device's memory is reached only by copies.
    fn segment(&self, _gpa: u64, _len: usize) -> Option<Segment> {
        None
    }
}

/// A request named memory that is not the guest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutsideGuest;

/// The device's state for one open channel (the disk outlives it).
#[derive(Debug, Default)]
pub struct StorageServer {
    version: Option<u16>,
    initialized: bool,
    waiting: VecDeque<(u64, VstorPacket)>,
    /// Requests answered.
    pub completed: u64,
    /// Requests answered with an error status (malformed, outside the
    /// guest, out of order), SCSI errors not counted.
    pub refused: u64,
    /// SCSI commands that ended in CHECK CONDITION.
    pub scsi_errors: u64,
    /// Bytes read and written by the guest.
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl StorageServer {
    /// The protocol version negotiated, once it is.
    pub fn version(&self) -> Option<u16> {
        self.version
    }

    /// Sends waiting completions and serves requests until the guest's ring
    /// is empty, ours full, or [`PER_CALL`] were read. An error means the
    /// channel is broken (a corrupt ring): the caller stops using it.
    pub fn serve<R: RingMemory, N: Notify, D: BlockDevice, M: GuestMemory>(
        &mut self,
        channel: &mut Channel<R, N>,
        disks: &mut [ScsiDisk<D>],
        memory: &mut M,
    ) -> Result<(), ChannelError> {
        let served = self.serve_quietly(channel, disks, memory);
        channel.flush();
        served
    }

    fn serve_quietly<R: RingMemory, N: Notify, D: BlockDevice, M: GuestMemory>(
        &mut self,
        channel: &mut Channel<R, N>,
        disks: &mut [ScsiDisk<D>],
        memory: &mut M,
    ) -> Result<(), ChannelError> {
        let mut read = 0;
        loop {
            while let Some((id, reply)) = self.waiting.front() {
                let parts: [&[u8]; 1] = [reply.as_bytes()];
                match channel.send_quiet(&OutgoingPacket::completion(*id, &parts))? {
                    SendResult::Sent => {
                        self.completed += 1;
                        self.waiting.pop_front();
                    }
                    SendResult::Full { .. } => return Ok(()),
                }
            }
            if read >= PER_CALL {
                return Ok(());
            }
            let room = QUEUE - self.waiting.len();
            let n = channel.recv_batch(room, |p| {
                let Ok(p) = p else {
                    // Unparseable: no transaction id to answer.
                    self.refused += 1;
                    return;
                };
                let data = match p.kind {
                    PacketKind::InBand => None,
                    PacketKind::GpaDirect(ranges) => match ranges.iter().next() {
                        Some(r) if ranges.len() == 1 => Some(r),
                        _ => {
                            self.refuse(p.transaction_id, status::INVALID_PARAMETER);
                            return;
                        }
                    },
                    _ => {
                        self.refuse(p.transaction_id, status::INVALID_DEVICE_REQUEST);
                        return;
                    }
                };
                let reply = self.request(p.payload, data, disks, memory);
                if reply.status.get() != status::SUCCESS {
                    self.refused += 1;
                }
                if p.completion_requested() {
                    self.waiting.push_back((p.transaction_id, reply));
                }
            })?;
            if n == 0 {
                return Ok(());
            }
            read += n;
        }
    }

    fn refuse(&mut self, id: u64, status: u32) {
        self.refused += 1;
        self.waiting.push_back((id, completion(status)));
    }

    /// The completion for one request.
    fn request<D: BlockDevice, M: GuestMemory>(
        &mut self,
        payload: &[u8],
        data: Option<GpaRange<'_>>,
        disks: &mut [ScsiDisk<D>],
        memory: &mut M,
    ) -> VstorPacket {
        // A copy, zero-filled: a shorter packet (older protocol sizes) reads
        // as zeros past its end.
        let mut bytes = [0u8; 64];
        let n = payload.len().min(64);
        bytes[..n].copy_from_slice(&payload[..n]);
        let packet = VstorPacket::read_from_bytes(&bytes).unwrap_or_else(|_| completion(0));
        if n < 12 {
            return completion(status::INVALID_PARAMETER);
        }
        match packet.operation.get() {
            op::BEGIN_INITIALIZATION => {
                self.initialized = false;
                completion(status::SUCCESS)
            }
            op::QUERY_PROTOCOL_VERSION => {
                let asked = u16::from_le_bytes([bytes[12], bytes[13]]);
                if VERSIONS.contains(&asked) {
                    self.version = Some(asked);
                    completion(status::SUCCESS)
                } else {
                    completion(status::REVISION_MISMATCH)
                }
            }
            op::QUERY_PROPERTIES => {
                let props = ChannelProperties {
                    reserved: 0.into(),
                    max_channel_cnt: 0.into(),
                    reserved1: 0.into(),
                    flags: 0.into(),
                    max_transfer_bytes: MAX_TRANSFER_BYTES.into(),
                    reserved2: [0; 8],
                };
                let mut reply = completion(status::SUCCESS);
                reply.body.as_mut_bytes()[..24].copy_from_slice(props.as_bytes());
                reply
            }
            op::END_INITIALIZATION if self.version.is_some() => {
                self.initialized = true;
                completion(status::SUCCESS)
            }
            op::EXECUTE_SRB if self.initialized => self.execute(packet.body, data, disks, memory),
            // Nothing is queued in the device: a reset has nothing to undo.
            op::RESET_LUN | op::RESET_ADAPTER | op::RESET_BUS => completion(status::SUCCESS),
            op::END_INITIALIZATION | op::EXECUTE_SRB => completion(status::INVALID_DEVICE_REQUEST),
            _ => completion(status::INVALID_DEVICE_REQUEST),
        }
    }

    fn execute<D: BlockDevice, M: GuestMemory>(
        &mut self,
        request: ScsiRequest,
        data: Option<GpaRange<'_>>,
        disks: &mut [ScsiDisk<D>],
        memory: &mut M,
    ) -> VstorPacket {
        let mut reply = completion(status::SUCCESS);
        reply.body = request;
        reply.body.sense_info_length = 0;
        let cdb_len = usize::from(request.cdb_length).min(16);
        let cdb = &request.cdb_or_sense[..cdb_len];
        let length = request.data_transfer_length.get();
        // The data: at most the largest transfer, within the pages named.
        let range = match (data, length) {
            (_, 0) => None,
            (Some(r), n) if n <= MAX_TRANSFER_BYTES && n <= r.byte_count => Some(r),
            _ => return srb_error(reply, srb::INVALID_REQUEST),
        };
        let length = length as usize;
        // The disks are LUNs 0, 1, ... of target 0 on path 0.
        let count = disks.len();
        let unit = match (request.path_id, request.target_id) {
            (0, 0) => disks.get_mut(usize::from(request.lun)),
            _ => None,
        };
        let Some(disk) = unit else {
            return self.absent(reply, request, cdb, length, range, memory);
        };
        if cdb.first() == Some(&0xA0) && cdb.len() >= 12 && request.data_in == 1 {
            // REPORT LUNS lists every disk (SPC-4 6.33; single-level LUNs),
            // cut to the guest's buffer.
            let mut d = vec![0u8; 8 + 8 * count];
            d[..4].copy_from_slice(&((8 * count) as u32).to_be_bytes());
            for (lun, e) in d[8..].chunks_exact_mut(8).enumerate() {
                e[1] = lun as u8;
            }
            d.truncate(length);
            return self.finish(reply, Outcome::Good(d), 0, range, memory);
        }
        // A READ or WRITE: the disk moves the data to or from the guest's
        // pages itself where it can (no copy, no buffer).
        let direction = crate::scsi::is_read(cdb).filter(|&r| u8::from(r) == request.data_in);
        if let (Some(data_in), Some(r)) = (direction, range) {
            if let Some(segments) = direct_segments(memory, r, length) {
                if let Some(done) = disk.execute_direct(cdb, data_in, &segments) {
                    let outcome = match done {
                        Ok(()) => {
                            *match data_in {
                                true => &mut self.bytes_read,
                                false => &mut self.bytes_written,
                            } += length as u64;
                            Outcome::Good(alloc::vec::Vec::new())
                        }
                        Err(sense) => Outcome::Check(sense),
                    };
                    return self.finish(reply, outcome, length, None, memory);
                }
            }
        }
        let outcome = match (request.data_in, range) {
            // Data out: the guest's bytes first, then the command.
            (0, Some(r)) => {
                let Some(mut buf) = crate::scsi::buffer(length) else {
                    return self.finish(
                        reply,
                        Outcome::Check(Sense::INSUFFICIENT_RESOURCES),
                        0,
                        None,
                        memory,
                    );
                };
                if gather(memory, r, &mut buf).is_err() {
                    return srb_error(reply, srb::INVALID_REQUEST);
                }
                let o = disk.execute(cdb, &buf, 0);
                if matches!(o, Outcome::Good(_)) {
                    self.bytes_written += length as u64;
                }
                return self.finish(reply, o, length, None, memory);
            }
            (1, Some(r)) => (disk.execute(cdb, &[], length), Some(r)),
            (0..=2, None) => (disk.execute(cdb, &[], 0), None),
            _ => return srb_error(reply, srb::INVALID_REQUEST),
        };
        self.finish(reply, outcome.0, 0, outcome.1, memory)
    }

    /// A command to a unit that is not there (Linux scans 8 paths, 2
    /// targets): INQUIRY says so in its data (peripheral qualifier 3, which
    /// Linux reads: its driver calls every INQUIRY a success), REPORT LUNS
    /// lists no unit. Anything else: INVALID_LUN for another LUN of our
    /// target, a selection timeout for another path or target (Linux's
    /// driver answers INVALID_LUN by removing the unit at path 0 with that
    /// target and LUN, which for LUN 0 of target 0 is our disk).
    fn absent<M: GuestMemory>(
        &mut self,
        reply: VstorPacket,
        request: ScsiRequest,
        cdb: &[u8],
        length: usize,
        range: Option<GpaRange<'_>>,
        memory: &mut M,
    ) -> VstorPacket {
        let vpd_header;
        let data: &[u8] = match cdb.first() {
            // A VPD page: its header with peripheral qualifier 3.
            Some(0x12) if cdb.get(1).is_some_and(|b| b & 1 != 0) => {
                vpd_header = [0x7F, cdb.get(2).copied().unwrap_or(0), 0, 0];
                &vpd_header
            }
            Some(0x12) => &ABSENT_INQUIRY,
            Some(0xA0) => &[0; 8],
            _ if (request.path_id, request.target_id) == (0, 0) => {
                return srb_error(reply, srb::INVALID_LUN)
            }
            _ => return srb_error(reply, srb::SELECTION_TIMEOUT),
        };
        if request.data_in != 1 {
            return srb_error(reply, srb::INVALID_REQUEST);
        }
        let n = length.min(data.len());
        match range.map(|r| scatter(memory, r, &data[..n])) {
            Some(Ok(())) => transferred(reply, n),
            _ => srb_error(reply, srb::INVALID_REQUEST),
        }
    }

    /// Fills in the completion of a SCSI command: for data in, the bytes go
    /// to the guest's pages first.
    fn finish<M: GuestMemory>(
        &mut self,
        mut reply: VstorPacket,
        outcome: Outcome,
        written: usize,
        data_in: Option<GpaRange<'_>>,
        memory: &mut M,
    ) -> VstorPacket {
        match outcome {
            Outcome::Good(data) => {
                let n = match data_in {
                    Some(r) if !data.is_empty() => {
                        if scatter(memory, r, &data).is_err() {
                            return srb_error(reply, srb::INVALID_REQUEST);
                        }
                        self.bytes_read += data.len() as u64;
                        data.len()
                    }
                    _ => written,
                };
                reply.body.scsi_status = GOOD;
                transferred(reply, n)
            }
            Outcome::Check(sense) => {
                self.scsi_errors += 1;
                reply.body.scsi_status = CHECK_CONDITION;
                reply.body.srb_status = srb::ERROR | srb::AUTOSENSE_VALID;
                let fixed = sense.fixed();
                reply.body.cdb_or_sense = [0; 20];
                reply.body.cdb_or_sense[..fixed.len()].copy_from_slice(&fixed);
                reply.body.sense_info_length = fixed.len() as u8;
                reply.body.data_transfer_length = 0.into();
                reply
            }
        }
    }
}

/// Standard INQUIRY data of a unit that is not there: peripheral
/// qualifier 3, device type 0x1F, the usual 36 bytes.
const ABSENT_INQUIRY: [u8; 36] = {
    let mut d = [0u8; 36];
    d[0] = 0x7F;
    d[4] = 31;
    d
};

/// A completion packet with `status` and an empty body.
fn completion(status: u32) -> VstorPacket {
    let mut p = VstorPacket::new_zeroed();
    p.operation = op::COMPLETE_IO.into();
    p.status = status.into();
    p
}

fn transferred(mut reply: VstorPacket, n: usize) -> VstorPacket {
    reply.body.srb_status = srb::SUCCESS;
    reply.body.data_transfer_length = (n as u32).into();
    reply
}

fn srb_error(mut reply: VstorPacket, srb_status: u8) -> VstorPacket {
    reply.body.srb_status = srb_status;
    reply.body.scsi_status = GOOD;
    reply.body.data_transfer_length = 0.into();
    reply
}

/// Visits the guest pages of `range` that hold its first `len` bytes:
/// `(gpa, offset into the data, bytes)`, a page at most each.
fn pieces(
    range: GpaRange<'_>,
    len: usize,
    mut f: impl FnMut(u64, usize, usize) -> Result<(), OutsideGuest>,
) -> Result<(), OutsideGuest> {
    let mut at = 0;
    let mut offset = range.byte_offset as usize;
    for pfn in range.pfns() {
        if at >= len {
            break;
        }
        let n = (PAGE_SIZE - offset).min(len - at);
        let gpa = pfn
            .checked_mul(PAGE_SIZE as u64)
            .ok_or(OutsideGuest)?
            .checked_add(offset as u64)
            .ok_or(OutsideGuest)?;
        f(gpa, at, n)?;
        at += n;
        offset = 0;
    }
    if at < len {
        return Err(OutsideGuest);
    }
    Ok(())
}

/// The guest's pages of `range` that hold its first `len` bytes, as a
/// disk's DMA reaches them (neighbours merged); `None` if any is not
/// reachable so, is outside the guest, or holds part of a block (the
/// layers below split a transfer at block boundaries only).
fn direct_segments<M: GuestMemory>(
    memory: &M,
    range: GpaRange<'_>,
    len: usize,
) -> Option<alloc::vec::Vec<Segment>> {
    let mut segments = alloc::vec::Vec::new();
    pieces(range, len, |gpa, _, n| {
        if n % BLOCK_SIZE != 0 {
            return Err(OutsideGuest);
        }
        segments.push(memory.segment(gpa, n).ok_or(OutsideGuest)?);
        Ok(())
    })
    .ok()?;
    Some(merge_segments(segments))
}

pub(crate) fn gather<M: GuestMemory>(
    memory: &mut M,
    range: GpaRange<'_>,
    buf: &mut [u8],
) -> Result<(), OutsideGuest> {
    let len = buf.len();
    pieces(range, len, |gpa, at, n| {
        memory.read(gpa, &mut buf[at..at + n])
    })
}

fn scatter<M: GuestMemory>(
    memory: &mut M,
    range: GpaRange<'_>,
    data: &[u8],
) -> Result<(), OutsideGuest> {
    pieces(range, data.len(), |gpa, at, n| {
        memory.write(gpa, &data[at..at + n])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{quiet_pair, Quiet};
    use crate::packet::GpaRangeSpec;
    use crate::scsi::{rw10, Identity, IoError, MemoryDisk};
    use crate::shared_mem::HeapRing;
    use alloc::sync::Arc;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    type Ch = Channel<Arc<HeapRing>, Quiet>;

    fn pair() -> (Ch, Ch) {
        let (guest, mut host) = quiet_pair(65536);
        host.reader().set_max_packet(MAX_PACKET);
        (guest, host)
    }

    /// Guest memory of `pages` pages from GPA 0.
    struct Memory(Vec<u8>);
    impl GuestMemory for Memory {
        fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), OutsideGuest> {
            let at = usize::try_from(gpa).map_err(|_| OutsideGuest)?;
            let src = self.0.get(at..at + buf.len()).ok_or(OutsideGuest)?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), OutsideGuest> {
            let at = usize::try_from(gpa).map_err(|_| OutsideGuest)?;
            let dst = self.0.get_mut(at..at + data.len()).ok_or(OutsideGuest)?;
            dst.copy_from_slice(data);
            Ok(())
        }
    }

    struct Rig<D: BlockDevice = MemoryDisk, M: GuestMemory = Memory> {
        guest: Ch,
        host: Ch,
        server: StorageServer,
        disks: Vec<ScsiDisk<D>>,
        memory: M,
    }

    impl Rig {
        fn new() -> Rig {
            let (guest, host) = pair();
            Rig {
                guest,
                host,
                server: StorageServer::default(),
                disks: vec![ScsiDisk::new(
                    MemoryDisk::new(256, false),
                    Identity {
                        serial: *b"serial0000000001",
                        id: 1,
                    },
                )],
                memory: Memory(vec![0; 64 * PAGE_SIZE]),
            }
        }
    }

    impl<D: BlockDevice, M: GuestMemory> Rig<D, M> {
        /// Sends `packet` (with `range` as its data, if any), serves, and
        /// returns the completion.
        fn call(&mut self, id: u64, packet: &[u8], range: Option<GpaRangeSpec<'_>>) -> VstorPacket {
            let parts: [&[u8]; 1] = [packet];
            let ranges: &[GpaRangeSpec<'_>] = match &range {
                Some(r) => core::slice::from_ref(r),
                None => &[],
            };
            let out = OutgoingPacket::request(id, ranges, &parts);
            assert_eq!(self.guest.send(&out).unwrap(), SendResult::Sent);
            self.server
                .serve(&mut self.host, &mut self.disks, &mut self.memory)
                .unwrap();
            let p = self.guest.recv().unwrap().unwrap().unwrap();
            assert_eq!(p.transaction_id, id);
            assert!(matches!(p.kind, PacketKind::Completion));
            VstorPacket::read_from_bytes(&p.payload[..64]).unwrap()
        }

        fn op(&mut self, operation: u32, body: &[u8]) -> VstorPacket {
            let mut p = VstorPacket::request(operation);
            p.body.as_mut_bytes()[..body.len()].copy_from_slice(body);
            self.call(0xFFFF_FFFF_FFFF_FFFE, p.as_bytes(), None)
        }

        fn init(&mut self) {
            assert_eq!(self.op(op::BEGIN_INITIALIZATION, &[]).status.get(), 0);
            assert_eq!(
                self.op(op::QUERY_PROTOCOL_VERSION, &[0x00, 0x07])
                    .status
                    .get(),
                status::REVISION_MISMATCH
            );
            assert_eq!(
                self.op(op::QUERY_PROTOCOL_VERSION, &[0x02, 0x06])
                    .status
                    .get(),
                0
            );
            let props = self.op(op::QUERY_PROPERTIES, &[]);
            let props = ChannelProperties::read_from_bytes(&props.body.as_bytes()[..24]).unwrap();
            assert_eq!(props.max_transfer_bytes.get(), MAX_TRANSFER_BYTES);
            assert_eq!(props.max_channel_cnt.get(), 0);
            assert_eq!(self.op(op::END_INITIALIZATION, &[]).status.get(), 0);
            assert_eq!(self.server.version(), Some(0x0602));
        }

        fn srb(
            &mut self,
            id: u64,
            cdb: &[u8],
            data_in: u8,
            length: u32,
            range: Option<GpaRangeSpec<'_>>,
        ) -> VstorPacket {
            let p = VstorPacket::execute_srb(cdb, data_in, length);
            self.call(id, p.as_bytes(), range)
        }
    }

    #[test]
    fn initializes_then_writes_and_reads_through_guest_pages() {
        let mut rig = Rig::new();
        rig.init();
        // 8 blocks from byte 100 of page 3: spans pages 3 and 4 (given out
        // of order: 3 then 9), as a guest's scattered buffer does.
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        rig.memory.0[3 * PAGE_SIZE + 100..4 * PAGE_SIZE].copy_from_slice(&data[..3996]);
        rig.memory.0[9 * PAGE_SIZE..9 * PAGE_SIZE + 100].copy_from_slice(&data[3996..]);
        let pfns = [3u64, 9];
        let range = GpaRangeSpec {
            byte_count: 4096,
            byte_offset: 100,
            pfns: &pfns,
        };
        let w = rig.srb(1, &rw10(0x2A, 5, 8), 0, 4096, Some(range));
        assert_eq!((w.status.get(), w.body.srb_status), (0, srb::SUCCESS));
        assert_eq!(w.body.data_transfer_length.get(), 4096);
        assert_eq!(&rig.disks[0].disk.bytes()[5 * 512..13 * 512], &data[..]);
        // Read it back into pages 20 and 21.
        let pfns = [20u64];
        let range = GpaRangeSpec {
            byte_count: 4096,
            byte_offset: 0,
            pfns: &pfns,
        };
        let r = rig.srb(2, &rw10(0x28, 5, 8), 1, 4096, Some(range));
        assert_eq!(
            (r.body.srb_status, r.body.scsi_status),
            (srb::SUCCESS, GOOD)
        );
        assert_eq!(&rig.memory.0[20 * PAGE_SIZE..21 * PAGE_SIZE], &data[..]);
        assert_eq!(
            (rig.server.bytes_written, rig.server.bytes_read),
            (4096, 4096)
        );
        // No data: TEST UNIT READY, SYNCHRONIZE CACHE.
        let t = rig.srb(3, &[0, 0, 0, 0, 0, 0], 2, 0, None);
        assert_eq!(t.body.srb_status, srb::SUCCESS);
        let s = rig.srb(4, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 2, 0, None);
        assert_eq!(s.body.srb_status, srb::SUCCESS);
    }

    /// Guest memory a disk reaches by address (GPA = address), shared
    /// with the disk that moves data to and from it.
    #[derive(Clone)]
    struct Addressed(alloc::rc::Rc<core::cell::RefCell<Vec<u8>>>);
    impl GuestMemory for Addressed {
        fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), OutsideGuest> {
            Memory(self.0.borrow().clone()).read(gpa, buf)
        }
        fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), OutsideGuest> {
            let at = gpa as usize;
            let mut m = self.0.borrow_mut();
            let dst = m.get_mut(at..at + data.len()).ok_or(OutsideGuest)?;
            dst.copy_from_slice(data);
            Ok(())
        }
        fn segment(&self, gpa: u64, len: usize) -> Option<Segment> {
            (gpa as usize + len <= self.0.borrow().len()).then_some(Segment { addr: gpa, len })
        }
    }

    /// A disk that moves its data by address ([`Addressed`]), counting the
    /// transfers it did so.
    struct DmaDisk {
        disk: MemoryDisk,
        memory: Addressed,
        direct: usize,
    }
    impl BlockDevice for DmaDisk {
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
            self.disk.write(lba, buf)
        }
        fn flush(&mut self) -> Result<(), IoError> {
            Ok(())
        }
        fn direct(&self) -> bool {
            true
        }
        fn read_to(&mut self, mut lba: u64, to: &[Segment]) -> Result<(), IoError> {
            self.direct += 1;
            for s in to {
                let mut buf = vec![0u8; s.len];
                self.disk.read(lba, &mut buf)?;
                self.memory.write(s.addr, &buf).map_err(|_| IoError)?;
                lba += (s.len / BLOCK_SIZE) as u64;
            }
            Ok(())
        }
        fn write_from(&mut self, mut lba: u64, from: &[Segment]) -> Result<(), IoError> {
            self.direct += 1;
            for s in from {
                let mut buf = vec![0u8; s.len];
                self.memory.read(s.addr, &mut buf).map_err(|_| IoError)?;
                self.disk.write(lba, &buf)?;
                lba += (s.len / BLOCK_SIZE) as u64;
            }
            Ok(())
        }
    }

    #[test]
    fn a_disk_that_reaches_guest_pages_moves_the_data_itself() {
        let (guest, host) = pair();
        let shared = Addressed(alloc::rc::Rc::new(core::cell::RefCell::new(vec![
            0;
            64 * PAGE_SIZE
        ])));
        let mut rig = Rig {
            guest,
            host,
            server: StorageServer::default(),
            disks: vec![ScsiDisk::new(
                DmaDisk {
                    disk: MemoryDisk::new(256, false),
                    memory: shared.clone(),
                    direct: 0,
                },
                Identity {
                    serial: *b"serial0000000001",
                    id: 1,
                },
            )],
            memory: shared.clone(),
        };
        rig.init();
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 13) as u8).collect();
        {
            let mut m = shared.0.borrow_mut();
            m[3 * PAGE_SIZE + 512..4 * PAGE_SIZE].copy_from_slice(&data[..3584]);
            m[4 * PAGE_SIZE..5 * PAGE_SIZE].copy_from_slice(&data[3584..7680]);
            m[9 * PAGE_SIZE..9 * PAGE_SIZE + 512].copy_from_slice(&data[7680..]);
        }
        // Pages 3, 4 (touching: one segment) and 9, from block 1 of page 3.
        let pfns = [3u64, 4, 9];
        let range = |pfns| GpaRangeSpec {
            byte_count: 8192,
            byte_offset: 512,
            pfns,
        };
        let w = rig.srb(1, &rw10(0x2A, 7, 16), 0, 8192, Some(range(&pfns)));
        assert_eq!((w.status.get(), w.body.srb_status), (0, srb::SUCCESS));
        assert_eq!(w.body.data_transfer_length.get(), 8192);
        assert_eq!(
            &rig.disks[0].disk.disk.bytes()[7 * 512..23 * 512],
            &data[..]
        );
        let pfns = [30u64, 20, 21];
        let r = rig.srb(2, &rw10(0x28, 7, 16), 1, 8192, Some(range(&pfns)));
        assert_eq!(
            (r.body.srb_status, r.body.data_transfer_length.get()),
            (srb::SUCCESS, 8192)
        );
        {
            let m = shared.0.borrow();
            assert_eq!(&m[30 * PAGE_SIZE + 512..31 * PAGE_SIZE], &data[..3584]);
            assert_eq!(&m[20 * PAGE_SIZE..21 * PAGE_SIZE], &data[3584..7680]);
            assert_eq!(&m[21 * PAGE_SIZE..21 * PAGE_SIZE + 512], &data[7680..]);
        }
        assert_eq!(rig.disks[0].disk.direct, 2);
        assert_eq!(
            (rig.server.bytes_written, rig.server.bytes_read),
            (8192, 8192)
        );
        // Part of a block in a page (byte offset 100): the buffered way.
        let r = rig.srb(
            3,
            &rw10(0x28, 7, 8),
            1,
            4096,
            Some(GpaRangeSpec {
                byte_count: 4096,
                byte_offset: 100,
                pfns: &[40, 41],
            }),
        );
        assert_eq!(r.body.srb_status, srb::SUCCESS);
        assert_eq!(rig.disks[0].disk.direct, 2);
        assert_eq!(
            &shared.0.borrow()[40 * PAGE_SIZE + 100..41 * PAGE_SIZE],
            &data[..3996]
        );
        // A page outside the guest: refused, whichever way.
        let outside = GpaRangeSpec {
            byte_count: 4096,
            byte_offset: 0,
            pfns: &[1000],
        };
        let r = rig.srb(4, &rw10(0x28, 7, 8), 1, 4096, Some(outside));
        assert_eq!(r.body.srb_status, srb::INVALID_REQUEST);
    }

    #[test]
    fn scsi_errors_come_back_with_sense() {
        let mut rig = Rig::new();
        rig.init();
        let pfns = [1u64];
        let range = GpaRangeSpec {
            byte_count: 512,
            byte_offset: 0,
            pfns: &pfns,
        };
        let r = rig.srb(1, &rw10(0x28, 300, 1), 1, 512, Some(range));
        assert_eq!(r.body.scsi_status, CHECK_CONDITION);
        assert_eq!(r.body.srb_status, srb::ERROR | srb::AUTOSENSE_VALID);
        assert_eq!(r.body.sense_info_length, 18);
        assert_eq!((r.body.cdb_or_sense[2], r.body.cdb_or_sense[12]), (5, 0x21));
        assert_eq!(rig.server.scsi_errors, 1);
    }

    /// Several disks are LUNs 0, 1, ... of target 0: REPORT LUNS lists
    /// them all, each LUN reaches its own disk, the next LUN is absent.
    #[test]
    fn several_disks_are_luns_of_target_0() {
        let mut rig = Rig::new();
        let mut second = MemoryDisk::new(64, false);
        second.write(5, &[0x42; 512]).unwrap();
        rig.disks.push(ScsiDisk::new(
            second,
            Identity {
                serial: *b"serial0000000002",
                id: 2,
            },
        ));
        rig.init();
        let pfns = [1u64];
        let page = GpaRangeSpec {
            byte_count: 512,
            byte_offset: 0,
            pfns: &pfns,
        };
        let luns = [0xA0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0];
        let r = rig.srb(1, &luns, 1, 512, Some(page));
        assert_eq!(r.body.srb_status, srb::SUCCESS);
        assert_eq!(r.body.data_transfer_length.get(), 24);
        assert_eq!(
            rig.memory.0[PAGE_SIZE..PAGE_SIZE + 24],
            [0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        // A buffer shorter than the list gets its start.
        let r = rig.srb(
            2,
            &luns,
            1,
            8,
            Some(GpaRangeSpec {
                byte_count: 8,
                ..page
            }),
        );
        assert_eq!(r.body.data_transfer_length.get(), 8);
        // LUN 1 reads the second disk; LUN 0 the first.
        let mut p = VstorPacket::execute_srb(&rw10(0x28, 5, 1), 1, 512);
        p.body.lun = 1;
        let r = rig.call(3, p.as_bytes(), Some(page));
        assert_eq!(r.body.srb_status, srb::SUCCESS);
        assert!(rig.memory.0[PAGE_SIZE..PAGE_SIZE + 512]
            .iter()
            .all(|&b| b == 0x42));
        let r = rig.srb(4, &rw10(0x28, 5, 1), 1, 512, Some(page));
        assert_eq!(r.body.srb_status, srb::SUCCESS);
        assert!(rig.memory.0[PAGE_SIZE..PAGE_SIZE + 512]
            .iter()
            .all(|&b| b == 0));
        // LUN 2 is not there.
        p.body.lun = 2;
        let r = rig.call(5, p.as_bytes(), Some(page));
        assert_eq!(r.body.srb_status, srb::INVALID_LUN);
    }

    #[test]
    fn hostile_requests_get_an_error_status() {
        let mut rig = Rig::new();
        // Before initialization.
        let early = rig.srb(1, &[0, 0, 0, 0, 0, 0], 2, 0, None);
        assert_eq!(early.status.get(), status::INVALID_DEVICE_REQUEST);
        rig.init();
        // A page outside the guest's memory.
        let pfns = [1u64 << 40];
        let outside = GpaRangeSpec {
            byte_count: 512,
            byte_offset: 0,
            pfns: &pfns,
        };
        let r = rig.srb(2, &rw10(0x28, 0, 1), 1, 512, Some(outside));
        assert_eq!(r.body.srb_status, srb::INVALID_REQUEST);
        let w = rig.srb(3, &rw10(0x2A, 0, 1), 0, 512, Some(outside));
        assert_eq!(w.body.srb_status, srb::INVALID_REQUEST);
        // A transfer longer than the pages named, or than the largest.
        let pfns = [1u64];
        let small = GpaRangeSpec {
            byte_count: 512,
            byte_offset: 0,
            pfns: &pfns,
        };
        let r = rig.srb(4, &rw10(0x28, 0, 2), 1, 1024, Some(small));
        assert_eq!(r.body.srb_status, srb::INVALID_REQUEST);
        let r = rig.srb(5, &rw10(0x28, 0, 2), 1, MAX_TRANSFER_BYTES + 512, None);
        assert_eq!(r.body.srb_status, srb::INVALID_REQUEST);
        // Another LUN: INQUIRY says nobody is there, READ gets INVALID_LUN.
        let mut p = VstorPacket::execute_srb(&[0x12, 0, 0, 0, 36, 0], 1, 36);
        p.body.lun = 1;
        let r = rig.call(6, p.as_bytes(), Some(small));
        assert_eq!(r.body.srb_status, srb::SUCCESS);
        assert_eq!(rig.memory.0[PAGE_SIZE], 0x7F);
        p.body.cdb_or_sense[..10].copy_from_slice(&rw10(0x28, 0, 1));
        p.body.cdb_length = 10;
        let r = rig.call(7, p.as_bytes(), Some(small));
        assert_eq!(r.body.srb_status, srb::INVALID_LUN);
        // Another path: REPORT LUNS lists nobody, READ times out (never
        // INVALID_LUN, which Linux takes as "remove LUN 0 of target 0").
        p.body.lun = 0;
        p.body.path_id = 3;
        let r = rig.call(17, p.as_bytes(), Some(small));
        assert_eq!(r.body.srb_status, srb::SELECTION_TIMEOUT);
        p.body.cdb_or_sense[..12].copy_from_slice(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]);
        p.body.cdb_length = 12;
        p.body.data_transfer_length = 16.into();
        rig.memory.0[PAGE_SIZE..PAGE_SIZE + 16].fill(0xEE);
        let r = rig.call(18, p.as_bytes(), Some(small));
        assert_eq!(r.body.srb_status, srb::SUCCESS);
        assert_eq!(r.body.data_transfer_length.get(), 8);
        assert_eq!(rig.memory.0[PAGE_SIZE..PAGE_SIZE + 8], [0; 8]);
        // Too short to be a request; an unknown operation.
        assert_eq!(
            rig.call(8, &[3, 0, 0, 0, 0, 0, 0, 0], None).status.get(),
            status::INVALID_PARAMETER
        );
        assert_eq!(rig.op(99, &[]).status.get(), status::INVALID_DEVICE_REQUEST);
        // The device still works.
        let r = rig.srb(9, &rw10(0x28, 0, 1), 1, 512, Some(small));
        assert_eq!(r.body.srb_status, srb::SUCCESS);
    }

    proptest! {
        /// Any request bytes and any range: a completion for each, never a
        /// panic, never a write outside the guest's memory (the memory
        /// refuses it; the device reports it).
        #[test]
        fn any_request_is_answered(
            payload in proptest::collection::vec(any::<u8>(), 0..80),
            operation in prop_oneof![Just(op::EXECUTE_SRB), 0u32..16],
            cdb_op in prop_oneof![Just(0x28u8), Just(0x2A), Just(0x88), Just(0x8A), Just(0x12), any::<u8>()],
            data_in in 0u8..4,
            length in prop_oneof![0u32..8192, any::<u32>()],
            offset in 0u32..4096,
            pfns in proptest::collection::vec(prop_oneof![0u64..80, any::<u64>()], 0..4),
        ) {
            let mut rig = Rig::new();
            rig.init();
            let mut packet = payload;
            packet.resize(packet.len().max(16), 0);
            packet[..4].copy_from_slice(&operation.to_le_bytes());
            if packet.len() > 28 {
                packet[28] = cdb_op;
                packet[22] = data_in;
                packet[24..28].copy_from_slice(&length.to_le_bytes());
            }
            let count = pages_for(offset, pfns.len()) as u32;
            let range = (!pfns.is_empty()).then_some(GpaRangeSpec {
                byte_count: count,
                byte_offset: offset,
                pfns: &pfns,
            });
            let _ = rig.call(7, &packet, range);
        }
    }

    /// Bytes that `pages` pages hold from `offset`.
    fn pages_for(offset: u32, pages: usize) -> usize {
        (pages * PAGE_SIZE).saturating_sub(offset as usize).max(1)
    }
}
