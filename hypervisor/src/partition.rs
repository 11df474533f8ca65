//! Guest partitions: the table of them, their second-level tables (EPT/NPT)
//! built from pages the root gives up, their VPs' shared state, and the
//! root's management calls (create, initialize, finalize, delete, properties,
//! map/unmap GPA pages, create/delete VP, get/set VP registers, start VP).
//!
//! A guest VP belongs to one LP for its life (`lp`); only that LP touches its
//! VMCS/VMCB. Everyone else talks to it through `GuestVp::shared`: the
//! register context (authoritative while the VP is suspended), the suspend
//! flags, and `running`, which the owning LP sets, under the lock, only after
//! it has checked that the VP may run.
use crate::frame_alloc::PAGE_SIZE;
use crate::page_table::{Perms, SIZE_4K};
use crate::root::RootPartition;
use crate::slat::Slat;
use crate::virt::Caps;
use crate::x86::cpu;
use crate::{lp_state, memory, smp};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use hv_abi::hypercall::status;
use hv_abi::layout::{
    self, AssertVirtualInterrupt, CreatePartitionOutput, CreateVp, FromBytes, GetPartitionProperty,
    GetPartitionPropertyOutput, InstallIntercept, IntoBytes, MapFlags, MapGpaPages,
    MapGpaPagesElement, PartitionId, PartitionVp, RegisterAssoc, RegisterValue,
    SetPartitionProperty, SetVpRegisters, UnmapGpaPages, VpRegisters,
};
use hv_abi::partition::{self as abi, property, reg, VpContext};
use hypervisor_core::lifecycle::{Lifecycle, RunState, Step};
use hypervisor_core::pending::PendingInterrupts;
use spin::Mutex;

struct Inner {
    state: Lifecycle,
    slat: Option<Slat>,
    vps: Vec<Arc<GuestVp>>,
    mapped_pages: u64,
}

pub struct Partition {
    pub id: u64,
    /// The TLB tag (VPID / ASID) of all its VPs.
    pub tag: u16,
    inner: Mutex<Inner>,
    /// Bumped when a mapping goes: each VP flushes before it runs again.
    pub flush_generation: AtomicU64,
    pub weight: AtomicU32,
    pub reserve_percent: AtomicU32,
    pub cap_percent: AtomicU32,
    pub run_tsc: AtomicU64,
    pub exits: AtomicU64,
    /// Its VPs' exits by `hv_abi::ExitReason`.
    pub exits_by_reason: [AtomicU64; hv_abi::ExitReason::COUNT],
    pub intercepts: AtomicU64,
    /// GUEST_OS_ID and HYPERCALL.
    pub hypercall_msrs: hypervisor_core::hypercall_msrs::HypercallMsrs,
    slat_root: AtomicU64,
    /// Exception vectors the root installed intercepts for (bit n: vector n).
    pub exception_intercepts: AtomicU32,
    /// The REFERENCE_TSC MSR (the reference TSC page's GPA and enable bit).
    pub reference_tsc: AtomicU64,
    /// The guest crash MSRs P0-P4 and CTL.
    pub crash: [AtomicU64; 6],
    /// MSRs its VPs were refused (#GP), for the root to report.
    pub gp_msrs: hypervisor_core::msr_report::GpMsrs,
}

impl Partition {
    pub fn slat_root(&self) -> u64 {
        self.slat_root.load(Ordering::Acquire)
    }

    /// The root-RAM address behind guest page `gpa` with its permissions.
    pub fn translate(&self, gpa: u64) -> Option<(u64, Perms)> {
        self.inner.lock().slat.as_ref()?.translate(gpa)
    }

    /// Copies guest memory (a range within mapped pages) into `buf`.
    pub fn read(&self, root: &RootPartition, gpa: u64, buf: &mut [u8]) -> bool {
        self.each_page(gpa, buf.len(), false, |spa, at, n| {
            root.memory().read(spa, &mut buf[at..at + n]).is_ok()
        })
    }

    pub fn write(&self, root: &RootPartition, gpa: u64, bytes: &[u8]) -> bool {
        self.each_page(gpa, bytes.len(), true, |spa, at, n| {
            root.memory().write(spa, &bytes[at..at + n]).is_ok()
        })
    }

    fn each_page(
        &self,
        gpa: u64,
        len: usize,
        write: bool,
        mut f: impl FnMut(u64, usize, usize) -> bool,
    ) -> bool {
        let mut at = 0;
        while at < len {
            let g = gpa + at as u64;
            let n = ((PAGE_SIZE - g % PAGE_SIZE) as usize).min(len - at);
            match self.translate(g) {
                Some((spa, perms)) if perms.write || !write => {
                    if !f(spa, at, n) {
                        return false;
                    }
                }
                _ => return false,
            }
            at += n;
        }
        true
    }

    /// Its CPU controls, for the scheduler.
    pub fn controls(&self) -> hypervisor_core::sched::Controls {
        hypervisor_core::sched::Controls {
            reserve: self.reserve_percent.load(Ordering::Relaxed) as u64,
            limit: self.cap_percent.load(Ordering::Relaxed) as u64,
            weight: self.weight.load(Ordering::Relaxed).max(1) as u64,
        }
    }

    /// The partition's VPs now.
    pub fn vps(&self) -> Vec<Arc<GuestVp>> {
        self.inner.lock().vps.clone()
    }

    pub fn vp(&self, index: u32) -> Option<Arc<GuestVp>> {
        self.inner
            .lock()
            .vps
            .iter()
            .find(|v| v.index == index)
            .cloned()
    }
}

