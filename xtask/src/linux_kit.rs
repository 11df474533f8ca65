//! The Linux test kit: Debian 12's stock kernel (bzImage) and an initramfs of
//! our own (static busybox, the Hyper-V driver modules, an `/init` that
//! prints `LINUX-INIT:` markers on the serial console and then does what the
//! kernel command line's `linuxtest=` asks). docs/linux-guest.md.
//!
//! The packages come from the machine's apt sources (`apt-get download`),
//! are unpacked with `dpkg-deb -x`, and are cached by package version under
//! `target/xtask/linux-kit/`: once both versions are there, a build reads
//! only the local apt lists (to learn the current versions) and the cache.
mod cpio;
mod elf;

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The boot-module names the kit's files travel under.
pub const KERNEL_MODULE: &str = "linux";
pub const INITRD_MODULE: &str = "linux-initrd";

/// The metapackage naming the current kernel package, and busybox.
const KERNEL_META: &str = "linux-image-amd64";
const BUSYBOX: &str = "busybox-static";

/// The kernel modules the initramfs carries in `/lib/modules/NAME.ko` (with
/// whatever their `depends=` adds), in the order `/load-hv-modules` loads them.
pub const HV_MODULES: &[&str] = &[
    "scsi_common",
    "scsi_mod",
    "scsi_transport_fc",
    "hv_vmbus",
    "hv_storvsc",
    "sd_mod",
    "crc32c_generic",
    "ext4",
    "hv_netvsc",
    "hv_utils",
];

/// The reference machine's disk driver (with its `depends=`), in the order
/// `/load-reference-modules` loads them: `linuxtest=dd-reference` on plain
/// QEMU, no hypervisor, against which `bench storage` weighs the guest.
pub const REFERENCE_MODULES: &[&str] = &["virtio_pci", "virtio_blk"];

/// Busybox applets linked in `/bin` (`/init` also runs `busybox --install -s`
/// for the rest, for the interactive shell).
const APPLETS: &[&str] = &[
    "sh", "ash", "mount", "umount", "mkdir", "cat", "echo", "ls", "date", "poweroff", "reboot",
    "halt", "insmod", "rmmod", "lsmod", "modprobe", "grep", "sleep", "dmesg", "uname", "setsid",
    "cttyhack", "sync", "mdev", "head", "tail", "ps", "kill", "free", "uptime", "true", "false",
    "test", "[", "printf", "wc", "cp", "mv", "rm", "ln", "chmod", "hexdump", "od", "dd", "tr",
    "cut", "sed", "awk", "find", "xargs", "env", "stty", "clear", "vi", "less", "watch", "time",
    "nproc", "expr", "seq", "basename", "dirname", "readlink", "id", "hostname", "df", "du",
    "mknod", "top", "pidof", "killall", "ifconfig", "ip", "route", "md5sum", "mke2fs", "cmp",
    "ping", "udhcpc", "nc",
];

/// The `/init` script. Its markers and `linuxtest=` values are the contract
/// docs/linux-guest.md describes; the boot cases judge by them.
pub const INIT_SCRIPT: &str = r#"#!/bin/sh
# /init of the Linux test kit (written by xtask/src/linux_kit.rs).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root PS1='linux# '
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
/bin/busybox --install -s 2>/dev/null
# Only emergencies from the kernel on the console from here on: its
# messages would cut into ours (they are all in dmesg).
dmesg -n 1
echo "LINUX-INIT: reached init"
echo "LINUX-INIT: uptime $(cut -d' ' -f1 /proc/uptime)"
echo "LINUX-INIT: cpus $(grep -c ^processor /proc/cpuinfo)"
echo "LINUX-INIT: clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
echo "LINUX-INIT: clockevent $(cat /sys/devices/system/clockevents/clockevent0/current_device)"
echo "LINUX-INIT: date $(date +%s)"
echo "LINUX-INIT: kernel $(uname -r)"
# The console's UART: its Linux IRQ and the interrupts taken so far (this
# script's output went out on them). Polled, it has IRQ 0.
irq=$(sed -n 's/^0: .* irq:\([0-9]*\).*/\1/p' /proc/tty/driver/serial)
ints=$(awk '/ttyS0/ { for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; else break } END { print s + 0 }' /proc/interrupts)
if [ "${irq:-0}" != 0 ] && [ "$ints" -gt 0 ]; then
    echo "LINUX-INIT: console on interrupts (IRQ $irq, $ints so far)"
else
    echo "LINUX-INIT: console polled (IRQ ${irq:-none}, $ints interrupts)"
