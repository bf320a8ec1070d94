//! Links: veth pairs between two hosts, rate limited with `tc tbf`, and
//! delayed by a [`DelayLine`] in a middle host when they have a delay.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use crate::Host;
use crate::delay::DelayLine;

/// What a link is like, each way: a rate, a one-way delay and a buffer.
///
/// Written `RATE[:DELAY[:BUFFER]]` ([`FromStr`] and [`fmt::Display`]):
/// RATE in Mbit/s or `unlimited`, DELAY the one-way delay and BUFFER the
/// queue in front of the link, as time at the rate, both like `75ms`,
/// `0.5ms`, `250us` or `1s`. `20` is 20 Mbit/s without delay, `20:75ms`
/// adds 75 ms each way (150 ms round trip), `20:75ms:200ms` a queue of
/// 200 ms, as on an LTE link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkSpec {
    /// The rate of each direction in Mbit/s (tc `tbf` on both ends);
    /// None: unlimited.
    pub rate_mbit: Option<u32>,
    /// The one-way delay. A link with a delay, or a buffer other than the
    /// default, runs through a [`DelayLine`] in a middle host; others are a
    /// plain veth pair.
    pub delay: Duration,
    /// How much may wait in the queue in front of the link, as time at the
    /// rate: tbf's limit beyond its burst (4 ms, at least 3 frames). Unused
    /// without a rate. On a plain veth pair the tbf is on the ends, where
    /// the hosts' own TCP connections keep their queue short (TCP small
    /// queues): there only forwarded traffic (the relay path's routers)
    /// fills it.
    pub buffer: Duration,
}

impl LinkSpec {
    /// The queue depth when none is given: 8 ms (see [`Link::set_rate`]).
    pub const DEFAULT_BUFFER: Duration = Duration::from_millis(8);

    /// A link of `rate_mbit` (None: unlimited) without delay and with the
    /// default buffer.
    pub fn rate(rate_mbit: Option<u32>) -> LinkSpec {
        LinkSpec {
            rate_mbit,
            delay: Duration::ZERO,
            buffer: Self::DEFAULT_BUFFER,
        }
    }

    /// The same link with a one-way delay of `delay`.
    pub fn with_delay(self, delay: Duration) -> LinkSpec {
        LinkSpec { delay, ..self }
    }

    /// The same link with a queue of `buffer` at its rate.
    pub fn with_buffer(self, buffer: Duration) -> LinkSpec {
        LinkSpec { buffer, ..self }
    }
}

impl FromStr for LinkSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<LinkSpec, String> {
        let mut fields = text.split(':');
        let rate = fields.next().unwrap_or_default();
        let rate_mbit = match rate {
            "unlimited" => None,
            _ => Some(
                rate.parse::<u32>()
                    .ok()
                    .filter(|r| (1..=100_000).contains(r))
                    .ok_or_else(|| {
                        format!(
                            "link {text:?}: the rate {rate:?} is not a number of Mbit/s \
                             from 1 to 100000, nor `unlimited`"
                        )
                    })?,
            ),
        };
        let mut spec = LinkSpec::rate(rate_mbit);
        let field = |value: Option<&str>, what: &str| -> Result<Option<Duration>, String> {
            value
                .map(|v| parse_duration(v).map_err(|e| format!("link {text:?}: the {what}: {e}")))
                .transpose()
        };
        if let Some(delay) = field(fields.next(), "delay")? {
            spec.delay = delay;
        }
        if let Some(buffer) = field(fields.next(), "buffer")? {
            if rate_mbit.is_none() {
                return Err(format!(
                    "link {text:?}: a buffer needs a rate (an unlimited link has no queue)"
                ));
            }
            spec.buffer = buffer;
        }
        if fields.next().is_some() {
            return Err(format!(
                "link {text:?}: expected RATE[:DELAY[:BUFFER]], e.g. 20:75ms:200ms"
            ));
        }
        Ok(spec)
    }
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rate_mbit {
            Some(rate) => write!(f, "{rate}")?,
            None => f.write_str("unlimited")?,
        }
        let custom_buffer = self.rate_mbit.is_some() && self.buffer != Self::DEFAULT_BUFFER;
        if !self.delay.is_zero() || custom_buffer {
            write!(f, ":{}", DisplayDuration(self.delay))?;
        }
        if custom_buffer {
            write!(f, ":{}", DisplayDuration(self.buffer))?;
        }
        Ok(())
    }
}

