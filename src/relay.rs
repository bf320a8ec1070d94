//! `mptcp relay local|remote`: the relay engine of `mptcp_core::relay`, from
//! a TOML file (`--config`, see `examples/relay.toml`) and/or flags.
//!
//! Flags override the file: a listener flag replaces that list of the file.
//! Counters go to the log on SIGUSR1 and every `--stats` seconds, and with
//! `--metrics` to a status page and Prometheus ([`crate::web`]);
//! SIGINT/SIGTERM stop accepting and drain open connections for `--drain`
//! seconds. SIGHUP re-reads the file and starts a relay from it beside
//! the running one (the listeners share their ports with `SO_REUSEPORT`),
//! which then serves its open connections until they end; a file that
//! fails to load or start leaves the running relay as it is. Under systemd
//! (`Type=notify`) it reports readiness and sends watchdog keep-alives (see
//! [`crate::notify`]).

use mptcp_core::relay::{NoRemote, PublicKey, RemotePolicy, SecretKey};
use mptcp_core::sys::process::SignalSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use mptcp_core::relay::{
    Cidr, Config, ConfigError, ListenerKind, LocalConfig, Relay, RelayHandle, RemoteConfig, Stats,
    User,
};

use crate::alerts::Alerts;
use crate::failure::{CmdResult, Failure};
use crate::notify::Notifier;
use crate::web::Role;

/// `mptcp relay`.
#[derive(Subcommand, Debug)]
pub enum RelayCommand {
    /// On the LAN's router: carry plain TCP (redirected, SOCKS5 or HTTP
    /// proxy clients) over MPTCP to the remote relay
    #[command(after_help = "Examples:\n  \
        mptcp relay local --remote 203.0.113.5:1080 --user alice --password-env RELAY_PASSWORD \\\n      \
        --redirect 0.0.0.0:12345 --socks5 192.168.1.1:1080\n  \
        mptcp relay local --config /etc/mptcp/relay.toml --stats 60")]
    Local(Box<LocalArgs>),
    /// On a server: a SOCKS5 server on MPTCP that connects onward
    #[command(after_help = "Example:\n  \
        mptcp relay remote --listen 0.0.0.0:1080 --user alice --password-env RELAY_PASSWORD")]
    Remote(Box<RemoteArgs>),
    /// Make a key pair for the encrypted link between the relays: the
    /// secret key goes to FILE (mode 0600), the public key to standard
    /// output, for the other relay to pin
    #[command(after_help = "Example:\n  \
        mptcp relay keygen /etc/mptcp/remote.key   # prints the public key\n  \
        mptcp relay remote --listen 0.0.0.0:1080 --key-file /etc/mptcp/remote.key \\\n      \
        --peer-key LOCAL_PUBLIC_KEY\n  \
        mptcp relay local --remote 203.0.113.5:1080 --key-file /etc/mptcp/local.key \\\n      \
        --remote-key REMOTE_PUBLIC_KEY --redirect 0.0.0.0:12345")]
    Keygen(KeygenArgs),
}

