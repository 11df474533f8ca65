//! The I/O APIC a guest finds at [`BASE`], emulated by the VM's worker as
//! Hyper-V's worker process does: the hypervisor only delivers the
//! interrupts it asks for (AssertVirtualInterrupt). Its one source today is
//! COM1 on pin 4, so that a guest's serial driver runs on interrupts
//! instead of polling the UART from a timer, and an idle guest sleeps.
//!
//! The register model is the 82093AA's (version 0x11, 24 redirection
//! entries): an index register at offset 0x00 (IOREGSEL) selects what the
//! data window at 0x10 (IOWIN) reads and writes: the ID (0x00), the version
//! (0x01), the arbitration ID (0x02) and two 32-bit halves per redirection
//! entry (0x10 + 2n, 0x11 + 2n). Accesses are 32 bits wide.
//!
//! What is offered, as the guest's FADT promises (physical destination
//! mode): edge-triggered entries, fixed or lowest-priority delivery,
//! physical destinations (an APIC ID, which is the VP index, or 0xFF for
//! all). An entry that asks for more (logical destination, level trigger,
//! SMI, NMI, INIT or ExtINT delivery, a vector below 16) is kept as written,
//! but its interrupts are refused with the reason, for the worker to report.

/// Guest-physical base of the register page (the MADT gives it).
pub const BASE: u64 = 0xFEC0_0000;
/// The register page's size.
pub const SIZE: u64 = 0x1000;
/// Redirection entries (pins); GSI n is pin n.
pub const PINS: usize = 24;
/// The 82093AA's version: no EOI register (that came with 0x20).
pub const VERSION: u32 = 0x11;
/// The pin COM1's interrupt (ISA IRQ 4) arrives on.
pub const COM1_PIN: usize = 4;

/// The register-select and window registers' offsets in the page (a
/// register is read or written through IOWIN after its index goes to
/// IOREGSEL); the same on the machine's I/O APIC the root programs.
pub const IOREGSEL: u64 = 0x00;
pub const IOWIN: u64 = 0x10;

/// Redirection entry bits (82093AA datasheet, section 3.2.4).
mod entry {
    pub const VECTOR: u64 = 0xFF;
    pub const DELIVERY_MODE_SHIFT: u64 = 8;
    pub const LOGICAL: u64 = 1 << 11;
    pub const ACTIVE_LOW: u64 = 1 << 13;
    pub const LEVEL: u64 = 1 << 15;
    pub const MASKED: u64 = 1 << 16;
    /// What a guest can write: vector, delivery and destination mode,
    /// polarity, trigger mode, mask, destination. Delivery status (bit 12)
    /// and remote IRR (bit 14) read 0: an edge is delivered at once.
    pub const WRITABLE: u64 = 0xFF00_0000_0000_0000 | 0x1_AFFF;
    pub const DEST_SHIFT: u64 = 56;
}

/// Where an interrupt goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The VP whose APIC ID (= VP index) this is.
    Vp(u32),
    /// Every VP (physical destination 0xFF, fixed delivery).
    All,
}

/// An interrupt to assert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub vector: u8,
    pub destination: Destination,
}

/// Why an edge on an unmasked pin was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    LogicalDestination,
    LevelTriggered,
    /// A delivery mode other than fixed (0) or lowest priority (1).
    DeliveryMode(u8),
    /// Vectors 0-15 are exceptions.
    Vector(u8),
}

impl core::fmt::Display for Refused {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            Refused::LogicalDestination => {
                f.write_str("logical destination mode is not offered (the FADT asks for physical)")
            }
            Refused::LevelTriggered => f.write_str("level-triggered entries are not offered"),
            Refused::DeliveryMode(m) => write!(f, "delivery mode {m} is not offered"),
            Refused::Vector(v) => write!(f, "vector {v} is an exception vector"),
        }
    }
}

#[derive(Clone)]
pub struct IoApic {
    id: u8,
    select: u8,
    redirection: [u64; PINS],
    /// Each pin's input line, high or low (bit n: pin n).
    lines: u32,
}