/// What the hypervisor keeps of a guest VP outside its LP.
pub struct VpShared {
    pub ctx: VpContext,
    /// `ctx` is newer than the VMCS/VMCB: load it before the next run.
    pub dirty: bool,
    /// More of it than the general registers, RIP and RFLAGS changed (a
    /// resume after an intercept changes only those: the rest stays as the
    /// VMCS/VMCB has it).
    pub dirty_beyond_registers: bool,
    pub explicit_suspend: bool,
    /// Not started, and sent an INIT by another VP of its partition: a
    /// start-up IPI starts it (`guest::start_up`).
    pub wait_for_sipi: bool,
    /// The VP was reset (the root restarting it): its LP puts its virtual
    /// APIC in the state after reset before it looks at it again, so
    /// nothing of the previous boot (a vector in IRR or ISR, an armed
    /// timer) reaches the next.
    pub apic_reset: bool,
    /// An INIT reached the VP: the same, with the APIC's mode kept.
    pub apic_init: bool,
    pub intercept_suspend: bool,
    /// Halted with interrupts enabled: waits for an interrupt.
    pub halted: bool,
    pub deleted: bool,
    /// The VMCS/VMCB is newer than `ctx` (the VP ran since it was saved).
    pub stale: bool,
    /// Only the general registers, RIP and RFLAGS of `ctx` are current:
    /// an intercept saves just those (all its resume changes); the rest is
    /// saved when the root asks for it (`save_request`).
    pub registers_only: bool,
    /// Someone needs `ctx`: the owning LP saves it at its next look.
    pub save_request: bool,
    /// An I/O intercept's completion (RAX, RIP) that CompleteIntercept left
    /// while the registers were still in the VMCS/VMCB (`stale`): loaded
    /// there at the next entry, or into `ctx` when that is saved first.
    pub completed: Option<(u64, u64)>,
    /// Interrupts sent to the VP (asserted by the root, IPIs and NMIs from
    /// its partition's VPs) that its LP has not yet moved into its virtual
    /// APIC.
    pub pending: PendingInterrupts,
    /// When the VP's last intercept message was posted (TSC): the root's
    /// time serving it is charged from then (`lp_state::root_service_since`).
    pub intercept_posted: u64,
}

impl VpShared {
    /// Suspended (by the root or an intercept) or deleted: it may not run,
    /// whatever else holds.
    pub fn stopped(&self) -> bool {
        self.run_state().stopped()
    }

    /// Runnable: not stopped, and not halted unless an interrupt was sent
    /// (it ends the halt).
    pub fn may_run(&self) -> bool {
        self.run_state().may_run(self.pending.any())
    }

    /// The flags the rules (`hypervisor_core::lifecycle::RunState`) read.
    fn run_state(&self) -> RunState {
        RunState {
            explicit_suspend: self.explicit_suspend,
            intercept_suspend: self.intercept_suspend,
            halted: self.halted,
            deleted: self.deleted,
        }
    }
}

pub struct GuestVp {
    pub index: u32,
    pub lp: u32,
    pub shared: Mutex<VpShared>,
    /// Set by the owning LP while the VP is in guest mode (or about to be).
    pub running: AtomicBool,
    /// The flush generation this VP's TLB reflects.
    pub flushed: AtomicU64,
    /// Set by the owning LP exactly while the VP executes in guest mode.
    pub in_guest: AtomicBool,
    /// Root time (TSC ticks) spent serving this VP's intercepts, not yet
    /// charged to it: its LP adds it to the VP's run time at its next run.
    pub served: AtomicU64,
    /// The VP_ASSIST_PAGE MSR (kept; the page's contents are not used).
    pub vp_assist: AtomicU64,
    /// Its APIC's xAPIC logical destination register, published by its LP
    /// for the IPIs its siblings send in xAPIC logical mode.
    pub xapic_ldr: AtomicU32,
    /// Its synthetic interrupt controller.
    pub synic: crate::synic::SynIc,
    /// Its synthetic timers (MSRs 0x400000B0-B7), expired by its LP.
    pub stimers: Mutex<hypervisor_core::stimer::SynTimers>,
}

impl GuestVp {
    /// Sends the VP interrupt `vector` (fixed, edge): its LP moves it into
    /// the VP's APIC before the next entry. The LP is kicked only when that
    /// is needed to cut a run short or end a sleep, and once per vector.
    /// `false` if the VP is deleted.
    pub fn post_interrupt(&self, vector: u8) -> bool {
        self.post(|s| s.pending.post(vector))
    }

    /// Sends the VP an NMI, as `post_interrupt` does a vector.
    pub fn post_nmi(&self) -> bool {
        self.post(|s| s.pending.post_nmi())
    }

    /// Records an interrupt with `add` (whether it was new) and kicks the
    /// VP's LP if that is needed to deliver it soon.
    fn post(&self, add: impl FnOnce(&VpShared) -> bool) -> bool {
        let s = self.shared.lock();
        if s.deleted {
            return false;
        }
        let new = add(&s);
        let halted = s.halted;
        drop(s);
        // `running`, not only in guest mode: a VP whose LP took its pending
        // interrupts just before this post and is about to enter would
        // otherwise run on without it until its next exit.
        if new && (halted || self.running.load(Ordering::Acquire)) {
            kick(self.lp);
        }
        true
    }
}

/// A new guest VP, with its partition, on its way to its LP.
pub type Placement = (Arc<Partition>, Arc<GuestVp>);

