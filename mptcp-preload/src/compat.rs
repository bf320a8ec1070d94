//! Rebuilding a socket on the same descriptor number: with plain TCP when
//! the kernel refuses an option on MPTCP, or in another address family when
//! the relay needs it.
//!
//! The replacement is only done while the socket is neither connected nor
//! listening: nothing but its options and its bound address exist yet, and
//! both are carried over (the options from the cell's record, the address
//! from `getsockname`). `dup3` puts the new socket on the old number
//! atomically, so other threads never see a closed descriptor, and then on
//! every other descriptor of the process that still names the old socket
//! (copies made with `dup`, `dup2`, `fcntl(F_DUPFD)`, ...: found by their
//! `SO_COOKIE` in `/proc/self/fd`), so no copy is left with the old socket.

use libc::c_int;

use crate::fdtable::{Cell, flag};
use crate::{errno, real, sys};

/// Reads an `int` socket option through the real `getsockopt`.
pub(crate) fn int_option(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut value: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given.
    let r = unsafe { real::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
    (r == 0).then_some(value)
}

/// Whether a socket may still be rebuilt: not listening, not connected
/// (the caller checks `CONNECT_CALLED`), and every option recorded.
pub fn replaceable(fd: c_int, cell: &Cell) -> bool {
    cell.flags() & (flag::OPTIONS_INCOMPLETE | flag::CONNECT_CALLED) == 0
        && int_option(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(0)
}

/// Whether `call` succeeds on a fresh plain TCP socket of `domain`: tells
/// an error caused by MPTCP from one the program would get anyway.
pub fn tcp_accepts(domain: c_int, call: impl FnOnce(c_int) -> bool) -> bool {
    // SAFETY: plain socket creation.
    let probe = unsafe {
        real::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    };
    if probe < 0 {
        return false;
    }
    let accepted = call(probe);
    // SAFETY: `probe` is our own descriptor.
    unsafe { real::close(probe) };
    accepted
}

/// Puts a new `domain` stream socket of `protocol` on descriptor `fd` and
/// on its copies, carrying over `O_NONBLOCK`, `FD_CLOEXEC` (each copy keeps
/// its own), the recorded options (those the new socket refuses are
/// skipped) and the bound address. Returns the errno of the step that
/// failed; the old socket is untouched unless the final `bind` fails.
pub fn rebuild(fd: c_int, cell: &Cell, domain: c_int, protocol: c_int) -> Result<(), c_int> {
    // SAFETY: fcntl on a descriptor number only reads its flags.
    let status = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    let fd_flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if status < 0 || fd_flags < 0 {
        return Err(errno());
    }
    let mut bound: libc::sockaddr_storage = zeroed_storage();
    let mut bound_len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `bound` is a writable sockaddr_storage of `bound_len` bytes.
    let named = unsafe { libc::getsockname(fd, (&raw mut bound).cast(), &mut bound_len) } == 0;
    let rebind = named && c_int::from(bound.ss_family) == domain && is_bound(&bound);

    let mut ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    if status & libc::O_NONBLOCK != 0 {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain socket creation.
    let mut new = unsafe { real::socket(domain, ty, protocol) };
    if new < 0 && protocol != libc::IPPROTO_TCP {
        // SAFETY: as above (MPTCP refused: fall back to TCP).
        new = unsafe { real::socket(domain, ty, libc::IPPROTO_TCP) };
    }
    if new < 0 {
        return Err(errno());
    }
    cell.for_each_option(|level, name, value| {
        // SAFETY: `value` is a live slice of the given length.
        let r = unsafe {
            real::setsockopt(
                new,
                level,
                name,
                value.as_ptr().cast(),
                value.len() as libc::socklen_t,
            )
        };
        if r != 0 {
            crate::log::line(
                crate::config::LogLevel::Debug,
                format_args!(
                    "fd {fd}: option {level}/{name} not carried over (errno {})",
                    errno()
                ),
            );
        }
    });
    let cloexec = if fd_flags & libc::FD_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    // SAFETY: both are open descriptors; dup3 atomically replaces `fd`.
    let r = unsafe { real::dup3(new, fd, cloexec) };
    let dup_errno = errno();
    if r < 0 {
        // SAFETY: `new` is our own descriptor.
        unsafe { real::close(new) };
        return Err(dup_errno);
    }
    let old_cookie = cell.cookie();
    if let Some(cookie) = sys::socket_cookie(fd) {
        cell.set_cookie(cookie);
    }
    // One getsockopt per open descriptor: rebuilds are rare (a refused
    // option before connect), and a copy left behind would keep the old
    // socket.
    sys::for_each_open_fd(|other| {
        if other != fd && other != new && sys::socket_cookie(other) == Some(old_cookie) {
            // SAFETY: fcntl on a descriptor number only reads its flags.
            let copy_flags = unsafe { libc::fcntl(other, libc::F_GETFD) };
            let cloexec = if copy_flags >= 0 && copy_flags & libc::FD_CLOEXEC != 0 {
                libc::O_CLOEXEC
            } else {
                0
            };
            // SAFETY: both are open descriptors; dup3 atomically replaces
            // `other`, which named the socket `fd` named.
            unsafe { real::dup3(new, other, cloexec) };
        }
    });
    // SAFETY: `new` is our own descriptor; `fd` and its copies now hold
    // the socket.
    unsafe { real::close(new) };
    cell.forget_options();
    if rebind {
        // SAFETY: `bound` holds `bound_len` bytes of the old local address.
        if unsafe { libc::bind(fd, (&raw const bound).cast(), bound_len) } != 0 {
            return Err(errno());
        }
    }
    Ok(())
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain integers; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// Whether a local address was chosen (a port or a specific address).
fn is_bound(addr: &libc::sockaddr_storage) -> bool {
    match c_int::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            a.sin_port != 0 || a.sin_addr.s_addr != 0
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            a.sin6_port != 0 || a.sin6_addr.s6_addr != [0; 16]
        }
        _ => false,
    }
}

/// What the library does with a `setsockopt` that the kernel refuses on an
/// MPTCP socket but accepts on TCP (the README has the table for 6.18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The option means nothing on an MPTCP connection: report success and
    /// keep MPTCP (the value is still replayed if the socket is rebuilt
    /// for another option).
    Ignore,
    /// The program depends on what the option does: rebuild the socket as
    /// TCP if it is neither connected nor listening.
    Rebuild,
}

/// The policy for a refused `setsockopt(level, name)`; refused
/// `getsockopt` calls always rebuild, except for the ignored options,
/// whose error the program keeps.
pub fn on_refusal(level: c_int, name: c_int) -> Refusal {
    match (level, name) {
        // No urgent data on MPTCP (MSG_OOB is refused), so nothing to put
        // inline; dante sets it on its listener.
        (libc::SOL_SOCKET, libc::SO_OOBINLINE)
        // Hints about ACK timing and thin streams (TCP_THIN_DUPACK is a
        // no-op in TCP itself); MPTCP schedules its own subflows.
        | (libc::IPPROTO_TCP, libc::TCP_QUICKACK | libc::TCP_THIN_LINEAR_TIMEOUTS | libc::TCP_THIN_DUPACK)
        // Multicast settings on a stream socket.
        | (
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF | libc::IP_MULTICAST_TTL | libc::IP_MULTICAST_LOOP | libc::IP_MULTICAST_ALL,
        )
        | (
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_IF
            | libc::IPV6_MULTICAST_HOPS
            | libc::IPV6_MULTICAST_LOOP
            | libc::IPV6_MULTICAST_ALL,
        ) => Refusal::Ignore,
        _ => Refusal::Rebuild,
    }
}

/// An option for log lines: its name, or `level/name` in numbers.
pub struct OptionLabel(pub c_int, pub c_int);

impl std::fmt::Display for OptionLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match option_name(self.0, self.1) {
            Some(name) => f.write_str(name),
            None => write!(f, "option {}/{}", self.0, self.1),
        }
    }
}

