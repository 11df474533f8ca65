//! Booting a Linux bzImage through the 64-bit boot protocol
//! (Documentation/x86/boot.rst "64-bit Boot Protocol" and "Details of Header
//! Fields"; Documentation/x86/zero-page.rst): where the kernel, its initrd,
//! command line and zero page go in guest memory, and what the zero page
//! says. Pure: the VM worker copies the bytes.

/// Guest-physical places below 1 MiB (beside `vmm::layout`'s GDT and page
/// tables): the zero page, the command line, and the firmware (ACPI)
/// tables in the reserved area above 640 KiB.
pub mod layout {
    pub const ZERO_PAGE: u64 = 0xA000;
    pub const CMDLINE: u64 = 0xB000;
    /// At most this many bytes of command line (with its NUL).
    pub const CMDLINE_MAX: usize = 2048;
    pub const LOW_RAM_END: u64 = 0x9F000;
    pub const ACPI: u64 = 0xE0000;
    pub const ACPI_BYTES: usize = 0x10000;
    pub const HIGH_RAM: u64 = 0x10_0000;
}

/// Where a processor starts after reset (F000:FFF0), which Linux jumps to
/// when it reboots "through the BIOS" (its default on a machine without
/// DMI tables). There is no BIOS: the code there asks for a reset at the
/// reset control port (0xCF9, full reset), which restarts the VM.
pub const RESET_VECTOR: u64 = 0xF_FFF0;
/// `mov dx, 0xCF9; mov al, 6; out dx, al; hlt; jmp $-1` (16-bit code).
pub const RESET_VECTOR_CODE: [u8; 9] = [0xBA, 0xF9, 0x0C, 0xB0, 0x06, 0xEE, 0xF4, 0xEB, 0xFD];

/// The entry is this far into the protected-mode code (`startup_64`).
pub const ENTRY_OFFSET: u64 = 0x200;

const HDRS: &[u8; 4] = b"HdrS";
/// XLF_KERNEL_64: the kernel has the 64-bit entry.
const XLF_KERNEL_64: u16 = 1;

/// What the loader needs from a bzImage's setup header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BzImage {
    /// File offset of the protected-mode code.
    pub code_offset: u64,
    pub code_bytes: u64,
    /// Where the code is loaded (2 MiB aligned, at least 1 MiB).
    pub load: u64,
    /// Memory the kernel needs from `load` while it decompresses.
    pub init_size: u64,
    pub initrd_addr_max: u64,
    pub cmdline_size: u64,
    /// End of the setup header (0x202 + byte 0x201): bytes 0x1F1 up to here
    /// are copied into the zero page.
    pub header_end: usize,
}

/// The little-endian value of `n` (at most 8) bytes at `at`, if `b` has
/// them (also `vmm`'s reader of image headers).
pub fn le(b: &[u8], at: usize, n: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(n)?)?;
    let mut v = 0u64;
    for (i, &x) in s.iter().enumerate() {
        v |= (x as u64) << (8 * i);
    }
    Some(v)
}

/// A setup-header field: 0 where the file is shorter.
fn field(b: &[u8], at: usize, n: usize) -> u64 {
    le(b, at, n).unwrap_or(0)
}

