//! Aggregation on mixes of links with different rates and delays, in the
//! test bed: each WAN link alone with one TCP connection, then direct MPTCP
//! between the router and the server, then the relay chain (`mptcp relay`
//! processes with their default settings, as operators run them), each
//! download and upload. Every transfer is checked byte for byte; the rates
//! are the receiver's after the first second (`mptcp_testbed::rates`: slow
//! start over a 150 ms round trip is not what is compared).
//!
//! The links alone and direct MPTCP run with the congestion control
//! `mptcp probe` recommends (bbr; direct MPTCP on 20 + 5 Mbit/s gave
//! 0.77-0.81 of the sum with reno, 0.82-1.0 with bbr); the chain runs on
//! hosts left at reno, since the relays choose for their own sessions. The
//! benchmark (`RELAY_BENCH=mix cargo bench --bench relay`) holds the goal of 0.9 of
//! the links' sum over repeated runs; these tests fail below [`SHARE`],
//! where a regression lands (a loss-based congestion control on the
//! sessions gives 0.55 on the first mix).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use mptcp_testbed::rates::{self, Way};
use mptcp_testbed::{Daemon, Host, LinkSpec, Proto, RelayPath};

const MPTCP: &str = env!("CARGO_BIN_EXE_mptcp");
/// Each transfer's length.
const TRANSFER: Duration = Duration::from_secs(4);
/// A direct MPTCP transfer's: a new connection's joins and the kernel's
/// scheduler take seconds to settle on 20 + 5 Mbit/s (4 s transfers gave
/// 0.76-0.85 of the sum down, 7 s 0.84-0.96), where the chain's sessions
/// are open before its transfers start.
const DIRECT_TRANSFER: Duration = Duration::from_secs(7);
/// The least share of the links' single-TCP sum an aggregate may reach.
const SHARE: f64 = 0.8;
/// The servers on the remote node (single TCP on each link, direct MPTCP)
/// and on the destination (through the chain).
const SINGLE_PORT: u16 = 5101;
const DIRECT_PORT: u16 = 5102;
const DEST_PORT: u16 = 5103;
const REMOTE_PORT: u16 = 1080;
const REDIRECT_PORT: u16 = 12345;
const PASSWORD_VAR: &str = "AGGREGATION_PASSWORD";

#[test]
fn twenty_at_5ms_beside_twenty_at_75ms_aggregate_both_ways() {
    aggregates(&["20:5ms", "20:75ms"]);
}

#[test]
fn fifty_at_10ms_beside_ten_at_40ms_aggregate_both_ways() {
    aggregates(&["50:10ms", "10:40ms"]);
}

#[test]
fn twenty_beside_five_without_delay_aggregate_both_ways() {
    aggregates(&["20", "5"]);
}

/// A stream window far smaller than the path holds (64 KiB against the
/// 750 KB of 40 Mbit/s at 150 ms) grows on BLOCKED frames when
/// `stream_window_max` allows: one connection through the chain carries
/// most of the links' sum (0.48 to 0.92 of the 36 Mbit/s the links carry
/// alone, measured by the first test), where a fixed 64 KiB window
/// carries 0.12 of it: this holds it to 0.4, over three times that.
#[test]
fn a_small_stream_window_grows_to_what_the_path_holds() {
    let mix = Mix::new(&["20:5ms", "20:75ms"]);
    let least = 0.4 * 36.0;
    let chain = mix.chain(
        "[engine]\nstream_window = 65536\nstream_window_max = 67108864\n",
        Rates {
            down: least,
            up: least,
        },
        None,
    );
    eprintln!("  relay chain {:6.1} down {:6.1} up", chain.down, chain.up);
    assert!(
        chain.down >= least && chain.up >= least,
        "a grown stream window carries less than {least:.1} Mbit/s: {chain:?}"
    );
}

