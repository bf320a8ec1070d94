//! Remote role: one SOCKS5 UDP association (RFC 1928, section 7), the
//! data phase of a connection that asked for UDP ASSOCIATE.
//!
//! An association has two UDP sockets: one facing the client, bound on
//! the address the client reached the relay on (its port is the reply's
//! BND.PORT), and one towards destinations (dual-stack, any address, so
//! that a destination sees one port for all of the client's datagrams, as
//! behind a NAT that maps endpoint-independently). Both are registered in
//! the worker's poll with the connection's tokens; nothing blocks: a
//! datagram a socket does not take is dropped and counted, never queued.
//!
//! The client's datagrams must come from its address (the one in the
//! request, or else the control connection's IP; an unspecified port is
//! fixed by the first datagram). Answers are taken only from destinations
//! the client wrote to within the idle timeout (its flows, at most
//! `udp_max_flows`), and reach the client with the SOCKS5 header naming
//! their sender. Names are resolved by the relay's resolver threads; a few
//! datagrams wait for their name, the rest are dropped.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Interest;
use mio::net::{TcpStream, UdpSocket};

use super::Ctx;
use super::answer::Failure;
use crate::relay::flows::FlowTable;
use crate::relay::policy::{DestinationPolicy, canonical};
use crate::relay::stats::{Counters, ErrorKind, UdpDrop};
use crate::relay::{ResolveRequest, Route, Shared, outbound};
use crate::socks5::{TargetAddr, udp};

/// Datagrams read from each socket per turn before others get theirs.
const DATAGRAM_BUDGET: usize = 64;
/// Room in front of a received answer for its header (IPv6's is longest).
const ANSWER_HEADROOM: usize = 22;
/// Largest UDP payload, and the scratch buffer it is read into.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams at most waiting for their names, per association, and their
/// bytes at most.
const MAX_WAITING: usize = 16;
const MAX_WAITING_BYTES: usize = 64 * 1024;
/// How long a name that did not resolve stays unresolved.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// A name's addresses, or the datagrams waiting for them.
enum Name {
    Waiting(Vec<(u16, Vec<u8>)>),
    Resolved { ips: Vec<IpAddr>, until: Instant },
}

/// The worker's buffer for one datagram at a time, with headroom for a
/// header (one per worker, not per association).
pub(super) struct DatagramBuffer(Vec<u8>);

impl Default for DatagramBuffer {
    fn default() -> Self {
        DatagramBuffer(vec![0; ANSWER_HEADROOM + MAX_DATAGRAM])
    }
}

/// One UDP association.
pub(super) struct Association {
    client_socket: UdpSocket,
    outbound: UdpSocket,
    outbound_v6: bool,
    bound: SocketAddr,
    client_ip: IpAddr,
    /// The client's port, once known.
    client_port: Option<u16>,
    flows: FlowTable<SocketAddr>,
    names: HashMap<String, Name>,
    /// Datagrams waiting for their names, and their bytes.
    waiting: usize,
    waiting_bytes: usize,
    max_names: usize,
    idle: Duration,
    route: Arc<Route>,
    /// The connection's slab key and serial, for the resolver's answers.
    key: usize,
    serial: u64,
    /// For the count of open associations, however this one ends.
    shared: Arc<Shared>,
    worker: usize,
}

/// What a turn of an association came to.
#[derive(Debug, Default)]
pub(super) struct Pumped {
    /// A datagram went through (the association is not idle).
    pub moved: bool,
    /// A socket had more than the budget: run again soon.
    pub budget_exhausted: bool,
}

