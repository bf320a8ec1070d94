//! MPTCP sockets with a fallback policy, "is this connection MPTCP", and
//! connection and subflow inspection.

use std::ffi::{c_char, c_int};
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::time::Duration;

use mptcp_core::info::{MptcpInfo, Subflow};
use mptcp_core::socket::{self, Fallback, FallbackReason};
use socket2::Domain;

use crate::addr::{self, MPTCP_ADDR_TEXT_LEN};
use crate::args::arg_str;
use crate::error::{Error, Result, call};
use crate::out::{NameTable, Plain, Versioned, write_array, write_versioned};

/// Fallback policy: when the kernel refuses MPTCP, create a plain TCP
/// socket instead.
pub const MPTCP_FALLBACK_TCP: c_int = 0;
/// Fallback policy: when the kernel refuses MPTCP, fail with its `errno`
/// (`-ENOPROTOOPT`, `-EPROTONOSUPPORT` or `-EINVAL`).
pub const MPTCP_FALLBACK_FAIL: c_int = 1;

fn fallback_policy(value: c_int) -> Result<Fallback> {
    match value {
        MPTCP_FALLBACK_TCP => Ok(Fallback::Tcp),
        MPTCP_FALLBACK_FAIL => Ok(Fallback::Fail),
        other => Err(Error::invalid(format!(
            "`fallback` is {other}: use MPTCP_FALLBACK_TCP or MPTCP_FALLBACK_FAIL"
        ))),
    }
}

/// Borrows a descriptor argument.
fn arg_fd(fd: c_int) -> Result<BorrowedFd<'static>> {
    if fd < 0 {
        return Err(Error::new(libc::EBADF, format!("`fd` is {fd}")));
    }
    // SAFETY: `fd` is not -1; the C caller promises (header docs) that it
    // is an open descriptor for the duration of the call, and the borrow
    // does not outlive the call.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Creates a stream socket of `domain` (`AF_INET` or `AF_INET6`) with
/// `IPPROTO_MPTCP`, close-on-exec and blocking.
///
/// When the kernel refuses MPTCP, `MPTCP_FALLBACK_TCP` creates a plain TCP
/// socket instead and `MPTCP_FALLBACK_FAIL` fails. `refusal` may be NULL;
/// otherwise it receives 0 for an MPTCP socket, or the negative errno of the
/// kernel's refusal for a fallback socket (see `mptcp_refusal_advice`).
///
/// Returns the descriptor (owned by the caller: close it with `close(2)`)
/// or a negative errno.
///
/// # Safety
/// `refusal` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_socket(
    domain: c_int,
    fallback: c_int,
    refusal: *mut c_int,
) -> c_int {
    call("mptcp_socket", || {
        let domain = match domain {
            libc::AF_INET => Domain::IPV4,
            libc::AF_INET6 => Domain::IPV6,
            other => {
                return Err(Error::new(
                    libc::EAFNOSUPPORT,
                    format!("`domain` is {other}: MPTCP sockets are AF_INET or AF_INET6"),
                ));
            }
        };
        let created = socket::new(domain, fallback_policy(fallback)?)?;
        // SAFETY: the caller guarantees `refusal` is NULL or writable.
        if let Some(refusal) = unsafe { refusal.as_mut() } {
            *refusal = created.fallback.map_or(0, |reason| -reason.errno());
        }
        Ok(created.socket.into_raw_fd())
    })
}

/// A connect or listen error; an `address` that does not parse (no port, a
/// port that is not a number up to 65535) is `EINVAL` naming it.
fn address_error(err: socket::Error, address: &str) -> Error {
    match err {
        socket::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            Error::invalid(format!(
                "`address` is {address:?}: {e} (give \"host:port\", the port a number \
                 up to 65535)"
            ))
        }
        err => err.into(),
    }
}

