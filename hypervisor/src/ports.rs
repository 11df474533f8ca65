//! Ports and connections (TLFS "Inter-Partition Communication"): how one
//! partition sends messages and events to another. The root creates a port
//! in a partition (its own, or a guest's): where what arrives goes, a SINT
//! of one of that partition's VPs. It then connects a partition to it: that
//! partition's connection id leads to the port, and HvPostMessage and
//! HvSignalEvent on the id deliver through it. A connection id means
//! nothing outside the partition that holds it, so a guest reaches exactly
//! the ports the root connected it to.
//!
//! The root also sends straight to a guest VP's SINT (PostMessageDirect,
//! SignalEventDirect): its VMBus server answers on the VP the guest names.
//! In the tables the root is partition 0. A message that came through a
//! port carries the port's id as its origin (TLFS `HV_MESSAGE` header);
//! one the root sent directly carries 0.
use crate::partition::{input_as as input, partition_arg, vp_arg, GuestVp, Partition};
use crate::partition_memory::PartitionMemory;
use crate::root::RootPartition;
use crate::synic::{self, Refused, RootVp, QUEUE_PER_SENDER};
use alloc::vec::Vec;
use hv_abi::hypercall::status;
use hv_abi::layout::{
    ConnectPort, CreatePort, DeletePort, DisconnectPort, IntoBytes, PostMessage, PostMessageDirect,
    SignalEvent, SignalEventDirect, SignalEventDirectOutput,
};
use hv_abi::partition::{port_type, MAX_VPS, PARTITION_SELF};
use hv_abi::synic::{Message, EVENT_FLAGS_PER_SINT, PAYLOAD_MAX, SLOT_SIZE};
use spin::Mutex;

/// The root's partition id in the tables and as a message's sender.
pub const ROOT: u64 = 0;
/// Most ports, and most connections, at once (all partitions together).
pub const MAX_PORTS: usize = 4096;
pub const MAX_CONNECTIONS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Message,
    /// Flags `base .. base + count` of the SINT's event flags.
    Event {
        base: u32,
        count: u32,
    },
}

#[derive(Clone, Copy)]
struct Port {
    partition: u64,
    id: u32,
    /// The one partition that may connect to it.
    connector: u64,
    sint: usize,
    vp: u32,
    kind: Kind,
}

#[derive(Clone, Copy)]
struct Connection {
    partition: u64,
    id: u32,
    port_partition: u64,
    port_id: u32,
}

/// A guest VP: its pages through its partition's second-level tables.
pub struct GuestVpOwner<'a>(pub &'a RootPartition, pub &'a Partition, pub &'a GuestVp);

impl synic::Owner for GuestVpOwner<'_> {
    fn page(&self, gpa: u64) -> Option<u64> {
        match self.1.translate(gpa) {
            Some((spa, perms)) if perms.write => Some(spa),
            _ => None,
        }
    }
    fn memory(&self) -> PartitionMemory<'_> {
        self.0.memory()
    }
    fn raise(&self, vector: u8) {
        let _ = self.2.post_interrupt(vector);
    }
}

static PORTS: Mutex<Vec<Port>> = Mutex::new(Vec::new());
static CONNECTIONS: Mutex<Vec<Connection>> = Mutex::new(Vec::new());

/// The root's port calls; `None` if `code` is not one.
pub fn call(
    root: &RootPartition,
    code: u16,
    input: &[u8],
    output: &mut [u8],
) -> Option<Result<usize, u16>> {
    use hv_abi::partition::code::*;
    Some(match code {
        CREATE_PORT => create_port(root, input),
        DELETE_PORT => delete_port(input),
        CONNECT_PORT => connect_port(input),
        DISCONNECT_PORT => disconnect_port(input),
        POST_MESSAGE => post_message(root, ROOT, input),
        SIGNAL_EVENT => signal_event(root, ROOT, input),
        POST_MESSAGE_DIRECT => post_message_direct(root, input),
        SIGNAL_EVENT_DIRECT => signal_event_direct(root, input, output),
        _ => return None,
    })
}

