//! systemd's service notifications (`sd_notify(3)`, for `Type=notify`
//! units): `READY=1` once listening, `RELOADING=1` and `STOPPING=1`, and
//! `WATCHDOG=1` keep-alives, as datagrams to the unix socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where to send notifications: the service manager's socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier the environment asks for: `None` when `NOTIFY_SOCKET`
    /// is unset (not started by systemd as `Type=notify`). The watchdog
    /// interval is half of `WATCHDOG_USEC`, when that is set and
    /// `WATCHDOG_PID` (if set) is this process.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let for_us = std::env::var("WATCHDOG_PID")
            .map_or(true, |pid| pid.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us)
            .map(|usec| Duration::from_micros(usec) / 2);
        Notifier::new(path.as_encoded_bytes(), watchdog).map(Some)
    }

    /// A notifier for the socket at `path` (`@name`: abstract namespace).
    fn new(path: &[u8], watchdog: Option<Duration>) -> io::Result<Notifier> {
        let addr = match path.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => {
                use std::os::unix::ffi::OsStrExt;
                SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path))?
            }
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            addr,
            watchdog,
        })
    }

    /// How often to send `WATCHDOG=1`, when the unit has `WatchdogSec=`.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (lines of `KEY=VALUE`); a failure is logged, not
    /// fatal: the service works without its manager's view of it.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::warn!("NOTIFY_SOCKET: sending {state:?}: {e}");
        }
    }

    /// `RELOADING=1` with the `CLOCK_MONOTONIC` time systemd 253 and later
    /// want beside it; `READY=1` ends the reload.
    pub fn reloading(&self) {
        let usec = mptcp_core::sys::process::monotonic_micros();
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("mptcp-notify-test-{}", std::process::id());
        let receiver =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::new(format!("@{name}").as_bytes(), None).unwrap();
        notifier.notify("READY=1");
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        notifier.reloading();
        let n = receiver.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");
    }
}
