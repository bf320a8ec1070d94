//! The `mptcp` command run for real: the built binary, inside test-bed
//! network namespaces where it changes anything, cross-checked with iproute2.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mptcp_testbed::{Host, TwoLinks};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const MPTCP: &str = env!("CARGO_BIN_EXE_mptcp");

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the command, returns its output; panics with stderr when it could
/// not start.
fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs `cmd`, asserts it exits with `code`, returns its stdout.
fn expect_code(cmd: &mut Command, code: i32) -> String {
    let out = output(cmd);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?}\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// State files of daemons this test process does not run: none, whatever
/// the host's own `paths auto` or relay keep.
fn no_daemon_state(cmd: &mut Command) {
    let none = std::env::temp_dir().join(format!("mptcp-cli-none-{}", std::process::id()));
    cmd.env("MPTCP_LINKS_FILE", &none)
        .env("MPTCP_REMOTES_FILE", &none);
}

fn mptcp(args: &[&str]) -> Command {
    let mut cmd = Command::new(MPTCP);
    cmd.args(args);
    no_daemon_state(&mut cmd);
    cmd
}

fn in_host(host: &Host, args: &[&str]) -> Command {
    let mut cmd = host.command(MPTCP);
    cmd.args(args);
    no_daemon_state(&mut cmd);
    cmd
}

/// The preload library beside the `mptcp` binary. `cargo test -p mptcp`
/// does not build other packages' cdylibs (`cargo test --workspace` does),
/// so it is built here once, with the same profile and target directory.
fn preload_library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let profile_dir = Path::new(MPTCP).parent().expect("binary has a directory");
        let lib = profile_dir.join("libmptcp_preload.so");
        if !lib.is_file() {
            let target_dir = profile_dir.parent().expect("profile dir has a parent");
            let mut cargo = Command::new(env!("CARGO"));
            cargo
                .args(["build", "-p", "mptcp-preload", "--lib"])
                .env("CARGO_TARGET_DIR", target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cargo.arg("--release");
            }
            let status = cargo
                .status()
                .expect("running cargo to build mptcp-preload");
            assert!(
                status.success() && lib.is_file(),
                "could not build {}: run `cargo build -p mptcp-preload` first",
                lib.display()
            );
        }
        lib
    })
}

// ---------------------------------------------------------------- usage

#[test]
fn usage_errors_exit_2() {
    expect_code(&mut mptcp(&[]), 2);
    expect_code(&mut mptcp(&["no-such-command"]), 2);
    expect_code(&mut mptcp(&["endpoint", "add", "not-an-address"]), 2);
    expect_code(
        &mut mptcp(&["endpoint", "add", "198.18.1.1", "sideways"]),
        2,
    );
    expect_code(
        &mut mptcp(&["endpoint", "set", "id", "3", "upside-down"]),
        2,
    );
    expect_code(&mut mptcp(&["limits", "set", "subflows", "9"]), 2);
    expect_code(&mut mptcp(&["status", "--interval", "0"]), 2);
    expect_code(&mut mptcp(&["demo", "--links", "9"]), 2);
    expect_code(&mut mptcp(&["run"]), 2);
    expect_code(
        &mut mptcp(&["enable", "../etc/passwd", "--root", "/nonexistent"]),
        2,
    );
}

