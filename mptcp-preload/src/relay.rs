//! Relay-hop mode: `connect()` to a matching destination connects to the
//! SOCKS5 relay instead (over MPTCP when the socket is MPTCP) and asks it,
//! with one pipelined greeting+auth+CONNECT, to reach the destination.
//!
//! # Non-blocking sockets: the hop never waits in the program's thread
//!
//! A non-blocking `connect()` starts the TCP connection to the relay and
//! returns `EINPROGRESS`, as the kernel would. From then on the hop
//! ([`Hop`]) advances without waiting, inside whatever call the program
//! makes next on the socket:
//!
//! - `getsockopt(SO_ERROR)`, which event loops call once the socket became
//!   writable (nginx, Python asyncio, libuv, curl, Java NIO): the
//!   connection to the relay is up, so the SOCKS5 request goes out (one
//!   write: greeting, credentials, CONNECT) and `SO_ERROR` says 0. The
//!   program writes its first bytes after the request ("optimistic data",
//!   which SOCKS5 relays forward once they reach the destination).
//! - every read (`read`, `readv`, `recv`, `recvfrom`, `recvmsg` and their
//!   fortified versions): the relay's answer is read first; while it is
//!   incomplete the read fails with `EAGAIN` (every byte of it is consumed
//!   as it arrives, so a level-triggered loop does not spin, and an
//!   edge-triggered one gets a new edge when the rest arrives); a refusal fails that read once with
//!   the errno of the SOCKS5 reply (`ECONNREFUSED`, `EHOSTUNREACH`,
//!   `EACCES`, ...) and the socket is shut down (later reads: end of file).
//! - `poll`/`ppoll`, and `select`/`pselect` through them
//!   ([`select`](mod@crate::select)) (curl, wget, Python's sockets with a
//!   timeout, most clients with a connect timeout): the hop's socket is reported writable
//!   only once the relay has answered; meanwhile the library polls it for
//!   what the hop needs and advances it when that comes. So the program's
//!   own connect timeout covers the whole hop, and a relay that never
//!   answers ends in that timeout, not later.
//! - a second `connect()` (`EALREADY`, then `EISCONN`) and `getpeername()`
//!   (the destination once the connection to the relay is up).
//!
//! One thread at a time advances a hop (a flag in its cell), so threads
//! that poll and read the same socket never consume a byte twice.
//!
//! Alternatives rejected: finishing the exchange inside `SO_ERROR` (the
//! previous design) blocked an event loop's thread for the relay's round
//! trip and its connect to the destination (an nginx worker with one slow
//! upstream stalled every other request); hiding writability in
//! `epoll_wait` would need a shadow of every epoll registration (user data
//! is opaque, and an edge-triggered event cannot be re-armed unseen); a
//! helper thread would race with the program's first write and complicates
//! `fork()`; clearing `O_NONBLOCK` and doing everything inside `connect()`
//! (proxychains) stalls event loops for the whole exchange.
//!
//! Limits: with epoll (or `select` over more than `FD_SETSIZE`
//! descriptors) a program sees
//! its connect finish when the connection to the relay is up, so its
//! connect timeout does not cover the SOCKS5 exchange (a relay that accepts
//! and never answers looks like a destination that never answers); a
//! failure shows on the first read, not in `SO_ERROR`; the relay must
//! accept bytes after the CONNECT request (the project's relay and dante
//! do); `ioctl(FIONREAD)` counts the relay's answer until it is read;
//! reads through `io_uring` are not seen. A program that writes before
//! any of the calls above (none known) would send its bytes before the
//! request.
//!
//! # Blocking sockets
//!
//! A blocking `connect()` does the whole hop before it returns, bounded by
//! the program's `SO_SNDTIMEO` (then `EINPROGRESS`, as the kernel answers,
//! and the first read finishes the hop) or else by `MPTCP_PRELOAD_TIMEOUT`
//! (then `ETIMEDOUT`, logged). A read that finds the answer still awaited
//! waits up to `SO_RCVTIMEO` (then `EAGAIN`) or `MPTCP_PRELOAD_TIMEOUT`.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use libc::{c_int, sockaddr, socklen_t};
use mptcp_core::sys::socket::IPPROTO_MPTCP;

