//! UDP through the relays: first the remote relay's SOCKS5 UDP ASSOCIATE on
//! loopback beside the same UDP echo reached directly (needs no
//! privileges), then, when it may build the test bed, the whole chain on
//! two unlimited WAN links (LAN host, TPROXY into the local relay, DATAGRAM
//! frames in its MPTCP session, the remote relay, a UDP echo on the
//! destination) beside the same echo reached by plain routing over one
//! link, then the same on two 100 Mbit/s links. For each: datagrams per second and Mbit/s (1,200-byte datagrams,
//! QUIC's size, 64 in flight), the relays' CPU per million datagrams (their
//! worker threads' user + system time), and the latency of one 64-byte
//! echo at a time (p50, p99); through the chain also while a bulk TCP
//! download runs on the same session. Prints one line per path and the
//! ratios:
//!
//! ```text
//! cargo build --release --bench udp
//! target/release/deps/udp-* --bench
//! ```
//!
//! Every loop is bounded in time or count (about 30 s in all).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mptcp_core::relay::{
    Config, EngineConfig, ListenerKind, LocalConfig, Relay, RelayHandle, RemoteConfig,
};
use mptcp_testbed::RelayPath;

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
        Path::plain(client_socket("127.0.0.1:0"), echo)
    }

    /// Datagrams from `socket` straight to `echo` (the firewall may divert
    /// them on their way).
    fn plain(socket: UdpSocket, echo: SocketAddr) -> Path {
        Path {
            socket,
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
            socket: client_socket("127.0.0.1:0"),
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
        self.recv_len(buf).is_some()
    }

    /// Waits for the next answer: its length, `None` on timeout.
    fn recv_len(&self, buf: &mut [u8]) -> Option<usize> {
        self.socket.recv(buf).ok()
    }
}

fn client_socket(at: &str) -> UdpSocket {
    let s = UdpSocket::bind(at).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s
}

/// A UDP echo at `at`, on its own thread.
fn echo_server(at: &str) -> SocketAddr {
    let s = UdpSocket::bind(at).unwrap();
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
    latency_of(path, ECHOES)
}

/// p50 and p99 of `echoes` echoes, one at a time, in microseconds. Each
/// carries its number, and only its own answer counts: one answer later
/// than the read timeout must not pass for the next one's.
fn latency_of(path: &Path, echoes: usize) -> (u128, u128) {
    let (mut datagram, mut buf) = (Vec::new(), vec![0u8; 65536]);
    let mut times = Vec::with_capacity(echoes);
    // Answers left over from the throughput run go first.
    while path.recv(&mut buf) {}
    for seq in 0..echoes as u64 {
        let mut payload = [0x33u8; 64];
        payload[..8].copy_from_slice(&seq.to_le_bytes());
        let t = Instant::now();
        path.send(&payload, &mut datagram);
        while let Some(n) = path.recv_len(&mut buf) {
            if buf[..n].ends_with(&payload) {
                times.push(t.elapsed().as_micros());
                break;
            }
        }
    }
    times.sort_unstable();
    if times.is_empty() {
        // Every echo lost (a session still opening): no figure.
        return (0, 0);
    }
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
    loopback();
    match mptcp_testbed::require_privileges() {
        Ok(()) => {
            chain(None);
            chain(Some(100));
        }
        Err(e) => println!("\nthe chain on the test bed needs privileges: {e}"),
    }
}

const MBIT_PER_RATE: f64 = (PAYLOAD * 8) as f64 / 1e6;

/// One line of the table: a path's rate, losses and echo latency.
fn report(name: &str, rate: f64, lost: u64, (p50, p99): (u128, u128)) {
    println!(
        "  {name:30} {rate:9.0} datagrams/s  {:7.1} Mbit/s each way  lost {lost:4}  \
         echo p50 {p50} us  p99 {p99} us",
        rate * MBIT_PER_RATE
    );
}

