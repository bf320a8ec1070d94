//! Automatic paths: keeps the host's MPTCP endpoints *and* per-source
//! routing in line with its interfaces, as NetworkManager and mptcpd's
//! `addr_adv` do for endpoints.
//!
//! For every selected interface that is up with a usable address (not
//! loopback, not link-local) it adds routing table `table_base + ifindex`
//! (the interface's subnet and its default gateway), a rule `from ADDRESS
//! lookup TABLE`, and an endpoint (`subflow` on a client, `signal` on a
//! server). When the interface or address goes away, those go too. It
//! watches rtnetlink for link, address and route changes, never touches
//! what it did not create, and removes what it created on exit. A dry run
//! prints the equivalent `ip` commands instead.
//!
//! With [`Config::health`], it also probes every link through its own
//! address ([`HealthConfig`]): a link that stops answering loses its
//! endpoint (the kernel closes its subflows, so the scheduler stops
//! waiting on them) and gets it back once it answers again, when the
//! kernel opens a subflow from it on every existing connection; the daemon
//! checks that they did appear and retries with a backoff when they did
//! not. [`LinkStatus`] is what it knows of each link, written to a state
//! file for other processes ([`write_state`], [`usable_links`]).
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use mptcp_core::paths::{AutoPaths, Config, Role};
//!
//! let stop = AtomicBool::new(false); // set from a signal handler
//! let config = Config { role: Role::Client, exclude: vec!["docker*".into()], ..Config::default() };
//! let mut paths = AutoPaths::new(config)?;
//! paths.run_until(&stop, |action, error| match error {
//!     None => println!("{action}"),
//!     Some(e) => eprintln!("{action}: {e}"),
//! })?;
//! # Ok::<(), mptcp_core::pm::Error>(())
//! ```
#![forbid(unsafe_code)]

mod health;
mod plan;
mod probe;
mod rtnl;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

pub use self::health::{HealthConfig, LinkHealth, ProbeOutcome, Transition};
pub use self::plan::{
    Action, Config, Interface, Owned, Role, Route, Rule, Snapshot, glob_match, plan, usable_address,
};
use self::probe::Prober;
use self::rtnl::{Rtnl, Watcher};
pub use crate::links::{
    DEFAULT_STATE_FILE, LinkRole, LinkState, LinkStatus, read_state, usable_links, write_state,
};
use crate::pm::{EndpointFlags, Error, Limits, PathManager, Result};
use crate::sys::probe_sock::{self, READABLE};

/// How many routing tables past `table_base` are considered ours to read
/// (interface indexes grow as interfaces are created).
const TABLE_SPAN: u32 = 1 << 20;

/// How often `run_until` looks at its stop flag while nothing changes.
const STOP_POLL: Duration = Duration::from_millis(100);

/// How often the link figures (probe RTT and loss) are passed on while no
/// link changes.
const STATUS_REFRESH: Duration = Duration::from_secs(2);

/// A link automatic paths manages.
#[derive(Debug)]
struct Tracked {
    ifname: String,
    role: LinkRole,
    /// The address its probes leave from (its first usable one of a
    /// family the probe targets have).
    addr: Option<IpAddr>,
    health: LinkHealth,
    since: SystemTime,
    next_round: Instant,
}

/// A change of a link's state, as `mptcp monitor` and the log show it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkEvent {
    /// Interface name.
    pub ifname: String,
    /// Interface index.
    pub ifindex: u32,
    /// The state before.
    pub from: LinkState,
    /// The state now.
    pub to: LinkState,
    /// Why, in words.
    pub reason: String,
}

impl std::fmt::Display for LinkEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "link {} {} -> {}: {}",
            self.ifname, self.from, self.to, self.reason
        )
    }
}

/// The automatic-paths daemon of the calling thread's network namespace.
#[derive(Debug)]
pub struct AutoPaths {
    config: Config,
    pm: PathManager,
    rtnl: Rtnl,
    owned: Owned,
    /// In a dry run, the limits the printed commands would have set.
    dry_limits: Option<Limits>,
    links: BTreeMap<u32, Tracked>,
    prober: Prober,
    /// Link changes not yet given to the observer.
    events: Vec<LinkEvent>,
}

/// Receives every action with its outcome (`None` when it succeeded or,
/// in a dry run, was only printed).
pub type Report<'a> = dyn FnMut(&Action, Option<&Error>) + 'a;

