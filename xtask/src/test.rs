//! `cargo xtask test`: the gates (rustfmt, clippy), host unit tests, fuzzing,
//! then the boot matrix.
use crate::{build, emulator, image, linux_kit, prereq};
use anyhow::{bail, Context, Result};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use system_tests::{judge, matrix, ready_for_monitor, Case, Expect, ROOT_PROMPT};

struct Options {
    filter: Option<String>,
    jobs: usize,
    host_tests: bool,
    /// rustfmt and clippy before the host unit tests (when those run).
    gates: bool,
    /// Seconds per fuzz target (0: no fuzzing).
    fuzz_seconds: u64,
    /// Each selected boot case this many times (hunting a rare failure).
    repeat: usize,
}

fn parse(args: Vec<String>) -> Result<Options> {
    let mut o = Options {
        filter: None,
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
        host_tests: true,
        gates: true,
        fuzz_seconds: 30,
        repeat: 1,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--filter" => o.filter = Some(it.next().context("--filter needs text")?),
            "--jobs" => o.jobs = it.next().context("--jobs needs a number")?.parse()?,
            "--repeat" => o.repeat = it.next().context("--repeat needs a number")?.parse()?,
            "--no-host-tests" => o.host_tests = false,
            "--no-gates" => o.gates = false,
            "--fuzz-seconds" => {
                o.fuzz_seconds = it
                    .next()
                    .context("--fuzz-seconds needs a number")?
                    .parse()?
            }
            other => bail!("unknown option \"{other}\" for test"),
        }
    }
    o.jobs = o.jobs.max(1);
    Ok(o)
}

fn cargo(args: &[&str]) -> Result<bool> {
    cargo_with_env(args, &[])
}

fn cargo_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<bool> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Ok(Command::new(cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(build::root())
        .status()?
        .success())
}

/// What every change must pass before a test runs: the formatting of every
/// crate (the fuzz crates are workspaces of their own), and clippy with
/// warnings denied for each crate on each target it is built for (host, the
/// bare-metal binaries as `build` builds them, the UEFI loader). The workspace
/// lints deny undocumented unsafe blocks and unsafe operations outside an
/// `unsafe` block in an `unsafe fn`: these gates are what enforces them.
const GATES: &[(&str, &str)] = &[
    ("rustfmt workspace", "fmt --all --check"),
    (
        "rustfmt vmbus/fuzz",
        "fmt --check --manifest-path vmbus/fuzz/Cargo.toml",
    ),
    (
        "rustfmt hypervisor/fuzz",
        "fmt --check --manifest-path hypervisor/fuzz/Cargo.toml",
    ),
    // The host members, as `host_tests` tests them.
    (
        "clippy host workspace",
        "clippy --quiet --workspace --exclude hypervisor --exclude bootloader \
         --exclude test-guests --exclude root-partition-svc --all-targets -- -D warnings",
    ),
    // The root's library and its tests on the host; its kernel (which
    // cannot link against the std the host tests pull in) below.
    (
        "clippy host root-partition-svc library",
        "clippy --quiet -p root-partition-svc --lib --tests -- -D warnings",
    ),
    // As `build::build` builds them (.cargo/config.toml adds the target's flags).
    (
        "clippy x86_64-unknown-none",
        "clippy --quiet -p hypervisor -p test-guests -p root-partition-svc \
         --target x86_64-unknown-none -- -D warnings",
    ),
    (
        "clippy x86_64-unknown-uefi",
        "clippy --quiet -p bootloader --target x86_64-unknown-uefi -- -D warnings",
    ),
];

fn gates() -> Result<Vec<(String, bool)>> {
    println!("== gates");
    prereq::ensure_rust_components()?;
    prereq::ensure_rust_targets()?;
    let mut results = Vec::new();
    for (name, args) in GATES {
        let start = Instant::now();
        let ok = cargo(&args.split_whitespace().collect::<Vec<_>>())?;
        let secs = start.elapsed().as_secs_f64();
        println!("{} {name} ({secs:.1} s)", if ok { "PASS" } else { "FAIL" });
        results.push((name.to_string(), ok));
    }
    Ok(results)
}

