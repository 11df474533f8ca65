//! The VM worker: guest partitions from the shell's `vm` commands, their
//! memory (taken from the root's free RAM), their images and start state,
//! and the intercepts their VPs raise (serial output, the exit and
//! power-off ports, faults), answered through SetVpRegisters.
use crate::host_disk::{self, VmDisk};
use crate::network::Network;
use crate::ram_disk::RamDisk;
use crate::vmbus_server::{self, DeviceStage, IcStage, NicSpec, VmBus};
use crate::{heap, hypercall, print, println, serial, synic};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::fmt::Write;
use hv_abi::hypercall::status;
use hv_abi::layout::{
    AssertVirtualInterrupt, CreatePartition, CreatePartitionOutput, CreateVp, GetPartitionProperty,
    GetPartitionPropertyOutput, Immutable, InstallIntercept, IntoBytes, MapFlags, MapGpaPages,
    MapGpaPagesElement, PartitionId, PartitionVp, RegisterAssoc, SetPartitionProperty,
    SetVpRegisters, UnmapGpaPages,
};
use hv_abi::partition::{code, intercept, property, reg};
use hv_abi::synic::{
    self as msg, kind, unrecoverable, ExceptionIntercept, IoPortIntercept, MemoryIntercept,
};
use hv_abi::{BootModule, RootBoot};
use root_partition_svc::format::{self, Percent, Size};
use root_partition_svc::ioapic::{self, IoApic};
use root_partition_svc::linux_boot;
use root_partition_svc::vm_command::{
    CpuSettings, DeviceKind, DiskSource, NewVm, VmCommand, WaitFor, CMDLINE_MAX, NAME_MAX,
};
use root_partition_svc::vmm::{
    self, Console, Devices, EntryMode, IoEffect, MemoryPool, Report, ReportOnce,
};
use root_partition_svc::vswitch::{Mac, MacDisplay, PortKind};
use vmbus::scsi::BlockDevice;
use vmbus::scsi::Identity;

pub const MAX_VMS: usize = 16;
/// Console output kept per VM (a Linux boot log fits).
const CONSOLE_BYTES: usize = 64 * 1024;
const REASON_MAX: usize = 120;
/// How long `vm stop` waits for a guest it asked to shut down.
const SHUTDOWN_TIMEOUT_S: u64 = 60;
/// Disks on a VM's SCSI controller (LUNs 0-63, as Hyper-V's).
const MAX_DISKS: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    Off,
    Starting,
    Running,
    Stopping,
    Failed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Off => "Off",
            State::Starting => "Starting",
            State::Running => "Running",
            State::Stopping => "Stopping",
            State::Failed => "Failed",
        }
    }
}

pub struct Vm {
    name: [u8; NAME_MAX],
    name_len: usize,
    partition: u64,
    state: State,
    /// Why it is Off or Failed ("exit code 0", "triple fault at RIP ...").
    reason: [u8; REASON_MAX],
    reason_len: usize,
    memory_base: u64,
    memory_bytes: u64,
    vcpus: u32,
    module: BootModule,
    /// A Linux guest's initrd and command line.
    initrd: Option<BootModule>,
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
    console: Console<CONSOLE_BYTES>,
    devices: Devices,
    /// The guest reset itself: the VM restarts once its intercept is done,
    /// keeping its console output (the administrator sees both boots).
    reset_requested: bool,
    /// The start under way follows the guest's own reset: its console
    /// output and CMOS RAM (battery-backed on a PC) are kept.
    after_guest_reset: bool,
    /// `vm console` is attached: output goes to the operator as it comes.
    attached: bool,
    started_tsc: u64,
    /// VPs that halted for good or were stopped.
    stopped_vps: u64,
    /// Ports not emulated and absent MMIO pages the guest touched, each
    /// reported once (the first few).
    reported_ports: ReportOnce<32>,
    reported_mmio: ReportOnce<8>,
    /// Failed AssertVirtualInterrupt requests (port 0xF5) this run: the
    /// first is reported, the rest only counted (`vm show`).
    interrupt_failures: u64,
    /// I/O APIC interrupts refused (an entry asking for what is not
    /// offered) this run: the first is reported, the rest counted.
    ioapic_refusals: u64,
    /// The guest page the test device (port 0xF6) unmapped, mapped back at
    /// the VM's first access to it.
    unmapped: Option<u64>,
    /// (run time in 100 ns, TSC) at the last `vm list`.
    sample: (u64, u64),
    /// Its VMBus server while it runs.
    vmbus: Option<VmBus>,
    /// `vm stop` asked the guest to shut down: the TSC by which it must be
    /// off, or it is turned off.
    /// `vm stop` asked the guest to shut down: when it is turned off
    /// (TSC) unless it did, and the seconds that gave it.
    shutdown_deadline: Option<(u64, u64)>,
    /// The administrator added the echo device (offered at every start).
    echo: bool,
    /// The disks on its SCSI controller (LUN = index), served at every start.
    disks: Vec<(VmDisk, Identity)>,
    /// Its network adapters, each a port of a switch (kept while it is off).
    nics: Vec<VmNic>,
    /// VMBus messages the server refused from the guest and dropped to it,
    /// in the last run (kept when the server goes with the run).
    vmbus_refused: (u64, u64),
}

impl Vm {
    fn name(&self) -> &str {
        core::str::from_utf8(&self.name[..self.name_len]).unwrap_or("?")
    }

    fn reason(&self) -> &str {
        core::str::from_utf8(&self.reason[..self.reason_len]).unwrap_or("")
    }

    fn set_reason(&mut self, args: core::fmt::Arguments) {
        let mut buf = [0u8; REASON_MAX];
        let mut w = format::BufWriter::new(&mut buf);
        let _ = w.write_fmt(args);
        let n = w.as_str().len();
        self.reason[..n].copy_from_slice(&buf[..n]);
        self.reason_len = n;
    }
}

/// A VM's network adapter: its number (`vm nic`), switch and port there,
/// address and VLAN.
#[derive(Clone, Copy, Debug)]
struct VmNic {
    number: u32,
    switch: usize,
    port: u32,
    mac: Mac,
    vlan: u16,
}

impl VmNic {
    fn spec(&self) -> NicSpec {
        NicSpec {
            number: self.number,
            mac: self.mac,
            switch: self.switch,
            port: self.port,
        }
    }
}

/// Network adapters per VM, at most.
const MAX_NICS: usize = 8;

pub struct Vmm {
    vms: [Option<Vm>; MAX_VMS],
    /// The virtual switches and the host's NIC.
    pub net: Network,
    pool: MemoryPool<64>,
    modules: [BootModule; hv_abi::root_boot::MAX_MODULES],
    module_count: usize,
    tsc_hz: u64,
    lps: u32,
    /// The host's clock: (Unix seconds, TSC) when the root read its RTC.
    host_time: (u64, u64),
    /// VMBus SINT interrupts taken when the worker last read the VMBus
    /// slot and event flags: unchanged, nothing new is there.
    vmbus_seen: u64,
    /// When the VMBus servers' housekeeping (`VmBus::tick`) last ran.
    last_tick: u64,
    /// A VMBus channel is polled (`vmbus::poll`): the worker looks at it
    /// every poll and must not sleep.
    polling: bool,
    /// The intercept messages' buffer (`poll`).
    inbox: Option<alloc::boxed::Box<msg::Message>>,
    /// The slot of the VM whose intercept came last: the next one is most
    /// likely from it too (checked before it is used).
    intercept_slot: usize,
    /// The root's idle timer is stopped: a polled channel caught packets,
    /// so the worker will not sleep for a while (each tick would only cost
    /// an exit). A probe that catches nothing leaves it running.
    timer_stopped: bool,
    /// A bus had work that waits for a tick at its last look
    /// (`VmBus::wants_tick_soon`): the idle tick is the quiet one, not the
    /// sleepy one.
    tick_soon: bool,
    /// Someone watches output that does not wake the root (`host log
    /// --follow`): the idle tick stays quick.
    watching: bool,
}

/// How often (µs) the VMBus servers' housekeeping runs at least: timers of
/// seconds, and rings a guest filled without signalling.
const TICK_US: u64 = 100;

struct Global(UnsafeCell<Vmm>);
// SAFETY: only VP 0 (the shell) uses the worker, never re-entrantly.
unsafe impl Sync for Global {}

static VMM: Global = Global(UnsafeCell::new(Vmm {
    vms: [const { None }; MAX_VMS],
    net: Network::new(),
    pool: MemoryPool::new(),
    modules: [BootModule {
        start: 0,
        end: 0,
        name: [0; hv_abi::root_boot::MODULE_NAME_MAX],
    }; hv_abi::root_boot::MAX_MODULES],
    module_count: 0,
    tsc_hz: 1,
    lps: 1,
    host_time: (0, 0),
    vmbus_seen: 0,
    last_tick: 0,
    polling: false,
    inbox: None,
    intercept_slot: 0,
    timer_stopped: false,
    tick_soon: false,
    watching: false,
}));

/// The worker (VP 0's shell only).
pub fn get() -> &'static mut Vmm {
    // SAFETY: see `Global`: one caller, the shell loop on VP 0, which holds
    // the reference only for the duration of one command or poll.
    unsafe { &mut *VMM.0.get() }
}

/// Memory below this stays with the root (firmware areas, the AP trampoline).
const POOL_FLOOR: u64 = 0x10_0000;

fn guest_write(base: u64, gpa: u64, bytes: &[u8]) {
    // SAFETY: [base, base + memory) is root RAM this worker took from its
    // pool for the VM (identity-mapped; the root keeps access to the pages
    // it maps to guests); callers keep gpa + len within the VM's memory.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), (base + gpa) as *mut u8, bytes.len()) };
}

fn guest_read(base: u64, gpa: u64, buf: &mut [u8]) {
    // SAFETY: as in `guest_write` (callers keep gpa + len within the VM's
    // memory); the guest may change the bytes meanwhile: they are copied
    // once, then only the copy is read.
    unsafe {
        core::ptr::copy_nonoverlapping((base + gpa) as *const u8, buf.as_mut_ptr(), buf.len())
    };
}

fn guest_zero(base: u64, len: u64) {
    // SAFETY: as in `guest_write`.
    unsafe { core::ptr::write_bytes(base as *mut u8, 0, len as usize) };
}

pub fn module_bytes(m: &BootModule) -> &'static [u8] {
    // SAFETY: boot modules are root RAM the hypervisor handed over with the
    // image, identity-mapped and never written.
    unsafe { core::slice::from_raw_parts(m.start as *const u8, (m.end - m.start) as usize) }
}

fn status_line(what: &str, call: &str, s: u16) {
    let _ = format::hypercall_failed(&mut serial::Com1, what, call, s);
}

/// A simple call with `input` (one of hv_abi's typed layouts) and an
/// output block (`out`, e.g. a layout's `as_mut_bytes`).
fn partition_call<I: IntoBytes + Immutable>(
    code: u16,
    input: &I,
    out: &mut [u8],
) -> Result<(), u16> {
    match hypercall::call(code, 0, input.as_bytes(), out).status {
        status::SUCCESS => Ok(()),
        s => Err(s),
    }
}

fn pid_input(id: u64) -> PartitionId {
    PartitionId { partition_id: id }
}

fn vp_input(id: u64, vp: u32) -> PartitionVp {
    PartitionVp {
        partition_id: id,
        vp_index: vp,
        reserved: 0,
    }
}

