//! Link health against the real kernel: a client with two 20 Mbit/s
//! uplinks to a server, automatic paths probing both, and a long MPTCP
//! transfer while one link fails silently (every packet dropped both ways,
//! carrier up), loses its carrier, flaps, or is a backup. Every byte is
//! checked; the outage tests also run the same timeline on a second bed
//! without probes (what the kernel does alone) and print both side by side.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use mptcp_core::{
    diag,
    paths::{AutoPaths, Config, HealthConfig, LinkEvent, LinkRole, LinkState, LinkStatus},
};
use mptcp_testbed::{Host, Link, Proto, Transfer, TransferReport};

/// Rate of each link, Mbit/s.
const RATE: u32 = 20;

/// How often the tests sample the transfer.
const TICK: Duration = Duration::from_millis(100);

/// A client and a server joined by uplinks `eth0` and `eth1`; MPTCP is
/// left to automatic paths.
struct Bed {
    client: Host,
    server: Host,
    links: Vec<Link>,
}

fn bed() -> Bed {
    mptcp_testbed::require_privileges().expect("the link health tests need root");
    let client = Host::new("client").unwrap();
    let server = Host::new("server").unwrap();
    // Loss-based Reno keeps the throughput comparisons steady (see
    // tests/paths.rs).
    client
        .sysctl("net.ipv4.tcp_congestion_control", "reno")
        .unwrap();
    let links = (0..2)
        .map(|i| Link::uplink(&client, &server, i, Some(RATE)).unwrap())
        .collect();
    Bed {
        client,
        server,
        links,
    }
}

/// The server's address on link 0: the transfer's and the probes' target.
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Fast probes for short tests: a closed port of the server answers with
/// a reset, which proves the path.
fn health() -> HealthConfig {
    HealthConfig {
        targets: vec![SocketAddr::new(IpAddr::V4(SERVER), 9)],
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(200),
        down_after: 3,
        up_after: 3,
        verify_after: Duration::from_secs(1),
        backoff: Duration::from_millis(500),
        max_retries: 4,
    }
}

/// Automatic paths running in the client, its link events timestamped.
struct Daemon {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<mptcp_core::pm::Result<()>>,
    events: Arc<Mutex<Vec<(Instant, LinkEvent)>>>,
    links: Arc<Mutex<Vec<LinkStatus>>>,
    failures: Arc<Mutex<Vec<String>>>,
    /// Every action done, as its `ip` command.
    actions: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Daemon {
    fn start(client: &Host, config: Config) -> Daemon {
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let links = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let actions = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, events, links, failures, actions) = (
                Arc::clone(&stop),
                Arc::clone(&events),
                Arc::clone(&links),
                Arc::clone(&failures),
                Arc::clone(&actions),
            );
            client.spawn(move || {
                let mut paths = AutoPaths::new(config)?;
                paths.run_observed(
                    &stop,
                    |action, error| match error {
                        Some(e) => failures.lock().unwrap().push(format!("{action}: {e}")),
                        None => actions
                            .lock()
                            .unwrap()
                            .push((Instant::now(), action.to_string())),
                    },
                    |event, now| {
                        if let Some(event) = event {
                            events.lock().unwrap().push((Instant::now(), event.clone()));
                        }
                        *links.lock().unwrap() = now.to_vec();
                    },
                )
            })
        };
        Daemon {
            stop,
            thread,
            events,
            links,
            failures,
            actions,
        }
    }

    /// The actions done at or after `after` whose command starts with `prefix`.
    fn actions_since(&self, after: Instant, prefix: &str) -> Vec<Instant> {
        self.actions
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, a)| *at >= after && a.starts_with(prefix))
            .map(|(at, _)| *at)
            .collect()
    }

    /// When `ifname` first went to `to` at or after `after`.
    fn changed_at(&self, ifname: &str, to: LinkState, after: Instant) -> Option<Instant> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .find(|(at, e)| *at >= after && e.ifname == ifname && e.to == to)
            .map(|(at, _)| *at)
    }

    fn events(&self) -> String {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .map(|(_, e)| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops it and checks that it ended well and removed all it made.
    fn stop(self, client: &Host) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap().unwrap();
        let failures = self.failures.lock().unwrap();
        assert!(failures.is_empty(), "{failures:#?}");
        assert_eq!(endpoints(client), "", "endpoints left behind");
        let rules = client.ip(&["rule", "show"]).unwrap();
        assert!(!rules.contains("lookup 70"), "rules left behind:\n{rules}");
        let routes = client.ip(&["route", "show", "table", "all"]).unwrap();
        assert!(
            !routes.contains("table 70"),
            "routes left behind:\n{routes}"
        );
    }
}

