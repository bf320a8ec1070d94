//! One relayed connection ([`Conn`]) and its state machine: request
//! (SOCKS5 / HTTP), resolve, connect, upstream SOCKS5 handshake or a stream
//! of a session, relay (splice), closing.
//!
//! Each [`Phase`] owns the sockets that exist in it, so the compiler says
//! which socket a phase may use. A step takes the phase by value and turns
//! it into the next ([`Turn`]); on any event it runs until each socket it
//! needs would block, which is what edge-triggered readiness requires.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use mio::Interest;
use mio::net::TcpStream;

use super::answer::{Answer, Failure};
use super::sessions::Placement;
use super::udp::Association;
use super::{Ctx, READ_BUDGET, Slot, Woken, conn_tokens};
use crate::http::{self, ProxyRequestKind};
use crate::relay::guard::Verdict;
use crate::relay::remotes::RemoteClaim;
use crate::relay::seal::{self, Channel};
use crate::relay::session;
use crate::relay::splice::Flow;
use crate::relay::stats::{Counters, ErrorKind};
use crate::relay::stream::Stream;
use crate::relay::{EngineConfig, NoRemote, ResolveRequest, Route, Shared, outbound};
use crate::socks5::{
    self, ClientHandshake, Command, Progress, ReplyCode, ServerHandshake, TargetAddr,
};
use std::time::{Duration, Instant};

/// Largest handshake buffer (a SOCKS5 handshake is at most 1,032 bytes; an
/// HTTP head at most `http::MAX_HEAD`).
const MAX_REQUEST_BUFFER: usize = http::MAX_HEAD + 4096;
/// How long a refused client gets to read our answer and close.
const CLOSING_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// Room for the remote's answers to our SOCKS5 handshake.
const UPSTREAM_ANSWER_BYTES: usize = 4096;

/// The parser of a client's request.
pub(super) enum Parser {
    Socks5(ServerHandshake),
    Http,
    /// Remote role: the first message of an encrypted channel's
    /// handshake; the SOCKS5 request follows inside the channel.
    Sealing,
}

/// Where a connection came from: what asks for the destination.
pub(super) enum Origin {
    /// An accepted socket: a LAN client, or a SOCKS5 client of the remote.
    Client(TcpStream),
    /// Remote role: a stream the peer of a session opened.
    Stream(Stream),
}

/// What is sent on a fresh connection to the upstream once it is up.
pub(super) enum Greeting {
    /// Nothing: the destination itself; data flows at once.
    None,
    /// A SOCKS5 server (the remote relay): our pipelined greeting,
    /// authentication and CONNECT.
    Socks5 { out: Vec<u8>, auth: bool },
}

/// How far a connection is, with the sockets it has then.
pub(super) enum Phase {
    /// Reading the client's SOCKS5 or HTTP request (through `channel` once
    /// a local relay set one up).
    Request {
        client: TcpStream,
        buf: Vec<u8>,
        parser: Parser,
        channel: Option<Box<Channel>>,
    },
    /// Destination known, waiting for the resolver (`result` is filled by
    /// the worker), or about to connect.
    Resolving {
        origin: Origin,
        result: Option<io::Result<Vec<SocketAddr>>>,
    },
    /// Non-blocking connect to `to` in progress; `candidates` are the next
    /// addresses to try.
    Connecting {
        origin: Origin,
        upstream: TcpStream,
        to: SocketAddr,
        candidates: Vec<SocketAddr>,
        greeting: Greeting,
    },
    /// Pipelined SOCKS5 handshake with the remote relay.
    Upstream {
        client: TcpStream,
        upstream: TcpStream,
        handshake: ClientHandshake,
        out: Vec<u8>,
        out_pos: usize,
        buf: Vec<u8>,
    },
    /// Local role: waiting for the session to the remote relay to be set
    /// up, to become one of its streams.
    AwaitingSession { client: TcpStream },
    /// Data phase between two sockets.
    Relay {
        client: TcpStream,
        upstream: TcpStream,
        up: Flow,
        down: Flow,
    },
    /// Data phase between a socket and a stream of a session: the LAN
    /// client's socket on the local relay (`local`), the destination's on
    /// the remote.
    Tunnel {
        socket: TcpStream,
        stream: Stream,
        local: bool,
    },
    /// Remote role: a SOCKS5 UDP association, alive while its client keeps
    /// `control` (the connection it asked on) open.
    Associated {
        control: TcpStream,
        udp: Box<Association>,
    },
    /// Failed: the answer is on its way, reading until the client closes.
    Closing { client: TcpStream },
    /// Over (and, for a moment, while a phase turns into the next).
    Closed,
}

impl Phase {
    /// A connection whose destination is known, before any connect.
    pub(super) fn before_connect(origin: Origin) -> Phase {
        Phase::Resolving {
            origin,
            result: None,
        }
    }

    /// Whether data flows (idle timeouts apply, not the handshake's).
    pub(super) fn is_data(&self) -> bool {
        matches!(
            self,
            Phase::Relay { .. } | Phase::Tunnel { .. } | Phase::Associated { .. }
        )
    }

    /// How long a phase with data may stay idle (`None`: forever).
    pub(super) fn idle_timeout(&self, engine: &EngineConfig) -> Option<Duration> {
        match self {
            Phase::Associated { .. } => Some(engine.udp_idle_timeout()),
            _ => engine.idle_timeout(),
        }
    }

    /// The stream of a multiplexed connection, with its socket once it
    /// has one (the remote's destination connects later).
    pub(super) fn stream_mut(&mut self) -> Option<(&mut Stream, Option<&TcpStream>, bool)> {
        match self {
            Phase::Tunnel {
                socket,
                stream,
                local,
            } => Some((stream, Some(socket), *local)),
            Phase::Resolving {
                origin: Origin::Stream(stream),
                ..
            }
            | Phase::Connecting {
                origin: Origin::Stream(stream),
                ..
            } => Some((stream, None, false)),
            _ => None,
        }
    }

