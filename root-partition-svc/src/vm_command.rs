//! The `vm` commands: noun-verb, as a Hyper-V or virsh user would guess them.
use core::fmt;

/// Longest VM name.
pub const NAME_MAX: usize = 24;
/// Guest memory bounds, MiB.
pub const MEMORY_MIN_MIB: u64 = 2;
pub const MEMORY_MAX_MIB: u64 = 4096;
pub const DEFAULT_MEMORY_MIB: u64 = 64;
/// Longest kernel command line kept for a VM (with its NUL).
pub const CMDLINE_MAX: usize = 1024;
/// What `vm wait --for` waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor<'a> {
    /// The guest answers heartbeats.
    Heartbeat,
    /// Every integration service is negotiated and in use.
    Services,
    /// The guest's serial console shows this text.
    Text(&'a str),
}

/// A VMBus device the administrator adds to or removes from a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// The echo device (a diagnostic channel: `vmbus::echo`).
    Echo,
}

/// Where a disk's blocks are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskSource<'a> {
    /// A new zeroed disk in the root's RAM of this many MiB (`ram:SIZE`),
    /// kept until it is detached.
    Ram { mib: u64 },
    /// A VHD file on the root's disk.
    File(&'a str),
}

/// RAM disk bounds, MiB.
pub const RAM_DISK_MIN_MIB: u64 = 1;
pub const RAM_DISK_MAX_MIB: u64 = 4096;

/// `ram:64M` → a RAM disk of 64 MiB; anything else not starting with `-`
/// names a VHD file on the root's disk.
pub fn parse_disk_source(s: &str) -> Option<DiskSource<'_>> {
    let Some(size) = s.strip_prefix("ram:") else {
        return (!s.is_empty() && !s.starts_with('-')).then_some(DiskSource::File(s));
    };
    let (digits, unit) = match size.as_bytes().last()? {
        b'M' | b'm' => (&size[..size.len() - 1], 1),
        b'G' | b'g' => (&size[..size.len() - 1], 1024),
        _ => (size, 1),
    };
    let mib = digits.parse::<u64>().ok()?.checked_mul(unit)?;
    (RAM_DISK_MIN_MIB..=RAM_DISK_MAX_MIB)
        .contains(&mib)
        .then_some(DiskSource::Ram { mib })
}

/// Longest `vm stop --timeout`, seconds.
pub const STOP_TIMEOUT_MAX_S: u64 = 3600;

