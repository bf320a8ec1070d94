//! The sessions of one worker ([`Sessions`]): a slab of [`Session`]s,
//! which to give a new stream, opening them (local role) and accepting
//! them (remote role), and the lists of sessions to flush and to read again.
//!
//! Each worker of the local relay keeps a session to the remote relay (more
//! while the others carry bulk transfers) and carries each connection as a
//! stream of one; the remote relay turns a SOCKS5 MULTIPLEX request into a
//! session. With encryption and multiplexing off, every connection gets a
//! session of its own ("dedicated"): its own MPTCP connection and its own
//! handshake, closed when its one stream ends. A session that cannot be set up (the remote does not multiplex,
//! refuses us, or cannot be reached) sends its waiting connections the
//! usual way, one SOCKS5 CONNECT each, and the next attempt waits: a second
//! after the first failure, doubling up to a minute, and an hour after
//! "command not supported" (dante).
//!
//! What a session's frames do to the connections of its streams is the
//! worker's ([`super::session_events`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry};

use super::session_token;
use super::slab::Slab;
use crate::mux::{self, Control, Settings, StreamState};
use crate::relay::remotes::Remotes;
use crate::relay::seal::{Channel, DialKeys, Initiator};
use crate::relay::session::{self, PathRoundTrip, Role, Session};
use crate::relay::splice::PipePool;
use crate::relay::stats::Counters;
use crate::relay::stream::Stream;
use crate::relay::{EngineConfig, Route, Shared, config, outbound};
use crate::socks5::{self, ClientHandshake, Command, ReplyCode, Request, TargetAddr};

/// A new stream's flow control: the peer takes `peer_window` bytes before
/// a WINDOW frame; ours starts at `stream_window` and BLOCKED frames may
/// grow it up to `stream_window_max`.
pub(super) fn stream_state(engine: &EngineConfig, peer_window: u32) -> StreamState {
    StreamState::new(peer_window, engine.stream_window).growing_to(engine.stream_window_limit())
}

/// The wait before the next session after the first failed one; it
/// doubles with each failure in a row, up to [`RETRY_AT_MOST`].
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
const RETRY_AT_MOST: Duration = Duration::from_secs(8);
/// The wait after a remote that answered "command not supported".
pub(super) const RETRY_AFTER_REFUSAL: Duration = Duration::from_secs(3600);
/// The wait after a remote that took the password and then closed on the
/// session request without an answer (dante does so on a command it does
/// not know); shorter, since a relay killed at that moment looks the same.
pub(super) const RETRY_AFTER_CLOSE: Duration = Duration::from_secs(60);
/// Room for a session's SOCKS5 handshake (either direction).
pub(super) const SESSION_HANDSHAKE_BYTES: usize = 1024;
/// A session counts as busy this long after its last bulk frame.
const BUSY_HOLD: Duration = Duration::from_millis(200);
/// A session that sends bulk frames again after this long starts bbr over
/// where it forgot its rate ([`outbound::restart_bbr_if_it_forgot`]): ten
/// round trips of small frames (1.5 s at the 150 ms where `auto` runs bbr)
/// can have replaced the rate it learnt.
const BBR_RESTART_QUIET: Duration = Duration::from_secs(2);
/// How often a worker compares its sessions' subflows with the usable links.
const LINK_CHECK: Duration = Duration::from_secs(1);
/// How long a session may have fewer subflows than usable links (the path
/// manager's time to add them) before it is replaced.
const SHORT_GRACE: Duration = Duration::from_secs(4);
/// Why a session that did not open in time is closed.
pub(super) const HANDSHAKE_LATE: &str = "handshake timed out";
/// How often a client session PINGs a remote that answers them.
const PING_INTERVAL: Duration = Duration::from_millis(500);
/// How often `congestion_control = "auto"` looks at the sessions' round
/// trips (a subflow that joins shows its own within a few).
const CONGESTION_CHECK: Duration = Duration::from_secs(1);
/// How often a session that this relay sends bulk frames on has its send
/// buffer fitted to its subflows' rates and round trips: often enough to
/// follow bbr's startup on a long link, which doubles the rate each round
/// trip. Fitted once a second instead, the 75 ms subflow of 20:5ms +
/// 20:75ms was short of data during its startup, and bbr then paced it at
/// 15.7 Mbit/s of 19 for the 6 s of the transfer.
const SEND_BUFFER_CHECK: Duration = Duration::from_millis(100);
/// How old a session must be before `congestion_control = "auto"` takes
/// it off bbr.
const CONGESTION_SETTLE: Duration = Duration::from_secs(3);
/// A PING unanswered this long makes its remote suspect: new connections
/// go to other remotes while they can.
const PING_SUSPECT: Duration = Duration::from_secs(1);
/// A session silent this long with a PING out: the remote relay is gone
/// (the session closes, and the remote takes no new connections for a
/// while), unless its host still sends on one of the session's subflows.
/// A remote that dies with its host up resets its sessions, which tells
/// at once.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// A session silent this long with a PING out closes even though its
/// peer's host still answers on a subflow (a relay process that hangs).
/// Longer than MPTCP takes to move a session's bytes off a link that went
/// silent or down (retransmission timeouts mark the subflow stale, then
/// its bytes are sent again on the others), so that a lost link is not
/// taken for a lost remote.
const PING_GIVE_UP: Duration = Duration::from_secs(15);