/// Opens a blocking MPTCP connection to `address` (`"host:port"`,
/// `"198.18.0.2:80"`, `"[::1]:80"`, `"example.org:443"`): tries each
/// address the name resolves to. Returns the connected descriptor (owned by
/// the caller) or a negative errno.
///
/// # Safety
/// `address` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_connect(address: *const c_char, fallback: c_int) -> c_int {
    call("mptcp_connect", || {
        // SAFETY: the caller guarantees a NUL-terminated string or NULL.
        let address = unsafe { arg_str(address, "address") }?;
        let stream = socket::connect(address, fallback_policy(fallback)?)
            .map_err(|e| address_error(e, address))?;
        Ok(stream.into_raw_fd())
    })
}

/// Binds and listens on `address` (`"0.0.0.0:8080"`, `"[::]:0"`) with an
/// MPTCP socket (`SO_REUSEADDR`, backlog 1024). Plain TCP clients are
/// served too. Returns the listening descriptor (owned by the caller) or
/// a negative errno. Use `getsockname(2)` for the port chosen for port 0.
///
/// # Safety
/// `address` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_listen(address: *const c_char, fallback: c_int) -> c_int {
    call("mptcp_listen", || {
        // SAFETY: the caller guarantees a NUL-terminated string or NULL.
        let address = unsafe { arg_str(address, "address") }?;
        let listener = socket::bind_listener(address, fallback_policy(fallback)?)
            .map_err(|e| address_error(e, address))?;
        Ok(listener.into_raw_fd())
    })
}

/// Whether the connection on `fd` uses MPTCP right now: 1 for MPTCP, 0 for
/// plain TCP and for MPTCP sockets whose connection fell back to TCP (a
/// peer or middlebox without MPTCP), a negative errno on error. On a
/// listener: whether it was created with MPTCP. `fd` is only borrowed.
#[unsafe(no_mangle)]
pub extern "C" fn mptcp_is_mptcp(fd: c_int) -> c_int {
    call("mptcp_is_mptcp", || {
        Ok(c_int::from(socket::is_mptcp(arg_fd(fd)?)?))
    })
}

static REFUSAL_ADVICE: NameTable = NameTable::new();

/// What a refusal (the negative errno `mptcp_socket` stores in `*refusal`:
/// `-EINVAL`, `-EPROTONOSUPPORT`, `-ENOPROTOOPT`) means and how to fix the
/// host, as one sentence. NULL for other values. The string is static:
/// never free it.
#[unsafe(no_mangle)]
pub extern "C" fn mptcp_refusal_advice(refusal: c_int) -> *const c_char {
    const REASONS: [FallbackReason; 3] = [
        FallbackReason::KernelTooOld,
        FallbackReason::NotBuilt,
        FallbackReason::Disabled,
    ];
    let names = || REASONS.iter().map(|r| r.advice().to_owned()).collect();
    let index = || REASONS.iter().position(|r| -r.errno() == refusal);
    REFUSAL_ADVICE.name("mptcp_refusal_advice", names, index)
}

/// `mptcp_info_t.present`: `retransmits` and the `bytes_*` counters are
/// set (Linux 6.5+).
pub const MPTCP_INFO_HAS_COUNTERS: u32 = 1 << 0;
/// `mptcp_info_t.present`: `subflows_total` is set (Linux 6.8+).
pub const MPTCP_INFO_HAS_SUBFLOWS_TOTAL: u32 = 1 << 1;
/// `mptcp_info_t.present`: the `last_*_ms` ages and the `endp_*_max`
/// limits are set (Linux 6.10+).
pub const MPTCP_INFO_HAS_TIMES: u32 = 1 << 2;

/// `mptcp_info_t.flags`: the kernel marked the connection as fallen back
/// to TCP.
pub const MPTCP_INFO_FALLBACK: u32 = 1 << 0;
/// `mptcp_info_t.flags`: the peer's key was received (handshake done).
pub const MPTCP_INFO_REMOTE_KEY_RECEIVED: u32 = 1 << 1;

