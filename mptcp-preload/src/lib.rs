//! `libmptcp_preload.so`: put it in `LD_PRELOAD` under a program you cannot
//! rebuild, and its TCP sockets become Multipath TCP sockets (with a
//! fallback to TCP whenever MPTCP is refused), or, in relay-hop mode, its
//! connections go through a SOCKS5 relay over MPTCP. See the README for the
//! environment variables.
//!
//! Layout: [`real`] finds the libc functions behind the hooks, [`mod@config`]
//! parses the environment read at load time, [`fdtable`] keeps lock-free
//! per-descriptor state (with [`pool`]s for what only some sockets need),
//! [`compat`] rebuilds a socket as plain TCP when the
//! kernel refuses an option on MPTCP, [`relay`] does the relay hop (its
//! SOCKS5 bytes in [`exchange`]; [`mod@select`] answers `select` with
//! `poll` for it), [`log`]
//! writes allocation-free log lines, [`sys`] holds the system calls that are
//! not hooks. The exported C symbols are the hooks
//! below and nothing else.
//!
//! Every hook body runs inside `catch_unwind`: a bug here turns into the
//! plain libc call, never into a panic across the C boundary.

pub mod compat;
pub mod config;
pub mod dns;
pub mod exchange;
pub mod fdtable;
pub mod log;
pub mod pool;
pub mod real;
pub mod relay;
pub mod select;
pub mod sys;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use libc::{
    addrinfo, c_char, c_int, c_uint, c_void, fd_set, iovec, msghdr, nfds_t, pollfd, sigset_t,
    size_t, sockaddr, socklen_t, ssize_t, timespec, timeval,
};
use mptcp_core::socket::FallbackReason;
use mptcp_core::sys::socket::{IPPROTO_MPTCP, SOL_MPTCP};

use config::{Config, LogLevel, Mode};
use fdtable::flag;

/// The configuration, from the environment the program started with: the
/// constructor reads it before the program can change its environment or
/// start threads (a hook that runs before the constructor, from another
/// library's, reads it then). Without any `MPTCP_PRELOAD_` variable it is
/// [`Config::UNCONFIGURED`], with nothing parsed or allocated, which is what
/// nearly every program started under the library gets.
pub fn config() -> &'static Config {
    static UNCONFIGURED: Config = Config::UNCONFIGURED;
    static PARSED: OnceLock<Config> = OnceLock::new();
    if !environment_configures_library() {
        return &UNCONFIGURED;
    }
    PARSED.get_or_init(|| {
        let (config, problem) = config::load(|name| std::env::var(name).ok());
        if let Some(line) = problem {
            // Always on standard error, whatever the log settings.
            log::write_line(None, format_args!("{line}"));
        }
        config
    })
}

/// Whether the environment sets any of the library's variables, looked at
/// once.
fn environment_configures_library() -> bool {
    const UNKNOWN: u8 = 0;
    const NO: u8 = 1;
    const YES: u8 = 2;
    static SEEN: AtomicU8 = AtomicU8::new(UNKNOWN);
    match SEEN.load(Ordering::Relaxed) {
        NO => false,
        YES => true,
        _ => {
            let set = sys::environment_has_prefix(config::VAR_PREFIX);
            SEEN.store(if set { YES } else { NO }, Ordering::Relaxed);
            set
        }
    }
}

/// Runs at load time, in every program started under the library, so it
/// does only what cannot wait: it notes which file descriptor 2 is (before
/// the program can reopen it) and reads the configuration (see
/// [`config`]). The real functions are looked up on first use ([`real`]),
/// the table gets its owner with its first socket ([`fdtable`]) and the
/// panic hook is installed by the first hook call.
extern "C" fn init() {
    let _ = catch_unwind(|| {
        log::remember_stderr();
        config();
    });
}

