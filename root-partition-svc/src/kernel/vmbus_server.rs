//! The root's VMBus server, one per running VM, built on the `vmbus`
//! crate's [`Host`]: the guest's control messages arrive through two message
//! ports in the root (the guest's connections 1 and 4), its channel kicks
//! through one event port per channel (connection 0x2000 + relid); the
//! server answers with PostMessageDirect to the VP the guest named and
//! signals channels with SignalEventDirect. On it run the integration
//! services (heartbeat, shutdown, time synchronization) that Linux's
//! hv_utils drives, the synthetic SCSI controller (`vmbus::storvsp`) when
//! the VM has a disk, its network adapters (`vmbus::netvsp`, each a port of
//! a virtual switch), and, when the administrator adds it, the echo device
//! (`vmbus::echo`) the tests and benchmarks use.
//!
//! Port ids in the root: `partition << 8 | connection` for messages,
//! `partition << 8 | 0x80 | relid` for events; a VM's channel with relid r
//! sets flag `slot * 128 + r` of the root's VMBus SINT (slot: the VM's
//! index in the worker's table).
use crate::guest_ring::{GuestMemoryBlock, GuestRing};
use crate::host_disk::VmDisk;
use crate::hypercall;
use crate::network::Network;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use hv_abi::hypercall::status;
use hv_abi::layout::{
    ConnectPort, ConnectionInfo, CreatePort, IntoBytes, PortInfo, PostMessageDirect,
    SignalEventDirect,
};
use hv_abi::partition::{code, port_type, PARTITION_SELF};
use hv_abi::synic::{Message, PAYLOAD_MAX, SLOT_SIZE, VMBUS_SINT};
use root_partition_svc::ic::{self, IcError, Service, Version};
use root_partition_svc::vswitch::{Mac, Switch};
use vmbus::channel::{Channel, ChannelError, Notify};
use vmbus::echo::{self, EchoServer};
use vmbus::guid::class;
use vmbus::host::{Host, HostConfig, HostEvent, HostPort, OfferParams};
use vmbus::netvsp::{self, Gpadls, NetServer, Wire};
use vmbus::packet::{OutgoingPacket, PacketKind};
use vmbus::poll::PollWindow;
use vmbus::scsi::{Identity, ScsiDisk};
use vmbus::storvsp::{self, StorageServer};
use vmbus::Guid;

/// Relids per VM: 1 to 127 (flag numbers `slot * 128 + relid` fill the
/// 2048 flags of the root's VMBus SINT for 16 VMs).
pub const RELIDS_PER_VM: u32 = 128;
/// HvPostMessage message type of VMBus messages.
const VMBUS_MESSAGE_TYPE: u32 = 1;
/// The message connections a guest posts on (protocol 5.0 and later use 4
/// for INITIATE_CONTACT, then the `msg_conn_id` the host returns: 1).
const MESSAGE_CONNECTIONS: [u32; 2] = [1, 4];
/// `HostConfig::connection_id_base`: channel connection ids are this plus
/// the relid.
const CHANNEL_CONNECTION_BASE: u32 = 0x2000;
/// Host messages waiting for the guest's queue to take them, at most.
const OUTBOX_MAX: usize = 256;

fn message_port(partition: u64, connection: u32) -> u32 {
    (partition as u32) << 8 | connection
}

fn event_port(partition: u64, relid: u32) -> u32 {
    (partition as u32) << 8 | 0x80 | relid
}

/// The VM slot and relid of a flag of the root's VMBus SINT.
pub fn flag_owner(flag: u32) -> (usize, u32) {
    ((flag / RELIDS_PER_VM) as usize, flag % RELIDS_PER_VM)
}

/// The partition and connection a message port id names.
pub fn port_owner(port: u64) -> (u64, u32) {
    (port >> 8, (port & 0xFF) as u32)
}

fn ok_or_exists(s: u16, exists: u16) -> Result<(), u16> {
    match s {
        status::SUCCESS => Ok(()),
        s if s == exists => Ok(()),
        s => Err(s),
    }
}

/// A port in the root that `partition` reaches through its connection
/// `connection`. Both exist after the first call; later calls change
/// nothing.
fn root_port(partition: u64, port_id: u32, info: PortInfo, connection: u32) -> Result<(), u16> {
    let create = CreatePort {
        port_partition: PARTITION_SELF,
        port_id,
        connection_partition: partition,
        port_info: info,
        ..Default::default()
    };
    let s = hypercall::call(code::CREATE_PORT, 0, create.as_bytes(), &mut []).status;
    ok_or_exists(s, status::INVALID_PORT_ID)?;
    let connect = ConnectPort {
        connection_partition: partition,
        connection_id: connection,
        port_partition: PARTITION_SELF,
        port_id,
        connection_info: ConnectionInfo {
            port_type: info.port_type,
            ..Default::default()
        },
        ..Default::default()
    };
    let s = hypercall::call(code::CONNECT_PORT, 0, connect.as_bytes(), &mut []).status;
    ok_or_exists(s, status::INVALID_CONNECTION_ID)
}

/// What the `Host` state machine needs from the root.
pub struct RootPort {
    partition: u64,
    memory_base: u64,
    memory_bytes: u64,
    /// Messages for the guest its SynIC queue has not taken yet (VP, SINT,
    /// bytes), in order.
    outbox: VecDeque<(u32, u8, Vec<u8>)>,
    /// Messages dropped: the guest's SynIC was off, or the outbox full.
    pub dropped: u64,
}

