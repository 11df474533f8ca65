//! The hypervisor's command line: space-separated words.
//!
//! `log=error|warn|info|debug|trace` sets the log level; `poweroff` powers the
//! machine off once boot completes; `apic=xapic` keeps the local APIC in xAPIC
//! mode even where x2APIC exists; `selftest=page-fault|stack-overflow` makes the
//! hypervisor fault on purpose, to prove the exception path in tests. Unknown
//! words are reported, not fatal: a typo must not stop a server from booting.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfTest {
    PageFault,
    StackOverflow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options<'a> {
    pub log_level: LogLevel,
    pub poweroff: bool,
    pub force_xapic: bool,
    pub selftest: Option<SelfTest>,
    /// The first word not understood, to report once logging is up.
    pub unknown: Option<&'a str>,
}

impl<'a> Options<'a> {
    pub fn parse(cmdline: &'a str) -> Self {
        let mut o = Options {
            log_level: LogLevel::Info,
            poweroff: false,
            force_xapic: false,
            selftest: None,
            unknown: None,
        };
        // Multiboot loaders put the kernel's own path first: skip it.
        let mut words = cmdline.split_ascii_whitespace().peekable();
        if words
            .peek()
            .is_some_and(|w| w.contains('/') && !w.contains('='))
        {
            words.next();
        }
        for word in words {
            let ok = match word.split_once('=') {
                None if word == "poweroff" => {
                    o.poweroff = true;
                    true
                }
                Some(("log", v)) => match v {
                    "error" => Some(LogLevel::Error),
                    "warn" => Some(LogLevel::Warn),
                    "info" => Some(LogLevel::Info),
                    "debug" => Some(LogLevel::Debug),
                    "trace" => Some(LogLevel::Trace),
                    _ => None,
                }
                .map(|l| o.log_level = l)
                .is_some(),
                Some(("apic", "xapic")) => {
                    o.force_xapic = true;
                    true
                }
                Some(("apic", "x2apic")) => true,
                Some(("selftest", v)) => match v {
                    "page-fault" => Some(SelfTest::PageFault),
                    "stack-overflow" => Some(SelfTest::StackOverflow),
                    _ => None,
                }
                .map(|t| o.selftest = Some(t))
                .is_some(),
                _ => false,
            };
            if !ok && o.unknown.is_none() {
                o.unknown = Some(word);
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        let o = Options::parse(
            "/boot/hypervisor  log=debug poweroff apic=xapic selftest=stack-overflow ",
        );
        assert_eq!(o.log_level, LogLevel::Debug);
        assert!(o.poweroff && o.force_xapic);
        assert_eq!(o.selftest, Some(SelfTest::StackOverflow));
        assert_eq!(o.unknown, None);
    }

    #[test]
    fn defaults_and_unknown_words() {
        let o = Options::parse("");
        assert_eq!(
            (o.log_level, o.poweroff, o.force_xapic, o.selftest),
            (LogLevel::Info, false, false, None)
        );
        let o = Options::parse("log=loud poweroff bogus");
        assert_eq!(o.log_level, LogLevel::Info);
        assert!(o.poweroff);
        assert_eq!(o.unknown, Some("log=loud"));
        // A path anywhere but first is not the loader's kernel path.
        assert_eq!(Options::parse("poweroff /x/y").unknown, Some("/x/y"));
    }
}
