//! One worker thread ([`Worker`]): an epoll loop (mio, edge-triggered)
//! over its share of the listeners' connections and its sessions. This
//! file holds the loop, token dispatch, accepting, and the sweep of
//! timeouts; the pieces it drives each have their own:
//!
//! - [`conn`]: one connection and its phases (request, resolve, connect,
//!   upstream handshake, relay or tunnel, closing);
//! - [`sessions`]: the worker's multiplexed sessions (which takes a new
//!   stream, opening and accepting them);
//! - [`session_events`]: what a session's frames and failures do to the
//!   connections of its streams;
//! - [`answer`]: what a client is told on success and on failure;
//! - [`udp`]: a SOCKS5 UDP association (remote role).
//!
//! Every socket is registered once for both readiness kinds. Connections
//! and sessions live in slabs indexed by token, so events allocate nothing.

mod answer;
mod conn;
mod session_events;
mod sessions;
mod slab;
mod udp;

pub(crate) use self::udp::LanListener;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};

use self::answer::{Answer, Failure};
use self::conn::{Admission, Conn, Next, Origin, Parser, Phase};
use self::sessions::Sessions;
use self::slab::Slab;
use super::limits::Slot;
use super::listeners;
use super::splice::PipePool;
use super::stats::{Counters, ErrorKind};
use super::{
    DRAINING, ListenerKind, ListenerSpec, ResolveRequest, Resolved, Route, STOPPING, Shared,
};
use crate::socks5::{ServerHandshake, TargetAddr};

/// Token of the waker (shutdown, DNS answers).
pub(crate) const WAKER: Token = Token(usize::MAX);
/// Listener `i` has token `LISTENER_BASE + i`; session `s` has
/// `SESSION_BASE + s`; connection `k` has tokens `2k` (client) and `2k + 1`
/// (upstream, or a UDP association's client port), and `UDP_BASE + k` (a
/// UDP association's outgoing socket); a flow carried in a session has
/// `udp::CARRIED_BASE + f` (between the sessions' and the listeners'), and
/// a TPROXY UDP listener `udp::LAN_UDP_BASE + i` and a direct LAN flow's
/// socket `udp::LAN_DIRECT_BASE + f` (above those).
const LISTENER_BASE: usize = usize::MAX / 2;
const SESSION_BASE: usize = usize::MAX / 4;
const UDP_BASE: usize = usize::MAX / 8;
/// Reads per direction per wakeup before other connections get a turn.
const READ_BUDGET: usize = 16;
/// How long accepting pauses after EMFILE/ENFILE.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Timeouts are checked this often.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Empty pipes kept per worker.
const POOL_PIPES: usize = 1024;

/// Connection `key`'s tokens: its client socket's and its upstream's.
fn conn_tokens(key: usize) -> (Token, Token) {
    (Token(2 * key), Token(2 * key + 1))
}

/// The token of connection `key`'s UDP association's outgoing socket.
fn udp_token(key: usize) -> Token {
    Token(UDP_BASE + key)
}

/// Session `s`'s token.
fn session_token(s: usize) -> Token {
    Token(SESSION_BASE + s)
}

/// Which of a connection's sockets events named since its last step: a
/// UDP association reads only those (its datagrams cost no read of the
/// others); other phases try all of theirs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Woken(u8);

impl Woken {
    /// The client's socket (token `2k`).
    pub const CLIENT: Woken = Woken(1);
    /// The upstream socket, or an association's client port (`2k + 1`).
    pub const UPSTREAM: Woken = Woken(2);
    /// An association's outgoing socket (`UDP_BASE + k`).
    pub const DATAGRAMS: Woken = Woken(4);
    /// Every socket.
    pub const ALL: Woken = Woken(7);

    /// Whether every socket of `other` is named here.
    pub fn contains(self, other: Woken) -> bool {
        self.0 & other.0 == other.0
    }

    /// Names the sockets of `other` too.
    pub fn insert(&mut self, other: Woken) {
        self.0 |= other.0;
    }
}

/// What an event's token stands for.
enum Target {
    Waker,
    Listener(usize),
    Session(usize),
    CarriedFlow(usize),
    LanUdp(usize),
    LanDirect(usize),
    Conn(usize, Woken),
}

