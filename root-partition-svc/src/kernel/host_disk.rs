//! The root's own disk (`virtio_disk`), its FAT32 file system (`fat`) and
//! the VHD files on it that VMs use as disks. The root's shell loop is the
//! only user; each piece of state is borrowed for one operation at a time
//! (a nested borrow is refused, never aliased).
use crate::println;
use crate::virtio_disk::{self, VirtioDisk};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};
use root_partition_svc::fat::{self, FatError, Volume};
use root_partition_svc::vhd::{Extent, Kind, Storage, StorageError, Vhd};
use root_partition_svc::vhd_command::Format;
use root_partition_svc::vhdx::Vhdx;
use vmbus::scsi::{segments_len, sub_segments, BlockDevice, IoError, Segment, BLOCK_SIZE};

/// State the shell loop borrows for one operation at a time.
struct Exclusive<T> {
    value: UnsafeCell<T>,
    busy: AtomicBool,
}

// SAFETY: `with` hands out the value to one caller at a time (the busy
// flag), so no two references to it exist at once.
unsafe impl<T> Sync for Exclusive<T> {}

impl<T> Exclusive<T> {
    const fn new(value: T) -> Self {
        Exclusive {
            value: UnsafeCell::new(value),
            busy: AtomicBool::new(false),
        }
    }

    /// Runs `f` on the value; `None` if it is already borrowed.
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        if self.busy.swap(true, Ordering::Acquire) {
            return None;
        }
        // SAFETY: the busy flag was clear and is now set: this is the only
        // reference until it is cleared below.
        let r = f(unsafe { &mut *self.value.get() });
        self.busy.store(false, Ordering::Release);
        Some(r)
    }
}

enum Disk {
    /// Not probed yet.
    Unknown,
    /// No usable disk: why.
    Absent(&'static str),
    /// A disk without a FAT32 volume: the disk, and what is wrong.
    Unformatted(alloc::boxed::Box<VirtioDisk>, FatError),
    Mounted(alloc::boxed::Box<Volume<VirtioDisk>>),
}

static DISK: Exclusive<Disk> = Exclusive::new(Disk::Unknown);

/// A disk image file: VHD or VHDX.
enum Image {
    Vhd(Vhd<HostFile>),
    Vhdx(Vhdx<HostFile>),
}

impl Image {
    /// Opens the image in `file`, its format read from its content.
    fn open(file: HostFile) -> Result<Image, String> {
        let mut file = file;
        let mut sig = [0u8; 8];
        if file.len() >= 8 && file.read_at(0, &mut sig).is_ok() && &sig == b"vhdxfile" {
            return Vhdx::open(file)
                .map(Image::Vhdx)
                .map_err(|e| format!("{e}"));
        }
        Vhd::open(file).map(Image::Vhd).map_err(|e| format!("{e}"))
    }

    fn format(&self) -> Format {
        match self {
            Image::Vhd(_) => Format::Vhd,
            Image::Vhdx(_) => Format::Vhdx,
        }
    }

    fn size(&self) -> u64 {
        match self {
            Image::Vhd(v) => v.size(),
            Image::Vhdx(v) => v.size(),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Image::Vhd(v) => v.kind(),
            Image::Vhdx(v) => v.kind(),
        }
    }

    /// Moves blocks from `lba` between the image and the memory
    /// `segments` names: the root's disk moves each run the image stores
    /// straight to or from that memory; blocks a dynamic image has not
    /// stored read as zeros, and a write allocates them first.
    fn by_address(&mut self, lba: u64, segments: &[Segment], write: bool) -> Result<(), IoError> {
        let len = segments_len(segments) as u64;
        let start = lba.checked_mul(BLOCK_SIZE as u64).ok_or(IoError)?;
        let mut done = 0u64;
        while done < len {
            let (offset, left) = (start + done, len - done);
            let extent = match self {
                Image::Vhd(v) => v.extent(offset, left, write).map_err(|_| IoError)?,
                Image::Vhdx(v) => v.extent(offset, left, write).map_err(|_| IoError)?,
            };
            let n = extent.len();
            if n == 0 {
                return Err(IoError);
            }
            let part = sub_segments(segments, done as usize, n as usize);
            match extent {
                Extent::Zeros(_) if !write => crate::guest_ring::zero(&part),
                Extent::Zeros(_) => return Err(IoError),
                Extent::File { at, .. } => {
                    let file = match self {
                        Image::Vhd(v) => v.storage_mut(),
                        Image::Vhdx(v) => v.storage_mut(),
                    };
                    file.by_address(at, &part, write).map_err(|_| IoError)?;
                }
            }
            done += n;
        }
        Ok(())
    }