/// SetVpRegisters with `regs` (name, value), in chunks that fit a page.
fn set_registers(id: u64, vp: u32, regs: &[(u32, u128)]) -> Result<(), u16> {
    const PER_CALL: usize = 24;
    let header = SetVpRegisters {
        partition_id: id,
        vp_index: vp,
        ..Default::default()
    };
    for chunk in regs.chunks(PER_CALL) {
        // A resume writes three registers: a small array then, rather than
        // clearing a page's worth of elements on every intercept.
        let mut small = [RegisterAssoc::default(); 4];
        let mut big;
        let elements: &mut [RegisterAssoc] = if chunk.len() <= small.len() {
            &mut small[..chunk.len()]
        } else {
            big = [RegisterAssoc::default(); PER_CALL];
            &mut big[..chunk.len()]
        };
        for (e, &(name, value)) in elements.iter_mut().zip(chunk) {
            *e = RegisterAssoc {
                name,
                value,
                ..Default::default()
            };
        }
        let r = hypercall::call_rep(code::SET_VP_REGISTERS, &header, elements, &mut []);
        if r.status != status::SUCCESS {
            let (name, _) = chunk[(r.reps as usize).min(chunk.len() - 1)];
            println!(
                "vm: SetVpRegisters refused register {name:#x} of VP {vp}: status {:#x}",
                r.status
            );
            return Err(r.status);
        }
    }
    Ok(())
}

/// Resumes an intercepted VP: its registers and InterceptSuspend cleared,
/// left for the root's next idle so that the call and the halt are one exit
/// (a refusal comes back through `hypercall::take_deferred_failure`).
fn resume(id: u64, vp: u32, regs: &[(u32, u128)]) -> Result<(), u16> {
    if hypercall::defer_set_registers(id, vp, regs) {
        Ok(())
    } else {
        set_registers(id, vp, regs)
    }
}

/// GetVpRegisters of up to 8 registers: their values (low 64 bits).
fn get_registers(id: u64, vp: u32, names: &[u32], out: &mut [u64]) -> Result<(), u16> {
    let header = hv_abi::layout::GetVpRegisters {
        partition_id: id,
        vp_index: vp,
        ..Default::default()
    };
    let mut elements = [hv_abi::layout::RegisterName::default(); 8];
    let n = names.len().min(8);
    for (e, &name) in elements.iter_mut().zip(names) {
        e.name = name;
    }
    let mut values = [0u8; 8 * 16];
    let r = hypercall::call_rep(
        code::GET_VP_REGISTERS,
        &header,
        &elements[..n],
        &mut values[..n * 16],
    );
    if r.status != status::SUCCESS {
        return Err(r.status);
    }
    for (i, o) in out.iter_mut().enumerate().take(n) {
        *o = u64::from_le_bytes(values[i * 16..i * 16 + 8].try_into().unwrap_or_default());
    }
    Ok(())
}

fn property(id: u64, prop: u32) -> Option<u64> {
    let input = GetPartitionProperty {
        partition_id: id,
        property_code: prop,
        reserved: 0,
    };
    let mut out = GetPartitionPropertyOutput::default();
    partition_call(code::GET_PARTITION_PROPERTY, &input, out.as_mut_bytes()).ok()?;
    Some(out.property_value)
}

fn set_property(id: u64, prop: u32, value: u64) -> Result<(), u16> {
    let input = SetPartitionProperty {
        partition_id: id,
        property_code: prop,
        reserved: 0,
        property_value: value,
    };
    partition_call(code::SET_PARTITION_PROPERTY, &input, &mut [])
}

impl Vmm {
    pub fn init(&mut self, boot: &RootBoot, tsc_hz: u64) {
        self.tsc_hz = tsc_hz.max(1);
        self.lps = boot.vp_count.max(1);
        crate::vmbus_server::set_one_processor(self.lps == 1);
        self.host_time = (crate::arch::read_rtc(), crate::arch::rdtsc());
        for &(s, e) in boot.ranges() {
            self.pool.add(s.max(POOL_FLOOR), e.max(POOL_FLOOR));
        }
        match self.pool.take(heap::HEAP_BYTES) {
            Some(start) => heap::init(start),
            None => println!(
                "vm: no {} MiB for the root's heap; VMBus is unavailable",
                heap::HEAP_BYTES >> 20
            ),
        }
        for m in boot.modules() {
            self.modules[self.module_count] = *m;
            self.module_count += 1;
        }
        if hypercall::enabled() {
            synic::enable();
        }
    }

    /// The host's time now, Unix seconds.
    pub fn now(&self) -> u64 {
        unix_time(self.host_time, self.tsc_hz)
    }

    /// The boot modules (`host modules`).
    pub fn modules(&self) -> &[BootModule] {
        &self.modules[..self.module_count]
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.vms
            .iter()
            .position(|v| v.as_ref().is_some_and(|v| v.name() == name))
    }

    fn named(&mut self, name: &str) -> Option<&mut Vm> {
        match self.find(name) {
            Some(i) => self.vms[i].as_mut(),
            None => {
                println!("vm: no VM named \"{name}\"; vm list shows them");
                None
            }
        }
    }

    pub fn execute(&mut self, cmd: VmCommand) {
        if !hypercall::enabled() {
            println!("vm: hypercalls are unavailable (no hypercall page)");
            return;
        }
        match cmd {
            VmCommand::New(n) => self.new_vm(n),
            VmCommand::Start(name) => self.start(name),
            VmCommand::Stop {
                name,
                turn_off,
                timeout,
            } => self.stop(name, turn_off, timeout.unwrap_or(SHUTDOWN_TIMEOUT_S)),
            VmCommand::DeviceAdd(name, DeviceKind::Echo) => self.echo_device(name, true),
            VmCommand::DeviceRemove(name, DeviceKind::Echo) => self.echo_device(name, false),
            VmCommand::DiskAttach {
                name,
                source,
                read_only,
            } => self.attach_disk(name, source, read_only),
            VmCommand::DiskDetach { name, path } => self.detach_disk(name, path),
            VmCommand::DiskList(name) => {
                if let Some(vm) = self.named(name) {
                    if vm.disks.is_empty() {
                        println!("vm disk: {name} has no disk");
                    }
                    for (lun, (d, _)) in vm.disks.iter().enumerate() {
                        println!("vm disk: {name}: SCSI 0:0:{lun} {d}");
                    }
                }
            }
            VmCommand::NicAdd {
                name,
                switch,
                vlan,
                mac,
            } => self.add_nic(name, switch, vlan, mac),
            VmCommand::NicList(name) => self.list_nics(name),
            VmCommand::NicSet { name, nic, vlan } => self.set_nic(name, nic, vlan),
            VmCommand::NicRemove { name, nic } => self.remove_nic(name, nic),
            VmCommand::List => self.list(),
            VmCommand::Show(name) => self.show(name),
            VmCommand::Console { name, log } => {
                let running = self.named(name).map(|vm| vm.state == State::Running);
                match running {
                    None => {}
                    Some(true) if !log => self.attach(name),
                    Some(running) => {
                        if let Some(vm) = self.named(name) {
                            print_console_log(vm);
                            if !running && !log {
                                println!("-- {name} is not running: nothing to attach to");
                            }
                        }
                    }
                }
            }
            VmCommand::Cpu(name, s) => self.cpu(name, s),
            VmCommand::Wait(name, secs) => self.wait(name, None, secs),
            VmCommand::WaitFor(name, what, secs) => self.wait(name, Some(what), secs),
            VmCommand::Delete(name) => self.delete(name),
        }
    }

    /// `vm console NAME` on a running VM: the kept output's tail, then the
    /// guest's COM1 both ways until Ctrl-] (or the VM stops). VMs are
    /// served meanwhile.
    fn attach(&mut self, name: &str) {
        const DETACH: u8 = 0x1D; // Ctrl-]
        let Some(i) = self.find(name) else { return };
        println!("-- attached to {name}'s COM1; Ctrl-] detaches");
        if let Some(vm) = self.vms[i].as_mut() {
            // The last lines, so the guest's prompt is on the screen.
            let (a, b) = vm.console.contents();
            let (a, b) = tail(a, b, 1024);
            serial::write_bytes(a);
            serial::write_bytes(b);
            vm.attached = true;
        }
        let mut idle_since = crate::arch::rdtsc();
        loop {
            let busy = self.poll();
            let Some(vm) = self.vms[i].as_mut() else {
                break;
            };
            if vm.state != State::Running {
                println!(
                    "\n-- {name} is {} ({}); detached",
                    vm.state.name(),
                    vm.reason()
                );
                vm.attached = false;
                return;
            }
            match serial::try_read() {
                Some(DETACH) => break,
                Some(b) => {
                    idle_since = crate::arch::rdtsc();
                    // A full FIFO drops the byte, as the chip would; the
                    // operator types slower than a guest reads it.
                    let _ = vm.devices.uart.receive(b);
                    serial_interrupt(vm);
                }
                None if !busy
                    && !self.polling
                    && crate::arch::rdtsc() - idle_since > self.tsc_hz / 20 =>
                {
                    crate::hypercall::idle()
                }
                None => core::hint::spin_loop(),
            }
        }
        if let Some(vm) = self.vms[i].as_mut() {
            vm.attached = false;
        }
        println!("\n-- detached from {name}");
    }

    fn new_vm(&mut self, n: NewVm) {
        if self.find(n.name).is_some() {
            println!("vm new: a VM named \"{}\" exists", n.name);
            return;
        }
        let Some(slot) = self.vms.iter().position(Option::is_none) else {
            println!("vm new: {MAX_VMS} VMs exist already; delete one first");
            return;
        };
        let Some(module) = self.modules[..self.module_count]
            .iter()
            .find(|m| m.name() == n.image)
            .copied()
        else {
            print!("vm new: no boot module named \"{}\"; modules:", n.image);
            for m in &self.modules[..self.module_count] {
                print!(" {}", m.name());
            }
            println!();
            return;
        };
        let memory = n.memory_mib << 20;
        let image = match vmm::parse_image(module_bytes(&module), memory)
            .and_then(|i| vmm::boot_base(&i, n.vcpus, memory).map(|_| i))
        {
            Ok(image) => image,
            Err(e) => {
                println!("vm new: image \"{}\": {e}", n.image);
                return;
            }
        };
        if image.mode != EntryMode::Linux && (n.initrd.is_some() || n.cmdline.is_some()) {
            println!(
                "vm new: --initrd and --cmdline are for a Linux kernel (bzImage); \"{}\" is not one",
                n.image
            );
            return;
        }
        let initrd = match n.initrd {
            None => None,
            Some(name) => match self.modules[..self.module_count]
                .iter()
                .find(|m| m.name() == name)
            {
                Some(m) => Some(*m),
                None => {
                    println!("vm new: no boot module named \"{name}\" (for --initrd)");
                    return;
                }
            },
        };
        let mut cmdline = [0u8; CMDLINE_MAX];
        let cmd = n.cmdline.unwrap_or("");
        cmdline[..cmd.len()].copy_from_slice(cmd.as_bytes());
        let Some(base) = self.pool.take(memory) else {
            println!(
                "vm new: not enough free memory for {} MiB (largest free block {} MiB, {} MiB free)",
                n.memory_mib,
                self.pool.largest() >> 20,
                self.pool.free_bytes() >> 20
            );
            return;
        };
        match create_partition(base, memory, n.vcpus, n.trap_exceptions) {
            Ok(id) => {
                let mut name = [0u8; NAME_MAX];
                name[..n.name.len()].copy_from_slice(n.name.as_bytes());
                self.vms[slot] = Some(Vm {
                    name,
                    name_len: n.name.len(),
                    partition: id,
                    state: State::Off,
                    reason: [0; REASON_MAX],
                    reason_len: 0,
                    memory_base: base,
                    memory_bytes: memory,
                    vcpus: n.vcpus,
                    module,
                    initrd,
                    cmdline,
                    cmdline_len: cmd.len(),
                    console: Console::new(),
                    devices: Devices::default(),
                    reset_requested: false,
                    after_guest_reset: false,
                    attached: false,
                    started_tsc: 0,
                    stopped_vps: 0,
                    reported_ports: ReportOnce::new(),
                    reported_mmio: ReportOnce::new(),
                    interrupt_failures: 0,
                    ioapic_refusals: 0,
                    unmapped: None,
                    sample: (0, 0),
                    vmbus: None,
                    shutdown_deadline: None,
                    echo: false,
                    disks: Vec::new(),
                    nics: Vec::new(),
                    vmbus_refused: (0, 0),
                });
                println!(
                    "vm new: {} created (partition {id}, {} MiB, {} VCPUs, image {}); vm start {} runs it",
                    n.name, n.memory_mib, n.vcpus, n.image, n.name
                );
            }
            Err((what, s)) => {
                self.pool.add(base, base + memory);
                status_line("vm new", what, s);
            }
        }
    }

