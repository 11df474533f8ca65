//! Every hypercall's input and output as one typed layout, used by the three
//! sides: the root and the test guests write them, the hypervisor reads them.
//!
//! Each block is a `#[repr(C)]` struct of little-endian integers (this ABI is
//! x86-64 only) with its reserved fields spelled out, so that its bytes are
//! the TLFS's: `zerocopy` gives the byte views without unsafe code, and a
//! compile-time check ties each size to the dispatch table's
//! ([`crate::partition::size`]). TLFS bit fields (map flags, interrupt
//! control, GVA ranges, and the input value in RCX,
//! [`crate::hypercall::Control`]) are `bitfield-struct` types.
//!
//! The hypervisor reads a block from its own copy of the input: [`header`]
//! and [`element`] copy a layout out of the bytes (at any alignment), `None`
//! when the bytes are too short (the dispatch table sizes every block, so a
//! checked call's block never is); [`write_element`] writes a rep output
//! element. Callers build a block with `IntoBytes::as_bytes` or, for a rep
//! call, [`encode_rep`].
//!
//! Reserved fields are not checked to be zero: the hypervisor refuses only
//! what docs/hypercalls.md says it refuses.
use crate::partition::size;
use bitfield_struct::bitfield;
use core::mem::size_of;
pub use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

const _: () = assert!(
    cfg!(target_endian = "little"),
    "the TLFS layouts are little-endian"
);

/// The fixed header (or whole block) `H` at the start of an input block: a
/// copy. `None` when the block is shorter than `H`.
pub fn header<H: FromBytes>(input: &[u8]) -> Option<H> {
    H::read_from_prefix(input).ok().map(|(h, _)| h)
}

/// Rep element `i` of type `E` after the fixed header `H`: a copy. `None`
/// when it lies (partly) outside the block.
pub fn element<H, E: FromBytes>(input: &[u8], i: u16) -> Option<E> {
    let at = size_of::<E>()
        .checked_mul(i as usize)?
        .checked_add(size_of::<H>())?;
    E::read_from_prefix(input.get(at..)?).ok().map(|(e, _)| e)
}

/// Writes output element `i` of a rep call (output blocks have no header).
/// `None` when it lies (partly) outside `output`.
pub fn write_element<E: IntoBytes + Immutable>(output: &mut [u8], i: u16, e: &E) -> Option<()> {
    let at = size_of::<E>().checked_mul(i as usize)?;
    e.write_to_prefix(output.get_mut(at..)?).ok()
}

/// Writes a rep call's input block into `buf`: `header`, then `elements`.
/// The block's length, or `None` when it does not fit.
pub fn encode_rep<H: IntoBytes + Immutable, E: IntoBytes + Immutable>(
    header: &H,
    elements: &[E],
    buf: &mut [u8],
) -> Option<usize> {
    let (h, e) = (header.as_bytes(), elements.as_bytes());
    let len = h.len() + e.len();
    let out = buf.get_mut(..len)?;
    out[..h.len()].copy_from_slice(h);
    out[h.len()..].copy_from_slice(e);
    Some(len)
}

/// Implements the derives every layout carries.
macro_rules! layout {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident: $t:ty,)* } size = $size:expr;) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        pub struct $name { $($(#[$fm])* pub $f: $t,)* }
        const _: () = assert!(size_of::<$name>() as u64 == $size);
    };
}

// ---------------------------------------------------------------------------
// Partitions

layout! {
    /// CreatePartition input (TLFS `HV_INPUT_CREATE_PARTITION`). The flags,
    /// proximity domain and compatibility version are not used.
    pub struct CreatePartition {
        pub flags: u64,
        pub proximity_domain_info: u64,
        pub compatibility_version: u32,
        pub reserved: u32,
    }
    size = size::CREATE_PARTITION;
}

layout! {
    /// CreatePartition output.
    pub struct CreatePartitionOutput {
        pub partition_id: u64,
    }
    size = size::PARTITION_ID;
}

layout! {
    /// InitializePartition, FinalizePartition and DeletePartition input
    /// (fast allowed: the id in RDX).
    pub struct PartitionId {
        pub partition_id: u64,
    }
    size = size::PARTITION_ID;
}

pub type InitializePartition = PartitionId;
pub type FinalizePartition = PartitionId;
pub type DeletePartition = PartitionId;

layout! {
    /// GetPartitionProperty input (property codes: [`crate::partition::property`]).
    pub struct GetPartitionProperty {
        pub partition_id: u64,
        pub property_code: u32,
        pub reserved: u32,
    }
    size = size::GET_PROPERTY;
}

layout! {
    /// GetPartitionProperty output.
    pub struct GetPartitionPropertyOutput {
        pub property_value: u64,
    }
    size = size::PROPERTY_VALUE;
}

layout! {
    /// SetPartitionProperty input.
    pub struct SetPartitionProperty {
        pub partition_id: u64,
        pub property_code: u32,
        pub reserved: u32,
        pub property_value: u64,
    }
    size = size::SET_PROPERTY;
}

// ---------------------------------------------------------------------------
// Memory

/// MapGpaPages access flags (TLFS `HV_MAP_GPA_FLAGS`; the same bits as
/// [`crate::partition::map_flags`]). Readable is required; the other bits
/// are reserved (INVALID_PARAMETER when set).
#[bitfield(u32)]
#[derive(PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MapFlags {
    pub readable: bool,
    pub writable: bool,
    pub kernel_executable: bool,
    pub user_executable: bool,
    #[bits(28)]
    pub reserved: u32,
}

