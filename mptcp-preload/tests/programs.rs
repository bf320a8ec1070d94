//! Real, unmodified programs under `LD_PRELOAD=libmptcp_preload.so`, in
//! network namespaces of the test bed: iperf3, curl, wget, Python (asyncio,
//! http.server, a TCP_MD5SIG user, subprocess), dante, nginx and a C program
//! for descriptor reuse (tests/c/stale_state.c).
//!
//! Needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN) and the Debian packages
//! iperf3, curl, wget, python3, dante-server, nginx and a C compiler (cc).

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use mptcp_testbed::{Host, danted_config, require_privileges};
use support::{Daemon, RELAY_ONLY_NAME, SlowPort, TestRelay, preloaded, python};

fn privileged() {
    require_privileges().expect("these tests need root: run them as root (CI does)");
}

fn check(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("mptcp-preload-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pseudo-random bytes (xorshift), so corruption cannot hide in a pattern.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `python3 -m http.server` serving `dir` on `bind`:`port` in `host`.
fn http_server(host: &Host, dir: &Path, bind: &str, port: u16, preload: bool) -> Daemon {
    let py = python();
    let mut cmd = if preload {
        preloaded(host, &py, &[])
    } else {
        host.command(&py)
    };
    cmd.args([
        "-m",
        "http.server",
        "--bind",
        bind,
        &port.to_string(),
        "--directory",
    ])
    .arg(dir);
    Daemon::spawn(&mut cmd)
}

/// `bits_per_second` of the receiver summary of `iperf3 --json`.
fn iperf3_received_bps(json: &str) -> f64 {
    let at = json
        .find("\"sum_received\"")
        .expect("iperf3 JSON has sum_received");
    let rest = &json[at..];
    let key = "\"bits_per_second\":";
    let start = rest.find(key).expect("bits_per_second") + key.len();
    let number: String = rest[start..]
        .trim_start()
        .chars()
        .take_while(|c| {
            c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == 'E' || *c == '+' || *c == '-'
        })
        .collect();
    number.parse().expect("a number")
}

fn iperf3_run(bed: &mptcp_testbed::TwoLinks, preload: bool) -> f64 {
    let server_addr = bed.server_addr().to_string();
    let mut server = if preload {
        preloaded(&bed.server, "iperf3", &[])
    } else {
        bed.server.command("iperf3")
    };
    server.args(["-s", "-B", &server_addr]);
    let server = Daemon::spawn(&mut server);
    // Retry until the server listens, instead of probing (a probe would be
    // a test of its own to the server).
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        let mut client = if preload {
            preloaded(&bed.client, "iperf3", &[])
        } else {
            bed.client.command("iperf3")
        };
        let out = client
            .args(["-c", &server_addr, "-t", "3", "-O", "1", "--json"])
            .output()
            .unwrap();
        // A run that ends without the receiver's summary (seen once under
        // a full test run's load) is measured again.
        let json = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && json.contains("\"sum_received\"") {
            drop(server);
            return iperf3_received_bps(&json);
        }
    }
    panic!(
        "iperf3 client never connected; server said: {}",
        server.stop()
    );
}

#[test]
fn iperf3_both_ends_preloaded_uses_both_links() {
    privileged();
    let bed = mptcp_testbed::two_links(2, Some(20)).unwrap();
    let tcp = iperf3_run(&bed, false);
    let mptcp = iperf3_run(&bed, true);
    let ratio = mptcp / tcp;
    eprintln!(
        "iperf3 over 2 x 20 Mbit/s: plain {:.1} Mbit/s, preloaded {:.1} Mbit/s, ratio {ratio:.2}",
        tcp / 1e6,
        mptcp / 1e6
    );
    assert!(
        ratio >= 1.7,
        "preloaded iperf3 reached only {ratio:.2} x single TCP"
    );
}

/// dante (`danted`) as the relay, itself preloaded so that it accepts MPTCP.
fn dante(host: &Host, dir: &Path, internal: SocketAddr, external: Ipv4Addr) -> Daemon {
    let conf = dir.join("danted.conf");
    std::fs::write(&conf, danted_config(internal, external, "stderr")).unwrap();
    let pid = dir.join("danted.pid");
    let mut cmd = preloaded(host, "/usr/sbin/danted", &[]);
    cmd.arg("-f")
        .arg(&conf)
        .arg("-p")
        .arg(&pid)
        .arg("-N")
        .arg("1");
    Daemon::spawn(&mut cmd)
}

#[test]
fn curl_wget_and_asyncio_reach_a_destination_behind_dante_and_the_project_relay() {
    privileged();
    let rp = mptcp_testbed::relay_path(2, None).unwrap();
    let files = TempDir::new("www");
    let body = payload(3 << 20);
    std::fs::write(files.0.join("blob"), &body).unwrap();
    let dest = SocketAddr::new(IpAddr::V4(rp.dest_addr()), 8000);
    let server = http_server(&rp.dest, &files.0, &rp.dest_addr().to_string(), 8000, false);
    rp.dest.wait_listening(dest.port()).unwrap();
    let conf = TempDir::new("dante");
    let relay_addr = rp.remote_addr();
    let relay_listen = SocketAddr::new(IpAddr::V4(relay_addr), 1080);
    let relay = dante(&rp.remote, &conf.0, relay_listen, rp.remote_egress_addr());
    rp.remote.wait_listening(relay_listen.port()).unwrap();
    // dante sets SO_OOBINLINE on its listener, which MPTCP refuses and the
    // library ignores (no urgent data on MPTCP): the listener stays MPTCP.
    let mptcp_listeners = rp.remote.exec("ss", &["-HMln"]).unwrap();
    assert!(
        mptcp_listeners.contains(&relay_listen.to_string()),
        "dante's listener is not MPTCP: {mptcp_listeners:?}"
    );

    let relay_env = format!("{relay_addr}:1080");
    let env = [
        ("MPTCP_PRELOAD_MODE", "relay"),
        ("MPTCP_PRELOAD_RELAY", relay_env.as_str()),
    ];
    let url = format!("http://{dest}/blob");
    let out_dir = TempDir::new("downloads");
    let curl_out = out_dir.0.join("curl");
    let out = preloaded(&rp.local, "curl", &env)
        .args(["-sS", "--max-time", "20", "-o"])
        .arg(&curl_out)
        .arg(&url)
        .output()
        .unwrap();
    check(&out, "curl");
    assert!(
        std::fs::read(&curl_out).unwrap() == body,
        "curl's download differs"
    );

    let wget_out = out_dir.0.join("wget");
    let out = preloaded(&rp.local, "wget", &env)
        .args(["-q", "--tries=1", "--timeout=20", "-O"])
        .arg(&wget_out)
        .arg(&url)
        .output()
        .unwrap();
    check(&out, "wget");
    assert!(
        std::fs::read(&wget_out).unwrap() == body,
        "wget's download differs"
    );
    // asyncio learns of its connect from epoll: its request follows the
    // SOCKS5 request before dante has answered.
    let want = sha256_hex(&rp.local, &body);
    let asyncio_through = |env: &[(&str, &str)], what: &str| {
        let out = preloaded(&rp.local, &python(), env)
            .args(["-c", ASYNCIO_CLIENT, &dest.ip().to_string(), "8000"])
            .output()
            .unwrap();
        let stdout = check(&out, what);
        assert!(
            stdout.contains(&format!("sha256 {want}")),
            "{what}: {stdout}"
        );
    };
    asyncio_through(&env, "asyncio through dante");

    // The project's own relay (mptcp_core::relay, remote role, MPTCP
    // listener, username/password), with curl.
    let relay_config = mptcp_core::relay::Config::from_toml(&format!(
        "[remote]\nlisten = [\"{relay_addr}:1081\"]\nallow_destinations = [\"198.19.0.0/16\"]\n\
         users = [{{ username = \"alice\", password = \"s3cret\" }}]\n"
    ))
    .unwrap();
    let own_relay = rp
        .remote
        .run(|| mptcp_core::relay::Relay::start(relay_config))
        .unwrap();
    let own_env = format!("{relay_addr}:1081");
    let env = [
        ("MPTCP_PRELOAD_MODE", "relay"),
        ("MPTCP_PRELOAD_RELAY", own_env.as_str()),
        ("MPTCP_PRELOAD_USER", "alice"),
        ("MPTCP_PRELOAD_PASSWORD", "s3cret"),
    ];
    let own_out = out_dir.0.join("own-relay");
    let out = preloaded(&rp.local, "curl", &env)
        .args(["-sS", "--max-time", "20", "-o"])
        .arg(&own_out)
        .arg(&url)
        .output()
        .unwrap();
    check(&out, "curl through the project's relay");
    assert!(
        std::fs::read(&own_out).unwrap() == body,
        "curl's download differs"
    );
    asyncio_through(&env, "asyncio through the project's relay");
    let stats = own_relay.shutdown(Duration::from_secs(2));
    assert_eq!(stats.relayed, 2, "{stats}");

    // All requests reached the destination from the relays' side, not
    // directly from the client.
    let log = server.stop();
    let hits: Vec<&str> = log.lines().filter(|l| l.contains("GET /blob")).collect();
    assert_eq!(hits.len(), 5, "http.server log: {log}");
    assert!(
        hits.iter().all(|l| l.starts_with("198.19.2.1 ")),
        "not relayed: {log}"
    );
    let relay_log = relay.stop();
    assert!(!relay_log.contains("error"), "dante: {relay_log}");
}

/// nginx (preloaded with `env`) listening on 127.0.0.1:8080 in `host`,
/// proxying to `upstream`; everything it writes lives in `dir`.
fn nginx_proxy(host: &Host, dir: &Path, env: &[(&str, &str)], upstream: &str) -> Daemon {
    nginx_with_locations(
        host,
        dir,
        env,
        &format!("location / {{ proxy_pass {upstream}; }}"),
    )
}

/// nginx (preloaded with `env`, one worker) listening on 127.0.0.1:8080 in
/// `host` with the `locations` given; everything it writes lives in `dir`.
fn nginx_with_locations(host: &Host, dir: &Path, env: &[(&str, &str)], locations: &str) -> Daemon {
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             server {{ listen 127.0.0.1:8080; {locations} }}\n}}\n"
        ),
    )
    .unwrap();
    let mut cmd = preloaded(host, "/usr/sbin/nginx", env);
    cmd.arg("-e")
        .arg("stderr")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf);
    Daemon::spawn(&mut cmd)
}

