//! `mptcp relay local|remote`: the relay engine of `mptcp_core::relay`, from
//! a TOML file (`--config`, see `examples/relay.toml`) and/or flags.
//!
//! Flags override the file: a listener flag replaces that list of the file.
//! Counters go to the log on SIGUSR1 and every `--stats` seconds;
//! SIGINT/SIGTERM stop accepting and drain open connections for `--drain`
//! seconds. Under systemd (`Type=notify`) it reports readiness and sends
//! watchdog keep-alives (see [`crate::notify`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use mptcp_core::relay::{Cidr, Config, ConfigError, LocalConfig, Relay, RemoteConfig, User};

use crate::failure::{CmdResult, Failure};
use crate::notify::Notifier;

/// `mptcp relay`.
#[derive(Subcommand, Debug)]
pub enum RelayCommand {
    /// On the LAN's router: carry plain TCP (redirected, SOCKS5 or HTTP
    /// proxy clients) over MPTCP to the remote relay
    #[command(after_help = "Examples:\n  \
        mptcp relay local --remote 203.0.113.5:1080 --user alice --password-env RELAY_PASSWORD \\\n      \
        --redirect 0.0.0.0:12345 --socks5 192.168.1.1:1080\n  \
        mptcp relay local --config /etc/mptcp/relay.toml --stats 60")]
    Local(LocalArgs),
    /// On a server: a SOCKS5 server on MPTCP that connects onward
    #[command(after_help = "Example:\n  \
        mptcp relay remote --listen 0.0.0.0:1080 --user alice --password-env RELAY_PASSWORD")]
    Remote(RemoteArgs),
}

/// Options of both roles.
#[derive(Args, Debug)]
pub struct CommonArgs {
    /// TOML configuration file (see examples/relay.toml)
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log the counters every SECS seconds (also on SIGUSR1)
    #[arg(long, value_name = "SECS")]
    pub stats: Option<u64>,
    /// On SIGINT/SIGTERM, let open connections finish for up to SECS seconds
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub drain: u64,
    /// Username (with --password-env): for the remote relay (local role),
    /// or the one accepted user (remote role)
    #[arg(long, value_name = "NAME", requires = "password_env")]
    pub user: Option<String>,
    /// Environment variable holding the password (kept off the command line)
    #[arg(long, value_name = "VAR", requires = "user")]
    pub password_env: Option<String>,
    /// Allow only clients from this network (repeatable)
    #[arg(long = "allow-client", value_name = "CIDR", value_parser = parse_cidr)]
    pub allow_clients: Vec<Cidr>,
    /// Use plain TCP instead of MPTCP (towards the remote, or for listening)
    #[arg(long)]
    pub no_mptcp: bool,
    /// No multiplexed sessions: one connection to the remote per client
    /// connection (local role), or plain SOCKS5 only (remote role)
    #[arg(long)]
    pub no_multiplex: bool,
}

/// `mptcp relay local`.
#[derive(Args, Debug)]
pub struct LocalArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The remote relay (or any SOCKS5 server), HOST:PORT
    #[arg(long, value_name = "HOST:PORT")]
    pub remote: Option<String>,
    /// Listener for connections redirected by nftables/iptables REDIRECT
    #[arg(long, value_name = "ADDR:PORT")]
    pub redirect: Vec<SocketAddr>,
    /// Listener for TPROXY (needs CAP_NET_ADMIN and policy routing)
    #[arg(long, value_name = "ADDR:PORT")]
    pub tproxy: Vec<SocketAddr>,
    /// SOCKS5 listener for LAN clients
    #[arg(long, value_name = "ADDR:PORT")]
    pub socks5: Vec<SocketAddr>,
    /// HTTP proxy listener (CONNECT and absolute URIs)
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Vec<SocketAddr>,
}

