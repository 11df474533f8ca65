//! VMBus channel-management messages: the payloads posted through SynIC
//! (HvPostMessage guest->host, SIM slot host->guest), at most 240 bytes,
//! packed little-endian, each starting with `u32 msgtype; u32 padding`.
//!
//! The layouts are the [`wire`] structs (Linux's `vmbus_channel_*`);
//! [`ChannelMessage`] is the checked, host-order view of them.
//! [`ChannelMessage::parse`] checks the size of every message against its
//! wire struct and copies the struct out before reading a field;
//! [`ChannelMessage::encode`] always produces the full-size struct (Linux
//! drops short messages).

use core::mem::size_of;

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::guid::Guid;
use crate::wire;

/// Largest SynIC message payload.
pub const MAX_MESSAGE_SIZE: usize = 240;
/// Size of the common header ([`wire::MessageHeader`]).
pub const HEADER_SIZE: usize = size_of::<wire::MessageHeader>();
/// User-defined bytes in an offer and in an open request.
pub const USER_DEFINED_SIZE: usize = wire::MAX_USER_DEFINED_BYTES;

/// Message type numbers (`enum vmbus_channel_message_type`).
pub mod msgtype {
    /// Host offers a channel.
    pub const OFFER_CHANNEL: u32 = 1;
    /// Host withdraws an offer.
    pub const RESCIND_CHANNEL_OFFER: u32 = 2;
    /// Guest asks for all offers.
    pub const REQUEST_OFFERS: u32 = 3;
    /// Host: all current offers were sent.
    pub const ALL_OFFERS_DELIVERED: u32 = 4;
    /// Guest opens a channel.
    pub const OPEN_CHANNEL: u32 = 5;
    /// Host answers an open.
    pub const OPEN_CHANNEL_RESULT: u32 = 6;
    /// Guest closes a channel (no reply).
    pub const CLOSE_CHANNEL: u32 = 7;
    /// Guest starts a GPADL.
    pub const GPADL_HEADER: u32 = 8;
    /// Guest continues a GPADL's page list.
    pub const GPADL_BODY: u32 = 9;
    /// Host: GPADL created (or failed).
    pub const GPADL_CREATED: u32 = 10;
    /// Guest tears a GPADL down.
    pub const GPADL_TEARDOWN: u32 = 11;
    /// Host: GPADL gone.
    pub const GPADL_TORNDOWN: u32 = 12;
    /// Guest: a rescinded relid may be reused.
    pub const RELID_RELEASED: u32 = 13;
    /// Guest proposes a protocol version.
    pub const INITIATE_CONTACT: u32 = 14;
    /// Host answers a version proposal.
    pub const VERSION_RESPONSE: u32 = 15;
    /// Guest disconnects.
    pub const UNLOAD: u32 = 16;
    /// Host confirms the disconnect.
    pub const UNLOAD_RESPONSE: u32 = 17;
    /// hv_sock connect request (not supported here).
    pub const TL_CONNECT_REQUEST: u32 = 21;
    /// Guest retargets a channel's interrupt (4.1+).
    pub const MODIFY_CHANNEL: u32 = 22;
    /// hv_sock connect result (not supported here).
    pub const TL_CONNECT_RESULT: u32 = 23;
    /// Host answers MODIFY_CHANNEL (5.3+).
    pub const MODIFY_CHANNEL_RESPONSE: u32 = 24;
}

/// Makes a protocol version number.
pub const fn make_version(major: u16, minor: u16) -> u32 {
    ((major as u32) << 16) | minor as u32
}

/// Windows 8 (2.4): the oldest version Linux 6.1 still proposes.
pub const VERSION_WIN8: u32 = make_version(2, 4);
/// Windows 8.1 / Server 2012 R2 (3.0).
pub const VERSION_WIN8_1: u32 = make_version(3, 0);
/// Windows 10 (4.0).
pub const VERSION_WIN10: u32 = make_version(4, 0);
/// Windows 10 RS3 (4.1): adds MODIFY_CHANNEL.
pub const VERSION_WIN10_V4_1: u32 = make_version(4, 1);
/// 5.0: INITIATE_CONTACT on connection id 4, `msg_sint`, `msg_conn_id`.
pub const VERSION_WIN10_V5: u32 = make_version(5, 0);
/// 5.1.
pub const VERSION_WIN10_V5_1: u32 = make_version(5, 1);
/// 5.2 (Server 2019).
pub const VERSION_WIN10_V5_2: u32 = make_version(5, 2);
/// 5.3 (Server 2022): adds MODIFY_CHANNEL_RESPONSE.
pub const VERSION_WIN10_V5_3: u32 = make_version(5, 3);

/// The versions this crate speaks, newest first: what Linux 6.1 proposes from
/// 5.3 down to 3.0 (WIN8_1). Both sides' defaults negotiate from this list.
pub const SUPPORTED_VERSIONS: [u32; 7] = [
    VERSION_WIN10_V5_3,
    VERSION_WIN10_V5_2,
    VERSION_WIN10_V5_1,
    VERSION_WIN10_V5,
    VERSION_WIN10_V4_1,
    VERSION_WIN10,
    VERSION_WIN8_1,
];

/// Connection id for messages (all versions after negotiation; INITIATE_CONTACT below 5.0).
pub const MESSAGE_CONNECTION_ID: u32 = 1;
/// Connection id for INITIATE_CONTACT from 5.0 on.
pub const MESSAGE_CONNECTION_ID_4: u32 = 4;
/// The SINT VMBus messages and channel events arrive on.
pub const VMBUS_MESSAGE_SINT: u8 = 2;
/// HV_MESSAGE type the host uses for VMBus messages.
pub const HV_MESSAGE_TYPE_VMBUS: u32 = 1;