/// Guest VPs waiting for their LP to take them.
pub static LP_INBOX: [Mutex<Vec<Placement>>; lp_state::MAX_LPS] =
    [const { Mutex::new(Vec::new()) }; lp_state::MAX_LPS];

static PARTITIONS: Mutex<[Option<Arc<Partition>>; abi::MAX_PARTITIONS]> =
    Mutex::new([const { None }; abi::MAX_PARTITIONS]);

/// Which root pages belong to a guest: one bit per 4 KiB page of root RAM.
static OWNED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn owned_bit(owned: &mut Vec<u64>, spa: u64) -> (&mut u64, u64) {
    let page = (spa / PAGE_SIZE) as usize;
    if owned.len() <= page / 64 {
        owned.resize(page / 64 + 1, 0);
    }
    (&mut owned[page / 64], 1 << (page % 64))
}

pub fn get(id: u64) -> Option<Arc<Partition>> {
    let slot = (id as usize).checked_sub(1)?;
    PARTITIONS.lock().get(slot)?.clone()
}

use crate::smp::kick;

/// Waits until `vp` is out of guest mode (its LP was kicked).
fn quiesce(vp: &GuestVp) {
    kick(vp.lp);
    let mut wait = LongWait::new(vp, "stop running");
    while vp.running.load(Ordering::Acquire) {
        wait.pause();
    }
}

/// A wait for another LP that should end within microseconds: after a
/// second it is reported (once, in the log) and the LP kicked again every
/// millisecond, so that a lost kick costs a millisecond and a real hang
/// leaves a line saying which VP it waits for.
struct LongWait<'a> {
    vp: &'a GuestVp,
    what: &'static str,
    next_kick: u64,
    told: bool,
}

impl<'a> LongWait<'a> {
    fn new(vp: &'a GuestVp, what: &'static str) -> Self {
        LongWait {
            vp,
            what,
            next_kick: cpu::rdtsc() + crate::time::tsc_hz(),
            told: false,
        }
    }

    fn pause(&mut self) {
        cpu::pause();
        let now = cpu::rdtsc();
        if now < self.next_kick {
            return;
        }
        if !self.told {
            self.told = true;
            log::warn!(
                "waited 1 s for VP {} on LP {} to {} (running {}, in guest {}); kicking it again",
                self.vp.index,
                self.vp.lp,
                self.what,
                self.vp.running.load(Ordering::Relaxed),
                self.vp.in_guest.load(Ordering::Relaxed),
            );
        }
        kick(self.vp.lp);
        self.next_kick = now + crate::time::tsc_hz() / 1000;
    }
}

/// Makes every VP of `p` drop its cached translations before it next
/// executes guest code, and waits until none still runs with old ones (a VP
/// in guest mode is kicked out; it flushes at its next entry). `caller`, a
/// VP handling its own exit, is not waited for: it flushes at re-entry.
/// The root's calls (`caller` None) also wait for VPs in exit handling,
/// which may be copying hypercall output into a page being unmapped.
pub fn flush_tlbs(p: &Partition, vps: &[Arc<GuestVp>], caller: Option<&GuestVp>) {
    let generation = p.flush_generation.fetch_add(1, Ordering::AcqRel) + 1;
    for vp in vps {
        if caller.is_some_and(|c| core::ptr::eq(c, &**vp)) {
            continue;
        }
        if vp.in_guest.load(Ordering::Acquire) {
            kick(vp.lp);
        }
        let busy = |vp: &GuestVp| {
            vp.in_guest.load(Ordering::Acquire)
                || (caller.is_none() && vp.running.load(Ordering::Acquire))
        };
        let mut wait = LongWait::new(vp, "flush its translations");
        while busy(vp) && vp.flushed.load(Ordering::Acquire) < generation {
            wait.pause();
        }
    }
}

/// A root call's outcome: status and, for rep calls, elements completed.
pub struct Outcome {
    pub status: u16,
    pub reps_done: u16,
    /// Bytes of output written into the output buffer.
    pub output_len: usize,
}

fn done(status: u16) -> Outcome {
    rep_result(status, 0)
}

/// The call's input block as its typed layout (a copy of the hypervisor's
/// copy). INVALID_PARAMETER when the block is shorter, which a checked call's
/// never is: the dispatch table gives each block its layout's size.
pub fn input_as<H: FromBytes>(input: &[u8]) -> Result<H, u16> {
    layout::header(input).ok_or(status::INVALID_PARAMETER)
}

pub fn partition_arg(id: u64) -> Result<Arc<Partition>, u16> {
    get(id).ok_or(status::INVALID_PARTITION_ID)
}

pub fn vp_arg(p: &Partition, index: u32) -> Result<Arc<GuestVp>, u16> {
    p.vp(index).ok_or(status::INVALID_VP_INDEX)
}

/// The partition named by a call whose input is a [`PartitionId`].
fn partition_id_arg(input: &[u8]) -> Result<Arc<Partition>, u16> {
    partition_arg(input_as::<PartitionId>(input)?.partition_id)
}

/// Writes a call's output block; its length.
fn output_as<T: IntoBytes + layout::Immutable>(output: &mut [u8], t: &T) -> Result<usize, u16> {
    t.write_to_prefix(output)
        .map_err(|_| status::INVALID_PARAMETER)?;
    Ok(size_of::<T>())
}

/// Most rep elements handled per entry: a long call returns to the caller
/// with its start index advanced and is re-entered (TLFS rep continuation).
pub const REPS_PER_ENTRY: u16 = 128;

