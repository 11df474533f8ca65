//! The shell on COM1: prompt, line editing, the commands.
use crate::phys::Identity;
use crate::{arch, fpu, hypercall, idt, power, print, println, serial, vm};
use core::sync::atomic::Ordering;
use hv_abi::layout::{GetHostLog, IntoBytes};
use hv_abi::{hypercall as hc, HostInfo, HostLogChunk, HostStats, LpStats, RootBoot};
use root_partition_svc::acpi::{self, Platform};
use root_partition_svc::boot::{self, HvIdentity};
use root_partition_svc::command::{self, Command, ParseError, HELP};
use root_partition_svc::line::{Event, LineEditor};
use root_partition_svc::vhd_command::VhdCommand;
use root_partition_svc::{format, PROMPT};

/// TSC frequency assumed for delays when the hypervisor cannot be asked.
const FALLBACK_TSC_HZ: u64 = 3_000_000_000;

struct Shell {
    hv: HvIdentity,
    mem: Identity,
    acpi: Option<Platform>,
    tsc_hz: u64,
    vp_count: u32,
    /// Where COM1's interrupt was routed, or why it was not.
    serial_route: Result<acpi::IsaRoute, &'static str>,
}

pub fn run(boot: RootBoot, hv: HvIdentity) -> ! {
    let mem = Identity {
        top: boot::identity_top(&boot),
    };
    let rsdp = if boot.rsdp != 0 {
        Some(boot.rsdp)
    } else {
        acpi::find_rsdp_bios(&mem)
    };
    let acpi = match rsdp.map(|r| acpi::read_platform(&mem, r)) {
        Some(Ok(p)) => {
            if p.power_off.is_none() {
                println!("root partition: ACPI: no usable PM1 control or \\_S5; shutdown uses the emulator exits only");
            }
            Some(p)
        }
        Some(Err(e)) => {
            println!("root partition: ACPI: {e}; shutdown and reboot use the fallbacks only");
            None
        }
        None => {
            println!("root partition: ACPI: no RSDP; shutdown and reboot use the fallbacks only");
            None
        }
    };
    let info = host_info().ok();
    let tsc_hz = info
        .map(|i| i.tsc_hz)
        .filter(|&h| h != 0)
        .unwrap_or(FALLBACK_TSC_HZ);
    // COM1's input on its interrupt: the idle shell then sleeps longer.
    let serial_route = match (rsdp, info) {
        (Some(rsdp), Some(info)) => {
            crate::device_irq::route_isa(&mem, rsdp, 4, idt::SERIAL_VECTOR, info.lp0_apic_id)
        }
        (None, _) => Err("no ACPI tables"),
        (_, None) => Err("no hypervisor to hand the interrupt on"),
    };
    match &serial_route {
        Ok(r) => {
            serial::enable_receive_interrupt();
            arch::serial_interrupts();
            arch::set_idle_tick_us(arch::wanted_idle_tick_us(false, false));
            println!(
                "root partition: COM1 input on its interrupt (I/O APIC {:#x} pin {}, vector {:#x}); idle tick {} ms ({} ms while VMBus work waits for it, {} ms while the host NIC is polled)",
                r.io_apic,
                r.pin,
                idt::SERIAL_VECTOR,
                arch::SLEEPY_TICK_US / 1000,
                arch::QUIET_TICK_US / 1000,
                arch::INTERRUPT_TICK_US / 1000
            );
        }
        Err(e) => println!(
            "root partition: COM1 input polled every {} ms: {e}",
            arch::POLLED_TICK_US / 1000
        ),
    }
    let shell = Shell {
        hv,
        mem,
        acpi,
        tsc_hz,
        vp_count: boot.vp_count,
        serial_route,
    };

    if boot::has_word(boot.cmdline(), "poweroff") {
        println!("{PROMPT}");
        shell.shutdown();
    }

    let vmm = vm::get();
    vmm.init(&boot, shell.tsc_hz);
    crate::host_disk::init(shell.mem.top);
    vm::get().net.init(shell.mem.top);
    // The APIC on and its idle timer running before any command: a startup
    // line that waits (`vm wait`) sleeps until an interrupt, as at the prompt.
    arch::start_idle_timer(shell.tsc_hz, idt::TIMER_VECTOR);
    // A boot module named `startup`: shell lines run before the first
    // prompt (`cargo xtask run --guest linux` defines its VM this way).
    if let Some(m) = boot.modules().iter().find(|m| m.name() == "startup") {
        let bytes = vm::module_bytes(m);
        for line in bytes.split(|&b| b == b'\n') {
            let Ok(line) = core::str::from_utf8(line) else {
                println!("startup: a line is not UTF-8; skipped");
                continue;
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            println!("{PROMPT}{line}");
            shell.execute(line);
        }
    }

    let mut editor = LineEditor::<1024>::new();
    print!("{PROMPT}");
    let mut last_activity = arch::rdtsc();
    loop {
        if vmm.poll() || vmm.polling() {
            last_activity = arch::rdtsc();
        }
        let Some(b) = serial::try_read() else {
            // Busy for a while after input (a pasted line arrives faster
            // than the idle tick), then asleep until the tick or a SINT.
            if arch::rdtsc() - last_activity > shell.tsc_hz / 20 {
                crate::hypercall::idle();
            } else {
                core::hint::spin_loop();
            }
            continue;
        };
        last_activity = arch::rdtsc();
        match editor.feed(b, &mut |e| serial::write_bytes(e)) {
            Event::None => continue,
            Event::Line => {
                // A VP's resume waits for no command.
                crate::hypercall::flush_deferred();
                shell.execute(editor.line());
                editor.clear();
                last_activity = arch::rdtsc();
            }
            Event::Overflow => println!(
                "line too long (more than {} characters); ignored",
                editor.capacity()
            ),
            Event::Interrupt => {}
        }
        print!("{PROMPT}");
    }
}

/// Every leaf of the page tables the root runs on, in address order.
fn page_table_leaves(mem: &Identity, f: &mut dyn FnMut(hypervisor_core::page_table::Leaf)) {
    use hypervisor_core::page_table::{PageTable, TableMemory, X86};
    /// The tables as the identity map shows them; read only.
    struct Tables<'a>(&'a Identity);
    impl TableMemory for Tables<'_> {
        fn alloc_table(&mut self) -> Option<u64> {
            None
        }
        fn read(&self, table: u64, index: usize) -> u64 {
            self.0
                .read_u64(table + 8 * (index & 511) as u64)
                .unwrap_or(0)
        }
        fn write(&mut self, _: u64, _: usize, _: u64) {}
    }
    PageTable::<X86>::existing(arch::cr3() & !0xFFF).leaves(&Tables(mem), f);
}

