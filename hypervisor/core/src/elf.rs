//! The one ELF reader (System V gABI, "ELF Header" and "Program Header";
//! i386 and x86-64 psABIs): both classes' headers and program headers, read
//! by copying little-endian fields out of the file. The UEFI loader places
//! the hypervisor with it, the hypervisor the root partition's image
//! (`layout`, `copy_segments`, `protections`: ELF64 only), and the root's VM
//! worker reads guest images with it (`root_partition_svc::vmm::parse_image`:
//! ELF64 and ELF32). Every offset and size is checked; a malformed file is an
//! error, never a panic.

/// `p_type` of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// `e_machine` of i386 (ELF32) and x86-64 (ELF64) files.
pub const EM_386: u16 = 3;
pub const EM_X86_64: u16 = 62;
/// `p_flags` bits.
pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;

/// `e_ident[EI_CLASS]`: the width of the file's addresses and offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Elf32,
    Elf64,
}

impl Class {
    /// The size of one program header (`Elf32_Phdr` 32, `Elf64_Phdr` 56
    /// bytes); `e_phentsize` must be at least this.
    pub const fn phdr_size(self) -> usize {
        match self {
            Class::Elf32 => 32,
            Class::Elf64 => 56,
        }
    }
}

/// What `e_ident` and `e_machine` say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ident {
    pub class: Class,
    pub machine: u16,
}

/// The ELF header fields a loader needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub class: Class,
    pub machine: u16,
    pub entry: u64,
    pub phoff: u64,
    pub phentsize: u16,
    pub phnum: u16,
}

/// A PT_LOAD program header, either class widened to u64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Where its file bytes start in the file (`p_offset`).
    pub offset: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    /// `p_flags`: [`PF_X`], [`PF_W`], [`PF_R`].
    pub flags: u32,
}

/// What is wrong with a file; each caller words it its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No `\x7FELF` magic.
    NotElf,
    /// `e_ident[EI_DATA]` is not ELFDATA2LSB.
    NotLittleEndian,
    /// `e_ident[EI_CLASS]` is neither ELFCLASS32 nor ELFCLASS64.
    UnknownClass,
    /// The file ends inside the ELF header.
    TruncatedHeader,
    /// `e_phentsize` smaller than a program header of the class.
    BadProgramHeaderSize,
    /// A program header's offset does not fit in 64 bits (or an address).
    /// (Headers are read in order, so the first one past the end of the
    /// file is reported as truncated before any offset can overflow.)
    ProgramHeaderOutOfRange,
    /// The file ends inside a program header: its `p_type`, or the fields of
    /// a PT_LOAD up to `p_memsz` (ELF64) or `p_flags` (ELF32).
    TruncatedProgramHeader,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Checks the identification (magic, little-endian, class) and reads
/// `e_machine`, in that order.
pub fn identify(image: &[u8]) -> Result<Ident, Error> {
    if image.get(..4) != Some(b"\x7fELF") {
        return Err(Error::NotElf);
    }
    if image.get(5) != Some(&1) {
        return Err(Error::NotLittleEndian);
    }
    let class = match image.get(4) {
        Some(1) => Class::Elf32,
        Some(2) => Class::Elf64,
        _ => return Err(Error::UnknownClass),
    };
    let machine = u16_at(image, 18).ok_or(Error::TruncatedHeader)?;
    Ok(Ident { class, machine })
}

/// The ELF header: `e_entry` at 0x18 (u32 / u64), `e_phoff` at 0x1C (u32) /
/// 0x20 (u64), `e_phentsize` at 0x2A / 0x36, `e_phnum` at 0x2C / 0x38.
pub fn header(image: &[u8]) -> Result<Header, Error> {
    let Ident { class, machine } = identify(image)?;
    let truncated = Error::TruncatedHeader;
    let (entry, phoff, phentsize, phnum) = match class {
        Class::Elf32 => (
            u32_at(image, 0x18).ok_or(truncated)?.into(),
            u32_at(image, 0x1C).ok_or(truncated)?.into(),
            u16_at(image, 0x2A).ok_or(truncated)?,
            u16_at(image, 0x2C).ok_or(truncated)?,
        ),
        Class::Elf64 => (
            u64_at(image, 0x18).ok_or(truncated)?,
            u64_at(image, 0x20).ok_or(truncated)?,
            u16_at(image, 0x36).ok_or(truncated)?,
            u16_at(image, 0x38).ok_or(truncated)?,
        ),
    };
    Ok(Header {
        class,
        machine,
        entry,
        phoff,
        phentsize,
        phnum,
    })
}