/// Offer flag: enumerate the device interface.
pub const OFFER_FLAG_ENUMERATE_DEVICE_INTERFACE: u16 = 0x1;
/// Offer flag: the channel uses GPADLs.
pub const OFFER_FLAG_SUPPORTS_GPADLS: u16 = 0x4;
/// Offer flag: named-pipe mode (hv_sock).
pub const OFFER_FLAG_NAMED_PIPE_MODE: u16 = 0x10;

/// A channel message that could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageError {
    /// Over 240 bytes.
    TooLong(usize),
    /// Shorter than the message type's struct.
    TooShort {
        /// The message type.
        msgtype: u32,
        /// Bytes given.
        len: usize,
        /// Bytes required.
        min: usize,
    },
    /// A GPADL header/body whose page list is not whole u64 words.
    BadGpadlLength(usize),
    /// A message type known but not supported (reserved, hv_sock).
    Unsupported(u32),
    /// Not a message type.
    UnknownType(u32),
}

/// Up to 28 little-endian u64 words carried in a GPADL message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GpadlWords {
    words: [u64; GPADL_BODY_MAX_WORDS],
    len: u8,
}

/// Words that fit in a GPADL header message after its 20 fixed bytes (27).
pub const GPADL_HEADER_MAX_WORDS: usize = (MAX_MESSAGE_SIZE - size_of::<wire::GpadlHeader>()) / 8;
/// Words that fit in a GPADL body message after its 16 fixed bytes (28).
pub const GPADL_BODY_MAX_WORDS: usize = (MAX_MESSAGE_SIZE - size_of::<wire::GpadlBody>()) / 8;

impl GpadlWords {
    /// Copies up to 28 words; `None` if there are more.
    pub fn new(words: &[u64]) -> Option<Self> {
        if words.len() > GPADL_BODY_MAX_WORDS {
            return None;
        }
        let mut w = [0; GPADL_BODY_MAX_WORDS];
        w[..words.len()].copy_from_slice(words);
        Some(Self {
            words: w,
            len: words.len() as u8,
        })
    }

    /// The words.
    pub fn as_slice(&self) -> &[u64] {
        &self.words[..usize::from(self.len)]
    }
}

/// OFFERCHANNEL (196 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OfferChannel {
    /// Device class (interface type).
    pub interface_type: Guid,
    /// Device instance.
    pub interface_instance: Guid,
    /// `OFFER_FLAG_*`.
    pub flags: u16,
    /// MMIO space the device wants, in MiB.
    pub mmio_megabytes: u16,
    /// Device-specific bytes (pipe offers: u32 pipe mode first).
    pub user_defined: [u8; USER_DEFINED_SIZE],
    /// 0 for a primary channel, else the sub-channel number.
    pub sub_channel_index: u16,
    /// Optional MMIO space in MiB (reserved3 in Linux).
    pub mmio_megabytes_optional: u16,
    /// Channel id.
    pub child_relid: u32,
    /// Monitor id (0xFF when unused).
    pub monitor_id: u8,
    /// The channel uses monitor pages (bit 0).
    pub monitor_allocated: bool,
    /// The channel has its own event flag (bit 0).
    pub is_dedicated_interrupt: bool,
    /// Connection id the guest signals with HvSignalEvent.
    pub connection_id: u32,
}

/// OPENCHANNEL (148 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OpenChannel {
    /// Channel id.
    pub child_relid: u32,
    /// Guest's cookie, echoed in the result.
    pub open_id: u32,
    /// GPADL holding both rings.
    pub ring_gpadl: u32,
    /// VP the host signals for this channel.
    pub target_vp: u32,
    /// Page index (within the GPADL) where the host->guest ring starts.
    pub downstream_page_offset: u32,
    /// Device-specific bytes.
    pub user_data: [u8; USER_DEFINED_SIZE],
}

/// INITIATE_CONTACT (40 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct InitiateContact {
    /// Proposed version.
    pub version: u32,
    /// VP that receives host messages.
    pub target_vcpu: u32,
    /// Below 5.0: the interrupt page GPA. From 5.0: byte 0 = `msg_sint`,
    /// byte 1 = VTL, the rest reserved.
    pub interrupt_page_or_sint: u64,
    /// Parent-to-child monitor page GPA.
    pub monitor_page1: u64,
    /// Child-to-parent monitor page GPA.
    pub monitor_page2: u64,
}

impl InitiateContact {
    /// The SINT for host messages (meaningful from 5.0).
    pub fn msg_sint(&self) -> u8 {
        self.interrupt_page_or_sint as u8
    }
}

/// VERSION_RESPONSE (16 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VersionResponse {
    /// The proposed version is accepted.
    pub version_supported: bool,
    /// 0 ok, 1 low resources, 2 failure.
    pub connection_state: u8,
    /// Connection id for later messages (used from 5.0).
    pub msg_conn_id: u32,
}

/// GPADL_HEADER (20 bytes + page-list words).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GpadlHeader {
    /// Channel the GPADL belongs to.
    pub child_relid: u32,
    /// GPADL id chosen by the guest.
    pub gpadl: u32,
    /// Total bytes of the range list across header and bodies.
    pub range_buflen: u16,
    /// Number of ranges.
    pub range_count: u16,
    /// The first words of the range list (at most 27).
    pub data: GpadlWords,
}

/// GPADL_BODY (16 bytes + words).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GpadlBody {
    /// Sequence number (Linux leaves it 0; not relied on).
    pub msg_number: u32,
    /// GPADL id.
    pub gpadl: u32,
    /// More words of the range list (at most 28).
    pub data: GpadlWords,
}