/// The local role's sessions to one remote relay: how to open one and when
/// the next may be tried.
#[derive(Debug)]
struct Dialer {
    addr: SocketAddr,
    credentials: Option<(String, String)>,
    mptcp: bool,
    /// Sessions at most: one, and more while the others are busy with bulk
    /// transfers, so that a new connection's first bytes do not wait behind
    /// a download in the subflows' send queues.
    max_sessions: usize,
    /// A session beyond the first with no frame and no stream for this
    /// long is closed.
    spare_idle: Duration,
    /// Encrypt the sessions, with these keys.
    keys: Option<Arc<DialKeys>>,
    /// One session per connection, closed with its stream (encrypted
    /// without multiplexing).
    dedicated: bool,
    /// The paths daemon's state of the links, if any.
    links_file: Option<std::path::PathBuf>,
    /// When the sessions' subflows are next compared with the links.
    next_link_check: Instant,
    /// This worker's sessions to the remote (keys), newest last.
    open: Vec<usize>,
    /// No new session before this.
    retry_at: Option<Instant>,
    /// Sessions in a row that failed before they opened.
    failures: u32,
    /// It refused sessions (dante): none until `retry_at`, and none kept
    /// open to watch it.
    refused: bool,
}

impl Dialer {
    /// A dialer for each remote of the first route that goes to remote
    /// relays in sessions: with multiplexing on, or encrypted (a local
    /// role has one such route), and those remotes.
    fn for_routes<'a>(
        mut routes: impl Iterator<Item = &'a Route>,
    ) -> (Vec<Dialer>, Option<Arc<Remotes>>) {
        let found = routes.find_map(|r| match r {
            Route::Upstream {
                remotes,
                mptcp,
                multiplex,
                max_sessions,
                spare_idle,
                sealed,
                links_file,
            } if *multiplex || *sealed => {
                let dialers = remotes
                    .list
                    .iter()
                    .map(|remote| Dialer {
                        addr: remote.addr,
                        credentials: remote.credentials.clone(),
                        mptcp: *mptcp,
                        max_sessions: *max_sessions,
                        spare_idle: *spare_idle,
                        keys: remote.keys.clone(),
                        dedicated: !*multiplex,
                        links_file: links_file.clone(),
                        next_link_check: Instant::now(),
                        open: Vec::new(),
                        retry_at: None,
                        failures: 0,
                        refused: false,
                    })
                    .collect();
                Some((dialers, Arc::clone(remotes)))
            }
            _ => None,
        });
        match found {
            Some((dialers, remotes)) => (dialers, Some(remotes)),
            None => (Vec::new(), None),
        }
    }

    /// A session failed before it opened: the next waits longer (at least
    /// `at_least`).
    fn failed(&mut self, now: Instant, at_least: Duration) {
        let backoff = RETRY_AFTER_FAILURE
            .saturating_mul(1 << self.failures.min(16))
            .min(RETRY_AT_MOST);
        self.failures += 1;
        let at = now + backoff.max(at_least);
        self.retry_at = Some(self.retry_at.map_or(at, |t| t.max(at)));
    }
}

/// Where a new stream goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Placement {
    /// On this open session, at once.
    Open(usize),
    /// On this session once its handshake is done.
    Wait(usize),
}

/// One worker's sessions.
pub(super) struct Sessions {
    /// By key; session `s` has token `SESSION_BASE + s`.
    pub(super) slab: Slab<Session>,
    /// Local role with sessions: the sessions of each remote relay.
    dialers: Vec<Dialer>,
    /// Local role: the remote relays' health.
    remotes: Option<Arc<Remotes>>,
    /// Sessions with frames queued this round.
    pub(super) flush_list: Vec<usize>,
    /// Sessions whose read stopped for the turn's budget.
    pub(super) requeue: Vec<usize>,
    registry: Registry,
    shared: Arc<Shared>,
    worker: usize,
    /// The relay is draining: sessions accepted now go away at once.
    draining: bool,
    /// By listener: whether it serves UDP (its sessions take datagrams).
    udp_listeners: Vec<bool>,
    /// Under `congestion_control = "auto"`: what sessions on short round
    /// trips run, and when the sessions' round trips are next looked at.
    /// `None` when the sessions keep what they open with.
    congestion: Option<(ShortRoundTripControl, Instant)>,
}

