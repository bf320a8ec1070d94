//! The relay engine: carries unmodified TCP from hosts that cannot speak
//! MPTCP over MPTCP, in two roles.
//!
//! - **local** (on the LAN's router): accepts plain TCP redirected by
//!   nftables/iptables (`REDIRECT`, `TPROXY`) or sent to its SOCKS5 or HTTP
//!   proxy listeners, and carries each connection to the remote relay as a
//!   stream of one long-lived MPTCP connection per worker (a session, see
//!   [`crate::mux`]). Any SOCKS5 server (dante) can be the remote: one that
//!   refuses sessions gets one MPTCP connection per client connection,
//!   speaking SOCKS5 (greeting, authentication and request in one packet).
//! - **remote** (on a server): a SOCKS5 server on an MPTCP listener that
//!   authenticates clients, serves sessions, applies a destination policy
//!   and connects onward; it also relays SOCKS5 clients' UDP (UDP
//!   ASSOCIATE) under the same logins and policy.
//!
//! Data flows through `splice(2)` wherever a pipe can carry it. A few worker
//! threads each run an epoll loop (mio) over their connections and
//! sessions; a small pool of threads resolves domain names so that no
//! worker ever blocks.
//!
//! ```no_run
//! use mptcp_core::relay::{Config, RemoteConfig, Relay};
//! use std::time::Duration;
//! let config = Config::new()
//!     .remote(RemoteConfig::new("0.0.0.0:1080".parse().unwrap()).user("alice", "secret"));
//! let relay = Relay::start(config).unwrap();
//! println!("{}", relay.stats());
//! relay.shutdown(Duration::from_secs(5));
//! ```
#![forbid(unsafe_code)]

mod config;
mod engine;
mod flows;
mod guard;
mod limits;
mod listeners;
mod outbound;
mod policy;
mod remotes;
mod seal;
mod session;
mod splice;
mod stats;
mod stream;
mod udp_ports;

pub use config::{
    Config, ConfigError, EngineConfig, LONG_ROUND_TRIP, LocalConfig, NoRemote, RemoteConfig,
    RemoteEntry, RemotePolicy, User,
};
pub use policy::{Cidr, ClientAllowlist, DEFAULT_DENIED, DEFAULT_LAN_CLIENTS, DestinationPolicy};
pub use remotes::RemoteState;
pub use seal::{KeyError, PublicKey, SecretKey};
pub use stats::{ErrorKind, Stats, UdpDrop, UdpStats};
pub use udp_ports::{UdpPortAction, UdpPorts};

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use limits::Limits;
use stats::Counters;

/// What a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// Connections redirected by `REDIRECT` (local role).
    Redirect,
    /// Connections diverted by `TPROXY` (local role).
    Tproxy,
    /// SOCKS5 clients on the LAN (local role).
    LocalSocks5,
    /// HTTP proxy clients on the LAN (local role).
    Http,
    /// SOCKS5 clients of the remote role.
    RemoteSocks5,
    /// DNS over TCP from the LAN (local role): the DNS forwarder's TCP
    /// side, each connection carried to `dns_upstream` through the remote.
    DnsForwarder,
}

/// How connections of a listener leave the relay.
#[derive(Debug)]
pub(crate) enum Route {
    /// Connect to the destination (remote role).
    Direct {
        mptcp: bool,
        policy: DestinationPolicy,
        users: Vec<User>,
        /// Serve SOCKS5 MULTIPLEX requests (sessions of many streams).
        multiplex: bool,
        /// Encrypted sessions (and whether plain clients are served too).
        keys: Option<Arc<seal::AcceptKeys>>,
        /// Serve SOCKS5 UDP ASSOCIATE.
        udp_associate: bool,
    },
    /// Through a SOCKS5 server: one of the remote relays (local role).
    Upstream {
        remotes: Arc<remotes::Remotes>,
        mptcp: bool,
        /// Carry connections as streams of a session when the server
        /// multiplexes.
        multiplex: bool,
        /// Sessions per worker at most.
        max_sessions: usize,
        /// How long a spare session may stay idle.
        spare_idle: Duration,
        /// Whether the sessions are encrypted (each remote has its keys).
        sealed: bool,
        /// Where the paths daemon says how many links are usable.
        links_file: Option<std::path::PathBuf>,
    },
}

