//! Just enough ELF64 (System V gABI) to place the hypervisor's PT_LOAD
//! segments at their physical addresses. Every offset is checked.
use alloc::string::String;

const PT_LOAD: u32 = 1;

pub struct Layout {
    pub start: u64,
    pub end: u64,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

struct Segment {
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn segments(image: &[u8]) -> Result<impl Iterator<Item = Option<Segment>> + '_, String> {
    if image.get(..4) != Some(b"\x7fELF") || image.get(4) != Some(&2) || image.get(5) != Some(&1) {
        return Err("the hypervisor is not a little-endian ELF64 file".into());
    }
    let phoff = u64_at(image, 0x20).ok_or("truncated ELF header")? as usize;
    let phentsize = u16_at(image, 0x36).ok_or("truncated ELF header")? as usize;
    let phnum = u16_at(image, 0x38).ok_or("truncated ELF header")? as usize;
    if phentsize < 56 {
        return Err("bad ELF program header size".into());
    }
    Ok((0..phnum).filter_map(move |i| {
        let o = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(image, o)? != PT_LOAD {
            return None;
        }
        Some(Some(Segment {
            offset: u64_at(image, o + 8)?,
            paddr: u64_at(image, o + 24)?,
            filesz: u64_at(image, o + 32)?,
            memsz: u64_at(image, o + 40)?,
        }))
    }))
}

/// The page-aligned physical span of all PT_LOAD segments.
pub fn load_layout(image: &[u8]) -> Result<Layout, String> {
    let (mut start, mut end) = (u64::MAX, 0u64);
    for s in segments(image)?.flatten() {
        if s.memsz < s.filesz {
            return Err("ELF segment smaller in memory than in the file".into());
        }
        start = start.min(s.paddr);
        end = end.max(s.paddr.checked_add(s.memsz).ok_or("ELF segment wraps")?);
    }
    if start >= end || end > 0xFFFF_FFFF {
        return Err("the hypervisor has no loadable segment below 4 GiB".into());
    }
    Ok(Layout {
        start: start & !0xFFF,
        end: (end + 0xFFF) & !0xFFF,
    })
}

/// Copies each segment's file bytes into `dest` (which starts at `base`) and
/// zeroes the rest (.bss).
pub fn copy_segments(image: &[u8], base: u64, dest: &mut [u8]) -> Result<(), String> {
    dest.fill(0);
    for s in segments(image)?.flatten() {
        let src = image
            .get(s.offset as usize..(s.offset + s.filesz) as usize)
            .ok_or("ELF segment runs past the end of the file")?;
        let at = (s.paddr - base) as usize;
        dest.get_mut(at..at + src.len())
            .ok_or("ELF segment outside its layout")?
            .copy_from_slice(src);
    }
    Ok(())
}
