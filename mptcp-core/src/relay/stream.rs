//! One relayed connection carried as a stream of a session: the bytes
//! between its socket (a LAN client on the local relay, the destination on
//! the remote) and the session, and the stream's flow control.
//!
//! Towards the peer, small reads go straight into the session's output
//! buffer as DATA frames; once a read fills [`SMALL_READ`] the stream is a
//! bulk transfer and its bytes are spliced through a pipe instead. From the
//! peer, bytes are written to the socket at once when nothing is pending,
//! and otherwise wait in the stream's pipe or backlog (together at most the
//! window this side announced). Credit goes back in WINDOW frames as the
//! socket takes the bytes, a quarter of the window at a time.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::session::Tx;
use super::splice::{self, Pipe, PipePool};
use crate::mux::Control;

/// A read of this size that comes back full makes the stream a bulk one.
const SMALL_READ: usize = 16 * 1024;

/// What [`Stream::send`] did.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    /// Payload bytes queued for the peer.
    pub bytes: u64,
    /// The session's output is full: call again when it drains.
    pub blocked: bool,
    /// The read budget ran out with the socket still readable.
    pub budget_exhausted: bool,
    /// Splicing was refused on the socket; this stream now copies (why).
    pub fell_back: Option<&'static str>,
}

/// Why a stream cannot go on.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// The peer sent more than the window allowed: the session is broken.
    Window,
    /// Writing to this stream's socket failed: only the stream ends.
    Socket(io::Error),
}

/// A stream's state; the socket and the session are the caller's.
#[derive(Debug)]
pub(crate) struct Stream {
    /// The session's key in the worker.
    pub session: usize,
    /// The stream id in the session.
    pub id: u32,
    /// The peer knows the stream is over (FIN both ways, a failed REPLY, a
    /// RESET): no RESET is needed when it goes.
    pub ended: bool,
    /// Bytes from the peer may go to the socket: the REPLY arrived (local)
    /// or was sent (remote).
    pub replied: bool,
    /// In the session's list of streams waiting for room.
    pub queued: bool,

    // Socket -> peer.
    /// Bytes the peer still accepts.
    credit: u64,
    /// Bytes for the peer before the socket's (handshake leftovers).
    early: Vec<u8>,
    early_pos: usize,
    bulk: bool,
    sent_fin: bool,

    // Peer -> socket.
    /// This side's initial window.
    window: u32,
    /// Bytes the peer may still send.
    allowed: u64,
    /// Bytes the socket took that were not yet credited back.
    unacked: u64,
    /// Our answer to the client (SOCKS5 reply, `200`), before any data.
    prefix: Vec<u8>,
    prefix_pos: usize,
    pipe: Option<Pipe>,
    in_pipe: usize,
    backlog: Vec<u8>,
    backlog_pos: usize,
    got_fin: bool,
    shut: bool,
}

impl Stream {
    /// A new stream: the peer takes `peer_window` bytes before a WINDOW
    /// frame, and may send us `window`. `early` goes first.
    pub(crate) fn new(
        session: usize,
        id: u32,
        peer_window: u32,
        window: u32,
        early: Vec<u8>,
    ) -> Stream {
        Stream {
            session,
            id,
            ended: false,
            replied: false,
            queued: false,
            credit: u64::from(peer_window),
            early,
            early_pos: 0,
            bulk: false,
            sent_fin: false,
            window,
            allowed: u64::from(window),
            unacked: 0,
            prefix: Vec::new(),
            prefix_pos: 0,
            pipe: None,
            in_pipe: 0,
            backlog: Vec::new(),
            backlog_pos: 0,
            got_fin: false,
            shut: false,
        }
    }

    /// Bytes to write to the socket before the peer's (our own answer).
    pub(crate) fn answer_first(&mut self, bytes: &[u8]) {
        self.prefix.extend_from_slice(bytes);
    }

