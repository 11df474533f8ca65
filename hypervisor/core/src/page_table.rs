//! A 4-level page-table builder, generic over the entry format.
//!
//! The hypervisor's own tables use the x86 format (Intel SDM vol. 3 section
//! 4.5, AMD APM vol. 2 section 5.3); the second-level tables of partitions
//! (EPT, NPT) are further formats of the same walk. Table memory is reached
//! through [`TableMemory`], entry by entry, so the builder is safe code and runs
//! on the host in unit tests.

pub const SIZE_4K: u64 = 1 << 12;
pub const SIZE_2M: u64 = 1 << 21;
pub const SIZE_1G: u64 = 1 << 30;

/// Where page tables live: allocation and entry access by physical address.
pub trait TableMemory {
    /// A new zeroed 4 KiB table.
    fn alloc_table(&mut self) -> Option<u64>;
    fn read(&self, table: u64, index: usize) -> u64;
    fn write(&mut self, table: u64, index: usize, value: u64);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    pub write: bool,
    pub execute: bool,
    /// Device memory: uncached. EPT ignores the MTRRs, so the entry must say so.
    pub uncached: bool,
}

impl Perms {
    pub const R: Perms = Perms {
        write: false,
        execute: false,
        uncached: false,
    };
    pub const RW: Perms = Perms {
        write: true,
        execute: false,
        uncached: false,
    };
    pub const RX: Perms = Perms {
        write: false,
        execute: true,
        uncached: false,
    };
    pub const RWX: Perms = Perms {
        write: true,
        execute: true,
        uncached: false,
    };
    /// Memory-mapped devices as a partition sees them.
    pub const DEVICE: Perms = Perms {
        write: true,
        execute: true,
        uncached: true,
    };
}

/// How entries of one page-table flavour are encoded. Levels: 1 maps 4 KiB,
/// 2 maps 2 MiB, 3 maps 1 GiB, 4 is the root.
pub trait Format {
    /// An entry that points at the next-level table. It grants everything:
    /// the leaf decides.
    fn table_entry(table: u64) -> u64;
    fn leaf_entry(addr: u64, perms: Perms, level: u8) -> u64;
    fn is_present(entry: u64) -> bool;
    /// A level 2 or 3 entry mapping a large page rather than a table.
    fn is_large(entry: u64) -> bool;
    fn perms(entry: u64) -> Perms;
}

const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// The x86 long-mode format of the hypervisor's own tables.
pub struct X86;

impl X86 {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITABLE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    pub const LARGE: u64 = 1 << 7;
    pub const NO_EXECUTE: u64 = 1 << 63;
}

impl Format for X86 {
    fn table_entry(table: u64) -> u64 {
        (table & ADDR_MASK) | Self::PRESENT | Self::WRITABLE
    }
    fn leaf_entry(addr: u64, perms: Perms, level: u8) -> u64 {
        let mut e = (addr & ADDR_MASK) | Self::PRESENT;
        if perms.write {
            e |= Self::WRITABLE;
        }
        if !perms.execute {
            e |= Self::NO_EXECUTE;
        }
        if level > 1 {
            e |= Self::LARGE;
        }
        e
    }
    fn is_present(entry: u64) -> bool {
        entry & Self::PRESENT != 0
    }
    fn is_large(entry: u64) -> bool {
        entry & Self::LARGE != 0
    }
    fn perms(entry: u64) -> Perms {
        Perms {
            write: entry & Self::WRITABLE != 0,
            execute: entry & Self::NO_EXECUTE == 0,
            uncached: entry & Self::CACHE_DISABLE != 0,
        }
    }
}

impl X86 {
    pub const WRITE_THROUGH: u64 = 1 << 3;
    pub const CACHE_DISABLE: u64 = 1 << 4;
}

/// AMD nested page tables (AMD APM vol. 2 section 15.25): the x86 format, but
/// every level must allow user access (nested walks are user accesses).
/// Memory types come from the host PAT bits and the MTRRs.
pub struct Npt;