/// The connection-level state of an MPTCP connection (`MPTCP_INFO`).
///
/// Size-versioned: set `struct_size = sizeof(mptcp_info_t)` before calling
/// `mptcp_get_info`; the library writes at most that many bytes and sets
/// `struct_size` to the bytes it wrote. Fields a kernel does not report are
/// 0 and their bit in `present` is clear.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mptcp_info_t {
    /// In: `sizeof(mptcp_info_t)` as the caller knows it. Out: bytes written.
    pub struct_size: usize,
    /// `MPTCP_INFO_HAS_*` bits: which optional fields are set.
    pub present: u32,
    /// `MPTCP_INFO_FALLBACK`, `MPTCP_INFO_REMOTE_KEY_RECEIVED`.
    pub flags: u32,
    /// The local connection token (as in path-manager events).
    pub token: u32,
    /// Retransmitted MPTCP-level segments (`MPTCP_INFO_HAS_COUNTERS`).
    pub retransmits: u32,
    /// Subflows created by the path manager, the initial one not counted.
    pub subflows: u8,
    /// Addresses announced to the peer.
    pub add_addr_signal: u8,
    /// Addresses announced by the peer and accepted.
    pub add_addr_accepted: u8,
    /// Limit on additional subflows.
    pub subflows_max: u8,
    /// Limit on announced addresses.
    pub add_addr_signal_max: u8,
    /// Limit on accepted announcements.
    pub add_addr_accepted_max: u8,
    /// Local addresses in use by subflows.
    pub local_addr_used: u8,
    /// Local addresses the path manager may use.
    pub local_addr_max: u8,
    /// 1 when DSS checksums were negotiated.
    pub csum_enabled: u8,
    /// All subflows, the initial one included
    /// (`MPTCP_INFO_HAS_SUBFLOWS_TOTAL`).
    pub subflows_total: u8,
    /// Limit on laminar endpoints (`MPTCP_INFO_HAS_TIMES`; 0 before 6.18).
    pub endp_laminar_max: u8,
    /// Limit on fullmesh endpoints (`MPTCP_INFO_HAS_TIMES`; 0 before 6.18).
    pub endp_fullmesh_max: u8,
    /// Milliseconds since data was last sent (`MPTCP_INFO_HAS_TIMES`).
    pub last_data_sent_ms: u32,
    /// Milliseconds since data was last received (`MPTCP_INFO_HAS_TIMES`).
    pub last_data_recv_ms: u32,
    /// Milliseconds since an ack was last received (`MPTCP_INFO_HAS_TIMES`).
    pub last_ack_recv_ms: u32,
    /// Next data sequence number to send.
    pub write_seq: u64,
    /// Oldest data sequence number not yet acknowledged.
    pub snd_una: u64,
    /// Next data sequence number expected from the peer.
    pub rcv_nxt: u64,
    /// Bytes retransmitted at the MPTCP level (`MPTCP_INFO_HAS_COUNTERS`).
    pub bytes_retrans: u64,
    /// Bytes sent over all subflows (`MPTCP_INFO_HAS_COUNTERS`).
    pub bytes_sent: u64,
    /// Bytes received in order at the MPTCP level
    /// (`MPTCP_INFO_HAS_COUNTERS`).
    pub bytes_received: u64,
    /// Bytes acknowledged by the peer (`MPTCP_INFO_HAS_COUNTERS`).
    pub bytes_acked: u64,
}

// SAFETY: repr(C), integers only.
unsafe impl Plain for mptcp_info_t {}
// SAFETY: Plain, and the first field is `struct_size: usize`.
unsafe impl Versioned for mptcp_info_t {}

