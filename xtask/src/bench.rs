//! `cargo xtask bench`: the hypervisor's size and boot time per machine.
//! Figures go into docs/benchmarks.md by hand, with this command.
use crate::{build, emulator, image, prereq};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use system_tests::{Boot, Emulator, Machine};

/// Section sizes of an ELF64 file, by name.
fn section_sizes(elf: &[u8]) -> Option<Vec<(String, u64)>> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    let shoff = u64_at(0x28)? as usize;
    let (shentsize, shnum, shstrndx) = (
        u16_at(0x3A)? as usize,
        u16_at(0x3C)? as usize,
        u16_at(0x3E)? as usize,
    );
    let strtab = u64_at(shoff + shstrndx * shentsize + 0x18)? as usize;
    let mut out = Vec::new();
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        let name_off = strtab + u32_at(sh)? as usize;
        let name: String = elf
            .get(name_off..)?
            .iter()
            .take_while(|b| **b != 0)
            .map(|b| *b as char)
            .collect();
        let flags = u64_at(sh + 0x08)?;
        if flags & 2 != 0 {
            // SHF_ALLOC: part of the loaded image.
            out.push((name, u64_at(sh + 0x20)?));
        }
    }
    Some(out)
}

/// The trusted computing base: lines of code in `hypervisor/` (not blank, not
/// comments, not unit tests) and `unsafe` blocks, split into the host-tested
/// library (`hypervisor/core`) and the bare-metal rest (`hypervisor/src`).
fn trusted_base() -> Result<()> {
    let src = build::root().join("hypervisor/src");
    let core = build::root().join("hypervisor/core/src");
    let (mut lib_lines, mut bin_lines, mut unsafe_blocks) = (0, 0, 0);
    let mut stack = vec![src.clone(), core.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            // Unit tests sit at the end of a file, from `#[cfg(test)]` on.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let lines = code
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("//"))
                .count();
            unsafe_blocks += code.matches("unsafe {").count();
            if path.starts_with(&core) {
                lib_lines += lines;
            } else {
                bin_lines += lines;
            }
        }
    }
    // hv-abi is linked into the hypervisor too (it forbids unsafe code).
    let mut abi_lines = 0;
    for entry in std::fs::read_dir(build::root().join("hypervisor/abi/src"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            let abi = std::fs::read_to_string(&path)?;
            let abi_code = abi.split("#[cfg(test)]").next().unwrap_or("");
            abi_lines += abi_code
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("//"))
                .count();
        }
    }
    println!("== trusted base: hypervisor/src, hypervisor/core and hv-abi, code lines without blanks, comments and unit tests");
    println!("  hv-abi               {abi_lines:>6} lines");
    println!("  host-tested library  {lib_lines:>6} lines");
    println!("  bare-metal           {bin_lines:>6} lines");
    println!(
        "  total                {:>6} lines, {unsafe_blocks} unsafe blocks",
        abi_lines + lib_lines + bin_lines
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The hypervisor's own timestamp on the last log line before the summary.
fn hypervisor_seconds(serial: &str) -> Option<f64> {
    let before = &serial[..system_tests::summary_offset(serial)?];
    let line = before.lines().rev().find(|l| l.starts_with('['))?;
    line[1..line.find(']')?].trim().parse().ok()
}

pub fn main(args: Vec<String>) -> Result<i32> {
    let mut runs = 3;
    let mut only: Option<String> = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().context("--runs needs a number")?.parse()?,
            "--only" => only = Some(it.next().context(
                "--only needs trusted, exits, io, vmbus, vmbus-stream, linux, storage or network",
            )?),
            other => bail!("unknown option \"{other}\" for bench"),
        }
    }
    if only.as_deref() == Some("trusted") {
        // Source lines only: nothing to build or boot.
        trusted_base()?;
        return Ok(0);
    }
    prereq::ensure()?;
    let art = build::build()?;
    match only.as_deref() {
        None => {}
        Some("exits") => {
            exits(&art, runs)?;
            return Ok(0);
        }
        Some("io") => {
            io_intercepts(&art)?;
            return Ok(0);
        }
        Some("linux") => {
            linux(&art)?;
            return Ok(0);
        }
        Some("vmbus") => {
            vmbus_echo(&art)?;
            vmbus_stream(&art)?;
            return Ok(0);
        }
        Some("vmbus-stream") => {
            vmbus_stream(&art)?;
            return Ok(0);
        }
        Some("storage") => {
            storage(&art)?;
            return Ok(0);
        }
        Some("network") => {
            network(&art)?;
            return Ok(0);
        }
        Some(other) => {
            bail!("--only {other}: expected trusted, exits, io, vmbus, vmbus-stream, linux, storage or network")
        }
    }
    let elf = std::fs::read(&art.hypervisor)?;
    println!(
        "== size: {} ({} bytes on disk with symbols)",
        art.hypervisor.display(),
        elf.len()
    );
    let mut loaded = 0;
    for (name, size) in section_sizes(&elf).context("unreadable ELF")? {
        println!("  {name:<14} {size:>8} bytes");
        loaded += size;
    }
    println!("  {:<14} {loaded:>8} bytes", "loaded total");
    println!(
        "  UEFI loader    {:>8} bytes",
        std::fs::metadata(&art.uefi_loader)?.len()
    );
    trusted_base()?;

    println!("== boot time to the summary line, median of {runs} runs (wall clock from emulator start; hypervisor's TSC clock)");
    let machines = [
        Machine::new(Emulator::Qemu, Boot::Multiboot, 1, 128),
        Machine::new(Emulator::Qemu, Boot::Multiboot, 4, 4096),
        Machine::new(Emulator::Qemu, Boot::Uefi, 2, 256),
        Machine::new(Emulator::Bochs, Boot::Grub, 1, 128),
        Machine::new(Emulator::Bochs, Boot::Grub, 2, 128),
    ];
    let modules = image::standard_modules()?;
    for m in machines {
        let label = format!(
            "{} {} {} {}cpu {}M",
            m.emulator, m.boot, m.cpu_model, m.cpus, m.memory_mib
        );
        let dir = build::work_dir().join("bench");
        let media = image::make(m.boot, &art, &m.cmdline, &modules, &dir)?;
        let (mut wall, mut own) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let opts = emulator::RunOptions {
                timeout: Duration::from_secs(300),
                echo: false,
                input: emulator::Input::Nothing,
                monitor_trigger: None,
                monitor_commands: &[],
                echo_hypervisor_log: false,
            };
            let run = emulator::run(&m, &media, &dir, &opts)?;
            let Some(t) = run.summary_after else {
                bail!("{label}: no summary line")
            };
            wall.push(t.as_secs_f64());
            own.push(hypervisor_seconds(&run.outcome.serial).unwrap_or(f64::NAN));
        }
        println!(
            "  {label:<48} wall {:>6.2} s   hypervisor {:>6.3} s",
            median(wall),
            median(own)
        );
    }
    exits(&art, runs)?;
    io_intercepts(&art)?;
    vmbus_echo(&art)?;
    vmbus_stream(&art)?;
    linux(&art)?;
    storage(&art)?;
    println!("== VMBus ring throughput (cargo run -p vmbus --release --example ring_bench)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = std::process::Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "vmbus",
            "--example",
            "ring_bench",
        ])
        .current_dir(build::root())
        .status()?
        .success();
    Ok(if ok { 0 } else { 1 })
}

