//! Hosts: anonymous network namespaces held by a file descriptor.

use std::fs::File;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crate::privilege;

/// A host of the test bed: a network namespace of its own.
///
/// The namespace is held by an open file descriptor, not by a name under
/// `/var/run/netns`, so it disappears as soon as the last clone of the `Host`
/// (and the last process running inside it) is gone, whatever way the test
/// ends. Cloning is cheap and shares the same namespace.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    name: String,
    netns: OwnedFd,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.inner.name)
            .field("netns_fd", &self.inner.netns.as_raw_fd())
            .finish()
    }
}

impl Host {
    /// Creates a host: a new network namespace with its loopback up.
    ///
    /// `name` only appears in messages. Fails with a message that says what
    /// privilege is missing when the process may not create namespaces.
    pub fn new(name: &str) -> io::Result<Host> {
        // unshare(CLONE_NEWNET) moves the calling thread only; a short-lived
        // thread keeps the caller in its own namespace. The namespace then
        // lives exactly as long as the fd opened on it.
        let netns = thread::spawn(|| -> io::Result<OwnedFd> {
            // SAFETY: unshare takes no pointers; it only changes the network
            // namespace of this short-lived thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(File::open("/proc/thread-self/ns/net")?.into())
        })
        .join()
        .map_err(|_| io::Error::other("the namespace creation thread panicked"))?;
        let netns = netns.map_err(|e| {
            if e.kind() == io::ErrorKind::PermissionDenied {
                privilege::missing_privilege_error(&e)
            } else {
                io::Error::new(
                    e.kind(),
                    format!("creating network namespace for host {name}: {e}"),
                )
            }
        })?;
        let host = Host {
            inner: Arc::new(HostInner {
                name: name.to_owned(),
                netns,
            }),
        };
        host.ip(&["link", "set", "dev", "lo", "up"])?;
        Ok(host)
    }

