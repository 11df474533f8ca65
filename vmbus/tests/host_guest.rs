//! The host and guest state machines connected in-process over the
//! simulated SynIC and guest memory of `vmbus::sim`.

use std::sync::atomic::Ordering;

use vmbus::channel::{Channel, SendResult};
use vmbus::guest::{Guest, GuestConfig, GuestError, GuestEvent, OpenParams};
use vmbus::guid::class;
use vmbus::host::{Host, HostConfig, HostError, HostEvent, OfferParams, STATUS_UNSUCCESSFUL};
use vmbus::messages::*;
use vmbus::packet::{GpaRangeSpec, OutgoingKind, OutgoingPacket, PacketKind};
use vmbus::shared_mem::{PagedRing, RingMemory};
use vmbus::sim::{SharedBus, SimBus, SimGuestPort, SimHostPort, SimNotifier};
use vmbus::Guid;

type HEvent = HostEvent<PagedRing, SimNotifier>;
type GEvent = GuestEvent<PagedRing, SimNotifier>;
type Chan = Channel<PagedRing, SimNotifier>;

struct Rig {
    bus: SharedBus,
    host: Host<SimHostPort>,
    guest: Guest<SimGuestPort>,
    host_events: Vec<HEvent>,
    guest_events: Vec<GEvent>,
    host_errors: Vec<HostError>,
    guest_errors: Vec<GuestError>,
    /// Every message the guest posted: (connection id, msgtype).
    guest_sent: Vec<(u32, u32)>,
    /// Every message type the host posted.
    host_sent: Vec<u32>,
}

impl Rig {
    fn new(host_config: HostConfig, guest_config: GuestConfig) -> Self {
        let bus = SimBus::new(1024);
        Rig {
            host: Host::new(SimHostPort(bus.clone()), host_config),
            guest: Guest::new(SimGuestPort(bus.clone()), guest_config),
            bus,
            host_events: Vec::new(),
            guest_events: Vec::new(),
            host_errors: Vec::new(),
            guest_errors: Vec::new(),
            guest_sent: Vec::new(),
            host_sent: Vec::new(),
        }
    }

    fn default() -> Self {
        Self::new(HostConfig::default(), GuestConfig::default())
    }

    /// Delivers messages both ways until both queues are empty.
    fn pump(&mut self) {
        loop {
            let to_host = self.bus.borrow_mut().to_host.pop_front();
            if let Some((conn, bytes)) = to_host {
                self.guest_sent.push((conn, msgtype_of(&bytes)));
                match self.host.handle_message(conn, &bytes) {
                    Ok(Some(e)) => self.host_events.push(e),
                    Ok(None) => {}
                    Err(e) => self.host_errors.push(e),
                }
                continue;
            }
            let to_guest = self.bus.borrow_mut().to_guest.pop_front();
            if let Some(m) = to_guest {
                assert_eq!(m.sint, VMBUS_MESSAGE_SINT);
                assert!(m.bytes.len() <= MAX_MESSAGE_SIZE);
                self.host_sent.push(msgtype_of(&m.bytes));
                match self.guest.handle_message(&m.bytes) {
                    Ok(Some(e)) => self.guest_events.push(e),
                    Ok(None) => {}
                    Err(e) => self.guest_errors.push(e),
                }
                continue;
            }
            break;
        }
    }

    fn connect(&mut self) {
        self.guest.connect().unwrap();
        self.pump();
        self.guest.request_offers().unwrap();
        self.pump();
    }

