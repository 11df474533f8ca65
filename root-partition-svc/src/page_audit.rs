//! What the root's own page tables allow, summed up for `debug pagetables`:
//! the checks that its identity map is W^X, leaves page 0 unmapped and has
//! the stacks' guard pages.
use core::fmt;
use hypervisor_core::page_table::Leaf;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    pub mappings: u64,
    /// Bytes mapped executable, and how many of those were also writable.
    pub executable_bytes: u64,
    pub writable_executable: u64,
    /// Lowest and highest executable address (`end` exclusive).
    pub executable_span: Option<(u64, u64)>,
    pub page_zero_mapped: bool,
    /// Holes of exactly one page below `top` (besides page 0): guard pages.
    pub guard_pages: u64,
}

impl Audit {
    /// Sums up the leaves `walk` gives (in address order) of a map meant to
    /// cover `[0, top)`.
    pub fn of(walk: impl FnOnce(&mut dyn FnMut(Leaf)), top: u64) -> Audit {
        let mut a = Audit::default();
        let mut covered_to = 0u64;
        let hole = |from: u64, to: u64, a: &mut Audit| {
            if to.min(top) > from && to.min(top) - from == 4096 && from != 0 {
                a.guard_pages += 1;
            }
        };
        walk(&mut |l: Leaf| {
            a.mappings += 1;
            if l.va == 0 {
                a.page_zero_mapped = true;
            }
            if l.va > covered_to {
                hole(covered_to, l.va, &mut a);
            }
            covered_to = covered_to.max(l.va + l.size);
            if l.perms.execute {
                a.executable_bytes += l.size;
                if l.perms.write {
                    a.writable_executable += 1;
                }
                let (s, e) = a.executable_span.unwrap_or((l.va, l.va + l.size));
                a.executable_span = Some((s.min(l.va), e.max(l.va + l.size)));
            }
        });
        if covered_to < top {
            hole(covered_to, top, &mut a);
        }
        a
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "root page tables: {} mappings; ", self.mappings)?;
        match self.executable_span {
            Some((s, e)) => write!(
                f,
                "executable: {} KiB in {s:#x}..{e:#x}; ",
                self.executable_bytes >> 10
            )?,
            None => write!(f, "executable: none; ")?,
        }
        write!(
            f,
            "writable and executable: {}; page 0: {}; guard pages: {}",
            self.writable_executable,
            if self.page_zero_mapped {
                "mapped"
            } else {
                "not mapped"
            },
            self.guard_pages
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypervisor_core::page_table::Perms;
    use std::string::ToString;

    fn leaf(va: u64, size: u64, perms: Perms) -> Leaf {
        Leaf {
            va,
            pa: va,
            size,
            perms,
        }
    }

    #[test]
    fn counts_what_matters() {
        let leaves = [
            leaf(0x1000, 0x1000, Perms::RW),
            leaf(0x2000, 0x1000, Perms::RX),
            leaf(0x4000, 0x1000, Perms::RW), // 0x3000 is a guard page
            leaf(0x6000, 0x2000, Perms::RWX), // 0x5000 too
        ];
        let a = Audit::of(|f| leaves.into_iter().for_each(f), 0x9000); // 0x8000 too
        assert_eq!(a.mappings, 4);
        assert_eq!(a.executable_bytes, 0x3000);
        assert_eq!(a.writable_executable, 1);
        assert_eq!(a.executable_span, Some((0x2000, 0x8000)));
        assert!(!a.page_zero_mapped);
        assert_eq!(a.guard_pages, 3);
        assert_eq!(
            a.to_string(),
            "root page tables: 4 mappings; executable: 12 KiB in 0x2000..0x8000; \
             writable and executable: 1; page 0: not mapped; guard pages: 3"
        );
        let a = Audit::of(|f| f(leaf(0, 0x20_0000, Perms::RWX)), 0x20_0000);
        assert!(a.page_zero_mapped);
        assert_eq!(a.guard_pages, 0);
    }
}
