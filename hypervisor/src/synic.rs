//! The root's synthetic interrupt controller (TLFS "Inter-Partition
//! Communication"): per root VP the SCONTROL, SIMP, SIEFP and SINTx MSRs,
//! and message delivery into the SIMP page. A message goes into its SINT's
//! slot when the slot is empty (type 0) and the SINT's vector is raised;
//! otherwise it waits in a queue and the slot's MessagePending flag asks the
//! root to write EOM once it has emptied the slot, which delivers the next.
use crate::lp_state;
use crate::root::{self, RootPartition};
use alloc::collections::VecDeque;
use core::sync::atomic::{AtomicU64, Ordering};
use hv_abi::synic::{self as abi, msr, Message, MESSAGE_PENDING, SLOT_SIZE};
use spin::Mutex;

pub struct SynIc {
    scontrol: AtomicU64,
    simp: AtomicU64,
    siefp: AtomicU64,
    sint: [AtomicU64; 16],
    /// Messages waiting for their slot, with their SINT.
    queue: Mutex<VecDeque<(usize, Message)>>,
}

static ROOT_SYNICS: [SynIc; lp_state::MAX_LPS] = [const {
    SynIc {
        scontrol: AtomicU64::new(0),
        simp: AtomicU64::new(0),
        siefp: AtomicU64::new(0),
        sint: [const { AtomicU64::new(msr::SINT_MASKED) }; 16],
        queue: Mutex::new(VecDeque::new()),
    }
}; lp_state::MAX_LPS];

fn synic(vp: u32) -> &'static SynIc {
    &ROOT_SYNICS[vp as usize % lp_state::MAX_LPS]
}

/// RDMSR of a SynIC register by root VP `vp`; `None` if `m` is not one.
pub fn read_msr(vp: u32, m: u32) -> Option<u64> {
    let s = synic(vp);
    Some(match m {
        msr::SCONTROL => s.scontrol.load(Ordering::Relaxed),
        msr::SVERSION => 1,
        msr::SIEFP => s.siefp.load(Ordering::Relaxed),
        msr::SIMP => s.simp.load(Ordering::Relaxed),
        msr::EOM => 0,
        msr::SINT0..=msr::SINT15 => s.sint[(m - msr::SINT0) as usize].load(Ordering::Relaxed),
        _ => return None,
    })
}

/// WRMSR of a SynIC register; `None` if `m` is not one, `Some(false)` for a
/// value the register refuses (#GP).
pub fn write_msr(root: &RootPartition, vp: u32, m: u32, v: u64) -> Option<bool> {
    let s = synic(vp);
    let page_ok = |v: u64| v & msr::PAGE_ENABLE == 0 || root.owns(v & !0xFFF, 4096);
    Some(match m {
        msr::SCONTROL => {
            s.scontrol.store(v & 1, Ordering::Relaxed);
            deliver_queued(root, vp);
            true
        }
        msr::SVERSION => false,
        msr::SIEFP if page_ok(v) => {
            s.siefp.store(v & !0xFFE, Ordering::Relaxed);
            true
        }
        msr::SIMP if page_ok(v) => {
            s.simp.store(v & !0xFFE, Ordering::Relaxed);
            deliver_queued(root, vp);
            true
        }
        msr::SIEFP | msr::SIMP => false,
        msr::EOM => {
            deliver_queued(root, vp);
            true
        }
        // Vector 7:0 (16 and above), masked 16, auto-EOI 17; the rest reserved.
        msr::SINT0..=msr::SINT15 => {
            let vector = v & 0xFF;
            if v & !0x3_00FF != 0 || (v & msr::SINT_MASKED == 0 && vector < 16) {
                false
            } else {
                s.sint[(m - msr::SINT0) as usize].store(v, Ordering::Relaxed);
                deliver_queued(root, vp);
                true
            }
        }
        _ => return None,
    })
}

/// The SIMP slot of `sint`, when the page is enabled and the SynIC is on.
fn slot(vp: u32, sint: usize) -> Option<u64> {
    let s = synic(vp);
    let simp = s.simp.load(Ordering::Relaxed);
    if s.scontrol.load(Ordering::Relaxed) & 1 == 0 || simp & msr::PAGE_ENABLE == 0 {
        return None;
    }
    Some((simp & !0xFFF) + (sint * SLOT_SIZE) as u64)
}

/// Writes `m` into the slot if it is empty; raises the SINT's vector.
fn try_place(root: &RootPartition, vp: u32, sint: usize, m: &Message) -> bool {
    let Some(at) = slot(vp, sint) else {
        return false;
    };
    let mem = root.memory();
    // An emptied slot has type 0; the rest of its header is stale.
    let old = match mem.read_u64(at) {
        Ok(head) if head as u32 == abi::kind::NONE => head,
        _ => return false,
    };
    let mut bytes = [0u8; SLOT_SIZE];
    m.encode(&mut bytes);
    // The body first, the header (with the type) last: the root sees a
    // message only when it is complete.
    if mem.write(at + 8, &bytes[8..]).is_err() {
        return false;
    }
    let head = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
    if mem.compare_exchange_u64(at, old, head).is_err() {
        return false;
    }
    let sint_reg = synic(vp).sint[sint].load(Ordering::Relaxed);
    if sint_reg & msr::SINT_MASKED == 0 {
        root::raise_interrupt(vp, sint_reg as u8);
    }
    true
}

/// Posts a message on `sint` of root VP `vp`.
pub fn post(root: &RootPartition, vp: u32, sint: usize, m: Message) {
    let s = synic(vp);
    let mut q = s.queue.lock();
    if q.iter().any(|(n, _)| *n == sint) || !try_place(root, vp, sint, &m) {
        q.push_back((sint, m));
        drop(q);
        mark_pending(root, vp, sint);
    }
}

/// Sets MessagePending in an occupied slot; if the root emptied the slot
/// meanwhile, delivers from the queue instead (it will not write EOM).
fn mark_pending(root: &RootPartition, vp: u32, sint: usize) {
    let Some(at) = slot(vp, sint) else {
        return;
    };
    let mem = root.memory();
    loop {
        let Ok(head) = mem.read_u64(at) else {
            return;
        };
        if head as u32 == abi::kind::NONE {
            deliver_queued(root, vp);
            return;
        }
        let flagged = head | (MESSAGE_PENDING as u64) << 40;
        if flagged == head || mem.compare_exchange_u64(at, head, flagged).is_ok() {
            return;
        }
    }
}

/// Moves queued messages into their slots while the slots are empty.
pub fn deliver_queued(root: &RootPartition, vp: u32) {
    let s = synic(vp);
    let mut q = s.queue.lock();
    let mut i = 0;
    while i < q.len() {
        let (sint, m) = q[i];
        // Messages of one SINT keep their order.
        if q.iter().take(i).any(|(n, _)| *n == sint) {
            i += 1;
            continue;
        }
        if try_place(root, vp, sint, &m) {
            q.remove(i);
            if q.iter().any(|(n, _)| *n == sint) {
                drop(q);
                mark_pending(root, vp, sint);
                q = s.queue.lock();
            }
        } else {
            i += 1;
        }
    }
}
