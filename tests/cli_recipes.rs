//! The README's recipes, run for real: every command line below is a string
//! that appears verbatim in the README, run by `sh -c` inside a test-bed
//! host with the built `mptcp` first in PATH. Also the long-running
//! commands (`relay`, `paths auto`) stopped with signals.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mptcp_testbed::Host;
use mptcp_testbed::data::{receive_and_check, send_pattern};

const MPTCP: &str = env!("CARGO_BIN_EXE_mptcp");

/// A running `mptcp` daemon whose stderr lines arrive on a channel.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Daemon {
    fn start(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Daemon {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits (at most 10 s) for an output line containing `needle`.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?}; output so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (at most 15 s) for the process to end by itself; its exit code.
    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "still running:\n{}",
                self.log.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then checks that it exits with 0 (within 15 s); its whole
    /// output, one line per line.
    fn stop(mut self) -> String {
        self.signal("TERM");
        let code = self.wait_exit();
        self.log.extend(self.lines.try_iter());
        std::thread::sleep(Duration::from_millis(50));
        self.log.extend(self.lines.try_iter());
        let log = self.log.join("\n");
        assert_eq!(code, 0, "{log}");
        log
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mptcp_in(host: &Host, args: &[&str]) -> Command {
    let mut cmd = host.command(MPTCP);
    cmd.args(args)
        .env("MPTCP_LINKS_FILE", links_file())
        .env("MPTCP_REMOTES_FILE", remotes_file());
    cmd
}

/// The link state file of this test process's `paths auto` and relays,
/// apart from the host's `/run/mptcp/links` and from other tests'.
fn links_file() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("mptcp-recipes-links-{}", std::process::id()))
}

/// The remote relays' state file of this test process's local relays.
fn remotes_file() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("mptcp-recipes-remotes-{}", std::process::id()))
}

/// `sh -c LINE` inside `host`, with the built `mptcp` (and the preload
/// library beside it) first in PATH.
fn sh(host: &Host, line: &str) -> Command {
    let bin_dir = std::path::Path::new(MPTCP).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = host.command("sh");
    cmd.args(["-c", line])
        .env("PATH", path)
        .env("MPTCP_LINKS_FILE", links_file())
        .env("MPTCP_REMOTES_FILE", remotes_file());
    cmd
}

/// Runs a README line to completion; returns its stdout, panics on failure.
fn run_line(host: &Host, line: &str) -> String {
    run_command(line, sh(host, line))
}

/// [`run_line`] in directory `dir`.
fn run_line_in(host: &Host, dir: &std::path::Path, line: &str) -> String {
    let mut cmd = sh(host, line);
    cmd.current_dir(dir);
    run_command(line, cmd)
}

