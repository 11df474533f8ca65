//! Running a machine in QEMU or Bochs: serial captured (and echoed for
//! `xtask run`), a hard wall-clock limit, the exit status mapped to a verdict.
use crate::image::BootMedia;
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use system_tests::{Emulator, Machine, Outcome};

/// QEMU's isa-debug-exit turns the hypervisor's codes into (code << 1) | 1.
const QEMU_EXIT_SUCCESS: i32 = (0x10 << 1) | 1;

/// What goes into the machine's serial console.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    Nothing,
    /// Our stdin, as it comes (a terminal or a pipe).
    Stdin,
    /// One line each time `prompt` has appeared once more.
    Script {
        prompt: &'a str,
        lines: &'a [String],
    },
}

/// Sends script lines as prompts appear, a few bytes at a time like a
/// typist: the next piece goes once the machine has echoed the last (or
/// after `ECHO_WAIT`, should other output cut into the echo). Emulated UARTs
/// may take input faster than their line rate, and a 16-byte FIFO read by a
/// shell that sleeps between ticks would overflow with a whole line.
struct Feeder<'a> {
    prompt: &'a str,
    lines: &'a [String],
    /// Lines sent completely.
    sent: usize,
    /// Bytes of `lines[sent]` typed so far, and when the last piece went.
    typed: usize,
    last_piece: Option<Instant>,
}

/// Bytes typed at once: half the 16550's FIFO.
const PIECE: usize = 8;
const ECHO_WAIT: Duration = Duration::from_millis(300);

impl Feeder<'_> {
    fn new<'a>(input: Input<'a>) -> Option<Feeder<'a>> {
        match input {
            Input::Script { prompt, lines } => Some(Feeder {
                prompt,
                lines,
                sent: 0,
                typed: 0,
                last_piece: None,
            }),
            _ => None,
        }
    }

    fn feed(&mut self, serial: &str, out: &mut dyn Write) {
        // A guest's shell prompt (seen through `vm console`) counts as a
        // prompt too: the next line goes to the guest.
        let serial = system_tests::GUEST_PROMPTS
            .iter()
            .fold(serial.to_string(), |s, p| s.replace(p, self.prompt));
        let serial = serial.as_str();
        while self.sent < self.lines.len() {
            // Line n goes after the (n+1)th prompt; what follows that prompt
            // is where its echo appears.
            let Some(tail) = serial.split(self.prompt).nth(self.sent + 1) else {
                return;
            };
            let line = format!("{}\n", self.lines[self.sent]);
            let echoed = tail.contains(&line[..self.typed]);
            let waited = self.last_piece.is_some_and(|t| t.elapsed() >= ECHO_WAIT);
            if self.typed > 0 && !echoed && !waited {
                return;
            }
            let end = (self.typed + PIECE).min(line.len());
            let _ = out.write_all(&line.as_bytes()[self.typed..end]);
            let _ = out.flush();
            self.last_piece = Some(Instant::now());
            if end == line.len() {
                self.sent += 1;
                self.typed = 0;
            } else {
                self.typed = end;
                return;
            }
        }
    }
}

pub struct RunOptions<'a> {
    pub timeout: Duration,
    /// Copy the serial console to our stdout as it arrives.
    pub echo: bool,
    pub input: Input<'a>,
    /// When this returns true for the serial log so far, send
    /// `monitor_commands` to QEMU's monitor, then stop the machine.
    pub monitor_trigger: Option<&'a dyn Fn(&str) -> bool>,
    pub monitor_commands: &'a [&'a str],
    /// Copy the hypervisor's log (COM2) to our stderr as it arrives.
    pub echo_hypervisor_log: bool,
}

/// Where a run's COM2, the hypervisor's log, goes.
pub fn hypervisor_log_path(dir: &Path) -> PathBuf {
    dir.join("hypervisor.log")
}

/// The hypervisor's log file as it grows, echoed to stderr on request.
struct HypervisorLog {
    path: PathBuf,
    echo: bool,
    shown: std::cell::Cell<usize>,
}

impl HypervisorLog {
    fn new(dir: &Path, echo: bool) -> Self {
        let path = hypervisor_log_path(dir);
        let _ = std::fs::remove_file(&path);
        HypervisorLog {
            path,
            echo,
            shown: std::cell::Cell::new(0),
        }
    }