/// Unit and property tests of every crate that has host-side logic (the
/// hypervisor's own, `hypervisor-core`, among them). `XTASK_REQUIRE_IASL=1`:
/// the tests that compile ACPI tables with `iasl` (installed by
/// `prereq::ensure_for_tests`) fail rather than skip when it is missing.
fn host_tests() -> Result<bool> {
    println!("== host unit tests");
    cargo_with_env(
        &[
            "test",
            "--quiet",
            "--workspace",
            "--exclude",
            "hypervisor",
            "--exclude",
            "bootloader",
            // Bare-metal guests: built for x86_64-unknown-none by `build`.
            "--exclude",
            "test-guests",
        ],
        &[
            ("XTASK_REQUIRE_IASL", "1"),
            ("XTASK_REQUIRE_QEMU_IMG", "1"),
            ("XTASK_REQUIRE_MTOOLS", "1"),
        ],
    )
}

/// The fuzz targets of everything that parses what a guest, the root or a
/// loader controls, each for a bounded time (cargo-fuzz on stable: `-s none`,
/// no sanitizer; debug assertions and overflow checks on).
const FUZZ_TARGETS: &[(&str, &str)] = &[
    ("vmbus/fuzz", "ring_reader"),
    ("vmbus/fuzz", "channel_message"),
    ("vmbus/fuzz", "storvsp_requests"),
    ("vmbus/fuzz", "netvsp_messages"),
    ("hypervisor/fuzz", "hypercall_input"),
    ("hypervisor/fuzz", "abi_decode"),
    ("hypervisor/fuzz", "image_loader"),
    ("hypervisor/fuzz", "boot_info"),
    ("hypervisor/fuzz", "disk_images"),
];

fn fuzz(seconds: u64) -> Result<Vec<(String, bool)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let have = Command::new(&cargo)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        println!("xtask: installing cargo-fuzz");
        if !Command::new(&cargo)
            .args(["install", "cargo-fuzz", "--locked"])
            .status()?
            .success()
        {
            bail!("cargo install cargo-fuzz --locked failed");
        }
    }
    let mut results = Vec::new();
    for (dir, target) in FUZZ_TARGETS {
        let dir = build::root().join(dir);
        // New inputs go to corpus/<target>; the kept seeds in
        // regressions/<target> run first, and stay as they are.
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let seeds = dir.join("regressions").join(target);
        let mut cmd = Command::new(&cargo);
        cmd.args(["fuzz", "run", "-s", "none", target])
            .arg(&corpus)
            .args(seeds.is_dir().then_some(&seeds))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"));
        let status = cmd
            .current_dir(&dir)
            .stderr(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            println!(
                "     {target} failed; the input is in {}",
                dir.join("artifacts").join(target).display()
            );
        }
        results.push((format!("fuzz {target} ({seconds} s)"), status.success()));
    }
    Ok(results)
}

