//! The kernel path manager: endpoints, limits, the userspace path-manager
//! commands, and path-manager events to poll.

use std::ffi::{c_char, c_int};
use std::os::fd::AsRawFd;
use std::time::Duration;

use mptcp_core::pm::{
    Endpoint, EndpointFlags, Event, EventKind, EventListener, Limits, PathManager,
};

use crate::addr::{self, MPTCP_ADDR_TEXT_LEN};
use crate::args::{arg_mut, arg_ref, arg_str, open_handle, take_handle};
use crate::error::{Error, Result, call};
use crate::out::{NameTable, Plain, Versioned, fill_text, write_array, write_str, write_versioned};

/// Endpoint flag: announce this address to the peer (`ADD_ADDR`); servers.
pub const MPTCP_ENDPOINT_SIGNAL: u32 = EndpointFlags::SIGNAL.bits();
/// Endpoint flag: open a subflow from this address; clients.
pub const MPTCP_ENDPOINT_SUBFLOW: u32 = EndpointFlags::SUBFLOW.bits();
/// Endpoint flag: subflows on this address are backups.
pub const MPTCP_ENDPOINT_BACKUP: u32 = EndpointFlags::BACKUP.bits();
/// Endpoint flag: open a subflow from this address to every peer address.
pub const MPTCP_ENDPOINT_FULLMESH: u32 = EndpointFlags::FULLMESH.bits();
/// Endpoint flag, set by the kernel only: learnt from a connection.
pub const MPTCP_ENDPOINT_IMPLICIT: u32 = EndpointFlags::IMPLICIT.bits();
/// Endpoint flag: use this address towards addresses the peer announces
/// (Linux 6.18+).
pub const MPTCP_ENDPOINT_LAMINAR: u32 = EndpointFlags::LAMINAR.bits();

/// A connection to the kernel path manager of the network namespace of the
/// thread that opened it. Opaque; create with `mptcp_pm_open`, free with
/// `mptcp_pm_close`. Not thread-safe: use it from one thread at a time.
pub struct mptcp_pm_t {
    inner: PathManager,
}

/// Runs `f` on the path manager behind `pm`.
///
/// # Safety
/// `pm` is NULL or a live handle from `mptcp_pm_open` not used by another
/// thread meanwhile.
unsafe fn with_pm<T>(
    pm: *mut mptcp_pm_t,
    f: impl FnOnce(&mut PathManager) -> Result<T>,
) -> Result<T> {
    // SAFETY: guaranteed by the caller.
    let pm = unsafe { arg_mut(pm, "pm") }?;
    f(&mut pm.inner)
}

/// Opens a generic-netlink connection to the path manager of the calling
/// thread's network namespace and stores the handle in `*out`. Reading
/// endpoints and limits needs no privilege; changes need CAP_NET_ADMIN.
/// Returns 0 or a negative errno (`-ENOENT`: the kernel has no MPTCP path
/// manager).
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_open(out: *mut *mut mptcp_pm_t) -> c_int {
    call("mptcp_pm_open", || {
        let open = || {
            Ok(mptcp_pm_t {
                inner: PathManager::open()?,
            })
        };
        // SAFETY: the caller guarantees `out` is NULL or writable.
        unsafe { open_handle(out, open) }
    })
}

/// Closes a path-manager handle and frees it. NULL is accepted and ignored.
///
/// # Safety
/// `pm` is NULL or a handle from `mptcp_pm_open` not closed before; it is
/// invalid after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_close(pm: *mut mptcp_pm_t) {
    call("mptcp_pm_close", || {
        // SAFETY: guaranteed by the caller (mptcp_pm_open made it).
        drop(unsafe { take_handle(pm) });
        Ok(0)
    });
}