    /// The stream, taken out as the connection goes.
    pub(super) fn into_stream(self) -> Option<Stream> {
        match self {
            Phase::Tunnel { stream, .. }
            | Phase::Resolving {
                origin: Origin::Stream(stream),
                ..
            }
            | Phase::Connecting {
                origin: Origin::Stream(stream),
                ..
            } => Some(stream),
            _ => None,
        }
    }
}

/// What a phase's step came to.
enum Turn {
    /// On to this phase: run it at once.
    Go(Phase),
    /// This phase waits for an event.
    Wait(Phase),
    /// Over: the connection closes (its sockets with this phase).
    Done(Phase),
    /// Failed in this phase (kept to answer the client).
    Fail(Phase, Failure),
    /// Remote role: the SOCKS5 client asked to multiplex; its socket
    /// becomes a session, with these bytes already read after the request
    /// (and its encrypted channel, if any).
    Session(TcpStream, Vec<u8>, Option<Channel>),
}

/// What the worker does with a connection after a step.
pub(super) enum Next {
    Keep,
    Close,
    /// Remote role: the socket becomes a session (see [`Turn::Session`]).
    Session(TcpStream, Vec<u8>, Option<Channel>),
}

/// A connection's slot in the relay's budgets ([`Slot`]): given back, and
/// the connection counted as closed, when it is dropped, however that
/// happens (also while a worker unwinds from a panic).
pub(super) struct Admission {
    pub shared: Arc<Shared>,
    pub worker: usize,
    pub kind: Slot,
    pub client: IpAddr,
    /// The slot is back already ([`Admission::give_back`]).
    pub given_back: bool,
}

impl Admission {
    /// The request was read and authenticated: a handshake slot becomes a
    /// connection slot, or the connection fails for want of room.
    fn promote(&mut self) -> Result<(), Failure> {
        if self.kind != Slot::Handshake {
            return Ok(());
        }
        if !self.shared.limits.promote(self.client) {
            return Err(Failure::new(ErrorKind::Limit, "connection limit reached"));
        }
        self.kind = Slot::Connection;
        Ok(())
    }

    /// Gives the slot back now, before the connection's sockets close: a
    /// client that sees its connection end may open another at once, and
    /// another worker admit it, while this one is still closing. (The
    /// connection counts as closed when the admission is dropped.)
    pub fn give_back(&mut self) {
        if !std::mem::replace(&mut self.given_back, true) {
            self.shared.limits.release(self.kind, self.client);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.give_back();
        Counters::add(&self.shared.counters[self.worker].closed, 1);
    }
}

/// One relayed connection.
pub(super) struct Conn {
    /// Tells a reused slab key from this connection (resolver answers,
    /// connections waiting for a session).
    pub serial: u64,
    /// The listener it came from.
    pub spec: usize,
    /// The budget it counts against, given back when it is dropped.
    pub admission: Admission,
    pub phase: Phase,
    pub answer: Answer,
    pub dest: Option<TargetAddr>,
    /// Client bytes for the destination received during the handshake.
    early: Vec<u8>,
    /// Handshake answers not yet written to the client.
    to_client: Vec<u8>,
    /// Handshake deadline, or the end of the closing grace.
    pub deadline: Instant,
    pub last_active: Instant,
    /// Local role: the remote relay it goes through (`None`: direct, or
    /// not chosen yet).
    remote: Option<RemoteClaim>,
    /// Local role: the remotes that failed for it (bit i: remote i).
    tried: u64,
    /// Its sockets that events named since its last step.
    pub woken: Woken,
}

/// What reading a request came to.
enum Requested {
    NeedMore,
    /// The client left before finishing its request.
    Gone,
    /// Remote role: a MULTIPLEX request; these bytes followed it.
    Session(Vec<u8>),
    /// A destination to connect to.
    Connect(TargetAddr),
    /// Remote role: a UDP association for a client sending from this
    /// address (zeros: not said).
    Associate(TargetAddr),
}

impl Conn {
    pub(super) fn new(
        ctx: &mut Ctx,
        spec: usize,
        admission: Admission,
        phase: Phase,
        answer: Answer,
    ) -> Conn {
        ctx.next_serial += 1;
        Conn {
            serial: ctx.next_serial,
            spec,
            admission,
            phase,
            answer,
            dest: None,
            early: Vec::new(),
            to_client: Vec::new(),
            deadline: ctx.now + ctx.shared.engine.handshake_timeout(),
            last_active: ctx.now,
            remote: None,
            tried: 0,
            woken: Woken::default(),
        }
    }

    /// Runs the state machine after an event, until it waits or ends.
    pub(super) fn step(&mut self, key: usize, ctx: &mut Ctx) -> Next {
        loop {
            let phase = std::mem::replace(&mut self.phase, Phase::Closed);
            match self.advance(key, phase, ctx) {
                Turn::Go(p) => self.phase = p,
                Turn::Wait(p) => {
                    self.phase = p;
                    return Next::Keep;
                }
                Turn::Done(p) => {
                    self.phase = p;
                    return Next::Close;
                }
                Turn::Fail(p, f) => return self.fail(p, f, ctx),
                Turn::Session(socket, leftover, channel) => {
                    return Next::Session(socket, leftover, channel);
                }
            }
        }
    }

    /// Starts a connection whose destination is known from the start
    /// (transparent, or a stream the peer opened): its first step.
    pub(super) fn start(
        &mut self,
        key: usize,
        origin: Origin,
        dest: TargetAddr,
        ctx: &mut Ctx,
    ) -> Next {
        let turn = self.begin_connect(key, origin, dest, ctx);
        self.settle(key, turn, ctx)
    }

    /// Carries out a turn made outside [`Conn::step`].
    fn settle(&mut self, key: usize, turn: Turn, ctx: &mut Ctx) -> Next {
        match turn {
            Turn::Go(p) => {
                self.phase = p;
                self.step(key, ctx)
            }
            Turn::Wait(p) => self.keep(p),
            Turn::Done(p) => {
                self.phase = p;
                Next::Close
            }
            Turn::Fail(p, f) => self.fail(p, f, ctx),
            Turn::Session(socket, leftover, channel) => Next::Session(socket, leftover, channel),
        }
    }

