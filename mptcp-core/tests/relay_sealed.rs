//! The encrypted relay link on loopback: a recording forwarder between the
//! two relays sees every byte on the wire, and neither the SOCKS5 login nor
//! the payload may appear in it; wrong keys and unknown relays are refused,
//! and a relay that must encrypt never falls back to a plain connection.
#![cfg(feature = "relay")]

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use mptcp_core::relay::{
    Config, ErrorKind, ListenerKind, LocalConfig, NoRemote, PublicKey, Relay, RelayHandle,
    RemoteConfig, SecretKey,
};
use support::{PASS, USER, connect_via, echo, echo_round_trip, engine, server};

/// What the payload carries, so that it can be looked for on the wire.
const MARKER: &[u8] = b"GET /index.html MARKER-7d1f";

/// A TCP forwarder to `to` that records what crosses it, both ways.
struct Tap {
    addr: SocketAddr,
    wire: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    fn new(to: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let wire = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&wire);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(upstream) = TcpStream::connect(to) else {
                    continue;
                };
                for (from, into) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    let recorded = Arc::clone(&recorded);
                    std::thread::spawn(move || copy_recording(from, into, &recorded));
                }
            }
        });
        Tap { addr, wire }
    }

    /// Whether `needle` crossed the tap.
    fn saw(&self, needle: &[u8]) -> bool {
        let wire = self.wire.lock().unwrap();
        wire.windows(needle.len()).any(|w| w == needle)
    }

    fn bytes(&self) -> usize {
        self.wire.lock().unwrap().len()
    }
}

fn copy_recording(mut from: TcpStream, mut into: TcpStream, wire: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 65536];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                wire.lock().unwrap().extend_from_slice(&buf[..n]);
                if into.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = into.shutdown(Shutdown::Write);
}

fn remote(config: RemoteConfig) -> RelayHandle {
    let config = config
        .user(USER, PASS)
        .allow_destination("127.0.0.1".parse().unwrap());
    Relay::start(Config::new().engine(engine()).remote(config)).unwrap()
}

fn remote_listener(relay: &RelayHandle) -> SocketAddr {
    relay.listener(ListenerKind::RemoteSocks5).unwrap()
}

/// A local relay to `remote` (through whatever address), encrypted when
/// `keys` says with which.
fn local(remote: SocketAddr, keys: Option<(&SecretKey, &PublicKey)>) -> RelayHandle {
    // A refused session must not go direct either.
    let mut config = LocalConfig::new(remote.to_string())
        .fallback(NoRemote::Refuse)
        .credentials(USER, PASS)
        .socks5("127.0.0.1:0".parse().unwrap());
    if let Some((own, theirs)) = keys {
        config = config.encrypt(own, theirs);
    }
    Relay::start(Config::new().engine(engine()).local(config)).unwrap()
}

/// Echoes `MARKER`-laden data of `len` bytes through `local` and checks it.
fn echo_through(local: &RelayHandle, echo: SocketAddr, len: usize) {
    let socks = local.listener(ListenerKind::LocalSocks5).unwrap();
    let data: Vec<u8> = MARKER.iter().copied().cycle().take(len).collect();
    let s = connect_via(socks, echo).expect("the chain connects");
    assert_eq!(echo_round_trip(s, &data), data, "echoed intact");
}

/// The destination as SOCKS5 and OPEN frames write it: address, port.
fn dest(echo: SocketAddr) -> Vec<u8> {
    let mut dest = vec![127, 0, 0, 1];
    dest.extend_from_slice(&echo.port().to_be_bytes());
    dest
}

/// An encrypted chain (multiplexed or one session per connection) behind a
/// tap: small and bulk streams, several at once, echo intact, and neither
/// the payload, the login nor `dest` crosses the tap. Returns both relays.
fn sealed_chain_checked(
    echo: SocketAddr,
    dest: &[u8],
    multiplex: bool,
) -> (RelayHandle, RelayHandle) {
    let remote_key = SecretKey::generate();
    let local_key = SecretKey::generate();
    let sealed_remote = remote(
        RemoteConfig::new("127.0.0.1:0".parse().unwrap())
            .key(&remote_key)
            .peer_key(&local_key.public_key()),
    );
    let tap = Tap::new(remote_listener(&sealed_remote));
    let config = LocalConfig::new(tap.addr.to_string())
        .credentials(USER, PASS)
        .socks5("127.0.0.1:0".parse().unwrap())
        .encrypt(&local_key, &remote_key.public_key())
        .multiplex(multiplex);
    let sealed_local = Relay::start(Config::new().engine(engine()).local(config)).unwrap();
    std::thread::scope(|scope| {
        for len in [100, 70_000, 3 << 20, 5 << 20] {
            let l = &sealed_local;
            scope.spawn(move || echo_through(l, echo, len));
        }
    });
    assert!(
        tap.bytes() > 2 * (8 << 20),
        "the data went through the tap: {}",
        tap.bytes()
    );
    for secret in [MARKER, PASS.as_bytes(), USER.as_bytes(), dest] {
        assert!(
            !tap.saw(secret),
            "{:?} crossed the wire in clear",
            String::from_utf8_lossy(secret)
        );
    }
    (sealed_remote, sealed_local)
}