/// Program header `i`: `Ok(None)` when it is not PT_LOAD. Fields: ELF32
/// `p_offset` 4, `p_paddr` 12, `p_filesz` 16, `p_memsz` 20, `p_flags` 24;
/// ELF64 `p_flags` 4, `p_offset` 8, `p_paddr` 24, `p_filesz` 32, `p_memsz` 40.
fn program_header(image: &[u8], h: &Header, i: u16) -> Result<Option<Segment>, Error> {
    let at = u64::from(h.phentsize)
        .checked_mul(i.into())
        .and_then(|o| h.phoff.checked_add(o))
        .and_then(|o| usize::try_from(o).ok())
        .ok_or(Error::ProgramHeaderOutOfRange)?;
    let truncated = Error::TruncatedProgramHeader;
    let word = |o: usize| {
        at.checked_add(o)
            .and_then(|o| u32_at(image, o))
            .ok_or(truncated)
    };
    let xword = |o: usize| {
        at.checked_add(o)
            .and_then(|o| u64_at(image, o))
            .ok_or(truncated)
    };
    if word(0)? != PT_LOAD {
        return Ok(None);
    }
    Ok(Some(match h.class {
        Class::Elf32 => Segment {
            offset: word(4)?.into(),
            paddr: word(12)?.into(),
            filesz: word(16)?.into(),
            memsz: word(20)?.into(),
            flags: word(24)?,
        },
        Class::Elf64 => Segment {
            flags: word(4)?,
            offset: xword(8)?,
            paddr: xword(24)?,
            filesz: xword(32)?,
            memsz: xword(40)?,
        },
    }))
}

/// The file's PT_LOAD segments in file order, after checking the header
/// ([`header`]), `e_phentsize`, and that every program header's `p_type`
/// and every PT_LOAD's fields lie in the file (a program header table that
/// runs past the end is an error, not a shorter table). Where the segments'
/// bytes lie is the caller's to check.
pub fn segments(image: &[u8]) -> Result<impl Iterator<Item = Segment> + '_, Error> {
    let h = header(image)?;
    if (h.phentsize as usize) < h.class.phdr_size() {
        return Err(Error::BadProgramHeaderSize);
    }
    for i in 0..h.phnum {
        program_header(image, &h, i)?;
    }
    // Every header was read above: nothing is dropped here.
    Ok((0..h.phnum).filter_map(move |i| program_header(image, &h, i).ok().flatten()))
}

/// The ELF64 the hypervisor and the UEFI loader load: its header and
/// segments, in the words their callers have always reported.
fn elf64(image: &[u8]) -> Result<(Header, impl Iterator<Item = Segment> + '_), &'static str> {
    const NOT_ELF64: &str = "not a little-endian ELF64 file";
    let message = |e| match e {
        Error::NotElf | Error::NotLittleEndian | Error::UnknownClass => NOT_ELF64,
        Error::TruncatedHeader => "truncated ELF header",
        Error::BadProgramHeaderSize => "bad ELF program header size",
        Error::ProgramHeaderOutOfRange | Error::TruncatedProgramHeader => {
            "ELF program headers run past the end of the file"
        }
    };
    let h = header(image).map_err(message)?;
    if h.class != Class::Elf64 {
        return Err(NOT_ELF64);
    }
    Ok((h, segments(image).map_err(message)?))
}

/// Where an ELF64 image goes: [`layout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Page-aligned physical span of all PT_LOAD segments.
    pub start: u64,
    pub end: u64,
    pub entry: u64,
}

/// Where the image goes, and its entry point.
pub fn layout(image: &[u8]) -> Result<Layout, &'static str> {
    let (mut start, mut end) = (u64::MAX, 0u64);
    let (h, segments) = elf64(image)?;
    for s in segments {
        if s.memsz < s.filesz {
            return Err("ELF segment smaller in memory than in the file");
        }
        if s.offset
            .checked_add(s.filesz)
            .is_none_or(|e| e > image.len() as u64)
        {
            return Err("ELF segment runs past the end of the file");
        }
        start = start.min(s.paddr);
        end = end.max(s.paddr.checked_add(s.memsz).ok_or("ELF segment wraps")?);
    }
    if start >= end || end > 0xFFFF_FFFF {
        return Err("no loadable segment below 4 GiB");
    }
    let entry = h.entry;
    let (start, end) = (start & !0xFFF, (end + 0xFFF) & !0xFFF);
    if !(start..end).contains(&entry) {
        return Err("ELF entry point outside the loaded image");
    }
    Ok(Layout { start, end, entry })
}

