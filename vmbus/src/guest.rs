//! The guest (client, VSC) side of VMBus channel management.
//!
//! [`Guest`] negotiates a version (falling back through its list on
//! rejection), collects offers, creates GPADLs, opens channels (allocating
//! and describing the two rings), closes them and unloads. It is driven by
//! [`Guest::handle_message`] for every message the host posts to the VMBus
//! SINT and by the driver's calls, and talks back through [`GuestPort`].
//!
//! The host is not trusted either: replies are checked against what is
//! pending, and a bad one returns a [`GuestError`] without changing state.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::channel::{Channel, Notify};
use crate::gpadl::{gpadl_messages, GpadlError, GpadlRange, LINUX_FIRST_GPADL_ID};
use crate::messages::*;
use crate::ring::{init_ring_header, RingError, RingReader, RingWriter};
use crate::shared_mem::RingMemory;
use crate::PAGE_SIZE;

/// HvPostMessage failed (e.g. no buffers, or an invalid connection id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostError;

/// The event type of a port's state machine.
pub type GuestEventOf<P> = GuestEvent<<P as GuestPort>::Ring, <P as GuestPort>::Notifier>;

type Handled<P> = Result<Option<GuestEventOf<P>>, GuestError>;

/// What the guest needs from its environment.
pub trait GuestPort {
    /// Ring memory made from our own pages.
    type Ring: RingMemory;
    /// Signals the host (HvSignalEvent).
    type Notifier: Notify;
    /// HvPostMessage(connection_id, message type 1, message).
    fn post_message(&mut self, connection_id: u32, message: &[u8]) -> Result<(), PostError>;
    /// Allocates `count` zeroed pages; returns their PFNs.
    fn alloc_pages(&mut self, count: usize) -> Option<Vec<u64>>;
    /// Frees pages from `alloc_pages` once the host no longer uses them.
    fn free_pages(&mut self, pfns: &[u64]);
    /// Maps pages as a ring: `pfns[0]` is the header page.
    fn map_ring(&mut self, pfns: &[u64]) -> Option<Self::Ring>;
    /// A notifier doing HvSignalEvent(connection_id).
    fn notifier(&mut self, connection_id: u32) -> Self::Notifier;
}

/// Guest configuration.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// Versions to propose, best first.
    pub versions: Vec<u32>,
    /// VP that receives host messages.
    pub target_vcpu: u32,
    /// Interrupt page GPA sent to pre-5.0 hosts.
    pub interrupt_page: u64,
    /// Monitor page GPAs (unused by this crate's host).
    pub monitor_pages: (u64, u64),
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            versions: SUPPORTED_VERSIONS.to_vec(),
            target_vcpu: 0,
            interrupt_page: 0,
            monitor_pages: (0, 0),
        }
    }
}

/// How to open a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenParams {
    /// Pages of the guest->host ring, header page included (>= 2).
    pub send_ring_pages: u32,
    /// Pages of the host->guest ring, header page included (>= 2).
    pub recv_ring_pages: u32,
    /// VP the host signals.
    pub target_vp: u32,
    /// Device-specific open data.
    pub user_data: [u8; USER_DEFINED_SIZE],
}

/// Something the driver must act on.
pub enum GuestEvent<R: RingMemory, N: Notify> {
    /// Version negotiated.
    Connected {
        /// The version.
        version: u32,
    },
    /// The host rejected every version.
    ConnectFailed,
    /// A channel offer.
    Offer(OfferChannel),
    /// All offers present at REQUESTOFFERS time were sent.
    AllOffersDelivered,
    /// A GPADL from [`Guest::create_gpadl`] is ready (`status` 0) or failed.
    GpadlCreated {
        /// Channel.
        relid: u32,
        /// GPADL id.
        gpadl: u32,
        /// Host status.
        status: u32,
    },
    /// A GPADL was torn down (its pages may be reused).
    GpadlTornDown {
        /// GPADL id.
        gpadl: u32,
    },
    /// A channel is open.
    Opened {
        /// Channel.
        relid: u32,
        /// The data path (guest writes guest->host, reads host->guest).
        channel: Channel<R, N>,
    },
    /// Opening failed (ring GPADL or OPENCHANNEL refused).
    OpenFailed {
        /// Channel.
        relid: u32,
        /// Host status.
        status: u32,
    },
    /// The host rescinded the offer: drop the channel, close it if it was
    /// open, then call [`Guest::release_relid`].
    Rescinded {
        /// Channel.
        relid: u32,
    },
    /// MODIFYCHANNEL answered (5.3+).
    Modified {
        /// Channel.
        relid: u32,
        /// Host status.
        status: u32,
    },
    /// UNLOAD confirmed; everything is reset.
    Unloaded,
}