#[test]
fn help_documents_exit_codes_and_completions_generate() {
    let help = expect_code(&mut mptcp(&["--help"]), 0);
    assert!(
        help.contains("Exit codes:") && help.contains("3  missing privilege"),
        "{help}"
    );
    for cmd in ["run", "endpoint", "status", "monitor", "probe", "enable"] {
        assert!(help.contains(cmd), "--help lists {cmd}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = expect_code(&mut mptcp(&["completions", shell]), 0);
        assert!(
            script.contains("endpoint") && script.contains("mptcp"),
            "{shell}"
        );
    }
    let bash = expect_code(&mut mptcp(&["completions", "bash"]), 0);
    let check = output(Command::new("bash").args(["-n", "-c", &bash]));
    assert!(
        check.status.success(),
        "bash completion parses: {}",
        text(&check.stderr)
    );
}

/// `mptcp man` prints mptcp(1), and `mptcp man DIR` writes a page per
/// command; groff formats each without a warning; the command is hidden
/// from `--help`.
#[test]
fn man_pages_are_generated_from_the_command_line() {
    let page = expect_code(&mut mptcp(&["man"]), 0);
    assert!(page.contains(".TH mptcp 1"), "{page}");
    assert!(
        page.contains("mptcp\\-relay(1)") && !page.contains("mptcp\\-help(1)"),
        "{page}"
    );
    assert!(
        page.contains("Exit codes:"),
        "the exit codes are in the page"
    );
    let help = expect_code(&mut mptcp(&["--help"]), 0);
    assert!(!help.contains(" man "), "{help}");

    let dir = std::env::temp_dir().join(format!("mptcp-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    expect_code(&mut mptcp(&["man", dir.to_str().unwrap()]), 0);
    let remote = std::fs::read_to_string(dir.join("mptcp-relay-remote.1")).unwrap();
    assert!(remote.contains("\\-\\-metrics"), "{remote}");
    let mut pages = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let out = output(
            Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(&path),
        );
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: {}",
            path.display(),
            text(&out.stderr)
        );
        pages += 1;
    }
    assert!(pages >= 20, "{pages} pages");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- probe

#[test]
fn probe_reports_support_and_fixes_gaps() {
    mptcp_testbed::require_privileges().unwrap();
    let host = Host::new("probe").unwrap();
    let out = expect_code(&mut in_host(&host, &["probe"]), 0);
    assert!(out.contains("MPTCP IPv4:   available"), "{out}");
    assert!(out.contains("missing:"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&expect_code(&mut in_host(&host, &["probe", "--json"]), 0)).unwrap();
    assert_eq!(json["ipv4"], "available");
    assert_eq!(json["sysctls"]["net.mptcp.enabled"], "1");

    host.sysctl("net.mptcp.enabled", "0").unwrap();
    let out = expect_code(&mut in_host(&host, &["probe"]), 3);
    assert!(out.contains("fix: sysctl -w net.mptcp.enabled=1"), "{out}");
}

// ---------------------------------------------------------------- path manager

/// A namespace with an interface `wan1` carrying 198.18.5.1/24 and 198.18.5.7/24.
fn host_with_interface() -> Host {
    mptcp_testbed::require_privileges().unwrap();
    let host = Host::new("endpoints").unwrap();
    host.ip_batch(&[
        "link add wan1 type veth peer name wan1peer",
        "addr add 198.18.5.1/24 dev wan1",
        "addr add 198.18.5.7/24 dev wan1",
        "link set wan1 up",
        "link set wan1peer up",
    ])
    .unwrap();
    host
}

fn ip_endpoints(host: &Host) -> Vec<String> {
    host.ip(&["mptcp", "endpoint", "show"])
        .unwrap()
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn endpoint_add_list_set_del_flush_match_iproute2() {
    let host = host_with_interface();
    expect_code(
        &mut in_host(
            &host,
            &[
                "endpoint",
                "add",
                "198.18.5.1",
                "dev",
                "wan1",
                "subflow",
                "backup",
                "id",
                "5",
            ],
        ),
        0,
    );
    expect_code(
        &mut in_host(
            &host,
            &["endpoint", "add", "198.18.5.7", "signal", "port", "8080"],
        ),
        0,
    );
    assert_eq!(
        ip_endpoints(&host),
        [
            "198.18.5.1 id 5 subflow backup dev wan1",
            "198.18.5.7 port 8080 id 6 signal"
        ]
    );
    let ours = expect_code(&mut in_host(&host, &["endpoint", "list"]), 0);
    let ours: Vec<&str> = ours.lines().collect();
    assert_eq!(
        ours,
        ip_endpoints(&host),
        "same lines as `ip mptcp endpoint show`"
    );

    let json: serde_json::Value = serde_json::from_str(&expect_code(
        &mut in_host(&host, &["endpoint", "list", "--json"]),
        0,
    ))
    .unwrap();
    assert_eq!(json[0]["id"], 5);
    assert_eq!(json[0]["address"], "198.18.5.1");
    assert_eq!(json[0]["subflow"], true);
    assert_eq!(json[0]["dev"], "wan1");
    assert_eq!(json[1]["port"], 8080);
    let ip_json: serde_json::Value =
        serde_json::from_str(&host.ip(&["-j", "mptcp", "endpoint", "show"]).unwrap()).unwrap();
    assert_eq!(
        json, ip_json,
        "the same JSON as `ip -j mptcp endpoint show`"
    );

    expect_code(
        &mut in_host(
            &host,
            &["endpoint", "set", "id", "5", "nobackup", "fullmesh"],
        ),
        0,
    );
    assert_eq!(
        ip_endpoints(&host)[0],
        "198.18.5.1 id 5 subflow fullmesh dev wan1"
    );

    // A duplicate is refused by the kernel: exit 1 with its reason.
    let out = output(&mut in_host(
        &host,
        &["endpoint", "add", "198.18.5.1", "subflow"],
    ));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    expect_code(&mut in_host(&host, &["endpoint", "del", "id", "5"]), 0);
    assert_eq!(ip_endpoints(&host), ["198.18.5.7 port 8080 id 6 signal"]);
    expect_code(&mut in_host(&host, &["endpoint", "del", "198.18.5.7"]), 0);
    assert!(ip_endpoints(&host).is_empty());

    expect_code(
        &mut in_host(&host, &["endpoint", "add", "198.18.5.1", "subflow"]),
        0,
    );
    expect_code(&mut in_host(&host, &["endpoint", "flush"]), 0);
    assert!(ip_endpoints(&host).is_empty());
    assert_eq!(
        expect_code(&mut in_host(&host, &["endpoint", "list"]), 0),
        ""
    );
}

/// `endpoint flush` removes the endpoints and keeps the limits, as its
/// `--help` says.
#[test]
fn endpoint_flush_keeps_the_limits_as_its_help_says() {
    let help = expect_code(&mut mptcp(&["endpoint", "flush", "--help"]), 0);
    assert!(help.contains("the limits stay as they are"), "{help}");
    assert!(!help.contains("resets"), "{help}");
    let host = host_with_interface();
    let set = ["limits", "set", "subflows", "3", "add_addr_accepted", "4"];
    expect_code(&mut in_host(&host, &set), 0);
    expect_code(
        &mut in_host(&host, &["endpoint", "add", "198.18.5.1", "subflow"]),
        0,
    );
    expect_code(&mut in_host(&host, &["endpoint", "flush"]), 0);
    assert_eq!(ip_endpoints(&host), Vec::<String>::new());
    let limits = expect_code(&mut in_host(&host, &["limits"]), 0);
    assert_eq!(limits.trim(), "add_addr_accepted 4 subflows 3");
}

#[test]
fn limits_show_and_set_match_iproute2() {
    let host = host_with_interface();
    let out = expect_code(&mut in_host(&host, &["limits", "set", "subflows", "3"]), 0);
    let shown = host.ip(&["mptcp", "limits", "show"]).unwrap();
    assert_eq!(out.trim(), shown.trim());
    assert!(shown.contains("subflows 3"), "{shown}");
    expect_code(
        &mut in_host(&host, &["limits", "set", "add_addr_accepted", "4"]),
        0,
    );
    let out = expect_code(&mut in_host(&host, &["limits"]), 0);
    assert_eq!(out.trim(), "add_addr_accepted 4 subflows 3");
    let json: serde_json::Value =
        serde_json::from_str(&expect_code(&mut in_host(&host, &["limits", "--json"]), 0)).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"subflows": 3, "add_addr_accepted": 4})
    );
}

#[test]
fn changing_endpoints_without_privilege_exits_3() {
    let host = host_with_interface();
    // Drop every capability in the child (setpriv from util-linux), as a
    // non-root user would run it.
    let out = output(host.command("setpriv").args([
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        MPTCP,
        "endpoint",
        "add",
        "198.18.5.1",
        "subflow",
    ]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("root"), "{}", text(&out.stderr));
}

// ---------------------------------------------------------------- connections

/// A server in `bed` that accepts MPTCP connections on `port` and reads
/// until each ends.
fn mptcp_server(bed: &TwoLinks, port: u16) -> SocketAddr {
    let addr = SocketAddr::new(bed.server_addr().into(), port);
    let listener = bed.server.run(|| {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SockAddr::from(addr)).unwrap();
        s.listen(8).unwrap();
        s
    });
    std::thread::spawn(move || {
        while let Ok((mut conn, _)) = listener.accept() {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while conn.read(&mut buf).unwrap_or(0) > 0 {}
            });
        }
    });
    addr
}

