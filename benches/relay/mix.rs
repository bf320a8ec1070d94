//! `RELAY_BENCH=mix`: aggregation on mixes of links with different rates
//! and delays, side by side in one run: each WAN link alone (one TCP
//! connection), their sum, direct MPTCP between the router and the server,
//! the multiplexed relay chain, and shadowsocks-libev made MPTCP by the
//! preload library (as OpenMPTCProuter runs it, with mptcpize), each as a
//! download and an upload, [`RUNS`] times (`RELAY_BENCH_RUNS`; only some
//! mixes with `RELAY_BENCH_MIXES=0,2`, by their index in [`MIXES`]). Rates are
//! the receiver's after the first second (`mptcp_testbed::rates`). Then a
//! 1-byte echo during a bulk transfer, through the chain and over the
//! fastest link alone (routed TCP on WAN link 0, queueing behind its own
//! bulk transfer). The hosts run bbr, as `mptcp probe` recommends.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use mptcp_testbed::rates::{self, Way};
use mptcp_testbed::{LinkSpec, Proto, RelayPath};

use super::{
    echo_during_bulk, echo_line, redirect_rule, remove_redirect_rule, serve, start_chain,
    start_shadowsocks,
};

/// The mixes, WAN link 0 the fastest.
const MIXES: [&[&str]; 3] = [
    &["20:5ms", "20:75ms"],
    &["50:10ms", "10:40ms"],
    &["20", "5"],
];
/// Rounds of every measurement on each mix.
const RUNS: usize = 5;
/// Each transfer's length.
const TRANSFER: Duration = Duration::from_secs(6);
/// The share of the links' sum an aggregate should reach.
const GOAL: f64 = 0.9;
/// Servers of `rates` on the remote node (single TCP, direct MPTCP) and on
/// the destination (in the range the bench's redirect rule takes).
const SINGLE_PORT: u16 = 5011;
const DIRECT_PORT: u16 = 5012;
const DEST_PORT: u16 = 5006;
const SS_CIPHER: &str = "aes-256-gcm";

/// The ways a mix is crossed, in the order of the table's columns.
const PATHS: [&str; 4] = ["links' sum", "direct MPTCP", "relay chain", "shadowsocks"];

/// Download and upload, Mbit/s.
type Rates = [f64; 2];

/// Runs every mix and prints its runs and a summary.
pub(super) fn run() {
    let runs = std::env::var("RELAY_BENCH_RUNS").map_or(RUNS, |n| n.parse().unwrap_or(RUNS));
    // `RELAY_BENCH_MIXES=0,2`: only those mixes (by index in MIXES).
    let chosen: Option<Vec<usize>> = std::env::var("RELAY_BENCH_MIXES").ok().map(|list| {
        list.split(',')
            .filter_map(|i| i.trim().parse().ok())
            .collect()
    });
    for (i, mix) in MIXES.iter().enumerate() {
        if chosen.as_ref().is_some_and(|c| !c.contains(&i)) {
            continue;
        }
        let specs: Vec<LinkSpec> = mix.iter().map(|l| l.parse().expect("link spec")).collect();
        let rp = mptcp_testbed::relay_path_with(&specs).expect("test bed");
        measure_mix(&rp, &mix.join(" + "), runs);
    }
}

