//! The relays' multiplexed sessions on loopback: connections carried as
//! streams of one MPTCP connection per worker between a local and a remote
//! relay. Bulk transfers both ways and in parallel, many short
//! connections, a slow reader beside a fast one, refusals through a
//! stream, a remote that does not multiplex, a remote that goes away, and
//! draining.
#![cfg(feature = "relay")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use mptcp_core::mux::{self, Control, FrameType, Header};
use mptcp_core::relay::{Config, EngineConfig, ErrorKind, ListenerKind, LocalConfig, Relay};
use mptcp_core::socks5::{ReplyCode, TargetAddr};
use mptcp_testbed::data;

mod support;
use support::*;

#[test]
fn bulk_streams_both_ways_arrive_intact() {
    let chain = Chain::new();
    let proxy = chain.socks();
    let (source, sink) = (server(pattern_source), server(pattern_sink));
    const LEN: u64 = 200 << 20;
    for round in 0..3 {
        assert_eq!(download(proxy, source, LEN), LEN, "download {round}");
        assert_eq!(upload(proxy, sink, LEN), LEN, "upload {round}");
    }
    // Several at once, both directions, sharing the sessions.
    let threads: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let len = (20 << 20) + i * 12_345;
                if i % 2 == 0 {
                    (download(proxy, source, len), len)
                } else {
                    (upload(proxy, sink, len), len)
                }
            })
        })
        .collect();
    for t in threads {
        let (got, want) = t.join().unwrap();
        assert_eq!(got, want);
    }
    let (l, r) = chain.finish();
    assert_eq!(
        (l.multiplexed, r.multiplexed),
        (12, 12),
        "local {l}\nremote {r}"
    );
    assert_eq!(
        (l.active, r.active, l.sessions),
        (0, 0, 0),
        "local {l}\nremote {r}"
    );
    assert!(
        l.bytes_down >= 3 * LEN && r.bytes_up >= 3 * LEN,
        "local {l}\nremote {r}"
    );
}

#[test]
fn many_short_connections_share_the_sessions() {
    let chain = Chain::new();
    let (proxy, echo_at) = (chain.socks(), server(echo));
    const THREADS: usize = 8;
    const EACH: usize = 250;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let msg = format!("hello {t}/{i}");
                    let s = connect_via(proxy, echo_at).unwrap();
                    assert_eq!(echo_round_trip(s, msg.as_bytes()), msg.as_bytes());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let during = chain.local.stats();
    assert!(
        during.sessions <= 2,
        "one session per local worker: {during}"
    );
    let (l, r) = chain.finish();
    let n = (THREADS * EACH) as u64;
    assert_eq!(
        (l.multiplexed, r.multiplexed, r.relayed),
        (n, n, n),
        "local {l}\nremote {r}"
    );
    assert_eq!(l.errors.iter().sum::<u64>(), 0, "local {l}");
}

#[test]
fn a_slow_reader_does_not_hold_up_other_streams() {
    let chain = Chain::one_session();
    let (proxy, source) = (chain.socks(), server(pattern_source));
    const LEN: u64 = 64 << 20;
    // This client asks for a download, then reads nothing for a while: its
    // stream's window fills and the remote relay stops sending it.
    let mut slow = request_download(proxy, source, LEN);
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile another stream of the same session moves far more than
    // any buffer between the relays holds.
    let started = Instant::now();
    assert_eq!(download(proxy, source, LEN), LEN);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the fast stream took {:?}",
        started.elapsed()
    );
    // The slow one then gets all of its bytes, in order.
    let (n, _) = data::receive_and_check(&mut slow).expect("slow download intact");
    assert_eq!(n, LEN);
    let (l, _) = chain.finish();
    assert_eq!((l.multiplexed, l.sessions), (2, 0), "{l}");
}