    fn start(&mut self, name: &str) {
        self.start_with(name, false)
    }

    /// `vm start`; with `bad_state`, CR4.PAE is cleared in every VP's start
    /// state (long mode without it: the processor refuses the entry).
    pub fn start_with(&mut self, name: &str, bad_state: bool) {
        // Messages its VPs posted before they were stopped belong to the
        // old run: served or dropped now, never applied to the new one.
        if let Some(id) = self
            .find(name)
            .and_then(|i| self.vms[i].as_ref())
            .map(|v| v.partition)
        {
            let mut m = msg::Message::EMPTY;
            while synic::take(&mut m) {
                if m.sender != id {
                    self.intercept(&m);
                }
            }
        }
        let Some(slot) = self.find(name) else {
            println!("vm: no VM named \"{name}\"; vm list shows them");
            return;
        };
        let Some(vm) = self.vms[slot].as_mut() else {
            return;
        };
        if matches!(vm.state, State::Running | State::Starting | State::Stopping) {
            println!("vm start: {name} is {}", vm.state.name());
            return;
        }
        vm.state = State::Starting;
        // Every VP's SynIC, synthetic timers and APIC as after a reset
        // first: nothing of the previous boot (a timer's message into its
        // SIMP page) may land in the memory loaded below.
        for vp in 0..vm.vcpus {
            if let Err(s) = set_registers(vm.partition, vp, &[(reg::SCONTROL, 0)]) {
                vm.state = State::Failed;
                vm.set_reason(format_args!(
                    "resetting the SynIC of VP {vp} failed: status {s:#x}"
                ));
                status_line("vm start", "SetVpRegisters", s);
                return;
            }
        }
        // A fresh boot: memory cleared, image loaded, every VP at its entry.
        guest_zero(vm.memory_base, vm.memory_bytes);
        let parsed = vmm::parse_image(module_bytes(&vm.module), vm.memory_bytes)
            .and_then(|i| Ok((i, vmm::boot_base(&i, vm.vcpus, vm.memory_bytes)?)));
        let (image, boot_base) = match parsed {
            Ok(i) => i,
            Err(e) => {
                vm.state = State::Failed;
                vm.set_reason(format_args!("image: {e}"));
                println!("vm start: {name}: image: {e}");
                return;
            }
        };
        let file = module_bytes(&vm.module);
        for s in &image.segments[..image.segment_count] {
            let bytes = &file[s.offset as usize..(s.offset + s.file_bytes) as usize];
            guest_write(vm.memory_base, s.gpa, bytes);
        }
        let base = vm.memory_base;
        vmm::boot_tables(image.mode, vm.memory_bytes, boot_base, &mut |gpa, v| {
            guest_write(base, gpa, &v.to_le_bytes())
        });
        if image.mode == EntryMode::Linux {
            if let Err(e) = load_linux(vm, file) {
                vm.state = State::Failed;
                vm.set_reason(format_args!("{e}"));
                println!("vm start: {name}: {e}");
                return;
            }
        }
        // The VMBus server (its ports) before any VP runs.
        vm.vmbus = None;
        vm.vmbus_refused = (0, 0);
        vm.shutdown_deadline = None;
        if heap::ready() {
            match VmBus::new(
                vm.partition,
                slot,
                (vm.memory_base, vm.memory_bytes),
                vm.echo,
                &vm.disks,
                &vm.nics.iter().map(VmNic::spec).collect::<Vec<_>>(),
            ) {
                Ok(bus) => vm.vmbus = Some(bus),
                Err(s) => status_line("vm start", "VMBus ports (CreatePort/ConnectPort)", s),
            }
        }
        // A Linux guest starts on VP 0 alone; the others wait for its SIPI.
        let starting = if image.mode == EntryMode::Linux {
            1
        } else {
            vm.vcpus
        };
        for vp in 0..starting {
            let mut regs = vmm::start_registers(
                image.mode,
                image.entry,
                (vp, vm.vcpus),
                vm.memory_bytes,
                boot_base,
            );
            if bad_state {
                // No intercept holds the VP yet: its resume is refused.
                let s = hypercall::complete_intercept_now(vm.partition, vp, 0, 0);
                println!(
                    "debug bad-start: CompleteIntercept of VP {vp}, which no intercept holds: {}",
                    root_partition_svc::format::status_name(s)
                );
                for (name, value) in regs.iter_mut() {
                    if *name == reg::CR4 {
                        *value &= !(1 << 5);
                    }
                }
            }
            let r = set_registers(vm.partition, vp, &regs)
                .and_then(|()| set_registers(vm.partition, vp, &[(reg::INTERCEPT_SUSPEND, 0)]));
            if let Err(s) = r {
                // Through `end`: its VPs suspended, its VMBus server (which
                // reaches its memory and disk) gone.
                end(
                    vm,
                    State::Failed,
                    format_args!("SetVpRegisters of VP {vp} failed: status {s:#x}"),
                );
                status_line("vm start", "SetVpRegisters", s);
                return;
            }
        }
        let cmos = core::mem::take(&mut vm.devices.cmos);
        vm.devices = Devices::default();
        if core::mem::take(&mut vm.after_guest_reset) {
            vm.devices.cmos = cmos;
        } else {
            vm.console.clear();
        }
        vm.reset_requested = false;
        vm.reported_ports = ReportOnce::new();
        vm.reported_mmio = ReportOnce::new();
        vm.interrupt_failures = 0;
        vm.ioapic_refusals = 0;
        vm.unmapped = None;
        vm.stopped_vps = 0;
        vm.reason_len = 0;
        vm.started_tsc = crate::arch::rdtsc();
        vm.sample = (
            property(vm.partition, property::RUN_TIME).unwrap_or(0),
            vm.started_tsc,
        );
        for vp in 0..starting {
            if let Err(s) = partition_call(
                code::START_VIRTUAL_PROCESSOR,
                &vp_input(vm.partition, vp),
                &mut [],
            ) {
                end(
                    vm,
                    State::Failed,
                    format_args!("StartVirtualProcessor of VP {vp} failed: status {s:#x}"),
                );
                status_line("vm start", "StartVirtualProcessor", s);
                return;
            }
        }
        vm.state = State::Running;
        let mode = match image.mode {
            EntryMode::Long => "64-bit",
            EntryMode::Protected32 => "32-bit protected mode (Multiboot)",
            EntryMode::Real => "real mode",
            EntryMode::Linux => "Linux 64-bit boot protocol",
        };
        println!(
            "vm start: {name} running ({} VCPUs, {mode} entry at {:#x})",
            vm.vcpus, image.entry
        );
    }

    fn stop(&mut self, name: &str, turn_off: bool, timeout_s: u64) {
        let tsc_hz = self.tsc_hz;
        let Some(vm) = self.named(name) else { return };
        if !matches!(vm.state, State::Running | State::Starting) {
            println!("vm stop: {name} is {}", vm.state.name());
            return;
        }
        if turn_off {
            end(vm, State::Off, format_args!("turned off"));
            println!("vm stop: {name} turned off");
        } else if vm.vmbus.as_mut().is_some_and(|b| b.request_shutdown()) {
            vm.state = State::Stopping;
            vm.shutdown_deadline = Some((crate::arch::rdtsc() + timeout_s * tsc_hz, timeout_s));
            println!("vm stop: asked {name} to shut down (turned off if it still runs in {timeout_s} s; vm stop {name} --turn-off does it now)");
        } else {
            end(
                vm,
                State::Off,
                format_args!("turned off: the guest has no VMBus connection"),
            );
            println!("vm stop: {name} has no VMBus connection to ask it to shut down: turned off");
        }
    }

    /// The slot of VM `name`, or says there is none.
    fn slot(&self, name: &str) -> Option<usize> {
        let i = self.find(name);
        if i.is_none() {
            println!("vm: no VM named \"{name}\"; vm list shows them");
        }
        i
    }

    /// `vm nic add NAME --switch S [--vlan N] [--mac M]`: a port on the
    /// switch, kept while the VM exists; a running guest is offered the
    /// adapter at once.
    fn add_nic(&mut self, name: &str, switch: &str, vlan: u16, mac: Option<Mac>) {
        let Some(i) = self.slot(name) else { return };
        let Some(sw) = self.net.find(switch) else {
            println!("vm nic: no switch {switch} (switch new {switch} makes one)");
            return;
        };
        let Some(vm) = self.vms[i].as_mut() else {
            return;
        };
        if vm.nics.len() >= MAX_NICS {
            println!("vm nic: {name} has {MAX_NICS} adapters, the most a VM takes");
            return;
        }
        // Never the number of a removed adapter the guest still holds (its
        // device, and instance GUID, are alive until the guest lets go).
        let held = |n: u32| {
            vm.nics.iter().any(|c| c.number == n)
                || vm
                    .vmbus
                    .as_ref()
                    .is_some_and(|b| b.nics.iter().any(|d| d.spec.number == n))
        };
        let Some(number) = (0..64).find(|n| !held(*n)) else {
            println!("vm nic: {name} has no free adapter number");
            return;
        };
        let mac = mac.unwrap_or([0x00, 0x15, 0x5d, 0x4e, i as u8, number as u8]);
        let taken = self
            .vms
            .iter()
            .flatten()
            .any(|v| v.nics.iter().any(|c| c.mac == mac));
        if taken {
            println!("vm nic: {} is another adapter's address", MacDisplay(mac));
            return;
        }
        let Some(s) = self.net.switch_mut(sw) else {
            return;
        };
        let kind = PortKind::Adapter {
            vm: name.into(),
            nic: number,
            mac,
        };
        let port = match s.add_port(kind, vlan) {
            Ok(p) => p,
            Err(e) => {
                println!("vm nic: {switch}: {e}");
                return;
            }
        };
        let nic = VmNic {
            number,
            switch: sw,
            port,
            mac,
            vlan,
        };
        let Some(vm) = self.vms[i].as_mut() else {
            return;
        };
        vm.nics.push(nic);
        let when = match vm.vmbus.as_mut().map(|bus| bus.add_nic(nic.spec())) {
            Some(Ok(())) => "offered now",
            Some(Err(st)) => {
                status_line("vm nic", "CreatePort/ConnectPort", st);
                "offered from the next start"
            }
            None => "offered from the next start",
        };
        println!(
            "vm nic: {name} nic {number} added: {}; {when}",
            self.describe_nic(&nic)
        );
    }

    /// One adapter in a line: switch, VLAN, address, link.
    fn describe_nic(&self, nic: &VmNic) -> String {
        let switch = self.net.switch(nic.switch);
        let port = switch.and_then(|s| s.port(nic.port));
        let vlan = match nic.vlan {
            0 => String::from("untagged"),
            v => format!("VLAN {v}"),
        };
        format!(
            "nic {}: switch {}, {vlan}, MAC {}, port {}, link {}",
            nic.number,
            switch.map_or("?", |s| s.name.as_str()),
            MacDisplay(nic.mac),
            nic.port,
            if port.is_some_and(|p| p.up) {
                "up"
            } else {
                "down"
            }
        )
    }