/// Runs one management call from the root. `input` is a copy of the input
/// block; `output` receives the output block.
pub fn call(
    root: &RootPartition,
    caps: &Caps,
    code: u16,
    reps: (u16, u16),
    input: &[u8],
    output: &mut [u8],
) -> Outcome {
    use abi::code::*;
    let r = match code {
        CREATE_PARTITION => create(caps, output),
        INITIALIZE_PARTITION => partition_id_arg(input).and_then(|p| initialize(&p, caps)),
        FINALIZE_PARTITION => partition_id_arg(input).map(|p| finalize(&p)),
        DELETE_PARTITION => partition_id_arg(input).map(|p| delete(&p)),
        GET_PARTITION_PROPERTY => get_property(input, output),
        SET_PARTITION_PROPERTY => set_property(input),
        MAP_GPA_PAGES => return map_pages(root, input, reps),
        UNMAP_GPA_PAGES => return unmap_pages(input, reps),
        CREATE_VP => create_vp(input),
        DELETE_VP => delete_vp(input),
        GET_VP_REGISTERS => return get_registers(input, output, reps),
        SET_VP_REGISTERS => return set_registers(input, reps),
        START_VIRTUAL_PROCESSOR => start_vp(input),
        ASSERT_VIRTUAL_INTERRUPT => assert_interrupt(input),
        INSTALL_INTERCEPT => install_intercept(input),
        // The root's VPs share one TLB tag and never ask: not offered to it.
        FLUSH_VIRTUAL_ADDRESS_SPACE | FLUSH_VIRTUAL_ADDRESS_LIST => Err(status::ACCESS_DENIED),
        _ => Err(status::INVALID_HYPERCALL_CODE),
    };
    match r {
        Ok(n) => Outcome {
            status: status::SUCCESS,
            reps_done: 0,
            output_len: n,
        },
        Err(s) => done(s),
    }
}

fn create(caps: &Caps, output: &mut [u8]) -> Result<usize, u16> {
    let mut table = PARTITIONS.lock();
    let slot = table
        .iter()
        .position(Option::is_none)
        .ok_or(status::INSUFFICIENT_MEMORY)?;
    if matches!(caps, Caps::None) {
        return Err(status::OPERATION_DENIED);
    }
    let id = slot as u64 + 1;
    table[slot] = Some(Arc::new(Partition {
        id,
        // Tag 1 is the root's.
        tag: slot as u16 + 2,
        inner: Mutex::new(Inner {
            state: Lifecycle::Created,
            slat: None,
            vps: Vec::new(),
            mapped_pages: 0,
        }),
        flush_generation: AtomicU64::new(0),
        weight: AtomicU32::new(property::DEFAULT_WEIGHT as u32),
        reserve_percent: AtomicU32::new(0),
        cap_percent: AtomicU32::new(100),
        run_tsc: AtomicU64::new(0),
        exits: AtomicU64::new(0),
        exits_by_reason: [const { AtomicU64::new(0) }; hv_abi::ExitReason::COUNT],
        intercepts: AtomicU64::new(0),
        hypercall_msrs: hypervisor_core::hypercall_msrs::HypercallMsrs::new(),
        slat_root: AtomicU64::new(0),
        exception_intercepts: AtomicU32::new(0),
        reference_tsc: AtomicU64::new(0),
        crash: [const { AtomicU64::new(0) }; 6],
        gp_msrs: hypervisor_core::msr_report::GpMsrs::new(),
    }));
    output_as(output, &CreatePartitionOutput { partition_id: id })
}

fn initialize(p: &Partition, caps: &Caps) -> Result<usize, u16> {
    let mut inner = p.inner.lock();
    let next = inner.state.after(Step::Initialize)?;
    // 4 KiB leaves only: guest pages come one by one from anywhere in root RAM.
    let slat = Slat::new(caps, SIZE_4K).ok_or(status::INSUFFICIENT_MEMORY)?;
    p.slat_root.store(slat.root(), Ordering::Release);
    inner.slat = Some(slat);
    inner.state = next;
    Ok(0)
}

/// Stops every VP for good and waits until none is in guest mode.
fn finalize(p: &Partition) -> usize {
    let vps = {
        let mut inner = p.inner.lock();
        // Allowed from every stage.
        if let Ok(next) = inner.state.after(Step::Finalize) {
            inner.state = next;
        }
        inner.vps.clone()
    };
    for vp in &vps {
        vp.shared.lock().deleted = true;
        lp_state::get(vp.lp).add_chore();
        quiesce(vp);
    }
    0
}

/// Finalizes, returns every page to the root and every table to the
/// hypervisor, and frees the slot. The VPs' VMCS/VMCB go back when their LPs
/// next look (they never run again).
fn delete(p: &Arc<Partition>) -> usize {
    finalize(p);
    let slat = {
        let mut inner = p.inner.lock();
        for vp in inner.vps.drain(..) {
            lp_state::get(vp.lp)
                .guest_vps
                .fetch_sub(1, Ordering::Relaxed);
        }
        inner.mapped_pages = 0;
        inner.slat.take()
    };
    if let Some(slat) = slat {
        let (pages, tables) = slat.contents();
        let mut owned = OWNED.lock();
        for (_, spa) in pages {
            let (word, bit) = owned_bit(&mut owned, spa);
            *word &= !bit;
        }
        drop(owned);
        for t in tables {
            memory::free_pages(t, 1);
        }
    }
    p.slat_root.store(0, Ordering::Release);
    PARTITIONS.lock()[(p.id - 1) as usize] = None;
    0
}