/// A parsed channel message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChannelMessage {
    /// 1.
    OfferChannel(OfferChannel),
    /// 2.
    RescindChannelOffer {
        /// Channel id.
        child_relid: u32,
    },
    /// 3.
    RequestOffers,
    /// 4.
    AllOffersDelivered,
    /// 5.
    OpenChannel(OpenChannel),
    /// 6.
    OpenChannelResult {
        /// Channel id.
        child_relid: u32,
        /// Echo of the open's `open_id`.
        open_id: u32,
        /// 0 = success.
        status: u32,
    },
    /// 7.
    CloseChannel {
        /// Channel id.
        child_relid: u32,
    },
    /// 8.
    GpadlHeader(GpadlHeader),
    /// 9.
    GpadlBody(GpadlBody),
    /// 10.
    GpadlCreated {
        /// Channel id.
        child_relid: u32,
        /// GPADL id.
        gpadl: u32,
        /// 0 = success.
        status: u32,
    },
    /// 11.
    GpadlTeardown {
        /// Channel id.
        child_relid: u32,
        /// GPADL id.
        gpadl: u32,
    },
    /// 12.
    GpadlTorndown {
        /// GPADL id.
        gpadl: u32,
    },
    /// 13.
    RelidReleased {
        /// Channel id.
        child_relid: u32,
    },
    /// 14.
    InitiateContact(InitiateContact),
    /// 15.
    VersionResponse(VersionResponse),
    /// 16.
    Unload,
    /// 17.
    UnloadResponse,
    /// 22.
    ModifyChannel {
        /// Channel id.
        child_relid: u32,
        /// New target VP.
        target_vp: u32,
    },
    /// 24.
    ModifyChannelResponse {
        /// Channel id.
        child_relid: u32,
        /// 0 = success.
        status: u32,
    },
}

/// An encoded message: up to 240 bytes, no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MessageBuf {
    bytes: [u8; MAX_MESSAGE_SIZE],
    len: usize,
}

impl MessageBuf {
    /// The byte image of a wire struct.
    fn from_wire<T: IntoBytes + Immutable>(msg: &T) -> Self {
        const { assert!(size_of::<T>() <= MAX_MESSAGE_SIZE) };
        let b = msg.as_bytes();
        let mut m = Self {
            bytes: [0; MAX_MESSAGE_SIZE],
            len: b.len(),
        };
        m.bytes[..b.len()].copy_from_slice(b);
        m
    }

    /// Appends little-endian words, as many as fit in 240 bytes.
    fn push_words(&mut self, words: &[u64]) {
        let room = (MAX_MESSAGE_SIZE - self.len) / 8;
        for w in &words[..words.len().min(room)] {
            self.bytes[self.len..self.len + 8].copy_from_slice(U64::new(*w).as_bytes());
            self.len += 8;
        }
    }

