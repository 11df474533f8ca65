//! Hyper-V's integration services ("integration components", ICs) as a
//! guest's `hv_utils` speaks them over a VMBus channel: heartbeat, shutdown
//! and time synchronization. The host asks, the guest answers by sending the
//! same buffer back with the RESPONSE flag and a status.
//!
//! Every message is a pipe header (`u32 flags` = 1 data, `u32 size`), an
//! IC header (20 bytes: framework version, type, message version, body
//! size, status, transaction id, flags) and the body at byte 28. The first
//! exchange on a channel is a version negotiation: the host lists the
//! framework and message versions it speaks, the guest names one of each.
//! Layouts: Linux `include/linux/hyperv.h` (`icmsg_hdr`, `icmsg_negotiate`,
//! `heartbeat_msg_data`, `shutdown_msg_data`, `ictimesync_ref_data`).
//!
//! The guest is not trusted: replies are parsed from a copy, every length
//! checked, and a bad one is an [`IcError`], never a panic.

/// Pipe header: data.
const PIPE_DATA: u32 = 1;
/// Bytes of the pipe header plus the IC header: where the body starts.
pub const BODY_AT: usize = 28;

/// IC message types.
pub mod kind {
    pub const NEGOTIATE: u16 = 0;
    pub const HEARTBEAT: u16 = 1;
    pub const SHUTDOWN: u16 = 3;
    pub const TIMESYNC: u16 = 4;
}

/// IC header flags.
const FLAG_TRANSACTION: u8 = 1;
const FLAG_REQUEST: u8 = 2;
const FLAG_RESPONSE: u8 = 4;

/// Status codes (HRESULT).
pub const S_OK: u32 = 0;
pub const E_FAIL: u32 = 0x8000_4005;

/// Framework versions we speak, best first.
const FRAMEWORK_VERSIONS: [Version; 2] = [Version(3, 0), Version(1, 0)];

/// `shutdown_msg_data`: reason, timeout, flags, then a 2048-byte message.
const SHUTDOWN_BODY: usize = 12 + 2048;
/// `heartbeat_msg_data`: sequence number and 32 reserved bytes.
const HEARTBEAT_BODY: usize = 40;
/// `ictimesync_ref_data` (version 4): 22 bytes, sent as 24.
const TIMESYNC_BODY: usize = 24;
/// The largest request: a shutdown.
pub const MAX_MESSAGE: usize = BODY_AT + SHUTDOWN_BODY;

/// Windows FILETIME of the Unix epoch (100 ns units since 1601).
const FILETIME_UNIX_EPOCH: u64 = 116_444_736_000_000_000;

/// A major.minor version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version(pub u16, pub u16);

/// The services offered to every VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Heartbeat,
    Shutdown,
    TimeSync,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Heartbeat, Service::Shutdown, Service::TimeSync];

    /// Its name as Hyper-V's Get-VMIntegrationService shows it.
    pub fn name(self) -> &'static str {
        match self {
            Service::Heartbeat => "Heartbeat",
            Service::Shutdown => "Shutdown",
            Service::TimeSync => "Time Synchronization",
        }
    }

    /// Message versions we speak, best first (those Linux 6.1 and Hyper-V
    /// have in common; time sync 4.0 adds the reference-counter sample).
    fn message_versions(self) -> &'static [Version] {
        match self {
            Service::Heartbeat => &[Version(3, 0), Version(1, 0)],
            Service::Shutdown => &[Version(3, 0), Version(1, 0)],
            Service::TimeSync => &[Version(4, 0), Version(3, 0)],
        }
    }
}

/// What is wrong with a guest's reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcError {
    /// Shorter than its headers, or its sizes disagree.
    Truncated,
    /// Not a data pipe message, or not a response.
    NotAResponse,
    /// A response to something we did not ask.
    Unexpected(u16),
    /// The guest answered with a failure status.
    Failed(u32),
    /// The negotiation named no version, or one we did not offer.
    NoCommonVersion,
}

/// A guest's reply, parsed from a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply<'a> {
    pub kind: u16,
    pub status: u32,
    pub transaction: u8,
    pub body: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Writes a request of `kind` with `body` into `out`; its length, or `None`