/// The names of the options that MPTCP refuses on Linux 6.18 (and a few
/// others users meet), for log lines; `None` for the rest.
pub fn option_name(level: c_int, name: c_int) -> Option<&'static str> {
    Some(match (level, name) {
        (libc::SOL_SOCKET, libc::SO_OOBINLINE) => "SO_OOBINLINE",
        (libc::SOL_SOCKET, libc::SO_ATTACH_FILTER) => "SO_ATTACH_FILTER",
        (libc::SOL_SOCKET, libc::SO_PEEK_OFF) => "SO_PEEK_OFF",
        (libc::SOL_SOCKET, libc::SO_LOCK_FILTER) => "SO_LOCK_FILTER",
        (libc::SOL_SOCKET, libc::SO_MAX_PACING_RATE) => "SO_MAX_PACING_RATE",
        (libc::SOL_SOCKET, libc::SO_CNX_ADVICE) => "SO_CNX_ADVICE",
        (libc::SOL_SOCKET, libc::SO_ZEROCOPY) => "SO_ZEROCOPY",
        (libc::SOL_SOCKET, libc::SO_TXTIME) => "SO_TXTIME",
        (libc::SOL_SOCKET, 72) => "SO_BUF_LOCK",
        (libc::SOL_SOCKET, 74) => "SO_TXREHASH",
        (libc::SOL_SOCKET, 75) => "SO_RCVMARK",
        (libc::SOL_SOCKET, 80) => "SO_DEVMEM_DONTNEED",
        (libc::SOL_SOCKET, 82) => "SO_RCVPRIORITY",
        (libc::IPPROTO_TCP, libc::TCP_MAXSEG) => "TCP_MAXSEG",
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) => "TCP_KEEPIDLE",
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL) => "TCP_KEEPINTVL",
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT) => "TCP_KEEPCNT",
        (libc::IPPROTO_TCP, libc::TCP_SYNCNT) => "TCP_SYNCNT",
        (libc::IPPROTO_TCP, libc::TCP_LINGER2) => "TCP_LINGER2",
        (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT) => "TCP_DEFER_ACCEPT",
        (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP) => "TCP_WINDOW_CLAMP",
        (libc::IPPROTO_TCP, libc::TCP_QUICKACK) => "TCP_QUICKACK",
        (libc::IPPROTO_TCP, libc::TCP_MD5SIG) => "TCP_MD5SIG",
        (libc::IPPROTO_TCP, libc::TCP_THIN_LINEAR_TIMEOUTS) => "TCP_THIN_LINEAR_TIMEOUTS",
        (libc::IPPROTO_TCP, libc::TCP_THIN_DUPACK) => "TCP_THIN_DUPACK",
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT) => "TCP_USER_TIMEOUT",
        (libc::IPPROTO_TCP, libc::TCP_REPAIR) => "TCP_REPAIR",
        (libc::IPPROTO_TCP, libc::TCP_TIMESTAMP) => "TCP_TIMESTAMP",
        (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT) => "TCP_NOTSENT_LOWAT",
        (libc::IPPROTO_TCP, libc::TCP_SAVE_SYN) => "TCP_SAVE_SYN",
        (libc::IPPROTO_TCP, libc::TCP_SAVED_SYN) => "TCP_SAVED_SYN",
        (libc::IPPROTO_TCP, libc::TCP_ULP) => "TCP_ULP",
        (libc::IPPROTO_TCP, libc::TCP_MD5SIG_EXT) => "TCP_MD5SIG_EXT",
        (libc::IPPROTO_TCP, 37) => "TCP_TX_DELAY",
        (libc::IPPROTO_TCP, 44) => "TCP_RTO_MAX_MS",
        (libc::IPPROTO_TCP, 45) => "TCP_RTO_MIN_US",
        (libc::IPPROTO_TCP, 46) => "TCP_DELACK_MAX_US",
        (libc::IPPROTO_IP, libc::IP_TOS) => "IP_TOS",
        (libc::IPPROTO_IP, libc::IP_TTL) => "IP_TTL",
        (libc::IPPROTO_IP, libc::IP_HDRINCL) => "IP_HDRINCL",
        (libc::IPPROTO_IP, libc::IP_OPTIONS) => "IP_OPTIONS",
        (libc::IPPROTO_IP, libc::IP_ROUTER_ALERT) => "IP_ROUTER_ALERT",
        (libc::IPPROTO_IP, libc::IP_RECVOPTS) => "IP_RECVOPTS",
        (libc::IPPROTO_IP, libc::IP_RETOPTS) => "IP_RETOPTS",
        (libc::IPPROTO_IP, libc::IP_PKTINFO) => "IP_PKTINFO",
        (libc::IPPROTO_IP, libc::IP_PKTOPTIONS) => "IP_PKTOPTIONS",
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER) => "IP_MTU_DISCOVER",
        (libc::IPPROTO_IP, libc::IP_RECVERR) => "IP_RECVERR",
        (libc::IPPROTO_IP, libc::IP_RECVTTL) => "IP_RECVTTL",
        (libc::IPPROTO_IP, libc::IP_RECVTOS) => "IP_RECVTOS",
        (libc::IPPROTO_IP, libc::IP_PASSSEC) => "IP_PASSSEC",
        (libc::IPPROTO_IP, libc::IP_RECVORIGDSTADDR) => "IP_RECVORIGDSTADDR",
        (libc::IPPROTO_IP, libc::IP_MINTTL) => "IP_MINTTL",
        (libc::IPPROTO_IP, libc::IP_NODEFRAG) => "IP_NODEFRAG",
        (libc::IPPROTO_IP, libc::IP_CHECKSUM) => "IP_CHECKSUM",
        (libc::IPPROTO_IP, libc::IP_RECVFRAGSIZE) => "IP_RECVFRAGSIZE",
        (libc::IPPROTO_IP, 26) => "IP_RECVERR_RFC4884",
        (libc::IPPROTO_IP, libc::IP_MULTICAST_IF) => "IP_MULTICAST_IF",
        (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL) => "IP_MULTICAST_TTL",
        (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP) => "IP_MULTICAST_LOOP",
        (libc::IPPROTO_IP, libc::IP_MULTICAST_ALL) => "IP_MULTICAST_ALL",
        (libc::IPPROTO_IP, libc::IP_UNICAST_IF) => "IP_UNICAST_IF",
        (libc::IPPROTO_IP, 52) => "IP_PROTOCOL",
        (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) => "IPV6_V6ONLY",
        (libc::IPPROTO_IPV6, libc::IPV6_2292PKTINFO) => "IPV6_2292PKTINFO",
        (libc::IPPROTO_IPV6, libc::IPV6_2292HOPOPTS) => "IPV6_2292HOPOPTS",
        (libc::IPPROTO_IPV6, libc::IPV6_2292DSTOPTS) => "IPV6_2292DSTOPTS",
        (libc::IPPROTO_IPV6, libc::IPV6_2292RTHDR) => "IPV6_2292RTHDR",
        (libc::IPPROTO_IPV6, libc::IPV6_2292PKTOPTIONS) => "IPV6_2292PKTOPTIONS",
        (libc::IPPROTO_IPV6, libc::IPV6_2292HOPLIMIT) => "IPV6_2292HOPLIMIT",
        (libc::IPPROTO_IPV6, libc::IPV6_FLOWINFO) => "IPV6_FLOWINFO",
        (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS) => "IPV6_UNICAST_HOPS",
        (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF) => "IPV6_MULTICAST_IF",
        (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS) => "IPV6_MULTICAST_HOPS",
        (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP) => "IPV6_MULTICAST_LOOP",
        (libc::IPPROTO_IPV6, libc::IPV6_ROUTER_ALERT) => "IPV6_ROUTER_ALERT",
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER) => "IPV6_MTU_DISCOVER",
        (libc::IPPROTO_IPV6, libc::IPV6_MTU) => "IPV6_MTU",
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR) => "IPV6_RECVERR",
        (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_ALL) => "IPV6_MULTICAST_ALL",
        (libc::IPPROTO_IPV6, libc::IPV6_ROUTER_ALERT_ISOLATE) => "IPV6_ROUTER_ALERT_ISOLATE",
        (libc::IPPROTO_IPV6, 31) => "IPV6_RECVERR_RFC4884",
        (libc::IPPROTO_IPV6, libc::IPV6_FLOWINFO_SEND) => "IPV6_FLOWINFO_SEND",
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO) => "IPV6_RECVPKTINFO",
        (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => "IPV6_PKTINFO",
        (libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT) => "IPV6_RECVHOPLIMIT",
        (libc::IPPROTO_IPV6, libc::IPV6_RECVHOPOPTS) => "IPV6_RECVHOPOPTS",
        (libc::IPPROTO_IPV6, libc::IPV6_HOPOPTS) => "IPV6_HOPOPTS",
        (libc::IPPROTO_IPV6, libc::IPV6_RTHDRDSTOPTS) => "IPV6_RTHDRDSTOPTS",
        (libc::IPPROTO_IPV6, libc::IPV6_RECVRTHDR) => "IPV6_RECVRTHDR",
        (libc::IPPROTO_IPV6, libc::IPV6_RTHDR) => "IPV6_RTHDR",
        (libc::IPPROTO_IPV6, libc::IPV6_RECVDSTOPTS) => "IPV6_RECVDSTOPTS",
        (libc::IPPROTO_IPV6, libc::IPV6_DSTOPTS) => "IPV6_DSTOPTS",
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPATHMTU) => "IPV6_RECVPATHMTU",
        (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG) => "IPV6_DONTFRAG",
        (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS) => "IPV6_RECVTCLASS",
        (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => "IPV6_TCLASS",
        (libc::IPPROTO_IPV6, libc::IPV6_AUTOFLOWLABEL) => "IPV6_AUTOFLOWLABEL",
        (libc::IPPROTO_IPV6, libc::IPV6_ADDR_PREFERENCES) => "IPV6_ADDR_PREFERENCES",
        (libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT) => "IPV6_MINHOPCOUNT",
        (libc::IPPROTO_IPV6, libc::IPV6_RECVORIGDSTADDR) => "IPV6_RECVORIGDSTADDR",
        (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_IF) => "IPV6_UNICAST_IF",
        (libc::IPPROTO_IPV6, libc::IPV6_RECVFRAGSIZE) => "IPV6_RECVFRAGSIZE",
        _ => return None,
    })
}
