//! Remote role: UDP flows carried in sessions ([`CarriedFlows`]). A local
//! relay sends a flow's datagrams as DATAGRAM frames (see [`crate::mux`]);
//! each flow gets its own [`Egress`] (its own UDP port, so that answers
//! are told apart by flow, as a NAT maps each source apart), with the
//! destination policy of the session's listener, and its answers go back
//! as DATAGRAM frames naming their sender. A session has at most
//! `udp_max_flows` flows; one idle for `udp_idle_timeout_secs` is closed,
//! as are a session's flows when it closes. The flows live here, in the
//! worker, not in its connections or sessions.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::Token;

use super::super::Ctx;
use super::super::slab::Slab;
use super::egress::Egress;
use super::{DATAGRAM_BUDGET, DatagramBuffer};
use crate::relay::flows::FlowTable;
use crate::relay::stats::{Counters, UdpDrop};
use crate::socks5::TargetAddr;

/// A carried flow's token is `CARRIED_BASE + key` (between the sessions'
/// and the listeners' tokens).
pub(in crate::relay::engine) const CARRIED_BASE: usize = usize::MAX / 4 + usize::MAX / 8;

/// One flow of a session.
struct Flow {
    session: usize,
    id: u32,
    /// For the resolver's answers (from the worker's connection serials).
    serial: u64,
    egress: Egress,
}

/// The carried flows of one worker's sessions.
#[derive(Default)]
pub(in crate::relay::engine) struct CarriedFlows {
    slab: Slab<Flow>,
    /// (session, flow id) -> key; when each last carried a datagram (the
    /// table keeps each session's count and idle times).
    keys: HashMap<(usize, u32), usize>,
    tables: HashMap<usize, FlowTable<u32>>,
    /// Flows whose answers stopped for the turn's budget.
    pub requeue: Vec<usize>,
}

impl CarriedFlows {
    /// A datagram of flow `id` of session `s` (of listener `spec`) to
    /// `dest`: sent on, opening the flow if it is new and the session has
    /// room. Drops are counted. `true`: it went out.
    pub(in crate::relay::engine) fn datagram(
        &mut self,
        s: usize,
        spec: usize,
        id: u32,
        dest: TargetAddr,
        payload: &[u8],
        ctx: &mut Ctx,
    ) -> bool {
        let counters = ctx.counters();
        if !ctx.sessions.serves_udp(spec) {
            counters.udp_drop(UdpDrop::NotOffered);
            return false;
        }
        let engine = &ctx.shared.engine;
        let table = self.tables.entry(s).or_insert_with(|| {
            FlowTable::new(engine.udp_max_flows, engine.udp_idle_timeout(), ctx.now)
        });
        let mut forgotten = Vec::new();
        if !table.outbound_forgetting(id, ctx.now, &mut forgotten) {
            counters.udp_drop(UdpDrop::FlowLimit);
            return false;
        }
        for old in forgotten {
            self.close(s, old);
        }
        let key = match self.keys.get(&(s, id)) {
            Some(&key) => key,
            None => match self.open(s, spec, id, ctx) {
                Ok(key) => key,
                Err(e) => {
                    tracing::debug!(error = %e, "relay: cannot open a carried UDP flow");
                    ctx.counters().udp_drop(UdpDrop::SendFailed);
                    if let Some(t) = self.tables.get_mut(&s) {
                        t.forget(id);
                    }
                    return false;
                }
            },
        };
        let Some(flow) = self.slab.get_mut(key) else {
            return false;
        };
        flow.egress.send(dest, payload, ctx)
    }

    /// Opens flow `id` of session `s`: its socket, registered.
    fn open(&mut self, s: usize, spec: usize, id: u32, ctx: &mut Ctx) -> io::Result<usize> {
        ctx.next_serial += 1;
        let serial = ctx.next_serial;
        let key = self.slab.insert_with(|key| {
            let egress = Egress::open(Token(CARRIED_BASE + key), key, serial, spec, ctx)?;
            Ok::<_, io::Error>(Flow {
                session: s,
                id,
                serial,
                egress,
            })
        })?;
        self.keys.insert((s, id), key);
        Ok(key)
    }

