//! The hypervisor binary: boot on bare metal (or in QEMU, Bochs) and take the
//! processors.
//!
//! Boot sequence (docs/boot.md): entry code → boot tables → serial, TSC, GDT,
//! IDT → boot information → memory (frame allocator, W^X page tables, heap) →
//! guarded stack → ACPI → local APIC → virtualization capabilities → every
//! application processor → summary line.
#![no_std]
#![no_main]

extern crate alloc;

pub use hypervisor_core::{bootinfo, cmdline, frame_alloc, page_table};

/// `poweroff` was on the command line (passed on to the root partition when there is one).
pub static OPTIONS_POWEROFF: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

mod boot;
mod cpuid_view;
mod guest;
mod lp;
mod lp_state;
mod memory;
mod partition;
mod partition_memory;
mod percpu;
mod platform;
mod ports;
mod power;
mod root;
mod root_exits;
mod serial;
mod slat;
mod smp;
mod stats;
mod synic;
mod time;
mod vcpu;
mod virt;
mod x86;

use bootinfo::BootInfo;
use cmdline::{LogLevel, Options, SelfTest};
use core::fmt::Write;
use core::sync::atomic::Ordering;
use log::{error, info, warn};
use percpu::PerCpu;
use spin::Once;
use x86::{apic, cpu, idt};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

static BOOT_INFO: Once<BootInfo> = Once::new();
static BSP_CAPS: Once<virt::Caps> = Once::new();
static ROOT_IMAGE: Once<Option<root::RootImage>> = Once::new();
/// Set once the root partition exists (or is known not to): APs wait for it.
static ROOT: Once<Option<root::RootPartition>> = Once::new();
static mut BSP_PERCPU: PerCpu = PerCpu::new(0, 0);

/// Entered from `boot.rs` in long mode on the boot tables, by every loader.
#[no_mangle]
extern "C" fn hypervisor_entry(magic: u32, info: u64) -> ! {
    boot::enter_boot_tables();
    serial::init();
    time::calibrate();
    // SAFETY: the boot processor is alone; BSP_PERCPU is used only here.
    let bsp = unsafe { &mut *core::ptr::addr_of_mut!(BSP_PERCPU) };
    bsp.apic_id = cpu::apic_id();
    idt::init();
    // SAFETY: as above; the tables then live in a static for good.
    unsafe { (*core::ptr::addr_of_mut!(BSP_PERCPU)).tables.load() };
    idt::load();
    percpu::install(bsp);

    let phys = memory::IdentityPhys { limit: 4 << 30 };
    let mut bi = match bootinfo::parse(magic, info, &phys) {
        Ok(bi) => bi,
        Err(e) => fatal(format_args!(
            "cannot read the boot information: {e:?} (magic {magic:#x} at {info:#x})"
        )),
    };
    if bi.acpi.is_none() {
        // The boot tables map page 0: the EBDA is searched too.
        bi.acpi = bootinfo::find_rsdp_bios(&phys).map(|(_, root)| root);
    }
    let bi = BOOT_INFO.call_once(|| bi);
    let opts = Options::parse(bi.cmdline.as_str());
    serial::init_logger(match opts.log_level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    });
    info!(
        "hypervisor {VERSION} starting: {:?} from \"{}\", command line \"{}\", TSC {} MHz",
        bi.protocol,
        bi.loader_name.as_str(),
        bi.cmdline.as_str(),
        time::tsc_hz() / 1_000_000
    );
    if let Some(word) = opts.unknown {
        warn!("command line: ignoring \"{word}\" (known: log=LEVEL poweroff apic=xapic|x2apic selftest=page-fault|stack-overflow)");
    }
    for r in bi.regions() {
        log::debug!("memory {:#014x}..{:#014x} {:?}", r.start, r.end, r.kind);
    }
    if bi.regions_dropped > 0 {
        warn!(
            "memory map: {} regions beyond {} ignored",
            bi.regions_dropped,
            bootinfo::MAX_REGIONS
        );
    }
    for (i, m) in bi.modules().iter().enumerate() {
        info!(
            "module {i}: \"{}\" at {:#x}..{:#x} ({} bytes)",
            m.name.as_str(),
            m.start,
            m.end,
            m.end - m.start
        );
    }

    OPTIONS_POWEROFF.store(opts.poweroff, Ordering::Relaxed);
    // The root image's place is reserved before anything is allocated.
    let root_image = match root::find_image(bi, lp_state::MAX_LPS as u64) {
        Some(Ok(image)) => Some(image),
        Some(Err(e)) => fatal(format_args!("root partition image: {e}")),
        None => None,
    };
    let reserve: &[(u64, u64)] = match &root_image {
        Some(image) => core::slice::from_ref(&image.reserved),
        None => &[],
    };
    let report = memory::init(bi, reserve).unwrap_or_else(|e| fatal(format_args!("memory: {e}")));
    ROOT_IMAGE.call_once(|| root_image);
    init_processor_state();
    let (image_start, image_end) = memory::image_range();
    info!(
        "memory: image {:#x}..{:#x}, identity map to {:#x}, heap {} KiB, {} MiB free, page tables W^X",
        image_start,
        image_end,
        report.identity_top,
        report.heap_bytes / 1024,
        report.free_pages / 256
    );
    let stack =
        memory::alloc_stack(smp::STACK_PAGES).unwrap_or_else(|e| fatal(format_args!("{e}")));
    memory::run_on_stack(stack, bsp_main, report.trampoline_page)
}

