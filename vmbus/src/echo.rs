//! The echo device: this project's diagnostic channel (not a Hyper-V
//! device), which the boot tests and benchmarks of the running system use
//! to exercise a real channel between a guest and the root.
//!
//! Protocol: in-band packets whose payload starts with a little-endian u32
//! operation.
//! - [`OP_ECHO`]: the packet goes back unchanged, with its transaction id.
//! - [`OP_COUNTER`]: answered with [`OP_COUNTER`] and a u64 the host
//!   supplies (the root: world switches of all logical processors so far),
//!   so a guest can count the switches its traffic costs.
//!
//! Anything else (another operation, a payload over [`MAX_PAYLOAD`], a
//! packet of another kind) is refused: counted, never answered. Echoes wait
//! in a bounded queue while the guest's ring is full; the device reads no
//! more until they are sent, so a guest that never reads its replies only
//! stops its own traffic.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::channel::{Channel, ChannelError, Notify, SendResult};
use crate::packet::{OutgoingPacket, PacketKind};
use crate::shared_mem::RingMemory;

/// Send the payload back.
pub const OP_ECHO: u32 = 1;
/// Answer with the host's counter.
pub const OP_COUNTER: u32 = 2;
/// Longest payload echoed.
pub const MAX_PAYLOAD: usize = 4096;
/// Longest packet the device's reader accepts (descriptor included): a
/// longer one breaks the channel, never the host's memory.
pub const MAX_PACKET: u32 = MAX_PAYLOAD as u32 + 64;
/// Echoes waiting for room in the guest's ring, at most.
const QUEUE: usize = 64;
/// Packets read per call of [`EchoServer::serve`] (the rest wait for the
/// next call, which the caller makes at least periodically).
const PER_CALL: usize = 1024;

/// The device's state for one open channel.
#[derive(Debug, Default)]
pub struct EchoServer {
    waiting: VecDeque<(u64, Vec<u8>)>,
    /// Packets answered.
    pub answered: u64,
    /// Packets refused.
    pub refused: u64,
}

impl EchoServer {
    /// Sends what waits and answers what the guest sent, until its ring is
    /// empty, ours is full, or [`PER_CALL`] packets were read. `counter` is
    /// read for each [`OP_COUNTER`]. An error means the channel is broken
    /// (a corrupt ring): the caller stops using it.
    pub fn serve<R: RingMemory, N: Notify>(
        &mut self,
        channel: &mut Channel<R, N>,
        mut counter: impl FnMut() -> u64,
    ) -> Result<(), ChannelError> {
        // Replies go quietly; the guest gets one signal for all of them.
        let served = self.serve_quietly(channel, &mut counter);
        channel.flush();
        served
    }

    fn serve_quietly<R: RingMemory, N: Notify>(
        &mut self,
        channel: &mut Channel<R, N>,
        counter: &mut impl FnMut() -> u64,
    ) -> Result<(), ChannelError> {
        let mut read = 0;
        loop {
            while let Some((id, payload)) = self.waiting.front() {
                let parts: [&[u8]; 1] = [payload];
                match channel.send_quiet(&OutgoingPacket::in_band(*id, false, &parts))? {
                    SendResult::Sent => {
                        self.answered += 1;
                        self.waiting.pop_front();
                    }
                    // The guest signals when it has read enough.
                    SendResult::Full { .. } => return Ok(()),
                }
            }
            if read >= PER_CALL {
                return Ok(());
            }
            let (waiting, refused) = (&mut self.waiting, &mut self.refused);
            let n = channel.recv_batch(QUEUE, |p| match p {
                Ok(p) if matches!(p.kind, PacketKind::InBand) => match answer(p.payload, counter) {
                    Some(reply) => waiting.push_back((p.transaction_id, reply)),
                    None => *refused += 1,
                },
                _ => *refused += 1,
            })?;
            if n == 0 {
                return Ok(());
            }
            read += n;
        }
    }
}