#[test]
fn refusals_come_back_through_the_stream() {
    let chain = Chain::new();
    let proxy = chain.socks();
    let echo_at = server(echo);
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // A destination the remote's policy denies, and one that refuses.
    let denied: SocketAddr = "10.1.2.3:80".parse().unwrap();
    assert_eq!(
        connect_via(proxy, denied).unwrap_err(),
        ReplyCode::NotAllowed
    );
    assert_eq!(
        connect_via(proxy, closed).unwrap_err(),
        ReplyCode::ConnectionRefused
    );
    // The HTTP listener turns them into statuses.
    let status = |request: String| {
        let mut s = TcpStream::connect(chain.http()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut head = String::new();
        let _ = s.read_to_string(&mut head);
        head.split_whitespace().nth(1).unwrap_or("").to_owned()
    };
    assert_eq!(status(format!("CONNECT {denied} HTTP/1.1\r\n\r\n")), "403");
    assert_eq!(status(format!("CONNECT {closed} HTTP/1.1\r\n\r\n")), "502");
    // The session carries on.
    let sessions = chain.local.stats().sessions;
    let s = connect_via(proxy, echo_at).unwrap();
    assert_eq!(echo_round_trip(s, b"still here"), b"still here");
    let (l, r) = chain.finish();
    assert_eq!(sessions, l.sessions.max(sessions), "no session was lost");
    assert_eq!(r.error(ErrorKind::DestinationDenied), 2, "remote {r}");
    assert_eq!(r.error(ErrorKind::Connect), 2, "remote {r}");
    assert_eq!(l.error(ErrorKind::Upstream), 4, "local {l}");
    assert_eq!(
        (l.multiplexed, r.multiplexed),
        (5, 5),
        "local {l}\nremote {r}"
    );
}

#[test]
fn a_remote_that_does_not_multiplex_gets_a_connection_each() {
    let remote = remote_relay(false);
    let local = local_relay(&remote, one_worker(), 1);
    let proxy = local.listener(ListenerKind::LocalSocks5).unwrap();
    let echo_at = server(echo);
    for i in 0..3 {
        let msg = format!("plain {i}");
        let s = connect_via(proxy, echo_at).unwrap();
        assert_eq!(echo_round_trip(s, msg.as_bytes()), msg.as_bytes());
    }
    let l = local.shutdown(Duration::from_secs(5));
    let r = remote.shutdown(Duration::from_secs(5));
    assert_eq!(
        (l.multiplexed, r.multiplexed, l.relayed, r.relayed),
        (0, 0, 3, 3),
        "local {l}\nremote {r}"
    );
    // One session was asked for and refused; after that the local relay
    // did not ask again.
    assert_eq!(
        (r.accepted, r.error(ErrorKind::Protocol)),
        (4, 1),
        "remote {r}"
    );
}

#[test]
fn a_new_session_replaces_one_whose_remote_went_away() {
    let echo_at = server(echo);
    let remote = remote_relay(true);
    let at = remote.listener(ListenerKind::RemoteSocks5).unwrap();
    let local = local_relay(&remote, one_worker(), 1);
    let proxy = local.listener(ListenerKind::LocalSocks5).unwrap();
    let s = connect_via(proxy, echo_at).unwrap();
    assert_eq!(echo_round_trip(s, b"first"), b"first");
    // A stream open when the remote stops is closed, not left hanging.
    let mut open = connect_via(proxy, echo_at).unwrap();
    remote.shutdown(Duration::ZERO);
    let mut rest = Vec::new();
    let started = Instant::now();
    let _ = open.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(5), "closed at once");
    // The remote comes back on the same address: the next connection gets
    // a new session.
    let remote = Relay::start(remote_config(at, true)).unwrap();
    let s = connect_via(proxy, echo_at).unwrap();
    assert_eq!(echo_round_trip(s, b"again"), b"again");
    let l = local.shutdown(Duration::from_secs(5));
    let r = remote.shutdown(Duration::from_secs(5));
    assert_eq!(
        (l.multiplexed, r.multiplexed),
        (3, 1),
        "local {l}\nremote {r}"
    );
}

#[test]
fn a_draining_remote_lets_its_streams_finish() {
    let chain = Chain::one_session();
    let (proxy, source) = (chain.socks(), server(pattern_source));
    const LEN: u64 = 32 << 20;
    let mut s = request_download(proxy, source, LEN);
    let mut first = [0u8; 4096];
    s.read_exact(&mut first).unwrap();
    let Chain { local, remote } = chain;
    let draining = std::thread::spawn(move || remote.shutdown(Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(300));
    // GOAWAY: no new streams on that session, and the remote listens no
    // more, so a new connection is refused...
    assert!(connect_via(proxy, source).is_err());
    // ...while the open one still gets every byte.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(4096 + rest.len() as u64, LEN);
    let r = draining.join().unwrap();
    assert_eq!((r.relayed, r.active), (1, 0), "remote {r}");
    local.shutdown(Duration::from_secs(1));
}

/// A session opened by hand, as a local relay would: SOCKS5 handshake with
/// MULTIPLEX, then SETTINGS both ways.
fn raw_session(remote: SocketAddr, window: u32) -> TcpStream {
    let mut s = TcpStream::connect(remote).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&session_hello(window, false)).unwrap();
    // Method, auth status, reply (IPv4: 10 bytes), SETTINGS (a header
    // and (id, value) pairs).
    let mut answer = [0u8; 2 + 2 + 10 + mux::HEADER_LEN];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer[..5], [5, 2, 1, 0, 5]);
    assert_eq!(answer[5], 0, "the remote accepted the session");
    assert_eq!(answer[14], FrameType::Settings.to_u8());
    let len = u32::from_be_bytes(answer[20..24].try_into().unwrap());
    s.read_exact(&mut vec![0; len as usize]).unwrap();
    s
}

