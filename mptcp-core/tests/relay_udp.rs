//! The remote role's SOCKS5 UDP ASSOCIATE (RFC 1928, section 7) in the
//! test bed: a client on the local node (198.18.0.1) written here against
//! the RFC, the remote relay on 198.18.0.2, and UDP responders on the
//! destination host (198.19.2.2) behind it. Answers arrive with the right
//! header; logins and the destination policy apply as to CONNECT; bad
//! datagrams, strangers and floods are dropped and counted while other
//! traffic goes on; an association ends with its TCP connection and after
//! its idle timeout. On loopback: IPv6, and the listeners that refuse UDP
//! ASSOCIATE (the local role's, and a remote with `udp_associate = false`).
//! And UDP carried in a session (DATAGRAM frames, from a session opened
//! here as a local relay opens one): answers by flow, a port per flow,
//! the policy, flow limits, a full session, a peer without the setting.
#![cfg(feature = "relay")]

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use mptcp_core::mux::{self, Control, FrameType, Header};
use mptcp_core::relay::{
    Config, EngineConfig, ErrorKind, ListenerKind, LocalConfig, Relay, RelayHandle, RemoteConfig,
    UdpDrop,
};
use mptcp_core::socks5::{Progress, TargetAddr};
use mptcp_testbed::RelayPath;

mod support;
use support::{PASS, USER, session_hello, stats_until};

const SOCKS_PORT: u16 = 1080;
/// The destination's UDP responder (answers `re:` + the datagram).
const ECHO_PORT: u16 = 5353;
/// The destination's TCP echo server.
const TCP_ECHO_PORT: u16 = 5000;
const WAIT: Duration = Duration::from_secs(2);

fn testbed(engine: EngineConfig) -> (RelayPath, RelayHandle) {
    mptcp_testbed::require_privileges().unwrap();
    let rp = mptcp_testbed::relay_path(1, None).unwrap();
    let listen = SocketAddr::new([0, 0, 0, 0].into(), SOCKS_PORT);
    let config = Config::new()
        .engine(engine)
        .remote(RemoteConfig::new(listen).user(USER, PASS));
    let relay = rp.remote.run(|| Relay::start(config)).unwrap();
    (rp, relay)
}

fn engine() -> EngineConfig {
    EngineConfig {
        workers: 2,
        handshake_timeout_secs: 5,
        ..EngineConfig::default()
    }
}

fn relay_addr(rp: &RelayPath) -> SocketAddr {
    SocketAddr::new(rp.remote_addr().into(), SOCKS_PORT)
}

fn dest(rp: &RelayPath, port: u16) -> SocketAddr {
    SocketAddr::new(rp.dest_addr().into(), port)
}

/// UDP responders on the destination host on `ports`: each answers a
/// datagram with `re:` and the datagram, from the port it came to.
fn responders(rp: &RelayPath, ports: impl IntoIterator<Item = u16>) {
    for port in ports {
        let socket = rp
            .dest
            .run(|| UdpSocket::bind(SocketAddr::new(rp.dest_addr().into(), port)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let mut answer = b"re:".to_vec();
                answer.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&answer, from);
            }
        });
    }
}

/// A TCP echo server on the destination host.
fn tcp_echo(rp: &RelayPath) {
    let l = rp
        .dest
        .run(|| TcpListener::bind(dest(rp, TCP_ECHO_PORT)))
        .unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = io::copy(&mut r, &mut s);
            });
        }
    });
}

/// The SOCKS5 request for `cmd` to an address, by the RFC.
fn request(cmd: u8, addr: SocketAddr) -> Vec<u8> {
    let mut r = vec![5, cmd, 0];
    match addr {
        SocketAddr::V4(a) => {
            r.push(1);
            r.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            r.push(4);
            r.extend_from_slice(&a.ip().octets());
        }
    }
    r.extend_from_slice(&addr.port().to_be_bytes());
    r
}