/// A session that sends bulk data again after small frames only starts
/// bbr over where bbr took those frames for the long link's rate
/// (`outbound::restart_bbr_if_it_forgot`). An echo of one byte at a time
/// on the relays' first session, then a download on the same session:
/// every subflow of the remote relay (the sender) on the long link that
/// paced at under 4 segments per round trip when the download began is in
/// bbr's startup (pacing gain 2.89) soon after, and the download carries
/// most of what the next one on the warm session does (without the
/// restart the benchmark's first runs carried 0.34 to 0.58 of the links'
/// sum after such a session).
#[test]
fn a_session_that_carried_small_frames_only_finds_the_long_links_rate() {
    use std::io::{Read, Write};
    let mix = Mix::new(&["20:5ms", "20:75ms"]);
    mix.congestion_control("reno");
    // One worker: the echo and the downloads take its sessions (a second
    // worker would open one of its own for the first download).
    let _relays = Relays::start(&mix.rp, "[engine]\nworkers = 1\n");
    let echo_at = serve_echo(&mix.rp);
    // The echo's bytes take the long link: the local relay's subflow on
    // the fast one is a backup (MP_PRIO tells the remote relay) meanwhile.
    let endpoint = |args: String| {
        let status = mix
            .rp
            .local
            .command("ip")
            .args(["mptcp", "endpoint"])
            .args(args.split(' '))
            .status()
            .unwrap();
        assert!(status.success(), "ip mptcp endpoint {args}");
    };
    endpoint(format!("add {} dev wan0 id 9", mix.rp.local_wan_addr(0)));
    endpoint("change id 9 backup".to_owned());
    mix.rp.lan.run(|| {
        let mut s = std::net::TcpStream::connect(echo_at).unwrap();
        s.set_nodelay(true).unwrap();
        let until = std::time::Instant::now() + 2 * TRANSFER;
        while std::time::Instant::now() < until {
            s.write_all(b"x").unwrap();
            s.read_exact(&mut [0u8; 1]).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    endpoint("change id 9 nobackup".to_owned());
    let at = SocketAddr::new(mix.rp.dest_addr().into(), DEST_PORT);
    let download = || {
        // Past the echo's close: the download takes the first session.
        std::thread::sleep(Duration::from_millis(400));
        mix.rp
            .lan
            .run(|| rates::measure(Proto::Tcp, at, Way::Down, TRANSFER))
            .unwrap()
    };
    let forgot: Vec<String> = long_subflows(&mix.rp.remote)
        .into_iter()
        .filter(|s| s.forgot_rate)
        .map(|s| s.peer)
        .collect();
    let (after_echo, restarted) = std::thread::scope(|scope| {
        let after_echo = scope.spawn(download);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut restarted = Vec::new();
        while restarted.len() < forgot.len() && std::time::Instant::now() < deadline {
            for s in long_subflows(&mix.rp.remote) {
                if s.starting && forgot.contains(&s.peer) && !restarted.contains(&s.peer) {
                    restarted.push(s.peer);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (after_echo.join().unwrap(), restarted)
    });
    let warm = download();
    eprintln!(
        "  download after the echo {after_echo:.1}, then {warm:.1} Mbit/s; long subflows \
         that forgot their rate: {forgot:?}, started over: {restarted:?}"
    );
    assert_eq!(
        restarted.len(),
        forgot.len(),
        "bbr did not start over on each of {forgot:?}"
    );
    assert!(
        after_echo >= 0.8 * warm,
        "the download after the echo carried {after_echo:.1} Mbit/s, the next {warm:.1}"
    );
}

/// A 1-byte echo beside a download, then beside an upload, through the
/// chain on 20 Mbit/s at 5 ms + 20 at 75 ms keeps to the fast link: an echo
/// that crosses the long link one way takes 80 ms or more, and at most one
/// in a hundred may. The local relay's PINGs on the echo's session held the
/// fast link's subflow busy for a round trip (the PING's, then the PONG's
/// on the remote relay), and the kernel's scheduler sent the next small
/// frame on the idle long one: 8 or 9 echoes in about 105 crossed it
/// beside a download, one per PING.
#[test]
fn small_requests_beside_bulk_transfers_keep_to_the_fast_link() {
    let mix = Mix::new(&["20:5ms", "20:75ms"]);
    mix.congestion_control("reno");
    let _relays = Relays::start(&mix.rp, "");
    let echo_at = serve_echo(&mix.rp);
    for way in [Way::Down, Way::Up] {
        let times = echoes_beside(&mix, echo_at, way);
        // The first echo also opens the stream (and its session may have a
        // PING in flight: it is idle until then).
        let long: Vec<_> = times
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, t)| **t >= Duration::from_millis(80))
            .collect();
        assert!(
            long.len() * 100 <= times.len(),
            "{way:?}: {} of {} echoes crossed the long link (the first not counted): {long:?}",
            long.len(),
            times.len()
        );
    }
}

/// 1-byte round trips through the chain for [`TRANSFER`], from 2 s into a
/// bulk transfer of twice as long (`way` from the LAN's side).
fn echoes_beside(mix: &Mix, echo_at: SocketAddr, way: Way) -> Vec<Duration> {
    let at = SocketAddr::new(mix.rp.dest_addr().into(), DEST_PORT);
    let times = std::thread::scope(|scope| {
        let bulk = scope.spawn(|| {
            mix.rp
                .lan
                .run(|| rates::measure(Proto::Tcp, at, way, 2 * TRANSFER))
                .unwrap()
        });
        std::thread::sleep(Duration::from_secs(2));
        let echo = mix.rp.lan.run(|| std::net::TcpStream::connect(echo_at));
        let times = echo_for(echo.unwrap(), TRANSFER);
        let rate = bulk.join().unwrap();
        eprintln!("  {way:?} beside the echo: {rate:.1} Mbit/s");
        times
    });
    let mut sorted = times.clone();
    sorted.sort();
    eprintln!(
        "  {} echoes beside {way:?}: p50 {:?}, p99 {:?}, worst {:?}",
        times.len(),
        sorted[sorted.len() / 2],
        sorted[sorted.len() * 99 / 100],
        sorted[sorted.len() - 1],
    );
    times
}

/// 1-byte round trips on `s` for `length`, 10 ms apart.
fn echo_for(mut s: std::net::TcpStream, length: Duration) -> Vec<Duration> {
    use std::io::{Read, Write};
    s.set_nodelay(true).unwrap();
    let until = std::time::Instant::now() + length;
    std::iter::from_fn(|| {
        (std::time::Instant::now() < until).then(|| {
            let started = std::time::Instant::now();
            s.write_all(b"x").unwrap();
            s.read_exact(&mut [0u8; 1]).unwrap();
            let took = started.elapsed();
            std::thread::sleep(Duration::from_millis(10));
            took
        })
    })
    .collect()
}

/// A new connection does not go to a session whose upload waits for room
/// to send: during an upload through the chain on 20 + 5 Mbit/s, both
/// links slow to 1 Mbit/s for 2.5 s, so that the local relay's session
/// cannot take the upload's frames and sends none, and a 1-byte echo opened
/// then does not queue behind the upload once the links are back: its
/// median stays within 30 ms (5-6 ms; the fast link alone beside its own
/// transfer 7). A session counted as busy only for 200 ms after a bulk
/// frame went out; the echo then took the upload's session and waited
/// behind the 150-480 kB in its subflows' send queues.
#[test]
fn a_new_connection_does_not_queue_behind_an_upload_that_waits_for_room() {
    let mix = Mix::new(&["20", "5"]);
    mix.congestion_control("reno");
    let echo_at = serve_echo(&mix.rp);
    // One worker: the upload and the echo share its sessions.
    let _relays = Relays::start(&mix.rp, "[engine]\nworkers = 1\n");
    let rates_to = |slow: bool| {
        for (link, spec) in mix.rp.wan.iter().zip(&mix.specs) {
            link.set_rate(if slow { Some(1) } else { spec.rate_mbit })
                .unwrap();
        }
    };
    let at = SocketAddr::new(mix.rp.dest_addr().into(), DEST_PORT);
    let times = std::thread::scope(|scope| {
        let upload = scope.spawn(|| {
            mix.rp
                .lan
                .run(|| rates::measure(Proto::Tcp, at, Way::Up, 2 * TRANSFER))
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(1500));
        rates_to(true);
        std::thread::sleep(Duration::from_millis(2500));
        let echo = mix.rp.lan.run(|| std::net::TcpStream::connect(echo_at));
        std::thread::sleep(Duration::from_millis(300));
        rates_to(false);
        let times = echo_for(echo.unwrap(), Duration::from_secs(3));
        let rate = upload.join().unwrap();
        eprintln!("  upload beside the echo: {rate:.1} Mbit/s");
        times
    });
    let mut sorted = times.clone();
    sorted.sort();
    let p50 = sorted[sorted.len() / 2];
    eprintln!(
        "  {} echoes: p50 {p50:?}, worst {:?}",
        sorted.len(),
        sorted[sorted.len() - 1]
    );
    assert!(
        p50 < Duration::from_millis(30),
        "the echo beside the upload took {p50:?} (median of {})",
        sorted.len()
    );
}

/// The port of the test's echo server on the destination.
const ECHO_PORT: u16 = 5104;

/// Starts an echo server on the destination; returns its address.
fn serve_echo(rp: &RelayPath) -> SocketAddr {
    let echo = rp
        .dest
        .run(|| std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, ECHO_PORT))))
        .unwrap();
    std::thread::spawn(move || {
        for mut s in echo.incoming().flatten() {
            let _ = std::io::copy(&mut s.try_clone().unwrap(), &mut s);
        }
    });
    SocketAddr::new(rp.dest_addr().into(), ECHO_PORT)
}

/// A subflow of the relays' sessions on a long link (a least round trip
/// of 20 ms or more), seen from `host`'s side.
#[derive(Debug)]
struct LongSubflow {
    /// The other relay's address and port.
    peer: String,
    /// bbr is in its startup (pacing gain 2.89).
    starting: bool,
    /// It has sent data and paces at under 4 segments per round trip.
    forgot_rate: bool,
}

/// The subflows on long links of the sessions in `host` (the remote
/// relay's side).
fn long_subflows(host: &Host) -> Vec<LongSubflow> {
    let text = established_sockets(host, &format!("sport = :{REMOTE_PORT}"));
    let lines: Vec<&str> = text.lines().collect();
    // A socket's addresses on one line (`0 0 LOCAL PEER`), its details on
    // the next: `... mss:1448 ... bytes_acked:N ... bbr:(bw:…,mrtt:…,
    // pacing_gain:2.88672,cwnd_gain:2.88672) ... pacing_rate 94.8kbps ...
    // minrtt:150.1 ...`.
    let mut subflows = Vec::new();
    for pair in lines.windows(2) {
        let (addresses, details) = (pair[0], pair[1]);
        let Some(peer) = addresses.split_whitespace().nth(3) else {
            continue;
        };
        let words: Vec<&str> = details.split_whitespace().collect();
        let field = |name: &str| words.iter().find_map(|w| w.strip_prefix(name));
        let number = |name: &str| field(name).and_then(|n| n.parse::<f64>().ok());
        let (Some(bbr), Some(rtt_ms), Some(mss)) =
            (field("bbr:("), number("minrtt:"), number("mss:"))
        else {
            continue;
        };
        if rtt_ms < mptcp_core::relay::LONG_ROUND_TRIP.as_secs_f64() * 1000.0 {
            continue;
        }
        let pacing = words
            .iter()
            .position(|w| *w == "pacing_rate")
            .and_then(|i| words.get(i + 1))
            .and_then(|rate| bits_per_second(rate))
            .unwrap_or(f64::INFINITY);
        let sent = number("bytes_acked:").unwrap_or(0.0) > 1.0;
        subflows.push(LongSubflow {
            peer: peer.to_owned(),
            starting: bbr.contains("pacing_gain:2.88"),
            forgot_rate: sent && pacing / 8.0 * rtt_ms / 1000.0 < 4.0 * mss,
        });
    }
    subflows
}

/// `ss -tinmH state established FILTER` in `host`: each TCP socket's
/// addresses on a line, its details (`-i`, `-m`) on the next.
fn established_sockets(host: &Host, filter: &str) -> String {
    let out = host
        .command("ss")
        .args(["-tinmH", "state", "established", filter])
        .output()
        .unwrap();
    assert!(out.status.success(), "ss: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ss`'s rates: `94.8kbps`, `19.7Mbps`, `1.2Gbps`, `800bps`.
fn bits_per_second(rate: &str) -> Option<f64> {
    let number = rate.strip_suffix("bps")?;
    let (digits, scale) = match number.as_bytes().last()? {
        b'k' => (&number[..number.len() - 1], 1e3),
        b'M' => (&number[..number.len() - 1], 1e6),
        b'G' => (&number[..number.len() - 1], 1e9),
        _ => (number, 1.0),
    };
    digits.parse::<f64>().ok().map(|n| n * scale)
}

/// Download and upload rates, Mbit/s.
#[derive(Clone, Copy, Debug, Default)]
struct Rates {
    down: f64,
    up: f64,
}

impl Rates {
    /// Both rates times `factor`.
    fn times(self, factor: f64) -> Rates {
        Rates {
            down: self.down * factor,
            up: self.up * factor,
        }
    }
}

impl std::ops::Add for Rates {
    type Output = Rates;
    fn add(self, other: Rates) -> Rates {
        Rates {
            down: self.down + other.down,
            up: self.up + other.up,
        }
    }
}

/// One mix at a time: the delay lines forward every frame in user space,
/// and three mixes at once on two cores took a fifth off single links'
/// rates.
static ONE_MIX_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A test bed whose WAN links are a mix, with the rate servers running:
/// single TCP and direct MPTCP on the remote node, TCP on the destination.
struct Mix {
    rp: RelayPath,
    specs: Vec<LinkSpec>,
    _alone: MutexGuard<'static, ()>,
}

impl Mix {
    /// The test bed on `links` (see [`LinkSpec`]), once no other mix runs.
    fn new(links: &[&str]) -> Mix {
        mptcp_testbed::require_privileges().unwrap();
        let alone = ONE_MIX_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let specs: Vec<LinkSpec> = links.iter().map(|l| l.parse().unwrap()).collect();
        let rp = mptcp_testbed::relay_path_with(&specs).unwrap();
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        rates::serve(&rp.remote, Proto::Tcp, any(SINGLE_PORT)).unwrap();
        rates::serve(&rp.remote, Proto::Mptcp, any(DIRECT_PORT)).unwrap();
        rates::serve(&rp.dest, Proto::Tcp, any(DEST_PORT)).unwrap();
        Mix {
            rp,
            specs,
            _alone: alone,
        }
    }

    /// Sets the congestion control of both ends' new TCP sockets.
    fn congestion_control(&self, name: &str) {
        for host in [&self.rp.local, &self.rp.remote] {
            host.sysctl("net.ipv4.tcp_congestion_control", name)
                .unwrap();
        }
    }

    /// Each link alone with one TCP connection, under bbr (what `mptcp
    /// probe` recommends).
    fn links_alone(&self) -> Vec<Rates> {
        self.congestion_control("bbr");
        rates::links_alone(&self.rp, SINGLE_PORT, TRANSFER)
            .unwrap()
            .into_iter()
            .map(|(down, up)| Rates { down, up })
            .collect()
    }

    /// Direct MPTCP from the router to the server, under bbr.
    fn direct(&self, least: Rates) -> Rates {
        self.congestion_control("bbr");
        let at = SocketAddr::new(self.rp.remote_addr().into(), DIRECT_PORT);
        both_ways(&self.rp.local, Proto::Mptcp, at, least, DIRECT_TRANSFER)
    }

    /// From the LAN through the relays (with `relay_config`, TOML) to the
    /// destination. The relays choose their sessions' congestion control
    /// themselves: the hosts are at the kernel's own default (reno).
    ///
    /// `expected`: the congestion control every subflow of the relays'
    /// sessions that sent data must run (within 5 s of the last transfer:
    /// a session that just opened keeps bbr for 3 s, and `auto` looks every
    /// second, on each relay at its own time), or `None`.
    fn chain(&self, relay_config: &str, least: Rates, expected: Option<&str>) -> Rates {
        self.congestion_control("reno");
        let _relays = Relays::start(&self.rp, relay_config);
        let at = SocketAddr::new(self.rp.dest_addr().into(), DEST_PORT);
        let rates = both_ways(&self.rp.lan, Proto::Tcp, at, least, TRANSFER);
        let Some(expected) = expected else {
            return rates;
        };
        self.assert_send_buffers_fit();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let controls = [
                congestion_controls(&self.rp.local, &format!("dport = :{REMOTE_PORT}")),
                congestion_controls(&self.rp.remote, &format!("sport = :{REMOTE_PORT}")),
            ];
            if controls.iter().all(|by_connection| {
                !by_connection.is_empty() && by_connection.values().flatten().all(|c| c == expected)
            }) {
                return rates;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the sessions' subflows run {controls:?} (local, remote; by the peer's \
                 MPTCP token), not {expected}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// On links whose round trips differ (the longest at least
    /// `LONG_ROUND_TRIP` and twice the shortest), the session that carried
    /// the download (on the remote relay) and the one that carried the
    /// upload (on the local relay) hold one and a half times the links'
    /// data of the longest round trip in each subflow's send buffer: the
    /// short link's subflow must queue as long as the long one's takes to
    /// deliver, which its own autotuning does not give it on the first mix
    /// (540 kB at 20 Mbit/s and a 10 ms round trip, against 1.1 MB asked
    /// for here; the relay sets about 3 MB).
    fn assert_send_buffers_fit(&self) {
        let round_trips: Vec<Duration> = self.specs.iter().map(|l| 2 * l.delay).collect();
        let (Some(&shortest), Some(&longest)) =
            (round_trips.iter().min(), round_trips.iter().max())
        else {
            return;
        };
        if longest < mptcp_core::relay::LONG_ROUND_TRIP || longest < 2 * shortest {
            return;
        }
        let rates: u64 = self
            .specs
            .iter()
            .filter_map(|l| l.rate_mbit)
            .map(u64::from)
            .sum();
        let least = 1.5 * rates as f64 * 1e6 / 8.0 * longest.as_secs_f64();
        for (host, filter, way) in [
            (
                &self.rp.remote,
                format!("sport = :{REMOTE_PORT}"),
                "download",
            ),
            (&self.rp.local, format!("dport = :{REMOTE_PORT}"), "upload"),
        ] {
            let buffers = bulk_send_buffers(host, &filter);
            assert!(
                buffers.values().any(|&b| b as f64 >= least),
                "no session that carried the {way} holds {least:.0} bytes in each subflow's \
                 send buffer (least by connection: {buffers:?})"
            );
        }
    }
}

/// The congestion control of each established MPTCP subflow in `host` that
/// `filter` (an `ss` filter) selects and that has sent data (a join that
/// only received has no round trip of its own for `auto` to judge, and its
/// sender's algorithm does not act on it), by connection (the peer's token).
fn congestion_controls(host: &Host, filter: &str) -> BTreeMap<String, Vec<String>> {
    let mut by_connection: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for sf in subflows_of(host, filter)
        .into_iter()
        .filter(|sf| sf.acked > 1)
    {
        by_connection
            .entry(sf.token)
            .or_default()
            .push(sf.congestion_control);
    }
    by_connection
}

/// The least send buffer among the subflows of each MPTCP connection in
/// `host` that `filter` selects which carried a bulk transfer (a MiB or
/// more acknowledged), by connection (the peer's token).
fn bulk_send_buffers(host: &Host, filter: &str) -> BTreeMap<String, u64> {
    let mut by_connection: BTreeMap<String, u64> = BTreeMap::new();
    for sf in subflows_of(host, filter)
        .into_iter()
        .filter(|sf| sf.acked >= 1 << 20)
    {
        let least = by_connection.entry(sf.token).or_insert(u64::MAX);
        *least = (*least).min(sf.send_buffer);
    }
    by_connection
}

/// An established MPTCP subflow, from `ss -tinm`.
struct SubflowDetails {
    /// The peer's MPTCP token: the subflows of a connection share it.
    token: String,
    congestion_control: String,
    /// Bytes acknowledged.
    acked: u64,
    /// The socket's send buffer (`skmem` `tb`), bytes.
    send_buffer: u64,
}

fn subflows_of(host: &Host, filter: &str) -> Vec<SubflowDetails> {
    // `ss -i` prints a socket's details on a line of their own:
    // `skmem:(r0,rb…,t0,tb69120,…)`, the algorithm just before the window
    // scales, and at the end a subflow's MPTCP details,
    // `token:LOCAL(id:N)/PEER(id:M)`.
    let text = established_sockets(host, filter);
    let mut subflows = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words.iter().position(|w| w.starts_with("wscale:")) else {
            continue;
        };
        let acked = words
            .iter()
            .find_map(|w| w.strip_prefix("bytes_acked:"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let send_buffer = words
            .iter()
            .find_map(|w| w.strip_prefix("skmem:("))
            .and_then(|m| m.split(',').find_map(|f| f.strip_prefix("tb")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let token = words
            .iter()
            .find_map(|w| w.strip_prefix("token:"))
            .and_then(|t| t.split('/').nth(1))
            .and_then(|peer| peer.split('(').next());
        if let Some(token) = token.filter(|_| at > 0) {
            subflows.push(SubflowDetails {
                token: token.to_owned(),
                congestion_control: words[at - 1].to_owned(),
                acked,
                send_buffer,
            });
        }
    }
    subflows
}

/// Measures the links alone, direct MPTCP and the chain (default relay
/// settings) on `links`, prints them and asserts that both aggregates
/// reach [`SHARE`] of the sum both ways.
fn aggregates(links: &[&str]) {
    let mix = Mix::new(links);
    let each_alone = mix.links_alone();
    let sum = each_alone.iter().fold(Rates::default(), |a, &b| a + b);
    let direct = mix.direct(sum.times(SHARE));
    // `congestion_control = "auto"`: bbr where a link's round trip is
    // long, the host's reno where all are short.
    let long = mix
        .specs
        .iter()
        .any(|l| 2 * l.delay >= mptcp_core::relay::LONG_ROUND_TRIP);
    let expected = if long { "bbr" } else { "reno" };
    let chain = mix.chain("", sum.times(SHARE), Some(expected));

    let mut table = format!("links {}:\n", links.join(" + "));
    for (i, r) in each_alone.iter().enumerate() {
        table += &format!("  link {i} alone   {:6.1} down {:6.1} up\n", r.down, r.up);
    }
    table += &format!("  sum            {:6.1} down {:6.1} up\n", sum.down, sum.up);
    for (name, r) in [("direct MPTCP", direct), ("relay chain", chain)] {
        table += &format!(
            "  {name:<14} {:6.1} down {:6.1} up ({:.2} / {:.2} of the sum)\n",
            r.down,
            r.up,
            r.down / sum.down,
            r.up / sum.up
        );
    }
    eprint!("{table}");
    for (name, r) in [("direct MPTCP", direct), ("the relay chain", chain)] {
        assert!(
            r.down >= SHARE * sum.down && r.up >= SHARE * sum.up,
            "{name} carries less than {SHARE} of the links' sum:\n{table}"
        );
    }
}

/// A download, then an upload, each of `length`, from `host` to a served
/// `to`. A way that carries less than `least` gets one more try, the
/// better counting: on the first mix, with bbr, single transfers range
/// from 0.82 to 0.98 of the sum (direct MPTCP as through the chain); a
/// loss-based algorithm stays near 0.55 every time, which this still
/// fails.
fn both_ways(host: &Host, proto: Proto, to: SocketAddr, least: Rates, length: Duration) -> Rates {
    let rate = |way, least: f64| {
        let once = || {
            host.run(|| rates::measure(proto, to, way, length))
                .unwrap_or_else(|e| panic!("{proto:?} transfer to {to} ({way:?}): {e}"))
        };
        let first = once();
        if first >= least {
            return first;
        }
        let second = once();
        eprintln!("  {proto:?} {way:?}: {first:.1} Mbit/s, then {second:.1} on a second try");
        first.max(second)
    };
    Rates {
        down: rate(Way::Down, least.down),
        up: rate(Way::Up, least.up),
    }
}

/// Both relays as `mptcp relay` processes with the settings of
/// `relay_config` (TOML, or empty for the defaults), and the LAN's TCP to
/// the destination's port redirected into the local one.
struct Relays {
    _remote: Daemon,
    _local: Daemon,
    /// The relays' configuration, logs and state files, removed on drop.
    dir: std::path::PathBuf,
}

impl Drop for Relays {
    fn drop(&mut self) {
        // A failed test shows what the relays said.
        if std::thread::panicking() {
            for role in ["local", "remote"] {
                let log = std::fs::read_to_string(self.dir.join(format!("{role}.log")));
                eprintln!("--- {role} relay's log:\n{}", log.unwrap_or_default());
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Relays {
    fn start(rp: &RelayPath, relay_config: &str) -> Relays {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("aggregation-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("relay.toml");
        std::fs::write(&config, relay_config).unwrap();
        let config = config.to_str().unwrap();
        let remote_at = format!("{}:{REMOTE_PORT}", rp.remote_addr());
        let redirect = format!("0.0.0.0:{REDIRECT_PORT}");
        let remote = relay(
            &rp.remote,
            &dir,
            &["remote", "--config", config, "--listen", &remote_at],
        );
        rp.remote.wait_listening(REMOTE_PORT).unwrap();
        let local = relay(
            &rp.local,
            &dir,
            &[
                "local",
                "--config",
                config,
                "--redirect",
                &redirect,
                "--remote",
                &remote_at,
            ],
        );
        rp.local.wait_listening(REDIRECT_PORT).unwrap();
        rp.local
            .nft(&format!(
                "table ip aggregation {{\n chain prerouting {{\n  type nat hook prerouting priority dstnat;\n  \
                 iifname \"lan0\" tcp dport {{ {DEST_PORT}, {ECHO_PORT} }} redirect to :{REDIRECT_PORT}\n                  }}\n}}\n"
            ))
            .unwrap();
        Relays {
            _remote: remote,
            _local: local,
            dir,
        }
    }
}

/// `mptcp relay ROLE ARGS` in `host`, with the test's credentials, its
/// state files in `dir` and its log in `dir/ROLE.log`.
fn relay(host: &Host, dir: &std::path::Path, args: &[&str]) -> Daemon {
    let log = dir.join(format!("{}.log", args[0]));
    let mut cmd = host.command_logging_to(MPTCP, &log);
    cmd.arg("relay")
        .args(args)
        .args(["--user", "alice", "--password-env", PASSWORD_VAR])
        .env(PASSWORD_VAR, "correct horse")
        .env("NO_COLOR", "1")
        // What a failed test shows: `auto`'s choices among the rest.
        .env("RUST_LOG", "info,mptcp_core::relay::engine::sessions=debug")
        .env("MPTCP_LINKS_FILE", dir.join("links"))
        .env("MPTCP_REMOTES_FILE", dir.join("remotes"));
    Daemon::spawn(&mut cmd).unwrap()
}
