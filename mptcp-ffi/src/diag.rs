//! The MPTCP connections of the network namespace and their subflows, from
//! the kernel's socket diagnostics (what `ss -M` reads), as a snapshot the
//! caller walks.

use std::ffi::{c_char, c_int};

use mptcp_core::diag::{self, Connection, Subflow};

use crate::addr::{self, MPTCP_ADDR_TEXT_LEN};
use crate::args::{arg_ref, open_handle, take_handle};
use crate::error::{Error, call};
use crate::out::{NameTable, Plain, write_array};

/// A snapshot of the MPTCP connections of the network namespace of the
/// thread that took it. Opaque; take with `mptcp_diag_open`, free with
/// `mptcp_diag_close`. Read-only: may be read from several threads.
pub struct mptcp_diag_t {
    connections: Vec<Connection>,
}

/// Takes a snapshot of the MPTCP connections of the calling thread's
/// network namespace (two socket-diagnostics dumps per address family; no
/// privilege needed) and stores it in `*out`. Returns 0 or a negative errno
/// (`-ENOENT`: the kernel lacks MPTCP socket diagnostics, load the
/// `mptcp_diag` module).
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_diag_open(out: *mut *mut mptcp_diag_t) -> c_int {
    call("mptcp_diag_open", || {
        let open = || {
            Ok(mptcp_diag_t {
                connections: diag::connections()?,
            })
        };
        // SAFETY: guaranteed by the caller.
        unsafe { open_handle(out, open) }
    })
}

/// Frees a snapshot. NULL is accepted and ignored.
///
/// # Safety
/// `snapshot` is NULL or a snapshot from `mptcp_diag_open` not freed
/// before; it is invalid after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_diag_close(snapshot: *mut mptcp_diag_t) {
    call("mptcp_diag_close", || {
        // SAFETY: guaranteed by the caller (mptcp_diag_open made it).
        drop(unsafe { take_handle(snapshot) });
        Ok(0)
    });
}

/// `mptcp_diag_connection_t.present`: the `bytes_*` counters are set
/// (Linux 6.5+).
pub const MPTCP_DIAG_HAS_BYTES: u32 = 1 << 0;

/// One MPTCP connection of a snapshot, as listed by
/// `mptcp_diag_connections` (which takes the caller's
/// `sizeof(mptcp_diag_connection_t)`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct mptcp_diag_connection_t {
    /// `MPTCP_DIAG_HAS_*` bits: which optional fields are set.
    pub present: u32,
    /// The local connection token (as in `mptcp_info_t` and events); 0
    /// before the handshake.
    pub token: u32,
    /// Inode of the socket (`/proc/PID/fd` links to `socket:[INODE]`).
    pub inode: u32,
    /// Owner of the socket.
    pub uid: u32,
    /// TCP state of the MPTCP socket (`mptcp_tcp_state_name` names it).
    pub state: u8,
    /// 1 when the connection fell back to plain TCP.
    pub fallback: u8,
    /// Extra subflows the path manager opened.
    pub extra_subflows: u8,
    /// Reserved, 0.
    pub reserved: u8,
    /// Subflows in the snapshot (`mptcp_diag_subflows` lists them).
    pub subflow_count: u32,
    /// Local address (the first subflow's).
    pub local: libc::sockaddr_storage,
    /// Peer address.
    pub remote: libc::sockaddr_storage,
    /// `local` as text.
    pub local_text: [c_char; MPTCP_ADDR_TEXT_LEN],
    /// `remote` as text.
    pub remote_text: [c_char; MPTCP_ADDR_TEXT_LEN],
    /// Data-level bytes sent (`MPTCP_DIAG_HAS_BYTES`).
    pub bytes_sent: u64,
    /// Data-level bytes received in sequence (`MPTCP_DIAG_HAS_BYTES`).
    pub bytes_received: u64,
    /// Data-level bytes acknowledged by the peer (`MPTCP_DIAG_HAS_BYTES`).
    pub bytes_acked: u64,
}

// SAFETY: repr(C); integers, integer arrays and sockaddr_storage only.
unsafe impl Plain for mptcp_diag_connection_t {}

impl From<&Connection> for mptcp_diag_connection_t {
    fn from(conn: &Connection) -> Self {
        let mut out = mptcp_diag_connection_t::zeroed();
        out.token = conn.token;
        out.inode = conn.inode;
        out.uid = conn.uid;
        out.state = conn.state;
        out.fallback = u8::from(conn.fallback);
        out.extra_subflows = conn.extra_subflows;
        out.subflow_count = u32::try_from(conn.subflows.len()).unwrap_or(u32::MAX);
        addr::fill(&mut out.local, &mut out.local_text, conn.local);
        addr::fill(&mut out.remote, &mut out.remote_text, conn.remote);
        if let Some(bytes) = conn.bytes {
            out.present |= MPTCP_DIAG_HAS_BYTES;
            out.bytes_sent = bytes.sent;
            out.bytes_received = bytes.received;
            out.bytes_acked = bytes.acked;
        }
        out
    }
}

/// Lists the connections of a snapshot into `connections[0 .. *count]`;
/// `elem_size`, `*count` and the return value work as for
/// `mptcp_get_subflows`. Index `i` here is connection `i` of
/// `mptcp_diag_subflows`.
///
/// # Safety
/// `snapshot` is NULL or a live snapshot; `count` is NULL or valid;
/// `connections` is NULL or writable for `*count * elem_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_diag_connections(
    snapshot: *const mptcp_diag_t,
    connections: *mut mptcp_diag_connection_t,
    elem_size: usize,
    count: *mut usize,
) -> c_int {
    call("mptcp_diag_connections", || {
        // SAFETY: guaranteed by the caller.
        let snapshot = unsafe { arg_ref(snapshot, "snapshot") }?;
        let listed = &snapshot.connections;
        // SAFETY: guaranteed by the caller.
        unsafe { write_array(connections, elem_size, count, listed, "connections") }
    })
}

