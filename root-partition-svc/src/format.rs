//! What the shell prints: the banner, `host info`, `host stats`, hypercall
//! status names. Everything writes to a `core::fmt::Write`.

use crate::boot::{printable, HvIdentity};
use core::fmt::{self, Write};
use hv_abi::{hypercall::status, ExitReason, HostInfo, LpStats, Slat, Vendor};

/// A byte count in MiB: whole MiB when exact, else one decimal (rounded down);
/// below 1 MiB in KiB.
#[derive(Clone, Copy, Debug)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: u64 = 1 << 20;
        let b = self.0;
        if b < MIB {
            write!(f, "{} KiB", b >> 10)
        } else if b.is_multiple_of(MIB) {
            write!(f, "{} MiB", b / MIB)
        } else {
            write!(f, "{}.{} MiB", b / MIB, (b % MIB) * 10 / MIB)
        }
    }
}

/// CPUID string bytes as text (see [`printable`]).
struct CpuidStr<'a>(&'a [u8]);

impl fmt::Display for CpuidStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 16];
        let n = printable(self.0, &mut buf);
        f.write_str(core::str::from_utf8(&buf[..n]).unwrap_or("?"))
    }
}

/// `root partition: hypervisor "Microsoft Hv" detected, 4 VPs, 1000 MiB RAM`
/// (`no hypervisor detected` when CPUID.1:ECX[31] is clear). The RAM is the
/// root's free ranges from the boot block, in whole MiB.
pub fn banner(w: &mut dyn Write, hv: &HvIdentity, vps: u32, ram_bytes: u64) -> fmt::Result {
    if hv.present {
        write!(
            w,
            "root partition: hypervisor \"{}\" detected",
            CpuidStr(&hv.vendor)
        )?;
    } else {
        write!(w, "root partition: no hypervisor detected")?;
    }
    writeln!(w, ", {vps} VPs, {} MiB RAM", ram_bytes >> 20)
}

pub fn status_name(s: u16) -> &'static str {
    match s {
        status::SUCCESS => "success",
        status::INVALID_HYPERCALL_CODE => "invalid hypercall code",
        status::INVALID_HYPERCALL_INPUT => "invalid hypercall input",
        status::INVALID_ALIGNMENT => "invalid alignment",
        status::INVALID_PARAMETER => "invalid parameter",
        status::ACCESS_DENIED => "access denied",
        status::INVALID_PARTITION_STATE => "invalid partition state",
        status::OPERATION_DENIED => "operation denied",
        status::UNKNOWN_PROPERTY => "unknown property",
        status::PROPERTY_VALUE_OUT_OF_RANGE => "property value out of range",
        status::INSUFFICIENT_MEMORY => "insufficient memory",
        status::INVALID_PARTITION_ID => "invalid partition id",
        status::INVALID_VP_INDEX => "invalid VP index",
        status::NOT_FOUND => "not found",
        status::INVALID_VP_STATE => "invalid VP state",
        status::OBJECT_IN_USE => "object in use",
        status::INVALID_REGISTER_VALUE => "invalid register value",
        _ => "unknown status",
    }
}

/// `host info: GET_HOST_INFO failed: status 0x0006 (access denied)`
pub fn hypercall_failed(w: &mut dyn Write, what: &str, call: &str, s: u16) -> fmt::Result {
    writeln!(
        w,
        "{what}: {call} failed: status {s:#06x} ({})",
        status_name(s)
    )
}