    /// `vm nic list NAME`.
    fn list_nics(&mut self, name: &str) {
        let Some(i) = self.slot(name) else { return };
        let Some(vm) = self.vms[i].as_ref() else {
            return;
        };
        if vm.nics.is_empty() {
            println!("vm nic: {name} has no network adapter");
        }
        for nic in &vm.nics {
            let line = self.describe_nic(nic);
            let mut extra = String::new();
            if let Some(dev) = vm.vmbus.as_ref().and_then(|b| {
                b.nics
                    .iter()
                    .find(|d| d.spec.number == nic.number && d.stage != DeviceStage::Rescinded)
            }) {
                let c = dev.server.counters;
                extra = format!(
                    "; the guest sent {} frames, took {} ({} filtered), {} refused",
                    c.frames_sent, c.frames_received, c.frames_filtered, c.refused
                );
            }
            println!("vm nic: {name}: {line}{extra}");
        }
    }

    /// `vm nic set NAME NIC --vlan N`: at once, running or not.
    fn set_nic(&mut self, name: &str, number: u32, vlan: u16) {
        let Some(i) = self.slot(name) else { return };
        let Some(vm) = self.vms[i].as_mut() else {
            return;
        };
        let Some(nic) = vm.nics.iter_mut().find(|c| c.number == number) else {
            println!("vm nic: {name} has no nic {number} (vm nic list {name})");
            return;
        };
        if let Some(Err(e)) = self
            .net
            .switch_mut(nic.switch)
            .map(|s| s.set_vlan(nic.port, vlan))
        {
            println!("vm nic: {e}");
            return;
        }
        nic.vlan = vlan;
        let nic = *nic;
        println!("vm nic: {name}: {}", self.describe_nic(&nic));
    }

    /// `vm nic remove NAME NIC`: its port goes; a running guest sees the
    /// adapter rescinded.
    fn remove_nic(&mut self, name: &str, number: u32) {
        let Some(i) = self.slot(name) else { return };
        let Some(vm) = self.vms[i].as_mut() else {
            return;
        };
        let Some(at) = vm.nics.iter().position(|c| c.number == number) else {
            println!("vm nic: {name} has no nic {number} (vm nic list {name})");
            return;
        };
        let nic = vm.nics.remove(at);
        let running = match vm.vmbus.as_mut() {
            Some(bus) => {
                bus.remove_nic(number, crate::arch::rdtsc(), self.tsc_hz);
                true
            }
            None => false,
        };
        if let Some(s) = self.net.switch_mut(nic.switch) {
            s.remove_port(nic.port);
        }
        if running {
            println!(
                "vm nic: {name} nic {number} removed: unplugged now; rescinded once the guest has finished with it (at most {} s), and the guest sees it go away",
                vmbus_server::QUIESCE_S
            );
        } else {
            println!("vm nic: {name} nic {number} removed");
        }
    }

    /// `vm device add|remove NAME echo`: kept for later starts; a running
    /// VM's guest is offered the device at once, or sees it rescinded.
    fn echo_device(&mut self, name: &str, add: bool) {
        let Some(vm) = self.named(name) else { return };
        if vm.echo == add {
            let has = if add { "has" } else { "has no" };
            println!("vm device: {name} {has} an echo device already");
            return;
        }
        vm.echo = add;
        let Some(bus) = vm.vmbus.as_mut() else {
            let what = if add { "offered" } else { "no longer offered" };
            println!("vm device: {name}'s echo device {what} from its next start");
            return;
        };
        if !add {
            bus.remove_echo();
            println!("vm device: {name}'s echo device removed (rescinded)");
            return;
        }
        match bus.add_echo() {
            Ok(()) => println!("vm device: echo device offered to {name}"),
            Err(s) => {
                vm.echo = false;
                status_line("vm device", "CreatePort/ConnectPort", s);
            }
        }
    }

    /// The slot of VM `name` if it is not running; otherwise says why not
    /// (`what` is the command, `advice` what to do).
    fn not_running(&self, name: &str, what: &str, advice: &str) -> Option<usize> {
        let Some(i) = self.find(name) else {
            println!("vm: no VM named \"{name}\"; vm list shows them");
            return None;
        };
        let vm = self.vms[i].as_ref()?;
        // A VMBus server left alive would still reach its memory and disk.
        if matches!(vm.state, State::Running | State::Starting | State::Stopping)
            || vm.vmbus.is_some()
        {
            println!("{what}: {name} is {}; {advice}", vm.state.name());
            return None;
        }
        Some(i)
    }

    fn attach_disk(&mut self, name: &str, source: DiskSource, read_only: bool) {
        let Some(i) = self.not_running(name, "vm disk attach", "attach disks to a VM that is off")
        else {
            return;
        };
        let Some(vm) = self.vms[i].as_ref() else {
            return;
        };
        if vm.disks.len() >= MAX_DISKS {
            println!(
                "vm disk attach: {name} has {MAX_DISKS} disks, the most its SCSI controller takes"
            );
            return;
        }
        let lun = vm.disks.len();
        let disk = match source {
            DiskSource::Ram { mib } => {
                let bytes = mib << 20;
                let Some(base) = self.pool.take(bytes) else {
                    println!(
                        "vm disk attach: not enough free memory for a {mib} MiB RAM disk (largest free block {} MiB)",
                        self.pool.largest() >> 20
                    );
                    return;
                };
                guest_zero(base, bytes);
                VmDisk::Ram(RamDisk::new(base, bytes, read_only))
            }
            DiskSource::File(path) => match host_disk::attach(path, read_only, name) {
                Ok(d) => VmDisk::File(d),
                Err(e) => {
                    println!("vm disk attach: {path}: {e}");
                    return;
                }
            },
        };
        let id = crate::arch::rdtsc() ^ (i as u64) << 56;
        let mut serial = [0u8; 16];
        for (k, b) in serial.iter_mut().enumerate() {
            *b = b"0123456789ABCDEF"[(id >> (60 - 4 * k) & 0xF) as usize];
        }
        if let Some(vm) = self.vms[i].as_mut() {
            vm.disks.push((disk, Identity { serial, id }));
        }
        match disk {
            VmDisk::Ram(_) => println!(
                "vm disk: a {} MiB RAM disk attached to {name}'s SCSI controller (LUN {lun}, {}), kept until detached",
                disk.blocks() >> 11,
                if read_only { "read-only" } else { "read-write" }
            ),
            VmDisk::File(_) => println!("vm disk: {disk} attached to {name}'s SCSI controller (LUN {lun})"),
        }
    }

    /// Gives back what a detached disk held: a RAM disk's memory, a file's
    /// handle (its writes flushed).
    fn release_disk(&mut self, disk: VmDisk) -> String {
        match disk {
            VmDisk::Ram(d) => {
                self.pool.add(d.base(), d.base() + d.bytes());
                format!(
                    "RAM disk detached; {} MiB returned to the root",
                    d.bytes() >> 20
                )
            }
            VmDisk::File(f) => format!("{} detached", host_disk::detach(f)),
        }
    }

    fn detach_disk(&mut self, name: &str, path: Option<&str>) {
        let Some(i) =
            self.not_running(name, "vm disk detach", "detach disks from a VM that is off")
        else {
            return;
        };
        let Some(vm) = self.vms[i].as_mut() else {
            return;
        };
        let found = match path {
            None if vm.disks.len() == 1 => Some(0),
            None if vm.disks.is_empty() => {
                println!("vm disk detach: {name} has no disk");
                return;
            }
            None => {
                println!(
                    "vm disk detach: {name} has {} disks; name one: vm disk detach {name} FILE (or ram)",
                    vm.disks.len()
                );
                return;
            }
            Some(p) => vm.disks.iter().position(|(d, _)| d.is_named(p)),
        };
        let Some(lun) = found else {
            println!(
                "vm disk detach: {name} has no disk {}; vm disk list {name} shows them",
                path.unwrap_or("")
            );
            return;
        };
        // The disks after it move up a LUN (the guest sees them at their
        // new LUNs at its next start).
        let (disk, _) = vm.disks.remove(lun);
        let what = self.release_disk(disk);
        println!("vm disk: {name}'s {what}");
    }

    fn cpu(&mut self, name: &str, s: CpuSettings) {
        let Some(vm) = self.named(name) else { return };
        for (prop, value, what) in [
            (property::CPU_RESERVE, s.reserve, "reserve"),
            (property::CPU_CAP, s.limit, "limit"),
            (property::CPU_WEIGHT, s.weight, "weight"),
        ] {
            if let Some(v) = value {
                if let Err(st) = set_property(vm.partition, prop, v as u64) {
                    status_line("vm cpu", what, st);
                    return;
                }
            }
        }
        let get = |p| property(vm.partition, p).unwrap_or(0);
        println!(
            "vm cpu: {name}: reserve {}%, limit {}%, weight {}",
            get(property::CPU_RESERVE),
            get(property::CPU_CAP),
            get(property::CPU_WEIGHT)
        );
    }

    /// `vm wait`: until the VM is not running, or (`what`) until its guest
    /// answers heartbeats, uses every integration service, or its console
    /// shows a text.
    fn wait(&mut self, name: &str, what: Option<WaitFor>, secs: u64) {
        // Its slot, looked up once: nothing deletes or renames a VM while
        // the shell waits here.
        let Some(slot) = self.find(name) else {
            println!("vm: no VM named \"{name}\"; vm list shows them");
            return;
        };
        let start = crate::arch::rdtsc();
        let limit = secs * self.tsc_hz;
        // Console bytes already searched (the text may be there already).
        let mut seen = 0;
        loop {
            self.poll();
            let now = crate::arch::rdtsc();
            let tsc_hz = self.tsc_hz;
            let Some(vm) = self.vms.get(slot).and_then(|v| v.as_ref()) else {
                return;
            };
            if let Some(WaitFor::Text(t)) = what {
                if vm.console.contains_since(t.as_bytes(), seen) {
                    println!("vm wait: {name}'s console shows \"{t}\"");
                    return;
                }
                seen = vm.console.total;
            }
            // Waiting for the guest ends when it is asked to stop, too.
            let running = matches!(
                (what, vm.state),
                (None, State::Running | State::Starting | State::Stopping)
                    | (Some(_), State::Running | State::Starting)
            );
            if !running {
                println!("vm wait: {name} is {} ({})", vm.state.name(), vm.reason());
                return;
            }
            let status = || vm.vmbus.as_ref().map(|b| b.status(now, tsc_hz));
            match what {
                Some(WaitFor::Heartbeat) if status() == Some("Operating normally") => {
                    println!("vm wait: {name}'s heartbeat answers (Operating normally)");
                    return;
                }
                Some(WaitFor::Services) if vm.vmbus.as_ref().is_some_and(|b| b.all_in_use()) => {
                    println!("vm wait: {name}'s integration services are all in use");
                    return;
                }
                _ => {}
            }
            if now - start > limit {
                match what {
                    None => println!("vm wait: {name} still running after {secs} s"),
                    Some(_) => println!(
                        "vm wait: not there after {secs} s: {name} is {} ({})",
                        vm.state.name(),
                        status().unwrap_or("no VMBus server")
                    ),
                }
                return;
            }
            if !self.polling {
                crate::hypercall::idle();
            }
        }
    }