/// A loadable segment's pages and what its flags allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protection {
    /// Page-aligned `[start, end)`.
    pub start: u64,
    pub end: u64,
    pub write: bool,
    pub execute: bool,
}

/// The pages of each loadable segment with its permissions, in file order.
/// Refuses a segment both writable and executable, and two segments that
/// share a page (their permissions would have to differ within it): the
/// segments with memory must ascend (gABI: PT_LOAD entries sorted by
/// address), each starting on a page past the previous one's last, so that no
/// page is in two of them without comparing every pair.
pub fn protections(image: &[u8]) -> Result<impl Iterator<Item = Protection> + '_, &'static str> {
    let page = |a: u64| a & !0xFFF;
    let mut prev: Option<Protection> = None;
    for s in elf64(image)?.1.filter(|s| s.memsz > 0) {
        let end = s.paddr.checked_add(s.memsz).ok_or("ELF segment wraps")?;
        if s.flags & (PF_X | PF_W) == PF_X | PF_W {
            return Err("an ELF segment is both writable and executable");
        }
        let p = Protection {
            start: page(s.paddr),
            end: page(end.checked_add(0xFFF).ok_or("ELF segment wraps")?),
            write: false,
            execute: false,
        };
        if prev.is_some_and(|q| p.start < q.end) {
            return Err("ELF segments share a page or are out of address order");
        }
        prev = Some(p);
    }
    Ok(elf64(image)?.1.filter(|s| s.memsz > 0).map(|s| Protection {
        start: s.paddr & !0xFFF,
        end: (s.paddr + s.memsz + 0xFFF) & !0xFFF,
        write: s.flags & PF_W != 0,
        execute: s.flags & PF_X != 0,
    }))
}