/// Logs in (username/password if `creds`) and sends `cmd` for `addr`, one
/// step at a time as an RFC 1928 client does. `Ok`: the control
/// connection and the reply's bound address; `Err`: the reply code, or
/// 0xff for a refused login.
fn socks5(
    proxy: SocketAddr,
    creds: Option<(&str, &str)>,
    cmd: u8,
    addr: SocketAddr,
) -> Result<(TcpStream, SocketAddr), u8> {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let method = if creds.is_some() { 2 } else { 0 };
    s.write_all(&[5, 1, method]).unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).unwrap();
    if choice != [5, method] {
        return Err(0xff);
    }
    if let Some((u, p)) = creds {
        let mut auth = vec![1, u.len() as u8];
        auth.extend_from_slice(u.as_bytes());
        auth.push(p.len() as u8);
        auth.extend_from_slice(p.as_bytes());
        s.write_all(&auth).unwrap();
        let mut status = [0u8; 2];
        s.read_exact(&mut status).unwrap();
        if status != [1, 0] {
            return Err(0xff);
        }
    }
    s.write_all(&request(cmd, addr)).unwrap();
    let mut reply = [0u8; 4];
    match s.read(&mut reply[..2]) {
        Ok(2) => {}
        other => panic!("no reply: {other:?}"),
    }
    if reply[1] != 0 {
        return Err(reply[1]);
    }
    s.read_exact(&mut reply[2..]).unwrap();
    let ip = match reply[3] {
        1 => {
            let mut o = [0u8; 4];
            s.read_exact(&mut o).unwrap();
            IpAddr::from(o)
        }
        4 => {
            let mut o = [0u8; 16];
            s.read_exact(&mut o).unwrap();
            IpAddr::from(o)
        }
        atyp => panic!("BND.ADDR of type {atyp}"),
    };
    let mut port = [0u8; 2];
    s.read_exact(&mut port).unwrap();
    Ok((s, SocketAddr::new(ip, u16::from_be_bytes(port))))
}

/// An association: its control connection, the client's UDP socket, and
/// the relay's port for it.
struct Association {
    control: TcpStream,
    socket: UdpSocket,
    relay: SocketAddr,
}

impl Association {
    /// Opens one from a fresh UDP socket on the local node; with `tell`,
    /// the request names that socket's address (else 0.0.0.0:0).
    fn open(rp: &RelayPath, tell: bool) -> Association {
        let socket = rp
            .local
            .run(|| UdpSocket::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)))
            .unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        let from = if tell {
            let port = socket.local_addr().unwrap().port();
            SocketAddr::new(Ipv4Addr::new(198, 18, 0, 1).into(), port)
        } else {
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)
        };
        let (control, relay) = rp
            .local
            .run(|| socks5(relay_addr(rp), Some((USER, PASS)), 3, from))
            .expect("UDP ASSOCIATE accepted");
        assert_eq!(
            relay.ip(),
            rp.remote_addr(),
            "BND.ADDR: where we reached the relay"
        );
        assert_ne!(relay.port(), 0);
        Association {
            control,
            socket,
            relay,
        }
    }

    /// Sends `payload` to `to` through the relay.
    fn send(&self, to: &[u8], payload: &[u8]) {
        let mut d = vec![0, 0, 0];
        d.extend_from_slice(to);
        d.extend_from_slice(payload);
        self.socket.send_to(&d, self.relay).unwrap();
    }

    /// The next datagram from the relay, if one comes within [`WAIT`].
    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = [0u8; 65536];
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(from, self.relay, "answers come from the relay's port");
                    return Some(buf[..n].to_vec());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// Sends `payload` to `to` until an answer comes (UDP may lose one on a
    /// loaded machine); returns it.
    fn ask(&self, to: &[u8], payload: &[u8]) -> Vec<u8> {
        for _ in 0..3 {
            self.send(to, payload);
            if let Some(answer) = self.recv() {
                return answer;
            }
        }
        panic!("no answer to {payload:?}");
    }
}

/// ATYP, address and port of a destination.
fn atyp_addr(addr: SocketAddr) -> Vec<u8> {
    request(0, addr)[3..].to_vec()
}

/// ATYP, name and port.
fn name(host: &str, port: u16) -> Vec<u8> {
    let mut a = vec![3, host.len() as u8];
    a.extend_from_slice(host.as_bytes());
    a.extend_from_slice(&port.to_be_bytes());
    a
}

/// The answer a responder gives to `payload`, as the relay passes it on:
/// the header naming the responder, then its datagram.
fn expected_answer(from: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut a = vec![0, 0, 0];
    a.extend_from_slice(&atyp_addr(from));
    a.extend_from_slice(b"re:");
    a.extend_from_slice(payload);
    a
}

/// Whether nothing listens on the relay's former UDP port: a connected
/// socket there gets the ICMP port unreachable back as ECONNREFUSED.
fn port_closed(rp: &RelayPath, port: SocketAddr) -> bool {
    let probe = rp
        .local
        .run(|| UdpSocket::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)))
        .unwrap();
    probe.connect(port).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    for _ in 0..3 {
        let _ = probe.send(&[0, 0, 0, 1, 198, 19, 2, 2, 0x14, 0xe9, b'x']);
        match probe.recv(&mut [0u8; 64]) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return true,
            Ok(_) => return false,
            Err(_) => {}
        }
    }
    false
}

