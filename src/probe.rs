//! `mptcp probe`: what this kernel supports for MPTCP, what is missing, and
//! the sysctl or command that fixes each gap.

use clap::Args;
use mptcp_core::probe::{Availability, KernelVersion, Probe};
use serde_json::json;

use crate::failure::{CmdResult, EXIT_UNSUPPORTED, Failure};

/// `mptcp probe`.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Print a JSON object instead of text
    #[arg(short, long)]
    pub json: bool,
}

/// One missing piece and how to get it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Gap {
    /// What is missing.
    pub what: String,
    /// The command or setting that fixes it.
    pub fix: String,
    /// Without it MPTCP does not work at all (rather than lacking a feature).
    fatal: bool,
}

/// Features that appeared in a kernel version, and what lacks before it.
const VERSIONED: [(KernelVersion, &str, &str); 4] = [
    (
        KernelVersion::new(5, 16, 0),
        "MPTCP_INFO socket options (connection and subflow inspection)",
        "upgrade to Linux 5.16 or newer",
    ),
    (
        KernelVersion::new(6, 5, 0),
        "MPTCP data byte counters (mptcpi_bytes_*; rates in `mptcp status`)",
        "upgrade to Linux 6.5 or newer",
    ),
    (
        KernelVersion::new(6, 6, 0),
        "a selectable packet scheduler (net.mptcp.scheduler)",
        "upgrade to Linux 6.6 or newer",
    ),
    (
        KernelVersion::new(6, 10, 0),
        "the TCP_IS_MPTCP socket option and last_data_* timestamps in mptcp_info",
        "upgrade to Linux 6.10 or newer",
    ),
];

/// What the in-kernel path manager is set up with (reading needs no privilege).
#[derive(Debug, Clone, Copy)]
struct PathManagerState {
    limits: mptcp_core::pm::Limits,
    endpoints: usize,
}

impl PathManagerState {
    fn read() -> Option<Self> {
        let mut pm = mptcp_core::pm::PathManager::open().ok()?;
        Some(PathManagerState {
            limits: pm.limits().ok()?,
            endpoints: pm.endpoints().ok()?.len(),
        })
    }
}

fn gaps(probe: &Probe, path_manager: Option<PathManagerState>) -> Vec<Gap> {
    let mut gaps = Vec::new();
    if probe.enabled == Some(false) {
        gaps.push(Gap {
            what: "MPTCP is disabled in this network namespace (net.mptcp.enabled = 0)".into(),
            fix: "sysctl -w net.mptcp.enabled=1".into(),
            fatal: true,
        });
    } else if !matches!(probe.ipv4, Availability::Available) {
        gaps.push(Gap {
            what:
                "the kernel refuses MPTCP sockets (built without CONFIG_MPTCP, or older than 5.6)"
                    .into(),
            fix: "use a kernel built with CONFIG_MPTCP=y (Linux 5.6+; 6.x recommended)".into(),
            fatal: true,
        });
    }
    if probe.available() && !matches!(probe.ipv6, Availability::Available) {
        gaps.push(Gap {
            what: "no MPTCP over IPv6 (CONFIG_MPTCP_IPV6 not set, or IPv6 disabled)".into(),
            fix: "use a kernel with CONFIG_MPTCP_IPV6=y and IPv6 enabled (sysctl -w net.ipv6.conf.all.disable_ipv6=0)".into(),
            fatal: false,
        });
    }
    if let Some(kernel) = probe.kernel {
        for (since, what, fix) in VERSIONED {
            if kernel < since {
                gaps.push(Gap {
                    what: what.into(),
                    fix: fix.into(),
                    fatal: false,
                });
            }
        }
    }
    if probe.path_manager.as_deref() == Some("userspace") {
        gaps.push(Gap {
            what: "the userspace path manager is selected: `mptcp endpoint` settings are not used \
                   and no extra subflows open without a daemon"
                .into(),
            fix: "sysctl -w net.mptcp.path_manager=kernel (or net.mptcp.pm_type=0 before 6.15)"
                .into(),
            fatal: false,
        });
    }
    if let Some(pm) = path_manager {
        if pm.limits.subflows == 0 {
            gaps.push(Gap {
                what: "limits subflows is 0: connections never open a second subflow".into(),
                fix: "mptcp limits set subflows 2 add_addr_accepted 2".into(),
                fatal: false,
            });
        }
        if pm.endpoints == 0 {
            gaps.push(Gap {
                what: "no MPTCP endpoints: this host opens no extra subflow as a client and \
                       announces no extra address as a server"
                    .into(),
                fix: "mptcp endpoint add ADDR dev IFACE subflow (per extra interface, with source \
                      routing), or let `mptcp paths auto` do both"
                    .into(),
                fatal: false,
            });
        }
    }
    if diag_missing() {
        gaps.push(Gap {
            what: "no MPTCP socket diagnostics (`mptcp status`, `ss -M`)".into(),
            fix: "modprobe mptcp_diag (CONFIG_INET_MPTCP_DIAG)".into(),
            fatal: false,
        });
    }
    gaps
}

