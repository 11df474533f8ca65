//! COM1 (0x3F8): the root owns the port. Its output is written polled; its
//! input is read polled too, woken by the UART's receive interrupt once
//! that is routed (`device_irq`), else by the idle timer.
use crate::arch::{inb, outb};
use core::fmt;

const COM1: u16 = 0x3F8;
const DATA: u16 = COM1;
const IER: u16 = COM1 + 1;
const FCR: u16 = COM1 + 2;
const LCR: u16 = COM1 + 3;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;
const LSR_DATA_READY: u8 = 1;
const LSR_THR_EMPTY: u8 = 1 << 5;

/// Programs COM1 as the hypervisor does: 115200 8N1, FIFOs on, no interrupts.
pub fn init() {
    outb(IER, 0);
    outb(LCR, 0x80);
    outb(DATA, 1); // divisor 1: 115200 baud
    outb(IER, 0);
    outb(LCR, 0x03); // 8N1
    outb(FCR, 0xC7); // FIFOs on and cleared, 14-byte threshold
    outb(MCR, 0x03); // DTR, RTS; OUT2 off: no interrupt line
}

/// Lets received bytes raise COM1's interrupt line: the receive-data
/// interrupt alone, at every byte (FIFO threshold 1), OUT2 on (it gates the
/// line on PC-compatible boards).
pub fn enable_receive_interrupt() {
    outb(FCR, 0x07); // FIFOs on and cleared, 1-byte threshold
    outb(MCR, 0x0B); // DTR, RTS, OUT2
    outb(IER, 0x01); // received data available
}

pub fn write_byte(b: u8) {
    // A missing UART reads 0xFF (transmitter empty): no endless wait.
    let mut spins = 0u32;
    while inb(LSR) & LSR_THR_EMPTY == 0 && spins < 1_000_000 {
        spins += 1;
        core::hint::spin_loop();
    }
    outb(DATA, b);
}

pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        write_byte(b);
    }
}

/// A received byte, if one is waiting.
pub fn try_read() -> Option<u8> {
    let lsr = inb(LSR);
    (lsr != 0xFF && lsr & LSR_DATA_READY != 0).then(|| inb(DATA))
}

/// Writes to COM1, `\n` as `\r\n`. Holds no lock: only VP 0 prints.
pub struct Com1;

impl fmt::Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                write_byte(b'\r');
            }
            write_byte(b);
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::serial::Com1, $($arg)*);
    }};
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::serial::Com1, $($arg)*);
    }};
}