fi
# A shutdown the host asks for (hv_utils' orderly_poweroff) runs this; it
# has no terminal, so it writes to the console itself.
cat > /bin/host-poweroff <<'EOS'
#!/bin/sh
echo "LINUX-INIT: the host asked for a shutdown; powering off" > /dev/console
sync
sleep 1
poweroff -f
EOS
chmod +x /bin/host-poweroff
echo /bin/host-poweroff > /proc/sys/kernel/poweroff_cmd
# busybox udhcpc's event script (udhcpc -i eth0 -s /bin/dhcp-event): the
# lease's address on the interface, and a line on the console.
cat > /bin/dhcp-event <<'EOS'
#!/bin/sh
case "$1" in
bound|renew)
    ifconfig "$interface" "$ip" netmask "$subnet"
    echo "LINUX-INIT: dhcp lease $ip from $serverid" > /dev/console
    ;;
esac
EOS
chmod +x /bin/dhcp-event
# Console output from user space drains through the UART's transmit
# interrupt: give it time before the machine goes away.
drain() { sleep 1; }
# The first SCSI disk: 4 MiB of random bytes written at 1 MiB and their
# checksum in sector 0, read back past the page cache; a later boot finds
# them there.
disk_check() {
    echo "LINUX-INIT: disk sda, $(cat /sys/block/sda/size) sectors"
    set -- $(dd if=/dev/sda bs=512 count=1 2>/dev/null | head -c 48)
    if [ "$1" = "hvtest-disk" ]; then
        back=$(dd if=/dev/sda bs=64k skip=16 count=64 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
        if [ "$back" = "$2" ]; then
            echo "LINUX-INIT: disk kept its 4 MiB from the last boot: same checksum"
        else
            echo "LINUX-INIT: disk WRONG after the restart: $back, not $2"
        fi
        return
    fi
    dd if=/dev/urandom of=/tmp/pattern bs=64k count=64 2>/dev/null
    sum=$(md5sum /tmp/pattern | cut -d' ' -f1)
    dd if=/tmp/pattern of=/dev/sda bs=64k seek=16 conv=fsync 2>/dev/null
    echo "hvtest-disk $sum" | dd of=/dev/sda conv=fsync 2>/dev/null
    echo 3 > /proc/sys/vm/drop_caches
    back=$(dd if=/dev/sda bs=64k skip=16 count=64 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
    if [ "$back" = "$sum" ]; then
        echo "LINUX-INIT: disk wrote 4 MiB and read them back: same checksum"
    else
        echo "LINUX-INIT: disk WRONG: wrote $sum, read $back"
    fi
}
# An ext2 file system on SCSI disk $1 (sda, sdb, ...): made on the first
# boot, with a 2 MiB file, its checksum and a note; a later boot mounts it
# and checks the file.
fs_check() {
    echo "LINUX-INIT: disk $1, $(cat /sys/block/$1/size) sectors"
    mkdir -p /mnt
    if mount -t ext4 /dev/$1 /mnt 2>/dev/null; then
        if [ "$(md5sum /mnt/data | cut -d' ' -f1)" = "$(cat /mnt/sum)" ]; then
            echo "LINUX-INIT: disk's file system kept its file from the last boot: same checksum ($1)"
        else
            echo "LINUX-INIT: disk's file WRONG after the restart ($1)"
        fi
        umount /mnt
        return
    fi
    mke2fs /dev/$1 > /dev/null 2>&1 || echo "LINUX-INIT: mke2fs FAILED"
    mount -t ext4 /dev/$1 /mnt || {
        echo "LINUX-INIT: mount FAILED"
        grep ext /proc/filesystems | sed 's/^/LINUX-INIT: /'
        ls -la /mnt /dev/$1 | sed 's/^/LINUX-INIT: /'
        dmesg | tail -8 | sed 's/^/LINUX-INIT: /'
    }
    dd if=/dev/urandom of=/mnt/data bs=64k count=32 2>/dev/null
    echo "HVTEST-NOTE: written by the guest on its own file system" > /mnt/note
    md5sum /mnt/data | cut -d' ' -f1 > /mnt/sum
    sync
    umount /mnt
    echo "LINUX-INIT: disk formatted (ext2), a 2 MiB file written ($1)"
}
# The drivers /load-$1 loads, then up to 30 s for disk $2.
load_and_wait_for_disk() {
    /load-$1 | grep failed
    i=0
    while [ ! -b /dev/$2 ] && [ $i -lt 30 ]; do
        sleep 1
        i=$((i + 1))
    done
}
# The Hyper-V drivers, then the first network adapter up with an address:
# netip=A/N, or netip=dhcp (a lease from the network's DHCP server).
net_up() {
    /load-hv-modules | grep failed
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 30 ]; do
        sleep 1
        i=$((i + 1))
    done
    if [ ! -e /sys/class/net/eth0 ]; then
        echo "LINUX-INIT: no network adapter"
        dmesg | grep -i -E 'netvsc|vmbus' | tail -20 | sed 's/^/LINUX-INIT: /'
        echo "LINUX-INIT: done"
        drain
        poweroff -f
    fi
    echo "LINUX-INIT: eth0 $(cat /sys/class/net/eth0/address), mtu $(cat /sys/class/net/eth0/mtu)"
    ip link set eth0 up
    if [ "$netip" = dhcp ]; then
        udhcpc -i eth0 -s /bin/dhcp-event -n -q -t 20 -T 2 > /dev/null 2>&1 ||
            echo "LINUX-INIT: no dhcp lease"
    else
        ip addr add "$netip" dev eth0
    fi
}
# The storage benchmark, three rounds: 192 MiB written to disk $1 and read
# back in 1 MiB requests past the page cache; the kernel's uptime before and
# after each.
dd_bench() {
    for round in 1 2 3; do
        t0=$(cut -d' ' -f1 /proc/uptime)
        dd if=/dev/zero of=/dev/$1 bs=1M count=192 oflag=direct 2>/dev/null
        t1=$(cut -d' ' -f1 /proc/uptime)
        dd if=/dev/$1 of=/dev/null bs=1M count=192 iflag=direct 2>/dev/null
        t2=$(cut -d' ' -f1 /proc/uptime)
        # What the write's source costs alone (the zeros dd reads before
        # each write: the guest's own work, no storage in it).
        dd if=/dev/zero of=/dev/null bs=1M count=192 2>/dev/null
        t3=$(cut -d' ' -f1 /proc/uptime)
        echo "LINUX-INIT: dd write: 192 MiB from uptime $t0 to $t1"
        echo "LINUX-INIT: dd read: 192 MiB from uptime $t1 to $t2"
        echo "LINUX-INIT: dd source: 192 MiB from uptime $t2 to $t3"
    done
    echo "LINUX-INIT: done"
    drain
    poweroff -f
}
# hv_vmbus is not loaded here: without a VMBus host it waits for one. Run
# /load-hv-modules for that.
case "$linuxtest" in
poweroff)
    echo "LINUX-INIT: done"
    drain
    poweroff -f
    ;;