/// when `out` is too small.
fn request(
    out: &mut [u8],
    kind: u16,
    message_version: Version,
    transaction: u8,
    body: &[u8],
) -> Option<usize> {
    let len = BODY_AT + body.len();
    let out = out.get_mut(..len)?;
    out.fill(0);
    out[0..4].copy_from_slice(&PIPE_DATA.to_le_bytes());
    out[4..8].copy_from_slice(&((len - 8) as u32).to_le_bytes());
    let framework = FRAMEWORK_VERSIONS[0];
    out[8..10].copy_from_slice(&framework.0.to_le_bytes());
    out[10..12].copy_from_slice(&framework.1.to_le_bytes());
    out[12..14].copy_from_slice(&kind.to_le_bytes());
    out[14..16].copy_from_slice(&message_version.0.to_le_bytes());
    out[16..18].copy_from_slice(&message_version.1.to_le_bytes());
    out[18..20].copy_from_slice(&(body.len() as u16).to_le_bytes());
    // status 20..24 zero
    out[24] = transaction;
    out[25] = FLAG_TRANSACTION | FLAG_REQUEST;
    out[BODY_AT..].copy_from_slice(body);
    Some(len)
}

/// The negotiation request for `service`: our framework and message
/// versions. Sent first, as soon as the guest opens the channel.
pub fn negotiate_request(out: &mut [u8], service: Service, transaction: u8) -> Option<usize> {
    let msg = service.message_versions();
    let mut body = [0u8; 8 + 4 * 8];
    body[0..2].copy_from_slice(&(FRAMEWORK_VERSIONS.len() as u16).to_le_bytes());
    body[2..4].copy_from_slice(&(msg.len() as u16).to_le_bytes());
    let mut at = 8;
    for v in FRAMEWORK_VERSIONS.iter().chain(msg) {
        body[at..at + 2].copy_from_slice(&v.0.to_le_bytes());
        body[at + 2..at + 4].copy_from_slice(&v.1.to_le_bytes());
        at += 4;
    }
    request(
        out,
        kind::NEGOTIATE,
        Version(1, 0),
        transaction,
        &body[..at],
    )
}

/// Parses a guest's reply (a packet's payload).
pub fn parse_reply(p: &[u8]) -> Result<Reply<'_>, IcError> {
    if p.len() < BODY_AT {
        return Err(IcError::Truncated);
    }
    if u32_at(p, 0) != PIPE_DATA {
        return Err(IcError::NotAResponse);
    }
    let body_len = usize::from(u16_at(p, 18));
    let body = p
        .get(BODY_AT..BODY_AT + body_len)
        .ok_or(IcError::Truncated)?;
    if p[25] & FLAG_RESPONSE == 0 {
        return Err(IcError::NotAResponse);
    }
    Ok(Reply {
        kind: u16_at(p, 12),
        status: u32_at(p, 20),
        transaction: p[24],
        body,
    })
}

/// The versions a negotiation reply chose: (framework, message), each one
/// we offered for `service`.
pub fn negotiated(service: Service, r: &Reply<'_>) -> Result<(Version, Version), IcError> {
    if r.kind != kind::NEGOTIATE {
        return Err(IcError::Unexpected(r.kind));
    }
    if r.status != S_OK {
        return Err(IcError::Failed(r.status));
    }
    let b = r.body;
    if b.len() < 8 + 8 {
        return Err(IcError::NoCommonVersion);
    }
    if u16_at(b, 0) != 1 || u16_at(b, 2) != 1 {
        return Err(IcError::NoCommonVersion);
    }
    let framework = Version(u16_at(b, 8), u16_at(b, 10));
    let message = Version(u16_at(b, 12), u16_at(b, 14));
    if !FRAMEWORK_VERSIONS.contains(&framework) || !service.message_versions().contains(&message) {
        return Err(IcError::NoCommonVersion);
    }
    Ok((framework, message))
}

/// A heartbeat request with sequence number `seq`; the guest answers
/// `seq + 1`.
pub fn heartbeat_request(
    out: &mut [u8],
    version: Version,
    seq: u64,
    transaction: u8,
) -> Option<usize> {
    let mut body = [0u8; HEARTBEAT_BODY];
    body[..8].copy_from_slice(&seq.to_le_bytes());
    request(out, kind::HEARTBEAT, version, transaction, &body)
}

