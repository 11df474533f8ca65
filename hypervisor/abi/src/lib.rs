//! The interface between the hypervisor and the partitions, shared by the
//! hypervisor, the root partition and test guests.
//!
//! Hyper-V facts (CPUID leaves, MSR numbers, the hypercall input value and
//! status codes) follow the Hyper-V Top-Level Functional Specification (TLFS).
//! Calls in the private range `0x7F00..=0x7FFF` are this project's own and are
//! documented in docs/hypercalls.md. Structures cross the boundary as
//! little-endian bytes: hypercall blocks as the typed `#[repr(C)]` layouts of
//! [`layout`] (read by copy from the hypervisor's own copy of the block), the
//! other structures through explicit `encode`/`decode` functions. No
//! reference into partition memory is held.
#![no_std]
#![forbid(unsafe_code)]

/// Bumped on every incompatible change (docs/hypercalls.md keeps the log).
pub const ABI_VERSION: u32 = 2;

pub mod layout;
pub mod partition;
pub mod synic;

/// Hyper-V CPUID leaves (TLFS "Feature Discovery").
pub mod cpuid {
    pub const VENDOR_AND_MAX: u32 = 0x4000_0000;
    pub const INTERFACE: u32 = 0x4000_0001;
    pub const VERSION: u32 = 0x4000_0002;
    pub const FEATURES: u32 = 0x4000_0003;
    pub const RECOMMENDATIONS: u32 = 0x4000_0004;
    pub const LIMITS: u32 = 0x4000_0005;
    pub const HARDWARE_FEATURES: u32 = 0x4000_0006;
    /// The highest leaf this hypervisor answers.
    pub const MAX_LEAF: u32 = HARDWARE_FEATURES;
    /// "Microsoft Hv" in EBX, ECX, EDX.
    pub const VENDOR: [u32; 3] = [0x7263_694D, 0x666F_736F, 0x7648_2074];
    /// "Hv#1".
    pub const INTERFACE_HV1: u32 = 0x3123_7648;
    /// CPUID.1:ECX bit 31: a hypervisor is present.
    pub const HYPERVISOR_PRESENT: u32 = 1 << 31;

    /// Leaf 0x40000003 EDX: optional features.
    pub mod features_edx {
        /// Bit 8: the frequency MSRs can be read.
        pub const FREQUENCY_MSRS_AVAILABLE: u32 = 1 << 8;
        /// Bit 10: the guest crash MSRs (0x40000100-0x40000105).
        pub const GUEST_CRASH_MSRS: u32 = 1 << 10;
        /// Bit 19: synthetic timers in direct mode (a vector, no message).
        pub const DIRECT_SYNTHETIC_TIMERS: u32 = 1 << 19;
    }

    /// Leaf 0x40000004 EAX: implementation recommendations.
    pub mod hints {
        /// Bit 3: use the APIC MSRs (EOI, ICR, TPR at 0x40000070-72) and
        /// the VP assist page's "no EOI required" bit.
        pub const APIC_ACCESS_RECOMMENDED: u32 = 1 << 3;
        /// Bit 9: do not use AutoEOI; end SynIC interrupts with an EOI.
        pub const DEPRECATE_AUTO_EOI: u32 = 1 << 9;
    }

    /// Partition privilege mask, low half (leaf 0x40000003 EAX).
    pub mod privilege {
        pub const ACCESS_VP_RUNTIME: u32 = 1 << 0;
        pub const ACCESS_PARTITION_REFERENCE_COUNTER: u32 = 1 << 1;
        pub const ACCESS_SYNIC_REGS: u32 = 1 << 2;
        /// The synthetic timer MSRs (0x400000B0-B7).
        pub const ACCESS_SYNTHETIC_TIMER_REGS: u32 = 1 << 3;
        /// The APIC MSRs and the VP assist page (0x40000070-0x40000073).
        pub const ACCESS_INTR_CTRL_REGS: u32 = 1 << 4;
        pub const ACCESS_HYPERCALL_MSRS: u32 = 1 << 5;
        pub const ACCESS_VP_INDEX: u32 = 1 << 6;
        /// The reference TSC page (MSR 0x40000021).
        pub const ACCESS_PARTITION_REFERENCE_TSC: u32 = 1 << 9;
        /// The TSC and APIC frequency MSRs (0x40000022, 0x40000023).
        pub const ACCESS_FREQUENCY_MSRS: u32 = 1 << 11;
        /// High half (leaf 0x40000003 EBX), bit 32+0: CreatePartitions.
        pub const CREATE_PARTITIONS: u32 = 1 << 0;
        /// High half bit 32+12: CpuManagement (marks the root partition).
        pub const CPU_MANAGEMENT: u32 = 1 << 12;
        /// EBX: HvPostMessage and HvSignalEvent.
        pub const POST_MESSAGES: u32 = 1 << 4;
        pub const SIGNAL_EVENTS: u32 = 1 << 5;
        /// EBX: HvCreatePort and HvConnectPort (and their Delete and
        /// Disconnect).
        pub const CREATE_PORT: u32 = 1 << 6;
        pub const CONNECT_PORT: u32 = 1 << 7;
    }
}

