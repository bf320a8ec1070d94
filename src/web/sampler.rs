//! Once a second, the relay's counters and its own MPTCP connections
//! (sessions with the other relay, and connections of their own): the
//! last ten minutes of throughput for the status page's graphs, per-link
//! subflows, RTT and byte counters for the page and the metrics.
//!
//! The relay's connections are the MPTCP connections of the network
//! namespace (socket diagnostics, as `mptcp status` reads them) whose
//! socket is one of this process's descriptors (`/proc/self/fd`). A link is
//! the router's end of subflows: their local address at the local relay (a
//! WAN address), their peer's at the remote relay (where all subflows
//! reach the one address the local relay connects to). At most
//! [`MAX_LINKS`] are told apart, the others are added up as one, so that
//! neither the page nor the metrics grow with the number of clients.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mptcp_core::diag::{self, Connection, Subflow};
use mptcp_core::relay::Stats;

use crate::events::unix_ms_now;
use crate::relay::Serving;
use crate::status::{Rate, subflow_key, subflow_rates};

/// Time between samples.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Samples kept: ten minutes.
pub const KEPT: usize = 600;
/// A link without subflows is forgotten after this long.
const LINK_FORGOTTEN: Duration = Duration::from_secs(3600);
/// Links told apart at most (the ones idle longest are forgotten first).
pub const MAX_LINKS: usize = 32;

/// Which end of its subflows names a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEnd {
    /// The local address (the local relay: its WAN addresses).
    Local,
    /// The peer's address (the remote relay: the local relays' addresses).
    Peer,
}

impl LinkEnd {
    /// What names the links, for the page.
    pub fn describe(self) -> &'static str {
        match self {
            LinkEnd::Local => "local address",
            LinkEnd::Peer => "peer address",
        }
    }
}

/// A link: an address, or all links past [`MAX_LINKS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkName {
    /// Subflows with this address at the link's end.
    Addr(IpAddr),
    /// The subflows of links past [`MAX_LINKS`].
    Others,
}

impl fmt::Display for LinkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkName::Addr(addr) => addr.fmt(f),
            LinkName::Others => f.write_str("others"),
        }
    }
}

/// A link's rates at one sample.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkRates {
    /// Bytes per second its subflows had acknowledged by the peer.
    pub sent: f64,
    /// Bytes per second its subflows received.
    pub received: f64,
    /// Mean smoothed RTT of its subflows, in microseconds (none without).
    pub rtt_us: Option<u32>,
}

/// One sample of the history.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Relayed bytes per second from clients towards destinations.
    pub up: f64,
    /// Relayed bytes per second from destinations towards clients.
    pub down: f64,
    /// Each link's rates (links with subflows at that sample).
    pub links: Vec<(LinkName, LinkRates)>,
}

/// A link now, and its counters since the relay started.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Link {
    /// Subflows on it now.
    pub subflows: usize,
    /// Its rates over the last period.
    pub rates: LinkRates,
    /// Bytes its subflows had acknowledged, summed over samples.
    pub bytes_sent: u64,
    /// Bytes its subflows received, summed over samples.
    pub bytes_received: u64,
    /// Retransmitted segments, summed over samples.
    pub retransmits: u64,
    /// Since when it has had no subflow.
    idle_since: Option<Instant>,
}

/// What the last sample saw.
#[derive(Debug)]
pub struct State {
    /// Which end of a subflow names its link.
    pub link_end: LinkEnd,
    /// The history, oldest first, at most [`KEPT`].
    pub points: VecDeque<Point>,
    /// The relay's MPTCP connections at the last sample that read them.
    connections: Vec<Connection>,
    /// Their subflows' rates over the last period.
    pub rates: HashMap<(SocketAddr, SocketAddr), Rate>,
    /// The links.
    pub links: BTreeMap<LinkName, Link>,
    /// Why there are no connections and links (no socket diagnostics).
    pub unavailable: Option<String>,
    /// The previous sample, for the rates.
    previous: Option<(Instant, Stats)>,
}