/// The read-only properties: what the hypervisor counts and keeps for the
/// partition. `None`: not one of them.
fn read_only_property(p: &Partition, code: u32) -> Option<u64> {
    let at = |base: u32, n: usize| (code.wrapping_sub(base) as usize) < n;
    Some(match code {
        property::RUN_TIME => {
            let hz = crate::time::tsc_hz().max(1) as u128;
            (p.run_tsc.load(Ordering::Relaxed) as u128 * 10_000_000 / hz) as u64
        }
        property::EXITS => p.exits.load(Ordering::Relaxed),
        property::INTERCEPTS => p.intercepts.load(Ordering::Relaxed),
        property::MAPPED_BYTES => p.inner.lock().mapped_pages * PAGE_SIZE,
        c if at(property::GP_MSRS, property::GP_MSRS_KEPT as usize) => {
            p.gp_msrs.raw((c - property::GP_MSRS) as usize)
        }
        c if at(property::EXITS_BY_REASON, p.exits_by_reason.len()) => {
            p.exits_by_reason[(c - property::EXITS_BY_REASON) as usize].load(Ordering::Relaxed)
        }
        c if at(property::GUEST_CRASH, p.crash.len()) => {
            p.crash[(c - property::GUEST_CRASH) as usize].load(Ordering::Relaxed)
        }
        _ => return None,
    })
}

fn get_property(input: &[u8], output: &mut [u8]) -> Result<usize, u16> {
    let h: GetPartitionProperty = input_as(input)?;
    let p = partition_arg(h.partition_id)?;
    let v = match h.property_code {
        property::CPU_RESERVE => p.reserve_percent.load(Ordering::Relaxed) as u64,
        property::CPU_CAP => p.cap_percent.load(Ordering::Relaxed) as u64,
        property::CPU_WEIGHT => p.weight.load(Ordering::Relaxed) as u64,
        c => read_only_property(&p, c).ok_or(status::UNKNOWN_PROPERTY)?,
    };
    output_as(output, &GetPartitionPropertyOutput { property_value: v })
}

fn set_property(input: &[u8]) -> Result<usize, u16> {
    let h: SetPartitionProperty = input_as(input)?;
    let p = partition_arg(h.partition_id)?;
    let v = h.property_value;
    let (cell, range) = match h.property_code {
        property::CPU_RESERVE => (&p.reserve_percent, 0..=100),
        property::CPU_CAP => (&p.cap_percent, 1..=100),
        property::CPU_WEIGHT => (&p.weight, 1..=10_000),
        c if read_only_property(&p, c).is_some() => return Err(status::OPERATION_DENIED),
        _ => return Err(status::UNKNOWN_PROPERTY),
    };
    if !range.contains(&v) {
        return Err(status::PROPERTY_VALUE_OUT_OF_RANGE);
    }
    cell.store(v as u32, Ordering::Relaxed);
    Ok(0)
}

fn perms(flags: MapFlags) -> Option<Perms> {
    if flags.reserved() != 0 || !flags.readable() {
        return None;
    }
    Some(Perms {
        write: flags.writable(),
        execute: flags.kernel_executable() || flags.user_executable(),
        uncached: false,
    })
}

/// The reps of `[start, count)` this entry handles.
fn rep_window(reps: (u16, u16)) -> core::ops::Range<u16> {
    let (start, count) = reps;
    start..count.min(start.saturating_add(REPS_PER_ENTRY))
}

fn rep_result(status: u16, done: u16) -> Outcome {
    Outcome {
        status,
        reps_done: done,
        output_len: 0,
    }
}

fn map_pages(root: &RootPartition, input: &[u8], reps: (u16, u16)) -> Outcome {
    let h = match input_as::<MapGpaPages>(input) {
        Ok(h) => h,
        Err(s) => return done(s),
    };
    let p = match partition_arg(h.partition_id) {
        Ok(p) => p,
        Err(s) => return done(s),
    };
    let target = h.target_gpa_page;
    let Some(perms) = perms(h.map_flags) else {
        return done(status::INVALID_PARAMETER);
    };
    let mut inner = p.inner.lock();
    if let Err(s) = inner.state.after(Step::AddResources) {
        return rep_result(s, reps.0);
    }
    let window = rep_window(reps);
    let mut owned = OWNED.lock();
    for i in window.clone() {
        let Some(element) = layout::element::<MapGpaPages, MapGpaPagesElement>(input, i) else {
            return rep_result(status::INVALID_PARAMETER, i);
        };
        let source = element.source_gpa_page;
        let gpa_page = target.checked_add(i as u64);
        let (Some(spa), Some(gpa)) = (
            source.checked_mul(PAGE_SIZE),
            gpa_page.and_then(|g| g.checked_mul(PAGE_SIZE)),
        ) else {
            return rep_result(status::INVALID_PARAMETER, i);
        };
        if gpa >= abi::MAX_GPA || !root.owns(spa, PAGE_SIZE) {
            return rep_result(status::INVALID_PARAMETER, i);
        }
        let (word, bit) = owned_bit(&mut owned, spa);
        if *word & bit != 0 {
            // Already another guest's (or this one's, at another GPA).
            return rep_result(status::OBJECT_IN_USE, i);
        }
        let owner_word = word;
        let Some(slat) = inner.slat.as_mut() else {
            return rep_result(status::INVALID_PARTITION_STATE, i);
        };
        if !slat.map(gpa, spa, perms) {
            // Mapped already, or no memory for a table.
            let s = if slat.translate(gpa).is_some() {
                status::INVALID_PARAMETER
            } else {
                status::INSUFFICIENT_MEMORY
            };
            return rep_result(s, i);
        }
        *owner_word |= bit;
        inner.mapped_pages += 1;
    }
    rep_result(status::SUCCESS, window.end)
}