    /// What the machine's two serial ports have said: COM1 (the root's
    /// console, or everything before the hypervisor), then
    /// `system_tests::HYPERVISOR_LOG_MARKER` and COM2.
    fn combine(&self, com1: &str) -> String {
        let bytes = std::fs::read(&self.path).unwrap_or_default();
        if self.echo && bytes.len() > self.shown.get() {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(&bytes[self.shown.get()..]);
            let _ = e.flush();
            self.shown.set(bytes.len());
        }
        format!(
            "{com1}\n{}\n{}",
            system_tests::HYPERVISOR_LOG_MARKER,
            String::from_utf8_lossy(&bytes)
        )
    }
}

pub struct Run {
    pub outcome: Outcome,
    /// Wall time from start until the summary line appeared.
    pub summary_after: Option<Duration>,
}

pub fn run(machine: &Machine, media: &BootMedia, dir: &Path, opts: &RunOptions) -> Result<Run> {
    std::fs::create_dir_all(dir)?;
    match machine.emulator {
        Emulator::Qemu => run_qemu(machine, media, dir, opts),
        Emulator::Bochs => run_bochs(machine, media, dir, opts),
    }
}

/// The longest boot module string (path and name) the hypervisor keeps.
const MODULE_STRING_MAX: usize = 96;

/// A short path to `file` (a symbolic link under the temp directory, named
/// by a hash of the file's path): a checkout deep in the file system still
/// gives module strings the hypervisor keeps whole.
fn short_path(file: &Path) -> Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    let target = std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    target.hash(&mut h);
    let link = std::env::temp_dir().join(format!("xtask-{:016x}", h.finish()));
    let points_there = |l: &Path| std::fs::read_link(l).is_ok_and(|t| t == target);
    if !points_there(&link) {
        let _ = std::fs::remove_file(&link);
        // Another case of this run may make the same link at the same time.
        if let Err(e) = std::os::unix::fs::symlink(&target, &link) {
            if !points_there(&link) {
                return Err(e).with_context(|| format!("linking {}", link.display()));
            }
        }
    }
    Ok(link)
}

fn qemu_command(
    m: &Machine,
    media: &BootMedia,
    dir: &Path,
    monitor: Option<&Path>,
) -> Result<Command> {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-accel",
        "tcg",
        "-cpu",
        &m.cpu_model,
        "-smp",
        &m.cpus.to_string(),
        "-m",
        &format!("{}M", m.memory_mib),
    ]);
    // COM1 on stdio, COM2 (the hypervisor's log) into a file.
    c.args(["-display", "none", "-serial", "stdio", "-serial"]);
    c.arg(format!("file:{}", hypervisor_log_path(dir).display()));
    c.arg("-no-reboot");
    // Resets and triple faults (a hypervisor's triple fault under -no-reboot
    // ends QEMU without a word otherwise).
    c.args(["-d", "cpu_reset", "-D"]).arg(dir.join(RESET_LOG));
    if m.count_instructions {
        c.args(["-icount", "shift=0"]);
    }
    c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    // For profiling by hand (docs/benchmarks.md), e.g.
    // XTASK_QEMU_EXTRA="-d exec,nochain -D /tmp/trace".
    if let Ok(extra) = std::env::var("XTASK_QEMU_EXTRA") {
        c.args(extra.split_whitespace());
    }
    if let Some(disk) = &m.disk_image {
        // The root's own disk, a virtio-blk PCI device.
        c.arg("-drive")
            .arg(format!("file={disk},format=raw,if=none,id=hostdisk"));
        c.args(["-device", "virtio-blk-pci,drive=hostdisk"]);
    }
    if let Some(network) = m.nic {
        // The root's NIC (virtio-net, no option ROM: the firmware has no
        // business booting from it) on QEMU's user-mode network.
        let netdev = match network {
            system_tests::NicNetwork::Restricted => "user,id=hostnet,restrict=on",
            system_tests::NicNetwork::Open => "user,id=hostnet,restrict=off",
            system_tests::NicNetwork::Sink => {
                "user,id=hostnet,restrict=on,guestfwd=tcp:10.0.2.100:5000-cmd:dd of=/dev/null status=none"
            }
        };
        c.args([
            "-netdev",
            netdev,
            "-device",
            "virtio-net-pci,netdev=hostnet,romfile=",
        ]);
    }
    match monitor {
        Some(p) => c.args([
            "-monitor",
            &format!("unix:{},server=on,wait=off", p.display()),
        ]),
        None => c.args(["-monitor", "none"]),
    };
    match media {
        BootMedia::Multiboot {
            kernel,
            cmdline,
            modules,
        } => {
            c.arg("-kernel").arg(kernel).arg("-append").arg(cmdline);
            if !modules.is_empty() {
                // QEMU's Multiboot modules: "file args" separated by commas.
                let list: Vec<String> = modules
                    .iter()
                    .map(|(p, name)| {
                        let string = format!("{} {name}", p.display());
                        if string.len() <= MODULE_STRING_MAX {
                            return Ok(string);
                        }
                        Ok(format!("{} {name}", short_path(p)?.display()))
                    })
                    .collect::<Result<_>>()?;
                // The hypervisor keeps 96 bytes of a module's string
                // (`bootinfo::MAX_NAME`); the name is its last word (a
                // name that is itself too long is still refused).
                if let Some(long) = list.iter().find(|m| m.len() > MODULE_STRING_MAX) {
                    anyhow::bail!(
                        "boot module string over {MODULE_STRING_MAX} bytes (its name would be cut): {long}"
                    );
                }
                c.arg("-initrd").arg(list.join(","));
            }
        }
        BootMedia::Esp(image) => {
            let vars = dir.join("OVMF_VARS.fd");
            std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                .context("copying OVMF variables")?;
            c.args(["-machine", "q35"]);
            c.arg("-drive")
                .arg("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd");
            c.arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
            c.arg("-drive")
                .arg(format!("format=raw,file={}", image.display()));
        }
        BootMedia::Iso(iso) => {
            c.arg("-cdrom").arg(iso).args(["-boot", "d"]);
        }
    }
    Ok(c)
}

