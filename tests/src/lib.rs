//! The boot matrix: whole-system test cases and the judges that read their
//! serial logs and exit status.
//!
//! A case names a machine (emulator, boot path, processors, memory, CPU model,
//! hypervisor command line) and what must be seen. `cargo xtask test` builds
//! the images, runs each case under a hard time limit and calls [`judge`].
//! Everything here is plain data and string checks, unit-tested on the host.

pub mod audit;

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulator {
    /// QEMU under TCG: AMD SVM with nested paging; also UEFI (OVMF).
    Qemu,
    /// Bochs: Intel VMX with EPT (and AMD models with SVM).
    Bochs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boot {
    /// QEMU `-kernel` (Multiboot 1).
    Multiboot,
    /// OVMF + our UEFI loader from a FAT system partition.
    Uefi,
    /// A GRUB 2 rescue ISO (Multiboot 2).
    Grub,
}

impl fmt::Display for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Emulator::Qemu => "qemu",
            Emulator::Bochs => "bochs",
        })
    }
}

impl fmt::Display for Boot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Boot::Multiboot => "multiboot",
            Boot::Uefi => "uefi",
            Boot::Grub => "grub",
        })
    }
}

/// The machine a case boots.
#[derive(Clone, Debug)]
pub struct Machine {
    pub emulator: Emulator,
    pub boot: Boot,
    pub cpus: u32,
    pub memory_mib: u64,
    pub cpu_model: String,
    pub cmdline: String,
    /// QEMU `-icount shift=0`: the guest's TSC counts instructions (benchmarks).
    pub count_instructions: bool,
    /// Bochs: instructions per emulated second (its TSC's rate, about).
    pub bochs_ips: u64,
    /// A raw disk image the root gets as a virtio-blk device (QEMU).
    pub disk_image: Option<String>,
    /// A NIC for the root: a virtio-net device on QEMU's user-mode network
    /// (`restrict`: no frame leaves the emulator; its gateway answers).
    pub nic: Option<NicNetwork>,
}

/// The network behind the root's NIC (QEMU user mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicNetwork {
    /// Only the emulator's own addresses answer (tests).
    Restricted,
    /// Through the host's network, NATed (`cargo xtask run`).
    Open,
    /// Restricted, and a TCP connection to 10.0.2.100:5000 is forwarded to
    /// a command that discards what it reads (the network benchmark).
    Sink,
}

impl Machine {
    pub fn default_cpu_model(emulator: Emulator) -> &'static str {
        match emulator {
            Emulator::Qemu => "qemu64,+svm,+npt",
            Emulator::Bochs => "corei7_skylake_x",
        }
    }

    pub fn new(emulator: Emulator, boot: Boot, cpus: u32, memory_mib: u64) -> Self {
        Machine {
            emulator,
            boot,
            cpus,
            memory_mib,
            cpu_model: Self::default_cpu_model(emulator).to_string(),
            cmdline: "poweroff".to_string(),
            count_instructions: false,
            bochs_ips: 10_000_000,
            disk_image: None,
            nic: None,
        }
    }

    fn model(mut self, model: &str) -> Self {
        self.cpu_model = model.to_string();
        self
    }

    fn cmdline(mut self, cmdline: &str) -> Self {
        self.cmdline = cmdline.to_string();
        self
    }
}

/// What the root shell must show for the script `host info`, `debug timer`,
/// `debug ipi`, `host stats`, `debug serial`, `debug fpu`, `debug
/// pagetables`, `bogus`, `shutdown` (formats in docs/root-partition.md): the
/// virtual APIC's timer and IPIs reach the root; the lines typed raised
/// COM1's interrupt, which the hypervisor handed to the root; its page
/// tables are W^X, without page 0, with guard pages.
pub const ROOT_SHELL_SHOWS: &[&str] = &[
    "Microsoft Hv",
    "timer: ok",
    "serial: ok, ",
    "ipi: ok",
    "fpu: ok",
    "writable and executable: 0; page 0: not mapped; guard pages: ",
    "unknown command",
];

/// The module every case loads, to prove modules reach the hypervisor intact
/// on every boot path.
pub const TEST_MODULE_NAME: &str = "test-module";
pub const TEST_MODULE_SIZE: usize = 12_345;

/// A judge of a serial log: `Err` says what is wrong.
pub type LogCheck = fn(&str) -> Result<(), String>;

#[derive(Clone, Debug)]
pub enum Expect {
    /// Boots, every processor checks in, the summary line is right, and the
    /// machine powers off with success.
    Boots {
        vendor: &'static str,
        slat: &'static str,
    },
    /// The hypervisor reports this exception vector and powers off with failure.
    Exception { vector: u64 },
    /// Boots, then the emulator's monitor dumps the page tables of every
    /// processor: no page may be writable and executable.
    PageTableAudit,
    /// Boots into the root partition on every processor; its shell answers
    /// the script with every `must_show` text; the machine powers off with success.
    RootShell {
        vendor: &'static str,
        slat: &'static str,
        must_show: &'static [&'static str],
    },
    /// The root touches memory that is not its own: the hypervisor stops it
    /// with a report naming `gpa`, and powers off with failure.
    RootStopped { gpa: u64 },
    /// The root takes exception `vector`: it reports it and stops the
    /// machine with failure.
    RootException { vector: u8 },
    /// As `RootShell`, with guest partitions (the test guests are boot
    /// modules): every `must_show` text appears, no `must_not_show` text does.
    Guests {
        vendor: &'static str,
        slat: &'static str,
        must_show: &'static [&'static str],
        must_not_show: &'static [&'static str],
        /// A further judge of the serial log (measurements).
        check: Option<LogCheck>,
    },
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub machine: Machine,
    pub expect: Expect,
    pub timeout_secs: u64,
    /// Boot the root partition (module `root`).
    pub with_root: bool,
    /// Lines typed at the root shell, one per prompt.
    pub script: Vec<String>,
    /// Lines the root runs before its first prompt (its `startup` module,
    /// as `cargo xtask run --guest linux` uses it).
    pub startup: Vec<String>,
    /// Load the test guests (`tests/guests`) as boot modules, named by their binaries.
    pub with_guests: bool,
    /// Load the Linux test kit (Debian's kernel as module `linux`, the
    /// initramfs as `linux-initrd`) as boot modules.
    pub with_linux: bool,
    /// A disk for the root, made fresh for the case (QEMU).
    pub host_disk: Option<HostDisk>,
}

/// The root's own disk in a case: a new FAT32 image, VHD files qemu-img
/// made on it, boots after the first on the same disk, and what qemu-img
/// must find in the VHD files after the last boot.
#[derive(Clone, Debug)]
pub struct HostDisk {
    /// Made by `qemu-img create` before the first boot: (file name, qemu's
    /// format name, subformat, size).
    pub qemu_vhds: &'static [(&'static str, &'static str, &'static str, &'static str)],
    /// The shell scripts of the boots after the first.
    pub later_boots: Vec<Vec<String>>,
    /// After the last boot, on the build host: qemu-img opens each file
    /// (`check` passes on a VHDX; it has no check for VHD) and its disk,
    /// converted to raw, holds the text.
    pub vhds_hold: &'static [(&'static str, &'static str)],
}

const BOOT_MARKER_PREFIX: &str = "==== boot ";

/// Between two boots' serial text in a case's log.
pub fn next_boot_marker(n: usize) -> String {
    format!("{BOOT_MARKER_PREFIX}{n} on the same host disk ====")
}

/// The root shell's prompt.
pub const ROOT_PROMPT: &str = "root> ";
/// Guest shells' prompts, which a script line also waits for (the Linux
/// kit's shell, seen through `vm console`).
pub const GUEST_PROMPTS: &[&str] = &["linux# "];
/// Between COM1 (the root's console) and COM2 (the hypervisor's log) in a
/// run's serial text.
pub const HYPERVISOR_LOG_MARKER: &str = "==== hypervisor log (COM2) ====";

/// The first of the hypervisor's log lines (other than errors) in `com1`.
fn log_lines_on_console(com1: &str) -> Option<&str> {
    com1.lines().find(|l| {
        l.contains("] cpu")
            && [" INFO  ", " WARN  ", " DEBUG ", " TRACE "]
                .iter()
                .any(|k| l.contains(k))
    })
}

/// `host log` in the root shell shows the hypervisor's log (on COM1, where
/// nothing of it appeared before).
fn host_log_shows_the_hypervisor_log(log: &str) -> Result<(), String> {
    let com1 = console_part(log);
    let (_, shown) = com1
        .split_once(&format!("{ROOT_PROMPT}host log"))
        .ok_or("no host log command on the console")?;
    for line in ["cpu0 INFO  hypervisor ", "root VP 0 starting"] {
        if !shown.contains(line) {
            return Err(format!("host log did not show \"{line}\""));
        }
    }
    Ok(())
}

/// COM1 of a run's serial text: what the operator at the console saw.
/// What a failed case's verdict quotes from the root's console, so that a
/// log left on another machine is not needed to see why: the shell's
/// `vm wait` answers and the last lines that say something failed.
fn shell_context(com1: &str) -> String {
    let telling: Vec<&str> = com1
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("vm wait:")
                || GUEST_FAILURES.iter().any(|f| l.contains(f))
                || l.contains("Failed")
                || l.contains("error")
        })
        .collect();
    let last = &telling[telling.len().saturating_sub(4)..];
    if last.is_empty() {
        String::new()
    } else {
        format!(" (the console said: {})", last.join(" | "))
    }
}

pub fn console_part(serial: &str) -> &str {
    serial
        .split_once(HYPERVISOR_LOG_MARKER)
        .map_or(serial, |(com1, _)| com1)
}

fn case(machine: Machine, expect: Expect, suffix: &str) -> Case {
    let m = &machine;
    let name = format!(
        "{}-{}-{}-{}cpu-{}M{}",
        m.emulator,
        m.boot,
        model_tag(&m.cpu_model),
        m.cpus,
        m.memory_mib,
        suffix
    );
    let timeout_secs = match m.emulator {
        Emulator::Qemu if m.boot == Boot::Uefi => 120,
        Emulator::Qemu => 60,
        Emulator::Bochs => 240,
    };
    Case {
        name,
        machine,
        expect,
        timeout_secs,
        with_root: false,
        script: Vec::new(),
        startup: Vec::new(),
        with_guests: false,
        with_linux: false,
        host_disk: None,
    }
}

/// Marks a script line that goes into the root's `startup` module instead
/// of being typed.
const STARTUP_LINE: &str = "startup: ";

/// A case that boots the root partition and types `script` at its shell
/// (lines marked `STARTUP_LINE` run from its `startup` module instead).
fn root_case(machine: Machine, expect: Expect, suffix: &str, script: &[&str]) -> Case {
    let mut c = case(machine, expect, suffix);
    c.with_root = true;
    for line in script {
        match line.strip_prefix(STARTUP_LINE) {
            Some(l) => c.startup.push(l.to_string()),
            None => c.script.push(line.to_string()),
        }
    }
    c.timeout_secs += 120;
    c
}

fn model_tag(model: &str) -> String {
    model
        .split(',')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase()
}

/// A guest test: name suffix, processors, memory (MiB), the shell script,
/// what must and must not show, a further check of the log.
type GuestTest = (
    &'static str,
    u32,
    u64,
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
    Option<LogCheck>,
);

