//! Boot media: QEMU's Multiboot arguments, a GRUB 2 rescue ISO, or a FAT EFI
//! system partition with our UEFI loader.
use crate::build::Artifacts;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use system_tests::{Boot, TEST_MODULE_NAME, TEST_MODULE_SIZE};

pub enum BootMedia {
    Multiboot {
        kernel: PathBuf,
        cmdline: String,
        modules: Vec<(PathBuf, String)>,
    },
    Iso(PathBuf),
    Esp(PathBuf),
}

/// The module the boot matrix loads: a fixed size and a recognisable pattern.
pub fn test_module() -> Result<PathBuf> {
    let path = crate::build::work_dir().join("test-module.bin");
    if std::fs::metadata(&path).map(|m| m.len() as usize).ok() != Some(TEST_MODULE_SIZE) {
        std::fs::create_dir_all(path.parent().unwrap())?;
        let bytes: Vec<u8> = (0..TEST_MODULE_SIZE).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(&path, bytes)?;
    }
    Ok(path)
}

pub fn standard_modules() -> Result<Vec<(PathBuf, String)>> {
    Ok(vec![(test_module()?, TEST_MODULE_NAME.to_string())])
}

/// A new raw disk image of `mib` MiB (sparse) with a FAT32 file system on
/// the whole disk, labelled `label`: the root partition's own disk, which
/// mtools reads and writes (`mdir -i PATH ::`).
pub fn host_disk(path: &Path, mib: u64, label: &str) -> Result<()> {
    let sectors = mib * 2048;
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(mib << 20)?;
    drop(f);
    run(Command::new("mformat")
        .args(["-i"])
        .arg(path)
        .args(["-F", "-c", "8", "-h", "64", "-s", "32", "-T"])
        .arg(sectors.to_string())
        .args(["-v", label, "::"]))
}

/// Copies `file` onto the FAT32 disk `disk` as `name`.
pub fn copy_to_disk(disk: &Path, file: &Path, name: &str) -> Result<()> {
    run(Command::new("mcopy")
        .arg("-i")
        .arg(disk)
        .arg(file)
        .arg(format!("::{name}")))
}

/// Copies `name` off the FAT32 disk `disk` to `to`.
pub fn copy_from_disk(disk: &Path, name: &str, to: &Path) -> Result<()> {
    let _ = std::fs::remove_file(to);
    run(Command::new("mcopy")
        .arg("-i")
        .arg(disk)
        .arg(format!("::{name}"))
        .arg(to))
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Builds the media for `boot` in `dir`.
pub fn make(
    boot: Boot,
    art: &Artifacts,
    cmdline: &str,
    modules: &[(PathBuf, String)],
    dir: &Path,
) -> Result<BootMedia> {
    std::fs::create_dir_all(dir)?;
    match boot {
        Boot::Multiboot => Ok(BootMedia::Multiboot {
            kernel: art.hypervisor.clone(),
            cmdline: cmdline.to_string(),
            modules: modules.to_vec(),
        }),
        Boot::Grub => grub_iso(art, cmdline, modules, dir).map(BootMedia::Iso),
        Boot::Uefi => esp_image(art, cmdline, modules, dir).map(BootMedia::Esp),
    }
}

fn grub_iso(
    art: &Artifacts,
    cmdline: &str,
    modules: &[(PathBuf, String)],
    dir: &Path,
) -> Result<PathBuf> {
    let tree = dir.join("iso");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("boot/grub"))?;
    std::fs::copy(&art.hypervisor, tree.join("boot/hypervisor"))?;
    let mut cfg = String::from(
        "set timeout=0\nset default=0\nserial --unit=0 --speed=115200\nterminal_output serial\n\
         menuentry \"hypervisor\" {\n",
    );
    cfg += &format!("  multiboot2 /boot/hypervisor {cmdline}\n");
    for (i, (path, name)) in modules.iter().enumerate() {
        let file = format!("module{i}");
        std::fs::copy(path, tree.join("boot").join(&file))?;
        cfg += &format!("  module2 /boot/{file} {name}\n");
    }
    cfg += "  boot\n}\n";
    std::fs::write(tree.join("boot/grub/grub.cfg"), cfg)?;
    let iso = dir.join("hypervisor.iso");
    run(Command::new("grub-mkrescue")
        .args([
            "--install-modules=multiboot2 normal iso9660 biosdisk serial",
            "--fonts=",
            "--locales=",
            "--themes=",
            "-o",
        ])
        .arg(&iso)
        .arg(&tree))?;
    Ok(iso)
}

/// Bytes of an EFI system partition holding `payload` bytes of files: at
/// least 64 MiB (FAT32 wants 32 MiB or more), with room for the FAT, the
/// directories and cluster slack (the Linux kit alone is ~14 MB).
fn esp_size(payload: u64) -> u64 {
    (payload + payload / 8 + (16 << 20))
        .next_multiple_of(1 << 20)
        .max(64 << 20)
}

fn esp_image(
    art: &Artifacts,
    cmdline: &str,
    modules: &[(PathBuf, String)],
    dir: &Path,
) -> Result<PathBuf> {
    let img = dir.join("esp.img");
    let _ = std::fs::remove_file(&img);
    let mut payload = 0;
    for path in [&art.uefi_loader, &art.hypervisor]
        .into_iter()
        .chain(modules.iter().map(|(p, _)| p))
    {
        payload += std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
    }
    std::fs::File::create(&img)?.set_len(esp_size(payload))?;
    let i = img.to_str().context("image path is not UTF-8")?;
    run(Command::new("mformat").args(["-i", i, "-F", "-v", "HVESP", "::"]))?;
    run(Command::new("mmd").args(["-i", i, "::/EFI", "::/EFI/BOOT", "::/boot"]))?;
    let copy = |from: &Path, to: &str| {
        run(Command::new("mcopy")
            .args(["-i", i])
            .arg(from)
            .arg(format!("::{to}")))
    };
    copy(&art.uefi_loader, "/EFI/BOOT/BOOTX64.EFI")?;
    copy(&art.hypervisor, "/boot/hypervisor")?;
    let mut cfg = format!("hypervisor /boot/hypervisor {cmdline}\n");
    for (n, (path, name)) in modules.iter().enumerate() {
        let file = format!("/boot/module{n}");
        copy(path, &file)?;
        cfg += &format!("module {file} {name}\n");
    }
    let cfg_path = dir.join("hv.cfg");
    std::fs::write(&cfg_path, cfg)?;
    copy(&cfg_path, "/boot/hv.cfg")?;
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::esp_size;

    #[test]
    fn the_esp_grows_with_what_it_holds() {
        assert_eq!(esp_size(0), 64 << 20);
        assert_eq!(esp_size(20 << 20), 64 << 20);
        let big = 100 << 20;
        assert!(esp_size(big) >= big + (16 << 20));
        assert_eq!(esp_size(big) % (1 << 20), 0);
    }
}