#[test]
fn answers_come_back_with_their_header_and_denied_destinations_get_nothing() {
    let (rp, relay) = testbed(engine());
    responders(&rp, [ECHO_PORT]);
    let echo = dest(&rp, ECHO_PORT);

    // Without the password, or with a wrong one, no association.
    let any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
    let r = rp.local.run(|| socks5(relay_addr(&rp), None, 3, any));
    assert_eq!(r.err(), Some(0xff), "no method without a login");
    let r = rp
        .local
        .run(|| socks5(relay_addr(&rp), Some((USER, "wrong")), 3, any));
    assert_eq!(r.err(), Some(0xff), "wrong password");

    let a = Association::open(&rp, false);
    // To an address, and to a name the relay resolves.
    assert_eq!(
        a.ask(&atyp_addr(echo), b"query 1"),
        expected_answer(echo, b"query 1")
    );
    let by_name = name(&rp.dest_addr().to_string(), ECHO_PORT);
    assert_eq!(
        a.ask(&by_name, b"query 2"),
        expected_answer(echo, b"query 2")
    );
    // A large datagram keeps every byte.
    let big: Vec<u8> = (0..60_000).map(|i| (i % 251) as u8).collect();
    assert_eq!(a.ask(&atyp_addr(echo), &big), expected_answer(echo, &big));

    // Loopback at the remote (by address and by name) and the relay's own
    // address are denied: nothing is sent, and they are counted.
    let loopback_echo = rp.remote.run(|| UdpSocket::bind("127.0.0.1:0")).unwrap();
    loopback_echo
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let lo = loopback_echo.local_addr().unwrap();
    a.send(&atyp_addr(lo), b"to loopback");
    a.send(&name("localhost", lo.port()), b"to localhost");
    a.send(
        &atyp_addr(SocketAddr::new(rp.remote_egress_addr().into(), 53)),
        b"to the relay",
    );
    assert_eq!(a.recv(), None, "denied destinations give no answer");
    assert!(
        loopback_echo.recv(&mut [0u8; 64]).is_err(),
        "and got nothing"
    );

    // Only hosts the client wrote to may answer: another host that learnt
    // the relay's outgoing port gets nothing through.
    let spy_at = dest(&rp, 6000);
    let [spy, intruder] = [spy_at, dest(&rp, 6001)].map(|at| {
        let s = rp.dest.run(|| UdpSocket::bind(at)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    });
    a.send(&atyp_addr(spy_at), b"hello spy");
    let mut buf = [0u8; 64];
    let (n, outgoing) = spy.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello spy");
    assert_eq!(
        outgoing.ip(),
        rp.remote_egress_addr(),
        "sent from the relay's way out"
    );
    intruder.send_to(b"unasked", outgoing).unwrap();
    assert_eq!(a.recv(), None, "the intruder's datagram is dropped");
    spy.send_to(b"asked", outgoing).unwrap();
    let mut want = vec![0, 0, 0];
    want.extend_from_slice(&atyp_addr(spy_at));
    want.extend_from_slice(b"asked");
    assert_eq!(a.recv(), Some(want), "the host written to answers");

    let s = stats_until(&relay, |s| s.udp.dropped(UdpDrop::UnknownSender) >= 1);
    assert_eq!(s.udp.dropped(UdpDrop::DestinationDenied), 3, "{s}");
    assert_eq!(s.udp.dropped(UdpDrop::UnknownSender), 1, "{s}");
    assert_eq!(
        (s.udp.associations, s.udp.associations_opened),
        (1, 1),
        "{s}"
    );
    assert!(s.udp.datagrams_up >= 3 && s.udp.datagrams_down >= 3, "{s}");
    assert!(s.udp.bytes_up >= 60_014, "{s}");
    assert_eq!(s.error(ErrorKind::Auth), 2, "{s}");
    // The answers all came back whole: nothing else was dropped.
    let others: u64 = s.udp.drops.iter().sum::<u64>() - 4;
    assert_eq!(others, 0, "{s}");
}

#[test]
fn bad_datagrams_strangers_and_floods_are_dropped_and_counted_and_spare_the_rest() {
    let engine = EngineConfig {
        udp_max_flows: 4,
        ..engine()
    };
    let (rp, relay) = testbed(engine);
    let ports: Vec<u16> = (0..12).map(|i| ECHO_PORT + i).collect();
    responders(&rp, ports.iter().copied());
    tcp_echo(&rp);
    let echo = dest(&rp, ECHO_PORT);

    // A TCP stream and a second association carry on through all of it.
    let stream = rp
        .local
        .run(|| {
            socks5(
                relay_addr(&rp),
                Some((USER, PASS)),
                1,
                dest(&rp, TCP_ECHO_PORT),
            )
        })
        .expect("CONNECT")
        .0;
    let other = Association::open(&rp, true);
    let check_others = |round: &str| {
        (&stream).write_all(round.as_bytes()).unwrap();
        let mut got = vec![0u8; round.len()];
        (&stream).read_exact(&mut got).unwrap();
        assert_eq!(got, round.as_bytes());
        assert_eq!(
            other.ask(&atyp_addr(echo), round.as_bytes()),
            expected_answer(echo, round.as_bytes())
        );
    };
    check_others("before");

    let a = Association::open(&rp, true);
    assert_eq!(a.ask(&atyp_addr(echo), b"ok"), expected_answer(echo, b"ok"));
    // Malformed: a short header, an unknown address type, a truncated
    // address, reserved bytes set; a fragment.
    for bad in [
        &[0u8, 0][..],
        &[0, 0, 0, 2, 1, 2, 3, 4, 0, 53, b'x'],
        &[0, 0, 0, 1, 198, 19],
        &[1, 0, 0, 1, 198, 19, 2, 2, 0x14, 0xe9, b'x'],
    ] {
        a.socket.send_to(bad, a.relay).unwrap();
    }
    let mut fragment = vec![0, 0, 1];
    fragment.extend_from_slice(&atyp_addr(echo));
    fragment.extend_from_slice(b"frag");
    a.socket.send_to(&fragment, a.relay).unwrap();
    // From another port than the one the request named.
    let stranger = rp
        .local
        .run(|| UdpSocket::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)))
        .unwrap();
    let mut d = vec![0, 0, 0];
    d.extend_from_slice(&atyp_addr(echo));
    d.extend_from_slice(b"stranger");
    stranger.send_to(&d, a.relay).unwrap();
    assert_eq!(a.recv(), None, "nothing answered");
    let s = stats_until(&relay, |s| s.udp.dropped(UdpDrop::ForeignSource) >= 1);
    assert_eq!(s.udp.dropped(UdpDrop::Malformed), 4, "{s}");
    assert_eq!(s.udp.dropped(UdpDrop::Fragment), 1, "{s}");
    assert_eq!(s.udp.dropped(UdpDrop::ForeignSource), 1, "{s}");

    // A flood of new flows: 4 (with the first one) get through, the rest
    // are dropped; the flows already open still work.
    for &port in &ports[1..] {
        a.send(&atyp_addr(dest(&rp, port)), b"flood");
    }
    let mut answered = Vec::new();
    while let Some(d) = a.recv() {
        answered.push(d);
    }
    assert_eq!(answered.len(), 3, "the flow limit holds");
    let s = stats_until(&relay, |s| s.udp.dropped(UdpDrop::FlowLimit) >= 8);
    assert_eq!(s.udp.dropped(UdpDrop::FlowLimit), 8, "{s}");
    assert_eq!(
        a.ask(&atyp_addr(echo), b"still"),
        expected_answer(echo, b"still")
    );

    // A closed association's port takes nothing any more.
    let closed = a.relay;
    drop(a);
    let s = stats_until(&relay, |s| s.udp.associations == 1);
    assert_eq!(s.udp.associations, 1, "{s}");
    assert!(
        port_closed(&rp, closed),
        "the closed association's port is closed"
    );

    check_others("after");
    let s = relay.stats();
    assert_eq!(s.udp.dropped(UdpDrop::SendFailed), 0, "{s}");
    assert_eq!(s.error(ErrorKind::Io), 0, "{s}");
    stream.shutdown(Shutdown::Both).unwrap();
}