/// `Ok(None)`: not a bzImage. `Err`: a bzImage this loader cannot boot.
pub fn parse(b: &[u8], memory: u64) -> Result<Option<BzImage>, &'static str> {
    if b.get(0x202..0x206) != Some(HDRS) {
        return Ok(None);
    }
    let version = field(b, 0x206, 2);
    if version < 0x20C {
        return Err("bzImage: boot protocol older than 2.12 (no 64-bit entry)");
    }
    if field(b, 0x236, 2) as u16 & XLF_KERNEL_64 == 0 {
        return Err("bzImage: no 64-bit entry (XLF_KERNEL_64)");
    }
    let setup_sects = match field(b, 0x1F1, 1) {
        0 => 4,
        n => n,
    };
    let code_offset = (setup_sects + 1) * 512;
    if code_offset >= b.len() as u64 {
        return Err("bzImage: truncated (no protected-mode code)");
    }
    let header_end = 0x202 + field(b, 0x201, 1) as usize;
    if header_end > b.len() || header_end > 0x290 {
        return Err("bzImage: bad setup header length");
    }
    let align = field(b, 0x230, 4).max(0x20_0000);
    if !align.is_power_of_two() {
        return Err("bzImage: kernel_alignment is not a power of two");
    }
    let pref = field(b, 0x258, 8);
    let load = pref.max(layout::HIGH_RAM).next_multiple_of(align);
    let code_bytes = b.len() as u64 - code_offset;
    let init_size = field(b, 0x260, 4).max(code_bytes);
    if load + init_size > memory {
        return Err("bzImage: the VM's memory is too small for this kernel (it needs its init_size from 16 MiB; give it at least 128M)");
    }
    Ok(Some(BzImage {
        code_offset,
        code_bytes,
        load,
        init_size,
        initrd_addr_max: field(b, 0x22C, 4),
        cmdline_size: field(b, 0x238, 4),
        header_end,
    }))
}

/// Where an initrd of `len` bytes goes: page-aligned, as high as the VM's
/// memory and `initrd_addr_max` allow, above the kernel's decompression
/// area. `None`: it does not fit.
pub fn initrd_place(k: &BzImage, memory: u64, len: u64) -> Option<u64> {
    let top = memory.min(k.initrd_addr_max.saturating_add(1));
    let at = top.checked_sub(len)? & !0xFFF;
    (at >= k.load + k.init_size).then_some(at)
}

/// e820 memory types.
pub mod e820 {
    pub const RAM: u32 = 1;
    pub const RESERVED: u32 = 2;
}

/// The guest's memory map: RAM below 640 KiB (Linux keeps its real-mode
/// trampoline there), the firmware area reserved, RAM from 1 MiB.
pub fn memory_map(memory: u64) -> [(u64, u64, u32); 3] {
    [
        (0, layout::LOW_RAM_END, e820::RAM),
        (
            layout::LOW_RAM_END,
            layout::HIGH_RAM - layout::LOW_RAM_END,
            e820::RESERVED,
        ),
        (layout::HIGH_RAM, memory - layout::HIGH_RAM, e820::RAM),
    ]
}