/// A path-manager endpoint, as listed by `mptcp_pm_endpoints` (which takes
/// the caller's `sizeof(mptcp_endpoint_t)` so that later versions can
/// append fields).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct mptcp_endpoint_t {
    /// `MPTCP_ENDPOINT_*` flags.
    pub flags: u32,
    /// Interface index the subflows are bound to; 0 for none.
    pub ifindex: u32,
    /// Endpoint id (1..255).
    pub id: u8,
    /// Reserved, 0.
    pub reserved: u8,
    /// Port announced and listened on (signal endpoints); 0 for none.
    pub port: u16,
    /// Reserved, 0.
    pub reserved2: u32,
    /// The address (`sockaddr_in` or `sockaddr_in6`, with `port`).
    pub addr: libc::sockaddr_storage,
    /// The IP address as text, without the port (`"198.18.1.1"`).
    pub addr_text: [c_char; MPTCP_ADDR_TEXT_LEN],
    /// Interface name for `ifindex` (`"eth1"`), empty when none or unknown.
    pub ifname: [c_char; 16],
}

// SAFETY: repr(C); integers, integer arrays and sockaddr_storage only.
unsafe impl Plain for mptcp_endpoint_t {}

impl From<&Endpoint> for mptcp_endpoint_t {
    fn from(endpoint: &Endpoint) -> Self {
        let mut out = mptcp_endpoint_t::zeroed();
        out.flags = endpoint.flags.bits();
        out.id = endpoint.id;
        out.port = endpoint.port.unwrap_or(0);
        out.addr = addr::to_storage((endpoint.addr, out.port).into());
        fill_text(&mut out.addr_text, &endpoint.addr.to_string());
        if let Some(ifindex) = endpoint.ifindex {
            out.ifindex = ifindex;
            let mut name = [0 as c_char; libc::IF_NAMESIZE];
            // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname may
            // write; on failure it returns NULL and the name stays empty.
            if !unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
                out.ifname = name;
            }
        }
        out
    }
}

/// Lists the endpoints (`ip mptcp endpoint show`) into
/// `endpoints[0 .. *count]`; `elem_size`, `*count` and the return value
/// work as for `mptcp_get_subflows`.
///
/// # Safety
/// `pm` is NULL or a live handle; `count` is NULL or valid; `endpoints` is
/// NULL or writable for `*count * elem_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_endpoints(
    pm: *mut mptcp_pm_t,
    endpoints: *mut mptcp_endpoint_t,
    elem_size: usize,
    count: *mut usize,
) -> c_int {
    call("mptcp_pm_endpoints", || {
        // SAFETY: guaranteed by the caller.
        let listed = unsafe { with_pm(pm, |pm| Ok(pm.endpoints()?)) }?;
        // SAFETY: guaranteed by the caller.
        unsafe { write_array(endpoints, elem_size, count, &listed, "endpoints") }
    })
}

/// Adds an endpoint (`ip mptcp endpoint add ADDR [port PORT] [id ID]
/// [dev IFINDEX] FLAGS`). `address` is an IP address (`"198.18.1.1"`);
/// `id` 0 lets the kernel choose; `port` 0 for none (a port needs
/// `MPTCP_ENDPOINT_SIGNAL`); `ifindex` 0 for none. Needs CAP_NET_ADMIN.
/// Returns 0 or a negative errno (`-EINVAL` for flag combinations iproute2
/// refuses, `-ERANGE` past 8 endpoints or for a duplicate).
///
/// # Safety
/// `pm` is NULL or a live handle; `address` is NULL or a NUL-terminated
/// string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_add_endpoint(
    pm: *mut mptcp_pm_t,
    address: *const c_char,
    flags: u32,
    id: u8,
    port: u16,
    ifindex: u32,
) -> c_int {
    call("mptcp_pm_add_endpoint", || {
        // SAFETY: guaranteed by the caller.
        let address = unsafe { arg_str(address, "address") }?;
        let mut endpoint = Endpoint::new(
            addr::parse_ip(address, "address")?,
            EndpointFlags::from_bits(flags),
        );
        endpoint.id = id;
        endpoint.port = (port != 0).then_some(port);
        endpoint.ifindex = (ifindex != 0).then_some(ifindex);
        // SAFETY: guaranteed by the caller.
        unsafe { with_pm(pm, |pm| Ok(pm.add_endpoint(&endpoint)?)) }?;
        Ok(0)
    })
}

