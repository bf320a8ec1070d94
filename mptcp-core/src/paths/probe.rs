//! Link probes, the I/O part: one round per link is a non-blocking TCP
//! connect to each target from the link's own address and device, so the
//! probe leaves through the link it tests (the source rule of automatic
//! paths sends it to the link's table). Any answer proves the path, a
//! refusal (RST) included, so a target needs no listener; a probe socket
//! is closed with a reset (`SO_LINGER` 0), leaving no `TIME_WAIT` behind.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, BorrowedFd},
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};

use super::health::ProbeOutcome;
use crate::sys::probe_sock::WRITABLE;

/// The probes of one link in flight.
#[derive(Debug)]
struct Round {
    ifindex: u32,
    started: Instant,
    sockets: Vec<Socket>,
}

/// Every round in flight.
#[derive(Debug, Default)]
pub(crate) struct Prober {
    rounds: Vec<Round>,
}

/// A non-blocking connect from `src` on `ifname` to `target`; true if it
/// already finished with an answer.
fn connect(ifname: &str, src: IpAddr, target: SocketAddr) -> io::Result<(Socket, bool)> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.set_linger(Some(Duration::ZERO))?;
    // The source rule already picks the link's table; the device binding
    // also holds while that rule is missing. It needs CAP_NET_RAW, which a
    // daemon that may change endpoints normally has.
    let _ = socket.bind_device(Some(ifname.as_bytes()));
    socket.bind(&SocketAddr::new(src, 0).into())?;
    match socket.connect(&target.into()) {
        Ok(()) => Ok((socket, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok((socket, false)),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok((socket, true)),
        Err(e) => Err(e),
    }
}

/// Whether a finished connect got an answer: connected, or refused by the
/// target.
fn answered(socket: &Socket) -> bool {
    match socket.take_error() {
        Ok(None) => socket.peer_addr().is_ok(),
        Ok(Some(e)) => e.raw_os_error() == Some(libc::ECONNREFUSED),
        Err(_) => false,
    }
}

impl Prober {
    /// Whether a round of `ifindex` is in flight.
    pub(crate) fn in_flight(&self, ifindex: u32) -> bool {
        self.rounds.iter().any(|r| r.ifindex == ifindex)
    }

    /// Starts a round for the link `ifindex` (`ifname`, address `src`)
    /// towards the targets of `src`'s family. Returns the outcome at once
    /// when it is already known (no target of that family or no socket is
    /// a loss; an immediate answer is one).
    pub(crate) fn start(
        &mut self,
        ifindex: u32,
        ifname: &str,
        src: IpAddr,
        targets: &[SocketAddr],
        now: Instant,
    ) -> Option<ProbeOutcome> {
        let mut sockets = Vec::new();
        for target in targets.iter().filter(|t| t.is_ipv6() == src.is_ipv6()) {
            match connect(ifname, src, *target) {
                Ok((_, true)) => return Some(ProbeOutcome::Answered(now.elapsed())),
                Ok((socket, false)) => sockets.push(socket),
                Err(e) => tracing::debug!(%ifname, %target, error = %e, "probe not sent"),
            }
        }
        if sockets.is_empty() {
            return Some(ProbeOutcome::Lost);
        }
        self.rounds.push(Round {
            ifindex,
            started: now,
            sockets,
        });
        None
    }

    /// The sockets to poll, in the order `collect` expects their events.
    pub(crate) fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, i16)> {
        self.rounds
            .iter()
            .flat_map(|r| r.sockets.iter().map(|s| (s.as_fd(), WRITABLE)))
            .collect()
    }

    /// When the oldest round times out.
    pub(crate) fn next_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.rounds.iter().map(|r| r.started + timeout).min()
    }

    /// Ends the rounds that have an answer (from `revents`, the events of
    /// `poll_fds` in order, or empty) or that timed out, and returns their
    /// outcomes by link.
    pub(crate) fn collect(
        &mut self,
        revents: &[i16],
        timeout: Duration,
        now: Instant,
    ) -> Vec<(u32, ProbeOutcome)> {
        let mut events = revents.iter().copied();
        let mut outcomes = Vec::new();
        self.rounds.retain_mut(|round| {
            let mut answer = false;
            round.sockets.retain(|socket| {
                if events.next().unwrap_or(0) == 0 {
                    return true;
                }
                answer |= answered(socket);
                false
            });
            let outcome = if answer {
                Some(ProbeOutcome::Answered(now - round.started))
            } else if round.sockets.is_empty() || now >= round.started + timeout {
                Some(ProbeOutcome::Lost)
            } else {
                None
            };
            match outcome {
                Some(outcome) => {
                    outcomes.push((round.ifindex, outcome));
                    false
                }
                None => true,
            }
        });
        outcomes
    }

    /// Drops the round of a link that went away.
    pub(crate) fn cancel(&mut self, ifindex: u32) {
        self.rounds.retain(|r| r.ifindex != ifindex);
    }
}
