//! `poll(2)` over many descriptors at once: the automatic-paths daemon
//! waits for rtnetlink changes and for the answers of its link probes
//! (non-blocking TCP connects) together.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// Readable (`POLLIN`).
pub const READABLE: i16 = libc::POLLIN;
/// Writable (`POLLOUT`): a non-blocking connect has finished.
pub const WRITABLE: i16 = libc::POLLOUT;

/// Waits at most `timeout` until one of `fds` is ready for its events
/// (`READABLE`, `WRITABLE`); returns the events that happened, one entry
/// per descriptor (errors and hang-ups show as `POLLERR`/`POLLHUP` bits).
/// A signal ends the wait early with nothing ready, so the caller can look
/// at its stop flag.
pub fn poll(fds: &[(BorrowedFd<'_>, i16)], timeout: Duration) -> io::Result<Vec<i16>> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|(fd, events)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: *events,
            revents: 0,
        })
        .collect();
    // Rounded up: a wait cut short to 0 ms would spin until the deadline.
    let timeout_ms =
        libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pollfds` is a valid, initialised array of `pollfds.len()`
    // elements that outlives the call; the descriptors are borrowed, so
    // they stay open during it.
    let n = unsafe {
        libc::poll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            timeout_ms,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        pollfds.iter_mut().for_each(|p| p.revents = 0);
    }
    Ok(pollfds.iter().map(|p| p.revents).collect())
}