const ASYNCIO_CLIENT: &str = r#"
import asyncio, hashlib, sys
async def main(host, port):
    # A refusal by the relay shows in the connect or, on an event loop
    # that learns of its connect from epoll, in the first read.
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        peer = w.get_extra_info("peername")
        w.write(b"GET /blob HTTP/1.0\r\nHost: x\r\n\r\n")
        await w.drain()
        data = await asyncio.wait_for(r.read(), 10)
    except OSError as e:
        print("error", e.errno)
        return
    head, _, body = data.partition(b"\r\n\r\n")
    print("peer", peer[0], peer[1])
    print("status", head.split(b" ")[1].decode())
    print("sha256", hashlib.sha256(body).hexdigest())
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"#;

const BLOCKING_CLIENT: &str = r#"
import hashlib, socket, sys
s = socket.socket()
s.connect((sys.argv[1], int(sys.argv[2])))
print("peer", *s.getpeername())
s.sendall(b"GET /blob HTTP/1.0\r\nHost: x\r\n\r\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
print("sha256", hashlib.sha256(data.partition(b"\r\n\r\n")[2]).hexdigest())
"#;

fn sha256_hex(host: &Host, data: &[u8]) -> String {
    let out = host
        .command(&python())
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(data)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn asyncio_and_curl_through_an_authenticating_relay_ipv4_ipv6_and_remote_dns() {
    privileged();
    let bed = mptcp_testbed::two_links(2, None).unwrap();
    let files = TempDir::new("asyncio");
    let body = payload(256 << 10);
    std::fs::write(files.0.join("blob"), &body).unwrap();
    // The destinations are the server's own loopback: reachable only
    // through the relay that runs there.
    let _www = http_server(&bed.server, &files.0, "::", 8000, false);
    bed.server.wait_listening(8000).unwrap();
    let relay_addr = SocketAddr::new(IpAddr::V4(bed.server_addr()), 1081);
    let relay = TestRelay::start(&bed.server, relay_addr, "alice", "s3cret");
    let relay_env = relay_addr.to_string();
    let env = |password: &'static str| {
        vec![
            ("MPTCP_PRELOAD_MODE", "relay"),
            ("MPTCP_PRELOAD_RELAY", relay_env.as_str()),
            ("MPTCP_PRELOAD_USER", "alice"),
            ("MPTCP_PRELOAD_PASSWORD", password),
            ("MPTCP_PRELOAD_INCLUDE", "127.0.0.0/8,::1"),
            ("MPTCP_PRELOAD_EXCLUDE", ""),
            ("MPTCP_PRELOAD_LOG", "debug"),
        ]
    };
    let want = sha256_hex(&bed.client, &body);
    for host in ["127.0.0.1", "::1"] {
        let out = preloaded(&bed.client, &python(), &env("s3cret"))
            .args(["-c", ASYNCIO_CLIENT, host, "8000"])
            .output()
            .unwrap();
        let stdout = check(&out, "asyncio client");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout.contains(&format!("peer {host} 8000")),
            "{stdout}\n{stderr}"
        );
        assert!(stdout.contains("status 200"), "{stdout}");
        assert!(stdout.contains(&format!("sha256 {want}")), "{stdout}");
    }
    assert_eq!(
        relay.mptcp_connections(),
        2,
        "the hops to the relay use MPTCP"
    );

    // nginx as a reverse proxy: its upstream connect is non-blocking, on
    // edge-triggered epoll, and goes through the relay.
    let nginx_dir = TempDir::new("nginx");
    let nginx = nginx_proxy(
        &bed.client,
        &nginx_dir.0,
        &env("s3cret"),
        "http://127.0.0.1:8000",
    );
    let proxy = SocketAddr::from(([127, 0, 0, 1], 8080));
    bed.client.wait_listening(proxy.port()).unwrap();
    let download = TempDir::new("nginx-download");
    for round in 0..3 {
        let out = bed
            .client
            .command("curl")
            .args(["-sS", "--max-time", "10", "-o"])
            .arg(download.0.join("blob"))
            .arg(format!("http://{proxy}/blob"))
            .output()
            .unwrap();
        check(&out, &format!("curl through nginx, round {round}"));
        assert!(
            std::fs::read(download.0.join("blob")).unwrap() == body,
            "nginx's response differs"
        );
    }
    let nginx_log = nginx.stop();
    assert!(!nginx_log.contains("[error]"), "nginx: {nginx_log}");
    assert_eq!(
        relay.mptcp_connections(),
        5,
        "nginx's upstream hops use MPTCP"
    );

    // An IPv6 relay for IPv4 sockets (rebuilt as IPv6 before connecting);
    // run on the server, where the relay listens on ::1.
    let v6_relay = TestRelay::start(
        &bed.server,
        "[::1]:1082".parse().unwrap(),
        "alice",
        "s3cret",
    );
    let server_dest = bed.server_addr().to_string();
    let out = preloaded(
        &bed.server,
        &python(),
        &[
            ("MPTCP_PRELOAD_MODE", "relay"),
            ("MPTCP_PRELOAD_RELAY", "[::1]:1082"),
            ("MPTCP_PRELOAD_USER", "alice"),
            ("MPTCP_PRELOAD_PASSWORD", "s3cret"),
        ],
    )
    .args(["-c", ASYNCIO_CLIENT, &server_dest, "8000"])
    .output()
    .unwrap();
    let stdout = check(&out, "asyncio client with an IPv6 relay");
    assert!(stdout.contains(&format!("sha256 {want}")), "{stdout}");
    assert!(
        stdout.contains(&format!("peer {server_dest} 8000")),
        "{stdout}"
    );
    assert_eq!(v6_relay.mptcp_connections(), 1);

    // Remote DNS: the name exists only for the relay.
    let mut dns_env = env("s3cret");
    dns_env.push(("MPTCP_PRELOAD_DNS", "remote"));
    let out = preloaded(&bed.client, &python(), &dns_env)
        .args(["-c", ASYNCIO_CLIENT, RELAY_ONLY_NAME, "8000"])
        .output()
        .unwrap();
    let stdout = check(&out, "asyncio client with remote DNS");
    assert!(stdout.contains(&format!("sha256 {want}")), "{stdout}");
    assert!(
        stdout.contains("peer 240."),
        "placeholder address: {stdout}"
    );
    let download = TempDir::new("curl-dns");
    let out = preloaded(&bed.client, "curl", &dns_env)
        .args(["-sS", "--max-time", "20", "-o"])
        .arg(download.0.join("blob"))
        .arg(format!("http://{RELAY_ONLY_NAME}:8000/blob"))
        .output()
        .unwrap();
    check(&out, "curl with remote DNS");
    assert!(
        std::fs::read(download.0.join("blob")).unwrap() == body,
        "curl's download differs"
    );

    // A blocking connect: the whole hop happens inside connect().
    let out = preloaded(&bed.client, &python(), &env("s3cret"))
        .args(["-c", BLOCKING_CLIENT, "127.0.0.1", "8000"])
        .output()
        .unwrap();
    let stdout = check(&out, "blocking client");
    assert!(stdout.contains("peer 127.0.0.1 8000"), "{stdout}");
    assert!(stdout.contains(&format!("sha256 {want}")), "{stdout}");

    // The relay's answer becomes the errno: nothing listens on port 8999.
    let out = preloaded(&bed.client, &python(), &env("s3cret"))
        .args(["-c", ASYNCIO_CLIENT, "127.0.0.1", "8999"])
        .output()
        .unwrap();
    let stdout = check(&out, "asyncio client to a closed port");
    assert!(
        stdout.contains(&format!("error {}", libc::ECONNREFUSED)),
        "{stdout}"
    );

    // curl learns of its connect through poll: the refusal ends it there.
    let out = preloaded(&bed.client, "curl", &env("s3cret"))
        .args(["-sS", "--max-time", "10", "http://127.0.0.1:8999/"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl to a closed port: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = preloaded(&bed.client, &python(), &env("wrong"))
        .args(["-c", ASYNCIO_CLIENT, "127.0.0.1", "8000"])
        .output()
        .unwrap();
    let stdout = check(&out, "asyncio client with a wrong password");
    assert!(
        stdout.contains(&format!("error {}", libc::EACCES)),
        "{stdout}"
    );
}

/// `curl` (not preloaded) fetching `url` in `host`: the body and how long
/// it took.
fn timed_fetch(host: &Host, url: &str) -> (Output, Duration) {
    let start = std::time::Instant::now();
    let out = host
        .command("curl")
        .args(["-sS", "--max-time", "20", url])
        .output()
        .unwrap();
    (out, start.elapsed())
}

#[test]
fn a_slow_relayed_upstream_does_not_delay_nginxs_other_requests() {
    privileged();
    let host = Host::new("nginx-slow").unwrap();
    let files = TempDir::new("nginx-slow-www");
    std::fs::write(files.0.join("page"), b"the upstream's page\n").unwrap();
    let (fast_port, slow_port) = (8001, 8002);
    let _fast = http_server(&host, &files.0, "127.0.0.1", fast_port, false);
    let _slow = http_server(&host, &files.0, "127.0.0.1", slow_port, false);
    host.wait_listening(fast_port).unwrap();
    host.wait_listening(slow_port).unwrap();
    // The relay answers CONNECT for the slow upstream after 3 s.
    let relay_addr: SocketAddr = "127.0.0.1:1080".parse().unwrap();
    let slow = SlowPort {
        port: slow_port,
        delay: Duration::from_secs(3),
    };
    let relay = TestRelay::start_with_slow_port(&host, relay_addr, "alice", "s3cret", Some(slow));
    let relay_env = relay_addr.to_string();
    let nginx_dir = TempDir::new("nginx-slow");
    let nginx = nginx_with_locations(
        &host,
        &nginx_dir.0,
        &relay_mode_env(&relay_env),
        &format!(
            "location /fast/ {{ proxy_pass http://127.0.0.1:{fast_port}/; }} \
             location /slow/ {{ proxy_pass http://127.0.0.1:{slow_port}/; }}"
        ),
    );
    host.wait_listening(8080).unwrap();

    let slow_host = host.clone();
    let slow_request =
        std::thread::spawn(move || timed_fetch(&slow_host, "http://127.0.0.1:8080/slow/page"));
    // Let nginx's worker start its connect to the slow upstream.
    std::thread::sleep(Duration::from_millis(300));
    // Fast requests made while the slow one is pending (up to three, for a
    // loaded machine): 3 s each when nginx's worker waits for the slow hop,
    // and then the slow one is no longer pending when they end.
    let (mut fast_times, mut fetches) = (Vec::new(), 0);
    while fast_times.len() < 3 && !slow_request.is_finished() {
        let (out, took) = timed_fetch(&host, "http://127.0.0.1:8080/fast/page");
        fetches += 1;
        assert_eq!(check(&out, "the fast request"), "the upstream's page\n");
        if !slow_request.is_finished() {
            fast_times.push(took);
        }
    }
    let (out, slow_took) = slow_request.join().unwrap();
    assert_eq!(check(&out, "the slow request"), "the upstream's page\n");
    assert!(
        slow_took >= Duration::from_secs(3),
        "the relay held the slow one: {slow_took:?}"
    );
    assert!(
        fast_times.iter().any(|t| *t < Duration::from_secs(1)),
        "fast requests while the slow one was pending: {fast_times:?}"
    );
    let nginx_log = nginx.stop();
    assert!(!nginx_log.contains("[error]"), "nginx: {nginx_log}");
    assert_eq!(
        relay.mptcp_connections(),
        1 + fetches,
        "every hop uses MPTCP"
    );

    // A level-triggered loop (asyncio) meanwhile: the relay's first
    // answers (method, authentication) came at once, its reply to CONNECT
    // 3 s later; consuming them leaves nothing readable, so
    // the loop sleeps instead of spinning on them.
    let out = preloaded(&host, &python(), &relay_mode_env(&relay_env))
        .args([
            "-c",
            ASYNCIO_CPU_PROGRAM,
            "127.0.0.1",
            &slow_port.to_string(),
        ])
        .output()
        .unwrap();
    let stdout = check(&out, "asyncio through the slow hop");
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(fields[..2], ["status", "200"], "{stdout}");
    let (took, cpu): (f64, f64) = (fields[3].parse().unwrap(), fields[5].parse().unwrap());
    assert!(took >= 3.0, "{stdout}");
    assert!(
        cpu < 1.0,
        "the event loop spun while the hop was pending: {stdout}"
    );
}

/// An asyncio HTTP/1.0 request; prints the status, the seconds it took
/// and the CPU seconds the process used while waiting.
const ASYNCIO_CPU_PROGRAM: &str = r#"
import asyncio, sys, time
async def main(host, port):
    start, cpu = time.monotonic(), time.process_time()
    r, w = await asyncio.open_connection(host, port)
    w.write(b"GET /page HTTP/1.0\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(r.read(), 20)
    status = data.split(b" ")[1].decode()
    print("status", status, "took", f"{time.monotonic() - start:.2f}", "cpu", f"{time.process_time() - cpu:.2f}")
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"#;

#[test]
fn preloaded_http_server_accepts_mptcp() {
    privileged();
    let bed = mptcp_testbed::two_links(2, None).unwrap();
    let files = TempDir::new("server");
    std::fs::write(files.0.join("index.html"), b"hello over MPTCP\n").unwrap();
    let addr = SocketAddr::new(IpAddr::V4(bed.server_addr()), 8000);
    let plain = SocketAddr::new(IpAddr::V4(bed.server_addr()), 8001);
    let _preloaded = http_server(&bed.server, &files.0, &addr.ip().to_string(), 8000, true);
    let _plain = http_server(&bed.server, &files.0, &addr.ip().to_string(), 8001, false);
    bed.server.wait_listening(addr.port()).unwrap();
    bed.server.wait_listening(plain.port()).unwrap();
    let fetch = |addr: SocketAddr| {
        bed.client.run(move || {
            let mut stream = mptcp_core::socket::connect(addr, mptcp_core::socket::Fallback::Fail)
                .expect("MPTCP connect");
            let mptcp = mptcp_core::socket::is_mptcp(stream.as_fd()).unwrap();
            stream
                .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            (mptcp, response)
        })
    };
    let (mptcp, response) = fetch(addr);
    assert!(
        response.starts_with("HTTP/1.0 200") && response.ends_with("hello over MPTCP\n"),
        "{response}"
    );
    assert!(mptcp, "the preloaded server did not accept MPTCP");
    let (mptcp, _) = fetch(plain);
    assert!(!mptcp, "control: the plain server falls back to TCP");
}

/// A server and a client on loopback that both protect their connection
/// with TCP_MD5SIG (BGP daemons do), then exchange a line. Prints the
/// protocols of both sockets.
const MD5_PROGRAM: &str = r#"
import socket, struct
def md5(sock):
    addr = struct.pack("=HH4s120x", socket.AF_INET, 0, socket.inet_aton("127.0.0.1"))
    key = b"bgp-secret"
    sock.setsockopt(socket.IPPROTO_TCP, 14, addr + struct.pack("=BBHI", 0, 0, len(key), 0) + key.ljust(80, b"\0"))
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
md5(srv)
srv.listen()
cli = socket.socket()
cli.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
md5(cli)
cli.settimeout(5)
cli.connect(srv.getsockname())
conn, _ = srv.accept()
cli.sendall(b"open\n")
assert conn.recv(5) == b"open\n"
assert cli.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
print("protocols", srv.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), cli.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))
"#;

#[test]
fn a_program_that_sets_tcp_md5sig_still_works() {
    privileged();
    let host = Host::new("md5").unwrap();
    let out = preloaded(&host, &python(), &[("MPTCP_PRELOAD_LOG", "info")])
        .args(["-c", MD5_PROGRAM])
        .output()
        .unwrap();
    let stdout = check(&out, "TCP_MD5SIG program");
    assert!(stdout.contains("protocols 6 6"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("TCP_MD5SIG").count(),
        1,
        "logged once: {stderr}"
    );

    // The same line, in a log file instead.
    let dir = TempDir::new("log");
    let log_file = dir.0.join("preload.log");
    let log_path = log_file.to_str().unwrap();
    let out = preloaded(
        &host,
        &python(),
        &[
            ("MPTCP_PRELOAD_LOG", "info"),
            ("MPTCP_PRELOAD_LOG_FILE", log_path),
        ],
    )
    .args(["-c", MD5_PROGRAM])
    .output()
    .unwrap();
    check(&out, "TCP_MD5SIG program logging to a file");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logged = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        logged
            .starts_with("mptcp-preload: setsockopt(TCP_MD5SIG) is not supported on MPTCP sockets"),
        "{logged}"
    );
}

#[test]
fn log_lines_stay_out_of_a_file_the_program_put_on_descriptor_2() {
    privileged();
    let host = Host::new("stderr").unwrap();
    let dir = TempDir::new("stderr");
    let data = dir.0.join("data");
    // The program's data file on descriptor 2, then a fallback that the
    // library reports at info level.
    let program = format!(
        "import os\nfd = os.open({:?}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\nos.dup2(fd, 2)\n{MD5_PROGRAM}",
        data.to_str().unwrap()
    );
    let out = preloaded(&host, &python(), &[("MPTCP_PRELOAD_LOG", "info")])
        .args(["-c", &program])
        .output()
        .unwrap();
    let stdout = check(&out, "program with its own descriptor 2");
    assert!(
        stdout.contains("protocols 6 6"),
        "the fallback happened: {stdout}"
    );
    let written = std::fs::read_to_string(&data).unwrap();
    assert!(!written.contains("mptcp-preload"), "{written}");
}

/// Connects through the relay three ways and prints, for each, how it
/// ended and after how many seconds: without a timeout of its own (the
/// library's MPTCP_PRELOAD_TIMEOUT applies), with Python's timeout (a
/// non-blocking connect and `poll`) and with `SO_SNDTIMEO` on a blocking
/// socket, then reads that socket with `SO_RCVTIMEO`.
const SILENT_RELAY_PROGRAM: &str = r#"
import socket, struct, sys, time
target = (sys.argv[1], int(sys.argv[2]))
def attempt(name, connect):
    start = time.monotonic()
    try:
        connect()
        result = "ok"
    except OSError as e:
        result = f"errno {e.errno}" if e.errno else type(e).__name__
    print(name, result, f"{time.monotonic() - start:.1f}")
attempt("blocking", lambda: socket.create_connection(target).close())
attempt("timeout", lambda: socket.create_connection(target, timeout=1).close())
s = socket.socket()
def sndtimeo():
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 1, 0))
    s.connect(target)
