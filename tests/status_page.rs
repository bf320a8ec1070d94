//! The relay's status page in a real browser: Debian's `chromium`, headless,
//! loads the page of a local relay that has carried traffic over two WAN
//! links (the test bed's relay path) and dumps the DOM the page's script
//! built; the graphs must have drawn points, and the numbers must be those
//! of the metrics endpoint on the same listener.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use mptcp_core::socks5::{self, Progress, Request, TargetAddr};
use mptcp_testbed::data::{discard, receive_and_check, send_pattern};
use mptcp_testbed::{Daemon, Host};

const MPTCP: &str = env!("CARGO_BIN_EXE_mptcp");
/// Where both relays serve their page and metrics, on their loopback.
const WEB: &str = "127.0.0.1:9464";
const DOWNLOAD: u64 = 8 << 20;
const UPLOAD: u64 = 4 << 20;

/// `mptcp relay ROLE ARGS --metrics WEB` in `host`, with the password.
fn relay(host: &Host, args: &[&str]) -> Daemon {
    let mut cmd = host.command(MPTCP);
    cmd.args(["relay"])
        .args(args)
        .args(["--user", "alice", "--password-env", "PAGE_TEST_PASSWORD"])
        .args(["--metrics", WEB])
        .env("PAGE_TEST_PASSWORD", "correct horse")
        .env(
            "MPTCP_REMOTES_FILE",
            std::env::temp_dir().join(format!("mptcp-page-remotes-{}", std::process::id())),
        );
    Daemon::spawn(&mut cmd).unwrap()
}

/// A SOCKS5 CONNECT (no authentication) from `host` through `proxy`.
fn socks5_connect(proxy: SocketAddr, dest: SocketAddr) -> TcpStream {
    let mut conn = TcpStream::connect(proxy).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut hello = Vec::new();
    let request = Request::connect(TargetAddr::Ip(dest));
    socks5::encode_client_hello_auth_request(None, &request, &mut hello).unwrap();
    conn.write_all(&hello).unwrap();
    // Method choice (2 bytes) and an IPv4 reply (10): nothing after them
    // is read here.
    let mut reply = [0u8; 12];
    conn.read_exact(&mut reply).unwrap();
    let done = socks5::ClientHandshake::new(false).advance(&reply);
    assert!(matches!(done, Ok(Progress::Done(..))), "{done:?}");
    conn
}

/// `GET http://WEB/path` from inside `host`.
fn get(host: &Host, path: &str) -> String {
    host.exec(
        "curl",
        &["-sSf", "--max-time", "10", &format!("http://{WEB}{path}")],
    )
    .unwrap()
}

/// The samples of a Prometheus text, by series (`name{labels}`).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The value of attribute `attr` of the element whose opening tag holds
/// `marker` in the dumped DOM.
fn attribute(dom: &str, marker: &str, attr: &str) -> String {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the page:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let tag = &dom[start..start + dom[start..].find('>').unwrap()];
    let key = format!(" {attr}=\"");
    let from = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {attr} in {tag}"))
        + key.len();
    tag[from..from + tag[from..].find('"').unwrap()].to_owned()
}

