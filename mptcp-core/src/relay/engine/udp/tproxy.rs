//! Local role: UDP from LAN hosts through TPROXY ([`LanFlows`]). The
//! firewall diverts the LAN's datagrams to a transparent UDP socket, which
//! reads each with its original destination. Each (LAN source, original
//! destination) is a flow: at its first datagram it gets an id and the
//! session of a remote relay (the route's choice, as for a connection),
//! and its datagrams go as DATAGRAM frames on that session, if the remote
//! takes them. Answers come back on the flow and leave towards the LAN
//! host from a transparent socket bound to the original destination, so
//! that the host sees the address it wrote to. Flows live in the worker
//! (one worker reads the UDP listeners: a flow stays on one worker's
//! session), at most `udp_max_flows`, each forgotten after
//! `udp_idle_timeout_secs`; a session's flows end with it, and their next
//! datagram opens them again on another. `[local] udp_ports` may block a
//! destination port instead (dropped, counted), or send its flows directly
//! from the router: a UDP socket of the flow's own, whose answers go to the
//! LAN host the same way.
//!
//! A DNS forwarder listener (`[local] dns`) is read the same way, but its
//! flows (LAN host, the forwarder's address) go to the configured resolver
//! (`dns_upstream`) through the remote relay, and their answers leave from
//! the forwarder's own socket.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};

use super::super::Ctx;
use super::super::sessions::Placement;
use super::super::slab::Slab;
use super::{DATAGRAM_BUDGET, send_failure};
use crate::relay::flows::FlowTable;
use crate::relay::listeners;
use crate::relay::policy::{ClientAllowlist, canonical};
use crate::relay::stats::{Counters, ErrorKind, UdpDrop};
use crate::relay::udp_ports::{UdpPortAction, UdpPorts};
use crate::socks5::TargetAddr;
use crate::sys::udp::recv_with_destination;

/// UDP listener `i` has token `LAN_UDP_BASE + i` (above the carried
/// flows', below the TCP listeners'); a direct flow's socket
/// `LAN_DIRECT_BASE + slot` (above those).
pub(in crate::relay::engine) const LAN_UDP_BASE: usize = super::CARRIED_BASE + usize::MAX / 16;
pub(in crate::relay::engine) const LAN_DIRECT_BASE: usize = LAN_UDP_BASE + usize::MAX / 64;

/// A flow: the LAN host's address and where it wrote to.
type FlowKey = (SocketAddr, SocketAddr);

/// How a flow's datagrams leave.
enum Via {
    /// As DATAGRAM frames of flow `id` on session `session`.
    Session { id: u32, session: usize },
    /// From the router, on a socket of the flow's own (slot `slot` of the
    /// direct flows, for its token).
    Direct { socket: UdpSocket, slot: usize },
}

/// One flow: how it leaves and where to, and the socket its answers go to
/// the LAN host from (opened at the first answer, or the DNS forwarder's).
struct LanFlow {
    via: Via,
    /// Where its datagrams go (the original destination, or the DNS
    /// forwarder's resolver); answers must come from there.
    to: SocketAddr,
    /// A DNS forwarder's flow: the listener its answers leave from.
    forwarder: Option<usize>,
    reply: Option<std::net::UdpSocket>,
}

/// A UDP listener of the LAN side.
pub(crate) struct LanListener {
    /// Transparent (TPROXY), or the DNS forwarder's, told each datagram's
    /// destination.
    pub socket: std::net::UdpSocket,
    /// A DNS forwarder: the resolver its queries go to, and the LAN hosts
    /// it serves (private ranges unless configured: not an open resolver).
    pub forward_to: Option<(SocketAddr, ClientAllowlist)>,
}