impl RootPort {
    /// Posts what waits, in order, until the guest's queue is full.
    fn flush(&mut self) {
        while let Some((vp, sint, bytes)) = self.outbox.front() {
            match post_direct(self.partition, *vp, *sint, bytes) {
                status::INSUFFICIENT_BUFFERS => return,
                status::SUCCESS => {}
                _ => self.dropped += 1,
            }
            self.outbox.pop_front();
        }
    }
}

/// PostMessageDirect of a VMBus message to SINT `sint` of guest VP `vp`.
fn post_direct(partition: u64, vp: u32, sint: u8, bytes: &[u8]) -> u16 {
    let header = PostMessageDirect {
        partition_id: partition,
        vp_index: vp,
        vtl: 0,
        reserved: [0; 3],
        sint: u32::from(sint),
    };
    let mut payload = [0u8; PAYLOAD_MAX];
    let n = bytes.len().min(PAYLOAD_MAX);
    payload[..n].copy_from_slice(&bytes[..n]);
    let message = Message {
        kind: VMBUS_MESSAGE_TYPE,
        flags: 0,
        sender: 0,
        size: n as u8,
        payload,
    };
    let mut input = [0u8; 20 + SLOT_SIZE + 4];
    input[..20].copy_from_slice(header.as_bytes());
    let mut slot = [0u8; SLOT_SIZE];
    message.encode(&mut slot);
    input[20..20 + SLOT_SIZE].copy_from_slice(&slot);
    hypercall::call(code::POST_MESSAGE_DIRECT, 0, &input, &mut []).status
}

impl HostPort for RootPort {
    type Ring = GuestRing;
    type Notifier = EventNotifier;

    fn post_message(&mut self, target_vp: u32, sint: u8, message: &[u8]) {
        if self.outbox.len() >= OUTBOX_MAX {
            self.dropped += 1;
            return;
        }
        self.outbox.push_back((target_vp, sint, message.to_vec()));
        self.flush();
    }

    fn map_ring(&mut self, pfns: &[u64]) -> Option<GuestRing> {
        GuestRing::new(self.memory_base, self.memory_bytes, pfns)
    }

    fn is_guest_page(&self, pfn: u64) -> bool {
        pfn.checked_mul(4096)
            .is_some_and(|gpa| gpa < self.memory_bytes)
    }

    fn notifier(&mut self, target_vp: u32, sint: u8, relid: u32) -> EventNotifier {
        EventNotifier {
            partition: self.partition,
            vp: target_vp,
            sint,
            flag: relid as u16,
        }
    }
}

/// Signals a channel to the guest: its flag in the guest VP's SIEF page.
pub struct EventNotifier {
    partition: u64,
    vp: u32,
    sint: u8,
    flag: u16,
}

impl Notify for EventNotifier {
    fn notify(&mut self) {
        let input = SignalEventDirect {
            partition_id: self.partition,
            vp_index: self.vp,
            vtl: 0,
            sint: self.sint,
            flag_number: self.flag,
        };
        // Sent as the root goes idle, in the same exit. A guest that turned
        // its SynIC off misses the kick, as it would on Hyper-V; it finds
        // the data when it looks.
        hypercall::defer_signal_event(&input);
    }
}

/// Where an integration service is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcStage {
    /// Offered; the guest has not opened it.
    Offered,
    /// Open; versions being negotiated.
    Negotiating,
    /// Negotiated: in use.
    Ready(Version),
    /// The guest's answers made no sense (the channel is left alone).
    Failed(IcError),
}

pub struct Integration {
    pub service: Service,
    pub relid: u32,
    pub stage: IcStage,
    channel: Option<Channel<GuestRing, EventNotifier>>,
    transaction: u8,
    /// Heartbeat: the last sequence number sent, and when the guest last
    /// answered (TSC).
    seq: u64,
    pub last_answer: Option<u64>,
    /// When the last periodic request (heartbeat, time sample) went (TSC).
    last_sent: u64,
    /// Shutdown: the guest accepted a request.
    pub accepted: bool,
}

impl Integration {
    fn new(service: Service, relid: u32) -> Self {
        Integration {
            service,
            relid,
            stage: IcStage::Offered,
            channel: None,
            transaction: 0,
            seq: 0,
            last_answer: None,
            last_sent: 0,
            accepted: false,
        }
    }

    fn send(&mut self, build: impl FnOnce(&mut [u8], u8) -> Option<usize>) -> bool {
        let Some(channel) = self.channel.as_mut() else {
            return false;
        };
        self.transaction = self.transaction.wrapping_add(1);
        let mut buf = [0u8; ic::MAX_MESSAGE];
        let Some(n) = build(&mut buf, self.transaction) else {
            return false;
        };
        let payload: [&[u8]; 1] = [&buf[..n]];
        let packet = OutgoingPacket::in_band(u64::from(self.transaction), false, &payload);
        matches!(channel.send(&packet), Ok(vmbus::channel::SendResult::Sent))
    }
}

