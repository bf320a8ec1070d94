//! Connection, subflow and listener events of the `mptcp_pm_events` group
//! (what `ip mptcp monitor` prints).

use std::{
    collections::VecDeque,
    fmt,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    time::{Duration, Instant},
};

use netlink_packet_core::{
    NetlinkPayload, parse_i32, parse_ip, parse_u8, parse_u16, parse_u16_be, parse_u32,
};
use netlink_packet_generic::GenlMessage;
use netlink_sys::protocols::NETLINK_GENERIC;

use super::{
    Family,
    error::{Error, Result},
    message::EventMessage,
    transport::Transport,
};
use crate::sys::pm::*;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A connection was created (SYN sent or received); not yet established.
    Created,
    /// The connection is established: the MPTCP handshake completed.
    Established,
    /// The connection is closed.
    Closed,
    /// The peer announced an address (`ADD_ADDR`).
    Announced,
    /// The peer withdrew an address (`REMOVE_ADDR`).
    Removed,
    /// A new subflow is established.
    SubflowEstablished,
    /// A subflow is closed.
    SubflowClosed,
    /// A subflow's backup priority changed (`MP_PRIO`).
    SubflowPriority,
    /// An MPTCP listener socket was created.
    ListenerCreated,
    /// An MPTCP listener socket was closed.
    ListenerClosed,
    /// An event type this code does not know (from a newer kernel).
    Unknown(u8),
}

impl EventKind {
    fn from_raw(kind: u8) -> Self {
        match kind {
            MPTCP_EVENT_CREATED => EventKind::Created,
            MPTCP_EVENT_ESTABLISHED => EventKind::Established,
            MPTCP_EVENT_CLOSED => EventKind::Closed,
            MPTCP_EVENT_ANNOUNCED => EventKind::Announced,
            MPTCP_EVENT_REMOVED => EventKind::Removed,
            MPTCP_EVENT_SUB_ESTABLISHED => EventKind::SubflowEstablished,
            MPTCP_EVENT_SUB_CLOSED => EventKind::SubflowClosed,
            MPTCP_EVENT_SUB_PRIORITY => EventKind::SubflowPriority,
            MPTCP_EVENT_LISTENER_CREATED => EventKind::ListenerCreated,
            MPTCP_EVENT_LISTENER_CLOSED => EventKind::ListenerClosed,
            other => EventKind::Unknown(other),
        }
    }

    /// The name `ip mptcp monitor` prints.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Created => "CREATED",
            EventKind::Established => "ESTABLISHED",
            EventKind::Closed => "CLOSED",
            EventKind::Announced => "ANNOUNCED",
            EventKind::Removed => "REMOVED",
            EventKind::SubflowEstablished => "SF_ESTABLISHED",
            EventKind::SubflowClosed => "SF_CLOSED",
            EventKind::SubflowPriority => "SF_PRIO",
            EventKind::ListenerCreated => "LISTENER_CREATED",
            EventKind::ListenerClosed => "LISTENER_CLOSED",
            EventKind::Unknown(_) => "UNKNOWN",
        }
    }
}

/// The `MPTCP_ATTR_FLAGS` bits of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EventFlags(pub u16);

impl EventFlags {
    /// The peer refuses subflows towards its initial address (id 0).
    pub const DENY_JOIN_ID0: Self = Self(MPTCP_PM_EV_FLAG_DENY_JOIN_ID0);
    /// This host accepted the connection.
    pub const SERVER_SIDE: Self = Self(MPTCP_PM_EV_FLAG_SERVER_SIDE);

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// One path-manager event with every attribute the kernel attached.
/// Which fields are set depends on the kind: connection events carry the
/// addresses of their first subflow, subflow events those of the subflow,
/// `Announced` the announced address in `remote`, listener events the
/// listening address in `local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The connection token (not on listener events).
    pub token: Option<u32>,
    /// Local address id.
    pub local_id: Option<u8>,
    /// Remote address id.
    pub remote_id: Option<u8>,
    /// Local address and port.
    pub local: Option<SocketAddr>,
    /// Remote address and port.
    pub remote: Option<SocketAddr>,
    /// Whether the subflow is a backup.
    pub backup: Option<bool>,
    /// The subflow's socket error, if it had one.
    pub error: Option<u8>,
    /// Flags of the connection.
    pub flags: EventFlags,
    /// This host accepted the connection (from the flags or the older
    /// `MPTCP_ATTR_SERVER_SIDE` attribute).
    pub server_side: bool,
    /// Announcement timeout.
    pub timeout: Option<u32>,
    /// Interface the subflow is bound to.
    pub ifindex: Option<i32>,
    /// Why the subflow was reset (`MPTCP_RST_*`).
    pub reset_reason: Option<u32>,
    /// Flags of the reset.
    pub reset_flags: Option<u32>,
}

