//! Relay configuration: a TOML file (see `examples/relay.toml`) or the same
//! structure built in code. Unknown keys are errors, and every error names
//! the key and, for files, the line.
#![forbid(unsafe_code)]

use super::seal::{PublicKey, SecretKey};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::policy::Cidr;
use super::udp_ports::{UdpPortAction, UdpPorts};
use std::collections::BTreeMap;

/// The whole configuration: engine settings and one or both roles.
///
/// ```
/// use mptcp_core::relay::Config;
/// let config = Config::from_toml(r#"
///     [remote]
///     listen = ["127.0.0.1:0"]
///     allow_unauthenticated_loopback = true
/// "#).unwrap();
/// assert!(config.remote.is_some());
/// let err = Config::from_toml("[remote]\nlisten = [\"x\"]\n").unwrap_err();
/// assert!(err.to_string().contains("line 2"), "{err}");
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Threads, limits, timeouts.
    #[serde(default)]
    pub engine: EngineConfig,
    /// The local role (on the LAN's router).
    pub local: Option<LocalConfig>,
    /// The remote role (on the far server).
    pub remote: Option<RemoteConfig>,
}

/// Settings shared by all listeners (`[engine]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Worker threads, each with its own epoll; 0 means one per core.
    pub workers: usize,
    /// Relayed connections at most, over all listeners; more are refused.
    pub max_connections: usize,
    /// Connections at most from one client IP address (a multiplexing
    /// local relay's streams do not count here: see
    /// `max_streams_per_session`).
    pub max_connections_per_client: usize,
    /// Connections at most that have not finished their request and
    /// authentication yet; they do not count towards `max_connections`,
    /// so idle handshakes cannot refuse real connections.
    pub max_handshakes: usize,
    /// Handshakes at most from one client IP address.
    pub max_handshakes_per_client: usize,
    /// Streams at most on one multiplexed session (remote role): the
    /// per-client limit of a local relay, which carries a whole LAN.
    pub max_streams_per_session: usize,
    /// Seconds a connection may take from accept until data flows (request,
    /// authentication, DNS, connect, upstream handshake).
    pub handshake_timeout_secs: u64,
    /// Seconds without any byte in either direction before a connection is
    /// closed; 0 disables.
    pub idle_timeout_secs: u64,
    /// Bytes per pipe of the splice data path when a flow starts (rounded
    /// up by the kernel to a power of two pages).
    pub pipe_size: usize,
    /// Bytes a pipe may grow to: a flow that fills its pipe in one read is
    /// a bulk transfer, and a larger pipe moves it with fewer system calls;
    /// short connections keep small pipes, which are cheaper to create.
    pub pipe_max_size: usize,
    /// Raise the soft `RLIMIT_NOFILE` to the hard limit at start (each
    /// relayed connection needs 2 sockets plus pipes while data is in
    /// flight).
    pub raise_fd_limit: bool,
    /// Set `SO_REUSEPORT` on the listeners, so that several relay processes
    /// (same user) can listen on the same ports and the kernel spreads new
    /// connections across them: more connections than one process's
    /// `RLIMIT_NOFILE` allows, or one process per core. Off by default, so
    /// that starting a relay twice by mistake fails with "address in use".
    pub reuse_port: bool,
    /// Bytes the other relay may send on each multiplexed stream before
    /// this one has passed them on (the stream's flow-control window). A
    /// stream's throughput is at most this per round trip between the
    /// relays; only a stream whose reader is slow holds that much.
    pub stream_window: u32,
    /// How far a stream's window may grow, bytes; 0 (the default): it
    /// stays at `stream_window`. A stream whose window is smaller than
    /// what the path between the relays holds (rate × round trip: 40
    /// Mbit/s at 150 ms is 750 KB, 1 Gbit/s at 150 ms 19 MB) says so with
    /// BLOCKED frames, and the receiving relay doubles the window while its
    /// reader keeps up, up to this; the session's receive buffer grows with
    /// it. Off by default because a grown window also fills the sending
    /// relay's socket buffers: a 1-byte echo beside a bulk upload on 20
    /// Mbit/s at 5 ms + 20 at 75 ms then waited 300-400 ms in two runs of
    /// six, against 20 ms with the fixed window. Raise it where one stream
    /// must fill more than `stream_window` per round trip.
    pub stream_window_max: u32,
    /// Congestion control of the MPTCP connections between the relays (all
    /// their subflows), by the kernel's name (`bbr`, `cubic`, ...; see
    /// `net.ipv4.tcp_available_congestion_control`), `system` for the
    /// host's default, or `auto` (the default): bbr while one of a
    /// session's subflows has a round trip of [`LONG_ROUND_TRIP`] or more,
    /// a loss-based one while all are shorter (the host's default when it
    /// is loss-based, else cubic, else reno). A loss-based algorithm
    /// (reno, cubic) grows a long-delay subflow's window slowly and halves
    /// it at each loss, and the pair then carries little more than its fast
    /// link (0.55 of the links' sum on 20 Mbit/s at 5 ms + 20 at 75 ms,
    /// against 0.93 with bbr); on short round trips bbr carries less than
    /// reno (0.85-0.97 of 20 + 5 Mbit/s without delay, against 0.96-0.98).
    /// Connections of `multiplex = false` keep bbr under `auto`. Where the
    /// kernel refuses the name, the relay warns once and keeps the host's
    /// default.
    pub congestion_control: String,
    /// Seconds without a datagram either way before a UDP association
    /// ends (and before one of its flows stops counting against
    /// `udp_max_flows`).
    pub udp_idle_timeout_secs: u64,
    /// Destinations (address and port) one UDP association may send to
    /// within the idle timeout; datagrams to more are dropped.
    pub udp_max_flows: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 0,
            max_connections: 20_000,
            max_connections_per_client: 2_000,
            max_handshakes: 2_048,
            max_handshakes_per_client: 64,
            max_streams_per_session: 8_192,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 600,
            pipe_size: 64 * 1024,
            pipe_max_size: 1024 * 1024,
            raise_fd_limit: true,
            reuse_port: false,
            stream_window: 4 << 20,
            stream_window_max: 0,
            congestion_control: AUTO_CONGESTION_CONTROL.to_owned(),
            udp_idle_timeout_secs: 60,
            udp_max_flows: 256,
        }
    }
}