/// Removes the endpoint with `id` (`ip mptcp endpoint delete id ID`).
/// Needs CAP_NET_ADMIN. Returns 0 or a negative errno.
///
/// # Safety
/// `pm` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_remove_endpoint(pm: *mut mptcp_pm_t, id: u8) -> c_int {
    call("mptcp_pm_remove_endpoint", || {
        // SAFETY: guaranteed by the caller.
        unsafe { with_pm(pm, |pm| Ok(pm.remove_endpoint(id)?)) }?;
        Ok(0)
    })
}

/// Removes the endpoint on `address`; when none has it, stops using it as
/// the id-0 address (`ip mptcp endpoint delete id 0 ADDR`). Needs
/// CAP_NET_ADMIN. Returns 0 or a negative errno.
///
/// # Safety
/// `pm` is NULL or a live handle; `address` is NULL or a NUL-terminated
/// string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_remove_endpoint_addr(
    pm: *mut mptcp_pm_t,
    address: *const c_char,
) -> c_int {
    call("mptcp_pm_remove_endpoint_addr", || {
        // SAFETY: guaranteed by the caller.
        let address = unsafe { arg_str(address, "address") }?;
        let ip = addr::parse_ip(address, "address")?;
        // SAFETY: guaranteed by the caller.
        unsafe { with_pm(pm, |pm| Ok(pm.remove_endpoint_by_addr(ip)?)) }?;
        Ok(0)
    })
}

/// Removes every endpoint (`ip mptcp endpoint flush`; the kernel also
/// resets `add_addr_accepted`). Needs CAP_NET_ADMIN.
///
/// # Safety
/// `pm` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_flush(pm: *mut mptcp_pm_t) -> c_int {
    call("mptcp_pm_flush", || {
        // SAFETY: guaranteed by the caller.
        unsafe { with_pm(pm, |pm| Ok(pm.flush()?)) }?;
        Ok(0)
    })
}

/// Sets the backup and fullmesh flags of endpoint `id` to exactly those in
/// `flags` (`ip mptcp endpoint change id ID [no]backup [no]fullmesh`).
/// Other flags are refused with `-EINVAL`. Needs CAP_NET_ADMIN.
///
/// # Safety
/// `pm` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_set_endpoint_flags(
    pm: *mut mptcp_pm_t,
    id: u8,
    flags: u32,
) -> c_int {
    call("mptcp_pm_set_endpoint_flags", || {
        let flags = EndpointFlags::from_bits(flags);
        // SAFETY: guaranteed by the caller.
        unsafe { with_pm(pm, |pm| Ok(pm.set_flags(id, flags)?)) }?;
        Ok(0)
    })
}

/// Writes the names of `flags` separated by spaces (`"subflow backup"`)
/// into `buf` like `snprintf`: returns the full length; a return `>= len`
/// means truncated.
///
/// # Safety
/// `buf` is NULL (with `len` 0) or writable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_endpoint_flags_format(
    flags: u32,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    call("mptcp_endpoint_flags_format", || {
        let text = EndpointFlags::from_bits(flags).to_string();
        // SAFETY: guaranteed by the caller.
        unsafe { write_str(buf, len, text.as_bytes()) }
    })
}

/// Parses flag names separated by spaces or commas (`"subflow,backup"`)
/// into `*flags`. Returns 0, or `-EINVAL` naming the unknown word.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string; `flags` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_endpoint_flags_parse(text: *const c_char, flags: *mut u32) -> c_int {
    call("mptcp_endpoint_flags_parse", || {
        // SAFETY: guaranteed by the caller.
        let text = unsafe { arg_str(text, "text") }?;
        // SAFETY: guaranteed by the caller.
        let flags = unsafe { arg_mut(flags, "flags") }?;
        *flags = text.parse::<EndpointFlags>()?.bits();
        Ok(0)
    })
}