/// Adds `item` to `table` unless an entry `taken` holds for is there
/// (`in_use`) or the table is full.
fn add<T>(
    table: &mut Vec<T>,
    max: usize,
    taken: impl Fn(&T) -> bool,
    in_use: u16,
    item: T,
) -> Result<usize, u16> {
    if table.iter().any(taken) {
        return Err(in_use);
    }
    if table.len() >= max {
        return Err(status::INSUFFICIENT_MEMORY);
    }
    table.push(item);
    Ok(0)
}

/// Removes the entries `gone` holds for; `missing` if there was none.
fn remove<T>(table: &mut Vec<T>, gone: impl Fn(&T) -> bool, missing: u16) -> Result<usize, u16> {
    let before = table.len();
    table.retain(|t| !gone(t));
    if table.len() == before {
        return Err(missing);
    }
    Ok(0)
}

/// A partition id from the root's input: HV_PARTITION_ID_SELF is the root;
/// any other must name an existing partition.
fn partition_id(id: u64) -> Result<u64, u16> {
    match id {
        PARTITION_SELF | ROOT => Ok(ROOT),
        id => partition_arg(id).map(|p| p.id),
    }
}

/// HvCreatePort.
pub fn create_port(root: &RootPartition, bytes: &[u8]) -> Result<usize, u16> {
    let c: CreatePort = input(bytes)?;
    let partition = partition_id(c.port_partition)?;
    let connector = partition_id(c.connection_partition)?;
    let info = c.port_info;
    let vps = if partition == ROOT {
        root.vp_count
    } else {
        MAX_VPS
    };
    if c.port_vtl != 0
        || c.min_connection_vtl != 0
        || info.target_sint >= 16
        || info.target_vp >= vps
    {
        return Err(status::INVALID_PARAMETER);
    }
    let kind = match info.port_type {
        port_type::MESSAGE => Kind::Message,
        port_type::EVENT => {
            let (base, count) = (u32::from(info.base_flag_number), u32::from(info.flag_count));
            if count == 0 || base + count > EVENT_FLAGS_PER_SINT {
                return Err(status::INVALID_PARAMETER);
            }
            Kind::Event { base, count }
        }
        _ => return Err(status::INVALID_PARAMETER),
    };
    add(
        &mut PORTS.lock(),
        MAX_PORTS,
        |p| p.partition == partition && p.id == c.port_id,
        status::INVALID_PORT_ID,
        Port {
            partition,
            id: c.port_id,
            connector,
            sint: info.target_sint as usize,
            vp: info.target_vp,
            kind,
        },
    )
}

/// HvDeletePort: the port and every connection to it go.
pub fn delete_port(bytes: &[u8]) -> Result<usize, u16> {
    let d: DeletePort = input(bytes)?;
    let partition = partition_id(d.port_partition)?;
    remove(
        &mut PORTS.lock(),
        |p| p.partition == partition && p.id == d.port_id,
        status::INVALID_PORT_ID,
    )?;
    CONNECTIONS
        .lock()
        .retain(|c| !(c.port_partition == partition && c.port_id == d.port_id));
    Ok(0)
}

/// HvConnectPort.
pub fn connect_port(bytes: &[u8]) -> Result<usize, u16> {
    let c: ConnectPort = input(bytes)?;
    let partition = partition_id(c.connection_partition)?;
    let port_partition = partition_id(c.port_partition)?;
    if c.connection_vtl != 0 {
        return Err(status::INVALID_PARAMETER);
    }
    let port = find_port(port_partition, c.port_id)?;
    if port.connector != partition {
        return Err(status::ACCESS_DENIED);
    }
    let expected = match port.kind {
        Kind::Message => port_type::MESSAGE,
        Kind::Event { .. } => port_type::EVENT,
    };
    if c.connection_info.port_type != expected {
        return Err(status::INVALID_PARAMETER);
    }
    add(
        &mut CONNECTIONS.lock(),
        MAX_CONNECTIONS,
        |x| x.partition == partition && x.id == c.connection_id,
        status::INVALID_CONNECTION_ID,
        Connection {
            partition,
            id: c.connection_id,
            port_partition,
            port_id: c.port_id,
        },
    )
}

