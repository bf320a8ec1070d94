//! Helpers for the tests that run real programs under the library.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use mptcp_core::socks5::{self, Progress, ReplyCode, ServerHandshake, TargetAddr};
use mptcp_testbed::Host;

/// `libmptcp_preload.so` of this build: cargo builds the package's cdylib
/// into the `deps` directory before its integration tests, next to the test
/// executable (it is copied up to `target/<profile>/` only by `cargo build`).
pub fn preload_lib() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let lib = exe.with_file_name("libmptcp_preload.so");
    assert!(
        lib.exists(),
        "{} is missing: run through `cargo test -p mptcp-preload`",
        lib.display()
    );
    lib
}

/// The real Python interpreter (not a pyenv shell shim, so that exactly one
/// process runs under the library).
pub fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 must be installed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `program` in `host` with the library preloaded and `env` set.
pub fn preloaded(host: &Host, program: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = host.command(program);
    cmd.env("LD_PRELOAD", preload_lib());
    for key in [
        "MPTCP_PRELOAD_MODE",
        "MPTCP_PRELOAD_RELAY",
        "MPTCP_PRELOAD_LOG",
        "MPTCP_PRELOAD_INCLUDE",
        "MPTCP_PRELOAD_EXCLUDE",
        "MPTCP_PRELOAD_FAIL_OPEN",
    ] {
        cmd.env_remove(key);
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// A child process killed (with its process group) when dropped.
pub struct Daemon(pub Child);

impl Daemon {
    /// Spawns `cmd` in a process group of its own.
    pub fn spawn(cmd: &mut Command) -> Daemon {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Daemon(child)
    }

    /// Kills the group and returns what the daemon wrote to stderr.
    pub fn stop(mut self) -> String {
        self.kill();
        let mut err = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    fn kill(&mut self) {
        let pgid = self.0.id() as libc::pid_t;
        // SAFETY: signals the process group we created for this child.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The one host name [`TestRelay`] resolves (to its own 127.0.0.1).
pub const RELAY_ONLY_NAME: &str = "www.behind-relay.test";

/// A SOCKS5 relay with username/password, built on the core's codec, run in
/// a host for the duration of a test (stops when dropped). It accepts MPTCP
/// and reports how many connections it relayed.
pub struct TestRelay {
    stop: Arc<AtomicBool>,
    mptcp_accepted: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A destination port the relay connects to only after a delay (a slow
/// upstream: the relay's reply to CONNECT comes that much later).
#[derive(Clone, Copy)]
pub struct SlowPort {
    pub port: u16,
    pub delay: Duration,
}

impl TestRelay {
    pub fn start(
        host: &Host,
        addr: SocketAddr,
        user: &'static str,
        pass: &'static str,
    ) -> TestRelay {
        TestRelay::start_with_slow_port(host, addr, user, pass, None)
    }

    /// [`TestRelay::start`], delaying its answers for `slow`'s destination
    /// port.
    pub fn start_with_slow_port(
        host: &Host,
        addr: SocketAddr,
        user: &'static str,
        pass: &'static str,
        slow: Option<SlowPort>,
    ) -> TestRelay {
        let listener = host.run(|| {
            mptcp_core::socket::bind_listener(addr, mptcp_core::socket::Fallback::Fail)
                .expect("MPTCP listener for the test relay")
        });
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mptcp_accepted = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&mptcp_accepted));
        let thread = host.spawn(move || accept_loop(listener, &flag, &count, user, pass, slow));
        TestRelay {
            stop,
            mptcp_accepted,
            thread: Some(thread),
        }
    }
}

impl TestRelay {
    /// Connections accepted so far that use MPTCP.
    pub fn mptcp_connections(&self) -> usize {
        self.mptcp_accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    stop: &AtomicBool,
    count: &AtomicUsize,
    user: &str,
    pass: &str,
    slow: Option<SlowPort>,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                if mptcp_core::socket::is_mptcp(client.as_fd()).unwrap_or(false) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                client.set_nonblocking(false).unwrap();
                let (user, pass) = (user.to_owned(), pass.to_owned());
                std::thread::spawn(move || {
                    let _ = serve(client, &user, &pass, slow);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve(
    mut client: TcpStream,
    user: &str,
    pass: &str,
    slow: Option<SlowPort>,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut input = Vec::new();
    let mut handshake = ServerHandshake::new(true);
    let (request, used) = loop {
        let mut buf = [0u8; 1024];
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        input.extend_from_slice(&buf[..n]);
        let mut out = Vec::new();
        let step = handshake.advance(&input, &mut out, |c| {
            c.username == user.as_bytes() && c.password == pass.as_bytes()
        });
        client.write_all(&out)?;
        match step {
            Ok(Progress::NeedMore) => continue,
            Ok(Progress::Done(request, used)) => break (request, used),
            Err(_) => return Ok(()),
        }
    };
    // Names: the test's own "DNS", so that nothing depends on the
    // machine's resolver.
    let dest = match request.dest {
        TargetAddr::Ip(dest) => dest,
        TargetAddr::Domain(name, port) if name == RELAY_ONLY_NAME => {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port)
        }
        TargetAddr::Domain(..) => {
            let mut out = Vec::new();
            socks5::encode_reply(ReplyCode::HostUnreachable, None, &mut out);
            return client.write_all(&out);
        }
    };
    if let Some(slow) = slow.filter(|s| s.port == dest.port()) {
        std::thread::sleep(slow.delay);
    }
    let upstream = match TcpStream::connect_timeout(&dest, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => {
            let mut out = Vec::new();
            socks5::encode_reply(ReplyCode::from_io_error(&e), None, &mut out);
            return client.write_all(&out);
        }
    };
    let mut out = Vec::new();
    socks5::encode_reply(ReplyCode::Succeeded, upstream.local_addr().ok(), &mut out);
    client.write_all(&out)?;
    client.set_read_timeout(None)?;
    let mut up_write = upstream.try_clone()?;
    up_write.write_all(&input[used..])?;
    let mut up_read = upstream;
    let mut client_write = client.try_clone()?;
    let down = std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_read, &mut client_write);
        let _ = client_write.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut client, &mut up_write);
    let _ = up_write.shutdown(std::net::Shutdown::Write);
    let _ = down.join();
    Ok(())
}
