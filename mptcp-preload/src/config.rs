//! Configuration from environment variables, parsed once at load time when
//! any of them is set ([`Config::UNCONFIGURED`] otherwise).
//! Pure code: no unsafe, no I/O besides reading the variables, so every
//! rule is unit-tested.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::ffi::CString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// What the library does to the program's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing: every hook calls straight through.
    Off,
    /// TCP stream sockets become MPTCP sockets (with fallback to TCP).
    Mptcp,
    /// MPTCP mode, plus matching `connect()`s go through a SOCKS5 relay.
    Relay,
    /// Relay mode was asked for with a configuration the library cannot
    /// use: sockets are left alone, and every TCP `connect()` except to
    /// loopback fails, so no traffic leaves unrelayed (fail closed).
    Blocked,
}

/// How much the library reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Nothing, not even errors.
    Off,
    /// Failures the program sees (relay unreachable, refused handshake).
    Error,
    /// Also one line per fallback kind (a socket replaced by plain TCP).
    Info,
    /// Also every relayed connection.
    Debug,
}

/// The SOCKS5 relay of relay-hop mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// Where the relay listens (an IP literal: the library never resolves
    /// names itself).
    pub addr: SocketAddr,
    /// Username and password (RFC 1929), if the relay wants them.
    pub credentials: Option<(String, String)>,
    /// Bound on the SOCKS5 handshake (connecting to the relay included) of
    /// a blocking socket without a timeout of its own.
    pub timeout: Duration,
}

/// An address block and an optional port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Network address (`None`: any address of either family).
    net: Option<(IpAddr, u8)>,
    /// Inclusive port range (`None`: any port).
    ports: Option<(u16, u16)>,
}