impl Target {
    fn of(token: Token) -> Target {
        match token {
            WAKER => Target::Waker,
            Token(t) if t >= LISTENER_BASE => Target::Listener(t - LISTENER_BASE),
            Token(t) if t >= udp::LAN_DIRECT_BASE => Target::LanDirect(t - udp::LAN_DIRECT_BASE),
            Token(t) if t >= udp::LAN_UDP_BASE => Target::LanUdp(t - udp::LAN_UDP_BASE),
            Token(t) if t >= udp::CARRIED_BASE => Target::CarriedFlow(t - udp::CARRIED_BASE),
            Token(t) if t >= SESSION_BASE => Target::Session(t - SESSION_BASE),
            Token(t) if t >= UDP_BASE => Target::Conn(t - UDP_BASE, Woken::DATAGRAMS),
            Token(t) if t % 2 == 0 => Target::Conn(t / 2, Woken::CLIENT),
            Token(t) => Target::Conn(t / 2, Woken::UPSTREAM),
        }
    }
}

/// What a connection's step may use of its worker: everything but the
/// connections themselves, which the worker holds apart so that a
/// connection taken out of the slab can be stepped with this.
struct Ctx {
    worker: usize,
    /// When the current round of events began.
    now: Instant,
    registry: Registry,
    shared: Arc<Shared>,
    specs: Arc<[ListenerSpec]>,
    pool: PipePool,
    sessions: Sessions,
    /// Connections that stopped for their turn's budget.
    requeue: Vec<usize>,
    resolve_tx: Sender<ResolveRequest>,
    next_serial: u64,
    /// Remote role: the host's own addresses, which destinations may not
    /// be by default (refreshed with every sweep; empty for a local role).
    own_addresses: Vec<IpAddr>,
    /// Where UDP associations read their datagrams.
    udp_buf: udp::DatagramBuffer,
}

impl Ctx {
    fn counters(&self) -> &Counters {
        &self.shared.counters[self.worker]
    }

    /// Reads the host's addresses again, if a listener connects to
    /// destinations (a failure keeps the last list).
    fn refresh_own_addresses(&mut self) {
        let connects = self
            .specs
            .iter()
            .any(|s| matches!(&*s.route, Route::Direct { .. }));
        if !connects {
            return;
        }
        match crate::sys::os::interface_addresses() {
            Ok(addrs) => self.own_addresses = addrs,
            Err(e) => tracing::debug!(error = %e, "relay: cannot list the host's addresses"),
        }
    }

    /// Takes a slot of `kind` for `client_ip`; `None` (and counted as
    /// refused) when a budget is spent.
    fn admit_as(&self, kind: Slot, client_ip: IpAddr) -> Option<Admission> {
        if !self.shared.limits.reserve(kind, client_ip) {
            self.counters().error(ErrorKind::Limit);
            return None;
        }
        Counters::add(&self.counters().accepted, 1);
        Some(Admission {
            shared: Arc::clone(&self.shared),
            worker: self.worker,
            kind,
            client: client_ip,
            given_back: false,
        })
    }
}

struct WorkerListener {
    socket: Option<TcpListener>,
    paused_until: Option<Instant>,
}

/// What a worker listens on.
pub(crate) struct Listening<'a> {
    /// The TCP listeners (each worker polls its own descriptor of each).
    pub tcp: &'a [std::net::TcpListener],
    /// The LAN side's UDP listeners: TPROXY, DNS forwarder (one worker's).
    pub udp: Vec<LanListener>,
    /// What becomes of their datagrams, by destination port.
    pub udp_ports: crate::relay::UdpPorts,
    /// The local role's route, which its sessions (also those of UDP
    /// flows) take.
    pub local_route: Option<Arc<Route>>,
}

pub(crate) struct Worker {
    poll: Poll,
    listeners: Vec<WorkerListener>,
    conns: Slab<Conn>,
    /// Remote role: UDP flows carried in the sessions.
    carried: udp::CarriedFlows,
    /// Local role: UDP from the LAN (TPROXY), carried in the sessions.
    lan: udp::LanFlows,
    ctx: Ctx,
    answers: Receiver<Resolved>,
    scratch_keys: Vec<usize>,
    draining: bool,
    /// What the worker is doing, for the log line of a panic.
    handling: Handling,
}

