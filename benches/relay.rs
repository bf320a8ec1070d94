//! End-to-end relay benchmark in the test bed: LAN host → local relay
//! (nftables REDIRECT) → 2 WAN links (MPTCP) → remote relay → destination,
//! against plain routed TCP on the same topology.
//!
//! Prints a side-by-side table: throughput both ways and new connections
//! per second, for routed TCP (measured first and last) and for the chain
//! in both of its modes (the
//! default, where the relays carry connections as streams of one MPTCP
//! session per worker, and one MPTCP connection per client connection, as
//! with dante as the remote); 10,000 concurrent idle relayed connections
//! (memory per connection, and whether they all still carry data); and the
//! chain's throughput over 2 × 20 Mbit/s links beside routed TCP on one
//! link and direct MPTCP on both. The throughput and connection rates are
//! also measured, in the same run, for the setup this project replaces:
//! redsocks on the local node and dante on the remote, both made MPTCP by
//! the preload library (as `mptcpize` would). Run as root:
//!
//! ```text
//! cargo bench -p mptcp --bench relay
//! ```
//!
//! `RELAY_BENCH=connect` measures only the connection rates,
//! `RELAY_BENCH=throughput` only the chains' bulk rates (for profiling and
//! tuning), and `RELAY_BENCH=repeat` the multiplexed chain over 2 × 20
//! Mbit/s again and again: [`REPEATS`] downloads and uploads (failures,
//! slowest and median rate against one link), and a 1-byte echo on a
//! second stream during each direction's bulk transfer (p50, p99) beside
//! the same over routed TCP (about five minutes). `RELAY_BENCH=mix`
//! measures aggregation on links with different rates and delays beside
//! direct MPTCP and shadowsocks-libev (see `relay/mix.rs`; about fifteen
//! minutes). Every loop is bounded in time or count (the whole run takes
//! about a minute).
//!
//! RLIMIT_NOFILE caps a process at 20,000 descriptors here (and root may
//! lack CAP_SYS_RESOURCE to raise it), while 10,000 connections need 20,000
//! in each relay. So the concurrency phase runs each role as two relay
//! processes sharing their ports with `SO_REUSEPORT` (`[engine] reuse_port`),
//! and the destination as one more process: this binary re-executes itself
//! with `RELAY_BENCH_CHILD` set to the role.

#[path = "relay/mix.rs"]
mod mix;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mptcp_core::relay::{
    Config, EngineConfig, LocalConfig, Relay, RelayHandle, RemoteConfig, SecretKey,
};
use mptcp_core::socket::{self as mptcp_socket, Fallback};
use mptcp_testbed::{Daemon, Host, RelayPath, danted_config, data, redsocks_config};
use socket2::{Domain, SockAddr};

const DOWNLOAD: u16 = 5001;
const UPLOAD: u16 = 5002;
const CONNECT: u16 = 5003;
const HOLD: u16 = 5004;
/// Echoes what it reads (latency under load).
const ECHO: u16 = 5005;
/// Transfers each way in `RELAY_BENCH=repeat`.
const REPEATS: usize = 30;
/// Echo round trips timed during a bulk transfer.
const ECHOES: usize = 200;
/// Direct MPTCP between the local and remote nodes (no relay).
const DIRECT_MPTCP: u16 = 5010;
const SOCKS_PORT: u16 = 1080;
/// dante's port, in the redsocks + dante chain.
const DANTE_PORT: u16 = 1081;
/// shadowsocks-libev's server port.
const SS_PORT: u16 = 8388;
const REDIRECT_PORT: u16 = 12345;
const THROUGHPUT_TIME: Duration = Duration::from_secs(3);
/// Long enough over 2 × 20 Mbit/s that slow start and the second subflow's
/// join weigh little; the steady rate (after the first second) is shown too.
const LIMITED_TIME: Duration = Duration::from_secs(6);
const RAMP_UP: Duration = Duration::from_secs(1);
const CONNECT_TIME: Duration = Duration::from_secs(2);
const CONNECT_THREADS: usize = 16;
/// New connections timed one after another during a download.
const SHORT_CONNECTIONS: usize = 20;
/// Concurrent idle connections through the chain.
const CONCURRENT: usize = 10_000;
/// Relay processes per role in the concurrency phase (each holds 2
/// descriptors per connection; the cap is 20,000 per process).
const PROCESSES_PER_ROLE: usize = 2;
const CHILD_ENV: &str = "RELAY_BENCH_CHILD";

