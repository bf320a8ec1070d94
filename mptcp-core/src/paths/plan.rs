//! The pure part of automatic paths: from the state of the interfaces and
//! what this daemon created so far, the actions that bring endpoints,
//! routing tables and source rules in line. No I/O here, so every decision
//! is unit-tested; each action prints as the equivalent `ip` command.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::health::{HealthConfig, LinkRole};
use crate::pm::{Endpoint, EndpointFlags, Limits};

/// Whether this host opens connections or accepts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens connections: endpoints get the `subflow` flag, so the kernel
    /// opens a subflow from every interface.
    Client,
    /// Accepts connections: endpoints get the `signal` flag, so the kernel
    /// announces every address to its peers.
    Server,
}

impl Role {
    /// The endpoint flags for this role.
    pub fn flags(self) -> EndpointFlags {
        match self {
            Role::Client => EndpointFlags::SUBFLOW,
            Role::Server => EndpointFlags::SIGNAL,
        }
    }
}

/// What automatic paths does and to which interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Client (`subflow` endpoints) or server (`signal` endpoints).
    pub role: Role,
    /// Endpoint flags to use instead of the role's (e.g. `subflow fullmesh`).
    pub flags: Option<EndpointFlags>,
    /// Manage only interfaces whose name matches one of these glob patterns
    /// (`*` and `?`); empty means every interface.
    pub include: Vec<String>,
    /// Never manage interfaces whose name matches one of these patterns.
    pub exclude: Vec<String>,
    /// Interface `i` gets routing table `table_base + i` (its ifindex).
    pub table_base: u32,
    /// Priority of the source rules (lower is looked up first; the main
    /// table's rule is 32766).
    pub rule_priority: u32,
    /// Raise `limits subflows` when there are more paths than it allows,
    /// and put the old value back on exit.
    pub raise_limits: bool,
    /// Print the actions instead of applying them.
    pub dry_run: bool,
    /// Link roles by interface glob; the first match wins, `active` when
    /// none does.
    pub roles: Vec<(String, LinkRole)>,
    /// Probe the links and take those that stop answering out of use;
    /// `None`: follow the carrier only.
    pub health: Option<HealthConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            role: Role::Client,
            flags: None,
            include: Vec::new(),
            exclude: Vec::new(),
            table_base: 7000,
            rule_priority: 7000,
            raise_limits: true,
            dry_run: false,
            roles: Vec::new(),
            health: None,
        }
    }
}

impl Config {
    fn endpoint_flags(&self, role: LinkRole) -> EndpointFlags {
        let flags = self.flags.unwrap_or(self.role.flags());
        match role {
            LinkRole::Backup => flags | EndpointFlags::BACKUP,
            LinkRole::Active | LinkRole::Off => flags,
        }
    }

    /// Whether the interface named `name` is selected by include/exclude
    /// (whatever its role).
    pub fn selects(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| glob_match(p, name)))
            && !self.exclude.iter().any(|p| glob_match(p, name))
    }

    /// The role of the interface named `name`.
    pub fn role_of(&self, name: &str) -> LinkRole {
        self.roles
            .iter()
            .find(|(pattern, _)| glob_match(pattern, name))
            .map_or(LinkRole::Active, |(_, role)| *role)
    }

    /// Whether the interface is one automatic paths manages: selected, not
    /// loopback, not `off`.
    pub fn manages(&self, iface: &Interface) -> bool {
        !iface.loopback && self.selects(&iface.name) && self.role_of(&iface.name) != LinkRole::Off
    }
}

/// Shell-style match of `name` against `pattern` with `*` (any run) and `?`
/// (any one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with backtracking to the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// An interface as rtnetlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Interface index.
    pub index: u32,
    /// Name (`eth1`).
    pub name: String,
    /// Administratively up with a carrier.
    pub up: bool,
    /// The loopback interface.
    pub loopback: bool,
    /// Addresses with their prefix length (tentative ones left out).
    pub addrs: Vec<(IpAddr, u8)>,
    /// Gateways of the main table's default routes through this interface.
    pub gateways: Vec<IpAddr>,
    /// It has an IPv4 default route (a gateway, or a point-to-point
    /// device route) in some table other than the managed ones.
    pub default_v4: bool,
    /// The same for IPv6.
    pub default_v6: bool,
}

impl Interface {
    /// Whether it has a default route of the family of `v6`.
    pub fn has_default(&self, v6: bool) -> bool {
        if v6 { self.default_v6 } else { self.default_v4 }
    }
}