impl Default for IoApic {
    fn default() -> Self {
        Self::new()
    }
}

impl IoApic {
    /// As after reset: every entry masked, every line low, ID 0.
    pub const fn new() -> Self {
        IoApic {
            id: 0,
            select: 0,
            redirection: [entry::MASKED; PINS],
            lines: 0,
        }
    }

    /// Whether `gpa` is in the register page.
    pub fn contains(gpa: u64) -> bool {
        (BASE..BASE + SIZE).contains(&gpa)
    }

    /// A 32-bit read at `offset` in the register page.
    pub fn read(&self, offset: u64) -> u32 {
        match offset {
            IOREGSEL => u32::from(self.select),
            IOWIN => self.register(self.select),
            _ => 0,
        }
    }

    /// A 32-bit write at `offset` in the register page.
    pub fn write(&mut self, offset: u64, value: u32) {
        match offset {
            IOREGSEL => self.select = value as u8,
            IOWIN => self.set_register(self.select, value),
            _ => {}
        }
    }

    /// Redirection entry `pin`, whole.
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.redirection.get(pin).copied()
    }

    fn register(&self, index: u8) -> u32 {
        match index {
            // ID and arbitration ID.
            0x00 | 0x02 => u32::from(self.id) << 24,
            0x01 => ((PINS as u32 - 1) << 16) | VERSION,
            _ => match redirection_half(index) {
                Some((pin, false)) => self.redirection[pin] as u32,
                Some((pin, true)) => (self.redirection[pin] >> 32) as u32,
                None => 0,
            },
        }
    }

    fn set_register(&mut self, index: u8, value: u32) {
        match index {
            0x00 => self.id = (value >> 24) as u8 & 0x0F,
            _ => {
                let Some((pin, high)) = redirection_half(index) else {
                    return; // version, arbitration and the rest: read-only
                };
                let e = &mut self.redirection[pin];
                let merged = if high {
                    (*e & 0xFFFF_FFFF) | (u64::from(value) << 32)
                } else {
                    (*e & !0xFFFF_FFFF) | u64::from(value)
                };
                *e = merged & entry::WRITABLE;
            }
        }
    }

    /// The input line of `pin` is now `high`. An edge into the entry's
    /// active polarity on an unmasked pin is an interrupt: delivered, or
    /// refused if the entry asks for what is not offered. `None`: no
    /// interrupt (no edge, masked, or no such pin).
    pub fn set_line(&mut self, pin: usize, high: bool) -> Option<Result<Delivery, Refused>> {
        let e = *self.redirection.get(pin)?;
        let bit = 1u32 << pin;
        let was = self.lines & bit != 0;
        self.lines = (self.lines & !bit) | (u32::from(high) << pin);
        let active_low = e & entry::ACTIVE_LOW != 0;
        let edge = (was ^ active_low, high ^ active_low) == (false, true);
        if !edge || e & entry::MASKED != 0 {
            return None;
        }
        Some(delivery(e))
    }
}

/// The redirection entry the root writes into the machine's own I/O APIC
/// for one of its devices: fixed delivery of `vector` to the processor with
/// physical APIC ID `dest`, edge-triggered, unmasked (`masked`: the same,
/// masked, written first while the entry changes).
pub fn device_entry(vector: u8, dest: u8, active_low: bool, masked: bool) -> u64 {
    u64::from(vector)
        | if active_low { entry::ACTIVE_LOW } else { 0 }
        | if masked { entry::MASKED } else { 0 }
        | u64::from(dest) << entry::DEST_SHIFT
}

/// The register index of redirection entry `pin`'s low half (the high
/// half's is one more).
pub fn redirection_register(pin: u32) -> u32 {
    0x10 + 2 * pin
}

/// The redirection entry and half (`true`: bits 63:32) register `index`
/// names.
fn redirection_half(index: u8) -> Option<(usize, bool)> {
    let n = usize::from(index.checked_sub(0x10)?);
    (n < 2 * PINS).then_some((n / 2, n % 2 == 1))
}

