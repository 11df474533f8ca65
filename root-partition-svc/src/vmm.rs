//! The VM worker's logic: where guest memory comes from, how an image is
//! loaded and its VPs set up, and the devices the worker emulates (a 16550
//! UART on COM1, the power-off and test-exit ports). Pure: the kernel gives
//! it memory accessors and hypercalls.
use crate::linux_boot::le;
use hv_abi::partition::{reg, Segment, Table};
use hypervisor_core::elf;

pub const PAGE: u64 = 4096;

/// Free root RAM the worker hands to guests: sorted, disjoint extents.
pub struct MemoryPool<const N: usize> {
    extents: [(u64, u64); N],
    count: usize,
}

impl<const N: usize> Default for MemoryPool<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> MemoryPool<N> {
    pub const fn new() -> Self {
        MemoryPool {
            extents: [(0, 0); N],
            count: 0,
        }
    }

    /// Adds `[start, end)` (page-aligned inward); merges with neighbours.
    pub fn add(&mut self, start: u64, end: u64) -> bool {
        let (s, e) = (start.div_ceil(PAGE) * PAGE, end / PAGE * PAGE);
        if e <= s {
            return true;
        }
        let at = self.extents[..self.count].partition_point(|&(a, _)| a < s);
        if at > 0 && self.extents[at - 1].1 > s || at < self.count && self.extents[at].0 < e {
            return false; // overlaps: a double free
        }
        let joins_prev = at > 0 && self.extents[at - 1].1 == s;
        let joins_next = at < self.count && self.extents[at].0 == e;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.extents[at - 1].1 = self.extents[at].1;
                self.extents.copy_within(at + 1..self.count, at);
                self.count -= 1;
            }
            (true, false) => self.extents[at - 1].1 = e,
            (false, true) => self.extents[at].0 = s,
            (false, false) => {
                if self.count == N {
                    return false;
                }
                self.extents.copy_within(at..self.count, at + 1);
                self.extents[at] = (s, e);
                self.count += 1;
            }
        }
        true
    }

    /// `bytes` (page multiple) of contiguous memory, from the highest extent
    /// that has it (low memory stays for things that need it).
    pub fn take(&mut self, bytes: u64) -> Option<u64> {
        let bytes = bytes.div_ceil(PAGE) * PAGE;
        let i = (0..self.count)
            .rev()
            .find(|&i| self.extents[i].1 - self.extents[i].0 >= bytes)?;
        let (s, e) = self.extents[i];
        let start = e - bytes;
        if start == s {
            self.extents.copy_within(i + 1..self.count, i);
            self.count -= 1;
        } else {
            self.extents[i].1 = start;
        }
        Some(start)
    }

    pub fn free_bytes(&self) -> u64 {
        self.extents[..self.count].iter().map(|(s, e)| e - s).sum()
    }

    pub fn largest(&self) -> u64 {
        self.extents[..self.count]
            .iter()
            .map(|(s, e)| e - s)
            .max()
            .unwrap_or(0)
    }
}

/// How a VP starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// ELF64: long mode, identity-mapped guest memory.
    Long,
    /// Multiboot v1 ELF32: 32-bit protected mode, paging off, EAX = magic,
    /// EBX = the Multiboot information.
    Protected32,
    /// A flat image at 0x7C00: real mode, CS:IP = 0:7C00.
    Real,
    /// A Linux bzImage: the 64-bit boot protocol (`linux_boot`): long mode,
    /// CS = 0x10, DS = 0x18, RSI = the zero page; only VP 0 starts.
    Linux,
}

/// A loadable piece of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment64 {
    pub gpa: u64,
    pub offset: u64,
    pub file_bytes: u64,
    pub mem_bytes: u64,
}

pub const MAX_SEGMENTS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image {
    pub mode: EntryMode,
    pub entry: u64,
    pub segments: [Segment64; MAX_SEGMENTS],
    pub segment_count: usize,
}

/// The boot area: GDT, page tables, Multiboot info, then 8 KiB stacks per
/// VP, at these offsets from its base (`boot_base`: 0 unless an ELF image
/// lies there).
pub mod layout {
    pub const GDT: u64 = 0x1000;
    pub const PML4: u64 = 0x2000;
    pub const PDPT: u64 = 0x3000;
    /// Four page directories: 4 GiB of 2 MiB pages.
    pub const PD: u64 = 0x4000;
    pub const MULTIBOOT_INFO: u64 = 0x9000;
    pub const STACKS: u64 = 0x10000;
    pub const STACK_BYTES: u64 = 0x2000;
    pub const REAL_MODE_LOAD: u64 = 0x7C00;
}

/// Where the boot area (`layout`) goes for `image` with `vcpus` VPs in
/// `memory` bytes: at 0 unless the image overlaps it there, else right after
/// one of the image's segments (below 4 GiB, which a 32-bit GDTR and CR3
/// reach). Real-mode and Linux images use their own low-memory layouts
/// and keep 0.
pub fn boot_base(image: &Image, vcpus: u32, memory: u64) -> Result<u64, &'static str> {
    if !matches!(image.mode, EntryMode::Long | EntryMode::Protected32) {
        return Ok(0);
    }
    let segments = &image.segments[..image.segment_count];
    let area = layout::STACKS + vcpus as u64 * layout::STACK_BYTES;
    // Candidates past 4 GiB are refused before any sum; a segment's end is
    // computed saturating (`parse_image` keeps them inside `memory`, but
    // this must not rely on it).
    let fits = |base: u64| {
        if base >= 1 << 32 {
            return false;
        }
        let (start, end) = (base + layout::GDT, base.saturating_add(area));
        end <= memory.min(1 << 32)
            && segments
                .iter()
                .all(|s| s.gpa.saturating_add(s.mem_bytes) <= start || s.gpa >= end)
    };
    core::iter::once(0)
        .chain(segments.iter().filter_map(|s| {
            s.gpa
                .checked_add(s.mem_bytes)?
                .checked_next_multiple_of(PAGE)
        }))
        .find(|&b| fits(b))
        .ok_or("no room beside the image for its boot tables and stacks")
}

const MULTIBOOT_MAGIC: u32 = 0x1BAD_B002;
const NOT_X86: &str = "ELF: neither x86-64 ELF64 nor i386 ELF32";
/// What a Multiboot kernel finds in EAX.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u64 = 0x2BAD_B002;

