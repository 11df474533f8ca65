//! Synthetic timers first (a one-shot in direct mode, a periodic one posting
//! TimerExpired messages to SINT 3), then a VMBus client of our own, on the
//! `vmbus` crate's guest side: it connects
//! to the root's VMBus server, finds the echo device among the offers, has a
//! GPADL naming pages outside its memory refused, opens the channel and
//! checks 200 packets of varying sizes come back intact, then measures
//! (TSC ticks, and world switches from the device's counter):
//! - a ping-pong round trip (one packet each way),
//! - packets in batches of 32 (the ring's interrupt rules at work),
//! - a stream of such batches with both sides polling (no signal either
//!   way in steady state when the root runs on another processor),
//! - a control-message round trip (MODIFYCHANNEL and its response),
//! - a signalled event (HvSignalEvent on the channel's connection).
//!
//! With a disk it drives the SCSI controller (and abuses it); with a
//! network adapter, the adapter's NVSP and RNDIS as Linux does, then
//! hostile messages and a flood (`network`).
//!
//! It then breaks its ring with an oversized packet (the root stops
//! serving the channel), waits for the administrator to remove the device
//! (the offer is rescinded; it closes and releases it), unloads and
//! connects again, and finally stays connected without ever opening the
//! shutdown service: `vm stop` must turn it off after its timeout.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use hv_abi::hypercall::{status, Input};
use hv_abi::layout::{IntoBytes, PostMessage};
use hv_abi::partition::code;
use hv_abi::synic::{msr, EVENT_FLAGS_BYTES, MESSAGE_PENDING, SLOT_SIZE, VMBUS_SINT};
use linked_list_allocator::LockedHeap;
use test_guests::{exit, println, rdmsr, wrmsr, Page};
use vmbus::channel::{Channel, Notify, SendResult};
use vmbus::echo::{OP_COUNTER, OP_ECHO};
use vmbus::gpadl::GpadlRange;
use vmbus::guest::{Guest, GuestConfig, GuestEvent, GuestPort, OpenParams, PostError};
use vmbus::guid::class;
use vmbus::messages::USER_DEFINED_SIZE;
use vmbus::packet::{GpaRangeSpec, OutgoingPacket};
use vmbus::scsi::rw10;
use vmbus::shared_mem::{RawRing, RingHeader};
use vmbus::storvsp::VstorPacket;

test_guests::entry!(main);

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Guest memory: the image at 2 MiB, the heap at [4, 6) MiB, ring pages
/// from 6 MiB to the end of memory (8 MiB VMs).
const HEAP_AT: u64 = 0x40_0000;
const HEAP_BYTES: usize = 0x20_0000;
const PAGES_AT: u64 = 0x60_0000;
const PAGE: u64 = 4096;
/// The SINT vector (Linux's, for the VMBus SINT).
const VMBUS_VECTOR: u8 = 0xF3;

static SIMP: Page = Page(core::cell::UnsafeCell::new([0; 4096]));
static SIEFP: Page = Page(core::cell::UnsafeCell::new([0; 4096]));
static INPUT: Page = Page(core::cell::UnsafeCell::new([0; 4096]));
static SINTS: AtomicU64 = AtomicU64::new(0);
test_guests::counting_handler!(sint_handler, SINTS);
/// The SCSI controller's relid, if the VM has a disk (0: none).
static SCSI_RELID: AtomicU64 = AtomicU64::new(0);
/// The network adapter's relid, if the VM has one (0: none).
static NET_RELID: AtomicU64 = AtomicU64::new(0);
/// Pages a storage request reads into and writes from.
static DATA_OUT: Page = Page(core::cell::UnsafeCell::new([0; 4096]));
static DATA_IN: Page = Page(core::cell::UnsafeCell::new([0; 4096]));
static DIRECT: AtomicU64 = AtomicU64::new(0);
test_guests::counting_handler!(direct_handler, DIRECT);
static TIMER_SINT: AtomicU64 = AtomicU64::new(0);
test_guests::counting_handler!(timer_sint_handler, TIMER_SINT);
const DIRECT_VECTOR: u8 = 0x40;
const TIMER_VECTOR: u8 = 0xF4;
/// The SINT the periodic timer's messages go to.
const TIMER_SINT_INDEX: usize = 3;

