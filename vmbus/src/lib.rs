//! VMBus, the Hyper-V channel protocol, as a `no_std` + `alloc` library.
//!
//! Layers, bottom up (see `docs/vmbus.md`):
//! - [`shared_mem`]: the only module with `unsafe`; atomics-only views of
//!   memory shared with the peer.
//! - [`ring`]: the Hyper-V ring buffer (header page + data area), reader and
//!   writer with the signalling rules.
//! - [`packet`]: the 16-byte packet descriptor and the in-band, completion,
//!   GPA-direct and transfer-page packet formats.
//! - [`channel`]: an open channel = one inbound and one outbound ring.
//! - [`poll`]: when a reader polls a busy channel instead of waiting for
//!   its signal (an adaptive window).
//! - [`messages`]: the channel-management messages posted through SynIC.
//! - [`gpadl`]: assembling GPADLs from header and body messages.
//! - [`host`] and [`guest`]: the two state machines, driven by messages and
//!   by the [`host::HostPort`] / [`guest::GuestPort`] traits.
//! - [`guid`]: GUIDs in Hyper-V byte order and the device class GUIDs.
//! - [`scsi`] and [`storvsp`]: a SCSI disk over a block device, and the
//!   synthetic SCSI controller's protocol (Linux's `hv_storvsc`) serving it.
//! - [`netvsp`]: the synthetic network adapter's protocol (NVSP and RNDIS,
//!   Linux's `hv_netvsc`) between a guest and a [`netvsp::Wire`].
//! - [`sim`]: an in-process SynIC/guest-memory simulation for tests.
//! - [`wire`]: the wire structs (Linux's `hyperv.h` layouts) as `zerocopy`
//!   types, with their sizes checked at compile time; [`messages`] and
//!   [`packet`] parse and build through them.
//!
//! Everything that reads peer-controlled data is safe Rust, copies before it
//! validates and returns an error instead of panicking.
#![no_std]
// Unsafe code belongs in `shared_mem` alone: anywhere else it fails the build.
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod channel;
pub mod echo;
pub mod gpadl;
pub mod guest;
pub mod guid;
pub mod host;
pub mod messages;
pub mod netvsp;
pub mod packet;
pub mod poll;
pub mod ring;
pub mod scsi;
// Views of memory shared with the peer (raw ring pages, guest RAM) cannot be
// built without raw pointers; each unsafe block there says why it is sound.
#[allow(unsafe_code)]
pub mod shared_mem;
pub mod sim;
pub mod storvsp;
pub mod wire;

pub use guid::Guid;

/// Size of a guest page as VMBus sees it (GPADLs, GPA ranges, ring pages).
pub const PAGE_SIZE: usize = 4096;
