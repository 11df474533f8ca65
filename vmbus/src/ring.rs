//! The Hyper-V ring buffer: one direction of a channel.
//!
//! Layout: a 4 KiB header page ([`RingHeader`]) followed by the data area.
//! `write_index` and `read_index` are byte offsets into the data area; the
//! ring is empty when they are equal and is never filled completely (a writer
//! needs strictly more free bytes than it writes). Each packet is a
//! [`Descriptor`](crate::packet::Descriptor), header and payload padded to 8
//! bytes, then an 8-byte trailer holding `old_write_index << 32`. Packets
//! wrap around the end of the data area.
//!
//! Hardening: the peer owns the other index and may change anything at any
//! time. Each side keeps its own index privately and never re-reads it from
//! shared memory; the peer's index is read once per operation and checked
//! (in range, 8-aligned); lengths are bounded by what the peer published;
//! the packet is copied out before it is parsed. A corrupt ring poisons the
//! reader or writer: every later call returns the same error.

use alloc::vec::Vec;
use core::sync::atomic::{fence, AtomicU64, Ordering};

use crate::packet::{Descriptor, DESCRIPTOR_SIZE};
use crate::shared_mem::{RingHeader, RingMemory};

/// Size of the header page in front of the data area.
pub const HEADER_PAGE_SIZE: usize = 4096;
/// Size of the trailer after each packet.
pub const TRAILER_SIZE: u32 = 8;
/// `feature_bits` bit 0: the consumer honours `pending_send_size`.
pub const FEATURE_PENDING_SEND_SIZE: u32 = 1;

/// Smallest packet a writer can publish: a descriptor and the trailer.
const MIN_FRAME: u32 = DESCRIPTOR_SIZE as u32 + TRAILER_SIZE;

/// A ring that cannot be used any more, or a write that can never fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The memory's data area is empty, not 8-byte sized, or over 4 GiB.
    BadMemory,
    /// The peer's `read_index` is outside the data area or misaligned.
    BadReadIndex(u32),
    /// The peer's `write_index` is outside the data area or misaligned.
    BadWriteIndex(u32),
    /// The peer published fewer bytes than a packet needs.
    Truncated {
        /// Bytes published.
        available: u32,
    },
    /// A descriptor whose `offset8`/`len8` cannot frame a packet.
    BadDescriptor {
        /// `offset8` read.
        offset8: u16,
        /// `len8` read.
        len8: u16,
    },
    /// A packet claims more bytes than were published.
    Overrun {
        /// Packet length plus trailer.
        needed: u32,
        /// Bytes published.
        available: u32,
    },
    /// A packet longer than this reader accepts.
    PacketTooLarge {
        /// Packet length.
        len: u32,
        /// Reader limit.
        max: u32,
    },
    /// A packet to send that can never fit in this ring.
    WontFit {
        /// Packet length plus trailer.
        needed: u32,
        /// Data area size.
        size: u32,
    },
}

/// Validated data-area size in bytes.
fn data_size<M: RingMemory>(mem: &M) -> Result<u32, RingError> {
    let words = mem.data_words();
    let bytes = words.checked_mul(8).ok_or(RingError::BadMemory)?;
    match u32::try_from(bytes) {
        Ok(size) if size >= 2 * MIN_FRAME => Ok(size),
        _ => Err(RingError::BadMemory),
    }
}

/// A peer-supplied index is usable: inside the data area and 8-aligned.
fn valid_index(index: u32, size: u32) -> bool {
    index < size && index.is_multiple_of(8)
}

/// Bytes in use between `read` and `write` (both already checked).
fn used(write: u32, read: u32, size: u32) -> u32 {
    if write >= read {
        write - read
    } else {
        size - read + write
    }
}

fn advance(pos: u32, by: u32, size: u32) -> u32 {
    // pos < size and by <= size, so this cannot overflow u64 and stays < size.
    ((u64::from(pos) + u64::from(by)) % u64::from(size)) as u32
}

