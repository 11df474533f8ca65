//! The root's own disk: a virtio-blk PCI device (QEMU's `-drive
//! if=virtio`), polled; `virtio.rs` finds it and provides the HAL. The
//! request itself is ours (virtio 1.1, 5.2.6: a header, the data in as many
//! descriptors as it has pieces, a status byte) on `virtio-drivers`'s
//! queue: its own block driver takes one buffer per request, and a guest's
//! data lies in scattered pages that the device reads and writes directly.
use crate::virtio::{self, RootHal};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceType, Transport};
use vmbus::scsi::{segments_len, BlockDevice, IoError, Segment, BLOCK_SIZE};

bitflags::bitflags! {
    /// The feature bits we take (virtio 1.1, 5.2.3 and 6).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Features: u64 {
        const SEG_MAX = 1 << 2;
        const RO = 1 << 5;
        const FLUSH = 1 << 9;
        const VERSION_1 = 1 << 32;
    }
}

/// Descriptors in the queue: one request at a time, with up to
/// `QUEUE_SIZE - 2` pieces of data (QEMU's virtio-blk takes 256).
const QUEUE_SIZE: usize = 256;
/// The queue for a device that takes fewer (what `virtio-drivers`' own
/// block driver uses): requests of at most 14 pieces.
const SMALL_QUEUE_SIZE: usize = 16;

/// The request queue, as large as the device takes.
enum Queue {
    Large(alloc::boxed::Box<VirtQueue<RootHal, QUEUE_SIZE>>),
    Small(alloc::boxed::Box<VirtQueue<RootHal, SMALL_QUEUE_SIZE>>),
}

impl Queue {
    /// Queue 0 of `transport`, of the larger size it takes.
    fn new(transport: &mut PciTransport) -> Result<Queue, &'static str> {
        let refused = "its queue could not be set up";
        if transport.max_queue_size(0) as usize >= QUEUE_SIZE {
            let q = VirtQueue::new(transport, 0, false, false).map_err(|_| refused)?;
            Ok(Queue::Large(alloc::boxed::Box::new(q)))
        } else {
            let q = VirtQueue::new(transport, 0, false, false)
                .map_err(|_| "its queue is smaller than 16 descriptors")?;
            Ok(Queue::Small(alloc::boxed::Box::new(q)))
        }
    }

    fn size(&self) -> usize {
        match self {
            Queue::Large(_) => QUEUE_SIZE,
            Queue::Small(_) => SMALL_QUEUE_SIZE,
        }
    }

    fn add_notify_wait_pop<'a>(
        &mut self,
        inputs: &'a [&'a [u8]],
        outputs: &'a mut [&'a mut [u8]],
        transport: &mut PciTransport,
    ) -> virtio_drivers::Result<u32> {
        match self {
            Queue::Large(q) => q.add_notify_wait_pop(inputs, outputs, transport),
            Queue::Small(q) => q.add_notify_wait_pop(inputs, outputs, transport),
        }
    }
}
/// The most one request moves: the largest transfer a guest's storage
/// request asks for, so that one becomes one device request when its
/// pages are within the device's `seg_max` pieces.
const MAX_REQUEST: usize = vmbus::storvsp::MAX_TRANSFER_BYTES as usize;

/// Request types (virtio 1.1, 5.2.6).
const IN: u32 = 0;
const OUT: u32 = 1;
const FLUSH: u32 = 4;

/// The request's header, as the device reads it.
#[repr(C)]
struct Header {
    kind: u32,
    reserved: u32,
    sector: u64,
}

impl Header {
    fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&self.kind.to_le_bytes());
        b[8..].copy_from_slice(&self.sector.to_le_bytes());
        b
    }
}

/// The root's disk.
pub struct VirtioDisk {
    transport: PciTransport,
    queue: Queue,
    /// Where it sits on the PCI bus (for `host disk`).
    pub location: (u8, u8, u8),
    pub read_only: bool,
    flush: bool,
    blocks: u64,
    /// Pieces of data one request may carry.
    max_segments: usize,
}

/// The first virtio-blk device on PCI bus 0 whose BARs lie below `top`
/// (the root's identity map), started; `Err` says why there is none.
pub fn probe(top: u64) -> Result<VirtioDisk, &'static str> {
    let (mut transport, location) =
        virtio::find(DeviceType::Block, top, "no virtio-blk device on PCI bus 0")?;
    let features = transport.begin_init(Features::all());
    let config = |at: usize| transport.read_config_space::<u32>(at).unwrap_or(0);
    let blocks = u64::from(config(0)) | u64::from(config(4)) << 32;
    let seg_max = if features.contains(Features::SEG_MAX) {
        config(12) as usize
    } else {
        usize::MAX
    };
    let queue = Queue::new(&mut transport)?;
    transport.finish_init();
    let max_segments = seg_max.clamp(1, queue.size() - 2);
    Ok(VirtioDisk {
        transport,
        queue,
        location,
        read_only: features.contains(Features::RO),
        flush: features.contains(Features::FLUSH),
        blocks,
        max_segments,
    })
}

