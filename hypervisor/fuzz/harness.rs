//! Fuzz harnesses of what a partition or a loader hands the hypervisor, and
//! of the root's image loader, one per cargo-fuzz target (fuzz_targets/).
//! `cargo xtask test` runs each with regressions/<target>/ as a second corpus
//! (its seeds run first); the bugs they found are unit tests in their crates.
//!
//! Each harness asserts what the code promises, not only that it returns:
//! - `hypercall_input`: the checks every hypercall passes (RCX, RDX, R8 and
//!   the caller's memory) against an independent reading of the dispatch
//!   table, and that the handlers' reads of the copied input stay inside it.
//! - `abi_decode`: every hv-abi decoder of partition-provided bytes or
//!   registers (and of the hypervisor's answers the root reads), with its
//!   round trip.
//! - `image_loader`: the one ELF reader (`hypervisor_core::elf`, used for the
//!   hypervisor image, the root's, and under the root's guest-image reader
//!   `root_partition_svc::vmm`), against a reference reading of the file.
//! - `boot_info`: Multiboot 1/2 information (`hypervisor_core::bootinfo`), what the
//!   hypervisor derives from it (frame allocator, identity map) and the
//!   command line (`hypervisor_core::cmdline`).
//! - `disk_images`: the root's FAT32, VHD and VHDX readers on damaged
//!   images, and that what they write reads back.

use hv_abi::hypercall::{self, status, Input};
use hv_abi::layout::{self, FromBytes};
use hv_abi::partition::{self as abi, reg, RegisterError, Segment, Table, VpContext};
use hv_abi::synic::{self, ExceptionIntercept, IoPortIntercept, MemoryIntercept, Message};
use hv_abi::{HostInfo, HostLogChunk, HostStats, LpStats, RootBoot};
use hypervisor_core::bootinfo::{
    self, AcpiRoot, BootInfo, InlineStr, PhysRead, Protocol, RegionKind,
};
use hypervisor_core::cmdline::{LogLevel, Options, SelfTest};
use hypervisor_core::elf;
use hypervisor_core::frame_alloc::{FrameAllocator, PAGE_SIZE};
use hypervisor_core::hypercall::{check, CallSpec, Caller, Form, Privilege, TABLE};
use hypervisor_core::log_ring::LogRing;
use root_partition_svc::vmm::{self, EntryMode};

/// The fuzzer's bytes, read front to back; zeros past the end.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn le(&mut self, n: usize) -> u128 {
        self.take(n)
            .iter()
            .rev()
            .fold(0u128, |v, &b| v << 8 | u128::from(b))
    }
    fn u8(&mut self) -> u8 {
        self.le(1) as u8
    }
    fn u16(&mut self) -> u16 {
        self.le(2) as u16
    }
    fn u32(&mut self) -> u32 {
        self.le(4) as u32
    }
    fn u64(&mut self) -> u64 {
        self.le(8) as u64
    }
    fn u128(&mut self) -> u128 {
        self.le(16)
    }
    fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }
}

// ---------------------------------------------------------------------------
// Hypercalls

/// RCX bits the TLFS reserves (hv_abi::hypercall::Input::decode refuses them).
const RESERVED_RCX: u64 = (0x1F << 27) | (0xF << 44) | (0xF << 60);
const PAGE: u64 = 4096;

/// Memory a caller owns, as the hypervisor's `owns(gpa, len)` test sees it.
enum Owned {
    Ranges(Vec<(u64, u64)>),
    /// A test that trusts every block: the checks must stay sound anyway.
    Everything,
    Nothing,
}

impl Owned {
    fn owns(&self, gpa: u64, len: u64) -> bool {
        match self {
            Owned::Ranges(r) => gpa
                .checked_add(len)
                .is_some_and(|end| r.iter().any(|&(s, e)| s <= gpa && end <= e)),
            Owned::Everything => true,
            Owned::Nothing => false,
        }
    }
}

/// The register names `VpContext` keeps.
const REGISTERS: &[u32] = &[
    reg::RAX,
    reg::RAX + 1,
    reg::RAX + 2,
    reg::RAX + 3,
    reg::RSP,
    reg::RAX + 5,
    reg::RAX + 6,
    reg::RAX + 7,
    reg::RAX + 8,
    reg::RAX + 9,
    reg::RAX + 10,
    reg::RAX + 11,
    reg::RAX + 12,
    reg::RAX + 13,
    reg::RAX + 14,
    reg::R15,
    reg::RIP,
    reg::RFLAGS,
    reg::CR0,
    reg::CR2,
    reg::CR3,
    reg::CR4,
    reg::ES,
    reg::CS,
    reg::SS,
    reg::DS,
    reg::FS,
    reg::GS,
    reg::LDTR,
    reg::TR,
    reg::IDTR,
    reg::GDTR,
    reg::EFER,
    reg::PAT,
];

/// One SetVpRegisters element applied to a VP's context: refused without a
/// trace, or stored so that GetVpRegisters reads it back, touching nothing else.
fn register_write(ctx: &mut VpContext, name: u32, value: u128) {
    let before = *ctx;
    let known = ctx.get(name).is_ok();
    match ctx.set(name, value) {
        Ok(()) => {
            assert!(known, "{name:#x} set but not readable");
            let got = ctx.get(name).unwrap();
            match name {
                // Table registers keep only limit and base; RFLAGS gains bit 1.
                reg::IDTR | reg::GDTR => {
                    assert_eq!(Table::from_value(got), Table::from_value(value))
                }
                reg::RFLAGS => assert_eq!(got, value | 2),
                _ => assert_eq!(got, value, "{name:#x}"),
            }
            for &other in REGISTERS.iter().filter(|&&n| n != name) {
                assert_eq!(
                    ctx.get(other),
                    before.get(other),
                    "{name:#x} changed {other:#x}"
                );
            }
            assert_eq!(ctx.pending_event, before.pending_event);
        }
        Err(RegisterError::Unknown) => {
            assert!(!known, "{name:#x} readable but refused as unknown");
            assert_eq!(*ctx, before);
        }
        Err(RegisterError::BadValue) => {
            assert!(known, "{name:#x} unknown but refused as a bad value");
            assert_eq!(*ctx, before, "a refused value was stored");
        }
    }
}

/// Input and output block sizes of a checked call, read independently of
/// `hypervisor_core::hypercall::check_in` from its table entry and RCX.
fn block_sizes(spec: &CallSpec, input: &Input) -> (u64, u64) {
    let var = u64::from(input.variable_header_size) * 8;
    match spec.form {
        Form::Simple {
            input: i,
            output: o,
            fast,
        } => {
            assert_eq!(
                (input.rep_count, input.rep_start),
                (0, 0),
                "reps on a simple call"
            );
            assert!(!input.fast || fast, "fast form of a memory-only call");
            (i + var, o)
        }
        Form::Rep {
            header,
            element_in,
            element_out,
        } => {
            assert!(!input.fast, "fast rep call");
            assert!(input.rep_start < input.rep_count, "rep window empty");
            let reps = u64::from(input.rep_count);
            (header + var + reps * element_in, reps * element_out)
        }
    }
}

