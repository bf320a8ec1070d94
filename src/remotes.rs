//! The remote relays of a running `mptcp relay local`, for `mptcp status`:
//! the relay writes their state each second to a file (`MPTCP_REMOTES_FILE`
//! or /run/mptcp/remotes), as `paths auto` does for links; the status adds
//! the bytes of the MPTCP connections to each remote, from sock_diag.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mptcp_core::diag::Connection;
use mptcp_core::relay::{NoRemote, RemoteStatus};
use serde_json::json;

/// Where a local relay keeps its remotes' state by default.
pub const DEFAULT_FILE: &str = "/run/mptcp/remotes";

/// The state file (`MPTCP_REMOTES_FILE`, else [`DEFAULT_FILE`]).
pub fn state_file() -> PathBuf {
    std::env::var_os("MPTCP_REMOTES_FILE").map_or_else(|| DEFAULT_FILE.into(), PathBuf::from)
}

/// Writes the remotes' state to `path`, one JSON object per line, each
/// with what new connections do when none works (through a temporary file
/// and a rename, so a reader never sees half a file).
pub fn write(path: &Path, remotes: &[RemoteStatus], fallback: Option<NoRemote>) -> io::Result<()> {
    let fallback = match fallback {
        Some(NoRemote::Refuse) => "refuse",
        _ => "direct",
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = String::new();
    for r in remotes {
        let line = json!({
            "remote": r.addr.to_string(),
            "state": r.state.name(),
            "rtt_us": r.rtt.map(|d| d.as_micros() as u64),
            "sessions": r.sessions,
            "connections": r.connections,
            "fallback": fallback,
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// One remote as the file has it, with the bytes of the host's MPTCP
/// connections to it.
struct Row {
    remote: SocketAddr,
    state: String,
    rtt: Option<Duration>,
    sessions: u64,
    connections: u64,
    sent: u64,
    received: u64,
    /// What new connections do when no remote works.
    fallback: String,
}

/// The rows of the state file; `None` when no local relay runs (no file).
fn rows(conns: &[Connection]) -> Option<io::Result<Vec<Row>>> {
    let text = match std::fs::read_to_string(state_file()) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(e)),
    };
    let parse = |line: &str| -> Option<Row> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let remote: SocketAddr = v["remote"].as_str()?.parse().ok()?;
        let to_it = conns.iter().filter(|c| c.remote == remote);
        let (sent, received) = to_it.fold((0, 0), |(s, r), c| {
            c.bytes.map_or((s, r), |b| (s + b.sent, r + b.received))
        });
        Some(Row {
            remote,
            state: v["state"].as_str()?.to_owned(),
            rtt: v["rtt_us"].as_u64().map(Duration::from_micros),
            sessions: v["sessions"].as_u64()?,
            connections: v["connections"].as_u64()?,
            sent,
            received,
            fallback: v["fallback"].as_str().unwrap_or("direct").to_owned(),
        })
    };
    Some(
        text.lines()
            .map(|l| {
                parse(l).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("a bad line: {l}"))
                })
            })
            .collect(),
    )
}

/// Prints the remotes section of `mptcp status`, when a local relay runs.
pub fn print_section(out: &mut impl Write, conns: &[Connection]) -> io::Result<()> {
    let rows = match rows(conns) {
        None => return Ok(()),
        Some(Err(e)) => {
            return writeln!(
                out,
                "\nremotes: cannot read {}: {e}",
                state_file().display()
            );
        }
        Some(Ok(rows)) => rows,
    };
    writeln!(
        out,
        "\nRemote relays (mptcp relay local, {}):\n  {:<24} {:<10} {:>8} {:>8} {:>11} {:>12} {:>12}",
        state_file().display(),
        "REMOTE",
        "STATE",
        "RTT",
        "SESSIONS",
        "CONNECTIONS",
        "SENT",
        "RECEIVED"
    )?;
    if !rows.is_empty() && rows.iter().all(|r| r.state == "down") {
        let then = match rows[0].fallback.as_str() {
            "refuse" => "are refused",
            _ => "go directly to their destinations, without aggregation",
        };
        writeln!(out, "  no remote relay works: new LAN connections {then}")?;
    }
    for r in rows {
        let rtt = r
            .rtt
            .map_or("-".into(), |d| format!("{:.1}ms", d.as_secs_f64() * 1e3));
        writeln!(
            out,
            "  {:<24} {:<10} {:>8} {:>8} {:>11} {:>12} {:>12}",
            r.remote.to_string(),
            r.state,
            rtt,
            r.sessions,
            r.connections,
            r.sent,
            r.received
        )?;
    }
    Ok(())
}

/// The remotes for `mptcp status --json`; `None` when no local relay runs.
pub fn json(conns: &[Connection]) -> Option<serde_json::Value> {
    Some(match rows(conns)? {
        Err(e) => json!({ "file": state_file().display().to_string(), "error": e.to_string() }),
        Ok(rows) => {
            let list: Vec<_> = rows
                .iter()
                .map(|r| {
                    json!({
                        "remote": r.remote.to_string(),
                        "state": r.state,
                        "rtt_ms": r.rtt.map(|d| d.as_secs_f64() * 1e3),
                        "sessions": r.sessions,
                        "connections": r.connections,
                        "bytes_sent": r.sent,
                        "bytes_received": r.received,
                    })
                })
                .collect();
            json!(list)
        }
    })
}
