//! `cargo xtask`: the one entry point to build, run, test and measure.
//!
//! ```text
//! cargo xtask build
//! cargo xtask run [--emulator qemu|bochs] [--boot multiboot|uefi|grub] [--cpus N]
//!                 [--memory SIZE] [--cpu-model NAME] [--timeout SECS] [--no-root] [--hypervisor-log]
//!                 [--module PATH[:NAME]]... [--guest linux] [-- HYPERVISOR_COMMAND_LINE]
//! cargo xtask test [--filter TEXT] [--jobs N] [--no-host-tests] [--no-gates] [--fuzz-seconds N]
//! cargo xtask bench [--runs N]
//! cargo xtask linux-kit
//! ```
mod bench;
mod build;
mod emulator;
mod image;
mod linux_kit;
mod prereq;
mod test;
mod tiny_guests;

use anyhow::{bail, Context, Result};
use std::time::Duration;
use system_tests::{Boot, Emulator, Machine};

fn usage() -> ! {
    eprintln!(
        "usage:\n  cargo xtask build\n  \
         cargo xtask run [--emulator qemu|bochs] [--boot multiboot|uefi|grub] [--cpus N] [--memory SIZE]\n                  \
         [--cpu-model NAME] [--timeout SECS] [--no-root] [--hypervisor-log]\n                  \
         [--module PATH[:NAME]]... [--guest linux] [-- HYPERVISOR_COMMAND_LINE]\n  \
         cargo xtask test [--filter TEXT] [--jobs N] [--no-host-tests] [--no-gates] [--fuzz-seconds N]\n  \
         cargo xtask bench [--runs N]\n  \
         cargo xtask linux-kit"
    );
    std::process::exit(2)
}

/// `128M`, `1G`, `4096` (MiB) → MiB.
fn parse_size(s: &str) -> Result<u64> {
    let (num, mult) = match s.to_ascii_uppercase() {
        t if t.ends_with('G') => (t[..t.len() - 1].to_string(), 1024),
        t if t.ends_with('M') => (t[..t.len() - 1].to_string(), 1),
        t => (t, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("bad memory size \"{s}\" (e.g. 512M, 2G)"))?;
    if n * mult < 64 {
        bail!("memory size {s} is too small: the hypervisor needs at least 64M");
    }
    Ok(n * mult)
}

/// `--module PATH[:NAME]`: a boot module, named by its file name unless NAME
/// is given. A colon followed by a slash stays part of the path.
fn parse_module(spec: &str) -> Result<(std::path::PathBuf, String)> {
    let (path, name) = match spec.rsplit_once(':') {
        Some((path, name)) if !path.is_empty() && !name.is_empty() && !name.contains('/') => {
            (std::path::PathBuf::from(path), name.to_string())
        }
        _ => {
            let path = std::path::PathBuf::from(spec);
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("--module {spec}: no file name to name it by"))?
                .to_string();
            (path, name)
        }
    };
    // QEMU separates Multiboot modules with commas, GRUB and our loader's
    // configuration separate words with blanks.
    if name.contains(|c: char| c.is_whitespace() || c == ',') {
        bail!("--module {spec}: the name \"{name}\" may not contain blanks or commas");
    }
    if path.to_string_lossy().contains(',') {
        bail!("--module {spec}: the path may not contain commas");
    }
    if !path.is_file() {
        bail!("--module {spec}: {} is not a file", path.display());
    }
    Ok((path, name))
}

/// A guest `run` sets up for the root to start (`--guest`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Guest {
    Linux,
}

struct Args(std::vec::IntoIter<String>);

impl Args {
    fn value(&mut self, flag: &str) -> Result<String> {
        self.0
            .next()
            .with_context(|| format!("{flag} needs a value"))
    }
}