attempt("sndtimeo", sndtimeo)
def rcvtimeo():
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 1, 0))
    s.recv(1)
attempt("rcvtimeo", rcvtimeo)
"#;

/// The seconds `line` (of [`SILENT_RELAY_PROGRAM`]) reports for `name`,
/// after checking how the attempt ended.
fn attempt_seconds(stdout: &str, name: &str, ended: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} line in {stdout}"));
    let (outcome, seconds) = line[name.len() + 1..].rsplit_once(' ').unwrap();
    assert_eq!(outcome, ended, "{stdout}");
    seconds.parse().unwrap()
}

#[test]
fn a_relay_that_does_not_answer_ends_in_the_programs_own_timeout() {
    privileged();
    let host = Host::new("silent-relay").unwrap();
    // Accepts connections (the kernel does, into the backlog) and never
    // answers.
    let silent = host.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let relay = silent.local_addr().unwrap().to_string();
    let env = [
        ("MPTCP_PRELOAD_MODE", "relay"),
        ("MPTCP_PRELOAD_RELAY", relay.as_str()),
        ("MPTCP_PRELOAD_TIMEOUT", "3"),
        ("MPTCP_PRELOAD_INCLUDE", "127.0.0.1/32"),
        ("MPTCP_PRELOAD_EXCLUDE", ""),
    ];
    let out = preloaded(&host, &python(), &env)
        .args(["-c", SILENT_RELAY_PROGRAM, "127.0.0.1", "9"])
        .output()
        .unwrap();
    let stdout = check(&out, "connects through a silent relay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The program's own timeouts (1 s) end the hop, not the library's (3 s);
    // the bounds leave room for a loaded machine.
    let blocking = attempt_seconds(&stdout, "blocking", &format!("errno {}", libc::ETIMEDOUT));
    assert!((2.9..5.0).contains(&blocking), "{stdout}");
    let timeout = attempt_seconds(&stdout, "timeout", "TimeoutError");
    assert!((0.9..2.5).contains(&timeout), "{stdout}");
    let sndtimeo = attempt_seconds(&stdout, "sndtimeo", &format!("errno {}", libc::EINPROGRESS));
    assert!((0.9..2.5).contains(&sndtimeo), "{stdout}");
    let rcvtimeo = attempt_seconds(&stdout, "rcvtimeo", &format!("errno {}", libc::EAGAIN));
    assert!((0.9..2.5).contains(&rcvtimeo), "{stdout}");
    // Only the library's own timeout is the library's to log.
    assert_eq!(
        stderr
            .matches(&format!(
                "the relay {relay} did not complete the SOCKS5 exchange within 3.0 s"
            ))
            .count(),
        1,
        "{stderr}"
    );

    // curl's connect timeout (a non-blocking connect and poll).
    let start = std::time::Instant::now();
    let out = preloaded(&host, "curl", &env)
        .args(["-sS", "--connect-timeout", "1", "http://127.0.0.1:9/"])
        .output()
        .unwrap();
    let took = start.elapsed();
    assert_eq!(
        out.status.code(),
        Some(28),
        "curl's timeout: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(3), "curl took {took:?}");

    // wget's (a non-blocking connect and select).
    let start = std::time::Instant::now();
    let out = preloaded(&host, "wget", &env)
        .args(["-q", "-O", "/dev/null", "--tries=1", "--connect-timeout=1"])
        .arg("http://127.0.0.1:9/")
        .output()
        .unwrap();
    let took = start.elapsed();
    assert_eq!(
        out.status.code(),
        Some(4),
        "wget's network failure: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&took),
        "wget took {took:?}"
    );
    drop(silent);
}

/// Listener and client on loopback; prints both protocols.
const LOOPBACK_PROGRAM: &str = r#"
import socket
srv = socket.socket(socket.AF_INET6)
srv.bind(("::1", 0)); srv.listen()
cli = socket.create_connection(srv.getsockname()[:2], timeout=5)
conn, _ = srv.accept()
cli.sendall(b"x"); assert conn.recv(1) == b"x"
print("protocols", srv.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), cli.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))
"#;

