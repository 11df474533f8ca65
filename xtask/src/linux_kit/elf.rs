//! ELF64 both ways: tiny static Linux executables written out as bytes (the
//! `/bin/vmcall` and `/bin/vmmcall` helpers of the initramfs), and the
//! `.modinfo` section of a kernel module read back (its `depends=`).
//! Layouts: the System V ABI's ELF64 object format, x86-64 supplement.

/// Where the helpers load: the classic base of x86-64 executables, far above
/// `vm.mmap_min_addr`.
pub const USER_BASE: u64 = 0x40_0000;
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
/// The code follows the ELF header and the one program header.
pub const CODE_AT: usize = EHDR_LEN + PHDR_LEN;

pub const VMCALL: [u8; 3] = [0x0F, 0x01, 0xC1];
pub const VMMCALL: [u8; 3] = [0x0F, 0x01, 0xD9];
/// `mov eax, 60` (exit); `xor edi, edi` (status 0); `syscall`.
pub const EXIT_0: [u8; 9] = [0xB8, 0x3C, 0x00, 0x00, 0x00, 0x31, 0xFF, 0x0F, 0x05];

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A static x86-64 Linux executable that runs `insn` in user mode, then
/// `exit(0)`: one read+execute PT_LOAD segment holding the whole file.
pub fn user_program(insn: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; CODE_AT];
    b.extend_from_slice(insn);
    b.extend_from_slice(&EXIT_0);
    let len = b.len() as u64;
    // ELF header.
    b[..4].copy_from_slice(b"\x7FELF");
    b[4] = 2; // ELFCLASS64
    b[5] = 1; // ELFDATA2LSB
    b[6] = 1; // EV_CURRENT
    b[7] = 0; // ELFOSABI_SYSV
    put16(&mut b, 0x10, 2); // ET_EXEC
    put16(&mut b, 0x12, 0x3E); // EM_X86_64
    put32(&mut b, 0x14, 1); // e_version
    put64(&mut b, 0x18, USER_BASE + CODE_AT as u64); // e_entry
    put64(&mut b, 0x20, EHDR_LEN as u64); // e_phoff
    put64(&mut b, 0x28, 0); // e_shoff: no sections
    put32(&mut b, 0x30, 0); // e_flags
    put16(&mut b, 0x34, EHDR_LEN as u16); // e_ehsize
    put16(&mut b, 0x36, PHDR_LEN as u16); // e_phentsize
    put16(&mut b, 0x38, 1); // e_phnum
    put16(&mut b, 0x3A, 64); // e_shentsize
    put16(&mut b, 0x3C, 0); // e_shnum
    put16(&mut b, 0x3E, 0); // e_shstrndx
                            // The program header.
    let p = EHDR_LEN;
    put32(&mut b, p, 1); // PT_LOAD
    put32(&mut b, p + 4, 5); // PF_R | PF_X
    put64(&mut b, p + 8, 0); // p_offset
    put64(&mut b, p + 16, USER_BASE); // p_vaddr
    put64(&mut b, p + 24, USER_BASE); // p_paddr
    put64(&mut b, p + 32, len); // p_filesz
    put64(&mut b, p + 40, len); // p_memsz
    put64(&mut b, p + 48, 0x1000); // p_align
    b
}

/// `/bin/vmcall`: Intel's VMCALL from CPL 3 (a #UD, so SIGILL, in a guest).
pub fn vmcall_program() -> Vec<u8> {
    user_program(&VMCALL)
}

/// `/bin/vmmcall`: AMD's VMMCALL from CPL 3.
pub fn vmmcall_program() -> Vec<u8> {
    user_program(&VMMCALL)
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

/// The contents of the section `name` of a little-endian ELF64 file.
pub fn section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if elf.get(..4)? != b"\x7FELF" || elf.get(4..6)? != [2, 1] {
        return None;
    }
    let shoff = usize::try_from(u64_at(elf, 0x28)?).ok()?;
    let shentsize = u16_at(elf, 0x3A)? as usize;
    let shnum = u16_at(elf, 0x3C)? as usize;
    let shstrndx = u16_at(elf, 0x3E)? as usize;
    let header = |i: usize| -> Option<(u32, usize, usize)> {
        let sh = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(elf, sh)?,
            usize::try_from(u64_at(elf, sh + 0x18)?).ok()?,
            usize::try_from(u64_at(elf, sh + 0x20)?).ok()?,
        ))
    };
    let (_, strtab, strtab_len) = header(shstrndx)?;
    let names = elf.get(strtab..strtab.checked_add(strtab_len)?)?;
    (0..shnum).find_map(|i| {
        let (name_off, off, size) = header(i)?;
        let this = names.get(name_off as usize..)?;
        let this = &this[..this.iter().position(|b| *b == 0)?];
        (this == name.as_bytes()).then(|| elf.get(off..off.checked_add(size)?))?
    })
}