fn qemu_verdict(code: Option<i32>) -> Option<bool> {
    code.map(|c| c == 0 || c == QEMU_EXIT_SUCCESS)
}

/// QEMU's log of processor resets, in the case directory.
const RESET_LOG: &str = "qemu-resets.log";

/// The processors' state of a machine that is still running at its time
/// limit (QEMU monitor: registers and local APICs), kept whole in
/// `final-state.log`; the returned summary (per CPU: RIP, halted, CR3, and
/// the symbol at RIP when `addr2line` knows it) goes into the log CI keeps.
fn processor_state(socket: &Path, cpus: u32, dir: &Path) -> String {
    let mut commands = vec!["info registers -a".to_string()];
    commands.extend((0..cpus).map(|i| format!("info lapic {i}")));
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let transcript = match monitor_session(socket, &commands) {
        Ok(t) => t,
        Err(e) => return format!("[xtask] at the time limit: no processor state: {e:#}"),
    };
    let _ = std::fs::write(dir.join("final-state.log"), &transcript);
    let mut out = String::from("[xtask] at the time limit, the processors:");
    let mut cpu = 0;
    for line in transcript.lines() {
        if let Some(n) = line.strip_prefix("CPU#") {
            cpu = n.trim().parse().unwrap_or(cpu);
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name).map(str::to_string))
        };
        if let Some(rip) = field("RIP=") {
            let halted = field("HLT=").unwrap_or_default();
            out.push_str(&format!(
                "\n[xtask]   CPU {cpu}: RIP {rip} HLT={halted} {}",
                symbol_at(&rip)
            ));
        }
        if line.starts_with("CR0=") {
            out.push_str(&format!("\n[xtask]   CPU {cpu}: {line}"));
        }
        if ["IRR", "ISR", "Timer", "LVTT"]
            .iter()
            .any(|p| line.starts_with(p))
        {
            out.push_str(&format!("\n[xtask]   CPU {cpu} APIC: {}", line.trim()));
        }
    }
    out
}

