//! Ready topologies with MPTCP set up.

use std::io;
use std::net::Ipv4Addr;

use crate::{Host, Link, LinkSpec, Side};

/// The most links a topology may have: the kernel allows at most 8 MPTCP
/// subflows and endpoints.
pub const MAX_LINKS: usize = 8;

/// First routing table used for per-source routing (table `100 + i` for link i).
const SOURCE_TABLE_BASE: usize = 100;

/// A client and a server joined by several links. See [`two_links`].
#[derive(Debug)]
pub struct TwoLinks {
    /// The client: MPTCP endpoints and per-source routing are set here.
    pub client: Host,
    /// The server.
    pub server: Host,
    /// Link i joins client `eth{i}` 198.18.i.1/24 (side A) and server
    /// `eth{i}` 198.18.i.2/24 (side B).
    pub links: Vec<Link>,
}

impl TwoLinks {
    /// The server's address on link 0 (198.18.0.2), the one clients connect to.
    pub fn server_addr(&self) -> Ipv4Addr {
        wan_addr(0, 2)
    }

    /// The client's address on link i (198.18.i.1).
    pub fn client_addr(&self, link: usize) -> Ipv4Addr {
        wan_addr(link, 1)
    }
}

/// Builds a client and a server joined by `n_links` links (1 to 8), each
/// limited to `rate_mbit` both ways (None: unlimited).
///
/// Link i: client 198.18.i.1/24 ↔ server 198.18.i.2/24. On the client: MPTCP
/// limits, one `subflow` endpoint per link beyond the first and per-source
/// routing (table 100+i and a rule `from 198.18.i.1`), so an MPTCP connection
/// to [`TwoLinks::server_addr`] opens one subflow per link; on the server:
/// MPTCP limits. (Named after its most common use, two links.)
pub fn two_links(n_links: usize, rate_mbit: Option<u32>) -> io::Result<TwoLinks> {
    two_links_with(&vec![LinkSpec::rate(rate_mbit); n_links])
}

/// Like [`two_links`], with one link per spec (1 to 8), each with its own
/// rate, delay and buffer: `two_links_with(&["20:5ms".parse()?, "20:75ms".parse()?])`.
pub fn two_links_with(specs: &[LinkSpec]) -> io::Result<TwoLinks> {
    check_link_count(specs.len())?;
    let client = Host::new("client")?;
    let server = Host::new("server")?;
    let links = multipath_links(&client, &server, "eth", specs)?;
    Ok(TwoLinks {
        client,
        server,
        links,
    })
}

/// A LAN host behind a local node with several WAN links to a remote node
/// that reaches a destination host: a home LAN, a router, N ISPs, a rented
/// server, the internet. See [`relay_path`].
#[derive(Debug)]
pub struct RelayPath {
    /// A LAN host, 198.19.1.2/24, default route via `local`.
    pub lan: Host,
    /// The local node (router): 198.19.1.1 on the LAN, 198.18.i.1 on WAN
    /// link i; MPTCP endpoints and per-source routing for the WAN links.
    pub local: Host,
    /// The remote node: 198.18.i.2 on WAN link i, 198.19.2.1 towards `dest`.
    pub remote: Host,
    /// The destination host, 198.19.2.2/24, default route via `remote`.
    pub dest: Host,
    /// lan `eth0` (side A) ↔ local `lan0` (side B), unlimited.
    pub lan_link: Link,
    /// WAN link i: local `wan{i}` (side A) ↔ remote `wan{i}` (side B).
    pub wan: Vec<Link>,
    /// remote `dst0` (side A) ↔ dest `eth0` (side B), unlimited.
    pub dest_link: Link,
}

impl RelayPath {
    /// The LAN host's address, 198.19.1.2.
    pub fn lan_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 1, 2)
    }

    /// The local node's LAN address (the LAN's gateway), 198.19.1.1.
    pub fn local_lan_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 1, 1)
    }

    /// The local node's address on WAN link `link`, 198.18.`link`.1.
    pub fn local_wan_addr(&self, link: usize) -> Ipv4Addr {
        wan_addr(link, 1)
    }

    /// The remote node's address on WAN link 0, 198.18.0.2: where an MPTCP
    /// connection from `local` goes to use all WAN links.
    pub fn remote_addr(&self) -> Ipv4Addr {
        wan_addr(0, 2)
    }

    /// The remote node's address towards `dest` (its way out to the
    /// internet), 198.19.2.1.
    pub fn remote_egress_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 2, 1)
    }

    /// The destination host's address, 198.19.2.2.
    pub fn dest_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 2, 2)
    }
}

