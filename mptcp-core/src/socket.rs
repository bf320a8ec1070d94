//! Multipath TCP sockets with a fallback policy, and "is this connection
//! MPTCP right now?".
//!
//! Creating an MPTCP socket is `socket(domain, SOCK_STREAM, IPPROTO_MPTCP)`;
//! the kernel refuses it in three ways, told apart by [`FallbackReason`].
//! The caller picks what happens then with [`Fallback`]: a plain TCP socket
//! (the default) or an [`Error::Refused`] that says how to fix the host.
//!
//! Even an MPTCP socket can end up carrying plain TCP: when the peer or a
//! middlebox does not speak MPTCP the kernel falls back silently.
//! [`is_mptcp`] (or [`crate::info::MptcpExt::is_mptcp`]) asks the kernel about the
//! connection as it is now.
//!
//! ```
//! use mptcp_core::info::MptcpExt;
//! use mptcp_core::socket::{self, Fallback};
//!
//! let listener = socket::bind_listener("127.0.0.1:0", Fallback::Tcp)?;
//! let client = socket::connect(listener.local_addr()?, Fallback::Tcp)?;
//! let (server, _) = listener.accept()?;
//! // On a host with MPTCP enabled both ends negotiated MPTCP.
//! assert_eq!(client.is_mptcp()?, server.is_mptcp()?);
//! # Ok::<(), mptcp_core::socket::Error>(())
//! ```
//!
//! Code that already builds its sockets with socket2 or std opts in by
//! creating them here; everything else (options, non-blocking mode,
//! conversion into std or mio types) stays the same:
//!
//! | plain TCP | MPTCP, falling back to TCP |
//! |---|---|
//! | `TcpStream::connect(addr)` | [`connect`]`(addr, Fallback::Tcp)` |
//! | `TcpListener::bind(addr)` | [`bind_listener`]`(addr, Fallback::Tcp)` |
//! | `Socket::new(domain, Type::STREAM, None)` | [`new`]`(domain, Fallback::Tcp)?.socket` |
//!
//! The inspection methods ([`crate::info::MptcpExt`]) work on all of these.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, Ordering};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::kernel::KernelVersion;
use crate::sys::Pod;
use crate::sys::info::{MPTCP_INFO, mptcp_info};
use crate::sys::socket::{
    ERRNO_DISABLED, ERRNO_KERNEL_TOO_OLD, ERRNO_NOT_BUILT, IPPROTO_MPTCP, SOL_MPTCP, TCP_IS_MPTCP,
    getsockopt, getsockopt_int,
};

/// The socket2 protocol for MPTCP (`IPPROTO_MPTCP`, 262).
pub const PROTOCOL: Protocol = Protocol::MPTCP;

/// What to do when the kernel refuses an MPTCP socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// Create a plain TCP socket instead (and report the [`FallbackReason`]).
    #[default]
    Tcp,
    /// Fail with [`Error::Refused`].
    Fail,
}

/// Why the kernel refused `socket(…, IPPROTO_MPTCP)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    /// `EINVAL`: the kernel predates MPTCP (Linux < 5.6).
    KernelTooOld,
    /// `EPROTONOSUPPORT`: the kernel was built without `CONFIG_MPTCP`.
    NotBuilt,
    /// `ENOPROTOOPT`: MPTCP is disabled in this network namespace
    /// (`net.mptcp.enabled=0`).
    Disabled,
}

impl FallbackReason {
    /// Classifies the `errno` of a failed `socket(…, IPPROTO_MPTCP)`; `None`
    /// for errors that are not an MPTCP refusal (`EMFILE`, `EACCES`, ...).
    /// Allocation-free, usable from an `LD_PRELOAD` hook.
    pub const fn from_errno(errno: i32) -> Option<Self> {
        match errno {
            ERRNO_KERNEL_TOO_OLD => Some(Self::KernelTooOld),
            ERRNO_NOT_BUILT => Some(Self::NotBuilt),
            ERRNO_DISABLED => Some(Self::Disabled),
            _ => None,
        }
    }

    /// The `errno` the kernel returns for this refusal.
    pub const fn errno(self) -> i32 {
        match self {
            Self::KernelTooOld => ERRNO_KERNEL_TOO_OLD,
            Self::NotBuilt => ERRNO_NOT_BUILT,
            Self::Disabled => ERRNO_DISABLED,
        }
    }

    /// What the refusal means and how to fix it, as one sentence.
    pub const fn advice(self) -> &'static str {
        match self {
            Self::KernelTooOld => {
                "the kernel is too old for MPTCP (EINVAL): Linux 5.6 or newer is needed, 5.16+ to \
                 inspect connections"
            }
            Self::NotBuilt => {
                "the kernel was built without MPTCP (EPROTONOSUPPORT): use a kernel with \
                 CONFIG_MPTCP=y (and CONFIG_MPTCP_IPV6=y for IPv6)"
            }
            Self::Disabled => {
                "MPTCP is disabled in this network namespace (ENOPROTOOPT): sysctl -w \
                 net.mptcp.enabled=1"
            }
        }
    }
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.advice())
    }
}

