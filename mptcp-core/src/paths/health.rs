//! Link health, the pure part: what probe outcomes, carrier changes and
//! subflow checks make of a link's state, and whether its endpoint should
//! be in use. No I/O and no clock of its own (every call takes `now`), so
//! every threshold and backoff is unit-tested.
//!
//! A link is `Up` after `up_after` answered probes in a row and `Down`
//! after `down_after` lost ones; a link whose carrier comes back (or that
//! the daemon has just found) is `Probing` until it proves itself, so its
//! endpoint is never re-added before the link really works. Once its
//! endpoint is back, the daemon checks after `verify_after` that the
//! connections grew a subflow on it; when they did not, the endpoint is
//! taken out again and re-added after a backoff that doubles, a bounded
//! number of times. It stays out for the backoff rather than coming
//! straight back: the removal's RM_ADDR must reach the peer before the new
//! subflow's join does, or the peer closes the new subflow too (the initial
//! address is always id 0, whatever its endpoint's id). A peer that still
//! counts subflows that died unseen against its limit lets go of them
//! once that RM_ADDR arrives.

use std::{net::SocketAddr, time::Duration, time::Instant};

pub use crate::links::{LinkRole, LinkState};

/// How links are probed and judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Where probes go: a TCP connect to each (an answer, a refusal
    /// included, proves the path); a round succeeds when any answers.
    pub targets: Vec<SocketAddr>,
    /// Time between the starts of two probe rounds of a link.
    pub interval: Duration,
    /// How long a probe waits for its answer.
    pub timeout: Duration,
    /// Lost rounds in a row that take a link out of use.
    pub down_after: u32,
    /// Answered rounds in a row that put a link back in use.
    pub up_after: u32,
    /// How long after an endpoint is added its subflows must exist.
    pub verify_after: Duration,
    /// The wait before the first retry of an endpoint whose subflows did
    /// not appear; each further retry waits twice as long.
    pub backoff: Duration,
    /// Retries before giving up until the link's next change.
    pub max_retries: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            targets: Vec::new(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            down_after: 3,
            up_after: 3,
            verify_after: Duration::from_secs(2),
            backoff: Duration::from_secs(1),
            max_retries: 4,
        }
    }
}

impl HealthConfig {
    /// The longest time from a link's failure to its being taken out of
    /// use: up to an interval until the next round starts, then
    /// `down_after` lost rounds, which start one interval apart, or one
    /// timeout when that is longer.
    pub fn detection_time(&self) -> Duration {
        self.interval
            + self.interval.max(self.timeout) * self.down_after.saturating_sub(1)
            + self.timeout
    }
}

/// The outcome of one probe round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// A target answered after this round-trip time.
    Answered(Duration),
    /// No target answered in time.
    Lost,
}

/// Where the re-adding of an endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// Nothing to check.
    Settled,
    /// The endpoint is wanted; once added, it is checked (after `attempt`
    /// failed checks).
    Pending { attempt: u32 },
    /// The endpoint was added; its subflows are checked at `due`.
    Verifying { due: Instant, attempt: u32 },
    /// The check failed: the endpoint stays out until `until`.
    Waiting { until: Instant, attempt: u32 },
    /// Too many failed checks: the endpoint stays in, unchecked, until the
    /// link's next change.
    GaveUp,
}

/// How many of the last probe rounds the loss figure covers.
const LOSS_WINDOW: u32 = 20;

/// A change of a link's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: LinkState,
    /// The state now.
    pub to: LinkState,
}

/// The health of one link.
#[derive(Debug, Clone)]
pub struct LinkHealth {
    state: LinkState,
    /// Answered rounds in a row.
    answered_run: u32,
    /// Lost rounds in a row.
    lost_run: u32,
    /// Smoothed round-trip time of answered probes (RFC 6298's 1/8 gain).
    rtt: Option<Duration>,
    /// The last rounds, newest in bit 0; a set bit is a lost round.
    lost_bits: u32,
    rounds: u32,
    since: Instant,
    recovery: Recovery,
}

