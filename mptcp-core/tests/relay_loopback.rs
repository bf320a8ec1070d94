//! The relay engine on loopback: both roles, SOCKS5 and HTTP proxy
//! listeners, half-close, refusals (wrong password, denied destination,
//! malformed requests) and that they do not disturb other connections.
#![cfg(feature = "relay")]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use mptcp_core::relay::{
    Config, EngineConfig, ErrorKind, ListenerKind, LocalConfig, NoRemote, Relay, RelayHandle,
    RemoteConfig,
};
use mptcp_core::socks5::{self, ClientHandshake, Progress, ReplyCode, Request, TargetAddr};

const USER: &str = "alice";
const PASS: &str = "s3cret";

/// An echo server on loopback: echoes everything, closes after the client's
/// EOF (so a half-closing client must still receive all of it).
fn echo_server() -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    (addr, h)
}

fn engine() -> EngineConfig {
    EngineConfig {
        workers: 2,
        handshake_timeout_secs: 3,
        ..EngineConfig::default()
    }
}

fn remote_relay() -> RelayHandle {
    remote_relay_with(engine())
}

/// A remote relay on loopback that takes the test's password and relays
/// to loopback, with `engine`.
fn remote_relay_with(engine: EngineConfig) -> RelayHandle {
    let remote = RemoteConfig::new("127.0.0.1:0".parse().unwrap())
        .user(USER, PASS)
        .allow_destination("127.0.0.1".parse().unwrap());
    Relay::start(Config::new().engine(engine).remote(remote)).unwrap()
}

fn local_relay(remote: SocketAddr) -> RelayHandle {
    // Refused, not direct, when the remote fails (see relay_faults.rs).
    let local = LocalConfig::new(remote.to_string())
        .fallback(NoRemote::Refuse)
        .credentials(USER, PASS)
        .socks5("127.0.0.1:0".parse().unwrap())
        .http("127.0.0.1:0".parse().unwrap());
    Relay::start(Config::new().engine(engine()).local(local)).unwrap()
}

fn timeouts(s: &TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
}

/// Connects through a SOCKS5 server with the crate's own pipelined client.
fn socks_connect(
    proxy: SocketAddr,
    creds: Option<(&str, &str)>,
    dest: &TargetAddr,
) -> Result<TcpStream, ReplyCode> {
    let mut s = TcpStream::connect(proxy).unwrap();
    timeouts(&s);
    let mut hello = Vec::new();
    socks5::encode_client_hello_auth_request(creds, &Request::connect(dest.clone()), &mut hello)
        .unwrap();
    s.write_all(&hello).unwrap();
    let mut hs = ClientHandshake::new(creds.is_some());
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 512];
        let n = s.read(&mut chunk).unwrap();
        buf.extend_from_slice(&chunk[..n]);
        match hs.advance(&buf) {
            Ok(Progress::NeedMore) if n == 0 => panic!("proxy closed during handshake"),
            Ok(Progress::NeedMore) => {}
            Ok(Progress::Done(_, used)) => {
                assert_eq!(
                    used,
                    buf.len(),
                    "no early bytes expected from an echo server"
                );
                return Ok(s);
            }
            Err(e) => return Err(e.reply),
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Sends `data`, shuts down writing, and reads everything back.
fn echo_round_trip(mut s: TcpStream, data: &[u8]) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    got
}

#[test]
fn remote_role_relays_with_half_close() {
    let (echo, _e) = echo_server();
    let relay = remote_relay();
    let proxy = relay.listener(ListenerKind::RemoteSocks5).unwrap();
    let data = pattern(3 << 20);
    let s = socks_connect(proxy, Some((USER, PASS)), &TargetAddr::Ip(echo)).unwrap();
    assert_eq!(echo_round_trip(s, &data), data);
    // By name, resolved by the relay.
    let s = socks_connect(
        proxy,
        Some((USER, PASS)),
        &TargetAddr::Domain("localhost".into(), echo.port()),
    );
    // "localhost" may resolve to ::1 first; the policy only allows 127.0.0.1,
    // and the relay tries the allowed addresses only.
    match s {
        Ok(s) => assert_eq!(echo_round_trip(s, b"by name"), b"by name"),
        Err(code) => assert_eq!(code, ReplyCode::NotAllowed),
    }
    let stats = relay.shutdown(Duration::from_secs(2));
    assert!(
        stats.bytes_up >= data.len() as u64 && stats.bytes_down >= data.len() as u64,
        "{stats}"
    );
    assert_eq!(stats.active, 0, "{stats}");
    assert_eq!(stats.splice_fallbacks, 0, "{stats}");
}