fn measure_mix(rp: &RelayPath, name: &str, runs: usize) {
    for host in [&rp.local, &rp.remote] {
        host.sysctl("net.ipv4.tcp_congestion_control", "bbr")
            .expect("bbr");
    }
    let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    serve(rp, super::LIMITED_TIME);
    rates::serve(&rp.dest, Proto::Tcp, any(DEST_PORT)).expect("dest server");
    rates::serve(&rp.remote, Proto::Tcp, any(SINGLE_PORT)).expect("single server");
    rates::serve(&rp.remote, Proto::Mptcp, any(DIRECT_PORT)).expect("direct server");
    eprintln!("{name}: the fastest link's echo beside its own bulk transfer");
    let fast_link_echo = [false, true].map(|up| echo_during_bulk(rp, up));
    redirect_rule(rp);
    let direct_at = SocketAddr::new(rp.remote_addr().into(), DIRECT_PORT);
    let dest_at = SocketAddr::new(rp.dest_addr().into(), DEST_PORT);
    let mut table: Vec<[Rates; 4]> = Vec::new();
    let mut chain_echo = None;
    for run in 0..runs {
        let started = std::time::Instant::now();
        let phase = |what: &str| {
            eprintln!(
                "{name}: run {}: {what} ({:.0?})",
                run + 1,
                started.elapsed()
            );
        };
        let alone = rates::links_alone(rp, SINGLE_PORT, TRANSFER).expect("links alone");
        let sum = alone.iter().fold([0.0; 2], |a, r| [a[0] + r.0, a[1] + r.1]);
        phase("links alone");
        let direct = both_ways(rp, false, direct_at);
        phase("direct MPTCP");
        let chain = {
            let _relays = start_chain(rp, true);
            if chain_echo.is_none() {
                chain_echo = Some([false, true].map(|up| echo_during_bulk(rp, up)));
            }
            both_ways(rp, true, dest_at)
        };
        phase("relay chain");
        let shadowsocks = {
            let _ss = start_shadowsocks(rp, SS_CIPHER);
            both_ways(rp, true, dest_at)
        };
        phase("shadowsocks");
        table.push([sum, direct, chain, shadowsocks]);
    }
    remove_redirect_rule(rp);
    print_mix(name, &table);
    let chain_echo = chain_echo.expect("at least one run");
    for (i, during) in ["a download", "an upload"].into_iter().enumerate() {
        println!(
            "{}",
            echo_line(
                &format!("during {during} (routed: the fastest link alone)"),
                fast_link_echo[i],
                chain_echo[i]
            )
        );
    }
}

/// Each run's rates, then every path's worst share of the sum and the runs
/// that reach [`GOAL`].
fn print_mix(name: &str, table: &[[Rates; 4]]) {
    println!(
        "\n{name}, {} runs of {} s each way (Mbit/s after the first second, down / up)",
        table.len(),
        TRANSFER.as_secs()
    );
    let header: String = PATHS.iter().map(|p| format!("{p:>26}")).collect();
    println!("  run{header}");
    for (run, row) in table.iter().enumerate() {
        let sum = row[0];
        let cells: String = row
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let cell = if i == 0 {
                    format!("{:.1} / {:.1}", r[0], r[1])
                } else {
                    format!(
                        "{:.1} / {:.1} ({:.2}/{:.2})",
                        r[0],
                        r[1],
                        r[0] / sum[0],
                        r[1] / sum[1]
                    )
                };
                format!("{cell:>26}")
            })
            .collect();
        println!("  {:>3}{cells}", run + 1);
    }
    for (i, path) in PATHS.iter().enumerate().skip(1) {
        let shares: Vec<Rates> = table
            .iter()
            .map(|row| [row[i][0] / row[0][0], row[i][1] / row[0][1]])
            .collect();
        let worst = |w: usize| shares.iter().map(|s| s[w]).fold(f64::INFINITY, f64::min);
        let reached = |w: usize| shares.iter().filter(|s| s[w] >= GOAL).count();
        println!(
            "  {path:<13} worst share of the sum {:.2} down, {:.2} up; runs >= {GOAL}: {} / {} down, \
             {} / {} up",
            worst(0),
            worst(1),
            reached(0),
            table.len(),
            reached(1),
            table.len()
        );
    }
}

/// A download and an upload to `to`: from the LAN host if `from_lan`
/// (through whatever takes the redirected connections), else MPTCP from
/// the router.
fn both_ways(rp: &RelayPath, from_lan: bool, to: SocketAddr) -> Rates {
    let (host, proto) = if from_lan {
        (&rp.lan, Proto::Tcp)
    } else {
        (&rp.local, Proto::Mptcp)
    };
    [Way::Down, Way::Up].map(|way| {
        host.run(|| rates::measure(proto, to, way, TRANSFER))
            .unwrap_or_else(|e| {
                eprintln!("  {proto:?} {way:?} to {to} failed: {e}");
                0.0
            })
    })
}