fn main() {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        child(&role);
        return;
    }
    if let Err(e) = mptcp_testbed::require_privileges() {
        eprintln!("relay bench needs root: {e}");
        std::process::exit(1);
    }
    if std::env::var("RELAY_BENCH").as_deref() == Ok("repeat") {
        repeated_runs();
        return;
    }
    if std::env::var("RELAY_BENCH").as_deref() == Ok("mix") {
        mix::run();
        return;
    }
    let rp = mptcp_testbed::relay_path(2, None).expect("test bed");
    tune(&rp);
    serve(&rp, THROUGHPUT_TIME);
    let dest = |port| SocketAddr::new(rp.dest_addr().into(), port);

    // `RELAY_BENCH=connect`: only the connection rates, for profiling.
    if std::env::var("RELAY_BENCH").as_deref() == Ok("connect") {
        let routed = connect_rate(&rp, dest(CONNECT), &|| Duration::ZERO);
        redirect_rule(&rp);
        for multiplex in [true, false] {
            let (local, _remote) = start_chain(&rp, multiplex);
            eprintln!("measuring the chain's connection rate (multiplex: {multiplex})");
            let rate = connect_rate(&rp, dest(CONNECT), &|| Duration::ZERO);
            println!(
                "chain (multiplex: {multiplex}): {rate}; routed {routed}\n{}",
                local.stats()
            );
        }
        return;
    }
    // `RELAY_BENCH=throughput`: only the chains' bulk rates, twice each.
    if std::env::var("RELAY_BENCH").as_deref() == Ok("throughput") {
        redirect_rule(&rp);
        let twice = |name: &str| {
            eprintln!("measuring the throughput of {name}");
            for _ in 0..2 {
                let down = download(&rp.lan, dest(DOWNLOAD)).0;
                let up = upload(&rp, dest(UPLOAD));
                println!("{name}: download {down:.0}, upload {up:.0}");
            }
        };
        for multiplex in [true, false] {
            let _chain = start_chain(&rp, multiplex);
            twice(&format!("chain (multiplex: {multiplex})"));
        }
        // Encrypted: this relay against shadowsocks-libev, with the CPU
        // per GB of both relays.
        let encrypted: [Start; 3] = [
            Contender::sealed,
            |rp| Contender::shadowsocks(rp, "aes-256-gcm"),
            |rp| Contender::shadowsocks(rp, "chacha20-ietf-poly1305"),
        ];
        for start in encrypted {
            let contender = start(&rp);
            let row = Row::measure(&rp, &contender);
            println!(
                "{}: download {:.0}, upload {:.0} Mbit/s; relays' CPU {:.2} s per GB",
                contender.name,
                row.down,
                row.up,
                row.cpu_per_gb.unwrap_or(f64::NAN)
            );
        }
        let _legacy = start_redsocks_dante(&rp);
        twice("redsocks + dante");
        return;
    }
    // Routed TCP is measured first and last, as other load on the machine
    // moves it between runs; the ratios are to the mean of both.
    let routed_first = Row::measure(&rp, &Contender::routed());
    // MPTCP alone between the relays' hosts: the ceiling of any chain.
    let direct = direct_mptcp_download(&rp).0;
    redirect_rule(&rp);
    let mut rows = Vec::new();
    let mut muxed_stats = None;
    let contenders: [Start; 5] = [
        |rp: &RelayPath| Contender::chain(rp, true),
        |rp: &RelayPath| Contender::chain(rp, false),
        Contender::sealed,
        |rp: &RelayPath| Contender::shadowsocks(rp, "aes-256-gcm"),
        Contender::redsocks_dante,
    ];
    for start in contenders {
        let contender = start(&rp);
        rows.push((contender.name, Row::measure(&rp, &contender)));
        if let Some((local, remote)) = &contender.relays {
            muxed_stats.get_or_insert_with(|| (local.stats(), remote.stats()));
        }
    }
    remove_redirect_rule(&rp);
    let routed_last = Row::measure(&rp, &Contender::routed());
    let routed = Row::mean(&routed_first, &routed_last);
    redirect_rule(&rp);
    let _chain = start_chain(&rp, false);
    let one_subflow = connect_rate_one_subflow(&rp, dest(CONNECT));
    drop(rp);
    let concurrent = concurrency();
    let limited = limited_links();

    println!();
    print!(
        "{:<34} {:>11}",
        "relay benchmark (veths, 2 cores)", "routed TCP"
    );
    for (name, _) in &rows {
        print!(" {name:>17}");
    }
    println!();
    let line =
        |name: &str, unit: &str, routed: Option<f64>, value: &dyn Fn(&Row) -> Option<f64>| {
            let cells: Vec<Option<f64>> = rows.iter().map(|(_, r)| value(r)).collect();
            let first = routed.map_or(format!("{:>11}", "-"), |v| {
                format!("{} {unit:<3}", figure(v))
            });
            println!("{name:<34} {first}{}", ratio_cells(unit, routed, &cells));
        };
    line("download (dest -> lan)", "Mb", Some(routed.down), &|r| {
        Some(r.down)
    });
    line("upload (lan -> dest)", "Mb", Some(routed.up), &|r| {
        Some(r.up)
    });
    line("  relays' CPU s per GB", "s", None, &|r| r.cpu_per_gb);
    line("new connections/s", "/s", Some(routed.conns.per_s), &|r| {
        Some(r.conns.per_s)
    });
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    line("  p50 ms", "ms", Some(ms(routed.conns.p50)), &|r| {
        Some(ms(r.conns.p50))
    });
    line("  p99 ms", "ms", Some(ms(routed.conns.p99)), &|r| {
        Some(ms(r.conns.p99))
    });
    line(
        "  CPU us per connection",
        "us",
        Some(routed.conns.cpu_us),
        &|r| Some(r.conns.cpu_us),
    );
    println!(
        "{:<34} {:>11} {:>17}{}",
        "  1 conn each, without 2nd subflow",
        "",
        "",
        ratio_cells("/s", Some(routed.conns.per_s), &[Some(one_subflow.per_s)])
    );
    println!(
        "(ratios: to routed TCP; CPU per GB: to the encrypted chain. CPU includes the \
         relay processes, the clients and servers of the bench, and the kernel's work in them)"
    );
    let row_of = |name: &str| rows.iter().find(|(n, _)| *n == name).map(|(_, r)| r);
    if let (Some(sealed), Some(ss), Some(plain)) = (row_of(SEALED), row_of(SS_AES), row_of(MUXED)) {
        let cpu = |r: &Row| r.cpu_per_gb.unwrap_or(f64::NAN);
        println!(
            "encrypted chain / shadowsocks-libev aes-256-gcm: download {:.2} x, upload {:.2} x, \
             CPU per GB {:.2} x, connections/s {:.2} x (goals: >= 2 x, <= 0.5 x CPU)",
            sealed.down / ss.down,
            sealed.up / ss.up,
            cpu(sealed) / cpu(ss),
            sealed.conns.per_s / ss.conns.per_s
        );
        println!(
            "encryption's cost, encrypted / plain multiplexed chain: download {:.2} x, \
             upload {:.2} x, CPU per GB {:.2} x, connections/s {:.2} x",
            sealed.down / plain.down,
            sealed.up / plain.up,
            cpu(sealed) / cpu(plain),
            sealed.conns.per_s / plain.conns.per_s
        );
    }
    println!(
        "{:<34} down {:.0} / {:.0} Mb, up {:.0} / {:.0} Mb, {:.0} / {:.0} connections/s",
        "  routed TCP, first / last",
        routed_first.down,
        routed_last.down,
        routed_first.up,
        routed_last.up,
        routed_first.conns.per_s,
        routed_last.conns.per_s
    );
    println!(
        "{:<34} {:>7.0} Mb  (no relay, local <- remote; {:.2} of routed: the ceiling of the chain)",
        "direct MPTCP, 2 subflows",
        direct,
        direct / routed.down
    );
    concurrent.print();
    limited.print();
    if let Some((local, remote)) = muxed_stats {
        println!(
            "multiplexed chain, local relay:  {local}\nmultiplexed chain, remote relay: {remote}"
        );
    }
}

/// Starts a [`Contender`] in the test bed.
type Start = fn(&RelayPath) -> Contender;

const MUXED: &str = "chain, muxed";
const SEALED: &str = "chain, encrypted";
const SS_AES: &str = "ss-libev aes-gcm";

/// One way of carrying the LAN's connections to the destination, running
/// while it lives, measured in the table.
struct Contender {
    name: &'static str,
    /// Our relays, in this process (their CPU is in its threads).
    relays: Option<(RelayHandle, RelayHandle)>,
    /// Relays that run as processes of their own (their CPU is theirs).
    daemons: Vec<Daemon>,
}

impl Contender {
    /// No relay: the LAN's TCP routed (the redirect rule removed).
    fn routed() -> Contender {
        Contender {
            name: "routed TCP",
            relays: None,
            daemons: Vec::new(),
        }
    }

