//! One logical processor's life: its root VP and the guest VPs placed on it,
//! and the scheduler that shares it among them.
//!
//! Policy (docs/scheduler.md): the root VP runs whenever it is runnable (it
//! sleeps when idle, and owns the devices: its latency is everyone's). A
//! guest VP below its reserve for the current 100 ms window runs next; then
//! the guest VP with the least virtual runtime (run time divided by its
//! weight), for at most one time slice. A guest VP that used its limit
//! (percent of this LP) in the window is not runnable until the next. A
//! halted VP is not runnable; with nothing runnable the LP sleeps.
use crate::guest;
use crate::lp_state;
use crate::partition::{self, GuestVp, Partition};
use crate::root::{self, RootPartition};
use crate::root_exits;
use crate::vcpu::lazy::{Barriers, DebugState};
use crate::vcpu::xstate::XState;
use crate::vcpu::{self, Vcpu};
use crate::virt::Caps;
use crate::x86::{apic, cpu, idt};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use hv_abi::synic::{kind, INTERCEPT_SINT};
use hypervisor_core::host_timer::OneShot;
use hypervisor_core::vapic::VirtualApic;
use hypervisor_core::{sched, stimer};

const WINDOW_US: u64 = 100_000;
/// The longest an idle LP sleeps without a deadline: it looks again then
/// (nothing should need it, as every wake-up is an interrupt).
const IDLE_RECHECK_US: u64 = 1_000_000;
/// A root VP that takes interrupts and has not run for this long is stuck
/// (its own idle tick wakes it ten times a second): said once in the log,
/// with what would wake it.
const ROOT_STARVED_US: u64 = 5_000_000;

struct Local {
    part: Arc<Partition>,
    vp: Arc<GuestVp>,
    vcpu: Option<Vcpu>,
    xstate: Option<XState>,
    /// Its standing with the scheduler (virtual runtime, use of the window).
    account: sched::Account,
    /// The exception intercepts loaded into the VMCS/VMCB.
    exceptions: u32,
    /// The VP's x2APIC (its timer, IPIs, EOI), kept by its LP.
    vapic: VirtualApic,
    /// Its debug registers and TSC_AUX while other VPs use the LP.
    debug: DebugState,
    /// The "no EOI required" bit is set in its VP assist page for the
    /// interrupt in service (TLFS EOI assist): looked at after its next
    /// exit (`end_eoi_assist`).
    eoi_assist: bool,
    /// When its next synthetic timer is due (TSC), as of the LP's look
    /// before its pick: the entry that follows uses it.
    timer_due: Option<u64>,
}

impl sched::Candidate for Local {
    fn account(&mut self) -> &mut sched::Account {
        &mut self.account
    }

    fn controls(&self) -> sched::Controls {
        self.part.controls()
    }

    /// Not suspended or deleted, and not halted unless an interrupt for it
    /// waits (asserted, an IPI, its timer).
    fn runnable(&mut self, now: u64) -> bool {
        let mut s = self.vp.shared.lock();
        Self::may_run_with(&mut s, &mut self.vapic, now)
    }
}

impl Local {
    /// The VP's assist page, if it has one enabled.
    fn assist_page(&self) -> Option<u64> {
        let a = self.vp.vp_assist.load(Ordering::Relaxed);
        (a & 1 != 0).then_some(a & !0xFFF)
    }

    /// Before an entry: with one interrupt in service and nothing else
    /// waiting, tells the guest (the assist page's `apic_assist` bit 0) that
    /// it need not write EOI for it. Linux's EOI then takes the bit instead
    /// of exiting.
    fn offer_eoi_assist(&mut self, root: &RootPartition) {
        if self.eoi_assist || self.vapic.lazy_eoi_candidate().is_none() {
            return;
        }
        if let Some(gpa) = self.assist_page() {
            self.eoi_assist = self.part.write(root, gpa, &1u32.to_le_bytes());
        }
    }

    /// After an exit (before anything reads or changes the APIC): a bit
    /// the guest took is its EOI; one it left is taken back, so its next
    /// EOI is a real one (another interrupt may be in service by then).
    fn end_eoi_assist(&mut self, root: &RootPartition) {
        self.eoi_assist = false;
        let Some(gpa) = self.assist_page() else {
            return;
        };
        let mut word = [0u8; 4];
        if !self.part.read(root, gpa, &mut word) {
            return;
        }
        if word[0] & 1 == 0 {
            self.vapic.lazy_eoi();
        } else {
            word[0] &= !1;
            let _ = self.part.write(root, gpa, &word);
        }
    }

