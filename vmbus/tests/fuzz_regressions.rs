//! Replays the fuzz harnesses on stable `cargo test`: every kept seed under
//! vmbus/fuzz/regressions/<target>/ (inputs that once found a bug or that
//! reach deep states), then a bounded proptest sweep of random inputs.

#[allow(dead_code)] // each harness is used by one test
#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

use proptest::prelude::*;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        eprintln!("replaying {}", path.display());
        run(&data);
        n += 1;
    }
    n
}

#[test]
fn ring_reader_seeds() {
    assert!(replay("ring_reader", harness::ring_reader) > 0);
}

#[test]
fn channel_message_seeds() {
    assert!(replay("channel_message", harness::channel_message) > 0);
}

#[test]
fn netvsp_messages_seeds() {
    assert!(replay("netvsp_messages", harness::netvsp_messages) > 0);
}

#[test]
fn storvsp_requests_seeds() {
    assert!(replay("storvsp_requests", harness::storvsp_requests) > 0);
}

/// A record stream for the channel-message harness built from valid
/// messages with small fields, so random runs reach open channels.
fn records() -> impl Strategy<Value = Vec<u8>> {
    let action = any::<u8>().prop_map(|a| vec![0, a]);
    let raw = prop::collection::vec(any::<u8>(), 1..64).prop_map(|m| {
        let mut v = vec![m.len() as u8];
        v.extend(m);
        v
    });
    prop::collection::vec(prop_oneof![3 => action, 1 => raw], 0..40).prop_map(|rs| rs.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn ring_reader_random(data in prop::collection::vec(any::<u8>(), 0..600)) {
        harness::ring_reader(&data);
    }

    #[test]
    fn ring_reader_random_small_ring(
        write in 0u32..96, read in 0u32..96, flags: u8, maxp: u8,
        body in prop::collection::vec(any::<u8>(), 48..96),
        script in prop::collection::vec(any::<u8>(), 0..120),
    ) {
        // Small, mostly aligned indices so packets actually get framed.
        let mut d = Vec::new();
        d.extend((write & !7).to_le_bytes());
        d.extend((read & !7).to_le_bytes());
        d.push(flags);
        d.push(maxp);
        d.extend((body.len() as u16).to_le_bytes());
        d.extend(&body);
        d.extend(&script);
        harness::ring_reader(&d);
    }

    #[test]
    fn storvsp_requests_random(data in prop::collection::vec(any::<u8>(), 0..400)) {
        harness::storvsp_requests(&data);
    }

    #[test]
    fn netvsp_messages_random(data in prop::collection::vec(any::<u8>(), 0..600)) {
        harness::netvsp_messages(&data);
    }

    #[test]
    fn channel_message_random(data in prop::collection::vec(any::<u8>(), 0..400)) {
        harness::channel_message(&data);
    }

    #[test]
    fn channel_message_records(data in records()) {
        harness::channel_message(&data);
    }
}
