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
    force_buffer(stream, libc::SO_RCVBUFFORCE, bytes, "receive");
}

/// Sets `option` (`SO_RCVBUFFORCE` or `SO_SNDBUFFORCE`) to `bytes`; says
/// whether the kernel took it (the `which` buffer stays autotuned if not).
fn force_buffer(
    stream: &mio::net::TcpStream,
    option: libc::c_int,
    bytes: usize,
    which: &str,
) -> bool {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    match sys::fd::set_int_option(stream.as_raw_fd(), libc::SOL_SOCKET, option, size) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "relay: session {which} buffer stays autotuned");
            false
        }
    }
}

/// The most [`send_buffer_for`] asks for (the kernel doubles it): 32 MiB,
/// what `mptcp probe` recommends for the host's own sockets.
const SEND_BUFFER_MAX: usize = 32 * 1024 * 1024;

/// The send buffer a session needs when its subflows' round trips differ
/// (the longest at least [`LONG_ROUND_TRIP`] and at least twice the
/// shortest): twice what all its subflows deliver in the longest one's
/// smoothed round trip, at most [`SEND_BUFFER_MAX`]. `None` where they do
/// not differ so, or nothing was delivered: the kernel's autotuning does
/// well there.
///
/// The kernel's scheduler gives the next segment to the subflow whose
/// queue (in flight and unsent) drains soonest at its pacing rate, so the
/// long subflow is kept full only while the short one may queue as much
/// time's worth; but it sizes each subflow's buffer from that subflow's
/// own window, and the short subflow's fills at a few times its own short
/// round trip. Measured on 20 Mbit/s at 5 ms beside 20 at 75 ms (through
/// the chain, bbr): autotuned, the 75 ms subflow carried 15-16 Mbit/s with
/// half its window unused and the chain 0.87-0.91 of the links' sum;
/// with `SO_SNDBUF` at 1.5 MB (what this rule gives) 0.92-0.95, at 4 MiB
/// 0.93-0.98, and at 600 kB no better than autotuned.
pub(crate) fn send_buffer_for(subflows: &[SubflowLoad]) -> Option<usize> {
    let min_rtts = subflows.iter().filter_map(|sf| sf.min_rtt);
    let shortest = min_rtts.clone().min()?;
    let longest = min_rtts.max()?;
    if subflows.len() < 2 || longest < LONG_ROUND_TRIP || longest < 2 * shortest {
        return None;
    }
    let round_trip = subflows
        .iter()
        .filter(|sf| sf.min_rtt.is_some())
        .map(|sf| sf.rtt)
        .max()?
        .max(longest);
    let delivered_per_second: u64 = subflows.iter().map(|sf| sf.delivery_rate).sum();
    let bytes = 2 * u128::from(delivered_per_second) * round_trip.as_micros() / 1_000_000;
    (bytes > 0).then(|| {
        usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .min(SEND_BUFFER_MAX)
    })
}

/// What [`send_buffer_for`] needs of a subflow (from its `tcp_info`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SubflowLoad {
    /// The path's round trip ([`path_round_trip`]); `None` where the
    /// subflow has not measured it.
    pub min_rtt: Option<std::time::Duration>,
    /// The smoothed round trip, with the queue in it.
    pub rtt: std::time::Duration,
    /// Bytes per second, the kernel's latest sample.
    pub delivery_rate: u64,
}

impl From<&crate::info::Subflow> for SubflowLoad {
    fn from(sf: &crate::info::Subflow) -> SubflowLoad {
        SubflowLoad {
            min_rtt: path_round_trip(sf),
            rtt: sf.tcp.rtt,
            delivery_rate: sf.tcp.delivery_rate,
        }
    }
}

/// A subflow's least round trip so far, where that measures its path: not
/// for a subflow that has had no data acknowledged after a retransmission
/// timeout (a join whose handshake was sent again measured the timeout, a
/// second or more).
pub(crate) fn path_round_trip(sf: &crate::info::Subflow) -> Option<std::time::Duration> {
    let measured = sf.tcp.bytes_acked > 1 || sf.tcp.total_rto == Some(0);
    sf.tcp.min_rtt.filter(|_| measured)
}

/// Whether a send buffer of `wanted` bytes is worth setting where there is
/// `current`: never smaller, and not for less than a quarter more, since
/// round trips and rates wobble.
fn worth_growing(current: usize, wanted: usize) -> bool {
    wanted > current + current / 4
}