impl Event {
    fn from_message(message: &EventMessage) -> Result<Self> {
        let mut event = Event {
            kind: EventKind::from_raw(message.kind),
            token: None,
            local_id: None,
            remote_id: None,
            local: None,
            remote: None,
            backup: None,
            error: None,
            flags: EventFlags::default(),
            server_side: false,
            timeout: None,
            ifindex: None,
            reset_reason: None,
            reset_flags: None,
        };
        let (mut saddr, mut daddr, mut sport, mut dport) = (None, None, 0, 0);
        let decode = |e: netlink_packet_core::DecodeError| Error::Decode(e.to_string());
        for (kind, v) in &message.attrs {
            let v = v.as_slice();
            match *kind {
                MPTCP_ATTR_TOKEN => event.token = Some(parse_u32(v).map_err(decode)?),
                MPTCP_ATTR_LOC_ID => event.local_id = Some(parse_u8(v).map_err(decode)?),
                MPTCP_ATTR_REM_ID => event.remote_id = Some(parse_u8(v).map_err(decode)?),
                MPTCP_ATTR_SADDR4 | MPTCP_ATTR_SADDR6 => saddr = Some(parse_ip(v).map_err(decode)?),
                MPTCP_ATTR_DADDR4 | MPTCP_ATTR_DADDR6 => daddr = Some(parse_ip(v).map_err(decode)?),
                MPTCP_ATTR_SPORT => sport = parse_u16_be(v).map_err(decode)?,
                MPTCP_ATTR_DPORT => dport = parse_u16_be(v).map_err(decode)?,
                MPTCP_ATTR_BACKUP => event.backup = Some(parse_u8(v).map_err(decode)? != 0),
                MPTCP_ATTR_ERROR => event.error = Some(parse_u8(v).map_err(decode)?),
                MPTCP_ATTR_FLAGS => event.flags = EventFlags(parse_u16(v).map_err(decode)?),
                MPTCP_ATTR_TIMEOUT => event.timeout = Some(parse_u32(v).map_err(decode)?),
                MPTCP_ATTR_IF_IDX => event.ifindex = Some(parse_i32(v).map_err(decode)?),
                MPTCP_ATTR_RESET_REASON => event.reset_reason = Some(parse_u32(v).map_err(decode)?),
                MPTCP_ATTR_RESET_FLAGS => event.reset_flags = Some(parse_u32(v).map_err(decode)?),
                MPTCP_ATTR_SERVER_SIDE => event.server_side |= parse_u8(v).map_err(decode)? != 0,
                _ => {} // MPTCP_ATTR_FAMILY is implied by the addresses
            }
        }
        event.server_side |= event.flags.contains(EventFlags::SERVER_SIDE);
        event.local = saddr.map(|ip: IpAddr| SocketAddr::new(ip, sport));
        event.remote = daddr.map(|ip: IpAddr| SocketAddr::new(ip, dport));
        Ok(event)
    }
}

impl fmt::Display for Event {
    /// One line in the spirit of `ip mptcp monitor`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:>16}]", self.kind.name())?;
        if let Some(token) = self.token {
            write!(f, " token={token:08x}")?;
        }
        if let Some(id) = self.remote_id {
            write!(f, " remid={id}")?;
        }
        if let Some(id) = self.local_id {
            write!(f, " locid={id}")?;
        }
        if let Some(local) = self.local {
            write!(f, " local={local}")?;
        }
        if let Some(remote) = self.remote {
            write!(f, " remote={remote}")?;
        }
        if let Some(backup) = self.backup {
            write!(f, " backup={}", u8::from(backup))?;
        }
        if let Some(error) = self.error {
            write!(f, " error={error}")?;
        }
        if let Some(ifindex) = self.ifindex {
            write!(f, " ifindex={ifindex}")?;
        }
        if let Some(reason) = self.reset_reason {
            write!(f, " reset_reason={reason}")?;
        }
        if let Some(flags) = self.reset_flags {
            write!(f, " reset_flags={flags:#x}")?;
        }
        if let Some(timeout) = self.timeout {
            write!(f, " timeout={timeout}")?;
        }
        if self.server_side {
            f.write_str(" server_side")?;
        }
        if self.flags.contains(EventFlags::DENY_JOIN_ID0) {
            f.write_str(" deny_join_id0")?;
        }
        Ok(())
    }
}