/// The in-kernel path manager's limits (`ip mptcp limits`). Size-versioned
/// like `mptcp_info_t`: set `struct_size = sizeof(mptcp_limits_t)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mptcp_limits_t {
    /// In: `sizeof(mptcp_limits_t)` as the caller knows it. Out: bytes written.
    pub struct_size: usize,
    /// Most extra subflows per connection (0..8).
    pub subflows: u32,
    /// Most peer announcements accepted per connection (0..8).
    pub add_addr_accepted: u32,
}

// SAFETY: repr(C), integers only.
unsafe impl Plain for mptcp_limits_t {}
// SAFETY: Plain, and the first field is `struct_size: usize`.
unsafe impl Versioned for mptcp_limits_t {}

/// Reads the limits into `*limits` (`ip mptcp limits show`). Returns 0 or a
/// negative errno.
///
/// # Safety
/// `pm` is NULL or a live handle; `limits` is NULL or writable for
/// `limits->struct_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_get_limits(
    pm: *mut mptcp_pm_t,
    limits: *mut mptcp_limits_t,
) -> c_int {
    call("mptcp_pm_get_limits", || {
        // SAFETY: guaranteed by the caller.
        let read = unsafe { with_pm(pm, |pm| Ok(pm.limits()?)) }?;
        let mut value = mptcp_limits_t::zeroed();
        value.subflows = read.subflows;
        value.add_addr_accepted = read.add_addr_accepted;
        // SAFETY: guaranteed by the caller.
        unsafe { write_versioned(limits, &value, "limits") }?;
        Ok(0)
    })
}

/// Sets the limits (`ip mptcp limits set subflows N add_addr_accepted M`);
/// the kernel refuses values above 8. Needs CAP_NET_ADMIN.
///
/// # Safety
/// `pm` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_set_limits(
    pm: *mut mptcp_pm_t,
    subflows: u32,
    add_addr_accepted: u32,
) -> c_int {
    call("mptcp_pm_set_limits", || {
        let limits = Limits {
            subflows,
            add_addr_accepted,
        };
        // SAFETY: guaranteed by the caller.
        unsafe { with_pm(pm, |pm| Ok(pm.set_limits(limits)?)) }?;
        Ok(0)
    })
}

/// Userspace path manager (`net.mptcp.pm_type=1`): announces `address`
/// (IP, with id `id` > 0 and `port`, 0 for none) to the peer of connection
/// `token`. Needs CAP_NET_ADMIN.
///
/// # Safety
/// `pm` is NULL or a live handle; `address` is NULL or a NUL-terminated
/// string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_announce(
    pm: *mut mptcp_pm_t,
    token: u32,
    id: u8,
    address: *const c_char,
    port: u16,
) -> c_int {
    call("mptcp_pm_announce", || {
        // SAFETY: guaranteed by the caller.
        let address = unsafe { arg_str(address, "address") }?;
        let ip = addr::parse_ip(address, "address")?;
        let port = (port != 0).then_some(port);
        // SAFETY: guaranteed by the caller.
        unsafe { with_pm(pm, |pm| Ok(pm.announce(token, id, ip, port)?)) }?;
        Ok(0)
    })
}

/// Userspace path manager: withdraws address id `id` from connection
/// `token` (`REMOVE_ADDR`). Needs CAP_NET_ADMIN.
///
/// # Safety
/// `pm` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_remove_address(pm: *mut mptcp_pm_t, token: u32, id: u8) -> c_int {
    call("mptcp_pm_remove_address", || {
        // SAFETY: guaranteed by the caller.
        unsafe { with_pm(pm, |pm| Ok(pm.remove(token, id)?)) }?;
        Ok(0)
    })
}