impl EngineConfig {
    /// The handshake timeout as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// The idle timeout, `None` when disabled.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_secs > 0).then(|| Duration::from_secs(self.idle_timeout_secs))
    }

    /// The idle timeout of UDP associations and their flows.
    pub fn udp_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.udp_idle_timeout_secs)
    }

    /// How far a stream's window may grow: `stream_window_max`, or
    /// `stream_window` when that is 0.
    pub fn stream_window_limit(&self) -> u32 {
        if self.stream_window_max == 0 {
            self.stream_window
        } else {
            self.stream_window_max
        }
    }

    /// The congestion control to set on the sessions' sockets when they
    /// open; `None` for the host's default (`system`). Under `auto`, bbr
    /// until the subflows' round trips are known.
    pub fn session_congestion_control(&self) -> Option<&str> {
        match self.congestion_control.as_str() {
            SYSTEM_CONGESTION_CONTROL => None,
            AUTO_CONGESTION_CONTROL => Some(LONG_ROUND_TRIP_CONGESTION_CONTROL),
            name => Some(name),
        }
    }

    /// Whether sessions choose their congestion control by their
    /// subflows' round trips (`auto`).
    pub fn adapts_congestion_control(&self) -> bool {
        self.congestion_control == AUTO_CONGESTION_CONTROL
    }
}

/// The `congestion_control` value that keeps the host's default.
const SYSTEM_CONGESTION_CONTROL: &str = "system";
/// The `congestion_control` value that chooses by round trip.
const AUTO_CONGESTION_CONTROL: &str = "auto";
/// What `auto` runs on sessions with a long round trip.
pub(crate) const LONG_ROUND_TRIP_CONGESTION_CONTROL: &str = "bbr";
/// The shortest round trip (a subflow's least, `tcpi_min_rtt`, which
/// queueing does not raise) that `auto` counts as long: DSL and fibre to a
/// nearby server stay under it, LTE and satellite links do not.
pub const LONG_ROUND_TRIP: Duration = Duration::from_millis(20);

/// A congestion control name the kernel could know: 1 to 15 characters
/// (`TCP_CA_NAME_MAX` is 16 with its NUL) of letters, digits and `_`.
/// Whether this kernel has it shows only when a socket asks for it.
fn check_congestion_control(name: &str) -> Result<(), String> {
    let valid = (1..16).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a congestion control name (like \"bbr\" or \"cubic\", \
             up to 15 letters, digits or _), nor \"{SYSTEM_CONGESTION_CONTROL}\" or \
             \"{AUTO_CONGESTION_CONTROL}\""
        ))
    }
}

/// How the local role chooses among several remote relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemotePolicy {
    /// The first remote (in the order given) that works takes every new
    /// connection; the others are backups.
    #[default]
    Failover,
    /// New connections take turns over the working remotes, by weight; a
    /// connection stays on its remote for its life.
    Spread,
}

impl std::str::FromStr for RemotePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<RemotePolicy, String> {
        match s {
            "failover" => Ok(RemotePolicy::Failover),
            "spread" => Ok(RemotePolicy::Spread),
            other => Err(format!("`{other}`: give failover or spread")),
        }
    }
}

/// What the local role does with a new connection when no remote works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoRemote {
    /// Connect to the destination from the router itself, over its own
    /// routing (no aggregation, no encryption of the WAN hop): the LAN
    /// stays online. Connections go through a remote again once one works.
    #[default]
    Direct,
    /// Refuse the connection.
    Refuse,
}

impl std::str::FromStr for NoRemote {
    type Err = String;
    fn from_str(s: &str) -> Result<NoRemote, String> {
        match s {
            "direct" => Ok(NoRemote::Direct),
            "refuse" => Ok(NoRemote::Refuse),
            other => Err(format!("`{other}`: give direct or refuse")),
        }
    }
}

/// A remote relay beside the first (`[[local.remotes]]`); what it does not
/// set it takes from `[local]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteEntry {
    /// `host:port`.
    pub address: String,
    /// Username for it (else `local.username`).
    pub username: Option<String>,
    /// Password for it (else `local.password`).
    pub password: Option<String>,
    /// Its public key, pinned (else `local.remote_key`).
    pub remote_key: Option<String>,
    /// Its share of new connections under `spread`.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Log in with no username and password, whatever `[local]` says
    /// (a SOCKS5 server such as dante that takes anyone from the router).
    #[serde(default)]
    pub anonymous: bool,
}

fn default_weight() -> u32 {
    1
}

fn default_remote_hold_secs() -> u64 {
    10
}