    fn chain(rp: &RelayPath, multiplex: bool) -> Contender {
        Contender {
            name: if multiplex {
                MUXED
            } else {
                "chain, 1 conn each"
            },
            relays: Some(start_chain(rp, multiplex)),
            daemons: Vec::new(),
        }
    }

    fn sealed(rp: &RelayPath) -> Contender {
        Contender {
            name: SEALED,
            relays: Some(start_sealed_chain(rp)),
            daemons: Vec::new(),
        }
    }

    fn shadowsocks(rp: &RelayPath, cipher: &str) -> Contender {
        let (redir, server) = start_shadowsocks(rp, cipher);
        Contender {
            name: if cipher.starts_with("aes") {
                SS_AES
            } else {
                "ss-libev chacha20"
            },
            relays: None,
            daemons: vec![redir, server],
        }
    }

    fn redsocks_dante(rp: &RelayPath) -> Contender {
        let (redsocks, dante) = start_redsocks_dante(rp);
        Contender {
            name: "redsocks+dante",
            relays: None,
            daemons: vec![redsocks, dante],
        }
    }

    /// CPU time of its relays so far; `None` for routed TCP.
    fn relay_cpu(&self) -> Option<Duration> {
        match (&self.relays, self.daemons.is_empty()) {
            (Some(_), _) => Some(relay_threads_cpu()),
            (None, false) => Some(self.daemon_cpu()),
            (None, true) => None,
        }
    }

    /// CPU time of its relay processes so far (zero for relays in this
    /// process, whose CPU [`process_cpu`] counts).
    fn daemon_cpu(&self) -> Duration {
        self.daemons.iter().map(|d| process_cpu_of(d.id())).sum()
    }
}

/// A table's figure, 7 wide: with decimals when small.
fn figure(v: f64) -> String {
    if v.abs() < 100.0 {
        format!("{v:>7.2}")
    } else {
        format!("{v:>7.0}")
    }
}

/// Table cells for `values` (blank when `None`), each with its ratio to
/// `base` (none without a base).
fn ratio_cells(unit: &str, base: Option<f64>, values: &[Option<f64>]) -> String {
    values
        .iter()
        .map(|v| match (v, base) {
            (Some(v), Some(base)) => format!(" {} {unit:<3} {:>5.2}", figure(*v), v / base),
            (Some(v), None) => format!(" {} {unit:<3} {:>5}", figure(*v), ""),
            (None, _) => format!(" {:>11} {:>5}", "-", ""),
        })
        .collect()
}

struct Row {
    down: f64,
    up: f64,
    /// Seconds of the relays' CPU per GB carried (both directions).
    cpu_per_gb: Option<f64>,
    conns: Rate,
}

impl Row {
    /// Throughput both ways (with the relays' CPU per GB), then the
    /// connection rate, through `contender`.
    fn measure(rp: &RelayPath, contender: &Contender) -> Row {
        eprintln!("measuring {}", contender.name);
        let dest = |port| SocketAddr::new(rp.dest_addr().into(), port);
        let before = contender.relay_cpu();
        let down = download(&rp.lan, dest(DOWNLOAD)).0;
        let up = upload(rp, dest(UPLOAD));
        let gb = (down + up) * THROUGHPUT_TIME.as_secs_f64() / 8e3;
        let cpu_per_gb = before
            .zip(contender.relay_cpu())
            .map(|(before, after)| (after - before).as_secs_f64() / gb);
        let conns = connect_rate(rp, dest(CONNECT), &|| contender.daemon_cpu());
        Row {
            down,
            up,
            cpu_per_gb,
            conns,
        }
    }

    fn mean(a: &Row, b: &Row) -> Row {
        let mean = |x: f64, y: f64| (x + y) / 2.0;
        Row {
            down: mean(a.down, b.down),
            up: mean(a.up, b.up),
            cpu_per_gb: None,
            conns: Rate {
                per_s: mean(a.conns.per_s, b.conns.per_s),
                cpu_us: mean(a.conns.cpu_us, b.conns.cpu_us),
                p50: (a.conns.p50 + b.conns.p50) / 2,
                p99: (a.conns.p99 + b.conns.p99) / 2,
            },
        }
    }
}

/// New connections per second (16 clients, each connecting, reading the
/// destination's byte and closing, in a loop), the time each took (p50,
/// p99), and the CPU time spent per connection by this process (clients,
/// servers, in-process relays, and the packet processing the kernel does
/// in their context) and by relay processes: less sensitive than the rate
/// to other load on the machine.
#[derive(Debug, Clone, Copy)]
struct Rate {
    per_s: f64,
    cpu_us: f64,
    p50: Duration,
    p99: Duration,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} connections/s (p50 {:.2} ms, p99 {:.2} ms), {:.0} us CPU each",
            self.per_s,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.cpu_us
        )
    }
}

/// User + system CPU time of this process so far.
fn process_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the rusage it is given; RUSAGE_SELF is valid.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time of the relays' threads in this process (`relay-*`: workers
/// and resolvers), from /proc/self/task.
fn relay_threads_cpu() -> Duration {
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter(|stat| stat.contains("(relay-"))
        .map(|stat| cpu_from_stat(&stat))
        .sum()
}

/// Wide port ranges and TIME_WAIT reuse, so the connection-rate loops do
/// not run out of ports.
fn tune(rp: &RelayPath) {
    for host in [&rp.lan, &rp.local, &rp.remote, &rp.dest] {
        let _ = host.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
        let _ = host.sysctl("net.ipv4.tcp_tw_reuse", "1");
        let _ = host.sysctl("net.core.somaxconn", "8192");
    }
}

/// The destination's servers, one thread each, for the life of the bench;
/// downloads last `download_time`.
fn serve(rp: &RelayPath, download_time: Duration) {
    let bind = |port| {
        let addr = SocketAddr::new(rp.dest_addr().into(), port);
        rp.dest
            .run(|| TcpListener::bind(addr))
            .expect("bind in dest")
    };
    let down = bind(DOWNLOAD);
    rp.dest.spawn(move || {
        for s in down.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let _ = data::send_pattern_for(&mut s, download_time);
            });
        }
    });
    let up = bind(UPLOAD);
    rp.dest.spawn(move || {
        for s in up.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                if let Ok((n, _)) = data::receive_and_check(&mut s) {
                    *UPLOADED.lock().unwrap() = Some(n);
                    let _ = s.write_all(&n.to_le_bytes());
                }
            });
        }
    });
    let conn = bind(CONNECT);
    rp.dest.spawn(move || {
        for mut s in conn.incoming().flatten() {
            let _ = s.write_all(b"x");
        }
    });
    let echo = bind(ECHO);
    rp.dest.spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let _ = std::io::copy(&mut &s, &mut &s);
            });
        }
    });
}