fn endpoints(host: &Host) -> String {
    host.ip(&["mptcp", "endpoint", "show"])
        .unwrap()
        .trim()
        .to_owned()
}

/// Polls `probe` every 20 ms until it holds, for at most `limit`.
fn wait_until(what: &str, limit: Duration, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn both_endpoints(client: &Host) -> bool {
    let shown = endpoints(client);
    shown.contains("198.18.0.1 ") && shown.contains("198.18.1.1 ")
}

/// One sample of a run.
struct Point {
    at: Instant,
    /// Bytes the server received.
    received: u64,
    /// Bytes the client sent on each link.
    link_tx: [u64; 2],
    /// Idle connections with an established subflow on link 1.
    idle_on_link1: usize,
}

/// A run sampled every [`TICK`].
struct Series {
    points: Vec<Point>,
}

impl Series {
    fn record(
        transfer: &Transfer,
        bed: &Bed,
        idle: Option<&IdleConnections>,
        until: Instant,
    ) -> Series {
        let mut points = Vec::new();
        while Instant::now() < until {
            let received = transfer.meter().sample().bytes;
            let link_tx = [0, 1].map(|i| bed.links[i].bytes().map_or(0, |(a_to_b, _)| a_to_b));
            let idle_on_link1 = idle.map_or(0, |idle| idle.on_link1(&bed.client));
            points.push(Point {
                at: Instant::now(),
                received,
                link_tx,
                idle_on_link1,
            });
            thread::sleep(TICK);
        }
        Series { points }
    }

    /// Mbit/s received in the window of `len` that ends at `end`, with
    /// `bytes` choosing the counter.
    fn rate(&self, end: Instant, len: Duration, bytes: impl Fn(&Point) -> u64) -> f64 {
        let at = |t: Instant| self.points.iter().rev().find(|p| p.at <= t);
        match (at(end - len), at(end)) {
            (Some(a), Some(b)) if b.at > a.at => {
                (bytes(b) - bytes(a)) as f64 * 8.0 / 1e6 / (b.at - a.at).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// The first instant in `[from, to]` at which the rate of the last
    /// second reached `mbit`.
    fn first_reaching(&self, mbit: f64, from: Instant, to: Instant) -> Option<Instant> {
        self.points
            .iter()
            .map(|p| p.at)
            .filter(|t| *t >= from && *t <= to)
            .find(|t| self.rate(*t, Duration::from_secs(1), |p| p.received) >= mbit)
    }

    /// When link 1 carried data again after `return_at` (over 2 Mbit/s in
    /// 200 ms): the subflow is back on the running connection.
    fn link1_back(&self, return_at: Instant) -> Option<Instant> {
        self.points
            .iter()
            .map(|p| p.at)
            .filter(|t| *t > return_at + Duration::from_millis(200))
            .find(|t| self.rate(*t, Duration::from_millis(200), |p| p.link_tx[1]) > 2.0)
    }

    /// Throughput per second across the run, for the log.
    fn timeline(&self, start: Instant) -> String {
        let mut out = String::new();
        let mut t = start + Duration::from_secs(1);
        while self.points.last().is_some_and(|p| p.at >= t) {
            out.push_str(&format!(
                "{:.0} ",
                self.rate(t, Duration::from_secs(1), |p| p.received)
            ));
            t += Duration::from_secs(1);
        }
        out
    }
}

/// What breaks link 1.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Every packet dropped both ways, carrier up.
    Silent,
    /// Both ends down.
    Carrier,
}

impl Fault {
    fn begin(self, link: &Link) {
        match self {
            Fault::Silent => link.blackhole().unwrap(),
            Fault::Carrier => link.down().unwrap(),
        }
    }

    fn end(self, link: &Link) {
        match self {
            Fault::Silent => link.restore().unwrap(),
            Fault::Carrier => link.up().unwrap(),
        }
    }
}

/// One outage run: the transfer, the series, when the fault began and
/// ended, and when link 1 carried data again.
struct Outage {
    report: TransferReport,
    series: Series,
    start: Instant,
    fault_at: Instant,
    return_at: Instant,
    link1_back: Option<Instant>,
    /// When every idle connection had its subflow on link 1 again.
    idle_back: Option<Instant>,
    /// Whether an idle connection lost that subflow at all.
    idle_lost: bool,
    daemon: Daemon,
    bed: Bed,
}

const WARMUP: Duration = Duration::from_secs(3);
const OUTAGE: Duration = Duration::from_secs(10);
const AFTER: Duration = Duration::from_secs(7);
/// Idle connections beside the transfer in an outage run.
const IDLE: usize = 3;

/// MPTCP connections from the client to the server that carry one byte
/// (the path manager opens subflows only once a connection is fully
/// established), then stay idle: the relay's spare sessions, a quiet SSH
/// login.
struct IdleConnections {
    port: u16,
    _pairs: Vec<(std::net::TcpStream, std::net::TcpStream)>,
    /// Kept open: the server takes joins (new subflows) through it.
    _listener: std::net::TcpListener,
}

impl IdleConnections {
    fn open(bed: &Bed, n: usize) -> IdleConnections {
        let bind = SocketAddr::new(IpAddr::V4(SERVER), 0);
        let listener = bed
            .server
            .run(|| mptcp_testbed::transfer::listen(Proto::Mptcp, bind))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = SocketAddr::new(IpAddr::V4(SERVER), port);
        let pairs = (0..n)
            .map(|_| {
                let client = bed
                    .client
                    .run(|| mptcp_testbed::transfer::connect(Proto::Mptcp, target))
                    .unwrap();
                let (mut server, _) = listener.accept().unwrap();
                (&client).write_all(b"x").unwrap();
                server.read_exact(&mut [0u8]).unwrap();
                (client, server)
            })
            .collect();
        let idle = IdleConnections {
            port,
            _pairs: pairs,
            _listener: listener,
        };
        wait_until(
            "the idle connections have their subflows",
            Duration::from_secs(5),
            || idle.on_link1(&bed.client) == n,
        );
        idle
    }

    /// How many have an established subflow from the client's link 1.
    fn on_link1(&self, client: &Host) -> usize {
        let link1 = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
        client
            .run(diag::connections)
            .unwrap()
            .iter()
            .filter(|c| c.remote.port() == self.port)
            .filter(|c| {
                c.subflows
                    .iter()
                    .any(|sf| sf.local.ip() == link1 && sf.state == 1)
            })
            .count()
    }
}

/// Link 1 fails with `fault` for [`OUTAGE`] in the middle of a transfer,
/// with automatic paths probing (`health`) or following carriers only.
fn outage(fault: Fault, health: Option<HealthConfig>) -> Outage {
    let bed = bed();
    let daemon = Daemon::start(
        &bed.client,
        Config {
            health,
            ..Config::default()
        },
    );
    wait_until("both endpoints exist", Duration::from_secs(10), || {
        both_endpoints(&bed.client)
    });
    let idle = IdleConnections::open(&bed, IDLE);
    let transfer = Transfer::start(
        &bed.client,
        &bed.server,
        SERVER,
        Proto::Mptcp,
        WARMUP + OUTAGE + AFTER,
    )
    .unwrap();
    let start = Instant::now();
    let fault_at = start + WARMUP;
    let return_at = fault_at + OUTAGE;
    let series = thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            Series::record(
                &transfer,
                &bed,
                Some(&idle),
                start + WARMUP + OUTAGE + AFTER,
            )
        });
        thread::sleep(fault_at.saturating_duration_since(Instant::now()));
        fault.begin(&bed.links[1]);
        thread::sleep(return_at.saturating_duration_since(Instant::now()));
        fault.end(&bed.links[1]);
        sampler.join().unwrap()
    });
    let report = transfer.wait().unwrap();
    let link1_back = series.link1_back(return_at);
    let idle_back = series
        .points
        .iter()
        .find(|p| p.at > return_at && p.idle_on_link1 == IDLE)
        .map(|p| p.at);
    let idle_lost = series
        .points
        .iter()
        .any(|p| p.at > fault_at && p.idle_on_link1 < IDLE);
    Outage {
        idle_back,
        idle_lost,
        report,
        series,
        start,
        fault_at,
        return_at,
        link1_back,
        daemon,
        bed,
    }
}

