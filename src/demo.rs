//! `mptcp demo`: link aggregation and failover, shown on any Linux machine
//! with MPTCP, in network namespaces made for the occasion.
//!
//! It builds a client and a server joined by rate-limited links (the test
//! bed's `two_links`), sends for a few seconds over one plain TCP connection,
//! then over MPTCP with live per-subflow rates, prints a comparison table,
//! and finally takes one link down in the middle of an MPTCP transfer to show
//! that the transfer goes on and that no byte is lost.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use mptcp_core::info;
use mptcp_testbed::data::Sample;
use mptcp_testbed::{Proto, Transfer, TransferReport, TwoLinks};

/// What the demo builds and how long it sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Number of links between client and server (2 to 8: one goes down in
    /// the failover run).
    pub links: usize,
    /// Rate limit of each link, Mbit/s.
    pub rate_mbit: u32,
    /// Length of each transfer, seconds.
    pub seconds: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            links: 2,
            rate_mbit: 20,
            seconds: 4,
        }
    }
}

impl Options {
    /// Parses `--links N`, `--rate MBIT` and `--seconds S` (also as
    /// `--name=value`), for callers without an argument parser of their own.
    pub fn from_args<S: AsRef<str>>(args: &[S]) -> Result<Options, String> {
        let mut opts = Options::default();
        let mut args = args.iter().map(AsRef::as_ref);
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (arg, None),
            };
            let value = inline
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))?;
            let number = |min: u64, max: u64| -> Result<u64, String> {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        format!("{name}: expected a number from {min} to {max}, got {value:?}")
                    })
            };
            match name {
                "--links" => opts.links = number(2, 8)? as usize,
                "--rate" => opts.rate_mbit = number(1, 10_000)? as u32,
                "--seconds" => opts.seconds = number(1, 600)? as u32,
                _ => {
                    return Err(format!(
                        "unknown option {name:?} (expected --links, --rate or --seconds)"
                    ));
                }
            }
        }
        Ok(opts)
    }
}

/// Runs the demo, printing to standard output. Call it while the process
/// has a single thread: without root it moves the process into a user
/// namespace of its own, which the kernel allows only then.
pub fn run(opts: &Options) -> io::Result<()> {
    if !(2..=8).contains(&opts.links) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the demo needs 2 to 8 links, not {}", opts.links),
        ));
    }
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        mptcp_testbed::enter_user_namespace()?;
    }
    mptcp_testbed::require_privileges()?;
    let mut out = Progress::new();
    let duration = Duration::from_secs(opts.seconds.into());
    let bed = mptcp_testbed::two_links(opts.links, Some(opts.rate_mbit))?;
    let sum_mbit = opts.rate_mbit as usize * opts.links;
    out.line(&format!(
        "{} links of {} Mbit/s between two network namespaces (client {} -> server {}), {} s per run",
        opts.links,
        opts.rate_mbit,
        bed.client_addr(0),
        bed.server_addr(),
        opts.seconds
    ));

    let tcp = transfer(&bed, &mut out, Proto::Tcp, duration, "single TCP", None)?;
    let mptcp = transfer(&bed, &mut out, Proto::Mptcp, duration, "MPTCP", None)?;
    let ratio = mptcp.mbit_per_s() / tcp.mbit_per_s();
    out.line("");
    out.line(&format!("{:<22}{:>10}", "", "Mbit/s"));
    out.line(&format!("{:<22}{:>10.1}", "single TCP", tcp.mbit_per_s()));
    out.line(&format!("{:<22}{:>10.1}", "MPTCP", mptcp.mbit_per_s()));
    out.line(&format!("{:<22}{:>9.2}x", "ratio MPTCP / TCP", ratio));
    out.line(&format!(
        "{:<22}{:>9.0}%",
        format!("of the {sum_mbit} Mbit/s sum"),
        mptcp.mbit_per_s() / sum_mbit as f64 * 100.0
    ));
    out.line("");

    let down_link = opts.links - 1;
    let failover = transfer(
        &bed,
        &mut out,
        Proto::Mptcp,
        duration.max(Duration::from_secs(3)),
        "MPTCP, failover",
        Some(down_link),
    )?;
    bed.links[down_link].up()?;
    if failover.intact() {
        out.line(&format!(
            "link {down_link} went down mid-transfer; the transfer went on over the other link{}: \
             {} bytes sent, {} received, checksums match: no byte lost",
            if opts.links > 2 { "s" } else { "" },
            failover.sent_bytes,
            failover.received_bytes
        ));
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "data lost in the failover run: {} bytes sent (checksum {:016x}), {} received \
             (checksum {:016x})",
            failover.sent_bytes,
            failover.sent_checksum,
            failover.received_bytes,
            failover.received_checksum
        )))
    }
}