impl<R: RingMemory, N: Notify> core::fmt::Debug for GuestEvent<R, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GuestEvent::Connected { version } => write!(f, "Connected({version:#x})"),
            GuestEvent::ConnectFailed => write!(f, "ConnectFailed"),
            GuestEvent::Offer(o) => write!(f, "Offer({}, {})", o.child_relid, o.interface_type),
            GuestEvent::AllOffersDelivered => write!(f, "AllOffersDelivered"),
            GuestEvent::GpadlCreated {
                relid,
                gpadl,
                status,
            } => write!(f, "GpadlCreated({relid}, {gpadl:#x}, {status:#x})"),
            GuestEvent::GpadlTornDown { gpadl } => write!(f, "GpadlTornDown({gpadl:#x})"),
            GuestEvent::Opened { relid, .. } => write!(f, "Opened({relid})"),
            GuestEvent::OpenFailed { relid, status } => {
                write!(f, "OpenFailed({relid}, {status:#x})")
            }
            GuestEvent::Rescinded { relid } => write!(f, "Rescinded({relid})"),
            GuestEvent::Modified { relid, status } => write!(f, "Modified({relid}, {status:#x})"),
            GuestEvent::Unloaded => write!(f, "Unloaded"),
        }
    }
}

/// A host message or driver call the guest refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestError {
    /// Unparsable message.
    Message(MessageError),
    /// A message only the guest sends, or not expected in this state.
    Unexpected(u32),
    /// Not connected (or connecting / unloading).
    NotConnected,
    /// Already connected or connecting.
    AlreadyConnected,
    /// No such channel, or not in a state for this.
    BadChannel(u32),
    /// An offer reusing a live relid.
    DuplicateRelid(u32),
    /// No such pending GPADL.
    BadGpadl(u32),
    /// GPADL description error.
    Gpadl(GpadlError),
    /// HvPostMessage failed.
    Post,
    /// Out of pages or a mapping failed.
    NoMemory,
    /// Bad ring sizes.
    BadRingSize,
    /// A ring could not be attached.
    Ring(RingError),
    /// The version has no such message.
    NotSupported,
}

impl From<MessageError> for GuestError {
    fn from(e: MessageError) -> Self {
        GuestError::Message(e)
    }
}

