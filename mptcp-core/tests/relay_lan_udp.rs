//! UDP from the LAN through the chain, in the test bed: nftables TPROXY on
//! the local node sends the LAN host's datagrams to the local relay's
//! transparent UDP listener, which carries them as DATAGRAM frames in its
//! session (over every WAN link) to the remote relay, which sends them on
//! to UDP responders on the destination host. Answers reach the LAN host
//! from the address it wrote to; `iperf3 -u` above one link's rate reports
//! loss and throughput; a WAN link taken down mid-run stops the datagrams
//! for less than 3 s; floods of new flows are limited and counted while a
//! TCP transfer beside them goes on; ports are carried, blocked or sent
//! directly as configured; `dig` gets answers through TPROXY and through
//! the DNS forwarder.
#![cfg(feature = "relay")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mptcp_core::relay::{
    Config, EngineConfig, ErrorKind, LocalConfig, Relay, RelayHandle, RemoteConfig, SecretKey,
    UdpDrop, UdpPortAction,
};
use mptcp_testbed::RelayPath;

mod support;
use support::{PASS, USER, stats_until};

const SOCKS_PORT: u16 = 1080;
/// The local relay's TPROXY UDP listener.
const TPROXY_UDP_PORT: u16 = 12347;
/// Its TPROXY TCP listener, where a test has one.
const TCP_TPROXY_PORT: u16 = 12346;
/// Responders on the destination host (answer `re:<sender ip>:` + data).
const ECHO_PORT: u16 = 5353;
const WAIT: Duration = Duration::from_secs(2);

/// How a test changes the local relay's configuration.
type LocalOf = Box<dyn FnOnce(LocalConfig) -> LocalConfig>;

/// The local relay's configuration as the chain builds it.
fn local_as_is(l: LocalConfig) -> LocalConfig {
    l
}

/// The chain: a remote relay, a local relay with a TPROXY UDP listener, and
/// the nftables rule that sends the LAN's UDP to `ports` into it.
struct Chain {
    rp: RelayPath,
    local: RelayHandle,
    remote: RelayHandle,
}

impl Chain {
    fn new(n_wan: usize, rate_mbit: Option<u32>, engine: EngineConfig, ports: &str) -> Chain {
        Chain::with(n_wan, rate_mbit, engine, ports, |r| {
            (Box::new(local_as_is), r)
        })
    }

    /// [`Chain::new`] with more of the relays' configuration: `configure`
    /// changes the remote's and says how to change the local's.
    fn with(
        n_wan: usize,
        rate_mbit: Option<u32>,
        engine: EngineConfig,
        ports: &str,
        configure: impl FnOnce(RemoteConfig) -> (LocalOf, RemoteConfig),
    ) -> Chain {
        mptcp_testbed::require_privileges().unwrap();
        let rp = mptcp_testbed::relay_path(n_wan, rate_mbit).unwrap();
        let listen = SocketAddr::new([0, 0, 0, 0].into(), SOCKS_PORT);
        let (local_of, remote) = configure(RemoteConfig::new(listen).user(USER, PASS));
        let remote = Config::new().engine(engine.clone()).remote(remote);
        let remote = rp.remote.run(|| Relay::start(remote)).unwrap();
        let remote_at = SocketAddr::new(rp.remote_addr().into(), SOCKS_PORT);
        let local = local_of(
            LocalConfig::new(remote_at.to_string())
                .credentials(USER, PASS)
                .tproxy_udp(SocketAddr::new([0, 0, 0, 0].into(), TPROXY_UDP_PORT)),
        );
        let local = rp
            .local
            .run(|| Relay::start(Config::new().engine(engine).local(local)))
            .unwrap();
        // The README's rules (an inet table), for the test's ports.
        rp.local.deliver_marked_locally().unwrap();
        rp.local
            .nft(&format!(
                "table inet relayudp {{\n chain pre {{\n  type filter hook prerouting priority mangle;\n  \
                 iifname \"lan0\" ip daddr 198.19.1.0/24 return\n  \
                 iifname \"lan0\" meta nfproto ipv4 udp dport {ports} meta mark set 0x4242 \
                 tproxy ip to :{TPROXY_UDP_PORT}\n }}\n}}\n"
            ))
            .unwrap();
        Chain { rp, local, remote }
    }

