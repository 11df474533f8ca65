//! A guest's hypercalls: the root's calls are denied, malformed inputs get
//! their status. Prints each result; exit code 0 when all are as expected.
#![no_std]
#![no_main]
use hv_abi::hypercall::{status, Input};
use hv_abi::partition::code;
use test_guests::{exit, hypercall, println};

test_guests::entry!(main);

fn input(code: u16, reps: u16) -> u64 {
    Input {
        code,
        fast: false,
        variable_header_size: 0,
        rep_count: reps,
        rep_start: 0,
    }
    .encode()
}

fn main(_vp: u64, _vps: u64, memory: u64) -> ! {
    if !test_guests::enable_hypercalls() {
        println!("hypercalls: FAILED, no hypercall page");
        exit(1);
    }
    let page = 0x30_0000u64;
    let checks: [(&str, u64, u64, u64, u16); 7] = [
        (
            "CreatePartition",
            input(code::CREATE_PARTITION, 0),
            page,
            page + 0x1000,
            status::ACCESS_DENIED,
        ),
        (
            "MapGpaPages",
            input(code::MAP_GPA_PAGES, 1),
            page,
            0,
            status::ACCESS_DENIED,
        ),
        (
            "SetVpRegisters",
            input(code::SET_VP_REGISTERS, 1),
            page,
            0,
            status::ACCESS_DENIED,
        ),
        (
            "GetHostInfo",
            input(hv_abi::hypercall::GET_HOST_INFO, 0),
            0,
            page,
            status::ACCESS_DENIED,
        ),
        (
            "reserved bits",
            input(code::CREATE_PARTITION, 0) | 1 << 27,
            page,
            page + 0x1000,
            status::INVALID_HYPERCALL_INPUT,
        ),
        (
            "unknown code",
            input(0x7E55, 0),
            page,
            page + 0x1000,
            status::INVALID_HYPERCALL_CODE,
        ),
        (
            "input beyond memory",
            input(code::CREATE_PARTITION, 0),
            memory + 0x10_0000,
            page,
            status::ACCESS_DENIED,
        ),
    ];
    let mut failed = 0;
    for (what, rcx, rdx, r8, want) in checks {
        let got = hypercall(rcx, rdx, r8) as u16;
        let verdict = if got == want { "ok" } else { "WRONG" };
        failed += (got != want) as u8;
        println!("hypercalls: {what}: status {got:#06x} (expected {want:#06x}) {verdict}");
    }
    if failed == 0 {
        println!("hypercalls: all statuses as expected");
    }
    exit(failed)
}
