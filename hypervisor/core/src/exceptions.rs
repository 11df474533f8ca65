//! The names of the x86 exception vectors (Intel SDM vol. 3 table 6-1), for
//! the reports of the hypervisor and of the root partition.

const NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization exception",
    "#CP control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved",
];

/// `"#PF page fault"` for 14; vectors from 32 up are external interrupts.
pub fn name(vector: u64) -> &'static str {
    NAMES
        .get(vector as usize)
        .copied()
        .unwrap_or("external interrupt")
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert_eq!(super::name(8), "#DF double fault");
        assert_eq!(super::name(14), "#PF page fault");
        assert_eq!(super::name(0x30), "external interrupt");
    }
}