/// The worker's TPROXY UDP listeners and their flows.
pub(in crate::relay::engine) struct LanFlows {
    /// Sockets, and the resolver and clients of a DNS forwarder.
    listeners: Vec<(UdpSocket, Option<(SocketAddr, ClientAllowlist)>)>,
    table: FlowTable<FlowKey>,
    flows: HashMap<FlowKey, LanFlow>,
    /// (session, flow id) -> flow.
    ids: HashMap<(usize, u32), FlowKey>,
    /// Direct flows by slot.
    direct: Slab<FlowKey>,
    ports: UdpPorts,
    next_id: u32,
    /// Listeners that stopped for the turn's budget.
    pub requeue: Vec<usize>,
    /// Direct flows (slots) that stopped for the turn's budget.
    pub direct_requeue: Vec<usize>,
}

impl LanFlows {
    /// Takes `sockets` (TPROXY UDP listeners) into `registry`.
    pub(in crate::relay::engine) fn new(
        sockets: Vec<LanListener>,
        ports: UdpPorts,
        registry: &Registry,
        engine: &crate::relay::EngineConfig,
        now: Instant,
    ) -> io::Result<LanFlows> {
        let mut listeners = Vec::new();
        for (i, l) in sockets.into_iter().enumerate() {
            let mut socket = UdpSocket::from_std(l.socket);
            registry.register(&mut socket, Token(LAN_UDP_BASE + i), Interest::READABLE)?;
            listeners.push((socket, l.forward_to));
        }
        Ok(LanFlows {
            listeners,
            table: FlowTable::new(engine.udp_max_flows, engine.udp_idle_timeout(), now),
            flows: HashMap::new(),
            ids: HashMap::new(),
            direct: Slab::new(),
            ports,
            next_id: 0,
            requeue: Vec::new(),
            direct_requeue: Vec::new(),
        })
    }

    /// After a worker's panic: the flows are forgotten, the listeners stay.
    pub(in crate::relay::engine) fn clear(&mut self) {
        self.flows.clear();
        self.ids.clear();
        self.direct = Slab::new();
        self.requeue.clear();
        self.direct_requeue.clear();
    }

