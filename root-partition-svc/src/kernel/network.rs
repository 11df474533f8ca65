//! The root's networking: its virtual switches (`vswitch`) and the
//! physical NIC an external switch is bound to. A VM's network adapters
//! are ports of a switch (their VMBus side is in `vmbus_server`); this
//! module moves frames between the external port and the NIC, and answers
//! the `switch` commands.
use crate::println;
use crate::virtio_net::{self, VirtioNet};
use alloc::string::String;
use alloc::vec::Vec;
use root_partition_svc::vswitch::{MacDisplay, PortKind, Switch};

/// Switches at most.
pub const MAX_SWITCHES: usize = 16;
const NAME_MAX: usize = 32;

// One value for the root's life, in a static: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Nic {
    /// Not looked for yet.
    Unknown,
    /// None usable; why.
    Absent(&'static str),
    Present(VirtioNet),
}

pub struct Network {
    switches: Vec<Switch>,
    nic: Nic,
    /// The external switch (index) and its port.
    external: Option<(usize, u32)>,
}

impl Network {
    pub const fn new() -> Self {
        Network {
            switches: Vec::new(),
            nic: Nic::Unknown,
            external: None,
        }
    }

    /// Looks for the NIC (once, at start) and says what it found.
    pub fn init(&mut self, identity_top: u64) {
        self.nic = match virtio_net::probe(identity_top) {
            Ok(n) => {
                let (b, d, f) = n.location;
                println!(
                    "host nic: virtio-net at PCI {b:02x}:{d:02x}.{f}, MAC {}",
                    MacDisplay(n.mac)
                );
                Nic::Present(n)
            }
            Err(why) => {
                println!("host nic: none ({why}); switches are internal");
                Nic::Absent(why)
            }
        };
    }

    /// The switch named `name` (its index).
    pub fn find(&self, name: &str) -> Option<usize> {
        self.switches.iter().position(|s| s.name == name)
    }

    pub fn switch(&self, i: usize) -> Option<&Switch> {
        self.switches.get(i)
    }

    pub fn switch_mut(&mut self, i: usize) -> Option<&mut Switch> {
        self.switches.get_mut(i)
    }

    /// `switch new NAME [--external]`.
    pub fn new_switch(&mut self, name: &str, external: bool) {
        if name.is_empty()
            || name.len() > NAME_MAX
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            println!("switch new: a switch's name is 1 to {NAME_MAX} letters, digits, '-' or '_'");
            return;
        }
        if self.find(name).is_some() {
            println!("switch new: {name} exists already");
            return;
        }
        if self.switches.len() >= MAX_SWITCHES {
            println!("switch new: there are {MAX_SWITCHES} switches, the most the root keeps");
            return;
        }
        let mut switch = Switch::new(name);
        if external {
            match &self.nic {
                Nic::Present(_) => {}
                Nic::Absent(why) => {
                    println!("switch new: no external switch without a NIC ({why})");
                    return;
                }
                Nic::Unknown => {
                    println!("switch new: the NIC has not been looked for");
                    return;
                }
            }
            if let Some((i, _)) = self.external {
                println!(
                    "switch new: the NIC is the external port of {} already",
                    self.switches[i].name
                );
                return;
            }
            let Ok(port) = switch.add_port(PortKind::External, 0) else {
                println!("switch new: no port for the NIC");
                return;
            };
            switch.set_up(port, true);
            self.external = Some((self.switches.len(), port));
        }
        self.switches.push(switch);
        let kind = if external {
            "external (bound to the host's NIC)"
        } else {
            "internal"
        };
        println!("switch new: {name}, {kind}");
    }

    /// `switch list`.
    pub fn list(&self) {
        if self.switches.is_empty() {
            println!("switch list: no switches (switch new NAME [--external])");
            return;
        }
        println!("NAME              TYPE      PORTS  MACS");
        for s in &self.switches {
            let kind = if s.is_external() {
                "external"
            } else {
                "internal"
            };
            let macs: usize = s.ports().iter().map(|p| s.learnt(p.id).count()).sum();
            println!(
                "{:<17} {:<9} {:>5}  {:>4}",
                s.name,
                kind,
                s.ports().len(),
                macs
            );
        }
    }

    /// `switch show NAME`: every port, its VLAN, link, learnt addresses and
    /// counters.
    pub fn show(&self, name: &str) {
        let Some(s) = self.find(name).map(|i| &self.switches[i]) else {
            println!("switch show: no switch {name} (switch list)");
            return;
        };
        let kind = if s.is_external() {
            "external"
        } else {
            "internal"
        };
        println!("switch {}: {kind}, {} ports", s.name, s.ports().len());
        if let (true, Nic::Present(n)) = (s.is_external(), &self.nic) {
            let (b, d, f) = n.location;
            println!(
                "  NIC: virtio-net at PCI {b:02x}:{d:02x}.{f}, MAC {}, {} errors",
                MacDisplay(n.mac),
                n.errors
            );
        }
        for p in s.ports() {
            let owner: String = match &p.kind {
                PortKind::Adapter { vm, nic, .. } => alloc::format!("{vm} nic {nic}"),
                PortKind::External => "external (NIC)".into(),
            };
            let vlan = match (&p.kind, p.vlan) {
                (PortKind::External, _) => String::from("trunk"),
                (_, 0) => String::from("untagged"),
                (_, v) => alloc::format!("VLAN {v}"),
            };
            println!(
                "  port {}: {owner}, {vlan}, link {}",
                p.id,
                if p.up { "up" } else { "down" }
            );
            for (v, mac) in s.learnt(p.id) {
                println!("    learnt {} (VLAN {v})", MacDisplay(mac));
            }
            let c = p.counters;
            println!(
                "    in {} frames {} bytes; out {} frames {} bytes",
                c.in_frames, c.in_bytes, c.out_frames, c.out_bytes
            );
            println!(
                "    drops {} = wrong VLAN {} + tagged by the guest {} + another's address {} + malformed {} + queue full {} + link down {}",
                c.drops(),
                c.drops_vlan,
                c.drops_tagged,
                c.drops_spoofed,
                c.drops_malformed,
                c.drops_full,
                c.drops_down
            );
        }
    }

    /// Moves frames between the NIC and the external switch; whether any
    /// moved.
    /// The host NIC's receive queue is polled (an external switch is bound
    /// to it): the idle root must wake often enough for it.
    pub fn polls_host_nic(&self) -> bool {
        self.external.is_some() && matches!(self.nic, Nic::Present(_))
    }

    pub fn poll(&mut self) -> bool {
        let (Some((i, port)), Nic::Present(nic)) = (self.external, &mut self.nic) else {
            return false;
        };
        let Some(switch) = self.switches.get_mut(i) else {
            return false;
        };
        let mut moved = nic.poll(|frame| {
            switch.forward(port, frame);
        }) > 0;
        while let Some(frame) = switch.take(port) {
            nic.send(&frame);
            moved = true;
        }
        moved
    }
}