#[test]
fn local_role_carries_socks5_and_http_through_remote() {
    let (echo, _e) = echo_server();
    let remote = remote_relay();
    let local = local_relay(remote.listener(ListenerKind::RemoteSocks5).unwrap());

    let data = pattern(1 << 20);
    let s = socks_connect(
        local.listener(ListenerKind::LocalSocks5).unwrap(),
        None,
        &TargetAddr::Ip(echo),
    )
    .unwrap();
    assert_eq!(echo_round_trip(s, &data), data);

    // HTTP CONNECT through the local relay.
    let mut s = TcpStream::connect(local.listener(ListenerKind::Http).unwrap()).unwrap();
    timeouts(&s);
    write!(s, "CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").unwrap();
    let mut head = [0u8; 39];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head[..], b"HTTP/1.1 200 Connection established\r\n\r\n");
    assert_eq!(echo_round_trip(s, b"tunnelled"), b"tunnelled");

    // Absolute-URI request: forwarded in origin form (the echo shows it).
    let s = TcpStream::connect(local.listener(ListenerKind::Http).unwrap()).unwrap();
    timeouts(&s);
    let req =
        format!("GET http://{echo}/file?x=1 HTTP/1.1\r\nProxy-Connection: keep-alive\r\n\r\n");
    let got = echo_round_trip(s, req.as_bytes());
    let got = String::from_utf8(got).unwrap();
    assert_eq!(
        got,
        format!("GET /file?x=1 HTTP/1.1\r\nHost: {echo}\r\nConnection: close\r\n\r\n")
    );

    let l = local.shutdown(Duration::from_secs(2));
    let r = remote.shutdown(Duration::from_secs(2));
    assert_eq!((l.relayed, r.relayed), (3, 3), "local: {l}\nremote: {r}");
}

#[test]
fn refusals_get_the_right_answer_and_spare_other_connections() {
    let (echo, _e) = echo_server();
    let relay = remote_relay();
    let proxy = relay.listener(ListenerKind::RemoteSocks5).unwrap();
    // A connection in the data phase that must survive everything below.
    let mut bystander = socks_connect(proxy, Some((USER, PASS)), &TargetAddr::Ip(echo)).unwrap();

    let wrong = socks_connect(proxy, Some((USER, "wrong")), &TargetAddr::Ip(echo));
    assert_eq!(wrong.unwrap_err(), ReplyCode::NotAllowed);
    let no_auth = socks_connect(proxy, None, &TargetAddr::Ip(echo));
    assert_eq!(no_auth.unwrap_err(), ReplyCode::NotAllowed);
    for denied in [
        "127.0.0.2:80",
        "10.1.2.3:80",
        "[::1]:80",
        "[::ffff:127.0.0.9]:80",
        "169.254.1.1:80",
    ] {
        let r = socks_connect(
            proxy,
            Some((USER, PASS)),
            &TargetAddr::Ip(denied.parse().unwrap()),
        );
        assert_eq!(r.unwrap_err(), ReplyCode::NotAllowed, "{denied}");
    }
    // Refused connection: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = socks_connect(proxy, Some((USER, PASS)), &TargetAddr::Ip(closed));
    assert_eq!(r.unwrap_err(), ReplyCode::ConnectionRefused);

    // Malformed requests: an unknown address type, a BIND, garbage.
    let cases: [(&[u8], &[u8]); 3] = [
        (
            b"\x05\x01\x02\x01\x05alice\x06s3cret\x05\x01\x00\x09\x00\x00",
            &[5, 2, 1, 0, 5, 8],
        ),
        (
            b"\x05\x01\x02\x01\x05alice\x06s3cret\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50",
            &[5, 2, 1, 0, 5, 7],
        ),
        (b"GET / HTTP/1.1\r\n\r\n", &[]),
    ];
    for (bytes, expect) in cases {
        let mut s = TcpStream::connect(proxy).unwrap();
        timeouts(&s);
        s.write_all(bytes).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(got.starts_with(expect), "{bytes:?} -> {got:?}");
    }
    // A client that never finishes its greeting is cut at the handshake timeout.
    let mut slow = TcpStream::connect(proxy).unwrap();
    timeouts(&slow);
    slow.write_all(&[5]).unwrap();

    bystander.write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    bystander.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");

    let mut got = Vec::new();
    let _ = slow.read_to_end(&mut got);
    let stats = relay.stats();
    assert!(stats.error(ErrorKind::HandshakeTimeout) >= 1, "{stats}");
    assert_eq!(stats.error(ErrorKind::Auth), 2, "{stats}");
    assert_eq!(stats.error(ErrorKind::DestinationDenied), 5, "{stats}");
    assert_eq!(stats.error(ErrorKind::Protocol), 3, "{stats}");
    assert_eq!(stats.error(ErrorKind::Connect), 1, "{stats}");
    drop(bystander);
}