    /// Listener `i` is readable: its datagrams go to their sessions, up to
    /// the turn's budget (then it is requeued).
    pub(in crate::relay::engine) fn read(&mut self, i: usize, ctx: &mut Ctx) {
        let mut buf = std::mem::take(&mut ctx.udp_buf);
        for n in 0.. {
            if n == DATAGRAM_BUDGET {
                self.requeue.push(i);
                break;
            }
            let Some((socket, forward_to)) = self.listeners.get(i) else {
                break;
            };
            let room = buf.room();
            let got = match recv_with_destination(socket.as_fd(), room) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => continue,
            };
            let counters = ctx.counters();
            if got.truncated {
                counters.udp_drop(UdpDrop::TooLarge);
                continue;
            }
            let Some(to) = got.to else {
                counters.udp_drop(UdpDrop::Malformed);
                continue;
            };
            let from = SocketAddr::new(canonical(got.from.ip()), got.from.port());
            let wrote_to = SocketAddr::new(canonical(to.ip()), to.port());
            let key = (from, wrote_to);
            match forward_to {
                Some((_, clients)) if !clients.allows(from.ip()) => {
                    counters.error(ErrorKind::ClientDenied);
                }
                Some((resolver, _)) => {
                    let resolver = *resolver;
                    self.datagram(key, resolver, Some(i), &room[..got.len], ctx);
                }
                None => self.datagram(key, wrote_to, None, &room[..got.len], ctx),
            }
        }
        ctx.udp_buf = buf;
    }

    /// A LAN host's datagram on flow `key`, to `to`: blocked, or sent on
    /// its flow (opened if new) as its port's choice says (a DNS
    /// forwarder's, of listener `forwarder`, is carried). Drops are counted.
    fn datagram(
        &mut self,
        key: FlowKey,
        to: SocketAddr,
        forwarder: Option<usize>,
        payload: &[u8],
        ctx: &mut Ctx,
    ) {
        let action = match forwarder {
            Some(_) => UdpPortAction::Carry,
            None => self.ports.action(to.port()),
        };
        if action == UdpPortAction::Block {
            ctx.counters().udp_drop(UdpDrop::Blocked);
            return;
        }
        let mut forgotten = Vec::new();
        if !self.table.outbound_forgetting(key, ctx.now, &mut forgotten) {
            ctx.counters().udp_drop(UdpDrop::FlowLimit);
            return;
        }
        for old in forgotten {
            self.forget(old);
        }
        if !self.flows.contains_key(&key) {
            let opened = match action {
                UdpPortAction::Direct => self.open_direct(key, ctx),
                _ => self.open(key, to, forwarder, ctx),
            };
            if !opened {
                self.table.forget(key);
                return;
            }
        }
        let counters = &ctx.shared.counters[ctx.worker];
        let (id, s) = match self.flows.get(&key).map(|f| &f.via) {
            Some(&Via::Session { id, session }) => (id, session),
            Some(Via::Direct { socket, .. }) => {
                match socket.send(payload) {
                    Ok(_) => {
                        Counters::add(&counters.udp_datagrams_up, 1);
                        Counters::add(&counters.udp_bytes_up, payload.len() as u64);
                    }
                    Err(e) => counters.udp_drop(send_failure(&e)),
                }
                return;
            }
            None => return,
        };
        let Some(session) = ctx.sessions.get_mut(s) else {
            return;
        };
        if !session.tx.datagram(id, &TargetAddr::Ip(to), payload) {
            counters.udp_drop(UdpDrop::SessionFull);
            return;
        }
        Counters::add(&counters.udp_datagrams_up, 1);
        Counters::add(&counters.udp_bytes_up, payload.len() as u64);
        ctx.sessions.mark_dirty(s, ctx.now);
    }

    /// A new flow: an id on an open session of the remote the route picks,
    /// if that remote takes datagrams. `false`: dropped, counted.
    fn open(
        &mut self,
        key: FlowKey,
        to: SocketAddr,
        forwarder: Option<usize>,
        ctx: &mut Ctx,
    ) -> bool {
        let counters = &ctx.shared.counters[ctx.worker];
        let placed = ctx
            .sessions
            .pick_remote()
            .and_then(|remote| ctx.sessions.place(remote, ctx.now));
        let Some(Placement::Open(s)) = placed else {
            // No remote, or its session is still being set up.
            counters.udp_drop(UdpDrop::NoSession);
            return false;
        };
        if !ctx
            .sessions
            .get(s)
            .is_some_and(|x| x.state.peer_datagrams())
        {
            counters.udp_drop(UdpDrop::NotOffered);
            return false;
        }
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        let id = self.next_id;
        let via = Via::Session { id, session: s };
        let flow = LanFlow {
            via,
            to,
            forwarder,
            reply: None,
        };
        self.flows.insert(key, flow);
        self.ids.insert((s, id), key);
        true
    }

    /// A new direct flow: a socket of its own towards the destination,
    /// registered for the answers. `false`: dropped, counted.
    fn open_direct(&mut self, key: FlowKey, ctx: &Ctx) -> bool {
        let (_, to) = key;
        let flows = &mut self.flows;
        let opened = self.direct.insert_with(|slot| {
            let any: SocketAddr = if to.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let mut socket = UdpSocket::bind(any)?;
            socket.connect(to)?;
            let token = Token(LAN_DIRECT_BASE + slot);
            ctx.registry
                .register(&mut socket, token, Interest::READABLE)?;
            let via = Via::Direct { socket, slot };
            let flow = LanFlow {
                via,
                to,
                forwarder: None,
                reply: None,
            };
            flows.insert(key, flow);
            io::Result::Ok(key)
        });
        if let Err(e) = opened {
            tracing::debug!(destination = %to, error = %e, "relay: cannot send UDP directly");
            ctx.counters().udp_drop(UdpDrop::SendFailed);
            return false;
        }
        true
    }

    /// Forgets a flow (its sockets close).
    fn forget(&mut self, key: FlowKey) {
        match self.flows.remove(&key).map(|f| f.via) {
            Some(Via::Session { id, session }) => {
                self.ids.remove(&(session, id));
            }
            Some(Via::Direct { slot, .. }) => {
                self.direct.remove(slot);
            }
            None => {}
        }
    }

    /// Direct flow `slot`'s socket is readable: its answers go to the LAN
    /// host, up to the turn's budget (then it is requeued).
    pub(in crate::relay::engine) fn direct_answers(&mut self, slot: usize, ctx: &mut Ctx) {
        let Some(&key) = self.direct.get(slot) else {
            return;
        };
        let mut buf = std::mem::take(&mut ctx.udp_buf);
        for n in 0.. {
            if n == DATAGRAM_BUDGET {
                self.direct_requeue.push(slot);
                break;
            }
            let Some(Via::Direct { socket, .. }) = self.flows.get(&key).map(|f| &f.via) else {
                break;
            };
            let room = buf.room();
            match socket.recv(room) {
                Ok(len) => {
                    let counters = &ctx.shared.counters[ctx.worker];
                    if !self.table.inbound(key, ctx.now) {
                        counters.udp_drop(UdpDrop::UnknownSender);
                        self.forget(key);
                        break;
                    }
                    self.reply(key, &room[..len], counters);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // An ICMP error of an earlier datagram: on with the next.
                Err(_) => {}
            }
        }
        ctx.udp_buf = buf;
    }

    /// An answer on flow `id` of session `s` from `peer`: sent to the LAN
    /// host from the flow's original destination. Drops are counted.
    pub(in crate::relay::engine) fn answer(
        &mut self,
        s: usize,
        id: u32,
        peer: &TargetAddr,
        payload: &[u8],
        counters: &Counters,
        now: Instant,
    ) {
        let Some(&key) = self.ids.get(&(s, id)) else {
            counters.udp_drop(UdpDrop::UnknownSender);
            return;
        };
        let to = self.flows.get(&key).map(|f| f.to);
        let from_destination = matches!(peer, TargetAddr::Ip(p)
            if Some(SocketAddr::new(canonical(p.ip()), p.port())) == to);
        if !from_destination {
            counters.udp_drop(UdpDrop::UnknownSender);
            return;
        }
        if !self.table.inbound(key, now) {
            counters.udp_drop(UdpDrop::UnknownSender);
            self.forget(key);
            return;
        }
        self.reply(key, payload, counters);
    }

    /// Sends an answer of flow `key` to its LAN host, from the address the
    /// host wrote to (the original destination, or the DNS forwarder).
    fn reply(&mut self, key: FlowKey, payload: &[u8], counters: &Counters) {
        let (lan_host, destination) = key;
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        let sent = if let Some((forwarder, _)) = flow.forwarder.and_then(|i| self.listeners.get(i))
        {
            forwarder.send_to(payload, lan_host)
        } else {
            if flow.reply.is_none() {
                match listeners::transparent_udp(destination) {
                    Ok(socket) => flow.reply = Some(socket),
                    Err(e) => {
                        tracing::debug!(%destination, error = %e, "relay: cannot answer as the destination");
                        counters.udp_drop(UdpDrop::SendFailed);
                        return;
                    }
                }
            }
            let Some(reply) = &flow.reply else {
                return;
            };
            reply.send_to(payload, lan_host)
        };
        match sent {
            Ok(_) => {
                Counters::add(&counters.udp_datagrams_down, 1);
                Counters::add(&counters.udp_bytes_down, payload.len() as u64);
            }
            Err(e) => counters.udp_drop(send_failure(&e)),
        }
    }

    /// Session `s` closed: its flows end (their next datagram opens them
    /// on another session).
    pub(in crate::relay::engine) fn session_closed(&mut self, s: usize) {
        let gone: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, f)| matches!(f.via, Via::Session { session, .. } if session == s))
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            self.table.forget(key);
            self.forget(key);
        }
    }

    /// Forgets the flows idle for longer than the idle timeout.
    pub(in crate::relay::engine) fn sweep(&mut self, now: Instant) {
        for key in self.table.forget_idle(now) {
            self.forget(key);
        }
    }
}
