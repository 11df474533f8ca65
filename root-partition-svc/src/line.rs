//! The shell's line editor: echo, backspace, Ctrl-C and Ctrl-U, and line ends
//! that work for typed input (CR) and piped input (LF or CR LF).
//!
//! CR ends a line; an LF right after a CR is the second half of the same line
//! end and is swallowed, so "cmd\r\n" runs `cmd` once and shows one prompt.
//! Escape sequences (arrow keys) are skipped; other control and non-ASCII
//! bytes are ignored.

/// What a byte did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing for the shell (the byte was echoed, edited or ignored).
    None,
    /// A line ended: [`LineEditor::line`] holds it until [`LineEditor::clear`].
    Line,
    /// A line ended that was longer than the buffer: it is dropped.
    Overflow,
    /// Ctrl-C: the line was dropped.
    Interrupt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Escape {
    None,
    /// After ESC.
    Start,
    /// After `ESC [` or `ESC O`: parameters until a final byte.
    Sequence,
}

pub struct LineEditor<const N: usize> {
    buf: [u8; N],
    len: usize,
    overflow: bool,
    after_cr: bool,
    escape: Escape,
}

impl<const N: usize> Default for LineEditor<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> LineEditor<N> {
    pub const fn new() -> Self {
        LineEditor {
            buf: [0; N],
            len: 0,
            overflow: false,
            after_cr: false,
            escape: Escape::None,
        }
    }

    /// Feeds one received byte; `echo` gets the bytes to send back.
    pub fn feed(&mut self, b: u8, echo: &mut dyn FnMut(&[u8])) -> Event {
        let after_cr = core::mem::replace(&mut self.after_cr, false);
        match self.escape {
            Escape::Start => {
                self.escape = if b == b'[' || b == b'O' {
                    Escape::Sequence
                } else {
                    Escape::None
                };
                return Event::None;
            }
            Escape::Sequence => {
                if (0x40..=0x7E).contains(&b) {
                    self.escape = Escape::None;
                }
                return Event::None;
            }
            Escape::None => {}
        }
        match b {
            b'\r' | b'\n' => {
                if b == b'\n' && after_cr {
                    return Event::None;
                }
                self.after_cr = b == b'\r';
                echo(b"\r\n");
                if self.overflow {
                    self.clear();
                    Event::Overflow
                } else {
                    Event::Line
                }
            }
            0x08 | 0x7F => {
                if self.len > 0 && !self.overflow {
                    self.len -= 1;
                    echo(b"\x08 \x08");
                }
                Event::None
            }
            0x03 => {
                echo(b"^C\r\n");
                self.clear();
                Event::Interrupt
            }
            0x15 => {
                if !self.overflow {
                    for _ in 0..self.len {
                        echo(b"\x08 \x08");
                    }
                }
                self.clear();
                Event::None
            }
            0x1B => {
                self.escape = Escape::Start;
                Event::None
            }
            b'\t' | 0x20..=0x7E => {
                let c = if b == b'\t' { b' ' } else { b };
                if self.len < N {
                    self.buf[self.len] = c;
                    self.len += 1;
                    echo(&[c]);
                } else {
                    if !self.overflow {
                        echo(b"\x07");
                    }
                    self.overflow = true;
                }
                Event::None
            }
            _ => Event::None,
        }
    }

    /// The current line (only printable ASCII ever enters the buffer).
    pub fn line(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.overflow = false;
    }

    pub const fn capacity(&self) -> usize {
        N
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    /// Feeds `input`; returns the lines the shell would run (Ok) or the
    /// overflow/interrupt events (Err), and the echo.
    fn run<const N: usize>(input: &[u8]) -> (Vec<Result<String, Event>>, Vec<u8>) {
        let mut ed = LineEditor::<N>::new();
        let mut out = Vec::new();
        let mut echoed = Vec::new();
        for &b in input {
            let ev = ed.feed(b, &mut |e| echoed.extend_from_slice(e));
            match ev {
                Event::None => {}
                Event::Line => {
                    out.push(Ok(String::from(ed.line())));
                    ed.clear();
                }
                e => out.push(Err(e)),
            }
        }
        (out, echoed)
    }

    fn lines(v: &[&str]) -> Vec<Result<String, Event>> {
        v.iter().map(|s| Ok(String::from(*s))).collect()
    }

    #[test]
    fn line_ends() {
        assert_eq!(run::<64>(b"help\n").0, lines(&["help"]));
        assert_eq!(run::<64>(b"help\r").0, lines(&["help"]));
        assert_eq!(
            run::<64>(b"help\r\nhost info\r\n").0,
            lines(&["help", "host info"])
        );
        // An empty line is still a line (the shell prompts again), but CR LF is one.
        assert_eq!(run::<64>(b"\r\n\n").0, lines(&["", ""]));
        assert_eq!(run::<64>(b"a\n\rb\r\r\n").0, lines(&["a", "", "b", ""]));
    }

    #[test]
    fn echo_and_backspace() {
        let (l, echo) = run::<64>(b"hx\x7felp\x08p\r");
        assert_eq!(l, lines(&["help"]));
        assert_eq!(echo, b"hx\x08 \x08elp\x08 \x08p\r\n");
        // Backspace on an empty line echoes nothing.
        assert_eq!(
            run::<64>(b"\x08\x08a\n"),
            (lines(&["a"]), b"a\r\n".to_vec())
        );
    }

    #[test]
    fn control_keys() {
        let (l, _) = run::<64>(b"reb\x03help\n");
        assert_eq!(
            l,
            std::vec![Err(Event::Interrupt), Ok(String::from("help"))]
        );
        let (l, _) = run::<64>(b"reboot\x15help\n");
        assert_eq!(l, lines(&["help"]));
        // Arrow keys and other escape sequences leave no trace.
        let (l, echo) = run::<64>(b"he\x1b[A\x1b[1;5Dlp\x1bOB\n");
        assert_eq!(l, lines(&["help"]));
        assert_eq!(echo, b"help\r\n");
        // Tabs are spaces; other control and non-ASCII bytes are dropped.
        assert_eq!(run::<64>(b"host\tinfo\x01\xff\n").0, lines(&["host info"]));
    }

    #[test]
    fn overflow_drops_the_line() {
        let (l, echo) = run::<4>(b"abcdef\nab\n");
        assert_eq!(l, std::vec![Err(Event::Overflow), Ok(String::from("ab"))]);
        assert_eq!(echo, b"abcd\x07\r\nab\r\n");
    }
}
