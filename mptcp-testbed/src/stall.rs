//! A real-time canary that tells a timing test whether the machine itself
//! kept threads off the CPU while it measured.
//!
//! The delay line's thread runs in the SCHED_FIFO class, so on a machine
//! that gives it the CPU it forwards every frame within a few µs of its due
//! time. A virtual machine can still stop all of its threads for
//! milliseconds (the host runs something else, or the guest kernel is busy
//! tearing down hundreds of namespaces). A [`StallWatch`] is a second
//! thread of the same class that wakes every millisecond and records how
//! late it woke: when it woke late too, a missed delay says nothing about
//! the delay line.
//!
//! ```no_run
//! let watch = mptcp_testbed::StallWatch::start()?;
//! // ... measure ...
//! if watch.worst() > std::time::Duration::from_millis(1) {
//!     eprintln!("the machine stalled for {:?}: measure again", watch.worst());
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sys;

/// How often the canary wakes.
const PERIOD: Duration = Duration::from_millis(1);

/// A real-time thread that measures how late it wakes, until dropped.
#[derive(Debug)]
pub struct StallWatch {
    stop: Arc<AtomicBool>,
    worst_ns: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl StallWatch {
    /// Starts the canary. Fails when the thread cannot enter the real-time
    /// class (it needs CAP_SYS_NICE): an ordinary thread's wake-ups would
    /// measure the scheduler's fairness, not the machine's stalls.
    pub fn start() -> io::Result<StallWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let worst_ns = Arc::new(AtomicU64::new(0));
        let (started, setup) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("stall-watch".into())
            .spawn({
                let (stop, worst_ns) = (stop.clone(), worst_ns.clone());
                move || {
                    let realtime = sys::set_realtime(1);
                    let ok = realtime.is_ok();
                    let _ = started.send(realtime);
                    if ok {
                        watch(&stop, &worst_ns);
                    }
                }
            })?;
        let setup = setup
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the stall watch thread died")));
        let watch = StallWatch {
            stop,
            worst_ns,
            thread: Some(thread),
        };
        setup.map_err(|e| io::Error::new(e.kind(), format!("stall watch: SCHED_FIFO: {e}")))?;
        Ok(watch)
    }

    /// The latest the canary woke after its due time so far.
    pub fn worst(&self) -> Duration {
        Duration::from_nanos(self.worst_ns.load(Ordering::Relaxed))
    }
}

/// The canary's loop: sleeps to each millisecond's deadline and records the
/// worst lateness. A wake-up later than a period starts the deadlines
/// afresh, so one stall is counted once.
fn watch(stop: &AtomicBool, worst_ns: &AtomicU64) {
    let mut due = Instant::now() + PERIOD;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        let late = now.saturating_duration_since(due);
        let late_ns = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
        worst_ns.fetch_max(late_ns, Ordering::Relaxed);
        due = if late > PERIOD { now } else { due } + PERIOD;
    }
}

impl Drop for StallWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Busy threads above the canary's priority, one per CPU, keep it off
    /// every CPU for `hold`, as a stalled machine would.
    fn hold_every_cpu(hold: Duration) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let hogs: Vec<_> = (0..cpus)
            .map(|_| {
                std::thread::spawn(move || {
                    sys::set_realtime(2).expect("a hog needs SCHED_FIFO");
                    let start = Instant::now();
                    while start.elapsed() < hold {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        for hog in hogs {
            hog.join().unwrap();
        }
    }

    #[test]
    fn a_machine_that_runs_no_thread_for_30_ms_shows_as_a_stall() {
        let watch = StallWatch::start().expect("the stall watch needs SCHED_FIFO (root)");
        std::thread::sleep(Duration::from_millis(20));
        hold_every_cpu(Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(20));
        let worst = watch.worst();
        assert!(
            worst >= Duration::from_millis(20),
            "the canary woke at most {worst:?} late while every CPU was held for 30 ms"
        );
    }
}