/// Prepares a freshly allocated ring (zeroed indices) the way Linux does:
/// indices and mask zero, `pending_send_size` supported.
pub fn init_ring_header(header: &RingHeader) {
    header.write_index.store(0, Ordering::Relaxed);
    header.read_index.store(0, Ordering::Relaxed);
    header.interrupt_mask.store(0, Ordering::Relaxed);
    header.pending_send_size.store(0, Ordering::Relaxed);
    header
        .feature_bits
        .store(FEATURE_PENDING_SEND_SIZE, Ordering::Release);
}

/// Copies `out.len()` bytes (a multiple of 8) from the data area starting at
/// byte `pos`, wrapping at the end.
fn copy_out<M: RingMemory>(mem: &M, pos: u32, out: &mut [u8]) -> Result<(), RingError> {
    let words = mem.data_words();
    let mut at = pos as usize / 8;
    let (mut chunks, _) = out.as_chunks_mut::<8>();
    while !chunks.is_empty() {
        let run = mem.data_run(at);
        let n = run.len().min(chunks.len()).min(words - at);
        if n == 0 {
            return Err(RingError::BadMemory);
        }
        let (head, rest) = chunks.split_at_mut(n);
        for (dst, src) in head.iter_mut().zip(run) {
            *dst = src.load(Ordering::Relaxed).to_le_bytes();
        }
        chunks = rest;
        at += n;
        if at == words {
            at = 0;
        }
    }
    Ok(())
}

/// Streams bytes into the data area as whole words, wrapping at the end.
struct WordSink<'a, M: RingMemory> {
    mem: &'a M,
    words: usize,
    at: usize,
    acc: [u8; 8],
    acc_len: usize,
}

impl<'a, M: RingMemory> WordSink<'a, M> {
    fn new(mem: &'a M, pos: u32) -> Self {
        Self {
            mem,
            words: mem.data_words(),
            at: pos as usize / 8,
            acc: [0; 8],
            acc_len: 0,
        }
    }

    fn store_words(&mut self, mut src: &[[u8; 8]]) -> Result<(), RingError> {
        while !src.is_empty() {
            let run: &[AtomicU64] = self.mem.data_run(self.at);
            let n = run.len().min(src.len()).min(self.words - self.at);
            if n == 0 {
                return Err(RingError::BadMemory);
            }
            for (dst, w) in run.iter().zip(&src[..n]) {
                dst.store(u64::from_le_bytes(*w), Ordering::Relaxed);
            }
            src = &src[n..];
            self.at += n;
            if self.at == self.words {
                self.at = 0;
            }
        }
        Ok(())
    }

    fn push(&mut self, mut bytes: &[u8]) -> Result<(), RingError> {
        if self.acc_len > 0 {
            let take = (8 - self.acc_len).min(bytes.len());
            self.acc[self.acc_len..self.acc_len + take].copy_from_slice(&bytes[..take]);
            self.acc_len += take;
            bytes = &bytes[take..];
            if self.acc_len < 8 {
                return Ok(());
            }
            let w = self.acc;
            self.acc_len = 0;
            self.store_words(&[w])?;
        }
        let (whole, rest) = bytes.as_chunks::<8>();
        self.store_words(whole)?;
        self.acc[..rest.len()].copy_from_slice(rest);
        self.acc_len = rest.len();
        Ok(())
    }

    /// Pads the last partial word with zeros.
    fn finish(&mut self) -> Result<(), RingError> {
        if self.acc_len > 0 {
            self.acc[self.acc_len..].fill(0);
            let w = self.acc;
            self.acc_len = 0;
            self.store_words(&[w])?;
        }
        Ok(())
    }
}

/// Outcome of a write attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    /// Written and published; signal the reader if `signal`.
    Written {
        /// The reader asked to be signalled and the ring was empty before.
        signal: bool,
    },
    /// Not enough space now; `needed` bytes (packet and trailer) must be
    /// free. See [`RingWriter::request_space`].
    Full {
        /// Bytes needed.
        needed: u32,
    },
}

/// The producer side of a ring.
pub struct RingWriter<M: RingMemory> {
    mem: M,
    size: u32,
    write: u32,
    /// Bytes known to be free as of the last `read_index` load, less what
    /// we wrote since (the reader only ever frees more), so most writes
    /// need not touch the reader's cache line.
    free_hint: u32,
    /// We set `pending_send_size` and have not cleared it yet.
    pending: bool,
    broken: Option<RingError>,
}

