//! The shell's commands and their parser.
//!
//! A line is split at ASCII whitespace; commands and sub-commands are
//! lower-case words. Every malformed line gives a [`ParseError`] whose
//! `Display` is one line meant for the user.

use core::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Help,
    /// A `vm` command.
    Vm(crate::vm_command::VmCommand<'a>),
    /// A `vhd` command.
    Vhd(crate::vhd_command::VhdCommand<'a>),
    HostInfo,
    HostStats,
    /// The root's own disk: device, file system, files.
    HostDisk,
    /// The boot modules the root was given.
    HostModules,
    /// `switch new NAME [--external]`: a virtual switch, bound to the
    /// host's NIC if external.
    SwitchNew {
        name: &'a str,
        external: bool,
    },
    SwitchList,
    /// Ports, addresses learnt and counters of one switch.
    SwitchShow(&'a str),
    /// The hypervisor's log (GET_HOST_LOG); `follow`: then new lines as
    /// they come, until a key is pressed.
    HostLog {
        follow: bool,
    },
    Shutdown,
    Reboot,
    /// Read the u64 at this physical address.
    DebugRead(u64),
    /// Check that XMM0-15 survive VM exits.
    DebugFpu,
    /// Take 10 interrupts from the virtual APIC's timer.
    DebugTimer,
    /// Send an IPI to every other VP and count the answers.
    DebugIpi,
    DebugSerial,
    /// Sum up the root's own page tables (W^X, page 0, guard pages).
    DebugPageTables,
    /// Recurse until the stack's guard page stops the root (a test of the
    /// guard: the root reports a double fault and the machine stops).
    DebugOverflow,
    /// Start a VM with a state no processor accepts (long mode without
    /// PAE): its first entry fails; a `vm start` after it must work.
    DebugBadStart(&'a str),
    /// Time this many CPUID round trips through the hypervisor.
    BenchExits(u64),
    /// Time sequential writes and reads of this many MiB on the root's
    /// own disk, in a file of its file system.
    BenchDisk(u64),
}

/// `bench exits` without a count.
pub const BENCH_DEFAULT_EXITS: u64 = 10_000;
/// More would keep the shell busy for minutes under emulation.
pub const BENCH_MAX_EXITS: u64 = 10_000_000;
/// `bench disk` without a size, MiB.
pub const BENCH_DEFAULT_DISK_MIB: u64 = 64;
/// The most `bench disk` writes (FAT32's file limit is 4 GiB).
pub const BENCH_MAX_DISK_MIB: u64 = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError<'a> {
    /// Nothing but whitespace: the shell just prompts again.
    Empty,
    Unknown(&'a str),
    /// `host`/`debug` without a sub-command.
    MissingSubcommand {
        command: &'static str,
    },
    UnknownSubcommand {
        command: &'static str,
        sub: &'a str,
    },
    /// A word after a complete command.
    ExtraArgument {
        command: &'static str,
        arg: &'a str,
    },
    /// `debug read` without an address.
    MissingAddress,
    /// `debug bad-start` or `switch new|show` without a name.
    MissingName,
    BadAddress(&'a str),
    /// `bench exits` with a count that is not a number in 1..=BENCH_MAX_EXITS.
    BadCount(&'a str),
    /// `bench disk` with a size that is not a number in 1..=BENCH_MAX_DISK_MIB.
    BadSize(&'a str),
    Vm(crate::vm_command::VmParseError<'a>),
    Vhd(crate::vhd_command::VhdParseError<'a>),
}

/// Usage lines, also the `help` text.
pub const HELP: &[(&str, &str)] = &[
    ("help", "this list"),
    (
        "host info",
        "the hypervisor and the machine (GET_HOST_INFO)",
    ),
    (
        "host stats",
        "VM exits by reason and processor, world switches, hypervisor time (GET_HOST_STATS)",
    ),
    (
        "host disk",
        "the root's own disk: its device, its FAT32 file system and the files on it",
    ),
    (
        "vhd new PATH --size SIZE [--type dynamic|fixed]",
        "make a VHD file on the root's disk (dynamic by default; e.g. vhd new web.vhd --size 8G)",
    ),
    (
        "vhd show PATH",
        "a VHD file's format, type, sizes, blocks in use and the VM it is attached to",
    ),
    (
        "switch new NAME [--external]",
        "a virtual switch: internal (VMs only) or external (bound to the host's NIC, which trunks VLANs)",
    ),
    (
        "switch list | switch show NAME",
        "the switches; one switch's ports, VLANs, addresses learnt and counters (frames, bytes, drops by reason)",
    ),
    (
        "host modules",
        "the boot modules the root was given (images for vm new)",
    ),
    (
        "host log [--follow]",
        "the hypervisor's log, kept in memory (GET_HOST_LOG); --follow: new lines until a key is pressed",
    ),
    (
        "bench exits [N]",
        "time N CPUID exits (default 10000): TSC ticks per round trip",
    ),
    (
        "bench disk [MIB]",
        "time sequential 1 MiB writes then reads of MIB MiB (default 64) in bench.tmp on the root's disk",
    ),
    ("shutdown", "power the machine off (ACPI S5)"),
    (
        "reboot",
        "reset the machine (ACPI reset register, port 0xCF9, keyboard controller)",
    ),
    (
        "debug read ADDR",
        "print the u64 at physical address ADDR (0x-prefixed hex, or decimal)",
    ),
    ("debug fpu", "check that XMM0-15 survive 1000 VM exits"),
    (
        "debug timer",
        "take 10 interrupts from the x2APIC timer (the idle tick's period)",
    ),
    (
        "debug serial",
        "how many interrupts COM1's input raised (routed through the I/O APIC), or why it is polled",
    ),
    (
        "debug ipi",
        "send an IPI to every other VP and count the answers",
    ),
    (
        "debug pagetables",
        "sum up the root's page tables: executable span, W^X, page 0, guard pages",
    ),
    (
        "debug bad-start NAME",
        "start VM NAME in long mode without PAE: its first entry fails (a test of entry failures)",
    ),
    (
        "debug overflow",
        "overflow the root's stack: its guard page stops the root (the machine stops)",
    ),
];

const HOST_USAGE: &str = "host info | host stats | host disk | host modules | host log [--follow]";
const DEBUG_USAGE: &str = "debug read ADDR | debug fpu | debug timer | debug serial | debug ipi | debug pagetables | debug overflow | debug bad-start NAME";
const SWITCH_USAGE: &str = "switch new NAME [--external] | switch list | switch show NAME";
const BENCH_USAGE: &str = "bench exits [N] | bench disk [MIB]";

impl fmt::Display for ParseError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ParseError::Empty => write!(f, "empty command; type help"),
            ParseError::Vm(e) => write!(f, "{e}"),
            ParseError::Vhd(e) => write!(f, "{e}"),
            ParseError::Unknown(w) => {
                write!(f, "unknown command \"{}\"; type help", w.escape_debug())
            }
            ParseError::MissingName => {
                write!(
                    f,
                    "a name is missing; usage: debug bad-start NAME | {SWITCH_USAGE}"
                )
            }
            ParseError::MissingSubcommand { command } => {
                write!(
                    f,
                    "\"{command}\" needs a sub-command; usage: {}",
                    usage(command)
                )
            }
            ParseError::UnknownSubcommand { command, sub } => write!(
                f,
                "unknown {command} command \"{}\"; usage: {}",
                sub.escape_debug(),
                usage(command)
            ),
            ParseError::ExtraArgument { command, arg } => write!(
                f,
                "too many arguments: \"{command}\" does not take \"{}\"; type help",
                arg.escape_debug()
            ),
            ParseError::MissingAddress => {
                write!(f, "debug read needs an address; usage: debug read ADDR")
            }
            ParseError::BadCount(a) => write!(
                f,
                "bad count \"{}\": use a number from 1 to {BENCH_MAX_EXITS}",
                a.escape_debug()
            ),
            ParseError::BadSize(a) => write!(
                f,
                "bad size \"{}\": use a number of MiB from 1 to {BENCH_MAX_DISK_MIB}",
                a.escape_debug()
            ),
            ParseError::BadAddress(a) => write!(
                f,
                "bad address \"{}\": use 0x-prefixed hex or decimal, at most 64 bits",
                a.escape_debug()
            ),
        }
    }
}

fn usage(command: &str) -> &'static str {
    match command {
        "host" => HOST_USAGE,
        "bench" => BENCH_USAGE,
        "switch" => SWITCH_USAGE,
        _ => DEBUG_USAGE,
    }
}

/// A 64-bit number: `0x`/`0X` then hex digits, or decimal digits.
pub fn parse_number(s: &str) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    // `from_str_radix` would also take a leading `+`.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// The words of a line: separated by spaces; a word in double quotes may
/// hold spaces (the quotes are not part of it; an unclosed quote runs to
/// the end of the line).
pub fn words(line: &str) -> impl Iterator<Item = &str> {
    let mut rest = line;
    core::iter::from_fn(move || {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        if rest.is_empty() {
            return None;
        }
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            let word = &quoted[..end];
            rest = quoted.get(end + 1..).unwrap_or("");
            return Some(word);
        }
        let end = rest
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        let word = &rest[..end];
        rest = &rest[end..];
        Some(word)
    })
}

pub fn parse(line: &str) -> Result<Command<'_>, ParseError<'_>> {
    let mut words = words(line);
    let Some(first) = words.next() else {
        return Err(ParseError::Empty);
    };
    let (command, name): (Command, &'static str) = match first {
        "help" => (Command::Help, "help"),
        "vm" => {
            return crate::vm_command::parse(words)
                .map(Command::Vm)
                .map_err(ParseError::Vm)
        }
        "vhd" => {
            return crate::vhd_command::parse(words)
                .map(Command::Vhd)
                .map_err(ParseError::Vhd)
        }
        "shutdown" => (Command::Shutdown, "shutdown"),
        "reboot" => (Command::Reboot, "reboot"),
        "host" => match words.next() {
            None => return Err(ParseError::MissingSubcommand { command: "host" }),
            Some("info") => (Command::HostInfo, "host info"),
            Some("stats") => (Command::HostStats, "host stats"),
            Some("modules") => (Command::HostModules, "host modules"),
            Some("disk") => (Command::HostDisk, "host disk"),
            Some("log") => match words.next() {
                None => (Command::HostLog { follow: false }, "host log"),
                Some("--follow" | "-f") => (Command::HostLog { follow: true }, "host log"),
                Some(arg) => {
                    return Err(ParseError::ExtraArgument {
                        command: "host log",
                        arg,
                    })
                }
            },
            Some(sub) => {
                return Err(ParseError::UnknownSubcommand {
                    command: "host",
                    sub,
                })
            }
        },
        "switch" => match words.next() {
            None => return Err(ParseError::MissingSubcommand { command: "switch" }),
            Some("list") => (Command::SwitchList, "switch list"),
            Some("show") => match words.next() {
                Some(name) => (Command::SwitchShow(name), "switch show"),
                None => return Err(ParseError::MissingName),
            },
            Some("new") => match (words.next(), words.next()) {
                (Some(name), None) if !name.starts_with('-') => (
                    Command::SwitchNew {
                        name,
                        external: false,
                    },
                    "switch new",
                ),
                (Some(name), Some("--external")) if !name.starts_with('-') => (
                    Command::SwitchNew {
                        name,
                        external: true,
                    },
                    "switch new",
                ),
                (Some(name), Some(arg)) if !name.starts_with('-') => {
                    return Err(ParseError::ExtraArgument {
                        command: "switch new",
                        arg,
                    })
                }
                _ => return Err(ParseError::MissingName),
            },
            Some(sub) => {
                return Err(ParseError::UnknownSubcommand {
                    command: "switch",
                    sub,
                })
            }
        },
        "debug" => match words.next() {
            None => return Err(ParseError::MissingSubcommand { command: "debug" }),
            Some("fpu") => (Command::DebugFpu, "debug fpu"),
            Some("timer") => (Command::DebugTimer, "debug timer"),
            Some("ipi") => (Command::DebugIpi, "debug ipi"),
            Some("serial") => (Command::DebugSerial, "debug serial"),
            Some("overflow") => (Command::DebugOverflow, "debug overflow"),
            Some("pagetables") => (Command::DebugPageTables, "debug pagetables"),
            Some("bad-start") => match words.next() {
                Some(name) => (Command::DebugBadStart(name), "debug bad-start"),
                None => return Err(ParseError::MissingName),
            },
            Some("read") => {
                let a = words.next().ok_or(ParseError::MissingAddress)?;
                let addr = parse_number(a).ok_or(ParseError::BadAddress(a))?;
                (Command::DebugRead(addr), "debug read")
            }
            Some(sub) => {
                return Err(ParseError::UnknownSubcommand {
                    command: "debug",
                    sub,
                })
            }
        },
        "bench" => match words.next() {
            Some("exits") => {
                let n = match words.next() {
                    None => BENCH_DEFAULT_EXITS,
                    Some(a) => match parse_number(a) {
                        Some(n) if (1..=BENCH_MAX_EXITS).contains(&n) => n,
                        _ => return Err(ParseError::BadCount(a)),
                    },
                };
                (Command::BenchExits(n), "bench exits")
            }
            Some("disk") => {
                let n = match words.next() {
                    None => BENCH_DEFAULT_DISK_MIB,
                    Some(a) => match parse_number(a) {
                        Some(n) if (1..=BENCH_MAX_DISK_MIB).contains(&n) => n,
                        _ => return Err(ParseError::BadSize(a)),
                    },
                };
                (Command::BenchDisk(n), "bench disk")
            }
            None => return Err(ParseError::MissingSubcommand { command: "bench" }),
            Some(sub) => {
                return Err(ParseError::UnknownSubcommand {
                    command: "bench",
                    sub,
                })
            }
        },
        other => return Err(ParseError::Unknown(other)),
    };
    match words.next() {
        Some(arg) => Err(ParseError::ExtraArgument { command: name, arg }),
        None => Ok(command),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_words_keep_their_spaces() {
        let w: std::vec::Vec<&str> =
            super::words(r#"vm new a --cmdline "console=ttyS0 quiet"  --x "" "open"#).collect();
        assert_eq!(
            w,
            [
                "vm",
                "new",
                "a",
                "--cmdline",
                "console=ttyS0 quiet",
                "--x",
                "",
                "open"
            ]
        );
    }

    use super::*;
    use std::string::ToString;

    #[test]
    fn commands() {
        assert_eq!(parse("help"), Ok(Command::Help));
        assert_eq!(parse("  host   info \t"), Ok(Command::HostInfo));
        assert_eq!(parse("host stats"), Ok(Command::HostStats));
        assert_eq!(parse("host log"), Ok(Command::HostLog { follow: false }));
        assert_eq!(
            parse("debug bad-start web"),
            Ok(Command::DebugBadStart("web"))
        );
        assert_eq!(parse("debug bad-start"), Err(ParseError::MissingName));
        assert_eq!(
            parse("host log --follow"),
            Ok(Command::HostLog { follow: true })
        );
        assert_eq!(
            parse("host log --tail"),
            Err(ParseError::ExtraArgument {
                command: "host log",
                arg: "--tail"
            })
        );
        assert_eq!(
            parse("host log --follow x"),
            Err(ParseError::ExtraArgument {
                command: "host log",
                arg: "x"
            })
        );
        assert_eq!(parse("shutdown"), Ok(Command::Shutdown));
        assert_eq!(parse("reboot"), Ok(Command::Reboot));
        assert_eq!(parse("debug fpu"), Ok(Command::DebugFpu));
        assert_eq!(
            parse("debug read 0x100000"),
            Ok(Command::DebugRead(0x10_0000))
        );
        assert_eq!(parse("debug read 0XfF"), Ok(Command::DebugRead(255)));
        assert_eq!(parse("debug read 4096"), Ok(Command::DebugRead(4096)));
        assert_eq!(
            parse("debug read 0xffffffffffffffff"),
            Ok(Command::DebugRead(u64::MAX))
        );
    }

    #[test]
    fn empty_lines() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse("   \t "), Err(ParseError::Empty));
    }

    #[test]
    fn unknown_commands() {
        assert_eq!(parse("foo"), Err(ParseError::Unknown("foo")));
        assert_eq!(parse("HELP"), Err(ParseError::Unknown("HELP")));
        assert_eq!(
            parse("foo").unwrap_err().to_string(),
            "unknown command \"foo\"; type help"
        );
        assert_eq!(
            parse("host bar").unwrap_err(),
            ParseError::UnknownSubcommand {
                command: "host",
                sub: "bar"
            }
        );
        assert_eq!(
            parse("host").unwrap_err().to_string(),
            "\"host\" needs a sub-command; usage: host info | host stats | host disk | host modules | host log [--follow]"
        );
        assert_eq!(
            parse("debug").unwrap_err(),
            ParseError::MissingSubcommand { command: "debug" }
        );
        assert_eq!(
            parse("debug write 1").unwrap_err().to_string(),
            "unknown debug command \"write\"; usage: debug read ADDR | debug fpu | debug timer | debug serial | debug ipi | debug pagetables | debug overflow | debug bad-start NAME"
        );
        // Control characters are shown escaped, the message stays one line.
        let msg = parse("a\u{1b}b").unwrap_err().to_string();
        assert!(!msg.contains('\u{1b}') && !msg.contains('\n'), "{msg}");
    }

    #[test]
    fn bad_addresses() {
        assert_eq!(parse("debug read"), Err(ParseError::MissingAddress));
        for bad in [
            "0x",
            "0xg",
            "12a",
            "-1",
            "+1",
            "0x1_000",
            "18446744073709551616",
            "0x1ffffffffffffffff",
        ] {
            let line = std::format!("debug read {bad}");
            assert_eq!(parse(&line), Err(ParseError::BadAddress(bad)), "{bad}");
        }
        assert_eq!(
            parse("debug read zz").unwrap_err().to_string(),
            "bad address \"zz\": use 0x-prefixed hex or decimal, at most 64 bits"
        );
    }

    #[test]
    fn extra_arguments() {
        assert_eq!(
            parse("help me"),
            Err(ParseError::ExtraArgument {
                command: "help",
                arg: "me"
            })
        );
        assert_eq!(
            parse("host info now"),
            Err(ParseError::ExtraArgument {
                command: "host info",
                arg: "now"
            })
        );
        assert_eq!(
            parse("debug read 0x10 0x20"),
            Err(ParseError::ExtraArgument {
                command: "debug read",
                arg: "0x20"
            })
        );
        assert_eq!(
            parse("shutdown -f").unwrap_err().to_string(),
            "too many arguments: \"shutdown\" does not take \"-f\"; type help"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0"), Some(0));
        assert_eq!(parse_number("0x0"), Some(0));
        assert_eq!(parse_number("0xDEADbeef"), Some(0xDEAD_BEEF));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("1.5"), None);
    }

    #[test]
    fn bench_exits() {
        assert_eq!(
            parse("bench exits"),
            Ok(Command::BenchExits(BENCH_DEFAULT_EXITS))
        );
        assert_eq!(parse("bench exits 0x10"), Ok(Command::BenchExits(16)));
        assert_eq!(parse("bench disk"), Ok(Command::BenchDisk(64)));
        assert_eq!(
            parse("switch new lan"),
            Ok(Command::SwitchNew {
                name: "lan",
                external: false
            })
        );
        assert_eq!(
            parse("switch new wan --external"),
            Ok(Command::SwitchNew {
                name: "wan",
                external: true
            })
        );
        assert_eq!(parse("switch list"), Ok(Command::SwitchList));
        assert_eq!(parse("switch show lan"), Ok(Command::SwitchShow("lan")));
        assert_eq!(parse("switch new"), Err(ParseError::MissingName));
        assert_eq!(parse("switch new --external"), Err(ParseError::MissingName));
        assert!(parse("switch new lan --internal").is_err());
        assert!(parse("switch list x").is_err());
        assert!(parse("switch").is_err());
        assert!(parse("switch delete lan").is_err());
        assert_eq!(parse("bench disk 16"), Ok(Command::BenchDisk(16)));
        assert_eq!(parse("bench disk 0"), Err(ParseError::BadSize("0")));
        assert_eq!(parse("bench disk 4096"), Err(ParseError::BadSize("4096")));
        assert_eq!(parse("bench exits 0"), Err(ParseError::BadCount("0")));
        assert_eq!(
            parse("bench exits 99999999999"),
            Err(ParseError::BadCount("99999999999"))
        );
        assert_eq!(
            parse("bench exits x").unwrap_err().to_string(),
            "bad count \"x\": use a number from 1 to 10000000"
        );
        assert_eq!(
            parse("bench"),
            Err(ParseError::MissingSubcommand { command: "bench" })
        );
        assert_eq!(
            parse("bench exits 5 6"),
            Err(ParseError::ExtraArgument {
                command: "bench exits",
                arg: "6"
            })
        );
    }

    #[test]
    fn apic_debug_commands() {
        assert_eq!(parse("debug timer"), Ok(Command::DebugTimer));
        assert_eq!(parse("debug ipi"), Ok(Command::DebugIpi));
        assert_eq!(parse("debug serial"), Ok(Command::DebugSerial));
        assert_eq!(
            parse("debug ipi 3"),
            Err(ParseError::ExtraArgument {
                command: "debug ipi",
                arg: "3"
            })
        );
    }
}
