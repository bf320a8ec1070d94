//! What a session's events do to the worker's connections: its socket's
//! readiness (the handshake answers, then frames handed to their streams),
//! a client session becoming ready, flushing and unblocking streams, and a
//! session closing (its streams fail; connections still waiting for it
//! connect the usual way).

use std::os::fd::AsRawFd;

use mio::net::TcpStream;

use super::answer::Failure;
use super::conn::{Conn, Next, Origin, Phase, count_inbound, read_some};
use super::sessions::{
    HANDSHAKE_LATE, RETRY_AFTER_CLOSE, RETRY_AFTER_REFUSAL, SESSION_HANDSHAKE_BYTES, stream_state,
};
use super::{Handling, Slot, Worker};
use crate::mux::{self, Control};
use crate::relay::seal::Channel;
use crate::relay::session::{self, Role, RxError, RxEvent, Session};
use crate::relay::stats::{Counters, ErrorKind};
use crate::relay::stream::{Spliced, Stream, StreamError};
use crate::socks5::{Progress, ReplyCode, TargetAddr};

/// Client of an encrypted session: reads the remote's answer to the first
/// handshake message; once it is there, the channel is set up and the
/// SOCKS5 request goes out through it.
fn open_channel(session: &mut Session) -> Result<(), ReadError> {
    let session::Phase::Sealing { initiator, buf, .. } = &mut session.phase else {
        return Ok(());
    };
    let eof = read_some(&mut session.socket, buf, SESSION_HANDSHAKE_BYTES)
        .map_err(|e| ReadError::Gone(format!("reading the encryption handshake: {e}")))?;
    let (channel, used) = match initiator.finish(buf) {
        Ok(Some(done)) => done,
        Ok(None) if eof => {
            return Err(ReadError::Gone(
                "closed during the encryption handshake (does the remote relay have a key?)".into(),
            ));
        }
        Ok(None) => return Ok(()),
        Err(e) => {
            return Err(ReadError::Gone(format!(
                "encryption handshake with the remote relay: {e} (is remote_key its public key?)"
            )));
        }
    };
    let leftover = buf.split_off(used);
    let phase = std::mem::replace(&mut session.phase, session::Phase::Frames);
    let session::Phase::Sealing { hello, answers, .. } = phase else {
        return Ok(());
    };
    let Channel {
        sealer, mut opener, ..
    } = channel;
    opener.preload(&leftover);
    session.tx.seal_with(sealer);
    session.rx.seal_with(opener);
    session.tx.raw(&hello);
    session.phase = session::Phase::Handshake {
        answers,
        buf: Vec::new(),
    };
    tracing::debug!(remote = %session.peer, "relay: encrypted channel to the remote relay");
    Ok(())
}

/// Reads (or splices) per session wakeup before others get a turn.
const SESSION_READ_BUDGET: usize = 64;

/// Why a session's input stopped for good.
enum ReadError {
    /// The other relay broke the protocol (counted: a bug or an attack).
    Protocol(String),
    /// The socket failed or closed, or the handshake was refused.
    Gone(String),
}

impl Worker {
    /// Remote role: the SOCKS5 client of connection `key` asked for a
    /// session; its `socket` becomes one, and `leftover` (frames that came
    /// with the request) is read at once.
    pub(super) fn become_session(
        &mut self,
        key: usize,
        conn: Conn,
        socket: TcpStream,
        leftover: &[u8],
        channel: Option<Channel>,
    ) {
        let (spec, peer) = (conn.spec, conn.admission.client);
        self.remove(key, conn);
        let ctx = &mut self.ctx;
        let accepted = ctx
            .sessions
            .accept(socket, spec, peer, leftover, channel, ctx.now);
        if let Some(s) = accepted {
            // The leftover frames raise no readiness event: read them now.
            self.session_event(s);
        }
    }