/// Two CPU hogs on one processor: weights 100 and 300, then a 20% limit,
/// then a 60% reserve against weight 10000. Each `vm list` after a 6 s
/// `vm wait` reports the share of those 6 s.
const SCHEDULER: &[&str] = &[
    "vm new a --memory 4M --image hog",
    "vm new b --memory 4M --image hog",
    "vm cpu b --weight 300",
    "vm start a",
    "vm start b",
    "vm wait a 2",
    "vm list",
    "vm wait a 6",
    "vm list",
    "vm cpu a --limit 20",
    "vm cpu b --weight 100",
    "vm wait a 2",
    "vm list",
    "vm wait a 6",
    "vm list",
    "vm cpu a --limit 100 --reserve 60",
    "vm cpu b --weight 10000",
    "vm wait a 2",
    "vm list",
    "vm wait a 6",
    "vm list",
    "vm stop a",
    "vm stop b",
    "shutdown",
];

/// The CPU% column of `name` in each `vm list`, in order.
pub fn cpu_shares(log: &str, name: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            // ID NAME STATE CPU% MEMORY UPTIME VCPUS EXITS, then the
            // heartbeat STATUS (words).
            if w.len() >= 8 && w[1] == name && w[0].parse::<u64>().is_ok() {
                w[3].strip_suffix('%')?.parse().ok()
            } else {
                None
            }
        })
        .collect()
}

/// Tolerances: the weighted shares within 25% of 1:3; the limit at most 3
/// points over; the reserve at most 5 points under.
pub fn scheduler_shares_hold(log: &str) -> Result<(), String> {
    let (a, b) = (cpu_shares(log, "a"), cpu_shares(log, "b"));
    if a.len() < 6 || b.len() < 6 {
        return Err(format!(
            "expected 6 vm list samples of a and b, got {} and {}",
            a.len(),
            b.len()
        ));
    }
    let ratio = b[1] / a[1].max(0.01);
    if !(2.25..=3.75).contains(&ratio) {
        return Err(format!(
            "weights 100:300 gave {:.2}% : {:.2}% (ratio {ratio:.2}, expected 3 ± 25%)",
            a[1], b[1]
        ));
    }
    if a[3] > 23.0 || b[3] < 50.0 {
        return Err(format!("limit 20%: a got {:.2}%, b {:.2}%", a[3], b[3]));
    }
    if a[5] < 55.0 {
        return Err(format!(
            "reserve 60%: a got only {:.2}% (b {:.2}%)",
            a[5], b[5]
        ));
    }
    Ok(())
}

/// Exit-heavy guests (`exit-loop`: CPUID, I/O, hypercalls) against a CPU hog
/// on one processor: the CPUID looper at equal weight, the I/O looper limited
/// to 5%, the hypercall looper at equal weight.
const EXIT_HEAVY: &[&str] = &[
    "vm new h --memory 4M --image hog",
    "vm new c --memory 4M --image exit-loop",
    "vm start h",
    "vm wait h 2",
    "vm list",
    "vm wait h 6",
    "vm list",
    "vm start c",
    "vm wait h 2",
    "vm list",
    "vm wait h 6",
    "vm list",
    "vm stop c",
    "vm new i --memory 6M --image exit-loop",
    "vm cpu i --limit 5",
    "vm start i",
    "vm wait h 2",
    "vm list",
    "vm wait h 6",
    "vm list",
    "vm stop i",
    "vm new y --memory 8M --image exit-loop",
    "vm start y",
    "vm wait h 2",
    "vm list",
    "vm wait h 6",
    "vm list",
    "vm stop y",
    "vm stop h",
    "shutdown",
];

/// The scheduler's tolerances for guests that mostly exit: equal weights
/// within 25% of 1:1; the 5% limit at most 3 points over, and the hog then
/// keeps what it had alone (the LP less the root's own work; the mean of its
/// two samples) but at most 10 points.
pub fn exit_heavy_shares_hold(log: &str) -> Result<(), String> {
    let h = cpu_shares(log, "h");
    let (c, i, y) = (
        cpu_shares(log, "c"),
        cpu_shares(log, "i"),
        cpu_shares(log, "y"),
    );
    if h.len() < 8 || c.len() < 4 || i.len() < 2 || y.len() < 2 {
        return Err(format!(
            "expected 8 vm list samples of h and 2 of c, i, y; got {}, {}, {}, {}",
            h.len(),
            c.len(),
            i.len(),
            y.len()
        ));
    }
    let equal = |what: &str, looper: f64, hog: f64| {
        let ratio = looper / hog.max(0.01);
        if (0.75..=1.0 / 0.75).contains(&ratio) {
            Ok(())
        } else {
            Err(format!(
                "{what} looper {looper:.2}% against the hog's {hog:.2}% (ratio {ratio:.2}, expected 1 ± 25%)"
            ))
        }
    };
    // Both samples of the hog alone (2 s and 6 s): one alone moves by several
    // points between runs (the root's own work, the host's load), and the
    // 10 points below are measured against it.
    let alone = (h[0] + h[1]) / 2.0;
    // c exists (Off) while h runs alone: its own samples are the 3rd and 4th.
    equal("CPUID", c[3], h[3])?;
    let (i_share, h_share) = (i[1], h[5]);
    if i_share > 8.0 || h_share < alone - 10.0 {
        return Err(format!(
            "I/O looper limited to 5%: it got {i_share:.2}%, the hog {h_share:.2}% (alone {alone:.2}%)"
        ));
    }
    equal("hypercall", y[1], h[7])
}

/// A guest asking for a bad interrupt over and over is reported once a run.
pub fn interrupt_failures_reported_once(log: &str) -> Result<(), String> {
    let n = log.matches("AssertVirtualInterrupt failed").count();
    if (1..=2).contains(&n) {
        Ok(())
    } else {
        Err(format!(
            "expected the failed interrupt requests of two runs reported once each, saw {n} reports"
        ))
    }
}

/// World switches per operation of one `vmbus-echo: bench` line.
pub fn echo_bench_switches(log: &str, what: &str) -> Option<f64> {
    let line = log
        .lines()
        .find_map(|l| l.split(&format!("vmbus-echo: bench {what}: ")).nth(1))?;
    let (_, tail) = line.split_once(" ticks and ")?;
    tail.strip_suffix(" world switches each")?
        .trim()
        .parse()
        .ok()
}

/// The echo guest's figures are there, and the ring's interrupt rules
/// work: a packet in a batch of 32 costs fewer world switches than one
/// sent alone and answered before the next.
pub fn vmbus_echo_figures(log: &str) -> Result<(), String> {
    let get = |what| {
        echo_bench_switches(log, what).ok_or(format!("no figures for \"{what}\" in the log"))
    };
    let alone = get("ping-pong round trip")?;
    let batch = get("batch of 32 packets each way")?;
    get("control message round trip")?;
    get("signalled event")?;
    if batch / 32.0 < alone {
        Ok(())
    } else {
        Err(format!(
            "a packet in a batch cost {:.2} world switches, one alone {alone:.2}: batching does not pay",
            batch / 32.0
        ))
    }
}

/// The vmbus-echo guest with the echo device, a RAM disk and a network
/// adapter, then the device removed and a shutdown it ignores.
const VMBUS_ECHO: &[&str] = &[
    "vm new e --memory 8M --image vmbus-echo",
    "vm device add e echo",
    "vm disk attach e ram:1M",
    "switch new lan",
    "vm nic add e --switch lan",
    "vm start e",
    "vm wait e --for text \"waiting for the device to be removed\" 600",
    "vm show e",
    "switch show lan",
    "vm device remove e echo",
    "vm wait e --for text \"ignoring the shutdown service\" 120",
    "vm show e",
    "vm stop e --timeout 3",
    "vm wait e 60",
    "vm console e --log",
    "shutdown",
];

const VMBUS_ECHO_SHOWS: &[&str] = &[
            "vm device: e's echo device offered from its next start",
            "vmbus-echo: CPUID offers synthetic timers and their direct mode: ok",
            "vmbus-echo: a one-shot direct-mode timer fires its vector, not before its time, then is off: ok",
            "vmbus-echo: a periodic timer posts TimerExpired messages to its SINT, a period apart: ok",
            "vmbus-echo: connected, version 5.3",
            "vmbus-echo: 6 offers, echo device among them",
            "vmbus-echo: a GPADL naming pages outside the guest is refused: ok",
            "vmbus-echo: echo channel open (relid 5)",
            "vmbus-echo: 200 packets of 8 to 1500 bytes echoed intact, in order: ok",
            "vmbus-echo: bench ping-pong round trip: 500 in",
            "vmbus-echo: bench batch of 32 packets each way: 32 in",
    "vmbus-echo: a stream of 256 batches of 32 echoed intact, in order, while polled: ok",
    "vmbus-echo: bench stream of batches of 32, polled: 256 in",
            "vmbus-echo: bench control message round trip: 100 in",
            "vmbus-echo: HvSignalEvent on the channel's connection: ok",
            "vmbus-echo: the SCSI controller initializes (protocol 6.2): ok",
            "vmbus-echo: a block written from one page reads back into another: ok",
            "vmbus-echo: requests naming pages outside the guest are refused, the disk untouched: ok",
            "vmbus-echo: a transfer longer than its pages, an unknown and a short request get error statuses: ok",
            "vmbus-echo: a read past the end gets CHECK CONDITION, LBA out of range: ok",
            "requests sent until the ring was full",
            "vmbus-echo: after all that the disk still reads: ok",
            // `vm show` at the end: the VP's hour-long timer armed (it
            // may still be printing the line the wait saw: no state asserted).
            "; STIMER2 config 0x1401 count ",
            "vmbus-echo: bench storage read of 64 KiB: 64 in",
            "vmbus-echo: bench storage write of 64 KiB: 64 in",
            "vmbus-echo: the SCSI controller's channel closes: ok",
            "vmbus-echo: NVSP: version 6.1 refused, version 2 taken: ok",
            "vmbus-echo: receive buffer (one section of sub-allocations) and send buffer taken: ok",
            "vmbus-echo: RNDIS initialized, the address queried, the packet filter set: ok",
            // 00:15:5d:4e:SS:00, SS the VM's slot.
    "vmbus-echo: the adapter's address is 00:15:5d:4e:0",
            "vmbus-echo: data in pages outside the guest, a length past its bytes, a section past the buffer, a runt frame, an unknown RNDIS message: failure statuses: ok",
            "frames sent until the ring was full",
            "vmbus-echo: after all that the adapter still answers (media connected): ok",
            "vmbus-echo: the network adapter's channel closes: ok",
            "network adapter nic 0 (relid 6): offered; the guest has not opened it; NVSP 2, NDIS 6.1; packet filter 0x9",
            // The five hostile messages and the completion naming nothing.
            "0 filtered; 6 refused",
            "wrong VLAN",
            "vmbus-echo: an 8 KiB packet is sent: ok",
            "closed: the guest broke its ring; ",
            "vm device: e's echo device removed (rescinded)",
            "vmbus-echo: the echo device was rescinded; closed, its ring torn down, released: ok",
            "vmbus-echo: unloaded: ok",
            "vmbus-echo: 5 offers, echo device absent",
            "vmbus-echo: connected again; the removed device is not offered: ok",
            "vm stop: asked e to shut down (turned off if it still runs in 3 s",
            "vm e: did not shut down within 3 s; turned off",
            "vm wait: e is Off (turned off: the guest did not shut down in time)",
        ];