/// How often the server asks for a heartbeat, and how long without an
/// answer it still calls the guest healthy, in seconds.
const HEARTBEAT_PERIOD_S: u64 = 1;
/// The longest a network adapter being removed waits for its guest to
/// finish with it before the rescind.
pub const QUIESCE_S: u64 = 2;
const HEARTBEAT_GRACE_S: u64 = 5;
/// How often a time sample goes to the guest.
const TIMESYNC_PERIOD_S: u64 = 5;

/// Where the echo device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceStage {
    /// Offered; the guest has not opened it.
    Offered,
    /// Open and served.
    Open,
    /// The guest broke its ring (a corrupt index or an oversized packet):
    /// the channel is no longer served.
    Broken,
    /// Removed by the administrator: rescinded, waiting for the guest to
    /// release it.
    Rescinded,
}

pub struct EchoDevice {
    pub relid: u32,
    pub stage: DeviceStage,
    channel: Option<Channel<GuestRing, EventNotifier>>,
    pub server: EchoServer,
    pub poll: PollWindow,
}

/// The synthetic SCSI controller with its disks (LUN = index).
pub struct StorageDevice {
    pub relid: u32,
    pub stage: DeviceStage,
    channel: Option<Channel<GuestRing, EventNotifier>>,
    pub server: StorageServer,
    pub disks: Vec<ScsiDisk<VmDisk>>,
    pub poll: PollWindow,
}

/// A fresh channel's polling window: a busy channel is looked at again
/// this many times after its last packet before the root stops polling it
/// (the window adapts between 32 and 256 looks, `vmbus::poll`; a look is
/// one pass of the worker's loop, about a microsecond on a real processor).
const POLL_WINDOW: PollWindow = PollWindow::new(32, 256);

/// The host has one logical processor (`set_one_processor`).
static ONE_PROCESSOR: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Tells the servers the host has a single logical processor: every guest
/// VP shares it with the root, so a polling root only delays the guest it
/// waits for (`vmbus::poll`), and its window's periodic retries cost a
/// separate signal and halt each: channels are never polled then.
pub fn set_one_processor(one: bool) {
    ONE_PROCESSOR.store(one, core::sync::atomic::Ordering::Relaxed);
}

/// A fresh channel's polling window on this host.
fn poll_window() -> PollWindow {
    if ONE_PROCESSOR.load(core::sync::atomic::Ordering::Relaxed) {
        PollWindow::new(0, 0)
    } else {
        POLL_WINDOW
    }
}

/// Serves a device's open channel with `serve` (the packets it handled)
/// and starts or stops polling it as its window says; a second time for
/// packets that came unsignalled as polling stopped. A broken ring closes
/// the channel: true.
fn serve_device(
    channel: &mut Option<Channel<GuestRing, EventNotifier>>,
    stage: &mut DeviceStage,
    poll: &mut PollWindow,
    mut serve: impl FnMut(&mut Channel<GuestRing, EventNotifier>) -> Result<u64, ChannelError>,
) -> bool {
    for _ in 0..2 {
        let Some(ch) = channel.as_mut() else {
            return false;
        };
        match serve(ch).and_then(|handled| adapt(poll, ch, handled)) {
            Ok(true) => {}
            Ok(false) => return false,
            Err(_) => {
                *channel = None;
                *stage = DeviceStage::Broken;
                return true;
            }
        }
    }
    false
}

/// After a serve of `channel` that handled `handled` packets: starts or
/// stops polling it as its window says. True if packets came unsignalled
/// while it was polled: the caller serves it again.
fn adapt(
    poll: &mut PollWindow,
    channel: &mut Channel<GuestRing, EventNotifier>,
    handled: u64,
) -> Result<bool, ChannelError> {
    let want = poll.observe(handled as usize);
    if want == channel.polled() {
        return Ok(false);
    }
    channel.set_polled(want)
}

/// A VM's network adapter as its server needs it: the adapter's number,
/// address, switch (index in the root's `Network`) and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NicSpec {
    pub number: u32,
    pub mac: Mac,
    pub switch: usize,
    pub port: u32,
}

/// A synthetic network adapter.
pub struct NetDevice {
    pub relid: u32,
    pub stage: DeviceStage,
    channel: Option<Channel<GuestRing, EventNotifier>>,
    pub server: NetServer,
    pub spec: NicSpec,
    /// Being removed: unplugged, link down, rescinded once the guest has
    /// nothing in flight on it, or at this TSC at the latest.
    removing: Option<u64>,
}

/// The GPADLs the guest made for one channel (its network buffers).
struct ChannelGpadls<'a> {
    host: &'a Host<RootPort>,
    relid: u32,
}

impl Gpadls for ChannelGpadls<'_> {
    fn pages(&self, id: u32) -> Option<&[u64]> {
        self.host
            .gpadl(id)
            .filter(|g| g.child_relid == self.relid)
            .and_then(|g| g.as_page_list())
    }
}

/// An adapter's end of its switch port.
struct PortWire<'a> {
    switch: &'a mut Switch,
    port: u32,
}

impl Wire for PortWire<'_> {
    fn transmit(&mut self, frame: &[u8]) {
        self.switch.forward(self.port, frame);
    }
    fn peek(&self) -> Option<&[u8]> {
        self.switch.peek(self.port)
    }
    fn pop(&mut self) {
        let _ = self.switch.take(self.port);
    }
}