impl MapFlags {
    /// Readable, writable and executable: what the root gives its guests.
    pub const ALL: MapFlags = MapFlags::new()
        .with_readable(true)
        .with_writable(true)
        .with_kernel_executable(true)
        .with_user_executable(true);
}

layout! {
    /// MapGpaPages header (a rep call): `rep_count` pages from guest page
    /// `target_gpa_page` on, each backed by the root page of its element.
    pub struct MapGpaPages {
        pub partition_id: u64,
        pub target_gpa_page: u64,
        pub map_flags: MapFlags,
        pub reserved: u32,
    }
    size = size::MAP_HEADER;
}

layout! {
    /// MapGpaPages element: the root page (its GPA page number) to map.
    pub struct MapGpaPagesElement {
        pub source_gpa_page: u64,
    }
    size = size::MAP_ELEMENT;
}

layout! {
    /// UnmapGpaPages header (a rep call without elements: `rep_count` pages
    /// from `target_gpa_page` on). The flags are ignored.
    pub struct UnmapGpaPages {
        pub partition_id: u64,
        pub target_gpa_page: u64,
        pub unmap_flags: u32,
        pub reserved: u32,
    }
    size = size::MAP_HEADER;
}

// ---------------------------------------------------------------------------
// Virtual processors

layout! {
    /// CreateVp input. The flags are not used.
    pub struct CreateVp {
        pub partition_id: u64,
        pub vp_index: u32,
        pub reserved: u32,
        pub flags: u64,
    }
    size = size::CREATE_VP;
}

layout! {
    /// DeleteVp and StartVirtualProcessor input (fast allowed: RDX, R8).
    pub struct PartitionVp {
        pub partition_id: u64,
        pub vp_index: u32,
        pub reserved: u32,
    }
    size = size::VP;
}

pub type DeleteVp = PartitionVp;
pub type StartVirtualProcessor = PartitionVp;

layout! {
    /// Get/SetVpRegisters header (rep calls). A guest may name only itself:
    /// [`crate::partition::PARTITION_SELF`] or its id,
    /// [`crate::partition::VP_SELF`] or its index. VTL 0 only.
    pub struct VpRegisters {
        pub partition_id: u64,
        pub vp_index: u32,
        pub input_vtl: u8,
        pub reserved: [u8; 3],
    }
    size = size::VP_REGISTERS_HEADER;
}

pub type GetVpRegisters = VpRegisters;
pub type SetVpRegisters = VpRegisters;

layout! {
    /// GetVpRegisters element in: a register name ([`crate::partition::reg`]).
    pub struct RegisterName {
        pub name: u32,
    }
    size = size::REGISTER_NAME;
}

layout! {
    /// GetVpRegisters element out (TLFS `HV_REGISTER_VALUE`).
    pub struct RegisterValue {
        pub value: u128,
    }
    size = size::REGISTER_VALUE;
}

layout! {
    /// SetVpRegisters element (TLFS `HV_REGISTER_ASSOC`).
    pub struct RegisterAssoc {
        pub name: u32,
        pub reserved1: u32,
        pub reserved2: u64,
        pub value: u128,
    }
    size = size::REGISTER_ASSOC;
}

