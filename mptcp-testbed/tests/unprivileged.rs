//! The test bed without root: inside an unprivileged user namespace, and the
//! error it gives when it has no way to get privileges.
//!
//! The outer tests run this same test binary again (the `inner_*` tests,
//! ignored in a normal run) under `unshare --user --map-root-user --net`, or
//! with no privilege at all. When run as root, they first drop to the
//! `nobody` user (65534) so the inner test truly has no privilege in the
//! machine's namespaces.

use std::time::Duration;

use mptcp_testbed::transfer::ping_rtts;
use mptcp_testbed::{
    UnprivilegedCopy, in_initial_user_namespace, relay_path, run_ignored_test, two_links,
    two_links_with,
};

mod common;
use common::{assert_lan_reaches_dest, mptcp_subflows};

/// Runs the inner test `name` of this binary, with `wrapper` (e.g. `unshare`
/// and its arguments) in front, from a copy that `nobody` may run, as
/// `nobody` when we are root; panics with its output unless it passed.
fn run_inner(wrapper: &[&str], name: &str) {
    let exe = std::env::current_exe().expect("path of the test binary");
    let copy = UnprivilegedCopy::new(&exe).expect("copying the test binary for nobody");
    let stdout = run_ignored_test(copy.command(wrapper), name)
        .unwrap_or_else(|e| panic!("inner test under {wrapper:?}: {e}"));
    println!("{stdout}");
}

#[test]
fn test_bed_works_in_an_unprivileged_user_namespace() {
    let name = "inner_two_links_and_relay_path_in_user_namespace";
    run_inner(&["unshare", "--user", "--map-root-user", "--net"], name);
}

#[test]
#[ignore = "run inside a user namespace by test_bed_works_in_an_unprivileged_user_namespace"]
fn inner_two_links_and_relay_path_in_user_namespace() {
    assert!(
        !in_initial_user_namespace().unwrap(),
        "expected to run in a user namespace of its own"
    );
    let bed = two_links(2, Some(50)).unwrap();
    let (report, subflows) = mptcp_subflows(&bed.client, &bed.server, bed.server_addr(), || {
        bed.links[1].set_rate(Some(30)).unwrap();
    });
    assert_eq!(subflows.len(), 2, "{subflows:?}");
    println!(
        "in a user namespace: MPTCP {:.1} Mbit/s over 2 links, 2 subflows, checksum ok",
        report.mbit_per_s()
    );
    let rp = relay_path(2, None).unwrap();
    assert_lan_reaches_dest(&rp, Duration::from_millis(200));
    // A delay line works without root too (an ordinary thread then).
    let delayed = two_links_with(&["20:5ms".parse().unwrap()]).unwrap();
    let server = delayed.server_addr();
    let rtts = ping_rtts(&delayed.client, server, 3, Duration::ZERO).unwrap();
    assert!(
        rtts.iter().all(|rtt| *rtt >= Duration::from_millis(10)),
        "{rtts:?} over a link of 5 ms each way"
    );
    println!("in a user namespace: RTT {rtts:?} over a 20:5ms link");
}

#[test]
fn without_any_privilege_the_error_says_what_is_missing() {
    let name = "inner_require_privileges_explains";
    run_inner(&[], name);
}

#[test]
#[ignore = "run without privileges by without_any_privilege_the_error_says_what_is_missing"]
fn inner_require_privileges_explains() {
    let err = mptcp_testbed::require_privileges().unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(msg.contains("not running as root"), "{msg}");
    assert!(
        msg.contains("unshare --user --map-root-user --net"),
        "{msg}"
    );
    assert!(msg.contains("sudo"), "{msg}");
    assert!(msg.contains("CAP_SYS_ADMIN"), "{msg}");
}