    /// Forgets flow `id` of session `s` (its socket closes).
    fn close(&mut self, s: usize, id: u32) {
        if let Some(key) = self.keys.remove(&(s, id)) {
            self.slab.remove(key);
        }
    }

    /// Flow `key`'s socket is readable: its answers go to its session as
    /// DATAGRAM frames, up to the turn's budget (then it is requeued).
    pub(in crate::relay::engine) fn answers(&mut self, key: usize, ctx: &mut Ctx) {
        let mut buf = std::mem::take(&mut ctx.udp_buf);
        for n in 0.. {
            if n == DATAGRAM_BUDGET {
                self.requeue.push(key);
                break;
            }
            match self.answer(key, &mut buf, ctx) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Interrupted, or an ICMP error of an earlier datagram.
                Err(_) => {}
            }
        }
        ctx.udp_buf = buf;
    }

    /// Reads one answer of flow `key` and queues it on its session.
    fn answer(&mut self, key: usize, buf: &mut DatagramBuffer, ctx: &mut Ctx) -> io::Result<()> {
        let Some(flow) = self.slab.get_mut(key) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let room = buf.room();
        let Some((src, n)) = flow.egress.recv(room, ctx)? else {
            return Ok(());
        };
        let (s, id) = (flow.session, flow.id);
        if !self
            .tables
            .get_mut(&s)
            .is_some_and(|t| t.inbound(id, ctx.now))
        {
            // The flow idled out since: its socket closes with it.
            ctx.counters().udp_drop(UdpDrop::UnknownSender);
            self.close(s, id);
            return Ok(());
        }
        let now = ctx.now;
        let counters = &ctx.shared.counters[ctx.worker];
        let Some(session) = ctx.sessions.get_mut(s) else {
            return Ok(());
        };
        if !session.state.peer_datagrams() {
            counters.udp_drop(UdpDrop::NotOffered);
            return Ok(());
        }
        if !session.tx.datagram(id, &TargetAddr::Ip(src), &room[..n]) {
            counters.udp_drop(UdpDrop::SessionFull);
            return Ok(());
        }
        Counters::add(&counters.udp_datagrams_down, 1);
        Counters::add(&counters.udp_bytes_down, n as u64);
        ctx.sessions.mark_dirty(s, now);
        Ok(())
    }

    /// Whether the resolver's answer for `key` (`serial`) is a carried
    /// flow's.
    pub(in crate::relay::engine) fn asked(&self, key: usize, serial: u64) -> bool {
        self.slab.get(key).is_some_and(|f| f.serial == serial)
    }

    /// The resolver's answer for flow `key`: its waiting datagrams go.
    pub(in crate::relay::engine) fn resolved(
        &mut self,
        key: usize,
        name: String,
        addrs: io::Result<Vec<SocketAddr>>,
        ctx: &Ctx,
    ) {
        if let Some(flow) = self.slab.get_mut(key) {
            flow.egress.resolved(name, addrs, ctx);
        }
    }

    /// Session `s` closed: its flows close.
    pub(in crate::relay::engine) fn session_closed(&mut self, s: usize) {
        if self.tables.remove(&s).is_none() {
            return;
        }
        let slab = &mut self.slab;
        self.keys.retain(|&(session, _), key| {
            if session == s {
                slab.remove(*key);
            }
            session != s
        });
    }

    /// Closes the flows idle for longer than the idle timeout.
    pub(in crate::relay::engine) fn sweep(&mut self, now: Instant) {
        let mut idle = Vec::new();
        for (&s, table) in &mut self.tables {
            for id in table.forget_idle(now) {
                idle.push((s, id));
            }
        }
        for (s, id) in idle {
            self.close(s, id);
        }
        self.tables.retain(|_, t| !t.is_empty());
    }
}