fn unmap_pages(input: &[u8], reps: (u16, u16)) -> Outcome {
    let h = match input_as::<UnmapGpaPages>(input) {
        Ok(h) => h,
        Err(s) => return done(s),
    };
    let p = match partition_arg(h.partition_id) {
        Ok(p) => p,
        Err(s) => return done(s),
    };
    let target = h.target_gpa_page;
    let window = rep_window(reps);
    // The pages stay owned by this partition until no VP can reach them
    // through a cached translation: only then may the root map them again.
    let mut freed = Vec::new();
    let mut outcome = rep_result(status::SUCCESS, window.end);
    let vps = {
        let mut inner = p.inner.lock();
        for i in window.clone() {
            let Some(gpa) = target
                .checked_add(i as u64)
                .and_then(|g| g.checked_mul(PAGE_SIZE))
                .filter(|&g| g < abi::MAX_GPA)
            else {
                outcome = rep_result(status::INVALID_PARAMETER, i);
                break;
            };
            let Some(slat) = inner.slat.as_mut() else {
                outcome = rep_result(status::INVALID_PARTITION_STATE, i);
                break;
            };
            // Unmapping what is not mapped is not an error (TLFS).
            if let Some(spa) = slat.unmap(gpa) {
                freed.push(spa);
                inner.mapped_pages -= 1;
            }
        }
        inner.vps.clone()
    };
    flush_tlbs(&p, &vps, None);
    let mut owned = OWNED.lock();
    for spa in freed {
        let (word, bit) = owned_bit(&mut owned, spa);
        *word &= !bit;
    }
    outcome
}

fn create_vp(input: &[u8]) -> Result<usize, u16> {
    let h: CreateVp = input_as(input)?;
    let p = partition_arg(h.partition_id)?;
    let index = h.vp_index;
    if index >= abi::MAX_VPS {
        return Err(status::INVALID_VP_INDEX);
    }
    let mut inner = p.inner.lock();
    inner.state.after(Step::AddResources)?;
    if inner.vps.iter().any(|v| v.index == index) {
        return Err(status::INVALID_VP_INDEX);
    }
    let lps = smp::ONLINE
        .load(Ordering::Acquire)
        .clamp(1, lp_state::MAX_LPS as u32);
    let lp = hypervisor_core::sched::place_vp(
        lps,
        |l| lp_state::get(l).guest_vps.load(Ordering::Relaxed),
        index,
    );
    lp_state::get(lp).guest_vps.fetch_add(1, Ordering::Relaxed);
    let vp = Arc::new(GuestVp {
        index,
        lp,
        shared: Mutex::new(VpShared {
            ctx: VpContext::reset(),
            dirty: true,
            dirty_beyond_registers: true,
            explicit_suspend: true,
            wait_for_sipi: false,
            apic_reset: false,
            apic_init: false,
            intercept_suspend: false,
            halted: false,
            deleted: false,
            stale: false,
            registers_only: false,
            completed: None,
            save_request: false,
            pending: PendingInterrupts::new(),
            intercept_posted: 0,
        }),
        running: AtomicBool::new(false),
        flushed: AtomicU64::new(p.flush_generation.load(Ordering::Acquire)),
        in_guest: AtomicBool::new(false),
        served: AtomicU64::new(0),
        vp_assist: AtomicU64::new(0),
        xapic_ldr: AtomicU32::new(0),
        synic: crate::synic::SynIc::new(),
        stimers: Mutex::new(hypervisor_core::stimer::SynTimers::default()),
    });
    inner.vps.push(vp.clone());
    drop(inner);
    let mut inbox = LP_INBOX[lp as usize].lock();
    inbox.push((p.clone(), vp));
    lp_state::get(lp)
        .inbox_count
        .store(inbox.len() as u32, Ordering::Release);
    drop(inbox);
    kick(lp);
    Ok(0)
}

fn delete_vp(input: &[u8]) -> Result<usize, u16> {
    let h: PartitionVp = input_as(input)?;
    let p = partition_arg(h.partition_id)?;
    let vp = vp_arg(&p, h.vp_index)?;
    vp.shared.lock().deleted = true;
    lp_state::get(vp.lp).add_chore();
    quiesce(&vp);
    p.inner.lock().vps.retain(|v| v.index != vp.index);
    lp_state::get(vp.lp)
        .guest_vps
        .fetch_sub(1, Ordering::Relaxed);
    Ok(0)
}

fn start_vp(input: &[u8]) -> Result<usize, u16> {
    let h: PartitionVp = input_as(input)?;
    let p = partition_arg(h.partition_id)?;
    let vp = vp_arg(&p, h.vp_index)?;
    let mut s = vp.shared.lock();
    if !s.explicit_suspend || s.deleted {
        return Err(status::INVALID_VP_STATE);
    }
    s.explicit_suspend = false;
    drop(s);
    kick(vp.lp);
    Ok(0)
}