    fn dest(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.rp.dest_addr().into(), port)
    }

    /// A UDP socket on the LAN host.
    fn lan_socket(&self) -> UdpSocket {
        let s = self.rp.lan.run(|| UdpSocket::bind("0.0.0.0:0")).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    }

    /// Responders on the destination host on `ports`: each answers a
    /// datagram with `re:`, the sender's IP, `:`, and the datagram.
    fn responders(&self, ports: impl IntoIterator<Item = u16>) {
        for port in ports {
            self.responder_at(self.dest(port));
        }
    }

    /// One such responder on the destination host at `at`.
    fn responder_at(&self, at: SocketAddr) {
        let socket = self.rp.dest.run(|| UdpSocket::bind(at)).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let mut answer = format!("re:{}:", from.ip()).into_bytes();
                answer.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&answer, from);
            }
        });
    }
}

/// Sends `payload` from `socket` to `to` until an answer to it comes (the
/// first may find the session still opening; UDP may lose one): the answer
/// and its sender. Answers to earlier datagrams are skipped.
fn ask(socket: &UdpSocket, to: SocketAddr, payload: &[u8]) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 65536];
    for _ in 0..10 {
        socket.send_to(payload, to).unwrap();
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if buf[..n].ends_with(payload) {
                return (buf[..n].to_vec(), from);
            }
        }
    }
    panic!("no answer to {payload:?} from {to}");
}

/// What a responder answers, when the datagram came through the remote
/// relay (from its way out).
fn relayed_answer(rp: &RelayPath, payload: &[u8]) -> Vec<u8> {
    let mut a = format!("re:{}:", rp.remote_egress_addr()).into_bytes();
    a.extend_from_slice(payload);
    a
}

fn engine() -> EngineConfig {
    EngineConfig {
        workers: 2,
        handshake_timeout_secs: 5,
        ..EngineConfig::default()
    }
}

#[test]
fn lan_datagrams_through_tproxy_are_answered_from_their_destination() {
    let chain = Chain::new(
        2,
        None,
        engine(),
        &format!("{{ {ECHO_PORT}, {} }}", ECHO_PORT + 1),
    );
    chain.responders([ECHO_PORT, ECHO_PORT + 1]);
    let rp = &chain.rp;
    let [echo, echo2] = [ECHO_PORT, ECHO_PORT + 1].map(|p| chain.dest(p));
    // Two LAN sockets, one of them to two destinations: three flows, each
    // answered from the address it wrote to, through the remote relay.
    let a = chain.lan_socket();
    let b = chain.lan_socket();
    assert_eq!(ask(&a, echo, b"a1"), (relayed_answer(rp, b"a1"), echo));
    assert_eq!(ask(&a, echo2, b"a2"), (relayed_answer(rp, b"a2"), echo2));
    assert_eq!(ask(&b, echo, b"b1"), (relayed_answer(rp, b"b1"), echo));
    // A large datagram keeps every byte.
    let big: Vec<u8> = (0..30_000).map(|i| (i % 251) as u8).collect();
    assert_eq!(ask(&b, echo, &big), (relayed_answer(rp, &big), echo));

    let local = stats_until(&chain.local, |s| s.udp.datagrams_down >= 4);
    assert!(
        local.udp.datagrams_up >= 4 && local.udp.datagrams_down >= 4,
        "{local}"
    );
    assert!(local.udp.bytes_up >= 30_000, "{local}");
    let remote = chain.remote.stats();
    assert!(
        remote.udp.datagrams_up >= 4 && remote.udp.datagrams_down >= 4,
        "{remote}"
    );
    assert_eq!(
        remote.udp.associations_opened, 0,
        "no SOCKS5 association: {remote}"
    );
    // Only the first datagrams may have found no session yet.
    let others: u64 = local.udp.drops.iter().sum::<u64>() - local.udp.dropped(UdpDrop::NoSession);
    assert_eq!(others, 0, "{local}");
}