    /// A session's socket is ready (or its turn came again).
    pub(super) fn session_event(&mut self, s: usize) {
        if let Some(x) = self.ctx.sessions.get(s) {
            self.handling = Handling::Session {
                key: s,
                peer: x.peer,
            };
        }
        self.flush_session(s);
        match self.read_session(s) {
            Ok(()) => {}
            Err(ReadError::Gone(why)) => self.close_session(s, &why, true),
            Err(ReadError::Protocol(why)) => {
                Counters::add(&self.counters().session_errors, 1);
                if let Some(x) = self.ctx.sessions.get(s) {
                    tracing::warn!(peer = %x.peer, streams = x.streams.len(), "relay: the other relay broke the protocol: {why}");
                }
                self.close_session(s, &why, true);
            }
        }
    }

    /// Reads the session: the handshake answers (client), then frames,
    /// each handed to its stream at once.
    fn read_session(&mut self, s: usize) -> Result<(), ReadError> {
        let now = self.ctx.now;
        let Some(session) = self.ctx.sessions.get_mut(s) else {
            return Ok(());
        };
        if let session::Phase::Sealing { .. } = session.phase {
            open_channel(session)?;
            self.ctx.sessions.mark_dirty(s, now);
        }
        let Some(session) = self.ctx.sessions.get_mut(s) else {
            return Ok(());
        };
        if let session::Phase::Handshake { answers, buf } = &mut session.phase {
            let fd = session.socket.as_raw_fd();
            let read = match session.rx.opener() {
                Some(opener) => opener.read_to(fd, buf, SESSION_HANDSHAKE_BYTES),
                None => read_some(&mut session.socket, buf, SESSION_HANDSHAKE_BYTES),
            };
            let eof = read.map_err(|e| ReadError::Gone(format!("reading the handshake: {e}")))?;
            match answers.advance(buf) {
                Ok(Progress::NeedMore) if eof && answers.awaits_reply() => {
                    self.ctx.sessions.refused(s, RETRY_AFTER_CLOSE, now);
                    tracing::info!(
                        "relay: the remote relay closed on the session request; \
                         one connection to it per client connection for a while"
                    );
                    return Err(ReadError::Gone(
                        "the remote relay closed on the session request".into(),
                    ));
                }
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
                    session.phase = session::Phase::Frames;
                    session.rx.preload(&leftover);
                }
                Err(e) => {
                    if e.reply == ReplyCode::CommandNotSupported {
                        self.ctx.sessions.refused(s, RETRY_AFTER_REFUSAL, now);
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
        let Some(session) = self.ctx.sessions.get_mut(s) else {
            return Ok(());
        };
        session.rx.refill(SESSION_READ_BUDGET);
        loop {
            let ctx = &mut self.ctx;
            let Some(session) = ctx.sessions.slab.get_mut(s) else {
                return Ok(());
            };
            let fd = session.socket.as_raw_fd();
            let Session {
                rx,
                tx,
                streams,
                role,
                last_heard,
                ..
            } = session;
            let counters = &ctx.shared.counters[ctx.worker];
            let event = match rx.next(fd) {
                Err(RxError::Io(e)) => {
                    return Err(ReadError::Gone(format!("reading the session: {e}")));
                }
                Err(RxError::Protocol(e)) => return Err(ReadError::Protocol(e.to_string())),
                Ok(None) => {
                    if rx.budget_spent() {
                        ctx.sessions.requeue.push(s);
                    }
                    break;
                }
                Ok(Some(event)) => event,
            };
            // The peer is alive: a frame (or a payload to splice) came in.
            *last_heard = ctx.now;
            let (stream_id, outcome) = match event {
                RxEvent::Closed => {
                    return Err(ReadError::Gone("the other relay closed the session".into()));
                }
                RxEvent::Control { stream, control } => {
                    // Liveness frames do not make a session active (an
                    // idle spare still closes).
                    let liveness = matches!(control, Control::Ping(_) | Control::Pong(_));
                    self.on_control(s, stream, control)
                        .map_err(ReadError::Protocol)?;
                    if liveness {
                        self.ctx.sessions.queue_flush(s);
                    } else {
                        self.ctx.sessions.mark_dirty(s, self.ctx.now);
                    }
                    continue;
                }
                RxEvent::Datagram { flow, peer, bytes } => {
                    let Role::Server { spec } = *role else {
                        self.lan.answer(s, flow, &peer, bytes, counters, ctx.now);
                        continue;
                    };
                    let mut buf = std::mem::take(&mut ctx.udp_buf);
                    let payload = buf.copy_of(bytes);
                    self.carried
                        .datagram(s, spec, flow, peer, payload, &mut self.ctx);
                    self.ctx.udp_buf = buf;
                    continue;
                }
                RxEvent::Data { stream, bytes } => {
                    // A stream that is gone drops its last bytes.
                    let Some(conn) = streams.get(&stream).and_then(|&k| self.conns.get_mut(k))
                    else {
                        continue;
                    };
                    let Some((st, socket, local)) = conn.phase.stream_mut() else {
                        continue;
                    };
                    let r = st.receive(bytes, socket.map(AsRawFd::as_raw_fd), tx);
                    if let Ok(n) = &r {
                        count_inbound(counters, local, *n);
                        conn.last_active = ctx.now;
                    }
                    (stream, r.map(|_| ()))
                }
                RxEvent::Splice { stream } => {
                    let conn = streams.get(&stream).and_then(|&k| self.conns.get_mut(k));
                    let Some((st, socket, local)) = conn.and_then(|c| c.phase.stream_mut()) else {
                        rx.declined(false);
                        continue;
                    };
                    let socket = socket.map(AsRawFd::as_raw_fd);
                    let r = st.splice_in(rx, fd, socket, tx, &mut ctx.pool);
                    match r {
                        Ok(Spliced::Moved { written }) => count_inbound(counters, local, written),
                        Ok(Spliced::WouldBlock) => rx.declined(true),
                        Ok(Spliced::Declined) | Err(_) => rx.declined(false),
                    }
                    if let Some(conn) = streams.get(&stream).and_then(|&k| self.conns.get_mut(k)) {
                        conn.last_active = ctx.now;
                    }
                    (stream, r.map(|_| ()))
                }
            };
            let ctx = &mut self.ctx;
            ctx.sessions.mark_dirty(s, ctx.now);
            if ctx.sessions.get(s).is_some_and(|x| x.rx.in_bulk()) {
                ctx.sessions.mark_busy(s, ctx.now);
            }
            match outcome {
                Ok(()) => {}
                Err(StreamError::Protocol(e)) => {
                    return Err(ReadError::Protocol(format!("stream {stream_id}: {e}")));
                }
                Err(StreamError::Socket(e)) => {
                    if let Some(key) = self.stream_key(s, stream_id) {
                        self.fail_key(key, Failure::io(&e));
                    }
                }
            }
        }
        Ok(())
    }

    /// The connection of stream `id` of session `s`.
    fn stream_key(&self, s: usize, id: u32) -> Option<usize> {
        self.ctx.sessions.get(s)?.streams.get(&id).copied()
    }

    /// A control frame for `id` on session `s`.
    fn on_control(&mut self, s: usize, id: u32, control: Control) -> Result<(), String> {
        tracing::trace!(session = s, stream = id, ?control, "relay: frame");
        let Some(session) = self.ctx.sessions.get_mut(s) else {
            return Ok(());
        };
        let key = session.streams.get(&id).copied();
        session
            .state
            .check_order(Some(&control))
            .map_err(|e| e.to_string())?;
        match control {
            Control::Settings(settings) => {
                session
                    .state
                    .on_settings(&settings)
                    .map_err(|e| e.to_string())?;
                tracing::debug!(peer = %session.peer, "relay: session open");
                if matches!(session.role, Role::Client { .. }) {
                    self.ctx.sessions.opened(s);
                }
                self.session_ready(s);
            }
            Control::GoAway { .. } => session.state.on_go_away(),
            Control::Ping(v) => {
                session.tx.control(0, &Control::Pong(v));
                self.ctx.sessions.queue_flush(s);
            }
            Control::Pong(v) => self.ctx.sessions.pong(s, v),
            Control::Open(dest) => return self.open_remote_stream(s, id, dest),
            Control::Reply { code, .. } => {
                if let Some(key) = key {
                    self.with_conn(key, |conn, ctx| conn.stream_replied(key, code, ctx));
                }
            }
            Control::Fin => {
                if let Some(key) = key {
                    self.with_stream(key, |st| st.state.on_fin());
                    self.drive(key);
                }
            }
            Control::Reset(code) => {
                if let Some(key) = key {
                    self.with_stream(key, |st| st.state.on_reset());
                    let f = Failure::new(
                        ErrorKind::Io,
                        format!("the other relay reset the stream ({code})"),
                    );
                    self.fail_key(key, f);
                }
            }
            Control::Blocked => {
                if let Some(key) = key {
                    let mut grown = None;
                    self.with_stream(key, |st| {
                        grown = st.state.on_blocked().map(|w| (w, st.state.window()));
                    });
                    if let Some((increment, window)) = grown {
                        self.ctx.sessions.grow_window(s, id, &increment, window);
                    }
                }
            }
            Control::Window(n) => {
                if let Some(key) = key {
                    let mut credited = Ok(false);
                    self.with_stream(key, |st| {
                        let resume = st.state.out_of_credit();
                        credited = st.state.on_window(n).map(|()| resume);
                    });
                    if credited.map_err(|e| format!("stream {id}: {e}"))? {
                        self.drive(key);
                    }
                }
            }
        }
        Ok(())
    }

    fn with_stream(&mut self, key: usize, f: impl FnOnce(&mut Stream)) {
        if let Some((st, _, _)) = self.conns.get_mut(key).and_then(|c| c.phase.stream_mut()) {
            f(st);
        }
    }

    /// Takes connection `key` out, runs `f` on it, and puts it back (or
    /// closes it) as `f` says.
    fn with_conn(&mut self, key: usize, f: impl FnOnce(&mut Conn, &mut super::Ctx) -> Next) {
        let Some(mut conn) = self.conns.take(key) else {
            return;
        };
        let next = f(&mut conn, &mut self.ctx);
        self.finish(key, conn, next);
    }

    /// Takes connection `key` out and fails it.
    fn fail_key(&mut self, key: usize, f: Failure) {
        self.with_conn(key, |conn, ctx| conn.fail_now(f, ctx));
    }

    /// Remote role: a new stream to `dest`, connected like a CONNECT.
    fn open_remote_stream(&mut self, s: usize, id: u32, dest: TargetAddr) -> Result<(), String> {
        let max_streams = self.ctx.shared.engine.max_streams_per_session;
        let Some(session) = self.ctx.sessions.get_mut(s) else {
            return Ok(());
        };
        let Role::Server { spec } = session.role else {
            return Err("the remote relay sent OPEN".into());
        };
        let accepted = session
            .state
            .accept_stream(id)
            .map_err(|e| format!("stream {id}: {e}"))?;
        let refuse = !accepted || session.streams.len() >= max_streams;
        let (peer, peer_window) = (session.peer, session.state.peer_window());
        let state = stream_state(&self.ctx.shared.engine, peer_window);
        let mut stream = Stream::new(s, id, state, Vec::new());
        let admission = (!refuse)
            .then(|| self.ctx.admit_as(Slot::Stream, peer))
            .flatten();
        let ctx = &mut self.ctx;
        let Some(admission) = admission else {
            ctx.sessions
                .reply(&mut stream, ReplyCode::GeneralFailure, None, ctx.now);
            stream.release(&mut ctx.pool);
            return Ok(());
        };
        Counters::add(&ctx.counters().multiplexed, 1);
        let conn = Conn::new(
            ctx,
            spec,
            admission,
            Phase::Closed,
            super::answer::Answer::MuxReply,
        );
        let key = self.conns.insert(conn);
        if let Some(session) = self.ctx.sessions.get_mut(s) {
            session.streams.insert(id, key);
        }
        self.with_conn(key, |conn, ctx| {
            conn.start(key, Origin::Stream(stream), dest, ctx)
        });
        Ok(())
    }

    /// A client session's handshake is done: its waiting connections
    /// become streams.
    fn session_ready(&mut self, s: usize) {
        let waiting = match self.ctx.sessions.get_mut(s).map(|x| &mut x.role) {
            Some(Role::Client { waiting, .. }) => std::mem::take(waiting),
            _ => return,
        };
        for (key, serial) in waiting {
            if self.is_waiting(key, serial) {
                self.with_conn(key, |conn, ctx| conn.session_ready(key, s, ctx));
            }
        }
    }

    /// Whether connection `key` is still the one (`serial`) that waits for
    /// a session.
    fn is_waiting(&self, key: usize, serial: u64) -> bool {
        self.conns
            .get(key)
            .is_some_and(|c| c.serial == serial && matches!(c.phase, Phase::AwaitingSession { .. }))
    }

    /// Writes every session with frames queued this round.
    pub(super) fn flush_sessions(&mut self) {
        self.for_each_listed(|w| &mut w.ctx.sessions.flush_list, Worker::flush_session);
    }

    /// Writes session `s`; then streams waiting for room in it take turns,
    /// the longest waiting first (one that blocks again goes to the back of
    /// the line). A client session going away closes once it is empty.
    fn flush_session(&mut self, s: usize) {
        let ctx = &mut self.ctx;
        if let Err(e) = ctx.sessions.flush(s, &mut ctx.pool) {
            self.close_session(s, &format!("writing to the other relay: {e}"), true);
            return;
        }
        let waiting = self.ctx.sessions.get(s).map_or(0, |x| x.blocked.len());
        for _ in 0..waiting {
            let Some(session) = self.ctx.sessions.get_mut(s) else {
                return;
            };
            if !session.tx.has_splice_room() {
                break;
            }
            let Some(key) = session.blocked.pop_front() else {
                break;
            };
            self.with_stream(key, |st| st.queued = false);
            self.drive(key);
        }
        let Some(session) = self.ctx.sessions.get(s) else {
            return;
        };
        let retired = matches!(session.role, Role::Client { .. })
            && session.state.is_going_away()
            && session.streams.is_empty()
            && session.tx.is_idle();
        if retired {
            self.close_session(s, "retired: no streams left", false);
        }
    }

    /// Closes a session: its streams fail, connections still waiting for
    /// it connect another way. `failed`: the other relay failed (not a
    /// close of our choice), which counts against a remote.
    pub(super) fn close_session(&mut self, s: usize, why: &str, failed: bool) {
        let Some(session) = self
            .ctx
            .sessions
            .remove(s, failed.then_some(why), self.ctx.now)
        else {
            return;
        };
        self.carried.session_closed(s);
        self.lan.session_closed(s);
        let side = match session.role {
            Role::Client { .. } => "to the remote relay",
            Role::Server { .. } => "from a local relay",
        };
        tracing::debug!(peer = %session.peer, streams = session.streams.len(), "relay: session {side} closed: {why}");
        for (_, key) in session.streams {
            self.with_stream(key, |st| st.state.on_reset());
            let f = Failure::new(
                ErrorKind::Upstream,
                format!("session with the other relay: {why}"),
            );
            self.fail_key(key, f);
        }
        if let Role::Client { waiting, .. } = session.role {
            for (key, serial) in waiting {
                if self.is_waiting(key, serial) {
                    self.with_conn(key, |conn, ctx| conn.session_failed(key, ctx));
                }
            }
        }
    }

    /// Closes the sessions whose time is up (late handshakes, idle spares,
    /// unanswered PINGs), replaces those that miss links, (worker 0) keeps
    /// a session open to each remote relay to watch it, and fits the
    /// sessions' congestion control to their round trips.
    pub(super) fn sweep_sessions(&mut self) {
        for (s, why) in self.ctx.sessions.expired(self.ctx.now) {
            self.close_session(s, why, why == HANDSHAKE_LATE);
        }
        for s in self.ctx.sessions.replace_short(self.ctx.now) {
            self.close_session(s, "replaced: it misses links", false);
        }
        for s in self.ctx.sessions.ping(self.ctx.now) {
            self.close_session(s, "the remote relay stopped answering PINGs", true);
        }
        if self.ctx.worker == 0 {
            self.ctx.sessions.watch_remotes(self.ctx.now);
        }
        self.ctx.sessions.adapt_congestion_control(self.ctx.now);
    }
}
