//! The synthetic interrupt controller of every VP, root and guest (TLFS
//! "Inter-Partition Communication"): the SCONTROL, SIMP, SIEFP, SINTx and
//! EOM MSRs, message delivery into the SIMP page and event flags in the
//! SIEFP page. A message goes into its SINT's slot when the slot is empty
//! (type 0) and the SINT's vector is raised; otherwise it waits in the VP's
//! queue and the slot's MessagePending flag asks the partition to write EOM
//! once it has emptied the slot, which delivers the next. An event sets one
//! flag bit atomically and raises the vector when the bit was clear.
//!
//! The pages are partition memory: reached only through [`Owner`], which
//! turns a partition address into root RAM the partition may write.
use crate::lp_state;
use crate::partition_memory::PartitionMemory;
use crate::root::{self, RootPartition};
use alloc::collections::VecDeque;
use core::sync::atomic::{AtomicU64, Ordering};
use hv_abi::synic::{
    self as abi, msr, Message, EVENT_FLAGS_BYTES, EVENT_FLAGS_PER_SINT, MESSAGE_PENDING, SLOT_SIZE,
};
use spin::Mutex;

/// Messages from one sender a SINT's queue holds at most: the sender's next
/// post gets INSUFFICIENT_BUFFERS (and retries), so no sender can fill the
/// hypervisor's memory or crowd out the others. Intercept messages are
/// exempt: a VP has at most one outstanding.
pub const QUEUE_PER_SENDER: usize = 16;

/// Where a VP's SynIC pages are and how its interrupts are raised.
pub trait Owner {
    /// The root-RAM address of the partition's page at `gpa` (4 KiB
    /// aligned), if the partition may write it.
    fn page(&self, gpa: u64) -> Option<u64>;
    /// Root RAM, which holds every partition's pages.
    fn memory(&self) -> PartitionMemory<'_>;
    /// Requests interrupt `vector` in the VP.
    fn raise(&self, vector: u8);
}

/// A root VP.
pub struct RootVp<'a>(pub &'a RootPartition, pub u32);

impl Owner for RootVp<'_> {
    fn page(&self, gpa: u64) -> Option<u64> {
        self.0.owns(gpa, 4096).then_some(gpa)
    }
    fn memory(&self) -> PartitionMemory<'_> {
        self.0.memory()
    }
    fn raise(&self, vector: u8) {
        root::raise_interrupt(self.1, vector);
    }
}

/// Why a message or event could not be delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// SCONTROL off, the page off, or the SINT masked (INVALID_SYNIC_STATE).
    Disabled,
    /// The sender's share of the queue is full (INSUFFICIENT_BUFFERS).
    Full,
}

pub struct SynIc {
    scontrol: AtomicU64,
    simp: AtomicU64,
    siefp: AtomicU64,
    sint: [AtomicU64; 16],
    /// Messages waiting for their slot, with their SINT.
    queue: Mutex<VecDeque<(usize, Message)>>,
}

impl Default for SynIc {
    fn default() -> Self {
        Self::new()
    }
}

impl SynIc {
    /// As after a reset: everything off, every SINT masked.
    pub const fn new() -> Self {
        SynIc {
            scontrol: AtomicU64::new(0),
            simp: AtomicU64::new(0),
            siefp: AtomicU64::new(0),
            sint: [const { AtomicU64::new(msr::SINT_MASKED) }; 16],
            queue: Mutex::new(VecDeque::new()),
        }
    }

    /// Back to the reset state; undelivered messages are dropped.
    pub fn reset(&self) {
        let mut q = self.queue.lock();
        q.clear();
        self.scontrol.store(0, Ordering::Relaxed);
        self.simp.store(0, Ordering::Relaxed);
        self.siefp.store(0, Ordering::Relaxed);
        for s in &self.sint {
            s.store(msr::SINT_MASKED, Ordering::Relaxed);
        }
    }

    /// RDMSR of a SynIC register; `None` if `m` is not one.
    pub fn read_msr(&self, m: u32) -> Option<u64> {
        Some(match m {
            msr::SCONTROL => self.scontrol.load(Ordering::Relaxed),
            msr::SVERSION => 1,
            msr::SIEFP => self.siefp.load(Ordering::Relaxed),
            msr::SIMP => self.simp.load(Ordering::Relaxed),
            msr::EOM => 0,
            msr::SINT0..=msr::SINT15 => {
                self.sint[(m - msr::SINT0) as usize].load(Ordering::Relaxed)
            }
            _ => return None,
        })
    }

