//! `cargo xtask bench`: the hypervisor's size and boot time per machine.
//! Figures go into docs/benchmarks.md by hand, with this command.
use crate::{build, emulator, image, prereq};
use anyhow::{bail, Context, Result};
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
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().context("--runs needs a number")?.parse()?,
            other => bail!("unknown option \"{other}\" for bench"),
        }
    }
    prereq::ensure()?;
    let art = build::build()?;
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
    Ok(0)
}