/// Reads an image: ELF64 (x86-64), ELF32 (i386) with a Multiboot v1
/// header in its first 8 KiB, or else a flat real-mode image (at most
/// 0x7C00..0x80000). ELF headers and program headers are read by
/// `hypervisor_core::elf` (both classes). Segments must fit in `memory`
/// bytes (ELF: anywhere; `boot_base` finds room for the boot tables beside
/// them). Errors say what is wrong.
pub fn parse_image(b: &[u8], memory: u64) -> Result<Image, &'static str> {
    let mut img = Image {
        mode: EntryMode::Real,
        entry: layout::REAL_MODE_LOAD,
        segments: [Segment64 {
            gpa: 0,
            offset: 0,
            file_bytes: 0,
            mem_bytes: 0,
        }; MAX_SEGMENTS],
        segment_count: 0,
    };
    if let Some(k) = crate::linux_boot::parse(b, memory)? {
        img.mode = EntryMode::Linux;
        img.entry = k.load + crate::linux_boot::ENTRY_OFFSET;
        img.segments[0] = Segment64 {
            gpa: k.load,
            offset: k.code_offset,
            file_bytes: k.code_bytes,
            mem_bytes: k.code_bytes,
        };
        img.segment_count = 1;
        return Ok(img);
    }
    if b.get(..4) != Some(b"\x7FELF") {
        let len = b.len() as u64;
        if len == 0 || layout::REAL_MODE_LOAD + len > 0x8_0000 {
            return Err("not an ELF file, and too big for a real-mode image (0x7C00..0x80000)");
        }
        img.segments[0] = Segment64 {
            gpa: layout::REAL_MODE_LOAD,
            offset: 0,
            file_bytes: len,
            mem_bytes: len,
        };
        img.segment_count = 1;
        return Ok(img);
    }
    // The headers are read by the one ELF reader (`hypervisor_core::elf`);
    // what a guest image may be, and where it may go, is checked here.
    let ident = match elf::identify(b) {
        Ok(ident) => ident,
        Err(elf::Error::NotLittleEndian) => return Err("ELF: not little-endian"),
        Err(_) => return Err(NOT_X86),
    };
    let is64 = match (ident.class, ident.machine) {
        (elf::Class::Elf64, elf::EM_X86_64) => true,
        (elf::Class::Elf32, elf::EM_386) => false,
        _ => return Err(NOT_X86),
    };
    if !is64 {
        let head = &b[..b.len().min(8192)];
        let found = (0..head.len().saturating_sub(12)).step_by(4).any(|i| {
            let (m, f, c) = (le(head, i, 4), le(head, i + 4, 4), le(head, i + 8, 4));
            matches!((m, f, c), (Some(m), Some(f), Some(c))
                if m == MULTIBOOT_MAGIC as u64 && (m + f + c) & 0xFFFF_FFFF == 0)
        });
        if !found {
            return Err("ELF32 without a Multiboot v1 header: no way to start it");
        }
    }
    img.mode = if is64 {
        EntryMode::Long
    } else {
        EntryMode::Protected32
    };
    let message = |e| match e {
        elf::Error::BadProgramHeaderSize => "ELF: bad program header size",
        elf::Error::ProgramHeaderOutOfRange => "ELF: program header out of range",
        elf::Error::TruncatedProgramHeader => "ELF: truncated program header",
        elf::Error::TruncatedHeader => "ELF: truncated header",
        // Identification passed above.
        elf::Error::NotElf | elf::Error::NotLittleEndian | elf::Error::UnknownClass => NOT_X86,
    };
    img.entry = elf::header(b).map_err(message)?.entry;
    for s in elf::segments(b).map_err(message)? {
        if s.filesz > s.memsz
            || s.offset
                .checked_add(s.filesz)
                .is_none_or(|e| e > b.len() as u64)
        {
            return Err("ELF: a segment lies outside the file");
        }
        if s.paddr.checked_add(s.memsz).is_none_or(|e| e > memory) {
            return Err("ELF: a segment lies outside the VM's memory");
        }
        if img.segment_count == MAX_SEGMENTS {
            return Err("ELF: too many loadable segments");
        }
        img.segments[img.segment_count] = Segment64 {
            gpa: s.paddr,
            offset: s.offset,
            file_bytes: s.filesz,
            mem_bytes: s.memsz,
        };
        img.segment_count += 1;
    }
    if img.segment_count == 0 {
        return Err("ELF: nothing to load");
    }
    Ok(img)
}

/// The boot structures for `mode` in guest memory, as (gpa, u64) writes:
/// the GDT, and for long mode the identity page tables (2 MiB pages over
/// `memory`, at most 4 GiB).
pub fn boot_tables(mode: EntryMode, memory: u64, base: u64, out: &mut dyn FnMut(u64, u64)) {
    let code = match mode {
        EntryMode::Long | EntryMode::Linux => 0x00AF_9A00_0000_FFFF,
        _ => 0x00CF_9A00_0000_FFFF,
    };
    let data = 0x00CF_9200_0000_FFFFu64;
    // Linux's boot protocol wants __BOOT_CS 0x10 and __BOOT_DS 0x18.
    let gdt = match mode {
        EntryMode::Linux => [0, 0, code, data],
        _ => [0, code, data, 0],
    };
    for (i, d) in gdt.into_iter().enumerate() {
        out(base + layout::GDT + 8 * i as u64, d);
    }
    if matches!(mode, EntryMode::Long | EntryMode::Linux) {
        out(base + layout::PML4, (base + layout::PDPT) | 3);
        let gib = memory.div_ceil(1 << 30).clamp(1, 4);
        for g in 0..gib {
            out(
                base + layout::PDPT + 8 * g,
                (base + layout::PD + g * PAGE) | 3,
            );
        }
        // At least the first GiB, so that a guest can reach (and fault on)
        // addresses past its RAM.
        let pages = memory.max(1 << 30).div_ceil(1 << 21).min(4 * 512);
        for p in 0..pages {
            // Present, writable, 2 MiB.
            out(base + layout::PD + 8 * p, (p << 21) | 0x83);
        }
    }
    if mode == EntryMode::Protected32 {
        // Multiboot information: flags bit 0, mem_lower / mem_upper in KiB.
        out(base + layout::MULTIBOOT_INFO, 1 | (640u64 << 32));
        out(
            base + layout::MULTIBOOT_INFO + 8,
            (memory / 1024).saturating_sub(1024),
        );
    }
}

