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
struct Gap {
    /// What is missing.
    what: &'static str,
    /// The command or setting that fixes it.
    fix: &'static str,
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
            what: "MPTCP is disabled in this network namespace (net.mptcp.enabled = 0)",
            fix: "sysctl -w net.mptcp.enabled=1",
            fatal: true,
        });
    } else if !matches!(probe.ipv4, Availability::Available) {
        gaps.push(Gap {
            what: "the kernel refuses MPTCP sockets (built without CONFIG_MPTCP, or older than 5.6)",
            fix: "use a kernel built with CONFIG_MPTCP=y (Linux 5.6+; 6.x recommended)",
            fatal: true,
        });
    }
    if probe.available() && !matches!(probe.ipv6, Availability::Available) {
        gaps.push(Gap {
            what: "no MPTCP over IPv6 (CONFIG_MPTCP_IPV6 not set, or IPv6 disabled)",
            fix: "use a kernel with CONFIG_MPTCP_IPV6=y and IPv6 enabled (sysctl -w net.ipv6.conf.all.disable_ipv6=0)",
            fatal: false,
        });
    }
    if let Some(kernel) = probe.kernel {
        for (since, what, fix) in VERSIONED {
            if kernel < since {
                gaps.push(Gap {
                    what,
                    fix,
                    fatal: false,
                });
            }
        }
    }
    if probe.path_manager.as_deref() == Some("userspace") {
        gaps.push(Gap {
            what: "the userspace path manager is selected: `mptcp endpoint` settings are not used \
                   and no extra subflows open without a daemon",
            fix: "sysctl -w net.mptcp.path_manager=kernel (or net.mptcp.pm_type=0 before 6.15)",
            fatal: false,
        });
    }
    if let Some(pm) = path_manager {
        if pm.limits.subflows == 0 {
            gaps.push(Gap {
                what: "limits subflows is 0: connections never open a second subflow",
                fix: "mptcp limits set subflows 2 add_addr_accepted 2",
                fatal: false,
            });
        }
        if pm.endpoints == 0 {
            gaps.push(Gap {
                what: "no MPTCP endpoints: this host opens no extra subflow as a client and \
                       announces no extra address as a server",
                fix: "mptcp endpoint add ADDR dev IFACE subflow (per extra interface, with source \
                      routing), or let `mptcp paths auto` do both",
                fatal: false,
            });
        }
    }
    if diag_missing() {
        gaps.push(Gap {
            what: "no MPTCP socket diagnostics (`mptcp status`, `ss -M`)",
            fix: "modprobe mptcp_diag (CONFIG_INET_MPTCP_DIAG)",
            fatal: false,
        });
    }
    gaps
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
