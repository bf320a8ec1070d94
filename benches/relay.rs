//! End-to-end relay benchmark in the test bed: LAN host → local relay
//! (nftables REDIRECT) → 2 WAN links (MPTCP) → remote relay → destination,
//! against plain routed TCP on the same topology.
//!
//! Prints a side-by-side table: throughput both ways, new connections per
//! second, memory per idle relayed connection, and the chain's throughput
//! over 2 × 20 Mbit/s links. Run as root:
//!
//! ```text
//! cargo bench -p mptcp --bench relay
//! ```
//!
//! `RELAY_BENCH=connect` measures only the connection rates (for
//! profiling). Every loop is bounded in time or count (the whole run takes
//! about 40 s).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mptcp_core::relay::{Config, EngineConfig, LocalConfig, Relay, RelayHandle, RemoteConfig};
use mptcp_testbed::{RelayPath, data};

const DOWNLOAD: u16 = 5001;
const UPLOAD: u16 = 5002;
const CONNECT: u16 = 5003;
const HOLD: u16 = 5004;
const SOCKS_PORT: u16 = 1080;
const REDIRECT_PORT: u16 = 12345;
const THROUGHPUT_TIME: Duration = Duration::from_secs(3);
const CONNECT_TIME: Duration = Duration::from_secs(2);
const CONNECT_THREADS: usize = 16;
/// Each idle connection costs this process 6 descriptors (LAN client, two
/// per relay, destination); 3,000 stay under a hard RLIMIT_NOFILE of 20,000.
const IDLE_CONNECTIONS: usize = 3_000;

fn main() {
    if let Err(e) = mptcp_testbed::require_privileges() {
        eprintln!("relay bench needs root: {e}");
        std::process::exit(1);
    }
    let rp = mptcp_testbed::relay_path(2, None).expect("test bed");
    tune(&rp);
    serve(&rp);
    let dest = |port| SocketAddr::new(rp.dest_addr().into(), port);

    let routed = Row {
        down: download(&rp, dest(DOWNLOAD)),
        up: upload(&rp, dest(UPLOAD)),
        conns: connect_rate(&rp, dest(CONNECT)),
        idle: None,
    };
    let (local, remote) = start_chain(&rp);
    // `RELAY_BENCH=connect`: only the chain's connection rate, for profiling.
    if std::env::var("RELAY_BENCH").as_deref() == Ok("connect") {
        let rate = connect_rate(&rp, dest(CONNECT));
        println!(
            "chain: {rate:.0} connections/s (routed {:.0})\n{}",
            routed.conns,
            local.stats()
        );
        return;
    }
    let chain = Row {
        down: download(&rp, dest(DOWNLOAD)),
        up: upload(&rp, dest(UPLOAD)),
        conns: connect_rate(&rp, dest(CONNECT)),
        idle: Some(idle_memory(&rp, dest(HOLD), &local, &remote)),
    };
    let (l, r) = (local.stats(), remote.stats());
    drop((local, remote));
    drop(rp);
    let limited = limited_chain();

    println!();
    println!(
        "{:<34} {:>14} {:>14} {:>7}",
        "relay benchmark (veths, 2 cores)", "routed TCP", "relay chain", "ratio"
    );
    let row = |name: &str, a: f64, b: f64, unit: &str| {
        println!(
            "{name:<34} {:>10.0} {unit:<3} {:>10.0} {unit:<3} {:>7.2}",
            a,
            b,
            b / a
        );
    };
    row("download (dest -> lan)", routed.down, chain.down, "Mb");
    row("upload (lan -> dest)", routed.up, chain.up, "Mb");
    row("new connections/s", routed.conns, chain.conns, "/s");
    if let Some(idle) = chain.idle {
        println!(
            "{:<34} {:>14} {:>10.0} B/c   (RSS {:+.1} MiB for {} connections, 4 relay sockets each, no pipes)",
            "memory per idle relayed conn",
            "-",
            idle.bytes_per_conn,
            idle.rss_delta as f64 / (1 << 20) as f64,
            idle.count
        );
    }
    let (one_link, both_links) = limited;
    println!(
        "{:<34} {:>10.1} Mb  {:>10.1} Mb  {:>7.2}   (target >= 37 Mbit/s)",
        "2 x 20 Mbit/s links, download",
        one_link,
        both_links,
        both_links / one_link
    );
    println!("local relay:  {l}\nremote relay: {r}");
}

struct Row {
    down: f64,
    up: f64,
    conns: f64,
    idle: Option<Idle>,
}

