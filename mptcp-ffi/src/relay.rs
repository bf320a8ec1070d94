//! The relay engine: start from a TOML configuration, read its listeners
//! and counters, stop it with a drain.

use std::ffi::{c_char, c_int};
use std::net::SocketAddr;
use std::time::Duration;

use mptcp_core::relay::{Config, ErrorKind, ListenerKind, Relay, RelayHandle, Stats, UdpDrop};

use crate::addr::{self, MPTCP_ADDR_TEXT_LEN};
use crate::args::{arg_ref, arg_str, open_handle, take_handle};
use crate::error::{Error, Result, call};
use crate::out::{NameTable, Plain, Versioned, write_array, write_versioned};

/// A running relay. Opaque; create with `mptcp_relay_start` or
/// `mptcp_relay_start_file`, stop and free with `mptcp_relay_stop`. Its
/// worker threads run on their own; the handle may be used from any thread,
/// but `mptcp_relay_stop` must not race with other calls on it.
pub struct mptcp_relay_t {
    inner: RelayHandle,
}

fn start(config: Config) -> Result<mptcp_relay_t> {
    Ok(mptcp_relay_t {
        inner: Relay::start(config)?,
    })
}

/// Starts a relay from TOML text (the format of `examples/relay.toml`:
/// `[engine]`, `[local]`, `[remote]`) and stores its handle in `*out`.
/// Returns 0, `-EINVAL` for a configuration error (the message names the
/// line and key), or the errno of a listener that could not be opened
/// (e.g. `-EADDRINUSE`).
///
/// # Safety
/// `toml` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_relay_start(
    toml: *const c_char,
    out: *mut *mut mptcp_relay_t,
) -> c_int {
    call("mptcp_relay_start", || {
        // SAFETY: guaranteed by the caller.
        let toml = unsafe { arg_str(toml, "toml") }?;
        // SAFETY: guaranteed by the caller.
        unsafe { open_handle(out, || start(Config::from_toml(toml)?)) }
    })
}

/// Like `mptcp_relay_start`, with the TOML read from the file at `path`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_relay_start_file(
    path: *const c_char,
    out: *mut *mut mptcp_relay_t,
) -> c_int {
    call("mptcp_relay_start_file", || {
        // SAFETY: guaranteed by the caller.
        let path = unsafe { arg_str(path, "path") }?;
        // SAFETY: guaranteed by the caller.
        unsafe { open_handle(out, || start(Config::from_file(path)?)) }
    })
}

/// Relay listener kind: connections redirected by `REDIRECT` (local role).
pub const MPTCP_RELAY_REDIRECT: u32 = 1;
/// Relay listener kind: connections diverted by `TPROXY` (local role).
pub const MPTCP_RELAY_TPROXY: u32 = 2;
/// Relay listener kind: SOCKS5 clients on the LAN (local role).
pub const MPTCP_RELAY_LOCAL_SOCKS5: u32 = 3;
/// Relay listener kind: HTTP proxy clients on the LAN (local role).
pub const MPTCP_RELAY_HTTP: u32 = 4;
/// Relay listener kind: SOCKS5 clients of the remote role.
pub const MPTCP_RELAY_REMOTE_SOCKS5: u32 = 5;
/// Relay listener kind: the DNS forwarder's TCP side (local role).
pub const MPTCP_RELAY_DNS_FORWARDER: u32 = 6;

fn listener_kind_number(kind: ListenerKind) -> u32 {
    match kind {
        ListenerKind::Redirect => MPTCP_RELAY_REDIRECT,
        ListenerKind::Tproxy => MPTCP_RELAY_TPROXY,
        ListenerKind::LocalSocks5 => MPTCP_RELAY_LOCAL_SOCKS5,
        ListenerKind::Http => MPTCP_RELAY_HTTP,
        ListenerKind::RemoteSocks5 => MPTCP_RELAY_REMOTE_SOCKS5,
        ListenerKind::DnsForwarder => MPTCP_RELAY_DNS_FORWARDER,
    }
}

/// One listening socket of a relay, as listed by `mptcp_relay_listeners`
/// (which takes the caller's `sizeof(mptcp_relay_listener_t)`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct mptcp_relay_listener_t {
    /// `MPTCP_RELAY_*` listener kind.
    pub kind: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// The bound address, with the actual port when port 0 was configured.
    pub addr: libc::sockaddr_storage,
    /// `addr` as text (`"127.0.0.1:1080"`).
    pub addr_text: [c_char; MPTCP_ADDR_TEXT_LEN],
}