    /// WRMSR of a SynIC register; `None` if `m` is not one, `Some(false)`
    /// for a value the register refuses (#GP). `auto_eoi`: whether a SINT
    /// may ask for AutoEOI (guests may not: their CPUID recommends against
    /// it and their virtual APIC does not do it).
    pub fn write_msr(&self, owner: &dyn Owner, m: u32, v: u64, auto_eoi: bool) -> Option<bool> {
        let page_ok = |v: u64| v & msr::PAGE_ENABLE == 0 || owner.page(v & !0xFFF).is_some();
        Some(match m {
            msr::SCONTROL => {
                self.scontrol.store(v & 1, Ordering::Relaxed);
                self.deliver_queued(owner);
                true
            }
            msr::SVERSION => false,
            msr::SIEFP if page_ok(v) => {
                self.siefp.store(v & !0xFFE, Ordering::Relaxed);
                true
            }
            msr::SIMP if page_ok(v) => {
                self.simp.store(v & !0xFFE, Ordering::Relaxed);
                self.deliver_queued(owner);
                true
            }
            msr::SIEFP | msr::SIMP => false,
            msr::EOM => {
                self.deliver_queued(owner);
                true
            }
            // Vector 7:0 (16 and above), masked 16, auto-EOI 17; the rest
            // reserved.
            msr::SINT0..=msr::SINT15 => {
                let vector = v & 0xFF;
                let allowed = if auto_eoi { 0x3_00FF } else { 0x1_00FF };
                if v & !allowed != 0 || (v & msr::SINT_MASKED == 0 && vector < 16) {
                    false
                } else {
                    self.sint[(m - msr::SINT0) as usize].store(v, Ordering::Relaxed);
                    self.deliver_queued(owner);
                    true
                }
            }
            _ => return None,
        })
    }

    /// The vectors of the unmasked SINTs that ask for AutoEOI, a bit each
    /// (for the VP's APIC: they are never put in service).
    pub fn auto_eoi_vectors(&self) -> [u32; 8] {
        let mut vectors = [0u32; 8];
        for sint in &self.sint {
            let v = sint.load(Ordering::Relaxed);
            if v & msr::SINT_AUTO_EOI != 0 && v & msr::SINT_MASKED == 0 {
                vectors[(v as u8 / 32) as usize] |= 1 << (v as u8 % 32);
            }
        }
        vectors
    }

    fn enabled(&self) -> bool {
        self.scontrol.load(Ordering::Relaxed) & 1 != 0
    }

    /// Whether SINT `sint` takes messages now: the SynIC and its page on,
    /// the SINT unmasked.
    pub fn accepts(&self, sint: usize) -> bool {
        self.enabled()
            && self.simp.load(Ordering::Relaxed) & msr::PAGE_ENABLE != 0
            && self.sint[sint % 16].load(Ordering::Relaxed) & msr::SINT_MASKED == 0
    }

    /// The root-RAM address of `sint`'s SIMP slot, when the page is enabled
    /// and the SynIC is on.
    fn slot<O: Owner + ?Sized>(&self, owner: &O, sint: usize) -> Option<u64> {
        let simp = self.simp.load(Ordering::Relaxed);
        if !self.enabled() || simp & msr::PAGE_ENABLE == 0 {
            return None;
        }
        Some(owner.page(simp & !0xFFF)? + (sint * SLOT_SIZE) as u64)
    }

    /// Writes `m` into the slot if it is empty; raises the SINT's vector.
    fn try_place<O: Owner + ?Sized>(&self, owner: &O, sint: usize, m: &Message) -> bool {
        let Some(at) = self.slot(owner, sint) else {
            return false;
        };
        let mem = owner.memory();
        // An emptied slot has type 0; the rest of its header is stale.
        let old = match mem.read_u64(at) {
            Ok(head) if head as u32 == abi::kind::NONE => head,
            _ => return false,
        };
        let header = m.header();
        // The body first, the header (with the type) last: the partition
        // sees a message only when it is complete. Only the payload bytes
        // the header counts: the rest of the slot is the partition's own
        // earlier message, or zero.
        if mem.write(at + 8, &header[8..]).is_err() || mem.write(at + 16, m.used_payload()).is_err()
        {
            return false;
        }
        let head = u64::from_le_bytes(header[..8].try_into().unwrap_or([0; 8]));
        if mem.compare_exchange_u64(at, old, head).is_err() {
            return false;
        }
        self.raise(owner, sint);
        true
    }