/// `mptcp relay keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where the secret key goes (created with mode 0600; never overwritten)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
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
    /// Username (with --password-env or --password-file): for the remote
    /// relay (local role), or the one accepted user (remote role)
    #[arg(long, value_name = "NAME", requires = "password")]
    pub user: Option<String>,
    /// Environment variable holding the password (kept off the command line)
    #[arg(long, value_name = "VAR", requires = "user", group = "password")]
    pub password_env: Option<String>,
    /// File whose first line is the password (e.g. a systemd credential:
    /// `--password-file %d/relay-password` with `LoadCredential=`)
    #[arg(long, value_name = "FILE", requires = "user", group = "password")]
    pub password_file: Option<PathBuf>,
    /// Allow only clients from this network (repeatable)
    #[arg(long = "allow-client", value_name = "CIDR", value_parser = parse_cidr)]
    pub allow_clients: Vec<Cidr>,
    /// Serve a status page at http://ADDR/ and the counters for
    /// Prometheus at http://ADDR/metrics (PORT alone: on 127.0.0.1)
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = crate::metrics::parse_listen)]
    pub metrics: Option<SocketAddr>,
    /// Use plain TCP instead of MPTCP (towards the remote, or for listening)
    #[arg(long)]
    pub no_mptcp: bool,
    /// No multiplexed sessions: one connection to the remote per client
    /// connection (local role), or plain SOCKS5 only (remote role)
    #[arg(long)]
    pub no_multiplex: bool,
    /// This relay's secret key for the encrypted link (from `mptcp relay
    /// keygen`)
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// `mptcp relay local`.
#[derive(Args, Debug)]
pub struct LocalArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The remote relay (or any SOCKS5 server), HOST:PORT; repeat it for
    /// more remotes, in priority order (`,weight=N` sets a remote's share
    /// under --policy spread)
    #[arg(long, value_name = "HOST:PORT[,weight=N]", value_parser = parse_remote)]
    pub remote: Vec<(String, u32)>,
    /// How new connections choose among the remotes: failover (the first
    /// that works) or spread (in turns by weight)
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<RemotePolicy>,
    /// What new connections do when no remote works: direct (from the
    /// router, without aggregation) or refuse [default: direct]
    #[arg(long, value_name = "WHAT")]
    pub fallback: Option<NoRemote>,
    /// Seconds a remote that failed must work before it takes new
    /// connections again [default: 10]
    #[arg(long, value_name = "SECS")]
    pub remote_hold: Option<u64>,
    /// Listener for connections redirected by nftables/iptables REDIRECT
    #[arg(long, value_name = "ADDR:PORT")]
    pub redirect: Vec<SocketAddr>,
    /// Listener for TPROXY (needs CAP_NET_ADMIN and policy routing)
    #[arg(long, value_name = "ADDR:PORT")]
    pub tproxy: Vec<SocketAddr>,
    /// UDP listener for TPROXY: the LAN's datagrams, carried in the session
    /// to the remote relay (needs CAP_NET_ADMIN and policy routing)
    #[arg(long, value_name = "ADDR:PORT")]
    pub tproxy_udp: Vec<SocketAddr>,
    /// SOCKS5 listener for LAN clients
    #[arg(long, value_name = "ADDR:PORT")]
    pub socks5: Vec<SocketAddr>,
    /// HTTP proxy listener (CONNECT and absolute URIs)
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Vec<SocketAddr>,
    /// The remote relay's public key: the link is encrypted and only that
    /// relay can answer (with --key-file)
    #[arg(long, value_name = "KEY", requires = "key_file")]
    pub remote_key: Option<PublicKey>,
    /// The link state `mptcp paths auto` keeps: a session with fewer
    /// subflows than usable links there is replaced [default:
    /// /run/mptcp/links]
    #[arg(long, value_name = "FILE", env = "MPTCP_LINKS_FILE")]
    pub links_file: Option<PathBuf>,
    /// Where the state of the remote relays is kept each second, for
    /// `mptcp status` (removed at exit)
    #[arg(long, value_name = "FILE", env = "MPTCP_REMOTES_FILE", default_value = crate::remotes::DEFAULT_FILE)]
    pub remotes_file: PathBuf,
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
    /// Let in the local relay with this public key (repeatable; with
    /// --key-file; none listed: any key, the login decides)
    #[arg(long = "peer-key", value_name = "KEY", requires = "key_file")]
    pub peer_keys: Vec<PublicKey>,
    /// With --key-file, serve plain SOCKS5 clients (curl, proxychains,
    /// dante) too
    #[arg(long, requires = "key_file")]
    pub plain: bool,
}

fn parse_cidr(text: &str) -> Result<Cidr, String> {
    text.parse()
}

/// Why a configuration did not load: the engine's check of it, or a flag.
enum LoadError {
    Config(ConfigError),
    Flags(Failure),
}

impl From<ConfigError> for LoadError {
    fn from(e: ConfigError) -> LoadError {
        LoadError::Config(e)
    }
}

/// The configuration file (if any) with `adjust` (the command line's
/// flags) applied, then validated: a flag may supply what the file lacks.
fn load_then(
    path: Option<&PathBuf>,
    adjust: impl FnOnce(&mut Config) -> Result<(), Failure>,
) -> Result<Config, Failure> {
    let flags = |config: &mut Config| {
        if let Some(path) = path {
            warn_if_readable(path, config);
        }
        adjust(config).map_err(LoadError::Flags)
    };
    let loaded = match path {
        Some(path) => Config::from_file_then(path, flags),
        None => {
            let mut config = Config::new();
            flags(&mut config)
                .and_then(|()| Ok(config.validate()?))
                .map(|()| config)
        }
    };
    loaded.map_err(|e| match e {
        LoadError::Flags(failure) => failure,
        LoadError::Config(e) => Failure::failed(worded(e, path.is_some())),
    })
}