    fn into_file(self) -> HostFile {
        match self {
            Image::Vhd(v) => v.into_storage(),
            Image::Vhdx(v) => v.into_storage(),
        }
    }
}

/// As the SCSI controller reads it: the image's own block device.
impl BlockDevice for Image {
    fn blocks(&self) -> u64 {
        match self {
            Image::Vhd(v) => v.blocks(),
            Image::Vhdx(v) => v.blocks(),
        }
    }

    fn read_only(&self) -> bool {
        match self {
            Image::Vhd(v) => v.read_only(),
            Image::Vhdx(v) => v.read_only(),
        }
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        match self {
            Image::Vhd(v) => BlockDevice::read(v, lba, buf),
            Image::Vhdx(v) => BlockDevice::read(v, lba, buf),
        }
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        match self {
            Image::Vhd(v) => BlockDevice::write(v, lba, buf),
            Image::Vhdx(v) => BlockDevice::write(v, lba, buf),
        }
    }

    fn flush(&mut self) -> Result<(), IoError> {
        match self {
            Image::Vhd(v) => BlockDevice::flush(v),
            Image::Vhdx(v) => BlockDevice::flush(v),
        }
    }
}

/// A disk image file open for a VM.
struct OpenVhd {
    vhd: Image,
    name: String,
    read_only: bool,
    /// The VM it is attached to.
    vm: String,
}

static VHDS: Exclusive<Vec<Option<OpenVhd>>> = Exclusive::new(Vec::new());

/// Finds the root's disk and mounts its file system; one line says what
/// was found.
pub fn init(identity_top: u64) {
    let found = match virtio_disk::probe(identity_top) {
        Err(why) => Disk::Absent(why),
        Ok(d) => {
            let line = format!(
                "virtio-blk at PCI {:02x}:{:02x}.{}, {} MiB{}",
                d.location.0,
                d.location.1,
                d.location.2,
                (d.blocks() * BLOCK_SIZE as u64) >> 20,
                if d.read_only() { " (read-only)" } else { "" }
            );
            match Volume::mount(d) {
                Ok(v) => {
                    println!(
                        "host disk: {line}; FAT32 \"{}\", {} MiB free",
                        v.label(),
                        v.free_bytes() >> 20
                    );
                    Disk::Mounted(alloc::boxed::Box::new(v))
                }
                Err((FatError::Io, _)) => Disk::Absent("the virtio-blk device failed a read"),
                Err((e, d)) => {
                    println!("host disk: {line}; {e}: VHD files are unavailable");
                    Disk::Unformatted(alloc::boxed::Box::new(d), e)
                }
            }
        }
    };
    if let Disk::Absent(why) = found {
        println!("host disk: none ({why}); VHD files are unavailable, RAM disks work");
    }
    DISK.with(|d| *d = found);
}

/// Runs `f` on the mounted volume.
fn volume<R>(f: impl FnOnce(&mut Volume<VirtioDisk>) -> Result<R, FatError>) -> Result<R, String> {
    match DISK.with(|d| match d {
        Disk::Mounted(v) => f(v).map_err(|e| format!("{e}")),
        Disk::Unknown | Disk::Absent(_) => Err(String::from(
            "the root has no disk (cargo xtask run attaches one)",
        )),
        Disk::Unformatted(_, e) => Err(format!("the root's disk has no usable file system: {e}")),
    }) {
        Some(r) => r,
        None => Err(String::from("the root's disk is busy")),
    }
}

/// A file on the root's disk, as a VHD's storage.
pub struct HostFile {
    file: fat::File,
    read_only: bool,
}

impl HostFile {
    /// Moves the file's bytes from `offset` to or from the memory
    /// `segments` names, by the disk's own transfers.
    fn by_address(
        &mut self,
        offset: u64,
        segments: &[Segment],
        write: bool,
    ) -> Result<(), StorageError> {
        if write && self.read_only {
            return Err(StorageError);
        }
        let file = &self.file;
        volume(|v| {
            if write {
                v.write_from(file, offset, segments)
            } else {
                v.read_to(file, offset, segments)
            }
        })
        .map_err(|_| StorageError)
    }
}

impl Storage for HostFile {
    fn len(&self) -> u64 {
        self.file.size()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        volume(|v| v.read(&self.file, offset, buf)).map_err(|_| StorageError)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        if self.read_only {
            return Err(StorageError);
        }
        volume(|v| v.write(&mut self.file, offset, data)).map_err(|_| StorageError)
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        if self.read_only {
            return Ok(());
        }
        volume(|v| v.flush()).map_err(|_| StorageError)
    }
}

/// `host disk`.
pub fn show() {
    let r = DISK.with(|d| match d {
        Disk::Unknown => println!("host disk: not probed"),
        Disk::Absent(why) => println!("host disk: none ({why})"),
        Disk::Unformatted(disk, e) => {
            println!("host disk: {}; {e}", describe(disk));
        }
        Disk::Mounted(v) => {
            let line = describe(v.disk());
            println!("host disk: {line}");
            println!(
                "  file system:  FAT32 \"{}\", {} KiB clusters, {} MiB free of {} MiB",
                v.label(),
                v.cluster_bytes() >> 10,
                v.free_bytes() >> 20,
                v.total_bytes() >> 20
            );
            match v.list() {
                Ok(files) => {
                    println!("  files:        {}", files.len());
                    for (d, _) in files {
                        let kind = if d.directory { "<DIR>" } else { "" };
                        match d.damaged {
                            Some(why) => {
                                println!("  {:>14} {kind:<5} {} (damaged: {why})", d.size, d.name)
                            }
                            None => println!("  {:>14} {kind:<5} {}", d.size, d.name),
                        }
                    }
                }
                Err(e) => println!("  files:        unreadable ({e})"),
            }
        }
    });
    if r.is_none() {
        println!("host disk: busy");
    }
}

fn describe(d: &VirtioDisk) -> String {
    format!(
        "virtio-blk at PCI {:02x}:{:02x}.{}, {} MiB, {}, queue of {}",
        d.location.0,
        d.location.1,
        d.location.2,
        (d.blocks() * BLOCK_SIZE as u64) >> 20,
        if d.read_only() {
            "read-only"
        } else {
            "read-write"
        },
        d.queue_size()
    )
}

/// Seconds from 1970 to 2000-01-01, where VHD time starts.
const VHD_EPOCH: u64 = 946_684_800;

/// `vhd new PATH --size SIZE --type KIND --format F`; `now` is Unix seconds.
pub fn vhd_new(path: &str, size: u64, kind: Kind, format: Format, now: u64) {
    // A fixed image is its whole size on the disk at once: refused before
    // anything is written if it cannot fit (FAT32's 4 GiB files, the free
    // space; a VHDX's metadata takes its first 4 MiB or so).
    if kind == Kind::Fixed {
        let need = size + (4 << 20);
        let free = volume(|v| Ok(v.free_bytes())).unwrap_or(0);
        if need > fat::MAX_FILE || need > free {
            println!(
                "vhd new: {path}: a fixed image of {} MiB does not fit: FAT32 files hold at most 4 GiB, and {} MiB are free",
                size >> 20,
                free >> 20
            );
            return;
        }
    }
    let t = root_partition_svc::cmos::DateTime::from_unix(now);
    let stamp = fat::stamp(t.year, t.month, t.day, t.hour, t.minute, t.second);
    let file = match volume(|v| v.create(path, stamp)) {
        Ok(f) => f,
        Err(e) => {
            println!("vhd new: {path}: {e}");
            return;
        }
    };
    let name = file.name.clone();
    let mut id = [0u8; 16];
    let seed = crate::arch::rdtsc() ^ now.rotate_left(32);
    for (i, b) in id.iter_mut().enumerate() {
        *b = (seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(i as u32 * 8)
            >> 56) as u8
            ^ i as u8;
    }
    let storage = HostFile {
        file,
        read_only: false,
    };
    let made = match format {
        Format::Vhd => Vhd::create(
            storage,
            kind,
            size,
            id,
            now.saturating_sub(VHD_EPOCH) as u32,
        )
        .map(Image::Vhd)
        .map_err(|e| format!("{e}")),
        Format::Vhdx => Vhdx::create(storage, kind, size, id)
            .map(Image::Vhdx)
            .map_err(|e| format!("{e}")),
    };
    match made {
        Ok(image) => println!(
            "vhd new: {name}: {} {} of {} MiB ({} bytes on the disk)",
            kind_name(kind),
            format.name(),
            image.size() >> 20,
            image.into_file().file.size()
        ),
        Err(e) => println!("vhd new: {name}: {e}; the partly written file is left on the disk"),
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Fixed => "fixed",
        Kind::Dynamic => "dynamic",
    }
}

fn open(path: &str, read_only: bool) -> Result<(String, Image), String> {
    let file = volume(|v| v.open_file(path))?;
    let name = file.name.clone();
    let image = Image::open(HostFile { file, read_only })?;
    Ok((name, image))
}

/// `vhd show PATH`.
pub fn vhd_show(path: &str) {
    let (name, vhd) = match open(path, true) {
        Ok(x) => x,
        Err(e) => {
            println!("vhd show: {path}: {e}");
            return;
        }
    };
    // By the name the file system gives (the path may be a short alias).
    let attached = VHDS.with(|t| {
        t.iter()
            .flatten()
            .find(|o| o.name == name)
            .map(|o| (o.vm.clone(), o.read_only))
    });
    println!("vhd: {name}");
    let (allocation, creator) = match &vhd {
        Image::Vhd(v) => (v.allocation(), v.footer().creator_app.to_vec()),
        Image::Vhdx(v) => (
            (v.kind() == Kind::Dynamic).then(|| v.allocation()),
            v.creator().to_vec(),
        ),
    };
    match allocation {
        Some((used, block)) => {
            let blocks = vhd.size().div_ceil(u64::from(block));
            println!(
                "  format:        {} dynamic, {} MiB blocks",
                vhd.format().name(),
                block >> 20
            );
            println!("  blocks in use: {used} of {blocks}");
        }
        None => println!("  format:        {} fixed", vhd.format().name()),
    }
    println!(
        "  virtual size:  {} MiB ({} sectors)",
        vhd.size() >> 20,
        vhd.size() / 512
    );
    println!("  file size:     {} bytes", vhd.into_file().file.size());
    println!(
        "  created by:    {}",
        core::str::from_utf8(&creator).unwrap_or("?")
    );
    match attached.flatten() {
        Some((vm, ro)) => println!(
            "  attached to:   {vm} ({})",
            if ro { "read-only" } else { "read-write" }
        ),
        None => println!("  attached to:   none"),
    }
}

/// A VHD file attached to a VM: a handle on the open file's slot.
#[derive(Clone, Copy, Debug)]
pub struct FileDisk {
    slot: usize,
    blocks: u64,
    read_only: bool,
}

/// Opens `path` for VM `vm`'s disk. A file attached read-write to a VM is
/// not attached again; a read-only one may be, read-only.
pub fn attach(path: &str, read_only: bool, vm: &str) -> Result<FileDisk, String> {
    let (name, vhd) = open(path, read_only)?;
    let conflict = VHDS
        .with(|t| {
            t.iter()
                .flatten()
                .find(|o| o.name == name && !(o.read_only && read_only))
                .map(|o| (o.vm.clone(), o.read_only))
        })
        .flatten();
    if let Some((other, ro)) = conflict {
        return Err(format!(
            "{name} is attached to {other} ({}); a file is attached read-write to one VM at a time",
            if ro { "read-only" } else { "read-write" }
        ));
    }
    let blocks = vhd.size() / BLOCK_SIZE as u64;
    let entry = OpenVhd {
        vhd,
        name,
        read_only,
        vm: String::from(vm),
    };
    VHDS.with(|t| {
        let slot = match t.iter().position(|o| o.is_none()) {
            Some(i) => {
                t[i] = Some(entry);
                i
            }
            None => {
                t.push(Some(entry));
                t.len() - 1
            }
        };
        FileDisk {
            slot,
            blocks,
            read_only,
        }
    })
    .ok_or_else(|| String::from("busy"))
}

/// Closes an attached file (its writes flushed); its name.
pub fn detach(d: FileDisk) -> String {
    let entry = VHDS
        .with(|t| t.get_mut(d.slot).and_then(Option::take))
        .flatten();
    match entry {
        Some(mut o) => {
            let _ = o.vhd.flush();
            o.name
        }
        None => String::from("?"),
    }
}

impl FileDisk {
    fn with<R>(&self, f: impl FnOnce(&mut OpenVhd) -> R) -> Option<R> {
        VHDS.with(|t| t.get_mut(self.slot).and_then(Option::as_mut).map(f))
            .flatten()
    }
}

impl core::fmt::Display for FileDisk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let what = self.with(|o| {
            (
                o.name.clone(),
                o.vhd.format().name(),
                kind_name(o.vhd.kind()),
                o.vhd.size() >> 20,
            )
        });
        let access = if self.read_only {
            "read-only"
        } else {
            "read-write"
        };
        match what {
            Some((name, format, kind, mib)) => {
                write!(f, "{name} ({format} {kind}, {mib} MiB, {access})")
            }
            None => write!(f, "a VHD file ({access})"),
        }
    }
}