/// Errors of this crate's socket and inspection functions. Converts into
/// [`io::Error`] (keeping this error as the inner error) so `?` works in
/// functions returning `io::Result`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The kernel refused an MPTCP socket and the policy was
    /// [`Fallback::Fail`].
    Refused(FallbackReason),
    /// An MPTCP-level query on a connection that is not MPTCP: a plain TCP
    /// socket, or an MPTCP socket that fell back to TCP because the peer or
    /// a middlebox does not support MPTCP.
    NotMptcp,
    /// The connection is MPTCP but the running kernel lacks this
    /// socket option.
    Unsupported {
        /// The socket option, e.g. `"MPTCP_FULL_INFO"`.
        option: &'static str,
        /// The first Linux version that has it, e.g. `"6.5"`.
        since: &'static str,
    },
    /// Any other system error (bind, connect, a closed descriptor, ...).
    Io(io::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The OS error code behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Refused(reason) => Some(reason.errno()),
            Self::NotMptcp => Some(libc::EOPNOTSUPP),
            Self::Unsupported { .. } => Some(libc::EOPNOTSUPP),
            Self::Io(err) => err.raw_os_error(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(reason) => write!(f, "cannot create an MPTCP socket: {reason}"),
            Self::NotMptcp => f.write_str(
                "the connection does not use MPTCP: the socket is plain TCP, or the peer (or a \
                 middlebox) does not support MPTCP and the kernel fell back to TCP",
            ),
            Self::Unsupported { option, since } => write!(
                f,
                "the running kernel does not support {option}: Linux {since} or newer is needed"
            ),
            Self::Io(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(err) => Some(err),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Io(err) => err,
            other => io::Error::new(io::ErrorKind::Unsupported, other),
        }
    }
}

/// A freshly created stream socket and whether it is MPTCP.
#[derive(Debug)]
pub struct Created {
    /// The socket: MPTCP, or plain TCP when `fallback` is set.
    pub socket: Socket,
    /// Why the socket is plain TCP; `None` for an MPTCP socket.
    pub fallback: Option<FallbackReason>,
}

impl Created {
    /// Whether the socket was created with `IPPROTO_MPTCP`. (Whether its
    /// connection will use MPTCP is known once connected: [`is_mptcp`].)
    pub fn is_mptcp(&self) -> bool {
        self.fallback.is_none()
    }
}

/// Creates a stream socket of `domain` (IPv4 or IPv6) with
/// `IPPROTO_MPTCP`. When the kernel refuses, [`Fallback::Tcp`] returns a
/// plain TCP socket with the reason, [`Fallback::Fail`] returns
/// [`Error::Refused`]. The socket is close-on-exec and blocking.
///
/// ```
/// use mptcp_core::socket::{self, Fallback};
/// use socket2::Domain;
///
/// let created = socket::new(Domain::IPV4, Fallback::Tcp)?;
/// if let Some(reason) = created.fallback {
///     eprintln!("using plain TCP: {reason}");
/// }
/// # Ok::<(), mptcp_core::socket::Error>(())
/// ```
pub fn new(domain: Domain, fallback: Fallback) -> Result<Created> {
    let err = match Socket::new(domain, Type::STREAM, Some(PROTOCOL)) {
        Ok(socket) => {
            return Ok(Created {
                socket,
                fallback: None,
            });
        }
        Err(err) => err,
    };
    let Some(reason) = err.raw_os_error().and_then(FallbackReason::from_errno) else {
        return Err(Error::Io(err));
    };
    match fallback {
        Fallback::Fail => Err(Error::Refused(reason)),
        Fallback::Tcp => {
            tracing::debug!(%reason, "MPTCP socket refused, falling back to TCP");
            let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            Ok(Created {
                socket,
                fallback: Some(reason),
            })
        }
    }
}

/// Opens an MPTCP connection, like [`TcpStream::connect`]: tries each
/// address `addr` resolves to and returns the first connection, or the last
/// error. A refusal under [`Fallback::Fail`] is returned at once.
pub fn connect<A: ToSocketAddrs>(addr: A, fallback: Fallback) -> Result<TcpStream> {
    each_addr(addr, |addr| {
        let created = new(Domain::for_address(addr), fallback)?;
        created.socket.connect(&SockAddr::from(addr))?;
        Ok(created.socket.into())
    })
}

/// Binds an MPTCP listener, like [`TcpListener::bind`] (`SO_REUSEADDR`,
/// backlog 1024): tries each address `addr` resolves to and returns the
/// first listener, or the last error.
pub fn bind_listener<A: ToSocketAddrs>(addr: A, fallback: Fallback) -> Result<TcpListener> {
    each_addr(addr, |addr| {
        let created = new(Domain::for_address(addr), fallback)?;
        created.socket.set_reuse_address(true)?;
        created.socket.bind(&SockAddr::from(addr))?;
        created.socket.listen(1024)?;
        Ok(created.socket.into())
    })
}