/// The local role (`[local]`): accept plain TCP from the LAN and carry it
/// to the remote relay over MPTCP, speaking SOCKS5.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The remote relay (or any SOCKS5 server, e.g. dante), `host:port`:
    /// the first of the remotes.
    pub remote: String,
    /// The first remote's share of new connections under `spread`.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// More remote relays, after `remote` in priority order.
    #[serde(default)]
    pub remotes: Vec<RemoteEntry>,
    /// How new connections choose among the remotes.
    #[serde(default)]
    pub policy: RemotePolicy,
    /// Seconds a remote that failed must work before it takes new
    /// connections again.
    #[serde(default = "default_remote_hold_secs")]
    pub remote_hold_secs: u64,
    /// What new connections do when no remote works. Connections that
    /// name their destination (redirected, TPROXY, SOCKS5, HTTP) can go
    /// direct.
    #[serde(default)]
    pub fallback: NoRemote,
    /// Username for the remote relay; with `password`.
    pub username: Option<String>,
    /// Password for the remote relay.
    pub password: Option<String>,
    /// Connect to the remote with MPTCP (falls back to TCP if the kernel
    /// refuses MPTCP sockets).
    #[serde(default = "yes")]
    pub mptcp: bool,
    /// Carry connections as streams of one long-lived MPTCP connection per
    /// worker when the remote is this project's relay: no handshake, no
    /// subflow join and no round trip to the remote per connection. Other
    /// SOCKS5 servers (dante) refuse the request and get one connection
    /// per client connection, as with `false`. With keys, `false` gives
    /// every client connection an encrypted session of its own.
    #[serde(default = "yes")]
    pub multiplex: bool,
    /// Sessions a worker keeps at most: one, and more while the others are
    /// busy with bulk transfers, so that new connections do not wait behind
    /// a download. 1: every connection of a worker shares one.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Seconds a session beyond a worker's first may stay idle (no frame
    /// either way, no stream) before it is closed.
    #[serde(default = "default_spare_session_idle_secs")]
    pub spare_session_idle_secs: u64,
    /// Listeners for connections redirected by nftables/iptables `REDIRECT`
    /// (original destination from `SO_ORIGINAL_DST`).
    #[serde(default)]
    pub redirect: Vec<SocketAddr>,
    /// Listeners for `TPROXY` (socket option `IP_TRANSPARENT`, needs
    /// CAP_NET_ADMIN; the original destination is the local address).
    #[serde(default)]
    pub tproxy: Vec<SocketAddr>,
    /// UDP listeners for `TPROXY` (`IP_TRANSPARENT`, needs CAP_NET_ADMIN;
    /// each datagram's original destination from `IP_RECVORIGDSTADDR`):
    /// every (LAN source, destination) is a flow carried to a remote relay
    /// in a session, and its answers leave with the destination as their
    /// source.
    #[serde(default)]
    pub tproxy_udp: Vec<SocketAddr>,
    /// UDP from the LAN by destination port (`"443"` or `"5000-5100"`):
    /// `carry` (the default), `block` (dropped, counted) or `direct`
    /// (sent from the router itself).
    #[serde(default)]
    pub udp_ports: BTreeMap<String, UdpPortAction>,
    /// A DNS forwarder for the LAN, on UDP and TCP: queries to this
    /// address go to `dns_upstream` through the remote relay.
    #[serde(default)]
    pub dns: Option<SocketAddr>,
    /// The resolver the DNS forwarder's queries go to (an address, as the
    /// remote relay sees it).
    #[serde(default)]
    pub dns_upstream: Option<SocketAddr>,
    /// SOCKS5 listeners for LAN clients (no authentication).
    #[serde(default)]
    pub socks5: Vec<SocketAddr>,
    /// HTTP proxy listeners (CONNECT and absolute-URI requests).
    #[serde(default)]
    pub http: Vec<SocketAddr>,
    /// LAN clients allowed to connect (CIDRs). Empty: the SOCKS5 and HTTP
    /// listeners serve the private ranges (`DEFAULT_LAN_CLIENTS`), the
    /// REDIRECT and TPROXY listeners whatever the firewall sends them.
    #[serde(default)]
    pub allowed_clients: Vec<Cidr>,
    /// This relay's secret key (base64, from `mptcp relay keygen`); with
    /// `remote_key`, sessions to the remote are encrypted.
    #[serde(default)]
    pub key: Option<String>,
    /// The remote relay's public key, pinned: sessions are encrypted and
    /// authenticated (Noise IK), and a server without the matching secret
    /// key cannot answer.
    #[serde(default)]
    pub remote_key: Option<String>,
    /// The link state of `mptcp paths auto`: a session with fewer subflows
    /// than usable links there (for a few seconds) is replaced, its streams
    /// finishing on it. Nothing is checked while no daemon keeps the file.
    #[serde(default = "default_links_file")]
    pub links_file: Option<std::path::PathBuf>,
}

fn default_links_file() -> Option<std::path::PathBuf> {
    Some(std::path::PathBuf::from("/run/mptcp/links"))
}

fn yes() -> bool {
    true
}

fn default_max_sessions() -> usize {
    4
}

fn default_spare_session_idle_secs() -> u64 {
    60
}

/// A SOCKS5 user of the remote relay.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// 1 to 255 bytes.
    pub username: String,
    /// 1 to 255 bytes.
    pub password: String,
}