/// A duration written as `parse_duration` reads it: `75ms`, `0.5ms`, `0`.
struct DisplayDuration(Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        if us == 0 {
            f.write_str("0")
        } else if us.is_multiple_of(1000) {
            write!(f, "{}ms", us / 1000)
        } else {
            write!(f, "{us}us")
        }
    }
}

/// Reads `75ms`, `0.5ms`, `250us`, `1s` or `0`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let (number, unit_s) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(format!("{text:?} has no unit (ms, us or s)"));
    };
    let seconds = number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| n * unit_s)
        .filter(|s| *s <= 60.0)
        .ok_or_else(|| format!("{text:?} is not a duration from 0 to 60 s"))?;
    Ok(Duration::from_micros((seconds * 1e6).round() as u64))
}

/// One end of a [`Link`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The end in the first host given to [`Link::new`].
    A,
    /// The end in the second host.
    B,
}

/// A veth pair between two hosts, each end with an IPv4 address in one /24;
/// with a delay, two veth pairs through the middle host of a [`DelayLine`].
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
    buffer: Duration,
    routes: Mutex<Vec<(Side, String)>>,
    delay_line: Option<DelayLine>,
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
        let spec = LinkSpec::rate(rate_mbit);
        Link::with_spec(a, a_dev, a_addr, b, b_dev, b_addr, prefix_len, &spec)
    }

    /// Like [`Link::new`], with the rate, delay and buffer of `spec`. A link
    /// with a delay or a buffer of its own runs through a [`DelayLine`]: a
    /// middle host whose thread holds the frames (stopped when the link is
    /// dropped) and whose devices hold the rate limit and queue.
    #[allow(clippy::too_many_arguments)]
    pub fn with_spec(
        a: &Host,
        a_dev: &str,
        a_addr: Ipv4Addr,
        b: &Host,
        b_dev: &str,
        b_addr: Ipv4Addr,
        prefix_len: u8,
        spec: &LinkSpec,
    ) -> io::Result<Link> {
        let delay_line = if spec.delay.is_zero() && spec.buffer == LinkSpec::DEFAULT_BUFFER {
            // The peer is created straight in b's namespace, named by its fd path.
            a.add_veth(a_dev, b, b_dev)?;
            None
        } else {
            Some(DelayLine::new(a, a_dev, b, b_dev, spec.delay)?)
        };
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
            buffer: spec.buffer,
            routes: Mutex::new(Vec::new()),
            delay_line,
        };
        if spec.rate_mbit.is_some() {
            link.set_rate(spec.rate_mbit)?;
        }
        Ok(link)
    }

    /// Uplink `i` of a client whose MPTCP endpoints and source routing
    /// are left to automatic paths: client `eth{i}` 198.18.i.1/24 (side A)
    /// to server `eth{i}` 198.18.i.2/24 (side B), limited to `rate_mbit`,
    /// with a client default route through it of metric 100 + i, as DHCP
    /// would set it ([`Link::up`] puts it back).
    pub fn uplink(client: &Host, server: &Host, i: u8, rate_mbit: Option<u32>) -> io::Result<Link> {
        let dev = format!("eth{i}");
        let link = Link::new(
            client,
            &dev,
            Ipv4Addr::new(198, 18, i, 1),
            server,
            &dev,
            Ipv4Addr::new(198, 18, i, 2),
            24,
            rate_mbit,
        )?;
        link.add_route(
            Side::A,
            &format!(
                "default via 198.18.{i}.2 dev {dev} metric {}",
                100 + u32::from(i)
            ),
        )?;
        Ok(link)
    }

    /// The delay line of a link with a delay (None without one).
    pub fn delay_line(&self) -> Option<&DelayLine> {
        self.delay_line.as_ref()
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
    /// The queue keeps the link's buffer (its [`LinkSpec::buffer`]). The
    /// `tbf` qdiscs are on the egress of both ends, or of the middle host's
    /// two devices for a link through a [`DelayLine`].
    pub fn set_rate(&self, rate_mbit: Option<u32>) -> io::Result<()> {
        let shapers = match &self.delay_line {
            Some(line) => line.egress_devs().map(|dev| (line.middle(), dev)),
            None => [Side::A, Side::B].map(|side| self.end(side)),
        };
        for (host, dev) in shapers {
            match rate_mbit {
                Some(rate) => {
                    let params = TbfParams::for_rate(rate, self.buffer);
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

    /// Drops every packet in and out of both ends (nftables), with the
    /// carrier up: a DSL line whose upstream died, an LTE modem that stops
    /// passing packets. [`Link::restore`] ends it.
    pub fn blackhole(&self) -> io::Result<()> {
        for side in [Side::A, Side::B] {
            let (host, dev) = self.end(side);
            let table = blackhole_table(dev);
            host.exec(
                "nft",
                &[&format!(
                    "add table inet {table}\n\
                     add chain inet {table} input {{ type filter hook input priority 0; }}\n\
                     add chain inet {table} output {{ type filter hook output priority 0; }}\n\
                     add rule inet {table} input iifname {dev} drop\n\
                     add rule inet {table} output oifname {dev} drop"
                )],
            )?;
        }
        Ok(())
    }

    /// Ends a [`Link::blackhole`]: packets pass again.
    pub fn restore(&self) -> io::Result<()> {
        for side in [Side::A, Side::B] {
            let (host, dev) = self.end(side);
            host.exec("nft", &["delete", "table", "inet", &blackhole_table(dev)])?;
        }
        Ok(())
    }

    /// Bytes sent so far from A to B and from B to A, read from the counters
    /// of the A end.
    pub fn bytes(&self) -> io::Result<(u64, u64)> {
        self.a.interface_bytes(&self.a_dev)
    }
}

/// The nftables table of a [`Link::blackhole`] on `dev`.
fn blackhole_table(dev: &str) -> String {
    format!(
        "testbed_blackhole_{}",
        dev.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    )
}

/// Token bucket parameters for a rate.
struct TbfParams {
    burst_bytes: u64,
    limit_bytes: u64,
}

impl TbfParams {
    /// A bucket of 4 ms worth of data (at least 3 full-size frames, so GSO
    /// bursts pass whole) and a queue of `buffer` more (at least 4 frames).
    /// Measured on 2 x 20 Mbit/s without delay and the default 8 ms: one TCP
    /// flow gets 19.1 Mbit/s (all of the rate once headers are counted), and
    /// MPTCP keeps both links busy; the longer queues we tried there (50 ms,
    /// 100 ms) made MPTCP's throughput swing more (more reordering between
    /// subflows) without helping single TCP.
    fn for_rate(rate_mbit: u32, buffer: Duration) -> TbfParams {
        const FRAME: u64 = 1514;
        let bytes_per_ms = u64::from(rate_mbit) * 1_000_000 / 8 / 1000;
        let burst_bytes = (bytes_per_ms * 4).max(3 * FRAME);
        let queue_bytes =
            u64::from(rate_mbit) * 1_000_000 / 8 * buffer.as_micros() as u64 / 1_000_000;
        TbfParams {
            burst_bytes,
            limit_bytes: burst_bytes + queue_bytes.max(4 * FRAME),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> LinkSpec {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn link_specs_parse_and_print() {
        assert_eq!(spec("20"), LinkSpec::rate(Some(20)));
        assert_eq!(
            spec("20:75ms"),
            LinkSpec::rate(Some(20)).with_delay(Duration::from_millis(75))
        );
        assert_eq!(
            spec("20:75ms:200ms"),
            LinkSpec::rate(Some(20))
                .with_delay(Duration::from_millis(75))
                .with_buffer(Duration::from_millis(200))
        );
        assert_eq!(spec("50:0.5ms").delay, Duration::from_micros(500));
        assert_eq!(spec("50:250us").delay, Duration::from_micros(250));
        assert_eq!(spec("50:1s").delay, Duration::from_secs(1));
        assert_eq!(spec("50:0:100ms").delay, Duration::ZERO);
        assert_eq!(spec("unlimited:5ms").rate_mbit, None);
        for text in [
            "20",
            "20:75ms",
            "20:75ms:200ms",
            "20:0:100ms",
            "unlimited:500us",
            "5:1000ms",
        ] {
            assert_eq!(spec(text).to_string(), text);
            assert_eq!(spec(&spec(text).to_string()), spec(text));
        }
        for bad in [
            "",
            "0",
            "fast",
            "20:",
            "20:5",
            "20:-1ms",
            "20:61s",
            "20:5ms:1x",
            "20:1ms:2ms:3ms",
            "unlimited:1ms:5ms",
        ] {
            assert!(bad.parse::<LinkSpec>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn tbf_queue_follows_the_buffer() {
        let default = TbfParams::for_rate(20, LinkSpec::DEFAULT_BUFFER);
        assert_eq!(default.burst_bytes, 10_000);
        assert_eq!(default.limit_bytes, 30_000);
        let deep = TbfParams::for_rate(20, Duration::from_millis(200));
        assert_eq!(deep.limit_bytes, 10_000 + 500_000);
        let tiny = TbfParams::for_rate(1, Duration::ZERO);
        assert_eq!(tiny.limit_bytes, tiny.burst_bytes + 4 * 1514);
    }
}