fn check(what: &str, ok: bool) {
    if ok {
        println!("vmbus-echo: {what}: ok");
    } else {
        println!("vmbus-echo: {what}: FAILED");
        exit(1);
    }
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Sleeps until an interrupt (checked with interrupts off first by the
/// caller, so none is missed: STI's shadow covers HLT).
fn sleep() {
    // SAFETY: the IDT handles the SINT vector; HLT waits for it.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// HvPostMessage: message type 1 (VMBus) on `connection`.
fn post_message(connection: u32, bytes: &[u8]) -> u16 {
    let header = PostMessage {
        connection_id: connection,
        reserved: 0,
        message_type: 1,
        payload_size: bytes.len() as u32,
    };
    let page = INPUT.0.get() as *mut u8;
    // SAFETY: our own page, used for hypercall inputs alone, from this one VP.
    unsafe {
        core::ptr::copy_nonoverlapping(header.as_bytes().as_ptr(), page, 16);
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), page.add(16), bytes.len().min(240));
    }
    let rcx = Input::slow(code::POST_MESSAGE, 0).encode();
    test_guests::hypercall(rcx, page as u64, 0) as u16
}

/// HvSignalEvent (fast) of flag 0 on `connection`.
fn signal_event(connection: u32) -> u16 {
    let mut input = Input::slow(code::SIGNAL_EVENT, 0);
    input.fast = true;
    test_guests::hypercall(input.encode(), u64::from(connection), 0) as u16
}

/// The next VMBus message in our SINT slot, if any (the slot is emptied,
/// EOM written if another waits).
fn take_message() -> Option<([u8; SLOT_SIZE], usize)> {
    let slot = SIMP.0.get() as u64 + (VMBUS_SINT * SLOT_SIZE) as u64;
    // SAFETY: our SIMP page; the hypervisor writes the body, then the header.
    let head = unsafe { core::ptr::read_volatile(slot as *const u64) };
    if head as u32 == 0 {
        return None;
    }
    let mut bytes = [0u8; SLOT_SIZE];
    // SAFETY: as above; a full slot is not touched by the hypervisor.
    unsafe { core::ptr::copy_nonoverlapping(slot as *const u8, bytes.as_mut_ptr(), SLOT_SIZE) };
    // SAFETY: emptying the slot, then reading whether another waits.
    let pending = unsafe {
        core::ptr::write_volatile(slot as *mut u32, 0);
        core::sync::atomic::fence(Ordering::SeqCst);
        core::ptr::read_volatile((slot + 5) as *const u8) & MESSAGE_PENDING != 0
    };
    if pending {
        // SAFETY: EOM asks for the next queued message.
        unsafe { wrmsr(msr::EOM, 0) };
    }
    Some((bytes, usize::from(bytes[4]).min(240)))
}

/// Takes channel `relid`'s event flag (so the next signal raises the SINT).
fn take_flag(relid: u32) -> bool {
    let word = SIEFP.0.get() as usize + VMBUS_SINT * EVENT_FLAGS_BYTES + (relid / 64) as usize * 8;
    // SAFETY: an aligned u64 of our SIEFP page, which the hypervisor changes
    // only with atomic ORs.
    let cell = unsafe { AtomicU64::from_ptr(word as *mut u64) };
    cell.fetch_and(!(1 << (relid % 64)), Ordering::AcqRel) & 1 << (relid % 64) != 0
}

/// What the `vmbus` crate needs from this guest: HvPostMessage, pages from
/// a bump allocator (identity-mapped, so contiguous pages make a ring) and
/// HvSignalEvent.
struct Port {
    next: u64,
    end: u64,
    /// HvPostMessage retries for want of buffers.
    retries: u64,
}

struct Signal(u32);

/// HvSignalEvent calls made for the channels.
static SIGNALS: AtomicU64 = AtomicU64::new(0);

impl Notify for Signal {
    fn notify(&mut self) {
        SIGNALS.fetch_add(1, Ordering::Relaxed);
        let _ = signal_event(self.0);
    }
}

impl GuestPort for Port {
    type Ring = RawRing;
    type Notifier = Signal;

    fn post_message(&mut self, connection_id: u32, message: &[u8]) -> Result<(), PostError> {
        // The root's queue for us holds 16: wait for it to drain.
        for _ in 0..100_000 {
            match post_message(connection_id, message) {
                status::SUCCESS => return Ok(()),
                status::INSUFFICIENT_BUFFERS => {
                    self.retries += 1;
                    core::hint::spin_loop();
                }
                _ => return Err(PostError),
            }
        }
        Err(PostError)
    }

    fn alloc_pages(&mut self, count: usize) -> Option<Vec<u64>> {
        let bytes = count as u64 * PAGE;
        if self.next + bytes > self.end {
            return None;
        }
        let at = self.next;
        self.next += bytes;
        // SAFETY: free guest RAM above the heap, identity-mapped, handed out
        // once (the bump pointer moved past it).
        unsafe { core::ptr::write_bytes(at as *mut u8, 0, bytes as usize) };
        Some((0..count as u64).map(|i| at / PAGE + i).collect())
    }

    /// Pages are not reused (a test guest allocates little).
    fn free_pages(&mut self, _pfns: &[u64]) {}

    fn map_ring(&mut self, pfns: &[u64]) -> Option<RawRing> {
        let (&first, rest) = pfns.split_first()?;
        let contiguous = rest
            .iter()
            .enumerate()
            .all(|(i, &p)| p == first + 1 + i as u64);
        if rest.is_empty()
            || !contiguous
            || first * PAGE < PAGES_AT
            || (first + 1) * PAGE + rest.len() as u64 * PAGE > self.end
        {
            return None;
        }
        let header = core::ptr::NonNull::new((first * PAGE) as *mut RingHeader)?;
        let data = core::ptr::NonNull::new(((first + 1) * PAGE) as *mut AtomicU64)?;
        // SAFETY: pages from `alloc_pages` (checked above: contiguous, ours,
        // identity-mapped), shared only with the root, accessed atomically.
        Some(unsafe { RawRing::new(header, data, rest.len() * 512) })
    }

    fn notifier(&mut self, connection_id: u32) -> Signal {
        Signal(connection_id)
    }
}

type Bus = Guest<Port>;
type Chan = Channel<RawRing, Signal>;
type Event = GuestEvent<RawRing, Signal>;

/// The next event of the bus state machine (sleeping while none).
fn next_event(bus: &mut Bus) -> Event {
    loop {
        let Some((bytes, size)) = take_message() else {
            sleep();
            continue;
        };
        match bus.handle_message(&bytes[16..16 + size]) {
            Ok(Some(e)) => return e,
            Ok(None) => {}
            Err(e) => {
                println!("vmbus-echo: the host's message was refused: {e:?}");
                exit(1)
            }
        }
    }
}

/// The next packet on the channel (sleeping until the root signals):
/// transaction id and payload bytes copied into `out`.
fn recv(ch: &mut Chan, relid: u32, out: &mut Vec<u8>) -> u64 {
    loop {
        take_flag(relid);
        match ch.recv() {
            Ok(Some(Ok(p))) => {
                out.clear();
                out.extend_from_slice(p.payload);
                return p.transaction_id;
            }
            Ok(Some(Err(e))) => {
                println!("vmbus-echo: a malformed packet from the root: {e:?}");
                exit(1)
            }
            Ok(None) => sleep(),
            Err(e) => {
                println!("vmbus-echo: the channel broke: {e:?}");
                exit(1)
            }
        }
    }
}

fn send(ch: &mut Chan, id: u64, payload: &[u8]) -> bool {
    let parts: [&[u8]; 1] = [payload];
    matches!(
        ch.send(&OutgoingPacket::in_band(id, false, &parts)),
        Ok(SendResult::Sent)
    )
}

/// The root's world switches so far (the echo device's counter).
fn world_switches(ch: &mut Chan, relid: u32) -> u64 {
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&OP_COUNTER.to_le_bytes());
    while !send(ch, u64::MAX, &request) {
        sleep();
    }
    let mut reply = Vec::new();
    loop {
        if recv(ch, relid, &mut reply) == u64::MAX && reply.len() >= 16 {
            return u64::from_le_bytes(reply[8..16].try_into().unwrap_or([0; 8]));
        }
    }
}

fn echo_payload(i: u32) -> Vec<u8> {
    let len = 8 + (i as usize * 37) % 1500;
    let mut p: Vec<u8> = (0..len).map(|k| (k as u32 * 7 + i) as u8).collect();
    p[..4].copy_from_slice(&OP_ECHO.to_le_bytes());
    p[4..8].copy_from_slice(&i.to_le_bytes());
    p
}

/// The world switches a window of [`world_switches`] counts with nothing
/// in it (the first answer's entry and the last request's exit fall
/// inside): left out of every figure.
static PROBE_SWITCHES: AtomicU64 = AtomicU64::new(0);

/// Measures [`PROBE_SWITCHES`]: the fewest of a few empty windows (an idle
/// tick of the root's may land in one).
fn calibrate(ch: &mut Chan, relid: u32) {
    let mut fewest = u64::MAX;
    for _ in 0..4 {
        let before = world_switches(ch, relid);
        fewest = fewest.min(world_switches(ch, relid) - before);
    }
    PROBE_SWITCHES.store(fewest, Ordering::Relaxed);
    println!("vmbus-echo: bench: a counter window with nothing in it holds {fewest} world switches, left out of the figures");
}