/// The stream on two processors: the guest polls its ring, the root polls
/// its own while packets keep coming, so in 256 batches few signals are
/// needed either way: at most a quarter of the 256 the guest alone would
/// need without polling (Bochs: 0; without the root's polling 128).
pub fn vmbus_stream_polled(log: &str) -> Result<(), String> {
    vmbus_echo_figures(log)?;
    let line = log
        .lines()
        .find_map(|l| {
            l.split("vmbus-echo: stream: ")
                .nth(1)
                .filter(|t| t.contains(" signals to the root"))
        })
        .ok_or("no stream signal counts in the log")?;
    let number = |at: usize| -> Option<u64> { line.split(' ').nth(at)?.parse().ok() };
    let (Some(to_root), Some(from_root)) = (number(0), number(5)) else {
        return Err(format!("unreadable stream line: {line}"));
    };
    if to_root + from_root <= 256 / 4 {
        Ok(())
    } else {
        Err(format!(
            "the polled stream signalled {to_root} times to the root and {from_root} times from it in 256 batches: polling does not spare the signals"
        ))
    }
}

/// What no guest test may show: a guest's own verdict of failure, a root
/// that cannot answer.
const GUEST_FAILURES: &[&str] = &["FAILED", "WRONG", "ROOT PANIC", "ROOT EXCEPTION"];

const SIXTEEN_GUESTS: &[&str] = &[
    "vm new g1 --memory 4M --image hello",
    "vm new g2 --memory 4M --image hello",
    "vm new g3 --memory 4M --image hello",
    "vm new g4 --memory 4M --image hello",
    "vm new g5 --memory 4M --image hello",
    "vm new g6 --memory 4M --image hello",
    "vm new g7 --memory 4M --image hello",
    "vm new g8 --memory 4M --image hello",
    "vm new g9 --memory 4M --image hello",
    "vm new g10 --memory 4M --image hello",
    "vm new g11 --memory 4M --image hello",
    "vm new g12 --memory 4M --image hello",
    "vm new g13 --memory 4M --image hello",
    "vm new g14 --memory 4M --image hello",
    "vm new g15 --memory 4M --image hello",
    "vm new g16 --memory 4M --image hello",
    "vm start g1",
    "vm start g2",
    "vm start g3",
    "vm start g4",
    "vm start g5",
    "vm start g6",
    "vm start g7",
    "vm start g8",
    "vm start g9",
    "vm start g10",
    "vm start g11",
    "vm start g12",
    "vm start g13",
    "vm start g14",
    "vm start g15",
    "vm start g16",
    "vm wait g1",
    "vm wait g2",
    "vm wait g3",
    "vm wait g4",
    "vm wait g5",
    "vm wait g6",
    "vm wait g7",
    "vm wait g8",
    "vm wait g9",
    "vm wait g10",
    "vm wait g11",
    "vm wait g12",
    "vm wait g13",
    "vm wait g14",
    "vm wait g15",
    "vm wait g16",
    "vm list",
    "shutdown",
];

const SIXTEEN_DONE: &[&str] = &[
    "vm wait: g1 is Off (exit code 0)",
    "vm wait: g2 is Off (exit code 0)",
    "vm wait: g3 is Off (exit code 0)",
    "vm wait: g4 is Off (exit code 0)",
    "vm wait: g5 is Off (exit code 0)",
    "vm wait: g6 is Off (exit code 0)",
    "vm wait: g7 is Off (exit code 0)",
    "vm wait: g8 is Off (exit code 0)",
    "vm wait: g9 is Off (exit code 0)",
    "vm wait: g10 is Off (exit code 0)",
    "vm wait: g11 is Off (exit code 0)",
    "vm wait: g12 is Off (exit code 0)",
    "vm wait: g13 is Off (exit code 0)",
    "vm wait: g14 is Off (exit code 0)",
    "vm wait: g15 is Off (exit code 0)",
    "vm wait: g16 is Off (exit code 0)",
];

/// A case of the root shell running `test`'s script with the test guests
/// loaded, on `emulator` booted through `boot`.
fn guest_case(
    emulator: Emulator,
    boot: Boot,
    vendor: &'static str,
    slat: &'static str,
    (suffix, cpus, memory, script, must_show, must_not_show, check): GuestTest,
) -> Case {
    let mut c = root_case(
        Machine::new(emulator, boot, cpus, memory).cmdline(""),
        Expect::Guests {
            vendor,
            slat,
            must_show,
            must_not_show,
            check,
        },
        suffix,
        script,
    );
    c.with_guests = true;
    c
}

/// The command line of the Linux test guests (the kit's /init acts on
/// `linuxtest=`; docs/linux-guest.md).
macro_rules! linux_vm {
    ($name:literal, $vcpus:literal, $test:literal) => {
        concat!(
            "vm new ", $name, " --kernel linux --initrd linux-initrd --memory 256M --vcpus ", $vcpus,
            " --cmdline \"console=ttyS0 earlyprintk=serial,ttyS0,115200 nokaslr pci=off io_delay=none linuxtest=",
            $test, "\""
        )
    };
}

/// What the Linux kit's disk test writes into a file on the file system it
/// makes (`fs_check`): found in the raw disk.
pub const LINUX_DISK_NOTE: &str = "HVTEST-NOTE: written by the guest on its own file system";

/// How long the reboot case lets a guest reboot (QEMU; Bochs waits longer).
const REBOOT_WAIT: &str = "vm wait linux 60";