/// The wire of an adapter no longer on a switch (removed, the guest still
/// closing it): nothing comes, what goes is dropped.
struct Unplugged;

impl Wire for Unplugged {
    fn transmit(&mut self, _frame: &[u8]) {}
    fn peek(&self) -> Option<&[u8]> {
        None
    }
    fn pop(&mut self) {}
}

/// Longest packet an integration service's channel reads: a longer one
/// breaks that channel, never the root's heap.
const IC_MAX_PACKET: u32 = ic::MAX_MESSAGE as u32 + 64;

pub struct VmBus {
    host: Host<RootPort>,
    partition: u64,
    slot: usize,
    pub version: Option<u32>,
    pub integrations: Vec<Integration>,
    pub echo: Option<EchoDevice>,
    pub storage: Option<StorageDevice>,
    pub nics: Vec<NetDevice>,
    memory: (u64, u64),
    /// Guest messages and packets refused (malformed or out of protocol).
    pub refused: u64,

    /// `vm stop` asked for a shutdown the guest has not been sent yet.
    shutdown_wanted: bool,
}

/// The instance GUIDs of the services (one device of each per VM).
fn instance(service: Service) -> Guid {
    match service {
        Service::Heartbeat => Guid::from_u128(0x2e7a_d6c8_71b4_4d1f_9d1c_3f3a_5c1e_0b01),
        Service::Shutdown => Guid::from_u128(0x2e7a_d6c8_71b4_4d1f_9d1c_3f3a_5c1e_0b02),
        Service::TimeSync => Guid::from_u128(0x2e7a_d6c8_71b4_4d1f_9d1c_3f3a_5c1e_0b03),
    }
}

const ECHO_INSTANCE: Guid = Guid::from_u128(0x2e7a_d6c8_71b4_4d1f_9d1c_3f3a_5c1e_0e01);
/// The SCSI controller's instance GUID: the last bytes name the VM's slot,
/// so two VMs' controllers differ (Linux names a disk by it).
fn scsi_instance(slot: usize) -> Guid {
    Guid::from_u128(0x2e7a_d6c8_71b4_4d1f_9d1c_3f3a_5c1e_5c00 | slot as u128)
}

/// A network adapter's instance GUID: the VM's slot and the adapter's
/// number (Linux names the device by it).
fn nic_instance(slot: usize, number: u32) -> Guid {
    Guid::from_u128(
        0x2e7a_d6c8_71b4_4d1f_9d1c_3f3a_5c1e_0000
            | 0x4e00_0000
            | (slot as u128) << 8
            | number as u128,
    )
}

/// The world switches of every logical processor so far (the echo device's
/// counter); 0 if the hypervisor does not say.
fn world_switches() -> u64 {
    let Ok(page) = hypercall::call_with_output(hv_abi::hypercall::GET_HOST_STATS) else {
        return 0;
    };
    let mut lps = [hv_abi::LpStats::default(); hv_abi::HostStats::MAX_LPS];
    let n = hv_abi::HostStats::decode(&page, &mut lps).unwrap_or(0);
    lps[..n].iter().map(|lp| lp.world_switches).sum()
}

fn class_of(service: Service) -> Guid {
    match service {
        Service::Heartbeat => class::HEARTBEAT,
        Service::Shutdown => class::SHUTDOWN,
        Service::TimeSync => class::TIME_SYNC,
    }
}

impl VmBus {
    /// A server for the VM in `slot` (partition `partition`, RAM at
    /// `memory_base`, `memory_bytes` long) offering the integration
    /// services; its ports are made (once per partition) and connected.
    pub fn new(
        partition: u64,
        slot: usize,
        (memory_base, memory_bytes): (u64, u64),
        echo: bool,
        disks: &[(VmDisk, Identity)],
        nics: &[NicSpec],
    ) -> Result<Self, u16> {
        for connection in MESSAGE_CONNECTIONS {
            let info = PortInfo {
                port_type: port_type::MESSAGE,
                target_sint: VMBUS_SINT as u32,
                target_vp: 0,
                ..Default::default()
            };
            root_port(
                partition,
                message_port(partition, connection),
                info,
                connection,
            )?;
        }
        let config = HostConfig {
            max_relid: RELIDS_PER_VM - 1,
            connection_id_base: CHANNEL_CONNECTION_BASE,
            ..HostConfig::default()
        };
        let port = RootPort {
            partition,
            memory_base,
            memory_bytes,
            outbox: VecDeque::new(),
            dropped: 0,
        };
        let mut bus = VmBus {
            host: Host::new(port, config),
            partition,
            slot,
            version: None,
            integrations: Vec::new(),
            echo: None,
            storage: None,
            nics: Vec::new(),
            memory: (memory_base, memory_bytes),
            refused: 0,

            shutdown_wanted: false,
        };
        for service in Service::ALL {
            let relid = bus.offer(class_of(service), instance(service))?;
            bus.integrations.push(Integration::new(service, relid));
        }
        if !disks.is_empty() {
            let relid = bus.offer(class::SCSI, scsi_instance(slot))?;
            bus.storage = Some(StorageDevice {
                relid,
                stage: DeviceStage::Offered,
                channel: None,
                server: StorageServer::default(),
                disks: disks
                    .iter()
                    .map(|&(disk, identity)| ScsiDisk::new(disk, identity))
                    .collect(),
                poll: poll_window(),
            });
        }
        if echo {
            bus.add_echo()?;
        }
        for &spec in nics {
            bus.add_nic(spec)?;
        }
        Ok(bus)
    }