/// The remote role (`[remote]`): a SOCKS5 server on MPTCP that connects
/// onward to destinations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Listen addresses (`ip:port`).
    pub listen: Vec<SocketAddr>,
    /// Listen with MPTCP (plain TCP clients are served too).
    #[serde(default = "yes")]
    pub mptcp: bool,
    /// Connect onward to destinations with MPTCP (falls back to TCP).
    #[serde(default)]
    pub onward_mptcp: bool,
    /// Accept multiplexed sessions from local relays (many connections as
    /// streams of one); plain SOCKS5 clients are served either way.
    #[serde(default = "yes")]
    pub multiplex: bool,
    /// Accepted users; authentication is required on every listener unless
    /// `allow_unauthenticated_loopback` and the listener is on loopback.
    #[serde(default)]
    pub users: Vec<User>,
    /// Serve clients without authentication on loopback listeners.
    #[serde(default)]
    pub allow_unauthenticated_loopback: bool,
    /// Clients allowed to connect (CIDRs); empty means all.
    #[serde(default)]
    pub allowed_clients: Vec<Cidr>,
    /// Destinations allowed even if in a default-denied range (loopback,
    /// link-local, private).
    #[serde(default)]
    pub allow_destinations: Vec<Cidr>,
    /// Destinations always denied.
    #[serde(default)]
    pub deny_destinations: Vec<Cidr>,
    /// This relay's secret key (base64, from `mptcp relay keygen`): local
    /// relays that pin its public key get encrypted sessions.
    #[serde(default)]
    pub key: Option<String>,
    /// Public keys of the local relays allowed in (empty: any key; the
    /// SOCKS5 login inside the encrypted channel decides).
    #[serde(default)]
    pub peer_keys: Vec<String>,
    /// Serve plain SOCKS5 clients (curl, proxychains, dante, redsocks)
    /// beside encrypted sessions. Default: yes without a `key`, no with one.
    #[serde(default)]
    pub plain: Option<bool>,
    /// Serve SOCKS5 UDP ASSOCIATE (RFC 1928 section 7) to plain SOCKS5
    /// clients, with the same logins and destination policy as CONNECT.
    #[serde(default = "yes")]
    pub udp_associate: bool,
}