#[test]
fn programs_work_over_tcp_when_mptcp_is_disabled() {
    privileged();
    let host = Host::new("no-mptcp").unwrap();
    let run = |host: &Host| {
        let out = preloaded(host, &python(), &[("MPTCP_PRELOAD_LOG", "info")])
            .args(["-c", LOOPBACK_PROGRAM])
            .output()
            .unwrap();
        (
            check(&out, "loopback program"),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (stdout, _) = run(&host);
    assert!(
        stdout.contains("protocols 262 262"),
        "control, MPTCP on: {stdout}"
    );
    host.sysctl("net.mptcp.enabled", "0").unwrap();
    let (stdout, stderr) = run(&host);
    assert!(stdout.contains("protocols 6 6"), "{stdout}");
    assert!(stderr.contains("net.mptcp.enabled=0"), "{stderr}");
}

#[test]
fn a_bad_environment_value_leaves_the_program_working() {
    privileged();
    let host = Host::new("bad-env").unwrap();
    for (var, value) in [
        ("MPTCP_PRELOAD_MODE", "turbo"),
        ("MPTCP_PRELOAD_INCLUDE", "10.0.0.0/40"),
    ] {
        let out = preloaded(
            &host,
            &python(),
            &[(var, value), ("MPTCP_PRELOAD_RELAY", "198.18.0.2:1080")],
        )
        .args(["-c", LOOPBACK_PROGRAM])
        .output()
        .unwrap();
        let stdout = check(&out, "program with a bad variable");
        assert!(
            stdout.contains("protocols 6 6"),
            "the library must be off: {stdout}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("mptcp-preload: {var}=")),
            "{stderr}"
        );
    }
}

/// Connects to each `host:port` argument, printing `host ok` or `host
/// errno N`.
const CONNECT_PROGRAM: &str = r#"
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        print(host, "ok")
    except OSError as e:
        print(host, "errno", e.errno)
"#;

#[test]
fn an_unusable_relay_fails_closed_unless_the_user_opts_out() {
    privileged();
    let host = Host::new("fail-closed").unwrap();
    // A destination outside 127.0.0.0/8 (on the host's lo device).
    host.ip(&["addr", "add", "198.18.7.1/32", "dev", "lo"])
        .unwrap();
    let listeners = host.run(|| {
        [
            std::net::TcpListener::bind("198.18.7.1:0").unwrap(),
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        ]
    });
    let targets: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let run = |env: &[(&str, &str)]| {
        let out = preloaded(&host, &python(), env)
            .args(["-c", CONNECT_PROGRAM])
            .args(&targets)
            .output()
            .unwrap();
        let stdout = check(&out, "connect program");
        (stdout, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // A host name where the library takes IP literals only.
    let unusable = [
        ("MPTCP_PRELOAD_MODE", "relay"),
        ("MPTCP_PRELOAD_RELAY", "relay.example:1080"),
    ];
    let (stdout, stderr) = run(&unusable);
    assert_eq!(
        stdout,
        format!("198.18.7.1 errno {}\n127.0.0.1 ok\n", libc::ENETUNREACH),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("mptcp-preload: MPTCP_PRELOAD_RELAY=\"relay.example:1080\" is invalid")
            && stderr.contains("MPTCP_PRELOAD_FAIL_OPEN=1"),
        "{stderr}"
    );

    let mut fail_open = unusable.to_vec();
    fail_open.push(("MPTCP_PRELOAD_FAIL_OPEN", "1"));
    let (stdout, stderr) = run(&fail_open);
    assert_eq!(stdout, "198.18.7.1 ok\n127.0.0.1 ok\n", "{stderr}");
    assert!(stderr.contains("the library is disabled"), "{stderr}");
}

/// Threads create and close sockets while the main thread forks; each
/// child creates a socket and exits. A lock held across fork would hang a
/// child (caught by the timeout).
const FORK_PROGRAM: &str = r#"
import os, socket, threading, time
stop = False
def churn():
    while not stop:
        socket.socket().close()
threads = [threading.Thread(target=churn) for _ in range(4)]
for t in threads: t.start()
for _ in range(200):
    pid = os.fork()
    if pid == 0:
        s = socket.socket()
        os._exit(0 if s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == 262 else 1)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
stop = True
for t in threads: t.join()
print("forks ok")
"#;

#[test]
fn fork_from_a_multithreaded_program_does_not_hang() {
    privileged();
    let host = Host::new("fork").unwrap();
    let out = preloaded(&host, "timeout", &[])
        .args(["20", &python(), "-c", FORK_PROGRAM])
        .output()
        .unwrap();
    let stdout = check(&out, "fork program");
    assert!(stdout.contains("forks ok"), "{stdout}");
}

/// The reproducer of issue 16: a `vfork` child (CPython's `subprocess`)
/// runs the hooked `close` in the parent's memory; the socket must still be
/// rebuilt as TCP for an option MPTCP refuses (TCP_USER_TIMEOUT on 6.18).
/// Then the same with a thread that spawns all along while the main thread
/// makes sockets.
const SUBPROCESS_PROGRAM: &str = r#"
import socket, subprocess, threading
s = socket.socket()
subprocess.run(["true"])
s.setsockopt(socket.IPPROTO_TCP, 18, 5000)
print("after subprocess", s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))
stop = False
def spawn():
    while not stop:
        subprocess.run(["true"])
t = threading.Thread(target=spawn)
t.start()
protocols = set()
for _ in range(300):
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, 18, 5000)
    protocols.add(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))
    s.close()
stop = True
t.join()
print("while spawning", *sorted(protocols))
"#;

#[test]
fn a_vfork_child_does_not_touch_the_parents_state() {
    privileged();
    let host = Host::new("vfork").unwrap();
    let out = preloaded(&host, &python(), &[])
        .args(["-c", SUBPROCESS_PROGRAM])
        .output()
        .unwrap();
    let stdout = check(&out, "subprocess program");
    assert!(stdout.contains("after subprocess 6\n"), "{stdout}");
    assert!(stdout.contains("while spawning 6\n"), "{stdout}");
}

/// Relay mode: 100 concurrent asyncio connections through the relay while
/// a thread spawns subprocesses (vfork) all along; each writes a line as
/// soon as its connect finished (before the relay's answer can have been
/// read) and expects it back from the destination. Prints how many got it,
/// with the right peer address.
const ASYNCIO_SPAWNING_PROGRAM: &str = r#"
import asyncio, subprocess, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
stop = False
def spawn():
    while not stop:
        subprocess.run(["true"])
t = threading.Thread(target=spawn)
t.start()
async def one(i):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 20)
        peer = writer.get_extra_info("peername")[:2]
        writer.write(b"%d\n" % i)
        line = await asyncio.wait_for(reader.readline(), 20)
        writer.close()
        return line == b"hello %d\n" % i and peer == (host, port)
    except OSError:
        return False
