//! Live counters. Each worker thread owns one cache-line-aligned block of
//! atomics (no sharing on the hot path); [`Stats`] is their sum.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a connection failed; counted in [`Stats::errors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum ErrorKind {
    /// The client sent a malformed or unsupported SOCKS5/HTTP request.
    Protocol,
    /// Wrong username or password, or no acceptable method.
    Auth,
    /// The client address is not in the allowlist.
    ClientDenied,
    /// The destination policy refused the destination.
    DestinationDenied,
    /// The destination name did not resolve.
    Resolve,
    /// Connecting to the destination or the remote relay failed.
    Connect,
    /// The remote relay (SOCKS5 upstream) refused or failed the handshake.
    Upstream,
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// No data flowed for the idle timeout.
    IdleTimeout,
    /// A socket error while relaying (reset, broken pipe).
    Io,
    /// Refused: the global or per-client connection limit was reached.
    Limit,
    /// accept() failed (for example EMFILE: out of file descriptors).
    Accept,
    /// The original destination of a redirected connection was unknown.
    OriginalDestination,
}

impl ErrorKind {
    /// All kinds, in counter order.
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::Protocol,
        ErrorKind::Auth,
        ErrorKind::ClientDenied,
        ErrorKind::DestinationDenied,
        ErrorKind::Resolve,
        ErrorKind::Connect,
        ErrorKind::Upstream,
        ErrorKind::HandshakeTimeout,
        ErrorKind::IdleTimeout,
        ErrorKind::Io,
        ErrorKind::Limit,
        ErrorKind::Accept,
        ErrorKind::OriginalDestination,
    ];

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Protocol => "protocol",
            ErrorKind::Auth => "auth",
            ErrorKind::ClientDenied => "client_denied",
            ErrorKind::DestinationDenied => "destination_denied",
            ErrorKind::Resolve => "resolve",
            ErrorKind::Connect => "connect",
            ErrorKind::Upstream => "upstream",
            ErrorKind::HandshakeTimeout => "handshake_timeout",
            ErrorKind::IdleTimeout => "idle_timeout",
            ErrorKind::Io => "io",
            ErrorKind::Limit => "limit",
            ErrorKind::Accept => "accept",
            ErrorKind::OriginalDestination => "original_destination",
        }
    }
}

/// Why a datagram of a UDP association was dropped; counted in
/// [`UdpStats::drops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum UdpDrop {
    /// From the client, with a malformed SOCKS5 UDP header (short,
    /// reserved bytes set, unknown address type, a bad name).
    Malformed,
    /// From the client, a fragment (`FRAG != 0`), which is not reassembled.
    Fragment,
    /// To the association's client port from another address than the
    /// client's.
    ForeignSource,
    /// To the association's outgoing port from a host it did not send to.
    UnknownSender,
    /// To a destination the policy denies.
    DestinationDenied,
    /// To a new destination while the association has `udp_max_flows`.
    FlowLimit,
    /// To a name that did not resolve, or while too many wait for theirs.
    Resolve,
    /// The socket did not take it (its buffer full, or an error).
    SendFailed,
    /// A reply too large for a datagram once its header is prefixed.
    TooLarge,
    /// Carried in a session: its output buffer had no room right then (a
    /// datagram is never queued behind it).
    SessionFull,
    /// An answer for a session whose peer takes no DATAGRAM frames, or a
    /// datagram on a session whose listener serves no UDP.
    NotOffered,
    /// From the LAN, a new flow while no session to a remote relay is
    /// open (none works, or its session is being set up).
    NoSession,
    /// From the LAN, to a port `[local] udp_ports` blocks.
    Blocked,
}

impl UdpDrop {
    /// All reasons, in counter order.
    pub const ALL: [UdpDrop; 13] = [
        UdpDrop::Malformed,
        UdpDrop::Fragment,
        UdpDrop::ForeignSource,
        UdpDrop::UnknownSender,
        UdpDrop::DestinationDenied,
        UdpDrop::FlowLimit,
        UdpDrop::Resolve,
        UdpDrop::SendFailed,
        UdpDrop::TooLarge,
        UdpDrop::SessionFull,
        UdpDrop::NotOffered,
        UdpDrop::NoSession,
        UdpDrop::Blocked,
    ];

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            UdpDrop::Malformed => "malformed",
            UdpDrop::Fragment => "fragment",
            UdpDrop::ForeignSource => "foreign_source",
            UdpDrop::UnknownSender => "unknown_sender",
            UdpDrop::DestinationDenied => "destination_denied",
            UdpDrop::FlowLimit => "flow_limit",
            UdpDrop::Resolve => "resolve",
            UdpDrop::SendFailed => "send_failed",
            UdpDrop::TooLarge => "too_large",
            UdpDrop::SessionFull => "session_full",
            UdpDrop::NotOffered => "not_offered",
            UdpDrop::NoSession => "no_session",
            UdpDrop::Blocked => "blocked",
        }
    }
}

/// The counters of SOCKS5 UDP associations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// Associations open now.
    pub associations: u64,
    /// Associations opened since start.
    pub associations_opened: u64,
    /// Datagrams from clients sent on to destinations.
    pub datagrams_up: u64,
    /// Datagrams from destinations sent on to clients.
    pub datagrams_down: u64,
    /// Payload bytes of `datagrams_up` (without the SOCKS5 header).
    pub bytes_up: u64,
    /// Payload bytes of `datagrams_down`.
    pub bytes_down: u64,
    /// Datagrams dropped, by reason, indexed like [`UdpDrop::ALL`].
    pub drops: [u64; UdpDrop::ALL.len()],
}