/// The sampler's shared side: the relays it samples and what it saw.
#[derive(Debug)]
pub struct Sampler {
    serving: Arc<Mutex<Serving>>,
    state: Mutex<State>,
    /// When sampling started, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
}

impl Sampler {
    /// Starts sampling `serving` in a thread, naming links by `link_end`.
    pub fn start(serving: Arc<Mutex<Serving>>, link_end: LinkEnd) -> std::io::Result<Arc<Sampler>> {
        let sampler = Arc::new(Sampler {
            serving,
            state: Mutex::new(State::new(link_end)),
            started_unix_ms: unix_ms_now(),
        });
        let shared = Arc::clone(&sampler);
        std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                let mut ownership = Ownership::default();
                loop {
                    let (totals, now) = (shared.totals(), Instant::now());
                    let seen = ownership.connections();
                    shared.state().add(totals, seen, now, unix_ms_now());
                    std::thread::sleep(PERIOD);
                }
            })?;
        Ok(sampler)
    }

    /// The relay's counters now (not as last sampled).
    pub fn totals(&self) -> Stats {
        self.serving().totals()
    }

    /// The relays' side, for what only they know (the listeners).
    pub fn serving(&self) -> MutexGuard<'_, Serving> {
        self.serving
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the last sample saw.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn new(link_end: LinkEnd) -> State {
        State {
            link_end,
            points: VecDeque::new(),
            connections: Vec::new(),
            rates: HashMap::new(),
            links: BTreeMap::new(),
            unavailable: None,
            previous: None,
        }
    }

    /// The link of subflow `sf`: a new address takes the place of the
    /// link idle longest when [`MAX_LINKS`] are known, or counts as
    /// [`LinkName::Others`] when none is idle.
    fn link_of(&mut self, sf: &Subflow) -> LinkName {
        let addr = match self.link_end {
            LinkEnd::Local => sf.local.ip(),
            LinkEnd::Peer => sf.remote.ip(),
        };
        let name = LinkName::Addr(addr);
        let named = self
            .links
            .keys()
            .filter(|n| **n != LinkName::Others)
            .count();
        if self.links.contains_key(&name) || named < MAX_LINKS {
            return name;
        }
        let idle_longest = self
            .links
            .iter()
            .filter(|(n, _)| **n != LinkName::Others)
            .filter_map(|(n, l)| Some((l.idle_since?, *n)))
            .min();
        match idle_longest {
            Some((_, idle)) => {
                self.links.remove(&idle);
                name
            }
            None => LinkName::Others,
        }
    }
    /// The relay's MPTCP connections now (none while they cannot be read).
    pub fn connections(&self) -> &[Connection] {
        if self.unavailable.is_some() {
            &[]
        } else {
            &self.connections
        }
    }

    /// Adds a sample: the relay's `totals` and its connections (or why they
    /// could not be read) at `now`.
    fn add(
        &mut self,
        totals: Stats,
        seen: Result<Vec<Connection>, String>,
        now: Instant,
        unix_ms: u64,
    ) {
        let secs = self
            .previous
            .as_ref()
            .map(|(t, _)| now.duration_since(*t).as_secs_f64())
            .filter(|s| *s > 0.0);
        match seen {
            Ok(connections) => {
                if self.unavailable.take().is_some() {
                    tracing::info!("status: the relay's subflows are readable again");
                }
                self.rates = secs.map_or_else(HashMap::new, |secs| {
                    subflow_rates(&self.connections, &connections, secs)
                });
                self.count_links(&connections, now);
                self.connections = connections;
            }
            Err(why) => {
                if self.unavailable.is_none() {
                    tracing::warn!("status: no subflows or links on the page and metrics: {why}");
                }
                self.unavailable = Some(why);
                // The last connections seen stay the base of the next
                // counts, so that bytes are not counted twice.
                self.rates.clear();
                self.count_links(&[], now);
            }
        }
        let rate = |now: u64, before: u64| match secs {
            Some(secs) => now.saturating_sub(before) as f64 / secs,
            None => 0.0,
        };
        let (up, down) = self.previous.as_ref().map_or((0.0, 0.0), |(_, before)| {
            (
                rate(totals.bytes_up, before.bytes_up),
                rate(totals.bytes_down, before.bytes_down),
            )
        });
        if secs.is_some() {
            if self.points.len() == KEPT {
                self.points.pop_front();
            }
            self.points.push_back(Point {
                unix_ms,
                up,
                down,
                links: self
                    .links
                    .iter()
                    .filter(|(_, l)| l.subflows > 0)
                    .map(|(addr, l)| (*addr, l.rates))
                    .collect(),
            });
        }
        self.previous = Some((now, totals));
    }

    /// Updates the links from the subflows of `connections` (the previous
    /// sample's are still in `self.connections`).
    fn count_links(&mut self, connections: &[Connection], now: Instant) {
        let previous = std::mem::take(&mut self.connections);
        let before: HashMap<_, &Subflow> = previous
            .iter()
            .flat_map(|c| &c.subflows)
            .map(|sf| (subflow_key(sf), sf))
            .collect();
        for link in self.links.values_mut() {
            link.subflows = 0;
            link.rates = LinkRates::default();
        }
        let mut rtt_sums: HashMap<LinkName, u64> = HashMap::new();
        for sf in connections.iter().flat_map(|c| &c.subflows) {
            let name = self.link_of(sf);
            let rate = self.rates.get(&subflow_key(sf)).copied();
            let link = self.links.entry(name).or_default();
            // A subflow new since the last sample counts from its start.
            let (sent, received, retrans) = before.get(&subflow_key(sf)).map_or(
                (sf.bytes_acked, sf.bytes_received, sf.total_retrans),
                |old| {
                    (
                        sf.bytes_acked.saturating_sub(old.bytes_acked),
                        sf.bytes_received.saturating_sub(old.bytes_received),
                        sf.total_retrans.saturating_sub(old.total_retrans),
                    )
                },
            );
            link.bytes_sent += sent;
            link.bytes_received += received;
            link.retransmits += u64::from(retrans);
            link.subflows += 1;
            if let Some(rate) = rate {
                link.rates.sent += rate.tx;
                link.rates.received += rate.rx;
            }
            *rtt_sums.entry(name).or_default() += u64::from(sf.rtt_us);
        }
        for (addr, link) in &mut self.links {
            if link.subflows == 0 {
                link.idle_since.get_or_insert(now);
            } else {
                link.idle_since = None;
                let mean = rtt_sums[addr] / link.subflows as u64;
                link.rates.rtt_us = Some(u32::try_from(mean).unwrap_or(u32::MAX));
            }
        }
        self.links.retain(|_, l| {
            l.idle_since
                .is_none_or(|t| now.duration_since(t) < LINK_FORGOTTEN)
        });
        self.connections = previous;
    }
}

