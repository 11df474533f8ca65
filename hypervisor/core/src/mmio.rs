//! Decoding the instruction behind a memory-mapped I/O access, so that it
//! can be emulated: the MOV forms compilers emit for device registers
//! (`readl`/`writel` and their byte and word siblings). Intel SDM vol. 2,
//! "MOV", "MOVZX" and section 2.1 (prefixes, ModR/M, SIB, displacement).
//! Anything else is `None`: the caller treats the access as unsupported.
//! The bytes are the guest's: every index is checked.

/// Where the data of an access comes from or goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// A general register (0 = RAX .. 15 = R15); `high_byte`: AH, CH, DH
    /// or BH (register 4-7 encoded without REX in a byte access: bits 15:8
    /// of register 0-3).
    Register { index: u8, high_byte: bool },
    /// An immediate (a write).
    Immediate(u64),
}

impl Operand {
    /// The general register that holds the data (0 = RAX .. 15 = R15; for
    /// AH-BH, the register whose bits 15:8 they are), if a register does.
    pub fn register(&self) -> Option<u8> {
        match *self {
            Operand::Register { index, high_byte } if high_byte => Some(index & 3),
            Operand::Register { index, .. } => Some(index),
            Operand::Immediate(_) => None,
        }
    }

    /// The data a write stores, given the value of [`Operand::register`]
    /// (the immediate, or that register's bits, shifted down for AH-BH;
    /// the caller masks to the access size).
    pub fn write_value(&self, register: u64) -> u64 {
        match *self {
            Operand::Register {
                high_byte: true, ..
            } => register >> 8,
            Operand::Register { .. } => register,
            Operand::Immediate(v) => v,
        }
    }
}

/// One decoded access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Instruction length in bytes.
    pub length: u8,
    /// Bytes accessed: 1, 2, 4 or 8.
    pub size: u8,
    pub write: bool,
    pub operand: Operand,
    /// A read that zero-extends into a wider register (MOVZX): the
    /// register's width in bytes.
    pub extend_to: Option<u8>,
}

/// Decodes the instruction in `bytes` (at most 15 are looked at). `long`:
/// 64-bit code (REX prefixes, RIP-relative addressing); otherwise 32-bit
/// code with 32-bit addressing.
pub fn decode(bytes: &[u8], long: bool) -> Option<Access> {
    let bytes = &bytes[..bytes.len().min(15)];
    let mut at = 0;
    let mut operand_16 = false;
    let mut rex = 0u8;
    // Legacy prefixes: operand size, segment overrides (ignored: the
    // address is already known); anything else is not a plain MOV.
    loop {
        match *bytes.get(at)? {
            0x66 => operand_16 = true,
            0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 => {}
            _ => break,
        }
        at += 1;
    }
    if long {
        if let b @ 0x40..=0x4F = *bytes.get(at)? {
            rex = b;
            at += 1;
        }
    }
    let rex_w = rex & 8 != 0;
    let wide = if rex_w {
        8
    } else if operand_16 {
        2
    } else {
        4
    };
    let (opcode, two_byte) = match *bytes.get(at)? {
        0x0F => {
            at += 1;
            (*bytes.get(at)?, true)
        }
        b => (b, false),
    };
    at += 1;
    // (size, write, immediate bytes, zero-extended to)
    let (size, write, imm, extend_to) = match (two_byte, opcode) {
        (false, 0x88) => (1, true, 0, None),
        (false, 0x89) => (wide, true, 0, None),
        (false, 0x8A) => (1, false, 0, None),
        (false, 0x8B) => (wide, false, 0, None),
        (false, 0xC6) => (1, true, 1, None),
        (false, 0xC7) => (wide, true, if wide == 2 { 2 } else { 4 }, None),
        (true, 0xB6) => (1, false, 0, Some(wide)),
        (true, 0xB7) => (2, false, 0, Some(wide)),
        _ => return None,
    };
    let modrm = *bytes.get(at)?;
    at += 1;
    let (md, reg, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    if md == 3 {
        return None; // a register operand: not a memory access
    }
    if imm > 0 && reg != 0 {
        return None; // C6/C7 with /1../7: not MOV
    }
    // SIB, then the displacement.
    let mut disp = match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = *bytes.get(at)?;
        at += 1;
        if md == 0 && sib & 7 == 5 {
            disp = 4;
        }
    } else if md == 0 && rm == 5 {
        disp = 4; // RIP-relative (64-bit) or absolute disp32
    }
    at += disp;
    let operand = if imm > 0 {
        let raw = bytes.get(at..at + imm)?;
        let mut v = 0u64;
        for (i, &b) in raw.iter().enumerate() {
            v |= (b as u64) << (8 * i);
        }
        // imm32 with REX.W is sign-extended to 64 bits.
        if imm == 4 && size == 8 && v & 0x8000_0000 != 0 {
            v |= 0xFFFF_FFFF_0000_0000;
        }
        at += imm;
        Operand::Immediate(v)
    } else {
        let index = reg | if rex & 4 != 0 { 8 } else { 0 };
        Operand::Register {
            index,
            high_byte: size == 1 && extend_to.is_none() && rex == 0 && (4..8).contains(&index),
        }
    };
    if at > bytes.len() {
        return None;
    }
    Some(Access {
        length: at as u8,
        size,
        write,
        operand,
        extend_to,
    })
}

