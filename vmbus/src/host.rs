//! The host (server, VSP) side of VMBus channel management.
//!
//! [`Host`] answers INITIATE_CONTACT, sends offers, assembles GPADLs, opens
//! and closes channels, rescinds offers and handles UNLOAD. It is driven by
//! [`Host::handle_message`] for every message the guest posts and by the
//! device layer's calls ([`Host::add_offer`], [`Host::rescind`]); it talks
//! back only through the [`HostPort`] trait, so the same code runs in host
//! tests and in the root partition.
//!
//! The guest is not trusted: every message is parsed and checked against
//! the state; a bad one returns a [`HostError`] (after posting the failure
//! reply the protocol has, if any) and leaves the state unchanged.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::channel::{Channel, Notify};
use crate::gpadl::{Gpadl, GpadlBuilder, GpadlError};
use crate::guid::Guid;
use crate::messages::*;
use crate::ring::{RingError, RingReader, RingWriter};
use crate::shared_mem::RingMemory;

/// NTSTATUS STATUS_UNSUCCESSFUL, the failure status in replies.
pub const STATUS_UNSUCCESSFUL: u32 = 0xC000_0001;

/// The event type of a port's state machine.
pub type HostEventOf<P> = HostEvent<<P as HostPort>::Ring, <P as HostPort>::Notifier>;

type Handled<P> = Result<Option<HostEventOf<P>>, HostError>;

/// What the host needs from its environment.
pub trait HostPort {
    /// Ring memory made from guest pages.
    type Ring: RingMemory;
    /// Signals a channel's event to the guest.
    type Notifier: Notify;
    /// Posts a VMBus message to SIM slot `sint` of `target_vp` (queued with
    /// MessagePending flow control if the slot is busy).
    fn post_message(&mut self, target_vp: u32, sint: u8, message: &[u8]);
    /// Maps guest pages as a ring: `pfns[0]` is the header page, the rest
    /// the data area in order. `None` if a page is not guest RAM.
    fn map_ring(&mut self, pfns: &[u64]) -> Option<Self::Ring>;
    /// A notifier that sets event flag `relid` of SINT `sint` on `target_vp`
    /// and raises the SINT.
    fn notifier(&mut self, target_vp: u32, sint: u8, relid: u32) -> Self::Notifier;
    /// Whether page `pfn` is the guest's own RAM: a GPADL naming any other
    /// page is refused when it is created, before anything uses it.
    fn is_guest_page(&self, pfn: u64) -> bool;
}

/// Host configuration.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Versions accepted in INITIATE_CONTACT.
    pub versions: Vec<u32>,
    /// Highest relid handed out (relids start at 1).
    pub max_relid: u32,
    /// GPADLs (complete or being assembled) a guest may hold at once.
    pub max_gpadls: usize,
    /// Words (range heads and page numbers, 8 bytes each in the host's
    /// memory) all of a guest's GPADLs may hold together: what bounds the
    /// memory a guest makes the host keep for its GPADLs.
    pub max_gpadl_words: usize,
    /// Added to the relid to form the offer's connection id.
    pub connection_id_base: u32,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            versions: SUPPORTED_VERSIONS.to_vec(),
            max_relid: 255,
            max_gpadls: 1024,
            // 64 Ki words (512 KiB of page lists, 256 MiB of guest pages
            // described): a Linux guest with a disk and a few network
            // adapters uses about 5000 words per adapter.
            max_gpadl_words: 64 << 10,
            // Like Hyper-V/OpenVMM for VTL0: relid | SINT 2 << 12.
            connection_id_base: 0x2000,
        }
    }
}

/// What the device layer supplies to offer a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferParams {
    /// Device class.
    pub interface_type: Guid,
    /// Device instance.
    pub interface_instance: Guid,
    /// `OFFER_FLAG_*`.
    pub flags: u16,
    /// MMIO space in MiB.
    pub mmio_megabytes: u16,
    /// Device-specific offer bytes.
    pub user_defined: [u8; USER_DEFINED_SIZE],
    /// 0 for a primary channel.
    pub sub_channel_index: u16,
}

impl OfferParams {
    /// A primary channel with no flags or user data.
    pub fn new(interface_type: Guid, interface_instance: Guid) -> Self {
        Self {
            interface_type,
            interface_instance,
            flags: 0,
            mmio_megabytes: 0,
            user_defined: [0; USER_DEFINED_SIZE],
            sub_channel_index: 0,
        }
    }
}

