//! The delay line against the real kernel: how closely it holds the delay,
//! that its buffer sets the queue, and that it goes away with the test bed.

use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mptcp_testbed::transfer::udp_rtts;
use mptcp_testbed::{LinkSpec, Proto, Transfer, TwoLinks, require_privileges, two_links_with};

/// The delay line may add this much to a round trip (its two passes).
const TOLERANCE: Duration = Duration::from_millis(1);

/// The tests of this file measure time and CPU: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    require_privileges().expect("the test bed needs privileges");
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn bed(specs: &[&str]) -> TwoLinks {
    let specs: Vec<LinkSpec> = specs.iter().map(|s| s.parse().unwrap()).collect();
    two_links_with(&specs).unwrap()
}

/// The server's address on link i.
fn server_addr(link: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, link as u8, 2)
}

/// Sorted round-trip times of `probes` probes over link `link`, after one
/// that is left out: it waits for ARP (one more round trip).
fn rtts(bed: &TwoLinks, link: usize, probes: usize) -> Vec<Duration> {
    let mut rtts = udp_rtts(
        &bed.client,
        &bed.server,
        server_addr(link),
        probes + 1,
        Duration::from_millis(10),
    )
    .unwrap();
    rtts.remove(0);
    rtts.sort();
    rtts
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Checks that the median and 90th percentile of `rtts` lie within
/// [2 × delay, 2 × delay + 1 ms]; prints them with the extremes.
fn assert_rtts_hold(what: &str, rtts: &[Duration], one_way: Duration) {
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
    let (min, p50, p90, max) = (rtts[0], at(0.5), at(0.9), at(1.0));
    println!(
        "{what}: RTT min {:.3} p50 {:.3} p90 {:.3} max {:.3} ms (2 x delay {:.3} ms)",
        ms(min),
        ms(p50),
        ms(p90),
        ms(max),
        ms(2 * one_way)
    );
    assert!(
        min >= 2 * one_way,
        "{what}: an RTT of {min:?} < 2 x {one_way:?}"
    );
    for (name, value) in [("median", p50), ("90th percentile", p90)] {
        assert!(
            value <= 2 * one_way + TOLERANCE,
            "{what}: {name} RTT {value:?} > 2 x {one_way:?} + {TOLERANCE:?}"
        );
    }
}

#[test]
fn delay_line_holds_the_delay_at_idle() {
    let _serial = serial();
    let bed = bed(&["20:5ms", "20:75ms", "unlimited:0.5ms"]);
    for (link, one_way) in [(0, 5.0), (1, 75.0), (2, 0.5)] {
        let one_way = Duration::from_secs_f64(one_way / 1e3);
        let rtts = rtts(&bed, link, 40);
        assert_rtts_hold(&format!("link {link}, idle"), &rtts, one_way);
        let stats = bed.links[link].delay_line().unwrap().stats().unwrap();
        assert_eq!(stats.dropped, 0, "{stats:?}");
    }
}

#[test]
fn the_buffer_sets_the_queue_a_bulk_transfer_builds() {
    let _serial = serial();
    // 5 ms each way, 50 ms of queue (tbf's limit beyond its 4 ms burst).
    let bed = bed(&["20:5ms:50ms"]);
    // A loss-based congestion control fills the queue (BBR, which new
    // namespaces may inherit from the machine, keeps it short on purpose).
    // Reno: a namespace may only default to an allowed one, and cubic may
    // not be (net.ipv4.tcp_allowed_congestion_control).
    bed.client
        .sysctl("net.ipv4.tcp_congestion_control", "reno")
        .unwrap();
    let transfer = Transfer::start(
        &bed.client,
        &bed.server,
        bed.server_addr(),
        Proto::Tcp,
        Duration::from_secs(6),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // 60 probes take about 3 s: all while the transfer runs.
    let rtts = rtts(&bed, 0, 60);
    let report = transfer.wait().unwrap();
    assert!(report.intact(), "{report:?}");
    let (p50, max) = (rtts[rtts.len() / 2], rtts[rtts.len() - 1]);
    println!(
        "20:5ms:50ms under single TCP ({:.1} Mbit/s): RTT min {:.3} p50 {:.3} max {:.3} ms",
        report.mbit_per_s(),
        ms(rtts[0]),
        ms(p50),
        ms(max)
    );
    // The probes wait behind the queue one way: reno's sawtooth keeps it
    // between about half full and full, 50 ms (and the 4 ms burst) at most.
    assert!(
        p50 > Duration::from_millis(10 + 25),
        "p50 {p50:?}: the queue stays short"
    );
    assert!(
        (Duration::from_millis(10 + 40)..Duration::from_millis(10 + 50 + 4 + 3)).contains(&max),
        "max {max:?}: the queue does not end at its buffer of 50 ms"
    );
}

#[test]
fn dropping_the_bed_stops_the_delay_line_and_frees_the_hosts() {
    let _serial = serial();
    let bed = bed(&["20:5ms"]);
    let client = bed.client.clone();
    drop(bed);
    // The kernel frees a namespace's devices shortly after its last user.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let links = client.ip(&["-o", "link", "show"]).unwrap();
        if links.lines().count() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the link is still there: {links}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
