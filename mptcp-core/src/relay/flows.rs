//! UDP flows as a table, sans I/O: which peers a UDP relay currently
//! talks to, each alive while datagrams pass within the idle timeout, at
//! most so many at once.
//!
//! The remote role keys an association's flows by destination; the table
//! decides whether a datagram may open a flow (room, or an idle one to
//! forget) and whether a datagram that arrives belongs to one (otherwise
//! it is dropped: only hosts a client wrote to may answer it).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Live flows by key, with when each last carried a datagram.
#[derive(Debug)]
pub(crate) struct FlowTable<K> {
    flows: HashMap<K, Instant>,
    max: usize,
    idle: Duration,
    /// When a full table may next be searched for idle flows (so that a
    /// flood of new flows at the limit costs no scan per datagram).
    next_scan: Instant,
}

/// How often at most a full table looks for idle flows.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);

impl<K: Hash + Eq + Copy> FlowTable<K> {
    /// An empty table of at most `max` flows, each forgotten after `idle`.
    pub(crate) fn new(max: usize, idle: Duration, now: Instant) -> FlowTable<K> {
        FlowTable {
            flows: HashMap::new(),
            max,
            idle,
            next_scan: now,
        }
    }

    /// A datagram out on flow `key`: `true` if the flow exists or was
    /// opened (forgetting idle flows when the table is full), `false` when
    /// the table is full of live flows.
    pub(crate) fn outbound(&mut self, key: K, now: Instant) -> bool {
        self.outbound_forgetting(key, now, &mut Vec::new())
    }

    /// [`FlowTable::outbound`], adding the idle flows it forgot to
    /// `forgotten` (whose sockets the caller closes).
    pub(crate) fn outbound_forgetting(
        &mut self,
        key: K,
        now: Instant,
        forgotten: &mut Vec<K>,
    ) -> bool {
        if let Some(last) = self.flows.get_mut(&key) {
            *last = now;
            return true;
        }
        if self.flows.len() >= self.max && now >= self.next_scan {
            forgotten.extend(self.forget_idle(now));
            self.next_scan = now + SCAN_INTERVAL.min(self.idle);
        }
        if self.flows.len() >= self.max {
            return false;
        }
        self.flows.insert(key, now);
        true
    }

    /// Forgets the flows idle at `now`, and returns them.
    pub(crate) fn forget_idle(&mut self, now: Instant) -> Vec<K> {
        let idle = self.idle;
        let mut gone = Vec::new();
        self.flows.retain(|key, last| {
            let live = now.duration_since(*last) <= idle;
            if !live {
                gone.push(*key);
            }
            live
        });
        gone
    }

    /// Forgets flow `key`.
    pub(crate) fn forget(&mut self, key: K) {
        self.flows.remove(&key);
    }

    /// Whether no flow is live.
    pub(crate) fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// A datagram in on `key`: `true` (and the flow refreshed) if it
    /// belongs to a live flow.
    pub(crate) fn inbound(&mut self, key: K, now: Instant) -> bool {
        match self.flows.get_mut(&key) {
            Some(last) if now.duration_since(*last) <= self.idle => {
                *last = now;
                true
            }
            Some(_) => {
                self.flows.remove(&key);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    #[test]
    fn a_full_table_refuses_new_flows_until_one_is_idle() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(2, IDLE, t0);
        assert!(t.outbound(1, t0) && t.outbound(2, t0));
        assert!(t.outbound(1, t0), "an existing flow always passes");
        assert!(!t.outbound(3, t0), "full");
        let later = t0 + Duration::from_secs(30);
        assert!(t.outbound(1, later));
        // Flow 2 idles out; flow 1 was refreshed and stays.
        let past = t0 + IDLE + Duration::from_secs(1);
        assert!(t.outbound(3, past), "idle flow 2 forgotten");
        assert!(!t.outbound(4, past), "1 and 3 are live");
        assert!(t.inbound(1, past) && t.inbound(3, past));
        assert!(!t.inbound(2, past));
    }

    #[test]
    fn only_live_flows_take_datagrams_in() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(8, IDLE, t0);
        assert!(!t.inbound(7, t0), "nobody wrote to 7");
        assert!(t.outbound(7, t0));
        assert!(t.inbound(7, t0 + IDLE), "answers refresh the flow");
        assert!(t.inbound(7, t0 + IDLE * 2));
        assert!(
            !t.inbound(7, t0 + IDLE * 3 + Duration::from_secs(1)),
            "idle"
        );
        assert!(t.flows.is_empty(), "an idle flow is forgotten");
    }

    proptest::proptest! {
        /// Against a model (every key's last datagram out or in): never
        /// more flows than the limit; a datagram in passes exactly when
        /// its flow is live; a datagram out to a live flow always passes.
        #[test]
        fn the_table_keeps_its_limit_and_lets_in_only_live_flows(
            max in 1usize..6,
            steps in proptest::collection::vec((proptest::bool::ANY, 0u8..10, 0u64..40), 1..200),
        ) {
            let idle = Duration::from_millis(100);
            let t0 = Instant::now();
            let mut now = t0;
            let mut t = FlowTable::new(max, idle, t0);
            let mut last: std::collections::HashMap<u8, Instant> = Default::default();
            for (out, key, advance_ms) in steps {
                now += Duration::from_millis(advance_ms);
                let live = last.get(&key).is_some_and(|l| now.duration_since(*l) <= idle);
                if out {
                    let passed = t.outbound(key, now);
                    if live {
                        proptest::prop_assert!(passed);
                    }
                    if passed {
                        last.insert(key, now);
                    }
                } else {
                    let passed = t.inbound(key, now);
                    proptest::prop_assert_eq!(passed, live);
                    if passed {
                        last.insert(key, now);
                    } else if !live {
                        last.remove(&key);
                    }
                }
                proptest::prop_assert!(t.flows.len() <= max);
            }
        }
    }

    #[test]
    fn a_flood_at_the_limit_scans_at_most_once_a_second() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(1, Duration::from_millis(10), t0);
        assert!(t.outbound(0, t0));
        let soon = t0 + Duration::from_millis(20);
        assert!(t.outbound(1, soon), "0 is idle: forgotten by the scan");
        let next = soon + Duration::from_millis(20);
        assert!(
            t.outbound(2, next),
            "the scan interval is at most the idle timeout"
        );
        assert!(!t.outbound(3, next), "2 is live");
    }
}