/// Linux guest cases: (suffix, processors, MiB, script, must show, must not
/// show, check), as `guest_tests`, and whether Bochs runs it too (a Linux
/// boot takes minutes there: Bochs runs the SMP case, which checks what the
/// one-processor boot does, the reboot and the panic cases).
fn linux_tests() -> Vec<(GuestTest, bool)> {
    let on_bochs = |name: &str| {
        matches!(
            name,
            "-linux-smp" | "-linux-reboot" | "-linux-panic" | "-linux-vmbus" | "-linux-switch"
        )
    };
    let cases: Vec<GuestTest> = vec![
        (
            "-linux-boot",
            2,
            1024,
            &[
                linux_vm!("linux", "1", "vmcall"),
                "vm start linux",
                // The host's clock read when the guest has just read its own.
                "vm wait linux --for text \"LINUX-INIT: date\" 1200",
                "host info",
                "vm wait linux 1200",
                "vm console linux --log",
                "vm show linux",
                "shutdown",
            ],
            &[
                "Hypervisor detected: Microsoft Hyper-V",
                // COM1's interrupt comes through the worker's I/O APIC.
                "IOAPIC[0]: apic_id 0, version 17, address 0xfec00000, GSI 0-23",
                "LINUX-INIT: console on interrupts",
                // The EOI MSR and the VP assist page's EOI assist.
                "Hyper-V: Using enlightened APIC (x2apic mode)",
                "clocksource: Switched to clocksource hyperv_clocksource_tsc_page",
                "LINUX-INIT: reached init",
                "LINUX-INIT: cpus 1",
                "LINUX-INIT: clocksource hyperv_clocksource_tsc_page",
                // Synthetic timer 0 in direct mode.
                "LINUX-INIT: clockevent Hyper-V clockevent",
                // User code cannot reach hypercalls: SIGILL (128 + 4).
                "LINUX-INIT: vmcall status 132",
                "LINUX-INIT: vmmcall status 132",
                "LINUX-INIT: done",
                "vm wait: linux is Off (powered off by the guest)",
            ],
            LINUX_FAILURES,
            Some(linux_date_matches_the_host_clock),
        ),
        (
            "-linux-reboot",
            2,
            1024,
            &[
                linux_vm!("linux", "1", "reboot"),
                "vm start linux",
                REBOOT_WAIT,
                "vm show linux",
                "host stats",
                "vm stop linux --turn-off",
                "vm console linux --log",
                "shutdown",
            ],
            &[
                "LINUX-INIT: rebooting",
                "vm linux: reset by the guest; starting it again",
            ],
            LINUX_FAILURES,
            Some(linux_booted_twice),
        ),
        (
            "-linux-vmbus",
            2,
            1024,
            &[
                linux_vm!("linux", "2", "vmbus"),
                "vm disk attach linux ram:8M",
                "vm start linux",
                "vm wait linux --for heartbeat 1200",
                "vm wait linux --for services 600",
                "vm wait linux --for text \"vmbus ready\" 600",
                "vm list",
                "vm show linux",
                "vm stop linux",
                "vm wait linux 300",
                "vm console linux --log",
                "shutdown",
            ],
            &[
                "LINUX-INIT: Vmbus version:5.3",
                "LINUX-INIT: hv_utils: Heartbeat IC version 3.0",
                "LINUX-INIT: hv_utils: Shutdown IC version 3.0",
                "LINUX-INIT: hv_utils: TimeSync IC version 4.0",
                "LINUX-INIT: vmbus ready",
                "vm wait: linux's heartbeat answers (Operating normally)",
                "vm wait: linux's integration services are all in use",
                "Operating normally",
                "VMBus:          version 5.3",
                "Heartbeat              OK (version 3.0)",
                "Shutdown               OK (version 3.0)",
                "Time Synchronization   OK (version 4.0)",
                "LINUX-INIT: disk sda, 16384 sectors",
                "LINUX-INIT: disk wrote 4 MiB and read them back: same checksum",
                "SCSI controller (relid 4): open; protocol 6.2 (Windows 10);",
                "vm stop: asked linux to shut down",
                "LINUX-INIT: the host asked for a shutdown; powering off",
                "vm wait: linux is Off (shut down by the guest)",
            ],
            LINUX_FAILURES,
            None,
        ),
        (
            "-linux-disk",
            2,
            1024,
            &[
                linux_vm!("linux", "1", "disk"),
                "vm disk attach linux ram:16M",
                "vm start linux",
                "vm wait linux 1200",
                "vm show linux",
                "vm console linux --log",
                "vm start linux",
                "vm wait linux 1200",
                "vm disk list linux",
                "vm console linux --log",
                "shutdown",
            ],
            &[
                "vm disk: a 16 MiB RAM disk attached to linux's SCSI controller (LUN 0, read-write)",
                "LINUX-INIT: disk sda, 32768 sectors",
                "LINUX-INIT: disk formatted (ext2), a 2 MiB file written",
                "LINUX-INIT: disk's file system kept its file from the last boot: same checksum",
                "vm disk: linux: SCSI 0:0:0 ram:16M (read-write)",
            ],
            LINUX_FAILURES,
            None,
        ),
        (
            "-linux-vhd",
            2,
            1024,
            &[
                "host disk",
                "vhd new web.vhd --size 64M",
                "vhd new web.vhd --size 64M",
                "vhd show web.vhd",
                "vhd new web.vhdx --size 64M",
                "vhd show web.vhdx",
                linux_vm!("linux", "1", "disk"),
                "vm disk attach linux web.vhd",
                "vm start linux",
                "vm wait linux 1200",
                "vm console linux --log",
                "vm start linux",
                "vm wait linux 1200",
                "vm console linux --log",
                "vm new other --memory 4M --image hello",
                "vm disk attach other web.vhd",
                "vm disk detach linux web.vhd",
                "vm disk attach linux qemu.vhd",
                "vm disk list linux",
                "vm start linux",
                "vm wait linux 1200",
                "vm console linux --log",
                "vm disk detach linux",
                "vm disk attach linux web.vhdx",
                "vm start linux",
                "vm wait linux 1200",
                "vm console linux --log",
                "vm disk detach linux",
                "vm disk attach linux qemu.vhdx",
                "vm start linux",
                "vm wait linux 1200",
                "vm console linux --log",
                "vhd show web.vhd",
                "vhd show qemu.vhdx",
                "host disk",
                "shutdown",
            ],
            &[
                "host disk: virtio-blk at PCI 00:",
                "FAT32 \"HVTEST\"",
                "qemu.vhd",
                "vhd new: web.vhd: dynamic VHD of 63 MiB",
                "vhd new: web.vhd: the file exists already",
                "  format:        VHD dynamic, 2 MiB blocks",
                "vhd new: web.vhdx: dynamic VHDX of 64 MiB",
                "  format:        VHDX dynamic, 2 MiB blocks",
                "vm disk: web.vhd (VHD dynamic, 63 MiB, read-write) attached to linux's SCSI controller (LUN 0)",
                "LINUX-INIT: disk formatted (ext2), a 2 MiB file written",
                "LINUX-INIT: disk's file system kept its file from the last boot: same checksum",
                "vm disk attach: web.vhd: web.vhd is attached to linux (read-write); a file is attached read-write to one VM at a time",
                "vm disk: linux's web.vhd detached",
                "vm disk: linux: SCSI 0:0:0 qemu.vhd (VHD dynamic, 32 MiB, read-write)",
                "vm disk: web.vhdx (VHDX dynamic, 64 MiB, read-write) attached",
                "vm disk: qemu.vhdx (VHDX dynamic, 32 MiB, read-write) attached",
                "  attached to:   linux (read-write)",
                "  created by:    QEMU v",
            ],
            LINUX_FAILURES,
            Some(vhd_kept_across_host_reboots),
        ),
        (
            // Bochs (Intel) only; QEMU runs the same and more in -linux-net.
            "-linux-switch",
            2,
            1024,
            &[
                "switch new lan",
                linux_vm!("a", "1", "net netip=10.0.0.1/24 netpeer=10.0.0.2"),
                "vm nic add a --switch lan",
                linux_vm!("b", "1", "net netip=10.0.0.2/24 netpeer=10.0.0.1"),
                "vm nic add b --switch lan",
                "vm start a",
                "vm start b",
                "vm wait a --for text \"ping 10.0.0.2: answers (1)\" 1500",
                "vm wait b --for text \"ping 10.0.0.1: answers (1)\" 600",
                "switch show lan",
                "vm show a",
                "vm stop a --turn-off",
                "vm stop b --turn-off",
                "shutdown",
            ],
            &[
                "host nic: none (no virtio-net device on PCI bus 0); switches are internal",
                "vm wait: a's console shows \"ping 10.0.0.2: answers (1)\"",
                "vm wait: b's console shows \"ping 10.0.0.1: answers (1)\"",
                "learnt 00:15:5d:4e:00:00 (VLAN 0)",
                "learnt 00:15:5d:4e:01:00 (VLAN 0)",
                "network adapter nic 0 (relid 4): open; NVSP 2, NDIS 6.1; packet filter 0xd",
            ],
            LINUX_FAILURES,
            None,
        ),
        (
            "-linux-net",
            2,
            1536,
            &[
                "switch new lan",
                "switch new wan --external",
                "switch list",
                linux_vm!("a", "1", "net netip=10.0.0.1/24 netpeer=10.0.0.2"),
                "vm nic add a --switch lan",
                linux_vm!("b", "1", "net netip=10.0.0.2/24 netpeer=10.0.0.1"),
                "vm nic add b --switch lan --mac 00:15:5d:aa:bb:02",
                linux_vm!("c", "1", "net netip=dhcp netpeer=10.0.2.2"),
                "vm nic add c --switch wan",
                "vm start a",
                "vm start b",
                "vm start c",
                "vm wait a --for text \"ping 10.0.0.2: answers (1)\" 1200",
                "vm wait b --for text \"ping 10.0.0.1: answers (1)\" 600",
                "vm wait c --for text \"ping 10.0.2.2: answers (1)\" 600",
                // A hostile guest on the same switch (vmbus-echo's network
                // part: bad messages and a flood of broadcast frames): a
                // and b go on answering each other (a "no answer" now
                // would shift the numbers below).
                "vm new e --memory 8M --image vmbus-echo",
                "vm nic add e --switch lan",
                "vm start e",
                "vm wait e --for text \"done without an echo device\" 300",
                "vm show e",
                "vm console e --log",
                "switch show lan",
                // e's adapter (closed by its guest) leaves the switch, so
                // that a's frames find no port of their VLAN below.
                "vm nic remove e 0",
                "vm nic set b 0 --vlan 20",
                "vm wait a --for text \"ping 10.0.0.2: no answer (2)\" 300",
                "switch show lan",
                "vm nic set a 0 --vlan 20",
                "vm wait a --for text \"ping 10.0.0.2: answers (3)\" 300",
                "vm nic list a",
                "vm nic remove b 0",
                "vm wait b --for text \"eth0 went away\" 300",
                "switch show wan",
                "vm show c",
                "vm console a --log",
                "vm console b --log",
                "vm console c --log",
                "vm stop a --turn-off",
                "vm stop b --turn-off",
                "vm stop c --turn-off",
                "vm stop e --turn-off",
                "shutdown",
            ],
            &[
                "host nic: virtio-net at PCI 00:",
                "vmbus-echo: data in pages outside the guest, a length past its bytes, a section past the buffer, a runt frame, an unknown RNDIS message: failure statuses: ok",
                "vmbus-echo: after all that the adapter still answers (media connected): ok",
                // (a frame from a or b may be flooded to it: filtered)
                "; 6 refused",
                "switch new: lan, internal",
                "switch new: wan, external (bound to the host's NIC)",
                "vm nic: a nic 0 added: nic 0: switch lan, untagged, MAC 00:15:5d:4e:00:00",
                "LINUX-INIT: eth0 00:15:5d:aa:bb:02, mtu 1500",
                "vm wait: a's console shows \"ping 10.0.0.2: answers (1)\"",
                "vm wait: b's console shows \"ping 10.0.0.1: answers (1)\"",
                "LINUX-INIT: dhcp lease 10.0.2.15 from 10.0.2.2",
                "vm wait: c's console shows \"ping 10.0.2.2: answers (1)\"",
                "vm nic: b: nic 0: switch lan, VLAN 20",
                "vm wait: a's console shows \"ping 10.0.0.2: no answer (2)\"",
                "vm wait: a's console shows \"ping 10.0.0.2: answers (3)\"",
                "vm nic: b nic 0 removed: unplugged now; rescinded once the guest has finished with it",
                "vm wait: b's console shows \"eth0 went away\"",
                "port 1: external (NIC), trunk, link up",
            ],
            LINUX_FAILURES,
            Some(vlan_drops_counted),
        ),
        (
            "-linux-panic",
            2,
            1024,
            &[
                linux_vm!("linux", "1", "panic"),
                "vm start linux",
                "vm wait linux 1200",
                "vm show linux",
                "shutdown",
            ],
            &[
                "vm wait: linux is Failed (the guest crashed: Kernel panic - not syncing: sysrq triggered crash)",
            ],
            &["ROOT PANIC", "ROOT EXCEPTION"],
            None,
        ),
        (
            "-linux-two-and-a-test-kernel",
            2,
            1024,
            &[
                linux_vm!("one", "1", "poweroff"),
                linux_vm!("two", "1", "poweroff"),
                "vm new hello --memory 4M --image hello",
                "vm start one",
                "vm start two",
                "vm start hello",
                "vm list",
                "host info",
                "vm wait hello",
                "vm list",
                "vm wait one 1200",
                "vm wait two 1200",
                "vm console two --log",
                "shutdown",
            ],
            &[
                "vm wait: hello is Off (exit code 0)",
                "vm wait: one is Off (powered off by the guest)",
                "vm wait: two is Off (powered off by the guest)",
                "LINUX-INIT: done",
            ],
            LINUX_FAILURES,
            None,
        ),
        (
            "-linux-console",
            2,
            1024,
            &[
                linux_vm!("linux", "1", "shell"),
                "vm start linux",
                "vm wait linux 30",
                "vm console linux",
                "echo console-$((6*7))",
                "\u{1d}",
                "vm console linux --log",
                "vm stop linux --turn-off",
                "shutdown",
            ],
            &[
                "LINUX-INIT: shell",
                "-- attached to linux's COM1; Ctrl-] detaches",
                "console-42",
                "-- detached from linux",
            ],
            LINUX_FAILURES,
            None,
        ),
        (
            "-linux-smp",
            2,
            1024,
            &[
                linux_vm!("linux", "2", "vmcall"),
                "vm start linux",
                // The host's clock read when the guest has just read its own.
                "vm wait linux --for text \"LINUX-INIT: date\" 1200",
                "host info",
                "vm wait linux 1200",
                "vm console linux --log",
                "vm show linux",
                "shutdown",
            ],
            &[
                "Hypervisor detected: Microsoft Hyper-V",
                "smpboot: Total of 2 processors activated",
                // COM1's interrupt comes through the worker's I/O APIC.
                "IOAPIC[0]: apic_id 0, version 17, address 0xfec00000, GSI 0-23",
                "LINUX-INIT: console on interrupts",
                "clocksource: Switched to clocksource hyperv_clocksource_tsc_page",
                "LINUX-INIT: cpus 2",
                "LINUX-INIT: clocksource hyperv_clocksource_tsc_page",
                "LINUX-INIT: clockevent Hyper-V clockevent",
                "LINUX-INIT: vmcall status 132",
                "LINUX-INIT: vmmcall status 132",
                "LINUX-INIT: done",
                "vm wait: linux is Off (powered off by the guest)",
            ],
            LINUX_FAILURES,
            Some(linux_date_matches_the_host_clock),
        ),
        (
            // The APIC in xAPIC mode: Linux leaves the x2APIC mode it was
            // given through the disabled state, then reaches its APIC (and
            // the other VP's, by flat logical IPIs) through the register
            // page, which the hypervisor decodes and emulates.
            "-linux-xapic",
            2,
            1024,
            &[
                "vm new linux --kernel linux --initrd linux-initrd --memory 256M --vcpus 2 --cmdline \"console=ttyS0 nokaslr pci=off io_delay=none nox2apic linuxtest=poweroff\"",
                "vm start linux",
                "vm wait linux 1200",
                "vm console linux --log",
                "vm show linux",
                "shutdown",
            ],
            &[
                "x2apic disabled",
                // The Hyper-V APIC MSRs (EOI, ICR, TPR) in xAPIC mode.
                "Hyper-V: Using enlightened APIC (xapic mode)",
                "smpboot: Total of 2 processors activated",
                "LINUX-INIT: cpus 2",
                "LINUX-INIT: clockevent Hyper-V clockevent",
                "LINUX-INIT: done",
                "vm wait: linux is Off (powered off by the guest)",
            ],
            LINUX_FAILURES,
            None,
        ),
    ];
    cases
        .into_iter()
        .map(|c| {
            let bochs = on_bochs(c.0);
            (c, bochs)
        })
        .collect()
}

/// A Linux guest's console must not show these (a kernel that hit a bug or
/// oops, or lost a CPU), nor what `GUEST_FAILURES` lists.
const LINUX_FAILURES: &[&str] = &[
    "FAILED",
    "WRONG",
    "ROOT PANIC",
    "ROOT EXCEPTION",
    "Kernel panic",
    "BUG:",
    "Oops",
    "failed to boot",
    // A WARN_ON's report (not the vulnerability notices, "X: WARNING: ...").
    "WARNING: CPU:",
    // The console's UART must run on its interrupt (an idle guest sleeps).
    "LINUX-INIT: console polled",
    "I/O APIC pin 4) not delivered",
    "AssertVirtualInterrupt failed",
];

/// The number after `key` in `line` (`key` then digits).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// What follows the first `marker` in `text`; `missing` if it is not there.
fn after<'a>(text: &'a str, marker: &str, missing: &str) -> Result<&'a str, String> {
    text.split_once(marker)
        .map(|(_, rest)| rest)
        .ok_or_else(|| missing.to_string())
}