    /// The name given at creation (for messages).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The file descriptor of the network namespace.
    pub fn netns_fd(&self) -> BorrowedFd<'_> {
        self.inner.netns.as_fd()
    }

    /// A path that names this namespace for other programs while the `Host`
    /// lives, such as `ip link set dev X netns PATH` or `nsenter --net=PATH`.
    pub fn netns_path(&self) -> String {
        format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.inner.netns.as_raw_fd()
        )
    }

    /// Moves the calling thread into this host's network namespace.
    fn enter(&self) -> io::Result<()> {
        enter_netns(self.inner.netns.as_raw_fd())
    }

    /// Runs `f` in a thread inside this host and returns its value.
    ///
    /// Sockets made by `f` belong to this host; they stay there when returned
    /// to the caller. A panic in `f` is passed on to the caller.
    ///
    /// # Panics
    /// If the thread cannot enter the namespace, which does not happen while
    /// the process keeps the privileges it created the host with.
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        thread::scope(|scope| {
            let handle = scope.spawn(|| {
                self.enter().unwrap_or_else(|e| {
                    panic!("entering the namespace of host {}: {e}", self.name())
                });
                f()
            });
            match handle.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Like [`Host::run`], but returns at once with the thread's handle.
    pub fn spawn<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
        &self,
        f: F,
    ) -> JoinHandle<T> {
        let host = self.clone();
        thread::Builder::new()
            .name(format!("host-{}", self.name()))
            .spawn(move || {
                host.enter().unwrap_or_else(|e| {
                    panic!("entering the namespace of host {}: {e}", host.name())
                });
                f()
            })
            .expect("spawning a thread")
    }

    /// A [`Command`] whose child enters this host's namespace before `exec`.
    ///
    /// The command keeps the namespace alive until it is dropped.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let inner = Arc::clone(&self.inner);
        // SAFETY: the closure runs in the forked child before exec; it only
        // calls setns(2), which is async-signal-safe, and allocates nothing
        // (the error path builds an io::Error from errno without allocating).
        unsafe {
            cmd.pre_exec(move || enter_netns(inner.netns.as_raw_fd()));
        }
        cmd
    }

    /// [`Host::command`] for `program` with its standard error appended to
    /// `log` (through `sh`, which then execs the program: a [`Daemon`]
    /// started from it is the program itself). Add the program's arguments.
    ///
    /// [`Daemon`]: crate::Daemon
    pub fn command_logging_to(&self, program: &str, log: &std::path::Path) -> Command {
        let mut cmd = self.command("sh");
        cmd.arg("-c")
            .arg(format!("exec \"$0\" \"$@\" 2>>'{}'", log.display()))
            .arg(program);
        cmd
    }

    /// Runs `program args` inside the host; returns its standard output, or an
    /// error carrying the command line and its standard error.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<String> {
        let out = self.command(program).args(args).output().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("running {program} (is it installed and in PATH?): {e}"),
            )
        })?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "host {}: `{program} {}` failed ({}): {}",
                self.name(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `ip args` (iproute2) inside the host.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        self.exec("ip", args)
    }

    /// Adds a veth pair: `dev` in this host, its peer `peer_dev` in
    /// `peer` (created there straight away, named by its namespace's path).
    pub fn add_veth(&self, dev: &str, peer: &Host, peer_dev: &str) -> io::Result<()> {
        let netns = peer.netns_path();
        let args = [
            "link", "add", dev, "type", "veth", "peer", "name", peer_dev, "netns", &netns,
        ];
        self.ip(&args).map(drop)
    }

    /// The policy routing TPROXY needs: packets marked 0x4242 are
    /// delivered locally (table 4242; the test bed's source routing uses
    /// tables from 100), to the transparent socket that takes them.
    pub fn deliver_marked_locally(&self) -> io::Result<()> {
        self.ip(&["rule", "add", "fwmark", "0x4242", "lookup", "4242"])?;
        self.ip(&[
            "route",
            "add",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            "4242",
        ])
        .map(drop)
    }

    /// Loads an nftables ruleset (`nft -f -`) inside the host.
    pub fn nft(&self, ruleset: &str) -> io::Result<()> {
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("running nft (nftables): {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(ruleset.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "host {}: nft rejected the ruleset ({}):\n{ruleset}",
                self.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Runs `tc args` (iproute2) inside the host.
    pub fn tc(&self, args: &[&str]) -> io::Result<String> {
        self.exec("tc", args)
    }

    /// Runs many `ip` commands (one per line, without the leading `ip`) in
    /// one `ip -batch -` process: much faster than one process per command.
    pub fn ip_batch<S: AsRef<str>>(&self, lines: &[S]) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut script = String::new();
        for line in lines {
            script.push_str(line.as_ref());
            script.push('\n');
        }
        let mut child = self
            .command("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("running ip (is iproute2 installed?): {e}"),
                )
            })?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "host {}: `ip -batch` failed ({}): {}\nscript:\n{script}",
                self.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Sets a sysctl of this host's namespace, e.g.
    /// `sysctl("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = sysctl_path(key);
        // /proc/sys/net resolves to the namespace of the thread that opens it.
        self.run(|| std::fs::write(&path, value)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("host {}: setting {key}={value}: {e}", self.name()),
            )
        })
    }

    /// Reads a sysctl of this host's namespace.
    pub fn read_sysctl(&self, key: &str) -> io::Result<String> {
        let path = sysctl_path(key);
        self.run(|| std::fs::read_to_string(&path))
            .map(|s| s.trim().to_owned())
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("host {}: reading {key}: {e}", self.name()),
                )
            })
    }

    /// Established TCP connections of this host whose remote port is
    /// `remote_port`, as (local, remote) addresses.
    ///
    /// MPTCP subflows are TCP sockets, so each subflow of an MPTCP connection
    /// appears here: this counts subflows without any MPTCP socket option.
    pub fn established_tcp(
        &self,
        remote_port: u16,
    ) -> io::Result<Vec<(SocketAddrV4, SocketAddrV4)>> {
        let table = self.run(|| std::fs::read_to_string("/proc/thread-self/net/tcp"))?;
        Ok(parse_proc_net_tcp(&table)
            .into_iter()
            .filter(|(_, remote, state)| remote.port() == remote_port && *state == TCP_ESTABLISHED)
            .map(|(local, remote, _)| (local, remote))
            .collect())
    }

    /// Waits (up to 10 s) until a TCP (or MPTCP) socket of this host listens
    /// on `port`, over IPv4 or IPv6. It looks at `/proc/net/tcp{,6}` rather
    /// than connecting: a probe connection would be served, or relayed by a
    /// transparent proxy such as redsocks (back to itself, through dante).
    pub fn wait_listening(&self, port: u16) -> io::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let listening = self.run(|| -> io::Result<bool> {
                for table in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
                    match std::fs::read_to_string(table) {
                        Ok(text) if listening_ports(&text).any(|p| p == port) => return Ok(true),
                        Ok(_) => {}
                        // No tcp6 table when IPv6 is off.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(false)
            })?;
            if listening {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "nothing listens on TCP port {port} in host {} after 10 s",
                        self.name()
                    ),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Bytes sent and received so far by the interface `dev` of this host,
    /// from `/proc/net/dev` of its namespace.
    pub fn interface_bytes(&self, dev: &str) -> io::Result<(u64, u64)> {
        let table = self.run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))?;
        parse_proc_net_dev(&table, dev).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("host {}: no interface {dev}", self.name()),
            )
        })
    }
}