/// The host's TCP settings that decide how well links with different
/// delays aggregate (DSL beside LTE): what `tuning` checks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TcpSettings {
    /// `net.ipv4.tcp_congestion_control`.
    congestion_control: Option<String>,
    /// The largest buffers autotuning may give a socket: the third field of
    /// `net.ipv4.tcp_rmem` and of `tcp_wmem`, bytes.
    rmem_max: Option<u64>,
    wmem_max: Option<u64>,
}

impl TcpSettings {
    fn read() -> TcpSettings {
        let sysctl = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
                .ok()
                .map(|v| v.trim().to_owned())
        };
        let third = |name: &str| {
            sysctl(name).and_then(|v| v.split_whitespace().nth(2).and_then(|m| m.parse().ok()))
        };
        TcpSettings {
            congestion_control: sysctl("tcp_congestion_control"),
            rmem_max: third("tcp_rmem"),
            wmem_max: third("tcp_wmem"),
        }
    }
}

/// The socket buffer `tuning` asks for: twice the data in flight on links
/// summing 900 Mbit/s whose slowest round trip is 150 ms (a receiver holds
/// what the fast links bring while the slow link's bytes are on their way).
const BUFFER_FOR_MIXED_LINKS: u64 = 32 << 20;

/// Advice for aggregating links with different delays, measured in the
/// test bed (`tests/aggregation.rs`, `RELAY_BENCH=mix`); not gaps, since
/// MPTCP works without it.
fn tuning(tcp: &TcpSettings) -> Vec<Gap> {
    let mut advice = Vec::new();
    if let Some(cc) = tcp.congestion_control.as_deref().filter(|cc| *cc != "bbr") {
        advice.push(Gap {
            what: format!(
                "congestion control {cc}: a loss-based algorithm grows a long-delay subflow's \
                 window slowly and halves it at each loss (20 Mbit/s at 5 ms beside 20 at 75 ms \
                 gave 0.55 of the links' sum with reno, 0.93 with bbr); the relay sets bbr on its \
                 own sessions, this is for other MPTCP programs"
            ),
            fix: "modprobe tcp_bbr && sysctl -w net.ipv4.tcp_congestion_control=bbr".into(),
            fatal: false,
        });
    }
    let small = |max: Option<u64>| max.is_some_and(|m| m < BUFFER_FOR_MIXED_LINKS);
    if small(tcp.rmem_max) || small(tcp.wmem_max) {
        let mib = |max: Option<u64>| max.map_or("?".to_owned(), |m| format!("{}", m >> 20));
        advice.push(Gap {
            what: format!(
                "socket buffers grow to {} MiB (receive) and {} MiB (send): over links with \
                 different delays a connection needs twice the fast links' data of the slowest \
                 round trip (32 MiB: 900 Mbit/s in all, 150 ms on the slowest)",
                mib(tcp.rmem_max),
                mib(tcp.wmem_max)
            ),
            fix: format!(
                "sysctl -w net.ipv4.tcp_rmem='4096 131072 {BUFFER_FOR_MIXED_LINKS}' \
                 net.ipv4.tcp_wmem='4096 16384 {BUFFER_FOR_MIXED_LINKS}'"
            ),
            fatal: false,
        });
    }
    advice
}

/// The tuning advice for this host's TCP settings (`mptcp paths auto`
/// logs it at start, where links with different delays are managed).
pub(crate) fn host_tuning() -> Vec<Gap> {
    tuning(&TcpSettings::read())
}

/// The MPTCP sock_diag handler is absent (a dump fails).
fn diag_missing() -> bool {
    mptcp_core::diag::connections().is_err()
}