/// Something the device layer must act on.
pub enum HostEvent<R: RingMemory, N: Notify> {
    /// The guest connected with this version.
    Connected {
        /// Negotiated version.
        version: u32,
    },
    /// A GPADL is ready (see [`Host::gpadl`]).
    GpadlCreated {
        /// Channel.
        relid: u32,
        /// GPADL id.
        gpadl: u32,
    },
    /// A GPADL was torn down.
    GpadlTornDown {
        /// Channel.
        relid: u32,
        /// GPADL id.
        gpadl: u32,
    },
    /// The guest opened a channel: here are its rings.
    ChannelOpened {
        /// Channel.
        relid: u32,
        /// The open channel (host reads guest->host, writes host->guest).
        channel: Channel<R, N>,
        /// The guest's OPENCHANNEL user data.
        user_data: [u8; USER_DEFINED_SIZE],
    },
    /// The guest closed a channel: drop its [`Channel`].
    ChannelClosed {
        /// Channel.
        relid: u32,
    },
    /// The guest moved a channel's interrupt: install the new notifier.
    ChannelModified {
        /// Channel.
        relid: u32,
        /// New target VP.
        target_vp: u32,
        /// Notifier for the new VP.
        notifier: N,
    },
    /// A rescinded relid is free again.
    RelidReleased {
        /// Channel.
        relid: u32,
    },
    /// The guest unloaded: every listed channel was closed, all GPADLs are
    /// gone and the bus is disconnected.
    Unloaded {
        /// Channels that were open.
        closed: Vec<u32>,
    },
}

impl<R: RingMemory, N: Notify> core::fmt::Debug for HostEvent<R, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HostEvent::Connected { version } => write!(f, "Connected({version:#x})"),
            HostEvent::GpadlCreated { relid, gpadl } => {
                write!(f, "GpadlCreated({relid}, {gpadl:#x})")
            }
            HostEvent::GpadlTornDown { relid, gpadl } => {
                write!(f, "GpadlTornDown({relid}, {gpadl:#x})")
            }
            HostEvent::ChannelOpened { relid, .. } => write!(f, "ChannelOpened({relid})"),
            HostEvent::ChannelClosed { relid } => write!(f, "ChannelClosed({relid})"),
            HostEvent::ChannelModified {
                relid, target_vp, ..
            } => {
                write!(f, "ChannelModified({relid}, vp {target_vp})")
            }
            HostEvent::RelidReleased { relid } => write!(f, "RelidReleased({relid})"),
            HostEvent::Unloaded { closed } => write!(f, "Unloaded({closed:?})"),
        }
    }
}

/// A guest message the host refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// Unparsable message.
    Message(MessageError),
    /// Posted to a connection id other than 1 or 4.
    UnknownConnectionId(u32),
    /// A message only the host sends, or one not valid in this state.
    Unexpected(u32),
    /// Not connected yet (or after UNLOAD).
    NotConnected,
    /// INITIATE_CONTACT while connected.
    AlreadyConnected,
    /// INITIATE_CONTACT with a version not accepted (rejection was posted).
    VersionRejected(u32),
    /// No such relid, or not in a state for this message.
    BadChannel(u32),
    /// GPADL id unknown, duplicate, of another channel, or busy.
    BadGpadl(u32),
    /// GPADL assembly failed (GPADL_CREATED failure was posted).
    Gpadl(GpadlError),
    /// Too many GPADLs.
    TooManyGpadls,
    /// A GPADL names a page that is not the guest's RAM (failure posted).
    OutsideGuest(u32),
    /// OPENCHANNEL with an unusable ring layout (failure result posted).
    BadRingLayout,
    /// A ring's indices were invalid at open (failure result posted).
    Ring(RingError),
    /// MODIFYCHANNEL before protocol 4.1.
    NotSupported(u32),
    /// No relid left for a new offer.
    NoFreeRelid,
}