// ---------------------------------------------------------------------------
// Intercepts and interrupts

layout! {
    /// InstallIntercept input (types and access bits:
    /// [`crate::partition::intercept`]).
    pub struct InstallIntercept {
        pub partition_id: u64,
        pub access_type_mask: u32,
        pub intercept_type: u32,
        pub intercept_parameter: u64,
    }
    size = size::INSTALL_INTERCEPT;
}

/// AssertVirtualInterrupt's interrupt control (TLFS
/// `HV_INTERRUPT_CONTROL`). Only a fixed (type 0), edge-triggered interrupt
/// with a physical destination is offered: every bit zero.
#[bitfield(u64)]
#[derive(PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct InterruptControl {
    /// `HV_INTERRUPT_TYPE`: 0 fixed.
    pub interrupt_type: u32,
    pub level_triggered: bool,
    pub logical_destination: bool,
    #[bits(30)]
    pub reserved: u32,
}

layout! {
    /// AssertVirtualInterrupt input: the destination is the target VP's
    /// index (its x2APIC id).
    pub struct AssertVirtualInterrupt {
        pub partition_id: u64,
        pub control: InterruptControl,
        pub destination: u64,
        pub vector: u32,
        pub target_vtl: u8,
        pub reserved: [u8; 3],
    }
    size = size::ASSERT_INTERRUPT;
}

// ---------------------------------------------------------------------------
// Guest calls

layout! {
    /// FlushVirtualAddressSpace input and FlushVirtualAddressList header
    /// (flags: [`crate::partition::flush`]; VP n is bit n of the mask).
    pub struct FlushVirtualAddressSpace {
        pub address_space: u64,
        pub flags: u64,
        pub processor_mask: u64,
    }
    size = size::FLUSH_HEADER;
}

pub type FlushVirtualAddressList = FlushVirtualAddressSpace;

/// FlushVirtualAddressList element (TLFS `HV_GVA_RANGE`): a GVA page and the
/// pages after it.
#[bitfield(u64)]
#[derive(PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GvaRange {
    #[bits(12)]
    pub additional_pages: u64,
    #[bits(52)]
    pub gva_page_number: u64,
}

const _: () = assert!(size_of::<GvaRange>() as u64 == size::FLUSH_ELEMENT);

// ---------------------------------------------------------------------------
// Ports, connections, messages and events

layout! {
    /// `HV_PORT_INFO`: the port's type ([`crate::partition::port_type`]) and
    /// where what arrives on it goes: SINT `target_sint` of VP `target_vp`
    /// of the port's partition; an event port owns flags `base_flag_number`
    /// up to `base_flag_number + flag_count` of that SINT's event flags.
    pub struct PortInfo {
        pub port_type: u32,
        pub reserved: u32,
        pub target_sint: u32,
        pub target_vp: u32,
        pub base_flag_number: u16,
        pub flag_count: u16,
        pub reserved2: u32,
    }
    size = 24;
}

layout! {
    /// CreatePort input: a port in `port_partition` that
    /// `connection_partition` may connect to.
    pub struct CreatePort {
        pub port_partition: u64,
        pub port_id: u32,
        pub port_vtl: u8,
        pub min_connection_vtl: u8,
        pub reserved: u16,
        pub connection_partition: u64,
        pub port_info: PortInfo,
        pub proximity_domain: u64,
    }
    size = size::CREATE_PORT;
}

layout! {
    /// DeletePort input.
    pub struct DeletePort {
        pub port_partition: u64,
        pub port_id: u32,
        pub reserved: u32,
    }
    size = size::DELETE_PORT;
}

layout! {
    /// `HV_CONNECTION_INFO`: the type of the port connected to (the rest is
    /// for monitor and doorbell connections, not offered).
    pub struct ConnectionInfo {
        pub port_type: u32,
        pub reserved: u32,
        pub reserved2: [u64; 3],
    }
    size = 32;
}

layout! {
    /// ConnectPort input: connection `connection_id` of
    /// `connection_partition` leads to port `port_id` of `port_partition`.
    pub struct ConnectPort {
        pub connection_partition: u64,
        pub connection_id: u32,
        pub connection_vtl: u8,
        pub reserved: [u8; 3],
        pub port_partition: u64,
        pub port_id: u32,
        pub reserved2: u32,
        pub connection_info: ConnectionInfo,
        pub proximity_domain: u64,
    }
    size = size::CONNECT_PORT;
}