/// Makes a panic in a hook one log line like the others (std's own hook
/// would print it, with a backtrace, to whatever descriptor 2 is); the
/// hook then makes the libc call instead. Installed by the first hook
/// call, before its body runs: a panic can only happen inside a hook.
#[inline]
fn install_panic_hook() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if !INSTALLED.load(Ordering::Relaxed) {
        std::panic::set_hook(Box::new(|info| {
            let what = mptcp_core::panic_message(info.payload()).unwrap_or("a panic");
            let (file, line) = info.location().map_or(("?", 0), |l| (l.file(), l.line()));
            log::line(
                LogLevel::Error,
                format_args!(
                    "internal error at {file}:{line} ({what}); the call went to libc unchanged"
                ),
            );
        }));
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init;

/// The kernel has no MPTCP at all (`EPROTONOSUPPORT`): stop asking.
static MPTCP_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// The calling thread's `errno`.
pub(crate) fn errno() -> c_int {
    // SAFETY: errno is a thread-local int, always readable.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
pub(crate) fn set_errno(value: c_int) {
    // SAFETY: errno is a thread-local int, always writable.
    unsafe { *libc::__errno_location() = value };
}

/// Log-once kinds.
const ONCE_MPTCP_REFUSED: u32 = 0;
const ONCE_OPTION_BASE: u32 = 8;

/// Defines an exported hook whose body runs in `catch_unwind`, falling back
/// to the real function if it panics.
macro_rules! hooks {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty => $body:ident; )*) => {
        $(
            $(#[$doc])*
            ///
            /// # Safety
            ///
            /// The contract of the libc function of the same name.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                match catch_unwind(AssertUnwindSafe(|| {
                    install_panic_hook();
                    // SAFETY: the body upholds the libc contract the caller
                    // promised.
                    unsafe { $body($($arg),*) }
                })) {
                    Ok(result) => result,
                    // SAFETY: the caller's arguments, unchanged.
                    Err(_) => unsafe { real::$name($($arg),*) },
                }
            }
        )*
    };
}

hooks! {
    /// `socket(2)`: TCP stream sockets become MPTCP sockets.
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int => socket_hook;
    /// `setsockopt(2)`: records options, rebuilds as TCP on refusal.
    fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: socklen_t) -> c_int => setsockopt_hook;
    /// `getsockopt(2)`: rebuilds as TCP on refusal; relay-hop `SO_ERROR`.
    fn getsockopt(fd: c_int, level: c_int, name: c_int, value: *mut c_void, len: *mut socklen_t) -> c_int => getsockopt_hook;
    /// `connect(2)`: relay hop for matching destinations.
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int => connect_hook;
    /// `getpeername(2)`: the original destination of a relayed socket.
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int => getpeername_hook;
    /// `accept(2)`: forgets stale state for the new descriptor.
    fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int => accept_hook;
    /// `accept4(2)`: forgets stale state for the new descriptor.
    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int => accept4_hook;
    /// `close(2)`: forgets the descriptor.
    fn close(fd: c_int) -> c_int => close_hook;
    /// `dup2(2)`: the target descriptor takes the source's state.
    fn dup2(old: c_int, new: c_int) -> c_int => dup2_hook;
    /// `dup3(2)`: the target descriptor takes the source's state.
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int => dup3_hook;
    /// `getaddrinfo(3)`: placeholder addresses for remote DNS.
    fn getaddrinfo(node: *const c_char, service: *const c_char, hints: *const addrinfo, res: *mut *mut addrinfo) -> c_int => getaddrinfo_hook;
    /// `close_range(2)`: forgets the closed descriptors.
    fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int => close_range_hook;
    /// `read(2)`: a relay hop's answer is read first.
    fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t => read_hook;
    /// `readv(2)`: a relay hop's answer is read first.
    fn readv(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t => readv_hook;
    /// `recv(2)`: a relay hop's answer is read first.
    fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t => recv_hook;
    /// `recvfrom(2)`: a relay hop's answer is read first.
    fn recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, addr_len: *mut socklen_t) -> ssize_t => recvfrom_hook;
    /// `recvmsg(2)`: a relay hop's answer is read first.
    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t => recvmsg_hook;
    /// Fortified `read`: a relay hop's answer is read first.
    fn __read_chk(fd: c_int, buf: *mut c_void, count: size_t, buf_len: size_t) -> ssize_t => read_chk_hook;
    /// Fortified `recv`: a relay hop's answer is read first.
    fn __recv_chk(fd: c_int, buf: *mut c_void, len: size_t, buf_len: size_t, flags: c_int) -> ssize_t => recv_chk_hook;
    /// Fortified `recvfrom`: a relay hop's answer is read first.
    fn __recvfrom_chk(fd: c_int, buf: *mut c_void, len: size_t, buf_len: size_t, flags: c_int, addr: *mut sockaddr, addr_len: *mut socklen_t) -> ssize_t => recvfrom_chk_hook;
    /// `poll(2)`: a relay hop is writable once the relay has answered.
    fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int => poll_hook;
    /// `ppoll(2)`: a relay hop is writable once the relay has answered.
    fn ppoll(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t) -> c_int => ppoll_hook;
    /// Fortified `poll`: a relay hop is writable once the relay has answered.
    fn __poll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: c_int, fds_len: size_t) -> c_int => poll_chk_hook;
    /// Fortified `ppoll`: a relay hop is writable once the relay has answered.
    fn __ppoll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t, fds_len: size_t) -> c_int => ppoll_chk_hook;
    /// `select(2)`: a relay hop is writable once the relay has answered.
    fn select(nfds: c_int, read: *mut fd_set, write: *mut fd_set, except: *mut fd_set, timeout: *mut timeval) -> c_int => select_hook;
    /// `pselect(2)`: a relay hop is writable once the relay has answered.
    fn pselect(nfds: c_int, read: *mut fd_set, write: *mut fd_set, except: *mut fd_set, timeout: *const timespec, sigmask: *const sigset_t) -> c_int => pselect_hook;
}

