//! The VMBus wire structs, one per struct in Linux's `include/linux/hyperv.h`
//! (the `__packed` little-endian layouts `hv_vmbus` speaks), typed with
//! `zerocopy`.
//!
//! Every field is a byte array or a [`zerocopy::byteorder`] little-endian
//! integer, so every struct has alignment 1 (`Unaligned`), no padding, and
//! the exact Linux size, checked at compile time next to each struct. Field
//! names are Linux's, so a layout can be compared with the header line by
//! line; offsets in the comments are from the start of the struct.
//!
//! These are plain byte images: nothing here validates. Whoever reads one
//! from bytes the peer controls reads it *by value* (`read_from_prefix` /
//! `read_from_bytes` on a private copy) and then checks its fields; the
//! [`messages`](crate::messages) and [`packet`](crate::packet) parsers do
//! exactly that and are what the rest of the crate uses.
//!
//! Linux ends several of these structs with a flexible array (`range[]`,
//! `pfn[]`, `ranges[]`); the structs here stop before it, so their size is
//! the offset where the array starts. Where Linux spells the array as
//! `[1]` (`vmdata_gpa_direct`), its `sizeof` is one element larger than the
//! struct here, which says so.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// A GUID as it travels (`guid_t`): Windows byte order, see [`crate::Guid`].
pub type GuidBytes = [u8; 16];

/// `MAX_USER_DEFINED_BYTES`: user bytes in an offer and in an open request.
pub const MAX_USER_DEFINED_BYTES: usize = 120;

/// Checks a wire struct's size and that it has no alignment requirement.
macro_rules! layout {
    ($t:ty, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
        const _: () = assert!(core::mem::align_of::<$t>() == 1);
    };
}

// ---------------------------------------------------------------------------
// Channel messages (SynIC message payloads, at most 240 bytes).
// ---------------------------------------------------------------------------

/// `struct vmbus_channel_message_header` (8 bytes): starts every channel
/// message. REQUESTOFFERS, ALLOFFERS_DELIVERED, UNLOAD and UNLOAD_RESPONSE
/// are this header alone.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct MessageHeader {
    /// @0 `enum vmbus_channel_message_type` (4 bytes).
    pub msgtype: U32,
    /// @4
    pub padding: U32,
}
layout!(MessageHeader, 8);

impl MessageHeader {
    /// The header of a message of type `msgtype`.
    pub fn new(msgtype: u32) -> Self {
        Self {
            msgtype: msgtype.into(),
            padding: 0.into(),
        }
    }
}

/// `struct vmbus_channel_offer` (176 bytes): the offer proper, inside
/// [`OfferChannel`].
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct ChannelOffer {
    /// @0 device class.
    pub if_type: GuidBytes,
    /// @16 device instance.
    pub if_instance: GuidBytes,
    /// @32
    pub reserved1: U64,
    /// @40
    pub reserved2: U64,
    /// @48 `VMBUS_CHANNEL_*` flags.
    pub chn_flags: U16,
    /// @50 MMIO space in MiB.
    pub mmio_megabytes: U16,
    /// @52 union `u.std.user_def` / `u.pipe {u32 pipe_mode; u8 user_def[116]}`.
    pub user_def: [u8; MAX_USER_DEFINED_BYTES],
    /// @172 0 = primary channel.
    pub sub_channel_index: U16,
    /// @174 (OpenVMM: optional MMIO MiB).
    pub reserved3: U16,
}
layout!(ChannelOffer, 176);

/// `struct vmbus_channel_offer_channel` (196 bytes), CHANNELMSG_OFFERCHANNEL.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct OfferChannel {
    /// @0
    pub header: MessageHeader,
    /// @8
    pub offer: ChannelOffer,
    /// @184
    pub child_relid: U32,
    /// @188 0xFF when unused.
    pub monitorid: u8,
    /// @189 bit 0 `monitor_allocated`, bits 1–7 reserved.
    pub monitor_allocated: u8,
    /// @190 bit 0 `is_dedicated_interrupt`, bits 1–15 reserved.
    pub is_dedicated_interrupt: U16,
    /// @192 connection id for HvSignalEvent.
    pub connection_id: U32,
}
layout!(OfferChannel, 196);