/// Connects from `source` (another loopback address) through a SOCKS5
/// server and reports whether the login and CONNECT succeeded.
fn socks_connect_from(
    source: &str,
    proxy: SocketAddr,
    creds: (&str, &str),
    dest: SocketAddr,
) -> bool {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&format!("{source}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect(&proxy.into()).unwrap();
    let mut s: TcpStream = socket.into();
    timeouts(&s);
    let mut hello = Vec::new();
    socks5::encode_client_hello_auth_request(
        Some(creds),
        &Request::connect(TargetAddr::Ip(dest)),
        &mut hello,
    )
    .unwrap();
    s.write_all(&hello).unwrap();
    let mut hs = ClientHandshake::new(true);
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 512];
        let n = s.read(&mut chunk).unwrap_or(0);
        buf.extend_from_slice(&chunk[..n]);
        match hs.advance(&buf) {
            Ok(Progress::Done(..)) => return true,
            Ok(Progress::NeedMore) if n > 0 => {}
            Ok(Progress::NeedMore) | Err(_) => return false,
        }
    }
}

/// Online guessing: a client that tries a list of passwords as fast as it
/// is answered gets a few tries checked, then waits that double; its
/// right guess (the tenth) is never checked, while a user at another
/// address logs in at once.
#[test]
fn password_guessing_is_slowed_and_spares_other_addresses() {
    let (echo, _e) = echo_server();
    let relay = remote_relay();
    let proxy = relay.listener(ListenerKind::RemoteSocks5).unwrap();
    let start = std::time::Instant::now();
    let mut attempts = 0u32;
    let mut cracked = None;
    while start.elapsed() < Duration::from_secs(3) {
        attempts += 1;
        let guess = if attempts == 10 {
            PASS.to_string()
        } else {
            format!("guess-{attempts}")
        };
        if socks_connect_from("127.0.0.1", proxy, (USER, &guess), echo) {
            cracked = Some(attempts);
        }
        if attempts == 50 {
            assert!(
                socks_connect_from("127.0.0.2", proxy, (USER, PASS), echo),
                "a user at another address is not held up"
            );
        }
    }
    let per_second = f64::from(attempts) / start.elapsed().as_secs_f64();
    println!("{attempts} guesses answered in 3 s ({per_second:.0}/s), the right one refused");
    assert!(attempts > 100, "the guessing ran: {attempts} attempts");
    assert_eq!(
        cracked, None,
        "the right password, tried once among the guesses, was never checked"
    );
    let stats = relay.stats();
    assert_eq!(stats.error(ErrorKind::Auth), u64::from(attempts), "{stats}");
}