/// The `host info` report. `root_ram` is the RAM the boot block handed over.
///
/// ```text
/// host info:
///   hypervisor:          "Microsoft Hv", interface "Hv#1", version 0.1.0, ABI 2
///   root privileges:     CreatePartitions CpuManagement
///   processor vendor:    Intel
///   SLAT:                EPT
///   logical processors:  4
///   root VPs:            4
///   TSC frequency:       2994 MHz
///   memory total:        1023.6 MiB
///   memory hypervisor:   32 MiB
///   memory free:         7.5 MiB (hypervisor memory not in use)
///   memory root:         991.6 MiB
/// ```
pub fn host_info(w: &mut dyn Write, info: &HostInfo, hv: &HvIdentity) -> fmt::Result {
    use hv_abi::cpuid::privilege::{CPU_MANAGEMENT, CREATE_PARTITIONS};
    writeln!(w, "host info:")?;
    let [maj, min, patch] = info.version;
    writeln!(
        w,
        "  {:<20} \"{}\", interface \"{}\", version {maj}.{min}.{patch}, ABI {}",
        "hypervisor:",
        CpuidStr(&hv.vendor),
        CpuidStr(&hv.interface),
        info.abi_version
    )?;
    if info.abi_version != hv_abi::ABI_VERSION {
        writeln!(
            w,
            "  warning: the hypervisor speaks ABI {}, this root ABI {}",
            info.abi_version,
            hv_abi::ABI_VERSION
        )?;
    }
    write!(w, "  {:<20}", "root privileges:")?;
    let high = hv.privileges.1;
    if high & CREATE_PARTITIONS != 0 {
        write!(w, " CreatePartitions")?;
    }
    if high & CPU_MANAGEMENT != 0 {
        write!(w, " CpuManagement")?;
    }
    if high & (CREATE_PARTITIONS | CPU_MANAGEMENT) == 0 {
        write!(w, " none")?;
    }
    writeln!(w)?;
    let vendor = match info.vendor {
        Vendor::Intel => "Intel",
        Vendor::Amd => "AMD",
    };
    let slat = match info.slat {
        Slat::Ept => "EPT",
        Slat::Npt => "NPT",
    };
    writeln!(w, "  {:<20} {vendor}", "processor vendor:")?;
    writeln!(w, "  {:<20} {slat}", "SLAT:")?;
    writeln!(
        w,
        "  {:<20} {}",
        "logical processors:", info.logical_processors
    )?;
    writeln!(w, "  {:<20} {}", "root VPs:", info.root_vps)?;
    writeln!(
        w,
        "  {:<20} {} MHz",
        "TSC frequency:",
        info.tsc_hz / 1_000_000
    )?;
    writeln!(
        w,
        "  {:<20} {}",
        "memory total:",
        Size(info.memory_total_bytes)
    )?;
    writeln!(
        w,
        "  {:<20} {}",
        "memory hypervisor:",
        Size(info.hypervisor_bytes)
    )?;
    writeln!(
        w,
        "  {:<20} {} (hypervisor memory not in use)",
        "memory free:",
        Size(info.hypervisor_free_bytes)
    )?;
    writeln!(
        w,
        "  {:<20} {}",
        "memory root:",
        Size(
            info.memory_total_bytes
                .saturating_sub(info.hypervisor_bytes)
        )
    )
}

/// A share as a percentage with two decimals, `-` when the whole is zero.
#[derive(Clone, Copy, Debug)]
pub struct Percent(pub u64, pub u64);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Percent(part, whole) = *self;
        if whole == 0 {
            return f.pad("-");
        }
        let hundredths = (part as u128 * 10_000 / whole as u128) as u64;
        let mut buf = [0u8; 32];
        let mut s = crate::format::BufWriter::new(&mut buf);
        // Cannot fail: at most 20 digits + ".00%".
        let _ = write!(s, "{}.{:02}%", hundredths / 100, hundredths % 100);
        f.pad(s.as_str())
    }
}

/// A fixed buffer that implements `fmt::Write` (for padding composed values).
pub struct BufWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> BufWriter<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        BufWriter { buf, len: 0 }
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Write for BufWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn digits(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}

const LABEL: usize = 16;