reboot)
    echo "LINUX-INIT: rebooting"
    echo "LINUX-INIT: done"
    drain
    reboot -f
    ;;
panic)
    echo "LINUX-INIT: panicking"
    drain
    echo c > /proc/sysrq-trigger
    ;;
idle)
    # An idle guest for the benchmarks: nothing runs for 60 s.
    echo "LINUX-INIT: idle"
    sleep 60
    echo "LINUX-INIT: done"
    drain
    poweroff -f
    ;;
vmbus)
    # The Hyper-V drivers, then what VMBus brought: the protocol version,
    # the devices offered, the integration services negotiated. Then wait
    # for the host (vm stop asks for a shutdown).
    /load-hv-modules > /dev/null
    echo "LINUX-INIT: $(dmesg | grep -o 'Vmbus version:[0-9.]*' || echo 'no VMBus version')"
    for d in /sys/bus/vmbus/devices/*; do
        [ -e "$d/class_id" ] && echo "LINUX-INIT: vmbus device $(cat $d/class_id)"
    done
    i=0
    while [ "$(dmesg | grep -c 'IC version')" -lt 3 ] && [ $i -lt 30 ]; do
        sleep 1
        i=$((i + 1))
    done
    dmesg | grep 'IC version' | sed 's/^\[[^]]*\] /LINUX-INIT: /'
    # A disk, if the VM has one.
    [ -b /dev/sda ] && disk_check
    echo "LINUX-INIT: vmbus ready"
    while true; do sleep 1; done
    ;;
disk)
    # The first SCSI disk, served by the root over VMBus (disk_check).
    load_and_wait_for_disk hv-modules sda
    if [ -b /dev/sda ]; then
        # Every disk (Linux numbers them as the LUNs are found).
        sleep 1
        for d in /sys/block/sd*; do
            fs_check "${d##*/}"
        done
    else
        echo "LINUX-INIT: no disk"
        dmesg | grep -i -E 'storvsc|scsi|sd ' | tail -30 | sed 's/^/LINUX-INIT: /'
    fi
    echo "LINUX-INIT: done"
    drain
    poweroff -f
    ;;
dd)
    # The storage benchmark on the first SCSI disk.
    load_and_wait_for_disk hv-modules sda
    dd_bench sda
    ;;
dd-reference)
    # The same on plain QEMU's virtio disk: no hypervisor, the reference.
    load_and_wait_for_disk reference-modules vda
    dd_bench vda
    ;;
