//! VMBus packets: the 16-byte descriptor that frames every packet in a ring,
//! and the packet types a device protocol uses (in-band, completion,
//! GPA-direct, transfer pages).
//!
//! The layouts are the [`wire`] structs (`vmpacket_descriptor`,
//! `vmdata_gpa_direct`, `vmtransfer_page_packet_header`, `gpa_range`,
//! `vmtransfer_page_range`). Parsing works on a private copy made by the
//! ring reader, so a packet cannot change while it is checked; fixed headers
//! are copied out of it with `read_from_prefix`, variable-length arrays are
//! viewed as typed slices of it. Sending builds the descriptor and the
//! type-specific header; the ring writer adds padding and the trailer.

use alloc::vec::Vec;
use core::mem::size_of;

use zerocopy::byteorder::little_endian::U64;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::wire;
use crate::PAGE_SIZE;

/// Size of the packet descriptor (`struct vmpacket_descriptor`).
pub const DESCRIPTOR_SIZE: usize = size_of::<wire::PacketDescriptor>();

/// `VM_PKT_DATA_INBAND`: payload inline in the ring.
pub const TYPE_DATA_INBAND: u16 = 6;
/// `VM_PKT_DATA_USING_XFER_PAGES`: payload in a transfer page set.
pub const TYPE_DATA_TRANSFER_PAGES: u16 = 7;
/// `VM_PKT_DATA_USING_GPA_DIRECT`: payload in guest pages listed in the header.
pub const TYPE_DATA_GPA_DIRECT: u16 = 9;
/// `VM_PKT_COMP`: completion of an earlier packet (same transaction id).
pub const TYPE_COMPLETION: u16 = 0xB;

/// Descriptor flag: the sender wants a completion packet.
pub const FLAG_COMPLETION_REQUESTED: u16 = 1;

/// Largest packet (descriptor + header + payload, padded) that `len8` can
/// describe.
pub const MAX_PACKET_LEN: usize = u16::MAX as usize * 8;

/// The 16-byte descriptor at the start of every ring packet, in host order
/// ([`wire::PacketDescriptor`] is its wire image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Packet type (`TYPE_*`).
    pub packet_type: u16,
    /// Header length / 8: the payload starts at `offset8 * 8`.
    pub offset8: u16,
    /// Total packet length / 8, padding included, trailer excluded.
    pub len8: u16,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Transaction id, echoed verbatim in the completion.
    pub transaction_id: u64,
}

impl Descriptor {
    /// Decodes the wire bytes (no validation).
    pub fn from_bytes(b: &[u8; DESCRIPTOR_SIZE]) -> Self {
        let d: wire::PacketDescriptor = zerocopy::transmute!(*b);
        d.into()
    }

    /// Encodes to wire bytes.
    pub fn to_bytes(&self) -> [u8; DESCRIPTOR_SIZE] {
        zerocopy::transmute!(wire::PacketDescriptor::from(*self))
    }
}

impl From<wire::PacketDescriptor> for Descriptor {
    fn from(d: wire::PacketDescriptor) -> Self {
        Self {
            packet_type: d.type_.get(),
            offset8: d.offset8.get(),
            len8: d.len8.get(),
            flags: d.flags.get(),
            transaction_id: d.trans_id.get(),
        }
    }
}

impl From<Descriptor> for wire::PacketDescriptor {
    fn from(d: Descriptor) -> Self {
        Self {
            type_: d.packet_type.into(),
            offset8: d.offset8.into(),
            len8: d.len8.into(),
            flags: d.flags.into(),
            trans_id: d.transaction_id.into(),
        }
    }
}

/// Why a framed packet's contents are invalid. The ring itself is intact;
/// the caller decides whether to drop the packet or the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than its descriptor or than `len8 * 8`.
    Truncated,
    /// `offset8`/`len8` inconsistent (header outside the packet).
    BadOffset,
    /// A packet type this crate does not handle.
    UnknownType(u16),
    /// Range list does not fit in the header, or a range is malformed.
    BadRanges,
    /// An outgoing packet exceeds `MAX_PACKET_LEN`.
    TooLarge,
}