/// The registers VP `vp` of `vps` starts with: (name, value) pairs; the
/// boot area at `base` (`boot_base`).
/// Long mode: RDI = VP index, RSI = VP count, RDX = memory bytes.
pub fn start_registers(
    mode: EntryMode,
    entry: u64,
    (vp, vps): (u32, u32),
    memory: u64,
    base: u64,
) -> [(u32, u128); 24] {
    let stack = base + layout::STACKS + (vp as u64 + 1) * layout::STACK_BYTES;
    let flat = |sel: u16, attributes: u16| {
        Segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector: sel,
            attributes,
        }
        .to_value()
    };
    let (cs, data, cr0, cr4, efer) = match mode {
        EntryMode::Long => (
            flat(8, 0xA09B),
            flat(0x10, 0xC093),
            0x8001_0033,
            0x620,
            0xD00,
        ),
        EntryMode::Linux => (
            flat(0x10, 0xA09B),
            flat(0x18, 0xC093),
            0x8001_0033,
            0x620,
            0xD00,
        ),
        EntryMode::Protected32 => (flat(8, 0xC09B), flat(0x10, 0xC093), 0x11, 0, 0),
        EntryMode::Real => {
            let real = |sel: u16, attributes| {
                Segment {
                    base: 0,
                    limit: 0xFFFF,
                    selector: sel,
                    attributes,
                }
                .to_value()
            };
            (real(0, 0x9B), real(0, 0x93), 0x10, 0, 0)
        }
    };
    let (rax, rbx) = match mode {
        EntryMode::Protected32 => (MULTIBOOT_BOOTLOADER_MAGIC, base + layout::MULTIBOOT_INFO),
        _ => (0, 0),
    };
    // Linux: RSI is the zero page (interrupts are off: RFLAGS 2).
    let (rdx, rsi, rdi) = match mode {
        EntryMode::Linux => (0, crate::linux_boot::layout::ZERO_PAGE, 0),
        _ => (memory, vps as u64, vp as u64),
    };
    let tr = Segment {
        base: 0,
        limit: 0x67,
        selector: 0,
        attributes: 0x8B,
    }
    .to_value();
    let gdtr = Table {
        limit: 0x1F,
        base: base + layout::GDT,
    }
    .to_value();
    [
        (reg::CR0, cr0),
        (
            reg::CR3,
            if matches!(mode, EntryMode::Long | EntryMode::Linux) {
                (base + layout::PML4) as u128
            } else {
                0
            },
        ),
        (reg::CR4, cr4),
        (reg::EFER, efer),
        (reg::CS, cs),
        (reg::DS, data),
        (reg::ES, data),
        (reg::SS, data),
        (reg::FS, data),
        (reg::GS, data),
        (reg::TR, tr),
        (reg::LDTR, 0),
        (reg::GDTR, gdtr),
        (reg::IDTR, 0),
        (reg::RIP, entry as u128),
        (reg::RSP, stack as u128),
        (reg::RFLAGS, 2),
        (reg::RAX, rax as u128),
        (reg::RAX + 3, rbx as u128), // rbx
        (reg::RAX + 1, 0),           // rcx
        (reg::RAX + 2, rdx as u128), // rdx
        (reg::RAX + 6, rsi as u128), // rsi
        (reg::RAX + 7, rdi as u128), // rdi
        (reg::CR2, 0),
    ]
}

/// The guest's serial output, last `N` bytes.
pub struct Console<const N: usize> {
    buf: [u8; N],
    len: usize,
    head: usize,
    pub total: u64,
}

impl<const N: usize> Default for Console<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Console<N> {
    pub const fn new() -> Self {
        Console {
            buf: [0; N],
            len: 0,
            head: 0,
            total: 0,
        }
    }

    pub fn push(&mut self, b: u8) {
        let at = (self.head + self.len) % N;
        self.buf[at] = b;
        if self.len == N {
            self.head = (self.head + 1) % N;
        } else {
            self.len += 1;
        }
        self.total += 1;
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.head = 0;
        self.total = 0;
    }

    /// The kept bytes, oldest first, as two slices.
    pub fn contents(&self) -> (&[u8], &[u8]) {
        let end = self.head + self.len;
        if end <= N {
            (&self.buf[self.head..end], &[])
        } else {
            (&self.buf[self.head..], &self.buf[..end - N])
        }
    }

    /// Whether `text` ends among the bytes pushed after the first `since`
    /// (`total` then), also across the ring's wrap: a poller looks only at
    /// what is new; `since` 0 searches everything kept.
    pub fn contains_since(&self, text: &[u8], since: u64) -> bool {
        if text.is_empty() {
            return true;
        }
        let (a, b) = self.contents();
        let at = |i: usize| if i < a.len() { a[i] } else { b[i - a.len()] };
        let len = a.len() + b.len();
        let new = usize::try_from(self.total.saturating_sub(since)).unwrap_or(usize::MAX);
        let first = len.saturating_sub(new.saturating_add(text.len() - 1));
        (first..(len + 1).saturating_sub(text.len()))
            .any(|start| text.iter().enumerate().all(|(k, &t)| at(start + k) == t))
    }
}

