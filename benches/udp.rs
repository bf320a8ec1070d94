//! UDP through the remote relay's SOCKS5 UDP ASSOCIATE on loopback, beside
//! the same UDP echo reached directly: datagrams per second and Mbit/s
//! (1,200-byte datagrams, QUIC's size, 64 in flight), the relay's CPU per
//! million datagrams (its worker threads' user + system time), and the
//! latency of one 64-byte echo at a time (p50, p99). Prints one line per
//! path and the ratios. Needs no privileges:
//!
//! ```text
//! cargo build --release --bench udp
//! target/release/deps/udp-* --bench
//! ```
//!
//! Every loop is bounded in time or count (about 10 s in all).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use mptcp_core::relay::{Config, EngineConfig, ListenerKind, Relay, RemoteConfig};

const PAYLOAD: usize = 1200;
const IN_FLIGHT: usize = 64;
const THROUGHPUT_TIME: Duration = Duration::from_secs(3);
const ECHOES: usize = 2000;

/// How the client reaches the echo: directly, or through an association.
struct Path {
    socket: UdpSocket,
    to: SocketAddr,
    /// The SOCKS5 UDP header in front of each datagram (empty: direct).
    header: Vec<u8>,
    _control: Option<TcpStream>,
}

impl Path {
    fn direct(echo: SocketAddr) -> Path {
        Path {
            socket: client_socket(),
            to: echo,
            header: Vec::new(),
            _control: None,
        }
    }

    /// A UDP ASSOCIATE at `relay` (no login: a loopback listener).
    fn relayed(relay: SocketAddr, echo: SocketAddr) -> Path {
        let mut control = TcpStream::connect(relay).unwrap();
        control.write_all(&[5, 1, 0]).unwrap();
        let mut answer = [0u8; 12];
        control.read_exact(&mut answer[..2]).unwrap();
        control.write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]).unwrap();
        control.read_exact(&mut answer[2..]).unwrap();
        assert_eq!(answer[2..6], [5, 0, 0, 1], "UDP ASSOCIATE refused");
        let to = SocketAddr::from((
            [answer[6], answer[7], answer[8], answer[9]],
            u16::from_be_bytes([answer[10], answer[11]]),
        ));
        let SocketAddr::V4(e) = echo else {
            unreachable!()
        };
        let mut header = vec![0, 0, 0, 1];
        header.extend_from_slice(&e.ip().octets());
        header.extend_from_slice(&e.port().to_be_bytes());
        Path {
            socket: client_socket(),
            to,
            header,
            _control: Some(control),
        }
    }

    fn send(&self, payload: &[u8], datagram: &mut Vec<u8>) {
        datagram.clear();
        datagram.extend_from_slice(&self.header);
        datagram.extend_from_slice(payload);
        // A full socket buffer loses the datagram, as UDP may.
        let _ = self.socket.send_to(datagram, self.to);
    }

    /// Waits for the next answer; `false` on timeout (a lost datagram).
    fn recv(&self, buf: &mut [u8]) -> bool {
        self.socket.recv(buf).is_ok()
    }
}

fn client_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s
}

/// A UDP echo on loopback, on its own thread.
fn echo_server() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    addr
}

/// Datagrams answered per second with [`IN_FLIGHT`] outstanding, and how
/// many were lost (each loss waits for a read timeout and is replaced).
fn throughput(path: &Path) -> (f64, u64) {
    let payload = vec![0x5a; PAYLOAD];
    let (mut datagram, mut buf) = (Vec::new(), vec![0u8; 65536]);
    for _ in 0..IN_FLIGHT {
        path.send(&payload, &mut datagram);
    }
    let (start, mut answered, mut lost) = (Instant::now(), 0u64, 0u64);
    while start.elapsed() < THROUGHPUT_TIME {
        if path.recv(&mut buf) {
            answered += 1;
        } else {
            lost += 1;
        }
        path.send(&payload, &mut datagram);
    }
    (answered as f64 / start.elapsed().as_secs_f64(), lost)
}

/// p50 and p99 of one echo at a time, in microseconds.
fn latency(path: &Path) -> (u128, u128) {
    let payload = [0x33u8; 64];
    let (mut datagram, mut buf) = (Vec::new(), vec![0u8; 65536]);
    let mut times = Vec::with_capacity(ECHOES);
    // Answers left over from the throughput run go first.
    while path.recv(&mut buf) {}
    for _ in 0..ECHOES {
        let t = Instant::now();
        path.send(&payload, &mut datagram);
        if path.recv(&mut buf) {
            times.push(t.elapsed().as_micros());
        }
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

/// CPU seconds (user + system) of this process's relay worker threads.
fn relay_cpu_seconds() -> f64 {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: utime and stime are fields 14 and 15.
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        if !comm.contains("(relay-") {
            continue;
        }
        let fields: Vec<&str> = rest.split(' ').collect();
        ticks += fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    }
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

fn main() {
    let echo = echo_server();
    let remote = RemoteConfig::new("127.0.0.1:0".parse().unwrap())
        .allow_unauthenticated_loopback(true)
        .allow_destination("127.0.0.0/8".parse().unwrap());
    let engine = EngineConfig {
        workers: 1,
        ..EngineConfig::default()
    };
    let relay = Relay::start(Config::new().engine(engine).remote(remote)).unwrap();
    let at = relay.listener(ListenerKind::RemoteSocks5).unwrap();

    let direct = Path::direct(echo);
    let (direct_rate, direct_lost) = throughput(&direct);
    let direct_latency = latency(&direct);

    let relayed = Path::relayed(at, echo);
    let cpu_before = relay_cpu_seconds();
    let (relay_rate, relay_lost) = throughput(&relayed);
    let cpu = relay_cpu_seconds() - cpu_before;
    let relay_latency = latency(&relayed);
    let stats = relay.stats();

    let mbit = |rate: f64| rate * (PAYLOAD * 8) as f64 / 1e6;
    println!("UDP echo on loopback, {PAYLOAD}-byte datagrams, {IN_FLIGHT} in flight:");
    for (name, rate, lost, (p50, p99)) in [
        ("direct", direct_rate, direct_lost, direct_latency),
        ("through the relay", relay_rate, relay_lost, relay_latency),
    ] {
        println!(
            "  {name:18} {rate:9.0} datagrams/s  {:7.1} Mbit/s each way  lost {lost:4}  \
             echo p50 {p50} us  p99 {p99} us",
            mbit(rate)
        );
    }
    // Each answered datagram crossed the relay twice (up and down).
    let relayed_datagrams = relay_rate * THROUGHPUT_TIME.as_secs_f64() * 2.0;
    println!(
        "  relay/direct: {:.2} of the rate; relay CPU {:.2} s per million datagrams relayed \
         (one worker)",
        relay_rate / direct_rate,
        cpu / relayed_datagrams * 1e6
    );
    println!("  relay counters: {stats}");
}