/// The `host stats` table: one column per LP plus a total.
///
/// ```text
/// host stats: 2 logical processors
/// exit reason             lp0        lp1      total
/// cpuid                  1012          0       1012
/// ...
/// all exits              1450         12       1462
/// world switches         1450         12       1462
/// hypervisor time       0.41%      0.01%      0.21%
/// ```
pub fn host_stats(w: &mut dyn Write, lps: &[LpStats]) -> fmt::Result {
    let n = lps.len();
    writeln!(
        w,
        "host stats: {n} logical processor{}",
        if n == 1 { "" } else { "s" }
    )?;
    let exits = |lp: &LpStats| lp.exits.iter().fold(0u64, |a, &e| a.saturating_add(e));
    let sum = |f: &dyn Fn(&LpStats) -> u64| lps.iter().fold(0u64, |a, lp| a.saturating_add(f(lp)));
    let total_exits = sum(&exits);
    let total_switches = sum(&|lp| lp.world_switches);
    // Every column is as wide as the widest number (at least "100.00%").
    let widest = digits(
        total_exits.max(total_switches).max(
            lps.iter()
                .flat_map(|lp| lp.exits.iter().copied())
                .max()
                .unwrap_or(0),
        ),
    );
    let col = widest.max(7).max(digits(n as u64) + 2) + 2;

    write!(w, "{:<LABEL$}", "exit reason")?;
    for i in 0..n {
        let mut buf = [0u8; 16];
        let mut s = BufWriter::new(&mut buf);
        write!(s, "lp{i}")?;
        write!(w, "{:>col$}", s.as_str())?;
    }
    writeln!(w, "{:>col$}", "total")?;

    let row = |w: &mut dyn Write, label: &str, f: &dyn Fn(&LpStats) -> u64| -> fmt::Result {
        write!(w, "{label:<LABEL$}")?;
        for lp in lps {
            write!(w, "{:>col$}", f(lp))?;
        }
        writeln!(w, "{:>col$}", sum(f))
    };
    for reason in ExitReason::ALL {
        row(w, reason.name(), &|lp| lp.exits[reason as usize])?;
    }
    row(w, "all exits", &exits)?;
    row(w, "world switches", &|lp| lp.world_switches)?;

    write!(w, "{:<LABEL$}", "hypervisor time")?;
    for lp in lps {
        write!(w, "{:>col$}", Percent(lp.hypervisor_tsc, lp.total_tsc))?;
    }
    writeln!(
        w,
        "{:>col$}",
        Percent(sum(&|lp| lp.hypervisor_tsc), sum(&|lp| lp.total_tsc))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hv_abi::cpuid;
    use std::string::String;
    use std::vec::Vec;

    fn hv() -> HvIdentity {
        use cpuid::privilege::*;
        HvIdentity::from_cpuid(
            cpuid::HYPERVISOR_PRESENT,
            [
                [
                    cpuid::MAX_LEAF,
                    cpuid::VENDOR[0],
                    cpuid::VENDOR[1],
                    cpuid::VENDOR[2],
                ],
                [cpuid::INTERFACE_HV1, 0, 0, 0],
                [0, 1, 0, 0],
                [
                    ACCESS_HYPERCALL_MSRS,
                    CREATE_PARTITIONS | CPU_MANAGEMENT,
                    0,
                    0,
                ],
            ],
        )
    }

    #[test]
    fn sizes() {
        let s = |b| std::format!("{}", Size(b));
        assert_eq!(s(0), "0 KiB");
        assert_eq!(s(640 << 10), "640 KiB");
        assert_eq!(s(1 << 20), "1 MiB");
        assert_eq!(s((3 << 20) + (1 << 19)), "3.5 MiB");
        assert_eq!(s((1 << 30) - 1), "1023.9 MiB");
    }

    #[test]
    fn banner_line() {
        let mut s = String::new();
        banner(&mut s, &hv(), 4, (1000 << 20) + 5).unwrap();
        assert_eq!(
            s,
            "root partition: hypervisor \"Microsoft Hv\" detected, 4 VPs, 1000 MiB RAM\n"
        );
        let mut s = String::new();
        let none = HvIdentity::from_cpuid(0, [[0; 4]; 4]);
        banner(&mut s, &none, 1, 64 << 20).unwrap();
        assert_eq!(
            s,
            "root partition: no hypervisor detected, 1 VPs, 64 MiB RAM\n"
        );
    }

    #[test]
    fn host_info_report() {
        let info = HostInfo {
            abi_version: hv_abi::ABI_VERSION,
            version: [0, 1, 0],
            vendor: Vendor::Intel,
            slat: Slat::Ept,
            logical_processors: 4,
            root_vps: 4,
            memory_total_bytes: 1 << 30,
            hypervisor_bytes: 40 << 20,
            hypervisor_free_bytes: (7 << 20) + (1 << 19),
            tsc_hz: 2_994_000_000,
            lp0_apic_id: 0,
        };
        let mut s = String::new();
        host_info(&mut s, &info, &hv()).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines,
            [
                "host info:",
                "  hypervisor:          \"Microsoft Hv\", interface \"Hv#1\", version 0.1.0, ABI 2",
                "  root privileges:     CreatePartitions CpuManagement",
                "  processor vendor:    Intel",
                "  SLAT:                EPT",
                "  logical processors:  4",
                "  root VPs:            4",
                "  TSC frequency:       2994 MHz",
                "  memory total:        1024 MiB",
                "  memory hypervisor:   40 MiB",
                "  memory free:         7.5 MiB (hypervisor memory not in use)",
                "  memory root:         984 MiB",
            ]
        );
        let mut s = String::new();
        let old = HostInfo {
            abi_version: 99,
            vendor: Vendor::Amd,
            slat: Slat::Npt,
            ..info
        };
        host_info(&mut s, &old, &hv()).unwrap();
        assert!(s.contains("warning: the hypervisor speaks ABI 99"));
        assert!(s.contains("AMD") && s.contains("NPT"));
    }

    #[test]
    fn host_stats_table() {
        let mut lps = [LpStats::default(); 2];
        lps[0].exits[ExitReason::Cpuid as usize] = 1012;
        lps[0].exits[ExitReason::Hypercall as usize] = 3;
        lps[1].exits[ExitReason::Halt as usize] = 1;
        lps[0].world_switches = 1015;
        lps[1].world_switches = 1;
        lps[0].hypervisor_tsc = 41;
        lps[0].total_tsc = 10_000;
        lps[1].hypervisor_tsc = 1;
        lps[1].total_tsc = 10_000;
        let mut s = String::new();
        host_stats(&mut s, &lps).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 2 + ExitReason::COUNT + 3, "{s}");
        assert_eq!(lines[0], "host stats: 2 logical processors");
        assert_eq!(lines[1], "exit reason           lp0      lp1    total");
        assert_eq!(lines[2], "cpuid                1012        0     1012");
        assert_eq!(lines[6], "hlt                     0        1        1");
        assert_eq!(lines[7], "hypercall               3        0        3");
        assert_eq!(lines[17], "all exits            1015        1     1016");
        assert_eq!(lines[18], "world switches       1015        1     1016");
        assert_eq!(lines[19], "hypervisor time     0.41%    0.01%    0.21%");
        // Every row has the same width.
        assert!(lines[1..].iter().all(|l| l.len() == lines[1].len()), "{s}");
    }

    #[test]
    fn host_stats_edge_cases() {
        // No time yet, one LP, and numbers wider than the default column.
        let mut lp = LpStats::default();
        lp.exits[0] = u64::MAX;
        lp.exits[1] = 5;
        let mut s = String::new();
        host_stats(&mut s, &[lp]).unwrap();
        assert!(s.starts_with("host stats: 1 logical processor\n"));
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines.last().unwrap().ends_with('-'), "{s}");
        assert!(lines[1..].iter().all(|l| l.len() == lines[1].len()), "{s}");
        assert!(s.contains("18446744073709551615"));
        let mut s = String::new();
        host_stats(&mut s, &[]).unwrap();
        assert!(s.starts_with("host stats: 0 logical processors\n"));
    }

    #[test]
    fn percentages_and_statuses() {
        let p = |a, b| std::format!("{}", Percent(a, b));
        assert_eq!(p(0, 0), "-");
        assert_eq!(p(1, 3), "33.33%");
        assert_eq!(p(u64::MAX, u64::MAX), "100.00%");
        assert_eq!(std::format!("{:>8}", Percent(1, 2)), "  50.00%");
        let mut s = String::new();
        hypercall_failed(&mut s, "host info", "GET_HOST_INFO", status::ACCESS_DENIED).unwrap();
        assert_eq!(
            s,
            "host info: GET_HOST_INFO failed: status 0x0006 (access denied)\n"
        );
    }
}