/// The sequence number of a heartbeat reply.
pub fn heartbeat_reply(r: &Reply<'_>) -> Result<u64, IcError> {
    if r.kind != kind::HEARTBEAT {
        return Err(IcError::Unexpected(r.kind));
    }
    if r.status != S_OK {
        return Err(IcError::Failed(r.status));
    }
    let b = r.body.get(..8).ok_or(IcError::Truncated)?;
    Ok(u64::from_le_bytes(
        b.try_into().map_err(|_| IcError::Truncated)?,
    ))
}

/// Shutdown flags: bit 0 forced, 2 restart instead of power-off.
pub const SHUTDOWN_FORCE: u32 = 1;

/// A shutdown request (power off; `flags` as [`SHUTDOWN_FORCE`]); `out`
/// must hold [`MAX_MESSAGE`] bytes.
pub fn shutdown_request(
    out: &mut [u8],
    version: Version,
    flags: u32,
    transaction: u8,
) -> Option<usize> {
    let mut body = [0u8; SHUTDOWN_BODY];
    // Reason: "planned, other" as Hyper-V's Stop-VM gives it.
    body[0..4].copy_from_slice(&0x8000_0000u32.to_le_bytes());
    body[4..8].copy_from_slice(&0u32.to_le_bytes());
    body[8..12].copy_from_slice(&flags.to_le_bytes());
    let message = b"Shutdown requested by the administrator";
    body[12..12 + message.len()].copy_from_slice(message);
    request(out, kind::SHUTDOWN, version, transaction, &body)
}

/// Time sync flags: step the clock now, or a sample to steer by.
pub const TIMESYNC_SYNC: u8 = 1;
pub const TIMESYNC_SAMPLE: u8 = 2;

/// The host's time (Unix seconds and 100 ns fraction) as FILETIME.
pub fn filetime(unix_seconds: u64, hundred_ns: u64) -> u64 {
    FILETIME_UNIX_EPOCH + unix_seconds * 10_000_000 + hundred_ns % 10_000_000
}

