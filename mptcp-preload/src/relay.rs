//! Relay-hop mode: `connect()` to a matching destination connects to the
//! SOCKS5 relay instead (over MPTCP when the socket is MPTCP) and asks it,
//! with one pipelined greeting+auth+CONNECT, to reach the destination.
//!
//! # Non-blocking sockets
//!
//! A non-blocking `connect()` starts the TCP connection to the relay and
//! returns `EINPROGRESS`, as the kernel would. The SOCKS5 exchange is
//! finished at the point where every event loop asks how its connect went:
//! `getsockopt(SOL_SOCKET, SO_ERROR)` after the socket became writable
//! (curl, wget, Python asyncio, nginx, libuv, Java NIO all do this), or a
//! second `connect()`, or `getpeername()`. By then the TCP connection to
//! the relay is up, so finishing costs one round trip to the relay plus the
//! relay's own connect to the destination, bounded by
//! `MPTCP_PRELOAD_TIMEOUT`; the answer (0 or the errno that matches the
//! SOCKS5 reply) is what `SO_ERROR` returns.
//!
//! Alternatives rejected: hooking `poll`/`select`/`epoll_wait` to hide
//! writability until the handshake is done would need every readiness API
//! (and edge-triggered epoll cannot "un-report" an event); a helper thread
//! inside the host process would race with the program's first write and
//! complicates `fork()`; clearing `O_NONBLOCK` and doing everything inside
//! `connect()` (proxychains) stalls event loops for the whole exchange.
//! Known limit: a program that writes after `POLLOUT` without checking
//! `SO_ERROR` (none of the above) would send its first bytes before the
//! SOCKS5 request.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Instant;

use libc::{c_int, sockaddr, socklen_t};
use mptcp_core::socks5::{self, ClientHandshake, Progress, ReplyCode, Request, TargetAddr};
use mptcp_core::sys::socket::IPPROTO_MPTCP;