impl Association {
    /// Opens an association for the client of `control`, which asked to
    /// send from `from` (zeros: unknown), and registers its sockets.
    pub(super) fn open(
        key: usize,
        serial: u64,
        spec: usize,
        control: &TcpStream,
        from: &TargetAddr,
        ctx: &mut Ctx,
    ) -> Result<Association, Failure> {
        let fail = |what: &str, e: io::Error| {
            Failure::new(ErrorKind::Io, format!("UDP association: {what}: {e}"))
        };
        let local = control.local_addr().map_err(|e| fail("local address", e))?;
        let peer = control.peer_addr().map_err(|e| fail("peer address", e))?;
        let (asked_ip, asked_port) = match from {
            TargetAddr::Ip(a) => (Some(canonical(a.ip())), a.port()),
            TargetAddr::Domain(_, port) => (None, *port),
        };
        let client_ip = asked_ip
            .filter(|ip| !ip.is_unspecified())
            .unwrap_or_else(|| canonical(peer.ip()));
        let mut client_socket = UdpSocket::bind(SocketAddr::new(canonical(local.ip()), 0))
            .map_err(|e| fail("binding the client's port", e))?;
        let bound = client_socket
            .local_addr()
            .map_err(|e| fail("client port", e))?;
        let (mut outbound, outbound_v6) =
            outbound::datagram_socket().map_err(|e| fail("outgoing socket", e))?;
        let (_, client_token) = super::conn_tokens(key);
        let registry = &ctx.registry;
        registry
            .register(&mut client_socket, client_token, Interest::READABLE)
            .map_err(|e| fail("register", e))?;
        registry
            .register(&mut outbound, super::udp_token(key), Interest::READABLE)
            .map_err(|e| fail("register", e))?;
        let engine = &ctx.shared.engine;
        Counters::add(&ctx.counters().udp_opened, 1);
        tracing::debug!(client = %peer, %bound, "relay: UDP association");
        Ok(Association {
            client_socket,
            outbound,
            outbound_v6,
            bound,
            client_ip,
            client_port: (asked_port != 0).then_some(asked_port),
            flows: FlowTable::new(engine.udp_max_flows, engine.udp_idle_timeout(), ctx.now),
            names: HashMap::new(),
            waiting: 0,
            waiting_bytes: 0,
            max_names: engine.udp_max_flows,
            idle: engine.udp_idle_timeout(),
            route: Arc::clone(&ctx.specs[spec].route),
            key,
            serial,
            shared: Arc::clone(&ctx.shared),
            worker: ctx.worker,
        })
    }

    /// The client's port at the relay (BND.ADDR and BND.PORT of the reply).
    pub(super) fn bound(&self) -> SocketAddr {
        self.bound
    }

    /// Moves what both sockets have: the client's datagrams on to their
    /// destinations, the answers back to the client.
    pub(super) fn pump(&mut self, ctx: &mut Ctx) -> Pumped {
        let mut buf = std::mem::take(&mut ctx.udp_buf);
        let mut done = Pumped::default();
        for from_client in [true, false] {
            let mut n = 0;
            while n < DATAGRAM_BUDGET {
                let r = if from_client {
                    self.client_datagram(&mut buf.0, ctx)
                } else {
                    self.answer(&mut buf.0, ctx)
                };
                match r {
                    Ok(moved) => done.moved |= moved,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // An ICMP error of an earlier datagram: it is gone.
                    Err(_) => {}
                }
                n += 1;
            }
            done.budget_exhausted |= n == DATAGRAM_BUDGET;
        }
        ctx.udp_buf = buf;
        done
    }

