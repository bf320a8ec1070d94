//! `mptcp paths auto`: the automatic paths daemon of `mptcp_core::paths`
//! (endpoints, per-interface routing tables and source rules that follow
//! the interfaces, link probes and roles), until SIGINT/SIGTERM; what it
//! created goes on exit. It writes the state of its links to a file that
//! `mptcp status` shows.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, Subcommand};
use mptcp_core::paths::{
    AutoPaths, Config, DEFAULT_STATE_FILE, HealthConfig, LinkRole, LinkStatus, Role, write_state,
};
use mptcp_core::pm::EndpointFlags;
use serde::Deserialize;

use crate::endpoint::pm_failure;
use crate::failure::{CmdResult, Failure};

/// `mptcp paths`.
#[derive(Subcommand, Debug)]
pub enum PathsCommand {
    /// Keep endpoints and source routing in line with the interfaces
    /// (runs until Ctrl-C, then removes what it added)
    #[command(
        after_help = "Only uplinks get endpoints: interfaces with a default route (a gateway, or a \
                      point-to-point device route) in some routing table; when none has one, the \
                      interfaces named by --include count as uplinks.\n\n\
                      With --probe, each link is probed through its own address (a TCP connect; \
                      a refusal counts as an answer, so any closed port of the remote server \
                      will do): a link that stops answering loses its endpoint, and gets it back \
                      once it answers again, with a check that every connection grew its subflow.\n\n\
                      Examples:\n  mptcp paths auto --exclude 'docker*' --exclude 'veth*'\n  \
                      mptcp paths auto --include 'wan*' --probe 203.0.113.7:443 --role lte0=backup\n  \
                      mptcp paths auto --config /etc/mptcp/paths.toml\n  \
                      mptcp paths auto --server --dry-run"
    )]
    Auto(AutoArgs),
}

/// `mptcp paths auto`.
#[derive(Args, Debug)]
pub struct AutoArgs {
    /// This host accepts connections: announce addresses (`signal`
    /// endpoints) instead of opening subflows from them
    #[arg(long)]
    pub server: bool,
    /// Endpoint flags instead of the role's, e.g. "subflow,fullmesh"
    #[arg(long, value_name = "FLAGS", value_parser = parse_flags)]
    pub flags: Option<EndpointFlags>,
    /// Manage only interfaces matching this glob (repeatable)
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Never manage interfaces matching this glob (repeatable)
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Interface i gets routing table BASE + i
    #[arg(long, value_name = "BASE", default_value_t = Config::default().table_base)]
    pub table_base: u32,
    /// Priority of the source rules
    #[arg(long, value_name = "PRIO", default_value_t = Config::default().rule_priority)]
    pub rule_priority: u32,
    /// Do not raise `limits subflows` when there are more paths than it allows
    #[arg(long)]
    pub no_raise_limits: bool,
    /// Print the `ip` commands it would run, once, and exit
    #[arg(long)]
    pub dry_run: bool,
    /// Probe every link with a TCP connect to ADDR:PORT from its own
    /// address (repeatable; a link is up while any target answers)
    #[arg(long, value_name = "ADDR:PORT")]
    pub probe: Vec<SocketAddr>,
    /// Seconds between two probes of a link [default: 1]
    #[arg(long, value_name = "SECS")]
    pub probe_interval: Option<f64>,
    /// Seconds a probe waits for its answer [default: 1]
    #[arg(long, value_name = "SECS")]
    pub probe_timeout: Option<f64>,
    /// Lost probes in a row that take a link out of use [default: 3]
    #[arg(long, value_name = "N")]
    pub down_after: Option<u32>,
    /// Answered probes in a row that put it back [default: 3]
    #[arg(long, value_name = "N")]
    pub up_after: Option<u32>,
    /// The role of the interfaces matching GLOB: active (default), backup
    /// (used only while no active link works) or off (repeatable; the
    /// first match wins, before the config file's)
    #[arg(long, value_name = "GLOB=ROLE", value_parser = parse_role)]
    pub role: Vec<(String, LinkRole)>,
    /// A TOML file with `[probe]` (targets, interval, timeout, down_after,
    /// up_after) and `[roles]` (GLOB = "ROLE", exact names before globs);
    /// flags take precedence
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to write the state of the links, for `mptcp status`
    #[arg(long, value_name = "FILE", env = "MPTCP_LINKS_FILE", default_value = DEFAULT_STATE_FILE)]
    pub state_file: PathBuf,
    /// Serve each link's state, role, probe RTT and loss, and bytes for
    /// Prometheus at http://ADDR/metrics (PORT alone: on 127.0.0.1)
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = crate::metrics::parse_listen)]
    pub metrics: Option<std::net::SocketAddr>,
}