fn delivery(e: u64) -> Result<Delivery, Refused> {
    let vector = (e & entry::VECTOR) as u8;
    let mode = ((e >> entry::DELIVERY_MODE_SHIFT) & 7) as u8;
    if e & entry::LOGICAL != 0 {
        return Err(Refused::LogicalDestination);
    }
    if e & entry::LEVEL != 0 {
        return Err(Refused::LevelTriggered);
    }
    if mode > 1 {
        return Err(Refused::DeliveryMode(mode));
    }
    if vector < 16 {
        return Err(Refused::Vector(vector));
    }
    let dest = (e >> entry::DEST_SHIFT) as u8;
    let destination = match (dest, mode) {
        (0xFF, 0) => Destination::All,
        // Lowest priority among all: one VP takes it.
        (0xFF, _) => Destination::Vp(0),
        (id, _) => Destination::Vp(u32::from(id)),
    };
    Ok(Delivery {
        vector,
        destination,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn program(io: &mut IoApic, pin: usize, e: u64) {
        io.write(IOREGSEL, 0x10 + 2 * pin as u32);
        io.write(IOWIN, e as u32);
        io.write(IOREGSEL, 0x11 + 2 * pin as u32);
        io.write(IOWIN, (e >> 32) as u32);
    }

    fn read_register(io: &IoApic, index: u32) -> u32 {
        let mut io2 = io.clone();
        io2.write(IOREGSEL, index);
        io2.read(IOWIN)
    }

    #[test]
    fn a_device_entry_is_a_fixed_edge_delivery_to_its_destination() {
        let mut io = IoApic::new();
        let pin = redirection_register(4);
        assert_eq!(pin, 0x18);
        let e = device_entry(0x50, 3, false, false);
        program(&mut io, 4, e);
        assert_eq!(
            io.set_line(4, true),
            Some(Ok(Delivery {
                vector: 0x50,
                destination: Destination::Vp(3)
            }))
        );
        program(&mut io, 5, device_entry(0x51, 0, true, true));
        assert_eq!(io.set_line(5, false), None, "masked");
        program(&mut io, 5, device_entry(0x51, 0, true, false));
        io.set_line(5, true);
        assert_eq!(
            io.set_line(5, false).map(|d| d.map(|d| d.vector)),
            Some(Ok(0x51)),
            "active low: the falling edge"
        );
    }

    #[test]
    fn identification_registers() {
        let mut io = IoApic::new();
        assert_eq!(
            read_register(&io, 1),
            0x0017_0011,
            "24 entries, version 0x11"
        );
        io.write(IOREGSEL, 0);
        io.write(IOWIN, 0x0300_0000);
        assert_eq!(io.read(IOWIN), 0x0300_0000);
        assert_eq!(read_register(&io, 2), 0x0300_0000, "arbitration ID");
        assert_eq!(io.read(IOREGSEL), 0);
        // Version is read-only; unknown registers read 0.
        io.write(IOREGSEL, 1);
        io.write(IOWIN, 0);
        assert_eq!(io.read(IOWIN), 0x0017_0011);
        assert_eq!(read_register(&io, 0x40), 0);
        assert_eq!(io.read(0x20), 0);
    }

    #[test]
    fn entries_start_masked_and_keep_what_is_writable() {
        let mut io = IoApic::new();
        for pin in 0..PINS {
            assert_eq!(io.entry(pin), Some(entry::MASKED));
        }
        program(&mut io, 4, u64::MAX);
        assert_eq!(io.entry(4), Some(entry::WRITABLE));
        assert_eq!(read_register(&io, 0x18) & (1 << 12 | 1 << 14), 0);
        assert_eq!(io.entry(PINS), None);
    }

    #[test]
    fn an_edge_on_an_unmasked_pin_is_delivered_once() {
        let mut io = IoApic::new();
        // Masked: the edge is lost, as on the chip.
        assert_eq!(io.set_line(4, true), None);
        assert_eq!(io.set_line(4, false), None);
        program(&mut io, 4, 0x0100_0000_0000_0000 | 0x31);
        assert_eq!(
            io.set_line(4, true),
            Some(Ok(Delivery {
                vector: 0x31,
                destination: Destination::Vp(1)
            }))
        );
        // Still high: no new edge.
        assert_eq!(io.set_line(4, true), None);
        assert_eq!(io.set_line(4, false), None);
        assert!(io.set_line(4, true).is_some());
        // A line high when the entry is unmasked gives nothing until it
        // falls and rises again.
        program(&mut io, 5, entry::MASKED | 0x40);
        assert_eq!(io.set_line(5, true), None);
        program(&mut io, 5, 0x40);
        assert_eq!(io.set_line(5, true), None);
        assert_eq!(io.set_line(5, false), None);
        assert!(io.set_line(5, true).is_some());
        assert_eq!(io.set_line(PINS, true), None);
    }

    #[test]
    fn active_low_entries_fire_on_the_falling_edge() {
        let mut io = IoApic::new();
        program(&mut io, 2, entry::ACTIVE_LOW | 0x50);
        // The line starts low: that is already active, no edge.
        assert_eq!(io.set_line(2, false), None);
        assert_eq!(io.set_line(2, true), None);
        assert!(io.set_line(2, false).is_some());
    }

    #[test]
    fn what_is_not_offered_is_refused_with_its_reason() {
        let fire = |e: u64| {
            let mut io = IoApic::new();
            program(&mut io, 4, e);
            io.set_line(4, true).expect("an edge")
        };
        assert_eq!(
            fire(entry::LOGICAL | 0x30),
            Err(Refused::LogicalDestination)
        );
        assert_eq!(fire(entry::LEVEL | 0x30), Err(Refused::LevelTriggered));
        assert_eq!(fire(4 << 8 | 0x30), Err(Refused::DeliveryMode(4)));
        assert_eq!(fire(7 << 8), Err(Refused::DeliveryMode(7)));
        assert_eq!(fire(0x0F), Err(Refused::Vector(15)));
        assert_eq!(
            fire(0xFF00_0000_0000_0000 | 0x30),
            Ok(Delivery {
                vector: 0x30,
                destination: Destination::All
            })
        );
        assert_eq!(
            fire(0xFF00_0000_0000_0000 | 1 << 8 | 0x30),
            Ok(Delivery {
                vector: 0x30,
                destination: Destination::Vp(0)
            })
        );
    }

    proptest! {
        /// Any register traffic, then any line changes: nothing panics, an
        /// entry keeps only writable bits, and an interrupt comes only from a
        /// rising edge on an unmasked pin, with the entry's vector.
        #[test]
        fn any_register_and_line_traffic(
            writes in proptest::collection::vec((0u64..0x50, any::<u32>()), 0..64),
            lines in proptest::collection::vec((0usize..PINS + 2, any::<bool>()), 0..64),
        ) {
            let mut io = IoApic::new();
            for (offset, value) in writes {
                io.write(offset & !3, value);
                let _ = io.read(offset & !3);
            }
            for pin in 0..PINS {
                prop_assert_eq!(io.entry(pin).unwrap() & !entry::WRITABLE, 0);
            }
            for (pin, high) in lines {
                let before = (pin < PINS).then(|| io.lines >> pin & 1 == 1);
                let e = io.entry(pin);
                let got = io.set_line(pin, high);
                if let (Some(r), Some(e), Some(was)) = (got, e, before) {
                    let low = e & entry::ACTIVE_LOW != 0;
                    prop_assert!(!(was ^ low) && (high ^ low));
                    prop_assert_eq!(e & entry::MASKED, 0);
                    if let Ok(d) = r {
                        prop_assert_eq!(u64::from(d.vector), e & entry::VECTOR);
                    }
                }
            }
        }
    }
}