/// A register's new value after a read of `value` (`size` bytes) into it
/// as `access` says: a 4-byte destination clears bits 63:32 (as the
/// processor does), 1- and 2-byte ones keep the rest.
pub fn merge_read(old: u64, value: u64, access: &Access) -> u64 {
    let Operand::Register { high_byte, .. } = access.operand else {
        return old;
    };
    let dest = access.extend_to.unwrap_or(access.size);
    let value = value & mask(access.size);
    match (dest, high_byte) {
        (1, true) => (old & !0xFF00) | (value << 8),
        (1, false) => (old & !0xFF) | value,
        (2, _) => (old & !0xFFFF) | value,
        (4, _) => value,
        _ => value,
    }
}

/// The low `size` bytes set.
pub fn mask(size: u8) -> u64 {
    match size {
        8 => u64::MAX,
        n => (1u64 << (8 * n as u32)) - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(index: u8) -> Operand {
        Operand::Register {
            index,
            high_byte: false,
        }
    }

    #[test]
    fn the_forms_linux_uses() {
        // mov eax, [rdi+0x30]   (readl)
        let a = decode(&[0x8B, 0x47, 0x30], true).unwrap();
        assert_eq!(
            (a.length, a.size, a.write, a.operand),
            (3, 4, false, reg(0))
        );
        // mov [rdx], esi        (writel)
        let a = decode(&[0x89, 0x32], true).unwrap();
        assert_eq!((a.length, a.size, a.write, a.operand), (2, 4, true, reg(6)));
        // mov r9, [rax+rbx*8+0x1000]: REX.WR, SIB, disp32
        let a = decode(&[0x4C, 0x8B, 0x8C, 0xD8, 0, 0x10, 0, 0], true).unwrap();
        assert_eq!((a.length, a.size, a.operand), (8, 8, reg(9)));
        // movzx eax, byte [rip+0x10]
        let a = decode(&[0x0F, 0xB6, 0x05, 0x10, 0, 0, 0], true).unwrap();
        assert_eq!((a.length, a.size, a.extend_to), (7, 1, Some(4)));
        // mov word [rax], 0x1234 (66 C7 /0 iw)
        let a = decode(&[0x66, 0xC7, 0x00, 0x34, 0x12], true).unwrap();
        assert_eq!(
            (a.length, a.size, a.operand),
            (5, 2, Operand::Immediate(0x1234))
        );
        // mov qword [rax], -1 (REX.W C7 /0 id, sign-extended)
        let a = decode(&[0x48, 0xC7, 0x00, 0xFF, 0xFF, 0xFF, 0xFF], true).unwrap();
        assert_eq!(a.operand, Operand::Immediate(u64::MAX));
        // mov ah, [rbx] without REX: AH
        let a = decode(&[0x8A, 0x23], false).unwrap();
        assert_eq!(
            a.operand,
            Operand::Register {
                index: 4,
                high_byte: true
            }
        );
        // Not MOVs, or not memory: refused.
        assert_eq!(decode(&[0x01, 0x07], true), None, "add");
        assert_eq!(decode(&[0x8B, 0xC0], true), None, "register to register");
        assert_eq!(decode(&[0xC7, 0x08, 0, 0, 0, 0], true), None, "C7 /1");
        assert_eq!(decode(&[0x8B, 0x47], true), None, "truncated");
        assert_eq!(decode(&[], true), None);
    }

    #[test]
    fn reads_merge_as_the_processor_writes_registers() {
        let byte = decode(&[0x8A, 0x03], true).unwrap(); // mov al, [rbx]
        assert_eq!(
            merge_read(0x1122_3344_5566_7788, 0xFF, &byte),
            0x1122_3344_5566_77FF
        );
        let ah = decode(&[0x8A, 0x23], false).unwrap();
        assert_eq!(merge_read(0x7788, 0xFF, &ah), 0xFF88);
        assert_eq!(ah.operand.register(), Some(0), "AH is RAX's");
        assert_eq!(ah.operand.write_value(0x7788), 0x77);
        let sil = decode(&[0x40, 0x8A, 0x33], true).unwrap(); // mov sil, [rbx]
        assert_eq!(sil.operand.register(), Some(6), "with REX: SIL");
        let dword = decode(&[0x8B, 0x03], true).unwrap();
        assert_eq!(merge_read(u64::MAX, 0xFFFF_FFFF, &dword), 0xFFFF_FFFF);
        let movzx = decode(&[0x0F, 0xB7, 0x03], true).unwrap(); // movzx eax, word [rbx]
        assert_eq!(merge_read(u64::MAX, 0xFFFF, &movzx), 0xFFFF);
    }

    proptest::proptest! {
        #[test]
        fn never_reads_past_the_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20), long: bool) {
            if let Some(a) = decode(&bytes, long) {
                proptest::prop_assert!(a.length as usize <= bytes.len().min(15));
                proptest::prop_assert!(matches!(a.size, 1 | 2 | 4 | 8));
            }
        }
    }
}