/// One guest-physical range of a GPA-direct packet or a GPADL:
/// `byte_count` bytes starting `byte_offset` into the first of `pfns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRange<'a> {
    /// Length of the range in bytes.
    pub byte_count: u32,
    /// Offset into the first page (below 4096).
    pub byte_offset: u32,
    pfns: &'a [U64],
}

impl<'a> GpaRange<'a> {
    /// The page frame numbers, in order.
    pub fn pfns(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        self.pfns.iter().map(|p| p.get())
    }

    /// Number of pages.
    pub fn pfn_count(&self) -> usize {
        self.pfns.len()
    }
}

/// Pages a range of `byte_count` bytes at `byte_offset` spans.
pub fn pages_spanned(byte_offset: u32, byte_count: u32) -> u64 {
    (u64::from(byte_offset) + u64::from(byte_count)).div_ceil(PAGE_SIZE as u64)
}

/// A validated list of GPA ranges (`gpa_range` records back to back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRanges<'a> {
    bytes: &'a [u8],
    count: u32,
}

/// Splits one `gpa_range` off the front of `bytes`: its head and its PFNs.
/// `None` if the head or the PFNs it implies do not fit.
fn split_range(bytes: &[u8]) -> Option<(wire::GpaRange, &[U64], &[u8])> {
    let (head, rest) = wire::GpaRange::read_from_prefix(bytes).ok()?;
    let pages =
        usize::try_from(pages_spanned(head.byte_offset.get(), head.byte_count.get())).ok()?;
    let (pfns, rest) = <[U64]>::ref_from_prefix_with_elems(rest, pages).ok()?;
    Some((head, pfns, rest))
}

impl<'a> GpaRanges<'a> {
    /// Checks `count` records in `bytes`; trailing bytes are allowed (header
    /// padding). Each record is a [`wire::GpaRange`] head (`u32 byte_count;
    /// u32 byte_offset`) and `u64 pfn[pages_spanned]`.
    pub fn parse(bytes: &'a [u8], count: u32) -> Result<(Self, usize), PacketError> {
        let mut rest = bytes;
        for _ in 0..count {
            let (head, _, tail) = split_range(rest).ok_or(PacketError::BadRanges)?;
            if head.byte_offset.get() as usize >= PAGE_SIZE {
                return Err(PacketError::BadRanges);
            }
            rest = tail;
        }
        let at = bytes.len() - rest.len();
        Ok((
            Self {
                bytes: &bytes[..at],
                count,
            },
            at,
        ))
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True if there are no ranges.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Iterates the ranges.
    pub fn iter(&self) -> GpaRangeIter<'a> {
        GpaRangeIter {
            bytes: self.bytes,
            left: self.count,
        }
    }
}

/// Iterator over [`GpaRanges`].
pub struct GpaRangeIter<'a> {
    bytes: &'a [u8],
    left: u32,
}

impl<'a> Iterator for GpaRangeIter<'a> {
    type Item = GpaRange<'a>;
    fn next(&mut self) -> Option<GpaRange<'a>> {
        if self.left == 0 {
            return None;
        }
        // Validated by GpaRanges::parse; `?` only guards the invariant.
        let (head, pfns, rest) = split_range(self.bytes)?;
        self.bytes = rest;
        self.left -= 1;
        Some(GpaRange {
            byte_count: head.byte_count.get(),
            byte_offset: head.byte_offset.get(),
            pfns,
        })
    }
}

/// One range of a transfer-pages packet: bytes within the transfer page set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferRange {
    /// Length in bytes.
    pub byte_count: u32,
    /// Offset into the transfer page set.
    pub byte_offset: u32,
}

impl From<&wire::TransferPageRange> for TransferRange {
    fn from(r: &wire::TransferPageRange) -> Self {
        Self {
            byte_count: r.byte_count.get(),
            byte_offset: r.byte_offset.get(),
        }
    }
}

impl From<&TransferRange> for wire::TransferPageRange {
    fn from(r: &TransferRange) -> Self {
        Self {
            byte_count: r.byte_count.into(),
            byte_offset: r.byte_offset.into(),
        }
    }
}