async def main():
    return sum(await asyncio.gather(*(one(i) for i in range(100))))
ok = asyncio.run(main())
stop = True
t.join()
print("ok", ok)
"#;

#[test]
fn relayed_asyncio_connections_survive_a_thread_that_spawns_subprocesses() {
    privileged();
    let host = Host::new("relay-spawn").unwrap();
    let relay_addr: SocketAddr = "127.0.0.1:1080".parse().unwrap();
    let relay = TestRelay::start(&host, relay_addr, "alice", "s3cret");
    let dest = host.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let port = dest.local_addr().unwrap().port().to_string();
    let greeter = std::thread::spawn(move || {
        for stream in dest.incoming().take(100) {
            let _ = stream.and_then(|mut s| {
                let mut line = Vec::new();
                let mut reader = std::io::BufReader::new(s.try_clone()?);
                std::io::BufRead::read_until(&mut reader, b'\n', &mut line)?;
                s.write_all(&[b"hello ", &line[..]].concat())
            });
        }
    });
    let relay_env = relay_addr.to_string();
    let env = relay_mode_env(&relay_env);
    let out = preloaded(&host, &python(), &env)
        .args(["-c", ASYNCIO_SPAWNING_PROGRAM, "127.0.0.1", &port])
        .output()
        .unwrap();
    let stdout = check(&out, "asyncio with a spawning thread");
    assert_eq!(
        stdout,
        "ok 100\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(relay.mptcp_connections(), 100);
    greeter.join().unwrap();
}

/// `tests/c/<name>.c`, compiled into `dir`.
fn c_program(dir: &Path, name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/c/{name}.c"));
    let exe = dir.join(name);
    let out = std::process::Command::new("cc")
        .args(["-Wall", "-Wextra", "-Werror", "-O1", "-o"])
        .arg(&exe)
        .arg(&source)
        .output()
        .expect("cc (gcc) must be installed");
    check(&out, &format!("cc {name}.c"));
    exe
}

/// Runs one case of the C program under the library and checks it passed.
fn stale_state_case(host: &Host, exe: &Path, case: &str, args: &[&str], env: &[(&str, &str)]) {
    let out = preloaded(host, exe.to_str().unwrap(), env)
        .arg(case)
        .args(args)
        .output()
        .unwrap();
    let stdout = check(&out, case);
    assert_eq!(stdout, format!("{case} ok\n"));
}

#[test]
fn closes_the_library_cannot_see_leave_no_state_behind() {
    privileged();
    let host = Host::new("unseen-close").unwrap();
    let dir = TempDir::new("stale-state");
    let exe = c_program(&dir.0, "stale_state");
    for case in [
        "closefrom",
        "close_range",
        "syscall_close",
        "fclose_fdopen",
        "dup_before_rebuild",
        "vfork",
        "fork",
    ] {
        stale_state_case(&host, &exe, case, &[], &[]);
    }

    // Relay mode: a relayed socket closed by closefrom, its number reused
    // by a pipe, whose getpeername must be ENOTSOCK.
    let relay_addr: SocketAddr = "127.0.0.1:1080".parse().unwrap();
    let relay = TestRelay::start(&host, relay_addr, "alice", "s3cret");
    let dest = host.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let port = dest.local_addr().unwrap().port().to_string();
    let relay_env = relay_addr.to_string();
    let env = relay_mode_env(&relay_env);
    stale_state_case(&host, &exe, "relay_pipe", &[&port], &env);
    assert_eq!(
        relay.mptcp_connections(),
        1,
        "the connect went through the relay"
    );
}

/// What the library adds to the resident set of a program that keeps
/// `count` sockets open (bytes per socket), for a `many_sockets.c` mode.
fn table_bytes_per_socket(host: &Host, exe: &Path, mode: &str, count: usize) -> f64 {
    let growth = |preload: bool| {
        let mut cmd = if preload {
            preloaded(host, exe.to_str().unwrap(), &[])
        } else {
            host.command(exe.to_str().unwrap())
        };
        let out = cmd.args([mode, &count.to_string()]).output().unwrap();
        let stdout = check(&out, &format!("many_sockets {mode}"));
        let kib: f64 = stdout
            .trim()
            .strip_prefix("rss_growth_kib ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
        kib * 1024.0
    };
    let (plain, preloaded) = (growth(false), growth(true));
    let per_socket = (preloaded - plain) / count as f64;
    eprintln!(
        "{count} sockets, {mode}: RSS grows {:.0} KiB plain, {:.0} KiB preloaded: {per_socket:.0} B per socket",
        plain / 1024.0,
        preloaded / 1024.0
    );
    per_socket
}

#[test]
fn the_table_costs_a_few_bytes_per_socket() {
    privileged();
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a writable rlimit.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(r, 0);
    let count = (limit.rlim_max.saturating_sub(64) as usize).min(20_000);
    assert!(
        count >= 10_000,
        "RLIMIT_NOFILE (hard) is {}: raise it to 20064 for this test",
        limit.rlim_max
    );
    let host = Host::new("rss").unwrap();
    let dir = TempDir::new("rss");
    let exe = c_program(&dir.0, "many_sockets");
    // A 24-byte cell per descriptor; options set before connect() take a
    // 208-byte log until the socket connects. (Before: 640 B per socket.)
    let open = table_bytes_per_socket(&host, &exe, "open", count);
    assert!(open < 40.0, "{open:.0} B per open socket");
    let connected = table_bytes_per_socket(&host, &exe, "connected", count);
    assert!(connected < 40.0, "{connected:.0} B per connected socket");
    let options = table_bytes_per_socket(&host, &exe, "options", count);
    assert!(
        options < 300.0,
        "{options:.0} B per socket with an option, not connected"
    );
}

/// `discover` (without the library): every option number 0..100 of
/// SOL_SOCKET, IPPROTO_TCP, IPPROTO_IP (IPv4) and IPPROTO_IPV6 (IPv6) that
/// a TCP socket takes (with the first of a few simple values that works)
/// and an MPTCP socket refuses, as `op family level name value-hex`.
/// `apply` (under the library): each such line on a fresh socket, printing
/// `op level name errno protocol-afterwards`.
const OPTIONS_PROGRAM: &str = r#"
import socket, struct, sys, errno
REFUSED = (errno.EOPNOTSUPP, errno.ENOPROTOOPT)
LEVELS = [(socket.SOL_SOCKET, socket.AF_INET), (socket.IPPROTO_TCP, socket.AF_INET),
          (socket.IPPROTO_IP, socket.AF_INET), (socket.IPPROTO_IPV6, socket.AF_INET6)]
VALUES = [struct.pack("i", 1), struct.pack("i", 0), bytes(8), bytes(16)]
def attempt(op, family, proto, level, name, value):
    s = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        if op == "set":
            s.setsockopt(level, name, value)
        else:
            s.getsockopt(level, name, 64)
        result = 0
    except OSError as e:
        result = e.errno
    protocol = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
    s.close()
    return result, protocol
if sys.argv[1] == "discover":
    for level, family in LEVELS:
        for name in range(100):
            for value in VALUES:
                if attempt("set", family, 6, level, name, value)[0] == 0:
                    if attempt("set", family, 262, level, name, value)[0] in REFUSED:
                        print("set", int(family), level, name, value.hex())
                    break
            if attempt("get", family, 6, level, name, b"")[0] == 0:
                if attempt("get", family, 262, level, name, b"")[0] in REFUSED:
                    print("get", int(family), level, name, "-")
else:
    for line in sys.stdin:
        op, family, level, name, value = line.split()
        data = b"" if value == "-" else bytes.fromhex(value)
        result, protocol = attempt(op, int(family), 0, int(level), int(name), data)
        print(op, level, name, result, protocol)
"#;

/// What Linux 6.18 refuses on MPTCP sockets and takes on TCP sockets, as
/// `OPTIONS_PROGRAM discover` finds it (`op level name`); the README's
/// table names them.
const REFUSED_ON_6_18: &str = "
set 1 10; set 1 42; get 1 42; set 1 44; set 1 47; set 1 53; set 1 60; set 1 61;
set 1 72; set 1 74; get 1 74; set 1 75; set 1 80; set 1 82; set 6 7; get 6 7;
set 6 8; get 6 8; set 6 10; get 6 10; set 6 12; get 6 12; set 6 16; get 6 16;
set 6 17; get 6 17; set 6 18; get 6 18; set 6 19; get 6 19; get 6 24; set 6 27;
get 6 27; get 6 28; set 6 37; get 6 37; get 6 44; get 6 45; get 6 46; set 0 2;
get 0 2; get 0 3; set 0 4; get 0 4; get 0 5; set 0 6; get 0 6; set 0 7; get 0 7;
set 0 8; get 0 8; get 0 9; set 0 10; get 0 10; set 0 11; get 0 11; set 0 12;
get 0 12; set 0 13; get 0 13; set 0 18; get 0 18; set 0 20; get 0 20; set 0 21;
get 0 21; get 0 22; set 0 23; get 0 23; get 0 25; set 0 26; get 0 26; get 0 32;
get 0 33; set 0 34; get 0 34; set 0 49; get 0 49; set 0 50; get 0 50; get 0 52;
set 41 2; get 41 2; set 41 3; get 41 3; set 41 4; get 41 4; set 41 5; get 41 5;
set 41 6; get 41 6; set 41 8; get 41 8; set 41 11; get 41 11; set 41 16; get 41 16;
get 41 17; get 41 18; set 41 19; get 41 19; get 41 22; set 41 23; get 41 23;
set 41 24; set 41 25; get 41 25; set 41 29; get 41 29; set 41 30; get 41 30;
set 41 31; get 41 31; set 41 33; get 41 33; set 41 49; get 41 49; set 41 51;
get 41 51; set 41 53; get 41 53; set 41 54; get 41 54; set 41 55; get 41 55;
set 41 56; get 41 56; get 41 57; set 41 58; get 41 58; set 41 59; get 41 59;
set 41 60; get 41 60; set 41 62; get 41 62; set 41 66; get 41 66; set 41 67;
get 41 67; set 41 70; get 41 70; set 41 72; get 41 72; set 41 73; get 41 73;
set 41 74; get 41 74; set 41 76; get 41 76; set 41 77; get 41 77;
";

/// The options the library ignores on MPTCP sockets instead of rebuilding
/// them as TCP (`compat::on_refusal`): `(level, name)`.
const IGNORED: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_OOBINLINE),
    (libc::IPPROTO_TCP, libc::TCP_QUICKACK),
    (libc::IPPROTO_TCP, libc::TCP_THIN_LINEAR_TIMEOUTS),
    (libc::IPPROTO_TCP, libc::TCP_THIN_DUPACK),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_IF),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_ALL),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_ALL),
];