fn each_addr<A: ToSocketAddrs, T>(
    addr: A,
    mut f: impl FnMut(SocketAddr) -> Result<T>,
) -> Result<T> {
    let mut last = None;
    for addr in addr.to_socket_addrs()? {
        match f(addr) {
            Ok(value) => return Ok(value),
            Err(err @ Error::Refused(_)) => return Err(err),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| {
        Error::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to no socket address",
        ))
    }))
}

/// Whether the connection on `fd` uses MPTCP right now: `false` for plain
/// TCP sockets and for MPTCP sockets whose connection fell back to TCP (a
/// peer without MPTCP, a middlebox stripping the options). Also answers for
/// listeners (whether they were created with MPTCP).
///
/// Asks, in order: `TCP_IS_MPTCP` (Linux 6.10+); else `MPTCP_INFO`, which
/// fails with `EOPNOTSUPP` (IPv4) or `ENOPROTOOPT` (IPv6) after a fallback
/// (5.16+); else `SO_PROTOCOL` (whether the socket was created as MPTCP).
/// Nothing is cached per socket or per namespace; allocation-free, so it is
/// usable on a raw descriptor from an `LD_PRELOAD` hook
/// (`BorrowedFd::borrow_raw`).
pub fn is_mptcp(fd: BorrowedFd<'_>) -> io::Result<bool> {
    if let Some(answer) = by_tcp_is_mptcp(fd)? {
        return Ok(answer);
    }
    if kernel_has_mptcp_info() {
        return by_mptcp_info(fd);
    }
    by_protocol(fd)
}

/// `TCP_IS_MPTCP`; `None` when the kernel does not know it (before 6.10).
fn by_tcp_is_mptcp(fd: BorrowedFd<'_>) -> io::Result<Option<bool>> {
    match getsockopt_int(fd, libc::SOL_TCP, TCP_IS_MPTCP) {
        Ok(value) => Ok(Some(value != 0)),
        Err(err) if is_unknown_option(&err) => Ok(None),
        Err(err) => Err(err),
    }
}

/// `MPTCP_INFO` succeeds on MPTCP connections; after a fallback (or on a
/// plain TCP socket) the IPv4 layer answers `EOPNOTSUPP`, the IPv6 layer
/// `ENOPROTOOPT`. Meaningful on 5.16+ only.
fn by_mptcp_info(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut info = mptcp_info::zeroed();
    match getsockopt(fd, SOL_MPTCP, MPTCP_INFO, &mut info) {
        Ok(_) => Ok(true),
        Err(err) if is_unknown_option(&err) => Ok(false),
        Err(err) => Err(err),
    }
}

/// `SO_PROTOCOL`: whether the socket was created as MPTCP (blind to a
/// fallback; the best answer kernels before 5.16 give).
fn by_protocol(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)? == IPPROTO_MPTCP)
}

/// `EOPNOTSUPP` or `ENOPROTOOPT`: what `getsockopt` returns for an option
/// the socket's protocol (or the kernel) does not know. On a socket that fell
/// back to TCP, `SOL_MPTCP` options get these from the IPv4 and IPv6 layers.
pub(crate) fn is_unknown_option(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOPROTOOPT)
    )
}

/// Whether the running kernel has `MPTCP_INFO` (5.16+). The kernel version
/// is the same in every namespace, so it is read once.
fn kernel_has_mptcp_info() -> bool {
    // 0: not read yet; otherwise `major << 16 | minor`.
    static VERSION: AtomicU32 = AtomicU32::new(0);
    let mut packed = VERSION.load(Ordering::Relaxed);
    if packed == 0 {
        let version = KernelVersion::running().unwrap_or_default();
        packed = (version.major << 16 | version.minor.min(0xffff)).max(1);
        VERSION.store(packed, Ordering::Relaxed);
    }
    packed >= (5 << 16 | 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Every step of the `is_mptcp` chain agrees with the others where
    /// they can tell (this kernel has all three options).
    #[test]
    fn each_is_mptcp_step_agrees_on_loopback() {
        for (bind, mptcp_server) in [
            ("127.0.0.1:0", true),
            ("127.0.0.1:0", false),
            ("[::1]:0", false),
        ] {
            let fallback = if mptcp_server {
                Fallback::Fail
            } else {
                Fallback::Tcp
            };
            let listener: TcpListener = if mptcp_server {
                bind_listener(bind, fallback).unwrap()
            } else {
                TcpListener::bind(bind).unwrap()
            };
            let client = connect(listener.local_addr().unwrap(), Fallback::Fail).unwrap();
            let (server, _) = listener.accept().unwrap();
            for (end, created_mptcp) in [(&client, true), (&server, mptcp_server)] {
                let fd = end.as_fd();
                assert_eq!(by_tcp_is_mptcp(fd).unwrap(), Some(mptcp_server), "{bind}");
                assert_eq!(by_mptcp_info(fd).unwrap(), mptcp_server, "{bind}");
                assert_eq!(by_protocol(fd).unwrap(), created_mptcp, "{bind}");
                assert_eq!(is_mptcp(fd).unwrap(), mptcp_server, "{bind}");
            }
        }
    }

    #[test]
    fn the_running_kernel_has_mptcp_info() {
        assert!(kernel_has_mptcp_info());
    }
}