/// One line of figures: per operation, TSC ticks and world switches (the
/// window's own left out).
fn report(what: &str, n: u64, ticks: u64, switches: u64) {
    let switches = switches.saturating_sub(PROBE_SWITCHES.load(Ordering::Relaxed));
    println!(
        "vmbus-echo: bench {what}: {n} in {ticks} TSC ticks, {} ticks and {}.{:02} world switches each",
        ticks / n,
        switches / n,
        switches * 100 / n % 100
    );
}

fn main(_vp: u64, _vps: u64, memory: u64) -> ! {
    // SAFETY: [HEAP_AT, HEAP_AT + HEAP_BYTES) is our RAM, used for nothing
    // else (the image ends below 4 MiB), handed over once.
    unsafe { HEAP.lock().init(HEAP_AT as *mut u8, HEAP_BYTES) };
    check("hypercall page enabled", test_guests::enable_hypercalls());
    test_guests::set_handler(VMBUS_VECTOR, sint_handler);
    test_guests::load_idt_and_enable_apic();
    // SAFETY: the SynIC MSRs the hypervisor gives guests; the pages are ours.
    unsafe {
        wrmsr(msr::SIMP, SIMP.0.get() as u64 | msr::PAGE_ENABLE);
        wrmsr(msr::SIEFP, SIEFP.0.get() as u64 | msr::PAGE_ENABLE);
        wrmsr(msr::SINT0 + VMBUS_SINT as u32, u64::from(VMBUS_VECTOR));
        wrmsr(msr::SCONTROL, 1);
    }
    check("SynIC enabled", rdmsr(msr::SCONTROL) & 1 == 1);
    synthetic_timers();
    let port = Port {
        next: PAGES_AT,
        end: memory,
        retries: 0,
    };
    let mut bus = Guest::new(port, GuestConfig::default());
    let Some(echo_relid) = connect_offers(&mut bus) else {
        // Without the echo device (a VM on a busy switch, `-linux-net`):
        // the devices it has, then idle until turned off.
        println!("vmbus-echo: no echo device: its tests are skipped");
        match NET_RELID.load(Ordering::Relaxed) {
            0 => println!("vmbus-echo: no network adapter"),
            relid => network(&mut bus, relid as u32, memory),
        }
        println!("vmbus-echo: done without an echo device");
        loop {
            sleep();
        }
    };

    // A GPADL naming pages beyond our memory: refused by the root.
    let outside = [memory / PAGE + 16, memory / PAGE + 17];
    let range = GpadlRange {
        byte_count: 2 * PAGE as u32,
        byte_offset: 0,
        pfns: &outside,
    };
    let _ = bus.create_gpadl(echo_relid, &[range]);
    let refused =
        matches!(next_event(&mut bus), GuestEvent::GpadlCreated { status, .. } if status != 0);
    check("a GPADL naming pages outside the guest is refused", refused);

    let mut ch = open(&mut bus, echo_relid, "the echo channel");
    println!("vmbus-echo: echo channel open (relid {echo_relid})");

    // Deterministic packets: each comes back whole, in order.
    let mut reply = Vec::new();
    let mut intact = 0;
    for i in 0..200u32 {
        let p = echo_payload(i);
        while !send(&mut ch, u64::from(i), &p) {
            sleep();
        }
        let id = recv(&mut ch, echo_relid, &mut reply);
        if id == u64::from(i) && reply.len() >= p.len() && reply[..p.len()] == p[..] {
            intact += 1;
        }
    }
    check(
        "200 packets of 8 to 1500 bytes echoed intact, in order",
        intact == 200,
    );

    bench(&mut bus, &mut ch, echo_relid);
    match SCSI_RELID.load(Ordering::Relaxed) {
        0 => println!("vmbus-echo: no SCSI controller (the VM has no disk)"),
        relid => storage(&mut bus, relid as u32, memory, (&mut ch, echo_relid)),
    }
    match NET_RELID.load(Ordering::Relaxed) {
        0 => println!("vmbus-echo: no network adapter"),
        relid => network(&mut bus, relid as u32, memory),
    }

    // A packet longer than the device reads: the root stops serving the
    // channel (and says so in vm show), nothing else happens.
    let mut big = alloc::vec![0u8; 8192];
    big[..4].copy_from_slice(&OP_ECHO.to_le_bytes());
    check("an 8 KiB packet is sent", send(&mut ch, 1, &big));

    println!("vmbus-echo: waiting for the device to be removed");
    loop {
        match next_event(&mut bus) {
            GuestEvent::Rescinded { relid } if relid == echo_relid => break,
            e => println!("vmbus-echo: (while waiting: {e:?})"),
        }
    }
    drop(ch);
    // As Linux does: close, wait for the ring's GPADL to be torn down, then
    // release the relid.
    let closed = bus.close_channel(echo_relid).is_ok();
    let torn_down = matches!(next_event(&mut bus), GuestEvent::GpadlTornDown { .. });
    let released = bus.release_relid(echo_relid).is_ok();
    check(
        "the echo device was rescinded; closed, its ring torn down, released",
        closed && torn_down && released,
    );

    // Unload and connect again, as a rebooting guest does: the offers come
    // back, the echo device no longer among them.
    check("unload sent", bus.unload().is_ok());
    check(
        "unloaded",
        matches!(next_event(&mut bus), GuestEvent::Unloaded),
    );
    let again = connect_offers(&mut bus);
    check(
        "connected again; the removed device is not offered",
        again.is_none(),
    );
    // A timer an hour away, for the root's `vm show` to find armed
    // (STIMER2, direct mode) while the VP sleeps.
    // SAFETY: the synthetic timer MSRs CPUID offers (checked above).
    unsafe {
        wrmsr(
            stimer_bits::CONFIG0 + 4,
            stimer_bits::ENABLE | stimer_bits::DIRECT_MODE | u64::from(DIRECT_VECTOR) << 4,
        );
        wrmsr(stimer_bits::CONFIG0 + 5, time_ref() + 36_000_000_000);
    }
    println!("vmbus-echo: done; ignoring the shutdown service");
    loop {
        sleep();
    }
}

fn time_ref() -> u64 {
    rdmsr(hv_abi::msr::TIME_REF_COUNT)
}