/// A directory for one browser run's profile, removed on drop.
struct Profile(std::path::PathBuf);

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The DOM of `url` after the page's script ran for 5 s of virtual time,
/// from headless chromium inside `host`.
fn browse(host: &Host, url: &str) -> String {
    let profile = Profile(
        std::env::temp_dir().join(format!("mptcp-status-page-chromium-{}", std::process::id())),
    );
    let out = host
        .command("timeout")
        .args(["-k", "5", "120", "chromium", "--headless", "--no-sandbox"])
        .args(["--disable-gpu", "--no-first-run", "--window-size=1280,2000"])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .args(["--virtual-time-budget=5000", "--dump-dom", url])
        .output()
        .expect("running timeout");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium ({}; Debian's `chromium` package, which .ci/run installs, must be there): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// Series of `text` of the relay's engine counters, as the page names them.
const COUNTERS: [(&str, &str); 13] = [
    ("accepted", "mptcp_relay_connections_accepted_total"),
    ("active", "mptcp_relay_connections_active"),
    ("relayed", "mptcp_relay_connections_relayed_total"),
    ("bytes_up", "mptcp_relay_bytes_total{direction=\"up\"}"),
    ("bytes_down", "mptcp_relay_bytes_total{direction=\"down\"}"),
    ("sessions", "mptcp_relay_sessions"),
    ("multiplexed", "mptcp_relay_multiplexed_streams_total"),
    ("splice_fallbacks", "mptcp_relay_splice_fallbacks_total"),
    ("session_errors", "mptcp_relay_session_errors_total"),
    ("worker_panics", "mptcp_relay_worker_panics_total"),
    ("udp_associations", "mptcp_relay_udp_associations"),
    (
        "udp_datagrams_up",
        "mptcp_relay_udp_datagrams_total{direction=\"up\"}",
    ),
    (
        "udp_datagrams_down",
        "mptcp_relay_udp_datagrams_total{direction=\"down\"}",
    ),
];

#[test]
fn the_status_page_draws_the_relay_and_matches_its_metrics() {
    mptcp_testbed::require_privileges().unwrap();
    let rp = mptcp_testbed::relay_path(2, Some(20)).unwrap();
    let (download, upload, closed) = (
        SocketAddr::new(rp.dest_addr().into(), 8000),
        SocketAddr::new(rp.dest_addr().into(), 8001),
        SocketAddr::new(rp.dest_addr().into(), 8002),
    );
    let listeners = rp.dest.run(|| {
        (
            TcpListener::bind(download).unwrap(),
            TcpListener::bind(upload).unwrap(),
        )
    });
    let dest = std::thread::spawn(move || {
        let (down_listener, up_listener) = listeners;
        let (mut conn, _) = down_listener.accept().unwrap();
        let sent = send_pattern(&mut conn, DOWNLOAD).unwrap();
        let (mut conn, _) = up_listener.accept().unwrap();
        (sent, receive_and_check(&mut conn).unwrap())
    });
    let _remote = relay(&rp.remote, &["remote", "--listen", "198.18.0.2:1080"]);
    rp.remote.wait_listening(1080).unwrap();
    let _local = relay(
        &rp.local,
        &[
            "local",
            "--remote",
            "198.18.0.2:1080",
            "--socks5",
            "198.19.1.1:1080",
            // The test bed's LAN is not a private range.
            "--allow-client",
            "198.19.1.0/24",
        ],
    );
    rp.local.wait_listening(1080).unwrap();
    rp.local.wait_listening(9464).unwrap();

    // A download and an upload at once through the LAN's SOCKS5 proxy,
    // then a destination that refuses (a failure the page lists).
    let proxy: SocketAddr = "198.19.1.1:1080".parse().unwrap();
    let lan_down = rp.lan.spawn(move || {
        let mut conn = socks5_connect(proxy, download);
        receive_and_check(&mut conn).unwrap()
    });
    let lan_up = rp.lan.spawn(move || {
        let mut conn = socks5_connect(proxy, upload);
        let sent = send_pattern(&mut conn, UPLOAD).unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(
            discard(&mut conn, 1).unwrap(),
            0,
            "EOF once the destination has all"
        );
        sent
    });
    let received = lan_down.join().unwrap();
    let upload_sum = lan_up.join().unwrap();
    let (download_sum, uploaded) = dest.join().unwrap();
    assert_eq!(received, (DOWNLOAD, download_sum), "the download, whole");
    assert_eq!(uploaded, (UPLOAD, upload_sum), "the upload, whole");
    rp.lan.run(move || {
        let mut conn = TcpStream::connect(proxy).unwrap();
        conn.write_all(&[5, 1, 0]).unwrap();
        let mut request = Vec::new();
        Request::connect(TargetAddr::Ip(closed))
            .encode(&mut request)
            .unwrap();
        conn.write_all(&request).unwrap();
        let mut reply = [0u8; 12];
        conn.read_exact(&mut reply).unwrap();
        assert_ne!(reply[3], 0, "nothing listens on {closed}");
    });

    // Once every connection is closed and the sampler has seen the last
    // bytes, the counters stand still.
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        let m = samples(&get(&rp.local, "/metrics"));
        let quiet = m["mptcp_relay_connections_active"] == 0.0
            && m.keys()
                .any(|k| k.starts_with("mptcp_relay_errors_total") && m[k] > 0.0);
        if quiet {
            std::thread::sleep(Duration::from_millis(2500));
            break samples(&get(&rp.local, "/metrics"));
        }
        assert!(Instant::now() < deadline, "the relay stays busy: {m:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let dom = browse(&rp.local, &format!("http://{WEB}/"));
    let after = samples(&get(&rp.local, "/metrics"));
    for (name, series) in COUNTERS {
        assert_eq!(before[series], after[series], "{series} moved");
        let shown: f64 = attribute(&dom, &format!("id=\"c-{name}\""), "data-value")
            .parse()
            .unwrap();
        assert_eq!(
            shown, after[series],
            "{name} on the page, {series} in the metrics"
        );
    }
    assert!(after["mptcp_relay_bytes_total{direction=\"down\"}"] >= DOWNLOAD as f64);
    assert!(after["mptcp_relay_bytes_total{direction=\"up\"}"] >= UPLOAD as f64);
    let mut failures = 0.0;
    for (series, value) in &after {
        let Some(kind) = series
            .strip_prefix("mptcp_relay_errors_total{kind=\"")
            .and_then(|k| k.strip_suffix("\"}"))
        else {
            continue;
        };
        let shown: f64 = attribute(&dom, &format!("id=\"e-{kind}\""), "data-value")
            .parse()
            .unwrap();
        assert_eq!(shown, *value, "errors of kind {kind}");
        failures += value;
    }
    assert_eq!(failures, 1.0, "the refused destination");

    // The graphs drew the last minutes: relayed throughput (both ways, in
    // bit/s), each link's throughput and RTT.
    let points = |id: &str| -> usize {
        attribute(&dom, &format!("id=\"{id}\""), "data-points")
            .parse()
            .unwrap()
    };
    assert!(points("graph-relay") >= 6, "{dom}");
    let peak: f64 = attribute(&dom, "id=\"graph-relay\"", "data-max")
        .parse()
        .unwrap();
    assert!(peak > 1e6, "peak {peak} bit/s");
    assert!(
        points("graph-links") >= 2 && points("graph-rtt") >= 2,
        "{dom}"
    );

    // Both WAN links carry subflows of the relay's sessions, as many on
    // the page as in the metrics, and the links' bytes hold the transfer.
    let mut link_received = 0.0;
    let mut link_sent = 0.0;
    for link in ["198.18.0.1", "198.18.1.1"] {
        let subflows = after[&format!("mptcp_relay_link_subflows{{link=\"{link}\"}}")];
        assert!(subflows >= 1.0, "{link}: {after:?}");
        let shown: f64 = attribute(&dom, &format!("data-link=\"{link}\""), "data-subflows")
            .parse()
            .unwrap();
        assert_eq!(shown, subflows, "subflows on {link}");
        link_received += after
            [&format!("mptcp_relay_link_bytes_total{{link=\"{link}\",direction=\"received\"}}")];
        link_sent +=
            after[&format!("mptcp_relay_link_bytes_total{{link=\"{link}\",direction=\"sent\"}}")];
        assert!(after.contains_key(&format!("mptcp_relay_link_rtt_seconds{{link=\"{link}\"}}")));
    }
    assert!(link_received >= DOWNLOAD as f64, "{link_received}");
    assert!(link_sent >= UPLOAD as f64, "{link_sent}");
    let connections: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("mptcp_relay_mptcp_connections{"))
        .map(|(_, v)| v)
        .sum();
    assert!(connections >= 1.0);
    assert_eq!(
        attribute(&dom, "id=\"conn-count\"", "data-total"),
        connections.to_string()
    );
    let by_count = |n: &str| after[&format!("mptcp_relay_mptcp_connections{{subflows=\"{n}\"}}")];
    assert_eq!(by_count("8+"), 0.0);
    let subflows: f64 = (0..8)
        .map(|n| by_count(&n.to_string()) * f64::from(n))
        .sum();
    assert_eq!(
        dom.matches("<tr class=\"subflow\">").count() as f64,
        subflows,
        "every subflow listed"
    );

    // Recent events: the listener, and the failure at warn level.
    assert!(
        dom.contains("listening: LocalSocks5 on 198.19.1.1:1080"),
        "{dom}"
    );
    assert!(
        dom.contains("<li class=\"WARN\">") && dom.contains("relay failures: err_"),
        "{dom}"
    );

    // What the page polls: only what it does not have yet.
    let full: serde_json::Value = serde_json::from_str(&get(&rp.local, "/status.json")).unwrap();
    assert_eq!(full["links_by"], "local address");
    assert_eq!(
        full["counters"]["bytes_down"].as_f64(),
        Some(after["mptcp_relay_bytes_total{direction=\"down\"}"])
    );
    let (points, events) = (
        full["points"].as_array().unwrap(),
        full["events"].as_array().unwrap(),
    );
    assert!(points.len() >= 3 && !events.is_empty(), "{full}");
    let (t, seq) = (&points.last().unwrap()["t"], &events.last().unwrap()["seq"]);
    let newer: serde_json::Value = serde_json::from_str(&get(
        &rp.local,
        &format!("/status.json?points_after={t}&events_after={seq}"),
    ))
    .unwrap();
    let newer_points = newer["points"].as_array().unwrap();
    assert!(newer_points.len() <= 2, "{newer}");
    assert!(
        newer_points.iter().all(|p| p["t"].as_u64() > t.as_u64()),
        "{newer}"
    );
    assert!(
        newer["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["seq"].as_u64() > seq.as_u64())
    );

    // The remote relay's side: the links are the local relay's addresses
    // (all subflows reach its one address).
    let remote = samples(&get(&rp.remote, "/metrics"));
    for link in ["198.18.0.1", "198.18.1.1"] {
        assert!(
            remote.get(&format!("mptcp_relay_link_subflows{{link=\"{link}\"}}")) >= Some(&1.0),
            "{remote:?}"
        );
    }
}
