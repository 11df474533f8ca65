//! The virtual switch: Ethernet frames between the ports of one switch, a
//! port per VM network adapter and, on an external switch, one port bound
//! to the root's physical NIC.
//!
//! - **MAC learning**: the source address of every frame is learnt for its
//!   VLAN; a frame to a learnt address goes to that port alone, any other
//!   (broadcast, multicast, unknown unicast) is flooded.
//! - **VLANs** (IEEE 802.1Q): an adapter's port is an access port of one
//!   VLAN (0: untagged, the default). Its frames are untagged on the wire
//!   to the guest; a tagged frame from a guest is dropped. The external
//!   port is a trunk: untagged frames are VLAN 0, tagged ones carry their
//!   VLAN, and frames of other VLANs leave it tagged. No frame crosses
//!   VLANs: flooding reaches only ports of the frame's VLAN, and the MAC
//!   table is per VLAN.
//! - **Counters** per port: frames and bytes in each direction, drops by
//!   reason.
//!
//! Frames wait in a bounded queue per port until the port's owner (the
//! adapter's VMBus server, the NIC driver) takes them; a full queue drops.
//! Memory is taken fallibly: without memory a frame is dropped and counted,
//! the root goes on.
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

/// An Ethernet address.
pub type Mac = [u8; 6];

/// Frames waiting per port, at most.
pub const QUEUE_MAX: usize = 64;
/// Bytes of frames waiting in all of a switch's ports, at most (what a
/// switch may hold of the root's heap).
pub const QUEUED_BYTES_MAX: usize = 1 << 20;
/// Learnt addresses per switch, at most (beyond, frames are flooded).
pub const MAC_TABLE_MAX: usize = 1024;
/// Ports per switch, at most.
pub const PORTS_MAX: usize = 64;
/// Untagged: the VLAN of an access port that has none.
pub const UNTAGGED: u16 = 0;
/// The largest VLAN id (4095 is reserved).
pub const VLAN_MAX: u16 = 4094;
/// The shortest frame (destination, source, EtherType) and the longest
/// untagged one (1500 bytes of payload; no FCS).
pub const FRAME_MIN: usize = 14;
pub const FRAME_MAX: usize = 1514;
const TPID_8021Q: u16 = 0x8100;
/// Tag types: 802.1Q, 802.1ad (service tag) and the old QinQ type. A frame
/// from a guest with any of them is tagged; a frame from outside whose
/// inner type is one of them is double-tagged (refused).
fn is_tag(ethertype: u16) -> bool {
    matches!(ethertype, 0x8100 | 0x88A8 | 0x9100)
}

/// Which end a port has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// A VM's network adapter: the VM's name, the adapter's number, and
    /// its address: the only source address its frames may carry.
    Adapter { vm: String, nic: u32, mac: Mac },
    /// The root's physical NIC.
    External,
}

/// A port's counters. "In" is from the port into the switch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub in_frames: u64,
    pub in_bytes: u64,
    pub out_frames: u64,
    pub out_bytes: u64,
    /// Frames from this port that no port of their VLAN could take (the
    /// destination is learnt in another VLAN, or no other port is in it).
    pub drops_vlan: u64,
    /// Tagged frames from an access port (a guest may not pick its VLAN).
    pub drops_tagged: u64,
    /// Frames from an adapter with another source address than its own (a
    /// guest may not take over another station's address).
    pub drops_spoofed: u64,
    /// Frames from this port too short, too long or with a bad tag.
    pub drops_malformed: u64,
    /// Frames for this port dropped: its queue was full (or no memory).
    pub drops_full: u64,
    /// Frames for this port dropped: its link is down (the VM is off or
    /// the guest has not opened the adapter).
    pub drops_down: u64,
}

impl Counters {
    /// Every drop counted at this port.
    pub fn drops(&self) -> u64 {
        self.drops_vlan
            + self.drops_tagged
            + self.drops_spoofed
            + self.drops_malformed
            + self.drops_full
            + self.drops_down
    }
}

#[derive(Debug)]
pub struct Port {
    pub id: u32,
    pub kind: PortKind,
    /// Access VLAN (adapters), native VLAN (external).
    pub vlan: u16,
    /// Whether the port's owner takes frames (an open adapter, the NIC).
    pub up: bool,
    pub counters: Counters,
    queue: VecDeque<Vec<u8>>,
}