impl Format for Npt {
    fn table_entry(table: u64) -> u64 {
        X86::table_entry(table) | X86::USER
    }
    fn leaf_entry(addr: u64, perms: Perms, level: u8) -> u64 {
        let mut e = X86::leaf_entry(addr, perms, level) | X86::USER;
        if perms.uncached {
            e |= X86::CACHE_DISABLE | X86::WRITE_THROUGH;
        }
        e
    }
    fn is_present(entry: u64) -> bool {
        X86::is_present(entry)
    }
    fn is_large(entry: u64) -> bool {
        X86::is_large(entry)
    }
    fn perms(entry: u64) -> Perms {
        X86::perms(entry)
    }
}

/// Intel extended page tables (Intel SDM vol. 3 section 29.3.2): read, write
/// and execute bits, and the memory type in every leaf (the MTRRs do not apply
/// to guest accesses).
pub struct Ept;

impl Ept {
    pub const READ: u64 = 1 << 0;
    pub const WRITE: u64 = 1 << 1;
    pub const EXECUTE: u64 = 1 << 2;
    pub const MEMORY_TYPE_UC: u64 = 0 << 3;
    pub const MEMORY_TYPE_WB: u64 = 6 << 3;
    pub const LARGE: u64 = 1 << 7;
}

impl Format for Ept {
    fn table_entry(table: u64) -> u64 {
        (table & ADDR_MASK) | Self::READ | Self::WRITE | Self::EXECUTE
    }
    fn leaf_entry(addr: u64, perms: Perms, level: u8) -> u64 {
        let mut e = (addr & ADDR_MASK) | Self::READ;
        if perms.write {
            e |= Self::WRITE;
        }
        if perms.execute {
            e |= Self::EXECUTE;
        }
        e |= if perms.uncached {
            Self::MEMORY_TYPE_UC
        } else {
            Self::MEMORY_TYPE_WB
        };
        if level > 1 {
            e |= Self::LARGE;
        }
        e
    }
    fn is_present(entry: u64) -> bool {
        entry & (Self::READ | Self::WRITE | Self::EXECUTE) != 0
    }
    fn is_large(entry: u64) -> bool {
        entry & Self::LARGE != 0
    }
    fn perms(entry: u64) -> Perms {
        Perms {
            write: entry & Self::WRITE != 0,
            execute: entry & Self::EXECUTE != 0,
            uncached: entry & (7 << 3) == Self::MEMORY_TYPE_UC,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    OutOfMemory,
    AlreadyMapped(u64),
    Misaligned,
    /// Refused by a table built with `deny_writable_executable`.
    WritableExecutable,
    AddressTooLarge,
}

/// One leaf mapping, as found by [`PageTable::translate`] and [`PageTable::leaves`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub va: u64,
    pub pa: u64,
    pub size: u64,
    pub perms: Perms,
}

pub struct PageTable<F: Format> {
    root: u64,
    deny_wx: bool,
    max_page: u64,
    _format: core::marker::PhantomData<F>,
}

fn level_size(level: u8) -> u64 {
    1 << (12 + 9 * (level as u64 - 1))
}

/// Bits 63:47 all equal (48-bit linear addresses).
fn canonical(va: u64) -> bool {
    matches!(va >> 47, 0 | 0x1_FFFF)
}

/// Sign-extends bit 47, turning a walk position into a canonical address.
fn sign_extend(va: u64) -> u64 {
    ((va << 16) as i64 >> 16) as u64
}

fn index(va: u64, level: u8) -> usize {
    ((va >> (12 + 9 * (level as u64 - 1))) & 511) as usize
}

impl<F: Format> PageTable<F> {
    /// A new empty table. `max_page` is the largest page size to use (4 KiB,
    /// 2 MiB or 1 GiB, as the processor supports).
    pub fn new(
        mem: &mut dyn TableMemory,
        max_page: u64,
        deny_writable_executable: bool,
    ) -> Result<Self, MapError> {
        let root = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
        Ok(Self {
            root,
            deny_wx: deny_writable_executable,
            max_page,
            _format: core::marker::PhantomData,
        })
    }

    /// A hierarchy someone else built, to read (`translate`, `leaves`).
    pub fn existing(root: u64) -> Self {
        Self {
            root,
            deny_wx: true,
            max_page: SIZE_4K,
            _format: core::marker::PhantomData,
        }
    }

