//! The kernel probe on the real kernel: this host, and a namespace of the
//! test's own with MPTCP disabled.

use mptcp_core::probe::{Availability, KernelVersion, Probe};
use mptcp_core::socket::FallbackReason;

#[test]
fn probe_of_this_host_sees_mptcp() {
    let probe = Probe::read();
    assert!(probe.available(), "{probe}");
    assert_eq!(probe.ipv4, Availability::Available);
    assert_eq!(probe.enabled, Some(true));
    assert_eq!(probe.sysctl("enabled"), Some("1"));
    let running = KernelVersion::running().unwrap();
    assert_eq!(probe.kernel, Some(running));
    assert!(
        probe
            .kernel_release
            .starts_with(&format!("{}.{}", running.major, running.minor))
    );
    assert!(running >= KernelVersion::new(5, 6, 0));

    let pm = probe.path_manager.as_deref().expect("a path manager");
    assert!(["kernel", "userspace"].contains(&pm), "{pm}");
    if running >= KernelVersion::new(6, 6, 0) {
        assert!(probe.scheduler.is_some());
    }
    let names: Vec<&str> = probe
        .sysctls
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(names.is_sorted(), "{names:?}");
    assert!(names.contains(&"add_addr_timeout"), "{names:?}");

    let text = probe.to_string();
    for needle in [
        "kernel:",
        "MPTCP IPv4:   available",
        "enabled:      yes",
        "net.mptcp.enabled = 1",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
    }
}

#[test]
fn probe_reads_the_calling_threads_namespace() {
    let host = mptcp_testbed::Host::new("probe").expect("a network namespace (needs root)");
    host.sysctl("net.mptcp.enabled", "0").unwrap();
    host.sysctl("net.mptcp.add_addr_timeout", "33").unwrap();
    let probe = host.run(Probe::read);
    assert!(!probe.available());
    assert_eq!(probe.ipv4, Availability::Refused(FallbackReason::Disabled));
    assert_eq!(probe.ipv6, Availability::Refused(FallbackReason::Disabled));
    assert_eq!(probe.enabled, Some(false));
    assert_eq!(probe.sysctl("add_addr_timeout"), Some("33"));
    let text = probe.to_string();
    assert!(text.contains("sysctl -w net.mptcp.enabled=1"), "{text}");

    // The host namespace is untouched.
    assert_eq!(Probe::read().enabled, Some(true));
}

#[test]
fn kernel_versions_parse_and_order() {
    assert_eq!(
        KernelVersion::parse("6.18.44-fc-v669"),
        Some(KernelVersion::new(6, 18, 44))
    );
    assert_eq!(
        KernelVersion::parse("5.15.0-91-generic"),
        Some(KernelVersion::new(5, 15, 0))
    );
    assert_eq!(
        KernelVersion::parse("6.10-rc1"),
        Some(KernelVersion::new(6, 10, 0))
    );
    assert_eq!(KernelVersion::parse("6"), None);
    assert_eq!(KernelVersion::parse("linux"), None);
    assert!(KernelVersion::new(6, 10, 0) > KernelVersion::new(6, 9, 12));
    assert_eq!(KernelVersion::new(6, 18, 2).to_string(), "6.18.2");
}
