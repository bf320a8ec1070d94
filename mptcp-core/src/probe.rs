//! What the running kernel offers for MPTCP, in the calling thread's network
//! namespace: availability (by creating a socket), the `net.mptcp.*`
//! sysctls, path manager, scheduler and kernel version.
//!
//! ```
//! let probe = mptcp_core::probe::Probe::read();
//! println!("{probe}");
//! if !probe.available() {
//!     eprintln!("no MPTCP here: {}", probe.ipv4);
//! }
//! ```

use std::fmt;
use std::fs;
use std::path::Path;

use socket2::{Domain, Socket, Type};

pub use crate::kernel::KernelVersion;
use crate::kernel::with_release;
use crate::socket::{FallbackReason, PROTOCOL};

/// Where the kernel exposes the MPTCP sysctls of the reading thread's
/// network namespace.
const SYSCTL_DIR: &str = "/proc/sys/net/mptcp";

/// Whether MPTCP sockets of one address family can be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// `socket(…, IPPROTO_MPTCP)` works.
    Available,
    /// The kernel refuses MPTCP, for this reason.
    Refused(FallbackReason),
    /// The test socket failed for another reason (e.g. out of descriptors).
    Unknown(String),
}

impl Availability {
    /// Creates (and closes) an MPTCP socket of `domain`.
    pub fn test(domain: Domain) -> Self {
        match Socket::new(domain, Type::STREAM, Some(PROTOCOL)) {
            Ok(_) => Self::Available,
            Err(err) => match err.raw_os_error().and_then(FallbackReason::from_errno) {
                Some(reason) => Self::Refused(reason),
                None => Self::Unknown(err.to_string()),
            },
        }
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Available => f.write_str("available"),
            Self::Refused(reason) => write!(f, "unavailable: {reason}"),
            Self::Unknown(err) => write!(f, "could not test: {err}"),
        }
    }
}

/// A snapshot of the host's MPTCP support. Build it with [`Probe::read`];
/// print it with `{}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The kernel release string (`uname -r`).
    pub kernel_release: String,
    /// The parsed kernel version.
    pub kernel: Option<KernelVersion>,
    /// Whether `socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP)` works.
    pub ipv4: Availability,
    /// The same for `AF_INET6` (needs `CONFIG_MPTCP_IPV6`).
    pub ipv6: Availability,
    /// `net.mptcp.enabled`, if readable.
    pub enabled: Option<bool>,
    /// The path manager: `net.mptcp.path_manager` (6.15+), else
    /// `net.mptcp.pm_type` (6.0+) as `kernel` or `userspace`.
    pub path_manager: Option<String>,
    /// The packet scheduler, `net.mptcp.scheduler` (6.6+).
    pub scheduler: Option<String>,
    /// Every readable file under `/proc/sys/net/mptcp`, sorted by name
    /// (names without the `net.mptcp.` prefix).
    pub sysctls: Vec<(String, String)>,
}

impl Probe {
    /// Probes the kernel from the calling thread, in its network namespace.
    /// Never fails: what cannot be read is `None` or missing.
    pub fn read() -> Self {
        let kernel_release =
            with_release(|release| release.to_string_lossy().into_owned()).unwrap_or_default();
        let kernel = KernelVersion::parse(&kernel_release);
        let ipv4 = Availability::test(Domain::IPV4);
        let ipv6 = Availability::test(Domain::IPV6);
        let sysctls = read_sysctls(Path::new(SYSCTL_DIR));
        let value = |name: &str| {
            sysctls
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let enabled = value("enabled").map(|v| v != "0");
        let path_manager = value("path_manager").or_else(|| {
            value("pm_type").map(|t| match t.as_str() {
                "0" => "kernel".to_owned(),
                "1" => "userspace".to_owned(),
                other => format!("type {other}"),
            })
        });
        let scheduler = value("scheduler");
        Self {
            kernel_release,
            kernel,
            ipv4,
            ipv6,
            enabled,
            path_manager,
            scheduler,
            sysctls,
        }
    }

    /// The value of `net.mptcp.<name>`, as read.
    pub fn sysctl(&self, name: &str) -> Option<&str> {
        self.sysctls
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// MPTCP sockets can be created (IPv4).
    pub fn available(&self) -> bool {
        self.ipv4 == Availability::Available
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |value: &Option<String>| value.clone().unwrap_or_else(|| "unknown".into());
        writeln!(f, "kernel:       {}", self.kernel_release)?;
        writeln!(f, "MPTCP IPv4:   {}", self.ipv4)?;
        writeln!(f, "MPTCP IPv6:   {}", self.ipv6)?;
        let enabled = match self.enabled {
            Some(true) => "yes",
            Some(false) => "no (sysctl -w net.mptcp.enabled=1)",
            None => "unknown",
        };
        writeln!(f, "enabled:      {enabled}")?;
        writeln!(f, "path manager: {}", show(&self.path_manager))?;
        writeln!(f, "scheduler:    {}", show(&self.scheduler))?;
        writeln!(f, "sysctls:")?;
        for (name, value) in &self.sysctls {
            writeln!(f, "  net.mptcp.{name} = {value}")?;
        }
        Ok(())
    }
}

fn read_sysctls(dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut sysctls: Vec<(String, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let value = fs::read_to_string(entry.path()).ok()?;
            Some((name, value.trim().to_owned()))
        })
        .collect();
    sysctls.sort();
    sysctls
}