/// Routes an event of a guest to the root. I/O ports: every one is
/// intercepted already (guests own no port), so this only checks the
/// request. Exceptions: the vector exits and becomes an exception intercept
/// message. MSR and CPUID intercepts are not offered yet.
fn install_intercept(input: &[u8]) -> Result<usize, u16> {
    use abi::intercept::*;
    let h: InstallIntercept = input_as(input)?;
    let p = partition_arg(h.partition_id)?;
    let (access, kind, parameter) = (h.access_type_mask, h.intercept_type, h.intercept_parameter);
    if access == 0 || access & !(ACCESS_READ | ACCESS_WRITE | ACCESS_EXECUTE) != 0 {
        return Err(status::INVALID_PARAMETER);
    }
    match kind {
        X64_IO_PORT if parameter <= 0xFFFF && access & ACCESS_EXECUTE == 0 => Ok(0),
        // NMIs and machine checks stay the hypervisor's.
        X64_EXCEPTION if parameter < 32 && parameter != 2 && parameter != 18 => {
            p.exception_intercepts
                .fetch_or(1 << parameter, Ordering::AcqRel);
            for vp in p.vps() {
                kick(vp.lp);
            }
            Ok(0)
        }
        _ => Err(status::INVALID_PARAMETER),
    }
}

/// A fixed, edge-triggered interrupt for one VP (physical destination =
/// VP index): pending until the VP can take it; it ends a halt.
fn assert_interrupt(input: &[u8]) -> Result<usize, u16> {
    let h: AssertVirtualInterrupt = input_as(input)?;
    let p = partition_arg(h.partition_id)?;
    let (control, vector) = (h.control, h.vector);
    // Fixed, edge, physical destination, no reserved bit, VTL 0; vectors
    // 0-15 are exceptions.
    let offered = control.interrupt_type() == 0
        && !control.level_triggered()
        && !control.logical_destination()
        && control.reserved() == 0;
    if !offered || h.target_vtl != 0 || !(16..=255).contains(&vector) {
        return Err(status::INVALID_PARAMETER);
    }
    let vp = u32::try_from(h.destination)
        .ok()
        .and_then(|d| p.vp(d))
        .ok_or(status::INVALID_VP_INDEX)?;
    if !vp.post_interrupt(vector as u8) {
        return Err(status::INVALID_VP_STATE);
    }
    Ok(0)
}

fn registers_target(input: &[u8]) -> Result<Arc<GuestVp>, u16> {
    let h: VpRegisters = input_as(input)?;
    let p = partition_arg(h.partition_id)?;
    let vp = vp_arg(&p, h.vp_index)?;
    // VTL 0 only.
    if h.input_vtl != 0 {
        return Err(status::INVALID_PARAMETER);
    }
    Ok(vp)
}

/// Not a status: the call must be made again once the VP's LP has looked
/// (the instruction is re-executed, with the rep start index advanced).
pub const RETRY: u16 = 0xFFFF;

/// The VP's context may be read or written: it is suspended, out of guest
/// mode, and its context saved (`beyond_registers`: all of it, not only the
/// general registers, RIP and RFLAGS). Otherwise INVALID_VP_STATE, or RETRY
/// while its LP saves the context.
fn quiesced(vp: &GuestVp, beyond_registers: bool) -> Result<(), u16> {
    if !vp.shared.lock().stopped() {
        return Err(status::INVALID_VP_STATE);
    }
    quiesce(vp);
    let mut s = vp.shared.lock();
    if s.stale || (beyond_registers && s.registers_only) {
        s.save_request = true;
        drop(s);
        lp_state::get(vp.lp).add_chore();
        kick(vp.lp);
        return Err(RETRY);
    }
    Ok(())
}

/// A register an intercept's resume sets: one saved with the general
/// registers (`VpShared::registers_only`).
fn general(name: u32) -> bool {
    matches!(name, reg::RAX..=reg::R15 | reg::RIP | reg::RFLAGS)
}

/// How much of a VP's context one Get/SetVpRegisters call has waited for.
#[derive(Default)]
struct Waited {
    registers: bool,
    all: bool,
}

impl Waited {
    /// The VP is quiesced with register `name` saved (`quiesced`).
    fn for_register(&mut self, vp: &GuestVp, name: u32) -> Result<(), u16> {
        let beyond = !general(name);
        if self.all || (self.registers && !beyond) {
            return Ok(());
        }
        quiesced(vp, beyond)?;
        self.registers = true;
        self.all |= beyond;
        Ok(())
    }
}

fn get_registers(input: &[u8], output: &mut [u8], reps: (u16, u16)) -> Outcome {
    let vp = match registers_target(input) {
        Ok(v) => v,
        Err(s) => return done(s),
    };
    let window = rep_window(reps);
    let mut waited = Waited::default();
    let value = |name| match name {
        reg::EXPLICIT_SUSPEND => Ok(vp.shared.lock().explicit_suspend as u128),
        reg::INTERCEPT_SUSPEND => Ok(vp.shared.lock().intercept_suspend as u128),
        reg::INTERNAL_ACTIVITY_STATE => {
            let s = vp.shared.lock();
            Ok(s.wait_for_sipi as u128 | (s.halted as u128) << 1)
        }
        reg::STIMER0_CONFIG..=reg::STIMER3_COUNT => vp
            .stimers
            .lock()
            .read(hypervisor_core::stimer::CONFIG0 + (name - reg::STIMER0_CONFIG))
            .map(u128::from)
            .ok_or(status::INVALID_PARAMETER),
        _ => {
            waited.for_register(&vp, name)?;
            vp.shared
                .lock()
                .ctx
                .get(name)
                .map_err(|_| status::INVALID_PARAMETER)
        }
    };
    if let Err((s, i)) =
        hypervisor_core::hypercall::get_vp_registers(input, output, window.clone(), value)
    {
        return rep_result(s, i);
    }
    Outcome {
        status: status::SUCCESS,
        reps_done: window.end,
        output_len: size_of::<RegisterValue>() * window.end as usize,
    }
}

