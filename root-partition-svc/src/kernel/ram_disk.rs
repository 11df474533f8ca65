//! A disk in the root's RAM: a block taken from the worker's memory pool,
//! attached to a VM's SCSI controller (`vm disk attach NAME ram:SIZE`). It
//! keeps its blocks across the VM's restarts, not across a host reboot.
use vmbus::scsi::{segments_len, BlockDevice, IoError, Segment, BLOCK_SIZE};

/// A handle on the block: the worker owns the memory (it returns to the
/// pool when the disk is detached), the VM's storage device copies the
/// handle while the VM runs.
#[derive(Clone, Copy, Debug)]
pub struct RamDisk {
    base: u64,
    bytes: u64,
    read_only: bool,
}

impl RamDisk {
    /// The disk on `[base, base + bytes)`, root RAM taken from the pool
    /// for it alone and zeroed by the caller; it stays allocated while any
    /// copy of the handle is used.
    pub fn new(base: u64, bytes: u64, read_only: bool) -> Self {
        RamDisk {
            base,
            bytes,
            read_only,
        }
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The root address of `len` bytes at block `lba`, if inside the disk.
    fn at(&self, lba: u64, len: usize) -> Result<u64, IoError> {
        let start = lba.checked_mul(BLOCK_SIZE as u64).ok_or(IoError)?;
        let end = start.checked_add(len as u64).ok_or(IoError)?;
        if end > self.bytes {
            return Err(IoError);
        }
        Ok(self.base + start)
    }
}

/// As `vm disk list` and `vm show` give it: `ram:SIZE (read-write)`.
impl core::fmt::Display for RamDisk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let access = if self.read_only {
            "read-only"
        } else {
            "read-write"
        };
        write!(f, "ram:{}M ({access})", self.bytes >> 20)
    }
}

impl BlockDevice for RamDisk {
    fn blocks(&self) -> u64 {
        self.bytes / BLOCK_SIZE as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let at = self.at(lba, buf.len())?;
        // SAFETY: inside the disk's block (checked above): identity-mapped
        // root RAM the pool gave to this disk alone, allocated while the
        // handle is used (the constructor's contract).
        unsafe { core::ptr::copy_nonoverlapping(at as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// A read-only disk refuses here too, whoever calls (as `write_from`).
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        if self.read_only {
            return Err(IoError);
        }
        let at = self.at(lba, buf.len())?;
        // SAFETY: as in `read`.
        unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), at as *mut u8, buf.len()) };
        Ok(())
    }

    /// RAM keeps every write at once.
    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }

    /// The blocks and a guest's pages are both memory: one copy between
    /// them, no buffer.
    fn direct(&self) -> bool {
        true
    }

    fn read_to(&mut self, lba: u64, to: &[Segment]) -> Result<(), IoError> {
        let mut at = self.at(lba, segments_len(to))?;
        for s in to {
            // SAFETY: the source as in `read` (the whole run checked
            // above); the destination is memory the caller lends the disk
            // for the call (`BlockDevice::read_to`: a guest's pages inside
            // its block), apart from the disk's own block.
            unsafe { core::ptr::copy_nonoverlapping(at as *const u8, s.addr as *mut u8, s.len) };
            at += s.len as u64;
        }
        Ok(())
    }

    fn write_from(&mut self, lba: u64, from: &[Segment]) -> Result<(), IoError> {
        if self.read_only {
            return Err(IoError);
        }
        let mut at = self.at(lba, segments_len(from))?;
        for s in from {
            // SAFETY: as in `read_to`, the other way.
            unsafe { core::ptr::copy_nonoverlapping(s.addr as *const u8, at as *mut u8, s.len) };
            at += s.len as u64;
        }
        Ok(())
    }
}