impl Port {
    /// Whether a frame of `vlan` may leave through this port.
    fn carries(&self, vlan: u16) -> bool {
        self.kind == PortKind::External || self.vlan == vlan
    }

    /// Frames waiting for the port's owner.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

/// Why a port could not be made or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchError {
    /// The switch has [`PORTS_MAX`] ports.
    Full,
    /// No such port.
    NoPort,
    /// A VLAN id above [`VLAN_MAX`].
    BadVlan,
    /// The switch has an external port already.
    ExternalTaken,
}

impl core::fmt::Display for SwitchError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SwitchError::Full => "the switch has no free port",
            SwitchError::NoPort => "no such port",
            SwitchError::BadVlan => "a VLAN id is 1 to 4094 (0: untagged)",
            SwitchError::ExternalTaken => "the switch has an external port already",
        })
    }
}

/// One virtual switch.
#[derive(Debug)]
pub struct Switch {
    pub name: String,
    ports: Vec<Port>,
    next_id: u32,
    /// (VLAN, address) to port id.
    macs: BTreeMap<(u16, Mac), u32>,
    /// Bytes of the frames waiting in the ports' queues.
    queued_bytes: usize,
}

/// The VLAN tag of a tagged frame: (VLAN id, the frame without its tag).
fn untag(frame: &[u8]) -> Option<(u16, Vec<u8>)> {
    if frame.len() < FRAME_MIN + 4 || ethertype(frame) != TPID_8021Q {
        return None;
    }
    let tci = u16::from_be_bytes([frame[14], frame[15]]);
    let mut inner = Vec::new();
    inner.try_reserve_exact(frame.len() - 4).ok()?;
    inner.extend_from_slice(&frame[..12]);
    inner.extend_from_slice(&frame[16..]);
    Some((tci & 0xFFF, inner))
}

fn ethertype(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[12], frame[13]])
}

/// `frame` (untagged) with an 802.1Q tag of `vlan` (priority 0).
fn tagged(frame: &[u8], vlan: u16) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    out.try_reserve_exact(frame.len() + 4).ok()?;
    out.extend_from_slice(&frame[..12]);
    out.extend_from_slice(&TPID_8021Q.to_be_bytes());
    out.extend_from_slice(&vlan.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    Some(out)
}

fn copy(frame: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    out.try_reserve_exact(frame.len()).ok()?;
    out.extend_from_slice(frame);
    Some(out)
}

/// Whether an address is a group (broadcast or multicast) address.
pub fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

impl Switch {
    pub fn new(name: &str) -> Self {
        Switch {
            name: name.into(),
            ports: Vec::new(),
            next_id: 1,
            macs: BTreeMap::new(),
            queued_bytes: 0,
        }
    }

    /// Whether the switch has an external port.
    pub fn is_external(&self) -> bool {
        self.ports.iter().any(|p| p.kind == PortKind::External)
    }

    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    pub fn port(&self, id: u32) -> Option<&Port> {
        self.ports.iter().find(|p| p.id == id)
    }

    fn port_mut(&mut self, id: u32) -> Result<&mut Port, SwitchError> {
        self.ports
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or(SwitchError::NoPort)
    }