impl BlockDevice for FileDisk {
    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.with(|o| o.vhd.read(lba, buf)).unwrap_or(Err(IoError))
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        if self.read_only {
            return Err(IoError);
        }
        self.with(|o| o.vhd.write(lba, buf)).unwrap_or(Err(IoError))
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.with(|o| o.vhd.flush()).unwrap_or(Err(IoError))
    }

    fn direct(&self) -> bool {
        true
    }

    fn read_to(&mut self, lba: u64, to: &[Segment]) -> Result<(), IoError> {
        self.with(|o| o.vhd.by_address(lba, to, false))
            .unwrap_or(Err(IoError))
    }

    fn write_from(&mut self, lba: u64, from: &[Segment]) -> Result<(), IoError> {
        if self.read_only {
            return Err(IoError);
        }
        self.with(|o| o.vhd.by_address(lba, from, true))
            .unwrap_or(Err(IoError))
    }
}

/// A VM's disk: in the root's RAM, or a VHD file on the root's disk.
#[derive(Clone, Copy, Debug)]
pub enum VmDisk {
    Ram(crate::ram_disk::RamDisk),
    File(FileDisk),
}

impl VmDisk {
    /// Whether `path` names this disk: its file (any case, a leading `/`
    /// allowed), or `ram` for a RAM disk.
    pub fn is_named(&self, path: &str) -> bool {
        match self {
            VmDisk::Ram(_) => path.eq_ignore_ascii_case("ram"),
            VmDisk::File(f) => {
                // The file system's name for `path` (a short alias too).
                let named = volume(|v| v.open_file(path)).map(|file| file.name);
                f.with(|o| {
                    o.name.eq_ignore_ascii_case(path.trim_start_matches('/'))
                        || named.as_ref().is_ok_and(|n| *n == o.name)
                })
                .unwrap_or(false)
            }
        }
    }
}

