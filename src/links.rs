//! The links section of `mptcp status`: what `mptcp paths auto` knows of
//! each link (state, role, probe RTT and loss), from the state file it
//! writes (`MPTCP_LINKS_FILE` or /run/mptcp/links).

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::SystemTime;

use mptcp_core::paths::{DEFAULT_STATE_FILE, LinkState, LinkStatus, read_state};

/// The state file `paths auto` writes by default (same variable as its
/// `--state-file`).
fn state_file() -> PathBuf {
    std::env::var_os("MPTCP_LINKS_FILE").map_or_else(|| DEFAULT_STATE_FILE.into(), PathBuf::from)
}

/// `1h02m`, `3m05s`, `12s`.
fn age(since: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(since)
        .map_or(0, |d| d.as_secs());
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

fn row(link: &LinkStatus) -> String {
    let rtt = link.rtt.map_or("-".to_owned(), |r| {
        format!("{:.1}ms", r.as_secs_f64() * 1e3)
    });
    let addr = link.addr.map_or("-".to_owned(), |a| a.to_string());
    format!(
        "  {:<12} {:<10} {:<7} {:<26} {:>8} {:>6.1}% {:>8}",
        link.ifname,
        link.state.name(),
        link.role.name(),
        addr,
        rtt,
        link.loss_percent,
        age(link.since)
    )
}

/// The links of the state file, and the file's age in seconds.
type Snapshot = (Vec<LinkStatus>, u64);

/// The state file and what it holds; `None` when `paths auto` does not
/// run (no file).
fn current() -> Option<(PathBuf, io::Result<Snapshot>)> {
    let path = state_file();
    let links = match read_state(&path) {
        Ok(links) => links,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => return Some((path, Err(e))),
    };
    // The daemon rewrites the file every few seconds: an old one was left
    // by a daemon that was killed.
    let age_secs = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or(0, |d| d.as_secs());
    Some((path, Ok((links, age_secs))))
}

/// Prints the links section after the connections, when `paths auto`
/// runs (its state file exists); nothing otherwise.
pub fn print_section(out: &mut impl Write) -> io::Result<()> {
    let Some((path, read)) = current() else {
        return Ok(());
    };
    let (links, age_secs) = match read {
        Ok(read) => read,
        Err(e) => return writeln!(out, "\nlinks: cannot read {}: {e}", path.display()),
    };
    let stale = if age_secs > mptcp_core::links::FRESH.as_secs() {
        format!(", not updated for {age_secs} s: is it still running?")
    } else {
        String::new()
    };
    writeln!(
        out,
        "\nLinks (mptcp paths auto, {}{stale}):\n  {:<12} {:<10} {:<7} {:<26} {:>8} {:>7} {:>8}",
        path.display(),
        "LINK",
        "STATE",
        "ROLE",
        "ADDRESS",
        "RTT",
        "LOSS",
        "SINCE"
    )?;
    for link in &links {
        writeln!(out, "{}", row(link))?;
    }
    Ok(())
}

/// The links for `mptcp status --json`: `{"file", "age_s", "fresh",
/// "links": [{"link", "state", "role", "address", "rtt_ms", "loss_percent",
/// "since_unix"}]}`, or `{"file", "error"}`; `None` when `paths auto` does
/// not run.
pub fn json() -> Option<serde_json::Value> {
    let (path, read) = current()?;
    let file = path.display().to_string();
    let (links, age_secs) = match read {
        Ok(read) => read,
        Err(e) => return Some(serde_json::json!({ "file": file, "error": e.to_string() })),
    };
    let links: Vec<_> = links
        .iter()
        .map(|l| {
            serde_json::json!({
                "link": l.ifname,
                "state": l.state.name(),
                "role": l.role.name(),
                "address": l.addr.map(|a| a.to_string()),
                "rtt_ms": l.rtt.map(|r| r.as_secs_f64() * 1e3),
                "loss_percent": l.loss_percent,
                "since_unix": l.since.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            })
        })
        .collect();
    Some(serde_json::json!({
        "file": file,
        "age_s": age_secs,
        "fresh": age_secs <= mptcp_core::links::FRESH.as_secs(),
        "links": links,
    }))
}

/// Follows the state file for `mptcp monitor`: the links whose state
/// changed since the last look.
#[derive(Default)]
pub struct LinkWatch {
    seen: HashMap<String, LinkState>,
}

impl LinkWatch {
    /// A watch that takes the links as they are now as seen (so only
    /// changes from here on show).
    pub fn start() -> LinkWatch {
        let mut watch = LinkWatch::default();
        watch.changes();
        watch
    }

    /// The links whose state changed, and those that appeared. A missing
    /// or unreadable file has no links (`paths auto` is not running).
    pub fn changes(&mut self) -> Vec<LinkStatus> {
        let links = read_state(&state_file()).unwrap_or_default();
        let changed = links
            .iter()
            .filter(|l| self.seen.get(&l.ifname) != Some(&l.state))
            .cloned()
            .collect();
        self.seen = links.into_iter().map(|l| (l.ifname, l.state)).collect();
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mptcp_core::paths::{LinkRole, LinkState};
    use std::time::Duration;

    #[test]
    fn a_link_row_shows_state_role_rtt_and_loss() {
        let link = LinkStatus {
            ifname: "wan1".into(),
            ifindex: 4,
            state: LinkState::Down,
            role: LinkRole::Backup,
            addr: Some("198.18.1.1".parse().unwrap()),
            rtt: Some(Duration::from_micros(1250)),
            loss_percent: 100.0,
            since: SystemTime::now() - Duration::from_secs(125),
        };
        let row = row(&link);
        for part in [
            "wan1",
            "down",
            "backup",
            "198.18.1.1",
            "1.2ms",
            "100.0%",
            "2m05s",
        ] {
            assert!(row.contains(part), "{part} missing in {row:?}");
        }
    }
}