/// The function at `rip` (hex) in the hypervisor or the root partition,
/// if either image covers it.
fn symbol_at(rip: &str) -> String {
    let images = [
        crate::build::release_binary("hypervisor"),
        crate::build::release_binary("root-partition-svc"),
    ];
    for image in images {
        let Ok(out) = Command::new("addr2line")
            .args(["-f", "-C", "-e"])
            .arg(&image)
            .arg(format!("0x{}", rip.trim_start_matches("0x")))
            .output()
        else {
            return String::new();
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        if let (Some(f), Some(at)) = (lines.next(), lines.next()) {
            if f != "??" {
                let name = image.file_name().unwrap_or_default().to_string_lossy();
                return format!("({name}: {f} at {at})");
            }
        }
    }
    String::new()
}

/// Talks to QEMU's human monitor: each command's output, prompt to prompt.
fn monitor_session(socket: &Path, commands: &[&str]) -> Result<String> {
    let mut s = UnixStream::connect(socket).context("connecting to the QEMU monitor")?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut transcript = String::new();
    let read_to_prompt = |s: &mut UnixStream, transcript: &mut String| -> Result<()> {
        let mut buf = [0u8; 65536];
        let start = transcript.len();
        while !transcript[start..].contains("(qemu) ") {
            let n = s.read(&mut buf).context("reading the QEMU monitor")?;
            if n == 0 {
                break;
            }
            transcript.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Ok(())
    };
    read_to_prompt(&mut s, &mut transcript)?;
    for cmd in commands {
        s.write_all(format!("{cmd}\n").as_bytes())?;
        transcript.push_str(&format!("\n{cmd}\n"));
        read_to_prompt(&mut s, &mut transcript)?;
    }
    let _ = s.write_all(b"quit\n");
    // The monitor echoes input with terminal escapes; keep plain text.
    Ok(strip_escapes(&transcript))
}

fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Collects a child's stdout into a shared string on a thread.
fn capture(mut out: impl Read + Send + 'static, echo: bool) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            if echo {
                let mut so = std::io::stdout().lock();
                let _ = so.write_all(&buf[..n]);
                let _ = so.flush();
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    log
}

/// Waits for `child` under the time limit; `poll` may stop it early by
/// returning true; `at_time_limit` runs before a machine still running at the
/// limit is killed (to record its state).
fn supervise(
    child: &mut Child,
    opts: &RunOptions,
    log: &dyn Fn() -> String,
    mut poll: impl FnMut(&str) -> bool,
    mut at_time_limit: impl FnMut(),
) -> Result<(Option<i32>, bool, Option<Duration>)> {
    let start = Instant::now();
    let mut summary_after = None;
    loop {
        let exited = child.try_wait()?;
        // Read after the exit check: output written before exit is seen first.
        let text = log();
        if summary_after.is_none() && system_tests::summary_offset(&text).is_some() {
            summary_after = Some(start.elapsed());
        }
        if let Some(status) = exited {
            return Ok((status.code(), false, summary_after));
        }
        if poll(&text) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok((None, false, summary_after));
        }
        if start.elapsed() > opts.timeout {
            at_time_limit();
            let _ = child.kill();
            let _ = child.wait();
            return Ok((None, true, summary_after));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `cmd` (an emulator without our hypervisor, say) to its end, killed
/// at `timeout`: what it wrote to stdout, and whether it was killed.
pub fn run_to_end(mut cmd: Command, timeout: Duration) -> Result<(String, bool)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().context("starting the emulator")?;
    let out = capture(child.stdout.take().expect("piped"), false);
    let read = || out.lock().unwrap().clone();
    let opts = RunOptions {
        timeout,
        echo: false,
        input: Input::Nothing,
        monitor_trigger: None,
        monitor_commands: &[],
        echo_hypervisor_log: false,
    };
    let (_, timed_out, _) = supervise(&mut child, &opts, &read, |_| false, || {})?;
    // The reader takes what was written just before the exit.
    std::thread::sleep(Duration::from_millis(50));
    Ok((read(), timed_out))
}

/// A path for one machine's monitor socket. Not in the case directory: a
/// Unix socket path must be under 108 bytes (`sun_path`), and a clone in a
/// deep directory with a long case name is over it.
fn monitor_socket_path() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("xtask-{}-{n}.mon", std::process::id()))
}

fn run_qemu(m: &Machine, media: &BootMedia, dir: &Path, opts: &RunOptions) -> Result<Run> {
    let socket = monitor_socket_path();
    let _ = std::fs::remove_file(&socket);
    // A monitor always: a machine still running at the time limit has its
    // processors' state recorded before it is killed.
    let mut cmd = qemu_command(m, media, dir, Some(socket.as_path()))?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(match opts.input {
        Input::Nothing => Stdio::null(),
        Input::Stdin => Stdio::inherit(),
        Input::Script { .. } => Stdio::piped(),
    });
    let hv_log = HypervisorLog::new(dir, opts.echo_hypervisor_log);
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let serial = capture(child.stdout.take().expect("piped"), opts.echo);
    let stderr = capture(child.stderr.take().expect("piped"), false);
    let mut to_machine = child.stdin.take();
    let mut feeder = Feeder::new(opts.input);
    let read = || hv_log.combine(&serial.lock().unwrap());
    let mut monitor = String::new();
    let mut monitor_error = None;
    let mut final_state = None;
    let (code, timed_out, summary_after) = supervise(
        &mut child,
        opts,
        &read,
        |text| {
            if let (Some(f), Some(w)) = (feeder.as_mut(), to_machine.as_mut()) {
                f.feed(text, w);
            }
            match opts.monitor_trigger {
                Some(trigger) if trigger(text) => {
                    match monitor_session(&socket, opts.monitor_commands) {
                        Ok(t) => monitor = t,
                        Err(e) => monitor_error = Some(e),
                    }
                    true
                }
                _ => false,
            }
        },
        || final_state = Some(processor_state(&socket, m.cpus, dir)),
    )?;
    let _ = std::fs::remove_file(&socket);
    std::thread::sleep(Duration::from_millis(50));
    let mut serial = read();
    let err = stderr.lock().unwrap().clone();
    if !err.trim().is_empty() {
        serial.push_str(&format!("\n[qemu stderr] {}", err.trim()));
    }
    if let Some(e) = monitor_error {
        serial.push_str(&format!("\n[xtask] monitor: {e:#}"));
    }
    if let Some(state) = final_state {
        serial.push_str(&format!("\n{state}"));
    }
    if code.is_some() {
        // Exited by itself: a triple fault under -no-reboot says so here.
        if let Ok(log) = std::fs::read_to_string(dir.join(RESET_LOG)) {
            if log.contains("Triple fault") {
                serial.push_str("\n[xtask] QEMU's log: a triple fault ended the run");
            }
        }
    }
    Ok(Run {
        outcome: Outcome {
            serial,
            success: qemu_verdict(code),
            timed_out,
            monitor,
        },
        summary_after,
    })
}

/// A pseudo-terminal for Bochs's COM1 (`mode=term`): the master for us (read
/// and write), the slave's path for Bochs. Raw mode: bytes pass unchanged.
struct Pty {
    master: std::fs::File,
    _slave: std::fs::File,
    slave_path: PathBuf,
}

fn open_pty() -> Result<Pty> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into the integers given; the
    // optional name, termios and window-size arguments are null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        anyhow::bail!("openpty failed: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just opened for us; the Files own them.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    // SAFETY: a zeroed termios is a valid buffer for tcgetattr to fill.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `slave` is an open terminal; `t` is a valid termios.
    unsafe {
        libc::tcgetattr(slave.as_raw_fd(), &mut t);
        libc::cfmakeraw(&mut t);
        libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t);
    }
    let slave_path = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))
        .context("naming the pty")?;
    Ok(Pty {
        master,
        _slave: slave,
        slave_path,
    })
}