    fn delete(&mut self, name: &str) {
        let mut buf = [0u8; NAME_MAX + 16];
        let mut advice = format::BufWriter::new(&mut buf);
        let _ = write!(advice, "vm stop {name} first");
        let Some(i) = self.not_running(name, "vm delete", advice.as_str()) else {
            return;
        };
        let Some(vm) = self.vms[i].as_ref() else {
            return;
        };
        // In the order of the TLFS lifecycle: stop the VPs for good, take
        // the memory back (UnmapGpaPages returns only once no VP can reach
        // it), remove the VPs, then the partition.
        let id = vm.partition;
        let steps = || -> Result<(), (&'static str, u16)> {
            partition_call(code::FINALIZE_PARTITION, &pid_input(id), &mut [])
                .map_err(|s| ("FinalizePartition", s))?;
            let pages = vm.memory_bytes / vmm::PAGE;
            let mut done = 0;
            while done < pages {
                let n = (pages - done).min(4095);
                // No elements: the rep count is the page count.
                let input = UnmapGpaPages {
                    partition_id: id,
                    target_gpa_page: done,
                    ..Default::default()
                };
                let r = hypercall::call(code::UNMAP_GPA_PAGES, n as u16, input.as_bytes(), &mut []);
                if r.status != status::SUCCESS {
                    return Err(("UnmapGpaPages", r.status));
                }
                done += n;
            }
            for vp in 0..vm.vcpus {
                partition_call(code::DELETE_VP, &vp_input(id, vp), &mut [])
                    .map_err(|s| ("DeleteVp", s))?;
            }
            partition_call(code::DELETE_PARTITION, &pid_input(id), &mut [])
                .map_err(|s| ("DeletePartition", s))
        };
        if let Err((what, s)) = steps() {
            status_line("vm delete", what, s);
            return;
        }
        let (base, bytes) = (vm.memory_base, vm.memory_bytes);
        self.pool.add(base, base + bytes);
        let disks: Vec<VmDisk> = vm.disks.iter().map(|&(d, _)| d).collect();
        for nic in &vm.nics {
            if let Some(s) = self.net.switch_mut(nic.switch) {
                s.remove_port(nic.port);
            }
        }
        for disk in disks {
            self.release_disk(disk);
        }
        self.vms[i] = None;
        println!(
            "vm delete: {name} deleted; {} MiB returned to the root",
            bytes >> 20
        );
    }

    fn list(&mut self) {
        println!(
            "{:<3} {:<16} {:<9} {:>7} {:>11} {:>8} {:>5} {:>10}  STATUS",
            "ID", "NAME", "STATE", "CPU%", "MEMORY(MiB)", "UPTIME", "VCPUS", "EXITS"
        );
        let now = crate::arch::rdtsc();
        let (tsc_hz, lps) = (self.tsc_hz, self.lps as u64);
        for i in 0..MAX_VMS {
            let Some(vm) = self.vms[i].as_mut() else {
                continue;
            };
            let run = property(vm.partition, property::RUN_TIME).unwrap_or(0);
            let exits = property(vm.partition, property::EXITS).unwrap_or(0);
            // CPU%: share of the whole host (all LPs) since the last list.
            let (r0, t0) = vm.sample;
            let wall_100ns = ((now - t0) as u128 * 10_000_000 / tsc_hz as u128) as u64;
            let cpu = Percent(run.saturating_sub(r0), wall_100ns * lps);
            vm.sample = (run, now);
            let up = uptime(vm, now, tsc_hz);
            let mut upbuf = [0u8; 16];
            let mut w = format::BufWriter::new(&mut upbuf);
            let _ = write!(w, "{}:{:02}:{:02}", up / 3600, up / 60 % 60, up % 60);
            let status = match vm.vmbus.as_ref() {
                Some(bus) => bus.status(now, tsc_hz),
                None => "",
            };
            println!(
                "{:<3} {:<16} {:<9} {:>7} {:>11} {:>8} {:>5} {:>10}  {}",
                vm.partition,
                vm.name(),
                vm.state.name(),
                cpu,
                vm.memory_bytes >> 20,
                w.as_str(),
                vm.vcpus,
                exits,
                status
            );
        }
    }

    fn show(&mut self, name: &str) {
        let Some(i) = self.find(name) else {
            println!("vm: no VM named \"{name}\"; vm list shows them");
            return;
        };
        let Some(vm) = self.vms[i].as_ref() else {
            return;
        };
        let id = vm.partition;
        let get = |p| property(id, p).unwrap_or(0);
        println!("vm {}:", vm.name());
        println!("  partition id:   {id}");
        println!(
            "  state:          {}{}{}",
            vm.state.name(),
            if vm.reason_len > 0 { ", " } else { "" },
            vm.reason()
        );
        println!(
            "  image:          {} ({} bytes)",
            vm.module.name(),
            vm.module.end - vm.module.start
        );
        println!(
            "  memory:         {} MiB at root {:#x}, {} mapped",
            vm.memory_bytes >> 20,
            vm.memory_base,
            Size(get(property::MAPPED_BYTES))
        );
        if let Some(rd) = &vm.initrd {
            println!(
                "  initrd:         {} ({} bytes)",
                rd.name(),
                rd.end - rd.start
            );
        }
        if vm.echo {
            println!(
                "  VMBus devices:  echo (vm device remove {} echo)",
                vm.name()
            );
        }
        for (lun, (d, _)) in vm.disks.iter().enumerate() {
            println!("  disks:          SCSI 0:0:{lun} {d}");
        }
        for nic in &vm.nics {
            println!("  network:        {}", self.describe_nic(nic));
        }
        if vm.cmdline_len > 0 {
            println!(
                "  command line:   {}",
                core::str::from_utf8(&vm.cmdline[..vm.cmdline_len]).unwrap_or("?")
            );
        }
        println!("  VCPUs:          {}", vm.vcpus);
        if vm.state == State::Running {
            for vp in 0..vm.vcpus {
                let mut v = [0u64; 5];
                let names = [
                    reg::RIP,
                    reg::RFLAGS,
                    reg::CR0,
                    reg::CS,
                    reg::EXPLICIT_SUSPEND,
                ];
                // A running VP is read while suspended for the moment.
                let got = match get_registers(id, vp, &names, &mut v) {
                    Err(status::INVALID_VP_STATE) => {
                        let _ = set_registers(id, vp, &[(reg::EXPLICIT_SUSPEND, 1)]);
                        let r = get_registers(id, vp, &names[..4], &mut v);
                        let _ = set_registers(id, vp, &[(reg::EXPLICIT_SUSPEND, 0)]);
                        r
                    }
                    r => r,
                };
                match got {
                    Ok(()) => println!(
                        "    VP {vp}: RIP {:#x}, RFLAGS {:#x}, CR0 {:#x}, CS base {:#x}{}",
                        v[0],
                        v[1],
                        v[2],
                        v[3],
                        if v[4] != 0 { ", not started" } else { "" }
                    ),
                    Err(s) => println!("    VP {vp}: GetVpRegisters: status {s:#x}"),
                }
                show_vp_activity(id, vp);
            }
        }
        println!(
            "  processor:      reserve {}%, limit {}%, weight {}",
            get(property::CPU_RESERVE),
            get(property::CPU_CAP),
            get(property::CPU_WEIGHT)
        );
        println!("  run time:       {} ms", get(property::RUN_TIME) / 10_000);
        println!(
            "  uptime:         {} s",
            uptime(vm, crate::arch::rdtsc(), self.tsc_hz)
        );
        println!("  exits:          {}", get(property::EXITS));
        let mut first = true;
        for reason in hv_abi::ExitReason::ALL {
            let n = get(property::EXITS_BY_REASON + reason as u32);
            if n == 0 {
                continue;
            }
            print!(
                "{}{} {n}",
                if first { "    by reason:    " } else { ", " },
                reason.name()
            );
            first = false;
        }
        if !first {
            println!();
        }
        println!("  intercepts:     {}", get(property::INTERCEPTS));
        println!("  console:        {} bytes", vm.console.total);
        if vm.ioapic_refusals > 0 {
            println!("  refused I/O APIC interrupts: {}", vm.ioapic_refusals);
        }
        if vm.interrupt_failures > 0 {
            println!("  failed interrupt requests: {}", vm.interrupt_failures);
        }
        let refused = (0..property::GP_MSRS_KEPT)
            .map(|i| get(property::GP_MSRS + i))
            .take_while(|&v| v != 0);
        for (i, v) in refused.enumerate() {
            if i == 0 {
                println!("  MSRs refused (#GP):");
            }
            println!(
                "    {} {:#x}: {} time{}",
                if v & 1 << 32 != 0 { "WRMSR" } else { "RDMSR" },
                v as u32,
                v >> 33,
                if v >> 33 == 1 { "" } else { "s" }
            );
        }
        match vm.vmbus.as_ref() {
            Some(bus) => show_vmbus(bus, self.tsc_hz),
            None if vm.vmbus_refused != (0, 0) => println!(
                "  VMBus messages refused: {} from the guest; dropped: {} to it (last run)",
                vm.vmbus_refused.0, vm.vmbus_refused.1
            ),
            None => {}
        }
    }

    /// Handles every waiting intercept message, then the VMBus servers'
    /// messages, channel signals and periodic work.
    pub fn poll(&mut self) -> bool {
        // A resume left for an idle that did not come: sent now.
        hypercall::flush_deferred();
        if let Some((partition, vp, s)) = hypercall::take_deferred_failure() {
            if let Some(vm) = self
                .vms
                .iter_mut()
                .flatten()
                .find(|v| v.partition == partition)
            {
                fail(vm, format_args!("resuming VP {vp} failed: status {s:#x}"));
            }
        }
        let mut any = false;
        // Kept from poll to poll: a message is read into it only as long as
        // its payload, so it is never cleared (256 bytes on every poll).
        let mut m = self
            .inbox
            .take()
            .unwrap_or_else(|| alloc::boxed::Box::new(msg::Message::EMPTY));
        while synic::take(&mut m) {
            any = true;
            self.intercept(&m);
        }
        self.inbox = Some(m);
        any |= self.poll_vmbus();
        self.adjust_idle_tick();
        any
    }

    /// Someone follows the hypervisor's log (or stops): the tick changes
    /// now, not at the next poll, so the first new line is not held back
    /// by a sleepy tick.
    pub fn set_watching(&mut self, watching: bool) {
        self.watching = watching;
        self.adjust_idle_tick();
    }

    /// The idle timer's period follows what is polled (the host NIC's
    /// receive queue once an external switch is bound to it) and whether
    /// VMBus work waits for a tick; restarted
    /// only when that changes, and not while the timer is stopped.
    fn adjust_idle_tick(&mut self) {
        let soon = self.tick_soon || self.watching;
        let want = crate::arch::wanted_idle_tick_us(self.net.polls_host_nic(), soon);
        if want != crate::arch::idle_tick_us() {
            crate::arch::set_idle_tick_us(want);
            if !self.timer_stopped {
                crate::arch::start_idle_timer(self.tsc_hz, crate::idt::TIMER_VECTOR);
            }
        }
    }

    /// Whether a VMBus channel is polled: the caller must not go idle.
    pub fn polling(&self) -> bool {
        self.polling
    }

    fn poll_vmbus(&mut self) -> bool {
        let (any, served) = self.poll_vmbus_work();
        if !served && !self.polling {
            // No channel was looked at: nothing started polling. (While
            // polling, the state is looked at on every pass: the polled
            // channel's VM may have gone, and with it the last server, so
            // that no channel is served any more; the idle timer must come
            // back then, or the root would spin on.)
            return any;
        }
        let (mut polling, mut paying) = (false, false);
        for bus in self.vms.iter().flatten().filter_map(|v| v.vmbus.as_ref()) {
            let (p, c) = bus.polling();
            polling |= p;
            paying |= c;
        }
        self.polling = polling;
        // The idle timer only wakes a sleeping root.
        let stop = polling && (paying || self.timer_stopped);
        if stop != self.timer_stopped {
            self.timer_stopped = stop;
            if stop {
                crate::arch::stop_idle_timer();
            } else {
                crate::arch::start_idle_timer(self.tsc_hz, crate::idt::TIMER_VECTOR);
            }
        }
        any
    }

