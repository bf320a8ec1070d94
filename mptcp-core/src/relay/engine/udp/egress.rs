//! The destinations' side of a UDP association ([`Egress`]): one
//! dual-stack socket towards destinations, the destination policy, the
//! flow table, and names waiting for the resolver. It takes datagrams
//! with their destination and gives back answers with their sender,
//! whoever the datagrams come from (a SOCKS5 client's port, or, later, a
//! session's datagram frames).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Interest, Token};

use super::super::Ctx;
use super::send_failure;
use crate::relay::flows::FlowTable;
use crate::relay::policy::{DestinationPolicy, canonical};
use crate::relay::stats::{Counters, UdpDrop};
use crate::relay::{ResolveRequest, Route, outbound};
use crate::socks5::TargetAddr;

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

/// Where a connection's datagrams leave for their destinations.
pub(in crate::relay::engine) struct Egress {
    socket: UdpSocket,
    v6: bool,
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
}

impl Egress {
    /// A socket towards destinations of listener `spec`, registered in
    /// the worker's poll with `token`; the resolver's answers name `key`
    /// and `serial` (a connection's, or a carried flow's).
    pub(super) fn open(
        token: Token,
        key: usize,
        serial: u64,
        spec: usize,
        ctx: &Ctx,
    ) -> io::Result<Egress> {
        let (mut socket, v6) = outbound::datagram_socket()?;
        ctx.registry
            .register(&mut socket, token, Interest::READABLE)?;
        let engine = &ctx.shared.engine;
        Ok(Egress {
            socket,
            v6,
            flows: FlowTable::new(engine.udp_max_flows, engine.udp_idle_timeout(), ctx.now),
            names: HashMap::new(),
            waiting: 0,
            waiting_bytes: 0,
            max_names: engine.udp_max_flows,
            idle: engine.udp_idle_timeout(),
            route: Arc::clone(&ctx.specs[spec].route),
            key,
            serial,
        })
    }

    /// Sends `payload` to `dest`: at once to an address, or once its name
    /// resolves (a few wait). `true`: it went out now.
    pub(super) fn send(&mut self, dest: TargetAddr, payload: &[u8], ctx: &Ctx) -> bool {
        match dest {
            TargetAddr::Ip(to) => self.send_out(to, payload, ctx),
            TargetAddr::Domain(name, port) => self.send_to_name(name, port, payload, ctx),
        }
    }

    /// Reads one answer into `buf`: its sender and length, or `None` when
    /// it came from a host that is not a live flow (dropped, counted).
    pub(super) fn recv(
        &mut self,
        buf: &mut [u8],
        ctx: &Ctx,
    ) -> io::Result<Option<(SocketAddr, usize)>> {
        let (n, src) = self.socket.recv_from(buf)?;
        let src = SocketAddr::new(canonical(src.ip()), src.port());
        if !self.flows.inbound(src, ctx.now) {
            ctx.counters().udp_drop(UdpDrop::UnknownSender);
            return Ok(None);
        }
        Ok(Some((src, n)))
    }

    /// A datagram to a name: sent if its addresses are known, else kept
    /// (a few) until the resolver answers.
    fn send_to_name(&mut self, name: String, port: u16, payload: &[u8], ctx: &Ctx) -> bool {
        let counters = ctx.counters();
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
    /// `true`: some went out.
    pub(in crate::relay::engine) fn resolved(
        &mut self,
        name: String,
        addrs: io::Result<Vec<SocketAddr>>,
        ctx: &Ctx,
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

    /// The first of a name's addresses the policy allows and the socket
    /// reaches.
    fn pick(&self, ips: &[IpAddr], ctx: &Ctx) -> Result<IpAddr, UdpDrop> {
        let reachable = || ips.iter().filter(|ip| self.v6 || ip.is_ipv4());
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
            Route::Upstream { .. } => unreachable!("datagrams leave from the remote role"),
        }
    }

    /// Sends `payload` to `to`, if the policy and the flow limit let it.
    /// `true`: it went out.
    fn send_out(&mut self, to: SocketAddr, payload: &[u8], ctx: &Ctx) -> bool {
        let counters = ctx.counters();
        let to = SocketAddr::new(canonical(to.ip()), to.port());
        if !self.policy().allows_from(to.ip(), &ctx.own_addresses) {
            counters.udp_drop(UdpDrop::DestinationDenied);
            return false;
        }
        let wire = match to.ip() {
            IpAddr::V4(v4) if self.v6 => SocketAddr::new(v4.to_ipv6_mapped().into(), to.port()),
            IpAddr::V6(_) if !self.v6 => {
                counters.udp_drop(UdpDrop::SendFailed);
                return false;
            }
            _ => to,
        };
        if !self.flows.outbound(to, ctx.now) {
            counters.udp_drop(UdpDrop::FlowLimit);
            return false;
        }
        match self.socket.send_to(payload, wire) {
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
}
