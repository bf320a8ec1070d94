//! The relays' multiplexed sessions on loopback: connections carried as
//! streams of one MPTCP connection per worker between a local and a remote
//! relay. Bulk transfers both ways and in parallel, many short
//! connections, a slow reader beside a fast one, refusals through a
//! stream, a remote that does not multiplex, a remote that goes away, and
//! draining.
#![cfg(feature = "relay")]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use mptcp_core::relay::{
    Config, EngineConfig, ListenerKind, LocalConfig, Relay, RelayHandle, RemoteConfig, Stats,
};
use mptcp_core::socks5::{self, ClientHandshake, Progress, ReplyCode, Request, TargetAddr};
use mptcp_testbed::data;

const USER: &str = "alice";
const PASS: &str = "s3cret";

/// `RUST_LOG=mptcp_core=debug` shows the relays' logs.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn engine() -> EngineConfig {
    logs();
    EngineConfig {
        workers: 2,
        handshake_timeout_secs: 3,
        ..EngineConfig::default()
    }
}

fn remote_relay(multiplex: bool) -> RelayHandle {
    let remote = RemoteConfig::new("127.0.0.1:0".parse().unwrap())
        .user(USER, PASS)
        .allow_destination("127.0.0.1".parse().unwrap())
        .multiplex(multiplex);
    Relay::start(Config::new().engine(engine()).remote(remote)).unwrap()
}

fn local_relay(remote: &RelayHandle) -> RelayHandle {
    let at = remote.listener(ListenerKind::RemoteSocks5).unwrap();
    let local = LocalConfig::new(at.to_string())
        .credentials(USER, PASS)
        .socks5("127.0.0.1:0".parse().unwrap())
        .http("127.0.0.1:0".parse().unwrap());
    Relay::start(Config::new().engine(engine()).local(local)).unwrap()
}

/// A local relay in front of a multiplexing remote relay.
struct Chain {
    local: RelayHandle,
    remote: RelayHandle,
}

impl Chain {
    fn new() -> Chain {
        let remote = remote_relay(true);
        let local = local_relay(&remote);
        Chain { local, remote }
    }

    fn socks(&self) -> SocketAddr {
        self.local.listener(ListenerKind::LocalSocks5).unwrap()
    }

    /// Both relays' final counters, after their connections drained.
    fn finish(self) -> (Stats, Stats) {
        let l = self.local.shutdown(Duration::from_secs(5));
        let r = self.remote.shutdown(Duration::from_secs(5));
        (l, r)
    }
}

/// A SOCKS5 CONNECT through `proxy` (no authentication: the local relay's
/// LAN listener).
fn connect_via(proxy: SocketAddr, dest: SocketAddr) -> Result<TcpStream, ReplyCode> {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut hello = Vec::new();
    socks5::encode_client_hello_auth_request(
        None,
        &Request::connect(TargetAddr::Ip(dest)),
        &mut hello,
    )
    .unwrap();
    s.write_all(&hello).unwrap();
    let mut handshake = ClientHandshake::new(false);
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 64];
        let n = s.read(&mut chunk).unwrap();
        buf.extend_from_slice(&chunk[..n]);
        match handshake.advance(&buf) {
            Ok(Progress::Done(_, used)) => {
                assert_eq!(used, buf.len(), "no destination bytes before we send");
                return Ok(s);
            }
            Ok(Progress::NeedMore) if n == 0 => panic!("the relay closed during the handshake"),
            Ok(Progress::NeedMore) => {}
            Err(e) => return Err(e.reply),
        }
    }
}

/// A server on loopback that runs `serve` for each connection on its own
/// thread.
fn server(serve: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            std::thread::spawn(move || serve(s));
        }
    });
    addr
}

/// Sends the pattern (length asked in the first 8 bytes), then closes.
fn pattern_source(mut s: TcpStream) {
    let mut len = [0u8; 8];
    if s.read_exact(&mut len).is_ok() {
        let _ = data::send_pattern(&mut s, u64::from_le_bytes(len));
    }
}

/// Checks a pattern stream until EOF and answers its length and checksum.
fn pattern_sink(mut s: TcpStream) {
    if let Ok((n, sum)) = data::receive_and_check(&mut s) {
        let _ = s.write_all(&n.to_le_bytes());
        let _ = s.write_all(&sum.to_le_bytes());
    }
}

fn download(proxy: SocketAddr, source: SocketAddr, len: u64) -> u64 {
    let mut s = connect_via(proxy, source).unwrap();
    s.write_all(&len.to_le_bytes()).unwrap();
    let (n, _) = data::receive_and_check(&mut s).expect("download intact");
    n
}

fn upload(proxy: SocketAddr, sink: SocketAddr, len: u64) -> u64 {
    let mut s = connect_via(proxy, sink).unwrap();
    data::send_pattern(&mut s, len).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = [0u8; 16];
    s.read_exact(&mut answer).expect("the sink's answer");
    u64::from_le_bytes(answer[..8].try_into().unwrap())
}

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