impl From<MessageError> for HostError {
    fn from(e: MessageError) -> Self {
        HostError::Message(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelState {
    /// Offered (or not yet sent); closed.
    Closed,
    /// Open with this ring GPADL.
    Open { ring_gpadl: u32 },
    /// Rescind sent; waiting for RELID_RELEASED.
    Rescinded,
}

struct HostChannel {
    offer: OfferChannel,
    state: ChannelState,
}

enum GpadlState {
    Building(GpadlBuilder),
    Ready(Gpadl),
}

#[derive(Debug, Clone, Copy)]
struct Connection {
    version: u32,
    target_vp: u32,
    sint: u8,
    offers_sent: bool,
}

/// The host state machine.
pub struct Host<P: HostPort> {
    port: P,
    config: HostConfig,
    connection: Option<Connection>,
    channels: BTreeMap<u32, HostChannel>,
    gpadls: BTreeMap<u32, GpadlState>,
}

impl<P: HostPort> Host<P> {
    /// A disconnected host with no offers.
    pub fn new(port: P, config: HostConfig) -> Self {
        Self {
            port,
            config,
            connection: None,
            channels: BTreeMap::new(),
            gpadls: BTreeMap::new(),
        }
    }

    /// The port.
    pub fn port(&mut self) -> &mut P {
        &mut self.port
    }

    /// The environment, to read (e.g. its counters).
    pub fn port_ref(&self) -> &P {
        &self.port
    }

    /// Negotiated version, if connected.
    pub fn version(&self) -> Option<u32> {
        self.connection.map(|c| c.version)
    }

    /// A ready GPADL (e.g. netvsc's receive buffer).
    pub fn gpadl(&self, id: u32) -> Option<&Gpadl> {
        match self.gpadls.get(&id) {
            Some(GpadlState::Ready(g)) => Some(g),
            _ => None,
        }
    }

    /// The offer of a channel.
    pub fn offer(&self, relid: u32) -> Option<&OfferChannel> {
        self.channels.get(&relid).map(|c| &c.offer)
    }

    /// True if the channel is open.
    pub fn is_open(&self, relid: u32) -> bool {
        matches!(
            self.channels.get(&relid),
            Some(HostChannel {
                state: ChannelState::Open { .. },
                ..
            })
        )
    }

    /// Maps an HvSignalEvent connection id back to its channel.
    pub fn relid_for_connection_id(&self, connection_id: u32) -> Option<u32> {
        self.channels
            .iter()
            .find(|(_, c)| {
                c.offer.connection_id == connection_id && c.state != ChannelState::Rescinded
            })
            .map(|(&r, _)| r)
    }

    fn post(&mut self, msg: &ChannelMessage) {
        if let Some(c) = self.connection {
            self.port
                .post_message(c.target_vp, c.sint, msg.encode().as_slice());
        }
    }

    /// Offers a channel; it is sent at once if the guest already asked for
    /// offers. Returns the relid.
    pub fn add_offer(&mut self, params: OfferParams) -> Result<u32, HostError> {
        let relid = (1..=self.config.max_relid)
            .find(|r| !self.channels.contains_key(r))
            .ok_or(HostError::NoFreeRelid)?;
        let offer = OfferChannel {
            interface_type: params.interface_type,
            interface_instance: params.interface_instance,
            flags: params.flags,
            mmio_megabytes: params.mmio_megabytes,
            user_defined: params.user_defined,
            sub_channel_index: params.sub_channel_index,
            mmio_megabytes_optional: 0,
            child_relid: relid,
            // No monitor pages: every guest kick is an HvSignalEvent.
            monitor_id: 0xFF,
            monitor_allocated: false,
            is_dedicated_interrupt: true,
            connection_id: self.config.connection_id_base.wrapping_add(relid),
        };
        self.channels.insert(
            relid,
            HostChannel {
                offer,
                state: ChannelState::Closed,
            },
        );
        if self.connection.is_some_and(|c| c.offers_sent) {
            self.post(&ChannelMessage::OfferChannel(offer));
        }
        Ok(relid)
    }

    /// Withdraws an offer. If the channel is open it is closed on the host
    /// side at once (drop its [`Channel`]); the relid stays reserved until
    /// the guest sends RELID_RELEASED. Unsent offers disappear immediately.
    pub fn rescind(&mut self, relid: u32) -> Result<(), HostError> {
        let sent = self.connection.is_some_and(|c| c.offers_sent);
        let ch = self
            .channels
            .get_mut(&relid)
            .ok_or(HostError::BadChannel(relid))?;
        if ch.state == ChannelState::Rescinded {
            return Err(HostError::BadChannel(relid));
        }
        if !sent {
            self.channels.remove(&relid);
            self.gpadls.retain(|_, g| gpadl_relid(g) != relid);
            return Ok(());
        }
        ch.state = ChannelState::Rescinded;
        self.post(&ChannelMessage::RescindChannelOffer { child_relid: relid });
        Ok(())
    }

    /// Handles one message the guest posted on `connection_id`.
    pub fn handle_message(&mut self, connection_id: u32, bytes: &[u8]) -> Handled<P> {
        if connection_id != MESSAGE_CONNECTION_ID && connection_id != MESSAGE_CONNECTION_ID_4 {
            return Err(HostError::UnknownConnectionId(connection_id));
        }
        let msg = ChannelMessage::parse(bytes)?;
        if let ChannelMessage::InitiateContact(c) = msg {
            return self.initiate_contact(&c).map(Some);
        }
        let Some(conn) = self.connection else {
            return Err(HostError::NotConnected);
        };
        match msg {
            ChannelMessage::RequestOffers => {
                let offers: Vec<OfferChannel> = self
                    .channels
                    .values()
                    .filter(|c| c.state != ChannelState::Rescinded)
                    .map(|c| c.offer)
                    .collect();
                for o in offers {
                    self.post(&ChannelMessage::OfferChannel(o));
                }
                self.post(&ChannelMessage::AllOffersDelivered);
                if let Some(c) = self.connection.as_mut() {
                    c.offers_sent = true;
                }
                Ok(None)
            }
            ChannelMessage::GpadlHeader(h) => self.gpadl_header(&h),
            ChannelMessage::GpadlBody(b) => self.gpadl_body(&b),
            ChannelMessage::GpadlTeardown { child_relid, gpadl } => {
                self.gpadl_teardown(child_relid, gpadl)
            }
            ChannelMessage::OpenChannel(o) => self.open_channel(&o).map(Some),
            ChannelMessage::CloseChannel { child_relid } => {
                let ch = self
                    .channels
                    .get_mut(&child_relid)
                    .ok_or(HostError::BadChannel(child_relid))?;
                match ch.state {
                    ChannelState::Open { .. } => {
                        ch.state = ChannelState::Closed;
                        Ok(Some(HostEvent::ChannelClosed { relid: child_relid }))
                    }
                    // Linux closes a rescinded channel too: its rings are
                    // freed now, so the device layer must stop using them
                    // (a device may serve a rescinded channel until then).
                    ChannelState::Rescinded => {
                        Ok(Some(HostEvent::ChannelClosed { relid: child_relid }))
                    }
                    ChannelState::Closed => Err(HostError::BadChannel(child_relid)),
                }
            }
            ChannelMessage::RelidReleased { child_relid } => {
                match self.channels.get(&child_relid) {
                    Some(c) if c.state == ChannelState::Rescinded => {
                        self.channels.remove(&child_relid);
                        self.gpadls.retain(|_, g| gpadl_relid(g) != child_relid);
                        Ok(Some(HostEvent::RelidReleased { relid: child_relid }))
                    }
                    _ => Err(HostError::BadChannel(child_relid)),
                }
            }
            ChannelMessage::ModifyChannel {
                child_relid,
                target_vp,
            } => self.modify_channel(conn, child_relid, target_vp),
            ChannelMessage::Unload => Ok(Some(self.unload())),
            other => Err(HostError::Unexpected(other.msgtype())),
        }
    }

    fn initiate_contact(&mut self, c: &InitiateContact) -> Result<HostEventOf<P>, HostError> {
        // Reply where the guest listens: from 5.0 its msg_sint, else SINT 2.
        let sint = if c.version >= VERSION_WIN10_V5 {
            c.msg_sint()
        } else {
            VMBUS_MESSAGE_SINT
        };
        let valid_sint = (1..16).contains(&sint);
        let reply_sint = if valid_sint { sint } else { VMBUS_MESSAGE_SINT };
        let accept =
            self.connection.is_none() && valid_sint && self.config.versions.contains(&c.version);
        let reply = ChannelMessage::VersionResponse(VersionResponse {
            version_supported: accept,
            connection_state: 0,
            msg_conn_id: MESSAGE_CONNECTION_ID,
        });
        self.port
            .post_message(c.target_vcpu, reply_sint, reply.encode().as_slice());
        if self.connection.is_some() {
            return Err(HostError::AlreadyConnected);
        }
        if !accept {
            return Err(HostError::VersionRejected(c.version));
        }
        self.connection = Some(Connection {
            version: c.version,
            target_vp: c.target_vcpu,
            sint,
            offers_sent: false,
        });
        Ok(HostEvent::Connected { version: c.version })
    }

    fn channel_accepts_gpadl(&self, relid: u32) -> bool {
        self.channels
            .get(&relid)
            .is_some_and(|c| c.state != ChannelState::Rescinded)
    }

    /// The words all GPADLs (complete or being assembled) hold.
    fn gpadl_words(&self) -> usize {
        self.gpadls
            .values()
            .map(|g| match g {
                GpadlState::Building(b) => b.words(),
                GpadlState::Ready(g) => g.words(),
            })
            .sum()
    }

    fn gpadl_failed(&mut self, relid: u32, gpadl: u32) {
        self.post(&ChannelMessage::GpadlCreated {
            child_relid: relid,
            gpadl,
            status: STATUS_UNSUCCESSFUL,
        });
    }

    fn gpadl_header(&mut self, h: &GpadlHeader) -> Handled<P> {
        let err = if !self.channel_accepts_gpadl(h.child_relid) {
            Some(HostError::BadChannel(h.child_relid))
        } else if self.gpadls.contains_key(&h.gpadl) {
            Some(HostError::BadGpadl(h.gpadl))
        } else if self.gpadls.len() >= self.config.max_gpadls
            || self.gpadl_words() + usize::from(h.range_buflen) / 8 > self.config.max_gpadl_words
        {
            Some(HostError::TooManyGpadls)
        } else {
            None
        };
        if let Some(e) = err {
            self.gpadl_failed(h.child_relid, h.gpadl);
            return Err(e);
        }
        let builder = match GpadlBuilder::new(h) {
            Ok(b) => b,
            Err(e) => {
                self.gpadl_failed(h.child_relid, h.gpadl);
                return Err(HostError::Gpadl(e));
            }
        };
        self.gpadl_progress(builder)
    }

    fn gpadl_body(&mut self, b: &GpadlBody) -> Handled<P> {
        let Some(GpadlState::Building(builder)) = self.gpadls.get_mut(&b.gpadl) else {
            return Err(HostError::BadGpadl(b.gpadl));
        };
        let relid = builder.child_relid();
        if let Err(e) = builder.add_body(b) {
            self.gpadls.remove(&b.gpadl);
            self.gpadl_failed(relid, b.gpadl);
            return Err(HostError::Gpadl(e));
        }
        let Some(GpadlState::Building(builder)) = self.gpadls.remove(&b.gpadl) else {
            return Err(HostError::BadGpadl(b.gpadl));
        };
        self.gpadl_progress(builder)
    }

    /// Stores an incomplete builder, or validates a complete one and answers.
    fn gpadl_progress(&mut self, builder: GpadlBuilder) -> Handled<P> {
        let (id, relid) = (builder.id(), builder.child_relid());
        if !builder.is_complete() {
            self.gpadls.insert(id, GpadlState::Building(builder));
            return Ok(None);
        }
        match builder.finish() {
            Ok(g)
                if !g
                    .ranges()
                    .all(|r| r.pfns.iter().all(|&p| self.port.is_guest_page(p))) =>
            {
                self.gpadl_failed(relid, id);
                Err(HostError::OutsideGuest(id))
            }
            Ok(g) => {
                self.gpadls.insert(id, GpadlState::Ready(g));
                self.post(&ChannelMessage::GpadlCreated {
                    child_relid: relid,
                    gpadl: id,
                    status: 0,
                });
                Ok(Some(HostEvent::GpadlCreated { relid, gpadl: id }))
            }
            Err(e) => {
                self.gpadl_failed(relid, id);
                Err(HostError::Gpadl(e))
            }
        }
    }

    fn gpadl_teardown(&mut self, relid: u32, id: u32) -> Handled<P> {
        let owner = self.gpadls.get(&id).map(gpadl_relid);
        if owner != Some(relid) {
            return Err(HostError::BadGpadl(id));
        }
        let in_use = self
            .channels
            .get(&relid)
            .is_some_and(|c| c.state == ChannelState::Open { ring_gpadl: id });
        if in_use {
            return Err(HostError::BadGpadl(id));
        }
        self.gpadls.remove(&id);
        self.post(&ChannelMessage::GpadlTorndown { gpadl: id });
        Ok(Some(HostEvent::GpadlTornDown { relid, gpadl: id }))
    }

    fn open_failed(&mut self, o: &OpenChannel, e: HostError) -> HostError {
        self.post(&ChannelMessage::OpenChannelResult {
            child_relid: o.child_relid,
            open_id: o.open_id,
            status: STATUS_UNSUCCESSFUL,
        });
        e
    }

    fn open_channel(&mut self, o: &OpenChannel) -> Result<HostEventOf<P>, HostError> {
        let relid = o.child_relid;
        match self.channels.get(&relid) {
            Some(c) if c.state == ChannelState::Closed => {}
            _ => return Err(self.open_failed(o, HostError::BadChannel(relid))),
        }
        let pfns: Vec<u64> = match self.gpadls.get(&o.ring_gpadl) {
            Some(GpadlState::Ready(g)) if g.child_relid == relid => match g.as_page_list() {
                Some(p) => p.to_vec(),
                None => return Err(self.open_failed(o, HostError::BadRingLayout)),
            },
            _ => return Err(self.open_failed(o, HostError::BadGpadl(o.ring_gpadl))),
        };
        // Pages [0, d) carry guest->host, [d, n) host->guest; each ring
        // needs a header page and at least one data page.
        let d = o.downstream_page_offset as usize;
        if d < 2 || pfns.len().saturating_sub(d) < 2 {
            return Err(self.open_failed(o, HostError::BadRingLayout));
        }
        let (Some(in_mem), Some(out_mem)) = (
            self.port.map_ring(&pfns[..d]),
            self.port.map_ring(&pfns[d..]),
        ) else {
            return Err(self.open_failed(o, HostError::BadRingLayout));
        };
        let reader = match RingReader::new(in_mem) {
            Ok(r) => r,
            Err(e) => return Err(self.open_failed(o, HostError::Ring(e))),
        };
        let writer = match RingWriter::new(out_mem) {
            Ok(w) => w,
            Err(e) => return Err(self.open_failed(o, HostError::Ring(e))),
        };
        let sint = self.connection.map_or(VMBUS_MESSAGE_SINT, |c| c.sint);
        let notifier = self.port.notifier(o.target_vp, sint, relid);
        if let Some(c) = self.channels.get_mut(&relid) {
            c.state = ChannelState::Open {
                ring_gpadl: o.ring_gpadl,
            };
        }
        self.post(&ChannelMessage::OpenChannelResult {
            child_relid: relid,
            open_id: o.open_id,
            status: 0,
        });
        Ok(HostEvent::ChannelOpened {
            relid,
            channel: Channel::new(reader, writer, notifier),
            user_data: o.user_data,
        })
    }

    fn modify_channel(&mut self, conn: Connection, relid: u32, target_vp: u32) -> Handled<P> {
        if conn.version < VERSION_WIN10_V4_1 {
            return Err(HostError::NotSupported(msgtype::MODIFY_CHANNEL));
        }
        let open = self.is_open(relid);
        if conn.version >= VERSION_WIN10_V5_3 {
            self.post(&ChannelMessage::ModifyChannelResponse {
                child_relid: relid,
                status: if open { 0 } else { STATUS_UNSUCCESSFUL },
            });
        }
        if !open {
            return Err(HostError::BadChannel(relid));
        }
        let notifier = self.port.notifier(target_vp, conn.sint, relid);
        Ok(Some(HostEvent::ChannelModified {
            relid,
            target_vp,
            notifier,
        }))
    }

    fn unload(&mut self) -> HostEventOf<P> {
        let mut closed = Vec::new();
        self.channels.retain(|&relid, c| match c.state {
            ChannelState::Open { .. } => {
                closed.push(relid);
                c.state = ChannelState::Closed;
                true
            }
            ChannelState::Closed => true,
            // The guest forgets rescinded channels on unload.
            ChannelState::Rescinded => false,
        });
        self.gpadls.clear();
        self.post(&ChannelMessage::UnloadResponse);
        self.connection = None;
        HostEvent::Unloaded { closed }
    }
}

fn gpadl_relid(g: &GpadlState) -> u32 {
    match g {
        GpadlState::Building(b) => b.child_relid(),
        GpadlState::Ready(g) => g.child_relid,
    }
}