/// HvDisconnectPort.
pub fn disconnect_port(bytes: &[u8]) -> Result<usize, u16> {
    let d: DisconnectPort = input(bytes)?;
    let partition = partition_id(d.connection_partition)?;
    remove(
        &mut CONNECTIONS.lock(),
        |c| c.partition == partition && c.id == d.connection_id,
        status::INVALID_CONNECTION_ID,
    )
}

/// A deleted partition's ports and connections, and the connections to its
/// ports, go with it.
pub fn forget(partition: u64) {
    PORTS
        .lock()
        .retain(|p| p.partition != partition && p.connector != partition);
    CONNECTIONS
        .lock()
        .retain(|c| c.partition != partition && c.port_partition != partition);
}

fn find_port(partition: u64, id: u32) -> Result<Port, u16> {
    PORTS
        .lock()
        .iter()
        .find(|p| p.partition == partition && p.id == id)
        .copied()
        .ok_or(status::INVALID_PORT_ID)
}

/// The port behind connection `id` of partition `from`.
fn through(from: u64, id: u32) -> Result<Port, u16> {
    let c = CONNECTIONS
        .lock()
        .iter()
        .find(|c| c.partition == from && c.id == id)
        .copied()
        .ok_or(status::INVALID_CONNECTION_ID)?;
    // A port deleted under its connection leaves nothing to deliver to.
    find_port(c.port_partition, c.port_id).map_err(|_| status::INVALID_CONNECTION_ID)
}

fn refused(r: Refused) -> u16 {
    match r {
        Refused::Disabled => status::INVALID_SYNIC_STATE,
        Refused::Full => status::INSUFFICIENT_BUFFERS,
    }
}

/// Runs `f` on the SynIC of VP `vp` of `partition` with its owner.
fn with_synic<T>(
    root: &RootPartition,
    partition: u64,
    vp: u32,
    f: impl FnOnce(&synic::SynIc, &dyn synic::Owner) -> Result<T, Refused>,
) -> Result<T, u16> {
    if partition == ROOT {
        if vp >= root.vp_count {
            return Err(status::INVALID_VP_INDEX);
        }
        return f(synic::root_synic(vp), &RootVp(root, vp)).map_err(refused);
    }
    let part = partition_arg(partition)?;
    let target = vp_arg(&part, vp)?;
    f(&target.synic, &GuestVpOwner(root, &part, &target)).map_err(refused)
}

/// A message of `kind` (not one of the hypervisor's: below 0x80000000, not
/// 0) with origin `origin`; the payload at most 240 bytes.
fn message(origin: u64, kind: u32, payload: &[u8]) -> Result<Message, u16> {
    if kind == 0 || kind >= 0x8000_0000 || payload.len() > PAYLOAD_MAX {
        return Err(status::INVALID_PARAMETER);
    }
    Ok(slot_message(origin, kind, payload))
}

/// A message as it goes into a slot, of any type; `payload` is at most 240
/// bytes (the callers' checks or their fixed layouts).
fn slot_message(origin: u64, kind: u32, payload: &[u8]) -> Message {
    let mut m = Message {
        kind,
        flags: 0,
        sender: origin,
        size: payload.len() as u8,
        payload: [0; PAYLOAD_MAX],
    };
    m.payload[..payload.len()].copy_from_slice(payload);
    m
}

/// Origins of synthetic timer messages: one per timer, so the per-sender
/// queue limit keeps at most one expiry of each waiting.
const TIMER_ORIGIN: u64 = u64::MAX - 16;

/// A synthetic timer's TimerExpired message into SINT `sint` of a guest VP.
/// A guest that does not keep up loses expiries (one of each timer waits),
/// never hypervisor memory; a masked SINT gets nothing.
pub fn post_timer_expired(
    root: &RootPartition,
    part: &Partition,
    vp: &GuestVp,
    sint: u8,
    index: u32,
    times: (u64, u64),
) {
    use hypervisor_core::stimer::{Expiry, TIMER_EXPIRED};
    let payload = Expiry::payload(index, times.0, times.1);
    let m = slot_message(TIMER_ORIGIN + u64::from(index), TIMER_EXPIRED, &payload);
    let _ = vp.synic.post(
        &GuestVpOwner(root, part, vp),
        usize::from(sint),
        &m,
        Some(1),
    );
}