/// Uses 4 KiB of stack per level, forever (on purpose: `debug overflow`).
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let buf = core::hint::black_box([depth; 512]);
    recurse(depth + 1) + buf[depth as usize % 512]
}

fn host_info() -> Result<HostInfo, u16> {
    let page = hypercall::call_with_output(hc::GET_HOST_INFO)?;
    HostInfo::decode(&page).ok_or(hc::status::INVALID_PARAMETER)
}

impl Shell {
    fn execute(&self, line: &str) {
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(ParseError::Empty) => return,
            Err(e) => {
                println!("{e}");
                return;
            }
        };
        match cmd {
            Command::Help => {
                println!("commands:");
                for (usage, what) in HELP {
                    println!("  {usage:<18} {what}");
                }
                for (usage, what) in root_partition_svc::vm_command::VM_USAGE {
                    println!("  {usage}\n      {what}");
                }
            }
            Command::Vm(c) => vm::get().execute(c),
            Command::HostInfo => self.host_info(),
            Command::HostStats => self.host_stats(),
            Command::HostDisk => crate::host_disk::show(),
            Command::SwitchNew { name, external } => vm::get().net.new_switch(name, external),
            Command::SwitchList => vm::get().net.list(),
            Command::SwitchShow(name) => vm::get().net.show(name),
            Command::Vhd(VhdCommand::New {
                path,
                size,
                kind,
                format,
            }) => crate::host_disk::vhd_new(path, size, kind, format, vm::get().now()),
            Command::Vhd(VhdCommand::Show(path)) => crate::host_disk::vhd_show(path),
            Command::HostModules => {
                for m in vm::get().modules() {
                    println!("{:>10} bytes  {}", m.end - m.start, m.name());
                }
            }
            Command::HostLog { follow } => self.host_log(follow),
            Command::Shutdown => self.shutdown(),
            Command::Reboot => power::reboot(self.acpi.as_ref(), &self.mem, self.tsc_hz),
            Command::DebugRead(addr) => match self.mem.read_u64(addr) {
                Some(v) => println!("{addr:#x}: {v:#018x}"),
                None => println!(
                    "debug read: {addr:#x} is outside the root's identity map (0..{:#x})",
                    self.mem.top
                ),
            },
            Command::DebugFpu => {
                let _ = root_partition_svc::fpu::report(&mut serial::Com1, fpu::check());
            }
            Command::DebugTimer => self.debug_timer(),
            Command::DebugIpi => self.debug_ipi(),
            Command::DebugSerial => self.debug_serial(),
            Command::DebugPageTables => {
                let audit = root_partition_svc::page_audit::Audit::of(
                    |f| page_table_leaves(&self.mem, f),
                    self.mem.top,
                );
                println!("{audit}");
            }
            Command::DebugBadStart(name) => vm::get().start_with(name, true),
            Command::DebugOverflow => {
                println!("debug overflow: recursing until the stack's guard page stops the root");
                println!("debug overflow: returned {}", recurse(0));
            }
            Command::BenchDisk(mib) => crate::host_disk::bench(mib, self.tsc_hz),
            Command::BenchExits(n) => {
                // Every CPUID exits to the hypervisor and back: the TSC span over
                // n of them is n world-switch round trips plus the loop's four
                // instructions each. Under QEMU -icount shift=0 the TSC counts
                // instructions.
                let start = arch::rdtsc();
                arch::cpuid_loop(n);
                let ticks = arch::rdtsc() - start;
                let rate = if ticks == 0 {
                    0
                } else {
                    (n as u128 * self.tsc_hz as u128 / ticks as u128) as u64
                };
                println!("bench exits: {n} cpuid exits in {ticks} TSC ticks, {} ticks per round trip, {rate} exits/s of TSC time", ticks / n);
            }
        }
    }

    /// Waits until `done` or 2 s have passed; returns the milliseconds waited.
    /// `sleep`: halt with interrupts enabled between looks (when this VP's own
    /// interrupts are what it waits for); otherwise poll.
    fn wait_for(&self, sleep: bool, done: impl Fn() -> bool) -> u64 {
        let start = arch::rdtsc();
        while !done() && arch::rdtsc() - start < 2 * self.tsc_hz {
            if sleep {
                // SAFETY: the IDT handles the APIC's vectors (timer, IPI); HLT
                // sleeps until the next one; interrupts are off again after.
                unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
            } else {
                core::hint::spin_loop();
            }
        }
        (arch::rdtsc() - start) * 1000 / self.tsc_hz.max(1)
    }

    /// The x2APIC timer, periodic at the idle tick or the quiet tick if
    /// that is shorter (TSC rate, divide by 1), until it has interrupted 10
    /// times; then the idle tick again.
    // Not inlined: its buffers stay off the stack of the commands that
    // run deep (vm wait serving guests, a guest's reset restarting it).
    #[inline(never)]
    fn debug_timer(&self) {
        let before = idt::TIMER_TICKS.load(Ordering::Relaxed);
        // Restarted: its first tick a whole period from now.
        let period_us = arch::idle_tick_us().min(arch::QUIET_TICK_US);
        arch::start_timer_every(self.tsc_hz, idt::TIMER_VECTOR, period_us);
        let ticks = || idt::TIMER_TICKS.load(Ordering::Relaxed) - before;
        let ms = self.wait_for(true, || ticks() >= 10);
        let n = ticks();
        arch::start_idle_timer(self.tsc_hz, idt::TIMER_VECTOR);
        let verdict = if n >= 10 { "ok" } else { "FAILED" };
        let period = period_us / 1000;
        println!("timer: {verdict}, {n} interrupts in {ms} ms (period {period} ms)");
    }

    /// COM1's receive interrupts so far: a shell that was typed at with
    /// the interrupt routed has taken some.
    fn debug_serial(&self) {
        let n = idt::SERIAL_IRQS.load(Ordering::Relaxed);
        match &self.serial_route {
            Ok(r) => {
                let verdict = if n > 0 { "ok" } else { "FAILED" };
                println!(
                    "serial: {verdict}, {n} interrupts from COM1's input (I/O APIC {:#x} pin {}, vector {:#x})",
                    r.io_apic,
                    r.pin,
                    idt::SERIAL_VECTOR
                );
            }
            Err(e) => println!("serial: polled ({e})"),
        }
    }

    /// A fixed IPI to every other VP (x2APIC ICR, shorthand all-but-self);
    /// each answers by counting it.
    // Not inlined: its buffers stay off the stack of the commands that
    // run deep (vm wait serving guests, a guest's reset restarting it).
    #[inline(never)]
    fn debug_ipi(&self) {
        let others = self.vp_count.saturating_sub(1) as u64;
        let before = idt::IPIS.load(Ordering::Relaxed);
        // SAFETY: x2APIC registers: enable this VP's APIC; ICR with the
        // all-excluding-self shorthand (bits 19:18 = 3), fixed, IPI_VECTOR.
        unsafe {
            arch::wrmsr(0x80F, 0x1FF);
            arch::wrmsr(0x830, (3 << 18) | idt::IPI_VECTOR as u64);
        }
        let got = || idt::IPIS.load(Ordering::Relaxed) - before;
        // The answers are counted by the other VPs: nothing interrupts this one.
        let ms = self.wait_for(false, || got() >= others);
        let n = got();
        let verdict = if n == others { "ok" } else { "FAILED" };
        println!("ipi: {verdict}, {n} of {others} other VPs answered in {ms} ms");
    }

    fn shutdown(&self) -> ! {
        power::power_off(self.acpi.as_ref(), self.tsc_hz)
    }

    fn unavailable(&self, what: &str) -> bool {
        if hypercall::enabled() {
            return false;
        }
        println!("{what}: hypercalls are unavailable (no hypercall page)");
        true
    }

    // Not inlined: its buffers stay off the stack of the commands that
    // run deep (vm wait serving guests, a guest's reset restarting it).
    #[inline(never)]
    fn host_info(&self) {
        if self.unavailable("host info") {
            return;
        }
        match host_info() {
            Ok(info) => {
                let _ = format::host_info(&mut serial::Com1, &info, &self.hv);
                let now = vm::get().now();
                let t = root_partition_svc::cmos::DateTime::from_unix(now);
                println!(
                    "host clock: {:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC ({now} s since 1970; what the VMs' clocks show)",
                    t.year, t.month, t.day, t.hour, t.minute, t.second
                );
            }
            Err(s) => {
                let _ =
                    format::hypercall_failed(&mut serial::Com1, "host info", "GET_HOST_INFO", s);
            }
        }
    }

    /// The hypervisor's log from the oldest byte it keeps; with `follow`,
    /// then what it adds, until a key is pressed (VMs are served meanwhile).
    // Not inlined: its buffers stay off the stack of the commands that
    // run deep (vm wait serving guests, a guest's reset restarting it).
    #[inline(never)]
    fn host_log(&self, follow: bool) {
        if self.unavailable("host log") {
            return;
        }
        if follow {
            println!("(following the hypervisor's log; press any key to stop)");
        }
        // New lines do not wake the root: it looks every quiet tick.
        vm::get().set_watching(follow);
        self.show_host_log(follow);
        vm::get().set_watching(false);
    }

    fn show_host_log(&self, follow: bool) {
        let mut at = 0u64;
        let mut page = [0u8; 4096];
        loop {
            let reply = hypercall::call(
                hc::GET_HOST_LOG,
                0,
                GetHostLog { position: at }.as_bytes(),
                &mut page,
            );
            if reply.status != hc::status::SUCCESS {
                let _ = format::hypercall_failed(
                    &mut serial::Com1,
                    "host log",
                    "GET_HOST_LOG",
                    reply.status,
                );
                return;
            }
            let Some(chunk) = HostLogChunk::decode(&page) else {
                println!("host log: the hypervisor's answer is malformed");
                return;
            };
            if chunk.start > at {
                println!(
                    "[{} bytes of the log were overwritten before they were shown]",
                    chunk.start - at
                );
            }
            for &b in chunk.bytes {
                if b == b'\n' {
                    serial::write_byte(b'\r');
                }
                serial::write_byte(b);
            }
            at = chunk.start + chunk.bytes.len() as u64;
            if at < chunk.written {
                continue;
            }
            if !follow {
                return;
            }
            // Caught up: serve the VMs, stop on a key, look again every 50 ms.
            let fetched = arch::rdtsc();
            while arch::rdtsc() - fetched < self.tsc_hz / 20 {
                let vmm = vm::get();
                vmm.poll();
                if serial::try_read().is_some() {
                    return;
                }
                if !vmm.polling() {
                    crate::hypercall::idle();
                }
            }
        }
    }

    // Not inlined: its buffers stay off the stack of the commands that
    // run deep (vm wait serving guests, a guest's reset restarting it).
    #[inline(never)]
    fn host_stats(&self) {
        if self.unavailable("host stats") {
            return;
        }
        match hypercall::call_with_output(hc::GET_HOST_STATS) {
            Ok(page) => {
                let mut lps = [LpStats::default(); HostStats::MAX_LPS];
                match HostStats::decode(&page, &mut lps) {
                    Some(n) => {
                        let _ = format::host_stats(&mut serial::Com1, &lps[..n]);
                    }
                    None => println!("host stats: the hypervisor's answer is malformed"),
                }
            }
            Err(s) => {
                let _ =
                    format::hypercall_failed(&mut serial::Com1, "host stats", "GET_HOST_STATS", s);
            }
        }
    }
}