#[test]
fn an_association_ends_with_its_connection_and_after_its_idle_timeout() {
    let engine = EngineConfig {
        udp_idle_timeout_secs: 2,
        ..engine()
    };
    let (rp, relay) = testbed(engine);
    responders(&rp, [ECHO_PORT]);
    let echo = dest(&rp, ECHO_PORT);

    // Closing the TCP connection ends the association at once.
    let a = Association::open(&rp, false);
    assert_eq!(a.ask(&atyp_addr(echo), b"hi"), expected_answer(echo, b"hi"));
    a.control.shutdown(Shutdown::Both).unwrap();
    let s = stats_until(&relay, |s| s.udp.associations == 0);
    assert_eq!(s.udp.associations, 0, "{s}");
    assert!(port_closed(&rp, a.relay), "its port is closed");

    // Traffic keeps one alive past the timeout; silence ends it, and the
    // relay closes its TCP connection.
    let mut b = Association::open(&rp, false);
    let started = Instant::now();
    let mut quiet = started;
    while started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            b.ask(&atyp_addr(echo), b"alive"),
            expected_answer(echo, b"alive")
        );
        quiet = Instant::now();
    }
    assert_eq!(
        relay.stats().udp.associations,
        1,
        "kept alive by its datagrams"
    );
    b.control
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let mut rest = Vec::new();
    let eof = b.control.read_to_end(&mut rest);
    assert!(
        eof.is_ok() && rest.is_empty(),
        "the relay closed it: {eof:?}"
    );
    let after = quiet.elapsed();
    // The sweep runs twice a second (`quiet` is a moment after the relay
    // saw the last datagram).
    assert!(
        after >= Duration::from_millis(1900) && after < Duration::from_secs(7),
        "{after:?}"
    );
    let s = stats_until(&relay, |s| s.udp.associations == 0);
    assert_eq!(s.udp.associations, 0, "{s}");
    assert_eq!(s.error(ErrorKind::IdleTimeout), 1, "{s}");
    assert!(port_closed(&rp, b.relay), "its port is closed");
}

