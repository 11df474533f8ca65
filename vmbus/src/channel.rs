//! An open channel's data path: one inbound and one outbound ring, and the
//! event that tells the peer to look at them.
//!
//! The same type serves both sides: the host reads the guest->host ring and
//! writes the host->guest ring; the guest the other way round. Signalling
//! follows the ring rules (see [`crate::ring`]): a send signals only when
//! the ring went from empty to non-empty and the reader is not masked; a
//! receive signals only when the writer waits for space it now has.

use alloc::vec::Vec;

use crate::packet::{OutgoingPacket, Packet, PacketError};
use crate::ring::{RingError, RingReader, RingWriter, WriteResult};
use crate::shared_mem::RingMemory;

/// Signals the peer that a ring of this channel needs attention
/// (guest: HvSignalEvent on the offer's connection id; host: set the
/// channel's event flag in the guest's SIEF page and raise the SINT).
pub trait Notify {
    /// Signals once.
    fn notify(&mut self);
}

/// Errors of the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// The ring is corrupt (the channel is unusable) or the packet can
    /// never fit.
    Ring(RingError),
    /// A packet to send is malformed (nothing was written).
    Packet(PacketError),
}

impl From<RingError> for ChannelError {
    fn from(e: RingError) -> Self {
        ChannelError::Ring(e)
    }
}

/// Result of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    /// Written (and the peer signalled if the rules asked for it).
    Sent,
    /// The ring is full; the reader was asked to signal once `needed`
    /// bytes are free. Retry after that signal.
    Full {
        /// Bytes needed.
        needed: u32,
    },
}

/// An open channel.
pub struct Channel<R: RingMemory, N: Notify> {
    inbound: RingReader<R>,
    outbound: RingWriter<R>,
    notifier: N,
    buf: Vec<u8>,
    /// A [`Channel::send_quiet`] owes the peer a signal.
    owed: bool,
    /// The reader polls: the inbound interrupt mask stays set.
    polled: bool,
}

impl<R: RingMemory, N: Notify> Channel<R, N> {
    /// Builds a channel from its two rings and the peer's notifier.
    pub fn new(inbound: RingReader<R>, outbound: RingWriter<R>, notifier: N) -> Self {
        Self {
            inbound,
            outbound,
            notifier,
            buf: Vec::new(),
            owed: false,
            polled: false,
        }
    }

    /// Starts or stops polling the inbound ring: while polled its interrupt
    /// mask stays set (the peer does not signal; the caller must look at
    /// the ring again by itself). Stopping unmasks and returns whether
    /// packets arrived meanwhile, unsignalled: the caller reads them.
    pub fn set_polled(&mut self, polled: bool) -> Result<bool, ChannelError> {
        self.polled = polled;
        if polled {
            self.inbound.begin_batch();
            return Ok(false);
        }
        Ok(self.inbound.end_batch()?)
    }

    /// Whether the inbound ring is polled ([`Channel::set_polled`]).
    pub fn polled(&self) -> bool {
        self.polled
    }

    /// Replaces the notifier (after MODIFYCHANNEL moved the target VP).
    pub fn set_notifier(&mut self, notifier: N) {
        self.notifier = notifier;
    }

    /// The inbound ring's reader.
    pub fn reader(&mut self) -> &mut RingReader<R> {
        &mut self.inbound
    }

    /// The outbound ring's writer.
    pub fn writer(&mut self) -> &mut RingWriter<R> {
        &mut self.outbound
    }

    /// Sends a packet, signalling the peer if needed. When the ring is full
    /// the peer is asked (via `pending_send_size`) to signal when it has
    /// room, unless it already has, in which case the write is retried.
    pub fn send(&mut self, packet: &OutgoingPacket<'_>) -> Result<SendResult, ChannelError> {
        let header = packet.encode_header().map_err(ChannelError::Packet)?;
        // At most one retry: a hostile reader flipping its index must not
        // keep us here.
        for attempt in 0..2 {
            match self.outbound.write(header.as_slice(), packet.payload)? {
                WriteResult::Written { signal } => {
                    self.outbound.clear_pending_send();
                    // A signal a quiet send still owes goes now too.
                    if signal || core::mem::take(&mut self.owed) {
                        self.notifier.notify();
                    }
                    return Ok(SendResult::Sent);
                }
                WriteResult::Full { needed } => {
                    if attempt > 0 || !self.outbound.request_space(needed)? {
                        return Ok(SendResult::Full { needed });
                    }
                }
            }
        }
        Ok(SendResult::Full { needed: 0 })
    }