#[test]
fn each_port_is_carried_blocked_or_sent_directly_as_configured() {
    let [carried, blocked, direct] = [ECHO_PORT, ECHO_PORT + 1, ECHO_PORT + 2];
    fn choices(l: LocalConfig) -> LocalConfig {
        let [blocked, direct] = [ECHO_PORT + 1, ECHO_PORT + 2];
        l.udp_ports(&blocked.to_string(), UdpPortAction::Block)
            .udp_ports(&format!("{direct}-{}", direct + 10), UdpPortAction::Direct)
    }
    let ports = format!("{ECHO_PORT}-{direct}");
    let chain = Chain::with(1, None, engine(), &ports, |r| (Box::new(choices), r));
    chain.responders([carried, blocked, direct]);
    let rp = &chain.rp;
    let lan = chain.lan_socket();
    let to = |p| chain.dest(p);
    // Carried: it leaves from the remote relay.
    assert_eq!(
        ask(&lan, to(carried), b"c"),
        (relayed_answer(rp, b"c"), to(carried))
    );
    // Direct: from the router itself (its address on WAN link 0), and the
    // answer still comes from the address the host wrote to.
    let (answer, from) = ask(&lan, to(direct), b"d");
    assert_eq!(from, to(direct));
    assert_eq!(
        answer,
        b"re:198.18.0.1:d",
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Blocked: nothing comes back, and it is counted.
    for _ in 0..3 {
        lan.send_to(b"b", to(blocked)).unwrap();
    }
    assert!(
        lan.recv_from(&mut [0u8; 64]).is_err(),
        "a blocked port gets no answer"
    );
    let s = stats_until(&chain.local, |s| s.udp.dropped(UdpDrop::Blocked) >= 3);
    assert_eq!(s.udp.dropped(UdpDrop::Blocked), 3, "{s}");
    let remote = chain.remote.stats();
    assert!(remote.udp.datagrams_up >= 1, "{remote}");
    assert_eq!(
        remote.udp.bytes_up, remote.udp.datagrams_up,
        "only the carried one-byte datagrams reached the remote: {remote}"
    );
}

/// The address the test's DNS server gives every name.
const ANSWER_IP: &str = "192.0.2.7";

/// A DNS server on the destination host, port 53 on UDP and on TCP (RFC
/// 7766: each message after its 2-byte length): every A query gets one
/// answer, [`ANSWER_IP`] (RFC 1035 wire format, enough for `dig`).
fn dns_server(rp: &RelayPath) {
    let at = SocketAddr::new(rp.dest_addr().into(), 53);
    let socket = rp.dest.run(|| UdpSocket::bind(at)).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if let Some(answer) = dns_answer(&buf[..n]) {
                let _ = socket.send_to(&answer, from);
            }
        }
    });
    let listener = rp.dest.run(|| TcpListener::bind(at)).unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            let _ = s.set_read_timeout(Some(WAIT));
            let mut len = [0u8; 2];
            while s.read_exact(&mut len).is_ok() {
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if s.read_exact(&mut query).is_err() {
                    break;
                }
                let Some(answer) = dns_answer(&query) else {
                    break;
                };
                let mut framed = u16::try_from(answer.len()).unwrap().to_be_bytes().to_vec();
                framed.extend_from_slice(&answer);
                if s.write_all(&framed).is_err() {
                    break;
                }
            }
        }
    });
}

/// The answer to DNS `query`: [`ANSWER_IP`] for its question.
fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    // Header (12 bytes), then the question: labels up to a zero length,
    // type and class.
    let mut end = 12;
    while end < query.len() && query[end] != 0 {
        end += 1 + usize::from(query[end]);
    }
    let end = end + 5;
    if query.len() < end {
        return None;
    }
    let mut answer = query[..2].to_vec();
    answer.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    answer.extend_from_slice(&query[12..end]);
    // The name by pointer to the question, A, IN, TTL 60, 4 bytes.
    answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    let ip: std::net::Ipv4Addr = ANSWER_IP.parse().unwrap();
    answer.extend_from_slice(&ip.octets());
    Some(answer)
}