#[test]
fn http_listener_statuses() {
    let remote = remote_relay();
    let local = local_relay(remote.listener(ListenerKind::RemoteSocks5).unwrap());
    let proxy = local.listener(ListenerKind::Http).unwrap();
    let answer = |req: &str| {
        let mut s = TcpStream::connect(proxy).unwrap();
        timeouts(&s);
        s.write_all(req.as_bytes()).unwrap();
        let mut got = String::new();
        let _ = s.read_to_string(&mut got);
        got
    };
    let status = |req: &str| answer(req).get(9..12).unwrap_or("").to_owned();
    assert_eq!(status("GET /x HTTP/1.1\r\n\r\n"), "400");
    assert_eq!(status("GET ftp://a.test/ HTTP/1.1\r\n\r\n"), "501");
    // Denied by the remote's policy: the SOCKS refusal becomes 403.
    assert_eq!(status("CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n"), "403");
    // An unknown name and a refused connection are both 502, and the body
    // says which.
    let unknown = answer("CONNECT no-such-host.invalid:443 HTTP/1.1\r\n\r\n");
    assert!(unknown.starts_with("HTTP/1.1 502"), "{unknown}");
    assert!(
        unknown.contains("\r\n\r\n502 Bad Gateway: remote relay: host unreachable"),
        "{unknown}"
    );
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused = answer(&format!("GET http://{closed}/ HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(refused.starts_with("HTTP/1.1 502"), "{refused}");
    assert!(refused.contains("connection refused"), "{refused}");
    let length: usize = refused
        .split("Content-Length: ")
        .nth(1)
        .and_then(|r| r.split("\r\n").next()?.parse().ok())
        .unwrap();
    assert_eq!(length, refused.split("\r\n\r\n").nth(1).unwrap().len());
}

#[test]
fn graceful_shutdown_drains_open_connections() {
    let (echo, _e) = echo_server();
    let relay = remote_relay();
    let proxy = relay.listener(ListenerKind::RemoteSocks5).unwrap();
    let mut s = socks_connect(proxy, Some((USER, PASS)), &TargetAddr::Ip(echo)).unwrap();
    let closer = std::thread::spawn(move || relay.shutdown(Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(200));
    // Not accepting any more...
    assert!(TcpStream::connect(proxy).is_err());
    // ...but the open connection still works until it ends.
    s.write_all(b"drain").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"drain");
    let stats = closer.join().unwrap();
    assert_eq!((stats.active, stats.relayed), (0, 1), "{stats}");
}

#[test]
fn limits_and_idle_timeout() {
    let (echo, _e) = echo_server();
    let engine = EngineConfig {
        max_connections_per_client: 2,
        idle_timeout_secs: 1,
        ..engine()
    };
    let relay = remote_relay_with(engine);
    let proxy = relay.listener(ListenerKind::RemoteSocks5).unwrap();
    let mut a = socks_connect(proxy, Some((USER, PASS)), &TargetAddr::Ip(echo)).unwrap();
    let _b = socks_connect(proxy, Some((USER, PASS)), &TargetAddr::Ip(echo)).unwrap();
    // The third from the same address is refused once its request is in
    // (its handshake had a slot of its own).
    assert!(socks_connect(proxy, Some((USER, PASS)), &TargetAddr::Ip(echo)).is_err());
    // Idle connections are closed after the idle timeout (swept twice a
    // second), and their slots free up.
    let mut got = Vec::new();
    let started = std::time::Instant::now();
    a.read_to_end(&mut got).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let stats = relay.stats();
    assert_eq!(stats.error(ErrorKind::Limit), 1, "{stats}");
    assert!(stats.error(ErrorKind::IdleTimeout) >= 1, "{stats}");
    let d = socks_connect(proxy, Some((USER, PASS)), &TargetAddr::Ip(echo)).unwrap();
    assert_eq!(echo_round_trip(d, b"again"), b"again");
}

/// A client whose connection the relay ended may open another at once:
/// its slot is free by the time it sees the end, also when the workers
/// wait for the CPU (each connection here is refused if the previous one's
/// slot were still taken).
#[test]
fn a_connection_the_relay_ended_has_given_its_slot_back() {
    // The destination resets each connection once it has a byte from it.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let resetter = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.read(&mut [0u8; 1]);
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    });
    let engine = EngineConfig {
        max_connections_per_client: 1,
        ..engine()
    };
    let relay = remote_relay_with(engine);
    let proxy = relay.listener(ListenerKind::RemoteSocks5).unwrap();
    let _hogs = mptcp_testbed::CpuContention::new().unwrap();
    for round in 0..100 {
        let mut s = socks_connect(proxy, Some((USER, PASS)), &TargetAddr::Ip(resetter))
            .unwrap_or_else(|e| panic!("connection {round} refused: {e:?}\n{}", relay.stats()));
        s.write_all(b"x").unwrap();
        // The end: EOF or a reset, as the relay passes the destination's on.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    assert_eq!(relay.stats().error(ErrorKind::Limit), 0);
}

fn set_fd_limit(soft: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = soft;
    // SAFETY: `lim` is a valid rlimit; lowering the soft limit is always allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

#[test]
fn out_of_descriptors_pauses_accepting_and_keeps_connections() {
    // The descriptor limit is process-wide: change it in a child process.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.env("RELAY_EMFILE_CHILD", "1");
    if let Err(e) = mptcp_testbed::run_ignored_test(child, "emfile_child") {
        panic!("{e}");
    }
}

#[test]
#[ignore = "run in a child process by out_of_descriptors_pauses_accepting_and_keeps_connections"]
fn emfile_child() {
    assert!(
        std::env::var_os("RELAY_EMFILE_CHILD").is_some(),
        "lowers the process's fd limit"
    );
    let (echo, _e) = echo_server();
    let engine = EngineConfig {
        workers: 1,
        raise_fd_limit: false,
        ..engine()
    };
    let relay = remote_relay_with(engine);
    let proxy = relay.listener(ListenerKind::RemoteSocks5).unwrap();
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| socks_connect(proxy, Some((USER, PASS)), &TargetAddr::Ip(echo)).unwrap())
        .collect();
    let ping = |s: &mut TcpStream| {
        s.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
    };
    held.iter_mut().for_each(ping);

    // Use up every descriptor but one, which the next client takes: the
    // relay's accept() then fails with EMFILE.
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    set_fd_limit(highest + 1);
    let mut fillers = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        fillers.push(f);
    }
    set_fd_limit(highest + 2);
    let mut hello = Vec::new();
    socks5::encode_client_hello_auth_request(
        Some((USER, PASS)),
        &Request::connect(TargetAddr::Ip(echo)),
        &mut hello,
    )
    .unwrap();
    let mut waiting = TcpStream::connect(proxy).expect("the last descriptor");
    timeouts(&waiting);
    waiting.write_all(&hello).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let stats = relay.stats();
    assert!(stats.error(ErrorKind::Accept) >= 1, "{stats}");
    // Open connections keep working while accepting is paused.
    held.iter_mut().for_each(ping);

    // Descriptors come back: the waiting client is served.
    drop(fillers);
    set_fd_limit(highest + 1000);
    let mut reply = [0u8; 14];
    waiting.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..6], &[5, 2, 1, 0, 5, 0]);
    ping(&mut waiting);
    let stats = relay.stats();
    assert!(
        stats.error(ErrorKind::Accept) < 20,
        "accept retried with backoff, not in a busy loop: {stats}"
    );
}