/// Warns when the file holds passwords or keys and users other than its
/// owner may read it.
fn warn_if_readable(path: &Path, file: &Config) {
    let secrets = file
        .local
        .as_ref()
        .is_some_and(|l| l.password.is_some() || l.key.is_some())
        || file
            .remote
            .as_ref()
            .is_some_and(|r| !r.users.is_empty() || r.key.is_some());
    if secrets {
        warn_if_others_may_read(path, "passwords or keys");
    }
}

/// Warns when users other than its owner may read `path`, which holds
/// `what` (as ssh does for its keys).
fn warn_if_others_may_read(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "{} holds {what} and others than its owner may read it (mode {mode:03o}): \
             chmod 600 {}",
            path.display(),
            path.display()
        );
    }
}

/// A configuration error as its reader gave the configuration: the engine
/// names the file's keys for an open proxy (no users), which a command line
/// gives as flags.
fn worded(mut e: ConfigError, from_file: bool) -> String {
    let open_proxy = e.key.as_deref() == Some("remote.users") && e.message.contains("open proxy");
    if !open_proxy {
        return e.to_string();
    }
    if from_file {
        return format!("{e}\n  hint: or give --user NAME --password-env VAR");
    }
    e.message = e
        .message
        .replace(
            "add a [[remote.users]] entry (username, password)",
            "give --user NAME --password-env VAR",
        )
        .replace(
            "set allow_unauthenticated_loopback = true",
            "add --allow-unauthenticated-loopback",
        );
    e.to_string()
}

fn credentials(common: &CommonArgs) -> Result<Option<(String, String)>, Failure> {
    let Some(user) = &common.user else {
        return Ok(None);
    };
    let password = match (&common.password_env, &common.password_file) {
        (Some(var), _) => std::env::var(var).map_err(|_| {
            Failure::usage(format!(
                "--password-env {var}: the variable {var} is not set\n  hint: export {var}=... first"
            ))
        })?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::io(format!("reading {}", path.display()), &e))?;
            warn_if_others_may_read(path, "a password");
            text.lines().next().unwrap_or_default().to_owned()
        }
        (None, None) => return Ok(None),
    };
    Ok(Some((user.clone(), password)))
}

/// The secret key of `--key-file`, if given.
fn read_key(common: &CommonArgs) -> Result<Option<SecretKey>, Failure> {
    let Some(path) = &common.key_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::io(format!("reading the key file {}", path.display()), &e))?;
    let key = text.parse::<SecretKey>().map_err(|e| {
        Failure::usage(format!(
            "--key-file {}: {e}\n  hint: make one with `mptcp relay keygen {}`",
            path.display(),
            path.display()
        ))
    })?;
    warn_if_others_may_read(path, "a secret key");
    Ok(Some(key))
}

/// `mptcp relay keygen FILE`: a new key pair; the secret key into a new
/// file only its owner reads, the public key on standard output.
fn keygen(args: &KeygenArgs) -> CmdResult {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = SecretKey::generate();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&args.file)
        .map_err(|e| Failure::io(format!("creating {}", args.file.display()), &e))?;
    writeln!(file, "{key}")
        .map_err(|e| Failure::io(format!("writing {}", args.file.display()), &e))?;
    println!("{}", key.public_key());
    Ok(())
}

/// Replaces `list` with `flags` when any were given.
fn override_list<T: Clone>(list: &mut Vec<T>, flags: &[T]) {
    if !flags.is_empty() {
        *list = flags.to_vec();
    }
}

/// `HOST:PORT` or `HOST:PORT,weight=N` (1 to 1000).
fn parse_remote(text: &str) -> Result<(String, u32), String> {
    let (addr, weight) = match text.split_once(',') {
        None => (text, 1),
        Some((addr, option)) => {
            let weight = option
                .strip_prefix("weight=")
                .and_then(|w| w.parse::<u32>().ok())
                .filter(|w| (1..=1000).contains(w))
                .ok_or_else(|| format!("`{option}`: give weight=N, N from 1 to 1000"))?;
            (addr, weight)
        }
    };
    if !addr.contains(':') {
        return Err(format!("`{addr}`: give HOST:PORT"));
    }
    Ok((addr.to_owned(), weight))
}