/// Grows a session's send buffer to `bytes` ([`set_send_buffer`]) where
/// that is worth it against what the kernel reports now (for an MPTCP
/// socket it autotunes, what its subflows hold together: so a session
/// whose autotuned subflows already hold that much keeps autotuning, as
/// on 50 Mbit/s at 10 ms beside 10 at 40 ms, which carried 0.95-1.01 of
/// the links' sum that way). Says whether it grew.
pub(crate) fn grow_send_buffer(stream: &mio::net::TcpStream, bytes: usize) -> bool {
    // The kernel reports the doubled value.
    let current = SockRef::from(stream).send_buffer_size().unwrap_or(0) / 2;
    worth_growing(current, bytes) && set_send_buffer(stream, bytes)
}

/// Fixes a session's send buffer at `bytes` (`SO_SNDBUFFORCE`, with
/// CAP_NET_ADMIN; the kernel doubles it and gives it to the MPTCP socket
/// and each subflow, present and future, and stops autotuning them). Says
/// whether the kernel took it; without the capability the buffer stays
/// autotuned (`SO_SNDBUF` would cap it at `net.core.wmem_max`, far smaller).
fn set_send_buffer(stream: &mio::net::TcpStream, bytes: usize) -> bool {
    force_buffer(stream, libc::SO_SNDBUFFORCE, bytes, "send")
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn load(min_rtt_ms: u64, rtt_ms: u64, mbit: u64) -> SubflowLoad {
        SubflowLoad {
            min_rtt: Some(Duration::from_millis(min_rtt_ms)),
            rtt: Duration::from_millis(rtt_ms),
            delivery_rate: mbit * 1_000_000 / 8,
        }
    }

    #[test]
    fn a_session_on_links_of_different_delays_gets_two_round_trips_of_its_rate() {
        // 20 Mbit/s at 5 ms beside 20 at 75 ms, both full.
        let bytes = send_buffer_for(&[load(10, 20, 20), load(150, 160, 20)]).unwrap();
        assert_eq!(bytes, 2 * 5_000_000 * 160 / 1000);
    }

    #[test]
    fn like_round_trips_and_short_ones_stay_autotuned() {
        assert_eq!(send_buffer_for(&[load(60, 70, 20), load(80, 90, 20)]), None);
        assert_eq!(send_buffer_for(&[load(1, 2, 900), load(8, 9, 900)]), None);
        assert_eq!(send_buffer_for(&[load(150, 160, 20)]), None);
        assert_eq!(send_buffer_for(&[load(10, 20, 0), load(150, 160, 0)]), None);
    }

    #[test]
    fn a_join_that_measured_its_handshake_timeout_does_not_count() {
        let unmeasured = SubflowLoad {
            min_rtt: None,
            rtt: Duration::from_millis(1031),
            delivery_rate: 0,
        };
        assert_eq!(send_buffer_for(&[load(1, 2, 20), unmeasured]), None);
        let bytes = send_buffer_for(&[load(10, 20, 20), load(150, 160, 20), unmeasured]);
        assert_eq!(bytes, Some(2 * 5_000_000 * 160 / 1000));
    }

    #[test]
    fn the_send_buffer_asked_for_has_a_ceiling() {
        let bytes = send_buffer_for(&[load(10, 20, 10_000), load(150, 600, 10_000)]);
        assert_eq!(bytes, Some(SEND_BUFFER_MAX));
    }

    #[test]
    fn a_send_buffer_only_grows_and_by_a_quarter_at_least() {
        assert!(worth_growing(0, 1));
        assert!(!worth_growing(4 << 20, 1 << 20));
        assert!(!worth_growing(4 << 20, 5 << 20));
        assert!(worth_growing(4 << 20, 6 << 20));
    }

    #[test]
    fn a_send_buffer_is_fixed_where_the_relay_may() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let stream = mio::net::TcpStream::from_std(client);
        let size = || SockRef::from(&stream).send_buffer_size().unwrap();
        // SO_SNDBUFFORCE needs CAP_NET_ADMIN: the test runs as root.
        assert!(set_send_buffer(&stream, 4 << 20), "SO_SNDBUFFORCE refused");
        assert_eq!(size(), 8 << 20);
        assert!(!grow_send_buffer(&stream, 1 << 20));
        assert!(grow_send_buffer(&stream, 6 << 20));
        assert_eq!(size(), 12 << 20);
    }
}