impl Rule {
    /// Whether `dest` is inside this rule. IPv4-mapped IPv6 addresses
    /// count as IPv4.
    pub fn matches(&self, dest: &SocketAddr) -> bool {
        if let Some((lo, hi)) = self.ports
            && (dest.port() < lo || dest.port() > hi)
        {
            return false;
        }
        match self.net {
            None => true,
            Some((net, prefix)) => match (net, dest.ip().to_canonical()) {
                (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(
                    u128::from(n.to_bits()) << 96,
                    u128::from(a.to_bits()) << 96,
                    prefix,
                ),
                (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(n.to_bits(), a.to_bits(), prefix),
                _ => false,
            },
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    prefix == 0 || (a ^ b) >> (128 - u32::from(prefix)) == 0
}

/// Which destinations relay-hop mode sends through the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// A destination must match one of these (empty: every destination).
    pub include: Vec<Rule>,
    /// ... and none of these.
    pub exclude: Cow<'static, [Rule]>,
}

/// The exclusions when `MPTCP_PRELOAD_EXCLUDE` is unset: loopback.
const LOOPBACK: &[Rule] = &[
    Rule {
        net: Some((IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8)),
        ports: None,
    },
    Rule {
        net: Some((IpAddr::V6(Ipv6Addr::LOCALHOST), 128)),
        ports: None,
    },
];

impl Rules {
    /// Whether `dest` goes through the relay.
    pub fn matches(&self, dest: &SocketAddr) -> bool {
        (self.include.is_empty() || self.include.iter().any(|r| r.matches(dest)))
            && !self.exclude.iter().any(|r| r.matches(dest))
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// What to do.
    pub mode: Mode,
    /// The relay (relay-hop mode only).
    pub relay: Option<Relay>,
    /// Which connects go through the relay.
    pub rules: Rules,
    /// How much to log.
    pub log_level: LogLevel,
    /// Append log lines to this file instead of standard error.
    pub log_file: Option<CString>,
    /// Host names resolve to placeholders that the relay resolves.
    pub remote_dns: bool,
}

impl Config {
    /// The configuration of an environment that sets none of the
    /// variables (what [`parse`] makes of it): MPTCP mode. A constant, so
    /// a program started without them gets it without parsing or
    /// allocating anything.
    pub const UNCONFIGURED: Config = Config {
        mode: Mode::Mptcp,
        relay: None,
        rules: Rules {
            include: Vec::new(),
            exclude: Cow::Borrowed(LOOPBACK),
        },
        log_level: LogLevel::Error,
        log_file: None,
        remote_dns: false,
    };

    /// The configuration of a library that does nothing.
    pub fn off() -> Config {
        Config {
            mode: Mode::Off,
            relay: None,
            rules: Rules {
                include: Vec::new(),
                exclude: Cow::Borrowed(&[]),
            },
            log_level: LogLevel::Error,
            log_file: None,
            remote_dns: false,
        }
    }
}

/// A variable with a value the library does not understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable's name.
    pub var: &'static str,
    /// Its value.
    pub value: String,
    /// What it should look like.
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={:?} is invalid: {}",
            self.var, self.value, self.expected
        )
    }
}

/// What every variable's name starts with.
pub const VAR_PREFIX: &str = "MPTCP_PRELOAD_";
/// Variable names (documented in the crate's README).
pub const VAR_MODE: &str = "MPTCP_PRELOAD_MODE";
/// Relay address, `host:port` or `[v6]:port`.
pub const VAR_RELAY: &str = "MPTCP_PRELOAD_RELAY";
/// Relay username.
pub const VAR_USER: &str = "MPTCP_PRELOAD_USER";
/// Relay password.
pub const VAR_PASSWORD: &str = "MPTCP_PRELOAD_PASSWORD";
/// A file holding the relay password (its first line), e.g. a systemd
/// credential (`%d/NAME`), so that the password is in no environment.
pub const VAR_PASSWORD_FILE: &str = "MPTCP_PRELOAD_PASSWORD_FILE";
/// Destinations to relay.
pub const VAR_INCLUDE: &str = "MPTCP_PRELOAD_INCLUDE";
/// Destinations not to relay.
pub const VAR_EXCLUDE: &str = "MPTCP_PRELOAD_EXCLUDE";
/// Handshake timeout in seconds.
pub const VAR_TIMEOUT: &str = "MPTCP_PRELOAD_TIMEOUT";
/// Where host names are resolved.
pub const VAR_DNS: &str = "MPTCP_PRELOAD_DNS";
/// Log level.
pub const VAR_LOG: &str = "MPTCP_PRELOAD_LOG";
/// Log file.
pub const VAR_LOG_FILE: &str = "MPTCP_PRELOAD_LOG_FILE";
/// `1`: with a relay configuration the library cannot use, connect
/// directly instead of failing (fail open).
pub const VAR_FAIL_OPEN: &str = "MPTCP_PRELOAD_FAIL_OPEN";

/// The configuration to run with, and the line to print when the
/// environment is invalid. An invalid environment turns the library off,
/// unless relay mode was asked for (`MPTCP_PRELOAD_MODE=relay` or
/// `MPTCP_PRELOAD_RELAY` set): then connections fail ([`Mode::Blocked`])
/// unless `MPTCP_PRELOAD_FAIL_OPEN=1`.
pub fn load(var: impl Fn(&str) -> Option<String>) -> (Config, Option<String>) {
    let e = match parse(&var) {
        Ok(config) => return (config, None),
        Err(e) => e,
    };
    let set = |name: &str| {
        var(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let relay_wanted = set(VAR_MODE).as_deref() == Some("relay") || set(VAR_RELAY).is_some();
    let fail_open = set(VAR_FAIL_OPEN).as_deref() == Some("1");
    if relay_wanted && !fail_open {
        let mut config = Config::off();
        config.mode = Mode::Blocked;
        let line = format!(
            "{e}; relay mode was asked for, so TCP connections other than to loopback \
             fail (ENETUNREACH) rather than leave unrelayed ({VAR_FAIL_OPEN}=1 connects them directly)"
        );
        (config, Some(line))
    } else {
        let line = format!("{e}; the library is disabled for this program");
        (Config::off(), Some(line))
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses the configuration from `var` (the environment, or a map in tests).
/// Unset and empty variables take their defaults.
pub fn parse(var: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let err = |var: &'static str, value: &str, expected: &str| ConfigError {
        var,
        value: value.to_owned(),
        expected: expected.to_owned(),
    };

    let mut config = Config::off();
    config.log_level = match get(VAR_LOG).as_deref().map(str::trim) {
        None | Some("error") => LogLevel::Error,
        Some("off") => LogLevel::Off,
        Some("info") => LogLevel::Info,
        Some("debug") => LogLevel::Debug,
        Some(other) => return Err(err(VAR_LOG, other, "expected off, error, info or debug")),
    };
    if let Some(path) = get(VAR_LOG_FILE) {
        config.log_file = Some(CString::new(path.clone()).map_err(|_| {
            err(
                VAR_LOG_FILE,
                &path,
                "expected a file path without NUL bytes",
            )
        })?);
    }
    config.mode = match get(VAR_MODE).as_deref().map(str::trim) {
        None | Some("mptcp") => Mode::Mptcp,
        Some("relay") => Mode::Relay,
        Some("off") => Mode::Off,
        Some(other) => return Err(err(VAR_MODE, other, "expected mptcp, relay or off")),
    };

    let relay_addr = match get(VAR_RELAY) {
        None => None,
        Some(text) => Some(text.trim().parse::<SocketAddr>().map_err(|_| {
            err(
                VAR_RELAY,
                &text,
                "expected an IP address and port, like 192.0.2.1:1080 or [2001:db8::1]:1080",
            )
        })?),
    };
    let password = match (get(VAR_PASSWORD), get(VAR_PASSWORD_FILE)) {
        (Some(password), _) => Some(password),
        (None, Some(path)) => {
            Some(read_password(&path).map_err(|why| err(VAR_PASSWORD_FILE, &path, &why))?)
        }
        (None, None) => None,
    };
    let credentials = match (get(VAR_USER), password) {
        (None, None) => None,
        (Some(user), Some(pass)) if user.len() <= 255 && pass.len() <= 255 => Some((user, pass)),
        (Some(user), Some(_)) if user.len() > 255 => {
            return Err(err(VAR_USER, &user, "at most 255 bytes (RFC 1929)"));
        }
        (Some(_), Some(_)) => {
            return Err(err(
                VAR_PASSWORD,
                "<hidden>",
                "at most 255 bytes (RFC 1929)",
            ));
        }
        (Some(user), None) => {
            return Err(err(VAR_USER, &user, "set MPTCP_PRELOAD_PASSWORD too"));
        }
        (None, Some(_)) => {
            return Err(err(VAR_PASSWORD, "<hidden>", "set MPTCP_PRELOAD_USER too"));
        }
    };
    match get(VAR_FAIL_OPEN).as_deref().map(str::trim) {
        None | Some("0" | "1") => {}
        Some(other) => return Err(err(VAR_FAIL_OPEN, other, "expected 0 or 1")),
    }
    let timeout = match get(VAR_TIMEOUT) {
        None => DEFAULT_TIMEOUT,
        Some(text) => match text.trim().parse::<f64>() {
            Ok(secs) if secs > 0.0 && secs <= 3600.0 => Duration::from_secs_f64(secs),
            _ => {
                return Err(err(
                    VAR_TIMEOUT,
                    &text,
                    "expected seconds, more than 0 and at most 3600",
                ));
            }
        },
    };
    if config.mode == Mode::Relay {
        let Some(addr) = relay_addr else {
            return Err(err(
                VAR_MODE,
                "relay",
                "relay mode needs MPTCP_PRELOAD_RELAY=host:port",
            ));
        };
        config.relay = Some(Relay {
            addr,
            credentials,
            timeout,
        });
    }

    config.remote_dns = match get(VAR_DNS).as_deref().map(str::trim) {
        None | Some("local") => false,
        Some("remote") if config.mode == Mode::Relay => true,
        Some("remote") => {
            return Err(err(
                VAR_DNS,
                "remote",
                "remote DNS needs MPTCP_PRELOAD_MODE=relay",
            ));
        }
        Some(other) => return Err(err(VAR_DNS, other, "expected local or remote")),
    };
    // Rule lists: unset takes the default, set but empty means "none".
    config.rules.include = match var(VAR_INCLUDE) {
        None => Vec::new(),
        Some(text) => parse_rules(&text).map_err(|bad| err(VAR_INCLUDE, &bad, RULE_SYNTAX))?,
    };
    config.rules.exclude = match var(VAR_EXCLUDE) {
        None => Cow::Borrowed(LOOPBACK),
        Some(text) => {
            Cow::Owned(parse_rules(&text).map_err(|bad| err(VAR_EXCLUDE, &bad, RULE_SYNTAX))?)
        }
    };
    Ok(config)
}

const RULE_SYNTAX: &str = "expected a comma-separated list of CIDR[:port[-port]] \
    ([v6CIDR]:port for IPv6 with a port, *:port for any address)";

/// Parses a comma-separated rule list; the error is the first bad item.
fn parse_rules(text: &str) -> Result<Vec<Rule>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| parse_rule(item).ok_or_else(|| item.to_owned()))
        .collect()
}

fn parse_rule(item: &str) -> Option<Rule> {
    // Split "address part" and "port part".
    let (net_text, port_text) = if let Some(rest) = item.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        match after {
            "" => (inner, None),
            _ => (inner, Some(after.strip_prefix(':')?)),
        }
    } else if item.matches(':').count() >= 2 {
        (item, None) // bare IPv6 CIDR
    } else {
        match item.split_once(':') {
            Some((net, port)) => (net, Some(port)),
            None => (item, None),
        }
    };
    let net = if net_text == "*" {
        None
    } else {
        let (addr_text, prefix_text) = match net_text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (net_text, None),
        };
        let addr: IpAddr = addr_text.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some((addr, prefix))
    };
    let ports = match port_text {
        None => None,
        Some(p) => {
            let (lo, hi) = match p.split_once('-') {
                Some((lo, hi)) => (lo.parse().ok()?, hi.parse().ok()?),
                None => {
                    let port = p.parse().ok()?;
                    (port, port)
                }
            };
            if lo > hi {
                return None;
            }
            Some((lo, hi))
        }
    };
    if net.is_none() && port_text.is_none() {
        return Some(Rule {
            net: None,
            ports: None,
        });
    }
    Some(Rule { net, ports })
}

