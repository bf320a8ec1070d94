//! One worker thread: an epoll loop (mio, edge-triggered) over its share of
//! the listeners' connections, each driven through its phases: request
//! (SOCKS5 / HTTP), resolve, connect, upstream SOCKS5 handshake or a stream
//! of a multiplexed session ([`mux`]), relay (splice), closing.
//!
//! Every socket is registered once for both readiness kinds; on any event
//! the connection's state machine runs until each socket it needs would
//! block, which is what edge-triggered readiness requires. Connections and
//! sessions live in slabs indexed by token, so events allocate nothing.

mod mux;

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::limits::Slot;
use super::listeners;
use super::session::Session;
use super::splice::{Flow, PipePool};
use super::stats::{Counters, ErrorKind};
use super::stream::Stream;
use super::{
    DRAINING, ListenerKind, ListenerSpec, ResolveRequest, Resolved, Route, STOPPING, Shared,
};
use crate::http::{self, ProxyRequestKind};
use crate::socks5::{
    self, ClientHandshake, Command, Progress, ReplyCode, ServerHandshake, TargetAddr,
};

/// Token of the waker (shutdown, DNS answers).
pub(crate) const WAKER: Token = Token(usize::MAX);
/// Listener `i` has token `LISTENER_BASE + i`; session `s` has
/// `SESSION_BASE + s`; connection `k` has tokens `2k` (client) and `2k + 1`
/// (upstream).
const LISTENER_BASE: usize = usize::MAX / 2;
const SESSION_BASE: usize = usize::MAX / 4;
/// Reads per direction per wakeup before other connections get a turn.
const READ_BUDGET: usize = 16;
/// Largest handshake buffer (a SOCKS5 handshake is at most 1,032 bytes; an
/// HTTP head at most `http::MAX_HEAD`).
const MAX_REQUEST_BUFFER: usize = http::MAX_HEAD + 4096;
/// How long accepting pauses after EMFILE/ENFILE.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a refused client gets to read our answer and close.
const CLOSING_GRACE: Duration = Duration::from_secs(2);
/// Timeouts are checked this often.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Empty pipes kept per worker.
const POOL_PIPES: usize = 1024;

/// What the client is told once the destination is reached, and how
/// failures are reported to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Transparent (REDIRECT/TPROXY): nothing to say; failures close.
    Nothing,
    /// A SOCKS5 reply.
    Socks5,
    /// `200 Connection established`.
    HttpConnect,
    /// Nothing on success (the origin answers); an HTTP status on failure.
    HttpForward,
    /// A REPLY frame on the stream's session (remote role, multiplexed).
    MuxReply,
}

enum Parser {
    Socks5(ServerHandshake),
    Http,
}

enum Phase {
    /// Reading the client's SOCKS5 or HTTP request.
    Request { buf: Vec<u8>, parser: Parser },
    /// Waiting for the resolver; `result` is filled by the worker loop.
    Resolving {
        result: Option<io::Result<Vec<SocketAddr>>>,
    },
    /// Non-blocking connect to `to` in progress; `candidates` are the next
    /// addresses to try.
    Connecting {
        to: SocketAddr,
        candidates: Vec<SocketAddr>,
    },
    /// Pipelined SOCKS5 handshake with the remote relay.
    Upstream {
        handshake: ClientHandshake,
        out: Vec<u8>,
        out_pos: usize,
        buf: Vec<u8>,
    },
    /// Local role: waiting for the session to the remote relay to be set
    /// up, to become one of its streams.
    AwaitingSession,
    /// Data phase between two sockets.
    Relay { up: Flow, down: Flow },
    /// Data phase between a socket and a stream of a session (state in
    /// `Conn::stream`).
    Tunnel,
    /// Failed: the answer is on its way, reading until the client closes.
    Closing,
}

struct Conn {
    serial: u64,
    spec: usize,
    /// The budget it counts against, given back when it is dropped.
    admission: Admission,
    /// The accepted socket; `None` for a stream a session peer opened.
    client: Option<TcpStream>,
    upstream: Option<TcpStream>,
    /// The stream that stands in for one of the two sockets when the
    /// connection is multiplexed: for `upstream` on the local relay, for
    /// `client` on the remote.
    stream: Option<Stream>,
    phase: Phase,
    answer: Answer,
    dest: Option<TargetAddr>,
    /// Client bytes for the destination received during the handshake.
    early: Vec<u8>,
    /// Handshake answers not yet written to the client.
    to_client: Vec<u8>,
    /// Handshake deadline, or the end of the closing grace.
    deadline: Instant,
    last_active: Instant,
}