/// Userspace path manager: opens a subflow of connection `token` from
/// local IP `local` (address id `local_id`, 0 to let the kernel choose) to
/// `remote` (`"ip:port"`). Needs CAP_NET_ADMIN.
///
/// # Safety
/// `pm` is NULL or a live handle; `local` and `remote` are NULL or
/// NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_create_subflow(
    pm: *mut mptcp_pm_t,
    token: u32,
    local_id: u8,
    local: *const c_char,
    remote: *const c_char,
) -> c_int {
    call("mptcp_pm_create_subflow", || {
        // SAFETY: guaranteed by the caller.
        let (local, remote) = unsafe { (arg_str(local, "local")?, arg_str(remote, "remote")?) };
        let local = addr::parse_ip(local, "local")?;
        let remote = addr::parse_socket_addr(remote, "remote")?;
        // SAFETY: guaranteed by the caller.
        unsafe {
            with_pm(pm, |pm| {
                Ok(pm.create_subflow(token, local_id, local, remote)?)
            })
        }?;
        Ok(0)
    })
}

/// Parses the `"ip:port"` pair naming a subflow.
///
/// # Safety
/// Both pointers are NULL or NUL-terminated strings.
unsafe fn subflow_addrs(
    local: *const c_char,
    remote: *const c_char,
) -> Result<(std::net::SocketAddr, std::net::SocketAddr)> {
    // SAFETY: guaranteed by the caller.
    let (local, remote) = unsafe { (arg_str(local, "local")?, arg_str(remote, "remote")?) };
    Ok((
        addr::parse_socket_addr(local, "local")?,
        addr::parse_socket_addr(remote, "remote")?,
    ))
}

/// Userspace path manager: closes the subflow `local` -> `remote` (both
/// `"ip:port"`) of connection `token`. Needs CAP_NET_ADMIN.
///
/// # Safety
/// `pm` is NULL or a live handle; `local` and `remote` are NULL or
/// NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_destroy_subflow(
    pm: *mut mptcp_pm_t,
    token: u32,
    local: *const c_char,
    remote: *const c_char,
) -> c_int {
    call("mptcp_pm_destroy_subflow", || {
        // SAFETY: guaranteed by the caller.
        let (local, remote) = unsafe { subflow_addrs(local, remote) }?;
        // SAFETY: guaranteed by the caller.
        unsafe { with_pm(pm, |pm| Ok(pm.destroy_subflow(token, local, remote)?)) }?;
        Ok(0)
    })
}

/// Userspace path manager: marks the subflow `local` -> `remote` (both
/// `"ip:port"`) of connection `token` as backup (`backup` != 0) or not
/// (`MP_PRIO`). Needs CAP_NET_ADMIN.
///
/// # Safety
/// `pm` is NULL or a live handle; `local` and `remote` are NULL or
/// NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_set_backup(
    pm: *mut mptcp_pm_t,
    token: u32,
    local: *const c_char,
    remote: *const c_char,
    backup: c_int,
) -> c_int {
    call("mptcp_pm_set_backup", || {
        // SAFETY: guaranteed by the caller.
        let (local, remote) = unsafe { subflow_addrs(local, remote) }?;
        // SAFETY: guaranteed by the caller.
        unsafe {
            with_pm(pm, |pm| {
                Ok(pm.set_backup(token, local, remote, backup != 0)?)
            })
        }?;
        Ok(0)
    })
}

/// Event kind: a connection was created (not yet established).
pub const MPTCP_EVENT_KIND_CREATED: u32 = 1;
/// Event kind: the connection is established.
pub const MPTCP_EVENT_KIND_ESTABLISHED: u32 = 2;
/// Event kind: the connection is closed.
pub const MPTCP_EVENT_KIND_CLOSED: u32 = 3;
/// Event kind: the peer announced an address (in `remote`).
pub const MPTCP_EVENT_KIND_ANNOUNCED: u32 = 6;
/// Event kind: the peer withdrew an address.
pub const MPTCP_EVENT_KIND_REMOVED: u32 = 7;
/// Event kind: a new subflow is established.
pub const MPTCP_EVENT_KIND_SUBFLOW_ESTABLISHED: u32 = 10;
/// Event kind: a subflow is closed.
pub const MPTCP_EVENT_KIND_SUBFLOW_CLOSED: u32 = 11;
/// Event kind: a subflow's backup priority changed.
pub const MPTCP_EVENT_KIND_SUBFLOW_PRIORITY: u32 = 13;
/// Event kind: an MPTCP listener was created (address in `local`).
pub const MPTCP_EVENT_KIND_LISTENER_CREATED: u32 = 15;
/// Event kind: an MPTCP listener was closed.
pub const MPTCP_EVENT_KIND_LISTENER_CLOSED: u32 = 16;

