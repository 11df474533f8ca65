//! The UEFI loader: loads the hypervisor and its modules from the EFI system
//! partition, exits boot services and enters the hypervisor's 64-bit entry
//! with a Multiboot2 information structure (so the hypervisor has one parser
//! for GRUB and for us).
//!
//! `\boot\hv.cfg` on the same partition, one directive a line:
//!
//! ```text
//! hypervisor /boot/hypervisor log=info poweroff
//! module /boot/root.elf root
//! ```
//!
//! Everything the hypervisor receives (image, modules, the information
//! structure) lies below 4 GiB, where its boot page tables reach.
#![no_std]
#![no_main]

extern crate alloc;

mod multiboot2;

use hypervisor_core::elf;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use log::info;
use uefi::boot::{self, AllocateType, MemoryType};
use uefi::mem::memory_map::MemoryMap;
use uefi::prelude::*;
use uefi::table::cfg::ConfigTableEntry;
use uefi::{CString16, Error};

const CONFIG_PATH: &str = "\\boot\\hv.cfg";
const BELOW_4G: u64 = 0xFFFF_FFFF;
/// Pages for the Multiboot2 structure (memory maps of thousands of entries fit).
const INFO_PAGES: usize = 16;
/// The magic in the image's first 32 KiB that precedes the 64-bit entry address.
const ENTRY64_MAGIC: u64 = u64::from_le_bytes(*b"HV64ENTR");

struct Config {
    hypervisor: String,
    cmdline: String,
    modules: Vec<(String, String)>,
}

fn parse_config(text: &str) -> Result<Config, String> {
    let mut hypervisor = None;
    let mut modules = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (directive, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let (path, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(alloc::format!(
                "{CONFIG_PATH} line {}: \"{directive}\" needs a path",
                n + 1
            ));
        }
        match directive {
            "hypervisor" => hypervisor = Some((path.to_string(), args.trim().to_string())),
            "module" => modules.push((path.to_string(), args.trim().to_string())),
            other => {
                return Err(alloc::format!(
                    "{CONFIG_PATH} line {}: unknown directive \"{other}\"",
                    n + 1
                ))
            }
        }
    }
    let (hypervisor, cmdline) =
        hypervisor.ok_or_else(|| alloc::format!("{CONFIG_PATH}: no \"hypervisor\" line"))?;
    Ok(Config {
        hypervisor,
        cmdline,
        modules,
    })
}

fn read_file(fs: &mut uefi::fs::FileSystem, path: &str) -> Result<Vec<u8>, String> {
    let p = CString16::try_from(path.replace('/', "\\").as_str())
        .map_err(|_| alloc::format!("bad path {path}"))?;
    fs.read(p.as_ref())
        .map_err(|e| alloc::format!("cannot read {path}: {e:?}"))
}

fn alloc_below_4g(bytes: usize, ty: MemoryType) -> Result<*mut u8, String> {
    let pages = bytes.div_ceil(4096).max(1);
    boot::allocate_pages(AllocateType::MaxAddress(BELOW_4G), ty, pages)
        .map(|p| p.as_ptr())
        .map_err(|e: Error| alloc::format!("out of memory below 4 GiB ({bytes} bytes): {e:?}"))
}

/// A copy of the ACPI RSDP (ACPI 2.0+ preferred), with the tag type that carries it.
fn find_rsdp() -> Option<(u32, Vec<u8>)> {
    uefi::system::with_config_table(|tables| {
        for (guid, tag, len) in [
            (ConfigTableEntry::ACPI2_GUID, 15u32, 36usize),
            (ConfigTableEntry::ACPI_GUID, 14, 20),
        ] {
            if let Some(t) = tables.iter().find(|t| t.guid == guid) {
                // SAFETY: the firmware's configuration table points at an RSDP of
                // at least `len` bytes for this GUID (UEFI 2.10 section 4.6).
                let bytes = unsafe { core::slice::from_raw_parts(t.address as *const u8, len) };
                return Some((tag, bytes.to_vec()));
            }
        }
        None
    })
}

