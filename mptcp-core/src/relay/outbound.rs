//! Outgoing sockets of the relay: non-blocking connects with MPTCP and a
//! TCP fallback, and the options a session's socket gets.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use super::config::{EngineConfig, LONG_ROUND_TRIP};
use crate::socket::{self, Fallback};
use crate::sys;

/// A stream socket for `addr`'s family: MPTCP if `mptcp` (TCP when the
/// kernel refuses MPTCP, with a warning), else TCP.
pub(super) fn stream_socket(addr: &SocketAddr, mptcp: bool) -> io::Result<Socket> {
    let domain = Domain::for_address(*addr);
    if !mptcp {
        return Socket::new(domain, Type::STREAM, Some(Protocol::TCP));
    }
    let created = socket::new(domain, Fallback::Tcp)?;
    if let Some(reason) = created.fallback {
        tracing::warn!(%reason, "relay: MPTCP socket refused, using TCP");
    }
    Ok(created.socket)
}

/// Starts a non-blocking connect to `addr`; completion shows as
/// writability.
pub(crate) fn connect(addr: SocketAddr, mptcp: bool) -> io::Result<mio::net::TcpStream> {
    let socket = stream_socket(&addr, mptcp)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}

/// Unsent bytes a session's socket may hold.
pub(crate) const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Readies a session's socket.
///
/// - TCP keepalives, so that a dead peer (a remote relay that rebooted,
///   every path down) is noticed within about a minute even when no stream
///   is active. Kernels before 6.2 refuse the timing options on MPTCP
///   sockets; then the defaults apply.
/// - At most [`NOTSENT_LOWAT`] bytes not yet sent in the socket: the rest
///   waits in the relay, where a new stream's frames can go first (a few
///   MiB of a bulk stream queued in the kernel would delay them by seconds
///   on a slow link).
/// - A fixed receive buffer of two stream windows (`SO_RCVBUFFORCE`, with
///   CAP_NET_ADMIN; the kernel doubles the value for its bookkeeping),
///   grown with the largest stream window later ([`set_receive_buffer`]). On
///   Linux 6.18, the autotuned receive buffer of a long-lived MPTCP
///   connection whose traffic turns around (a download, then an upload)
///   sometimes stays too small, and the peer's data then waits in flight
///   for seconds; a fixed one avoids it. Without the capability the buffer
///   stays autotuned (`SO_RCVBUF` would cap it at `net.core.rmem_max`,
///   far smaller).
///
/// The congestion control is set apart ([`set_congestion_control`]): an
/// accepted session has it from its listener.
pub(crate) fn prepare_session_socket(stream: &mio::net::TcpStream, engine: &EngineConfig) {
    let socket = SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(3);
    if socket.set_tcp_keepalive(&keepalive).is_err() {
        let _ = socket.set_keepalive(true);
    }
    if let Err(e) = socket.set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        tracing::debug!(error = %e, "relay: TCP_NOTSENT_LOWAT refused on a session");
    }
    set_receive_buffer(stream, session_receive_buffer(engine));
}

/// The receive buffer a session starts with: for two initial windows.
pub(crate) fn session_receive_buffer(engine: &EngineConfig) -> usize {
    receive_buffer_for(engine.stream_window)
}

/// The receive buffer that carries two stream windows of `window` bytes
/// (the kernel doubles the value for its bookkeeping).
pub(crate) fn receive_buffer_for(window: u32) -> usize {
    2 * window as usize
}

/// Fixes a session's receive buffer at `bytes` (`SO_RCVBUFFORCE`, with
/// CAP_NET_ADMIN; without it the buffer stays autotuned).
pub(crate) fn set_receive_buffer(stream: &mio::net::TcpStream, bytes: usize) {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let fd = stream.as_raw_fd();
    if let Err(e) = sys::fd::set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size) {
        tracing::debug!(error = %e, "relay: session receive buffer stays autotuned");
    }
}