#[test]
fn every_option_mptcp_refuses_is_ignored_or_rebuilt_as_tcp() {
    privileged();
    let host = Host::new("options").unwrap();
    let out = host
        .command(&python())
        .args(["-c", OPTIONS_PROGRAM, "discover"])
        .output()
        .unwrap();
    let discovered = check(&out, "option discovery");
    let refused: Vec<(String, i32, i32)> = discovered
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (
                f[0].to_owned(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
        .collect();
    assert!(
        refused.contains(&("set".to_owned(), libc::SOL_SOCKET, libc::SO_OOBINLINE)),
        "the kernel takes SO_OOBINLINE on MPTCP sockets now: update the README table\n{discovered}"
    );
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    if release.starts_with("6.18.") {
        let listed: Vec<String> = REFUSED_ON_6_18
            .split(';')
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        let found: Vec<String> = refused
            .iter()
            .map(|(op, level, name)| format!("{op} {level} {name}"))
            .collect();
        assert_eq!(
            found, listed,
            "6.18 refuses other options than the README's table says"
        );
    }

    let out = preloaded(&host, &python(), &[])
        .args(["-c", OPTIONS_PROGRAM, "apply"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(discovered.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let applied = check(&out, "options under the library");
    let mut wrong = Vec::new();
    for line in applied.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (op, level, name): (&str, i32, i32) =
            (f[0], f[1].parse().unwrap(), f[2].parse().unwrap());
        let (result, protocol): (i32, i32) = (f[3].parse().unwrap(), f[4].parse().unwrap());
        let ignored = IGNORED.contains(&(level, name));
        let expected = match (op, ignored) {
            // Ignored: success and still MPTCP; reading it keeps the error.
            ("set", true) => result == 0 && protocol == 262,
            ("get", true) => result != 0 && protocol == 262,
            // Otherwise rebuilt as TCP, where the call succeeds.
            _ => result == 0 && protocol == libc::IPPROTO_TCP,
        };
        if !expected {
            wrong.push(line.to_owned());
        }
    }
    assert_eq!(applied.lines().count(), refused.len(), "{applied}");
    assert!(
        wrong.is_empty(),
        "unexpected outcomes (op level name errno protocol):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_library_loads_nothing_but_libc() {
    // libgcc_s.so.1 (the unwinder) would run its CPU probe in every
    // preloaded program; build.rs links the unwinder statically.
    let out = std::process::Command::new("readelf")
        .arg("-d")
        .arg(support::preload_lib())
        .output()
        .expect("readelf (binutils) must be installed");
    let dynamic = String::from_utf8(out.stdout).unwrap();
    let needed: Vec<&str> = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    assert!(needed.contains(&"libc.so.6"), "{dynamic}");
    assert!(
        needed
            .iter()
            .all(|lib| *lib == "libc.so.6" || lib.starts_with("ld-linux")),
        "{needed:?}"
    );
}

/// The system calls of `/bin/true` by name, in order, run by strace with
/// nothing in its environment but `LD_PRELOAD=preload` (if any).
fn system_calls_of_true(preload: Option<&Path>) -> Vec<String> {
    let mut cmd = std::process::Command::new("strace");
    cmd.env_clear().arg("-qq");
    if let Some(lib) = preload {
        // Only the traced program gets it, not strace.
        cmd.arg("-E").arg(format!("LD_PRELOAD={}", lib.display()));
    }
    let out = cmd
        .arg("/bin/true")
        .output()
        .expect("strace must be installed");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|line| {
            let (name, _) = line.split_once('(')?;
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                .then(|| name.to_owned())
        })
        .collect()
}

#[test]
fn loading_the_library_costs_a_program_only_its_mapping_and_one_fstat() {
    // Every program started under the library pays for its constructor, so
    // it does no work that can wait: no malloc (brk, getrandom), no getpid,
    // no anonymous segment for a large .bss; what the loader needs to map
    // the library (one mmap per PT_LOAD), and the fstat of descriptor 2.
    let lib = support::preload_lib();
    let mut extra = system_calls_of_true(Some(&lib));
    for call in system_calls_of_true(None) {
        if let Some(at) = extra.iter().position(|c| *c == call) {
            extra.remove(at);
        }
    }
    let allowed = [
        "openat",
        "read",
        "pread64",
        "newfstatat",
        "fstat",
        "mmap",
        "mprotect",
        "close",
    ];
    assert!(
        extra.iter().all(|call| allowed.contains(&call.as_str())),
        "system calls the library adds to /bin/true: {extra:?}"
    );
    let out = std::process::Command::new("readelf")
        .arg("-lW")
        .arg(&lib)
        .output()
        .expect("readelf (binutils) must be installed");
    let segments = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD "))
        .count();
    let mappings = extra.iter().filter(|c| *c == "mmap").count();
    assert_eq!(
        mappings, segments,
        "one mapping per PT_LOAD segment, none for .bss: {extra:?}"
    );
    let stats = extra
        .iter()
        .filter(|c| *c == "fstat" || *c == "newfstatat")
        .count();
    assert_eq!(stats, 2, "the loader's and descriptor 2's: {extra:?}");
}

#[test]
fn the_library_exports_only_its_hooks() {
    let out = std::process::Command::new("nm")
        .args(["-D", "--defined-only", "--format=just-symbols"])
        .arg(support::preload_lib())
        .output()
        .expect("nm (binutils) must be installed");
    let mut symbols: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    symbols.sort();
    let mut hooks = [
        "__poll_chk",
        "__ppoll_chk",
        "__read_chk",
        "__recv_chk",
        "__recvfrom_chk",
        "accept",
        "accept4",
        "close",
        "close_range",
        "connect",
        "dup2",
        "dup3",
        "getaddrinfo",
        "getpeername",
        "getsockopt",
        "poll",
        "ppoll",
        "read",
        "readv",
        "recv",
        "recvfrom",
        "recvmsg",
        "pselect",
        "select",
        "setsockopt",
        "socket",
    ];
    hooks.sort();
    assert_eq!(symbols, hooks);
}

/// The environment of relay mode through the test relay at `relay` (user
/// alice), for destinations on 127.0.0.1.
fn relay_mode_env(relay: &str) -> [(&'static str, &str); 6] {
    [
        ("MPTCP_PRELOAD_MODE", "relay"),
        ("MPTCP_PRELOAD_RELAY", relay),
        ("MPTCP_PRELOAD_USER", "alice"),
        ("MPTCP_PRELOAD_PASSWORD", "s3cret"),
        ("MPTCP_PRELOAD_INCLUDE", "127.0.0.1/32"),
        ("MPTCP_PRELOAD_EXCLUDE", ""),
    ]
}