fn millis32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn micros32(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn micros64(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl From<&MptcpInfo> for mptcp_info_t {
    fn from(info: &MptcpInfo) -> Self {
        let mut out = mptcp_info_t::zeroed();
        out.flags = info.flags;
        out.token = info.token;
        out.subflows = info.subflows;
        out.add_addr_signal = info.add_addr_signal;
        out.add_addr_accepted = info.add_addr_accepted;
        out.subflows_max = info.subflows_max;
        out.add_addr_signal_max = info.add_addr_signal_max;
        out.add_addr_accepted_max = info.add_addr_accepted_max;
        out.local_addr_used = info.local_addr_used;
        out.local_addr_max = info.local_addr_max;
        out.csum_enabled = u8::from(info.csum_enabled);
        out.write_seq = info.write_seq;
        out.snd_una = info.snd_una;
        out.rcv_nxt = info.rcv_nxt;
        if let (Some(retransmits), Some(retrans), Some(sent), Some(received), Some(acked)) = (
            info.retransmits,
            info.bytes_retrans,
            info.bytes_sent,
            info.bytes_received,
            info.bytes_acked,
        ) {
            out.present |= MPTCP_INFO_HAS_COUNTERS;
            out.retransmits = retransmits;
            out.bytes_retrans = retrans;
            out.bytes_sent = sent;
            out.bytes_received = received;
            out.bytes_acked = acked;
        }
        if let Some(total) = info.subflows_total {
            out.present |= MPTCP_INFO_HAS_SUBFLOWS_TOTAL;
            out.subflows_total = total;
        }
        if let (Some(sent), Some(recv), Some(ack)) =
            (info.last_data_sent, info.last_data_recv, info.last_ack_recv)
        {
            out.present |= MPTCP_INFO_HAS_TIMES;
            out.last_data_sent_ms = millis32(sent);
            out.last_data_recv_ms = millis32(recv);
            out.last_ack_recv_ms = millis32(ack);
            out.endp_laminar_max = info.endp_laminar_max.unwrap_or(0);
            out.endp_fullmesh_max = info.endp_fullmesh_max.unwrap_or(0);
        }
        out
    }
}

/// Reads the connection-level state of the MPTCP connection on `fd` into
/// `*info` (see `mptcp_info_t` for `struct_size`). Returns 0, or
/// `-EOPNOTSUPP` when the connection is not MPTCP (plain TCP or fallen
/// back), or another negative errno. `fd` is only borrowed.
///
/// # Safety
/// `info` is NULL or points to a writable `mptcp_info_t` of at least
/// `info->struct_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_get_info(fd: c_int, info: *mut mptcp_info_t) -> c_int {
    call("mptcp_get_info", || {
        let value = mptcp_info_t::from(&mptcp_core::info::mptcp_info(arg_fd(fd)?)?);
        // SAFETY: the caller guarantees `info` per the contract above.
        unsafe { write_versioned(info, &value, "info") }?;
        Ok(0)
    })
}

/// `mptcp_subflow_t.present`: `id` is set (Linux 6.5+).
pub const MPTCP_SUBFLOW_HAS_ID: u32 = 1 << 0;
/// `mptcp_subflow_t.present`: `min_rtt_us` is set (a first RTT sample was
/// taken).
pub const MPTCP_SUBFLOW_HAS_MIN_RTT: u32 = 1 << 1;
/// `mptcp_subflow_t.present`: `rcv_wnd` is set (Linux 6.2+).
pub const MPTCP_SUBFLOW_HAS_RCV_WND: u32 = 1 << 2;
/// `mptcp_subflow_t.present`: the `total_rto*` fields are set (Linux 6.7+).
pub const MPTCP_SUBFLOW_HAS_RTO_STATS: u32 = 1 << 3;

/// One subflow (TCP flow) of an MPTCP connection: its addresses and the
/// useful part of its `tcp_info`. Filled by `mptcp_get_subflows`, which
/// takes the caller's `sizeof(mptcp_subflow_t)` so that later versions can
/// append fields.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct mptcp_subflow_t {
    /// `MPTCP_SUBFLOW_HAS_*` bits: which optional fields are set.
    pub present: u32,
    /// The kernel's subflow id (`MPTCP_SUBFLOW_HAS_ID`).
    pub id: u32,
    /// Local address and port (`sockaddr_in` or `sockaddr_in6`).
    pub local: libc::sockaddr_storage,
    /// Remote address and port.
    pub remote: libc::sockaddr_storage,
    /// `local` as text, `"198.18.1.1:40000"` or `"[2001:db8::1]:40000"`.
    pub local_text: [c_char; MPTCP_ADDR_TEXT_LEN],
    /// `remote` as text.
    pub remote_text: [c_char; MPTCP_ADDR_TEXT_LEN],
    /// TCP state (`TCP_ESTABLISHED` = 1, ...).
    pub state: u8,
    /// Congestion-avoidance state (`TCP_CA_Open` = 0, ... `TCP_CA_Loss` = 4).
    pub ca_state: u8,
    /// Consecutive retransmissions of the current segment.
    pub retransmits: u8,
    /// Reserved, 0.
    pub reserved: u8,
    /// Retransmission timeout, microseconds.
    pub rto_us: u32,
    /// Sender maximum segment size.
    pub snd_mss: u32,
    /// Receiver maximum segment size estimate.
    pub rcv_mss: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Segments considered lost.
    pub lost: u32,
    /// Segments being retransmitted.
    pub retrans: u32,
    /// Retransmitted segments over the connection's life.
    pub total_retrans: u32,
    /// Path MTU.
    pub pmtu: u32,
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u32,
    /// Round-trip time variation, microseconds.
    pub rttvar_us: u32,
    /// Minimum round-trip time seen, microseconds (`MPTCP_SUBFLOW_HAS_MIN_RTT`).
    pub min_rtt_us: u32,
    /// Congestion window, segments.
    pub snd_cwnd: u32,
    /// Slow-start threshold, segments.
    pub snd_ssthresh: u32,
    /// Segments sent.
    pub segs_out: u32,
    /// Segments received.
    pub segs_in: u32,
    /// Bytes written and not yet sent.
    pub notsent_bytes: u32,
    /// Segments delivered to the peer.
    pub delivered: u32,
    /// The peer's receive window, bytes.
    pub snd_wnd: u32,
    /// The local receive window, bytes (`MPTCP_SUBFLOW_HAS_RCV_WND`).
    pub rcv_wnd: u32,
    /// Milliseconds since data was last sent.
    pub last_data_sent_ms: u32,
    /// Milliseconds since data was last received.
    pub last_data_recv_ms: u32,
    /// Milliseconds since an ack was last received.
    pub last_ack_recv_ms: u32,
    /// Retransmission timeouts (`MPTCP_SUBFLOW_HAS_RTO_STATS`).
    pub total_rto: u32,
    /// Recoveries from timeouts (`MPTCP_SUBFLOW_HAS_RTO_STATS`).
    pub total_rto_recoveries: u32,
    /// Milliseconds in timeout recovery (`MPTCP_SUBFLOW_HAS_RTO_STATS`).
    pub total_rto_time_ms: u32,
    /// Pacing rate, bytes per second.
    pub pacing_rate: u64,
    /// Latest delivery-rate sample, bytes per second.
    pub delivery_rate: u64,
    /// Payload bytes sent, retransmissions included.
    pub bytes_sent: u64,
    /// Payload bytes retransmitted.
    pub bytes_retrans: u64,
    /// Payload bytes acknowledged by the peer.
    pub bytes_acked: u64,
    /// Payload bytes received in order.
    pub bytes_received: u64,
    /// Microseconds with data in flight.
    pub busy_time_us: u64,
    /// Microseconds limited by the peer's receive window.
    pub rwnd_limited_us: u64,
    /// Microseconds limited by the local send buffer.
    pub sndbuf_limited_us: u64,
}