/// A time sync message: the host's time `parent_time` (FILETIME) when the
/// partition reference counter read `reference_time`; version 3 carries no
/// reference time (the guest takes the sample as of its arrival).
pub fn timesync_request(
    out: &mut [u8],
    version: Version,
    parent_time: u64,
    reference_time: u64,
    flags: u8,
    transaction: u8,
) -> Option<usize> {
    let mut body = [0u8; TIMESYNC_BODY + 8];
    body[0..8].copy_from_slice(&parent_time.to_le_bytes());
    let len = if version.0 >= 4 {
        body[8..16].copy_from_slice(&reference_time.to_le_bytes());
        body[16] = flags;
        TIMESYNC_BODY
    } else {
        // `ictimesync_data`: parent, child and round-trip times, flags.
        body[24] = flags;
        TIMESYNC_BODY + 8
    };
    request(out, kind::TIMESYNC, version, transaction, &body[..len])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest's side as Linux's hv_utils does it: flags, status and the
    /// chosen versions written into the same buffer.
    fn answer_negotiation(req: &mut [u8], choose: Option<(Version, Version)>) {
        req[25] = FLAG_TRANSACTION | FLAG_RESPONSE;
        let b = &mut req[BODY_AT..];
        match choose {
            Some((f, m)) => {
                b[0..2].copy_from_slice(&1u16.to_le_bytes());
                b[2..4].copy_from_slice(&1u16.to_le_bytes());
                b[8..10].copy_from_slice(&f.0.to_le_bytes());
                b[10..12].copy_from_slice(&f.1.to_le_bytes());
                b[12..14].copy_from_slice(&m.0.to_le_bytes());
                b[14..16].copy_from_slice(&m.1.to_le_bytes());
            }
            None => b[0..4].fill(0),
        }
    }

    #[test]
    fn negotiation_round_trip() {
        let mut buf = [0u8; 256];
        let n = negotiate_request(&mut buf, Service::TimeSync, 7).unwrap();
        // Two framework and two message versions.
        assert_eq!(n, BODY_AT + 8 + 16);
        assert_eq!(u16_at(&buf, 12), kind::NEGOTIATE);
        assert_eq!(u32_at(&buf, 4) as usize, n - 8);
        // Not a response yet.
        assert_eq!(parse_reply(&buf[..n]), Err(IcError::NotAResponse));
        answer_negotiation(&mut buf, Some((Version(3, 0), Version(4, 0))));
        let r = parse_reply(&buf[..n]).unwrap();
        assert_eq!(r.transaction, 7);
        assert_eq!(
            negotiated(Service::TimeSync, &r),
            Ok((Version(3, 0), Version(4, 0)))
        );
        // A version we never offered is refused.
        answer_negotiation(&mut buf, Some((Version(3, 0), Version(9, 9))));
        let r = parse_reply(&buf[..n]).unwrap();
        assert_eq!(
            negotiated(Service::TimeSync, &r),
            Err(IcError::NoCommonVersion)
        );
        answer_negotiation(&mut buf, None);
        let r = parse_reply(&buf[..n]).unwrap();
        assert_eq!(
            negotiated(Service::TimeSync, &r),
            Err(IcError::NoCommonVersion)
        );
    }

    #[test]
    fn heartbeat_and_shutdown() {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = heartbeat_request(&mut buf, Version(3, 0), 41, 1).unwrap();
        assert_eq!(n, BODY_AT + HEARTBEAT_BODY);
        buf[25] = FLAG_TRANSACTION | FLAG_RESPONSE;
        buf[BODY_AT..BODY_AT + 8].copy_from_slice(&42u64.to_le_bytes());
        assert_eq!(heartbeat_reply(&parse_reply(&buf[..n]).unwrap()), Ok(42));
        buf[20..24].copy_from_slice(&E_FAIL.to_le_bytes());
        assert_eq!(
            heartbeat_reply(&parse_reply(&buf[..n]).unwrap()),
            Err(IcError::Failed(E_FAIL))
        );
        let n = shutdown_request(&mut buf, Version(3, 0), 0, 2).unwrap();
        // Linux refuses a shutdown message shorter than its whole body.
        assert_eq!(n, MAX_MESSAGE);
        assert_eq!(u16_at(&buf, 12), kind::SHUTDOWN);
        assert!(shutdown_request(&mut [0u8; 100], Version(3, 0), 0, 2).is_none());
    }

    #[test]
    fn timesync_layouts() {
        let mut buf = [0u8; 128];
        let t = filetime(1_700_000_000, 5);
        assert_eq!(t, 116_444_736_000_000_000 + 17_000_000_000_000_000 + 5);
        let n = timesync_request(&mut buf, Version(4, 0), t, 99, TIMESYNC_SYNC, 3).unwrap();
        assert_eq!(n, BODY_AT + 24);
        assert_eq!(
            u64::from_le_bytes(buf[BODY_AT..BODY_AT + 8].try_into().unwrap()),
            t
        );
        assert_eq!(
            u64::from_le_bytes(buf[BODY_AT + 8..BODY_AT + 16].try_into().unwrap()),
            99
        );
        assert_eq!(buf[BODY_AT + 16], TIMESYNC_SYNC);
        let n = timesync_request(&mut buf, Version(3, 0), t, 99, TIMESYNC_SAMPLE, 3).unwrap();
        assert_eq!(n, BODY_AT + 32);
        assert_eq!(buf[BODY_AT + 24], TIMESYNC_SAMPLE);
    }

    #[test]
    fn hostile_replies_are_errors() {
        assert_eq!(parse_reply(&[0; 10]), Err(IcError::Truncated));
        let mut buf = [0u8; 128];
        let n = heartbeat_request(&mut buf, Version(3, 0), 1, 1).unwrap();
        buf[25] = FLAG_RESPONSE;
        // A body size beyond the packet.
        buf[18..20].copy_from_slice(&1000u16.to_le_bytes());
        assert_eq!(parse_reply(&buf[..n]), Err(IcError::Truncated));
        buf[18..20].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(
            heartbeat_reply(&parse_reply(&buf[..n]).unwrap()),
            Err(IcError::Truncated)
        );
        buf[0] = 2;
        assert_eq!(parse_reply(&buf[..n]), Err(IcError::NotAResponse));
    }

    proptest::proptest! {
        #[test]
        fn any_reply_parses_or_errs(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Ok(r) = parse_reply(&bytes) {
                let _ = negotiated(Service::Heartbeat, &r);
                let _ = heartbeat_reply(&r);
                proptest::prop_assert!(r.body.len() <= bytes.len());
            }
        }
    }
}