net)
    # The first network adapter (net_up), then a ping of netpeer every
    # second. Each change between "answers" and "no answer" (three misses
    # in a row) is printed once, numbered; the adapter going away ends it.
    net_up
    # Until the peer first answers (it may still be booting), nothing is
    # reported but a peer that never answers.
    i=0
    until ping -c 1 -W 2 "$netpeer" > /dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -ge 300 ]; then
            echo "LINUX-INIT: ping $netpeer: never answered"
            break
        fi
        sleep 1
    done
    last=""
    n=0
    misses=0
    while [ -e /sys/class/net/eth0 ]; do
        if ping -c 1 -W 2 "$netpeer" > /dev/null 2>&1; then
            misses=0
            now="answers"
        else
            misses=$((misses + 1))
            now="$last"
            [ $misses -ge 3 ] && now="no answer"
        fi
        if [ -n "$now" ] && [ "$now" != "$last" ]; then
            n=$((n + 1))
            echo "LINUX-INIT: ping $netpeer: $now ($n)"
            last="$now"
        fi
        sleep 1
    done
    echo "LINUX-INIT: eth0 went away"
    while true; do sleep 1; done
    ;;
netbench)
    # The network benchmark: the adapter up (net_up), then netrole=recv
    # takes TCP connections on port 5000 and discards them; netrole=send
    # waits until netgate (default netpeer) answers pings, says it is
    # ready, and 5 s later sends 16 MiB to netpeer's port 5000 (netpeer may
    # be QEMU's forwarding address 10.0.2.100), timed by the kernel's uptime.
    net_up
    if [ "$netrole" = recv ]; then
        echo "LINUX-INIT: netbench: receiving on port 5000"
        while true; do nc -l -p 5000 > /dev/null; done
    fi
    i=0
    until ping -c 1 -W 2 "${netgate:-$netpeer}" > /dev/null 2>&1 || [ $i -ge 300 ]; do
        sleep 1
        i=$((i + 1))
    done
    echo "LINUX-INIT: netbench: ready"
    sleep 5
    t0=$(cut -d' ' -f1 /proc/uptime)
    dd if=/dev/zero bs=64k count=256 2>/dev/null | nc "$netpeer" 5000
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "LINUX-INIT: netbench: 16 MiB to $netpeer from uptime $t0 to $t1"
    echo "LINUX-INIT: netbench: done"
    while true; do sleep 1; done
    ;;
vmcall)
    /bin/vmcall
    echo "LINUX-INIT: vmcall status $?"
    /bin/vmmcall
    echo "LINUX-INIT: vmmcall status $?"
    echo "LINUX-INIT: done"
    drain
    poweroff -f
    ;;
*)
    echo "LINUX-INIT: shell"
    exec setsid cttyhack sh
    ;;
esac
"#;

/// `/load-NAME`: `insmod` of every module in `order`, dependencies first.
fn load_modules_script(name: &str, order: &[String]) -> String {
    let mut s = format!(
        "#!/bin/sh\n# Loads {}, dependencies first (written by xtask/src/linux_kit.rs).\n",
        if name == "hv-modules" {
            "the Hyper-V drivers"
        } else {
            "the reference machine's drivers"
        }
    );
    for m in order {
        s += &format!(
            "echo \"LINUX-INIT: insmod {m}\"\n\
             insmod /lib/modules/{m}.ko || echo \"LINUX-INIT: insmod {m} failed: $?\"\n"
        );
    }
    s += &format!("echo \"LINUX-INIT: load-{name} finished\"\n");
    s
}

/// The kit, ready to boot.
#[derive(Clone, Debug)]
pub struct Kit {
    /// The bzImage (module `linux`).
    pub kernel: PathBuf,
    /// The newc cpio (module `linux-initrd`).
    pub initrd: PathBuf,
    /// `linux-image-6.1.0-NN-amd64` and its version.
    pub kernel_package: Package,
    pub busybox_package: Package,
    /// `uname -r` of the kernel (`6.1.0-NN-amd64`).
    pub kernel_release: String,
}

