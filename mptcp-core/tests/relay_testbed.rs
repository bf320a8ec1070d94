//! The relay engine in the test bed with real programs: LAN host → local
//! relay (nftables REDIRECT) → two rate-limited WAN links (MPTCP) → remote
//! relay → destination; curl with `--socks5-hostname`, proxychains4, and
//! dante as the remote.
#![cfg(feature = "relay")]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mptcp_core::relay::{Config, EngineConfig, LocalConfig, Relay, RelayHandle, RemoteConfig};
use mptcp_testbed::{Daemon, Host, Meter, RelayPath, danted_config, data, redsocks_config};

const USER: &str = "alice";
const PASS: &str = "s3cret";
const HTTP_PORT: u16 = 8000;
const SOCKS_PORT: u16 = 1080;
const REDIRECT_PORT: u16 = 12345;
/// The destination's byte-pattern server (throughput).
const PATTERN_PORT: u16 = 5001;
const STREAM_TIME: Duration = Duration::from_secs(2);
const RAMP_UP: Duration = Duration::from_secs(1);

/// Starts a daemon from Debian's packages (`package`), quietly; it is
/// killed when the returned guard drops.
fn daemon(cmd: &mut Command, package: &str) -> Daemon {
    Daemon::spawn(cmd).unwrap_or_else(|e| panic!("{package} must be installed: {e}"))
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("relay-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn file_bytes(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// `python3 -m http.server` in `dest`, serving `dir`.
fn http_server(rp: &RelayPath, dir: &Path) -> Daemon {
    let guard = daemon(
        rp.dest
            .command("python3")
            .args([
                "-m",
                "http.server",
                &HTTP_PORT.to_string(),
                "--bind",
                &rp.dest_addr().to_string(),
            ])
            .current_dir(dir),
        "python3 (for http.server)",
    );
    rp.dest.wait_listening(HTTP_PORT).unwrap();
    guard
}

/// The URL of the file that [`site`] serves from the destination.
fn file_url(rp: &RelayPath) -> String {
    format!("http://{}:{HTTP_PORT}/file", rp.dest_addr())
}

/// What every test here starts from: a relay path with `n_wan` WAN links
/// (at `rate_mbit`), a directory (named after `tag`) holding `file` of
/// `file_len` bytes, and an HTTP server in `dest` serving it.
fn site(
    n_wan: usize,
    rate_mbit: Option<u32>,
    tag: &str,
    file_len: usize,
) -> (RelayPath, TempDir, Vec<u8>, Daemon) {
    mptcp_testbed::require_privileges().unwrap();
    let rp = mptcp_testbed::relay_path(n_wan, rate_mbit).unwrap();
    let dir = TempDir::new(tag);
    let content = file_bytes(file_len);
    std::fs::write(dir.0.join("file"), &content).unwrap();
    let http = http_server(&rp, &dir.0);
    (rp, dir, content, http)
}

fn engine() -> EngineConfig {
    EngineConfig {
        workers: 2,
        handshake_timeout_secs: 5,
        ..EngineConfig::default()
    }
}

fn start_remote(rp: &RelayPath) -> RelayHandle {
    let listen = SocketAddr::new([0, 0, 0, 0].into(), SOCKS_PORT);
    let config = Config::new()
        .engine(engine())
        .remote(RemoteConfig::new(listen).user(USER, PASS));
    rp.remote.run(|| Relay::start(config)).unwrap()
}

/// A local relay with a REDIRECT listener, and the nftables rule sending
/// the LAN's TCP to `ports` (an nftables port or set, like `{ 80, 443 }`)
/// into it.
fn start_local(rp: &RelayPath, remote: SocketAddr, with_auth: bool, ports: &str) -> RelayHandle {
    let mut local = LocalConfig::new(remote.to_string())
        .redirect(SocketAddr::new([0, 0, 0, 0].into(), REDIRECT_PORT));
    if with_auth {
        local = local.credentials(USER, PASS);
    }
    let handle = rp
        .local
        .run(|| Relay::start(Config::new().engine(engine()).local(local)))
        .unwrap();
    redirect_lan(rp, ports);
    handle
}

/// The nftables rule on the local node that sends the LAN's TCP to `ports`
/// into whatever listens on `REDIRECT_PORT` there.
fn redirect_lan(rp: &RelayPath, ports: &str) {
    nft(
        &rp.local,
        &format!(
            "table ip relaytest {{\n chain pre {{\n  type nat hook prerouting priority dstnat;\n  \
             iifname \"lan0\" tcp dport {ports} redirect to :{REDIRECT_PORT}\n }}\n}}\n"
        ),
    );
}

/// Loads an nftables ruleset in `host`.
fn nft(host: &Host, rules: &str) {
    let mut nft = host
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft (nftables) must be installed");
    nft.stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success(), "nft -f rejected:\n{rules}");
}

/// Downloads `url` with curl in `host` into `out`, which must then hold
/// exactly `want`.
fn download_matches(host: &Host, extra: &[&str], url: &str, out: &Path, want: &[u8]) {
    let status = host
        .command("curl")
        .args(["-sS", "--fail", "--max-time", "30", "-o"])
        .arg(out)
        .args(extra)
        .arg(url)
        .status()
        .unwrap();
    assert!(status.success(), "curl {extra:?} {url}: {status}");
    assert_same_file(out, want);
}

/// Runs curl through the SOCKS5 proxy `proxy` as `user_pass`, which must
/// fail; returns curl's error output.
fn curl_socks5_fails(host: &Host, proxy: &str, user_pass: &str, url: &str) -> String {
    let out = host
        .command("curl")
        .args(["-sS", "--max-time", "10", "--socks5-hostname", proxy])
        .args(["--proxy-user", user_pass, url])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "curl as {user_pass} to {url} must fail"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The destination's pattern server: each connection gets
/// [`STREAM_TIME`] of the test bed's checked byte pattern.
fn pattern_server(rp: &RelayPath) {
    let addr = SocketAddr::new(rp.dest_addr().into(), PATTERN_PORT);
    let listener = rp.dest.run(|| TcpListener::bind(addr)).unwrap();
    rp.dest.spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || data::send_pattern_for(&mut s, STREAM_TIME));
        }
    });
}

