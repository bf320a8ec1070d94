//! The delay line: a middle host between the two ends of a link that holds
//! every frame for the link's one-way delay, both ways.
//!
//! This kernel has neither netem nor fq, so the delay is made in user space:
//! end A's veth is paired with `side-a` in a middle namespace, `side-b` there
//! with end B's veth, and one thread reads the frames arriving on each middle
//! device with an AF_PACKET socket, queues them and writes each to the other
//! device once it has been held for the delay (counted from the kernel's
//! receive timestamp). The thread sleeps in `poll` until a frame arrives or
//! a timerfd says that the oldest one is due, and stops when the
//! [`DelayLine`] is dropped; it dies with the process.
//!
//! The link's rate and queue (tc `tbf`) are on the middle devices' egress,
//! not on the ends: traffic there is forwarded, so the queue fills as a
//! router's would. On an end, TCP small queues keep a host's own
//! connections from queueing more than a millisecond or so in its qdisc,
//! and a deep buffer would never show.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Host;
use crate::sys::{self, EventFd, PacketSocket, TimerFd};

/// The middle host's device towards end A, and towards end B.
const MIDDLE_DEVS: [&str; 2] = ["side-a", "side-b"];

/// Receive and send buffer of each packet socket: 32 MiB holds a second of
/// 100 Mbit/s should the thread be kept off the CPU for a while, and more
/// than the deepest queue a link may have in front of it (charged at about
/// twice the frames' size). Without CAP_NET_ADMIN in the initial user
/// namespace the kernel caps it at net.core.rmem_max and wmem_max (208 KiB
/// by default), which limits the queue to about 100 frames.
const SOCKET_BUFFER: usize = 32 << 20;

/// The largest frame read whole: a 64 KiB GRO aggregate with its headers.
/// Larger ones (and any above the MTU, which the far device refuses) are
/// dropped and counted.
const MAX_FRAME: usize = 65_536 + 256;

/// At most this many frames are read from one socket before the due frames
/// are sent, so that a flood one way does not hold up the other.
const READ_BATCH: usize = 64;

/// The most bytes held in one direction (over 5 s of 100 Mbit/s); frames
/// beyond are dropped and counted.
const MAX_HELD_BYTES: usize = 64 << 20;

/// A frame sent later than its due time by more than this counts as late.
const LATE: Duration = Duration::from_millis(1);

/// What a delay line has done so far, from [`DelayLine::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelayStats {
    /// Frames forwarded, both ways.
    pub frames: u64,
    /// Bytes of those frames (Ethernet headers included).
    pub bytes: u64,
    /// Frames dropped: too large, over the held limit, or refused by the
    /// device: its queue (the link's buffer) full, or a link end down.
    pub dropped: u64,
    /// Frames sent more than 1 ms after their due time (the thread woke
    /// late: on a busy machine, even a real-time thread may wait a few ms).
    pub late: u64,
    /// The latest a frame was sent after its due time.
    pub max_late: Duration,
    /// CPU time the forwarding thread has used (user and system).
    pub cpu: Duration,
}