/// A UDP program that knows nothing of SOCKS5 (Python), run by Dante's
/// `socksify` (dante-client): its datagrams go through the relay's UDP
/// ASSOCIATE, with the username and password.
#[test]
fn dantes_socksify_carries_a_programs_datagrams() {
    let (rp, relay) = testbed(engine());
    responders(&rp, [ECHO_PORT]);
    let conf = std::env::temp_dir().join(format!("relay-udp-dante-{}.conf", std::process::id()));
    std::fs::write(
        &conf,
        format!(
            "route {{\n  from: 0.0.0.0/0 to: 0.0.0.0/0 via: {} port = {SOCKS_PORT}\n  \
             proxyprotocol: socks_v5\n  protocol: tcp udp\n  method: username\n}}\n",
            rp.remote_addr()
        ),
    )
    .unwrap();
    let program = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(3)\n\
         for i in range(3):\n\
         \x20   s.sendto(b'query %d' % i, ('{}', {ECHO_PORT}))\n\
         \x20   data, sender = s.recvfrom(100)\n\
         \x20   print(data.decode(), sender[0], sender[1])\n",
        rp.dest_addr()
    );
    let out = rp
        .local
        .command("socksify")
        .args(["python3", "-c", &program])
        .env("SOCKS_CONF", &conf)
        .env("SOCKS_USERNAME", USER)
        .env("SOCKS_PASSWORD", PASS)
        .output()
        .expect("socksify (dante-client) must be installed");
    let _ = std::fs::remove_file(&conf);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: String = (0..3)
        .map(|i| format!("re:query {i} {} {ECHO_PORT}\n", rp.dest_addr()))
        .collect();
    assert_eq!(stdout, want);
    let s = stats_until(&relay, |s| s.udp.datagrams_down >= 3);
    assert_eq!(s.udp.associations_opened, 1, "{s}");
    assert_eq!((s.udp.datagrams_up, s.udp.datagrams_down), (3, 3), "{s}");
}

/// Associations take connection slots: past the per-client limit they are
/// refused and counted, and the open ones carry on.
#[test]
fn a_flood_of_associations_is_refused_by_the_admission_limits() {
    let engine = EngineConfig {
        max_connections_per_client: 3,
        ..engine()
    };
    let (rp, relay) = testbed(engine);
    responders(&rp, [ECHO_PORT]);
    let echo = dest(&rp, ECHO_PORT);
    let open: Vec<Association> = (0..3).map(|_| Association::open(&rp, false)).collect();
    let any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
    for _ in 0..5 {
        let r = rp
            .local
            .run(|| socks5(relay_addr(&rp), Some((USER, PASS)), 3, any));
        assert_eq!(r.err(), Some(1), "refused: general failure");
    }
    for a in &open {
        assert_eq!(a.ask(&atyp_addr(echo), b"on"), expected_answer(echo, b"on"));
    }
    let s = relay.stats();
    assert_eq!(s.error(ErrorKind::Limit), 5, "{s}");
    assert_eq!(s.udp.associations_opened, 3, "{s}");
    // A slot given back is taken again.
    drop(open);
    stats_until(&relay, |s| s.udp.associations == 0);
    let again = Association::open(&rp, false);
    assert_eq!(
        again.ask(&atyp_addr(echo), b"again"),
        expected_answer(echo, b"again")
    );
}

