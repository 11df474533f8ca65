//! Facts derived from the boot block and CPUID.

use hv_abi::RootBoot;

/// The guest OS id the root writes before enabling the hypercall page (TLFS
/// "Reporting the Guest OS Identity", open-source format): bit 63 open source,
/// OS type 1, version 0x000100 (0.1.0) in bits 47:16, build 0.
pub const GUEST_OS_ID: u64 = 0x8100_0000_0100_0000;

/// Bytes of RAM the boot block hands to the root (the free ranges; the root
/// image and its boot area are not counted). Saturating, like the ranges.
pub fn ram_bytes(ranges: &[(u64, u64)]) -> u64 {
    ranges
        .iter()
        .fold(0u64, |sum, &(s, e)| sum.saturating_add(e.saturating_sub(s)))
}

/// Whether `word` is one of the whitespace-separated words of `cmdline`.
pub fn has_word(cmdline: &str, word: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|w| w == word)
}

/// The first address above the identity map the hypervisor builds for the
/// root, as far as the boot block lets the root know it: at least 4 GiB and
/// the end of its highest RAM range, rounded up to 1 GiB. (The hypervisor maps
/// up to its own top of usable RAM, rounded the same way, so this is a lower bound.)
pub fn identity_top(boot: &RootBoot) -> u64 {
    const GIB: u64 = 1 << 30;
    let top = boot
        .ranges()
        .iter()
        .map(|&(_, e)| e)
        .chain([boot.image_end, 4 * GIB])
        .max()
        .unwrap_or(4 * GIB);
    top.checked_add(GIB - 1)
        .map_or(!(GIB - 1), |t| t & !(GIB - 1))
}

/// A 12-byte CPUID vendor string from EBX, ECX, EDX (or EBX, EDX, ECX for leaf
/// 0: the caller orders the registers).
pub fn vendor_string(regs: [u32; 3]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (i, r) in regs.iter().enumerate() {
        s[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
    }
    s
}

/// Printable text of CPUID string bytes: trailing NULs dropped, anything
/// non-printable replaced by `?`.
pub fn printable(bytes: &[u8], out: &mut [u8]) -> usize {
    let len = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    let n = len.min(out.len());
    for (o, &b) in out.iter_mut().zip(&bytes[..n]) {
        *o = if (0x20..0x7F).contains(&b) { b } else { b'?' };
    }
    n
}

/// What the Hyper-V CPUID leaves say about the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HvIdentity {
    /// CPUID.1:ECX bit 31.
    pub present: bool,
    /// Leaf 0x40000000 EAX.
    pub max_leaf: u32,
    /// Leaf 0x40000000 EBX, ECX, EDX.
    pub vendor: [u8; 12],
    /// Leaf 0x40000001 EAX.
    pub interface: [u8; 4],
    /// Leaf 0x40000002 EBX: major (high half), minor (low half).
    pub version: u32,
    /// Leaf 0x40000003 EAX (privileges, low half) and EBX (high half).
    pub privileges: (u32, u32),
}

impl HvIdentity {
    /// From the raw registers: `leaf1_ecx`, then (EAX, EBX, ECX, EDX) of
    /// leaves 0x40000000..=0x40000003.
    pub fn from_cpuid(leaf1_ecx: u32, leaves: [[u32; 4]; 4]) -> Self {
        let present = leaf1_ecx & hv_abi::cpuid::HYPERVISOR_PRESENT != 0;
        if !present {
            return HvIdentity {
                present,
                max_leaf: 0,
                vendor: [0; 12],
                interface: [0; 4],
                version: 0,
                privileges: (0, 0),
            };
        }
        let [l0, l1, l2, l3] = leaves;
        let max_leaf = l0[0];
        let has = |leaf: u32| max_leaf >= leaf;
        HvIdentity {
            present,
            max_leaf,
            vendor: vendor_string([l0[1], l0[2], l0[3]]),
            interface: if has(hv_abi::cpuid::INTERFACE) {
                l1[0].to_le_bytes()
            } else {
                [0; 4]
            },
            version: if has(hv_abi::cpuid::VERSION) {
                l2[1]
            } else {
                0
            },
            privileges: if has(hv_abi::cpuid::FEATURES) {
                (l3[0], l3[1])
            } else {
                (0, 0)
            },
        }
    }

    pub fn is_microsoft_hv(&self) -> bool {
        self.present && self.vendor == vendor_string(hv_abi::cpuid::VENDOR)
    }

    /// Whether the hypercall MSRs may be used (privilege AccessHypercallMsrs).
    pub fn may_use_hypercalls(&self) -> bool {
        self.present
            && self.max_leaf >= hv_abi::cpuid::FEATURES
            && self.privileges.0 & hv_abi::cpuid::privilege::ACCESS_HYPERCALL_MSRS != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_abi::root_boot;

    fn block(ranges: &[(u64, u64)]) -> RootBoot {
        let mut r = RootBoot {
            vp_index: 0,
            vp_count: 1,
            image_start: 0x100_0000,
            image_end: 0x110_0000,
            rsdp: 0,
            cmdline: [0; root_boot::CMDLINE_MAX],
            cmdline_len: 0,
            ranges: [(0, 0); root_boot::MAX_RANGES],
            range_count: ranges.len() as u32,
            modules: [hv_abi::BootModule::default(); root_boot::MAX_MODULES],
            module_count: 0,
        };
        r.ranges[..ranges.len()].copy_from_slice(ranges);
        r
    }

    #[test]
    fn ram_and_identity_top() {
        let b = block(&[(0x1000, 0x9F000), (0x200_0000, 0x4000_0000)]);
        assert_eq!(ram_bytes(b.ranges()), 0x9E000 + 0x3E00_0000);
        assert_eq!(identity_top(&b), 4 << 30);
        let b = block(&[(0x1_0000_0000, 0x1_4000_0001)]);
        assert_eq!(identity_top(&b), 6 << 30);
        assert_eq!(ram_bytes(&[(5, 3)]), 0, "an inverted range counts nothing");
        // Found by the abi_decode fuzz target: ranges of more than 2^64 bytes
        // in all overflowed the sum.
        assert_eq!(ram_bytes(&[(0, u64::MAX), (0, 2)]), u64::MAX);
    }

    #[test]
    fn words_of_the_command_line() {
        assert!(has_word("quiet poweroff", "poweroff"));
        assert!(has_word("poweroff", "poweroff"));
        assert!(!has_word("nopoweroff", "poweroff"));
        assert!(!has_word("", "poweroff"));
    }

    #[test]
    fn identity_from_cpuid() {
        use hv_abi::cpuid::*;
        let leaves = [
            [MAX_LEAF, VENDOR[0], VENDOR[1], VENDOR[2]],
            [INTERFACE_HV1, 0, 0, 0],
            [0, 1 << 16 | 2, 0, 0],
            [
                privilege::ACCESS_HYPERCALL_MSRS,
                privilege::CREATE_PARTITIONS | privilege::CPU_MANAGEMENT,
                0,
                0,
            ],
        ];
        let id = HvIdentity::from_cpuid(HYPERVISOR_PRESENT, leaves);
        assert!(id.is_microsoft_hv());
        assert!(id.may_use_hypercalls());
        assert_eq!(&id.vendor, b"Microsoft Hv");
        assert_eq!(&id.interface, b"Hv#1");
        let none = HvIdentity::from_cpuid(0, leaves);
        assert!(!none.is_microsoft_hv() && !none.may_use_hypercalls());
        let mut out = [0u8; 12];
        let n = printable(b"AB\x01\0\0", &mut out);
        assert_eq!(&out[..n], b"AB?");
    }
}
