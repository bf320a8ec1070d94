//! Automatic paths against the real kernel in test-bed namespaces: links
//! come and go under a running MPTCP transfer.
//!
//! The test bed's ready topologies configure endpoints and routing
//! themselves, so these tests build their hosts from `Host` and `Link` and
//! add and delete the second link with `ip` while the daemon runs.

use std::{
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use mptcp_core::{
    paths::{Action, AutoPaths, Config, Role},
    pm::{EventKind, EventListener},
};
use mptcp_testbed::{Host, Link, Proto, Transfer};

/// Rate of each link, Mbit/s.
const RATE: u32 = 20;

/// A client and a server joined by link 0 (`eth0`, 198.18.0.0/24), the
/// client's default route through it, as DHCP would set it.
fn one_link() -> (Host, Host, Link) {
    mptcp_testbed::require_privileges().expect("the automatic-paths tests need root");
    let client = Host::new("client").unwrap();
    let server = Host::new("server").unwrap();
    // BBR (this machine's default) overshoots the links' token buckets and
    // retransmits heavily; loss-based Reno (always allowed, unlike CUBIC
    // here) makes the throughput comparison steady.
    client
        .sysctl("net.ipv4.tcp_congestion_control", "reno")
        .unwrap();
    let link = add_link(&client, &server, 0);
    (client, server, link)
}

/// Link `i`: client `eth{i}` 198.18.i.1/24 to server `eth{i}` 198.18.i.2/24,
/// and a client default route through it with metric 100 + i.
fn add_link(client: &Host, server: &Host, i: u8) -> Link {
    Link::uplink(client, server, i, Some(RATE)).unwrap()
}

/// Polls `probe` every 20 ms until it holds, for at most 5 s.
fn wait_until(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn show(host: &Host, args: &[&str]) -> String {
    host.ip(args).unwrap()
}

#[test]
fn a_second_link_joins_a_running_transfer_and_leaves_it_intact() {
    let (client, server, _link0) = one_link();
    // Someone else's endpoint: automatic paths must leave it alone.
    client
        .ip(&["mptcp", "endpoint", "add", "198.18.0.1", "id", "50"])
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let daemon = {
        let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
        client.spawn(move || {
            let mut paths = AutoPaths::new(Config {
                role: Role::Client,
                ..Config::default()
            })?;
            paths.run_until(&stop, |action: &Action, error| {
                let line = match error {
                    None => action.to_string(),
                    Some(e) => format!("{action}: FAILED: {e}"),
                };
                log.lock().unwrap().push(line);
            })
        })
    };
    wait_until("the rule for eth0 exists", || {
        show(&client, &["rule", "show"]).contains("from 198.18.0.1 lookup")
    });

    // Long enough to outlast the measurements when the machine is loaded
    // and the new subflow comes late (it ended before them once, in a
    // full test run).
    let transfer = Transfer::start(
        &client,
        &server,
        Ipv4Addr::new(198, 18, 0, 2),
        Proto::Mptcp,
        Duration::from_secs(12),
    )
    .unwrap();
    thread::sleep(Duration::from_millis(500));
    let start = transfer.meter().sample();
    thread::sleep(Duration::from_millis(1200));
    let one_link_rate = transfer.meter().sample().mbit_per_s_since(&start);

    let mut events = client.run(|| EventListener::subscribe().unwrap());
    let _link1 = add_link(&client, &server, 1);
    wait_until("the endpoint for eth1 exists", || {
        show(&client, &["mptcp", "endpoint", "show"]).contains("198.18.1.1 id")
    });
    assert!(show(&client, &["rule", "show"]).contains("from 198.18.1.1 lookup"));
    let routes = show(&client, &["route", "show", "table", "all"]);
    assert!(
        routes.contains("default via 198.18.1.2 dev eth1 table"),
        "{routes}"
    );
    // The running connection grows a subflow from the new address.
    loop {
        let event = events
            .next_event_timeout(Duration::from_secs(5))
            .unwrap()
            .expect("no subflow within 5 s of the endpoint");
        if event.kind == EventKind::SubflowEstablished {
            assert_eq!(
                event.local.map(|a| a.ip()),
                Some(Ipv4Addr::new(198, 18, 1, 1).into())
            );
            break;
        }
    }
    // Past its slow start, measured long enough to average out the bursts
    // of data-level reordering.
    thread::sleep(Duration::from_millis(500));
    let start = transfer.meter().sample();
    thread::sleep(Duration::from_millis(2000));
    let two_link_rate = transfer.meter().sample().mbit_per_s_since(&start);
    assert!(
        two_link_rate > 1.5 * one_link_rate,
        "one link {one_link_rate:.1} Mbit/s, two links {two_link_rate:.1} Mbit/s; sockets:\n{}",
        client.exec("ss", &["-tniM"]).unwrap_or_default()
    );

    client.ip(&["link", "delete", "eth1"]).unwrap();
    wait_until("the endpoint and rule for eth1 are gone", || {
        !show(&client, &["mptcp", "endpoint", "show"]).contains("198.18.1.1")
            && !show(&client, &["rule", "show"]).contains("198.18.1.1")
    });
    let report = transfer.wait().unwrap();
    assert!(report.intact(), "{report:?}");

    stop.store(true, Ordering::Relaxed);
    daemon.join().unwrap().unwrap();
    let endpoints = show(&client, &["mptcp", "endpoint", "show"]);
    assert_eq!(endpoints.trim(), "198.18.0.1 id 50", "{endpoints}");
    assert!(!show(&client, &["rule", "show"]).contains("lookup 70"));
    let log = log.lock().unwrap();
    assert!(log.iter().all(|line| !line.contains("FAILED")), "{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.starts_with("ip mptcp endpoint add 198.18.1.1 ")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .all(|l| !l.starts_with("ip mptcp endpoint add 198.18.0.1")),
        "{log:#?}"
    );
    eprintln!(
        "automatic paths: {one_link_rate:.1} Mbit/s on one link, {two_link_rate:.1} Mbit/s after the second \
         came up; {} bytes intact",
        report.received_bytes
    );
}

#[test]
fn a_dry_run_prints_the_ip_commands_it_would_run() {
    let (client, _server, _link0) = one_link();
    let mut printed = Vec::new();
    client.run(|| {
        let mut paths = AutoPaths::new(Config {
            role: Role::Server,
            dry_run: true,
            ..Config::default()
        })
        .unwrap();
        paths
            .sync(&mut |action, _| printed.push(action.to_string()))
            .unwrap();
        assert!(
            paths.sync(&mut |_, _| {}).unwrap().is_empty(),
            "nothing is printed twice"
        );
    });
    assert_eq!(printed.len(), 4, "{printed:#?}");
    assert!(
        printed[0].starts_with("ip route replace 198.18.0.0/24 dev eth0 src 198.18.0.1 table ")
    );
    assert!(printed[1].starts_with("ip route replace default via 198.18.0.2 dev eth0 table "));
    assert!(printed[2].starts_with("ip rule add from 198.18.0.1 lookup "));
    assert!(printed[3].starts_with("ip mptcp endpoint add 198.18.0.1 id 1 signal dev eth0"));
    assert!(
        show(&client, &["mptcp", "endpoint", "show"])
            .trim()
            .is_empty()
    );

    // The printed commands do what the daemon would have done: after running
    // them, a real pass finds nothing to do (and owns nothing).
    let batch: Vec<&str> = printed
        .iter()
        .map(|c| c.strip_prefix("ip ").unwrap())
        .collect();
    client.ip_batch(&batch).unwrap();
    client.run(|| {
        let mut paths = AutoPaths::new(Config {
            role: Role::Server,
            ..Config::default()
        })
        .unwrap();
        assert_eq!(paths.sync(&mut |_, _| {}).unwrap(), []);
        assert!(paths.owned().is_empty());
    });
}