/// The local role's SOCKS5 listener, and a remote with `udp_associate =
/// false`, refuse UDP ASSOCIATE as not supported (RFC 1928's answer, which
/// tells a client to do without).
#[test]
fn udp_associate_is_refused_where_it_is_not_served() {
    let mut remote = RemoteConfig::new("127.0.0.1:0".parse().unwrap()).user(USER, PASS);
    remote.udp_associate = false;
    let remote = Relay::start(Config::new().engine(engine()).remote(remote)).unwrap();
    let remote_at = remote.listener(ListenerKind::RemoteSocks5).unwrap();
    let local = LocalConfig::new(remote_at.to_string())
        .credentials(USER, PASS)
        .socks5("127.0.0.1:0".parse().unwrap());
    let local = Relay::start(Config::new().engine(engine()).local(local)).unwrap();
    let local_at = local.listener(ListenerKind::LocalSocks5).unwrap();
    let any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
    assert_eq!(socks5(remote_at, Some((USER, PASS)), 3, any).err(), Some(7));
    assert_eq!(socks5(local_at, None, 3, any).err(), Some(7));
    assert_eq!(remote.stats().udp.associations_opened, 0);
}

/// An IPv6 client and destination (on loopback, allowed for the test):
/// the reply names the relay's IPv6 address, answers carry IPv6 headers.
#[test]
fn ipv6_clients_and_destinations() {
    let remote = RemoteConfig::new("[::1]:0".parse().unwrap())
        .allow_unauthenticated_loopback(true)
        .allow_destination("::1/128".parse().unwrap());
    let relay = Relay::start(Config::new().engine(engine()).remote(remote)).unwrap();
    let at = relay.listener(ListenerKind::RemoteSocks5).unwrap();
    let echo = UdpSocket::bind("[::1]:0").unwrap();
    let echo_at = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let mut answer = b"re:".to_vec();
            answer.extend_from_slice(&buf[..n]);
            let _ = echo.send_to(&answer, from);
        }
    });
    let any = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0);
    let (control, bound) = socks5(at, None, 3, any).expect("UDP ASSOCIATE");
    assert_eq!(bound.ip(), at.ip(), "BND.ADDR: where we reached the relay");
    let socket = UdpSocket::bind("[::1]:0").unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let a = Association {
        control,
        socket,
        relay: bound,
    };
    assert_eq!(
        a.ask(&atyp_addr(echo_at), b"six"),
        expected_answer(echo_at, b"six")
    );
    let s = stats_until(&relay, |s| s.udp.datagrams_down >= 1);
    assert!(s.udp.datagrams_down >= 1, "{s}");
    assert_eq!(s.udp.drops.iter().sum::<u64>(), 0, "{s}");
}

/// Password guessing through UDP ASSOCIATE meets the same backoff as
/// through CONNECT: past the free failures even the right password waits.
#[test]
fn guessing_passwords_for_associations_is_slowed_down() {
    let any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
    // The first wait is 250 ms: a try that takes longer than that to get
    // going (a loaded machine) measures nothing, and the run is repeated.
    for _ in 0..3 {
        let remote = RemoteConfig::new("127.0.0.1:0".parse().unwrap()).user(USER, PASS);
        let relay = Relay::start(Config::new().engine(engine()).remote(remote)).unwrap();
        let at = relay.listener(ListenerKind::RemoteSocks5).unwrap();
        for _ in 0..4 {
            assert_eq!(socks5(at, Some((USER, "guess")), 3, any).err(), Some(0xff));
        }
        let started = Instant::now();
        let soon = socks5(at, Some((USER, PASS)), 3, any);
        if started.elapsed() > Duration::from_millis(200) {
            continue;
        }
        assert_eq!(soon.err(), Some(0xff), "too soon after the fourth failure");
        std::thread::sleep(Duration::from_millis(600));
        assert!(
            socks5(at, Some((USER, PASS)), 3, any).is_ok(),
            "after the wait"
        );
        let s = relay.stats();
        assert_eq!(
            (s.error(ErrorKind::Auth), s.udp.associations_opened),
            (5, 1),
            "{s}"
        );
        return;
    }
    panic!("every try took longer than the guard's first wait");
}

/// A session opened by hand from the local node, as a local relay opens
/// one (SOCKS5 MULTIPLEX, then SETTINGS both ways), for UDP carried as
/// DATAGRAM frames.
struct MuxSession {
    s: TcpStream,
    /// The remote's SETTINGS offered DATAGRAM frames (setting 3).
    offered: bool,
}

impl MuxSession {
    /// Opens one; `datagrams`: our SETTINGS offer DATAGRAM frames.
    fn open(rp: &RelayPath, datagrams: bool) -> MuxSession {
        let mut s = rp.local.run(|| TcpStream::connect(relay_addr(rp))).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(&session_hello(1 << 20, datagrams)).unwrap();
        // Method, auth status, reply (IPv4: 10 bytes), then SETTINGS.
        let mut answer = [0u8; 2 + 2 + 10];
        s.read_exact(&mut answer).unwrap();
        assert_eq!(&answer[..6], [5, 2, 1, 0, 5, 0], "session accepted");
        let mut m = MuxSession { s, offered: false };
        let (header, payload) = m.frame().expect("SETTINGS");
        let Ok(Some(Control::Settings(settings))) = Control::parse(&header, &payload) else {
            panic!("SETTINGS first, not {header:?}");
        };
        m.offered = settings.datagrams;
        m
    }