/// A subscription to the path-manager events of the calling thread's
/// network namespace. Needs CAP_NET_ADMIN.
///
/// [`next_event`](Self::next_event) blocks; C and poll users can wait for
/// readability on the descriptor ([`AsFd`]) and then call
/// [`next_event_timeout`](Self::next_event_timeout) with a zero timeout.
#[derive(Debug)]
pub struct EventListener {
    transport: Transport,
    pending: VecDeque<Event>,
}

impl EventListener {
    /// Subscribes to `mptcp_pm_events`.
    pub fn subscribe() -> Result<Self> {
        let mut transport = Transport::open(NETLINK_GENERIC)?;
        let family = Family::resolve(&mut transport)?;
        let group = family.events_group.ok_or_else(|| {
            Error::FamilyNotFound(format!("{MPTCP_PM_EV_GRP_NAME:?} multicast group"))
        })?;
        // A larger buffer loses fewer events in bursts; the default still works.
        let _ = transport.socket().set_rx_buf_sz(1 << 20);
        transport
            .socket()
            .add_membership(group)
            .map_err(|e| Error::io("cannot join the mptcp_pm_events group", e))?;
        Ok(EventListener {
            transport,
            pending: VecDeque::new(),
        })
    }

    /// Blocks until the next event.
    pub fn next_event(&mut self) -> Result<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            self.receive()?;
        }
    }

    /// Waits at most `timeout` for the next event; `None` when none came.
    pub fn next_event_timeout(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.transport.wait_readable(left)? {
                return Ok(None);
            }
            self.receive()?;
        }
    }

    fn receive(&mut self) -> Result<()> {
        let messages = self.transport.receive::<GenlMessage<EventMessage>>()?;
        for message in messages {
            if let NetlinkPayload::InnerMessage(genl) = message.payload {
                self.pending.push_back(Event::from_message(&genl.payload)?);
            }
        }
        Ok(())
    }
}

impl Iterator for EventListener {
    type Item = Result<Event>;

    /// Blocks for the next event; never ends by itself.
    fn next(&mut self) -> Option<Result<Event>> {
        Some(self.next_event())
    }
}

impl AsFd for EventListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.transport.socket().as_fd()
    }
}

impl AsRawFd for EventListener {
    fn as_raw_fd(&self) -> RawFd {
        self.transport.socket().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_network_order_and_addresses_pair_with_them() {
        let message = EventMessage {
            kind: MPTCP_EVENT_SUB_ESTABLISHED,
            attrs: vec![
                (MPTCP_ATTR_TOKEN, 0x1234_5678u32.to_ne_bytes().to_vec()),
                (MPTCP_ATTR_SADDR4, vec![198, 18, 1, 1]),
                (MPTCP_ATTR_DADDR4, vec![198, 18, 0, 2]),
                (MPTCP_ATTR_SPORT, 40000u16.to_be_bytes().to_vec()),
                (MPTCP_ATTR_DPORT, 5201u16.to_be_bytes().to_vec()),
                (MPTCP_ATTR_LOC_ID, vec![1]),
                (MPTCP_ATTR_REM_ID, vec![0]),
                (MPTCP_ATTR_BACKUP, vec![0]),
                (
                    MPTCP_ATTR_FLAGS,
                    MPTCP_PM_EV_FLAG_SERVER_SIDE.to_ne_bytes().to_vec(),
                ),
            ],
        };
        let event = Event::from_message(&message).unwrap();
        assert_eq!(event.kind, EventKind::SubflowEstablished);
        assert_eq!(event.token, Some(0x1234_5678));
        assert_eq!(event.local, Some("198.18.1.1:40000".parse().unwrap()));
        assert_eq!(event.remote, Some("198.18.0.2:5201".parse().unwrap()));
        assert_eq!(
            (event.local_id, event.remote_id, event.backup),
            (Some(1), Some(0), Some(false))
        );
        assert!(event.server_side);
        assert_eq!(
            event.to_string(),
            "[  SF_ESTABLISHED] token=12345678 remid=0 locid=1 local=198.18.1.1:40000 \
             remote=198.18.0.2:5201 backup=0 server_side"
        );
    }
}
