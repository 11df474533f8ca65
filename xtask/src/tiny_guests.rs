//! Two guests too small for a compiler, written out as bytes: a Multiboot v1
//! ELF32 kernel (32-bit protected-mode entry) and a flat real-mode image
//! (entered at 0000:7C00). Each prints one line on COM1 and writes exit code
//! 0 to the test exit port (the 32-bit one writes 1 if EAX did not hold the
//! Multiboot magic). Encodings: Intel SDM vol. 2.

/// Where the ELF32 image loads (1 MiB, where the root's boot area is not).
const MB_BASE: u32 = 0x10_0000;
/// Where its twin loads: over the root's usual boot area (GDT, page tables,
/// stacks), which then moves beside the image.
pub const MB_LOW_BASE: u32 = 0x8000;
/// File offsets: the ELF header (52 bytes) and one program header (32 bytes)
/// come first, then the Multiboot header, then the code.
const MB_HEADER_AT: usize = 0x60;
const MB_CODE_AT: usize = 0x70;

pub const MULTIBOOT32_TEXT: &str = "hello from a 32-bit Multiboot guest";
pub const REAL_MODE_TEXT: &str = "hello from a real-mode guest";

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// The Multiboot v1 ELF32 kernel.
pub fn multiboot32() -> Vec<u8> {
    multiboot32_at(MB_BASE)
}

/// The same kernel linked below 1 MiB.
pub fn multiboot32_low() -> Vec<u8> {
    multiboot32_at(MB_LOW_BASE)
}

fn multiboot32_at(base: u32) -> Vec<u8> {
    let msg_at = MB_CODE_AT + 36;
    let msg = base + msg_at as u32;
    let m = msg.to_le_bytes();
    #[rustfmt::skip]
    let code: [u8; 36] = [
        0x3D, 0x02, 0xB0, 0xAD, 0x2B,       //  0: cmp eax, 0x2BADB002
        0x75, 0x17,                         //  5: jne bad (30)
        0xBE, m[0], m[1], m[2], m[3],       //  7: mov esi, msg
        0x66, 0xBA, 0xF8, 0x03,             // 12: mov dx, 0x3F8
        0xAC,                               // 16: loop: lodsb
        0x84, 0xC0,                         // 17: test al, al
        0x74, 0x03,                         // 19: jz done (24)
        0xEE,                               // 21: out dx, al
        0xEB, 0xF8,                         // 22: jmp loop (16)
        0x31, 0xC0,                         // 24: done: xor eax, eax
        0xE6, 0xF4,                         // 26: out 0xF4, al
        0xFA, 0xF4,                         // 28: cli; hlt
        0xB0, 0x01,                         // 30: bad: mov al, 1
        0xE6, 0xF4,                         // 32: out 0xF4, al
        0xFA, 0xF4,                         // 34: cli; hlt
    ];
    let mut b = vec![0u8; msg_at];
    b.extend_from_slice(MULTIBOOT32_TEXT.as_bytes());
    b.extend_from_slice(b"\n\0");
    // ELF header.
    b[..4].copy_from_slice(b"\x7FELF");
    b[4] = 1; // 32-bit
    b[5] = 1; // little-endian
    b[6] = 1; // version
    put16(&mut b, 16, 2); // executable
    put16(&mut b, 18, 3); // i386
    put32(&mut b, 20, 1);
    put32(&mut b, 24, base + MB_CODE_AT as u32); // entry
    put32(&mut b, 28, 52); // program headers
    put16(&mut b, 40, 52);
    put16(&mut b, 42, 32);
    put16(&mut b, 44, 1);
    // One PT_LOAD: the whole file at `base`.
    let len = b.len() as u32;
    for (off, v) in [
        (0, 1),
        (4, 0),
        (8, base),
        (12, base),
        (16, len),
        (20, len),
        (24, 7),
        (28, 0x1000),
    ] {
        put32(&mut b, 52 + off, v);
    }
    // Multiboot header: magic, flags 0, checksum.
    put32(&mut b, MB_HEADER_AT, 0x1BAD_B002);
    put32(&mut b, MB_HEADER_AT + 4, 0);
    put32(&mut b, MB_HEADER_AT + 8, 0u32.wrapping_sub(0x1BAD_B002));
    b[MB_CODE_AT..MB_CODE_AT + code.len()].copy_from_slice(&code);
    b
}

/// The flat real-mode image (loaded at 0x7C00).
pub fn real_mode() -> Vec<u8> {
    let msg = (0x7C00u16 + 24).to_le_bytes();
    #[rustfmt::skip]
    let mut b = vec![
        0x31, 0xC0,                         //  0: xor ax, ax
        0x8E, 0xD8,                         //  2: mov ds, ax
        0xBE, msg[0], msg[1],               //  4: mov si, msg
        0xBA, 0xF8, 0x03,                   //  7: mov dx, 0x3F8
        0xAC,                               // 10: loop: lodsb
        0x84, 0xC0,                         // 11: test al, al
        0x74, 0x03,                         // 13: jz done (18)
        0xEE,                               // 15: out dx, al
        0xEB, 0xF8,                         // 16: jmp loop (10)
        0x30, 0xC0,                         // 18: done: xor al, al
        0xE6, 0xF4,                         // 20: out 0xF4, al
        0xFA,                               // 22: cli
        0xF4,                               // 23: hlt
    ];
    b.extend_from_slice(REAL_MODE_TEXT.as_bytes());
    b.extend_from_slice(b"\n\0");
    b
}

/// A real-mode image that halts with interrupts off at once: its run ends
/// with every VP halted.
pub fn halt() -> Vec<u8> {
    vec![0xFA, 0xF4] // cli; hlt
}

#[cfg(test)]
mod tests {
    use super::*;
    use root_partition_svc::vmm::{parse_image, EntryMode};

    #[test]
    fn the_low_twin_moves_the_boot_area() {
        let img = parse_image(&multiboot32_low(), 4 << 20).unwrap();
        assert_eq!(img.entry, (MB_LOW_BASE as usize + MB_CODE_AT) as u64);
        let base = root_partition_svc::vmm::boot_base(&img, 1, 4 << 20).unwrap();
        assert_ne!(base, 0, "the image lies over the usual boot area");
    }

    #[test]
    fn the_root_loader_accepts_both() {
        let mb = multiboot32();
        let img = parse_image(&mb, 4 << 20).unwrap();
        assert_eq!(img.mode, EntryMode::Protected32);
        assert_eq!(img.entry, 0x10_0070);
        assert_eq!(img.segments[0].gpa, 0x10_0000);
        // The message the code points at.
        let at = u32::from_le_bytes(mb[MB_CODE_AT + 8..MB_CODE_AT + 12].try_into().unwrap());
        let text = &mb[(at - MB_BASE) as usize..];
        assert!(text.starts_with(MULTIBOOT32_TEXT.as_bytes()));
        let rm = real_mode();
        let img = parse_image(&rm, 4 << 20).unwrap();
        assert_eq!((img.mode, img.entry), (EntryMode::Real, 0x7C00));
        assert!(rm[24..].starts_with(REAL_MODE_TEXT.as_bytes()));
    }
}