/// Whether `block` (a checked call's input as its handler sees it: the copied
/// block, or RDX and R8 of a fast call) holds the fixed layout the handler
/// reads first, so that the handlers' INVALID_PARAMETER for a short block
/// is never reached.
fn fixed_layout_fits(code: u16, block: &[u8]) -> bool {
    use abi::code::*;
    fn fits<T: FromBytes>(block: &[u8]) -> bool {
        layout::header::<T>(block).is_some()
    }
    match code {
        CREATE_PARTITION => fits::<layout::CreatePartition>(block),
        INITIALIZE_PARTITION | FINALIZE_PARTITION | DELETE_PARTITION => {
            fits::<layout::PartitionId>(block)
        }
        GET_PARTITION_PROPERTY => fits::<layout::GetPartitionProperty>(block),
        SET_PARTITION_PROPERTY => fits::<layout::SetPartitionProperty>(block),
        MAP_GPA_PAGES => fits::<layout::MapGpaPages>(block),
        UNMAP_GPA_PAGES => fits::<layout::UnmapGpaPages>(block),
        CREATE_VP => fits::<layout::CreateVp>(block),
        DELETE_VP | START_VIRTUAL_PROCESSOR => fits::<layout::PartitionVp>(block),
        GET_VP_REGISTERS | SET_VP_REGISTERS | hypercall::SET_VP_REGISTERS_THEN_IDLE => {
            fits::<layout::VpRegisters>(block)
        }
        INSTALL_INTERCEPT => fits::<layout::InstallIntercept>(block),
        ASSERT_VIRTUAL_INTERRUPT => fits::<layout::AssertVirtualInterrupt>(block),
        FLUSH_VIRTUAL_ADDRESS_SPACE | FLUSH_VIRTUAL_ADDRESS_LIST => {
            fits::<layout::FlushVirtualAddressSpace>(block)
        }
        hypercall::GET_HOST_LOG => fits::<layout::GetHostLog>(block),
        CREATE_PORT => fits::<layout::CreatePort>(block),
        DELETE_PORT => fits::<layout::DeletePort>(block),
        CONNECT_PORT => fits::<layout::ConnectPort>(block),
        DISCONNECT_PORT => fits::<layout::DisconnectPort>(block),
        // The header, then the 240-byte payload.
        POST_MESSAGE => fits::<layout::PostMessage>(block) && block.len() >= 16 + 240,
        SIGNAL_EVENT => fits::<layout::SignalEvent>(block),
        // The header, then a whole message slot.
        POST_MESSAGE_DIRECT => fits::<layout::PostMessageDirect>(block) && block.len() >= 20 + 256,
        SIGNAL_EVENT_DIRECT | hypercall::SIGNAL_EVENT_DIRECT_THEN_IDLE => {
            fits::<layout::SignalEventDirect>(block)
        }
        // RDX (the partition) and R8 (the VP); R9 and R10 are read apart.
        hypercall::COMPLETE_INTERCEPT | hypercall::COMPLETE_INTERCEPT_THEN_IDLE => {
            block.len() >= 16
        }
        // No input.
        hypercall::GET_HOST_INFO | hypercall::GET_HOST_STATS => true,
        _ => panic!("{code:#x}: a call in the table without a layout here"),
    }
}