/// `struct vmbus_channel_rescind_offer` (12 bytes), CHANNELMSG_RESCIND_CHANNELOFFER.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct RescindOffer {
    /// @0
    pub header: MessageHeader,
    /// @8
    pub child_relid: U32,
}
layout!(RescindOffer, 12);

/// `struct vmbus_channel_open_channel` (148 bytes), CHANNELMSG_OPENCHANNEL.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct OpenChannel {
    /// @0
    pub header: MessageHeader,
    /// @8
    pub child_relid: U32,
    /// @12
    pub openid: U32,
    /// @16
    pub ringbuffer_gpadlhandle: U32,
    /// @20
    pub target_vp: U32,
    /// @24 first page of the host->guest ring within the GPADL.
    pub downstream_ringbuffer_pageoffset: U32,
    /// @28
    pub userdata: [u8; MAX_USER_DEFINED_BYTES],
}
layout!(OpenChannel, 148);

/// `struct vmbus_channel_open_result` (20 bytes), CHANNELMSG_OPENCHANNEL_RESULT.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct OpenResult {
    /// @0
    pub header: MessageHeader,
    /// @8
    pub child_relid: U32,
    /// @12
    pub openid: U32,
    /// @16 0 = success.
    pub status: U32,
}
layout!(OpenResult, 20);

/// `struct vmbus_channel_close_channel` (12 bytes), CHANNELMSG_CLOSECHANNEL.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct CloseChannel {
    /// @0
    pub header: MessageHeader,
    /// @8
    pub child_relid: U32,
}
layout!(CloseChannel, 12);

/// `struct vmbus_channel_gpadl_header` up to its `struct gpa_range range[]`
/// (20 bytes), CHANNELMSG_GPADL_HEADER. The range list follows as u64 words
/// (see [`GpaRange`]), unaligned at offset 20.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct GpadlHeader {
    /// @0
    pub header: MessageHeader,
    /// @8
    pub child_relid: U32,
    /// @12
    pub gpadl: U32,
    /// @16 bytes of the whole range list (header and bodies).
    pub range_buflen: U16,
    /// @18
    pub rangecount: U16,
}
layout!(GpadlHeader, 20);

/// `struct vmbus_channel_gpadl_body` up to its `u64 pfn[]` (16 bytes),
/// CHANNELMSG_GPADL_BODY. More range-list words follow.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct GpadlBody {
    /// @0
    pub header: MessageHeader,
    /// @8 Linux leaves it 0.
    pub msgnumber: U32,
    /// @12
    pub gpadl: U32,
}
layout!(GpadlBody, 16);

/// `struct vmbus_channel_gpadl_created` (20 bytes), CHANNELMSG_GPADL_CREATED.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct GpadlCreated {
    /// @0
    pub header: MessageHeader,
    /// @8
    pub child_relid: U32,
    /// @12
    pub gpadl: U32,
    /// @16 0 = success.
    pub creation_status: U32,
}
layout!(GpadlCreated, 20);

/// `struct vmbus_channel_gpadl_teardown` (16 bytes), CHANNELMSG_GPADL_TEARDOWN.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct GpadlTeardown {
    /// @0
    pub header: MessageHeader,
    /// @8
    pub child_relid: U32,
    /// @12
    pub gpadl: U32,
}
layout!(GpadlTeardown, 16);

/// `struct vmbus_channel_gpadl_torndown` (12 bytes), CHANNELMSG_GPADL_TORNDOWN.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct GpadlTorndown {
    /// @0
    pub header: MessageHeader,
    /// @8
    pub gpadl: U32,
}
layout!(GpadlTorndown, 12);

/// `struct vmbus_channel_relid_released` (12 bytes), CHANNELMSG_RELID_RELEASED.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct RelidReleased {
    /// @0
    pub header: MessageHeader,
    /// @8
    pub child_relid: U32,
}
layout!(RelidReleased, 12);