fn load() -> Result<(), String> {
    let sfs = boot::get_image_file_system(boot::image_handle())
        .map_err(|e| alloc::format!("no file system: {e:?}"))?;
    let mut fs = uefi::fs::FileSystem::new(sfs);
    let text = read_file(&mut fs, CONFIG_PATH)?;
    let config =
        parse_config(core::str::from_utf8(&text).map_err(|_| "hv.cfg is not UTF-8".to_string())?)?;

    let image = read_file(&mut fs, &config.hypervisor)?;
    let layout = elf::layout(&image).map_err(|e| alloc::format!("{}: {e}", config.hypervisor))?;
    info!(
        "loading {} ({} bytes) at {:#x}..{:#x}",
        config.hypervisor,
        image.len(),
        layout.start,
        layout.end
    );
    // LOADER_CODE: firmware may map LOADER_DATA non-executable.
    let pages = ((layout.end - layout.start) as usize).div_ceil(4096);
    boot::allocate_pages(
        AllocateType::Address(layout.start),
        MemoryType::LOADER_CODE,
        pages,
    )
    .map_err(|e| alloc::format!("{:#x}..{:#x} is not free: {e:?}", layout.start, layout.end))?;
    // SAFETY: the pages were just allocated for us at exactly this range.
    let dest = unsafe { core::slice::from_raw_parts_mut(layout.start as *mut u8, pages * 4096) };
    elf::copy_segments(&image, layout.start, dest).map_err(String::from)?;
    let entry = dest[..dest.len().min(32 * 1024)]
        .chunks_exact(8)
        .position(|c| c == ENTRY64_MAGIC.to_le_bytes())
        .and_then(|i| dest.get((i + 1) * 8..(i + 2) * 8))
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        .ok_or("the hypervisor image has no 64-bit entry header")?;

    let mut modules = Vec::new();
    for (path, args) in &config.modules {
        let bytes = read_file(&mut fs, path)?;
        let at = alloc_below_4g(bytes.len(), MemoryType::LOADER_DATA)?;
        // SAFETY: `at` is a fresh allocation of at least `bytes.len()` bytes.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), at, bytes.len()) };
        let name = if args.is_empty() {
            path.clone()
        } else {
            args.clone()
        };
        info!("module {path}: {} bytes at {:#x}", bytes.len(), at as u64);
        modules.push(multiboot2::Module {
            start: at as u64,
            end: at as u64 + bytes.len() as u64,
            name,
        });
    }
    let rsdp = find_rsdp();
    let info_buf = alloc_below_4g(INFO_PAGES * 4096, MemoryType::LOADER_DATA)?;
    info!("entering the hypervisor at {entry:#x}");

    // SAFETY: nothing below uses boot services; the allocator is not touched
    // again (the information structure goes into `info_buf`).
    let map = unsafe { boot::exit_boot_services(None) };
    // SAFETY: `info_buf` is ours (LOADER_DATA, INFO_PAGES pages) and stays valid.
    let buf = unsafe { core::slice::from_raw_parts_mut(info_buf, INFO_PAGES * 4096) };
    let regions = map.entries().map(|d| {
        (
            d.phys_start,
            d.page_count * 4096,
            multiboot2::memory_type(d.ty),
        )
    });
    multiboot2::build(
        buf,
        &config.cmdline,
        "hypervisor UEFI loader",
        &modules,
        regions,
        rsdp.as_ref().map(|(t, b)| (*t, b.as_slice())),
    );

    // SAFETY: `entry` is the hypervisor's `_start64` (System V ABI: RDI = magic,
    // RSI = information), in LOADER_CODE pages the firmware's page tables map.
    let start: extern "sysv64" fn(u64, u64) -> ! = unsafe { core::mem::transmute(entry as usize) };
    start(multiboot2::BOOT_MAGIC as u64, info_buf as u64)
}

#[entry]
fn main() -> Status {
    if uefi::helpers::init().is_err() {
        return Status::ABORTED;
    }
    match load() {
        Ok(()) => Status::SUCCESS,
        Err(e) => {
            log::error!("hypervisor loader: {e}");
            Status::LOAD_ERROR
        }
    }
}
