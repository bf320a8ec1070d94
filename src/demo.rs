//! `mptcp demo`: link aggregation and failover, shown on any Linux machine
//! with MPTCP, in network namespaces made for the occasion.
//!
//! It builds a client and a server joined by rate-limited links (the test
//! bed's `two_links_with`), identical or each with its own rate, delay and
//! buffer, sends for a few seconds over one plain TCP connection on each
//! kind of link, then over MPTCP with live per-subflow rates, prints a
//! comparison table (each link alone, their sum, the aggregate), and finally
//! takes one link down in the middle of an MPTCP transfer to show that the
//! transfer goes on and that no byte is lost, with how long it stalled and
//! how long it took to be back at speed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use mptcp_core::info;
use mptcp_testbed::data::Sample;
use mptcp_testbed::{LinkSpec, Proto, Side, Transfer, TransferReport, TwoLinks};

/// What the demo builds and how long it sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The links between client and server, 2 to 8 (one goes down in the
    /// failover run).
    pub links: Vec<LinkSpec>,
    /// Length of each transfer, seconds.
    pub seconds: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            links: vec![LinkSpec::rate(Some(20)); 2],
            seconds: 4,
        }
    }
}

impl Options {
    /// Parses `--links N` and `--rate MBIT` (N identical links), or
    /// `--link RATE[:DELAY[:BUFFER]]` once per link (e.g. `--link 20:5ms
    /// --link 20:75ms`, see [`LinkSpec`]), and `--seconds S` (also as
    /// `--name=value`), for callers without an argument parser of their own.
    pub fn from_args<S: AsRef<str>>(args: &[S]) -> Result<Options, String> {
        let mut opts = Options::default();
        let (mut count, mut rate, mut specs) = (None, None, Vec::new());
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
                "--links" => count = Some(number(2, 8)? as usize),
                "--rate" => rate = Some(number(1, 10_000)? as u32),
                "--link" => specs.push(
                    value
                        .parse::<LinkSpec>()
                        .map_err(|e| format!("--link: {e}"))?,
                ),
                "--seconds" => opts.seconds = number(1, 600)? as u32,
                _ => {
                    return Err(format!(
                        "unknown option {name:?} (expected --links, --rate, --link or --seconds)"
                    ));
                }
            }
        }
        if specs.is_empty() {
            opts.links = vec![LinkSpec::rate(Some(rate.unwrap_or(20))); count.unwrap_or(2)];
        } else if count.is_some() || rate.is_some() {
            return Err("--link describes each link: give it once per link, \
                        without --links or --rate"
                .to_owned());
        } else if !(2..=8).contains(&specs.len()) {
            return Err(format!(
                "--link: the demo needs 2 to 8 links, got {}",
                specs.len()
            ));
        } else {
            opts.links = specs;
        }
        Ok(opts)
    }
}

/// A link for people: `20 Mbit/s, 75 ms, 200 ms buffer`.
fn describe(spec: &LinkSpec) -> String {
    let mut text = match spec.rate_mbit {
        Some(rate) => format!("{rate} Mbit/s"),
        None => "unlimited".to_owned(),
    };
    if !spec.delay.is_zero() {
        let _ = write!(text, ", {} ms", spec.delay.as_secs_f64() * 1e3);
    }
    if spec.rate_mbit.is_some() && spec.buffer != LinkSpec::DEFAULT_BUFFER {
        let _ = write!(text, ", {} ms buffer", spec.buffer.as_secs_f64() * 1e3);
    }
    text
}