fn is_tcp_request(domain: c_int, ty: c_int, protocol: c_int) -> bool {
    (domain == libc::AF_INET || domain == libc::AF_INET6)
        && ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) == libc::SOCK_STREAM
        && (protocol == 0 || protocol == libc::IPPROTO_TCP)
}

unsafe fn socket_hook(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    let config = config();
    if matches!(config.mode, Mode::Off | Mode::Blocked) || !is_tcp_request(domain, ty, protocol) {
        // SAFETY: the caller's arguments.
        let fd = unsafe { real::socket(domain, ty, protocol) };
        fdtable::forget(fd);
        return fd;
    }
    if !MPTCP_UNSUPPORTED.load(Ordering::Relaxed) {
        // SAFETY: the caller's arguments with another protocol.
        let fd = unsafe { real::socket(domain, ty, IPPROTO_MPTCP) };
        if fd >= 0 {
            fdtable::track(fd, flag::INET_STREAM | flag::CONVERTED, domain);
            return fd;
        }
        let e = errno();
        let reason = FallbackReason::from_errno(e);
        if reason == Some(FallbackReason::NotBuilt) {
            MPTCP_UNSUPPORTED.store(true, Ordering::Relaxed);
        }
        log::once(
            ONCE_MPTCP_REFUSED,
            LogLevel::Info,
            format_args!(
                "the kernel refused an MPTCP socket (errno {e}{}); using plain TCP",
                if reason == Some(FallbackReason::Disabled) {
                    ", sysctl net.mptcp.enabled=0"
                } else {
                    ""
                }
            ),
        );
    }
    // What the program asked for: its result and errno are the program's.
    // SAFETY: the caller's arguments.
    let fd = unsafe { real::socket(domain, ty, protocol) };
    fdtable::track(fd, flag::INET_STREAM, domain);
    fd
}

/// The cell of a converted socket that may still be rebuilt as TCP.
fn replaceable_cell(fd: c_int, level: c_int) -> Option<&'static fdtable::Cell> {
    if level == SOL_MPTCP {
        return None;
    }
    fdtable::lookup(fd, |flags| {
        flags & flag::CONVERTED != 0 && flags & flag::CONNECT_CALLED == 0
    })
}

fn refused(e: c_int) -> bool {
    e == libc::EOPNOTSUPP || e == libc::ENOPROTOOPT
}