    /// The physical address of the root table (for CR3, EPTP or nCR3).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Maps `[va, va + len)` to `[pa, pa + len)` with the largest pages that fit.
    pub fn map(
        &mut self,
        mem: &mut dyn TableMemory,
        va: u64,
        pa: u64,
        len: u64,
        perms: Perms,
    ) -> Result<(), MapError> {
        if self.deny_wx && perms.write && perms.execute {
            return Err(MapError::WritableExecutable);
        }
        if !(va | pa | len).is_multiple_of(SIZE_4K) {
            return Err(MapError::Misaligned);
        }
        // Both ends canonical and in the same half: no span crosses the hole.
        let last = va
            .checked_add(len.saturating_sub(1))
            .ok_or(MapError::AddressTooLarge)?;
        if !canonical(va)
            || va >> 47 != last >> 47
            || pa.checked_add(len).is_none_or(|end| end > 1 << 52)
        {
            return Err(MapError::AddressTooLarge);
        }
        let mut off = 0;
        while off < len {
            let (v, p, left) = (va + off, pa + off, len - off);
            let size = [SIZE_1G, SIZE_2M, SIZE_4K]
                .into_iter()
                .find(|&s| s <= self.max_page && v % s == 0 && p % s == 0 && left >= s)
                .unwrap_or(SIZE_4K);
            let level = match size {
                SIZE_1G => 3,
                SIZE_2M => 2,
                _ => 1,
            };
            self.map_one(mem, v, p, level, perms)?;
            off += size;
        }
        Ok(())
    }

    fn map_one(
        &mut self,
        mem: &mut dyn TableMemory,
        va: u64,
        pa: u64,
        level: u8,
        perms: Perms,
    ) -> Result<(), MapError> {
        let mut table = self.root;
        for l in (level + 1..=4).rev() {
            let i = index(va, l);
            let e = mem.read(table, i);
            table = if !F::is_present(e) {
                let t = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
                mem.write(table, i, F::table_entry(t));
                t
            } else if l <= 3 && F::is_large(e) {
                return Err(MapError::AlreadyMapped(va));
            } else {
                e & ADDR_MASK
            };
        }
        let i = index(va, level);
        if F::is_present(mem.read(table, i)) {
            return Err(MapError::AlreadyMapped(va));
        }
        mem.write(table, i, F::leaf_entry(pa, perms, level));
        Ok(())
    }

    /// The leaf that maps `va`, if any.
    pub fn translate(&self, mem: &dyn TableMemory, va: u64) -> Option<Leaf> {
        let mut table = self.root;
        for level in (1..=4u8).rev() {
            let e = mem.read(table, index(va, level));
            if !F::is_present(e) {
                return None;
            }
            if level == 1 || (level <= 3 && F::is_large(e)) {
                let size = level_size(level);
                let base = e & ADDR_MASK & !(size - 1);
                return Some(Leaf {
                    va: va & !(size - 1),
                    pa: base,
                    size,
                    perms: F::perms(e),
                });
            }
            table = e & ADDR_MASK;
        }
        None
    }

    /// Removes the 4 KiB mapping of `va`; returns the physical address it
    /// had. `None` when `va` is not mapped by a 4 KiB leaf (absent, or inside
    /// a large page, which this does not split).
    pub fn unmap_4k(&mut self, mem: &mut dyn TableMemory, va: u64) -> Option<u64> {
        let mut table = self.root;
        for level in (2..=4u8).rev() {
            let e = mem.read(table, index(va, level));
            if !F::is_present(e) || (level <= 3 && F::is_large(e)) {
                return None;
            }
            table = e & ADDR_MASK;
        }
        let i = index(va, 1);
        let e = mem.read(table, i);
        if !F::is_present(e) {
            return None;
        }
        mem.write(table, i, 0);
        Some(e & ADDR_MASK)
    }

    /// Calls `f` with every table of the hierarchy (the root last), for
    /// freeing them; the tables are not changed.
    pub fn tables(&self, mem: &dyn TableMemory, f: &mut dyn FnMut(u64)) {
        fn walk<F: Format>(mem: &dyn TableMemory, table: u64, level: u8, f: &mut dyn FnMut(u64)) {
            if level > 1 {
                for i in 0..512 {
                    let e = mem.read(table, i);
                    if F::is_present(e) && !(level <= 3 && F::is_large(e)) {
                        walk::<F>(mem, e & ADDR_MASK, level - 1, f);
                    }
                }
            }
            f(table);
        }
        walk::<F>(mem, self.root, 4, f);
    }