/// Mbit/s of a pattern download in the LAN host, counted after
/// [`RAMP_UP`]: slow start overshoots the test bed's rate-limiting queues,
/// and the recovery (sometimes a retransmission timeout) would weigh too
/// much in a short transfer, over the relay and the plain route alike.
fn steady_download(rp: &RelayPath) -> f64 {
    let addr = SocketAddr::new(rp.dest_addr().into(), PATTERN_PORT);
    rp.lan.run(|| {
        let meter = Meter::new();
        let mut s = meter.reader(TcpStream::connect(addr).unwrap());
        std::thread::scope(|scope| {
            let ramped = scope.spawn(|| {
                std::thread::sleep(RAMP_UP);
                meter.sample()
            });
            data::receive_and_check(&mut s).expect("pattern intact");
            let ramped = ramped.join().unwrap();
            meter.sample().mbit_per_s_since(&ramped)
        })
    })
}

fn assert_same_file(got: &Path, want: &[u8]) {
    let got = std::fs::read(got).unwrap();
    assert!(
        got.len() == want.len() && got == want,
        "downloaded file differs ({} bytes)",
        got.len()
    );
}

#[test]
fn lan_download_through_both_relays_uses_both_links() {
    let (rp, dir, content, _http) = site(2, Some(20), "chain", 2 << 20);
    pattern_server(&rp);
    let url = file_url(&rp);

    // Baseline: plain routing over WAN link 0 (no relay yet).
    let single = steady_download(&rp);

    let remote = start_remote(&rp);
    let local = start_local(
        &rp,
        SocketAddr::new(rp.remote_addr().into(), SOCKS_PORT),
        true,
        &format!("{{ {HTTP_PORT}, {PATTERN_PORT} }}"),
    );
    let chained = steady_download(&rp);
    download_matches(&rp.lan, &[], &url, &dir.0.join("chained"), &content);

    // Half-close through the whole chain: the request ends with a shutdown
    // of the client's write side (HTTP/1.0 style); the response still
    // arrives in full.
    let lan_addr = SocketAddr::new(rp.dest_addr().into(), HTTP_PORT);
    let body = rp.lan.run(|| {
        let mut s = TcpStream::connect(lan_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET /file HTTP/1.0\r\n\r\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let start = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    assert!(body[start..] == content[..], "half-closed download differs");

    // A download does not hold up new connections: their first bytes do
    // not queue behind it between the relays.
    let downloading = rp.lan.spawn({
        let addr = SocketAddr::new(rp.dest_addr().into(), PATTERN_PORT);
        move || {
            let mut s = TcpStream::connect(addr).unwrap();
            data::receive_and_check(&mut s).expect("pattern intact");
            Instant::now()
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let heads = rp.lan.run(|| {
        (0..3)
            .map(|_| {
                let started = Instant::now();
                let mut s = TcpStream::connect(lan_addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(b"HEAD /file HTTP/1.0\r\n\r\n").unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).unwrap();
                assert!(got.starts_with(b"HTTP/1.0 200"), "{got:?}");
                (started.elapsed(), Instant::now())
            })
            .collect::<Vec<_>>()
    });
    let download_ended = downloading.join().unwrap();
    for (took, done) in heads {
        assert!(
            took < Duration::from_secs(1) && done < download_ended,
            "a request during the download took {took:?}"
        );
    }

    let (l, r) = (local.stats(), remote.stats());
    let ratio = chained / single;
    eprintln!(
        "single link {single:.1} Mbit/s, relay chain {chained:.1} Mbit/s ({ratio:.2}x)\nlocal: {l}\nremote: {r}"
    );
    assert!(
        ratio >= 1.7,
        "relay chain {chained:.1} Mbit/s is only {ratio:.2}x one link ({single:.1})"
    );
    assert_eq!((l.relayed, r.relayed), (7, 7), "local: {l}\nremote: {r}");
    // Streams of sessions, which the ratio shows to use both WAN links.
    assert_eq!(
        (l.multiplexed, r.multiplexed),
        (7, 7),
        "local: {l}\nremote: {r}"
    );
    assert_eq!(l.splice_fallbacks + r.splice_fallbacks, 0);
}

#[test]
fn curl_socks5_hostname_and_proxychains_to_remote() {
    let (rp, dir, content, _http) = site(1, None, "interop", 1 << 20);
    let remote = start_remote(&rp);
    let proxy = format!("{}:{SOCKS_PORT}", rp.remote_addr());
    let url = file_url(&rp);

    // curl, the name resolved by the relay: "localhost" names the remote's
    // own loopback, which the destination policy denies (curl exit 97:
    // proxy handshake failed).
    let out = dir.0.join("curl");
    let auth = format!("{USER}:{PASS}");
    download_matches(
        &rp.local,
        &["--socks5-hostname", &proxy, "--proxy-user", &auth],
        &url,
        &out,
        &content,
    );
    let stderr = curl_socks5_fails(
        &rp.local,
        &proxy,
        &auth,
        &format!("http://localhost:{SOCKS_PORT}/"),
    );
    assert!(
        stderr.contains("connection not allowed by ruleset") || stderr.contains("(2)"),
        "{stderr}"
    );
    curl_socks5_fails(&rp.local, &proxy, "alice:nope", &url);

    // proxychains4 wrapping curl.
    let conf = dir.0.join("proxychains.conf");
    std::fs::write(
        &conf,
        format!("strict_chain\ntcp_read_time_out 15000\ntcp_connect_time_out 8000\n[ProxyList]\nsocks5 {} {SOCKS_PORT} {USER} {PASS}\n", rp.remote_addr()),
    )
    .unwrap();
    let out = dir.0.join("proxychains");
    let status = rp
        .local
        .command("proxychains4")
        .arg("-q")
        .arg("-f")
        .arg(&conf)
        .args(["curl", "-sS", "--fail", "--max-time", "20", "-o"])
        .arg(&out)
        .arg(&url)
        .status()
        .expect("proxychains4 must be installed");
    assert!(status.success(), "proxychains4 curl: {status}");
    assert_same_file(&out, &content);
    let stats = remote.stats();
    assert_eq!(stats.relayed, 2, "{stats}");
}

/// The remote relay's default policy keeps it from being a door into its
/// own host: its own addresses (a service bound to 0.0.0.0 there) and the
/// IPv6 spellings of loopback are refused as "not allowed", while the
/// destination behind it is served.
#[test]
fn the_remote_refuses_its_own_addresses_and_ipv6_forms_of_loopback() {
    let (rp, dir, content, _http) = site(1, None, "own-addresses", 64 << 10);
    let remote = start_remote(&rp);
    let own_port = 8081;
    let _own_service = daemon(
        rp.remote.command("python3").args([
            "-m",
            "http.server",
            &own_port.to_string(),
            "--bind",
            "::",
        ]),
        "python3 (for http.server)",
    );
    rp.remote.wait_listening(own_port).unwrap();
    let proxy = format!("{}:{SOCKS_PORT}", rp.remote_addr());
    let auth = format!("{USER}:{PASS}");
    // The service is there: the local host reaches it directly.
    let direct = rp
        .local
        .command("curl")
        .args(["-sS", "--fail", "--max-time", "10", "-o", "/dev/null"])
        .arg(format!("http://{}:{own_port}/", rp.remote_addr()))
        .status()
        .unwrap();
    assert!(
        direct.success(),
        "the remote host's own service must answer directly"
    );
    for host in [
        rp.remote_addr().to_string(),
        rp.remote_egress_addr().to_string(),
        "[::ffff:127.0.0.1]".to_string(),
        "[::127.0.0.1]".to_string(),
        "[64:ff9b::7f00:1]".to_string(),
    ] {
        let url = format!("http://{host}:{own_port}/");
        let stderr = curl_socks5_fails(&rp.local, &proxy, &auth, &url);
        assert!(
            stderr.contains("connection not allowed by ruleset") || stderr.contains("(2)"),
            "{url}: {stderr}"
        );
    }
    let out = dir.0.join("through");
    download_matches(
        &rp.local,
        &["--socks5-hostname", &proxy, "--proxy-user", &auth],
        &file_url(&rp),
        &out,
        &content,
    );
    let stats = remote.stats();
    assert_eq!(stats.relayed, 1, "{stats}");
    assert_eq!(
        stats.error(mptcp_core::relay::ErrorKind::DestinationDenied),
        5,
        "{stats}"
    );
}

#[test]
fn local_relay_with_dante_as_remote() {
    let (rp, dir, content, _http) = site(1, None, "dante", 1 << 20);

    let conf = dir.0.join("danted.conf");
    let listen = SocketAddr::new(rp.remote_addr().into(), SOCKS_PORT);
    let text = danted_config(listen, rp.remote_egress_addr(), "stderr");
    std::fs::write(&conf, text).unwrap();
    let _dante = daemon(
        rp.remote
            .command("/usr/sbin/danted")
            .arg("-f")
            .arg(&conf)
            .arg("-p")
            .arg(dir.0.join("danted.pid")),
        "dante-server (/usr/sbin/danted)",
    );
    rp.remote.wait_listening(SOCKS_PORT).unwrap();

    let local = start_local(
        &rp,
        SocketAddr::new(rp.remote_addr().into(), SOCKS_PORT),
        false,
        &HTTP_PORT.to_string(),
    );
    // dante refuses the session ("command not supported"); each download
    // then has an MPTCP connection to it of its own.
    for round in 0..2 {
        let out = dir.0.join(format!("via-dante-{round}"));
        download_matches(&rp.lan, &[], &file_url(&rp), &out, &content);
    }
    let stats = local.stats();
    assert_eq!((stats.relayed, stats.multiplexed), (2, 0), "{stats}");
}

#[test]
fn redsocks_as_local_with_the_remote_relay() {
    let (rp, dir, content, _http) = site(2, None, "redsocks", 1 << 20);
    let remote = start_remote(&rp);

    // redsocks on the router, as people run it today: transparent redirect
    // in, SOCKS5 with a password out to our remote relay.
    let conf = dir.0.join("redsocks.conf");
    let socks = SocketAddr::new(rp.remote_addr().into(), SOCKS_PORT);
    let text = redsocks_config(REDIRECT_PORT, socks, Some((USER, PASS)));
    std::fs::write(&conf, text).unwrap();
    let _redsocks = daemon(
        rp.local.command("redsocks").arg("-c").arg(&conf),
        "redsocks",
    );
    rp.local.wait_listening(REDIRECT_PORT).unwrap();
    redirect_lan(&rp, &HTTP_PORT.to_string());

    let out = dir.0.join("via-redsocks");
    download_matches(&rp.lan, &[], &file_url(&rp), &out, &content);
    let stats = remote.stats();
    assert!(stats.relayed >= 1, "the remote relay carried it: {stats}");
}

#[test]
fn tproxy_and_http_proxy_listeners() {
    let (rp, dir, content, _http) = site(2, None, "tproxy", 1 << 20);
    let remote = start_remote(&rp);
    let tproxy_port = 12346;
    let http_port = 3128;
    let remote_addr = SocketAddr::new(rp.remote_addr().into(), SOCKS_PORT).to_string();
    // The test bed's LAN (198.19.1.0/24) is not a private range: it must be
    // listed for the proxy listeners, as a LAN with public addresses would.
    let lan_net = "198.19.1.0/24".parse().unwrap();
    let local = LocalConfig::new(remote_addr.clone())
        .credentials(USER, PASS)
        .tproxy(SocketAddr::new([0, 0, 0, 0].into(), tproxy_port))
        .http(SocketAddr::new(rp.local_lan_addr().into(), http_port))
        .allow_client(lan_net);
    let local = rp
        .local
        .run(|| Relay::start(Config::new().engine(engine()).local(local)))
        .unwrap();
    let strict_port = 3129;
    let strict = LocalConfig::new(remote_addr)
        .credentials(USER, PASS)
        .http(SocketAddr::new([0, 0, 0, 0].into(), strict_port));
    let strict = rp
        .local
        .run(|| Relay::start(Config::new().engine(engine()).local(strict)))
        .unwrap();
    // TPROXY: marked packets go to the transparent listener, which sees
    // the original destination as its local address.
    rp.local.deliver_marked_locally().unwrap();
    nft(
        &rp.local,
        &format!(
            "table ip relaytproxy {{\n chain pre {{\n  type filter hook prerouting priority mangle;\n  \
             iifname \"lan0\" tcp dport {HTTP_PORT} meta mark set 0x4242 tproxy to :{tproxy_port}\n }}\n}}\n"
        ),
    );

    let url = file_url(&rp);
    let out = dir.0.join("tproxy");
    download_matches(&rp.lan, &[], &url, &out, &content);

    // HTTP proxy: an absolute-URI request (as squid forwards to a parent)
    // and a CONNECT tunnel (`-p`).
    let proxy = format!("http://{}:{http_port}", rp.local_lan_addr());
    let out = dir.0.join("http-forward");
    download_matches(&rp.lan, &["-x", &proxy], &url, &out, &content);
    let out = dir.0.join("http-connect");
    download_matches(&rp.lan, &["-x", &proxy, "-p"], &url, &out, &content);
    let stats = local.stats();
    assert_eq!(stats.relayed, 3, "{stats}");
    assert_eq!(remote.stats().relayed, 3);

    // Without an allowlist, a proxy listener on 0.0.0.0 serves private
    // addresses only: the LAN host here (and anyone on the WAN side) is
    // refused before a byte goes to the remote.
    let strict_proxy = format!("http://{}:{strict_port}", rp.local_lan_addr());
    let refused = rp
        .lan
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-x",
            &strict_proxy,
            &url,
        ])
        .status()
        .unwrap();
    assert!(
        !refused.success(),
        "a public client of an unlisted proxy is refused"
    );
    let stats = strict.stats();
    assert_eq!(
        stats.error(mptcp_core::relay::ErrorKind::ClientDenied),
        1,
        "{stats}"
    );
    assert_eq!(stats.relayed, 0, "{stats}");
    assert_eq!(remote.stats().relayed, 3, "nothing reached the remote");
}