    fn keep(&mut self, phase: Phase) -> Next {
        self.phase = phase;
        Next::Keep
    }

    /// Fails the connection from outside its step (a session's event).
    pub(super) fn fail_now(&mut self, f: Failure, ctx: &mut Ctx) -> Next {
        let phase = std::mem::replace(&mut self.phase, Phase::Closed);
        self.fail(phase, f, ctx)
    }

    fn advance(&mut self, key: usize, phase: Phase, ctx: &mut Ctx) -> Turn {
        match phase {
            Phase::Request {
                mut client,
                mut buf,
                mut parser,
                mut channel,
            } => match self.read_request(&mut client, &mut buf, &mut parser, &mut channel, ctx) {
                Ok(Requested::NeedMore) => Turn::Wait(Phase::Request {
                    client,
                    buf,
                    parser,
                    channel,
                }),
                Ok(Requested::Gone) => Turn::Done(Phase::Closed),
                Ok(Requested::Session(leftover)) => {
                    Turn::Session(client, leftover, channel.map(|c| *c))
                }
                Ok(Requested::Connect(_)) if channel.is_some() => Turn::Fail(
                    Phase::Request {
                        client,
                        buf,
                        parser,
                        channel,
                    },
                    not_encrypted(),
                ),
                Ok(Requested::Connect(dest)) => {
                    self.begin_connect(key, Origin::Client(client), dest, ctx)
                }
                Ok(Requested::Associate(from)) => self.associate(key, client, &from, ctx),
                Err(f) => Turn::Fail(
                    Phase::Request {
                        client,
                        buf,
                        parser,
                        channel,
                    },
                    f,
                ),
            },
            Phase::Resolving {
                origin,
                result: None,
            } => Turn::Wait(Phase::before_connect(origin)),
            Phase::Resolving {
                origin,
                result: Some(result),
            } => {
                let dest = self.dest_name();
                let addrs = match result {
                    Ok(a) => a,
                    Err(e) => {
                        let f = Failure::new(ErrorKind::Resolve, format!("resolving {dest}: {e}"));
                        return Turn::Fail(Phase::before_connect(origin), f);
                    }
                };
                match self.permitted(ctx, addrs) {
                    Ok(candidates) => self.start_connect(key, origin, candidates, ctx),
                    Err(f) => Turn::Fail(Phase::before_connect(origin), f),
                }
            }
            Phase::Connecting {
                origin,
                upstream,
                to,
                candidates,
                greeting,
            } => {
                let err = match upstream.take_error() {
                    Ok(Some(e)) | Err(e) => Some(e),
                    Ok(None) => match upstream.peer_addr() {
                        Ok(_) => None,
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                            return Turn::Wait(Phase::Connecting {
                                origin,
                                upstream,
                                to,
                                candidates,
                                greeting,
                            });
                        }
                        Err(e) => Some(e),
                    },
                };
                if let Some(e) = err {
                    if !candidates.is_empty() {
                        return self.start_connect(key, origin, candidates, ctx);
                    }
                    if self.remote_failed(&format!("connecting: {e}")) {
                        return self.through_remote(key, origin, ctx);
                    }
                    return Turn::Fail(Phase::before_connect(origin), Failure::connect(&e, to));
                }
                match (greeting, origin) {
                    (Greeting::Socks5 { out, auth }, Origin::Client(client)) => {
                        Turn::Go(Phase::Upstream {
                            client,
                            upstream,
                            handshake: ClientHandshake::new(auth),
                            out,
                            out_pos: 0,
                            buf: Vec::new(),
                        })
                    }
                    (Greeting::Socks5 { .. }, origin) => Turn::Fail(
                        Phase::before_connect(origin),
                        Failure::new(ErrorKind::Protocol, "a stream has no SOCKS5 upstream"),
                    ),
                    (Greeting::None, origin) => {
                        let bound = upstream.local_addr().ok();
                        Turn::Go(self.enter_data(origin, upstream, bound, Vec::new(), ctx))
                    }
                }
            }
            Phase::Upstream {
                client,
                mut upstream,
                mut handshake,
                out,
                mut out_pos,
                mut buf,
            } => match upstream_handshake(
                &mut upstream,
                &mut handshake,
                &out,
                &mut out_pos,
                &mut buf,
            ) {
                Ok(Some(used)) => {
                    if let Some(claim) = &self.remote {
                        claim.remotes().succeeded(claim.index(), None);
                    }
                    let leftover = buf.split_off(used);
                    Turn::Go(self.enter_data(Origin::Client(client), upstream, None, leftover, ctx))
                }
                r => {
                    let phase = Phase::Upstream {
                        client,
                        upstream,
                        handshake,
                        out,
                        out_pos,
                        buf,
                    };
                    match r {
                        Err(f) => Turn::Fail(phase, f),
                        Ok(_) => Turn::Wait(phase),
                    }
                }
            },
            Phase::AwaitingSession { client } => Turn::Wait(Phase::AwaitingSession { client }),
            Phase::Relay {
                client,
                upstream,
                mut up,
                mut down,
            } => {
                let r = self.pump(key, &client, &upstream, &mut up, &mut down, ctx);
                let phase = Phase::Relay {
                    client,
                    upstream,
                    up,
                    down,
                };
                match r {
                    Ok(true) => Turn::Done(phase),
                    Ok(false) => Turn::Wait(phase),
                    Err(f) => Turn::Fail(phase, f),
                }
            }
            Phase::Tunnel {
                mut socket,
                mut stream,
                local,
            } => {
                let r = self.tunnel(key, &mut socket, &mut stream, local, ctx);
                let phase = Phase::Tunnel {
                    socket,
                    stream,
                    local,
                };
                match r {
                    Ok(true) => Turn::Done(phase),
                    Ok(false) => Turn::Wait(phase),
                    Err(f) => Turn::Fail(phase, f),
                }
            }
            Phase::Associated {
                mut control,
                mut udp,
            } => {
                let woken = std::mem::take(&mut self.woken);
                // The association ends with its control connection.
                if woken.contains(Woken::CLIENT)
                    && (flush(&mut control, &mut self.to_client).is_err()
                        || !matches!(drain_until_eof(&mut control), Ok(false)))
                {
                    return Turn::Done(Phase::Closed);
                }
                let pumped = udp.pump(woken, ctx);
                if pumped.moved {
                    self.last_active = ctx.now;
                }
                if pumped.unfinished != Woken::default() {
                    self.woken.insert(pumped.unfinished);
                    ctx.requeue.push(key);
                }
                Turn::Wait(Phase::Associated { control, udp })
            }
            Phase::Closing { mut client } => match drain_until_eof(&mut client) {
                Ok(true) | Err(_) => Turn::Done(Phase::Closed),
                Ok(false) => Turn::Wait(Phase::Closing { client }),
            },
            Phase::Closed => Turn::Done(Phase::Closed),
        }
    }

