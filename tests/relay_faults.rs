//! The relay chain under real faults, in the test bed: the README's setup
//! (a LAN host, the local relay on the router with the LAN's TCP
//! redirected into it, two 20 Mbit/s WAN links, the remote relay, a
//! destination), run as `mptcp relay` processes, then broken on purpose:
//! a relay killed with SIGKILL, a WAN link that silently drops everything
//! or goes down, a session's subflow destroyed for good, a reader that
//! stops reading, SIGTERM mid-transfer, CPU contention from busy loops. Every transfer that completes is checked
//! byte for byte; one that cannot complete must end (reset or EOF), never
//! hang.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mptcp_testbed::data::{self, receive_and_check, send_pattern};
use mptcp_testbed::{CpuContention, Daemon, Host, LinkSpec, RelayPath, danted_config};

const MPTCP: &str = env!("CARGO_BIN_EXE_mptcp");
const REMOTE_PORT: u16 = 1080;
const REDIRECT_PORT: u16 = 12345;
/// The destination's pattern source: the first 8 bytes ask for a length.
const SOURCE_PORT: u16 = 5001;
/// The destination's pattern sink: answers length and checksum at EOF.
const SINK_PORT: u16 = 5002;
/// A destination that reads 1 MB of an upload, then closes with the rest
/// unread (a reset towards the remote relay).
const CLOSER_PORT: u16 = 5003;
const PASSWORD_VAR: &str = "RELAY_FAULTS_PASSWORD";
/// The destination writes the address the connection came from.
const WHOAMI_PORT: u16 = 5004;

/// A chain in the test bed with both relays running as processes.
struct Chain {
    rp: RelayPath,
    remote: Option<Daemon>,
    local: Option<Daemon>,
    /// More arguments for `mptcp relay local` (a policy; its remotes, when
    /// they are not the chain's one).
    local_args: Vec<String>,
    /// The relays' logs (`local.log`, `remote.log`), removed on drop.
    logs: std::path::PathBuf,
}

impl Drop for Chain {
    fn drop(&mut self) {
        // A failed test shows what the relays said before it goes.
        if std::thread::panicking() {
            for log in ["local.log", "remote.log"] {
                let text = std::fs::read_to_string(self.logs.join(log)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(30)..];
                eprintln!("--- the last lines of {log}:\n{}", tail.join("\n"));
            }
        }
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}

impl Chain {
    /// The test bed at 2 × 20 Mbit/s, the destination's servers, both
    /// relays, and the LAN's TCP redirected into the local one.
    fn new() -> Chain {
        Chain::with_links(&[Some(20), Some(20)])
    }

    /// [`Chain::new`] with one WAN link per rate (Mbit/s).
    fn with_links(rates: &[Option<u32>]) -> Chain {
        Chain::with(rates, &[])
    }

