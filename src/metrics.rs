//! `mptcp relay --metrics ADDR`: the relay's counters in the Prometheus
//! text format (version 0.0.4, encoded by `prometheus-client`) at
//! `GET /metrics`, from a small blocking HTTP server on its own thread.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mptcp_core::relay::{ErrorKind, Stats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::relay::Serving;

/// The port `--metrics PORT` and the address `--metrics ADDR:PORT`; a port
/// alone listens on loopback only.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|_| format!("{text:?}: give PORT (on 127.0.0.1) or ADDR:PORT"))
}

/// The relay's counters, read at each scrape.
#[derive(Debug)]
struct RelayCollector(Arc<Mutex<Serving>>);

impl RelayCollector {
    fn totals(&self) -> Stats {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .totals()
    }
}

/// One metric family of `value`s, each with its labels.
fn family<M: EncodeMetric>(
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

impl Collector for RelayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.totals();
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
        ] {
            family(e, name, help, &[(none, ConstGauge::new(value))])?;
        }
        family(
            e,
            "bytes",
            "Bytes relayed: up from clients, down from destinations",
            &[
                (&[("direction", "up")], counter(s.bytes_up)),
                (&[("direction", "down")], counter(s.bytes_down)),
            ],
        )?;
        let labels: Vec<[(&str, &str); 1]> = ErrorKind::ALL
            .iter()
            .map(|k| [("kind", k.name())])
            .collect();
        let errors: Vec<(&[(&str, &str)], _)> = labels
            .iter()
            .zip(ErrorKind::ALL)
            .map(|(l, k)| (&l[..], counter(s.error(k))))
            .collect();
        family(e, "errors", "Failed connections by kind", &errors)
    }
}

/// Serves the counters of `serving` at `http://addr/metrics` from a thread;
/// the address it listens on (with the actual port when 0 was asked).
pub fn serve(addr: SocketAddr, serving: Arc<Mutex<Serving>>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let mut registry = Registry::with_prefix("mptcp_relay");
    registry.register_collector(Box::new(RelayCollector(serving)));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let result = conn.and_then(|mut conn| answer(&mut conn, &registry));
                if let Err(e) = result {
                    tracing::debug!("metrics: {e}");
                }
            }
        })?;
    Ok(addr)
}

/// Reads one request and answers it; one request per connection.
fn answer(conn: &mut TcpStream, registry: &Registry) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 || head.len() > 8192 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no complete request head",
            ));
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (words.next(), words.next());
    let (status, content_type, body) = match (method, path) {
        (Some(b"GET" | b"HEAD"), Some(b"/metrics")) => {
            let mut text = String::new();
            prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
                .map_err(|_| io::Error::other("encoding the metrics"))?;
            (
                "200 OK",
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                text,
            )
        }
        (Some(b"GET" | b"HEAD"), _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "the metrics are at /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET /metrics\n".to_owned(),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if method != Some(b"HEAD") {
        response += &body;
    }
    conn.write_all(response.as_bytes())
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