    /// Sends a packet like [`Channel::send`] but keeps the signal the ring
    /// rules ask for until [`Channel::flush`]: a batch of packets costs the
    /// peer one signal. A full ring signals what is owed at once (the
    /// reader must wake to make room).
    pub fn send_quiet(&mut self, packet: &OutgoingPacket<'_>) -> Result<SendResult, ChannelError> {
        let header = packet.encode_header().map_err(ChannelError::Packet)?;
        // At most one retry, as in `send`.
        for attempt in 0..2 {
            match self.outbound.write(header.as_slice(), packet.payload)? {
                WriteResult::Written { signal } => {
                    self.outbound.clear_pending_send();
                    self.owed |= signal;
                    return Ok(SendResult::Sent);
                }
                WriteResult::Full { needed } => {
                    self.flush();
                    if attempt > 0 || !self.outbound.request_space(needed)? {
                        return Ok(SendResult::Full { needed });
                    }
                }
            }
        }
        Ok(SendResult::Full { needed: 0 })
    }

    /// Signals the peer if a [`Channel::send_quiet`] owes it.
    pub fn flush(&mut self) {
        if core::mem::take(&mut self.owed) {
            self.notifier.notify();
        }
    }

    /// Receives one packet: copies it out, hands the space back (signalling
    /// a waiting writer), then parses the copy. `Ok(None)` if the ring is
    /// empty; `Ok(Some(Err(_)))` for a well-framed packet with bad contents.
    pub fn recv(&mut self) -> Result<Option<Result<Packet<'_>, PacketError>>, ChannelError> {
        if !self.inbound.read(&mut self.buf)? {
            return Ok(None);
        }
        if self.inbound.commit()? {
            self.notifier.notify();
        }
        Ok(Some(Packet::parse(&self.buf)))
    }

    /// Drains up to `max` packets with the inbound interrupt masked, handing
    /// each to `f`, and publishes the read index once per pass. Returns the
    /// number of packets handled. Unmasks before returning and re-checks, so
    /// a packet that arrived unsignalled is not stranded; a polled channel
    /// stays masked (its caller looks again).
    pub fn recv_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(Result<Packet<'_>, PacketError>),
    ) -> Result<usize, ChannelError> {
        let mut n = 0;
        loop {
            if !self.polled {
                self.inbound.begin_batch();
            }
            while n < max && self.inbound.read(&mut self.buf)? {
                f(Packet::parse(&self.buf));
                n += 1;
            }
            if self.inbound.commit()? {
                self.notifier.notify();
            }
            if self.polled {
                return Ok(n);
            }
            let more = self.inbound.end_batch()?;
            if !more || n >= max {
                return Ok(n);
            }
        }
    }
}

/// A connected pair of channels on heap rings of `size` bytes each way,
/// neither signalling (the device tests and the fuzz harnesses drive both
/// ends by hand). Panics if `size` is not a ring size (a multiple of 8).
pub fn quiet_pair(
    size: usize,
) -> (
    Channel<alloc::sync::Arc<crate::shared_mem::HeapRing>, Quiet>,
    Channel<alloc::sync::Arc<crate::shared_mem::HeapRing>, Quiet>,
) {
    use crate::ring::init_ring_header;
    use crate::shared_mem::HeapRing;
    use alloc::sync::Arc;
    let a_to_b = Arc::new(HeapRing::new(size));
    let b_to_a = Arc::new(HeapRing::new(size));
    init_ring_header(a_to_b.header());
    init_ring_header(b_to_a.header());
    let a = Channel::new(
        RingReader::new(b_to_a.clone()).unwrap(),
        RingWriter::new(a_to_b.clone()).unwrap(),
        Quiet,
    );
    let b = Channel::new(
        RingReader::new(a_to_b).unwrap(),
        RingWriter::new(b_to_a).unwrap(),
        Quiet,
    );
    (a, b)
}

/// A notifier that does nothing (tests and fuzzing).
pub struct Quiet;

impl Notify for Quiet {
    fn notify(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::PacketKind;
    use crate::ring::init_ring_header;
    use crate::shared_mem::HeapRing;
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicU32, Ordering};