    /// Expires the VP's synthetic timers that are due: a direct-mode
    /// vector goes into its APIC, a message into its SynIC (whose SINT
    /// interrupt then reaches the VP as any other). Returns when the next
    /// one is due (TSC), if one is armed.
    fn expire_timers(&mut self, root: &RootPartition) -> Option<u64> {
        // Most VPs arm none: nothing more than this look then.
        self.vp.stimers.lock().next_due()?;
        self.expire_armed_timers(root)
    }

    /// `expire_timers` for a VP that had a timer armed at the look.
    #[inline(never)]
    fn expire_armed_timers(&mut self, root: &RootPartition) -> Option<u64> {
        let mut due = [None; stimer::TIMERS];
        let reference = crate::time::reference();
        let next = {
            let mut timers = self.vp.stimers.lock();
            let first = timers.next_due()?;
            let now = reference.at(cpu::rdtsc());
            if first <= now {
                let mut n = 0;
                timers.tick(now, |e| {
                    if let Some(slot) = due.get_mut(n) {
                        *slot = Some(e);
                        n += 1;
                    }
                });
            }
            timers.next_due()
        };
        for expiry in due.into_iter().flatten() {
            match expiry {
                stimer::Expiry::Vector(v) => self.vapic.request(v),
                stimer::Expiry::Message {
                    sint,
                    index,
                    expiration,
                    delivery,
                } => crate::ports::post_timer_expired(
                    root,
                    &self.part,
                    &self.vp,
                    sint,
                    index,
                    (expiration, delivery),
                ),
            }
        }
        next.map(|d| reference.tsc_at(d))
    }

