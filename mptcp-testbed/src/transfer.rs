//! Timed pattern transfers between two hosts over TCP or MPTCP.

use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::data::{self, Meter};
use crate::{Host, sys};

/// IPPROTO_MPTCP: the protocol number that asks socket(2) for MPTCP.
const IPPROTO_MPTCP: i32 = 262;

/// How long a transfer waits for its connection, and at most between two
/// reads or writes (a link that is down stalls a subflow for a while).
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Transport protocol of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Plain TCP.
    Tcp,
    /// Multipath TCP (IPPROTO_MPTCP).
    Mptcp,
}

impl Proto {
    fn socket(self, addr: &SocketAddr) -> io::Result<Socket> {
        let proto = match self {
            Proto::Tcp => Protocol::TCP,
            Proto::Mptcp => Protocol::from(IPPROTO_MPTCP),
        };
        Socket::new(Domain::for_address(*addr), Type::STREAM, Some(proto)).map_err(|e| {
            if self == Proto::Mptcp {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot open an MPTCP socket ({e}): the kernel needs MPTCP \
                         (CONFIG_MPTCP, Linux 5.6+) and `sysctl net.mptcp.enabled=1`"
                    ),
                )
            } else {
                e
            }
        })
    }
}

/// A listening socket of protocol `proto` bound to `addr` (port 0: any free
/// port), in the namespace of the calling thread.
pub fn listen(proto: Proto, addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = proto.socket(&addr)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// A connection of protocol `proto` to `addr`, from the namespace of the
/// calling thread.
pub fn connect(proto: Proto, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = proto.socket(&addr)?;
    socket.connect_timeout(&addr.into(), STALL_TIMEOUT)?;
    Ok(socket.into())
}

/// A transfer of the test pattern from a client host to a server host,
/// running in the background for a given time.
///
/// The server counts what it receives on [`Transfer::meter`] (sample it for
/// live progress) and checks every byte against the pattern; the client's
/// socket stays reachable through [`Transfer::client_socket`] (to inspect its
/// subflows, for instance).
#[derive(Debug)]
pub struct Transfer {
    meter: Meter,
    port: u16,
    client: TcpStream,
    sender: JoinHandle<io::Result<(u64, u64)>>,
    receiver: JoinHandle<io::Result<(u64, u64, Duration)>>,
}

/// The outcome of a [`Transfer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransferReport {
    /// Bytes the client wrote.
    pub sent_bytes: u64,
    /// Checksum of what the client wrote.
    pub sent_checksum: u64,
    /// Bytes the server read, each checked against the pattern.
    pub received_bytes: u64,
    /// Checksum of what the server read.
    pub received_checksum: u64,
    /// From the server's accept to the end of the stream.
    pub elapsed: Duration,
}

impl TransferReport {
    /// Whether every byte sent arrived, in order and intact.
    pub fn intact(&self) -> bool {
        self.sent_bytes == self.received_bytes && self.sent_checksum == self.received_checksum
    }

    /// Average goodput in Mbit/s seen by the server.
    pub fn mbit_per_s(&self) -> f64 {
        data::mbit_per_s(self.received_bytes, self.elapsed)
    }
}

impl Transfer {
    /// Starts sending the pattern from `client` to `server_addr` (an address
    /// of `server`) over `proto` for `duration`.
    pub fn start(
        client: &Host,
        server: &Host,
        server_addr: Ipv4Addr,
        proto: Proto,
        duration: Duration,
    ) -> io::Result<Transfer> {
        let bind = SocketAddr::V4(SocketAddrV4::new(server_addr, 0));
        let listener = server.run(|| listen(proto, bind))?;
        let port = listener.local_addr()?.port();
        let meter = Meter::new();
        let receiver = {
            let meter = meter.clone();
            thread::spawn(move || {
                let (stream, _) = accept_within(&listener, STALL_TIMEOUT)?;
                stream.set_read_timeout(Some(STALL_TIMEOUT))?;
                let start = Instant::now();
                let (bytes, sum) = data::receive_and_check(&mut meter.reader(&stream))?;
                Ok((bytes, sum, start.elapsed()))
            })
        };
        let target = SocketAddr::V4(SocketAddrV4::new(server_addr, port));
        // The socket belongs to the namespace it was made in; the thread
        // that then writes to it may be anywhere.
        let mut stream = client.run(|| connect(proto, target))?;
        stream.set_write_timeout(Some(STALL_TIMEOUT))?;
        let control = stream.try_clone()?;
        let sender = thread::spawn(move || {
            let result = data::send_pattern_for(&mut stream, duration)?;
            // Shut down explicitly: `control` keeps the socket open.
            stream.shutdown(Shutdown::Write)?;
            Ok(result)
        });
        Ok(Transfer {
            meter,
            port,
            client: control,
            sender,
            receiver,
        })
    }

