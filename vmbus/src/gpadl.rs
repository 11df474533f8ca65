//! GPADLs (guest physical address descriptor lists): page lists the guest
//! describes once and then names by a 32-bit id (ring buffers, netvsc
//! receive/send buffers).
//!
//! The range list is a stream of u64 words: per range one word holding the
//! [`wire::GpaRange`] head (`byte_count | byte_offset << 32`), then
//! `pages_spanned` PFNs. It is too
//! long for one 240-byte message, so the guest sends a GPADL_HEADER with the
//! first 27 words and GPADL_BODY messages with up to 28 more each. The host
//! assembles them ([`GpadlBuilder`]) and only then validates the ranges.

use alloc::vec::Vec;

use crate::messages::{
    ChannelMessage, GpadlBody, GpadlHeader, GpadlWords, GPADL_BODY_MAX_WORDS,
    GPADL_HEADER_MAX_WORDS,
};
use crate::packet::pages_spanned;
use crate::wire;
use crate::PAGE_SIZE;

/// Linux numbers its GPADLs from here.
pub const LINUX_FIRST_GPADL_ID: u32 = 0xE1E10;

/// A GPADL that cannot be assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpadlError {
    /// `range_buflen` not a positive multiple of 8, or too small for
    /// `range_count` ranges.
    BadLength,
    /// No ranges.
    NoRanges,
    /// More words arrived than `range_buflen` announced.
    TooMuchData,
    /// The assembled list does not parse as exactly `range_count` ranges.
    BadRanges,
    /// A range's offset is not inside its first page or it is empty.
    BadRange,
    /// An outgoing GPADL too large for the protocol's u16 lengths.
    TooLarge,
}

/// One range of an assembled GPADL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpadlRange<'a> {
    /// Length in bytes.
    pub byte_count: u32,
    /// Offset into the first page.
    pub byte_offset: u32,
    /// Page frame numbers.
    pub pfns: &'a [u64],
}

/// An assembled, validated GPADL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpadl {
    /// GPADL id.
    pub id: u32,
    /// Channel it was created for.
    pub child_relid: u32,
    words: Vec<u64>,
    range_count: u16,
}

impl Gpadl {
    fn validate(
        id: u32,
        child_relid: u32,
        words: Vec<u64>,
        range_count: u16,
    ) -> Result<Self, GpadlError> {
        let g = Self {
            id,
            child_relid,
            words,
            range_count,
        };
        let mut at = 0usize;
        for _ in 0..range_count {
            let head = wire::GpaRange::from_word(*g.words.get(at).ok_or(GpadlError::BadRanges)?);
            let (count, offset) = (head.byte_count.get(), head.byte_offset.get());
            if count == 0 || offset as usize >= PAGE_SIZE {
                return Err(GpadlError::BadRange);
            }
            // Fits: count and offset are u32, so pages < 2^21.
            at += 1 + pages_spanned(offset, count) as usize;
            if at > g.words.len() {
                return Err(GpadlError::BadRanges);
            }
        }
        if at != g.words.len() {
            return Err(GpadlError::BadRanges);
        }
        Ok(g)
    }

    /// Builds a GPADL from ranges (e.g. the guest's own view).
    pub fn new(id: u32, child_relid: u32, ranges: &[GpadlRange<'_>]) -> Result<Self, GpadlError> {
        let words = range_words(ranges)?;
        let count = u16::try_from(ranges.len()).map_err(|_| GpadlError::TooLarge)?;
        Self::validate(id, child_relid, words, count)
    }

    /// The ranges.
    pub fn ranges(&self) -> impl Iterator<Item = GpadlRange<'_>> {
        let mut rest: &[u64] = &self.words;
        (0..self.range_count).map_while(move |_| {
            let (&head, tail) = rest.split_first()?;
            let head = wire::GpaRange::from_word(head);
            let (count, offset) = (head.byte_count.get(), head.byte_offset.get());
            let n = pages_spanned(offset, count) as usize;
            let pfns = tail.get(..n)?;
            rest = tail.get(n..)?;
            Some(GpadlRange {
                byte_count: count,
                byte_offset: offset,
                pfns,
            })
        })
    }

    /// The 8-byte words (range heads and page numbers) it holds.
    pub fn words(&self) -> usize {
        self.words.len()
    }

    /// Number of ranges.
    pub fn range_count(&self) -> usize {
        usize::from(self.range_count)
    }