/// Rebuilds the converted socket `fd` as plain TCP because the kernel
/// refused `level`/`name` on it, if `accepted_by_tcp` says a fresh TCP
/// socket of the same family takes the same call (otherwise the error has
/// nothing to do with MPTCP: an IPv6 option on an IPv4 socket, a bad
/// value). Returns whether it did.
fn fall_back_to_tcp(
    fd: c_int,
    cell: &fdtable::Cell,
    level: c_int,
    name: c_int,
    what: &str,
    accepted_by_tcp: impl FnOnce(c_int) -> bool,
) -> bool {
    let domain = cell.domain();
    if !compat::replaceable(fd, cell) || !compat::tcp_accepts(domain, accepted_by_tcp) {
        return false;
    }
    match compat::rebuild(fd, cell, domain, libc::IPPROTO_TCP) {
        Ok(()) => {
            cell.update(0, flag::CONVERTED);
            let option = compat::OptionLabel(level, name);
            log::once(
                ONCE_OPTION_BASE + (name as u32 % 48),
                LogLevel::Info,
                format_args!(
                    "{what}({option}) is not supported on MPTCP sockets: fd {fd} now uses plain TCP"
                ),
            );
            true
        }
        Err(e) => {
            log::line(
                LogLevel::Error,
                format_args!("fd {fd}: could not rebuild as TCP (errno {e})"),
            );
            false
        }
    }
}

/// Records an option the kernel accepted (or the library ignored) so that
/// a rebuild replays it.
///
/// # Safety
///
/// `value` is null or points to `len` readable bytes.
unsafe fn record(
    cell: &fdtable::Cell,
    level: c_int,
    name: c_int,
    value: *const c_void,
    len: socklen_t,
) {
    if value.is_null() || len as usize > fdtable::OPTION_MAX_LEN {
        cell.record_option(level, name, &[0u8; fdtable::OPTION_MAX_LEN + 1]);
    } else {
        // SAFETY: readable for `len` bytes by the caller's contract.
        let bytes = unsafe { std::slice::from_raw_parts(value.cast::<u8>(), len as usize) };
        cell.record_option(level, name, bytes);
    }
}

unsafe fn setsockopt_hook(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *const c_void,
    len: socklen_t,
) -> c_int {
    // SAFETY: the caller's arguments.
    let r = unsafe { real::setsockopt(fd, level, name, value, len) };
    if r == 0 {
        if let Some(cell) = replaceable_cell(fd, level) {
            // SAFETY: the kernel just read `len` bytes from `value`.
            unsafe { record(cell, level, name, value, len) };
        }
        return 0;
    }
    let e = errno();
    if !refused(e) || level == SOL_MPTCP {
        return r;
    }
    let probe = |tcp: c_int| {
        // SAFETY: the caller's value, which the kernel just read.
        unsafe { real::setsockopt(tcp, level, name, value, len) == 0 }
    };
    match compat::on_refusal(level, name) {
        compat::Refusal::Ignore => {
            if let Some(cell) = fdtable::lookup(fd, |flags| flags & flag::CONVERTED != 0)
                && compat::tcp_accepts(cell.domain(), probe)
            {
                if cell.flags() & flag::CONNECT_CALLED == 0 {
                    // SAFETY: TCP just read `len` bytes from `value`.
                    unsafe { record(cell, level, name, value, len) };
                }
                log::once(
                    ONCE_OPTION_BASE + (name as u32 % 48),
                    LogLevel::Info,
                    format_args!(
                        "setsockopt({}) means nothing on MPTCP sockets: ignored, fd {fd} stays MPTCP",
                        compat::OptionLabel(level, name)
                    ),
                );
                return 0;
            }
        }
        compat::Refusal::Rebuild => {
            if let Some(cell) = replaceable_cell(fd, level)
                && fall_back_to_tcp(fd, cell, level, name, "setsockopt", probe)
            {
                // SAFETY: the caller's arguments, now on a TCP socket.
                return unsafe { real::setsockopt(fd, level, name, value, len) };
            }
        }
    }
    set_errno(e);
    r
}