/// The counters of [`DelayStats`], written by the forwarding thread.
#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    late: AtomicU64,
    max_late_ns: AtomicU64,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("frames", &self.frames.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A delay line between two hosts: the middle host and its forwarding
/// thread. Made by [`crate::Link::with_spec`] for a link with a delay;
/// dropping it stops the thread, and the middle host goes with it.
#[derive(Debug)]
pub struct DelayLine {
    middle: Host,
    delay: Duration,
    stop: EventFd,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl DelayLine {
    /// Builds a middle host between `a` and `b` with veth pairs `a_dev` ↔
    /// `side-a` and `side-b` ↔ `b_dev` (the end devices are left down and
    /// without addresses), and starts holding frames for `delay` each way.
    pub(crate) fn new(
        a: &Host,
        a_dev: &str,
        b: &Host,
        b_dev: &str,
        delay: Duration,
    ) -> io::Result<DelayLine> {
        let middle = Host::new(&format!("{}-{}-delay", a.name(), b.name()))?;
        // The middle host has no address and must stay silent: no IPv6
        // link-local addresses, router solicitations or DAD probes.
        if middle
            .read_sysctl("net.ipv6.conf.default.disable_ipv6")
            .is_ok()
        {
            middle.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            middle.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        let [side_a, side_b] = MIDDLE_DEVS;
        a.add_veth(a_dev, &middle, side_a)?;
        middle.add_veth(side_b, b, b_dev)?;
        middle.ip_batch(&[
            format!("link set dev {side_a} up"),
            format!("link set dev {side_b} up"),
        ])?;
        a.run(|| sys::disable_tx_checksum(a_dev))?;
        b.run(|| sys::disable_tx_checksum(b_dev))?;
        let sockets = middle.run(|| -> io::Result<[PacketSocket; 2]> {
            Ok([
                PacketSocket::bind(side_a, SOCKET_BUFFER)?,
                PacketSocket::bind(side_b, SOCKET_BUFFER)?,
            ])
        })?;
        let stop = EventFd::new()?;
        let stop_seen = stop.as_fd().try_clone_to_owned()?;
        let counters = Arc::new(Counters::default());
        let thread = {
            let counters = Arc::clone(&counters);
            std::thread::Builder::new()
                .name(format!("delay-{}", middle.name()))
                .spawn(move || forward(&sockets, stop_seen, delay, &counters))?
        };
        Ok(DelayLine {
            middle,
            delay,
            stop,
            counters,
            thread: Some(thread),
        })
    }

    /// The one-way delay each frame is held for.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The middle host (the forwarding thread's sockets live there).
    pub fn middle(&self) -> &Host {
        &self.middle
    }

    /// The middle devices whose egress carries A to B, and B to A: where the
    /// link's rate and queue go.
    pub(crate) fn egress_devs(&self) -> [&'static str; 2] {
        let [side_a, side_b] = MIDDLE_DEVS;
        [side_b, side_a]
    }

    /// What the line has forwarded, dropped and cost so far.
    pub fn stats(&self) -> io::Result<DelayStats> {
        let thread = self
            .thread
            .as_ref()
            .expect("the thread is joined only on drop");
        if thread.is_finished() {
            return Err(io::Error::other(format!(
                "the delay line of {} stopped early",
                self.middle.name()
            )));
        }
        let cpu = sys::thread_cpu_time(thread.as_pthread_t())?;
        let c = &self.counters;
        Ok(DelayStats {
            frames: c.frames.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            late: c.late.load(Ordering::Relaxed),
            max_late: Duration::from_nanos(c.max_late_ns.load(Ordering::Relaxed)),
            cpu,
        })
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        // If the signal fails the thread is gone already (it polls the fd).
        let _ = self.stop.signal();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A frame held in the line.
struct Held {
    due: Instant,
    data: Vec<u8>,
}

/// One direction: frames read on one socket, waiting to go out the other.
#[derive(Default)]
struct Queue {
    frames: VecDeque<Held>,
    bytes: usize,
}

/// The forwarding loop: until `stop` is readable, frames read on
/// `sockets[i]` go out of `sockets[1 - i]` `delay` after they were read.
fn forward(
    sockets: &[PacketSocket; 2],
    stop: std::os::fd::OwnedFd,
    delay: Duration,
    counters: &Counters,
) {
    // A wire does not wait for a CPU: as root the thread preempts ordinary
    // ones (it never spins, so it takes only what the frames need);
    // without the privilege it runs as an ordinary thread.
    let _ = sys::set_realtime(1);
    let Ok(timer) = TimerFd::new() else {
        return;
    };
    // The due time the timer is set for, and whether it has expired.
    let mut armed = None;
    let mut expired = false;
    let mut queues = [Queue::default(), Queue::default()];
    // Buffers of sent frames, reused for the next ones.
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut scratch = vec![0; MAX_FRAME];
    loop {
        let now = Instant::now();
        for (from, queue) in queues.iter_mut().enumerate() {
            let out = &sockets[1 - from];
            while let Some(held) = queue.frames.front()
                && held.due <= now
            {
                let late = now - held.due;
                let held = queue.frames.pop_front().expect("a front frame");
                queue.bytes -= held.data.len();
                match out.send(&held.data) {
                    Ok(()) => {
                        counters.frames.fetch_add(1, Ordering::Relaxed);
                        counters
                            .bytes
                            .fetch_add(held.data.len() as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if late > LATE {
                    counters.late.fetch_add(1, Ordering::Relaxed);
                }
                let late_ns = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
                counters.max_late_ns.fetch_max(late_ns, Ordering::Relaxed);
                spare.push(held.data);
            }
        }
        let next_due = queues
            .iter()
            .filter_map(|q| q.frames.front())
            .map(|held| held.due)
            .min();
        // An expired timer stays readable until set again.
        if next_due != armed || expired {
            let after = next_due.map(|due| due.saturating_duration_since(Instant::now()));
            if timer.set(after).is_err() {
                return;
            }
            armed = next_due;
        }
        let fds = [
            sockets[0].as_fd(),
            sockets[1].as_fd(),
            timer.as_fd(),
            stop.as_fd(),
        ];
        let Ok([ready_a, ready_b, timer_ready, stopped]) = sys::poll_readable(fds) else {
            // Only bad arguments make poll fail; nothing to retry.
            return;
        };
        if stopped {
            return;
        }
        expired = timer_ready;
        // The kernel stamps each frame as it arrives (in CLOCK_REALTIME):
        // its due time counts from then, not from when this thread woke.
        let (mono_now, real_now) = (Instant::now(), sys::unix_time());
        for (from, ready) in [ready_a, ready_b].into_iter().enumerate() {
            if !ready {
                continue;
            }
            let queue = &mut queues[from];
            for _ in 0..READ_BATCH {
                let (len, stamp) = match sockets[from].recv(&mut scratch) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    // A pending error (ENETDOWN when a device goes down) is
                    // reported once; the socket works again afterwards.
                    Err(_) => break,
                };
                if len > scratch.len() || queue.bytes + len > MAX_HELD_BYTES {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let mut data = spare.pop().unwrap_or_default();
                data.clear();
                data.extend_from_slice(&scratch[..len]);
                queue.bytes += len;
                let age = real_now.saturating_sub(stamp).min(delay);
                queue.frames.push_back(Held {
                    due: mono_now - age + delay,
                    data,
                });
            }
        }
    }
}
