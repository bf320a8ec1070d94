//! Sockets of the relay: listeners (plain, MPTCP, transparent), outgoing
//! non-blocking connects with MPTCP and TCP fallback, and the original
//! destination of redirected connections.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use crate::socket::{self, Fallback};
use crate::sys;

/// A stream socket for `addr`'s family: MPTCP if `mptcp` (TCP when the
/// kernel refuses MPTCP, with a warning), else TCP.
fn stream_socket(addr: &SocketAddr, mptcp: bool) -> io::Result<Socket> {
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

/// A non-blocking listener on `addr`. `transparent` sets `IP_TRANSPARENT`
/// for TPROXY (needs CAP_NET_ADMIN); `reuse_port` sets `SO_REUSEPORT`.
pub(crate) fn listen(
    addr: SocketAddr,
    mptcp: bool,
    transparent: bool,
    reuse_port: bool,
) -> io::Result<TcpListener> {
    let socket = stream_socket(&addr, mptcp)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    // `[::]:port` means IPv6 only, so that `0.0.0.0:port` can be listed
    // beside it (a dual-stack socket would take both and make that bind fail).
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if transparent {
        let r = if addr.is_ipv4() {
            socket.set_ip_transparent_v4(true)
        } else {
            socket.set_ip_transparent_v6(true)
        };
        r.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("IP_TRANSPARENT on the TPROXY listener {addr}: {e} (needs CAP_NET_ADMIN)"),
            )
        })?;
    }
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
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
/// - A fixed receive buffer of `receive_buffer` bytes (`SO_RCVBUFFORCE`,
///   with CAP_NET_ADMIN). On Linux 6.18, the autotuned receive buffer of a
///   long-lived MPTCP connection whose traffic turns around (a download,
///   then an upload) sometimes stays too small, and the peer's data then
///   waits in flight for seconds; a fixed one avoids it. Without the
///   capability the buffer stays autotuned (`SO_RCVBUF` would cap it at
///   `net.core.rmem_max`, far smaller).
pub(crate) fn prepare_session_socket(stream: &mio::net::TcpStream, receive_buffer: usize) {
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
    let size = libc::c_int::try_from(receive_buffer).unwrap_or(libc::c_int::MAX);
    let fd = stream.as_raw_fd();
    if let Err(e) = sys::fd::set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size) {
        tracing::debug!(error = %e, "relay: session receive buffer stays autotuned");
    }
}

/// Where a connection redirected by nftables/iptables `REDIRECT` was going:
/// `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6).
pub(crate) fn original_destination(stream: &mio::net::TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let local = stream.local_addr()?;
    let v4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    let dst = if v4 {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    dst.as_socket()
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}