    /// The destination as text, for messages.
    fn dest_name(&self) -> String {
        self.dest
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    /// Reads and parses the client's request; answers the SOCKS5 steps
    /// before it.
    fn read_request(
        &mut self,
        client: &mut TcpStream,
        buf: &mut Vec<u8>,
        parser: &mut Parser,
        channel: &mut Option<Box<Channel>>,
        ctx: &Ctx,
    ) -> Result<Requested, Failure> {
        let read = match channel {
            Some(ch) => ch
                .opener
                .read_to(client.as_raw_fd(), buf, MAX_REQUEST_BUFFER),
            None => read_some(client, buf, MAX_REQUEST_BUFFER),
        };
        let eof = read.map_err(|e| Failure::new(ErrorKind::Io, format!("reading request: {e}")))?;
        let keys = match &*ctx.specs[self.spec].route {
            Route::Direct { keys, .. } => keys.as_deref(),
            Route::Upstream { .. } => None,
        };
        if let (Some(keys), None, Some(&first)) = (keys, &channel, buf.first())
            && matches!(parser, Parser::Socks5(_))
        {
            if seal::starts_handshake(first) {
                *parser = Parser::Sealing;
            } else if !keys.plain {
                return Err(Failure::new(
                    ErrorKind::Auth,
                    "a plain SOCKS5 client: this relay serves encrypted sessions only",
                ));
            }
        }
        let (dest, used, http_kind) = match parser {
            Parser::Sealing => return self.accept_channel(client, buf, parser, channel, ctx, eof),
            Parser::Socks5(hs) => {
                let route = &*ctx.specs[self.spec].route;
                let client_ip = self.admission.client;
                let mut verdict = None;
                let check = |c: &socks5::Credentials| {
                    let Route::Direct { users, .. } = route else {
                        return false;
                    };
                    let v = ctx.shared.auth_guard.check(client_ip, ctx.now, || {
                        crate::relay::policy::authenticate(users, c)
                    });
                    verdict = Some((v, String::from_utf8_lossy(&c.username).into_owned()));
                    v == Verdict::Accepted
                };
                let r = hs.advance(buf, &mut self.to_client, check);
                log_login(client_ip, verdict);
                self.answer_client(client, channel.as_deref_mut())
                    .map_err(|e| Failure::new(ErrorKind::Io, format!("writing to client: {e}")))?;
                match r {
                    Ok(Progress::NeedMore) => return self.need_more(eof, buf),
                    Ok(Progress::Done(req, used)) if req.command == Command::Multiplex => {
                        return session_request(&req, &buf[used..]);
                    }
                    Ok(Progress::Done(req, _)) if req.command == Command::UdpAssociate => {
                        self.admission.promote()?;
                        return Ok(Requested::Associate(req.dest));
                    }
                    Ok(Progress::Done(req, used)) => (req.dest, used, None),
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
                Ok(Progress::NeedMore) => return self.need_more(eof, buf),
                Ok(Progress::Done(req, used)) => (req.target, used, Some(req.kind)),
                Err(e) => {
                    let mut f = Failure::new(ErrorKind::Protocol, e.to_string());
                    f.http = e.status;
                    return Err(f);
                }
            },
        };
        let mut early = match http_kind {
            Some(ProxyRequestKind::Forward { head }) => head,
            Some(ProxyRequestKind::Connect) => {
                self.answer = Answer::HttpConnect;
                Vec::new()
            }
            None => Vec::new(),
        };
        early.extend_from_slice(&buf[used..]);
        self.early = early;
        self.admission.promote()?;
        Ok(Requested::Connect(dest))
    }

    /// Remote role: a local relay's first handshake message in `buf`:
    /// answered, its key checked, and the SOCKS5 request read inside the
    /// channel from then on.
    fn accept_channel(
        &mut self,
        client: &mut TcpStream,
        buf: &mut Vec<u8>,
        parser: &mut Parser,
        channel: &mut Option<Box<Channel>>,
        ctx: &Ctx,
        eof: bool,
    ) -> Result<Requested, Failure> {
        let Route::Direct {
            keys: Some(keys),
            users,
            ..
        } = &*ctx.specs[self.spec].route
        else {
            return Err(Failure::new(ErrorKind::Protocol, "no key for a handshake"));
        };
        let handshake =
            |e: io::Error| Failure::new(ErrorKind::Auth, format!("encryption handshake: {e}"));
        let Some((mut ch, mut answer, used)) = seal::respond(&keys.own, buf).map_err(handshake)?
        else {
            return self.need_more(eof, buf);
        };
        if !keys.admits(&ch.peer) {
            return Err(Failure::new(
                ErrorKind::Auth,
                format!("a local relay with a key not in peer_keys: {}", ch.peer),
            ));
        }
        flush(client, &mut answer).map_err(handshake)?;
        if !answer.is_empty() {
            return Err(handshake(io::ErrorKind::WouldBlock.into()));
        }
        ch.opener.preload(&buf[used..]);
        buf.clear();
        // A pinned key is a login of its own; a password may still be asked.
        let require_auth = if keys.pinned(&ch.peer) {
            !users.is_empty()
        } else {
            ctx.specs[self.spec].require_auth
        };
        tracing::debug!(client = %self.admission.client, peer = %ch.peer, "relay: encrypted channel");
        *parser = Parser::Socks5(ServerHandshake::new(require_auth).with_multiplex(true));
        *channel = Some(Box::new(ch));
        // The request may have come with the handshake.
        self.read_request(client, buf, parser, channel, ctx)
    }

    /// Writes the answers queued for the client: through the channel, if
    /// the connection has one.
    fn answer_client(
        &mut self,
        client: &mut TcpStream,
        channel: Option<&mut Channel>,
    ) -> io::Result<()> {
        let Some(ch) = channel else {
            return flush(client, &mut self.to_client);
        };
        if !self.to_client.is_empty() {
            ch.sealer.seal(&self.to_client)?;
            self.to_client.clear();
        }
        ch.sealer.drain(client.as_raw_fd()).map(drop)
    }

    /// An incomplete request: wait for more, unless the client left or
    /// the request outgrew the buffer.
    fn need_more(&self, eof: bool, buf: &[u8]) -> Result<Requested, Failure> {
        if eof {
            return Ok(Requested::Gone);
        }
        if buf.len() >= MAX_REQUEST_BUFFER {
            return Err(Failure::new(ErrorKind::Protocol, "request too long"));
        }
        Ok(Requested::NeedMore)
    }

    /// After the destination is known: connect (to it or to the remote
    /// relay, or carry it over a session), or ask the resolver first.
    fn begin_connect(
        &mut self,
        key: usize,
        origin: Origin,
        dest: TargetAddr,
        ctx: &mut Ctx,
    ) -> Turn {
        self.dest = Some(dest.clone());
        match *ctx.specs[self.spec].route {
            Route::Upstream { .. } => self.through_remote(key, origin, ctx),
            Route::Direct { .. } => self.connect_direct(key, origin, dest, ctx),
        }
    }

    /// Connects to the destination itself (remote role; or local role with
    /// no remote working), or asks the resolver first.
    fn connect_direct(
        &mut self,
        key: usize,
        origin: Origin,
        dest: TargetAddr,
        ctx: &mut Ctx,
    ) -> Turn {
        match dest {
            TargetAddr::Ip(a) => match self.permitted(ctx, vec![a]) {
                Ok(candidates) => self.start_connect(key, origin, candidates, ctx),
                Err(f) => Turn::Fail(Phase::before_connect(origin), f),
            },
            TargetAddr::Domain(name, port) => {
                let req = ResolveRequest {
                    worker: ctx.worker,
                    conn: key,
                    serial: self.serial,
                    name,
                    port,
                };
                match ctx.resolve_tx.send(req) {
                    Ok(()) => Turn::Wait(Phase::before_connect(origin)),
                    Err(_) => Turn::Fail(
                        Phase::before_connect(origin),
                        Failure::new(ErrorKind::Resolve, "resolver stopped"),
                    ),
                }
            }
        }
    }

    /// Local role: goes through the remote relay the route's policy picks
    /// (one that did not fail for this connection yet), as a stream of a
    /// session or a connection of its own; with none working, direct or
    /// refused, as configured.
    fn through_remote(&mut self, key: usize, origin: Origin, ctx: &mut Ctx) -> Turn {
        let Route::Upstream { remotes, .. } = &*ctx.specs[self.spec].route else {
            return Turn::Fail(
                Phase::before_connect(origin),
                Failure::new(ErrorKind::Protocol, "no remote relay on this route"),
            );
        };
        let remotes = Arc::clone(remotes);
        self.remote = remotes
            .pick(self.tried)
            .map(|r| RemoteClaim::new(&remotes, r));
        let Some(r) = self.remote.as_ref().map(RemoteClaim::index) else {
            let Some(dest) = self
                .dest
                .clone()
                .filter(|_| remotes.fallback == NoRemote::Direct)
            else {
                return Turn::Fail(
                    Phase::before_connect(origin),
                    Failure::new(ErrorKind::Upstream, "no remote relay works"),
                );
            };
            Counters::add(&ctx.counters().direct, 1);
            tracing::debug!(%dest, "relay: no remote relay works; connecting directly");
            return self.connect_direct(key, origin, dest, ctx);
        };
        match origin {
            Origin::Client(client) if ctx.sessions.multiplexing() => {
                self.multiplex(key, client, r, ctx)
            }
            origin => self.start_connect(key, origin, vec![remotes.list[r].addr], ctx),
        }
    }

    /// Local role: the chosen remote failed this connection. Returns
    /// whether another may be tried.
    fn remote_failed(&mut self, why: &str) -> bool {
        let Some(claim) = &self.remote else {
            return false;
        };
        let r = claim.index();
        claim.remotes().failed(r, why);
        self.mark_tried(r);
        true
    }

    /// Local role: remote `r` failed this connection, so that
    /// [`Remotes::pick`](crate::relay::remotes::Remotes::pick) skips it
    /// from now on. Returns whether it was not marked yet.
    fn mark_tried(&mut self, r: usize) -> bool {
        let bit = u32::try_from(r)
            .ok()
            .and_then(|r| 1u64.checked_shl(r))
            .unwrap_or(0);
        let new = bit != 0 && self.tried & bit == 0;
        self.tried |= bit;
        new
    }

    /// Remote role: opens the UDP association a client asked for and
    /// tells it the port to send to.
    fn associate(
        &mut self,
        key: usize,
        client: TcpStream,
        from: &TargetAddr,
        ctx: &mut Ctx,
    ) -> Turn {
        match Association::open(key, self.serial, self.spec, &client, from, ctx) {
            Ok(udp) => {
                self.answer
                    .encode_success(Some(udp.bound()), &mut self.to_client);
                self.last_active = ctx.now;
                // The reply goes out, and datagrams may have come already.
                self.woken = Woken::ALL;
                Turn::Go(Phase::Associated {
                    control: client,
                    udp: Box::new(udp),
                })
            }
            Err(f) => Turn::Fail(Phase::before_connect(Origin::Client(client)), f),
        }
    }

    /// Local role: the connection becomes a stream of a session to remote
    /// `r`, now or once one is set up; or, when no session can take it,
    /// connects to that remote for itself (unless the sessions must be
    /// encrypted: then another remote is tried).
    fn multiplex(&mut self, key: usize, client: TcpStream, r: usize, ctx: &mut Ctx) -> Turn {
        match ctx.sessions.place(r, ctx.now) {
            Some(Placement::Open(s)) => self.attach(client, s, key, ctx),
            Some(Placement::Wait(s)) => {
                ctx.sessions.wait_for(s, key, self.serial);
                Turn::Wait(Phase::AwaitingSession { client })
            }
            None => match ctx.sessions.fallback(r) {
                Some(remote) => self.start_connect(key, Origin::Client(client), vec![remote], ctx),
                None if self.mark_tried(r) => self.through_remote(key, Origin::Client(client), ctx),
                None => Turn::Fail(
                    Phase::AwaitingSession { client },
                    Failure::new(
                        ErrorKind::Upstream,
                        "no encrypted session to the remote relay (the next attempt waits)",
                    ),
                ),
            },
        }
    }

    /// Local role: the connection becomes a new stream of open session
    /// `s` (its early bytes follow the OPEN at once).
    fn attach(&mut self, client: TcpStream, s: usize, key: usize, ctx: &mut Ctx) -> Turn {
        let Some(dest) = self.dest.clone() else {
            return Turn::Fail(
                Phase::Closing { client },
                Failure::new(ErrorKind::Protocol, "no destination"),
            );
        };
        let early = std::mem::take(&mut self.early);
        match ctx.sessions.open_stream(s, key, dest, early, ctx.now) {
            Some(stream) => Turn::Go(Phase::Tunnel {
                socket: client,
                stream,
                local: true,
            }),
            None => Turn::Fail(
                Phase::Closing { client },
                Failure::new(ErrorKind::Upstream, "the session closed"),
            ),
        }
    }

    /// Local role: session `s` is set up; a connection waiting for it
    /// becomes one of its streams.
    pub(super) fn session_ready(&mut self, key: usize, s: usize, ctx: &mut Ctx) -> Next {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::AwaitingSession { client } => {
                let turn = self.attach(client, s, key, ctx);
                self.settle(key, turn, ctx)
            }
            phase => self.keep(phase),
        }
    }

    /// Local role: the session a connection waited for failed: it
    /// connects to that remote for itself when it can (a plain remote that
    /// does not multiplex), else tries another remote.
    pub(super) fn session_failed(&mut self, key: usize, ctx: &mut Ctx) -> Next {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::AwaitingSession { client } => {
                let origin = Origin::Client(client);
                let chosen = self.remote.as_ref().map(RemoteClaim::index);
                let turn = match chosen.and_then(|r| ctx.sessions.fallback(r)) {
                    Some(remote) => self.start_connect(key, origin, vec![remote], ctx),
                    None => {
                        if let Some(r) = chosen {
                            self.mark_tried(r);
                        }
                        self.through_remote(key, origin, ctx)
                    }
                };
                self.settle(key, turn, ctx)
            }
            phase => self.keep(phase),
        }
    }

