//! The synthetic network adapter's host side (Hyper-V's "netvsp"), as
//! Linux's `hv_netvsc` drives it: NVSP (the VMBus-level protocol: version,
//! receive and send buffers, RNDIS messages) carrying RNDIS (the NDIS
//! remote protocol: initialization, OID queries and sets, data packets).
//!
//! The guest gives the device two buffers through GPADLs: a send buffer in
//! sections (its RNDIS messages, one or more per section) and a receive
//! buffer the device cuts into sections of [`RECV_SECTION_SIZE`]. Every
//! RNDIS message for the guest (a completion, a status indication, a
//! frame) is copied into a free receive section and announced by a
//! transfer-pages packet naming it; the guest's completion of that packet
//! frees the section. Frames come and go through a [`Wire`] (a port of the
//! root's virtual switch).
//!
//! Nothing the guest sends is trusted: packets are copied, every offset and
//! length is checked against what the message or buffer holds, guest pages
//! are reached only through [`GuestMemory`] (which refuses a page that is
//! not the guest's), and a completion that names no section in flight is
//! refused. A malformed message is counted and dropped, or answered with a
//! failure status; it never stops the device. No offloads are offered:
//! frames are plain Ethernet frames of at most 1514 bytes.
//!
//! Layouts: Linux's `drivers/net/hyperv/hyperv_net.h` (NVSP, packed
//! little-endian structs) and `include/linux/rndis.h` / MS-RNDIS.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::channel::{Channel, ChannelError, Notify, SendResult};
use crate::packet::{OutgoingKind, OutgoingPacket, PacketKind, TransferRange};
use crate::shared_mem::RingMemory;
use crate::storvsp::{gather, GuestMemory, OutsideGuest};
use crate::PAGE_SIZE;

/// NVSP message types (`enum nvsp_msg_type`).
pub mod nvsp {
    pub const INIT: u32 = 1;
    pub const INIT_COMPLETE: u32 = 2;
    pub const SEND_NDIS_VERSION: u32 = 100;
    pub const SEND_RECV_BUF: u32 = 101;
    pub const SEND_RECV_BUF_COMPLETE: u32 = 102;
    pub const REVOKE_RECV_BUF: u32 = 103;
    pub const SEND_SEND_BUF: u32 = 104;
    pub const SEND_SEND_BUF_COMPLETE: u32 = 105;
    pub const REVOKE_SEND_BUF: u32 = 106;
    pub const SEND_RNDIS_PKT: u32 = 107;
    pub const SEND_RNDIS_PKT_COMPLETE: u32 = 108;
    pub const SEND_NDIS_CONFIG: u32 = 125;
    /// `enum nvsp_status`.
    pub const SUCCESS: u32 = 1;
    pub const FAILURE: u32 = 2;
    /// NVSP version 2 (Windows Server 2008 R2's), the one this device
    /// speaks: no sub-channels, no VF, no offload negotiation over NVSP.
    pub const VERSION_2: u32 = 0x30002;
    /// The receive buffer's transfer page set id.
    pub const RECV_BUFFER_ID: u16 = 0xCAFE;
    /// `send_buf_section_index` of a message not in the send buffer.
    pub const NO_SECTION: u32 = 0xFFFF_FFFF;
    /// `struct nvsp_message` as Linux sizes it: every message the device
    /// sends is this long (zero-padded).
    pub const MESSAGE_SIZE: usize = 40;
}

/// RNDIS message types, status codes and the OIDs this device knows.
pub mod rndis {
    pub const PACKET_MSG: u32 = 1;
    pub const INITIALIZE_MSG: u32 = 2;
    pub const HALT_MSG: u32 = 3;
    pub const QUERY_MSG: u32 = 4;
    pub const SET_MSG: u32 = 5;
    pub const RESET_MSG: u32 = 6;
    pub const INDICATE_STATUS_MSG: u32 = 7;
    pub const KEEPALIVE_MSG: u32 = 8;
    /// A completion's type is its request's with this bit.
    pub const COMPLETION: u32 = 0x8000_0000;

    pub const STATUS_SUCCESS: u32 = 0;
    pub const STATUS_FAILURE: u32 = 0xC000_0001;
    pub const STATUS_INVALID_DATA: u32 = 0xC001_0015;
    pub const STATUS_NOT_SUPPORTED: u32 = 0xC000_00BB;
    pub const STATUS_MEDIA_CONNECT: u32 = 0x4001_000B;
    pub const STATUS_MEDIA_DISCONNECT: u32 = 0x4001_000C;

    pub const OID_GEN_SUPPORTED_LIST: u32 = 0x0001_0101;
    pub const OID_GEN_HARDWARE_STATUS: u32 = 0x0001_0102;
    pub const OID_GEN_MEDIA_SUPPORTED: u32 = 0x0001_0103;
    pub const OID_GEN_MEDIA_IN_USE: u32 = 0x0001_0104;
    pub const OID_GEN_MAXIMUM_FRAME_SIZE: u32 = 0x0001_0106;
    pub const OID_GEN_LINK_SPEED: u32 = 0x0001_0107;
    pub const OID_GEN_CURRENT_PACKET_FILTER: u32 = 0x0001_010E;
    pub const OID_GEN_MAXIMUM_TOTAL_SIZE: u32 = 0x0001_0111;
    pub const OID_GEN_MEDIA_CONNECT_STATUS: u32 = 0x0001_0114;
    pub const OID_GEN_RNDIS_CONFIG_PARAMETER: u32 = 0x0001_021B;
    pub const OID_802_3_PERMANENT_ADDRESS: u32 = 0x0101_0101;
    pub const OID_802_3_CURRENT_ADDRESS: u32 = 0x0101_0102;
    pub const OID_802_3_MULTICAST_LIST: u32 = 0x0101_0103;
    pub const OID_802_3_MAXIMUM_LIST_SIZE: u32 = 0x0101_0104;
    pub const OID_TCP_OFFLOAD_PARAMETERS: u32 = 0xFC01_020C;
    pub const OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES: u32 = 0xFC01_020D;

    /// Packet filter bits (`NDIS_PACKET_TYPE_*`).
    pub const FILTER_DIRECTED: u32 = 0x1;
    pub const FILTER_MULTICAST: u32 = 0x2;
    pub const FILTER_ALL_MULTICAST: u32 = 0x4;
    pub const FILTER_BROADCAST: u32 = 0x8;
    pub const FILTER_PROMISCUOUS: u32 = 0x20;

    /// `struct rndis_per_packet_info` type of the 802.1Q tag.
    pub const PPI_IEEE_8021Q: u32 = 6;
    /// `NDIS_OBJECT_TYPE_OFFLOAD` and the size of an `NDIS_OFFLOAD` of
    /// revision 1 (NDIS 6.0, Linux's `NDIS_OFFLOAD_SIZE_6_0`): the
    /// hardware-capabilities answer, all capabilities zero. Linux requires
    /// type 0xA7, revision 1 or more, and a size from 112 to the length.
    pub const NDIS_OBJECT_TYPE_OFFLOAD: u8 = 0xA7;
    pub const NDIS_OFFLOAD_REVISION_1: u8 = 1;
    pub const NDIS_OFFLOAD_SIZE_6_0: u16 = 112;
}

/// Sections of the receive buffer the device cuts: an RNDIS packet header
/// (44 bytes) and the longest frame fit.
pub const RECV_SECTION_SIZE: u32 = 1728;
/// Send-buffer sections the device asks of the guest.
pub const SEND_SECTION_SIZE: u32 = 6144;
/// The largest buffers the device maps (pages): Linux gives 15 MiB
/// (receive, NVSP 2) and 1 MiB (send); a larger buffer is refused.
pub const MAX_BUFFER_PAGES: usize = (16 << 20) / PAGE_SIZE;
/// The longest RNDIS message (or batch) the device reads from the guest: a
/// full send section and a frame in pages after it (Linux's largest, with
/// no segmentation offload). On the root's stack: kept small.
pub const MAX_RNDIS_MESSAGE: usize = 8 << 10;
/// The largest frame (no FCS, no tag) and the MTU it carries.
pub const MAX_FRAME: usize = 1514;
pub const MTU: u32 = 1500;
/// Longest packet the device's reader accepts: a GPA-direct header naming
/// the pages of [`MAX_RNDIS_MESSAGE`] in up to 32 ranges, and an NVSP
/// message.
pub const MAX_PACKET: u32 = 16 + 8 + 32 * 16 + 8 * (MAX_RNDIS_MESSAGE as u32 / 4096 + 32) + 64;
/// RNDIS packets per message the device takes (`max_pkt_per_msg`).
const MAX_PACKETS_PER_MESSAGE: u32 = 8;
/// RNDIS messages the device reads from one send, at most: a guest that
/// packs more than it was told (four times over) gets a failure.
const MAX_MESSAGES_PER_SEND: usize = 4 * MAX_PACKETS_PER_MESSAGE as usize;
/// NVSP completions waiting for room in the guest's ring, at most: the
/// device reads no more while this many wait.
const QUEUE: usize = 256;
/// Packets read per call of [`NetServer::serve`].
const PER_CALL: usize = 256;
/// RNDIS control answers waiting for a free receive section, at most.
const CONTROL_QUEUE: usize = 16;