    fn open(&mut self, relid: u32, send: u32, recv: u32) -> (Chan, Chan) {
        self.guest
            .open_channel(
                relid,
                OpenParams {
                    send_ring_pages: send,
                    recv_ring_pages: recv,
                    target_vp: 0,
                    user_data: [0x11; USER_DEFINED_SIZE],
                },
            )
            .unwrap();
        self.pump();
        let host = self
            .host_events
            .drain(..)
            .find_map(|e| match e {
                HostEvent::ChannelOpened {
                    relid: r,
                    channel,
                    user_data,
                } if r == relid => {
                    assert_eq!(user_data, [0x11; USER_DEFINED_SIZE]);
                    Some(channel)
                }
                _ => None,
            })
            .expect("host saw the open");
        let guest = self
            .guest_events
            .drain(..)
            .find_map(|e| match e {
                GuestEvent::Opened { relid: r, channel } if r == relid => Some(channel),
                _ => None,
            })
            .expect("guest saw the open");
        (host, guest)
    }
}

fn msgtype_of(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[..4].try_into().unwrap())
}

fn scsi_offer() -> OfferParams {
    OfferParams::new(class::SCSI, Guid::from_u128(0x1111))
}

fn nic_offer() -> OfferParams {
    OfferParams::new(class::NETWORK, Guid::from_u128(0x2222))
}