    /// As `runnable`, with the VP's shared state already locked: a halted
    /// VP also runs for an interrupt its own APIC has (its timer). A reset
    /// VP's APIC is reset first.
    fn may_run_with(s: &mut partition::VpShared, vapic: &mut VirtualApic, now: u64) -> bool {
        if s.apic_reset || s.apic_init {
            // What was sent to the previous boot goes with its APIC.
            s.pending.take_into(vapic);
            match core::mem::take(&mut s.apic_reset) {
                true => *vapic = VirtualApic::new(vapic.id()),
                false => vapic.init_reset(),
            }
            s.apic_init = false;
        }
        s.may_run()
            || (!s.stopped() && {
                vapic.tick(now);
                vapic.deliverable().is_some() || vapic.nmi_pending()
            })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Active {
    None,
    Root,
    Guest(u64, u32),
}

enum Choice {
    Root,
    Guest(usize),
    /// Nothing may run: the LP sleeps until an interrupt, at the latest
    /// the host timer at this deadline (TSC), the guests' next timer.
    Idle(Option<u64>),
}

/// Runs LP `lp` forever: its root VP `lp` and its guest VPs.
pub fn run(root: &RootPartition, caps: &Caps, lp: u32) -> ! {
    if let Err(e) = vcpu::enable(caps) {
        root::stop(lp, e);
    }
    let start = match root.start_state(lp) {
        Some(s) => s,
        None => root::stop(lp, "no start state"),
    };
    let mut root_vcpu = Vcpu::new(caps, &start).unwrap_or_else(|e| root::stop(lp, e));
    // The host timer, one-shot, armed for the next deadline: the root's
    // virtual timer, a slice's end (SVM), the guests' timers while idle.
    let timer_rate = apic::start_oneshot_timer(idt::HOST_TIMER_VECTOR as u8);
    let mut host_timer = OneShot::new(timer_rate, crate::time::tsc_hz() / 1000);
    let mut vapic = VirtualApic::new(lp);
    let root_xstate = XState::new().unwrap_or_else(|e| root::stop(lp, e));
    let mut root_debug = DebugState::initial(0, true);
    // The LP's TSC_AUX as last written or read back (none yet: the first
    // VP's is written).
    let mut live_tsc_aux = u64::MAX;
    let barriers = Barriers::detect(matches!(caps, Caps::Vmx(_)));
    let state = lp_state::get(lp);
    let mut root_buffers = root_exits::HypercallBuffers::default();
    // Root VP n runs on LP n: its CPUID answers, once.
    let root_cpuid = crate::cpuid_view::CpuidCache::new(|leaf| {
        crate::cpuid_view::for_root(leaf, 0, lp, root.vp_count)
    });
    let clock = &state.root_clock;
    // Whose extended state (x87/SSE/AVX) the registers hold: switched only
    // when the LP changes VPs (the hypervisor itself never touches them).
    let mut fpu_owner = Active::Root;
    let lp_stats = &state.stats;
    let tsc_hz = crate::time::tsc_hz().max(1);
    let slice = tsc_hz * vcpu::TIME_SLICE_US / 1_000_000;
    let window = tsc_hz * WINDOW_US / 1_000_000;
    let mut guests: Vec<Local> = Vec::new();
    let mut active = Active::Root;
    let mut root_halted = false;
    // The root VP's RFLAGS.IF as of its last exit: on VMX its VMCS can be
    // read only while current, and a guest's may be current now.
    let mut root_if = false;
    let mut left_guest = cpu::rdtsc();
    // When the root VP last ran, and whether its starving was reported.
    let mut root_ran = left_guest;
    let mut root_starving_told = false;
    let starved = tsc_hz * ROOT_STARVED_US / 1_000_000;
    let mut scheduler = sched::Scheduler::new(window, slice, left_guest);
    lp_stats.start(left_guest);
    loop {
        // Everything the LP does from here to the end of the iteration is
        // charged to the VP it runs: scheduling, switching, entry, exit
        // handling (an exit-heavy VP pays for the work it causes).
        let top = cpu::rdtsc();
        if state.timer_fired.load(Ordering::Relaxed) {
            state.timer_fired.store(false, Ordering::Relaxed);
            host_timer.fired();
        }
        if state.inbox_count.load(Ordering::Acquire) != 0 {
            take_new_vps(lp, &mut guests);
        }
        if state.chores.load(Ordering::Relaxed) && state.chores.swap(false, Ordering::AcqRel) {
            reap(&mut guests, &mut active, &mut fpu_owner);
            serve_save_requests(&mut guests, &mut active);
        }
        // A halted root VP runs again when an interrupt can reach it.
        if root_halted && root_if {
            root::collect(&mut vapic, lp);
            root_halted = vapic.deliverable().is_none();
        }
        if root_if && !root_starving_told && top.wrapping_sub(root_ran) > starved {
            root_starving_told = report_root_starving(lp, root_halted, &vapic, &host_timer, top);
            if !root_starving_told {
                // Asleep with nothing to wake it: looked at again later.
                root_ran = top;
            }
        }
        let choice = if !root_halted {
            // The root first, whenever it is runnable: the guests are not
            // even looked at (the common path of the root's own exits).
            Choice::Root
        } else {
            // Synthetic timers due end a halt like the APIC's own.
            let mut next_timer = None;
            for g in guests.iter_mut() {
                g.timer_due = g.expire_timers(root);
                next_timer = earliest(next_timer, g.timer_due);
            }
            match scheduler.pick(cpu::rdtsc(), &mut guests) {
                Some(i) => Choice::Guest(i),
                None => Choice::Idle(next_timer),
            }
        };

        match choice {
            Choice::Root => {
                if active != Active::Root {
                    root_vcpu.activate();
                    active = Active::Root;
                }
                root::deliver_interrupts(&mut root_vcpu, &mut vapic, lp);
                if let Some(d) = vapic.deadline() {
                    arm_by(&mut host_timer, d);
                }
                // The iteration counts as the root's time: it may be
                // serving a guest.
                clock.enter(top);
                root_ran = top;
                root_starving_told = false;
                switch_vp(
                    &mut fpu_owner,
                    Active::Root,
                    (&root_xstate, &mut root_debug),
                    &mut guests,
                    (&barriers, &mut live_tsc_aux),
                );
                // Exits that change nothing but the VP's registers (CPUID)
                // re-enter at once, until one needs the loop: another
                // exit, an interrupt sent to the root, its timer due.
                let exit = loop {
                    lp_stats.add_hypervisor_time(cpu::rdtsc() - left_guest);
                    let exit = root_vcpu.run();
                    left_guest = cpu::rdtsc();
                    match root_exits::handle_fast(&mut root_vcpu, &exit, &root_cpuid) {
                        Some(reason) => lp_stats.count(reason),
                        None => {
                            lp_stats.count(exit.reason());
                            break Some(exit);
                        }
                    }
                    if state.root_pending.any() || vapic.deadline().is_some_and(|d| d <= left_guest)
                    {
                        break None;
                    }
                };
                let next = exit.map(|exit| match exit {
                    vcpu::Exit::DebugRegisterAccess => {
                        root_debug.take_over(&mut root_vcpu);
                        root_exits::Next::Resume
                    }
                    exit => root_exits::dispatch(
                        root,
                        caps,
                        &mut root_vcpu,
                        &mut vapic,
                        lp,
                        exit,
                        &mut root_buffers,
                    ),
                });
                match next {
                    None | Some(root_exits::Next::Resume) => {}
                    Some(root_exits::Next::Halted) => root_halted = true,
                    Some(root_exits::Next::Stop(why)) => root::stop(lp, &why),
                }
                root_if = root_vcpu.interrupts_enabled();
                clock.add_busy(cpu::rdtsc() - top);
            }
            Choice::Guest(i) => {
                if guests[i].xstate.is_none() {
                    match XState::new_initial() {
                        Ok(x) => guests[i].xstate = Some(x),
                        Err(e) => {
                            log::warn!(
                                "partition {} VP {}: {e}",
                                guests[i].part.id,
                                guests[i].vp.index
                            );
                            guests[i].vp.shared.lock().deleted = true;
                            state.add_chore();
                            continue;
                        }
                    }
                }
                let me = Active::Guest(guests[i].part.id, guests[i].vp.index);
                switch_vp(
                    &mut fpu_owner,
                    me,
                    (&root_xstate, &mut root_debug),
                    &mut guests,
                    (&barriers, &mut live_tsc_aux),
                );
                let g = &mut guests[i];
                let entered = cpu::rdtsc();
                lp_stats.add_hypervisor_time(entered - left_guest);
                // The slice ends at the root's next timer or when the VP's
                // limit for this window is used up, whichever is first.
                let controls = g.part.controls();
                let limit = scheduler
                    .allowance(&g.account, controls)
                    .map(|allowed| entered + allowed);
                let deadline = earliest(vapic.deadline(), limit);
                let timer = (caps, &mut host_timer, entered + slice);
                let exit = match enter_guest(root, g, &mut active, deadline, timer) {
                    Some(exit) => exit,
                    None => {
                        left_guest = cpu::rdtsc();
                        continue;
                    }
                };
                left_guest = cpu::rdtsc();
                g.part.exits.fetch_add(1, Ordering::Relaxed);
                g.part.exits_by_reason[exit.reason() as usize].fetch_add(1, Ordering::Relaxed);
                lp_stats.count(exit.reason());
                let Some(v) = g.vcpu.as_mut() else { continue };
                let next = match exit {
                    vcpu::Exit::DebugRegisterAccess => {
                        g.debug.take_over(v);
                        guest::Next::Resume
                    }
                    exit => guest::dispatch(root, caps, &g.part, &g.vp, v, &mut g.vapic, exit),
                };
                // Charged to the VP: its run, the hypervisor's handling of
                // its exit, and the root's time serving its intercepts since
                // its last run (weights, reserves and limits hold for VPs
                // that mostly exit; an intercept storm uses up its own share).
                let handled = cpu::rdtsc();
                let ran = handled - top + g.vp.served.swap(0, Ordering::Relaxed);
                scheduler.charge(&mut g.account, controls, ran);
                g.part.run_tsc.fetch_add(ran, Ordering::Relaxed);
                let mut s = g.vp.shared.lock();
                match next {
                    guest::Next::Resume => {}
                    guest::Next::Halted => s.halted = true,
                    guest::Next::Intercept(_) => {
                        s.intercept_suspend = true;
                        s.intercept_posted = handled;
                    }
                }
                let io =
                    matches!(&next, guest::Next::Intercept(m) if m.kind == kind::IO_PORT_INTERCEPT);
                if s.may_run() || io {
                    // An I/O intercept's resume sets RAX and RIP straight
                    // in the VMCS/VMCB (CompleteIntercept, `completed`).
                    s.stale = true;
                } else if matches!(next, guest::Next::Intercept(_)) {
                    // The root's resume reads and sets only these; the
                    // rest stays in the VMCS/VMCB until it is asked for.
                    v.save_registers(&mut s.ctx);
                    s.stale = false;
                    s.registers_only = true;
                } else {
                    v.save_context(&mut s.ctx);
                    s.stale = false;
                    s.registers_only = false;
                }
                drop(s);
                // Posted while still `running`: whoever stops the VP waits
                // for it, so no message of a VP outlives its stop unseen.
                if let guest::Next::Intercept(msg) = &next {
                    g.part.intercepts.fetch_add(1, Ordering::Relaxed);
                    crate::synic::post_to_root(root, 0, INTERCEPT_SINT, msg);
                }
                g.vp.running.store(false, Ordering::Release);
            }
            Choice::Idle(next_timer) => {
                // Asleep until the first thing due: the guests' synthetic
                // and APIC timers, the root's timer (if it can take it), the
                // window that frees a VP held at its limit. IPIs from other
                // LPs (a kick) wake it as well.
                let now = cpu::rdtsc();
                let mut wake = earliest(next_timer, scheduler.next_window());
                if root_if {
                    wake = earliest(wake, vapic.deadline());
                }
                for g in &guests {
                    wake = earliest(wake, g.vapic.deadline());
                }
                let recheck = now + tsc_hz * IDLE_RECHECK_US / 1_000_000;
                let wake = wake.map_or(recheck, |w| w.min(recheck));
                apic::arm_timer(host_timer.arm_at(wake, now));
                cpu::sleep_until_interrupt();
            }
        }
    }
}

/// A root VP that takes interrupts, expects one (its timer counts, or a
/// request waits) and has not run for `ROOT_STARVED_US`: says why (a lost
/// wake-up would otherwise hang the root without a word): halted or not, its
/// APIC's requests and in-service vectors, its timer, the host timer.
/// Whether it was reported (a VP asleep with no timer, as root VP 1 waits
/// for IPIs, is not).
#[cold]
fn report_root_starving(
    lp: u32,
    halted: bool,
    vapic: &VirtualApic,
    host_timer: &OneShot,
    now: u64,
) -> bool {
    let words = |base: u32| {
        let mut w = [0u32; 8];
        for (i, word) in w.iter_mut().enumerate() {
            *word = vapic.read(base + i as u32, now).unwrap_or(0) as u32;
        }
        w
    };
    let reg = |msr: u32| vapic.read(msr, now).unwrap_or(0);
    // x2APIC: LVT timer (mask bit 16, periodic mode bit 17), initial and
    // current count.
    let (lvt, initial, current) = (reg(0x832), reg(0x838), reg(0x839));
    let timer_counts =
        lvt & (1 << 16) == 0 && (current != 0 || (lvt & (1 << 17) != 0 && initial != 0));
    let irr = words(0x820);
    if !timer_counts && irr == [0; 8] {
        return false;
    }
    log::warn!(
        "LP {lp}: root VP not run for {} s (halted {halted}): IRR {:x?} ISR {:x?} TPR {:#x} timer LVT {:#x} count {:#x}, next deadline {:?}, host timer armed {:?}, now {now:#x}",
        ROOT_STARVED_US / 1_000_000,
        irr,
        words(0x810),
        reg(0x808),
        lvt,
        current,
        vapic.deadline(),
        host_timer.armed(),
    );
    true
}

/// Makes guest VP `g` run once (creating its VMCS/VMCB the first time,
/// loading a context the root changed). `None` if it may not run after all.
///
/// `deadline`: the root's next timer or the VP's limit; `timer`: the host
/// timer, which (SVM, without a preemption timer) ends the VP's run at the
/// earliest of those, the VP's own timers and the end of its slice.
fn enter_guest(
    root: &RootPartition,
    g: &mut Local,
    active: &mut Active,
    root_deadline: Option<u64>,
    timer: (&Caps, &mut OneShot, u64),
) -> Option<vcpu::Exit> {
    let (caps, host_timer, slice_end) = timer;
    // Expired just before the pick (one due since fires the host timer at
    // once, and is expired at the next look).
    let timer_deadline = g.timer_due;
    {
        // Checked under the same lock that `running` is set under: a
        // suspension or deletion the root asked for meanwhile is honoured.
        let mut s = g.vp.shared.lock();
        if !Local::may_run_with(&mut s, &mut g.vapic, cpu::rdtsc()) {
            return None;
        }
        match g.vcpu.as_mut() {
            None => {
                let v = Vcpu::new_guest(caps, &s.ctx, g.part.slat_root(), g.part.tag);
                *active = Active::Guest(g.part.id, g.vp.index);
                match v {
                    Ok(v) => g.vcpu = Some(v),
                    Err(e) => {
                        log::warn!(
                            "partition {} VP {}: cannot create it: {e}",
                            g.part.id,
                            g.vp.index
                        );
                        s.deleted = true;
                        lp_state::get(g.vp.lp).add_chore();
                        return None;
                    }
                }
            }
            Some(v) => {
                if *active != Active::Guest(g.part.id, g.vp.index) {
                    v.activate();
                    *active = Active::Guest(g.part.id, g.vp.index);
                }
                if let Some((rax, rip)) = s.completed.take() {
                    v.complete_intercept(rax, rip);
                }
                if s.dirty && !s.dirty_beyond_registers {
                    v.load_registers(&s.ctx);
                } else if s.dirty {
                    if let Err(e) = v.load_context(&s.ctx) {
                        log::warn!("partition {} VP {}: {e}", g.part.id, g.vp.index);
                    }
                }
            }
        }
        s.dirty = false;
        s.dirty_beyond_registers = false;
        g.vp.running.store(true, Ordering::Release);
        // Interrupts others sent (asserted by the root, IPIs) go into the
        // VP's APIC; one it can deliver ends a halt.
        s.pending.take_into(&mut g.vapic);
        g.vapic.tick(cpu::rdtsc());
        let v = g.vcpu.as_mut()?;
        if v.offer_interrupt(&mut g.vapic) {
            s.halted = false;
        }
    }
    g.offer_eoi_assist(root);
    // The root's timer and the VP's own preempt it (VMX: the preemption
    // timer, within the slice; SVM: the host timer).
    let own = earliest(g.vapic.deadline(), timer_deadline);
    let deadline = earliest(root_deadline, own);
    let v = g.vcpu.as_mut()?;
    match caps {
        Caps::Vmx(_) => v.set_timer_deadline(deadline),
        _ => arm_by(host_timer, deadline.map_or(slice_end, |d| d.min(slice_end))),
    }
    let exceptions = g.part.exception_intercepts.load(Ordering::Acquire);
    if exceptions != g.exceptions {
        v.set_exception_intercepts(exceptions);
        g.exceptions = exceptions;
    }
    g.vp.in_guest.store(true, Ordering::SeqCst);
    // A flush requested since the check above: take it now (the requester
    // waits for `in_guest` to clear or the generation to be reached).
    let generation = g.part.flush_generation.load(Ordering::Acquire);
    if g.vp.flushed.swap(generation, Ordering::AcqRel) != generation {
        v.flush(caps);
    }
    let exit = v.run();
    g.vp.in_guest.store(false, Ordering::Release);
    if g.eoi_assist {
        g.end_eoi_assist(root);
    }
    Some(exit)
}

fn take_new_vps(lp: u32, guests: &mut Vec<Local>) {
    let mut inbox = partition::LP_INBOX[lp as usize % lp_state::MAX_LPS].lock();
    lp_state::get(lp).inbox_count.store(0, Ordering::Release);
    for (part, vp) in inbox.drain(..) {
        let index = vp.index;
        // Deleted before it arrived: its chore may have been taken already.
        if vp.shared.lock().deleted {
            lp_state::get(lp).add_chore();
        }
        guests.push(Local {
            part,
            vp,
            vcpu: None,
            xstate: None,
            account: sched::Account::default(),
            // Applied at the first entry (the base intercepts with it).
            exceptions: u32::MAX,
            vapic: VirtualApic::new(index),
            debug: DebugState::initial(0, false),
            eoi_assist: false,
            timer_due: None,
        });
    }
}

/// Makes the host timer fire by `deadline` (TSC), keeping an armed one that
/// fires first.
fn arm_by(timer: &mut OneShot, deadline: u64) {
    if let Some(count) = timer.arm_by(deadline, cpu::rdtsc()) {
        apic::arm_timer(count);
    }
}

/// The earlier of two optional TSC deadlines.
fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Makes the registers hold `to`'s extended state, debug registers and
/// TSC_AUX: the owner's are saved first (a deleted owner's are dropped),
/// then `to`'s restored; between partitions, the barriers run.
#[inline(always)]
fn switch_vp(
    owner: &mut Active,
    to: Active,
    root: (&XState, &mut DebugState),
    guests: &mut [Local],
    (barriers, live_tsc_aux): (&Barriers, &mut u64),
) {
    if *owner == to {
        return;
    }
    let (root_xstate, root_debug) = root;
    let slot = |who: Active, guests: &[Local]| match who {
        Active::Guest(pid, index) => guests
            .iter()
            .position(|g| g.part.id == pid && g.vp.index == index),
        _ => None,
    };
    match *owner {
        Active::Root => {
            root_xstate.save();
            root_debug.save(barriers, live_tsc_aux);
        }
        Active::Guest(..) => {
            if let Some(g) = slot(*owner, guests).map(|i| &mut guests[i]) {
                if let Some(x) = g.xstate.as_ref() {
                    x.save();
                }
                g.debug.save(barriers, live_tsc_aux);
            }
        }
        Active::None => {}
    }
    let partition = |who: Active| match who {
        Active::Root => Some(0),
        Active::Guest(pid, _) => Some(pid),
        Active::None => None,
    };
    if partition(*owner) != partition(to) {
        barriers.between_partitions();
    }
    match to {
        Active::Root => {
            root_xstate.restore();
            root_debug.restore(barriers, live_tsc_aux);
        }
        Active::Guest(..) => {
            if let Some(g) = slot(to, guests).map(|i| &guests[i]) {
                if let Some(x) = g.xstate.as_ref() {
                    x.restore();
                }
                g.debug.restore(barriers, live_tsc_aux);
            }
        }
        Active::None => {}
    }
    *owner = to;
}

/// Frees the structures of deleted VPs (they never run again).
/// `fpu_owner`: a deleted VP's extended state in the registers is dropped
/// (a new VP may reuse its partition id and index: nothing of the old one
/// may be saved into the new one's area).
fn reap(guests: &mut Vec<Local>, active: &mut Active, fpu_owner: &mut Active) {
    let mut i = 0;
    while i < guests.len() {
        if guests[i].vp.shared.lock().deleted {
            let g = guests.swap_remove(i);
            let id = Active::Guest(g.part.id, g.vp.index);
            if *active == id {
                *active = Active::None;
            }
            if *fpu_owner == id {
                *fpu_owner = Active::None;
            }
            if let Some(v) = g.vcpu {
                v.release();
            }
            if let Some(x) = g.xstate {
                x.release();
            }
        } else {
            i += 1;
        }
    }
}

/// Saves the context of VPs whose registers the root asked for.
fn serve_save_requests(guests: &mut [Local], active: &mut Active) {
    for g in guests.iter_mut() {
        let mut s = g.vp.shared.lock();
        if !s.save_request {
            continue;
        }
        s.save_request = false;
        if let (true, Some(v)) = (s.stale || s.registers_only, g.vcpu.as_mut()) {
            v.activate();
            *active = Active::Guest(g.part.id, g.vp.index);
            // Registers saved at an intercept may have been set by the root
            // since: those in `ctx` are newer than the VMCS/VMCB's.
            let registers = (!s.stale).then(|| (s.ctx.gpr, s.ctx.rip, s.ctx.rflags));
            v.save_context(&mut s.ctx);
            if let Some((gpr, rip, rflags)) = registers {
                (s.ctx.gpr, s.ctx.rip, s.ctx.rflags) = (gpr, rip, rflags);
            }
            // A completion not loaded yet is newer than the VMCS/VMCB: it
            // goes into `ctx`, which the next entry loads.
            if let Some((rax, rip)) = s.completed.take() {
                (s.ctx.gpr[0], s.ctx.rip) = (rax, rip);
                s.dirty = true;
            }
        }
        s.stale = false;
        s.registers_only = false;
    }
}
