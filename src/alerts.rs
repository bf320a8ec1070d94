//! The relay's failures an operator must see, logged at warn level as the
//! counters grow (the engine counts them, and logs each only at debug):
//! at once, then at most once a minute, with the counts since the last
//! warning.

use std::time::{Duration, Instant};

use mptcp_core::relay::{ErrorKind, Stats, UdpDrop};

/// At most one warning this often.
const QUIET: Duration = Duration::from_secs(60);

/// The kinds that mean something is misconfigured or broken, with what
/// to check. The others (idle timeouts, resets, scanners' bad requests)
/// are part of normal operation; the metrics and the counters show them.
const WATCHED: [(ErrorKind, &str); 7] = [
    (ErrorKind::Auth, "wrong username or password"),
    (
        ErrorKind::Connect,
        "connecting to the destination or the remote relay failed",
    ),
    (
        ErrorKind::Upstream,
        "the remote relay refused them: a destination it could not reach, \
         credentials, its policy (its log says which)",
    ),
    (ErrorKind::Resolve, "destination names did not resolve"),
    (ErrorKind::Limit, "refused at a connection limit"),
    (ErrorKind::Accept, "accept() failed (out of descriptors?)"),
    (
        ErrorKind::OriginalDestination,
        "redirected connections without an original destination",
    ),
];

/// The datagrams of UDP associations whose drops an operator should see
/// (the others are a client's or a stranger's doing).
const WATCHED_UDP: [(UdpDrop, &str); 3] = [
    (
        UdpDrop::FlowLimit,
        "datagrams to more destinations than udp_max_flows",
    ),
    (
        UdpDrop::SendFailed,
        "datagrams a full socket buffer or an error refused",
    ),
    (UdpDrop::Resolve, "datagrams to names that did not resolve"),
];

/// What was last reported, and when.
#[derive(Debug, Default)]
pub struct Alerts {
    reported: Stats,
    last: Option<Instant>,
}

impl Alerts {
    /// Logs the watched failures (and session errors, worker panics) that
    /// grew since the last warning, unless one was logged less than a
    /// minute before `now`.
    pub fn check(&mut self, totals: &Stats, now: Instant) {
        if self.last.is_some_and(|t| now.duration_since(t) < QUIET) {
            return;
        }
        let mut grown: Vec<String> = WATCHED
            .iter()
            .filter_map(|&(kind, meaning)| {
                let n = totals.error(kind) - self.reported.error(kind);
                (n > 0).then(|| format!("err_{}={n} ({meaning})", kind.name()))
            })
            .chain(WATCHED_UDP.iter().filter_map(|&(why, meaning)| {
                let n = totals.udp.dropped(why) - self.reported.udp.dropped(why);
                (n > 0).then(|| format!("udp_drop_{}={n} ({meaning})", why.name()))
            }))
            .collect();
        for (name, now_count, before, meaning) in [
            (
                "session_errors",
                totals.session_errors,
                self.reported.session_errors,
                "the other relay broke the session protocol",
            ),
            (
                "worker_panics",
                totals.worker_panics,
                self.reported.worker_panics,
                "a bug: please report it with the log",
            ),
        ] {
            if now_count > before {
                grown.push(format!("{name}={} ({meaning})", now_count - before));
            }
        }
        if grown.is_empty() {
            return;
        }
        tracing::warn!("relay failures: {}", grown.join(", "));
        self.reported = totals.clone();
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_at_once_then_once_a_minute() {
        let mut alerts = Alerts::default();
        let t0 = Instant::now();
        let mut s = Stats::default();
        s.errors[ErrorKind::IdleTimeout as usize] = 5;
        alerts.check(&s, t0);
        assert!(alerts.last.is_none(), "idle timeouts are normal");
        s.errors[ErrorKind::Auth as usize] = 2;
        alerts.check(&s, t0);
        assert_eq!(alerts.last, Some(t0));
        s.errors[ErrorKind::Auth as usize] = 3;
        alerts.check(&s, t0 + Duration::from_secs(30));
        assert_eq!(alerts.last, Some(t0), "quiet for a minute");
        alerts.check(&s, t0 + QUIET);
        assert_eq!(alerts.last, Some(t0 + QUIET));
        assert_eq!(alerts.reported.error(ErrorKind::Auth), 3);
        // A client's malformed datagrams are its own business; a flow
        // limit reached is the operator's.
        s.udp.drops[UdpDrop::Malformed as usize] = 9;
        let later = t0 + QUIET * 2;
        alerts.check(&s, later);
        assert_eq!(alerts.last, Some(t0 + QUIET));
        s.udp.drops[UdpDrop::FlowLimit as usize] = 1;
        alerts.check(&s, later);
        assert_eq!(alerts.last, Some(later));
    }
}
