//! The synthetic interrupt controller's message page and the intercept
//! messages (TLFS "Inter-Partition Communication" and "Intercepts"): MSR
//! numbers, the 256-byte message slot, and the X64 intercept payloads.
use crate::partition::Segment;
use crate::{get, Cursor};

pub mod msr {
    pub const SCONTROL: u32 = 0x4000_0080;
    pub const SVERSION: u32 = 0x4000_0081;
    pub const SIEFP: u32 = 0x4000_0082;
    pub const SIMP: u32 = 0x4000_0083;
    pub const EOM: u32 = 0x4000_0084;
    pub const SINT0: u32 = 0x4000_0090;
    pub const SINT15: u32 = 0x4000_009F;
    /// SINTx: vector 7:0, masked 16, auto-EOI 17.
    pub const SINT_MASKED: u64 = 1 << 16;
    /// TLFS: the SINT's interrupt ends at delivery (no EOI).
    pub const SINT_AUTO_EOI: u64 = 1 << 17;
    /// SIMP / SIEFP: enable bit 0, page GPA 63:12.
    pub const PAGE_ENABLE: u64 = 1;
}

/// The SINT the hypervisor posts intercept messages on.
pub const INTERCEPT_SINT: usize = 0;
/// Bytes per message slot; slot n of the SIMP page belongs to SINT n.
pub const SLOT_SIZE: usize = 256;
pub const PAYLOAD_MAX: usize = 240;
/// Bytes of event flags per SINT in the SIEFP page: flag n of SINT s is bit
/// n % 8 of byte s * 256 + n / 8.
pub const EVENT_FLAGS_BYTES: usize = 256;
pub const EVENT_FLAGS_PER_SINT: u32 = EVENT_FLAGS_BYTES as u32 * 8;
/// The SINT VMBus uses (Linux `VMBUS_MESSAGE_SINT`).
pub const VMBUS_SINT: usize = 2;
/// Message flags: bit 0, another message waits behind this one (write EOM).
pub const MESSAGE_PENDING: u8 = 1;

/// Message types (TLFS `HV_MESSAGE_TYPE`).
pub mod kind {
    pub const NONE: u32 = 0;
    pub const UNMAPPED_GPA: u32 = 0x8000_0000;
    pub const GPA_INTERCEPT: u32 = 0x8000_0001;
    pub const UNRECOVERABLE_EXCEPTION: u32 = 0x8000_0021;
    pub const IO_PORT_INTERCEPT: u32 = 0x8001_0000;
    pub const EXCEPTION_INTERCEPT: u32 = 0x8001_0003;
    pub const HALT: u32 = 0x8001_0007;
}

/// A message as it sits in a slot: type u32, payload size u8, flags u8,
/// reserved u16, sender (the partition id for intercepts) u64, payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: u32,
    pub flags: u8,
    pub sender: u64,
    pub size: u8,
    pub payload: [u8; PAYLOAD_MAX],
}

impl Message {
    /// An empty slot's contents.
    pub const EMPTY: Message = Message {
        kind: 0,
        flags: 0,
        sender: 0,
        size: 0,
        payload: [0; PAYLOAD_MAX],
    };

    pub fn encode(&self, out: &mut [u8; SLOT_SIZE]) {
        out[..16].copy_from_slice(&self.header());
        out[16..].copy_from_slice(&self.payload);
    }

    /// The slot's first 16 bytes: type, payload size, flags, sender.
    pub fn header(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0..4].copy_from_slice(&self.kind.to_le_bytes());
        out[4] = self.size.min(PAYLOAD_MAX as u8);
        out[5] = self.flags;
        out[8..16].copy_from_slice(&self.sender.to_le_bytes());
        out
    }

    /// The payload bytes the header counts.
    pub fn used_payload(&self) -> &[u8] {
        &self.payload[..(self.size as usize).min(PAYLOAD_MAX)]
    }

    pub fn decode(b: &[u8; SLOT_SIZE]) -> Self {
        let mut m = Message::EMPTY;
        m.set_header(b[..16].try_into().unwrap_or([0; 16]));
        m.payload.copy_from_slice(&b[16..]);
        m
    }

    /// Takes type, payload size (at most PAYLOAD_MAX), flags and sender
    /// from a slot's first 16 bytes; the payload stays as it is.
    pub fn set_header(&mut self, b: [u8; 16]) {
        self.kind = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        self.size = b[4].min(PAYLOAD_MAX as u8);
        self.flags = b[5];
        self.sender = u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]));
    }
}