/// The kinds this library names, with their kernel numbers.
const EVENT_KINDS: [(EventKind, u32); 10] = [
    (EventKind::Created, MPTCP_EVENT_KIND_CREATED),
    (EventKind::Established, MPTCP_EVENT_KIND_ESTABLISHED),
    (EventKind::Closed, MPTCP_EVENT_KIND_CLOSED),
    (EventKind::Announced, MPTCP_EVENT_KIND_ANNOUNCED),
    (EventKind::Removed, MPTCP_EVENT_KIND_REMOVED),
    (
        EventKind::SubflowEstablished,
        MPTCP_EVENT_KIND_SUBFLOW_ESTABLISHED,
    ),
    (EventKind::SubflowClosed, MPTCP_EVENT_KIND_SUBFLOW_CLOSED),
    (
        EventKind::SubflowPriority,
        MPTCP_EVENT_KIND_SUBFLOW_PRIORITY,
    ),
    (
        EventKind::ListenerCreated,
        MPTCP_EVENT_KIND_LISTENER_CREATED,
    ),
    (EventKind::ListenerClosed, MPTCP_EVENT_KIND_LISTENER_CLOSED),
];

fn event_kind_number(kind: EventKind) -> u32 {
    match kind {
        EventKind::Unknown(raw) => raw.into(),
        known => EVENT_KINDS
            .iter()
            .find(|(k, _)| *k == known)
            .map_or(0, |(_, number)| *number),
    }
}

static EVENT_KIND_NAMES: NameTable = NameTable::new();

/// The name `ip mptcp monitor` prints for an event kind (`"CREATED"`,
/// `"SF_ESTABLISHED"`, ...); NULL for a kind this library does not know.
/// The string is static: never free it.
#[unsafe(no_mangle)]
pub extern "C" fn mptcp_event_kind_name(kind: u32) -> *const c_char {
    let names = || {
        EVENT_KINDS
            .iter()
            .map(|(k, _)| k.name().to_owned())
            .collect()
    };
    let index = || EVENT_KINDS.iter().position(|(_, number)| *number == kind);
    EVENT_KIND_NAMES.name("mptcp_event_kind_name", names, index)
}

/// `mptcp_event_t.present`: `token` is set (not on listener events).
pub const MPTCP_EVENT_HAS_TOKEN: u32 = 1 << 0;
/// `mptcp_event_t.present`: `local_id` is set.
pub const MPTCP_EVENT_HAS_LOCAL_ID: u32 = 1 << 1;
/// `mptcp_event_t.present`: `remote_id` is set.
pub const MPTCP_EVENT_HAS_REMOTE_ID: u32 = 1 << 2;
/// `mptcp_event_t.present`: `local` and `local_text` are set.
pub const MPTCP_EVENT_HAS_LOCAL: u32 = 1 << 3;
/// `mptcp_event_t.present`: `remote` and `remote_text` are set.
pub const MPTCP_EVENT_HAS_REMOTE: u32 = 1 << 4;
/// `mptcp_event_t.present`: `backup` is set.
pub const MPTCP_EVENT_HAS_BACKUP: u32 = 1 << 5;
/// `mptcp_event_t.present`: `error` is set.
pub const MPTCP_EVENT_HAS_ERROR: u32 = 1 << 6;
/// `mptcp_event_t.present`: `timeout` is set.
pub const MPTCP_EVENT_HAS_TIMEOUT: u32 = 1 << 7;
/// `mptcp_event_t.present`: `ifindex` is set.
pub const MPTCP_EVENT_HAS_IFINDEX: u32 = 1 << 8;
/// `mptcp_event_t.present`: `reset_reason` and `reset_flags` are set.
pub const MPTCP_EVENT_HAS_RESET: u32 = 1 << 9;

