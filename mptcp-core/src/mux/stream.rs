//! One stream's protocol state, as one end sees it: what it may still send
//! (credit from the peer's window), what the peer may still send (our
//! window, given back in WINDOW frames as the bytes are consumed),
//! half-close in each direction, the REPLY, and how the stream ends.
//!
//! Pure: the caller does the I/O and reports what it did; every method
//! that the peer's frames drive returns a [`StreamError`] when the peer
//! broke the protocol.
//!
//! ```
//! use mptcp_core::mux::{Control, StreamState};
//! // We announced a 64 KiB window; the peer announced 16 KiB.
//! let mut ours = StreamState::new(16 * 1024, 64 * 1024);
//! assert_eq!(ours.send_limit(), 16 * 1024);
//! ours.sent(16 * 1024);
//! assert!(ours.out_of_credit());
//! ours.on_window(4096);
//! assert_eq!(ours.send_limit(), 4096);
//! // The peer's bytes: a WINDOW frame goes back once a quarter window
//! // was consumed.
//! ours.on_data(20 * 1024).unwrap();
//! assert_eq!(ours.consumed(10 * 1024), None);
//! assert_eq!(ours.consumed(10 * 1024), Some(Control::Window(20 * 1024)));
//! ```

use std::fmt;

use super::Control;
use crate::socks5::ReplyCode;

/// How the peer broke a stream's protocol (the session cannot go on: the
/// byte counts of both ends no longer agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// More DATA than the window allowed.
    WindowExceeded,
    /// DATA after the peer's FIN.
    DataAfterFin,
    /// A WINDOW increment that takes the credit past what any window
    /// allows.
    CreditOverflow,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamError::WindowExceeded => "data beyond the stream's window",
            StreamError::DataAfterFin => "data after the stream's FIN",
            StreamError::CreditOverflow => "a window increment beyond any window",
        })
    }
}

impl std::error::Error for StreamError {}

/// Credit at most: a window of [`super::MAX_WINDOW`] never grows past it.
const MAX_CREDIT: u64 = 1 << 40;

/// The REPLY to a stream's OPEN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Pending,
    Succeeded,
    Failed,
}

/// One stream's protocol state at one end.
#[derive(Debug, Clone)]
pub struct StreamState {
    // Towards the peer.
    /// Bytes the peer still accepts.
    credit: u64,
    /// Our FIN was queued: nothing more goes out.
    fin_sent: bool,
    /// BLOCKED went out since the last WINDOW frame.
    blocked_said: bool,

    // From the peer.
    /// Our window: the initial one, or what BLOCKED frames grew it to.
    window: u32,
    /// How far BLOCKED frames may grow `window`.
    max_window: u32,
    /// The peer's bytes received and not yet consumed.
    buffered: u64,
    /// Bytes the peer may still send.
    allowed: u64,
    /// Bytes consumed that were not yet credited back.
    unacked: u64,
    /// The peer's FIN arrived.
    fin_received: bool,

    reply: Reply,
    /// The stream is over for the peer too (both FINs, a failed REPLY, a
    /// RESET either way, the session gone): no RESET is due.
    over: bool,
    /// The stream left its session ([`StreamState::finish`] was called).
    finished: bool,
}

impl StreamState {
    /// A new stream: the peer takes `peer_window` bytes before a WINDOW
    /// frame, and may send us `window` (which stays as it is: see
    /// [`StreamState::growing_to`]).
    pub fn new(peer_window: u32, window: u32) -> StreamState {
        StreamState {
            credit: u64::from(peer_window),
            fin_sent: false,
            blocked_said: false,
            window,
            max_window: window,
            buffered: 0,
            allowed: u64::from(window),
            unacked: 0,
            fin_received: false,
            reply: Reply::Pending,
            over: false,
            finished: false,
        }
    }

    /// The same stream, with a window that the peer's BLOCKED frames may
    /// double up to `max_window` ([`StreamState::on_blocked`]).
    pub fn growing_to(self, max_window: u32) -> StreamState {
        StreamState {
            max_window: max_window.max(self.window),
            ..self
        }
    }

    /// Our window now.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// How many bytes may be sent now (0 after our FIN).
    pub fn send_limit(&self) -> usize {
        if self.fin_sent || self.finished {
            return 0;
        }
        usize::try_from(self.credit).unwrap_or(usize::MAX)
    }