struct Idle {
    count: usize,
    rss_delta: i64,
    bytes_per_conn: f64,
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

/// The destination's servers, one thread each, for the life of the bench.
fn serve(rp: &RelayPath) {
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
                let _ = data::send_pattern_for(&mut s, THROUGHPUT_TIME);
            });
        }
    });
    let up = bind(UPLOAD);
    rp.dest.spawn(move || {
        for s in up.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                if let Ok((n, _)) = data::receive_and_check(&mut s) {
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
    let hold = bind(HOLD);
    rp.dest.spawn(move || {
        let mut held = Vec::new();
        for mut s in hold.incoming().flatten() {
            let _ = s.write_all(b"x");
            held.push(s);
            if held.len() > IDLE_CONNECTIONS + 100 {
                held.clear();
            }
        }
    });
}

fn download(rp: &RelayPath, to: SocketAddr) -> f64 {
    rp.lan.run(|| {
        let mut s = TcpStream::connect(to).expect("connect for download");
        let started = Instant::now();
        let (n, _) = data::receive_and_check(&mut s).expect("download intact");
        data::mbit_per_s(n, started.elapsed())
    })
}

fn upload(rp: &RelayPath, to: SocketAddr) -> f64 {
    rp.lan.run(|| {
        let mut s = TcpStream::connect(to).expect("connect for upload");
        let started = Instant::now();
        let (sent, _) = data::send_pattern_for(&mut s, THROUGHPUT_TIME).expect("upload");
        s.shutdown(Shutdown::Write).unwrap();
        let mut ack = [0u8; 8];
        s.read_exact(&mut ack).expect("upload acknowledged");
        assert_eq!(u64::from_le_bytes(ack), sent, "upload intact");
        data::mbit_per_s(sent, started.elapsed())
    })
}

fn connect_rate(rp: &RelayPath, to: SocketAddr) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..CONNECT_THREADS)
        .map(|_| {
            let done = Arc::clone(&done);
            rp.lan.spawn(move || {
                let deadline = Instant::now() + CONNECT_TIME;
                while Instant::now() < deadline {
                    let Ok(mut s) = TcpStream::connect(to) else {
                        continue;
                    };
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn rss_bytes() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Opens idle connections through the chain (each carried one byte, so all
/// four relay sockets exist) and measures the process's RSS growth. The
/// LAN-side client sockets and the destination's sockets hold no user
/// memory beyond a `Vec` slot.
fn idle_memory(rp: &RelayPath, to: SocketAddr, local: &RelayHandle, remote: &RelayHandle) -> Idle {
    let clients = Mutex::new(Vec::with_capacity(IDLE_CONNECTIONS));
    // Let the connections of earlier phases finish closing first.
    let settle = Instant::now() + Duration::from_secs(10);
    while (local.stats().active > 0 || remote.stats().active > 0) && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = rss_bytes();
    rp.lan.run(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut held = clients.lock().unwrap();
        while held.len() < IDLE_CONNECTIONS && Instant::now() < deadline {
            let Ok(mut s) = TcpStream::connect(to) else {
                continue;
            };
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                held.push(s);
            }
        }
    });
    let count = clients.lock().unwrap().len();
    let rss_delta = rss_bytes() - before;
    let active = (local.stats().active, remote.stats().active);
    eprintln!("idle: {count} connections held by the LAN client; relays hold {active:?}");
    drop(clients);
    Idle {
        count,
        rss_delta,
        bytes_per_conn: rss_delta as f64 / count.max(1) as f64,
    }
}

fn engine() -> EngineConfig {
    EngineConfig {
        workers: 2,
        max_connections_per_client: 50_000,
        ..EngineConfig::default()
    }
}

/// Both relays and the REDIRECT rule for the bench ports.
fn start_chain(rp: &RelayPath) -> (RelayHandle, RelayHandle) {
    let listen = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), SOCKS_PORT);
    let remote_cfg = Config::new()
        .engine(engine())
        .remote(RemoteConfig::new(listen).user("bench", "bench"));
    let remote = rp
        .remote
        .run(|| Relay::start(remote_cfg))
        .expect("remote relay");
    let local_cfg = Config::new().engine(engine()).local(
        LocalConfig::new(SocketAddr::new(rp.remote_addr().into(), SOCKS_PORT).to_string())
            .credentials("bench", "bench")
            .redirect(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), REDIRECT_PORT)),
    );
    let local = rp
        .local
        .run(|| Relay::start(local_cfg))
        .expect("local relay");
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
    (local, remote)
}

/// Download throughput through the chain over 2 × 20 Mbit/s WAN links.
/// Download throughput over 2 × 20 Mbit/s WAN links: routed TCP (one
/// link) and the chain (both links).
fn limited_chain() -> (f64, f64) {
    let rp = mptcp_testbed::relay_path(2, Some(20)).expect("test bed");
    serve(&rp);
    let to = SocketAddr::new(rp.dest_addr().into(), DOWNLOAD);
    let routed = download(&rp, to);
    let _relays = start_chain(&rp);
    (routed, download(&rp, to))
}