impl Kit {
    /// The boot modules: the kernel as `linux`, the initramfs as `linux-initrd`.
    pub fn modules(&self) -> Vec<(PathBuf, String)> {
        vec![
            (self.kernel.clone(), KERNEL_MODULE.to_string()),
            (self.initrd.clone(), INITRD_MODULE.to_string()),
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
}

impl Package {
    /// A file name for this version (an epoch's `:` is not portable).
    fn key(&self) -> String {
        format!("{}_{}", self.name, self.version.replace(':', "%3a"))
    }
}

pub fn kit_dir() -> PathBuf {
    crate::build::work_dir().join("linux-kit")
}

/// Fetches (or finds in the cache) the packages and writes the kit.
pub fn build() -> Result<Kit> {
    let dir = kit_dir();
    std::fs::create_dir_all(&dir)?;
    // At most one `apt-get update`: when the lists name no kernel (missing
    // lists), or name a version the mirror no longer has (stale lists).
    let mut updated = false;
    let (kernel, busybox, kernel_dir, busybox_dir) = loop {
        let resolved = resolve().and_then(|(k, b)| {
            // The kernel's unpacked tree holds `HV_MODULES`: another list
            // is unpacked again.
            let kernel_stamp = format!("modules {:08x}", modules_fingerprint());
            let kd = unpacked(&dir, &k, &kernel_stamp, unpack_kernel)?;
            let bd = unpacked(&dir, &b, "", unpack_busybox)?;
            Ok((k, b, kd, bd))
        });
        match resolved {
            Ok(r) => break r,
            Err(e) if !updated => {
                eprintln!("xtask: {e:#}; updating the apt lists and trying again");
                apt_update()?;
                updated = true;
            }
            Err(e) => return Err(e),
        }
    };
    let read_order = |file: &str| -> Result<Vec<String>> {
        Ok(std::fs::read_to_string(kernel_dir.join(file))?
            .lines()
            .map(str::to_string)
            .collect())
    };
    let order = read_order("modules.order")?;
    let reference_order = read_order("reference.order")?;
    let release = std::fs::read_to_string(kernel_dir.join("release"))?
        .trim()
        .to_string();
    let read_modules = |order: &[String]| -> Result<Vec<(String, Vec<u8>)>> {
        order
            .iter()
            .map(|m| {
                let path = kernel_dir.join("modules").join(format!("{m}.ko"));
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                Ok((m.clone(), bytes))
            })
            .collect()
    };
    let modules = read_modules(&order)?;
    let reference = read_modules(&reference_order)?;
    let busybox_bin = std::fs::read(busybox_dir.join("busybox"))?;
    let archive = initramfs(&busybox_bin, &modules, &reference);
    // Our writer read back by our reader: every entry in bounds, the trailer last.
    let entries = cpio::read(&archive).map_err(|e| anyhow::anyhow!("initramfs: {e}"))?;
    // Rebuilt every time (milliseconds), rewritten only when it changed.
    let initrd = dir.join("initramfs.cpio");
    write_if_changed(&initrd, &archive)?;
    let kit = Kit {
        kernel: kernel_dir.join("vmlinuz"),
        initrd,
        kernel_package: kernel,
        busybox_package: busybox,
        kernel_release: release,
    };
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    eprintln!(
        "xtask: Linux kit: {} {} (kernel {}), {} {}\n       {} ({} bytes)\n       {} ({} bytes, {} entries; modules {})",
        kit.kernel_package.name,
        kit.kernel_package.version,
        kit.kernel_release,
        kit.busybox_package.name,
        kit.busybox_package.version,
        kit.kernel.display(),
        size(&kit.kernel),
        kit.initrd.display(),
        size(&kit.initrd),
        entries.len() - 1,
        order.join(" "),
    );
    Ok(kit)
}

/// The initramfs: busybox and its applet links, the directories, the
/// console node, the modules (the Hyper-V drivers, and the reference
/// machine's, each list in load order), the helpers and the scripts.
fn initramfs(
    busybox: &[u8],
    modules: &[(String, Vec<u8>)],
    reference: &[(String, Vec<u8>)],
) -> Vec<u8> {
    let mut w = cpio::Writer::new();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "etc",
        "root",
        "lib",
        "lib/modules",
    ] {
        w.dir(d, if d == "tmp" { 0o1777 } else { 0o755 });
    }
    // The kernel opens /dev/console for init before anything is mounted.
    w.char_dev("dev/console", 0o600, 5, 1);
    w.file("bin/busybox", 0o755, busybox);
    let mut seen = BTreeSet::new();
    for a in APPLETS {
        if seen.insert(*a) {
            w.symlink(&format!("bin/{a}"), "busybox");
        }
    }
    w.file("bin/vmcall", 0o755, &elf::vmcall_program());
    w.file("bin/vmmcall", 0o755, &elf::vmmcall_program());
    let mut written = BTreeSet::new();
    for (name, bytes) in modules.iter().chain(reference) {
        if written.insert(name) {
            w.file(&format!("lib/modules/{name}.ko"), 0o644, bytes);
        }
    }
    for (script, list) in [("hv-modules", modules), ("reference-modules", reference)] {
        let order: Vec<String> = list.iter().map(|(n, _)| n.clone()).collect();
        w.file(
            &format!("load-{script}"),
            0o755,
            load_modules_script(script, &order).as_bytes(),
        );
    }
    w.file("etc/hostname", 0o644, b"linux-guest\n");
    w.file("init", 0o755, INIT_SCRIPT.as_bytes());
    w.finish()
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn run_output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A field of the first record of `apt-cache show` output.
fn field(record: &str, name: &str) -> Option<String> {
    record
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// The real kernel package of `Depends:` (`linux-image-6.1.0-NN-amd64`).
fn kernel_dependency(depends: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-") && d.ends_with("-amd64") && *d != KERNEL_META)
        .map(str::to_string)
}

fn candidate(package: &str) -> Result<String> {
    run_output(Command::new("apt-cache").args(["show", "--no-all-versions", package]))
}

/// The current kernel package and busybox-static, as the local apt lists say.
fn resolve() -> Result<(Package, Package)> {
    let meta = candidate(KERNEL_META)?;
    let depends = field(&meta, "Depends").context("linux-image-amd64 has no Depends")?;
    let kernel_name = kernel_dependency(&depends)
        .with_context(|| format!("no kernel package in linux-image-amd64's Depends: {depends}"))?;
    let version = |package: &str| -> Result<Package> {
        let record = candidate(package)?;
        Ok(Package {
            name: package.to_string(),
            version: field(&record, "Version")
                .with_context(|| format!("apt-cache shows no version of {package}"))?,
        })
    };
    Ok((version(&kernel_name)?, version(BUSYBOX)?))
}

fn apt_update() -> Result<()> {
    let status = Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get update")?;
    if !status.success() {
        bail!("apt-get update failed (as root: apt-get update)");
    }
    Ok(())
}

/// `dir/debs/<name>_<version>.deb`, downloaded unless present.
fn deb(dir: &Path, p: &Package) -> Result<PathBuf> {
    let debs = dir.join("debs");
    let path = debs.join(format!("{}.deb", p.key()));
    if path.is_file() {
        return Ok(path);
    }
    let tmp = dir.join(format!("download.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    std::fs::create_dir_all(&debs)?;
    eprintln!("xtask: apt-get download {}={}", p.name, p.version);
    let status = Command::new("apt-get")
        .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
        .arg(format!("{}={}", p.name, p.version))
        .current_dir(&tmp)
        .status()
        .context("running apt-get download")?;
    let got = std::fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|f| f.extension().is_some_and(|e| e == "deb"));
    let result = match (status.success(), got) {
        (true, Some(f)) => std::fs::rename(&f, &path).map_err(Into::into),
        _ => Err(anyhow::anyhow!(
            "apt-get download {}={} failed",
            p.name,
            p.version
        )),
    };
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|()| path)
}

/// `dir/<name>_<version>/`: what `extract` takes from the package's tree.
/// Written under a temporary name and renamed, so it exists only complete.
/// The package unpacked under `dir/KEY` by `extract`, once: the tree keeps
/// `stamp` (what `extract` depended on, e.g. the module list) in a file of
/// that name, and a tree with another stamp is unpacked again. (The path
/// stays short: a boot module's string, path and name, must fit 96 bytes;
/// from a deeper checkout a link stands in, `emulator::short_path`.)
fn unpacked(
    dir: &Path,
    p: &Package,
    stamp: &str,
    extract: fn(tree: &Path, out: &Path) -> Result<()>,
) -> Result<PathBuf> {
    let out = dir.join(p.key());
    let stamp_file = |d: &Path| d.join("stamp");
    if out.is_dir() {
        if std::fs::read_to_string(stamp_file(&out)).unwrap_or_default() == stamp {
            return Ok(out);
        }
        std::fs::remove_dir_all(&out)
            .with_context(|| format!("removing the stale {}", out.display()))?;
    }
    let deb = deb(dir, p)?;
    let tree = dir.join(format!("tree.tmp{}", std::process::id()));
    let partial = dir.join(format!("{}.tmp{}", p.key(), std::process::id()));
    for d in [&tree, &partial] {
        let _ = std::fs::remove_dir_all(d);
    }
    std::fs::create_dir_all(&partial)?;
    let result = run_output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))
        .and_then(|_| extract(&tree, &partial))
        .and_then(|()| Ok(std::fs::write(stamp_file(&partial), stamp)?))
        .with_context(|| format!("unpacking {}", deb.display()));
    let _ = std::fs::remove_dir_all(&tree);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&partial);
        // A broken download is fetched again next time.
        let _ = std::fs::remove_file(&deb);
        return Err(e);
    }
    if std::fs::rename(&partial, &out).is_err() {
        // Another xtask finished the same first.
        let _ = std::fs::remove_dir_all(&partial);
    }
    Ok(out)
}