/// A route in one of the tables automatic paths manages.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// Routing table.
    pub table: u32,
    /// Destination prefix; `None` for the default route.
    pub dst: Option<(IpAddr, u8)>,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub ifindex: u32,
    /// Output interface name (for display).
    pub ifname: String,
    /// Preferred source address.
    pub src: Option<IpAddr>,
}

/// A source rule: traffic from `src` looks up `table`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// Source address (full-length prefix).
    pub src: IpAddr,
    /// Routing table.
    pub table: u32,
    /// Rule priority.
    pub priority: u32,
}

/// What the kernel has now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Every interface.
    pub interfaces: Vec<Interface>,
    /// Every MPTCP endpoint.
    pub endpoints: Vec<Endpoint>,
    /// The routes in the tables of the managed range.
    pub routes: Vec<Route>,
    /// The rules pointing to tables of the managed range.
    pub rules: Vec<Rule>,
    /// The MPTCP limits.
    pub limits: Limits,
}

/// What automatic paths created and must remove again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owned {
    /// Endpoints, by address.
    pub endpoints: BTreeMap<IpAddr, Endpoint>,
    /// Routes.
    pub routes: BTreeSet<Route>,
    /// Rules.
    pub rules: BTreeSet<Rule>,
    /// The limits before automatic paths raised them.
    pub original_limits: Option<Limits>,
    /// Where the search for a free endpoint id starts (after the last id
    /// given out; 0 and 1 both mean 1).
    pub next_id: u8,
}

impl Owned {
    /// Whether nothing is left to clean up.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
            && self.routes.is_empty()
            && self.rules.is_empty()
            && self.original_limits.is_none()
    }

    /// Forgets what the kernel removed by itself (routes of an interface
    /// that went down, endpoints someone deleted).
    pub fn forget_vanished(&mut self, now: &Snapshot) {
        self.routes.retain(|r| now.routes.contains(r));
        self.rules.retain(|r| now.rules.contains(r));
        self.endpoints.retain(|addr, ours| {
            now.endpoints
                .iter()
                .any(|e| e.addr == *addr && e.id == ours.id)
        });
    }

    /// Records that `action` was applied.
    pub fn record(&mut self, action: &Action, limits_before: Limits) {
        match action {
            Action::AddEndpoint { endpoint, .. } => {
                self.endpoints.insert(endpoint.addr, endpoint.clone());
                self.next_id = endpoint.id.wrapping_add(1);
            }
            Action::RemoveEndpoint { addr, .. } => {
                self.endpoints.remove(addr);
            }
            Action::AddRoute(route) => {
                self.routes.insert(route.clone());
            }
            Action::RemoveRoute(route) => {
                self.routes.remove(route);
            }
            Action::AddRule(rule) => {
                self.rules.insert(rule.clone());
            }
            Action::RemoveRule(rule) => {
                self.rules.remove(rule);
            }
            Action::SetLimits(_) if self.original_limits.is_none() => {
                self.original_limits = Some(limits_before);
            }
            Action::SetLimits(limits) => {
                if Some(*limits) == self.original_limits {
                    self.original_limits = None;
                }
            }
        }
    }
}

/// One change to the kernel's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Add an MPTCP endpoint on an interface.
    AddEndpoint {
        /// The endpoint, with the id chosen for it.
        endpoint: Endpoint,
        /// Its interface's name (for display).
        ifname: String,
    },
    /// Remove an endpoint this daemon added.
    RemoveEndpoint {
        /// Its id.
        id: u8,
        /// Its address.
        addr: IpAddr,
    },
    /// Add (or replace) a route in a managed table.
    AddRoute(Route),
    /// Remove a route this daemon added.
    RemoveRoute(Route),
    /// Add a source rule.
    AddRule(Rule),
    /// Remove a source rule this daemon added.
    RemoveRule(Rule),
    /// Set the MPTCP limits.
    SetLimits(Limits),
}

fn ip_family(addr: IpAddr) -> &'static str {
    if addr.is_ipv6() { "-6 " } else { "" }
}

impl fmt::Display for Route {
    /// The arguments after `ip route add`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dst {
            Some((addr, len)) => write!(f, "{addr}/{len}")?,
            None => f.write_str("default")?,
        }
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        write!(f, " dev {}", self.ifname)?;
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        write!(f, " table {}", self.table)
    }
}