/// `dig +short` for `name` from the LAN host, asking `server`: its last
/// line (a first try may time out while the session opens, which dig
/// reports before the answer of its next).
fn dig(rp: &RelayPath, server: &str, name: &str) -> String {
    dig_with(rp, server, name, "+notcp")
}

/// [`dig`] with one more option (`+tcp`).
fn dig_with(rp: &RelayPath, server: &str, name: &str, option: &str) -> String {
    rp.lan
        .exec(
            "dig",
            &[
                "+short",
                "+time=2",
                "+tries=5",
                option,
                &format!("@{server}"),
                name,
                "A",
            ],
        )
        .expect("dig (package dnsutils) must be installed")
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn dig_gets_answers_through_tproxy_and_through_the_dns_forwarder() {
    fn forwarder(l: LocalConfig) -> LocalConfig {
        let at = SocketAddr::new([0, 0, 0, 0].into(), 53);
        // The forwarder serves private ranges unless told: the test bed's
        // LAN is in the benchmarking range.
        l.dns(at, SocketAddr::new([198, 19, 2, 2].into(), 53))
            .allow_client("198.19.1.0/24".parse().unwrap())
    }
    let chain = Chain::with(1, None, engine(), "53", |r| (Box::new(forwarder), r));
    let rp = &chain.rp;
    dns_server(rp);
    // Asking the resolver directly: TPROXY takes the query into the chain.
    assert_eq!(
        dig(rp, &rp.dest_addr().to_string(), "direct.test"),
        ANSWER_IP
    );
    // Asking the router: its forwarder sends the query to the resolver.
    assert_eq!(
        dig(rp, &rp.local_lan_addr().to_string(), "forwarded.test"),
        ANSWER_IP
    );
    let local = stats_until(&chain.local, |s| s.udp.datagrams_down >= 2);
    assert!(local.udp.datagrams_down >= 2, "{local}");
    let remote = chain.remote.stats();
    assert!(
        remote.udp.datagrams_up >= 2 && remote.udp.datagrams_down >= 2,
        "{remote}"
    );
    // Over TCP: the forwarder's TCP side carries the connection to the
    // resolver through the remote relay.
    let relayed = remote.relayed;
    assert_eq!(
        dig_with(rp, &rp.local_lan_addr().to_string(), "tcp.test", "+tcp"),
        ANSWER_IP
    );
    let remote = stats_until(&chain.remote, |s| s.relayed > relayed);
    assert!(remote.relayed > relayed, "{remote}");
}

/// With no `allowed_clients`, the forwarder serves the private ranges only
/// (an open resolver would answer the whole internet): the test bed's LAN
/// host, in the benchmarking range, is refused on UDP and on TCP.
#[test]
fn the_dns_forwarder_is_not_an_open_resolver() {
    fn forwarder(l: LocalConfig) -> LocalConfig {
        let at = SocketAddr::new([0, 0, 0, 0].into(), 53);
        l.dns(at, SocketAddr::new([198, 19, 2, 2].into(), 53))
    }
    let chain = Chain::with(1, None, engine(), "9", |r| (Box::new(forwarder), r));
    let rp = &chain.rp;
    dns_server(rp);
    let router = SocketAddr::new(rp.local_lan_addr().into(), 53);
    let socket = chain.lan_socket();
    let query = [
        0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 0, 0, 1, 0, 1,
    ];
    socket.send_to(&query, router).unwrap();
    let mut buf = [0u8; 512];
    assert!(socket.recv_from(&mut buf).is_err(), "a UDP answer came");
    let mut tcp = rp
        .lan
        .run(|| TcpStream::connect_timeout(&router, WAIT))
        .unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut framed = vec![0, query.len() as u8];
    framed.extend_from_slice(&query);
    let _ = tcp.write_all(&framed);
    assert!(
        !matches!(tcp.read(&mut buf), Ok(n) if n > 0),
        "a TCP answer came"
    );
    let stats = stats_until(&chain.local, |s| s.error(ErrorKind::ClientDenied) >= 2);
    assert!(stats.error(ErrorKind::ClientDenied) >= 2, "{stats}");
    assert_eq!(chain.remote.stats().udp.datagrams_up, 0);
}

#[test]
fn datagrams_cross_an_encrypted_session() {
    let remote_key = SecretKey::generate();
    let local_key = SecretKey::generate();
    let remote_public = remote_key.public_key();
    let chain = Chain::with(1, None, engine(), &ECHO_PORT.to_string(), |r| {
        let r = r.key(&remote_key).peer_key(&local_key.public_key());
        let local_of: LocalOf = Box::new(move |l| l.encrypt(&local_key, &remote_public));
        (local_of, r)
    });
    chain.responders([ECHO_PORT]);
    let echo = chain.dest(ECHO_PORT);
    let lan = chain.lan_socket();
    for i in 0..20u8 {
        let query = [b'q', i];
        assert_eq!(
            ask(&lan, echo, &query),
            (relayed_answer(&chain.rp, &query), echo)
        );
    }
    let remote = chain.remote.stats();
    assert!(remote.udp.datagrams_down >= 20, "{remote}");
    assert_eq!(remote.session_errors, 0, "{remote}");
}

#[test]
fn a_remote_that_does_not_offer_datagrams_is_sent_none() {
    let chain = Chain::with(1, None, engine(), &ECHO_PORT.to_string(), |mut r| {
        // Its SETTINGS then lack setting 3, as an older relay's do.
        r.udp_associate = false;
        (Box::new(local_as_is), r)
    });
    chain.responders([ECHO_PORT]);
    let lan = chain.lan_socket();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Until the session is open the drops are `no_session`; then every
    // datagram is `not_offered`, and none reaches the remote relay.
    while chain.local.stats().udp.dropped(UdpDrop::NotOffered) < 3 {
        assert!(Instant::now() < deadline, "{}", chain.local.stats());
        lan.send_to(b"old remote", chain.dest(ECHO_PORT)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(lan.recv_from(&mut [0u8; 64]).is_err(), "no answer");
    let local = chain.local.stats();
    assert_eq!(local.udp.datagrams_up, 0, "{local}");
    let remote = chain.remote.stats();
    assert_eq!(
        remote.udp.datagrams_up + remote.udp.drops.iter().sum::<u64>(),
        0,
        "{remote}"
    );
    assert_eq!(remote.session_errors, 0, "{remote}");
}

#[test]
fn a_flood_of_new_lan_flows_is_limited_and_counted_and_tcp_beside_it_goes_on() {
    let engine = EngineConfig {
        udp_max_flows: 8,
        ..engine()
    };
    // TCP to port 5000 goes through the relays too, on the same session.
    fn with_tcp(l: LocalConfig) -> LocalConfig {
        l.tproxy(SocketAddr::new([0, 0, 0, 0].into(), TCP_TPROXY_PORT))
    }
    let chain = Chain::with(1, None, engine, &ECHO_PORT.to_string(), |r| {
        (Box::new(with_tcp), r)
    });
    chain
        .rp
        .local
        .nft(&format!(
            "table ip relaytcp {{\n chain pre {{\n  type filter hook prerouting priority mangle;\n  \
             iifname \"lan0\" tcp dport 5000 meta mark set 0x4242 tproxy to :{TCP_TPROXY_PORT}\n }}\n}}\n"
        ))
        .unwrap();
    chain.responders([ECHO_PORT]);
    let echo = chain.dest(ECHO_PORT);
    let first = chain.lan_socket();
    assert_eq!(ask(&first, echo, b"x").1, echo, "the session is up");
    // A TCP transfer beside it, through the relays.
    let tcp_at = chain.dest(5000);
    let listener = chain.rp.dest.run(|| TcpListener::bind(tcp_at)).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got.len()
    });
    let mut tcp = chain.rp.lan.run(|| TcpStream::connect(tcp_at)).unwrap();
    // 200 new flows (a port each) in a burst: 7 more get in, the rest are
    // dropped and counted.
    let flood: Vec<UdpSocket> = (0..200).map(|_| chain.lan_socket()).collect();
    for s in &flood {
        s.send_to(b"flood", echo).unwrap();
    }
    tcp.write_all(&vec![7u8; 4 << 20]).unwrap();
    drop(tcp);
    assert_eq!(server.join().unwrap(), 4 << 20, "the TCP transfer, whole");
    let local = stats_until(&chain.local, |s| s.udp.dropped(UdpDrop::FlowLimit) >= 190);
    assert!(local.udp.dropped(UdpDrop::FlowLimit) >= 190, "{local}");
    assert_eq!(
        local.relayed, 1,
        "the TCP transfer went through the relay: {local}"
    );
    let answered = flood
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            s.recv_from(&mut [0u8; 128]).is_ok()
        })
        .count();
    assert!(answered <= 7, "at most the table's room: {answered}");
    // The live flow still works.
    assert_eq!(ask(&first, echo, b"still").1, echo);
}

