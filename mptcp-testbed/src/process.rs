//! Programs the tests and benches run beside the test bed: daemons that
//! must not outlive them, configurations for the relays people use today
//! (dante, redsocks), and this workspace's preload library.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A daemon in a process group of its own, killed with the whole group
/// when dropped (also on panic), so that nothing it forked lingers.
///
/// A watchdog (`sh`, reading a pipe from this process) kills the group too
/// if this process dies without dropping it (a bench stopped with Ctrl-C or
/// a timeout): the kernel closes the pipe then. `PR_SET_PDEATHSIG` would
/// not do, as daemons that switch to an unprivileged user (dante) lose it.
///
/// ```no_run
/// let host = mptcp_testbed::Host::new("server")?;
/// let _nginx = mptcp_testbed::Daemon::spawn(host.command("nginx").args(["-g", "daemon off;"]))?;
/// // ... nginx serves until `_nginx` goes out of scope.
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    watchdog: Child,
}

/// Waits for its input to close, then kills the process group `$0`.
const WATCHDOG: &str = "read _ignored; kill -s KILL -- \"-$0\" 2>/dev/null";

impl Daemon {
    /// Spawns `cmd` with its input and output on `/dev/null`, so that a
    /// chatty daemon never blocks on a full pipe nobody reads.
    pub fn spawn(cmd: &mut Command) -> io::Result<Daemon> {
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("starting {:?}: {e}", cmd.get_program()))
            })?;
        let watchdog = Command::new("sh")
            .args(["-c", WATCHDOG])
            .arg(child.id().to_string())
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match watchdog {
            Ok(watchdog) => Ok(Daemon { child, watchdog }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(io::Error::new(e.kind(), format!("starting sh: {e}")))
            }
        }
    }

    /// The daemon's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Closing the pipe has the watchdog kill the group, while the
        // daemon (unreaped until below) still holds its id.
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds `libmptcp_preload.so` with cargo (release profile, the target
/// directory of the running executable) and returns its path: for benches,
/// which cargo does not give the workspace's cdylibs.
pub fn build_preload_library() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<name>-<hash>
    let target_dir = exe
        .ancestors()
        .nth(3)
        .ok_or_else(|| io::Error::other(format!("{} is not in a target dir", exe.display())))?
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "mptcp-preload", "--release"])
        .arg("--target-dir")
        .arg(&target_dir)
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "building mptcp-preload failed: {status}"
        )));
    }
    Ok(target_dir.join("release/libmptcp_preload.so"))
}

/// A `danted.conf` for dante-server as the remote SOCKS5 relay, as people
/// run it: listening on `internal`, connecting out from `external`, no
/// authentication, CONNECT to anywhere, logging to `logoutput` (`stderr`,
/// or `/dev/null` under load).
pub fn danted_config(internal: SocketAddr, external: Ipv4Addr, logoutput: &str) -> String {
    format!(
        "logoutput: {logoutput}\ninternal: {} port = {}\nexternal: {external}\n\
         clientmethod: none\nsocksmethod: none\n\
         user.privileged: root\nuser.unprivileged: nobody\n\
         client pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}\n\
         socks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect }}\n",
        internal.ip(),
        internal.port()
    )
}

/// A `redsocks.conf` for redsocks as the local transparent relay: accepts
/// redirected connections on `listen_port` and carries each to the SOCKS5
/// server `socks`, with `login` (user, password) if given.
pub fn redsocks_config(listen_port: u16, socks: SocketAddr, login: Option<(&str, &str)>) -> String {
    let login = login.map_or(String::new(), |(user, password)| {
        format!(" login = \"{user}\"; password = \"{password}\";")
    });
    format!(
        "base {{ log_debug = off; log_info = off; log = stderr; daemon = off; \
         redirector = iptables; }}\n\
         redsocks {{ local_ip = 0.0.0.0; local_port = {listen_port}; ip = {}; port = {}; \
         type = socks5;{login} }}\n",
        socks.ip(),
        socks.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn alive(pid: libc::pid_t) -> bool {
        // A zombie still answers kill(0); its /proc status says Z.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
    }

    /// `sh` forks a background `sleep` (a grandchild, in the same group) and
    /// writes its pid to a file; returns the daemon and that pid.
    fn forking_daemon(tag: &str) -> (Daemon, libc::pid_t) {
        let file = std::env::temp_dir().join(format!("daemon-{tag}-{}", std::process::id()));
        let script = format!("sleep 100 & echo $! > {}; wait", file.display());
        let daemon = Daemon::spawn(Command::new("sh").args(["-c", &script])).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let grandchild = loop {
            if let Some(pid) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "sh wrote no pid");
            std::thread::sleep(Duration::from_millis(10));
        };
        let _ = std::fs::remove_file(&file);
        assert!(alive(grandchild));
        (daemon, grandchild)
    }

    fn gone_soon(pid: libc::pid_t) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    #[test]
    fn dropping_a_daemon_kills_what_it_forked() {
        let (daemon, grandchild) = forking_daemon("drop");
        let pid = daemon.id() as libc::pid_t;
        drop(daemon);
        assert!(!alive(pid));
        assert!(
            gone_soon(grandchild),
            "the daemon's child {grandchild} lives on"
        );
    }

    #[test]
    fn the_watchdog_kills_the_daemon_when_its_pipe_closes() {
        // What happens when this process dies: the kernel closes the pipe.
        let (mut daemon, grandchild) = forking_daemon("watchdog");
        drop(daemon.watchdog.stdin.take());
        assert!(
            gone_soon(grandchild),
            "the daemon's child {grandchild} lives on"
        );
        let status = daemon.child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }
}

/// Busy loops, one more than the cores (a small router's busy CPU); each
/// ends by itself after two minutes at most, and all when dropped (each is
/// a [`Daemon`]: its whole process group is killed, `timeout` and the
/// shell it runs alike). For tests of what must hold under load.
#[derive(Debug)]
pub struct CpuContention {
    _loops: Vec<Daemon>,
}

impl CpuContention {
    /// Starts the loops.
    pub fn new() -> io::Result<CpuContention> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let loops = (0..=cores)
            .map(|_| {
                let mut cmd = Command::new("timeout");
                cmd.args(["120", "sh", "-c", "while :; do :; done"]);
                Daemon::spawn(&mut cmd)
            })
            .collect::<io::Result<_>>()?;
        Ok(CpuContention { _loops: loops })
    }
}
