//! A peer that changes shared memory at any time: the reader and writer get
//! errors (or garbage packets they can reject), never a panic, a hang or an
//! access outside the ring.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use vmbus::packet::{OutgoingPacket, Packet};
use vmbus::ring::{init_ring_header, RingError, RingReader, RingWriter, WriteResult};
use vmbus::shared_mem::{HeapRing, RingMemory};

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A thread scribbles over header and data while this thread reads and
/// writes as fast as it can. Every call must return; errors are fine.
#[test]
fn concurrent_scribbler() {
    for seed in 1..=4u64 {
        let ring = Arc::new(HeapRing::new(2048));
        init_ring_header(ring.header());
        let stop = Arc::new(AtomicBool::new(false));
        let scribbler = {
            let (ring, stop) = (ring.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                while !stop.load(Ordering::Relaxed) {
                    let v = rng.next();
                    let h = ring.header();
                    match v % 8 {
                        // Mostly plausible values, sometimes wild ones.
                        0 => h
                            .write_index
                            .store(((v >> 8) as u32 % 2100) & !7, Ordering::Relaxed),
                        1 => h
                            .read_index
                            .store(((v >> 8) as u32 % 2100) & !7, Ordering::Relaxed),
                        2 => h.write_index.store((v >> 32) as u32, Ordering::Relaxed),
                        3 => h
                            .pending_send_size
                            .store((v >> 40) as u32, Ordering::Relaxed),
                        _ => {
                            let w = (v >> 16) as usize % ring.data().len();
                            ring.data()[w].store(rng.next(), Ordering::Relaxed);
                        }
                    }
                    std::hint::spin_loop();
                }
            })
        };
        let deadline = Instant::now() + Duration::from_millis(150);
        let (mut reads, mut errors) = (0u64, 0u64);
        let mut buf = Vec::new();
        while Instant::now() < deadline {
            // Fresh endpoints each round since errors poison them.
            let (Ok(mut r), Ok(mut w)) = (RingReader::new(&*ring), RingWriter::new(&*ring)) else {
                errors += 1;
                continue;
            };
            for i in 0..50u64 {
                let payload = [i as u8; 40];
                let parts: [&[u8]; 1] = [&payload];
                let pkt = OutgoingPacket::in_band(i, true, &parts);
                let header = pkt.encode_header().unwrap();
                match w.write(header.as_slice(), &parts) {
                    Ok(WriteResult::Written { .. } | WriteResult::Full { .. }) => {}
                    Err(_) => errors += 1,
                }
                match r.read(&mut buf) {
                    Ok(true) => {
                        reads += 1;
                        assert!(buf.len() <= 2048);
                        let _ = Packet::parse(&buf);
                        let _ = r.commit();
                    }
                    Ok(false) => {}
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        scribbler.join().unwrap();
        assert!(reads + errors > 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Whatever the ring holds and whatever the indices say, the reader
    /// returns at most size/24 packets and then empty or an error.
    #[test]
    fn arbitrary_ring_contents(
        words in prop::collection::vec(any::<u64>(), 6..200),
        write in any::<u32>(),
        read in any::<u32>(),
        aligned in any::<bool>(),
    ) {
        let size = words.len() * 8;
        let ring = HeapRing::new(size);
        for (d, w) in ring.data().iter().zip(&words) {
            d.store(*w, Ordering::Relaxed);
        }
        let (write, read) = if aligned {
            ((write % size as u32) & !7, (read % size as u32) & !7)
        } else {
            (write, read)
        };
        ring.header().write_index.store(write, Ordering::Relaxed);
        ring.header().read_index.store(read, Ordering::Relaxed);
        let mut r = match RingReader::new(&ring) {
            Ok(r) => r,
            Err(e) => {
                prop_assert_eq!(e, RingError::BadReadIndex(read));
                return Ok(());
            }
        };
        let mut buf = Vec::new();
        let mut n = 0;
        loop {
            match r.read(&mut buf) {
                Ok(true) => {
                    n += 1;
                    prop_assert!(n <= size / 24);
                    prop_assert!(buf.len() <= size);
                }
                Ok(false) => break,
                Err(e) => {
                    // Poisoned for good, even if the peer repairs things.
                    ring.header().write_index.store(read, Ordering::Relaxed);
                    prop_assert_eq!(r.read(&mut buf), Err(e));
                    prop_assert_eq!(r.commit(), Err(e));
                    break;
                }
            }
        }
    }

    /// A writer facing a lying read index reports it and writes nothing.
    #[test]
    fn writer_rejects_bad_read_index(read in any::<u32>()) {
        let ring = HeapRing::new(512);
        init_ring_header(ring.header());
        let mut w = RingWriter::new(&ring).unwrap();
        ring.header().read_index.store(read, Ordering::Relaxed);
        let r = w.write(&[0u8; 16], &[]);
        if read >= 512 || read % 8 != 0 {
            prop_assert_eq!(r, Err(RingError::BadReadIndex(read)));
            prop_assert_eq!(ring.header().write_index.load(Ordering::Relaxed), 0);
            prop_assert!(ring.data().iter().all(|w| w.load(Ordering::Relaxed) == 0));
        } else {
            prop_assert!(r.is_ok());
        }
    }
}
