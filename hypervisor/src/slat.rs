//! Second-level address translation: one type for the root's table and
//! guest partitions' (EPT on Intel, NPT on AMD), over the page-table builder
//! of `hypervisor_core::page_table`.
use crate::memory;
use crate::page_table::{Ept, Npt, PageTable, Perms, SIZE_1G, SIZE_2M, SIZE_4K};
use crate::virt::Caps;
use crate::x86::cpu;
use alloc::vec::Vec;
use hv_abi::partition as abi;

/// A partition's second-level table (EPT or NPT, by the processor's vendor).
pub enum Slat {
    Ept(PageTable<Ept>),
    Npt(PageTable<Npt>),
}

impl Slat {
    /// An empty table whose leaves are at most `max_page` (4 KiB, 2 MiB or
    /// 1 GiB, as the processor supports them). `None`: no memory, or no
    /// hardware virtualization.
    pub fn new(caps: &Caps, max_page: u64) -> Option<Slat> {
        memory::with_tables(|mem| match caps {
            Caps::Vmx(_) => PageTable::<Ept>::new(mem, max_page, false)
                .ok()
                .map(Slat::Ept),
            Caps::Svm(_) => PageTable::<Npt>::new(mem, max_page, false)
                .ok()
                .map(Slat::Npt),
            Caps::None => None,
        })
    }

    /// The largest leaf the processor's SLAT offers: EPT large pages are
    /// their own capabilities; NPT uses the host's page formats.
    pub fn max_page(caps: &Caps) -> u64 {
        match caps {
            Caps::Vmx(v) if v.ept_1g => SIZE_1G,
            Caps::Vmx(v) if v.ept_2m => SIZE_2M,
            Caps::Svm(_) if cpu::has_1g_pages() => SIZE_1G,
            Caps::Svm(_) => SIZE_2M,
            _ => SIZE_4K,
        }
    }

    /// "EPT" or "NPT", for the log.
    pub fn name(&self) -> &'static str {
        match self {
            Slat::Ept(_) => "EPT",
            Slat::Npt(_) => "NPT",
        }
    }

    /// Maps `[gpa, gpa + len)` to `[spa, spa + len)` with the largest leaves
    /// that fit.
    pub fn map_range(&mut self, gpa: u64, spa: u64, len: u64, perms: Perms) -> bool {
        memory::with_tables(|mem| match self {
            Slat::Ept(t) => t.map(mem, gpa, spa, len, perms).is_ok(),
            Slat::Npt(t) => t.map(mem, gpa, spa, len, perms).is_ok(),
        })
    }

    pub fn root(&self) -> u64 {
        match self {
            Slat::Ept(t) => t.root(),
            Slat::Npt(t) => t.root(),
        }
    }

    /// Maps one 4 KiB page.
    pub fn map(&mut self, gpa: u64, spa: u64, perms: Perms) -> bool {
        memory::with_tables(|mem| match self {
            Slat::Ept(t) => t.map(mem, gpa, spa, SIZE_4K, perms).is_ok(),
            Slat::Npt(t) => t.map(mem, gpa, spa, SIZE_4K, perms).is_ok(),
        })
    }

    pub fn unmap(&mut self, gpa: u64) -> Option<u64> {
        memory::with_tables(|mem| match self {
            Slat::Ept(t) => t.unmap_4k(mem, gpa),
            Slat::Npt(t) => t.unmap_4k(mem, gpa),
        })
    }

    pub fn translate(&self, gpa: u64) -> Option<(u64, Perms)> {
        // The table walk uses GPA bits 47:12 only: a GPA with higher bits
        // would alias a low one.
        if gpa >= abi::MAX_GPA {
            return None;
        }
        memory::with_tables(|mem| {
            let leaf = match self {
                Slat::Ept(t) => t.translate(mem, gpa),
                Slat::Npt(t) => t.translate(mem, gpa),
            }?;
            Some((leaf.pa + (gpa - leaf.va), leaf.perms))
        })
    }

    /// Every mapped (gpa, spa) page, then every table page: for teardown.
    pub fn contents(&self) -> (Vec<(u64, u64)>, Vec<u64>) {
        let (mut pages, mut tables) = (Vec::new(), Vec::new());
        memory::with_tables(|mem| match self {
            Slat::Ept(t) => {
                t.leaves(mem, &mut |l| pages.push((l.va, l.pa)));
                t.tables(mem, &mut |p| tables.push(p));
            }
            Slat::Npt(t) => {
                t.leaves(mem, &mut |l| pages.push((l.va, l.pa)));
                t.tables(mem, &mut |p| tables.push(p));
            }
        });
        (pages, tables)
    }
}