/// How long a connection of another process is taken as such: one seen
/// in the relay's accept queue is not yet among its descriptors.
const OTHERS_RECHECKED: Duration = Duration::from_secs(10);

/// Which MPTCP sockets of the namespace are this process's, remembered
/// between samples: the descriptors are read again only when a connection
/// neither set knows appears, or [`OTHERS_RECHECKED`] after the last read
/// while some were others' (reading costs about 6 us a descriptor).
#[derive(Debug, Default)]
struct Ownership {
    ours: HashSet<u32>,
    others: HashSet<u32>,
    read: Option<Instant>,
}

impl Ownership {
    /// The MPTCP connections of the namespace whose socket this process
    /// holds.
    fn connections(&mut self) -> Result<Vec<Connection>, String> {
        let all = diag::connections().map_err(|e| e.to_string())?;
        let known = |c: &Connection| self.ours.contains(&c.inode) || self.others.contains(&c.inode);
        let others_stale =
            !self.others.is_empty() && self.read.is_none_or(|t| t.elapsed() >= OTHERS_RECHECKED);
        if all.iter().all(known) && !others_stale {
            let present: HashSet<u32> = all.iter().map(|c| c.inode).collect();
            self.ours.retain(|i| present.contains(i));
            self.others.retain(|i| present.contains(i));
        } else {
            let own = own_socket_inodes().map_err(|e| format!("reading /proc/self/fd: {e}"))?;
            let (ours, others) = all
                .iter()
                .map(|c| c.inode)
                .partition(|i| own.contains(&u64::from(*i)));
            (self.ours, self.others) = (ours, others);
            self.read = Some(Instant::now());
        }
        Ok(all
            .into_iter()
            .filter(|c| self.ours.contains(&c.inode))
            .collect())
    }
}