    /// Reads one datagram from the client and sends it on. `Ok(true)`: it
    /// went out.
    fn client_datagram(&mut self, buf: &mut [u8], ctx: &mut Ctx) -> io::Result<bool> {
        let (n, src) = self.client_socket.recv_from(buf)?;
        let counters = &ctx.shared.counters[ctx.worker];
        let src = SocketAddr::new(canonical(src.ip()), src.port());
        if src.ip() != self.client_ip || self.client_port.is_some_and(|p| p != src.port()) {
            counters.udp_drop(UdpDrop::ForeignSource);
            return Ok(false);
        }
        let (dest, at) = match udp::parse(&buf[..n]) {
            Ok(parsed) => parsed,
            Err(udp::HeaderError::Fragment) => {
                counters.udp_drop(UdpDrop::Fragment);
                return Ok(false);
            }
            Err(_) => {
                counters.udp_drop(UdpDrop::Malformed);
                return Ok(false);
            }
        };
        // The first well-formed datagram fixes an unknown client port.
        self.client_port.get_or_insert(src.port());
        let payload = &buf[at..n];
        match dest {
            TargetAddr::Ip(to) => Ok(self.send_out(to, payload, ctx)),
            TargetAddr::Domain(name, port) => Ok(self.send_to_name(name, port, payload, ctx)),
        }
    }

    /// A datagram to a name: sent if its addresses are known, else kept
    /// (a few) until the resolver answers.
    fn send_to_name(&mut self, name: String, port: u16, payload: &[u8], ctx: &mut Ctx) -> bool {
        let counters = &ctx.shared.counters[ctx.worker];
        if let Some(Name::Resolved { ips, until }) = self.names.get(&name)
            && *until > ctx.now
        {
            return match self.pick(ips, ctx) {
                Ok(ip) => self.send_out(SocketAddr::new(ip, port), payload, ctx),
                Err(why) => {
                    counters.udp_drop(why);
                    false
                }
            };
        }
        let room =
            self.waiting < MAX_WAITING && self.waiting_bytes + payload.len() <= MAX_WAITING_BYTES;
        if let Some(Name::Waiting(queue)) = self.names.get_mut(&name) {
            if room {
                queue.push((port, payload.to_vec()));
                self.waiting += 1;
                self.waiting_bytes += payload.len();
            } else {
                counters.udp_drop(UdpDrop::Resolve);
            }
            return false;
        }
        let now = ctx.now;
        if self.names.len() >= self.max_names {
            self.names.retain(|_, n| match n {
                Name::Resolved { until, .. } => *until > now,
                Name::Waiting(_) => true,
            });
        }
        if !room || self.names.len() >= self.max_names {
            counters.udp_drop(UdpDrop::Resolve);
            return false;
        }
        let req = ResolveRequest {
            worker: ctx.worker,
            conn: self.key,
            serial: self.serial,
            name: name.clone(),
            port: 0,
        };
        if ctx.resolve_tx.send(req).is_err() {
            counters.udp_drop(UdpDrop::Resolve);
            return false;
        }
        self.names
            .insert(name, Name::Waiting(vec![(port, payload.to_vec())]));
        self.waiting += 1;
        self.waiting_bytes += payload.len();
        false
    }

    /// The resolver's answer for `name`: the datagrams waiting for it go.
    pub(super) fn resolved(
        &mut self,
        name: String,
        addrs: io::Result<Vec<SocketAddr>>,
        ctx: &mut Ctx,
    ) -> bool {
        let ips: Vec<IpAddr> = addrs
            .map(|a| a.into_iter().map(|a| canonical(a.ip())).collect())
            .unwrap_or_default();
        let ttl = if ips.is_empty() {
            NEGATIVE_TTL
        } else {
            self.idle
        };
        let until = ctx.now + ttl;
        let picked = self.pick(&ips, ctx);
        let Some(Name::Waiting(queue)) = self.names.insert(name, Name::Resolved { ips, until })
        else {
            return false;
        };
        self.waiting -= queue.len();
        self.waiting_bytes -= queue.iter().map(|(_, p)| p.len()).sum::<usize>();
        let mut moved = false;
        for (port, payload) in queue {
            match picked {
                Ok(ip) => moved |= self.send_out(SocketAddr::new(ip, port), &payload, ctx),
                Err(why) => ctx.counters().udp_drop(why),
            }
        }
        moved
    }

