//! The relay's counters in the Prometheus text format (version 0.0.4,
//! encoded by `prometheus-client`), served at `/metrics` by
//! [`crate::web`]: the engine's counters, read at each scrape, and from
//! the sampler's last sample (a second old at most) the relay's MPTCP
//! connections by subflow count and each link's subflows, bytes,
//! retransmissions and RTT. Labels stay few: error kinds, directions,
//! subflow counts up to `8+`, and links (at most 32, then `others`).

use std::net::SocketAddr;
use std::sync::Arc;

use mptcp_core::relay::{ErrorKind, UdpDrop};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::web::Sampler;

/// The port `--metrics PORT` and the address `--metrics ADDR:PORT`; a port
/// alone listens on loopback only.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|_| format!("{text:?}: give PORT (on 127.0.0.1) or ADDR:PORT"))
}

/// The registry of the relay sampled by `sampler`, prefixed `mptcp_relay`.
pub fn registry(sampler: Arc<Sampler>) -> Registry {
    let mut registry = Registry::with_prefix("mptcp_relay");
    registry.register_collector(Box::new(RelayCollector(sampler)));
    registry
}

/// The metrics of `registry` in the text format.
pub fn encode(registry: &Registry) -> std::io::Result<String> {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
        .map_err(|_| std::io::Error::other("encoding the metrics"))?;
    Ok(text)
}

/// The relay's metrics, read at each scrape.
#[derive(Debug)]
struct RelayCollector(Arc<Sampler>);

/// Subflow counts of connections as labels: `0` to `7`, then `8+`.
const SUBFLOW_COUNTS: [&str; 9] = ["0", "1", "2", "3", "4", "5", "6", "7", "8+"];

/// One metric family of `value`s, each with its labels.
pub fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(&[(&str, &str)], M)],
) -> Result<(), std::fmt::Error> {
    let Some((_, first)) = values.first() else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, value) in values {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// One counter family with one label, `label`, whose values name the
/// counters.
fn counters_by(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let labels: Vec<[(&str, &str); 1]> = values.iter().map(|(v, _)| [(label, *v)]).collect();
    let counters: Vec<(&[(&str, &str)], _)> = labels
        .iter()
        .zip(values)
        .map(|(l, (_, n))| (&l[..], ConstCounter::new(*n)))
        .collect();
    family(encoder, name, help, &counters)
}

impl Collector for RelayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.totals();
        let e = &mut encoder;
        let counter = |v: u64| ConstCounter::new(v);
        let none: &[(&str, &str)] = &[];
        for (name, help, value) in [
            ("connections_accepted", "Connections accepted", s.accepted),
            (
                "connections_relayed",
                "Connections that reached the data phase",
                s.relayed,
            ),
            (
                "multiplexed_streams",
                "Connections carried as streams of a multiplexed session",
                s.multiplexed,
            ),
            (
                "splice_fallbacks",
                "Times splice() was refused and a buffered copy took over",
                s.splice_fallbacks,
            ),
            (
                "session_errors",
                "Sessions closed because the other relay broke the protocol",
                s.session_errors,
            ),
            (
                "worker_panics",
                "Worker panics caught (bugs; the worker serves on)",
                s.worker_panics,
            ),
            (
                "direct",
                "Connections sent directly because no remote relay worked",
                s.direct,
            ),
            (
                "udp_associations_opened",
                "SOCKS5 UDP associations opened",
                s.udp.associations_opened,
            ),
        ] {
            family(e, name, help, &[(none, counter(value))])?;
        }
        for (name, help, value) in [
            (
                "connections_active",
                "Connections open now (handshaking or relaying)",
                s.active,
            ),
            (
                "sessions",
                "Multiplexed sessions with the other relay open now",
                s.sessions,
            ),
            (
                "udp_associations",
                "SOCKS5 UDP associations open now",
                s.udp.associations,
            ),
        ] {
            family(e, name, help, &[(none, ConstGauge::new(value))])?;
        }
        let errors = ErrorKind::ALL.map(|k| (k.name(), s.error(k)));
        counters_by(e, "errors", "Failed connections by kind", "kind", &errors)?;
        for (name, help, up, down) in [
            (
                "bytes",
                "Bytes relayed: up from clients, down from destinations",
                s.bytes_up,
                s.bytes_down,
            ),
            (
                "udp_datagrams",
                "Datagrams of UDP associations: up from clients, down from destinations",
                s.udp.datagrams_up,
                s.udp.datagrams_down,
            ),
            (
                "udp_bytes",
                "Payload bytes of UDP associations: up from clients, down from destinations",
                s.udp.bytes_up,
                s.udp.bytes_down,
            ),
        ] {
            counters_by(e, name, help, "direction", &[("up", up), ("down", down)])?;
        }
        let drops = UdpDrop::ALL.map(|k| (k.name(), s.udp.dropped(k)));
        counters_by(
            e,
            "udp_drops",
            "Datagrams of UDP associations dropped, by reason",
            "reason",
            &drops,
        )?;
        self.encode_subflows(e)?;
        self.encode_remotes(e)
    }
}