fn set_registers(input: &[u8], reps: (u16, u16)) -> Outcome {
    let vp = match registers_target(input) {
        Ok(v) => v,
        Err(s) => return done(s),
    };
    let window = rep_window(reps);
    let mut waited = Waited::default();
    // Suspend flags to clear, with their rep: cleared after the window, so
    // that the registers written in the same call cannot race a VP that
    // already runs again.
    let mut clears = Clears::default();
    let mut outcome = rep_result(status::SUCCESS, window.end);
    for i in window {
        match set_register(&vp, input, i, &mut waited, &mut clears) {
            Ok(()) => {}
            Err(s) => {
                // A retry starts again at the first deferred clear, so none
                // is lost; after an error, the reps before it stand.
                let resume_at = match (s, clears.first) {
                    (RETRY, Some(first)) => {
                        clears = Clears::default();
                        first
                    }
                    _ => i,
                };
                outcome = rep_result(s, resume_at);
                break;
            }
        }
    }
    if clears.first.is_some() {
        let mut s = vp.shared.lock();
        if clears.explicit {
            s.explicit_suspend = false;
        }
        if clears.intercept {
            end_intercept_suspend(&vp, &mut s);
        }
        drop(s);
        kick(vp.lp);
    }
    outcome
}

/// Clears the VP's InterceptSuspend: the root's time since the intercept
/// was posted (or since it last resumed a VP, whichever is later) served it.
fn end_intercept_suspend(vp: &GuestVp, s: &mut VpShared) {
    if s.intercept_suspend {
        s.intercept_suspend = false;
        let served = lp_state::root_service_since(s.intercept_posted);
        vp.served.fetch_add(served, Ordering::Relaxed);
    }
}

/// CompleteIntercept (ours, root-only, `hv_abi::hypercall`): the VP held by
/// an intercept goes on with `rax` and `rip`, as after a SetVpRegisters of
/// RAX, RIP and InterceptSuspend 0. INVALID_VP_STATE when no intercept
/// holds it. An I/O intercept leaves the registers in the VMCS/VMCB
/// (`stale`): the two go there at the VP's next entry (`completed`), not
/// through a saved and reloaded context.
pub fn complete_intercept(partition_id: u64, vp_index: u64, rax: u64, rip: u64) -> u16 {
    let done = u32::try_from(vp_index)
        .map_err(|_| status::INVALID_VP_INDEX)
        .and_then(|index| vp_arg(&*partition_arg(partition_id)?, index))
        .and_then(|vp| {
            let mut s = vp.shared.lock();
            // Its LP sets `running` under this lock: a VP not running now
            // stays out until it is released. One still leaving guest mode
            // after its intercept is waited for.
            if s.intercept_suspend && vp.running.load(Ordering::Acquire) {
                drop(s);
                quiesce(&vp);
                s = vp.shared.lock();
            }
            if !s.intercept_suspend {
                return Err(status::INVALID_VP_STATE);
            }
            if s.stale {
                s.completed = Some((rax, rip));
            } else {
                s.ctx.gpr[0] = rax;
                s.ctx.rip = rip;
                s.dirty = true;
            }
            s.halted = false;
            end_intercept_suspend(&vp, &mut s);
            drop(s);
            kick(vp.lp);
            Ok(())
        });
    done.err().unwrap_or(status::SUCCESS)
}

/// The suspend flags a SetVpRegisters call clears, after its window; the
/// first rep that asked for one.
#[derive(Default)]
struct Clears {
    first: Option<u16>,
    explicit: bool,
    intercept: bool,
}

/// Rep `i` of a SetVpRegisters call.
fn set_register(
    vp: &GuestVp,
    input: &[u8],
    i: u16,
    waited: &mut Waited,
    clears: &mut Clears,
) -> Result<(), u16> {
    let RegisterAssoc { name, value, .. } =
        layout::element::<SetVpRegisters, _>(input, i).ok_or(status::INVALID_PARAMETER)?;
    match name {
        reg::EXPLICIT_SUSPEND | reg::INTERCEPT_SUSPEND => {
            if value > 1 {
                return Err(status::INVALID_REGISTER_VALUE);
            }
            if value == 0 {
                clears.first.get_or_insert(i);
                if name == reg::EXPLICIT_SUSPEND {
                    clears.explicit = true;
                } else {
                    clears.intercept = true;
                }
                return Ok(());
            }
            let mut s = vp.shared.lock();
            if name == reg::EXPLICIT_SUSPEND {
                s.explicit_suspend = true;
            } else {
                s.intercept_suspend = true;
            }
            drop(s);
            // Suspension takes effect at once: the VP leaves guest mode.
            quiesce(vp);
            Ok(())
        }
        // The root (re)starting the VP: its SynIC, synthetic timers and APIC
        // as after a reset.
        reg::SCONTROL => {
            if value != 0 {
                return Err(status::INVALID_REGISTER_VALUE);
            }
            vp.synic.reset();
            vp.stimers.lock().reset();
            vp.shared.lock().apic_reset = true;
            Ok(())
        }
        _ => {
            waited.for_register(vp, name)?;
            let mut s = vp.shared.lock();
            match s.ctx.set(name, value) {
                // New state: a VP that halted waits no longer.
                Ok(()) => {
                    s.dirty = true;
                    if !general(name) {
                        s.dirty_beyond_registers = true;
                    }
                    s.halted = false;
                    Ok(())
                }
                Err(abi::RegisterError::Unknown) => Err(status::INVALID_PARAMETER),
                Err(abi::RegisterError::BadValue) => Err(status::INVALID_REGISTER_VALUE),
            }
        }
    }
}