fn bochsrc(m: &Machine, iso: &Path, serial: &Path, com2: &Path, log: &Path) -> String {
    format!(
        "megs: {mem}\n\
         romimage: file=/usr/share/bochs/BIOS-bochs-latest, options=fastboot\n\
         vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest\n\
         cpu: model={model}, count={cpus}, ips={ips}, reset_on_triple_fault=0\n\
         ata0-master: type=cdrom, path={iso}, status=inserted\n\
         boot: cdrom\n\
         com1: enabled=1, mode=term, dev={serial}\n\
         com2: enabled=1, mode=file, dev={com2}\n\
         display_library: rfb, options=\"timeout=0\"\n\
         clock: sync=none\n\
         panic: action=fatal\n\
         error: action=report\n\
         log: {log}\n\
         magic_break: enabled=1\n\
         port_e9_hack: enabled=1\n\
         sound: driver=dummy\n\
         speaker: enabled=0\n",
        mem = m.memory_mib,
        ips = m.bochs_ips,
        model = m.cpu_model,
        cpus = m.cpus,
        iso = iso.display(),
        serial = serial.display(),
        com2 = com2.display(),
        log = log.display(),
    )
}

/// Whether we may give Bochs its own network namespace (its only headless
/// display listens on TCP; inside a fresh namespace nothing outside can reach it).
fn can_unshare_net() -> bool {
    Command::new("unshare")
        .args(["-n", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run_bochs(m: &Machine, media: &BootMedia, dir: &Path, opts: &RunOptions) -> Result<Run> {
    let BootMedia::Iso(iso) = media else {
        anyhow::bail!("Bochs boots only the GRUB ISO (--boot grub)")
    };
    let pty = open_pty()?;
    let rc = dir.join("bochs.rc");
    let conf = dir.join("bochsrc");
    // `c` runs; a magic breakpoint (our success power-off) returns to the
    // debugger, which reads `quit` and exits 0.
    std::fs::write(&rc, "c\nquit\n")?;
    std::fs::write(
        &conf,
        bochsrc(
            m,
            iso,
            &pty.slave_path,
            &hypervisor_log_path(dir),
            &dir.join("bochs.log"),
        ),
    )?;
    let mut cmd = if can_unshare_net() {
        let mut c = Command::new("unshare");
        c.args(["-n", "bochs"]);
        c
    } else {
        eprintln!("xtask: cannot create a network namespace; Bochs's VNC display will listen on localhost:5900");
        Command::new("bochs")
    };
    cmd.arg("-q").arg("-f").arg(&conf).arg("-rc").arg(&rc);
    cmd.stdin(Stdio::null());
    cmd.stdout(std::fs::File::create(dir.join("bochs.out"))?)
        .stderr(std::fs::File::create(dir.join("bochs.err"))?);
    let hv_log = HypervisorLog::new(dir, opts.echo_hypervisor_log);
    let mut child = cmd.spawn().context("starting bochs")?;
    let serial = capture(pty.master.try_clone()?, opts.echo);
    let read = || hv_log.combine(&serial.lock().unwrap());
    let mut to_machine = pty.master.try_clone()?;
    if let Input::Stdin = opts.input {
        let mut w = pty.master.try_clone()?;
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut w);
        });
    }
    let mut feeder = Feeder::new(opts.input);
    let (code, timed_out, summary_after) = supervise(
        &mut child,
        opts,
        &read,
        |text| {
            if let Some(f) = feeder.as_mut() {
                f.feed(text, &mut to_machine);
            }
            false
        },
        || {},
    )?;
    std::thread::sleep(Duration::from_millis(50));
    let mut serial = read();
    if code != Some(0) {
        // Bochs names its reason (a panic, a VMCS check) in its own log.
        let log = std::fs::read_to_string(dir.join("bochs.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        serial.push_str(&format!(
            "\n[bochs log, last lines, newest first]\n{}",
            tail.join("\n")
        ));
    }
    Ok(Run {
        outcome: Outcome {
            serial,
            success: code.map(|c| c == 0),
            timed_out,
            monitor: String::new(),
        },
        summary_after,
    })
}

