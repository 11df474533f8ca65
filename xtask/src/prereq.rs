//! Host prerequisites: the emulators, firmware and image tools. Missing ones
//! are installed with apt-get when running as root; otherwise the error names
//! the exact command.
use anyhow::{bail, Result};
use std::path::Path;
use std::process::Command;

/// (what must exist, Debian package that provides it). Commands are looked up
/// on PATH; absolute paths are files.
const NEEDS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    ("/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf"),
    ("bochs", "bochs"),
    ("/usr/share/bochs/BIOS-bochs-latest", "bochsbios"),
    ("/usr/share/vgabios/vgabios.bin", "vgabios"),
    ("/usr/lib/grub/i386-pc/multiboot2.mod", "grub-pc-bin"),
    ("grub-mkrescue", "grub-common"),
    ("xorriso", "xorriso"),
    ("mformat", "mtools"),
    ("mcopy", "mtools"),
];

fn present(what: &str) -> bool {
    if what.starts_with('/') {
        return Path::new(what).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(what).is_file()))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!("apt-get install {} failed", packages.join(" "));
    }
    Ok(())
}

/// Makes sure every prerequisite exists.
pub fn ensure() -> Result<()> {
    let mut missing: Vec<&str> = NEEDS
        .iter()
        .filter(|(w, _)| !present(w))
        .map(|(_, p)| *p)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!("sudo apt-get install -y {}", missing.join(" "));
    if !is_root() {
        bail!("missing prerequisites; install them with:\n    {command}");
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let status = Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!("apt-get update failed; then run: {command}");
    }
    // qemu-system-x86 first, on its own: some machines carry a newer backported
    // qemu-utils that conflicts with it in one transaction; afterwards the
    // matching qemu-utils installs cleanly.
    let (first, rest): (Vec<&str>, Vec<&str>) =
        missing.iter().partition(|p| **p == "qemu-system-x86");
    if !first.is_empty() {
        apt_install(&first)?;
    }
    let rest: Vec<&str> = rest
        .into_iter()
        .filter(|p| *p != "qemu-utils" || !present("qemu-img"))
        .collect();
    if !rest.is_empty() {
        apt_install(&rest)?;
    }
    let still: Vec<&str> = NEEDS
        .iter()
        .filter(|(w, _)| !present(w))
        .map(|(w, _)| *w)
        .collect();
    if !still.is_empty() {
        bail!("still missing after apt-get: {}", still.join(", "));
    }
    Ok(())
}

/// Adds the bare-metal Rust targets when the toolchain lacks them.
pub fn ensure_rust_targets() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    let Ok(out) = out else { return Ok(()) }; // no rustup: cargo will say what is missing
    let installed = String::from_utf8_lossy(&out.stdout);
    for t in ["x86_64-unknown-none", "x86_64-unknown-uefi"] {
        if !installed.lines().any(|l| l.trim() == t) {
            let status = Command::new("rustup").args(["target", "add", t]).status()?;
            if !status.success() {
                bail!("rustup target add {t} failed");
            }
        }
    }
    Ok(())
}
