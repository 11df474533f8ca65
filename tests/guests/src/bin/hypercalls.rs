//! A guest's hypercalls: the root's calls are denied, malformed inputs get
//! their status, the calls a guest may make work. Prints each result; the
//! exit code is the number of wrong answers.
#![no_std]
#![no_main]
use hv_abi::hypercall::{status, Input};
use hv_abi::layout::{
    self, FlushVirtualAddressSpace, GetVpRegisters, Immutable, IntoBytes, RegisterName,
    RegisterValue,
};
use hv_abi::partition::{code, flush, reg, PARTITION_SELF, VP_SELF};
use test_guests::{exit, hypercall, println};

test_guests::entry!(main);

fn value(code: u16, fast: bool, reps: u16, start: u16) -> u64 {
    Input {
        code,
        fast,
        variable_header_size: 0,
        rep_count: reps,
        rep_start: start,
    }
    .encode()
}

/// Input pages at 3 MiB (inside the 4 MiB guest, above the image).
const IN: u64 = 0x30_0000;
const OUT: u64 = 0x30_1000;

fn put(at: u64, bytes: &[u8]) {
    // SAFETY: [IN, OUT + 4 KiB) is this guest's RAM, used for nothing else.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), at as *mut u8, bytes.len()) };
}

/// A rep call's input block (`header`, then `elements`) at `at`.
fn put_rep<H: IntoBytes + Immutable, E: IntoBytes + Immutable>(
    at: u64,
    header: &H,
    elements: &[E],
) {
    let mut block = [0u8; 256];
    let len = layout::encode_rep(header, elements, &mut block).expect("a small block");
    put(at, &block[..len]);
}

/// GetVpRegisters output element `i` at OUT.
fn register_value(i: u64) -> u128 {
    // SAFETY: as in `put`; OUT is page-aligned, so every element is aligned.
    let e = unsafe { core::ptr::read_volatile((OUT as *const RegisterValue).add(i as usize)) };
    e.value
}