/// STIMER0 as a one-shot in direct mode, STIMER1 periodic in message mode.
fn synthetic_timers() {
    use stimer_bits::*;
    // CPUID offers them (privilege bit 3) and their direct mode (EDX bit 19).
    let leaf = core::arch::x86_64::__cpuid(0x4000_0003);
    check(
        "CPUID offers synthetic timers and their direct mode",
        leaf.eax & 1 << 3 != 0 && leaf.edx & 1 << 19 != 0,
    );
    test_guests::set_handler(DIRECT_VECTOR, direct_handler);
    test_guests::set_handler(TIMER_VECTOR, timer_sint_handler);
    let start = time_ref();
    // SAFETY: the synthetic timer and SINT MSRs CPUID offers.
    unsafe {
        wrmsr(
            CONFIG0,
            ENABLE | DIRECT_MODE | u64::from(DIRECT_VECTOR) << 4,
        );
        wrmsr(CONFIG0 + 1, start + 20_000);
    }
    let fired = test_guests::halt_until(1_000_000, || DIRECT.load(Ordering::Relaxed) > 0);
    let at = time_ref();
    if !fired || at < start + 20_000 {
        println!("vmbus-echo: one-shot timer: fired {fired}, armed at {start}, woke at {at}");
    }
    check(
        "a one-shot direct-mode timer fires its vector, not before its time, then is off",
        fired && at >= start + 20_000 && rdmsr(CONFIG0) & ENABLE == 0,
    );
    // Periodic, 1 ms, TimerExpired messages in SINT 3.
    // SAFETY: as above.
    unsafe {
        wrmsr(
            msr::SINT0 + TIMER_SINT_INDEX as u32,
            u64::from(TIMER_VECTOR),
        );
        wrmsr(CONFIG0 + 3, 10_000);
        wrmsr(
            CONFIG0 + 2,
            ENABLE | PERIODIC | (TIMER_SINT_INDEX as u64) << 16,
        );
    }
    let slot = SIMP.0.get() as u64 + (TIMER_SINT_INDEX * SLOT_SIZE) as u64;
    let mut expirations = Vec::new();
    while expirations.len() < 3 {
        // SAFETY: our SIMP page's slot 3; the header is read first.
        let kind = unsafe { core::ptr::read_volatile(slot as *const u32) };
        if kind == 0 {
            if !test_guests::halt_until(1_000_000, || {
                // SAFETY: as above.
                unsafe { core::ptr::read_volatile(slot as *const u32) != 0 }
            }) {
                break;
            }
            continue;
        }
        // SAFETY: a full slot is ours until we empty it.
        let (index, expiration) = unsafe {
            (
                core::ptr::read_volatile((slot + 16) as *const u32),
                core::ptr::read_volatile((slot + 24) as *const u64),
            )
        };
        if kind == 0x8000_0010 && index == 1 {
            expirations.push(expiration);
        }
        // SAFETY: emptying the slot, then EOM if another waits.
        unsafe {
            core::ptr::write_volatile(slot as *mut u32, 0);
            core::sync::atomic::fence(Ordering::SeqCst);
            if core::ptr::read_volatile((slot + 5) as *const u8) & MESSAGE_PENDING != 0 {
                wrmsr(msr::EOM, 0);
            }
        }
    }
    // SAFETY: a count of 0 turns the timer off.
    unsafe { wrmsr(CONFIG0 + 3, 0) };
    // Messages placed after the third (one may expire before the timer is
    // off, and one may wait queued behind it) are counted, not checked:
    // each placement may raise the SINT's interrupt once.
    let mut placed = expirations.len() as u64;
    loop {
        // SAFETY: STI takes an interrupt still pending (messages read with
        // interrupts off raise it, and placements while it is pending
        // merge, as an edge-triggered vector does); the slot as above.
        let kind = unsafe {
            core::arch::asm!("sti", "nop", "cli", options(nomem, nostack));
            core::ptr::read_volatile(slot as *const u32)
        };
        if kind == 0 {
            break;
        }
        placed += 1;
        // SAFETY: as above.
        unsafe {
            core::ptr::write_volatile(slot as *mut u32, 0);
            core::sync::atomic::fence(Ordering::SeqCst);
            if core::ptr::read_volatile((slot + 5) as *const u8) & MESSAGE_PENDING != 0 {
                wrmsr(msr::EOM, 0);
            }
        }
    }
    let interrupts = TIMER_SINT.load(Ordering::Relaxed);
    let spaced = expirations
        .windows(2)
        .all(|w| w[1] > w[0] && (w[1] - w[0]) % 10_000 == 0);
    let ok = expirations.len() == 3 && spaced && (1..=placed).contains(&interrupts);
    if !ok {
        println!(
            "vmbus-echo: periodic timer: expirations {expirations:?}, {placed} messages, {interrupts} interrupts"
        );
    }
    check(
        "a periodic timer posts TimerExpired messages to its SINT, a period apart",
        ok,
    );
}

/// The synthetic timer MSRs and bits (TLFS).
mod stimer_bits {
    pub const CONFIG0: u32 = 0x4000_00B0;
    pub const ENABLE: u64 = 1;
    pub const PERIODIC: u64 = 1 << 1;
    pub const DIRECT_MODE: u64 = 1 << 12;
}

/// Opens channel `relid` (8-page rings each way) and waits until it is
/// open; `what` names it if that fails.
fn open(bus: &mut Bus, relid: u32, what: &str) -> Chan {
    let params = OpenParams {
        send_ring_pages: 8,
        recv_ring_pages: 8,
        target_vp: 0,
        user_data: [0; USER_DEFINED_SIZE],
    };
    if bus.open_channel(relid, params).is_err() {
        check(&alloc::format!("{what} opens"), false);
    }
    loop {
        match next_event(bus) {
            GuestEvent::GpadlCreated { status: 0, .. } => {}
            GuestEvent::Opened { channel, .. } => return channel,
            e => {
                println!("vmbus-echo: opening {what}: {e:?}");
                exit(1)
            }
        }
    }
}

/// Connects and collects the offers; the echo device's relid, if offered.
fn connect_offers(bus: &mut Bus) -> Option<u32> {
    check("INITIATE_CONTACT sent", bus.connect().is_ok());
    match next_event(bus) {
        GuestEvent::Connected { version } => {
            println!(
                "vmbus-echo: connected, version {}.{}",
                version >> 16,
                version & 0xFFFF
            )
        }
        e => {
            println!("vmbus-echo: connecting: {e:?}");
            exit(1)
        }
    }
    check("REQUESTOFFERS sent", bus.request_offers().is_ok());
    let (mut offers, mut echo) = (0, None);
    loop {
        match next_event(bus) {
            GuestEvent::Offer(o) => {
                offers += 1;
                if o.interface_type == class::ECHO {
                    echo = Some(o.child_relid);
                }
                if o.interface_type == class::SCSI {
                    SCSI_RELID.store(u64::from(o.child_relid), Ordering::Relaxed);
                }
                if o.interface_type == class::NETWORK {
                    NET_RELID.store(u64::from(o.child_relid), Ordering::Relaxed);
                }
            }
            GuestEvent::AllOffersDelivered => break,
            e => println!("vmbus-echo: (while collecting offers: {e:?})"),
        }
    }
    println!(
        "vmbus-echo: {offers} offers, echo device {}",
        if echo.is_some() {
            "among them"
        } else {
            "absent"
        }
    );
    echo
}