unsafe fn getsockopt_hook(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    // SAFETY: the caller's arguments.
    let r = unsafe { real::getsockopt(fd, level, name, value, len) };
    if r == 0 {
        if level == libc::SOL_SOCKET && name == libc::SO_ERROR {
            let config = config();
            if config.mode == Mode::Relay
                && let Some(cell) = fdtable::lookup(fd, |flags| {
                    flags & (flag::RELAY_PENDING | flag::RELAY_FAILED) != 0
                })
            {
                // SAFETY: the kernel just wrote an int there.
                unsafe {
                    let kernel = value.cast::<c_int>().read_unaligned();
                    value
                        .cast::<c_int>()
                        .write_unaligned(relay::so_error(config, fd, cell, kernel));
                }
            }
        }
        return 0;
    }
    let e = errno();
    let probe = |tcp: c_int| {
        let mut buf = [0u8; 256];
        // SAFETY: `len` is the caller's length pointer, which the kernel
        // just read; null is handled by `as_ref`.
        let mut probe_len = unsafe { len.as_ref() }.map_or(0, |l| (*l).min(256));
        // SAFETY: `buf` is writable for `probe_len` bytes.
        unsafe { real::getsockopt(tcp, level, name, buf.as_mut_ptr().cast(), &mut probe_len) == 0 }
    };
    if refused(e)
        && compat::on_refusal(level, name) == compat::Refusal::Rebuild
        && let Some(cell) = replaceable_cell(fd, level)
        && fall_back_to_tcp(fd, cell, level, name, "getsockopt", probe)
    {
        // SAFETY: the caller's arguments, now on a TCP socket.
        return unsafe { real::getsockopt(fd, level, name, value, len) };
    }
    set_errno(e);
    r
}

unsafe fn connect_hook(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let config = config();
    if config.mode == Mode::Relay {
        // SAFETY: the caller's arguments.
        if let Some(result) = unsafe { relay::connect(config, fd, addr, len) } {
            return result;
        }
    }
    // SAFETY: the caller's arguments.
    if config.mode == Mode::Blocked && unsafe { relay::must_not_leave(fd, addr, len) } {
        set_errno(libc::ENETUNREACH);
        return -1;
    }
    fdtable::mark_connected(fd, |flags| {
        flags & flag::INET_STREAM != 0 && flags & flag::CONNECT_CALLED == 0
    });
    // SAFETY: the caller's arguments.
    unsafe { real::connect(fd, addr, len) }
}

unsafe fn getpeername_hook(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if let Some(cell) = fdtable::lookup(fd, relay::is_relayed) {
        // SAFETY: the caller's arguments.
        if let Some(result) = unsafe { relay::getpeername(config(), fd, cell, addr, len) } {
            return result;
        }
    }
    // SAFETY: the caller's arguments.
    unsafe { real::getpeername(fd, addr, len) }
}

unsafe fn accept_hook(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: the caller's arguments.
    let new = unsafe { real::accept(fd, addr, len) };
    fdtable::forget(new);
    new
}

unsafe fn accept4_hook(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments.
    let new = unsafe { real::accept4(fd, addr, len, flags) };
    fdtable::forget(new);
    new
}

unsafe fn close_hook(fd: c_int) -> c_int {
    fdtable::closed(fd);
    // SAFETY: the caller's argument.
    unsafe { real::close(fd) }
}

/// After `dup2`/`dup3` succeeded: `new` is another name for `old`'s socket.
/// It keeps the relay destination and the MPTCP flag but is never rebuilt
/// itself (a rebuild through `old` carries it along, see
/// [`compat::rebuild`]).
fn copy_state(old: c_int, new: c_int) {
    fdtable::copy(old, new, flag::OPTIONS_INCOMPLETE);
}

unsafe fn dup2_hook(old: c_int, new: c_int) -> c_int {
    // SAFETY: the caller's arguments.
    let r = unsafe { real::dup2(old, new) };
    if r >= 0 {
        copy_state(old, r);
    }
    r
}

unsafe fn dup3_hook(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments.
    let r = unsafe { real::dup3(old, new, flags) };
    if r >= 0 {
        copy_state(old, r);
    }
    r
}

unsafe fn close_range_hook(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments.
    let r = unsafe { real::close_range(first, last, flags) };
    if r == 0 && flags as c_uint & libc::CLOSE_RANGE_CLOEXEC == 0 {
        fdtable::clear_range(first, last);
    }
    r
}