/// One listening socket and what to do with its connections.
#[derive(Debug)]
pub(crate) struct ListenerSpec {
    pub kind: ListenerKind,
    pub addr: SocketAddr,
    pub route: Arc<Route>,
    pub clients: ClientAllowlist,
    pub require_auth: bool,
    /// Where every connection goes (the DNS forwarder's resolver).
    pub forward_to: Option<SocketAddr>,
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const STOPPING: u8 = 2;

/// State shared by the workers and the handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub engine: EngineConfig,
    pub state: AtomicU8,
    pub limits: Limits,
    /// Failed logins per client address (online guessing slowed down).
    pub auth_guard: guard::AuthGuard,
    /// Tests: the next connection a worker drives panics.
    #[cfg(test)]
    pub panic_next_drive: std::sync::atomic::AtomicBool,
    pub counters: Box<[Counters]>,
}

/// A domain name to resolve for a connection.
#[derive(Debug)]
pub(crate) struct ResolveRequest {
    pub worker: usize,
    pub conn: usize,
    pub serial: u64,
    pub name: String,
    pub port: u16,
}

/// The answer, sent back to the worker.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub conn: usize,
    pub serial: u64,
    /// The name asked (a UDP association keeps names apart by it).
    pub name: String,
    pub addrs: io::Result<Vec<SocketAddr>>,
}

/// The relay engine. Start it with [`Relay::start`].
#[derive(Debug)]
pub struct Relay;

/// A running relay: its listening addresses, live counters, and shutdown.
/// Dropping it stops the relay at once (use [`RelayHandle::shutdown`] to
/// drain).
#[derive(Debug)]
pub struct RelayHandle {
    shared: Arc<Shared>,
    wakers: Vec<Arc<mio::Waker>>,
    workers: Vec<JoinHandle<()>>,
    resolvers: Vec<JoinHandle<()>>,
    listeners: Vec<(ListenerKind, SocketAddr)>,
    /// Local role: the remote relays.
    remotes: Option<Arc<remotes::Remotes>>,
}

/// What a local relay knows of one of its remote relays now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteStatus {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Working, on probation after a failure, or failed.
    pub state: RemoteState,
    /// The last PING round trip (remotes that answer PINGs).
    pub rtt: Option<Duration>,
    /// Sessions to it open now.
    pub sessions: u64,
    /// Connections through it now.
    pub connections: u64,
}

/// Threads resolving domain names (getaddrinfo blocks).
const RESOLVER_THREADS: usize = 2;

impl Relay {
    /// Validates `config`, opens every listener, and starts the workers.
    /// Errors name the failing listener or setting.
    pub fn start(config: Config) -> io::Result<RelayHandle> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if config.engine.raise_fd_limit {
            raise_fd_limit();
        }
        let (listening, local_route) = open_listeners(&config)?;
        let (specs, sockets): (Vec<_>, Vec<_>) = listening.into_iter().unzip();
        // One worker reads the UDP listeners, so that each flow stays on
        // one worker's session.
        let mut udp_sockets = Some(open_udp_listeners(&config)?);
        let udp_ports = match &config.local {
            Some(l) => UdpPorts::parse(&l.udp_ports)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            None => UdpPorts::default(),
        };
        let listeners = specs.iter().map(|s| (s.kind, s.addr)).collect();
        let remotes = local_route.as_deref().and_then(|r| match r {
            Route::Upstream { remotes, .. } => Some(Arc::clone(remotes)),
            Route::Direct { .. } => None,
        });
        let workers = match config.engine.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let shared = Arc::new(Shared {
            engine: config.engine.clone(),
            state: AtomicU8::new(RUNNING),
            limits: Limits::new(&config.engine),
            auth_guard: guard::AuthGuard::default(),
            #[cfg(test)]
            panic_next_drive: std::sync::atomic::AtomicBool::new(false),
            counters: (0..workers).map(|_| Counters::default()).collect(),
        });
        let specs: Arc<[ListenerSpec]> = specs.into();

