//! An in-process stand-in for SynIC and guest memory, so the host and guest
//! state machines can talk to each other in tests (single-threaded message
//! pumping; the rings themselves may be used from other threads).
//!
//! Messages are queued both ways; event signals are counted per relid
//! (host->guest) and per connection id (guest->host); guest pages come from
//! a [`GuestRam`] and are handed out in descending order so page lists are
//! never contiguous.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::channel::Notify;
use crate::guest::{GuestPort, PostError};
use crate::host::HostPort;
use crate::shared_mem::{GuestRam, PagedRing};

/// A message posted by the host to a guest VP's SIM slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToGuest {
    /// Target VP.
    pub vp: u32,
    /// SINT.
    pub sint: u8,
    /// VMBus message bytes.
    pub bytes: Vec<u8>,
}

/// Shared simulation state.
pub struct SimBus {
    /// Guest-physical memory.
    pub ram: Arc<GuestRam>,
    /// Messages the guest posted: (connection id, bytes).
    pub to_host: VecDeque<(u32, Vec<u8>)>,
    /// Messages the host posted.
    pub to_guest: VecDeque<ToGuest>,
    /// Connection ids whose HvPostMessage fails.
    pub failing_connection_ids: Vec<u32>,
    free_pages: Vec<u64>,
    guest_events: BTreeMap<u32, Arc<AtomicU64>>,
    host_events: BTreeMap<u32, Arc<AtomicU64>>,
}

/// Handle shared by the two ports and the test.
pub type SharedBus = Rc<RefCell<SimBus>>;

impl SimBus {
    /// A bus with `pages` pages of guest RAM. Page 0..16 are never handed
    /// out by the allocator, so tests can use them as DMA buffers.
    pub fn new(pages: usize) -> SharedBus {
        Rc::new(RefCell::new(SimBus {
            ram: Arc::new(GuestRam::new(pages)),
            to_host: VecDeque::new(),
            to_guest: VecDeque::new(),
            failing_connection_ids: Vec::new(),
            free_pages: (16..pages as u64).collect(),
            guest_events: BTreeMap::new(),
            host_events: BTreeMap::new(),
        }))
    }

    fn counter(map: &mut BTreeMap<u32, Arc<AtomicU64>>, key: u32) -> Arc<AtomicU64> {
        map.entry(key).or_default().clone()
    }

    /// Times the host signalled the guest for channel `relid`.
    pub fn guest_signals(&mut self, relid: u32) -> u64 {
        Self::counter(&mut self.guest_events, relid).load(Ordering::Relaxed)
    }

    /// Times the guest signalled the host on `connection_id`.
    pub fn host_signals(&mut self, connection_id: u32) -> u64 {
        Self::counter(&mut self.host_events, connection_id).load(Ordering::Relaxed)
    }

    /// Pages currently free.
    pub fn free_page_count(&self) -> usize {
        self.free_pages.len()
    }
}

/// Counts signals.
pub struct SimNotifier(Arc<AtomicU64>);

impl Notify for SimNotifier {
    fn notify(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The host's view of the bus.
pub struct SimHostPort(pub SharedBus);

impl HostPort for SimHostPort {
    type Ring = PagedRing;
    type Notifier = SimNotifier;

    fn post_message(&mut self, target_vp: u32, sint: u8, message: &[u8]) {
        self.0.borrow_mut().to_guest.push_back(ToGuest {
            vp: target_vp,
            sint,
            bytes: message.to_vec(),
        });
    }

    fn map_ring(&mut self, pfns: &[u64]) -> Option<PagedRing> {
        PagedRing::new(self.0.borrow().ram.clone(), pfns).ok()
    }

    fn is_guest_page(&self, pfn: u64) -> bool {
        pfn < self.0.borrow().ram.pages() as u64
    }

    fn notifier(&mut self, _target_vp: u32, _sint: u8, relid: u32) -> SimNotifier {
        SimNotifier(SimBus::counter(
            &mut self.0.borrow_mut().guest_events,
            relid,
        ))
    }
}

/// The guest's view of the bus.
pub struct SimGuestPort(pub SharedBus);

impl GuestPort for SimGuestPort {
    type Ring = PagedRing;
    type Notifier = SimNotifier;

    fn post_message(&mut self, connection_id: u32, message: &[u8]) -> Result<(), PostError> {
        let mut bus = self.0.borrow_mut();
        if bus.failing_connection_ids.contains(&connection_id) {
            return Err(PostError);
        }
        bus.to_host.push_back((connection_id, message.to_vec()));
        Ok(())
    }

    fn alloc_pages(&mut self, count: usize) -> Option<Vec<u64>> {
        let mut bus = self.0.borrow_mut();
        if bus.free_pages.len() < count {
            return None;
        }
        let at = bus.free_pages.len() - count;
        let mut pfns = bus.free_pages.split_off(at);
        pfns.reverse();
        bus.ram.zero_pages(&pfns).ok()?;
        Some(pfns)
    }

    fn free_pages(&mut self, pfns: &[u64]) {
        let mut bus = self.0.borrow_mut();
        bus.free_pages.extend(pfns.iter().rev());
    }

    fn map_ring(&mut self, pfns: &[u64]) -> Option<PagedRing> {
        PagedRing::new(self.0.borrow().ram.clone(), pfns).ok()
    }

    fn notifier(&mut self, connection_id: u32) -> SimNotifier {
        SimNotifier(SimBus::counter(
            &mut self.0.borrow_mut().host_events,
            connection_id,
        ))
    }
}