/// Boots `m` with `modules` and types `script` at the root's prompt.
fn run_script(
    art: &build::Artifacts,
    m: &Machine,
    modules: &[(std::path::PathBuf, String)],
    dir: &str,
    script: &[String],
    timeout_secs: u64,
) -> Result<emulator::Run> {
    let dir = build::work_dir().join(dir);
    let media = image::make(m.boot, art, &m.cmdline, modules, &dir)?;
    let opts = emulator::RunOptions {
        timeout: Duration::from_secs(timeout_secs),
        echo: false,
        input: emulator::Input::Script {
            prompt: system_tests::ROOT_PROMPT,
            lines: script,
        },
        monitor_trigger: None,
        monitor_commands: &[],
        echo_hypervisor_log: false,
    };
    let run = emulator::run(m, &media, &dir, &opts)?;
    // Kept for a look at what the guests printed.
    std::fs::write(dir.join("serial.log"), &run.outcome.serial)?;
    Ok(run)
}

/// `bench exits N` in the root: CPUID round trips through the hypervisor.
fn bench_exits(art: &build::Artifacts, m: &Machine, n: u64) -> Result<(f64, u64)> {
    let modules = vec![(art.root_partition.clone(), "root".to_string())];
    let script = [format!("bench exits {n}"), "shutdown".to_string()];
    let start = std::time::Instant::now();
    let run = run_script(art, m, &modules, "bench-exits", &script, 600)?;
    let wall = start.elapsed().as_secs_f64();
    let line = run
        .outcome
        .serial
        .lines()
        .find(|l| l.starts_with("bench exits:"))
        .context("no bench result")?;
    let per: u64 = line
        .split(", ")
        .find_map(|p| p.strip_suffix(" ticks per round trip"))
        .and_then(|v| v.parse().ok())
        .context("unreadable bench result")?;
    Ok((wall, per))
}