        let (resolve_tx, resolve_rx) = mpsc::channel::<ResolveRequest>();
        let mut polls = Vec::new();
        let mut wakers = Vec::new();
        let mut answer_txs = Vec::new();
        let mut answer_rxs = Vec::new();
        for _ in 0..workers {
            let poll = mio::Poll::new()?;
            wakers.push(Arc::new(mio::Waker::new(poll.registry(), engine::WAKER)?));
            polls.push(poll);
            let (tx, rx) = mpsc::channel::<Resolved>();
            answer_txs.push(tx);
            answer_rxs.push(rx);
        }
        let resolve_rx = Arc::new(Mutex::new(resolve_rx));
        let mut resolvers = Vec::new();
        for i in 0..RESOLVER_THREADS {
            let rx = Arc::clone(&resolve_rx);
            let txs = answer_txs.clone();
            let wakers = wakers.clone();
            resolvers.push(
                std::thread::Builder::new()
                    .name(format!("relay-dns-{i}"))
                    .spawn(move || resolver(&rx, &txs, &wakers))?,
            );
        }
        drop(answer_txs);

        let mut handles = Vec::new();
        for (idx, (poll, answers)) in polls.into_iter().zip(answer_rxs).enumerate() {
            let worker = engine::Worker::new(
                idx,
                poll,
                Arc::clone(&shared),
                Arc::clone(&specs),
                engine::Listening {
                    tcp: &sockets,
                    udp: udp_sockets.take().unwrap_or_default(),
                    udp_ports: udp_ports.clone(),
                    local_route: local_route.clone(),
                },
                resolve_tx.clone(),
                answers,
            )?;
            let handle = std::thread::Builder::new()
                .name(format!("relay-{idx}"))
                .spawn(move || worker.run())?;
            handles.push(handle);
        }
        // Only the workers' descriptors stay open, so that the listening
        // sockets close when the workers drop them at shutdown.
        drop(sockets);
        tracing::info!(?listeners, workers, "relay started");
        if let Some(r) = &config.remote {
            warn_if_passwords_in_clear(r);
        }
        Ok(RelayHandle {
            shared,
            wakers,
            workers: handles,
            resolvers,
            listeners,
            remotes,
        })
    }
}

impl RelayHandle {
    /// The listening addresses (with the actual port when 0 was asked).
    pub fn listeners(&self) -> &[(ListenerKind, SocketAddr)] {
        &self.listeners
    }