/// The type-specific part of a received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind<'a> {
    /// `TYPE_DATA_INBAND`.
    InBand,
    /// `TYPE_COMPLETION`.
    Completion,
    /// `TYPE_DATA_GPA_DIRECT` with its ranges.
    GpaDirect(GpaRanges<'a>),
    /// `TYPE_DATA_TRANSFER_PAGES`.
    TransferPages {
        /// Transfer page set id (netvsc: 0xCAFE).
        pageset_id: u16,
        /// The sender keeps ownership of the set.
        sender_owns: bool,
        /// The range records (`range_cnt` of them); see also
        /// [`PacketKind::transfer_ranges`].
        ranges: &'a [wire::TransferPageRange],
    },
}

impl<'a> PacketKind<'a> {
    /// The ranges of a transfer-pages packet (empty for other kinds).
    pub fn transfer_ranges(&self) -> impl Iterator<Item = TransferRange> + 'a {
        let ranges: &'a [wire::TransferPageRange] = match self {
            PacketKind::TransferPages { ranges, .. } => ranges,
            _ => &[],
        };
        ranges.iter().map(TransferRange::from)
    }
}

/// A received packet, borrowed from the reader's private copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Transaction id.
    pub transaction_id: u64,
    /// Descriptor flags.
    pub flags: u16,
    /// Type-specific header.
    pub kind: PacketKind<'a>,
    /// Payload, including the sender's padding to 8 bytes (VMBus does not
    /// carry the unpadded length; device protocols carry their own).
    pub payload: &'a [u8],
}

impl<'a> Packet<'a> {
    /// True if the sender asked for a completion.
    pub fn completion_requested(&self) -> bool {
        self.flags & FLAG_COMPLETION_REQUESTED != 0
    }

    /// Parses a packet copied out of a ring (`bytes.len() == len8 * 8`, or
    /// more; extra bytes are ignored).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PacketError> {
        let (desc, _) =
            wire::PacketDescriptor::read_from_prefix(bytes).map_err(|_| PacketError::Truncated)?;
        let desc = Descriptor::from(desc);
        let len = usize::from(desc.len8) * 8;
        let offset = usize::from(desc.offset8) * 8;
        if offset < DESCRIPTOR_SIZE || offset > len {
            return Err(PacketError::BadOffset);
        }
        let bytes = bytes.get(..len).ok_or(PacketError::Truncated)?;
        // Descriptor and type-specific header: the fixed headers below
        // start with the descriptor, as Linux's do.
        let (header, payload) = bytes.split_at(offset);
        let kind = match desc.packet_type {
            TYPE_DATA_INBAND => PacketKind::InBand,
            TYPE_COMPLETION => PacketKind::Completion,
            TYPE_DATA_GPA_DIRECT => {
                let (h, ranges) = wire::GpaDirectHeader::read_from_prefix(header)
                    .map_err(|_| PacketError::BadRanges)?;
                let (ranges, _) = GpaRanges::parse(ranges, h.range_cnt.get())?;
                PacketKind::GpaDirect(ranges)
            }
            TYPE_DATA_TRANSFER_PAGES => {
                let (h, rest) = wire::TransferPageHeader::read_from_prefix(header)
                    .map_err(|_| PacketError::BadRanges)?;
                let count =
                    usize::try_from(h.range_cnt.get()).map_err(|_| PacketError::BadRanges)?;
                let (ranges, _) =
                    <[wire::TransferPageRange]>::ref_from_prefix_with_elems(rest, count)
                        .map_err(|_| PacketError::BadRanges)?;
                PacketKind::TransferPages {
                    pageset_id: h.xfer_pageset_id.get(),
                    sender_owns: h.sender_owns_set != 0,
                    ranges,
                }
            }
            other => return Err(PacketError::UnknownType(other)),
        };
        Ok(Packet {
            transaction_id: desc.transaction_id,
            flags: desc.flags,
            kind,
            payload,
        })
    }
}

/// A GPA range to send: `byte_count` bytes at `byte_offset` into `pfns[0]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRangeSpec<'a> {
    /// Length in bytes.
    pub byte_count: u32,
    /// Offset into the first page.
    pub byte_offset: u32,
    /// Exactly `pages_spanned(byte_offset, byte_count)` page numbers.
    pub pfns: &'a [u64],
}