/// The configuration of `mptcp relay local`: the file's `[local]` (if
/// any) with the flags applied; a `[remote]` section of the file is ignored.
fn local_config(args: &LocalArgs) -> Result<Config, Failure> {
    let credentials = credentials(&args.common)?;
    load_then(args.common.config.as_ref(), |config| {
        config.remote = None;
        let first = args.remote.first();
        let mut local = match (config.local.take(), first) {
            (Some(mut local), remote) => {
                if let Some((remote, _)) = remote {
                    local.remote = remote.clone();
                    local.remotes.clear();
                }
                local
            }
            (None, Some((remote, _))) => LocalConfig::new(remote.clone()),
            (None, None) => {
                return Err(Failure::usage(
                    "mptcp relay local: say where the remote relay is: --remote HOST:PORT, \
                     or `remote = \"HOST:PORT\"` under [local] in the --config file",
                ));
            }
        };
        if let Some((_, weight)) = first {
            local.weight = *weight;
        }
        for (remote, weight) in args.remote.iter().skip(1) {
            local = local.also_remote(remote.clone());
            if let Some(entry) = local.remotes.last_mut() {
                entry.weight = *weight;
            }
        }
        if let Some(policy) = args.policy {
            local = local.policy(policy);
        }
        if let Some(fallback) = args.fallback {
            local = local.fallback(fallback);
        }
        if let Some(secs) = args.remote_hold {
            local = local.remote_hold_secs(secs);
        }
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
        override_list(&mut local.tproxy_udp, &args.tproxy_udp);
        override_list(&mut local.socks5, &args.socks5);
        override_list(&mut local.http, &args.http);
        override_list(&mut local.allowed_clients, &args.common.allow_clients);
        if let Some(key) = read_key(&args.common)? {
            local.key = Some(key.to_string());
        }
        if let Some(remote_key) = &args.remote_key {
            local.remote_key = Some(remote_key.to_string());
        }
        if let Some(path) = &args.links_file {
            local.links_file = Some(path.clone());
        }
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
        if let Some(key) = read_key(&args.common)? {
            remote.key = Some(key.to_string());
        }
        remote
            .peer_keys
            .extend(args.peer_keys.iter().map(ToString::to_string));
        if args.plain {
            remote.plain = Some(true);
        }
        config.remote = Some(remote);
        Ok(())
    })
}

/// The signals the relay handles, blocked in every thread so that the main
/// thread takes them synchronously.
const HANDLED_SIGNALS: [libc::c_int; 4] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1, libc::SIGHUP];

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

/// The configuration as this process runs it: listeners always get
/// `SO_REUSEPORT`, so that the relay a reload starts can bind the ports its
/// predecessor still holds. Unless the file asks for shared ports itself,
/// each address not in `in_force` is first bound without it, so that a
/// port another process listens on fails as "address in use" instead of
/// being shared.
fn shareable(
    mut config: Config,
    in_force: &[(ListenerKind, SocketAddr)],
) -> Result<Config, Failure> {
    if !config.engine.reuse_port {
        for (_, addr) in listen_addrs(&config) {
            if addr.port() == 0 || in_force.iter().any(|(_, a)| *a == addr) {
                continue;
            }
            if let Err(e) = probe_bind(addr)
                && e.kind() == std::io::ErrorKind::AddrInUse
            {
                return Err(Failure::failed(format!(
                    "cannot listen on {addr}: {e} (by another process)"
                )));
            }
        }
    }
    config.engine.reuse_port = true;
    Ok(config)
}

/// Binds (without listening) a TCP socket to `addr` as the relay would,
/// without `SO_REUSEPORT`.
fn probe_bind(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())
}

/// The listeners a configuration asks for, as configured (port 0 as 0).
fn listen_addrs(config: &Config) -> Vec<(ListenerKind, SocketAddr)> {
    let mut all = Vec::new();
    if let Some(l) = &config.local {
        for (kind, addrs) in [
            (ListenerKind::Redirect, &l.redirect),
            (ListenerKind::Tproxy, &l.tproxy),
            (ListenerKind::LocalSocks5, &l.socks5),
            (ListenerKind::Http, &l.http),
        ] {
            all.extend(addrs.iter().map(|a| (kind, *a)));
        }
        all.extend(l.dns.map(|a| (ListenerKind::DnsForwarder, a)));
    }
    if let Some(r) = &config.remote {
        all.extend(r.listen.iter().map(|a| (ListenerKind::RemoteSocks5, *a)));
    }
    all
}