impl Sessions {
    pub(super) fn new<'a>(
        registry: Registry,
        shared: Arc<Shared>,
        worker: usize,
        routes: impl Iterator<Item = &'a Route>,
    ) -> Sessions {
        let routes: Vec<&Route> = routes.collect();
        let udp_listeners = routes
            .iter()
            .map(|r| {
                matches!(
                    r,
                    Route::Direct {
                        udp_associate: true,
                        ..
                    }
                )
            })
            .collect();
        let (dialers, remotes) = Dialer::for_routes(routes.into_iter());
        let congestion = shared
            .engine
            .adapts_congestion_control()
            .then(|| (ShortRoundTripControl::of_host(), Instant::now()));
        Sessions {
            slab: Slab::new(),
            dialers,
            remotes,
            flush_list: Vec::new(),
            requeue: Vec::new(),
            registry,
            shared,
            worker,
            draining: false,
            udp_listeners,
            congestion,
        }
    }

    /// Remote role: whether listener `spec` serves UDP (SOCKS5 UDP
    /// ASSOCIATE, and datagrams in its sessions).
    pub(super) fn serves_udp(&self, spec: usize) -> bool {
        self.udp_listeners.get(spec).copied().unwrap_or(false)
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters[self.worker]
    }

    /// Whether connections go to the remote relays as streams.
    pub(super) fn multiplexing(&self) -> bool {
        !self.dialers.is_empty()
    }

    /// Local role: the remote relay a new UDP flow goes to (the route's
    /// choice, as for a connection).
    pub(super) fn pick_remote(&self) -> Option<usize> {
        self.remotes.as_ref()?.pick(0)
    }

    /// Where a connection to `remote` goes for itself, one SOCKS5 CONNECT,
    /// when no session takes it: `None` when the sessions are encrypted,
    /// since that connection would not be.
    pub(super) fn fallback(&self, remote: usize) -> Option<SocketAddr> {
        self.dialers
            .get(remote)
            .filter(|d| d.keys.is_none())
            .map(|d| d.addr)
    }

    /// The remote relay of a client session.
    fn remote_of(session: &Session) -> Option<usize> {
        match session.role {
            Role::Client { remote, .. } => Some(remote),
            Role::Server { .. } => None,
        }
    }

    /// The window this relay announces for every stream.
    pub(super) fn window(&self) -> u32 {
        self.shared.engine.stream_window
    }

    pub(super) fn get(&self, s: usize) -> Option<&Session> {
        self.slab.get(s)
    }

    pub(super) fn get_mut(&mut self, s: usize) -> Option<&mut Session> {
        self.slab.get_mut(s)
    }

    /// Sessions that have nothing queued to write and no flush pending.
    pub(super) fn is_quiet(&self) -> bool {
        self.requeue.is_empty() && self.flush_list.is_empty()
    }

    /// After a worker's panic: every session dropped (their sockets close).
    pub(super) fn clear(&mut self) {
        self.slab = Slab::new();
        for d in &mut self.dialers {
            d.open.clear();
        }
        self.flush_list.clear();
        self.requeue.clear();
    }

    /// Local role: where a new stream to `remote` goes, if a session can
    /// take it (None: connect to the remote for this connection alone).
    ///
    /// An open session that is not busy with a bulk transfer comes first;
    /// then one being set up; then a new one (up to `max_sessions`); then
    /// the busy session whose bulk transfer is oldest, one that cannot take
    /// what its connections have to send last. A dedicated
    /// session is always new.
    pub(super) fn place(&mut self, remote: usize, now: Instant) -> Option<Placement> {
        let dialer = self.dialers.get(remote)?;
        if dialer.dedicated {
            return self.dial(remote, now).map(Placement::Wait);
        }
        let listed = || {
            dialer
                .open
                .iter()
                .filter_map(|&s| Some((s, self.slab.get(s)?)))
        };
        let open = || listed().filter(|(_, x)| x.accepts_streams());
        let idle = open().find(|(_, x)| !x.is_busy(now)).map(|(s, _)| s);
        let starting = listed().find(|(_, x)| x.is_starting()).map(|(s, _)| s);
        let least_busy = open()
            .min_by_key(|(_, x)| (!x.blocked.is_empty(), x.busy_until))
            .map(|(s, _)| s);
        let room = dialer.open.len() < dialer.max_sessions;
        if let Some(s) = idle {
            return Some(Placement::Open(s));
        }
        if let Some(s) = starting.or_else(|| room.then(|| self.dial(remote, now)).flatten()) {
            return Some(Placement::Wait(s));
        }
        least_busy.map(Placement::Open)
    }

    /// Parks connection `key` (`serial`) until session `s` is set up.
    pub(super) fn wait_for(&mut self, s: usize, key: usize, serial: u64) {
        if let Some(Role::Client { waiting, .. }) = self.slab.get_mut(s).map(|x| &mut x.role) {
            waiting.push((key, serial));
        }
    }

    /// Local role: a new stream of open session `s` for connection `key`:
    /// OPEN (with the destination) is queued, and `early` may follow at
    /// once.
    pub(super) fn open_stream(
        &mut self,
        s: usize,
        key: usize,
        dest: TargetAddr,
        early: Vec<u8>,
        now: Instant,
    ) -> Option<Stream> {
        let session = self.slab.get_mut(s)?;
        let state = stream_state(&self.shared.engine, session.state.peer_window());
        let id = session.state.open_stream()?;
        session.tx.control(id, &Control::Open(dest));
        session.streams.insert(id, key);
        if self.dialers.first().is_some_and(|d| d.dedicated) {
            // Its one stream: the session closes when that ends.
            session.state.retire();
        }
        let stream = Stream::new(s, id, state, early);
        Counters::add(&self.counters().multiplexed, 1);
        self.mark_dirty(s, now);
        Some(stream)
    }

    /// Connects a new session to remote relay `remote` and queues its
    /// whole handshake: greeting, authentication, MULTIPLEX request,
    /// SETTINGS.
    fn dial(&mut self, remote: usize, now: Instant) -> Option<usize> {
        let window = self.window();
        let deadline = now + self.shared.engine.handshake_timeout();
        let remotes = self.remotes.clone();
        let dialer = self.dialers.get_mut(remote)?;
        if dialer.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        let socket = match outbound::connect(dialer.addr, dialer.mptcp) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(remote = %dialer.addr, error = %e, "relay: cannot open a session");
                dialer.failed(now, Duration::ZERO);
                if let Some(r) = &remotes {
                    r.failed(remote, &format!("cannot open a session: {e}"));
                }
                return None;
            }
        };
        outbound::prepare_session_socket(&socket, &self.shared.engine);
        // An accepted session has it from its listener's admission.
        outbound::set_congestion_control(&socket, &self.shared.engine);
        let creds = dialer
            .credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()));
        let mut hello = Vec::with_capacity(SESSION_HANDSHAKE_BYTES);
        let request = Request {
            command: Command::Multiplex,
            dest: TargetAddr::Ip(version_address()),
        };
        if let Err(e) = socks5::encode_client_hello_auth_request(creds, &request, &mut hello) {
            // Credentials are validated with the configuration.
            tracing::error!(error = %e, "relay: cannot encode the session request");
            return None;
        }
        Control::Settings(Settings {
            initial_window: window,
            pings: true,
            datagrams: true,
        })
        .encode(0, &mut hello)
        .ok()?;
        let answers = ClientHandshake::new(creds.is_some());
        // Encrypted: the SOCKS5 request waits for the channel; the first
        // handshake message goes first.
        let (first, phase) = match &dialer.keys {
            None => (
                hello,
                session::Phase::Handshake {
                    answers,
                    buf: Vec::new(),
                },
            ),
            Some(keys) => match Initiator::start(&keys.own, &keys.remote) {
                Ok((initiator, message)) => (
                    message,
                    session::Phase::Sealing {
                        initiator: Box::new(initiator),
                        hello,
                        answers,
                        buf: Vec::new(),
                    },
                ),
                Err(e) => {
                    tracing::error!(error = %e, "relay: cannot start the encryption handshake");
                    return None;
                }
            },
        };
        let role = Role::Client {
            waiting: Vec::new(),
            remote,
        };
        let peer = dialer.addr.ip();
        let mut session = Session::new(socket, role, phase, peer, deadline);
        session.tx.raw(&first);
        let s = self.register(session, now)?;
        if let Some(d) = self.dialers.get_mut(remote) {
            d.open.push(s);
        }
        if let Some(r) = self.remotes.as_ref().and_then(|r| r.list.get(remote)) {
            r.sessions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::debug!(remote = %peer, "relay: opening a session");
        Some(s)
    }

    /// Remote role: the SOCKS5 client `socket` (of listener `spec`) asked
    /// for a session: the success reply and our SETTINGS go out (taking
    /// DATAGRAM frames if the listener serves UDP), and
    /// `leftover` (frames that came with the request) is read first.
    pub(super) fn accept(
        &mut self,
        mut socket: TcpStream,
        spec: usize,
        peer: IpAddr,
        leftover: &[u8],
        channel: Option<Channel>,
        now: Instant,
    ) -> Option<usize> {
        if let Err(e) = self.registry.deregister(&mut socket) {
            tracing::warn!(error = %e, "relay: cannot move a connection to a session");
            return None;
        }
        outbound::prepare_session_socket(&socket, &self.shared.engine);
        let role = Role::Server { spec };
        let deadline = now + self.shared.engine.handshake_timeout();
        let mut session = Session::new(socket, role, session::Phase::Frames, peer, deadline);
        if let Some(channel) = channel {
            session.tx.seal_with(channel.sealer);
            session.rx.seal_with(channel.opener);
        }
        let mut answer = Vec::new();
        socks5::encode_reply(ReplyCode::Succeeded, Some(version_address()), &mut answer);
        session.tx.raw(&answer);
        let settings = Control::Settings(Settings {
            initial_window: self.window(),
            pings: true,
            datagrams: self.serves_udp(spec),
        });
        session.tx.control(0, &settings);
        session.rx.preload(leftover);
        if self.draining
            && let Some(goaway) = session.state.go_away()
        {
            session.tx.control(0, &goaway);
        }
        let s = self.register(session, now)?;
        tracing::debug!(client = %peer, "relay: session opened");
        Some(s)
    }

    /// Puts a session in the slab and in epoll; counts it.
    fn register(&mut self, session: Session, now: Instant) -> Option<usize> {
        let s = self.slab.insert(session);
        let socket = &mut self.slab.get_mut(s)?.socket;
        let r = self.registry.register(
            socket,
            session_token(s),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(e) = r {
            tracing::warn!(error = %e, "relay: cannot register a session");
            self.slab.remove(s);
            return None;
        }
        Counters::add(&self.counters().sessions_opened, 1);
        self.mark_dirty(s, now);
        Some(s)
    }

    /// Takes session `s` out for good: counted, and forgotten by the
    /// dialer (a session that never opened makes the next attempt wait,
    /// and counts against its remote, as does one that `failed`).
    pub(super) fn remove(
        &mut self,
        s: usize,
        failed: Option<&str>,
        now: Instant,
    ) -> Option<Session> {
        let session = self.slab.remove(s)?;
        Counters::add(&self.counters().sessions_closed, 1);
        let Some(remote) = Sessions::remote_of(&session) else {
            return Some(session);
        };
        let Some(d) = self.dialers.get_mut(remote) else {
            return Some(session);
        };
        d.open.retain(|&k| k != s);
        let refused = d.refused;
        if let Some(r) = self.remotes.as_ref().and_then(|r| r.list.get(remote)) {
            r.sessions
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        if session.is_starting() {
            d.failed(now, Duration::ZERO);
        }
        // A remote that refused sessions still serves connections.
        let why = failed.or(session.is_starting().then_some("the session did not open"));
        if let (Some(why), Some(remotes), false) = (why, &self.remotes, refused) {
            remotes.failed(remote, why);
        }
        Some(session)
    }

    /// A client session's SETTINGS arrived: its remote works again.
    pub(super) fn opened(&mut self, s: usize) {
        let Some(remote) = self.slab.get(s).and_then(Sessions::remote_of) else {
            return;
        };
        if let Some(d) = self.dialers.get_mut(remote) {
            d.failures = 0;
            d.retry_at = None;
            d.refused = false;
        }
        if let Some(remotes) = &self.remotes {
            remotes.succeeded(remote, None);
        }
    }

    /// The remote relay of session `s` refused it ("command not
    /// supported", or a close): no new one for `retry_after` (it still
    /// serves CONNECT).
    pub(super) fn refused(&mut self, s: usize, retry_after: Duration, now: Instant) {
        let Some(remote) = self.slab.get(s).and_then(Sessions::remote_of) else {
            return;
        };
        if let Some(d) = self.dialers.get_mut(remote) {
            d.refused = true;
            d.failed(now, retry_after);
        }
        // It answered: it works, for connections of their own.
        if let Some(remotes) = &self.remotes {
            remotes.succeeded(remote, None);
        }
    }

    /// Under `congestion_control = "auto"`, every [`CONGESTION_CHECK`]:
    /// a session with a subflow of a long round trip
    /// ([`config::LONG_ROUND_TRIP`]) runs bbr on all its subflows, one whose
    /// subflows all have short ones a loss-based algorithm
    /// ([`ShortRoundTripControl`]; the kernel sets an MPTCP socket's
    /// congestion control on each subflow, present and future).
    pub(super) fn adapt_congestion_control(&mut self, now: Instant) {
        let Some((short, check_at)) = &mut self.congestion else {
            return;
        };
        if now < *check_at {
            return;
        }
        *check_at = now + CONGESTION_CHECK;
        // A subflow that opened while its link was loaded has only seen its
        // round trip with the queue in it: each path counts with the least
        // any session of the worker has seen on it (and a subflow that has
        // none of its own, with that).
        let round_trips: Vec<(usize, Vec<PathRoundTrip>)> = self
            .slab
            .iter()
            .map(|(s, session)| (s, session.subflow_round_trips()))
            .collect();
        let mut least: HashMap<(IpAddr, IpAddr), Duration> = HashMap::new();
        for (path, rtt) in round_trips.iter().flat_map(|(_, paths)| paths) {
            if let Some(rtt) = *rtt {
                least
                    .entry(*path)
                    .and_modify(|l| *l = (*l).min(rtt))
                    .or_insert(rtt);
            }
        }
        for (s, paths) in round_trips {
            let known: Vec<Duration> = paths
                .iter()
                .filter_map(|(path, _)| least.get(path).copied())
                .collect();
            let Some(session) = self.slab.get_mut(s).filter(|_| !known.is_empty()) else {
                continue;
            };
            let long = known.iter().any(|&rtt| rtt >= config::LONG_ROUND_TRIP);
            // Leaving bbr waits until every subflow's path is known and the
            // joins have had time to come: a session judged on its first
            // subflow alone would run a loss-based algorithm on a long link
            // that joins a moment later.
            let settled = known.len() == paths.len()
                && now.duration_since(session.opened) >= CONGESTION_SETTLE;
            if long == session.long_round_trip_control || (!long && !settled) {
                continue;
            }
            let socket = socket2::SockRef::from(&session.socket);
            let takes = |name: &&str| socket.set_tcp_congestion(name.as_bytes()).is_ok();
            // For short round trips the first the kernel takes; where it
            // refuses, the session keeps what it has (and is not asked again
            // until its round trips change).
            let set = if long {
                Some(config::LONG_ROUND_TRIP_CONGESTION_CONTROL).filter(takes)
            } else {
                short.0.iter().map(String::as_str).find(takes)
            };
            session.long_round_trip_control = long;
            tracing::debug!(
                peer = %session.peer,
                congestion_control = set.unwrap_or("unchanged"),
                long_round_trip = long,
                "relay: a session's congestion control follows its subflows' round trips"
            );
        }
    }

    /// Local role, one worker: every remote relay that multiplexes keeps a
    /// session open (when it can be reached), so that its PINGs tell at
    /// once when it fails and when it works again.
    pub(super) fn watch_remotes(&mut self, now: Instant) {
        for remote in 0..self.dialers.len() {
            let d = &self.dialers[remote];
            let waiting = d.retry_at.is_some_and(|t| now < t);
            if d.open.is_empty() && !d.refused && !d.dedicated && !waiting {
                self.dial(remote, now);
            }
        }
    }

    /// PINGs client sessions whose remote answers them and that heard
    /// nothing from it for [`PING_INTERVAL`], every [`PING_INTERVAL`] at
    /// most; returns the sessions whose PING went unanswered
    /// for [`PING_TIMEOUT`], to be closed (their remote failed).
    pub(super) fn ping(&mut self, now: Instant) -> Vec<usize> {
        let mut silent = Vec::new();
        let mut dirty = Vec::new();
        for (s, x) in self.slab.iter_mut() {
            if !matches!(x.role, Role::Client { .. }) || !x.state.peer_pings() {
                continue;
            }
            // Silent since the PING went out, or since the last frame that
            // came in after it.
            let silence = x
                .ping_sent
                .map(|sent| now.duration_since(sent.max(x.last_heard)));
            if let Some(silence) = silence {
                let peer_host_silent =
                    || x.peer_heard_on_a_subflow().is_none_or(|d| d > PING_TIMEOUT);
                if silence > PING_GIVE_UP || (silence > PING_TIMEOUT && peer_host_silent()) {
                    silent.push(s);
                    continue;
                }
                if silence > PING_SUSPECT
                    && let (Role::Client { remote, .. }, Some(remotes)) = (&x.role, &self.remotes)
                {
                    remotes.suspect(*remote);
                }
            }
            // PINGs go on while one is unanswered: the segments of the later
            // ones, sent on a working subflow, are acknowledged by the
            // peer's host even while the first waits on a stalled link
            // (what `peer_heard_on_a_subflow` looks at). None go to a peer
            // heard from meanwhile: it is alive, and a PING (and its PONG)
            // would hold the fast link's subflow busy for a round trip, in
            // which the kernel's scheduler sends the session's next small
            // frame on an idle subflow, the long link's (a 1-byte echo beside
            // a download on 20 Mbit/s at 5 ms + 20 at 75 ms took the 75 ms
            // link once per PING: its p99 was 139 ms against 20 over the
            // fast link alone).
            if now.duration_since(x.last_ping) >= PING_INTERVAL
                && now.duration_since(x.last_heard) >= PING_INTERVAL
            {
                x.tx.control(0, &Control::Ping(crate::sys::process::monotonic_micros()));
                x.ping_sent.get_or_insert(now);
                x.last_ping = now;
                dirty.push(s);
            }
        }
        for s in dirty {
            self.queue_flush(s);
        }
        silent
    }

    /// A PONG for session `s` (its payload, our clock when sent).
    pub(super) fn pong(&mut self, s: usize, sent_us: u64) {
        let Some(session) = self.slab.get_mut(s) else {
            return;
        };
        session.ping_sent = None;
        let rtt = crate::sys::process::monotonic_micros().saturating_sub(sent_us);
        if let (Some(remote), Some(remotes)) = (Sessions::remote_of(session), &self.remotes) {
            remotes.succeeded(remote, Some(Duration::from_micros(rtt)));
        }
    }

    /// A stream of session `s` grew its window to `window` on the peer's
    /// BLOCKED: queues the WINDOW frame that grants the difference, and
    /// grows the session's receive buffer to hold two such windows (the
    /// stream's bytes cross the session's socket first).
    pub(super) fn grow_window(&mut self, s: usize, id: u32, increment: &Control, window: u32) {
        let initial = outbound::session_receive_buffer(&self.shared.engine);
        let Some(session) = self.slab.get_mut(s) else {
            return;
        };
        session.tx.control(id, increment);
        let wanted = outbound::receive_buffer_for(window);
        if wanted > session.receive_buffer.max(initial) {
            outbound::set_receive_buffer(&session.socket, wanted);
            session.receive_buffer = wanted;
        }
        self.queue_flush(s);
    }

    /// Queues a REPLY for `stream` on its session.
    pub(super) fn reply(
        &mut self,
        stream: &mut Stream,
        code: ReplyCode,
        bound: Option<SocketAddr>,
        now: Instant,
    ) {
        stream.state.on_reply(code);
        let bound = TargetAddr::Ip(bound.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))));
        if let Some(session) = self.slab.get_mut(stream.session) {
            session
                .tx
                .control(stream.id, &Control::Reply { code, bound });
            self.mark_dirty(stream.session, now);
        }
    }

    /// A stream leaves its session: unmapped, and reset unless the peer
    /// knows it is over; its empty pipes go back to `pool`.
    pub(super) fn detach(&mut self, mut stream: Stream, pool: &mut PipePool, now: Instant) {
        if let Some(session) = self.slab.get_mut(stream.session) {
            let key = session.streams.remove(&stream.id);
            if stream.queued {
                session.blocked.retain(|&k| Some(k) != key);
            }
            if let Some(reset) = stream.state.finish() {
                session.tx.control(stream.id, &reset);
            }
            self.mark_dirty(stream.session, now);
        }
        stream.release(pool);
    }

    /// This relay sends a bulk frame on session `s`: if it sent none for
    /// [`BBR_RESTART_QUIET`], bbr may start over on its subflows (what it
    /// received meanwhile does not count: bbr's rate is the sender's, and
    /// a session that just carried an upload to this relay has sent it
    /// only small frames). Then as [`Sessions::mark_busy`].
    pub(super) fn mark_sending_bulk(&mut self, s: usize, now: Instant) {
        if let Some(session) = self.slab.get_mut(s) {
            let quiet = now.saturating_duration_since(session.bulk_sent_at);
            session.bulk_sent_at = now;
            if quiet >= BBR_RESTART_QUIET && outbound::restart_bbr_if_it_forgot(&session.socket) {
                tracing::debug!(
                    peer = %session.peer,
                    quiet_ms = u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX),
                    "relay: a session sends bulk data again: bbr starts over"
                );
            }
            if now >= session.send_buffer_due {
                session.send_buffer_due = now + SEND_BUFFER_CHECK;
                if let Some(bytes) = session.fit_send_buffer() {
                    tracing::debug!(
                        peer = %session.peer,
                        bytes,
                        "relay: a session's send buffer follows its subflows' rates and round trips"
                    );
                }
            }
        }
        self.mark_busy(s, now);
    }

    /// A bulk frame went through session `s`: it is busy for a while. A
    /// local relay that has no other session to give new streams opens one
    /// now, so that it is ready when they come.
    pub(super) fn mark_busy(&mut self, s: usize, now: Instant) {
        let Some(session) = self.slab.get_mut(s) else {
            return;
        };
        let was_busy = session.is_busy(now);
        session.busy_until = now + BUSY_HOLD;
        let Some(remote) = Sessions::remote_of(session) else {
            return;
        };
        let Some(dialer) = self.dialers.get(remote) else {
            return;
        };
        if was_busy || dialer.dedicated {
            return;
        }
        let spare = dialer.open.iter().any(|&k| {
            self.slab
                .get(k)
                .is_some_and(|x| x.is_starting() || (x.accepts_streams() && !x.is_busy(now)))
        });
        if !spare && dialer.open.len() < dialer.max_sessions {
            self.dial(remote, now);
        }
    }

    /// Session `s` has frames to write: flushed at the end of the round.
    pub(super) fn mark_dirty(&mut self, s: usize, now: Instant) {
        if let Some(session) = self.slab.get_mut(s) {
            session.last_active = now;
        }
        self.queue_flush(s);
    }

    /// Session `s` has PING or PONG to write, which do not make it active
    /// (an idle spare still closes).
    pub(super) fn queue_flush(&mut self, s: usize) {
        if let Some(session) = self.slab.get_mut(s)
            && !session.dirty
        {
            session.dirty = true;
            self.flush_list.push(s);
        }
    }

    /// Writes what session `s` has queued. `Err`: writing failed, the
    /// session must close.
    pub(super) fn flush(&mut self, s: usize, pool: &mut PipePool) -> io::Result<()> {
        let Some(session) = self.slab.get_mut(s) else {
            return Ok(());
        };
        session.dirty = false;
        session.tx.flush(session.socket.as_raw_fd(), pool);
        match session.tx.take_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Draining, remote role: tells every session's client to open no more
    /// streams here.
    pub(super) fn go_away(&mut self, now: Instant) {
        self.draining = true;
        for s in self.slab.keys() {
            let Some(session) = self.slab.get_mut(s) else {
                continue;
            };
            if let Some(goaway) = session.state.go_away() {
                session.tx.control(0, &goaway);
                self.mark_dirty(s, now);
            }
        }
    }

    /// Local role: sessions with fewer subflows than the paths daemon has
    /// usable links, for [`SHORT_GRACE`], take no new streams (those they
    /// carry finish on them) and a new session is dialled. Returns the
    /// replaced sessions that carry no stream, to be closed now.
    pub(super) fn replace_short(&mut self, now: Instant) -> Vec<usize> {
        let mut replaced = Vec::new();
        for remote in 0..self.dialers.len() {
            let short = self.short_sessions(remote, now);
            if !short.is_empty() {
                self.dial(remote, now);
                replaced.extend(short);
            }
        }
        replaced
            .into_iter()
            .filter(|&s| self.slab.get(s).is_some_and(|x| x.streams.is_empty()))
            .collect()
    }

    /// [`Sessions::replace_short`] for one remote's sessions: those that
    /// now take no new streams.
    fn short_sessions(&mut self, remote: usize, now: Instant) -> Vec<usize> {
        let Some(dialer) = self.dialers.get_mut(remote).filter(|d| !d.dedicated) else {
            return Vec::new();
        };
        if now < dialer.next_link_check {
            return Vec::new();
        }
        dialer.next_link_check = now + LINK_CHECK;
        let Some(links) = dialer
            .links_file
            .as_deref()
            .and_then(crate::links::fresh_state)
        else {
            return Vec::new();
        };
        let usable = crate::links::usable_links(&links);
        let mut replaced = Vec::new();
        for &s in &dialer.open {
            let Some(session) = self.slab.get_mut(s) else {
                continue;
            };
            // Only sessions that leave through a link the daemon manages
            // (not one on loopback, or in another network namespace).
            let local = session.socket.local_addr().ok().map(|a| a.ip());
            let managed = links.iter().any(|l| l.addr.is_some() && l.addr == local);
            if !session.accepts_streams() || !managed {
                continue;
            }
            let subflows = session.subflows();
            if subflows >= usable {
                session.short_since = None;
                continue;
            }
            let since = *session.short_since.get_or_insert(now);
            if now.duration_since(since) < SHORT_GRACE {
                continue;
            }
            tracing::info!(
                remote = %session.peer,
                subflows,
                usable,
                streams = session.streams.len(),
                "relay: a session to the remote relay misses links; new streams go to a new \
                 session, and its streams finish on it"
            );
            session.state.retire();
            replaced.push(s);
        }
        replaced
    }

    /// Sessions to close now, and why: those whose handshake is late, and
    /// spare sessions (a local worker's beyond its first) that carried no
    /// stream for a while.
    pub(super) fn expired(&self, now: Instant) -> Vec<(usize, &'static str)> {
        let mut open: Vec<usize> = self.dialers.iter().map(|d| d.open.len()).collect();
        let mut expired = Vec::new();
        for (s, x) in self.slab.iter() {
            if x.is_starting() && now > x.deadline {
                expired.push((s, HANDSHAKE_LATE));
                continue;
            }
            let Some(remote) = Sessions::remote_of(x) else {
                continue;
            };
            let (Some(d), Some(left)) = (self.dialers.get(remote), open.get_mut(remote)) else {
                continue;
            };
            if *left > 1
                && x.streams.is_empty()
                && x.tx.is_idle()
                && now.duration_since(x.last_active) > d.spare_idle
            {
                *left -= 1;
                expired.push((s, "a spare session, idle"));
            }
        }
        expired
    }
}