/// The root's end of the adapter: frames from the guest go out through
/// it, frames for the guest wait in it.
pub trait Wire {
    /// A frame the guest sent (untagged, or tagged if the guest asked for
    /// an 802.1Q tag).
    fn transmit(&mut self, frame: &[u8]);
    /// The next frame for the guest, left waiting.
    fn peek(&self) -> Option<&[u8]>;
    /// Drops the frame [`Wire::peek`] showed.
    fn pop(&mut self);
}

/// The GPADLs the guest made for this channel.
pub trait Gpadls {
    /// The pages of GPADL `id` (one range, whole pages) if it exists and
    /// belongs to this channel.
    fn pages(&self, id: u32) -> Option<&[u64]>;
}

/// A buffer the guest gave the device: its pages, copied.
#[derive(Debug)]
struct GuestBuffer {
    pfns: Vec<u64>,
}

impl GuestBuffer {
    fn len(&self) -> usize {
        self.pfns.len() * PAGE_SIZE
    }

    /// Copies `buf.len()` bytes at `offset` out of the buffer.
    fn read<M: GuestMemory>(
        &self,
        m: &mut M,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), OutsideGuest> {
        self.pieces(offset, buf.len(), |gpa, at, n| {
            m.read(gpa, &mut buf[at..at + n])
        })
    }

    /// Copies `data` to `offset` in the buffer.
    fn write<M: GuestMemory>(
        &self,
        m: &mut M,
        offset: usize,
        data: &[u8],
    ) -> Result<(), OutsideGuest> {
        self.pieces(offset, data.len(), |gpa, at, n| {
            m.write(gpa, &data[at..at + n])
        })
    }

    fn pieces(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(u64, usize, usize) -> Result<(), OutsideGuest>,
    ) -> Result<(), OutsideGuest> {
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(OutsideGuest);
        }
        let mut at = 0;
        while at < len {
            let pos = offset + at;
            let pfn = self.pfns[pos / PAGE_SIZE];
            let in_page = pos % PAGE_SIZE;
            let n = (PAGE_SIZE - in_page).min(len - at);
            let gpa = pfn.checked_mul(PAGE_SIZE as u64).ok_or(OutsideGuest)? + in_page as u64;
            f(gpa, at, n)?;
            at += n;
        }
        Ok(())
    }
}

/// The receive buffer: its sections, which are free and which the guest
/// holds.
#[derive(Debug)]
struct RecvBuffer {
    /// Which receive buffer of the channel this is (the upper half of the
    /// transaction ids of its sections: a late completion for a buffer the
    /// guest replaced frees nothing of the new one).
    generation: u32,
    buffer: GuestBuffer,
    free: Vec<u32>,
    /// Bit per section: announced to the guest, not yet completed.
    in_flight: Vec<u64>,
}

impl RecvBuffer {
    fn sections(&self) -> u32 {
        (self.buffer.len() / RECV_SECTION_SIZE as usize) as u32
    }

    fn is_in_flight(&self, s: u32) -> bool {
        self.in_flight
            .get(s as usize / 64)
            .is_some_and(|w| w & (1 << (s % 64)) != 0)
    }

    fn mark(&mut self, s: u32, on: bool) {
        if let Some(w) = self.in_flight.get_mut(s as usize / 64) {
            if on {
                *w |= 1 << (s % 64);
            } else {
                *w &= !(1 << (s % 64));
            }
        }
    }
}

/// The device's counters for one adapter.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames (and bytes) from the guest onto the wire.
    pub frames_sent: u64,
    pub bytes_sent: u64,
    /// Frames (and bytes) from the wire into the guest.
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Frames for the guest it does not take (its packet filter, or not
    /// initialized yet).
    pub frames_filtered: u64,
    /// Guest messages refused: malformed NVSP or RNDIS, bad lengths,
    /// pages outside the guest, completions naming nothing in flight.
    pub refused: u64,
    /// Transfer-pages packets the guest completed.
    pub receives_completed: u64,
}

/// The device's state for one open channel.
#[derive(Debug)]
pub struct NetServer {
    mac: [u8; 6],
    version: Option<u32>,
    ndis_version: Option<(u32, u32)>,
    recv: Option<RecvBuffer>,
    send: Option<GuestBuffer>,
    /// The guest initialized RNDIS (and has not halted it).
    initialized: bool,
    filter: u32,
    link_up: bool,
    /// A link-state indication the guest has not been sent yet.
    link_changed: bool,
    /// NVSP completions waiting for ring room: (transaction id, message).
    waiting: VecDeque<(u64, [u8; nvsp::MESSAGE_SIZE])>,
    /// RNDIS answers waiting for a receive section.
    control: VecDeque<Vec<u8>>,
    /// Receive buffers the guest has given so far.
    generations: u32,
    pub counters: NetCounters,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn put(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// An NVSP message of `kind` with `fields` after the type, zero-padded.
fn nvsp_message(kind: u32, fields: &[u32]) -> [u8; nvsp::MESSAGE_SIZE] {
    let mut m = [0u8; nvsp::MESSAGE_SIZE];
    put(&mut m, 0, kind);
    for (i, f) in fields.iter().enumerate() {
        put(&mut m, 4 + 4 * i, *f);
    }
    m
}

/// Bytes for an RNDIS message to the guest, or `None` without memory.
fn message(len: usize) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).ok()?;
    v.resize(len, 0);
    Some(v)
}

/// The RNDIS PACKET header's size (type, length, then nine u32 fields);
/// `data_offset` counts from after type and length.
const PACKET_HEADER: usize = 44;

impl NetServer {
    /// A device with address `mac`, its link up.
    pub fn new(mac: [u8; 6]) -> Self {
        NetServer {
            mac,
            version: None,
            ndis_version: None,
            recv: None,
            send: None,
            initialized: false,
            filter: 0,
            link_up: true,
            link_changed: false,
            waiting: VecDeque::new(),
            control: VecDeque::new(),
            generations: 0,
            counters: NetCounters::default(),
        }
    }

    /// The NVSP version negotiated, once it is.
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// The NDIS version the guest announced.
    pub fn ndis_version(&self) -> Option<(u32, u32)> {
        self.ndis_version
    }

    /// Whether RNDIS is initialized and the guest takes frames (a packet
    /// filter is set).
    pub fn is_receiving(&self) -> bool {
        self.initialized && self.filter != 0 && self.recv.is_some()
    }

