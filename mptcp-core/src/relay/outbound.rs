//! Outgoing sockets of the relay: non-blocking connects with MPTCP and a
//! TCP fallback, and the options a session's socket gets.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use super::config::EngineConfig;
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