/// The switch's counters say why the guests stopped answering: after b
/// moved to VLAN 20, a's port counts frames that no port of its VLAN could
/// take; and frames went both ways through the NIC of the external switch.
fn vlan_drops_counted(log: &str) -> Result<(), String> {
    let moved = after(
        log,
        "vm nic: b: nic 0: switch lan, VLAN 20",
        "b was not moved to VLAN 20",
    )?;
    let show = after(
        moved,
        "switch lan: internal",
        "no switch show after the move",
    )?;
    let port_a = after(
        show,
        ": a nic 0, untagged",
        "switch show does not list a's port",
    )?;
    let drops = port_a
        .lines()
        .find(|l| l.contains("drops "))
        .ok_or("no drop counters for a's port")?;
    match number_after(drops, "wrong VLAN ") {
        Some(n) if n > 0 => {}
        _ => return Err(format!("a's port counts no VLAN drops: {drops}")),
    }
    let wan = after(log, "switch wan: external", "no switch show wan")?;
    let nic = after(
        wan,
        "external (NIC), trunk, link up",
        "the external port is not up",
    )?;
    let counters = nic
        .lines()
        .find(|l| l.contains("in ") && l.contains("; out "))
        .ok_or("no counters for the external port")?;
    let (inn, out) = (
        number_after(counters, "in ").unwrap_or(0),
        number_after(counters, "; out ").unwrap_or(0),
    );
    if inn == 0 || out == 0 {
        return Err(format!("no frames both ways through the NIC: {counters}"));
    }
    Ok(())
}

/// The second boot of the host, on the same disk, finds the guest's files
/// on the VHD it made in the first.
fn vhd_kept_across_host_reboots(log: &str) -> Result<(), String> {
    let (first, second) = log
        .split_once(&next_boot_marker(2))
        .ok_or("the host did not boot a second time")?;
    // The VM's own restart, in the first boot; and a file system made on
    // each of the four images (the console is cleared at every start).
    if !first.contains("LINUX-INIT: disk's file system kept its file from the last boot") {
        return Err("the VM's restart did not find its file on the VHD".into());
    }
    let made = count_lines(
        first,
        "LINUX-INIT: disk formatted (ext2), a 2 MiB file written",
    );
    if made != 4 {
        return Err(format!(
            "{made} file systems made in the first boot, not 4 (web.vhd, qemu.vhd, web.vhdx, qemu.vhdx)"
        ));
    }
    // Both files on one VM (LUNs 0 and 1, Linux's sda and sdb), and the
    // guest's files found on both.
    for want in [
        "vm disk: web.vhd (VHD dynamic, 63 MiB, read-write) attached to linux's SCSI controller (LUN 0)",
        "vm disk: web.vhdx (VHDX dynamic, 64 MiB, read-write) attached to linux's SCSI controller (LUN 1)",
        "vm disk: linux: SCSI 0:0:1 web.vhdx",
        "LINUX-INIT: disk's file system kept its file from the last boot: same checksum (sda)",
        "LINUX-INIT: disk's file system kept its file from the last boot: same checksum (sdb)",
        "vm disk detach: linux has 2 disks; name one",
        "vm disk: linux's web.vhd detached",
        "vm disk: linux: SCSI 0:0:0 web.vhdx",
    ] {
        if !second.contains(want) {
            return Err(format!("the second host boot did not show \"{want}\""));
        }
    }
    Ok(())
}

/// A guest that reboots itself boots again: the kept console (which a
/// guest's reset keeps) shows a second kernel started after /init asked for
/// the reboot.
fn linux_booted_twice(log: &str) -> Result<(), String> {
    let after = log
        .split("LINUX-INIT: rebooting")
        .nth(1)
        .ok_or("the guest never asked for a reboot")?;
    if !after.contains("Linux version") {
        return Err("no second kernel after the guest's reboot".to_string());
    }
    // Both boots on the synthetic timer (the second inherits nothing of
    // the first's APIC or timers).
    if !after.contains("LINUX-INIT: clockevent Hyper-V clockevent") {
        return Err("the second boot did not reach init on the Hyper-V clockevent".to_string());
    }
    Ok(())
}

/// The guest's `date` (the kit prints `LINUX-INIT: date <seconds>`) is
/// within 10 s of the clock the root gave it (`host info`, run as soon as
/// the guest printed it), once the time its kernel says it lost is added.
///
/// Until its clocksource switch (an fs initcall) the kernel keeps time with
/// jiffies, and every tick an emulated processor takes late is time lost
/// for good (3-9 s on QEMU, 9-13 s on Bochs); it says how much when it marks
/// sched_clock stable: the last number of "sched_clock: Marking stable
/// (...)->(..., OFFSET)" is its ktime less its TSC-page clock, in ns.
fn linux_date_matches_the_host_clock(log: &str) -> Result<(), String> {
    let number_after = |marker: &str| {
        log.lines().find_map(|l| {
            let rest = &l[l.find(marker)? + marker.len()..];
            let digits: String = rest
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse::<i64>().ok()
        })
    };
    let guest = number_after("LINUX-INIT: date").ok_or("no LINUX-INIT: date line")?;
    let host = log
        .lines()
        .find(|l| l.starts_with("host clock: "))
        .and_then(|l| {
            let inner = &l[l.find('(')? + 1..];
            inner.split_whitespace().next()?.parse::<i64>().ok()
        })
        .ok_or("no host clock line from host info")?;
    let lost_ns = log
        .lines()
        .find_map(|l| {
            let rest = &l[l.find("sched_clock: Marking stable")?..];
            let offset = rest.rsplit(", ").next()?.trim_end_matches(')');
            offset.parse::<i64>().ok()
        })
        .unwrap_or(0)
        .min(0);
    let lost = (-lost_ns + 500_000_000) / 1_000_000_000;
    if (host - guest - lost).abs() > 10 {
        return Err(format!(
            "the guest's date {guest} is {} s from the host clock {host} ({lost} s of them lost by its kernel's ticks)",
            host - guest
        ));
    }
    Ok(())
}