/// Input: flags u8 (bit 0 root caller, bit 1 aim the code at a table entry,
/// bit 2 clear RCX's reserved bits, bits 4:3 the caller's memory: ranges,
/// everything, nothing, ranges; bit 5 put both blocks in the first range),
/// RCX, RDX, R8 (u64 each), range count u8, then ranges `u64 start, u16
/// pages`, a continuation index u16, then the input block's contents.
pub fn hypercall_input(data: &[u8]) {
    let codes: Vec<u16> = TABLE.iter().map(|s| s.code).collect();
    assert!(
        codes
            .iter()
            .enumerate()
            .all(|(i, c)| !codes[..i].contains(c)),
        "a code twice in the dispatch table"
    );

    let mut b = Bytes(data);
    let flags = b.u8();
    let (mut rcx, mut rdx, mut r8) = (b.u64(), b.u64(), b.u64());
    let caller = if flags & 1 != 0 {
        Caller::Root
    } else {
        Caller::Guest
    };
    if flags & 2 != 0 {
        let spec = &TABLE[usize::from(rcx as u16) % TABLE.len()];
        rcx = (rcx & !0xFFFF) | u64::from(spec.code);
    }
    if flags & 4 != 0 {
        rcx &= !RESERVED_RCX;
    }
    let ranges: Vec<(u64, u64)> = (0..b.u8() % 4)
        .map(|_| {
            let start = b.u64();
            (start, start.saturating_add(u64::from(b.u16()) * PAGE))
        })
        .collect();
    if flags & 0x20 != 0 {
        if let Some(&(s, _)) = ranges.first() {
            rdx = s.wrapping_add(rdx & 0x1FF8);
            r8 = s.wrapping_add(r8 & 0x1FF8);
        }
    }
    let owned = match (flags >> 3) & 3 {
        1 => Owned::Everything,
        2 => Owned::Nothing,
        _ => Owned::Ranges(ranges),
    };
    let owns = |gpa: u64, len: u64| owned.owns(gpa, len);
    let next_start = b.u16();
    let contents = b.rest();

    let result = check(rcx, rdx, r8, caller, &owns);
    let decoded = Input::decode(rcx);
    let spec = decoded.and_then(|i| TABLE.iter().find(|s| s.code == i.code));
    // The order of the refusals: the input value, the code, the caller.
    match (decoded, spec) {
        (None, _) => assert_eq!(result, Err(status::INVALID_HYPERCALL_INPUT)),
        (Some(_), None) => assert_eq!(result, Err(status::INVALID_HYPERCALL_CODE)),
        (Some(_), Some(s)) if s.privilege == Privilege::Root && caller != Caller::Root => {
            assert_eq!(result, Err(status::ACCESS_DENIED))
        }
        _ => {}
    }
    let call = match result {
        Ok(call) => call,
        Err(s) => {
            assert!(
                [
                    status::INVALID_HYPERCALL_INPUT,
                    status::INVALID_HYPERCALL_CODE,
                    status::ACCESS_DENIED,
                    status::INVALID_ALIGNMENT,
                    status::INVALID_PARAMETER,
                ]
                .contains(&s),
                "status {s:#x}"
            );
            return;
        }
    };
    let (input, spec) = (decoded.unwrap(), spec.unwrap());
    assert_eq!(call.input, input);
    assert_eq!(call.spec, spec);
    let (in_len, out_len) = block_sizes(spec, &input);
    if input.fast {
        // Register calls: two quadwords in, nothing out, no memory.
        assert!(in_len <= 16 && out_len == 0);
        assert_eq!((call.input_block, call.output_block), (None, None));
    } else {
        assert_eq!(call.input_block, (in_len > 0).then_some((rdx, in_len)));
        assert_eq!(call.output_block, (out_len > 0).then_some((r8, out_len)));
        for (gpa, len) in call.input_block.into_iter().chain(call.output_block) {
            assert!(
                gpa % 8 == 0 && gpa % PAGE + len <= PAGE,
                "block {gpa:#x}+{len:#x}"
            );
            assert!(
                owned.owns(gpa, len),
                "block {gpa:#x}+{len:#x} not the caller's"
            );
            assert!(gpa.checked_add(len).is_some());
        }
        if let (Some((i, il)), Some((o, ol))) = (call.input_block, call.output_block) {
            let (i, il, o, ol) = (i as u128, il as u128, o as u128, ol as u128);
            assert!(
                i + il <= o || o + ol <= i,
                "input and output blocks overlap"
            );
        }
    }

    // The handlers (partition.rs, guest.rs) read the input as copied in, or
    // the two registers of a fast call: every rep element they read lies in
    // it, and every output element in the output block.
    let mut block = vec![0u8; in_len as usize];
    if input.fast {
        block = [rdx.to_le_bytes(), r8.to_le_bytes()].concat();
    }
    let n = contents.len().min(block.len());
    block[..n].copy_from_slice(&contents[..n]);
    assert!(
        fixed_layout_fits(spec.code, &block),
        "the input block of {} is shorter than its layout",
        spec.name
    );
    if spec.code == hypercall::GET_HOST_LOG {
        let at = layout::header::<layout::GetHostLog>(&block).unwrap();
        host_log(at.position, contents, out_len as usize);
    }
    let mut ctx = VpContext::reset();
    if let Form::Rep {
        header,
        element_in,
        element_out,
    } = spec.form
    {
        for i in input.rep_start..input.rep_count {
            let at = (header + element_in * u64::from(i)) as usize;
            let element = block
                .get(at..at + element_in as usize)
                .expect("rep element outside the input block");
            assert!(element_out * (u64::from(i) + 1) <= out_len);
            match spec.code {
                abi::code::GET_VP_REGISTERS => {
                    // GetVpRegisters reads exactly the registers SetVpRegisters writes.
                    let layout::RegisterName { name } =
                        layout::RegisterName::read_from_bytes(element).unwrap();
                    assert_eq!(
                        layout::element::<layout::GetVpRegisters, layout::RegisterName>(&block, i)
                            .map(|e| e.name),
                        Some(name),
                        "the handler's element {i}"
                    );
                    assert_eq!(
                        ctx.get(name).is_ok(),
                        REGISTERS.contains(&name),
                        "{name:#x}"
                    );
                }
                abi::code::SET_VP_REGISTERS => {
                    let e = layout::RegisterAssoc::read_from_bytes(element).unwrap();
                    assert_eq!(
                        layout::element::<layout::SetVpRegisters, layout::RegisterAssoc>(&block, i),
                        Some(e),
                        "the handler's element {i}"
                    );
                    // The value is bytes 16..32 of the element, little-endian.
                    let value = element[16..32]
                        .iter()
                        .rev()
                        .fold(0u128, |v, &b| v << 8 | u128::from(b));
                    assert_eq!(e.value, value);
                    register_write(&mut ctx, e.name, e.value);
                }
                abi::code::MAP_GPA_PAGES => {
                    let e = layout::MapGpaPagesElement::read_from_bytes(element).unwrap();
                    assert_eq!(
                        layout::element::<layout::MapGpaPages, layout::MapGpaPagesElement>(
                            &block, i
                        ),
                        Some(e),
                        "the handler's element {i}"
                    );
                }
                _ => {}
            }
        }
        // A rep call not finished in one entry returns with its start index
        // advanced (root.rs) and passes the same checks again on re-entry,
        // with the same blocks.
        let span = input.rep_count - input.rep_start;
        for k in [1, span - 1, next_start % span] {
            let mut next = input;
            next.rep_start = input.rep_start + k;
            if next.rep_start >= input.rep_count {
                continue;
            }
            let again = check(next.encode(), rdx, r8, caller, &owns)
                .unwrap_or_else(|s| panic!("continuation at {} refused: {s:#x}", next.rep_start));
            assert_eq!(again.input, next);
            assert_eq!(
                (again.input_block, again.output_block),
                (call.input_block, call.output_block)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// hv-abi decoders

/// Input: a selector byte, then what the chosen decoder reads.
pub fn abi_decode(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 8 {
        0 => input_value(rest),
        1 => registers(rest),
        2 => host_info(rest),
        3 => host_stats(rest),
        4 => root_boot(rest, sel & 0x80 != 0),
        5 => synic_slot(rest),
        6 => mmio_instruction(rest, sel & 0x80 != 0),
        _ => host_log_chunk(rest),
    }
}

/// The instruction bytes a guest's absent-MMIO access carries (decoded by
/// the root): a decoded access lies within the bytes, has a size the
/// processor has, and a read merged into a register changes only the bytes
/// the access names (or clears bits 63:32 for a 32-bit destination).
fn mmio_instruction(data: &[u8], long: bool) {
    use hypervisor_core::mmio;
    let Some(a) = mmio::decode(data, long) else {
        return;
    };
    assert!(a.length as usize <= data.len().min(15));
    assert!(matches!(a.size, 1 | 2 | 4 | 8));
    if let mmio::Operand::Register { index, high_byte } = a.operand {
        assert!(index < 16 && (!high_byte || (4..8).contains(&index)));
    }
    let old = 0x0123_4567_89AB_CDEF;
    let new = mmio::merge_read(old, u64::MAX, &a);
    if !a.write {
        let dest = a.extend_to.unwrap_or(a.size);
        match dest {
            4 | 8 => assert_eq!(new, mmio::mask(a.size)),
            _ => assert_eq!(new & !0xFFFF, old & !0xFFFF),
        }
    }
}

/// RCX: decodes to fields that encode back to the same bits, or is refused
/// for a reserved bit; any fields encode to a value that decodes to them
/// (cut to their widths). Then the rest as an input block: every typed
/// layout reads it and writes back the same bytes.
fn input_value(data: &[u8]) {
    let mut b = Bytes(data);
    let rcx = b.u64();
    let control = hypercall::Control::from_bits(rcx);
    assert_eq!(control.reserved(), rcx & RESERVED_RCX != 0);
    assert_eq!(
        (control.code(), control.rep_count(), control.rep_start()),
        (
            rcx as u16,
            (rcx >> 32) as u16 & 0xFFF,
            (rcx >> 48) as u16 & 0xFFF
        )
    );
    match Input::decode(rcx) {
        Some(i) => {
            assert_eq!(i.encode(), rcx);
            assert!(
                i.variable_header_size < 1 << 10 && i.rep_count < 1 << 12 && i.rep_start < 1 << 12
            );
        }
        None => assert_ne!(rcx & RESERVED_RCX, 0),
    }
    let i = Input {
        code: b.u16(),
        fast: b.u8() & 1 != 0,
        variable_header_size: b.u16(),
        rep_count: b.u16(),
        rep_start: b.u16(),
    };
    let cut = Input {
        variable_header_size: i.variable_header_size & 0x3FF,
        rep_count: i.rep_count & 0xFFF,
        rep_start: i.rep_start & 0xFFF,
        ..i
    };
    assert_eq!(Input::decode(i.encode()), Some(cut));
    assert_eq!(i.encode() & RESERVED_RCX, 0);
    input_blocks(b.rest());
}

/// Every layout read from `block` writes back exactly the bytes it was read
/// from (no field lost, none invented), and the bit fields see the TLFS's
/// bits.
fn input_blocks(block: &[u8]) {
    use hv_abi::layout::*;
    use hv_abi::partition::map_flags;
    fn round_trip<T: FromBytes + IntoBytes + Immutable>(block: &[u8]) {
        match header::<T>(block) {
            Some(t) => assert_eq!(t.as_bytes(), &block[..size_of::<T>()]),
            None => assert!(block.len() < size_of::<T>()),
        }
    }
    round_trip::<CreatePartition>(block);
    round_trip::<PartitionId>(block);
    round_trip::<GetPartitionProperty>(block);
    round_trip::<SetPartitionProperty>(block);
    round_trip::<MapGpaPages>(block);
    round_trip::<UnmapGpaPages>(block);
    round_trip::<CreateVp>(block);
    round_trip::<PartitionVp>(block);
    round_trip::<VpRegisters>(block);
    round_trip::<RegisterAssoc>(block);
    round_trip::<InstallIntercept>(block);
    round_trip::<AssertVirtualInterrupt>(block);
    round_trip::<FlushVirtualAddressSpace>(block);
    round_trip::<GvaRange>(block);
    round_trip::<GetHostLog>(block);
    if let Some(m) = header::<MapGpaPages>(block) {
        let flags = Bytes(&block[16..]).u32();
        assert_eq!(m.map_flags.into_bits(), flags);
        assert_eq!(m.map_flags.reserved() != 0, flags & !map_flags::ALL != 0);
        assert_eq!(m.map_flags.readable(), flags & map_flags::READABLE != 0);
    }
    if let Some(a) = header::<AssertVirtualInterrupt>(block) {
        let control = Bytes(&block[8..]).u64();
        let offered = a.control.interrupt_type() == 0
            && !a.control.level_triggered()
            && !a.control.logical_destination()
            && a.control.reserved() == 0;
        assert_eq!(offered, control == 0);
        assert_eq!(
            (a.vector, a.target_vtl),
            (Bytes(&block[24..]).u32(), block[28])
        );
    }
    // Rep elements after a header: inside the block or refused.
    for i in [0u16, 1, 2, u16::MAX] {
        let e = element::<VpRegisters, RegisterName>(block, i);
        let at = 16 + 4 * usize::from(i);
        assert_eq!(e.is_some(), block.len() >= at + 4);
        if let Some(e) = e {
            assert_eq!(e.name, Bytes(&block[at..]).u32());
        }
    }
}

/// A sequence of register writes `u8 pick, u32 name, u128 value` on a VP
/// at reset (pick bit 0: the name is one `VpContext` keeps).
fn registers(data: &[u8]) {
    let mut b = Bytes(data);
    let mut ctx = VpContext::reset();
    while !b.0.is_empty() {
        let pick = b.u8();
        let raw = b.u32();
        let name = if pick & 1 != 0 {
            REGISTERS[raw as usize % REGISTERS.len()]
        } else {
            raw
        };
        let value = b.u128();
        assert_eq!(Segment::from_value(value).to_value(), value);
        assert_eq!(
            Table::from_value(value).to_value(),
            value & !((1u128 << 48) - 1)
        );
        register_write(&mut ctx, name, value);
    }
}

fn host_info(data: &[u8]) {
    let Some(h) = HostInfo::decode(data) else {
        return;
    };
    let mut page = [0u8; HostInfo::SIZE];
    h.encode(&mut page).unwrap();
    assert_eq!(HostInfo::decode(&page), Some(h));
    // Every byte but the reserved ones (20..24, 56..64) as it was.
    assert_eq!(page[..20], data[..20]);
    assert_eq!(page[24..56], data[24..56]);
}

fn host_stats(data: &[u8]) {
    let Some((&room, data)) = data.split_first() else {
        return;
    };
    let mut out = vec![LpStats::default(); usize::from(room) % (HostStats::MAX_LPS + 4)];
    let Some(n) = HostStats::decode(data, &mut out) else {
        return;
    };
    let count = Bytes(data).u32() as usize;
    assert!(count <= HostStats::MAX_LPS);
    assert_eq!(n, count.min(out.len()));
    let mut page = vec![0u8; 4096];
    HostStats::encode(&out[..n], &mut page).unwrap();
    let mut again = vec![LpStats::default(); n];
    assert_eq!(HostStats::decode(&page, &mut again), Some(n));
    assert_eq!(again, out[..n]);
    if n == count {
        let len = 8 + n * HostStats::LP_SIZE;
        assert_eq!(page[8..len], data[8..len]);
    }
}

/// A GET_HOST_LOG answer as the root reads it: a chunk that decodes lies
/// within what was written and the page, and encodes back to the same header.
fn host_log_chunk(data: &[u8]) {
    let Some(c) = HostLogChunk::decode(data) else {
        return;
    };
    assert!(c.bytes.len() <= HostLogChunk::MAX_BYTES);
    assert!(c.start + c.bytes.len() as u64 <= c.written);
    assert_eq!(
        c.bytes,
        &data[HostLogChunk::HEADER..HostLogChunk::HEADER + c.bytes.len()]
    );
    let mut page = vec![0u8; 4096];
    page[HostLogChunk::HEADER..][..c.bytes.len()].copy_from_slice(c.bytes);
    HostLogChunk::encode_header(c.start, c.written, c.bytes.len(), &mut page).unwrap();
    assert_eq!(HostLogChunk::decode(&page), Some(c));
    assert_eq!(page[..20], data[..20]);
}

/// The GET_HOST_LOG handler (serial::read_log) on a log of `text`, asked
/// from any position the root passes: its answer decodes in the root, to
/// the kept bytes from that position (or the oldest kept) on.
fn host_log(from: u64, text: &[u8], out_len: usize) {
    const N: usize = 512;
    let mut ring = LogRing::<N>::new();
    for piece in text.chunks(37) {
        ring.push(piece);
    }
    let mut page = vec![0u8; out_len];
    let data = &mut page[HostLogChunk::HEADER..];
    let room = data.len().min(HostLogChunk::MAX_BYTES);
    let (start, len) = ring.read(from, &mut data[..room]);
    HostLogChunk::encode_header(start, ring.written(), len, &mut page).expect("header refused");
    let c = HostLogChunk::decode(&page).expect("the root cannot read the answer");
    let written = text.len() as u64;
    let kept = written.saturating_sub(N as u64);
    assert_eq!((c.start, c.written), (from.clamp(kept, written), written));
    let at = c.start as usize;
    assert_eq!(c.bytes, &text[at..at + c.bytes.len()]);
    assert_eq!(
        c.bytes.len(),
        (text.len() - at).min(HostLogChunk::MAX_BYTES)
    );
}

/// The root's boot block (written by the hypervisor, read by the root):
/// a block that decodes encodes back to the same bytes.
fn root_boot(data: &[u8], stamp: bool) {
    let mut bytes = data.to_vec();
    if stamp && bytes.len() >= 12 {
        // The fuzzer rarely guesses the magic and version.
        bytes[..8].copy_from_slice(&hv_abi::root_boot::MAGIC.to_le_bytes());
        bytes[8..12].copy_from_slice(&hv_abi::ABI_VERSION.to_le_bytes());
    }
    let Some(r) = RootBoot::decode(&bytes) else {
        return;
    };
    let mut out = vec![0u8; hv_abi::root_boot::SIZE];
    r.encode(&mut out).unwrap();
    assert_eq!(out, bytes[..hv_abi::root_boot::SIZE]);
    let _ = r.cmdline();
    assert!(r.ranges().len() <= hv_abi::root_boot::MAX_RANGES);
    for m in r.modules() {
        let _ = m.name();
    }
    let top = root_partition_svc::boot::identity_top(&r);
    assert!(top >= 4 << 30 && top % (1 << 30) == 0);
    let _ = root_partition_svc::boot::ram_bytes(r.ranges());
}

/// A SynIC message slot and the intercept payloads in it: decoded values
/// re-encode to messages that decode alike.
fn synic_slot(data: &[u8]) {
    let mut slot = [0u8; synic::SLOT_SIZE];
    let n = data.len().min(slot.len());
    slot[..n].copy_from_slice(&data[..n]);
    let m = Message::decode(&slot);
    assert!(usize::from(m.size) <= synic::PAYLOAD_MAX);
    let mut again = [0u8; synic::SLOT_SIZE];
    m.encode(&mut again);
    assert_eq!(Message::decode(&again), m);
    for p in [&m.payload[..], &m.payload[..usize::from(m.size)]] {
        if let Some(io) = IoPortIntercept::decode(p) {
            assert!(p.len() >= IoPortIntercept::SIZE);
            assert_eq!(
                IoPortIntercept::decode(&io.message(m.sender).payload),
                Some(io)
            );
        }
        if let Some(mem) = MemoryIntercept::decode(p) {
            let back = mem.message(m.kind, m.sender);
            assert_eq!(
                (back.kind, MemoryIntercept::decode(&back.payload)),
                (m.kind, Some(mem))
            );
        }
        if let Some(ex) = ExceptionIntercept::decode(p) {
            assert_eq!(
                ExceptionIntercept::decode(&ex.message(m.sender).payload),
                Some(ex)
            );
        }
        if let Some((h, reason)) = synic::decode_header(p) {
            let back = synic::header_message(m.kind, m.sender, &h, reason);
            assert_eq!(synic::decode_header(&back.payload), Some((h, reason)));
        }
    }
}

// ---------------------------------------------------------------------------
// Image loaders

/// A PT_LOAD program header as a reference reader sees it.
#[derive(Clone, Copy, Debug)]
struct Load {
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn le_at(b: &[u8], at: usize, n: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(n)?)?;
    Some(s.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x)))
}

/// The PT_LOAD headers of an ELF64 file the hypervisor's reader uses: those
/// whose fields up to p_memsz lie in the file.
fn reference_loads(image: &[u8]) -> Vec<Load> {
    let (Some(phoff), Some(phentsize), Some(phnum)) = (
        le_at(image, 0x20, 8),
        le_at(image, 0x36, 2),
        le_at(image, 0x38, 2),
    ) else {
        return Vec::new();
    };
    (0..phnum)
        .filter_map(|i| {
            let o = usize::try_from(phoff.checked_add(i * phentsize)?).ok()?;
            if le_at(image, o, 4)? != 1 || o.checked_add(48)? > image.len() {
                return None;
            }
            Some(Load {
                offset: le_at(image, o + 8, 8)?,
                paddr: le_at(image, o + 24, 8)?,
                filesz: le_at(image, o + 32, 8)?,
                memsz: le_at(image, o + 40, 8)?,
            })
        })
        .collect()
}

/// Builds an ELF file from the fuzzer's bytes, so that most inputs get past
/// the identification and the program headers: flags bit 1 ELF32 (i386,
/// with a Multiboot header when bit 2), bit 3 raw field values.
fn build_elf(b: &mut Bytes, flags: u8) -> Vec<u8> {
    let is64 = flags & 2 == 0;
    let raw = flags & 8 != 0;
    let (ehsize, phentsize) = if is64 { (64, 56) } else { (52, 32) };
    let phnum = usize::from(b.u8() % 6);
    let entry_pick = b.u64();
    let base = match b.u8() % 4 {
        0 => 0x10_0000,
        1 => 0x20_0000,
        2 => 0xFFFF_0000,
        _ => b.u64(),
    };
    let mut headers = Vec::new();
    for _ in 0..phnum {
        let kind = if b.u8() % 4 == 0 { b.u32() } else { 1 };
        let pflags = u32::from(b.u8() & 7);
        headers.push((kind, pflags, b.u16(), b.u16(), b.u16(), b.u16()));
    }
    let mut body = b.rest().to_vec();
    if !is64 && flags & 4 != 0 {
        let magic: u32 = 0x1BAD_B002;
        let mb_flags = 3u32;
        let header = [
            magic,
            mb_flags,
            0u32.wrapping_sub(magic).wrapping_sub(mb_flags),
        ];
        body.splice(0..0, header.iter().flat_map(|w| w.to_le_bytes()));
    }
    let data_at = (ehsize + phnum * phentsize) as u64;
    let body_len = body.len() as u64;
    let mut v = vec![0u8; ehsize + phnum * phentsize];
    v[..6].copy_from_slice(b"\x7FELF\x00\x01");
    v[4] = if is64 { 2 } else { 1 };
    v[18..20].copy_from_slice(&(if is64 { 62u16 } else { 3 }).to_le_bytes());
    let mut first = None;
    for (i, &(kind, pflags, off, addr, file, mem)) in headers.iter().enumerate() {
        let (offset, paddr, filesz, memsz) = if raw {
            (
                u64::from(off),
                base.wrapping_add(u64::from(addr) << 12),
                u64::from(file),
                u64::from(mem),
            )
        } else {
            let offset = u64::from(off) % (body_len + 1);
            let filesz = u64::from(file) % (body_len - offset + 1);
            (
                data_at + offset,
                base.wrapping_add(u64::from(addr) << 4),
                filesz,
                filesz + u64::from(mem),
            )
        };
        first.get_or_insert(paddr);
        let o = ehsize + i * phentsize;
        let p = &mut v[o..o + phentsize];
        p[..4].copy_from_slice(&kind.to_le_bytes());
        if is64 {
            p[4..8].copy_from_slice(&pflags.to_le_bytes());
            p[8..16].copy_from_slice(&offset.to_le_bytes());
            p[16..24].copy_from_slice(&paddr.to_le_bytes());
            p[24..32].copy_from_slice(&paddr.to_le_bytes());
            p[32..40].copy_from_slice(&filesz.to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
        } else {
            p[4..8].copy_from_slice(&(offset as u32).to_le_bytes());
            p[8..12].copy_from_slice(&(paddr as u32).to_le_bytes());
            p[12..16].copy_from_slice(&(paddr as u32).to_le_bytes());
            p[16..20].copy_from_slice(&(filesz as u32).to_le_bytes());
            p[20..24].copy_from_slice(&(memsz as u32).to_le_bytes());
            p[24..28].copy_from_slice(&pflags.to_le_bytes());
        }
    }
    let entry = if raw {
        entry_pick
    } else {
        first.unwrap_or(base).wrapping_add(entry_pick % 0x2000)
    };
    if is64 {
        v[24..32].copy_from_slice(&entry.to_le_bytes());
        v[32..40].copy_from_slice(&(ehsize as u64).to_le_bytes());
        v[54..56].copy_from_slice(&(phentsize as u16).to_le_bytes());
        v[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    } else {
        v[24..28].copy_from_slice(&(entry as u32).to_le_bytes());
        v[28..32].copy_from_slice(&(ehsize as u32).to_le_bytes());
        v[42..44].copy_from_slice(&(phentsize as u16).to_le_bytes());
        v[44..46].copy_from_slice(&(phnum as u16).to_le_bytes());
    }
    v.extend_from_slice(&body);
    v
}

/// The hypervisor's ELF reader: an accepted layout is the page-rounded hull
/// of the PT_LOAD segments, below 4 GiB, holding the entry; every segment lies
/// in the file; copying fills exactly the segments' file bytes, zeroes the rest.
fn hypervisor_elf(image: &[u8]) {
    protections(image);
    let Ok(l) = elf::layout(image) else {
        let mut dest = vec![0u8; 0x4000];
        let _ = elf::copy_segments(image, 0x10_0000, &mut dest);
        return;
    };
    assert!(l.start % 4096 == 0 && l.end % 4096 == 0, "{l:?}");
    assert!(l.start < l.end && l.end <= 1 << 32, "{l:?}");
    assert!((l.start..l.end).contains(&l.entry), "{l:?}");
    let loads = reference_loads(image);
    assert!(!loads.is_empty());
    for s in &loads {
        assert!(s.filesz <= s.memsz, "{s:?}");
        assert!(s.offset + s.filesz <= image.len() as u64, "{s:?}");
        assert!(
            l.start <= s.paddr && s.paddr + s.memsz <= l.end,
            "{s:?} outside {l:?}"
        );
    }
    let low = loads.iter().map(|s| s.paddr).min().unwrap();
    let high = loads.iter().map(|s| s.paddr + s.memsz).max().unwrap();
    assert_eq!((l.start, l.end), (low & !0xFFF, (high + 0xFFF) & !0xFFF));
    let span = (l.end - l.start) as usize;
    if span > 8 << 20 {
        return;
    }
    let mut dest = vec![0xA5u8; span];
    elf::copy_segments(image, l.start, &mut dest).expect("an accepted image must load");
    let mut want = vec![0u8; span];
    for s in &loads {
        let at = (s.paddr - l.start) as usize;
        let file = &image[s.offset as usize..(s.offset + s.filesz) as usize];
        want[at..at + file.len()].copy_from_slice(file);
    }
    assert!(dest == want, "loaded bytes differ from the segments");
    // A destination too small is refused or filled, never overrun.
    let _ = elf::copy_segments(image, l.start, &mut dest[..span / 2]);
}

/// The pages and permissions the hypervisor maps the root's image with: whole
/// pages, never writable and executable, no page in two segments (they
/// would need two permissions), every segment with memory covered.
fn protections(image: &[u8]) {
    let Ok(it) = elf::protections(image) else {
        return;
    };
    let prots: Vec<elf::Protection> = it.collect();
    for (i, p) in prots.iter().enumerate() {
        assert!(
            p.start % 4096 == 0 && p.end % 4096 == 0 && p.start < p.end,
            "{p:?}"
        );
        assert!(!(p.write && p.execute), "{p:?}");
        for q in &prots[..i] {
            assert!(
                p.end <= q.start || q.end <= p.start,
                "{p:?} shares a page with {q:?}"
            );
        }
    }
    if let Ok(l) = elf::layout(image) {
        for p in &prots {
            assert!(l.start <= p.start && p.end <= l.end, "{p:?} outside {l:?}");
        }
    }
    let loads: Vec<Load> = reference_loads(image)
        .into_iter()
        .filter(|s| s.memsz > 0)
        .collect();
    assert_eq!(loads.len(), prots.len());
    for (s, p) in loads.iter().zip(&prots) {
        assert!(
            p.start <= s.paddr && s.paddr + s.memsz <= p.end,
            "{s:?} not in {p:?}"
        );
    }
}

/// The root's guest-image reader: accepted segments lie in the file and in
/// the VM's memory above the boot structures; the boot structures and start
/// registers it derives are what the hypervisor accepts.
fn root_image(image: &[u8], memory: u64, vp: u32, vps: u32) {
    let Ok(img) = vmm::parse_image(image, memory) else {
        return;
    };
    let segments = &img.segments[..img.segment_count];
    assert!((1..=vmm::MAX_SEGMENTS).contains(&segments.len()));
    let len = image.len() as u64;
    match img.mode {
        EntryMode::Real => {
            assert!(!image.starts_with(b"\x7FELF"));
            let at = vmm::layout::REAL_MODE_LOAD;
            assert_eq!(img.entry, at);
            assert_eq!(segments.len(), 1);
            let s = segments[0];
            assert_eq!(
                (s.gpa, s.offset, s.file_bytes, s.mem_bytes),
                (at, 0, len, len)
            );
            assert!(len > 0 && at + len <= 0x8_0000);
        }
        EntryMode::Linux => {
            // A bzImage: one segment, its protected-mode code, at the
            // kernel's load address (2 MiB aligned, from 1 MiB), entered
            // 0x200 in, inside the VM's memory with its init_size.
            assert_eq!(image.get(0x202..0x206), Some(&b"HdrS"[..]));
            assert_eq!(segments.len(), 1);
            let s = segments[0];
            assert!(s.gpa >= 0x10_0000 && s.gpa % 0x20_0000 == 0, "{s:?}");
            assert_eq!(img.entry, s.gpa + 0x200);
            assert!(s.offset + s.file_bytes == len, "{s:?}");
            assert!(s.gpa + s.mem_bytes <= memory, "{s:?}");
        }
        EntryMode::Long | EntryMode::Protected32 => {
            let class = if img.mode == EntryMode::Long { 2 } else { 1 };
            assert!(image.starts_with(b"\x7FELF") && image[4] == class);
            for s in segments {
                assert!(s.file_bytes <= s.mem_bytes, "{s:?}");
                assert!(
                    s.offset.checked_add(s.file_bytes).is_some_and(|e| e <= len),
                    "{s:?}"
                );
                assert!(
                    s.gpa.checked_add(s.mem_bytes).is_some_and(|e| e <= memory),
                    "{s:?}"
                );
            }
        }
    }
    let vps = 1 + vps % abi::MAX_VPS;
    // The boot area goes where the image is not (or the image is refused).
    let Ok(base) = vmm::boot_base(&img, vps, memory) else {
        return;
    };
    let mut writes = Vec::new();
    vmm::boot_tables(img.mode, memory, base, &mut |gpa, v| writes.push((gpa, v)));
    for &(gpa, _) in &writes {
        assert!(
            gpa % 8 == 0 && gpa >= base && gpa + 8 <= base + vmm::layout::STACKS,
            "boot write at {gpa:#x} (area at {base:#x})"
        );
        for s in segments {
            assert!(
                gpa + 8 <= s.gpa || s.gpa + s.mem_bytes <= gpa,
                "boot write at {gpa:#x} in {s:?}"
            );
        }
    }
    let regs = vmm::start_registers(img.mode, img.entry, (vp % vps, vps), memory, base);
    let mut ctx = VpContext::reset();
    for (name, value) in regs {
        assert_eq!(
            ctx.set(name, value),
            Ok(()),
            "start register {name:#x} = {value:#x}"
        );
    }
    // The VP's stack: in the boot area, in no segment (it grows down from
    // RSP, at most one stack's size).
    let rsp = ctx.gpr[4];
    let stack = rsp - vmm::layout::STACK_BYTES;
    assert!(
        stack >= base + vmm::layout::STACKS,
        "stack {stack:#x}..{rsp:#x}, area at {base:#x}"
    );
    if matches!(img.mode, EntryMode::Long | EntryMode::Protected32) {
        // ELF images: `boot_base` placed the area inside the VM's memory.
        assert!(rsp <= memory, "stack {stack:#x}..{rsp:#x} past {memory:#x}");
        for s in segments {
            assert!(
                rsp <= s.gpa || s.gpa + s.mem_bytes <= stack,
                "stack {stack:#x}..{rsp:#x} in {s:?}"
            );
        }
    }
}

/// Input: flags u8 (bit 0 build an ELF from the rest, see `build_elf`; bits
/// 7:5 the VM's memory size), VP u8, VP count u8, [memory u64 when bits 7:5
/// are 7], then the image or the builder's bytes.
pub fn image_loader(data: &[u8]) {
    let mut b = Bytes(data);
    let flags = b.u8();
    let (vp, vps) = (u32::from(b.u8()), u32::from(b.u8()));
    let memory = match flags >> 5 {
        0 => 1 << 20,
        1 => 2 << 20,
        2 => 8 << 20,
        3 => 64 << 20,
        4 => 1 << 30,
        5 => 4 << 30,
        6 => abi::MAX_GPA,
        _ => b.u64(),
    };
    let image = if flags & 1 != 0 {
        build_elf(&mut b, flags)
    } else {
        b.rest().to_vec()
    };
    hypervisor_elf(&image);
    root_image(&image, memory, vp, vps);
}

// ---------------------------------------------------------------------------
// Boot information

/// Loader memory: bytes at a physical address.
struct Mem {
    base: u64,
    bytes: Vec<u8>,
}

impl PhysRead for Mem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(o) = addr
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok())
        else {
            return false;
        };
        match o.checked_add(buf.len()).and_then(|e| self.bytes.get(o..e)) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

fn put(v: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    if v.len() < at + bytes.len() {
        v.resize(at + bytes.len(), 0);
    }
    v[at..at + bytes.len()].copy_from_slice(bytes);
}

/// A Multiboot2 information structure from records `u8 type, u8 len, [len]`
/// (type picks 1, 2, 3, 6, 14, 15, 0 or a raw type): tag sizes, padding and
/// the total are right unless flags bit 6 asks for a raw total.
fn build_mb2(b: &mut Bytes, flags: u8) -> Vec<u8> {
    let raw_total = b.u32();
    let mut v = vec![0u8; 8];
    while !b.0.is_empty() {
        let pick = b.u8();
        let kind = match pick % 8 {
            0 => 1,
            1 => 2,
            2 => 3,
            3 => 6,
            4 => 14,
            5 => 15,
            6 => 0,
            _ => u32::from(pick),
        };
        let len = usize::from(b.u8());
        let mut payload = b.take(len).to_vec();
        if kind == 6 && pick & 0x80 != 0 && payload.len() >= 8 {
            // A memory map with 24-byte entries.
            payload[..4].copy_from_slice(&24u32.to_le_bytes());
        }
        if (kind == 14 || kind == 15) && pick & 0x80 != 0 && payload.len() >= 20 {
            // An RSDP with its signature and checksums right.
            payload[..8].copy_from_slice(b"RSD PTR ");
            let sum = |b: &[u8]| b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
            payload[8] = 0;
            payload[8] = 0u8.wrapping_sub(sum(&payload[..20]));
            if payload.len() >= 36 {
                payload[32] = 0;
                payload[32] = 0u8.wrapping_sub(sum(&payload[..36]));
            }
        }
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&((payload.len() + 8) as u32).to_le_bytes());
        v.extend_from_slice(&payload);
        while v.len() % 8 != 0 {
            v.push(0);
        }
    }
    v.extend_from_slice(&[0, 0, 0, 0, 8, 0, 0, 0]);
    let total = if flags & 0x40 != 0 {
        raw_total
    } else {
        v.len() as u32
    };
    v[..4].copy_from_slice(&total.to_le_bytes());
    v
}

/// A Multiboot 1 information structure at `base`: flags u32, then a command
/// line, a loader name, `count % 5` modules and map entries from the rest.
fn build_mb1(b: &mut Bytes, base: u64) -> Vec<u8> {
    let flags = b.u32() | (1 << 6);
    let mut v = vec![0u8; 0x58];
    let string = |v: &mut Vec<u8>, s: &[u8]| -> u32 {
        let at = v.len();
        put(v, at, s);
        v.push(0);
        (base + at as u64) as u32
    };
    let n = usize::from(b.u8());
    let cmdline = b.take(n);
    let p = string(&mut v, cmdline);
    put(&mut v, 16, &p.to_le_bytes());
    let n = usize::from(b.u8() % 64);
    let name = b.take(n);
    let p = string(&mut v, name);
    put(&mut v, 64, &p.to_le_bytes());
    let count = b.u8() % 5;
    let mut entries = Vec::new();
    for _ in 0..count {
        let (start, end) = (b.u32(), b.u32());
        let n = usize::from(b.u8() % 32);
        let p = string(&mut v, b.take(n));
        entries.push([start, end, p, 0]);
    }
    let at = v.len();
    for (i, e) in entries.iter().enumerate() {
        for (j, w) in e.iter().enumerate() {
            put(&mut v, at + 16 * i + 4 * j, &w.to_le_bytes());
        }
    }
    put(&mut v, 20, &u32::from(count).to_le_bytes());
    put(&mut v, 24, &((base + at as u64) as u32).to_le_bytes());
    let map = v.len();
    let mut length = 0u32;
    while b.0.len() >= 21 {
        let size = if b.u8() & 7 == 0 { b.u32() } else { 20 };
        let entry = [&size.to_le_bytes()[..], b.take(20)].concat();
        put(&mut v, map + length as usize, &entry);
        length += 24;
    }
    put(&mut v, 0, &flags.to_le_bytes());
    put(&mut v, 44, &length.to_le_bytes());
    put(&mut v, 48, &((base + map as u64) as u32).to_le_bytes());
    v
}

/// What `Options::parse` must find in a command line (read independently).
fn command_line(s: &str) {
    let o = Options::parse(s);
    let mut words: Vec<&str> = s.split_ascii_whitespace().collect();
    if words
        .first()
        .is_some_and(|w| w.contains('/') && !w.contains('='))
    {
        words.remove(0);
    }
    let (mut log, mut poweroff, mut xapic, mut selftest, mut unknown) =
        (LogLevel::Info, false, false, None, None);
    for w in words {
        let known = match w {
            "poweroff" => {
                poweroff = true;
                true
            }
            "log=error" | "log=warn" | "log=info" | "log=debug" | "log=trace" => {
                log = match &w[4..] {
                    "error" => LogLevel::Error,
                    "warn" => LogLevel::Warn,
                    "info" => LogLevel::Info,
                    "debug" => LogLevel::Debug,
                    _ => LogLevel::Trace,
                };
                true
            }
            "apic=xapic" => {
                xapic = true;
                true
            }
            "apic=x2apic" => true,
            "selftest=page-fault" => {
                selftest = Some(SelfTest::PageFault);
                true
            }
            "selftest=stack-overflow" => {
                selftest = Some(SelfTest::StackOverflow);
                true
            }
            _ => false,
        };
        if !known && unknown.is_none() {
            unknown = Some(w);
        }
    }
    assert_eq!(
        (
            o.log_level,
            o.poweroff,
            o.force_xapic,
            o.selftest,
            o.unknown
        ),
        (log, poweroff, xapic, selftest, unknown),
        "{s:?}"
    );
}

/// What the hypervisor does with a parsed map: the frame allocator hands out
/// only pages a usable region names whole, that no other region, module or
/// page 0 touches, each once.
fn frames(bi: &BootInfo, pick: u8) {
    let mut fa = FrameAllocator::from_memory_map(bi.regions());
    fa.reserve(0, PAGE_SIZE);
    for m in bi.modules() {
        fa.reserve(m.start, m.end);
    }
    let mut taken: Vec<(u64, u64)> = Vec::new();
    if let Some(p) = fa.alloc_contiguous(1, 1, 0x10_0000) {
        assert!(p + PAGE_SIZE <= 0x10_0000);
        taken.push((p, p + PAGE_SIZE));
    }
    let pages = 1 + u64::from(pick % 16);
    let align = 1 << ((pick >> 4) & 7);
    if let Some(p) = fa.alloc_contiguous(pages, align, u64::MAX) {
        assert_eq!(p % (align * PAGE_SIZE), 0);
        taken.push((p, p + pages * PAGE_SIZE));
    }
    for _ in 0..32 {
        let Some(p) = fa.alloc() else { break };
        taken.push((p, p + PAGE_SIZE));
    }
    let touches = |s: u64, e: u64, a: u64, b: u64| s < b && a < e;
    for (i, &(s, e)) in taken.iter().enumerate() {
        assert!(s % PAGE_SIZE == 0 && s > 0, "{s:#x}");
        for p in (s..e).step_by(PAGE_SIZE as usize) {
            assert!(
                bi.regions().iter().any(|r| r.kind == RegionKind::Usable
                    && r.start <= p
                    && p + PAGE_SIZE <= r.end),
                "page {p:#x} in no usable region"
            );
        }
        for r in bi.regions().iter().filter(|r| r.kind != RegionKind::Usable) {
            assert!(!touches(s, e, r.start, r.end), "{s:#x}..{e:#x} in {r:?}");
        }
        for m in bi.modules() {
            assert!(
                !touches(s, e, m.start, m.end),
                "{s:#x}..{e:#x} in module {m:?}"
            );
        }
        for &(s2, e2) in &taken[..i] {
            assert!(!touches(s, e, s2, e2), "{s:#x}..{e:#x} handed out twice");
        }
    }
}

/// Input: flags u8 (bits 1:0 Multiboot 1, Multiboot 2 (twice) or a command
/// line alone; bit 2 build the structure from the rest (see `build_mb1`,
/// `build_mb2`), else the rest is memory as the loader left it), the
/// structure's offset u16 and the memory's page u16 (below 4 GiB, as every
/// loader leaves it), a pick u8 for the frame allocator, then the rest.
pub fn boot_info(data: &[u8]) {
    let mut b = Bytes(data);
    let flags = b.u8();
    let offset = u64::from(b.u16() & !7);
    let base = u64::from(b.u16()) << 12;
    let pick = b.u8();
    let magic = match flags & 3 {
        0 => bootinfo::MULTIBOOT1_BOOT_MAGIC,
        1 | 2 => bootinfo::MULTIBOOT2_BOOT_MAGIC,
        _ => {
            let text = b.rest();
            command_line(&String::from_utf8_lossy(text));
            let s = InlineStr::<{ bootinfo::MAX_CMDLINE }>::from_bytes(text);
            assert!(s.as_str().len() <= bootinfo::MAX_CMDLINE);
            assert!(text.starts_with(s.as_str().as_bytes()));
            return;
        }
    };
    let (info, bytes) = if flags & 4 != 0 {
        let v = if magic == bootinfo::MULTIBOOT1_BOOT_MAGIC {
            build_mb1(&mut b, base)
        } else {
            build_mb2(&mut b, flags)
        };
        (base, v)
    } else {
        (
            base + offset,
            [&vec![0u8; offset as usize][..], b.rest()].concat(),
        )
    };
    let mem = Mem { base, bytes };
    let Ok(bi) = bootinfo::parse(magic, info, &mem) else {
        return;
    };
    let protocol = if magic == bootinfo::MULTIBOOT1_BOOT_MAGIC {
        Protocol::Multiboot1
    } else {
        Protocol::Multiboot2
    };
    assert_eq!(bi.protocol, protocol);
    assert!(bi.regions().len() <= bootinfo::MAX_REGIONS);
    assert!(bi.regions_dropped == 0 || bi.regions().len() == bootinfo::MAX_REGIONS);
    for r in bi.regions() {
        assert!(r.start < r.end, "{r:?}");
    }
    assert!(bi.modules().len() <= bootinfo::MAX_MODULES);
    for m in bi.modules() {
        assert!(m.start <= m.end && m.name.as_str().len() <= bootinfo::MAX_NAME);
    }
    assert!(bi.cmdline.as_str().len() <= bootinfo::MAX_CMDLINE);
    assert!(bi.loader_name.as_str().len() <= bootinfo::MAX_NAME);
    if let Some(root) = bi.acpi {
        // What the root partition is given: an RSDP naming the same tables.
        assert_ne!(root.table_address, 0);
        assert!(root.revision == 0 || root.revision >= 2, "{root:?}");
        let revision = if root.revision >= 2 { 2 } else { 0 };
        assert_eq!(
            bootinfo::parse_rsdp(&bootinfo::make_rsdp(root)),
            Some(AcpiRoot { revision, ..root })
        );
    }
    // The numbers the hypervisor sizes its identity map and heap with.
    let _ = bi.usable_bytes();
    let top = bi.identity_top();
    const GIB: u64 = 1 << 30;
    assert!(top >= 4 * GIB && top % GIB == 0, "{top:#x}");
    assert!(top >= bi.usable_top().min(!(GIB - 1)), "{top:#x}");
    frames(&bi, pick);
    command_line(bi.cmdline.as_str());
}

// ---------------------------------------------------------------------------
// The root's disk formats: FAT32, VHD, VHDX

/// A FAT32 volume in sectors kept only where they are not zero.
#[derive(Clone, Default)]
struct SparseDisk {
    sectors: std::collections::BTreeMap<u64, [u8; 512]>,
    blocks: u64,
}

impl vmbus::scsi::BlockDevice for SparseDisk {
    fn blocks(&self) -> u64 {
        self.blocks
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), vmbus::scsi::IoError> {
        let n = (buf.len() / 512) as u64;
        if lba.checked_add(n).is_none_or(|end| end > self.blocks) {
            return Err(vmbus::scsi::IoError);
        }
        for (i, s) in buf.chunks_mut(512).enumerate() {
            match self.sectors.get(&(lba + i as u64)) {
                Some(d) => s.copy_from_slice(d),
                None => s.fill(0),
            }
        }
        Ok(())
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), vmbus::scsi::IoError> {
        let n = (buf.len() / 512) as u64;
        if lba.checked_add(n).is_none_or(|end| end > self.blocks) {
            return Err(vmbus::scsi::IoError);
        }
        for (i, s) in buf.chunks(512).enumerate() {
            let mut d = [0u8; 512];
            d.copy_from_slice(s);
            self.sectors.insert(lba + i as u64, d);
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), vmbus::scsi::IoError> {
        Ok(())
    }
}

/// Sectors of the template volume: 32 reserved, two FATs of 520 sectors,
/// then 66 000 clusters of one sector; the root directory at cluster 2 holds
/// a long-named file of 3 clusters (3..=5).
const FAT_RESERVED: u64 = 32;
const FAT_SECTORS: u64 = 520;
const FAT_CLUSTERS: u64 = 66_000;

fn fat_template() -> SparseDisk {
    let mut d = SparseDisk {
        blocks: FAT_RESERVED + 2 * FAT_SECTORS + FAT_CLUSTERS,
        ..Default::default()
    };
    let mut boot = [0u8; 512];
    boot[0] = 0xEB;
    boot[11..13].copy_from_slice(&512u16.to_le_bytes());
    boot[13] = 1;
    boot[14..16].copy_from_slice(&(FAT_RESERVED as u16).to_le_bytes());
    boot[16] = 2;
    boot[32..36].copy_from_slice(&(d.blocks as u32).to_le_bytes());
    boot[36..40].copy_from_slice(&(FAT_SECTORS as u32).to_le_bytes());
    boot[44..48].copy_from_slice(&2u32.to_le_bytes());
    boot[48..50].copy_from_slice(&1u16.to_le_bytes());
    boot[71..82].copy_from_slice(b"FUZZ       ");
    boot[510] = 0x55;
    boot[511] = 0xAA;
    d.sectors.insert(0, boot);
    let mut info = [0u8; 512];
    info[..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    info[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    info[488..492].copy_from_slice(&u32::MAX.to_le_bytes());
    d.sectors.insert(1, info);
    let mut fat = [0u8; 512];
    for (c, v) in [0x0FFF_FFF8u32, 0x0FFF_FFFF, 0x0FFF_FFFF, 4, 5, 0x0FFF_FFFF]
        .iter()
        .enumerate()
    {
        fat[c * 4..c * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    d.sectors.insert(FAT_RESERVED, fat);
    d.sectors.insert(FAT_RESERVED + FAT_SECTORS, fat);
    let mut dir = [0u8; 512];
    // One long-name entry ("a-file.bin"), then its short entry.
    let short = *b"A-FILE~1BIN";
    let sum = short
        .iter()
        .fold(0u8, |s, &c| s.rotate_right(1).wrapping_add(c));
    dir[0] = 0x41;
    let name: Vec<u16> = "a-file.bin".encode_utf16().collect();
    for (j, &o) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
        .iter()
        .enumerate()
    {
        let u = match j.cmp(&name.len()) {
            std::cmp::Ordering::Less => name[j],
            std::cmp::Ordering::Equal => 0,
            std::cmp::Ordering::Greater => 0xFFFF,
        };
        dir[o..o + 2].copy_from_slice(&u.to_le_bytes());
    }
    dir[11] = 0x0F;
    dir[13] = sum;
    dir[32..43].copy_from_slice(&short);
    dir[43] = 0x20;
    dir[58..60].copy_from_slice(&3u16.to_le_bytes());
    dir[60..64].copy_from_slice(&1500u32.to_le_bytes());
    let data = FAT_RESERVED + 2 * FAT_SECTORS;
    d.sectors.insert(data, dir);
    for k in 1..=3 {
        d.sectors.insert(data + k, [k as u8; 512]);
    }
    d
}

/// The metadata sectors a FAT patch lands in: boot sector, FSInfo, the
/// first sector of each FAT, the root directory.
fn fat_patch_sector(k: u8) -> u64 {
    match k % 5 {
        0 => 0,
        1 => 1,
        2 => FAT_RESERVED,
        3 => FAT_RESERVED + FAT_SECTORS,
        _ => FAT_RESERVED + 2 * FAT_SECTORS,
    }
}

/// Input: `u8 format` (FAT32, VHD, VHDX), `u8 count`, then `count % 32`
/// 4-byte patches `u8 where, u16 offset, u8 value` on a small valid image
/// of that format, then `u32` where to write; what
/// to do with it: the image opens or is refused with a reason; an opened
/// one reads, writes and reads back what it wrote, and the FAT32 volume
/// makes a file and finds it again.
pub fn disk_images(data: &[u8]) {
    use root_partition_svc::fat::Volume;
    use root_partition_svc::vhd::{Kind, MemoryStorage, Vhd};
    use root_partition_svc::vhdx::Vhdx;
    static FAT: std::sync::OnceLock<SparseDisk> = std::sync::OnceLock::new();
    static VHD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    static VHDX: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let mut b = Bytes(data);
    let format = b.u8() % 3;
    let count = usize::from(b.u8() % 32);
    let patches: Vec<(u8, u16, u8)> = b
        .take(4 * count)
        .chunks_exact(4)
        .map(|p| (p[0], u16::from_le_bytes([p[1], p[2]]), p[3]))
        .collect();
    let pattern: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 1) as u8).collect();
    match format {
        0 => {
            let mut disk = FAT.get_or_init(fat_template).clone();
            for (k, off, v) in patches {
                let s = fat_patch_sector(k);
                disk.sectors.entry(s).or_insert([0; 512])[usize::from(off) % 512] = v;
            }
            let Ok(mut vol) = Volume::open(disk) else {
                return;
            };
            if let Ok(list) = vol.list() {
                for (d, f) in list {
                    let mut buf = vec![0u8; (d.size as usize).min(4096)];
                    let _ = vol.read(&f, 0, &mut buf);
                }
            }
            let _ = vol.open_file("a-file.bin");
            if let Ok(mut f) = vol.create("new file.vhdx", (0, 0)) {
                if vol.write(&mut f, 100, &pattern).is_ok() {
                    let mut back = vec![1u8; 3100];
                    vol.read(&f, 0, &mut back)
                        .expect("a written file reads back");
                    assert!(back[..100].iter().all(|&x| x == 0), "the gap reads zeros");
                    assert!(back[100..] == pattern[..], "what was written reads back");
                }
            }
            let _ = vol.flush();
        }
        1 => {
            let base = VHD.get_or_init(|| {
                let mut v =
                    Vhd::create(MemoryStorage::default(), Kind::Dynamic, 8 << 20, [1; 16], 0)
                        .expect("a new VHD");
                v.write(3 << 20, &[9; 512]).expect("a first block");
                v.into_storage().0
            });
            let mut bytes = base.clone();
            for (k, off, v) in patches {
                // Footer copy and header (first 2 KiB), the BAT, the end.
                let at = match k % 3 {
                    0 => usize::from(off) % 2048,
                    1 => 1536 + usize::from(off) % 512,
                    _ => bytes.len() - 1 - usize::from(off) % 1024,
                };
                bytes[at] = v;
            }
            let Ok(mut vhd) = Vhd::open(MemoryStorage(bytes)) else {
                return;
            };
            let size = vhd.size();
            let mut buf = vec![0u8; 4096];
            let _ = vhd.read(0, &mut buf);
            let at = (u64::from(b.u32()) % size.max(1)) & !511;
            // Where a device would move the bytes: never more than asked,
            // never nothing for something (the direct path loops on it).
            let want = 4096u64.min(size.saturating_sub(at));
            if let Ok(e) = vhd.extent(at, want, b.u8() & 1 == 1) {
                assert!(
                    e.len() <= want && (want == 0 || e.len() > 0),
                    "an extent inside the ask"
                );
            }
            if at + pattern.len() as u64 <= size && vhd.write(at, &pattern).is_ok() {
                let mut back = vec![0u8; pattern.len()];
                vhd.read(at, &mut back).expect("written data reads back");
                assert!(back == pattern, "what was written reads back");
            }
        }
        _ => {
            let base = VHDX.get_or_init(|| {
                let mut v = Vhdx::create(MemoryStorage::default(), Kind::Dynamic, 8 << 20, [1; 16])
                    .expect("a new VHDX");
                v.write(3 << 20, &[9; 512]).expect("a first block");
                v.into_storage().0
            });
            let mut bytes = base.clone();
            for (k, off, v) in patches {
                // Identifier, headers, region tables, metadata, BAT.
                let at = match k % 6 {
                    0 => usize::from(off) % 512,
                    1 => (64 << 10) + usize::from(off) % 4096,
                    2 => (128 << 10) + usize::from(off) % 4096,
                    3 => (192 << 10) + usize::from(off) % 512,
                    4 => (2 << 20) + usize::from(off),
                    _ => (3 << 20) + usize::from(off) % 512,
                };
                bytes[at] = v;
            }
            let Ok(mut vhdx) = Vhdx::open(MemoryStorage(bytes)) else {
                return;
            };
            let size = vhdx.size();
            let mut buf = vec![0u8; 4096];
            let _ = vhdx.read(0, &mut buf);
            let at = (u64::from(b.u32()) % size.max(1)) & !511;
            // Where a device would move the bytes: never more than asked,
            // never nothing for something (the direct path loops on it).
            let want = 4096u64.min(size.saturating_sub(at));
            if let Ok(e) = vhdx.extent(at, want, b.u8() & 1 == 1) {
                assert!(
                    e.len() <= want && (want == 0 || e.len() > 0),
                    "an extent inside the ask"
                );
            }
            if at + pattern.len() as u64 <= size && vhdx.write(at, &pattern).is_ok() {
                let mut back = vec![0u8; pattern.len()];
                vhdx.read(at, &mut back).expect("written data reads back");
                assert!(back == pattern, "what was written reads back");
            }
        }
    }
}
