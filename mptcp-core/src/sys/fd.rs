//! The system calls the relay makes on descriptors, each behind a small safe
//! wrapper: pipes and `splice(2)`, `send`/`recv` without signals, a
//! half-close, an integer socket option, and the open-files limit. The
//! relay above it has no `unsafe` code.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

fn len_or_error(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid, writable array of two ints, as pipe2
    // requires.
    super::cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody
    // else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Asks for `size` bytes of room in the pipe of `fd` (`F_SETPIPE_SZ`);
/// returns what the kernel granted (a power of two pages).
pub fn set_pipe_size(fd: RawFd, size: usize) -> io::Result<usize> {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory.
    let granted = super::cvt(unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size) })?;
    Ok(granted as usize)
}

/// Moves up to `len` bytes from `from` to `to`, one of which is a pipe,
/// without blocking.
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice takes descriptors (an invalid one is EBADF) and null
    // offsets, which are valid for pipes and sockets; no memory is passed.
    len_or_error(unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    })
}

/// `send` without `SIGPIPE` (a closed peer is `EPIPE`), with extra flags
/// (`MSG_MORE`: more follows at once, so the kernel may hold this for one
/// segment with what comes next).
pub fn send(fd: RawFd, buf: &[u8], more: bool) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    len_or_error(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) })
}

/// `recv` into `buf`.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    len_or_error(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) })
}

/// `read` into `buf` (a pipe's bytes).
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    len_or_error(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// `recv` of up to `max` bytes appended to `out` (no zeroing first).
pub fn recv_append(fd: RawFd, out: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    out.reserve(max);
    let spare = &mut out.spare_capacity_mut()[..max];
    // SAFETY: `spare` is valid for writes of `max` bytes (reserved above);
    // recv writes at most that many.
    let n = len_or_error(unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), max, 0) })?;
    // SAFETY: recv initialised the first `n <= max` bytes of the spare
    // capacity.
    unsafe { out.set_len(out.len() + n) };
    Ok(n)
}

/// Shuts the write side of socket `fd`; a socket no longer connected
/// (the peer is gone: the other direction will notice) is not an error.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown takes a descriptor and a flag, no memory.
    match super::cvt(unsafe { libc::shutdown(fd, libc::SHUT_WR) }) {
        Err(e) if e.raw_os_error() != Some(libc::ENOTCONN) => Err(e),
        _ => Ok(()),
    }
}

/// Sets an `int` socket option.
pub fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a live int of the size given; the
    // descriptor is the caller's (an invalid one is EBADF).
    super::cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Raises the soft and hard limit on open files to the first of
/// `candidates` the kernel allows; returns it.
pub fn raise_open_files_limit(candidates: impl Fn(u64) -> [u64; 2]) -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    candidates(lim.rlim_max).into_iter().find(|&max| {
        let new = libc::rlimit {
            rlim_cur: max,
            rlim_max: max,
        };
        // SAFETY: `new` is a valid rlimit; failure leaves the limit as is.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 }
    })
}
