//! Finding the S5 (soft-off) sleep type values in the DSDT without an AML
//! interpreter.
//!
//! Powering off needs `SLP_TYPa/b` from the `\_S5` package (ACPI 6.5 sections
//! 7.4.2 and 16.1.3): `NameOp "_S5_" PackageOp PkgLength NumElements a b ...`.
//! Firmware writes this object in a few fixed shapes, which this parser knows.
//! Anything else gives `None` and power-off falls back to the emulator exit
//! devices. A full AML interpreter belongs in the root partition, not here.

const NAME_OP: u8 = 0x08;
const PACKAGE_OP: u8 = 0x12;
const BYTE_PREFIX: u8 = 0x0A;
const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;

/// `(SLP_TYPa, SLP_TYPb)` for S5, from the DSDT's AML bytes.
pub fn s5_sleep_types(aml: &[u8]) -> Option<(u8, u8)> {
    let at = aml.windows(4).position(|w| w == b"_S5_")?;
    // The name must be the operand of a NameOp, perhaps with a root prefix.
    let named = at >= 1
        && (aml[at - 1] == NAME_OP || (at >= 2 && aml[at - 1] == b'\\' && aml[at - 2] == NAME_OP));
    if !named {
        return None;
    }
    let mut i = at + 4;
    if *aml.get(i)? != PACKAGE_OP {
        return None;
    }
    i += 1;
    // PkgLength: bits 7:6 of the lead byte count the bytes that follow it.
    i += 1 + (*aml.get(i)? >> 6) as usize;
    let _num_elements = aml.get(i)?;
    i += 1;
    let mut value = || -> Option<u8> {
        let v = match *aml.get(i)? {
            BYTE_PREFIX => {
                i += 1;
                *aml.get(i)?
            }
            ZERO_OP => 0,
            ONE_OP => 1,
            _ => return None,
        };
        i += 1;
        Some(v)
    };
    let a = value()?;
    let b = value().unwrap_or(a);
    Some((a & 7, b & 7))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_seen_in_firmware() {
        // QEMU/SeaBIOS: Name (_S5, Package (0x04) { Zero, Zero, Zero, Zero })
        assert_eq!(
            s5_sleep_types(b"xx\x08_S5_\x12\x06\x04\x00\x00\x00\x00yy"),
            Some((0, 0))
        );
        // Byte-prefixed values, root prefix.
        assert_eq!(
            s5_sleep_types(b"\x08\\_S5_\x12\x08\x04\x0a\x05\x0a\x07\x00\x00"),
            Some((5, 7))
        );
        // Two-byte PkgLength.
        assert_eq!(
            s5_sleep_types(b"\x08_S5_\x12\x40\x01\x02\x01\x0a\x03"),
            Some((1, 3))
        );
    }

    #[test]
    fn not_found_or_truncated() {
        assert_eq!(s5_sleep_types(b""), None);
        assert_eq!(
            s5_sleep_types(b"_S5_\x12\x06\x04\x00"),
            None,
            "not after a NameOp"
        );
        assert_eq!(s5_sleep_types(b"\x08_S5_\x12"), None);
        assert_eq!(
            s5_sleep_types(b"\x08_S5_\x14\x06"),
            None,
            "a method, not a package"
        );
        assert_eq!(s5_sleep_types(b"\x08_S5_\x12\xc0"), None);
    }
}