fn exits(art: &build::Artifacts, runs: usize) -> Result<()> {
    println!("== CPUID exit round trips (root partition `bench exits N`), median of {runs}");
    // 50 000 exits apart: the difference must dwarf the boot-time jitter (seconds under Bochs).
    let (small, large) = (1_000u64, 51_000u64);
    for (label, mut m) in [
        (
            "qemu (AMD SVM+NPT)",
            Machine::new(Emulator::Qemu, Boot::Multiboot, 1, 256),
        ),
        (
            "bochs (Intel VMX+EPT)",
            Machine::new(Emulator::Bochs, Boot::Grub, 1, 128),
        ),
    ] {
        m.cmdline = String::new();
        let (mut rate, mut ticks) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (t_small, _) = bench_exits(art, &m, small)?;
            let (t_large, per) = bench_exits(art, &m, large)?;
            rate.push((large - small) as f64 / (t_large - t_small).max(1e-6));
            ticks.push(per as f64);
        }
        println!(
            "  {label:<24} {:>9.0} exits/s wall, {:>7.0} TSC ticks per round trip",
            median(rate),
            median(ticks)
        );
        if m.emulator == Emulator::Qemu {
            m.count_instructions = true;
            let per: Vec<f64> = (0..runs)
                .map(|_| bench_exits(art, &m, small).map(|r| r.1 as f64))
                .collect::<Result<_>>()?;
            println!("  {:<24} {:>7.0} instructions per round trip (-icount shift=0: TSC = instructions)", "", median(per));
        }
    }
    Ok(())
}

/// The "world switches" total of each `host stats` table in a log.
fn world_switch_totals(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.starts_with("world switches"))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect()
}

/// The guest kernel's clock when its /init ran (`LINUX-INIT: uptime S`).
fn linux_uptime(log: &str) -> Option<f64> {
    log.lines()
        .find_map(|l| l.split("LINUX-INIT: uptime ").nth(1)?.trim().parse().ok())
}