impl core::fmt::Display for VmDisk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VmDisk::Ram(d) => d.fmt(f),
            VmDisk::File(d) => d.fmt(f),
        }
    }
}

impl BlockDevice for VmDisk {
    fn blocks(&self) -> u64 {
        match self {
            VmDisk::Ram(d) => d.blocks(),
            VmDisk::File(d) => d.blocks(),
        }
    }

    fn read_only(&self) -> bool {
        match self {
            VmDisk::Ram(d) => d.read_only(),
            VmDisk::File(d) => d.read_only(),
        }
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        match self {
            VmDisk::Ram(d) => d.read(lba, buf),
            VmDisk::File(d) => d.read(lba, buf),
        }
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        match self {
            VmDisk::Ram(d) => d.write(lba, buf),
            VmDisk::File(d) => d.write(lba, buf),
        }
    }

    fn flush(&mut self) -> Result<(), IoError> {
        match self {
            VmDisk::Ram(d) => d.flush(),
            VmDisk::File(d) => d.flush(),
        }
    }

    fn direct(&self) -> bool {
        match self {
            VmDisk::Ram(d) => d.direct(),
            VmDisk::File(d) => d.direct(),
        }
    }

    fn read_to(&mut self, lba: u64, to: &[Segment]) -> Result<(), IoError> {
        match self {
            VmDisk::Ram(d) => d.read_to(lba, to),
            VmDisk::File(d) => d.read_to(lba, to),
        }
    }