    /// The VMBus work of one poll: whether there was any, and whether
    /// channels were served (their polling may have changed).
    fn poll_vmbus_work(&mut self) -> (bool, bool) {
        let mut any = self.net.poll();
        let now = crate::arch::rdtsc();
        // A SINT interrupt waiting while the caller spun with interrupts
        // off is taken now (an exit only when one waits).
        crate::arch::take_interrupts();
        if self.polling {
            for bus in self
                .vms
                .iter_mut()
                .flatten()
                .filter_map(|v| v.vmbus.as_mut())
            {
                if bus.polling().0 {
                    bus.serve_polled();
                }
            }
        }
        // Read before the slot and flags: one raised after is seen next time.
        let raised = crate::idt::VMBUS_SINTS.load(core::sync::atomic::Ordering::Acquire);
        let tick_due = now.wrapping_sub(self.last_tick) >= self.tsc_hz / 1_000_000 * TICK_US;
        let interrupted = raised != self.vmbus_seen;
        if !interrupted && !tick_due {
            // The common case of an intercept: no VMBus work to look for.
            return (any, self.polling);
        }
        self.vmbus_seen = raised;
        // Messages and event flags are looked for after a VMBus interrupt,
        // and at the tick only while a bus has a guest connected or
        // messages queued for it (one with neither has no channel: a guest
        // without VMBus costs its intercepts no scan of the flags every
        // TICK_US).
        let look = interrupted
            || self
                .vms
                .iter()
                .flatten()
                .any(|v| v.vmbus.as_ref().is_some_and(VmBus::needs_tick));
        let clock = (self.tsc_hz, self.host_time);
        let mut m = msg::Message::EMPTY;
        while look && synic::take_vmbus(&mut m) {
            any = true;
            let (partition, connection) = vmbus_server::port_owner(m.sender);
            let size = usize::from(m.size).min(m.payload.len());
            if let Some(bus) = self
                .vms
                .iter_mut()
                .flatten()
                .find(|v| v.partition == partition)
                .and_then(|v| v.vmbus.as_mut())
            {
                bus.message(connection, &m.payload[..size]);
            }
        }
        if look {
            let vms = &mut self.vms;
            let net = &mut self.net;
            synic::take_vmbus_events(|flag| {
                any = true;
                let (slot, relid) = vmbus_server::flag_owner(flag);
                if let Some(bus) = vms
                    .get_mut(slot)
                    .and_then(|v| v.as_mut())
                    .and_then(|v| v.vmbus.as_mut())
                {
                    bus.channel_signalled(relid, now, clock, net);
                }
            });
        }
        self.last_tick = now;
        let mut served = false;
        let mut soon = false;
        for vm in self.vms.iter_mut().flatten() {
            if let Some(bus) = vm.vmbus.as_mut() {
                if bus.needs_tick() {
                    bus.tick(now, self.tsc_hz, self.host_time, &mut self.net);
                    served = true;
                    soon |= bus.wants_tick_soon(&self.net);
                }
            } else {
                // A VM that is not running takes no frames.
                for nic in &vm.nics {
                    if let Some(s) = self.net.switch_mut(nic.switch) {
                        s.set_up(nic.port, false);
                    }
                }
            }
            if let Some((_, secs)) = vm.shutdown_deadline.filter(|&(d, _)| now >= d) {
                end(
                    vm,
                    State::Off,
                    format_args!("turned off: the guest did not shut down in time"),
                );
                println!(
                    "vm {}: did not shut down within {secs} s; turned off",
                    vm.name()
                );
            }
        }
        self.tick_soon = soon;
        (any, served)
    }

    /// One intercept message; a VM its guest reset starts again.
    fn intercept(&mut self, m: &msg::Message) {
        let Some(i) = self.handle_intercept(m) else {
            return;
        };
        let Some(vm) = self.vms[i].as_mut().filter(|v| v.reset_requested) else {
            return;
        };
        vm.reset_requested = false;
        vm.after_guest_reset = true;
        let mut name = [0u8; NAME_MAX];
        let len = vm.name_len;
        name[..len].copy_from_slice(&vm.name[..len]);
        if let Ok(name) = core::str::from_utf8(&name[..len]) {
            println!("vm {name}: reset by the guest; starting it again");
            self.start(name);
        }
    }

    /// Handles one intercept message; the slot of the VM it came from.
    fn handle_intercept(&mut self, m: &msg::Message) -> Option<usize> {
        // Read only for the CMOS, the one device that shows the time.
        let (host_time, tsc_hz) = (self.host_time, self.tsc_hz);
        let now = move || unix_time(host_time, tsc_hz);
        let from = |v: &Option<Vm>| v.as_ref().is_some_and(|v| v.partition == m.sender);
        let last = Some(self.intercept_slot).filter(|&i| self.vms.get(i).is_some_and(from));
        let Some(i) = last.or_else(|| self.vms.iter().position(from)) else {
            println!(
                "vm: intercept {:#x} from unknown partition {}",
                m.kind, m.sender
            );
            return None;
        };
        self.intercept_slot = i;
        let vm = self.vms[i].as_mut()?;
        // A VP's last message may arrive after the VM stopped: nothing to do.
        // A VM asked to shut down runs on until it has.
        if !matches!(vm.state, State::Running | State::Stopping) {
            return Some(i);
        }
        match m.kind {
            kind::IO_PORT_INTERCEPT => match IoPortIntercept::decode(m.used_payload()) {
                Some(io) => io_port(vm, &io, now),
                None => fail(vm, format_args!("malformed I/O intercept message")),
            },
            kind::UNMAPPED_GPA | kind::GPA_INTERCEPT => {
                match MemoryIntercept::decode(m.used_payload()) {
                    // The page the test device unmapped: back in, and the VP goes
                    // on where it was (an event being delivered is delivered again).
                    Some(mi)
                        if m.kind == kind::UNMAPPED_GPA
                            && vm.unmapped == Some(mi.gpa & !(vmm::PAGE - 1)) =>
                    {
                        let (gpa, vp) = (mi.gpa & !(vmm::PAGE - 1), mi.header.vp_index);
                        let spa = vm.memory_base + gpa;
                        let resumed = map_page(vm.partition, gpa, Some(spa)).and_then(|()| {
                            set_registers(vm.partition, vp, &[(reg::INTERCEPT_SUSPEND, 0)])
                        });
                        match resumed {
                            Ok(()) => vm.unmapped = None,
                            Err(s) => {
                                fail(vm, format_args!("mapping GPA {gpa:#x} back: status {s:#x}"))
                            }
                        }
                    }
                    // Nothing at that address: an absent device, as on a PC
                    // (reads all ones, writes go nowhere).
                    Some(mi)
                        if m.kind == kind::UNMAPPED_GPA
                            && IoApic::contains(mi.gpa)
                            && ioapic_mmio(vm, &mi) => {}
                    Some(mi) if m.kind == kind::UNMAPPED_GPA && absent_mmio(vm, &mi) => {}
                    Some(mi) => {
                        let what = match mi.header.access {
                            msg::access::WRITE => "write",
                            msg::access::EXECUTE => "execute",
                            _ => "read",
                        };
                        let k = if m.kind == kind::UNMAPPED_GPA {
                            "unmapped"
                        } else {
                            "protected"
                        };
                        fail(
                            vm,
                            format_args!(
                                "VP {}: {what} of {k} GPA {:#x} at RIP {:#x}",
                                mi.header.vp_index, mi.gpa, mi.header.rip
                            ),
                        )
                    }
                    None => fail(vm, format_args!("malformed memory intercept message")),
                }
            }
            kind::UNRECOVERABLE_EXCEPTION
                if msg::decode_header(m.used_payload()).map(|(_, why)| why)
                    == Some(unrecoverable::GUEST_CRASH) =>
            {
                guest_crashed(vm)
            }
            kind::UNRECOVERABLE_EXCEPTION => {
                let (h, why) = msg::decode_header(m.used_payload()).unwrap_or_default();
                let what = match why {
                    unrecoverable::TRIPLE_FAULT => "triple fault",
                    unrecoverable::ENTRY_FAILED => "the processor refused its state",
                    _ => "an exit the hypervisor does not support",
                };
                fail(
                    vm,
                    format_args!("VP {}: {what} at RIP {:#x}", h.vp_index, h.rip),
                )
            }
            kind::EXCEPTION_INTERCEPT => match ExceptionIntercept::decode(m.used_payload()) {
                Some(e) => {
                    let name = hypervisor_core::exceptions::name(e.vector as u64);
                    let mut detail = [0u8; 48];
                    let mut w = format::BufWriter::new(&mut detail);
                    if let Some(code) = e.error_code {
                        let _ = write!(w, ", error code {code:#x}");
                    }
                    if e.vector == 14 {
                        let _ = write!(w, ", address {:#x}", e.parameter);
                    }
                    fail(
                        vm,
                        format_args!(
                            "VP {}: exception {name} at RIP {:#x}{}",
                            e.header.vp_index,
                            e.header.rip,
                            w.as_str()
                        ),
                    )
                }
                None => fail(vm, format_args!("malformed exception intercept message")),
            },
            kind::HALT => {
                let (h, _) = msg::decode_header(m.used_payload()).unwrap_or_default();
                vm.stopped_vps |= 1 << (h.vp_index % 64);
                if vm.stopped_vps.count_ones() >= vm.vcpus {
                    end(
                        vm,
                        State::Off,
                        format_args!("all VPs halted with interrupts off"),
                    );
                }
            }
            other => println!("vm {}: unexpected message type {other:#x}", vm.name()),
        }
        Some(i)
    }
}

/// `vm console NAME --log`: what the VM's COM1 output kept, escaped.
fn print_console_log(vm: &Vm) {
    let (a, b) = vm.console.contents();
    vmm::sanitize_console(a, &mut serial::write_bytes);
    vmm::sanitize_console(b, &mut serial::write_bytes);
    if vm.console.total > 0 && [a, b].concat_last() != Some(b'\n') {
        println!();
    }
    println!(
        "-- {} bytes of console output from {}",
        vm.console.total,
        vm.name()
    );
}

/// The last `n` bytes of `a` then `b` taken as one: (from `a`, from `b`).
fn tail<'a>(a: &'a [u8], b: &'a [u8], n: usize) -> (&'a [u8], &'a [u8]) {
    let from_b = b.len().min(n);
    let from_a = a.len().min(n - from_b);
    (&a[a.len() - from_a..], &b[b.len() - from_b..])
}

trait ConcatLast {
    fn concat_last(&self) -> Option<u8>;
}

impl ConcatLast for [&[u8]; 2] {
    fn concat_last(&self) -> Option<u8> {
        self[1].last().or(self[0].last()).copied()
    }
}