/// When the idle connections had link 1 again, or that they never lost it.
fn idle_figure(run: &Outage) -> String {
    if run.idle_lost {
        secs(run.idle_back.map(|t| t - run.return_at))
    } else {
        "never lost".into()
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

/// Asserts the recovery figures of a run with probes and prints them
/// beside the run without.
fn check_recovery(fault: Fault, tracked: Outage, alone: Outage) {
    let config = health();
    for run in [&tracked, &alone] {
        assert!(run.report.intact(), "{fault:?}: {:?}", run.report);
    }
    let down = tracked.daemon.changed_at(
        "eth1",
        if fault == Fault::Silent {
            LinkState::Down
        } else {
            LinkState::NoCarrier
        },
        tracked.fault_at,
    );
    let up = tracked
        .daemon
        .changed_at("eth1", LinkState::Up, tracked.return_at);
    let events = tracked.daemon.events();
    let detection = down.map(|d| d - tracked.fault_at);
    // The configured time, plus a second for a loaded machine's scheduling.
    let allowed = config.detection_time() + Duration::from_secs(1);
    assert!(
        detection.is_some_and(|d| d <= allowed),
        "{fault:?}: detected after {}, allowed {allowed:?}; events:\n{events}",
        secs(detection)
    );
    let one_link = tracked
        .series
        .rate(tracked.return_at, OUTAGE - Duration::from_secs(3), |p| {
            p.received
        });
    let recovered = tracked.series.first_reaching(
        1.8 * one_link,
        tracked.return_at,
        tracked.return_at + Duration::from_secs(5),
    );
    let alone_recovered =
        alone
            .series
            .first_reaching(1.8 * one_link, alone.return_at, alone.return_at + AFTER);
    eprintln!(
        "{fault:?} outage of {OUTAGE:?} on link 1 of 2 x {RATE} Mbit/s, probes every {:?}:\n  \
         {:<28} {:>14} {:>14}\n  \
         {:<28} {:>14} {:>14}\n  \
         {:<28} {:>14} {:>14}\n  \
         {:<28} {:>14} {:>14}\n  \
         {:<28} {:>14} {:>14}\n  \
         {:<28} {:>14} {:>14}\n  \
         throughput per second, tracked:   {}\n  \
         throughput per second, no probes: {}",
        config.interval,
        "",
        "tracked",
        "no probes",
        "detection",
        secs(detection),
        "-",
        "link up again (probes)",
        secs(up.map(|u| u - tracked.return_at)),
        "-",
        "link 1 carries data again",
        secs(tracked.link1_back.map(|t| t - tracked.return_at)),
        secs(alone.link1_back.map(|t| t - alone.return_at)),
        "back at 1.8 x one link",
        secs(recovered.map(|t| t - tracked.return_at)),
        secs(alone_recovered.map(|t| t - alone.return_at)),
        format!("{IDLE} idle conns on link 1"),
        idle_figure(&tracked),
        idle_figure(&alone),
        tracked.series.timeline(tracked.start),
        alone.series.timeline(alone.start),
    );
    assert!(
        recovered.is_some(),
        "{fault:?}: not back at 1.8 x {one_link:.1} Mbit/s within 5 s of the return; \
         timeline {}; events:\n{events}",
        tracked.series.timeline(tracked.start)
    );
    // Every connection gets the link back, the idle ones too.
    assert!(
        tracked
            .idle_back
            .is_some_and(|t| t - tracked.return_at <= Duration::from_secs(5)),
        "{fault:?}: idle connections on link 1 again: {}; events:\n{events}",
        idle_figure(&tracked)
    );
    let links = tracked.daemon.links.lock().unwrap().clone();
    assert!(links.iter().all(|l| l.state == LinkState::Up), "{links:#?}");
    for run in [tracked, alone] {
        run.daemon.stop(&run.bed.client);
    }
}

/// Runs the same outage with and without probes at the same time.
fn outage_side_by_side(fault: Fault) {
    let alone = thread::spawn(move || outage(fault, None));
    let tracked = outage(fault, Some(health()));
    let alone = alone.join().unwrap();
    check_recovery(fault, tracked, alone);
}

#[test]
fn a_silent_outage_is_detected_and_every_connection_gets_the_link_back() {
    outage_side_by_side(Fault::Silent);
}

#[test]
fn a_carrier_outage_is_followed_and_the_link_comes_back_once_it_answers() {
    outage_side_by_side(Fault::Carrier);
}

/// The established subflows of the client's connections, by local address.
fn subflows_from(client: &Host, addr: Ipv4Addr) -> usize {
    client
        .run(diag::connections)
        .unwrap()
        .iter()
        .flat_map(|c| &c.subflows)
        .filter(|sf| sf.local.ip() == IpAddr::V4(addr) && sf.state == 1)
        .count()
}

#[test]
fn a_backup_link_carries_traffic_only_while_the_active_one_fails() {
    let bed = bed();
    let daemon = Daemon::start(
        &bed.client,
        Config {
            health: Some(health()),
            roles: vec![("eth1".into(), LinkRole::Backup)],
            ..Config::default()
        },
    );
    wait_until("both endpoints exist", Duration::from_secs(10), || {
        both_endpoints(&bed.client)
    });
    assert!(
        endpoints(&bed.client).contains("198.18.1.1 id 2 subflow backup dev eth1"),
        "{}",
        endpoints(&bed.client)
    );
    let phase = Duration::from_secs(4);
    let transfer =
        Transfer::start(&bed.client, &bed.server, SERVER, Proto::Mptcp, phase * 3).unwrap();
    let start = Instant::now();
    wait_until("the backup subflow exists", Duration::from_secs(5), || {
        subflows_from(&bed.client, Ipv4Addr::new(198, 18, 1, 1)) == 1
    });
    let (series, fault_at, return_at) = thread::scope(|scope| {
        let sampler = scope.spawn(|| Series::record(&transfer, &bed, None, start + phase * 3));
        let fault_at = start + phase;
        thread::sleep(fault_at.saturating_duration_since(Instant::now()));
        bed.links[0].blackhole().unwrap();
        let return_at = fault_at + phase;
        thread::sleep(return_at.saturating_duration_since(Instant::now()));
        bed.links[0].restore().unwrap();
        (sampler.join().unwrap(), fault_at, return_at)
    });
    let report = transfer.wait().unwrap();
    assert!(report.intact(), "{report:?}");
    let events = daemon.events();
    let share = |from: Instant, to: Instant| {
        let at = |t: Instant| series.points.iter().rev().find(|p| p.at <= t).unwrap();
        let (a, b) = (at(from), at(to));
        let l: [f64; 2] = [0, 1].map(|i| (b.link_tx[i] - a.link_tx[i]) as f64);
        l[1] / (l[0] + l[1]).max(1.0)
    };
    let before = share(start + Duration::from_secs(1), fault_at);
    assert!(
        before < 0.01,
        "the backup carried {:.1} % while the active link worked",
        before * 100.0
    );
    // Traffic continues on the backup within 3 s of the failure.
    let continued = series
        .points
        .iter()
        .map(|p| p.at)
        .filter(|t| *t > fault_at && *t <= fault_at + Duration::from_secs(3))
        .find(|t| {
            series.rate(*t, Duration::from_millis(500), |p| p.link_tx[1]) > RATE as f64 / 2.0
        });
    assert!(
        continued.is_some(),
        "no traffic on the backup within 3 s; timeline {}; events:\n{events}",
        series.timeline(start)
    );
    // Once the active link is back, traffic moves back to it.
    let end = start + phase * 3 - TICK;
    let after = share(end - Duration::from_secs(1), end);
    assert!(
        after < 0.1,
        "the backup still carries {:.0} % after the active link returned; events:\n{events}",
        after * 100.0
    );
    eprintln!(
        "backup role: {:.2} % on the backup while the active link worked, traffic on it {:.2} s \
         after the active link failed, {:.1} % on it in the last second; timeline {}",
        before * 100.0,
        (continued.unwrap() - fault_at).as_secs_f64(),
        after * 100.0,
        series.timeline(start)
    );
    assert!(
        daemon
            .changed_at("eth0", LinkState::Up, return_at)
            .is_some(),
        "{events}"
    );
    daemon.stop(&bed.client);
}

#[test]
fn a_flapping_link_leaks_nothing_and_the_connection_survives() {
    let bed = bed();
    let daemon = Daemon::start(
        &bed.client,
        Config {
            health: Some(health()),
            ..Config::default()
        },
    );
    wait_until("both endpoints exist", Duration::from_secs(10), || {
        both_endpoints(&bed.client)
    });
    let flaps = 10;
    let half = Duration::from_millis(1500);
    let transfer = Transfer::start(
        &bed.client,
        &bed.server,
        SERVER,
        Proto::Mptcp,
        half * 2 * flaps + Duration::from_secs(3),
    )
    .unwrap();
    for i in 0..flaps {
        let fault = if i % 2 == 0 {
            Fault::Silent
        } else {
            Fault::Carrier
        };
        fault.begin(&bed.links[1]);
        thread::sleep(half);
        fault.end(&bed.links[1]);
        thread::sleep(half);
    }
    let report = transfer.wait().unwrap();
    assert!(report.intact(), "{report:?}");
    let events = daemon.events();
    wait_until("link 1 is back in use", Duration::from_secs(10), || {
        both_endpoints(&bed.client)
    });
    // What the kernel shows is what the daemon made: one endpoint per
    // link, nothing twice.
    let shown = endpoints(&bed.client);
    assert_eq!(shown.lines().count(), 2, "{shown}\nevents:\n{events}");
    let rules = bed.client.ip(&["rule", "show"]).unwrap();
    assert_eq!(rules.matches("lookup 70").count(), 2, "{rules}");
    let routes = bed.client.ip(&["route", "show", "table", "all"]).unwrap();
    assert_eq!(routes.matches("table 70").count(), 4, "{routes}");
    let downs = events.matches("-> down").count() + events.matches("-> no-carrier").count();
    assert!(downs >= 5, "few flaps seen:\n{events}");
    eprintln!(
        "flapping: {flaps} flaps, {downs} seen as down; {} bytes intact",
        report.received_bytes
    );
    daemon.stop(&bed.client);
}

/// An idle connection (the relay's spare session, a quiet SSH login) loses
/// its subflow with the link and gets it back once the link answers; when
/// the server refuses the join at first, the daemon sees the subflow
/// missing, takes the endpoint out and adds it again after its backoff.
#[test]
fn an_idle_connection_gets_its_subflow_back_and_a_refused_join_is_retried() {
    let bed = bed();
    let config = health();
    let daemon = Daemon::start(
        &bed.client,
        Config {
            health: Some(config.clone()),
            ..Config::default()
        },
    );
    wait_until("both endpoints exist", Duration::from_secs(10), || {
        both_endpoints(&bed.client)
    });
    let idle = IdleConnections::open(&bed, 1);
    let fault_at = Instant::now();
    bed.links[1].blackhole().unwrap();
    wait_until(
        "link 1 is out of use",
        config.detection_time() + Duration::from_secs(2),
        || {
            daemon
                .changed_at("eth1", LinkState::Down, fault_at)
                .is_some()
        },
    );
    wait_until(
        "the idle connection's subflow on link 1 is closed",
        Duration::from_secs(5),
        || idle.on_link1(&bed.client) == 0,
    );
    // The server takes no more subflows for a while.
    bed.server
        .ip(&["mptcp", "limits", "set", "subflows", "0"])
        .unwrap();
    let return_at = Instant::now();
    bed.links[1].restore().unwrap();
    let retry_limit =
        config.up_after * config.interval + config.verify_after + Duration::from_secs(3);
    wait_until("the daemon retries the endpoint", retry_limit, || {
        daemon
            .actions_since(return_at, "ip mptcp endpoint delete id")
            .len()
            == 1
    });
    assert_eq!(idle.on_link1(&bed.client), 0, "the join was refused");
    bed.server
        .ip(&["mptcp", "limits", "set", "subflows", "2"])
        .unwrap();
    let allowed_at = Instant::now();
    wait_until(
        "the idle connection has its subflow on link 1 again",
        config.backoff * 2 + Duration::from_secs(3),
        || idle.on_link1(&bed.client) == 1,
    );
    let adds = daemon.actions_since(return_at, "ip mptcp endpoint add 198.18.1.1");
    assert!(
        adds.len() >= 2,
        "added on the return and again at each retry: {adds:?}"
    );
    eprintln!(
        "idle connection: subflow on link 1 back {:.2} s after the server allowed it again; \
         endpoint re-added {:.2} s after the link returned, retried {:.2} s after that",
        allowed_at.elapsed().as_secs_f64(),
        (adds[0] - return_at).as_secs_f64(),
        (adds[1] - adds[0]).as_secs_f64(),
    );
    daemon.stop(&bed.client);
}

/// Both links fail silently at once: nothing is left to carry the data.
/// When they answer again the transfer carries on over both, every byte
/// intact. The server (the kernel's default limit of 2 subflows) still
/// counts the dead subflows it never heard closing, so it refuses one of
/// the new joins at first: the daemon sees the subflow missing and retries
/// until the server has let go of the dead ones.
#[test]
fn both_links_failing_at_once_lose_no_connection_and_recover_after_retries() {
    let bed = bed();
    let daemon = Daemon::start(
        &bed.client,
        Config {
            health: Some(health()),
            ..Config::default()
        },
    );
    wait_until("both endpoints exist", Duration::from_secs(10), || {
        both_endpoints(&bed.client)
    });
    let idle = IdleConnections::open(&bed, 1);
    let (before, outage, after) = (
        Duration::from_secs(2),
        Duration::from_secs(4),
        Duration::from_secs(8),
    );
    let transfer = Transfer::start(
        &bed.client,
        &bed.server,
        SERVER,
        Proto::Mptcp,
        before + outage + after,
    )
    .unwrap();
    let start = Instant::now();
    let return_at = start + before + outage;
    let series = thread::scope(|scope| {
        let sampler =
            scope.spawn(|| Series::record(&transfer, &bed, Some(&idle), return_at + after));
        thread::sleep(before);
        for link in &bed.links {
            link.blackhole().unwrap();
        }
        thread::sleep(return_at.saturating_duration_since(Instant::now()));
        for link in &bed.links {
            link.restore().unwrap();
        }
        sampler.join().unwrap()
    });
    let report = transfer.wait().unwrap();
    assert!(report.intact(), "{report:?}");
    let events = daemon.events();
    let both = series.first_reaching(1.6 * f64::from(RATE), return_at, return_at + after);
    let retries = daemon
        .actions_since(return_at, "ip mptcp endpoint delete")
        .len();
    eprintln!(
        "both links down for {outage:?}: back over both links {} after their return, {retries} \
         endpoint retries; timeline {}",
        secs(both.map(|t| t - return_at)),
        series.timeline(start)
    );
    assert!(
        both.is_some(),
        "not back over both links; timeline {}; events:\n{events}",
        series.timeline(start)
    );
    assert_eq!(idle.on_link1(&bed.client), 1, "{events}");
    daemon.stop(&bed.client);
}
