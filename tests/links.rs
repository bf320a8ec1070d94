//! `mptcp paths auto` with link probes and roles, and the links section of
//! `mptcp status`, run as a user would: the built command in a test-bed
//! client with two uplinks, a link failing silently under it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use mptcp_testbed::{Daemon, Host, Link};

const MPTCP: &str = env!("CARGO_BIN_EXE_mptcp");

/// A scratch directory of this test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("mptcp-links-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `mptcp ARGS` in `host`, its output appended to `log`.
fn mptcp_daemon(host: &Host, log: &Path, args: &[&str], state_file: &Path) -> Daemon {
    let mut cmd = host.command("sh");
    cmd.arg("-c")
        .arg(format!("exec \"$0\" \"$@\" >>'{}' 2>&1", log.display()))
        .arg(MPTCP)
        .args(args)
        .env("NO_COLOR", "1")
        .env("MPTCP_LINKS_FILE", state_file);
    Daemon::spawn(&mut cmd).unwrap()
}

/// Waits (at most 10 s) until `log` has a line containing `needle`.
fn wait_for_line(log: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(|l| l.contains(needle)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needle:?}:\n{text}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn endpoints(host: &Host) -> String {
    host.ip(&["mptcp", "endpoint", "show"]).unwrap()
}

fn status(host: &Host, state_file: &Path) -> String {
    let out = host
        .command(MPTCP)
        .args(["status", "--counters"])
        .env("MPTCP_LINKS_FILE", state_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The row of `link` in the links section of `status`.
fn link_row<'a>(status: &'a str, link: &str) -> &'a str {
    status
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{link} ")))
        .unwrap_or_else(|| panic!("no row for {link}:\n{status}"))
}

#[test]
fn paths_auto_probes_links_takes_a_silent_one_out_and_status_shows_it() {
    mptcp_testbed::require_privileges().unwrap();
    let client = Host::new("links-client").unwrap();
    let server = Host::new("links-server").unwrap();
    let links: Vec<Link> = (0..2)
        .map(|i| Link::uplink(&client, &server, i, None).unwrap())
        .collect();
    let scratch = Scratch::new("probe");
    let (log, state, config) = (
        scratch.path("log"),
        scratch.path("links"),
        scratch.path("paths.toml"),
    );
    std::fs::write(
        &config,
        "[probe]\ntargets = [\"198.18.0.2:9\"]\ninterval = 0.2\ntimeout = 0.2\n\n\
         [roles]\n\"eth1\" = \"backup\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let daemon = mptcp_daemon(
        &client,
        &log,
        &[
            "paths",
            "auto",
            "--config",
            config,
            "--down-after",
            "2",
            "--metrics",
            "9465",
        ],
        &state,
    );
    wait_for_line(&log, "link eth0 probing -> up");
    wait_for_line(&log, "link eth1 probing -> up");
    wait_for_line(&log, "ip mptcp endpoint add 198.18.1.1");
    assert!(
        endpoints(&client).contains("198.18.1.1 id 2 subflow backup dev eth1"),
        "{}",
        endpoints(&client)
    );
    let shown = status(&client, &state);
    assert!(link_row(&shown, "eth0").contains(" up "), "{shown}");
    assert!(link_row(&shown, "eth1").contains(" backup "), "{shown}");

    let monitor_log = scratch.path("monitor");
    let _monitor = mptcp_daemon(&client, &monitor_log, &["monitor", "--json"], &state);
    wait_for_line(&monitor_log, "listening for MPTCP events");
    links[1].blackhole().unwrap();
    wait_for_line(&log, "link eth1 up -> down: 2 probes lost in a row");
    wait_for_line(&monitor_log, r#""link":"eth1","local":"198.18.1.1""#);
    wait_for_line(&monitor_log, r#""state":"down""#);
    wait_for_line(&log, "ip mptcp endpoint delete id 2 # 198.18.1.1");
    assert!(!endpoints(&client).contains("198.18.1.1"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !link_row(&status(&client, &state), "eth1").contains(" down ") {
        assert!(Instant::now() < deadline, "{}", status(&client, &state));
        thread::sleep(Duration::from_millis(50));
    }
    // The same in `status --json`.
    let out = client
        .command(MPTCP)
        .args(["status", "--counters", "--json"])
        .env("MPTCP_LINKS_FILE", &state)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let listed = json["links"]["links"]
        .as_array()
        .expect("links in the JSON");
    let eth1 = listed.iter().find(|l| l["link"] == "eth1").expect("eth1");
    assert_eq!(eth1["state"], "down", "{json}");
    assert_eq!(eth1["role"], "backup", "{json}");
    assert_eq!(eth1["address"], "198.18.1.1", "{json}");
    assert_eq!(json["links"]["fresh"], true, "{json}");
    // The same for Prometheus, with each link's bytes.
    let metrics = client
        .command("curl")
        .args(["-sS", "--max-time", "5", "http://127.0.0.1:9465/metrics"])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    for line in [
        "mptcp_paths_link_state{link=\"eth1\",state=\"down\"} 1",
        "mptcp_paths_link_state{link=\"eth0\",state=\"up\"} 1",
        "mptcp_paths_link_role{link=\"eth1\",role=\"backup\"} 1",
        "mptcp_paths_link_usable{link=\"eth1\"} 0",
        "mptcp_paths_link_probe_loss_ratio{link=\"eth1\"}",
        "mptcp_paths_link_probe_rtt_seconds{link=\"eth0\"}",
        "mptcp_paths_link_bytes_total{link=\"eth0\",direction=\"sent\"}",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    links[1].restore().unwrap();
    wait_for_line(&log, "link eth1 down -> up: 3 probes answered in a row");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !endpoints(&client).contains("198.18.1.1") {
        assert!(Instant::now() < deadline, "the endpoint did not come back");
        thread::sleep(Duration::from_millis(20));
    }

    let stopped = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.exists() || !endpoints(&client).trim().is_empty() {
        assert!(
            Instant::now() < deadline,
            "not cleaned up:\n{}\n{}",
            endpoints(&client),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let rules = client.ip(&["rule", "show"]).unwrap();
    assert!(!rules.contains("lookup 70"), "{rules}");
}

/// `mptcp paths auto ARGS` in `host`, its exit code and output.
fn paths_auto_once(host: &Host, args: &[&str]) -> (Option<i32>, String) {
    let out = host
        .command(MPTCP)
        .args(["paths", "auto"])
        .args(args)
        .env("NO_COLOR", "1")
        .env(
            "MPTCP_LINKS_FILE",
            std::env::temp_dir().join(format!("links-once-{}", std::process::id())),
        )
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn paths_auto_refuses_bad_probe_settings_with_the_reason() {
    mptcp_testbed::require_privileges().unwrap();
    let host = Host::new("links-bad").unwrap();
    let scratch = Scratch::new("bad");
    let config = scratch.path("paths.toml");
    std::fs::write(
        &config,
        "[probe]\ntargets = [\"198.18.0.2:9\"]\nintervall = 1\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    for (args, reason) in [
        (&["--probe-interval", "0.5"][..], "without a target"),
        (
            &["--probe", "198.18.0.2:9", "--probe-interval", "0"],
            "give seconds",
        ),
        (
            &["--probe", "198.18.0.2:9", "--down-after", "0"],
            "give a count",
        ),
        (
            &["--role", "eth1=primary"],
            "expected active, backup or off",
        ),
        (&["--role", "=backup"], "glob is empty"),
        (&["--config", config], "intervall"),
    ] {
        let (code, text) = paths_auto_once(&host, args);
        assert_eq!(code, Some(2), "{args:?}: {text}");
        assert!(text.contains(reason), "{args:?}: {text}");
    }
    assert!(endpoints(&host).trim().is_empty());
}

/// A router whose uplink has no default route yet: its LAN interface gets
/// no endpoint; once the uplink has one, only the uplink does.
#[test]
fn paths_auto_gives_endpoints_to_uplinks_only() {
    mptcp_testbed::require_privileges().unwrap();
    let host = Host::new("links-lan").unwrap();
    host.ip_batch(&[
        "link add lan0 type veth peer name lan0peer",
        "addr add 198.19.1.1/24 dev lan0",
        "link set lan0 up",
        "link set lan0peer up",
        "link add wan0 type veth peer name wan0peer",
        "addr add 198.18.7.1/24 dev wan0",
        "link set wan0 up",
        "link set wan0peer up",
    ])
    .unwrap();
    let (code, text) = paths_auto_once(&host, &["--dry-run"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("endpoint add"), "{text}");
    host.ip(&[
        "route",
        "add",
        "default",
        "via",
        "198.18.7.2",
        "dev",
        "wan0",
    ])
    .unwrap();
    // With probes too: a dry run sends none and prints what a link that
    // answers gets.
    let (code, text) = paths_auto_once(&host, &["--dry-run", "--probe", "198.18.7.2:9"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("ip mptcp endpoint add 198.18.7.1 id 1 subflow dev wan0"),
        "{text}"
    );
    assert!(!text.contains("endpoint add 198.19.1.1"), "{text}");
}
