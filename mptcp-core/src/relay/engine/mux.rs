//! The worker's multiplexed sessions ([`crate::mux`]): each worker of the
//! local relay keeps a session to the remote relay (more while the others
//! carry bulk transfers) and carries each connection as a stream of one;
//! the remote relay turns a SOCKS5 MULTIPLEX request into a session and
//! connects each OPENed stream onward.
//!
//! A session that cannot be set up (the remote does not multiplex, refuses
//! us, or cannot be reached) sends its waiting connections the usual way,
//! one SOCKS5 CONNECT each, and the next attempt waits: a second after the
//! first failure, doubling up to a minute, and an hour after "command not
//! supported" (dante).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::{Interest, Token};

use super::{Answer, Conn, Failure, Handling, Next, Phase, Worker, read_some};
use super::{READ_BUDGET, SESSION_BASE};
use crate::mux::{self, Control, Settings};
use crate::relay::Route;
use crate::relay::limits::Slot;
use crate::relay::listeners;
use crate::relay::session::{self, Role, RxError, RxEvent, Session};
use crate::relay::stats::{Counters, ErrorKind};
use crate::relay::stream::{Spliced, Stream, StreamError};
use crate::socks5::{self, ClientHandshake, Command, Progress, ReplyCode, Request, TargetAddr};

/// Reads (or splices) per session wakeup before others get a turn.
const SESSION_READ_BUDGET: usize = 64;
/// The wait before the next session after the first failed one; it
/// doubles with each failure in a row, up to [`RETRY_AT_MOST`].
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
const RETRY_AT_MOST: Duration = Duration::from_secs(60);
/// The wait after a remote that answered "command not supported".
const RETRY_AFTER_REFUSAL: Duration = Duration::from_secs(3600);
/// Room for a session's SOCKS5 handshake (either direction).
const SESSION_HANDSHAKE_BYTES: usize = 1024;
/// A session counts as busy this long after its last bulk frame.
const BUSY_HOLD: Duration = Duration::from_millis(200);

/// The local role's view of the remote relay, for sessions.
#[derive(Debug)]
pub(super) struct MuxClient {
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
    /// This worker's sessions (keys), newest last.
    sessions: Vec<usize>,
    /// No new session before this.
    retry_at: Option<Instant>,
    /// Sessions in a row that failed before they opened.
    failures: u32,
}

impl MuxClient {
    /// The client side for the first route that goes to a remote relay
    /// with multiplexing on (a local role has one remote).
    pub(super) fn for_routes<'a>(mut routes: impl Iterator<Item = &'a Route>) -> Option<MuxClient> {
        routes.find_map(|r| match r {
            Route::Upstream {
                addr,
                credentials,
                mptcp,
                multiplex: true,
                max_sessions,
                spare_idle,
            } => Some(MuxClient {
                addr: *addr,
                credentials: credentials.clone(),
                mptcp: *mptcp,
                max_sessions: *max_sessions,
                spare_idle: *spare_idle,
                sessions: Vec::new(),
                retry_at: None,
                failures: 0,
            }),
            _ => None,
        })
    }

    /// The worker dropped every session (after a panic).
    pub(super) fn forget_sessions(&mut self) {
        self.sessions.clear();
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

/// Why a session's input stopped for good.
enum ReadError {
    /// The other relay broke the protocol (counted: a bug or an attack).
    Protocol(String),
    /// The socket failed or closed, or the handshake was refused.
    Gone(String),
}

/// Remote role: a MULTIPLEX request of our protocol version becomes a
/// session; another version is refused as not supported, so that the
/// client falls back to CONNECT.
pub(super) fn session_request(req: &Request, leftover: &[u8]) -> Result<Next, Failure> {
    if req.dest.port() != mux::VERSION {
        let mut f = Failure::new(
            ErrorKind::Protocol,
            format!(
                "multiplexing version {} asked, {} spoken",
                req.dest.port(),
                mux::VERSION
            ),
        );
        f.socks = ReplyCode::CommandNotSupported;
        return Err(f);
    }
    Ok(Next::Session(leftover.to_vec()))
}

/// The SOCKS5 address that carries the protocol version, `0.0.0.0:1`.
fn version_address() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), mux::VERSION)
}