impl<M: RingMemory> RingWriter<M> {
    /// Attaches to a ring, taking the current `write_index` as ours (read
    /// once and checked).
    pub fn new(mem: M) -> Result<Self, RingError> {
        let size = data_size(&mem)?;
        let write = mem.header().write_index.load(Ordering::Acquire);
        if !valid_index(write, size) {
            return Err(RingError::BadWriteIndex(write));
        }
        Ok(Self {
            mem,
            size,
            write,
            free_hint: 0,
            pending: false,
            broken: None,
        })
    }

    /// The ring memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Data area size in bytes.
    pub fn size(&self) -> u32 {
        self.size
    }

    fn fail(&mut self, e: RingError) -> RingError {
        self.broken = Some(e);
        e
    }

    fn read_index(&mut self) -> Result<u32, RingError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let read = self.mem.header().read_index.load(Ordering::Acquire);
        if !valid_index(read, self.size) {
            return Err(self.fail(RingError::BadReadIndex(read)));
        }
        Ok(read)
    }

    /// Free bytes right now (as the peer's `read_index` claims).
    pub fn free(&mut self) -> Result<u32, RingError> {
        let read = self.read_index()?;
        self.free_hint = self.size - used(self.write, read, self.size);
        Ok(self.free_hint)
    }

    /// Writes one packet made of `header` and `payload` pieces, padded to 8
    /// bytes and followed by the trailer. `header` is normally the encoded
    /// descriptor from [`crate::packet::OutgoingPacket::encode_header`].
    pub fn write(&mut self, header: &[u8], payload: &[&[u8]]) -> Result<WriteResult, RingError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let len = payload
            .iter()
            .try_fold(header.len(), |acc, p| acc.checked_add(p.len()));
        // Padded packet plus trailer; it must leave at least one byte free
        // even in an empty ring.
        let needed = len
            .and_then(|l| l.checked_next_multiple_of(8))
            .and_then(|l| l.checked_add(TRAILER_SIZE as usize))
            .and_then(|l| u32::try_from(l).ok());
        let needed = match needed {
            Some(n) if n < self.size => n,
            other => {
                return Err(RingError::WontFit {
                    needed: other.unwrap_or(u32::MAX),
                    size: self.size,
                })
            }
        };
        // Strictly more: a full ring would look empty.
        if self.free_hint <= needed && self.free()? <= needed {
            return Ok(WriteResult::Full { needed });
        }
        self.free_hint -= needed;
        let old_write = self.write;
        let mut sink = WordSink::new(&self.mem, old_write);
        sink.push(header)?;
        for p in payload {
            sink.push(p)?;
        }
        sink.finish()?;
        sink.store_words(&[(u64::from(old_write) << 32).to_le_bytes()])?;
        self.write = advance(old_write, needed, self.size);

        let h = self.mem.header();
        h.write_index.store(self.write, Ordering::Release);
        // Order the index publication before reading the reader's mask
        // (pairs with the fence in RingReader::end_batch).
        fence(Ordering::SeqCst);
        let masked = h.interrupt_mask.load(Ordering::Relaxed) != 0;
        // Signal only on empty -> non-empty: the reader had consumed
        // everything up to where this packet starts.
        let signal = !masked && h.read_index.load(Ordering::Relaxed) == old_write;
        Ok(WriteResult::Written { signal })
    }

    /// After [`WriteResult::Full`]: asks the reader to signal when more than
    /// `needed` bytes are free. Returns true if that is already the case
    /// (retry at once instead of waiting).
    pub fn request_space(&mut self, needed: u32) -> Result<bool, RingError> {
        self.pending = true;
        self.mem
            .header()
            .pending_send_size
            .store(needed, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Ok(self.free()? > needed)
    }

    /// Withdraws a [`request_space`](Self::request_space) (no shared-memory
    /// write if there was none).
    pub fn clear_pending_send(&mut self) {
        if self.pending {
            self.pending = false;
            self.mem
                .header()
                .pending_send_size
                .store(0, Ordering::Relaxed);
        }
    }
}

