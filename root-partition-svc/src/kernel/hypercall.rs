//! The hypercall page and the two host calls (TLFS calling convention: RCX =
//! input value, RDX = input GPA, R8 = output GPA, status in RAX).
use crate::arch::wrmsr;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};
use hv_abi::hypercall::{Input, VMCALL_PAGE, VMMCALL_PAGE};
use hv_abi::layout::{self, Immutable, IntoBytes, RegisterAssoc, SetVpRegisters};
use hv_abi::msr;
use spin::Mutex;

#[repr(C, align(4096))]
struct Page(UnsafeCell<[u8; 4096]>);
// SAFETY: only VP 0 makes hypercalls; the pages are touched by it and by the
// hypervisor on its behalf, never concurrently.
unsafe impl Sync for Page {}

// The hypercall page: the hypervisor writes `vmcall; ret` (or `vmmcall;
// ret`) here, through the physical address. It lies in .text, executable and
// read-only in the root's W^X page tables; until then it holds INT3s.
core::arch::global_asm!(
    ".pushsection .text.hypercall_page, \"ax\"",
    ".balign 4096",
    ".global hypercall_page",
    "hypercall_page:",
    ".fill 4096, 1, 0xCC",
    ".popsection",
);
extern "C" {
    static hypercall_page: [u8; 4096];
}

fn code_page() -> u64 {
    core::ptr::addr_of!(hypercall_page) as u64
}

static INPUT: Page = Page(UnsafeCell::new([0; 4096]));
static OUTPUT: Page = Page(UnsafeCell::new([0; 4096]));
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The hypercall instruction is VMMCALL (AMD), not VMCALL.
static VMMCALL: AtomicBool = AtomicBool::new(false);

/// The most registers a deferred resume carries (RAX, RIP, InterceptSuspend
/// and one more).
const DEFERRED_MAX: usize = 4;

/// A call left for the moment the root goes idle: then it is sent with the
/// halt in one exit (the `..._THEN_IDLE` calls). Sent on its own before any
/// other call (which may need the input page), and by `flush_deferred`.
#[derive(Clone, Copy)]
enum Deferred {
    /// The VM worker's resume of a VP after its I/O intercept: a register
    /// call (CompleteIntercept), nothing in the input page.
    Complete {
        partition: u64,
        vp: u32,
        rax: u64,
        rip: u64,
    },
    /// The VM worker's SetVpRegisters of `count` registers, in the input
    /// page: a VP's resume after another intercept.
    Resume { partition: u64, vp: u32, count: u16 },
    /// A device server's SignalEventDirect to a guest's channel, in the
    /// input page.
    Signal,
}

impl Deferred {
    /// The call's registers, on its own or with the halt: RCX (the input
    /// value), RDX, R8, R9, R10.
    fn registers(self, then_idle: bool) -> [u64; 5] {
        use hv_abi::hypercall::{
            COMPLETE_INTERCEPT, COMPLETE_INTERCEPT_THEN_IDLE, SET_VP_REGISTERS_THEN_IDLE,
            SIGNAL_EVENT_DIRECT_THEN_IDLE,
        };
        use hv_abi::partition::code::{SET_VP_REGISTERS, SIGNAL_EVENT_DIRECT};
        let pages = (INPUT.0.get() as u64, OUTPUT.0.get() as u64);
        let pick = |alone, with_halt| if then_idle { with_halt } else { alone };
        match self {
            Deferred::Complete {
                partition,
                vp,
                rax,
                rip,
            } => {
                // The hot path (every intercept's resume): both input values
                // are constants.
                const ALONE: u64 = Input::fast(COMPLETE_INTERCEPT).encode();
                const WITH_HALT: u64 = Input::fast(COMPLETE_INTERCEPT_THEN_IDLE).encode();
                let input = if then_idle { WITH_HALT } else { ALONE };
                [input, partition, vp.into(), rax, rip]
            }
            Deferred::Resume { count, .. } => {
                let code = pick(SET_VP_REGISTERS, SET_VP_REGISTERS_THEN_IDLE);
                [Input::slow(code, count).encode(), pages.0, pages.1, 0, 0]
            }
            Deferred::Signal => {
                let code = pick(SIGNAL_EVENT_DIRECT, SIGNAL_EVENT_DIRECT_THEN_IDLE);
                [Input::slow(code, 0).encode(), pages.0, pages.1, 0, 0]
            }
        }
    }
}