impl Conn {
    /// The accepted socket, which every phase but a remote stream's has.
    fn client(&mut self) -> &mut TcpStream {
        self.client
            .as_mut()
            .expect("an accepted connection has its socket")
    }

    /// The socket a stream carries: the client's (local role) or the
    /// destination's (remote role, once connecting).
    fn stream_socket(&self) -> Option<RawFd> {
        self.client
            .as_ref()
            .or(self.upstream.as_ref())
            .map(AsRawFd::as_raw_fd)
    }
}

/// A connection's slot in the relay's budgets ([`Slot`]): given back, and
/// the connection counted as closed, when it is dropped, however that
/// happens (also while a worker unwinds from a panic).
struct Admission {
    shared: Arc<Shared>,
    worker: usize,
    kind: Slot,
    client: IpAddr,
}

impl Admission {
    /// The request was read and authenticated: a handshake slot becomes a
    /// connection slot. `false`: no room for a connection.
    fn promote(&mut self) -> bool {
        if self.kind != Slot::Handshake {
            return true;
        }
        if !self.shared.limits.promote(self.client) {
            return false;
        }
        self.kind = Slot::Connection;
        true
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.shared.limits.release(self.kind, self.client);
        Counters::add(&self.shared.counters[self.worker].closed, 1);
    }
}

/// A failed connection: what to count and what to tell the client.
struct Failure {
    kind: ErrorKind,
    socks: ReplyCode,
    http: u16,
    /// The answer is already in `to_client`.
    answered: bool,
    detail: String,
}

impl Failure {
    fn new(kind: ErrorKind, detail: impl Into<String>) -> Failure {
        let (socks, http) = match kind {
            ErrorKind::DestinationDenied | ErrorKind::ClientDenied | ErrorKind::Auth => {
                (ReplyCode::NotAllowed, 403)
            }
            ErrorKind::Resolve => (ReplyCode::HostUnreachable, 502),
            ErrorKind::HandshakeTimeout => (ReplyCode::TtlExpired, 504),
            ErrorKind::Protocol => (ReplyCode::GeneralFailure, 400),
            _ => (ReplyCode::GeneralFailure, 502),
        };
        Failure {
            kind,
            socks,
            http,
            answered: false,
            detail: detail.into(),
        }
    }

    fn connect(err: &io::Error, to: SocketAddr) -> Failure {
        let mut f = Failure::new(ErrorKind::Connect, format!("connect to {to}: {err}"));
        f.socks = ReplyCode::from_io_error(err);
        if f.socks == ReplyCode::TtlExpired {
            f.http = 504;
        }
        f
    }

    /// The remote relay refused the connection with `reply`, which the
    /// client gets (as a SOCKS5 reply, or the nearest HTTP status).
    fn upstream(reply: ReplyCode, detail: impl Into<String>) -> Failure {
        let mut f = Failure::new(ErrorKind::Upstream, detail);
        f.socks = reply;
        f.http = match reply {
            ReplyCode::NotAllowed => 403,
            ReplyCode::TtlExpired => 504,
            _ => 502,
        };
        f
    }

    fn io(e: &io::Error) -> Failure {
        Failure::new(ErrorKind::Io, format!("relaying: {e}"))
    }
}

enum Next {
    Keep,
    Close,
    /// Remote role: the client asked to multiplex; the socket becomes a
    /// session, with these bytes already read after the request.
    Session(Vec<u8>),
}

struct WorkerListener {
    socket: Option<TcpListener>,
    paused_until: Option<Instant>,
}

/// A slab: free slots are reused, keys are tokens.
struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Slab<T> {
    fn new() -> Slab<T> {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(k) => {
                self.slots[k] = Some(value);
                k
            }
            None => {
                self.slots.push(Some(value));
                self.slots.len() - 1
            }
        }
    }

    fn get(&self, key: usize) -> Option<&T> {
        self.slots.get(key).and_then(Option::as_ref)
    }

    fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.slots.get_mut(key).and_then(Option::as_mut)
    }

    fn take(&mut self, key: usize) -> Option<T> {
        self.slots.get_mut(key).and_then(Option::take)
    }

    fn put_back(&mut self, key: usize, value: T) {
        self.slots[key] = Some(value);
    }

    /// Frees a slot emptied by `take`.
    fn release(&mut self, key: usize) {
        self.len -= 1;
        self.free.push(key);
    }

    fn keys(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&k| self.slots[k].is_some())
            .collect()
    }
}