/// The placeholder for `node` if remote DNS applies to this query: a host
/// name (not a literal), IPv4 or any family, stream sockets or any type.
///
/// # Safety
///
/// `node` is null or NUL-terminated; `hints` is null or valid.
unsafe fn remote_name(node: *const c_char, hints: *const addrinfo) -> Option<std::net::Ipv4Addr> {
    let config = config();
    if config.mode != Mode::Relay || !config.remote_dns || node.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    let name = unsafe { std::ffi::CStr::from_ptr(node) }.to_str().ok()?;
    // SAFETY: null or valid by the caller's contract.
    if let Some(h) = unsafe { hints.as_ref() } {
        let family = h.ai_family == libc::AF_UNSPEC || h.ai_family == libc::AF_INET;
        let stream = h.ai_socktype == 0 || h.ai_socktype == libc::SOCK_STREAM;
        if !family || !stream || h.ai_flags & libc::AI_NUMERICHOST != 0 {
            return None;
        }
    }
    if !dns::is_remote_name(name) {
        return None;
    }
    dns::placeholder(name.as_bytes())
}

unsafe fn getaddrinfo_hook(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    // SAFETY: the caller's arguments.
    let Some(placeholder) = (unsafe { remote_name(node, hints) }) else {
        // SAFETY: the caller's arguments.
        return unsafe { real::getaddrinfo(node, service, hints, res) };
    };
    // Let libc build the list (it owns the memory freeaddrinfo releases)
    // for a numeric IPv4 address and the caller's service, then put the
    // placeholder in.
    // SAFETY: null or valid by the caller's contract; addrinfo is plain
    // data for which all-zero is the "no hints" value.
    let mut local: addrinfo = unsafe { hints.as_ref() }
        .copied()
        .unwrap_or(unsafe { std::mem::zeroed() });
    local.ai_family = libc::AF_INET;
    local.ai_socktype = libc::SOCK_STREAM;
    local.ai_flags = (local.ai_flags | libc::AI_NUMERICHOST) & !libc::AI_ADDRCONFIG;
    // SAFETY: a literal, the caller's service and result pointer, our hints.
    let r = unsafe { real::getaddrinfo(c"0.0.0.0".as_ptr(), service, &local, res) };
    if r != 0 {
        return r;
    }
    // SAFETY: on success `*res` is a valid list whose AF_INET entries
    // point to sockaddr_in structures we may write (the caller owns them).
    unsafe {
        let mut entry = *res;
        while let Some(ai) = entry.as_mut() {
            if ai.ai_family == libc::AF_INET && !ai.ai_addr.is_null() {
                (*ai.ai_addr.cast::<libc::sockaddr_in>()).sin_addr.s_addr =
                    u32::from(placeholder).to_be();
            }
            entry = ai.ai_next;
        }
    }
    log::line(
        LogLevel::Debug,
        format_args!(
            "remote DNS: {} is {placeholder} until the relay resolves it",
            {
                // SAFETY: checked non-null and NUL-terminated in `remote_name`.
                unsafe { std::ffi::CStr::from_ptr(node) }.to_string_lossy()
            }
        ),
    );
    0
}

/// A read of `fd` through `read`: first the relay hop's answer, if one is
/// awaited (see [`relay::before_read`]).
#[inline]
fn relay_read(fd: c_int, dontwait: bool, read: impl FnOnce() -> ssize_t) -> ssize_t {
    match relay::before_read(config(), fd, dontwait) {
        Some(e) => {
            set_errno(e);
            -1
        }
        None => read(),
    }
}

unsafe fn read_hook(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    // SAFETY: the caller's arguments.
    relay_read(fd, false, || unsafe { real::read(fd, buf, count) })
}

unsafe fn read_chk_hook(fd: c_int, buf: *mut c_void, count: size_t, buf_len: size_t) -> ssize_t {
    // SAFETY: the caller's arguments.
    relay_read(fd, false, || unsafe {
        real::__read_chk(fd, buf, count, buf_len)
    })
}