static DEFERRED: Mutex<Option<Deferred>> = Mutex::new(None);
/// `DEFERRED` holds a call: the worker's many looks at an empty one take no
/// lock.
static DEFERRED_ANY: AtomicBool = AtomicBool::new(false);

fn put_deferred(d: Deferred) {
    *DEFERRED.lock() = Some(d);
    DEFERRED_ANY.store(true, Ordering::Release);
}

fn take_deferred() -> Option<Deferred> {
    if !DEFERRED_ANY.load(Ordering::Acquire) {
        return None;
    }
    let d = DEFERRED.lock().take();
    DEFERRED_ANY.store(false, Ordering::Release);
    d
}
/// A deferred call the hypervisor refused: (partition, VP, status), for the
/// worker to fail that VM.
static DEFERRED_FAILED: Mutex<Option<(u64, u32, u16)>> = Mutex::new(None);
/// `DEFERRED_FAILED` holds a refusal (looked at on every poll, without a lock).
static DEFERRED_REFUSED: AtomicBool = AtomicBool::new(false);

/// Sets the guest OS id and enables the hypercall page. The error is the
/// page's first bytes when the MSR writes were accepted but the page holds no
/// hypercall code.
pub fn enable() -> Result<(), [u8; 4]> {
    let page = code_page();
    // SAFETY: the hypervisor emulates both MSRs (its CPUID grants
    // AccessHypercallMsrs, checked by the caller); the page it then
    // overwrites is this crate's own, used for nothing else.
    unsafe {
        wrmsr(msr::GUEST_OS_ID, root_partition_svc::boot::GUEST_OS_ID);
        wrmsr(msr::HYPERCALL, page | msr::HYPERCALL_ENABLE);
    }
    // SAFETY: reading the first bytes of our own page; volatile because the
    // hypervisor wrote them behind the compiler's back.
    let head = unsafe { core::ptr::read_volatile(page as *const [u8; 4]) };
    if head == VMCALL_PAGE || head == VMMCALL_PAGE {
        VMMCALL.store(head == VMMCALL_PAGE, Ordering::Relaxed);
        ENABLED.store(true, Ordering::Relaxed);
        Ok(())
    } else {
        Err(head)
    }
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A slow call without input and with one output page; the page's contents
/// on success, the HV_STATUS otherwise.
pub fn call_with_output(code: u16) -> Result<[u8; 4096], u16> {
    let mut out = [0u8; 4096];
    match call(code, 0, &[], &mut out).status {
        hv_abi::hypercall::status::SUCCESS => Ok(out),
        s => Err(s),
    }
}

/// What a call returned: its status and, for rep calls, the reps completed.
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    pub status: u16,
    pub reps: u16,
}

/// A rep call: its input block is `header`, then `elements`, one per rep
/// (hv_abi's typed layouts); as [`call`] otherwise. A block larger than the
/// input page is not sent: INVALID_PARAMETER.
pub fn call_rep<H: IntoBytes + Immutable, E: IntoBytes + Immutable>(
    code: u16,
    header: &H,
    elements: &[E],
    output: &mut [u8],
) -> Reply {
    if !enabled() {
        return Reply {
            status: hv_abi::hypercall::status::INVALID_HYPERCALL_CODE,
            reps: 0,
        };
    }
    flush_deferred();
    // Straight into the input page: no page-sized buffer to clear and copy
    // on every call (the VM worker resumes VPs with this).
    // SAFETY: our own page; only VP 0 makes hypercalls, one at a time, and
    // no reference to it outlives this statement.
    let page = unsafe { &mut *INPUT.0.get() };
    if layout::encode_rep(header, elements, page).is_none() {
        return Reply {
            status: hv_abi::hypercall::status::INVALID_PARAMETER,
            reps: 0,
        };
    }
    call_prepared(code, elements.len() as u16, output)
}