/// `struct vmbus_channel_initiate_contact` (40 bytes), CHANNELMSG_INITIATE_CONTACT.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct InitiateContact {
    /// @0
    pub header: MessageHeader,
    /// @8
    pub vmbus_version_requested: U32,
    /// @12 VP the host answers on.
    pub target_vcpu: U32,
    /// @16 union: below 5.0 `u64 interrupt_page`; from 5.0 the SINT in the
    /// low byte (Linux 6.1: `{u8 msg_sint; u8 padding1[3]; u32 padding2}`,
    /// later kernels `{u8 msg_sint; u8 msg_vtl; u8 reserved[6]}`).
    pub interrupt_page: U64,
    /// @24 parent->child monitor page GPA.
    pub monitor_page1: U64,
    /// @32 child->parent monitor page GPA.
    pub monitor_page2: U64,
}
layout!(InitiateContact, 40);

/// `struct vmbus_channel_version_response` (16 bytes), CHANNELMSG_VERSION_RESPONSE.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct VersionResponse {
    /// @0
    pub header: MessageHeader,
    /// @8 non-zero: the proposed version is accepted.
    pub version_supported: u8,
    /// @9 0 ok, 1 low resources, 2 failure.
    pub connection_state: u8,
    /// @10
    pub padding: U16,
    /// @12 connection id for later messages (from 5.0).
    pub msg_conn_id: U32,
}
layout!(VersionResponse, 16);

/// `struct vmbus_channel_modifychannel` (16 bytes), CHANNELMSG_MODIFYCHANNEL.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct ModifyChannel {
    /// @0
    pub header: MessageHeader,
    /// @8
    pub child_relid: U32,
    /// @12
    pub target_vp: U32,
}
layout!(ModifyChannel, 16);

/// `struct vmbus_channel_modifychannel_response` (16 bytes),
/// CHANNELMSG_MODIFYCHANNEL_RESPONSE.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct ModifyChannelResponse {
    /// @0
    pub header: MessageHeader,
    /// @8
    pub child_relid: U32,
    /// @12 0 = success.
    pub status: U32,
}
layout!(ModifyChannelResponse, 16);

// ---------------------------------------------------------------------------
// Ring packets.
// ---------------------------------------------------------------------------

/// `struct vmpacket_descriptor` (16 bytes): starts every ring packet.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct PacketDescriptor {
    /// @0 `enum vmbus_packet_type`.
    pub type_: U16,
    /// @2 header length / 8 (descriptor included): the payload's offset.
    pub offset8: U16,
    /// @4 packet length / 8, padding included, trailer excluded.
    pub len8: U16,
    /// @6 bit 0: completion requested.
    pub flags: U16,
    /// @8
    pub trans_id: U64,
}
layout!(PacketDescriptor, 16);

/// `struct vmtransfer_page_range` (8 bytes): one range of a transfer-pages
/// packet.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct TransferPageRange {
    /// @0
    pub byte_count: U32,
    /// @4 offset into the transfer page set.
    pub byte_offset: U32,
}
layout!(TransferPageRange, 8);

/// `struct vmtransfer_page_packet_header` up to its `ranges[]` (24 bytes):
/// the header of a VM_PKT_DATA_USING_XFER_PAGES packet, descriptor
/// included. `range_cnt` [`TransferPageRange`]s follow. (Linux 6.1 spells
/// the array `ranges[1]`, so its `sizeof` is 32; the ranges start at 24
/// either way.)
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct TransferPageHeader {
    /// @0
    pub d: PacketDescriptor,
    /// @16
    pub xfer_pageset_id: U16,
    /// @18 non-zero: the sender keeps ownership of the set.
    pub sender_owns_set: u8,
    /// @19
    pub reserved: u8,
    /// @20
    pub range_cnt: U32,
}
layout!(TransferPageHeader, 24);

/// `struct gpa_range` up to its `u64 pfn_array[]` (8 bytes): one range of a
/// GPA-direct packet or a GPADL, followed by
/// `ceil((byte_offset + byte_count) / 4096)` little-endian PFNs.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct GpaRange {
    /// @0
    pub byte_count: U32,
    /// @4 offset into the first page.
    pub byte_offset: U32,
}
layout!(GpaRange, 8);

impl GpaRange {
    /// A range head.
    pub fn new(byte_count: u32, byte_offset: u32) -> Self {
        Self {
            byte_count: byte_count.into(),
            byte_offset: byte_offset.into(),
        }
    }

