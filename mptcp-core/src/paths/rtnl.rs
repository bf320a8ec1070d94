//! The rtnetlink side of automatic paths: reading interfaces, addresses,
//! routes and rules, changing routes and rules, and watching for changes.
//! Messages are netlink-packet-route's; the blocking request/response loop
//! is the path manager's [`Transport`].

use std::{collections::HashMap, net::IpAddr, time::Duration};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage},
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
    rule::{RuleAction, RuleAttribute, RuleMessage},
};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::plan::{Interface, Route, Rule};
use crate::{
    pm::{
        Error, Result,
        transport::{Kind, Transport},
    },
    sys::pm::{
        RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE,
        RTNLGRP_LINK,
    },
};

/// `RT_TABLE_MAIN`.
const MAIN_TABLE: u32 = 254;

/// A request socket on rtnetlink.
#[derive(Debug)]
pub(crate) struct Rtnl {
    transport: Transport,
}

/// The routing state automatic paths looks at.
pub(crate) struct RoutingState {
    pub(crate) interfaces: Vec<Interface>,
    /// Routes in the tables `tables`.
    pub(crate) routes: Vec<Route>,
    /// Rules pointing to the tables `tables`.
    pub(crate) rules: Vec<Rule>,
}

fn family_of(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// The table of a route: the RTA_TABLE attribute, else the header's.
fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

impl Rtnl {
    pub(crate) fn open() -> Result<Self> {
        Ok(Rtnl {
            transport: Transport::open(NETLINK_ROUTE)?,
        })
    }

    fn dump(
        &mut self,
        what: &str,
        request: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.transport.request(what, request, 0, Kind::Dump)
    }

    /// Reads interfaces, addresses, main-table default routes, and the
    /// routes and rules of the tables in `tables`.
    pub(crate) fn read(&mut self, tables: std::ops::Range<u32>) -> Result<RoutingState> {
        let mut interfaces: Vec<Interface> = Vec::new();
        for message in self.dump(
            "list interfaces",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )? {
            if let RouteNetlinkMessage::NewLink(link) = message {
                interfaces.push(interface(&link));
            }
        }
        let by_index: HashMap<u32, usize> = interfaces
            .iter()
            .enumerate()
            .map(|(i, iface)| (iface.index, i))
            .collect();
        for message in self.dump(
            "list addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        )? {
            if let RouteNetlinkMessage::NewAddress(address) = message
                && let Some(&i) = by_index.get(&address.header.index)
                && let Some(addr) = usable_ifaddr(&address)
            {
                interfaces[i].addrs.push((addr, address.header.prefix_len));
            }
        }
        let mut routes = Vec::new();
        for message in self.dump(
            "list routes",
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
        )? {
            let RouteNetlinkMessage::NewRoute(route) = message else {
                continue;
            };
            let table = route_table(&route);
            let mut dst = None;
            let (mut gateway, mut oif, mut src) = (None, None, None);
            for attr in &route.attributes {
                match attr {
                    RouteAttribute::Destination(a) => dst = ip_of(a),
                    RouteAttribute::Gateway(a) => gateway = ip_of(a),
                    RouteAttribute::PrefSource(a) => src = ip_of(a),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let Some(&i) = oif.as_ref().and_then(|o| by_index.get(o)) else {
                continue;
            };
            let default = route.header.destination_prefix_length == 0;
            if default && !tables.contains(&table) && route.header.kind == RouteType::Unicast {
                match route.header.address_family {
                    AddressFamily::Inet => interfaces[i].default_v4 = true,
                    AddressFamily::Inet6 => interfaces[i].default_v6 = true,
                    _ => {}
                }
            }
            if table == MAIN_TABLE && default {
                if let Some(gateway) = gateway {
                    interfaces[i].gateways.push(gateway);
                }
            } else if tables.contains(&table) && route.header.kind == RouteType::Unicast {
                routes.push(Route {
                    table,
                    dst: dst.map(|d| (d, route.header.destination_prefix_length)),
                    gateway,
                    ifindex: interfaces[i].index,
                    ifname: interfaces[i].name.clone(),
                    src,
                });
            }
        }
        let mut rules = Vec::new();
        for message in self.dump(
            "list rules",
            RouteNetlinkMessage::GetRule(RuleMessage::default()),
        )? {
            let RouteNetlinkMessage::NewRule(rule) = message else {
                continue;
            };
            let mut table = u32::from(rule.header.table);
            let (mut src, mut priority) = (None, 0);
            for attr in &rule.attributes {
                match attr {
                    RuleAttribute::Table(t) => table = *t,
                    RuleAttribute::Source(a) => src = Some(*a),
                    RuleAttribute::Priority(p) => priority = *p,
                    _ => {}
                }
            }
            if let Some(src) = src
                && tables.contains(&table)
                && rule.header.src_len == if src.is_ipv6() { 128 } else { 32 }
            {
                rules.push(Rule {
                    src,
                    table,
                    priority,
                });
            }
        }
        Ok(RoutingState {
            interfaces,
            routes,
            rules,
        })
    }

    fn route_message(route: &Route) -> RouteMessage {
        let family_addr = route.dst.map(|(a, _)| a).or(route.gateway).or(route.src);
        let header = RouteHeader {
            address_family: family_addr.map_or(AddressFamily::Inet, family_of),
            destination_prefix_length: route.dst.map_or(0, |(_, len)| len),
            // Tables above 255 only fit the RTA_TABLE attribute.
            table: u8::try_from(route.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC),
            protocol: RouteProtocol::Static,
            scope: if route.gateway.is_some() {
                RouteScope::Universe
            } else {
                RouteScope::Link
            },
            kind: RouteType::Unicast,
            ..RouteHeader::default()
        };
        let mut message = RouteMessage::default();
        message.header = header;
        if let Some((dst, _)) = route.dst {
            message
                .attributes
                .push(RouteAttribute::Destination(dst.into()));
        }
        if let Some(gateway) = route.gateway {
            message
                .attributes
                .push(RouteAttribute::Gateway(gateway.into()));
        }
        if let Some(src) = route.src {
            message
                .attributes
                .push(RouteAttribute::PrefSource(src.into()));
        }
        message.attributes.push(RouteAttribute::Oif(route.ifindex));
        message.attributes.push(RouteAttribute::Table(route.table));
        message
    }

    fn rule_message(rule: &Rule) -> RuleMessage {
        let mut message = RuleMessage::default();
        message.header.family = family_of(rule.src);
        message.header.src_len = if rule.src.is_ipv6() { 128 } else { 32 };
        message.header.table = u8::try_from(rule.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        message.header.action = RuleAction::ToTable;
        message.attributes.push(RuleAttribute::Source(rule.src));
        message.attributes.push(RuleAttribute::Table(rule.table));
        message
            .attributes
            .push(RuleAttribute::Priority(rule.priority));
        message
    }

    /// `ip route replace ROUTE`.
    pub(crate) fn add_route(&mut self, route: &Route) -> Result<()> {
        let request = RouteNetlinkMessage::NewRoute(Self::route_message(route));
        let what = format!("add route {route}");
        self.transport
            .request(&what, request, NLM_F_CREATE | NLM_F_REPLACE, Kind::Do)
            .map(drop)
    }

    /// `ip route delete ROUTE`; a route already gone is not an error.
    pub(crate) fn remove_route(&mut self, route: &Route) -> Result<()> {
        let request = RouteNetlinkMessage::DelRoute(Self::route_message(route));
        self.remove(
            &format!("remove route {route}"),
            request,
            &[libc::ESRCH, libc::ENODEV],
        )
    }

    /// `ip rule add RULE`.
    pub(crate) fn add_rule(&mut self, rule: &Rule) -> Result<()> {
        let request = RouteNetlinkMessage::NewRule(Self::rule_message(rule));
        let what = format!("add rule {rule}");
        self.transport
            .request(&what, request, NLM_F_CREATE | NLM_F_EXCL, Kind::Do)
            .map(drop)
    }

    /// `ip rule delete RULE`; a rule already gone is not an error.
    pub(crate) fn remove_rule(&mut self, rule: &Rule) -> Result<()> {
        let request = RouteNetlinkMessage::DelRule(Self::rule_message(rule));
        self.remove(&format!("remove rule {rule}"), request, &[libc::ENOENT])
    }

    /// Sends the delete `request`; the kernel errors `gone` mean that what
    /// it deletes is already gone, which is not an error.
    fn remove(&mut self, what: &str, request: RouteNetlinkMessage, gone: &[i32]) -> Result<()> {
        match self.transport.request(what, request, 0, Kind::Do) {
            Err(Error::Kernel { errno, .. }) if gone.contains(&errno) => Ok(()),
            other => other.map(drop),
        }
    }
}

fn interface(link: &LinkMessage) -> Interface {
    let flags = link.header.flags;
    let name = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("if{}", link.header.index));
    Interface {
        index: link.header.index,
        name,
        up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp),
        loopback: flags.contains(LinkFlags::Loopback),
        addrs: Vec::new(),
        gateways: Vec::new(),
        default_v4: false,
        default_v6: false,
    }
}

/// The address of an RTM_NEWADDR, unless it is still tentative (IPv6
/// duplicate address detection) or failed it.
fn usable_ifaddr(message: &AddressMessage) -> Option<IpAddr> {
    let header_flags = message.header.flags;
    let extended = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Flags(f) => Some(*f),
        _ => None,
    });
    let tentative = header_flags
        .intersects(AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed)
        || extended
            .is_some_and(|f| f.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed));
    if tentative {
        return None;
    }
    // IFA_LOCAL is the local address on point-to-point links, IFA_ADDRESS the peer's there.
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(addr) => Some(*addr),
        _ => None,
    });
    local.or_else(|| {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(addr) => Some(*addr),
            _ => None,
        })
    })
}

/// A socket subscribed to link, address and route changes.
#[derive(Debug)]
pub(crate) struct Watcher {
    transport: Transport,
}

impl Watcher {
    pub(crate) fn subscribe() -> Result<Self> {
        let transport = Transport::open(NETLINK_ROUTE)?;
        for group in [
            RTNLGRP_LINK,
            RTNLGRP_IPV4_IFADDR,
            RTNLGRP_IPV6_IFADDR,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV6_ROUTE,
        ] {
            transport
                .socket()
                .add_membership(group)
                .map_err(|e| Error::io("cannot watch rtnetlink changes", e))?;
        }
        Ok(Watcher { transport })
    }

    /// The socket's descriptor, to poll it with others.
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.transport.socket().as_fd()
    }

    /// Reads every notification already queued.
    pub(crate) fn drain(&mut self) -> Result<()> {
        while self.transport.wait_readable(Duration::ZERO)? {
            match self.transport.receive::<RouteNetlinkMessage>() {
                Ok(_) => {}
                Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOBUFS) => {}
                // A message this crate cannot decode still means "something changed".
                Err(Error::Decode(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
