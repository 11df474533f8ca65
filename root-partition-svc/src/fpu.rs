//! `debug fpu`: the patterns loaded into XMM0-15 and the verdict on what came
//! back after the VM exits (the kernel does the loading, in one asm block).

use core::fmt::{self, Write};

pub const REGISTERS: usize = 16;
/// CPUID instructions between loading and reading back (each one is a VM exit).
pub const EXITS: u32 = 1000;

/// A distinct 128-bit pattern per register, no two registers and no two
/// halves alike, none all-zero or all-ones.
pub fn patterns() -> [[u8; 16]; REGISTERS] {
    let mut p = [[0u8; 16]; REGISTERS];
    for (i, reg) in p.iter_mut().enumerate() {
        let i = i as u64;
        let lo = 0x0123_4567_89AB_CDEF ^ i.wrapping_mul(0x1111_1111_1111_1111);
        let hi = 0xFEDC_BA98_7654_3210_u64.rotate_left(i as u32 * 4 + 1) ^ (i << 56 | i);
        reg[..8].copy_from_slice(&lo.to_le_bytes());
        reg[8..].copy_from_slice(&hi.to_le_bytes());
    }
    p
}

/// The first register whose contents changed.
pub fn first_corrupted(
    expected: &[[u8; 16]; REGISTERS],
    got: &[[u8; 16]; REGISTERS],
) -> Option<usize> {
    expected.iter().zip(got).position(|(e, g)| e != g)
}

/// `fpu: ok, xmm0-15 preserved across 1000 exits` or `fpu: CORRUPTED xmm3`.
pub fn report(w: &mut dyn Write, corrupted: Option<usize>) -> fmt::Result {
    match corrupted {
        None => writeln!(w, "fpu: ok, xmm0-15 preserved across {EXITS} exits"),
        Some(r) => writeln!(w, "fpu: CORRUPTED xmm{r}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    #[test]
    fn patterns_are_distinct() {
        let p = patterns();
        for (i, a) in p.iter().enumerate() {
            assert_ne!(a[..8], a[8..], "xmm{i} halves");
            assert!(a.iter().any(|&b| b != 0) && a.iter().any(|&b| b != 0xFF));
            for b in &p[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn verdict() {
        let p = patterns();
        let mut g = p;
        assert_eq!(first_corrupted(&p, &g), None);
        g[5][15] ^= 1;
        g[9][0] ^= 1;
        assert_eq!(first_corrupted(&p, &g), Some(5));
        let mut s = String::new();
        report(&mut s, None).unwrap();
        report(&mut s, Some(5)).unwrap();
        assert_eq!(
            s,
            "fpu: ok, xmm0-15 preserved across 1000 exits\nfpu: CORRUPTED xmm5\n"
        );
    }
}