/// A configuration problem, naming the key (and the line, for files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, e.g. `remote.users`, when known.
    pub key: Option<String>,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("relay configuration")?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_then(text, |_| Ok::<(), ConfigError>(()))
    }

    /// Parses TOML text, lets `adjust` change the result (command-line
    /// flags over the file), then validates what came out; errors of the
    /// file's keys name their line.
    pub fn from_toml_then<E: From<ConfigError>>(
        text: &str,
        adjust: impl FnOnce(&mut Config) -> Result<(), E>,
    ) -> Result<Config, E> {
        let mut config = Config::parse(text)?;
        adjust(&mut config)?;
        config.validate_in(text)?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Config::from_file_then(path, |_| Ok::<(), ConfigError>(()))
    }

    /// Reads a TOML file, then as [`Config::from_toml_then`]; the file's
    /// errors name it.
    pub fn from_file_then<E: From<ConfigError>>(
        path: impl AsRef<Path>,
        adjust: impl FnOnce(&mut Config) -> Result<(), E>,
    ) -> Result<Config, E> {
        let path = path.as_ref();
        let in_file = |mut e: ConfigError| {
            e.message = format!("{} ({})", e.message, path.display());
            e
        };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            key: None,
            line: None,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        let mut config = Config::parse(&text).map_err(in_file)?;
        adjust(&mut config)?;
        config.validate_in(&text).map_err(in_file)?;
        Ok(config)
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let key = e.span().and_then(|s| key_at(text, s.start));
            ConfigError {
                key,
                line,
                message: e.message().trim().to_owned(),
            }
        })
    }

    /// [`Config::validate`], naming the line of the key at fault in `text`.
    fn validate_in(&self, text: &str) -> Result<(), ConfigError> {
        self.validate().map_err(|mut e| {
            if let Some(key) = &e.key {
                e.line = find_key_line(text, key);
            }
            e
        })
    }

    /// An empty configuration to fill with the builder methods.
    pub fn new() -> Config {
        Config::default()
    }

    /// Sets the local role.
    pub fn local(mut self, local: LocalConfig) -> Config {
        self.local = Some(local);
        self
    }

    /// Sets the remote role.
    pub fn remote(mut self, remote: RemoteConfig) -> Config {
        self.remote = Some(remote);
        self
    }

    /// Sets the engine settings.
    pub fn engine(mut self, engine: EngineConfig) -> Config {
        self.engine = engine;
        self
    }

    /// Checks what the types cannot: at least one listener, credentials
    /// where needed, sane limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| {
            Err(ConfigError {
                key: Some(key.to_owned()),
                line: None,
                message,
            })
        };
        if self.local.is_none() && self.remote.is_none() {
            return err(
                "local",
                "configure a [local] or a [remote] section (or both)".into(),
            );
        }
        let e = &self.engine;
        if e.max_connections == 0 {
            return err("engine.max_connections", "must be at least 1".into());
        }
        if e.max_connections_per_client == 0 {
            return err(
                "engine.max_connections_per_client",
                "must be at least 1".into(),
            );
        }
        for (key, value) in [
            ("engine.max_handshakes", e.max_handshakes),
            (
                "engine.max_handshakes_per_client",
                e.max_handshakes_per_client,
            ),
            ("engine.max_streams_per_session", e.max_streams_per_session),
        ] {
            if value == 0 {
                return err(key, "must be at least 1".into());
            }
        }
        if e.handshake_timeout_secs == 0 {
            return err(
                "engine.handshake_timeout_secs",
                "must be at least 1 second".into(),
            );
        }
        if !(4096..=(1 << 30)).contains(&e.pipe_size) {
            return err(
                "engine.pipe_size",
                "must be between 4096 and 1073741824 bytes".into(),
            );
        }
        if !(64 * 1024..=crate::mux::MAX_WINDOW).contains(&e.stream_window) {
            return err(
                "engine.stream_window",
                format!("must be between 65536 and {} bytes", crate::mux::MAX_WINDOW),
            );
        }
        if e.stream_window_max != 0
            && !(e.stream_window..=crate::mux::MAX_WINDOW).contains(&e.stream_window_max)
        {
            return err(
                "engine.stream_window_max",
                format!(
                    "must be 0 (no growth) or between stream_window ({}) and {} bytes",
                    e.stream_window,
                    crate::mux::MAX_WINDOW
                ),
            );
        }
        if let Err(reason) = check_congestion_control(&e.congestion_control) {
            return err("engine.congestion_control", reason);
        }
        if !(1..=86_400).contains(&e.udp_idle_timeout_secs) {
            return err(
                "engine.udp_idle_timeout_secs",
                "must be between 1 and 86400 seconds".into(),
            );
        }
        if !(1..=65_536).contains(&e.udp_max_flows) {
            return err(
                "engine.udp_max_flows",
                "must be between 1 and 65536 flows per association".into(),
            );
        }
        if !(e.pipe_size..=(1 << 30)).contains(&e.pipe_max_size) {
            return err(
                "engine.pipe_max_size",
                format!(
                    "must be between pipe_size ({}) and 1073741824 bytes",
                    e.pipe_size
                ),
            );
        }
        if let Some(l) = &self.local {
            if l.redirect.is_empty()
                && l.tproxy.is_empty()
                && l.tproxy_udp.is_empty()
                && l.dns.is_none()
                && l.socks5.is_empty()
                && l.http.is_empty()
            {
                return err(
                    "local",
                    "no listener: set at least one of redirect, tproxy, tproxy_udp, dns, socks5, http"
                        .into(),
                );
            }
            if let Err(e) = UdpPorts::parse(&l.udp_ports) {
                return err("local.udp_ports", e);
            }
            if l.dns.is_some() != l.dns_upstream.is_some() {
                return err(
                    "local.dns_upstream",
                    "set both dns (the forwarder's address) and dns_upstream (its resolver)".into(),
                );
            }
            if !(1..=64).contains(&l.max_sessions) {
                return err("local.max_sessions", "must be between 1 and 64".into());
            }
            if l.remote.trim().is_empty() {
                return err(
                    "local.remote",
                    "set the remote relay as \"host:port\"".into(),
                );
            }
            for r in &l.remotes {
                if r.address.trim().is_empty() {
                    return err(
                        "local.remotes",
                        "each remote needs an address \"host:port\"".into(),
                    );
                }
                if let Some(k) = &r.remote_key
                    && let Err(e) = k.parse::<PublicKey>()
                {
                    return err("local.remotes", format!("{}: {e}", r.address));
                }
                if r.anonymous && r.username.is_some() {
                    return err(
                        "local.remotes",
                        format!("{}: anonymous, or a username: not both", r.address),
                    );
                }
                if r.username.is_some() != r.password.is_some() {
                    return err(
                        "local.remotes",
                        format!("{}: give username and password together", r.address),
                    );
                }
            }
            if l.remotes.len() > 63 {
                return err("local.remotes", "at most 64 remotes".into());
            }
            if std::iter::once(l.weight)
                .chain(l.remotes.iter().map(|r| r.weight))
                .any(|w| w == 0 || w > 1000)
            {
                return err("local.weight", "weights are 1 to 1000".into());
            }
            if l.remote_hold_secs > 3600 {
                return err("local.remote_hold_secs", "at most 3600".into());
            }
            match (&l.key, &l.remote_key) {
                (None, None) => {}
                (Some(key), Some(remote)) => {
                    if let Err(e) = key.parse::<SecretKey>() {
                        return err("local.key", e.to_string());
                    }
                    if let Err(e) = remote.parse::<PublicKey>() {
                        return err("local.remote_key", e.to_string());
                    }
                }
                (Some(_), None) => {
                    return err(
                        "local.remote_key",
                        "the remote relay's public key is needed with a key".into(),
                    );
                }
                (None, Some(_)) => {
                    return err(
                        "local.key",
                        "this relay's own key is needed: generate one with `mptcp relay keygen`"
                            .into(),
                    );
                }
            }
            match (&l.username, &l.password) {
                (Some(u), Some(p)) => {
                    if u.is_empty() || u.len() > 255 || p.is_empty() || p.len() > 255 {
                        return err(
                            "local.username",
                            "username and password must be 1 to 255 bytes".into(),
                        );
                    }
                }
                (None, None) => {}
                (Some(_), None) => {
                    return err("local.password", "username given without password".into());
                }
                (None, Some(_)) => {
                    return err("local.username", "password given without username".into());
                }
            }
        }
        if let Some(r) = &self.remote {
            if r.listen.is_empty() {
                return err(
                    "remote.listen",
                    "give at least one address, e.g. [\"0.0.0.0:1080\"]".into(),
                );
            }
            if let Some(key) = &r.key
                && let Err(e) = key.parse::<SecretKey>()
            {
                return err("remote.key", e.to_string());
            }
            if !r.peer_keys.is_empty() && r.key.is_none() {
                return err(
                    "remote.peer_keys",
                    "peer keys need this relay's own key (remote.key)".into(),
                );
            }
            if let Some(Err(e)) = r
                .peer_keys
                .iter()
                .map(|k| k.parse::<PublicKey>())
                .find(Result::is_err)
            {
                return err("remote.peer_keys", e.to_string());
            }
            if !r.serves_plain() && r.key.is_none() {
                return err(
                    "remote.plain",
                    "plain = false without a key would serve nobody".into(),
                );
            }
            for u in &r.users {
                if u.username.is_empty()
                    || u.username.len() > 255
                    || u.password.is_empty()
                    || u.password.len() > 255
                {
                    return err(
                        "remote.users",
                        "usernames and passwords must be 1 to 255 bytes".into(),
                    );
                }
            }
            // Pinned keys let only their relays in, when plain clients are not served.
            let keys_only = !r.peer_keys.is_empty() && !r.serves_plain();
            if r.users.is_empty()
                && !keys_only
                && let Some(open) = r.listen.iter().find(|a| !r.serves_unauthenticated(a))
            {
                return err(
                    "remote.users",
                    format!(
                        "listener {open} would be an open proxy: add a [[remote.users]] entry \
                             (username, password){}",
                        if open.ip().is_loopback() {
                            ", or set allow_unauthenticated_loopback = true"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
        Ok(())
    }
}

impl LocalConfig {
    /// A local role carrying traffic to the SOCKS5 server `remote`
    /// (`host:port`), with no listener yet.
    pub fn new(remote: impl Into<String>) -> LocalConfig {
        LocalConfig {
            remote: remote.into(),
            weight: default_weight(),
            remotes: Vec::new(),
            policy: RemotePolicy::default(),
            remote_hold_secs: default_remote_hold_secs(),
            fallback: NoRemote::default(),
            username: None,
            password: None,
            mptcp: true,
            multiplex: true,
            max_sessions: default_max_sessions(),
            spare_session_idle_secs: default_spare_session_idle_secs(),
            redirect: Vec::new(),
            tproxy: Vec::new(),
            tproxy_udp: Vec::new(),
            udp_ports: BTreeMap::new(),
            dns: None,
            dns_upstream: None,
            socks5: Vec::new(),
            http: Vec::new(),
            allowed_clients: Vec::new(),
            key: None,
            remote_key: None,
            links_file: default_links_file(),
        }
    }

    /// Adds a remote after the others (with this relay's credentials and
    /// pinned key).
    pub fn also_remote(mut self, remote: impl Into<String>) -> LocalConfig {
        self.remotes.push(RemoteEntry {
            address: remote.into(),
            username: None,
            password: None,
            remote_key: None,
            weight: default_weight(),
            anonymous: false,
        });
        self
    }

    /// How new connections choose among the remotes.
    pub fn policy(mut self, policy: RemotePolicy) -> LocalConfig {
        self.policy = policy;
        self
    }

    /// What new connections do when no remote works.
    pub fn fallback(mut self, fallback: NoRemote) -> LocalConfig {
        self.fallback = fallback;
        self
    }

    /// Seconds a failed remote must work before it takes connections again.
    pub fn remote_hold_secs(mut self, secs: u64) -> LocalConfig {
        self.remote_hold_secs = secs;
        self
    }

    /// Credentials for the remote.
    pub fn credentials(mut self, username: &str, password: &str) -> LocalConfig {
        self.username = Some(username.to_owned());
        self.password = Some(password.to_owned());
        self
    }

    /// Adds a REDIRECT listener.
    pub fn redirect(mut self, addr: SocketAddr) -> LocalConfig {
        self.redirect.push(addr);
        self
    }

    /// Adds a TPROXY listener.
    pub fn tproxy(mut self, addr: SocketAddr) -> LocalConfig {
        self.tproxy.push(addr);
        self
    }

    /// Adds a UDP TPROXY listener.
    pub fn tproxy_udp(mut self, addr: SocketAddr) -> LocalConfig {
        self.tproxy_udp.push(addr);
        self
    }

    /// Chooses what becomes of UDP from the LAN to `ports` (a port, or a
    /// range `"LOW-HIGH"`).
    pub fn udp_ports(mut self, ports: &str, action: UdpPortAction) -> LocalConfig {
        self.udp_ports.insert(ports.to_string(), action);
        self
    }

    /// A DNS forwarder on `addr` whose queries go to `resolver` through the
    /// remote relay.
    pub fn dns(mut self, addr: SocketAddr, resolver: SocketAddr) -> LocalConfig {
        self.dns = Some(addr);
        self.dns_upstream = Some(resolver);
        self
    }

    /// Adds a SOCKS5 listener.
    pub fn socks5(mut self, addr: SocketAddr) -> LocalConfig {
        self.socks5.push(addr);
        self
    }

    /// Adds an HTTP proxy listener.
    pub fn http(mut self, addr: SocketAddr) -> LocalConfig {
        self.http.push(addr);
        self
    }

    /// Encrypts the sessions to the remote relay whose public key is
    /// `remote`, with this relay's `key`.
    pub fn encrypt(mut self, key: &SecretKey, remote: &PublicKey) -> LocalConfig {
        self.key = Some(key.to_string());
        self.remote_key = Some(remote.to_string());
        self
    }

    /// Serves LAN clients of this network (may be called several times;
    /// replaces the default of private ranges).
    pub fn allow_client(mut self, net: Cidr) -> LocalConfig {
        self.allowed_clients.push(net);
        self
    }

    /// Connect to the remote with MPTCP (default) or plain TCP.
    pub fn mptcp(mut self, on: bool) -> LocalConfig {
        self.mptcp = on;
        self
    }

    /// Carry connections as streams of a session when the remote
    /// multiplexes (default), or always one connection each.
    pub fn multiplex(mut self, on: bool) -> LocalConfig {
        self.multiplex = on;
        self
    }

    /// Sessions per worker at most (default 4).
    pub fn max_sessions(mut self, n: usize) -> LocalConfig {
        self.max_sessions = n;
        self
    }

    /// Seconds an idle spare session stays open
    /// ([`LocalConfig::spare_session_idle_secs`]).
    pub fn spare_session_idle_secs(mut self, secs: u64) -> LocalConfig {
        self.spare_session_idle_secs = secs;
        self
    }
}

impl RemoteConfig {
    /// A remote role listening on `listen`, with no users yet.
    pub fn new(listen: SocketAddr) -> RemoteConfig {
        RemoteConfig {
            listen: vec![listen],
            mptcp: true,
            onward_mptcp: false,
            multiplex: true,
            users: Vec::new(),
            allow_unauthenticated_loopback: false,
            allowed_clients: Vec::new(),
            allow_destinations: Vec::new(),
            deny_destinations: Vec::new(),
            key: None,
            peer_keys: Vec::new(),
            plain: None,
            udp_associate: true,
        }
    }

    /// Encrypted sessions for local relays that pin `key`'s public key.
    pub fn key(mut self, key: &SecretKey) -> RemoteConfig {
        self.key = Some(key.to_string());
        self
    }

    /// Lets in the local relay with this public key (once any is listed,
    /// only listed keys get in).
    pub fn peer_key(mut self, key: &PublicKey) -> RemoteConfig {
        self.peer_keys.push(key.to_string());
        self
    }

    /// Serves plain SOCKS5 clients beside encrypted sessions, or not.
    pub fn plain(mut self, on: bool) -> RemoteConfig {
        self.plain = Some(on);
        self
    }

    /// Whether plain SOCKS5 clients are served.
    pub fn serves_plain(&self) -> bool {
        self.plain.unwrap_or(self.key.is_none())
    }

    /// Adds a user.
    pub fn user(mut self, username: &str, password: &str) -> RemoteConfig {
        self.users.push(User {
            username: username.to_owned(),
            password: password.to_owned(),
        });
        self
    }

    /// Serve loopback listeners without authentication.
    pub fn allow_unauthenticated_loopback(mut self, on: bool) -> RemoteConfig {
        self.allow_unauthenticated_loopback = on;
        self
    }

    /// Allows a destination network that the defaults deny.
    pub fn allow_destination(mut self, net: Cidr) -> RemoteConfig {
        self.allow_destinations.push(net);
        self
    }

    /// Denies a destination network.
    pub fn deny_destination(mut self, net: Cidr) -> RemoteConfig {
        self.deny_destinations.push(net);
        self
    }

    /// Restricts clients to this network (may be called several times).
    pub fn allow_client(mut self, net: Cidr) -> RemoteConfig {
        self.allowed_clients.push(net);
        self
    }

    /// Connect onward with MPTCP.
    pub fn onward_mptcp(mut self, on: bool) -> RemoteConfig {
        self.onward_mptcp = on;
        self
    }

    /// Accept multiplexed sessions (default), or plain SOCKS5 only.
    pub fn multiplex(mut self, on: bool) -> RemoteConfig {
        self.multiplex = on;
        self
    }

    /// Whether the listener on `addr` serves clients without credentials.
    pub fn serves_unauthenticated(&self, addr: &SocketAddr) -> bool {
        self.allow_unauthenticated_loopback && addr.ip().is_loopback()
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted key whose line contains `offset`: on a `[table]` header (an
/// unknown or malformed one), that table; otherwise the innermost header
/// above it and the `key =` on that line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    if let Some(name) = header_name(line) {
        return Some(name.to_owned()).filter(|n| !n.is_empty());
    }
    let key = line.split_once('=').map(|(k, _)| k.trim().to_owned());
    let table = text[..line_start]
        .lines()
        .rev()
        .find_map(header_name)
        .map(str::to_owned);
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

/// The table a `[table]` or `[[table]]` line declares (also an unclosed
/// `[table`), without a trailing comment; `None` for other lines.
fn header_name(line: &str) -> Option<&str> {
    let line = line.trim();
    if !line.starts_with('[') {
        return None;
    }
    let line = line.split_once('#').map_or(line, |(header, _)| header);
    Some(line.trim().trim_matches(|c| c == '[' || c == ']').trim())
}

/// The line of `key` (dotted: `remote.users`) in `text`: the `[[remote.users]]`
/// or `[remote]` ... `users =` line, else the table header.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let mut in_table = table.is_empty();
    let mut table_line = None;
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if let Some(name) = header_name(l) {
            if name == key {
                return Some(i + 1);
            }
            in_table = name == table;
            if in_table {
                table_line.get_or_insert(i + 1);
            }
        } else if in_table && l.split_once('=').is_some_and(|(k, _)| k.trim() == leaf) {
            return Some(i + 1);
        }
    }
    table_line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn congestion_control_is_a_name_system_or_auto_and_windows_grow_only_when_asked() {
        let parse = |value: &str| {
            Config::from_toml(&format!(
                "[engine]\ncongestion_control = {value:?}\n[remote]\nlisten = [\"127.0.0.1:1\"]\n\
                 allow_unauthenticated_loopback = true\n"
            ))
        };
        let cubic = parse("cubic").unwrap();
        assert_eq!(cubic.engine.session_congestion_control(), Some("cubic"));
        let system = parse("system").unwrap();
        assert_eq!(system.engine.session_congestion_control(), None);
        assert!(
            !cubic.engine.adapts_congestion_control() && !system.engine.adapts_congestion_control()
        );
        // `auto`, the default, starts sessions on bbr and adapts them.
        let auto = parse("auto").unwrap();
        assert_eq!(
            auto.engine.congestion_control,
            EngineConfig::default().congestion_control
        );
        assert_eq!(auto.engine.session_congestion_control(), Some("bbr"));
        assert!(auto.engine.adapts_congestion_control());
        let defaults = EngineConfig::default();
        assert_eq!(defaults.stream_window_limit(), defaults.stream_window);
        let grow = |max: u32| {
            Config::from_toml(&format!(
                "[engine]\nstream_window = 65536\nstream_window_max = {max}\n[remote]\n\
                 listen = [\"127.0.0.1:1\"]\nallow_unauthenticated_loopback = true\n"
            ))
        };
        assert_eq!(grow(1 << 20).unwrap().engine.stream_window_limit(), 1 << 20);
        let e = grow(4096).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("engine.stream_window_max"), "{e}");
        for bad in ["", "bbr; cubic", "a_name_far_too_long"] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("engine.congestion_control"), "{e}");
            assert!(e.message.contains("not a congestion control name"), "{e}");
        }
    }

    #[test]
    fn unknown_key_is_named_with_line() {
        let text =
            "[engine]\nworkers = 2\n\n[remote]\nlisten = [\"0.0.0.0:1080\"]\nlisten_mptcp = true\n";
        let e = Config::from_toml(text).unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
        assert_eq!(e.key.as_deref(), Some("remote.listen_mptcp"), "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn a_bad_table_header_is_named_as_itself() {
        let text = "[engine]\nworkers = 2\n\n[locale] # typo\nx = 1\n";
        let e = Config::from_toml(text).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("locale")), "{e}");
        assert!(e.message.contains("unknown field `locale`"), "{e}");
        let text = "[local]\nremote = \"198.18.0.2:1080\"\n\n[remote\nlisten = []\n";
        let e = Config::from_toml(text).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("remote")), "{e}");
        assert!(e.message.contains("unclosed table"), "{e}");
    }

    #[test]
    fn bad_value_is_named_with_line() {
        let text = "[remote]\nlisten = [\"127.0.0.1:1\"]\nallow_unauthenticated_loopback = true\ndeny_destinations = [\"10.0.0.0/99\"]\n";
        let e = Config::from_toml(text).unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(4), Some("remote.deny_destinations")),
            "{e}"
        );
        assert!(e.message.contains("prefix"), "{e}");
    }

    #[test]
    fn open_proxy_refused() {
        let text = "[remote]\nlisten = [\"0.0.0.0:1080\"]\n";
        let e = Config::from_toml(text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("remote.users"));
        assert_eq!(e.line, Some(1), "{e}");
        let text =
            "[remote]\nlisten = [\"127.0.0.1:1080\"]\nallow_unauthenticated_loopback = true\n";
        Config::from_toml(text).unwrap();
        let text = "[remote]\nlisten = [\"0.0.0.0:1080\"]\n[[remote.users]]\nusername = \"a\"\npassword = \"\"\n";
        let e = Config::from_toml(text).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn pipe_max_size_below_pipe_size_is_named() {
        let text = "[engine]\npipe_size = 262144\npipe_max_size = 65536\n\n[remote]\n\
                    listen = [\"127.0.0.1:1080\"]\nallow_unauthenticated_loopback = true\n";
        let e = Config::from_toml(text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("engine.pipe_max_size"), "{e}");
        assert!(e.message.contains("pipe_size (262144)"), "{e}");
    }

    #[test]
    fn bad_udp_settings_are_named() {
        for (key, value, says) in [
            ("udp_idle_timeout_secs", "0", "between 1 and 86400 seconds"),
            ("udp_max_flows", "0", "between 1 and 65536"),
        ] {
            let text = format!(
                "[engine]\n{key} = {value}\n\n[remote]\nlisten = [\"127.0.0.1:1080\"]\n\
                 allow_unauthenticated_loopback = true\n"
            );
            let e = Config::from_toml(&text).unwrap_err();
            assert_eq!(e.key, Some(format!("engine.{key}")), "{e}");
            assert_eq!(e.line, Some(2), "{e}");
            assert!(e.message.contains(says), "{e}");
        }
    }

    #[test]
    fn udp_ports_parse_and_bad_ones_are_named() {
        let local = "[local]\nremote = \"198.18.0.2:1080\"\ntproxy_udp = [\"0.0.0.0:12347\"]\n";
        let good =
            format!("{local}udp_ports = {{ \"443\" = \"block\", \"5000-5100\" = \"direct\" }}\n");
        let c = Config::from_toml(&good).unwrap();
        let ports = UdpPorts::parse(&c.local.unwrap().udp_ports).unwrap();
        assert_eq!(ports.action(443), UdpPortAction::Block);
        assert_eq!(ports.action(5050), UdpPortAction::Direct);
        assert_eq!(ports.action(53), UdpPortAction::Carry);
        let bad =
            format!("{local}udp_ports = {{ \"443\" = \"block\", \"400-500\" = \"carry\" }}\n");
        let e = Config::from_toml(&bad).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("local.udp_ports"), "{e}");
        assert!(e.message.contains("overlap"), "{e}");
        let unknown = format!("{local}udp_ports = {{ \"443\" = \"drop\" }}\n");
        assert!(Config::from_toml(&unknown).is_err(), "an unknown choice");
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../../examples/relay.toml");
        let c = Config::from_toml(text).unwrap();
        assert!(c.local.is_some() && c.remote.is_some());
    }

    #[test]
    fn builder_mirrors_file() {
        let built = Config::new()
            .remote(RemoteConfig::new("0.0.0.0:1080".parse().unwrap()).user("alice", "secret"));
        built.validate().unwrap();
        let parsed = Config::from_toml(
            "[remote]\nlisten = [\"0.0.0.0:1080\"]\n[[remote.users]]\nusername = \"alice\"\npassword = \"secret\"\n",
        )
        .unwrap();
        assert_eq!(format!("{built:?}"), format!("{parsed:?}"));
    }
}