/// A short hash of `HV_MODULES` and `REFERENCE_MODULES` (FNV-1a), naming
/// the kernel's tree.
fn modules_fingerprint() -> u32 {
    HV_MODULES
        .iter()
        .chain([&"--"])
        .chain(REFERENCE_MODULES)
        .flat_map(|m| m.bytes().chain([0]))
        .fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
}

fn unpack_busybox(tree: &Path, out: &Path) -> Result<()> {
    std::fs::copy(tree.join("bin/busybox"), out.join("busybox"))
        .context("busybox-static has no bin/busybox")?;
    Ok(())
}

/// The kernel package's `boot/vmlinuz-*` as `vmlinuz`, its release as
/// `release`, and `HV_MODULES` with their dependencies as `modules/NAME.ko`
/// with the load order in `modules.order`.
fn unpack_kernel(tree: &Path, out: &Path) -> Result<()> {
    let vmlinuz: Vec<PathBuf> = std::fs::read_dir(tree.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    let [vmlinuz] = &vmlinuz[..] else {
        bail!("expected one boot/vmlinuz-* in the kernel package, found {vmlinuz:?}");
    };
    let releases: Vec<PathBuf> = std::fs::read_dir(tree.join("lib/modules"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("kernel").is_dir())
        .collect();
    let [release_dir] = &releases[..] else {
        bail!(
            "expected one lib/modules/<release>/kernel in the kernel package, found {releases:?}"
        );
    };
    let release = release_dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("module directory name")?
        .to_string();
    let mut found = BTreeMap::new();
    find_modules(&release_dir.join("kernel"), &mut found)?;
    let depends = |name: &str| -> Result<Vec<String>> {
        let path = found
            .get(name)
            .with_context(|| format!("module {name} not in the kernel package"))?;
        let bytes = std::fs::read(path)?;
        elf::module_depends(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
            .map(|d| d.iter().map(|d| d.replace('-', "_")).collect())
    };
    std::fs::copy(vmlinuz, out.join("vmlinuz"))?;
    std::fs::create_dir_all(out.join("modules"))?;
    for (wanted, file) in [
        (HV_MODULES, "modules.order"),
        (REFERENCE_MODULES, "reference.order"),
    ] {
        let order = load_order(wanted, depends)?;
        for m in &order {
            std::fs::copy(&found[m], out.join("modules").join(format!("{m}.ko")))?;
        }
        std::fs::write(out.join(file), order.join("\n") + "\n")?;
    }
    std::fs::write(out.join("release"), format!("{release}\n"))?;
    Ok(())
}

/// Every `*.ko` under `dir`, by module name (`-` read as `_`, as the kernel does).
fn find_modules(dir: &Path, found: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            find_modules(&path, found)?;
        } else if let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            found.insert(stem.replace('-', "_"), path);
        }
    }
    Ok(())
}

