//! Guest control-register writes the hypervisor emulates: which CR4 bits a
//! guest VP may own, and, where the processor does not say which register a
//! MOV to CR4 came from (SVM without decode assists), the instruction fetched
//! through the guest's own page tables and decoded.
//!
//! Everything here reads guest memory through a closure and trusts none of it.

/// CR4 bits (Intel SDM vol. 3 section 2.5).
pub mod cr4 {
    pub const VME: u64 = 1 << 0;
    pub const PVI: u64 = 1 << 1;
    pub const TSD: u64 = 1 << 2;
    pub const DE: u64 = 1 << 3;
    pub const PSE: u64 = 1 << 4;
    pub const PAE: u64 = 1 << 5;
    pub const MCE: u64 = 1 << 6;
    pub const PGE: u64 = 1 << 7;
    pub const PCE: u64 = 1 << 8;
    pub const OSFXSR: u64 = 1 << 9;
    pub const OSXMMEXCPT: u64 = 1 << 10;
    pub const UMIP: u64 = 1 << 11;
    pub const LA57: u64 = 1 << 12;
    pub const FSGSBASE: u64 = 1 << 16;
    pub const PCIDE: u64 = 1 << 17;
    pub const OSXSAVE: u64 = 1 << 18;
    pub const SMEP: u64 = 1 << 20;
    pub const SMAP: u64 = 1 << 21;
    pub const PKE: u64 = 1 << 22;
    /// Bits every x86-64 processor has and whose state lives in the VP
    /// (VMCS/VMCB) or only shapes the VP's own paging and instructions.
    pub const BASE: u64 = VME | PVI | TSD | DE | PSE | PAE | MCE | PGE | PCE | OSFXSR | OSXMMEXCPT;
}

/// The processor features (as CPUID reports them to the guest) that decide
/// which optional CR4 bits a guest may set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cr4Features {
    pub umip: bool,
    pub fsgsbase: bool,
    pub pcid: bool,
    pub smep: bool,
    pub smap: bool,
}

impl Cr4Features {
    /// From CPUID leaf 1 ECX and leaf 7.0 EBX and ECX.
    pub fn from_cpuid(leaf1_ecx: u32, leaf7_ebx: u32, leaf7_ecx: u32) -> Self {
        Cr4Features {
            pcid: leaf1_ecx & (1 << 17) != 0,
            fsgsbase: leaf7_ebx & 1 != 0,
            smep: leaf7_ebx & (1 << 7) != 0,
            smap: leaf7_ebx & (1 << 20) != 0,
            umip: leaf7_ecx & (1 << 2) != 0,
        }
    }

    /// The CR4 bits a guest VP may set. Everything else (VMXE, SMXE, LA57,
    /// OSXSAVE while XSAVE is hidden, PKE, CET, PKS, ...) names state the
    /// hypervisor does not switch per VP or a feature the guest is not
    /// offered: writing it is #GP, as on a processor without it.
    pub fn guest_allowed(&self) -> u64 {
        let mut bits = cr4::BASE;
        for (on, bit) in [
            (self.umip, cr4::UMIP),
            (self.fsgsbase, cr4::FSGSBASE),
            (self.pcid, cr4::PCIDE),
            (self.smep, cr4::SMEP),
            (self.smap, cr4::SMAP),
        ] {
            if on {
                bits |= bit;
            }
        }
        bits
    }
}

/// Whether a guest's MOV to CR4 of `new` is architecturally valid and allowed
/// (else the VP gets #GP(0)). `long_mode`: EFER.LMA; `cr3`: the VP's CR3.
pub fn guest_cr4_ok(new: u64, allowed: u64, long_mode: bool, old: u64, cr3: u64) -> bool {
    if new & !allowed != 0 {
        return false;
    }
    // IA-32e mode needs PAE; PCIDE may be set only in IA-32e mode with
    // CR3[11:0] = 0 (SDM vol. 3 section 4.10.1).
    if long_mode && new & cr4::PAE == 0 {
        return false;
    }
    if new & cr4::PCIDE != 0 && old & cr4::PCIDE == 0 && (!long_mode || cr3 & 0xFFF != 0) {
        return false;
    }
    true
}