/// Hyper-V synthetic MSRs (TLFS).
pub mod msr {
    pub const GUEST_OS_ID: u32 = 0x4000_0000;
    pub const HYPERCALL: u32 = 0x4000_0001;
    pub const VP_INDEX: u32 = 0x4000_0002;
    pub const TIME_REF_COUNT: u32 = 0x4000_0020;
    /// The reference TSC page: bit 0 enables, bits 63:12 are its GPA.
    pub const REFERENCE_TSC: u32 = 0x4000_0021;
    /// Read-only: the TSC's and the APIC timer's frequencies in Hz.
    pub const TSC_FREQUENCY: u32 = 0x4000_0022;
    pub const APIC_FREQUENCY: u32 = 0x4000_0023;
    /// The VP assist page: bit 0 enables, bits 63:12 are its GPA.
    pub const VP_ASSIST_PAGE: u32 = 0x4000_0073;
    /// Guest crash parameters P0-P4 and the control register (bit 63:
    /// CrashNotify, the guest has crashed).
    pub const CRASH_P0: u32 = 0x4000_0100;
    pub const CRASH_CTL: u32 = 0x4000_0105;
    /// CRASH_CTL bit 63: the guest has crashed (P0-P4 say how).
    pub const CRASH_NOTIFY: u64 = 1 << 63;
    /// CRASH_CTL bit 62: P3 is the GPA of a message, P4 its length.
    pub const CRASH_MESSAGE: u64 = 1 << 62;
    /// HYPERCALL MSR: bit 0 enables the page, bits 63:12 are its GPA.
    pub const HYPERCALL_ENABLE: u64 = 1;
}

/// The hypercall input value (RCX) and status (RAX), TLFS "Hypercall Interface".
pub mod hypercall {
    use bitfield_struct::bitfield;

    /// The input value in RCX as the TLFS lays it out (`HV_HYPERCALL_INPUT`);
    /// [`Input`] is its checked, decoded form.
    #[bitfield(u64)]
    #[derive(PartialEq, Eq)]
    pub struct Control {
        pub code: u16,
        pub fast: bool,
        /// In 8-byte units.
        #[bits(10)]
        pub variable_header_size: u16,
        #[bits(5)]
        pub reserved0: u8,
        #[bits(12)]
        pub rep_count: u16,
        #[bits(4)]
        pub reserved1: u8,
        #[bits(12)]
        pub rep_start: u16,
        #[bits(4)]
        pub reserved2: u8,
    }