fn guest_tests() -> Vec<GuestTest> {
    vec![
        (
            "-guest-hello",
            2,
            256,
            &[
                "vm new hello --memory 4M --vcpus 1 --image hello",
                "vm start hello",
                "vm wait hello",
                "vm console hello --log",
                "vm list",
                "vm show hello",
                "vm delete hello",
                "vm list",
                "host log",
                "shutdown",
            ],
            &[
                "vm new: hello created",
                "hello from a guest partition: VP 0 of 1, 4 MiB",
                "vm wait: hello is Off (exit code 0)",
                "ID  NAME",
                "vm delete: hello deleted; 4 MiB returned to the root",
            ],
            GUEST_FAILURES,
            Some(host_log_shows_the_hypervisor_log),
        ),
        (
            "-guest-entry-failure",
            1,
            256,
            &[
                "vm new ef --memory 4M --image hello",
                "debug bad-start ef",
                "vm wait ef",
                "vm start ef",
                "vm wait ef",
                "vm console ef --log",
                "shutdown",
            ],
            &[
                "debug bad-start: CompleteIntercept of VP 0, which no intercept holds: invalid VP state",
                "vm wait: ef is Failed (VP 0: the processor refused its state",
                "hello from a guest partition: VP 0 of 1, 4 MiB",
                "vm wait: ef is Off (exit code 0)",
            ],
            GUEST_FAILURES,
            None,
        ),
        (
            "-guest-crash",
            1,
            256,
            // Run from the startup module: its `vm wait` needs the root's
            // interrupts on before the first prompt.
            &[
                "startup: vm new cr --memory 4M --image crash",
                "startup: vm start cr",
                "startup: vm wait cr 30",
                "vm console cr --log",
                "shutdown",
            ],
            &[
                "crash: reporting a crash",
                "vm wait: cr is Failed (the guest crashed: Kernel panic - not syncing: crash test guest)",
            ],
            &["crash: FAILED", "ROOT PANIC", "ROOT EXCEPTION"],
            None,
        ),
        (
            "-guest-msrs",
            1,
            256,
            &[
                "vm new ms --memory 4M --image msrs",
                "vm start ms",
                "vm wait ms",
                "vm console ms --log",
                "shutdown",
            ],
            &[
                "msrs: the architectural MSRs work",
                "vm wait: ms is Off (exit code 0)",
            ],
            GUEST_FAILURES,
            None,
        ),
        (
            "-guest-redeliver",
            1,
            256,
            &[
                "vm new rd --memory 4M --image redeliver",
                "vm start rd",
                "vm wait rd",
                "vm console rd --log",
                "shutdown",
            ],
            &[
                "redeliver: events interrupted mid-delivery arrive once",
                "vm wait: rd is Off (exit code 0)",
            ],
            GUEST_FAILURES,
            None,
        ),
        (
            "-guest-smp",
            2,
            256,
            &[
                "vm new smp --memory 4M --vcpus 4 --image smp",
                "vm start smp",
                "vm wait smp",
                "vm console smp --log",
                "shutdown",
            ],
            &[
                "smp: all 4 VPs ran",
                "smp: the IPI woke all 3 other VPs",
                "smp: the NMI woke all 3 other VPs",
                "smp: NMIs are held until IRET and latched once",
                "vm wait: smp is Off (exit code 0)",
            ],
            GUEST_FAILURES,
            None,
        ),
        (
            "-guest-isolation",
            2,
            256,
            &[
                "vm new victim --memory 8M --image victim",
                "vm new bad --memory 4M --image isolation",
                "vm start victim",
                "vm start bad",
                "vm wait bad",
                "vm wait victim 3",
                "vm list",
                "vm console victim --log",
                "vm stop victim",
                "vm console victim --log",
                "shutdown",
            ],
            &[
                "vm bad: VP 0 wrote absent MMIO at GPA 0x401000",
                "vm bad: VP 0 wrote absent MMIO at GPA 0x3ffff000",
                "vm wait: bad is Off (exit code 0)",
                "victim: pattern intact, round",
                "vm stop: victim has no VMBus connection to ask it to shut down: turned off",
            ],
            &[
                "FAILED",
                "WRONG",
                "memory changed",
                "ROOT PANIC",
                "ROOT EXCEPTION",
            ],
            None,
        ),
        (
            "-guest-triple-fault",
            1,
            256,
            &[
                "vm new tf --memory 4M --image triple-fault",
                "vm start tf",
                "vm wait tf",
                "vm new tfx --memory 4M --image triple-fault --trap-exceptions",
                "vm start tfx",
                "vm wait tfx",
                "vm new after --memory 4M --image hello",
                "vm start after",
                "vm wait after",
                "shutdown",
            ],
            &[
                "vm wait: tf is Failed (VP 0: triple fault at RIP",
                // Bochs reports the INT3 (#BP); QEMU's SVM applies no #BP
                // intercept to INT3 and reports the #GP that follows.
                "vm wait: tfx is Failed (VP 0: exception #",
                "vm wait: after is Off (exit code 0)",
            ],
            GUEST_FAILURES,
            None,
        ),
        (
            "-guest-hypercalls",
            1,
            256,
            &[
                "vm new hc --memory 4M --image hypercalls",
                "vm start hc",
                "vm wait hc",
                "vm console hc --log",
                "shutdown",
            ],
            &[
                "hypercalls: all statuses as expected",
                "vm wait: hc is Off (exit code 0)",
            ],
            GUEST_FAILURES,
            None,
        ),
        (
            "-guest-sixteen",
            2,
            256,
            SIXTEEN_GUESTS,
            SIXTEEN_DONE,
            GUEST_FAILURES,
            None,
        ),
        (
            "-guest-entry-modes",
            2,
            256,
            &[
                "vm new mb --memory 4M --image multiboot32",
                "vm new rm --memory 4M --image realmode",
                "vm start mb",
                "vm start rm",
                "vm wait mb",
                "vm wait rm",
                "vm console mb --log",
                "vm console rm --log",
                // Linked below 1 MiB, over the usual boot area.
                "vm new low --memory 4M --vcpus 2 --image multiboot32low",
                "vm start low",
                "vm wait low",
                // A run that ends with every VP halted, then the VM started
                // again: its VPs must be ready for StartVirtualProcessor.
                "vm new h --memory 2M --image halt",
                "vm start h",
                "vm wait h",
                "vm start h",
                "vm wait h",
                "vm show h",
                "shutdown",
            ],
            &[
                "vm start: mb running (1 VCPUs, 32-bit protected mode (Multiboot) entry at 0x100070)",
                "vm start: low running (2 VCPUs, 32-bit protected mode (Multiboot) entry at 0x8070)",
                "vm wait: low is Off (exit code 0)",
                "vm start: rm running (1 VCPUs, real mode entry at 0x7c00)",
                "hello from a 32-bit Multiboot guest",
                "hello from a real-mode guest",
                "vm wait: mb is Off (exit code 0)",
                "vm wait: rm is Off (exit code 0)",
                "vm wait: h is Off (all VPs halted with interrupts off)",
                "state:          Off, all VPs halted with interrupts off",
            ],
            &[
                "FAILED",
                "WRONG",
                "ROOT PANIC",
                "ROOT EXCEPTION",
                "StartVirtualProcessor failed",
                "vm h: failed",
            ],
            None,
        ),
        (
            "-guest-interrupts",
            1,
            256,
            &[
                "vm new irq --memory 4M --image interrupts",
                "vm start irq",
                "vm wait irq",
                "vm console irq --log",
                // Where its VP is, should it still run (a hang's diagnosis).
                "vm show irq",
                "vm new rst --memory 4M --image reset",
                "vm start rst",
                "vm wait rst 60",
                "vm console rst --log",
                "shutdown",
            ],
            &[
                "interrupts: vector 0x30 arrived and ended the halt",
                "interrupts: the second waited for STI, then arrived",
                "interrupts: the x2APIC timer ticked 5 times while the VP halted",
                "interrupts: a single-step #DB reached the guest's handler once",
                "interrupts: LSTAR is the guest's own across exits",
                "vm wait: irq is Off (exit code 0)",
                "reset: first boot: a self IPI pending, the APIC timer armed; resetting",
                "vm rst: reset by the guest; starting it again",
                "reset: second boot",
                "reset: the APIC is as after reset, and no interrupt of the first boot arrives: ok",
                "vm wait: rst is Off (exit code 0)",
            ],
            GUEST_FAILURES,
            None,
        ),
        (
            // Issue 11: the APIC in xAPIC mode, by MMIO on its page.
            "-guest-xapic",
            2,
            256,
            &[
                "vm new x --memory 4M --image xapic --vcpus 2",
                "vm start x",
                "vm wait x 60",
                "vm console x --log",
                "vm show x",
                "shutdown",
            ],
            &[
                "xapic: IA32_APIC_BASE 0xfee00d00 -> 0xfee00900; ID 0x0, version 0x50014",
                "xapic: the timer ticked 5 times, each EOI written on the page",
                "xapic: VP 1 (ID 1 on its page) took the IPI sent to logical destination 2",
                "xapic: both VPs back in x2APIC mode: ok",
                "vm wait: x is Off (exit code 0)",
            ],
            GUEST_FAILURES,
            None,
        ),
        (
            "-guest-fpu",
            1,
            256,
            &[
                "vm new f1 --memory 4M --image fpu",
                "vm new f2 --memory 6M --image fpu",
                "vm new h --memory 4M --image hog",
                "vm start h",
                "vm start f1",
                "vm start f2",
                "vm wait f1",
                "vm wait f2",
                "vm stop h",
                "vm console f1 --log",
                "vm console f2 --log",
                "debug fpu",
                "shutdown",
            ],
            &[
                "fpu: XMM0-15 kept across 2000 exits (4 MiB VM)",
                "fpu: XMM0-15 kept across 2000 exits (6 MiB VM)",
                "vm wait: f1 is Off (exit code 0)",
                "vm wait: f2 is Off (exit code 0)",
                "fpu: ok",
            ],
            GUEST_FAILURES,
            None,
        ),
        (
            "-guest-hostile",
            1,
            256,
            &[
                "vm new h1 --memory 4M --image hostile",
                "vm start h1",
                "vm wait h1",
                "vm console h1 --log",
                "vm show h1",
                "vm new h2 --memory 4M --image hostile",
                "vm start h2",
                "vm wait h2",
                "vm console h2 --log",
                "debug timer",
                "host info",
                "shutdown",
            ],
            &[
                "hostile: debug registers clean at start (DR0-3 0x0 0x0 0x0 0x0",
                "hostile: a hypercall from user mode (CPL 3) is #UD at the hypercall page: ok",
                "hostile: an interrupt below CR8 waits, then arrives when CR8 drops: ok",
                "hostile: CR4.PKE refused with #GP: ok",
                "hostile: DR7 kept across an exit: ok",
                "hostile: a breakpoint enabled first watches this VP's DR0, not the last VM's: ok",
                "hostile: escape \\x1b[2J end",
                "failed interrupt requests: 300",
                "hostile: HvPostMessage on an unknown connection: INVALID_CONNECTION_ID: ok",
                "hostile: HvPostMessage with 241 payload bytes: INVALID_PARAMETER: ok",
                "hostile: HvSignalEvent of a flag beyond its port: INVALID_PARAMETER: ok",
                "hostile: a flood of junk VMBus messages is taken or refused with INSUFFICIENT_BUFFERS: ok",
                "hostile: 2000 HvSignalEvents on a channel connection succeed: ok",
                "VMBus messages refused:",
                "hostile: all probes held",
                "vm wait: h1 is Off (exit code 0)",
                "vm wait: h2 is Off (exit code 0)",
                "timer: ok",
            ],
            GUEST_FAILURES,
            Some(interrupt_failures_reported_once),
        ),
        (
            // Issue 12: our own VMBus client and the root's echo device.
            "-guest-vmbus-echo",
            1,
            256,
            VMBUS_ECHO,
            VMBUS_ECHO_SHOWS,
            GUEST_FAILURES,
            Some(vmbus_echo_figures),
        ),
        (
            // The same with the guest on the other processor: the stream's
            // polling spares the signals (issue 12's benchmark goal).
            "-guest-vmbus-echo-2lp",
            2,
            256,
            VMBUS_ECHO,
            VMBUS_ECHO_SHOWS,
            GUEST_FAILURES,
            Some(vmbus_stream_polled),
        ),
        (
            "-guest-exit-heavy",
            1,
            256,
            EXIT_HEAVY,
            &["vm cpu: i: reserve 0%, limit 5%, weight 100"],
            GUEST_FAILURES,
            Some(exit_heavy_shares_hold),
        ),
        (
            "-guest-scheduler",
            1,
            256,
            SCHEDULER,
            &["vm cpu: a: reserve 60%, limit 100%, weight 100"],
            GUEST_FAILURES,
            Some(scheduler_shares_hold),
        ),
    ]
}