/// Wait for `vm wait` without a time.
pub const DEFAULT_WAIT_SECS: u64 = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewVm<'a> {
    pub name: &'a str,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub image: &'a str,
    /// A Linux initrd (boot module), for a bzImage.
    pub initrd: Option<&'a str>,
    /// The kernel command line, for a bzImage.
    pub cmdline: Option<&'a str>,
    /// Report the guest's exceptions (InstallIntercept): the first one
    /// stops the VM with its vector, error code and RIP.
    pub trap_exceptions: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CpuSettings {
    pub reserve: Option<u32>,
    pub limit: Option<u32>,
    pub weight: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmCommand<'a> {
    New(NewVm<'a>),
    Start(&'a str),
    Stop {
        name: &'a str,
        turn_off: bool,
        /// Seconds the guest has to shut down before it is turned off.
        timeout: Option<u64>,
    },
    /// Offer a VMBus device to the VM (at once if it runs).
    DeviceAdd(&'a str, DeviceKind),
    /// Remove it (a running guest sees the offer rescinded).
    DeviceRemove(&'a str, DeviceKind),
    /// Attach a disk to the VM's SCSI controller (the VM is off).
    DiskAttach {
        name: &'a str,
        source: DiskSource<'a>,
        read_only: bool,
    },
    /// Detach the VM's disk (the VM is off); a RAM disk's memory returns
    /// to the root.
    DiskDetach {
        name: &'a str,
        /// The file (or `ram` for a RAM disk); optional when the VM has one
        /// disk.
        path: Option<&'a str>,
    },
    /// The VM's disks.
    DiskList(&'a str),
    /// A network adapter on a switch (at once if the VM runs).
    NicAdd {
        name: &'a str,
        switch: &'a str,
        /// Access VLAN (0: untagged).
        vlan: u16,
        mac: Option<[u8; 6]>,
    },
    /// The VM's adapters.
    NicList(&'a str),
    /// Moves adapter `nic` to another VLAN (the VM may run).
    NicSet {
        name: &'a str,
        nic: u32,
        vlan: u16,
    },
    /// Removes adapter `nic` (a running guest sees it go away).
    NicRemove {
        name: &'a str,
        nic: u32,
    },
    List,
    Show(&'a str),
    /// Attach to the VM's COM1 both ways (`log`: print what was kept).
    Console {
        name: &'a str,
        log: bool,
    },
    Cpu(&'a str, CpuSettings),
    Delete(&'a str),
    /// Wait until the VM is no longer running (at most this many seconds).
    Wait(&'a str, u64),
    /// Wait until the guest's heartbeat answers (Hyper-V's `Wait-VM -For
    /// Heartbeat`), or every integration service is in use, at most this
    /// many seconds.
    WaitFor(&'a str, WaitFor<'a>, u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmParseError<'a> {
    MissingVerb,
    UnknownVerb(&'a str),
    MissingName(&'static str),
    BadName(&'a str),
    UnknownOption(&'static str, &'a str),
    MissingValue(&'a str),
    BadValue {
        option: &'a str,
        value: &'a str,
        expected: &'static str,
    },
    MissingImage,
    Extra(&'static str, &'a str),
    NothingToSet,
}

pub const VM_USAGE: &[(&str, &str)] = &[
    (
        "vm new NAME --image MODULE [--memory 64M] [--vcpus 1] [--trap-exceptions]",
        "create a guest partition (Off) from a boot module; --trap-exceptions stops it at its first exception, reporting it",
    ),
    (
        "vm new NAME --kernel MODULE [--initrd MODULE] [--cmdline \"...\"] [--memory 256M] [--vcpus N]",
        "a Linux guest: a bzImage (64-bit boot protocol), its initrd and command line",
    ),
    ("vm start NAME", "load the image and run the VM"),
    (
        "vm stop NAME [--turn-off] [--timeout S]",
        "ask the guest to shut down (integration services), turned off if it still runs after S seconds (default 60); --turn-off: at once",
    ),
    (
        "vm list",
        "ID NAME STATE CPU% MEMORY(MiB) UPTIME VCPUS EXITS of every VM",
    ),
    ("vm show NAME", "everything about one VM"),
    (
        "vm console NAME [--log]",
        "attach to the VM's serial port (COM1): what you type goes to the guest, Ctrl-] detaches; --log prints the output kept (64 KiB, control bytes escaped)",
    ),
    (
        "vm cpu NAME [--reserve P] [--limit P] [--weight W]",
        "processor reserve and limit (percent of a processor per VP), weight (1-10000)",
    ),
    (
        "vm wait NAME [--for heartbeat|services|text \"...\"] [SECONDS]",
        "wait until the VM is no longer running; --for heartbeat: until its guest answers heartbeats; --for services: until every integration service is in use; --for text: until its console shows the text (default 30 s)",
    ),
    (
        "vm device add|remove NAME echo",
        "offer a VMBus device to the VM, or take it away (a running guest sees it rescinded); echo: the diagnostic echo channel",
    ),
    (
        "vm disk attach NAME PATH|ram:SIZE [--read-only]",
        "attach a disk to the VM's synthetic SCSI controller (the VM off): PATH a VHD file on the root's disk (vhd new makes one), ram:SIZE a new zeroed disk in the root's memory (1M-4G), kept until detached",
    ),
    (
        "vm disk detach NAME [PATH|ram] | vm disk list NAME",
        "detach the VM's disk (the VM off), or list its disks",
    ),
    (
        "vm nic add NAME --switch S [--vlan N] [--mac M]",
        "a network adapter on switch S (switch new makes one), in VLAN N (1-4094; none: untagged), with address M (default 00:15:5d:...); offered at once if the VM runs",
    ),
    (
        "vm nic list NAME | vm nic set NAME NIC --vlan N|none | vm nic remove NAME NIC",
        "the VM's adapters; move one to another VLAN (running or not); remove one (a running guest sees it go away)",
    ),
    (
        "vm delete NAME",
        "delete a VM that is not running; its memory returns to the root",
    ),
];

impl fmt::Display for VmParseError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VmParseError::MissingVerb => write!(
                f,
                "vm: missing verb; try vm new | start | stop | list | show | console | cpu | wait | device | disk | nic | delete"
            ),
            VmParseError::UnknownVerb(v) => write!(
                f,
                "vm: unknown verb \"{v}\"; try vm new | start | stop | list | show | console | cpu | wait | device | disk | nic | delete"
            ),
            VmParseError::MissingName(verb) => write!(f, "vm {verb}: missing the VM's name"),
            VmParseError::BadName(n) => write!(
                f,
                "vm: \"{n}\" is not a valid name (1-{NAME_MAX} letters, digits, '-', '_', '.'; not starting with '-')"
            ),
            VmParseError::UnknownOption(verb, o) => write!(f, "vm {verb}: unknown option \"{o}\""),
            VmParseError::MissingValue(o) => write!(f, "vm: option {o} needs a value"),
            VmParseError::BadValue {
                option,
                value,
                expected,
            } => write!(f, "vm: {option} \"{value}\": expected {expected}"),
            VmParseError::MissingImage => {
                write!(
                    f,
                    "vm new: missing --image MODULE or --kernel MODULE (a boot module's name)"
                )
            }
            VmParseError::Extra(verb, a) => write!(f, "vm {verb}: unexpected argument \"{a}\""),
            VmParseError::NothingToSet => {
                write!(f, "vm cpu: give at least one of --reserve P, --limit P, --weight W")
            }
        }
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= NAME_MAX
        && !n.starts_with('-')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `64M`, `1G`, `512` (MiB) → MiB.
pub fn parse_memory(s: &str) -> Option<u64> {
    let (digits, unit) = match s.as_bytes().last()? {
        b'M' | b'm' => (&s[..s.len() - 1], 1),
        b'G' | b'g' => (&s[..s.len() - 1], 1024),
        _ => (s, 1),
    };
    let mib = digits.parse::<u64>().ok()?.checked_mul(unit)?;
    (MEMORY_MIN_MIB..=MEMORY_MAX_MIB)
        .contains(&mib)
        .then_some(mib)
}

fn number(option: &'static str, v: &str, range: core::ops::RangeInclusive<u64>) -> Option<u64> {
    let _ = option;
    v.parse::<u64>().ok().filter(|n| range.contains(n))
}

/// The sub-verb (one of `verbs`, else `expected` says which) and the VM's
/// name after `vm OPTION`.
fn verb_and_name<'a>(
    words: &mut impl Iterator<Item = &'a str>,
    option: &'static str,
    verbs: &[&str],
    expected: &'static str,
) -> Result<(&'a str, &'a str), VmParseError<'a>> {
    let verb = match words.next() {
        Some(v) if verbs.contains(&v) => v,
        v => {
            return Err(VmParseError::BadValue {
                option,
                value: v.unwrap_or(""),
                expected,
            })
        }
    };
    let name = words.next().ok_or(VmParseError::MissingName(option))?;
    if !valid_name(name) {
        return Err(VmParseError::BadName(name));
    }
    Ok((verb, name))
}

/// `vm device add|remove NAME KIND`.
fn parse_device<'a>(
    mut words: impl Iterator<Item = &'a str>,
) -> Result<VmCommand<'a>, VmParseError<'a>> {
    let (verb, name) = verb_and_name(&mut words, "device", &["add", "remove"], "add or remove")?;
    let add = verb == "add";
    let kind = match words.next() {
        Some("echo") => DeviceKind::Echo,
        v => {
            return Err(VmParseError::BadValue {
                option: "device",
                value: v.unwrap_or(""),
                expected: "a device kind: echo",
            })
        }
    };
    if let Some(a) = words.next() {
        return Err(VmParseError::Extra("device", a));
    }
    Ok(if add {
        VmCommand::DeviceAdd(name, kind)
    } else {
        VmCommand::DeviceRemove(name, kind)
    })
}

/// `vm disk attach NAME SOURCE [--read-only]`, `vm disk detach NAME [PATH]`,
/// `vm disk list NAME`.
fn parse_disk<'a>(
    mut words: impl Iterator<Item = &'a str>,
) -> Result<VmCommand<'a>, VmParseError<'a>> {
    let (verb, name) = verb_and_name(
        &mut words,
        "disk",
        &["attach", "detach", "list"],
        "attach, detach or list",
    )?;
    let cmd = match verb {
        "attach" => {
            let v = words
                .next()
                .ok_or(VmParseError::MissingValue("disk attach"))?;
            let source = parse_disk_source(v).ok_or(VmParseError::BadValue {
                option: "disk attach",
                value: v,
                expected: "PATH (a VHD file on the root's disk) or ram:SIZE (a RAM disk from 1M to 4G, e.g. ram:64M)",
            })?;
            let read_only = match words.next() {
                None => false,
                Some("--read-only") => true,
                Some(o) => return Err(VmParseError::UnknownOption("disk attach", o)),
            };
            VmCommand::DiskAttach {
                name,
                source,
                read_only,
            }
        }
        "detach" => VmCommand::DiskDetach {
            name,
            path: words.next(),
        },
        _ => VmCommand::DiskList(name),
    };
    if let Some(a) = words.next() {
        return Err(VmParseError::Extra("disk", a));
    }
    Ok(cmd)
}

/// `none`, `0` (untagged) or a VLAN id from 1 to 4094.
fn parse_vlan(v: &str) -> Option<u16> {
    if v == "none" {
        return Some(0);
    }
    v.parse::<u16>()
        .ok()
        .filter(|&n| n <= crate::vswitch::VLAN_MAX)
}

const VLAN_EXPECTED: &str = "a VLAN id from 1 to 4094, or none (untagged)";

/// `vm nic add NAME --switch S [--vlan N] [--mac M]`, `vm nic list NAME`,
/// `vm nic set NAME NIC --vlan N`, `vm nic remove NAME NIC`.
fn parse_nic<'a>(
    mut words: impl Iterator<Item = &'a str>,
) -> Result<VmCommand<'a>, VmParseError<'a>> {
    let (verb, name) = verb_and_name(
        &mut words,
        "nic",
        &["add", "list", "set", "remove"],
        "add, list, set or remove",
    )?;
    let nic_number = |words: &mut dyn Iterator<Item = &'a str>| {
        let v = words.next().ok_or(VmParseError::MissingValue("NIC"))?;
        v.parse::<u32>()
            .ok()
            .filter(|&n| n < 64)
            .ok_or(VmParseError::BadValue {
                option: "NIC",
                value: v,
                expected: "an adapter's number (vm nic list)",
            })
    };
    let cmd = match verb {
        "add" => {
            let (mut switch, mut vlan, mut mac) = (None, 0, None);
            while let Some(o) = words.next() {
                let v = words.next().ok_or(VmParseError::MissingValue(o))?;
                match o {
                    "--switch" => switch = Some(v),
                    "--vlan" => {
                        vlan = parse_vlan(v).ok_or(VmParseError::BadValue {
                            option: o,
                            value: v,
                            expected: VLAN_EXPECTED,
                        })?
                    }
                    "--mac" => {
                        let m = crate::vswitch::parse_mac(v)
                            .filter(|m| !crate::vswitch::is_group(m) && *m != [0; 6])
                            .ok_or(VmParseError::BadValue {
                                option: o,
                                value: v,
                                expected: "a unicast address like 00:15:5d:01:02:03",
                            })?;
                        mac = Some(m);
                    }
                    _ => return Err(VmParseError::UnknownOption("nic add", o)),
                }
            }
            let switch = switch.ok_or(VmParseError::MissingValue("--switch"))?;
            VmCommand::NicAdd {
                name,
                switch,
                vlan,
                mac,
            }
        }
        "set" => {
            let nic = nic_number(&mut words)?;
            match (words.next(), words.next()) {
                (Some("--vlan"), Some(v)) => VmCommand::NicSet {
                    name,
                    nic,
                    vlan: parse_vlan(v).ok_or(VmParseError::BadValue {
                        option: "--vlan",
                        value: v,
                        expected: VLAN_EXPECTED,
                    })?,
                },
                (Some("--vlan"), None) => return Err(VmParseError::MissingValue("--vlan")),
                (Some(o), _) => return Err(VmParseError::UnknownOption("nic set", o)),
                (None, _) => return Err(VmParseError::MissingValue("--vlan")),
            }
        }
        "remove" => VmCommand::NicRemove {
            name,
            nic: nic_number(&mut words)?,
        },
        _ => VmCommand::NicList(name),
    };
    if let Some(a) = words.next() {
        return Err(VmParseError::Extra("nic", a));
    }
    Ok(cmd)
}

/// Parses the words after `vm`.
pub fn parse<'a>(
    mut words: impl Iterator<Item = &'a str>,
) -> Result<VmCommand<'a>, VmParseError<'a>> {
    let verb = words.next().ok_or(VmParseError::MissingVerb)?;
    let verb_name: &'static str = match verb {
        "new" => "new",
        "start" => "start",
        "stop" => "stop",
        "list" => "list",
        "show" => "show",
        "console" => "console",
        "cpu" => "cpu",
        "delete" => "delete",
        "wait" => "wait",
        "device" => "device",
        "disk" => "disk",
        "nic" => "nic",
        other => return Err(VmParseError::UnknownVerb(other)),
    };
    if verb_name == "device" {
        return parse_device(words);
    }
    if verb_name == "disk" {
        return parse_disk(words);
    }
    if verb_name == "nic" {
        return parse_nic(words);
    }
    if verb_name == "list" {
        return match words.next() {
            Some(a) => Err(VmParseError::Extra("list", a)),
            None => Ok(VmCommand::List),
        };
    }
    let name = words.next().ok_or(VmParseError::MissingName(verb_name))?;
    if !valid_name(name) {
        return Err(VmParseError::BadName(name));
    }
    let value = |words: &mut dyn Iterator<Item = &'a str>, o: &'a str| {
        words.next().ok_or(VmParseError::MissingValue(o))
    };
    let cmd = match verb_name {
        "new" => {
            let mut memory_mib = DEFAULT_MEMORY_MIB;
            let mut vcpus = 1;
            let mut image = None;
            let (mut initrd, mut cmdline) = (None, None);
            let mut trap_exceptions = false;
            while let Some(o) = words.next() {
                if o == "--trap-exceptions" {
                    trap_exceptions = true;
                    continue;
                }
                let v = value(&mut words, o)?;
                match o {
                    "--memory" => {
                        memory_mib = parse_memory(v).ok_or(VmParseError::BadValue {
                            option: o,
                            value: v,
                            expected: "a size from 2M to 4G (e.g. 64M, 1G)",
                        })?
                    }
                    "--vcpus" => {
                        vcpus = number("--vcpus", v, 1..=64).ok_or(VmParseError::BadValue {
                            option: o,
                            value: v,
                            expected: "a number from 1 to 64",
                        })? as u32
                    }
                    "--image" | "--kernel" => image = Some(v),
                    "--initrd" => initrd = Some(v),
                    "--cmdline" if v.len() < CMDLINE_MAX => cmdline = Some(v),
                    "--cmdline" => {
                        return Err(VmParseError::BadValue {
                            option: o,
                            value: "...",
                            expected: "at most 1023 characters",
                        })
                    }
                    _ => return Err(VmParseError::UnknownOption("new", o)),
                }
            }
            VmCommand::New(NewVm {
                name,
                memory_mib,
                vcpus,
                image: image.ok_or(VmParseError::MissingImage)?,
                initrd,
                cmdline,
                trap_exceptions,
            })
        }
        "stop" => {
            let (mut turn_off, mut timeout) = (false, None);
            while let Some(o) = words.next() {
                match o {
                    "--turn-off" => turn_off = true,
                    "--timeout" => {
                        let v = value(&mut words, o)?;
                        timeout = Some(number("", v, 1..=STOP_TIMEOUT_MAX_S).ok_or(
                            VmParseError::BadValue {
                                option: o,
                                value: v,
                                expected: "a number of seconds from 1 to 3600",
                            },
                        )?);
                    }
                    _ => return Err(VmParseError::UnknownOption("stop", o)),
                }
            }
            VmCommand::Stop {
                name,
                turn_off,
                timeout,
            }
        }
        "cpu" => {
            let mut s = CpuSettings::default();
            while let Some(o) = words.next() {
                let v = value(&mut words, o)?;
                let (slot, range, expected) = match o {
                    "--reserve" => (&mut s.reserve, 0..=100, "a percent from 0 to 100"),
                    "--limit" => (&mut s.limit, 1..=100, "a percent from 1 to 100"),
                    "--weight" => (&mut s.weight, 1..=10_000, "a weight from 1 to 10000"),
                    _ => return Err(VmParseError::UnknownOption("cpu", o)),
                };
                *slot = Some(number("", v, range).ok_or(VmParseError::BadValue {
                    option: o,
                    value: v,
                    expected,
                })? as u32);
            }
            if s == CpuSettings::default() {
                return Err(VmParseError::NothingToSet);
            }
            VmCommand::Cpu(name, s)
        }
        "wait" => {
            let mut next = words.next();
            let mut what = None;
            if next == Some("--for") {
                what = Some(match words.next() {
                    Some("heartbeat") => WaitFor::Heartbeat,
                    Some("services") => WaitFor::Services,
                    Some("text") => match words.next() {
                        Some(t) if !t.is_empty() => WaitFor::Text(t),
                        _ => return Err(VmParseError::MissingValue("--for text")),
                    },
                    v => {
                        return Err(VmParseError::BadValue {
                            option: "--for",
                            value: v.unwrap_or(""),
                            expected: "heartbeat, services or text \"...\"",
                        })
                    }
                });
                next = words.next();
            }
            let secs = match next {
                None => DEFAULT_WAIT_SECS,
                Some(v) => number("", v, 1..=3600).ok_or(VmParseError::BadValue {
                    option: "SECONDS",
                    value: v,
                    expected: "a number of seconds from 1 to 3600",
                })?,
            };
            match what {
                Some(w) => VmCommand::WaitFor(name, w, secs),
                None => VmCommand::Wait(name, secs),
            }
        }
        "start" => VmCommand::Start(name),
        "show" => VmCommand::Show(name),
        "console" => {
            let log = match words.next() {
                None => false,
                Some("--log") => true,
                Some(o) => return Err(VmParseError::UnknownOption("console", o)),
            };
            VmCommand::Console { name, log }
        }
        _ => VmCommand::Delete(name),
    };
    match words.next() {
        Some(a) => Err(VmParseError::Extra(verb_name, a)),
        None => Ok(cmd),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_linux_vm() {
        let line =
            r#"new lx --kernel linux --initrd rd --cmdline "console=ttyS0 nokaslr" --memory 256M"#;
        match parse(crate::command::words(line)) {
            Ok(VmCommand::New(n)) => {
                assert_eq!(n.image, "linux");
                assert_eq!(n.initrd, Some("rd"));
                assert_eq!(n.cmdline, Some("console=ttyS0 nokaslr"));
                assert_eq!(n.memory_mib, 256);
            }
            other => panic!("{other:?}"),
        }
    }

    use super::*;

    fn p(line: &str) -> Result<VmCommand<'_>, VmParseError<'_>> {
        parse(line.split_ascii_whitespace())
    }

    #[test]
    fn the_commands_an_administrator_types() {
        assert_eq!(
            p("new web --memory 64M --vcpus 2 --image hello"),
            Ok(VmCommand::New(NewVm {
                name: "web",
                memory_mib: 64,
                vcpus: 2,
                image: "hello",
                initrd: None,
                cmdline: None,
                trap_exceptions: false,
            }))
        );
        assert_eq!(
            p("new a --image x"),
            Ok(VmCommand::New(NewVm {
                name: "a",
                memory_mib: DEFAULT_MEMORY_MIB,
                vcpus: 1,
                image: "x",
                initrd: None,
                cmdline: None,
                trap_exceptions: false,
            }))
        );
        assert_eq!(
            p("new a --trap-exceptions --image x"),
            Ok(VmCommand::New(NewVm {
                name: "a",
                memory_mib: DEFAULT_MEMORY_MIB,
                vcpus: 1,
                image: "x",
                initrd: None,
                cmdline: None,
                trap_exceptions: true,
            }))
        );
        assert_eq!(p("start web"), Ok(VmCommand::Start("web")));
        assert_eq!(
            p("stop web --turn-off"),
            Ok(VmCommand::Stop {
                name: "web",
                turn_off: true,
                timeout: None,
            })
        );
        assert_eq!(
            p("stop web --timeout 5"),
            Ok(VmCommand::Stop {
                name: "web",
                turn_off: false,
                timeout: Some(5),
            })
        );
        assert!(p("stop web --timeout 0").is_err());
        assert!(p("stop web --timeout").is_err());
        assert_eq!(
            p("device add web echo"),
            Ok(VmCommand::DeviceAdd("web", DeviceKind::Echo))
        );
        assert_eq!(
            p("device remove web echo"),
            Ok(VmCommand::DeviceRemove("web", DeviceKind::Echo))
        );
        assert!(p("device add web disk").is_err());
        assert!(p("device attach web echo").is_err());
        assert!(p("device add web echo extra").is_err());
        assert!(p("device add").is_err());
        assert_eq!(
            p("disk attach web ram:64M"),
            Ok(VmCommand::DiskAttach {
                name: "web",
                source: DiskSource::Ram { mib: 64 },
                read_only: false
            })
        );
        assert_eq!(
            p("disk attach web ram:1G --read-only"),
            Ok(VmCommand::DiskAttach {
                name: "web",
                source: DiskSource::Ram { mib: 1024 },
                read_only: true
            })
        );
        assert_eq!(
            p("disk detach web"),
            Ok(VmCommand::DiskDetach {
                name: "web",
                path: None
            })
        );
        assert_eq!(
            p("disk detach web /web.vhd"),
            Ok(VmCommand::DiskDetach {
                name: "web",
                path: Some("/web.vhd")
            })
        );
        assert_eq!(
            p("disk attach web /web.vhd --read-only"),
            Ok(VmCommand::DiskAttach {
                name: "web",
                source: DiskSource::File("/web.vhd"),
                read_only: true
            })
        );
        assert_eq!(p("disk list web"), Ok(VmCommand::DiskList("web")));
        assert_eq!(
            p("nic add web --switch lan"),
            Ok(VmCommand::NicAdd {
                name: "web",
                switch: "lan",
                vlan: 0,
                mac: None
            })
        );
        assert_eq!(
            p("nic add web --vlan 20 --switch lan --mac 00:15:5d:00:00:09"),
            Ok(VmCommand::NicAdd {
                name: "web",
                switch: "lan",
                vlan: 20,
                mac: Some([0, 0x15, 0x5d, 0, 0, 9])
            })
        );
        assert_eq!(
            p("nic set web 1 --vlan none"),
            Ok(VmCommand::NicSet {
                name: "web",
                nic: 1,
                vlan: 0
            })
        );
        assert_eq!(
            p("nic set web 0 --vlan 4094"),
            Ok(VmCommand::NicSet {
                name: "web",
                nic: 0,
                vlan: 4094
            })
        );
        assert_eq!(
            p("nic remove web 2"),
            Ok(VmCommand::NicRemove {
                name: "web",
                nic: 2
            })
        );
        assert_eq!(p("nic list web"), Ok(VmCommand::NicList("web")));
        for bad in [
            "nic add web",
            "nic add web --switch",
            "nic add web --switch lan --vlan 4095",
            "nic add web --switch lan --mac ff:ff:ff:ff:ff:ff",
            "nic add web --switch lan --mac 00:15:5d",
            "nic add web --switch lan --speed 1",
            "nic set web 0",
            "nic set web x --vlan 2",
            "nic set web 0 --mtu 9000",
            "nic remove web",
            "nic list web extra",
            "nic plug web",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        for bad in [
            "disk attach web",
            "disk attach web ram:0M",
            "disk attach web ram:5G",
            "disk attach web ram:8M --rw",
            "disk attach web --read-only",
            "disk list web extra",
            "disk remove web",
            "disk",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert_eq!(p("list"), Ok(VmCommand::List));
        assert_eq!(
            p("cpu web --limit 30 --weight 200"),
            Ok(VmCommand::Cpu(
                "web",
                CpuSettings {
                    reserve: None,
                    limit: Some(30),
                    weight: Some(200)
                }
            ))
        );
        assert_eq!(p("wait web"), Ok(VmCommand::Wait("web", DEFAULT_WAIT_SECS)));
        assert_eq!(p("wait web 5"), Ok(VmCommand::Wait("web", 5)));
        assert_eq!(
            p("wait web --for heartbeat 60"),
            Ok(VmCommand::WaitFor("web", WaitFor::Heartbeat, 60))
        );
        assert_eq!(
            p("wait web --for heartbeat"),
            Ok(VmCommand::WaitFor(
                "web",
                WaitFor::Heartbeat,
                DEFAULT_WAIT_SECS
            ))
        );
        assert_eq!(
            p("wait web --for services 9"),
            Ok(VmCommand::WaitFor("web", WaitFor::Services, 9))
        );
        assert!(p("wait web --for ip").is_err());
        assert_eq!(
            parse(crate::command::words(r#"wait web --for text "login: " 20"#)),
            Ok(VmCommand::WaitFor("web", WaitFor::Text("login: "), 20))
        );
        assert!(p("wait web --for text").is_err());
        assert_eq!(p("delete web"), Ok(VmCommand::Delete("web")));
        assert_eq!(parse_memory("1G"), Some(1024));
        assert_eq!(parse_memory("512"), Some(512));
    }

    #[test]
    fn mistakes_say_what_is_wrong() {
        assert_eq!(p(""), Err(VmParseError::MissingVerb));
        assert_eq!(p("launch x"), Err(VmParseError::UnknownVerb("launch")));
        assert_eq!(p("start"), Err(VmParseError::MissingName("start")));
        assert_eq!(p("new web"), Err(VmParseError::MissingImage));
        assert!(matches!(
            p("new web --memory 1M --image x"),
            Err(VmParseError::BadValue { .. })
        ));
        assert!(matches!(
            p("new web --vcpus 0 --image x"),
            Err(VmParseError::BadValue { .. })
        ));
        assert_eq!(
            p("new web --image"),
            Err(VmParseError::MissingValue("--image"))
        );
        assert_eq!(
            p("new web --color red"),
            Err(VmParseError::UnknownOption("new", "--color"))
        );
        assert_eq!(p("start a/b"), Err(VmParseError::BadName("a/b")));
        assert_eq!(p("cpu web"), Err(VmParseError::NothingToSet));
        assert!(matches!(
            p("cpu web --limit 0"),
            Err(VmParseError::BadValue { .. })
        ));
        assert_eq!(p("list now"), Err(VmParseError::Extra("list", "now")));
        assert_eq!(
            p("stop web --now"),
            Err(VmParseError::UnknownOption("stop", "--now"))
        );
        // Every error renders as one line.
        let msg = std::format!("{}", VmParseError::MissingImage);
        assert!(!msg.contains('\n'));
    }

    proptest::proptest! {
        /// Any line: a command or a one-line error, never a panic.
        #[test]
        fn any_line(words in proptest::collection::vec("(new|start|--memory|--vcpus|--image|--limit|--weight|--reserve|[a-z0-9-]{0,6}|[0-9]{1,5}[MG]?)", 0..8)) {
            let line = words.join(" ");
            if let Err(e) = p(&line) {
                let text = std::format!("{}", e);
                proptest::prop_assert!(!text.contains('\n'));
            }
        }
    }
}