unsafe fn readv_hook(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t {
    // SAFETY: the caller's arguments.
    relay_read(fd, false, || unsafe { real::readv(fd, iov, count) })
}

unsafe fn recv_hook(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
    relay_read(fd, flags & libc::MSG_DONTWAIT != 0, || {
        // SAFETY: the caller's arguments.
        unsafe { real::recv(fd, buf, len, flags) }
    })
}

unsafe fn recv_chk_hook(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buf_len: size_t,
    flags: c_int,
) -> ssize_t {
    relay_read(fd, flags & libc::MSG_DONTWAIT != 0, || {
        // SAFETY: the caller's arguments.
        unsafe { real::__recv_chk(fd, buf, len, buf_len, flags) }
    })
}

unsafe fn recvfrom_hook(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addr_len: *mut socklen_t,
) -> ssize_t {
    relay_read(fd, flags & libc::MSG_DONTWAIT != 0, || {
        // SAFETY: the caller's arguments.
        unsafe { real::recvfrom(fd, buf, len, flags, addr, addr_len) }
    })
}

unsafe fn recvfrom_chk_hook(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buf_len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addr_len: *mut socklen_t,
) -> ssize_t {
    relay_read(fd, flags & libc::MSG_DONTWAIT != 0, || {
        // SAFETY: the caller's arguments.
        unsafe { real::__recvfrom_chk(fd, buf, len, buf_len, flags, addr, addr_len) }
    })
}

unsafe fn recvmsg_hook(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    if flags & libc::MSG_ERRQUEUE != 0 {
        // The error queue (timestamps, zero-copy notices), not the stream.
        // SAFETY: the caller's arguments.
        return unsafe { real::recvmsg(fd, msg, flags) };
    }
    relay_read(fd, flags & libc::MSG_DONTWAIT != 0, || {
        // SAFETY: the caller's arguments.
        unsafe { real::recvmsg(fd, msg, flags) }
    })
}

/// A poll over `fds` through `wait` (the real call, given the time left):
/// through [`relay::poll`] when a relay hop among them is pending.
///
/// # Safety
///
/// `fds` is null or points to `nfds` writable `pollfd`s.
unsafe fn relay_poll(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: Option<std::time::Duration>,
    mut wait: impl FnMut(&mut [pollfd], Option<std::time::Duration>) -> c_int,
    direct: impl FnOnce() -> c_int,
) -> c_int {
    let config = config();
    if config.mode != Mode::Relay || fds.is_null() || nfds == 0 {
        return direct();
    }
    let Ok(len) = usize::try_from(nfds) else {
        return direct();
    };
    // SAFETY: `nfds` writable pollfds by the caller's contract.
    let fds = unsafe { std::slice::from_raw_parts_mut(fds, len) };
    if !relay::poll_gates(config, fds) {
        return direct();
    }
    relay::poll(config, fds, timeout, |fds, left| wait(fds, left))
}

/// A `poll` timeout in milliseconds as a duration (`None`: no timeout).
fn poll_timeout(ms: c_int) -> Option<std::time::Duration> {
    u64::try_from(ms).ok().map(std::time::Duration::from_millis)
}

/// A `ppoll` timeout as a duration (`None`: no timeout).
///
/// # Safety
///
/// `ts` is null or valid.
unsafe fn ppoll_timeout(ts: *const timespec) -> Option<std::time::Duration> {
    // SAFETY: null or valid by the caller's contract.
    let ts = unsafe { ts.as_ref() }?;
    Some(std::time::Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    ))
}

/// `left` as a `timespec` for `ppoll`.
fn timespec_of(left: std::time::Duration) -> timespec {
    timespec {
        tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(left.subsec_nanos() as i32),
    }
}