layout! {
    /// DisconnectPort input.
    pub struct DisconnectPort {
        pub connection_partition: u64,
        pub connection_id: u32,
        pub reserved: u32,
    }
    size = size::DISCONNECT_PORT;
}

layout! {
    /// PostMessage input, less its 240-byte payload, which follows it.
    pub struct PostMessage {
        pub connection_id: u32,
        pub reserved: u32,
        pub message_type: u32,
        pub payload_size: u32,
    }
    size = 16;
}

layout! {
    /// SignalEvent input (a fast call passes it in RDX).
    pub struct SignalEvent {
        pub connection_id: u32,
        pub flag_number: u16,
        pub reserved: u16,
    }
    size = size::SIGNAL_EVENT;
}

/// PostMessageDirect input, less the message: the 256-byte `HV_MESSAGE`
/// (header and payload) follows it, then 4 reserved bytes. Packed, as the
/// TLFS block is: the message starts at byte 20.
#[repr(C, packed)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct PostMessageDirect {
    pub partition_id: u64,
    pub vp_index: u32,
    pub vtl: u8,
    pub reserved: [u8; 3],
    pub sint: u32,
}
const _: () = assert!(size_of::<PostMessageDirect>() == 20);

layout! {
    /// SignalEventDirect input.
    pub struct SignalEventDirect {
        pub partition_id: u64,
        pub vp_index: u32,
        pub vtl: u8,
        pub sint: u8,
        pub flag_number: u16,
    }
    size = size::SIGNAL_EVENT_DIRECT;
}

layout! {
    /// SignalEventDirect output: whether the flag was clear before.
    pub struct SignalEventDirectOutput {
        pub newly_signaled: u8,
        pub reserved: [u8; 7],
    }
    size = size::SIGNAL_EVENT_DIRECT_OUTPUT;
}

// ---------------------------------------------------------------------------
// This ABI's own calls (outputs: `HostInfo`, `HostStats`, `HostLogChunk`)