    struct Count(Arc<AtomicU32>);
    impl Notify for Count {
        fn notify(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    type Ch = Channel<Arc<HeapRing>, Count>;

    fn pair(size: usize) -> (Ch, Ch, Arc<AtomicU32>, Arc<AtomicU32>) {
        let a_to_b = Arc::new(HeapRing::new(size));
        let b_to_a = Arc::new(HeapRing::new(size));
        init_ring_header(a_to_b.header());
        init_ring_header(b_to_a.header());
        let (sig_b, sig_a) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let a = Channel::new(
            RingReader::new(b_to_a.clone()).unwrap(),
            RingWriter::new(a_to_b.clone()).unwrap(),
            Count(sig_b.clone()),
        );
        let b = Channel::new(
            RingReader::new(a_to_b).unwrap(),
            RingWriter::new(b_to_a).unwrap(),
            Count(sig_a.clone()),
        );
        (a, b, sig_b, sig_a)
    }

    #[test]
    fn request_and_completion() {
        let (mut a, mut b, sig_b, sig_a) = pair(4096);
        assert_eq!(
            a.send(&OutgoingPacket::in_band(77, true, &[b"ping"])),
            Ok(SendResult::Sent)
        );
        assert_eq!(sig_b.load(Ordering::Relaxed), 1);
        let p = b.recv().unwrap().unwrap().unwrap();
        assert_eq!(p.kind, PacketKind::InBand);
        assert!(p.completion_requested());
        let id = p.transaction_id;
        b.send(&OutgoingPacket::completion(id, &[b"pong"])).unwrap();
        assert_eq!(sig_a.load(Ordering::Relaxed), 1);
        let p = a.recv().unwrap().unwrap().unwrap();
        assert_eq!((p.kind, p.transaction_id), (PacketKind::Completion, 77));
        assert_eq!(&p.payload[..4], b"pong");
        assert!(a.recv().unwrap().is_none());
    }

    #[test]
    fn a_quiet_batch_signals_once() {
        let (mut a, mut b, sig_b, _sig_a) = pair(8192);
        for i in 0..10 {
            assert_eq!(
                a.send_quiet(&OutgoingPacket::in_band(i, false, &[b"batch"])),
                Ok(SendResult::Sent)
            );
        }
        assert_eq!(sig_b.load(Ordering::Relaxed), 0, "nothing before the flush");
        a.flush();
        a.flush();
        assert_eq!(sig_b.load(Ordering::Relaxed), 1, "one signal for the batch");
        assert_eq!(b.recv_batch(usize::MAX, |p| assert!(p.is_ok())), Ok(10));
        // A full ring pays what it owes before it waits.
        let payload = [7u8; 200];
        let full = loop {
            match a.send_quiet(&OutgoingPacket::in_band(0, false, &[&payload])) {
                Ok(SendResult::Sent) => {}
                other => break other,
            }
        };
        assert!(matches!(full, Ok(SendResult::Full { .. })));
        assert_eq!(sig_b.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn full_ring_then_signal_when_drained() {
        let (mut a, mut b, _sig_b, sig_a) = pair(1024);
        let payload = [7u8; 200];
        let mut sent = 0;
        let needed = loop {
            match a
                .send(&OutgoingPacket::in_band(sent, false, &[&payload]))
                .unwrap()
            {
                SendResult::Sent => sent += 1,
                SendResult::Full { needed } => break needed,
            }
        };
        assert_eq!(needed, 16 + 200 + 8);
        let mut got = 0;
        let n = b
            .recv_batch(usize::MAX, |p| {
                assert_eq!(p.unwrap().transaction_id, got);
                got += 1;
            })
            .unwrap();
        assert_eq!(n as u64, sent);
        // The blocked writer (a) was told there is room again.
        assert_eq!(sig_a.load(Ordering::Relaxed), 1);
        assert_eq!(
            a.send(&OutgoingPacket::in_band(0, false, &[&payload]))
                .unwrap(),
            SendResult::Sent
        );
    }

    #[test]
    fn a_polled_reader_gets_no_signals_and_stopping_finds_what_came_unsignalled() {
        let (mut a, mut b, sig_b, _sig_a) = pair(8192);
        assert_eq!(b.set_polled(true), Ok(false));
        assert!(b.polled());
        for i in 0..5 {
            a.send(&OutgoingPacket::in_band(i, false, &[b"polled"]))
                .unwrap();
            assert_eq!(b.recv_batch(usize::MAX, |p| assert!(p.is_ok())), Ok(1));
        }
        a.send(&OutgoingPacket::in_band(9, false, &[b"late"]))
            .unwrap();
        assert_eq!(sig_b.load(Ordering::Relaxed), 0, "the mask stayed set");
        // The packet that came while polled is reported on stopping.
        assert_eq!(b.set_polled(false), Ok(true));
        assert_eq!(b.recv_batch(usize::MAX, |p| assert!(p.is_ok())), Ok(1));
        assert_eq!(b.set_polled(false), Ok(false));
        // Unpolled again: an empty ring's next packet signals.
        a.send(&OutgoingPacket::in_band(10, false, &[b"signal"]))
            .unwrap();
        assert_eq!(sig_b.load(Ordering::Relaxed), 1);
    }
}