/// What a worker is handling (named when it panics).
#[derive(Debug, Clone, Copy)]
enum Handling {
    Nothing,
    Connection { key: usize, client: IpAddr },
    Session { key: usize, peer: IpAddr },
}

impl std::fmt::Display for Handling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handling::Nothing => write!(f, "no connection"),
            Handling::Connection { key, client } => write!(f, "connection {key} from {client}"),
            Handling::Session { key, peer } => write!(f, "session {key} with {peer}"),
        }
    }
}

impl Worker {
    pub(crate) fn new(
        idx: usize,
        poll: Poll,
        shared: Arc<Shared>,
        specs: Arc<[ListenerSpec]>,
        listening: Listening<'_>,
        resolve_tx: Sender<ResolveRequest>,
        answers: Receiver<Resolved>,
    ) -> io::Result<Worker> {
        let Listening {
            tcp: sockets,
            udp: udp_sockets,
            udp_ports,
            local_route,
        } = listening;
        // Every worker polls its own descriptor of each listening socket;
        // whichever wakes first accepts.
        let mut listeners = Vec::new();
        for (i, socket) in sockets.iter().enumerate() {
            let mut socket = TcpListener::from_std(socket.try_clone()?);
            poll.registry()
                .register(&mut socket, Token(LISTENER_BASE + i), Interest::READABLE)?;
            listeners.push(WorkerListener {
                socket: Some(socket),
                paused_until: None,
            });
        }
        let pool = PipePool::new(
            shared.engine.pipe_size,
            shared.engine.pipe_max_size,
            POOL_PIPES,
        );
        let sessions = Sessions::new(
            poll.registry().try_clone()?,
            Arc::clone(&shared),
            idx,
            specs
                .iter()
                .map(|s| &*s.route)
                .chain(local_route.as_deref()),
        );
        let lan = udp::LanFlows::new(
            udp_sockets,
            udp_ports,
            poll.registry(),
            &shared.engine,
            Instant::now(),
        )?;
        let mut ctx = Ctx {
            worker: idx,
            now: Instant::now(),
            registry: poll.registry().try_clone()?,
            shared,
            specs,
            pool,
            sessions,
            requeue: Vec::new(),
            resolve_tx,
            next_serial: 0,
            own_addresses: Vec::new(),
            udp_buf: udp::DatagramBuffer::default(),
        };
        ctx.refresh_own_addresses();
        Ok(Worker {
            poll,
            listeners,
            conns: Slab::new(),
            carried: udp::CarriedFlows::default(),
            lan,
            ctx,
            answers,
            scratch_keys: Vec::new(),
            draining: false,
            handling: Handling::Nothing,
        })
    }

    fn counters(&self) -> &Counters {
        self.ctx.counters()
    }

    /// Runs the event loop until the relay stops. A panic (a bug) costs
    /// only this worker's connections: it is logged with what the worker
    /// was handling, they are closed, and the loop starts over; the other
    /// workers never notice.
    pub(crate) fn run(mut self) {
        loop {
            match panic::catch_unwind(AssertUnwindSafe(|| self.serve())) {
                Ok(()) => break,
                Err(payload) => {
                    let what = crate::panic_message(&*payload).unwrap_or("(no message)");
                    Counters::add(&self.counters().worker_panics, 1);
                    tracing::error!(
                        worker = self.ctx.worker,
                        handling = %self.handling,
                        connections = self.conns.len(),
                        sessions = self.ctx.sessions.slab.len(),
                        "relay: a worker panicked: {what}; its connections and sessions are \
                         closed, the other workers go on"
                    );
                    self.reset();
                }
            }
        }
        for s in self.ctx.sessions.slab.keys() {
            self.close_session(s, "the relay stopped", false);
        }
    }

    /// After a panic: every connection and session of this worker closed
    /// (dropping them closes their sockets and gives their slots back).
    fn reset(&mut self) {
        self.conns = Slab::new();
        self.carried = udp::CarriedFlows::default();
        self.lan.clear();
        self.ctx.sessions.clear();
        self.ctx.requeue.clear();
        self.handling = Handling::Nothing;
    }

