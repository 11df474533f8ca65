//! Fuzz harnesses, shared by the cargo-fuzz targets (fuzz_targets/) and by
//! the regression test vmbus/tests/fuzz_regressions.rs, which replays the
//! kept seeds and a bounded deterministic sweep on stable `cargo test`.

use vmbus::guest::{Guest, GuestConfig, OpenParams};
use vmbus::guid::class;
use vmbus::host::{Host, HostConfig, OfferParams};
use vmbus::messages::{ChannelMessage, MAX_MESSAGE_SIZE};
use vmbus::packet::{Descriptor, Packet, DESCRIPTOR_SIZE};
use vmbus::ring::{RingReader, RingWriter, WriteResult};
use vmbus::shared_mem::{HeapRing, RingMemory};
use vmbus::sim::{SharedBus, SimBus, SimGuestPort, SimHostPort};
use vmbus::Guid;

use std::sync::atomic::Ordering;

fn u16_at(d: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([d[at], d[at + 1]])
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// Input: `u32 write_index, u32 read_index, u8 flags, u8 max_packet/8,
/// u16 ring_len`, then `ring_len` bytes of ring data, then a script of
/// 6-byte mutations `u16 target, u32 value` that a hostile peer applies to
/// the header or the data between two reads.
pub fn ring_reader(data: &[u8]) {
    if data.len() < 12 {
        return;
    }
    let (write, read, flags) = (u32_at(data, 0), u32_at(data, 4), data[8]);
    let max_packet = u32::from(data[9]) * 8;
    let ring_len = usize::from(u16_at(data, 10));
    let rest = &data[12..];
    let (body, script) = rest.split_at(ring_len.min(rest.len()));
    let words = (body.len() / 8).max(6);
    let size = words * 8;
    let ring = HeapRing::new(size);
    for (w, chunk) in ring.data().iter().zip(body.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
    let h = ring.header();
    h.write_index.store(write, Ordering::Relaxed);
    h.read_index.store(read, Ordering::Relaxed);
    h.pending_send_size
        .store(u32::from(flags >> 4) * 64, Ordering::Relaxed);

    let mut reader = match RingReader::new(&ring) {
        Ok(r) => r,
        Err(_) => {
            assert!(read as usize >= size || read % 8 != 0);
            return;
        }
    };
    if flags & 1 != 0 && max_packet > 0 {
        reader.set_max_packet(max_packet);
    }
    let mut script = script.chunks_exact(6);
    let mut buf = Vec::new();
    let mut done = false;
    // Every packet consumes at least 24 bytes, and the peer can publish at
    // most `size` bytes per mutation, so this bound is never reached unless
    // the reader loops.
    let bound = (script.len() + 2) * (size / 24 + 1);
    for _ in 0..bound {
        match reader.read(&mut buf) {
            Ok(true) => {
                assert!(buf.len() >= DESCRIPTOR_SIZE && buf.len() <= size);
                assert!(buf.len() <= max_packet as usize || flags & 1 == 0 || max_packet == 0);
                if let Ok(p) = Packet::parse(&buf) {
                    assert!(p.payload.len() <= buf.len());
                }
            }
            Ok(false) => {}
            Err(e) => {
                // Poisoned: the same error again, whatever the peer does.
                assert_eq!(reader.read(&mut buf), Err(e));
                done = true;
                break;
            }
        }
        if flags & 2 != 0 {
            let _ = reader.commit();
        }
        match script.next() {
            Some(m) => {
                let (target, value) = (usize::from(u16_at(m, 0)), u32_at(m, 2));
                match target % (words + 4) {
                    0 => h.write_index.store(value, Ordering::Relaxed),
                    1 => h.read_index.store(value, Ordering::Relaxed),
                    2 => h.interrupt_mask.store(value, Ordering::Relaxed),
                    3 => h.pending_send_size.store(value, Ordering::Relaxed),
                    t => ring.data()[t - 4]
                        .store(u64::from(value) * 0x1_0000_0001, Ordering::Relaxed),
                }
            }
            None => {
                // No more mutations: the ring must drain to empty or error.
                // The reader may still finish a hint loaded before the last
                // mutation (a peer that rewinds write_index cannot take back
                // what it published), then one fresh load: at most two
                // rings' worth of 24-byte packets.
                let mut left = 2 * (size / 24) + 2;
                while let Ok(true) = reader.read(&mut buf) {
                    left -= 1;
                    assert!(left > 0, "reader did not terminate");
                }
                done = true;
                break;
            }
        }
    }
    assert!(done, "reader looped");
    let _ = reader.commit();
    let _ = reader.end_batch();

    // A writer attaching to the same (possibly garbage) ring.
    if let Ok(mut writer) = RingWriter::new(&ring) {
        let len = usize::from(data[9]).min(body.len());
        let desc = Descriptor {
            packet_type: 6,
            offset8: 2,
            len8: (DESCRIPTOR_SIZE + len).div_ceil(8) as u16,
            flags: 0,
            transaction_id: 1,
        };
        match writer.write(&desc.to_bytes(), &[&body[..len]]) {
            Ok(WriteResult::Written { .. }) | Ok(WriteResult::Full { .. }) | Err(_) => {}
        }
        let _ = writer.request_space(64);
    }
}

fn check_message(bytes: &[u8]) {
    if let Ok(msg) = ChannelMessage::parse(bytes) {
        let enc = msg.encode();
        assert!(enc.as_slice().len() <= MAX_MESSAGE_SIZE);
        assert_eq!(ChannelMessage::parse(enc.as_slice()), Ok(msg));
    }
}

/// Delivers queued messages both ways; every message the host posts must
/// parse. Bounded: a conversation that does not settle is a bug.
fn pump(bus: &SharedBus, host: &mut Host<SimHostPort>, guest: &mut Guest<SimGuestPort>) {
    for _ in 0..10_000 {
        let to_host = bus.borrow_mut().to_host.pop_front();
        if let Some((conn, bytes)) = to_host {
            assert!(ChannelMessage::parse(&bytes).is_ok(), "guest posted junk");
            let _ = host.handle_message(conn, &bytes);
            continue;
        }
        let to_guest = bus.borrow_mut().to_guest.pop_front();
        if let Some(m) = to_guest {
            assert!(ChannelMessage::parse(&m.bytes).is_ok(), "host posted junk");
            let _ = guest.handle_message(&m.bytes);
            continue;
        }
        return;
    }
    panic!("message ping-pong did not settle");
}

/// Input: the whole input is parsed as one message (and must round-trip
/// if it parses); then it is split into records `u8 len, [len] bytes`:
/// len 1..=240 injects a raw message to the host (connection id 1, or 4 if
/// the first byte is odd) and to the guest; len 0 is followed by one
/// action byte that drives the host or guest API.
pub fn channel_message(data: &[u8]) {
    check_message(data);
    let bus = SimBus::new(48);
    let mut host = Host::new(SimHostPort(bus.clone()), HostConfig::default());
    let _ = host.add_offer(OfferParams::new(class::SCSI, Guid::from_u128(1)));
    let _ = host.add_offer(OfferParams::new(class::NETWORK, Guid::from_u128(2)));
    let mut guest = Guest::new(SimGuestPort(bus.clone()), GuestConfig::default());
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        if len == 0 {
            let Some((&action, tail)) = tail.split_first() else {
                break;
            };
            rest = tail;
            let relid = u32::from(action >> 4) % 4;
            match action & 0xF {
                0 => drop(guest.connect()),
                1 => drop(guest.request_offers()),
                2 => drop(guest.open_channel(
                    relid,
                    OpenParams {
                        send_ring_pages: 2 + u32::from(action >> 6),
                        recv_ring_pages: 2,
                        target_vp: 0,
                        user_data: [0; 120],
                    },
                )),
                3 => drop(guest.close_channel(relid)),
                4 => drop(guest.release_relid(relid)),
                5 => drop(guest.modify_channel(relid, 1)),
                6 => drop(guest.unload()),
                7 => drop(host.rescind(relid)),
                8 => drop(host.add_offer(OfferParams::new(class::HEARTBEAT, Guid::from_u128(3)))),
                _ => {}
            }
        } else {
            let n = usize::from(len).min(tail.len());
            let (msg, tail) = tail.split_at(n);
            rest = tail;
            check_message(msg);
            let conn = if msg.first().is_some_and(|b| b & 1 == 1) {
                4
            } else {
                1
            };
            let _ = host.handle_message(conn, msg);
            let _ = guest.handle_message(msg);
        }
        pump(&bus, &mut host, &mut guest);
    }
}

/// Guest memory for the storage harness: 16 pages from GPA 0.
struct StorageMemory(Vec<u8>);

impl vmbus::storvsp::GuestMemory for StorageMemory {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), vmbus::storvsp::OutsideGuest> {
        let at = usize::try_from(gpa).map_err(|_| vmbus::storvsp::OutsideGuest)?;
        let src = self
            .0
            .get(at..at.saturating_add(buf.len()))
            .ok_or(vmbus::storvsp::OutsideGuest)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), vmbus::storvsp::OutsideGuest> {
        let at = usize::try_from(gpa).map_err(|_| vmbus::storvsp::OutsideGuest)?;
        let dst = self
            .0
            .get_mut(at..at.saturating_add(data.len()))
            .ok_or(vmbus::storvsp::OutsideGuest)?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

/// Input: `u8 setup` (bit 0: the init sequence first, so requests reach
/// the SCSI disk), then records of one request each: `u8 kind` (bit 0:
/// GPA direct), `u8 pages` (0-3), `u16 offset`, `u16 short` (how far the
/// range ends before its last page's end), a `u8` per page (a page of the
/// 16-page guest, or far outside it when 0xFF), `u8 len`, then `len` bytes
/// of the request (operation = first byte mod 11, zero-padded to 64).
/// Every request gets exactly one completion, with its transaction id, in
/// order; nothing panics.
pub fn storvsp_requests(data: &[u8]) {
    use vmbus::channel::SendResult;
    use vmbus::packet::{GpaRangeSpec, OutgoingPacket, PacketKind};
    use vmbus::scsi::{Identity, MemoryDisk, ScsiDisk};
    use vmbus::storvsp::{op, StorageServer, MAX_PACKET};

    let Some((&setup, mut rest)) = data.split_first() else {
        return;
    };
    let (mut guest, mut host) = vmbus::channel::quiet_pair(16384);
    host.reader().set_max_packet(MAX_PACKET);
    let mut server = StorageServer::default();
    let mut disk = ScsiDisk::new(
        MemoryDisk::new(64, false),
        Identity {
            serial: *b"fuzz-disk-000001",
            id: 7,
        },
    );
    let mut memory = StorageMemory(vec![0; 16 * 4096]);
    let mut requests: Vec<Vec<u8>> = Vec::new();
    if setup & 1 != 0 {
        for (operation, body) in [
            (op::BEGIN_INITIALIZATION, [0u8; 2]),
            (op::QUERY_PROTOCOL_VERSION, [0x02, 0x06]),
            (op::QUERY_PROPERTIES, [0; 2]),
            (op::END_INITIALIZATION, [0; 2]),
        ] {
            let mut p = vec![0u8; 64];
            p[..4].copy_from_slice(&operation.to_le_bytes());
            p[12..14].copy_from_slice(&body);
            requests.push(p);
        }
    }
    let mut ranges: Vec<Option<(u32, u32, Vec<u64>)>> = vec![None; requests.len()];
    while rest.len() >= 6 {
        let (kind, pages) = (rest[0], usize::from(rest[1] % 4));
        let offset = u32::from(u16_at(rest, 2)) % 4096;
        let short = u32::from(u16_at(rest, 4)) % 4096;
        rest = &rest[6..];
        if rest.len() < pages + 1 {
            break;
        }
        let pfns: Vec<u64> = rest[..pages]
            .iter()
            .map(|&b| {
                if b == 0xFF {
                    1 << 40
                } else {
                    u64::from(b % 16)
                }
            })
            .collect();
        let len = usize::from(rest[pages]);
        rest = &rest[pages + 1..];
        let body = &rest[..len.min(rest.len())];
        rest = &rest[body.len()..];
        let mut p = body.to_vec();
        p.resize(64, 0);
        let operation = u32::from(p[0] % 11);
        p[..4].copy_from_slice(&operation.to_le_bytes());
        requests.push(p);
        // A range spanning exactly its pages: it ends inside the last one.
        ranges.push((kind & 1 != 0 && pages > 0).then(|| {
            let span = pages as u32 * 4096 - offset;
            let short = short.min(span - 1).min(4095);
            let count = if pages == 1 {
                span - short.min(span - 1)
            } else {
                span - short
            };
            (count.max(1), offset, pfns)
        }));
    }
    for (i, (payload, range)) in requests.iter().zip(&ranges).enumerate() {
        let id = i as u64 + 1;
        let parts: [&[u8]; 1] = [payload];
        let spec = range.as_ref().map(|(count, offset, pfns)| GpaRangeSpec {
            byte_count: *count,
            byte_offset: *offset,
            pfns,
        });
        let packet = OutgoingPacket::request(id, spec.as_slice(), &parts);
        let sent = match guest.send(&packet) {
            Ok(SendResult::Sent) => true,
            // A range the encoder refuses (pages not spanned exactly) is not
            // a request the guest can make.
            Err(_) => false,
            Ok(SendResult::Full { .. }) => panic!("the device left the ring full"),
        };
        server
            .serve(&mut host, core::slice::from_mut(&mut disk), &mut memory)
            .unwrap();
        if !sent {
            continue;
        }
        let p = guest.recv().unwrap().expect("a completion").unwrap();
        assert_eq!(p.transaction_id, id);
        assert!(matches!(p.kind, PacketKind::Completion));
        assert!(p.payload.len() >= 64);
        assert!(
            guest.recv().unwrap().is_none(),
            "one completion per request"
        );
    }
}

/// Input: `u8 setup` (bit 0: Linux's start first: NVSP version 2, the two
/// buffers, RNDIS initialize and a packet filter, so messages reach the
/// data path), then records `u8 kind, u8 len, len bytes`:
/// kind % 5 = 0: an NVSP message in band; 1: the same with a GPA range
/// (page = byte 0 of the body mod 16, or far outside the guest when 0xFF);
/// 2: the bytes after the first as RNDIS message(s) in send section (byte
/// 0 mod 4); 3: a
/// frame from the wire; 4: the guest completes transaction id `len`.
/// The device never panics, never announces a range outside the receive
/// buffer or longer than a section, and answers each request at most once.
pub fn netvsp_messages(data: &[u8]) {
    use std::collections::{BTreeMap, BTreeSet, VecDeque};
    use vmbus::channel::SendResult;
    use vmbus::netvsp::{nvsp, Gpadls, NetServer, Wire, MAX_PACKET, RECV_SECTION_SIZE};
    use vmbus::packet::{GpaRangeSpec, OutgoingPacket, PacketKind};

    struct Table(BTreeMap<u32, Vec<u64>>);
    impl Gpadls for Table {
        fn pages(&self, id: u32) -> Option<&[u64]> {
            self.0.get(&id).map(|v| v.as_slice())
        }
    }
    #[derive(Default)]
    struct FuzzWire(VecDeque<Vec<u8>>, usize);
    impl Wire for FuzzWire {
        fn transmit(&mut self, frame: &[u8]) {
            assert!(frame.len() <= 1518);
            self.1 += 1;
        }
        fn peek(&self) -> Option<&[u8]> {
            self.0.front().map(|f| f.as_slice())
        }
        fn pop(&mut self) {
            self.0.pop_front();
        }
    }
    fn message(kind: u32, fields: &[u32]) -> Vec<u8> {
        let mut m = vec![0u8; 40];
        m[..4].copy_from_slice(&kind.to_le_bytes());
        for (i, f) in fields.iter().enumerate() {
            m[4 + 4 * i..8 + 4 * i].copy_from_slice(&f.to_le_bytes());
        }
        m
    }

    let Some((&setup, mut rest)) = data.split_first() else {
        return;
    };
    let (mut guest, mut host) = vmbus::channel::quiet_pair(32768);
    host.reader().set_max_packet(MAX_PACKET);
    // Guest memory: 32 pages; the receive buffer is pages 0..8 (GPADL 1),
    // the send buffer 8..16 (GPADL 2).
    let mut memory = StorageMemory(vec![0; 32 * 4096]);
    let recv_len = 8 * 4096;
    let mut gpadls = BTreeMap::new();
    gpadls.insert(1, (0..8).collect());
    gpadls.insert(2, (8..16).collect());
    let gpadls = Table(gpadls);
    let mut server = NetServer::new([0, 0x15, 0x5d, 0, 0, 1]);
    let mut wire = FuzzWire::default();

    // (kind, payload, range, send-section write)
    type Step = (u8, Vec<u8>, Option<(u32, u64)>, Option<(usize, Vec<u8>)>);
    let mut steps: Vec<Step> = Vec::new();
    let rndis = |kind: u32, fields: &[u32]| {
        let mut m = Vec::new();
        m.extend_from_slice(&kind.to_le_bytes());
        m.extend_from_slice(&((8 + 4 * fields.len()) as u32).to_le_bytes());
        for f in fields {
            m.extend_from_slice(&f.to_le_bytes());
        }
        m
    };
    if setup & 1 != 0 {
        steps.push((
            0,
            message(nvsp::INIT, &[nvsp::VERSION_2, nvsp::VERSION_2]),
            None,
            None,
        ));
        steps.push((0, message(nvsp::SEND_RECV_BUF, &[1, 0xCAFE]), None, None));
        steps.push((0, message(nvsp::SEND_SEND_BUF, &[2, 0]), None, None));
        for m in [
            rndis(2, &[1, 1, 0, 0x4000]),
            rndis(5, &[2, 0x0001_010E, 4, 20, 0, 0x2D]),
        ] {
            let len = m.len() as u32;
            steps.push((
                2,
                message(nvsp::SEND_RNDIS_PKT, &[1, 0, len]),
                None,
                Some((0, m)),
            ));
        }
    }
    while rest.len() >= 2 {
        let (kind, len) = (rest[0] % 5, usize::from(rest[1]));
        rest = &rest[2..];
        let body = rest[..len.min(rest.len())].to_vec();
        rest = &rest[body.len()..];
        match kind {
            0 | 1 => {
                let mut p = body.clone();
                p.resize(40, 0);
                let range = (kind == 1).then(|| {
                    let page = match body.first() {
                        Some(0xFF) => 1 << 40,
                        Some(b) => u64::from(b % 16),
                        None => 0,
                    };
                    (
                        u32::from(body.get(1).copied().unwrap_or(1)).max(1) * 16,
                        page,
                    )
                });
                steps.push((kind, p, range, None));
            }
            2 => {
                let section = usize::from(body.first().copied().unwrap_or(0) % 4);
                let bytes = body.get(1..).unwrap_or(&[]).to_vec();
                let size = bytes.len() as u32;
                let m = message(nvsp::SEND_RNDIS_PKT, &[0, section as u32, size]);
                steps.push((2, m, None, Some((section, bytes))));
            }
            3 => wire.0.push_back(body),
            _ => steps.push((4, Vec::new(), Some((len as u32, 0)), None)),
        }
    }
    let mut answered = BTreeSet::new();
    let mut held: Vec<u64> = Vec::new();
    for (i, (kind, payload, range, section)) in steps.iter().enumerate() {
        let id = i as u64 + 1;
        if let Some((s, bytes)) = section {
            let at = 8 * 4096 + s * 6144;
            let n = bytes.len().min(6144);
            memory.0[at..at + n].copy_from_slice(&bytes[..n]);
        }
        let parts: [&[u8]; 1] = [payload];
        let pfns = range.map(|(_, p)| [p]);
        let spec = match (kind, range, &pfns) {
            (1, Some((count, _)), Some(pfns)) => Some(GpaRangeSpec {
                byte_count: (*count).min(4096),
                byte_offset: 0,
                pfns,
            }),
            _ => None,
        };
        let packet = if *kind == 4 {
            let done = message(nvsp::SEND_RNDIS_PKT_COMPLETE, &[1]);
            let target = range.map_or(0, |(t, _)| u64::from(t));
            let parts: [&[u8]; 1] = [&done];
            let _ = guest.send(&OutgoingPacket::completion(target, &parts));
            None
        } else {
            Some(OutgoingPacket::request(id, spec.as_slice(), &parts))
        };
        if let Some(p) = packet {
            match guest.send(&p) {
                Ok(SendResult::Sent) | Err(_) => {}
                Ok(SendResult::Full { .. }) => {}
            }
        }
        server
            .serve(&mut host, &gpadls, &mut memory, &mut wire)
            .unwrap();
        while let Some(p) = guest.recv().unwrap() {
            let p = p.unwrap();
            match p.kind {
                PacketKind::Completion => {
                    assert!(
                        p.transaction_id <= id,
                        "a completion for a request not sent"
                    );
                    assert!(answered.insert(p.transaction_id), "answered twice");
                }
                PacketKind::TransferPages { pageset_id, .. } => {
                    assert_eq!(pageset_id, nvsp::RECV_BUFFER_ID);
                    for r in p.kind.transfer_ranges() {
                        assert!(r.byte_count <= RECV_SECTION_SIZE);
                        assert!((r.byte_offset + r.byte_count) as usize <= recv_len);
                    }
                    held.push(p.transaction_id);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // The guest gives every other receive back.
        if held.len() > 1 {
            let id = held.remove(0);
            let done = message(nvsp::SEND_RNDIS_PKT_COMPLETE, &[1]);
            let parts: [&[u8]; 1] = [&done];
            let _ = guest.send(&OutgoingPacket::completion(id, &parts));
        }
    }
}
