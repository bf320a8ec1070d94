//! `mptcp status`: the MPTCP connections of this host with their subflows
//! and per-subflow rates, from the kernel's socket diagnostics.
//!
//! Rates are byte-counter deltas between two samples: by default two
//! samples `--interval` apart (1 s); `--counters` prints one sample's
//! counters at once; `--watch` keeps sampling until interrupted.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Args;
use mptcp_core::diag::{self, Connection, Subflow};
use serde_json::json;

use crate::failure::{CmdResult, Failure};

/// `mptcp status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Refresh every SECS seconds until interrupted
    #[arg(short, long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
    pub watch: Option<f64>,
    /// Time between the two samples rates are computed from
    #[arg(
        short,
        long,
        value_name = "SECS",
        default_value_t = 1.0,
        conflicts_with = "counters"
    )]
    pub interval: f64,
    /// Print byte counters of a single sample at once, without rates
    #[arg(short, long)]
    pub counters: bool,
    /// One JSON object per sample instead of the table
    #[arg(short, long)]
    pub json: bool,
}

/// Bytes per second, sent (acknowledged by the peer) and received.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rate {
    /// Sent.
    pub tx: f64,
    /// Received.
    pub rx: f64,
}

fn sample() -> Result<(Instant, Vec<Connection>), Failure> {
    let conns = diag::connections()
        .map_err(|e| Failure::io("reading MPTCP connections (sock_diag)", &e))?;
    Ok((Instant::now(), conns))
}

/// A subflow's identity between two samples: its addresses.
pub fn subflow_key(sf: &Subflow) -> (SocketAddr, SocketAddr) {
    (sf.local, sf.remote)
}

/// Per-subflow rates between two samples, by subflow addresses.
pub fn subflow_rates(
    before: &[Connection],
    after: &[Connection],
    secs: f64,
) -> HashMap<(SocketAddr, SocketAddr), Rate> {
    let old: HashMap<_, _> = before
        .iter()
        .flat_map(|c| &c.subflows)
        .map(|sf| (subflow_key(sf), sf))
        .collect();
    after
        .iter()
        .flat_map(|c| &c.subflows)
        .filter_map(|sf| {
            let prev = old.get(&subflow_key(sf))?;
            Some((
                subflow_key(sf),
                Rate {
                    tx: sf.bytes_acked.saturating_sub(prev.bytes_acked) as f64 / secs,
                    rx: sf.bytes_received.saturating_sub(prev.bytes_received) as f64 / secs,
                },
            ))
        })
        .collect()
}

/// `1.5 MB`, `12.3 Mbit/s`: SI units, as `ss` and iperf print them.
fn human(value: f64, unit: &str) -> String {
    const PREFIXES: [&str; 5] = ["", "k", "M", "G", "T"];
    let mut v = value;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < PREFIXES.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {}{unit}", PREFIXES[i])
    }
}

/// `850us`, `12.3ms`.
fn rtt(us: u32) -> String {
    if us < 1000 {
        format!("{us}us")
    } else {
        format!("{:.1}ms", f64::from(us) / 1000.0)
    }
}

fn subflow_flags(sf: &Subflow) -> String {
    let mut flags = Vec::new();
    if sf.backup_local || sf.backup_remote {
        flags.push("backup");
    }
    if !sf.fully_established {
        flags.push("joining");
    }
    flags.join(",")
}

fn print_table(
    out: &mut impl Write,
    conns: &[Connection],
    rates: Option<&HashMap<(SocketAddr, SocketAddr), Rate>>,
) -> std::io::Result<()> {
    match conns.len() {
        0 => return writeln!(out, "no MPTCP connections"),
        1 => writeln!(out, "1 MPTCP connection")?,
        n => writeln!(out, "{n} MPTCP connections")?,
    }
    for conn in conns {
        let total = rates.map(|r| {
            conn.subflows
                .iter()
                .filter_map(|sf| r.get(&subflow_key(sf)))
                .fold(Rate::default(), |a, b| Rate {
                    tx: a.tx + b.tx,
                    rx: a.rx + b.rx,
                })
        });
        write!(
            out,
            "{:<10} {} -> {}  token {:08x}  subflows {}",
            diag::state_name(conn.state),
            conn.local,
            conn.remote,
            conn.token,
            conn.subflows.len()
        )?;
        if conn.fallback {
            write!(out, "  FALLBACK to TCP")?;
        }
        if let Some(bytes) = conn.bytes {
            write!(
                out,
                "  sent {}  received {}",
                human(bytes.sent as f64, "B"),
                human(bytes.received as f64, "B")
            )?;
        }
        if let Some(t) = total {
            write!(
                out,
                "  tx {}  rx {}",
                human(t.tx * 8.0, "bit/s"),
                human(t.rx * 8.0, "bit/s")
            )?;
        }
        writeln!(out)?;
        for sf in &conn.subflows {
            write!(
                out,
                "  subflow {} -> {}  id {}/{}  {}  rtt {}  cwnd {}  retrans {}",
                sf.local,
                sf.remote,
                sf.local_id,
                sf.remote_id,
                diag::state_name(sf.state),
                rtt(sf.rtt_us),
                sf.cwnd,
                sf.total_retrans
            )?;
            match rates.and_then(|r| r.get(&subflow_key(sf))) {
                Some(r) => write!(
                    out,
                    "  tx {}  rx {}",
                    human(r.tx * 8.0, "bit/s"),
                    human(r.rx * 8.0, "bit/s")
                )?,
                None => write!(
                    out,
                    "  acked {}  received {}",
                    human(sf.bytes_acked as f64, "B"),
                    human(sf.bytes_received as f64, "B")
                )?,
            }
            let flags = subflow_flags(sf);
            if !flags.is_empty() {
                write!(out, "  [{flags}]")?;
            }
            writeln!(out)?;
        }
    }
    Ok(())
}