/// `mptcp_diag_subflow_t.flags`: this side marked the subflow as backup.
pub const MPTCP_DIAG_SUBFLOW_BACKUP_LOCAL: u8 = 1 << 0;
/// `mptcp_diag_subflow_t.flags`: the peer asked for the subflow to be a
/// backup.
pub const MPTCP_DIAG_SUBFLOW_BACKUP_REMOTE: u8 = 1 << 1;
/// `mptcp_diag_subflow_t.flags`: the subflow's MPTCP handshake is complete.
pub const MPTCP_DIAG_SUBFLOW_FULLY_ESTABLISHED: u8 = 1 << 2;

/// One subflow of a snapshot's connection, as listed by
/// `mptcp_diag_subflows` (which takes the caller's
/// `sizeof(mptcp_diag_subflow_t)`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct mptcp_diag_subflow_t {
    /// The connection token it belongs to.
    pub token: u32,
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u32,
    /// Congestion window, segments.
    pub cwnd: u32,
    /// Segments retransmitted over the subflow's life.
    pub total_retrans: u32,
    /// TCP state (`mptcp_tcp_state_name` names it).
    pub state: u8,
    /// Local address id (endpoint id).
    pub local_id: u8,
    /// Remote address id.
    pub remote_id: u8,
    /// `MPTCP_DIAG_SUBFLOW_*` bits.
    pub flags: u8,
    /// Reserved, 0.
    pub reserved: u32,
    /// Local address and port.
    pub local: libc::sockaddr_storage,
    /// Remote address and port.
    pub remote: libc::sockaddr_storage,
    /// `local` as text.
    pub local_text: [c_char; MPTCP_ADDR_TEXT_LEN],
    /// `remote` as text.
    pub remote_text: [c_char; MPTCP_ADDR_TEXT_LEN],
    /// Bytes sent, retransmissions included.
    pub bytes_sent: u64,
    /// Bytes acknowledged by the peer.
    pub bytes_acked: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Delivery-rate estimate, bytes per second.
    pub delivery_rate: u64,
}

// SAFETY: repr(C); integers, integer arrays and sockaddr_storage only.
unsafe impl Plain for mptcp_diag_subflow_t {}

impl From<&Subflow> for mptcp_diag_subflow_t {
    fn from(subflow: &Subflow) -> Self {
        let mut out = mptcp_diag_subflow_t::zeroed();
        out.token = subflow.token;
        out.rtt_us = subflow.rtt_us;
        out.cwnd = subflow.cwnd;
        out.total_retrans = subflow.total_retrans;
        out.state = subflow.state;
        out.local_id = subflow.local_id;
        out.remote_id = subflow.remote_id;
        for (set, bit) in [
            (subflow.backup_local, MPTCP_DIAG_SUBFLOW_BACKUP_LOCAL),
            (subflow.backup_remote, MPTCP_DIAG_SUBFLOW_BACKUP_REMOTE),
            (
                subflow.fully_established,
                MPTCP_DIAG_SUBFLOW_FULLY_ESTABLISHED,
            ),
        ] {
            if set {
                out.flags |= bit;
            }
        }
        addr::fill(&mut out.local, &mut out.local_text, subflow.local);
        addr::fill(&mut out.remote, &mut out.remote_text, subflow.remote);
        out.bytes_sent = subflow.bytes_sent;
        out.bytes_acked = subflow.bytes_acked;
        out.bytes_received = subflow.bytes_received;
        out.delivery_rate = subflow.delivery_rate;
        out
    }
}

/// Lists the subflows of connection `connection` (an index of
/// `mptcp_diag_connections`) into `subflows[0 .. *count]`; `elem_size`,
/// `*count` and the return value work as for `mptcp_get_subflows`.
/// `-ERANGE` for an index past the last connection.
///
/// # Safety
/// `snapshot` is NULL or a live snapshot; `count` is NULL or valid;
/// `subflows` is NULL or writable for `*count * elem_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_diag_subflows(
    snapshot: *const mptcp_diag_t,
    connection: usize,
    subflows: *mut mptcp_diag_subflow_t,
    elem_size: usize,
    count: *mut usize,
) -> c_int {
    call("mptcp_diag_subflows", || {
        // SAFETY: guaranteed by the caller.
        let snapshot = unsafe { arg_ref(snapshot, "snapshot") }?;
        let conn = snapshot.connections.get(connection).ok_or_else(|| {
            Error::new(
                libc::ERANGE,
                format!(
                    "`connection` is {connection} but the snapshot has {} connections",
                    snapshot.connections.len()
                ),
            )
        })?;
        // SAFETY: guaranteed by the caller.
        unsafe { write_array(subflows, elem_size, count, &conn.subflows, "subflows") }
    })
}

static STATE_NAMES: NameTable = NameTable::new();

/// The name `ss` prints for a TCP state number (`"ESTAB"`, `"SYN-SENT"`,
/// ..., `"UNKNOWN"`). The string is static: never free it.
#[unsafe(no_mangle)]
pub extern "C" fn mptcp_tcp_state_name(state: u8) -> *const c_char {
    let names = || {
        (0..=u8::MAX)
            .map(|s| diag::state_name(s).to_owned())
            .collect()
    };
    STATE_NAMES.name("mptcp_tcp_state_name", names, || Some(state.into()))
}