/// `RELAY_BENCH=repeat`: the multiplexed chain over 2 × 20 Mbit/s, run
/// after run, beside routed TCP over one of the links.
fn repeated_runs() {
    let rp = mptcp_testbed::relay_path(2, Some(20)).expect("test bed");
    serve(&rp, LIMITED_TIME);
    let dest = |port| SocketAddr::new(rp.dest_addr().into(), port);
    let routed_down = download(&rp.lan, dest(DOWNLOAD));
    let routed_echo = [false, true].map(|up| echo_during_bulk(&rp, up));
    redirect_rule(&rp);
    let (local, remote) = start_chain(&rp, true);
    let chain_echo = [false, true].map(|up| echo_during_bulk(&rp, up));
    let mut rates: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    let mut failures = [0usize; 2];
    let runs = std::env::var("RELAY_BENCH_RUNS").map_or(REPEATS, |n| n.parse().unwrap_or(REPEATS));
    for run in 0..runs {
        eprintln!("run {run}");
        for (i, up) in [false, true].into_iter().enumerate() {
            match try_transfer(&rp, up) {
                Ok(rate) => rates[i].push(rate),
                Err(e) => {
                    eprintln!("  {} failed: {e}", if up { "upload" } else { "download" });
                    failures[i] += 1;
                }
            }
        }
    }
    let chain_echo_after = [false, true].map(|up| echo_during_bulk(&rp, up));
    let contended = {
        let _hogs = busy_loops();
        remove_redirect_rule(&rp);
        let routed = echo_during_bulk(&rp, true);
        redirect_rule(&rp);
        (routed, echo_during_bulk(&rp, true))
    };
    let one_link = routed_down.1;
    println!(
        "\n2 x 20 Mbit/s, multiplexed chain, {runs} runs each way ({} s each); \
         one link (routed TCP, steady): {one_link:.1} Mb",
        LIMITED_TIME.as_secs()
    );
    for (i, name) in ["download", "upload"].into_iter().enumerate() {
        let mut steady: Vec<f64> = rates[i].iter().map(|r| r.1).collect();
        let mut average: Vec<f64> = rates[i].iter().map(|r| r.0).collect();
        steady.sort_by(f64::total_cmp);
        average.sort_by(f64::total_cmp);
        let at = |v: &[f64], q: usize| v.get(q).copied().unwrap_or(f64::NAN);
        println!(
            "  {name:<8} failures {}, steady rate min {:.1} / median {:.1} Mb ({:.2} / {:.2} x one link); \
             whole-transfer average min {:.1} / median {:.1} Mb",
            failures[i],
            at(&steady, 0),
            at(&steady, steady.len() / 2),
            at(&steady, 0) / one_link,
            at(&steady, steady.len() / 2) / one_link,
            at(&average, 0),
            at(&average, average.len() / 2),
        );
    }
    for (i, during) in ["a bulk download", "a bulk upload"].into_iter().enumerate() {
        let routed = routed_echo[i];
        println!(
            "{}",
            echo_line(&format!("during {during}"), routed, chain_echo[i])
        );
        println!(
            "{}",
            echo_line(
                &format!("during {during}, after the runs"),
                routed,
                chain_echo_after[i]
            )
        );
    }
    let (routed, chain) = contended;
    let label = format!("during a bulk upload, {BUSY_LOOPS} busy loops on the cores");
    println!("{}", echo_line(&label, routed, chain));
    println!(
        "local relay:  {}\nremote relay: {}",
        local.stats(),
        remote.stats()
    );
}

/// One row of the echo figures: routed and chain side by side.
fn echo_line(label: &str, routed: Echoes, chain: Echoes) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ratio = |c: Duration, r: Duration| c.as_secs_f64() / r.as_secs_f64();
    format!(
        "  1-byte echo {label}: routed p50 {:.1} ms p99 {:.1} ms ({} round trips); \
         chain p50 {:.1} ms p99 {:.1} ms ({}; {:.2} / {:.2} x routed)",
        ms(routed.p50),
        ms(routed.p99),
        routed.n,
        ms(chain.p50),
        ms(chain.p99),
        chain.n,
        ratio(chain.p50, routed.p50),
        ratio(chain.p99, routed.p99)
    )
}

/// Busy loops beside the measurement (a small router's busy CPU).
const BUSY_LOOPS: usize = 3;

/// [`BUSY_LOOPS`] processes spinning for at most a minute each; killed
/// when the guard drops.
fn busy_loops() -> Vec<Daemon> {
    (0..BUSY_LOOPS)
        .map(|_| {
            let mut cmd = Command::new("timeout");
            cmd.args(["60", "sh", "-c", "while :; do :; done"]);
            Daemon::spawn(&mut cmd).expect("sh and timeout")
        })
        .collect()
}

/// One transfer through the chain, download or upload: (average, steady)
/// Mbit/s, or why it failed.
fn try_transfer(rp: &RelayPath, up: bool) -> std::io::Result<(f64, f64)> {
    let port = if up { UPLOAD } else { DOWNLOAD };
    let to = SocketAddr::new(rp.dest_addr().into(), port);
    rp.lan.run(|| {
        let mut s = TcpStream::connect(to)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        if !up {
            return Ok(receive_rates(s));
        }
        // The sender's count runs ahead of the link by what the buffers
        // hold, so only the whole transfer up to the destination's answer
        // is a rate (for both figures).
        let started = Instant::now();
        let (sent, _) = data::send_pattern_for(&mut s, LIMITED_TIME)?;
        s.shutdown(Shutdown::Write)?;
        let mut ack = [0u8; 8];
        s.read_exact(&mut ack)?;
        if u64::from_le_bytes(ack) != sent {
            return Err(std::io::Error::other("the destination got other bytes"));
        }
        let rate = data::mbit_per_s(sent, started.elapsed());
        Ok((rate, rate))
    })
}

/// Round trips timed during a bulk transfer: how many, p50, p99.
#[derive(Debug, Clone, Copy)]
struct Echoes {
    n: usize,
    p50: Duration,
    p99: Duration,
}

impl Echoes {
    fn new(mut times: Vec<Duration>) -> Echoes {
        times.sort();
        let n = times.len();
        let at = |q: usize| times.get(q).copied().unwrap_or(Duration::MAX);
        Echoes {
            n,
            p50: at(n / 2),
            p99: at(n * 99 / 100),
        }
    }
}