/// A guest's console bytes made safe for the operator's terminal: printable
/// ASCII, newline and tab pass; carriage returns are dropped (line ends);
/// every other byte (escape sequences, other controls, non-ASCII) is shown
/// as `\xNN`, so a guest can neither drive the terminal nor forge lines.
pub fn sanitize_console(bytes: &[u8], out: &mut dyn FnMut(&[u8])) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let plain = matches!(b, b' '..=b'~' | b'\n' | b'\t');
        if plain {
            continue;
        }
        out(&bytes[start..i]);
        if b != b'\r' {
            out(&[b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
        start = i + 1;
    }
    out(&bytes[start..]);
}

/// A 16550 UART as a simple guest sees it: writes to THR are output; it
/// is always ready to send; the other registers keep what is written
/// (scratch, divisor, line and modem control). With the THR-empty
/// interrupt enabled (IER bit 1) the interrupt identification register
/// shows it pending after each write and when it is enabled, until IIR is
/// read, as on the chip. The pending sources drive the interrupt line
/// ([`Uart::interrupt_line`]) into the VM's I/O APIC, so a driver sends and
/// receives on interrupts; one without an IRQ (Linux's 8250 with irq 0)
/// polls IIR and works too. Received bytes (what
/// the administrator types at `vm console`) wait in a 16-byte FIFO: LSR
/// bit 0 says data is ready, IIR shows it (0x04) when IER bit 0 enables
/// it, RBR takes the oldest; a byte arriving at a full FIFO is lost and
/// counted as an overrun (LSR bit 1), as on the chip.
#[derive(Default)]
pub struct Uart {
    thre_pending: bool,
    rx: [u8; RX_FIFO],
    rx_head: usize,
    rx_len: usize,
    overrun: bool,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fcr: u8,
}

pub const COM1: u16 = 0x3F8;
const RX_FIFO: usize = 16;

impl Uart {
    /// A byte arrives on the receive line; `false` if the FIFO was full.
    pub fn receive(&mut self, b: u8) -> bool {
        if self.rx_len == RX_FIFO {
            self.overrun = true;
            return false;
        }
        self.rx[(self.rx_head + self.rx_len) % RX_FIFO] = b;
        self.rx_len += 1;
        true
    }

    /// Room for this many more received bytes.
    pub fn rx_room(&self) -> usize {
        RX_FIFO - self.rx_len
    }

    /// A write to register `offset` (0-7); returns the byte sent, if any.
    pub fn write(&mut self, offset: u16, v: u8) -> Option<u8> {
        let dlab = self.lcr & 0x80 != 0;
        match (offset, dlab) {
            (0, false) => {
                self.thre_pending = true;
                return Some(v);
            }
            (0, true) => self.dll = v,
            (1, true) => self.dlm = v,
            (1, false) => {
                if v & 2 != 0 && self.ier & 2 == 0 {
                    self.thre_pending = true;
                }
                self.ier = v & 0x0F;
            }
            (2, _) => self.fcr = v,
            (3, _) => self.lcr = v,
            (4, _) => self.mcr = v & 0x1F,
            (7, _) => self.scr = v,
            _ => {}
        }
        None
    }

    /// The interrupt identification of the pending source of highest
    /// priority the enabled ones give: an overrun (0x06, IER bit 2), data
    /// received (0x04, bit 0), THR empty (0x02, bit 1).
    fn interrupt_source(&self) -> Option<u8> {
        if self.ier & 4 != 0 && self.overrun {
            Some(0x06)
        } else if self.ier & 1 != 0 && self.rx_len > 0 {
            Some(0x04)
        } else if self.ier & 2 != 0 && self.thre_pending {
            Some(0x02)
        } else {
            None
        }
    }

    /// The interrupt output as a PC wires it: a pending source, gated by
    /// OUT2 (MCR bit 3); none in loopback mode (MCR bit 4).
    pub fn interrupt_line(&self) -> bool {
        self.mcr & 0x18 == 0x08 && self.interrupt_source().is_some()
    }

    pub fn read(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & 0x80 != 0;
        match (offset, dlab) {
            (0, true) => self.dll,
            (1, true) => self.dlm,
            (0, false) => {
                if self.rx_len == 0 {
                    return 0;
                }
                let b = self.rx[self.rx_head];
                self.rx_head = (self.rx_head + 1) % RX_FIFO;
                self.rx_len -= 1;
                b
            }
            (1, false) => self.ier,
            // The pending source of highest priority (reading it clears
            // THR empty) or none (0x01); FIFOs reported enabled when FCR
            // bit 0 is set.
            (2, _) => {
                let fifo = if self.fcr & 1 != 0 { 0xC0 } else { 0 };
                let source = self.interrupt_source();
                if source == Some(0x02) {
                    self.thre_pending = false;
                }
                source.unwrap_or(0x01) | fifo
            }
            (3, _) => self.lcr,
            (4, _) => self.mcr,
            // Transmitter empty and holding register empty; data ready;
            // an overrun since the last read.
            (5, _) => {
                0x60 | (self.rx_len > 0) as u8 | (core::mem::take(&mut self.overrun) as u8) << 1
            }
            // Loopback echoes the control lines; otherwise CTS, DSR, DCD.
            (6, _) => {
                if self.mcr & 0x10 != 0 {
                    (self.mcr & 0x0F) << 4
                } else {
                    0xB0
                }
            }
            _ => self.scr,
        }
    }
}

/// What a guest touched that is not there (a port, an MMIO page): each of
/// the first `N` distinct keys is reported once, then one line says the
/// rest go unreported, so a guest cannot flood the operator's console.
pub struct ReportOnce<const N: usize> {
    keys: [u64; N],
    count: usize,
    overflowed: bool,
}

/// What to say about one access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// A key not seen before: report it.
    New,
    /// The first key that did not fit: say that no more are reported.
    Overflow,
    /// Reported before, or after the overflow: nothing.
    Quiet,
}

impl<const N: usize> Default for ReportOnce<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> ReportOnce<N> {
    pub const fn new() -> Self {
        ReportOnce {
            keys: [0; N],
            count: 0,
            overflowed: false,
        }
    }

    pub fn note(&mut self, key: u64) -> Report {
        if self.keys[..self.count].contains(&key) {
            Report::Quiet
        } else if self.count < N {
            self.keys[self.count] = key;
            self.count += 1;
            Report::New
        } else if !core::mem::replace(&mut self.overflowed, true) {
            Report::Overflow
        } else {
            Report::Quiet
        }
    }
}

/// Ports the worker gives meaning to besides COM1.
pub mod port {
    /// The test exit port (QEMU's isa-debug-exit convention): the value
    /// written is the guest's exit code.
    pub const TEST_EXIT: u16 = 0xF4;
    /// ACPI PM1a control as QEMU's PIIX4 places it: writing SLP_EN | S5
    /// (0x2000) powers the VM off.
    pub const POWER_OFF: u16 = 0x604;
    pub const POWER_OFF_VALUE: u64 = 0x2000;
    /// A test device: the vector written is asserted back into the writing
    /// VP (AssertVirtualInterrupt: fixed, edge).
    pub const TEST_INTERRUPT: u16 = 0xF5;
    /// A test device: the guest page whose address is written (32 bits) is
    /// unmapped; the VP's next access to it has the root map it back and
    /// resume the VP where it was (what an event whose delivery faulted
    /// needs: `redeliver` test guest).
    pub const TEST_UNMAP: u16 = 0xF6;
    /// The FADT's sleep control register (hardware-reduced ACPI): SLP_EN
    /// (bit 5) with SLP_TYP (bits 4:2) 5, the DSDT's \_S5, powers off.
    pub const SLEEP_CONTROL: u16 = 0x600;
    pub const SLEEP_STATUS: u16 = 0x601;
    /// The FADT's reset register (and a PC's reset control): bit 2 resets.
    pub const RESET_CONTROL: u16 = 0xCF9;
    /// System control port A: bit 0 is a fast reset.
    pub const SYSTEM_CONTROL_A: u16 = 0x92;
    /// The keyboard controller's command port: 0xFE pulses the reset line.
    pub const KBC_COMMAND: u16 = 0x64;
    /// POST codes: written by firmware and Linux's I/O delay; ignored.
    pub const POST: u16 = 0x80;
}

