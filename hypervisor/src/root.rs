//! The root partition: all memory the hypervisor does not keep (GPA = SPA),
//! the devices, one VP per logical processor, started in 64-bit mode in the
//! root image (contract: `hv_abi::root_boot`). And the one exit dispatcher
//! every VP of it runs through.
use crate::bootinfo::{BootInfo, RegionKind};
use crate::frame_alloc::PAGE_SIZE;
use crate::page_table::{PageTable, Perms, TableMemory, SIZE_1G, SIZE_2M, X86};
use crate::partition_memory::PartitionMemory;
use crate::slat::Slat;
use crate::vcpu::{StartState, Vcpu};
use crate::virt::Caps;
use crate::x86::cpu;
use crate::{lp_state, memory, power, smp};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use hv_abi::{root_boot, RootBoot};
use hypervisor_core::hypercall_msrs::HypercallMsrs;
use hypervisor_core::vapic::{self, VirtualApic};
use log::{error, info};

/// The root's boot area after its image: page tables, GDT+TSS, then per VP
/// a slot of an unmapped guard page, a 64 KiB stack and the boot block page.
const STACK_PAGES: u64 = 16;
const VP_SLOT_PAGES: u64 = 1 + STACK_PAGES + 1;
/// Memory the hypervisor keeps back for itself when it hands RAM to the root
/// (VMCS/VMCB, SLAT tables of later partitions).
const KEEP_BYTES: u64 = 8 << 20;

pub struct RootPartition {
    pub slat_root: u64,
    pub cr3: u64,
    pub gdt: u64,
    pub entry: u64,
    pub vp_count: u32,
    /// `[start, end)` ranges of RAM the root owns, sorted.
    pub ram: Vec<(u64, u64)>,
    /// The `ram` range of the last lookup (PartitionMemory's hint).
    pub ram_hint: core::sync::atomic::AtomicUsize,
    pub hypervisor_bytes: u64,
    pub memory_total: u64,
    /// GUEST_OS_ID and HYPERCALL.
    pub hypercall_msrs: HypercallMsrs,
}

/// Where the root image goes, decided before the frame allocator hands
/// anything out (the range is reserved from the start).
pub struct RootImage {
    pub module: (u64, u64),
    pub layout: hypervisor_core::elf::Layout,
    /// Image plus the boot area behind it.
    pub reserved: (u64, u64),
    /// Which boot module holds the image.
    module_index: usize,
}

fn is_root_word(w: &str) -> bool {
    w == "root" || w.ends_with("/root")
}

/// The boot area for an image of `image_pages`: the page tables (PML4, PDPT,
/// a directory per GiB, and 4 KiB tables where permissions change within a
/// 2 MiB page: over the image and the boot area, plus their two ends), the
/// GDT page and the VPs' slots.
fn boot_area_pages(identity_top: u64, vps: u64, image_pages: u64) -> u64 {
    let slots = vps * VP_SLOT_PAGES;
    let tables = 2 + identity_top / SIZE_1G + 1 + (image_pages + slots + 64) / 512 + 3;
    tables + 1 + slots
}

/// A boot module's bytes.
fn module_bytes(start: u64, end: u64) -> &'static [u8] {
    // SAFETY: modules lie below 4 GiB (all our loaders put them there), in
    // the boot tables' identity map and in the hypervisor's own (which maps
    // all memory below `identity_top`), and nothing writes them; they are
    // only read.
    unsafe { core::slice::from_raw_parts(start as *const u8, (end - start) as usize) }
}

