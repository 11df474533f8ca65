//! The root's own disk: a virtio-blk PCI device (QEMU's `-drive
//! if=virtio`), driven by the `virtio-drivers` crate, polled (`virtio.rs`
//! finds it and provides the HAL).
use crate::virtio::{self, RootHal};
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::DeviceType;
use vmbus::scsi::{BlockDevice, IoError, BLOCK_SIZE};

/// The root's disk.
pub struct VirtioDisk {
    blk: VirtIOBlk<RootHal, PciTransport>,
    /// Where it sits on the PCI bus (for `host disk`).
    pub location: (u8, u8, u8),
    pub read_only: bool,
    blocks: u64,
}

/// The first virtio-blk device on PCI bus 0 whose BARs lie below `top`
/// (the root's identity map), started; `Err` says why there is none.
pub fn probe(top: u64) -> Result<VirtioDisk, &'static str> {
    let (transport, location) =
        virtio::find(DeviceType::Block, top, "no virtio-blk device on PCI bus 0")?;
    let blk = VirtIOBlk::<RootHal, _>::new(transport).map_err(|_| "it did not start")?;
    Ok(VirtioDisk {
        read_only: blk.readonly(),
        blocks: blk.capacity(),
        blk,
        location,
    })
}

/// The most one request moves (the device takes a buffer as one
/// descriptor; QEMU's default segment limit is well above this).
const MAX_REQUEST: usize = 64 << 10;

impl BlockDevice for VirtioDisk {
    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        check(lba, buf.len(), self.blocks)?;
        for (i, chunk) in buf.chunks_mut(MAX_REQUEST).enumerate() {
            let at = lba + (i * MAX_REQUEST / BLOCK_SIZE) as u64;
            self.blk
                .read_blocks(at as usize, chunk)
                .map_err(|_| IoError)?;
        }
        Ok(())
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        check(lba, buf.len(), self.blocks)?;
        if self.read_only {
            return Err(IoError);
        }
        for (i, chunk) in buf.chunks(MAX_REQUEST).enumerate() {
            let at = lba + (i * MAX_REQUEST / BLOCK_SIZE) as u64;
            self.blk
                .write_blocks(at as usize, chunk)
                .map_err(|_| IoError)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.blk.flush().map_err(|_| IoError)
    }
}

/// Whole blocks inside the disk: what the driver asserts, checked first.
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
