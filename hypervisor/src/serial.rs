//! The serial console (COM1) and the `log` backend that writes to it.
//!
//! Each line carries a TSC timestamp since boot and the processor index:
//! `[   0.012345] cpu1 INFO  message`.
use crate::{percpu, time};
use core::fmt::Write;
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550};

const COM1: u16 = 0x3F8;

struct Serial(Uart16550<PioBackend>);

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.0.send_bytes_exact(b"\r");
            }
            self.0.send_bytes_exact(&[b]);
        }
        Ok(())
    }
}

fn com1() -> Serial {
    // SAFETY: COM1's eight ports belong to the hypervisor's console.
    Serial(
        unsafe { Uart16550::new_port(COM1) }
            .unwrap_or_else(|_| unreachable!("0x3F8 + 7 fits in a port number")),
    )
}

static CONSOLE: Mutex<Option<Serial>> = Mutex::new(None);

/// Programs COM1 (115200 8N1, FIFO on). A machine without COM1 still boots;
/// its log is lost.
pub fn init() {
    let mut port = com1();
    let _ = port.0.init(Config::default());
    *CONSOLE.lock() = Some(port);
}

/// A writer that takes no lock, for the exception and panic reports: the
/// failing processor may hold the console lock. Lines may interleave with
/// another processor's; they are never lost to a deadlock.
pub fn emergency() -> impl Write {
    com1()
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let us = time::since_boot_us();
        let mut guard = CONSOLE.lock();
        if let Some(out) = guard.as_mut() {
            let _ = writeln!(
                out,
                "[{:>4}.{:06}] cpu{} {:<5} {}",
                us / 1_000_000,
                us % 1_000_000,
                percpu::index(),
                record.level(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

pub fn init_logger(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Writes a line without prefix (the summary line tests look for).
pub fn println(args: core::fmt::Arguments) {
    if let Some(out) = CONSOLE.lock().as_mut() {
        let _ = out.write_fmt(args);
        let _ = out.write_str("\n");
    }
}