/// `mptcp relay remote`.
#[derive(Args, Debug)]
pub struct RemoteArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Listen address (repeatable)
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// Serve clients on loopback listeners without authentication
    #[arg(long)]
    pub allow_unauthenticated_loopback: bool,
    /// Connect onward to destinations with MPTCP
    #[arg(long)]
    pub onward_mptcp: bool,
    /// Allow a destination network the defaults deny (private, loopback)
    #[arg(long = "allow-destination", value_name = "CIDR", value_parser = parse_cidr)]
    pub allow_destinations: Vec<Cidr>,
    /// Deny a destination network
    #[arg(long = "deny-destination", value_name = "CIDR", value_parser = parse_cidr)]
    pub deny_destinations: Vec<Cidr>,
}

fn parse_cidr(text: &str) -> Result<Cidr, String> {
    text.parse()
}

/// The configuration file (if any) with `adjust` (the command line's
/// flags) applied, then validated: a flag may supply what the file lacks.
fn load_then(
    path: Option<&PathBuf>,
    adjust: impl FnOnce(&mut Config) -> Result<(), Failure>,
) -> Result<Config, Failure> {
    match path {
        Some(path) => Config::from_file_then(path, adjust),
        None => {
            let mut config = Config::new();
            adjust(&mut config)?;
            config.validate()?;
            Ok(config)
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Failure {
        Failure::failed(e.to_string())
    }
}

fn credentials(common: &CommonArgs) -> Result<Option<(String, String)>, Failure> {
    let (Some(user), Some(var)) = (&common.user, &common.password_env) else {
        return Ok(None);
    };
    let password = std::env::var(var).map_err(|_| {
        Failure::usage(format!(
            "--password-env {var}: the variable {var} is not set\n  hint: export {var}=... first"
        ))
    })?;
    Ok(Some((user.clone(), password)))
}

/// Replaces `list` with `flags` when any were given.
fn override_list<T: Clone>(list: &mut Vec<T>, flags: &[T]) {
    if !flags.is_empty() {
        *list = flags.to_vec();
    }
}

/// The configuration of `mptcp relay local`: the file's `[local]` (if
/// any) with the flags applied; a `[remote]` section of the file is ignored.
fn local_config(args: &LocalArgs) -> Result<Config, Failure> {
    let credentials = credentials(&args.common)?;
    load_then(args.common.config.as_ref(), |config| {
        config.remote = None;
        let mut local = match (config.local.take(), &args.remote) {
            (Some(mut local), remote) => {
                if let Some(remote) = remote {
                    local.remote = remote.clone();
                }
                local
            }
            (None, Some(remote)) => LocalConfig::new(remote.clone()),
            (None, None) => {
                return Err(Failure::usage(
                    "mptcp relay local: say where the remote relay is: --remote HOST:PORT, \
                     or `remote = \"HOST:PORT\"` under [local] in the --config file",
                ));
            }
        };
        if let Some((user, password)) = credentials {
            local = local.credentials(&user, &password);
        }
        if args.common.no_mptcp {
            local = local.mptcp(false);
        }
        if args.common.no_multiplex {
            local = local.multiplex(false);
        }
        override_list(&mut local.redirect, &args.redirect);
        override_list(&mut local.tproxy, &args.tproxy);
        override_list(&mut local.socks5, &args.socks5);
        override_list(&mut local.http, &args.http);
        override_list(&mut local.allowed_clients, &args.common.allow_clients);
        config.local = Some(local);
        Ok(())
    })
}

/// The configuration of `mptcp relay remote`, like [`local_config`].
fn remote_config(args: &RemoteArgs) -> Result<Config, Failure> {
    let credentials = credentials(&args.common)?;
    load_then(args.common.config.as_ref(), |config| {
        config.local = None;
        let mut remote = match (config.remote.take(), args.listen.first()) {
            (Some(remote), _) => remote,
            (None, Some(&first)) => RemoteConfig::new(first),
            (None, None) => {
                return Err(Failure::usage(
                    "mptcp relay remote: say where to listen: --listen ADDR:PORT, \
                     or `listen = [\"ADDR:PORT\"]` under [remote] in the --config file",
                ));
            }
        };
        override_list(&mut remote.listen, &args.listen);
        if let Some((username, password)) = credentials {
            remote.users = vec![User { username, password }];
        }
        if args.common.no_mptcp {
            remote.mptcp = false;
        }
        if args.common.no_multiplex {
            remote.multiplex = false;
        }
        remote.allow_unauthenticated_loopback |= args.allow_unauthenticated_loopback;
        remote.onward_mptcp |= args.onward_mptcp;
        override_list(&mut remote.allowed_clients, &args.common.allow_clients);
        remote
            .allow_destinations
            .extend(args.allow_destinations.iter().copied());
        remote
            .deny_destinations
            .extend(args.deny_destinations.iter().copied());
        config.remote = Some(remote);
        Ok(())
    })
}

/// The signals the relay handles, blocked in every thread so that the main
/// thread takes them synchronously with `sigtimedwait`.
fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set we own; the
    // signal numbers are valid.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks `set` in the calling thread; threads spawned afterwards inherit it.
fn block_signals(set: &libc::sigset_t) -> Result<(), Failure> {
    // SAFETY: `set` is an initialised signal set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(Failure::failed(format!(
            "blocking signals: {}",
            std::io::Error::from_raw_os_error(rc)
        )));
    }
    Ok(())
}