/// The guest said it crashed (the crash MSRs, as Hyper-V's guests use
/// them): Failed, with its message's line that says why (Linux: `Kernel
/// panic - not syncing: ...`) when it gave one (CRASH_CTL bit 62: P3 the
/// message's GPA, P4 its length), else the five parameters.
fn guest_crashed(vm: &mut Vm) {
    let p: [u64; 6] = core::array::from_fn(|i| {
        property(vm.partition, property::GUEST_CRASH + i as u32).unwrap_or(0)
    });
    let mut text = [0u8; 4096];
    let len = (p[4] as usize).min(text.len());
    let has_message = p[5] & hv_abi::msr::CRASH_MESSAGE != 0
        && len > 0
        && p[3]
            .checked_add(len as u64)
            .is_some_and(|end| end <= vm.memory_bytes);
    if has_message {
        guest_read(vm.memory_base, p[3], &mut text[..len]);
        let text = &text[..len];
        // The panic line, else the last line with something on it.
        let line = text
            .split(|&b| b == b'\n')
            .find(|l| l.windows(12).any(|w| w == b"Kernel panic"))
            .or_else(|| {
                text.split(|&b| b == b'\n')
                    .rev()
                    .find(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
            })
            .unwrap_or(b"");
        // Without the kernel's timestamp before it.
        let line = line
            .windows(12)
            .position(|w| w == b"Kernel panic")
            .map_or(line, |at| &line[at..]);
        let mut shown = [0u8; 96];
        let mut n = 0;
        vmm::sanitize_console(line, &mut |piece: &[u8]| {
            let take = piece.len().min(shown.len() - n);
            shown[n..n + take].copy_from_slice(&piece[..take]);
            n += take;
        });
        let shown = core::str::from_utf8(&shown[..n]).unwrap_or("?");
        return fail(vm, format_args!("the guest crashed: {}", shown.trim()));
    }
    fail(
        vm,
        format_args!(
            "the guest crashed (P0 {:#x}, P1 {:#x}, P2 {:#x}, P3 {:#x}, P4 {:#x})",
            p[0], p[1], p[2], p[3], p[4]
        ),
    )
}

/// An access to a GPA where nothing is: the instruction (fetched by the
/// hypervisor) is decoded and completed as an absent device would: a read
/// gives all ones, a write is dropped; reported once per page. `false`:
/// not an instruction the worker emulates (the caller fails the VM).
fn absent_mmio(vm: &mut Vm, mi: &MemoryIntercept) -> bool {
    let Some(access) = decode_mmio(mi) else {
        return false;
    };
    let vp = mi.header.vp_index;
    let page = mi.gpa & !(vmm::PAGE - 1);
    match vm.reported_mmio.note(page) {
        Report::New => println!(
            "vm {}: VP {vp} {} absent MMIO at GPA {:#x} (RIP {:#x}): nothing there ({}); reported once per page",
            vm.name(),
            if access.write { "wrote" } else { "read" },
            mi.gpa,
            mi.header.rip,
            if access.write { "ignored" } else { "reads all ones" }
        ),
        Report::Overflow => println!(
            "vm {}: more absent MMIO pages; not reported any more",
            vm.name()
        ),
        Report::Quiet => {}
    }
    complete_mmio(vm, mi, &access, u64::MAX)
}

/// An access to the I/O APIC's register page: a 32-bit access at a
/// 4-byte-aligned offset reads or writes its registers; any other is an
/// absent device's (`absent_mmio`).
fn ioapic_mmio(vm: &mut Vm, mi: &MemoryIntercept) -> bool {
    let Some(access) = decode_mmio(mi) else {
        return false;
    };
    let offset = mi.gpa - ioapic::BASE;
    if access.size != 4 || !offset.is_multiple_of(4) {
        return absent_mmio(vm, mi);
    }
    if access.write {
        let value = match access.operand.register() {
            None => access.operand.write_value(0),
            Some(r) => {
                let mut v = [0u64];
                let name = reg::RAX + u32::from(r);
                if get_registers(vm.partition, mi.header.vp_index, &[name], &mut v).is_err() {
                    return false;
                }
                access.operand.write_value(v[0])
            }
        };
        vm.devices.ioapic.write(offset, value as u32);
        complete_mmio(vm, mi, &access, 0)
    } else {
        let value = vm.devices.ioapic.read(offset);
        complete_mmio(vm, mi, &access, u64::from(value))
    }
}

/// The MOV at the intercepted VP's RIP (fetched by the hypervisor).
fn decode_mmio(mi: &MemoryIntercept) -> Option<hypervisor_core::mmio::Access> {
    // 64-bit code: CS.L (attributes bit 13).
    let long = mi.header.cs.attributes & (1 << 13) != 0;
    hypervisor_core::mmio::decode(&mi.instruction[..mi.instruction_len as usize], long)
}

/// Finishes a decoded MMIO access and resumes the VP past it: a read puts
/// `value` into its register (a 1- or 2-byte destination keeps the
/// register's other bytes). `false` if the register could not be read.
fn complete_mmio(
    vm: &mut Vm,
    mi: &MemoryIntercept,
    access: &hypervisor_core::mmio::Access,
    value: u64,
) -> bool {
    use hypervisor_core::mmio;
    let vp = mi.header.vp_index;
    let mut regs = [(0u32, 0u128); 3];
    let mut n = 0;
    if let (false, Some(r)) = (access.write, access.operand.register()) {
        // AH-BH are bits 15:8 of RAX-RBX (`merge_read` puts them there).
        let name = reg::RAX + u32::from(r);
        let mut old = [0u64];
        if access.extend_to.unwrap_or(access.size) < 4
            && get_registers(vm.partition, vp, &[name], &mut old).is_err()
        {
            return false;
        }
        regs[n] = (name, mmio::merge_read(old[0], value, access) as u128);
        n += 1;
    }
    regs[n] = (reg::RIP, (mi.header.rip + access.length as u64) as u128);
    regs[n + 1] = (reg::INTERCEPT_SUSPEND, 0);
    n += 2;
    if let Err(s) = resume(vm.partition, vp, &regs[..n]) {
        fail(vm, format_args!("resuming VP {vp} failed: status {s:#x}"));
    }
    true
}

/// Puts a Linux guest's boot data in its memory (the kernel is loaded):
/// initrd, command line, firmware (ACPI) tables and the zero page.
fn load_linux(vm: &Vm, file: &[u8]) -> Result<(), &'static str> {
    use linux_boot::layout;
    let k = linux_boot::parse(file, vm.memory_bytes)?.ok_or("not a bzImage")?;
    let initrd = match &vm.initrd {
        None => None,
        Some(m) => {
            let bytes = module_bytes(m);
            let len = bytes.len() as u64;
            let at = linux_boot::initrd_place(&k, vm.memory_bytes, len)
                .ok_or("initrd: no room for it above the kernel; give the VM more memory")?;
            guest_write(vm.memory_base, at, bytes);
            Some((at, len))
        }
    };
    let cmd = &vm.cmdline[..vm.cmdline_len];
    if cmd.len() as u64 >= k.cmdline_size.clamp(255, layout::CMDLINE_MAX as u64) {
        return Err("the command line is longer than this kernel takes");
    }
    guest_write(vm.memory_base, layout::CMDLINE, cmd);
    guest_write(vm.memory_base, layout::CMDLINE + cmd.len() as u64, &[0]);
    // On the heap: a guest's reset starts it again from deep in the worker's
    // stack (shell, vm wait, intercept, start), which 64 KiB must hold.
    if !heap::ready() {
        return Err("the root has no heap for the guest's ACPI tables");
    }
    let mut tables = alloc::vec![0u8; 8192];
    let platform = root_partition_svc::guest_acpi::Platform { vps: vm.vcpus };
    let rsdp = root_partition_svc::guest_acpi::build(&platform, layout::ACPI, &mut tables)?;
    guest_write(vm.memory_base, layout::ACPI, &tables);
    let zp = linux_boot::zero_page(file, &k, vm.memory_bytes, initrd, layout::CMDLINE, rsdp);
    guest_write(vm.memory_base, layout::ZERO_PAGE, &zp);
    guest_write(
        vm.memory_base,
        linux_boot::RESET_VECTOR,
        &linux_boot::RESET_VECTOR_CODE,
    );
    Ok(())
}

fn create_partition(
    base: u64,
    memory: u64,
    vcpus: u32,
    trap_exceptions: bool,
) -> Result<u64, (&'static str, u16)> {
    let mut out = CreatePartitionOutput::default();
    partition_call(
        code::CREATE_PARTITION,
        &CreatePartition::default(),
        out.as_mut_bytes(),
    )
    .map_err(|s| ("CreatePartition", s))?;
    let id = out.partition_id;
    let undo = |e| {
        let _ = partition_call(code::DELETE_PARTITION, &pid_input(id), &mut []);
        e
    };
    partition_call(code::INITIALIZE_PARTITION, &pid_input(id), &mut [])
        .map_err(|s| undo(("InitializePartition", s)))?;
    if trap_exceptions {
        // Every exception but NMI and machine check (the hypervisor's).
        for vector in (0u64..32).filter(|v| *v != 2 && *v != 18) {
            let input = InstallIntercept {
                partition_id: id,
                access_type_mask: intercept::ACCESS_EXECUTE,
                intercept_type: intercept::X64_EXCEPTION,
                intercept_parameter: vector,
            };
            partition_call(code::INSTALL_INTERCEPT, &input, &mut [])
                .map_err(|s| undo(("InstallIntercept", s)))?;
        }
    }
    // GPA 0.. = the block at `base`, 500 pages per call.
    const PER_CALL: u64 = 500;
    let pages = memory / vmm::PAGE;
    let mut elements = [MapGpaPagesElement::default(); PER_CALL as usize];
    let mut done = 0;
    while done < pages {
        let n = (pages - done).min(PER_CALL);
        let header = MapGpaPages {
            partition_id: id,
            target_gpa_page: done,
            map_flags: MapFlags::ALL,
            reserved: 0,
        };
        for (k, e) in (0..n).zip(elements.iter_mut()) {
            e.source_gpa_page = base / vmm::PAGE + done + k;
        }
        let r = hypercall::call_rep(
            code::MAP_GPA_PAGES,
            &header,
            &elements[..n as usize],
            &mut [],
        );
        if r.status != status::SUCCESS {
            return Err(undo(("MapGpaPages", r.status)));
        }
        done += n;
    }
    for vp in 0..vcpus {
        let input = CreateVp {
            partition_id: id,
            vp_index: vp,
            ..Default::default()
        };
        partition_call(code::CREATE_VP, &input, &mut []).map_err(|s| undo(("CreateVp", s)))?;
    }
    Ok(id)
}

/// Maps one guest page to root page `spa` (read, write, execute), or
/// unmaps it (`None`; the page stays the VM's, in the root's pool).
fn map_page(id: u64, gpa: u64, spa: Option<u64>) -> Result<(), u16> {
    let r = match spa {
        Some(spa) => hypercall::call_rep(
            code::MAP_GPA_PAGES,
            &MapGpaPages {
                partition_id: id,
                target_gpa_page: gpa / vmm::PAGE,
                map_flags: MapFlags::ALL,
                reserved: 0,
            },
            &[MapGpaPagesElement {
                source_gpa_page: spa / vmm::PAGE,
            }],
            &mut [],
        ),
        None => hypercall::call(
            code::UNMAP_GPA_PAGES,
            1,
            UnmapGpaPages {
                partition_id: id,
                target_gpa_page: gpa / vmm::PAGE,
                ..Default::default()
            }
            .as_bytes(),
            &mut [],
        ),
    };
    match r.status {
        status::SUCCESS => Ok(()),
        s => Err(s),
    }
}

/// Suspends every VP (ExplicitSuspend); the VM keeps its memory.
fn suspend_all(vm: &mut Vm) {
    for vp in 0..vm.vcpus {
        let _ = set_registers(vm.partition, vp, &[(reg::EXPLICIT_SUSPEND, 1)]);
    }
}

/// Seconds since the VM started, while it runs; 0 otherwise.
fn uptime(vm: &Vm, now: u64, tsc_hz: u64) -> u64 {
    match vm.state {
        State::Running | State::Starting | State::Stopping => (now - vm.started_tsc) / tsc_hz,
        _ => 0,
    }
}