/// What a reload from `old` to `new` changes, for the log.
fn changes(old: &Config, new: &Config) -> String {
    let (before, after) = (listen_addrs(old), listen_addrs(new));
    let list = |from: &[(ListenerKind, SocketAddr)], without: &[(ListenerKind, SocketAddr)]| {
        from.iter()
            .filter(|l| !without.contains(l))
            .map(|(kind, addr)| format!("{kind:?} on {addr}"))
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    let added = list(&after, &before);
    if !added.is_empty() {
        out.push(format!("listeners added: {}", added.join(", ")));
    }
    let removed = list(&before, &after);
    if !removed.is_empty() {
        out.push(format!("listeners removed: {}", removed.join(", ")));
    }
    let users = |c: &Config| c.remote.as_ref().map_or(0, |r| r.users.len());
    if users(old) != users(new) {
        out.push(format!("users: {} -> {}", users(old), users(new)));
    }
    let upstream = |c: &Config| c.local.as_ref().map(|l| l.remote.clone());
    if upstream(old) != upstream(new) {
        out.push(format!(
            "remote relay: {} -> {}",
            upstream(old).unwrap_or_default(),
            upstream(new).unwrap_or_default()
        ));
    }
    // The rest (passwords, policies, limits) is compared, not printed.
    if out.is_empty() && format!("{old:?}") != format!("{new:?}") {
        out.push("other settings (credentials, policies, limits)".into());
    }
    if out.is_empty() {
        "nothing changed".into()
    } else {
        out.join("; ")
    }
}

/// How long a relay replaced by a reload serves the connections it has:
/// until the last one ends (the idle timeout still applies), or until the
/// process stops.
const RELOAD_DRAIN: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The relays of one `mptcp relay` process, over reloads.
#[derive(Debug)]
pub struct Serving {
    /// The relay accepting connections (none once stopping).
    current: Option<RelayHandle>,
    /// Relays replaced by reloads (and the last one while it stops):
    /// their counters as they were when replaced, while they drain; their
    /// final ones (with nothing open) once drained.
    retired: Vec<Stats>,
}

impl Serving {
    /// The remote relays of the relay in force (local role), with their
    /// state.
    pub fn remotes(&self) -> Vec<mptcp_core::relay::RemoteStatus> {
        self.current
            .as_ref()
            .map(RelayHandle::remotes)
            .unwrap_or_default()
    }

    /// What new connections of the relay in force do when no remote works.
    pub fn fallback(&self) -> Option<NoRemote> {
        self.current.as_ref().and_then(RelayHandle::fallback)
    }

    /// The counters of every relay this process has run, added up, so that
    /// they only grow across reloads.
    pub fn totals(&self) -> Stats {
        let mut total = self
            .current
            .as_ref()
            .map(RelayHandle::stats)
            .unwrap_or_default();
        for r in &self.retired {
            total.accepted += r.accepted;
            total.active += r.active;
            total.relayed += r.relayed;
            total.bytes_up += r.bytes_up;
            total.bytes_down += r.bytes_down;
            total.splice_fallbacks += r.splice_fallbacks;
            total.sessions += r.sessions;
            total.multiplexed += r.multiplexed;
            total.session_errors += r.session_errors;
            total.worker_panics += r.worker_panics;
            total.direct += r.direct;
            total.udp.add(&r.udp);
            for (t, e) in total.errors.iter_mut().zip(r.errors) {
                *t += e;
            }
        }
        total
    }

    /// The listeners of the relay accepting connections.
    pub fn listeners(&self) -> Vec<(ListenerKind, SocketAddr)> {
        self.current
            .as_ref()
            .map(|r| r.listeners().to_vec())
            .unwrap_or_default()
    }

    /// Puts `next` in place of the current relay, whose counters stay as
    /// they are now until [`Serving::drained`] names its slot.
    fn retire(&mut self, next: Option<RelayHandle>) -> (RelayHandle, usize) {
        let old = std::mem::replace(&mut self.current, next).expect("a relay is running");
        self.retired.push(old.stats());
        (old, self.retired.len() - 1)
    }

    /// The final counters of the relay retired in `slot`.
    fn drained(&mut self, slot: usize, last: Stats) {
        self.retired[slot] = Stats {
            active: 0,
            sessions: 0,
            ..last
        };
    }
}

/// The running relay and the configuration it runs; [`Relays::reload`]
/// replaces both.
struct Relays {
    serving: Arc<Mutex<Serving>>,
    config: Config,
}

impl Relays {
    fn start(config: Config) -> Result<Relays, Failure> {
        let config = shareable(config, &[])?;
        let relay = start(&config)?;
        log_listeners(&relay);
        Ok(Relays {
            serving: Arc::new(Mutex::new(Serving {
                current: Some(relay),
                retired: Vec::new(),
            })),
            config,
        })
    }

    fn totals(&self) -> Stats {
        lock(&self.serving).totals()
    }

    /// Starts a relay from `config`, then lets the one it replaces finish
    /// its connections in a thread; on any error the running relay stays.
    fn reload(&mut self, config: Result<Config, Failure>) -> Result<(), Failure> {
        let config = shareable(config?, &listen_addrs(&self.config))?;
        let relay = start(&config)?;
        tracing::info!("SIGHUP: reloaded; {}", changes(&self.config, &config));
        log_listeners(&relay);
        self.config = config;
        let (old, slot) = lock(&self.serving).retire(Some(relay));
        let serving = Arc::clone(&self.serving);
        std::thread::Builder::new()
            .name("relay-drain".into())
            .spawn(move || {
                let last = old.shutdown(RELOAD_DRAIN);
                tracing::debug!("the relay replaced by a reload has drained: {last}");
                lock(&serving).drained(slot, last);
            })
            .map_err(|e| Failure::io("starting a thread", &e))?;
        Ok(())
    }

    /// Drains the current relay for up to `drain` (relays replaced by
    /// reloads end with the process); the final totals.
    fn shutdown(self, drain: Duration) -> Stats {
        let (relay, slot) = lock(&self.serving).retire(None);
        let last = relay.shutdown(drain);
        let mut serving = lock(&self.serving);
        serving.drained(slot, last);
        serving.totals()
    }
}

/// Starts a relay; a listener that needs a privilege the process lacks (a
/// TPROXY listener, a port below 1024) exits 3 and says which capability.
fn start(config: &Config) -> Result<RelayHandle, Failure> {
    Relay::start(config.clone()).map_err(|e| {
        if e.kind() != std::io::ErrorKind::PermissionDenied {
            return Failure::io("starting the relay", &e);
        }
        let listeners = listen_addrs(config);
        let mut needs = Vec::new();
        if listeners
            .iter()
            .any(|(kind, _)| *kind == ListenerKind::Tproxy)
        {
            needs.push("TPROXY listeners need CAP_NET_ADMIN");
        }
        if listeners.iter().any(|(_, a)| (1..1024).contains(&a.port())) {
            needs.push(
                "ports below 1024 need CAP_NET_BIND_SERVICE (run it as root, \
                 `setcap cap_net_bind_service=+ep` on the mptcp binary, or \
                 AmbientCapabilities=CAP_NET_BIND_SERVICE in its unit)",
            );
        }
        if needs.is_empty() {
            needs.push("run it as root");
        }
        Failure::unsupported(format!(
            "starting the relay: {e}\n  hint: {}",
            needs.join("; ")
        ))
    })
}

fn lock(serving: &Mutex<Serving>) -> std::sync::MutexGuard<'_, Serving> {
    serving
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn log_listeners(relay: &RelayHandle) {
    for (kind, addr) in relay.listeners() {
        tracing::info!("listening: {kind:?} on {addr}");
    }
}

/// Starts the relay from `build` and runs until SIGINT/SIGTERM; SIGHUP
/// calls `build` again (the file re-read, the flags applied) and replaces
/// the relay without dropping its connections. Tells systemd (when
/// `NOTIFY_SOCKET` is set) when it is ready, reloading and stopping, and
/// sends it watchdog keep-alives from the loop that handles signals.
fn serve(
    build: &dyn Fn() -> Result<Config, Failure>,
    common: &CommonArgs,
    role: Role,
    remotes_file: Option<&Path>,
) -> CmdResult {
    let signals = SignalSet::new(&HANDLED_SIGNALS);
    signals
        .block()
        .map_err(|e| Failure::failed(format!("blocking signals: {e}")))?;
    let notifier = Notifier::from_env().map_err(|e| Failure::io("NOTIFY_SOCKET", &e))?;
    if common.metrics.is_some() {
        // The status page lists recent events, from the first.
        crate::events::record();
    }
    let mut relays = Relays::start(build()?)?;
    if let Some(addr) = common.metrics {
        let addr = crate::web::serve(addr, Arc::clone(&relays.serving), role)
            .map_err(|e| Failure::io(format_args!("--metrics {addr}"), &e))?;
        tracing::info!("status page: http://{addr}/");
        tracing::info!("metrics: http://{addr}/metrics");
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
    let mut alerts = Alerts::default();
    let mut failures = Every::new(Duration::from_secs(1));
    // Said once: the state file cannot be written.
    let mut remotes_unwritable = None;
    loop {
        let now = Instant::now();
        let timeout = [stats.as_ref(), watchdog.as_ref(), Some(&failures)]
            .into_iter()
            .flatten()
            .map(|t| t.next.saturating_duration_since(now))
            .min();
        let sig = signals.wait(timeout);
        let now = Instant::now();
        if watchdog.as_mut().is_some_and(|t| t.due(now)) {
            notify("WATCHDOG=1");
        }
        if sig == Some(libc::SIGUSR1) || stats.as_mut().is_some_and(|t| t.due(now)) {
            tracing::info!("counters: {}", relays.totals());
        }
        if failures.due(now) {
            alerts.check(&relays.totals(), now);
            if let Some(path) = remotes_file {
                let (remotes, fallback) = {
                    let serving = lock(&relays.serving);
                    (serving.remotes(), serving.fallback())
                };
                if let Err(e) = crate::remotes::write(path, &remotes, fallback) {
                    remotes_unwritable.get_or_insert_with(|| {
                        tracing::warn!("cannot keep the remotes' state in {}: {e}", path.display());
                    });
                }
            }
        }
        match sig {
            Some(libc::SIGHUP) => {
                notifier.iter().for_each(Notifier::reloading);
                if let Err(e) = relays.reload(build()) {
                    tracing::warn!("SIGHUP: the configuration in force stays: {e}");
                }
                notify("READY=1");
            }
            Some(sig @ (libc::SIGINT | libc::SIGTERM)) => {
                tracing::info!(
                    "signal {sig}: stopping; draining open connections for up to {} s",
                    common.drain
                );
                break;
            }
            _ => {}
        }
    }
    notify("STOPPING=1");
    let stats = relays.shutdown(Duration::from_secs(common.drain));
    if let Some(path) = remotes_file {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped; counters: {stats}");
    Ok(())
}

/// `mptcp relay ...`.
pub fn run(command: RelayCommand) -> CmdResult {
    match command {
        RelayCommand::Local(args) => serve(
            &|| local_config(&args),
            &args.common,
            Role::Local,
            Some(&args.remotes_file),
        ),
        RelayCommand::Remote(args) => {
            serve(&|| remote_config(&args), &args.common, Role::Remote, None)
        }
        RelayCommand::Keygen(args) => keygen(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(listen: &str, users: usize) -> Config {
        let mut text = format!("[remote]\nlisten = [{listen}]\n");
        for i in 0..users {
            text += &format!("[[remote.users]]\nusername = \"u{i}\"\npassword = \"p\"\n");
        }
        Config::from_toml(&text).unwrap()
    }

    #[test]
    fn a_reload_reports_listeners_and_users() {
        let old = remote("\"127.0.0.1:1080\", \"127.0.0.1:1081\"", 1);
        let new = remote("\"127.0.0.1:1081\", \"127.0.0.1:1082\"", 2);
        assert_eq!(
            changes(&old, &new),
            "listeners added: RemoteSocks5 on 127.0.0.1:1082; \
             listeners removed: RemoteSocks5 on 127.0.0.1:1080; users: 1 -> 2"
        );
        assert_eq!(changes(&old, &old), "nothing changed");
        let mut other = old.clone();
        other.engine.idle_timeout_secs += 1;
        assert_eq!(
            changes(&old, &other),
            "other settings (credentials, policies, limits)"
        );
    }
}