/// HvPostMessage from partition `from` (input: the 256-byte block).
pub fn post_message(root: &RootPartition, from: u64, bytes: &[u8]) -> Result<usize, u16> {
    let p: PostMessage = input(bytes)?;
    let size = p.payload_size as usize;
    if size > PAYLOAD_MAX {
        return Err(status::INVALID_PARAMETER);
    }
    let at = core::mem::size_of::<PostMessage>();
    let payload = bytes.get(at..at + size).ok_or(status::INVALID_PARAMETER)?;
    let port = through(from, p.connection_id)?;
    // TLFS: a port message names the port it arrived on, which tells the
    // receiver who sent it (only the connected partition can).
    let m = message(u64::from(port.id), p.message_type, payload)?;
    if port.kind != Kind::Message {
        return Err(status::INVALID_CONNECTION_ID);
    }
    with_synic(root, port.partition, port.vp, |s, o| {
        s.post(o, port.sint, &m, Some(QUEUE_PER_SENDER))
    })?;
    Ok(0)
}

/// HvSignalEvent from partition `from` (input: connection id and flag,
/// from memory or RDX).
pub fn signal_event(root: &RootPartition, from: u64, bytes: &[u8]) -> Result<usize, u16> {
    let e: SignalEvent = input(bytes)?;
    let port = through(from, e.connection_id)?;
    let Kind::Event { base, count } = port.kind else {
        return Err(status::INVALID_CONNECTION_ID);
    };
    let flag = u32::from(e.flag_number);
    if flag >= count {
        return Err(status::INVALID_PARAMETER);
    }
    with_synic(root, port.partition, port.vp, |s, o| {
        s.signal(o, port.sint, base + flag)
    })?;
    Ok(0)
}

/// HvPostMessageDirect from the root: the whole `HV_MESSAGE` into SINT
/// `sint` of a guest VP. INSUFFICIENT_BUFFERS when the root's share of the
/// VP's queue is full; INVALID_SYNIC_STATE when the SINT takes no messages.
pub fn post_message_direct(root: &RootPartition, bytes: &[u8]) -> Result<usize, u16> {
    let d: PostMessageDirect = input(bytes)?;
    let at = core::mem::size_of::<PostMessageDirect>();
    let slot: &[u8; SLOT_SIZE] = bytes
        .get(at..at + SLOT_SIZE)
        .and_then(|b| b.try_into().ok())
        .ok_or(status::INVALID_PARAMETER)?;
    let sent = Message::decode(slot);
    if d.vtl != 0 || d.sint >= 16 || usize::from(sent.size) > PAYLOAD_MAX {
        return Err(status::INVALID_PARAMETER);
    }
    let m = message(ROOT, sent.kind, &sent.payload[..usize::from(sent.size)])?;
    let partition = partition_id(d.partition_id)?;
    if partition == ROOT {
        return Err(status::INVALID_PARTITION_ID);
    }
    with_synic(root, partition, d.vp_index, |s, o| {
        s.post(o, d.sint as usize, &m, Some(QUEUE_PER_SENDER))
    })?;
    Ok(0)
}

/// HvSignalEventDirect from the root: flag `flag_number` of SINT `sint` of
/// a guest VP; the output says whether it was clear.
pub fn signal_event_direct(
    root: &RootPartition,
    bytes: &[u8],
    output: &mut [u8],
) -> Result<usize, u16> {
    let d: SignalEventDirect = input(bytes)?;
    if d.vtl != 0 || d.sint >= 16 {
        return Err(status::INVALID_PARAMETER);
    }
    let partition = partition_id(d.partition_id)?;
    if partition == ROOT {
        return Err(status::INVALID_PARTITION_ID);
    }
    let newly = with_synic(root, partition, d.vp_index, |s, o| {
        s.signal(o, usize::from(d.sint), u32::from(d.flag_number))
    })?;
    let out = SignalEventDirectOutput {
        newly_signaled: newly as u8,
        reserved: [0; 7],
    };
    let bytes = out.as_bytes();
    output
        .get_mut(..bytes.len())
        .ok_or(status::INVALID_PARAMETER)?
        .copy_from_slice(bytes);
    Ok(bytes.len())
}
