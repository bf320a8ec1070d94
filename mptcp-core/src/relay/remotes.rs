//! The local role's remote relays: which one a new connection goes to,
//! and what each has shown of its health.
//!
//! Every remote has a [`Health`] shared by all workers. Anything that
//! shows the remote working (a session set up, a PONG, a SOCKS5 handshake
//! done) or failing (a refused or timed-out connect, a session that fails
//! or stops answering PINGs) reports it there. A failure takes the remote
//! out at once; it is tried again after a wait that doubles with each
//! failure in a row (one connection at a time, which moves on to another
//! remote if the try fails), and once it answers it is on probation: it
//! takes new connections again (under `failover`, back from a backup)
//! only after `hold` without a failure, so a flapping server does not flap
//! the LAN.
//!
//! ```
//! use std::time::Duration;
//! use mptcp_core::relay::{NoRemote, RemotePolicy};
//! let policy: RemotePolicy = "spread".parse().unwrap();
//! assert_eq!(policy, RemotePolicy::Spread);
//! assert_eq!("direct".parse::<NoRemote>().unwrap(), NoRemote::Direct);
//! # let _ = Duration::ZERO;
//! ```
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::config::{NoRemote, RemotePolicy};
use super::seal::DialKeys;
use crate::sys::process::monotonic_micros;

/// The first wait before a failed remote is tried again; it doubles with
/// each failure in a row, up to [`RETRY_AT_MOST`].
const RETRY_AFTER: Duration = Duration::from_secs(1);
const RETRY_AT_MOST: Duration = Duration::from_secs(8);

/// What a remote has shown lately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteState {
    /// Working (or not tried yet).
    Up,
    /// Working, but a PING went unanswered for a while: new connections
    /// go to the others while they can.
    Suspect,
    /// Answering again after a failure, for less than the hold time.
    Probation,
    /// Failed; tried again after a wait.
    Down,
}

impl RemoteState {
    /// The state's name, as logs and metrics show it.
    pub fn name(self) -> &'static str {
        match self {
            RemoteState::Up => "up",
            RemoteState::Suspect => "suspect",
            RemoteState::Probation => "probation",
            RemoteState::Down => "down",
        }
    }

    fn from_u8(v: u8) -> RemoteState {
        match v {
            1 => RemoteState::Probation,
            2 => RemoteState::Down,
            _ => RemoteState::Up,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            RemoteState::Up | RemoteState::Suspect => 0,
            RemoteState::Probation => 1,
            RemoteState::Down => 2,
        }
    }
}

/// One remote's health, shared by the workers (monotonic microseconds).
#[derive(Debug, Default)]
pub struct Health {
    state: AtomicU8,
    /// Since when it is in its state.
    since: AtomicU64,
    /// Down: not before this; probation: up at this.
    next: AtomicU64,
    /// Failures in a row.
    failures: AtomicU32,
    /// The last PING round trip, microseconds (0: none yet).
    rtt_us: AtomicU64,
    /// A PING is unanswered for long (cleared by any success).
    suspect: std::sync::atomic::AtomicBool,
}

impl Health {
    /// The state now (a probation that lasted the hold time is over).
    pub fn state(&self, now_us: u64) -> RemoteState {
        let state = match RemoteState::from_u8(self.state.load(Relaxed)) {
            RemoteState::Probation if now_us >= self.next.load(Relaxed) => RemoteState::Up,
            s => s,
        };
        match state {
            RemoteState::Up if self.suspect.load(Relaxed) => RemoteState::Suspect,
            s => s,
        }
    }

    /// The last PING round trip.
    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    fn set(&self, state: RemoteState, now_us: u64, next: u64) {
        self.state.store(state.to_u8(), Relaxed);
        self.since.store(now_us, Relaxed);
        self.next.store(next, Relaxed);
    }