    impl Control {
        /// Some reserved bit is set.
        pub const fn reserved(&self) -> bool {
            self.reserved0() != 0 || self.reserved1() != 0 || self.reserved2() != 0
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Input {
        pub code: u16,
        pub fast: bool,
        pub variable_header_size: u16,
        pub rep_count: u16,
        pub rep_start: u16,
    }

    impl Input {
        /// A slow (memory) call: `rep_count` elements from index 0.
        pub const fn slow(code: u16, rep_count: u16) -> Self {
            Input {
                code,
                fast: false,
                variable_header_size: 0,
                rep_count,
                rep_start: 0,
            }
        }

        /// A fast (register) call without reps.
        pub const fn fast(code: u16) -> Self {
            Input {
                fast: true,
                ..Self::slow(code, 0)
            }
        }

        /// Decodes RCX; `None` when reserved bits are set (the caller answers
        /// `INVALID_HYPERCALL_INPUT`).
        pub const fn decode(rcx: u64) -> Option<Self> {
            let c = Control::from_bits(rcx);
            if c.reserved() {
                return None;
            }
            Some(Input {
                code: c.code(),
                fast: c.fast(),
                variable_header_size: c.variable_header_size(),
                rep_count: c.rep_count(),
                rep_start: c.rep_start(),
            })
        }

        /// The RCX value; fields wider than theirs in [`Control`] are cut to
        /// their widths.
        pub const fn encode(&self) -> u64 {
            Control::new()
                .with_code(self.code)
                .with_fast(self.fast)
                .with_variable_header_size(self.variable_header_size & 0x3FF)
                .with_rep_count(self.rep_count & 0xFFF)
                .with_rep_start(self.rep_start & 0xFFF)
                .into_bits()
        }
    }

    /// HV_STATUS codes.
    pub mod status {
        pub const SUCCESS: u16 = 0x0000;
        pub const INVALID_HYPERCALL_CODE: u16 = 0x0002;
        pub const INVALID_HYPERCALL_INPUT: u16 = 0x0003;
        pub const INVALID_ALIGNMENT: u16 = 0x0004;
        pub const INVALID_PARAMETER: u16 = 0x0005;
        pub const ACCESS_DENIED: u16 = 0x0006;
        pub const INVALID_PARTITION_STATE: u16 = 0x0007;
        pub const OPERATION_DENIED: u16 = 0x0008;
        pub const UNKNOWN_PROPERTY: u16 = 0x0009;
        pub const PROPERTY_VALUE_OUT_OF_RANGE: u16 = 0x000A;
        pub const INSUFFICIENT_MEMORY: u16 = 0x000B;
        pub const INVALID_PARTITION_ID: u16 = 0x000D;
        pub const INVALID_VP_INDEX: u16 = 0x000E;
        pub const NOT_FOUND: u16 = 0x0010;
        pub const INVALID_PORT_ID: u16 = 0x0011;
        pub const INVALID_CONNECTION_ID: u16 = 0x0012;
        pub const INSUFFICIENT_BUFFERS: u16 = 0x0013;
        pub const INVALID_VP_STATE: u16 = 0x0015;
        pub const INVALID_SYNIC_STATE: u16 = 0x0018;
        pub const OBJECT_IN_USE: u16 = 0x0019;
        pub const INVALID_REGISTER_VALUE: u16 = 0x0050;
    }

    /// Root-only: fills the output page with [`crate::HostInfo`]. Slow call,
    /// no input, output GPA in R8 (page-aligned).
    pub const GET_HOST_INFO: u16 = 0x7F00;
    /// Root-only: fills the output page with [`crate::HostStats`].
    pub const GET_HOST_STATS: u16 = 0x7F01;
    /// Root-only: the hypervisor's log from a position on. Input: the
    /// position (u64); output page: [`crate::HostLogChunk`].
    pub const GET_HOST_LOG: u16 = 0x7F02;
    /// Root-only: HvCallSetVpRegisters (same input), then, when it succeeded
    /// and the caller's interrupts are enabled, the calling VP halts as at
    /// HLT. The root's worker resumes an intercepted VP and goes idle in one
    /// exit; it executes `sti; vmcall` itself so that no interrupt falls
    /// between the two (docs/hypercalls.md).
    pub const SET_VP_REGISTERS_THEN_IDLE: u16 = 0x7F03;
    /// Root-only: HvCallSignalEventDirect (same input and output), then the
    /// calling VP halts as for [`SET_VP_REGISTERS_THEN_IDLE`]. A device
    /// server signals the channel it answered and goes idle in one exit.
    pub const SIGNAL_EVENT_DIRECT_THEN_IDLE: u16 = 0x7F04;
    /// Root-only, a register (fast) call: the guest VP held by an intercept
    /// goes on with the RAX and RIP given, as a SetVpRegisters of RAX, RIP
    /// and InterceptSuspend 0 would make it, without the memory block and
    /// the register list (the resume of every I/O port intercept). RDX: the
    /// partition id; R8: the VP index; R9: the VP's RAX; R10: its RIP (R9
    /// and R10 are inputs beyond the TLFS's two fast-call registers; this
    /// call is ours). INVALID_VP_STATE when the VP is not held by an
    /// intercept (docs/hypercalls.md).
    pub const COMPLETE_INTERCEPT: u16 = 0x7F05;
    /// Root-only: [`COMPLETE_INTERCEPT`], then the calling VP halts as for
    /// [`SET_VP_REGISTERS_THEN_IDLE`].
    pub const COMPLETE_INTERCEPT_THEN_IDLE: u16 = 0x7F06;

    /// Bytes at the start of the hypercall page: `vmcall; ret` (Intel) or
    /// `vmmcall; ret` (AMD); the hypervisor writes the right one.
    pub const VMCALL_PAGE: [u8; 4] = [0x0F, 0x01, 0xC1, 0xC3];
    pub const VMMCALL_PAGE: [u8; 4] = [0x0F, 0x01, 0xD9, 0xC3];
}

/// A little-endian writer/reader over a byte buffer for the structures below.
struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) -> Option<()> {
        self.buf
            .get_mut(self.at..self.at + bytes.len())?
            .copy_from_slice(bytes);
        self.at += bytes.len();
        Some(())
    }
}