/// Up to [`ECHOES`] 1-byte round trips on a connection of its own while a
/// bulk transfer (upload if `up`) runs beside it.
fn echo_during_bulk(rp: &RelayPath, up: bool) -> Echoes {
    let rp_lan = rp.lan.clone();
    let to = SocketAddr::new(rp.dest_addr().into(), ECHO);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bulk = {
        let lan = rp.lan.clone();
        let port = if up { UPLOAD } else { DOWNLOAD };
        let at = SocketAddr::new(rp.dest_addr().into(), port);
        let done = Arc::clone(&done);
        lan.spawn(move || {
            let mut s = TcpStream::connect(at).expect("bulk connection");
            if up {
                let _ = data::send_pattern_for(&mut s, LIMITED_TIME);
                // The destination's answer comes when all of it arrived:
                // the next measurement does not share the links with the
                // tail (the echo counts only until the sending stops).
                done.store(true, Ordering::SeqCst);
                let _ = s.shutdown(Shutdown::Write);
                let _ = s.read_exact(&mut [0u8; 8]);
            } else {
                let _ = data::receive_and_check(&mut s);
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(RAMP_UP);
    let times: Vec<Duration> = rp_lan.run(|| {
        let mut s = TcpStream::connect(to).expect("echo connection");
        s.set_nodelay(true).unwrap();
        // Only round trips made while the bulk transfer runs count.
        (0..ECHOES)
            .take_while(|_| !done.load(Ordering::SeqCst))
            .map(|_| {
                let started = Instant::now();
                s.write_all(b"x").unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).expect("the echo");
                let t = started.elapsed();
                std::thread::sleep(Duration::from_millis(10));
                t
            })
            .collect()
    });
    let _ = bulk.join();
    Echoes::new(times)
}

/// Downloads from `to` in `host`: (average Mbit/s, Mbit/s after
/// [`RAMP_UP`]).
fn download(host: &Host, to: SocketAddr) -> (f64, f64) {
    host.run(|| receive_rates(TcpStream::connect(to).expect("connect for download")))
}

/// Receives and checks a pattern stream: (average Mbit/s, Mbit/s after
/// [`RAMP_UP`], or the average for shorter transfers).
fn receive_rates(mut s: TcpStream) -> (f64, f64) {
    let meter = data::Meter::new();
    let ramped = Mutex::new(None);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            std::thread::sleep(RAMP_UP);
            *ramped.lock().unwrap() = Some(meter.sample());
        });
        data::receive_and_check(&mut meter.reader(&mut s)).expect("download intact");
        let end = meter.sample();
        sampler.join().unwrap();
        let average = data::mbit_per_s(end.bytes, end.elapsed);
        let steady = match *ramped.lock().unwrap() {
            Some(r) if r.elapsed < end.elapsed && r.bytes < end.bytes => end.mbit_per_s_since(&r),
            _ => average,
        };
        (average, steady)
    })
}

/// The last upload the destination received intact, in bytes: how an
/// upload is timed to its end, also through relays that cannot carry the
/// client's half-close (shadowsocks-libev closes both ways), where the
/// destination's answer would never come back.
static UPLOADED: Mutex<Option<u64>> = Mutex::new(None);

/// An upload of [`THROUGHPUT_TIME`], timed until the destination has all
/// of it (checked).
fn upload(rp: &RelayPath, to: SocketAddr) -> f64 {
    rp.lan.run(|| {
        UPLOADED.lock().unwrap().take();
        let mut s = TcpStream::connect(to).expect("connect for upload");
        let started = Instant::now();
        let (sent, _) = data::send_pattern_for(&mut s, THROUGHPUT_TIME).expect("upload");
        s.shutdown(Shutdown::Write).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(received) = *UPLOADED.lock().unwrap() {
                assert_eq!(received, sent, "upload intact");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the destination never got the upload"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        data::mbit_per_s(sent, started.elapsed())
    })
}

fn connect_rate(
    rp: &RelayPath,
    to: SocketAddr,
    relay_processes_cpu: &dyn Fn() -> Duration,
) -> Rate {
    let started = Instant::now();
    let cpu_before = process_cpu() + relay_processes_cpu();
    let threads: Vec<_> = (0..CONNECT_THREADS)
        .map(|_| {
            rp.lan.spawn(move || {
                let deadline = Instant::now() + CONNECT_TIME;
                let mut times = Vec::new();
                while Instant::now() < deadline {
                    let began = Instant::now();
                    let Ok(mut s) = TcpStream::connect(to) else {
                        continue;
                    };
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).is_ok() {
                        times.push(began.elapsed());
                    }
                }
                times
            })
        })
        .collect();
    let mut times: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    let cpu = process_cpu() + relay_processes_cpu() - cpu_before;
    times.sort();
    let n = times.len().max(1);
    let at = |q: f64| {
        times
            .get(((n - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    Rate {
        per_s: times.len() as f64 / elapsed.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / n as f64,
        p50: at(0.5),
        p99: at(0.99),
    }
}

/// The chain's connection rate when the local node opens no extra subflow
/// (its `subflow` endpoints removed): what joining the second WAN link
/// costs a short connection that has an MPTCP connection of its own.
fn connect_rate_one_subflow(rp: &RelayPath, to: SocketAddr) -> Rate {
    rp.local
        .ip(&["mptcp", "endpoint", "flush"])
        .expect("removing the subflow endpoints");
    connect_rate(rp, to, &|| Duration::ZERO)
}

fn engine() -> EngineConfig {
    EngineConfig {
        workers: 2,
        max_connections: 50_000,
        max_connections_per_client: 50_000,
        ..EngineConfig::default()
    }
}

fn remote_config(engine: EngineConfig) -> Config {
    let listen = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), SOCKS_PORT);
    Config::new()
        .engine(engine)
        .remote(RemoteConfig::new(listen).user("bench", "bench"))
}

fn local_config(engine: EngineConfig, remote: Ipv4Addr, multiplex: bool) -> Config {
    Config::new().engine(engine).local(
        LocalConfig::new(SocketAddr::new(remote.into(), SOCKS_PORT).to_string())
            .credentials("bench", "bench")
            .multiplex(multiplex)
            .redirect(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), REDIRECT_PORT)),
    )
}

/// Sends the LAN's TCP to the bench ports into the local relay.
fn redirect_rule(rp: &RelayPath) {
    let rules = format!(
        "table ip relaybench {{\n chain pre {{\n  type nat hook prerouting priority dstnat;\n  \
         iifname \"lan0\" tcp dport 5001-5009 redirect to :{REDIRECT_PORT}\n }}\n}}\n"
    );
    let mut nft = rp
        .local
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    nft.stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success(), "nft rule");
}