/// Bytes of `mptcp_event_t.text`.
pub const MPTCP_EVENT_TEXT_LEN: usize = 256;

/// One path-manager event. Size-versioned like `mptcp_info_t`: set
/// `struct_size = sizeof(mptcp_event_t)` before `mptcp_pm_events_next`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct mptcp_event_t {
    /// In: `sizeof(mptcp_event_t)` as the caller knows it. Out: bytes written.
    pub struct_size: usize,
    /// `MPTCP_EVENT_KIND_*` (the kernel's number, also for kinds newer
    /// than this library).
    pub kind: u32,
    /// `MPTCP_EVENT_HAS_*` bits: which fields are set.
    pub present: u32,
    /// The connection token (`MPTCP_EVENT_HAS_TOKEN`).
    pub token: u32,
    /// Local address id.
    pub local_id: u8,
    /// Remote address id.
    pub remote_id: u8,
    /// 1 when the subflow is a backup.
    pub backup: u8,
    /// The subflow's socket error.
    pub error: u8,
    /// The kernel's event flags (bit 0 deny-join-id0, bit 1 server side).
    pub flags: u16,
    /// 1 when this host accepted the connection.
    pub server_side: u8,
    /// Reserved, 0.
    pub reserved: u8,
    /// Announcement timeout.
    pub timeout: u32,
    /// Interface index of the subflow.
    pub ifindex: i32,
    /// Why the subflow was reset (`MPTCP_RST_*`).
    pub reset_reason: u32,
    /// Flags of the reset.
    pub reset_flags: u32,
    /// Local address and port (`MPTCP_EVENT_HAS_LOCAL`).
    pub local: libc::sockaddr_storage,
    /// Remote address and port (`MPTCP_EVENT_HAS_REMOTE`).
    pub remote: libc::sockaddr_storage,
    /// `local` as text.
    pub local_text: [c_char; MPTCP_ADDR_TEXT_LEN],
    /// `remote` as text.
    pub remote_text: [c_char; MPTCP_ADDR_TEXT_LEN],
    /// The whole event on one line, in the spirit of `ip mptcp monitor`.
    pub text: [c_char; MPTCP_EVENT_TEXT_LEN],
}

// SAFETY: repr(C); integers, integer arrays and sockaddr_storage only.
unsafe impl Plain for mptcp_event_t {}
// SAFETY: Plain, and the first field is `struct_size: usize`.
unsafe impl Versioned for mptcp_event_t {}

impl From<&Event> for mptcp_event_t {
    fn from(event: &Event) -> Self {
        let mut out = mptcp_event_t::zeroed();
        out.kind = event_kind_number(event.kind);
        let mut set = |bit: u32, present: bool| {
            if present {
                out.present |= bit;
            }
        };
        set(MPTCP_EVENT_HAS_TOKEN, event.token.is_some());
        set(MPTCP_EVENT_HAS_LOCAL_ID, event.local_id.is_some());
        set(MPTCP_EVENT_HAS_REMOTE_ID, event.remote_id.is_some());
        set(MPTCP_EVENT_HAS_LOCAL, event.local.is_some());
        set(MPTCP_EVENT_HAS_REMOTE, event.remote.is_some());
        set(MPTCP_EVENT_HAS_BACKUP, event.backup.is_some());
        set(MPTCP_EVENT_HAS_ERROR, event.error.is_some());
        set(MPTCP_EVENT_HAS_TIMEOUT, event.timeout.is_some());
        set(MPTCP_EVENT_HAS_IFINDEX, event.ifindex.is_some());
        set(
            MPTCP_EVENT_HAS_RESET,
            event.reset_reason.is_some() || event.reset_flags.is_some(),
        );
        out.token = event.token.unwrap_or(0);
        out.local_id = event.local_id.unwrap_or(0);
        out.remote_id = event.remote_id.unwrap_or(0);
        out.backup = event.backup.map_or(0, u8::from);
        out.error = event.error.unwrap_or(0);
        out.flags = event.flags.0;
        out.server_side = u8::from(event.server_side);
        out.timeout = event.timeout.unwrap_or(0);
        out.ifindex = event.ifindex.unwrap_or(0);
        out.reset_reason = event.reset_reason.unwrap_or(0);
        out.reset_flags = event.reset_flags.unwrap_or(0);
        if let Some(local) = event.local {
            addr::fill(&mut out.local, &mut out.local_text, local);
        }
        if let Some(remote) = event.remote {
            addr::fill(&mut out.remote, &mut out.remote_text, remote);
        }
        fill_text(&mut out.text, &event.to_string());
        out
    }
}