/// Finds the root module (a word of its string is `root`, or ends in `/root`;
/// the words after it are the root's command line) and checks its image.
pub fn find_image(bi: &BootInfo, max_vps: u64) -> Option<Result<RootImage, &'static str>> {
    // Runs before the heap exists: no allocation here.
    let module_index = bi
        .modules()
        .iter()
        .position(|m| m.name.as_str().split_whitespace().any(is_root_word))?;
    let m = &bi.modules()[module_index];
    let bytes = module_bytes(m.start, m.end);
    Some((|| {
        let layout = hypervisor_core::elf::layout(bytes)?;
        if layout.start != root_boot::ROOT_IMAGE_BASE {
            return Err("the root image is not linked at ROOT_IMAGE_BASE");
        }
        let top = bi.identity_top();
        let reserved = (
            layout.start,
            layout.end
                + boot_area_pages(top, max_vps, (layout.end - layout.start) / PAGE_SIZE)
                    * PAGE_SIZE,
        );
        if reserved.0 < m.end && m.start < reserved.1 {
            return Err("the root module was loaded where the root image must go");
        }
        Ok(RootImage {
            module: (m.start, m.end),
            layout,
            reserved,
            module_index,
        })
    })())
}

/// A bump allocator over the root's boot area (root memory the hypervisor
/// fills before the root runs).
struct BootArea<'a> {
    mem: PartitionMemory<'a>,
    next: u64,
    end: u64,
}

impl BootArea<'_> {
    /// `pages` zeroed pages of the boot area.
    fn take(&mut self, pages: u64) -> Option<u64> {
        let at = self.next;
        if at + pages * PAGE_SIZE > self.end {
            return None;
        }
        self.next += pages * PAGE_SIZE;
        self.mem.zero(at, pages * PAGE_SIZE).ok()?;
        Some(at)
    }
}

impl TableMemory for BootArea<'_> {
    fn alloc_table(&mut self) -> Option<u64> {
        self.take(1)
    }
    // Tables come from `take` (root RAM); a failed access reads as an empty
    // entry and writes nothing, which the builder then reports as unmapped.
    fn read(&self, table: u64, index: usize) -> u64 {
        self.mem
            .read_u64(table + 8 * (index & 511) as u64)
            .unwrap_or(0)
    }
    fn write(&mut self, table: u64, index: usize, value: u64) {
        let _ = self.mem.write_u64(table + 8 * (index & 511) as u64, value);
    }
}

/// Subtracts `[s, e)` from a sorted list of disjoint ranges.
fn subtract(ranges: &mut Vec<(u64, u64)>, s: u64, e: u64) {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(a, b) in ranges.iter() {
        if b <= s || a >= e {
            out.push((a, b));
            continue;
        }
        if a < s {
            out.push((a, s));
        }
        if e < b {
            out.push((e, b));
        }
    }
    *ranges = out;
}

/// The root's second-level table: its RAM write-back and executable, every
/// other address below `top` (devices, firmware, ACPI) uncached, except the
/// local APIC page; GPA = SPA, in the largest leaves the processor offers.
/// The hypervisor's memory is absent.
fn build_slat(
    caps: &Caps,
    bi: &BootInfo,
    ram: &[(u64, u64)],
    top: u64,
) -> Result<Slat, &'static str> {
    let err = "building the root's second-level tables failed";
    let mut slat = Slat::new(caps, Slat::max_page(caps)).ok_or(err)?;
    // Non-RAM: [0, top) minus every page-aligned usable region.
    let mut devices = alloc::vec![(0, top)];
    for r in bi.regions().iter().filter(|r| r.kind == RegionKind::Usable) {
        let (s, e) = (
            (r.start + PAGE_SIZE - 1) & !(PAGE_SIZE - 1),
            r.end & !(PAGE_SIZE - 1),
        );
        if e > s {
            subtract(&mut devices, s, e);
        }
    }
    // Root RAM may lie in regions the map does not call usable (our UEFI
    // loader's modules are loader data): it is mapped as RAM, once.
    for &(s, e) in ram {
        subtract(&mut devices, s, e);
    }
    subtract(&mut devices, vapic::APIC_PAGE, vapic::APIC_PAGE + PAGE_SIZE);
    for (s, e) in devices {
        if !slat.map_range(s, s, e - s, Perms::DEVICE) {
            return Err(err);
        }
    }
    for &(s, e) in ram {
        if !slat.map_range(s, s, e - s, Perms::RWX) {
            return Err(err);
        }
    }
    Ok(slat)
}