    /// The first listening address of a kind.
    pub fn listener(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| *a)
    }

    /// A snapshot of the live counters.
    pub fn stats(&self) -> Stats {
        Counters::sum(&self.shared.counters)
    }

    /// Local role: each remote relay's state, in priority order (empty for
    /// a remote role).
    pub fn remotes(&self) -> Vec<RemoteStatus> {
        let now = crate::sys::process::monotonic_micros();
        self.remotes
            .iter()
            .flat_map(|r| &r.list)
            .map(|r| RemoteStatus {
                addr: r.addr,
                state: r.health.state(now),
                rtt: r.health.rtt(),
                sessions: r.sessions.load(Ordering::Relaxed),
                connections: r.connections.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Local role: what new connections do when no remote works.
    pub fn fallback(&self) -> Option<NoRemote> {
        self.remotes.as_ref().map(|r| r.fallback)
    }

    /// Stops accepting, lets open connections finish for up to
    /// `drain_timeout`, then closes what is left. Returns the final counters.
    pub fn shutdown(mut self, drain_timeout: Duration) -> Stats {
        self.shared.state.store(DRAINING, Ordering::SeqCst);
        self.wake_all();
        let deadline = Instant::now() + drain_timeout;
        while Instant::now() < deadline && !self.workers.iter().all(|w| w.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
        self.stats()
    }

    fn wake_all(&self) {
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    fn stop(&mut self) {
        self.shared.state.store(STOPPING, Ordering::SeqCst);
        self.wake_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        // With the workers gone their request senders are dropped, so the
        // resolvers end (after a lookup in progress, if any).
        for r in self.resolvers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The local role's UDP listeners: TPROXY, and the DNS forwarder.
fn open_udp_listeners(config: &Config) -> io::Result<Vec<engine::LanListener>> {
    let Some(l) = &config.local else {
        return Ok(Vec::new());
    };
    let mut opened = Vec::new();
    for &addr in &l.tproxy_udp {
        opened.push(engine::LanListener {
            socket: listeners::listen_udp_tproxy(addr)?,
            forward_to: None,
        });
    }
    if let (Some(addr), Some(resolver)) = (l.dns, l.dns_upstream) {
        opened.push(engine::LanListener {
            socket: listeners::listen_udp_forwarder(addr)?,
            forward_to: Some((resolver, ClientAllowlist::or_private(&l.allowed_clients))),
        });
    }
    Ok(opened)
}

/// The TCP listeners with their specs, and the local role's route (which
/// the UDP listeners share with them).
type Listening = (
    Vec<(ListenerSpec, std::net::TcpListener)>,
    Option<Arc<Route>>,
);

fn open_listeners(config: &Config) -> io::Result<Listening> {
    let mut local_route = None;
    let mut specs = Vec::new();
    let mut add = |kind,
                   addr: SocketAddr,
                   mptcp,
                   route: &Arc<Route>,
                   clients: &ClientAllowlist,
                   auth,
                   forward_to| {
        let socket = listeners::listen(
            addr,
            mptcp,
            kind == ListenerKind::Tproxy,
            config.engine.reuse_port,
        )?;
        let addr = socket.local_addr()?;
        let spec = ListenerSpec {
            kind,
            addr,
            route: Arc::clone(route),
            clients: clients.clone(),
            require_auth: auth,
            forward_to,
        };
        specs.push((spec, socket));
        io::Result::Ok(())
    };
    if let Some(l) = &config.local {
        let remotes = local_remotes(l)?;
        let route = Arc::new(Route::Upstream {
            sealed: remotes.list.iter().any(|r| r.keys.is_some()),
            remotes: Arc::new(remotes),
            mptcp: l.mptcp,
            multiplex: l.multiplex,
            max_sessions: l.max_sessions,
            spare_idle: Duration::from_secs(l.spare_session_idle_secs),
            links_file: l.links_file.clone(),
        });
        local_route = Some(Arc::clone(&route));
        // Transparent listeners take what the firewall sends them; the
        // proxy listeners serve private addresses unless told otherwise.
        let transparent = ClientAllowlist(l.allowed_clients.clone());
        let proxy = ClientAllowlist::or_private(&l.allowed_clients);
        for (kind, addrs, clients) in [
            (ListenerKind::Redirect, &l.redirect, &transparent),
            (ListenerKind::Tproxy, &l.tproxy, &transparent),
            (ListenerKind::LocalSocks5, &l.socks5, &proxy),
            (ListenerKind::Http, &l.http, &proxy),
        ] {
            for a in addrs {
                add(kind, *a, false, &route, clients, false, None)?;
            }
        }
        // The DNS forwarder answers on TCP too (long answers, DNSSEC,
        // zone transfers), on the address of its UDP side.
        if let (Some(addr), Some(resolver)) = (l.dns, l.dns_upstream) {
            add(
                ListenerKind::DnsForwarder,
                addr,
                false,
                &route,
                &proxy,
                false,
                Some(resolver),
            )?;
        }
    }
    if let Some(r) = &config.remote {
        let policy =
            DestinationPolicy::new(r.allow_destinations.clone(), r.deny_destinations.clone());
        let route = Arc::new(Route::Direct {
            mptcp: r.onward_mptcp,
            policy,
            users: r.users.clone(),
            multiplex: r.multiplex,
            keys: accept_keys(r)?,
            udp_associate: r.udp_associate,
        });
        let clients = ClientAllowlist(r.allowed_clients.clone());
        for a in &r.listen {
            let auth = !r.serves_unauthenticated(a);
            add(
                ListenerKind::RemoteSocks5,
                *a,
                r.mptcp,
                &route,
                &clients,
                auth,
                None,
            )?;
        }
    }
    Ok((specs, local_route))
}

/// A remote relay that takes passwords in plain SOCKS5 on a listener that
/// faces more than loopback or a private network: anyone on the path reads
/// them (and the payload).
fn warn_if_passwords_in_clear(r: &RemoteConfig) {
    let private = ClientAllowlist::or_private(&[]);
    let exposed = r
        .listen
        .iter()
        .find(|a| a.ip().is_unspecified() || !private.allows(policy::canonical(a.ip())));
    if let Some(addr) = exposed
        && !r.users.is_empty()
        && r.serves_plain()
    {
        tracing::warn!(
            "relay: {addr} takes SOCKS5 passwords in clear from beyond the LAN; give the relay \
             a key (`mptcp relay keygen`, --key-file) so that local relays encrypt, and serve \
             plain clients only where you need them (--plain)"
        );
    }
}

/// A key of a validated configuration.
fn key<K: std::str::FromStr>(text: &str) -> io::Result<K> {
    text.parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a key that does not parse"))
}

/// The remotes of a validated local role: `remote`, then `remotes`, each
/// with its credentials and pinned key (or the role's).
fn local_remotes(l: &LocalConfig) -> io::Result<remotes::Remotes> {
    let first = config::RemoteEntry {
        address: l.remote.clone(),
        username: None,
        password: None,
        remote_key: None,
        weight: l.weight,
        anonymous: false,
    };
    let list = std::iter::once(&first)
        .chain(&l.remotes)
        .map(|r| {
            let addr = r
                .address
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "local.remote: cannot resolve `{}` (expected host:port)",
                            r.address
                        ),
                    )
                })?;
            let username = r.username.as_ref().or(l.username.as_ref());
            let password = r.password.as_ref().or(l.password.as_ref());
            let keys = match (&l.key, r.remote_key.as_ref().or(l.remote_key.as_ref())) {
                (Some(own), Some(remote)) => Some(Arc::new(seal::DialKeys {
                    own: key(own)?,
                    remote: key(remote)?,
                })),
                _ => None,
            };
            let credentials = username.cloned().zip(password.cloned());
            Ok(remotes::Remote {
                addr,
                credentials: credentials.filter(|_| !r.anonymous),
                keys,
                weight: r.weight,
                health: remotes::Health::default(),
                sessions: std::sync::atomic::AtomicU64::new(0),
                connections: std::sync::atomic::AtomicU64::new(0),
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(remotes::Remotes::new(
        list,
        l.policy,
        Duration::from_secs(l.remote_hold_secs),
        l.fallback,
    ))
}

fn accept_keys(r: &RemoteConfig) -> io::Result<Option<Arc<seal::AcceptKeys>>> {
    let Some(own) = &r.key else { return Ok(None) };
    let peers = r
        .peer_keys
        .iter()
        .map(|k| key(k))
        .collect::<io::Result<_>>()?;
    Ok(Some(Arc::new(seal::AcceptKeys {
        own: key(own)?,
        peers,
        plain: r.serves_plain(),
    })))
}

fn resolver(
    requests: &Mutex<mpsc::Receiver<ResolveRequest>>,
    answers: &[mpsc::Sender<Resolved>],
    wakers: &[Arc<mio::Waker>],
) {
    loop {
        let req = match requests.lock() {
            Ok(rx) => match rx.recv() {
                Ok(r) => r,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let addrs = (req.name.as_str(), req.port)
            .to_socket_addrs()
            .map(Iterator::collect);
        let answer = Resolved {
            conn: req.conn,
            serial: req.serial,
            name: req.name,
            addrs,
        };
        if answers[req.worker].send(answer).is_ok() {
            let _ = wakers[req.worker].wake();
        }
    }
}

/// Raises the soft limit on open files as far as allowed: relaying needs 2
/// descriptors per connection plus pipes in flight.
fn raise_fd_limit() {
    // With CAP_SYS_RESOURCE the hard limit may rise too (up to fs.nr_open).
    if let Some(limit) = crate::sys::fd::raise_open_files_limit(|hard| [hard.max(1 << 20), hard]) {
        tracing::debug!(limit, "raised RLIMIT_NOFILE");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socks5::{self, ClientHandshake, Progress, Request, TargetAddr};
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};

    /// An echo server on loopback.
    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = std::io::copy(&mut r, &mut &s);
                    let _ = s.shutdown(Shutdown::Write);
                });
            }
        });
        addr
    }

    /// A SOCKS5 CONNECT through `proxy` to `dest`.
    fn connect_via(proxy: SocketAddr, dest: SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut hello = Vec::new();
        let request = Request::connect(TargetAddr::Ip(dest));
        socks5::encode_client_hello_auth_request(None, &request, &mut hello).unwrap();
        s.write_all(&hello).unwrap();
        let (mut answers, mut buf) = (ClientHandshake::new(false), Vec::new());
        loop {
            let mut chunk = [0u8; 64];
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "the relay closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Progress::Done(..) = answers.advance(&buf).unwrap() {
                return s;
            }
        }
    }

    fn round_trip(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }

    #[test]
    fn a_worker_panic_closes_its_connections_and_the_relay_goes_on() {
        let listen = "127.0.0.1:0".parse().unwrap();
        let remote = RemoteConfig::new(listen)
            .allow_unauthenticated_loopback(true)
            .allow_destination("127.0.0.1".parse().unwrap());
        let engine = EngineConfig {
            workers: 1,
            ..EngineConfig::default()
        };
        let relay = Relay::start(Config::new().engine(engine).remote(remote)).unwrap();
        let proxy = relay.listener(ListenerKind::RemoteSocks5).unwrap();
        let echo = echo_server();
        let mut before = connect_via(proxy, echo);
        round_trip(&mut before, b"before");
        // The next connection the worker drives panics: the one below, or
        // `before` if its bytes come first.
        relay.shared.panic_next_drive.store(true, Ordering::SeqCst);
        let mut hit = TcpStream::connect(proxy).unwrap();
        hit.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = hit.write_all(&[5, 1, 0]);
        let _ = before.write_all(b"x");
        // Both are closed, not left hanging.
        for s in [&mut before, &mut hit] {
            let mut rest = Vec::new();
            let started = Instant::now();
            let _ = s.read_to_end(&mut rest);
            assert!(started.elapsed() < Duration::from_secs(4), "closed at once");
        }
        // The worker serves new connections, and the budgets got every slot
        // back.
        let mut after = connect_via(proxy, echo);
        round_trip(&mut after, b"after");
        drop(after);
        let deadline = Instant::now() + Duration::from_secs(5);
        while relay.stats().active > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let stats = relay.stats();
        assert_eq!((stats.worker_panics, stats.active), (1, 0), "{stats}");
        assert_eq!(relay.shared.limits.in_use(), 0, "no slot leaked: {stats}");
    }
}