// SAFETY: repr(C); integers, integer arrays and sockaddr_storage only.
unsafe impl Plain for mptcp_relay_listener_t {}

impl From<&(ListenerKind, SocketAddr)> for mptcp_relay_listener_t {
    fn from((kind, bound): &(ListenerKind, SocketAddr)) -> Self {
        let mut out = mptcp_relay_listener_t::zeroed();
        out.kind = listener_kind_number(*kind);
        addr::fill(&mut out.addr, &mut out.addr_text, *bound);
        out
    }
}

/// Lists the relay's listening sockets into `listeners[0 .. *count]`;
/// `elem_size`, `*count` and the return value work as for
/// `mptcp_get_subflows`.
///
/// # Safety
/// `relay` is NULL or a live handle; `count` is NULL or valid; `listeners`
/// is NULL or writable for `*count * elem_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_relay_listeners(
    relay: *const mptcp_relay_t,
    listeners: *mut mptcp_relay_listener_t,
    elem_size: usize,
    count: *mut usize,
) -> c_int {
    call("mptcp_relay_listeners", || {
        // SAFETY: guaranteed by the caller.
        let relay = unsafe { arg_ref(relay, "relay") }?;
        let listed = relay.inner.listeners();
        // SAFETY: guaranteed by the caller.
        unsafe { write_array(listeners, elem_size, count, listed, "listeners") }
    })
}

/// Slots of `mptcp_relay_stats_t.errors`; `error_kinds` of them are used.
pub const MPTCP_RELAY_ERROR_SLOTS: usize = 32;

/// Slots of `mptcp_relay_stats_t.udp_drops`; `udp_drop_kinds` of them are
/// used.
pub const MPTCP_RELAY_UDP_DROP_SLOTS: usize = 16;

/// A snapshot of a relay's counters. Size-versioned like `mptcp_info_t`:
/// set `struct_size = sizeof(mptcp_relay_stats_t)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mptcp_relay_stats_t {
    /// In: `sizeof(mptcp_relay_stats_t)` as the caller knows it. Out: bytes
    /// written.
    pub struct_size: usize,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections that reached the data phase since start.
    pub relayed: u64,
    /// Bytes from clients towards destinations.
    pub bytes_up: u64,
    /// Bytes from destinations towards clients.
    pub bytes_down: u64,
    /// Times splice() was refused and a buffered copy took over.
    pub splice_fallbacks: u64,
    /// How many entries of `errors` this library fills.
    pub error_kinds: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// Failed connections by kind; `mptcp_relay_error_name(i)` names entry
    /// `i`.
    pub errors: [u64; MPTCP_RELAY_ERROR_SLOTS],
    /// Multiplexed sessions with the other relay open now.
    pub sessions: u64,
    /// Connections carried as streams of a session since start.
    pub multiplexed: u64,
    /// Sessions closed since start because the other relay broke the
    /// multiplexing protocol.
    pub session_errors: u64,
    /// Worker panics caught since start (each closed that worker's
    /// connections; the relay went on).
    pub worker_panics: u64,
    /// Local role: connections sent directly to their destination because
    /// no remote relay worked.
    pub direct: u64,
    /// SOCKS5 UDP associations open now.
    pub udp_associations: u64,
    /// SOCKS5 UDP associations opened since start.
    pub udp_associations_opened: u64,
    /// Datagrams from clients sent on to destinations.
    pub udp_datagrams_up: u64,
    /// Datagrams from destinations sent on to clients.
    pub udp_datagrams_down: u64,
    /// Payload bytes of `udp_datagrams_up`.
    pub udp_bytes_up: u64,
    /// Payload bytes of `udp_datagrams_down`.
    pub udp_bytes_down: u64,
    /// How many entries of `udp_drops` this library fills.
    pub udp_drop_kinds: u32,
    /// Reserved, 0.
    pub reserved_udp: u32,
    /// Datagrams dropped by reason; `mptcp_relay_udp_drop_name(i)` names
    /// entry `i`.
    pub udp_drops: [u64; MPTCP_RELAY_UDP_DROP_SLOTS],
}

// SAFETY: repr(C), integers and an integer array only.
unsafe impl Plain for mptcp_relay_stats_t {}
// SAFETY: Plain, and the first field is `struct_size: usize`.
unsafe impl Versioned for mptcp_relay_stats_t {}

