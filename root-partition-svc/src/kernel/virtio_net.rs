//! The root's physical NIC: a virtio-net PCI device (QEMU's `-device
//! virtio-net-pci`), driven by `virtio-drivers`' raw driver, polled. It is
//! the external port of a virtual switch: frames it receives go into the
//! switch, frames the switch sends out leave through it.
//!
//! Receive buffers are heap memory the root keeps for the device's life
//! (identity-mapped: address = bus address), each handed to the device and
//! read only after the device returns it.
use crate::virtio::{self, RootHal};
use alloc::vec::Vec;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::DeviceType;

/// Descriptors per queue, and receive buffers posted.
const QUEUE: usize = 16;
/// A receive buffer: the virtio-net header and the longest frame.
const BUFFER: usize = 2048;

/// The root's NIC.
pub struct VirtioNet {
    net: VirtIONetRaw<RootHal, PciTransport, QUEUE>,
    /// Where it sits on the PCI bus (`switch list`).
    pub location: (u8, u8, u8),
    pub mac: [u8; 6],
    buffers: Vec<[u8; BUFFER]>,
    /// The device's token for each buffer it holds.
    tokens: [Option<u16>; QUEUE],
    /// Frames the device could not take or gave back damaged.
    pub errors: u64,
}

/// The first virtio-net device on PCI bus 0 whose BARs lie below `top`,
/// started with every receive buffer posted; `Err` says why there is none.
pub fn probe(top: u64) -> Result<VirtioNet, &'static str> {
    let (transport, location) = virtio::find(
        DeviceType::Network,
        top,
        "no virtio-net device on PCI bus 0",
    )?;
    let net = VirtIONetRaw::<RootHal, _, QUEUE>::new(transport).map_err(|_| "it did not start")?;
    let mut buffers = Vec::new();
    buffers
        .try_reserve_exact(QUEUE)
        .map_err(|_| "no memory for its receive buffers")?;
    buffers.resize(QUEUE, [0u8; BUFFER]);
    let mut nic = VirtioNet {
        mac: net.mac_address(),
        net,
        location,
        buffers,
        tokens: [None; QUEUE],
        errors: 0,
    };
    for i in 0..QUEUE {
        nic.post(i);
    }
    Ok(nic)
}

impl VirtioNet {
    /// Hands buffer `i` to the device.
    fn post(&mut self, i: usize) {
        // SAFETY: the buffer lives in `self.buffers`, which is never resized
        // (its memory does not move) and lives as long as the device; it is
        // not touched until the device returns it (`poll`).
        match unsafe { self.net.receive_begin(&mut self.buffers[i]) } {
            Ok(token) => self.tokens[i] = Some(token),
            Err(_) => self.errors += 1,
        }
    }

    /// The frames received since the last call, to `f`, at most a queue's
    /// worth (a storm outside must not keep the root from its guests);
    /// how many.
    pub fn poll(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < QUEUE {
            let Some(token) = self.net.poll_receive() else {
                break;
            };
            let Some(i) = self.tokens.iter().position(|t| *t == Some(token)) else {
                // Not a buffer of ours: nothing to hand back.
                self.errors += 1;
                return n;
            };
            self.tokens[i] = None;
            // SAFETY: the device returned buffer `i` (its token): it is ours
            // again.
            let done = unsafe { self.net.receive_complete(token, &mut self.buffers[i]) };
            match done {
                Ok((header, len)) if header + len <= BUFFER => {
                    f(&self.buffers[i][header..header + len]);
                    n += 1;
                }
                _ => self.errors += 1,
            }
            self.post(i);
        }
        n
    }

    /// Sends one frame (the driver adds the virtio-net header and waits
    /// until the device took it).
    pub fn send(&mut self, frame: &[u8]) {
        if self.net.send(frame).is_err() {
            self.errors += 1;
        }
    }
}