/// A message of `kind` from `partition`, its payload written by `fill`
/// (`size` bytes of it).
fn build(
    kind: u32,
    partition: u64,
    size: usize,
    fill: impl FnOnce(&mut Cursor) -> Option<()>,
) -> Message {
    let mut payload = [0; PAYLOAD_MAX];
    let _ = fill(&mut Cursor {
        buf: &mut payload,
        at: 0,
    });
    Message {
        kind,
        flags: 0,
        sender: partition,
        size: size.min(PAYLOAD_MAX) as u8,
        payload,
    }
}

/// The little-endian u64 at offset `i` of a fixed-size array (callers pass
/// constant offsets inside it: no check is left at run time).
#[inline(always)]
fn u64_at<const N: usize>(b: &[u8; N], i: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(v)
}

/// Access types in the intercept header.
pub mod access {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    pub const EXECUTE: u8 = 2;
}

/// `HV_X64_INTERCEPT_MESSAGE_HEADER` (40 bytes): VP index u32, instruction
/// length u8 (low 4 bits), access type u8, execution state u16 (CPL 1:0,
/// CR0.PE 2, CR0.AM 3, EFER.LMA 4, ...), CS (16 bytes, the segment register
/// value layout), RIP u64, RFLAGS u64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterceptHeader {
    pub vp_index: u32,
    pub instruction_length: u8,
    pub access: u8,
    pub execution_state: u16,
    pub cs: Segment,
    pub rip: u64,
    pub rflags: u64,
}

impl InterceptHeader {
    pub const SIZE: usize = 40;

    fn put(&self, c: &mut Cursor) -> Option<()> {
        let mut b = [0; Self::SIZE];
        self.write_to(&mut b);
        c.put(&b)
    }

    fn take(b: &[u8], at: &mut usize) -> Option<Self> {
        Some(Self::read_from(&get(b, at)?))
    }

    /// Fixed offsets into a fixed-size array: no bounds checks at run time
    /// (the intercepts' hot path encodes and decodes one per exit).
    fn write_to(&self, b: &mut [u8; Self::SIZE]) {
        b[0..4].copy_from_slice(&self.vp_index.to_le_bytes());
        b[4] = self.instruction_length & 0xF;
        b[5] = self.access;
        b[6..8].copy_from_slice(&self.execution_state.to_le_bytes());
        b[8..24].copy_from_slice(&self.cs.to_value().to_le_bytes());
        b[24..32].copy_from_slice(&self.rip.to_le_bytes());
        b[32..40].copy_from_slice(&self.rflags.to_le_bytes());
    }

    fn read_from(b: &[u8; Self::SIZE]) -> Self {
        InterceptHeader {
            vp_index: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            instruction_length: b[4] & 0xF,
            access: b[5],
            execution_state: u16::from_le_bytes([b[6], b[7]]),
            cs: Segment::from_value(u64_at(b, 8) as u128 | (u64_at(b, 16) as u128) << 64),
            rip: u64_at(b, 24),
            rflags: u64_at(b, 32),
        }
    }
}

/// `HV_X64_IO_PORT_INTERCEPT_MESSAGE`: header, port u16, access info u8
/// (access size 2:0 in bytes, string 3, rep 4), instruction byte count u8,
/// reserved u32, RAX u64, instruction bytes [16], DS, ES (16 each), RCX, RSI,
/// RDI u64. This hypervisor fills the instruction bytes only where it read
/// them (count 0 otherwise) and DS/ES with zeros.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoPortIntercept {
    pub header: InterceptHeader,
    pub port: u16,
    /// 1, 2 or 4.
    pub size: u8,
    pub string: bool,
    pub rep: bool,
    pub rax: u64,
    pub rcx: u64,
    pub rsi: u64,
    pub rdi: u64,
}

impl IoPortIntercept {
    pub const SIZE: usize = InterceptHeader::SIZE + 2 + 1 + 1 + 4 + 8 + 16 + 32 + 24;

