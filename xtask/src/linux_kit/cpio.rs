//! A writer of uncompressed "newc" cpio archives (the format the Linux kernel
//! unpacks as an initramfs): each entry is a 110-byte ASCII header (`070701`
//! and thirteen 8-digit hex fields), the NUL-terminated name padded to a
//! multiple of 4 bytes from the header's start, then the data padded to 4
//! bytes; the archive ends with an entry named `TRAILER!!!`. Reference: the
//! kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`.

pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFLNK: u32 = 0o120_000;
pub const S_IFCHR: u32 = 0o020_000;

pub const MAGIC: &[u8; 6] = b"070701";
pub const HEADER_LEN: usize = 110;
pub const TRAILER: &str = "TRAILER!!!";

/// An archive being written; `finish` adds the trailer.
pub struct Writer {
    out: Vec<u8>,
    next_ino: u32,
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

impl Writer {
    pub fn new() -> Self {
        Writer {
            out: Vec::new(),
            next_ino: 1,
        }
    }

    /// `name` is relative to the archive's root (`bin/busybox`), as the
    /// kernel and GNU cpio write them.
    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        assert!(
            !name.is_empty() && !name.starts_with('/') && !name.contains('\0'),
            "bad cpio name {name:?}"
        );
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0, // uid: root
            0, // gid: root
            nlink,
            0, // mtime: fixed, so the archive is reproducible
            u32::try_from(data.len()).expect("cpio entries are below 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check: only for the "070702" format
        ];
        self.out.extend_from_slice(MAGIC);
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        pad4(&mut self.out);
        self.out.extend_from_slice(data);
        pad4(&mut self.out);
    }

    pub fn dir(&mut self, name: &str, perm: u32) {
        self.entry(name, S_IFDIR | perm, 2, (0, 0), &[]);
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | perm, 1, (0, 0), data);
    }

    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | perm, 1, (major, minor), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry(TRAILER, 0, 1, (0, 0), &[]);
        self.out
    }
}

/// One entry as read back (for tests and checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub nlink: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// Reads a newc archive up to and including its trailer, checking the magic,
/// the padding and the bounds of every entry.
pub fn read(archive: &[u8]) -> Result<Vec<Entry>, String> {
    let mut at = 0;
    let mut entries = Vec::new();
    loop {
        let header = archive
            .get(at..at + HEADER_LEN)
            .ok_or(format!("header at {at} past the end"))?;
        if &header[..6] != MAGIC {
            return Err(format!("bad magic at {at}"));
        }
        let start = at;
        let field = |i: usize| -> Result<u32, String> {
            let text = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .map_err(|_| format!("field {i} at {start} is not ASCII"))?;
            u32::from_str_radix(text, 16).map_err(|_| format!("field {i} at {start}: {text:?}"))
        };
        let (filesize, namesize) = (field(6)? as usize, field(11)? as usize);
        let name_at = at + HEADER_LEN;
        let name = archive
            .get(name_at..name_at + namesize)
            .ok_or("name past the end")?;
        if namesize == 0 || name[namesize - 1] != 0 {
            return Err(format!("name at {name_at} not NUL-terminated"));
        }
        let name = String::from_utf8(name[..namesize - 1].to_vec()).map_err(|e| e.to_string())?;
        let data_at = (name_at + namesize).next_multiple_of(4);
        if archive[name_at + namesize..data_at].iter().any(|b| *b != 0) {
            return Err(format!("name padding of {name} not zero"));
        }
        let data = archive
            .get(data_at..data_at + filesize)
            .ok_or(format!("data of {name} past the end"))?
            .to_vec();
        at = (data_at + filesize).next_multiple_of(4);
        let entry = Entry {
            name,
            ino: field(0)?,
            mode: field(1)?,
            nlink: field(4)?,
            rdev: (field(9)?, field(10)?),
            data,
        };
        let done = entry.name == TRAILER;
        entries.push(entry);
        if done {
            if at != archive.len() {
                return Err(format!("{} bytes after the trailer", archive.len() - at));
            }
            return Ok(entries);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_entry_has_the_exact_newc_bytes() {
        let mut w = Writer::new();
        w.file("init", 0o755, b"#!/bin/sh\n");
        let a = w.finish();
        let header = std::str::from_utf8(&a[..HEADER_LEN]).unwrap();
        assert_eq!(
            header,
            "070701\
             00000001\
             000081ED\
             00000000\
             00000000\
             00000001\
             00000000\
             0000000A\
             00000000\
             00000000\
             00000000\
             00000000\
             00000005\
             00000000"
        );
        // 110 + "init\0" = 115, padded to 116; the 10 data bytes padded to 12.
        assert_eq!(&a[110..116], b"init\0\0");
        assert_eq!(&a[116..126], b"#!/bin/sh\n");
        assert_eq!(&a[126..128], b"\0\0");
        assert_eq!(&a[128..134], MAGIC);
        assert_eq!(a.len() % 4, 0);
    }

    #[test]
    fn every_kind_reads_back_and_ends_with_the_trailer() {
        let mut w = Writer::new();
        w.dir("dev", 0o755);
        w.char_dev("dev/console", 0o600, 5, 1);
        w.dir("bin", 0o755);
        w.file("bin/busybox", 0o755, &[0x7F, b'E', b'L', b'F', 1, 2, 3]);
        w.symlink("bin/sh", "busybox");
        w.file("empty", 0o644, &[]);
        let a = w.finish();
        let e = read(&a).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "bin",
                "bin/busybox",
                "bin/sh",
                "empty",
                TRAILER
            ]
        );
        assert_eq!(e[0].mode, S_IFDIR | 0o755);
        assert_eq!(e[0].nlink, 2);
        assert_eq!(e[1].mode, S_IFCHR | 0o600);
        assert_eq!(e[1].rdev, (5, 1));
        assert_eq!(e[3].data, [0x7F, b'E', b'L', b'F', 1, 2, 3]);
        assert_eq!(e[4].mode, S_IFLNK | 0o777);
        assert_eq!(e[4].data, b"busybox");
        assert!(e[5].data.is_empty());
        assert_eq!((e[6].ino, e[6].mode, e[6].nlink), (0, 0, 1));
        // Distinct inode numbers: the kernel would hard-link equal ones.
        let mut inos: Vec<u32> = e[..6].iter().map(|e| e.ino).collect();
        inos.dedup();
        assert_eq!(inos.len(), 6);
    }

    #[test]
    fn names_of_every_length_stay_aligned() {
        for len in 1..12 {
            for size in 0..9 {
                let mut w = Writer::new();
                let name = "n".repeat(len);
                w.file(&name, 0o644, &vec![0xAB; size]);
                let a = w.finish();
                let e = read(&a).unwrap();
                assert_eq!(e[0].name, name);
                assert_eq!(e[0].data.len(), size);
            }
        }
    }

    #[test]
    fn the_reader_refuses_a_cut_archive() {
        let mut w = Writer::new();
        w.file("a", 0o644, b"hello");
        let a = w.finish();
        assert!(read(&a[..a.len() - 4]).is_err());
        assert!(read(&a[..100]).is_err());
    }
}