impl Worker {
    /// The window this relay announces for every stream.
    fn window(&self) -> u32 {
        self.shared.engine.stream_window
    }

    /// A session's receive buffer: two stream windows (the kernel doubles
    /// the value for its bookkeeping).
    fn session_receive_buffer(&self) -> usize {
        2 * self.window() as usize
    }

    /// Local role: carries `conn` over a session if one is open or being
    /// set up (false: connect to the remote for this connection alone).
    ///
    /// An open session that is not busy with a bulk transfer comes first;
    /// then one being set up; then a new one (up to `max_sessions`); then
    /// the busy session whose bulk transfer is oldest.
    pub(super) fn multiplex(&mut self, key: usize, conn: &mut Conn) -> bool {
        let Some(mux) = &self.mux else { return false };
        let now = self.now;
        let listed = || {
            mux.sessions
                .iter()
                .filter_map(|&s| Some((s, self.sessions.get(s)?)))
        };
        let open = || listed().filter(|(_, x)| x.accepts_streams());
        let idle = open().find(|(_, x)| !x.is_busy(now)).map(|(s, _)| s);
        let starting = listed().find(|(_, x)| x.is_starting()).map(|(s, _)| s);
        let least_busy = open().min_by_key(|(_, x)| x.busy_until).map(|(s, _)| s);
        let room = mux.sessions.len() < mux.max_sessions;
        if let Some(s) = idle {
            self.attach(key, conn, s);
            return true;
        }
        if let Some(s) = starting.or_else(|| room.then(|| self.open_client_session()).flatten()) {
            self.wait_for(key, conn, s);
            return true;
        }
        let Some(s) = least_busy else { return false };
        self.attach(key, conn, s);
        true
    }

    /// Parks `conn` until session `s` is set up.
    fn wait_for(&mut self, key: usize, conn: &mut Conn, s: usize) {
        if let Some(Role::Client { waiting, .. }) = self.sessions.get_mut(s).map(|x| &mut x.role) {
            waiting.push((key, conn.serial));
        }
        conn.phase = Phase::AwaitingSession;
    }

