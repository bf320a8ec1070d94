//! The C and C++ examples, built with the system compilers against the
//! installed library (install.sh into a temporary prefix, found with
//! pkg-config), shared and static, run on loopback, in a two-link test bed,
//! and under valgrind; plus the shape of the shared library (soname,
//! exported symbols).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mptcp_core::socket::Fallback;

mod common;
use common::{assert_echoes, echo_once, socks5_connect};

/// The directory holding the libmptcp.so and libmptcp.a that cargo built
/// for this test run: the test binary's own directory,
/// `<target>/<profile>/deps` (`cargo test` does not copy them up to
/// `<target>/<profile>`, where a copy from an earlier `cargo build` may be
/// stale).
fn built_lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_path_buf();
    for lib in ["libmptcp.so", "libmptcp.a"] {
        assert!(
            dir.join(lib).is_file(),
            "{} is missing: cargo builds it with the tests of mptcp-ffi",
            dir.join(lib).display()
        );
    }
    dir
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("mptcp-ffi sits in the workspace")
        .to_path_buf()
}

/// Runs a command, failing the test with its output when it fails.
fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("UTF-8 output")
}

/// libmptcp installed by install.sh into a fresh prefix, removed on drop.
struct Installed {
    prefix: PathBuf,
}

impl Installed {
    /// Installs with `install.sh --from <built libs> [extra args] PREFIX`.
    fn new(test: &str, extra_args: &[&str]) -> Self {
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let prefix = std::env::temp_dir().join(format!(
            "mptcp-ffi-{test}-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&prefix);
        run(Command::new(workspace_root().join("mptcp-ffi/install.sh"))
            .arg("--from")
            .arg(built_lib_dir())
            .args(extra_args)
            .arg(&prefix));
        Installed { prefix }
    }

    fn lib_dir(&self) -> PathBuf {
        self.prefix.join("lib")
    }

    fn pkg_config(&self, args: &[&str]) -> String {
        stdout_of(
            Command::new("pkg-config")
                .env("PKG_CONFIG_PATH", self.lib_dir().join("pkgconfig"))
                .args(args),
        )
        .trim()
        .to_owned()
    }

    /// Compiles `examples/c/<source>` with `cc` (C) or `c++` (C++), linked
    /// with the flags of `package` (`mptcp` shared, `mptcp-static`).
    fn compile(&self, source: &str, package: &str) -> PathBuf {
        let path = workspace_root().join("examples/c").join(source);
        let cpp = source.ends_with(".cpp");
        let stem = source.split('.').next().unwrap_or(source);
        let exe = self.prefix.join(format!("{stem}-{package}"));
        let mut cmd = Command::new(if cpp { "c++" } else { "cc" });
        cmd.args(["-Wall", "-Wextra", "-Werror", "-g"])
            .arg(if cpp { "-std=c++17" } else { "-std=c11" })
            .arg(&path)
            .arg("-o")
            .arg(&exe);
        for flag in self
            .pkg_config(&["--cflags", "--libs", package])
            .split_whitespace()
        {
            cmd.arg(flag);
        }
        if package == "mptcp" {
            cmd.arg(format!("-Wl,-rpath,{}", self.lib_dir().display()));
        }
        run(&mut cmd);
        exe
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.prefix);
    }
}

/// A running example server: reads its "listening on PORT" line.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut first = String::new();
        let stdout = child.stdout.as_mut().expect("piped stdout");
        // One byte at a time, so that nothing after the line is consumed
        // into a buffer that would be dropped.
        let mut byte = [0u8];
        while !first.ends_with('\n') && stdout.read(&mut byte).expect("server stdout") == 1 {
            first.push(char::from(byte[0]));
        }
        let port = first
            .strip_prefix("server: listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("the server did not start: {first:?}"));
        Server { child, port }
    }