/// Whether a change from `old` to `new` requires the VP's TLB to be flushed
/// (SDM vol. 3 section 4.10.4.1: PGE, PAE, PSE, PCIDE cleared, SMEP, ...).
pub fn cr4_change_flushes(old: u64, new: u64) -> bool {
    const PAGING: u64 = cr4::PGE | cr4::PAE | cr4::PSE | cr4::PCIDE | cr4::SMEP | cr4::SMAP;
    (old ^ new) & PAGING != 0
}

/// A VP's paging mode, for fetching its instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paging {
    /// CR0.PG clear: linear = physical.
    Off,
    /// 32-bit paging (CR4.PAE clear), with 4 MiB pages when CR4.PSE is set.
    Bits32 { pse: bool },
    /// PAE paging outside long mode.
    Pae,
    /// 4-level paging (long mode).
    Long,
}

impl Paging {
    pub fn of(cr0: u64, cr4: u64, efer: u64) -> Self {
        if cr0 & (1 << 31) == 0 {
            Paging::Off
        } else if cr4 & cr4::PAE == 0 {
            Paging::Bits32 {
                pse: cr4 & cr4::PSE != 0,
            }
        } else if efer & (1 << 10) != 0 {
            Paging::Long
        } else {
            Paging::Pae
        }
    }
}

/// Translates the linear address `la` through the VP's page tables (rooted at
/// `cr3`). `read(gpa, bytes)` reads 4 or 8 bytes of guest memory, little-endian;
/// `None` where the guest has no memory. Only presence is checked: the
/// caller fetches the instruction the processor just executed.
pub fn translate(
    paging: Paging,
    cr3: u64,
    la: u64,
    read: &dyn Fn(u64, usize) -> Option<u64>,
) -> Option<u64> {
    const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
    const PS: u64 = 1 << 7;
    match paging {
        Paging::Off => Some(la & 0xFFFF_FFFF),
        Paging::Bits32 { pse } => {
            let la = la & 0xFFFF_FFFF;
            let pde = read((cr3 & 0xFFFF_F000) + 4 * (la >> 22), 4)?;
            if pde & 1 == 0 {
                return None;
            }
            if pse && pde & PS != 0 {
                // Bits 20:13 hold physical-address bits 39:32 (PSE-36).
                let base = (pde & 0xFFC0_0000) | ((pde >> 13) & 0xFF) << 32;
                return Some(base | (la & 0x3F_FFFF));
            }
            let pte = read((pde & 0xFFFF_F000) + 4 * ((la >> 12) & 0x3FF), 4)?;
            (pte & 1 != 0).then_some((pte & 0xFFFF_F000) | (la & 0xFFF))
        }
        Paging::Pae | Paging::Long => {
            let (mut table, levels) = if paging == Paging::Long {
                (cr3 & ADDR, 4)
            } else {
                let la = la & 0xFFFF_FFFF;
                let pdpte = read((cr3 & 0xFFFF_FFE0) + 8 * (la >> 30), 8)?;
                if pdpte & 1 == 0 {
                    return None;
                }
                (pdpte & ADDR, 2)
            };
            for level in (1..=levels).rev() {
                let shift = 12 + 9 * (level - 1);
                let entry = read(table + 8 * ((la >> shift) & 0x1FF), 8)?;
                if entry & 1 == 0 {
                    return None;
                }
                // Large pages at the PDPT (1 GiB) and PD (2 MiB) levels.
                if (level == 2 || level == 3) && entry & PS != 0 {
                    let size = 1u64 << shift;
                    return Some((entry & ADDR & !(size - 1)) | (la & (size - 1)));
                }
                table = entry & ADDR;
            }
            Some(table | (la & 0xFFF))
        }
    }
}