    /// `n` bytes were queued for the peer. They must be within
    /// [`StreamState::send_limit`]; more is a bug of the caller, and is
    /// cut to the limit in release builds rather than sent.
    pub fn sent(&mut self, n: usize) {
        debug_assert!(n <= self.send_limit(), "sent beyond the peer's window");
        self.credit = self.credit.saturating_sub(n as u64);
    }

    /// Whether the credit ran out (a WINDOW frame will resume sending).
    pub fn out_of_credit(&self) -> bool {
        self.credit == 0 && !self.fin_sent
    }

    /// A WINDOW frame from the peer.
    pub fn on_window(&mut self, increment: u32) -> Result<(), StreamError> {
        let credit = self.credit + u64::from(increment);
        if credit > MAX_CREDIT {
            return Err(StreamError::CreditOverflow);
        }
        self.credit = credit;
        self.blocked_said = false;
        Ok(())
    }

    /// Out of credit with data still to send: returns the BLOCKED frame
    /// to queue, once each time the credit runs out.
    pub fn blocked(&mut self) -> Option<Control> {
        if self.credit > 0 || self.fin_sent || self.finished || self.blocked_said {
            return None;
        }
        self.blocked_said = true;
        Some(Control::Blocked)
    }

    /// The peer's BLOCKED: when our reader keeps up (at most a quarter
    /// window waits here) the window, not the reader, held the peer back,
    /// so it doubles, up to the maximum. Returns the WINDOW frame that
    /// grants the difference.
    pub fn on_blocked(&mut self) -> Option<Control> {
        let reader_keeps_up = self.buffered <= u64::from(self.window / 4);
        if self.fin_received || self.finished || self.window >= self.max_window || !reader_keeps_up
        {
            return None;
        }
        let grown = self.window.saturating_mul(2).min(self.max_window);
        let increment = grown - self.window;
        self.window = grown;
        self.allowed += u64::from(increment);
        Some(Control::Window(increment))
    }

    /// Our FIN: returns the frame to queue, the first time only.
    pub fn send_fin(&mut self) -> Option<Control> {
        if self.fin_sent || self.finished {
            return None;
        }
        self.fin_sent = true;
        self.settle();
        Some(Control::Fin)
    }

    /// Whether our FIN was queued.
    pub fn fin_sent(&self) -> bool {
        self.fin_sent
    }

    /// `len` payload bytes from the peer, against our window.
    pub fn on_data(&mut self, len: usize) -> Result<(), StreamError> {
        if self.fin_received {
            return Err(StreamError::DataAfterFin);
        }
        let len = len as u64;
        if len > self.allowed {
            return Err(StreamError::WindowExceeded);
        }
        self.allowed -= len;
        self.buffered += len;
        Ok(())
    }

    /// The peer's bytes that may still arrive before a WINDOW frame of
    /// ours.
    pub fn receive_limit(&self) -> usize {
        usize::try_from(self.allowed).unwrap_or(usize::MAX)
    }

    /// `n` of the peer's bytes were consumed (written to the socket):
    /// returns a WINDOW frame to send once a quarter window is due (fewer
    /// frames, and the sender never runs dry).
    pub fn consumed(&mut self, n: u64) -> Option<Control> {
        self.buffered = self.buffered.saturating_sub(n);
        self.unacked += n;
        if self.unacked == 0 || self.unacked < u64::from(self.window / 4) {
            return None;
        }
        let increment = u32::try_from(self.unacked).unwrap_or(u32::MAX);
        self.allowed += u64::from(increment);
        self.unacked -= u64::from(increment);
        Some(Control::Window(increment))
    }

    /// The peer's FIN.
    pub fn on_fin(&mut self) {
        self.fin_received = true;
        self.settle();
    }

    /// Whether the peer's FIN arrived.
    pub fn fin_received(&self) -> bool {
        self.fin_received
    }

    /// The REPLY to the OPEN, received (opener) or sent (acceptor). A
    /// failure ends the stream for both ends.
    pub fn on_reply(&mut self, code: ReplyCode) {
        if code == ReplyCode::Succeeded {
            self.reply = Reply::Succeeded;
        } else {
            self.reply = Reply::Failed;
            self.over = true;
        }
    }

    /// Whether the REPLY said "succeeded": the peer's bytes may go on to
    /// the socket.
    pub fn replied(&self) -> bool {
        self.reply == Reply::Succeeded
    }

    /// Whether a REPLY came or went, either way.
    pub fn reply_known(&self) -> bool {
        self.reply != Reply::Pending
    }

