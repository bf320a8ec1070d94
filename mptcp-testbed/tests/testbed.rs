//! The test bed against the real kernel, as root (CI) or in a user namespace.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use mptcp_testbed::transfer::{self, Proto};
use mptcp_testbed::{Host, Side, relay_path, require_privileges, two_links};

mod common;
use common::{assert_lan_reaches_dest, mptcp_subflows, transfer, transfer_with};

const TRANSFER: Duration = Duration::from_secs(4);

fn privileges() {
    require_privileges().expect("the test bed needs privileges");
}

/// Tests that assert a throughput run alone (write lock); the other tests of
/// this file that move data share the read lock, so that their CPU use does
/// not skew the measured rates on a small machine.
static THROUGHPUT: RwLock<()> = RwLock::new(());

fn shared_cpu() -> RwLockReadGuard<'static, ()> {
    THROUGHPUT.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive_cpu() -> RwLockWriteGuard<'static, ()> {
    THROUGHPUT.write().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn host_is_isolated_and_sysctls_hit_its_namespace() {
    privileges();
    let a = Host::new("a").unwrap();
    let b = Host::new("b").unwrap();
    a.sysctl("net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(a.read_sysctl("net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(b.read_sysctl("net.ipv4.ip_forward").unwrap(), "0");
    // The same value as seen by a program started in the namespace.
    let seen = a.exec("cat", &["/proc/sys/net/ipv4/ip_forward"]).unwrap();
    assert_eq!(seen.trim(), "1");
    // A fresh namespace has only loopback, and it is up.
    let links = a.ip(&["-o", "link", "show"]).unwrap();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
}

#[test]
fn host_command_and_closure_run_inside() {
    privileges();
    let bed = two_links(1, None).unwrap();
    let out = bed
        .client
        .command("ip")
        .args(["-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("198.18.0.1/24"));
    // A listener made in the server's namespace, reached from the client's.
    let listener = bed
        .server
        .run(|| {
            transfer::listen(
                Proto::Tcp,
                SocketAddr::V4(SocketAddrV4::new(bed.server_addr(), 0)),
            )
        })
        .unwrap();
    let target = listener.local_addr().unwrap();
    let peer = bed
        .client
        .spawn(move || transfer::connect(Proto::Tcp, target).map(|s| s.local_addr().unwrap()))
        .join()
        .unwrap()
        .unwrap();
    let (_, accepted_peer) = listener.accept().unwrap();
    assert_eq!(peer, accepted_peer);
    assert_eq!(peer.ip().to_string(), "198.18.0.1");
}

#[test]
fn mptcp_opens_one_subflow_per_link_and_uses_both() {
    privileges();
    let _cpu = shared_cpu();
    let bed = two_links(2, Some(50)).unwrap();
    let before: Vec<_> = bed.links.iter().map(|l| l.bytes().unwrap()).collect();
    let (report, subflows) = mptcp_subflows(&bed.client, &bed.server, bed.server_addr(), || ());
    let sources: Vec<_> = subflows.iter().map(|(local, _)| *local.ip()).collect();
    assert!(
        sources.contains(&bed.client_addr(0)) && sources.contains(&bed.client_addr(1)),
        "expected a subflow from each client address, got {subflows:?}"
    );
    for (link, (tx0, _)) in bed.links.iter().zip(before) {
        let (tx, _) = link.bytes().unwrap();
        let carried = tx - tx0;
        assert!(
            carried > report.received_bytes / 5,
            "link {:?} carried only {carried} of {} bytes",
            link.addr(Side::A),
            report.received_bytes
        );
    }
}

/// The acceptance test of the test bed: MPTCP over 2 × 20 Mbit/s gives at
/// least 1.7 times one TCP connection (target 1.9), in steady state: from
/// one second in (slow start, the second subflow's join) to shortly before
/// the end. The averages are printed too; a full test run can slow the
/// first second (the kernel tears down earlier tests' namespaces).
#[test]
fn mptcp_aggregates_two_20_mbit_links() {
    privileges();
    let _cpu = exclusive_cpu();
    let bed = two_links(2, Some(20)).unwrap();
    let run = |proto| {
        let (report, steady) = transfer_with(
            &bed.client,
            &bed.server,
            bed.server_addr(),
            proto,
            TRANSFER,
            |running| {
                let ramped = running.meter().sample();
                std::thread::sleep(TRANSFER - Duration::from_millis(1500));
                running.meter().sample().mbit_per_s_since(&ramped)
            },
        );
        (report.mbit_per_s(), steady)
    };
    let (tcp_average, tcp) = run(Proto::Tcp);
    let (mptcp_average, mptcp) = run(Proto::Mptcp);
    let ratio = mptcp / tcp;
    println!(
        "2 x 20 Mbit/s, steady: single TCP {tcp:.1} Mbit/s, MPTCP {mptcp:.1} Mbit/s, \
         ratio {ratio:.2} (sum of links 40); averages {tcp_average:.1} and {mptcp_average:.1}"
    );
    assert!(
        tcp > 15.0,
        "single TCP only {tcp:.1} Mbit/s on a 20 Mbit/s link"
    );
    assert!(
        ratio >= 1.7,
        "MPTCP {mptcp:.1} / TCP {tcp:.1} = {ratio:.2} < 1.7"
    );
}

#[test]
fn transfer_survives_a_link_going_down_and_back() {
    privileges();
    let _cpu = shared_cpu();
    let bed = two_links(2, Some(20)).unwrap();
    let (_, (at_down, while_down)) = transfer_with(
        &bed.client,
        &bed.server,
        bed.server_addr(),
        Proto::Mptcp,
        TRANSFER,
        |running| {
            // Link 1 carries a subflow (link 0 carries the initial one).
            bed.links[1].down().unwrap();
            let at_down = running.meter().sample();
            std::thread::sleep(Duration::from_millis(1500));
            let while_down = running.meter().sample();
            bed.links[1].up().unwrap();
            (at_down, while_down)
        },
    );
    assert!(
        while_down.bytes > at_down.bytes,
        "no data moved while link 1 was down"
    );
    // Routes through the link are back.
    let table = bed.client.ip(&["route", "show", "table", "101"]).unwrap();
    assert!(table.contains("default via 198.18.1.2"), "{table}");
}

#[test]
fn link_rate_can_change_and_be_removed() {
    privileges();
    let _cpu = exclusive_cpu();
    let bed = two_links(1, Some(20)).unwrap();
    let link = &bed.links[0];
    let (server, dev) = link.end(Side::B);
    assert!(
        server
            .tc(&["qdisc", "show", "dev", dev])
            .unwrap()
            .contains("rate 20Mbit")
    );
    link.set_rate(Some(5)).unwrap();
    let slow = transfer(
        &bed.client,
        &bed.server,
        bed.server_addr(),
        Proto::Tcp,
        Duration::from_secs(2),
    );
    assert!(
        (3.5..5.5).contains(&slow.mbit_per_s()),
        "{} Mbit/s at 5 Mbit/s",
        slow.mbit_per_s()
    );
    link.set_rate(None).unwrap();
    link.set_rate(None).unwrap();
    assert!(
        !server
            .tc(&["qdisc", "show", "dev", dev])
            .unwrap()
            .contains("tbf")
    );
}

#[test]
fn relay_path_routes_lan_to_dest_and_mptcp_uses_every_wan_link() {
    privileges();
    let _cpu = shared_cpu();
    let rp = relay_path(2, Some(50)).unwrap();
    // Plain routing, lan -> dest and back, over WAN link 0.
    assert_lan_reaches_dest(&rp, Duration::from_millis(500));
    // MPTCP from local to remote over both WAN links.
    let (_, subflows) = mptcp_subflows(&rp.local, &rp.remote, rp.remote_addr(), || ());
    assert_eq!(subflows.len(), 2, "{subflows:?}");
}

#[test]
fn invalid_link_count_is_refused() {
    let err = two_links(9, None).unwrap_err();
    assert!(err.to_string().contains("1 to 8"), "{err}");
}

/// The namespace inode of a host, as `net:[N]` (how /proc shows it).
fn netns_id(host: &Host) -> String {
    let link = std::fs::read_link(host.netns_path()).unwrap();
    link.to_string_lossy().into_owned()
}

/// Whether any task or open file of any process still refers to `id`.
fn netns_in_use(id: &str) -> bool {
    let refers = |path: std::path::PathBuf| {
        std::fs::read_link(path).is_ok_and(|target| target.to_string_lossy() == id)
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|proc_dir| {
            let tasks = std::fs::read_dir(proc_dir.path().join("task"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|task| refers(task.path().join("ns/net")));
            let fds = std::fs::read_dir(proc_dir.path().join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| refers(fd.path()));
            tasks || fds
        })
}

#[test]
fn namespaces_vanish_when_a_test_panics() {
    privileges();
    let (ids_tx, ids_rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let bed = two_links(2, Some(20)).unwrap();
        ids_tx
            .send([netns_id(&bed.client), netns_id(&bed.server)])
            .unwrap();
        bed.client
            .run(|| panic!("a test fails inside the test bed"));
    })
    .join();
    assert!(outcome.is_err(), "the closure's panic reaches the caller");
    let ids = ids_rx.recv().unwrap();
    assert_ne!(ids[0], ids[1]);
    for id in ids {
        assert!(!netns_in_use(&id), "{id} still in use after the panic");
    }
}