/// Runs the demo, printing to standard output. Call it while the process
/// has a single thread: without root it moves the process into a user
/// namespace of its own, which the kernel allows only then.
pub fn run(opts: &Options) -> io::Result<()> {
    let n_links = opts.links.len();
    if !(2..=8).contains(&n_links) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the demo needs 2 to 8 links, not {n_links}"),
        ));
    }
    if !mptcp_core::sys::process::is_root() {
        mptcp_testbed::enter_user_namespace()?;
    }
    mptcp_testbed::require_privileges()?;
    let mut out = Progress::new();
    let duration = Duration::from_secs(opts.seconds.into());
    let bed = mptcp_testbed::two_links_with(&opts.links)?;
    let identical = opts.links.iter().all(|spec| *spec == opts.links[0]);
    let kinds = if identical {
        format!("{n_links} links of {}", describe(&opts.links[0]))
    } else {
        let each: Vec<String> = opts
            .links
            .iter()
            .enumerate()
            .map(|(i, spec)| format!("link {i} {}", describe(spec)))
            .collect();
        format!("{n_links} links ({})", each.join("; "))
    };
    out.line(&format!(
        "{kinds} between two network namespaces (client {} -> server {}), {} s per run",
        bed.client_addr(0),
        bed.server_addr(),
        opts.seconds
    ));

    // One single-TCP run per kind of link: identical links share theirs.
    let mut alone: Vec<(LinkSpec, Vec<usize>, TransferReport)> = Vec::new();
    for (i, spec) in opts.links.iter().enumerate() {
        if let Some((_, links, _)) = alone.iter_mut().find(|(s, _, _)| s == spec) {
            links.push(i);
            continue;
        }
        let label = format!("TCP, link {i}");
        let (report, _) = transfer(&bed, &mut out, Proto::Tcp, i, duration, &label, None)?;
        alone.push((*spec, vec![i], report));
    }
    let (mptcp, _) = transfer(&bed, &mut out, Proto::Mptcp, 0, duration, "MPTCP", None)?;
    let sum: f64 = alone
        .iter()
        .map(|(_, links, report)| report.mbit_per_s() * links.len() as f64)
        .sum();
    let best = alone
        .iter()
        .map(|(_, _, report)| report.mbit_per_s())
        .fold(0.0, f64::max);
    let mut rows = Vec::new();
    for (spec, links, report) in &alone {
        let (first, others) = links.split_first().expect("a link per run");
        let alike = match others {
            [] => String::new(),
            [other] => format!("; link {other} the same"),
            others => format!("; links {} the same", join(others)),
        };
        rows.push((
            format!("single TCP, link {first} ({}{alike})", describe(spec)),
            format!("{:.1}", report.mbit_per_s()),
        ));
    }
    rows.push(("sum of single TCP".to_owned(), format!("{sum:.1}")));
    rows.push(("MPTCP".to_owned(), format!("{:.1}", mptcp.mbit_per_s())));
    rows.push((
        "ratio MPTCP / best link".to_owned(),
        format!("{:.2}x", mptcp.mbit_per_s() / best),
    ));
    rows.push((
        "of the sum of single TCP".to_owned(),
        format!("{:.0}%", mptcp.mbit_per_s() / sum * 100.0),
    ));
    let rates: Option<u32> = opts.links.iter().map(|spec| spec.rate_mbit).sum();
    if let Some(rates) = rates {
        rows.push((
            format!("of the {rates} Mbit/s sum of rates"),
            format!("{:.0}%", mptcp.mbit_per_s() / f64::from(rates) * 100.0),
        ));
    }
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0) + 2;
    out.line("");
    out.line(&format!("{:<width$}{:>8}", "", "Mbit/s"));
    for (label, value) in rows {
        out.line(&format!("{label:<width$}{value:>8}"));
    }
    out.line("");

    let down_link = n_links - 1;
    // What the other links carry: the sum of their single-TCP rates.
    let remaining_mbit: f64 = alone
        .iter()
        .map(|(_, links, report)| {
            let others = links.iter().filter(|&&l| l != down_link).count();
            report.mbit_per_s() * others as f64
        })
        .sum();
    let (failover, watch) = transfer(
        &bed,
        &mut out,
        Proto::Mptcp,
        0,
        duration.max(Duration::from_secs(3)),
        "MPTCP, failover",
        Some((down_link, remaining_mbit)),
    )?;
    bed.links[down_link].up()?;
    if failover.intact() {
        out.line(&format!(
            "link {down_link} went down mid-transfer; the transfer went on over the other link{}: \
             {} bytes sent, {} received, checksums match: no byte lost",
            if n_links > 2 { "s" } else { "" },
            failover.sent_bytes,
            failover.received_bytes
        ));
        if let Some(watch) = watch {
            out.line(&watch.summary());
        }
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

/// "0, 1 and 2".
fn join(links: &[usize]) -> String {
    let names: Vec<String> = links.iter().map(usize::to_string).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => names.concat(),
    }
}