fn run_cmd(mut args: Args) -> Result<i32> {
    let mut emulator = Emulator::Qemu;
    let mut boot = None;
    let mut cpus = 2;
    let mut memory = None;
    let mut model = None;
    let mut timeout = 1800;
    let mut with_root = true;
    let mut show_log = false;
    let mut cmdline = String::new();
    let mut extra_modules = Vec::new();
    let mut guest = None;
    while let Some(a) = args.0.next() {
        match a.as_str() {
            "--emulator" => {
                emulator = match args.value(&a)?.as_str() {
                    "qemu" => Emulator::Qemu,
                    "bochs" => Emulator::Bochs,
                    other => bail!("unknown emulator \"{other}\" (qemu or bochs)"),
                }
            }
            "--boot" => {
                boot = Some(match args.value(&a)?.as_str() {
                    "multiboot" => Boot::Multiboot,
                    "uefi" => Boot::Uefi,
                    "grub" => Boot::Grub,
                    other => bail!("unknown boot path \"{other}\" (multiboot, uefi or grub)"),
                })
            }
            "--cpus" => cpus = args.value(&a)?.parse().context("--cpus takes a number")?,
            "--memory" => memory = Some(parse_size(&args.value(&a)?)?),
            "--cpu-model" => model = Some(args.value(&a)?),
            "--timeout" => timeout = args.value(&a)?.parse().context("--timeout takes seconds")?,
            "--no-root" => with_root = false,
            "--hypervisor-log" => show_log = true,
            "--module" => extra_modules.push(parse_module(&args.value(&a)?)?),
            "--guest" => {
                guest = Some(match args.value(&a)?.as_str() {
                    "linux" => Guest::Linux,
                    other => bail!("unknown guest \"{other}\" (linux)"),
                })
            }
            "--" => {
                cmdline = args.0.by_ref().collect::<Vec<_>>().join(" ");
            }
            other => bail!("unknown option \"{other}\" for run"),
        }
    }
    if !(1..=64).contains(&cpus) {
        bail!("--cpus must be between 1 and 64");
    }
    let boot = boot.unwrap_or(match emulator {
        Emulator::Qemu => Boot::Multiboot,
        Emulator::Bochs => Boot::Grub,
    });
    if emulator == Emulator::Bochs && boot != Boot::Grub {
        bail!("Bochs boots through GRUB only: use --boot grub");
    }
    if guest.is_some() && !with_root {
        bail!("--guest needs the root partition: drop --no-root");
    }
    // A Linux guest's 256 MiB, its kernel and initramfs held by the root as
    // modules and again as guest memory: 512 MiB is tight.
    let memory = memory.unwrap_or(if guest == Some(Guest::Linux) {
        1024
    } else {
        512
    });
    prereq::ensure()?;
    let art = build::build()?;
    let dir = build::work_dir().join("run");
    std::fs::create_dir_all(&dir)?;
    if guest == Some(Guest::Linux) {
        let kit = linux_kit::build()?;
        extra_modules.extend(kit.modules());
        extra_modules.push(build::startup_module(&dir, &linux_kit::startup_lines())?);
    }
    let mut machine = Machine::new(emulator, boot, cpus, memory);
    machine.cmdline = cmdline;
    if emulator == Emulator::Qemu {
        // The root's own disk, kept between runs: its FAT32 holds the VHD
        // files (`vhd new`, `vm disk attach NAME FILE`).
        let disk = build::work_dir().join("host-disk.img");
        if !disk.exists() {
            image::host_disk(&disk, HOST_DISK_MIB, "ROOTDISK")?;
            eprintln!(
                "xtask: made the root's disk {} ({HOST_DISK_MIB} MiB, FAT32; mtools reads it: mdir -i {} ::)",
                disk.display(),
                disk.display()
            );
        } else {
            eprintln!(
                "xtask: the root's disk is {} (kept between runs)",
                disk.display()
            );
        }
        machine.disk_image = Some(disk.display().to_string());
        // The root's NIC, on QEMU's user-mode network (NATed to the
        // host's): the external port of `switch new NAME --external`.
        machine.nic = Some(system_tests::NicNetwork::Open);
    }
    if let Some(m) = model {
        machine.cpu_model = m;
    }
    // The root, and the test guests as images for `vm new --image NAME`;
    // then the modules --module and --guest add.
    let mut modules = if with_root {
        let mut m = vec![(art.root_partition.clone(), "root".to_string())];
        m.extend(art.guests.iter().cloned());
        m
    } else {
        Vec::new()
    };
    modules.extend(extra_modules);
    let mut names = std::collections::BTreeSet::new();
    if let Some((_, name)) = modules.iter().find(|(_, n)| !names.insert(n.as_str())) {
        bail!("two boot modules are named \"{name}\"");
    }
    let media = image::make(boot, &art, &machine.cmdline, &modules, &dir)?;
    eprintln!(
        "xtask: {emulator} {boot}, {cpus} CPUs ({}), {memory} MiB, time limit {timeout} s; serial console follows",
        machine.cpu_model
    );
    // Without a root, the hypervisor's log is all there is to see.
    let show_log = show_log || !with_root;
    eprintln!(
        "xtask: the hypervisor's log (COM2) goes to {}{}",
        emulator::hypervisor_log_path(&dir).display(),
        if show_log {
            " and to stderr"
        } else {
            " (--hypervisor-log shows it here too; `host log` in the root shell)"
        }
    );
    // A terminal is passed straight through; piped input is typed one line per
    // root prompt, so nothing is lost before the root's console is ready.
    use std::io::{BufRead, IsTerminal};
    let piped: Vec<String> = if std::io::stdin().is_terminal() || !with_root {
        Vec::new()
    } else {
        std::io::stdin()
            .lock()
            .lines()
            .map_while(Result::ok)
            .collect()
    };
    let input = if std::io::stdin().is_terminal() {
        emulator::Input::Stdin
    } else if with_root {
        emulator::Input::Script {
            prompt: system_tests::ROOT_PROMPT,
            lines: &piped,
        }
    } else {
        emulator::Input::Nothing
    };
    let opts = emulator::RunOptions {
        timeout: Duration::from_secs(timeout),
        echo: true,
        input,
        monitor_trigger: None,
        monitor_commands: &[],
        echo_hypervisor_log: show_log,
    };
    let run = emulator::run(&machine, &media, &dir, &opts)?;
    println!();
    Ok(match (run.outcome.success, run.outcome.timed_out) {
        (Some(true), _) => 0,
        (_, true) => {
            eprintln!("xtask: time limit of {timeout} s reached (raise it with --timeout)");
            124
        }
        _ => 1,
    })
}