impl Route {
    fn family_addr(&self) -> Option<IpAddr> {
        self.dst.map(|(a, _)| a).or(self.gateway).or(self.src)
    }
}

impl fmt::Display for Rule {
    /// The arguments after `ip rule add`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "from {} lookup {} priority {}",
            self.src, self.table, self.priority
        )
    }
}

impl fmt::Display for Action {
    /// The equivalent `ip` command.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::AddEndpoint { endpoint, ifname } => write!(
                f,
                "ip mptcp endpoint add {} id {} {} dev {ifname}",
                endpoint.addr, endpoint.id, endpoint.flags
            ),
            Action::RemoveEndpoint { id, addr } => {
                write!(f, "ip mptcp endpoint delete id {id} # {addr}")
            }
            Action::AddRoute(route) => {
                let family = route.family_addr().map_or("", ip_family);
                write!(f, "ip {family}route replace {route}")
            }
            Action::RemoveRoute(route) => {
                let family = route.family_addr().map_or("", ip_family);
                write!(f, "ip {family}route delete {route}")
            }
            Action::AddRule(rule) => write!(f, "ip {}rule add {rule}", ip_family(rule.src)),
            Action::RemoveRule(rule) => write!(f, "ip {}rule delete {rule}", ip_family(rule.src)),
            Action::SetLimits(limits) => write!(
                f,
                "ip mptcp limits set subflows {} add_addr_accepted {}",
                limits.subflows, limits.add_addr_accepted
            ),
        }
    }
}

