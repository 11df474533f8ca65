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

/// What `cargo xtask test` needs besides `NEEDS`: `iasl`, for the host tests
/// that compile and disassemble ACPI tables; `fsck.fat`, for the host tests
/// of the root's FAT32 code. (The Linux test kit needs only
/// `apt-get` and `dpkg-deb`, which every Debian system has.)
const TEST_NEEDS: &[(&str, &str)] = &[("iasl", "acpica-tools"), ("fsck.fat", "dosfstools")];

/// Runs `tool` with `args`, then `paths`, then `tail`; its stderr in the
/// error if it fails.
pub fn run_tool(tool: &str, args: &[&str], paths: &[&Path], tail: &[&str]) -> Result<()> {
    let out = Command::new(tool)
        .args(args)
        .args(paths)
        .args(tail)
        .output()
        .map_err(|e| anyhow::anyhow!("running {tool}: {e}"))?;
    if !out.status.success() {
        bail!(
            "{tool} {args:?} {paths:?} {tail:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// What the prerequisite logic needs of a machine: a fake one in the tests.
trait Machine {
    fn present(&self, what: &str) -> bool;
    fn is_root(&self) -> bool;
    fn apt_update(&mut self) -> Result<()>;
    fn apt_install(&mut self, packages: &[&str]) -> Result<()>;
}

struct ThisMachine;

impl Machine for ThisMachine {
    fn present(&self, what: &str) -> bool {
        if what.starts_with('/') {
            return Path::new(what).exists();
        }
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(what).is_file()))
    }

    fn is_root(&self) -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
    }

    fn apt_update(&mut self) -> Result<()> {
        let status = Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if !status.success() {
            bail!("apt-get update failed");
        }
        Ok(())
    }

    fn apt_install(&mut self, packages: &[&str]) -> Result<()> {
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
}

/// The packages whose files are missing now, each once, in `needs` order.
fn missing(m: &dyn Machine, needs: &[(&str, &'static str)]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for (what, package) in needs {
        if !m.present(what) && !out.contains(package) {
            out.push(package);
        }
    }
    out
}

/// Makes sure every prerequisite of `run` and `bench` exists.
pub fn ensure() -> Result<()> {
    ensure_on(&mut ThisMachine, NEEDS)
}

/// Makes sure every prerequisite of `test` exists: those of `run` and `TEST_NEEDS`.
pub fn ensure_for_tests() -> Result<()> {
    ensure_on(&mut ThisMachine, &[NEEDS, TEST_NEEDS].concat())
}

fn ensure_on(m: &mut dyn Machine, needs: &[(&str, &'static str)]) -> Result<()> {
    let first = missing(m, needs);
    if first.is_empty() {
        return Ok(());
    }
    let command = format!("sudo apt-get install -y {}", first.join(" "));
    if !m.is_root() {
        bail!("missing prerequisites; install them with:\n    {command}");
    }
    eprintln!("xtask: installing {}", first.join(" "));
    if let Err(e) = m.apt_update() {
        bail!("{e}; then run: {command}");
    }
    // qemu-system-x86 goes on its own first: a machine with a newer backported
    // qemu-utils (Debian 12 images carry 10.0.x) has it replaced by the one
    // matching qemu-system-x86, or removed. What is missing is therefore read
    // again after each step, never carried over.
    if first.contains(&"qemu-system-x86") {
        m.apt_install(&["qemu-system-x86"])?;
    }
    let rest = missing(m, needs);
    if !rest.is_empty() {
        m.apt_install(&rest)?;
    }
    let still: Vec<&str> = needs
        .iter()
        .filter(|(w, _)| !m.present(w))
        .map(|(w, _)| *w)
        .collect();
    if !still.is_empty() {
        bail!(
            "still missing after apt-get: {}; install with:\n    sudo apt-get install -y {}",
            still.join(", "),
            missing(m, needs).join(" ")
        );
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

/// Adds rustfmt and clippy (the gates of `cargo xtask test`) when the
/// toolchain lacks them; rust-toolchain.toml lists them, but a toolchain
/// installed before they were listed does not get them by itself.
pub fn ensure_rust_components() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let present = |tool: &str| {
        Command::new(&cargo)
            .args([tool, "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing: Vec<&str> = [("fmt", "rustfmt"), ("clippy", "clippy")]
        .into_iter()
        .filter(|(tool, _)| !present(tool))
        .map(|(_, component)| component)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: adding the Rust components {}", missing.join(" "));
    let status = Command::new("rustup")
        .args(["component", "add"])
        .args(&missing)
        .status();
    if !status.is_ok_and(|s| s.success()) {
        bail!(
            "missing Rust components; install them with:\n    rustup component add {}",
            missing.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// A Debian machine as apt sees it: installed packages, and the rule that
    /// installing qemu-system-x86 removes a backported qemu-utils.
    struct Fake {
        installed: BTreeSet<&'static str>,
        backported_qemu_utils: bool,
        root: bool,
        installs: Vec<Vec<String>>,
    }

    impl Fake {
        fn new(installed: &[&'static str], backported_qemu_utils: bool) -> Self {
            Fake {
                installed: installed.iter().copied().collect(),
                backported_qemu_utils,
                root: true,
                installs: Vec::new(),
            }
        }
    }

    impl Machine for Fake {
        fn present(&self, what: &str) -> bool {
            NEEDS
                .iter()
                .chain(TEST_NEEDS)
                .any(|(w, p)| *w == what && self.installed.contains(p))
        }
        fn is_root(&self) -> bool {
            self.root
        }
        fn apt_update(&mut self) -> Result<()> {
            Ok(())
        }
        fn apt_install(&mut self, packages: &[&str]) -> Result<()> {
            self.installs
                .push(packages.iter().map(|p| p.to_string()).collect());
            if packages.contains(&"qemu-system-x86")
                && packages.contains(&"qemu-utils")
                && self.backported_qemu_utils
            {
                bail!("conflict: qemu-system-x86 and the backported qemu-utils");
            }
            for p in packages {
                let p = NEEDS
                    .iter()
                    .chain(TEST_NEEDS)
                    .find(|(_, q)| q == p)
                    .unwrap()
                    .1;
                if p == "qemu-system-x86" && self.backported_qemu_utils {
                    self.installed.remove("qemu-utils");
                    self.backported_qemu_utils = false;
                }
                self.installed.insert(p);
            }
            Ok(())
        }
    }

    #[test]
    fn fresh_machine_with_backported_qemu_utils_gets_everything_the_first_time() {
        let mut m = Fake::new(&["qemu-utils"], true);
        ensure_on(&mut m, NEEDS).unwrap();
        assert!(missing(&m, NEEDS).is_empty());
        assert_eq!(m.installs[0], ["qemu-system-x86"]);
        assert!(m.installs[1].contains(&"qemu-utils".to_string()));
    }

    #[test]
    fn bare_machine_gets_everything() {
        let mut m = Fake::new(&[], false);
        ensure_on(&mut m, NEEDS).unwrap();
        assert!(missing(&m, NEEDS).is_empty());
    }

    #[test]
    fn complete_machine_installs_nothing() {
        let all: Vec<&'static str> = NEEDS.iter().map(|(_, p)| *p).collect();
        let mut m = Fake::new(&all, false);
        ensure_on(&mut m, NEEDS).unwrap();
        assert!(m.installs.is_empty());
    }

    #[test]
    fn non_root_gets_the_exact_command() {
        let mut m = Fake::new(&["qemu-utils", "ovmf"], false);
        m.root = false;
        let e = ensure_on(&mut m, NEEDS).unwrap_err().to_string();
        assert!(
            e.contains("sudo apt-get install -y qemu-system-x86 bochs"),
            "{e}"
        );
        assert!(!e.contains("ovmf"), "{e}");
        assert!(m.installs.is_empty());
    }

    #[test]
    fn tests_also_get_iasl_and_fsck_fat_and_run_does_not() {
        let all: Vec<&'static str> = NEEDS.iter().map(|(_, p)| *p).collect();
        let mut m = Fake::new(&all, false);
        ensure_on(&mut m, NEEDS).unwrap();
        assert!(m.installs.is_empty());
        ensure_on(&mut m, &[NEEDS, TEST_NEEDS].concat()).unwrap();
        assert_eq!(m.installs, [["acpica-tools", "dosfstools"]]);
        assert!(m.installed.contains("acpica-tools"));
        assert!(m.installed.contains("dosfstools"));
    }
}