/// A slow call: `input` (at most a page) goes to the input page, the output
/// page comes back in `output` (its first `output.len()` bytes). A rep call
/// that the hypervisor continues re-enters transparently (the hypervisor
/// advances the rep start index and returns to the call instruction).
pub fn call(code: u16, reps: u16, input: &[u8], output: &mut [u8]) -> Reply {
    if !enabled() {
        return Reply {
            status: hv_abi::hypercall::status::INVALID_HYPERCALL_CODE,
            reps: 0,
        };
    }
    flush_deferred();
    let n = input.len().min(4096);
    // SAFETY: our own page; only VP 0 makes hypercalls, one at a time.
    unsafe { core::ptr::copy_nonoverlapping(input.as_ptr(), INPUT.0.get() as *mut u8, n) };
    call_prepared(code, reps, output)
}

/// The call, its input already in the input page.
fn call_prepared(code: u16, reps: u16, output: &mut [u8]) -> Reply {
    let pages = (INPUT.0.get() as u64, OUTPUT.0.get() as u64);
    let rax = call_registers([Input::slow(code, reps).encode(), pages.0, pages.1, 0, 0]);
    let m = output.len().min(4096);
    // SAFETY: our own page, filled by the hypervisor (the asm may write memory).
    unsafe { core::ptr::copy_nonoverlapping(OUTPUT.0.get() as *const u8, output.as_mut_ptr(), m) };
    Reply {
        status: rax as u16,
        reps: ((rax >> 32) & 0xFFF) as u16,
    }
}

/// Leaves a SetVpRegisters of at most `DEFERRED_MAX` registers (a VP's
/// resume after its intercept) for `idle`, which sends it with the halt.
/// A resume already waiting is sent first. `false`: too many registers; the
/// caller sends it itself.
pub fn defer_set_registers(partition: u64, vp: u32, registers: &[(u32, u128)]) -> bool {
    if registers.len() > DEFERRED_MAX || !enabled() {
        return false;
    }
    flush_deferred();
    let mut elements = [RegisterAssoc::default(); DEFERRED_MAX];
    for (e, &(name, value)) in elements.iter_mut().zip(registers) {
        e.name = name;
        e.value = value;
    }
    let header = SetVpRegisters {
        partition_id: partition,
        vp_index: vp,
        ..Default::default()
    };
    // SAFETY: our own page; only VP 0 makes hypercalls, one at a time, and
    // no reference to it outlives this statement.
    let page = unsafe { &mut *INPUT.0.get() };
    if layout::encode_rep(&header, &elements[..registers.len()], page).is_none() {
        return false;
    }
    put_deferred(Deferred::Resume {
        partition,
        vp,
        count: registers.len() as u16,
    });
    true
}

/// Leaves the resume of a VP held by an I/O intercept (its RAX and RIP)
/// for `idle`, which sends it with the halt. A call already waiting is sent
/// first. `false` while hypercalls are not enabled.
pub fn defer_complete_intercept(partition: u64, vp: u32, rax: u64, rip: u64) -> bool {
    if !enabled() {
        return false;
    }
    flush_deferred();
    put_deferred(Deferred::Complete {
        partition,
        vp,
        rax,
        rip,
    });
    true
}

/// Leaves a SignalEventDirect for `idle`, which sends it with the halt (the
/// guest's answer is in its ring already; it is woken as the root goes
/// idle, or at the root's next call or poll). A call already waiting is sent
/// first. Nothing is kept while hypercalls are not enabled (no call could
/// be made either).
pub fn defer_signal_event(input: &hv_abi::layout::SignalEventDirect) {
    if !enabled() {
        return;
    }
    flush_deferred();
    let bytes = input.as_bytes();
    // SAFETY: our own page; only VP 0 makes hypercalls, one at a time, and
    // no reference to it outlives this statement.
    let page = unsafe { &mut *INPUT.0.get() };
    page[..bytes.len()].copy_from_slice(bytes);
    put_deferred(Deferred::Signal);
}

/// Sends a deferred call now (the worker is about to do something other
/// than go idle).
#[inline]
pub fn flush_deferred() {
    let Some(d) = take_deferred() else {
        return;
    };
    let status = call_registers(d.registers(false)) as u16;
    note_deferred(d, status);
}