use crate::compat::int_option;
use crate::config::{Config, LogLevel, Relay};
use crate::exchange::{hop_dest, read_answers, send_request};
use crate::fdtable::{self, Cell, flag};
use crate::{compat, dns, errno, log, real};

fn fail(errno: c_int) -> c_int {
    crate::set_errno(errno);
    -1
}

/// Reads a socket address the program passed in.
///
/// # Safety
///
/// `addr` is null or points to `len` readable bytes.
pub unsafe fn read_sockaddr(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() || (len as usize) < size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: at least the family field is readable (checked above).
    let family = c_int::from(unsafe { (*addr).sa_family });
    match family {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family and the length say this is a sockaddr_in;
            // read_unaligned because the caller's buffer may be unaligned.
            let a = unsafe { addr.cast::<libc::sockaddr_in>().read_unaligned() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(a.sin_addr.s_addr).into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { addr.cast::<libc::sockaddr_in6>().read_unaligned() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A socket address in C form.
pub(crate) fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_in6, socklen_t) {
    // SAFETY: sockaddr_in6 is plain integers; all-zero is valid.
    let mut storage: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: a sockaddr_in (16 bytes) fits in a sockaddr_in6 (28).
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            (storage, size_of::<libc::sockaddr_in>() as socklen_t)
        }
        SocketAddr::V6(a) => {
            storage.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            storage.sin6_port = a.port().to_be();
            storage.sin6_flowinfo = a.flowinfo();
            storage.sin6_addr.s6_addr = a.ip().octets();
            storage.sin6_scope_id = a.scope_id();
            (storage, size_of::<libc::sockaddr_in6>() as socklen_t)
        }
    }
}

pub(crate) fn bytes_of(addr: &libc::sockaddr_in6, len: socklen_t) -> &[u8] {
    // SAFETY: `addr` is a live struct of at least `len` bytes.
    unsafe {
        std::slice::from_raw_parts(
            (addr as *const libc::sockaddr_in6).cast::<u8>(),
            len as usize,
        )
    }
}

/// The hook's relay path. Returns `None` when the connect is not for the
/// relay (the caller then connects directly).
///
/// # Safety
///
/// `addr` is null or points to `len` readable bytes.
pub unsafe fn connect(
    config: &Config,
    fd: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> Option<c_int> {
    let relay = config.relay.as_ref()?;
    // SAFETY: forwarded from the caller.
    let dest = unsafe { read_sockaddr(addr, len) }?;
    // A placeholder of remote DNS can only be reached through the relay.
    let placeholder =
        matches!(dest, SocketAddr::V4(v4) if config.remote_dns && dns::is_placeholder(*v4.ip()));
    if !placeholder && (!config.rules.matches(&dest) || same_endpoint(&dest, &relay.addr)) {
        return None;
    }
    let cell = stream_cell(fd)?;
    let flags = cell.flags();
    if flags & flag::RELAY_PENDING != 0 {
        // The program calls connect() again (after EINTR, or to poll).
        return Some(match advance(fd, cell, relay) {
            Hop::Connecting => fail(libc::EALREADY),
            Hop::Answering | Hop::Ready => fail(libc::EISCONN),
            Hop::Failed(e) => fail(reported(cell, e)),
        });
    }
    if flags & flag::RELAY_READY != 0 {
        return Some(fail(libc::EISCONN));
    }

    let domain = cell.domain();
    let relay_addr = match (domain, relay.addr) {
        (libc::AF_INET6, SocketAddr::V4(v4)) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        (libc::AF_INET, SocketAddr::V6(_)) => {
            // An IPv4 socket cannot reach an IPv6 relay: rebuild it.
            if !compat::replaceable(fd, cell) {
                return Some(fail(libc::EAFNOSUPPORT));
            }
            if let Err(e) = compat::rebuild(fd, cell, libc::AF_INET6, IPPROTO_MPTCP) {
                return Some(fail(e));
            }
            cell.reset(flags, libc::AF_INET6, cell.cookie());
            relay.addr
        }
        _ => relay.addr,
    };

    let (dest_c, dest_len) = to_sockaddr(&dest);
    if !cell.set_dest(bytes_of(&dest_c, dest_len)) {
        // Without the destination the hop cannot be made: fail rather than
        // connect directly.
        return Some(fail(libc::ENOBUFS));
    }
    cell.update(
        flag::RELAY_PENDING | flag::CONNECT_CALLED,
        flag::RELAY_READY | flag::RELAY_FAILED | flag::RELAY_SENT,
    );
    cell.forget_options();
    // SAFETY: reads the descriptor's status flags.
    let nonblocking = unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK != 0;
    // A blocking connect() is bounded by the program's SO_SNDTIMEO, as in
    // the kernel (which also bounds the connect to the relay by it), or
    // else by MPTCP_PRELOAD_TIMEOUT.
    let program_timeout = (!nonblocking)
        .then(|| socket_timeout(fd, libc::SO_SNDTIMEO))
        .flatten();
    let deadline = Instant::now() + program_timeout.unwrap_or(relay.timeout);
    let (relay_c, relay_len) = to_sockaddr(&relay_addr);
    // SAFETY: `relay_c` holds a valid socket address of `relay_len` bytes.
    let r = unsafe { real::connect(fd, (&raw const relay_c).cast(), relay_len) };
    if r != 0 && errno() != libc::EINPROGRESS {
        let e = errno();
        cell.update(0, flag::RELAY_PENDING);
        log::line(
            LogLevel::Error,
            format_args!(
                "cannot reach the relay {} for {dest}: errno {e}",
                relay.addr
            ),
        );
        return Some(fail(e));
    }
    if nonblocking {
        return Some(fail(libc::EINPROGRESS));
    }
    Some(match drive(fd, cell, relay, deadline) {
        Ok(Hop::Ready) => 0,
        Ok(Hop::Connecting | Hop::Answering) if program_timeout.is_some() => {
            // The kernel's answer when SO_SNDTIMEO ends a blocking connect:
            // the hop goes on; the first read finishes it.
            fail(libc::EINPROGRESS)
        }
        Ok(Hop::Connecting | Hop::Answering) => fail(give_up(fd, cell, timed_out(relay))),
        // Reported here; SO_ERROR must not report it a second time.
        Ok(Hop::Failed(e)) | Err(e) => fail(reported(cell, e)),
    })
}

/// [`Mode::Blocked`](crate::config::Mode::Blocked): whether this
/// `connect()` would leave the machine without the relay (a TCP socket, a
/// destination other than loopback) and must fail.
///
/// # Safety
///
/// `addr` is null or points to `len` readable bytes.
pub unsafe fn must_not_leave(fd: c_int, addr: *const sockaddr, len: socklen_t) -> bool {
    // SAFETY: forwarded from the caller.
    let Some(dest) = (unsafe { read_sockaddr(addr, len) }) else {
        return false;
    };
    !dest.ip().to_canonical().is_loopback()
        && int_option(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
}

fn same_endpoint(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// The cell of `fd` if it is a TCP or MPTCP stream socket (sockets made
/// before the library was loaded are checked with `getsockopt`).
fn stream_cell(fd: c_int) -> Option<&'static Cell> {
    if let Some(cell) = fdtable::lookup(fd, |flags| flags & flag::INET_STREAM != 0) {
        return Some(cell);
    }
    let domain = int_option(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let ty = int_option(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let protocol = int_option(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    let inet = domain == libc::AF_INET || domain == libc::AF_INET6;
    let tcp = protocol == libc::IPPROTO_TCP || protocol == IPPROTO_MPTCP;
    if !(inet && ty == libc::SOCK_STREAM && tcp) {
        return None;
    }
    // Unknown history: treat its options as unrecorded.
    fdtable::track(fd, flag::INET_STREAM | flag::OPTIONS_INCOMPLETE, domain)
}

/// Where a pending relay hop stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Hop {
    /// The TCP connection to the relay is not up yet.
    Connecting,
    /// The SOCKS5 request is sent; the relay's answer is not complete.
    Answering,
    /// The relay reached the destination; the answer is consumed.
    Ready,
    /// The hop failed with this errno (logged, stored for the program,
    /// the socket shut down).
    Failed(c_int),
}

/// Takes the hop of `fd` as far as it can go without waiting: sends the
/// SOCKS5 request once the TCP connection to the relay is up, and reads
/// whatever part of the relay's answer has arrived.
pub fn advance(fd: c_int, cell: &Cell, relay: &Relay) -> Hop {
    let Some(_turn) = Turn::take(cell) else {
        // Another thread of the program is advancing it right now.
        return standing(cell.flags());
    };
    let flags = cell.flags();
    if flags & flag::RELAY_PENDING == 0 {
        return standing(flags);
    }
    if flags & flag::RELAY_SENT == 0 {
        match connected(fd) {
            Ok(false) => return Hop::Connecting,
            Ok(true) => {}
            Err(e) => {
                log::line(
                    LogLevel::Error,
                    format_args!("cannot reach the relay {}: errno {e}", relay.addr),
                );
                return Hop::Failed(give_up(fd, cell, e));
            }
        }
        if let Err(e) = send_request(fd, cell, relay) {
            return Hop::Failed(give_up(fd, cell, e));
        }
        cell.update(flag::RELAY_SENT, 0);
    }
    match read_answers(fd, cell, relay) {
        Ok(false) => Hop::Answering,
        Ok(true) => {
            cell.update(flag::RELAY_READY, flag::RELAY_PENDING | flag::RELAY_SENT);
            if let Some(dest) = hop_dest(cell) {
                log::line(
                    LogLevel::Debug,
                    format_args!("fd {fd}: {dest} through relay {}", relay.addr),
                );
            }
            Hop::Ready
        }
        Err(e) => Hop::Failed(give_up(fd, cell, e)),
    }
}

/// The errno to give the program for a failed hop, reported once: the
/// stored one (the hop's own failure) if not yet reported, else `e`.
fn reported(cell: &Cell, e: c_int) -> c_int {
    match cell.take_relay_error() {
        0 => e,
        stored => stored,
    }
}

/// Where the hop stands by its cell `flags` alone.
fn standing(flags: u32) -> Hop {
    if flags & flag::RELAY_PENDING != 0 {
        if flags & flag::RELAY_SENT != 0 {
            Hop::Answering
        } else {
            Hop::Connecting
        }
    } else if flags & flag::RELAY_READY != 0 {
        Hop::Ready
    } else {
        Hop::Failed(libc::ENOTCONN)
    }
}

/// One thread's turn at advancing a hop (released when dropped, also
/// when a panic unwinds through it).
struct Turn<'a>(&'a Cell);

impl<'a> Turn<'a> {
    fn take(cell: &'a Cell) -> Option<Turn<'a>> {
        // `then`, not `then_some`: a Turn made and dropped would end
        // another thread's turn.
        cell.try_set(flag::RELAY_BUSY).then(|| Turn(cell))
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.update(0, flag::RELAY_BUSY);
    }
}

/// Records that the hop failed with `errno` (reported once to the program)
/// and shuts the socket down: the program must not talk to the relay as if
/// it were the destination. Returns `errno`.
fn give_up(fd: c_int, cell: &Cell, errno: c_int) -> c_int {
    cell.set_relay_error(errno);
    cell.update(flag::RELAY_FAILED, flag::RELAY_PENDING | flag::RELAY_SENT);
    // SAFETY: shutdown on a descriptor number has no memory effects.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    errno
}

/// Drives a pending hop on a blocking socket until it is done or
/// `deadline` passes (then it is still pending).
fn drive(fd: c_int, cell: &Cell, relay: &Relay, deadline: Instant) -> Result<Hop, c_int> {
    loop {
        let hop = advance(fd, cell, relay);
        let events = match hop {
            Hop::Connecting => libc::POLLOUT,
            Hop::Answering => libc::POLLIN,
            Hop::Ready | Hop::Failed(_) => return Ok(hop),
        };
        if !wait_ready(fd, events, deadline)? {
            return Ok(hop);
        }
    }
}

/// Whether the TCP connection of `fd` (to the relay) is up; its error if
/// it failed.
fn connected(fd: c_int) -> Result<bool, c_int> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    if unsafe { real::poll(&mut pfd, 1, 0) } < 0 {
        return Err(errno());
    }
    if pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
        return Err(match int_option(fd, libc::SOL_SOCKET, libc::SO_ERROR) {
            Some(0) | None => libc::ECONNREFUSED,
            Some(e) => e,
        });
    }
    Ok(pfd.revents & libc::POLLOUT != 0)
}

/// `SO_SNDTIMEO` or `SO_RCVTIMEO` of `fd`, when the program set one.
fn socket_timeout(fd: c_int, name: c_int) -> Option<Duration> {
    // SAFETY: timeval is plain integers; all-zero is valid.
    let mut tv: libc::timeval = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::timeval>() as socklen_t;
    // SAFETY: `tv` and `len` are writable for the sizes given.
    let r = unsafe { real::getsockopt(fd, libc::SOL_SOCKET, name, (&raw mut tv).cast(), &mut len) };
    let timeout = Duration::new(
        u64::try_from(tv.tv_sec).ok()?,
        u32::try_from(tv.tv_usec).ok()?.saturating_mul(1000),
    );
    (r == 0 && !timeout.is_zero()).then_some(timeout)
}

/// Logs that the relay hop ran out of time; returns `ETIMEDOUT`.
fn timed_out(relay: &Relay) -> c_int {
    log::line(
        LogLevel::Error,
        format_args!(
            "the relay {} did not complete the SOCKS5 exchange within {:.1} s (MPTCP_PRELOAD_TIMEOUT)",
            relay.addr,
            relay.timeout.as_secs_f64()
        ),
    );
    libc::ETIMEDOUT
}

/// Polls `fd` for `events` until `deadline`; `Ok(false)` on timeout.
fn wait_ready(fd: c_int, events: libc::c_short, deadline: Instant) -> Result<bool, c_int> {
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        // SAFETY: one valid pollfd.
        let n = unsafe { real::poll(&mut pfd, 1, poll_ms(Some(left))) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(errno());
        }
        return Ok(n > 0);
    }
}

/// A `poll` timeout in milliseconds (rounded up, so that a wait never ends
/// just before its deadline); -1 for none.
pub fn poll_ms(timeout: Option<Duration>) -> c_int {
    timeout.map_or(-1, |t| {
        c_int::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(c_int::MAX)
    })
}

/// `getsockopt(SOL_SOCKET, SO_ERROR)` on a relayed socket, after the real
/// call stored the kernel's answer in `*value`: the hop's error if it
/// failed, else 0 once the connection to the relay is up. It never waits:
/// this is where event loops (epoll) learn that their connect finished, and
/// where the SOCKS5 request is sent; the relay's answer is read on the
/// program's first read (see [`before_read`]).
pub fn so_error(config: &Config, fd: c_int, cell: &Cell, kernel_error: c_int) -> c_int {
    let flags = cell.flags();
    let Some(relay) = config.relay.as_ref() else {
        return kernel_error;
    };
    if flags & flag::RELAY_PENDING != 0 {
        if kernel_error != 0 {
            // The connection to the relay itself failed.
            log::line(
                LogLevel::Error,
                format_args!(
                    "cannot reach the relay {}: errno {kernel_error}",
                    relay.addr
                ),
            );
            return reported(cell, give_up(fd, cell, kernel_error));
        }
        return match advance(fd, cell, relay) {
            Hop::Failed(e) => reported(cell, e),
            Hop::Connecting | Hop::Answering | Hop::Ready => 0,
        };
    }
    if flags & flag::RELAY_FAILED != 0 {
        let e = cell.take_relay_error();
        if e != 0 {
            return e;
        }
    }
    kernel_error
}

/// Before a read (`read`, `recv`, `recvmsg`, ...) on `fd`: if it is a relay
/// hop whose answer is still awaited, reads the answer first. Returns the
/// errno the read must fail with instead of reading: `EAGAIN` while the
/// answer is incomplete on a non-blocking socket (or `dontwait`), the
/// hop's error once. A blocking socket waits for the answer up to its
/// `SO_RCVTIMEO` (then `EAGAIN`, as the kernel's read would) or else
/// `MPTCP_PRELOAD_TIMEOUT`.
#[inline]
pub fn before_read(config: &Config, fd: c_int, dontwait: bool) -> Option<c_int> {
    if config.mode != crate::config::Mode::Relay {
        return None;
    }
    let cell = fdtable::lookup(fd, |flags| {
        flags & (flag::RELAY_PENDING | flag::RELAY_FAILED) != 0
    })?;
    finish_for_read(config, fd, cell, dontwait)
}

#[cold]
fn finish_for_read(config: &Config, fd: c_int, cell: &Cell, dontwait: bool) -> Option<c_int> {
    let relay = config.relay.as_ref()?;
    if cell.flags() & flag::RELAY_FAILED != 0 {
        let e = cell.take_relay_error();
        return (e != 0).then_some(e);
    }
    // SAFETY: reads the descriptor's status flags.
    let nonblocking = dontwait || unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK != 0;
    let hop = if nonblocking {
        advance(fd, cell, relay)
    } else {
        let program_timeout = socket_timeout(fd, libc::SO_RCVTIMEO);
        let deadline = Instant::now() + program_timeout.unwrap_or(relay.timeout);
        match drive(fd, cell, relay, deadline) {
            Ok(Hop::Connecting | Hop::Answering) if program_timeout.is_none() => {
                Hop::Failed(give_up(fd, cell, timed_out(relay)))
            }
            Ok(hop) => hop,
            Err(e) => return Some(e),
        }
    };
    match hop {
        Hop::Ready => None,
        Hop::Connecting | Hop::Answering => Some(libc::EAGAIN),
        Hop::Failed(e) => Some(reported(cell, e)),
    }
}

/// The most relay hops one `poll` call gates; further ones in the same call
/// are reported as the kernel sees them.
const POLL_GATED_MAX: usize = 64;

/// Whether `fds` holds a relay hop that is still pending (then the call
/// goes through [`poll`]).
pub fn poll_gates(config: &Config, fds: &[libc::pollfd]) -> bool {
    config.mode == crate::config::Mode::Relay && fds.iter().any(|p| is_pending(p.fd))
}

/// Whether `fd` is a relay hop still waiting for the relay (or for the
/// connection to it).
pub fn is_pending(fd: c_int) -> bool {
    pending_cell(fd).is_some()
}

fn pending_cell(fd: c_int) -> Option<&'static Cell> {
    fdtable::lookup(fd, |flags| flags & flag::RELAY_PENDING != 0)
}

/// `poll`/`ppoll` over descriptors some of which are pending relay hops: a
/// hop's socket is reported to the program (writable, as a finished
/// connect) only once the relay has answered, so the program's own connect
/// timeout covers the whole hop. Meanwhile its entry waits for what the
/// hop needs (writable to send the request, readable for the answer) and
/// the hop advances whenever that comes. `wait` is the real call, given the
/// time left.
pub fn poll(
    config: &Config,
    fds: &mut [libc::pollfd],
    timeout: Option<Duration>,
    mut wait: impl FnMut(&mut [libc::pollfd], Option<Duration>) -> c_int,
) -> c_int {
    let Some(relay) = config.relay.as_ref() else {
        return wait(fds, timeout);
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut passes_after_deadline = 0;
    loop {
        // (index in `fds`, the program's events)
        let mut gated = [(0usize, 0 as libc::c_short); POLL_GATED_MAX];
        let mut count = 0;
        for (i, p) in fds.iter_mut().enumerate() {
            if count == POLL_GATED_MAX {
                break;
            }
            let Some(cell) = pending_cell(p.fd) else {
                continue;
            };
            let needs = match advance(p.fd, cell, relay) {
                Hop::Connecting => libc::POLLOUT,
                Hop::Answering => libc::POLLIN,
                // Done: the kernel's readiness is the program's.
                Hop::Ready | Hop::Failed(_) => continue,
            };
            gated[count] = (i, p.events);
            count += 1;
            p.events = needs;
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let n = wait(fds, left);
        let mut moved = false;
        for &(i, events) in &gated[..count] {
            moved |= n > 0 && fds[i].revents != 0;
            fds[i].revents = 0;
            fds[i].events = events;
        }
        if n < 0 {
            return n;
        }
        let reported = fds.iter().filter(|p| p.revents != 0).count();
        if reported > 0 || !moved {
            return reported as c_int;
        }
        // A hop moved: the next pass advances it (and, if it finished,
        // polls it with the program's events).
        if deadline.is_some_and(|d| Instant::now() >= d) {
            passes_after_deadline += 1;
            if passes_after_deadline > 1 {
                return 0;
            }
        }
    }
}

/// Whether cell `flags` describe a socket of the relay hop.
pub fn is_relayed(flags: u32) -> bool {
    flags & (flag::RELAY_PENDING | flag::RELAY_READY | flag::RELAY_FAILED) != 0
}

/// `getpeername` on a relayed socket: the program's destination, not the
/// relay, once the connection to the relay is up (`ENOTCONN` before, and
/// after a failed hop). Returns `None` for sockets that are not relayed.
///
/// # Safety
///
/// `addr` and `len` are as for `getpeername(2)`.
pub unsafe fn getpeername(
    config: &Config,
    fd: c_int,
    cell: &Cell,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> Option<c_int> {
    let flags = cell.flags();
    if !is_relayed(flags) {
        return None;
    }
    if flags & flag::RELAY_PENDING != 0 {
        let relay = config.relay.as_ref()?;
        if matches!(advance(fd, cell, relay), Hop::Connecting | Hop::Failed(_)) {
            return Some(fail(libc::ENOTCONN));
        }
    } else if flags & flag::RELAY_FAILED != 0 {
        return Some(fail(libc::ENOTCONN));
    }
    if addr.is_null() || len.is_null() {
        return Some(fail(libc::EFAULT));
    }
    let (raw, dest_len) = cell.dest();
    // SAFETY: `len` is non-null and, by the caller's contract, readable and
    // writable; `addr` is writable for `*len` bytes.
    unsafe {
        let room = (*len as usize).min(dest_len);
        std::ptr::copy_nonoverlapping(raw.as_ptr(), addr.cast::<u8>(), room);
        *len = dest_len as socklen_t;
    }
    Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        for text in [
            "198.18.0.2:1080",
            "[2001:db8::7]:443",
            "[::ffff:198.19.2.2]:80",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            let (c, len) = to_sockaddr(&addr);
            // SAFETY: `c` holds `len` bytes of a valid sockaddr.
            let back = unsafe { read_sockaddr((&raw const c).cast(), len) };
            assert_eq!(back, Some(addr));
        }
        // SAFETY: a null pointer is allowed and rejected.
        assert_eq!(unsafe { read_sockaddr(std::ptr::null(), 16) }, None);
    }
}