use crate::compat::int_option;
use crate::config::{Config, LogLevel, Relay};
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
fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_in6, socklen_t) {
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

fn bytes_of(addr: &libc::sockaddr_in6, len: socklen_t) -> &[u8] {
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
        return Some(match finish(fd, cell, relay, ReadyCheck::Poll) {
            Ok(()) => fail(libc::EISCONN),
            Err(e) => fail(e),
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
        flag::RELAY_READY | flag::RELAY_FAILED,
    );
    cell.forget_options();
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
    // SAFETY: reads the descriptor's status flags.
    let nonblocking = unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK != 0;
    if nonblocking {
        return Some(fail(libc::EINPROGRESS));
    }
    Some(match finish(fd, cell, relay, ReadyCheck::Wait) {
        Ok(()) => 0,
        Err(e) => {
            // Reported here; SO_ERROR must not report it a second time.
            cell.take_relay_error();
            fail(e)
        }
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

/// Whether the TCP connection to the relay may still be in progress.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadyCheck {
    /// Wait for it (up to the timeout).
    Wait,
    /// Return `EALREADY` if it is not up yet (a repeated `connect()`).
    Poll,
}

/// Finishes a pending relay hop: waits for the TCP connection to the relay,
/// runs the SOCKS5 exchange, and records the outcome in the cell.
fn finish(fd: c_int, cell: &Cell, relay: &Relay, check: ReadyCheck) -> Result<(), c_int> {
    let deadline = Instant::now() + relay.timeout;
    let outcome = (|| {
        let wait = if check == ReadyCheck::Poll {
            Some(Instant::now())
        } else {
            None
        };
        if !wait_ready(fd, libc::POLLOUT, wait.unwrap_or(deadline))? {
            return Err(if check == ReadyCheck::Poll {
                libc::EALREADY
            } else {
                timed_out(relay)
            });
        }
        match int_option(fd, libc::SOL_SOCKET, libc::SO_ERROR) {
            Some(0) => {}
            Some(e) => {
                log::line(
                    LogLevel::Error,
                    format_args!("cannot reach the relay {}: errno {e}", relay.addr),
                );
                return Err(e);
            }
            None => return Err(errno()),
        }
        handshake(fd, cell, relay, deadline)
    })();
    match outcome {
        Err(libc::EALREADY) => Err(libc::EALREADY),
        Ok(()) => {
            cell.update(flag::RELAY_READY, flag::RELAY_PENDING);
            Ok(())
        }
        Err(e) => {
            cell.set_relay_error(e);
            cell.update(flag::RELAY_FAILED, flag::RELAY_PENDING);
            // The program must not talk to the relay as if it were the
            // destination.
            // SAFETY: shutdown on a descriptor number has no memory effects.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            Err(e)
        }
    }
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
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = c_int::try_from(left.as_millis()).unwrap_or(c_int::MAX);
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(errno());
        }
        if n == 0 {
            return Ok(false);
        }
        return Ok(true);
    }
}

/// The SOCKS5 exchange on a connected socket: sends greeting, credentials
/// and CONNECT in one write, then reads exactly the server's answers (the
/// destination's first bytes stay in the socket for the program).
fn handshake(fd: c_int, cell: &Cell, relay: &Relay, deadline: Instant) -> Result<(), c_int> {
    let (raw, len) = cell.dest();
    // SAFETY: `raw` holds `len` bytes of a sockaddr we stored ourselves.
    let dest =
        unsafe { read_sockaddr(raw.as_ptr().cast(), len as socklen_t) }.ok_or(libc::EINVAL)?;
    let credentials = relay
        .credentials
        .as_ref()
        .map(|(u, p)| (u.as_str(), p.as_str()));
    let target = Request::connect(match dest {
        SocketAddr::V4(v4) if dns::is_placeholder(*v4.ip()) => {
            let name = dns::name_of(*v4.ip()).ok_or(libc::EHOSTUNREACH)?;
            TargetAddr::Domain(name, v4.port())
        }
        _ => TargetAddr::Ip(dest),
    });
    let mut request = Vec::with_capacity(300 + credentials.map_or(0, |(u, p)| u.len() + p.len()));
    socks5::encode_client_hello_auth_request(credentials, &target, &mut request)
        .map_err(|_| libc::EINVAL)?;
    let mut sent = 0;
    while sent < request.len() {
        // SAFETY: the slice is live for the call.
        let n = unsafe {
            libc::send(
                fd,
                request[sent..].as_ptr().cast(),
                request.len() - sent,
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                libc::EAGAIN => {
                    if !wait_ready(fd, libc::POLLOUT, deadline)? {
                        return Err(timed_out(relay));
                    }
                    continue;
                }
                e => return Err(e),
            }
        }
        sent += n as usize;
    }

    // Bytes of the server's answers already consumed from the socket.
    let mut answers = Vec::with_capacity(32);
    let mut parser = ClientHandshake::new(credentials.is_some());
    loop {
        if !wait_ready(fd, libc::POLLIN, deadline)? {
            return Err(timed_out(relay));
        }
        let mut peek = [0u8; 512];
        // SAFETY: `peek` is writable for its length.
        let n = unsafe {
            libc::recv(
                fd,
                peek.as_mut_ptr().cast(),
                peek.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            match errno() {
                libc::EINTR | libc::EAGAIN => continue,
                e => return Err(e),
            }
        }
        if n == 0 {
            log::line(
                LogLevel::Error,
                format_args!(
                    "the relay {} closed during the SOCKS5 handshake for {dest}",
                    relay.addr
                ),
            );
            return Err(libc::ECONNRESET);
        }
        let seen = answers.len();
        answers.extend_from_slice(&peek[..n as usize]);
        let (take, done) = match parser.advance(&answers) {
            Ok(Progress::NeedMore) => (n as usize, false),
            Ok(Progress::Done(_, used)) => (used - seen, true),
            Err(e) => {
                log::line(
                    LogLevel::Error,
                    format_args!("relay {} refused {dest}: {e}", relay.addr),
                );
                return Err(reply_errno(e.reply));
            }
        };
        answers.truncate(seen + take);
        consume(fd, take)?;
        if done {
            log::line(
                LogLevel::Debug,
                format_args!("fd {fd}: {dest} through relay {}", relay.addr),
            );
            return Ok(());
        }
    }
}

/// Reads and drops `count` bytes that are known to be waiting.
fn consume(fd: c_int, mut count: usize) -> Result<(), c_int> {
    let mut sink = [0u8; 512];
    while count > 0 {
        // SAFETY: `sink` is writable for the length passed.
        let n = unsafe {
            libc::recv(
                fd,
                sink.as_mut_ptr().cast(),
                count.min(sink.len()),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            return Err(if n == 0 { libc::ECONNRESET } else { errno() });
        }
        count -= n as usize;
    }
    Ok(())
}

/// The errno a program sees for a SOCKS5 reply.
pub fn reply_errno(reply: ReplyCode) -> c_int {
    match reply {
        ReplyCode::Succeeded => 0,
        ReplyCode::NotAllowed => libc::EACCES,
        ReplyCode::NetworkUnreachable => libc::ENETUNREACH,
        ReplyCode::HostUnreachable => libc::EHOSTUNREACH,
        ReplyCode::ConnectionRefused | ReplyCode::GeneralFailure => libc::ECONNREFUSED,
        ReplyCode::TtlExpired => libc::ETIMEDOUT,
        ReplyCode::CommandNotSupported => libc::EOPNOTSUPP,
        ReplyCode::AddressTypeNotSupported => libc::EAFNOSUPPORT,
        ReplyCode::Other(_) => libc::EPROTO,
    }
}

/// `getsockopt(SOL_SOCKET, SO_ERROR)` on a relayed socket, after the real
/// call stored the kernel's answer in `*value`: finishes a pending hop and
/// reports its outcome instead.
pub fn so_error(config: &Config, fd: c_int, cell: &Cell, kernel_error: c_int) -> c_int {
    let flags = cell.flags();
    let Some(relay) = config.relay.as_ref() else {
        return kernel_error;
    };
    if flags & flag::RELAY_PENDING != 0 {
        if kernel_error != 0 {
            // The connection to the relay itself failed.
            cell.update(flag::RELAY_FAILED, flag::RELAY_PENDING);
            log::line(
                LogLevel::Error,
                format_args!(
                    "cannot reach the relay {}: errno {kernel_error}",
                    relay.addr
                ),
            );
            return kernel_error;
        }
        return match finish(fd, cell, relay, ReadyCheck::Wait) {
            Ok(()) => 0,
            Err(e) => {
                cell.take_relay_error();
                e
            }
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

/// Whether cell `flags` describe a socket of the relay hop.
pub fn is_relayed(flags: u32) -> bool {
    flags & (flag::RELAY_PENDING | flag::RELAY_READY | flag::RELAY_FAILED) != 0
}

/// `getpeername` on a relayed socket: the program's destination, not the
/// relay. Returns `None` for sockets that are not relayed.
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
        if finish(fd, cell, relay, ReadyCheck::Poll).is_err() {
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

    #[test]
    fn replies_map_to_distinct_errnos() {
        assert_eq!(
            reply_errno(ReplyCode::ConnectionRefused),
            libc::ECONNREFUSED
        );
        assert_eq!(reply_errno(ReplyCode::NotAllowed), libc::EACCES);
        assert_eq!(reply_errno(ReplyCode::HostUnreachable), libc::EHOSTUNREACH);
        assert_eq!(reply_errno(ReplyCode::TtlExpired), libc::ETIMEDOUT);
    }
}