/// The figures `cargo xtask bench` reads.
fn bench(bus: &mut Bus, ch: &mut Chan, relid: u32) {
    const ROUND_TRIPS: u64 = 500;
    const BATCH: u64 = 32;
    const BATCHES: u64 = 32;
    const MODIFIES: u64 = 100;
    const EVENTS: u64 = 1000;
    let mut reply = Vec::new();
    let mut packet = [0u8; 64];
    packet[..4].copy_from_slice(&OP_ECHO.to_le_bytes());

    calibrate(ch, relid);
    let (s0, t0) = (world_switches(ch, relid), rdtsc());
    for i in 0..ROUND_TRIPS {
        while !send(ch, i, &packet) {
            sleep();
        }
        recv(ch, relid, &mut reply);
    }
    let (t1, s1) = (rdtsc(), world_switches(ch, relid));
    report("ping-pong round trip", ROUND_TRIPS, t1 - t0, s1 - s0);

    let (s0, t0) = (world_switches(ch, relid), rdtsc());
    for b in 0..BATCHES {
        // Quietly: one signal for the batch (Channel::flush).
        let mut sent = 0;
        while sent < BATCH {
            let parts: [&[u8]; 1] = [&packet];
            let p = OutgoingPacket::in_band(b * BATCH + sent, false, &parts);
            if matches!(ch.send_quiet(&p), Ok(SendResult::Sent)) {
                sent += 1;
            } else {
                sleep();
            }
        }
        ch.flush();
        for _ in 0..BATCH {
            recv(ch, relid, &mut reply);
        }
    }
    let (t1, s1) = (rdtsc(), world_switches(ch, relid));
    report("batch of 32 packets each way", BATCHES, t1 - t0, s1 - s0);

    stream(ch, relid, &packet);

    let (s0, t0) = (world_switches(ch, relid), rdtsc());
    for _ in 0..MODIFIES {
        if bus.modify_channel(relid, 0).is_err() {
            check("MODIFYCHANNEL sent", false);
        }
        match next_event(bus) {
            GuestEvent::Modified { status: 0, .. } => {}
            e => {
                println!("vmbus-echo: MODIFYCHANNEL answered {e:?}");
                exit(1)
            }
        }
    }
    let (t1, s1) = (rdtsc(), world_switches(ch, relid));
    report("control message round trip", MODIFIES, t1 - t0, s1 - s0);

    let (s0, t0) = (world_switches(ch, relid), rdtsc());
    let connection = bus.offer(relid).map_or(0, |o| o.connection_id);
    let ok = (0..EVENTS)
        .filter(|_| signal_event(connection) == status::SUCCESS)
        .count();
    let (t1, s1) = (rdtsc(), world_switches(ch, relid));
    check(
        "HvSignalEvent on the channel's connection",
        ok as u64 == EVENTS,
    );
    report("signalled event", EVENTS, t1 - t0, s1 - s0);
    println!(
        "vmbus-echo: {} HvPostMessage retries for want of buffers",
        bus.port().retries
    );
}

/// Batches of 32 back to back, two in flight, with this side polling its
/// inbound ring (mask set, never sleeping) and the root polling while
/// packets keep coming (`vmbus::poll`): on two processors in steady state
/// neither side signals. Checks every echo, counts the signals each way.
fn stream(ch: &mut Chan, relid: u32, packet: &[u8; 64]) {
    const BATCH: u64 = 32;
    const BATCHES: u64 = 256;
    const TOTAL: u64 = BATCH * BATCHES;
    let mut packet = *packet;
    let (s0, t0) = (world_switches(ch, relid), rdtsc());
    let (signals0, sints0) = (
        SIGNALS.load(Ordering::Relaxed),
        SINTS.load(Ordering::Relaxed),
    );
    let _ = ch.set_polled(true);
    let (mut sent, mut received, mut intact) = (0, 0, true);
    while received < TOTAL {
        // The next batch, whole, when it keeps at most two in flight.
        if sent < TOTAL && sent + BATCH <= received + 2 * BATCH {
            let end = sent + BATCH;
            while sent < end {
                packet[8..16].copy_from_slice(&sent.to_le_bytes());
                let parts: [&[u8]; 1] = [&packet];
                match ch.send_quiet(&OutgoingPacket::in_band(sent, false, &parts)) {
                    Ok(SendResult::Sent) => sent += 1,
                    // Full: make room for the replies meanwhile.
                    _ => drain_stream(ch, &mut received, &mut intact),
                }
            }
            ch.flush();
        }
        drain_stream(ch, &mut received, &mut intact);
    }
    let late = ch.set_polled(false).unwrap_or(true);
    take_flag(relid);
    let (signals, sints) = (
        SIGNALS.load(Ordering::Relaxed) - signals0,
        SINTS.load(Ordering::Relaxed) - sints0,
    );
    let (t1, s1) = (rdtsc(), world_switches(ch, relid));
    check(
        "a stream of 256 batches of 32 echoed intact, in order, while polled",
        intact && !late,
    );
    report("stream of batches of 32, polled", BATCHES, t1 - t0, s1 - s0);
    println!(
        "vmbus-echo: stream: {signals} signals to the root, {sints} SINT interrupts from it, in {BATCHES} batches"
    );
    if let Some(hz) = tsc_hz() {
        println!(
            "vmbus-echo: stream: {} packets per second each way",
            BATCHES * BATCH * hz / (t1 - t0).max(1)
        );
    }
}

/// Reads the stream's echoes that are there, checking their order.
fn drain_stream(ch: &mut Chan, received: &mut u64, intact: &mut bool) {
    loop {
        match ch.recv() {
            Ok(Some(Ok(p))) => {
                let id = *received;
                *intact &=
                    p.transaction_id == id && p.payload.get(8..16) == Some(&id.to_le_bytes()[..]);
                *received += 1;
            }
            Ok(None) => return core::hint::spin_loop(),
            _ => {
                println!("vmbus-echo: the channel broke in the stream");
                exit(1)
            }
        }
    }
}

/// The TSC frequency from the Hyper-V MSR, if CPUID offers it.
fn tsc_hz() -> Option<u64> {
    // CPUID 0x40000003 EAX bit 11: the frequency MSRs.
    let leaf = core::arch::x86_64::__cpuid(0x4000_0003);
    (leaf.eax & (1 << 11) != 0).then(|| rdmsr(0x4000_0022))
}

/// A `vstor_packet` (64 bytes) asking for its completion: `operation`,
/// then `body` at 12.
fn vstor(operation: u32, body: &[u8]) -> [u8; 64] {
    let mut p = VstorPacket::request(operation);
    p.body.as_mut_bytes()[..body.len()].copy_from_slice(body);
    bytes_of(&p)
}

/// An EXECUTE_SRB request for path 0, target 0, LUN 0.
fn srb(cdb: &[u8], data_in: u8, length: u32) -> [u8; 64] {
    bytes_of(&VstorPacket::execute_srb(cdb, data_in, length))
}

fn bytes_of(p: &VstorPacket) -> [u8; 64] {
    let mut b = [0u8; 64];
    b.copy_from_slice(p.as_bytes());
    b
}