    /// The encoded bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl core::fmt::Debug for MessageBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// Copies a wire struct out of the front of a message. Every message's
/// minimum size is checked first, so the error is a guard, never a panic.
fn read<T: FromBytes>(bytes: &[u8], msgtype: u32) -> Result<T, MessageError> {
    T::read_from_prefix(bytes)
        .map(|(msg, _)| msg)
        .map_err(|_| MessageError::TooShort {
            msgtype,
            len: bytes.len(),
            min: size_of::<T>(),
        })
}

/// Copies the page-list words that follow a GPADL message's fixed part:
/// whole words only, at most `max`.
fn read_words(bytes: &[u8], fixed: usize, max: usize) -> Result<GpadlWords, MessageError> {
    let rest = bytes.get(fixed..).unwrap_or(&[]);
    let words = <[U64]>::ref_from_bytes(rest)
        .ok()
        .filter(|w| w.len() <= max)
        .ok_or(MessageError::BadGpadlLength(bytes.len()))?;
    let mut w = [0u64; GPADL_BODY_MAX_WORDS];
    for (d, s) in w.iter_mut().zip(words) {
        *d = s.get();
    }
    Ok(GpadlWords {
        words: w,
        len: words.len() as u8,
    })
}

impl From<&wire::OfferChannel> for OfferChannel {
    fn from(w: &wire::OfferChannel) -> Self {
        Self {
            interface_type: Guid::from_bytes(w.offer.if_type),
            interface_instance: Guid::from_bytes(w.offer.if_instance),
            flags: w.offer.chn_flags.get(),
            mmio_megabytes: w.offer.mmio_megabytes.get(),
            user_defined: w.offer.user_def,
            sub_channel_index: w.offer.sub_channel_index.get(),
            mmio_megabytes_optional: w.offer.reserved3.get(),
            child_relid: w.child_relid.get(),
            monitor_id: w.monitorid,
            monitor_allocated: w.monitor_allocated & 1 != 0,
            is_dedicated_interrupt: w.is_dedicated_interrupt.get() & 1 != 0,
            connection_id: w.connection_id.get(),
        }
    }
}

impl From<&OfferChannel> for wire::OfferChannel {
    fn from(o: &OfferChannel) -> Self {
        Self {
            header: wire::MessageHeader::new(msgtype::OFFER_CHANNEL),
            offer: wire::ChannelOffer {
                if_type: o.interface_type.to_bytes(),
                if_instance: o.interface_instance.to_bytes(),
                reserved1: 0.into(),
                reserved2: 0.into(),
                chn_flags: o.flags.into(),
                mmio_megabytes: o.mmio_megabytes.into(),
                user_def: o.user_defined,
                sub_channel_index: o.sub_channel_index.into(),
                reserved3: o.mmio_megabytes_optional.into(),
            },
            child_relid: o.child_relid.into(),
            monitorid: o.monitor_id,
            monitor_allocated: u8::from(o.monitor_allocated),
            is_dedicated_interrupt: u16::from(o.is_dedicated_interrupt).into(),
            connection_id: o.connection_id.into(),
        }
    }
}

impl From<&wire::OpenChannel> for OpenChannel {
    fn from(w: &wire::OpenChannel) -> Self {
        Self {
            child_relid: w.child_relid.get(),
            open_id: w.openid.get(),
            ring_gpadl: w.ringbuffer_gpadlhandle.get(),
            target_vp: w.target_vp.get(),
            downstream_page_offset: w.downstream_ringbuffer_pageoffset.get(),
            user_data: w.userdata,
        }
    }
}

impl From<&OpenChannel> for wire::OpenChannel {
    fn from(o: &OpenChannel) -> Self {
        Self {
            header: wire::MessageHeader::new(msgtype::OPEN_CHANNEL),
            child_relid: o.child_relid.into(),
            openid: o.open_id.into(),
            ringbuffer_gpadlhandle: o.ring_gpadl.into(),
            target_vp: o.target_vp.into(),
            downstream_ringbuffer_pageoffset: o.downstream_page_offset.into(),
            userdata: o.user_data,
        }
    }
}

impl From<&wire::InitiateContact> for InitiateContact {
    fn from(w: &wire::InitiateContact) -> Self {
        Self {
            version: w.vmbus_version_requested.get(),
            target_vcpu: w.target_vcpu.get(),
            interrupt_page_or_sint: w.interrupt_page.get(),
            monitor_page1: w.monitor_page1.get(),
            monitor_page2: w.monitor_page2.get(),
        }
    }
}

impl From<&InitiateContact> for wire::InitiateContact {
    fn from(c: &InitiateContact) -> Self {
        Self {
            header: wire::MessageHeader::new(msgtype::INITIATE_CONTACT),
            vmbus_version_requested: c.version.into(),
            target_vcpu: c.target_vcpu.into(),
            interrupt_page: c.interrupt_page_or_sint.into(),
            monitor_page1: c.monitor_page1.into(),
            monitor_page2: c.monitor_page2.into(),
        }
    }
}

impl From<&wire::VersionResponse> for VersionResponse {
    fn from(w: &wire::VersionResponse) -> Self {
        Self {
            version_supported: w.version_supported != 0,
            connection_state: w.connection_state,
            msg_conn_id: w.msg_conn_id.get(),
        }
    }
}

impl From<&VersionResponse> for wire::VersionResponse {
    fn from(v: &VersionResponse) -> Self {
        Self {
            header: wire::MessageHeader::new(msgtype::VERSION_RESPONSE),
            version_supported: u8::from(v.version_supported),
            connection_state: v.connection_state,
            padding: 0.into(),
            msg_conn_id: v.msg_conn_id.into(),
        }
    }
}

impl ChannelMessage {
    /// The message type number.
    pub fn msgtype(&self) -> u32 {
        use msgtype::*;
        match self {
            ChannelMessage::OfferChannel(_) => OFFER_CHANNEL,
            ChannelMessage::RescindChannelOffer { .. } => RESCIND_CHANNEL_OFFER,
            ChannelMessage::RequestOffers => REQUEST_OFFERS,
            ChannelMessage::AllOffersDelivered => ALL_OFFERS_DELIVERED,
            ChannelMessage::OpenChannel(_) => OPEN_CHANNEL,
            ChannelMessage::OpenChannelResult { .. } => OPEN_CHANNEL_RESULT,
            ChannelMessage::CloseChannel { .. } => CLOSE_CHANNEL,
            ChannelMessage::GpadlHeader(_) => GPADL_HEADER,
            ChannelMessage::GpadlBody(_) => GPADL_BODY,
            ChannelMessage::GpadlCreated { .. } => GPADL_CREATED,
            ChannelMessage::GpadlTeardown { .. } => GPADL_TEARDOWN,
            ChannelMessage::GpadlTorndown { .. } => GPADL_TORNDOWN,
            ChannelMessage::RelidReleased { .. } => RELID_RELEASED,
            ChannelMessage::InitiateContact(_) => INITIATE_CONTACT,
            ChannelMessage::VersionResponse(_) => VERSION_RESPONSE,
            ChannelMessage::Unload => UNLOAD,
            ChannelMessage::UnloadResponse => UNLOAD_RESPONSE,
            ChannelMessage::ModifyChannel { .. } => MODIFY_CHANNEL,
            ChannelMessage::ModifyChannelResponse { .. } => MODIFY_CHANNEL_RESPONSE,
        }
    }

    /// Size of a message type's wire struct (GPADL messages: without words),
    /// or `None` for types this crate does not handle.
    pub fn wire_size(msgtype: u32) -> Option<usize> {
        use msgtype::*;
        Some(match msgtype {
            OFFER_CHANNEL => size_of::<wire::OfferChannel>(),
            RESCIND_CHANNEL_OFFER => size_of::<wire::RescindOffer>(),
            REQUEST_OFFERS | ALL_OFFERS_DELIVERED | UNLOAD | UNLOAD_RESPONSE => {
                size_of::<wire::MessageHeader>()
            }
            OPEN_CHANNEL => size_of::<wire::OpenChannel>(),
            OPEN_CHANNEL_RESULT => size_of::<wire::OpenResult>(),
            CLOSE_CHANNEL => size_of::<wire::CloseChannel>(),
            GPADL_HEADER => size_of::<wire::GpadlHeader>(),
            GPADL_BODY => size_of::<wire::GpadlBody>(),
            GPADL_CREATED => size_of::<wire::GpadlCreated>(),
            GPADL_TEARDOWN => size_of::<wire::GpadlTeardown>(),
            GPADL_TORNDOWN => size_of::<wire::GpadlTorndown>(),
            RELID_RELEASED => size_of::<wire::RelidReleased>(),
            INITIATE_CONTACT => size_of::<wire::InitiateContact>(),
            VERSION_RESPONSE => size_of::<wire::VersionResponse>(),
            MODIFY_CHANNEL => size_of::<wire::ModifyChannel>(),
            MODIFY_CHANNEL_RESPONSE => size_of::<wire::ModifyChannelResponse>(),
            _ => return None,
        })
    }