/// Decodes a MOV to a control register (`0F 22 /r`, after legacy prefixes and,
/// in 64-bit mode, a REX prefix): the control register and the general
/// register (0 RAX .. 15 R15) it is written from, and the instruction's
/// length. `None` for anything else.
pub fn decode_mov_to_cr(bytes: &[u8], long_mode_64: bool) -> Option<(u8, u8, u8)> {
    let mut i = 0;
    let mut rex = 0u8;
    // At most 15 bytes make an instruction.
    while i < bytes.len().min(15) {
        match bytes[i] {
            0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3 | 0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 => {
                rex = 0; // a REX prefix counts only right before the opcode
                i += 1;
            }
            b @ 0x40..=0x4F if long_mode_64 => {
                rex = b;
                i += 1;
            }
            _ => break,
        }
    }
    if i + 3 > 15 {
        return None;
    }
    let rest = bytes.get(i..i + 3)?;
    if rest[0] != 0x0F || rest[1] != 0x22 {
        return None;
    }
    let modrm = rest[2];
    // The mod field is ignored: the operand is always a register.
    let cr = ((modrm >> 3) & 7) | (rex & 4) << 1;
    let gpr = (modrm & 7) | (rex & 1) << 3;
    Some((cr, gpr, i as u8 + 3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn decodes_mov_to_cr4() {
        // mov cr4, rax / mov cr4, r9 / mov cr8, rcx / with an operand-size prefix.
        assert_eq!(decode_mov_to_cr(&[0x0F, 0x22, 0xE0], true), Some((4, 0, 3)));
        assert_eq!(
            decode_mov_to_cr(&[0x41, 0x0F, 0x22, 0xE1], true),
            Some((4, 9, 4))
        );
        assert_eq!(
            decode_mov_to_cr(&[0x44, 0x0F, 0x22, 0xC1], true),
            Some((8, 1, 4))
        );
        assert_eq!(
            decode_mov_to_cr(&[0x66, 0x0F, 0x22, 0xE3], false),
            Some((4, 3, 4))
        );
        // Outside 64-bit mode 0x41 is INC ECX, not a prefix.
        assert_eq!(decode_mov_to_cr(&[0x41, 0x0F, 0x22, 0xE1], false), None);
        // A REX before a legacy prefix is dropped.
        assert_eq!(
            decode_mov_to_cr(&[0x41, 0x66, 0x0F, 0x22, 0xE1], true),
            Some((4, 1, 5))
        );
        assert_eq!(decode_mov_to_cr(&[0x0F, 0x20, 0xE0], true), None);
        assert_eq!(decode_mov_to_cr(&[0x0F, 0x22], true), None);
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20), long in any::<bool>()) {
            if let Some((cr, gpr, len)) = decode_mov_to_cr(&bytes, long) {
                prop_assert!(cr < 16 && gpr < 16 && len <= 15 && len as usize <= bytes.len());
            }
        }

        #[test]
        fn translating_any_tables_never_panics(la in any::<u64>(), cr3 in any::<u64>(), seed in any::<u64>(), mode in 0u8..4) {
            let paging = [Paging::Off, Paging::Bits32 { pse: true }, Paging::Pae, Paging::Long][mode as usize];
            let read = |gpa: u64, _n: usize| Some(gpa.wrapping_mul(seed) | 1);
            let _ = translate(paging, cr3, la, &read);
        }

        #[test]
        fn forbidden_cr4_bits_are_refused(bits in any::<u64>()) {
            let allowed = Cr4Features { umip: true, fsgsbase: true, pcid: true, smep: true, smap: true }.guest_allowed();
            let new = bits | cr4::PAE;
            prop_assert_eq!(guest_cr4_ok(new, allowed, true, new, 0), new & !allowed == 0);
        }
    }

    #[test]
    fn refuses_the_bits_the_hypervisor_does_not_switch() {
        let allowed = Cr4Features::default().guest_allowed();
        for bit in [cr4::PKE, cr4::OSXSAVE, cr4::LA57, 1 << 13, 1 << 23, 1 << 24] {
            assert!(!guest_cr4_ok(cr4::PAE | bit, allowed, true, cr4::PAE, 0));
        }
        assert!(guest_cr4_ok(
            cr4::PAE | cr4::PGE,
            allowed,
            true,
            cr4::PAE,
            0
        ));
        assert!(
            !guest_cr4_ok(0, allowed, true, cr4::PAE, 0),
            "PAE off in long mode"
        );
        let with_pcid = Cr4Features {
            pcid: true,
            ..Default::default()
        }
        .guest_allowed();
        assert!(!guest_cr4_ok(
            cr4::PAE | cr4::PCIDE,
            with_pcid,
            true,
            cr4::PAE,
            0x1000 | 5
        ));
        assert!(guest_cr4_ok(
            cr4::PAE | cr4::PCIDE,
            with_pcid,
            true,
            cr4::PAE,
            0x1000
        ));
        assert!(cr4_change_flushes(cr4::PAE, cr4::PAE | cr4::PGE));
        assert!(!cr4_change_flushes(cr4::PAE, cr4::PAE | cr4::TSD));
    }

    /// Guest memory as a map of 8-byte words.
    fn mem(words: &[(u64, u64)]) -> HashMap<u64, u64> {
        words.iter().copied().collect()
    }

    #[test]
    fn walks_four_level_tables_with_large_pages() {
        let m = mem(&[
            (0x1000, 0x2003),              // PML4[0] -> PDPT at 0x2000
            (0x2000, 0x3003),              // PDPT[0] -> PD at 0x3000
            (0x2008, 0x4000_0083),         // PDPT[1]: 1 GiB page at 1 GiB
            (0x3000 + 8 * 2, 0x0060_0083), // PD[2]: 2 MiB page at 6 MiB
            (0x3000 + 8 * 3, 0x5003),      // PD[3] -> PT at 0x5000
            (0x5000 + 8 * 4, 0x0009_9003), // PT[4]: 4 KiB page at 0x99000
        ]);
        let read = |gpa: u64, _n: usize| m.get(&gpa).copied();
        let t = |la| translate(Paging::Long, 0x1000, la, &read);
        assert_eq!(t(0x40_0123), Some(0x60_0123));
        assert_eq!(t(0x60_4ABC), Some(0x9_9ABC));
        assert_eq!(t(0x4000_1234), Some(0x4000_1234));
        assert_eq!(t(0x60_5000), None, "PT[5] not present");
        assert_eq!(
            translate(Paging::Off, 0x1000, 0x1_2345, &read),
            Some(0x1_2345)
        );
    }

    #[test]
    fn walks_32_bit_and_pae_tables() {
        let m: HashMap<u64, u64> = mem(&[
            (0x1000 + 4, 0x0080_0083), // PDE[1]: 4 MiB page at 8 MiB
            (0x1000 + 8, 0x3003),      // PDE[2] -> PT at 0x3000
            (0x3000 + 4 * 5, 0x7003),  // PT[5]: page at 0x7000
        ]);
        let read = |gpa: u64, n: usize| {
            m.get(&gpa)
                .map(|v| if n == 4 { v & 0xFFFF_FFFF } else { *v })
        };
        let t = |la| translate(Paging::Bits32 { pse: true }, 0x1000, la, &read);
        assert_eq!(t(0x40_0010), Some(0x80_0010));
        assert_eq!(t(0x80_5010), Some(0x7010));
        let pae = mem(&[(0x2000, 0x4001), (0x4000 + 8 * 2, 0x0060_0083)]);
        let read = |gpa: u64, _n: usize| pae.get(&gpa).copied();
        assert_eq!(
            translate(Paging::Pae, 0x2000, 0x40_0042, &read),
            Some(0x60_0042)
        );
    }
}
