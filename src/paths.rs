//! `mptcp paths auto`: the automatic paths daemon of `mptcp_core::paths`
//! (endpoints, per-interface routing tables and source rules that follow
//! the interfaces), until SIGINT/SIGTERM; what it created goes on exit.

use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Subcommand};
use mptcp_core::paths::{AutoPaths, Config, Role};
use mptcp_core::pm::EndpointFlags;

use crate::endpoint::pm_failure;
use crate::failure::{CmdResult, Failure};

/// `mptcp paths`.
#[derive(Subcommand, Debug)]
pub enum PathsCommand {
    /// Keep endpoints and source routing in line with the interfaces
    /// (runs until Ctrl-C, then removes what it added)
    #[command(
        after_help = "Examples:\n  mptcp paths auto --exclude 'docker*' --exclude 'veth*'\n  \
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
}

fn parse_flags(text: &str) -> Result<EndpointFlags, String> {
    text.parse()
        .map_err(|e: mptcp_core::pm::Error| e.to_string())
}

/// Set by SIGINT/SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_stop_handler() -> Result<(), Failure> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; `sa` is fully initialised (zeroed, then the
        // handler and an empty mask).
        let rc = unsafe {
            let mut sa = std::mem::zeroed::<libc::sigaction>();
            sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(Failure::failed(format!(
                "installing the signal handler: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// Prints each action done as the equivalent `ip` command (the engine logs
/// failed ones at warn level).
fn report(action: &mptcp_core::paths::Action, error: Option<&mptcp_core::pm::Error>) {
    if error.is_none() {
        println!("{action}");
    }
}

/// `mptcp paths ...`.
pub fn run(command: PathsCommand) -> CmdResult {
    let PathsCommand::Auto(args) = command;
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
    };
    let mut paths = AutoPaths::new(config).map_err(pm_failure)?;
    if args.dry_run {
        paths.sync(&mut report).map_err(pm_failure)?;
        return Ok(());
    }
    install_stop_handler()?;
    tracing::info!("automatic paths running; Ctrl-C stops and removes what was added");
    // Without the privilege nothing can ever succeed: stop at the first
    // refusal and exit 3.
    let mut denied = None;
    let result = paths.run_until(&STOP, |action, error| {
        report(action, error);
        if let Some(e) = error
            && matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        {
            STOP.store(true, Ordering::Relaxed);
            denied.get_or_insert_with(|| action.to_string());
        }
    });
    result.map_err(pm_failure)?;
    match denied {
        Some(action) => Err(Failure::unsupported(format!(
            "mptcp paths auto: the kernel refused `{action}`\n  \
             hint: this needs CAP_NET_ADMIN: run it as root (sudo mptcp ...)"
        ))),
        None => Ok(()),
    }
}