/// The exits by reason of the last `vm show` in `log`.
fn exits_by_reason(log: &str) -> Vec<(String, u64)> {
    log.lines()
        .rev()
        .find_map(|l| l.trim_start().strip_prefix("by reason:"))
        .map(|l| {
            l.split(", ")
                .filter_map(|p| {
                    let (name, n) = p.trim().rsplit_once(' ')?;
                    Some((name.to_string(), n.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Debian's kernel as a guest (QEMU with -icount, one processor, so the
/// TSC counts every instruction the machine executes):
/// - the kernel's clock at /init under our hypervisor ÷ the same kernel and
///   initramfs on plain QEMU: instructions from the kernel's clock start to
///   its init, ours included (the XZ decompressor before it runs alike in
///   both and is not counted);
/// - exits by reason for that boot;
/// - exits per second, by reason, of an idle guest (plain TCG).
fn linux(art: &build::Artifacts) -> Result<()> {
    let kit = crate::linux_kit::build()?;
    let cmdline = |test: &str| {
        format!("console=ttyS0 earlyprintk=serial,ttyS0,115200 nokaslr pci=off io_delay=none linuxtest={test}")
    };
    println!(
        "== Linux guest (Debian {}), QEMU -icount, 1 processor",
        kit.kernel_release
    );
    // Plain QEMU: the same kernel and initramfs, no hypervisor.
    let plain = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-m",
            "512",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
            "-icount",
            "shift=0",
        ])
        .arg("-kernel")
        .arg(&kit.kernel)
        .arg("-initrd")
        .arg(&kit.initrd)
        .args(["-append", &cmdline("poweroff")])
        .output()
        .context("qemu-system-x86_64")?;
    let plain_log = String::from_utf8_lossy(&plain.stdout);
    let plain_up = linux_uptime(&plain_log).context("plain QEMU: no LINUX-INIT: uptime")?;
    let mut modules = vec![(art.root_partition.clone(), "root".to_string())];
    modules.push((kit.kernel.clone(), "linux".to_string()));
    modules.push((kit.initrd.clone(), "linux-initrd".to_string()));
    let mut m = Machine::new(Emulator::Qemu, Boot::Multiboot, 1, 1024);
    m.cmdline = String::new();
    m.count_instructions = true;
    let new = |test: &str| {
        format!(
            "vm new linux --kernel linux --initrd linux-initrd --memory 256M --vcpus 1 --cmdline \"{}\"",
            cmdline(test)
        )
    };
    // One boot to power-off.
    let script: Vec<String> = vec![
        new("poweroff"),
        "vm start linux".into(),
        "vm wait linux 600".into(),
        "vm show linux".into(),
        "vm console linux --log".into(),
        "shutdown".into(),
    ];
    let run = run_script(art, &m, &modules, "bench-linux", &script, 1200)?;
    let log = &run.outcome.serial;
    let ours = linux_uptime(log).context("under the hypervisor: no LINUX-INIT: uptime")?;
    println!(
        "  kernel clock at /init: {ours:.3} s under the hypervisor, {plain_up:.3} s on plain QEMU: ratio {:.2} (goal <= 1.10)",
        ours / plain_up
    );
    let boot = exits_by_reason(log);
    let total: u64 = boot.iter().map(|(_, n)| n).sum();
    print!("  exits for one boot to power-off: {total}:");
    for (name, n) in &boot {
        print!(" {name} {n}");
    }
    println!();
    // Idle: exits over 25 s once the guest has settled (from 30 s after
    // its start, its /init sleeping 60 s), without -icount (with it, 30
    // emulated seconds of an idle machine took longer than the time limit).
    m.count_instructions = false;
    let script: Vec<String> = vec![
        new("idle"),
        "vm start linux".into(),
        "vm wait linux 30".into(),
        "vm show linux".into(),
        format!("vm wait linux {IDLE_WINDOW_S}"),
        "vm show linux".into(),
        "vm stop linux --turn-off".into(),
        "shutdown".into(),
    ];
    let run = run_script(art, &m, &modules, "bench-linux", &script, 1200)?;
    let log = &run.outcome.serial;
    let shows: Vec<&str> = log.split("root> vm show linux").skip(1).collect();
    if shows.len() < 2 {
        bail!("idle Linux: two vm show outputs expected");
    }
    let (before, after) = (exits_by_reason(shows[0]), exits_by_reason(shows[1]));
    let count =
        |v: &[(String, u64)], name: &str| v.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
    let mut per_second = Vec::new();
    for (name, n) in &after {
        let d = n - count(&before, name);
        if d > 0 {
            per_second.push(format!("{name} {:.1}", d as f64 / IDLE_WINDOW_S as f64));
        }
    }
    let all: u64 =
        after.iter().map(|(_, n)| n).sum::<u64>() - before.iter().map(|(_, n)| n).sum::<u64>();
    println!(
        "  idle guest: {:.1} exits per second (goal <= 20): {}",
        all as f64 / IDLE_WINDOW_S as f64,
        per_second.join(", ")
    );
    Ok(())
}

/// The idle Linux guest's measured window, seconds.
const IDLE_WINDOW_S: u64 = 25;

/// Seconds a guest's dd took: "... from uptime T0 to T1" after `prefix`.
/// The shortest of the guest's rounds (`dd_bench` runs three): a TCG
/// machine's figures move with the build host's other work.
fn dd_seconds(log: &str, prefix: &str) -> Option<f64> {
    log.lines()
        .filter(|l| l.contains(prefix))
        .filter_map(|line| {
            let (_, rest) = line.split_once("from uptime ")?;
            let (t0, t1) = rest.trim().split_once(" to ")?;
            let (t0, t1): (f64, f64) = (t0.parse().ok()?, t1.parse().ok()?);
            (t1 > t0).then_some(t1 - t0)
        })
        .min_by(f64::total_cmp)
}

/// The root's `bench disk` figures, the best of its runs: (write, read) MiB/s.
fn root_disk_rates(log: &str) -> Option<(f64, f64)> {
    let rate = |line: &str, after: &str| -> Option<f64> {
        let (_, rest) = line.split_once(after)?;
        let (_, rest) = rest.split_once('(')?;
        rest.split_whitespace().next()?.parse().ok()
    };
    let best = |after: &str| {
        log.lines()
            .filter(|l| l.starts_with("bench disk: "))
            .filter_map(|l| rate(l, after))
            .max_by(f64::total_cmp)
    };
    Some((best("write ")?, best("read ")?))
}

/// Sequential 1 MiB reads and writes: a Linux guest's `dd` with direct I/O
/// on a fixed VHDX against the root's own file I/O on the same disk, in
/// one boot (QEMU).
fn storage(art: &build::Artifacts) -> Result<()> {
    let kit = crate::linux_kit::build()?;
    println!("== storage: 192 MiB in 1 MiB requests, guest dd (direct I/O) on a fixed VHDX over VMBus / the root's own I/O through its file system's mapping, same disk, QEMU; the best of 3 rounds each");
    let mut modules = vec![(art.root_partition.clone(), "root".to_string())];
    modules.extend(kit.modules());
    let dir = build::work_dir().join("bench-storage");
    std::fs::create_dir_all(&dir)?;
    let disk = dir.join("host-disk.img");
    image::host_disk(&disk, 512, "BENCH")?;
    let mut m = Machine::new(Emulator::Qemu, Boot::Multiboot, 2, 1024);
    m.cmdline = String::new();
    m.disk_image = Some(disk.display().to_string());
    let script: Vec<String> = vec![
        "bench disk 192".into(),
        "bench disk 192".into(),
        "bench disk 192".into(),
        "vhd new bench.vhdx --size 256M --type fixed".into(),
        "vm new linux --kernel linux --initrd linux-initrd --memory 256M --vcpus 1 --cmdline \"console=ttyS0 nokaslr pci=off io_delay=none linuxtest=dd\"".into(),
        "vm disk attach linux bench.vhdx".into(),
        "vm start linux".into(),
        "vm wait linux 1200".into(),
        "vm console linux --log".into(),
        "vm show linux".into(),
        "shutdown".into(),
    ];
    let run = run_script(art, &m, &modules, "bench-storage", &script, 1800)?;
    let log = &run.outcome.serial;
    std::fs::write(dir.join("serial.log"), log)?;
    let (root_write, root_read) =
        root_disk_rates(log).context("no bench disk line from the root")?;
    let guest = |what: &str| dd_seconds(log, what).map(|s| 192.0 / s);
    let (Some(guest_write), Some(guest_read)) = (guest("dd write: "), guest("dd read: ")) else {
        bail!("no dd summary from the guest (see {})", dir.display());
    };
    println!(
        "  write: guest {guest_write:.1} MiB/s, root {root_write:.1} MiB/s: ratio {:.2} (goal >= 0.8)",
        guest_write / root_write
    );
    println!(
        "  read:  guest {guest_read:.1} MiB/s, root {root_read:.1} MiB/s: ratio {:.2} (goal >= 0.8)",
        guest_read / root_read
    );
    if let Some(source) = guest("dd source: ") {
        println!("  (the guest's dd reads its zeros from /dev/zero at {source:.1} MiB/s)");
    }
    // The ceiling under this emulator: the same kernel and dd on plain
    // QEMU's virtio disk, no hypervisor and no VMBus.
    let (ref_write, ref_read) = reference_dd(&kit, &dir)?;
    println!(
        "  reference, the same kernel on plain QEMU's virtio disk (no hypervisor): write {ref_write:.1} MiB/s ({:.2} of the root's), read {ref_read:.1} MiB/s ({:.2}); the guest reaches {:.2} and {:.2} of it",
        ref_write / root_write,
        ref_read / root_read,
        guest_write / ref_write,
        guest_read / ref_read
    );
    Ok(())
}

/// `linuxtest=dd-reference`: the kit's kernel booted by plain QEMU (TCG, 1
/// processor, 256 MiB like the guest) on a 256 MiB virtio disk of zeros
/// (QEMU's default write-back cache, as for the root's disk):
/// (write, read) MiB/s.
fn reference_dd(kit: &crate::linux_kit::Kit, dir: &Path) -> Result<(f64, f64)> {
    let disk = dir.join("reference-disk.img");
    // Written out, not sparse: the guest's VHDX lies in blocks of the host
    // disk that the root's own benchmark wrote before.
    std::fs::write(&disk, vec![0u8; 256 << 20])?;
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-cpu", "qemu64", "-smp", "1", "-m", "256M"])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(&kit.kernel)
        .arg("-initrd")
        .arg(&kit.initrd)
        .args([
            "-append",
            "console=ttyS0 nokaslr io_delay=none linuxtest=dd-reference",
        ])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=none,id=d", disk.display()))
        .args(["-device", "virtio-blk-pci,drive=d"]);
    // QEMU ends with the guest's power-off; a hung guest is ended at 10 min.
    let (log, killed) = emulator::run_to_end(qemu, Duration::from_secs(600))?;
    std::fs::write(dir.join("reference-serial.log"), &log)?;
    let _ = std::fs::remove_file(&disk);
    let rate = |what: &str| dd_seconds(&log, what).map(|s| 192.0 / s);
    match (rate("dd write: "), rate("dd read: ")) {
        (Some(w), Some(r)) => Ok((w, r)),
        _ => bail!(
            "no dd summary from the reference machine{} (see {})",
            if killed {
                ", ended at its 10 min limit"
            } else {
                ""
            },
            dir.join("reference-serial.log").display()
        ),
    }
}

/// Frames into switch `name` (all its ports) at each of its `switch show`s.
fn switch_frames(log: &str, name: &str) -> Vec<u64> {
    log.split(&format!("switch {name}: "))
        .skip(1)
        .map(|block| {
            let block = block.split("root>").next().unwrap_or("");
            block
                .lines()
                .filter_map(|l| {
                    l.trim()
                        .strip_prefix("in ")?
                        .split(' ')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum()
        })
        .collect()
}

/// Guest to guest over an internal switch, and guest to the outside over
/// the external switch (QEMU's user network forwards 10.0.2.100:5000 to a
/// sink): 16 MiB through busybox nc, timed by the sender's kernel; frames
/// through the switch per world switch over the same span (`host stats`
/// and `switch show` before and after; the idle guests' own exits count).
fn network(art: &build::Artifacts) -> Result<()> {
    let kit = crate::linux_kit::build()?;
    println!("== network: 16 MiB over TCP (busybox nc), Linux guest to guest over an internal switch, and to QEMU's user network over the external switch, QEMU, 2 processors");
    let mut modules = vec![(art.root_partition.clone(), "root".to_string())];
    modules.extend(kit.modules());
    let mut m = Machine::new(Emulator::Qemu, Boot::Multiboot, 2, 1536);
    m.cmdline = String::new();
    m.nic = Some(system_tests::NicNetwork::Sink);
    let vm = |name: &str, args: &str| {
        format!("vm new {name} --kernel linux --initrd linux-initrd --memory 256M --vcpus 1 --cmdline \"console=ttyS0 nokaslr pci=off io_delay=none linuxtest=netbench {args}\"")
    };
    let script: Vec<String> = vec![
        "switch new lan".into(),
        "switch new wan --external".into(),
        vm("b", "netip=10.0.0.2/24 netrole=recv"),
        "vm nic add b --switch lan".into(),
        vm("a", "netip=10.0.0.1/24 netpeer=10.0.0.2 netrole=send"),
        "vm nic add a --switch lan".into(),
        vm(
            "c",
            "netip=dhcp netpeer=10.0.2.100 netgate=10.0.2.2 netrole=send",
        ),
        "vm nic add c --switch wan".into(),
        "vm start b".into(),
        "vm start a".into(),
        "vm wait a --for text \"netbench: ready\" 1200".into(),
        "host stats".into(),
        "switch show lan".into(),
        "vm wait a --for text \"netbench: done\" 900".into(),
        "host stats".into(),
        "switch show lan".into(),
        "vm stop a --turn-off".into(),
        "vm stop b --turn-off".into(),
        "vm start c".into(),
        "vm wait c --for text \"netbench: ready\" 1200".into(),
        "host stats".into(),
        "switch show wan".into(),
        "vm wait c --for text \"netbench: done\" 900".into(),
        "host stats".into(),
        "switch show wan".into(),
        "vm console a --log".into(),
        "vm console c --log".into(),
        "shutdown".into(),
    ];
    let run = run_script(art, &m, &modules, "bench-network", &script, 2400)?;
    let log = &run.outcome.serial;
    let dir = build::work_dir().join("bench-network");
    std::fs::write(dir.join("serial.log"), log)?;
    let switches = world_switch_totals(log);
    for (what, prefix, switch, at) in [
        (
            "guest to guest (internal switch)",
            "netbench: 16 MiB to 10.0.0.2",
            "lan",
            0,
        ),
        (
            "guest to outside (external switch)",
            "netbench: 16 MiB to 10.0.2.100",
            "wan",
            2,
        ),
    ] {
        let secs = dd_seconds(log, prefix)
            .with_context(|| format!("{what}: no transfer time (see {})", dir.display()))?;
        let frames = switch_frames(log, switch);
        let (Some(f0), Some(f1)) = (frames.first(), frames.get(1)) else {
            bail!("{what}: no switch counters (see {})", dir.display());
        };
        let (Some(w0), Some(w1)) = (switches.get(at), switches.get(at + 1)) else {
            bail!("{what}: no host stats (see {})", dir.display());
        };
        let (frames, worlds) = (f1 - f0, w1 - w0);
        println!(
            "  {what:<36} {:>6.1} MiB/s; {frames} frames, {worlds} world switches: {:.2} frames per world switch",
            16.0 / secs,
            frames as f64 / worlds.max(1) as f64
        );
    }
    Ok(())
}

/// Runs a root-shell script with the test guests as modules on one
/// processor of each emulated machine: plain QEMU (AMD), QEMU with
/// `-icount` (the TSC counts instructions) and Bochs (Intel). Each run with
/// its label and whether it counted instructions.
fn guest_runs(
    art: &build::Artifacts,
    dir: &str,
    script: &[String],
) -> Result<Vec<(&'static str, emulator::Run, bool)>> {
    guest_runs_on(art, dir, script, 1, true, None)
}

/// [`guest_runs`] on `cpus` processors, the `-icount` run only if
/// `with_icount`, Bochs at `bochs_ips` instructions per emulated second if
/// given.
fn guest_runs_on(
    art: &build::Artifacts,
    dir: &str,
    script: &[String],
    cpus: u32,
    with_icount: bool,
    bochs_ips: Option<u64>,
) -> Result<Vec<(&'static str, emulator::Run, bool)>> {
    let mut modules = vec![(art.root_partition.clone(), "root".to_string())];
    modules.extend(art.guests.iter().cloned());
    let mut runs = Vec::new();
    for (label, mut m, icount) in [
        (
            "qemu (AMD SVM+NPT)",
            Machine::new(Emulator::Qemu, Boot::Multiboot, cpus, 256),
            false,
        ),
        (
            "qemu -icount (instructions)",
            Machine::new(Emulator::Qemu, Boot::Multiboot, cpus, 256),
            true,
        ),
        (
            "bochs (Intel VMX+EPT)",
            Machine::new(Emulator::Bochs, Boot::Grub, cpus, 256),
            false,
        ),
    ] {
        if icount && !with_icount {
            continue;
        }
        m.cmdline = String::new();
        m.count_instructions = icount;
        m.bochs_ips = bochs_ips.unwrap_or(m.bochs_ips);
        runs.push((
            label,
            run_script(art, &m, &modules, dir, script, 900)?,
            icount,
        ));
    }
    Ok(runs)
}

/// The root's script for the `vmbus-echo` benchmarks.
fn vmbus_echo_script() -> Vec<String> {
    [
        "vm new e --memory 8M --image vmbus-echo",
        "vm device add e echo",
        "vm disk attach e ram:1M",
        "vm start e",
        "vm wait e --for text \"waiting for the device to be removed\" 600",
        "vm console e --log",
        "vm stop e --turn-off",
        "shutdown",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// VMBus between a guest and the root: the `vmbus-echo` guest's own
/// figures (TSC ticks, and world switches of all processors from the echo
/// device's counter) per ping-pong round trip, per batch of 32 packets each
/// way, per control-message round trip and per signalled event.
fn vmbus_echo(art: &build::Artifacts) -> Result<()> {
    println!("== VMBus (guest vmbus-echo, the root's echo device and SCSI controller on a RAM disk), 1 processor");
    let script = vmbus_echo_script();
    for (label, run, icount) in guest_runs(art, "bench-vmbus", &script)? {
        let unit = if icount { "instructions" } else { "TSC ticks" };
        println!("  {label}:");
        for what in [
            "ping-pong round trip",
            "batch of 32 packets each way",
            "stream of batches of 32, polled",
            "control message round trip",
            "signalled event",
            "storage read of 64 KiB",
            "storage write of 64 KiB",
            "memory copy of 64 KiB",
        ] {
            let line = run
                .outcome
                .serial
                .lines()
                .find_map(|l| l.split(&format!("vmbus-echo: bench {what}: ")).nth(1))
                .with_context(|| format!("{label}: no figures for {what}"))?;
            let ticks: u64 = line
                .split(", ")
                .nth(1)
                .and_then(|t| t.split(" ticks").next())
                .and_then(|t| t.parse().ok())
                .with_context(|| format!("{label}: unreadable line {line}"))?;
            let switches = system_tests::echo_bench_switches(&run.outcome.serial, what)
                .with_context(|| format!("{label}: unreadable line {line}"))?;
            println!("    {what:<32} {switches:>7.2} world switches, {ticks:>8} {unit}");
        }
    }
    Ok(())
}

/// The stream of `vmbus-echo` with its VP on LP 1 and the root on LP 0,
/// both polling: world switches per batch of 32 (goal: at most one), the
/// signals each way, packets per second. QEMU without `-icount` (which
/// runs the processors in turn on one thread, so a polling root would
/// starve the guest) and Bochs.
fn vmbus_stream(art: &build::Artifacts) -> Result<()> {
    // A VM that is never started takes LP 0 first (guest VPs go to the LP
    // with the fewest), so the echo guest runs on LP 1.
    let mut script = vec!["vm new held --memory 4M --image hello".to_string()];
    script.extend(vmbus_echo_script());
    println!("== VMBus stream (guest vmbus-echo on LP 1, the root on LP 0), 2 processors");
    // Bochs at 50 M instructions per emulated second, as the Linux cases
    // run: what is left per batch is the scheduler's host tick, a rate in
    // emulated time, which the default 10 M makes five times denser.
    let runs = guest_runs_on(art, "bench-vmbus-2lp", &script, 2, false, Some(50_000_000))?;
    for (label, run, icount) in runs {
        let unit = if icount { "instructions" } else { "TSC ticks" };
        let log = &run.outcome.serial;
        let what = "stream of batches of 32, polled";
        let line = log
            .lines()
            .find_map(|l| l.split(&format!("vmbus-echo: bench {what}: ")).nth(1))
            .with_context(|| format!("{label}: no figures for the stream"))?;
        let ticks = line
            .split(", ")
            .nth(1)
            .and_then(|t| t.split(" ticks").next())
            .unwrap_or("?");
        let switches = system_tests::echo_bench_switches(log, what)
            .with_context(|| format!("{label}: unreadable line {line}"))?;
        let said = |prefix: &str| {
            log.lines()
                .filter_map(|l| l.strip_prefix("vmbus-echo: stream: "))
                .find(|l| l.contains(prefix))
                .unwrap_or("?")
                .to_string()
        };
        println!("  {label}:");
        println!("    per batch of 32 {switches:>7.2} world switches, {ticks:>8} {unit}");
        println!("    {}; {}", said("signals"), said("packets per second"));
    }
    Ok(())
}

/// An intercepted I/O port write's round trip (guest → hypervisor → root's
/// VM worker → hypervisor → guest): world switches per write from the root's
/// `host stats` around the run, TSC ticks per write from the guest itself
/// (QEMU with -icount: instructions).
fn io_intercepts(art: &build::Artifacts) -> Result<()> {
    const WRITES: u64 = 20_000; // tests/guests/src/bin/iobench.rs
    println!("== intercepted I/O port writes (guest iobench: {WRITES} OUTs handled by the root), 1 processor");
    let script: Vec<String> = [
        "vm new io --memory 4M --image iobench",
        "host stats",
        "vm start io",
        "vm wait io",
        "host stats",
        "vm console io --log",
        "shutdown",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (label, run, icount) in guest_runs(art, "bench-io", &script)? {
        let log = &run.outcome.serial;
        let totals = world_switch_totals(log);
        let per_switch = match totals.as_slice() {
            [before, after, ..] => (after - before) as f64 / WRITES as f64,
            _ => bail!("{label}: no host stats in the log"),
        };
        let ticks: u64 = log
            .lines()
            .find_map(|l| {
                l.strip_prefix("iobench: ")?
                    .split(", ")
                    .nth(1)?
                    .strip_suffix(" ticks per round trip")?
                    .parse()
                    .ok()
            })
            .context("no iobench result")?;
        let unit = if icount { "instructions" } else { "TSC ticks" };
        println!("  {label:<28} {per_switch:>5.2} world switches, {ticks:>7} {unit} per intercepted write");
    }
    Ok(())
}