/// Sends `rate` datagrams of `len` bytes per second from the LAN host to
/// `to` for `run`; returns how many were sent.
fn send_paced(socket: &UdpSocket, to: SocketAddr, rate: u32, len: usize, run: Duration) -> u64 {
    let payload = vec![0x5au8; len];
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < run {
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while sent < due {
            let _ = socket.send_to(&payload, to);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    sent
}

#[test]
fn udp_above_one_links_rate_uses_both_and_survives_a_link_going_down() {
    let chain = Chain::new(
        2,
        Some(20),
        engine(),
        &format!("{{ 5201, {ECHO_PORT}, 6000 }}"),
    );
    let rp = &chain.rp;
    // iperf3's first datagram must not find the session still opening (it
    // would give up): one answered datagram first.
    chain.responders([ECHO_PORT]);
    ask(&chain.lan_socket(), chain.dest(ECHO_PORT), b"up");
    // iperf3 -u at 30 Mbit/s (above one 20 Mbit/s link) through the chain;
    // its control connection (TCP) is routed.
    let mut server = rp
        .dest
        .command("iperf3")
        .args(["-s", "-1", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 must be installed");
    std::thread::sleep(Duration::from_millis(300));
    let dest = rp.dest_addr().to_string();
    let out = rp
        .lan
        .exec(
            "iperf3",
            &[
                "-u", "-c", &dest, "-p", "5201", "-b", "30M", "-l", "1200", "-t", "5", "-f", "m",
            ],
        )
        .unwrap();
    let _ = server.wait();
    let receiver = out
        .lines()
        .find(|l| l.contains("receiver"))
        .unwrap_or_else(|| panic!("no receiver line in:\n{out}"));
    println!("iperf3 -u -b 30M through the chain (2 x 20 Mbit/s): {receiver}");
    // "[  5]   0.00-5.00   sec  17.6 MBytes  29.5 Mbits/sec  0.1 ms  10/15000 (0.07%)  receiver"
    let fields: Vec<&str> = receiver.split_whitespace().collect();
    let mbits: f64 = fields
        .iter()
        .position(|f| *f == "Mbits/sec")
        .and_then(|i| fields[i - 1].parse().ok())
        .unwrap_or_else(|| panic!("no rate in {receiver}"));
    assert!(mbits > 20.0, "more than one link carries: {receiver}");

    // A paced stream of datagrams; WAN link 1 goes down mid-run: the
    // datagrams stop for less than 3 s.
    let at = chain.dest(6000);
    let sink = rp.dest.run(|| UdpSocket::bind(at)).unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let done_r = Arc::clone(&done);
    let receiver = std::thread::spawn(move || {
        let mut arrivals = Vec::new();
        let mut buf = [0u8; 2048];
        while !done_r.load(Ordering::Relaxed) {
            if sink.recv_from(&mut buf).is_ok() {
                arrivals.push(Instant::now());
            }
        }
        arrivals
    });
    let lan = chain.lan_socket();
    // The flow's first datagrams may find the session still opening.
    for _ in 0..10 {
        lan.send_to(b"warm up", at).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let down_at = Instant::now() + Duration::from_secs(2);
    let sender = {
        let lan = lan.try_clone().unwrap();
        std::thread::spawn(move || send_paced(&lan, at, 1000, 1000, Duration::from_secs(8)))
    };
    std::thread::sleep(down_at.saturating_duration_since(Instant::now()));
    rp.wan[1].down().unwrap();
    let sent = sender.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    done.store(true, Ordering::Relaxed);
    let arrivals = receiver.join().unwrap();
    let after: Vec<Instant> = arrivals.iter().copied().filter(|t| *t > down_at).collect();
    let gap = after
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(Duration::MAX);
    println!(
        "paced 1000 datagrams/s, link 1 down after 2 s: {} of {sent} arrived, longest gap {gap:?}",
        arrivals.len()
    );
    assert!(
        after.len() > 1000,
        "datagrams kept arriving: {}",
        after.len()
    );
    assert!(gap < Duration::from_secs(3), "longest gap {gap:?}");
}

/// IPv6 from the LAN (2001:2::/48, the IPv6 benchmarking range, on the
/// LAN link and the remote's link to the destination; the relays' session
/// stays on IPv4): `tproxy ip6` takes the datagrams to an IPv6 listener,
/// and the answers come back from the IPv6 destination the host wrote to.
#[test]
fn ipv6_datagrams_through_tproxy_are_answered_from_their_destination() {
    fn with_v6_listener(l: LocalConfig) -> LocalConfig {
        l.tproxy_udp(SocketAddr::new(
            std::net::Ipv6Addr::UNSPECIFIED.into(),
            TPROXY_UDP_PORT,
        ))
    }
    let chain = Chain::with(1, None, engine(), "9", |r| (Box::new(with_v6_listener), r));
    let rp = &chain.rp;
    let (lan, router, egress, dest) = (
        "2001:2:0:1::2",
        "2001:2:0:1::1",
        "2001:2:0:2::1",
        "2001:2:0:2::2",
    );
    for (host, dev, addr) in [
        (&rp.lan, "eth0", lan),
        (&rp.local, "lan0", router),
        (&rp.remote, "dst0", egress),
        (&rp.dest, "eth0", dest),
    ] {
        host.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            dev,
            "nodad",
        ])
        .unwrap();
    }
    rp.lan
        .ip(&["-6", "route", "add", "default", "via", router])
        .unwrap();
    rp.dest
        .ip(&["-6", "route", "add", "default", "via", egress])
        .unwrap();
    rp.local
        .ip(&["-6", "rule", "add", "fwmark", "0x4242", "lookup", "4242"])
        .unwrap();
    rp.local
        .ip(&[
            "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "4242",
        ])
        .unwrap();
    // The README's IPv6 rule.
    rp.local
        .nft(&format!(
            "table inet relayudp6 {{\n chain pre {{\n  type filter hook prerouting priority mangle;\n  \
             iifname \"lan0\" meta nfproto ipv6 udp dport {ECHO_PORT} meta mark set 0x4242 \
             tproxy ip6 to :{TPROXY_UDP_PORT}\n }}\n}}\n"
        ))
        .unwrap();
    let echo = SocketAddr::new(
        dest.parse::<std::net::Ipv6Addr>().unwrap().into(),
        ECHO_PORT,
    );
    chain.responder_at(echo);
    let socket = rp.lan.run(|| UdpSocket::bind("[::]:0")).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    // Answered from the address written to, and sent on by the remote
    // relay (the responder saw its IPv6 egress address, not the LAN host).
    assert_eq!(
        ask(&socket, echo, b"six"),
        (format!("re:{egress}:six").into_bytes(), echo)
    );
    let local = stats_until(&chain.local, |s| s.udp.datagrams_down >= 1);
    assert!(local.udp.datagrams_up >= 1, "{local}");
}