/// Sends one storage request (its data in the pages `range` names, if
/// any) and waits for its completion: the 64 bytes of the answer.
fn storage_call(
    ch: &mut Chan,
    relid: u32,
    id: u64,
    packet: &[u8],
    range: Option<(u32, &[u64])>,
) -> [u8; 64] {
    let parts: [&[u8]; 1] = [packet];
    let spec = range.map(|(count, pfns)| GpaRangeSpec {
        byte_count: count,
        byte_offset: 0,
        pfns,
    });
    let out = OutgoingPacket::request(id, spec.as_slice(), &parts);
    while !matches!(ch.send(&out), Ok(SendResult::Sent)) {
        sleep();
    }
    let mut reply = Vec::new();
    loop {
        if recv(ch, relid, &mut reply) == id {
            let mut answer = [0u8; 64];
            let n = reply.len().min(64);
            answer[..n].copy_from_slice(&reply[..n]);
            return answer;
        }
    }
}

fn status_of(answer: &[u8; 64]) -> u32 {
    u32::from_le_bytes(answer[8..12].try_into().unwrap_or([0; 4]))
}

/// The root's synthetic SCSI controller, used as Linux does and abused:
/// requests naming pages outside the guest, transfers longer than their
/// pages, unknown and short requests, reads past the end, a flood; each
/// gets an error status, the disk is untouched, and it still works.
fn storage(bus: &mut Bus, relid: u32, memory: u64, echo: (&mut Chan, u32)) {
    let mut ch = open(bus, relid, "the SCSI controller's channel");
    let mut id = 100;
    let mut call = |ch: &mut Chan, packet: &[u8], range: Option<(u32, &[u64])>| {
        id += 1;
        storage_call(ch, relid, id, packet, range)
    };
    let init = [
        call(&mut ch, &vstor(7, &[]), None),
        call(&mut ch, &vstor(9, &[0x02, 0x06]), None),
        call(&mut ch, &vstor(10, &[]), None),
        call(&mut ch, &vstor(8, &[]), None),
    ];
    check(
        "the SCSI controller initializes (protocol 6.2)",
        init.iter().all(|a| status_of(a) == 0),
    );
    let out_pfn = DATA_OUT.0.get() as u64 / PAGE;
    let in_pfn = DATA_IN.0.get() as u64 / PAGE;
    // SAFETY: our static page, not shared until the request names it.
    let pattern = unsafe { &mut *DATA_OUT.0.get() };
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = (i * 13 + 5) as u8;
    }
    let w = call(
        &mut ch,
        &srb(&rw10(0x2A, 8, 1), 0, 512),
        Some((512, &[out_pfn])),
    );
    let r = call(
        &mut ch,
        &srb(&rw10(0x28, 8, 1), 1, 512),
        Some((512, &[in_pfn])),
    );
    // SAFETY: the device wrote the page before it completed the request.
    let read = unsafe { &*DATA_IN.0.get() };
    check(
        "a block written from one page reads back into another",
        w[14] == 1 && r[14] == 1 && read[..512] == pattern[..512],
    );
    // Pages outside our memory: refused, the disk untouched.
    let outside = [memory / PAGE + 64];
    let bad_read = call(
        &mut ch,
        &srb(&rw10(0x28, 8, 1), 1, 512),
        Some((512, &outside)),
    );
    let bad_write = call(
        &mut ch,
        &srb(&rw10(0x2A, 8, 1), 0, 512),
        Some((512, &outside)),
    );
    // SAFETY: as above.
    unsafe { (*DATA_IN.0.get()).fill(0) };
    let again = call(
        &mut ch,
        &srb(&rw10(0x28, 8, 1), 1, 512),
        Some((512, &[in_pfn])),
    );
    // SAFETY: as above.
    let read = unsafe { &*DATA_IN.0.get() };
    check(
        "requests naming pages outside the guest are refused, the disk untouched",
        bad_read[14] == 0x06
            && bad_write[14] == 0x06
            && again[14] == 1
            && read[..512] == pattern[..512],
    );
    let long = call(
        &mut ch,
        &srb(&rw10(0x28, 0, 16), 1, 8192),
        Some((512, &[in_pfn])),
    );
    let unknown = call(&mut ch, &vstor(99, &[]), None);
    let short = call(&mut ch, &[3, 0, 0, 0, 1, 0, 0, 0], None);
    check(
        "a transfer longer than its pages, an unknown and a short request get error statuses",
        long[14] == 0x06 && status_of(&unknown) == 0xC000_0010 && status_of(&short) == 0xC000_000D,
    );
    // READ CAPACITY(10), then a read one block past the end.
    let cap = call(
        &mut ch,
        &srb(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 1, 8),
        Some((8, &[in_pfn])),
    );
    // SAFETY: as above.
    let page = unsafe { &*DATA_IN.0.get() };
    let last = u32::from_be_bytes(page[..4].try_into().unwrap_or([0; 4]));
    let past = call(
        &mut ch,
        &srb(&rw10(0x28, last + 1, 1), 1, 512),
        Some((512, &[in_pfn])),
    );
    check(
        "a read past the end gets CHECK CONDITION, LBA out of range",
        cap[14] == 1
            && last > 0
            && past[15] == 2
            && past[14] == 0x84
            && past[30] == 5
            && past[40] == 0x21,
    );
    // A flood: requests sent until the ring is full, every one answered.
    let tur = srb(&[0, 0, 0, 0, 0, 0], 2, 0);
    let mut sent = 0u64;
    while sent < 1000 {
        let parts: [&[u8]; 1] = [&tur];
        let p = OutgoingPacket::in_band(10_000 + sent, true, &parts);
        if !matches!(ch.send(&p), Ok(SendResult::Sent)) {
            break;
        }
        sent += 1;
    }
    let mut answered = 0;
    let mut reply = Vec::new();
    while answered < sent {
        if recv(&mut ch, relid, &mut reply) >= 10_000 {
            answered += 1;
        }
    }
    println!(
        "vmbus-echo: storage: {sent} requests sent until the ring was full, {answered} answered"
    );
    let ok = call(
        &mut ch,
        &srb(&rw10(0x28, 8, 1), 1, 512),
        Some((512, &[in_pfn])),
    );
    check("after all that the disk still reads", ok[14] == 1);
    storage_bench(bus, &mut ch, relid, echo);
    drop(ch);
    let closed = bus.close_channel(relid).is_ok();
    let torn_down = matches!(next_event(bus), GuestEvent::GpadlTornDown { .. });
    check("the SCSI controller's channel closes", closed && torn_down);
}

