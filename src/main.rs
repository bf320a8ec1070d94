//! `mptcp`: the command-line tool of the MPTCP toolkit.
//!
//! One subcommand per task, in the style of `ip` and `ss`: each module
//! below holds a subcommand's arguments (clap derive) and its `run`.
//! System calls go through the safe wrappers of `mptcp_core::sys`.
#![forbid(unsafe_code)]

mod alerts;
mod demo;
mod endpoint;
mod events;
mod failure;
mod links;
mod logging;
mod metrics;
mod monitor;
mod notify;
mod paths;
mod preload;
mod probe;
mod relay;
mod remotes;
mod status;
mod unit;
mod web;

use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

use failure::{CmdResult, EXIT_CODES_HELP};

/// Multipath TCP toolkit: run programs over MPTCP, inspect connections,
/// manage paths, relay traffic.
#[derive(Parser, Debug)]
#[command(name = "mptcp", version, after_help = EXIT_CODES_HELP)]
struct Cli {
    /// More log output (-v: debug, -vv: trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a program with its TCP sockets turned into MPTCP sockets
    /// (LD_PRELOAD; GODEBUG=multipathtcp=1 for Go programs)
    #[command(
        after_help = "Example:\n  mptcp run -- curl -o /dev/null http://198.18.0.2/\n  \
                            mptcp run --relay 203.0.113.5:1080 -- ssh host"
    )]
    Run(preload::RunArgs),
    /// Run a systemd service over MPTCP (writes a drop-in; the unit file is not touched)
    #[command(after_help = "Example:\n  mptcp enable nginx && systemctl restart nginx")]
    Enable(unit::EnableArgs),
    /// Remove the drop-in written by `mptcp enable`
    Disable(unit::DisableArgs),
    /// MPTCP connections on this host with their subflows and rates
    #[command(
        after_help = "Rates are byte-counter deltas between two samples taken --interval \
                            apart (1 s).\n--counters prints one sample at once; --watch refreshes \
                            until Ctrl-C."
    )]
    Status(status::StatusArgs),
    /// What this kernel supports for MPTCP, and how to fix what is missing
    Probe(probe::ProbeArgs),
    /// Path-manager endpoints: the local addresses MPTCP may use (like `ip mptcp endpoint`)
    #[command(subcommand)]
    Endpoint(endpoint::EndpointCommand),
    /// Show or set the path-manager limits (like `ip mptcp limits`)
    Limits(endpoint::LimitsArgs),
    /// Print path-manager events: connections and subflows opening and closing
    Monitor(monitor::MonitorArgs),
    /// Relay plain TCP over MPTCP: `local` on the LAN's router, `remote` on a server
    #[command(subcommand)]
    Relay(relay::RelayCommand),
    /// Automatic paths: endpoints and source routing that follow the interfaces
    #[command(subcommand)]
    Paths(paths::PathsCommand),
    /// The test-bed demo: aggregation and failover over rate-limited links in
    /// network namespaces
    Demo(DemoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(after_help = "Example:\n  mptcp completions bash > /etc/bash_completion.d/mptcp")]
    Completions {
        /// The shell
        shell: Shell,
    },
    /// Print the manual page mptcp(1) (roff), or write one page per command
    /// (mptcp.1, mptcp-relay-remote.1, ...) into DIR; for packaging
    #[command(hide = true)]
    Man {
        /// Directory for the pages of every command
        dir: Option<std::path::PathBuf>,
    },
}

/// `mptcp demo`. The ranges are checked by `demo::Options::from_args`.
#[derive(Args, Debug)]
struct DemoArgs {
    /// Number of identical links between client and server, 2 to 8 [default: 2]
    #[arg(long, conflicts_with = "link")]
    links: Option<u64>,
    /// Rate limit of each identical link, Mbit/s [default: 20]
    #[arg(long, value_name = "MBIT", conflicts_with = "link")]
    rate: Option<u64>,
    /// One link, given once per link (2 to 8 times): its rate in Mbit/s (or
    /// `unlimited`), one-way delay and queue, e.g. `--link 20:5ms --link 20:75ms:200ms`
    #[arg(long, value_name = "RATE[:DELAY[:BUFFER]]")]
    link: Vec<String>,
    /// Length of each transfer, seconds
    #[arg(long, value_name = "S", default_value_t = 4)]
    seconds: u64,
}

fn dispatch(command: Command) -> CmdResult {
    match command {
        Command::Run(args) => preload::run(args),
        Command::Enable(args) => unit::enable(args),
        Command::Disable(args) => unit::disable(args),
        Command::Status(args) => status::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Endpoint(command) => endpoint::endpoint(command),
        Command::Limits(args) => endpoint::limits(args),
        Command::Monitor(args) => monitor::run(args),
        Command::Relay(command) => relay::run(command),
        Command::Paths(command) => paths::run(command),
        Command::Demo(args) => {
            let mut words = vec!["--seconds".to_owned(), args.seconds.to_string()];
            for (name, value) in [("--links", args.links), ("--rate", args.rate)] {
                if let Some(value) = value {
                    words.extend([name.to_owned(), value.to_string()]);
                }
            }
            for link in args.link {
                words.extend(["--link".to_owned(), link]);
            }
            let opts = demo::Options::from_args(&words).map_err(failure::Failure::usage)?;
            // demo::run must be called while the process has a single thread.
            demo::run(&opts).map_err(|e| failure::Failure::io("mptcp demo", &e))
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "mptcp", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => {
            // Pages for the commands there are: no `mptcp help` page.
            let cmd = Cli::command().disable_help_subcommand(true);
            match dir {
                None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()),
                Some(dir) => clap_mangen::generate_to(cmd, dir),
            }
            .map_err(|e| failure::Failure::io("writing manual pages", &e))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("mptcp: {failure}");
            ExitCode::from(failure.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