impl From<&Stats> for mptcp_relay_stats_t {
    fn from(stats: &Stats) -> Self {
        let mut out = mptcp_relay_stats_t::zeroed();
        out.accepted = stats.accepted;
        out.active = stats.active;
        out.relayed = stats.relayed;
        out.bytes_up = stats.bytes_up;
        out.bytes_down = stats.bytes_down;
        out.splice_fallbacks = stats.splice_fallbacks;
        out.sessions = stats.sessions;
        out.multiplexed = stats.multiplexed;
        out.session_errors = stats.session_errors;
        out.worker_panics = stats.worker_panics;
        out.direct = stats.direct;
        for (slot, count) in out.errors.iter_mut().zip(stats.errors) {
            *slot = count;
            out.error_kinds += 1;
        }
        let udp = &stats.udp;
        out.udp_associations = udp.associations;
        out.udp_associations_opened = udp.associations_opened;
        out.udp_datagrams_up = udp.datagrams_up;
        out.udp_datagrams_down = udp.datagrams_down;
        out.udp_bytes_up = udp.bytes_up;
        out.udp_bytes_down = udp.bytes_down;
        for (slot, count) in out.udp_drops.iter_mut().zip(udp.drops) {
            *slot = count;
            out.udp_drop_kinds += 1;
        }
        out
    }
}

/// Reads a snapshot of the relay's live counters into `*stats`. Returns 0
/// or a negative errno.
///
/// # Safety
/// `relay` is NULL or a live handle; `stats` is NULL or writable for
/// `stats->struct_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_relay_stats(
    relay: *const mptcp_relay_t,
    stats: *mut mptcp_relay_stats_t,
) -> c_int {
    call("mptcp_relay_stats", || {
        // SAFETY: guaranteed by the caller.
        let relay = unsafe { arg_ref(relay, "relay") }?;
        let value = mptcp_relay_stats_t::from(&relay.inner.stats());
        // SAFETY: guaranteed by the caller.
        unsafe { write_versioned(stats, &value, "stats") }?;
        Ok(0)
    })
}

static ERROR_NAMES: NameTable = NameTable::new();

/// The name of entry `index` of `mptcp_relay_stats_t.errors`
/// (`"connect"`, `"auth"`, ...); NULL past `error_kinds`. The string is
/// static: never free it.
#[unsafe(no_mangle)]
pub extern "C" fn mptcp_relay_error_name(index: u32) -> *const c_char {
    let names = || ErrorKind::ALL.iter().map(|k| k.name().to_owned()).collect();
    ERROR_NAMES.name("mptcp_relay_error_name", names, || Some(index as usize))
}

static UDP_DROP_NAMES: NameTable = NameTable::new();

/// The name of entry `index` of `mptcp_relay_stats_t.udp_drops`
/// (`"malformed"`, `"fragment"`, ...); NULL past `udp_drop_kinds`. The
/// string is static: never free it.
#[unsafe(no_mangle)]
pub extern "C" fn mptcp_relay_udp_drop_name(index: u32) -> *const c_char {
    let names = || UdpDrop::ALL.iter().map(|k| k.name().to_owned()).collect();
    UDP_DROP_NAMES.name("mptcp_relay_udp_drop_name", names, || Some(index as usize))
}

/// Stops the relay: stops accepting, lets open connections finish for up
/// to `drain_timeout_ms` milliseconds, closes the rest, joins the worker
/// threads, and frees the handle. When `final_stats` is not NULL the final
/// counters are written there (set its `struct_size`). NULL `relay` is
/// refused with `-EINVAL`; the handle is freed even when writing the stats
/// fails. Returns 0 or a negative errno.
///
/// # Safety
/// `relay` is NULL or a handle from `mptcp_relay_start*` not stopped
/// before, and no other call uses it concurrently; it is invalid after this
/// call. `final_stats` is NULL or writable for `final_stats->struct_size`
/// bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_relay_stop(
    relay: *mut mptcp_relay_t,
    drain_timeout_ms: u32,
    final_stats: *mut mptcp_relay_stats_t,
) -> c_int {
    call("mptcp_relay_stop", || {
        // SAFETY: guaranteed by the caller (mptcp_relay_start* made it).
        let relay =
            unsafe { take_handle(relay) }.ok_or_else(|| Error::invalid("`relay` is NULL"))?;
        let stats = relay
            .inner
            .shutdown(Duration::from_millis(drain_timeout_ms.into()));
        if !final_stats.is_null() {
            // SAFETY: guaranteed by the caller.
            unsafe {
                write_versioned(
                    final_stats,
                    &mptcp_relay_stats_t::from(&stats),
                    "final_stats",
                )
            }?;
        }
        Ok(0)
    })
}
