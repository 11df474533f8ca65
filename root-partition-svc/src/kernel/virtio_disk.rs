//! The root's own disk: a virtio-blk PCI device (QEMU's `-drive
//! if=virtio`), driven by the `virtio-drivers` crate, polled. The firmware
//! has assigned the device's BARs; configuration space is reached through
//! ports 0xCF8/0xCFC (PCI configuration mechanism #1), which the root owns.
//! Memory the device reads and writes is identity-mapped root memory
//! (GPA = SPA, no IOMMU), so a buffer's address is its bus address.
use crate::arch::{inl, outl};
use core::ptr::NonNull;
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::pci::bus::{Command, ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::DeviceType;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};
use vmbus::scsi::{BlockDevice, IoError, BLOCK_SIZE};

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;

/// PCI configuration mechanism #1 through the I/O ports.
struct PortCam;

impl PortCam {
    fn select(f: DeviceFunction, offset: u8) {
        let address = 1 << 31
            | u32::from(f.bus) << 16
            | u32::from(f.device & 0x1F) << 11
            | u32::from(f.function & 7) << 8
            | u32::from(offset & 0xFC);
        outl(CONFIG_ADDRESS, address);
    }
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, f: DeviceFunction, offset: u8) -> u32 {
        Self::select(f, offset);
        inl(CONFIG_DATA)
    }

    fn write_word(&mut self, f: DeviceFunction, offset: u8, data: u32) {
        Self::select(f, offset);
        outl(CONFIG_DATA, data);
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

/// Pages for the device's queues: a static block (the root has one such
/// device, which lives as long as the root), handed out once.
#[repr(C, align(4096))]
struct DmaPages(core::cell::UnsafeCell<[u8; DMA_PAGES * 4096]>);
// SAFETY: the pages are handed out by `RootHal::dma_alloc` only, each range
// once (the cursor below), and the root's shell loop runs on one VP.
unsafe impl Sync for DmaPages {}
const DMA_PAGES: usize = 8;
static DMA: DmaPages = DmaPages(core::cell::UnsafeCell::new([0; DMA_PAGES * 4096]));
static DMA_USED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// What `virtio-drivers` needs of the root: DMA memory, MMIO mapping and
/// bus addresses, all identity.
pub struct RootHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned, identity-mapped root
// memory used by nothing else; addresses are physical = virtual; MMIO
// regions were checked below the identity map's top before the transport
// was made (`probe`).
unsafe impl Hal for RootHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let at = DMA_USED.fetch_add(pages, core::sync::atomic::Ordering::Relaxed);
        // One blk device takes two pages (its queue's driver and device
        // areas); more is a programming error of this module.
        assert!(at + pages <= DMA_PAGES, "virtio DMA pages exhausted");
        let base = DMA.0.get() as *mut u8;
        // SAFETY: inside the static block (checked above), handed out once.
        let p = unsafe { base.add(at * 4096) };
        (p as u64, NonNull::new(p).unwrap_or(NonNull::dangling()))
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // The device lives as long as the root.
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

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
    let mut root = PciRoot::new(PortCam);
    let mut found = None;
    for (f, info) in root.enumerate_bus(0) {
        if virtio_device_type(&info) == Some(DeviceType::Block) {
            found = Some(f);
            break;
        }
    }
    let f = found.ok_or("no virtio-blk device on PCI bus 0")?;
    let bars = root.bars(f).map_err(|_| "its BARs could not be read")?;
    for bar in bars.iter().flatten() {
        if let Some((address, size)) = bar.memory_address_size() {
            if address != 0 && address.saturating_add(size) > top {
                return Err("its BARs lie above the root's identity map");
            }
        }
    }
    let (_, command) = root.get_status_command(f);
    root.set_command(f, command | Command::MEMORY_SPACE | Command::BUS_MASTER);
    let transport = PciTransport::new::<RootHal, _>(&mut root, f)
        .map_err(|_| "its virtio PCI capabilities are not usable")?;
    let blk = VirtIOBlk::<RootHal, _>::new(transport).map_err(|_| "it did not start")?;
    Ok(VirtioDisk {
        read_only: blk.readonly(),
        blocks: blk.capacity(),
        blk,
        location: (f.bus, f.device, f.function),
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
