//! The relay's listening sockets (plain, MPTCP, transparent) and the
//! original destination of the connections they accept.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsFd;

use socket2::{Domain, SockRef, Socket, Type};

use super::outbound::stream_socket;

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

/// A non-blocking UDP socket bound to `addr` with `IP_TRANSPARENT`, which
/// may be any address (needs CAP_NET_ADMIN): a TPROXY UDP listener, or
/// the socket a flow's answers leave from with the LAN host's original
/// destination as their source (`SO_REUSEADDR`: several LAN hosts may
/// talk to one destination).
pub(crate) fn transparent_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    let r = if addr.is_ipv4() {
        socket.set_ip_transparent_v4(true)
    } else {
        socket.set_only_v6(true)?;
        socket.set_ip_transparent_v6(true)
    };
    r.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("IP_TRANSPARENT on UDP {addr}: {e} (needs CAP_NET_ADMIN)"),
        )
    })?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}")))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A TPROXY UDP listener on `addr`: transparent, and told each
/// datagram's original destination.
pub(crate) fn listen_udp_tproxy(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = transparent_udp(addr)?;
    crate::sys::udp::set_recv_original_destination(socket.as_fd(), addr.is_ipv6())?;
    Ok(socket)
}

/// A DNS forwarder's UDP listener on `addr`, told each datagram's
/// destination (the address the host wrote to, which its answers leave
/// from when the listener is on a wildcard address). `SO_REUSEADDR`, like
/// the transparent sockets that answer as port 53 of other hosts.
pub(crate) fn listen_udp_forwarder(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on UDP {addr}: {e}")))?;
    socket.set_nonblocking(true)?;
    let socket: UdpSocket = socket.into();
    crate::sys::udp::set_recv_original_destination(socket.as_fd(), addr.is_ipv6())?;
    Ok(socket)
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