/// The modules a kernel module needs loaded first: its `.modinfo` section's
/// `depends=` (comma-separated; empty when none).
pub fn module_depends(ko: &[u8]) -> Result<Vec<String>, String> {
    let info = section(ko, ".modinfo").ok_or("no .modinfo section")?;
    let depends = info
        .split(|b| *b == 0)
        .find_map(|field| field.strip_prefix(b"depends="))
        .ok_or("no depends= in .modinfo")?;
    let depends = std::str::from_utf8(depends).map_err(|e| e.to_string())?;
    Ok(depends
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_program(b: &[u8], insn: [u8; 3]) {
        // ELF identification and header.
        assert_eq!(&b[..8], b"\x7FELF\x02\x01\x01\x00");
        assert_eq!(u16_at(b, 0x10), Some(2), "ET_EXEC");
        assert_eq!(u16_at(b, 0x12), Some(0x3E), "EM_X86_64");
        assert_eq!(u32_at(b, 0x14), Some(1));
        let entry = u64_at(b, 0x18).unwrap();
        assert_eq!(
            u64_at(b, 0x20),
            Some(64),
            "program headers follow the header"
        );
        assert_eq!(u64_at(b, 0x28), Some(0), "no section headers");
        assert_eq!(u16_at(b, 0x34), Some(64));
        assert_eq!(u16_at(b, 0x36), Some(56));
        assert_eq!(u16_at(b, 0x38), Some(1));
        assert_eq!(u16_at(b, 0x3C), Some(0));
        // One PT_LOAD, R+X, the whole file at USER_BASE.
        assert_eq!(u32_at(b, 64), Some(1));
        assert_eq!(u32_at(b, 68), Some(5));
        assert_eq!(u64_at(b, 72), Some(0));
        let vaddr = u64_at(b, 80).unwrap();
        assert_eq!(vaddr, USER_BASE);
        assert_eq!(
            vaddr % 0x1000,
            0,
            "offset and address agree modulo the page"
        );
        assert_eq!(u64_at(b, 96), Some(b.len() as u64), "p_filesz");
        assert_eq!(u64_at(b, 104), Some(b.len() as u64), "p_memsz");
        assert_eq!(u64_at(b, 112), Some(0x1000));
        // The entry point is inside the segment and holds insn, then exit(0).
        assert!(entry >= vaddr && entry < vaddr + b.len() as u64);
        let code = &b[(entry - vaddr) as usize..];
        assert_eq!(&code[..3], insn);
        assert_eq!(&code[3..], EXIT_0);
    }

    #[test]
    fn the_helpers_are_one_segment_static_executables() {
        check_program(&vmcall_program(), VMCALL);
        check_program(&vmmcall_program(), VMMCALL);
        assert_eq!(vmcall_program().len(), CODE_AT + 12);
    }

    /// A relocatable ELF64 with a null section, `.shstrtab` and `.modinfo`.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(b"\x7FELF\x02\x01");
        let strtab_at = b.len();
        b.extend_from_slice(shstrtab);
        let info_at = b.len();
        b.extend_from_slice(modinfo);
        while !b.len().is_multiple_of(8) {
            b.push(0);
        }
        let shoff = b.len();
        put64(&mut b, 0x28, shoff as u64);
        put16(&mut b, 0x3A, 64);
        put16(&mut b, 0x3C, 3);
        put16(&mut b, 0x3E, 1);
        for (name, off, size) in [
            (0u32, 0usize, 0usize),
            (1, strtab_at, shstrtab.len()),
            (11, info_at, modinfo.len()),
        ] {
            let mut sh = vec![0u8; 64];
            put32(&mut sh, 0, name);
            put64(&mut sh, 0x18, off as u64);
            put64(&mut sh, 0x20, size as u64);
            b.extend_from_slice(&sh);
        }
        b
    }

    #[test]
    fn depends_are_read_from_modinfo() {
        let ko = fake_module(b"license=GPL\0depends=scsi_mod,hv_vmbus\0name=hv_storvsc\0");
        assert_eq!(module_depends(&ko).unwrap(), ["scsi_mod", "hv_vmbus"]);
        let ko = fake_module(b"depends=\0name=scsi_common\0");
        assert!(module_depends(&ko).unwrap().is_empty());
        let ko = fake_module(b"name=x\0");
        assert!(module_depends(&ko).is_err());
        assert!(module_depends(b"not an elf").is_err());
        assert_eq!(section(&ko, ".shstrtab").unwrap()[1..10], *b".shstrtab");
        assert!(section(&ko, ".text").is_none());
    }
}