layout! {
    /// GET_HOST_LOG input: the log position to read from.
    pub struct GetHostLog {
        pub position: u64,
    }
    size = size::HOST_LOG_INPUT;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::{flush, intercept, map_flags, reg, PARTITION_SELF, VP_SELF};

    fn le(b: &[u8], at: usize, n: usize) -> u128 {
        b[at..at + n]
            .iter()
            .rev()
            .fold(0, |v, &x| v << 8 | x as u128)
    }

    /// Each layout's bytes sit at the offsets docs/hypercalls.md gives (the
    /// ones the three sides used to write by hand), and read back the same.
    #[test]
    fn layouts_put_fields_at_their_documented_offsets() {
        let c = SetPartitionProperty {
            partition_id: 7,
            property_code: 0x0001_0002,
            reserved: 0,
            property_value: 55,
        };
        let b = c.as_bytes();
        assert_eq!((le(b, 0, 8), le(b, 8, 4), le(b, 16, 8)), (7, 0x10002, 55));
        assert_eq!(header::<SetPartitionProperty>(b), Some(c));
        assert_eq!(
            header::<GetPartitionProperty>(b).unwrap().property_code,
            0x10002
        );

        let m = MapGpaPages {
            partition_id: 3,
            target_gpa_page: 0x100,
            map_flags: MapFlags::ALL,
            reserved: 0,
        };
        let b = m.as_bytes();
        assert_eq!((le(b, 0, 8), le(b, 8, 8), le(b, 16, 4)), (3, 0x100, 0xF));
        assert_eq!(MapFlags::ALL.into_bits(), map_flags::ALL);
        assert_eq!(
            MapFlags::from_bits(map_flags::READABLE | map_flags::WRITABLE),
            MapFlags::new().with_readable(true).with_writable(true)
        );

        let i = InstallIntercept {
            partition_id: 1,
            access_type_mask: intercept::ACCESS_EXECUTE,
            intercept_type: intercept::X64_EXCEPTION,
            intercept_parameter: 14,
        };
        let b = i.as_bytes();
        assert_eq!(
            (le(b, 0, 8), le(b, 8, 4), le(b, 12, 4), le(b, 16, 8)),
            (1, 4, 3, 14)
        );

        let a = AssertVirtualInterrupt {
            partition_id: 2,
            control: InterruptControl::new().with_level_triggered(true),
            destination: 5,
            vector: 0x30,
            target_vtl: 1,
            reserved: [0; 3],
        };
        let b = a.as_bytes();
        assert_eq!(
            (le(b, 0, 8), le(b, 8, 8), le(b, 16, 8), le(b, 24, 4), b[28]),
            (2, 1 << 32, 5, 0x30, 1)
        );
        assert_eq!(
            InterruptControl::new()
                .with_logical_destination(true)
                .into_bits(),
            1 << 33
        );

        let v = VpRegisters {
            partition_id: PARTITION_SELF,
            vp_index: VP_SELF,
            input_vtl: 0,
            reserved: [0; 3],
        };
        let b = v.as_bytes();
        assert_eq!(
            (le(b, 0, 8), le(b, 8, 4), b[12]),
            (u64::MAX as u128, 0xFFFF_FFFE, 0)
        );

        let r = RegisterAssoc {
            name: reg::RIP,
            value: 0x1122_3344_5566_7788_99AA_BBCC_DDEE_FF00,
            ..Default::default()
        };
        let b = r.as_bytes();
        assert_eq!((le(b, 0, 4), le(b, 16, 16)), (reg::RIP as u128, r.value));

        let cv = CreateVp {
            partition_id: 9,
            vp_index: 3,
            reserved: 0,
            flags: 0xAB,
        };
        let b = cv.as_bytes();
        assert_eq!((le(b, 0, 8), le(b, 8, 4), le(b, 16, 8)), (9, 3, 0xAB));
        assert_eq!(header::<PartitionVp>(b).unwrap().vp_index, 3);

        let f = FlushVirtualAddressSpace {
            address_space: 0,
            flags: flush::ALL_PROCESSORS,
            processor_mask: 1,
        };
        let b = f.as_bytes();
        assert_eq!((le(b, 8, 8), le(b, 16, 8)), (1, 1));
        let g = GvaRange::new()
            .with_gva_page_number(0x12345)
            .with_additional_pages(3);
        assert_eq!(g.into_bits(), 0x1234_5003);

        let cp = CreatePartition {
            compatibility_version: 0xA,
            ..Default::default()
        };
        assert_eq!(le(cp.as_bytes(), 16, 4), 0xA);
        assert_eq!(GetHostLog { position: 5 }.as_bytes(), &5u64.to_le_bytes());
    }

    #[test]
    fn rep_blocks_round_trip() {
        let h = VpRegisters {
            partition_id: 4,
            vp_index: 1,
            ..Default::default()
        };
        let regs = [
            RegisterAssoc {
                name: reg::RAX,
                value: 1,
                ..Default::default()
            },
            RegisterAssoc {
                name: reg::CR3,
                value: 0x5000,
                ..Default::default()
            },
        ];
        let mut buf = [0u8; 128];
        let len = encode_rep(&h, &regs, &mut buf).unwrap();
        assert_eq!(
            len as u64,
            size::VP_REGISTERS_HEADER + 2 * size::REGISTER_ASSOC
        );
        let b = &buf[..len];
        assert_eq!(header::<SetVpRegisters>(b), Some(h));
        assert_eq!(
            element::<SetVpRegisters, RegisterAssoc>(b, 0),
            Some(regs[0])
        );
        assert_eq!(
            element::<SetVpRegisters, RegisterAssoc>(b, 1),
            Some(regs[1])
        );
        assert_eq!(element::<SetVpRegisters, RegisterAssoc>(b, 2), None);
        assert_eq!(element::<SetVpRegisters, RegisterAssoc>(b, u16::MAX), None);
        // The elements start right after the header, in order.
        assert_eq!(le(b, 16 + 32, 4), reg::CR3 as u128);
        assert!(encode_rep(&h, &regs, &mut buf[..len - 1]).is_none());

        let pages = [
            MapGpaPagesElement {
                source_gpa_page: 0x200,
            },
            MapGpaPagesElement {
                source_gpa_page: 0x201,
            },
        ];
        let len = encode_rep(&MapGpaPages::default(), &pages, &mut buf).unwrap();
        assert_eq!(len, 24 + 16);
        assert_eq!(le(&buf, 32, 8), 0x201);
        assert_eq!(
            element::<MapGpaPages, MapGpaPagesElement>(&buf[..len], 1),
            Some(pages[1])
        );

        let names = [
            RegisterName { name: reg::RIP },
            RegisterName { name: reg::RSP },
        ];
        let len = encode_rep(&GetVpRegisters::default(), &names, &mut buf).unwrap();
        assert_eq!(
            (len, le(&buf, 16, 4), le(&buf, 20, 4)),
            (24, 0x20010, 0x20004)
        );
        assert_eq!(header::<PartitionId>(&buf[..4]), None, "too short");

        let mut out = [0u8; 32];
        let v = RegisterValue {
            value: 0xAB << 64 | 0xCD,
        };
        write_element(&mut out, 1, &v).unwrap();
        assert_eq!(
            (le(&out, 16, 8), le(&out, 24, 8), le(&out, 0, 16)),
            (0xCD, 0xAB, 0)
        );
        assert_eq!(write_element(&mut out, 2, &v), None);
        assert_eq!(write_element(&mut out[..31], 1, &v), None);
    }

    /// Reads every layout from `bytes` and writes it back: the same bytes.
    fn round_trip<T: FromBytes + IntoBytes + Immutable>(bytes: &[u8]) -> bool {
        match header::<T>(bytes) {
            Some(t) => t.as_bytes() == &bytes[..size_of::<T>()],
            None => bytes.len() < size_of::<T>(),
        }
    }

    proptest::proptest! {
        /// Whatever bytes a partition passes, every layout reads them and
        /// writes back exactly those bytes (no field is lost or invented).
        #[test]
        fn any_bytes_round_trip(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            proptest::prop_assert!(round_trip::<CreatePartition>(&bytes));
            proptest::prop_assert!(round_trip::<CreatePartitionOutput>(&bytes));
            proptest::prop_assert!(round_trip::<PartitionId>(&bytes));
            proptest::prop_assert!(round_trip::<GetPartitionProperty>(&bytes));
            proptest::prop_assert!(round_trip::<GetPartitionPropertyOutput>(&bytes));
            proptest::prop_assert!(round_trip::<SetPartitionProperty>(&bytes));
            proptest::prop_assert!(round_trip::<MapGpaPages>(&bytes));
            proptest::prop_assert!(round_trip::<MapGpaPagesElement>(&bytes));
            proptest::prop_assert!(round_trip::<UnmapGpaPages>(&bytes));
            proptest::prop_assert!(round_trip::<CreateVp>(&bytes));
            proptest::prop_assert!(round_trip::<PartitionVp>(&bytes));
            proptest::prop_assert!(round_trip::<VpRegisters>(&bytes));
            proptest::prop_assert!(round_trip::<RegisterName>(&bytes));
            proptest::prop_assert!(round_trip::<RegisterValue>(&bytes));
            proptest::prop_assert!(round_trip::<RegisterAssoc>(&bytes));
            proptest::prop_assert!(round_trip::<InstallIntercept>(&bytes));
            proptest::prop_assert!(round_trip::<AssertVirtualInterrupt>(&bytes));
            proptest::prop_assert!(round_trip::<FlushVirtualAddressSpace>(&bytes));
            proptest::prop_assert!(round_trip::<GvaRange>(&bytes));
            proptest::prop_assert!(round_trip::<GetHostLog>(&bytes));
        }

        /// Bit fields: the accessors see exactly the TLFS's bits.
        #[test]
        fn bit_fields_match_the_masks(flags in proptest::prelude::any::<u32>(), control in proptest::prelude::any::<u64>()) {
            let f = MapFlags::from_bits(flags);
            proptest::prop_assert_eq!(f.readable(), flags & map_flags::READABLE != 0);
            proptest::prop_assert_eq!(f.writable(), flags & map_flags::WRITABLE != 0);
            proptest::prop_assert_eq!(f.kernel_executable(), flags & map_flags::KERNEL_EXECUTABLE != 0);
            proptest::prop_assert_eq!(f.user_executable(), flags & map_flags::USER_EXECUTABLE != 0);
            proptest::prop_assert_eq!(f.reserved() != 0, flags & !map_flags::ALL != 0);
            let c = InterruptControl::from_bits(control);
            proptest::prop_assert_eq!(c.interrupt_type(), control as u32);
            proptest::prop_assert_eq!(c.level_triggered(), control & (1 << 32) != 0);
            proptest::prop_assert_eq!(c.logical_destination(), control & (1 << 33) != 0);
            proptest::prop_assert_eq!(c.reserved() as u64, control >> 34);
        }
    }
}