/// `mptcp probe`: exits 3 when MPTCP cannot be used at all.
pub fn run(args: ProbeArgs) -> CmdResult {
    let probe = Probe::read();
    let path_manager = PathManagerState::read();
    let gaps = gaps(&probe, path_manager);
    let tuning = host_tuning();
    if args.json {
        let value = json!({
            "kernel": probe.kernel_release,
            "ipv4": probe.ipv4.to_string(),
            "ipv6": probe.ipv6.to_string(),
            "enabled": probe.enabled,
            "path_manager": probe.path_manager,
            "scheduler": probe.scheduler,
            "limits": path_manager.map(|pm| json!({
                "subflows": pm.limits.subflows,
                "add_addr_accepted": pm.limits.add_addr_accepted,
            })),
            "endpoints": path_manager.map(|pm| pm.endpoints),
            "sysctls": probe.sysctls.iter().map(|(k, v)| (format!("net.mptcp.{k}"), serde_json::Value::from(v.as_str()))).collect::<serde_json::Map<_, _>>(),
            "gaps": gaps.iter().map(|g| json!({"missing": g.what, "fix": g.fix, "fatal": g.fatal})).collect::<Vec<_>>(),
            "tuning": tuning.iter().map(|t| json!({"advice": t.what, "fix": t.fix})).collect::<Vec<_>>(),
        });
        println!("{value}");
    } else {
        print!("{probe}");
        if let Some(pm) = path_manager {
            println!("limits:       {}", pm.limits);
            println!("endpoints:    {}", pm.endpoints);
        }
        if gaps.is_empty() {
            println!("missing:      nothing: MPTCP is ready");
        } else {
            println!("missing:");
            for gap in &gaps {
                println!("  - {}\n    fix: {}", gap.what, gap.fix);
            }
        }
        if !tuning.is_empty() {
            println!("tuning (links with different delays):");
            for advice in &tuning {
                println!("  - {}\n    fix: {}", advice.what, advice.fix);
            }
        }
    }
    if gaps.iter().any(|g| g.fatal) {
        return Err(Failure {
            code: EXIT_UNSUPPORTED,
            message: "MPTCP is not usable on this host (see `missing` above)".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_limits_and_endpoints_are_gaps_with_their_fixes() {
        let pm = PathManagerState {
            limits: mptcp_core::pm::Limits::default(),
            endpoints: 0,
        };
        let gaps = gaps(&Probe::read(), Some(pm));
        assert!(
            gaps.iter()
                .any(|g| g.fix == "mptcp limits set subflows 2 add_addr_accepted 2")
        );
        assert!(gaps.iter().any(|g| g.fix.contains("mptcp paths auto")));
        assert!(
            gaps.iter()
                .filter(|g| g.fix.starts_with("mptcp"))
                .all(|g| !g.fatal)
        );
    }

    #[test]
    fn loss_based_congestion_control_and_small_buffers_get_advice() {
        let tuned = TcpSettings {
            congestion_control: Some("bbr".into()),
            rmem_max: Some(BUFFER_FOR_MIXED_LINKS),
            wmem_max: Some(BUFFER_FOR_MIXED_LINKS),
        };
        assert_eq!(tuning(&tuned), Vec::new());
        let stock = TcpSettings {
            congestion_control: Some("cubic".into()),
            wmem_max: Some(4 << 20),
            ..tuned
        };
        let advice = tuning(&stock);
        assert_eq!(advice.len(), 2, "{advice:?}");
        assert!(advice[0].what.starts_with("congestion control cubic"));
        assert!(advice[0].fix.ends_with("tcp_congestion_control=bbr"));
        assert!(advice[1].what.contains("32 MiB (receive) and 4 MiB (send)"));
        assert!(advice[1].fix.contains("tcp_wmem='4096 16384 33554432'"));
        assert!(advice.iter().all(|a| !a.fatal));
    }

    #[test]
    fn disabled_sysctl_is_a_fatal_gap_with_its_fix() {
        let mut probe = Probe::read();
        probe.enabled = Some(false);
        let gaps = gaps(&probe, None);
        assert!(gaps[0].fatal);
        assert_eq!(gaps[0].fix, "sysctl -w net.mptcp.enabled=1");
    }

    #[test]
    fn old_kernels_lack_the_counters() {
        let mut probe = Probe::read();
        probe.kernel = Some(KernelVersion::new(6, 1, 0));
        let gaps = gaps(&probe, None);
        assert!(gaps.iter().any(|g| g.what.contains("byte counters")));
        assert!(!gaps.iter().any(|g| g.what.contains("MPTCP_INFO")));
    }
}