/// The setup this project replaces, as the seed write-up built it:
/// redsocks on the local node (the same REDIRECT rule and port as the
/// local relay) speaking SOCKS5 to dante on the remote node, both made
/// MPTCP by the preload library. Stops when dropped.
fn start_redsocks_dante(rp: &RelayPath) -> (Daemon, Daemon) {
    let lib = mptcp_testbed::build_preload_library().expect("building mptcp-preload");
    let dir = std::env::temp_dir().join(format!("relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dante_listen = SocketAddr::new(rp.remote_addr().into(), DANTE_PORT);
    let dante_conf = dir.join("danted.conf");
    let dante_text = danted_config(dante_listen, rp.remote_egress_addr(), "/dev/null");
    std::fs::write(&dante_conf, dante_text).expect("danted.conf");
    let redsocks_conf = dir.join("redsocks.conf");
    let redsocks_text = redsocks_config(REDIRECT_PORT, dante_listen, None);
    std::fs::write(&redsocks_conf, redsocks_text).expect("redsocks.conf");
    let mptcp = |host: &Host, program: &str| preloaded(&lib, host, program);
    let dante = Daemon::spawn(
        mptcp(&rp.remote, "/usr/sbin/danted")
            .arg("-f")
            .arg(&dante_conf)
            .arg("-p")
            .arg(dir.join("danted.pid")),
    )
    .expect("dante-server (/usr/sbin/danted) must be installed");
    let redsocks = Daemon::spawn(mptcp(&rp.local, "redsocks").arg("-c").arg(&redsocks_conf))
        .expect("redsocks must be installed");
    rp.remote
        .wait_listening(DANTE_PORT)
        .expect("dante listening");
    rp.local
        .wait_listening(REDIRECT_PORT)
        .expect("redsocks listening");
    let _ = std::fs::remove_dir_all(&dir);
    assert_dante_hop_uses_both_links(rp);
    (redsocks, dante)
}

/// `program` in `host` with its TCP sockets made MPTCP by the preload
/// library (the job of mptcpize, which Debian 12 does not ship).
fn preloaded(lib: &std::path::Path, host: &Host, program: &str) -> Command {
    let mut cmd = host.command(program);
    cmd.env("LD_PRELOAD", lib)
        .env("MPTCP_PRELOAD_MODE", "mptcp");
    cmd
}

/// shadowsocks-libev as OpenMPTCProuter runs it: `ss-redir` on the router
/// taking the redirected LAN connections, `ss-server` on the server, both
/// over MPTCP, with the AEAD `cipher`.
fn start_shadowsocks(rp: &RelayPath, cipher: &str) -> (Daemon, Daemon) {
    let lib = mptcp_testbed::build_preload_library().expect("building mptcp-preload");
    let server = rp.remote_addr().to_string();
    let port = SS_PORT.to_string();
    let common = ["-k", "bench-password", "-m", cipher, "--no-delay"];
    let ss_server = Daemon::spawn(
        preloaded(&lib, &rp.remote, "ss-server")
            .args(["-s", &server, "-p", &port])
            .args(common),
    )
    .expect("shadowsocks-libev (ss-server) must be installed");
    let redirect = REDIRECT_PORT.to_string();
    let ss_redir = Daemon::spawn(
        preloaded(&lib, &rp.local, "ss-redir")
            .args(["-s", &server, "-p", &port, "-b", "0.0.0.0", "-l", &redirect])
            .args(common),
    )
    .expect("shadowsocks-libev (ss-redir) must be installed");
    rp.remote
        .wait_listening(SS_PORT)
        .expect("ss-server listening");
    rp.local
        .wait_listening(REDIRECT_PORT)
        .expect("ss-redir listening");
    (ss_redir, ss_server)
}

/// CPU time of process `pid` so far (utime + stime from /proc/PID/stat).
fn process_cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    cpu_from_stat(&stat)
}

/// utime + stime of a stat(5) line.
fn cpu_from_stat(stat: &str) -> Duration {
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), utime 14, stime 15.
    let time = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_secs_f64((time(14) + time(15)) as f64 / 100.0) // USER_HZ
}

