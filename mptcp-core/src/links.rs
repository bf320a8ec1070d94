//! The host's links as the automatic-paths daemon (`mptcp paths auto`)
//! knows them: their roles and states, and the file it keeps them in for
//! other processes. `mptcp status` shows it, and the relay asks how many
//! links are usable ([`usable_links`]), so this module builds without the
//! path manager too. The daemon rewrites a small text file
//! (atomically, by rename) whenever a link changes, and every few seconds
//! for its probe figures.
//!
//! One line per link, fields separated by spaces (interface names hold no
//! space), `-` for a missing value, after a header line naming them:
//! `NAME INDEX STATE ROLE ADDRESS RTT_US LOSS_PERCENT SINCE_UNIX_MS`.

use std::{
    fmt, fs, io,
    net::IpAddr,
    path::Path,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// What a link is used for, as the operator says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LinkRole {
    /// Carries traffic whenever it works.
    #[default]
    Active,
    /// Its endpoint has the `backup` flag: the kernel sends on it only
    /// while no active subflow works (a metered LTE line).
    Backup,
    /// Not used at all: no endpoint, no routes, no probes.
    Off,
}

impl LinkRole {
    /// `active`, `backup` or `off`.
    pub fn name(self) -> &'static str {
        match self {
            LinkRole::Active => "active",
            LinkRole::Backup => "backup",
            LinkRole::Off => "off",
        }
    }
}

impl fmt::Display for LinkRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LinkRole {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "active" => Ok(LinkRole::Active),
            "backup" => Ok(LinkRole::Backup),
            "off" => Ok(LinkRole::Off),
            _ => Err(format!(
                "unknown link role {text:?}: expected active, backup or off"
            )),
        }
    }
}

/// The state of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// Down or without carrier: nothing can pass.
    NoCarrier,
    /// Has a carrier but has not yet answered `up_after` probes in a row.
    Probing,
    /// Answers its probes: its endpoint is in use.
    Up,
    /// Has a carrier but lost `down_after` probes in a row: its endpoint is
    /// out of use.
    Down,
}

impl LinkState {
    /// `no-carrier`, `probing`, `up` or `down`.
    pub fn name(self) -> &'static str {
        match self {
            LinkState::NoCarrier => "no-carrier",
            LinkState::Probing => "probing",
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LinkState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        [
            LinkState::NoCarrier,
            LinkState::Probing,
            LinkState::Up,
            LinkState::Down,
        ]
        .into_iter()
        .find(|s| s.name() == text)
        .ok_or_else(|| format!("unknown link state {text:?}"))
    }
}

/// Where `mptcp paths auto` writes the state of its links by default.
pub const DEFAULT_STATE_FILE: &str = "/run/mptcp/links";

/// The header line of the state file (its first word names the format).
const HEADER: &str =
    "#mptcp-links-v1 NAME INDEX STATE ROLE ADDRESS RTT_US LOSS_PERCENT SINCE_UNIX_MS";

/// One link as the daemon sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkStatus {
    /// Interface name.
    pub ifname: String,
    /// Interface index.
    pub ifindex: u32,
    /// Its state (without probes: `up` or `no-carrier` from the carrier).
    pub state: LinkState,
    /// Its role.
    pub role: LinkRole,
    /// The address its probes and subflows leave from.
    pub addr: Option<IpAddr>,
    /// Smoothed probe round-trip time.
    pub rtt: Option<Duration>,
    /// Share of lost probes among the last rounds, in percent.
    pub loss_percent: f64,
    /// Since when it is in its state.
    pub since: SystemTime,
}

impl LinkStatus {
    /// Whether MPTCP may send on it now (up and not `off`).
    pub fn usable(&self) -> bool {
        self.state == LinkState::Up && self.role != LinkRole::Off
    }

    fn to_line(&self) -> String {
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let since_ms = self
            .since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!(
            "{} {} {} {} {} {} {:.1} {since_ms}",
            self.ifname,
            self.ifindex,
            self.state,
            self.role,
            dash(self.addr.map(|a| a.to_string())),
            dash(self.rtt.map(|r| r.as_micros().to_string())),
            self.loss_percent,
        )
    }