#[test]
fn negotiates_5_3_on_connection_id_4_and_delivers_offers() {
    let mut rig = Rig::default();
    let scsi = rig.host.add_offer(scsi_offer()).unwrap();
    let nic = rig.host.add_offer(nic_offer()).unwrap();
    assert_eq!((scsi, nic), (1, 2));
    rig.connect();
    assert!(rig.host_errors.is_empty() && rig.guest_errors.is_empty());
    assert_eq!(rig.host.version(), Some(VERSION_WIN10_V5_3));
    assert_eq!(rig.guest.version(), Some(VERSION_WIN10_V5_3));
    // INITIATE_CONTACT on 4, everything after on the msg_conn_id (1).
    assert_eq!(rig.guest_sent[0], (4, msgtype::INITIATE_CONTACT));
    assert_eq!(rig.guest_sent[1], (1, msgtype::REQUEST_OFFERS));
    assert_eq!(
        rig.host_sent,
        [
            msgtype::VERSION_RESPONSE,
            msgtype::OFFER_CHANNEL,
            msgtype::OFFER_CHANNEL,
            msgtype::ALL_OFFERS_DELIVERED
        ]
    );
    let offers: Vec<_> = rig
        .guest_events
        .iter()
        .filter_map(|e| match e {
            GuestEvent::Offer(o) => Some((o.child_relid, o.interface_type, o.connection_id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        offers,
        [(1, class::SCSI, 0x2001), (2, class::NETWORK, 0x2002)]
    );
    assert!(matches!(
        rig.guest_events.last(),
        Some(GuestEvent::AllOffersDelivered)
    ));
    let o = rig.guest.offer(1).unwrap();
    assert!(o.is_dedicated_interrupt && !o.monitor_allocated);
}

#[test]
fn rejected_versions_fall_back_to_4_0() {
    let host_config = HostConfig {
        versions: vec![VERSION_WIN10],
        ..HostConfig::default()
    };
    let mut rig = Rig::new(host_config, GuestConfig::default());
    rig.host.add_offer(scsi_offer()).unwrap();
    rig.connect();
    assert_eq!(rig.guest.version(), Some(VERSION_WIN10));
    // 5.3, 5.2, 5.1, 5.0 on connection id 4; 4.1 and 4.0 on 1.
    let contacts: Vec<u32> = rig
        .guest_sent
        .iter()
        .filter(|(_, t)| *t == msgtype::INITIATE_CONTACT)
        .map(|(c, _)| *c)
        .collect();
    assert_eq!(contacts, [4, 4, 4, 4, 1, 1]);
    assert_eq!(
        rig.host_errors,
        [
            HostError::VersionRejected(VERSION_WIN10_V5_3),
            HostError::VersionRejected(VERSION_WIN10_V5_2),
            HostError::VersionRejected(VERSION_WIN10_V5_1),
            HostError::VersionRejected(VERSION_WIN10_V5),
            HostError::VersionRejected(VERSION_WIN10_V4_1),
        ]
    );
    // Pre-4.1: no MODIFYCHANNEL.
    let (_h, _g) = rig.open(1, 2, 2);
    assert_eq!(
        rig.guest.modify_channel(1, 1),
        Err(GuestError::NotSupported)
    );
}

#[test]
fn no_common_version_fails_cleanly() {
    let guest_config = GuestConfig {
        versions: vec![VERSION_WIN8_1, VERSION_WIN8],
        ..GuestConfig::default()
    };
    let host_config = HostConfig {
        versions: vec![VERSION_WIN10_V5_3],
        ..HostConfig::default()
    };
    let mut rig = Rig::new(host_config, guest_config);
    rig.guest.connect().unwrap();
    rig.pump();
    assert!(matches!(rig.guest_events[..], [GuestEvent::ConnectFailed]));
    assert_eq!(rig.guest.version(), None);
    assert_eq!(rig.guest.request_offers(), Err(GuestError::NotConnected));
    // The guest may try again.
    rig.guest.connect().unwrap();
}

#[test]
fn gpadl_with_multiple_bodies_open_data_close() {
    let mut rig = Rig::default();
    let relid = rig.host.add_offer(scsi_offer()).unwrap();
    rig.connect();
    let free_before = rig.bus.borrow().free_page_count();

    // 40 + 40 pages: header (26 PFNs) + bodies of 28 and 26 PFNs.
    let (mut host_ch, mut guest_ch) = rig.open(relid, 40, 40);
    let bodies = rig
        .guest_sent
        .iter()
        .filter(|(_, t)| *t == msgtype::GPADL_BODY)
        .count();
    assert_eq!(bodies, 2);
    assert!(rig.host.is_open(relid));
    assert!(rig.host_errors.is_empty(), "{:?}", rig.host_errors);

    // Data both ways, far more than the ring holds, so indices wrap.
    let conn_id = rig.guest.offer(relid).unwrap().connection_id;
    let ring_bytes = 39 * 4096usize;
    let mut next_send = 0u64;
    let mut next_recv = 0u64;
    let mut completions = 0u64;
    let total = 2000u64;
    while next_recv < total {
        // Guest fills its ring until full.
        while next_send < total {
            let len = 1 + (next_send as usize * 37) % 3000;
            let payload = vec![(next_send % 251) as u8; len];
            match guest_ch
                .send(&OutgoingPacket::in_band(next_send, true, &[&payload]))
                .unwrap()
            {
                SendResult::Sent => next_send += 1,
                SendResult::Full { .. } => break,
            }
        }
        // Host drains in a batch and completes each request.
        let mut got = Vec::new();
        host_ch
            .recv_batch(usize::MAX, |p| {
                let p = p.unwrap();
                assert_eq!(p.kind, PacketKind::InBand);
                assert!(p.completion_requested());
                got.push((p.transaction_id, p.payload.to_vec()));
            })
            .unwrap();
        for (id, payload) in got {
            assert_eq!(id, next_recv);
            let len = 1 + (id as usize * 37) % 3000;
            assert!(payload[..len].iter().all(|&b| b == (id % 251) as u8));
            next_recv += 1;
            let status = (id as u32).to_le_bytes();
            assert_eq!(
                host_ch
                    .send(&OutgoingPacket::completion(id, &[&status]))
                    .unwrap(),
                SendResult::Sent
            );
        }
        while let Some(p) = guest_ch.recv().unwrap() {
            let p = p.unwrap();
            assert_eq!(p.kind, PacketKind::Completion);
            assert_eq!(p.transaction_id, completions);
            assert_eq!(&p.payload[..4], &(completions as u32).to_le_bytes());
            completions += 1;
        }
    }
    assert_eq!(completions, total);
    let sent_bytes: usize = (0..total as usize)
        .map(|i| (16 + 1 + (i * 37) % 3000).next_multiple_of(8) + 8)
        .sum();
    assert!(sent_bytes > 10 * ring_bytes, "must wrap several times");
    // The guest kicked the host on its connection id, the host the guest
    // on the relid's event flag; both far less than once per packet.
    let (hs, gs) = {
        let mut bus = rig.bus.borrow_mut();
        (bus.host_signals(conn_id), bus.guest_signals(relid))
    };
    assert!(hs > 0 && hs < total, "host signals {hs}");
    assert!(gs > 0 && gs < total, "guest signals {gs}");

    // GPA-direct: the guest puts data in its pages 1..=2 and describes them.
    let ram = rig.bus.borrow().ram.clone();
    let data: Vec<u8> = (0..6000u32).map(|i| (i % 253) as u8).collect();
    ram.write(4096 + 100, &data).unwrap();
    let ranges = [GpaRangeSpec {
        byte_count: 6000,
        byte_offset: 100,
        pfns: &[1, 2],
    }];
    let req = OutgoingPacket {
        kind: OutgoingKind::GpaDirect(&ranges),
        transaction_id: 99,
        completion_requested: true,
        payload: &[b"srb"],
    };
    guest_ch.send(&req).unwrap();
    let p = host_ch.recv().unwrap().unwrap().unwrap();
    let PacketKind::GpaDirect(r) = p.kind else {
        panic!("{:?}", p.kind)
    };
    let range = r.iter().next().unwrap();
    let pfns: Vec<u64> = range.pfns().collect();
    let mut copy = vec![0u8; 6000];
    let first = 4096 - range.byte_offset as usize;
    ram.read(
        pfns[0] * 4096 + u64::from(range.byte_offset),
        &mut copy[..first],
    )
    .unwrap();
    ram.read(pfns[1] * 4096, &mut copy[first..]).unwrap();
    assert_eq!(copy, data);
    assert_eq!(&p.payload[..3], b"srb");

    // Retarget the interrupt (5.3: answered).
    rig.guest.modify_channel(relid, 1).unwrap();
    rig.pump();
    match rig.host_events.pop() {
        Some(HostEvent::ChannelModified {
            relid: r,
            target_vp: 1,
            notifier,
        }) => {
            assert_eq!(r, relid);
            host_ch.set_notifier(notifier);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        rig.guest_events.pop(),
        Some(GuestEvent::Modified { status: 0, .. })
    ));

    // Close: CLOSECHANNEL, GPADL_TEARDOWN, GPADL_TORNDOWN, pages freed.
    drop((host_ch, guest_ch));
    rig.guest.close_channel(relid).unwrap();
    rig.pump();
    assert!(matches!(
        rig.host_events[..],
        [
            HostEvent::ChannelClosed { relid: 1 },
            HostEvent::GpadlTornDown { relid: 1, .. }
        ]
    ));
    assert!(matches!(
        rig.guest_events[..],
        [GuestEvent::GpadlTornDown { .. }]
    ));
    assert!(!rig.host.is_open(relid));
    assert_eq!(rig.bus.borrow().free_page_count(), free_before);
    rig.host_events.clear();
    rig.guest_events.clear();

    // The channel can be opened again.
    let (_h, _g) = rig.open(relid, 2, 3);
    assert!(rig.host_errors.is_empty() && rig.guest_errors.is_empty());
}

#[test]
fn rescind_release_and_hot_add() {
    let mut rig = Rig::default();
    let scsi = rig.host.add_offer(scsi_offer()).unwrap();
    let nic = rig.host.add_offer(nic_offer()).unwrap();
    rig.connect();
    let (host_ch, guest_ch) = rig.open(nic, 4, 4);

    rig.host.rescind(nic).unwrap();
    drop(host_ch);
    rig.pump();
    assert!(matches!(
        rig.guest_events[..],
        [GuestEvent::Rescinded { relid: 2 }]
    ));
    // The relid stays reserved until released: a new offer gets 3.
    let extra = rig
        .host
        .add_offer(OfferParams::new(class::HEARTBEAT, Guid::from_u128(3)));
    assert_eq!(extra, Ok(3));
    rig.pump();
    assert!(matches!(
        rig.guest_events.last(),
        Some(GuestEvent::Offer(o)) if o.child_relid == 3 && o.interface_type == class::HEARTBEAT
    ));
    // Linux closes and tears down the rescinded channel, then releases it.
    drop(guest_ch);
    rig.guest.close_channel(nic).unwrap();
    rig.guest.release_relid(nic).unwrap();
    rig.pump();
    assert!(rig.host_errors.is_empty(), "{:?}", rig.host_errors);
    // The close is reported (the device stops using the freed rings).
    assert!(matches!(
        rig.host_events[..],
        [
            HostEvent::ChannelClosed { relid: 2 },
            HostEvent::GpadlTornDown { relid: 2, .. },
            HostEvent::RelidReleased { relid: 2 }
        ]
    ));
    assert!(rig.host.offer(nic).is_none());
    // Now relid 2 is free again.
    assert_eq!(rig.host.add_offer(nic_offer()), Ok(2));
    rig.pump();
    assert_eq!(
        rig.guest.offer(2).map(|o| o.interface_type),
        Some(class::NETWORK)
    );
    assert!(rig.guest.offer(scsi).is_some());
    assert!(rig.guest_errors.is_empty(), "{:?}", rig.guest_errors);
}

#[test]
fn unload_resets_both_sides_and_reconnects() {
    let mut rig = Rig::default();
    let scsi = rig.host.add_offer(scsi_offer()).unwrap();
    rig.connect();
    let free_before = rig.bus.borrow().free_page_count();
    let (h, g) = rig.open(scsi, 3, 3);
    drop((h, g));
    rig.guest.unload().unwrap();
    rig.pump();
    assert!(matches!(
        &rig.host_events[..],
        [HostEvent::Unloaded { closed }] if closed == &[scsi]
    ));
    assert!(matches!(rig.guest_events[..], [GuestEvent::Unloaded]));
    assert_eq!(rig.host.version(), None);
    assert!(!rig.host.is_open(scsi));
    assert_eq!(rig.bus.borrow().free_page_count(), free_before);
    assert_eq!(rig.host_sent.last(), Some(&msgtype::UNLOAD_RESPONSE));
    // Messages after unload are refused.
    let stale = ChannelMessage::RequestOffers.encode();
    assert_eq!(
        rig.host.handle_message(1, stale.as_slice()).err(),
        Some(HostError::NotConnected)
    );
    rig.host_events.clear();
    rig.guest_events.clear();
    rig.connect();
    assert_eq!(rig.guest.version(), Some(VERSION_WIN10_V5_3));
    assert!(rig.guest.offer(scsi).is_some());
    let (_h, _g) = rig.open(scsi, 2, 2);
}

#[test]
fn modify_channel_at_4_1_has_no_response() {
    let guest_config = GuestConfig {
        versions: vec![VERSION_WIN10_V4_1],
        ..GuestConfig::default()
    };
    let mut rig = Rig::new(HostConfig::default(), guest_config);
    let relid = rig.host.add_offer(scsi_offer()).unwrap();
    rig.connect();
    let (_h, _g) = rig.open(relid, 2, 2);
    rig.host_sent.clear();
    rig.guest.modify_channel(relid, 3).unwrap();
    rig.pump();
    assert!(rig.host_sent.is_empty());
    assert!(matches!(
        rig.host_events[..],
        [HostEvent::ChannelModified { target_vp: 3, .. }]
    ));
}

/// Posts raw messages as a misbehaving guest and collects the replies.
fn raw_host() -> (SharedBus, Host<SimHostPort>, u32) {
    let bus = SimBus::new(64);
    let mut host = Host::new(SimHostPort(bus.clone()), HostConfig::default());
    let relid = host.add_offer(scsi_offer()).unwrap();
    let contact = ChannelMessage::InitiateContact(InitiateContact {
        version: VERSION_WIN10_V5_3,
        target_vcpu: 0,
        interrupt_page_or_sint: 2,
        monitor_page1: 0,
        monitor_page2: 0,
    });
    host.handle_message(4, contact.encode().as_slice()).unwrap();
    host.handle_message(1, ChannelMessage::RequestOffers.encode().as_slice())
        .unwrap();
    bus.borrow_mut().to_guest.clear();
    (bus, host, relid)
}

fn replies(bus: &SharedBus) -> Vec<ChannelMessage> {
    bus.borrow_mut()
        .to_guest
        .drain(..)
        .map(|m| ChannelMessage::parse(&m.bytes).unwrap())
        .collect()
}

fn send(host: &mut Host<SimHostPort>, msg: ChannelMessage) -> Result<Option<HEvent>, HostError> {
    host.handle_message(1, msg.encode().as_slice())
}

#[test]
fn host_refuses_lying_gpadls_and_opens() {
    let (bus, mut host, relid) = raw_host();
    // Unknown connection id.
    assert_eq!(
        host.handle_message(7, ChannelMessage::RequestOffers.encode().as_slice())
            .err(),
        Some(HostError::UnknownConnectionId(7))
    );
    // A GPADL for a relid that was never offered.
    let words = GpadlWords::new(&[4096 * 2, 20, 21]).unwrap();
    let bad_relid = ChannelMessage::GpadlHeader(GpadlHeader {
        child_relid: 77,
        gpadl: 5,
        range_buflen: 24,
        range_count: 1,
        data: words,
    });
    assert_eq!(
        send(&mut host, bad_relid).err(),
        Some(HostError::BadChannel(77))
    );
    assert!(matches!(
        replies(&bus)[..],
        [ChannelMessage::GpadlCreated {
            gpadl: 5,
            status: STATUS_UNSUCCESSFUL,
            ..
        }]
    ));
    // byte_count says 3 pages but only 2 PFNs follow.
    let lying = ChannelMessage::GpadlHeader(GpadlHeader {
        child_relid: relid,
        gpadl: 6,
        range_buflen: 24,
        range_count: 1,
        data: GpadlWords::new(&[4096 * 3, 20, 21]).unwrap(),
    });
    assert!(matches!(send(&mut host, lying), Err(HostError::Gpadl(_))));
    assert!(matches!(
        replies(&bus)[..],
        [ChannelMessage::GpadlCreated {
            gpadl: 6,
            status: STATUS_UNSUCCESSFUL,
            ..
        }]
    ));
    // Pages beyond the guest's RAM (64 pages), alone or among its own.
    for (gpadl, pfns) in [(10u32, [64u64, 65]), (11, [20, 1u64 << 40])] {
        let outside = ChannelMessage::GpadlHeader(GpadlHeader {
            child_relid: relid,
            gpadl,
            range_buflen: 24,
            range_count: 1,
            data: GpadlWords::new(&[4096 * 2, pfns[0], pfns[1]]).unwrap(),
        });
        assert_eq!(
            send(&mut host, outside).err(),
            Some(HostError::OutsideGuest(gpadl))
        );
        assert!(matches!(
            replies(&bus)[..],
            [ChannelMessage::GpadlCreated {
                status: STATUS_UNSUCCESSFUL,
                ..
            }]
        ));
        assert!(host.gpadl(gpadl).is_none());
    }
    // A body for a GPADL nobody started.
    let stray = ChannelMessage::GpadlBody(GpadlBody {
        msg_number: 0,
        gpadl: 99,
        data: GpadlWords::new(&[1]).unwrap(),
    });
    assert_eq!(send(&mut host, stray).err(), Some(HostError::BadGpadl(99)));
    // A good 4-page GPADL, then opens with bad layouts.
    let good = ChannelMessage::GpadlHeader(GpadlHeader {
        child_relid: relid,
        gpadl: 7,
        range_buflen: 40,
        range_count: 1,
        data: GpadlWords::new(&[4096 * 4, 20, 21, 22, 23]).unwrap(),
    });
    assert!(matches!(
        send(&mut host, good),
        Ok(Some(HostEvent::GpadlCreated { gpadl: 7, .. }))
    ));
    // Duplicate id.
    assert_eq!(send(&mut host, good).err(), Some(HostError::BadGpadl(7)));
    replies(&bus);
    let open = |offset, gpadl| {
        ChannelMessage::OpenChannel(OpenChannel {
            child_relid: relid,
            open_id: 1,
            ring_gpadl: gpadl,
            target_vp: 0,
            downstream_page_offset: offset,
            user_data: [0; USER_DEFINED_SIZE],
        })
    };
    for (offset, gpadl, err) in [
        (1, 7, HostError::BadRingLayout),
        (3, 7, HostError::BadRingLayout),
        (u32::MAX, 7, HostError::BadRingLayout),
        (2, 8, HostError::BadGpadl(8)),
    ] {
        assert_eq!(send(&mut host, open(offset, gpadl)).err(), Some(err));
        assert!(matches!(
            replies(&bus)[..],
            [ChannelMessage::OpenChannelResult {
                status: STATUS_UNSUCCESSFUL,
                ..
            }]
        ));
    }
    // Garbage ring indices in guest memory: refused at open.
    let ram = bus.borrow().ram.clone();
    ram.header_page(20)
        .unwrap()
        .read_index
        .store(13, Ordering::Relaxed);
    assert!(matches!(
        send(&mut host, open(2, 7)),
        Err(HostError::Ring(_))
    ));
    ram.header_page(20)
        .unwrap()
        .read_index
        .store(0, Ordering::Relaxed);
    replies(&bus);
    // Finally a good open; tearing its ring GPADL down while open fails.
    assert!(matches!(
        send(&mut host, open(2, 7)),
        Ok(Some(HostEvent::ChannelOpened { .. }))
    ));
    assert!(matches!(
        replies(&bus)[..],
        [ChannelMessage::OpenChannelResult { status: 0, .. }]
    ));
    let teardown = ChannelMessage::GpadlTeardown {
        child_relid: relid,
        gpadl: 7,
    };
    assert_eq!(
        send(&mut host, teardown).err(),
        Some(HostError::BadGpadl(7))
    );
    // A second open of an open channel.
    assert_eq!(
        send(&mut host, open(2, 7)).err(),
        Some(HostError::BadChannel(relid))
    );
    // Host-only messages from the guest.
    assert_eq!(
        send(&mut host, ChannelMessage::AllOffersDelivered).err(),
        Some(HostError::Unexpected(msgtype::ALL_OFFERS_DELIVERED))
    );
    // Contact while connected.
    let contact = ChannelMessage::InitiateContact(InitiateContact {
        version: VERSION_WIN10_V5_3,
        target_vcpu: 0,
        interrupt_page_or_sint: 2,
        monitor_page1: 0,
        monitor_page2: 0,
    });
    assert_eq!(
        host.handle_message(4, contact.encode().as_slice()).err(),
        Some(HostError::AlreadyConnected)
    );
    // Garbage bytes.
    assert!(matches!(
        host.handle_message(1, &[8, 0, 0, 0, 0]),
        Err(HostError::Message(_))
    ));
}

#[test]
fn guest_refuses_unsolicited_replies() {
    let bus = SimBus::new(64);
    let mut guest = Guest::new(SimGuestPort(bus.clone()), GuestConfig::default());
    let vr = ChannelMessage::VersionResponse(VersionResponse {
        version_supported: true,
        connection_state: 0,
        msg_conn_id: 1,
    });
    assert_eq!(
        guest.handle_message(vr.encode().as_slice()).err(),
        Some(GuestError::Unexpected(msgtype::VERSION_RESPONSE))
    );
    guest.connect().unwrap();
    guest.handle_message(vr.encode().as_slice()).unwrap();
    for msg in [
        ChannelMessage::GpadlCreated {
            child_relid: 1,
            gpadl: 5,
            status: 0,
        },
        ChannelMessage::GpadlTorndown { gpadl: 5 },
        ChannelMessage::OpenChannelResult {
            child_relid: 1,
            open_id: 0,
            status: 0,
        },
        ChannelMessage::RescindChannelOffer { child_relid: 1 },
        ChannelMessage::UnloadResponse,
        ChannelMessage::Unload,
    ] {
        assert!(
            guest.handle_message(msg.encode().as_slice()).is_err(),
            "{msg:?}"
        );
    }
    // Relid 0 and duplicate relids are refused.
    let mut offer = OfferChannel {
        interface_type: class::SCSI,
        interface_instance: Guid::ZERO,
        flags: 0,
        mmio_megabytes: 0,
        user_defined: [0; USER_DEFINED_SIZE],
        sub_channel_index: 0,
        mmio_megabytes_optional: 0,
        child_relid: 0,
        monitor_id: 0xFF,
        monitor_allocated: false,
        is_dedicated_interrupt: true,
        connection_id: 1,
    };
    assert!(guest
        .handle_message(ChannelMessage::OfferChannel(offer).encode().as_slice())
        .is_err());
    offer.child_relid = 4;
    assert!(guest
        .handle_message(ChannelMessage::OfferChannel(offer).encode().as_slice())
        .is_ok());
    assert_eq!(
        guest
            .handle_message(ChannelMessage::OfferChannel(offer).encode().as_slice())
            .err(),
        Some(GuestError::DuplicateRelid(4))
    );
}

#[test]
fn hostile_host_ring_after_open_is_an_error_not_a_panic() {
    let mut rig = Rig::default();
    let relid = rig.host.add_offer(scsi_offer()).unwrap();
    rig.connect();
    let (mut host_ch, mut guest_ch) = rig.open(relid, 2, 2);
    host_ch
        .send(&OutgoingPacket::in_band(1, false, &[b"hello"]))
        .unwrap();
    // The host scribbles an out-of-range write index into the host->guest
    // ring header.
    let idx = guest_ch
        .reader()
        .memory()
        .header()
        .write_index
        .load(Ordering::Relaxed);
    assert_eq!(idx, 32);
    guest_ch
        .reader()
        .memory()
        .header()
        .write_index
        .store(4096 * 7, Ordering::Relaxed);
    assert!(guest_ch.recv().is_err());
    // And the host publishes a misaligned read index for the other ring.
    host_ch
        .reader()
        .memory()
        .header()
        .read_index
        .store(3, Ordering::Relaxed);
    assert!(guest_ch
        .send(&OutgoingPacket::in_band(2, false, &[b"x"]))
        .is_err());
}

/// Headers announcing more page-list words than the guest's budget (the
/// host's memory for GPADLs) are refused, incomplete ones included: a
/// guest cannot make the host hold 1024 GPADLs of 8190 pages each.
#[test]
fn gpadls_beyond_the_word_budget_are_refused() {
    let (bus, mut host, relid) = raw_host();
    let budget = HostConfig::default().max_gpadl_words;
    // Headers of the largest size, their bodies never sent.
    let per = 65528 / 8;
    let mut accepted = 0;
    for gpadl in 1..=(budget / per + 2) as u32 {
        let header = ChannelMessage::GpadlHeader(GpadlHeader {
            child_relid: relid,
            gpadl,
            range_buflen: 65528,
            range_count: 1,
            data: GpadlWords::new(&[4096 * (per as u64 - 1), 1, 2]).unwrap(),
        });
        match send(&mut host, header) {
            Ok(None) => accepted += 1,
            Err(HostError::TooManyGpadls) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(accepted, budget / per);
    assert!(matches!(
        replies(&bus)[..],
        [ChannelMessage::GpadlCreated {
            status: STATUS_UNSUCCESSFUL,
            ..
        }]
    ));
}