    /// The addresses the destination policy allows.
    fn permitted(&self, ctx: &Ctx, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Failure> {
        let Route::Direct { policy, .. } = &*ctx.specs[self.spec].route else {
            return Ok(addrs);
        };
        let total = addrs.len();
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| policy.allows_from(a.ip(), &ctx.own_addresses))
            .collect();
        if allowed.is_empty() {
            let why = if total == 0 {
                "no address"
            } else {
                "denied by the destination policy"
            };
            return Err(Failure::new(
                ErrorKind::DestinationDenied,
                format!("{}: {why}", self.dest_name()),
            ));
        }
        Ok(allowed)
    }

    /// What to send once connected to the upstream: to the remote relay,
    /// the SOCKS5 handshake for the destination.
    fn greeting(&self) -> Result<Greeting, Failure> {
        let Some(claim) = &self.remote else {
            return Ok(Greeting::None);
        };
        let credentials = &claim.remotes().list[claim.index()].credentials;
        let dest = self
            .dest
            .clone()
            .ok_or_else(|| Failure::new(ErrorKind::Protocol, "no destination"))?;
        let creds = credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        let mut out = Vec::new();
        socks5::encode_client_hello_auth_request(creds, &socks5::Request::connect(dest), &mut out)
            .map_err(|e| Failure::new(ErrorKind::Protocol, e.to_string()))?;
        Ok(Greeting::Socks5 {
            out,
            auth: creds.is_some(),
        })
    }