/// The consumer side of a ring.
pub struct RingReader<M: RingMemory> {
    mem: M,
    size: u32,
    /// Next byte to read (private, never re-read from the ring).
    read: u32,
    /// What the peer last saw in `read_index`.
    published: u32,
    /// Bytes published beyond `read` as of the last `write_index` load,
    /// less what we read since; reloaded only when used up.
    avail_hint: u32,
    max_packet: u32,
    broken: Option<RingError>,
}

impl<M: RingMemory> RingReader<M> {
    /// Attaches to a ring, taking the current `read_index` as ours (read
    /// once and checked).
    pub fn new(mem: M) -> Result<Self, RingError> {
        let size = data_size(&mem)?;
        let read = mem.header().read_index.load(Ordering::Acquire);
        if !valid_index(read, size) {
            return Err(RingError::BadReadIndex(read));
        }
        Ok(Self {
            mem,
            size,
            read,
            published: read,
            avail_hint: 0,
            max_packet: size,
            broken: None,
        })
    }

    /// Rejects packets longer than `max` bytes (e.g. a device protocol's
    /// largest message), bounding what one packet can make us copy.
    pub fn set_max_packet(&mut self, max: u32) {
        self.max_packet = max;
    }

    /// The ring memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Data area size in bytes.
    pub fn size(&self) -> u32 {
        self.size
    }

    fn fail(&mut self, e: RingError) -> RingError {
        self.broken = Some(e);
        e
    }

