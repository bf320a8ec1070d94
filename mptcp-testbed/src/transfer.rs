//! Timed pattern transfers between two hosts over TCP or MPTCP.

use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::Host;
use crate::data::{self, Meter};

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

/// Round-trip times of `probes` UDP datagrams of 8 bytes sent from `client`
/// to an echo on `server` at `server_addr`, one every `interval`, like
/// `ping` (a probe without an echo within 1 s is an error).
pub fn udp_rtts(
    client: &Host,
    server: &Host,
    server_addr: Ipv4Addr,
    probes: usize,
    interval: Duration,
) -> io::Result<Vec<Duration>> {
    /// The echo ends on an empty datagram, or after this long without one.
    const IDLE: Duration = Duration::from_secs(2);
    let echo = server.run(|| UdpSocket::bind(SocketAddrV4::new(server_addr, 0)))?;
    let target = echo.local_addr()?;
    echo.set_read_timeout(Some(IDLE))?;
    let echoer = thread::spawn(move || -> io::Result<()> {
        let mut buf = [0; 64];
        loop {
            match echo.recv_from(&mut buf) {
                Ok((0, _)) => return Ok(()),
                Ok((n, from)) => {
                    echo.send_to(&buf[..n], from)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let socket = client.run(|| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))?;
    socket.connect(target)?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut rtts = Vec::with_capacity(probes);
    let outcome = (|| -> io::Result<()> {
        for seq in 0..probes as u64 {
            let sent = Instant::now();
            socket.send(&seq.to_be_bytes())?;
            let mut buf = [0; 8];
            // An echo of an earlier probe that came late is skipped.
            loop {
                let n = socket.recv(&mut buf).map_err(|e| {
                    io::Error::new(e.kind(), format!("probe {seq} to {target}: no echo: {e}"))
                })?;
                if n == 8 && u64::from_be_bytes(buf) == seq {
                    break;
                }
            }
            rtts.push(sent.elapsed());
            thread::sleep(interval);
        }
        Ok(())
    })();
    let _ = socket.send(&[]);
    let echoed = echoer
        .join()
        .map_err(|_| io::Error::other("the echo thread panicked"))?;
    outcome.and(echoed).map(|()| rtts)
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