/// The figures `cargo xtask bench` reads: 64 KiB requests through the SCSI
/// controller, read and written (each waited for), and, for scale, a
/// 64 KiB copy between two of our own buffers (what reading a RAM disk
/// costs the root at least).
fn storage_bench(bus: &mut Bus, ch: &mut Chan, relid: u32, echo: (&mut Chan, u32)) {
    const REQUESTS: u64 = 64;
    const BYTES: u32 = 64 << 10;
    let pages = bus.port().alloc_pages(32).unwrap_or_default();
    if pages.len() != 32 {
        check("pages for the storage benchmark", false);
    }
    let (buffer, other) = pages.split_at(16);
    let (echo_ch, echo_relid) = echo;
    let mut id = 50_000;
    for (what, op, data_in) in [("read", 0x28u8, 1u8), ("write", 0x2A, 0)] {
        let switches = world_switches(echo_ch, echo_relid);
        let start = rdtsc();
        let mut good = 0;
        for i in 0..REQUESTS {
            id += 1;
            let lba = (i % 16) as u32 * (BYTES / 512);
            let a = storage_call(
                ch,
                relid,
                id,
                &srb(&rw10(op, lba, (BYTES / 512) as u16), data_in, BYTES),
                Some((BYTES, buffer)),
            );
            good += u64::from(a[14] == 1);
        }
        let ticks = rdtsc() - start;
        let switches = world_switches(echo_ch, echo_relid) - switches;
        check("every 64 KiB request succeeded", good == REQUESTS);
        report(
            &alloc::format!("storage {what} of 64 KiB"),
            REQUESTS,
            ticks,
            switches,
        );
    }
    let (from, to) = (buffer[0] * PAGE, other[0] * PAGE);
    let start = rdtsc();
    for _ in 0..REQUESTS {
        // SAFETY: two runs of 16 pages of ours (`alloc_pages`), apart.
        unsafe { core::ptr::copy_nonoverlapping(from as *const u8, to as *mut u8, BYTES as usize) };
    }
    let ticks = rdtsc() - start;
    report("memory copy of 64 KiB", REQUESTS, ticks, 0);
}

/// An NVSP message (40 bytes, as Linux sends): type, then fields.
fn nvsp(kind: u32, fields: &[u32]) -> [u8; 40] {
    let mut m = [0u8; 40];
    m[..4].copy_from_slice(&kind.to_le_bytes());
    for (i, f) in fields.iter().enumerate() {
        m[4 + 4 * i..8 + 4 * i].copy_from_slice(&f.to_le_bytes());
    }
    m
}

fn word(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |w| u32::from_le_bytes(w.try_into().unwrap_or([0; 4])))
}

/// An RNDIS message: type, length, then fields; `tail` after them.
fn rndis(kind: u32, fields: &[u32], tail: &[u8]) -> Vec<u8> {
    let len = 8 + 4 * fields.len() + tail.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&kind.to_le_bytes());
    m.extend_from_slice(&(len as u32).to_le_bytes());
    for f in fields {
        m.extend_from_slice(&f.to_le_bytes());
    }
    m.extend_from_slice(tail);
    m
}

/// The network adapter as a driver sees it: its channel, its two buffers
/// (identity-mapped pages of ours), and the RNDIS messages the device
/// placed in the receive buffer, in order.
struct Nic {
    ch: Chan,
    relid: u32,
    recv_at: u64,
    recv_len: usize,
    send_at: u64,
    next_id: u64,
    from_device: alloc::collections::VecDeque<Vec<u8>>,
    /// Transfer-pages packets whose ranges were not inside our buffer.
    bad_transfers: u64,
}

impl Nic {
    /// Reads one packet (sleeping until there is one): a completion is
    /// returned (id, payload); a transfer-pages packet's RNDIS messages
    /// are copied out of the receive buffer, the packet completed, and
    /// `None` returned.
    fn pump(&mut self) -> Option<(u64, Vec<u8>)> {
        loop {
            take_flag(self.relid);
            let (id, completion, payload, ranges) = match self.ch.recv() {
                Ok(Some(Ok(p))) => {
                    let ranges: Vec<(u32, u32)> = p
                        .kind
                        .transfer_ranges()
                        .map(|r| (r.byte_offset, r.byte_count))
                        .collect();
                    let completion = matches!(p.kind, vmbus::packet::PacketKind::Completion);
                    (p.transaction_id, completion, p.payload.to_vec(), ranges)
                }
                Ok(Some(Err(e))) => {
                    println!("vmbus-echo: a malformed packet from the network adapter: {e:?}");
                    exit(1)
                }
                Ok(None) => {
                    sleep();
                    continue;
                }
                Err(e) => {
                    println!("vmbus-echo: the network channel broke: {e:?}");
                    exit(1)
                }
            };
            if completion {
                return Some((id, payload));
            }
            for (offset, count) in ranges {
                let (offset, count) = (offset as usize, count as usize);
                if offset + count > self.recv_len {
                    self.bad_transfers += 1;
                    continue;
                }
                let mut m = alloc::vec![0u8; count];
                // SAFETY: inside our receive buffer (checked), pages of ours
                // the device wrote before it sent the packet.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        (self.recv_at as usize + offset) as *const u8,
                        m.as_mut_ptr(),
                        count,
                    )
                };
                self.from_device.push_back(m);
            }
            let done = nvsp(108, &[1]);
            let parts: [&[u8]; 1] = [&done];
            while !matches!(
                self.ch.send(&OutgoingPacket::completion(id, &parts)),
                Ok(SendResult::Sent)
            ) {
                sleep();
            }
            return None;
        }
    }

    /// Sends an NVSP message asking for its completion (with `ranges` as
    /// GPA-direct data, if any); waits for the completion's payload.
    fn call(&mut self, message: &[u8], ranges: &[GpaRangeSpec<'_>]) -> Vec<u8> {
        self.next_id += 1;
        let id = self.next_id;
        let parts: [&[u8]; 1] = [message];
        let out = OutgoingPacket::request(id, ranges, &parts);
        while !matches!(self.ch.send(&out), Ok(SendResult::Sent)) {
            sleep();
        }
        loop {
            if let Some((got, payload)) = self.pump() {
                if got == id {
                    return payload;
                }
            }
        }
    }

    /// An NVSP message without a completion (as Linux sends NDIS_CONFIG).
    fn post(&mut self, message: &[u8]) {
        let parts: [&[u8]; 1] = [message];
        while !matches!(
            self.ch
                .send(&OutgoingPacket::in_band(u64::MAX - 2, false, &parts)),
            Ok(SendResult::Sent)
        ) {
            sleep();
        }
    }

    /// An RNDIS message through send section `section`: the NVSP status.
    fn rndis_in_section(&mut self, section: u32, m: &[u8]) -> u32 {
        // SAFETY: inside our send buffer (sections of 6144 bytes, four of
        // them; callers pass 0..4 and messages shorter than a section).
        unsafe {
            core::ptr::copy_nonoverlapping(
                m.as_ptr(),
                (self.send_at as usize + section as usize * 6144) as *mut u8,
                m.len(),
            )
        };
        word(
            &self.call(&nvsp(107, &[1, section, m.len() as u32]), &[]),
            4,
        )
    }

    /// The next RNDIS message from the device.
    fn answer(&mut self) -> Vec<u8> {
        loop {
            if let Some(m) = self.from_device.pop_front() {
                return m;
            }
            self.pump();
        }
    }
}