/// The baseline must be what its users run: redsocks' connection to dante
/// is MPTCP (not a fallback to TCP, as when the library turned dante's
/// listener into plain TCP for its `SO_OOBINLINE`) with a subflow on each
/// WAN link. Checked on one echo connection through the chain, with the
/// kernel's MPTCP diagnostics (what `ss -M` shows) on the remote node.
fn assert_dante_hop_uses_both_links(rp: &RelayPath) {
    let echo = SocketAddr::new(rp.dest_addr().into(), ECHO);
    let mut conn = rp
        .lan
        .run(|| TcpStream::connect_timeout(&echo, Duration::from_secs(5)))
        .expect("a connection through redsocks + dante");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"x").unwrap();
    conn.read_exact(&mut [0u8; 1])
        .expect("the echo through redsocks + dante");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let conns = rp
            .remote
            .run(mptcp_core::diag::connections)
            .expect("MPTCP diagnostics on the remote node");
        let hop = conns.iter().find(|c| c.local.port() == DANTE_PORT);
        if hop.is_some_and(|c| !c.fallback && c.subflows.len() == rp.wan.len()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "dante's hop is not MPTCP over the {} WAN links: {hop:?}",
            rp.wan.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Undoes [`redirect_rule`]: the LAN's TCP is routed again.
fn remove_redirect_rule(rp: &RelayPath) {
    rp.local
        .exec("nft", &["delete", "table", "ip", "relaybench"])
        .expect("removing the nft rule");
}

/// Both relays, in this process; `multiplex`: streams of sessions, or one
/// MPTCP connection per client connection. Add [`redirect_rule`] once.
fn start_chain(rp: &RelayPath, multiplex: bool) -> (RelayHandle, RelayHandle) {
    start_chain_with(rp, multiplex, None)
}

/// The multiplexed chain with the link between the relays encrypted.
fn start_sealed_chain(rp: &RelayPath) -> (RelayHandle, RelayHandle) {
    let keys = (SecretKey::generate(), SecretKey::generate());
    start_chain_with(rp, true, Some(&keys))
}

/// [`start_chain`], encrypted with `keys` (the remote's, the local's).
fn start_chain_with(
    rp: &RelayPath,
    multiplex: bool,
    keys: Option<&(SecretKey, SecretKey)>,
) -> (RelayHandle, RelayHandle) {
    let mut remote_cfg = remote_config(engine());
    let mut local_cfg = local_config(engine(), rp.remote_addr(), multiplex);
    if let Some((remote_key, local_key)) = keys {
        remote_cfg.remote = remote_cfg
            .remote
            .map(|r| r.key(remote_key).peer_key(&local_key.public_key()));
        local_cfg.local = local_cfg
            .local
            .map(|l| l.encrypt(local_key, &remote_key.public_key()));
    }
    let remote = rp
        .remote
        .run(|| Relay::start(remote_cfg))
        .expect("remote relay");
    let local = rp
        .local
        .run(|| Relay::start(local_cfg))
        .expect("local relay");
    (local, remote)
}

/// Over 2 × 20 Mbit/s WAN links, downloads of [`LIMITED_TIME`]: routed TCP
/// (one link), direct MPTCP from the remote node to the local node (both
/// links, no relay), and the chain (both links).
struct Limited {
    routed: (f64, f64),
    direct_mptcp: (f64, f64),
    chain: (f64, f64),
    /// The multiplexed chain with the link between the relays encrypted.
    sealed_chain: (f64, f64),
    /// New connections during a download (median, worst) and the
    /// download's rate, multiplexed chain.
    muxed_latency: ((Duration, Duration), f64),
    /// The same with one connection each.
    separate_latency: ((Duration, Duration), f64),
}

fn limited_links() -> Limited {
    let rp = mptcp_testbed::relay_path(2, Some(20)).expect("test bed");
    serve(&rp, LIMITED_TIME);
    let to = SocketAddr::new(rp.dest_addr().into(), DOWNLOAD);
    let routed = download(&rp.lan, to);
    let direct_mptcp = direct_mptcp_download(&rp);
    redirect_rule(&rp);
    let relays = start_chain(&rp, false);
    let separate_latency = latency_under_load(&rp);
    drop(relays);
    let relays = start_chain(&rp, true);
    let muxed_latency = latency_under_load(&rp);
    let chain = download(&rp.lan, to);
    drop(relays);
    let _relays = start_sealed_chain(&rp);
    Limited {
        routed,
        direct_mptcp,
        chain,
        sealed_chain: download(&rp.lan, to),
        muxed_latency,
        separate_latency,
    }
}

/// How long [`SHORT_CONNECTIONS`] new connections through the chain take
/// (median, worst) while a download runs, and the download's rate: whether
/// a bulk transfer delays everything else.
fn latency_under_load(rp: &RelayPath) -> ((Duration, Duration), f64) {
    let to = SocketAddr::new(rp.dest_addr().into(), DOWNLOAD);
    let bulk = rp
        .lan
        .spawn(move || receive_rates(TcpStream::connect(to).expect("connect for download")));
    std::thread::sleep(RAMP_UP);
    let times = short_connections(rp, SHORT_CONNECTIONS);
    (times, bulk.join().unwrap().0)
}

/// Median and worst time of `n` sequential new connections through the
/// chain (connect, then the destination's first byte).
fn short_connections(rp: &RelayPath, n: usize) -> (Duration, Duration) {
    let to = SocketAddr::new(rp.dest_addr().into(), CONNECT);
    let mut times: Vec<Duration> = rp.lan.run(|| {
        (0..n)
            .map(|_| {
                let started = Instant::now();
                let mut s = TcpStream::connect(to).expect("connect");
                let mut b = [0u8; 1];
                s.read_exact(&mut b).expect("the destination's byte");
                started.elapsed()
            })
            .collect()
    });
    times.sort();
    (times[n / 2], times[n - 1])
}

impl Limited {
    fn print(&self) {
        let (routed, direct, chain) = (self.routed, self.direct_mptcp, self.chain);
        println!(
            "2 x 20 Mbit/s links, {} s download: routed TCP (1 link) {:.1} Mb, \
             direct MPTCP {:.1} Mb, relay chain {:.1} Mb (chain/direct {:.3}; target >= 37)",
            LIMITED_TIME.as_secs(),
            routed.0,
            direct.0,
            chain.0,
            chain.0 / direct.0
        );
        println!(
            "  after the first {} s: routed {:.1} Mb, direct MPTCP {:.1} Mb, relay chain {:.1} Mb \
             (chain/direct {:.3})",
            RAMP_UP.as_secs(),
            routed.1,
            direct.1,
            chain.1,
            chain.1 / direct.1
        );
        let sealed = self.sealed_chain;
        println!(
            "  encrypted chain: {:.1} Mb ({:.2} x one link; after the first {} s {:.1} Mb, {:.2} x)",
            sealed.0,
            sealed.0 / routed.0,
            RAMP_UP.as_secs(),
            sealed.1,
            sealed.1 / routed.1
        );
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        for (name, ((median, worst), rate)) in [
            ("muxed", self.muxed_latency),
            ("1 conn each", self.separate_latency),
        ] {
            println!(
                "  {SHORT_CONNECTIONS} new connections during a download, {name}: median {:.1} ms, \
                 worst {:.1} ms (download {rate:.1} Mb)",
                ms(median),
                ms(worst)
            );
        }
    }
}

/// An MPTCP server in the remote node sends the pattern to an MPTCP client
/// in the local node: what MPTCP alone makes of the WAN links.
fn direct_mptcp_download(rp: &RelayPath) -> (f64, f64) {
    let at = SocketAddr::new(rp.remote_addr().into(), DIRECT_MPTCP);
    let listener: TcpListener = rp.remote.run(|| {
        let s = mptcp_socket::new(Domain::IPV4, Fallback::Fail)
            .expect("MPTCP socket")
            .socket;
        s.set_reuse_address(true).unwrap();
        s.bind(&SockAddr::from(at)).expect("bind direct MPTCP");
        s.listen(16).unwrap();
        s.into()
    });
    let server = rp.remote.spawn(move || {
        let (mut s, _) = listener.accept().expect("accept direct MPTCP");
        let _ = data::send_pattern_for(&mut s, LIMITED_TIME);
    });
    let rates = rp.local.run(|| {
        let s = mptcp_socket::new(Domain::IPV4, Fallback::Fail)
            .expect("MPTCP socket")
            .socket;
        s.connect(&SockAddr::from(at))
            .expect("connect direct MPTCP");
        receive_rates(s.into())
    });
    server.join().unwrap();
    rates
}

/// The concurrency phase: [`CONCURRENT`] idle connections through relay
/// processes, their memory, and a byte echoed over each afterwards.
struct Concurrency {
    opened: usize,
    open_time: Duration,
    echoed: usize,
    /// RSS growth of all relay processes of a role: (local, remote).
    rss_delta: (i64, i64),
    /// What the relays report holding: (local, remote).
    active: (u64, u64),
    /// Growth of the kernel's unreclaimable slab, machine-wide: the socket
    /// structures of every host (some ten sockets and subflows per
    /// connection), plus whatever else runs.
    kernel_delta: i64,
}

impl Concurrency {
    fn print(&self) {
        let n = self.opened.max(1) as f64;
        let mib = |b: i64| b as f64 / (1 << 20) as f64;
        println!(
            "{:<34} {:>14} {:>10.0} B/c   (RSS of both relays; {} connections opened in {:.1} s, \
             relays hold {:?}; RSS local {:+.1} MiB, remote {:+.1} MiB over {} + {} processes)",
            "memory per idle relayed conn",
            "-",
            (self.rss_delta.0 + self.rss_delta.1) as f64 / n,
            self.opened,
            self.open_time.as_secs_f64(),
            self.active,
            mib(self.rss_delta.0),
            mib(self.rss_delta.1),
            PROCESSES_PER_ROLE,
            PROCESSES_PER_ROLE
        );
        println!(
            "{:<34} {:>14} {:>10.0} B/c   (SUnreclaim {:+.1} MiB machine-wide: all hosts' sockets)",
            "  kernel memory per connection",
            "-",
            self.kernel_delta as f64 / n,
            mib(self.kernel_delta)
        );
        println!(
            "{:<34} {:>14} {:>10} of {}",
            "idle connections echoing a byte", "-", self.echoed, self.opened
        );
    }
}

fn concurrency() -> Concurrency {
    let rp = mptcp_testbed::relay_path(2, None).expect("test bed");
    tune(&rp);
    let hold_at = SocketAddr::new(rp.dest_addr().into(), HOLD);
    let mut holder = Process::spawn(&rp.dest, &["hold", &hold_at.to_string()]);
    let mut remotes: Vec<_> = (0..PROCESSES_PER_ROLE)
        .map(|_| Process::spawn(&rp.remote, &["remote"]))
        .collect();
    let remote_addr = rp.remote_addr().to_string();
    let mut locals: Vec<_> = (0..PROCESSES_PER_ROLE)
        .map(|_| Process::spawn(&rp.local, &["local", &remote_addr]))
        .collect();
    redirect_rule(&rp);
    let rss = |ps: &[Process]| ps.iter().map(Process::rss).sum::<i64>();
    let before = (rss(&locals), rss(&remotes));
    let kernel_before = unreclaimable_slab();

    let started = Instant::now();
    let threads = 8;
    let per_thread = concurrent_target() / threads;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            rp.lan.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut held = Vec::with_capacity(per_thread);
                while held.len() < per_thread && Instant::now() < deadline {
                    let mut s = match TcpStream::connect(hold_at) {
                        Ok(s) => s,
                        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                        Err(_) => continue,
                    };
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).is_ok() {
                        held.push(s);
                    }
                }
                held
            })
        })
        .collect();
    let mut clients: Vec<TcpStream> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let open_time = started.elapsed();
    // Let the last handshakes settle, so RSS counts idle connections.
    std::thread::sleep(Duration::from_millis(500));
    let rss_delta = (rss(&locals) - before.0, rss(&remotes) - before.1);
    let kernel_delta = unreclaimable_slab() - kernel_before;
    let active_sum = |ps: &mut [Process]| ps.iter_mut().map(Process::active).sum::<u64>();
    let active = (active_sum(&mut locals), active_sum(&mut remotes));

    // Every held connection still carries data: a byte there and back.
    for c in &mut clients {
        let _ = c.write_all(b"e");
    }
    eprintln!("concurrency: {}", holder.ask("echo"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut echoed = 0;
    for c in &mut clients {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = c.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        let mut b = [0u8; 1];
        if c.read_exact(&mut b).is_ok() && b == *b"e" {
            echoed += 1;
        }
    }
    Concurrency {
        opened: clients.len(),
        open_time,
        echoed,
        rss_delta,
        active,
        kernel_delta,
    }
}

/// [`CONCURRENT`], or fewer if this process (which holds the LAN side of
/// every connection) cannot raise its descriptor limit that far.
fn concurrent_target() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the rlimit it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return CONCURRENT;
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: a valid rlimit; raising the soft limit to the hard one is
    // always allowed.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let fit = usize::try_from(lim.rlim_max.saturating_sub(256)).unwrap_or(usize::MAX);
    if fit < CONCURRENT {
        eprintln!(
            "concurrency: descriptor limit {}: {fit} connections",
            lim.rlim_max
        );
    }
    CONCURRENT.min(fit)
}