/// The inodes of this process's sockets: `/proc/self/fd/N` links to
/// `socket:[INODE]`.
fn own_socket_inodes() -> std::io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        // A descriptor closed since the listing has no link any more.
        let Ok(target) = entry.and_then(|e| std::fs::read_link(e.path())) else {
            continue;
        };
        let inode: Option<u64> = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok());
        inodes.extend(inode);
    }
    Ok(inodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn subflow(local: &str, acked: u64, received: u64, rtt_us: u32) -> Subflow {
        Subflow {
            local: local.parse().unwrap(),
            remote: "198.18.0.2:1080".parse().unwrap(),
            state: 1,
            token: 1,
            local_id: 0,
            remote_id: 0,
            backup_local: false,
            backup_remote: false,
            fully_established: true,
            bytes_sent: acked,
            bytes_acked: acked,
            bytes_received: received,
            rtt_us,
            cwnd: 10,
            total_retrans: 0,
            delivery_rate: 0,
        }
    }

    fn connection(subflows: Vec<Subflow>) -> Connection {
        Connection {
            local: subflows[0].local,
            remote: subflows[0].remote,
            state: 1,
            inode: 1,
            uid: 0,
            token: 1,
            fallback: false,
            extra_subflows: 0,
            bytes: None,
            subflows,
        }
    }

    #[test]
    fn links_add_up_their_subflows_over_samples() {
        let mut state = State::new(LinkEnd::Local);
        let t0 = Instant::now();
        let stats = |down| Stats {
            bytes_down: down,
            ..Stats::default()
        };
        let first = connection(vec![
            subflow("198.18.0.1:40000", 100, 1000, 10_000),
            subflow("198.18.1.1:40001", 0, 500, 30_000),
        ]);
        state.add(stats(0), Ok(vec![first]), t0, 0);
        assert!(state.points.is_empty(), "a rate needs two samples");
        let link0 = LinkName::Addr("198.18.0.1".parse().unwrap());
        let link1 = LinkName::Addr("198.18.1.1".parse().unwrap());
        assert_eq!(state.links[&link1].bytes_received, 500);
        let second = connection(vec![
            subflow("198.18.0.1:40000", 100, 3000, 20_000),
            subflow("198.18.1.1:40001", 0, 1500, 30_000),
            subflow("198.18.1.1:40002", 0, 100, 40_000),
        ]);
        state.add(stats(4000), Ok(vec![second]), t0 + PERIOD, 1000);
        let point = state.points.back().unwrap();
        assert_eq!((point.up, point.down), (0.0, 4000.0));
        assert_eq!(point.links.len(), 2);
        let l1 = &state.links[&link1];
        assert_eq!((l1.subflows, l1.bytes_received), (2, 1600));
        assert_eq!(l1.rates.received, 1000.0, "the new subflow has no rate yet");
        assert_eq!(l1.rates.rtt_us, Some(35_000));
        assert_eq!(state.links[&link0].bytes_received, 3000);

        state.add(stats(4000), Err("no diag".into()), t0 + 2 * PERIOD, 2000);
        assert_eq!(state.links[&link1].subflows, 0);
        assert_eq!(state.links[&link1].bytes_received, 1600, "kept");
        assert!(state.points.back().unwrap().links.is_empty());
        state.add(
            stats(4000),
            Ok(vec![]),
            t0 + 2 * PERIOD + LINK_FORGOTTEN,
            3000,
        );
        assert!(state.links.is_empty(), "idle links are forgotten");
        assert_eq!(state.unavailable, None);
    }

    #[test]
    fn links_past_the_most_are_added_up() {
        let mut state = State::new(LinkEnd::Peer);
        let t0 = Instant::now();
        let peers = |n: usize| -> Vec<Connection> {
            (0..n)
                .map(|i| {
                    let mut sf = subflow("198.18.0.2:1080", 10, 10, 1000);
                    sf.remote = SocketAddr::from(([203, 0, 113, i as u8], 40000));
                    connection(vec![sf])
                })
                .collect()
        };
        state.add(Stats::default(), Ok(peers(MAX_LINKS + 3)), t0, 0);
        assert_eq!(state.links.len(), MAX_LINKS + 1);
        let others = &state.links[&LinkName::Others];
        assert_eq!((others.subflows, others.bytes_received), (3, 30));
        assert!(
            state
                .links
                .contains_key(&LinkName::Addr("203.0.113.0".parse().unwrap()))
        );
        // Idle links make room for new ones.
        state.add(Stats::default(), Ok(vec![]), t0 + PERIOD, 1000);
        let mut sf = subflow("198.18.0.2:1080", 0, 0, 1000);
        sf.remote = "192.0.2.1:40000".parse().unwrap();
        state.add(
            Stats::default(),
            Ok(vec![connection(vec![sf])]),
            t0 + 2 * PERIOD,
            2000,
        );
        assert_eq!(state.links.len(), MAX_LINKS + 1);
        assert_eq!(
            state.links[&LinkName::Addr("192.0.2.1".parse().unwrap())].subflows,
            1
        );
    }

    #[test]
    fn the_history_is_bounded() {
        let mut state = State::new(LinkEnd::Local);
        let t0 = Instant::now();
        for i in 0..KEPT as u32 + 10 {
            state.add(Stats::default(), Ok(vec![]), t0 + PERIOD * i, u64::from(i));
        }
        assert_eq!(state.points.len(), KEPT);
        assert_eq!(state.points.front().unwrap().unix_ms, 10);
    }

    #[test]
    fn own_mptcp_connections_are_told_from_others() {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        // MPTCP over loopback: one end of a connection here, the other in
        // a python process.
        let listener =
            mptcp_core::socket::bind_listener("127.0.0.1:0", mptcp_core::socket::Fallback::Fail)
                .unwrap();
        let addr = listener.local_addr().unwrap();
        let script = format!(
            "import socket, sys, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)\n\
             s.connect(('127.0.0.1', {}))\n\
             print('connected', flush=True)\n\
             sys.stdin.read()\n",
            addr.port()
        );
        let mut other = Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(other.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "connected");
        let (_ours, peer) = listener.accept().unwrap();
        let mut ownership = Ownership::default();
        let ends = |o: &mut Ownership| -> Vec<(SocketAddr, SocketAddr)> {
            o.connections()
                .unwrap()
                .iter()
                .filter(|c| c.local == addr || c.remote == addr)
                .map(|c| (c.local, c.remote))
                .collect()
        };
        assert_eq!(ends(&mut ownership), [(addr, peer)], "only this end");
        assert!(!ownership.others.is_empty(), "python's end");
        assert_eq!(ends(&mut ownership), [(addr, peer)], "remembered");
        drop(other.stdin.take());
        other.wait().unwrap();
    }

    #[test]
    fn own_sockets_are_found_by_inode() {
        use std::os::unix::fs::MetadataExt;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let inode = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        assert!(own_socket_inodes().unwrap().contains(&inode));
    }
}