    /// Offers a network adapter (at once if the guest is connected).
    pub fn add_nic(&mut self, spec: NicSpec) -> Result<(), u16> {
        let relid = self.offer(class::NETWORK, nic_instance(self.slot, spec.number))?;
        self.nics.push(NetDevice {
            relid,
            stage: DeviceStage::Offered,
            channel: None,
            server: NetServer::new(spec.mac),
            spec,
            removing: None,
        });
        Ok(())
    }

    /// Removes adapter `number`: its frames stop at once. An adapter the
    /// guest uses is first quiesced: link down, and the rescind waits until
    /// the guest has completed every frame it was given and taken every
    /// completion (Linux's netvsc waits for those when it removes the
    /// device, and after a rescind it no longer reads the channel), for at
    /// most [`QUIESCE_S`] seconds. The channel is still served (unplugged)
    /// until the guest closes it.
    pub fn remove_nic(&mut self, number: u32, now: u64, tsc_hz: u64) {
        let Some(i) = self.nics.iter().position(|d| {
            d.spec.number == number && d.stage != DeviceStage::Rescinded && d.removing.is_none()
        }) else {
            return;
        };
        let dev = &mut self.nics[i];
        if dev.stage == DeviceStage::Open && dev.channel.is_some() {
            dev.server.set_link(false);
            dev.removing = Some(now + QUIESCE_S * tsc_hz);
            return;
        }
        self.rescind_nic(i);
    }

    /// Rescinds adapter `i` now.
    fn rescind_nic(&mut self, i: usize) {
        let dev = &mut self.nics[i];
        dev.removing = None;
        let _ = self.host.rescind(dev.relid);
        if self.host.offer(dev.relid).is_some() {
            dev.stage = DeviceStage::Rescinded;
            dev.server.set_link(false);
        } else {
            self.nics.remove(i);
        }
    }

    /// Serves every network adapter's channel: frames and control both
    /// ways between the guest and its switch port. A port is up while its
    /// guest takes frames.
    pub fn serve_nics(&mut self, net: &mut Network) {
        let mut memory = GuestMemoryBlock::new(self.memory.0, self.memory.1);
        for dev in &mut self.nics {
            let unplugged = dev.stage == DeviceStage::Rescinded || dev.removing.is_some();
            let switch = if unplugged {
                None
            } else {
                net.switch_mut(dev.spec.switch)
            };
            let Some(channel) = dev.channel.as_mut() else {
                if let Some(s) = switch {
                    s.set_up(dev.spec.port, false);
                }
                continue;
            };
            let gpadls = ChannelGpadls {
                host: &self.host,
                relid: dev.relid,
            };
            let served = match switch {
                Some(switch) => {
                    let mut wire = PortWire {
                        switch,
                        port: dev.spec.port,
                    };
                    let r = dev.server.serve(channel, &gpadls, &mut memory, &mut wire);
                    wire.switch
                        .set_up(dev.spec.port, r.is_ok() && dev.server.is_receiving());
                    r
                }
                None => dev
                    .server
                    .serve(channel, &gpadls, &mut memory, &mut Unplugged),
            };
            if served.is_err() {
                dev.channel = None;
                dev.stage = DeviceStage::Broken;
                self.refused += 1;
            }
        }
    }

    /// Offers a device and makes the event port its channel signals; the
    /// relid.
    fn offer(&mut self, class: Guid, instance: Guid) -> Result<u32, u16> {
        let relid = self
            .host
            .add_offer(OfferParams::new(class, instance))
            .map_err(|_| status::INSUFFICIENT_MEMORY)?;
        let info = PortInfo {
            port_type: port_type::EVENT,
            target_sint: VMBUS_SINT as u32,
            target_vp: 0,
            base_flag_number: (self.slot as u32 * RELIDS_PER_VM + relid) as u16,
            flag_count: 1,
            ..Default::default()
        };
        let made = root_port(
            self.partition,
            event_port(self.partition, relid),
            info,
            CHANNEL_CONNECTION_BASE + relid,
        );
        if made.is_err() {
            let _ = self.host.rescind(relid);
        }
        made.map(|()| relid)
    }

    /// Offers the echo device (at once if the guest is connected); an
    /// error status if the hypervisor refused its port.
    pub fn add_echo(&mut self) -> Result<(), u16> {
        if self.echo.is_some() {
            return Ok(());
        }
        let relid = self.offer(class::ECHO, ECHO_INSTANCE)?;
        self.echo = Some(EchoDevice {
            relid,
            stage: DeviceStage::Offered,
            channel: None,
            server: EchoServer::default(),
            poll: poll_window(),
        });
        Ok(())
    }

    /// Removes the echo device: its channel is no longer served and the
    /// offer is rescinded (the guest sees the device go away and releases
    /// it; an offer the guest never saw just disappears).
    pub fn remove_echo(&mut self) {
        let Some(dev) = self.echo.as_mut() else {
            return;
        };
        if dev.stage == DeviceStage::Rescinded {
            return;
        }
        dev.channel = None;
        let _ = self.host.rescind(dev.relid);
        if self.host.offer(dev.relid).is_some() {
            dev.stage = DeviceStage::Rescinded;
        } else {
            self.echo = None;
        }
    }