    pub fn packet_filter(&self) -> u32 {
        self.filter
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sections of the receive buffer (total, in the guest's hands).
    pub fn receive_sections(&self) -> (u32, u32) {
        self.recv.as_ref().map_or((0, 0), |r| {
            (r.sections(), r.sections() - r.free.len() as u32)
        })
    }

    /// Connects or disconnects the cable: the guest is told by a status
    /// indication.
    /// Nothing in flight with the guest: every receive section it was
    /// given completed, no completion or RNDIS answer waiting for room, no
    /// link change unannounced.
    pub fn quiescent(&self) -> bool {
        let sections_back = self
            .recv
            .as_ref()
            .is_none_or(|r| r.in_flight.iter().all(|w| *w == 0));
        sections_back && self.waiting.is_empty() && self.control.is_empty() && !self.link_changed
    }

    pub fn set_link(&mut self, up: bool) {
        if self.link_up != up {
            self.link_up = up;
            self.link_changed = true;
        }
    }

    /// Sends waiting completions and answers, delivers frames the guest
    /// takes, and serves the guest's packets until its ring is empty, ours
    /// full, or [`PER_CALL`] were read. An error means the channel is
    /// broken (a corrupt ring): the caller stops using it.
    pub fn serve<R: RingMemory, N: Notify, G: Gpadls, M: GuestMemory, W: Wire>(
        &mut self,
        channel: &mut Channel<R, N>,
        gpadls: &G,
        memory: &mut M,
        wire: &mut W,
    ) -> Result<(), ChannelError> {
        let served = self.serve_quietly(channel, gpadls, memory, wire);
        channel.flush();
        served
    }

    fn serve_quietly<R: RingMemory, N: Notify, G: Gpadls, M: GuestMemory, W: Wire>(
        &mut self,
        channel: &mut Channel<R, N>,
        gpadls: &G,
        memory: &mut M,
        wire: &mut W,
    ) -> Result<(), ChannelError> {
        let mut read = 0;
        loop {
            while let Some((id, reply)) = self.waiting.front() {
                let parts: [&[u8]; 1] = [reply];
                match channel.send_quiet(&OutgoingPacket::completion(*id, &parts))? {
                    SendResult::Sent => {
                        self.waiting.pop_front();
                    }
                    SendResult::Full { .. } => return Ok(()),
                }
            }
            if !self.deliver(channel, memory, wire)? {
                return Ok(());
            }
            if read >= PER_CALL {
                return Ok(());
            }
            let room = QUEUE - self.waiting.len();
            let n = channel.recv_batch(room, |p| {
                let Ok(p) = p else {
                    self.counters.refused += 1;
                    return;
                };
                self.packet(&p, gpadls, memory, wire);
            })?;
            // Nothing read: the completions and deliveries above were the
            // last; a read's go out at the top of the next round.
            if n == 0 {
                return Ok(());
            }
            read += n;
        }
    }

    /// Copies RNDIS answers, a link indication and frames into free
    /// receive sections and announces them. False if the ring is full.
    fn deliver<R: RingMemory, N: Notify, M: GuestMemory, W: Wire>(
        &mut self,
        channel: &mut Channel<R, N>,
        memory: &mut M,
        wire: &mut W,
    ) -> Result<bool, ChannelError> {
        if self.recv.is_none() {
            return Ok(true);
        }
        while let Some(m) = self.control.pop_front() {
            match self.announce(channel, memory, &m, 1)? {
                Announced::Sent | Announced::Refused => {}
                Announced::NoSection => {
                    self.control.push_front(m);
                    return Ok(true);
                }
                Announced::RingFull => {
                    self.control.push_front(m);
                    return Ok(false);
                }
            }
        }
        if self.link_changed && self.initialized {
            let status = if self.link_up {
                rndis::STATUS_MEDIA_CONNECT
            } else {
                rndis::STATUS_MEDIA_DISCONNECT
            };
            let mut m = [0u8; 20];
            put(&mut m, 0, rndis::INDICATE_STATUS_MSG);
            put(&mut m, 4, 20);
            put(&mut m, 8, status);
            match self.announce(channel, memory, &m, 1)? {
                Announced::Sent | Announced::Refused => self.link_changed = false,
                Announced::NoSection => return Ok(true),
                Announced::RingFull => return Ok(false),
            }
        }
        let mut packet = [0u8; PACKET_HEADER + MAX_FRAME];
        while let Some(frame) = wire.peek() {
            if !self.takes(frame) {
                self.counters.frames_filtered += 1;
                wire.pop();
                continue;
            }
            let n = frame.len();
            let len = PACKET_HEADER + n;
            put(&mut packet, 0, rndis::PACKET_MSG);
            put(&mut packet, 4, len as u32);
            put(&mut packet, 8, (PACKET_HEADER - 8) as u32);
            put(&mut packet, 12, n as u32);
            packet[16..PACKET_HEADER].fill(0);
            packet[PACKET_HEADER..len].copy_from_slice(frame);
            match self.announce(channel, memory, &packet[..len], 0)? {
                Announced::Sent => {
                    self.counters.frames_received += 1;
                    self.counters.bytes_received += n as u64;
                    wire.pop();
                }
                Announced::Refused => {
                    self.counters.frames_filtered += 1;
                    wire.pop();
                }
                Announced::NoSection => return Ok(true),
                Announced::RingFull => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Whether the guest takes `frame` now: RNDIS is up, and its packet
    /// filter admits the destination.
    fn takes(&self, frame: &[u8]) -> bool {
        if !self.is_receiving() || frame.len() < 14 || frame.len() > MAX_FRAME {
            return false;
        }
        let f = self.filter;
        if f & rndis::FILTER_PROMISCUOUS != 0 {
            return true;
        }
        let dst = &frame[..6];
        if dst == [0xFF; 6] {
            f & rndis::FILTER_BROADCAST != 0
        } else if dst[0] & 1 != 0 {
            f & (rndis::FILTER_MULTICAST | rndis::FILTER_ALL_MULTICAST) != 0
        } else {
            dst == self.mac && f & rndis::FILTER_DIRECTED != 0
        }
    }

    /// One RNDIS message into a free receive section, announced by a
    /// transfer-pages packet whose transaction id is the buffer's
    /// generation and the section.
    fn announce<R: RingMemory, N: Notify, M: GuestMemory>(
        &mut self,
        channel: &mut Channel<R, N>,
        memory: &mut M,
        m: &[u8],
        channel_type: u32,
    ) -> Result<Announced, ChannelError> {
        let Some(recv) = self.recv.as_mut() else {
            return Ok(Announced::NoSection);
        };
        if m.len() > RECV_SECTION_SIZE as usize {
            return Ok(Announced::Refused);
        }
        let Some(&section) = recv.free.last() else {
            return Ok(Announced::NoSection);
        };
        let offset = section * RECV_SECTION_SIZE;
        if recv.buffer.write(memory, offset as usize, m).is_err() {
            // The guest's buffer names a page that is not its own.
            self.counters.refused += 1;
            return Ok(Announced::Refused);
        }
        let body = nvsp_message(nvsp::SEND_RNDIS_PKT, &[channel_type, nvsp::NO_SECTION, 0]);
        let ranges = [TransferRange {
            byte_count: m.len() as u32,
            byte_offset: offset,
        }];
        let parts: [&[u8]; 1] = [&body[..16]];
        let packet = OutgoingPacket {
            kind: OutgoingKind::TransferPages {
                pageset_id: nvsp::RECV_BUFFER_ID,
                sender_owns: false,
                ranges: &ranges,
            },
            transaction_id: u64::from(recv.generation) << 32 | u64::from(section),
            completion_requested: true,
            payload: &parts,
        };
        match channel.send_quiet(&packet)? {
            SendResult::Sent => {
                recv.free.pop();
                recv.mark(section, true);
                Ok(Announced::Sent)
            }
            SendResult::Full { .. } => Ok(Announced::RingFull),
        }
    }

    /// One packet from the guest.
    fn packet<G: Gpadls, M: GuestMemory, W: Wire>(
        &mut self,
        p: &crate::packet::Packet<'_>,
        gpadls: &G,
        memory: &mut M,
        wire: &mut W,
    ) {
        match p.kind {
            PacketKind::Completion => self.receive_completed(p.transaction_id),
            PacketKind::InBand => self.nvsp(p, None, gpadls, memory, wire),
            PacketKind::GpaDirect(ranges) => self.nvsp(p, Some(ranges), gpadls, memory, wire),
            PacketKind::TransferPages { .. } => self.counters.refused += 1,
        }
    }

    /// The guest is done with a receive section.
    fn receive_completed(&mut self, id: u64) {
        let Some(recv) = self.recv.as_mut() else {
            self.counters.refused += 1;
            return;
        };
        let section = (id >> 32 == u64::from(recv.generation)).then_some(id as u32);
        match section {
            Some(s) if recv.is_in_flight(s) => {
                recv.mark(s, false);
                recv.free.push(s);
                self.counters.receives_completed += 1;
            }
            _ => self.counters.refused += 1,
        }
    }

    fn complete(&mut self, p: &crate::packet::Packet<'_>, reply: [u8; nvsp::MESSAGE_SIZE]) {
        if p.completion_requested() {
            self.waiting.push_back((p.transaction_id, reply));
        }
    }

    fn nvsp<G: Gpadls, M: GuestMemory, W: Wire>(
        &mut self,
        p: &crate::packet::Packet<'_>,
        ranges: Option<crate::packet::GpaRanges<'_>>,
        gpadls: &G,
        memory: &mut M,
        wire: &mut W,
    ) {
        // A copy, zero-filled past what the guest sent.
        let mut m = [0u8; nvsp::MESSAGE_SIZE];
        let n = p.payload.len().min(m.len());
        m[..n].copy_from_slice(&p.payload[..n]);
        if n < 4 {
            self.counters.refused += 1;
            return;
        }
        let field = |i: usize| u32_at(&m, 4 + 4 * i).unwrap_or(0);
        match u32_at(&m, 0).unwrap_or(0) {
            nvsp::INIT => {
                let (min, max) = (field(0), field(1));
                let ok = (min..=max).contains(&nvsp::VERSION_2);
                if ok {
                    self.version = Some(nvsp::VERSION_2);
                }
                let status = if ok { nvsp::SUCCESS } else { nvsp::FAILURE };
                let reply = nvsp_message(nvsp::INIT_COMPLETE, &[0, 0, status]);
                self.complete(p, reply);
            }
            _ if self.version.is_none() => self.counters.refused += 1,
            nvsp::SEND_NDIS_CONFIG => {}
            nvsp::SEND_NDIS_VERSION => self.ndis_version = Some((field(0), field(1))),
            nvsp::SEND_RECV_BUF => {
                let status = match self.buffer(gpadls, field(0), RECV_SECTION_SIZE) {
                    Some(buffer) => {
                        let sections = (buffer.len() / RECV_SECTION_SIZE as usize) as u32;
                        let mut free = Vec::new();
                        let mut in_flight = Vec::new();
                        if free.try_reserve_exact(sections as usize).is_ok()
                            && in_flight
                                .try_reserve_exact(sections.div_ceil(64) as usize)
                                .is_ok()
                        {
                            free.extend((0..sections).rev());
                            in_flight.resize(sections.div_ceil(64) as usize, 0);
                            self.generations = self.generations.wrapping_add(1);
                            self.recv = Some(RecvBuffer {
                                generation: self.generations,
                                buffer,
                                free,
                                in_flight,
                            });
                            Some(sections)
                        } else {
                            None
                        }
                    }
                    None => None,
                };
                let reply = match status {
                    Some(sections) => nvsp_message(
                        nvsp::SEND_RECV_BUF_COMPLETE,
                        &[
                            nvsp::SUCCESS,
                            1,
                            0,
                            RECV_SECTION_SIZE,
                            sections,
                            sections * RECV_SECTION_SIZE,
                        ],
                    ),
                    None => {
                        self.counters.refused += 1;
                        nvsp_message(nvsp::SEND_RECV_BUF_COMPLETE, &[nvsp::FAILURE])
                    }
                };
                self.complete(p, reply);
            }
            nvsp::SEND_SEND_BUF => {
                let reply = match self.buffer(gpadls, field(0), SEND_SECTION_SIZE) {
                    Some(buffer) => {
                        self.send = Some(buffer);
                        nvsp_message(
                            nvsp::SEND_SEND_BUF_COMPLETE,
                            &[nvsp::SUCCESS, SEND_SECTION_SIZE],
                        )
                    }
                    None => {
                        self.counters.refused += 1;
                        nvsp_message(nvsp::SEND_SEND_BUF_COMPLETE, &[nvsp::FAILURE, 0])
                    }
                };
                self.complete(p, reply);
            }
            // Sections the guest still holds are forgotten with the buffer.
            nvsp::REVOKE_RECV_BUF => self.recv = None,
            nvsp::REVOKE_SEND_BUF => self.send = None,
            nvsp::SEND_RNDIS_PKT => {
                let status =
                    match self.rndis_message(field(0), field(1), field(2), ranges, memory, wire) {
                        Ok(()) => nvsp::SUCCESS,
                        Err(()) => {
                            self.counters.refused += 1;
                            nvsp::FAILURE
                        }
                    };
                self.complete(p, nvsp_message(nvsp::SEND_RNDIS_PKT_COMPLETE, &[status]));
            }
            _ => self.counters.refused += 1,
        }
    }

    /// The pages of a buffer the guest offers through GPADL `id`: whole
    /// sections of `section` bytes, at most [`MAX_BUFFER_PAGES`].
    fn buffer<G: Gpadls>(&self, gpadls: &G, id: u32, section: u32) -> Option<GuestBuffer> {
        let pages = gpadls.pages(id)?;
        if pages.is_empty()
            || pages.len() > MAX_BUFFER_PAGES
            || pages.len() * PAGE_SIZE < section as usize
        {
            return None;
        }
        let mut pfns = Vec::new();
        pfns.try_reserve_exact(pages.len()).ok()?;
        pfns.extend_from_slice(pages);
        Some(GuestBuffer { pfns })
    }

    /// One SEND_RNDIS_PKT: the RNDIS message(s) in send-buffer section
    /// `section` (`size` bytes), or in the packet's GPA ranges.
    fn rndis_message<M: GuestMemory, W: Wire>(
        &mut self,
        _channel_type: u32,
        section: u32,
        size: u32,
        ranges: Option<crate::packet::GpaRanges<'_>>,
        memory: &mut M,
        wire: &mut W,
    ) -> Result<(), ()> {
        // The message is in a send-buffer section, in the packet's GPA
        // ranges, or starts in a section and goes on in the ranges (Linux
        // puts a batch's last RNDIS header in the section, its data in
        // pages).
        let mut buf = [0u8; MAX_RNDIS_MESSAGE];
        let mut len = 0;
        if section != nvsp::NO_SECTION {
            let send = self.send.as_ref().ok_or(())?;
            let size = size as usize;
            if size > SEND_SECTION_SIZE as usize {
                return Err(());
            }
            let offset = (section as usize)
                .checked_mul(SEND_SECTION_SIZE as usize)
                .ok_or(())?;
            send.read(memory, offset, &mut buf[..size])
                .map_err(|_| ())?;
            len = size;
        }
        if let Some(ranges) = ranges {
            for r in ranges.iter() {
                let n = r.byte_count as usize;
                if n > buf.len() - len || r.byte_offset as usize >= PAGE_SIZE {
                    return Err(());
                }
                gather(memory, r, &mut buf[len..len + n]).map_err(|_| ())?;
                len += n;
            }
        }
        self.rndis(&buf[..len], wire)
    }

    /// The RNDIS messages in `bytes`, one after another.
    fn rndis<W: Wire>(&mut self, bytes: &[u8], wire: &mut W) -> Result<(), ()> {
        let mut rest = bytes;
        let mut count = 0;
        while rest.len() >= 8 {
            let kind = u32_at(rest, 0).ok_or(())?;
            let len = u32_at(rest, 4).ok_or(())? as usize;
            if len < 8 || len > rest.len() {
                return Err(());
            }
            count += 1;
            if count > MAX_MESSAGES_PER_SEND {
                return Err(());
            }
            self.rndis_one(kind, &rest[..len], wire)?;
            rest = &rest[len..];
            if kind != rndis::PACKET_MSG {
                break;
            }
        }
        if count == 0 {
            return Err(());
        }
        Ok(())
    }

    fn rndis_one<W: Wire>(&mut self, kind: u32, m: &[u8], wire: &mut W) -> Result<(), ()> {
        match kind {
            rndis::PACKET_MSG => self.data(m, wire),
            rndis::INITIALIZE_MSG => {
                let request = u32_at(m, 8).ok_or(())?;
                let mut c = [0u8; 52];
                put(&mut c, 0, rndis::INITIALIZE_MSG | rndis::COMPLETION);
                put(&mut c, 4, 52);
                put(&mut c, 8, request);
                put(&mut c, 12, rndis::STATUS_SUCCESS);
                put(&mut c, 16, 1); // major version
                put(&mut c, 20, 0); // minor
                put(&mut c, 24, 1); // device flags: connectionless
                put(&mut c, 28, 0); // medium: 802.3
                put(&mut c, 32, MAX_PACKETS_PER_MESSAGE);
                put(&mut c, 36, SEND_SECTION_SIZE);
                put(&mut c, 40, 3); // packet alignment: 8 bytes
                self.initialized = true;
                self.filter = 0;
                self.reply(&c)
            }
            rndis::HALT_MSG => {
                self.initialized = false;
                self.filter = 0;
                Ok(())
            }
            rndis::QUERY_MSG => {
                let request = u32_at(m, 8).ok_or(())?;
                let oid = u32_at(m, 12).ok_or(())?;
                let mut info = [0u8; 128];
                // Linux requires the offset (from the request id) to be at
                // least 16 even when nothing follows.
                let (status, n) = match self.query(oid, &mut info) {
                    Some(n) => (rndis::STATUS_SUCCESS, n),
                    None => (rndis::STATUS_NOT_SUPPORTED, 0),
                };
                let mut c = [0u8; 24 + 128];
                put(&mut c, 0, rndis::QUERY_MSG | rndis::COMPLETION);
                put(&mut c, 4, (24 + n) as u32);
                put(&mut c, 8, request);
                put(&mut c, 12, status);
                put(&mut c, 16, n as u32);
                put(&mut c, 20, 16);
                c[24..24 + n].copy_from_slice(&info[..n]);
                self.reply(&c[..24 + n])
            }
            rndis::SET_MSG => {
                let request = u32_at(m, 8).ok_or(())?;
                let oid = u32_at(m, 12).ok_or(())?;
                let len = u32_at(m, 16).ok_or(())? as usize;
                let offset = u32_at(m, 20).ok_or(())? as usize;
                // The information buffer's offset counts from the request id.
                let info = 8usize
                    .checked_add(offset)
                    .and_then(|s| Some(s..s.checked_add(len)?))
                    .and_then(|r| m.get(r));
                let status = match info {
                    Some(info) => self.set(oid, info),
                    None => rndis::STATUS_INVALID_DATA,
                };
                let mut c = [0u8; 16];
                put(&mut c, 0, rndis::SET_MSG | rndis::COMPLETION);
                put(&mut c, 4, 16);
                put(&mut c, 8, request);
                put(&mut c, 12, status);
                self.reply(&c)
            }
            rndis::RESET_MSG => {
                let mut c = [0u8; 16];
                put(&mut c, 0, rndis::RESET_MSG | rndis::COMPLETION);
                put(&mut c, 4, 16);
                put(&mut c, 8, rndis::STATUS_SUCCESS);
                self.reply(&c)
            }
            rndis::KEEPALIVE_MSG => {
                let request = u32_at(m, 8).ok_or(())?;
                let mut c = [0u8; 16];
                put(&mut c, 0, rndis::KEEPALIVE_MSG | rndis::COMPLETION);
                put(&mut c, 4, 16);
                put(&mut c, 8, request);
                put(&mut c, 12, rndis::STATUS_SUCCESS);
                self.reply(&c)
            }
            _ => Err(()),
        }
    }

    /// An RNDIS answer, waiting for a receive section.
    fn reply(&mut self, m: &[u8]) -> Result<(), ()> {
        if self.control.len() >= CONTROL_QUEUE {
            return Err(());
        }
        let mut v = message(m.len()).ok_or(())?;
        v.copy_from_slice(m);
        self.control.push_back(v);
        Ok(())
    }

    /// A frame the guest sends: the RNDIS PACKET's data, with an 802.1Q
    /// tag if its per-packet information asks for one.
    fn data<W: Wire>(&mut self, m: &[u8], wire: &mut W) -> Result<(), ()> {
        if !self.initialized {
            return Err(());
        }
        let body = m.get(8..).ok_or(())?;
        let data_offset = u32_at(body, 0).ok_or(())? as usize;
        let data_len = u32_at(body, 4).ok_or(())? as usize;
        let ppi_offset = u32_at(body, 20).ok_or(())? as usize;
        let ppi_len = u32_at(body, 24).ok_or(())? as usize;
        let frame = data_offset
            .checked_add(data_len)
            .and_then(|end| body.get(data_offset..end))
            .ok_or(())?;
        if frame.len() < 14 || frame.len() > MAX_FRAME {
            return Err(());
        }
        let ppi = if ppi_len == 0 {
            &[][..]
        } else {
            ppi_offset
                .checked_add(ppi_len)
                .and_then(|end| body.get(ppi_offset..end))
                .ok_or(())?
        };
        let tag = vlan_tag(ppi)?;
        self.counters.frames_sent += 1;
        self.counters.bytes_sent += frame.len() as u64;
        match tag {
            None => wire.transmit(frame),
            Some(tci) => {
                let mut tagged = [0u8; MAX_FRAME + 4];
                tagged[..12].copy_from_slice(&frame[..12]);
                tagged[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
                tagged[14..16].copy_from_slice(&tci.to_be_bytes());
                tagged[16..frame.len() + 4].copy_from_slice(&frame[12..]);
                wire.transmit(&tagged[..frame.len() + 4]);
            }
        }
        Ok(())
    }

    /// An OID's value into `info`; its length, or `None` if unsupported.
    fn query(&self, oid: u32, info: &mut [u8; 128]) -> Option<usize> {
        let word = |info: &mut [u8; 128], v: u32| {
            put(info, 0, v);
            Some(4)
        };
        match oid {
            rndis::OID_GEN_SUPPORTED_LIST => {
                let list = [
                    rndis::OID_GEN_SUPPORTED_LIST,
                    rndis::OID_GEN_HARDWARE_STATUS,
                    rndis::OID_GEN_MEDIA_SUPPORTED,
                    rndis::OID_GEN_MEDIA_IN_USE,
                    rndis::OID_GEN_MAXIMUM_FRAME_SIZE,
                    rndis::OID_GEN_LINK_SPEED,
                    rndis::OID_GEN_CURRENT_PACKET_FILTER,
                    rndis::OID_GEN_MAXIMUM_TOTAL_SIZE,
                    rndis::OID_GEN_MEDIA_CONNECT_STATUS,
                    rndis::OID_802_3_PERMANENT_ADDRESS,
                    rndis::OID_802_3_CURRENT_ADDRESS,
                    rndis::OID_802_3_MULTICAST_LIST,
                    rndis::OID_802_3_MAXIMUM_LIST_SIZE,
                    rndis::OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES,
                ];
                for (i, o) in list.iter().enumerate() {
                    put(info, 4 * i, *o);
                }
                Some(4 * list.len())
            }
            rndis::OID_GEN_HARDWARE_STATUS => word(info, 0),
            rndis::OID_GEN_MEDIA_SUPPORTED | rndis::OID_GEN_MEDIA_IN_USE => word(info, 0),
            rndis::OID_GEN_MAXIMUM_FRAME_SIZE => word(info, MTU),
            rndis::OID_GEN_MAXIMUM_TOTAL_SIZE => word(info, MAX_FRAME as u32),
            // In units of 100 bit/s: 10 Gbit/s.
            rndis::OID_GEN_LINK_SPEED => word(info, 100_000_000),
            rndis::OID_GEN_CURRENT_PACKET_FILTER => word(info, self.filter),
            rndis::OID_GEN_MEDIA_CONNECT_STATUS => word(info, u32::from(!self.link_up)),
            rndis::OID_802_3_MAXIMUM_LIST_SIZE => word(info, 32),
            rndis::OID_802_3_PERMANENT_ADDRESS | rndis::OID_802_3_CURRENT_ADDRESS => {
                info[..6].copy_from_slice(&self.mac);
                Some(6)
            }
            rndis::OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES => {
                // An NDIS_OFFLOAD of revision 1, every capability zero.
                let n = usize::from(rndis::NDIS_OFFLOAD_SIZE_6_0);
                info[..n].fill(0);
                info[0] = rndis::NDIS_OBJECT_TYPE_OFFLOAD;
                info[1] = rndis::NDIS_OFFLOAD_REVISION_1;
                info[2..4].copy_from_slice(&rndis::NDIS_OFFLOAD_SIZE_6_0.to_le_bytes());
                Some(n)
            }
            _ => None,
        }
    }

    /// An OID set by the guest; the status.
    fn set(&mut self, oid: u32, info: &[u8]) -> u32 {
        match oid {
            rndis::OID_GEN_CURRENT_PACKET_FILTER => match u32_at(info, 0) {
                Some(f) => {
                    self.filter = f;
                    rndis::STATUS_SUCCESS
                }
                None => rndis::STATUS_INVALID_DATA,
            },
            // No offload is offered; the guest's parameters (all "off" or
            // "no change" after capabilities of zero) change nothing.
            rndis::OID_TCP_OFFLOAD_PARAMETERS => rndis::STATUS_SUCCESS,
            // Every multicast frame reaches a guest that asks for
            // multicast: its list needs no keeping.
            rndis::OID_802_3_MULTICAST_LIST => rndis::STATUS_SUCCESS,
            // Linux sets its "NetworkAddress" through this when told to
            // change the adapter's address: not supported (the address is
            // the administrator's, `vm nic add --mac`), so the change fails
            // in the guest instead of silently losing its frames.
            _ => rndis::STATUS_NOT_SUPPORTED,
        }
    }
}

enum Announced {
    Sent,
    /// The message could not be placed (too long, or the buffer's pages
    /// are not the guest's): dropped.
    Refused,
    NoSection,
    RingFull,
}

/// The 802.1Q tag control an RNDIS packet's per-packet information asks
/// for, if any. Each entry: size, type, offset of its value from the
/// entry's start.
fn vlan_tag(mut ppi: &[u8]) -> Result<Option<u16>, ()> {
    let mut tag = None;
    while !ppi.is_empty() {
        let size = u32_at(ppi, 0).ok_or(())? as usize;
        let kind = u32_at(ppi, 4).ok_or(())?;
        let offset = u32_at(ppi, 8).ok_or(())? as usize;
        if size < 12 || size > ppi.len() || offset > size {
            return Err(());
        }
        if kind & 0x7FFF_FFFF == rndis::PPI_IEEE_8021Q {
            let v = u32_at(&ppi[..size], offset).ok_or(())?;
            // Bits 0-2 priority, 3 CFI, 4-15 VLAN id (NDIS_NET_BUFFER_LIST_8021Q_INFO).
            let (priority, vlan) = (v & 7, (v >> 4) & 0xFFF);
            if vlan != 0 || priority != 0 {
                tag = Some((priority << 13 | vlan) as u16);
            }
        }
        ppi = &ppi[size..];
    }
    Ok(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{quiet_pair, Quiet};
    use crate::packet::{GpaRangeSpec, Packet};
    use crate::shared_mem::HeapRing;
    use alloc::collections::BTreeMap;
    use alloc::sync::Arc;
    use alloc::vec;
    use proptest::prelude::*;

    type Ch = Channel<Arc<HeapRing>, Quiet>;
    const MAC: [u8; 6] = [0x00, 0x15, 0x5d, 0, 1, 0];
    /// The guest's memory: 256 pages from GPA 0; the receive buffer is
    /// pages 0..32 (GPADL 1), the send buffer 32..64 (GPADL 2).
    const PAGES: usize = 256;
    const RECV_GPADL: u32 = 1;
    const SEND_GPADL: u32 = 2;

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

    struct Table(BTreeMap<u32, Vec<u64>>);
    impl Gpadls for Table {
        fn pages(&self, id: u32) -> Option<&[u64]> {
            self.0.get(&id).map(|v| v.as_slice())
        }
    }

    #[derive(Default)]
    struct TestWire {
        sent: Vec<Vec<u8>>,
        waiting: VecDeque<Vec<u8>>,
    }
    impl Wire for TestWire {
        fn transmit(&mut self, frame: &[u8]) {
            self.sent.push(frame.to_vec());
        }
        fn peek(&self) -> Option<&[u8]> {
            self.waiting.front().map(|f| f.as_slice())
        }
        fn pop(&mut self) {
            self.waiting.pop_front();
        }
    }

    /// What the guest got: NVSP completions and RNDIS messages (with the
    /// transfer-pages packet's transaction id).
    #[derive(Debug)]
    enum Got {
        Completion(u64, Vec<u8>),
        Rndis(u64, Vec<u8>),
    }

    struct Rig {
        guest: Ch,
        host: Ch,
        server: NetServer,
        gpadls: Table,
        memory: Memory,
        wire: TestWire,
        next_id: u64,
    }

    fn nvsp(kind: u32, fields: &[u32]) -> Vec<u8> {
        nvsp_message(kind, fields).to_vec()
    }

    impl Rig {
        fn new() -> Rig {
            let (guest, mut host) = quiet_pair(65536);
            host.reader().set_max_packet(MAX_PACKET);
            let mut gpadls = BTreeMap::new();
            gpadls.insert(RECV_GPADL, (0..32).collect());
            gpadls.insert(SEND_GPADL, (32..64).collect());
            Rig {
                guest,
                host,
                server: NetServer::new(MAC),
                gpadls: Table(gpadls),
                memory: Memory(vec![0; PAGES * PAGE_SIZE]),
                wire: TestWire::default(),
                next_id: 100,
            }
        }

        fn serve(&mut self) {
            self.server
                .serve(
                    &mut self.host,
                    &self.gpadls,
                    &mut self.memory,
                    &mut self.wire,
                )
                .unwrap();
        }

        /// Sends an NVSP message (with GPA ranges, if any); serves.
        fn send(&mut self, message: &[u8], ranges: &[GpaRangeSpec<'_>]) -> u64 {
            self.next_id += 1;
            let parts: [&[u8]; 1] = [message];
            let out = OutgoingPacket::request(self.next_id, ranges, &parts);
            assert_eq!(self.guest.send(&out).unwrap(), SendResult::Sent);
            self.serve();
            self.next_id
        }

        fn received(&mut self) -> Vec<Got> {
            let mut got = Vec::new();
            while let Some(p) = self.guest.recv().unwrap() {
                let p: Packet<'_> = p.unwrap();
                match p.kind {
                    PacketKind::Completion => {
                        got.push(Got::Completion(p.transaction_id, p.payload.to_vec()))
                    }
                    PacketKind::TransferPages { pageset_id, .. } => {
                        assert_eq!(pageset_id, nvsp::RECV_BUFFER_ID);
                        assert_eq!(u32_at(p.payload, 0), Some(nvsp::SEND_RNDIS_PKT));
                        let r = p.kind.transfer_ranges().next().unwrap();
                        let at = r.byte_offset as usize;
                        let m = self.memory.0[at..at + r.byte_count as usize].to_vec();
                        got.push(Got::Rndis(p.transaction_id, m));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            got
        }

        /// The completion status of a SEND_RNDIS_PKT naming `section` and
        /// `size` (or none), with `ranges`; nothing else arrives.
        fn send_status(&mut self, section: u32, size: u32, ranges: &[GpaRangeSpec<'_>]) -> u32 {
            let id = self.send(&nvsp(nvsp::SEND_RNDIS_PKT, &[0, section, size]), ranges);
            match &self.received()[..] {
                [Got::Completion(i, b)] if *i == id => u32_at(b, 4).unwrap_or(0),
                other => panic!("{other:?}"),
            }
        }

        /// The guest's completion of a receive.
        fn complete_receive(&mut self, id: u64) {
            let body = nvsp(nvsp::SEND_RNDIS_PKT_COMPLETE, &[nvsp::SUCCESS]);
            let parts: [&[u8]; 1] = [&body];
            assert_eq!(
                self.guest
                    .send(&OutgoingPacket::completion(id, &parts))
                    .unwrap(),
                SendResult::Sent
            );
            self.serve();
        }

        /// An RNDIS message through send-buffer section `section`; its
        /// NVSP completion status and the RNDIS answer, if any (the
        /// receive completed).
        fn rndis(&mut self, section: u32, m: &[u8]) -> (u32, Option<Vec<u8>>) {
            let at = 32 * PAGE_SIZE + section as usize * SEND_SECTION_SIZE as usize;
            self.memory.0[at..at + m.len()].copy_from_slice(m);
            let id = self.send(
                &nvsp(nvsp::SEND_RNDIS_PKT, &[1, section, m.len() as u32]),
                &[],
            );
            let mut status = None;
            let mut answer = None;
            for g in self.received() {
                match g {
                    Got::Completion(i, b) if i == id => {
                        assert_eq!(u32_at(&b, 0), Some(nvsp::SEND_RNDIS_PKT_COMPLETE));
                        status = u32_at(&b, 4);
                    }
                    Got::Rndis(i, b) => {
                        self.complete_receive(i);
                        answer = Some(b);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            (status.expect("a completion"), answer)
        }

        /// Linux's start: INIT (newest first), NDIS config and version, the
        /// two buffers, RNDIS INITIALIZE.
        fn start(&mut self) {
            for v in [0x60001, 0x60000, 0x50000, 0x40000] {
                let id = self.send(&nvsp(nvsp::INIT, &[v, v]), &[]);
                assert!(matches!(&self.received()[..], [Got::Completion(i, b)]
                    if *i == id && u32_at(b, 0) == Some(nvsp::INIT_COMPLETE) && u32_at(b, 12) == Some(nvsp::FAILURE)));
            }
            let id = self.send(&nvsp(nvsp::INIT, &[nvsp::VERSION_2, nvsp::VERSION_2]), &[]);
            assert!(matches!(&self.received()[..], [Got::Completion(i, b)]
                if *i == id && u32_at(b, 12) == Some(nvsp::SUCCESS)));
            assert_eq!(self.server.version(), Some(nvsp::VERSION_2));
            self.send(&nvsp(nvsp::SEND_NDIS_CONFIG, &[1514, 0, 0, 0]), &[]);
            self.send(&nvsp(nvsp::SEND_NDIS_VERSION, &[6, 1]), &[]);
            assert_eq!(self.server.ndis_version(), Some((6, 1)));
            let id = self.send(&nvsp(nvsp::SEND_RECV_BUF, &[RECV_GPADL, 0xCAFE]), &[]);
            let sections = (32 * PAGE_SIZE) as u32 / RECV_SECTION_SIZE;
            match &self.received()[..] {
                [Got::Completion(i, b)] if *i == id => {
                    assert_eq!(u32_at(b, 0), Some(nvsp::SEND_RECV_BUF_COMPLETE));
                    assert_eq!(u32_at(b, 4), Some(nvsp::SUCCESS));
                    assert_eq!(u32_at(b, 8), Some(1));
                    assert_eq!(u32_at(b, 16), Some(RECV_SECTION_SIZE));
                    assert_eq!(u32_at(b, 20), Some(sections));
                    assert_eq!(u32_at(b, 24), Some(sections * RECV_SECTION_SIZE));
                }
                other => panic!("{other:?}"),
            }
            let id = self.send(&nvsp(nvsp::SEND_SEND_BUF, &[SEND_GPADL, 0]), &[]);
            assert!(matches!(&self.received()[..], [Got::Completion(i, b)]
                if *i == id && u32_at(b, 4) == Some(nvsp::SUCCESS) && u32_at(b, 8) == Some(SEND_SECTION_SIZE)));
            let init = rndis_request(rndis::INITIALIZE_MSG, 1, &[1, 0, 0x4000]);
            let (status, answer) = self.rndis(0, &init);
            assert_eq!(status, nvsp::SUCCESS);
            let a = answer.unwrap();
            assert_eq!(
                u32_at(&a, 0),
                Some(rndis::INITIALIZE_MSG | rndis::COMPLETION)
            );
            assert_eq!(u32_at(&a, 8), Some(1));
            assert_eq!(u32_at(&a, 12), Some(rndis::STATUS_SUCCESS));
        }

        fn set_filter(&mut self, filter: u32) {
            let set = rndis_set(
                7,
                rndis::OID_GEN_CURRENT_PACKET_FILTER,
                &filter.to_le_bytes(),
            );
            let (status, a) = self.rndis(1, &set);
            assert_eq!(status, nvsp::SUCCESS);
            assert_eq!(u32_at(&a.unwrap(), 12), Some(rndis::STATUS_SUCCESS));
        }
    }

    /// An RNDIS request: type, length, request id, fields.
    fn rndis_request(kind: u32, request: u32, fields: &[u32]) -> Vec<u8> {
        let mut m = Vec::new();
        for v in [kind, (12 + 4 * fields.len()) as u32, request]
            .iter()
            .chain(fields)
        {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m
    }

    fn rndis_set(request: u32, oid: u32, info: &[u8]) -> Vec<u8> {
        let mut m = rndis_request(rndis::SET_MSG, request, &[oid, info.len() as u32, 20, 0]);
        m.extend_from_slice(info);
        let len = m.len() as u32;
        m[4..8].copy_from_slice(&len.to_le_bytes());
        m
    }

    /// An RNDIS PACKET carrying `frame`, with per-packet information.
    fn rndis_packet(frame: &[u8], ppi: &[u8]) -> Vec<u8> {
        let data_offset = 36 + ppi.len() as u32;
        let fields = [
            data_offset,
            frame.len() as u32,
            0,
            0,
            0,
            if ppi.is_empty() { 0 } else { 36 },
            ppi.len() as u32,
            0,
            0,
        ];
        let mut m = Vec::new();
        for v in [rndis::PACKET_MSG, 0].iter().chain(&fields) {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(ppi);
        m.extend_from_slice(frame);
        let len = m.len() as u32;
        m[4..8].copy_from_slice(&len.to_le_bytes());
        m
    }

    fn frame(dst: [u8; 6], n: usize) -> Vec<u8> {
        let mut f = vec![0x5a; n];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        f
    }

    #[test]
    fn linux_start_queries_and_frames_both_ways() {
        let mut r = Rig::new();
        r.start();
        for (oid, want) in [
            (rndis::OID_802_3_PERMANENT_ADDRESS, MAC.to_vec()),
            (
                rndis::OID_GEN_MAXIMUM_FRAME_SIZE,
                1500u32.to_le_bytes().to_vec(),
            ),
            (
                rndis::OID_GEN_MEDIA_CONNECT_STATUS,
                0u32.to_le_bytes().to_vec(),
            ),
        ] {
            let q = rndis_request(rndis::QUERY_MSG, 5, &[oid, 0, 20, 0]);
            let (_, a) = r.rndis(2, &q);
            let a = a.unwrap();
            assert_eq!(u32_at(&a, 0), Some(rndis::QUERY_MSG | rndis::COMPLETION));
            assert_eq!(u32_at(&a, 12), Some(rndis::STATUS_SUCCESS));
            let (len, off) = (
                u32_at(&a, 16).unwrap() as usize,
                u32_at(&a, 20).unwrap() as usize,
            );
            assert_eq!(&a[8 + off..8 + off + len], &want[..]);
        }
        let q = rndis_request(
            rndis::QUERY_MSG,
            6,
            &[rndis::OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES, 0, 20, 0],
        );
        let a = r.rndis(2, &q).1.unwrap();
        assert_eq!(a[24], rndis::NDIS_OBJECT_TYPE_OFFLOAD);
        let q = rndis_request(rndis::QUERY_MSG, 7, &[0x1234_5678, 0, 20, 0]);
        assert_eq!(
            u32_at(&r.rndis(2, &q).1.unwrap(), 12),
            Some(rndis::STATUS_NOT_SUPPORTED)
        );

        // No frame reaches the guest before its packet filter is set.
        r.wire.waiting.push_back(frame(MAC, 100));
        r.serve();
        assert!(r.received().is_empty());
        assert_eq!(r.server.counters.frames_filtered, 1);
        r.set_filter(rndis::FILTER_DIRECTED | rndis::FILTER_BROADCAST);

        // Guest to wire, through the send buffer.
        let f = frame([0xff; 6], 60);
        let (status, answer) = r.rndis(3, &rndis_packet(&f, &[]));
        assert_eq!((status, answer), (nvsp::SUCCESS, None));
        assert_eq!(r.wire.sent, vec![f.clone()]);

        // Wire to guest: to its address and broadcast, not another's.
        r.wire.waiting.push_back(frame(MAC, 1514));
        r.wire.waiting.push_back(frame([2, 0, 0, 0, 0, 1], 60));
        r.wire.waiting.push_back(frame([0xff; 6], 60));
        r.serve();
        let got = r.received();
        assert_eq!(got.len(), 2);
        for (g, want) in got.iter().zip([frame(MAC, 1514), frame([0xff; 6], 60)]) {
            let Got::Rndis(_, m) = g else { panic!() };
            assert_eq!(u32_at(m, 0), Some(rndis::PACKET_MSG));
            let off = 8 + u32_at(m, 8).unwrap() as usize;
            let len = u32_at(m, 12).unwrap() as usize;
            assert_eq!(&m[off..off + len], &want[..]);
        }
        assert_eq!(r.server.counters.frames_received, 2);
        assert_eq!(r.server.receive_sections().1, 2, "held until completed");
        for g in got {
            let Got::Rndis(id, _) = g else { panic!() };
            r.complete_receive(id);
        }
        assert_eq!(r.server.receive_sections().1, 0);
        // A completion naming no receive in flight is refused.
        let before = r.server.counters.refused;
        r.complete_receive(3);
        assert_eq!(r.server.counters.refused, before + 1);
    }

    #[test]
    fn frames_wait_while_the_guest_holds_every_section() {
        let mut r = Rig::new();
        r.start();
        r.set_filter(rndis::FILTER_PROMISCUOUS);
        let sections = r.server.receive_sections().0 as usize;
        for _ in 0..sections + 10 {
            r.wire.waiting.push_back(frame(MAC, 200));
        }
        r.serve();
        let mut ids = Vec::new();
        for _ in 0..4 {
            for g in r.received() {
                let Got::Rndis(id, _) = g else { panic!() };
                ids.push(id);
            }
            r.serve();
        }
        assert_eq!(ids.len(), sections);
        assert_eq!(r.wire.waiting.len(), 10, "the rest waits, none lost");
        r.complete_receive(ids[0]);
        assert_eq!(r.received().len(), 1);
        assert_eq!(r.wire.waiting.len(), 9);
    }

    #[test]
    fn gpa_direct_messages_and_pages_outside_the_guest() {
        let mut r = Rig::new();
        r.start();
        let f = frame([0xff; 6], 100);
        let m = rndis_packet(&f, &[]);
        let at = 100 * PAGE_SIZE + 4000;
        r.memory.0[at..at + m.len()].copy_from_slice(&m);
        let pfns = [100, 101];
        let range = GpaRangeSpec {
            byte_count: m.len() as u32,
            byte_offset: 4000,
            pfns: &pfns,
        };
        assert_eq!(r.send_status(nvsp::NO_SECTION, 0, &[range]), nvsp::SUCCESS);
        assert_eq!(r.wire.sent, vec![f]);
        // Pages that are not the guest's: a failure status, nothing sent.
        let pfns = [PAGES as u64 + 5];
        let range = GpaRangeSpec {
            byte_count: 100,
            byte_offset: 0,
            pfns: &pfns,
        };
        assert_eq!(r.send_status(nvsp::NO_SECTION, 0, &[range]), nvsp::FAILURE);
        // A send section past the buffer, a size past the section.
        for (section, size) in [(1000, 64), (0, SEND_SECTION_SIZE + 1)] {
            assert_eq!(r.send_status(section, size, &[]), nvsp::FAILURE);
        }
        assert_eq!(r.wire.sent.len(), 1);
    }

    #[test]
    fn a_header_in_a_section_and_its_frame_in_pages_are_one_message() {
        // Linux's "cp_partial": a batch's last RNDIS header in the send
        // section, its data in GPA ranges of the same packet.
        let mut r = Rig::new();
        r.start();
        let f = frame([0xff; 6], 100);
        let m = rndis_packet(&f, &[]);
        let (head, data) = m.split_at(PACKET_HEADER);
        let at = 32 * PAGE_SIZE + SEND_SECTION_SIZE as usize;
        r.memory.0[at..at + head.len()].copy_from_slice(head);
        r.memory.0[120 * PAGE_SIZE..120 * PAGE_SIZE + data.len()].copy_from_slice(data);
        let pfns = [120];
        let range = GpaRangeSpec {
            byte_count: data.len() as u32,
            byte_offset: 0,
            pfns: &pfns,
        };
        assert_eq!(r.send_status(1, head.len() as u32, &[range]), nvsp::SUCCESS);
        assert_eq!(r.wire.sent, vec![f]);
    }

    #[test]
    fn a_receive_buffer_outside_the_guest_or_unknown_is_refused() {
        let mut r = Rig::new();
        let id = r.send(&nvsp(nvsp::INIT, &[nvsp::VERSION_2, nvsp::VERSION_2]), &[]);
        assert!(matches!(&r.received()[..], [Got::Completion(i, _)] if *i == id));
        let id = r.send(&nvsp(nvsp::SEND_RECV_BUF, &[77, 0xCAFE]), &[]);
        assert!(
            matches!(&r.received()[..], [Got::Completion(i, b)] if *i == id && u32_at(b, 4) == Some(nvsp::FAILURE))
        );
        // A GPADL of pages that are not the guest's: accepted as a buffer,
        // but nothing is ever written there.
        r.gpadls.0.insert(9, vec![PAGES as u64 + 1; 4]);
        r.send(&nvsp(nvsp::SEND_RECV_BUF, &[9, 0xCAFE]), &[]);
        r.received();
        r.send(&nvsp(nvsp::SEND_SEND_BUF, &[SEND_GPADL, 0]), &[]);
        r.received();
        let init = rndis_request(rndis::INITIALIZE_MSG, 1, &[1, 0, 0x4000]);
        let (status, answer) = r.rndis(0, &init);
        assert_eq!((status, answer), (nvsp::SUCCESS, None));
        assert!(r.server.counters.refused >= 2);
    }

    #[test]
    fn a_vlan_tag_asked_for_goes_on_the_frame() {
        let mut r = Rig::new();
        r.start();
        let f = frame([0xff; 6], 60);
        let mut ppi = Vec::new();
        for v in [16u32, rndis::PPI_IEEE_8021Q, 12, 20 << 4] {
            ppi.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(r.rndis(0, &rndis_packet(&f, &ppi)).0, nvsp::SUCCESS);
        let sent = &r.wire.sent[0];
        assert_eq!(sent.len(), 64);
        assert_eq!(&sent[12..16], &[0x81, 0x00, 0, 20]);
        // A per-packet entry running past its bytes: refused.
        let bad = [40u32, 6, 12, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        assert_eq!(r.rndis(0, &rndis_packet(&f, &bad)).0, nvsp::FAILURE);
    }

    #[test]
    fn a_late_completion_for_a_replaced_buffer_frees_nothing_of_the_new_one() {
        let mut r = Rig::new();
        r.start();
        r.set_filter(rndis::FILTER_PROMISCUOUS);
        r.wire.waiting.push_back(frame(MAC, 100));
        r.serve();
        let [Got::Rndis(old, _)] = &r.received()[..] else {
            panic!()
        };
        let old = *old;
        // The guest gives a new receive buffer while it holds a section.
        r.send(&nvsp(nvsp::SEND_RECV_BUF, &[RECV_GPADL, 0xCAFE]), &[]);
        r.received();
        r.wire.waiting.push_back(frame(MAC, 100));
        r.serve();
        let [Got::Rndis(new, _)] = &r.received()[..] else {
            panic!()
        };
        assert_ne!(old, *new);
        let refused = r.server.counters.refused;
        r.complete_receive(old);
        assert_eq!(r.server.counters.refused, refused + 1);
        assert_eq!(
            r.server.receive_sections().1,
            1,
            "the new section is still held"
        );
        r.complete_receive(*new);
        assert_eq!(r.server.receive_sections().1, 0);
    }

    /// What a removal waits for: every section given back, the link-down
    /// indication out.
    #[test]
    fn quiescent_once_every_section_is_back() {
        let mut r = Rig::new();
        r.start();
        r.set_filter(rndis::FILTER_PROMISCUOUS);
        r.wire.waiting.push_back(frame(MAC, 200));
        r.serve();
        let got = r.received();
        let [Got::Rndis(id, _)] = &got[..] else {
            panic!("{got:?}")
        };
        assert!(!r.server.quiescent(), "a section is with the guest");
        r.server.set_link(false);
        assert!(!r.server.quiescent(), "the link change is not out");
        r.complete_receive(*id);
        r.serve();
        let got = r.received();
        let [Got::Rndis(id, _)] = &got[..] else {
            panic!("{got:?}")
        };
        assert!(!r.server.quiescent(), "the indication's section is out");
        r.complete_receive(*id);
        r.serve();
        assert!(r.server.quiescent());
    }

    #[test]
    fn the_link_state_is_indicated() {
        let mut r = Rig::new();
        r.start();
        r.server.set_link(false);
        r.serve();
        let got = r.received();
        let [Got::Rndis(_, m)] = &got[..] else {
            panic!("{got:?}")
        };
        assert_eq!(u32_at(m, 0), Some(rndis::INDICATE_STATUS_MSG));
        assert_eq!(u32_at(m, 8), Some(rndis::STATUS_MEDIA_DISCONNECT));
    }

    proptest! {
        /// Any NVSP message and any RNDIS message in a send section, after a
        /// proper start: no panic, every request gets its completion.
        #[test]
        fn any_messages(messages in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..48), proptest::collection::vec(any::<u8>(), 0..256), any::<bool>()), 1..16)) {
            let mut r = Rig::new();
            r.start();
            for (n, m, through_section) in messages {
                if through_section {
                    let mut m = m;
                    if m.len() >= 8 {
                        let len = (m.len() as u32).to_le_bytes();
                        m[4..8].copy_from_slice(&len);
                    }
                    let at = 32 * PAGE_SIZE + 2 * SEND_SECTION_SIZE as usize;
                    r.memory.0[at..at + m.len()].copy_from_slice(&m);
                    r.send(&nvsp(nvsp::SEND_RNDIS_PKT, &[1, 2, m.len() as u32]), &[]);
                } else {
                    r.send(&n, &[]);
                }
                for g in r.received() {
                    if let Got::Rndis(id, _) = g {
                        r.complete_receive(id);
                    }
                }
            }
        }
    }
}