/// Whether MPTCP can use `addr` as a path: not loopback, link-local,
/// multicast or unspecified.
pub fn usable_address(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_loopback() || a.is_link_local() || a.is_multicast() || a.is_unspecified())
        }
        IpAddr::V6(a) => {
            !(a.is_loopback()
                || a.is_multicast()
                || a.is_unspecified()
                || (a.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// `addr` with the host bits beyond `len` cleared.
fn network(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

fn host_len(addr: IpAddr) -> u8 {
    if addr.is_ipv6() { 128 } else { 32 }
}

/// One managed path: a usable address on a selected interface that is up.
struct Path<'a> {
    iface: &'a Interface,
    addr: IpAddr,
    prefix_len: u8,
    table: u32,
}

impl Path<'_> {
    fn routes(&self) -> Vec<Route> {
        let mut routes = Vec::new();
        if self.prefix_len < host_len(self.addr) {
            routes.push(Route {
                table: self.table,
                dst: Some((network(self.addr, self.prefix_len), self.prefix_len)),
                gateway: None,
                ifindex: self.iface.index,
                ifname: self.iface.name.clone(),
                src: Some(self.addr),
            });
        }
        let gateway = self
            .iface
            .gateways
            .iter()
            .find(|g| g.is_ipv6() == self.addr.is_ipv6());
        if let Some(&gateway) = gateway {
            routes.push(Route {
                table: self.table,
                dst: None,
                gateway: Some(gateway),
                ifindex: self.iface.index,
                ifname: self.iface.name.clone(),
                src: None,
            });
        }
        routes
    }
}

/// The actions that make the kernel match the interfaces: removals first
/// (endpoints, then rules, then routes, so no subflow is left without a
/// route), then additions (routes, rules, then endpoints, so a new subflow
/// finds its route). The interfaces in `held` (links that failed their
/// probes) keep their routes and rules, so probes still leave through
/// them, but lose their endpoints. With `shutdown`, everything owned is
/// removed.
///
/// Only uplinks get endpoints: interfaces with a default route of the
/// address's family in some table. When none has one, the interfaces named
/// by `include` count as uplinks (the operator said so); without `include`,
/// none does, so a LAN interface never becomes a subflow endpoint.
pub fn plan(
    config: &Config,
    now: &Snapshot,
    owned: &Owned,
    held: &BTreeSet<u32>,
    shutdown: bool,
) -> Vec<Action> {
    let paths: Vec<Path<'_>> = if shutdown {
        Vec::new()
    } else {
        now.interfaces
            .iter()
            .filter(|i| i.up && config.manages(i))
            .flat_map(|iface| {
                iface
                    .addrs
                    .iter()
                    .filter(|(addr, _)| usable_address(*addr))
                    .map(move |&(addr, prefix_len)| Path {
                        iface,
                        addr,
                        prefix_len,
                        table: config.table_base.saturating_add(iface.index),
                    })
            })
            .collect()
    };
    let routes: BTreeSet<Route> = paths.iter().flat_map(Path::routes).collect();
    let rules: BTreeSet<Rule> = paths
        .iter()
        .map(|p| Rule {
            src: p.addr,
            table: p.table,
            priority: config.rule_priority,
        })
        .collect();
    // An address that already has an endpoint someone else made is left alone.
    let foreign = |addr: IpAddr| {
        now.endpoints
            .iter()
            .any(|e| e.addr == addr && owned.endpoints.get(&addr).map(|o| o.id) != Some(e.id))
    };
    // A path is ready for subflows once its interface has its default
    // route too, which DHCP often installs after the address.
    let ready = |p: &Path<'_>| {
        let v6 = p.addr.is_ipv6();
        p.iface.has_default(v6)
            || (!config.include.is_empty()
                && !paths.iter().any(|other| other.iface.has_default(v6)))
    };
    let endpoint_paths: Vec<&Path<'_>> = paths
        .iter()
        .filter(|p| !foreign(p.addr) && ready(p) && !held.contains(&p.iface.index))
        .collect();

    let mut actions = Vec::new();
    for (&addr, ours) in &owned.endpoints {
        let id = ours.id;
        let wanted = endpoint_paths.iter().any(|p| p.addr == addr);
        let same_interface = now.endpoints.iter().any(|e| {
            e.id == id
                && endpoint_paths
                    .iter()
                    .any(|p| p.addr == addr && Some(p.iface.index) == e.ifindex)
        });
        if !wanted || !same_interface {
            actions.push(Action::RemoveEndpoint { id, addr });
        }
    }
    actions.extend(
        owned
            .rules
            .difference(&rules)
            .cloned()
            .map(Action::RemoveRule),
    );
    actions.extend(
        owned
            .routes
            .difference(&routes)
            .cloned()
            .map(Action::RemoveRoute),
    );

    let present_routes: BTreeSet<&Route> = now.routes.iter().collect();
    let mut new_routes: Vec<&Route> = routes
        .iter()
        .filter(|r| !present_routes.contains(r))
        .collect();
    // Subnet routes before the gateway routes that rely on them.
    new_routes.sort_by_key(|r| r.gateway.is_some());
    actions.extend(new_routes.into_iter().cloned().map(Action::AddRoute));
    actions.extend(
        rules
            .iter()
            .filter(|r| !now.rules.contains(r))
            .cloned()
            .map(Action::AddRule),
    );
    let mut used_ids: BTreeSet<u8> = now.endpoints.iter().map(|e| e.id).collect();
    used_ids.extend(owned.endpoints.values().map(|e| e.id));
    for path in &endpoint_paths {
        let kept = owned.endpoints.contains_key(&path.addr)
            && !actions
                .iter()
                .any(|a| matches!(a, Action::RemoveEndpoint { addr, .. } if *addr == path.addr));
        if kept {
            continue;
        }
        // Ids go round from the one after the last given out: an id just
        // removed is not given to the endpoint that replaces it, since a
        // peer that learns of the removal late (its RM_ADDR waited for a
        // working subflow) would close the new subflow with it.
        let Some(id) = (owned.next_id.max(1)..=u8::MAX)
            .chain(1..owned.next_id.max(1))
            .find(|id| !used_ids.contains(id))
        else {
            break;
        };
        used_ids.insert(id);
        actions.push(Action::AddEndpoint {
            endpoint: Endpoint {
                id,
                addr: path.addr,
                port: None,
                ifindex: Some(path.iface.index),
                flags: config.endpoint_flags(config.role_of(&path.iface.name)),
            },
            ifname: path.iface.name.clone(),
        });
    }

    if shutdown {
        if let Some(original) = owned.original_limits {
            actions.push(Action::SetLimits(original));
        }
    } else if config.raise_limits {
        let wanted = (endpoint_paths.len().min(crate::sys::pm::MPTCP_PM_ADDR_MAX)) as u32;
        if now.limits.subflows < wanted {
            actions.push(Action::SetLimits(Limits {
                subflows: wanted,
                ..now.limits
            }));
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const NONE_HELD: BTreeSet<u32> = BTreeSet::new();

    /// An interface; each gateway is also a default route through it.
    fn iface(index: u32, name: &str, addrs: &[(&str, u8)], gateways: &[&str]) -> Interface {
        let gateways: Vec<IpAddr> = gateways.iter().map(|g| ip(g)).collect();
        Interface {
            index,
            name: name.into(),
            up: true,
            loopback: false,
            addrs: addrs.iter().map(|(a, l)| (ip(a), *l)).collect(),
            default_v4: gateways.iter().any(IpAddr::is_ipv4),
            default_v6: gateways.iter().any(IpAddr::is_ipv6),
            gateways,
        }
    }

    fn lo() -> Interface {
        Interface {
            loopback: true,
            ..iface(1, "lo", &[("127.0.0.1", 8), ("::1", 128)], &[])
        }
    }

    fn snapshot(interfaces: Vec<Interface>) -> Snapshot {
        Snapshot {
            interfaces,
            limits: Limits {
                subflows: 2,
                add_addr_accepted: 0,
            },
            ..Snapshot::default()
        }
    }

    fn commands(actions: &[Action]) -> Vec<String> {
        actions.iter().map(ToString::to_string).collect()
    }

    /// Applies `actions` to the model of the kernel, as the daemon would.
    fn apply(now: &mut Snapshot, owned: &mut Owned, actions: &[Action]) {
        for action in actions {
            owned.record(action, now.limits);
            match action {
                Action::AddEndpoint { endpoint, .. } => now.endpoints.push(endpoint.clone()),
                Action::RemoveEndpoint { id, .. } => now.endpoints.retain(|e| e.id != *id),
                Action::AddRoute(r) => now.routes.push(r.clone()),
                Action::RemoveRoute(r) => now.routes.retain(|x| x != r),
                Action::AddRule(r) => now.rules.push(r.clone()),
                Action::RemoveRule(r) => now.rules.retain(|x| x != r),
                Action::SetLimits(l) => now.limits = *l,
            }
        }
    }

    #[test]
    fn a_new_interface_gets_table_rule_and_endpoint_in_that_order() {
        let config = Config::default();
        let now = snapshot(vec![
            lo(),
            iface(
                2,
                "eth0",
                &[("198.18.0.1", 24), ("fe80::1", 64)],
                &["198.18.0.2"],
            ),
            iface(
                3,
                "wlan0",
                &[("198.18.1.1", 24), ("2001:db8::1", 64)],
                &["198.18.1.2"],
            ),
            iface(4, "wwan0", &[("198.18.2.1", 24)], &[]),
        ]);
        let actions = plan(&config, &now, &Owned::default(), &NONE_HELD, false);
        // wwan0 has no gateway yet while the others have: it gets its table
        // and rule but no endpoint until its gateway shows up; nothing has
        // an IPv6 default route, so wlan0's IPv6 address gets none either.
        assert_eq!(
            commands(&actions),
            [
                "ip route replace 198.18.0.0/24 dev eth0 src 198.18.0.1 table 7002",
                "ip route replace 198.18.1.0/24 dev wlan0 src 198.18.1.1 table 7003",
                "ip -6 route replace 2001:db8::/64 dev wlan0 src 2001:db8::1 table 7003",
                "ip route replace 198.18.2.0/24 dev wwan0 src 198.18.2.1 table 7004",
                "ip route replace default via 198.18.0.2 dev eth0 table 7002",
                "ip route replace default via 198.18.1.2 dev wlan0 table 7003",
                "ip rule add from 198.18.0.1 lookup 7002 priority 7000",
                "ip rule add from 198.18.1.1 lookup 7003 priority 7000",
                "ip rule add from 198.18.2.1 lookup 7004 priority 7000",
                "ip -6 rule add from 2001:db8::1 lookup 7003 priority 7000",
                "ip mptcp endpoint add 198.18.0.1 id 1 subflow dev eth0",
                "ip mptcp endpoint add 198.18.1.1 id 2 subflow dev wlan0",
            ]
        );
    }

    #[test]
    fn converges_and_removes_only_its_own_when_an_interface_goes() {
        let config = Config {
            role: Role::Server,
            raise_limits: false,
            ..Config::default()
        };
        let mut now = snapshot(vec![
            iface(2, "eth0", &[("198.18.0.1", 24)], &[]),
            iface(3, "eth1", &[("198.18.1.1", 24)], &["198.18.1.2"]),
        ]);
        // Someone else's endpoint on eth0's address, and someone else's rule.
        now.endpoints.push(Endpoint {
            id: 1,
            ..Endpoint::new(ip("198.18.0.1"), EndpointFlags::SUBFLOW)
        });
        let mut owned = Owned::default();
        let actions = plan(&config, &now, &owned, &NONE_HELD, false);
        assert!(
            actions
                .iter()
                .all(|a| !matches!(a, Action::AddEndpoint { endpoint, .. } if endpoint.addr == ip("198.18.0.1")))
        );
        assert!(
            commands(&actions)
                .contains(&"ip mptcp endpoint add 198.18.1.1 id 2 signal dev eth1".to_string())
        );
        apply(&mut now, &mut owned, &actions);
        assert_eq!(
            plan(&config, &now, &owned, &NONE_HELD, false),
            [],
            "a second pass changes nothing"
        );

        // eth1 goes down: the kernel drops its routes by itself.
        now.interfaces[1].up = false;
        now.routes.retain(|r| r.ifindex != 3);
        owned.forget_vanished(&now);
        let actions = plan(&config, &now, &owned, &NONE_HELD, false);
        assert_eq!(
            commands(&actions),
            [
                "ip mptcp endpoint delete id 2 # 198.18.1.1",
                "ip rule delete from 198.18.1.1 lookup 7003 priority 7000",
            ]
        );
        apply(&mut now, &mut owned, &actions);

        // On exit everything it made goes, the foreign endpoint stays.
        let actions = plan(&config, &now, &owned, &NONE_HELD, true);
        apply(&mut now, &mut owned, &actions);
        assert!(owned.is_empty(), "{owned:?}");
        assert_eq!(now.endpoints.len(), 1);
        assert!(now.routes.is_empty() && now.rules.is_empty());
    }

    #[test]
    fn include_exclude_down_and_link_local_are_skipped() {
        let config = Config {
            include: vec!["eth*".into(), "wl?n0".into()],
            exclude: vec!["eth9".into()],
            ..Config::default()
        };
        let mut down = iface(4, "wlan0", &[("198.18.4.1", 24)], &[]);
        down.up = false;
        let now = snapshot(vec![
            lo(),
            iface(2, "eth9", &[("198.18.0.1", 24)], &[]),
            iface(3, "docker0", &[("198.18.3.1", 24)], &[]),
            down,
            iface(5, "eth1", &[("169.254.0.5", 16), ("fe80::5", 64)], &[]),
        ]);
        assert_eq!(
            plan(&config, &now, &Owned::default(), &NONE_HELD, false),
            []
        );
    }

    #[test]
    fn limits_are_raised_then_restored() {
        let config = Config::default();
        let mut now = snapshot(vec![
            iface(2, "eth0", &[("198.18.0.1", 24)], &["198.18.0.2"]),
            iface(3, "eth1", &[("198.18.1.1", 24)], &["198.18.1.2"]),
            iface(4, "eth2", &[("198.18.2.1", 24)], &["198.18.2.2"]),
        ]);
        let mut owned = Owned::default();
        let actions = plan(&config, &now, &owned, &NONE_HELD, false);
        assert_eq!(
            actions.last(),
            Some(&Action::SetLimits(Limits {
                subflows: 3,
                add_addr_accepted: 0
            }))
        );
        apply(&mut now, &mut owned, &actions);
        assert_eq!(owned.original_limits.map(|l| l.subflows), Some(2));
        let actions = plan(&config, &now, &owned, &NONE_HELD, true);
        assert_eq!(
            actions.last(),
            Some(&Action::SetLimits(Limits {
                subflows: 2,
                add_addr_accepted: 0
            }))
        );
        apply(&mut now, &mut owned, &actions);
        assert!(owned.is_empty());
    }

    fn endpoint_adds(actions: &[Action]) -> Vec<String> {
        commands(actions)
            .into_iter()
            .filter(|c| c.starts_with("ip mptcp endpoint add"))
            .collect()
    }

    #[test]
    fn without_any_default_route_only_included_interfaces_get_endpoints() {
        // A router whose uplinks have no default route yet: its LAN must
        // not become a subflow endpoint.
        let now = snapshot(vec![
            lo(),
            iface(2, "lan0", &[("198.19.1.1", 24)], &[]),
            iface(3, "wan1", &[("198.18.5.1", 24)], &[]),
        ]);
        let actions = plan(
            &Config::default(),
            &now,
            &Owned::default(),
            &NONE_HELD,
            false,
        );
        assert_eq!(endpoint_adds(&actions), Vec::<String>::new());
        let config = Config {
            include: vec!["wan*".into()],
            ..Config::default()
        };
        let actions = plan(&config, &now, &Owned::default(), &NONE_HELD, false);
        assert_eq!(
            endpoint_adds(&actions),
            ["ip mptcp endpoint add 198.18.5.1 id 1 subflow dev wan1"]
        );
        // A default route in another table (here a point-to-point one,
        // without gateway) makes an uplink too.
        let mut ppp = iface(4, "ppp0", &[("198.18.6.1", 32)], &[]);
        ppp.default_v4 = true;
        let now = snapshot(vec![iface(2, "lan0", &[("198.19.1.1", 24)], &[]), ppp]);
        let actions = plan(
            &Config::default(),
            &now,
            &Owned::default(),
            &NONE_HELD,
            false,
        );
        assert_eq!(
            endpoint_adds(&actions),
            ["ip mptcp endpoint add 198.18.6.1 id 1 subflow dev ppp0"]
        );
    }

    #[test]
    fn roles_set_the_backup_flag_or_leave_the_link_alone_and_held_links_keep_their_routes() {
        let config = Config {
            roles: vec![
                ("lte*".into(), LinkRole::Backup),
                ("wan9".into(), LinkRole::Off),
            ],
            raise_limits: false,
            ..Config::default()
        };
        let mut now = snapshot(vec![
            iface(2, "wan0", &[("198.18.0.1", 24)], &["198.18.0.2"]),
            iface(3, "lte0", &[("198.18.1.1", 24)], &["198.18.1.2"]),
            iface(4, "wan9", &[("198.18.9.1", 24)], &["198.18.9.2"]),
        ]);
        let mut owned = Owned::default();
        let actions = plan(&config, &now, &owned, &NONE_HELD, false);
        assert_eq!(
            endpoint_adds(&actions),
            [
                "ip mptcp endpoint add 198.18.0.1 id 1 subflow dev wan0",
                "ip mptcp endpoint add 198.18.1.1 id 2 subflow backup dev lte0",
            ]
        );
        assert!(
            commands(&actions).iter().all(|c| !c.contains("wan9")),
            "{actions:?}"
        );
        apply(&mut now, &mut owned, &actions);
        // wan0 stops answering its probes: only its endpoint goes.
        let held = BTreeSet::from([2]);
        let actions = plan(&config, &now, &owned, &held, false);
        assert_eq!(
            commands(&actions),
            ["ip mptcp endpoint delete id 1 # 198.18.0.1"]
        );
        apply(&mut now, &mut owned, &actions);
        assert_eq!(plan(&config, &now, &owned, &held, false), []);
        // It answers again: the endpoint comes back with a fresh id (a late
        // RM_ADDR for id 1 must not close its new subflow).
        let actions = plan(&config, &now, &owned, &NONE_HELD, false);
        assert_eq!(
            commands(&actions),
            ["ip mptcp endpoint add 198.18.0.1 id 3 subflow dev wan0"]
        );
        apply(&mut now, &mut owned, &actions);
        // Ids wrap around past 255, skipping those in use.
        owned.next_id = 255;
        now.endpoints.push(Endpoint {
            id: 255,
            ..Endpoint::new(ip("198.18.7.1"), EndpointFlags::SUBFLOW)
        });
        let held = BTreeSet::from([2, 3]);
        let actions = plan(&config, &now, &owned, &held, false);
        apply(&mut now, &mut owned, &actions);
        let actions = plan(&config, &now, &owned, &NONE_HELD, false);
        assert_eq!(
            commands(&actions),
            [
                "ip mptcp endpoint add 198.18.0.1 id 1 subflow dev wan0",
                "ip mptcp endpoint add 198.18.1.1 id 2 subflow backup dev lte0",
            ]
        );
    }

    #[test]
    fn glob_patterns() {
        assert!(glob_match("eth*", "eth0"));
        assert!(glob_match("*", ""));
        assert!(glob_match("w*n?", "wlan0"));
        assert!(glob_match("*0", "enp3s0"));
        assert!(!glob_match("eth?", "eth10"));
        assert!(!glob_match("wlan*", "eth0"));
    }

    #[test]
    fn networks_are_masked() {
        assert_eq!(network(ip("198.18.1.77"), 24), ip("198.18.1.0"));
        assert_eq!(network(ip("198.18.1.77"), 0), ip("0.0.0.0"));
        assert_eq!(network(ip("2001:db8::1:2"), 64), ip("2001:db8::"));
    }
}