/// Connections and their subflows (with rates, when known) as JSON, as
/// `mptcp status --json` prints them.
pub fn to_json(
    conns: &[Connection],
    rates: Option<&HashMap<(SocketAddr, SocketAddr), Rate>>,
) -> serde_json::Value {
    let conns: Vec<_> = conns
        .iter()
        .map(|c| {
            let subflows: Vec<_> = c
                .subflows
                .iter()
                .map(|sf| {
                    let rate = rates.and_then(|r| r.get(&subflow_key(sf)));
                    json!({
                        "local": sf.local.to_string(),
                        "remote": sf.remote.to_string(),
                        "state": diag::state_name(sf.state),
                        "local_id": sf.local_id,
                        "remote_id": sf.remote_id,
                        "backup": sf.backup_local || sf.backup_remote,
                        "fully_established": sf.fully_established,
                        "bytes_sent": sf.bytes_sent,
                        "bytes_acked": sf.bytes_acked,
                        "bytes_received": sf.bytes_received,
                        "rtt_us": sf.rtt_us,
                        "cwnd": sf.cwnd,
                        "total_retrans": sf.total_retrans,
                        "delivery_rate_bps": sf.delivery_rate * 8,
                        "tx_bps": rate.map(|r| r.tx * 8.0),
                        "rx_bps": rate.map(|r| r.rx * 8.0),
                    })
                })
                .collect();
            json!({
                "local": c.local.to_string(),
                "remote": c.remote.to_string(),
                "state": diag::state_name(c.state),
                "token": format!("{:08x}", c.token),
                "inode": c.inode,
                "uid": c.uid,
                "fallback": c.fallback,
                "bytes_sent": c.bytes.map(|b| b.sent),
                "bytes_received": c.bytes.map(|b| b.received),
                "bytes_acked": c.bytes.map(|b| b.acked),
                "subflows": subflows,
            })
        })
        .collect();
    json!({ "connections": conns })
}

fn seconds(value: f64, flag: &str) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| Failure::usage(format!("{flag} {value}: give a positive number of seconds")))
}

/// `mptcp status`.
pub fn run(args: StatusArgs) -> CmdResult {
    let stdout = std::io::stdout();
    let show = |conns: &[Connection], rates: Option<&HashMap<_, Rate>>| {
        let mut out = stdout.lock();
        let res = if args.json {
            let mut status = to_json(conns, rates);
            if let Some(links) = crate::links::json() {
                status["links"] = links;
            }
            if let Some(remotes) = crate::remotes::json(conns) {
                status["remotes"] = remotes;
            }
            writeln!(out, "{status}")
        } else {
            print_table(&mut out, conns, rates)
                .and_then(|()| crate::links::print_section(&mut out))
                .and_then(|()| crate::remotes::print_section(&mut out, conns))
        };
        res.and_then(|()| out.flush())
            .map_err(|e| Failure::failed(format!("writing the status: {e}")))
    };
    if args.counters {
        let (_, conns) = sample()?;
        return show(&conns, None);
    }
    let interval = seconds(args.watch.unwrap_or(args.interval), "--interval/--watch")?;
    let (mut t0, mut before) = sample()?;
    loop {
        std::thread::sleep(interval);
        let (t1, after) = sample()?;
        let rates = subflow_rates(&before, &after, (t1 - t0).as_secs_f64());
        if args.watch.is_some() && !args.json {
            // Clear the screen and go home, as `watch` does.
            print!("\x1b[H\x1b[2J");
        }
        show(&after, Some(&rates))?;
        if args.watch.is_none() {
            return Ok(());
        }
        (t0, before) = (t1, after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human(0.0, "B"), "0 B");
        assert_eq!(human(999.0, "B"), "999 B");
        assert_eq!(human(1_500_000.0, "bit/s"), "1.5 Mbit/s");
        assert_eq!(rtt(850), "850us");
        assert_eq!(rtt(12_345), "12.3ms");
    }
}