    /// Calls `f` for every leaf mapping, in address order.
    pub fn leaves(&self, mem: &dyn TableMemory, f: &mut dyn FnMut(Leaf)) {
        fn walk<F: Format>(
            mem: &dyn TableMemory,
            table: u64,
            level: u8,
            base: u64,
            f: &mut dyn FnMut(Leaf),
        ) {
            for i in 0..512 {
                let e = mem.read(table, i);
                if !F::is_present(e) {
                    continue;
                }
                let va = sign_extend(base + i as u64 * level_size(level));
                if level == 1 || (level <= 3 && F::is_large(e)) {
                    let size = level_size(level);
                    f(Leaf {
                        va,
                        pa: e & ADDR_MASK & !(size - 1),
                        size,
                        perms: F::perms(e),
                    });
                } else {
                    walk::<F>(mem, e & ADDR_MASK, level - 1, va, f);
                }
            }
        }
        walk::<F>(mem, self.root, 4, 0, f);
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::vec::Vec;

    /// Table memory on the host heap, at made-up physical addresses.
    #[derive(Default)]
    pub struct HostTables {
        tables: HashMap<u64, [u64; 512]>,
        next: u64,
        pub limit: Option<usize>,
    }

    impl TableMemory for HostTables {
        fn alloc_table(&mut self) -> Option<u64> {
            if self.limit.is_some_and(|l| self.tables.len() >= l) {
                return None;
            }
            self.next += SIZE_4K;
            let pa = 0x7700_0000_0000 + self.next;
            self.tables.insert(pa, [0; 512]);
            Some(pa)
        }
        fn read(&self, table: u64, index: usize) -> u64 {
            self.tables[&table][index]
        }
        fn write(&mut self, table: u64, index: usize, value: u64) {
            self.tables.get_mut(&table).unwrap()[index] = value;
        }
    }

    #[test]
    fn largest_pages_that_fit() {
        let mut m = HostTables::default();
        let mut pt = PageTable::<X86>::new(&mut m, SIZE_1G, true).unwrap();
        // 4 KiB head, 2 MiB pages, then a 1 GiB page, then a 4 KiB tail.
        pt.map(
            &mut m,
            SIZE_1G - SIZE_2M - SIZE_4K,
            SIZE_1G - SIZE_2M - SIZE_4K,
            SIZE_4K + SIZE_2M + SIZE_1G + SIZE_4K,
            Perms::RW,
        )
        .unwrap();
        let mut sizes = Vec::new();
        pt.leaves(&m, &mut |l| sizes.push(l.size));
        assert_eq!(sizes, [SIZE_4K, SIZE_2M, SIZE_1G, SIZE_4K]);
        let l = pt.translate(&m, SIZE_1G + 12345).unwrap();
        assert_eq!(
            (l.va, l.pa, l.size, l.perms),
            (SIZE_1G, SIZE_1G, SIZE_1G, Perms::RW)
        );
        assert_eq!(pt.translate(&m, 0), None);
    }

    #[test]
    fn unmapping_4k_pages_and_listing_tables() {
        let mut m = HostTables::default();
        let mut pt = PageTable::<Ept>::new(&mut m, SIZE_4K, false).unwrap();
        pt.map(&mut m, 0x20_0000, 0x900_0000, 3 * SIZE_4K, Perms::RWX)
            .unwrap();
        assert_eq!(pt.unmap_4k(&mut m, 0x20_1000), Some(0x900_1000));
        assert_eq!(pt.unmap_4k(&mut m, 0x20_1000), None, "already gone");
        assert_eq!(pt.unmap_4k(&mut m, 0x4000_0000), None, "never mapped");
        assert_eq!(pt.translate(&m, 0x20_1000), None);
        assert!(pt.translate(&m, 0x20_2000).is_some());
        // Remapping the hole works; the tables are PML4, PDPT, PD, PT.
        pt.map(&mut m, 0x20_1000, 0x800_0000, SIZE_4K, Perms::R)
            .unwrap();
        let mut tables = Vec::new();
        pt.tables(&m, &mut |t| tables.push(t));
        assert_eq!(tables.len(), 4);
        assert_eq!(*tables.last().unwrap(), pt.root());
        // A large page is not split.
        let mut big = PageTable::<Ept>::new(&mut m, SIZE_2M, false).unwrap();
        big.map(&mut m, 0, 0, SIZE_2M, Perms::RW).unwrap();
        assert_eq!(big.unmap_4k(&mut m, 0x1000), None);
    }

    #[test]
    fn no_1g_pages_when_the_cpu_lacks_them() {
        let mut m = HostTables::default();
        let mut pt = PageTable::<X86>::new(&mut m, SIZE_2M, true).unwrap();
        pt.map(&mut m, 0, 0, SIZE_1G, Perms::RW).unwrap();
        let mut n = 0;
        pt.leaves(&m, &mut |l| {
            assert_eq!(l.size, SIZE_2M);
            n += 1
        });
        assert_eq!(n, 512);
    }

    #[test]
    fn writable_executable_is_refused_when_denied() {
        let mut m = HostTables::default();
        let mut pt = PageTable::<X86>::new(&mut m, SIZE_1G, true).unwrap();
        assert_eq!(
            pt.map(&mut m, 0, 0, SIZE_4K, Perms::RWX),
            Err(MapError::WritableExecutable)
        );
        let mut open = PageTable::<X86>::new(&mut m, SIZE_1G, false).unwrap();
        assert_eq!(open.map(&mut m, 0, 0, SIZE_4K, Perms::RWX), Ok(()));
    }

    #[test]
    fn encodings_follow_the_sdm() {
        assert_eq!(
            X86::leaf_entry(0x20_0000, Perms::RX, 2),
            0x20_0000 | 1 | (1 << 7)
        );
        assert_eq!(
            X86::leaf_entry(0x3000, Perms::RW, 1),
            0x3000 | 1 | 2 | (1 << 63)
        );
        assert_eq!(X86::table_entry(0x5000), 0x5003);
    }

    #[test]
    fn ept_and_npt_encodings() {
        // EPT: R/W/X in bits 2:0, WB (6) or UC (0) in bits 5:3, large page bit 7.
        assert_eq!(
            Ept::leaf_entry(0x4000_0000, Perms::RWX, 3),
            0x4000_0000 | 7 | (6 << 3) | (1 << 7)
        );
        assert_eq!(
            Ept::leaf_entry(0xFEC0_0000, Perms::DEVICE, 1),
            0xFEC0_0000 | 7
        );
        assert_eq!(Ept::leaf_entry(0x1000, Perms::R, 1), 0x1000 | 1 | (6 << 3));
        assert_eq!(Ept::table_entry(0x9000), 0x9007);
        // NPT: user at every level, NX when not executable, PCD|PWT for devices.
        assert_eq!(Npt::table_entry(0x9000), 0x9007);
        assert_eq!(
            Npt::leaf_entry(0x20_0000, Perms::RWX, 2),
            0x20_0000 | 7 | (1 << 7)
        );
        assert_eq!(
            Npt::leaf_entry(0x1000, Perms::DEVICE, 1),
            0x1000 | 7 | (1 << 3) | (1 << 4)
        );
        for perms in [Perms::R, Perms::RW, Perms::RX, Perms::RWX, Perms::DEVICE] {
            assert_eq!(Ept::perms(Ept::leaf_entry(0x1000, perms, 1)), perms);
            assert_eq!(Npt::perms(Npt::leaf_entry(0x1000, perms, 1)), perms);
        }
    }

    #[test]
    fn one_walk_for_every_format() {
        let mut m = HostTables::default();
        let mut ept = PageTable::<Ept>::new(&mut m, SIZE_1G, false).unwrap();
        ept.map(&mut m, 0, 0, 2 * SIZE_1G, Perms::RWX).unwrap();
        assert_eq!(
            ept.translate(&m, SIZE_1G + 5).map(|l| (l.pa, l.size)),
            Some((SIZE_1G, SIZE_1G))
        );
        assert_eq!(
            ept.map(&mut m, 0x1000, 0x1000, SIZE_4K, Perms::RWX),
            Err(MapError::AlreadyMapped(0x1000))
        );
        let mut npt = PageTable::<Npt>::new(&mut m, SIZE_2M, false).unwrap();
        npt.map(&mut m, 0x1000, 0x1000, SIZE_4K, Perms::DEVICE)
            .unwrap();
        assert_eq!(
            npt.translate(&m, 0x1000).map(|l| l.perms),
            Some(Perms::DEVICE)
        );
        assert_eq!(npt.translate(&m, 0x2000), None);
    }

    #[test]
    fn overlaps_and_bad_arguments_are_errors() {
        let mut m = HostTables::default();
        let mut pt = PageTable::<X86>::new(&mut m, SIZE_2M, true).unwrap();
        pt.map(&mut m, 0, 0, SIZE_2M, Perms::R).unwrap();
        assert_eq!(
            pt.map(&mut m, 0x1000, 0x1000, SIZE_4K, Perms::R),
            Err(MapError::AlreadyMapped(0x1000))
        );
        pt.map(&mut m, SIZE_2M, SIZE_2M, SIZE_4K, Perms::R).unwrap();
        assert_eq!(
            pt.map(&mut m, SIZE_2M, 0, SIZE_4K, Perms::R),
            Err(MapError::AlreadyMapped(SIZE_2M))
        );
        assert_eq!(
            pt.map(&mut m, 1, 0, SIZE_4K, Perms::R),
            Err(MapError::Misaligned)
        );
        assert_eq!(
            pt.map(&mut m, 1 << 48, 0, SIZE_4K, Perms::R),
            Err(MapError::AddressTooLarge)
        );
        assert_eq!(
            pt.map(&mut m, (1 << 47) - SIZE_4K, 0, 2 * SIZE_4K, Perms::R),
            Err(MapError::AddressTooLarge)
        );
        // The high half works and walks back as canonical addresses.
        let high = 0xFFFF_FF80_0000_1000;
        pt.map(&mut m, high, 0x5000, SIZE_4K, Perms::RW).unwrap();
        assert_eq!(pt.translate(&m, high).map(|l| l.pa), Some(0x5000));
        let mut seen = Vec::new();
        pt.leaves(&m, &mut |l| seen.push(l.va));
        assert!(seen.contains(&high));
        let mut tiny = HostTables {
            limit: Some(2),
            ..Default::default()
        };
        let mut pt = PageTable::<X86>::new(&mut tiny, SIZE_2M, true).unwrap();
        assert_eq!(
            pt.map(&mut tiny, 0, 0, SIZE_4K, Perms::R),
            Err(MapError::OutOfMemory)
        );
    }

    proptest! {
        /// Random disjoint mappings: every page translates to what was mapped,
        /// with the permissions it was given, and nothing else is mapped.
        #[test]
        fn translate_matches_map(spans in proptest::collection::vec((1u64..700, 0u64..1024, 0u8..3), 1..12)) {
            let mut m = HostTables::default();
            let mut pt = PageTable::<X86>::new(&mut m, SIZE_1G, true).unwrap();
            let mut expect: HashMap<u64, (u64, Perms)> = HashMap::new();
            for (slot, (pages, phys, p)) in spans.into_iter().enumerate() {
                let va = slot as u64 * SIZE_1G;
                let pa = phys * SIZE_2M;
                let perms = [Perms::R, Perms::RW, Perms::RX][p as usize];
                pt.map(&mut m, va, pa, pages * SIZE_4K, perms).unwrap();
                for i in 0..pages {
                    expect.insert(va + i * SIZE_4K, (pa + i * SIZE_4K, perms));
                }
                // Mapping the first page of the span again must fail.
                prop_assert_eq!(pt.map(&mut m, va, pa, SIZE_4K, perms), Err(MapError::AlreadyMapped(va)));
            }
            let mut mapped = 0;
            pt.leaves(&m, &mut |l| {
                for off in (0..l.size).step_by(SIZE_4K as usize) {
                    let (pa, perms) = expect[&(l.va + off)];
                    assert_eq!((l.pa + off, l.perms), (pa, perms));
                    mapped += 1;
                }
            });
            prop_assert_eq!(mapped, expect.len());
        }
    }
}
