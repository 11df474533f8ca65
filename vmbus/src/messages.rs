//! VMBus channel-management messages: the payloads posted through SynIC
//! (HvPostMessage guest->host, SIM slot host->guest), at most 240 bytes,
//! packed little-endian, each starting with `u32 msgtype; u32 padding`.
//!
//! [`ChannelMessage::parse`] checks the size of every message against its
//! wire struct and never reads outside the given bytes; [`ChannelMessage::encode`]
//! always produces the full-size struct (Linux drops short messages).

use crate::guid::Guid;

/// Largest SynIC message payload.
pub const MAX_MESSAGE_SIZE: usize = 240;
/// Size of the common header.
pub const HEADER_SIZE: usize = 8;
/// User-defined bytes in an offer and in an open request.
pub const USER_DEFINED_SIZE: usize = 120;

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

/// Words that fit in a GPADL header message after its 20 fixed bytes.
pub const GPADL_HEADER_MAX_WORDS: usize = (MAX_MESSAGE_SIZE - 20) / 8;
/// Words that fit in a GPADL body message after its 16 fixed bytes.
pub const GPADL_BODY_MAX_WORDS: usize = (MAX_MESSAGE_SIZE - 16) / 8;

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
    fn new(msgtype: u32, len: usize) -> Self {
        let mut m = Self {
            bytes: [0; MAX_MESSAGE_SIZE],
            len,
        };
        m.u32(0, msgtype);
        m
    }
    fn u8(&mut self, off: usize, v: u8) {
        self.bytes[off] = v;
    }
    fn u16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, off: usize, v: u64) {
        self.bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn put(&mut self, off: usize, v: &[u8]) {
        self.bytes[off..off + v.len()].copy_from_slice(v);
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

/// Bounds-checked little-endian field reads; every message's minimum size
/// is checked first, so an error here would be a bug, never a panic.
struct Fields<'a> {
    b: &'a [u8],
    msgtype: u32,
}

impl<'a> Fields<'a> {
    fn arr<const N: usize>(&self, off: usize) -> Result<[u8; N], MessageError> {
        self.b
            .get(off..)
            .and_then(|s| s.first_chunk::<N>())
            .copied()
            .ok_or(MessageError::TooShort {
                msgtype: self.msgtype,
                len: self.b.len(),
                min: off + N,
            })
    }
    fn u8(&self, off: usize) -> Result<u8, MessageError> {
        Ok(self.arr::<1>(off)?[0])
    }
    fn u16(&self, off: usize) -> Result<u16, MessageError> {
        Ok(u16::from_le_bytes(self.arr(off)?))
    }
    fn u32(&self, off: usize) -> Result<u32, MessageError> {
        Ok(u32::from_le_bytes(self.arr(off)?))
    }
    fn u64(&self, off: usize) -> Result<u64, MessageError> {
        Ok(u64::from_le_bytes(self.arr(off)?))
    }
    fn guid(&self, off: usize) -> Result<Guid, MessageError> {
        Ok(Guid::from_bytes(self.arr(off)?))
    }
    fn words(&self, off: usize, max: usize) -> Result<GpadlWords, MessageError> {
        let rest = self.b.get(off..).unwrap_or(&[]);
        let (words, tail) = rest.as_chunks::<8>();
        if !tail.is_empty() || words.len() > max {
            return Err(MessageError::BadGpadlLength(self.b.len()));
        }
        let mut w = [0u64; GPADL_BODY_MAX_WORDS];
        for (d, s) in w.iter_mut().zip(words) {
            *d = u64::from_le_bytes(*s);
        }
        Ok(GpadlWords {
            words: w,
            len: words.len() as u8,
        })
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
            OFFER_CHANNEL => 196,
            RESCIND_CHANNEL_OFFER | CLOSE_CHANNEL | GPADL_TORNDOWN | RELID_RELEASED => 12,
            REQUEST_OFFERS | ALL_OFFERS_DELIVERED | UNLOAD | UNLOAD_RESPONSE => 8,
            OPEN_CHANNEL => 148,
            OPEN_CHANNEL_RESULT | GPADL_CREATED | GPADL_HEADER => 20,
            GPADL_BODY
            | GPADL_TEARDOWN
            | VERSION_RESPONSE
            | MODIFY_CHANNEL
            | MODIFY_CHANNEL_RESPONSE => 16,
            INITIATE_CONTACT => 40,
            _ => return None,
        })
    }

    /// Parses a message payload. Bytes past the struct are ignored (newer
    /// protocol versions append fields), except in GPADL messages where the
    /// length gives the number of page-list words.
    pub fn parse(bytes: &[u8]) -> Result<Self, MessageError> {
        use msgtype::*;
        if bytes.len() > MAX_MESSAGE_SIZE {
            return Err(MessageError::TooLong(bytes.len()));
        }
        let head = Fields {
            b: bytes,
            msgtype: 0,
        };
        let msgtype = head.u32(0).map_err(|_| MessageError::TooShort {
            msgtype: 0,
            len: bytes.len(),
            min: HEADER_SIZE,
        })?;
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
        let f = Fields { b: bytes, msgtype };
        Ok(match msgtype {
            OFFER_CHANNEL => ChannelMessage::OfferChannel(OfferChannel {
                interface_type: f.guid(8)?,
                interface_instance: f.guid(24)?,
                flags: f.u16(56)?,
                mmio_megabytes: f.u16(58)?,
                user_defined: f.arr(60)?,
                sub_channel_index: f.u16(180)?,
                mmio_megabytes_optional: f.u16(182)?,
                child_relid: f.u32(184)?,
                monitor_id: f.u8(188)?,
                monitor_allocated: f.u8(189)? & 1 != 0,
                is_dedicated_interrupt: f.u16(190)? & 1 != 0,
                connection_id: f.u32(192)?,
            }),
            RESCIND_CHANNEL_OFFER => ChannelMessage::RescindChannelOffer {
                child_relid: f.u32(8)?,
            },
            REQUEST_OFFERS => ChannelMessage::RequestOffers,
            ALL_OFFERS_DELIVERED => ChannelMessage::AllOffersDelivered,
            OPEN_CHANNEL => ChannelMessage::OpenChannel(OpenChannel {
                child_relid: f.u32(8)?,
                open_id: f.u32(12)?,
                ring_gpadl: f.u32(16)?,
                target_vp: f.u32(20)?,
                downstream_page_offset: f.u32(24)?,
                user_data: f.arr(28)?,
            }),
            OPEN_CHANNEL_RESULT => ChannelMessage::OpenChannelResult {
                child_relid: f.u32(8)?,
                open_id: f.u32(12)?,
                status: f.u32(16)?,
            },
            CLOSE_CHANNEL => ChannelMessage::CloseChannel {
                child_relid: f.u32(8)?,
            },
            GPADL_HEADER => ChannelMessage::GpadlHeader(GpadlHeader {
                child_relid: f.u32(8)?,
                gpadl: f.u32(12)?,
                range_buflen: f.u16(16)?,
                range_count: f.u16(18)?,
                data: f.words(20, GPADL_HEADER_MAX_WORDS)?,
            }),
            GPADL_BODY => ChannelMessage::GpadlBody(GpadlBody {
                msg_number: f.u32(8)?,
                gpadl: f.u32(12)?,
                data: f.words(16, GPADL_BODY_MAX_WORDS)?,
            }),
            GPADL_CREATED => ChannelMessage::GpadlCreated {
                child_relid: f.u32(8)?,
                gpadl: f.u32(12)?,
                status: f.u32(16)?,
            },
            GPADL_TEARDOWN => ChannelMessage::GpadlTeardown {
                child_relid: f.u32(8)?,
                gpadl: f.u32(12)?,
            },
            GPADL_TORNDOWN => ChannelMessage::GpadlTorndown { gpadl: f.u32(8)? },
            RELID_RELEASED => ChannelMessage::RelidReleased {
                child_relid: f.u32(8)?,
            },
            INITIATE_CONTACT => ChannelMessage::InitiateContact(InitiateContact {
                version: f.u32(8)?,
                target_vcpu: f.u32(12)?,
                interrupt_page_or_sint: f.u64(16)?,
                monitor_page1: f.u64(24)?,
                monitor_page2: f.u64(32)?,
            }),
            VERSION_RESPONSE => ChannelMessage::VersionResponse(VersionResponse {
                version_supported: f.u8(8)? != 0,
                connection_state: f.u8(9)?,
                msg_conn_id: f.u32(12)?,
            }),
            UNLOAD => ChannelMessage::Unload,
            UNLOAD_RESPONSE => ChannelMessage::UnloadResponse,
            MODIFY_CHANNEL => ChannelMessage::ModifyChannel {
                child_relid: f.u32(8)?,
                target_vp: f.u32(12)?,
            },
            MODIFY_CHANNEL_RESPONSE => ChannelMessage::ModifyChannelResponse {
                child_relid: f.u32(8)?,
                status: f.u32(12)?,
            },
            other => return Err(MessageError::UnknownType(other)),
        })
    }

    /// Encodes the full-size wire struct.
    pub fn encode(&self) -> MessageBuf {
        let t = self.msgtype();
        let size = Self::wire_size(t).unwrap_or(HEADER_SIZE);
        let mut m = MessageBuf::new(t, size);
        match self {
            ChannelMessage::OfferChannel(o) => {
                m.put(8, &o.interface_type.to_bytes());
                m.put(24, &o.interface_instance.to_bytes());
                m.u16(56, o.flags);
                m.u16(58, o.mmio_megabytes);
                m.put(60, &o.user_defined);
                m.u16(180, o.sub_channel_index);
                m.u16(182, o.mmio_megabytes_optional);
                m.u32(184, o.child_relid);
                m.u8(188, o.monitor_id);
                m.u8(189, u8::from(o.monitor_allocated));
                m.u16(190, u16::from(o.is_dedicated_interrupt));
                m.u32(192, o.connection_id);
            }
            ChannelMessage::RescindChannelOffer { child_relid }
            | ChannelMessage::CloseChannel { child_relid }
            | ChannelMessage::RelidReleased { child_relid } => m.u32(8, *child_relid),
            ChannelMessage::RequestOffers
            | ChannelMessage::AllOffersDelivered
            | ChannelMessage::Unload
            | ChannelMessage::UnloadResponse => {}
            ChannelMessage::OpenChannel(o) => {
                m.u32(8, o.child_relid);
                m.u32(12, o.open_id);
                m.u32(16, o.ring_gpadl);
                m.u32(20, o.target_vp);
                m.u32(24, o.downstream_page_offset);
                m.put(28, &o.user_data);
            }
            ChannelMessage::OpenChannelResult {
                child_relid,
                open_id,
                status,
            } => {
                m.u32(8, *child_relid);
                m.u32(12, *open_id);
                m.u32(16, *status);
            }
            ChannelMessage::GpadlHeader(h) => {
                m.u32(8, h.child_relid);
                m.u32(12, h.gpadl);
                m.u16(16, h.range_buflen);
                m.u16(18, h.range_count);
                // At most 27 words: GpadlWords holds 28, so clamp.
                let words =
                    &h.data.as_slice()[..h.data.as_slice().len().min(GPADL_HEADER_MAX_WORDS)];
                for (i, w) in words.iter().enumerate() {
                    m.u64(20 + 8 * i, *w);
                }
                m.len = 20 + 8 * words.len();
            }
            ChannelMessage::GpadlBody(b) => {
                m.u32(8, b.msg_number);
                m.u32(12, b.gpadl);
                for (i, w) in b.data.as_slice().iter().enumerate() {
                    m.u64(16 + 8 * i, *w);
                }
                m.len = 16 + 8 * b.data.as_slice().len();
            }
            ChannelMessage::GpadlCreated {
                child_relid,
                gpadl,
                status,
            } => {
                m.u32(8, *child_relid);
                m.u32(12, *gpadl);
                m.u32(16, *status);
            }
            ChannelMessage::GpadlTeardown { child_relid, gpadl } => {
                m.u32(8, *child_relid);
                m.u32(12, *gpadl);
            }
            ChannelMessage::GpadlTorndown { gpadl } => m.u32(8, *gpadl),
            ChannelMessage::InitiateContact(c) => {
                m.u32(8, c.version);
                m.u32(12, c.target_vcpu);
                m.u64(16, c.interrupt_page_or_sint);
                m.u64(24, c.monitor_page1);
                m.u64(32, c.monitor_page2);
            }
            ChannelMessage::VersionResponse(v) => {
                m.u8(8, u8::from(v.version_supported));
                m.u8(9, v.connection_state);
                m.u32(12, v.msg_conn_id);
            }
            ChannelMessage::ModifyChannel {
                child_relid,
                target_vp,
            } => {
                m.u32(8, *child_relid);
                m.u32(12, *target_vp);
            }
            ChannelMessage::ModifyChannelResponse {
                child_relid,
                status,
            } => {
                m.u32(8, *child_relid);
                m.u32(12, *status);
            }
        }
        m
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
}