    /// Connects a new session to the remote relay and queues its whole
    /// handshake: greeting, authentication, MULTIPLEX request, SETTINGS.
    fn open_client_session(&mut self) -> Option<usize> {
        let window = self.window();
        let receive_buffer = self.session_receive_buffer();
        let deadline = self.now + self.shared.engine.handshake_timeout();
        let mux = self.mux.as_mut()?;
        if mux.retry_at.is_some_and(|t| self.now < t) {
            return None;
        }
        let socket = match listeners::connect(mux.addr, mux.mptcp) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(remote = %mux.addr, error = %e, "relay: cannot open a session");
                mux.failed(self.now, Duration::ZERO);
                return None;
            }
        };
        listeners::prepare_session_socket(&socket, receive_buffer);
        let creds = mux
            .credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()));
        let mut hello = Vec::with_capacity(SESSION_HANDSHAKE_BYTES);
        let request = Request {
            command: Command::Multiplex,
            dest: TargetAddr::Ip(version_address()),
        };
        socks5::encode_client_hello_auth_request(creds, &request, &mut hello)
            .expect("credentials were validated with the configuration");
        Control::Settings(Settings {
            initial_window: window,
        })
        .encode(0, &mut hello)
        .expect("SETTINGS always encodes");
        let phase = session::Phase::Handshake {
            answers: ClientHandshake::new(creds.is_some()),
            buf: Vec::new(),
        };
        let role = Role::Client {
            next_id: 1,
            waiting: Vec::new(),
        };
        let peer = mux.addr.ip();
        let mut session = Session::new(socket, role, phase, peer, deadline);
        session.tx.raw(&hello);
        let s = self.register_session(session)?;
        if let Some(mux) = &mut self.mux {
            mux.sessions.push(s);
        }
        tracing::debug!(remote = %peer, "relay: opening a session");
        Some(s)
    }

    /// Puts a session in the slab and in epoll; counts it.
    fn register_session(&mut self, session: Session) -> Option<usize> {
        let s = self.sessions.insert(session);
        let socket = &mut self.sessions.get_mut(s).expect("just inserted").socket;
        let r = self.poll.registry().register(
            socket,
            Token(SESSION_BASE + s),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(e) = r {
            tracing::warn!(error = %e, "relay: cannot register a session");
            self.sessions.take(s);
            self.sessions.release(s);
            return None;
        }
        Counters::add(&self.counters().sessions_opened, 1);
        self.mark_dirty(s);
        Some(s)
    }

    /// Makes `conn` a new stream of session `s`: OPEN (with the destination)
    /// is queued, and the client's bytes may follow at once.
    fn attach(&mut self, key: usize, conn: &mut Conn, s: usize) {
        let window = self.window();
        let session = self.sessions.get_mut(s).expect("an open session");
        let id = session.allocate_id();
        let dest = conn.dest.clone().expect("destination known");
        session.tx.control(id, &Control::Open(dest));
        session.streams.insert(id, key);
        let early = std::mem::take(&mut conn.early);
        conn.stream = Some(Stream::new(s, id, session.peer_window, window, early));
        conn.phase = Phase::Tunnel;
        Counters::add(&self.counters().multiplexed, 1);
        self.mark_dirty(s);
    }

    /// Remote role: the SOCKS5 connection of `conn` becomes a session; the
    /// success reply and our SETTINGS go out, and `leftover` (frames that
    /// came with the request) is read first.
    pub(super) fn become_session(&mut self, key: usize, mut conn: Conn, leftover: Vec<u8>) {
        let mut socket = conn.client.take().expect("a SOCKS5 client");
        let (spec, peer) = (conn.spec, conn.admission.client);
        self.remove(key, conn);
        if let Err(e) = self.poll.registry().deregister(&mut socket) {
            tracing::warn!(error = %e, "relay: cannot move a connection to a session");
            return;
        }
        listeners::prepare_session_socket(&socket, self.session_receive_buffer());
        let role = Role::Server { spec, last_id: 0 };
        let deadline = self.now + self.shared.engine.handshake_timeout();
        let mut session = Session::new(socket, role, session::Phase::Settings, peer, deadline);
        let mut answer = Vec::new();
        socks5::encode_reply(ReplyCode::Succeeded, Some(version_address()), &mut answer);
        session.tx.raw(&answer);
        let settings = Control::Settings(Settings {
            initial_window: self.window(),
        });
        session.tx.control(0, &settings);
        session.rx.preload(&leftover);
        if self.draining {
            session.going_away = true;
        }
        let Some(s) = self.register_session(session) else {
            return;
        };
        tracing::debug!(client = %peer, "relay: session opened");
        // The leftover frames raise no readiness event: read them now.
        self.session_event(s);
    }

    /// A session's socket is ready (or its turn came again).
    pub(super) fn session_event(&mut self, s: usize) {
        if let Some(x) = self.sessions.get(s) {
            self.handling = Handling::Session {
                key: s,
                peer: x.peer,
            };
        }
        self.flush_session(s);
        match self.read_session(s) {
            Ok(()) => {}
            Err(ReadError::Gone(why)) => self.close_session(s, &why),
            Err(ReadError::Protocol(why)) => {
                Counters::add(&self.counters().session_errors, 1);
                if let Some(x) = self.sessions.get(s) {
                    tracing::warn!(peer = %x.peer, streams = x.streams.len(), "relay: the other relay broke the protocol: {why}");
                }
                self.close_session(s, &why);
            }
        }
    }

    /// Reads the session: the handshake answers (client), then frames,
    /// each handed to its stream at once.
    fn read_session(&mut self, s: usize) -> Result<(), ReadError> {
        let Some(session) = self.sessions.get_mut(s) else {
            return Ok(());
        };
        if let session::Phase::Handshake { answers, buf } = &mut session.phase {
            let eof = read_some(&mut session.socket, buf, SESSION_HANDSHAKE_BYTES)
                .map_err(|e| ReadError::Gone(format!("reading the handshake: {e}")))?;
            match answers.advance(buf) {
                Ok(Progress::NeedMore) if eof => {
                    return Err(ReadError::Gone("closed during the handshake".into()));
                }
                Ok(Progress::NeedMore) => return Ok(()),
                Ok(Progress::Done(bound, used)) => {
                    if bound.port() != mux::VERSION {
                        return Err(ReadError::Protocol(format!(
                            "the remote relay speaks version {}",
                            bound.port()
                        )));
                    }
                    let leftover = buf.split_off(used);
                    session.phase = session::Phase::Settings;
                    session.rx.preload(&leftover);
                }
                Err(e) => {
                    let refused = e.reply == ReplyCode::CommandNotSupported;
                    if refused {
                        if let Some(mux) = &mut self.mux {
                            mux.failed(self.now, RETRY_AFTER_REFUSAL);
                        }
                        tracing::info!(
                            "relay: the remote relay does not multiplex; \
                             one connection to it per client connection"
                        );
                    }
                    return Err(ReadError::Gone(format!(
                        "the remote relay refused the session: {e}"
                    )));
                }
            }
        }
        self.read_frames(s)
    }

    fn read_frames(&mut self, s: usize) -> Result<(), ReadError> {
        let Some(session) = self.sessions.get_mut(s) else {
            return Ok(());
        };
        session.rx.refill(SESSION_READ_BUDGET);
        loop {
            let Some(session) = self.sessions.get_mut(s) else {
                return Ok(());
            };
            let fd = session.socket.as_raw_fd();
            let Session {
                rx, tx, streams, ..
            } = session;
            let counters = &self.shared.counters[self.idx];
            let (stream_id, outcome) = match rx.next(fd) {
                Err(RxError::Io(e)) => {
                    return Err(ReadError::Gone(format!("reading the session: {e}")));
                }
                Err(RxError::Protocol(e)) => return Err(ReadError::Protocol(e.to_string())),
                Ok(None) => {
                    if rx.budget_spent() {
                        self.session_requeue.push(s);
                    }
                    break;
                }
                Ok(Some(RxEvent::Closed)) => {
                    return Err(ReadError::Gone("the other relay closed the session".into()));
                }
                Ok(Some(RxEvent::Control { stream, control })) => {
                    self.on_control(s, stream, control)
                        .map_err(ReadError::Protocol)?;
                    self.mark_dirty(s);
                    continue;
                }
                Ok(Some(RxEvent::Data { stream, bytes })) => {
                    // A stream that is gone drops its last bytes.
                    let Some(conn) = streams.get(&stream).and_then(|&k| self.conns.get_mut(k))
                    else {
                        continue;
                    };
                    let socket = conn.stream_socket();
                    let local = conn.client.is_some();
                    let st = conn.stream.as_mut().expect("a mapped stream");
                    let r = st.receive(bytes, socket, tx);
                    if let Ok(n) = &r {
                        count_inbound(counters, local, *n);
                        conn.last_active = self.now;
                    }
                    (stream, r.map(|_| ()))
                }
                Ok(Some(RxEvent::Splice { stream })) => {
                    let Some(conn) = streams.get(&stream).and_then(|&k| self.conns.get_mut(k))
                    else {
                        rx.declined(false);
                        continue;
                    };
                    let socket = conn.stream_socket();
                    let local = conn.client.is_some();
                    let st = conn.stream.as_mut().expect("a mapped stream");
                    let r = st.splice_in(rx, fd, socket, tx, &mut self.pool);
                    match r {
                        Ok(Spliced::Moved { written }) => {
                            count_inbound(counters, local, written);
                            conn.last_active = self.now;
                        }
                        Ok(Spliced::WouldBlock) => rx.declined(true),
                        Ok(Spliced::Declined) | Err(_) => rx.declined(false),
                    }
                    (stream, r.map(|_| ()))
                }
            };
            self.mark_dirty(s);
            if self.sessions.get(s).is_some_and(|x| x.rx.in_bulk()) {
                self.mark_busy(s);
            }
            match outcome {
                Ok(()) => {}
                Err(StreamError::Window) => {
                    return Err(ReadError::Protocol(format!(
                        "the other relay overran the window of stream {stream_id}"
                    )));
                }
                Err(StreamError::Socket(e)) => {
                    if let Some(&key) = self.sessions.get(s).and_then(|x| x.streams.get(&stream_id))
                    {
                        self.fail_key(key, Failure::io(&e));
                    }
                }
            }
        }
        Ok(())
    }

    /// A control frame for `id` on session `s`.
    fn on_control(&mut self, s: usize, id: u32, control: Control) -> Result<(), String> {
        tracing::trace!(session = s, stream = id, ?control, "relay: frame");
        let session = self.sessions.get_mut(s).expect("the session being read");
        let key = session.streams.get(&id).copied();
        if matches!(session.phase, session::Phase::Settings)
            != matches!(control, Control::Settings(_))
        {
            return Err("SETTINGS must be the first frame, and only the first".into());
        }
        match control {
            Control::Settings(settings) => {
                session.peer_window = settings.initial_window;
                session.phase = session::Phase::Open;
                tracing::debug!(peer = %session.peer, "relay: session open");
                if let (Role::Client { .. }, Some(mux)) = (&session.role, &mut self.mux) {
                    mux.failures = 0;
                    mux.retry_at = None;
                }
                self.session_ready(s);
            }
            Control::GoAway { .. } => session.going_away = true,
            Control::Open(dest) => return self.open_remote_stream(s, id, dest),
            Control::Reply { code, .. } => {
                if let Some(key) = key {
                    self.stream_replied(key, code);
                }
            }
            Control::Fin => {
                if let Some(key) = key {
                    self.with_stream(key, Stream::fin_received);
                    self.drive(key);
                }
            }
            Control::Reset(code) => {
                if let Some(key) = key {
                    self.with_stream(key, |st| st.ended = true);
                    self.fail_key(
                        key,
                        Failure::new(
                            ErrorKind::Io,
                            format!("the other relay reset the stream ({code})"),
                        ),
                    );
                }
            }
            Control::Window(n) => {
                if let Some(key) = key {
                    let mut resume = false;
                    self.with_stream(key, |st| {
                        resume = st.out_of_credit();
                        st.credit(n);
                    });
                    if resume {
                        self.drive(key);
                    }
                }
            }
        }
        Ok(())
    }

    fn with_stream(&mut self, key: usize, f: impl FnOnce(&mut Stream)) {
        if let Some(st) = self.conns.get_mut(key).and_then(|c| c.stream.as_mut()) {
            f(st);
        }
    }

    /// Local role: the remote relay's answer to a stream's OPEN.
    fn stream_replied(&mut self, key: usize, code: ReplyCode) {
        let Some(mut conn) = self.conns.take(key) else {
            return;
        };
        let next = match conn.stream.as_mut() {
            Some(st) if code == ReplyCode::Succeeded && !st.replied => {
                st.replied = true;
                let mut answer = Vec::new();
                match conn.answer {
                    Answer::Socks5 => socks5::encode_reply(ReplyCode::Succeeded, None, &mut answer),
                    Answer::HttpConnect => {
                        answer.extend_from_slice(crate::http::CONNECT_ESTABLISHED)
                    }
                    Answer::Nothing | Answer::HttpForward | Answer::MuxReply => {}
                }
                st.answer_first(&answer);
                Counters::add(&self.counters().relayed, 1);
                self.step(key, &mut conn)
            }
            Some(st) => {
                st.ended = true;
                Err(Failure::upstream(code, format!("remote relay: {code}")))
            }
            None => Ok(Next::Keep),
        };
        self.finish(key, conn, next);
    }

    /// Remote role: a new stream to `dest`, connected like a CONNECT.
    fn open_remote_stream(&mut self, s: usize, id: u32, dest: TargetAddr) -> Result<(), String> {
        let (spec, peer, peer_window, refuse) = {
            let session = self.sessions.get_mut(s).expect("the session being read");
            let Role::Server { spec, last_id } = &mut session.role else {
                return Err("the remote relay sent OPEN".into());
            };
            if id <= *last_id {
                return Err(format!("stream id {id} reused or out of order"));
            }
            *last_id = id;
            let full = session.streams.len() >= self.shared.engine.max_streams_per_session;
            (
                *spec,
                session.peer,
                session.peer_window,
                session.going_away || full,
            )
        };
        let mut stream = Stream::new(s, id, peer_window, self.window(), Vec::new());
        let admission = (!refuse)
            .then(|| self.admit_as(Slot::Stream, peer))
            .flatten();
        let Some(admission) = admission else {
            self.reply_on_session(&mut stream, ReplyCode::GeneralFailure, None);
            stream.release(&mut self.pool);
            return Ok(());
        };
        Counters::add(&self.counters().multiplexed, 1);
        let mut conn = self.new_conn(
            spec,
            admission,
            Phase::Resolving { result: None },
            Answer::MuxReply,
        );
        conn.dest = Some(dest);
        conn.stream = Some(stream);
        let key = self.conns.insert(conn);
        if let Some(session) = self.sessions.get_mut(s) {
            session.streams.insert(id, key);
        }
        let mut conn = self.conns.take(key).expect("just inserted");
        let next = self
            .begin_connect(key, &mut conn)
            .and_then(|()| self.step(key, &mut conn));
        self.finish(key, conn, next);
        Ok(())
    }

    /// Queues a REPLY for `stream` on its session.
    pub(super) fn reply_on_session(
        &mut self,
        stream: &mut Stream,
        code: ReplyCode,
        bound: Option<SocketAddr>,
    ) {
        if code != ReplyCode::Succeeded {
            stream.ended = true;
        }
        let bound = bound.map_or_else(
            || TargetAddr::Ip(SocketAddr::from(([0, 0, 0, 0], 0))),
            TargetAddr::Ip,
        );
        if let Some(session) = self.sessions.get_mut(stream.session) {
            session
                .tx
                .control(stream.id, &Control::Reply { code, bound });
            self.mark_dirty(stream.session);
        }
    }

    /// The data phase of a multiplexed connection: bytes waiting for the
    /// socket first, then the socket's bytes towards the session.
    pub(super) fn tunnel_step(&mut self, key: usize, conn: &mut Conn) -> Result<Next, Failure> {
        let socket = conn.stream_socket().expect("a tunnel has its socket");
        let local = conn.client.is_some();
        let stream = conn.stream.as_mut().expect("a tunnel has a stream");
        let s = stream.session;
        let Some(session) = self.sessions.get_mut(s) else {
            return Err(Failure::new(ErrorKind::Upstream, "the session closed"));
        };
        let session_fd = session.socket.as_raw_fd();
        let counters = &self.shared.counters[self.idx];
        let written = stream
            .flush_inbound(socket, &mut session.tx, &mut self.pool)
            .map_err(|e| Failure::io(&e))?;
        count_inbound(counters, local, written);
        let sent = stream
            .send(
                socket,
                &mut session.tx,
                session_fd,
                &mut self.pool,
                READ_BUDGET,
                session::splice_frame_limit(session.streams.len()),
            )
            .map_err(|e| Failure::io(&e))?;
        let outbound = if local {
            &counters.bytes_up
        } else {
            &counters.bytes_down
        };
        Counters::add(outbound, sent.bytes);
        if written + sent.bytes > 0 {
            conn.last_active = self.now;
        }
        if let Some(why) = sent.fell_back {
            Counters::add(&counters.splice_fallbacks, 1);
            tracing::warn!("relay: {why}; this stream copies through a buffer");
        }
        if sent.blocked && !stream.queued {
            stream.queued = true;
            session.blocked.push_back(key);
        }
        if sent.budget_exhausted {
            self.requeue.push(key);
        }
        let bulk = stream.is_bulk() && sent.bytes > 0;
        self.mark_dirty(s);
        if bulk {
            self.mark_busy(s);
        }
        if stream.inbound_finished() {
            if stream.outbound_finished() {
                // The close sends the socket's FIN.
                stream.ended = true;
                return Ok(Next::Close);
            }
            stream.shut_socket(socket).map_err(|e| Failure::io(&e))?;
        }
        Ok(Next::Keep)
    }

    /// A stream leaves its session: unmapped, and reset unless the peer
    /// knows it is over.
    pub(super) fn detach_stream(&mut self, stream: Stream) {
        if let Some(session) = self.sessions.get_mut(stream.session) {
            let key = session.streams.remove(&stream.id);
            if stream.queued {
                session.blocked.retain(|&k| Some(k) != key);
            }
            if !stream.ended {
                session
                    .tx
                    .control(stream.id, &Control::Reset(ReplyCode::GeneralFailure));
            }
            self.mark_dirty(stream.session);
        }
        stream.release(&mut self.pool);
    }

    /// A bulk frame went through session `s`: it is busy for a while. A
    /// local relay that has no other session to give new streams opens one
    /// now, so that it is ready when they come.
    fn mark_busy(&mut self, s: usize) {
        let now = self.now;
        let Some(session) = self.sessions.get_mut(s) else {
            return;
        };
        let was_busy = session.is_busy(now);
        session.busy_until = now + BUSY_HOLD;
        let Some(mux) = &self.mux else { return };
        if was_busy || !matches!(session.role, Role::Client { .. }) {
            return;
        }
        let spare = mux.sessions.iter().any(|&k| {
            self.sessions
                .get(k)
                .is_some_and(|x| x.is_starting() || (x.accepts_streams() && !x.is_busy(now)))
        });
        if !spare && mux.sessions.len() < mux.max_sessions {
            self.open_client_session();
        }
    }

    /// Session `s` has frames to write: flushed at the end of the round.
    fn mark_dirty(&mut self, s: usize) {
        if let Some(session) = self.sessions.get_mut(s) {
            session.last_active = self.now;
            if !session.dirty {
                session.dirty = true;
                self.flush_list.push(s);
            }
        }
    }

    /// Writes every session with frames queued this round.
    pub(super) fn flush_sessions(&mut self) {
        self.for_each_listed(|w| &mut w.flush_list, Worker::flush_session);
    }

    fn flush_session(&mut self, s: usize) {
        let Some(session) = self.sessions.get_mut(s) else {
            return;
        };
        session.dirty = false;
        session.tx.flush(session.socket.as_raw_fd(), &mut self.pool);
        if let Some(e) = session.tx.take_error() {
            self.close_session(s, &format!("writing to the other relay: {e}"));
            return;
        }
        // Streams waiting for room take turns, the longest waiting first;
        // one that blocks again goes to the back of the line.
        for _ in 0..session.blocked.len() {
            let Some(session) = self.sessions.get_mut(s) else {
                return;
            };
            if !session.tx.has_splice_room() {
                break;
            }
            let Some(key) = session.blocked.pop_front() else {
                break;
            };
            if let Some(st) = self.conns.get_mut(key).and_then(|c| c.stream.as_mut()) {
                st.queued = false;
            }
            self.drive(key);
        }
        let Some(session) = self.sessions.get(s) else {
            return;
        };
        let retired = matches!(session.role, Role::Client { .. })
            && session.going_away
            && session.streams.is_empty()
            && session.tx.is_idle();
        if retired {
            self.close_session(s, "retired: no streams left");
        }
    }

    /// Closes a session: its streams fail, connections still waiting for
    /// it connect the usual way.
    pub(super) fn close_session(&mut self, s: usize, why: &str) {
        let Some(session) = self.sessions.take(s) else {
            return;
        };
        self.sessions.release(s);
        Counters::add(&self.counters().sessions_closed, 1);
        let side = match session.role {
            Role::Client { .. } => "to the remote relay",
            Role::Server { .. } => "from a local relay",
        };
        tracing::debug!(peer = %session.peer, streams = session.streams.len(), "relay: session {side} closed: {why}");
        if let Some(mux) = &mut self.mux
            && matches!(session.role, Role::Client { .. })
        {
            mux.sessions.retain(|&k| k != s);
            if session.is_starting() {
                mux.failed(self.now, Duration::ZERO);
            }
        }
        for (_, key) in session.streams {
            let Some(mut conn) = self.conns.take(key) else {
                continue;
            };
            if let Some(st) = &mut conn.stream {
                st.ended = true;
            }
            let f = Failure::new(
                ErrorKind::Upstream,
                format!("session with the other relay: {why}"),
            );
            self.finish(key, conn, Err(f));
        }
        if let Role::Client { waiting, .. } = session.role {
            let addr = self.mux.as_ref().map(|m| m.addr);
            for (key, serial) in waiting {
                let Some(mut conn) = self.take_waiting(key, serial) else {
                    continue;
                };
                let next = match addr {
                    Some(a) => self
                        .start_connect(key, &mut conn, vec![a])
                        .map(|()| Next::Keep),
                    None => Err(Failure::new(ErrorKind::Upstream, "no remote relay")),
                };
                self.finish(key, conn, next);
            }
        }
    }

    /// Takes connection `key` out if it is still the one (`serial`) that
    /// waits for a session.
    fn take_waiting(&mut self, key: usize, serial: u64) -> Option<Conn> {
        let conn = self.conns.get(key)?;
        if conn.serial != serial || !matches!(conn.phase, Phase::AwaitingSession) {
            return None;
        }
        self.conns.take(key)
    }

    /// A client session's handshake is done: its waiting connections
    /// become streams.
    fn session_ready(&mut self, s: usize) {
        let waiting = match self.sessions.get_mut(s).map(|x| &mut x.role) {
            Some(Role::Client { waiting, .. }) => std::mem::take(waiting),
            _ => return,
        };
        for (key, serial) in waiting {
            let Some(mut conn) = self.take_waiting(key, serial) else {
                continue;
            };
            self.attach(key, &mut conn, s);
            let next = self.step(key, &mut conn);
            self.finish(key, conn, next);
        }
    }

    /// Draining, remote role: tells every session's client to open no more
    /// streams here.
    pub(super) fn go_away(&mut self) {
        for s in self.sessions.keys() {
            let session = self.sessions.get_mut(s).expect("listed");
            if let Role::Server { last_id, .. } = session.role {
                session.going_away = true;
                session.tx.control(
                    0,
                    &Control::GoAway {
                        last_stream: last_id,
                    },
                );
                self.mark_dirty(s);
            }
        }
    }

    /// Closes sessions whose handshake is late, and spare sessions (a
    /// local worker's beyond its first) that carried no stream for a while.
    pub(super) fn sweep_sessions(&mut self) {
        let now = self.now;
        let (mut open, spare_idle) = self
            .mux
            .as_ref()
            .map_or((0, Duration::MAX), |m| (m.sessions.len(), m.spare_idle));
        for s in self.sessions.keys() {
            let Some(x) = self.sessions.get(s) else {
                continue;
            };
            if x.is_starting() && now > x.deadline {
                self.close_session(s, "handshake timed out");
            } else if matches!(x.role, Role::Client { .. })
                && open > 1
                && x.streams.is_empty()
                && x.tx.is_idle()
                && now.duration_since(x.last_active) > spare_idle
            {
                open -= 1;
                self.close_session(s, "a spare session, idle");
            }
        }
    }
}

/// Counts bytes from the peer written to the stream's socket: towards the
/// client on the local relay, towards the destination on the remote.
fn count_inbound(counters: &Counters, local: bool, n: u64) {
    let counter = if local {
        &counters.bytes_down
    } else {
        &counters.bytes_up
    };
    Counters::add(counter, n);
}