/// Sets the engine's congestion control on a connection between the
/// relays (a session, or one connection per client connection) and,
/// through MPTCP, on each of its subflows, present and future; where the
/// kernel refuses it (not built, not loadable, or not in
/// `tcp_allowed_congestion_control` without CAP_NET_ADMIN), warns once per
/// process and leaves the host's default.
pub(crate) fn set_congestion_control(stream: &mio::net::TcpStream, engine: &EngineConfig) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let Some(name) = engine.session_congestion_control() else {
        return;
    };
    if let Err(e) = SockRef::from(stream).set_tcp_congestion(name.as_bytes())
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            congestion_control = name,
            error = %e,
            "relay: the kernel refuses this congestion control on sessions; they keep the \
             host's default (modprobe tcp_{name}, or run the relay with CAP_NET_ADMIN)"
        );
    }
}

/// A subflow that bbr paces at less than this many segments per round
/// trip has taken small frames for its rate.
const FORGOTTEN_RATE_SEGMENTS: u64 = 4;

/// Starts bbr over on every subflow of a session that runs it, if it has
/// forgotten its rate on one of them; says whether it did.
///
/// bbr paces at the highest delivery rate of its last ten round trips,
/// and on an MPTCP subflow the small frames of a quiet session (PINGs
/// every half second) count as such rates: on the long subflow of the test
/// bed's 20:5ms + 20:75ms pair its estimate fell from 19.7 Mbit/s to 77
/// kbit/s (a segment per round trip) five seconds after a bulk transfer
/// ended. From there bbr probes upwards by a quarter every eight round
/// trips, and the kernel's scheduler gives a subflow data by its pacing
/// rate: the next transfer's long subflow paced at 0.2 Mbit/s, reached 20
/// after 8 s, and the transfer carried 0.34 to 0.58 of the links' sum. Set
/// again, bbr starts with its startup, which finds the rate in a few round
/// trips; where it has not forgotten it, a restart only costs (its startup
/// overshoots into the link's queue: 26-32 Mbit/s on that pair, against
/// 34-36 left alone). The kernel ignores setting the algorithm a socket
/// already has, so this goes through reno (built in, allowed to every user).
pub(crate) fn restart_bbr_if_it_forgot(stream: &mio::net::TcpStream) -> bool {
    const BBR: &[u8] = b"bbr";
    let socket = SockRef::from(stream);
    let Ok(current) = socket.tcp_congestion() else {
        return false;
    };
    // The kernel fills the name's buffer with NULs.
    if current.split(|&b| b == 0).next() != Some(BBR) {
        return false;
    }
    let Ok(subflows) = crate::info::subflows(stream.as_fd()) else {
        return false;
    };
    let forgot = subflows.iter().any(|sf| {
        // On a short link bbr wins its rate back within a second.
        let Some(rtt) = sf
            .tcp
            .min_rtt
            .filter(|&rtt| rtt >= LONG_ROUND_TRIP && sf.tcp.bytes_acked > 1)
        else {
            return false;
        };
        let per_round_trip = u128::from(sf.tcp.pacing_rate) * rtt.as_micros() / 1_000_000;
        per_round_trip < u128::from(FORGOTTEN_RATE_SEGMENTS * u64::from(sf.tcp.snd_mss))
    });
    if !forgot || socket.set_tcp_congestion(b"reno").is_err() {
        return false;
    }
    // The same socket took bbr before, with the same privileges; should
    // the kernel refuse it now, reno carries the session.
    match socket.set_tcp_congestion(BBR) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "relay: a session's bbr could not be set again; it runs reno");
            false
        }
    }
}

/// A non-blocking UDP socket that reaches destinations of both families:
/// IPv6 with IPv4-mapped addresses (`IPV6_V6ONLY` off), or IPv4 alone on
/// a host without IPv6. Returns it and whether it is IPv6.
pub(crate) fn datagram_socket() -> io::Result<(mio::net::UdpSocket, bool)> {
    let dual = || -> io::Result<Socket> {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(false)?;
        s.bind(&SockAddr::from(SocketAddr::from((
            std::net::Ipv6Addr::UNSPECIFIED,
            0,
        ))))?;
        Ok(s)
    };
    let (socket, v6) = match dual() {
        Ok(s) => (s, true),
        Err(_) => {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.bind(&SockAddr::from(SocketAddr::from((
                std::net::Ipv4Addr::UNSPECIFIED,
                0,
            ))))?;
            (s, false)
        }
    };
    socket.set_nonblocking(true)?;
    Ok((mio::net::UdpSocket::from_std(socket.into()), v6))
}