/// The size of the root's disk that `cargo xtask run` makes.
const HOST_DISK_MIB: u64 = 4096;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        usage();
    }
    let cmd = args.remove(0);
    let args = Args(args.into_iter());
    let result = match cmd.as_str() {
        "build" => build::build().map(|a| {
            println!("{}\n{}", a.hypervisor.display(), a.uefi_loader.display());
            0
        }),
        "run" => run_cmd(args),
        "test" => test::main(args.0.collect()),
        "bench" => bench::main(args.0.collect()),
        // The Linux test kit alone: its two files' paths.
        "linux-kit" => linux_kit::build().map(|k| {
            println!("{}\n{}", k.kernel.display(), k.initrd.display());
            0
        }),
        _ => usage(),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_flags_name_by_file_or_after_the_colon() {
        let dir = std::env::temp_dir().join(format!("xtask-module-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("disk.img");
        std::fs::write(&file, b"x").unwrap();
        let f = file.to_str().unwrap();
        assert_eq!(
            parse_module(f).unwrap(),
            (file.clone(), "disk.img".to_string())
        );
        assert_eq!(
            parse_module(&format!("{f}:data")).unwrap(),
            (file.clone(), "data".to_string())
        );
        assert!(parse_module(&format!("{f}:two words")).is_err());
        assert!(parse_module(&format!("{f}:a,b")).is_err());
        assert!(parse_module(&dir.join("absent").to_string_lossy()).is_err());
        // A colon in a directory name stays part of the path.
        let odd = dir.join("a:b");
        std::fs::create_dir_all(&odd).unwrap();
        std::fs::write(odd.join("m"), b"x").unwrap();
        let o = odd.join("m");
        assert_eq!(
            parse_module(o.to_str().unwrap()).unwrap(),
            (o.clone(), "m".to_string())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