    /// A RESET from the peer, or the session went away: nothing more
    /// flows, and no RESET is due.
    pub fn on_reset(&mut self) {
        self.over = true;
    }

    /// Whether the peer knows that the stream is over.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// The stream leaves its session: returns the RESET to send if the
    /// peer does not know yet that it is over. Once only: a stream ends
    /// exactly once.
    pub fn finish(&mut self) -> Option<Control> {
        if self.finished {
            return None;
        }
        self.finished = true;
        if self.over {
            return None;
        }
        self.over = true;
        Some(Control::Reset(ReplyCode::GeneralFailure))
    }

    /// Both FINs: the stream is over for both ends.
    fn settle(&mut self) {
        if self.fin_sent && self.fin_received {
            self.over = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// What the model of two ends does next.
    #[derive(Debug, Clone)]
    enum Op {
        /// A sends up to this many bytes (as far as its credit allows).
        Send(usize),
        /// B consumes up to this many bytes of what it received.
        Consume(u64),
        /// The oldest frame in flight to A (a WINDOW) arrives.
        DeliverToA,
        /// The oldest frame in flight to B (DATA or FIN) arrives.
        DeliverToB,
        /// A sends its FIN.
        Fin,
        /// A drops the stream (a RESET, unless it is over).
        FinishA,
        /// A says BLOCKED if it is out of credit.
        Blocked,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1usize..100_000).prop_map(Op::Send),
            (1u64..100_000).prop_map(Op::Consume),
            Just(Op::DeliverToA),
            Just(Op::DeliverToB),
            Just(Op::Fin),
            Just(Op::FinishA),
            Just(Op::Blocked),
        ]
    }

    #[derive(Debug)]
    enum Frame {
        Data(usize),
        Fin,
        Reset,
        Window(u32),
        Blocked,
    }

    proptest! {
        /// A sender that sends what `send_limit` allows never overruns the
        /// receiver's window (also while BLOCKED grows it), a FIN is never
        /// followed by data, bytes arrive in full, and the stream ends
        /// (RESET or not) once.
        #[test]
        fn the_two_ends_agree(
            peer_window in 1u32..300_000,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let mut a = StreamState::new(peer_window, 1 << 20);
            let mut b = StreamState::new(1 << 20, peer_window).growing_to(4 * peer_window);
            a.on_reply(ReplyCode::Succeeded);
            b.on_reply(ReplyCode::Succeeded);
            let (mut to_a, mut to_b) = (VecDeque::new(), VecDeque::new());
            let (mut sent, mut received, mut consumed) = (0u64, 0u64, 0u64);
            let mut resets = 0;
            for op in ops {
                match op {
                    Op::Send(want) => {
                        let n = want.min(a.send_limit());
                        if n > 0 {
                            a.sent(n);
                            sent += n as u64;
                            to_b.push_back(Frame::Data(n));
                        }
                    }
                    Op::Consume(max) => {
                        let n = max.min(received - consumed);
                        consumed += n;
                        if let Some(Control::Window(inc)) = b.consumed(n) {
                            to_a.push_back(Frame::Window(inc));
                        }
                    }
                    Op::DeliverToA => {
                        if let Some(Frame::Window(inc)) = to_a.pop_front() {
                            prop_assert_eq!(a.on_window(inc), Ok(()));
                        }
                    }
                    Op::DeliverToB => match to_b.pop_front() {
                        Some(Frame::Data(n)) => {
                            prop_assert_eq!(b.on_data(n), Ok(()));
                            received += n as u64;
                        }
                        Some(Frame::Fin) => b.on_fin(),
                        Some(Frame::Reset) => b.on_reset(),
                        Some(Frame::Blocked) => {
                            if let Some(Control::Window(inc)) = b.on_blocked() {
                                to_a.push_back(Frame::Window(inc));
                            }
                        }
                        Some(Frame::Window(_)) | None => {}
                    },
                    Op::Fin => {
                        if let Some(fin) = a.send_fin() {
                            prop_assert_eq!(fin, Control::Fin);
                            to_b.push_back(Frame::Fin);
                        }
                    }
                    Op::FinishA => {
                        if a.finish().is_some() {
                            resets += 1;
                            to_b.push_back(Frame::Reset);
                        }
                    }
                    Op::Blocked => {
                        if let Some(blocked) = a.blocked() {
                            prop_assert_eq!(blocked, Control::Blocked);
                            to_b.push_back(Frame::Blocked);
                        }
                    }
                }
                prop_assert!(b.window() <= 4 * peer_window);
                prop_assert!(a.send_limit() == 0 || !(a.fin_sent() || resets > 0));
            }
            // Everything in flight arrives.
            while let Some(frame) = to_b.pop_front() {
                match frame {
                    Frame::Data(n) => {
                        prop_assert_eq!(b.on_data(n), Ok(()));
                        received += n as u64;
                    }
                    Frame::Fin => b.on_fin(),
                    Frame::Reset => b.on_reset(),
                    Frame::Window(_) | Frame::Blocked => {}
                }
            }
            prop_assert_eq!(received, sent);
            // However it ended, it ends once: a last finish() may still
            // owe the RESET, a second never does.
            let last = usize::from(a.finish().is_some());
            prop_assert_eq!(a.finish(), None, "a stream ends once");
            prop_assert!(resets + last <= 1);
            prop_assert!(a.is_over());
            // Past the window: an error, never accepted.
            let limit = b.receive_limit();
            if !b.fin_received() {
                prop_assert_eq!(b.on_data(limit + 1), Err(StreamError::WindowExceeded));
            } else {
                prop_assert_eq!(b.on_data(1), Err(StreamError::DataAfterFin));
            }
        }
    }