    /// A new port (down until its owner brings it up); its id.
    pub fn add_port(&mut self, kind: PortKind, vlan: u16) -> Result<u32, SwitchError> {
        if vlan > VLAN_MAX {
            return Err(SwitchError::BadVlan);
        }
        if self.ports.len() >= PORTS_MAX {
            return Err(SwitchError::Full);
        }
        if kind == PortKind::External && self.is_external() {
            return Err(SwitchError::ExternalTaken);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.ports.try_reserve(1).map_err(|_| SwitchError::Full)?;
        self.ports.push(Port {
            id,
            kind,
            vlan,
            up: false,
            counters: Counters::default(),
            queue: VecDeque::new(),
        });
        Ok(id)
    }

    /// Removes a port, its queue and the addresses learnt on it.
    pub fn remove_port(&mut self, id: u32) {
        if let Ok(p) = self.port_mut(id) {
            let bytes: usize = p.queue.iter().map(|f| f.len()).sum();
            self.queued_bytes -= bytes;
        }
        self.ports.retain(|p| p.id != id);
        self.macs.retain(|_, p| *p != id);
    }

    /// Moves a port to another VLAN: what it learnt is forgotten.
    pub fn set_vlan(&mut self, id: u32, vlan: u16) -> Result<(), SwitchError> {
        if vlan > VLAN_MAX {
            return Err(SwitchError::BadVlan);
        }
        let port = self.port_mut(id)?;
        port.vlan = vlan;
        // Frames of the old VLAN still waiting never reach the new one.
        port.counters.drops_vlan += port.queue.len() as u64;
        let bytes: usize = port.queue.drain(..).map(|f| f.len()).sum();
        self.queued_bytes -= bytes;
        self.macs.retain(|_, p| *p != id);
        Ok(())
    }

    /// Link up (the owner takes frames) or down (its queue is emptied).
    pub fn set_up(&mut self, id: u32, up: bool) {
        if let Ok(p) = self.port_mut(id) {
            p.up = up;
            if !up {
                p.counters.drops_down += p.queue.len() as u64;
                let bytes: usize = p.queue.drain(..).map(|f| f.len()).sum();
                self.queued_bytes -= bytes;
            }
        }
    }

    /// The addresses learnt on a port, with their VLAN.
    pub fn learnt(&self, id: u32) -> impl Iterator<Item = (u16, Mac)> + '_ {
        self.macs
            .iter()
            .filter(move |(_, p)| **p == id)
            .map(|(k, _)| *k)
    }

    /// The next frame waiting for port `id`, left in the queue.
    pub fn peek(&self, id: u32) -> Option<&[u8]> {
        self.port(id)?.queue.front().map(|f| f.as_slice())
    }

    /// Takes the next frame waiting for port `id`.
    pub fn take(&mut self, id: u32) -> Option<Vec<u8>> {
        let f = self.port_mut(id).ok()?.queue.pop_front()?;
        self.queued_bytes -= f.len();
        Some(f)
    }

    /// A frame from port `from` (as it came: untagged from an adapter,
    /// possibly tagged from the external port): learnt, then queued for
    /// every port it goes to. Returns how many ports it was queued for.
    pub fn forward(&mut self, from: u32, frame: &[u8]) -> usize {
        let Some(src) = self.ports.iter().position(|p| p.id == from) else {
            return 0;
        };
        let port = &mut self.ports[src];
        port.counters.in_frames += 1;
        port.counters.in_bytes += frame.len() as u64;
        if frame.len() < FRAME_MIN || frame.len() > FRAME_MAX + 4 {
            port.counters.drops_malformed += 1;
            return 0;
        }
        let is_tagged = is_tag(ethertype(frame));
        let (vlan, owned);
        if let PortKind::Adapter { mac, .. } = &port.kind {
            if frame[6..12] != mac[..] {
                port.counters.drops_spoofed += 1;
                return 0;
            }
        }
        let frame = match (&port.kind, is_tagged) {
            (PortKind::Adapter { .. }, true) => {
                port.counters.drops_tagged += 1;
                return 0;
            }
            (PortKind::External, true) => match untag(frame) {
                Some((v, f)) if v <= VLAN_MAX && f.len() >= FRAME_MIN && !is_tag(ethertype(&f)) => {
                    vlan = v;
                    owned = f;
                    owned.as_slice()
                }
                _ => {
                    port.counters.drops_malformed += 1;
                    return 0;
                }
            },
            (_, false) if frame.len() > FRAME_MAX => {
                port.counters.drops_malformed += 1;
                return 0;
            }
            (_, false) => {
                vlan = port.vlan;
                frame
            }
        };
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&frame[..6]);
        let mut srcmac = [0u8; 6];
        srcmac.copy_from_slice(&frame[6..12]);
        self.learn(vlan, srcmac, from);

