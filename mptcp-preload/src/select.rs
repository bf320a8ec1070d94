//! `select`/`pselect` over a pending relay hop, answered with `poll`: the
//! descriptor sets become `pollfd`s, [`relay::poll`] gates the hop (its
//! socket is reported only once the relay has answered, so the program's
//! own connect timeout covers the hop, as wget's does), and the result goes
//! back into the sets. Calls without a pending hop never come here.

use std::time::{Duration, Instant};

use libc::{c_int, fd_set, pollfd};

use crate::config::{Config, Mode};
use crate::relay;

/// The three descriptor sets of a `select` call (each may be null).
pub struct Sets {
    /// Descriptors to watch for reading.
    pub read: *mut fd_set,
    /// Descriptors to watch for writing.
    pub write: *mut fd_set,
    /// Descriptors to watch for exceptional conditions (`POLLPRI`).
    pub except: *mut fd_set,
}

/// Whether `set` (null: empty) holds `fd`.
///
/// # Safety
///
/// `set` is null or valid.
unsafe fn holds(set: *const fd_set, fd: c_int) -> bool {
    // SAFETY: non-null and valid by the caller's contract; `fd` is below
    // FD_SETSIZE (the callers stop there).
    !set.is_null() && unsafe { libc::FD_ISSET(fd, set) }
}

/// The `select` call through [`relay::poll`] if one of the descriptors in
/// `sets` (below `nfds`) is a pending relay hop; `None` to make the real
/// call instead. `wait` is the real `poll` (or `ppoll`), given the time left.
/// On success, `timeout` (if given) is set to the time left, as Linux does.
///
/// # Safety
///
/// The sets are null or valid for `nfds` descriptors.
pub unsafe fn gated(
    config: &Config,
    nfds: c_int,
    sets: &Sets,
    timeout: Option<Duration>,
    wait: impl FnMut(&mut [pollfd], Option<Duration>) -> c_int,
) -> Option<(c_int, Option<Duration>)> {
    // Sets larger than `fd_set` (some programs allocate them) are left to
    // the kernel: the conversion below handles FD_SETSIZE descriptors.
    if config.mode != Mode::Relay || nfds <= 0 || nfds as usize > libc::FD_SETSIZE {
        return None;
    }
    let mut fds = [pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; libc::FD_SETSIZE];
    let mut count = 0;
    let mut gates = false;
    for fd in 0..nfds {
        // SAFETY: the sets are valid by the caller's contract.
        let (r, w, e) = unsafe {
            (
                holds(sets.read, fd),
                holds(sets.write, fd),
                holds(sets.except, fd),
            )
        };
        if !(r || w || e) {
            continue;
        }
        gates |= relay::is_pending(fd);
        let flag = |on: bool, event: libc::c_short| if on { event } else { 0 };
        fds[count] = pollfd {
            fd,
            events: flag(r, libc::POLLIN) | flag(w, libc::POLLOUT) | flag(e, libc::POLLPRI),
            revents: 0,
        };
        count += 1;
    }
    if !gates {
        return None;
    }
    let started = Instant::now();
    let n = relay::poll(config, &mut fds[..count], timeout, wait);
    if n < 0 {
        return Some((n, None));
    }
    if fds[..count].iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        crate::set_errno(libc::EBADF);
        return Some((-1, None));
    }
    let mut ready = 0;
    for set in [sets.read, sets.write, sets.except] {
        if !set.is_null() {
            // SAFETY: non-null and valid by the caller's contract.
            unsafe { libc::FD_ZERO(set) };
        }
    }
    for p in &fds[..count] {
        // What select reports for each poll event, as the kernel maps them.
        let readable = p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
        let writable = p.revents & (libc::POLLOUT | libc::POLLERR) != 0;
        let urgent = p.revents & libc::POLLPRI != 0;
        for (set, asked, happened) in [
            (sets.read, libc::POLLIN, readable),
            (sets.write, libc::POLLOUT, writable),
            (sets.except, libc::POLLPRI, urgent),
        ] {
            if p.events & asked != 0 && happened {
                // SAFETY: the program asked with this set, so it is valid;
                // `p.fd` is below FD_SETSIZE.
                unsafe { libc::FD_SET(p.fd, set) };
                ready += 1;
            }
        }
    }
    let left = timeout.map(|t| t.saturating_sub(started.elapsed()));
    Some((ready, left))
}