/// The zero page (`struct boot_params`) for `file`: its setup header, the
/// loader's fields, the memory map, the command line and initrd, the RSDP.
pub fn zero_page(
    file: &[u8],
    k: &BzImage,
    memory: u64,
    initrd: Option<(u64, u64)>,
    cmdline_gpa: u64,
    rsdp: u64,
) -> [u8; 4096] {
    let mut zp = [0u8; 4096];
    zp[0x1F1..k.header_end].copy_from_slice(&file[0x1F1..k.header_end]);
    let mut put =
        |at: usize, v: u64, n: usize| zp[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
    put(0x1FA, 0xFFFF, 2); // vid_mode: normal
    put(0x210, 0xFF, 1); // type_of_loader: undefined
    let (image, size) = initrd.unwrap_or((0, 0));
    put(0x218, image & 0xFFFF_FFFF, 4);
    put(0x21C, size & 0xFFFF_FFFF, 4);
    put(0x0C0, image >> 32, 4); // ext_ramdisk_image
    put(0x0C4, size >> 32, 4);
    put(0x228, cmdline_gpa & 0xFFFF_FFFF, 4);
    put(0x0C8, cmdline_gpa >> 32, 4); // ext_cmd_line_ptr
    put(0x070, rsdp, 8); // acpi_rsdp_addr
    let map = memory_map(memory);
    put(0x1E8, map.len() as u64, 1);
    for (i, (addr, len, kind)) in map.into_iter().enumerate() {
        let at = 0x2D0 + 20 * i;
        put(at, addr, 8);
        put(at + 8, len, 8);
        put(at + 16, kind as u64, 4);
    }
    // loadflags: LOADED_HIGH stays as the header has it; the sentinel
    // (0x1EF) stays zero.
    zp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage header as Debian 12's 6.1 kernel has it.
    fn bzimage(code: usize) -> std::vec::Vec<u8> {
        let mut b = std::vec![0u8; 0x5000 + code];
        b[0x1F1] = 39;
        b[0x1FE] = 0x55;
        b[0x1FF] = 0xAA;
        b[0x201] = 0x6A; // header ends at 0x26C
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
        b[0x211] = 1;
        b[0x22C..0x230].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
        b[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        b[0x236..0x238].copy_from_slice(&0x7Fu16.to_le_bytes());
        b[0x238..0x23C].copy_from_slice(&2047u32.to_le_bytes());
        b[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        b[0x260..0x264].copy_from_slice(&0x3F9_8000u32.to_le_bytes());
        b
    }

    #[test]
    fn a_debian_kernel_loads_at_16_mib() {
        let b = bzimage(0x1000);
        let k = parse(&b, 256 << 20).unwrap().unwrap();
        assert_eq!(k.code_offset, 0x5000);
        assert_eq!(k.load, 0x100_0000);
        assert_eq!(k.header_end, 0x26C);
        assert_eq!(k.init_size, 0x3F9_8000);
        assert!(parse(&b, 64 << 20).is_err(), "too little memory");
        assert_eq!(parse(b"\x7FELF", 1 << 30), Ok(None));
        let mut old = b.clone();
        old[0x206] = 0x0B;
        assert!(parse(&old, 256 << 20).is_err());
    }

    #[test]
    fn the_initrd_sits_high_and_clear_of_the_kernel() {
        let k = parse(&bzimage(0x1000), 256 << 20).unwrap().unwrap();
        let at = initrd_place(&k, 256 << 20, 3_000_001).unwrap();
        assert_eq!(at & 0xFFF, 0);
        assert!(at + 3_000_001 <= 256 << 20);
        assert!(at >= k.load + k.init_size);
        assert_eq!(initrd_place(&k, 100 << 20, 40 << 20), None);
    }

    #[test]
    fn the_zero_page_says_what_the_protocol_needs() {
        let b = bzimage(0x1000);
        let k = parse(&b, 256 << 20).unwrap().unwrap();
        let zp = zero_page(&b, &k, 256 << 20, Some((0xF00_0000, 1234)), 0xB000, 0xE0000);
        assert_eq!(&zp[0x202..0x206], b"HdrS");
        assert_eq!(field(&zp, 0x1FA, 2), 0xFFFF);
        assert_eq!(zp[0x210], 0xFF);
        assert_eq!(field(&zp, 0x218, 4), 0xF00_0000);
        assert_eq!(field(&zp, 0x21C, 4), 1234);
        assert_eq!(field(&zp, 0x228, 4), 0xB000);
        assert_eq!(field(&zp, 0x070, 8), 0xE0000);
        assert_eq!(zp[0x1E8], 3);
        assert_eq!(zp[0x1EF], 0, "sentinel");
        // The third entry: RAM from 1 MiB to the end.
        assert_eq!(field(&zp, 0x2D0 + 40, 8), 0x10_0000);
        assert_eq!(field(&zp, 0x2D0 + 48, 8), (256 << 20) - 0x10_0000);
        assert_eq!(field(&zp, 0x2D0 + 56, 4), 1);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_refused_or_placed_inside_memory(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..0x800),
            mib in 2u64..4096,
        ) {
            let mut b = bytes;
            if b.len() > 0x206 {
                b[0x202..0x206].copy_from_slice(b"HdrS");
            }
            if let Ok(Some(k)) = parse(&b, mib << 20) {
                proptest::prop_assert!(k.load + k.init_size <= mib << 20);
                proptest::prop_assert!(k.code_offset < b.len() as u64);
                proptest::prop_assert!(k.header_end <= b.len());
                let _ = zero_page(&b, &k, mib << 20, None, 0xB000, 0);
            }
        }
    }
}