/// The remote relay's UDP ASSOCIATE on loopback beside the direct echo.
fn loopback() {
    let echo = echo_server("127.0.0.1:0");
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

    println!("UDP echo on loopback, {PAYLOAD}-byte datagrams, {IN_FLIGHT} in flight:");
    report("direct", direct_rate, direct_lost, direct_latency);
    report("through the relay", relay_rate, relay_lost, relay_latency);
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

const SOCKS_PORT: u16 = 1080;
const TPROXY_UDP_PORT: u16 = 12347;
const REDIRECT_PORT: u16 = 12345;
/// The echo the chain carries (TPROXY takes this port).
const CARRIED_ECHO: u16 = 7001;
/// The echo reached by plain routing (no rule for it).
const ROUTED_ECHO: u16 = 7002;
/// A TCP source on the destination for the bulk download beside the echo
/// (REDIRECT takes this port into the chain).
const BULK_PORT: u16 = 7003;
/// The same, reached by plain routing.
const ROUTED_BULK_PORT: u16 = 7004;
const BULK_TIME: Duration = Duration::from_secs(8);

/// The chain in the test bed on two WAN links of `rate_mbit` (or
/// unlimited), beside routing over one.
fn chain(rate_mbit: Option<u32>) {
    let rp = mptcp_testbed::relay_path(2, rate_mbit).unwrap();
    let dest = rp.dest_addr();
    for port in [CARRIED_ECHO, ROUTED_ECHO] {
        rp.dest.run(|| echo_server(&format!("{dest}:{port}")));
    }
    for port in [BULK_PORT, ROUTED_BULK_PORT] {
        bulk_source(&rp, port);
    }
    let (local, remote) = start_relays(&rp);
    let lan_path = |port| {
        let socket = rp.lan.run(|| client_socket("0.0.0.0:0"));
        Path::plain(socket, SocketAddr::new(dest.into(), port))
    };

    let routed = lan_path(ROUTED_ECHO);
    let (routed_rate, routed_lost) = throughput(&routed);
    let routed_latency = latency(&routed);

    let carried = lan_path(CARRIED_ECHO);
    // The first datagrams find the session opening: let it open.
    let _ = latency_of(&carried, 20);
    let cpu_before = relay_cpu_seconds();
    let (chain_rate, chain_lost) = throughput(&carried);
    let cpu = relay_cpu_seconds() - cpu_before;
    let chain_latency = latency(&carried);

    let beside_a_download = |path: &Path, port| {
        let stop = Arc::new(AtomicBool::new(false));
        let download = bulk_download(&rp, port, Arc::clone(&stop));
        std::thread::sleep(Duration::from_secs(1));
        let latency = latency(path);
        stop.store(true, Ordering::Relaxed);
        let (bytes, time) = download.join().unwrap();
        (latency, bytes as f64 * 8.0 / time.as_secs_f64() / 1e6)
    };
    let (routed_busy, routed_bulk) = beside_a_download(&routed, ROUTED_BULK_PORT);
    let (chain_busy, chain_bulk) = beside_a_download(&carried, BULK_PORT);

    let links = rate_mbit.map_or("unlimited".to_string(), |r| format!("{r} Mbit/s"));
    println!(
        "\nUDP echo from the LAN host, {PAYLOAD}-byte datagrams, {IN_FLIGHT} in flight, \
         two {links} WAN links:"
    );
    report(
        "routed (one link)",
        routed_rate,
        routed_lost,
        routed_latency,
    );
    report("through the chain", chain_rate, chain_lost, chain_latency);
    for (name, (p50, p99), bulk, beside) in [
        ("routed, busy", routed_busy, routed_bulk, "routed"),
        (
            "through the chain, busy",
            chain_busy,
            chain_bulk,
            "on the same session",
        ),
    ] {
        println!(
            "  {name:30} echo p50 {p50} us  p99 {p99} us, beside a TCP download at {bulk:.0} \
             Mbit/s {beside}"
        );
    }
    // Each answered datagram crossed both relays twice (up and down).
    let relayed_datagrams = chain_rate * THROUGHPUT_TIME.as_secs_f64() * 2.0;
    println!(
        "  chain/routed: {:.2} of the rate; both relays' CPU {:.2} s per million datagrams \
         carried",
        chain_rate / routed_rate,
        cpu / relayed_datagrams * 1e6
    );
    println!("  local relay: {}", local.stats());
    println!("  remote relay: {}", remote.stats());
}

/// The remote relay, and the local one with a TPROXY UDP listener and a
/// REDIRECT listener; one worker and one session (so that the echo and the
/// download share it); the firewall rules that send the LAN's traffic to
/// them.
fn start_relays(rp: &RelayPath) -> (RelayHandle, RelayHandle) {
    let (user, pass) = ("bench", "bench password");
    let any = |port| SocketAddr::new([0, 0, 0, 0].into(), port);
    let config = || {
        Config::new().engine(EngineConfig {
            workers: 1,
            ..EngineConfig::default()
        })
    };
    let remote = config().remote(RemoteConfig::new(any(SOCKS_PORT)).user(user, pass));
    let remote = rp.remote.run(|| Relay::start(remote)).unwrap();
    let remote_at = SocketAddr::new(rp.remote_addr().into(), SOCKS_PORT);
    let local = LocalConfig::new(remote_at.to_string())
        .credentials(user, pass)
        .tproxy_udp(any(TPROXY_UDP_PORT))
        .redirect(any(REDIRECT_PORT))
        .max_sessions(1);
    let local = rp
        .local
        .run(|| Relay::start(config().local(local)))
        .unwrap();
    rp.local.deliver_marked_locally().unwrap();
    rp.local
        .nft(&format!(
            "table inet udpbench {{\n chain pre {{\n  type filter hook prerouting priority mangle;\n  \
             iifname \"lan0\" udp dport {CARRIED_ECHO} meta mark set 0x4242 \
             tproxy ip to :{TPROXY_UDP_PORT}\n }}\n \
             chain nat {{\n  type nat hook prerouting priority dstnat;\n  \
             iifname \"lan0\" tcp dport {BULK_PORT} redirect to :{REDIRECT_PORT}\n }}\n}}\n"
        ))
        .unwrap();
    (local, remote)
}

/// A TCP source on the destination's `port`: sends zeros until the reader
/// closes.
fn bulk_source(rp: &RelayPath, port: u16) {
    let at = SocketAddr::new(rp.dest_addr().into(), port);
    let listener = rp.dest.run(|| TcpListener::bind(at)).unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            let chunk = vec![0u8; 256 << 10];
            while s.write_all(&chunk).is_ok() {}
        }
    });
}

/// A download from the LAN host of the destination's `port` until `stop`
/// (or [`BULK_TIME`]): bytes and time.
fn bulk_download(
    rp: &RelayPath,
    port: u16,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, Duration)> {
    let at = SocketAddr::new(rp.dest_addr().into(), port);
    let mut s = rp.lan.run(|| TcpStream::connect(at)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    std::thread::spawn(move || {
        let (start, mut bytes, mut buf) = (Instant::now(), 0u64, vec![0u8; 256 << 10]);
        while !stop.load(Ordering::Relaxed) && start.elapsed() < BULK_TIME {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes += n as u64,
            }
        }
        let _ = s.shutdown(Shutdown::Both);
        (bytes, start.elapsed())
    })
}