    /// Waits for the server to exit (with a deadline) and returns its stdout
    /// and stderr.
    fn finish(mut self) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .child
            .try_wait()
            .expect("waiting for the server")
            .is_none()
        {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = self.child.wait_with_output().expect("server output");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "the server failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        (stdout, stderr)
    }
}

fn assert_contains(text: &str, wanted: &str) {
    assert!(text.contains(wanted), "{wanted:?} not in:\n{text}");
}

#[test]
fn install_gives_a_versioned_shared_library_and_pkg_config_files() {
    let installed = Installed::new("install", &[]);
    assert_eq!(
        installed.pkg_config(&["--modversion", "mptcp"]),
        env!("CARGO_PKG_VERSION")
    );
    let lib = installed.lib_dir();
    assert_eq!(
        installed.pkg_config(&["--cflags", "--libs", "mptcp"]),
        format!(
            "-I{} -L{} -lmptcp",
            installed.prefix.join("include").display(),
            lib.display()
        )
    );
    assert!(installed.prefix.join("include/mptcp.h").is_file());
    assert!(lib.join("libmptcp.a").is_file());
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        std::fs::read_link(lib.join("libmptcp.so")).unwrap(),
        Path::new("libmptcp.so.0")
    );
    assert_eq!(
        std::fs::read_link(lib.join("libmptcp.so.0")).unwrap(),
        PathBuf::from(format!("libmptcp.so.{version}"))
    );

    // The installed header stands alone in strict C99 and C++11.
    let include = installed.prefix.join("include/mptcp.h");
    for (compiler, std, lang) in [("cc", "-std=c99", "c"), ("c++", "-std=c++11", "c++")] {
        run(Command::new(compiler)
            .args([
                std,
                "-Wall",
                "-Wextra",
                "-Wpedantic",
                "-Werror",
                "-fsyntax-only",
                "-x",
                lang,
            ])
            .arg(&include));
    }

    let dynamic = stdout_of(
        Command::new("readelf")
            .arg("-d")
            .arg(lib.join("libmptcp.so")),
    );
    assert_contains(&dynamic, "Library soname: [libmptcp.so.0]");

    // Only the C API is exported: no Rust symbol leaks into the ABI.
    let symbols = stdout_of(
        Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(lib.join("libmptcp.so")),
    );
    let exported: Vec<&str> = symbols
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .collect();
    assert!(exported.len() >= 30, "too few symbols: {exported:?}");
    let foreign: Vec<&&str> = exported
        .iter()
        .filter(|name| !name.starts_with("mptcp_"))
        .collect();
    assert!(foreign.is_empty(), "symbols outside mptcp_*: {foreign:?}");
    // Every function of the header is exported.
    let header = std::fs::read_to_string(workspace_root().join("include/mptcp.h")).unwrap();
    let declarations = header.lines().filter(|line| {
        let line = line.trim_start();
        !line.starts_with('*') && !line.starts_with('/')
    });
    for line in declarations {
        if let Some(name) = line
            .split('(')
            .next()
            .filter(|_| line.contains('('))
            .and_then(|decl| decl.rsplit([' ', '*']).next())
            .filter(|name| name.starts_with("mptcp_"))
        {
            assert!(
                exported.contains(&name),
                "{name} is declared but not exported"
            );
        }
    }
}

/// Runs the server and the client on loopback; returns both outputs.
fn loopback_exchange(server: &Path, client: &Path, wrapper: &[&str]) -> (String, String) {
    let command = |exe: &Path| {
        let mut cmd = Command::new(wrapper.first().map_or(exe.as_os_str(), |w| w.as_ref()));
        if !wrapper.is_empty() {
            cmd.args(&wrapper[1..]).arg(exe);
        }
        cmd
    };
    let mut server_cmd = command(server);
    server_cmd.args(["127.0.0.1:0", "1"]);
    let server = Server::start(server_cmd);
    let client_out = stdout_of(
        command(client)
            .arg(format!("127.0.0.1:{}", server.port))
            .args(["1", "200000"]),
    );
    let (server_out, server_err) = server.finish();
    (client_out, format!("{server_out}{server_err}"))
}