/// `SUnreclaim` of /proc/meminfo, in bytes.
fn unreclaimable_slab() -> i64 {
    meminfo_kib(
        &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        "SUnreclaim:",
    )
}

/// A role of the concurrency phase in a child process (this binary again),
/// driven by lines on its stdin; it ends when stdin closes.
struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Process {
    /// Starts `args` in `host` and waits for its `ready` line.
    fn spawn(host: &Host, args: &[&str]) -> Process {
        let exe = std::env::current_exe().expect("own executable");
        let mut child = host
            .command(exe.to_str().expect("UTF-8 executable path"))
            .env(CHILD_ENV, args[0])
            .args(&args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("re-executing the bench");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut p = Process {
            child,
            stdin,
            stdout,
        };
        let ready = p.line();
        assert_eq!(ready, "ready", "{} process did not start", args[0]);
        p
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("child output");
        line.trim_end().to_owned()
    }

    fn ask(&mut self, command: &str) -> String {
        let stdin = self.stdin.as_mut().expect("child input open");
        writeln!(stdin, "{command}").expect("child input");
        self.line()
    }

    /// The relay's `active` counter.
    fn active(&mut self) -> u64 {
        let stats = self.ask("stats");
        stats
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("active="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no active= in {stats:?}"))
    }

    fn rss(&self) -> i64 {
        rss_bytes(self.child.id())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Closing stdin ends the child; kill it if it lingers.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_bytes(pid: u32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    meminfo_kib(&status, "VmRSS:")
}

/// A `Key:   123 kB` line of /proc/meminfo or /proc/PID/status, in bytes.
fn meminfo_kib(text: &str, key: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Runs a child role until stdin closes.
fn child(role: &str) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut engine = engine();
    engine.reuse_port = true;
    match role {
        "hold" => hold(args[0].parse().expect("hold address")),
        "remote" => relay_child(remote_config(engine)),
        "local" => relay_child(local_config(
            engine,
            args[0].parse().expect("remote relay address"),
            true,
        )),
        other => panic!("unknown {CHILD_ENV} role {other}"),
    }
}

fn relay_child(config: Config) {
    let relay = Relay::start(config).unwrap_or_else(|e| {
        eprintln!("relay process: {e}");
        std::process::exit(1)
    });
    println!("ready");
    for line in std::io::stdin().lines() {
        match line.as_deref() {
            Ok("stats") => println!("{}", relay.stats()),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    relay.shutdown(Duration::ZERO);
}

/// The destination of the concurrency phase: accepts, greets with a byte,
/// holds every connection; `echo` sends back one byte read from each.
fn hold(at: SocketAddr) {
    let listener = TcpListener::bind(at).expect("bind the holder");
    let held = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::clone(&held);
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            if s.write_all(b"x").is_ok() {
                accepted.lock().unwrap().push(s);
            }
        }
    });
    println!("ready");
    for line in std::io::stdin().lines() {
        match line.as_deref() {
            Ok("echo") => {
                let mut held = held.lock().unwrap();
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut n = 0;
                for s in held.iter_mut() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {
                        n += 1;
                    }
                }
                println!("echoed {n} of {}", held.len());
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
}