fn get<const N: usize>(buf: &[u8], at: &mut usize) -> Option<[u8; N]> {
    let v = buf.get(*at..*at + N)?.try_into().ok()?;
    *at += N;
    Some(v)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel = 1,
    Amd = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slat {
    Ept = 1,
    Npt = 2,
}

/// What `GET_HOST_INFO` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostInfo {
    pub abi_version: u32,
    /// The hypervisor's version, major.minor.patch.
    pub version: [u16; 3],
    pub vendor: Vendor,
    pub slat: Slat,
    pub logical_processors: u32,
    pub root_vps: u32,
    pub memory_total_bytes: u64,
    /// Memory the hypervisor keeps for itself (image, tables, stacks, heap, SLAT tables).
    pub hypervisor_bytes: u64,
    /// Memory the hypervisor can still hand out.
    pub hypervisor_free_bytes: u64,
    pub tsc_hz: u64,
    /// The physical local APIC ID of LP 0, where root VP 0 runs: the
    /// destination the root gives its devices' interrupts
    /// ([`ROOT_DEVICE_VECTORS`]).
    pub lp0_apic_id: u32,
}

/// Physical interrupt vectors the hypervisor hands to the root: one that
/// arrives at an LP is acknowledged there and requested in the root VP that
/// runs on that LP, as its own interrupt with the same vector. The root
/// programs its devices (through the I/O APIC it owns) with these vectors,
/// edge-triggered: the hypervisor acknowledges at once, so a level-triggered
/// line still asserted would interrupt again and again. Other vectors are the
/// hypervisor's own (0xF0 and up) or a fault.
pub const ROOT_DEVICE_VECTORS: core::ops::RangeInclusive<u8> = 0x50..=0xDF;

impl HostInfo {
    pub const SIZE: usize = 64;

    pub fn encode(&self, out: &mut [u8]) -> Option<()> {
        let mut c = Cursor { buf: out, at: 0 };
        c.put(&self.abi_version.to_le_bytes())?;
        for v in self.version {
            c.put(&v.to_le_bytes())?;
        }
        c.put(&[self.vendor as u8, self.slat as u8])?;
        c.put(&self.logical_processors.to_le_bytes())?;
        c.put(&self.root_vps.to_le_bytes())?;
        c.put(&[0; 4])?;
        c.put(&self.memory_total_bytes.to_le_bytes())?;
        c.put(&self.hypervisor_bytes.to_le_bytes())?;
        c.put(&self.hypervisor_free_bytes.to_le_bytes())?;
        c.put(&self.tsc_hz.to_le_bytes())?;
        c.put(&self.lp0_apic_id.to_le_bytes())?;
        c.put(&[0; 4])
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut at = 0;
        let abi_version = u32::from_le_bytes(get(b, &mut at)?);
        let version = [
            u16::from_le_bytes(get(b, &mut at)?),
            u16::from_le_bytes(get(b, &mut at)?),
            u16::from_le_bytes(get(b, &mut at)?),
        ];
        let [v, s] = get::<2>(b, &mut at)?;
        let vendor = match v {
            1 => Vendor::Intel,
            2 => Vendor::Amd,
            _ => return None,
        };
        let slat = match s {
            1 => Slat::Ept,
            2 => Slat::Npt,
            _ => return None,
        };
        let logical_processors = u32::from_le_bytes(get(b, &mut at)?);
        let root_vps = u32::from_le_bytes(get(b, &mut at)?);
        get::<4>(b, &mut at)?;
        Some(HostInfo {
            abi_version,
            version,
            vendor,
            slat,
            logical_processors,
            root_vps,
            memory_total_bytes: u64::from_le_bytes(get(b, &mut at)?),
            hypervisor_bytes: u64::from_le_bytes(get(b, &mut at)?),
            hypervisor_free_bytes: u64::from_le_bytes(get(b, &mut at)?),
            tsc_hz: u64::from_le_bytes(get(b, &mut at)?),
            lp0_apic_id: u32::from_le_bytes(get(b, &mut at)?),
        })
    }
}