/// The type-specific part of a packet to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutgoingKind<'a> {
    /// In-band data.
    InBand,
    /// Completion of the packet with the same transaction id.
    Completion,
    /// Data in guest pages.
    GpaDirect(&'a [GpaRangeSpec<'a>]),
    /// Data in a transfer page set.
    TransferPages {
        /// Transfer page set id.
        pageset_id: u16,
        /// The sender keeps ownership of the set.
        sender_owns: bool,
        /// Ranges within the set.
        ranges: &'a [TransferRange],
    },
}

/// A packet to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutgoingPacket<'a> {
    /// Type-specific header.
    pub kind: OutgoingKind<'a>,
    /// Transaction id.
    pub transaction_id: u64,
    /// Ask the peer for a completion.
    pub completion_requested: bool,
    /// Payload pieces, sent back to back.
    pub payload: &'a [&'a [u8]],
}

impl<'a> OutgoingPacket<'a> {
    /// An in-band packet.
    pub fn in_band(
        transaction_id: u64,
        completion_requested: bool,
        payload: &'a [&'a [u8]],
    ) -> Self {
        Self {
            kind: OutgoingKind::InBand,
            transaction_id,
            completion_requested,
            payload,
        }
    }

    /// A request that asks for a completion: in band, or with its data in
    /// the guest pages `ranges` name (GPA direct) when there are any.
    pub fn request(
        transaction_id: u64,
        ranges: &'a [GpaRangeSpec<'a>],
        payload: &'a [&'a [u8]],
    ) -> Self {
        Self {
            kind: if ranges.is_empty() {
                OutgoingKind::InBand
            } else {
                OutgoingKind::GpaDirect(ranges)
            },
            transaction_id,
            completion_requested: true,
            payload,
        }
    }

    /// A completion packet.
    pub fn completion(transaction_id: u64, payload: &'a [&'a [u8]]) -> Self {
        Self {
            kind: OutgoingKind::Completion,
            transaction_id,
            completion_requested: false,
            payload,
        }
    }

    /// Builds the descriptor and type-specific header.
    pub fn encode_header(&self) -> Result<HeaderBytes, PacketError> {
        // Descriptor-led headers (`vmdata_gpa_direct`,
        // `vmtransfer_page_packet_header`) are built with a zero descriptor,
        // which is filled in once the header's length is known.
        let zero_desc = wire::PacketDescriptor::new_zeroed();
        let mut long: Vec<u8> = Vec::new();
        let packet_type = match self.kind {
            OutgoingKind::InBand => TYPE_DATA_INBAND,
            OutgoingKind::Completion => TYPE_COMPLETION,
            OutgoingKind::GpaDirect(ranges) => {
                let count = u32::try_from(ranges.len()).map_err(|_| PacketError::TooLarge)?;
                let head = wire::GpaDirectHeader {
                    d: zero_desc,
                    reserved: 0.into(),
                    range_cnt: count.into(),
                };
                long.extend_from_slice(head.as_bytes());
                for r in ranges {
                    if r.byte_offset as usize >= PAGE_SIZE
                        || r.pfns.len() as u64 != pages_spanned(r.byte_offset, r.byte_count)
                    {
                        return Err(PacketError::BadRanges);
                    }
                    long.extend_from_slice(
                        wire::GpaRange::new(r.byte_count, r.byte_offset).as_bytes(),
                    );
                    for pfn in r.pfns {
                        long.extend_from_slice(U64::new(*pfn).as_bytes());
                    }
                    if long.len() - DESCRIPTOR_SIZE > MAX_PACKET_LEN {
                        return Err(PacketError::TooLarge);
                    }
                }
                TYPE_DATA_GPA_DIRECT
            }
            OutgoingKind::TransferPages {
                pageset_id,
                sender_owns,
                ranges,
            } => {
                let count = u32::try_from(ranges.len()).map_err(|_| PacketError::TooLarge)?;
                if ranges.len() > MAX_PACKET_LEN / size_of::<wire::TransferPageRange>() {
                    return Err(PacketError::TooLarge);
                }
                let head = wire::TransferPageHeader {
                    d: zero_desc,
                    xfer_pageset_id: pageset_id.into(),
                    sender_owns_set: u8::from(sender_owns),
                    reserved: 0,
                    range_cnt: count.into(),
                };
                long.extend_from_slice(head.as_bytes());
                for r in ranges {
                    long.extend_from_slice(wire::TransferPageRange::from(r).as_bytes());
                }
                TYPE_DATA_TRANSFER_PAGES
            }
        };
        let header_len = long.len().max(DESCRIPTOR_SIZE);
        let payload_len = self
            .payload
            .iter()
            .try_fold(0usize, |acc, p| acc.checked_add(p.len()))
            .ok_or(PacketError::TooLarge)?;
        let total = header_len
            .checked_add(payload_len)
            .map(|t| t.next_multiple_of(8))
            .filter(|&t| t <= MAX_PACKET_LEN)
            .ok_or(PacketError::TooLarge)?;
        let desc = Descriptor {
            packet_type,
            offset8: (header_len / 8) as u16,
            len8: (total / 8) as u16,
            flags: if self.completion_requested {
                FLAG_COMPLETION_REQUESTED
            } else {
                0
            },
            transaction_id: self.transaction_id,
        };
        Ok(if long.is_empty() {
            HeaderBytes::Short(desc.to_bytes())
        } else {
            long[..DESCRIPTOR_SIZE].copy_from_slice(&desc.to_bytes());
            HeaderBytes::Long(long)
        })
    }
}

