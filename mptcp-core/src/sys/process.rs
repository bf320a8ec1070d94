//! The calling process: its effective ids, the monotonic clock, and
//! signals taken synchronously (blocked, then waited for) or as a stop flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The effective user and group ids.
pub fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    effective_ids().0 == 0
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd's `MONOTONIC_USEC`
/// means.
pub fn monotonic_micros() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clock id
    // is valid, so it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// A set of signals to take synchronously: blocked in every thread (block
/// it before spawning any), then waited for by one.
#[derive(Clone, Copy)]
pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    /// The set of `signals`.
    pub fn new(signals: &[libc::c_int]) -> SignalSet {
        // SAFETY: sigemptyset/sigaddset initialise and fill the set we own;
        // an invalid signal number only makes sigaddset fail (ignored: the
        // callers pass libc's constants).
        unsafe {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            for &sig in signals {
                libc::sigaddset(&mut set, sig);
            }
            SignalSet(set)
        }
    }

    /// Blocks the set in the calling thread; threads spawned afterwards
    /// inherit the mask.
    pub fn block(&self) -> std::io::Result<()> {
        // SAFETY: the set is initialised; the old mask is not wanted.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// Waits for one of the (blocked) signals for at most `timeout`
    /// (forever with `None`); `None` when the time passed.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<libc::c_int> {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        loop {
            let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
            // SAFETY: the set is initialised, `ts_ptr` is null or points to
            // a live timespec, and no siginfo is asked for.
            let sig = unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), ts_ptr) };
            if sig >= 0 {
                return Some(sig);
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                _ => return None, // EAGAIN: the timeout passed
            }
        }
    }
}

/// Set by the handler [`stop_on`] installs.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Makes `signals` (e.g. SIGINT, SIGTERM) set the returned flag instead of
/// killing the process.
pub fn stop_on(signals: &[libc::c_int]) -> std::io::Result<&'static AtomicBool> {
    for &sig in signals {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; `sa` is fully initialised (zeroed, then the
        // handler and an empty mask).
        let rc = unsafe {
            let mut sa = std::mem::zeroed::<libc::sigaction>();
            sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        super::cvt(rc)?;
    }
    Ok(&STOP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_taken_by_wait() {
        let set = SignalSet::new(&[libc::SIGUSR2]);
        // Blocked in this test thread only; the signal goes to it.
        set.block().unwrap();
        assert_eq!(set.wait(Some(Duration::from_millis(10))), None);
        // SAFETY: raising a blocked signal at the own thread only makes it
        // pending.
        let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2) };
        assert_eq!(rc, 0);
        assert_eq!(set.wait(Some(Duration::from_secs(5))), Some(libc::SIGUSR2));
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_micros();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_micros() >= a + 2000);
    }
}