/// The rest of the boot processor's start, on a guarded stack.
extern "C" fn bsp_main(trampoline_page: u64) -> ! {
    let bi = BOOT_INFO
        .get()
        .unwrap_or_else(|| fatal(format_args!("boot information missing")));
    let opts = Options::parse(bi.cmdline.as_str());
    // SAFETY: the boot processor's per-CPU data; its TSS takes the new IST stacks.
    let bsp = unsafe { &mut *core::ptr::addr_of_mut!(BSP_PERCPU) };
    smp::give_ist_stacks(bsp).unwrap_or_else(|e| fatal(format_args!("{e}")));

    let platform = match bi.acpi.map(platform::read) {
        Some(Ok(p)) => p,
        Some(Err(e)) => fatal(format_args!("ACPI tables unreadable: {e:?}")),
        None => fatal(format_args!("no ACPI tables (RSDP not found)")),
    };
    for io in &platform.io_apics {
        info!(
            "I/O APIC {} at {:#x}, GSI base {}",
            io.id, io.address, io.gsi_base
        );
    }
    match platform.power {
        Some(p) => {
            info!(
                "ACPI power-off: PM1a_CNT {:#x}, PM1b_CNT {:?}, S5 type {:?}",
                p.pm1a_control, p.pm1b_control, p.s5
            );
            power::set_acpi(p);
        }
        None => warn!("ACPI power-off unavailable (no FADT PM1 I/O block or no \\_S5)"),
    }

    // The 8259 PICs stay masked: the hypervisor takes no legacy interrupts, and
    // an unmasked firmware IRQ would arrive on an exception vector.
    x86::port::outb(0x21, 0xFF);
    x86::port::outb(0xA1, 0xFF);
    let mode = if apic::x2apic_supported() && !opts.force_xapic {
        apic::Mode::X2Apic
    } else {
        apic::Mode::XApic
    };
    apic::select(mode);
    apic::enable();
    let caps = *BSP_CAPS.call_once(virt::detect);
    lp_state::get(0)
        .apic_id
        .store(apic::id(), Ordering::Relaxed);
    info!(
        "cpu0 online: APIC ID {} ({:?}), {:?}",
        apic::id(),
        mode,
        cpu::vendor()
    );
    info!("virtualization: {caps}");

    let enabled: alloc::vec::Vec<u32> = platform
        .processors
        .iter()
        .filter(|p| p.enabled)
        .map(|p| p.apic_id)
        .collect();
    let disabled = platform.processors.len() - enabled.len();
    info!(
        "ACPI MADT: {} processors enabled, {} not started (disabled or hot-add)",
        enabled.len(),
        disabled
    );
    let started = smp::start_aps(&enabled, trampoline_page);
    let deadline = time::deadline_us(2_000_000);
    while smp::ONLINE.load(Ordering::Acquire) < started + 1 && !time::passed(deadline) {
        cpu::pause();
    }

    match opts.selftest {
        Some(SelfTest::PageFault) => {
            info!("selftest: reading address 0");
            // SAFETY: deliberately faults (page 0 is unmapped) to test the report.
            let v = unsafe { core::ptr::read_volatile(core::ptr::null::<u64>()) };
            error!("selftest: read of address 0 returned {v:#x}");
        }
        Some(SelfTest::StackOverflow) => {
            info!("selftest: overflowing the stack");
            error!("selftest: recursion returned {}", recurse(0));
        }
        None => {}
    }

    let vendor = match cpu::vendor() {
        cpu::Vendor::Intel => "intel",
        cpu::Vendor::Amd => "amd",
        cpu::Vendor::Other => "other",
    };
    serial::println(format_args!(
        "hypervisor: {} logical processors online, {} MiB usable, vendor={vendor}, slat={}",
        smp::ONLINE.load(Ordering::Acquire),
        bi.usable_bytes() >> 20,
        caps.slat()
    ));
    let image = ROOT_IMAGE.get().and_then(|i| i.as_ref());
    let Some(image) = image else {
        ROOT.call_once(|| None);
        if opts.poweroff {
            power::power_off();
        }
        info!("boot complete; no root partition module; processors idle");
        cpu::halt_forever()
    };
    let vps = smp::ONLINE.load(Ordering::Acquire);
    let created = root::create(bi, image, &caps, vps);
    let root = match ROOT.call_once(|| created.map_err(|e| error!("root partition: {e}")).ok()) {
        Some(r) => r,
        None => fatal(format_args!("cannot create the root partition")),
    };
    lp::run(root, &caps, 0)
}