/// The devices a VM's worker emulates.
#[derive(Default)]
pub struct Devices {
    pub uart: Uart,
    pub cmos: crate::cmos::Cmos,
    pub ioapic: crate::ioapic::IoApic,
}

impl Devices {
    /// COM1's interrupt line into the I/O APIC, after anything that may
    /// have changed it (a register access, a received byte): the
    /// interrupt its edge makes, if any.
    pub fn serial_interrupt(
        &mut self,
    ) -> Option<Result<crate::ioapic::Delivery, crate::ioapic::Refused>> {
        let line = self.uart.interrupt_line();
        self.ioapic.set_line(crate::ioapic::COM1_PIN, line)
    }
}

/// What an I/O access did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEffect {
    /// Handled; for IN, the value.
    Done(u32),
    /// Handled, and the byte is console output.
    Output(u8),
    /// The guest asked to end with this exit code.
    Exit(u32),
    PowerOff,
    /// The guest reset the machine: the VM restarts.
    Reset,
    /// Assert this vector into the VP that wrote it.
    Interrupt(u8),
    /// Unmap the guest page at this GPA until the VM touches it.
    UnmapPage(u64),
    /// Not emulated: reads all ones, writes ignored.
    Unhandled,
}

/// The bits of RAX an I/O access of `size` bytes (1, 2 or 4) uses.
pub fn access_mask(size: u8) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

/// Whether `emulate_io` reads its `now` for an access to `port`: only the
/// CMOS shows the time (a caller may skip reading the clock otherwise).
pub fn reads_clock(port: u16) -> bool {
    matches!(port, crate::cmos::INDEX_PORT | crate::cmos::DATA_PORT)
}

/// One IN or OUT of `size` bytes on `port` (value in the low bytes), at
/// Unix time `now` (the clock the CMOS shows; see `reads_clock`).
pub fn emulate_io(
    dev: &mut Devices,
    port: u16,
    size: u8,
    write: bool,
    value: u32,
    now: u64,
) -> IoEffect {
    use crate::cmos;
    match port {
        COM1..=0x3FF => {
            let offset = port - COM1;
            if write {
                match dev.uart.write(offset, value as u8) {
                    Some(b) => IoEffect::Output(b),
                    None => IoEffect::Done(0),
                }
            } else {
                IoEffect::Done(dev.uart.read(offset) as u32)
            }
        }
        cmos::INDEX_PORT | cmos::DATA_PORT if size == 1 => {
            if write {
                dev.cmos.write(port, value as u8);
                IoEffect::Done(0)
            } else {
                IoEffect::Done(dev.cmos.read(port, now) as u32)
            }
        }
        port::POST if write => IoEffect::Done(0),
        port::TEST_EXIT if write => IoEffect::Exit(value & access_mask(size) as u32),
        port::TEST_INTERRUPT if write => IoEffect::Interrupt(value as u8),
        port::TEST_UNMAP if write && size == 4 => IoEffect::UnmapPage(value as u64 & !(PAGE - 1)),
        port::POWER_OFF if write && (value as u64) & 0x3C00 == port::POWER_OFF_VALUE => {
            IoEffect::PowerOff
        }
        port::SLEEP_CONTROL if write && value & 0x3C == (1 << 5) | (5 << 2) => IoEffect::PowerOff,
        port::SLEEP_CONTROL | port::SLEEP_STATUS if write => IoEffect::Done(0),
        port::SLEEP_CONTROL | port::SLEEP_STATUS => IoEffect::Done(0),
        port::RESET_CONTROL if write && value & 4 != 0 => IoEffect::Reset,
        port::SYSTEM_CONTROL_A if write && value & 1 != 0 => IoEffect::Reset,
        port::KBC_COMMAND if write && value as u8 == 0xFE => IoEffect::Reset,
        _ => IoEffect::Unhandled,
    }
}

#[cfg(test)]
mod tests {

    fn sanitized(bytes: &[u8]) -> std::vec::Vec<u8> {
        let mut v = std::vec::Vec::new();
        sanitize_console(bytes, &mut |b| v.extend_from_slice(b));
        v
    }

    #[test]
    fn console_bytes_cannot_drive_the_terminal() {
        assert_eq!(sanitized(b"hello\r\n\tok"), b"hello\n\tok");
        assert_eq!(sanitized(b"\x1b[2Jroot> "), b"\\x1b[2Jroot> ");
        assert_eq!(sanitized(&[0xFF, b'a', 0x07]), b"\\xffa\\x07");
        assert_eq!(sanitized(b""), b"");
    }
    use super::*;

    #[test]
    fn the_pool_hands_out_and_takes_back() {
        let mut p = MemoryPool::<4>::new();
        assert!(p.add(0x10_0000, 0x80_0000));
        assert!(p.add(0x100_0000, 0x200_0000));
        assert_eq!(p.free_bytes(), 0x70_0000 + 0x100_0000);
        let a = p.take(0x40_0000).unwrap();
        assert_eq!(a, 0x1C0_0000, "from the top of the highest extent");
        let b = p.take(0x80_0000).unwrap();
        assert_eq!(b, 0x140_0000, "the highest extent that has room");
        assert_eq!(p.take(0x80_0000), None, "nothing that large is left");
        assert!(p.add(b, b + 0x80_0000));
        assert!(p.add(a, a + 0x40_0000));
        assert_eq!(p.largest(), 0x100_0000, "merged back whole");
        assert!(!p.add(a, a + 0x1000), "a double free is refused");
    }