    /// Sends a DATAGRAM frame of `flow` to `to`.
    fn send(&mut self, flow: u32, to: &TargetAddr, payload: &[u8]) {
        let mut frame = Vec::new();
        mux::encode_datagram(flow, to, payload, &mut frame).unwrap();
        self.s.write_all(&frame).unwrap();
    }

    /// The next frame, if one comes within [`WAIT`].
    fn frame(&mut self) -> Option<(Header, Vec<u8>)> {
        let mut head = [0u8; mux::HEADER_LEN];
        self.s.read_exact(&mut head).ok()?;
        let Ok(Progress::Done(header, _)) = Header::parse(&head) else {
            panic!("a bad frame header from the remote: {head:?}");
        };
        let mut payload = vec![0; header.len as usize];
        self.s.read_exact(&mut payload).unwrap();
        Some((header, payload))
    }

    /// The next DATAGRAM frame (others are skipped) within [`WAIT`]: its
    /// flow, sender and datagram.
    fn recv(&mut self) -> Option<(u32, TargetAddr, Vec<u8>)> {
        loop {
            let (header, payload) = self.frame()?;
            if header.kind == FrameType::Datagram {
                let (from, datagram) = mux::parse_datagram(&payload).unwrap();
                return Some((header.stream, from, datagram.to_vec()));
            }
        }
    }
}

/// The answer a responder gives to `payload` on `flow`, as it comes back
/// in a DATAGRAM frame.
fn carried_answer(flow: u32, from: SocketAddr, payload: &[u8]) -> (u32, TargetAddr, Vec<u8>) {
    let mut a = b"re:".to_vec();
    a.extend_from_slice(payload);
    (flow, TargetAddr::Ip(from), a)
}

#[test]
fn datagrams_carried_in_a_session_get_their_answers_by_flow() {
    let (rp, relay) = testbed(engine());
    responders(&rp, [ECHO_PORT, ECHO_PORT + 1]);
    let [echo, echo2] = [ECHO_PORT, ECHO_PORT + 1].map(|p| dest(&rp, p));
    let mut m = MuxSession::open(&rp, true);
    assert!(m.offered, "a remote that serves UDP offers DATAGRAM frames");

    // Three flows, two to the same destination: each answer comes back on
    // its own flow, naming its sender.
    m.send(1, &TargetAddr::Ip(echo), b"a1");
    m.send(2, &TargetAddr::Ip(echo), b"b2");
    m.send(3, &TargetAddr::Ip(echo2), b"c3");
    let mut got: Vec<_> = (0..3).map_while(|_| m.recv()).collect();
    got.sort_by_key(|(flow, ..)| *flow);
    assert_eq!(
        got,
        [
            carried_answer(1, echo, b"a1"),
            carried_answer(2, echo, b"b2"),
            carried_answer(3, echo2, b"c3"),
        ]
    );
    // To a name the remote resolves; and a large datagram, whole.
    let by_name = TargetAddr::Domain(rp.dest_addr().to_string(), ECHO_PORT);
    m.send(4, &by_name, b"named");
    assert_eq!(m.recv(), Some(carried_answer(4, echo, b"named")));
    let big: Vec<u8> = (0..60_000).map(|i| (i % 251) as u8).collect();
    m.send(5, &TargetAddr::Ip(echo), &big);
    assert_eq!(m.recv(), Some(carried_answer(5, echo, &big)));

    // Each flow leaves from a port of its own (answers are told apart by
    // flow, as behind a NAT).
    let spy_at = dest(&rp, 6000);
    let spy = rp.dest.run(|| UdpSocket::bind(spy_at)).unwrap();
    spy.set_read_timeout(Some(WAIT)).unwrap();
    m.send(6, &TargetAddr::Ip(spy_at), b"from 6");
    m.send(7, &TargetAddr::Ip(spy_at), b"from 7");
    let mut buf = [0u8; 64];
    let (_, port6) = spy.recv_from(&mut buf).unwrap();
    let (_, port7) = spy.recv_from(&mut buf).unwrap();
    assert_eq!(port6.ip(), rp.remote_egress_addr());
    assert_ne!(port6, port7, "two flows, two ports");

    // The relay's own address is denied, as for CONNECT: dropped, counted.
    let own = SocketAddr::new(rp.remote_egress_addr().into(), ECHO_PORT);
    m.send(8, &TargetAddr::Ip(own), b"to the relay");
    assert_eq!(m.recv(), None, "a denied destination gives no answer");

    let s = stats_until(&relay, |s| s.udp.dropped(UdpDrop::DestinationDenied) >= 1);
    assert_eq!(s.udp.dropped(UdpDrop::DestinationDenied), 1, "{s}");
    assert!(s.udp.datagrams_up >= 7 && s.udp.datagrams_down >= 5, "{s}");
    assert!(s.udp.bytes_up >= 60_000, "{s}");
    assert_eq!(
        s.udp.drops.iter().sum::<u64>(),
        1,
        "nothing else dropped: {s}"
    );
    assert_eq!(s.udp.associations_opened, 0, "no SOCKS5 association: {s}");
}

