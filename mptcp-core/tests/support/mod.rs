//! What the relay tests on loopback share: a local relay in front of a
//! multiplexing remote relay, SOCKS5 clients, and servers that send,
//! check or echo the test bed's byte pattern.
#![allow(dead_code)] // each test binary uses its own part of it

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use mptcp_core::relay::{
    Config, EngineConfig, ListenerKind, LocalConfig, NoRemote, Relay, RelayHandle, RemoteConfig,
    Stats,
};
use mptcp_core::socks5::{self, ClientHandshake, Progress, ReplyCode, Request, TargetAddr};
use mptcp_testbed::data;

pub const USER: &str = "alice";
pub const PASS: &str = "s3cret";

/// `RUST_LOG=mptcp_core=debug` shows the relays' logs.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn engine() -> EngineConfig {
    logs();
    EngineConfig {
        workers: 2,
        handshake_timeout_secs: 3,
        ..EngineConfig::default()
    }
}

pub fn one_worker() -> EngineConfig {
    EngineConfig {
        workers: 1,
        ..engine()
    }
}

pub fn remote_config(listen: SocketAddr, multiplex: bool) -> Config {
    let remote = RemoteConfig::new(listen)
        .user(USER, PASS)
        .allow_destination("127.0.0.1".parse().unwrap())
        .multiplex(multiplex);
    Config::new().engine(engine()).remote(remote)
}

pub fn remote_relay(multiplex: bool) -> RelayHandle {
    Relay::start(remote_config("127.0.0.1:0".parse().unwrap(), multiplex)).unwrap()
}

/// A local relay carrying to `remote`, with at most `max_sessions` per
/// worker.
pub fn local_relay(remote: &RelayHandle, engine: EngineConfig, max_sessions: usize) -> RelayHandle {
    let at = remote.listener(ListenerKind::RemoteSocks5).unwrap();
    // Refused, not direct, when the remote fails: these tests look at
    // the chain (tests/relay_faults.rs has the direct fallback).
    let local = LocalConfig::new(at.to_string())
        .fallback(NoRemote::Refuse)
        .max_sessions(max_sessions)
        .credentials(USER, PASS)
        .socks5("127.0.0.1:0".parse().unwrap())
        .http("127.0.0.1:0".parse().unwrap());
    Relay::start(Config::new().engine(engine).local(local)).unwrap()
}

/// A local relay in front of a multiplexing remote relay.
pub struct Chain {
    pub local: RelayHandle,
    pub remote: RelayHandle,
}

impl Chain {
    pub fn new() -> Chain {
        Chain::with_local(engine(), 4)
    }

    /// With one local worker and one session at most, which every stream
    /// shares.
    pub fn one_session() -> Chain {
        Chain::with_local(one_worker(), 1)
    }

    pub fn with_local(engine: EngineConfig, max_sessions: usize) -> Chain {
        let remote = remote_relay(true);
        let local = local_relay(&remote, engine, max_sessions);
        Chain { local, remote }
    }

    pub fn http(&self) -> SocketAddr {
        self.local.listener(ListenerKind::Http).unwrap()
    }

    pub fn socks(&self) -> SocketAddr {
        self.local.listener(ListenerKind::LocalSocks5).unwrap()
    }

    /// Both relays' final counters, after their connections drained.
    pub fn finish(self) -> (Stats, Stats) {
        let l = self.local.shutdown(Duration::from_secs(5));
        let r = self.remote.shutdown(Duration::from_secs(5));
        (l, r)
    }
}

/// A SOCKS5 CONNECT through `proxy` (no authentication: the local relay's
/// LAN listener).
pub fn connect_via(proxy: SocketAddr, dest: SocketAddr) -> Result<TcpStream, ReplyCode> {
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
pub fn server(serve: fn(TcpStream)) -> SocketAddr {
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
pub fn pattern_source(mut s: TcpStream) {
    let mut len = [0u8; 8];
    if s.read_exact(&mut len).is_ok() {
        let _ = data::send_pattern(&mut s, u64::from_le_bytes(len));
    }
}

/// Checks a pattern stream until EOF and answers its length and checksum.
pub fn pattern_sink(mut s: TcpStream) {
    if let Ok((n, sum)) = data::receive_and_check(&mut s) {
        let _ = s.write_all(&n.to_le_bytes());
        let _ = s.write_all(&sum.to_le_bytes());
    }
}

/// Asks `source` through `proxy` for `len` bytes of the pattern.
pub fn request_download(proxy: SocketAddr, source: SocketAddr, len: u64) -> TcpStream {
    let mut s = connect_via(proxy, source).unwrap();
    s.write_all(&len.to_le_bytes()).unwrap();
    s
}

pub fn download(proxy: SocketAddr, source: SocketAddr, len: u64) -> u64 {
    let mut s = request_download(proxy, source, len);
    let (n, _) = data::receive_and_check(&mut s).expect("download intact");
    n
}

pub fn upload(proxy: SocketAddr, sink: SocketAddr, len: u64) -> u64 {
    let mut s = connect_via(proxy, sink).unwrap();
    data::send_pattern(&mut s, len).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = [0u8; 16];
    s.read_exact(&mut answer).expect("the sink's answer");
    u64::from_le_bytes(answer[..8].try_into().unwrap())
}

/// Echoes until the client's EOF, then closes.
pub fn echo(mut s: TcpStream) {
    let mut r = s.try_clone().unwrap();
    let _ = std::io::copy(&mut r, &mut s);
    let _ = s.shutdown(Shutdown::Write);
}

/// Sends `data`, shuts down writing, and reads everything back.
pub fn echo_round_trip(mut s: TcpStream, data: &[u8]) -> Vec<u8> {
    s.write_all(data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    got
}

/// Whether an I/O error says the peer closed or reset the connection (a
/// timeout says nothing).
pub fn peer_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | BrokenPipe | ConnectionAborted)
}

/// Waits (at most 5 s) until the relay's counters satisfy `ok`; the last
/// counters either way.
pub fn stats_until(relay: &RelayHandle, ok: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = relay.stats();
        if ok(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a local relay sends to open a session by hand: the SOCKS5
/// greeting, login and MULTIPLEX request of this protocol version, then
/// SETTINGS with `window` (offering DATAGRAM frames if `datagrams`).
pub fn session_hello(window: u32, datagrams: bool) -> Vec<u8> {
    use mptcp_core::mux::{self, Control, Settings};
    let mut hello = Vec::new();
    let request = Request {
        command: socks5::Command::Multiplex,
        dest: TargetAddr::Ip(SocketAddr::from(([0, 0, 0, 0], mux::VERSION))),
    };
    socks5::encode_client_hello_auth_request(Some((USER, PASS)), &request, &mut hello).unwrap();
    Control::Settings(Settings {
        initial_window: window,
        pings: false,
        datagrams,
    })
    .encode(0, &mut hello)
    .unwrap();
    hello
}
