//! `mptcp paths auto --metrics ADDR`: each link's state, role, probe RTT
//! and loss, and bytes, in the Prometheus text format at `/metrics`
//! (prefixed `mptcp_paths`). Labels stay few: one `link` per managed
//! interface, and the fixed sets of states, roles and directions.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use mptcp_core::paths::{LinkRole, LinkState, LinkStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{Pages, Response, TEXT, metrics_response};
use crate::metrics::family;

const STATES: [LinkState; 4] = [
    LinkState::NoCarrier,
    LinkState::Probing,
    LinkState::Up,
    LinkState::Down,
];
const ROLES: [LinkRole; 3] = [LinkRole::Active, LinkRole::Backup, LinkRole::Off];

/// The links as the daemon saw them last; it updates, scrapes read.
#[derive(Debug, Default)]
pub struct LinkBoard(Mutex<Vec<LinkStatus>>);

impl LinkBoard {
    /// The daemon's latest view.
    pub fn update(&self, links: &[LinkStatus]) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = links.to_vec();
    }

    fn links(&self) -> Vec<LinkStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Serves the metrics of `board`'s links on `addr`; the address it
/// listens on.
pub fn serve(addr: SocketAddr, board: Arc<LinkBoard>) -> io::Result<SocketAddr> {
    let mut registry = Registry::with_prefix("mptcp_paths");
    registry.register_collector(Box::new(LinksCollector(board)));
    super::listen(addr, Arc::new(LinkPages { registry }))
}

struct LinkPages {
    registry: Registry,
}

impl Pages for LinkPages {
    fn get(&self, path: &str, _query: &str) -> io::Result<Response> {
        match path {
            "/metrics" => metrics_response(&self.registry),
            _ => Ok((
                "404 Not Found",
                TEXT,
                "the links' metrics are at /metrics\n".to_owned(),
            )),
        }
    }
}

#[derive(Debug)]
struct LinksCollector(Arc<LinkBoard>);

/// Bytes received and sent per interface, from `/proc/net/dev` (of this
/// process's network namespace).
fn interface_bytes() -> HashMap<String, (u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let fields: Vec<u64> = counters
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            // Receive: bytes packets ... (8 fields); transmit: bytes ...
            Some((name.trim().to_owned(), (*fields.first()?, *fields.get(8)?)))
        })
        .collect()
}

impl Collector for LinksCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let links = self.0.links();
        let e = &mut encoder;
        let one = |on: bool| ConstGauge::new(i64::from(on));

        one_of(
            e,
            ("link_state", "1 for the state each link is in"),
            &links,
            "state",
            &STATES,
            |l| l.state,
        )?;
        one_of(
            e,
            ("link_role", "1 for the role of each link"),
            &links,
            "role",
            &ROLES,
            |l| l.role,
        )?;

        let names: Vec<[(&str, &str); 1]> = links
            .iter()
            .map(|l| [("link", l.ifname.as_str())])
            .collect();
        let usable: Vec<_> = names
            .iter()
            .zip(&links)
            .map(|(n, l)| (&n[..], one(l.usable())))
            .collect();
        family(
            e,
            "link_usable",
            "1 while MPTCP may send on the link",
            &usable,
        )?;
        let rtt: Vec<_> = names
            .iter()
            .zip(&links)
            .filter_map(|(n, l)| Some((&n[..], ConstGauge::new(l.rtt?.as_secs_f64()))))
            .collect();
        family(
            e,
            "link_probe_rtt_seconds",
            "Smoothed round-trip time of the link's probes",
            &rtt,
        )?;
        let loss: Vec<_> = names
            .iter()
            .zip(&links)
            .map(|(n, l)| (&n[..], ConstGauge::new(l.loss_percent / 100.0)))
            .collect();
        family(
            e,
            "link_probe_loss_ratio",
            "Share of the link's last probes that got no answer",
            &loss,
        )?;

        let bytes = interface_bytes();
        let labels: Vec<([(&str, &str); 2], u64)> = links
            .iter()
            .filter_map(|l| Some((l, bytes.get(&l.ifname)?)))
            .flat_map(|(l, &(received, sent))| {
                let link = l.ifname.as_str();
                [
                    ([("link", link), ("direction", "received")], received),
                    ([("link", link), ("direction", "sent")], sent),
                ]
            })
            .collect();
        let counters: Vec<_> = labels
            .iter()
            .map(|(l, n)| (&l[..], ConstCounter::new(*n)))
            .collect();
        family(
            e,
            "link_bytes",
            "Bytes through the link's interface",
            &counters,
        )
    }
}

/// A family with a gauge per link and per value of `choices` (labelled
/// `label`, by its `Display`): 1 for the link's value (`value_of`), 0 for
/// the others.
fn one_of<T: Copy + PartialEq + std::fmt::Display>(
    e: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    links: &[LinkStatus],
    label: &str,
    choices: &[T],
    value_of: fn(&LinkStatus) -> T,
) -> Result<(), std::fmt::Error> {
    let names: Vec<String> = choices.iter().map(ToString::to_string).collect();
    let labels: Vec<[(&str, &str); 2]> = links
        .iter()
        .flat_map(|l| {
            names
                .iter()
                .map(|c| [("link", l.ifname.as_str()), (label, c.as_str())])
        })
        .collect();
    let values: Vec<bool> = links
        .iter()
        .flat_map(|l| choices.iter().map(move |&c| value_of(l) == c))
        .collect();
    let gauges: Vec<_> = labels
        .iter()
        .zip(values)
        .map(|(l, on)| (&l[..], ConstGauge::new(i64::from(on))))
        .collect();
    family(e, name, help, &gauges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn every_link_has_one_state_and_one_role_set() {
        let board = Arc::new(LinkBoard::default());
        board.update(&[
            LinkStatus {
                ifname: "wan0".into(),
                ifindex: 2,
                state: LinkState::Up,
                role: LinkRole::Active,
                addr: None,
                rtt: Some(Duration::from_millis(12)),
                loss_percent: 0.0,
                since: SystemTime::now(),
            },
            LinkStatus {
                ifname: "lte0".into(),
                ifindex: 3,
                state: LinkState::Down,
                role: LinkRole::Backup,
                addr: None,
                rtt: None,
                loss_percent: 100.0,
                since: SystemTime::now(),
            },
        ]);
        let mut registry = Registry::with_prefix("mptcp_paths");
        registry.register_collector(Box::new(LinksCollector(board)));
        let text = crate::metrics::encode(&registry).unwrap();
        for line in [
            "mptcp_paths_link_state{link=\"wan0\",state=\"up\"} 1",
            "mptcp_paths_link_state{link=\"wan0\",state=\"down\"} 0",
            "mptcp_paths_link_state{link=\"lte0\",state=\"down\"} 1",
            "mptcp_paths_link_role{link=\"lte0\",role=\"backup\"} 1",
            "mptcp_paths_link_usable{link=\"wan0\"} 1",
            "mptcp_paths_link_usable{link=\"lte0\"} 0",
            "mptcp_paths_link_probe_rtt_seconds{link=\"wan0\"} 0.012",
            "mptcp_paths_link_probe_loss_ratio{link=\"lte0\"} 1.0",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("probe_rtt_seconds{link=\"lte0\""), "{text}");
    }
}