    fn write_index(&mut self) -> Result<u32, RingError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let write = self.mem.header().write_index.load(Ordering::Acquire);
        if !valid_index(write, self.size) {
            return Err(self.fail(RingError::BadWriteIndex(write)));
        }
        Ok(write)
    }

    /// Bytes published by the writer and not yet read by us.
    pub fn available(&mut self) -> Result<u32, RingError> {
        let write = self.write_index()?;
        self.avail_hint = used(write, self.read, self.size);
        Ok(self.avail_hint)
    }

    /// Copies the next packet (descriptor, header and payload; no trailer)
    /// into `out` and returns true, or returns false if the ring is empty.
    /// The space is handed back to the writer by [`commit`](Self::commit).
    pub fn read(&mut self, out: &mut Vec<u8>) -> Result<bool, RingError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let available = match self.avail_hint {
            0 => self.available()?,
            hint => hint,
        };
        if available == 0 {
            return Ok(false);
        }
        if available < MIN_FRAME {
            return Err(self.fail(RingError::Truncated { available }));
        }
        // Copy the descriptor once; it is what we validate and what the
        // caller parses.
        let mut desc_bytes = [0u8; DESCRIPTOR_SIZE];
        copy_out(&self.mem, self.read, &mut desc_bytes)?;
        let desc = Descriptor::from_bytes(&desc_bytes);
        let len = u32::from(desc.len8) * 8;
        let offset = u32::from(desc.offset8) * 8;
        if offset < DESCRIPTOR_SIZE as u32 || offset > len {
            return Err(self.fail(RingError::BadDescriptor {
                offset8: desc.offset8,
                len8: desc.len8,
            }));
        }
        let needed = len + TRAILER_SIZE;
        if needed > available {
            return Err(self.fail(RingError::Overrun { needed, available }));
        }
        if len > self.max_packet {
            return Err(self.fail(RingError::PacketTooLarge {
                len,
                max: self.max_packet,
            }));
        }
        out.clear();
        out.resize(len as usize, 0);
        out[..DESCRIPTOR_SIZE].copy_from_slice(&desc_bytes);
        let body_at = advance(self.read, DESCRIPTOR_SIZE as u32, self.size);
        copy_out(&self.mem, body_at, &mut out[DESCRIPTOR_SIZE..])?;
        // The trailer (previous write index) is informational; skip it.
        self.read = advance(self.read, needed, self.size);
        self.avail_hint = available - needed;
        Ok(true)
    }

    /// Publishes what was read so the writer can reuse the space. Returns
    /// true if the writer is waiting for space (`pending_send_size`) and now
    /// has it: signal the writer.
    pub fn commit(&mut self) -> Result<bool, RingError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let old = self.published;
        if old == self.read {
            return Ok(false);
        }
        let h = self.mem.header();
        h.read_index.store(self.read, Ordering::Release);
        self.published = self.read;
        // Order the publication before reading pending_send_size (pairs with
        // the fence in RingWriter::request_space).
        fence(Ordering::SeqCst);
        let pending = h.pending_send_size.load(Ordering::Relaxed);
        if pending == 0 {
            return Ok(false);
        }
        let write = self.write_index()?;
        let free_now = self.size - used(write, self.read, self.size);
        let freed = used(self.read, old, self.size);
        let free_before = free_now.saturating_sub(freed);
        // Only the "not enough -> enough" transition; the writer needs
        // strictly more than `pending` free bytes.
        Ok(free_before <= pending && free_now > pending)
    }

    /// Sets or clears `interrupt_mask` ("don't signal me").
    pub fn set_interrupt_mask(&self, masked: bool) {
        self.mem
            .header()
            .interrupt_mask
            .store(u32::from(masked), Ordering::Relaxed);
    }

    /// Starts a batch: the writer stops signalling while we drain.
    pub fn begin_batch(&self) {
        self.set_interrupt_mask(true);
        fence(Ordering::SeqCst);
    }

    /// Ends a batch: unmasks and returns true if data arrived meanwhile (the
    /// writer may not have signalled it, so keep draining).
    pub fn end_batch(&mut self) -> Result<bool, RingError> {
        self.set_interrupt_mask(false);
        // Order the unmask before re-reading write_index (pairs with the
        // fence in RingWriter::write).
        fence(Ordering::SeqCst);
        Ok(self.available()? != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_mem::HeapRing;
    use alloc::vec;

    fn pair(size: usize) -> (RingWriter<&'static HeapRing>, RingReader<&'static HeapRing>) {
        let ring: &'static HeapRing =
            alloc::boxed::Box::leak(alloc::boxed::Box::new(HeapRing::new(size)));
        init_ring_header(ring.header());
        (
            RingWriter::new(ring).unwrap(),
            RingReader::new(ring).unwrap(),
        )
    }

    fn desc(payload_len: usize) -> [u8; 16] {
        Descriptor {
            packet_type: 6,
            offset8: 2,
            len8: (16 + payload_len).div_ceil(8) as u16,
            flags: 0,
            transaction_id: payload_len as u64,
        }
        .to_bytes()
    }

    #[test]
    fn write_read_with_trailer_and_signal() {
        let (mut w, mut r) = pair(256);
        assert_eq!(
            w.write(&desc(5), &[b"abcde"]).unwrap(),
            WriteResult::Written { signal: true }
        );
        // Not empty any more: no second signal.
        assert_eq!(
            w.write(&desc(3), &[b"xyz"]).unwrap(),
            WriteResult::Written { signal: false }
        );
        let data = w.memory().data();
        // Trailer of the first packet = old write index (0) << 32.
        assert_eq!(data[3].load(Ordering::Relaxed), 0);
        // Trailer of the second = 32 << 32.
        assert_eq!(data[7].load(Ordering::Relaxed), 32u64 << 32);
        let mut out = Vec::new();
        assert!(r.read(&mut out).unwrap());
        assert_eq!(&out[16..21], b"abcde");
        assert_eq!(out.len(), 24);
        assert!(r.read(&mut out).unwrap());
        assert_eq!(&out[16..19], b"xyz");
        assert!(!r.read(&mut out).unwrap());
        assert!(!r.commit().unwrap());
        assert_eq!(w.memory().header().read_index.load(Ordering::Relaxed), 64);
        // Masked reader: no signal.
        r.begin_batch();
        assert_eq!(
            w.write(&desc(0), &[]).unwrap(),
            WriteResult::Written { signal: false }
        );
        assert!(r.end_batch().unwrap());
    }

    #[test]
    fn wraps_and_never_fills_completely() {
        let (mut w, mut r) = pair(128);
        let mut out = Vec::new();
        for round in 0..50u8 {
            let payload = [round; 40]; // 16 + 40 + 8 = 64 bytes per packet
            match w.write(&desc(40), &[&payload]).unwrap() {
                WriteResult::Written { .. } => {}
                other => panic!("round {round}: {other:?}"),
            }
            // 64 of 128 bytes used; another 64 would fill it exactly.
            assert_eq!(
                w.write(&desc(40), &[&payload]).unwrap(),
                WriteResult::Full { needed: 64 }
            );
            assert!(r.read(&mut out).unwrap());
            assert_eq!(&out[16..56], &payload);
            r.commit().unwrap();
        }
    }

    #[test]
    fn pending_send_size_signals_on_transition_only() {
        let (mut w, mut r) = pair(256);
        for _ in 0..3 {
            w.write(&desc(56), &[&[1; 56]]).unwrap(); // 80 bytes each
        }
        let needed = match w.write(&desc(56), &[&[1; 56]]).unwrap() {
            WriteResult::Full { needed } => needed,
            other => panic!("{other:?}"),
        };
        assert!(!w.request_space(needed).unwrap());
        let mut out = Vec::new();
        assert!(r.read(&mut out).unwrap());
        // free goes 16 -> 96 > 80: signal.
        assert!(r.commit().unwrap());
        assert!(r.read(&mut out).unwrap());
        // 96 -> 176: already enough before, no signal.
        assert!(!r.commit().unwrap());
        w.clear_pending_send();
        assert!(matches!(
            w.write(&desc(56), &[&[1; 56]]).unwrap(),
            WriteResult::Written { .. }
        ));
    }

    #[test]
    fn split_payload_pieces_are_joined() {
        let (mut w, mut r) = pair(512);
        let pieces: [&[u8]; 4] = [b"a", b"bcdefghij", b"", b"klmnopqrstu"];
        w.write(&desc(21), &pieces).unwrap();
        let mut out = Vec::new();
        r.read(&mut out).unwrap();
        assert_eq!(&out[16..37], b"abcdefghijklmnopqrstu");
        assert_eq!(&out[37..40], &[0, 0, 0]);
    }

    #[test]
    fn hostile_indices_and_lengths() {
        let (mut w, mut r) = pair(256);
        let h = w.memory().header();
        let mut out = Vec::new();
        h.write_index.store(300, Ordering::Relaxed);
        assert_eq!(r.read(&mut out), Err(RingError::BadWriteIndex(300)));
        // Poisoned from now on, even if the peer repairs the index.
        h.write_index.store(0, Ordering::Relaxed);
        assert_eq!(r.read(&mut out), Err(RingError::BadWriteIndex(300)));

        let (mut w2, mut r2) = pair(256);
        let h2 = w2.memory().header();
        h2.read_index.store(4, Ordering::Relaxed);
        assert_eq!(w2.write(&desc(0), &[]), Err(RingError::BadReadIndex(4)));
        assert_eq!(w.write(&desc(0), &[]).map(|_| ()), Ok(()));

        // Writer publishes a packet, then the peer rewrites len8.
        let (mut w3, mut r3) = pair(256);
        w3.write(&desc(8), &[&[0; 8]]).unwrap();
        let d = &w3.memory().data()[0];
        let bad = Descriptor {
            packet_type: 6,
            offset8: 2,
            len8: 200,
            flags: 0,
            transaction_id: 0,
        };
        d.store(
            u64::from_le_bytes(bad.to_bytes()[..8].try_into().unwrap()),
            Ordering::Relaxed,
        );
        assert!(matches!(r3.read(&mut out), Err(RingError::Overrun { .. })));
        // Too few bytes published for any packet.
        let (w4, mut r4) = pair(256);
        w4.memory().header().write_index.store(8, Ordering::Relaxed);
        assert_eq!(
            r4.read(&mut out),
            Err(RingError::Truncated { available: 8 })
        );
        let _ = r2.available();
    }

    #[test]
    fn max_packet_and_wont_fit() {
        let (mut w, mut r) = pair(256);
        r.set_max_packet(32);
        assert_eq!(
            w.write(&desc(300), &[&vec![0; 300]]),
            Err(RingError::WontFit {
                needed: 328,
                size: 256
            })
        );
        w.write(&desc(40), &[&[0; 40]]).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            r.read(&mut out),
            Err(RingError::PacketTooLarge { len: 56, max: 32 })
        );
        assert_eq!(
            RingWriter::new(HeapRing::new(8)).err(),
            Some(RingError::BadMemory)
        );
    }
}