pub(crate) struct Worker {
    idx: usize,
    poll: Poll,
    shared: Arc<Shared>,
    specs: Arc<[ListenerSpec]>,
    listeners: Vec<WorkerListener>,
    conns: Slab<Conn>,
    sessions: Slab<Session>,
    /// Local role: this worker's sessions to the remote relay.
    mux: Option<mux::MuxClient>,
    /// Sessions with frames queued this round.
    flush_list: Vec<usize>,
    pool: PipePool,
    resolve_tx: Sender<ResolveRequest>,
    answers: Receiver<Resolved>,
    requeue: Vec<usize>,
    session_requeue: Vec<usize>,
    scratch_keys: Vec<usize>,
    next_serial: u64,
    now: Instant,
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
        sockets: &[std::net::TcpListener],
        resolve_tx: Sender<ResolveRequest>,
        answers: Receiver<Resolved>,
    ) -> io::Result<Worker> {
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
        let mux = mux::MuxClient::for_routes(specs.iter().map(|s| &*s.route));
        Ok(Worker {
            idx,
            poll,
            shared,
            specs,
            listeners,
            conns: Slab::new(),
            sessions: Slab::new(),
            mux,
            flush_list: Vec::new(),
            pool,
            resolve_tx,
            answers,
            requeue: Vec::new(),
            session_requeue: Vec::new(),
            scratch_keys: Vec::new(),
            next_serial: 0,
            now: Instant::now(),
            draining: false,
            handling: Handling::Nothing,
        })
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters[self.idx]
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
                        worker = self.idx,
                        handling = %self.handling,
                        connections = self.conns.len,
                        sessions = self.sessions.len,
                        "relay: a worker panicked: {what}; its connections and sessions are \
                         closed, the other workers go on"
                    );
                    self.reset();
                }
            }
        }
        for s in self.sessions.keys() {
            self.close_session(s, "the relay stopped");
        }
    }

    /// After a panic: every connection and session of this worker closed
    /// (dropping them closes their sockets and gives their slots back).
    fn reset(&mut self) {
        self.conns = Slab::new();
        self.sessions = Slab::new();
        if let Some(mux) = &mut self.mux {
            mux.forget_sessions();
        }
        self.flush_list.clear();
        self.requeue.clear();
        self.session_requeue.clear();
        self.handling = Handling::Nothing;
    }

    fn serve(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        loop {
            match self.shared.state.load(Ordering::SeqCst) {
                STOPPING => break,
                DRAINING if !self.draining => {
                    self.draining = true;
                    for l in &mut self.listeners {
                        l.socket = None;
                    }
                    self.go_away();
                    self.flush_sessions();
                }
                _ => {}
            }
            if self.draining && self.conns.len == 0 {
                break;
            }
            let mut wake_at = next_sweep;
            for l in &self.listeners {
                if let Some(t) = l.paused_until {
                    wake_at = wake_at.min(t);
                }
            }
            let idle = self.requeue.is_empty()
                && self.session_requeue.is_empty()
                && self.flush_list.is_empty();
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
            self.now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    WAKER => self.take_answers(),
                    Token(t) if t >= LISTENER_BASE => self.accept_all(t - LISTENER_BASE),
                    Token(t) if t >= SESSION_BASE => self.session_event(t - SESSION_BASE),
                    Token(t) => self.drive(t / 2),
                }
            }
            self.handling = Handling::Nothing;
            self.run_requeued();
            if self.now >= next_sweep {
                self.sweep();
                self.sweep_sessions();
                next_sweep = self.now + SWEEP_INTERVAL;
            }
            self.resume_listeners();
            // Last, so that every frame of the round leaves in one write.
            self.flush_sessions();
        }
    }

    /// Connections and sessions that stopped for their budget (or were
    /// unblocked) get their turn.
    fn run_requeued(&mut self) {
        self.for_each_listed(|w| &mut w.session_requeue, Worker::session_event);
        self.for_each_listed(|w| &mut w.requeue, Worker::drive);
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
            if l.paused_until.is_some_and(|t| t <= self.now) {
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
                    self.shared.counters[self.idx].error(ErrorKind::Accept);
                    tracing::warn!(error = %e, "relay: accept failed, pausing this listener");
                    let _ = self.poll.registry().deregister(socket);
                    l.paused_until = Some(self.now + ACCEPT_BACKOFF);
                    return;
                }
            }
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
            worker: self.idx,
            kind,
            client: client_ip,
        })
    }

    fn new_conn(
        &mut self,
        spec: usize,
        admission: Admission,
        phase: Phase,
        answer: Answer,
    ) -> Conn {
        self.next_serial += 1;
        Conn {
            serial: self.next_serial,
            spec,
            admission,
            client: None,
            upstream: None,
            stream: None,
            phase,
            answer,
            dest: None,
            early: Vec::new(),
            to_client: Vec::new(),
            deadline: self.now + self.shared.engine.handshake_timeout(),
            last_active: self.now,
        }
    }

    fn admit(&mut self, spec_idx: usize, client: TcpStream, peer: SocketAddr) {
        let spec = &self.specs[spec_idx];
        let client_ip = super::policy::canonical(peer.ip());
        if !spec.clients.allows(client_ip) {
            self.counters().error(ErrorKind::ClientDenied);
            tracing::debug!(%peer, "relay: client not in the allowlist");
            return;
        }
        let kind = spec.kind;
        // Transparent connections have no request: they are real at once.
        let slot = match kind {
            ListenerKind::Redirect | ListenerKind::Tproxy => Slot::Connection,
            _ => Slot::Handshake,
        };
        let Some(admission) = self.admit_as(slot, client_ip) else {
            return;
        };
        let _ = client.set_nodelay(true);

        let (phase, answer) = match kind {
            ListenerKind::Redirect | ListenerKind::Tproxy => {
                (Phase::Resolving { result: None }, Answer::Nothing)
            }
            ListenerKind::LocalSocks5 | ListenerKind::RemoteSocks5 => {
                let multiplex = matches!(
                    &*spec.route,
                    Route::Direct {
                        multiplex: true,
                        ..
                    }
                );
                let handshake = ServerHandshake::new(spec.require_auth).with_multiplex(multiplex);
                (
                    Phase::Request {
                        buf: Vec::new(),
                        parser: Parser::Socks5(handshake),
                    },
                    Answer::Socks5,
                )
            }
            ListenerKind::Http => (
                Phase::Request {
                    buf: Vec::new(),
                    parser: Parser::Http,
                },
                Answer::HttpForward,
            ),
        };
        let mut conn = self.new_conn(spec_idx, admission, phase, answer);
        conn.client = Some(client);
        let key = self.conns.insert(conn);
        let mut conn = self.conns.take(key).expect("just inserted");
        let r = self.poll.registry().register(
            conn.client(),
            Token(2 * key),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(e) = r {
            tracing::warn!(error = %e, "relay: cannot register a connection");
            self.counters().error(ErrorKind::Accept);
            self.remove(key, conn);
            return;
        }
        let next = match kind {
            ListenerKind::Redirect | ListenerKind::Tproxy => {
                let client = conn.client();
                let dest = if kind == ListenerKind::Redirect {
                    listeners::original_destination(client)
                } else {
                    client.local_addr()
                };
                match dest {
                    // Sent straight to the listener, not redirected: relaying
                    // it would connect to ourselves, forever.
                    Ok(d)
                        if Some(d) == client.local_addr().ok()
                            && kind == ListenerKind::Redirect =>
                    {
                        Err(Failure::new(
                            ErrorKind::OriginalDestination,
                            "connection was not redirected (original destination is the listener)",
                        ))
                    }
                    Ok(d) => {
                        conn.dest = Some(TargetAddr::Ip(d));
                        self.begin_connect(key, &mut conn)
                            .and_then(|()| self.step(key, &mut conn))
                    }
                    Err(e) => Err(Failure::new(
                        ErrorKind::OriginalDestination,
                        format!("original destination: {e}"),
                    )),
                }
            }
            _ => self.step(key, &mut conn),
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
        if self.shared.panic_next_drive.swap(false, Ordering::Relaxed) {
            panic!("injected by a test");
        }
        let next = self.step(key, &mut conn);
        self.finish(key, conn, next);
    }

    fn finish(&mut self, key: usize, mut conn: Conn, next: Result<Next, Failure>) {
        let next = match next {
            Ok(n) => n,
            Err(f) => self.fail(&mut conn, f),
        };
        match next {
            Next::Keep => self.conns.put_back(key, conn),
            Next::Close => self.remove(key, conn),
            Next::Session(leftover) => self.become_session(key, conn, leftover),
        }
    }

    /// Takes connection `key` out and fails it.
    fn fail_key(&mut self, key: usize, f: Failure) {
        if let Some(conn) = self.conns.take(key) {
            self.finish(key, conn, Err(f));
        }
    }

    fn remove(&mut self, key: usize, mut conn: Conn) {
        self.conns.release(key);
        if let Some(stream) = conn.stream.take() {
            self.detach_stream(stream);
        }
        // Dropping the sockets closes them, which also removes them from
        // epoll; pipes still holding data are closed with the flows, and the
        // admission gives its slot back.
    }

    /// Counts a failure, sends the client its answer, and lets it close.
    fn fail(&mut self, conn: &mut Conn, f: Failure) -> Next {
        self.counters().error(f.kind);
        tracing::debug!(client = %conn.admission.client, kind = f.kind.name(), "relay: {}", f.detail);
        conn.upstream = None;
        let replied = conn.stream.as_ref().is_some_and(|s| s.replied);
        if let Some(mut stream) = conn.stream.take() {
            if conn.answer == Answer::MuxReply && !stream.replied && !stream.ended {
                self.reply_on_session(&mut stream, f.socks, None);
            }
            self.detach_stream(stream);
        }
        // Once data flows the protocol answers are history: just close.
        if conn.client.is_none()
            || replied
            || matches!(conn.phase, Phase::Relay { .. } | Phase::Closing)
        {
            return Next::Close;
        }
        if !f.answered {
            match conn.answer {
                Answer::Nothing | Answer::MuxReply => {}
                Answer::Socks5 => socks5::encode_reply(f.socks, None, &mut conn.to_client),
                Answer::HttpConnect | Answer::HttpForward => conn
                    .to_client
                    .extend_from_slice(&http::error_response(f.http)),
            }
        }
        // Best effort: the answer is a few bytes on a fresh socket.
        let client = conn.client.as_mut().expect("checked above");
        let _ = flush(client, &mut conn.to_client);
        let _ = client.shutdown(std::net::Shutdown::Write);
        conn.phase = Phase::Closing;
        conn.deadline = self.now + CLOSING_GRACE;
        match drain_until_eof(client) {
            Ok(true) | Err(_) => Next::Close,
            Ok(false) => Next::Keep,
        }
    }

    fn step(&mut self, key: usize, conn: &mut Conn) -> Result<Next, Failure> {
        loop {
            match &mut conn.phase {
                Phase::Request { buf, parser } => {
                    let client = conn.client.as_mut().expect("a request comes on a socket");
                    let eof = read_some(client, buf, MAX_REQUEST_BUFFER).map_err(|e| {
                        Failure::new(ErrorKind::Io, format!("reading request: {e}"))
                    })?;
                    let route = Arc::clone(&self.specs[conn.spec].route);
                    let parsed = match parser {
                        Parser::Socks5(hs) => {
                            let check = |c: &socks5::Credentials| match &*route {
                                Route::Direct { users, .. } => users.iter().any(|u| {
                                    u.username.as_bytes() == c.username
                                        && u.password.as_bytes() == c.password
                                }),
                                Route::Upstream { .. } => false,
                            };
                            let r = hs.advance(buf, &mut conn.to_client, check);
                            flush(client, &mut conn.to_client).map_err(|e| {
                                Failure::new(ErrorKind::Io, format!("writing to client: {e}"))
                            })?;
                            match r {
                                Ok(Progress::NeedMore) => None,
                                Ok(Progress::Done(req, used))
                                    if req.command == Command::Multiplex =>
                                {
                                    return mux::session_request(&req, &buf[used..]);
                                }
                                Ok(Progress::Done(req, used)) => Some((req.dest, used, None)),
                                Err(e) => {
                                    let kind = if e.reply == ReplyCode::NotAllowed {
                                        ErrorKind::Auth
                                    } else {
                                        ErrorKind::Protocol
                                    };
                                    let mut f = Failure::new(kind, e.to_string());
                                    f.answered = true;
                                    return Err(f);
                                }
                            }
                        }
                        Parser::Http => match http::parse_proxy_request(buf) {
                            Ok(Progress::NeedMore) => None,
                            Ok(Progress::Done(req, used)) => {
                                Some((req.target, used, Some(req.kind)))
                            }
                            Err(e) => {
                                let mut f = Failure::new(ErrorKind::Protocol, e.to_string());
                                f.http = e.status;
                                return Err(f);
                            }
                        },
                    };
                    let Some((dest, used, http_kind)) = parsed else {
                        if eof {
                            // The client left before finishing its request.
                            return Ok(Next::Close);
                        }
                        if buf.len() >= MAX_REQUEST_BUFFER {
                            return Err(Failure::new(ErrorKind::Protocol, "request too long"));
                        }
                        return Ok(Next::Keep);
                    };
                    let mut early = match http_kind {
                        Some(ProxyRequestKind::Forward { head }) => head,
                        Some(ProxyRequestKind::Connect) => {
                            conn.answer = Answer::HttpConnect;
                            Vec::new()
                        }
                        None => Vec::new(),
                    };
                    early.extend_from_slice(&buf[used..]);
                    conn.early = early;
                    conn.dest = Some(dest);
                    if !conn.admission.promote() {
                        return Err(Failure::new(ErrorKind::Limit, "connection limit reached"));
                    }
                    self.begin_connect(key, conn)?;
                }
                Phase::Resolving { result } => {
                    let Some(result) = result.take() else {
                        return Ok(Next::Keep);
                    };
                    let dest = conn.dest.as_ref().expect("resolving a destination");
                    let addrs = result.map_err(|e| {
                        Failure::new(ErrorKind::Resolve, format!("resolving {dest}: {e}"))
                    })?;
                    let candidates = self.permitted(conn, addrs)?;
                    self.start_connect(key, conn, candidates)?;
                }
                Phase::Connecting { to, candidates } => {
                    let upstream = conn.upstream.as_mut().expect("connecting socket");
                    let err = match upstream.take_error() {
                        Ok(Some(e)) | Err(e) => Some(e),
                        Ok(None) => match upstream.peer_addr() {
                            Ok(_) => None,
                            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                                return Ok(Next::Keep);
                            }
                            Err(e) => Some(e),
                        },
                    };
                    if let Some(e) = err {
                        let rest = std::mem::take(candidates);
                        if rest.is_empty() {
                            return Err(Failure::connect(&e, *to));
                        }
                        self.start_connect(key, conn, rest)?;
                        continue;
                    }
                    match &*self.specs[conn.spec].route {
                        Route::Upstream { credentials, .. } => {
                            let mut out = Vec::new();
                            let creds = credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
                            let dest = conn.dest.clone().expect("destination known");
                            socks5::encode_client_hello_auth_request(
                                creds,
                                &socks5::Request::connect(dest),
                                &mut out,
                            )
                            .map_err(|e| Failure::new(ErrorKind::Protocol, e.to_string()))?;
                            conn.phase = Phase::Upstream {
                                handshake: ClientHandshake::new(creds.is_some()),
                                out,
                                out_pos: 0,
                                buf: Vec::new(),
                            };
                        }
                        Route::Direct { .. } => {
                            let bound = upstream.local_addr().ok();
                            self.enter_relay(conn, bound, Vec::new());
                        }
                    }
                }
                Phase::Upstream {
                    handshake,
                    out,
                    out_pos,
                    buf,
                } => {
                    let upstream = conn.upstream.as_mut().expect("upstream socket");
                    let io_fail = |e: io::Error| {
                        Failure::new(
                            ErrorKind::Upstream,
                            format!("SOCKS5 handshake with the remote: {e}"),
                        )
                    };
                    while *out_pos < out.len() {
                        match upstream.write(&out[*out_pos..]) {
                            Ok(n) => *out_pos += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                return Ok(Next::Keep);
                            }
                            Err(e) => return Err(io_fail(e)),
                        }
                    }
                    let eof = read_some(upstream, buf, 4096).map_err(io_fail)?;
                    match handshake.advance(buf) {
                        Ok(Progress::NeedMore) if eof => {
                            return Err(io_fail(io::ErrorKind::UnexpectedEof.into()));
                        }
                        Ok(Progress::NeedMore) => return Ok(Next::Keep),
                        Ok(Progress::Done(_bound, used)) => {
                            let leftover = buf[used..].to_vec();
                            self.enter_relay(conn, None, leftover);
                        }
                        Err(e) => {
                            return Err(Failure::upstream(e.reply, format!("remote relay: {e}")));
                        }
                    }
                }
                Phase::AwaitingSession => return Ok(Next::Keep),
                Phase::Relay { up, down } => {
                    let client = conn.client.as_ref().expect("a client socket").as_raw_fd();
                    let upstream = conn.upstream.as_ref().expect("upstream socket").as_raw_fd();
                    let counters = &self.shared.counters[self.idx];
                    let a = up.pump(client, upstream, &mut self.pool, READ_BUDGET, down.done());
                    let b = down.pump(upstream, client, &mut self.pool, READ_BUDGET, up.done());
                    let mut requeue = false;
                    for (r, counter) in [(&a, &counters.bytes_up), (&b, &counters.bytes_down)] {
                        if let Ok(p) = r {
                            if p.bytes > 0 {
                                Counters::add(counter, p.bytes);
                                conn.last_active = self.now;
                            }
                            if let Some(why) = p.fell_back {
                                Counters::add(&counters.splice_fallbacks, 1);
                                tracing::warn!(
                                    "relay: {why}; this direction copies through a buffer"
                                );
                            }
                            requeue |= p.budget_exhausted;
                        }
                    }
                    if let Err(e) = a.and(b) {
                        return Err(Failure::io(&e));
                    }
                    if up.done() && down.done() {
                        return Ok(Next::Close);
                    }
                    if requeue {
                        self.requeue.push(key);
                    }
                    return Ok(Next::Keep);
                }
                Phase::Tunnel => return self.tunnel_step(key, conn),
                Phase::Closing => {
                    return match drain_until_eof(conn.client()) {
                        Ok(true) | Err(_) => Ok(Next::Close),
                        Ok(false) => Ok(Next::Keep),
                    };
                }
            }
        }
    }

    /// After the destination is known: connect (to it or to the remote
    /// relay, or carry it over a session), or ask the resolver first.
    fn begin_connect(&mut self, key: usize, conn: &mut Conn) -> Result<(), Failure> {
        let dest = conn.dest.clone().expect("destination known");
        match &*self.specs[conn.spec].route {
            Route::Upstream { addr, .. } => {
                let addr = *addr;
                if self.multiplex(key, conn) {
                    return Ok(());
                }
                self.start_connect(key, conn, vec![addr])
            }
            Route::Direct { .. } => match dest {
                TargetAddr::Ip(a) => {
                    let candidates = self.permitted(conn, vec![a])?;
                    self.start_connect(key, conn, candidates)
                }
                TargetAddr::Domain(name, port) => {
                    let req = ResolveRequest {
                        worker: self.idx,
                        conn: key,
                        serial: conn.serial,
                        name,
                        port,
                    };
                    self.resolve_tx
                        .send(req)
                        .map_err(|_| Failure::new(ErrorKind::Resolve, "resolver stopped"))?;
                    conn.phase = Phase::Resolving { result: None };
                    Ok(())
                }
            },
        }
    }

    /// The addresses the destination policy allows.
    fn permitted(&self, conn: &Conn, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Failure> {
        let Route::Direct { policy, .. } = &*self.specs[conn.spec].route else {
            return Ok(addrs);
        };
        let total = addrs.len();
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| policy.allows(a.ip()))
            .collect();
        if allowed.is_empty() {
            let dest = conn
                .dest
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let why = if total == 0 {
                "no address"
            } else {
                "denied by the destination policy"
            };
            return Err(Failure::new(
                ErrorKind::DestinationDenied,
                format!("{dest}: {why}"),
            ));
        }
        Ok(allowed)
    }

    /// Starts connecting to the first candidate.
    fn start_connect(
        &mut self,
        key: usize,
        conn: &mut Conn,
        mut candidates: Vec<SocketAddr>,
    ) -> Result<(), Failure> {
        let mptcp = match &*self.specs[conn.spec].route {
            Route::Direct { mptcp, .. } | Route::Upstream { mptcp, .. } => *mptcp,
        };
        loop {
            if candidates.is_empty() {
                return Err(Failure::new(ErrorKind::Connect, "no address to connect to"));
            }
            let addr = candidates.remove(0);
            match listeners::connect(addr, mptcp) {
                Ok(mut s) => {
                    self.poll
                        .registry()
                        .register(
                            &mut s,
                            Token(2 * key + 1),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .map_err(|e| Failure::new(ErrorKind::Connect, format!("register: {e}")))?;
                    conn.upstream = Some(s);
                    conn.phase = Phase::Connecting {
                        to: addr,
                        candidates,
                    };
                    return Ok(());
                }
                Err(e) if candidates.is_empty() => return Err(Failure::connect(&e, addr)),
                Err(_) => {}
            }
        }
    }

    fn enter_relay(&mut self, conn: &mut Conn, bound: Option<SocketAddr>, leftover: Vec<u8>) {
        conn.last_active = self.now;
        Counters::add(&self.counters().relayed, 1);
        if let Some(stream) = &mut conn.stream {
            // Remote role, multiplexed: the destination answered.
            self.reply_on_session(stream, ReplyCode::Succeeded, bound);
            stream.replied = true;
            conn.phase = Phase::Tunnel;
            return;
        }
        let mut down = std::mem::take(&mut conn.to_client);
        match conn.answer {
            Answer::Socks5 => socks5::encode_reply(ReplyCode::Succeeded, bound, &mut down),
            Answer::HttpConnect => down.extend_from_slice(http::CONNECT_ESTABLISHED),
            Answer::Nothing | Answer::HttpForward | Answer::MuxReply => {}
        }
        down.extend_from_slice(&leftover);
        let up = std::mem::take(&mut conn.early);
        conn.phase = Phase::Relay {
            up: Flow::new(up),
            down: Flow::new(down),
        };
    }

    fn take_answers(&mut self) {
        while let Ok(answer) = self.answers.try_recv() {
            let Some(conn) = self.conns.get_mut(answer.conn) else {
                continue;
            };
            if conn.serial != answer.serial {
                continue;
            }
            if let Phase::Resolving { result } = &mut conn.phase {
                *result = Some(answer.addrs);
                self.drive(answer.conn);
            }
        }
    }

    /// Closes connections past their handshake deadline or idle timeout.
    fn sweep(&mut self) {
        let idle = self.shared.engine.idle_timeout();
        let now = self.now;
        let mut keys = std::mem::take(&mut self.scratch_keys);
        keys.clear();
        for (k, slot) in self.conns.slots.iter().enumerate() {
            let Some(c) = slot else { continue };
            let expired = match c.phase {
                Phase::Relay { .. } | Phase::Tunnel => {
                    idle.is_some_and(|d| now.duration_since(c.last_active) > d)
                }
                _ => now > c.deadline,
            };
            if expired {
                keys.push(k);
            }
        }
        for &k in &keys {
            let Some(conn) = self.conns.take(k) else {
                continue;
            };
            let next = match conn.phase {
                Phase::Closing => Ok(Next::Close),
                Phase::Relay { .. } | Phase::Tunnel => {
                    self.counters().error(ErrorKind::IdleTimeout);
                    Ok(Next::Close)
                }
                _ => Err(Failure::new(
                    ErrorKind::HandshakeTimeout,
                    "handshake timed out",
                )),
            };
            self.finish(k, conn, next);
        }
        self.scratch_keys = keys;
    }
}

/// Reads into `buf` until the socket would block, up to `limit` bytes in
/// total. Returns whether the peer closed.
fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
    let mut chunk = [0u8; 4096];
    while buf.len() < limit {
        let want = chunk.len().min(limit - buf.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Ok(true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Writes as much of `out` as the socket takes, removing what was written.
fn flush(stream: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    let mut written = 0;
    while written < out.len() {
        match stream.write(&out[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                out.drain(..written);
                return Err(e);
            }
        }
    }
    out.drain(..written);
    Ok(())
}

/// Discards input until EOF (true) or until the socket would block (false).
fn drain_until_eof(stream: &mut TcpStream) -> io::Result<bool> {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