fn main(_vp: u64, _vps: u64, memory: u64) -> ! {
    if !test_guests::enable_hypercalls() {
        println!("hypercalls: FAILED, no hypercall page");
        exit(1);
    }
    // GetVpRegisters of this VP: RIP and RSP.
    let header = GetVpRegisters {
        partition_id: PARTITION_SELF,
        vp_index: VP_SELF,
        ..Default::default()
    };
    let names = [
        RegisterName { name: reg::RIP },
        RegisterName { name: reg::RSP },
    ];
    put_rep(IN, &header, &names);
    // A second header naming another partition (we are not told our id;
    // the harness starts this guest alone, as partition 1: name 2).
    let other = GetVpRegisters {
        partition_id: 2,
        ..header
    };
    put_rep(IN + 0x800, &other, &names);
    // FlushVirtualAddressSpace: address space 0, all processors, mask VP 0.
    let flush = FlushVirtualAddressSpace {
        address_space: 0,
        flags: flush::ALL_PROCESSORS,
        processor_mask: 1,
    };
    put(IN + 0x400, flush.as_bytes());
    let bad_flush = FlushVirtualAddressSpace {
        flags: 0x100,
        ..flush
    };
    put(IN + 0x600, bad_flush.as_bytes());

    let gvr = code::GET_VP_REGISTERS;
    let checks: [(&str, u64, u64, u64, u16); 18] = [
        (
            "CreatePartition (root only)",
            value(code::CREATE_PARTITION, false, 0, 0),
            IN,
            OUT,
            status::ACCESS_DENIED,
        ),
        (
            "MapGpaPages (root only)",
            value(code::MAP_GPA_PAGES, false, 1, 0),
            IN,
            0,
            status::ACCESS_DENIED,
        ),
        (
            "SetVpRegisters (root only)",
            value(code::SET_VP_REGISTERS, false, 1, 0),
            IN,
            0,
            status::ACCESS_DENIED,
        ),
        (
            "GetHostInfo (root only)",
            value(hv_abi::hypercall::GET_HOST_INFO, false, 0, 0),
            0,
            OUT,
            status::ACCESS_DENIED,
        ),
        (
            "SignalEventDirectThenIdle (root only)",
            value(
                hv_abi::hypercall::SIGNAL_EVENT_DIRECT_THEN_IDLE,
                false,
                0,
                0,
            ),
            IN,
            OUT,
            status::ACCESS_DENIED,
        ),
        (
            "reserved input bits",
            value(gvr, false, 2, 0) | 1 << 27,
            IN,
            OUT,
            status::INVALID_HYPERCALL_INPUT,
        ),
        (
            "unknown call code",
            value(0x7E55, false, 0, 0),
            IN,
            OUT,
            status::INVALID_HYPERCALL_CODE,
        ),
        (
            "rep call without reps",
            value(gvr, false, 0, 0),
            IN,
            OUT,
            status::INVALID_HYPERCALL_INPUT,
        ),
        (
            "rep start past the count",
            value(gvr, false, 2, 2),
            IN,
            OUT,
            status::INVALID_HYPERCALL_INPUT,
        ),
        (
            "fast form of a memory call",
            value(gvr, true, 2, 0),
            IN,
            OUT,
            status::INVALID_HYPERCALL_INPUT,
        ),
        (
            "misaligned input GPA",
            value(gvr, false, 2, 0),
            IN + 4,
            OUT,
            status::INVALID_ALIGNMENT,
        ),
        (
            "huge rep count (input crosses its page)",
            value(gvr, false, 4095, 0),
            IN,
            OUT,
            status::INVALID_ALIGNMENT,
        ),
        (
            "input and output overlapping",
            value(gvr, false, 2, 0),
            IN,
            IN + 8,
            status::INVALID_PARAMETER,
        ),
        (
            "input GPA outside my memory",
            value(gvr, false, 2, 0),
            memory + 0x10_0000,
            OUT,
            status::INVALID_PARAMETER,
        ),
        (
            "another partition's VP",
            value(gvr, false, 2, 0),
            IN + 0x800,
            OUT,
            status::ACCESS_DENIED,
        ),
        (
            "FlushVirtualAddressSpace, bad flags",
            value(code::FLUSH_VIRTUAL_ADDRESS_SPACE, false, 0, 0),
            IN + 0x600,
            0,
            status::INVALID_PARAMETER,
        ),
        (
            "FlushVirtualAddressSpace",
            value(code::FLUSH_VIRTUAL_ADDRESS_SPACE, false, 0, 0),
            IN + 0x400,
            0,
            status::SUCCESS,
        ),
        (
            "GetVpRegisters of my own VP",
            value(gvr, false, 2, 0),
            IN,
            OUT,
            status::SUCCESS,
        ),
    ];
    let mut failed = 0u8;
    for (what, rcx, rdx, r8, want) in checks {
        let rax = hypercall(rcx, rdx, r8);
        let got = rax as u16;
        let ok = got == want;
        failed += !ok as u8;
        println!(
            "hypercalls: {what}: status {got:#06x} (expected {want:#06x}) {}",
            if ok { "ok" } else { "WRONG" }
        );
        if what == "GetVpRegisters of my own VP" && ok {
            let (reps, rip, rsp) = ((rax >> 32) & 0xFFF, register_value(0), register_value(1));
            let sane = reps == 2 && (0x20_0000..0x30_0000).contains(&rip) && rsp < 0x10_0000;
            failed += !sane as u8;
            println!(
                "hypercalls: my RIP {rip:#x}, RSP {rsp:#x}, {reps} reps {}",
                if sane { "ok" } else { "WRONG" }
            );
        }
    }
    if failed == 0 {
        println!("hypercalls: all statuses as expected");
    }
    exit(failed)
}
