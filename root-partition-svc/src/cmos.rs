//! The CMOS real-time clock (MC146818) as a guest sees it at ports 0x70
//! (index) and 0x71 (data): the time the root read from the host's clock,
//! advanced with the TSC, in BCD and 24-hour mode; status A never shows an
//! update in progress, so a guest's wait for the end of one never spins.
//! Also the conversions between calendar dates and Unix seconds (the
//! proleptic Gregorian calendar, UTC).

pub const INDEX_PORT: u16 = 0x70;
pub const DATA_PORT: u16 = 0x71;

/// Register indexes.
pub mod reg {
    pub const SECONDS: u8 = 0;
    pub const MINUTES: u8 = 2;
    pub const HOURS: u8 = 4;
    pub const WEEKDAY: u8 = 6;
    pub const DAY: u8 = 7;
    pub const MONTH: u8 = 8;
    pub const YEAR: u8 = 9;
    pub const STATUS_A: u8 = 0xA;
    pub const STATUS_B: u8 = 0xB;
    pub const STATUS_C: u8 = 0xC;
    pub const STATUS_D: u8 = 0xD;
    pub const CENTURY: u8 = 0x32;
}

/// Status B: 24-hour mode (bit 1); bit 2 (binary) clear: BCD.
const STATUS_B_24H: u8 = 1 << 1;
const STATUS_B_BINARY: u8 = 1 << 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl DateTime {
    pub fn to_unix(&self) -> u64 {
        let days = days_from_civil(self.year as i64, self.month as i64, self.day as i64);
        (days * 86_400 + self.hour as i64 * 3600 + self.minute as i64 * 60 + self.second as i64)
            .max(0) as u64
    }

    pub fn from_unix(t: u64) -> Self {
        let days = (t / 86_400) as i64 + 719_468;
        let secs = t % 86_400;
        let era = days.div_euclid(146_097);
        let doe = days - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + if month <= 2 { 1 } else { 0 }) as u32;
        DateTime {
            year,
            month,
            day,
            hour: (secs / 3600) as u8,
            minute: (secs / 60 % 60) as u8,
            second: (secs % 60) as u8,
        }
    }

    /// From the registers of a real RTC, BCD or binary as status B says
    /// (24-hour mode assumed; a 12-hour clock's PM bit is honoured).
    pub fn from_registers(mut read: impl FnMut(u8) -> u8) -> Self {
        let b = read(reg::STATUS_B);
        let v = |x: u8| {
            if b & STATUS_B_BINARY != 0 {
                x
            } else {
                (x >> 4) * 10 + (x & 15)
            }
        };
        let raw_hour = read(reg::HOURS);
        let mut hour = v(raw_hour & 0x7F);
        if b & STATUS_B_24H == 0 && raw_hour & 0x80 != 0 {
            hour = (hour % 12) + 12;
        }
        let century = match v(read(reg::CENTURY)) {
            19..=29 => v(read(reg::CENTURY)) as u32,
            _ => 20,
        };
        DateTime {
            year: century * 100 + v(read(reg::YEAR)) as u32,
            month: v(read(reg::MONTH)),
            day: v(read(reg::DAY)),
            hour,
            minute: v(read(reg::MINUTES)),
            second: v(read(reg::SECONDS)),
        }
    }
}

fn bcd(x: u32) -> u8 {
    (((x / 10 % 10) << 4) | (x % 10)) as u8
}

/// One VM's CMOS: the selected index and 128 bytes of RAM; the clock
/// registers are computed from the time at each read.
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl Cmos {
    pub const fn new() -> Self {
        let mut ram = [0u8; 128];
        ram[reg::STATUS_A as usize] = 0x26; // 32.768 kHz base, 1024 Hz rate
        ram[reg::STATUS_B as usize] = STATUS_B_24H;
        ram[reg::STATUS_D as usize] = 0x80; // valid RAM and time
        Cmos { index: 0, ram }
    }

    pub fn write(&mut self, port: u16, v: u8) {
        match port {
            // Bit 7 masks NMIs on a PC: nothing to mask here.
            INDEX_PORT => self.index = v & 0x7F,
            _ => match self.index {
                // The guest's clock is the host's: setting it is ignored.
                reg::SECONDS..=reg::YEAR | reg::CENTURY => {}
                reg::STATUS_A => self.ram[10] = (self.ram[10] & 0x80) | (v & 0x7F),
                // 24-hour BCD stays (what `read` produces); interrupt
                // enables are kept but never fire.
                reg::STATUS_B => self.ram[11] = (v & !STATUS_B_BINARY) | STATUS_B_24H,
                reg::STATUS_C | reg::STATUS_D => {}
                i => self.ram[i as usize] = v,
            },
        }
    }

    /// A read of `port` at Unix time `now`.
    pub fn read(&self, port: u16, now: u64) -> u8 {
        if port == INDEX_PORT {
            return 0xFF;
        }
        let t = DateTime::from_unix(now);
        match self.index {
            reg::SECONDS => bcd(t.second as u32),
            reg::MINUTES => bcd(t.minute as u32),
            reg::HOURS => bcd(t.hour as u32),
            // Sunday = 1; 1970-01-01 was a Thursday.
            reg::WEEKDAY => bcd(((now / 86_400 + 4) % 7 + 1) as u32),
            reg::DAY => bcd(t.day as u32),
            reg::MONTH => bcd(t.month as u32),
            reg::YEAR => bcd(t.year % 100),
            reg::CENTURY => bcd(t.year / 100),
            // Never an update in progress (bit 7 clear).
            reg::STATUS_A => self.ram[10] & 0x7F,
            reg::STATUS_C => 0,
            i => self.ram[i as usize],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_unix_seconds() {
        let d = DateTime::from_unix(1_796_020_116); // 2026-11-30 06:28:36 UTC
        assert_eq!(
            d,
            DateTime {
                year: 2026,
                month: 11,
                day: 30,
                hour: 6,
                minute: 28,
                second: 36
            }
        );
        assert_eq!(d.to_unix(), 1_796_020_116);
        assert_eq!(DateTime::from_unix(951_782_400).month, 2); // 2000-02-29
        assert_eq!(DateTime::from_unix(951_782_400).day, 29);
    }

    #[test]
    fn the_guest_reads_bcd_time_and_never_an_update() {
        let mut c = Cmos::new();
        let now = 1_796_020_116;
        let mut get = |i: u8| {
            c.write(INDEX_PORT, i | 0x80);
            c.read(DATA_PORT, now)
        };
        assert_eq!(get(reg::SECONDS), 0x36);
        assert_eq!(get(reg::HOURS), 0x06);
        assert_eq!(get(reg::YEAR), 0x26);
        assert_eq!(get(reg::CENTURY), 0x20);
        assert_eq!(get(reg::STATUS_A) & 0x80, 0);
        assert_eq!(get(reg::WEEKDAY), 2, "a Monday");
        let back = DateTime::from_registers(|i| {
            c.write(INDEX_PORT, i);
            c.read(DATA_PORT, now)
        });
        assert_eq!(back.to_unix(), now);
        c.write(INDEX_PORT, 0x20);
        c.write(DATA_PORT, 0x5A);
        assert_eq!(c.read(DATA_PORT, now), 0x5A, "CMOS RAM keeps bytes");
    }

    proptest::proptest! {
        #[test]
        fn round_trips(t in 0u64..8_000_000_000) {
            proptest::prop_assert_eq!(DateTime::from_unix(t).to_unix(), t);
        }
    }
}