#[test]
fn a_flood_of_carried_flows_is_limited_and_a_full_session_drops_datagrams() {
    let engine = EngineConfig {
        udp_max_flows: 4,
        udp_idle_timeout_secs: 1,
        ..engine()
    };
    let (rp, relay) = testbed(engine);
    responders(&rp, [ECHO_PORT]);
    let echo = dest(&rp, ECHO_PORT);
    let mut m = MuxSession::open(&rp, true);

    // Twenty new flows at once: four are carried, the rest are counted.
    for flow in 1..=20 {
        m.send(flow, &TargetAddr::Ip(echo), &flow.to_be_bytes());
    }
    let mut answered: Vec<u32> = (0..20).map_while(|_| m.recv()).map(|(f, ..)| f).collect();
    answered.sort();
    assert_eq!(answered, [1, 2, 3, 4]);
    let s = stats_until(&relay, |s| s.udp.dropped(UdpDrop::FlowLimit) >= 16);
    assert_eq!(s.udp.dropped(UdpDrop::FlowLimit), 16, "{s}");
    // Once those idle out (1 s, found by the sweep), new flows get room.
    std::thread::sleep(Duration::from_millis(2500));
    m.send(21, &TargetAddr::Ip(echo), b"later");
    assert_eq!(m.recv(), Some(carried_answer(21, echo, b"later")));

    // A session whose reader stops: answers that find its output full are
    // dropped and counted, never queued without bound...
    let payload = [7u8; 1200];
    for _ in 0..30_000 {
        m.send(21, &TargetAddr::Ip(echo), &payload);
    }
    let s = stats_until(&relay, |s| s.udp.dropped(UdpDrop::SessionFull) > 0);
    assert!(s.udp.dropped(UdpDrop::SessionFull) > 0, "{s}");
    // ...and once it reads again, the session carries on (UDP may lose a
    // datagram after such a flood: a few tries).
    let deadline = Instant::now() + Duration::from_secs(30);
    for _ in 0..5 {
        m.send(22, &TargetAddr::Ip(echo), b"after");
        while let Some((flow, ..)) = m.recv() {
            if flow == 22 {
                return;
            }
            assert!(Instant::now() < deadline, "answers without end");
        }
    }
    panic!("no answer on flow 22 after the flood: {}", relay.stats());
}

#[test]
fn a_peer_that_does_not_offer_datagrams_is_sent_none() {
    let (rp, relay) = testbed(engine());
    let spy_at = dest(&rp, 6000);
    let spy = rp.dest.run(|| UdpSocket::bind(spy_at)).unwrap();
    spy.set_read_timeout(Some(WAIT)).unwrap();
    let mut m = MuxSession::open(&rp, false);
    // It sends one anyway: the datagram goes, but its answer does not
    // come back in a frame the peer would not understand.
    m.send(1, &TargetAddr::Ip(spy_at), b"old peer");
    let mut buf = [0u8; 64];
    let (n, outgoing) = spy.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"old peer");
    spy.send_to(b"answer", outgoing).unwrap();
    let s = stats_until(&relay, |s| s.udp.dropped(UdpDrop::NotOffered) >= 1);
    assert_eq!(s.udp.dropped(UdpDrop::NotOffered), 1, "{s}");
    // The session is alive (a PING is answered) and no DATAGRAM came.
    let mut ping = Vec::new();
    Control::Ping(42).encode(0, &mut ping).unwrap();
    m.s.write_all(&ping).unwrap();
    let (header, payload) = m.frame().expect("PONG");
    assert_eq!(
        header.kind,
        FrameType::Pong,
        "the first frame after SETTINGS"
    );
    assert_eq!(
        Control::parse(&header, &payload),
        Ok(Some(Control::Pong(42)))
    );
}