/// Reads until EOF or reset, for at most `limit`: whether the remote
/// closed the session.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let mut sink = [0u8; 4096];
    while started.elapsed() < limit {
        match s.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if peer_closed(&e) => return true,
            Err(_) => {}
        }
    }
    false
}

#[test]
fn a_peer_breaking_the_protocol_loses_only_its_session() {
    let chain = Chain::new();
    let remote_at = chain.remote.listener(ListenerKind::RemoteSocks5).unwrap();
    let echo_at = server(echo);
    // A frame with flags set.
    let mut s = raw_session(remote_at, 1 << 20);
    let mut bad = Header::data(1, 0).to_bytes();
    bad[1] = 0x80;
    s.write_all(&bad).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(10)), "bad flags");
    // A stream id used twice.
    let mut s = raw_session(remote_at, 1 << 20);
    let mut frames = Vec::new();
    Control::Open(TargetAddr::Ip(echo_at))
        .encode(1, &mut frames)
        .unwrap();
    Control::Open(TargetAddr::Ip(echo_at))
        .encode(1, &mut frames)
        .unwrap();
    s.write_all(&frames).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(10)), "id reused");
    // A stream's window overrun: the destination reads nothing, the
    // remote relay announced 4 MiB, we send far more without waiting for
    // credit.
    let sink_at = server(|s| {
        std::thread::sleep(Duration::from_secs(20));
        drop(s);
    });
    let mut s = raw_session(remote_at, 1 << 20);
    let mut open = Vec::new();
    Control::Open(TargetAddr::Ip(sink_at))
        .encode(1, &mut open)
        .unwrap();
    s.write_all(&open).unwrap();
    let chunk = vec![7u8; 1 << 20];
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut refused = None;
    for _ in 0..64 {
        let header = Header::data(1, chunk.len() as u32).to_bytes();
        if let Err(e) = s.write_all(&header).and_then(|()| s.write_all(&chunk)) {
            refused = Some(e);
            break;
        }
    }
    match refused {
        Some(e) => assert!(peer_closed(&e), "window overrun: {e}"),
        None => assert!(
            closed_within(&mut s, Duration::from_secs(10)),
            "window overrun"
        ),
    }
    // Through all of it, the local relay's own session kept working.
    let c = connect_via(chain.socks(), echo_at).unwrap();
    assert_eq!(echo_round_trip(c, b"unharmed"), b"unharmed");
    let (l, r) = chain.finish();
    assert_eq!(l.errors.iter().sum::<u64>(), 0, "local {l}");
    assert!(r.multiplexed >= 2, "remote {r}");
}

#[test]
fn idle_streams_time_out_and_the_session_stays() {
    let chain = Chain::with_local(
        EngineConfig {
            idle_timeout_secs: 1,
            ..one_worker()
        },
        1,
    );
    let (proxy, echo_at) = (chain.socks(), server(echo));
    let mut idle = connect_via(proxy, echo_at).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    idle.read_to_end(&mut got).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed by the idle timeout"
    );
    let s = connect_via(proxy, echo_at).unwrap();
    assert_eq!(echo_round_trip(s, b"later"), b"later");
    let (l, r) = chain.finish();
    assert_eq!(l.error(ErrorKind::IdleTimeout), 1, "local {l}");
    assert_eq!(r.multiplexed, 2, "one session carried both: remote {r}");
}