    /// The range head as one word of a GPADL's u64 word stream
    /// (`byte_count | byte_offset << 32`).
    pub fn to_word(self) -> u64 {
        let word: U64 = zerocopy::transmute!(self);
        word.get()
    }

    /// The range head held in a word of a GPADL's u64 word stream.
    pub fn from_word(word: u64) -> Self {
        zerocopy::transmute!(U64::new(word))
    }
}

/// `struct vmdata_gpa_direct` up to its `range[1]` (24 bytes): the header of
/// a VM_PKT_DATA_USING_GPA_DIRECT packet, descriptor included. `range_cnt`
/// [`GpaRange`]s with their PFNs follow. (Linux's `sizeof` is 32 because of
/// the one-element array; the ranges start at 24.)
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct GpaDirectHeader {
    /// @0
    pub d: PacketDescriptor,
    /// @16
    pub reserved: U32,
    /// @20
    pub range_cnt: U32,
}
layout!(GpaDirectHeader, 24);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};
    use zerocopy::FromZeros;

    /// Linux's offsets, field by field (the sizes are checked at compile
    /// time above).
    #[test]
    fn offsets_match_linux() {
        assert_eq!(offset_of!(ChannelOffer, chn_flags), 48);
        assert_eq!(offset_of!(ChannelOffer, user_def), 52);
        assert_eq!(offset_of!(ChannelOffer, sub_channel_index), 172);
        assert_eq!(offset_of!(OfferChannel, offer), 8);
        assert_eq!(offset_of!(OfferChannel, child_relid), 184);
        assert_eq!(offset_of!(OfferChannel, monitorid), 188);
        assert_eq!(offset_of!(OfferChannel, monitor_allocated), 189);
        assert_eq!(offset_of!(OfferChannel, is_dedicated_interrupt), 190);
        assert_eq!(offset_of!(OfferChannel, connection_id), 192);
        assert_eq!(
            offset_of!(OpenChannel, downstream_ringbuffer_pageoffset),
            24
        );
        assert_eq!(offset_of!(OpenChannel, userdata), 28);
        assert_eq!(offset_of!(GpadlHeader, range_buflen), 16);
        assert_eq!(offset_of!(GpadlHeader, rangecount), 18);
        assert_eq!(offset_of!(InitiateContact, interrupt_page), 16);
        assert_eq!(offset_of!(InitiateContact, monitor_page2), 32);
        assert_eq!(offset_of!(VersionResponse, connection_state), 9);
        assert_eq!(offset_of!(VersionResponse, msg_conn_id), 12);
        assert_eq!(offset_of!(PacketDescriptor, trans_id), 8);
        assert_eq!(offset_of!(TransferPageHeader, sender_owns_set), 18);
        assert_eq!(offset_of!(TransferPageHeader, range_cnt), 20);
        assert_eq!(offset_of!(GpaDirectHeader, range_cnt), 20);
        // The message header is the first 8 bytes of every message.
        assert_eq!(size_of::<MessageHeader>(), 8);
    }

    /// Every struct reads back what it wrote, from bytes at any alignment.
    #[test]
    fn round_trips_unaligned() {
        fn check<T>(v: T)
        where
            T: FromBytes + IntoBytes + Immutable + PartialEq + core::fmt::Debug,
        {
            let mut buf = [0u8; 256];
            for misalign in 0..8 {
                let dst = &mut buf[misalign..];
                v.write_to_prefix(dst).unwrap();
                let (back, rest) = T::read_from_prefix(&buf[misalign..]).unwrap();
                assert_eq!(back, v);
                assert_eq!(rest.len(), 256 - misalign - size_of::<T>());
            }
            // One byte short never reads.
            assert!(T::read_from_prefix(&v.as_bytes()[..size_of::<T>() - 1]).is_err());
        }
        let mut offer = OfferChannel::new_zeroed();
        offer.header = MessageHeader::new(1);
        offer.offer.if_type = [7; 16];
        offer.offer.user_def[119] = 0x66;
        offer.child_relid = 0x0102_0304.into();
        offer.monitorid = 0xFF;
        offer.connection_id = 0x2007.into();
        check(offer);
        let mut open = OpenChannel::new_zeroed();
        open.openid = 9.into();
        open.userdata[0] = 1;
        check(open);
        check(MessageHeader::new(16));
        check(RescindOffer {
            header: MessageHeader::new(2),
            child_relid: 3.into(),
        });
        check(OpenResult {
            header: MessageHeader::new(6),
            child_relid: 1.into(),
            openid: 2.into(),
            status: 3.into(),
        });
        check(CloseChannel {
            header: MessageHeader::new(7),
            child_relid: 1.into(),
        });
        check(GpadlHeader {
            header: MessageHeader::new(8),
            child_relid: 1.into(),
            gpadl: 0xE1E10.into(),
            range_buflen: 24.into(),
            rangecount: 1.into(),
        });
        check(GpadlBody {
            header: MessageHeader::new(9),
            msgnumber: 0.into(),
            gpadl: 0xE1E10.into(),
        });
        check(GpadlCreated {
            header: MessageHeader::new(10),
            child_relid: 1.into(),
            gpadl: 2.into(),
            creation_status: 0xC000_0001.into(),
        });
        check(GpadlTeardown {
            header: MessageHeader::new(11),
            child_relid: 1.into(),
            gpadl: 2.into(),
        });
        check(GpadlTorndown {
            header: MessageHeader::new(12),
            gpadl: 2.into(),
        });
        check(RelidReleased {
            header: MessageHeader::new(13),
            child_relid: 4.into(),
        });
        check(InitiateContact {
            header: MessageHeader::new(14),
            vmbus_version_requested: 0x0005_0003.into(),
            target_vcpu: 1.into(),
            interrupt_page: 2.into(),
            monitor_page1: 0x1000.into(),
            monitor_page2: u64::MAX.into(),
        });
        check(VersionResponse {
            header: MessageHeader::new(15),
            version_supported: 1,
            connection_state: 2,
            padding: 0.into(),
            msg_conn_id: 1.into(),
        });
        check(ModifyChannel {
            header: MessageHeader::new(22),
            child_relid: 1.into(),
            target_vp: 3.into(),
        });
        check(ModifyChannelResponse {
            header: MessageHeader::new(24),
            child_relid: 1.into(),
            status: 0.into(),
        });
        let d = PacketDescriptor {
            type_: 7.into(),
            offset8: 4.into(),
            len8: 9.into(),
            flags: 1.into(),
            trans_id: 0x1122_3344_5566_7788.into(),
        };
        check(d);
        check(TransferPageHeader {
            d,
            xfer_pageset_id: 0xCAFE.into(),
            sender_owns_set: 1,
            reserved: 0,
            range_cnt: 2.into(),
        });
        check(TransferPageRange {
            byte_count: 100.into(),
            byte_offset: 4096.into(),
        });
        check(GpaRange::new(8192, 100));
        check(GpaDirectHeader {
            d,
            reserved: 0.into(),
            range_cnt: 1.into(),
        });
    }

    /// Little-endian on the wire, whatever the host.
    #[test]
    fn byte_images() {
        let d = PacketDescriptor {
            type_: 0x0B.into(),
            offset8: 2.into(),
            len8: 0x0103.into(),
            flags: 1.into(),
            trans_id: 0x0807_0605_0403_0201.into(),
        };
        assert_eq!(
            d.as_bytes(),
            &[0x0B, 0, 2, 0, 3, 1, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(
            MessageHeader::new(0x0102_0304).as_bytes(),
            &[4, 3, 2, 1, 0, 0, 0, 0]
        );
    }

    #[test]
    fn gpa_range_word() {
        let r = GpaRange::new(0x1234, 0x0FFF);
        assert_eq!(r.to_word(), 0x0000_0FFF_0000_1234);
        assert_eq!(
            r.to_word().to_le_bytes(),
            *<&[u8; 8]>::try_from(r.as_bytes()).unwrap()
        );
        assert_eq!(GpaRange::from_word(r.to_word()), r);
        assert_eq!(GpaRange::from_word(u64::MAX).byte_offset.get(), u32::MAX);
    }
}
