//! Who may use the relay and where it may connect: SOCKS5 users, CIDR
//! lists, the client allowlist, and the destination policy that keeps the
//! remote relay from being an open door into its own host and networks.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::User;
use crate::socks5::Credentials;

/// An IP network such as `10.0.0.0/8` or `fe80::/10`; a bare address means
/// that single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network `addr/prefix`; host bits of `addr` are cleared.
    /// Returns `None` if the prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then(|| Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` is inside this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:a.b.c.d`) match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.addr
            }
            _ => false,
        }
    }
}

/// Whether `creds` name one of `users` (RFC 1929 username/password). Every
/// user is compared, each in time that depends only on the lengths, so the
/// answer's timing does not tell how much of a guess was right.
pub(crate) fn authenticate(users: &[User], creds: &Credentials) -> bool {
    users.iter().fold(false, |found, u| {
        let user = constant_time_eq(u.username.as_bytes(), &creds.username);
        let password = constant_time_eq(u.password.as_bytes(), &creds.password);
        found | (user & password)
    })
}

/// Byte strings compared without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Maps `::ffff:a.b.c.d` to `a.b.c.d` so that policies cannot be bypassed
/// by spelling an IPv4 address as IPv6.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP network (like 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr::new(addr, prefix).expect("prefix checked"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Networks the remote relay refuses to connect to unless allowed
/// explicitly: its own loopback, link-local, private and unspecified ranges
/// (and the same spelled as IPv4-mapped IPv6).
pub const DEFAULT_DENIED: [&str; 14] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
    "ff00::/8",
];

/// Where the remote relay may connect.
///
/// Order of decision: `deny` wins, then `allow`, then the default denied
/// ranges ([`DEFAULT_DENIED`]) and the relay host's own addresses, else
/// allowed. An IPv6 address that carries an IPv4 one (IPv4-mapped,
/// IPv4-compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is judged as
/// both, so `::ffff:127.0.0.1` and `64:ff9b::7f00:1` are loopback too.
///
/// ```
/// use mptcp_core::relay::DestinationPolicy;
/// let policy = DestinationPolicy::new(Vec::new(), Vec::new());
/// assert!(!policy.allows("64:ff9b::7f00:1".parse().unwrap()));
/// assert!(!policy.allows("239.1.2.3".parse().unwrap()));
/// assert!(policy.allows("192.0.2.1".parse().unwrap()));
/// ```
#[derive(Debug, Clone)]
pub struct DestinationPolicy {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    default_denied: Vec<Cidr>,
}

impl DestinationPolicy {
    /// A policy with these explicit lists on top of the defaults.
    pub fn new(allow: Vec<Cidr>, deny: Vec<Cidr>) -> DestinationPolicy {
        let default_denied = DEFAULT_DENIED
            .iter()
            .map(|s| s.parse().expect("valid built-in CIDR"))
            .collect();
        DestinationPolicy {
            allow,
            deny,
            default_denied,
        }
    }

    /// Whether connecting to `ip` is allowed (the host's own addresses
    /// aside, see [`DestinationPolicy::allows_from`]).
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allows_from(ip, &[])
    }

    /// Whether a relay on a host with the addresses `own` may connect to
    /// `ip`: its own addresses are denied by default like the ranges, since
    /// services bound to `0.0.0.0` on it would be reachable otherwise.
    pub fn allows_from(&self, ip: IpAddr, own: &[IpAddr]) -> bool {
        let forms = [Some(ip), embedded_ipv4(ip).map(IpAddr::V4)];
        let forms = || forms.iter().flatten().copied();
        if forms().any(|f| self.deny.iter().any(|c| c.contains(f))) {
            return false;
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return true;
        }
        !forms().any(|f| self.default_denied.iter().any(|c| c.contains(f)) || own.contains(&f))
    }
}

/// The IPv4 address an IPv6 one carries, in the forms that reach it:
/// IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64's
/// well-known prefix `64:ff9b::/96`, and 6to4 `2002:AABB:CCDD::/16`.
fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        )),
        _ => None,
    }
}

/// The clients a local relay's SOCKS5 and HTTP proxy listeners serve when
/// no allowlist is configured: the private ranges (RFC 1918, shared
/// address space, link-local, loopback, unique-local IPv6). A LAN with
/// public addresses (IPv6 prefixes from the provider) lists its own.
pub const DEFAULT_LAN_CLIENTS: [&str; 9] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "127.0.0.0/8",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
];

/// Which client addresses may connect; empty means everyone.
#[derive(Debug, Clone, Default)]
pub struct ClientAllowlist(pub Vec<Cidr>);

impl ClientAllowlist {
    /// `configured`, or [`DEFAULT_LAN_CLIENTS`] when it is empty.
    pub fn or_private(configured: &[Cidr]) -> ClientAllowlist {
        if !configured.is_empty() {
            return ClientAllowlist(configured.to_vec());
        }
        ClientAllowlist(
            DEFAULT_LAN_CLIENTS
                .iter()
                .map(|s| s.parse().expect("valid built-in CIDR"))
                .collect(),
        )
    }

