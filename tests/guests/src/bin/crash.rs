//! Reports a crash as a Hyper-V guest does (the guest crash MSRs, TLFS
//! "Guest Crash Enlightenment"): CPUID offers them, CRASH_CTL says a
//! message may come with them, P0-P4 keep what is written, and setting
//! CrashNotify with a message stops the VM as Failed with the message's
//! panic line.
#![no_std]
#![no_main]
use test_guests::{exit, println, rdmsr, wrmsr};

test_guests::entry!(main);

const CRASH_P0: u32 = 0x4000_0100;
const CRASH_CTL: u32 = 0x4000_0105;
const NOTIFY: u64 = 1 << 63;
const MESSAGE: u64 = 1 << 62;

static TEXT: &[u8] =
    b"crash: some earlier line\nKernel panic - not syncing: crash test guest\nmore\n";
/// The message, in its own page (the root reads P4 bytes at P3).
#[repr(align(4096))]
struct Page([u8; 4096]);
static mut PAGE: Page = Page([0; 4096]);

fn main(_vp: u64, _vps: u64, _memory: u64) -> ! {
    let edx = core::arch::x86_64::__cpuid(0x4000_0003).edx;
    if edx & (1 << 10) == 0 {
        println!("crash: FAILED, CPUID 0x40000003 EDX bit 10 (crash MSRs) is clear");
        exit(1)
    }
    let ctl = rdmsr(CRASH_CTL);
    if ctl & (NOTIFY | MESSAGE) != NOTIFY | MESSAGE {
        println!("crash: FAILED, CRASH_CTL reads {ctl:#x}");
        exit(1)
    }
    // SAFETY: only this VP touches the page; it is the guest's own memory.
    let page = unsafe { &mut *core::ptr::addr_of_mut!(PAGE) };
    page.0[..TEXT.len()].copy_from_slice(TEXT);
    let gpa = page.0.as_ptr() as u64; // identity-mapped
    let params = [0xDEAD, 0x1, 0x2, gpa, TEXT.len() as u64];
    for (i, &v) in params.iter().enumerate() {
        // SAFETY: the crash MSRs the CPUID bit offers; they change nothing
        // but what the root reads.
        unsafe { wrmsr(CRASH_P0 + i as u32, v) };
        let back = rdmsr(CRASH_P0 + i as u32);
        if back != v {
            println!("crash: FAILED, P{i} reads {back:#x}, not {v:#x}");
            exit(1)
        }
    }
    println!("crash: reporting a crash");
    // SAFETY: as above: the VM stops here.
    unsafe { wrmsr(CRASH_CTL, NOTIFY | MESSAGE) };
    println!("crash: FAILED, still running after CrashNotify");
    exit(1)
}