/// Where a case's files go.
pub fn case_dir(name: &str) -> PathBuf {
    crate::build::work_dir().join("cases").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_sockets_are_short_and_distinct() {
        let (a, b) = (monitor_socket_path(), monitor_socket_path());
        assert_ne!(a, b);
        // sun_path holds 108 bytes with its terminating NUL.
        assert!(a.as_os_str().len() < 108, "{}", a.display());
    }

    #[test]
    fn a_deep_module_path_gets_a_short_link_to_it() {
        let deep = std::env::temp_dir()
            .join(format!("xtask-test-{}", std::process::id()))
            .join("a-directory-name-long-enough-to-push-the-path-over-the-limit")
            .join("and-another-one-for-good-measure");
        std::fs::create_dir_all(&deep).unwrap();
        let file = deep.join("vmlinuz");
        std::fs::write(&file, b"kernel").unwrap();
        assert!(file.as_os_str().len() > MODULE_STRING_MAX);
        let link = short_path(&file).unwrap();
        // Made again (a second case of the run): the same link.
        assert_eq!(short_path(&file).unwrap(), link);
        assert!(link.as_os_str().len() + " linux".len() <= MODULE_STRING_MAX);
        assert_eq!(std::fs::read(&link).unwrap(), b"kernel");
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_dir_all(deep.parent().unwrap().parent().unwrap());
    }
}