/// The SOCKS5 address that carries the protocol version, `0.0.0.0:1`.
pub(super) fn version_address() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), mux::VERSION)
}

/// What `congestion_control = "auto"` runs on sessions whose round trips
/// are all short, in order of preference: the host's default
/// (`net.ipv4.tcp_congestion_control` in this network namespace) when it is
/// loss-based, else cubic, else reno (which every kernel has and lets
/// every process choose).
struct ShortRoundTripControl(Vec<String>);

impl ShortRoundTripControl {
    fn of_host() -> ShortRoundTripControl {
        let host = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
            .unwrap_or_default();
        ShortRoundTripControl::after(host.trim())
    }

    /// The preferences on a host whose default is `host`.
    fn after(host: &str) -> ShortRoundTripControl {
        let host = host.to_owned();
        let mut names = vec!["cubic".to_owned(), "reno".to_owned()];
        if !host.is_empty() && !host.starts_with("bbr") {
            names.retain(|name| *name != host);
            names.insert(0, host);
        }
        ShortRoundTripControl(names)
    }
}

#[cfg(test)]
mod tests {
    use super::ShortRoundTripControl;

    #[test]
    fn short_round_trips_run_the_hosts_loss_based_default_else_cubic_else_reno() {
        let after = |host: &str| ShortRoundTripControl::after(host).0;
        assert_eq!(after("reno"), ["reno", "cubic"]);
        assert_eq!(after("cubic"), ["cubic", "reno"]);
        assert_eq!(after("dctcp"), ["dctcp", "cubic", "reno"]);
        // A host on bbr (as `mptcp probe` advises) or one that cannot be
        // read: the loss-based algorithms every kernel has.
        assert_eq!(after("bbr"), ["cubic", "reno"]);
        assert_eq!(after("bbr3"), ["cubic", "reno"]);
        assert_eq!(after(""), ["cubic", "reno"]);
    }
}