/// Waits for one of `set` for at most `timeout`; `None` on timeout.
fn wait_signal(set: &libc::sigset_t, timeout: Option<Duration>) -> Option<libc::c_int> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    loop {
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: `set` is initialised, `ts_ptr` is null or points to a live
        // timespec, and no siginfo is asked for.
        let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), ts_ptr) };
        if sig >= 0 {
            return Some(sig);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            _ => return None, // EAGAIN: the timeout passed
        }
    }
}

/// A periodic task of the main loop.
struct Every {
    period: Duration,
    next: Instant,
}

impl Every {
    fn new(period: Duration) -> Every {
        Every {
            period,
            next: Instant::now() + period,
        }
    }

    /// Whether it is due at `now`; if so, the next time is one period on.
    fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.period;
        true
    }
}

/// Starts the relay and runs until SIGINT/SIGTERM, telling systemd (when
/// `NOTIFY_SOCKET` is set) when it is ready and stopping, and sending it
/// watchdog keep-alives from the loop that handles signals.
fn serve(config: Config, common: &CommonArgs) -> CmdResult {
    let signals = handled_signals();
    block_signals(&signals)?;
    let notifier = Notifier::from_env().map_err(|e| Failure::io("NOTIFY_SOCKET", &e))?;
    let relay = Relay::start(config).map_err(|e| Failure::io("starting the relay", &e))?;
    for (kind, addr) in relay.listeners() {
        tracing::info!("listening: {kind:?} on {addr}");
    }
    let notify = |state: &str| notifier.iter().for_each(|n| n.notify(state));
    notify("READY=1");
    let mut stats = common
        .stats
        .filter(|s| *s > 0)
        .map(|s| Every::new(Duration::from_secs(s)));
    let mut watchdog = notifier
        .as_ref()
        .and_then(Notifier::watchdog_interval)
        .map(Every::new);
    loop {
        let now = Instant::now();
        let timeout = [&stats, &watchdog]
            .into_iter()
            .flatten()
            .map(|t| t.next.saturating_duration_since(now))
            .min();
        let sig = wait_signal(&signals, timeout);
        let now = Instant::now();
        if watchdog.as_mut().is_some_and(|t| t.due(now)) {
            notify("WATCHDOG=1");
        }
        if sig == Some(libc::SIGUSR1) || stats.as_mut().is_some_and(|t| t.due(now)) {
            tracing::info!("counters: {}", relay.stats());
        }
        if let Some(sig @ (libc::SIGINT | libc::SIGTERM)) = sig {
            tracing::info!(
                "signal {sig}: stopping; draining open connections for up to {} s",
                common.drain
            );
            break;
        }
    }
    notify("STOPPING=1");
    let stats = relay.shutdown(Duration::from_secs(common.drain));
    tracing::info!("stopped; counters: {stats}");
    Ok(())
}

/// `mptcp relay ...`.
pub fn run(command: RelayCommand) -> CmdResult {
    match command {
        RelayCommand::Local(args) => serve(local_config(&args)?, &args.common),
        RelayCommand::Remote(args) => serve(remote_config(&args)?, &args.common),
    }
}