    /// The meter of received bytes.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// The client's socket (a duplicate descriptor of the one that sends).
    pub fn client_socket(&self) -> BorrowedFd<'_> {
        self.client.as_fd()
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the end and returns the outcome. A failed side is an error,
    /// the sender's first.
    pub fn wait(self) -> io::Result<TransferReport> {
        let sent = self
            .sender
            .join()
            .map_err(|_| io::Error::other("the sending thread panicked"))?;
        let received = self
            .receiver
            .join()
            .map_err(|_| io::Error::other("the receiving thread panicked"))?;
        let (sent_bytes, sent_checksum) =
            sent.map_err(|e| io::Error::new(e.kind(), format!("sending: {e}")))?;
        let (received_bytes, received_checksum, elapsed) =
            received.map_err(|e| io::Error::new(e.kind(), format!("receiving: {e}")))?;
        Ok(TransferReport {
            sent_bytes,
            sent_checksum,
            received_bytes,
            received_checksum,
            elapsed,
        })
    }
}

/// Round-trip times of `probes` pings (ICMP echo requests of 8 bytes) from
/// `client` to `addr`, one every `interval`; a probe without a reply within
/// 1 s is an error.
///
/// The far host's kernel answers, and a reply's time is the kernel's receive
/// timestamp, so no user thread's wait for a CPU shows in the result: on a
/// busy machine it measures the path, not the scheduler. Lets this process's
/// group open ping sockets in `client` (`net.ipv4.ping_group_range`).
pub fn ping_rtts(
    client: &Host,
    addr: Ipv4Addr,
    probes: usize,
    interval: Duration,
) -> io::Result<Vec<Duration>> {
    let gid = sys::effective_gid();
    client.sysctl("net.ipv4.ping_group_range", &format!("{gid} {gid}"))?;
    let socket = client.run(|| Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)))?;
    socket.connect(&SocketAddr::V4(SocketAddrV4::new(addr, 0)).into())?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    sys::set_rx_timestamps(socket.as_fd())?;
    let mut rtts = Vec::with_capacity(probes);
    for seq in 0..probes {
        let seq = (seq as u16).to_be_bytes();
        // Echo request: type 8, code 0; the kernel sets the checksum and id.
        let request = [8, 0, 0, 0, 0, 0, seq[0], seq[1]];
        let sent = sys::unix_time();
        socket.send(&request)?;
        let mut reply = [0; 64];
        loop {
            let (len, at) = sys::recv_stamped(socket.as_fd(), &mut reply, 0)?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "ping {} to {addr}: no reply within 1 s",
                        u16::from_be_bytes(seq)
                    ),
                )
            })?;
            // An echo reply (type 0) to this probe; a late one is skipped.
            if len >= 8 && reply[0] == 0 && reply[6..8] == seq {
                rtts.push(at.saturating_sub(sent));
                break;
            }
        }
        thread::sleep(interval);
    }
    Ok(rtts)
}

/// Accepts one connection, giving up after `timeout` (so that a client that
/// never connects does not hang the test).
fn accept_within(listener: &TcpListener, timeout: Duration) -> io::Result<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false)?;
                return Ok((stream, peer));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                ));
            }
            Err(e) => return Err(e),
        }
    }
}
