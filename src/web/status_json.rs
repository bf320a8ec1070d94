//! `GET /status.json`: what the status page shows, polled by it. The
//! counters are read at the request, as `/metrics` reads them; the rest is
//! the sampler's last sample. `?points_after=UNIX_MS&events_after=SEQ`
//! leaves out the history and events the page already has.

use mptcp_core::relay::ErrorKind;
use serde_json::{Map, Value, json};

use super::sampler::{LinkRates, Sampler};
use crate::events;

/// Connections listed at most, the busiest first (a server may have many).
pub const MAX_CONNECTIONS: usize = 50;

/// What the page already has.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Since {
    /// The newest history point it has, in milliseconds since the epoch.
    pub points_after: u64,
    /// The sequence number of the newest event it has.
    pub events_after: u64,
}

impl Since {
    /// From a query string (`points_after=..&events_after=..`); unknown or
    /// malformed parameters count as absent.
    pub fn from_query(query: &str) -> Since {
        let mut since = Since::default();
        for (key, value) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            let Ok(value) = value.parse() else { continue };
            match key {
                "points_after" => since.points_after = value,
                "events_after" => since.events_after = value,
                _ => {}
            }
        }
        since
    }
}

fn rates_json(rates: &LinkRates) -> Value {
    json!({
        "sent_bps": rates.sent * 8.0,
        "received_bps": rates.received * 8.0,
        "rtt_us": rates.rtt_us,
    })
}

/// The page's data for role `role`.
pub fn status(sampler: &Sampler, role: &str, since: Since) -> Value {
    let (totals, listeners, remotes) = {
        let serving = sampler.serving();
        (serving.totals(), serving.listeners(), serving.remotes())
    };
    let errors: Map<String, Value> = ErrorKind::ALL
        .iter()
        .map(|&k| (k.name().to_owned(), totals.error(k).into()))
        .collect();
    let state = sampler.state();
    let links: Vec<Value> = state
        .links
        .iter()
        .map(|(addr, l)| {
            let mut link = rates_json(&l.rates);
            link["link"] = addr.to_string().into();
            link["subflows"] = l.subflows.into();
            link["bytes_sent"] = l.bytes_sent.into();
            link["bytes_received"] = l.bytes_received.into();
            link["retransmits"] = l.retransmits.into();
            link
        })
        .collect();
    let mut busiest: Vec<_> = state.connections().to_vec();
    let rate_of = |c: &mptcp_core::diag::Connection| -> f64 {
        c.subflows
            .iter()
            .filter_map(|sf| state.rates.get(&crate::status::subflow_key(sf)))
            .map(|r| r.tx + r.rx)
            .sum()
    };
    busiest.sort_by(|a, b| rate_of(b).total_cmp(&rate_of(a)));
    busiest.truncate(MAX_CONNECTIONS);
    let shown = crate::status::to_json(&busiest, Some(&state.rates))["connections"].take();
    let points: Vec<Value> = state
        .points
        .iter()
        .filter(|p| p.unix_ms > since.points_after)
        .map(|p| {
            let links: Map<String, Value> = p
                .links
                .iter()
                .map(|(name, r)| (name.to_string(), rates_json(r)))
                .collect();
            json!({
                "t": p.unix_ms,
                "up_bps": p.up * 8.0,
                "down_bps": p.down * 8.0,
                "links": links,
            })
        })
        .collect();
    let events: Vec<Value> = events::recent()
        .into_iter()
        .filter(|e| e.seq > since.events_after)
        .map(|e| {
            json!({
                "seq": e.seq,
                "t": e.unix_ms,
                "level": e.level.as_str(),
                "text": e.text,
            })
        })
        .collect();
    let remotes: Vec<Value> = remotes
        .iter()
        .map(|r| {
            json!({
                "remote": r.addr.to_string(),
                "state": r.state.name(),
                "rtt_us": r.rtt.map(|d| d.as_micros() as u64),
                "sessions": r.sessions,
                "connections": r.connections,
            })
        })
        .collect();
    json!({
        "role": role,
        "remotes": remotes,
        "version": env!("CARGO_PKG_VERSION"),
        "started": sampler.started_unix_ms,
        "now": events::unix_ms_now(),
        "period_ms": super::sampler::PERIOD.as_millis() as u64,
        "listeners": listeners
            .iter()
            .map(|(kind, addr)| format!("{kind:?} on {addr}"))
            .collect::<Vec<_>>(),
        "counters": {
            "accepted": totals.accepted,
            "active": totals.active,
            "relayed": totals.relayed,
            "bytes_up": totals.bytes_up,
            "bytes_down": totals.bytes_down,
            "sessions": totals.sessions,
            "multiplexed": totals.multiplexed,
            "splice_fallbacks": totals.splice_fallbacks,
            "session_errors": totals.session_errors,
            "worker_panics": totals.worker_panics,
            "udp_associations": totals.udp.associations,
            "udp_datagrams_up": totals.udp.datagrams_up,
            "udp_datagrams_down": totals.udp.datagrams_down,
        },
        "errors": errors,
        "links": links,
        "links_by": state.link_end.describe(),
        "connections": {
            "total": state.connections().len(),
            "shown": shown,
        },
        "unavailable": state.unavailable,
        "points": points,
        "events": events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_says_what_the_page_has() {
        assert_eq!(
            Since::from_query("points_after=17&events_after=3"),
            Since {
                points_after: 17,
                events_after: 3
            }
        );
        assert_eq!(
            Since::from_query("events_after=x&other=1&points_after"),
            Since::default()
        );
    }
}
