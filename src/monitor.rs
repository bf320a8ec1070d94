//! `mptcp monitor`: path-manager events (connections and subflows created,
//! established, closed; addresses announced) and the link changes of
//! `mptcp paths auto` (from its state file), as a table or JSON lines.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use mptcp_core::paths::LinkStatus;
use mptcp_core::pm::{Event, EventListener};
use serde_json::json;

use crate::links::LinkWatch;

/// How often the link state file is looked at.
const LINK_POLL: Duration = Duration::from_millis(250);

use crate::failure::{CmdResult, Failure};

/// `mptcp monitor`.
#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// One JSON object per line instead of the table
    #[arg(short, long)]
    pub json: bool,
    /// Stop after N events
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after SECS seconds
    #[arg(short, long, value_name = "SECS")]
    pub timeout: Option<f64>,
}

fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn event_json(event: &Event) -> serde_json::Value {
    json!({
        "time": unix_time(),
        "event": event.kind.name().to_ascii_lowercase(),
        "token": event.token.map(|t| format!("{t:08x}")),
        "local": event.local.map(|a| a.to_string()),
        "remote": event.remote.map(|a| a.to_string()),
        "local_id": event.local_id,
        "remote_id": event.remote_id,
        "backup": event.backup,
        "error": event.error,
        "ifindex": event.ifindex,
        "server_side": event.server_side,
        "reset_reason": event.reset_reason,
    })
}

const HEADER: &str = "TIME          EVENT              TOKEN     LOCAL                      REMOTE                     DETAILS";

fn link_json(link: &LinkStatus) -> serde_json::Value {
    json!({
        "time": unix_time(),
        "event": "link",
        "link": link.ifname,
        "state": link.state.name(),
        "role": link.role.name(),
        "local": link.addr.map(|a| a.to_string()),
        "rtt_us": link.rtt.map(|r| r.as_micros() as u64),
        "loss_percent": link.loss_percent,
    })
}

fn link_row(link: &LinkStatus) -> String {
    format!(
        "{}  {:<18} {:<9} {:<26} {:<26} {} {}",
        clock(),
        format!(
            "LINK_{}",
            link.state.name().to_ascii_uppercase().replace('-', "_")
        ),
        "-",
        link.addr.map_or("-".to_owned(), |a| a.to_string()),
        "-",
        link.ifname,
        link.role.name()
    )
}

/// The time of day (UTC), `HH:MM:SS.mmm`.
fn clock() -> String {
    let secs = unix_time();
    let (h, m, s) = (
        (secs / 3600.0) as u64 % 24,
        (secs / 60.0) as u64 % 60,
        secs % 60.0,
    );
    format!("{h:02}:{m:02}:{s:06.3}")
}

fn event_row(event: &Event) -> String {
    let addr = |a: Option<std::net::SocketAddr>| a.map_or("-".to_owned(), |a| a.to_string());
    let mut details = Vec::new();
    if let (Some(l), Some(r)) = (event.local_id, event.remote_id) {
        details.push(format!("ids {l}/{r}"));
    }
    if event.backup == Some(true) {
        details.push("backup".to_owned());
    }
    if let Some(e) = event.error.filter(|e| *e != 0) {
        details.push(format!(
            "error {}",
            std::io::Error::from_raw_os_error(i32::from(e))
        ));
    }
    if let Some(reason) = event.reset_reason {
        details.push(format!("reset reason {reason}"));
    }
    if event.server_side {
        details.push("server side".to_owned());
    }
    format!(
        "{}  {:<18} {:<9} {:<26} {:<26} {}",
        clock(),
        event.kind.name(),
        event.token.map_or("-".to_owned(), |t| format!("{t:08x}")),
        addr(event.local),
        addr(event.remote),
        details.join(", ")
    )
}

/// `mptcp monitor`: runs until interrupted, `--count` events or `--timeout`.
pub fn run(args: MonitorArgs) -> CmdResult {
    let mut listener = EventListener::subscribe().map_err(crate::endpoint::pm_failure)?;
    let deadline = match args.timeout {
        Some(secs) => Some(
            Instant::now()
                + Duration::try_from_secs_f64(secs).map_err(|_| {
                    Failure::usage(format!("--timeout {secs}: give seconds, like 10"))
                })?,
        ),
        None => None,
    };
    eprintln!("listening for MPTCP events (Ctrl-C to stop)");
    let stdout = std::io::stdout();
    if !args.json {
        println!("{HEADER}");
    }
    let mut seen = 0u64;
    let mut links = LinkWatch::start();
    let write = |line: String| {
        let mut out = stdout.lock();
        writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
    };
    while args.count.is_none_or(|n| seen < n) {
        let now = Instant::now();
        let slice = match deadline {
            Some(deadline) if deadline <= now => break,
            Some(deadline) => (deadline - now).min(LINK_POLL),
            None => LINK_POLL,
        };
        let event = listener
            .next_event_timeout(slice)
            .map_err(crate::endpoint::pm_failure)?;
        let mut lines: Vec<String> = event
            .iter()
            .map(|e| {
                if args.json {
                    event_json(e).to_string()
                } else {
                    event_row(e)
                }
            })
            .collect();
        lines.extend(links.changes().iter().map(|l| {
            if args.json {
                link_json(l).to_string()
            } else {
                link_row(l)
            }
        }));
        for line in lines {
            if args.count.is_some_and(|n| seen >= n) {
                break;
            }
            seen += 1;
            if !write(line) {
                // The reader went away (`mptcp monitor | head`): a normal end.
                return Ok(());
            }
        }
    }
    Ok(())
}