// SAFETY: repr(C); integers, integer arrays and sockaddr_storage only.
unsafe impl Plain for mptcp_subflow_t {}

impl From<&Subflow> for mptcp_subflow_t {
    fn from(subflow: &Subflow) -> Self {
        let mut out = mptcp_subflow_t::zeroed();
        if let Some(id) = subflow.id {
            out.present |= MPTCP_SUBFLOW_HAS_ID;
            out.id = id;
        }
        addr::fill(&mut out.local, &mut out.local_text, subflow.local);
        addr::fill(&mut out.remote, &mut out.remote_text, subflow.remote);
        let t = &subflow.tcp;
        out.state = t.state;
        out.ca_state = t.ca_state;
        out.retransmits = t.retransmits;
        out.rto_us = micros32(t.rto);
        out.snd_mss = t.snd_mss;
        out.rcv_mss = t.rcv_mss;
        out.unacked = t.unacked;
        out.lost = t.lost;
        out.retrans = t.retrans;
        out.total_retrans = t.total_retrans;
        out.pmtu = t.pmtu;
        out.rtt_us = micros32(t.rtt);
        out.rttvar_us = micros32(t.rttvar);
        if let Some(min_rtt) = t.min_rtt {
            out.present |= MPTCP_SUBFLOW_HAS_MIN_RTT;
            out.min_rtt_us = micros32(min_rtt);
        }
        out.snd_cwnd = t.snd_cwnd;
        out.snd_ssthresh = t.snd_ssthresh;
        out.segs_out = t.segs_out;
        out.segs_in = t.segs_in;
        out.notsent_bytes = t.notsent_bytes;
        out.delivered = t.delivered;
        out.snd_wnd = t.snd_wnd;
        if let Some(rcv_wnd) = t.rcv_wnd {
            out.present |= MPTCP_SUBFLOW_HAS_RCV_WND;
            out.rcv_wnd = rcv_wnd;
        }
        out.last_data_sent_ms = millis32(t.last_data_sent);
        out.last_data_recv_ms = millis32(t.last_data_recv);
        out.last_ack_recv_ms = millis32(t.last_ack_recv);
        if let (Some(rto), Some(recoveries), Some(time)) =
            (t.total_rto, t.total_rto_recoveries, t.total_rto_time)
        {
            out.present |= MPTCP_SUBFLOW_HAS_RTO_STATS;
            out.total_rto = rto.into();
            out.total_rto_recoveries = recoveries.into();
            out.total_rto_time_ms = millis32(time);
        }
        out.pacing_rate = t.pacing_rate;
        out.delivery_rate = t.delivery_rate;
        out.bytes_sent = t.bytes_sent;
        out.bytes_retrans = t.bytes_retrans;
        out.bytes_acked = t.bytes_acked;
        out.bytes_received = t.bytes_received;
        out.busy_time_us = micros64(t.busy_time);
        out.rwnd_limited_us = micros64(t.rwnd_limited);
        out.sndbuf_limited_us = micros64(t.sndbuf_limited);
        out
    }
}

/// Lists the subflows of the MPTCP connection on `fd`, the initial one
/// first, into `subflows[0 .. *count]`.
///
/// `elem_size` is the caller's `sizeof(mptcp_subflow_t)`; `*count` is the
/// capacity of the array on input and the number of subflows on output
/// (larger than the capacity when the array was too small: call again).
/// With `*count == 0`, `subflows` may be NULL (a size query). Returns the
/// number of entries written, `-EOPNOTSUPP` when the connection is not
/// MPTCP, or another negative errno. `fd` is only borrowed.
///
/// # Safety
/// `count` is NULL or valid; `subflows` is NULL or writable for
/// `*count * elem_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_get_subflows(
    fd: c_int,
    subflows: *mut mptcp_subflow_t,
    elem_size: usize,
    count: *mut usize,
) -> c_int {
    call("mptcp_get_subflows", || {
        let listed = mptcp_core::info::subflows(arg_fd(fd)?)?;
        // SAFETY: the caller guarantees `subflows` and `count` per the
        // contract above.
        unsafe { write_array(subflows, elem_size, count, &listed, "subflows") }
    })
}