fn mptcp_client(bed: &TwoLinks, to: SocketAddr) -> Socket {
    bed.client.run(|| {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP)).unwrap();
        s.connect(&SockAddr::from(to)).unwrap();
        s
    })
}

#[test]
fn status_shows_the_connection_with_two_subflows_and_rates() {
    mptcp_testbed::require_privileges().unwrap();
    let bed = mptcp_testbed::two_links(2, Some(20)).unwrap();
    let server = mptcp_server(&bed, 5201);
    let mut client = mptcp_client(&bed, server);
    // Wait (bounded) for the second subflow before measuring.
    let deadline = Instant::now() + Duration::from_secs(3);
    while bed.client.run(mptcp_core::diag::connections).unwrap()[0]
        .subflows
        .len()
        < 2
        && Instant::now() < deadline
    {
        client.write_all(&[1u8; 16 * 1024]).unwrap();
    }
    let sender = std::thread::spawn(move || {
        let chunk = vec![7u8; 64 * 1024];
        let end = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < end {
            client.write_all(&chunk).unwrap();
        }
        client
    });
    let json = expect_code(
        &mut in_host(&bed.client, &["status", "--json", "--interval", "0.5"]),
        0,
    );
    let table = expect_code(&mut in_host(&bed.client, &["status", "--counters"]), 0);
    drop(sender.join().unwrap());

    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let conns = json["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{json}");
    let conn = &conns[0];
    assert_eq!(conn["remote"], server.to_string());
    assert_eq!(conn["fallback"], false);
    let subflows = conn["subflows"].as_array().unwrap();
    assert_eq!(subflows.len(), 2, "{json}");
    let mut locals: Vec<IpAddr> = subflows
        .iter()
        .map(|sf| {
            sf["local"]
                .as_str()
                .unwrap()
                .parse::<SocketAddr>()
                .unwrap()
                .ip()
        })
        .collect();
    locals.sort();
    assert_eq!(
        locals,
        [
            IpAddr::from(bed.client_addr(0)),
            IpAddr::from(bed.client_addr(1))
        ]
    );
    let tx: f64 = subflows
        .iter()
        .map(|sf| sf["tx_bps"].as_f64().unwrap())
        .sum();
    // Two 20 Mbit/s links under a saturating sender.
    assert!(tx > 5e6, "total tx {tx} bit/s: {json}");

    assert!(table.contains(&format!("-> {server}")), "{table}");
    assert!(table.contains("subflows 2"), "{table}");
    assert!(
        table.contains(&format!("subflow {}:", bed.client_addr(1))),
        "{table}"
    );
}