/// An encoded packet header: descriptor only (no allocation) or descriptor
/// plus ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderBytes {
    /// Just the descriptor.
    Short([u8; DESCRIPTOR_SIZE]),
    /// Descriptor and range header.
    Long(Vec<u8>),
}

impl HeaderBytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            HeaderBytes::Short(b) => b,
            HeaderBytes::Long(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn encode(p: &OutgoingPacket<'_>) -> Vec<u8> {
        let mut v = p.encode_header().unwrap().as_slice().to_vec();
        for part in p.payload {
            v.extend_from_slice(part);
        }
        v.resize(v.len().next_multiple_of(8), 0);
        v
    }

    #[test]
    fn in_band_layout() {
        let bytes = encode(&OutgoingPacket::in_band(0x1122, true, &[b"hello"]));
        // type 6, offset8 2, len8 3 (16 + 5 padded to 24), flags 1.
        assert_eq!(&bytes[..8], &[6, 0, 2, 0, 3, 0, 1, 0]);
        assert_eq!(&bytes[8..16], &0x1122u64.to_le_bytes());
        let p = Packet::parse(&bytes).unwrap();
        assert_eq!(p.kind, PacketKind::InBand);
        assert!(p.completion_requested());
        assert_eq!(&p.payload[..5], b"hello");
        assert_eq!(p.payload.len(), 8);
    }

    #[test]
    fn gpa_direct_round_trip() {
        let pfns = [7u64, 8, 9];
        let ranges = [
            GpaRangeSpec {
                byte_count: 8192,
                byte_offset: 100,
                pfns: &pfns,
            },
            GpaRangeSpec {
                byte_count: 10,
                byte_offset: 0,
                pfns: &[3],
            },
        ];
        let pkt = OutgoingPacket {
            kind: OutgoingKind::GpaDirect(&ranges),
            transaction_id: 5,
            completion_requested: true,
            payload: &[&[0xAA; 64]],
        };
        let bytes = encode(&pkt);
        // 16 + 8 + (8 + 24) + (8 + 8) = 72 header bytes.
        assert_eq!(u16::from_le_bytes([bytes[2], bytes[3]]), 72 / 8);
        let p = Packet::parse(&bytes).unwrap();
        let PacketKind::GpaDirect(r) = p.kind else {
            panic!("kind {:?}", p.kind)
        };
        let got: Vec<_> = r
            .iter()
            .map(|g| (g.byte_count, g.byte_offset, g.pfns().collect::<Vec<_>>()))
            .collect();
        assert_eq!(got, vec![(8192, 100, vec![7, 8, 9]), (10, 0, vec![3])]);
        assert_eq!(p.payload, &[0xAA; 64]);
    }

    #[test]
    fn transfer_pages_round_trip() {
        let ranges = [
            TransferRange {
                byte_count: 100,
                byte_offset: 0,
            },
            TransferRange {
                byte_count: 50,
                byte_offset: 4096,
            },
        ];
        let pkt = OutgoingPacket {
            kind: OutgoingKind::TransferPages {
                pageset_id: 0xCAFE,
                sender_owns: true,
                ranges: &ranges,
            },
            transaction_id: 9,
            completion_requested: true,
            payload: &[&[1, 2, 3, 4]],
        };
        let bytes = encode(&pkt);
        let p = Packet::parse(&bytes).unwrap();
        match p.kind {
            PacketKind::TransferPages {
                pageset_id,
                sender_owns,
                ..
            } => {
                assert_eq!(pageset_id, 0xCAFE);
                assert!(sender_owns);
            }
            k => panic!("kind {k:?}"),
        }
        assert_eq!(p.kind.transfer_ranges().collect::<Vec<_>>(), ranges);
    }

    #[test]
    fn rejects_bad_headers() {
        let mut bytes = encode(&OutgoingPacket::in_band(1, false, &[&[0; 8]]));
        bytes[2] = 1; // offset8 inside the descriptor
        assert_eq!(Packet::parse(&bytes), Err(PacketError::BadOffset));
        bytes[2] = 4; // offset8 past len8 (3)
        assert_eq!(Packet::parse(&bytes), Err(PacketError::BadOffset));
        bytes[2] = 2;
        bytes[4] = 9; // len8 past the buffer
        assert_eq!(Packet::parse(&bytes), Err(PacketError::Truncated));
        bytes[4] = 3;
        bytes[0] = 1;
        assert_eq!(Packet::parse(&bytes), Err(PacketError::UnknownType(1)));
        // GPA direct claiming a range that does not fit.
        let mut g = encode(&OutgoingPacket {
            kind: OutgoingKind::GpaDirect(&[GpaRangeSpec {
                byte_count: 1,
                byte_offset: 0,
                pfns: &[1],
            }]),
            transaction_id: 0,
            completion_requested: false,
            payload: &[],
        });
        g[20] = 2; // range_count 2
        assert_eq!(Packet::parse(&g), Err(PacketError::BadRanges));
        g[20] = 1;
        g[24..28].copy_from_slice(&u32::MAX.to_le_bytes()); // byte_count huge
        assert_eq!(Packet::parse(&g), Err(PacketError::BadRanges));
        assert_eq!(Packet::parse(&[0; 8]), Err(PacketError::Truncated));
    }

    #[test]
    fn outgoing_limits() {
        let big = vec![0u8; MAX_PACKET_LEN];
        assert_eq!(
            OutgoingPacket::in_band(0, false, &[&big]).encode_header(),
            Err(PacketError::TooLarge)
        );
        let bad = [GpaRangeSpec {
            byte_count: 4097,
            byte_offset: 0,
            pfns: &[1],
        }];
        let p = OutgoingPacket {
            kind: OutgoingKind::GpaDirect(&bad),
            transaction_id: 0,
            completion_requested: false,
            payload: &[],
        };
        assert_eq!(p.encode_header(), Err(PacketError::BadRanges));
    }

    /// The encoded headers are Linux's structs: they read back as the
    /// `wire` types, with the ranges right after them.
    #[test]
    fn headers_are_the_wire_structs() {
        let pfns = [0x1_0000_0001u64, 2];
        let ranges = [GpaRangeSpec {
            byte_count: 4096,
            byte_offset: 10,
            pfns: &pfns,
        }];
        let bytes = encode(&OutgoingPacket {
            kind: OutgoingKind::GpaDirect(&ranges),
            transaction_id: 0x55,
            completion_requested: true,
            payload: &[&[1; 8]],
        });
        let (h, rest) = wire::GpaDirectHeader::read_from_prefix(&bytes).unwrap();
        assert_eq!(h.d.type_.get(), TYPE_DATA_GPA_DIRECT);
        assert_eq!(h.d.offset8.get(), (24 + 8 + 16) / 8);
        assert_eq!(h.d.len8.get(), (24 + 8 + 16 + 8) / 8);
        assert_eq!(h.d.flags.get(), FLAG_COMPLETION_REQUESTED);
        assert_eq!(h.d.trans_id.get(), 0x55);
        assert_eq!(h.range_cnt.get(), 1);
        let (r, rest) = wire::GpaRange::read_from_prefix(rest).unwrap();
        assert_eq!(r, wire::GpaRange::new(4096, 10));
        let (p, _) = <[U64]>::ref_from_prefix_with_elems(rest, 2).unwrap();
        assert_eq!([p[0].get(), p[1].get()], pfns);
        assert_eq!(
            Descriptor::from(h.d),
            Descriptor::from_bytes(bytes.first_chunk().unwrap())
        );

        let xfer = [TransferRange {
            byte_count: 1,
            byte_offset: 2,
        }];
        let bytes = encode(&OutgoingPacket {
            kind: OutgoingKind::TransferPages {
                pageset_id: 0xCAFE,
                sender_owns: false,
                ranges: &xfer,
            },
            transaction_id: 1,
            completion_requested: false,
            payload: &[],
        });
        let (h, rest) = wire::TransferPageHeader::read_from_prefix(&bytes).unwrap();
        assert_eq!(h.d.type_.get(), TYPE_DATA_TRANSFER_PAGES);
        assert_eq!(h.d.offset8.get(), 4);
        assert_eq!(h.xfer_pageset_id.get(), 0xCAFE);
        assert_eq!(h.sender_owns_set, 0);
        assert_eq!(h.range_cnt.get(), 1);
        let (r, _) = wire::TransferPageRange::read_from_prefix(rest).unwrap();
        assert_eq!(TransferRange::from(&r), xfer[0]);
    }

    #[test]
    fn descriptor_bytes_round_trip() {
        let d = Descriptor {
            packet_type: 0xB,
            offset8: 2,
            len8: 0x1234,
            flags: 1,
            transaction_id: u64::MAX - 3,
        };
        let b = d.to_bytes();
        assert_eq!(&b[..8], &[0xB, 0, 2, 0, 0x34, 0x12, 1, 0]);
        assert_eq!(&b[8..], &(u64::MAX - 3).to_le_bytes());
        assert_eq!(Descriptor::from_bytes(&b), d);
        assert_eq!(wire::PacketDescriptor::from(d).as_bytes(), &b);
    }

    #[test]
    fn transfer_range_count_is_bounded_by_the_header() {
        let mut bytes = encode(&OutgoingPacket {
            kind: OutgoingKind::TransferPages {
                pageset_id: 1,
                sender_owns: true,
                ranges: &[TransferRange {
                    byte_count: 1,
                    byte_offset: 0,
                }],
            },
            transaction_id: 0,
            completion_requested: false,
            payload: &[&[0; 16]],
        });
        // range_cnt 2 would run into the payload's bytes, which are not
        // part of the header.
        bytes[20] = 2;
        assert_eq!(Packet::parse(&bytes), Err(PacketError::BadRanges));
        bytes[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Packet::parse(&bytes), Err(PacketError::BadRanges));
        // offset8 too small for the fixed header.
        bytes[20] = 1;
        bytes[21..24].fill(0);
        bytes[2] = 2;
        assert_eq!(Packet::parse(&bytes), Err(PacketError::BadRanges));
        bytes[2] = 4;
        assert!(Packet::parse(&bytes).is_ok());
    }

    #[test]
    fn gpa_ranges_allow_trailing_bytes_only() {
        let mut b = Vec::new();
        b.extend_from_slice(wire::GpaRange::new(2, 4095).as_bytes()); // two pages
        b.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&[0xEE; 5]);
        let (r, used) = GpaRanges::parse(&b, 1).unwrap();
        assert_eq!(used, 24);
        let got: Vec<_> = r
            .iter()
            .flat_map(|g| g.pfns().collect::<Vec<_>>())
            .collect();
        assert_eq!(got, vec![7, 8]);
        assert_eq!(GpaRanges::parse(&b[..23], 1), Err(PacketError::BadRanges));
        assert_eq!(GpaRanges::parse(&b, 2), Err(PacketError::BadRanges));
    }
}