/// The root's synthetic network adapter, used as Linux's hv_netvsc does
/// (NVSP version 2, receive and send buffers, RNDIS initialize, query,
/// set), then abused: data in pages outside the guest, lengths past their
/// bytes, a send section past the buffer, a runt frame, a completion that
/// names nothing, and a flood of frames. Each gets a failure status or is
/// dropped and counted; the adapter still answers.
fn network(bus: &mut Bus, relid: u32, memory: u64) {
    let ch = open(bus, relid, "the network adapter's channel");
    let (recv_pages, send_pages) = (16usize, 6usize);
    let (Some(recv), Some(send)) = (
        bus.port().alloc_pages(recv_pages),
        bus.port().alloc_pages(send_pages),
    ) else {
        check("pages for the network buffers", false);
        exit(1)
    };
    let mut nic = Nic {
        ch,
        relid,
        recv_at: recv[0] * PAGE,
        recv_len: recv_pages * PAGE as usize,
        send_at: send[0] * PAGE,
        next_id: 0,
        from_device: alloc::collections::VecDeque::new(),
        bad_transfers: 0,
    };
    let too_new = nic.call(&nvsp(1, &[0x60001, 0x60001]), &[]);
    let v2 = nic.call(&nvsp(1, &[0x30002, 0x30002]), &[]);
    check(
        "NVSP: version 6.1 refused, version 2 taken",
        word(&too_new, 0) == 2 && word(&too_new, 12) == 2 && word(&v2, 12) == 1,
    );
    nic.post(&nvsp(125, &[1514, 0, 8, 0]));
    nic.post(&nvsp(100, &[6, 1]));
    let mut gpadl = |pfns: &[u64]| {
        let range = GpadlRange {
            byte_count: (pfns.len() as u64 * PAGE) as u32,
            byte_offset: 0,
            pfns,
        };
        let id = bus.create_gpadl(relid, &[range]).unwrap_or(0);
        let ok = matches!(next_event(bus), GuestEvent::GpadlCreated { status: 0, .. });
        check("a GPADL for a network buffer", ok);
        id
    };
    let (recv_gpadl, send_gpadl) = (gpadl(&recv), gpadl(&send));
    let r = nic.call(&nvsp(101, &[recv_gpadl, 0xCAFE]), &[]);
    let sections = (recv_pages as u32 * 4096) / word(&r, 16).max(1);
    let s = nic.call(&nvsp(104, &[send_gpadl, 0]), &[]);
    check(
        "receive buffer (one section of sub-allocations) and send buffer taken",
        word(&r, 0) == 102
            && word(&r, 4) == 1
            && word(&r, 8) == 1
            && word(&r, 20) == sections
            && word(&s, 0) == 105
            && word(&s, 4) == 1
            && word(&s, 8) == 6144,
    );
    let init = nic.rndis_in_section(0, &rndis(2, &[1, 1, 0, 0x4000], &[]));
    let a = nic.answer();
    let initialized =
        init == 1 && word(&a, 0) == 0x8000_0002 && word(&a, 8) == 1 && word(&a, 12) == 0;
    let query = nic.rndis_in_section(0, &rndis(4, &[2, 0x0101_0101, 0, 20, 0], &[]));
    let a = nic.answer();
    let (len, off) = (word(&a, 16) as usize, word(&a, 20) as usize);
    let mac = a
        .get(8 + off..8 + off + len)
        .map(|m| m.to_vec())
        .unwrap_or_default();
    let set = nic.rndis_in_section(
        0,
        &rndis(5, &[3, 0x0001_010E, 4, 20, 0], &9u32.to_le_bytes()),
    );
    let set_done = nic.answer();
    check(
        "RNDIS initialized, the address queried, the packet filter set",
        initialized
            && query == 1
            && word(&a, 12) == 0
            && mac.len() == 6
            && set == 1
            && word(&set_done, 0) == 0x8000_0005
            && word(&set_done, 12) == 0,
    );
    println!(
        "vmbus-echo: the adapter's address is {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    );

    // Hostile messages: each gets NVSP status 2 (failure).
    let outside = [memory / PAGE + 64];
    let range = GpaRangeSpec {
        byte_count: 100,
        byte_offset: 0,
        pfns: &outside,
    };
    let a = word(&nic.call(&nvsp(107, &[0, u32::MAX, 0]), &[range]), 4);
    let mut long = rndis(1, &[36, 60, 0, 0, 0, 36, 0, 0, 0], &[0xff; 60]);
    long[4..8].copy_from_slice(&5000u32.to_le_bytes());
    let b = nic.rndis_in_section(1, &long);
    let c = word(&nic.call(&nvsp(107, &[0, 1000, 64]), &[]), 4);
    let d = nic.rndis_in_section(1, &rndis(1, &[36, 10, 0, 0, 0, 36, 0, 0, 0], &[0xff; 10]));
    let e = nic.rndis_in_section(1, &rndis(0x77, &[1, 2, 3], &[]));
    check(
        "data in pages outside the guest, a length past its bytes, a section past the buffer, a runt frame, an unknown RNDIS message: failure statuses",
        [a, b, c, d, e] == [2; 5],
    );
    // A completion naming no receive: dropped (the root counts it).
    let done = nvsp(108, &[1]);
    let parts: [&[u8]; 1] = [&done];
    let _ = nic.ch.send(&OutgoingPacket::completion(0xBAD, &parts));

    // A flood: broadcast frames sent until the ring is full; each completed.
    let mut frame = [0x5au8; 60];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&mac);
    let packet = rndis(1, &[36, 60, 0, 0, 0, 36, 0, 0, 0], &frame);
    // SAFETY: send section 2 of our send buffer.
    unsafe {
        core::ptr::copy_nonoverlapping(
            packet.as_ptr(),
            (nic.send_at as usize + 2 * 6144) as *mut u8,
            packet.len(),
        )
    };
    let message = nvsp(107, &[0, 2, packet.len() as u32]);
    let mut sent = 0u64;
    while sent < 2000 {
        let parts: [&[u8]; 1] = [&message];
        let p = OutgoingPacket::in_band(50_000 + sent, true, &parts);
        if !matches!(nic.ch.send(&p), Ok(SendResult::Sent)) {
            break;
        }
        sent += 1;
    }
    let mut completed = 0;
    while completed < sent {
        if let Some((id, payload)) = nic.pump() {
            if id >= 50_000 && word(&payload, 4) == 1 {
                completed += 1;
            }
        }
    }
    println!(
        "vmbus-echo: network: {sent} frames sent until the ring was full, {completed} completed"
    );
    let again = nic.rndis_in_section(0, &rndis(4, &[4, 0x0001_0114, 0, 20, 0], &[]));
    let a = nic.answer();
    check(
        "after all that the adapter still answers (media connected)",
        again == 1 && word(&a, 12) == 0 && word(&a, 24) == 0 && nic.bad_transfers == 0,
    );
    drop(nic);
    let closed = bus.close_channel(relid).is_ok();
    let torn_down = matches!(next_event(bus), GuestEvent::GpadlTornDown { .. });
    check("the network adapter's channel closes", closed && torn_down);
}
