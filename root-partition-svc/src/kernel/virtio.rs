//! What the root's virtio drivers share: PCI configuration space through
//! ports 0xCF8/0xCFC (configuration mechanism #1, which the root owns),
//! finding a device on bus 0, and the `virtio-drivers` HAL. The firmware
//! has assigned the devices' BARs. Memory a device reads and writes is
//! identity-mapped root memory (GPA = SPA, no IOMMU), so a buffer's address
//! is its bus address.
use crate::arch::{inl, outl};
use core::ptr::NonNull;
use virtio_drivers::transport::pci::bus::{Command, ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::DeviceType;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

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

/// Pages for the devices' queues: a static block (the root's devices live
/// as long as the root), handed out once.
#[repr(C, align(4096))]
struct DmaPages(core::cell::UnsafeCell<[u8; DMA_PAGES * 4096]>);
// SAFETY: the pages are handed out by `RootHal::dma_alloc` only, each range
// once (the cursor below), and the root's shell loop runs on one VP.
unsafe impl Sync for DmaPages {}
const DMA_PAGES: usize = 16;
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
        // A blk device takes two pages (its queue's driver and device
        // areas), a net device four; more is a programming error.
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

/// The first virtio device of `kind` on PCI bus 0 whose BARs lie below
/// `top` (the root's identity map), with bus mastering on: its transport
/// and where it sits. `Err` says why there is none (`absent` when there
/// is no such device at all).
pub fn find(
    kind: DeviceType,
    top: u64,
    absent: &'static str,
) -> Result<(PciTransport, (u8, u8, u8)), &'static str> {
    let mut root = PciRoot::new(PortCam);
    let f = root
        .enumerate_bus(0)
        .find(|(_, info)| virtio_device_type(info) == Some(kind))
        .map(|(f, _)| f)
        .ok_or(absent)?;
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
    Ok((transport, (f.bus, f.device, f.function)))
}