/// The `st` value of an established socket in `/proc/net/tcp`.
const TCP_ESTABLISHED: u8 = 1;
/// `TCP_LISTEN` in the `st` column.
const TCP_LISTEN: u8 = 0x0a;

fn enter_netns(fd: i32) -> io::Result<()> {
    // SAFETY: setns takes a descriptor and a flag; an invalid descriptor
    // yields EBADF, nothing else is touched.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Parses `/proc/net/tcp` lines into (local, remote, state).
fn parse_proc_net_tcp(table: &str) -> Vec<(SocketAddrV4, SocketAddrV4, u8)> {
    fn addr(field: &str) -> Option<SocketAddrV4> {
        let (ip, port) = field.split_once(':')?;
        // The address is the raw in_addr printed as a host-order hex u32.
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port))
    }
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let local = addr(fields.next()?)?;
            let remote = addr(fields.next()?)?;
            let state = u8::from_str_radix(fields.next()?, 16).ok()?;
            Some((local, remote, state))
        })
        .collect()
}

/// The local ports of the listening sockets in a `/proc/net/tcp` or
/// `/proc/net/tcp6` table.
fn listening_ports(table: &str) -> impl Iterator<Item = u16> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let (_, port) = fields.next()?.rsplit_once(':')?;
        let state = u8::from_str_radix(fields.nth(1)?, 16).ok()?;
        (state == TCP_LISTEN)
            .then(|| u16::from_str_radix(port, 16).ok())
            .flatten()
    })
}

/// Finds (rx_bytes, tx_bytes) of `dev` in `/proc/net/dev`, returned as
/// (tx, rx).
fn parse_proc_net_dev(table: &str, dev: &str) -> Option<(u64, u64)> {
    table.lines().skip(2).find_map(|line| {
        let (name, counters) = line.split_once(':')?;
        if name.trim() != dev {
            return None;
        }
        let fields: Vec<u64> = counters
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // Receive: bytes packets errs drop fifo frame compressed multicast,
        // then transmit: bytes ...
        Some((*fields.get(8)?, *fields.first()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_ports_in_both_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue\n   0: 010012C6:0438 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0\n   1: 010012C6:9C40 020012C6:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0\n";
        assert_eq!(listening_ports(tcp).collect::<Vec<_>>(), [1080]);
        let tcp6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0\n";
        assert_eq!(listening_ports(tcp6).collect::<Vec<_>>(), [8080]);
    }

    #[test]
    fn parses_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n   0: 010012C6:9C40 020012C6:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0\n";
        let parsed = parse_proc_net_tcp(table);
        assert_eq!(
            parsed,
            vec![(
                "198.18.0.1:40000".parse().unwrap(),
                "198.18.0.2:8080".parse().unwrap(),
                TCP_ESTABLISHED
            )]
        );
    }

    #[test]
    fn parses_proc_net_dev() {
        let table = "Inter-|   Receive |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets\n  eth0: 100 2 0 0 0 0 0 0 300 4 0 0 0 0 0 0\n    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n";
        assert_eq!(parse_proc_net_dev(table, "eth0"), Some((300, 100)));
        assert_eq!(parse_proc_net_dev(table, "eth1"), None);
    }
}