impl AutoPaths {
    /// Opens the netlink sockets (in the calling thread's namespace).
    pub fn new(config: Config) -> Result<Self> {
        Ok(AutoPaths {
            config,
            pm: PathManager::open()?,
            rtnl: Rtnl::open()?,
            owned: Owned::default(),
            dry_limits: None,
            links: BTreeMap::new(),
            prober: Prober::default(),
            events: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What it created and will remove on exit.
    pub fn owned(&self) -> &Owned {
        &self.owned
    }

    /// What it knows of each link it manages.
    pub fn links(&self) -> Vec<LinkStatus> {
        self.links
            .iter()
            .map(|(&ifindex, link)| LinkStatus {
                ifname: link.ifname.clone(),
                ifindex,
                state: link.health.state(),
                role: link.role,
                addr: link.addr,
                rtt: link.health.rtt(),
                loss_percent: link.health.loss() * 100.0,
                since: link.since,
            })
            .collect()
    }

    /// How many links are usable now (see [`usable_links`]).
    pub fn usable_links(&self) -> usize {
        self.links.values().filter(|l| l.health.usable()).count()
    }

    /// Follows the interfaces of `now` in the link table: new ones, gone
    /// ones, carrier changes (an interface that is up with a usable
    /// address has a carrier here).
    fn track_links(&mut self, now: &Snapshot, at: Instant) {
        let probing = self.config.health.is_some();
        let targets = self.config.health.as_ref().map(|h| h.targets.clone());
        let mut seen = BTreeSet::new();
        for iface in now.interfaces.iter().filter(|i| self.config.manages(i)) {
            let addr = probe_address(iface, targets.as_deref().unwrap_or_default());
            let carrier = iface.up && addr.is_some();
            seen.insert(iface.index);
            let link = self.links.entry(iface.index).or_insert_with(|| {
                let mut health = LinkHealth::new(carrier, at);
                if !probing && carrier {
                    // Without probes, the carrier is all there is to know.
                    let _ = health.assume_up(at);
                }
                Tracked {
                    ifname: iface.name.clone(),
                    role: self.config.role_of(&iface.name),
                    addr,
                    health,
                    since: SystemTime::now(),
                    next_round: at,
                }
            });
            link.addr = addr;
            let mut change = link.health.carrier(carrier, at);
            if !probing && carrier && !link.health.usable() {
                change = link.health.assume_up(at);
            }
            if let Some(t) = change {
                let reason = if carrier {
                    if probing {
                        "carrier back, probing"
                    } else {
                        "carrier back"
                    }
                } else {
                    "carrier or address lost"
                };
                link.since = SystemTime::now();
                link.next_round = at;
                self.events.push(LinkEvent {
                    ifname: link.ifname.clone(),
                    ifindex: iface.index,
                    from: t.from,
                    to: t.to,
                    reason: reason.into(),
                });
            }
        }
        let gone: Vec<u32> = self
            .links
            .keys()
            .filter(|i| !seen.contains(i))
            .copied()
            .collect();
        for ifindex in gone {
            self.prober.cancel(ifindex);
            self.links.remove(&ifindex);
        }
    }

    /// The links whose endpoints must be out of use now. A dry run sends
    /// no probes and prints what a working link gets.
    fn held(&self, at: Instant) -> BTreeSet<u32> {
        if self.config.health.is_none() || self.config.dry_run {
            return BTreeSet::new();
        }
        self.links
            .iter()
            .filter(|(_, l)| !l.health.endpoint_wanted(at))
            .map(|(&i, _)| i)
            .collect()
    }

    /// Reads the kernel's state. In a dry run, what the printed commands
    /// would have created is added, so that nothing is printed twice.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        let base = self.config.table_base;
        let routing = self.rtnl.read(base..base.saturating_add(TABLE_SPAN))?;
        let mut snapshot = Snapshot {
            interfaces: routing.interfaces,
            endpoints: self.pm.endpoints()?,
            routes: routing.routes,
            rules: routing.rules,
            limits: self.pm.limits()?,
        };
        if self.config.dry_run {
            for route in &self.owned.routes {
                if !snapshot.routes.contains(route) {
                    snapshot.routes.push(route.clone());
                }
            }
            for rule in &self.owned.rules {
                if !snapshot.rules.contains(rule) {
                    snapshot.rules.push(rule.clone());
                }
            }
            for endpoint in self.owned.endpoints.values() {
                if !snapshot.endpoints.contains(endpoint) {
                    snapshot.endpoints.push(endpoint.clone());
                }
            }
            if let Some(limits) = self.dry_limits {
                snapshot.limits = limits;
            }
        }
        Ok(snapshot)
    }

    /// One pass: reads the state, plans, applies (or prints) and returns
    /// the actions, each also given to `report`.
    pub fn sync(&mut self, report: &mut Report<'_>) -> Result<Vec<Action>> {
        self.pass(false, report)
    }

    /// Removes everything it created (what `run_until` does on exit).
    pub fn cleanup(&mut self, report: &mut Report<'_>) -> Result<Vec<Action>> {
        self.pass(true, report)
    }

    fn pass(&mut self, shutdown: bool, report: &mut Report<'_>) -> Result<Vec<Action>> {
        let now = self.snapshot()?;
        let at = Instant::now();
        self.owned.forget_vanished(&now);
        self.track_links(&now, at);
        let held = self.held(at);
        let actions = plan::plan(&self.config, &now, &self.owned, &held, shutdown);
        for action in &actions {
            let outcome = if self.config.dry_run {
                if let Action::SetLimits(limits) = action {
                    self.dry_limits = Some(*limits);
                }
                Ok(())
            } else {
                self.apply(action)
            };
            match outcome {
                Ok(()) => {
                    self.owned.record(action, now.limits);
                    if let (Action::AddEndpoint { endpoint, .. }, Some(health)) =
                        (action, &self.config.health)
                        && let Some(link) = endpoint.ifindex.and_then(|i| self.links.get_mut(&i))
                    {
                        link.health.endpoint_added(health, at);
                    }
                    report(action, None);
                }
                Err(e) => {
                    tracing::warn!(%action, error = %e, "automatic paths: action failed");
                    report(action, Some(&e));
                }
            }
        }
        Ok(actions)
    }

    fn apply(&mut self, action: &Action) -> Result<()> {
        match action {
            Action::AddEndpoint { endpoint, .. } => self.pm.add_endpoint(endpoint),
            Action::RemoveEndpoint { id, .. } => match self.pm.remove_endpoint(*id) {
                // Someone removed it already.
                Err(Error::Kernel {
                    message: Some(m), ..
                }) if m == "address not found" => Ok(()),
                other => other,
            },
            Action::AddRoute(route) => self.rtnl.add_route(route),
            Action::RemoveRoute(route) => self.rtnl.remove_route(route),
            Action::AddRule(rule) => self.rtnl.add_rule(rule),
            Action::RemoveRule(rule) => self.rtnl.remove_rule(rule),
            Action::SetLimits(limits) => self.pm.set_limits(*limits),
        }
    }

    /// Syncs, then follows link, address and route changes until `stop` is
    /// set, then removes what it created. Failed actions are reported and
    /// retried at the next change; failing to read the state ends the run
    /// (after the cleanup).
    pub fn run_until(
        &mut self,
        stop: &AtomicBool,
        report: impl FnMut(&Action, Option<&Error>),
    ) -> Result<()> {
        self.run_observed(stop, report, |_, _| {})
    }

    /// Like [`AutoPaths::run_until`], also probing the links when
    /// [`Config::health`] says so. `observe` gets every link change with
    /// the state of all links after it, and every few seconds the state
    /// alone (the probe figures move).
    pub fn run_observed(
        &mut self,
        stop: &AtomicBool,
        mut report: impl FnMut(&Action, Option<&Error>),
        mut observe: impl FnMut(Option<&LinkEvent>, &[LinkStatus]),
    ) -> Result<()> {
        // Subscribe before the first read so that no change falls in between.
        let result = Watcher::subscribe().and_then(|mut watcher| {
            self.sync(&mut report)?;
            self.pass_on(&mut observe);
            let mut refreshed = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let mut changed = self.wait(&mut watcher)?;
                changed |= self.follow_health();
                if changed {
                    self.sync(&mut report)?;
                }
                if !self.events.is_empty() || refreshed.elapsed() >= STATUS_REFRESH {
                    self.pass_on(&mut observe);
                    refreshed = Instant::now();
                }
            }
            Ok(())
        });
        let cleanup = self.cleanup(&mut report);
        result.and(cleanup.map(drop))
    }

    /// Logs the link changes and gives them to `observe`.
    fn pass_on(&mut self, observe: &mut impl FnMut(Option<&LinkEvent>, &[LinkStatus])) {
        let links = self.links();
        let events = std::mem::take(&mut self.events);
        for event in &events {
            if event.to == LinkState::Up {
                tracing::info!("{event}");
            } else {
                tracing::warn!("{event}");
            }
            observe(Some(event), &links);
        }
        if events.is_empty() {
            observe(None, &links);
        }
    }

    /// Waits for an rtnetlink change, a probe answer, a probe timeout or
    /// the next thing the link health has to do, at most [`STOP_POLL`].
    /// Returns whether rtnetlink reported a change.
    fn wait(&mut self, watcher: &mut Watcher) -> Result<bool> {
        let at = Instant::now();
        let mut until = at + STOP_POLL;
        if let Some(health) = &self.config.health {
            // A link whose round is still in flight waits for it (the
            // prober's deadline), not for its next round.
            let deadlines = self
                .links
                .iter()
                .filter(|(i, l)| {
                    l.health.state() != LinkState::NoCarrier && !self.prober.in_flight(**i)
                })
                .map(|(_, l)| l.next_round)
                .chain(self.links.values().filter_map(|l| l.health.next_deadline()))
                .chain(self.prober.next_deadline(health.timeout));
            until = deadlines.fold(until, Instant::min);
        }
        let mut fds = vec![(watcher.fd(), READABLE)];
        fds.extend(self.prober.poll_fds());
        let revents = probe_sock::poll(&fds, until.saturating_duration_since(at))
            .map_err(|e| Error::io("cannot wait for changes", e))?;
        drop(fds);
        let changed = revents[0] != 0;
        if changed {
            watcher.drain()?;
        }
        if let Some(health) = &self.config.health {
            let at = Instant::now();
            for (ifindex, outcome) in self.prober.collect(&revents[1..], health.timeout, at) {
                self.probed(ifindex, outcome, at);
            }
        }
        Ok(changed)
    }

    /// Counts a probe round of a link.
    fn probed(&mut self, ifindex: u32, outcome: ProbeOutcome, at: Instant) {
        let (Some(health), Some(link)) = (&self.config.health, self.links.get_mut(&ifindex)) else {
            return;
        };
        if let Some(t) = link.health.probed(outcome, health, at) {
            link.since = SystemTime::now();
            let reason = match t.to {
                LinkState::Up => format!("{} probes answered in a row", health.up_after),
                _ => format!("{} probes lost in a row", health.down_after),
            };
            self.events.push(LinkEvent {
                ifname: link.ifname.clone(),
                ifindex,
                from: t.from,
                to: t.to,
                reason,
            });
        }
    }

    /// Starts the probe rounds that are due, checks the subflows of
    /// re-added endpoints and ends finished backoffs. Returns whether the
    /// endpoints must be planned again.
    fn follow_health(&mut self) -> bool {
        let Some(health) = self.config.health.clone() else {
            return false;
        };
        let at = Instant::now();
        let mut replan = false;
        let due: Vec<(u32, String, IpAddr)> = self
            .links
            .iter()
            .filter(|(i, l)| {
                l.health.state() != LinkState::NoCarrier
                    && l.next_round <= at
                    && !self.prober.in_flight(**i)
            })
            .filter_map(|(&i, l)| Some((i, l.ifname.clone(), l.addr?)))
            .collect();
        for (ifindex, ifname, addr) in due {
            if let Some(link) = self.links.get_mut(&ifindex) {
                link.next_round = at + health.interval;
            }
            if let Some(outcome) = self
                .prober
                .start(ifindex, &ifname, addr, &health.targets, at)
            {
                self.probed(ifindex, outcome, at);
            }
        }
        let states_before: Vec<bool> = self
            .links
            .values()
            .map(|l| l.health.endpoint_wanted(at))
            .collect();
        let to_verify: Vec<(u32, IpAddr)> = self
            .links
            .iter()
            .filter(|(_, l)| l.health.verify_due(at))
            .filter_map(|(&i, l)| Some((i, l.addr?)))
            .collect();
        for (ifindex, addr) in to_verify {
            let missing = self.connections_missing_subflow(addr);
            let Some(link) = self.links.get_mut(&ifindex) else {
                continue;
            };
            match link.health.verified(missing.is_empty(), &health, at) {
                Some(wait) => tracing::warn!(
                    link = %link.ifname,
                    connections = ?missing,
                    "no subflow from {addr} on {} connection(s) after re-adding its endpoint; \
                     removing it and adding it again in {wait:?}",
                    missing.len()
                ),
                None if link.health.gave_up() => tracing::warn!(
                    link = %link.ifname,
                    connections = ?missing,
                    "still no subflow from {addr} on {} connection(s); giving up until the link \
                     changes",
                    missing.len()
                ),
                None => tracing::debug!(link = %link.ifname, "subflows from {addr} are back"),
            }
        }
        for link in self.links.values_mut() {
            replan |= link.health.tick(at);
        }
        let states_after = self.links.values().map(|l| l.health.endpoint_wanted(at));
        replan |= !states_before.into_iter().eq(states_after);
        replan | !self.events.is_empty()
    }

    /// The tokens of the connections that should have a subflow from
    /// `addr` but have none: established MPTCP connections this host opened
    /// (from an ephemeral port, so not the ones it accepted, whose peers
    /// open the subflows) from one of its endpoints' addresses, with room
    /// for another subflow. On a server (its endpoints only announce),
    /// nothing is checked.
    fn connections_missing_subflow(&mut self, addr: IpAddr) -> Vec<u32> {
        const TCP_ESTABLISHED: u8 = 1;
        let ours = self.owned.endpoints.get(&addr);
        if !ours.is_some_and(|e| e.flags.contains(EndpointFlags::SUBFLOW)) {
            return Vec::new();
        }
        let limit = self.pm.limits().map_or(0, |l| l.subflows);
        let connections = match crate::diag::connections() {
            Ok(connections) => connections,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the MPTCP connections to check subflows");
                return Vec::new();
            }
        };
        let ephemeral = ephemeral_ports();
        connections
            .iter()
            .filter(|c| c.state == TCP_ESTABLISHED && !c.fallback)
            .filter(|c| ephemeral.contains(&c.local.port()))
            .filter(|c| self.owned.endpoints.contains_key(&c.local.ip()) || c.local.ip() == addr)
            .filter(|c| u32::from(c.extra_subflows) < limit)
            // A subflow the peer is closing lingers (FIN_WAIT2, CLOSE_WAIT)
            // and does not count.
            .filter(|c| {
                !c.subflows
                    .iter()
                    .any(|sf| sf.local.ip() == addr && sf.state == TCP_ESTABLISHED)
            })
            .map(|c| c.token)
            .collect()
    }
}

