//! The root partition: all memory the hypervisor does not keep (GPA = SPA),
//! the devices, one VP per logical processor, started in 64-bit mode in the
//! root image (contract: `hv_abi::root_boot`). And the one exit dispatcher
//! every VP of it runs through.
use crate::bootinfo::{BootInfo, RegionKind};
use crate::frame_alloc::PAGE_SIZE;
use crate::page_table::{
    Ept, Format, Npt, PageTable, Perms, TableMemory, SIZE_1G, SIZE_2M, SIZE_4K, X86,
};
use crate::partition_memory::PartitionMemory;
use crate::vcpu::{Exit, StartState, Vcpu, GP, UD};
use crate::virt::Caps;
use crate::x86::{cpu, msr};
use crate::{memory, power, smp, stats, time};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use hv_abi::{cpuid, hypercall, root_boot, RootBoot};
use hypervisor::vapic::{self, VirtualApic};
use log::{error, info, warn};

/// The root's boot area after its image: page tables, GDT+TSS, then per VP
/// a slot of an unmapped guard page, a 64 KiB stack and the boot block page.
const STACK_PAGES: u64 = 16;
const VP_SLOT_PAGES: u64 = 1 + STACK_PAGES + 1;
/// Memory the hypervisor keeps back for itself when it hands RAM to the root
/// (VMCS/VMCB, SLAT tables of later partitions).
const KEEP_BYTES: u64 = 8 << 20;
const LAPIC_PAGE: u64 = 0xFEE0_0000;

pub struct RootPartition {
    pub slat_root: u64,
    pub cr3: u64,
    pub gdt: u64,
    pub entry: u64,
    pub vp_count: u32,
    /// `[start, end)` ranges of RAM the root owns, sorted.
    pub ram: Vec<(u64, u64)>,
    pub hypervisor_bytes: u64,
    pub memory_total: u64,
    guest_os_id: AtomicU64,
    hypercall_msr: AtomicU64,
}