/// The server's address on link `link` (198.18.link.2): a plain TCP
/// connection to it goes over that link only.
fn server_addr_on(bed: &TwoLinks, link: usize) -> Ipv4Addr {
    bed.links[link].addr(Side::B)
}

/// What a link failure did to a running transfer: the longest time no byte
/// arrived after it, and how long until the throughput was back at 80% of
/// what the remaining links carry.
struct FailoverWatch {
    down: Sample,
    last_byte: Sample,
    longest_stall: Duration,
    /// The samples of the last [`Self::WINDOW`].
    window: std::collections::VecDeque<Sample>,
    target_mbit: f64,
    recovered_after: Option<Duration>,
}

impl FailoverWatch {
    /// The throughput is measured over this long.
    const WINDOW: Duration = Duration::from_millis(500);

    fn new(down: Sample, remaining_mbit: f64) -> FailoverWatch {
        FailoverWatch {
            down,
            last_byte: down,
            longest_stall: Duration::ZERO,
            window: [down].into(),
            target_mbit: remaining_mbit * 0.8,
            recovered_after: None,
        }
    }

    fn observe(&mut self, now: Sample) {
        if now.bytes > self.last_byte.bytes {
            self.last_byte = now;
        } else {
            let stall = now.elapsed.saturating_sub(self.last_byte.elapsed);
            self.longest_stall = self.longest_stall.max(stall);
        }
        self.window.push_back(now);
        while self
            .window
            .front()
            .is_some_and(|s| now.elapsed.saturating_sub(s.elapsed) > Self::WINDOW)
        {
            self.window.pop_front();
        }
        let first = self.window.front().copied().unwrap_or(now);
        if self.recovered_after.is_none()
            && now.elapsed.saturating_sub(first.elapsed) >= Self::WINDOW * 4 / 5
            && now.mbit_per_s_since(&first) >= self.target_mbit
        {
            self.recovered_after = Some(now.elapsed.saturating_sub(self.down.elapsed));
        }
    }

    fn summary(&self) -> String {
        let back = match self.recovered_after {
            Some(after) => format!(
                "back at {:.1} Mbit/s (80% of the remaining links) {:.2} s after the failure",
                self.target_mbit,
                after.as_secs_f64()
            ),
            None => format!(
                "not back at {:.1} Mbit/s (80% of the remaining links) before the end",
                self.target_mbit
            ),
        };
        format!(
            "failover: the longest stall was {:.2} s; {back}",
            self.longest_stall.as_secs_f64()
        )
    }
}