impl UdpStats {
    /// The datagrams dropped for one reason.
    pub fn dropped(&self, why: UdpDrop) -> u64 {
        self.drops[why as usize]
    }

    /// Adds `other`'s counts to these (relays replaced by a reload).
    pub fn add(&mut self, other: &UdpStats) {
        self.associations += other.associations;
        self.associations_opened += other.associations_opened;
        self.datagrams_up += other.datagrams_up;
        self.datagrams_down += other.datagrams_down;
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
        for (total, d) in self.drops.iter_mut().zip(other.drops) {
            *total += d;
        }
    }
}

/// A snapshot of the counters of a running relay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections open now (handshaking or relaying).
    pub active: u64,
    /// Connections that reached the data phase since start.
    pub relayed: u64,
    /// Bytes from clients towards destinations.
    pub bytes_up: u64,
    /// Bytes from destinations towards clients.
    pub bytes_down: u64,
    /// Times splice() was refused (EINVAL) and a buffered copy took over.
    pub splice_fallbacks: u64,
    /// Multiplexed sessions with the other relay open now.
    pub sessions: u64,
    /// Connections carried as streams of a session since start (the rest
    /// had a connection of their own).
    pub multiplexed: u64,
    /// Sessions closed since start because the other relay broke the
    /// multiplexing protocol (a frame out of place, a window overrun).
    pub session_errors: u64,
    /// Worker panics caught since start (bugs: each closed that worker's
    /// connections, and the worker went on).
    pub worker_panics: u64,
    /// Local role: connections sent directly to their destination since
    /// start, because no remote relay worked (`fallback = "direct"`).
    pub direct: u64,
    /// Failures by kind, indexed like [`ErrorKind::ALL`].
    pub errors: [u64; ErrorKind::ALL.len()],
    /// SOCKS5 UDP associations and their datagrams.
    pub udp: UdpStats,
}

impl Stats {
    /// The count of one kind of error.
    pub fn error(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize]
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "accepted={} active={} relayed={} bytes_up={} bytes_down={} splice_fallbacks={} \
             sessions={} multiplexed={} session_errors={} worker_panics={} direct={}",
            self.accepted,
            self.active,
            self.relayed,
            self.bytes_up,
            self.bytes_down,
            self.splice_fallbacks,
            self.sessions,
            self.multiplexed,
            self.session_errors,
            self.worker_panics,
            self.direct
        )?;
        for kind in ErrorKind::ALL {
            let n = self.error(kind);
            if n > 0 {
                write!(f, " err_{}={n}", kind.name())?;
            }
        }
        let u = &self.udp;
        write!(
            f,
            " udp_associations={} udp_datagrams_up={} udp_datagrams_down={}",
            u.associations, u.datagrams_up, u.datagrams_down
        )?;
        for why in UdpDrop::ALL {
            let n = u.dropped(why);
            if n > 0 {
                write!(f, " udp_drop_{}={n}", why.name())?;
            }
        }
        Ok(())
    }
}

/// One worker's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub relayed: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub splice_fallbacks: AtomicU64,
    pub sessions_opened: AtomicU64,
    pub sessions_closed: AtomicU64,
    pub multiplexed: AtomicU64,
    pub session_errors: AtomicU64,
    pub worker_panics: AtomicU64,
    pub direct: AtomicU64,
    pub errors: [AtomicU64; ErrorKind::ALL.len()],
    pub udp_opened: AtomicU64,
    pub udp_closed: AtomicU64,
    pub udp_datagrams_up: AtomicU64,
    pub udp_datagrams_down: AtomicU64,
    pub udp_bytes_up: AtomicU64,
    pub udp_bytes_down: AtomicU64,
    pub udp_drops: [AtomicU64; UdpDrop::ALL.len()],
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn udp_drop(&self, why: UdpDrop) {
        self.udp_drops[why as usize].fetch_add(1, Relaxed);
    }

    pub fn sum(all: &[Counters]) -> Stats {
        let mut s = Stats::default();
        let (mut closed, mut sessions_closed, mut udp_closed) = (0, 0, 0);
        for c in all {
            s.accepted += c.accepted.load(Relaxed);
            closed += c.closed.load(Relaxed);
            s.relayed += c.relayed.load(Relaxed);
            s.bytes_up += c.bytes_up.load(Relaxed);
            s.bytes_down += c.bytes_down.load(Relaxed);
            s.splice_fallbacks += c.splice_fallbacks.load(Relaxed);
            s.sessions += c.sessions_opened.load(Relaxed);
            sessions_closed += c.sessions_closed.load(Relaxed);
            s.multiplexed += c.multiplexed.load(Relaxed);
            s.session_errors += c.session_errors.load(Relaxed);
            s.worker_panics += c.worker_panics.load(Relaxed);
            s.direct += c.direct.load(Relaxed);
            for (total, e) in s.errors.iter_mut().zip(&c.errors) {
                *total += e.load(Relaxed);
            }
            let u = &mut s.udp;
            u.associations_opened += c.udp_opened.load(Relaxed);
            udp_closed += c.udp_closed.load(Relaxed);
            u.datagrams_up += c.udp_datagrams_up.load(Relaxed);
            u.datagrams_down += c.udp_datagrams_down.load(Relaxed);
            u.bytes_up += c.udp_bytes_up.load(Relaxed);
            u.bytes_down += c.udp_bytes_down.load(Relaxed);
            for (total, d) in u.drops.iter_mut().zip(&c.udp_drops) {
                *total += d.load(Relaxed);
            }
        }
        s.udp.associations = s.udp.associations_opened.saturating_sub(udp_closed);
        s.active = s.accepted.saturating_sub(closed);
        s.sessions = s.sessions.saturating_sub(sessions_closed);
        s
    }
}