    /// Parses a message payload. Bytes past the struct are ignored (newer
    /// protocol versions append fields), except in GPADL messages where the
    /// length gives the number of page-list words.
    ///
    /// Each message is copied out of `bytes` into its [`wire`] struct before
    /// any field is looked at.
    pub fn parse(bytes: &[u8]) -> Result<Self, MessageError> {
        use msgtype::*;
        if bytes.len() > MAX_MESSAGE_SIZE {
            return Err(MessageError::TooLong(bytes.len()));
        }
        // The type alone first (the header's first field), so that a message
        // cut inside its header still reports its type.
        let msgtype = read::<U32>(bytes, 0)
            .map_err(|_| MessageError::TooShort {
                msgtype: 0,
                len: bytes.len(),
                min: HEADER_SIZE,
            })?
            .get();
        let Some(min) = Self::wire_size(msgtype) else {
            return Err(match msgtype {
                18..=21 | TL_CONNECT_RESULT => MessageError::Unsupported(msgtype),
                _ => MessageError::UnknownType(msgtype),
            });
        };
        if bytes.len() < min {
            return Err(MessageError::TooShort {
                msgtype,
                len: bytes.len(),
                min,
            });
        }
        Ok(match msgtype {
            OFFER_CHANNEL => {
                ChannelMessage::OfferChannel((&read::<wire::OfferChannel>(bytes, msgtype)?).into())
            }
            RESCIND_CHANNEL_OFFER => {
                let m: wire::RescindOffer = read(bytes, msgtype)?;
                ChannelMessage::RescindChannelOffer {
                    child_relid: m.child_relid.get(),
                }
            }
            REQUEST_OFFERS => ChannelMessage::RequestOffers,
            ALL_OFFERS_DELIVERED => ChannelMessage::AllOffersDelivered,
            OPEN_CHANNEL => {
                ChannelMessage::OpenChannel((&read::<wire::OpenChannel>(bytes, msgtype)?).into())
            }
            OPEN_CHANNEL_RESULT => {
                let m: wire::OpenResult = read(bytes, msgtype)?;
                ChannelMessage::OpenChannelResult {
                    child_relid: m.child_relid.get(),
                    open_id: m.openid.get(),
                    status: m.status.get(),
                }
            }
            CLOSE_CHANNEL => {
                let m: wire::CloseChannel = read(bytes, msgtype)?;
                ChannelMessage::CloseChannel {
                    child_relid: m.child_relid.get(),
                }
            }
            GPADL_HEADER => {
                let m: wire::GpadlHeader = read(bytes, msgtype)?;
                ChannelMessage::GpadlHeader(GpadlHeader {
                    child_relid: m.child_relid.get(),
                    gpadl: m.gpadl.get(),
                    range_buflen: m.range_buflen.get(),
                    range_count: m.rangecount.get(),
                    data: read_words(bytes, min, GPADL_HEADER_MAX_WORDS)?,
                })
            }
            GPADL_BODY => {
                let m: wire::GpadlBody = read(bytes, msgtype)?;
                ChannelMessage::GpadlBody(GpadlBody {
                    msg_number: m.msgnumber.get(),
                    gpadl: m.gpadl.get(),
                    data: read_words(bytes, min, GPADL_BODY_MAX_WORDS)?,
                })
            }
            GPADL_CREATED => {
                let m: wire::GpadlCreated = read(bytes, msgtype)?;
                ChannelMessage::GpadlCreated {
                    child_relid: m.child_relid.get(),
                    gpadl: m.gpadl.get(),
                    status: m.creation_status.get(),
                }
            }
            GPADL_TEARDOWN => {
                let m: wire::GpadlTeardown = read(bytes, msgtype)?;
                ChannelMessage::GpadlTeardown {
                    child_relid: m.child_relid.get(),
                    gpadl: m.gpadl.get(),
                }
            }
            GPADL_TORNDOWN => {
                let m: wire::GpadlTorndown = read(bytes, msgtype)?;
                ChannelMessage::GpadlTorndown {
                    gpadl: m.gpadl.get(),
                }
            }
            RELID_RELEASED => {
                let m: wire::RelidReleased = read(bytes, msgtype)?;
                ChannelMessage::RelidReleased {
                    child_relid: m.child_relid.get(),
                }
            }
            INITIATE_CONTACT => ChannelMessage::InitiateContact(
                (&read::<wire::InitiateContact>(bytes, msgtype)?).into(),
            ),
            VERSION_RESPONSE => ChannelMessage::VersionResponse(
                (&read::<wire::VersionResponse>(bytes, msgtype)?).into(),
            ),
            UNLOAD => ChannelMessage::Unload,
            UNLOAD_RESPONSE => ChannelMessage::UnloadResponse,
            MODIFY_CHANNEL => {
                let m: wire::ModifyChannel = read(bytes, msgtype)?;
                ChannelMessage::ModifyChannel {
                    child_relid: m.child_relid.get(),
                    target_vp: m.target_vp.get(),
                }
            }
            MODIFY_CHANNEL_RESPONSE => {
                let m: wire::ModifyChannelResponse = read(bytes, msgtype)?;
                ChannelMessage::ModifyChannelResponse {
                    child_relid: m.child_relid.get(),
                    status: m.status.get(),
                }
            }
            other => return Err(MessageError::UnknownType(other)),
        })
    }

