//! Online password guessing, slowed down: failed SOCKS5 logins are counted
//! per client address (per /64 for IPv6, which a client can rotate within),
//! and after a few in a row that address must wait before its next try: a
//! wait that doubles with each failure, up to a minute. A success clears
//! the count, so a user who mistyped once is not held up, and other
//! addresses are never affected.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures in a row that cost nothing (typos).
const FREE_FAILURES: u32 = 3;
/// The wait after the first failure beyond the free ones.
const FIRST_WAIT: Duration = Duration::from_millis(250);
/// The longest wait.
const LONGEST_WAIT: Duration = Duration::from_secs(60);
/// An address with no failure for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses remembered at most; when full, forgotten ones go first and
/// then new addresses wait as if they had failed before (a flood of
/// addresses must not let guesses through).
const MAX_ADDRESSES: usize = 1 << 16;

/// What [`AuthGuard::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The credentials were right.
    Accepted,
    /// Wrong; `failures` in a row from this address, and the address now
    /// waits `wait` before its next try.
    Rejected { failures: u32, wait: Duration },
    /// Not checked: the address is still waiting after earlier failures.
    TooSoon,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure: Instant,
    next_try: Instant,
}

/// Failed logins per client address, shared by the workers.
#[derive(Debug, Default)]
pub(crate) struct AuthGuard {
    records: Mutex<HashMap<IpAddr, Record>>,
}

impl AuthGuard {
    /// Checks a login of `client` with `correct` (which runs only when the
    /// address may try now), and counts the outcome.
    pub(crate) fn check(
        &self,
        client: IpAddr,
        now: Instant,
        correct: impl FnOnce() -> bool,
    ) -> Verdict {
        let key = address_key(client);
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.get(&key).is_some_and(|r| now < r.next_try) {
            return Verdict::TooSoon;
        }
        if correct() {
            records.remove(&key);
            return Verdict::Accepted;
        }
        if records.len() >= MAX_ADDRESSES && !records.contains_key(&key) {
            records.retain(|_, r| now.duration_since(r.last_failure) < FORGET_AFTER);
        }
        let full = records.len() >= MAX_ADDRESSES;
        let record = records.entry(key).or_insert(Record {
            failures: if full { FREE_FAILURES } else { 0 },
            last_failure: now,
            next_try: now,
        });
        if now.duration_since(record.last_failure) >= FORGET_AFTER {
            record.failures = 0;
        }
        record.failures += 1;
        record.last_failure = now;
        let wait = wait_after(record.failures);
        record.next_try = now + wait;
        Verdict::Rejected {
            failures: record.failures,
            wait,
        }
    }
}

/// The wait after `failures` in a row.
fn wait_after(failures: u32) -> Duration {
    match failures.checked_sub(FREE_FAILURES + 1) {
        None => Duration::ZERO,
        Some(doublings) => FIRST_WAIT
            .saturating_mul(1 << doublings.min(16))
            .min(LONGEST_WAIT),
    }
}

/// The key an address counts under: itself, or its /64 for IPv6.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[4..].fill(0);
            IpAddr::V6(s.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A client that guesses as fast as it is answered for ten minutes.
    fn guesses_checked(guard: &AuthGuard, client: IpAddr, start: Instant) -> u32 {
        let mut checked = 0;
        let mut now = start;
        while now < start + Duration::from_secs(600) {
            if guard.check(client, now, || false) != Verdict::TooSoon {
                checked += 1;
            }
            now += Duration::from_millis(1);
        }
        checked
    }

    #[test]
    fn guessing_is_held_to_well_under_ten_a_second() {
        let guard = AuthGuard::default();
        let checked = guesses_checked(&guard, ip("192.0.2.7"), Instant::now());
        // 3 free, then waits of 0.25 s doubling to a minute: about 20
        // guesses in ten minutes instead of 600,000.
        assert!((10..=30).contains(&checked), "{checked} guesses checked");
    }

    #[test]
    fn a_success_clears_the_count_and_other_addresses_are_not_held() {
        let guard = AuthGuard::default();
        let now = Instant::now();
        let (mallory, alice) = (ip("192.0.2.7"), ip("192.0.2.8"));
        for _ in 0..FREE_FAILURES {
            assert!(
                matches!(guard.check(mallory, now, || false), Verdict::Rejected { wait, .. } if wait.is_zero())
            );
        }
        assert!(matches!(
            guard.check(mallory, now, || false),
            Verdict::Rejected { failures: 4, wait } if wait == FIRST_WAIT
        ));
        assert_eq!(
            guard.check(mallory, now, || true),
            Verdict::TooSoon,
            "even the right password waits"
        );
        assert_eq!(guard.check(alice, now, || true), Verdict::Accepted);
        let later = now + FIRST_WAIT;
        assert_eq!(guard.check(mallory, later, || true), Verdict::Accepted);
        assert!(matches!(
            guard.check(mallory, later, || false),
            Verdict::Rejected { failures: 1, .. }
        ));
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let guard = AuthGuard::default();
        let now = Instant::now();
        for i in 0..=FREE_FAILURES {
            let client = ip(&format!("2001:db8:1:2::{}", i + 1));
            assert!(matches!(
                guard.check(client, now, || false),
                Verdict::Rejected { .. }
            ));
        }
        assert_eq!(
            guard.check(ip("2001:db8:1:2:ffff::9"), now, || true),
            Verdict::TooSoon
        );
        assert_eq!(
            guard.check(ip("2001:db8:1:3::1"), now, || true),
            Verdict::Accepted
        );
    }
}