/// Why a VP left guest mode, architecture-neutral (the vendor backends translate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitReason {
    Cpuid = 0,
    MsrRead,
    MsrWrite,
    IoPort,
    Halt,
    Hypercall,
    SlatViolation,
    Xsetbv,
    ControlRegister,
    ExternalInterrupt,
    Preemption,
    Nmi,
    Exception,
    TripleFault,
    Other,
}

impl ExitReason {
    pub const COUNT: usize = 15;
    pub const ALL: [ExitReason; Self::COUNT] = [
        Self::Cpuid,
        Self::MsrRead,
        Self::MsrWrite,
        Self::IoPort,
        Self::Halt,
        Self::Hypercall,
        Self::SlatViolation,
        Self::Xsetbv,
        Self::ControlRegister,
        Self::ExternalInterrupt,
        Self::Preemption,
        Self::Nmi,
        Self::Exception,
        Self::TripleFault,
        Self::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Cpuid => "cpuid",
            Self::MsrRead => "rdmsr",
            Self::MsrWrite => "wrmsr",
            Self::IoPort => "io",
            Self::Halt => "hlt",
            Self::Hypercall => "hypercall",
            Self::SlatViolation => "slat-violation",
            Self::Xsetbv => "xsetbv",
            Self::ControlRegister => "cr-access",
            Self::ExternalInterrupt => "interrupt",
            Self::Preemption => "preemption",
            Self::Nmi => "nmi",
            Self::Exception => "exception",
            Self::TripleFault => "triple-fault",
            Self::Other => "other",
        }
    }
}

/// Counters of one logical processor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LpStats {
    pub exits: [u64; ExitReason::COUNT],
    pub world_switches: u64,
    /// TSC ticks spent in the hypervisor (from exit to the next entry).
    pub hypervisor_tsc: u64,
    /// TSC ticks since the LP first entered a partition.
    pub total_tsc: u64,
}

/// What `GET_HOST_LOG` returns: bytes of the hypervisor's log from `start`
/// on (`start` is past the position asked for when older bytes were
/// overwritten), and how many bytes were ever written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLogChunk<'a> {
    pub start: u64,
    pub written: u64,
    pub bytes: &'a [u8],
}

impl<'a> HostLogChunk<'a> {
    /// Header: start (u64), written (u64), length (u32), reserved (u32).
    pub const HEADER: usize = 24;
    /// Log bytes that fit in the 4 KiB output page.
    pub const MAX_BYTES: usize = 4096 - Self::HEADER;

    /// Writes the header for `len` bytes already placed at `out[HEADER..]`.
    pub fn encode_header(start: u64, written: u64, len: usize, out: &mut [u8]) -> Option<()> {
        if len > Self::MAX_BYTES || out.len() < Self::HEADER + len {
            return None;
        }
        let mut c = Cursor { buf: out, at: 0 };
        c.put(&start.to_le_bytes())?;
        c.put(&written.to_le_bytes())?;
        c.put(&(len as u32).to_le_bytes())?;
        c.put(&[0; 4])
    }

    /// Refuses a length beyond the page or a start past what was written.
    pub fn decode(b: &'a [u8]) -> Option<Self> {
        let mut at = 0;
        let start = u64::from_le_bytes(get(b, &mut at)?);
        let written = u64::from_le_bytes(get(b, &mut at)?);
        let len = u32::from_le_bytes(get(b, &mut at)?) as usize;
        if len > Self::MAX_BYTES || start.checked_add(len as u64)? > written {
            return None;
        }
        Some(HostLogChunk {
            start,
            written,
            bytes: b.get(Self::HEADER..Self::HEADER + len)?,
        })
    }
}

/// What `GET_HOST_STATS` returns: one `LpStats` per logical processor.
pub struct HostStats;

impl HostStats {
    /// Bytes per LP record.
    pub const LP_SIZE: usize = 8 * (ExitReason::COUNT + 3);
    /// LPs that fit in the 4 KiB output page after the 8-byte header.
    pub const MAX_LPS: usize = (4096 - 8) / Self::LP_SIZE;

