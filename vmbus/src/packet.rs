//! VMBus packets: the 16-byte descriptor that frames every packet in a ring,
//! and the packet types a device protocol uses (in-band, completion,
//! GPA-direct, transfer pages).
//!
//! Parsing works on a private copy made by the ring reader, so a packet
//! cannot change while it is checked. Sending builds the descriptor and the
//! type-specific header; the ring writer adds padding and the trailer.

use alloc::vec::Vec;

use crate::PAGE_SIZE;

/// Size of the packet descriptor (`struct vmpacket_descriptor`).
pub const DESCRIPTOR_SIZE: usize = 16;

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

/// The 16-byte descriptor at the start of every ring packet.
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
        Self {
            packet_type: u16::from_le_bytes([b[0], b[1]]),
            offset8: u16::from_le_bytes([b[2], b[3]]),
            len8: u16::from_le_bytes([b[4], b[5]]),
            flags: u16::from_le_bytes([b[6], b[7]]),
            transaction_id: u64::from_le_bytes([
                b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15],
            ]),
        }
    }

    /// Encodes to wire bytes.
    pub fn to_bytes(&self) -> [u8; DESCRIPTOR_SIZE] {
        let mut b = [0u8; DESCRIPTOR_SIZE];
        b[0..2].copy_from_slice(&self.packet_type.to_le_bytes());
        b[2..4].copy_from_slice(&self.offset8.to_le_bytes());
        b[4..6].copy_from_slice(&self.len8.to_le_bytes());
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.transaction_id.to_le_bytes());
        b
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
    pfns: &'a [u8],
}

impl<'a> GpaRange<'a> {
    /// The page frame numbers, in order.
    pub fn pfns(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        self.pfns
            .as_chunks::<8>()
            .0
            .iter()
            .map(|c| u64::from_le_bytes(*c))
    }

