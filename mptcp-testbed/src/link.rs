//! Links: veth pairs between two hosts, rate limited with `tc tbf`.

use std::io;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use crate::Host;

/// One end of a [`Link`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The end in the first host given to [`Link::new`].
    A,
    /// The end in the second host.
    B,
}

/// A veth pair between two hosts, each end with an IPv4 address in one /24.
///
/// The rate limit (tc `tbf` on the egress of both ends) can be changed, and
/// the link taken down and brought back, while traffic flows. Routes added
/// with [`Link::add_route`] are put back by [`Link::up`], since the kernel
/// drops the routes through a device that goes down.
#[derive(Debug)]
pub struct Link {
    a: Host,
    a_dev: String,
    a_addr: Ipv4Addr,
    b: Host,
    b_dev: String,
    b_addr: Ipv4Addr,
    prefix_len: u8,
    routes: Mutex<Vec<(Side, String)>>,
}

impl Link {
    /// Creates a veth pair named `a_dev` in `a` and `b_dev` in `b`, gives the
    /// ends `a_addr` and `b_addr` (same subnet of `prefix_len` bits), brings
    /// both up and limits both directions to `rate_mbit` (None: no limit).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        a: &Host,
        a_dev: &str,
        a_addr: Ipv4Addr,
        b: &Host,
        b_dev: &str,
        b_addr: Ipv4Addr,
        prefix_len: u8,
        rate_mbit: Option<u32>,
    ) -> io::Result<Link> {
        // The peer is created straight in b's namespace, named by its fd path.
        a.ip(&[
            "link",
            "add",
            a_dev,
            "type",
            "veth",
            "peer",
            "name",
            b_dev,
            "netns",
            &b.netns_path(),
        ])?;
        a.ip_batch(&[
            format!("addr add {a_addr}/{prefix_len} dev {a_dev}"),
            format!("link set dev {a_dev} up"),
        ])?;
        b.ip_batch(&[
            format!("addr add {b_addr}/{prefix_len} dev {b_dev}"),
            format!("link set dev {b_dev} up"),
        ])?;
        let link = Link {
            a: a.clone(),
            a_dev: a_dev.to_owned(),
            a_addr,
            b: b.clone(),
            b_dev: b_dev.to_owned(),
            b_addr,
            prefix_len,
            routes: Mutex::new(Vec::new()),
        };
        if rate_mbit.is_some() {
            link.set_rate(rate_mbit)?;
        }
        Ok(link)
    }

    /// The host and device name of one end.
    pub fn end(&self, side: Side) -> (&Host, &str) {
        match side {
            Side::A => (&self.a, &self.a_dev),
            Side::B => (&self.b, &self.b_dev),
        }
    }

    /// The address of one end.
    pub fn addr(&self, side: Side) -> Ipv4Addr {
        match side {
            Side::A => self.a_addr,
            Side::B => self.b_addr,
        }
    }

    /// The subnet prefix length of both addresses.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Sets the rate limit of both directions in Mbit/s; `None` removes it.
    pub fn set_rate(&self, rate_mbit: Option<u32>) -> io::Result<()> {
        for side in [Side::A, Side::B] {
            let (host, dev) = self.end(side);
            match rate_mbit {
                Some(rate) => {
                    let params = TbfParams::for_rate(rate);
                    host.tc(&[
                        "qdisc",
                        "replace",
                        "dev",
                        dev,
                        "root",
                        "tbf",
                        "rate",
                        &format!("{rate}mbit"),
                        "burst",
                        &params.burst_bytes.to_string(),
                        "limit",
                        &params.limit_bytes.to_string(),
                    ])?;
                }
                None => {
                    // Deleting the root qdisc of a device that has none fails
                    // with ENOENT: that is the wanted state already.
                    let has_tbf = host
                        .tc(&["qdisc", "show", "dev", dev, "root"])?
                        .contains("tbf");
                    if has_tbf {
                        host.tc(&["qdisc", "del", "dev", dev, "root"])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes both ends down: packets stop at once, as when a cable is pulled
    /// or a modem dies.
    pub fn down(&self) -> io::Result<()> {
        for side in [Side::A, Side::B] {
            let (host, dev) = self.end(side);
            host.ip(&["link", "set", "dev", dev, "down"])?;
        }
        Ok(())
    }

    /// Brings both ends back up and restores the routes added with
    /// [`Link::add_route`].
    pub fn up(&self) -> io::Result<()> {
        for side in [Side::A, Side::B] {
            let (host, dev) = self.end(side);
            host.ip(&["link", "set", "dev", dev, "up"])?;
        }
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for side in [Side::A, Side::B] {
            let lines: Vec<String> = routes
                .iter()
                .filter(|(s, _)| *s == side)
                .map(|(_, route)| format!("route replace {route}"))
                .collect();
            self.end(side).0.ip_batch(&lines)?;
        }
        Ok(())
    }

    /// Adds a route through this link on one end (`route` is what follows
    /// `ip route add`, e.g. `default via 198.18.1.2 dev eth1 table 101`),
    /// and remembers it so that [`Link::up`] restores it.
    pub fn add_route(&self, side: Side, route: &str) -> io::Result<()> {
        self.end(side)
            .0
            .ip_batch(&[format!("route replace {route}")])?;
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((side, route.to_owned()));
        Ok(())
    }

    /// Bytes sent so far from A to B and from B to A, read from the counters
    /// of the A end.
    pub fn bytes(&self) -> io::Result<(u64, u64)> {
        self.a.interface_bytes(&self.a_dev)
    }
}

/// Token bucket parameters for a rate.
struct TbfParams {
    burst_bytes: u64,
    limit_bytes: u64,
}

impl TbfParams {
    /// A bucket of 4 ms worth of data (at least 3 full-size frames, so GSO
    /// bursts pass whole) and a queue of 8 ms more (at least 4 frames).
    /// Measured on 2 x 20 Mbit/s: one TCP flow gets 19.1 Mbit/s (all of the
    /// rate once headers are counted), and MPTCP keeps both links busy; the
    /// longer queues we tried (50 ms, 100 ms) made MPTCP's throughput swing
    /// more (more reordering between subflows) without helping single TCP.
    fn for_rate(rate_mbit: u32) -> TbfParams {
        const FRAME: u64 = 1514;
        let bytes_per_ms = u64::from(rate_mbit) * 1_000_000 / 8 / 1000;
        let burst_bytes = (bytes_per_ms * 4).max(3 * FRAME);
        TbfParams {
            burst_bytes,
            limit_bytes: burst_bytes + (bytes_per_ms * 8).max(4 * FRAME),
        }
    }
}