impl VirtioDisk {
    /// Descriptors in its queue (for `host disk`).
    pub fn queue_size(&self) -> usize {
        self.queue.size()
    }

    /// One request: `kind` at `sector` with `data` (device-written for
    /// IN), waited for.
    fn request(&mut self, kind: u32, sector: u64, data: &[Segment]) -> Result<(), IoError> {
        let header = Header {
            kind,
            reserved: 0,
            sector,
        }
        .bytes();
        let mut status = [0xFFu8];
        let done = if kind == IN {
            let mut outputs = device_writes(data);
            outputs.push(&mut status);
            self.queue
                .add_notify_wait_pop(&[&header[..]], &mut outputs, &mut self.transport)
        } else {
            let mut inputs = device_reads(data);
            inputs.insert(0, &header[..]);
            self.queue
                .add_notify_wait_pop(&inputs, &mut [&mut status[..]], &mut self.transport)
        };
        match (done, status[0]) {
            (Ok(_), 0) => Ok(()),
            _ => Err(IoError),
        }
    }

    /// Moves whole blocks from `lba` to or from `data`, in requests of at
    /// most [`MAX_REQUEST`] bytes and the device's pieces.
    fn transfer(&mut self, kind: u32, lba: u64, data: &[Segment]) -> Result<(), IoError> {
        let len = segments_len(data);
        if kind == OUT && self.read_only {
            return Err(IoError);
        }
        check(lba, len, self.blocks)?;
        let (mut at, mut i) = (lba, 0);
        let mut rest = data.iter().copied();
        let mut carry: Option<Segment> = None;
        let mut request = alloc::vec::Vec::with_capacity(self.max_segments);
        while i < len {
            // Fill one request: whole pieces while they fit, a piece cut
            // at a block boundary when the byte limit falls inside it.
            request.clear();
            let mut bytes = 0;
            while request.len() < self.max_segments && bytes < MAX_REQUEST {
                let Some(s) = carry.take().or_else(|| rest.next()) else {
                    break;
                };
                let room = MAX_REQUEST - bytes;
                if s.len > room {
                    request.push(Segment {
                        addr: s.addr,
                        len: room,
                    });
                    carry = Some(Segment {
                        addr: s.addr + room as u64,
                        len: s.len - room,
                    });
                    bytes += room;
                } else {
                    request.push(s);
                    bytes += s.len;
                }
            }
            if bytes == 0 || !bytes.is_multiple_of(BLOCK_SIZE) {
                // Pieces that are not whole blocks at the device's limits.
                return Err(IoError);
            }
            self.request(kind, at, &request)?;
            at += (bytes / BLOCK_SIZE) as u64;
            i += bytes;
        }
        Ok(())
    }
}

/// The memory `data` names as the byte slices the queue takes for the
/// device to write (it only reads their addresses and lengths).
fn device_writes<'m>(data: &[Segment]) -> alloc::vec::Vec<&'m mut [u8]> {
    data.iter()
        .filter(|s| s.len > 0)
        // SAFETY: a segment names root memory the caller owns for the
        // call: its own buffer (`read`) or a guest's RAM inside the guest's
        // block, checked by the storage server and allocated while the
        // guest's channel is served. The CPU reads and writes nothing
        // through these slices; the device writes the bytes and the request
        // is waited for before the slices are dropped.
        .map(|s| unsafe { core::slice::from_raw_parts_mut(s.addr as *mut u8, s.len) })
        .collect()
}

/// The memory `data` names as the byte slices the queue takes for the
/// device to read.
fn device_reads<'m>(data: &[Segment]) -> alloc::vec::Vec<&'m [u8]> {
    data.iter()
        .filter(|s| s.len > 0)
        // SAFETY: as in `device_writes`; the device only reads these bytes.
        .map(|s| unsafe { core::slice::from_raw_parts(s.addr as *const u8, s.len) })
        .collect()
}

impl BlockDevice for VirtioDisk {
    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let whole = Segment {
            addr: buf.as_mut_ptr() as u64,
            len: buf.len(),
        };
        self.transfer(IN, lba, &[whole])
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        let whole = Segment {
            addr: buf.as_ptr() as u64,
            len: buf.len(),
        };
        self.transfer(OUT, lba, &[whole])
    }

    fn flush(&mut self) -> Result<(), IoError> {
        if !self.flush {
            return Ok(());
        }
        self.request(FLUSH, 0, &[])
    }

    fn direct(&self) -> bool {
        true
    }

    fn read_to(&mut self, lba: u64, to: &[Segment]) -> Result<(), IoError> {
        self.transfer(IN, lba, to)
    }

    fn write_from(&mut self, lba: u64, from: &[Segment]) -> Result<(), IoError> {
        self.transfer(OUT, lba, from)
    }
}

/// Whole blocks inside the disk, checked before the device sees them.
fn check(lba: u64, len: usize, blocks: u64) -> Result<(), IoError> {
    let n = (len / BLOCK_SIZE) as u64;
    if len == 0
        || !len.is_multiple_of(BLOCK_SIZE)
        || lba.checked_add(n).is_none_or(|end| end > blocks)
    {
        return Err(IoError);
    }
    Ok(())
}