#[test]
fn status_watch_prints_a_sample_per_interval() {
    mptcp_testbed::require_privileges().unwrap();
    let host = Host::new("watch").unwrap();
    let mut watch = in_host(&host, &["status", "--watch", "0.2", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        let line = lines.next().unwrap().unwrap();
        assert_eq!(line, r#"{"connections":[]}"#);
    }
    watch.kill().unwrap();
    watch.wait().unwrap();
}

#[test]
fn monitor_json_shows_the_events_of_a_connection() {
    mptcp_testbed::require_privileges().unwrap();
    let bed = mptcp_testbed::two_links(2, None).unwrap();
    let server = mptcp_server(&bed, 5202);
    let mut monitor = in_host(
        &bed.client,
        &["monitor", "--json", "--count", "3", "--timeout", "10"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Connect only once the monitor has subscribed.
    let mut stderr = BufReader::new(monitor.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("listening"), "{line}");
    let mut client = mptcp_client(&bed, server);
    // The connection is fully established, and the second subflow opens,
    // once data flows.
    client.write_all(b"hello").unwrap();
    let out = monitor.wait_with_output().unwrap();
    drop(client);
    assert!(out.status.success());
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["created", "established", "sf_established"],
        "{events:?}"
    );
    assert!(events.iter().all(|e| e["token"] == events[0]["token"]));
    assert_eq!(events[0]["remote"], server.to_string());
    let sf_local: SocketAddr = events[2]["local"].as_str().unwrap().parse().unwrap();
    assert_eq!(sf_local.ip(), IpAddr::from(bed.client_addr(1)));
}

// ---------------------------------------------------------------- run

const PY_REPORT: &str = "import os, socket\n\
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n\
print(os.environ.get('LD_PRELOAD', ''))\n\
print(os.environ.get('GODEBUG', ''))\n\
print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))\n\
print(os.environ.get('MPTCP_PRELOAD_MODE', ''), os.environ.get('MPTCP_PRELOAD_RELAY', ''))\n";

#[test]
fn run_preloads_the_library_and_the_socket_is_mptcp() {
    let lib = preload_library().to_str().unwrap().to_owned();
    let out = expect_code(
        mptcp(&["run", "--", "python3", "-c", PY_REPORT])
            .env("LD_PRELOAD", format!("libc.so.6 {lib}"))
            .env("GODEBUG", "http2client=0"),
        0,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("{lib}:libc.so.6"), "prepended once");
    assert_eq!(lines[1], "http2client=0,multipathtcp=1");
    assert_eq!(lines[2], "262", "the socket is MPTCP (IPPROTO_MPTCP)");

    // Relay flags map to the library's variables; names resolve to IPs.
    let out = expect_code(
        mptcp(&[
            "run",
            "--relay",
            "localhost:1080",
            "--",
            "python3",
            "-c",
            PY_REPORT,
        ])
        .env_remove("LD_PRELOAD")
        .env_remove("GODEBUG"),
        0,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], lib);
    assert_eq!(lines[1], "multipathtcp=1");
    assert!(
        lines[3] == "relay 127.0.0.1:1080" || lines[3] == "relay [::1]:1080",
        "{}",
        lines[3]
    );
}

#[test]
fn run_passes_the_exit_code_and_explains_a_missing_library() {
    preload_library();
    expect_code(&mut mptcp(&["run", "--", "sh", "-c", "exit 7"]), 7);
    expect_code(&mut mptcp(&["run", "--", "/nonexistent/program"]), 127);
    let out = output(&mut mptcp(&[
        "run",
        "--lib",
        "/nonexistent/lib.so",
        "--",
        "true",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("MPTCP_PRELOAD_LIB"),
        "{}",
        text(&out.stderr)
    );
}

/// A directory of its own under the temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("mptcp-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn run_warns_when_the_program_cannot_be_preloaded() {
    preload_library();
    let dir = Scratch::new("run-warn");
    // A statically linked program (busybox-static, say): no loader runs.
    let source = dir.0.join("seven.c");
    std::fs::write(&source, "int main(void) { return 7; }\n").unwrap();
    let stat = dir.0.join("seven-static");
    let out = output(
        Command::new("cc")
            .args(["-static", "-o"])
            .arg(&stat)
            .arg(&source),
    );
    assert!(out.status.success(), "cc -static: {}", text(&out.stderr));
    let out = output(&mut mptcp(&["run", "--", stat.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(7), "the program's own status");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("warning: {} is statically linked", stat.display())),
        "{stderr}"
    );

    // Setuid to another user: the loader ignores LD_PRELOAD.
    let suid = dir.0.join("true-setuid");
    std::fs::copy("/bin/true", &suid).unwrap();
    std::os::unix::fs::chown(&suid, Some(65534), Some(65534))
        .expect("chown needs root: run the tests as root (CI does)");
    std::fs::set_permissions(&suid, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    let out = output(&mut mptcp(&["run", "--", suid.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("is setuid (runs as user 65534)"),
        "{}",
        text(&out.stderr)
    );

    // A dynamically linked program, found in PATH: no warning.
    let out = output(&mut mptcp(&["run", "--", "sh", "-c", "exit 3"]));
    assert_eq!(out.status.code(), Some(3));
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------- enable / disable

#[test]
fn enable_writes_a_drop_in_and_disable_removes_it() {
    let lib = preload_library().to_str().unwrap().to_owned();
    let root = std::env::temp_dir().join(format!("mptcp-cli-enable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let vendor_dir = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&vendor_dir).unwrap();
    let vendor = "[Service]\nExecStart=/usr/bin/web\nEnvironment=\"LD_PRELOAD=/opt/tracer.so\" GODEBUG=madvdontneed=1\n";
    std::fs::write(vendor_dir.join("web.service"), vendor).unwrap();
    let root_s = root.to_str().unwrap();

    expect_code(&mut mptcp(&["enable", "web", "--root", root_s]), 0);
    let drop_in = root.join("etc/systemd/system/web.service.d/50-mptcp.conf");
    let conf = std::fs::read_to_string(&drop_in).unwrap();
    assert!(conf.contains("[Service]\n"), "{conf}");
    assert!(
        conf.contains(&format!("Environment=\"LD_PRELOAD={lib}:/opt/tracer.so\"")),
        "{conf}"
    );
    assert!(
        conf.contains("Environment=\"GODEBUG=madvdontneed=1,multipathtcp=1\""),
        "{conf}"
    );
    assert_eq!(
        std::fs::read_to_string(vendor_dir.join("web.service")).unwrap(),
        vendor,
        "the vendor unit is untouched"
    );
    // systemd itself accepts the drop-in, when systemd-analyze is installed.
    if let Ok(out) = Command::new("systemd-analyze")
        .args(["verify", "--root", root_s, "web.service"])
        .output()
    {
        assert!(
            !text(&out.stderr).contains("50-mptcp.conf"),
            "{}",
            text(&out.stderr)
        );
    }

    expect_code(&mut mptcp(&["disable", "web.service", "--root", root_s]), 0);
    assert!(!drop_in.exists());
    assert!(
        !drop_in.parent().unwrap().exists(),
        "the empty .d directory goes too"
    );
    // Disabling again is fine (idempotent for scripts).
    expect_code(&mut mptcp(&["disable", "web", "--root", root_s]), 0);
    std::fs::remove_dir_all(&root).unwrap();
}

/// With a relay password, `enable` keeps it out of the unit: a file only
/// root reads, handed to the service as a systemd credential
/// (`LoadCredential=`, read through `MPTCP_PRELOAD_PASSWORD_FILE=%d/...`).
#[test]
fn enable_gives_the_relay_password_as_a_credential() {
    use std::os::unix::fs::PermissionsExt;
    // `enable` names the library in the drop-in: it must be there.
    preload_library();
    let root = std::env::temp_dir().join(format!("mptcp-cli-enable-pw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("usr/lib/systemd/system")).unwrap();
    std::fs::write(
        root.join("usr/lib/systemd/system/web.service"),
        "[Service]\nExecStart=/usr/bin/web\n",
    )
    .unwrap();
    let root_s = root.to_str().unwrap();
    let mut enable = mptcp(&[
        "enable",
        "web",
        "--root",
        root_s,
        "--relay",
        "127.0.0.1:1080",
        "--user",
        "alice",
        "--password-env",
        "WEB_RELAY_PW",
    ]);
    enable.env("WEB_RELAY_PW", "correct horse");
    expect_code(&mut enable, 0);
    let drop_in = root.join("etc/systemd/system/web.service.d/50-mptcp.conf");
    let conf = std::fs::read_to_string(&drop_in).unwrap();
    assert!(!conf.contains("correct horse"), "{conf}");
    assert!(
        conf.contains(
            "LoadCredential=mptcp-relay-password:/etc/mptcp/web.service.relay-password\n"
        ),
        "{conf}"
    );
    assert!(
        conf.contains("Environment=\"MPTCP_PRELOAD_PASSWORD_FILE=%d/mptcp-relay-password\""),
        "{conf}"
    );
    let secret = root.join("etc/mptcp/web.service.relay-password");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "correct horse\n");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    expect_code(&mut mptcp(&["disable", "web", "--root", root_s]), 0);
    assert!(
        !drop_in.exists() && !secret.exists(),
        "disable removes both"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// `enable` takes service names only, refuses a `--root` that does not
/// exist instead of creating it, and as a normal user exits 3 saying that
/// it needs root.
#[test]
fn enable_checks_its_input_and_privilege() {
    mptcp_testbed::require_privileges().unwrap();
    preload_library();
    let root = std::env::temp_dir().join(format!("mptcp-cli-enable-in-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let root_s = root.to_str().unwrap();
    let missing = expect_code(&mut mptcp(&["enable", "web", "--root", root_s]), 2);
    assert!(missing.is_empty());
    assert!(!root.exists(), "a missing --root is not created");

    std::fs::create_dir_all(&root).unwrap();
    let err = |args: &[&str], code| {
        let out = output(&mut mptcp(args));
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stderr)
    };
    let bad = err(&["enable", "foo bar", "--root", root_s], 2);
    assert!(bad.contains("not a systemd unit name"), "{bad}");
    let socket = err(&["enable", "nginx.socket", "--root", root_s], 2);
    assert!(socket.contains("nginx.service"), "{socket}");
    assert!(
        std::fs::read_dir(&root).unwrap().next().is_none(),
        "nothing written"
    );

    let out = output(
        Command::new("setpriv")
            .args(["--inh-caps=-all", "--bounding-set=-all"])
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", MPTCP])
            .args(["enable", "web", "--root", root_s]),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("needs root") && !stderr.contains("CAP_NET_ADMIN"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

// ---------------------------------------------------------------- contrib

/// The systemd units in contrib/ call subcommands and flags that exist.
#[test]
fn contrib_units_use_existing_commands() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let unit = std::fs::read_to_string(&path).unwrap();
        for line in unit.lines() {
            let Some(exec) = line.strip_prefix("ExecStart=") else {
                continue;
            };
            let mut words = exec.split_whitespace();
            assert!(words.next().unwrap().ends_with("/mptcp"), "{line}");
            let mut args: Vec<&str> = words.collect();
            args.push("--help");
            expect_code(&mut mptcp(&args), 0);
            checked += 1;
        }
    }
    assert_eq!(checked, 3, "three units in {}", dir.display());
}

/// LICENSE holds the texts of the licenses Cargo.toml declares.
#[test]
fn license_file_matches_the_workspace_license() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let declared = manifest
        .lines()
        .find_map(|l| l.strip_prefix("license = "))
        .expect("a license field in the workspace");
    assert_eq!(declared, "\"MIT OR Apache-2.0\"");
    let license = std::fs::read_to_string(root.join("LICENSE")).unwrap();
    assert!(license.contains("SPDX-License-Identifier: MIT OR Apache-2.0"));
    assert!(
        license.contains("MIT License") && license.contains("THE SOFTWARE IS PROVIDED \"AS IS\"")
    );
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
    assert!(
        license.contains("END OF TERMS AND CONDITIONS"),
        "the whole Apache text"
    );
}

// ---------------------------------------------------------------- relay

/// The relay as a normal user: a TPROXY listener or a port below 1024 exits
/// 3 ("missing privilege") and names the capability.
#[test]
fn relay_without_privilege_exits_3_naming_the_capability() {
    mptcp_testbed::require_privileges().unwrap();
    let host = Host::new("relay-priv").unwrap();
    let as_nobody = |args: &[&str]| {
        let out = output(
            host.command("setpriv")
                .args(["--inh-caps=-all", "--bounding-set=-all"])
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", MPTCP])
                .args(["relay", "local", "--remote", "127.0.0.1:1080"])
                .args(args),
        );
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stderr)
    };
    let err = as_nobody(&["--tproxy", "127.0.0.1:12346"]);
    assert!(err.contains("CAP_NET_ADMIN"), "{err}");
    let err = as_nobody(&["--socks5", "127.0.0.1:80"]);
    assert!(err.contains("CAP_NET_BIND_SERVICE"), "{err}");
    assert!(!err.contains("CAP_NET_ADMIN"), "{err}");
}

/// A broken table header in the example file is named as itself: an
/// unclosed `[remote` and a misspelt `[engine]`, not a key of the table
/// above or the one the misspelling should have been.
#[test]
fn relay_config_errors_name_the_broken_table() {
    let example = include_str!("../examples/relay.toml");
    let dir = std::env::temp_dir().join(format!("mptcp-cli-table-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let line_of = |header: &str| 1 + example.lines().position(|l| l == header).unwrap();
    for (from, to, key, message) in [
        ("[remote]", "[remote", "remote", "unclosed table"),
        ("[engine]", "[locale]", "locale", "unknown field `locale`"),
    ] {
        let file = dir.join("relay.toml");
        std::fs::write(
            &file,
            example.replacen(&format!("\n{from}\n"), &format!("\n{to}\n"), 1),
        )
        .unwrap();
        let out = output(&mut mptcp(&[
            "relay",
            "remote",
            "--config",
            file.to_str().unwrap(),
        ]));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let want = format!("line {}, key `{key}`: {message}", line_of(from));
        assert!(err.contains(&want), "{to}: want {want:?} in {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