/// One timed transfer with live progress; when `take_down` is given, that
/// link goes down a third of the way through.
fn transfer(
    bed: &TwoLinks,
    out: &mut Progress,
    proto: Proto,
    duration: Duration,
    label: &str,
    take_down: Option<usize>,
) -> io::Result<TransferReport> {
    let running = Transfer::start(&bed.client, &bed.server, bed.server_addr(), proto, duration)?;
    let start = Instant::now();
    let mut last = running.meter().sample();
    let mut subflow_bytes = BTreeMap::new();
    let mut down_at = take_down.map(|link| (link, duration / 3));
    let tick = Duration::from_millis(500);
    while start.elapsed() < duration {
        thread::sleep(tick.min(duration.saturating_sub(start.elapsed())));
        if let Some((link, at)) = down_at
            && start.elapsed() >= at
        {
            bed.links[link].down()?;
            out.line(&format!(
                "  link {link} ({} <-> {}) DOWN at {:.1} s",
                bed.client_addr(link),
                bed.links[link].addr(mptcp_testbed::Side::B),
                start.elapsed().as_secs_f64()
            ));
            down_at = None;
        }
        let now = running.meter().sample();
        let mut status = format!(
            "  {label:<16} {:>4.1}/{} s {:>7.1} Mbit/s",
            now.elapsed.as_secs_f64().min(duration.as_secs_f64()),
            duration.as_secs(),
            now.mbit_per_s_since(&last)
        );
        if proto == Proto::Mptcp {
            status.push_str(&subflow_rates(&running, &mut subflow_bytes, &last, &now));
        }
        out.status(&status);
        last = now;
    }
    let report = running.wait()?;
    out.line(&format!(
        "  {label:<16} done: {:.1} Mbit/s, {} bytes{}",
        report.mbit_per_s(),
        report.received_bytes,
        if report.intact() {
            ", checksum ok"
        } else {
            ", CHECKSUM MISMATCH"
        }
    ));
    Ok(report)
}

/// " | subflows: addr rate, ..." from the bytes each subflow had
/// acknowledged since the previous sample.
fn subflow_rates(
    running: &Transfer,
    previous: &mut BTreeMap<SocketAddr, u64>,
    last: &Sample,
    now: &Sample,
) -> String {
    let subflows = match info::subflows(running.client_socket()) {
        Ok(subflows) => subflows,
        Err(e) => return format!(" | subflows: ({e})"),
    };
    let interval = now.elapsed.saturating_sub(last.elapsed);
    let mut text = String::from(" | subflows:");
    for subflow in &subflows {
        let acked = subflow.tcp.bytes_acked;
        let before = previous.insert(subflow.local, acked).unwrap_or(0);
        let rate = mptcp_testbed::data::mbit_per_s(acked.saturating_sub(before), interval);
        let _ = write!(text, " {} {rate:.1}", subflow.local.ip());
    }
    text
}

/// Output that rewrites a status line in place on a terminal, and prints
/// one status line per second otherwise (logs, pipes, tests).
struct Progress {
    terminal: bool,
    status_shown: bool,
    last_plain: Option<Instant>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            terminal: io::stdout().is_terminal(),
            status_shown: false,
            last_plain: None,
        }
    }

    fn status(&mut self, text: &str) {
        let mut stdout = io::stdout().lock();
        if self.terminal {
            // Erase the line, then draw the new status without a newline.
            let _ = write!(stdout, "\r\x1b[2K{text}");
            self.status_shown = true;
        } else if self
            .last_plain
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(950))
        {
            let _ = writeln!(stdout, "{text}");
            self.last_plain = Some(Instant::now());
        }
        let _ = stdout.flush();
    }

    fn line(&mut self, text: &str) {
        let mut stdout = io::stdout().lock();
        if self.status_shown {
            let _ = write!(stdout, "\r\x1b[2K");
            self.status_shown = false;
        }
        let _ = writeln!(stdout, "{text}");
        let _ = stdout.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options() {
        assert_eq!(Options::from_args::<&str>(&[]).unwrap(), Options::default());
        assert_eq!(
            Options::from_args(&["--links", "3", "--rate=50", "--seconds", "2"]).unwrap(),
            Options {
                links: 3,
                rate_mbit: 50,
                seconds: 2
            }
        );
        assert!(Options::from_args(&["--links", "1"]).is_err());
        assert!(Options::from_args(&["--links", "9"]).is_err());
        assert!(Options::from_args(&["--rate"]).is_err());
        assert!(Options::from_args(&["--speed", "1"]).is_err());
    }
}