    /// A control message the guest posted on `connection`.
    pub fn message(&mut self, connection: u32, bytes: &[u8]) {
        match self.host.handle_message(connection, bytes) {
            Ok(Some(event)) => self.event(event),
            Ok(None) => {}
            Err(_) => self.refused += 1,
        }
        self.host.port().flush();
    }

    fn event(&mut self, event: HostEvent<GuestRing, EventNotifier>) {
        match event {
            HostEvent::Connected { version } => self.version = Some(version),
            HostEvent::ChannelOpened {
                relid, mut channel, ..
            } => {
                if let Some(dev) = self.echo.as_mut().filter(|d| d.relid == relid) {
                    channel.reader().set_max_packet(echo::MAX_PACKET);
                    dev.channel = Some(channel);
                    dev.stage = DeviceStage::Open;
                    dev.server = EchoServer::default();
                    dev.poll = poll_window();
                } else if let Some(dev) = self.storage.as_mut().filter(|d| d.relid == relid) {
                    channel.reader().set_max_packet(storvsp::MAX_PACKET);
                    dev.channel = Some(channel);
                    dev.stage = DeviceStage::Open;
                    dev.server = StorageServer::default();
                    dev.poll = poll_window();
                } else if let Some(dev) = self.nics.iter_mut().find(|d| d.relid == relid) {
                    channel.reader().set_max_packet(netvsp::MAX_PACKET);
                    dev.channel = Some(channel);
                    if dev.stage != DeviceStage::Rescinded {
                        dev.stage = DeviceStage::Open;
                    }
                    dev.server = NetServer::new(dev.spec.mac);
                } else if let Some(ic) = self.integrations.iter_mut().find(|i| i.relid == relid) {
                    channel.reader().set_max_packet(IC_MAX_PACKET);
                    ic.channel = Some(channel);
                    ic.stage = IcStage::Negotiating;
                    let service = ic.service;
                    ic.send(|b, t| ic::negotiate_request(b, service, t));
                }
            }
            HostEvent::ChannelClosed { relid } => {
                if let Some(dev) = self.echo.as_mut().filter(|d| d.relid == relid) {
                    dev.channel = None;
                    if dev.stage != DeviceStage::Rescinded {
                        dev.stage = DeviceStage::Offered;
                    }
                }
                if let Some(dev) = self.storage.as_mut().filter(|d| d.relid == relid) {
                    dev.channel = None;
                    dev.stage = DeviceStage::Offered;
                }
                if let Some(dev) = self.nics.iter_mut().find(|d| d.relid == relid) {
                    dev.channel = None;
                    if dev.stage != DeviceStage::Rescinded {
                        dev.stage = DeviceStage::Offered;
                    }
                }
                if let Some(ic) = self.integrations.iter_mut().find(|i| i.relid == relid) {
                    *ic = Integration::new(ic.service, relid);
                }
            }
            HostEvent::ChannelModified {
                relid, notifier, ..
            } => {
                let ic = self
                    .integrations
                    .iter_mut()
                    .find(|i| i.relid == relid)
                    .and_then(|i| i.channel.as_mut());
                let echo = self
                    .echo
                    .as_mut()
                    .filter(|d| d.relid == relid)
                    .and_then(|d| d.channel.as_mut());
                let storage = self
                    .storage
                    .as_mut()
                    .filter(|d| d.relid == relid)
                    .and_then(|d| d.channel.as_mut());
                let nic = self
                    .nics
                    .iter_mut()
                    .find(|d| d.relid == relid)
                    .and_then(|d| d.channel.as_mut());
                if let Some(ch) = ic.or(echo).or(storage).or(nic) {
                    ch.set_notifier(notifier);
                }
            }
            HostEvent::Unloaded { .. } => {
                self.version = None;
                for ic in &mut self.integrations {
                    *ic = Integration::new(ic.service, ic.relid);
                }
                // A rescinded device is gone with the connection; the
                // others are offered again when the guest reconnects.
                if self
                    .echo
                    .as_ref()
                    .is_some_and(|d| d.stage == DeviceStage::Rescinded)
                {
                    self.echo = None;
                } else if let Some(dev) = self.echo.as_mut() {
                    dev.channel = None;
                    dev.stage = DeviceStage::Offered;
                }
                if let Some(dev) = self.storage.as_mut() {
                    dev.channel = None;
                    dev.stage = DeviceStage::Offered;
                }
                self.nics.retain(|d| d.stage != DeviceStage::Rescinded);
                for dev in &mut self.nics {
                    dev.channel = None;
                    dev.stage = DeviceStage::Offered;
                }
            }
            HostEvent::RelidReleased { relid } => {
                if self.echo.as_ref().is_some_and(|d| d.relid == relid) {
                    self.echo = None;
                }
                self.nics.retain(|d| d.relid != relid);
            }
            HostEvent::GpadlCreated { .. } | HostEvent::GpadlTornDown { .. } => {}
        }
    }