/// Every case `cargo xtask test` runs.
pub fn matrix() -> Vec<Case> {
    let amd = Expect::Boots {
        vendor: "amd",
        slat: "npt",
    };
    let intel = Expect::Boots {
        vendor: "intel",
        slat: "ept",
    };
    let mut cases = Vec::new();
    for cpus in [1, 2, 4] {
        for mem in [128, 1024, 4096] {
            cases.push(case(
                Machine::new(Emulator::Qemu, Boot::Multiboot, cpus, mem),
                amd.clone(),
                "",
            ));
        }
    }
    // EPYC offers 1 GiB pages: the hypervisor's tables use them.
    cases.push(case(
        Machine::new(Emulator::Qemu, Boot::Multiboot, 2, 1024).model("EPYC"),
        amd.clone(),
        "",
    ));
    cases.push(case(
        Machine::new(Emulator::Qemu, Boot::Uefi, 2, 256),
        amd.clone(),
        "",
    ));
    cases.push(case(
        Machine::new(Emulator::Qemu, Boot::Grub, 2, 256),
        amd.clone(),
        "",
    ));
    for cpus in [1, 2] {
        cases.push(case(
            Machine::new(Emulator::Bochs, Boot::Grub, cpus, 128),
            intel.clone(),
            "",
        ));
        cases.push(case(
            Machine::new(Emulator::Bochs, Boot::Grub, cpus, 128).model("ryzen"),
            amd.clone(),
            "",
        ));
    }
    // Skylake offers x2APIC; this keeps the xAPIC path tested on Intel too.
    cases.push(case(
        Machine::new(Emulator::Bochs, Boot::Grub, 2, 128).cmdline("poweroff apic=xapic"),
        intel.clone(),
        "-xapic",
    ));
    cases.push(case(
        Machine::new(Emulator::Qemu, Boot::Multiboot, 2, 256).cmdline("selftest=page-fault"),
        Expect::Exception { vector: 14 },
        "-page-fault",
    ));
    // Overflowing onto the guard page faults while pushing the #PF frame: a
    // double fault, which only reports because it runs on its own IST stack.
    cases.push(case(
        Machine::new(Emulator::Qemu, Boot::Multiboot, 2, 256).cmdline("selftest=stack-overflow"),
        Expect::Exception { vector: 8 },
        "-stack-overflow",
    ));
    cases.push(case(
        Machine::new(Emulator::Bochs, Boot::Grub, 1, 128).cmdline("selftest=stack-overflow"),
        Expect::Exception { vector: 8 },
        "-stack-overflow",
    ));
    // The root partition (issue 3): its shell on both vendors, 1 and 4 processors.
    let shell: &[&str] = &[
        "host info",
        "debug timer",
        "debug ipi",
        "host stats",
        "debug serial",
        "debug fpu",
        "debug pagetables",
        "bogus",
        "shutdown",
    ];
    for cpus in [1, 4] {
        let amd_root = Expect::RootShell {
            vendor: "amd",
            slat: "npt",
            must_show: ROOT_SHELL_SHOWS,
        };
        let intel_root = Expect::RootShell {
            vendor: "intel",
            slat: "ept",
            must_show: ROOT_SHELL_SHOWS,
        };
        cases.push(root_case(
            Machine::new(Emulator::Qemu, Boot::Multiboot, cpus, 256).cmdline(""),
            amd_root,
            "-root",
            shell,
        ));
        cases.push(root_case(
            Machine::new(Emulator::Bochs, Boot::Grub, cpus, 128).cmdline(""),
            intel_root,
            "-root",
            shell,
        ));
    }
    // Bochs's ryzen has NRIP save and flush-by-ASID, which QEMU's models lack:
    // the other half of the SVM backend.
    cases.push(root_case(
        Machine::new(Emulator::Bochs, Boot::Grub, 2, 128)
            .model("ryzen")
            .cmdline(""),
        Expect::RootShell {
            vendor: "amd",
            slat: "npt",
            must_show: ROOT_SHELL_SHOWS,
        },
        "-root",
        shell,
    ));
    cases.push(root_case(
        Machine::new(Emulator::Qemu, Boot::Uefi, 2, 256),
        Expect::RootShell {
            vendor: "amd",
            slat: "npt",
            must_show: &[],
        },
        "-root-poweroff",
        &[],
    ));
    // Guest partitions (issue 4), on QEMU (AMD) and Bochs (Intel): each test
    // guest proves one thing; see docs/testing.md.
    for (emulator, boot, vendor, slat) in [
        (Emulator::Qemu, Boot::Multiboot, "amd", "npt"),
        (Emulator::Bochs, Boot::Grub, "intel", "ept"),
    ] {
        for test in guest_tests() {
            let mut c = guest_case(emulator, boot, vendor, slat, test);
            c.timeout_secs += 120;
            // QEMU's processors are host threads, and the suite runs two
            // cases at a time on the machine's cores: whether the guest and
            // the root run side by side there is the host's scheduling. The
            // signal count is judged on Bochs, which emulates both in turn
            // (deterministic); QEMU runs the stream for its correctness,
            // and `cargo xtask bench --only vmbus-stream` measures it alone.
            if c.name.ends_with("-2lp") {
                // A VM that is never started takes LP 0 first (guest VPs
                // go to the LP with the fewest): the echo guest runs on LP 1.
                c.script
                    .insert(0, "vm new held --memory 4M --image hello".to_string());
                if let (Emulator::Qemu, Expect::Guests { check, .. }) = (emulator, &mut c.expect) {
                    *check = Some(vmbus_echo_figures);
                }
            }
            cases.push(c);
        }
    }
    // Debian's own kernel as a guest (issue 11), on both vendors.
    for (emulator, boot, vendor, slat) in [
        (Emulator::Qemu, Boot::Multiboot, "amd", "npt"),
        (Emulator::Bochs, Boot::Grub, "intel", "ept"),
    ] {
        for (test, on_bochs) in linux_tests() {
            if emulator == Emulator::Bochs && !on_bochs {
                continue;
            }
            if emulator == Emulator::Qemu && test.0 == "-linux-switch" {
                continue;
            }
            let mut c = guest_case(emulator, boot, vendor, slat, test);
            c.with_linux = true;
            if c.name.ends_with("-linux-net") && emulator == Emulator::Qemu {
                c.machine.nic = Some(NicNetwork::Restricted);
            }
            if c.name.ends_with("-linux-vhd") {
                c.host_disk = Some(HostDisk {
                    qemu_vhds: &[
                        ("qemu.vhd", "vpc", "dynamic", "32M"),
                        ("qemu.vhdx", "vhdx", "dynamic", "32M"),
                    ],
                    later_boots: vec![[
                        linux_vm!("linux", "1", "disk"),
                        "vm disk attach linux web.vhd",
                        "vm disk attach linux web.vhdx",
                        "vm disk list linux",
                        "vm start linux",
                        "vm wait linux 1200",
                        "vm console linux --log",
                        "vm disk detach linux",
                        "vm disk detach linux web.vhd",
                        "vm disk list linux",
                        "host disk",
                        "shutdown",
                    ]
                    .map(String::from)
                    .to_vec()],
                    vhds_hold: &[
                        ("web.vhd", LINUX_DISK_NOTE),
                        ("qemu.vhd", LINUX_DISK_NOTE),
                        ("web.vhdx", LINUX_DISK_NOTE),
                        ("qemu.vhdx", LINUX_DISK_NOTE),
                    ],
                });
            }
            // Bochs takes about 140 emulated seconds to Linux's /init (100
            // of them in the kernel's XZ decompressor; QEMU about 5): the
            // reboot case waits for the second kernel accordingly.
            if emulator == Emulator::Bochs {
                for line in &mut c.script {
                    if line == REBOOT_WAIT {
                        *line = "vm wait linux 300".to_string();
                    }
                }
            }
            // A TSC above 10 MHz, which a reference TSC page can describe
            // (and fewer timer ticks per instruction while Linux boots).
            c.machine.bochs_ips = 50_000_000;
            c.timeout_secs += match emulator {
                // Three Linux guests, one after the other's ping.
                Emulator::Qemu if c.name.ends_with("-linux-net") => 600,
                Emulator::Qemu => 300,
                Emulator::Bochs => 1500,
            };
            cases.push(c);
        }
    }
    // The root's stack overflows into its guard page: a double fault, reported.
    for (emulator, boot, memory) in [
        (Emulator::Qemu, Boot::Multiboot, 256),
        (Emulator::Bochs, Boot::Grub, 128),
    ] {
        cases.push(root_case(
            Machine::new(emulator, boot, 1, memory).cmdline(""),
            Expect::RootException { vector: 8 },
            "-root-stack-overflow",
            &["debug overflow"],
        ));
    }
    // The root touching the hypervisor's image (at 1 MiB) is stopped with a report.
    for (emulator, boot, memory) in [
        (Emulator::Qemu, Boot::Multiboot, 256),
        (Emulator::Bochs, Boot::Grub, 128),
    ] {
        cases.push(root_case(
            Machine::new(emulator, boot, 1, memory).cmdline(""),
            Expect::RootStopped { gpa: 0x10_0000 },
            "-root-touches-hypervisor",
            &["debug read 0x100000"],
        ));
    }
    cases.push(case(
        Machine::new(Emulator::Qemu, Boot::Multiboot, 2, 1024).cmdline(""),
        Expect::PageTableAudit,
        "-pagetable-audit",
    ));
    cases
}

/// What an emulator run produced.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub serial: String,
    /// The emulator's exit status mapped to the machine's verdict: `Some(true)`
    /// powered off with success, `Some(false)` with failure, `None` killed
    /// (time limit, or stopped by the harness once it had what it needed).
    pub success: Option<bool>,
    pub timed_out: bool,
    /// What the emulator's monitor answered, for audits.
    pub monitor: String,
}

/// The line every boot ends with.
pub const SUMMARY_PREFIX: &str = "hypervisor: ";

#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    pub cpus: u32,
    pub usable_mib: u64,
    pub vendor: String,
    pub slat: String,
}

/// Where the summary line starts in a log (it must start a line).
pub fn summary_offset(log: &str) -> Option<usize> {
    if log.starts_with(SUMMARY_PREFIX) {
        return Some(0);
    }
    log.match_indices(&format!("\n{SUMMARY_PREFIX}"))
        .next()
        .map(|(i, _)| i + 1)
}

/// Parses `hypervisor: <N> logical processors online, <M> MiB usable, vendor=<v>, slat=<s>`.
pub fn parse_summary(log: &str) -> Option<Summary> {
    let line = log
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(SUMMARY_PREFIX))?;
    let mut parts = line.split(", ");
    let cpus = parts
        .next()?
        .strip_suffix(" logical processors online")?
        .parse()
        .ok()?;
    let usable_mib = parts.next()?.strip_suffix(" MiB usable")?.parse().ok()?;
    let vendor = parts.next()?.strip_prefix("vendor=")?.to_string();
    let slat = parts.next()?.strip_prefix("slat=")?.to_string();
    Some(Summary {
        cpus,
        usable_mib,
        vendor,
        slat,
    })
}

