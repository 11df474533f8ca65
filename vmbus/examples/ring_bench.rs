//! Ring throughput between two threads vs. a plain memcpy of the same bytes.
//!
//! Run: `cargo run -p vmbus --release --example ring_bench`
//!
//! One thread writes in-band packets of 64 B, 1 KiB and 64 KiB payload into
//! a 1 MiB ring, the other reads (copies) them out, checks the sequence, and
//! publishes its read index every 16 packets or 128 KiB. The baseline copies the same
//! payload bytes once with `copy_from_slice` through a 1 MiB window on one
//! thread. Each figure is the best of three 300 ms runs. The ring moves every byte twice (into shared memory, out of it)
//! and bounces cache lines between cores, so a ratio near 0.5 would mean
//! "as fast as two memcpys".

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmbus::packet::{Descriptor, DESCRIPTOR_SIZE};
use vmbus::ring::{init_ring_header, RingReader, RingWriter, WriteResult};
use vmbus::shared_mem::{HeapRing, RingMemory};

const RING_BYTES: usize = 1 << 20;
const RUN: Duration = Duration::from_millis(300);
/// Each measurement is repeated and the best kept, to filter out time the
/// machine spent on other work.
const TRIES: usize = 3;

/// Spin briefly, then give the CPU away: with two vCPUs a peer thread that
/// was descheduled must get to run.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 1024 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn ring_run(payload: usize) -> (u64, Duration) {
    let ring = Arc::new(HeapRing::new(RING_BYTES));
    init_ring_header(ring.header());
    let mut writer = RingWriter::new(ring.clone()).expect("writer");
    let mut reader = RingReader::new(ring).expect("reader");
    let stop = Arc::new(AtomicBool::new(false));

    let consumer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::with_capacity(payload + 64);
            let mut expected = 0u64;
            let mut since_commit = 0;
            let mut idle = 0u32;
            loop {
                if reader.read(&mut buf).expect("read") {
                    let desc = Descriptor::from_bytes(buf[..DESCRIPTOR_SIZE].try_into().unwrap());
                    assert_eq!(desc.transaction_id, expected, "out of order");
                    black_box(&buf);
                    expected += 1;
                    since_commit += 1;
                    // Hand space back every 16 packets or 1/8 of the ring.
                    if since_commit == 16 || since_commit * payload >= RING_BYTES / 8 {
                        reader.commit().expect("commit");
                        since_commit = 0;
                    }
                } else {
                    reader.commit().expect("commit");
                    since_commit = 0;
                    if stop.load(Ordering::Acquire) && reader.available().expect("avail") == 0 {
                        return expected;
                    }
                    backoff(&mut idle);
                    continue;
                }
                idle = 0;
            }
        })
    };

    let data = vec![0x5Au8; payload];
    let len8 = (DESCRIPTOR_SIZE + payload).div_ceil(8) as u16;
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..64 {
            let desc = Descriptor {
                packet_type: vmbus::packet::TYPE_DATA_INBAND,
                offset8: 2,
                len8,
                flags: 0,
                transaction_id: sent,
            }
            .to_bytes();
            let mut spins = 0u32;
            loop {
                match writer.write(&desc, &[&data]).expect("write") {
                    WriteResult::Written { .. } => break,
                    WriteResult::Full { .. } => backoff(&mut spins),
                }
            }
            sent += 1;
        }
    }
    stop.store(true, Ordering::Release);
    let received = consumer.join().expect("consumer");
    let elapsed = start.elapsed();
    assert_eq!(received, sent);
    (sent, elapsed)
}

fn memcpy_run(payload: usize) -> (u64, Duration) {
    // One allocation, the copy's destination half a page off from the
    // source's page offset: memcpy speed depends on their relative
    // alignment (4 KiB aliasing), and this keeps it the same every run.
    let mut buf = vec![0x5Au8; 2 * RING_BYTES + 4096];
    let (src, dst) = buf.split_at_mut(RING_BYTES + 2048);
    let start = Instant::now();
    let mut copied = 0u64;
    let mut at = 0usize;
    while start.elapsed() < RUN {
        for _ in 0..64 {
            if at + payload > RING_BYTES {
                at = 0;
            }
            dst[at..at + payload].copy_from_slice(black_box(&src[at..at + payload]));
            black_box(&dst);
            at += payload.next_multiple_of(8);
            copied += 1;
        }
    }
    (copied, start.elapsed())
}

fn main() {
    println!(
        "{:>8} {:>14} {:>10} {:>14} {:>10} {:>7}",
        "payload", "ring pkts/s", "ring GB/s", "memcpy pkts/s", "memcpy GB/s", "ratio"
    );
    for payload in [64usize, 1024, 64 * 1024] {
        let best = |run: fn(usize) -> (u64, Duration)| {
            (0..TRIES)
                .map(|_| {
                    let (n, t) = run(payload);
                    n as f64 / t.as_secs_f64()
                })
                .fold(0.0, f64::max)
        };
        let ring_pps = best(ring_run);
        let copy_pps = best(memcpy_run);
        let ring_gbs = ring_pps * payload as f64 / 1e9;
        let copy_gbs = copy_pps * payload as f64 / 1e9;
        println!(
            "{:>8} {:>14.0} {:>10.2} {:>14.0} {:>10.2} {:>7.2}",
            payload,
            ring_pps,
            ring_gbs,
            copy_pps,
            copy_gbs,
            ring_gbs / copy_gbs
        );
    }
}