    /// Number of pages.
    pub fn pfn_count(&self) -> usize {
        self.pfns.len() / 8
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

impl<'a> GpaRanges<'a> {
    /// Checks `count` records in `bytes`; trailing bytes are allowed (header
    /// padding). Each record is `u32 byte_count; u32 byte_offset;
    /// u64 pfn[pages_spanned]`.
    pub fn parse(bytes: &'a [u8], count: u32) -> Result<(Self, usize), PacketError> {
        let mut at = 0usize;
        for _ in 0..count {
            let (byte_count, byte_offset) = read_range_head(bytes, at)?;
            if byte_offset as usize >= PAGE_SIZE {
                return Err(PacketError::BadRanges);
            }
            let pages = pages_spanned(byte_offset, byte_count);
            let len = usize::try_from(pages)
                .ok()
                .and_then(|p| p.checked_mul(8))
                .and_then(|l| l.checked_add(8))
                .ok_or(PacketError::BadRanges)?;
            at = at.checked_add(len).ok_or(PacketError::BadRanges)?;
            if at > bytes.len() {
                return Err(PacketError::BadRanges);
            }
        }
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

fn read_range_head(bytes: &[u8], at: usize) -> Result<(u32, u32), PacketError> {
    let head = bytes
        .get(at..)
        .and_then(|b| b.first_chunk::<8>())
        .ok_or(PacketError::BadRanges)?;
    Ok((
        u32::from_le_bytes([head[0], head[1], head[2], head[3]]),
        u32::from_le_bytes([head[4], head[5], head[6], head[7]]),
    ))
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
        let (byte_count, byte_offset) = read_range_head(self.bytes, 0).ok()?;
        let pages = pages_spanned(byte_offset, byte_count) as usize;
        let end = 8 + pages * 8;
        let pfns = self.bytes.get(8..end)?;
        self.bytes = self.bytes.get(end..)?;
        self.left -= 1;
        Some(GpaRange {
            byte_count,
            byte_offset,
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
        /// Raw range records; see [`PacketKind::transfer_ranges`].
        ranges: &'a [u8],
    },
}

impl<'a> PacketKind<'a> {
    /// The ranges of a transfer-pages packet (empty for other kinds).
    pub fn transfer_ranges(&self) -> impl Iterator<Item = TransferRange> + 'a {
        let ranges: &'a [u8] = match self {
            PacketKind::TransferPages { ranges, .. } => ranges,
            _ => &[],
        };
        ranges.as_chunks::<8>().0.iter().map(|c| TransferRange {
            byte_count: u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            byte_offset: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
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
        let desc = Descriptor::from_bytes(bytes.first_chunk().ok_or(PacketError::Truncated)?);
        let len = usize::from(desc.len8) * 8;
        let offset = usize::from(desc.offset8) * 8;
        if offset < DESCRIPTOR_SIZE || offset > len {
            return Err(PacketError::BadOffset);
        }
        let bytes = bytes.get(..len).ok_or(PacketError::Truncated)?;
        let header = &bytes[DESCRIPTOR_SIZE..offset];
        let payload = &bytes[offset..];
        let kind = match desc.packet_type {
            TYPE_DATA_INBAND => PacketKind::InBand,
            TYPE_COMPLETION => PacketKind::Completion,
            TYPE_DATA_GPA_DIRECT => {
                // u32 reserved; u32 range_count; ranges...
                let h = header.first_chunk::<8>().ok_or(PacketError::BadRanges)?;
                let count = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
                let (ranges, _) = GpaRanges::parse(&header[8..], count)?;
                PacketKind::GpaDirect(ranges)
            }
            TYPE_DATA_TRANSFER_PAGES => {
                // u16 pageset_id; u8 sender_owns; u8 reserved; u32 range_count
                let h = header.first_chunk::<8>().ok_or(PacketError::BadRanges)?;
                let count = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
                let ranges = count
                    .checked_mul(8)
                    .and_then(|n| header.get(8..8 + n))
                    .ok_or(PacketError::BadRanges)?;
                PacketKind::TransferPages {
                    pageset_id: u16::from_le_bytes([h[0], h[1]]),
                    sender_owns: h[2] != 0,
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
        let mut extra: Vec<u8> = Vec::new();
        let packet_type = match self.kind {
            OutgoingKind::InBand => TYPE_DATA_INBAND,
            OutgoingKind::Completion => TYPE_COMPLETION,
            OutgoingKind::GpaDirect(ranges) => {
                let count = u32::try_from(ranges.len()).map_err(|_| PacketError::TooLarge)?;
                extra.extend_from_slice(&0u32.to_le_bytes());
                extra.extend_from_slice(&count.to_le_bytes());
                for r in ranges {
                    if r.byte_offset as usize >= PAGE_SIZE
                        || r.pfns.len() as u64 != pages_spanned(r.byte_offset, r.byte_count)
                    {
                        return Err(PacketError::BadRanges);
                    }
                    extra.extend_from_slice(&r.byte_count.to_le_bytes());
                    extra.extend_from_slice(&r.byte_offset.to_le_bytes());
                    for pfn in r.pfns {
                        extra.extend_from_slice(&pfn.to_le_bytes());
                    }
                    if extra.len() > MAX_PACKET_LEN {
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
                if ranges.len() > MAX_PACKET_LEN / 8 {
                    return Err(PacketError::TooLarge);
                }
                extra.extend_from_slice(&pageset_id.to_le_bytes());
                extra.push(u8::from(sender_owns));
                extra.push(0);
                extra.extend_from_slice(&count.to_le_bytes());
                for r in ranges {
                    extra.extend_from_slice(&r.byte_count.to_le_bytes());
                    extra.extend_from_slice(&r.byte_offset.to_le_bytes());
                }
                TYPE_DATA_TRANSFER_PAGES
            }
        };
        let header_len = DESCRIPTOR_SIZE + extra.len();
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
        Ok(if extra.is_empty() {
            HeaderBytes::Short(desc.to_bytes())
        } else {
            let mut long = Vec::with_capacity(header_len);
            long.extend_from_slice(&desc.to_bytes());
            long.extend_from_slice(&extra);
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
}