    /// The first of a name's addresses the policy allows and the outgoing
    /// socket reaches.
    fn pick(&self, ips: &[IpAddr], ctx: &Ctx) -> Result<IpAddr, UdpDrop> {
        let reachable = || ips.iter().filter(|ip| self.outbound_v6 || ip.is_ipv4());
        reachable()
            .find(|ip| self.policy().allows_from(**ip, &ctx.own_addresses))
            .copied()
            .ok_or(if reachable().next().is_some() {
                UdpDrop::DestinationDenied
            } else {
                UdpDrop::Resolve
            })
    }

    fn policy(&self) -> &DestinationPolicy {
        match &*self.route {
            Route::Direct { policy, .. } => policy,
            Route::Upstream { .. } => unreachable!("associations are the remote role's"),
        }
    }

    /// Sends a client's payload to `to`, if the policy and the flow limit
    /// let it. `true`: it went out.
    fn send_out(&mut self, to: SocketAddr, payload: &[u8], ctx: &Ctx) -> bool {
        let counters = &ctx.shared.counters[ctx.worker];
        let to = SocketAddr::new(canonical(to.ip()), to.port());
        if !self.policy().allows_from(to.ip(), &ctx.own_addresses) {
            counters.udp_drop(UdpDrop::DestinationDenied);
            return false;
        }
        let wire = match to.ip() {
            IpAddr::V4(v4) if self.outbound_v6 => {
                SocketAddr::new(v4.to_ipv6_mapped().into(), to.port())
            }
            IpAddr::V6(_) if !self.outbound_v6 => {
                counters.udp_drop(UdpDrop::SendFailed);
                return false;
            }
            _ => to,
        };
        if !self.flows.outbound(to, ctx.now) {
            counters.udp_drop(UdpDrop::FlowLimit);
            return false;
        }
        match self.outbound.send_to(payload, wire) {
            Ok(_) => {
                Counters::add(&counters.udp_datagrams_up, 1);
                Counters::add(&counters.udp_bytes_up, payload.len() as u64);
                true
            }
            Err(e) => {
                counters.udp_drop(send_failure(&e));
                false
            }
        }
    }

    /// Reads one answer from a destination and sends it to the client
    /// with its header. `Ok(true)`: it went out.
    fn answer(&mut self, buf: &mut [u8], ctx: &mut Ctx) -> io::Result<bool> {
        let (n, src) = self.outbound.recv_from(&mut buf[ANSWER_HEADROOM..])?;
        let counters = &ctx.shared.counters[ctx.worker];
        let src = SocketAddr::new(canonical(src.ip()), src.port());
        let client = self.client_port.map(|p| SocketAddr::new(self.client_ip, p));
        let (Some(client), true) = (client, self.flows.inbound(src, ctx.now)) else {
            counters.udp_drop(UdpDrop::UnknownSender);
            return Ok(false);
        };
        let mut header = Vec::with_capacity(ANSWER_HEADROOM);
        udp::encode_header(&TargetAddr::Ip(src), &mut header).expect("IP addresses encode");
        let start = ANSWER_HEADROOM - header.len();
        buf[start..ANSWER_HEADROOM].copy_from_slice(&header);
        match self
            .client_socket
            .send_to(&buf[start..ANSWER_HEADROOM + n], client)
        {
            Ok(_) => {
                Counters::add(&counters.udp_datagrams_down, 1);
                Counters::add(&counters.udp_bytes_down, n as u64);
                Ok(true)
            }
            Err(e) => {
                counters.udp_drop(send_failure(&e));
                Ok(false)
            }
        }
    }
}

impl Drop for Association {
    fn drop(&mut self) {
        Counters::add(&self.shared.counters[self.worker].udp_closed, 1);
    }
}

/// Why a send failed, as a drop reason.
fn send_failure(e: &io::Error) -> UdpDrop {
    if e.raw_os_error() == Some(libc::EMSGSIZE) {
        UdpDrop::TooLarge
    } else {
        UdpDrop::SendFailed
    }
}