/// Copies each segment's file bytes into `dest` (which starts at physical
/// `base`) and zeroes everything else (.bss and gaps).
pub fn copy_segments(image: &[u8], base: u64, dest: &mut [u8]) -> Result<(), &'static str> {
    dest.fill(0);
    for s in elf64(image)?.1 {
        let src = image
            .get(s.offset as usize..s.offset.saturating_add(s.filesz) as usize)
            .ok_or("ELF segment runs past the end of the file")?;
        let at = s
            .paddr
            .checked_sub(base)
            .ok_or("ELF segment below its layout")? as usize;
        dest.get_mut(at..at.saturating_add(src.len()))
            .ok_or("ELF segment outside its layout")?
            .copy_from_slice(src);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// An ELF64 with one PT_LOAD of `data` at `paddr` (+ `bss` zero bytes).
    fn elf(paddr: u64, data: &[u8], bss: u64, entry: u64) -> Vec<u8> {
        let mut v = std::vec![0u8; 0x78];
        v[..6].copy_from_slice(b"\x7fELF\x02\x01");
        v[0x18..0x20].copy_from_slice(&entry.to_le_bytes());
        v[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        v[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        v[0x38..0x3A].copy_from_slice(&1u16.to_le_bytes());
        let ph = 0x40;
        v[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        v[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes());
        v[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        v[ph + 32..ph + 40].copy_from_slice(&(data.len() as u64).to_le_bytes());
        v[ph + 40..ph + 48].copy_from_slice(&(data.len() as u64 + bss).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    /// An ELF64 with PT_LOADs of (paddr, memsz, flags), no file bytes.
    fn elf_segments(segs: &[(u64, u64, u32)]) -> Vec<u8> {
        let mut v = std::vec![0u8; 0x40 + 56 * segs.len()];
        v[..6].copy_from_slice(b"\x7fELF\x02\x01");
        v[0x18..0x20].copy_from_slice(&segs[0].0.to_le_bytes());
        v[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        v[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        v[0x38..0x3A].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, &(paddr, memsz, flags)) in segs.iter().enumerate() {
            let ph = 0x40 + 56 * i;
            v[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            v[ph + 4..ph + 8].copy_from_slice(&flags.to_le_bytes());
            v[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            v[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        v
    }

    #[test]
    fn protections_follow_the_segment_flags() {
        let image = elf_segments(&[(0x1000, 0x1800, 5), (0x3000, 0x10, 4), (0x4000, 0x2001, 6)]);
        let p: Vec<Protection> = protections(&image).unwrap().collect();
        let span = |start, end, write, execute| Protection {
            start,
            end,
            write,
            execute,
        };
        assert_eq!(
            p,
            [
                span(0x1000, 0x3000, false, true),
                span(0x3000, 0x4000, false, false),
                span(0x4000, 0x7000, true, false),
            ]
        );
        assert!(protections(&elf_segments(&[(0x1000, 0x10, 7)])).is_err());
        assert!(
            protections(&elf_segments(&[(0x1000, 0x10, 5), (0x1800, 0x10, 6)])).is_err(),
            "a page both executable and writable"
        );
        // Found by the image_loader fuzz target: only neighbours in the file
        // were compared, so the first and the third segment could share a page.
        assert!(
            protections(&elf_segments(&[
                (0x1000, 0x5000, 4),
                (0x8000, 0x1000, 6),
                (0x2000, 0x10, 5)
            ]))
            .is_err(),
            "a page in two segments that are not neighbours"
        );
        assert!(
            protections(&elf_segments(&[(0x3000, 0x10, 4), (0x1000, 0x10, 5)])).is_err(),
            "out of address order"
        );
        let empty_between = elf_segments(&[(0x1000, 0x10, 5), (0x1000, 0, 6), (0x2000, 0x10, 6)]);
        assert_eq!(protections(&empty_between).unwrap().count(), 2);
    }

    #[test]
    fn loads_and_zeroes_bss() {
        let image = elf(0x10_0010, b"code", 100, 0x10_0010);
        let l = layout(&image).unwrap();
        assert_eq!(
            l,
            Layout {
                start: 0x10_0000,
                end: 0x10_1000,
                entry: 0x10_0010
            }
        );
        let mut dest = std::vec![0xAAu8; 0x1000];
        copy_segments(&image, l.start, &mut dest).unwrap();
        assert_eq!(&dest[0x10..0x14], b"code");
        assert!(dest[0x14..].iter().all(|b| *b == 0));
    }

    #[test]
    fn malformed_files_are_errors() {
        assert!(layout(b"MZ").is_err());
        let mut truncated = elf(0x10_0000, b"code", 0, 0x10_0000);
        truncated.truncate(0x78 + 2);
        assert!(
            layout(&truncated).is_err(),
            "segment past the end of the file"
        );
        assert!(
            layout(&elf(0x10_0000, b"code", 0, 0x50_0000)).is_err(),
            "entry outside"
        );
        assert!(
            layout(&elf(0xFFFF_F000, b"code", 0x2000, 0xFFFF_F000)).is_err(),
            "above 4 GiB"
        );
        let mut bad_ph = elf(0x10_0000, b"code", 0, 0x10_0000);
        bad_ph[0x36] = 8;
        assert!(layout(&bad_ph).is_err());
    }

    /// An i386 ELF32 (ELF header 52 bytes, program headers 32) with PT_LOADs
    /// of (vaddr, paddr, file bytes, memsz, flags) and a PT_NOTE first,
    /// the segments' bytes after the headers.
    fn elf32(entry: u32, segs: &[(u32, u32, &[u8], u32, u32)]) -> Vec<u8> {
        let phnum = segs.len() + 1;
        let mut v = std::vec![0u8; 52 + 32 * phnum];
        v[..7].copy_from_slice(b"\x7fELF\x01\x01\x01");
        v[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        v[18..20].copy_from_slice(&EM_386.to_le_bytes());
        v[0x18..0x1C].copy_from_slice(&entry.to_le_bytes());
        v[0x1C..0x20].copy_from_slice(&52u32.to_le_bytes());
        v[0x28..0x2A].copy_from_slice(&52u16.to_le_bytes()); // e_ehsize
        v[0x2A..0x2C].copy_from_slice(&32u16.to_le_bytes());
        v[0x2C..0x2E].copy_from_slice(&(phnum as u16).to_le_bytes());
        v[52..56].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        for (i, &(vaddr, paddr, data, memsz, flags)) in segs.iter().enumerate() {
            let offset = v.len() as u32;
            let ph = 52 + 32 * (i + 1);
            let fields = [
                PT_LOAD,
                offset,
                vaddr,
                paddr,
                data.len() as u32,
                memsz,
                flags,
                4096,
            ];
            for (k, f) in fields.iter().enumerate() {
                v[ph + 4 * k..ph + 4 * k + 4].copy_from_slice(&f.to_le_bytes());
            }
            v.extend_from_slice(data);
        }
        v
    }

    #[test]
    fn elf32_program_headers_at_their_own_offsets() {
        let image = elf32(
            0x10_0010,
            &[
                (0xC010_0000, 0x10_0000, b"text", 0x1000, PF_R | PF_X),
                (0xC020_0000, 0x20_0000, b"da", 0x2000, PF_R | PF_W),
            ],
        );
        assert_eq!(
            identify(&image),
            Ok(Ident {
                class: Class::Elf32,
                machine: EM_386
            })
        );
        let h = header(&image).unwrap();
        assert_eq!(
            (h.class, h.entry, h.phoff, h.phentsize, h.phnum),
            (Class::Elf32, 0x10_0010, 52, 32, 3)
        );
        let s: Vec<Segment> = segments(&image).unwrap().collect();
        let first = (52 + 32 * 3) as u64;
        assert_eq!(
            s,
            [
                Segment {
                    offset: first,
                    paddr: 0x10_0000,
                    filesz: 4,
                    memsz: 0x1000,
                    flags: PF_R | PF_X
                },
                Segment {
                    offset: first + 4,
                    paddr: 0x20_0000,
                    filesz: 2,
                    memsz: 0x2000,
                    flags: PF_R | PF_W
                },
            ],
            "p_paddr, not p_vaddr; the PT_NOTE skipped"
        );
        assert_eq!(
            &image[s[0].offset as usize..][..s[0].filesz as usize],
            b"text"
        );
    }

    #[test]
    fn elf64_through_the_shared_reader() {
        let image = elf(0x10_0010, b"code", 100, 0x10_0010);
        let h = header(&image).unwrap();
        assert_eq!(
            (h.class, h.entry, h.phoff, h.phentsize, h.phnum),
            (Class::Elf64, 0x10_0010, 0x40, 56, 1)
        );
        let s: Vec<Segment> = segments(&image).unwrap().collect();
        assert_eq!(
            s,
            [Segment {
                offset: 0x78,
                paddr: 0x10_0010,
                filesz: 4,
                memsz: 104,
                flags: 0
            }]
        );
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        let good = elf32(0x10_0000, &[(0, 0x10_0000, b"x", 1, PF_R)]);
        assert_eq!(identify(b"MZ\x90\x00").unwrap_err(), Error::NotElf);
        let mut big_endian = good.clone();
        big_endian[5] = 2;
        assert_eq!(identify(&big_endian).unwrap_err(), Error::NotLittleEndian);
        let mut class3 = good.clone();
        class3[4] = 3;
        assert_eq!(identify(&class3).unwrap_err(), Error::UnknownClass);
        assert_eq!(identify(&good[..19]).unwrap_err(), Error::TruncatedHeader);
        assert_eq!(header(&good[..0x2D]).unwrap_err(), Error::TruncatedHeader);
        let mut small = good.clone();
        small[0x2A] = 28;
        assert!(matches!(segments(&small), Err(Error::BadProgramHeaderSize)));
        // The table runs past the end: an error, not a shorter table.
        assert!(matches!(
            segments(&good[..52 + 32 + 20]),
            Err(Error::TruncatedProgramHeader)
        ));
        let mut many = good.clone();
        many[0x2C] = 9;
        assert!(matches!(
            segments(&many),
            Err(Error::TruncatedProgramHeader)
        ));
        let mut far = elf(0x10_0000, b"code", 0, 0x10_0000);
        far[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(segments(&far), Err(Error::TruncatedProgramHeader)));
        // The hypervisor's loaders take ELF64 only.
        assert_eq!(layout(&good), Err("not a little-endian ELF64 file"));
        assert!(copy_segments(&good, 0, &mut [0u8; 16]).is_err());
        assert!(protections(&good).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            if let Ok(s) = segments(&bytes) {
                s.for_each(drop);
            }
            if let Ok(l) = layout(&bytes) {
                let mut dest = std::vec![0u8; (l.end - l.start).min(1 << 20) as usize];
                let _ = copy_segments(&bytes, l.start, &mut dest);
            }
        }
    }
}