    fn serve(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        loop {
            match self.ctx.shared.state.load(Ordering::SeqCst) {
                STOPPING => break,
                DRAINING if !self.draining => {
                    self.draining = true;
                    for l in &mut self.listeners {
                        l.socket = None;
                    }
                    self.ctx.sessions.go_away(self.ctx.now);
                    self.flush_sessions();
                }
                _ => {}
            }
            if self.draining && self.conns.len() == 0 {
                break;
            }
            let mut wake_at = next_sweep;
            for l in &self.listeners {
                if let Some(t) = l.paused_until {
                    wake_at = wake_at.min(t);
                }
            }
            let idle = self.ctx.requeue.is_empty()
                && self.ctx.sessions.is_quiet()
                && self.carried.requeue.is_empty()
                && self.lan.requeue.is_empty()
                && self.lan.direct_requeue.is_empty();
            let timeout = if idle {
                wake_at.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "relay worker: epoll failed");
                break;
            }
            self.ctx.now = Instant::now();
            for event in events.iter() {
                match Target::of(event.token()) {
                    Target::Waker => self.take_answers(),
                    Target::Listener(i) => self.accept_all(i),
                    Target::Session(s) => self.session_event(s),
                    Target::CarriedFlow(f) => self.carried.answers(f, &mut self.ctx),
                    Target::LanUdp(i) => self.lan.read(i, &mut self.ctx),
                    Target::LanDirect(f) => self.lan.direct_answers(f, &mut self.ctx),
                    Target::Conn(key, socket) => {
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.woken.insert(socket);
                        }
                        self.drive(key);
                    }
                }
            }
            self.handling = Handling::Nothing;
            self.run_requeued();
            if self.ctx.now >= next_sweep {
                self.ctx.refresh_own_addresses();
                self.sweep();
                self.carried.sweep(self.ctx.now);
                self.lan.sweep(self.ctx.now);
                self.sweep_sessions();
                next_sweep = self.ctx.now + SWEEP_INTERVAL;
            }
            self.resume_listeners();
            // Last, so that every frame of the round leaves in one write.
            self.flush_sessions();
        }
    }

    /// Connections and sessions that stopped for their budget (or were
    /// unblocked) get their turn.
    fn run_requeued(&mut self) {
        self.for_each_listed(|w| &mut w.ctx.sessions.requeue, Worker::session_event);
        self.for_each_listed(|w| &mut w.ctx.requeue, Worker::drive);
        self.for_each_listed(
            |w| &mut w.carried.requeue,
            |w, f| w.carried.answers(f, &mut w.ctx),
        );
        self.for_each_listed(|w| &mut w.lan.requeue, |w, i| w.lan.read(i, &mut w.ctx));
        self.for_each_listed(
            |w| &mut w.lan.direct_requeue,
            |w, f| w.lan.direct_answers(f, &mut w.ctx),
        );
    }

    /// Runs `f` for every key of the list `list` picks, as it is now; keys
    /// listed meanwhile wait for the next call. The list keeps its
    /// allocation.
    fn for_each_listed(
        &mut self,
        list: fn(&mut Worker) -> &mut Vec<usize>,
        mut f: impl FnMut(&mut Worker, usize),
    ) {
        if list(self).is_empty() {
            return;
        }
        let mut keys = std::mem::take(list(self));
        for &k in &keys {
            f(self, k);
        }
        keys.clear();
        let now = list(self);
        if now.is_empty() {
            *now = keys;
        }
    }

    fn resume_listeners(&mut self) {
        for i in 0..self.listeners.len() {
            let l = &mut self.listeners[i];
            if l.paused_until.is_some_and(|t| t <= self.ctx.now) {
                l.paused_until = None;
                if let Some(s) = &mut l.socket {
                    let r = self.poll.registry().register(
                        s,
                        Token(LISTENER_BASE + i),
                        Interest::READABLE,
                    );
                    if let Err(e) = r {
                        tracing::error!(error = %e, "relay: cannot re-register listener");
                    }
                }
                self.accept_all(i);
            }
        }
    }

    fn accept_all(&mut self, i: usize) {
        loop {
            let l = &mut self.listeners[i];
            if l.paused_until.is_some() {
                return;
            }
            let Some(socket) = &mut l.socket else { return };
            match socket.accept() {
                Ok((stream, peer)) => self.admit(i, stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNABORTED) | Some(libc::EPERM)
                    ) => {}
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: stop accepting for a moment
                    // instead of spinning; open connections carry on.
                    self.ctx.counters().error(ErrorKind::Accept);
                    tracing::warn!(error = %e, "relay: accept failed, pausing this listener");
                    let _ = self.poll.registry().deregister(socket);
                    l.paused_until = Some(self.ctx.now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// A new client of listener `spec_idx`: admitted against the
    /// allowlist and the budgets, registered, and its first step run.
    fn admit(&mut self, spec_idx: usize, mut client: TcpStream, peer: SocketAddr) {
        let spec = &self.ctx.specs[spec_idx];
        let client_ip = super::policy::canonical(peer.ip());
        if !spec.clients.allows(client_ip) {
            self.counters().error(ErrorKind::ClientDenied);
            tracing::debug!(%peer, "relay: client not in the allowlist");
            return;
        }
        let (kind, forward_to) = (spec.kind, spec.forward_to);
        // Transparent connections have no request: they are real at once.
        let (slot, answer) = match kind {
            ListenerKind::Redirect | ListenerKind::Tproxy | ListenerKind::DnsForwarder => {
                (Slot::Connection, Answer::Nothing)
            }
            ListenerKind::LocalSocks5 | ListenerKind::RemoteSocks5 => {
                (Slot::Handshake, Answer::Socks5)
            }
            ListenerKind::Http => (Slot::Handshake, Answer::HttpForward),
        };
        let parser = match kind {
            ListenerKind::Http => Parser::Http,
            _ => {
                let (multiplex, udp_associate) = match &*spec.route {
                    Route::Direct {
                        multiplex,
                        udp_associate,
                        ..
                    } => (*multiplex, *udp_associate),
                    Route::Upstream { .. } => (false, false),
                };
                Parser::Socks5(
                    ServerHandshake::new(spec.require_auth)
                        .with_multiplex(multiplex)
                        .with_udp_associate(udp_associate),
                )
            }
        };
        let Some(admission) = self.ctx.admit_as(slot, client_ip) else {
            return;
        };
        let _ = client.set_nodelay(true);
        if kind == ListenerKind::RemoteSocks5 {
            // Its client is across the WAN: a local relay, in a session or
            // one connection per client connection.
            super::outbound::set_congestion_control(&client, &self.ctx.shared.engine);
        }
        let conn = Conn::new(&mut self.ctx, spec_idx, admission, Phase::Closed, answer);
        let key = self.conns.insert(conn);
        let (token, _) = conn_tokens(key);
        let r =
            self.ctx
                .registry
                .register(&mut client, token, Interest::READABLE | Interest::WRITABLE);
        let conn = match r {
            Ok(()) => self.conns.take(key),
            Err(e) => {
                tracing::warn!(error = %e, "relay: cannot register a connection");
                self.counters().error(ErrorKind::Accept);
                None
            }
        };
        let Some(mut conn) = conn else {
            self.conns.remove(key);
            return;
        };
        let next = match kind {
            ListenerKind::Redirect | ListenerKind::Tproxy | ListenerKind::DnsForwarder => {
                let dest = match forward_to {
                    Some(to) => Ok(TargetAddr::Ip(to)),
                    None => transparent_destination(&client, kind),
                };
                match dest {
                    Ok(dest) => conn.start(key, Origin::Client(client), dest, &mut self.ctx),
                    Err(f) => conn.fail(
                        Phase::before_connect(Origin::Client(client)),
                        f,
                        &mut self.ctx,
                    ),
                }
            }
            _ => {
                conn.phase = Phase::Request {
                    client,
                    buf: Vec::new(),
                    parser,
                    channel: None,
                };
                conn.step(key, &mut self.ctx)
            }
        };
        self.finish(key, conn, next);
    }

    /// Runs a connection's state machine after an event.
    fn drive(&mut self, key: usize) {
        let Some(mut conn) = self.conns.take(key) else {
            return;
        };
        self.handling = Handling::Connection {
            key,
            client: conn.admission.client,
        };
        #[cfg(test)]
        if self
            .ctx
            .shared
            .panic_next_drive
            .swap(false, Ordering::Relaxed)
        {
            panic!("injected by a test");
        }
        let next = conn.step(key, &mut self.ctx);
        self.finish(key, conn, next);
    }

    /// Puts a connection back after a step, or closes it, or turns it
    /// into a session.
    fn finish(&mut self, key: usize, conn: Conn, next: Next) {
        match next {
            Next::Keep => self.conns.put_back(key, conn),
            Next::Close => self.remove(key, conn),
            Next::Session(socket, leftover, channel) => {
                self.become_session(key, conn, socket, &leftover, channel)
            }
        }
    }

    /// Frees connection `key`'s slot and gives its admission back; its
    /// stream leaves its session. Dropping the rest closes its sockets
    /// (which also removes them from epoll) and its pipes.
    fn remove(&mut self, key: usize, mut conn: Conn) {
        self.conns.release(key);
        conn.admission.give_back();
        if let Some(stream) = conn.phase.into_stream() {
            let ctx = &mut self.ctx;
            ctx.sessions.detach(stream, &mut ctx.pool, ctx.now);
        }
    }

    fn take_answers(&mut self) {
        while let Ok(answer) = self.answers.try_recv() {
            if self.carried.asked(answer.conn, answer.serial) {
                let ctx = &self.ctx;
                self.carried
                    .resolved(answer.conn, answer.name, answer.addrs, ctx);
                continue;
            }
            let Some(conn) = self.conns.get_mut(answer.conn) else {
                continue;
            };
            if conn.serial != answer.serial {
                continue;
            }
            match &mut conn.phase {
                Phase::Resolving { result, .. } => {
                    *result = Some(answer.addrs);
                    self.drive(answer.conn);
                }
                Phase::Associated { udp, .. } => {
                    let moved = udp.egress.resolved(answer.name, answer.addrs, &self.ctx);
                    if moved {
                        conn.last_active = self.ctx.now;
                    }
                }
                _ => {}
            }
        }
    }

    /// Closes connections past their handshake deadline or idle timeout.
    fn sweep(&mut self) {
        let engine = &self.ctx.shared.engine;
        let now = self.ctx.now;
        let mut keys = std::mem::take(&mut self.scratch_keys);
        keys.clear();
        for (k, c) in self.conns.iter() {
            let expired = if c.phase.is_data() {
                c.phase
                    .idle_timeout(engine)
                    .is_some_and(|d| now.duration_since(c.last_active) > d)
            } else {
                now > c.deadline
            };
            if expired {
                keys.push(k);
            }
        }
        for &k in &keys {
            let Some(mut conn) = self.conns.take(k) else {
                continue;
            };
            let next = if matches!(conn.phase, Phase::Closing { .. }) {
                Next::Close
            } else if conn.phase.is_data() {
                self.counters().error(ErrorKind::IdleTimeout);
                Next::Close
            } else {
                let f = Failure::new(ErrorKind::HandshakeTimeout, "handshake timed out");
                conn.fail_now(f, &mut self.ctx)
            };
            self.finish(k, conn, next);
        }
        self.scratch_keys = keys;
    }
}

/// Where a transparent connection was going: the original destination of
/// a REDIRECTed one, the local address of a TPROXY one.
fn transparent_destination(client: &TcpStream, kind: ListenerKind) -> Result<TargetAddr, Failure> {
    let dest = if kind == ListenerKind::Redirect {
        listeners::original_destination(client)
    } else {
        client.local_addr()
    };
    match dest {
        // Sent straight to the listener, not redirected: relaying it would
        // connect to ourselves, forever.
        Ok(d) if kind == ListenerKind::Redirect && Some(d) == client.local_addr().ok() => {
            Err(Failure::new(
                ErrorKind::OriginalDestination,
                "connection was not redirected (original destination is the listener)",
            ))
        }
        Ok(d) => Ok(TargetAddr::Ip(d)),
        Err(e) => Err(Failure::new(
            ErrorKind::OriginalDestination,
            format!("original destination: {e}"),
        )),
    }
}