        // A learnt destination in this VLAN: that port alone. Learnt only
        // in another VLAN: it is not reachable from here.
        let target = if is_group(&dst) {
            None
        } else {
            self.macs.get(&(vlan, dst)).copied()
        };
        let mut delivered = 0;
        let mut reachable = 0;
        for i in 0..self.ports.len() {
            let p = &self.ports[i];
            if p.id == from || !p.carries(vlan) || target.is_some_and(|t| t != p.id) {
                continue;
            }
            reachable += 1;
            let out = match p.kind {
                PortKind::External if vlan != p.vlan => tagged(frame, vlan),
                _ => copy(frame),
            };
            let p = &mut self.ports[i];
            if !p.up {
                p.counters.drops_down += 1;
                continue;
            }
            match out {
                Some(f)
                    if p.queue.len() < QUEUE_MAX
                        && self.queued_bytes + f.len() <= QUEUED_BYTES_MAX
                        && p.queue.try_reserve(1).is_ok() =>
                {
                    p.counters.out_frames += 1;
                    p.counters.out_bytes += f.len() as u64;
                    self.queued_bytes += f.len();
                    p.queue.push_back(f);
                    delivered += 1;
                }
                _ => p.counters.drops_full += 1,
            }
        }
        if reachable == 0 {
            self.ports[src].counters.drops_vlan += 1;
        }
        delivered
    }

    fn learn(&mut self, vlan: u16, mac: Mac, port: u32) {
        if is_group(&mac) {
            return;
        }
        if let Some(p) = self.macs.get_mut(&(vlan, mac)) {
            *p = port;
        } else if self.macs.len() < MAC_TABLE_MAX {
            self.macs.insert((vlan, mac), port);
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`, or `None`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A MAC address as `00:15:5d:00:01:02`.
pub struct MacDisplay(pub Mac);

impl core::fmt::Display for MacDisplay {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    const A: Mac = [0x00, 0x15, 0x5d, 0, 0, 1];
    const B: Mac = [0x00, 0x15, 0x5d, 0, 0, 2];
    const C: Mac = [0x00, 0x15, 0x5d, 0, 0, 3];
    const BROADCAST: Mac = [0xff; 6];

    fn frame(dst: Mac, src: Mac) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f
    }

    fn adapter(s: &mut Switch, vlan: u16, mac: Mac) -> u32 {
        let id = s
            .add_port(
                PortKind::Adapter {
                    vm: "vm".into(),
                    nic: 0,
                    mac,
                },
                vlan,
            )
            .unwrap();
        s.set_up(id, true);
        id
    }

    fn drain(s: &mut Switch, id: u32) -> Vec<Vec<u8>> {
        core::iter::from_fn(|| s.take(id)).collect()
    }

    #[test]
    fn broadcast_floods_then_unicast_goes_to_the_learnt_port() {
        let mut s = Switch::new("lan");
        let (a, b, c) = (
            adapter(&mut s, 0, A),
            adapter(&mut s, 0, B),
            adapter(&mut s, 0, C),
        );
        assert_eq!(s.forward(a, &frame(BROADCAST, A)), 2);
        assert_eq!(drain(&mut s, b).len(), 1);
        assert_eq!(drain(&mut s, c).len(), 1);
        assert!(drain(&mut s, a).is_empty(), "never back to the sender");
        // A is learnt on port a: B's answer goes there alone.
        assert_eq!(s.forward(b, &frame(A, B)), 1);
        assert_eq!(drain(&mut s, a), vec![frame(A, B)]);
        assert!(drain(&mut s, c).is_empty());
        // Unknown unicast floods.
        assert_eq!(s.forward(a, &frame(C, A)), 2);
        assert_eq!(s.port(a).unwrap().counters.in_frames, 2);
        assert_eq!(s.port(a).unwrap().counters.out_frames, 1);
        assert_eq!(s.learnt(a).collect::<Vec<_>>(), vec![(0, A)]);
    }

    #[test]
    fn no_frame_crosses_vlans_and_the_drop_says_so() {
        let mut s = Switch::new("lan");
        let a = adapter(&mut s, 10, A);
        let b = adapter(&mut s, 20, B);
        assert_eq!(s.forward(a, &frame(BROADCAST, A)), 0);
        assert_eq!(s.forward(b, &frame(BROADCAST, B)), 0);
        // Learnt in VLAN 20, B is not reachable from VLAN 10.
        assert_eq!(s.forward(a, &frame(B, A)), 0);
        assert!(drain(&mut s, a).is_empty() && drain(&mut s, b).is_empty());
        assert_eq!(s.port(a).unwrap().counters.drops_vlan, 2);
        assert_eq!(s.port(b).unwrap().counters.drops_vlan, 1);
        // Moved to the same VLAN, they reach each other again.
        s.set_vlan(b, 10).unwrap();
        assert_eq!(s.forward(a, &frame(B, A)), 1);
        assert_eq!(drain(&mut s, b), vec![frame(B, A)]);
        assert_eq!(s.set_vlan(b, 4095), Err(SwitchError::BadVlan));
    }

    #[test]
    fn frames_waiting_in_the_old_vlan_never_reach_the_new_one() {
        let mut s = Switch::new("lan");
        let a = adapter(&mut s, 10, A);
        let b = adapter(&mut s, 10, B);
        s.forward(a, &frame(BROADCAST, A));
        assert_eq!(s.port(b).unwrap().queued(), 1);
        s.set_vlan(b, 20).unwrap();
        assert!(drain(&mut s, b).is_empty());
        assert_eq!(s.port(b).unwrap().counters.drops_vlan, 1);
    }

    #[test]
    fn service_tags_count_as_tags_and_double_tags_are_refused() {
        let mut s = Switch::new("ext");
        let a = adapter(&mut s, 0, A);
        let x = s.add_port(PortKind::External, 0).unwrap();
        s.set_up(x, true);
        // From a guest, an 802.1ad tag is a tag.
        let mut qinq = frame(BROADCAST, A);
        qinq[12..14].copy_from_slice(&0x88A8u16.to_be_bytes());
        assert_eq!(s.forward(a, &qinq), 0);
        assert_eq!(s.port(a).unwrap().counters.drops_tagged, 1);
        // From outside, a frame tagged twice never reaches an access port.
        let inner = tagged(&frame(BROADCAST, C), 0).unwrap();
        assert_eq!(s.forward(x, &tagged(&inner, 0).unwrap()), 0);
        assert!(drain(&mut s, a).is_empty());
        assert_eq!(s.port(x).unwrap().counters.drops_malformed, 1);
    }

    #[test]
    fn a_guest_cannot_use_another_stations_address() {
        let mut s = Switch::new("lan");
        let a = adapter(&mut s, 0, A);
        let b = adapter(&mut s, 0, B);
        s.forward(b, &frame(BROADCAST, B));
        // a claims B's address: dropped, and B is still learnt on b.
        assert_eq!(s.forward(a, &frame(BROADCAST, B)), 0);
        assert_eq!(s.port(a).unwrap().counters.drops_spoofed, 1);
        assert_eq!(s.learnt(b).collect::<Vec<_>>(), vec![(0, B)]);
        assert!(s.learnt(a).next().is_none());
    }

    #[test]
    fn a_switch_holds_at_most_its_byte_budget() {
        let mut s = Switch::new("lan");
        let a = adapter(&mut s, 0, A);
        let ports: Vec<u32> = (0..40u8)
            .map(|i| adapter(&mut s, 0, [2, 0, 0, 0, 1, i]))
            .collect();
        let mut big = frame(BROADCAST, A);
        big.resize(FRAME_MAX, 0);
        for _ in 0..QUEUE_MAX {
            s.forward(a, &big);
        }
        let held: usize = ports.iter().map(|&p| s.port(p).unwrap().queued()).sum();
        assert_eq!(held, QUEUED_BYTES_MAX / FRAME_MAX);
        // Taking frames frees room.
        for &p in &ports {
            while s.take(p).is_some() {}
        }
        assert_eq!(s.forward(a, &big), ports.len());
    }

    #[test]
    fn a_guest_cannot_tag_its_frames() {
        let mut s = Switch::new("lan");
        let a = adapter(&mut s, 10, A);
        let b = adapter(&mut s, 20, B);
        let t = tagged(&frame(BROADCAST, A), 20).unwrap();
        assert_eq!(s.forward(a, &t), 0);
        assert!(drain(&mut s, b).is_empty());
        assert_eq!(s.port(a).unwrap().counters.drops_tagged, 1);
    }

    #[test]
    fn the_external_port_trunks() {
        let mut s = Switch::new("ext");
        let a = adapter(&mut s, 10, A);
        let u = adapter(&mut s, 0, B);
        let x = s.add_port(PortKind::External, 0).unwrap();
        s.set_up(x, true);
        assert_eq!(
            s.add_port(PortKind::External, 0),
            Err(SwitchError::ExternalTaken)
        );
        // VLAN 10 leaves tagged, VLAN 0 untagged.
        s.forward(a, &frame(BROADCAST, A));
        assert_eq!(
            drain(&mut s, x),
            vec![tagged(&frame(BROADCAST, A), 10).unwrap()]
        );
        assert!(drain(&mut s, u).is_empty());
        s.forward(u, &frame(BROADCAST, B));
        assert_eq!(drain(&mut s, x), vec![frame(BROADCAST, B)]);
        // A tagged frame from outside reaches its VLAN, untagged.
        s.forward(x, &tagged(&frame(A, C), 10).unwrap());
        assert_eq!(drain(&mut s, a), vec![frame(A, C)]);
        assert!(drain(&mut s, u).is_empty());
        s.forward(x, &frame(BROADCAST, C));
        assert_eq!(drain(&mut s, u), vec![frame(BROADCAST, C)]);
        assert!(drain(&mut s, a).is_empty());
    }

    #[test]
    fn full_and_down_ports_drop_and_count() {
        let mut s = Switch::new("lan");
        let a = adapter(&mut s, 0, A);
        let b = adapter(&mut s, 0, B);
        for _ in 0..QUEUE_MAX + 5 {
            s.forward(a, &frame(BROADCAST, A));
        }
        assert_eq!(s.port(b).unwrap().queued(), QUEUE_MAX);
        assert_eq!(s.port(b).unwrap().counters.drops_full, 5);
        // Taken down, its waiting frames are dropped and counted.
        s.set_up(b, false);
        assert_eq!(s.port(b).unwrap().queued(), 0);
        s.forward(a, &frame(BROADCAST, A));
        assert_eq!(s.port(b).unwrap().counters.drops_down, QUEUE_MAX as u64 + 1);
        s.forward(a, &[0u8; 10]);
        assert_eq!(s.port(a).unwrap().counters.drops_malformed, 1);
        s.remove_port(b);
        assert!(s.port(b).is_none());
        assert_eq!(s.forward(b, &frame(BROADCAST, B)), 0);
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("00:15:5d:0a:0B:ff"),
            Some([0, 0x15, 0x5d, 10, 11, 255])
        );
        assert_eq!(
            parse_mac("00-15-5d-0a-0b-ff"),
            Some([0, 0x15, 0x5d, 10, 11, 255])
        );
        for bad in [
            "",
            "00:15:5d:0a:0b",
            "00:15:5d:0a:0b:ff:00",
            "0:15:5d:0a:0b:ff",
            "zz:15:5d:0a:0b:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(
            format!("{}", MacDisplay([0, 0x15, 0x5d, 1, 2, 3])),
            "00:15:5d:01:02:03"
        );
    }

    proptest! {
        /// Whatever arrives from anywhere: no panic, and every frame an
        /// adapter port receives is untagged and of its VLAN's senders.
        #[test]
        fn any_frames(frames in proptest::collection::vec(
            (0usize..3, proptest::collection::vec(any::<u8>(), 0..1600)), 0..40)) {
            let mut s = Switch::new("p");
            let a = adapter(&mut s, 1, A);
            let b = adapter(&mut s, 2, B);
            let x = s.add_port(PortKind::External, 0).unwrap();
            s.set_up(x, true);
            let ids = [a, b, x];
            for (from, f) in frames {
                s.forward(ids[from], &f);
            }
            for id in [a, b] {
                for f in drain(&mut s, id) {
                    prop_assert!(f.len() >= FRAME_MIN && f.len() <= FRAME_MAX);
                    prop_assert!(ethertype(&f) != TPID_8021Q);
                }
            }
            let from_a_in_b = s.port(b).unwrap().counters.out_frames;
            prop_assert!(from_a_in_b <= s.port(x).unwrap().counters.in_frames);
        }
    }
}