fn parse_role(text: &str) -> Result<(String, LinkRole), String> {
    let (glob, role) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected GLOB=ROLE, e.g. lte0=backup"))?;
    if glob.is_empty() {
        return Err(format!("{text:?}: the interface glob is empty"));
    }
    Ok((glob.to_owned(), role.parse()?))
}

/// The config file of `paths auto`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    probe: FileProbe,
    /// Interface glob to role.
    #[serde(default)]
    roles: toml::Table,
}

/// The `[probe]` table.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileProbe {
    #[serde(default)]
    targets: Vec<SocketAddr>,
    interval: Option<f64>,
    timeout: Option<f64>,
    down_after: Option<u32>,
    up_after: Option<u32>,
}

fn read_config(path: &Path) -> Result<FileConfig, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::io(format!("reading {}", path.display()), &e))?;
    toml::from_str(&text).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

fn seconds(value: f64, what: &str) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero() && *d <= Duration::from_secs(3600))
        .ok_or_else(|| Failure::usage(format!("{what}: {value}: give seconds from 0.001 to 3600")))
}

fn count(value: u32, what: &str) -> Result<u32, Failure> {
    if (1..=100).contains(&value) {
        Ok(value)
    } else {
        Err(Failure::usage(format!(
            "{what}: {value}: give a count from 1 to 100"
        )))
    }
}

/// Roles from the flags in their order, then from the file, where a table
/// has no order: the most specific pattern first (names without wildcards,
/// then longer patterns), so `wan2 = "backup"` wins over `"wan*" = "active"`.
fn roles(args: &AutoArgs, file: &FileConfig) -> Result<Vec<(String, LinkRole)>, Failure> {
    let mut from_file = Vec::new();
    for (glob, role) in &file.roles {
        let role = role
            .as_str()
            .ok_or_else(|| format!("the role of {glob:?} is not a string"))
            .and_then(|r| r.parse())
            .map_err(|e| Failure::usage(format!("[roles] {glob}: {e}")))?;
        from_file.push((glob.clone(), role));
    }
    from_file.sort_by_key(|(glob, _)| (glob.contains(['*', '?']), std::cmp::Reverse(glob.len())));
    Ok(args.role.iter().cloned().chain(from_file).collect())
}

/// The probes from the flags over the file; none without targets.
fn health(args: &AutoArgs, file: &FileProbe) -> Result<Option<HealthConfig>, Failure> {
    let targets = if args.probe.is_empty() {
        file.targets.clone()
    } else {
        args.probe.clone()
    };
    let tuned = [
        args.probe_interval,
        args.probe_timeout,
        file.interval,
        file.timeout,
    ]
    .iter()
    .any(Option::is_some)
        || [
            args.down_after,
            args.up_after,
            file.down_after,
            file.up_after,
        ]
        .iter()
        .any(Option::is_some);
    if targets.is_empty() {
        return if tuned {
            Err(Failure::usage(
                "probe settings without a target: add --probe ADDR:PORT (or `targets` in [probe])",
            ))
        } else {
            Ok(None)
        };
    }
    let defaults = HealthConfig::default();
    let mut config = HealthConfig {
        targets,
        ..defaults.clone()
    };
    if let Some(v) = args.probe_interval.or(file.interval) {
        config.interval = seconds(v, "the probe interval")?;
    }
    if let Some(v) = args.probe_timeout.or(file.timeout) {
        config.timeout = seconds(v, "the probe timeout")?;
    }
    if let Some(v) = args.down_after.or(file.down_after) {
        config.down_after = count(v, "down after")?;
    }
    if let Some(v) = args.up_after.or(file.up_after) {
        config.up_after = count(v, "up after")?;
    }
    Ok(Some(config))
}

fn parse_flags(text: &str) -> Result<EndpointFlags, String> {
    text.parse()
        .map_err(|e: mptcp_core::pm::Error| e.to_string())
}

/// Prints each action done as the equivalent `ip` command (the engine logs
/// failed ones at warn level).
fn report(action: &mptcp_core::paths::Action, error: Option<&mptcp_core::pm::Error>) {
    if error.is_none() {
        println!("{action}");
    }
}

/// Writes the links' state for `mptcp status`; a failure is logged once.
struct StateFile {
    path: PathBuf,
    failed: bool,
}

