//! GUIDs in Hyper-V (Windows) byte order, and the device class GUIDs.
//!
//! On the wire the first three fields are little-endian and the last eight
//! bytes are in order: `ba6163d9-04a1-4d29-b605-72e2ffb1dc7f` is sent as
//! `d9 63 61 ba a1 04 29 4d b6 05 72 e2 ff b1 dc 7f`.

use core::fmt;

/// A GUID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid {
    /// First group (8 hex digits).
    pub data1: u32,
    /// Second group.
    pub data2: u16,
    /// Third group.
    pub data3: u16,
    /// Last two groups, in textual order.
    pub data4: [u8; 8],
}

impl Guid {
    /// The all-zero GUID.
    pub const ZERO: Guid = Guid::from_u128(0);

    /// From the GUID's textual digits read as one number:
    /// `Guid::from_u128(0xba6163d9_04a1_4d29_b605_72e2ffb1dc7f)`.
    pub const fn from_u128(v: u128) -> Self {
        let b = v.to_be_bytes();
        Self {
            data1: (v >> 96) as u32,
            data2: (v >> 80) as u16,
            data3: (v >> 64) as u16,
            data4: [b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]],
        }
    }

    /// Decodes the 16 wire bytes.
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Self {
            data1: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            data2: u16::from_le_bytes([b[4], b[5]]),
            data3: u16::from_le_bytes([b[6], b[7]]),
            data4: [b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]],
        }
    }

    /// Encodes to the 16 wire bytes.
    pub const fn to_bytes(&self) -> [u8; 16] {
        let a = self.data1.to_le_bytes();
        let b = self.data2.to_le_bytes();
        let c = self.data3.to_le_bytes();
        let d = self.data4;
        [
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.data4;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            self.data1, self.data2, self.data3, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Device class GUIDs (the offer's interface type), as Linux matches them.
pub mod class {
    use super::Guid;

    /// SCSI controller (hv_storvsc).
    pub const SCSI: Guid = Guid::from_u128(0xba6163d9_04a1_4d29_b605_72e2ffb1dc7f);
    /// IDE accelerator (hv_storvsc).
    pub const IDE: Guid = Guid::from_u128(0x32412632_86cb_44a2_9b5c_50d1417354f5);
    /// Fibre Channel (hv_storvsc).
    pub const FIBRE_CHANNEL: Guid = Guid::from_u128(0x2f9bcc4a_0069_4af3_b76b_6fd0be528cda);
    /// Network adapter (hv_netvsc).
    pub const NETWORK: Guid = Guid::from_u128(0xf8615163_df3e_46c5_913f_f2d2f965ed0e);
    /// Shutdown integration service (hv_utils).
    pub const SHUTDOWN: Guid = Guid::from_u128(0x0e0b6031_5213_4934_818b_38d90ced39db);
    /// Time synchronisation integration service (hv_utils).
    pub const TIME_SYNC: Guid = Guid::from_u128(0x9527e630_d0ae_497b_adce_e80ab0175caf);
    /// Heartbeat integration service (hv_utils).
    pub const HEARTBEAT: Guid = Guid::from_u128(0x57164f39_9115_4e78_ab55_382f3bd5422d);
    /// Key-value pair exchange (hv_utils).
    pub const KVP: Guid = Guid::from_u128(0xa9a0f4e7_5a45_4d96_b827_8a841e8c03e6);
    /// Volume shadow copy (hv_utils).
    pub const VSS: Guid = Guid::from_u128(0x35fa2e29_ea23_4236_96ae_3a6ebacba440);
    /// Guest file copy (hv_utils).
    pub const FILE_COPY: Guid = Guid::from_u128(0x34d14be3_dee4_41c8_9ae7_6b174977c192);
    /// Dynamic memory (hv_balloon).
    pub const DYNAMIC_MEMORY: Guid = Guid::from_u128(0x525074dc_8985_46e2_8057_a307dc18a502);
    /// Synthetic video (hyperv_fb / hyperv_drm).
    pub const SYNTHETIC_VIDEO: Guid = Guid::from_u128(0xda0a7802_e377_4aac_8e77_0558eb1073f8);
    /// Synthetic keyboard (hyperv_keyboard).
    pub const KEYBOARD: Guid = Guid::from_u128(0xf912ad6d_2b17_48ea_bd65_f927a61c7684);
    /// Synthetic mouse (hid_hyperv).
    pub const MOUSE: Guid = Guid::from_u128(0xcfa8b69e_5b4a_4cc0_b98b_8ba1a1f3f95a);
    /// This project's echo device ([`crate::echo`]; no Hyper-V driver
    /// matches it).
    pub const ECHO: Guid = Guid::from_u128(0x6c0b_e2a4_3f51_4c8e_a1d7_52e9_0f3b_7c11);
    /// PCI pass-through (pci-hyperv).
    pub const PCI: Guid = Guid::from_u128(0x44c4f61d_4444_4400_9d52_802e27ede19f);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn hyper_v_byte_order() {
        // Linux's HV_SCSI_GUID / HV_NIC_GUID byte arrays.
        assert_eq!(
            class::SCSI.to_bytes(),
            [
                0xd9, 0x63, 0x61, 0xba, 0xa1, 0x04, 0x29, 0x4d, 0xb6, 0x05, 0x72, 0xe2, 0xff, 0xb1,
                0xdc, 0x7f
            ]
        );
        assert_eq!(
            class::NETWORK.to_bytes(),
            [
                0x63, 0x51, 0x61, 0xf8, 0x3e, 0xdf, 0xc5, 0x46, 0x91, 0x3f, 0xf2, 0xd2, 0xf9, 0x65,
                0xed, 0x0e
            ]
        );
        assert_eq!(
            Guid::from_bytes(class::SHUTDOWN.to_bytes()),
            class::SHUTDOWN
        );
        assert_eq!(
            class::TIME_SYNC.to_string(),
            "9527e630-d0ae-497b-adce-e80ab0175caf"
        );
    }
}