/// The reply to one payload, or `None` to refuse it.
fn answer(payload: &[u8], counter: &mut impl FnMut() -> u64) -> Option<Vec<u8>> {
    if payload.len() > MAX_PAYLOAD {
        return None;
    }
    let op = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?);
    match op {
        OP_ECHO => Some(payload.to_vec()),
        OP_COUNTER => {
            let mut reply = Vec::with_capacity(16);
            reply.extend_from_slice(&OP_COUNTER.to_le_bytes());
            reply.extend_from_slice(&[0; 4]);
            reply.extend_from_slice(&counter().to_le_bytes());
            Some(reply)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{quiet_pair, Quiet};
    use crate::shared_mem::HeapRing;
    use alloc::sync::Arc;
    use alloc::vec;

    type Ch = Channel<Arc<HeapRing>, Quiet>;

    fn pair(size: usize) -> (Ch, Ch) {
        quiet_pair(size)
    }

    fn send(ch: &mut Ch, id: u64, payload: &[u8]) -> SendResult {
        let parts: [&[u8]; 1] = [payload];
        ch.send(&OutgoingPacket::in_band(id, false, &parts))
            .unwrap()
    }

    fn recv(ch: &mut Ch) -> Option<(u64, Vec<u8>)> {
        let p = ch.recv().unwrap()?.unwrap();
        Some((p.transaction_id, p.payload.to_vec()))
    }

    #[test]
    fn echoes_in_order_and_answers_the_counter() {
        let (mut guest, mut host) = pair(16384);
        let mut server = EchoServer::default();
        let mut echo = OP_ECHO.to_le_bytes().to_vec();
        echo.extend_from_slice(b"abcd");
        let mut count = OP_COUNTER.to_le_bytes().to_vec();
        count.extend_from_slice(&[0; 4]);
        send(&mut guest, 5, &echo);
        send(&mut guest, 6, &count);
        send(&mut guest, 7, &[9, 0, 0, 0, 0, 0, 0, 0]);
        server.serve(&mut host, || 1234).unwrap();
        assert_eq!(recv(&mut guest), Some((5, echo)));
        let (id, reply) = recv(&mut guest).unwrap();
        assert_eq!(id, 6);
        assert_eq!(reply[..4], OP_COUNTER.to_le_bytes());
        assert_eq!(reply[8..16], 1234u64.to_le_bytes());
        assert_eq!(recv(&mut guest), None);
        assert_eq!((server.answered, server.refused), (2, 1));
    }

    #[test]
    fn a_guest_that_does_not_read_only_stops_itself() {
        let (mut guest, mut host) = pair(4096);
        let mut server = EchoServer::default();
        let mut payload = vec![0u8; 200];
        payload[..4].copy_from_slice(&OP_ECHO.to_le_bytes());
        let mut sent = 0u64;
        // Fill, let the device answer until the guest's ring is full too.
        for _ in 0..10 {
            while send(&mut guest, sent, &payload) == SendResult::Sent {
                sent += 1;
            }
            server.serve(&mut host, || 0).unwrap();
        }
        assert!(server.waiting.len() <= QUEUE);
        // The guest reads everything: every packet comes back, in order.
        let mut got = 0;
        loop {
            while let Some((id, _)) = recv(&mut guest) {
                assert_eq!(id, got);
                got += 1;
            }
            if got == sent {
                break;
            }
            server.serve(&mut host, || 0).unwrap();
        }
        assert_eq!(server.answered, sent);
    }

    #[test]
    fn an_oversized_packet_breaks_only_the_channel() {
        let (mut guest, mut host) = pair(65536);
        host.reader().set_max_packet(MAX_PACKET);
        let mut server = EchoServer::default();
        let mut big = vec![0u8; MAX_PAYLOAD + 512];
        big[..4].copy_from_slice(&OP_ECHO.to_le_bytes());
        send(&mut guest, 1, &big);
        assert!(server.serve(&mut host, || 0).is_err());
        assert!(server.serve(&mut host, || 0).is_err());
    }
}