impl RelayCollector {
    /// A local relay's remotes: state, PING round trip, sessions and
    /// connections.
    fn encode_remotes(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let remotes = self.0.serving().remotes();
        let names: Vec<String> = remotes.iter().map(|r| r.addr.to_string()).collect();
        let states: Vec<[(&str, &str); 2]> = remotes
            .iter()
            .zip(&names)
            .map(|(r, n)| [("remote", n.as_str()), ("state", r.state.name())])
            .collect();
        let values: Vec<(&[(&str, &str)], _)> = states
            .iter()
            .map(|l| (&l[..], ConstGauge::new(1u64)))
            .collect();
        family(
            e,
            "remote_state",
            "Each remote relay's state: up, probation (answering again, not yet taking \
             connections) or down",
            &values,
        )?;
        let labels: Vec<[(&str, &str); 1]> =
            names.iter().map(|n| [("remote", n.as_str())]).collect();
        let per_remote = |value: fn(&mptcp_core::relay::RemoteStatus) -> u64| {
            labels
                .iter()
                .zip(&remotes)
                .map(|(l, r)| (&l[..], ConstGauge::new(value(r))))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "remote_sessions",
            "Sessions to each remote relay now",
            &per_remote(|r| r.sessions),
        )?;
        family(
            e,
            "remote_connections",
            "Connections through each remote relay now",
            &per_remote(|r| r.connections),
        )?;
        let rtts: Vec<(&[(&str, &str)], _)> = labels
            .iter()
            .zip(&remotes)
            .filter_map(|(l, r)| Some((&l[..], ConstGauge::new(r.rtt?.as_secs_f64()))))
            .collect();
        family(
            e,
            "remote_rtt_seconds",
            "The last PING round trip to each remote relay",
            &rtts,
        )
    }

    /// The metrics of the sampler's last sample: connections by subflow
    /// count, and per link.
    fn encode_subflows(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.0.state();
        let connections = state.connections();
        let mut by_count = [0u64; SUBFLOW_COUNTS.len()];
        for c in connections {
            by_count[c.subflows.len().min(SUBFLOW_COUNTS.len() - 1)] += 1;
        }
        let labels: Vec<[(&str, &str); 1]> =
            SUBFLOW_COUNTS.iter().map(|n| [("subflows", *n)]).collect();
        let values: Vec<(&[(&str, &str)], _)> = labels
            .iter()
            .zip(by_count)
            .map(|(l, n)| (&l[..], ConstGauge::new(n)))
            .collect();
        family(
            e,
            "mptcp_connections",
            "The relay's MPTCP connections (sessions with the other relay, connections \
             of their own) by their number of subflows",
            &values,
        )?;
        let fallback = connections.iter().filter(|c| c.fallback).count() as u64;
        family(
            e,
            "mptcp_fallback_connections",
            "Of those, connections that fell back to plain TCP",
            &[(&[], ConstGauge::new(fallback))],
        )?;
        let links: Vec<(String, &crate::web::Link)> = state
            .links
            .iter()
            .map(|(addr, link)| (addr.to_string(), link))
            .collect();
        let per_link = |value: fn(&crate::web::Link) -> u64| {
            links
                .iter()
                .map(|(addr, link)| ([("link", addr.as_str())], value(link)))
                .collect::<Vec<_>>()
        };
        let subflows = per_link(|l| l.subflows as u64);
        let gauges: Vec<(&[(&str, &str)], _)> = subflows
            .iter()
            .map(|(l, n)| (&l[..], ConstGauge::new(*n)))
            .collect();
        family(
            e,
            "link_subflows",
            "Subflows of the relay's connections per link (local address) now",
            &gauges,
        )?;
        let bytes: Vec<([(&str, &str); 2], u64)> = links
            .iter()
            .flat_map(|(addr, link)| {
                [
                    (
                        [("link", addr.as_str()), ("direction", "sent")],
                        link.bytes_sent,
                    ),
                    (
                        [("link", addr.as_str()), ("direction", "received")],
                        link.bytes_received,
                    ),
                ]
            })
            .collect();
        let counters: Vec<(&[(&str, &str)], _)> = bytes
            .iter()
            .map(|(l, n)| (&l[..], ConstCounter::new(*n)))
            .collect();
        family(
            e,
            "link_bytes",
            "Bytes of the relay's subflows per link: sent (acknowledged) and received, \
             sampled each second",
            &counters,
        )?;
        let retransmits = per_link(|l| l.retransmits);
        let counters: Vec<(&[(&str, &str)], _)> = retransmits
            .iter()
            .map(|(l, n)| (&l[..], ConstCounter::new(*n)))
            .collect();
        family(
            e,
            "link_retransmits",
            "Retransmitted segments of the relay's subflows per link",
            &counters,
        )?;
        let rtts: Vec<(&[(&str, &str)], _)> = links
            .iter()
            .zip(&subflows)
            .filter_map(|((_, link), (l, _))| {
                let us = link.rates.rtt_us?;
                Some((&l[..], ConstGauge::new(f64::from(us) / 1e6)))
            })
            .collect();
        family(
            e,
            "link_rtt_seconds",
            "Mean smoothed RTT of the relay's subflows per link",
            &rtts,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_alone_listens_on_loopback() {
        assert_eq!(parse_listen("9464"), Ok("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(parse_listen("[::]:9464"), Ok("[::]:9464".parse().unwrap()));
        assert!(parse_listen("localhost").is_err());
    }
}