    fn elf64(paddr: u64, filesz: u64, memsz: u64) -> std::vec::Vec<u8> {
        let mut b = std::vec![0u8; 0x200];
        b[..4].copy_from_slice(b"\x7FELF");
        b[4] = 2;
        b[5] = 1;
        b[18] = 62;
        b[24..32].copy_from_slice(&(paddr + 0x10).to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54] = 56;
        b[56] = 1;
        let ph = 64;
        b[ph] = 1;
        b[ph + 8..ph + 16].copy_from_slice(&0x100u64.to_le_bytes());
        b[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&filesz.to_le_bytes());
        b[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        b
    }

    #[test]
    fn images_are_checked_against_the_vm() {
        let img = parse_image(&elf64(0x20_0000, 0x100, 0x2000), 4 << 20).unwrap();
        assert_eq!(img.mode, EntryMode::Long);
        assert_eq!(img.entry, 0x20_0010);
        assert_eq!(img.segment_count, 1);
        assert_eq!(img.segments[0].mem_bytes, 0x2000);
        assert!(parse_image(&elf64(0x20_0000, 0x100, 0x2000), 2 << 20).is_err());
        assert!(parse_image(&elf64(0x3F_F000, 0x100, 0x2000), 4 << 20).is_err());
        assert!(parse_image(&elf64(0x20_0000, 0x1000, 0x100), 4 << 20).is_err());
        let mut e32 = elf64(0x20_0000, 0x100, 0x100);
        e32[4] = 1;
        e32[18] = 3;
        assert!(
            parse_image(&e32, 4 << 20).is_err(),
            "ELF32 needs a Multiboot header"
        );
        let flat = [0xF4u8; 16];
        let img = parse_image(&flat, 4 << 20).unwrap();
        assert_eq!((img.mode, img.entry), (EntryMode::Real, 0x7C00));
    }

    /// An i386 ELF32 with one PT_LOAD of the whole file at `paddr` and,
    /// when asked, a Multiboot v1 header after the program header.
    fn elf32(paddr: u32, multiboot: bool) -> std::vec::Vec<u8> {
        let mut b = std::vec![0u8; 0x100];
        b[..7].copy_from_slice(b"\x7FELF\x01\x01\x01");
        b[18] = 3;
        b[24..28].copy_from_slice(&(paddr + 0x60).to_le_bytes());
        b[28..32].copy_from_slice(&52u32.to_le_bytes());
        b[42] = 32;
        b[44] = 1;
        let len = b.len() as u32;
        for (o, v) in [
            (0, 1),
            (4, 0),
            (8, paddr),
            (12, paddr),
            (16, len),
            (20, 0x3000),
            (24, 5),
        ] {
            b[52 + o..56 + o].copy_from_slice(&v.to_le_bytes());
        }
        if multiboot {
            let magic = MULTIBOOT_MAGIC;
            for (i, w) in [magic, 0, 0u32.wrapping_sub(magic)].into_iter().enumerate() {
                b[0x54 + 4 * i..0x58 + 4 * i].copy_from_slice(&w.to_le_bytes());
            }
        }
        b
    }

    #[test]
    fn multiboot_elf32_images() {
        let img = parse_image(&elf32(0x10_0000, true), 4 << 20).unwrap();
        assert_eq!(img.mode, EntryMode::Protected32);
        assert_eq!(img.entry, 0x10_0060);
        assert_eq!(img.segment_count, 1);
        assert_eq!(
            img.segments[0],
            Segment64 {
                gpa: 0x10_0000,
                offset: 0,
                file_bytes: 0x100,
                mem_bytes: 0x3000
            }
        );
        assert_eq!(
            parse_image(&elf32(0x10_0000, false), 4 << 20).unwrap_err(),
            "ELF32 without a Multiboot v1 header: no way to start it"
        );
        assert_eq!(
            parse_image(&elf32(0x3F_F000, true), 4 << 20).unwrap_err(),
            "ELF: a segment lies outside the VM's memory"
        );
        let mut wrong_machine = elf32(0x10_0000, true);
        wrong_machine[18] = 62;
        assert_eq!(
            parse_image(&wrong_machine, 4 << 20).unwrap_err(),
            "ELF: neither x86-64 ELF64 nor i386 ELF32"
        );
        let mut truncated = elf32(0x10_0000, true);
        truncated[44] = 8;
        assert_eq!(
            parse_image(&truncated, 4 << 20).unwrap_err(),
            "ELF: truncated program header",
            "the eighth program header lies past the end of the file"
        );
    }

    #[test]
    fn long_mode_tables_map_all_memory() {
        let mut writes = std::vec::Vec::new();
        boot_tables(EntryMode::Long, 6 << 20, 0, &mut |a, v| writes.push((a, v)));
        assert!(writes.contains(&(layout::PML4, layout::PDPT | 3)));
        assert!(writes.contains(&(layout::PD + 16, (2 << 21) | 0x83)));
        assert!(writes.contains(&(layout::PD + 8 * 511, (511 << 21) | 0x83)));
        assert!(!writes.iter().any(|&(a, _)| a == layout::PD + 8 * 512));
        let regs = start_registers(EntryMode::Long, 0x20_0000, (1, 2), 6 << 20, 0);
        assert!(regs.contains(&(reg::RIP, 0x20_0000)));
        assert!(regs.contains(&(reg::RSP, (layout::STACKS + 2 * layout::STACK_BYTES) as u128)));
        assert!(regs.contains(&(reg::RAX + 7, 1)));
    }

    #[test]
    fn images_below_1_mib_move_the_boot_area_beside_them() {
        // At 1 MiB and above: the boot area stays at 0.
        let high = parse_image(&elf64(0x10_0000, 0x100, 0x2000), 4 << 20).unwrap();
        assert_eq!(boot_base(&high, 4, 4 << 20), Ok(0));
        // Over the GDT and tables: the area goes right after the image.
        let low = parse_image(&elf64(0x8000, 0x100, 0x1800), 4 << 20).unwrap();
        assert_eq!(low.segments[0].gpa, 0x8000);
        assert_eq!(boot_base(&low, 1, 4 << 20), Ok(0xA000));
        // Where one VP's stack fits but 64 VPs' do not.
        let mid = parse_image(&elf64(0x20000, 0x100, 0x1000), 4 << 20).unwrap();
        assert_eq!(boot_base(&mid, 1, 4 << 20), Ok(0));
        assert_eq!(boot_base(&mid, 64, 4 << 20), Ok(0x21000));
        // An image that leaves no room at all.
        let all = parse_image(&elf64(0, 0x100, 4 << 20), 4 << 20).unwrap();
        assert!(boot_base(&all, 1, 4 << 20).is_err());
        // Real-mode and Linux images keep their own layouts.
        let flat = parse_image(&[0xF4; 16], 4 << 20).unwrap();
        assert_eq!(boot_base(&flat, 1, 4 << 20), Ok(0));
        // Everything the boot area holds moves with it.
        let base = 0xA000;
        let mut writes = std::vec::Vec::new();
        boot_tables(EntryMode::Long, 4 << 20, base, &mut |a, v| {
            writes.push((a, v))
        });
        assert!(writes.contains(&(base + layout::PML4, (base + layout::PDPT) | 3)));
        assert!(writes.contains(&(base + layout::PDPT, (base + layout::PD) | 3)));
        assert!(writes.iter().all(|&(a, _)| a >= base + layout::GDT));
        let regs = start_registers(EntryMode::Long, 0x8010, (0, 1), 4 << 20, base);
        assert!(regs.contains(&(reg::CR3, (base + layout::PML4) as u128)));
        assert!(regs.contains(&(
            reg::RSP,
            (base + layout::STACKS + layout::STACK_BYTES) as u128
        )));
        let mb = start_registers(EntryMode::Protected32, 0x8010, (0, 1), 4 << 20, base);
        assert!(mb.contains(&(reg::RAX + 3, (base + layout::MULTIBOOT_INFO) as u128)));
    }

    #[test]
    fn each_absent_thing_is_reported_once_then_no_more() {
        let mut r = ReportOnce::<2>::new();
        assert_eq!(r.note(0x61), Report::New);
        assert_eq!(r.note(0x61), Report::Quiet);
        assert_eq!(r.note(0x62), Report::New);
        assert_eq!(r.note(0x63), Report::Overflow);
        assert_eq!(r.note(0x64), Report::Quiet);
        assert_eq!(r.note(0x61), Report::Quiet);
    }

    /// Every port whose answer can depend on the time is one `reads_clock`
    /// names: elsewhere the root may pass no time at all.
    #[test]
    fn only_the_clock_ports_read_the_time() {
        let read_at = |port: u16, now: u64| {
            let mut d = Devices::default();
            // The CMOS's index first: its seconds register.
            emulate_io(&mut d, crate::cmos::INDEX_PORT, 1, true, 0, now);
            emulate_io(&mut d, port, 1, false, 0, now)
        };
        let noon_2026 = 1_780_000_000;
        for port in 0..=u16::MAX {
            if !reads_clock(port) {
                assert_eq!(read_at(port, 0), read_at(port, noon_2026), "port {port:#x}");
            }
        }
        assert_ne!(
            read_at(crate::cmos::DATA_PORT, 0),
            read_at(crate::cmos::DATA_PORT, noon_2026 + 7)
        );
    }

    /// COM1's interrupt through the I/O APIC, in the order Linux's 8250
    /// driver with an IRQ works it: an edge per new cause, none while the
    /// line stays up, none without OUT2 or in loopback.
    #[test]
    fn the_uart_interrupts_through_the_io_apic() {
        use crate::ioapic::{Delivery, Destination};
        let mut d = Devices::default();
        let io = |d: &mut Devices, port: u16, write: bool, v: u32| {
            let e = emulate_io(d, port, 1, write, v, 0);
            (e, d.serial_interrupt())
        };
        // Pin 4 to vector 0x41 on VP 1, edge, active high.
        for (reg, v) in [(0x18u32, 0x41u32), (0x19, 0x0100_0000)] {
            d.ioapic.write(0, reg);
            d.ioapic.write(0x10, v);
        }
        let fired = Some(Ok(Delivery {
            vector: 0x41,
            destination: Destination::Vp(1),
        }));
        // THR empty enabled without OUT2: no interrupt (a PC's gate).
        assert_eq!(io(&mut d, 0x3F9, true, 0x02).1, None);
        assert_eq!(io(&mut d, 0x3FA, false, 0).0, IoEffect::Done(0x02));
        // Loopback with OUT2: still none.
        io(&mut d, 0x3FC, true, 0x18);
        io(&mut d, 0x3F9, true, 0);
        assert_eq!(io(&mut d, 0x3F9, true, 0x02).1, None);
        assert!(!d.uart.interrupt_line());
        // OUT2: the pending THR empty raises the line.
        assert_eq!(io(&mut d, 0x3FC, true, 0x0B).1, fired);
        // The handler reads IIR (the line falls), sends a byte (it rises).
        assert_eq!(io(&mut d, 0x3FA, false, 0), (IoEffect::Done(0x02), None));
        assert_eq!(
            io(&mut d, 0x3F8, true, b'x' as u32),
            (IoEffect::Output(b'x'), fired)
        );
        // The next byte while the line is up: no new edge.
        assert_eq!(io(&mut d, 0x3F8, true, b'y' as u32).1, None);
        assert_eq!(io(&mut d, 0x3FA, false, 0).1, None);
        // Nothing more to send: THR empty off.
        io(&mut d, 0x3F9, true, 0x01);
        // A typed byte raises it; reading it drops it.
        assert!(d.uart.receive(b'k'));
        assert_eq!(d.serial_interrupt(), fired);
        assert_eq!(io(&mut d, 0x3FA, false, 0).0, IoEffect::Done(0x04));
        assert_eq!(
            io(&mut d, 0x3F8, false, 0),
            (IoEffect::Done(b'k' as u32), None)
        );
        assert!(!d.uart.interrupt_line());
        // An overrun with the line-status interrupt: 0x06 first, LSR clears it.
        io(&mut d, 0x3F9, true, 0x05);
        for i in 0..17 {
            d.uart.receive(i);
        }
        assert_eq!(d.serial_interrupt(), fired);
        assert_eq!(io(&mut d, 0x3FA, false, 0).0, IoEffect::Done(0x06));
        assert_eq!(io(&mut d, 0x3FD, false, 0).0, IoEffect::Done(0x63));
        assert_eq!(io(&mut d, 0x3FA, false, 0).0, IoEffect::Done(0x04));
    }

    #[test]
    fn the_uart_and_ports() {
        let mut u = Devices::default();
        assert_eq!(
            emulate_io(&mut u, 0x3F8, 1, true, b'h' as u32, 0),
            IoEffect::Output(b'h')
        );
        assert_eq!(
            emulate_io(&mut u, 0x3FD, 1, false, 0, 0),
            IoEffect::Done(0x60)
        );
        // DLAB: the divisor, not output.
        emulate_io(&mut u, 0x3FB, 1, true, 0x80, 0);
        assert_eq!(emulate_io(&mut u, 0x3F8, 1, true, 1, 0), IoEffect::Done(0));
        assert_eq!(emulate_io(&mut u, 0x3F8, 1, false, 0, 0), IoEffect::Done(1));
        emulate_io(&mut u, 0x3FB, 1, true, 0x03, 0);
        emulate_io(&mut u, 0x3FF, 1, true, 0x5A, 0);
        assert_eq!(
            emulate_io(&mut u, 0x3FF, 1, false, 0, 0),
            IoEffect::Done(0x5A)
        );
        assert_eq!(emulate_io(&mut u, 0xF4, 1, true, 3, 0), IoEffect::Exit(3));
        assert_eq!(
            emulate_io(&mut u, 0xF5, 1, true, 0x30, 0),
            IoEffect::Interrupt(0x30)
        );
        assert_eq!(
            emulate_io(&mut u, 0x604, 2, true, 0x2000, 0),
            IoEffect::PowerOff
        );
        assert_eq!(
            emulate_io(&mut u, 0x2F8, 1, false, 0, 0),
            IoEffect::Unhandled
        );
        assert_eq!(
            emulate_io(&mut u, 0xF6, 4, true, 0x12_3456, 0),
            IoEffect::UnmapPage(0x12_3000)
        );
        assert_eq!(
            emulate_io(&mut u, 0xF6, 1, true, 0x12_3456, 0),
            IoEffect::Unhandled,
            "a 32-bit write only"
        );
        let mut c = Console::<4>::new();
        for b in b"abcdef" {
            c.push(*b);
        }
        let (a, b) = c.contents();
        assert_eq!([a, b].concat(), b"cdef");
        assert_eq!(c.total, 6);
        // "cdef" is kept across the wrap ("ef" | "cd").
        let has = |t: &[u8]| c.contains_since(t, 0);
        assert!(has(b"cdef") && has(b"de") && has(b""));
        assert!(!has(b"bc") && !has(b"cdefg") && !has(b"fc"));
        // After 4 bytes were seen, "ef" (pushed later) is new, "cd" not.
        assert!(c.contains_since(b"ef", 4) && c.contains_since(b"de", 4));
        assert!(!c.contains_since(b"cd", 4) && !c.contains_since(b"ef", 6));
        // THR-empty interrupt: pending once enabled and after each byte,
        // cleared by reading IIR.
        emulate_io(&mut u, 0x3F9, 1, true, 0x02, 0);
        assert_eq!(
            emulate_io(&mut u, 0x3FA, 1, false, 0, 0),
            IoEffect::Done(0x02)
        );
        assert_eq!(
            emulate_io(&mut u, 0x3FA, 1, false, 0, 0),
            IoEffect::Done(0x01)
        );
        emulate_io(&mut u, 0x3F8, 1, true, b'x' as u32, 0);
        assert_eq!(
            emulate_io(&mut u, 0x3FA, 1, false, 0, 0),
            IoEffect::Done(0x02)
        );
        emulate_io(&mut u, 0x3F9, 1, true, 0, 0);
        // Received bytes: data ready, the RX interrupt before THRE, in order.
        emulate_io(&mut u, 0x3F9, 1, true, 0x03, 0);
        assert!(u.uart.receive(b'a') && u.uart.receive(b'b'));
        assert_eq!(
            emulate_io(&mut u, 0x3FD, 1, false, 0, 0),
            IoEffect::Done(0x61)
        );
        assert_eq!(
            emulate_io(&mut u, 0x3FA, 1, false, 0, 0),
            IoEffect::Done(0x04)
        );
        assert_eq!(
            emulate_io(&mut u, 0x3F8, 1, false, 0, 0),
            IoEffect::Done(b'a' as u32)
        );
        assert_eq!(
            emulate_io(&mut u, 0x3F8, 1, false, 0, 0),
            IoEffect::Done(b'b' as u32)
        );
        assert_eq!(
            emulate_io(&mut u, 0x3FD, 1, false, 0, 0),
            IoEffect::Done(0x60)
        );
        for i in 0..16 {
            assert!(u.uart.receive(i));
        }
        assert!(!u.uart.receive(99), "full: lost");
        assert_eq!(
            emulate_io(&mut u, 0x3FD, 1, false, 0, 0),
            IoEffect::Done(0x63),
            "overrun"
        );
        for i in 0..16 {
            assert_eq!(emulate_io(&mut u, 0x3F8, 1, false, 0, 0), IoEffect::Done(i));
        }
        emulate_io(&mut u, 0x3F9, 1, true, 0, 0);
        // Hardware-reduced ACPI sleep to S5, and the reset paths.
        assert_eq!(
            emulate_io(&mut u, 0x600, 1, true, 0x34, 0),
            IoEffect::PowerOff
        );
        assert_eq!(
            emulate_io(&mut u, 0x600, 1, true, 0x14, 0),
            IoEffect::Done(0)
        );
        assert_eq!(emulate_io(&mut u, 0xCF9, 1, true, 0x06, 0), IoEffect::Reset);
        assert_eq!(
            emulate_io(&mut u, 0xCF9, 1, true, 0x02, 0),
            IoEffect::Unhandled
        );
        assert_eq!(emulate_io(&mut u, 0x92, 1, true, 0x01, 0), IoEffect::Reset);
        assert_eq!(emulate_io(&mut u, 0x64, 1, true, 0xFE, 0), IoEffect::Reset);
        assert_eq!(
            emulate_io(&mut u, 0x80, 1, true, 0x12, 0),
            IoEffect::Done(0)
        );
        emulate_io(&mut u, 0x70, 1, true, 0x09, 0);
        assert_eq!(
            emulate_io(&mut u, 0x71, 1, false, 0, 1_796_020_116),
            IoEffect::Done(0x26)
        );
    }

    proptest::proptest! {
        /// Any bytes as an image: refused or accepted, never a panic; what
        /// is accepted lies inside the VM's memory and the file.
        #[test]
        fn any_image(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600), elf in proptest::prelude::any::<bool>()) {
            let mut b = bytes;
            if elf && b.len() >= 20 {
                b[..4].copy_from_slice(b"\x7FELF");
                b[5] = 1;
            }
            let memory = 8 << 20;
            if let Ok(img) = parse_image(&b, memory) {
                for s in &img.segments[..img.segment_count] {
                    proptest::prop_assert!(s.gpa + s.mem_bytes <= memory.max(0x8_0000));
                    proptest::prop_assert!(s.offset + s.file_bytes <= b.len() as u64);
                }
            }
        }

        /// Random takes and gives back: the pool never hands out a byte twice
        /// and ends whole.
        #[test]
        fn pool_takes_and_returns(sizes in proptest::collection::vec(1u64..64, 1..20)) {
            let mut p = MemoryPool::<16>::new();
            p.add(0x10_0000, 0x110_0000);
            let total = p.free_bytes();
            let mut taken: std::vec::Vec<(u64, u64)> = std::vec::Vec::new();
            for s in sizes {
                if let Some(at) = p.take(s * PAGE) {
                    for &(a, n) in &taken {
                        proptest::prop_assert!(at + s * PAGE <= a || a + n <= at);
                    }
                    taken.push((at, s * PAGE));
                }
            }
            for (a, n) in taken {
                proptest::prop_assert!(p.add(a, a + n));
            }
            proptest::prop_assert_eq!(p.free_bytes(), total);
        }
    }
}