pub fn create(
    bi: &BootInfo,
    image: &RootImage,
    caps: &Caps,
    vp_count: u32,
) -> Result<RootPartition, &'static str> {
    // 1. Memory: everything free but a reserve goes to the root, plus its
    //    image and boot area and the modules (it reads guest images from them).
    let mut ram = memory::hand_over_free_memory(KEEP_BYTES);
    ram.push(image.reserved);
    // Page 0 (real-mode IVT, BIOS data area) is firmware's and so the root's;
    // the hypervisor only keeps it out of its own tables.
    if bi
        .regions()
        .iter()
        .any(|r| r.kind == RegionKind::Usable && r.start == 0 && r.end >= PAGE_SIZE)
    {
        ram.push((0, PAGE_SIZE));
    }
    for m in bi.modules() {
        ram.push((
            m.start & !(PAGE_SIZE - 1),
            (m.end + PAGE_SIZE - 1) & !(PAGE_SIZE - 1),
        ));
    }
    ram.sort_unstable();
    let top = bi.identity_top();

    // 2. The image, copied segment by segment from the module (no heap:
    //    the root's image, debug information and .bss are megabytes).
    let mem = PartitionMemory::new(&ram);
    let file = module_bytes(image.module.0, image.module.1);
    let not_root = |_| "the root image range is not root memory";
    mem.zero(image.layout.start, image.layout.end - image.layout.start)
        .map_err(not_root)?;
    for s in hypervisor_core::elf::segments(file).map_err(|_| "the root image's ELF headers")? {
        let bytes = file
            .get(s.offset as usize..s.offset.saturating_add(s.filesz) as usize)
            .ok_or("ELF segment runs past the end of the file")?;
        if s.paddr < image.layout.start || s.paddr.saturating_add(s.memsz) > image.layout.end {
            return Err("ELF segment outside its layout");
        }
        mem.write(s.paddr, bytes).map_err(not_root)?;
    }

    // 3. Boot area: the root's identity page tables, GDT and TSS; the VPs'
    // slots at its end. The identity map is W^X: the image's segments as
    // their flags say, all else read/write and not executable; page 0 and
    // each stack's guard page are not mapped.
    let slots = image.reserved.1 - vp_count as u64 * VP_SLOT_PAGES * PAGE_SIZE;
    let mut area = BootArea {
        mem,
        next: image.layout.end,
        end: slots,
    };
    let mut pt = PageTable::<X86>::new(&mut area, SIZE_2M, true).map_err(|_| "root page tables")?;
    let mut map = |area: &mut BootArea, start: u64, end: u64, perms: Perms| {
        if start < end {
            pt.map(area, start, start, end - start, perms)
                .map_err(|_| "root page tables")
        } else {
            Ok(())
        }
    };
    map(&mut area, PAGE_SIZE, image.layout.start, Perms::RW)?;
    for seg in hypervisor_core::elf::protections(file)? {
        let perms = match (seg.write, seg.execute) {
            (_, true) => Perms::RX,
            (true, false) => Perms::RW,
            (false, false) => Perms::R,
        };
        map(&mut area, seg.start, seg.end, perms)?;
    }
    map(&mut area, image.layout.end, slots, Perms::RW)?;
    for vp in 0..vp_count as u64 {
        let slot = slots + vp * VP_SLOT_PAGES * PAGE_SIZE;
        map(
            &mut area,
            slot + PAGE_SIZE,
            slot + VP_SLOT_PAGES * PAGE_SIZE,
            Perms::RW,
        )?;
    }
    map(
        &mut area,
        image.reserved.1,
        top.max(image.reserved.1),
        Perms::RW,
    )?;
    let gdt = area.take(1).ok_or("root boot area too small")?;
    let tss = gdt + 0x100;
    let tss_desc_low = 0x67
        | (tss & 0xFFFF) << 16
        | ((tss >> 16) & 0xFF) << 32
        | 0x89 << 40
        | ((tss >> 24) & 0xFF) << 56;
    for (i, d) in [
        0,
        0x00AF_9A00_0000_FFFF,
        0x00CF_9200_0000_FFFF,
        tss_desc_low,
        tss >> 32,
    ]
    .into_iter()
    .enumerate()
    {
        mem.write_u64(gdt + 8 * i as u64, d)
            .map_err(|_| "root GDT")?;
    }
    // An RSDP for the root (in the GDT page at 0x200): the loaders may have
    // handed the hypervisor only a copy.
    let rsdp = match bi.acpi {
        Some(acpi) => {
            mem.write(gdt + 0x200, &crate::bootinfo::make_rsdp(acpi))
                .map_err(|_| "root RSDP")?;
            gdt + 0x200
        }
        None => 0,
    };

    let slat = build_slat(caps, bi, &ram, top)?;
    let (slat_root, vendor_slat) = (slat.root(), slat.name());
    let root_bytes: u64 = ram.iter().map(|(s, e)| e - s).sum();
    let memory_total = bi.usable_bytes();
    let root = RootPartition {
        slat_root,
        cr3: pt.root(),
        gdt,
        entry: image.layout.entry,
        vp_count,
        // The boot area below still writes through `ram`; the root keeps a copy.
        ram: ram.clone(),
        ram_hint: core::sync::atomic::AtomicUsize::new(0),
        hypervisor_bytes: memory_total.saturating_sub(root_bytes),
        memory_total,
        hypercall_msrs: HypercallMsrs::new(),
    };

    // 4. One boot block and stack per VP.
    let mut free = root.ram.clone();
    subtract(&mut free, image.reserved.0, image.reserved.1);
    for m in bi.modules() {
        subtract(
            &mut free,
            m.start & !(PAGE_SIZE - 1),
            (m.end + PAGE_SIZE - 1) & !(PAGE_SIZE - 1),
        );
    }
    let mut block = RootBoot {
        vp_index: 0,
        vp_count,
        image_start: image.reserved.0,
        image_end: image.reserved.1,
        rsdp,
        cmdline: [0; root_boot::CMDLINE_MAX],
        cmdline_len: 0,
        ranges: [(0, 0); root_boot::MAX_RANGES],
        range_count: free.len().min(root_boot::MAX_RANGES) as u32,
        modules: [hv_abi::BootModule::default(); root_boot::MAX_MODULES],
        module_count: 0,
    };
    // The other modules (guest images), by name: the word after the file
    // name when the loader passes one (QEMU), else the string's last path part.
    for (i, m) in bi.modules().iter().enumerate() {
        if i == image.module_index || block.module_count as usize >= root_boot::MAX_MODULES {
            continue;
        }
        let mut words = m.name.as_str().split_whitespace();
        let first = words.next().unwrap_or("");
        let name = words
            .next()
            .unwrap_or_else(|| first.rsplit('/').next().unwrap_or(first));
        block.modules[block.module_count as usize] = hv_abi::BootModule::new(m.start, m.end, name);
        block.module_count += 1;
    }
    // The words after "root" in the module's string, and `poweroff` when the
    // hypervisor was given it: the root powers off once its shell is up.
    let mut cmdline = alloc::string::String::new();
    let name = bi.modules()[image.module_index].name.as_str();
    let args = name
        .split_whitespace()
        .skip_while(|w| !is_root_word(w))
        .skip(1);
    for w in args.chain(
        crate::OPTIONS_POWEROFF
            .load(Ordering::Relaxed)
            .then_some("poweroff"),
    ) {
        cmdline.push_str(w);
        cmdline.push(' ');
    }
    let cmd = cmdline.trim().as_bytes();
    let n = cmd.len().min(root_boot::CMDLINE_MAX);
    block.cmdline[..n].copy_from_slice(&cmd[..n]);
    block.cmdline_len = n as u32;
    for (slot, r) in block.ranges.iter_mut().zip(free.iter()) {
        *slot = *r;
    }
    let mut starts = Vec::new();
    for vp in 0..vp_count {
        block.vp_index = vp;
        // Guard page, stack (growing down towards the guard), boot block.
        let slot = slots + vp as u64 * VP_SLOT_PAGES * PAGE_SIZE;
        let stack = slot + PAGE_SIZE;
        let page = stack + STACK_PAGES * PAGE_SIZE;
        let mut encoded = [0u8; root_boot::SIZE];
        block
            .encode(&mut encoded)
            .ok_or("root boot block encoding")?;
        PartitionMemory::new(&root.ram)
            .write(page, &encoded)
            .map_err(|_| "root boot block")?;
        starts.push((page, stack + STACK_PAGES * PAGE_SIZE));
    }
    BOOT_SLOTS.call_once(|| starts);
    // Logged here, before any VP runs: once they do, the root owns the console
    // and log lines from other processors would cut into its output.
    for vp in 0..vp_count {
        info!(
            "root VP {vp} starting at {:#x} on LP {vp}",
            image.layout.entry
        );
    }
    info!(
        "root partition: image {:#x}..{:#x} entry {:#x}, {} MiB RAM in {} ranges, {} VPs, {vendor_slat} at {:#x}, hypervisor keeps {} MiB",
        image.layout.start,
        image.layout.end,
        root.entry,
        root_bytes >> 20,
        root.ram.len(),
        vp_count,
        slat_root,
        root.hypervisor_bytes >> 20
    );
    Ok(root)
}

