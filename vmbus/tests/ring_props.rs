//! Property tests: any sequence of writes and reads delivers packets intact
//! and in order, and "full" is reported exactly when the ring model says so.

use std::collections::VecDeque;
use std::sync::Arc;

use proptest::prelude::*;
use vmbus::packet::{OutgoingPacket, Packet, PacketKind};
use vmbus::ring::{init_ring_header, RingReader, RingWriter, WriteResult, TRAILER_SIZE};
use vmbus::shared_mem::{HeapRing, RingMemory};

#[derive(Debug, Clone)]
enum Op {
    /// Write a packet with this payload length, split at `split`.
    Write { len: usize, split: usize },
    /// Read up to n packets.
    Read(usize),
    /// Publish the read index.
    Commit,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            4 => (0usize..700, any::<usize>()).prop_map(|(len, split)| Op::Write { len, split }),
            3 => (1usize..6).prop_map(Op::Read),
            1 => Just(Op::Commit),
        ],
        1..300,
    )
}

fn payload(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id as usize * 31 + i) as u8).collect()
}

fn frame(len: usize) -> u32 {
    ((16 + len).next_multiple_of(8) + TRAILER_SIZE as usize) as u32
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn packets_arrive_intact_and_in_order(ring_words in 16usize..400, ops in ops()) {
        let ring = Arc::new(HeapRing::new(ring_words * 8));
        init_ring_header(ring.header());
        let size = (ring_words * 8) as u32;
        let mut w = RingWriter::new(ring.clone()).unwrap();
        let mut r = RingReader::new(ring.clone()).unwrap();
        // Model: packets written and not yet read; bytes read but not
        // published; bytes in use from the writer's point of view.
        let mut unread: VecDeque<(u64, usize)> = VecDeque::new();
        let mut unpublished = 0u32;
        let mut in_use = 0u32;
        let mut next_id = 0u64;
        let mut buf = Vec::new();
        for op in ops {
            match op {
                Op::Write { len, split } => {
                    let data = payload(next_id, len);
                    let at = if len == 0 { 0 } else { split % (len + 1) };
                    let pkt_parts: [&[u8]; 2] = [&data[..at], &data[at..]];
                    let pkt = OutgoingPacket::in_band(next_id, next_id.is_multiple_of(2), &pkt_parts);
                    let header = pkt.encode_header().unwrap();
                    let need = frame(len);
                    match w.write(header.as_slice(), pkt.payload) {
                        Ok(WriteResult::Written { .. }) => {
                            prop_assert!(size - in_use > need);
                            in_use += need;
                            unread.push_back((next_id, len));
                            next_id += 1;
                        }
                        Ok(WriteResult::Full { needed }) => {
                            prop_assert_eq!(needed, need);
                            prop_assert!(size - in_use <= need);
                        }
                        Err(e) => {
                            // Only a packet that can never fit.
                            prop_assert!(need >= size, "{:?}", e);
                        }
                    }
                }
                Op::Read(n) => {
                    for _ in 0..n {
                        let got = r.read(&mut buf).unwrap();
                        match unread.pop_front() {
                            None => prop_assert!(!got),
                            Some((id, len)) => {
                                prop_assert!(got);
                                let p = Packet::parse(&buf).unwrap();
                                prop_assert_eq!(p.kind, PacketKind::InBand);
                                prop_assert_eq!(p.transaction_id, id);
                                prop_assert_eq!(p.completion_requested(), id.is_multiple_of(2));
                                prop_assert_eq!(&p.payload[..len], &payload(id, len)[..]);
                                prop_assert!(p.payload[len..].iter().all(|&b| b == 0));
                                unpublished += frame(len);
                            }
                        }
                    }
                }
                Op::Commit => {
                    r.commit().unwrap();
                    in_use -= unpublished;
                    unpublished = 0;
                }
            }
            prop_assert_eq!(w.free().unwrap(), size - in_use);
        }
        // Drain everything at the end.
        while let Some((id, len)) = unread.pop_front() {
            prop_assert!(r.read(&mut buf).unwrap());
            let p = Packet::parse(&buf).unwrap();
            prop_assert_eq!(p.transaction_id, id);
            prop_assert_eq!(&p.payload[..len], &payload(id, len)[..]);
        }
        prop_assert!(!r.read(&mut buf).unwrap());
    }
}

/// Two threads, random sizes, many wrap-arounds.
#[test]
fn two_threads_deliver_in_order() {
    let ring = Arc::new(HeapRing::new(4096));
    init_ring_header(ring.header());
    let mut w = RingWriter::new(ring.clone()).unwrap();
    let mut r = RingReader::new(ring).unwrap();
    const N: u64 = 20_000;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut next = 0u64;
        while next < N {
            if r.read(&mut buf).unwrap() {
                let p = Packet::parse(&buf).unwrap();
                assert_eq!(p.transaction_id, next);
                let len = (next as usize * 7919) % 900;
                assert_eq!(&p.payload[..len], &payload(next, len)[..]);
                next += 1;
                if next.is_multiple_of(3) {
                    r.commit().unwrap();
                }
            } else {
                r.commit().unwrap();
                std::thread::yield_now();
            }
        }
        r.commit().unwrap();
    });
    for id in 0..N {
        let len = (id as usize * 7919) % 900;
        let data = payload(id, len);
        let parts: [&[u8]; 1] = [&data];
        let pkt = OutgoingPacket::in_band(id, false, &parts);
        let header = pkt.encode_header().unwrap();
        loop {
            match w.write(header.as_slice(), &parts).unwrap() {
                WriteResult::Written { .. } => break,
                WriteResult::Full { .. } => std::thread::yield_now(),
            }
        }
    }
    reader.join().unwrap();
}