/// Where the root image goes, decided before the frame allocator hands
/// anything out (the range is reserved from the start).
pub struct RootImage {
    pub module: (u64, u64),
    pub layout: hypervisor::elf::Layout,
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

/// Finds the root module (a word of its string is `root`, or ends in `/root`;
/// the words after it are the root's command line) and checks its image.
pub fn find_image(bi: &BootInfo, max_vps: u64) -> Option<Result<RootImage, &'static str>> {
    // Runs before the heap exists: no allocation here.
    let module_index = bi
        .modules()
        .iter()
        .position(|m| m.name.as_str().split_whitespace().any(is_root_word))?;
    let m = &bi.modules()[module_index];
    let len = (m.end - m.start) as usize;
    // SAFETY: the module lies below 4 GiB (all our loaders put it there) in
    // the boot tables' identity map, and nothing writes it; it is only read.
    let bytes = unsafe { core::slice::from_raw_parts(m.start as *const u8, len) };
    Some((|| {
        let layout = hypervisor::elf::layout(bytes)?;
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

/// Builds the second-level table of the root: its RAM and every non-RAM
/// address (devices, firmware, ACPI) below `top`, except the local APIC page;
/// the hypervisor's memory is absent.
fn build_slat<F: Format>(
    bi: &BootInfo,
    ram: &[(u64, u64)],
    top: u64,
    max_page: u64,
) -> Result<u64, &'static str> {
    let err = |_| "building the root's second-level tables failed";
    memory::with_tables(|mem| {
        let mut pt = PageTable::<F>::new(mem, max_page, false).map_err(err)?;
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
        subtract(&mut devices, LAPIC_PAGE, LAPIC_PAGE + PAGE_SIZE);
        for (s, e) in devices {
            pt.map(mem, s, s, e - s, Perms::DEVICE).map_err(err)?;
        }
        for &(s, e) in ram {
            pt.map(mem, s, s, e - s, Perms::RWX).map_err(err)?;
        }
        Ok(pt.root())
    })
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

    // 2. The image, built in the heap and copied in.
    let mem = PartitionMemory::new(&ram);
    let mut file = alloc::vec![0u8; (image.module.1 - image.module.0) as usize];
    mem.read(image.module.0, &mut file)
        .map_err(|_| "the root module is not root memory")?;
    let mut loaded = alloc::vec![0u8; (image.layout.end - image.layout.start) as usize];
    hypervisor::elf::copy_segments(&file, image.layout.start, &mut loaded)?;
    mem.write(image.layout.start, &loaded)
        .map_err(|_| "the root image range is not root memory")?;
    drop(loaded);

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
    for seg in hypervisor::elf::protections(&file)? {
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
    drop(file);
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

    let (slat_root, vendor_slat) = match caps {
        // EPT large pages are their own capabilities; NPT uses the host's formats.
        Caps::Vmx(v) => {
            let max_page = if v.ept_1g {
                SIZE_1G
            } else if v.ept_2m {
                SIZE_2M
            } else {
                SIZE_4K
            };
            (build_slat::<Ept>(bi, &ram, top, max_page)?, "EPT")
        }
        Caps::Svm(_) => {
            let max_page = if cpu::has_1g_pages() {
                SIZE_1G
            } else {
                SIZE_2M
            };
            (build_slat::<Npt>(bi, &ram, top, max_page)?, "NPT")
        }
        Caps::None => return Err("no hardware virtualization"),
    };
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
        hypervisor_bytes: memory_total.saturating_sub(root_bytes),
        memory_total,
        guest_os_id: AtomicU64::new(0),
        hypercall_msr: AtomicU64::new(0),
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
        PartitionMemory::new(&self.ram)
    }

    /// Whether `[gpa, gpa + len)` is RAM the root owns.
    pub fn owns(&self, gpa: u64, len: u64) -> bool {
        self.memory().owns(gpa, len)
    }
}

/// What the dispatcher decided.
pub enum Next {
    Resume,
    /// The VP halted: the LP idles until an interrupt for it is pending.
    Halted,
    /// The root cannot go on: report and power off.
    Stop(alloc::string::String),
}

/// Interrupts other VPs sent to VP n, not yet taken into its APIC. `pending`
/// is set after the bits, so the owner skips the words when nothing came.
struct Mailbox {
    pending: AtomicBool,
    vectors: [AtomicU32; 8],
}

static MAILBOXES: [Mailbox; stats::MAX_LPS] = [const {
    Mailbox {
        pending: AtomicBool::new(false),
        vectors: [const { AtomicU32::new(0) }; 8],
    }
}; stats::MAX_LPS];

/// Moves VP `vp`'s mailbox into its APIC and advances its timer.
pub fn collect(vapic: &mut VirtualApic, vp: u32) {
    let mailbox = &MAILBOXES[vp as usize];
    let words = if mailbox.pending.swap(false, Ordering::AcqRel) {
        &mailbox.vectors[..]
    } else {
        &[]
    };
    for (i, word) in words.iter().enumerate() {
        let mut bits = word.swap(0, Ordering::AcqRel);
        while bits != 0 {
            let b = bits.trailing_zeros();
            vapic.request((i as u32 * 32 + b) as u8);
            bits &= bits - 1;
        }
    }
    vapic.tick(cpu::rdtsc());
}

/// Before entry: inject the highest deliverable interrupt, or ask to be told
/// when the VP can take it; shorten the slice to the virtual timer.
pub fn deliver_interrupts(vcpu: &mut Vcpu, vapic: &mut VirtualApic, vp: u32) {
    collect(vapic, vp);
    vcpu.offer_interrupt(vapic);
    vcpu.set_timer_deadline(vapic.deadline());
}

/// Requests interrupt `vector` in root VP `vp` (from any LP): its mailbox,
/// and a kick to its LP unless that is this one.
pub fn raise_interrupt(vp: u32, vector: u8) {
    let mailbox = &MAILBOXES[vp as usize % stats::MAX_LPS];
    mailbox.vectors[vector as usize / 32].fetch_or(1 << (vector % 32), Ordering::AcqRel);
    mailbox.pending.store(true, Ordering::Release);
    smp::kick(vp);
}

/// A fixed IPI from VP `sender`: into each target's mailbox (or straight into
/// the sender's own APIC), and a kick to every other LP involved.
fn send_ipi(
    root: &RootPartition,
    vapic: &mut VirtualApic,
    sender: u32,
    vector: u8,
    dest: vapic::Dest,
) {
    for target in 0..root.vp_count {
        if !VirtualApic::new(target).accepts(dest, sender) {
            continue;
        }
        if target == sender {
            vapic.request(vector);
        } else {
            raise_interrupt(target, vector);
        }
    }
}

pub fn stop(vp: u32, why: &str) -> ! {
    error!("root partition stopped (VP {vp}): {why}");
    power::fail()
}

pub fn dispatch(
    root: &RootPartition,
    caps: &Caps,
    vcpu: &mut Vcpu,
    vapic: &mut VirtualApic,
    vp: u32,
    exit: Exit,
) -> Next {
    use alloc::format;
    match exit {
        Exit::Cpuid => {
            let r = vcpu.regs();
            let answer = cpuid_for_root(r.rax as u32, r.rcx as u32, root, vp);
            vcpu.finish_cpuid(answer);
            Next::Resume
        }
        Exit::MsrRead => {
            let m = vcpu.regs().rcx as u32;
            let value = match m {
                vapic::X2APIC_MSR_FIRST..=vapic::X2APIC_MSR_LAST => {
                    vcpu.pull_tpr(vapic);
                    vapic.read(m, cpu::rdtsc())
                }
                msr::IA32_APIC_BASE => Some(apic_base(vp)),
                _ => crate::synic::read_msr(vp, m).or_else(|| read_msr(root, m)),
            };
            vcpu.finish_rdmsr(value);
            Next::Resume
        }
        Exit::MsrWrite => {
            let (m, v) = vcpu.wrmsr_operands();
            let done = match m {
                vapic::X2APIC_MSR_FIRST..=vapic::X2APIC_MSR_LAST => {
                    vcpu.pull_tpr(vapic);
                    match vapic.write(m, v, cpu::rdtsc()) {
                        vapic::Write::Done => true,
                        vapic::Write::Ipi { vector, dest } => {
                            send_ipi(root, vapic, vp, vector, dest);
                            true
                        }
                        // The root's VPs take host NMIs directly (no NMI
                        // exiting): virtual NMIs are for guests only.
                        vapic::Write::Nmi { .. } => {
                            warn!("root VP {vp}: NMI IPIs are not supported; ignored");
                            true
                        }
                        vapic::Write::Unsupported(mode) => {
                            warn!(
                                "root VP {vp}: IPI delivery mode {mode} is not supported; ignored"
                            );
                            true
                        }
                        vapic::Write::Fault => false,
                    }
                }
                // The APIC stays enabled in x2APIC mode at its base: only the BSP bit may differ.
                msr::IA32_APIC_BASE => v & !(1 << 8) == apic_base(vp) & !(1 << 8),
                _ => crate::synic::write_msr(root, vp, m, v)
                    .unwrap_or_else(|| write_msr(root, vcpu, m, v)),
            };
            vcpu.finish_wrmsr(done);
            Next::Resume
        }
        // TLFS: #UD below CPL 0 or in real mode, for the root's user code too.
        Exit::Hypercall if !vcpu.hypercall_allowed() => {
            vcpu.inject_exception(UD, None);
            Next::Resume
        }
        Exit::Hypercall => {
            hypercall(root, caps, vcpu);
            Next::Resume
        }
        Exit::CrAccess {
            cr: 8,
            write,
            gpr: Some(gpr),
        } => {
            if !vcpu.emulate_cr8(vapic, write, gpr) {
                vcpu.inject_exception(GP, Some(0));
            }
            Next::Resume
        }
        Exit::Halt => {
            vcpu.skip_instruction();
            Next::Halted
        }
        // As for guests: never natively (it would discard the hypervisor's
        // dirty cache lines); a no-op keeps memory coherent.
        Exit::Invd => {
            vcpu.skip_instruction();
            Next::Resume
        }
        Exit::Xsetbv => {
            let r = vcpu.regs();
            let (index, value) = (r.rcx as u32, (r.rdx << 32) | (r.rax & 0xFFFF_FFFF));
            // XCR0 must keep x87 and only name features the processor supports (CPUID 0xD).
            let supported = {
                let l = cpu::cpuid(0xD, 0);
                (l.edx as u64) << 32 | l.eax as u64
            };
            if index != 0
                || value & 1 == 0
                || value & !supported != 0
                || (value & 4 != 0 && value & 2 == 0)
            {
                vcpu.inject_exception(GP, Some(0));
            } else {
                // The root is the only partition on this LP and the hypervisor
                // uses no extended state: the live XCR0 is the root's.
                cpu::xsetbv(value);
                vcpu.skip_instruction();
            }
            Next::Resume
        }
        Exit::Undefined => {
            vcpu.inject_exception(UD, None);
            Next::Resume
        }
        Exit::Rdpmc => {
            vcpu.inject_exception(GP, Some(0));
            Next::Resume
        }
        Exit::ExternalInterrupt => {
            cpu::take_pending_interrupts();
            Next::Resume
        }
        Exit::Preemption | Exit::InterruptWindow => Next::Resume,
        Exit::Nmi => {
            warn!("NMI while running the root; ignored");
            Next::Resume
        }
        Exit::SlatViolation {
            gpa,
            write,
            execute,
        } => {
            let kind = if execute {
                "execute"
            } else if write {
                "write"
            } else {
                "read"
            };
            Next::Stop(format!(
                "{kind} of GPA {gpa:#x} at RIP {:#x}: {} memory, not the root's",
                vcpu.rip(),
                if gpa == LAPIC_PAGE {
                    "the local APIC (kept by the hypervisor)"
                } else {
                    "hypervisor"
                }
            ))
        }
        Exit::TripleFault => Next::Stop(format!("triple fault at RIP {:#x}", vcpu.rip())),
        Exit::MachineCheck => Next::Stop(format!("machine check at RIP {:#x}", vcpu.rip())),
        Exit::Exception { vector, .. } => Next::Stop(format!(
            "unexpected exception exit (vector {vector}) at RIP {:#x}",
            vcpu.rip()
        )),
        Exit::CrAccess { .. } => Next::Stop(format!(
            "unsupported control-register change at RIP {:#x}",
            vcpu.rip()
        )),
        Exit::Io(io) => Next::Stop(format!("unexpected I/O exit for port {:#x}", io.port)),
        Exit::EntryFailed(code) => Next::Stop(format!(
            "the processor refused to enter the VP (code {code:#x})"
        )),
        Exit::Other(code) => {
            Next::Stop(format!("unhandled exit {code:#x} at RIP {:#x}", vcpu.rip()))
        }
    }
}

/// CPUID as the root sees it: the processor's, with the hypervisor bit set,
/// VMX and SVM hidden, and the Hyper-V leaves.
fn cpuid_for_root(leaf: u32, sub: u32, root: &RootPartition, vp: u32) -> (u32, u32, u32, u32) {
    use cpuid::privilege::*;
    let view = crate::cpuid_view::View {
        privileges: (
            ACCESS_PARTITION_REFERENCE_COUNTER | ACCESS_HYPERCALL_MSRS | ACCESS_VP_INDEX,
            CREATE_PARTITIONS | CPU_MANAGEMENT,
        ),
        spin_retries: 0xFFFF_FFFF,
        limits: (root.vp_count, root.vp_count),
        leaf1_set: 1 << 21,                // x2APIC (virtual)
        leaf1_clear: (1 << 5) | (1 << 24), // VMX, TSC-deadline timer
        hide_xsave: false,
        guest: false,
    };
    crate::cpuid_view::answer(&view, leaf, sub, vp)
}

/// The virtual APIC's base MSR: the architectural base, enabled, x2APIC mode,
/// BSP on VP 0 (root and guest VPs alike).
pub fn apic_base(vp: u32) -> u64 {
    LAPIC_PAGE | (1 << 11) | (1 << 10) | ((vp == 0) as u64) << 8
}

fn read_msr(root: &RootPartition, m: u32) -> Option<u64> {
    match m {
        hv_abi::msr::GUEST_OS_ID => Some(root.guest_os_id.load(Ordering::Relaxed)),
        hv_abi::msr::HYPERCALL => Some(root.hypercall_msr.load(Ordering::Relaxed)),
        hv_abi::msr::VP_INDEX => Some(crate::percpu::index() as u64),
        // 100 ns units since boot.
        hv_abi::msr::TIME_REF_COUNT => Some(time::since_boot_us() * 10),
        // Locked, VMX off: the root may not use VMX.
        msr::IA32_FEATURE_CONTROL => Some(1),
        _ => None,
    }
}

fn write_msr(root: &RootPartition, vcpu: &mut Vcpu, m: u32, v: u64) -> bool {
    match m {
        hv_abi::msr::GUEST_OS_ID => {
            root.guest_os_id.store(v, Ordering::Relaxed);
            if v == 0 {
                root.hypercall_msr
                    .fetch_and(!hv_abi::msr::HYPERCALL_ENABLE, Ordering::Relaxed);
            }
            true
        }
        hv_abi::msr::HYPERCALL => {
            // TLFS: the page can be enabled only once a guest OS id is set.
            let gpa = v & !(PAGE_SIZE - 1);
            if v & hv_abi::msr::HYPERCALL_ENABLE != 0 {
                if root.guest_os_id.load(Ordering::Relaxed) == 0 || !root.owns(gpa, PAGE_SIZE) {
                    return false;
                }
                if root.memory().write(gpa, &vcpu.hypercall_page()).is_err() {
                    return false;
                }
            }
            root.hypercall_msr.store(v & !(0xFFE), Ordering::Relaxed);
            true
        }
        msr::IA32_EFER => vcpu.set_efer(v),
        _ => false,
    }
}

/// The root's hypercalls: checked against the dispatch table
/// (`hypervisor::hypercall`), then handled. The status goes to RAX (with the
/// reps completed in bits 43:32); a rep call that is not finished, or must
/// wait for a VP's LP, returns to the same instruction with its rep start
/// index advanced (TLFS rep continuation).
fn hypercall(root: &RootPartition, caps: &Caps, vcpu: &mut Vcpu) {
    use hypervisor::hypercall::{check, Caller, Form};
    let r = *vcpu.regs();
    let finish = |vcpu: &mut Vcpu, status: u16, reps: u16| {
        vcpu.regs().rax = status as u64 | (reps as u64) << 32;
        vcpu.skip_instruction();
    };
    let call = match check(r.rcx, r.rdx, r.r8, Caller::Root, &|gpa, len| {
        root.owns(gpa, len)
    }) {
        Ok(call) => call,
        Err(status) => return finish(vcpu, status, 0),
    };
    // Input copied in (checked to be root memory, at most a page); the
    // output built in hypervisor memory and copied out.
    // Exactly the blocks' sizes: zeroing whole pages would cost more than
    // most calls.
    let in_len = match call.input_block {
        Some((_, len)) => len as usize,
        None if call.input.fast => 16,
        None => 0,
    };
    let mut input = alloc::vec![0u8; in_len];
    match call.input_block {
        Some((gpa, _)) if root.memory().read(gpa, &mut input).is_err() => {
            return finish(vcpu, hypercall::status::INVALID_PARAMETER, 0);
        }
        Some(_) => {}
        None if call.input.fast => {
            input[..8].copy_from_slice(&r.rdx.to_le_bytes());
            input[8..16].copy_from_slice(&r.r8.to_le_bytes());
        }
        None => {}
    }
    let mut out = alloc::vec![0u8; call.output_block.map_or(0, |(_, len)| len as usize)];
    let (status, reps_done, written) = match call.spec.code {
        hypercall::GET_HOST_INFO => {
            let ok = crate::host_info(root).encode(&mut out).is_some();
            (ok_status(ok), 0, hv_abi::HostInfo::SIZE)
        }
        hypercall::GET_HOST_STATS => {
            let ok = hv_abi::HostStats::encode(&stats::snapshot(), &mut out).is_some();
            (ok_status(ok), 0, PAGE_SIZE as usize)
        }
        hypercall::GET_HOST_LOG => {
            let from = input
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes);
            let ok = crate::serial::read_log(from, &mut out);
            (ok_status(ok), 0, PAGE_SIZE as usize)
        }
        code => {
            let reps = (call.input.rep_start, call.input.rep_count);
            let o = crate::partition::call(root, caps, code, reps, &input, &mut out);
            (o.status, o.reps_done, o.output_len)
        }
    };
    if let Some((gpa, len)) = call.output_block {
        // A rep call writes only the elements this entry did: earlier
        // entries' stay as they were.
        let from = match call.spec.form {
            Form::Rep { element_out, .. } => {
                (element_out as usize * call.input.rep_start as usize).min(len as usize)
            }
            Form::Simple { .. } => 0,
        };
        let to = written.min(len as usize);
        if to > from
            && root
                .memory()
                .write(gpa + from as u64, &out[from..to])
                .is_err()
        {
            return finish(vcpu, hypercall::status::INVALID_PARAMETER, reps_done);
        }
    }
    let is_rep = matches!(call.spec.form, Form::Rep { .. });
    let unfinished =
        is_rep && status == hypercall::status::SUCCESS && reps_done < call.input.rep_count;
    if status == crate::partition::RETRY || unfinished {
        // Same instruction again, from the first rep not done.
        let mut input = call.input;
        input.rep_start = reps_done.max(call.input.rep_start);
        vcpu.regs().rcx = input.encode();
        return;
    }
    finish(vcpu, status, reps_done)
}

fn ok_status(ok: bool) -> u16 {
    if ok {
        hypercall::status::SUCCESS
    } else {
        hypercall::status::INVALID_PARAMETER
    }
}