fn check_loopback_outputs(client: &str, server: &str) {
    assert_contains(client, "client: mptcp=yes subflows=1");
    assert_contains(client, "client: subflow 127.0.0.1:");
    assert_contains(client, "client: echo ok 200000");
    assert_contains(server, "server: mptcp=yes subflows=1");
    assert_contains(server, "server: echoed 200000");
}

#[test]
fn c_client_and_server_work_with_the_shared_and_the_static_library() {
    let installed = Installed::new("loopback", &[]);
    let shared = (
        installed.compile("server.c", "mptcp"),
        installed.compile("client.c", "mptcp"),
    );
    let static_ = (
        installed.compile("server.c", "mptcp-static"),
        installed.compile("client.c", "mptcp-static"),
    );
    let needed = stdout_of(Command::new("readelf").arg("-d").arg(&shared.1));
    assert_contains(&needed, "Shared library: [libmptcp.so.0]");
    let needed = stdout_of(Command::new("readelf").arg("-d").arg(&static_.1));
    assert!(!needed.contains("libmptcp"), "linked statically:\n{needed}");

    // Each build talks to the other.
    let (client, server) = loopback_exchange(&shared.0, &static_.1, &[]);
    check_loopback_outputs(&client, &server);
    let (client, server) = loopback_exchange(&static_.0, &shared.1, &[]);
    check_loopback_outputs(&client, &server);
}

/// valgrind, quiet, failing the program (exit code 99) on any memory error
/// and on any leak, "possibly lost" included.
const VALGRIND: [&str; 6] = [
    "valgrind",
    "-q",
    "--leak-check=full",
    "--show-leak-kinds=definite,indirect,possible",
    "--errors-for-leak-kinds=definite,indirect,possible",
    "--error-exitcode=99",
];

#[test]
fn c_and_cpp_examples_run_clean_under_valgrind() {
    let installed = Installed::new("valgrind", &[]);
    let server = installed.compile("server.c", "mptcp");
    let client = installed.compile("client.c", "mptcp");
    let info = installed.compile("info.cpp", "mptcp");
    let (client_out, server_out) = loopback_exchange(&server, &client, &VALGRIND);
    check_loopback_outputs(&client_out, &server_out);
    // `-q` leaves only errors on stderr; the server's stderr is in its output.
    assert!(
        !server_out.contains("=="),
        "valgrind reported:\n{server_out}"
    );

    // An open MPTCP connection for the C++ program to list.
    let listener = mptcp_core::socket::bind_listener("127.0.0.1:0", Fallback::Fail).unwrap();
    let client =
        mptcp_core::socket::connect(listener.local_addr().unwrap(), Fallback::Fail).unwrap();
    let (_server, _) = listener.accept().unwrap();
    let out = run(Command::new(VALGRIND[0]).args(&VALGRIND[1..]).arg(&info));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "valgrind reported:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_contains(&stdout, "ipv4: available");
    assert_contains(&stdout, "limits: subflows");
    let local = client.local_addr().unwrap();
    let peer = client.peer_addr().unwrap();
    assert_contains(&stdout, &format!("connection: {local} -> {peer} ESTAB"));
    assert_contains(&stdout, &format!("  subflow: {local} -> {peer} rtt_us"));
}