    /// The single range of a ring-buffer GPADL (one range, offset 0, whole
    /// pages), or `None` if the GPADL is not of that shape.
    pub fn as_page_list(&self) -> Option<&[u64]> {
        let mut it = self.ranges();
        let r = it.next()?;
        if it.next().is_some()
            || r.byte_offset != 0
            || !(r.byte_count as usize).is_multiple_of(PAGE_SIZE)
        {
            return None;
        }
        Some(r.pfns)
    }
}

fn range_words(ranges: &[GpadlRange<'_>]) -> Result<Vec<u64>, GpadlError> {
    let mut words = Vec::new();
    for r in ranges {
        if r.pfns.len() as u64 != pages_spanned(r.byte_offset, r.byte_count) {
            return Err(GpadlError::BadRange);
        }
        words.push(wire::GpaRange::new(r.byte_count, r.byte_offset).to_word());
        words.extend_from_slice(r.pfns);
    }
    Ok(words)
}

/// Host side: collects a GPADL's header and body messages.
#[derive(Debug, Clone)]
pub struct GpadlBuilder {
    id: u32,
    child_relid: u32,
    range_count: u16,
    expected_words: usize,
    words: Vec<u64>,
}

impl GpadlBuilder {
    /// Starts from a GPADL_HEADER.
    pub fn new(header: &GpadlHeader) -> Result<Self, GpadlError> {
        let buflen = usize::from(header.range_buflen);
        if buflen == 0 || buflen % 8 != 0 {
            return Err(GpadlError::BadLength);
        }
        if header.range_count == 0 {
            return Err(GpadlError::NoRanges);
        }
        let expected_words = buflen / 8;
        // Every range needs at least its head word.
        if expected_words < usize::from(header.range_count) {
            return Err(GpadlError::BadLength);
        }
        let first = header.data.as_slice();
        if first.len() > expected_words {
            return Err(GpadlError::TooMuchData);
        }
        let mut words = Vec::with_capacity(expected_words);
        words.extend_from_slice(first);
        Ok(Self {
            id: header.gpadl,
            child_relid: header.child_relid,
            range_count: header.range_count,
            expected_words,
            words,
        })
    }

    /// GPADL id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Channel id.
    pub fn child_relid(&self) -> u32 {
        self.child_relid
    }

    /// The 8-byte words (range heads and page numbers) it will hold.
    pub fn words(&self) -> usize {
        self.expected_words
    }

    /// Appends a GPADL_BODY (bodies are taken in arrival order; their
    /// `msg_number` is not relied on because Linux leaves it 0).
    pub fn add_body(&mut self, body: &GpadlBody) -> Result<(), GpadlError> {
        let more = body.data.as_slice();
        if self.words.len() + more.len() > self.expected_words {
            return Err(GpadlError::TooMuchData);
        }
        self.words.extend_from_slice(more);
        Ok(())
    }

    /// All announced words have arrived.
    pub fn is_complete(&self) -> bool {
        self.words.len() == self.expected_words
    }

    /// Validates the complete list.
    pub fn finish(self) -> Result<Gpadl, GpadlError> {
        if !self.is_complete() {
            return Err(GpadlError::BadLength);
        }
        Gpadl::validate(self.id, self.child_relid, self.words, self.range_count)
    }
}

/// Guest side: the GPADL_HEADER and GPADL_BODY messages describing `ranges`.
pub fn gpadl_messages(
    child_relid: u32,
    id: u32,
    ranges: &[GpadlRange<'_>],
) -> Result<Vec<ChannelMessage>, GpadlError> {
    if ranges.is_empty() {
        return Err(GpadlError::NoRanges);
    }
    let words = range_words(ranges)?;
    let range_buflen = u16::try_from(words.len() * 8).map_err(|_| GpadlError::TooLarge)?;
    let range_count = u16::try_from(ranges.len()).map_err(|_| GpadlError::TooLarge)?;
    let split = words.len().min(GPADL_HEADER_MAX_WORDS);
    let (first, rest) = words.split_at(split);
    let mut msgs = Vec::with_capacity(1 + rest.len().div_ceil(GPADL_BODY_MAX_WORDS));
    msgs.push(ChannelMessage::GpadlHeader(GpadlHeader {
        child_relid,
        gpadl: id,
        range_buflen,
        range_count,
        data: GpadlWords::new(first).ok_or(GpadlError::TooLarge)?,
    }));
    for chunk in rest.chunks(GPADL_BODY_MAX_WORDS) {
        msgs.push(ChannelMessage::GpadlBody(GpadlBody {
            msg_number: 0,
            gpadl: id,
            data: GpadlWords::new(chunk).ok_or(GpadlError::TooLarge)?,
        }));
    }
    Ok(msgs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn assemble(msgs: &[ChannelMessage]) -> Result<Gpadl, GpadlError> {
        let ChannelMessage::GpadlHeader(h) = &msgs[0] else {
            panic!("first message {:?}", msgs[0]);
        };
        let mut b = GpadlBuilder::new(h)?;
        for m in &msgs[1..] {
            let ChannelMessage::GpadlBody(body) = m else {
                panic!("{m:?}");
            };
            b.add_body(body)?;
        }
        b.finish()
    }

    #[test]
    fn hundred_pages_split_like_linux() {
        let pfns: Vec<u64> = (1000..1100).collect();
        let range = GpadlRange {
            byte_count: 100 * 4096,
            byte_offset: 0,
            pfns: &pfns,
        };
        let msgs = gpadl_messages(3, LINUX_FIRST_GPADL_ID, &[range]).unwrap();
        // Header: range head + 26 PFNs; bodies: 28, 28, 18.
        let sizes: Vec<usize> = msgs.iter().map(|m| m.encode().as_slice().len()).collect();
        assert_eq!(
            sizes,
            vec![20 + 27 * 8, 16 + 28 * 8, 16 + 28 * 8, 16 + 18 * 8]
        );
        for m in &msgs {
            assert!(m.encode().as_slice().len() <= 240);
        }
        let g = assemble(&msgs).unwrap();
        assert_eq!(g.id, LINUX_FIRST_GPADL_ID);
        assert_eq!(g.child_relid, 3);
        assert_eq!(g.as_page_list(), Some(&pfns[..]));
    }

    #[test]
    fn multiple_ranges() {
        let a = [5u64, 6];
        let b = [9u64];
        let ranges = [
            GpadlRange {
                byte_count: 5000,
                byte_offset: 100,
                pfns: &a,
            },
            GpadlRange {
                byte_count: 10,
                byte_offset: 4000,
                pfns: &b,
            },
        ];
        let g = assemble(&gpadl_messages(1, 2, &ranges).unwrap()).unwrap();
        assert_eq!(g.ranges().collect::<Vec<_>>(), ranges);
        assert_eq!(g.as_page_list(), None);
    }

    #[test]
    fn hostile_lengths() {
        let pfns: Vec<u64> = (0..40).collect();
        let range = GpadlRange {
            byte_count: 40 * 4096,
            byte_offset: 0,
            pfns: &pfns,
        };
        let msgs = gpadl_messages(1, 2, &[range]).unwrap();
        let ChannelMessage::GpadlHeader(mut h) = msgs[0] else {
            panic!()
        };
        let ChannelMessage::GpadlBody(body) = msgs[1] else {
            panic!()
        };
        // Body beyond the announced length.
        let mut b = GpadlBuilder::new(&h).unwrap();
        b.add_body(&body).unwrap();
        assert_eq!(b.add_body(&body), Err(GpadlError::TooMuchData));
        // Odd or zero buflen, zero ranges, too many ranges for the length.
        h.range_buflen = 7;
        assert_eq!(GpadlBuilder::new(&h).err(), Some(GpadlError::BadLength));
        h.range_buflen = 0;
        assert_eq!(GpadlBuilder::new(&h).err(), Some(GpadlError::BadLength));
        h.range_buflen = 41 * 8;
        h.range_count = 0;
        assert_eq!(GpadlBuilder::new(&h).err(), Some(GpadlError::NoRanges));
        // Header shorter than its own data.
        h.range_count = 1;
        h.range_buflen = 8;
        assert_eq!(GpadlBuilder::new(&h).err(), Some(GpadlError::TooMuchData));
        // byte_count claiming more pages than sent.
        let mut words = vec![u64::from(50u32 * 4096)];
        words.extend(0..40u64);
        assert_eq!(
            Gpadl::validate(1, 1, words, 1).err(),
            Some(GpadlError::BadRanges)
        );
        // Offset outside the first page.
        assert_eq!(
            Gpadl::validate(1, 1, vec![1 | 4096u64 << 32, 0, 0], 1).err(),
            Some(GpadlError::BadRange)
        );
        // Incomplete.
        h.range_buflen = 41 * 8;
        let b = GpadlBuilder::new(&h).unwrap();
        assert_eq!(b.finish().err(), Some(GpadlError::BadLength));
    }
}