    /// [`Chain::new`] with one WAN link per rate (Mbit/s), and more
    /// arguments for the local relay.
    fn with(rates: &[Option<u32>], local_args: &[&str]) -> Chain {
        mptcp_testbed::require_privileges().unwrap();
        let specs: Vec<LinkSpec> = rates.iter().map(|&r| LinkSpec::rate(r)).collect();
        let rp = mptcp_testbed::relay_path_with(&specs).unwrap();
        serve(&rp.dest, SOURCE_PORT, source);
        serve(&rp.dest, SINK_PORT, sink);
        serve(&rp.dest, CLOSER_PORT, closer);
        serve(&rp.dest, WHOAMI_PORT, whoami);
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let logs = std::env::temp_dir().join(format!("relay-faults-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&logs).unwrap();
        let mut chain = Chain {
            rp,
            remote: None,
            local: None,
            local_args: local_args.iter().map(|a| a.to_string()).collect(),
            logs,
        };
        chain.start_remote();
        chain.start_local();
        nft(
            &chain.rp.local,
            &format!(
                "table ip relay_faults {{\n chain prerouting {{\n type nat hook prerouting priority dstnat;\n \
                 iifname \"lan0\" meta l4proto tcp redirect to :{REDIRECT_PORT}\n }}\n}}\n"
            ),
        );
        chain
    }

    fn start_remote(&mut self) {
        self.remote = Some(self.spawn_remote(REMOTE_PORT, "remote.log"));
    }

    /// A remote relay on `port` of the remote node, logging to `log`.
    fn spawn_remote(&self, port: u16, log: &str) -> Daemon {
        let listen = format!("{}:{port}", self.rp.remote_addr());
        let log = self.logs.join(log);
        let mut cmd = relay_command(&self.rp.remote, &log, &["remote", "--listen", &listen]);
        let daemon = Daemon::spawn(&mut cmd).unwrap();
        self.rp.remote.wait_listening(port).unwrap();
        daemon
    }

    fn start_local(&mut self) {
        let remote = format!("{}:{REMOTE_PORT}", self.rp.remote_addr());
        let redirect = format!("0.0.0.0:{REDIRECT_PORT}");
        let log = self.logs.join("local.log");
        let mut args = vec!["local", "--redirect", &redirect];
        // The test's own remotes (flags or a file), or the remote relay of
        // the chain.
        if !self
            .local_args
            .iter()
            .any(|a| a == "--remote" || a == "--config")
        {
            args.extend(["--remote", &remote]);
        }
        args.extend(self.local_args.iter().map(String::as_str));
        let mut cmd = relay_command(&self.rp.local, &log, &args);
        self.local = Some(Daemon::spawn(&mut cmd).unwrap());
        self.rp.local.wait_listening(REDIRECT_PORT).unwrap();
    }

    fn dest(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.rp.dest_addr().into(), port)
    }

    /// A LAN connection to the destination's `port` (redirected into the
    /// local relay on its way).
    fn connect(&self, port: u16) -> std::io::Result<TcpStream> {
        let to = self.dest(port);
        let s = self
            .rp
            .lan
            .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(s)
    }

    /// Asks the pattern source for `len` bytes.
    fn download(&self, len: u64) -> std::io::Result<TcpStream> {
        let mut s = self.connect(SOURCE_PORT)?;
        s.write_all(&len.to_le_bytes())?;
        Ok(s)
    }

    /// The counters a relay logs on SIGUSR1 (`local` or `remote`).
    fn counters(&self, role: &str) -> String {
        let daemon = match role {
            "local" => &self.local,
            _ => &self.remote,
        };
        let pid = daemon.as_ref().expect("the relay runs").id();
        counters_of(pid, &self.logs.join(format!("{role}.log")))
    }
}

/// The counters relay `pid` logs to `log` on SIGUSR1.
fn counters_of(pid: u32, log: &std::path::Path) -> String {
    let before = std::fs::read_to_string(log).unwrap_or_default().len();
    Command::new("kill")
        .args(["-USR1", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text[before..].lines().find(|l| l.contains("counters")) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no counters from {}:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `mptcp relay ROLE ARGS` in `host`, with the test's credentials, its
/// log appended to `log` (the daemon's own output goes nowhere).
fn relay_command(host: &Host, log: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = host.command_logging_to(MPTCP, log);
    cmd.arg("relay")
        .args(args)
        .args(["--user", "alice", "--password-env", PASSWORD_VAR])
        .env(PASSWORD_VAR, "correct horse")
        .env("NO_COLOR", "1")
        .env("MPTCP_LINKS_FILE", log.with_file_name("links"))
        .env("MPTCP_REMOTES_FILE", log.with_file_name("remotes"));
    cmd
}

/// Loads an nftables ruleset in `host`.
fn nft(host: &Host, ruleset: &str) {
    let mut child = host
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft (nftables) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft -f: {ruleset}");
}

/// Serves `port` of `host` with `serve`, a thread per connection.
fn serve(host: &Host, port: u16, serve: fn(TcpStream)) {
    let listener = host.run(|| TcpListener::bind(("0.0.0.0", port)).unwrap());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            std::thread::spawn(move || serve(s));
        }
    });
}

fn source(mut s: TcpStream) {
    let mut len = [0u8; 8];
    if s.read_exact(&mut len).is_ok() {
        let _ = send_pattern(&mut s, u64::from_le_bytes(len));
    }
}

fn sink(mut s: TcpStream) {
    if let Ok((n, sum)) = receive_and_check(&mut s) {
        let _ = s.write_all(&n.to_le_bytes());
        let _ = s.write_all(&sum.to_le_bytes());
    }
}

fn whoami(mut s: TcpStream) {
    if let Ok(peer) = s.peer_addr() {
        let _ = s.write_all(peer.ip().to_string().as_bytes());
    }
}

fn closer(mut s: TcpStream) {
    let _ = data::discard(&mut s, 1 << 20);
}

/// Reads a download to its end: its length, or the error that ended it.
fn finish_download(mut s: TcpStream) -> std::io::Result<u64> {
    receive_and_check(&mut s).map(|(n, _)| n)
}

/// Uploads `len` bytes of the pattern and checks the sink's answer.
fn upload(chain: &Chain, len: u64) -> std::io::Result<()> {
    let mut s = chain.connect(SINK_PORT)?;
    let sum = send_pattern(&mut s, len)?;
    s.shutdown(Shutdown::Write)?;
    let mut answer = [0u8; 16];
    s.read_exact(&mut answer)?;
    let n = u64::from_le_bytes(answer[..8].try_into().unwrap());
    let got = u64::from_le_bytes(answer[8..].try_into().unwrap());
    assert_eq!(
        (n, got),
        (len, sum),
        "the sink got every byte of the upload"
    );
    Ok(())
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Drops every packet on WAN link `i`, both ways, in both relay hosts,
/// with the carrier up (a line whose upstream died); undone when dropped.
struct Blackhole<'a> {
    hosts: [&'a Host; 2],
}

impl<'a> Blackhole<'a> {
    fn new(rp: &'a RelayPath, i: usize) -> Blackhole<'a> {
        let hosts = [&rp.local, &rp.remote];
        for host in hosts {
            nft(
                host,
                &format!(
                    "table inet blackhole {{\n\
                     chain o {{\n type filter hook output priority 0;\n oifname \"wan{i}\" drop\n }}\n\
                     chain i {{\n type filter hook input priority 0;\n iifname \"wan{i}\" drop\n }}\n}}\n"
                ),
            );
        }
        Blackhole { hosts }
    }
}

impl Drop for Blackhole<'_> {
    fn drop(&mut self) {
        for host in self.hosts {
            let _ = host.exec("nft", &["delete", "table", "inet", "blackhole"]);
        }
    }
}

#[test]
fn a_killed_remote_ends_its_streams_and_the_lan_is_back_within_2_s_of_its_restart() {
    // Refused, not direct, while the only remote is down.
    let mut chain = Chain::with(&[Some(20), Some(20)], &["--fallback", "refuse"]);
    upload(&chain, 1 << 20).unwrap();
    // A download is running when the remote relay dies.
    let running = chain.download(256 << 20).unwrap();
    let reader = std::thread::spawn(move || {
        let started = Instant::now();
        let result = finish_download(running);
        (result, started.elapsed())
    });
    std::thread::sleep(Duration::from_secs(2));
    drop(chain.remote.take()); // SIGKILL to its process group
    let killed = Instant::now();
    let (result, _) = reader.join().unwrap();
    let ended_after = killed.elapsed();
    // It ends, soon, and with a reset: a FIN would pass the cut-short data
    // off as complete to a client that reads to the end.
    assert_eq!(
        result.as_ref().map_err(std::io::Error::kind).err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "{result:?}"
    );
    assert!(
        ended_after < Duration::from_secs(5),
        "ended {ended_after:?} after the kill"
    );
    // While the remote is down, new LAN connections fail, and do not hang.
    for _ in 0..3 {
        let started = Instant::now();
        let failed = chain
            .download(1000)
            .and_then(finish_download)
            .map_or(true, |n| n != 1000);
        assert!(failed && started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(300));
    }
    // Back: new connections work again within 2 s, without touching the
    // local relay.
    chain.start_remote();
    let restarted = Instant::now();
    loop {
        let ok = chain
            .download(64 * 1024)
            .and_then(finish_download)
            .is_ok_and(|n| n == 64 * 1024);
        if ok {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(2),
            "no working connection 2 s after the restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "first working LAN connection {:?} after the remote's restart",
        restarted.elapsed()
    );
    upload(&chain, 4 << 20).unwrap();
}

#[test]
fn a_killed_local_relay_leaves_nothing_open_at_the_remote() {
    let mut chain = Chain::new();
    let remote_pid = chain.remote.as_ref().unwrap().id();
    upload(&chain, 64 * 1024).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let idle_fds = open_fds(remote_pid);
    // Ten streams in flight, their readers slow, when the local relay dies.
    let open: Vec<TcpStream> = (0..10).map(|_| chain.download(64 << 20).unwrap()).collect();
    std::thread::sleep(Duration::from_secs(1));
    let busy_fds = open_fds(remote_pid);
    assert!(
        busy_fds >= idle_fds + 10,
        "{busy_fds} descriptors busy, {idle_fds} idle"
    );
    drop(chain.local.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(remote_pid) > idle_fds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        open_fds(remote_pid) <= idle_fds,
        "the remote still holds {} descriptors (idle: {idle_fds})",
        open_fds(remote_pid)
    );
    drop(open);
    // A new local relay gets going at once.
    chain.start_local();
    upload(&chain, 4 << 20).unwrap();
}

#[test]
fn a_transfer_survives_a_silent_link() {
    transfer_survives(Outage::Silent);
}

/// [`a_transfer_survives_a_silent_link`], with the other link taken down.
#[test]
fn a_transfer_survives_a_link_taken_down() {
    transfer_survives(Outage::Carrier);
}

/// A download and an upload through the chain across WAN link 0 made
/// silent or link 1 taken down for 10 s: both arrive intact, and the local
/// relay keeps its remote.
fn transfer_survives(fault: Outage) {
    let chain = Chain::new();
    const LEN: u64 = 40 << 20;
    let download = chain.download(LEN).unwrap();
    let reader = std::thread::spawn(move || finish_download(download));
    let uploader = {
        let s = chain.connect(SINK_PORT).unwrap();
        std::thread::spawn(move || {
            let mut s = s;
            let sum = send_pattern(&mut s, LEN / 4).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut answer = [0u8; 16];
            s.read_exact(&mut answer).unwrap();
            (
                u64::from_le_bytes(answer[..8].try_into().unwrap()),
                sum,
                answer,
            )
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    match fault {
        Outage::Silent => {
            let _hole = Blackhole::new(&chain.rp, 0);
            std::thread::sleep(Duration::from_secs(10));
        }
        Outage::Carrier => {
            chain.rp.wan[1].down().unwrap();
            std::thread::sleep(Duration::from_secs(10));
            chain.rp.wan[1].up().unwrap();
        }
    }
    assert_eq!(
        reader.join().unwrap().unwrap(),
        LEN,
        "download across a {fault:?} outage"
    );
    let (n, sum, answer) = uploader.join().unwrap();
    assert_eq!(n, LEN / 4, "upload across a {fault:?} outage");
    assert_eq!(u64::from_le_bytes(answer[8..].try_into().unwrap()), sum);
    // A lost link is not a lost remote: its sessions stall while MPTCP
    // sends the lost bytes again on the other link, and stay.
    let log = std::fs::read_to_string(chain.logs.join("local.log")).unwrap_or_default();
    assert!(!log.contains("the remote relay failed"), "{log}");
}

/// The subflows of the local relay's sessions to the remote, by session.
fn session_subflows(chain: &Chain) -> Vec<usize> {
    sessions_by_port(chain)
        .into_iter()
        .map(|(_, n)| n)
        .collect()
}

/// The local relay's sessions to the remote: (local port, subflows).
fn sessions_by_port(chain: &Chain) -> Vec<(u16, usize)> {
    let conns = chain
        .rp
        .local
        .run(mptcp_core::diag::connections)
        .expect("MPTCP diagnostics on the local node");
    conns
        .iter()
        .filter(|c| c.remote.port() == REMOTE_PORT)
        .map(|c| (c.local.port(), c.subflows.len()))
        .collect()
}

/// What `mptcp paths auto` keeps while both WAN links answer its probes,
/// rewritten each second as the daemon does, until dropped.
struct BothLinksUp {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl BothLinksUp {
    fn keep(path: std::path::PathBuf) -> BothLinksUp {
        use mptcp_core::paths::{LinkRole, LinkState, LinkStatus};
        let links: Vec<LinkStatus> = (0..2)
            .map(|i| LinkStatus {
                ifname: format!("wan{i}"),
                ifindex: 10 + i,
                state: LinkState::Up,
                role: LinkRole::Active,
                addr: Some(format!("198.18.{i}.1").parse().unwrap()),
                rtt: Some(Duration::from_millis(1)),
                loss_percent: 0.0,
                since: std::time::SystemTime::now(),
            })
            .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let writer = std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                mptcp_core::paths::write_state(&path, &links).unwrap();
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        BothLinksUp {
            stop,
            writer: Some(writer),
        }
    }
}

impl Drop for BothLinksUp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// A session that loses a subflow for good (its socket destroyed, as the
/// keepalive does after a long silent outage; the kernel never makes it
/// again) is replaced while the paths daemon says both links work: a new
/// LAN connection runs over both links again, and the download still on
/// the old session finishes there, intact.
#[test]
fn a_session_that_lost_a_link_is_replaced_and_its_streams_finish_on_it() {
    let chain = Chain::new();
    let _links = BothLinksUp::keep(chain.logs.join("links"));
    const LEN: u64 = 24 << 20;
    let old = chain.download(LEN).unwrap();
    let reader = std::thread::spawn(move || finish_download(old));
    // Every session (a busy one opens a spare) on both links, then
    // every one on one.
    let all = |n: usize| {
        let subflows = session_subflows(&chain);
        !subflows.is_empty() && subflows.iter().all(|&s| s == n)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !all(2) {
        assert!(Instant::now() < deadline, "{:?}", session_subflows(&chain));
        std::thread::sleep(Duration::from_millis(100));
    }
    let before: Vec<u16> = sessions_by_port(&chain).iter().map(|s| s.0).collect();
    // Destroy the subflows on the second WAN link (from its address), again
    // while one of the sessions of before still has one: a join that was
    // still on its way at the first kill completes after it.
    let kill = || {
        let killed = chain
            .rp
            .local
            .command("ss")
            .args([
                "-K",
                "src",
                "198.18.1.1",
                "dport",
                &format!("= :{REMOTE_PORT}"),
            ])
            .output()
            .unwrap();
        assert!(killed.status.success(), "ss -K: {killed:?}");
    };
    kill();
    // Every session of before the kill is down to one subflow (sessions
    // opened since, a spare or the replacement, have both).
    let deadline = Instant::now() + Duration::from_secs(5);
    while sessions_by_port(&chain)
        .iter()
        .any(|(port, n)| before.contains(port) && *n != 1)
    {
        assert!(Instant::now() < deadline, "{:?}", sessions_by_port(&chain));
        std::thread::sleep(Duration::from_millis(100));
        kill();
    }
    let log = chain.logs.join("local.log");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("misses links")
    {
        assert!(Instant::now() < deadline, "the session was not replaced");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        reader.join().unwrap().unwrap(),
        LEN,
        "the old session's download"
    );
    // Now a new connection: on a new session, over both links.
    let mut new = SampledDownload::start(&chain, LEN / 2);
    assert_eq!(new.finish(), LEN / 2);
    let mbit = new.steady_rate(Duration::from_secs(1));
    println!("after the replacement: {mbit:.1} Mbit/s");
    assert!(
        mbit > 30.0,
        "{mbit:.1} Mbit/s: more than one 20 Mbit/s link can carry"
    );
    assert!(
        session_subflows(&chain).contains(&2),
        "{:?}",
        session_subflows(&chain)
    );
}

#[test]
fn a_reader_that_stops_does_not_stop_the_other_streams() {
    let chain = Chain::new();
    // This LAN client asks for a large download and reads nothing.
    let mut stalled = chain.download(32 << 20).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // Another stream of the same session meanwhile runs at the links' rate.
    let started = Instant::now();
    const LEN: u64 = 16 << 20;
    assert_eq!(finish_download(chain.download(LEN).unwrap()).unwrap(), LEN);
    let rate = data::mbit_per_s(LEN, started.elapsed());
    assert!(rate > 25.0, "{rate:.1} Mbit/s beside a stalled stream");
    // The stalled one then gets every byte.
    let (n, _) = receive_and_check(&mut stalled).unwrap();
    assert_eq!(n, 32 << 20);
}

#[test]
fn sigterm_drains_running_transfers_and_refuses_new_ones() {
    let mut chain = Chain::new();
    const LEN: u64 = 12 << 20; // about 2.5 s over both links
    let running = chain.download(LEN).unwrap();
    let reader = std::thread::spawn(move || finish_download(running));
    std::thread::sleep(Duration::from_millis(500));
    let local = chain.local.take().unwrap();
    let pid = local.id();
    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    // New connections are refused (nothing listens behind the redirect).
    assert!(
        chain
            .download(1000)
            .and_then(finish_download)
            .map_or(true, |n| n != 1000)
    );
    // The running one finishes, intact, and then the relay exits.
    assert_eq!(reader.join().unwrap().unwrap(), LEN);
    let exited = loop {
        if std::fs::metadata(format!("/proc/{pid}/fd")).is_err() || zombie(pid) {
            break signalled.elapsed();
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "still running after the drain"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("exited {exited:?} after SIGTERM");
    drop(local);
    // A transfer that outlasts the drain timeout is cut at the timeout.
    chain.start_local();
    let local = chain.local.take().unwrap();
    let _stalled = chain.download(64 << 20).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pid = local.id();
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    while !(std::fs::metadata(format!("/proc/{pid}/fd")).is_err() || zombie(pid)) {
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "no exit at the drain timeout"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let at = signalled.elapsed();
    assert!(
        at >= Duration::from_secs(9),
        "exited after {at:?}, before the 10 s drain"
    );
    drop(local);
}

/// Whether process `pid` has exited and waits to be reaped.
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
    })
}

/// What one LAN client of the stress test does, by `seed`: a transfer that
/// must complete intact (true), or one cut short on purpose (false).
fn stress_client(chain: &Chain, seed: u64) -> bool {
    let len = (256 << 10) + (seed * 7919 % 13) * (256 << 10);
    match seed % 6 {
        0 => {
            let n = finish_download(chain.download(len).unwrap()).expect("download intact");
            assert_eq!(n, len);
            true
        }
        1 => {
            upload(chain, len).expect("upload intact");
            true
        }
        // Aborted by the client part way, bytes unread (a reset).
        2 => {
            let mut s = chain.download(64 << 20).unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut n = 0;
            while n < len {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k as u64,
                }
            }
            false
        }
        // An upload the destination cuts off after 1 MB.
        3 => {
            let mut s = chain.connect(CLOSER_PORT).unwrap();
            let _ = send_pattern(&mut s, 16 << 20);
            false
        }
        // Reset by the client (SO_LINGER 0) after a little.
        4 => {
            let mut s = chain.download(64 << 20).unwrap();
            let mut buf = vec![0u8; 100_000];
            let _ = s.read_exact(&mut buf);
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            false
        }
        // A short request and answer beside the bulk ones.
        _ => {
            let n = finish_download(chain.download(1 + seed % 5000).unwrap()).expect("intact");
            assert_eq!(n, 1 + seed % 5000);
            true
        }
    }
}

#[test]
fn aborts_resets_and_closing_destinations_under_cpu_contention_break_no_session() {
    let chain = Chain::new();
    let _hogs = CpuContention::new().unwrap();
    let mut complete = 0;
    for round in 0..4u64 {
        let done: Vec<bool> = std::thread::scope(|scope| {
            let clients: Vec<_> = (0..8u64)
                .map(|i| {
                    let chain = &chain;
                    scope.spawn(move || stress_client(chain, round * 8 + i))
                })
                .collect();
            clients
                .into_iter()
                .map(|c| c.join().expect("a client failed"))
                .collect()
        });
        complete += done.iter().filter(|&&d| d).count();
    }
    // iperf3 both ways, as the users ran it: its control connection
    // is a stream beside the data stream, and the test ends with the
    // server closing the data connection while data is in flight.
    let _server = Daemon::spawn(chain.rp.dest.command("iperf3").args(["-s", "-p", "5201"]))
        .expect("iperf3 must be installed");
    chain.rp.dest.wait_listening(5201).unwrap();
    let dest = chain.rp.dest_addr().to_string();
    for reverse in [false, true, false, true] {
        let mut cmd = chain.rp.lan.command("iperf3");
        cmd.args(["-c", &dest, "-p", "5201", "-t", "3", "-J"]);
        if reverse {
            cmd.arg("-R");
        }
        let out = cmd.output().unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "iperf3 (reverse: {reverse}) failed:\n{report}"
        );
    }
    let local = chain.counters("local");
    let remote = chain.counters("remote");
    assert!(complete >= 4 * 2, "{complete} complete transfers");
    for counters in [&local, &remote] {
        assert!(
            counters.contains("session_errors=0") && counters.contains("worker_panics=0"),
            "{counters}"
        );
    }
}

/// What breaks a WAN link in the outage tests.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// `ip link set wan1 down`, then up (the routes go with the carrier).
    Carrier,
    /// Every packet dropped both ways, carrier up.
    Silent,
}

/// A download through the chain, sampled every 100 ms while it runs.
struct SampledDownload {
    meter: data::Meter,
    samples: std::sync::Arc<std::sync::Mutex<Vec<(Instant, u64)>>>,
    reader: Option<std::thread::JoinHandle<std::io::Result<u64>>>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl SampledDownload {
    fn start(chain: &Chain, len: u64) -> SampledDownload {
        let mut s = chain.download(len).unwrap();
        let meter = data::Meter::new();
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let meter = meter.clone();
            std::thread::spawn(move || receive_and_check(&mut meter.reader(&mut s)).map(|r| r.0))
        };
        let sampler = {
            let (meter, samples) = (meter.clone(), std::sync::Arc::clone(&samples));
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut last = u64::MAX;
                while Instant::now() < deadline {
                    let bytes = meter.sample().bytes;
                    samples.lock().unwrap().push((Instant::now(), bytes));
                    if bytes == last && bytes >= len {
                        return;
                    }
                    last = bytes;
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        SampledDownload {
            meter,
            samples,
            reader: Some(reader),
            sampler: Some(sampler),
        }
    }

    /// Mbit/s over the window of `len` that ends at `end`.
    fn rate(&self, end: Instant, len: Duration) -> f64 {
        let samples = self.samples.lock().unwrap();
        let at = |t: Instant| samples.iter().rev().find(|(at, _)| *at <= t).copied();
        match (at(end - len), at(end)) {
            (Some((a, x)), Some((b, y))) if b > a => {
                (y - x) as f64 * 8.0 / 1e6 / (b - a).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// The first sample time in `[from, to]` whose last second ran at
    /// `mbit` or more.
    fn first_reaching(&self, mbit: f64, from: Instant, to: Instant) -> Option<Instant> {
        let times: Vec<Instant> = self.samples.lock().unwrap().iter().map(|s| s.0).collect();
        times
            .into_iter()
            .filter(|t| *t >= from && *t <= to)
            .find(|t| self.rate(*t, Duration::from_secs(1)) >= mbit)
    }

    /// Mbit/s from `skip` after the start until the last byte: what the
    /// download ran at once its congestion control had the path's measure
    /// (bbr probes for a few round trips, and the SOCKS exchange comes first).
    fn steady_rate(&self, skip: Duration) -> f64 {
        let samples = self.samples.lock().unwrap();
        let Some(&(started, _)) = samples.first() else {
            return 0.0;
        };
        let total = samples.last().map_or(0, |s| s.1);
        let from = samples.iter().find(|(at, _)| *at >= started + skip);
        let done = samples.iter().find(|(_, bytes)| *bytes == total);
        match (from, done) {
            (Some(&(a, x)), Some(&(b, y))) if b > a => {
                (y - x) as f64 * 8.0 / 1e6 / (b - a).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// Waits for the last byte (and the sample that saw it); the bytes.
    fn finish(&mut self) -> u64 {
        let n = self
            .reader
            .take()
            .unwrap()
            .join()
            .unwrap()
            .expect("the download intact");
        self.sampler.take().unwrap().join().unwrap();
        assert_eq!(n, self.meter.sample().bytes);
        n
    }
}

/// The README's router: `mptcp paths auto` manages the WAN links of the
/// local node (the test bed's own endpoints removed; each link has its
/// default route, the second with a higher metric, as DHCP gives a
/// multi-WAN router), probing the remote relay's port through each link,
/// fast; it writes the link state file the local relay reads. Its log is
/// `paths.log`.
fn paths_auto(chain: &Chain) -> Daemon {
    let local = &chain.rp.local;
    local
        .ip(&["mptcp", "endpoint", "flush"])
        .expect("removing the test bed's endpoints");
    local
        .ip(&[
            "route",
            "add",
            "default",
            "via",
            "198.18.1.2",
            "dev",
            "wan1",
            "metric",
            "200",
        ])
        .expect("the second link's default route");
    let log = chain.logs.join("paths.log");
    let probe = format!("{}:{REMOTE_PORT}", chain.rp.remote_addr());
    let mut cmd = chain.rp.local.command("sh");
    cmd.arg("-c")
        .arg(format!("exec \"$0\" \"$@\" >>'{}' 2>&1", log.display()))
        .arg(MPTCP)
        .args(["paths", "auto", "--include", "wan*", "--probe", &probe])
        .args(["--probe-interval", "0.2", "--probe-timeout", "0.2"])
        .args(["--down-after", "3", "--up-after", "3"])
        .env("NO_COLOR", "1")
        .env("MPTCP_LINKS_FILE", chain.logs.join("links"));
    let daemon = Daemon::spawn(&mut cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if ["wan0", "wan1"]
            .iter()
            .all(|l| text.contains(&format!("link {l} probing -> up")))
            && text.contains("ip mptcp endpoint add 198.18.1.1")
        {
            return daemon;
        }
        assert!(
            Instant::now() < deadline,
            "paths auto did not start:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// WAN link 1 fails for 10 s in the middle of a LAN download through the
/// chain, with `mptcp paths auto` on the router: no byte is lost, the
/// running download is back at 1.8 x what one link carried within 5 s of
/// the link's return, and so is a new LAN connection afterwards.
#[test]
fn a_carrier_outage_under_paths_auto_recovers_the_chain() {
    wan_outage_under_paths_auto_recovers_the_chain(Outage::Carrier);
}

/// [`a_carrier_outage_under_paths_auto_recovers_the_chain`], with the link
/// silent (its carrier up).
#[test]
fn a_silent_outage_under_paths_auto_recovers_the_chain() {
    wan_outage_under_paths_auto_recovers_the_chain(Outage::Silent);
}

fn wan_outage_under_paths_auto_recovers_the_chain(outage: Outage) {
    let chain = Chain::new();
    let _paths = paths_auto(&chain);
    const LEN: u64 = 64 << 20;
    let mut download = SampledDownload::start(&chain, LEN);
    let start = Instant::now();
    let (fault_at, return_at) = (
        start + Duration::from_secs(3),
        start + Duration::from_secs(13),
    );
    std::thread::sleep(fault_at - Instant::now());
    let link = &chain.rp.wan[1];
    match outage {
        Outage::Carrier => link.down().unwrap(),
        Outage::Silent => link.blackhole().unwrap(),
    }
    std::thread::sleep(return_at.saturating_duration_since(Instant::now()));
    match outage {
        Outage::Carrier => link.up().unwrap(),
        Outage::Silent => link.restore().unwrap(),
    }
    std::thread::sleep(Duration::from_secs(5));
    let one_link = download.rate(return_at, Duration::from_secs(6));
    let recovered = download.first_reaching(
        1.8 * one_link,
        return_at,
        return_at + Duration::from_secs(5),
    );
    let timeline: Vec<String> = (1..20)
        .map(|s| {
            format!(
                "{:.0}",
                download.rate(start + Duration::from_secs(s), Duration::from_secs(1))
            )
        })
        .collect();
    let paths_log = std::fs::read_to_string(chain.logs.join("paths.log")).unwrap_or_default();
    assert_eq!(
        download.finish(),
        LEN,
        "{outage:?}: the download across the outage"
    );
    println!(
        "{outage:?} outage of wan1 under paths auto: one link {one_link:.1} Mbit/s, back at \
         1.8 x {} s after the return; Mbit/s per second: {}",
        recovered.map_or("never".into(), |t| format!(
            "{:.2}",
            (t - return_at).as_secs_f64()
        )),
        timeline.join(" ")
    );
    assert!(
        recovered.is_some(),
        "{outage:?}: not back at 1.8 x {one_link:.1} Mbit/s within 5 s: {}\n{paths_log}",
        timeline.join(" ")
    );
    // A new LAN connection: over both links again.
    let mut new = SampledDownload::start(&chain, LEN / 4);
    assert_eq!(new.finish(), LEN / 4);
    let mbit = new.steady_rate(Duration::from_secs(1));
    println!("{outage:?}: a new LAN connection after the return: {mbit:.1} Mbit/s");
    assert!(
        mbit >= 1.8 * one_link,
        "{outage:?}: a new connection ran at {mbit:.1} Mbit/s, one link {one_link:.1}; \
         subflows {:?}\n{paths_log}",
        session_subflows(&chain)
    );
}

/// What WAN link `i` alone carries: one plain TCP download of `len` from
/// the remote node's address on that link to the local node's (Mbit/s).
fn tcp_over_link(chain: &Chain, i: usize, len: u64) -> f64 {
    let at = SocketAddr::from(([198, 18, i as u8, 2], 5100 + i as u16));
    let listener = chain.rp.remote.run(|| TcpListener::bind(at)).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        send_pattern(&mut s, len).unwrap();
    });
    let started = Instant::now();
    let mut s = chain.rp.local.run(|| TcpStream::connect(at)).unwrap();
    assert_eq!(receive_and_check(&mut s).unwrap().0, len);
    server.join().unwrap();
    len as f64 * 8.0 / 1e6 / started.elapsed().as_secs_f64()
}

/// Links of unequal rates (20 and 5 Mbit/s) under paths auto: a LAN
/// download through the chain gets at least 0.9 of the sum of what each
/// link carries alone (one TCP connection each, measured in the same run),
/// in the best of five downloads (these short round trips run cubic under
/// `congestion_control = "auto"`; with bbr, which long links need,
/// tests/aggregation.rs, single downloads here ranged from 0.85 to 0.97 of
/// the sum, where reno gave 0.96 to 0.98).
#[test]
fn unequal_links_under_paths_auto_give_the_chain_their_sum() {
    let chain = Chain::with_links(&[Some(20), Some(5)]);
    let alone = [
        tcp_over_link(&chain, 0, 8 << 20),
        tcp_over_link(&chain, 1, 2 << 20),
    ];
    let sum = alone[0] + alone[1];
    let _paths = paths_auto(&chain);
    // Warm the session (its second subflow joins), then measure the
    // steady rate: after the first second of each download.
    assert_eq!(
        finish_download(chain.download(1 << 20).unwrap()).unwrap(),
        1 << 20
    );
    let mut rates = Vec::new();
    let mut best = 0.0f64;
    for _ in 0..5 {
        const LEN: u64 = 32 << 20;
        let mut download = SampledDownload::start(&chain, LEN);
        download.finish();
        let mbit = download.steady_rate(Duration::from_secs(1));
        rates.push(format!("{mbit:.1}"));
        best = best.max(mbit);
        if best >= 0.9 * sum {
            break;
        }
    }
    println!(
        "20 + 5 Mbit/s: alone {:.1} + {:.1} = {sum:.1}; through the chain {} Mbit/s",
        alone[0],
        alone[1],
        rates.join(", ")
    );
    assert!(best >= 0.9 * sum, "{} Mbit/s of {sum:.1}", rates.join(", "));
}

impl Chain {
    /// Where the destination sees a new LAN connection come from: the
    /// remote node's egress address through a remote relay, the router's
    /// WAN address when it went direct.
    fn who(&self) -> std::io::Result<String> {
        let mut s = self.connect(WHOAMI_PORT)?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        if text.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(text)
    }

    /// Polls [`Chain::who`] until it answers `from`, for at most `limit`;
    /// returns how long that took.
    fn until_from(&self, from: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            match self.who() {
                Ok(seen) if seen == from => return started.elapsed(),
                seen => assert!(
                    started.elapsed() < limit,
                    "no connection from {from} within {limit:?}: {seen:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `relayed=` of a counters line.
fn relayed(counters: &str) -> u64 {
    counters
        .split_whitespace()
        .find_map(|w| w.strip_prefix("relayed="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no relayed= in {counters}"))
}

/// The router's address on WAN link 0: where direct connections come from.
const ROUTER: &str = "198.18.0.1";
/// The remote node's address towards the destination.
const REMOTE_EGRESS: &str = "198.19.2.1";
const SECOND_PORT: u16 = 1081;

/// `198.18.0.2:PORT`: a remote relay on the remote node.
fn remote_at(port: u16) -> String {
    format!("198.18.0.2:{port}")
}

/// The chain with two remote relays on the remote node, in failover order
/// (ports [`REMOTE_PORT`] and [`SECOND_PORT`]) with a hold of `hold_secs`;
/// the second runs as the returned daemon (logging to `second.log`).
fn two_remotes(hold_secs: &str) -> (Chain, Daemon) {
    let (first, second) = (remote_at(REMOTE_PORT), remote_at(SECOND_PORT));
    let chain = Chain::with(
        &[Some(20), Some(20)],
        &[
            "--remote",
            &first,
            "--remote",
            &second,
            "--remote-hold",
            hold_secs,
        ],
    );
    let backup = chain.spawn_remote(SECOND_PORT, "second.log");
    (chain, backup)
}

/// Two remote relays, `failover`: the first takes the LAN's connections;
/// killed mid-download, its download ends and new connections go through
/// the second within 2 s; back, it takes them again only after the hold
/// time. With both dead the LAN goes direct within 2 s, and through a
/// remote again as soon as one answers.
#[test]
fn several_remotes_fail_over_with_a_hold_and_the_lan_goes_direct_when_none_answers() {
    let (mut chain, backup) = two_remotes("3");
    let mut backup = Some(backup);
    let second_log = chain.logs.join("second.log");
    let counts = |chain: &Chain, backup: &Option<Daemon>| {
        (
            relayed(&chain.counters("remote")),
            relayed(&counters_of(backup.as_ref().unwrap().id(), &second_log)),
        )
    };
    // `n` new LAN connections, each through a remote: how many each took.
    let taken = |chain: &Chain, backup: &Option<Daemon>, n: usize| {
        let before = counts(chain, backup);
        for _ in 0..n {
            assert_eq!(chain.who().unwrap(), REMOTE_EGRESS);
        }
        let after = counts(chain, backup);
        (after.0 - before.0, after.1 - before.1)
    };
    // The first remote takes every connection.
    assert_eq!(
        taken(&chain, &backup, 5),
        (5, 0),
        "failover: all on the first"
    );
    let after = counts(&chain, &backup);

    // Killed mid-download.
    let running = chain.download(256 << 20).unwrap();
    let reader = std::thread::spawn(move || finish_download(running));
    std::thread::sleep(Duration::from_secs(1));
    drop(chain.remote.take());
    let killed = Instant::now();
    let took = chain.until_from(REMOTE_EGRESS, Duration::from_secs(2));
    println!("the second remote took new connections {took:?} after the kill");
    let result = reader.join().unwrap();
    assert!(
        result.is_err() || result.as_ref().is_ok_and(|&n| n < 256 << 20),
        "{result:?}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "the cut download ended late"
    );
    let on_second = relayed(&counters_of(backup.as_ref().unwrap().id(), &second_log));
    assert!(on_second > after.1, "the second remote carried it");

    // Back: the second keeps new connections until the first has worked
    // for the hold time (3 s).
    chain.start_remote();
    let restarted = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let during = taken(&chain, &backup, 3);
    assert!(
        restarted.elapsed() < Duration::from_secs(3),
        "the hold time passed too soon"
    );
    assert_eq!(during, (0, 3), "still on the second");
    std::thread::sleep(
        (restarted + Duration::from_secs(5)).saturating_duration_since(Instant::now()),
    );
    assert_eq!(taken(&chain, &backup, 3), (3, 0), "back on the first");

    // Both dead: direct, from the router's address.
    drop(chain.remote.take());
    drop(backup.take());
    let took = chain.until_from(ROUTER, Duration::from_secs(2));
    println!("with no remote, direct connections {took:?} after the kill");
    let local = chain.counters("local");
    assert!(local.contains("direct="), "{local}");
    // One back: through it again.
    backup = Some(chain.spawn_remote(SECOND_PORT, "second.log"));
    let took = chain.until_from(REMOTE_EGRESS, Duration::from_secs(10));
    println!("through the returned remote {took:?} after its restart");
    drop(backup);
}

/// Two remote relays, `spread` with weights 3 and 1: new connections are
/// shared within 10 % of the weights.
#[test]
fn spread_shares_new_connections_by_weight() {
    let first = format!("{},weight=3", remote_at(REMOTE_PORT));
    let second = remote_at(SECOND_PORT);
    let chain = Chain::with(
        &[Some(20), Some(20)],
        &[
            "--remote",
            &first,
            "--remote",
            &second,
            "--policy",
            "spread",
            "--remote-hold",
            "1",
        ],
    );
    let backup = chain.spawn_remote(SECOND_PORT, "second.log");
    let second_log = chain.logs.join("second.log");
    // The second, started after the local relay, may have failed its
    // first session: it answers (its watch session retries within 2 s),
    // then works for the hold time before the count.
    std::thread::sleep(Duration::from_secs(4));
    let before = (
        relayed(&chain.counters("remote")),
        relayed(&counters_of(backup.id(), &second_log)),
    );
    const N: u64 = 80;
    for _ in 0..N {
        assert_eq!(chain.who().unwrap(), REMOTE_EGRESS);
    }
    let after = (
        relayed(&chain.counters("remote")),
        relayed(&counters_of(backup.id(), &second_log)),
    );
    let (a, b) = (after.0 - before.0, after.1 - before.1);
    println!("spread 3:1 over {N} connections: {a} and {b}");
    assert_eq!(a + b, N);
    let share = a as f64 / N as f64;
    assert!(
        (share - 0.75).abs() <= 0.075,
        "{a} of {N} on the first, want 75 % +- 10 %"
    );
}

/// A first remote that flaps (2 s up, 2 s down, for 30 s) beside a steady
/// second, `failover` with a 6 s hold: the LAN never loses a new
/// connection, the flapping remote is never taken back while it flaps
/// (at most one switch per hold time), it is once it stays up, and the
/// local relay leaks no session or descriptor.
#[test]
fn a_flapping_remote_does_not_flap_the_lan() {
    let (mut chain, _steady) = two_remotes("6");
    let first = remote_at(REMOTE_PORT);
    assert_eq!(chain.who().unwrap(), REMOTE_EGRESS);
    let local_pid = chain.local.as_ref().unwrap().id();
    let fds_before = open_fds(local_pid);
    let log = chain.logs.join("local.log");
    let back_in_use = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("back in use") && l.contains(&first))
            .count()
    };
    let started = Instant::now();
    let mut failed = 0;
    let mut probes = 0;
    while started.elapsed() < Duration::from_secs(30) {
        let cycle = started.elapsed().as_secs() / 2;
        let up = cycle % 2 == 1;
        if up && chain.remote.is_none() {
            chain.start_remote();
        } else if !up && chain.remote.is_some() {
            drop(chain.remote.take());
        }
        probes += 1;
        if chain.who().map_or(true, |w| w != REMOTE_EGRESS) {
            failed += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let switches = back_in_use();
    println!(
        "30 s of flapping: {probes} new LAN connections, {failed} failed; taken back {switches} times"
    );
    assert_eq!(failed, 0, "every new LAN connection worked");
    assert!(
        switches <= 1,
        "taken back {switches} times while flapping (hold 6 s)"
    );
    // It stays up: taken back after the hold.
    if chain.remote.is_none() {
        chain.start_remote();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while back_in_use() == switches {
        assert!(Instant::now() < deadline, "not taken back after staying up");
        assert_eq!(chain.who().unwrap(), REMOTE_EGRESS);
        std::thread::sleep(Duration::from_millis(250));
    }
    // Nothing leaked: a session per remote and worker at most, and the
    // descriptors of the start (give or take the sessions).
    let counters = chain.counters("local");
    let sessions: u64 = counters
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sessions="))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(sessions <= 2 * 2 * 4, "{counters}");
    let fds_after = open_fds(local_pid);
    assert!(
        fds_after <= fds_before + 16,
        "descriptors {fds_before} -> {fds_after}"
    );
}

/// dante as the second remote (a plain SOCKS5 server, no MULTIPLEX, no
/// login), from the config file: with our remote relay killed, new LAN
/// connections go through dante, one connection to it each.
#[test]
fn dante_serves_as_a_backup_remote() {
    mptcp_testbed::require_privileges().unwrap();
    let dir = std::env::temp_dir().join(format!("relay-faults-dante-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("local.toml");
    std::fs::write(
        &config,
        format!(
            "[local]\nremote = \"198.18.0.2:{REMOTE_PORT}\"\nredirect = [\"0.0.0.0:{REDIRECT_PORT}\"]\n\
             links_file = \"{}\"\n\n[[local.remotes]]\naddress = \"198.18.0.2:{SECOND_PORT}\"\nanonymous = true\n",
            dir.join("links").display()
        ),
    )
    .unwrap();
    let mut chain = Chain::with(
        &[Some(20), Some(20)],
        &["--config", config.to_str().unwrap()],
    );
    let dante_conf = dir.join("danted.conf");
    let listen = SocketAddr::new(chain.rp.remote_addr().into(), SECOND_PORT);
    std::fs::write(
        &dante_conf,
        danted_config(listen, chain.rp.remote_egress_addr(), "/dev/null"),
    )
    .unwrap();
    let _dante = Daemon::spawn(
        chain
            .rp
            .remote
            .command("/usr/sbin/danted")
            .arg("-f")
            .arg(&dante_conf)
            .arg("-p")
            .arg(dir.join("danted.pid")),
    )
    .expect("dante-server (/usr/sbin/danted)");
    chain.rp.remote.wait_listening(SECOND_PORT).unwrap();
    let before = relayed(&chain.counters("remote"));
    assert_eq!(chain.who().unwrap(), REMOTE_EGRESS);
    assert_eq!(
        relayed(&chain.counters("remote")),
        before + 1,
        "our remote first"
    );
    drop(chain.remote.take());
    let took = chain.until_from(REMOTE_EGRESS, Duration::from_secs(2));
    println!("dante took new connections {took:?} after the kill");
    for _ in 0..5 {
        assert_eq!(chain.who().unwrap(), REMOTE_EGRESS);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first remote goes silent (its host drops every packet of its port,
/// no reset): a new LAN connection opened 2 s later goes through the second
/// and completes at once, and the first takes connections again after it
/// answers for the hold time.
#[test]
fn a_silent_remote_is_left_for_new_connections_within_2_s() {
    let (chain, _second) = two_remotes("2");
    assert_eq!(chain.who().unwrap(), REMOTE_EGRESS);
    std::thread::sleep(Duration::from_secs(3));
    nft(
        &chain.rp.remote,
        &format!(
            "table inet silent_remote {{\n\
             chain i {{ type filter hook input priority 0; tcp dport {REMOTE_PORT} drop; }}\n\
             chain o {{ type filter hook output priority 0; tcp sport {REMOTE_PORT} drop; }}\n}}\n"
        ),
    );
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let seen = chain.who();
    let took = started.elapsed();
    let _ = chain
        .rp
        .remote
        .exec("nft", &["delete", "table", "inet", "silent_remote"]);
    println!("a new connection 2 s after the remote went silent: {seen:?} in {took:?}");
    assert_eq!(seen.unwrap(), REMOTE_EGRESS);
    assert!(
        took < Duration::from_secs(1),
        "{took:?}: it waited for the silent remote"
    );
    let log = std::fs::read_to_string(chain.logs.join("local.log")).unwrap_or_default();
    assert!(log.contains("slow to answer PINGs"), "{log}");
}