    fn write_from(&mut self, lba: u64, from: &[Segment]) -> Result<(), IoError> {
        match self {
            VmDisk::Ram(d) => d.write_from(lba, from),
            VmDisk::File(d) => d.write_from(lba, from),
        }
    }
}

/// `bench disk MIB`: sequential 1 MiB writes, then 1 MiB reads, of `mib`
/// MiB in `bench.tmp` on the root's disk (made and grown to the size first,
/// untimed, so that the writes land in place as a guest's do on a fixed
/// image; the flush after them is not timed, as a guest's `dd` does not
/// flush), the disk moving the data to and from one buffer by address (the
/// way it moves a guest's): what the root's own file I/O moves, to compare
/// a guest's with.
pub fn bench(mib: u64, tsc_hz: u64) {
    let mut buf: Vec<u8> = Vec::new();
    if buf.try_reserve_exact(1 << 20).is_err() {
        println!("bench disk: no 1 MiB buffer in the root's heap");
        return;
    }
    buf.resize(1 << 20, 0x5A);
    let file = volume(|v| match v.open_file("bench.tmp") {
        Err(FatError::NotFound) => v.create("bench.tmp", (0, 0)),
        other => other,
    });
    let mut file = match file {
        Ok(f) => f,
        Err(e) => {
            println!("bench disk: bench.tmp: {e}");
            return;
        }
    };
    if let Err(e) = volume(|v| v.extend(&mut file, mib << 20).and_then(|()| v.flush())) {
        println!("bench disk: making bench.tmp {mib} MiB: {e}");
        return;
    }
    let seconds = |ticks: u64| ticks as f64 / tsc_hz.max(1) as f64;
    // The buffer by address: the disk moves the bytes to and from it, as
    // it does a guest's pages.
    let whole = [Segment {
        addr: buf.as_mut_ptr() as u64,
        len: buf.len(),
    }];
    let start = crate::arch::rdtsc();
    for i in 0..mib {
        if let Err(e) = volume(|v| v.write_from(&file, i << 20, &whole)) {
            println!("bench disk: writing bench.tmp: {e}");
            return;
        }
    }
    let write = seconds(crate::arch::rdtsc() - start);
    if let Err(e) = volume(|v| v.flush()) {
        println!("bench disk: flushing: {e}");
        return;
    }
    let start = crate::arch::rdtsc();
    for i in 0..mib {
        if let Err(e) = volume(|v| v.read_to(&file, i << 20, &whole)) {
            println!("bench disk: reading bench.tmp: {e}");
            return;
        }
    }
    let read = seconds(crate::arch::rdtsc() - start);
    let rate = |s: f64| if s > 0.0 { mib as f64 / s } else { 0.0 };
    println!(
        "bench disk: {mib} MiB in 1 MiB requests through the root's file system: write {write:.3} s ({:.1} MiB/s), read {read:.3} s ({:.1} MiB/s)",
        rate(write),
        rate(read)
    );
}