/// `vm show`'s VMBus lines: the protocol version, then each integration
/// service and its state, as Get-VMIntegrationService lists them.
fn show_vmbus(bus: &VmBus, tsc_hz: u64) {
    let now = crate::arch::rdtsc();
    match bus.version {
        Some(v) => println!("  VMBus:          version {}.{}", v >> 16, v & 0xFFFF),
        None => println!("  VMBus:          not connected"),
    }
    println!("  status:         {}", bus.status(now, tsc_hz));
    if bus.refused > 0 || bus.dropped() > 0 {
        println!(
            "  VMBus messages refused: {} from the guest; dropped: {} to it",
            bus.refused,
            bus.dropped()
        );
    }
    println!("  integration services:");
    for ic in &bus.integrations {
        let state = match ic.stage {
            IcStage::Offered => "offered; the guest has not opened it",
            IcStage::Negotiating => "negotiating",
            IcStage::Ready(_) => "OK",
            IcStage::Failed(_) => "failed: the guest's answers made no sense",
        };
        print!("    {:<22} {}", ic.service.name(), state);
        if let IcStage::Ready(v) = ic.stage {
            print!(" (version {}.{})", v.0, v.1);
        }
        match (ic.service, ic.last_answer) {
            (root_partition_svc::ic::Service::Heartbeat, Some(t)) => {
                print!(", last answer {} ms ago", (now - t) * 1000 / tsc_hz.max(1))
            }
            (root_partition_svc::ic::Service::Shutdown, _) if ic.accepted => {
                print!(", a shutdown request was accepted")
            }
            _ => {}
        }
        println!();
    }
    if let Some(dev) = &bus.storage {
        let state = match dev.stage {
            DeviceStage::Offered => "offered; the guest has not opened it",
            DeviceStage::Open => "open",
            DeviceStage::Broken => "closed: the guest broke its ring",
            DeviceStage::Rescinded => "rescinded",
        };
        let s = &dev.server;
        println!(
            "  SCSI controller (relid {}): {state}; protocol {}; {} requests, {} read, {} written, {} SCSI errors, {} refused",
            dev.relid,
            match s.version() {
                Some(v) => storage_version(v),
                None => "not negotiated",
            },
            s.completed,
            Size(s.bytes_read),
            Size(s.bytes_written),
            s.scsi_errors,
            s.refused
        );
    }
    for dev in &bus.nics {
        let state = match dev.stage {
            DeviceStage::Offered => "offered; the guest has not opened it",
            DeviceStage::Open => "open",
            DeviceStage::Broken => "closed: the guest broke its ring",
            DeviceStage::Rescinded => "removed; the guest has not closed it",
        };
        let s = &dev.server;
        let c = s.counters;
        let (sections, held) = s.receive_sections();
        print!(
            "  network adapter nic {} (relid {}): {state}",
            dev.spec.number, dev.relid
        );
        match (s.version(), s.ndis_version()) {
            (Some(_), Some((major, minor))) => print!("; NVSP 2, NDIS {major}.{minor}"),
            (Some(_), None) => print!("; NVSP 2"),
            _ => {}
        }
        println!(
            "; packet filter {:#x}; receive buffer {sections} sections ({held} with the guest)",
            s.packet_filter()
        );
        println!(
            "    frames: {} sent ({}), {} received ({}), {} filtered; {} refused",
            c.frames_sent,
            Size(c.bytes_sent),
            c.frames_received,
            Size(c.bytes_received),
            c.frames_filtered,
            c.refused
        );
    }
    if let Some(dev) = &bus.echo {
        let state = match dev.stage {
            DeviceStage::Offered => "offered; the guest has not opened it",
            DeviceStage::Open => "open",
            DeviceStage::Broken => "closed: the guest broke its ring",
            DeviceStage::Rescinded => "rescinded; the guest has not released it",
        };
        println!(
            "  devices:\n    echo (relid {})        {state}; {} packets answered, {} refused; polled {} times ({} caught packets)",
            dev.relid,
            dev.server.answered,
            dev.server.refused,
            dev.poll.periods,
            dev.poll.caught_periods
        );
    }
}

/// A storage protocol version as Hyper-V names it.
fn storage_version(v: u16) -> &'static str {
    match v {
        0x0602 => "6.2 (Windows 10)",
        0x0600 => "6.0 (Windows 8.1)",
        0x0501 => "5.1 (Windows 8)",
        _ => "?",
    }
}

/// Ends a run: every VP suspended (ExplicitSuspend, which `vm start`
/// expects), the state and its reason set.
fn end(vm: &mut Vm, state: State, why: core::fmt::Arguments) {
    suspend_all(vm);
    // Its rings are in the guest's memory: gone before the memory is reused.
    if let Some(bus) = vm.vmbus.take() {
        vm.vmbus_refused = (bus.refused, bus.dropped());
    }
    vm.shutdown_deadline = None;
    vm.state = state;
    vm.set_reason(why);
}

fn fail(vm: &mut Vm, why: core::fmt::Arguments) {
    end(vm, State::Failed, why);
    println!("vm {}: failed: {}", vm.name(), vm.reason());
}

/// Unix seconds now, from the host's clock as read at (Unix seconds, TSC).
fn unix_time((t, tsc): (u64, u64), tsc_hz: u64) -> u64 {
    t + (crate::arch::rdtsc() - tsc) / tsc_hz
}

fn io_port(vm: &mut Vm, io: &IoPortIntercept, now: impl Fn() -> u64) {
    let vp = io.header.vp_index;
    if io.string || io.rep {
        return fail(
            vm,
            format_args!(
                "VP {vp}: string I/O (INS/OUTS) on port {:#x} at RIP {:#x} is not emulated",
                io.port, io.header.rip
            ),
        );
    }
    let write = io.header.access == msg::access::WRITE;
    let mask = vmm::access_mask(io.size);
    let effect = vmm::emulate_io(
        &mut vm.devices,
        io.port,
        io.size,
        write,
        (io.rax & mask) as u32,
        if vmm::reads_clock(io.port) { now() } else { 0 },
    );
    let mut rax = io.rax;
    let mut interrupt = None;
    match effect {
        IoEffect::Done(v) => {
            if !write {
                rax = (io.rax & !mask) | (v as u64 & mask);
            }
        }
        IoEffect::Output(b) => {
            vm.console.push(b);
            if vm.attached {
                serial::write_byte(b);
            }
        }
        IoEffect::Interrupt(vector) => interrupt = Some(vector),
        IoEffect::UnmapPage(gpa) => {
            if gpa >= vm.memory_bytes || vm.unmapped.is_some() {
                return fail(
                    vm,
                    format_args!("VP {vp}: the test device cannot unmap GPA {gpa:#x}"),
                );
            }
            if let Err(s) = map_page(vm.partition, gpa, None) {
                return fail(vm, format_args!("UnmapGpaPages {gpa:#x}: status {s:#x}"));
            }
            vm.unmapped = Some(gpa);
        }
        IoEffect::Exit(code) => return end(vm, State::Off, format_args!("exit code {code}")),
        IoEffect::PowerOff if vm.shutdown_deadline.is_some() => {
            return end(vm, State::Off, format_args!("shut down by the guest"))
        }
        IoEffect::PowerOff => return end(vm, State::Off, format_args!("powered off by the guest")),
        IoEffect::Reset => {
            vm.reset_requested = true;
            return end(vm, State::Off, format_args!("reset by the guest"));
        }
        IoEffect::Unhandled => {
            if !write {
                rax = io.rax | mask;
            }
            match vm.reported_ports.note(io.port as u64) {
                Report::New => println!(
                    "vm {}: VP {vp} {} port {:#x} at RIP {:#x}: not emulated ({}); reported once",
                    vm.name(),
                    if write { "wrote" } else { "read" },
                    io.port,
                    io.header.rip,
                    if write { "ignored" } else { "reads all ones" }
                ),
                Report::Overflow => println!(
                    "vm {}: more ports not emulated; not reported any more",
                    vm.name()
                ),
                Report::Quiet => {}
            }
        }
    }
    let next = io.header.rip + io.header.instruction_length as u64;
    if !hypercall::defer_complete_intercept(vm.partition, vp, rax, next) {
        return fail(vm, format_args!("cannot resume VP {vp}: no hypercalls"));
    }
    if let Some(vector) = interrupt {
        assert_interrupt(vm, vp, vector, "the test device");
    }
    if (vmm::COM1..vmm::COM1 + 8).contains(&io.port) {
        serial_interrupt(vm);
    }
}

/// COM1's interrupt line after a change: an edge the I/O APIC turns into
/// an interrupt is asserted; one its entry refuses is reported once a run.
fn serial_interrupt(vm: &mut Vm) {
    match vm.devices.serial_interrupt() {
        None => {}
        Some(Ok(d)) => match d.destination {
            ioapic::Destination::Vp(vp) => assert_interrupt(vm, vp, d.vector, "the I/O APIC"),
            ioapic::Destination::All => {
                for vp in 0..vm.vcpus {
                    assert_interrupt(vm, vp, d.vector, "the I/O APIC");
                }
            }
        },
        Some(Err(why)) => {
            vm.ioapic_refusals += 1;
            if vm.ioapic_refusals == 1 {
                println!(
                    "vm {}: COM1's interrupt (I/O APIC pin {}) not delivered: {why}; further refusals are counted in vm show",
                    vm.name(),
                    ioapic::COM1_PIN
                );
            }
        }
    }
}

/// A fixed, edge-triggered interrupt into VP `vp` (physical destination:
/// the VP index), for `source`. A failure (no such VP, a vector the
/// hypervisor refuses) is reported once a run, then counted.
fn assert_interrupt(vm: &mut Vm, vp: u32, vector: u8, source: &str) {
    let input = AssertVirtualInterrupt {
        partition_id: vm.partition,
        destination: vp as u64,
        vector: vector as u32,
        ..Default::default()
    };
    if let Err(s) = partition_call(code::ASSERT_VIRTUAL_INTERRUPT, &input, &mut []) {
        // Reported once a run: a guest must not flood the console.
        vm.interrupt_failures += 1;
        if vm.interrupt_failures == 1 {
            println!(
                "vm {}: interrupt {vector:#x} from {source} for VP {vp}: AssertVirtualInterrupt failed: status {s:#x} ({}); further failures are counted in vm show",
                vm.name(),
                format::status_name(s)
            );
        }
    }
}

/// `vm show`'s second line for a running VP: what it waits for (halted,
/// a SIPI, the root's answer to an intercept) and its armed synthetic
/// timers (read without stopping it).
fn show_vp_activity(id: u64, vp: u32) {
    let mut names = [0u32; 10];
    names[0] = reg::INTERNAL_ACTIVITY_STATE;
    names[1] = reg::INTERCEPT_SUSPEND;
    for (i, n) in names[2..].iter_mut().enumerate() {
        *n = reg::STIMER0_CONFIG + i as u32;
    }
    let mut v = [0u64; 10];
    if let Err(s) = get_registers(id, vp, &names, &mut v) {
        println!("      activity: GetVpRegisters: status {s:#x}");
        return;
    }
    let waits = match (v[0] & 1 != 0, v[0] & 2 != 0, v[1] != 0) {
        (true, _, _) => "waiting for a SIPI",
        (_, _, true) => "waiting for the root (intercept)",
        (_, true, _) => "halted",
        _ => "runnable",
    };
    print!("      {waits}");
    for t in 0..4 {
        let (config, count) = (v[2 + 2 * t], v[3 + 2 * t]);
        if config & hypervisor_core::stimer::ENABLE != 0 {
            print!("; STIMER{t} config {config:#x} count {count}");
        }
    }
    println!();
}