static BOOT_SLOTS: spin::Once<Vec<(u64, u64)>> = spin::Once::new();

impl RootPartition {
    /// The start state of root VP `vp`.
    pub fn start_state(&self, vp: u32) -> Option<StartState> {
        let &(block, stack_top) = BOOT_SLOTS.get()?.get(vp as usize)?;
        Some(StartState {
            rip: self.entry,
            rsp: stack_top,
            rdi: block,
            cr3: self.cr3,
            gdt_base: self.gdt,
            gdt_limit: 0x27,
            tr_base: self.gdt + 0x100,
            slat_root: self.slat_root,
            tlb_tag: 1,
        })
    }

    /// The root's RAM, for copies in and out.
    pub fn memory(&self) -> PartitionMemory<'_> {
        PartitionMemory::with_hint(&self.ram, &self.ram_hint)
    }

    /// Whether `[gpa, gpa + len)` is RAM the root owns.
    pub fn owns(&self, gpa: u64, len: u64) -> bool {
        self.memory().owns(gpa, len)
    }
}

/// Moves what was sent to root VP `vp` into its APIC and advances its timer.
pub fn collect(vapic: &mut VirtualApic, vp: u32) {
    lp_state::get(vp).root_pending.take_into(vapic);
    vapic.tick(cpu::rdtsc());
}

/// Before entry: inject the highest deliverable interrupt, or ask to be told
/// when the VP can take it; shorten the slice to the virtual timer.
pub fn deliver_interrupts(vcpu: &mut Vcpu, vapic: &mut VirtualApic, vp: u32) {
    collect(vapic, vp);
    vcpu.offer_interrupt(vapic);
    vcpu.set_timer_deadline(vapic.deadline());
}

/// Requests interrupt `vector` in root VP `vp` (from any LP), and kicks its
/// LP unless that is this one.
pub fn raise_interrupt(vp: u32, vector: u8) {
    lp_state::get(vp).root_pending.post(vector);
    smp::kick(vp);
}

pub fn stop(vp: u32, why: &str) -> ! {
    error!("root partition stopped (VP {vp}): {why}");
    power::fail()
}