    fn from_line(line: &str) -> Result<Self, String> {
        let fields: Vec<&str> = line.split(' ').collect();
        let [name, index, state, role, addr, rtt, loss, since] = fields[..] else {
            return Err(format!("expected 8 fields: {line:?}"));
        };
        let bad = |what: &str| format!("bad {what} in {line:?}");
        fn optional(v: &str) -> Option<&str> {
            (v != "-").then_some(v)
        }
        Ok(LinkStatus {
            ifname: name.to_owned(),
            ifindex: index.parse().map_err(|_| bad("index"))?,
            state: state.parse()?,
            role: role.parse()?,
            addr: optional(addr)
                .map(str::parse)
                .transpose()
                .map_err(|_| bad("address"))?,
            rtt: optional(rtt)
                .map(|v| v.parse().map(Duration::from_micros))
                .transpose()
                .map_err(|_| bad("rtt"))?,
            loss_percent: loss.parse().map_err(|_| bad("loss"))?,
            since: UNIX_EPOCH + Duration::from_millis(since.parse().map_err(|_| bad("time"))?),
        })
    }
}

/// Writes `links` to `path` (through a temporary file and a rename, so a
/// reader never sees half a file), creating its directory.
pub fn write_state(path: &Path, links: &[LinkStatus]) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let mut text = String::from(HEADER);
    text.push('\n');
    for link in links {
        text.push_str(&link.to_line());
        text.push('\n');
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)
}

/// Reads what [`write_state`] wrote.
pub fn read_state(path: &Path) -> io::Result<Vec<LinkStatus>> {
    let text = fs::read_to_string(path)?;
    let mut lines = text.lines();
    if lines.next().and_then(|h| h.split(' ').next()) != HEADER.split(' ').next() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a link state file of this version", path.display()),
        ));
    }
    lines
        .map(|line| {
            LinkStatus::from_line(line).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })
        })
        .collect()
}

/// How many links are usable: up (or, without probes, with a carrier) and
/// not `off`. A relay whose session has fewer subflows than this (once the
/// path manager had its chance) is missing a link.
pub fn usable_links(links: &[LinkStatus]) -> usize {
    links.iter().filter(|l| l.usable()).count()
}

/// How old the state file may be and still count: the daemon rewrites it
/// every 2 s, so an older one was left by a daemon that is gone.
pub const FRESH: Duration = Duration::from_secs(10);

/// The links of the state file at `path`, if a running daemon keeps it
/// (written within [`FRESH`]).
pub fn fresh_state(path: &Path) -> Option<Vec<LinkStatus>> {
    let modified = fs::metadata(path).ok()?.modified().ok()?;
    if modified.elapsed().unwrap_or_default() > FRESH {
        return None;
    }
    read_state(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_round_trips_and_counts_usable_links() {
        let dir = std::env::temp_dir().join(format!("mptcp-links-{}", std::process::id()));
        let path = dir.join("links");
        let since = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let links = vec![
            LinkStatus {
                ifname: "wan0".into(),
                ifindex: 3,
                state: LinkState::Up,
                role: LinkRole::Active,
                addr: Some("198.18.0.1".parse().unwrap()),
                rtt: Some(Duration::from_micros(1234)),
                loss_percent: 5.0,
                since,
            },
            LinkStatus {
                ifname: "lte0".into(),
                ifindex: 4,
                state: LinkState::Down,
                role: LinkRole::Backup,
                addr: None,
                rtt: None,
                loss_percent: 100.0,
                since,
            },
        ];
        write_state(&path, &links).unwrap();
        assert_eq!(read_state(&path).unwrap(), links);
        assert_eq!(usable_links(&links), 1);
        fs::write(&path, "wan0 up\n").unwrap();
        assert!(read_state(&path).is_err());
        fs::write(&path, format!("{HEADER}\nwan0 x up active - - 0 0\n")).unwrap();
        let e = read_state(&path).unwrap_err().to_string();
        assert!(e.contains("bad index"), "{e}");
        fs::remove_dir_all(dir).unwrap();
    }
}