    /// Offsets: header 0, port 40, access info 42, instruction byte count
    /// 43, reserved 44, RAX 48, instruction bytes 56, DS 72, ES 88, RCX 104,
    /// RSI 112, RDI 120.
    pub fn message(&self, partition: u64) -> Message {
        let mut m = Message {
            kind: kind::IO_PORT_INTERCEPT,
            flags: 0,
            sender: partition,
            size: Self::SIZE as u8,
            payload: [0; PAYLOAD_MAX],
        };
        // Always there (the sizes are constants; checked at compile time).
        const { assert!(IoPortIntercept::SIZE <= PAYLOAD_MAX) };
        let Some((b, _)) = m.payload.split_first_chunk_mut::<{ Self::SIZE }>() else {
            return m;
        };
        if let Some((header, _)) = b.split_first_chunk_mut::<{ InterceptHeader::SIZE }>() {
            self.header.write_to(header);
        }
        b[40..42].copy_from_slice(&self.port.to_le_bytes());
        b[42] = (self.size & 7) | (self.string as u8) << 3 | (self.rep as u8) << 4;
        b[48..56].copy_from_slice(&self.rax.to_le_bytes());
        b[104..112].copy_from_slice(&self.rcx.to_le_bytes());
        b[112..120].copy_from_slice(&self.rsi.to_le_bytes());
        b[120..128].copy_from_slice(&self.rdi.to_le_bytes());
        m
    }

    pub fn decode(p: &[u8]) -> Option<Self> {
        let (b, _) = p.split_first_chunk::<{ Self::SIZE }>()?;
        let (header, _) = b.split_first_chunk::<{ InterceptHeader::SIZE }>()?;
        let info = b[42];
        Some(IoPortIntercept {
            header: InterceptHeader::read_from(header),
            port: u16::from_le_bytes([b[40], b[41]]),
            size: info & 7,
            string: info & 8 != 0,
            rep: info & 16 != 0,
            rax: u64_at(b, 48),
            rcx: u64_at(b, 104),
            rsi: u64_at(b, 112),
            rdi: u64_at(b, 120),
        })
    }
}

/// `HV_X64_MEMORY_INTERCEPT_MESSAGE` (for UNMAPPED_GPA and GPA_INTERCEPT):
/// header, cache type u32, instruction byte count u8, access info u8, TPR
/// u8, reserved u8, GVA u64, GPA u64, instruction bytes [16].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryIntercept {
    pub header: InterceptHeader,
    pub gva: u64,
    pub gpa: u64,
    /// The instruction at RIP as the hypervisor fetched it through the
    /// VP's page tables (InstructionByteCount and InstructionBytes): the
    /// root decodes it to emulate the access.
    pub instruction_len: u8,
    pub instruction: [u8; 16],
}

impl MemoryIntercept {
    pub const SIZE: usize = InterceptHeader::SIZE + 8 + 16 + 16;

    pub fn message(&self, kind: u32, partition: u64) -> Message {
        build(kind, partition, Self::SIZE, |c| {
            self.header.put(c)?;
            // CacheType, InstructionByteCount, MemoryAccessInfo, reserved.
            c.put(&[0; 4])?;
            c.put(&[self.instruction_len.min(16), 0, 0, 0])?;
            c.put(&self.gva.to_le_bytes())?;
            c.put(&self.gpa.to_le_bytes())?;
            c.put(&self.instruction)
        })
    }

    pub fn decode(p: &[u8]) -> Option<Self> {
        let mut at = 0;
        let header = InterceptHeader::take(p, &mut at)?;
        get::<4>(p, &mut at)?;
        let [count, ..] = get::<4>(p, &mut at)?;
        Some(MemoryIntercept {
            header,
            gva: u64::from_le_bytes(get(p, &mut at)?),
            gpa: u64::from_le_bytes(get(p, &mut at)?),
            // Never more than the bytes there are.
            instruction_len: count.min(16),
            instruction: get(p, &mut at)?,
        })
    }
}

/// `HV_X64_EXCEPTION_INTERCEPT_MESSAGE`, the part this hypervisor fills:
/// header, vector u16, exception info u8 (error code valid 0, software
/// exception 1), instruction byte count u8 (0), error code u32, exception
/// parameter u64 (#PF: the linear address).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExceptionIntercept {
    pub header: InterceptHeader,
    pub vector: u16,
    pub error_code: Option<u32>,
    pub parameter: u64,
}

impl ExceptionIntercept {
    pub const SIZE: usize = InterceptHeader::SIZE + 16;

    pub fn message(&self, partition: u64) -> Message {
        build(kind::EXCEPTION_INTERCEPT, partition, Self::SIZE, |c| {
            self.header.put(c)?;
            c.put(&self.vector.to_le_bytes())?;
            c.put(&[self.error_code.is_some() as u8, 0])?;
            c.put(&self.error_code.unwrap_or(0).to_le_bytes())?;
            c.put(&self.parameter.to_le_bytes())
        })
    }