impl StateFile {
    fn write(&mut self, links: &[LinkStatus]) {
        match write_state(&self.path, links) {
            Ok(()) => self.failed = false,
            Err(e) if !self.failed => {
                self.failed = true;
                tracing::warn!(
                    "cannot write the link state to {}: {e} (`mptcp status` will not show it; \
                     --state-file sets another path)",
                    self.path.display()
                );
            }
            Err(_) => {}
        }
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `mptcp paths ...`.
pub fn run(command: PathsCommand) -> CmdResult {
    let PathsCommand::Auto(args) = command;
    let file = match &args.config {
        Some(path) => read_config(path)?,
        None => FileConfig::default(),
    };
    let roles = roles(&args, &file)?;
    let health = health(&args, &file.probe)?;
    let config = Config {
        role: if args.server {
            Role::Server
        } else {
            Role::Client
        },
        flags: args.flags,
        include: args.include,
        exclude: args.exclude,
        table_base: args.table_base,
        rule_priority: args.rule_priority,
        raise_limits: !args.no_raise_limits,
        dry_run: args.dry_run,
        roles,
        health,
    };
    let mut paths = AutoPaths::new(config).map_err(pm_failure)?;
    if args.dry_run {
        paths.sync(&mut report).map_err(pm_failure)?;
        return Ok(());
    }
    let stop = mptcp_core::sys::process::stop_on(&[libc::SIGINT, libc::SIGTERM])
        .map_err(|e| Failure::failed(format!("installing the signal handler: {e}")))?;
    tracing::info!("automatic paths running; Ctrl-C stops and removes what was added");
    for advice in crate::probe::host_tuning() {
        tracing::warn!(fix = %advice.fix, "paths: {}", advice.what);
    }
    // Without the privilege nothing can ever succeed: stop at the first
    // refusal and exit 3.
    let mut denied = None;
    let mut state = StateFile {
        path: args.state_file,
        failed: false,
    };
    let board = std::sync::Arc::new(crate::web::links::LinkBoard::default());
    if let Some(addr) = args.metrics {
        let at = crate::web::links::serve(addr, std::sync::Arc::clone(&board))
            .map_err(|e| Failure::io(format!("--metrics {addr}"), &e))?;
        tracing::info!("metrics of the links at http://{at}/metrics");
    }
    let result = paths.run_observed(
        stop,
        |action, error| {
            report(action, error);
            if let Some(e) = error
                && matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
            {
                stop.store(true, Ordering::Relaxed);
                denied.get_or_insert_with(|| action.to_string());
            }
        },
        // The engine logs each link change (warn when a link goes out of use).
        |_, links| {
            board.update(links);
            // Denied (stopping): writing would only fail the same way.
            if !stop.load(Ordering::Relaxed) {
                state.write(links);
            }
        },
    );
    state.remove();
    result.map_err(pm_failure)?;
    match denied {
        Some(action) => Err(Failure::unsupported(format!(
            "mptcp paths auto: the kernel refused `{action}`\n  \
             hint: this needs CAP_NET_ADMIN: run it as root (sudo mptcp ...)"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        paths: PathsCommand,
    }

    fn args(line: &[&str]) -> AutoArgs {
        let PathsCommand::Auto(args) = Cli::try_parse_from(["mptcp", "auto"].iter().chain(line))
            .unwrap()
            .paths;
        args
    }

    #[test]
    fn flags_come_before_the_file_and_the_file_is_most_specific_first() {
        let file: FileConfig = toml::from_str(
            "[probe]\ntargets = [\"198.18.0.2:9\"]\ninterval = 0.5\nup_after = 5\n\n\
             [roles]\n\"wan*\" = \"active\"\n\"wan1?\" = \"off\"\nwan2 = \"backup\"\n",
        )
        .unwrap();
        let args = args(&["--role", "wan2=off", "--up-after", "2"]);
        let roles = roles(&args, &file).unwrap();
        let names: Vec<String> = roles.iter().map(|(g, r)| format!("{g}={r}")).collect();
        assert_eq!(
            names,
            ["wan2=off", "wan2=backup", "wan1?=off", "wan*=active"]
        );
        let probes = health(&args, &file.probe).unwrap().unwrap();
        assert_eq!(probes.interval, Duration::from_millis(500));
        assert_eq!(probes.up_after, 2, "the flag wins");
        assert_eq!(probes.down_after, HealthConfig::default().down_after);
        assert_eq!(
            health(&self::args(&[]), &FileProbe::default()).unwrap(),
            None
        );
    }
}
