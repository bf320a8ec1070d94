//! What a client is told: the answer once its destination is reached, and
//! the [`Failure`] that says what to count and how to report an error in
//! the client's protocol.

use std::io;
use std::net::SocketAddr;

use crate::http;
use crate::relay::stats::ErrorKind;
use crate::socks5::{self, ReplyCode};

/// What the client is told once the destination is reached, and how
/// failures are reported to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
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

impl Answer {
    /// Appends the success answer for the client's protocol (`bound`: the
    /// address a SOCKS5 reply names).
    pub(super) fn encode_success(self, bound: Option<SocketAddr>, out: &mut Vec<u8>) {
        match self {
            Answer::Socks5 => socks5::encode_reply(ReplyCode::Succeeded, bound, out),
            Answer::HttpConnect => out.extend_from_slice(http::CONNECT_ESTABLISHED),
            Answer::Nothing | Answer::HttpForward | Answer::MuxReply => {}
        }
    }

    /// Appends the answer to failure `f` for the client's protocol.
    pub(super) fn encode_failure(self, f: &Failure, out: &mut Vec<u8>) {
        match self {
            Answer::Nothing | Answer::MuxReply => {}
            Answer::Socks5 => socks5::encode_reply(f.socks, None, out),
            Answer::HttpConnect | Answer::HttpForward => {
                out.extend_from_slice(&http::error_response(f.http, &f.detail));
            }
        }
    }
}

/// A failed connection: what to count and what to tell the client.
#[derive(Debug)]
pub(super) struct Failure {
    pub kind: ErrorKind,
    pub socks: ReplyCode,
    pub http: u16,
    /// The answer is already on its way to the client.
    pub answered: bool,
    pub detail: String,
}

impl Failure {
    pub(super) fn new(kind: ErrorKind, detail: impl Into<String>) -> Failure {
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

    pub(super) fn connect(err: &io::Error, to: SocketAddr) -> Failure {
        let mut f = Failure::new(ErrorKind::Connect, format!("connect to {to}: {err}"));
        f.socks = ReplyCode::from_io_error(err);
        if f.socks == ReplyCode::TtlExpired {
            f.http = 504;
        }
        f
    }

    /// The remote relay refused the connection with `reply`, which the
    /// client gets (as a SOCKS5 reply, or the nearest HTTP status).
    pub(super) fn upstream(reply: ReplyCode, detail: impl Into<String>) -> Failure {
        let mut f = Failure::new(ErrorKind::Upstream, detail);
        f.socks = reply;
        f.http = match reply {
            ReplyCode::NotAllowed => 403,
            ReplyCode::TtlExpired => 504,
            _ => 502,
        };
        f
    }

    pub(super) fn io(e: &io::Error) -> Failure {
        Failure::new(ErrorKind::Io, format!("relaying: {e}"))
    }
}