    pub fn decode(p: &[u8]) -> Option<Self> {
        let mut at = 0;
        let header = InterceptHeader::take(p, &mut at)?;
        let vector = u16::from_le_bytes(get(p, &mut at)?);
        let [info, _] = get::<2>(p, &mut at)?;
        let code = u32::from_le_bytes(get(p, &mut at)?);
        Some(ExceptionIntercept {
            header,
            vector,
            error_code: (info & 1 != 0).then_some(code),
            parameter: u64::from_le_bytes(get(p, &mut at)?),
        })
    }
}

/// HALT and UNRECOVERABLE_EXCEPTION carry the header only (the TLFS's
/// `HV_X64_HALT_MESSAGE` / `HV_X64_UNRECOVERABLE_EXCEPTION_MESSAGE`); this
/// hypervisor adds a reason code u32 after it for the latter.
pub mod unrecoverable {
    pub const TRIPLE_FAULT: u32 = 1;
    pub const ENTRY_FAILED: u32 = 2;
    pub const UNSUPPORTED: u32 = 3;
    /// The guest said it crashed (CRASH_CTL bit 63): its crash parameters
    /// are in the partition's GuestCrash properties.
    pub const GUEST_CRASH: u32 = 4;
}

pub fn header_message(kind: u32, partition: u64, header: &InterceptHeader, reason: u32) -> Message {
    build(kind, partition, InterceptHeader::SIZE + 4, |c| {
        header.put(c)?;
        c.put(&reason.to_le_bytes())
    })
}

/// The header and the reason code of a header-only message.
pub fn decode_header(p: &[u8]) -> Option<(InterceptHeader, u32)> {
    let mut at = 0;
    let h = InterceptHeader::take(p, &mut at)?;
    Some((h, u32::from_le_bytes(get(p, &mut at)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_intercepts_round_trip_through_a_slot() {
        let io = IoPortIntercept {
            header: InterceptHeader {
                vp_index: 3,
                instruction_length: 1,
                access: access::WRITE,
                execution_state: 0x13,
                cs: Segment {
                    base: 0,
                    limit: 0xFFFF_FFFF,
                    selector: 8,
                    attributes: 0xA09B,
                },
                rip: 0x20_1000,
                rflags: 0x202,
            },
            port: 0x3F8,
            size: 1,
            string: false,
            rep: false,
            rax: 0x41,
            rcx: 5,
            rsi: 6,
            rdi: 7,
        };
        let mut slot = [0; SLOT_SIZE];
        io.message(9).encode(&mut slot);
        let m = Message::decode(&slot);
        assert_eq!(
            (m.kind, m.sender, m.size as usize),
            (kind::IO_PORT_INTERCEPT, 9, IoPortIntercept::SIZE)
        );
        assert_eq!(IoPortIntercept::decode(&m.payload), Some(io));
        let mem = MemoryIntercept {
            header: io.header,
            gva: 1,
            gpa: 0xDEAD_0000,
            instruction_len: 3,
            instruction: [0x8B, 0x47, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        mem.message(kind::UNMAPPED_GPA, 2).encode(&mut slot);
        let m = Message::decode(&slot);
        assert_eq!(MemoryIntercept::decode(&m.payload), Some(mem));
        const { assert!(IoPortIntercept::SIZE <= PAYLOAD_MAX) };
        let ex = ExceptionIntercept {
            header: io.header,
            vector: 14,
            error_code: Some(2),
            parameter: 0xDEAD_0000,
        };
        ex.message(4).encode(&mut slot);
        let m = Message::decode(&slot);
        assert_eq!(
            (m.kind, ExceptionIntercept::decode(&m.payload)),
            (kind::EXCEPTION_INTERCEPT, Some(ex))
        );
    }

    proptest::proptest! {
        /// The root decodes whatever sits in a slot: any bytes decode or
        /// are refused, never a panic; a decoded message re-encodes alike.
        #[test]
        fn any_slot_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), SLOT_SIZE)) {
            let slot: [u8; SLOT_SIZE] = bytes.try_into().unwrap();
            let m = Message::decode(&slot);
            let _ = IoPortIntercept::decode(&m.payload);
            let _ = MemoryIntercept::decode(&m.payload);
            let _ = ExceptionIntercept::decode(&m.payload);
            let _ = decode_header(&m.payload);
            let mut again = [0u8; SLOT_SIZE];
            m.encode(&mut again);
            proptest::prop_assert_eq!(Message::decode(&again), m);
        }

        #[test]
        fn short_payloads_are_refused(n in 0usize..IoPortIntercept::SIZE) {
            let p = [0u8; IoPortIntercept::SIZE];
            let p = &p[..n];
            proptest::prop_assert!(IoPortIntercept::decode(p).is_none());
        }
    }
}
