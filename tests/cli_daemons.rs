//! The long-running commands, `mptcp relay local|remote` and `mptcp paths
//! auto`, run for real in test-bed namespaces, stopped with signals.
//! These are also the README's recipes.

use std::io::{BufRead, BufReader, Write};
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

    /// SIGTERM, then the exit code (within 15 s).
    fn stop(mut self) -> (i32, Vec<String>) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.log.extend(self.lines.try_iter());
                std::thread::sleep(Duration::from_millis(50));
                self.log.extend(self.lines.try_iter());
                return (status.code().unwrap_or(-1), std::mem::take(&mut self.log));
            }
            assert!(Instant::now() < deadline, "did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
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
    cmd.args(args);
    cmd
}

const PASSWORD: &str = "correct horse";

/// The README recipe: a LAN behind a router with two WAN links, a rented
/// server running the remote relay; LAN traffic is redirected by nftables
/// into the local relay and carried over MPTCP on both links.
#[test]
fn relay_carries_redirected_lan_traffic_over_two_links() {
    mptcp_testbed::require_privileges().unwrap();
    let rp = mptcp_testbed::relay_path(2, Some(20)).unwrap();

    // The destination: sends 8 MB of the test pattern to each client.
    let dest_addr = SocketAddr::new(rp.dest_addr().into(), 8000);
    let listener = rp.dest.run(|| TcpListener::bind(dest_addr).unwrap());
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        send_pattern(&mut conn, 8 << 20).unwrap()
    });

    let mut remote_cmd = mptcp_in(
        &rp.remote,
        &[
            "relay",
            "remote",
            "--listen",
            "198.18.0.2:1080",
            "--user",
            "alice",
            "--password-env",
            "RELAY_PASSWORD",
        ],
    );
    remote_cmd.env("RELAY_PASSWORD", PASSWORD);
    let mut remote = Daemon::start(remote_cmd);
    remote.wait_for("listening");

    let mut local_cmd = mptcp_in(
        &rp.local,
        &[
            "relay",
            "local",
            "--remote",
            "198.18.0.2:1080",
            "--user",
            "alice",
            "--password-env",
            "RELAY_PASSWORD",
            "--redirect",
            "0.0.0.0:12345",
        ],
    );
    local_cmd.env("RELAY_PASSWORD", PASSWORD);
    let mut local = Daemon::start(local_cmd);
    local.wait_for("listening");

    // Transparent redirect of the LAN's TCP into the local relay.
    let mut nft = rp.local.command("nft");
    nft.args(["-f", "-"]).stdin(Stdio::piped());
    let mut nft = nft.spawn().unwrap();
    nft.stdin
        .take()
        .unwrap()
        .write_all(
            b"table ip mptcp_relay {\n\
              chain prerouting {\n\
              type nat hook prerouting priority dstnat;\n\
              iifname \"lan0\" meta l4proto tcp redirect to :12345\n\
              }\n}\n",
        )
        .unwrap();
    assert!(nft.wait().unwrap().success(), "nft ruleset");

    // A plain TCP client on the LAN, unaware of any relay.
    let client = rp.lan.spawn(move || {
        let mut conn = TcpStream::connect(dest_addr).unwrap();
        receive_and_check(&mut conn).unwrap()
    });
    // While data flows: the relays' connection uses both WAN links.
    std::thread::sleep(Duration::from_millis(400));
    let status = mptcp_in(&rp.local, &["status", "--counters"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("-> 198.18.0.2:1080"), "{status}");
    assert!(status.contains("subflows 2"), "{status}");

    let (bytes, sum) = client.join().unwrap();
    assert_eq!(bytes, 8 << 20);
    assert_eq!(sum, server.join().unwrap(), "same bytes at both ends");

    local.signal("USR1");
    local.wait_for("counters: accepted=1");
    let (code, log) = local.stop();
    assert_eq!(code, 0, "{}", log.join("\n"));
    assert!(
        log.iter().any(|l| l.contains("stopped; counters")),
        "{}",
        log.join("\n")
    );
    let (code, log) = remote.stop();
    assert_eq!(code, 0, "{}", log.join("\n"));
}

/// A relay with a configuration error names the key, and exits 1.
#[test]
fn relay_config_errors_name_the_key() {
    let dir = std::env::temp_dir().join(format!("mptcp-cli-relay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("relay.toml");
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
    std::fs::remove_dir_all(&dir).unwrap();
}

fn endpoints(host: &Host) -> String {
    host.ip(&["mptcp", "endpoint", "show"]).unwrap()
}

/// `mptcp paths auto` adds an endpoint and source routing for each
/// interface, follows a new one, and removes all it added on SIGTERM.
#[test]
fn paths_auto_follows_interfaces_and_cleans_up() {
    mptcp_testbed::require_privileges().unwrap();
    let host = Host::new("paths").unwrap();
    host.ip_batch(&[
        "link add wan1 type veth peer name wan1peer",
        "addr add 198.18.5.1/24 dev wan1",
        "link set wan1 up",
        "link set wan1peer up",
    ])
    .unwrap();

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

    let (code, log) = daemon.stop();
    assert_eq!(code, 0, "{}", log.join("\n"));
    assert_eq!(endpoints(&host).trim(), "", "removed on exit");
    let rules = host.ip(&["rule", "show"]).unwrap();
    assert!(!rules.contains("198.18.5.1"), "{rules}");
}