#[test]
fn c_examples_open_one_subflow_per_link_in_a_two_link_test_bed() {
    mptcp_testbed::require_privileges().expect("this test needs root (network namespaces)");
    let installed = Installed::new("twolinks", &["--strip"]);
    let server_exe = installed.compile("server.c", "mptcp");
    let client_exe = installed.compile("client.c", "mptcp-static");
    let info_exe = installed.compile("info.cpp", "mptcp");
    let bed = mptcp_testbed::two_links(2, None).expect("two-link test bed");

    // The C++ program lists the client's endpoints and watches its events.
    let mut info = bed
        .client
        .command(info_exe.to_str().unwrap())
        .args(["--events", "5000", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start info");
    let mut info_out = BufReader::new(info.stdout.take().expect("piped"));
    let mut before_events = String::new();
    while !before_events.contains("events: listening") {
        let mut line = String::new();
        if info_out.read_line(&mut line).expect("info output") == 0 {
            let mut stderr = String::new();
            let _ = info
                .stderr
                .take()
                .map(|mut e| e.read_to_string(&mut stderr));
            panic!("info ended early:\n{before_events}\n{stderr}");
        }
        before_events.push_str(&line);
    }
    assert_contains(
        &before_events,
        &format!("endpoint: {} id", bed.client_addr(1)),
    );
    assert_contains(&before_events, "subflow");

    let mut server_cmd = bed.server.command(server_exe.to_str().unwrap());
    server_cmd.args(["0.0.0.0:0", "1", "2"]);
    let server = Server::start(server_cmd);
    let client_out = stdout_of(
        bed.client
            .command(client_exe.to_str().unwrap())
            .arg(format!("{}:{}", bed.server_addr(), server.port))
            .args(["2", "300000"]),
    );
    let (server_out, _) = server.finish();
    assert_contains(&client_out, "client: mptcp=yes subflows=2");
    assert_contains(
        &client_out,
        &format!("client: subflow {}:", bed.client_addr(1)),
    );
    assert_contains(&client_out, "client: echo ok 300000");
    assert_contains(&server_out, "server: mptcp=yes subflows=2");
    assert_contains(&server_out, "server: echoed 300000");

    let mut events = String::new();
    info_out.read_to_string(&mut events).expect("info output");
    let status = info.wait().expect("info exit");
    assert!(status.success(), "info failed: {status}\n{events}");
    assert_contains(&events, " CREATED]");
    assert_contains(&events, " ESTABLISHED]");
    assert_contains(&events, " SF_ESTABLISHED]");
    assert_contains(&events, "events: 3");
}

#[test]
fn c_relay_example_relays_and_counts_under_valgrind() {
    use std::io::Write;
    let installed = Installed::new("relay", &[]);
    let relay = installed.compile("relay.c", "mptcp");
    let config = installed.prefix.join("relay.toml");
    std::fs::write(
        &config,
        "[engine]\nworkers = 1\n[remote]\nlisten = [\"127.0.0.1:0\"]\n\
         allow_unauthenticated_loopback = true\nallow_destinations = [\"127.0.0.0/8\"]\n",
    )
    .unwrap();
    let mut child = Command::new(VALGRIND[0])
        .args(&VALGRIND[1..])
        .arg(&relay)
        .arg(&config)
        .arg("2000")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the relay example under valgrind");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("relay output");
    let proxy = first
        .strip_prefix("relay: listening remote-socks5 ")
        .unwrap_or_else(|| panic!("the relay did not start: {first:?}"))
        .trim()
        .to_owned();

    let (port, echo) = echo_once();
    let mut socks = socks5_connect(&proxy, port);
    assert_echoes(&mut socks, b"via libmptcp");
    drop(socks);
    echo.join().unwrap();
    // A SOCKS4 greeting: refused, and counted as a protocol error.
    let mut wrong = std::net::TcpStream::connect(&proxy).unwrap();
    wrong.write_all(&[4, 1, 0, 80, 127, 0, 0, 1, 0]).unwrap();
    let mut rest = Vec::new();
    let _ = wrong.read_to_end(&mut rest);

    drop(child.stdin.take()); // asks the example to stop the relay
    let mut rest_out = String::new();
    stdout.read_to_string(&mut rest_out).unwrap();
    let out = child.wait_with_output().expect("relay exit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "relay failed: {}\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("Invalid") && !stderr.contains("uninitialised"),
        "valgrind reported:\n{stderr}"
    );
    assert_contains(&rest_out, "relay: accepted=2 relayed=1 bytes_up=12");
    assert_contains(&rest_out, "relay: errors protocol=1");
}
