//! The `vhd` shell command, in the words of Hyper-V's New-VHD and Get-VHD:
//! `vhd new PATH --size SIZE [--format vhd|vhdx] [--type dynamic|fixed]`
//! and `vhd show PATH`. Paths name files on the root's disk; the format
//! follows the file's extension (`.vhdx`: VHDX) unless `--format` says.
use crate::vhd::Kind;
use core::fmt;

/// A disk image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Vhd,
    Vhdx,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Vhd => "VHD",
            Format::Vhdx => "VHDX",
        }
    }

    /// As New-VHD chooses: by the extension.
    pub fn of_path(path: &str) -> Format {
        match path.rsplit_once('.') {
            Some((_, ext)) if ext.eq_ignore_ascii_case("vhdx") => Format::Vhdx,
            _ => Format::Vhd,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VhdCommand<'a> {
    New {
        path: &'a str,
        size: u64,
        kind: Kind,
        format: Format,
    },
    Show(&'a str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VhdParseError<'a> {
    MissingVerb,
    UnknownVerb(&'a str),
    MissingPath,
    MissingSize,
    BadValue {
        option: &'a str,
        value: &'a str,
        expected: &'static str,
    },
    UnknownOption(&'a str),
    Extra(&'a str),
}

pub const USAGE: &str =
    "vhd new PATH --size SIZE [--format vhd|vhdx] [--type dynamic|fixed] | vhd show PATH";

/// The smallest disk `vhd new` makes.
pub const MIN_SIZE: u64 = 1 << 20;

impl fmt::Display for VhdParseError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VhdParseError::MissingVerb => write!(f, "vhd needs a sub-command; usage: {USAGE}"),
            VhdParseError::UnknownVerb(v) => {
                write!(
                    f,
                    "unknown vhd command \"{}\"; usage: {USAGE}",
                    v.escape_debug()
                )
            }
            VhdParseError::MissingPath => write!(f, "vhd: a file path is missing; usage: {USAGE}"),
            VhdParseError::MissingSize => {
                write!(f, "vhd new needs --size (e.g. --size 8G); usage: {USAGE}")
            }
            VhdParseError::BadValue {
                option,
                value,
                expected,
            } => write!(
                f,
                "vhd: bad {option} \"{}\": {expected}",
                value.escape_debug()
            ),
            VhdParseError::UnknownOption(o) => {
                write!(
                    f,
                    "vhd: unknown option \"{}\"; usage: {USAGE}",
                    o.escape_debug()
                )
            }
            VhdParseError::Extra(a) => write!(
                f,
                "vhd: too many arguments (\"{}\"); usage: {USAGE}",
                a.escape_debug()
            ),
        }
    }
}

/// `512M`, `8G`, `1T`, or bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        b'T' | b't' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1 << shift)
}

/// Parses the words after `vhd`.
pub fn parse<'a>(
    mut words: impl Iterator<Item = &'a str>,
) -> Result<VhdCommand<'a>, VhdParseError<'a>> {
    let verb = words.next().ok_or(VhdParseError::MissingVerb)?;
    if !matches!(verb, "new" | "show") {
        return Err(VhdParseError::UnknownVerb(verb));
    }
    let path = words.next().ok_or(VhdParseError::MissingPath)?;
    if path.starts_with('-') {
        return Err(VhdParseError::MissingPath);
    }
    if verb == "show" {
        return match words.next() {
            Some(a) => Err(VhdParseError::Extra(a)),
            None => Ok(VhdCommand::Show(path)),
        };
    }
    let (mut size, mut kind, mut format) = (None, Kind::Dynamic, Format::of_path(path));
    while let Some(o) = words.next() {
        if !matches!(o, "--size" | "--format" | "--type") {
            return Err(VhdParseError::UnknownOption(o));
        }
        let v = words.next().ok_or(VhdParseError::BadValue {
            option: o,
            value: "",
            expected: "a value is missing",
        })?;
        match o {
            "--size" => {
                size = Some(
                    parse_size(v)
                        .filter(|&b| (MIN_SIZE..=crate::vhdx::MAX_SIZE).contains(&b))
                        .ok_or(VhdParseError::BadValue {
                            option: o,
                            value: v,
                            expected:
                                "a size from 1M to 2040G for a VHD, 64T for a VHDX (e.g. 512M, 8G)",
                        })?,
                )
            }
            "--format" => {
                format = if v.eq_ignore_ascii_case("vhd") {
                    Format::Vhd
                } else if v.eq_ignore_ascii_case("vhdx") {
                    Format::Vhdx
                } else {
                    return Err(VhdParseError::BadValue {
                        option: o,
                        value: v,
                        expected: "vhd or vhdx",
                    });
                }
            }
            _ => {
                kind = match v {
                    "dynamic" => Kind::Dynamic,
                    "fixed" => Kind::Fixed,
                    _ => {
                        return Err(VhdParseError::BadValue {
                            option: o,
                            value: v,
                            expected: "dynamic or fixed",
                        })
                    }
                }
            }
        }
    }
    let size = size.ok_or(VhdParseError::MissingSize)?;
    let max = match format {
        Format::Vhd => crate::vhd::MAX_SIZE,
        Format::Vhdx => crate::vhdx::MAX_SIZE,
    };
    if size > max {
        return Err(VhdParseError::BadValue {
            option: "--size",
            value: "",
            expected: "at most 2040G for a VHD (64T for a VHDX)",
        });
    }
    Ok(VhdCommand::New {
        path,
        size,
        kind,
        format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<VhdCommand<'_>, VhdParseError<'_>> {
        parse(line.split_whitespace())
    }

    #[test]
    fn vhd_commands_parse_and_bad_ones_say_why() {
        assert_eq!(
            p("new /web.vhd --size 8G"),
            Ok(VhdCommand::New {
                path: "/web.vhd",
                size: 8 << 30,
                kind: Kind::Dynamic,
                format: Format::Vhd
            })
        );
        assert_eq!(
            p("new web.vhd --type fixed --format VHD --size 64M"),
            Ok(VhdCommand::New {
                path: "web.vhd",
                size: 64 << 20,
                kind: Kind::Fixed,
                format: Format::Vhd
            })
        );
        assert_eq!(
            p("new web.VHDX --size 3T"),
            Ok(VhdCommand::New {
                path: "web.VHDX",
                size: 3 << 40,
                kind: Kind::Dynamic,
                format: Format::Vhdx
            })
        );
        assert_eq!(
            p("new web.img --size 1G --format vhdx"),
            Ok(VhdCommand::New {
                path: "web.img",
                size: 1 << 30,
                kind: Kind::Dynamic,
                format: Format::Vhdx
            })
        );
        assert_eq!(p("show web.vhd"), Ok(VhdCommand::Show("web.vhd")));
        for (bad, says) in [
            ("", "needs a sub-command"),
            ("make a.vhd", "unknown vhd command"),
            ("new", "path is missing"),
            ("new --size 8G", "path is missing"),
            ("new a.vhd", "needs --size"),
            ("new a.vhd --size 8Q", "bad --size"),
            ("new a.vhd --size 512K", "bad --size"),
            ("new a.vhd --size 3000G", "at most 2040G for a VHD"),
            ("new a.vhdx --size 65T", "bad --size"),
            ("new a.vhd --size 8G --format qcow2", "vhd or vhdx"),
            ("new a.vhd --size 8G --type sparse", "dynamic or fixed"),
            ("new a.vhd --size", "a value is missing"),
            ("new a.vhd --size 8G --fast", "unknown option"),
            ("show a.vhd b.vhd", "too many arguments"),
        ] {
            let e = p(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size("99999999999999999999G"), None);
    }
}