    /// It worked. Returns the new state when that changed.
    fn succeeded(&self, now_us: u64, hold: Duration) -> Option<RemoteState> {
        self.failures.store(0, Relaxed);
        self.suspect.store(false, Relaxed);
        match self.state(now_us) {
            RemoteState::Down => {
                self.set(RemoteState::Probation, now_us, now_us + micros(hold));
                Some(RemoteState::Probation)
            }
            RemoteState::Probation | RemoteState::Suspect => None,
            RemoteState::Up => {
                if RemoteState::from_u8(self.state.load(Relaxed)) == RemoteState::Probation {
                    self.set(RemoteState::Up, now_us, 0);
                    return Some(RemoteState::Up);
                }
                None
            }
        }
    }

    /// It failed. Returns the new state when that changed.
    fn failed(&self, now_us: u64) -> Option<RemoteState> {
        let failures = self.failures.fetch_add(1, Relaxed).min(8);
        let wait = RETRY_AFTER.saturating_mul(1 << failures).min(RETRY_AT_MOST);
        let was = self.state(now_us);
        self.set(RemoteState::Down, now_us, now_us + micros(wait));
        (was != RemoteState::Down).then_some(RemoteState::Down)
    }

    /// Down and its wait is over: one connection may try it.
    fn may_try(&self, now_us: u64) -> bool {
        self.state(now_us) == RemoteState::Down && now_us >= self.next.load(Relaxed)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One remote relay (or SOCKS5 server) of the local role.
#[derive(Debug)]
pub struct Remote {
    /// Where it listens.
    pub addr: SocketAddr,
    /// SOCKS5 username and password.
    pub credentials: Option<(String, String)>,
    /// Sessions to it are encrypted, with these keys.
    pub keys: Option<Arc<DialKeys>>,
    /// Its share of new connections under `spread`.
    pub weight: u32,
    /// What it has shown lately.
    pub health: Health,
    /// Sessions to it open now (all workers).
    pub sessions: AtomicU64,
    /// Connections through it now (streams and connections of their own).
    pub connections: AtomicU64,
}

/// A connection's hold on remote `index`: counted in its `connections`
/// while the claim lives.
#[derive(Debug)]
pub(crate) struct RemoteClaim {
    remotes: Arc<Remotes>,
    index: usize,
}

impl RemoteClaim {
    /// Claims remote `index` of `remotes` for a connection.
    pub(crate) fn new(remotes: &Arc<Remotes>, index: usize) -> RemoteClaim {
        if let Some(r) = remotes.list.get(index) {
            r.connections.fetch_add(1, Relaxed);
        }
        RemoteClaim {
            remotes: Arc::clone(remotes),
            index,
        }
    }

    /// Which remote.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// The remotes it is one of.
    pub(crate) fn remotes(&self) -> &Remotes {
        &self.remotes
    }
}

impl Drop for RemoteClaim {
    fn drop(&mut self) {
        if let Some(r) = self.remotes.list.get(self.index) {
            r.connections.fetch_sub(1, Relaxed);
        }
    }
}

/// The remotes of a local role, in priority order, and how to choose.
#[derive(Debug)]
pub struct Remotes {
    /// In priority order (`failover` takes the first that works).
    pub list: Vec<Remote>,
    /// How new connections are spread.
    pub policy: RemotePolicy,
    /// Probation before a remote that failed takes connections again.
    pub hold: Duration,
    /// What connections do when no remote works.
    pub fallback: NoRemote,
    /// New connections so far (`spread` takes turns by weight).
    turns: AtomicU64,
}

impl Remotes {
    /// Remotes in priority order.
    pub fn new(
        list: Vec<Remote>,
        policy: RemotePolicy,
        hold: Duration,
        fallback: NoRemote,
    ) -> Remotes {
        Remotes {
            list,
            policy,
            hold,
            fallback,
            turns: AtomicU64::new(0),
        }
    }

    /// The remote a new connection goes to, avoiding those in `tried`
    /// (bit i: remote i failed for this connection); `None`: no remote
    /// works now (see [`Remotes::fallback`]).
    ///
    /// Working remotes first (`failover`: the first of them; `spread`: in
    /// turns by weight); then a suspect one; then one on probation; then a failed one whose
    /// wait is over, for a try; with `fallback = "refuse"`, then the
    /// failed one whose wait ends first.
    pub fn pick(&self, tried: u64) -> Option<usize> {
        let now = monotonic_micros();
        let untried = |i: &usize| *i >= 64 || tried & (1 << i) == 0;
        let with = |state: RemoteState| {
            (0..self.list.len())
                .filter(untried)
                .filter(move |&i| self.list[i].health.state(now) == state)
        };
        let up = || with(RemoteState::Up);
        let working = match self.policy {
            RemotePolicy::Failover => up().next(),
            RemotePolicy::Spread => self.by_weight(up),
        };
        if working.is_some() {
            return working;
        }
        let probation = with(RemoteState::Suspect)
            .next()
            .or_else(|| with(RemoteState::Probation).next());
        let retry = || {
            (0..self.list.len())
                .filter(untried)
                .find(|&i| self.list[i].health.may_try(now))
        };
        // Refusing without a try is worse than trying one early: the one
        // whose wait ends first.
        let early = || {
            (self.fallback == NoRemote::Refuse)
                .then(|| {
                    (0..self.list.len())
                        .filter(untried)
                        .min_by_key(|&i| self.list[i].health.next.load(Relaxed))
                })
                .flatten()
        };
        probation.or_else(retry).or_else(early)
    }

    /// The next of the remotes `up` gives, in turns by weight; `None`
    /// when it gives none.
    fn by_weight<I: Iterator<Item = usize>>(&self, up: impl Fn() -> I) -> Option<usize> {
        let weight = |i: usize| u64::from(self.list[i].weight.max(1));
        let total: u64 = up().map(weight).sum();
        if total == 0 {
            return None;
        }
        let mut turn = self.turns.fetch_add(1, Relaxed) % total;
        for i in up() {
            if turn < weight(i) {
                return Some(i);
            }
            turn -= weight(i);
        }
        None
    }

    /// Remote `i` worked (`rtt`: a PING's round trip).
    pub fn succeeded(&self, i: usize, rtt: Option<Duration>) {
        let Some(r) = self.list.get(i) else { return };
        if let Some(rtt) = rtt {
            r.health.rtt_us.store(micros(rtt).max(1), Relaxed);
        }
        match r.health.succeeded(monotonic_micros(), self.hold) {
            Some(RemoteState::Probation) => tracing::warn!(
                remote = %r.addr,
                "relay: the remote relay answers again; it takes new connections after {} s \
                 without a failure",
                self.hold.as_secs()
            ),
            Some(RemoteState::Up) => {
                tracing::warn!(remote = %r.addr, "relay: the remote relay is back in use");
            }
            _ => {}
        }
    }

    /// A PING to remote `i` is unanswered for long: new connections
    /// prefer the others until it answers.
    pub fn suspect(&self, i: usize) {
        if let Some(r) = self.list.get(i)
            && !r.health.suspect.swap(true, Relaxed)
        {
            tracing::info!(remote = %r.addr, "relay: the remote relay is slow to answer PINGs; new connections go to the others meanwhile");
        }
    }

    /// Remote `i` failed (`why`, for the log).
    pub fn failed(&self, i: usize, why: &str) {
        let Some(r) = self.list.get(i) else { return };
        if r.health.failed(monotonic_micros()).is_some() {
            let others = (0..self.list.len()).any(|j| {
                j != i && self.list[j].health.state(monotonic_micros()) != RemoteState::Down
            });
            let then = match (others, self.fallback) {
                (true, _) => "new connections go to another remote",
                (false, NoRemote::Direct) => {
                    "no other remote works: new connections go direct, without aggregation"
                }
                (false, NoRemote::Refuse) => "no other remote works: new connections are refused",
            };
            tracing::warn!(remote = %r.addr, why, "relay: the remote relay failed; {then}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remotes(
        weights: &[u32],
        policy: RemotePolicy,
        hold: Duration,
        fallback: NoRemote,
    ) -> Remotes {
        let list = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Remote {
                addr: SocketAddr::from(([198, 18, 0, 2], 1080 + i as u16)),
                credentials: None,
                keys: None,
                weight,
                health: Health::default(),
                sessions: AtomicU64::new(0),
                connections: AtomicU64::new(0),
            })
            .collect();
        Remotes::new(list, policy, hold, fallback)
    }

    #[test]
    fn failover_takes_the_first_that_works_and_a_failure_moves_on() {
        let r = remotes(
            &[1, 1, 1],
            RemotePolicy::Failover,
            Duration::from_secs(60),
            NoRemote::Direct,
        );
        assert_eq!(r.pick(0), Some(0));
        assert_eq!(
            r.pick(0b001),
            Some(1),
            "the remote that failed this connection is skipped"
        );
        r.failed(0, "test");
        assert_eq!(r.pick(0), Some(1));
        r.failed(1, "test");
        r.failed(2, "test");
        assert_eq!(r.pick(0), None, "all down, none due for a try: direct");
        // Answering again: on probation, used only while none is up.
        r.succeeded(2, None);
        assert_eq!(r.pick(0), Some(2));
        assert_eq!(
            r.list[2].health.state(monotonic_micros()),
            RemoteState::Probation
        );
    }

    #[test]
    fn probation_lasts_the_hold_time_without_a_failure() {
        let h = Health::default();
        let hold = Duration::from_secs(10);
        let t0 = 1_000_000;
        assert_eq!(h.failed(t0), Some(RemoteState::Down));
        assert!(!h.may_try(t0 + 500_000), "waits a second first");
        assert!(h.may_try(t0 + 1_000_000));
        assert_eq!(
            h.succeeded(t0 + 1_000_000, hold),
            Some(RemoteState::Probation)
        );
        assert_eq!(h.state(t0 + 10_999_999), RemoteState::Probation);
        assert_eq!(h.state(t0 + 11_000_000), RemoteState::Up);
        // A failure during probation starts over; failures in a row wait
        // longer each (a success in between resets that).
        let t1 = t0 + 2_000_000;
        assert_eq!(h.failed(t1), Some(RemoteState::Down));
        assert!(h.may_try(t1 + 1_000_000));
        assert!(h.failed(t1 + 1_000_000).is_none(), "already down");
        assert!(!h.may_try(t1 + 2_999_999));
        assert!(h.may_try(t1 + 3_000_000));
    }

    #[test]
    fn spread_takes_turns_by_weight_over_the_working_remotes() {
        let r = remotes(
            &[3, 1, 2],
            RemotePolicy::Spread,
            Duration::from_secs(60),
            NoRemote::Direct,
        );
        let mut counts = [0; 3];
        for _ in 0..600 {
            counts[r.pick(0).unwrap()] += 1;
        }
        assert_eq!(counts, [300, 100, 200]);
        r.failed(0, "test");
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[r.pick(0).unwrap()] += 1;
        }
        assert_eq!(counts, [0, 100, 200]);
    }

    #[test]
    fn a_suspect_remote_is_left_while_another_works_and_kept_when_alone() {
        let r = remotes(
            &[1, 1],
            RemotePolicy::Failover,
            Duration::from_secs(60),
            NoRemote::Direct,
        );
        r.suspect(0);
        assert_eq!(
            r.list[0].health.state(monotonic_micros()),
            RemoteState::Suspect
        );
        assert_eq!(r.pick(0), Some(1));
        r.failed(1, "test");
        assert_eq!(r.pick(0), Some(0), "a suspect remote rather than none");
        r.succeeded(0, Some(Duration::from_millis(3)));
        assert_eq!(r.list[0].health.state(monotonic_micros()), RemoteState::Up);
        assert_eq!(r.list[0].health.rtt(), Some(Duration::from_millis(3)));
    }

    #[test]
    fn refuse_tries_the_remote_due_first_rather_than_none() {
        let r = remotes(
            &[1, 1],
            RemotePolicy::Failover,
            Duration::from_secs(60),
            NoRemote::Refuse,
        );
        r.failed(0, "test");
        r.failed(1, "test");
        r.failed(1, "test");
        assert_eq!(r.pick(0), Some(0), "the one whose wait ends first");
        assert_eq!(r.pick(0b01), Some(1));
        assert_eq!(r.pick(0b11), None);
    }
}