    /// Header: LP count (u32), reserved (u32); then each LP's counters.
    pub fn encode(lps: &[LpStats], out: &mut [u8]) -> Option<()> {
        let n = lps.len().min(Self::MAX_LPS);
        let mut c = Cursor { buf: out, at: 0 };
        c.put(&(n as u32).to_le_bytes())?;
        c.put(&[0; 4])?;
        for lp in &lps[..n] {
            for e in lp.exits {
                c.put(&e.to_le_bytes())?;
            }
            c.put(&lp.world_switches.to_le_bytes())?;
            c.put(&lp.hypervisor_tsc.to_le_bytes())?;
            c.put(&lp.total_tsc.to_le_bytes())?;
        }
        Some(())
    }

    /// Decodes into `out`; returns how many LPs were filled.
    pub fn decode(b: &[u8], out: &mut [LpStats]) -> Option<usize> {
        let mut at = 0;
        let n = u32::from_le_bytes(get(b, &mut at)?) as usize;
        get::<4>(b, &mut at)?;
        if n > Self::MAX_LPS {
            return None;
        }
        let n = n.min(out.len());
        for lp in &mut out[..n] {
            for e in &mut lp.exits {
                *e = u64::from_le_bytes(get(b, &mut at)?);
            }
            lp.world_switches = u64::from_le_bytes(get(b, &mut at)?);
            lp.hypervisor_tsc = u64::from_le_bytes(get(b, &mut at)?);
            lp.total_tsc = u64::from_le_bytes(get(b, &mut at)?);
        }
        Some(n)
    }
}

/// How the hypervisor starts each root VP: 64-bit mode, paging on with an
/// identity map of every root GPA below `identity_top` (2 MiB pages, built by
/// the hypervisor in root memory), CS = 0x08 (64-bit code), DS/ES/SS = 0x10,
/// interrupts off, RSP = a 64 KiB stack in root memory, RDI = the GPA of this
/// block, RIP = the root image's ELF entry. The root image is an ELF64 linked
/// at [`ROOT_IMAGE_BASE`] and loaded there (GPA = SPA) from the boot module
/// whose name ends with `root`.
pub mod root_boot {
    /// 64 MiB: above where boot loaders put modules after the hypervisor
    /// (QEMU and GRUB pack them from about 1 MiB up; a Linux kernel and its
    /// initrd take over 10 MiB), below the top of a 128 MiB machine.
    pub const ROOT_IMAGE_BASE: u64 = 0x0400_0000;
    pub const MAGIC: u64 = u64::from_le_bytes(*b"HVROOT01");
    pub const MAX_RANGES: usize = 64;
    pub const CMDLINE_MAX: usize = 256;
    pub const MAX_MODULES: usize = 32;
    pub const MODULE_NAME_MAX: usize = 48;
    /// Size of the encoded block.
    pub const SIZE: usize = 8
        + 4 * 4
        + 8 * 3
        + CMDLINE_MAX
        + 4
        + MAX_RANGES * 16
        + 4
        + MAX_MODULES * (16 + MODULE_NAME_MAX);
}

/// A boot module the root may read (guest images): `[start, end)` in root
/// memory and its name (the first word of the module's string, cut to
/// `MODULE_NAME_MAX` bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootModule {
    pub start: u64,
    pub end: u64,
    pub name: [u8; root_boot::MODULE_NAME_MAX],
}

impl Default for BootModule {
    fn default() -> Self {
        BootModule {
            start: 0,
            end: 0,
            name: [0; root_boot::MODULE_NAME_MAX],
        }
    }
}

impl BootModule {
    pub fn new(start: u64, end: u64, name: &str) -> Self {
        let mut m = BootModule {
            start,
            end,
            name: [0; root_boot::MODULE_NAME_MAX],
        };
        let n = name.len().min(root_boot::MODULE_NAME_MAX);
        m.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        m
    }

    pub fn name(&self) -> &str {
        let n = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..n]).unwrap_or("")
    }
}

/// The block RDI points at when a root VP starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootBoot {
    pub vp_index: u32,
    pub vp_count: u32,
    /// The root image's own span (already in use).
    pub image_start: u64,
    pub image_end: u64,
    /// The ACPI RSDP's physical address (0 when unknown): the root owns ACPI.
    pub rsdp: u64,
    /// The root's command line (the root module's string after its name).
    pub cmdline: [u8; root_boot::CMDLINE_MAX],
    pub cmdline_len: u32,
    /// RAM the root owns, `[start, end)` pairs; the hypervisor's memory is absent.
    pub ranges: [(u64, u64); root_boot::MAX_RANGES],
    pub range_count: u32,
    /// The boot modules other than the root's own image.
    pub modules: [BootModule; root_boot::MAX_MODULES],
    pub module_count: u32,
}