    #[test]
    fn both_fins_end_the_stream_without_a_reset() {
        let mut s = StreamState::new(10, 10);
        s.on_reply(ReplyCode::Succeeded);
        assert_eq!(s.send_fin(), Some(Control::Fin));
        assert_eq!(s.send_fin(), None, "one FIN");
        assert!(!s.is_over());
        s.on_fin();
        assert!(s.is_over());
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn a_failed_reply_ends_the_stream_and_an_open_one_is_reset_once() {
        let mut failed = StreamState::new(10, 10);
        failed.on_reply(ReplyCode::ConnectionRefused);
        assert!(!failed.replied() && failed.reply_known() && failed.is_over());
        assert_eq!(failed.finish(), None);

        let mut open = StreamState::new(10, 10);
        assert_eq!(
            open.finish(),
            Some(Control::Reset(ReplyCode::GeneralFailure))
        );
        assert_eq!(open.finish(), None);
        assert_eq!(open.send_limit(), 0, "nothing goes out after the end");
    }

    #[test]
    fn blocked_is_said_once_per_exhausted_credit() {
        let mut s = StreamState::new(1000, 1000);
        assert_eq!(s.blocked(), None, "credit left");
        s.sent(1000);
        assert_eq!(s.blocked(), Some(Control::Blocked));
        assert_eq!(s.blocked(), None, "said already");
        s.on_window(10).unwrap();
        s.sent(10);
        assert_eq!(s.blocked(), Some(Control::Blocked), "a WINDOW re-arms it");
        s.on_window(10).unwrap();
        s.sent(10);
        s.send_fin();
        assert_eq!(s.blocked(), None, "nothing more to send after FIN");
    }

    #[test]
    fn a_window_grows_on_blocked_while_the_reader_keeps_up_and_only_to_its_maximum() {
        let mut s = StreamState::new(1000, 64 * 1024).growing_to(200 * 1024);
        s.on_data(64 * 1024).unwrap();
        assert_eq!(s.receive_limit(), 0);
        // The reader has not taken the bytes: the reader is the limit.
        assert_eq!(s.on_blocked(), None);
        assert_eq!(s.consumed(64 * 1024), Some(Control::Window(64 * 1024)));
        // It keeps up: the window doubles, and the peer may send the
        // difference at once.
        assert_eq!(s.on_blocked(), Some(Control::Window(64 * 1024)));
        assert_eq!((s.window(), s.receive_limit()), (128 * 1024, 128 * 1024));
        assert_eq!(s.on_blocked(), Some(Control::Window(72 * 1024)), "capped");
        assert_eq!(s.window(), 200 * 1024);
        assert_eq!(s.on_blocked(), None, "at its maximum");
        // More than the window never arrives unnoticed.
        s.on_data(200 * 1024).unwrap();
        assert_eq!(s.on_data(1), Err(StreamError::WindowExceeded));
        let mut fixed = StreamState::new(1000, 64 * 1024);
        assert_eq!(fixed.on_blocked(), None, "no maximum given: a fixed window");
    }

    #[test]
    fn window_increments_cannot_overflow_the_credit() {
        let mut s = StreamState::new(u32::MAX, 10);
        let mut result = Ok(());
        for _ in 0..1000 {
            result = s.on_window(u32::MAX);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(StreamError::CreditOverflow));
    }
}