/// The first line of the password file `path`.
fn read_password(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err("its first line is empty".into());
    }
    Ok(line.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(|k| map.get(k).cloned())
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_are_mptcp_without_relay() {
        let c = parse_env(&[]).unwrap();
        assert_eq!(c.mode, Mode::Mptcp);
        assert_eq!(c.relay, None);
        assert_eq!(c.log_level, LogLevel::Error);
    }

    #[test]
    fn relay_mode_needs_an_address_and_both_credentials() {
        let e = parse_env(&[(VAR_MODE, "relay")]).unwrap_err();
        assert!(e.to_string().contains("MPTCP_PRELOAD_RELAY"), "{e}");
        let e = parse_env(&[
            (VAR_MODE, "relay"),
            (VAR_RELAY, "198.18.0.2:1080"),
            (VAR_USER, "u"),
        ])
        .unwrap_err();
        assert_eq!(e.var, VAR_USER);
        let c = parse_env(&[
            (VAR_MODE, "relay"),
            (VAR_RELAY, "[2001:db8::1]:1080"),
            (VAR_USER, "u"),
            (VAR_PASSWORD, "p"),
            (VAR_TIMEOUT, "2.5"),
        ])
        .unwrap();
        let relay = c.relay.unwrap();
        assert_eq!(relay.addr, sa("[2001:db8::1]:1080"));
        assert_eq!(relay.credentials, Some(("u".into(), "p".into())));
        assert_eq!(relay.timeout, Duration::from_millis(2500));
        assert!(!c.remote_dns);
        let e = parse_env(&[(VAR_DNS, "remote")]).unwrap_err();
        assert!(e.to_string().contains("MPTCP_PRELOAD_MODE=relay"), "{e}");
        let c = parse_env(&[
            (VAR_MODE, "relay"),
            (VAR_RELAY, "198.18.0.2:1080"),
            (VAR_DNS, "remote"),
        ])
        .unwrap();
        assert!(c.remote_dns);
    }

    #[test]
    fn the_password_may_come_from_a_file() {
        let path = std::env::temp_dir().join(format!("mptcp-preload-pw-{}", std::process::id()));
        std::fs::write(&path, "correct horse\nignored\n").unwrap();
        let file = path.to_str().unwrap();
        let relay = [
            (VAR_MODE, "relay"),
            (VAR_RELAY, "198.18.0.2:1080"),
            (VAR_USER, "u"),
        ];
        let c = parse_env(&[&relay[..], &[(VAR_PASSWORD_FILE, file)]].concat()).unwrap();
        let credentials = c.relay.unwrap().credentials;
        assert_eq!(credentials, Some(("u".into(), "correct horse".into())));
        // The variable itself wins; a file that cannot be read is an error.
        let both = [(VAR_PASSWORD, "p"), (VAR_PASSWORD_FILE, file)];
        let c = parse_env(&[&relay[..], &both].concat()).unwrap();
        assert_eq!(c.relay.unwrap().credentials, Some(("u".into(), "p".into())));
        std::fs::remove_file(&path).unwrap();
        let e = parse_env(&[&relay[..], &[(VAR_PASSWORD_FILE, file)]].concat()).unwrap_err();
        assert_eq!(e.var, VAR_PASSWORD_FILE);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            (VAR_MODE, "fast"),
            (VAR_LOG, "loud"),
            (VAR_RELAY, "relay.example:1080"),
            (VAR_INCLUDE, "10.0.0.0/33"),
            (VAR_EXCLUDE, "10.0.0.0/8:99999"),
            (VAR_TIMEOUT, "-1"),
            (VAR_DNS, "proxy"),
        ] {
            let e = parse_env(&[
                (VAR_MODE, "relay"),
                (VAR_RELAY, "198.18.0.2:1080"),
                (var, value),
            ])
            .unwrap_err();
            assert_eq!(e.var, var);
            assert!(e.to_string().starts_with(var), "{e}");
        }
    }

    #[test]
    fn an_unusable_relay_configuration_fails_closed_unless_told_otherwise() {
        let load_env = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            load(|k| map.get(k).cloned())
        };
        let (c, line) = load_env(&[(VAR_MODE, "relay"), (VAR_RELAY, "relay.example:1080")]);
        assert_eq!(c.mode, Mode::Blocked);
        let line = line.unwrap();
        assert!(line.starts_with("MPTCP_PRELOAD_RELAY="), "{line}");
        assert!(
            line.contains("ENETUNREACH") && line.contains(VAR_FAIL_OPEN),
            "{line}"
        );
        // The relay address alone says relay mode was meant.
        let (c, _) = load_env(&[(VAR_MODE, "turbo"), (VAR_RELAY, "198.18.0.2:1080")]);
        assert_eq!(c.mode, Mode::Blocked);
        let (c, line) = load_env(&[
            (VAR_MODE, "relay"),
            (VAR_RELAY, "relay.example:1080"),
            (VAR_FAIL_OPEN, "1"),
        ]);
        assert_eq!(c.mode, Mode::Off);
        assert!(
            line.unwrap()
                .ends_with("the library is disabled for this program")
        );
        let (c, _) = load_env(&[(VAR_MODE, "turbo")]);
        assert_eq!(c.mode, Mode::Off, "no relay asked for: off");
        let (c, line) = load_env(&[(VAR_MODE, "relay"), (VAR_RELAY, "198.18.0.2:1080")]);
        assert_eq!((c.mode, line), (Mode::Relay, None));
        let (c, line) = load_env(&[
            (VAR_MODE, "relay"),
            (VAR_RELAY, "198.18.0.2:1080"),
            (VAR_FAIL_OPEN, "sometimes"),
        ]);
        assert_eq!(c.mode, Mode::Blocked);
        assert!(line.unwrap().starts_with("MPTCP_PRELOAD_FAIL_OPEN="));
    }

    #[test]
    fn no_variables_is_the_unconfigured_constant() {
        assert_eq!(parse_env(&[]).unwrap(), Config::UNCONFIGURED);
        assert_eq!(load(|_| None), (Config::UNCONFIGURED, None));
        let names = [
            VAR_MODE,
            VAR_RELAY,
            VAR_USER,
            VAR_PASSWORD,
            VAR_PASSWORD_FILE,
            VAR_INCLUDE,
            VAR_EXCLUDE,
            VAR_TIMEOUT,
            VAR_DNS,
            VAR_LOG,
            VAR_LOG_FILE,
            VAR_FAIL_OPEN,
        ];
        // The constructor skips parsing when no variable has the prefix.
        assert!(names.iter().all(|name| name.starts_with(VAR_PREFIX)));
    }

    #[test]
    fn default_rules_relay_everything_but_loopback() {
        let c = parse_env(&[]).unwrap();
        assert!(c.rules.matches(&sa("198.18.1.2:80")));
        assert!(c.rules.matches(&sa("[2001:db8::1]:80")));
        assert!(!c.rules.matches(&sa("127.0.0.1:80")));
        assert!(!c.rules.matches(&sa("127.9.9.9:80")));
        assert!(!c.rules.matches(&sa("[::1]:80")));
        assert!(!c.rules.matches(&sa("[::ffff:127.0.0.1]:80")));
    }

    #[test]
    fn include_and_exclude_with_ports() {
        let c = parse_env(&[
            (
                VAR_INCLUDE,
                "198.18.0.0/15, [2001:db8::/32]:443, *:8000-8100",
            ),
            (VAR_EXCLUDE, "198.18.5.0/24:22, ::1"),
        ])
        .unwrap();
        let r = &c.rules;
        assert!(r.matches(&sa("198.19.2.2:80")));
        assert!(r.matches(&sa("[::ffff:198.19.2.2]:80")));
        assert!(!r.matches(&sa("198.20.0.1:80")));
        assert!(r.matches(&sa("198.20.0.1:8050")));
        assert!(r.matches(&sa("198.18.5.1:23")));
        assert!(!r.matches(&sa("198.18.5.1:22")));
        assert!(r.matches(&sa("[2001:db8:1::5]:443")));
        assert!(!r.matches(&sa("[2001:db8:1::5]:80")));
        assert!(!r.matches(&sa("[::1]:8000")));
        assert!(
            r.matches(&sa("127.0.0.1:8000")),
            "EXCLUDE replaces the loopback default"
        );
    }

    #[test]
    fn prefix_edges() {
        let all = parse_rule("0.0.0.0/0").unwrap();
        assert!(all.matches(&sa("255.255.255.255:1")));
        assert!(!all.matches(&sa("[2001:db8::1]:1")));
        let host = parse_rule("198.18.0.2").unwrap();
        assert!(host.matches(&sa("198.18.0.2:9")));
        assert!(!host.matches(&sa("198.18.0.3:9")));
        let v6 = parse_rule("2001:db8::/127").unwrap();
        assert!(v6.matches(&sa("[2001:db8::1]:1")));
        assert!(!v6.matches(&sa("[2001:db8::2]:1")));
        assert!(parse_rule("[::1]x").is_none());
        assert!(parse_rule("1.2.3.4:20-10").is_none());
    }
}
