//! One relayed connection carried as a stream of a session: the bytes
//! between its socket (a LAN client on the local relay, the destination on
//! the remote) and the session, and the stream's flow control.
//!
//! Towards the peer, small reads go straight into the session's output
//! buffer as DATA frames; once a read fills [`SMALL_READ`] the stream is a
//! bulk transfer and its bytes are spliced through a pipe instead. From the
//! peer, bytes are written to the socket at once when nothing is pending,
//! and otherwise wait in the stream's pipes (bulk payloads, spliced from
//! the session) or backlog (bytes the session's buffer had read), together
//! at most the window this side announced. Credit goes back in WINDOW frames as the
//! socket takes the bytes, a quarter of the window at a time.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::session::{Rx, TURN_BYTES, Tx};
use super::splice::{self, Pipe, PipePool};
use crate::mux::{self, StreamState};

/// A read of this size that comes back full makes the stream a bulk one.
const SMALL_READ: usize = 16 * 1024;
/// Pipes a stream may fill with bytes its socket did not take yet: enough
/// for a window of 4 MiB in grown pipes, so that a reader slower than the
/// link costs no copy through user space.
const INBOUND_PIPES: usize = 4;

/// A pipe holding bytes for the socket.
#[derive(Debug)]
struct Filled {
    pipe: Pipe,
    len: usize,
    /// A splice into it would block although `len < capacity` (out of
    /// slots: each splice fills whole pages).
    full: bool,
}

/// What [`Stream::send`] did.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    /// Payload bytes queued for the peer.
    pub bytes: u64,
    /// No room in the session's output: call again when it drains.
    pub blocked: bool,
    /// The read budget ran out with the socket still readable.
    pub budget_exhausted: bool,
    /// Splicing was refused on the socket; this stream now copies (why).
    pub fell_back: Option<&'static str>,
}

/// What [`Stream::splice_in`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spliced {
    /// Bytes left the session (counted by its parser); the socket took
    /// `written` of the stream's pending bytes.
    Moved { written: u64 },
    /// The stream cannot take bytes this way now (no room, answer or
    /// backlog pending): read them into the session's buffer.
    Declined,
    /// The splice would block, or failed: the session's buffered read
    /// tells whether it is empty (an MPTCP splice may say "would block"
    /// while bytes are on their way into the socket, and then no readiness
    /// event need follow), or reports its error.
    WouldBlock,
}

/// Why a stream cannot go on.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// The peer broke the stream's protocol (more than the window, data
    /// after FIN): the session is broken.
    Protocol(mux::stream::StreamError),
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
    /// The protocol state: windows, FINs, the REPLY, how it ends. Bytes
    /// from the peer go to the socket only once the REPLY succeeded
    /// (arrived on the local relay, sent on the remote).
    pub state: StreamState,
    /// In the session's list of streams waiting for room.
    pub queued: bool,

    // Socket -> peer.
    /// Bytes for the peer before the socket's (handshake leftovers).
    early: Vec<u8>,
    early_pos: usize,
    bulk: bool,

    // Peer -> socket.
    /// Our answer to the client (SOCKS5 reply, `200`), before any data.
    prefix: Vec<u8>,
    prefix_pos: usize,
    /// Oldest first; only the last one is filled.
    pipes: VecDeque<Filled>,
    backlog: Vec<u8>,
    backlog_pos: usize,
    shut: bool,
}

impl Stream {
    /// A new stream of session `session`, with its flow-control `state`.
    /// `early` goes first.
    pub(crate) fn new(session: usize, id: u32, state: StreamState, early: Vec<u8>) -> Stream {
        Stream {
            session,
            id,
            state,
            queued: false,
            early,
            early_pos: 0,
            bulk: false,
            prefix: Vec::new(),
            prefix_pos: 0,
            pipes: VecDeque::new(),
            backlog: Vec::new(),
            backlog_pos: 0,
            shut: false,
        }
    }

    /// Bytes to write to the socket before the peer's (our own answer).
    pub(crate) fn answer_first(&mut self, bytes: &[u8]) {
        self.prefix.extend_from_slice(bytes);
    }

