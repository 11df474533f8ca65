//! Computing a VMX control field from its capability MSR (Intel SDM vol. 3
//! appendix A.3-A.5): the low half holds the allowed-0 settings (bits that
//! must be 1), the high half the allowed-1 settings (bits that may be 1).

/// The control value: the `wanted` bits the processor allows, plus the bits
/// it forces on. `Err` names the `required` bits it cannot set.
pub fn adjust(capability: u64, wanted: u32, required: u32) -> Result<u32, u32> {
    let must_be_one = capability as u32;
    let may_be_one = (capability >> 32) as u32;
    let missing = required & !may_be_one;
    if missing != 0 {
        return Err(missing);
    }
    Ok((wanted | must_be_one) & may_be_one)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IA32_VMX_TRUE_PROCBASED_CTLS as Bochs 2.7's corei7_skylake_x reports it
    /// (read with `log=debug`): allowed-0 0x04006172, allowed-1 0xF7F9FFFE.
    const TRUE_PROCBASED: u64 = 0xF7F9_FFFE_0400_6172;

    #[test]
    fn forced_bits_are_added_and_forbidden_ones_dropped() {
        const HLT: u32 = 1 << 7;
        const MSR_BITMAPS: u32 = 1 << 28;
        const SECONDARY: u32 = 1 << 31;
        let v = adjust(
            TRUE_PROCBASED,
            HLT | MSR_BITMAPS | SECONDARY,
            HLT | MSR_BITMAPS | SECONDARY,
        )
        .unwrap();
        assert_eq!(
            v & (HLT | MSR_BITMAPS | SECONDARY),
            HLT | MSR_BITMAPS | SECONDARY
        );
        assert_eq!(v & 0x0400_6172, 0x0400_6172, "every allowed-0 bit is set");
        assert_eq!(v & !0xF7F9_FFFE, 0, "no bit outside allowed-1");
        // What the hypervisor computes there (logged at boot): 0x940061F2.
        assert_eq!(v, 0x9400_61F2);
        // Bit 0 is not allowed: wanting it drops it; requiring it is an error naming it.
        assert_eq!(adjust(TRUE_PROCBASED, 1, 0).unwrap() & 1, 0);
        assert_eq!(adjust(TRUE_PROCBASED, 1, 1), Err(1));
    }

    #[test]
    fn every_missing_required_bit_is_named() {
        let cap = 0x0000_00F0_0000_0000; // may set bits 4..7 only
        assert_eq!(adjust(cap, 0, 0b1_0001_0001), Err(0b1_0000_0001));
        assert_eq!(adjust(cap, 0xFF, 0x30), Ok(0xF0));
    }
}