    /// Whether a client at `ip` may use the relay.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.255.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!("1.2.3.4/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip("2001:db8::1")));
        assert!(
            "198.18.0.2"
                .parse::<Cidr>()
                .unwrap()
                .contains(ip("198.18.0.2"))
        );
    }

    #[test]
    fn default_policy_denies_local_ranges() {
        let p = DestinationPolicy::new(vec![], vec![]);
        for denied in [
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "fe80::1",
        ] {
            assert!(!p.allows(ip(denied)), "{denied}");
        }
        assert!(!p.allows(ip("::ffff:127.0.0.1")));
        assert!(p.allows(ip("198.19.2.2")));
        let p = DestinationPolicy::new(
            vec!["127.0.0.1".parse().unwrap()],
            vec!["198.19.0.0/16".parse().unwrap()],
        );
        assert!(p.allows(ip("127.0.0.1")));
        assert!(!p.allows(ip("127.0.0.2")));
        assert!(!p.allows(ip("198.19.2.2")));
    }

    #[test]
    fn authenticate_needs_both_name_and_password_of_one_user() {
        let users = [
            User {
                username: "alice".into(),
                password: "correct horse".into(),
            },
            User {
                username: "bob".into(),
                password: "battery".into(),
            },
        ];
        let creds = |u: &str, p: &str| Credentials {
            username: u.as_bytes().to_vec(),
            password: p.as_bytes().to_vec(),
        };
        assert!(authenticate(&users, &creds("alice", "correct horse")));
        assert!(authenticate(&users, &creds("bob", "battery")));
        assert!(!authenticate(&users, &creds("alice", "battery")));
        assert!(!authenticate(&users, &creds("alice", "correct hors")));
        assert!(!authenticate(&users, &creds("alice", "correct horsf")));
        assert!(!authenticate(&[], &creds("alice", "correct horse")));
    }

    #[test]
    fn ipv6_forms_of_denied_ipv4_ranges_are_denied() {
        let policy = DestinationPolicy::new(Vec::new(), Vec::new());
        for denied in [
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "2002:7f00:1::1",
            "2002:c0a8:101::",
            "::ffff:169.254.169.254",
            "255.255.255.255",
            "224.0.0.251",
            "239.255.255.250",
            "ff02::1",
            "ff05::1:3",
        ] {
            let ip: IpAddr = denied.parse().unwrap();
            assert!(!policy.allows(ip), "{denied} must be denied");
        }
        for allowed in [
            "64:ff9b::c000:201",
            "2002:c000:201::1",
            "::ffff:192.0.2.1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = allowed.parse().unwrap();
            assert!(policy.allows(ip), "{allowed} must be allowed");
        }
    }

    #[test]
    fn the_hosts_own_addresses_are_denied_unless_allowed() {
        let own: Vec<IpAddr> = vec![
            "203.0.113.5".parse().unwrap(),
            "2001:db8::5".parse().unwrap(),
        ];
        let policy = DestinationPolicy::new(Vec::new(), Vec::new());
        assert!(!policy.allows_from("203.0.113.5".parse().unwrap(), &own));
        assert!(!policy.allows_from("::ffff:203.0.113.5".parse().unwrap(), &own));
        assert!(!policy.allows_from("2001:db8::5".parse().unwrap(), &own));
        assert!(policy.allows_from("203.0.113.6".parse().unwrap(), &own));
        let allowing = DestinationPolicy::new(vec!["203.0.113.5/32".parse().unwrap()], Vec::new());
        assert!(allowing.allows_from("203.0.113.5".parse().unwrap(), &own));
        let denying = DestinationPolicy::new(Vec::new(), vec!["192.0.2.0/24".parse().unwrap()]);
        assert!(
            !denying.allows("64:ff9b::c000:201".parse().unwrap()),
            "deny sees the IPv4 form"
        );
    }

    #[test]
    fn the_default_lan_allowlist_serves_private_clients_only() {
        let lan = ClientAllowlist::or_private(&[]);
        for private in [
            "192.168.1.20",
            "10.9.8.7",
            "172.31.0.1",
            "100.64.3.4",
            "127.0.0.1",
            "fd00::5",
            "fe80::1",
            "::1",
        ] {
            assert!(lan.allows(private.parse().unwrap()), "{private}");
        }
        for public in [
            "203.0.113.9",
            "198.19.1.2",
            "8.8.8.8",
            "2001:db8::1",
            "::ffff:203.0.113.9",
        ] {
            assert!(!lan.allows(canonical(public.parse().unwrap())), "{public}");
        }
        let listed = ClientAllowlist::or_private(&["198.19.1.0/24".parse().unwrap()]);
        assert!(listed.allows("198.19.1.2".parse().unwrap()));
        assert!(
            !listed.allows("192.168.1.20".parse().unwrap()),
            "a configured list replaces the default"
        );
    }
}