/// The hypervisor's version as (major, minor).
pub fn version_numbers() -> (u16, u16) {
    let mut parts = VERSION.split('.').map(|p| p.parse::<u16>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// What `GET_HOST_INFO` reports.
pub fn host_info(root: &root::RootPartition) -> hv_abi::HostInfo {
    let mut v = VERSION.split('.').map(|p| p.parse::<u16>().unwrap_or(0));
    let caps = BSP_CAPS.get().copied().unwrap_or(virt::Caps::None);
    hv_abi::HostInfo {
        abi_version: hv_abi::ABI_VERSION,
        version: [
            v.next().unwrap_or(0),
            v.next().unwrap_or(0),
            v.next().unwrap_or(0),
        ],
        vendor: if matches!(caps, virt::Caps::Vmx(_)) {
            hv_abi::Vendor::Intel
        } else {
            hv_abi::Vendor::Amd
        },
        slat: if matches!(caps, virt::Caps::Vmx(_)) {
            hv_abi::Slat::Ept
        } else {
            hv_abi::Slat::Npt
        },
        logical_processors: smp::ONLINE.load(Ordering::Acquire),
        root_vps: root.vp_count,
        memory_total_bytes: root.memory_total,
        hypervisor_bytes: root.hypervisor_bytes,
        hypervisor_free_bytes: memory::free_bytes(),
        tsc_hz: time::tsc_hz(),
        lp0_apic_id: lp_state::get(0).apic_id.load(Ordering::Relaxed),
    }
}

/// Never returns normally: each frame holds a page, so it runs into the guard page.
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let buf = core::hint::black_box([depth; 512]);
    recurse(depth + 1) + buf[depth as usize % 512]
}

/// Control-register state every processor runs with: CR0.WP (read-only pages
/// stay read-only in ring 0), caches on (CD and NW clear: firmware such as the
/// Bochs BIOS may hand over with caching disabled), CR4.OSXSAVE where XSAVE
/// exists (so partitions' XSETBV can be carried out), CR4.OSFXSR (partitions'
/// SSE state is saved with FXSAVE).
fn init_processor_state() {
    const WP: u64 = 1 << 16;
    const NW: u64 = 1 << 29;
    const CD: u64 = 1 << 30;
    const OSFXSR: u64 = 1 << 9;
    const OSXSAVE: u64 = 1 << 18;
    // SAFETY: adds the write protection the page tables intend and enables
    // caching, which the identity map's memory types (PAT/MTRR) already describe.
    unsafe { cpu::write_cr0((cpu::read_cr0() | WP) & !(CD | NW)) };
    // SAFETY: OSFXSR makes FXSAVE/FXRSTOR include the SSE registers (partitions'
    // state, saved around every exit); the hypervisor itself uses no SSE.
    unsafe { cpu::write_cr4(cpu::read_cr4() | OSFXSR) };
    if cpu::cpuid(1, 0).ecx & (1 << 26) != 0 {
        // SAFETY: OSXSAVE only permits XGETBV/XSETBV; the hypervisor itself uses
        // no extended state.
        unsafe { cpu::write_cr4(cpu::read_cr4() | OSXSAVE) };
    }
}

/// An application processor, on its own stack and the hypervisor's tables.
#[no_mangle]
extern "C" fn ap_entry(percpu_addr: u64) -> ! {
    let me = smp::take_launch(percpu_addr);
    let (index, apic_id) = (me.index, me.apic_id);
    // SAFETY: `me` is this processor's alone and leaked ('static).
    unsafe { (*(me as *mut PerCpu)).tables.load() };
    idt::load();
    percpu::install(me);
    init_processor_state();
    apic::enable();
    let caps = virt::detect();
    let same = BSP_CAPS.get() == Some(&caps);
    info!(
        "cpu{index} online: APIC ID {apic_id}{}",
        if same {
            ""
        } else {
            ", virtualization differs from cpu0"
        }
    );
    if !same {
        warn!("cpu{index} virtualization: {caps}");
    }
    smp::ONLINE.fetch_add(1, Ordering::AcqRel);
    // Wait until the boot processor has created the root partition (or found none).
    let root = loop {
        if let Some(r) = ROOT.get() {
            break r;
        }
        cpu::pause();
    };
    match (root, BSP_CAPS.get()) {
        (Some(root), Some(caps)) => lp::run(root, caps, index),
        _ => cpu::halt_forever(),
    }
}

/// A boot error with no way forward: report it and power off with failure.
fn fatal(args: core::fmt::Arguments) -> ! {
    let mut out = serial::emergency();
    let _ = writeln!(out, "FATAL on cpu{}: {args}", percpu::index());
    power::fail()
}

/// Every interrupt and exception: the host timer and a kick are
/// acknowledged (the timer noted for the LP loop), a device interrupt of the
/// root acknowledged and handed to the root VP on this LP; anything else is
/// reported (vector, error code, RIP, CR2, registers, processor) and
/// the machine powers off with failure.
#[no_mangle]
extern "C" fn interrupt_entry(f: &idt::TrapFrame) {
    if f.vector <= 0xFF && hv_abi::ROOT_DEVICE_VECTORS.contains(&(f.vector as u8)) {
        // A device the root programmed: acknowledged here, the root's own
        // interrupt from here on (edge-triggered: nothing is left asserted).
        apic::eoi();
        root::raise_interrupt(percpu::index(), f.vector as u8);
        return;
    }
    if f.vector == idt::HOST_TIMER_VECTOR || f.vector == idt::HOST_KICK_VECTOR {
        if f.vector == idt::HOST_TIMER_VECTOR {
            lp_state::get(percpu::index())
                .timer_fired
                .store(true, Ordering::Release);
        }
        apic::eoi();
        return;
    }
    exception_report(f)
}

fn exception_report(f: &idt::TrapFrame) -> ! {
    let mut out = serial::emergency();
    let cpu = percpu::index();
    let _ = writeln!(
        out,
        "\nEXCEPTION on cpu{cpu}: vector {} ({}), error code {:#x}\n  rip={:#018x} cs={:#x} rflags={:#x} rsp={:#018x} ss={:#x}\n  \
         cr2={:#018x} cr3={:#018x} cr0={:#x} cr4={:#x}\n  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  \
         rsi={:#018x} rdi={:#018x} rbp={:#018x} r8 ={:#018x}\n  r9 ={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}\n  \
         r13={:#018x} r14={:#018x} r15={:#018x}\ncpu{cpu} stopped; powering off with failure status",
        f.vector,
        hypervisor_core::exceptions::name(f.vector),
        f.error_code,
        f.rip,
        f.cs,
        f.rflags,
        f.rsp,
        f.ss,
        cpu::read_cr2(),
        cpu::read_cr3(),
        cpu::read_cr0(),
        cpu::read_cr4(),
        f.rax,
        f.rbx,
        f.rcx,
        f.rdx,
        f.rsi,
        f.rdi,
        f.rbp,
        f.r8,
        f.r9,
        f.r10,
        f.r11,
        f.r12,
        f.r13,
        f.r14,
        f.r15
    );
    power::fail()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut out = serial::emergency();
    let _ = writeln!(
        out,
        "\nPANIC on cpu{}: {info}\npowering off with failure status",
        percpu::index()
    );
    power::fail()
}
