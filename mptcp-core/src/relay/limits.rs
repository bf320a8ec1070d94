//! Admission budgets, shared by the workers: how many connections may be
//! open, how many may still be in their handshake, and how many of each one
//! client address may hold.
//!
//! A connection that has not authenticated yet takes a *handshake* slot,
//! not a connection slot, so hosts that hold idle handshakes open can never
//! refuse the LAN's real connections; a per-client cap on handshakes keeps
//! a few such hosts from taking them all. A stream of a multiplexed session
//! takes a *stream* slot: it counts towards the global limit but not
//! towards the per-client one of the relay that carries it (every stream of
//! a local relay comes from its one address); its session caps them
//! instead.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::config::EngineConfig;

/// What a connection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Accepted, request not yet read and authenticated.
    Handshake,
    /// A connection of its own from a client.
    Connection,
    /// A stream of a session (remote role).
    Stream,
}

/// Per-client counts.
#[derive(Debug, Default, Clone, Copy)]
struct PerClient {
    connections: usize,
    handshakes: usize,
}

/// The budgets and what is taken of them.
#[derive(Debug)]
pub(crate) struct Limits {
    max_connections: usize,
    max_per_client: usize,
    max_handshakes: usize,
    max_handshakes_per_client: usize,
    open: AtomicUsize,
    handshakes: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, PerClient>>,
}

impl Limits {
    pub(crate) fn new(engine: &EngineConfig) -> Limits {
        Limits {
            max_connections: engine.max_connections,
            max_per_client: engine.max_connections_per_client,
            max_handshakes: engine.max_handshakes,
            max_handshakes_per_client: engine.max_handshakes_per_client,
            open: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a slot of `kind` for `client`; `false` when a budget is spent
    /// (nothing is taken then).
    pub(crate) fn reserve(&self, kind: Slot, client: IpAddr) -> bool {
        let (global, max) = self.global(kind);
        if global.fetch_add(1, Relaxed) >= max {
            global.fetch_sub(1, Relaxed);
            return false;
        }
        if kind == Slot::Stream {
            return true;
        }
        let mut per_client = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let counts = per_client.entry(client).or_default();
        let (n, max) = match kind {
            Slot::Handshake => (&mut counts.handshakes, self.max_handshakes_per_client),
            _ => (&mut counts.connections, self.max_per_client),
        };
        if *n >= max {
            if counts.connections == 0 && counts.handshakes == 0 {
                per_client.remove(&client);
            }
            drop(per_client);
            global.fetch_sub(1, Relaxed);
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back a slot [`Limits::reserve`] took.
    pub(crate) fn release(&self, kind: Slot, client: IpAddr) {
        let (global, _) = self.global(kind);
        global.fetch_sub(1, Relaxed);
        if kind == Slot::Stream {
            return;
        }
        let mut per_client = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counts) = per_client.get_mut(&client) {
            let n = match kind {
                Slot::Handshake => &mut counts.handshakes,
                _ => &mut counts.connections,
            };
            *n = n.saturating_sub(1);
            if counts.connections == 0 && counts.handshakes == 0 {
                per_client.remove(&client);
            }
        }
    }

    /// A handshake succeeded: its slot becomes a connection slot, if the
    /// connection budgets have room (otherwise it keeps the handshake slot).
    pub(crate) fn promote(&self, client: IpAddr) -> bool {
        if !self.reserve(Slot::Connection, client) {
            return false;
        }
        self.release(Slot::Handshake, client);
        true
    }

    /// Slots taken now (connections, streams and handshakes).
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.open.load(Relaxed) + self.handshakes.load(Relaxed)
    }

    fn global(&self, kind: Slot) -> (&AtomicUsize, usize) {
        match kind {
            Slot::Handshake => (&self.handshakes, self.max_handshakes),
            Slot::Connection | Slot::Stream => (&self.open, self.max_connections),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(
        connections: usize,
        per_client: usize,
        handshakes: usize,
        hs_per_client: usize,
    ) -> Limits {
        Limits::new(&EngineConfig {
            max_connections: connections,
            max_connections_per_client: per_client,
            max_handshakes: handshakes,
            max_handshakes_per_client: hs_per_client,
            ..EngineConfig::default()
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 2));

    #[test]
    fn idle_handshakes_never_take_connection_slots() {
        let l = limits(2, 2, 3, 2);
        assert!(l.reserve(Slot::Handshake, A));
        assert!(l.reserve(Slot::Handshake, A));
        assert!(!l.reserve(Slot::Handshake, A), "per-client handshake cap");
        assert!(l.reserve(Slot::Handshake, B));
        assert!(!l.reserve(Slot::Handshake, B), "global handshake cap");
        // B's real connections still get in, through their own budget.
        assert!(l.promote(B));
        assert!(l.reserve(Slot::Connection, B));
        assert!(!l.reserve(Slot::Connection, A), "connection budget spent");
        assert!(!l.promote(A), "no room: A keeps its handshake slot");
        l.release(Slot::Handshake, A);
        l.release(Slot::Handshake, A);
        l.release(Slot::Connection, B);
        l.release(Slot::Connection, B);
        assert!(
            l.per_client.lock().unwrap().is_empty(),
            "nothing left behind"
        );
        assert_eq!(l.open.load(Relaxed) + l.handshakes.load(Relaxed), 0);
    }

    #[test]
    fn streams_count_globally_but_not_per_client() {
        let l = limits(3, 1, 1, 1);
        assert!(l.reserve(Slot::Connection, A));
        assert!(
            l.reserve(Slot::Stream, A),
            "a stream is not A's own connection"
        );
        assert!(l.reserve(Slot::Stream, A));
        assert!(!l.reserve(Slot::Stream, A), "the global limit holds");
        l.release(Slot::Stream, A);
        assert!(l.reserve(Slot::Stream, B));
    }
}