#[test]
fn the_encrypted_link_shows_neither_the_login_nor_the_payload() {
    let echo = server(echo);

    // Control: the same chain in plain, through the same kind of tap.
    let plain_remote = remote(RemoteConfig::new("127.0.0.1:0".parse().unwrap()));
    let plain_tap = Tap::new(remote_listener(&plain_remote));
    let plain_local = local(plain_tap.addr, None);
    echo_through(&plain_local, echo, 1 << 20);
    assert!(
        plain_tap.saw(MARKER) && plain_tap.saw(PASS.as_bytes()),
        "the tap sees plain text"
    );
    assert!(plain_tap.saw(&dest(echo)));

    let (sealed_remote, _) = sealed_chain_checked(echo, &dest(echo), true);
    let stats = sealed_remote.stats();
    assert_eq!(stats.multiplexed, 4, "{stats}");
    assert_eq!(stats.session_errors, 0, "{stats}");
}

#[test]
fn a_wrong_key_or_an_unknown_relay_gets_no_session_and_no_plain_fallback() {
    let echo = server(echo);
    let remote_key = SecretKey::generate();
    let local_key = SecretKey::generate();
    let relay = remote(
        RemoteConfig::new("127.0.0.1:0".parse().unwrap())
            .key(&remote_key)
            .peer_key(&local_key.public_key()),
    );
    let at = remote_listener(&relay);

    // The local relay pins a key that is not the remote's.
    let impostor = SecretKey::generate().public_key();
    let mislead = local(at, Some((&local_key, &impostor)));
    // A local relay whose key the remote does not list.
    let stranger = local(at, Some((&SecretKey::generate(), &remote_key.public_key())));
    for l in [&mislead, &stranger] {
        let socks = l.listener(ListenerKind::LocalSocks5).unwrap();
        let r = connect_via(socks, echo);
        assert!(r.is_err(), "no session, so no connection");
        let stats = l.stats();
        assert_eq!(stats.relayed, 0, "{stats}");
    }
    let stats = relay.stats();
    assert_eq!(stats.relayed, 0, "nothing reached a destination: {stats}");
    assert!(
        stats.error(ErrorKind::Auth) >= 2,
        "both refused as logins: {stats}"
    );

    // The listed relay with the right pin gets through.
    let good = local(at, Some((&local_key, &remote_key.public_key())));
    echo_through(&good, echo, 10_000);
}

#[test]
fn plain_socks5_clients_are_served_only_when_asked_for() {
    let echo = server(echo);
    let key = SecretKey::generate();
    let sealed_only = remote(RemoteConfig::new("127.0.0.1:0".parse().unwrap()).key(&key));
    let both = remote(
        RemoteConfig::new("127.0.0.1:0".parse().unwrap())
            .key(&key)
            .plain(true),
    );
    // A plain local relay (as curl or dante would be, SOCKS5 in clear).
    let refused = local(remote_listener(&sealed_only), None);
    let socks = refused.listener(ListenerKind::LocalSocks5).unwrap();
    assert!(connect_via(socks, echo).is_err(), "plain SOCKS5 refused");
    let served = local(remote_listener(&both), None);
    echo_through(&served, echo, 10_000);

    // Encryption works beside plain clients on the same listener, with no
    // peer keys listed (the login inside decides).
    let sealed = local(
        remote_listener(&both),
        Some((&SecretKey::generate(), &key.public_key())),
    );
    echo_through(&sealed, echo, 10_000);
}

#[test]
fn one_connection_per_client_connection_is_encrypted_in_a_session_of_its_own() {
    let echo = server(echo);
    let (remote, local) = sealed_chain_checked(echo, &dest(echo), false);
    let stats = remote.stats();
    assert_eq!(stats.multiplexed, 4, "{stats}");
    assert_eq!(stats.session_errors, 0, "{stats}");
    // Each session closes with its stream, at both ends (a multiplexed
    // relay keeps its first session open).
    let closed = || remote.stats().sessions == 0 && local.stats().sessions == 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !closed() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(closed(), "{} / {}", local.stats(), remote.stats());
}

#[test]
fn key_configuration_mistakes_are_named() {
    let key = SecretKey::generate();
    let remote = "127.0.0.1:1080";
    let bad = |local: LocalConfig| {
        let config = Config::new().local(local.socks5("127.0.0.1:0".parse().unwrap()));
        let e = config.validate().unwrap_err();
        e.key.unwrap_or_default()
    };
    let mut half = LocalConfig::new(remote);
    half.key = Some(key.to_string());
    assert_eq!(bad(half), "local.remote_key");
    let mut garbled = LocalConfig::new(remote).encrypt(&key, &key.public_key());
    garbled.remote_key = Some("not a key".into());
    assert_eq!(bad(garbled), "local.remote_key");
    let mut nobody = RemoteConfig::new("127.0.0.1:0".parse().unwrap()).plain(false);
    nobody.users.push(mptcp_core::relay::User {
        username: USER.into(),
        password: PASS.into(),
    });
    let e = Config::new().remote(nobody).validate().unwrap_err();
    assert_eq!(e.key.as_deref(), Some("remote.plain"));
}