fn run_case(
    case: &Case,
    art: &build::Artifacts,
    kit: Option<&Result<linux_kit::Kit, String>>,
) -> Result<Result<(), String>> {
    let dir = emulator::case_dir(&case.name);
    let mut modules = image::standard_modules()?;
    if case.with_root {
        modules.insert(0, (art.root_partition.clone(), "root".to_string()));
    }
    if case.with_guests {
        modules.extend(art.guests.iter().cloned());
    }
    if !case.startup.is_empty() {
        modules.push(build::startup_module(
            &dir,
            &(case.startup.join("\n") + "\n"),
        )?);
    }
    if case.with_linux {
        match kit {
            Some(Ok(kit)) => modules.extend(kit.modules()),
            Some(Err(e)) => bail!("the Linux test kit: {e}"),
            None => bail!("the Linux test kit was not built"),
        }
    }
    let media = image::make(
        case.machine.boot,
        art,
        &case.machine.cmdline,
        &modules,
        &dir,
    )?;
    let trigger = |serial: &str| ready_for_monitor(case, serial);
    let commands: Vec<String> = (0..case.machine.cpus)
        .flat_map(|i| [format!("cpu {i}"), "info tlb".to_string()])
        .collect();
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let audit = matches!(case.expect, Expect::PageTableAudit);
    let opts = emulator::RunOptions {
        timeout: Duration::from_secs(case.timeout_secs),
        echo: false,
        input: if case.script.is_empty() {
            emulator::Input::Nothing
        } else {
            emulator::Input::Script {
                prompt: ROOT_PROMPT,
                lines: &case.script,
            }
        },
        monitor_trigger: if audit { Some(&trigger) } else { None },
        monitor_commands: &commands,
        echo_hypervisor_log: false,
    };
    let Some(disk) = &case.host_disk else {
        let run = emulator::run(&case.machine, &media, &dir, &opts)?;
        std::fs::write(dir.join("serial.log"), &run.outcome.serial)?;
        if audit {
            std::fs::write(dir.join("monitor.log"), &run.outcome.monitor)?;
        }
        return Ok(judge(case, &run.outcome));
    };
    // A fresh disk for the root, with qemu-img's VHD files on it; boots on
    // it one after another; their serial text judged as one; then the VHD
    // files checked by qemu-img.
    let image = dir.join("host-disk.img");
    image::host_disk(&image, 512, "HVTEST")?;
    for (name, format, subformat, size) in disk.qemu_vhds {
        let vhd = dir.join(name);
        let _ = std::fs::remove_file(&vhd);
        crate::prereq::run_tool(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                format,
                "-o",
                &format!("subformat={subformat}"),
            ],
            &[&vhd],
            &[size],
        )?;
        image::copy_to_disk(&image, &vhd, name)?;
    }
    let mut machine = case.machine.clone();
    machine.disk_image = Some(image.display().to_string());
    let mut outcome = emulator::run(&machine, &media, &dir, &opts)?.outcome;
    for (i, script) in disk.later_boots.iter().enumerate() {
        let opts = emulator::RunOptions {
            input: emulator::Input::Script {
                prompt: ROOT_PROMPT,
                lines: script,
            },
            ..opts
        };
        let next = emulator::run(&machine, &media, &dir, &opts)?.outcome;
        outcome
            .serial
            .push_str(&format!("\n{}\n", system_tests::next_boot_marker(i + 2)));
        outcome.serial.push_str(&next.serial);
        if outcome.success != Some(false) && !outcome.timed_out {
            outcome.success = next.success;
            outcome.timed_out = next.timed_out;
        }
    }
    std::fs::write(dir.join("serial.log"), &outcome.serial)?;
    let mut verdict = judge(case, &outcome);
    if verdict.is_ok() {
        for (name, text) in disk.vhds_hold {
            if let Err(e) = vhd_holds(&image, &dir, name, text) {
                verdict = Err(format!("{name} on the root's disk: {e:#}"));
                break;
            }
        }
    }
    Ok(verdict)
}

/// `name`, copied off the root's disk: `qemu-img check` passes (a VHDX;
/// for a VHD, which it cannot check, `info` opens it) and its disk,
/// converted to raw, holds `text`.
fn vhd_holds(image: &std::path::Path, dir: &std::path::Path, name: &str, text: &str) -> Result<()> {
    let vhd = dir.join(format!("out-{name}"));
    image::copy_from_disk(image, name, &vhd)?;
    let format = if name.ends_with(".vhdx") {
        "vhdx"
    } else {
        "vpc"
    };
    let check = if format == "vhdx" { "check" } else { "info" };
    crate::prereq::run_tool("qemu-img", &[check, "-f", format], &[&vhd], &[])?;
    let raw = dir.join(format!("out-{name}.raw"));
    crate::prereq::run_tool(
        "qemu-img",
        &["convert", "-f", format, "-O", "raw"],
        &[&vhd, &raw],
        &[],
    )?;
    let bytes = std::fs::read(&raw)?;
    let _ = std::fs::remove_file(&raw);
    if !bytes.windows(text.len()).any(|w| w == text.as_bytes()) {
        bail!("qemu-img's raw conversion does not hold \"{text}\"");
    }
    Ok(())
}