#[test]
fn ipv6_listeners_and_destinations() {
    let l = TcpListener::bind("[::1]:0").unwrap();
    let echo = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut r = s.try_clone().unwrap();
            let _ = std::io::copy(&mut r, &mut s);
            let _ = s.shutdown(Shutdown::Write);
        }
    });
    let mut remote = RemoteConfig::new("[::1]:0".parse().unwrap())
        .user(USER, PASS)
        .allow_destination("::1".parse().unwrap());
    // Both families on the same port: IPv6 listeners are IPv6-only.
    remote.listen.push("127.0.0.1:0".parse().unwrap());
    let remote = Relay::start(Config::new().engine(engine()).remote(remote)).unwrap();
    let proxy6 = remote.listener(ListenerKind::RemoteSocks5).unwrap();
    assert!(proxy6.is_ipv6());
    let s = socks_connect(proxy6, Some((USER, PASS)), &TargetAddr::Ip(echo)).unwrap();
    assert_eq!(echo_round_trip(s, b"over v6"), b"over v6");
    let local = LocalConfig::new(proxy6.to_string())
        .credentials(USER, PASS)
        .socks5("[::1]:0".parse().unwrap());
    let local = Relay::start(Config::new().engine(engine()).local(local)).unwrap();
    let s = socks_connect(
        local.listener(ListenerKind::LocalSocks5).unwrap(),
        None,
        &TargetAddr::Ip(echo),
    )
    .unwrap();
    assert_eq!(echo_round_trip(s, b"chained v6"), b"chained v6");
}

#[test]
fn reuse_port_lets_two_relays_share_a_port() {
    let (echo, _e) = echo_server();
    let remote = |port: u16, reuse_port| {
        let config = Config::new()
            .engine(EngineConfig {
                reuse_port,
                ..engine()
            })
            .remote(
                RemoteConfig::new(SocketAddr::from(([127, 0, 0, 1], port)))
                    .user(USER, PASS)
                    .allow_destination("127.0.0.1".parse().unwrap()),
            );
        Relay::start(config)
    };
    let first = remote(0, true).unwrap();
    let port = first.listener(ListenerKind::RemoteSocks5).unwrap().port();
    let err = remote(port, false).unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
    let second = remote(port, true).unwrap();
    // The kernel spreads connections over both (by a hash of the
    // addresses): with enough of them, each relay gets some.
    let proxy = SocketAddr::from(([127, 0, 0, 1], port));
    for i in 0..64u8 {
        let s = socks_connect(proxy, Some((USER, PASS)), &TargetAddr::Ip(echo)).unwrap();
        assert_eq!(echo_round_trip(s, &[i]), [i]);
    }
    let (a, b) = (
        first.shutdown(Duration::from_secs(2)),
        second.shutdown(Duration::from_secs(2)),
    );
    assert_eq!(a.relayed + b.relayed, 64, "{a}\n{b}");
    assert!(a.relayed > 0 && b.relayed > 0, "{a}\n{b}");
}
