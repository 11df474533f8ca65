//! Just enough ELF64 (System V gABI, section "Program Header") to place an
//! image's PT_LOAD segments at their physical addresses: the UEFI loader uses
//! it for the hypervisor, the hypervisor for the root partition's image.
//! Every offset and size is checked; a malformed file is an error.

const PT_LOAD: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Page-aligned physical span of all PT_LOAD segments.
    pub start: u64,
    pub end: u64,
    pub entry: u64,
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

struct Segment {
    /// p_flags: execute 1, write 2, read 4.
    flags: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn segments(image: &[u8]) -> Result<impl Iterator<Item = Segment> + '_, &'static str> {
    if image.get(..4) != Some(b"\x7fELF") || image.get(4) != Some(&2) || image.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 file");
    }
    let phoff = u64_at(image, 0x20).ok_or("truncated ELF header")? as usize;
    let phentsize = u16_at(image, 0x36).ok_or("truncated ELF header")? as usize;
    let phnum = u16_at(image, 0x38).ok_or("truncated ELF header")? as usize;
    if phentsize < 56 {
        return Err("bad ELF program header size");
    }
    Ok((0..phnum).filter_map(move |i| {
        let o = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(image, o)? != PT_LOAD {
            return None;
        }
        Some(Segment {
            flags: u32_at(image, o + 4)?,
            offset: u64_at(image, o + 8)?,
            paddr: u64_at(image, o + 24)?,
            filesz: u64_at(image, o + 32)?,
            memsz: u64_at(image, o + 40)?,
        })
    }))
}

/// Where the image goes, and its entry point.
pub fn layout(image: &[u8]) -> Result<Layout, &'static str> {
    let (mut start, mut end) = (u64::MAX, 0u64);
    for s in segments(image)? {
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
    let entry = u64_at(image, 0x18).ok_or("truncated ELF header")?;
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
    const X: u32 = 1;
    const W: u32 = 2;
    let page = |a: u64| a & !0xFFF;
    let mut prev: Option<Protection> = None;
    for s in segments(image)?.filter(|s| s.memsz > 0) {
        let end = s.paddr.checked_add(s.memsz).ok_or("ELF segment wraps")?;
        if s.flags & (X | W) == X | W {
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
    Ok(segments(image)?
        .filter(|s| s.memsz > 0)
        .map(|s| Protection {
            start: s.paddr & !0xFFF,
            end: (s.paddr + s.memsz + 0xFFF) & !0xFFF,
            write: s.flags & W != 0,
            execute: s.flags & X != 0,
        }))
}

/// Copies each segment's file bytes into `dest` (which starts at physical
/// `base`) and zeroes everything else (.bss and gaps).
pub fn copy_segments(image: &[u8], base: u64, dest: &mut [u8]) -> Result<(), &'static str> {
    dest.fill(0);
    for s in segments(image)? {
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

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            if let Ok(l) = layout(&bytes) {
                let mut dest = std::vec![0u8; (l.end - l.start).min(1 << 20) as usize];
                let _ = copy_segments(&bytes, l.start, &mut dest);
            }
        }
    }
}