    /// The socket's bytes towards the peer, as DATA frames in `tx`, until
    /// the socket would block, the credit or the room runs out, or `budget`
    /// reads were made. EOF queues a FIN.
    pub(crate) fn send(
        &mut self,
        socket: RawFd,
        tx: &mut Tx,
        session_fd: RawFd,
        pool: &mut PipePool,
        budget: usize,
    ) -> io::Result<Sent> {
        let mut sent = Sent::default();
        let mut reads = 0;
        loop {
            if self.sent_fin || self.credit == 0 {
                // A WINDOW frame resumes a stream out of credit.
                return Ok(sent);
            }
            if !tx.has_room() {
                sent.blocked = true;
                return Ok(sent);
            }
            let credit = usize::try_from(self.credit).unwrap_or(usize::MAX);
            if self.early_pos < self.early.len() {
                let n = credit
                    .min(self.early.len() - self.early_pos)
                    .min(SMALL_READ);
                tx.data(self.id, &self.early[self.early_pos..self.early_pos + n]);
                self.early_pos += n;
                if self.early_pos == self.early.len() {
                    self.early = Vec::new();
                    self.early_pos = 0;
                }
                self.credit -= n as u64;
                sent.bytes += n as u64;
                continue;
            }
            if reads == budget {
                sent.budget_exhausted = true;
                return Ok(sent);
            }
            reads += 1;
            let read = if self.bulk {
                self.splice_out(socket, tx, session_fd, pool, credit, &mut sent)
            } else {
                tx.read_data(socket, self.id, credit.min(SMALL_READ))
            };
            let n = match read {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(sent),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                tx.control(self.id, &Control::Fin);
                self.sent_fin = true;
                return Ok(sent);
            }
            if n == SMALL_READ {
                self.bulk = true;
            }
            self.credit -= n as u64;
            sent.bytes += n as u64;
        }
    }

    /// One bulk read: socket -> pipe, then the pipe behind a DATA header.
    fn splice_out(
        &mut self,
        socket: RawFd,
        tx: &mut Tx,
        session_fd: RawFd,
        pool: &mut PipePool,
        credit: usize,
        sent: &mut Sent,
    ) -> io::Result<usize> {
        let mut pipe = match pool.get_bulk() {
            Ok(p) => p,
            Err(e) if splice::is_fd_exhaustion(&e) => {
                return self.copy_from_now(
                    socket,
                    tx,
                    credit,
                    sent,
                    "no file descriptor for a pipe",
                );
            }
            Err(e) => return Err(e),
        };
        match splice::splice(socket, pipe.write.as_raw_fd(), credit.min(pipe.capacity)) {
            Ok(0) => {
                pool.put(pipe);
                Ok(0)
            }
            Ok(n) => {
                if n == pipe.capacity {
                    pool.grow(&mut pipe);
                }
                tx.data_in_pipe(self.id, pipe, n);
                tx.flush(session_fd, pool);
                Ok(n)
            }
            Err(e) => {
                pool.put(pipe);
                if e.raw_os_error() == Some(libc::EINVAL) {
                    return self.copy_from_now(
                        socket,
                        tx,
                        credit,
                        sent,
                        "splice() refused with EINVAL",
                    );
                }
                Err(e)
            }
        }
    }

    fn copy_from_now(
        &mut self,
        socket: RawFd,
        tx: &mut Tx,
        credit: usize,
        sent: &mut Sent,
        why: &'static str,
    ) -> io::Result<usize> {
        self.bulk = false;
        sent.fell_back = Some(why);
        tx.read_data(socket, self.id, credit.min(SMALL_READ))
    }

    /// Whether bytes from the peer wait for the socket.
    fn inbound_pending(&self) -> bool {
        self.prefix_pos < self.prefix.len()
            || self.in_pipe > 0
            || self.backlog_pos < self.backlog.len()
    }

    /// Takes `len` bytes from the peer against the window.
    fn take_window(&mut self, len: usize) -> Result<(), StreamError> {
        let len = len as u64;
        if len > self.allowed {
            return Err(StreamError::Window);
        }
        self.allowed -= len;
        Ok(())
    }

    /// Payload bytes from the session's buffer: written to `socket` at once
    /// when nothing waits before them, the rest kept. Returns the bytes the
    /// socket took.
    pub(crate) fn receive(
        &mut self,
        bytes: &[u8],
        socket: Option<RawFd>,
        tx: &mut Tx,
    ) -> Result<u64, StreamError> {
        self.take_window(bytes.len())?;
        let mut written = 0;
        if let Some(fd) = socket
            && self.replied
            && !self.inbound_pending()
        {
            match splice::send(fd, bytes) {
                Ok(n) => written = n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(StreamError::Socket(e)),
            }
        }
        self.backlog.extend_from_slice(&bytes[written..]);
        self.consumed(written as u64, tx);
        Ok(written as u64)
    }