    /// The guest signalled channel `relid`: read what it sent.
    pub fn channel_signalled(
        &mut self,
        relid: u32,
        now: u64,
        clock: (u64, (u64, u64)),
        net: &mut Network,
    ) {
        if self.echo.as_ref().is_some_and(|d| d.relid == relid) {
            self.serve_echo();
            return;
        }
        if self.nics.iter().any(|d| d.relid == relid) {
            self.serve_nics(net);
            return;
        }
        if self.storage.as_ref().is_some_and(|d| d.relid == relid) {
            self.serve_storage();
            return;
        }
        let Some(ic) = self.integrations.iter_mut().find(|i| i.relid == relid) else {
            return;
        };
        // Bounded: a guest that refills the ring as fast as we read it gets
        // its next turn at the next poll.
        for _ in 0..16 {
            let Some(channel) = ic.channel.as_mut() else {
                return;
            };
            let mut reply = [0u8; ic::MAX_MESSAGE];
            let len = match channel.recv() {
                Ok(Some(Ok(p))) if matches!(p.kind, PacketKind::InBand) => {
                    let n = p.payload.len().min(reply.len());
                    reply[..n].copy_from_slice(&p.payload[..n]);
                    n
                }
                Ok(Some(_)) => {
                    self.refused += 1;
                    continue;
                }
                Ok(None) => return,
                Err(_) => {
                    // A corrupt ring: the channel is unusable.
                    ic.channel = None;
                    ic.stage = IcStage::Failed(IcError::Truncated);
                    self.refused += 1;
                    return;
                }
            };
            match ic::parse_reply(&reply[..len]) {
                Ok(r) => answer(ic, &r, now, clock),
                Err(_) => self.refused += 1,
            }
        }
    }

    /// Whether `tick` has anything to look after: a guest connected
    /// (channels, integration services, removals), or messages queued for
    /// its SynIC. Without either there is no channel to serve or time.
    pub fn needs_tick(&self) -> bool {
        self.version.is_some() || !self.host.port_ref().outbox.is_empty()
    }

    /// Whether this bus has work that waits for a tick within the quiet
    /// tick: messages its SynIC could not take yet, a shutdown request its
    /// service cannot take yet, an adapter being removed, frames waiting
    /// at an adapter's switch port. Without any, what the tick does can
    /// wait for the sleepy tick (heartbeats and time samples are a second
    /// apart or more; a guest signals what it sends).
    pub fn wants_tick_soon(&self, net: &Network) -> bool {
        let frames_wait = |d: &NetDevice| {
            net.switch(d.spec.switch)
                .and_then(|s| s.port(d.spec.port))
                .is_some_and(|p| p.queued() > 0)
        };
        !self.host.port_ref().outbox.is_empty()
            || self.shutdown_wanted
            || self
                .nics
                .iter()
                .any(|d| d.removing.is_some() || frames_wait(d))
    }

    /// Periodic work: heartbeats and time samples, and posting what the
    /// guest's queue could not take before.
    pub fn tick(&mut self, now: u64, tsc_hz: u64, host_time: (u64, u64), net: &mut Network) {
        self.host.port().flush();
        self.send_shutdown();
        self.serve_echo();
        self.serve_storage();
        self.serve_nics(net);
        // Adapters being removed: rescinded once quiet, or at their deadline.
        for i in (0..self.nics.len()).rev() {
            let dev = &mut self.nics[i];
            let Some(deadline) = dev.removing else {
                continue;
            };
            // The guest has read everything we wrote to it.
            let ring_drained = dev.channel.as_mut().is_none_or(|c| {
                let w = c.writer();
                let size = w.size();
                w.free().is_ok_and(|f| f == size)
            });
            if (dev.server.quiescent() && ring_drained) || now >= deadline {
                self.rescind_nic(i);
            }
        }
        for ic in &mut self.integrations {
            let IcStage::Ready(version) = ic.stage else {
                continue;
            };
            let period = match ic.service {
                Service::Heartbeat => HEARTBEAT_PERIOD_S,
                Service::TimeSync => TIMESYNC_PERIOD_S,
                Service::Shutdown => continue,
            };
            if now.wrapping_sub(ic.last_sent) < period * tsc_hz {
                continue;
            }
            if ic.service == Service::Heartbeat {
                ic.last_sent = now;
                ic.seq += 1;
                let seq = ic.seq;
                ic.send(|b, t| ic::heartbeat_request(b, version, seq, t));
            } else {
                send_time(ic, version, now, tsc_hz, host_time, ic::TIMESYNC_SAMPLE);
            }
        }
    }

    /// Whether a channel is polled (its guest is not signalling it): the
    /// root must look at it again soon, not sleep. Second: whether one
    /// caught packets in this period (polling pays).
    pub fn polling(&self) -> (bool, bool) {
        let polled = |c: &Option<Channel<GuestRing, EventNotifier>>, w: &PollWindow| {
            (c.as_ref().is_some_and(|c| c.polled()), w.paying())
        };
        let echo = self
            .echo
            .as_ref()
            .map_or((false, false), |d| polled(&d.channel, &d.poll));
        let storage = self
            .storage
            .as_ref()
            .map_or((false, false), |d| polled(&d.channel, &d.poll));
        (echo.0 || storage.0, echo.1 || storage.1)
    }

    /// Looks at the polled channels again.
    pub fn serve_polled(&mut self) {
        self.serve_echo();
        self.serve_storage();
    }