/// `wanted` and everything they depend on, each after its dependencies,
/// otherwise in `wanted` order.
fn load_order(
    wanted: &[&str],
    mut depends: impl FnMut(&str) -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    fn visit(
        m: &str,
        depends: &mut dyn FnMut(&str) -> Result<Vec<String>>,
        visiting: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if order.iter().any(|o| o == m) {
            return Ok(());
        }
        if visiting.iter().any(|v| v == m) {
            bail!("module dependency cycle: {} -> {m}", visiting.join(" -> "));
        }
        visiting.push(m.to_string());
        for d in depends(m)? {
            visit(&d, depends, visiting, order)?;
        }
        visiting.pop();
        order.push(m.to_string());
        Ok(())
    }
    let mut order = Vec::new();
    for m in wanted {
        visit(m, &mut depends, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

/// The root-shell lines `cargo xtask run --guest linux` gives the root (its
/// `startup` module).
pub fn startup_lines() -> String {
    format!(
        "vm new linux --kernel {KERNEL_MODULE} --initrd {INITRD_MODULE} --memory 256M --vcpus 1 \
         --cmdline \"console=ttyS0 earlyprintk=serial,ttyS0,115200 nokaslr pci=off io_delay=none\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every line `/init` prints starts with.
    const MARKER: &str = "LINUX-INIT: ";

    #[test]
    fn dependencies_load_first_in_the_wanted_order() {
        let deps: BTreeMap<&str, &[&str]> = [
            ("scsi_common", &[][..]),
            ("scsi_mod", &["scsi_common"][..]),
            ("scsi_transport_fc", &["scsi_mod"][..]),
            ("hv_vmbus", &[][..]),
            (
                "hv_storvsc",
                &["scsi_transport_fc", "hv_vmbus", "scsi_mod"][..],
            ),
            ("hv_netvsc", &["hv_vmbus"][..]),
            ("hv_utils", &["hv_vmbus"][..]),
            ("sd_mod", &["scsi_mod"][..]),
            ("crc32c_generic", &[][..]),
            ("ext4", &[][..]),
        ]
        .into_iter()
        .collect();
        let get = |m: &str| Ok(deps[m].iter().map(|d| d.to_string()).collect());
        let order = load_order(&["hv_utils", "hv_storvsc"], get).unwrap();
        assert_eq!(
            order,
            [
                "hv_vmbus",
                "hv_utils",
                "scsi_common",
                "scsi_mod",
                "scsi_transport_fc",
                "hv_storvsc"
            ]
        );
        let order = load_order(HV_MODULES, get).unwrap();
        assert_eq!(order, HV_MODULES);
        let cyclic = |m: &str| Ok(vec![if m == "a" { "b" } else { "a" }.to_string()]);
        assert!(load_order(&["a"], cyclic).is_err());
    }

    #[test]
    fn the_kernel_package_is_read_from_the_metapackage() {
        let record = "Package: linux-image-amd64\nSource: linux-signed-amd64 (6.1.192+3)\n\
                      Version: 6.1.192-3\nDepends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)\n\
                      Description: Linux for 64-bit PCs (meta-package)\n\nPackage: other\n";
        assert_eq!(field(record, "Version").unwrap(), "6.1.192-3");
        let depends = field(record, "Depends").unwrap();
        assert_eq!(
            kernel_dependency(&depends).unwrap(),
            "linux-image-6.1.0-57-amd64"
        );
        assert_eq!(
            kernel_dependency(
                "kmod, linux-image-6.1.0-9-amd64-unsigned (= 1) | linux-image-6.1.0-9-amd64"
            )
            .unwrap(),
            "linux-image-6.1.0-9-amd64"
        );
        assert!(field(record, "Package: other").is_none());
        let p = Package {
            name: "busybox-static".into(),
            version: "1:1.35.0-4+b1".into(),
        };
        assert_eq!(p.key(), "busybox-static_1%3a1.35.0-4+b1");
    }

    #[test]
    fn the_initramfs_holds_init_busybox_the_console_and_the_modules() {
        let modules = vec![
            ("scsi_common".to_string(), b"ko1".to_vec()),
            ("hv_vmbus".to_string(), b"ko2".to_vec()),
        ];
        let reference = vec![
            ("virtio".to_string(), b"ko3".to_vec()),
            ("scsi_common".to_string(), b"ko1".to_vec()),
        ];
        let a = initramfs(b"\x7FELFbusybox", &modules, &reference);
        let entries = cpio::read(&a).unwrap();
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        let init = get("init");
        assert_eq!(init.mode, cpio::S_IFREG | 0o755);
        assert_eq!(init.data, INIT_SCRIPT.as_bytes());
        assert_eq!(get("dev/console").mode, cpio::S_IFCHR | 0o600);
        assert_eq!(get("dev/console").rdev, (5, 1));
        assert_eq!(get("bin/busybox").data, b"\x7FELFbusybox");
        for applet in ["sh", "mount", "setsid", "cttyhack", "poweroff", "insmod"] {
            let e = get(&format!("bin/{applet}"));
            assert_eq!(
                (e.mode, &e.data[..]),
                (cpio::S_IFLNK | 0o777, &b"busybox"[..])
            );
        }
        for d in ["proc", "sys", "dev", "tmp", "etc", "lib/modules"] {
            assert_eq!(get(d).mode & 0o170_000, cpio::S_IFDIR, "{d}");
        }
        assert_eq!(get("lib/modules/hv_vmbus.ko").data, b"ko2");
        assert_eq!(get("bin/vmcall").data, elf::vmcall_program());
        assert_eq!(get("bin/vmmcall").data, elf::vmmcall_program());
        let load = String::from_utf8(get("load-hv-modules").data.clone()).unwrap();
        let common = load.find("insmod /lib/modules/scsi_common.ko").unwrap();
        let vmbus = load.find("insmod /lib/modules/hv_vmbus.ko").unwrap();
        assert!(common < vmbus);
        assert!(!load.contains("virtio"));
        assert_eq!(get("lib/modules/virtio.ko").data, b"ko3");
        let load = String::from_utf8(get("load-reference-modules").data.clone()).unwrap();
        let virtio = load.find("insmod /lib/modules/virtio.ko").unwrap();
        let common = load.find("insmod /lib/modules/scsi_common.ko").unwrap();
        assert!(virtio < common && !load.contains("hv_vmbus"));
        // Each parent directory comes before what it holds.
        for (i, e) in entries.iter().enumerate() {
            if let Some((parent, _)) = e.name.rsplit_once('/') {
                assert!(entries[..i].iter().any(|p| p.name == parent), "{}", e.name);
            }
        }
        // No name twice.
        let names: BTreeSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names.len(), entries.len());
    }

    #[test]
    fn init_never_loads_vmbus_and_knows_every_linuxtest_value() {
        assert!(!INIT_SCRIPT.contains("insmod"));
        assert!(!INIT_SCRIPT.contains("load-hv-modules\n"));
        for v in ["poweroff)", "reboot)", "panic)", "vmcall)", "*)"] {
            assert!(INIT_SCRIPT.contains(v), "{v}");
        }
        for m in [
            "reached init",
            "cpus ",
            "clocksource ",
            "date ",
            "kernel ",
            "shell",
            "done",
            "rebooting",
            "vmcall status",
        ] {
            assert!(INIT_SCRIPT.contains(&format!("{MARKER}{m}")), "{m}");
        }
    }

    #[test]
    fn startup_creates_the_linux_vm() {
        assert_eq!(
            startup_lines(),
            "vm new linux --kernel linux --initrd linux-initrd --memory 256M --vcpus 1 --cmdline \
             \"console=ttyS0 earlyprintk=serial,ttyS0,115200 nokaslr pci=off io_delay=none\"\n"
        );
    }
}
