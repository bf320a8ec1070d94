//! Remote role: one SOCKS5 UDP association (RFC 1928, section 7), the
//! data phase of a connection that asked for UDP ASSOCIATE.
//!
//! An association has two UDP sockets: one facing the client, bound on
//! the address the client reached the relay on (its port is the reply's
//! BND.PORT), and one towards destinations ([`egress::Egress`]: dual-stack,
//! any address, so that a destination sees one port for all of the
//! client's datagrams, as behind a NAT that maps endpoint-independently).
//! Both are registered in the worker's poll with the connection's tokens;
//! nothing blocks: a datagram a socket does not take is dropped and
//! counted, never queued.
//!
//! The client's datagrams must come from its address (the one in the
//! request, or else the control connection's IP; an unspecified port is
//! fixed by the first datagram). Answers are taken only from destinations
//! the client wrote to within the idle timeout (its flows, at most
//! `udp_max_flows`), and reach the client with the SOCKS5 header naming
//! their sender.
//!
//! [`CarriedFlows`] reuses the destinations' side for datagrams that
//! arrive in a session's DATAGRAM frames (from a local relay);
//! [`LanFlows`] is the local relay's end: UDP from the LAN through TPROXY.

mod carried;
mod egress;
mod tproxy;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mio::Interest;
use mio::net::{TcpStream, UdpSocket};

pub(super) use self::carried::{CARRIED_BASE, CarriedFlows};
use self::egress::Egress;
pub(crate) use self::tproxy::LanListener;
pub(super) use self::tproxy::{LAN_DIRECT_BASE, LAN_UDP_BASE, LanFlows};
use super::answer::Failure;
use super::{Ctx, Woken};
use crate::relay::Shared;
use crate::relay::policy::canonical;
use crate::relay::stats::{Counters, ErrorKind, UdpDrop};
use crate::socks5::{TargetAddr, udp};

/// Datagrams read from each socket per turn before others get theirs.
const DATAGRAM_BUDGET: usize = 64;
/// Room in front of a received answer for its header (IPv6's is longest).
const ANSWER_HEADROOM: usize = 22;
/// Largest UDP payload, and the scratch buffer it is read into.
const MAX_DATAGRAM: usize = 65_535;

/// The worker's buffer for one datagram at a time, with headroom for a
/// header (one per worker, not per association; allocated at its first
/// use, and empty while an association has it, so that taking it out
/// costs nothing).
#[derive(Default)]
pub(super) struct DatagramBuffer(Vec<u8>);

impl DatagramBuffer {
    fn room(&mut self) -> &mut [u8] {
        if self.0.is_empty() {
            self.0 = vec![0; ANSWER_HEADROOM + MAX_DATAGRAM];
        }
        &mut self.0
    }

    /// A copy of `datagram` (at most a datagram long), in the buffer.
    pub(super) fn copy_of(&mut self, datagram: &[u8]) -> &[u8] {
        let room = self.room();
        let n = datagram.len().min(room.len());
        room[..n].copy_from_slice(&datagram[..n]);
        &room[..n]
    }
}

/// One UDP association.
pub(super) struct Association {
    client_socket: UdpSocket,
    bound: SocketAddr,
    client_ip: IpAddr,
    /// The client's port, once known.
    client_port: Option<u16>,
    /// Towards destinations (the resolver's answers go to it).
    pub egress: Egress,
    /// Where an answer's header is written before it goes in front of it.
    header: Vec<u8>,
    /// For the count of open associations, however this one ends.
    shared: Arc<Shared>,
    worker: usize,
}

/// What a turn of an association came to.
#[derive(Debug, Default)]
pub(super) struct Pumped {
    /// A datagram went through (the association is not idle).
    pub moved: bool,
    /// The sockets that had more than the budget: read them again soon.
    pub unfinished: Woken,
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
        let (_, client_token) = super::conn_tokens(key);
        ctx.registry
            .register(&mut client_socket, client_token, Interest::READABLE)
            .map_err(|e| fail("register", e))?;
        let egress = Egress::open(super::udp_token(key), key, serial, spec, ctx)
            .map_err(|e| fail("outgoing socket", e))?;
        Counters::add(&ctx.counters().udp_opened, 1);
        tracing::debug!(client = %peer, %bound, "relay: UDP association");
        Ok(Association {
            client_socket,
            bound,
            client_ip,
            client_port: (asked_port != 0).then_some(asked_port),
            egress,
            header: Vec::with_capacity(ANSWER_HEADROOM),
            shared: Arc::clone(&ctx.shared),
            worker: ctx.worker,
        })
    }

    /// The client's port at the relay (BND.ADDR and BND.PORT of the reply).
    pub(super) fn bound(&self) -> SocketAddr {
        self.bound
    }

    /// Moves what the `woken` sockets have: the client's datagrams on to
    /// their destinations, the answers back to the client.
    pub(super) fn pump(&mut self, woken: Woken, ctx: &mut Ctx) -> Pumped {
        let mut buf = std::mem::take(&mut ctx.udp_buf);
        let mut done = Pumped::default();
        for (from_client, socket) in [(true, Woken::UPSTREAM), (false, Woken::DATAGRAMS)] {
            if !woken.contains(socket) {
                continue;
            }
            let mut n = 0;
            while n < DATAGRAM_BUDGET {
                let r = if from_client {
                    self.client_datagram(buf.room(), ctx)
                } else {
                    self.answer(buf.room(), ctx)
                };
                match r {
                    Ok(moved) => done.moved |= moved,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // Interrupted, or an ICMP error of an earlier datagram
                    // (which is gone): on with the next.
                    Err(_) => {}
                }
                n += 1;
            }
            if n == DATAGRAM_BUDGET {
                done.unfinished.insert(socket);
            }
        }
        ctx.udp_buf = buf;
        done
    }

    /// Reads one datagram from the client and sends it on. `Ok(true)`: it
    /// went out.
    fn client_datagram(&mut self, buf: &mut [u8], ctx: &Ctx) -> io::Result<bool> {
        let (n, src) = self.client_socket.recv_from(buf)?;
        let counters = ctx.counters();
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
        Ok(self.egress.send(dest, &buf[at..n], ctx))
    }

    /// Reads one answer from a destination and sends it to the client
    /// with its header. `Ok(true)`: it went out.
    fn answer(&mut self, buf: &mut [u8], ctx: &Ctx) -> io::Result<bool> {
        let Some((src, n)) = self.egress.recv(&mut buf[ANSWER_HEADROOM..], ctx)? else {
            return Ok(false);
        };
        let counters = ctx.counters();
        // Flows exist only once the client sent, which fixed its port.
        let Some(port) = self.client_port else {
            counters.udp_drop(UdpDrop::UnknownSender);
            return Ok(false);
        };
        self.header.clear();
        udp::encode_header(&TargetAddr::Ip(src), &mut self.header).expect("IP addresses encode");
        let start = ANSWER_HEADROOM - self.header.len();
        buf[start..ANSWER_HEADROOM].copy_from_slice(&self.header);
        let client = SocketAddr::new(self.client_ip, port);
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
