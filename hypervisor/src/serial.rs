//! The hypervisor's log: COM2 and an in-memory ring the root reads with
//! `GET_HOST_LOG` (`host log`). COM1 is the root's console; the hypervisor
//! writes there only what the operator must see at once: errors, and the
//! reports of an exception or panic that stops the machine.
//!
//! Each line carries a TSC timestamp since boot and the processor index:
//! `[   0.012345] cpu1 INFO  message`.
use crate::{percpu, time};
use core::fmt::Write;
use hypervisor_core::log_ring::LogRing;
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550};

const COM1: u16 = 0x3F8;
const COM2: u16 = 0x2F8;

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

fn port(base: u16) -> Serial {
    // SAFETY: UART registers only: COM2 is the hypervisor's (the root does not
    // use it); COM1 is the root's console, which the hypervisor programs the
    // same way and writes only whole lines for errors. Guests reach neither
    // (every guest port access exits).
    Serial(
        unsafe { Uart16550::new_port(base) }
            .unwrap_or_else(|_| unreachable!("the COM bases + 7 fit in a port number")),
    )
}

/// The log kept in memory (zeros at first: `.bss`, not image bytes).
struct Ring(LogRing<{ 64 * 1024 }>);

impl Write for Ring {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0.push(s.as_bytes());
        Ok(())
    }
}

static RING: Mutex<Ring> = Mutex::new(Ring(LogRing::new()));
/// COM2, if the machine has one: its own lock, so that readers of the ring
/// (GET_HOST_LOG) and other loggers do not wait for the UART's pace.
static COM2_OUT: Mutex<bool> = Mutex::new(false);

/// Writes one piece of the log (formatted twice: into the ring, then out).
fn log_write(args: core::fmt::Arguments) {
    let _ = RING.lock().write_fmt(args);
    let com2 = COM2_OUT.lock();
    if *com2 {
        let _ = port(COM2).write_fmt(args);
    }
}
/// COM1 for the lines the operator must see (errors).
static CONSOLE: Mutex<Option<Serial>> = Mutex::new(None);

/// Programs COM1 and COM2 (115200 8N1, FIFO on). A machine without COM2
/// keeps the log in memory only; without COM1, errors are lost.
pub fn init() {
    let mut com1 = port(COM1);
    let _ = com1.0.init(Config::default());
    *CONSOLE.lock() = Some(com1);
    *COM2_OUT.lock() = port(COM2).0.init(Config::default()).is_ok();
}

/// Both ports at once.
struct Both(Serial, Serial);

impl Write for Both {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let _ = self.0.write_str(s);
        self.1.write_str(s)
    }
}

/// A writer that takes no lock, for the exception and panic reports: the
/// failing processor may hold a console lock. Lines may interleave with
/// another processor's; they are never lost to a deadlock. Both ports: the
/// machine stops, and the operator on COM1 must learn why.
pub fn emergency() -> impl Write {
    Both(port(COM2), port(COM1))
}

/// Copies the log from position `from` into a `HostLogChunk` page.
pub fn read_log(from: u64, page: &mut [u8]) -> bool {
    use hv_abi::HostLogChunk;
    let Some(data) = page.get_mut(HostLogChunk::HEADER..) else {
        return false;
    };
    let room = data.len().min(HostLogChunk::MAX_BYTES);
    let ring = RING.lock();
    let (start, len) = ring.0.read(from, &mut data[..room]);
    let written = ring.0.written();
    drop(ring);
    HostLogChunk::encode_header(start, written, len, page).is_some()
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
        let line = format_args!(
            "[{:>4}.{:06}] cpu{} {:<5} {}\n",
            us / 1_000_000,
            us % 1_000_000,
            percpu::index(),
            record.level(),
            record.args()
        );
        log_write(line);
        if record.level() == log::Level::Error {
            if let Some(out) = CONSOLE.lock().as_mut() {
                let _ = out.write_fmt(line);
            }
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
    log_write(format_args!("{args}\n"));
}