    /// Answers the echo device's packets (after a signal, at every tick: a
    /// guest that kept its ring full gets served without signalling, and
    /// at every poll while the channel is polled).
    fn serve_echo(&mut self) {
        let Some(dev) = self.echo.as_mut() else {
            return;
        };
        let server = &mut dev.server;
        let broke = serve_device(&mut dev.channel, &mut dev.stage, &mut dev.poll, |ch| {
            let before = server.answered + server.refused;
            server.serve(ch, world_switches)?;
            Ok(server.answered + server.refused - before)
        });
        self.refused += u64::from(broke);
    }

    /// Serves the SCSI controller's requests (as the echo device).
    fn serve_storage(&mut self) {
        let Some(dev) = self.storage.as_mut() else {
            return;
        };
        let mut memory = GuestMemoryBlock::new(self.memory.0, self.memory.1);
        let (server, disks) = (&mut dev.server, &mut dev.disks);
        let broke = serve_device(&mut dev.channel, &mut dev.stage, &mut dev.poll, |ch| {
            let before = server.completed + server.refused;
            server.serve(ch, disks, &mut memory)?;
            Ok(server.completed + server.refused - before)
        });
        self.refused += u64::from(broke);
    }

    /// Asks the guest to shut down: at once if its shutdown service is in
    /// use, else as soon as it is (a guest still booting). False if the
    /// guest never connected to VMBus: nothing will ever carry the request.
    pub fn request_shutdown(&mut self) -> bool {
        if self.version.is_none() {
            return false;
        }
        self.shutdown_wanted = true;
        self.send_shutdown();
        true
    }

    fn send_shutdown(&mut self) {
        let Some(ic) = self
            .integrations
            .iter_mut()
            .find(|i| i.service == Service::Shutdown)
        else {
            return;
        };
        if let IcStage::Ready(version) = ic.stage {
            if self.shutdown_wanted && ic.send(|b, t| ic::shutdown_request(b, version, 0, t)) {
                self.shutdown_wanted = false;
            }
        }
    }

    /// Host messages dropped: the guest's SynIC was off, or its queue full
    /// for too long.
    pub fn dropped(&self) -> u64 {
        self.host.port_ref().dropped
    }

    /// Whether every integration service is negotiated and in use.
    pub fn all_in_use(&self) -> bool {
        self.integrations
            .iter()
            .all(|i| matches!(i.stage, IcStage::Ready(_)))
    }

    /// The heartbeat's verdict, in Hyper-V's words.
    pub fn status(&self, now: u64, tsc_hz: u64) -> &'static str {
        let Some(hb) = self
            .integrations
            .iter()
            .find(|i| i.service == Service::Heartbeat)
        else {
            return "No contact";
        };
        match (hb.stage, hb.last_answer) {
            (IcStage::Ready(_), Some(t)) if now.wrapping_sub(t) <= HEARTBEAT_GRACE_S * tsc_hz => {
                "Operating normally"
            }
            (_, Some(_)) => "Lost communication",
            _ => "No contact",
        }
    }
}

/// A time sample: the host's time now (FILETIME) with the reference
/// counter's reading at the same moment.
fn send_time(
    ic: &mut Integration,
    version: Version,
    now: u64,
    tsc_hz: u64,
    host_time: (u64, u64),
    flags: u8,
) {
    let (seconds_then, tsc_then) = host_time;
    let elapsed = now.wrapping_sub(tsc_then);
    let secs = seconds_then + elapsed / tsc_hz;
    let frac = ((elapsed % tsc_hz) as u128 * 10_000_000 / tsc_hz as u128) as u64;
    // SAFETY: TIME_REF_COUNT, which the hypervisor grants the root.
    let reference = unsafe { crate::arch::rdmsr(hv_abi::msr::TIME_REF_COUNT) };
    let parent = ic::filetime(secs, frac);
    ic.last_sent = now;
    ic.send(|b, t| ic::timesync_request(b, version, parent, reference, flags, t));
}

/// The guest's answer on an integration service's channel.
/// `clock`: the TSC rate and the host's time (Unix seconds, TSC then).
fn answer(ic: &mut Integration, r: &ic::Reply<'_>, now: u64, clock: (u64, (u64, u64))) {
    match ic.stage {
        IcStage::Negotiating => match ic::negotiated(ic.service, r) {
            Ok((_, message)) => {
                ic.stage = IcStage::Ready(message);
                if ic.service == Service::TimeSync {
                    // The first sample steps the guest's clock.
                    let (tsc_hz, host_time) = clock;
                    send_time(ic, message, now, tsc_hz, host_time, ic::TIMESYNC_SYNC);
                }
            }
            Err(e) => ic.stage = IcStage::Failed(e),
        },
        IcStage::Ready(_) => match ic.service {
            Service::Heartbeat => {
                if ic::heartbeat_reply(r) == Ok(ic.seq + 1) {
                    ic.last_answer = Some(now);
                }
            }
            Service::Shutdown => {
                if r.kind == ic::kind::SHUTDOWN && r.status == ic::S_OK {
                    ic.accepted = true;
                }
            }
            Service::TimeSync => {}
        },
        IcStage::Offered | IcStage::Failed(_) => {}
    }
}