/// The address a link's probes leave from: its first usable one of a
/// family some target has, else its first usable one.
fn probe_address(iface: &Interface, targets: &[std::net::SocketAddr]) -> Option<IpAddr> {
    let usable = || {
        iface
            .addrs
            .iter()
            .map(|(a, _)| *a)
            .filter(|a| usable_address(*a))
    };
    usable()
        .find(|a| targets.iter().any(|t| t.is_ipv6() == a.is_ipv6()))
        .or_else(|| usable().next())
}

/// The local ports of the connections this host opens
/// (`net.ipv4.ip_local_port_range`, which IPv6 shares), or every port when
/// it cannot be read.
fn ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut ports = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some(ports.next()??..=ports.next()??)
        })
        .unwrap_or(0..=u16::MAX)
}

impl Drop for AutoPaths {
    /// Removes what is left (after a panic or an early return), best effort.
    fn drop(&mut self) {
        if !self.owned.is_empty() && !self.config.dry_run {
            let _ = self.cleanup(&mut |action, error| {
                if let Some(e) = error {
                    tracing::warn!(%action, error = %e, "automatic paths: cleanup failed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_leave_from_an_address_of_a_targets_family() {
        let iface = Interface {
            index: 2,
            name: "wan0".into(),
            up: true,
            loopback: false,
            addrs: ["fe80::1", "2001:db8::1", "198.18.0.1"]
                .map(|a| (a.parse().unwrap(), 64))
                .into(),
            gateways: Vec::new(),
            default_v4: true,
            default_v6: true,
        };
        let v4 = ["198.18.0.2:9".parse().unwrap()];
        let v6 = ["[2001:db8::2]:9".parse().unwrap()];
        let addr = |targets: &[std::net::SocketAddr]| probe_address(&iface, targets).unwrap();
        assert_eq!(addr(&v4).to_string(), "198.18.0.1");
        assert_eq!(addr(&v6).to_string(), "2001:db8::1");
        assert_eq!(addr(&[]).to_string(), "2001:db8::1", "not link-local");
    }
}