/// True once a run has shown what its case needs; the harness may then stop
/// the emulator (for cases that do not power off by themselves).
pub fn ready_for_monitor(case: &Case, serial: &str) -> bool {
    matches!(case.expect, Expect::PageTableAudit) && serial.contains("boot complete")
}

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// The verdict on one run: `Ok` or the first reason it failed.
pub fn judge(case: &Case, out: &Outcome) -> Result<(), String> {
    let log = &out.serial;
    let m = &case.machine;
    // Counted in the hypervisor's own log: `host log` shows lines again on
    // COM1. A case that boots again on its disk does so after a marker.
    let resets = log.split(BOOT_MARKER_PREFIX).any(|boot| {
        let hv_log = boot
            .split_once(HYPERVISOR_LOG_MARKER)
            .map_or(boot, |(_, com2)| com2);
        count_lines(hv_log, "] cpu0 INFO  hypervisor ") > 1
    });
    if resets {
        return Err("the machine reset and booted again".into());
    }
    let check_boot = |log: &str| -> Result<Summary, String> {
        let s = parse_summary(log).ok_or("no summary line")?;
        if s.cpus != m.cpus {
            return Err(format!("{} of {} processors online", s.cpus, m.cpus));
        }
        for i in 0..m.cpus {
            if !log.contains(&format!("cpu{i} INFO  cpu{i} online")) {
                return Err(format!("cpu{i} did not check in"));
            }
        }
        // Firmware keeps a little memory (and the 4 GiB machine loses its PCI hole).
        let min = m.memory_mib * 7 / 8;
        if s.usable_mib < min || s.usable_mib > m.memory_mib {
            return Err(format!(
                "{} MiB usable on a {} MiB machine (expected {min}..={})",
                s.usable_mib, m.memory_mib, m.memory_mib
            ));
        }
        // QEMU passes "path name", GRUB and our loader "name": the name ends the string.
        let module = format!("{TEST_MODULE_NAME}\" at ");
        let size = format!("({TEST_MODULE_SIZE} bytes)");
        if !log
            .lines()
            .any(|l| l.contains(&module) && l.contains(&size))
        {
            return Err(format!(
                "module \"{TEST_MODULE_NAME}\" of {TEST_MODULE_SIZE} bytes not reported"
            ));
        }
        Ok(s)
    };
    let no_faults = |log: &str| -> Result<(), String> {
        for marker in ["EXCEPTION", "PANIC", "FATAL", "root partition stopped"] {
            if let Some(l) = log.lines().find(|l| l.contains(marker)) {
                return Err(format!("hypervisor reported: {}", l.trim()));
            }
        }
        Ok(())
    };
    match &case.expect {
        Expect::Boots { vendor, slat } => {
            no_faults(log)?;
            let s = check_boot(log)?;
            if s.vendor != *vendor || s.slat != *slat {
                return Err(format!(
                    "vendor={} slat={}, expected vendor={vendor} slat={slat}",
                    s.vendor, s.slat
                ));
            }
            if !log.contains("powering off") {
                return Err("did not power off".into());
            }
            match out.success {
                Some(true) => Ok(()),
                Some(false) => Err("emulator reported failure status".into()),
                None if out.timed_out => Err("time limit reached".into()),
                None => Err("emulator was stopped".into()),
            }
        }
        Expect::Exception { vector } => {
            let want = format!("EXCEPTION on cpu0: vector {vector} ");
            if !log.contains(&want) {
                return Err(format!("no report of vector {vector} on cpu0"));
            }
            for field in ["rip=", "cr2=", "rax=", "r15=", "cpu0 stopped"] {
                if !log.contains(field) {
                    return Err(format!("exception report lacks \"{field}\""));
                }
            }
            match out.success {
                Some(false) => Ok(()),
                Some(true) => Err("powered off with success after an exception".into()),
                None => Err("did not power off after the exception".into()),
            }
        }
        Expect::Guests {
            vendor,
            slat,
            must_show,
            must_not_show,
            check,
        } => {
            // A guest's own verdict first: it says what went wrong.
            for text in *must_not_show {
                if let Some(l) = log.lines().find(|l| l.contains(text)) {
                    return Err(format!("the log shows \"{text}\": {}", l.trim()));
                }
            }
            let shell = Expect::RootShell {
                vendor,
                slat,
                must_show,
            };
            // The machine's own verdict (faults, power-off, status) before
            // the case's check, which would only see a cut-off log.
            judge(
                &Case {
                    expect: shell,
                    ..case.clone()
                },
                out,
            )?;
            match check {
                Some(check) => check(log),
                None => Ok(()),
            }
        }
        Expect::RootShell {
            vendor,
            slat,
            must_show,
        } => {
            no_faults(log)?;
            let s = check_boot(log)?;
            if s.vendor != *vendor || s.slat != *slat {
                return Err(format!(
                    "vendor={} slat={}, expected vendor={vendor} slat={slat}",
                    s.vendor, s.slat
                ));
            }
            for i in 0..m.cpus {
                if !log.contains(&format!("root VP {i} starting")) {
                    return Err(format!("root VP {i} did not start"));
                }
            }
            if !log.contains(ROOT_PROMPT) {
                return Err("no root shell prompt".into());
            }
            let com1 = console_part(log);
            let before_host_log = com1
                .split(&format!("{ROOT_PROMPT}host log"))
                .next()
                .unwrap_or(com1);
            if let Some(l) = log_lines_on_console(before_host_log) {
                return Err(format!(
                    "a hypervisor log line on the root's console: {}",
                    l.trim()
                ));
            }
            // How the run ended, for a text that never came (an emulator
            // that exited by itself mid-run, e.g. on a triple fault of the
            // hypervisor under -no-reboot, is not a slow guest).
            let ended = match (out.success, out.timed_out) {
                (Some(true), _) => "the emulator exited by itself with status 0",
                (Some(false), _) => "the emulator exited by itself with a failure status",
                (None, true) => "the time limit was reached",
                (None, false) => "the emulator was stopped or killed by a signal",
            };
            for text in *must_show {
                if !log.contains(text) {
                    return Err(format!(
                        "the root shell did not show \"{text}\" ({ended}){}",
                        shell_context(com1)
                    ));
                }
            }
            match out.success {
                Some(true) => Ok(()),
                Some(false) => Err("emulator reported failure status".into()),
                None if out.timed_out => Err("time limit reached".into()),
                None => Err("emulator was stopped".into()),
            }
        }
        Expect::RootStopped { gpa } => {
            let line = log
                .lines()
                .find(|l| l.contains("root partition stopped"))
                .ok_or("the root was not stopped")?;
            if !line.contains(&format!("GPA {gpa:#x}")) {
                return Err(format!(
                    "the report does not name GPA {gpa:#x}: {}",
                    line.trim()
                ));
            }
            for marker in ["EXCEPTION", "PANIC", "FATAL"] {
                if log.contains(marker) {
                    return Err(format!("{marker} besides the stop report"));
                }
            }
            match out.success {
                Some(false) => Ok(()),
                Some(true) => Err("powered off with success after stopping the root".into()),
                None => Err("did not power off after stopping the root".into()),
            }
        }
        Expect::RootException { vector } => {
            let want = format!("ROOT EXCEPTION vector {vector} ");
            if !log.contains(&want) {
                return Err(format!("the root reported no exception {vector}"));
            }
            if !log.contains("root partition halted") {
                return Err("the root did not say it halted".into());
            }
            match out.success {
                Some(false) => Ok(()),
                Some(true) => Err("powered off with success after a root exception".into()),
                None => Err("did not stop after the root's exception".into()),
            }
        }
        Expect::PageTableAudit => {
            no_faults(log)?;
            check_boot(log)?;
            let report = audit::audit(&out.monitor, m.cpus)?;
            if report.writable_executable.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "writable and executable mappings: {}",
                    report.writable_executable.join("; ")
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[   0.01] cpu0 INFO  hypervisor 0.1.0 starting\n\
        [   0.02] cpu0 INFO  module 0: \"test-module\" at 0x400000..0x403039 (12345 bytes)\n\
        [   0.03] cpu0 INFO  cpu0 online: APIC ID 0\n\
        [   0.04] cpu1 INFO  cpu1 online: APIC ID 1\n\
        hypervisor: 2 logical processors online, 127 MiB usable, vendor=amd, slat=npt\r\n\
        [   0.05] cpu0 INFO  powering off\n";

    fn boots(cpus: u32) -> Case {
        case(
            Machine::new(Emulator::Qemu, Boot::Multiboot, cpus, 128),
            Expect::Boots {
                vendor: "amd",
                slat: "npt",
            },
            "",
        )
    }

    fn ok(serial: &str) -> Outcome {
        Outcome {
            serial: serial.into(),
            success: Some(true),
            ..Default::default()
        }
    }

    #[test]
    fn summary_parses() {
        assert_eq!(
            parse_summary(GOOD),
            Some(Summary {
                cpus: 2,
                usable_mib: 127,
                vendor: "amd".into(),
                slat: "npt".into()
            })
        );
        assert_eq!(
            parse_summary("hypervisor: two logical processors online"),
            None
        );
        // The UEFI loader's own lines mention "hypervisor: " mid-line.
        let uefi = format!("[ INFO]: loading /boot/hypervisor: 5 bytes\n{GOOD}");
        assert_eq!(
            summary_offset(&uefi),
            uefi.find("\nhypervisor: 2").map(|i| i + 1)
        );
        assert_eq!(summary_offset("x hypervisor: 1"), None);
    }

    #[test]
    fn a_good_boot_passes() {
        assert_eq!(judge(&boots(2), &ok(GOOD)), Ok(()));
    }

    #[test]
    fn each_defect_fails() {
        let c = boots(2);
        assert!(judge(&boots(4), &ok(GOOD)).unwrap_err().contains("2 of 4"));
        assert!(judge(&c, &ok(&GOOD.replace("cpu1 INFO  cpu1 online", "x")))
            .unwrap_err()
            .contains("cpu1"));
        assert!(judge(&c, &ok(&GOOD.replace("127 MiB", "64 MiB")))
            .unwrap_err()
            .contains("MiB usable"));
        assert!(judge(&c, &ok(&GOOD.replace("vendor=amd", "vendor=intel"))).is_err());
        assert!(judge(&c, &ok(&GOOD.replace("12345 bytes", "12344 bytes")))
            .unwrap_err()
            .contains("module"));
        assert!(
            judge(&c, &ok(&format!("{GOOD}EXCEPTION on cpu1: vector 13")))
                .unwrap_err()
                .contains("EXCEPTION")
        );
        assert!(judge(&c, &ok(&format!("{GOOD}{GOOD}")))
            .unwrap_err()
            .contains("reset"));
        assert!(judge(
            &c,
            &Outcome {
                success: Some(false),
                ..ok(GOOD)
            }
        )
        .is_err());
        assert!(judge(
            &c,
            &Outcome {
                success: None,
                timed_out: true,
                ..ok(GOOD)
            }
        )
        .unwrap_err()
        .contains("time"));
        assert!(judge(&c, &ok(&GOOD.replace("powering off", "idle"))).is_err());
    }

    #[test]
    fn exceptions_are_judged_by_vector_and_status() {
        let c = case(
            Machine::new(Emulator::Qemu, Boot::Multiboot, 1, 128),
            Expect::Exception { vector: 8 },
            "",
        );
        let report = "EXCEPTION on cpu0: vector 8 (#DF double fault), error code 0x0\n rip=0x1 cr2=0x2\n rax=0 r15=0\ncpu0 stopped; powering off";
        let out = Outcome {
            serial: report.into(),
            success: Some(false),
            ..Default::default()
        };
        assert_eq!(judge(&c, &out), Ok(()));
        assert!(judge(
            &c,
            &Outcome {
                success: Some(true),
                ..out.clone()
            }
        )
        .is_err());
        assert!(judge(
            &c,
            &Outcome {
                serial: report.replace("vector 8", "vector 14"),
                ..out
            }
        )
        .is_err());
    }

    #[test]
    fn root_verdicts() {
        let m = Machine::new(Emulator::Qemu, Boot::Multiboot, 2, 128);
        let shell = root_case(
            m.clone(),
            Expect::RootShell {
                vendor: "amd",
                slat: "npt",
                must_show: &["fpu: ok"],
            },
            "",
            &[],
        );
        let good = format!("root> debug fpu\nfpu: ok\nroot> \n{HYPERVISOR_LOG_MARKER}\n{GOOD}[ 0.1] cpu0 INFO  root VP 0 starting\n[ 0.1] cpu1 INFO  root VP 1 starting\n");
        assert_eq!(judge(&shell, &ok(&good)), Ok(()));
        assert!(
            judge(&shell, &ok(&format!("{GOOD}{good}")))
                .unwrap_err()
                .contains("log line on the root's console"),
            "the hypervisor's log belongs on COM2"
        );
        assert!(judge(&shell, &ok(&good.replace("fpu: ok", "fpu: CORRUPTED xmm3"))).is_err());
        assert!(judge(&shell, &ok(&good.replace("root VP 1", "root VP 9")))
            .unwrap_err()
            .contains("VP 1"));
        assert!(judge(&shell, &ok(&good.replace("root> ", "$ ")))
            .unwrap_err()
            .contains("prompt"));
        let stopped = format!("{good}\n[ 0.2] cpu0 ERROR root partition stopped (VP 0): read of GPA 0x100000 at RIP 0x1");
        assert!(
            judge(&shell, &ok(&stopped)).is_err(),
            "a stop is a failure of a shell case"
        );
        let touch = root_case(m, Expect::RootStopped { gpa: 0x10_0000 }, "", &[]);
        let failed = Outcome {
            serial: stopped.clone(),
            success: Some(false),
            ..Default::default()
        };
        assert_eq!(judge(&touch, &failed), Ok(()));
        assert!(judge(
            &touch,
            &Outcome {
                success: Some(true),
                ..failed.clone()
            }
        )
        .is_err());
        assert!(judge(
            &touch,
            &Outcome {
                serial: stopped.replace("0x100000", "0x200000"),
                ..failed.clone()
            }
        )
        .is_err());
        assert!(judge(
            &touch,
            &Outcome {
                serial: good,
                ..failed
            }
        )
        .is_err());
    }

    #[test]
    fn the_matrix_covers_the_issue() {
        let m = matrix();
        let has = |e: Emulator, b: Boot, model: &str, cpus: u32| {
            m.iter().any(|c| {
                c.machine.emulator == e
                    && c.machine.boot == b
                    && c.machine.cpu_model.starts_with(model)
                    && c.machine.cpus == cpus
            })
        };
        for cpus in [1, 2, 4] {
            assert!(has(Emulator::Qemu, Boot::Multiboot, "qemu64", cpus));
        }
        assert!(has(Emulator::Qemu, Boot::Uefi, "qemu64", 2));
        for cpus in [1, 2] {
            assert!(has(Emulator::Bochs, Boot::Grub, "corei7_skylake_x", cpus));
            assert!(has(Emulator::Bochs, Boot::Grub, "ryzen", cpus));
        }
        assert!(m.iter().any(|c| matches!(c.expect, Expect::PageTableAudit)));
        let mut names: Vec<_> = m.iter().map(|c| c.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), m.len(), "case names are unique");
    }
}

#[cfg(test)]
mod scheduler_judge_tests {
    use super::*;

    fn list(a: &str, b: &str) -> String {
        format!(
            "root> vm list\nID  NAME  STATE  CPU%  MEMORY(MiB)  UPTIME  VCPUS  EXITS\n\
             1   a  Running  {a}%  4  0:00:08  1  100\n2   b  Running  {b}%  4  0:00:08  1  100\n"
        )
    }

    #[test]
    fn shares_are_read_from_vm_list_and_judged() {
        let good: String = [
            list("20.00", "70.00"),
            list("24.50", "73.10"),
            list("30.00", "60.00"),
            list("20.90", "77.00"),
            list("50.00", "40.00"),
            list("60.20", "38.00"),
        ]
        .concat();
        assert_eq!(cpu_shares(&good, "a").len(), 6);
        assert_eq!(scheduler_shares_hold(&good), Ok(()));
        let unfair = good.replace("73.10", "40.00");
        assert!(scheduler_shares_hold(&unfair)
            .unwrap_err()
            .contains("weights"));
        let over = good.replace("20.90", "30.00");
        assert!(scheduler_shares_hold(&over).unwrap_err().contains("limit"));
        let short = good.replace("60.20", "40.00");
        assert!(scheduler_shares_hold(&short)
            .unwrap_err()
            .contains("reserve"));
        assert!(scheduler_shares_hold("").is_err());
    }
}