/// Builds lan → local → `n_wan` WAN links (each limited to `rate_mbit`) →
/// remote → dest.
///
/// IP forwarding is on in local and remote, and plain routing works both ways
/// between lan and dest over WAN link 0 (the baseline without MPTCP). Local has
/// the MPTCP limits, `subflow` endpoints for WAN links ≥ 1 and per-source
/// routing, remote has the limits, so an MPTCP connection from local to
/// [`RelayPath::remote_addr`] uses every WAN link.
pub fn relay_path(n_wan: usize, rate_mbit: Option<u32>) -> io::Result<RelayPath> {
    relay_path_with(&vec![LinkSpec::rate(rate_mbit); n_wan])
}

/// Like [`relay_path`], with one WAN link per spec (1 to 8), each with its
/// own rate, delay and buffer.
pub fn relay_path_with(wan_specs: &[LinkSpec]) -> io::Result<RelayPath> {
    check_link_count(wan_specs.len())?;
    let lan = Host::new("lan")?;
    let local = Host::new("local")?;
    let remote = Host::new("remote")?;
    let dest = Host::new("dest")?;
    let lan_link = Link::new(
        &lan,
        "eth0",
        Ipv4Addr::new(198, 19, 1, 2),
        &local,
        "lan0",
        Ipv4Addr::new(198, 19, 1, 1),
        24,
        None,
    )?;
    let dest_link = Link::new(
        &remote,
        "dst0",
        Ipv4Addr::new(198, 19, 2, 1),
        &dest,
        "eth0",
        Ipv4Addr::new(198, 19, 2, 2),
        24,
        None,
    )?;
    let wan = multipath_links(&local, &remote, "wan", wan_specs)?;
    lan_link.add_route(Side::A, "default via 198.19.1.1 dev eth0")?;
    dest_link.add_route(Side::B, "default via 198.19.2.1 dev eth0")?;
    wan[0].add_route(Side::A, "default via 198.18.0.2 dev wan0")?;
    wan[0].add_route(Side::B, "198.19.1.0/24 via 198.18.0.1 dev wan0")?;
    for node in [&local, &remote] {
        node.sysctl("net.ipv4.ip_forward", "1")?;
    }
    Ok(RelayPath {
        lan,
        local,
        remote,
        dest,
        lan_link,
        wan,
        dest_link,
    })
}

fn check_link_count(n_links: usize) -> io::Result<()> {
    if n_links == 0 || n_links > MAX_LINKS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{n_links} links asked: the test bed supports 1 to {MAX_LINKS} (the kernel's MPTCP limit)"
            ),
        ));
    }
    Ok(())
}

/// 198.18.`link`.`host`.
fn wan_addr(link: usize, host: u8) -> Ipv4Addr {
    let link = u8::try_from(link).expect("at most 8 links");
    Ipv4Addr::new(198, 18, link, host)
}

/// Joins `near` (the MPTCP client side) and `far` with one link
/// 198.18.i.0/24 per spec, named `{dev_prefix}{i}` on both ends, and sets
/// MPTCP limits on both, `subflow` endpoints and per-source routing on `near`.
fn multipath_links(
    near: &Host,
    far: &Host,
    dev_prefix: &str,
    specs: &[LinkSpec],
) -> io::Result<Vec<Link>> {
    let n = specs.len();
    let mut links = Vec::with_capacity(n);
    for (i, spec) in specs.iter().enumerate() {
        let dev = format!("{dev_prefix}{i}");
        links.push(Link::with_spec(
            near,
            &dev,
            wan_addr(i, 1),
            far,
            &dev,
            wan_addr(i, 2),
            24,
            spec,
        )?);
    }
    let limits = format!("mptcp limits set subflows {n} add_addr_accepted {n}");
    let mut near_setup = vec![limits.clone()];
    for i in 1..n {
        near_setup.push(format!(
            "mptcp endpoint add {} dev {dev_prefix}{i} subflow",
            wan_addr(i, 1)
        ));
    }
    for i in 0..n {
        near_setup.push(format!(
            "rule add from {} table {}",
            wan_addr(i, 1),
            SOURCE_TABLE_BASE + i
        ));
    }
    near.ip_batch(&near_setup)?;
    far.ip_batch(&[limits])?;
    for (i, link) in links.iter().enumerate() {
        let table = SOURCE_TABLE_BASE + i;
        let dev = format!("{dev_prefix}{i}");
        link.add_route(
            Side::A,
            &format!(
                "198.18.{i}.0/24 dev {dev} src {} table {table}",
                wan_addr(i, 1)
            ),
        )?;
        link.add_route(
            Side::A,
            &format!("default via {} dev {dev} table {table}", wan_addr(i, 2)),
        )?;
    }
    Ok(links)
}
