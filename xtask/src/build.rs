//! Building the bare-metal binaries.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Artifacts {
    pub hypervisor: PathBuf,
    pub uefi_loader: PathBuf,
    pub root_partition: PathBuf,
    /// The test guests (`tests/guests`), with the module name each is loaded as.
    pub guests: Vec<(PathBuf, String)>,
}

/// The test guests' binaries; each is a boot module of that name.
pub const GUEST_NAMES: &[&str] = &[
    "hello",
    "redeliver",
    "msrs",
    "crash",
    "smp",
    "isolation",
    "victim",
    "triple-fault",
    "reset",
    "hypercalls",
    "hog",
    "iobench",
    "interrupts",
    "fpu",
    "hostile",
    "exit-loop",
    "vmbus-echo",
    "xapic",
];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

pub fn work_dir() -> PathBuf {
    root().join("target").join("xtask")
}

/// A boot module named `startup` in `dir`, holding `lines`: the root runs
/// each line before its first prompt.
pub fn startup_module(dir: &Path, lines: &str) -> Result<(PathBuf, String)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("startup");
    std::fs::write(&path, lines).with_context(|| format!("writing {}", path.display()))?;
    Ok((path, "startup".to_string()))
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(root())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// A bare-metal binary of the last build (`hypervisor`, `root-partition-svc`).
pub fn release_binary(name: &str) -> PathBuf {
    root().join("target/x86_64-unknown-none/release").join(name)
}

pub fn build() -> Result<Artifacts> {
    crate::prereq::ensure_rust_targets()?;
    let none = ["--release", "--target", "x86_64-unknown-none"];
    cargo(
        &[
            &["build", "-p", "hypervisor", "--bin", "hypervisor"][..],
            &none,
        ]
        .concat(),
    )?;
    cargo(
        &[
            &[
                "build",
                "-p",
                "root-partition-svc",
                "--bin",
                "root-partition-svc",
            ][..],
            &none,
        ]
        .concat(),
    )?;
    cargo(&[&["build", "-p", "test-guests", "--bins"][..], &none].concat())?;
    cargo(&[
        "build",
        "--release",
        "-p",
        "bootloader",
        "--target",
        "x86_64-unknown-uefi",
    ])?;
    let target = root().join("target");
    Ok(Artifacts {
        hypervisor: target.join("x86_64-unknown-none/release/hypervisor"),
        uefi_loader: target.join("x86_64-unknown-uefi/release/bootloader.efi"),
        root_partition: target.join("x86_64-unknown-none/release/root-partition-svc"),
        guests: GUEST_NAMES
            .iter()
            .map(|n| {
                (
                    target.join("x86_64-unknown-none/release").join(n),
                    n.to_string(),
                )
            })
            .chain(tiny_guests()?)
            .collect(),
    })
}

/// The hand-made guests (`tiny_guests`), written to the work directory.
fn tiny_guests() -> Result<Vec<(PathBuf, String)>> {
    let dir = work_dir().join("guests");
    std::fs::create_dir_all(&dir)?;
    let mut out = Vec::new();
    for (name, bytes) in [
        ("multiboot32", crate::tiny_guests::multiboot32()),
        ("multiboot32low", crate::tiny_guests::multiboot32_low()),
        ("realmode", crate::tiny_guests::real_mode()),
        ("halt", crate::tiny_guests::halt()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes)?;
        out.push((path, name.to_string()));
    }
    Ok(out)
}