impl RootBoot {
    pub fn encode(&self, out: &mut [u8]) -> Option<()> {
        let mut c = Cursor { buf: out, at: 0 };
        c.put(&root_boot::MAGIC.to_le_bytes())?;
        c.put(&crate::ABI_VERSION.to_le_bytes())?;
        c.put(&self.vp_index.to_le_bytes())?;
        c.put(&self.vp_count.to_le_bytes())?;
        c.put(&self.range_count.to_le_bytes())?;
        c.put(&self.image_start.to_le_bytes())?;
        c.put(&self.image_end.to_le_bytes())?;
        c.put(&self.rsdp.to_le_bytes())?;
        c.put(&self.cmdline)?;
        c.put(&self.cmdline_len.to_le_bytes())?;
        for (s, e) in self.ranges {
            c.put(&s.to_le_bytes())?;
            c.put(&e.to_le_bytes())?;
        }
        c.put(&self.module_count.to_le_bytes())?;
        for m in &self.modules {
            c.put(&m.start.to_le_bytes())?;
            c.put(&m.end.to_le_bytes())?;
            c.put(&m.name)?;
        }
        Some(())
    }

    /// `None` on a wrong magic, version or a count out of range.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut at = 0;
        if u64::from_le_bytes(get(b, &mut at)?) != root_boot::MAGIC
            || u32::from_le_bytes(get(b, &mut at)?) != crate::ABI_VERSION
        {
            return None;
        }
        let vp_index = u32::from_le_bytes(get(b, &mut at)?);
        let vp_count = u32::from_le_bytes(get(b, &mut at)?);
        let range_count = u32::from_le_bytes(get(b, &mut at)?);
        let image_start = u64::from_le_bytes(get(b, &mut at)?);
        let image_end = u64::from_le_bytes(get(b, &mut at)?);
        let rsdp = u64::from_le_bytes(get(b, &mut at)?);
        let cmdline = get::<{ root_boot::CMDLINE_MAX }>(b, &mut at)?;
        let cmdline_len = u32::from_le_bytes(get(b, &mut at)?);
        if range_count as usize > root_boot::MAX_RANGES
            || cmdline_len as usize > root_boot::CMDLINE_MAX
        {
            return None;
        }
        let mut ranges = [(0, 0); root_boot::MAX_RANGES];
        for r in &mut ranges {
            *r = (
                u64::from_le_bytes(get(b, &mut at)?),
                u64::from_le_bytes(get(b, &mut at)?),
            );
        }
        let module_count = u32::from_le_bytes(get(b, &mut at)?);
        if module_count as usize > root_boot::MAX_MODULES {
            return None;
        }
        let mut modules = [BootModule::default(); root_boot::MAX_MODULES];
        for m in &mut modules {
            m.start = u64::from_le_bytes(get(b, &mut at)?);
            m.end = u64::from_le_bytes(get(b, &mut at)?);
            m.name = get(b, &mut at)?;
        }
        Some(RootBoot {
            vp_index,
            vp_count,
            image_start,
            image_end,
            rsdp,
            cmdline,
            cmdline_len,
            ranges,
            range_count,
            modules,
            module_count,
        })
    }

    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len as usize]).unwrap_or("")
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges[..self.range_count as usize]
    }

    pub fn modules(&self) -> &[BootModule] {
        &self.modules[..self.module_count as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_value_round_trips_and_rejects_reserved_bits() {
        let i = hypercall::Input {
            code: 0x7F00,
            fast: true,
            variable_header_size: 3,
            rep_count: 17,
            rep_start: 5,
        };
        assert_eq!(hypercall::Input::decode(i.encode()), Some(i));
        assert_eq!(hypercall::Input::decode(1 << 27), None);
        assert_eq!(hypercall::Input::decode(1 << 44), None);
        assert_eq!(hypercall::Input::decode(1 << 63), None);
    }

    #[test]
    fn host_info_round_trips() {
        let h = HostInfo {
            abi_version: ABI_VERSION,
            version: [0, 1, 0],
            vendor: Vendor::Amd,
            slat: Slat::Npt,
            logical_processors: 4,
            root_vps: 4,
            memory_total_bytes: 1 << 30,
            hypervisor_bytes: 8 << 20,
            hypervisor_free_bytes: 4 << 20,
            tsc_hz: 2_000_000_000,
            lp0_apic_id: 7,
        };
        let mut page = [0u8; 4096];
        h.encode(&mut page).unwrap();
        assert_eq!(HostInfo::decode(&page), Some(h));
        assert!(h.encode(&mut [0u8; HostInfo::SIZE - 1]).is_none());
        page[10] = 9; // the vendor byte, after the ABI version and the three version numbers
        assert_eq!(HostInfo::decode(&page), None, "unknown vendor");
    }

    #[test]
    fn host_log_chunk_round_trip_and_limits() {
        let mut page = [0u8; 4096];
        page[24..29].copy_from_slice(b"hello");
        HostLogChunk::encode_header(10, 20, 5, &mut page).unwrap();
        assert_eq!(
            HostLogChunk::decode(&page),
            Some(HostLogChunk {
                start: 10,
                written: 20,
                bytes: b"hello"
            })
        );
        assert!(HostLogChunk::encode_header(0, 9999, 4073, &mut page).is_none());
        HostLogChunk::encode_header(18, 20, 5, &mut page).unwrap();
        assert_eq!(HostLogChunk::decode(&page), None, "past what was written");
        page[16..20].copy_from_slice(&5000u32.to_le_bytes());
        assert_eq!(HostLogChunk::decode(&page), None, "longer than the page");
        assert_eq!(HostLogChunk::decode(&page[..10]), None);
    }

    #[test]
    fn host_stats_round_trip() {
        let mut lps = [LpStats::default(); 3];
        lps[1].exits[ExitReason::Cpuid as usize] = 42;
        lps[2].world_switches = 7;
        let mut page = [0u8; 4096];
        HostStats::encode(&lps, &mut page).unwrap();
        let mut out = [LpStats::default(); 8];
        assert_eq!(HostStats::decode(&page, &mut out), Some(3));
        assert_eq!(&out[..3], &lps);
        page[0] = 0xFF;
        assert_eq!(HostStats::decode(&page, &mut out), None);
        const { assert!(HostStats::MAX_LPS >= 16) };
    }

    #[test]
    fn root_boot_round_trips() {
        let mut r = RootBoot {
            vp_index: 1,
            vp_count: 2,
            image_start: 0x100_0000,
            image_end: 0x102_0000,
            rsdp: 0xF0000,
            cmdline: [0; root_boot::CMDLINE_MAX],
            cmdline_len: 5,
            ranges: [(0, 0); root_boot::MAX_RANGES],
            range_count: 2,
            modules: [BootModule::default(); root_boot::MAX_MODULES],
            module_count: 1,
        };
        r.cmdline[..5].copy_from_slice(b"quiet");
        r.ranges[0] = (0x1000, 0x9f000);
        r.ranges[1] = (0x40_0000, 0x800_0000);
        r.modules[0] = BootModule::new(0x200_0000, 0x200_1000, "hello");
        let mut buf = [0u8; root_boot::SIZE];
        r.encode(&mut buf).unwrap();
        let d = RootBoot::decode(&buf).unwrap();
        assert_eq!(d, r);
        assert_eq!(d.cmdline(), "quiet");
        assert_eq!(d.ranges().len(), 2);
        buf[0] ^= 1;
        assert_eq!(RootBoot::decode(&buf), None);
    }

    proptest::proptest! {
        /// Any RCX a partition passes: decoding never panics; a value without
        /// reserved bits decodes to fields that encode back to the same value.
        #[test]
        fn any_input_value(rcx in proptest::prelude::any::<u64>()) {
            match hypercall::Input::decode(rcx) {
                Some(i) => proptest::prop_assert_eq!(i.encode(), rcx),
                None => proptest::prop_assert!(rcx & ((0x1F << 27) | (0xF << 44) | (0xF << 60)) != 0),
            }
        }

        /// Whatever bytes a partition leaves in a page, decoding the ABI
        /// structures returns, and never panics.
        #[test]
        fn any_bytes_decode_safely(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4200)) {
            let _ = HostInfo::decode(&bytes);
            let mut out = [LpStats::default(); 4];
            let _ = HostStats::decode(&bytes, &mut out);
            let _ = RootBoot::decode(&bytes);
        }
    }
}