/// One timed transfer with live progress, to the server's address on link
/// `link` (an MPTCP connection then opens subflows on the others too); when
/// `take_down` is given (a link and the Mbit/s of the others), that link
/// goes down a third of the way through, and the transfer's stall and
/// recovery are measured.
fn transfer(
    bed: &TwoLinks,
    out: &mut Progress,
    proto: Proto,
    link: usize,
    duration: Duration,
    label: &str,
    take_down: Option<(usize, f64)>,
) -> io::Result<(TransferReport, Option<FailoverWatch>)> {
    let to = server_addr_on(bed, link);
    let running = Transfer::start(&bed.client, &bed.server, to, proto, duration)?;
    let start = Instant::now();
    let mut last = running.meter().sample();
    let mut subflow_bytes = BTreeMap::new();
    let mut down_at = take_down.map(|(link, others)| (link, others, duration / 3));
    let mut watch = None;
    // Fine samples for the failover's stall; the status twice a second.
    let tick = Duration::from_millis(20);
    while start.elapsed() < duration {
        thread::sleep(tick.min(duration.saturating_sub(start.elapsed())));
        if let Some((link, others, at)) = down_at
            && start.elapsed() >= at
        {
            bed.links[link].down()?;
            watch = Some(FailoverWatch::new(running.meter().sample(), others));
            out.line(&format!(
                "  link {link} ({} <-> {}) DOWN at {:.1} s",
                bed.client_addr(link),
                bed.links[link].addr(Side::B),
                start.elapsed().as_secs_f64()
            ));
            down_at = None;
        }
        let now = running.meter().sample();
        if let Some(watch) = &mut watch {
            watch.observe(now);
        }
        if now.elapsed.saturating_sub(last.elapsed) < Duration::from_millis(500) {
            continue;
        }
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
    Ok((report, watch))
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
    fn failover_watch_measures_the_stall_and_the_recovery() {
        let at = |ms: u64, bytes: u64| Sample {
            elapsed: Duration::from_millis(ms),
            bytes,
        };
        // 20 Mbit/s is 2500 bytes per ms.
        let mut watch = FailoverWatch::new(at(1000, 1_000_000), 20.0);
        for ms in (1020..=1300).step_by(20) {
            watch.observe(at(ms, 1_000_000));
        }
        for ms in (1320..=2400).step_by(20) {
            watch.observe(at(ms, 1_000_000 + (ms - 1300) * 2500));
        }
        assert_eq!(watch.longest_stall, Duration::from_millis(300));
        let after = watch.recovered_after.expect("recovered");
        assert!(
            (Duration::from_millis(700)..=Duration::from_millis(800)).contains(&after),
            "{after:?}"
        );
        assert!(
            watch.summary().contains("longest stall was 0.30 s"),
            "{}",
            watch.summary()
        );
    }

    #[test]
    fn parses_options() {
        assert_eq!(Options::from_args::<&str>(&[]).unwrap(), Options::default());
        assert_eq!(
            Options::from_args(&["--links", "3", "--rate=50", "--seconds", "2"]).unwrap(),
            Options {
                links: vec![LinkSpec::rate(Some(50)); 3],
                seconds: 2
            }
        );
        assert_eq!(
            Options::from_args(&["--link", "20:5ms", "--link=20:75ms:200ms"]).unwrap(),
            Options {
                links: vec!["20:5ms".parse().unwrap(), "20:75ms:200ms".parse().unwrap()],
                seconds: 4
            }
        );
        assert!(Options::from_args(&["--links", "1"]).is_err());
        assert!(Options::from_args(&["--links", "9"]).is_err());
        assert!(Options::from_args(&["--rate"]).is_err());
        assert!(Options::from_args(&["--speed", "1"]).is_err());
        assert!(Options::from_args(&["--link", "20:5ms"]).is_err());
        assert!(Options::from_args(&["--link", "20", "--link", "fast"]).is_err());
        assert!(Options::from_args(&["--link", "20", "--link", "5", "--rate", "5"]).is_err());
        assert!(Options::from_args(&["--links", "2", "--link", "20", "--link", "5"]).is_err());
    }

    #[test]
    fn describes_links_and_joins_their_numbers() {
        assert_eq!(describe(&"20".parse().unwrap()), "20 Mbit/s");
        assert_eq!(
            describe(&"20:75ms:200ms".parse().unwrap()),
            "20 Mbit/s, 75 ms, 200 ms buffer"
        );
        assert_eq!(
            describe(&"unlimited:0.5ms".parse().unwrap()),
            "unlimited, 0.5 ms"
        );
        assert_eq!(join(&[3]), "3");
        assert_eq!(join(&[0, 1]), "0 and 1");
        assert_eq!(join(&[0, 1, 2]), "0, 1 and 2");
    }
}