/// CompleteIntercept at once (not with the next halt): its status.
pub fn complete_intercept_now(partition: u64, vp: u32, rax: u64, rip: u64) -> u16 {
    if !enabled() {
        return hv_abi::hypercall::status::INVALID_HYPERCALL_CODE;
    }
    flush_deferred();
    call_registers(
        Deferred::Complete {
            partition,
            vp,
            rax,
            rip,
        }
        .registers(false),
    ) as u16
}

/// A call whose input is in the input page already or all in registers
/// (RCX, RDX, R8, R9, R10): RAX as it returns (the status in bits 15:0,
/// the reps completed in bits 43:32).
fn call_registers([rcx, rdx, r8, r9, r10]: [u64; 5]) -> u64 {
    let rax: u64;
    // SAFETY: the hypercall page holds `vmcall; ret` (checked in `enable`);
    // the call uses the stack for its return address only; the hypervisor
    // writes the output page (ours, GPA = address) and returns the status in
    // RAX. Every register the TLFS lets it change is declared clobbered, and
    // memory is not `nomem`, so the output page is re-read afterwards.
    unsafe {
        core::arch::asm!(
            "call {page}",
            page = in(reg) code_page(),
            inout("rcx") rcx => _,
            inout("rdx") rdx => _,
            inout("r8") r8 => _,
            inout("r9") r9 => _,
            inout("r10") r10 => _,
            lateout("rax") rax,
            lateout("r11") _,
        )
    };
    rax
}

/// A refused resume fails its VM (`take_deferred_failure`); a refused
/// signal is dropped, as an immediate one would be (a guest that turned
/// its SynIC off misses the kick).
fn note_deferred(d: Deferred, status: u16) {
    if status == hv_abi::hypercall::status::SUCCESS {
        return;
    }
    if let Deferred::Resume { partition, vp, .. } | Deferred::Complete { partition, vp, .. } = d {
        *DEFERRED_FAILED.lock() = Some((partition, vp, status));
        DEFERRED_REFUSED.store(true, Ordering::Release);
    }
}

/// A deferred resume the hypervisor refused, once.
pub fn take_deferred_failure() -> Option<(u64, u32, u16)> {
    if !DEFERRED_REFUSED.load(Ordering::Acquire) {
        return None;
    }
    DEFERRED_REFUSED.store(false, Ordering::Release);
    DEFERRED_FAILED.lock().take()
}

/// Goes idle: a deferred resume is sent and the VP halts in the same exit;
/// otherwise `sti; hlt`. Returns with interrupts off, after an interrupt.
pub fn idle() {
    let Some(d) = take_deferred() else {
        // SAFETY: the IDT handles every vector the root enables (timer,
        // IPI, SINT); STI's shadow covers HLT, so no wake-up is missed.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
        return;
    };
    // The call is in the input page already (`defer_set_registers`,
    // `defer_signal_event`) or all in registers (`defer_complete_intercept`).
    let [rcx, rdx, r8, r9, r10] = d.registers(true);
    let rax: u64;
    // SAFETY: as in `call_registers`, with the hypercall instruction inline so
    // that STI's shadow covers it: no interrupt is taken between enabling
    // interrupts and the halt the call ends in (the hypervisor halts the VP
    // only with interrupts enabled; a pending one ends the halt at once).
    // A continued rep call re-executes the instruction itself.
    unsafe {
        core::arch::asm!(
            // The vendor's instruction, each right after its own STI.
            "test {amd:e}, {amd:e}",
            "jnz 2f",
            "sti",
            "vmcall",
            "jmp 3f",
            "2:",
            "sti",
            "vmmcall",
            "3:",
            "cli",
            amd = in(reg) u32::from(VMMCALL.load(Ordering::Relaxed)),
            inout("rcx") rcx => _,
            inout("rdx") rdx => _,
            inout("r8") r8 => _,
            inout("r9") r9 => _,
            inout("r10") r10 => _,
            lateout("rax") rax,
            lateout("r11") _,
        )
    };
    note_deferred(d, rax as u16);
}