    fn raise<O: Owner + ?Sized>(&self, owner: &O, sint: usize) {
        let sint_reg = self.sint[sint].load(Ordering::Relaxed);
        if sint_reg & msr::SINT_MASKED == 0 {
            owner.raise(sint_reg as u8);
        }
    }

    /// Posts a message on `sint` (0-15). `limit`: refuse it when the queue
    /// already holds that many of the same sender's messages for the SINT,
    /// or when the SINT does not take messages; `None` for the hypervisor's
    /// own (intercept) messages, which always queue.
    pub fn post<O: Owner + ?Sized>(
        &self,
        owner: &O,
        sint: usize,
        m: &Message,
        limit: Option<usize>,
    ) -> Result<(), Refused> {
        let sint = sint % 16;
        let mut q = self.queue.lock();
        if let Some(limit) = limit {
            if !self.accepts(sint) {
                return Err(Refused::Disabled);
            }
            let queued = q
                .iter()
                .filter(|(n, o)| *n == sint && o.sender == m.sender)
                .count();
            if queued >= limit {
                return Err(Refused::Full);
            }
        }
        if q.iter().any(|(n, _)| *n == sint) || !self.try_place(owner, sint, m) {
            q.push_back((sint, *m));
            drop(q);
            self.mark_pending(owner, sint);
        }
        Ok(())
    }

    /// Sets MessagePending in an occupied slot; if the partition emptied
    /// the slot meanwhile, delivers from the queue instead (it will not
    /// write EOM).
    fn mark_pending<O: Owner + ?Sized>(&self, owner: &O, sint: usize) {
        let Some(at) = self.slot(owner, sint) else {
            return;
        };
        let mem = owner.memory();
        loop {
            let Ok(head) = mem.read_u64(at) else {
                return;
            };
            if head as u32 == abi::kind::NONE {
                self.deliver_queued(owner);
                return;
            }
            let flagged = head | (MESSAGE_PENDING as u64) << 40;
            if flagged == head || mem.compare_exchange_u64(at, head, flagged).is_ok() {
                return;
            }
        }
    }

    /// Moves queued messages into their slots while the slots are empty.
    pub fn deliver_queued<O: Owner + ?Sized>(&self, owner: &O) {
        let mut q = self.queue.lock();
        let mut i = 0;
        while i < q.len() {
            let (sint, m) = q[i];
            // Messages of one SINT keep their order.
            if q.iter().take(i).any(|(n, _)| *n == sint) {
                i += 1;
                continue;
            }
            if self.try_place(owner, sint, &m) {
                q.remove(i);
                if q.iter().any(|(n, _)| *n == sint) {
                    drop(q);
                    self.mark_pending(owner, sint);
                    q = self.queue.lock();
                }
            } else {
                i += 1;
            }
        }
    }

    /// Sets event flag `flag` of `sint` (TLFS "SynIC event flags"); raises
    /// the SINT's vector when the flag was clear. `Ok(newly set)`.
    pub fn signal<O: Owner + ?Sized>(
        &self,
        owner: &O,
        sint: usize,
        flag: u32,
    ) -> Result<bool, Refused> {
        let sint = sint % 16;
        let siefp = self.siefp.load(Ordering::Relaxed);
        if !self.enabled() || siefp & msr::PAGE_ENABLE == 0 || flag >= EVENT_FLAGS_PER_SINT {
            return Err(Refused::Disabled);
        }
        let page = owner.page(siefp & !0xFFF).ok_or(Refused::Disabled)?;
        let word = page + (sint * EVENT_FLAGS_BYTES) as u64 + u64::from(flag / 64) * 8;
        let bit = 1u64 << (flag % 64);
        let old = owner
            .memory()
            .fetch_or_u64(word, bit)
            .map_err(|_| Refused::Disabled)?;
        let newly = old & bit == 0;
        if newly {
            self.raise(owner, sint);
        }
        Ok(newly)
    }
}

static ROOT_SYNICS: [SynIc; lp_state::MAX_LPS] = [const { SynIc::new() }; lp_state::MAX_LPS];

/// The SynIC of root VP `vp`.
pub fn root_synic(vp: u32) -> &'static SynIc {
    &ROOT_SYNICS[vp as usize % lp_state::MAX_LPS]
}

/// Posts a hypervisor message (an intercept) on `sint` of root VP `vp`.
pub fn post_to_root(root: &RootPartition, vp: u32, sint: usize, m: &Message) {
    let _ = root_synic(vp).post(&RootVp(root, vp), sint, m, None);
}