unsafe fn poll_hook(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int {
    // SAFETY: the caller's arguments (the slice is the caller's array).
    unsafe {
        relay_poll(
            fds,
            nfds,
            poll_timeout(timeout),
            |fds, left| real::poll(fds.as_mut_ptr(), nfds, relay::poll_ms(left)),
            || real::poll(fds, nfds, timeout),
        )
    }
}

unsafe fn poll_chk_hook(fds: *mut pollfd, nfds: nfds_t, timeout: c_int, fds_len: size_t) -> c_int {
    // SAFETY: the caller's arguments (the slice is the caller's array).
    unsafe {
        relay_poll(
            fds,
            nfds,
            poll_timeout(timeout),
            |fds, left| real::__poll_chk(fds.as_mut_ptr(), nfds, relay::poll_ms(left), fds_len),
            || real::__poll_chk(fds, nfds, timeout, fds_len),
        )
    }
}

unsafe fn ppoll_hook(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> c_int {
    // SAFETY: the caller's arguments (the slice is the caller's array).
    unsafe {
        relay_poll(
            fds,
            nfds,
            ppoll_timeout(timeout),
            |fds, left| {
                ppoll_left(fds, left, |fds, ts| {
                    real::ppoll(fds.as_mut_ptr(), nfds, ts, sigmask)
                })
            },
            || real::ppoll(fds, nfds, timeout, sigmask),
        )
    }
}

unsafe fn ppoll_chk_hook(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: *const timespec,
    sigmask: *const sigset_t,
    fds_len: size_t,
) -> c_int {
    // SAFETY: the caller's arguments (the slice is the caller's array).
    unsafe {
        relay_poll(
            fds,
            nfds,
            ppoll_timeout(timeout),
            |fds, left| {
                ppoll_left(fds, left, |fds, ts| {
                    real::__ppoll_chk(fds.as_mut_ptr(), nfds, ts, sigmask, fds_len)
                })
            },
            || real::__ppoll_chk(fds, nfds, timeout, sigmask, fds_len),
        )
    }
}

unsafe fn select_hook(
    nfds: c_int,
    read: *mut fd_set,
    write: *mut fd_set,
    except: *mut fd_set,
    timeout: *mut timeval,
) -> c_int {
    let sets = select::Sets {
        read,
        write,
        except,
    };
    // SAFETY: null or valid by the caller's contract.
    let limit = unsafe { timeout.as_ref() }.map(|tv| {
        std::time::Duration::new(
            u64::try_from(tv.tv_sec).unwrap_or(0),
            u32::try_from(tv.tv_usec).unwrap_or(0).saturating_mul(1000),
        )
    });
    // SAFETY: the caller's sets, valid for `nfds` descriptors.
    let gated = unsafe {
        select::gated(config(), nfds, &sets, limit, |fds, left| {
            real::poll(fds.as_mut_ptr(), fds.len() as nfds_t, relay::poll_ms(left))
        })
    };
    match gated {
        Some((n, left)) => {
            // SAFETY: null or valid and writable by the caller's contract.
            if let (Some(tv), Some(left)) = (unsafe { timeout.as_mut() }, left) {
                tv.tv_sec = libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX);
                tv.tv_usec = libc::suseconds_t::from(left.subsec_micros());
            }
            n
        }
        // SAFETY: the caller's arguments.
        None => unsafe { real::select(nfds, read, write, except, timeout) },
    }
}

unsafe fn pselect_hook(
    nfds: c_int,
    read: *mut fd_set,
    write: *mut fd_set,
    except: *mut fd_set,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> c_int {
    let sets = select::Sets {
        read,
        write,
        except,
    };
    // SAFETY: the caller's sets, valid for `nfds` descriptors; `timeout`
    // is null or valid.
    let gated = unsafe {
        select::gated(
            config(),
            nfds,
            &sets,
            ppoll_timeout(timeout),
            |fds, left| {
                ppoll_left(fds, left, |fds, ts| {
                    real::ppoll(fds.as_mut_ptr(), fds.len() as nfds_t, ts, sigmask)
                })
            },
        )
    };
    match gated {
        Some((n, _)) => n,
        // SAFETY: the caller's arguments.
        None => unsafe { real::pselect(nfds, read, write, except, timeout, sigmask) },
    }
}

/// Calls a `ppoll`-like `call` with `left` as its timeout (null: none).
fn ppoll_left(
    fds: &mut [pollfd],
    left: Option<std::time::Duration>,
    call: impl FnOnce(&mut [pollfd], *const timespec) -> c_int,
) -> c_int {
    let ts = left.map(timespec_of);
    call(
        fds,
        ts.as_ref()
            .map_or(std::ptr::null(), |t| t as *const timespec),
    )
}
