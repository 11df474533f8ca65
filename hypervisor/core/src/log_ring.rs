//! The hypervisor's log kept in memory: the newest bytes in a fixed ring,
//! addressed by their position in everything ever written, so a reader that
//! fell behind learns how much it lost (`host log` in the root).

pub struct LogRing<const N: usize> {
    buf: [u8; N],
    /// Bytes ever written; byte `p` lives at `buf[p % N]` while `p >= written - N`.
    written: u64,
}

impl<const N: usize> LogRing<N> {
    pub const fn new() -> Self {
        LogRing {
            buf: [0; N],
            written: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        // Only the last N bytes of a longer write can be kept.
        let skip = bytes.len().saturating_sub(N);
        self.written += skip as u64;
        for &b in &bytes[skip..] {
            self.buf[(self.written % N as u64) as usize] = b;
            self.written += 1;
        }
    }

    /// Bytes ever written (the position the next byte gets).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The oldest position still kept.
    pub fn oldest(&self) -> u64 {
        self.written.saturating_sub(N as u64)
    }

    /// Copies bytes from position `from` on into `out`: from the oldest kept
    /// if `from` was overwritten, nothing if it is not written yet. Returns
    /// the position of the first byte copied and how many were.
    pub fn read(&self, from: u64, out: &mut [u8]) -> (u64, usize) {
        let start = from.clamp(self.oldest(), self.written);
        let len = ((self.written - start) as usize).min(out.len());
        for (i, o) in out[..len].iter_mut().enumerate() {
            *o = self.buf[((start + i as u64) % N as u64) as usize];
        }
        (start, len)
    }
}

impl<const N: usize> Default for LogRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    #[test]
    fn reads_what_was_written_and_reports_what_was_lost() {
        let mut r = LogRing::<8>::new();
        r.push(b"abc");
        let mut out = [0u8; 16];
        assert_eq!(r.read(0, &mut out), (0, 3));
        assert_eq!(&out[..3], b"abc");
        assert_eq!(r.read(3, &mut out), (3, 0), "caught up");
        assert_eq!(r.read(99, &mut out), (3, 0), "not written yet");
        r.push(b"defghij");
        assert_eq!(r.read(0, &mut out), (2, 8), "two bytes overwritten");
        assert_eq!(&out[..8], b"cdefghij");
        let mut small = [0u8; 3];
        assert_eq!(r.read(5, &mut small), (5, 3));
        assert_eq!(&small, b"fgh");
    }

    proptest! {
        /// Whatever the writes and the reader's position, a read returns
        /// exactly the kept suffix of everything written from there.
        #[test]
        fn matches_a_plain_vector(
            writes in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..20),
            from in 0u64..400,
            room in 0usize..64,
        ) {
            let mut r = LogRing::<32>::new();
            let mut all = Vec::new();
            for w in &writes {
                r.push(w);
                all.extend_from_slice(w);
            }
            prop_assert_eq!(r.written(), all.len() as u64);
            let mut out = std::vec![0u8; room];
            let (start, len) = r.read(from, &mut out);
            let oldest = all.len().saturating_sub(32) as u64;
            prop_assert_eq!(start, from.clamp(oldest, all.len() as u64));
            prop_assert_eq!(len, (all.len() - start as usize).min(room));
            prop_assert_eq!(&out[..len], &all[start as usize..start as usize + len]);
        }
    }
}