/// A subscription to the path-manager events of the network namespace of
/// the thread that opened it. Opaque; create with `mptcp_pm_events_open`,
/// free with `mptcp_pm_events_close`. Not thread-safe.
pub struct mptcp_pm_events_t {
    inner: EventListener,
}

/// Subscribes to the path-manager events (`ip mptcp monitor`) of the
/// calling thread's network namespace and stores the handle in `*out`.
/// Needs CAP_NET_ADMIN (`-EPERM` otherwise). Returns 0 or a negative errno.
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_events_open(out: *mut *mut mptcp_pm_events_t) -> c_int {
    call("mptcp_pm_events_open", || {
        let open = || {
            Ok(mptcp_pm_events_t {
                inner: EventListener::subscribe()?,
            })
        };
        // SAFETY: the caller guarantees `out` is NULL or writable.
        unsafe { open_handle(out, open) }
    })
}

/// The descriptor to wait on with `poll(2)`/`epoll(7)` (readable when
/// events arrive). It stays owned by the handle: do not close it or read
/// from it. Events may already be buffered in the handle, so after a wake-up
/// call `mptcp_pm_events_next` with timeout 0 until it returns 0. Returns
/// the descriptor or a negative errno.
///
/// # Safety
/// `events` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_events_fd(events: *const mptcp_pm_events_t) -> c_int {
    call("mptcp_pm_events_fd", || {
        // SAFETY: guaranteed by the caller.
        let events = unsafe { arg_ref(events, "events") }?;
        Ok(events.inner.as_raw_fd())
    })
}

/// Waits up to `timeout_ms` milliseconds (-1: forever, 0: do not wait) for
/// the next event and writes it into `*event` (set `event->struct_size`
/// first). Returns 1 when an event was written, 0 when none came in time,
/// or a negative errno (`-ENOBUFS`: the kernel dropped events because they
/// were not read fast enough).
///
/// # Safety
/// `events` is NULL or a live handle not used by another thread meanwhile;
/// `event` is NULL or writable for `event->struct_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_events_next(
    events: *mut mptcp_pm_events_t,
    event: *mut mptcp_event_t,
    timeout_ms: c_int,
) -> c_int {
    call("mptcp_pm_events_next", || {
        // SAFETY: guaranteed by the caller.
        let events = unsafe { arg_mut(events, "events") }?;
        if event.is_null() {
            return Err(Error::invalid("`event` is NULL"));
        }
        let next = match u64::try_from(timeout_ms) {
            Ok(ms) => events.inner.next_event_timeout(Duration::from_millis(ms))?,
            Err(_) if timeout_ms == -1 => Some(events.inner.next_event()?),
            Err(_) => {
                return Err(Error::invalid(format!(
                    "`timeout_ms` is {timeout_ms}: use -1 (forever), 0 or a positive number"
                )));
            }
        };
        let Some(next) = next else { return Ok(0) };
        // SAFETY: guaranteed by the caller.
        unsafe { write_versioned(event, &mptcp_event_t::from(&next), "event") }?;
        Ok(1)
    })
}

/// Ends the subscription and frees the handle. NULL is accepted and
/// ignored.
///
/// # Safety
/// `events` is NULL or a handle from `mptcp_pm_events_open` not closed
/// before; it is invalid after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_pm_events_close(events: *mut mptcp_pm_events_t) {
    call("mptcp_pm_events_close", || {
        // SAFETY: guaranteed by the caller (mptcp_pm_events_open made it).
        drop(unsafe { take_handle(events) });
        Ok(0)
    });
}