#[test]
fn a_busy_session_gets_a_spare_for_new_streams() {
    let chain = Chain::with_local(one_worker(), 4);
    let (proxy, source, echo_at) = (chain.socks(), server(pattern_source), server(echo));
    let s = connect_via(proxy, echo_at).unwrap();
    assert_eq!(echo_round_trip(s, b"before"), b"before");
    assert_eq!(chain.local.stats().sessions, 1, "one session while idle");
    // A download keeps the first session busy; the worker opens a spare,
    // and a new connection goes there.
    const LEN: u64 = 1 << 30;
    let mut downloading = request_download(proxy, source, LEN);
    let mut first = vec![0u8; 8 << 20];
    downloading.read_exact(&mut first).unwrap();
    let s = connect_via(proxy, echo_at).unwrap();
    assert_eq!(echo_round_trip(s, b"beside"), b"beside");
    let during = chain.local.stats();
    drop(downloading);
    let (l, r) = chain.finish();
    assert_eq!(during.sessions, 2, "a spare beside the busy one: {during}");
    assert_eq!(
        (l.multiplexed, r.multiplexed),
        (3, 3),
        "local {l}\nremote {r}"
    );
}

#[test]
fn idle_handshakes_do_not_take_the_slots_of_real_connections() {
    // Three connections at most; far more idle handshakes than that.
    let engine = EngineConfig {
        max_connections: 3,
        max_handshakes_per_client: 100,
        ..one_worker()
    };
    let chain = Chain::with_local(engine, 1);
    let idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(chain.socks()).unwrap())
        .collect();
    let echo_at = server(echo);
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..3 {
        let msg = format!("real {i}");
        let s = connect_via(chain.socks(), echo_at).unwrap();
        assert_eq!(echo_round_trip(s, msg.as_bytes()), msg.as_bytes());
    }
    drop(idle);
    let (l, _) = chain.finish();
    assert_eq!(l.error(ErrorKind::Limit), 0, "local {l}");
}

#[test]
fn a_local_relays_streams_are_not_capped_as_one_client() {
    // The remote allows two connections per client address; the local
    // relay's session carries a whole LAN's worth of streams from its one
    // address.
    let config = remote_config("127.0.0.1:0".parse().unwrap(), true).engine(EngineConfig {
        max_connections_per_client: 2,
        ..engine()
    });
    let remote = Relay::start(config).unwrap();
    let local = local_relay(&remote, one_worker(), 1);
    let proxy = local.listener(ListenerKind::LocalSocks5).unwrap();
    let echo_at = server(echo);
    let open: Vec<TcpStream> = (0..10)
        .map(|_| connect_via(proxy, echo_at).unwrap())
        .collect();
    for (i, s) in open.into_iter().enumerate() {
        let msg = format!("stream {i}");
        assert_eq!(echo_round_trip(s, msg.as_bytes()), msg.as_bytes());
    }
    let l = local.shutdown(Duration::from_secs(5));
    let r = remote.shutdown(Duration::from_secs(5));
    assert_eq!(
        (r.multiplexed, r.error(ErrorKind::Limit)),
        (10, 0),
        "remote {r}"
    );
    assert_eq!(l.errors.iter().sum::<u64>(), 0, "local {l}");
}

#[test]
fn a_spare_session_idles_from_its_last_frame_not_its_last_new_stream() {
    let remote = remote_relay(true);
    let at = remote.listener(ListenerKind::RemoteSocks5).unwrap();
    let local = LocalConfig::new(at.to_string())
        .max_sessions(2)
        .spare_session_idle_secs(2)
        .credentials(USER, PASS)
        .socks5("127.0.0.1:0".parse().unwrap());
    let local = Relay::start(Config::new().engine(one_worker()).local(local)).unwrap();
    let proxy = local.listener(ListenerKind::LocalSocks5).unwrap();
    let (source, echo_at) = (server(pattern_source), server(echo));
    let s = connect_via(proxy, echo_at).unwrap();
    assert_eq!(echo_round_trip(s, b"first"), b"first");
    // A download (read at about 30 MB/s) keeps the first session busy for
    // the whole test...
    let mut downloading = request_download(proxy, source, 1 << 40);
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        while downloading.read_exact(&mut buf).is_ok() {
            std::thread::sleep(Duration::from_millis(30));
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    // ...so this 4-second conversation goes to a spare session.
    let mut talk = connect_via(proxy, echo_at).unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        talk.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        talk.read_exact(&mut b).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(local.stats().sessions, 2, "a spare carried the talk");
    drop(talk);
    // A second after its last frame the spare is still open (its idle time
    // counts from then, not from the stream's start 4 s ago)...
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        local.stats().sessions,
        2,
        "the spare stays while recently used"
    );
    // ...and it goes once idle for the 2 s configured.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(local.stats().sessions, 1, "the idle spare closed");
    local.shutdown(Duration::ZERO);
    reader.join().unwrap();
    remote.shutdown(Duration::ZERO);
}