    /// Up to `remaining` payload bytes straight from the session's socket
    /// into this stream's pipe, then on to `socket`. Returns how many left
    /// the session (0: could not take any now; they are read into the
    /// buffer instead) and how many the socket took.
    pub(crate) fn splice_in(
        &mut self,
        session_fd: RawFd,
        remaining: usize,
        socket: Option<RawFd>,
        tx: &mut Tx,
        pool: &mut PipePool,
    ) -> Result<(usize, u64), StreamError> {
        let Some(fd) = socket else { return Ok((0, 0)) };
        if !self.replied
            || self.prefix_pos < self.prefix.len()
            || self.backlog_pos < self.backlog.len()
        {
            return Ok((0, 0));
        }
        let pipe = match &mut self.pipe {
            Some(p) => p,
            None => match pool.get_bulk() {
                Ok(p) => self.pipe.insert(p),
                Err(_) => return Ok((0, 0)),
            },
        };
        let room = pipe.capacity.saturating_sub(self.in_pipe);
        let want = remaining
            .min(room)
            .min(usize::try_from(self.allowed).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok((0, 0));
        }
        // Would block (or a session error, which its next read reports):
        // nothing taken.
        let Ok(n) = splice::splice(session_fd, pipe.write.as_raw_fd(), want) else {
            return Ok((0, 0));
        };
        if n == room {
            // A bulk transfer: fewer, larger splices from now on.
            pool.grow(pipe);
        }
        self.take_window(n)?;
        self.in_pipe += n;
        let written = self
            .flush_inbound(fd, tx, pool)
            .map_err(StreamError::Socket)?;
        Ok((n, written))
    }

    /// Writes what waits for the socket: our answer, the pipe, the
    /// backlog. Returns the peer's bytes the socket took.
    pub(crate) fn flush_inbound(
        &mut self,
        socket: RawFd,
        tx: &mut Tx,
        pool: &mut PipePool,
    ) -> io::Result<u64> {
        let mut written = 0u64;
        let result = (|| {
            while self.prefix_pos < self.prefix.len() {
                self.prefix_pos += splice::send(socket, &self.prefix[self.prefix_pos..])?;
            }
            while self.in_pipe > 0 {
                let pipe = self.pipe.as_ref().expect("a pipe holds the bytes");
                let n = splice::splice(pipe.read.as_raw_fd(), socket, self.in_pipe)?;
                self.in_pipe -= n;
                written += n as u64;
            }
            while self.backlog_pos < self.backlog.len() {
                let n = splice::send(socket, &self.backlog[self.backlog_pos..])?;
                self.backlog_pos += n;
                written += n as u64;
            }
            io::Result::Ok(())
        })();
        if self.in_pipe == 0
            && let Some(p) = self.pipe.take()
        {
            pool.put(p);
        }
        if self.backlog_pos == self.backlog.len() {
            self.backlog = Vec::new();
            self.backlog_pos = 0;
        }
        if self.prefix_pos == self.prefix.len() {
            self.prefix = Vec::new();
            self.prefix_pos = 0;
        }
        self.consumed(written, tx);
        match result {
            Ok(()) => Ok(written),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(written)
            }
            Err(e) => Err(e),
        }
    }

    /// Credits the peer for bytes the socket took, a quarter window at a
    /// time (fewer WINDOW frames, and the sender never runs dry).
    fn consumed(&mut self, n: u64, tx: &mut Tx) {
        self.unacked += n;
        if self.unacked > 0 && self.unacked >= u64::from(self.window / 4) {
            let increment = u32::try_from(self.unacked).expect("at most a window");
            tx.control(self.id, &Control::Window(increment));
            self.allowed += self.unacked;
            self.unacked = 0;
        }
    }

    /// A WINDOW frame from the peer.
    pub(crate) fn credit(&mut self, increment: u32) {
        self.credit += u64::from(increment);
    }

    /// Whether the peer's credit ran out (a WINDOW frame will resume).
    pub(crate) fn out_of_credit(&self) -> bool {
        self.credit == 0 && !self.sent_fin
    }

    /// A FIN from the peer.
    pub(crate) fn fin_received(&mut self) {
        self.got_fin = true;
    }

    /// Whether the FIN was received and everything before it written: the
    /// socket's write side can be shut (or the socket closed).
    pub(crate) fn inbound_finished(&self) -> bool {
        self.got_fin && !self.inbound_pending()
    }

    /// Whether the socket's EOF went to the peer.
    pub(crate) fn outbound_finished(&self) -> bool {
        self.sent_fin
    }

    /// Shuts the socket's write side once, after the peer's FIN.
    pub(crate) fn shut_socket(&mut self, socket: RawFd) -> io::Result<()> {
        if !self.shut {
            self.shut = true;
            splice::shutdown_write(socket)?;
        }
        Ok(())
    }

    /// Gives an empty pipe back to the pool (one holding bytes is closed).
    pub(crate) fn release(mut self, pool: &mut PipePool) {
        if self.in_pipe == 0
            && let Some(p) = self.pipe.take()
        {
            pool.put(p);
        }
    }
}