    /// The socket's bytes towards the peer, as DATA frames in `tx`, until
    /// the socket would block, the credit or the room runs out, or `budget`
    /// reads were made; spliced frames carry at most `frame_limit` bytes.
    /// EOF queues a FIN.
    pub(crate) fn send(
        &mut self,
        socket: RawFd,
        tx: &mut Tx,
        session_fd: RawFd,
        pool: &mut PipePool,
        budget: usize,
        frame_limit: usize,
    ) -> io::Result<Sent> {
        let mut sent = Sent::default();
        let mut reads = 0;
        loop {
            let credit = self.state.send_limit();
            if credit == 0 {
                // A WINDOW frame resumes a stream out of credit; BLOCKED
                // tells the peer that its window was the limit.
                if let Some(blocked) = self.state.blocked() {
                    tx.control(self.id, &blocked);
                }
                return Ok(sent);
            }
            // Small frames may queue behind a bulk stream's spliced one;
            // bulk streams take turns for the splice.
            let room = if self.bulk && self.early_pos == self.early.len() {
                tx.has_splice_room()
            } else {
                tx.has_room()
            };
            if !room {
                sent.blocked = true;
                return Ok(sent);
            }
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
                self.state.sent(n);
                sent.bytes += n as u64;
                continue;
            }
            if reads == budget || sent.bytes >= TURN_BYTES as u64 {
                sent.budget_exhausted = true;
                return Ok(sent);
            }
            reads += 1;
            let read = if self.bulk {
                let limit = credit.min(frame_limit);
                self.splice_out(socket, tx, session_fd, pool, limit, &mut sent)
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
                if let Some(fin) = self.state.send_fin() {
                    tx.control(self.id, &fin);
                }
                return Ok(sent);
            }
            if n == SMALL_READ {
                self.bulk = true;
            }
            self.state.sent(n);
            sent.bytes += n as u64;
        }
    }

    /// One bulk read of at most `limit` bytes: socket -> pipe, then the
    /// pipe behind a DATA header.
    fn splice_out(
        &mut self,
        socket: RawFd,
        tx: &mut Tx,
        session_fd: RawFd,
        pool: &mut PipePool,
        limit: usize,
        sent: &mut Sent,
    ) -> io::Result<usize> {
        let mut pipe = match pool.get_bulk() {
            Ok(p) => p,
            Err(e) if splice::is_fd_exhaustion(&e) => {
                return self.copy_from_now(
                    socket,
                    tx,
                    limit,
                    sent,
                    "no file descriptor for a pipe",
                );
            }
            Err(e) => return Err(e),
        };
        let max = limit.min(pipe.capacity);
        match splice::splice(socket, pipe.write.as_raw_fd(), max) {
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
                        limit,
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
            || !self.pipes.is_empty()
            || self.backlog_pos < self.backlog.len()
    }

    /// Takes `len` bytes from the peer against the window.
    fn take_window(&mut self, len: usize) -> Result<(), StreamError> {
        self.state.on_data(len).map_err(StreamError::Protocol)
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
            && self.state.replied()
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

    /// Payload bytes straight from the session's socket into this stream's
    /// pipe (through `rx`, which counts them), then on to `socket`.
    pub(crate) fn splice_in(
        &mut self,
        rx: &mut Rx,
        session_fd: RawFd,
        socket: Option<RawFd>,
        tx: &mut Tx,
        pool: &mut PipePool,
    ) -> Result<Spliced, StreamError> {
        let Some(fd) = socket else {
            return Ok(Spliced::Declined);
        };
        if !self.state.replied()
            || self.prefix_pos < self.prefix.len()
            || self.backlog_pos < self.backlog.len()
        {
            return Ok(Spliced::Declined);
        }
        let allowed = self.state.receive_limit();
        let n = loop {
            let has_room = self
                .pipes
                .back()
                .is_some_and(|f| !f.full && f.len < f.pipe.capacity);
            if !has_room {
                if self.pipes.len() == INBOUND_PIPES {
                    return Ok(Spliced::Declined);
                }
                let Ok(pipe) = pool.get_bulk() else {
                    return Ok(Spliced::Declined);
                };
                self.pipes.push_back(Filled {
                    pipe,
                    len: 0,
                    full: false,
                });
            }
            let last = self.pipes.back_mut().expect("a pipe to fill");
            let room = last.pipe.capacity - last.len;
            let want = room.min(allowed);
            if want == 0 {
                return Ok(Spliced::Declined);
            }
            let outcome = match rx.splice_payload(session_fd, last.pipe.write.as_raw_fd(), want) {
                Ok(n) if n > 0 => {
                    if n == room {
                        // A bulk transfer: fewer, larger splices from now on.
                        pool.grow(&mut last.pipe);
                    }
                    last.len += n;
                    break n;
                }
                // An empty pipe has room, so the session is out of bytes;
                // one holding some may be out of slots: try the next pipe.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && last.len > 0 => {
                    last.full = true;
                    continue;
                }
                // Would block, EOF or an error: the next read tells which.
                Ok(_) | Err(_) => Spliced::WouldBlock,
            };
            if last.len == 0 {
                let unused = self.pipes.pop_back().expect("the last pipe");
                pool.put(unused.pipe);
            }
            return Ok(outcome);
        };
        self.take_window(n)?;
        let written = self
            .flush_inbound(fd, tx, pool)
            .map_err(StreamError::Socket)?;
        Ok(Spliced::Moved { written })
    }

    /// Writes what waits for the socket: our answer, the pipe, the
    /// backlog (nothing before the REPLY). Returns the peer's bytes the
    /// socket took.
    pub(crate) fn flush_inbound(
        &mut self,
        socket: RawFd,
        tx: &mut Tx,
        pool: &mut PipePool,
    ) -> io::Result<u64> {
        if !self.state.replied() {
            return Ok(0);
        }
        let mut written = 0u64;
        let result = (|| {
            while self.prefix_pos < self.prefix.len() {
                self.prefix_pos += splice::send(socket, &self.prefix[self.prefix_pos..])?;
            }
            while let Some(front) = self.pipes.front_mut() {
                if front.len > 0 {
                    let n = splice::splice(front.pipe.read.as_raw_fd(), socket, front.len)?;
                    front.len -= n;
                    written += n as u64;
                }
                if front.len > 0 {
                    continue;
                }
                let empty = self.pipes.pop_front().expect("the front pipe");
                pool.put(empty.pipe);
            }
            while self.backlog_pos < self.backlog.len() {
                let n = splice::send(socket, &self.backlog[self.backlog_pos..])?;
                self.backlog_pos += n;
                written += n as u64;
            }
            io::Result::Ok(())
        })();
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
        if let Some(window) = self.state.consumed(n) {
            tx.control(self.id, &window);
        }
    }

    /// Whether the stream's socket sends in bulk (its reads fill).
    pub(crate) fn is_bulk(&self) -> bool {
        self.bulk
    }

    /// Whether the FIN was received and everything before it written: the
    /// socket's write side can be shut (or the socket closed).
    pub(crate) fn inbound_finished(&self) -> bool {
        self.state.fin_received() && !self.inbound_pending()
    }

    /// Whether the socket's EOF went to the peer.
    pub(crate) fn outbound_finished(&self) -> bool {
        self.state.fin_sent()
    }

    /// Shuts the socket's write side once, after the peer's FIN.
    pub(crate) fn shut_socket(&mut self, socket: RawFd) -> io::Result<()> {
        if !self.shut {
            self.shut = true;
            splice::shutdown_write(socket)?;
        }
        Ok(())
    }

    /// Gives empty pipes back to the pool (ones holding bytes are closed).
    pub(crate) fn release(self, pool: &mut PipePool) {
        for filled in self.pipes {
            if filled.len == 0 {
                pool.put(filled.pipe);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::{HEADER_LEN, Header};
    use crate::socks5::Progress;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// A non-blocking socket for the stream and the far end of it.
    fn socket_pair() -> (UnixStream, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (ours, theirs)
    }

    /// The frames `tx` holds, as (header, payload), written out through a
    /// socket pair.
    fn frames(tx: &mut Tx, pool: &mut PipePool) -> Vec<(Header, Vec<u8>)> {
        let (ours, mut theirs) = socket_pair();
        assert!(tx.flush(ours.as_raw_fd(), pool), "all written");
        drop(ours);
        let mut wire = Vec::new();
        theirs.read_to_end(&mut wire).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let Ok(Progress::Done(h, _)) = Header::parse(&wire[at..]) else {
                panic!("a whole header at {at}");
            };
            let end = at + HEADER_LEN + h.len as usize;
            out.push((h, wire[at + HEADER_LEN..end].to_vec()));
            at = end;
        }
        out
    }

    #[test]
    fn the_peer_may_not_send_more_than_the_window() {
        let (ours, _theirs) = socket_pair();
        let mut tx = Tx::default();
        let mut stream = Stream::new(0, 5, StreamState::new(1000, 4096), Vec::new());
        // Before the REPLY nothing is written, so no credit goes back.
        stream
            .receive(&[1; 4096], Some(ours.as_raw_fd()), &mut tx)
            .unwrap();
        assert!(matches!(
            stream.receive(&[1], Some(ours.as_raw_fd()), &mut tx),
            Err(StreamError::Protocol(
                mux::stream::StreamError::WindowExceeded
            ))
        ));
    }

    #[test]
    fn the_answer_goes_first_and_credit_goes_back_by_quarters() {
        let (ours, mut theirs) = socket_pair();
        let (mut tx, mut pool) = (Tx::default(), PipePool::new(65536, 65536, 2));
        let mut stream = Stream::new(0, 5, StreamState::new(1000, 4096), Vec::new());
        stream
            .receive(b"data", Some(ours.as_raw_fd()), &mut tx)
            .unwrap();
        assert_eq!(
            stream
                .flush_inbound(ours.as_raw_fd(), &mut tx, &mut pool)
                .unwrap(),
            0
        );
        stream.state.on_reply(crate::socks5::ReplyCode::Succeeded);
        stream.answer_first(b"ANSWER ");
        assert_eq!(
            stream
                .flush_inbound(ours.as_raw_fd(), &mut tx, &mut pool)
                .unwrap(),
            4
        );
        let mut got = [0u8; 11];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ANSWER data");
        assert!(
            frames(&mut tx, &mut pool).is_empty(),
            "4 bytes: no WINDOW yet"
        );
        // Written at once now: the quarter window is reached, one WINDOW
        // frame credits all 4 + 1020 bytes.
        assert_eq!(
            stream
                .receive(&[2; 1020], Some(ours.as_raw_fd()), &mut tx)
                .unwrap(),
            1020
        );
        let sent = frames(&mut tx, &mut pool);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0.kind, crate::mux::FrameType::Window);
        assert_eq!(sent[0].1, 1024u32.to_be_bytes());
    }

    #[test]
    fn sending_stops_at_the_credit_says_blocked_and_ends_with_fin() {
        let (ours, mut theirs) = socket_pair();
        let (mut tx, mut pool) = (Tx::default(), PipePool::new(65536, 65536, 2));
        let mut stream = Stream::new(0, 9, StreamState::new(10, 4096), b"early".to_vec());
        theirs.write_all(&[3; 20]).unwrap();
        theirs.shutdown(std::net::Shutdown::Write).unwrap();
        let fd = ours.as_raw_fd();
        let sent = stream
            .send(fd, &mut tx, -1, &mut pool, 16, usize::MAX)
            .unwrap();
        assert_eq!(sent.bytes, 10);
        assert!(stream.state.out_of_credit() && !stream.outbound_finished());
        stream.state.on_window(100).unwrap();
        let sent = stream
            .send(fd, &mut tx, -1, &mut pool, 16, usize::MAX)
            .unwrap();
        assert_eq!(sent.bytes, 15);
        assert!(stream.outbound_finished());
        let frames = frames(&mut tx, &mut pool);
        let payloads: Vec<_> = frames
            .iter()
            .map(|(h, p)| (h.kind, h.stream, p.clone()))
            .collect();
        use crate::mux::FrameType::{Blocked, Data, Fin};
        assert_eq!(
            payloads,
            [
                (Data, 9, b"early".to_vec()),
                (Data, 9, vec![3; 5]),
                // Out of credit with bytes left: the peer hears it once.
                (Blocked, 9, Vec::new()),
                (Data, 9, vec![3; 15]),
                (Fin, 9, Vec::new()),
            ]
        );
    }
}