impl LinkHealth {
    /// A link just found: `Probing` with a carrier, else `NoCarrier`.
    pub fn new(carrier: bool, now: Instant) -> Self {
        LinkHealth {
            state: if carrier {
                LinkState::Probing
            } else {
                LinkState::NoCarrier
            },
            answered_run: 0,
            lost_run: 0,
            rtt: None,
            lost_bits: 0,
            rounds: 0,
            since: now,
            recovery: Recovery::Settled,
        }
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// Since when the link is in its state.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The smoothed round-trip time of its answered probes.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// The share of lost rounds among the last ones (0 to 1).
    pub fn loss(&self) -> f64 {
        let counted = self.rounds.min(LOSS_WINDOW);
        if counted == 0 {
            return 0.0;
        }
        let mask = (1u32 << counted) - 1;
        f64::from((self.lost_bits & mask).count_ones()) / f64::from(counted)
    }

    /// Whether the link carries traffic: up, or without probes to say
    /// otherwise (carrier only).
    pub fn usable(&self) -> bool {
        self.state == LinkState::Up
    }

    /// Whether its endpoint should exist at `now`.
    pub fn endpoint_wanted(&self, now: Instant) -> bool {
        self.usable() && !matches!(self.recovery, Recovery::Waiting { until, .. } if now < until)
    }

    fn set(&mut self, to: LinkState, now: Instant) -> Option<Transition> {
        if to == self.state {
            return None;
        }
        let from = self.state;
        self.state = to;
        self.answered_run = 0;
        self.lost_run = 0;
        self.since = now;
        self.recovery = if to == LinkState::Up {
            Recovery::Pending { attempt: 0 }
        } else {
            Recovery::Settled
        };
        Some(Transition { from, to })
    }

    /// The carrier (and address) as rtnetlink says: a link that loses it is
    /// `NoCarrier` at once; one that gets it back starts `Probing`.
    pub fn carrier(&mut self, carrier: bool, now: Instant) -> Option<Transition> {
        match (carrier, self.state) {
            (false, _) => self.set(LinkState::NoCarrier, now),
            (true, LinkState::NoCarrier) => self.set(LinkState::Probing, now),
            (true, _) => None,
        }
    }

    /// Takes a link with a carrier as up without probes (when the daemon
    /// does not probe, the carrier is all it knows).
    pub fn assume_up(&mut self, now: Instant) -> Option<Transition> {
        match self.state {
            LinkState::Probing | LinkState::Down => self.set(LinkState::Up, now),
            LinkState::Up | LinkState::NoCarrier => None,
        }
    }

    /// Counts one probe round.
    pub fn probed(
        &mut self,
        outcome: ProbeOutcome,
        config: &HealthConfig,
        now: Instant,
    ) -> Option<Transition> {
        if self.state == LinkState::NoCarrier {
            return None;
        }
        self.rounds = self.rounds.saturating_add(1);
        self.lost_bits = (self.lost_bits << 1) | u32::from(outcome == ProbeOutcome::Lost);
        if let ProbeOutcome::Answered(rtt) = outcome {
            self.rtt = Some(self.rtt.map_or(rtt, |srtt| (srtt * 7 + rtt) / 8));
        }
        match outcome {
            ProbeOutcome::Answered(_) => {
                self.answered_run += 1;
                self.lost_run = 0;
            }
            ProbeOutcome::Lost => {
                self.lost_run += 1;
                self.answered_run = 0;
            }
        }
        match self.state {
            LinkState::Up if self.lost_run >= config.down_after => self.set(LinkState::Down, now),
            LinkState::Probing if self.lost_run >= config.down_after => {
                self.set(LinkState::Down, now)
            }
            LinkState::Down | LinkState::Probing if self.answered_run >= config.up_after => {
                self.set(LinkState::Up, now)
            }
            _ => None,
        }
    }

    /// The daemon added the link's endpoint: its subflows are due at
    /// `now + verify_after`.
    pub fn endpoint_added(&mut self, config: &HealthConfig, now: Instant) {
        if let Recovery::Pending { attempt } = self.recovery {
            self.recovery = Recovery::Verifying {
                due: now + config.verify_after,
                attempt,
            };
        }
    }

    /// Whether the subflows of its endpoint are due for a check.
    pub fn verify_due(&self, now: Instant) -> bool {
        matches!(self.recovery, Recovery::Verifying { due, .. } if now >= due)
    }

    /// The outcome of the check: every connection has its subflow (done),
    /// or not (the endpoint goes out for a backoff, then comes back and is
    /// checked again, at most `max_retries` times). Returns the wait before
    /// the retry, if there is one.
    pub fn verified(&mut self, ok: bool, config: &HealthConfig, now: Instant) -> Option<Duration> {
        let Recovery::Verifying { attempt, .. } = self.recovery else {
            return None;
        };
        if ok {
            self.recovery = Recovery::Settled;
            return None;
        }
        if attempt >= config.max_retries {
            self.recovery = Recovery::GaveUp;
            return None;
        }
        let wait = config.backoff.saturating_mul(1 << attempt.min(16));
        self.recovery = Recovery::Waiting {
            until: now + wait,
            attempt: attempt + 1,
        };
        Some(wait)
    }

    /// Moves a finished backoff on (the endpoint is wanted again and will
    /// be checked once added). Returns whether anything changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        match self.recovery {
            Recovery::Waiting { until, attempt } if now >= until => {
                self.recovery = Recovery::Pending { attempt };
                true
            }
            _ => false,
        }
    }

    /// Whether the last check failed every retry.
    pub fn gave_up(&self) -> bool {
        self.recovery == Recovery::GaveUp
    }

    /// The next instant at which `tick` or `verify_due` changes its answer.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.recovery {
            Recovery::Verifying { due, .. } => Some(due),
            Recovery::Waiting { until, .. } => Some(until),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> HealthConfig {
        HealthConfig {
            down_after: 3,
            up_after: 2,
            max_retries: 2,
            ..HealthConfig::default()
        }
    }

    fn feed(h: &mut LinkHealth, outcomes: &[ProbeOutcome], t0: Instant) -> Vec<Transition> {
        let config = config();
        outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| h.probed(*o, &config, t0 + MS * i as u32))
            .collect()
    }

    use ProbeOutcome::{Answered, Lost};
    const OK: ProbeOutcome = Answered(Duration::from_millis(10));

    #[test]
    fn a_new_link_is_up_after_answers_in_a_row_and_down_after_losses_in_a_row() {
        let t0 = Instant::now();
        let mut h = LinkHealth::new(true, t0);
        assert_eq!(h.state(), LinkState::Probing);
        assert!(!h.endpoint_wanted(t0), "not before it proves itself");
        assert_eq!(
            feed(&mut h, &[OK, Lost, OK, OK], t0),
            [Transition {
                from: LinkState::Probing,
                to: LinkState::Up
            }]
        );
        assert!(h.endpoint_wanted(t0));
        // Two losses, an answer, two losses: never three in a row.
        assert_eq!(feed(&mut h, &[Lost, Lost, OK, Lost, Lost], t0), []);
        assert_eq!(h.state(), LinkState::Up);
        assert_eq!(feed(&mut h, &[Lost], t0).len(), 1);
        assert_eq!(h.state(), LinkState::Down);
        assert!(!h.endpoint_wanted(t0));
        assert_eq!(feed(&mut h, &[OK, Lost, OK], t0), []);
        assert_eq!(feed(&mut h, &[OK], t0).len(), 1);
        assert_eq!(h.state(), LinkState::Up);
        assert_eq!(h.loss(), 7.0 / 14.0);
        assert_eq!(h.rtt(), Some(Duration::from_millis(10)));
    }

    #[test]
    fn carrier_loss_is_immediate_and_its_return_needs_probes() {
        let t0 = Instant::now();
        let mut h = LinkHealth::new(true, t0);
        feed(&mut h, &[OK, OK], t0);
        assert!(h.usable());
        assert_eq!(
            h.carrier(false, t0).map(|t| t.to),
            Some(LinkState::NoCarrier)
        );
        assert_eq!(feed(&mut h, &[OK, OK, OK], t0), [], "no probes count");
        assert_eq!(h.carrier(true, t0).map(|t| t.to), Some(LinkState::Probing));
        assert_eq!(h.carrier(true, t0), None);
        assert!(!h.usable());
        feed(&mut h, &[OK, OK], t0);
        assert!(h.usable());
    }

    #[test]
    fn a_probing_link_that_never_answers_is_shown_down() {
        let t0 = Instant::now();
        let mut h = LinkHealth::new(true, t0);
        assert_eq!(feed(&mut h, &[Lost, Lost], t0), []);
        assert_eq!(feed(&mut h, &[Lost], t0).len(), 1);
        assert_eq!(h.state(), LinkState::Down);
        assert_eq!(h.loss(), 1.0);
    }

    #[test]
    fn a_failed_check_takes_the_endpoint_out_with_a_doubling_backoff_then_gives_up() {
        let config = config();
        let t0 = Instant::now();
        let mut h = LinkHealth::new(true, t0);
        feed(&mut h, &[OK, OK], t0);
        assert!(!h.verify_due(t0 + Duration::from_secs(60)), "not added yet");
        h.endpoint_added(&config, t0);
        assert!(!h.verify_due(t0));
        let t1 = t0 + config.verify_after;
        assert!(h.verify_due(t1));
        assert_eq!(h.next_deadline(), Some(t1));
        assert_eq!(h.verified(false, &config, t1), Some(config.backoff));
        assert!(!h.endpoint_wanted(t1), "out during the backoff");
        assert!(!h.tick(t1));
        let t2 = t1 + config.backoff;
        assert!(h.tick(t2));
        assert!(h.endpoint_wanted(t2));
        h.endpoint_added(&config, t2);
        let t3 = t2 + config.verify_after;
        assert_eq!(h.verified(false, &config, t3), Some(config.backoff * 2));
        let t4 = t3 + config.backoff * 2;
        assert!(h.tick(t4));
        h.endpoint_added(&config, t4);
        let t5 = t4 + config.verify_after;
        assert_eq!(h.verified(false, &config, t5), None, "max_retries reached");
        assert!(h.gave_up() && h.endpoint_wanted(t5));
        assert_eq!(h.next_deadline(), None);
        // The next change starts over.
        feed(&mut h, &[Lost, Lost, Lost, OK, OK], t5);
        h.endpoint_added(&config, t5);
        assert!(h.verify_due(t5 + config.verify_after));
        assert_eq!(h.verified(true, &config, t5 + config.verify_after), None);
        assert_eq!(h.next_deadline(), None);
        assert!(!h.gave_up());
    }

    #[test]
    fn detection_time_covers_the_last_timeout() {
        let config = HealthConfig {
            interval: 200 * MS,
            timeout: 300 * MS,
            down_after: 3,
            ..HealthConfig::default()
        };
        assert_eq!(config.detection_time(), 1100 * MS);
        assert_eq!(HealthConfig::default().detection_time(), 4000 * MS);
    }

    #[test]
    fn names_round_trip() {
        for role in [LinkRole::Active, LinkRole::Backup, LinkRole::Off] {
            assert_eq!(role.name().parse::<LinkRole>(), Ok(role));
        }
        for state in [
            LinkState::NoCarrier,
            LinkState::Probing,
            LinkState::Up,
            LinkState::Down,
        ] {
            assert_eq!(state.name().parse::<LinkState>(), Ok(state));
        }
        assert!("primary".parse::<LinkRole>().is_err());
    }

    proptest! {
        /// Whatever the outcomes, the state follows the thresholds: up
        /// exactly when the last `up_after` rounds were answered after a
        /// time down, down after `down_after` losses in a row; never a
        /// change without a run of outcomes that justifies it.
        #[test]
        fn state_changes_only_after_a_full_run(lost in proptest::collection::vec(any::<bool>(), 0..200)) {
            let config = config();
            let t0 = Instant::now();
            let mut h = LinkHealth::new(true, t0);
            let mut run_lost = 0u32;
            let mut run_ok = 0u32;
            for (i, &l) in lost.iter().enumerate() {
                if l { run_lost += 1; run_ok = 0 } else { run_ok += 1; run_lost = 0 }
                let before = h.state();
                let outcome = if l { Lost } else { OK };
                let change = h.probed(outcome, &config, t0 + MS * i as u32);
                match change {
                    Some(Transition { to: LinkState::Up, .. }) => prop_assert!(run_ok >= config.up_after),
                    Some(Transition { to: LinkState::Down, .. }) => prop_assert!(run_lost >= config.down_after),
                    Some(t) => prop_assert!(false, "unexpected {t:?}"),
                    None => {}
                }
                if change.is_some() {
                    run_ok = 0;
                    run_lost = 0;
                }
                if before == LinkState::Up && run_lost >= config.down_after {
                    prop_assert_eq!(h.state(), LinkState::Down);
                }
                if before != LinkState::Up && run_ok >= config.up_after {
                    prop_assert_eq!(h.state(), LinkState::Up);
                }
                prop_assert!((0.0..=1.0).contains(&h.loss()));
            }
        }
    }
}
