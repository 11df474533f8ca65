//! The page-table audit: reads QEMU's `info tlb` dump of each processor's
//! active page tables and finds writable+executable mappings.
//!
//! `info tlb` prints one line per leaf mapping:
//! `<virtual>: <physical> <flags>`, nine flag characters where the first is
//! `X` when the page is not executable (NX) and the last is `W` when it is
//! writable. The hypervisor keeps every intermediate level permissive, so the
//! leaf flags are the effective ones.

#[derive(Debug, Default)]
pub struct AuditReport {
    pub mappings: usize,
    pub executable: usize,
    pub writable_executable: Vec<String>,
    pub page_zero_mapped: bool,
}

/// Audits the monitor output of `cpus` dumps (one `info tlb` per processor).
pub fn audit(monitor: &str, cpus: u32) -> Result<AuditReport, String> {
    let mut r = AuditReport::default();
    let mut dumps = 0;
    for chunk in monitor.split("info tlb").skip(1) {
        dumps += 1;
        for line in chunk.lines() {
            let Some((va, rest)) = line.trim().split_once(": ") else {
                continue;
            };
            let mut fields = rest.split_whitespace();
            let (Some(_pa), Some(flags)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Ok(va) = u64::from_str_radix(va, 16) else {
                continue;
            };
            if flags.len() != 9 {
                continue;
            }
            r.mappings += 1;
            let nx = flags.starts_with('X');
            let writable = flags.ends_with('W');
            if !nx {
                r.executable += 1;
            }
            if !nx && writable {
                r.writable_executable.push(format!("{va:#x}"));
            }
            if va == 0 {
                r.page_zero_mapped = true;
            }
        }
    }
    if dumps < cpus as usize {
        return Err(format!("{dumps} page-table dumps for {cpus} processors"));
    }
    // A dump without mappings, or with everything executable, means the audit
    // read the wrong thing: fail rather than pass vacuously.
    if r.mappings < 100 * cpus as usize {
        return Err(format!("only {} mappings in the dumps", r.mappings));
    }
    if r.executable == 0 || r.executable > r.mappings / 2 {
        return Err(format!(
            "{} of {} mappings executable",
            r.executable, r.mappings
        ));
    }
    if r.page_zero_mapped {
        return Err("page 0 is mapped (null dereferences would not fault)".into());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(extra: &str) -> String {
        let mut s = String::from("(qemu) info tlb\n");
        for i in 1..200u64 {
            s += &format!("{:016x}: {:016x} X--DA---W\n", i << 12, i << 12);
        }
        s += "0000000000101000: 0000000000101000 ---------\n";
        s += extra;
        s
    }

    #[test]
    fn clean_tables_pass() {
        let r = audit(&dump(""), 1).unwrap();
        assert_eq!((r.mappings, r.executable), (200, 1));
        assert!(r.writable_executable.is_empty());
    }

    #[test]
    fn a_writable_executable_page_is_found() {
        let r = audit(&dump("0000000000102000: 0000000000102000 --------W\n"), 1).unwrap();
        assert_eq!(r.writable_executable, ["0x102000"]);
    }

    #[test]
    fn vacuous_or_wrong_dumps_fail() {
        assert!(audit("", 1).is_err());
        assert!(audit("(qemu) info tlb\nPG disabled\n", 1).is_err());
        assert!(audit(&dump(""), 2).is_err(), "one dump for two processors");
        assert!(audit(&dump("0000000000000000: 0000000000000000 X-------W\n"), 1).is_err());
        assert!(audit(&dump("").replace("X--DA---W", "---DA---W"), 1).is_err());
    }
}