    /// Encodes the full-size wire struct.
    pub fn encode(&self) -> MessageBuf {
        let header = wire::MessageHeader::new(self.msgtype());
        match self {
            ChannelMessage::OfferChannel(o) => MessageBuf::from_wire(&wire::OfferChannel::from(o)),
            ChannelMessage::RescindChannelOffer { child_relid } => {
                MessageBuf::from_wire(&wire::RescindOffer {
                    header,
                    child_relid: (*child_relid).into(),
                })
            }
            ChannelMessage::CloseChannel { child_relid } => {
                MessageBuf::from_wire(&wire::CloseChannel {
                    header,
                    child_relid: (*child_relid).into(),
                })
            }
            ChannelMessage::RelidReleased { child_relid } => {
                MessageBuf::from_wire(&wire::RelidReleased {
                    header,
                    child_relid: (*child_relid).into(),
                })
            }
            ChannelMessage::RequestOffers
            | ChannelMessage::AllOffersDelivered
            | ChannelMessage::Unload
            | ChannelMessage::UnloadResponse => MessageBuf::from_wire(&header),
            ChannelMessage::OpenChannel(o) => MessageBuf::from_wire(&wire::OpenChannel::from(o)),
            ChannelMessage::OpenChannelResult {
                child_relid,
                open_id,
                status,
            } => MessageBuf::from_wire(&wire::OpenResult {
                header,
                child_relid: (*child_relid).into(),
                openid: (*open_id).into(),
                status: (*status).into(),
            }),
            ChannelMessage::GpadlHeader(h) => {
                let mut m = MessageBuf::from_wire(&wire::GpadlHeader {
                    header,
                    child_relid: h.child_relid.into(),
                    gpadl: h.gpadl.into(),
                    range_buflen: h.range_buflen.into(),
                    rangecount: h.range_count.into(),
                });
                // At most 27 words fit: GpadlWords holds 28, the rest is cut.
                m.push_words(h.data.as_slice());
                m
            }
            ChannelMessage::GpadlBody(b) => {
                let mut m = MessageBuf::from_wire(&wire::GpadlBody {
                    header,
                    msgnumber: b.msg_number.into(),
                    gpadl: b.gpadl.into(),
                });
                m.push_words(b.data.as_slice());
                m
            }
            ChannelMessage::GpadlCreated {
                child_relid,
                gpadl,
                status,
            } => MessageBuf::from_wire(&wire::GpadlCreated {
                header,
                child_relid: (*child_relid).into(),
                gpadl: (*gpadl).into(),
                creation_status: (*status).into(),
            }),
            ChannelMessage::GpadlTeardown { child_relid, gpadl } => {
                MessageBuf::from_wire(&wire::GpadlTeardown {
                    header,
                    child_relid: (*child_relid).into(),
                    gpadl: (*gpadl).into(),
                })
            }
            ChannelMessage::GpadlTorndown { gpadl } => {
                MessageBuf::from_wire(&wire::GpadlTorndown {
                    header,
                    gpadl: (*gpadl).into(),
                })
            }
            ChannelMessage::InitiateContact(c) => {
                MessageBuf::from_wire(&wire::InitiateContact::from(c))
            }
            ChannelMessage::VersionResponse(v) => {
                MessageBuf::from_wire(&wire::VersionResponse::from(v))
            }
            ChannelMessage::ModifyChannel {
                child_relid,
                target_vp,
            } => MessageBuf::from_wire(&wire::ModifyChannel {
                header,
                child_relid: (*child_relid).into(),
                target_vp: (*target_vp).into(),
            }),
            ChannelMessage::ModifyChannelResponse {
                child_relid,
                status,
            } => MessageBuf::from_wire(&wire::ModifyChannelResponse {
                header,
                child_relid: (*child_relid).into(),
                status: (*status).into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guid::class;

    #[test]
    fn offer_layout_matches_linux() {
        let mut user_defined = [0u8; USER_DEFINED_SIZE];
        user_defined[0] = 0x55;
        user_defined[119] = 0x66;
        let offer = ChannelMessage::OfferChannel(OfferChannel {
            interface_type: class::SCSI,
            interface_instance: Guid::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            flags: OFFER_FLAG_SUPPORTS_GPADLS,
            mmio_megabytes: 0,
            user_defined,
            sub_channel_index: 0,
            mmio_megabytes_optional: 0,
            child_relid: 7,
            monitor_id: 0xFF,
            monitor_allocated: false,
            is_dedicated_interrupt: true,
            connection_id: 0x2007,
        });
        let m = offer.encode();
        let b = m.as_slice();
        assert_eq!(b.len(), 196);
        assert_eq!(&b[0..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[8..12], &[0xd9, 0x63, 0x61, 0xba]);
        assert_eq!(&b[24..28], &[0x04, 0x03, 0x02, 0x01]);
        assert_eq!(&b[40..56], &[0; 16]);
        assert_eq!(&b[56..58], &[4, 0]);
        assert_eq!(b[60], 0x55);
        assert_eq!(b[179], 0x66);
        assert_eq!(&b[184..188], &[7, 0, 0, 0]);
        assert_eq!(b[188], 0xFF);
        assert_eq!(b[189], 0);
        assert_eq!(&b[190..192], &[1, 0]);
        assert_eq!(&b[192..196], &[7, 0x20, 0, 0]);
        assert_eq!(ChannelMessage::parse(b), Ok(offer));
    }

    #[test]
    fn sizes_of_every_message() {
        let words = GpadlWords::new(&[1, 2, 3]).unwrap();
        let cases: [(ChannelMessage, usize); 19] = [
            (ChannelMessage::RescindChannelOffer { child_relid: 1 }, 12),
            (ChannelMessage::RequestOffers, 8),
            (ChannelMessage::AllOffersDelivered, 8),
            (
                ChannelMessage::OpenChannel(OpenChannel {
                    child_relid: 1,
                    open_id: 2,
                    ring_gpadl: 3,
                    target_vp: 4,
                    downstream_page_offset: 5,
                    user_data: [9; USER_DEFINED_SIZE],
                }),
                148,
            ),
            (
                ChannelMessage::OpenChannelResult {
                    child_relid: 1,
                    open_id: 2,
                    status: 0,
                },
                20,
            ),
            (ChannelMessage::CloseChannel { child_relid: 1 }, 12),
            (
                ChannelMessage::GpadlHeader(GpadlHeader {
                    child_relid: 1,
                    gpadl: 0xE1E10,
                    range_buflen: 24,
                    range_count: 1,
                    data: words,
                }),
                44,
            ),
            (
                ChannelMessage::GpadlBody(GpadlBody {
                    msg_number: 0,
                    gpadl: 0xE1E10,
                    data: words,
                }),
                40,
            ),
            (
                ChannelMessage::GpadlCreated {
                    child_relid: 1,
                    gpadl: 2,
                    status: 0,
                },
                20,
            ),
            (
                ChannelMessage::GpadlTeardown {
                    child_relid: 1,
                    gpadl: 2,
                },
                16,
            ),
            (ChannelMessage::GpadlTorndown { gpadl: 2 }, 12),
            (ChannelMessage::RelidReleased { child_relid: 1 }, 12),
            (
                ChannelMessage::InitiateContact(InitiateContact {
                    version: VERSION_WIN10_V5_3,
                    target_vcpu: 0,
                    interrupt_page_or_sint: 2,
                    monitor_page1: 0x1000,
                    monitor_page2: 0x2000,
                }),
                40,
            ),
            (
                ChannelMessage::VersionResponse(VersionResponse {
                    version_supported: true,
                    connection_state: 0,
                    msg_conn_id: 1,
                }),
                16,
            ),
            (ChannelMessage::Unload, 8),
            (ChannelMessage::UnloadResponse, 8),
            (
                ChannelMessage::ModifyChannel {
                    child_relid: 1,
                    target_vp: 3,
                },
                16,
            ),
            (
                ChannelMessage::ModifyChannelResponse {
                    child_relid: 1,
                    status: 0,
                },
                16,
            ),
            (ChannelMessage::GpadlTorndown { gpadl: 9 }, 12),
        ];
        for (msg, size) in cases {
            let enc = msg.encode();
            assert_eq!(enc.as_slice().len(), size, "{msg:?}");
            assert_eq!(ChannelMessage::parse(enc.as_slice()), Ok(msg));
            // One byte short of the struct is rejected.
            let min = ChannelMessage::wire_size(msg.msgtype()).unwrap();
            assert!(ChannelMessage::parse(&enc.as_slice()[..min - 1]).is_err());
        }
    }

    #[test]
    fn field_offsets() {
        let m = ChannelMessage::VersionResponse(VersionResponse {
            version_supported: true,
            connection_state: 2,
            msg_conn_id: 0x0403_0201,
        })
        .encode();
        assert_eq!(
            m.as_slice(),
            &[15, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 1, 2, 3, 4]
        );
        let m = ChannelMessage::InitiateContact(InitiateContact {
            version: VERSION_WIN10_V5_3,
            target_vcpu: 1,
            interrupt_page_or_sint: 2,
            monitor_page1: 3,
            monitor_page2: 4,
        })
        .encode();
        let b = m.as_slice();
        assert_eq!(&b[8..12], &[3, 0, 5, 0]);
        assert_eq!(b[16], 2);
        assert_eq!(b[24], 3);
        assert_eq!(b[32], 4);
    }

    #[test]
    fn rejects() {
        assert_eq!(
            ChannelMessage::parse(&[0; 241]),
            Err(MessageError::TooLong(241))
        );
        assert!(matches!(
            ChannelMessage::parse(&[1, 0, 0]),
            Err(MessageError::TooShort { .. })
        ));
        assert_eq!(
            ChannelMessage::parse(&[99, 0, 0, 0, 0, 0, 0, 0]),
            Err(MessageError::UnknownType(99))
        );
        assert_eq!(
            ChannelMessage::parse(&[21, 0, 0, 0, 0, 0, 0, 0]),
            Err(MessageError::Unsupported(21))
        );
        let mut body = [0u8; 20];
        body[0] = 9;
        assert_eq!(
            ChannelMessage::parse(&body),
            Err(MessageError::BadGpadlLength(20))
        );
        let mut header = [0u8; 240];
        header[0] = 8;
        // 220 bytes of words = 27.5 words: rejected.
        assert_eq!(
            ChannelMessage::parse(&header),
            Err(MessageError::BadGpadlLength(240))
        );
        assert!(ChannelMessage::parse(&header[..236]).is_ok());
    }

    /// The struct sizes, as `sizeof` in Linux's `hyperv.h` (with the 8-byte
    /// header; GPADL messages without their trailing arrays).
    #[test]
    fn wire_sizes_are_linux_sizes() {
        use msgtype::*;
        let linux = [
            (OFFER_CHANNEL, 196),
            (RESCIND_CHANNEL_OFFER, 12),
            (REQUEST_OFFERS, 8),
            (ALL_OFFERS_DELIVERED, 8),
            (OPEN_CHANNEL, 148),
            (OPEN_CHANNEL_RESULT, 20),
            (CLOSE_CHANNEL, 12),
            (GPADL_HEADER, 20),
            (GPADL_BODY, 16),
            (GPADL_CREATED, 20),
            (GPADL_TEARDOWN, 16),
            (GPADL_TORNDOWN, 12),
            (RELID_RELEASED, 12),
            (INITIATE_CONTACT, 40),
            (VERSION_RESPONSE, 16),
            (UNLOAD, 8),
            (UNLOAD_RESPONSE, 8),
            (MODIFY_CHANNEL, 16),
            (MODIFY_CHANNEL_RESPONSE, 16),
        ];
        for (t, size) in linux {
            assert_eq!(ChannelMessage::wire_size(t), Some(size), "type {t}");
        }
        for t in [0, 18, 19, 20, TL_CONNECT_REQUEST, TL_CONNECT_RESULT, 25] {
            assert_eq!(ChannelMessage::wire_size(t), None);
        }
        assert_eq!(HEADER_SIZE, 8);
        assert_eq!(GPADL_HEADER_MAX_WORDS, 27);
        assert_eq!(GPADL_BODY_MAX_WORDS, 28);
    }

    /// `parse` reads the wire struct and `encode` writes it: a message built
    /// field by field as a `wire` struct parses to the same values, and the
    /// encoding reads back as the same wire struct.
    #[test]
    fn wire_structs_round_trip() {
        let mut w = <wire::OfferChannel as zerocopy::FromZeros>::new_zeroed();
        w.header = wire::MessageHeader::new(msgtype::OFFER_CHANNEL);
        w.offer.if_type = class::SCSI.to_bytes();
        w.offer.if_instance = [0xAB; 16];
        w.offer.chn_flags = OFFER_FLAG_SUPPORTS_GPADLS.into();
        w.offer.mmio_megabytes = 0x1234.into();
        w.offer.user_def = [0x5A; USER_DEFINED_SIZE];
        w.offer.sub_channel_index = 3.into();
        w.offer.reserved3 = 0x77.into();
        w.child_relid = 0x0102_0304.into();
        w.monitorid = 0x21;
        w.monitor_allocated = 1;
        w.is_dedicated_interrupt = 1.into();
        w.connection_id = 0x2021.into();
        let m = ChannelMessage::parse(w.as_bytes()).unwrap();
        let ChannelMessage::OfferChannel(o) = m else {
            panic!("{m:?}")
        };
        assert_eq!(o.interface_type, class::SCSI);
        assert_eq!(o.interface_instance.to_bytes(), [0xAB; 16]);
        assert_eq!(o.mmio_megabytes, 0x1234);
        assert_eq!(o.sub_channel_index, 3);
        assert_eq!(o.mmio_megabytes_optional, 0x77);
        assert_eq!(o.child_relid, 0x0102_0304);
        assert_eq!(o.monitor_id, 0x21);
        assert!(o.monitor_allocated && o.is_dedicated_interrupt);
        assert_eq!(o.connection_id, 0x2021);
        assert_eq!(m.encode().as_slice(), w.as_bytes());

        let c = wire::InitiateContact {
            header: wire::MessageHeader::new(msgtype::INITIATE_CONTACT),
            vmbus_version_requested: VERSION_WIN10_V5_3.into(),
            target_vcpu: 5.into(),
            interrupt_page: 0x0102.into(), // msg_sint 2, msg_vtl 1
            monitor_page1: 0x1000.into(),
            monitor_page2: 0x2000.into(),
        };
        let m = ChannelMessage::parse(c.as_bytes()).unwrap();
        let ChannelMessage::InitiateContact(ic) = m else {
            panic!("{m:?}")
        };
        assert_eq!(ic.msg_sint(), 2);
        assert_eq!(ic.version, VERSION_WIN10_V5_3);
        assert_eq!(m.encode().as_slice(), c.as_bytes());

        // GPADL header: the fixed struct, then the words, unaligned at 20.
        let h = ChannelMessage::GpadlHeader(GpadlHeader {
            child_relid: 1,
            gpadl: 0xE1E10,
            range_buflen: 24,
            range_count: 1,
            data: GpadlWords::new(&[4096 * 2, 7, 8]).unwrap(),
        });
        let enc = h.encode();
        let (fixed, words) = wire::GpadlHeader::read_from_prefix(enc.as_slice()).unwrap();
        assert_eq!(fixed.gpadl.get(), 0xE1E10);
        assert_eq!(fixed.rangecount.get(), 1);
        let words = <[U64]>::ref_from_bytes(words).unwrap();
        assert_eq!(
            words.iter().map(|w| w.get()).collect::<std::vec::Vec<_>>(),
            [8192, 7, 8]
        );
        assert_eq!(
            wire::GpaRange::from_word(words[0].get()),
            wire::GpaRange::new(8192, 0)
        );
    }

    /// A 28-word GPADL_HEADER is cut to the 27 words that fit, as before.
    #[test]
    fn gpadl_header_words_are_clamped() {
        let words: [u64; 28] = core::array::from_fn(|i| i as u64);
        let h = ChannelMessage::GpadlHeader(GpadlHeader {
            child_relid: 1,
            gpadl: 2,
            range_buflen: 28 * 8,
            range_count: 1,
            data: GpadlWords::new(&words).unwrap(),
        });
        let enc = h.encode();
        assert_eq!(enc.as_slice().len(), MAX_MESSAGE_SIZE - 4);
        let ChannelMessage::GpadlHeader(back) = ChannelMessage::parse(enc.as_slice()).unwrap()
        else {
            panic!()
        };
        assert_eq!(back.data.as_slice(), &words[..27]);
    }

    proptest::proptest! {
        /// Whatever bytes follow a valid type, `parse` never panics, and what
        /// it accepts re-encodes to a message that parses to the same value,
        /// with the full wire size (GPADL: header plus the words).
        #[test]
        fn parse_encode_parse(
            t in proptest::sample::select(&[1u32, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 22, 24][..]),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..=240),
        ) {
            let mut bytes = t.to_le_bytes().to_vec();
            bytes.extend_from_slice(&body);
            bytes.truncate(MAX_MESSAGE_SIZE);
            if let Ok(m) = ChannelMessage::parse(&bytes) {
                let enc = m.encode();
                proptest::prop_assert_eq!(ChannelMessage::parse(enc.as_slice()), Ok(m));
                let size = ChannelMessage::wire_size(t).unwrap();
                match m {
                    ChannelMessage::GpadlHeader(GpadlHeader { data, .. })
                    | ChannelMessage::GpadlBody(GpadlBody { data, .. }) => {
                        proptest::prop_assert_eq!(enc.as_slice().len(), size + 8 * data.as_slice().len());
                        // Everything but the header's padding comes back.
                        proptest::prop_assert_eq!(&enc.as_slice()[HEADER_SIZE..], &bytes[HEADER_SIZE..]);
                    }
                    _ => proptest::prop_assert_eq!(enc.as_slice().len(), size),
                }
                // The type-independent prefix is the header.
                proptest::prop_assert_eq!(&enc.as_slice()[..4], &t.to_le_bytes());
            } else {
                proptest::prop_assert!(bytes.len() < ChannelMessage::wire_size(t).unwrap()
                    || matches!(t, msgtype::GPADL_HEADER | msgtype::GPADL_BODY));
            }
        }
    }
}