impl From<PostError> for GuestError {
    fn from(_: PostError) -> Self {
        GuestError::Post
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Disconnected,
    /// Proposed `versions[index]`.
    Connecting {
        index: usize,
    },
    Connected {
        version: u32,
        msg_conn_id: u32,
    },
    Unloading,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ChannelState {
    Offered,
    /// Ring GPADL sent, waiting for GPADL_CREATED.
    WaitGpadl {
        ring: RingPages,
        params: OpenParams,
    },
    /// OPENCHANNEL sent.
    WaitOpen {
        ring: RingPages,
    },
    Open {
        ring: RingPages,
    },
    /// Rescinded; `ring` is the ring GPADL still to close and tear down.
    Rescinded {
        ring: Option<RingPages>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct RingPages {
    gpadl: u32,
    pfns: Vec<u64>,
    send_pages: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GpadlState {
    Creating,
    Ready,
    TearingDown,
}

struct GuestGpadl {
    relid: u32,
    state: GpadlState,
    /// Pages this crate allocated for the GPADL (rings): freed on teardown.
    owned_pages: Vec<u64>,
}

/// The guest state machine.
pub struct Guest<P: GuestPort> {
    port: P,
    config: GuestConfig,
    state: ConnState,
    offers: BTreeMap<u32, (OfferChannel, ChannelState)>,
    gpadls: BTreeMap<u32, GuestGpadl>,
    next_gpadl: u32,
    next_open_id: u32,
}

impl<P: GuestPort> Guest<P> {
    /// A disconnected guest.
    pub fn new(port: P, config: GuestConfig) -> Self {
        Self {
            port,
            config,
            state: ConnState::Disconnected,
            offers: BTreeMap::new(),
            gpadls: BTreeMap::new(),
            next_gpadl: LINUX_FIRST_GPADL_ID,
            next_open_id: 1,
        }
    }

    /// The port.
    pub fn port(&mut self) -> &mut P {
        &mut self.port
    }

    /// Negotiated version.
    pub fn version(&self) -> Option<u32> {
        match self.state {
            ConnState::Connected { version, .. } => Some(version),
            _ => None,
        }
    }

    /// The offer for a relid.
    pub fn offer(&self, relid: u32) -> Option<&OfferChannel> {
        self.offers.get(&relid).map(|(o, _)| o)
    }

    /// All current offers.
    pub fn offers(&self) -> impl Iterator<Item = &OfferChannel> {
        self.offers.values().map(|(o, _)| o)
    }

    fn msg_conn_id(&self) -> Result<(u32, u32), GuestError> {
        match self.state {
            ConnState::Connected {
                version,
                msg_conn_id,
            } => Ok((version, msg_conn_id)),
            _ => Err(GuestError::NotConnected),
        }
    }

    fn post(&mut self, msg: &ChannelMessage) -> Result<(), GuestError> {
        let (_, conn) = self.msg_conn_id()?;
        self.port.post_message(conn, msg.encode().as_slice())?;
        Ok(())
    }

    fn propose(&mut self, index: usize) -> Result<(), GuestError> {
        let version = *self
            .config
            .versions
            .get(index)
            .ok_or(GuestError::NotSupported)?;
        let (conn, page) = if version >= VERSION_WIN10_V5 {
            (MESSAGE_CONNECTION_ID_4, u64::from(VMBUS_MESSAGE_SINT))
        } else {
            (MESSAGE_CONNECTION_ID, self.config.interrupt_page)
        };
        let msg = ChannelMessage::InitiateContact(InitiateContact {
            version,
            target_vcpu: self.config.target_vcpu,
            interrupt_page_or_sint: page,
            monitor_page1: self.config.monitor_pages.0,
            monitor_page2: self.config.monitor_pages.1,
        });
        self.port.post_message(conn, msg.encode().as_slice())?;
        self.state = ConnState::Connecting { index };
        Ok(())
    }

    /// Starts negotiation with the best version.
    pub fn connect(&mut self) -> Result<(), GuestError> {
        if self.state != ConnState::Disconnected {
            return Err(GuestError::AlreadyConnected);
        }
        self.propose(0)
    }

    /// Asks the host for its offers.
    pub fn request_offers(&mut self) -> Result<(), GuestError> {
        self.post(&ChannelMessage::RequestOffers)
    }

    fn alloc_gpadl_id(&mut self) -> u32 {
        let id = self.next_gpadl;
        self.next_gpadl = self.next_gpadl.wrapping_add(1).max(1);
        id
    }

    /// Describes `ranges` to the host as a GPADL of channel `relid`;
    /// [`GuestEvent::GpadlCreated`] follows. Returns the GPADL id.
    pub fn create_gpadl(
        &mut self,
        relid: u32,
        ranges: &[GpadlRange<'_>],
    ) -> Result<u32, GuestError> {
        self.create_gpadl_owned(relid, ranges, Vec::new())
    }

    fn create_gpadl_owned(
        &mut self,
        relid: u32,
        ranges: &[GpadlRange<'_>],
        owned_pages: Vec<u64>,
    ) -> Result<u32, GuestError> {
        self.msg_conn_id()?;
        match self.offers.get(&relid) {
            Some((_, ChannelState::Rescinded { .. })) | None => {
                return Err(GuestError::BadChannel(relid))
            }
            _ => {}
        }
        let id = self.alloc_gpadl_id();
        let msgs = gpadl_messages(relid, id, ranges).map_err(GuestError::Gpadl)?;
        for m in &msgs {
            self.post(m)?;
        }
        self.gpadls.insert(
            id,
            GuestGpadl {
                relid,
                state: GpadlState::Creating,
                owned_pages,
            },
        );
        Ok(id)
    }

    /// Tears a ready GPADL down; [`GuestEvent::GpadlTornDown`] follows.
    pub fn teardown_gpadl(&mut self, id: u32) -> Result<(), GuestError> {
        let g = self.gpadls.get(&id).ok_or(GuestError::BadGpadl(id))?;
        if g.state != GpadlState::Ready {
            return Err(GuestError::BadGpadl(id));
        }
        let relid = g.relid;
        self.post(&ChannelMessage::GpadlTeardown {
            child_relid: relid,
            gpadl: id,
        })?;
        if let Some(g) = self.gpadls.get_mut(&id) {
            g.state = GpadlState::TearingDown;
        }
        Ok(())
    }

    /// Opens an offered channel: allocates and initialises both rings,
    /// sends their GPADL and, once created, OPENCHANNEL.
    /// [`GuestEvent::Opened`] or [`GuestEvent::OpenFailed`] follows.
    pub fn open_channel(&mut self, relid: u32, params: OpenParams) -> Result<(), GuestError> {
        self.msg_conn_id()?;
        if !matches!(self.offers.get(&relid), Some((_, ChannelState::Offered))) {
            return Err(GuestError::BadChannel(relid));
        }
        let (send, recv) = (
            params.send_ring_pages as usize,
            params.recv_ring_pages as usize,
        );
        if send < 2 || recv < 2 {
            return Err(GuestError::BadRingSize);
        }
        let total = send.checked_add(recv).ok_or(GuestError::BadRingSize)?;
        let byte_count = total
            .checked_mul(PAGE_SIZE)
            .and_then(|b| u32::try_from(b).ok())
            .ok_or(GuestError::BadRingSize)?;
        let pfns = self.port.alloc_pages(total).ok_or(GuestError::NoMemory)?;
        if pfns.len() != total {
            self.port.free_pages(&pfns);
            return Err(GuestError::NoMemory);
        }
        for ring in [&pfns[..send], &pfns[send..]] {
            match self.port.map_ring(ring) {
                Some(m) => init_ring_header(m.header()),
                None => {
                    self.port.free_pages(&pfns);
                    return Err(GuestError::NoMemory);
                }
            }
        }
        let range = GpadlRange {
            byte_count,
            byte_offset: 0,
            pfns: &pfns,
        };
        let gpadl = match self.create_gpadl_owned(relid, &[range], pfns.clone()) {
            Ok(id) => id,
            Err(e) => {
                self.port.free_pages(&pfns);
                return Err(e);
            }
        };
        if let Some((_, st)) = self.offers.get_mut(&relid) {
            *st = ChannelState::WaitGpadl {
                ring: RingPages {
                    gpadl,
                    pfns,
                    send_pages: send,
                },
                params,
            };
        }
        Ok(())
    }

    /// Closes an open (or rescinded-while-open) channel (drop its
    /// [`Channel`] first) and tears its ring GPADL down; the pages are freed
    /// when the host confirms.
    pub fn close_channel(&mut self, relid: u32) -> Result<(), GuestError> {
        let (gpadl, next) = match self.offers.get(&relid) {
            Some((_, ChannelState::Open { ring })) => (ring.gpadl, ChannelState::Offered),
            Some((_, ChannelState::Rescinded { ring: Some(ring) })) => {
                (ring.gpadl, ChannelState::Rescinded { ring: None })
            }
            _ => return Err(GuestError::BadChannel(relid)),
        };
        self.post(&ChannelMessage::CloseChannel { child_relid: relid })?;
        self.set_channel_state(relid, next);
        match self.gpadls.get(&gpadl).map(|g| &g.state) {
            Some(GpadlState::Ready) => self.teardown_gpadl(gpadl),
            // Still being created (rescind raced the open): nothing to tear
            // down yet; unload or GPADL_CREATED failure frees it.
            _ => Ok(()),
        }
    }

    /// Retargets a channel's interrupt (4.1+).
    pub fn modify_channel(&mut self, relid: u32, target_vp: u32) -> Result<(), GuestError> {
        let (version, _) = self.msg_conn_id()?;
        if version < VERSION_WIN10_V4_1 {
            return Err(GuestError::NotSupported);
        }
        if !matches!(
            self.offers.get(&relid),
            Some((_, ChannelState::Open { .. }))
        ) {
            return Err(GuestError::BadChannel(relid));
        }
        self.post(&ChannelMessage::ModifyChannel {
            child_relid: relid,
            target_vp,
        })
    }

    /// After [`GuestEvent::Rescinded`]: the relid may be reused.
    pub fn release_relid(&mut self, relid: u32) -> Result<(), GuestError> {
        if !matches!(
            self.offers.get(&relid),
            Some((_, ChannelState::Rescinded { .. }))
        ) {
            return Err(GuestError::BadChannel(relid));
        }
        self.post(&ChannelMessage::RelidReleased { child_relid: relid })?;
        self.offers.remove(&relid);
        Ok(())
    }

    /// Disconnects; [`GuestEvent::Unloaded`] follows.
    pub fn unload(&mut self) -> Result<(), GuestError> {
        self.post(&ChannelMessage::Unload)?;
        self.state = ConnState::Unloading;
        Ok(())
    }

    fn reset(&mut self) {
        let owned: Vec<u64> = self
            .gpadls
            .values_mut()
            .flat_map(|g| core::mem::take(&mut g.owned_pages))
            .collect();
        // Pages of rings still being opened are owned by their GPADL entry
        // too, so this frees every page we allocated.
        self.port.free_pages(&owned);
        self.gpadls.clear();
        self.offers.clear();
        self.state = ConnState::Disconnected;
    }

    /// Handles one message the host posted.
    pub fn handle_message(&mut self, bytes: &[u8]) -> Handled<P> {
        let msg = ChannelMessage::parse(bytes)?;
        match msg {
            ChannelMessage::VersionResponse(v) => self.version_response(&v),
            ChannelMessage::UnloadResponse => {
                if self.state != ConnState::Unloading {
                    return Err(GuestError::Unexpected(msgtype::UNLOAD_RESPONSE));
                }
                self.reset();
                Ok(Some(GuestEvent::Unloaded))
            }
            other => {
                // Everything else needs a live connection (messages racing
                // an UNLOAD are dropped as unexpected).
                self.msg_conn_id()
                    .map_err(|_| GuestError::Unexpected(other.msgtype()))?;
                self.connected_message(other)
            }
        }
    }

    fn version_response(&mut self, v: &VersionResponse) -> Handled<P> {
        let ConnState::Connecting { index } = self.state else {
            return Err(GuestError::Unexpected(msgtype::VERSION_RESPONSE));
        };
        let version = self.config.versions.get(index).copied().unwrap_or(0);
        if v.version_supported {
            let msg_conn_id = if version >= VERSION_WIN10_V5 {
                v.msg_conn_id
            } else {
                MESSAGE_CONNECTION_ID
            };
            self.state = ConnState::Connected {
                version,
                msg_conn_id,
            };
            return Ok(Some(GuestEvent::Connected { version }));
        }
        if index + 1 < self.config.versions.len() {
            self.propose(index + 1)?;
            Ok(None)
        } else {
            self.state = ConnState::Disconnected;
            Ok(Some(GuestEvent::ConnectFailed))
        }
    }

    fn connected_message(&mut self, msg: ChannelMessage) -> Handled<P> {
        match msg {
            ChannelMessage::OfferChannel(o) => {
                if o.child_relid == 0 || self.offers.contains_key(&o.child_relid) {
                    return Err(GuestError::DuplicateRelid(o.child_relid));
                }
                self.offers
                    .insert(o.child_relid, (o, ChannelState::Offered));
                Ok(Some(GuestEvent::Offer(o)))
            }
            ChannelMessage::AllOffersDelivered => Ok(Some(GuestEvent::AllOffersDelivered)),
            ChannelMessage::RescindChannelOffer { child_relid } => {
                let (_, st) = self
                    .offers
                    .get_mut(&child_relid)
                    .ok_or(GuestError::BadChannel(child_relid))?;
                let ring = match core::mem::replace(st, ChannelState::Rescinded { ring: None }) {
                    ChannelState::Offered => None,
                    ChannelState::WaitGpadl { ring, .. }
                    | ChannelState::WaitOpen { ring }
                    | ChannelState::Open { ring } => Some(ring),
                    ChannelState::Rescinded { ring } => {
                        *st = ChannelState::Rescinded { ring };
                        return Err(GuestError::BadChannel(child_relid));
                    }
                };
                *st = ChannelState::Rescinded { ring };
                Ok(Some(GuestEvent::Rescinded { relid: child_relid }))
            }
            ChannelMessage::GpadlCreated {
                child_relid,
                gpadl,
                status,
            } => self.gpadl_created(child_relid, gpadl, status),
            ChannelMessage::GpadlTorndown { gpadl } => {
                match self.gpadls.get(&gpadl) {
                    Some(g) if g.state == GpadlState::TearingDown => {}
                    _ => return Err(GuestError::BadGpadl(gpadl)),
                }
                if let Some(g) = self.gpadls.remove(&gpadl) {
                    self.port.free_pages(&g.owned_pages);
                }
                Ok(Some(GuestEvent::GpadlTornDown { gpadl }))
            }
            ChannelMessage::OpenChannelResult {
                child_relid,
                open_id: _,
                status,
            } => self.open_result(child_relid, status),
            ChannelMessage::ModifyChannelResponse {
                child_relid,
                status,
            } => Ok(Some(GuestEvent::Modified {
                relid: child_relid,
                status,
            })),
            other => Err(GuestError::Unexpected(other.msgtype())),
        }
    }

    fn gpadl_created(&mut self, relid: u32, id: u32, status: u32) -> Handled<P> {
        match self.gpadls.get(&id) {
            Some(g) if g.state == GpadlState::Creating && g.relid == relid => {}
            _ => return Err(GuestError::BadGpadl(id)),
        }
        if status != 0 {
            if let Some(g) = self.gpadls.remove(&id) {
                self.port.free_pages(&g.owned_pages);
            }
        } else if let Some(g) = self.gpadls.get_mut(&id) {
            g.state = GpadlState::Ready;
        }
        // A ring GPADL of a channel being opened: continue with OPENCHANNEL.
        let pending = match self.offers.get(&relid) {
            Some((_, ChannelState::WaitGpadl { ring, params })) if ring.gpadl == id => {
                Some((ring.clone(), *params))
            }
            _ => None,
        };
        let Some((ring, params)) = pending else {
            return Ok(Some(GuestEvent::GpadlCreated {
                relid,
                gpadl: id,
                status,
            }));
        };
        if status != 0 {
            self.set_channel_state(relid, ChannelState::Offered);
            return Ok(Some(GuestEvent::OpenFailed { relid, status }));
        }
        let open_id = self.next_open_id;
        self.next_open_id = self.next_open_id.wrapping_add(1);
        let open = ChannelMessage::OpenChannel(OpenChannel {
            child_relid: relid,
            open_id,
            ring_gpadl: id,
            target_vp: params.target_vp,
            downstream_page_offset: ring.send_pages as u32,
            user_data: params.user_data,
        });
        self.post(&open)?;
        self.set_channel_state(relid, ChannelState::WaitOpen { ring });
        Ok(None)
    }

    fn set_channel_state(&mut self, relid: u32, state: ChannelState) {
        if let Some((_, st)) = self.offers.get_mut(&relid) {
            *st = state;
        }
    }

    fn open_result(&mut self, relid: u32, status: u32) -> Handled<P> {
        let (offer, ring) = match self.offers.get(&relid) {
            Some((o, ChannelState::WaitOpen { ring })) => (*o, ring.clone()),
            _ => return Err(GuestError::BadChannel(relid)),
        };
        if status != 0 {
            // Keep the GPADL until it is torn down, like a closed channel.
            self.set_channel_state(relid, ChannelState::Offered);
            self.teardown_gpadl(ring.gpadl)?;
            return Ok(Some(GuestEvent::OpenFailed { relid, status }));
        }
        let (send, recv) = ring.pfns.split_at(ring.send_pages);
        let (Some(out_mem), Some(in_mem)) = (self.port.map_ring(send), self.port.map_ring(recv))
        else {
            return Err(GuestError::NoMemory);
        };
        let writer = RingWriter::new(out_mem).map_err(GuestError::Ring)?;
        let reader = RingReader::new(in_mem).map_err(GuestError::Ring)?;
        let notifier = self.port.notifier(offer.connection_id);
        self.set_channel_state(relid, ChannelState::Open { ring });
        Ok(Some(GuestEvent::Opened {
            relid,
            channel: Channel::new(reader, writer, notifier),
        }))
    }
}