pub fn main(args: Vec<String>) -> Result<i32> {
    let opts = parse(args)?;
    // First, so the host tests find iasl.
    prereq::ensure_for_tests()?;
    let mut failed_host = false;
    let (mut gates_passed, mut gates_failed) = (Vec::new(), Vec::new());
    if opts.host_tests && opts.gates {
        for (name, ok) in gates()? {
            if ok {
                gates_passed.push(name);
            } else {
                gates_failed.push(name);
            }
        }
    }
    if opts.host_tests {
        failed_host = !host_tests()?;
        println!(
            "{}",
            if failed_host {
                "FAIL host unit tests"
            } else {
                "PASS host unit tests"
            }
        );
    }
    let (mut fuzz_passed, mut fuzz_failed) = (0, 0);
    if opts.fuzz_seconds > 0 {
        println!("== fuzzing");
        for (name, ok) in fuzz(opts.fuzz_seconds)? {
            println!("{} {name}", if ok { "PASS" } else { "FAIL" });
            if ok {
                fuzz_passed += 1;
            } else {
                fuzz_failed += 1;
            }
        }
    }
    let art = build::build()?;
    let cases: Vec<Case> = matrix()
        .into_iter()
        .filter(|c| {
            opts.filter
                .as_ref()
                .is_none_or(|f| c.name.contains(f.as_str()))
        })
        .collect();
    // Repeats run under their own names (and case directories): `name~2`...
    let cases: Vec<Case> = (1..=opts.repeat.max(1))
        .flat_map(|k| {
            cases.iter().map(move |c| {
                let mut c = c.clone();
                if k > 1 {
                    c.name = format!("{}~{k}", c.name);
                }
                c
            })
        })
        .collect();
    // The Linux test kit, once for every case that boots it; should it fail,
    // those cases fail with its error and the others run.
    let kit = cases
        .iter()
        .any(|c| c.with_linux)
        .then(|| linux_kit::build().map_err(|e| format!("{e:#}")));
    println!(
        "== boot matrix: {} cases, {} at a time",
        cases.len(),
        opts.jobs
    );
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let again = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.min(cases.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let mut verdict = None;
                // A failed case runs once more: emulated machines on a
                // loaded host see rare timing the hardware never would, and
                // one such run must not sink CI. The first failure is
                // reported in full and counted (`again` below), its
                // directory kept as `<case>.first-run`.
                for run in 1..=2 {
                    let start = Instant::now();
                    let v = run_case(case, &art, kit.as_ref())
                        .unwrap_or_else(|e| Err(format!("harness error: {e:#}")));
                    let secs = start.elapsed().as_secs_f64();
                    let dir = emulator::case_dir(&case.name);
                    match &v {
                        Ok(()) if run == 1 => println!("PASS {} ({secs:.1} s)", case.name),
                        Ok(()) => println!(
                            "PASS {} ({secs:.1} s), on its second run (the first failed: above)",
                            case.name
                        ),
                        Err(why) => {
                            let log = dir.join("serial.log");
                            let word = if run == 1 { "FAIL (first run)" } else { "FAIL" };
                            println!(
                                "{word} {} ({secs:.1} s): {why}\n     log: {}\n{}",
                                case.name,
                                log.display(),
                                log_tail(&log)
                            );
                        }
                    }
                    if run == 1 && v.is_err() {
                        let kept = dir.with_extension("first-run");
                        let _ = std::fs::remove_dir_all(&kept);
                        let _ = std::fs::rename(&dir, &kept);
                        again.lock().unwrap().push(case.name.clone());
                        continue;
                    }
                    verdict = Some(v);
                    break;
                }
                let verdict = verdict.expect("a verdict");
                results.lock().unwrap().push(verdict.is_ok());
            });
        }
    });
    let results = results.into_inner().unwrap();
    let booted = results.iter().filter(|ok| **ok).count();
    let passed =
        booted + usize::from(opts.host_tests && !failed_host) + fuzz_passed + gates_passed.len();
    let failed =
        results.len() - booted + usize::from(failed_host) + fuzz_failed + gates_failed.len();
    if !gates_failed.is_empty() {
        println!("FAIL gates: {}", gates_failed.join(", "));
    }
    let again = again.into_inner().unwrap();
    if !again.is_empty() {
        println!(
            "RAN TWICE (failed, then run again; the first failure is reported above): {}",
            again.join(", ")
        );
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}

/// The end of a failed case's console and hypervisor log, printed with the
/// verdict: CI machines keep only what the run printed.
fn log_tail(log: &std::path::Path) -> String {
    let Ok(text) = std::fs::read_to_string(log) else {
        return String::new();
    };
    let (console, hypervisor) = text
        .split_once(system_tests::HYPERVISOR_LOG_MARKER)
        .unwrap_or((&text, ""));
    let tail = |part: &str, n: usize| -> String {
        let lines: Vec<&str> = part.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| format!("     | {}\n", l.chars().take(200).collect::<String>()))
            .collect()
    };
    format!(
        "     console, last lines:\n{}     hypervisor log, last lines:\n{}",
        tail(console, 25),
        tail(hypervisor, 12)
    )
}