fn run_command(line: &str, mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "`{line}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts a README line that keeps running (`exec env`, so that signals
/// reach it and variable assignments in front of it work).
fn start_line(host: &Host, line: &str) -> Daemon {
    Daemon::start(sh(host, &format!("exec env {line}")))
}

/// [`start_line`] in directory `dir`.
fn start_line_in(host: &Host, dir: &std::path::Path, line: &str) -> Daemon {
    let mut cmd = sh(host, &format!("exec env {line}"));
    cmd.current_dir(dir);
    Daemon::start(cmd)
}

/// The README recipe "Two links, one connection": endpoints and limits on
/// the client, one program over MPTCP, and its subflows in `mptcp status`.
#[test]
fn recipe_two_links_one_program() {
    mptcp_testbed::require_privileges().unwrap();
    let bed = mptcp_testbed::two_links(2, Some(20)).unwrap();
    // Client side: which kernel features are there, then the paths.
    run_line(&bed.client, "mptcp probe");
    run_line(&bed.client, "mptcp endpoint flush");
    run_line(
        &bed.client,
        "mptcp limits set subflows 2 add_addr_accepted 2",
    );
    run_line(
        &bed.client,
        "mptcp endpoint add 198.18.1.1 dev eth1 subflow",
    );
    let list = run_line(&bed.client, "mptcp endpoint list");
    assert_eq!(list.trim(), "198.18.1.1 id 1 subflow dev eth1");

    // Server side: any TCP server, under MPTCP too; iperf3 here.
    let mut server = start_line(&bed.server, "mptcp run -- iperf3 -s -1");
    bed.server.wait_listening(5201).unwrap();
    // Client side: the unmodified program over MPTCP.
    let mut client = start_line(&bed.client, "mptcp run -- iperf3 -c 198.18.0.2 -t 3");
    // Once the data connection has its second subflow (iperf3's output is
    // buffered in a pipe, so it cannot tell when it started)...
    let deadline = Instant::now() + Duration::from_secs(3);
    while !bed
        .client
        .run(mptcp_core::diag::connections)
        .unwrap()
        .iter()
        .any(|c| c.subflows.len() == 2)
    {
        assert!(Instant::now() < deadline, "no connection with 2 subflows");
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...the README's view of it, with rates.
    let status = run_line(&bed.client, "mptcp status");
    client.wait_for("sender");
    assert!(
        status.contains("-> 198.18.0.2:5201"),
        "{status}\n{}",
        client.log.join("\n")
    );
    assert!(status.contains("subflows 2"), "{status}");
    assert!(status.contains("subflow 198.18.1.1:"), "{status}");
    assert!(status.contains("Mbit/s"), "{status}");
    assert_eq!(client.wait_exit(), 0, "{}", client.log.join("\n"));
    assert_eq!(server.wait_exit(), 0);
}

/// The README recipe "A LAN over two links through a rented server": the
/// remote relay on the server, the local relay on the router, the LAN's TCP
/// redirected into it by nftables, and one program on the router sent
/// through the relay by `mptcp run --relay`.
#[test]
fn recipe_relay_for_a_lan_over_two_links() {
    mptcp_testbed::require_privileges().unwrap();
    let rp = mptcp_testbed::relay_path(2, Some(20)).unwrap();

    // The destination, somewhere on the internet: sends 8 MB of the test
    // pattern to each client on port 8000; a web server on port 8080.
    let dest_addr = SocketAddr::new(rp.dest_addr().into(), 8000);
    let listener = rp.dest.run(|| TcpListener::bind(dest_addr).unwrap());
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        send_pattern(&mut conn, 8 << 20).unwrap()
    });
    let _web = start_line(&rp.dest, "python3 -m http.server 8080 --bind 198.19.2.2");
    rp.dest.wait_listening(8080).unwrap();

    // On the rented server (198.18.0.2).
    let mut remote = start_line(
        &rp.remote,
        "RELAY_PASSWORD='correct horse' mptcp relay remote --listen 198.18.0.2:1080 \
         --user alice --password-env RELAY_PASSWORD",
    );
    remote.wait_for("listening");

    // On the router: the local relay and the redirect of the LAN's TCP.
    let mut local = start_line(
        &rp.local,
        "RELAY_PASSWORD='correct horse' mptcp relay local --remote 198.18.0.2:1080 \
         --user alice --password-env RELAY_PASSWORD --redirect 0.0.0.0:12345 --metrics 9464",
    );
    local.wait_for("listening");
    run_line(
        &rp.local,
        "nft -f - <<'EOF'
table ip mptcp_relay {
    chain prerouting {
        type nat hook prerouting priority dstnat;
        iifname \"lan0\" meta l4proto tcp redirect to :12345
    }
}
EOF",
    );

    // A plain TCP client on the LAN, unaware of any relay.
    let client = rp.lan.spawn(move || {
        let mut conn = TcpStream::connect(dest_addr).unwrap();
        receive_and_check(&mut conn).unwrap()
    });
    let (bytes, sum) = client.join().unwrap();
    assert_eq!(bytes, 8 << 20);
    assert_eq!(sum, server.join().unwrap(), "same bytes at both ends");
    // The relay's counters, and its session's subflows on both WAN links
    // (sampled each second).
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = run_line(
        &rp.local,
        "curl -s http://127.0.0.1:9464/metrics | grep -E '^mptcp_relay_(bytes|connections|link)'",
    );
    assert!(
        metrics.contains("mptcp_relay_bytes_total{direction=\"down\"} 8388608"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mptcp_relay_connections_relayed_total 1"),
        "{metrics}"
    );
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    let mut received = 0.0;
    for link in ["198.18.0.1", "198.18.1.1"] {
        let subflows = value(&format!("mptcp_relay_link_subflows{{link=\"{link}\"}}"));
        assert!(subflows >= 1.0, "{metrics}");
        received += value(&format!(
            "mptcp_relay_link_bytes_total{{link=\"{link}\",direction=\"received\"}}"
        ));
    }
    assert!(received >= (8 << 20) as f64, "{metrics}");

    // One program on the router, through the relay without the redirect.
    let page = run_line(
        &rp.local,
        "RELAY_PASSWORD='correct horse' mptcp run --relay 198.18.0.2:1080 --user alice \
         --password-env RELAY_PASSWORD -- curl -sS http://198.19.2.2:8080/",
    );
    assert!(page.contains("Directory listing"), "{page}");

    local.signal("USR1");
    local.wait_for("counters: accepted=1");
    let log = local.stop();
    assert!(log.contains("stopped; counters"), "{log}");
    let log = remote.stop();
    assert!(log.contains("relayed=2"), "{log}");
}

/// The README recipe "Encrypt the link between the relays": a key pair on
/// each side, each pinning the other's public key. A capture of both WAN
/// links at the remote (tcpdump) holds neither the login nor a byte of the
/// payload, which arrives intact.
#[test]
fn recipe_encrypted_relay_link() {
    mptcp_testbed::require_privileges().unwrap();
    // Rate-limited links, so that the captures keep up with every packet.
    let rp = mptcp_testbed::relay_path(2, Some(50)).unwrap();
    let dir = std::env::temp_dir().join(format!("mptcp-sealed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www")).unwrap();
    let cleanup = Cleanup(dir.clone());
    let marker = "SECRET-PAYLOAD-MARKER-0451 ";
    let page = marker.repeat((2 << 20) / marker.len());
    std::fs::write(dir.join("www/secret.txt"), &page).unwrap();
    let _web = start_line_in(
        &rp.dest,
        &dir.join("www"),
        "python3 -m http.server 8080 --bind 198.19.2.2",
    );
    rp.dest.wait_listening(8080).unwrap();

    // Keys: each side makes its own; the public keys are exchanged.
    run_line_in(
        &rp.remote,
        &dir,
        "mptcp relay keygen remote.key > remote.pub",
    );
    run_line_in(&rp.local, &dir, "mptcp relay keygen local.key > local.pub");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("remote.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "only its owner reads a secret key");

    let captures: Vec<Daemon> = (0..2)
        .map(|i| {
            let line = format!("tcpdump -i wan{i} -U -s 0 -w wan{i}.pcap tcp");
            start_line_in(&rp.remote, &dir, &line)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut remote = start_line_in(
        &rp.remote,
        &dir,
        r#"RELAY_PASSWORD='correct horse' mptcp relay remote --listen 198.18.0.2:1080 \
         --user alice --password-env RELAY_PASSWORD --key-file remote.key --peer-key "$(cat local.pub)""#,
    );
    remote.wait_for("listening");
    let mut local = start_line_in(
        &rp.local,
        &dir,
        r#"RELAY_PASSWORD='correct horse' mptcp relay local --remote 198.18.0.2:1080 \
         --user alice --password-env RELAY_PASSWORD --key-file local.key --remote-key "$(cat remote.pub)" \
         --redirect 0.0.0.0:12345"#,
    );
    local.wait_for("listening");
    run_line(
        &rp.local,
        "nft add table ip sealed; nft add chain ip sealed pre '{ type nat hook prerouting priority dstnat; }'; \
         nft add rule ip sealed pre iifname lan0 meta l4proto tcp redirect to :12345",
    );
    let got = run_line(
        &rp.lan,
        "curl -sS --fail --max-time 20 http://198.19.2.2:8080/secret.txt",
    );
    assert!(
        got == page,
        "the page arrived intact ({} of {} bytes)",
        got.len(),
        page.len()
    );
    let log = local.stop();
    assert!(log.contains("stopped; counters"), "{log}");
    let log = remote.stop();
    assert!(log.contains("relayed=1"), "{log}");
    // Let the captures write what the kernel has handed them.
    std::thread::sleep(Duration::from_secs(1));
    for capture in captures {
        let log = capture.stop();
        assert!(
            log.lines()
                .any(|l| l.trim() == "0 packets dropped by kernel"),
            "{log}"
        );
    }
    let mut wire = Vec::new();
    for i in 0..2 {
        wire.extend(std::fs::read(dir.join(format!("wan{i}.pcap"))).unwrap());
    }
    assert!(
        wire.len() > page.len(),
        "the capture saw the transfer: {} bytes",
        wire.len()
    );
    let seen = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    for secret in [
        "correct horse",
        "alice",
        marker,
        "GET /secret.txt",
        "198.19.2.2",
    ] {
        assert!(
            !seen(secret.as_bytes()),
            "{secret:?} crossed a WAN link in clear"
        );
    }
    drop(cleanup);
}

/// Removes a test's directory, also when the test fails.
struct Cleanup(std::path::PathBuf);

/// The README recipe "UDP through the remote relay": Dante's `socksify`
/// runs socat, whose datagram goes through the remote relay's UDP
/// ASSOCIATE to a UDP service behind it, and whose answer comes back.
#[test]
fn recipe_udp_through_the_remote_relay() {
    mptcp_testbed::require_privileges().unwrap();
    let rp = mptcp_testbed::relay_path(1, None).unwrap();
    let service = rp
        .dest
        .run(|| std::net::UdpSocket::bind("198.19.2.2:5353"))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = service.recv_from(&mut buf) {
            let mut answer = b"answer: ".to_vec();
            answer.extend_from_slice(&buf[..n]);
            let _ = service.send_to(&answer, from);
        }
    });
    let mut remote = start_line(
        &rp.remote,
        "RELAY_PASSWORD='correct horse' mptcp relay remote --listen 198.18.0.2:1080 \
         --user alice --password-env RELAY_PASSWORD",
    );
    remote.wait_for("listening");
    let dir = std::env::temp_dir().join(format!("mptcp-recipe-udp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup(dir.clone());
    run_line_in(
        &rp.local,
        &dir,
        r"printf 'route {\n from: 0.0.0.0/0 to: 0.0.0.0/0 via: 198.18.0.2 port = 1080\n proxyprotocol: socks_v5\n protocol: tcp udp\n method: username\n}\n' > dante.conf",
    );
    let out = run_line_in(
        &rp.local,
        &dir,
        "echo query | SOCKS_CONF=dante.conf SOCKS_USERNAME=alice SOCKS_PASSWORD='correct horse' \
         socksify socat -t 2 - UDP:198.19.2.2:5353",
    );
    assert_eq!(out, "answer: query\n");
    let log = remote.stop();
    assert!(
        log.contains("udp_associations=0 udp_datagrams_up=1 udp_datagrams_down=1"),
        "{log}"
    );
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The README recipe "A whole service": the drop-in `mptcp enable` writes
/// (with `--root`, as packaging does; on a live system without it).
/// The README recipe "Several remote relays": two remotes on the rented
/// server, the router's relay with both; the first killed, the LAN goes
/// through the second; both killed, the LAN goes direct; the status shows
/// each remote's state.
#[test]
fn recipe_several_remote_relays() {
    mptcp_testbed::require_privileges().unwrap();
    let rp = mptcp_testbed::relay_path(2, Some(20)).unwrap();
    let _web = start_line(&rp.dest, "python3 -m http.server 8080 --bind 198.19.2.2");
    rp.dest.wait_listening(8080).unwrap();
    let remote_on = |port: u16| {
        let mut remote = start_line(
            &rp.remote,
            &format!(
                "RELAY_PASSWORD='correct horse' mptcp relay remote --listen 198.18.0.2:{port} \
                 --user alice --password-env RELAY_PASSWORD"
            ),
        );
        remote.wait_for("listening");
        remote
    };
    let first = remote_on(1080);
    let second = remote_on(1081);
    let remotes_file =
        std::env::temp_dir().join(format!("mptcp-recipes-remotes-{}", std::process::id()));
    let line = "RELAY_PASSWORD='correct horse' mptcp relay local --remote 198.18.0.2:1080 --remote 198.18.0.2:1081 --user alice --password-env RELAY_PASSWORD --redirect 0.0.0.0:12345";
    let mut cmd = sh(&rp.local, &format!("exec env {line}"));
    cmd.env("MPTCP_REMOTES_FILE", &remotes_file);
    let mut local = Daemon::start(cmd);
    local.wait_for("listening");
    run_line(
        &rp.local,
        "nft add table ip r; nft add chain ip r p '{ type nat hook prerouting priority dstnat; }'; \
         nft add rule ip r p iifname lan0 meta l4proto tcp redirect to :12345",
    );
    let fetch = || {
        rp.lan
            .command("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg("http://198.19.2.2:8080/")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let status = || {
        let out = mptcp_in(&rp.local, &["status", "--counters"])
            .env("MPTCP_REMOTES_FILE", &remotes_file)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let row = |status: &str, port: &str| {
        status
            .lines()
            .skip_while(|l| !l.starts_with("Remote relays"))
            .find(|l| l.contains(&format!("198.18.0.2:{port} ")))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert_eq!(fetch(), "200");
    // Both remotes up in the status (the relay writes it each second; no
    // row before the first time).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(row(&status(), "1080").contains(" up ") && row(&status(), "1081").contains(" up ")) {
        if Instant::now() > deadline {
            panic!("{}\n{}", status(), local.stop());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(first);
    let killed = Instant::now();
    while fetch() != "200" {
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "no LAN fetch within 2 s"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while !row(&status(), "1080").contains(" down ") {
        assert!(Instant::now() < deadline, "{}", status());
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(second);
    let killed = Instant::now();
    while fetch() != "200" {
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "no direct fetch within 2 s"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while !status().contains("no remote relay works: new LAN connections go directly") {
        assert!(Instant::now() < deadline, "{}", status());
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = local.stop();
    assert!(log.contains("new connections go direct"), "{log}");
    assert!(!remotes_file.exists(), "the relay removes its state file");
}

#[test]
fn recipe_enable_a_service() {
    let root = std::env::temp_dir().join(format!("mptcp-recipe-enable-{}", std::process::id()));
    std::fs::create_dir_all(root.join("usr/lib/systemd/system")).unwrap();
    std::fs::write(
        root.join("usr/lib/systemd/system/nginx.service"),
        "[Service]\nExecStart=/usr/sbin/nginx\n",
    )
    .unwrap();
    let host = Host::new("enable").unwrap();
    let root_s = root.to_str().unwrap();
    let out = run_line(&host, &format!("mptcp enable nginx --root {root_s}"));
    assert!(out.contains("50-mptcp.conf"), "{out}");
    let conf = run_line(
        &host,
        &format!("cat {root_s}/etc/systemd/system/nginx.service.d/50-mptcp.conf"),
    );
    assert!(conf.contains("libmptcp_preload.so"), "{conf}");
    assert!(conf.contains("GODEBUG=multipathtcp=1"), "{conf}");
    run_line(&host, &format!("mptcp disable nginx --root {root_s}"));
    std::fs::remove_dir_all(&root).unwrap();
}

/// A relay configuration file in a directory of its own, removed on drop.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn new(tag: &str) -> ConfigFile {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        ConfigFile(dir)
    }

    fn path(&self) -> std::path::PathBuf {
        self.0.join("relay.toml")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A relay with a configuration error names the key, and exits 1.
#[test]
fn relay_config_errors_name_the_key() {
    let config = ConfigFile::new("mptcp-cli-relay");
    let file = config.path();
    std::fs::write(&file, "[remote]\nlisten = [\"127.0.0.1:0\"]\nbogus = 1\n").unwrap();
    let out = Command::new(MPTCP)
        .args(["relay", "remote", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("bogus"), "{err}");
    let out = Command::new(MPTCP)
        .args(["relay", "local"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no remote named");
}

/// Without users, the open-proxy refusal names the flags that add one when
/// the relay was configured by flags, and both ways with a file.
#[test]
fn relay_open_proxy_refusal_names_the_flags() {
    let refusal = |args: &[&str]| {
        let out = Command::new(MPTCP)
            .args(["relay", "remote"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refusal(&["--listen", "198.18.0.1:1080"]);
    assert!(
        err.contains("open proxy: give --user NAME --password-env VAR"),
        "{err}"
    );
    assert!(!err.contains("[[remote.users]]"), "{err}");
    let err = refusal(&["--listen", "127.0.0.1:0"]);
    assert!(
        err.contains("or add --allow-unauthenticated-loopback"),
        "{err}"
    );

    let config = ConfigFile::new("mptcp-cli-open");
    let file = config.path();
    std::fs::write(&file, "[remote]\nlisten = [\"198.18.0.1:1080\"]\n").unwrap();
    let err = refusal(&["--config", file.to_str().unwrap()]);
    assert!(err.contains("[[remote.users]]"), "{err}");
    assert!(
        err.contains("hint: or give --user NAME --password-env VAR"),
        "{err}"
    );
}

/// A config file with passwords that others may read is served, with a
/// warning that says how to fix it; at mode 0600 there is none.
#[test]
fn relay_warns_about_a_readable_file_with_passwords() {
    use std::os::unix::fs::PermissionsExt;
    let config = ConfigFile::new("mptcp-cli-mode");
    let file = config.path();
    std::fs::write(
        &file,
        "[remote]\nlisten = [\"127.0.0.1:0\"]\n\
         [[remote.users]]\nusername = \"alice\"\npassword = \"correct horse\"\n",
    )
    .unwrap();
    let start = |mode: u32| {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut relay = Daemon::start({
            let mut cmd = Command::new(MPTCP);
            cmd.args(["relay", "remote", "--config", file.to_str().unwrap()]);
            cmd
        });
        relay.wait_for("listening");
        relay.stop()
    };
    let log = start(0o644);
    assert!(
        log.contains("WARN") && log.contains("(mode 644): chmod 600"),
        "{log}"
    );
    let log = start(0o600);
    assert!(!log.contains("holds passwords"), "{log}");
}

/// The command line's user completes a file that has none: the relay
/// starts (the check runs after the flags are applied).
#[test]
fn relay_remote_takes_its_user_from_the_command_line_over_a_file() {
    let config = ConfigFile::new("mptcp-cli-relay-user");
    let file = config.path();
    std::fs::write(&file, "[remote]\nlisten = [\"127.0.0.1:0\"]\n").unwrap();
    let path = file.to_str().unwrap();
    let out = Command::new(MPTCP)
        .args(["relay", "remote", "--config", path])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "no user at all: an open proxy");
    let mut relay = Command::new(MPTCP)
        .args(["relay", "remote", "--config", path])
        .args(["--user", "alice", "--password-env", "RELAY_TEST_PASSWORD"])
        .env("RELAY_TEST_PASSWORD", "correct horse")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let running = relay.try_wait().unwrap().is_none();
    let _ = relay.kill();
    let out = relay.wait_with_output().unwrap();
    assert!(running, "{}", String::from_utf8_lossy(&out.stderr));
}

fn endpoints(host: &Host) -> String {
    host.ip(&["mptcp", "endpoint", "show"]).unwrap()
}

/// A host with one up interface, `wan1` (198.18.5.1/24, a veth whose peer
/// stays in the same host), for `paths auto` to find.
fn host_with_wan1(name: &str) -> Host {
    let host = Host::new(name).unwrap();
    host.ip_batch(&[
        "link add wan1 type veth peer name wan1peer",
        "addr add 198.18.5.1/24 dev wan1",
        "link set wan1 up",
        "link set wan1peer up",
    ])
    .unwrap();
    host
}

/// `mptcp paths auto` adds an endpoint and source routing for each
/// interface, follows a new one, and removes all it added on SIGTERM.
#[test]
fn paths_auto_follows_interfaces_and_cleans_up() {
    mptcp_testbed::require_privileges().unwrap();
    let host = host_with_wan1("paths");

    let dry = mptcp_in(&host, &["paths", "auto", "--include", "wan*", "--dry-run"])
        .output()
        .unwrap();
    let dry = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.contains("ip mptcp endpoint add 198.18.5.1"), "{dry}");
    assert!(dry.contains("rule add from 198.18.5.1"), "{dry}");
    assert_eq!(endpoints(&host).trim(), "", "a dry run changes nothing");

    let mut daemon = Daemon::start(mptcp_in(&host, &["paths", "auto", "--include", "wan*"]));
    daemon.wait_for("ip mptcp endpoint add 198.18.5.1");
    assert!(endpoints(&host).contains("198.18.5.1"));
    host.ip_batch(&[
        "link add wan2 type veth peer name wan2peer",
        "addr add 198.18.6.1/24 dev wan2",
        "link set wan2 up",
        "link set wan2peer up",
    ])
    .unwrap();
    daemon.wait_for("ip mptcp endpoint add 198.18.6.1");
    assert!(endpoints(&host).contains("198.18.6.1"));

    daemon.stop();
    assert_eq!(endpoints(&host).trim(), "", "removed on exit");
    let rules = host.ip(&["rule", "show"]).unwrap();
    assert!(!rules.contains("198.18.5.1"), "{rules}");
}

/// A loopback remote relay that needs no user and may connect to
/// loopback destinations, for tests of the daemon itself.
fn loopback_relay(extra: &[&str]) -> Command {
    let mut cmd = Command::new(MPTCP);
    cmd.args(["relay", "remote", "--listen", "127.0.0.1:0"])
        .args([
            "--allow-unauthenticated-loopback",
            "--allow-destination",
            "127.0.0.0/8",
        ])
        .args(extra);
    cmd
}

/// Log lines carry no ANSI colour into a pipe (journald, `| cat`); at a
/// terminal they do, unless NO_COLOR is set.
#[test]
fn relay_logs_colour_only_at_a_terminal() {
    let mut relay = Daemon::start({
        let mut cmd = loopback_relay(&[]);
        cmd.env_remove("NO_COLOR");
        cmd
    });
    relay.wait_for("listening");
    let log = relay.stop();
    assert!(log.contains("stopped; counters"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI codes in a pipe: {log:?}");

    // At a terminal (util-linux `script` gives it a pseudo-terminal).
    let at_terminal = |no_color: Option<&str>| {
        let line = format!(
            "timeout -s INT 1 {MPTCP} relay remote --listen 127.0.0.1:0 \
             --allow-unauthenticated-loopback"
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"])
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("listening"), "{text}");
        text
    };
    assert!(at_terminal(None).contains('\x1b'), "colour at a terminal");
    assert!(!at_terminal(Some("1")).contains('\x1b'), "NO_COLOR=1");
}

/// Under systemd's `Type=notify`: READY=1 once the listener accepts,
/// WATCHDOG=1 every WATCHDOG_USEC/2, STOPPING=1 on SIGTERM, as datagrams
/// to the unix socket NOTIFY_SOCKET names.
#[test]
fn relay_notifies_readiness_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let path = std::env::temp_dir().join(format!("mptcp-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let recv = || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut relay = Daemon::start({
        let mut cmd = loopback_relay(&[]);
        cmd.env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "200000");
        cmd
    });
    assert_eq!(recv(), "READY=1");
    let line = relay.wait_for("listening: RemoteSocks5 on ");
    let addr: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    TcpStream::connect(addr).expect("listening when READY=1 arrives");
    let start = Instant::now();
    for _ in 0..5 {
        assert_eq!(recv(), "WATCHDOG=1");
    }
    let took = start.elapsed();
    assert!(
        took > Duration::from_millis(350) && took < Duration::from_secs(2),
        "5 keep-alives every 100 ms took {took:?}"
    );
    relay.signal("TERM");
    let mut last = recv();
    while last == "WATCHDOG=1" {
        last = recv();
    }
    assert_eq!(last, "STOPPING=1");
    relay.stop();
    std::fs::remove_file(&path).unwrap();
}

/// A port that was free a moment ago (for a config file that must name
/// the same port across a reload).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback server that echoes every connection.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut back = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut conn, &mut back);
            });
        }
    });
    addr
}

/// A SOCKS5 CONNECT (no authentication) to `dest` through `relay`: the
/// connection and the reply code.
fn socks5_request(relay: SocketAddr, dest: SocketAddr) -> (TcpStream, u8) {
    use std::io::{Read, Write};
    let SocketAddr::V4(dest) = dest else {
        panic!("IPv4 only")
    };
    let mut conn = TcpStream::connect(relay).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut hello = vec![5, 1, 0, 5, 1, 0, 1];
    hello.extend(dest.ip().octets());
    hello.extend(dest.port().to_be_bytes());
    conn.write_all(&hello).unwrap();
    let mut reply = [0u8; 12];
    conn.read_exact(&mut reply).unwrap();
    assert_eq!(reply[..3], [5, 0, 5], "no-authentication accepted");
    (conn, reply[3])
}

/// A SOCKS5 CONNECT that must succeed.
fn socks5_connect(relay: SocketAddr, dest: SocketAddr) -> TcpStream {
    let (conn, code) = socks5_request(relay, dest);
    assert_eq!(code, 0, "CONNECT to {dest} accepted");
    conn
}

/// Writes `data` on `conn` and checks that the echo brings it back.
fn echo_round(conn: &mut TcpStream, data: &[u8]) {
    use std::io::{Read, Write};
    conn.write_all(data).unwrap();
    let mut back = vec![0u8; data.len()];
    conn.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
}

/// A remote relay's config file on loopback, listening on `ports`.
fn write_relay_config(file: &std::path::Path, ports: &[u16]) {
    let listen: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    std::fs::write(
        file,
        format!(
            "[remote]\nlisten = [{}]\nallow_unauthenticated_loopback = true\n\
             allow_destinations = [\"127.0.0.0/8\"]\n",
            listen.join(", ")
        ),
    )
    .unwrap();
}

/// SIGHUP re-reads the file: a connection open across it carries its
/// bytes intact before and after, a listener added to the file appears,
/// and the counters add up over both relays.
#[test]
fn relay_reload_keeps_connections_and_adds_a_listener() {
    let dir = std::env::temp_dir().join(format!("mptcp-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("relay.toml");
    let (first, second) = (free_port(), free_port());
    write_relay_config(&file, &[first]);
    let echo = echo_server();
    let mut relay = Daemon::start({
        let mut cmd = Command::new(MPTCP);
        cmd.args(["relay", "remote", "--config", file.to_str().unwrap()]);
        cmd
    });
    relay.wait_for(&format!("listening: RemoteSocks5 on 127.0.0.1:{first}"));
    let first_addr: SocketAddr = ([127, 0, 0, 1], first).into();
    let mut old = socks5_connect(first_addr, echo);
    let before: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    echo_round(&mut old, &before);

    write_relay_config(&file, &[first, second]);
    relay.signal("HUP");
    let line = relay.wait_for("SIGHUP: reloaded");
    assert!(
        line.contains(&format!(
            "listeners added: RemoteSocks5 on 127.0.0.1:{second}"
        )),
        "{line}"
    );
    relay.wait_for(&format!("listening: RemoteSocks5 on 127.0.0.1:{second}"));
    let after: Vec<u8> = before.iter().rev().copied().collect();
    echo_round(&mut old, &after);
    for port in [first, second] {
        let mut new = socks5_connect(([127, 0, 0, 1], port).into(), echo);
        echo_round(&mut new, b"through the reloaded relay");
    }
    drop(old);
    let log = relay.stop();
    assert!(log.contains("stopped; counters: accepted=3"), "{log}");
    assert!(!log.contains("RemoteSocks5 on 127.0.0.1:0"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A file that does not parse, or names a port another process listens
/// on, is refused at SIGHUP with the reason at warn level; the running
/// relay goes on serving.
#[test]
fn relay_reload_refuses_a_broken_file_and_keeps_serving() {
    let dir = std::env::temp_dir().join(format!("mptcp-reload-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("relay.toml");
    let port = free_port();
    write_relay_config(&file, &[port]);
    let echo = echo_server();
    let mut relay = Daemon::start({
        let mut cmd = Command::new(MPTCP);
        cmd.args(["relay", "remote", "--config", file.to_str().unwrap()]);
        cmd
    });
    relay.wait_for("listening");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut conn = socks5_connect(addr, echo);

    std::fs::write(&file, "[remote]\nlisten = [\"127.0.0.1:1\"\nbogus = 1\n").unwrap();
    relay.signal("HUP");
    let line = relay.wait_for("SIGHUP: the configuration in force stays");
    assert!(line.contains("WARN") && line.contains("line 3"), "{line}");

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    write_relay_config(&file, &[port, taken_port]);
    relay.signal("HUP");
    let line = relay.wait_for("SIGHUP: the configuration in force stays");
    assert!(
        line.contains(&format!("127.0.0.1:{taken_port}")) && line.contains("in use"),
        "{line}"
    );

    echo_round(&mut conn, b"still the same relay");
    let mut again = socks5_connect(addr, echo);
    echo_round(&mut again, b"and it still accepts");
    drop((conn, again));
    let log = relay.stop();
    assert!(!log.contains("SIGHUP: reloaded"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--metrics`: the counters in the Prometheus text format, scraped with
/// curl after relaying bytes and refusing a destination.
#[test]
fn relay_metrics_count_connections_bytes_and_errors() {
    let mut relay = Daemon::start(loopback_relay(&["--metrics", "0"]));
    let line = relay.wait_for("listening: RemoteSocks5 on ");
    let addr: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    let line = relay.wait_for("metrics: http://127.0.0.1:");
    let url = line.rsplit(' ').next().unwrap().to_owned();
    let echo = echo_server();
    let mut conn = socks5_connect(addr, echo);
    let data = vec![7u8; 123_456];
    echo_round(&mut conn, &data);
    let (denied, code) = socks5_request(addr, "10.255.0.1:80".parse().unwrap());
    assert_eq!(code, 2, "the default policy refuses private destinations");
    drop(denied);

    let scrape = || {
        let out = Command::new("curl").args(["-sSf", &url]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let value = |text: &str, series: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let active_becomes = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = scrape();
            if value(&text, "mptcp_relay_connections_active") == n {
                return text;
            }
            assert!(Instant::now() < deadline, "active never {n}:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let text = active_becomes(1);
    assert!(
        text.contains("# TYPE mptcp_relay_bytes_total counter"),
        "{text}"
    );
    assert_eq!(value(&text, "mptcp_relay_connections_accepted_total"), 2);
    assert_eq!(value(&text, "mptcp_relay_connections_relayed_total"), 1);
    assert_eq!(
        value(&text, "mptcp_relay_bytes_total{direction=\"up\"}"),
        123_456
    );
    // Down also counts the relay's 10-byte SOCKS5 reply.
    let down = value(&text, "mptcp_relay_bytes_total{direction=\"down\"}");
    assert!((123_456..=123_466).contains(&down), "{text}");
    assert_eq!(
        value(
            &text,
            "mptcp_relay_errors_total{kind=\"destination_denied\"}"
        ),
        1
    );
    assert_eq!(value(&text, "mptcp_relay_errors_total{kind=\"auth\"}"), 0);
    assert_eq!(value(&text, "mptcp_relay_session_errors_total"), 0);
    assert_eq!(value(&text, "mptcp_relay_worker_panics_total"), 0);
    assert_eq!(value(&text, "mptcp_relay_udp_associations"), 0);
    assert_eq!(
        value(&text, "mptcp_relay_udp_datagrams_total{direction=\"up\"}"),
        0
    );
    assert_eq!(
        value(&text, "mptcp_relay_udp_drops_total{reason=\"fragment\"}"),
        0
    );
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(5);
    while value(&scrape(), "mptcp_relay_connections_active") != 0 {
        assert!(
            Instant::now() < deadline,
            "the closed connection stays active"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let missing = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(url.replace("/metrics", "/nope"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&missing.stdout), "404");
    relay.stop();
}

/// `mptcp paths auto` as a normal user: each refusal is logged once, and
/// it stops with exit 3 (missing privilege) instead of running on.
#[test]
fn paths_auto_without_privilege_exits_3() {
    mptcp_testbed::require_privileges().unwrap();
    let host = host_with_wan1("paths-nobody");
    let mut cmd = host.command("timeout");
    cmd.args([
        "-s",
        "INT",
        "20",
        "setpriv",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ])
    .args(["--reuid=65534", "--regid=65534", "--clear-groups", MPTCP])
    .args(["paths", "auto", "--include", "wan*"])
    .env("MPTCP_LINKS_FILE", links_file());
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("needs CAP_NET_ADMIN"), "{stderr}");
    assert_eq!(
        stderr.matches("ip rule add from 198.18.5.1").count(),
        1,
        "one line per refusal:\n{stderr}"
    );
    assert_eq!(endpoints(&host).trim(), "", "nothing added");
}

/// Failures an operator must see reach the default log level: a client
/// with a wrong password is a warning within seconds, not only a counter
/// at exit.
#[test]
fn relay_warns_about_wrong_passwords() {
    use std::io::{Read, Write};
    let mut relay = Daemon::start({
        let mut cmd = loopback_relay(&["--user", "alice", "--password-env", "RELAY_ALERT_PW"]);
        cmd.env("RELAY_ALERT_PW", "correct horse");
        cmd
    });
    let line = relay.wait_for("listening: RemoteSocks5 on ");
    let addr: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(&[
        5, 1, 2, 1, 5, b'a', b'l', b'i', b'c', b'e', 5, b'w', b'r', b'o', b'n', b'g',
    ])
    .unwrap();
    let mut reply = [0u8; 4];
    conn.read_exact(&mut reply).unwrap();
    assert_eq!(
        reply[..3],
        [5, 2, 1],
        "user/password method, then the verdict"
    );
    assert_ne!(reply[3], 0, "a wrong password is refused");
    let line = relay.wait_for("relay failures: err_auth=1");
    assert!(
        line.contains("WARN") && line.contains("wrong username or password"),
        "{line}"
    );
    relay.stop();
}

/// A remote relay taking passwords in plain SOCKS5 beyond loopback says so
/// at start; on loopback, or with a key and no plain clients, it does not.
#[test]
fn relay_warns_when_passwords_would_cross_the_network_in_clear() {
    let start = |listen: &str, extra: &[&str]| {
        let mut cmd = Command::new(MPTCP);
        cmd.args(["relay", "remote", "--listen", listen])
            .args(["--user", "alice", "--password-env", "RELAY_CLEAR_PW"])
            .args(extra)
            .env("RELAY_CLEAR_PW", "correct horse");
        let mut relay = Daemon::start(cmd);
        relay.wait_for("listening: RemoteSocks5 on ");
        relay.stop()
    };
    let exposed = start("0.0.0.0:0", &[]);
    assert!(exposed.contains("passwords in clear"), "{exposed}");
    assert!(!start("127.0.0.1:0", &[]).contains("passwords in clear"));
    let key = std::env::temp_dir().join(format!("mptcp-clear-key-{}", std::process::id()));
    let _cleanup = Cleanup(key.clone());
    let out = Command::new(MPTCP)
        .args(["relay", "keygen", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let sealed = start("0.0.0.0:0", &["--key-file", key.to_str().unwrap()]);
    assert!(!sealed.contains("passwords in clear"), "{sealed}");
}

/// `--password-file` (a systemd credential, say): the first line is the
/// password; the right one logs in, a wrong one does not.
#[test]
fn relay_takes_its_password_from_a_file() {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    let file = std::env::temp_dir().join(format!("mptcp-relay-pw-{}", std::process::id()));
    std::fs::write(&file, "correct horse\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cleanup = Cleanup(file.clone());
    let mut relay = Daemon::start(loopback_relay(&[
        "--user",
        "alice",
        "--password-file",
        file.to_str().unwrap(),
    ]));
    let line = relay.wait_for("listening: RemoteSocks5 on ");
    let addr: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    let login = |password: &[u8]| {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut hello = vec![5, 1, 2, 1, 5];
        hello.extend_from_slice(b"alice");
        hello.push(password.len() as u8);
        hello.extend_from_slice(password);
        conn.write_all(&hello).unwrap();
        let mut reply = [0u8; 4];
        conn.read_exact(&mut reply).unwrap();
        reply[3]
    };
    assert_eq!(login(b"correct horse"), 0, "the file's password logs in");
    assert_ne!(login(b"correct horse\n"), 0, "without its line end");
    let log = relay.stop();
    assert!(
        !log.contains("may read it"),
        "a 0600 file draws no warning: {log}"
    );
    drop(cleanup);
}

/// Under systemd, with stderr the stream JOURNAL_STREAM names (a unix
/// socket here, as journald's is), each line starts with its syslog
/// priority and has no timestamp of its own (the journal adds one).
#[test]
fn relay_log_lines_suit_the_journal() {
    use std::os::fd::OwnedFd;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixStream;
    let (ours, theirs) = UnixStream::pair().unwrap();
    let meta = std::fs::File::from(OwnedFd::from(theirs.try_clone().unwrap()))
        .metadata()
        .unwrap();
    let mut relay = loopback_relay(&[])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("NO_COLOR")
        .stderr(Stdio::from(OwnedFd::from(theirs)))
        .spawn()
        .unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut lines = BufReader::new(ours).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = Command::new("kill").arg(relay.id().to_string()).status();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    relay.wait().unwrap();
    assert!(first.starts_with("<6> INFO "), "{first:?}");
    assert!(!first.contains('\x1b'), "{first:?}");
    assert!(
        rest.iter()
            .any(|l| l.starts_with("<6> INFO ") && l.contains("stopped")),
        "{rest:?}"
    );
}