    /// Starts connecting to the first candidate that takes a socket.
    fn start_connect(
        &mut self,
        key: usize,
        origin: Origin,
        mut candidates: Vec<SocketAddr>,
        ctx: &mut Ctx,
    ) -> Turn {
        let greeting = match self.greeting() {
            Ok(g) => g,
            Err(f) => return Turn::Fail(Phase::before_connect(origin), f),
        };
        let (mptcp, to_a_relay) = match &*ctx.specs[self.spec].route {
            Route::Direct { mptcp, .. } => (*mptcp, false),
            Route::Upstream { mptcp, .. } => (*mptcp, true),
        };
        loop {
            if candidates.is_empty() {
                let f = Failure::new(ErrorKind::Connect, "no address to connect to");
                return Turn::Fail(Phase::before_connect(origin), f);
            }
            let to = candidates.remove(0);
            match outbound::connect(to, mptcp) {
                Ok(mut upstream) => {
                    if to_a_relay {
                        outbound::set_congestion_control(&upstream, &ctx.shared.engine);
                    }
                    let (_, token) = conn_tokens(key);
                    let r = ctx.registry.register(
                        &mut upstream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    if let Err(e) = r {
                        let f = Failure::new(ErrorKind::Connect, format!("register: {e}"));
                        return Turn::Fail(Phase::before_connect(origin), f);
                    }
                    return Turn::Go(Phase::Connecting {
                        origin,
                        upstream,
                        to,
                        candidates,
                        greeting,
                    });
                }
                Err(e) if candidates.is_empty() => {
                    return Turn::Fail(Phase::before_connect(origin), Failure::connect(&e, to));
                }
                Err(_) => {}
            }
        }
    }

    /// The destination (or the remote relay) answered: data flows.
    fn enter_data(
        &mut self,
        origin: Origin,
        upstream: TcpStream,
        bound: Option<SocketAddr>,
        leftover: Vec<u8>,
        ctx: &mut Ctx,
    ) -> Phase {
        self.last_active = ctx.now;
        Counters::add(&ctx.counters().relayed, 1);
        match origin {
            Origin::Stream(mut stream) => {
                // Remote role, multiplexed: the destination answered.
                ctx.sessions
                    .reply(&mut stream, ReplyCode::Succeeded, bound, ctx.now);
                Phase::Tunnel {
                    socket: upstream,
                    stream,
                    local: false,
                }
            }
            Origin::Client(client) => {
                let mut down = std::mem::take(&mut self.to_client);
                self.answer.encode_success(bound, &mut down);
                down.extend_from_slice(&leftover);
                let up = std::mem::take(&mut self.early);
                Phase::Relay {
                    client,
                    upstream,
                    up: Flow::new(up),
                    down: Flow::new(down),
                }
            }
        }
    }

    /// The data phase between two sockets. `Ok(true)`: both directions
    /// are done.
    fn pump(
        &mut self,
        key: usize,
        client: &TcpStream,
        upstream: &TcpStream,
        up: &mut Flow,
        down: &mut Flow,
        ctx: &mut Ctx,
    ) -> Result<bool, Failure> {
        let (client, upstream) = (client.as_raw_fd(), upstream.as_raw_fd());
        let a = up.pump(client, upstream, &mut ctx.pool, READ_BUDGET, down.done());
        let b = down.pump(upstream, client, &mut ctx.pool, READ_BUDGET, up.done());
        let counters = &ctx.shared.counters[ctx.worker];
        let mut requeue = false;
        for (r, counter) in [(&a, &counters.bytes_up), (&b, &counters.bytes_down)] {
            if let Ok(p) = r {
                if p.bytes > 0 {
                    Counters::add(counter, p.bytes);
                    self.last_active = ctx.now;
                }
                if let Some(why) = p.fell_back {
                    Counters::add(&counters.splice_fallbacks, 1);
                    tracing::warn!("relay: {why}; this direction copies through a buffer");
                }
                requeue |= p.budget_exhausted;
            }
        }
        if let Err(e) = a.and(b) {
            return Err(Failure::io(&e));
        }
        if up.done() && down.done() {
            return Ok(true);
        }
        if requeue {
            ctx.requeue.push(key);
        }
        Ok(false)
    }

    /// The data phase of a multiplexed connection: bytes waiting for the
    /// socket first, then the socket's bytes towards the session.
    /// `Ok(true)`: both directions are done.
    fn tunnel(
        &mut self,
        key: usize,
        socket: &mut TcpStream,
        stream: &mut Stream,
        local: bool,
        ctx: &mut Ctx,
    ) -> Result<bool, Failure> {
        let socket = socket.as_raw_fd();
        let s = stream.session;
        let Some(session) = ctx.sessions.slab.get_mut(s) else {
            return Err(Failure::new(ErrorKind::Upstream, "the session closed"));
        };
        let session_fd = session.socket.as_raw_fd();
        let counters = &ctx.shared.counters[ctx.worker];
        let written = stream
            .flush_inbound(socket, &mut session.tx, &mut ctx.pool)
            .map_err(|e| Failure::io(&e))?;
        count_inbound(counters, local, written);
        let sent = stream
            .send(
                socket,
                &mut session.tx,
                session_fd,
                &mut ctx.pool,
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
            self.last_active = ctx.now;
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
            ctx.requeue.push(key);
        }
        let bulk = stream.is_bulk() && sent.bytes > 0;
        ctx.sessions.mark_dirty(s, ctx.now);
        if bulk {
            ctx.sessions.mark_sending_bulk(s, ctx.now);
        }
        if stream.inbound_finished() {
            if stream.outbound_finished() {
                // Both FINs: the peer knows; the close sends the socket's.
                return Ok(true);
            }
            stream.shut_socket(socket).map_err(|e| Failure::io(&e))?;
        }
        Ok(false)
    }

    /// Local role: the remote relay's answer to the stream's OPEN.
    pub(super) fn stream_replied(&mut self, key: usize, code: ReplyCode, ctx: &mut Ctx) -> Next {
        let Some((stream, _, _)) = self.phase.stream_mut() else {
            return Next::Keep;
        };
        if stream.state.reply_known() {
            return Next::Keep;
        }
        stream.state.on_reply(code);
        if code != ReplyCode::Succeeded {
            let f = Failure::upstream(code, format!("remote relay: {code}"));
            return self.fail_now(f, ctx);
        }
        let mut answer = Vec::new();
        self.answer.encode_success(None, &mut answer);
        stream.answer_first(&answer);
        Counters::add(&ctx.counters().relayed, 1);
        self.step(key, ctx)
    }

    /// Counts a failure, sends the client its answer, and lets it close.
    pub(super) fn fail(&mut self, phase: Phase, f: Failure, ctx: &mut Ctx) -> Next {
        ctx.counters().error(f.kind);
        tracing::debug!(client = %self.admission.client, kind = f.kind.name(), "relay: {}", f.detail);
        // The upstream socket, if any, closes with the phase; sockets of a
        // connection that ends here close once its budget is back.
        let mut channel = None;
        let mut ending: Vec<TcpStream> = Vec::new();
        let (client, stream, flowing) = match phase {
            Phase::Request {
                client, channel: c, ..
            } => {
                channel = c;
                (Some(client), None, false)
            }
            Phase::Upstream { client, .. } | Phase::AwaitingSession { client } => {
                (Some(client), None, false)
            }
            Phase::Resolving { origin, .. } | Phase::Connecting { origin, .. } => match origin {
                Origin::Client(client) => (Some(client), None, false),
                Origin::Stream(stream) => (None, Some(stream), false),
            },
            Phase::Tunnel {
                socket,
                stream,
                local: true,
            } => {
                let replied = stream.state.replied();
                if replied {
                    reset_on_close(&socket);
                }
                (Some(socket), Some(stream), replied)
            }
            Phase::Tunnel { socket, stream, .. } => {
                reset_on_close(&socket);
                ending.push(socket);
                (None, Some(stream), true)
            }
            Phase::Relay {
                client, upstream, ..
            } => {
                reset_on_close(&client);
                reset_on_close(&upstream);
                ending.extend([client, upstream]);
                (None, None, true)
            }
            Phase::Associated { .. } | Phase::Closing { .. } | Phase::Closed => (None, None, true),
        };
        // Once data flows the protocol answers are history: just close.
        let answer_to = if flowing {
            ending.extend(client);
            None
        } else {
            client
        };
        if answer_to.is_none() {
            self.admission.give_back();
        }
        if let Some(mut stream) = stream {
            if self.answer == Answer::MuxReply
                && !stream.state.reply_known()
                && !stream.state.is_over()
            {
                ctx.sessions.reply(&mut stream, f.socks, None, ctx.now);
            }
            ctx.sessions.detach(stream, &mut ctx.pool, ctx.now);
        }
        let Some(mut client) = answer_to else {
            drop(ending);
            return Next::Close;
        };
        if !f.answered {
            self.answer.encode_failure(&f, &mut self.to_client);
        }
        // Best effort: the answer is a few bytes on a fresh socket.
        let _ = self.answer_client(&mut client, channel.as_deref_mut());
        let _ = client.shutdown(std::net::Shutdown::Write);
        self.deadline = ctx.now + CLOSING_GRACE;
        match drain_until_eof(&mut client) {
            Ok(true) | Err(_) => Next::Close,
            Ok(false) => self.keep(Phase::Closing { client }),
        }
    }
}

/// Makes the close of `socket` a reset (`SO_LINGER` 0): a transfer that
/// broke in the middle must not end with a FIN, which its peer would take
/// for the complete data (an HTTP/1.0 body, an upload without a length).
fn reset_on_close(socket: &TcpStream) {
    // Best effort: a socket that cannot take the option closes with a FIN.
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

/// Logs a failed login at the default level (the client's address and the
/// user name, never the password), and once when an address starts to be
/// held back; tries refused while it waits are only counted.
fn log_login(client: IpAddr, verdict: Option<(Verdict, String)>) {
    match verdict {
        Some((Verdict::Rejected { failures, wait }, user)) if wait.is_zero() => {
            tracing::warn!(%client, ?user, failures, "relay: wrong username or password");
        }
        Some((Verdict::Rejected { failures, wait }, user)) => tracing::warn!(
            %client,
            ?user,
            failures,
            "relay: wrong username or password; this address waits {} ms before its next try",
            wait.as_millis()
        ),
        Some((Verdict::TooSoon, user)) => {
            tracing::debug!(%client, ?user, "relay: a login too soon after failed ones, refused");
        }
        Some((Verdict::Accepted, _)) | None => {}
    }
}

/// A CONNECT inside an encrypted channel: encrypted relays carry every
/// connection in a session (one each without multiplexing), and a CONNECT's
/// data would flow in clear after it.
fn not_encrypted() -> Failure {
    let mut f = Failure::new(
        ErrorKind::Protocol,
        "CONNECT in an encrypted channel: encrypted connections come as sessions",
    );
    f.socks = ReplyCode::CommandNotSupported;
    f
}

/// Remote role: a MULTIPLEX request of our protocol version becomes a
/// session; another version is refused as not supported, so that the
/// client falls back to CONNECT.
fn session_request(req: &socks5::Request, leftover: &[u8]) -> Result<Requested, Failure> {
    if req.dest.port() != crate::mux::VERSION {
        let mut f = Failure::new(
            ErrorKind::Protocol,
            format!(
                "multiplexing version {} asked, {} spoken",
                req.dest.port(),
                crate::mux::VERSION
            ),
        );
        f.socks = ReplyCode::CommandNotSupported;
        return Err(f);
    }
    Ok(Requested::Session(leftover.to_vec()))
}

/// Writes our pipelined SOCKS5 handshake to the remote relay and reads its
/// answers. `Some(used)`: done, `buf[used..]` is the destination's.
fn upstream_handshake(
    upstream: &mut TcpStream,
    handshake: &mut ClientHandshake,
    out: &[u8],
    out_pos: &mut usize,
    buf: &mut Vec<u8>,
) -> Result<Option<usize>, Failure> {
    let io_fail = |e: io::Error| {
        Failure::new(
            ErrorKind::Upstream,
            format!("SOCKS5 handshake with the remote: {e}"),
        )
    };
    while *out_pos < out.len() {
        match upstream.write(&out[*out_pos..]) {
            Ok(n) => *out_pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(io_fail(e)),
        }
    }
    let eof = read_some(upstream, buf, UPSTREAM_ANSWER_BYTES).map_err(io_fail)?;
    match handshake.advance(buf) {
        Ok(Progress::NeedMore) if eof => Err(io_fail(io::ErrorKind::UnexpectedEof.into())),
        Ok(Progress::NeedMore) => Ok(None),
        Ok(Progress::Done(_bound, used)) => Ok(Some(used)),
        Err(e) => Err(Failure::upstream(e.reply, format!("remote relay: {e}"))),
    }
}

/// Counts bytes from the peer written to the stream's socket: towards the
/// client on the local relay, towards the destination on the remote.
pub(super) fn count_inbound(counters: &Counters, local: bool, n: u64) {
    let counter = if local {
        &counters.bytes_down
    } else {
        &counters.bytes_up
    };
    Counters::add(counter, n);
}

/// Reads into `buf` until the socket would block, up to `limit` bytes in
/// total. Returns whether the peer closed.
pub(super) fn read_some(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<bool> {
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
