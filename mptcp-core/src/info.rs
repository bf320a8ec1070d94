//! Inspecting MPTCP connections: the connection-level counters
//! ([`MptcpInfo`], `MPTCP_INFO`) and its subflows ([`Subflow`]: addresses
//! and `tcp_info` of each TCP flow, `MPTCP_FULL_INFO` or
//! `MPTCP_SUBFLOW_ADDRS` + `MPTCP_TCPINFO`).
//!
//! The kernel structures grew over versions; fields an older kernel does
//! not return are `None`, never a made-up zero. The methods of
//! [`MptcpExt`] call these functions on any socket type.
//!
//! ```
//! use mptcp_core::info::MptcpExt;
//! use mptcp_core::socket::{self, Fallback};
//! use std::io::Write;
//!
//! let listener = socket::bind_listener("127.0.0.1:0", Fallback::Tcp)?;
//! let mut client = socket::connect(listener.local_addr()?, Fallback::Tcp)?;
//! let _server = listener.accept()?;
//! if client.is_mptcp()? {
//!     let before = client.mptcp_info()?;
//!     client.write_all(b"hello")?;
//!     let after = client.mptcp_info()?;
//!     assert_eq!(after.write_seq - before.write_seq, 5);
//!     for subflow in client.subflows()? {
//!         println!("{subflow}");
//!     }
//! }
//! # Ok::<(), mptcp_core::socket::Error>(())
//! ```

use std::fmt;
use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use crate::socket::{Error, Result, is_mptcp, is_unknown_option};
use crate::sys::Pod;
use crate::sys::info::{
    MPTCP_FULL_INFO, MPTCP_FULL_INFO_HEADER_SIZE, MPTCP_INFO, MPTCP_INFO_FLAG_FALLBACK,
    MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED, MPTCP_INFO_SIZE_5_16, MPTCP_INFO_SIZE_6_5,
    MPTCP_INFO_SIZE_6_8, MPTCP_INFO_SIZE_6_10, MPTCP_SUBFLOW_ADDRS, MPTCP_TCPINFO,
    TCP_INFO_SIZE_5_5, TCP_INFO_SIZE_6_2, TCP_INFO_SIZE_6_7, mptcp_full_info, mptcp_info,
    mptcp_subflow_addrs, mptcp_subflow_data, mptcp_subflow_info, tcp_info,
};
use crate::sys::socket::{SOL_MPTCP, getsockopt, getsockopt_bytes};

/// Room for this many subflows on the first try (the in-kernel path
/// manager allows at most 8); grown when the kernel reports more.
const INITIAL_SUBFLOWS: usize = 8;
/// Upper bound on the buffer growth, whatever count the kernel reports.
const MAX_LISTED_SUBFLOWS: usize = 1024;
/// How many times a subflow listing is retried with a larger buffer when
/// subflows keep appearing between the calls.
const LISTING_ATTEMPTS: usize = 4;

/// The connection-level state of an MPTCP connection (`struct mptcp_info`).
///
/// The fields marked with a Linux version are `None` on older kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MptcpInfo {
    /// Subflows created by the path manager, the initial one not counted.
    pub subflows: u8,
    /// Addresses announced (ADD_ADDR) to the peer.
    pub add_addr_signal: u8,
    /// Addresses announced by the peer and accepted.
    pub add_addr_accepted: u8,
    /// Limit on additional subflows (`ip mptcp limits`).
    pub subflows_max: u8,
    /// Limit on announced addresses.
    pub add_addr_signal_max: u8,
    /// Limit on accepted announcements (`ip mptcp limits add_addr_accepted`).
    pub add_addr_accepted_max: u8,
    /// `MPTCP_INFO_FLAG_*` bits; see [`Self::fallback`].
    pub flags: u32,
    /// The local connection token (as in path-manager events).
    pub token: u32,
    /// Next data sequence number to send (grows by the bytes written).
    pub write_seq: u64,
    /// Oldest data sequence number not yet acknowledged by the peer.
    pub snd_una: u64,
    /// Next data sequence number expected from the peer.
    pub rcv_nxt: u64,
    /// Local addresses in use by subflows.
    pub local_addr_used: u8,
    /// Local addresses the path manager may use.
    pub local_addr_max: u8,
    /// DSS checksums negotiated.
    pub csum_enabled: bool,
    /// Retransmitted MPTCP-level segments (Linux 6.5).
    pub retransmits: Option<u32>,
    /// Bytes retransmitted at the MPTCP level (Linux 6.5).
    pub bytes_retrans: Option<u64>,
    /// Bytes sent over all subflows, retransmissions included (Linux 6.5).
    pub bytes_sent: Option<u64>,
    /// Bytes received and delivered in order at the MPTCP level (Linux 6.5).
    pub bytes_received: Option<u64>,
    /// Bytes acknowledged by the peer at the MPTCP level (Linux 6.5).
    pub bytes_acked: Option<u64>,
    /// All subflows, the initial one included (Linux 6.8).
    pub subflows_total: Option<u8>,
    /// Limit on "laminar" endpoints (Linux 6.18; reads 0 on 6.10–6.17, where
    /// the byte was reserved).
    pub endp_laminar_max: Option<u8>,
    /// Limit on "fullmesh" endpoints (Linux 6.18; reads 0 on 6.10–6.17).
    pub endp_fullmesh_max: Option<u8>,
    /// Time since data was last sent (Linux 6.10, millisecond resolution).
    pub last_data_sent: Option<Duration>,
    /// Time since data was last received (Linux 6.10).
    pub last_data_recv: Option<Duration>,
    /// Time since an acknowledgement was last received (Linux 6.10).
    pub last_ack_recv: Option<Duration>,
}

impl MptcpInfo {
    /// Builds the info from the kernel's answer of `len` bytes. A field is
    /// present when `len` covers the whole struct of the kernel version
    /// that introduced it: older versions return their padding (zeroes)
    /// where newer fields now live.
    fn from_raw(raw: &mptcp_info, len: usize) -> Self {
        let since = |size: usize| len >= size;
        let v6_5 = since(MPTCP_INFO_SIZE_6_5);
        let v6_8 = since(MPTCP_INFO_SIZE_6_8);
        let v6_10 = since(MPTCP_INFO_SIZE_6_10);
        let millis = |ms: u32| Duration::from_millis(ms.into());
        Self {
            subflows: raw.mptcpi_subflows,
            add_addr_signal: raw.mptcpi_add_addr_signal,
            add_addr_accepted: raw.mptcpi_add_addr_accepted,
            subflows_max: raw.mptcpi_subflows_max,
            add_addr_signal_max: raw.mptcpi_add_addr_signal_max,
            add_addr_accepted_max: raw.mptcpi_add_addr_accepted_max,
            flags: raw.mptcpi_flags,
            token: raw.mptcpi_token,
            write_seq: raw.mptcpi_write_seq,
            snd_una: raw.mptcpi_snd_una,
            rcv_nxt: raw.mptcpi_rcv_nxt,
            local_addr_used: raw.mptcpi_local_addr_used,
            local_addr_max: raw.mptcpi_local_addr_max,
            csum_enabled: raw.mptcpi_csum_enabled != 0,
            retransmits: v6_5.then_some(raw.mptcpi_retransmits),
            bytes_retrans: v6_5.then_some(raw.mptcpi_bytes_retrans),
            bytes_sent: v6_5.then_some(raw.mptcpi_bytes_sent),
            bytes_received: v6_5.then_some(raw.mptcpi_bytes_received),
            bytes_acked: v6_5.then_some(raw.mptcpi_bytes_acked),
            subflows_total: v6_8.then_some(raw.mptcpi_subflows_total),
            endp_laminar_max: v6_10.then_some(raw.mptcpi_endp_laminar_max),
            endp_fullmesh_max: v6_10.then_some(raw.mptcpi_endp_fullmesh_max),
            last_data_sent: v6_10.then(|| millis(raw.mptcpi_last_data_sent)),
            last_data_recv: v6_10.then(|| millis(raw.mptcpi_last_data_recv)),
            last_ack_recv: v6_10.then(|| millis(raw.mptcpi_last_ack_recv)),
        }
    }

    /// The kernel marked the connection as fallen back to TCP.
    pub fn fallback(&self) -> bool {
        self.flags & MPTCP_INFO_FLAG_FALLBACK != 0
    }

    /// The peer's key was received (the MPTCP handshake completed).
    pub fn remote_key_received(&self) -> bool {
        self.flags & MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED != 0
    }
}

/// The state of one subflow's TCP connection (the useful part of
/// `struct tcp_info`). Times have the kernel's resolution (microseconds for
/// RTTs and RTO, milliseconds for the `last_*` ages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpInfo {
    /// TCP state (`TCP_ESTABLISHED` = 1, ...).
    pub state: u8,
    /// Congestion-avoidance state (`TCP_CA_Open` = 0, ..., `TCP_CA_Loss` = 4).
    pub ca_state: u8,
    /// Consecutive retransmissions of the current segment (RTO backoffs).
    pub retransmits: u8,
    /// Retransmission timeout.
    pub rto: Duration,
    /// Sender maximum segment size.
    pub snd_mss: u32,
    /// Receiver maximum segment size estimate.
    pub rcv_mss: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Segments considered lost.
    pub lost: u32,
    /// Segments currently being retransmitted.
    pub retrans: u32,
    /// Retransmitted segments over the connection's life.
    pub total_retrans: u32,
    /// Time since data was last sent.
    pub last_data_sent: Duration,
    /// Time since data was last received.
    pub last_data_recv: Duration,
    /// Time since an acknowledgement was last received.
    pub last_ack_recv: Duration,
    /// Path MTU.
    pub pmtu: u32,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Round-trip time variation.
    pub rttvar: Duration,
    /// Minimum round-trip time seen (`None` before the first measurement).
    pub min_rtt: Option<Duration>,
    /// Congestion window, in segments.
    pub snd_cwnd: u32,
    /// Slow-start threshold, in segments.
    pub snd_ssthresh: u32,
    /// Pacing rate, bytes per second.
    pub pacing_rate: u64,
    /// Most recent delivery-rate sample, bytes per second.
    pub delivery_rate: u64,
    /// Payload bytes sent, retransmissions included.
    pub bytes_sent: u64,
    /// Payload bytes retransmitted.
    pub bytes_retrans: u64,
    /// Payload bytes acknowledged by the peer.
    pub bytes_acked: u64,
    /// Payload bytes received in order.
    pub bytes_received: u64,
    /// Segments sent.
    pub segs_out: u32,
    /// Segments received.
    pub segs_in: u32,
    /// Bytes written by the application and not yet sent.
    pub notsent_bytes: u32,
    /// Segments delivered to the peer.
    pub delivered: u32,
    /// Time spent with data in flight.
    pub busy_time: Duration,
    /// Time limited by the peer's receive window.
    pub rwnd_limited: Duration,
    /// Time limited by the local send buffer.
    pub sndbuf_limited: Duration,
    /// The peer's advertised receive window, bytes.
    pub snd_wnd: u32,
    /// The local advertised receive window, bytes (Linux 6.2).
    pub rcv_wnd: Option<u32>,
    /// Retransmission timeouts (Linux 6.7).
    pub total_rto: Option<u16>,
    /// Recoveries from retransmission timeouts (Linux 6.7).
    pub total_rto_recoveries: Option<u16>,
    /// Time spent in timeout recovery (Linux 6.7).
    pub total_rto_time: Option<Duration>,
}

impl TcpInfo {
    /// Builds the info from the kernel's `len` bytes. Every kernel with
    /// MPTCP subflow inspection (5.16+) returns at least the 5.5 layout.
    fn from_raw(raw: &tcp_info, len: usize) -> io::Result<Self> {
        if len < TCP_INFO_SIZE_5_5 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the kernel returned a {len}-byte tcp_info (expected {TCP_INFO_SIZE_5_5}+)"
                ),
            ));
        }
        let v6_2 = len >= TCP_INFO_SIZE_6_2;
        let v6_7 = len >= TCP_INFO_SIZE_6_7;
        let micros = |us: u64| Duration::from_micros(us);
        let millis = |ms: u32| Duration::from_millis(ms.into());
        Ok(Self {
            state: raw.tcpi_state,
            ca_state: raw.tcpi_ca_state,
            retransmits: raw.tcpi_retransmits,
            rto: micros(raw.tcpi_rto.into()),
            snd_mss: raw.tcpi_snd_mss,
            rcv_mss: raw.tcpi_rcv_mss,
            unacked: raw.tcpi_unacked,
            lost: raw.tcpi_lost,
            retrans: raw.tcpi_retrans,
            total_retrans: raw.tcpi_total_retrans,
            last_data_sent: millis(raw.tcpi_last_data_sent),
            last_data_recv: millis(raw.tcpi_last_data_recv),
            last_ack_recv: millis(raw.tcpi_last_ack_recv),
            pmtu: raw.tcpi_pmtu,
            rtt: micros(raw.tcpi_rtt.into()),
            rttvar: micros(raw.tcpi_rttvar.into()),
            // The kernel reports ~0U until it has a sample.
            min_rtt: (raw.tcpi_min_rtt != u32::MAX).then(|| micros(raw.tcpi_min_rtt.into())),
            snd_cwnd: raw.tcpi_snd_cwnd,
            snd_ssthresh: raw.tcpi_snd_ssthresh,
            pacing_rate: raw.tcpi_pacing_rate,
            delivery_rate: raw.tcpi_delivery_rate,
            bytes_sent: raw.tcpi_bytes_sent,
            bytes_retrans: raw.tcpi_bytes_retrans,
            bytes_acked: raw.tcpi_bytes_acked,
            bytes_received: raw.tcpi_bytes_received,
            segs_out: raw.tcpi_segs_out,
            segs_in: raw.tcpi_segs_in,
            notsent_bytes: raw.tcpi_notsent_bytes,
            delivered: raw.tcpi_delivered,
            busy_time: micros(raw.tcpi_busy_time),
            rwnd_limited: micros(raw.tcpi_rwnd_limited),
            sndbuf_limited: micros(raw.tcpi_sndbuf_limited),
            snd_wnd: raw.tcpi_snd_wnd,
            rcv_wnd: v6_2.then_some(raw.tcpi_rcv_wnd),
            total_rto: v6_7.then_some(raw.tcpi_total_rto),
            total_rto_recoveries: v6_7.then_some(raw.tcpi_total_rto_recoveries),
            total_rto_time: v6_7.then(|| millis(raw.tcpi_total_rto_time)),
        })
    }
}

/// One subflow (TCP flow) of an MPTCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subflow {
    /// The kernel's subflow id (from `MPTCP_FULL_INFO`, Linux 6.5; `None`
    /// when listed with the older options).
    pub id: Option<u32>,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// The subflow's TCP state and counters.
    pub tcp: TcpInfo,
}

impl fmt::Display for Subflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(id) = self.id {
            write!(f, "#{id} ")?;
        }
        let t = &self.tcp;
        write!(
            f,
            "{} -> {} rtt {:?} cwnd {} sent {} acked {} received {} retrans {} delivery {} B/s",
            self.local,
            self.remote,
            t.rtt,
            t.snd_cwnd,
            t.bytes_sent,
            t.bytes_acked,
            t.bytes_received,
            t.total_retrans,
            t.delivery_rate
        )
    }
}

/// Everything about a connection from one `MPTCP_FULL_INFO` call: a
/// consistent snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FullInfo {
    /// Connection-level state.
    pub mptcp: MptcpInfo,
    /// The subflows, the initial one first.
    pub subflows: Vec<Subflow>,
}

/// The connection-level state (`MPTCP_INFO`, Linux 5.16).
///
/// Errors: [`Error::NotMptcp`] for plain TCP and fallen-back connections,
/// [`Error::Unsupported`] on kernels before 5.16.
pub fn mptcp_info(fd: BorrowedFd<'_>) -> Result<MptcpInfo> {
    let mut raw = mptcp_info::zeroed();
    let len = getsockopt(fd, SOL_MPTCP, MPTCP_INFO, &mut raw)
        .map_err(|err| sol_mptcp_error(fd, err, "MPTCP_INFO", "5.16"))?;
    if len < MPTCP_INFO_SIZE_5_16 {
        return Err(Error::Io(invalid_data(format!(
            "the kernel returned a {len}-byte mptcp_info (expected {MPTCP_INFO_SIZE_5_16}+)"
        ))));
    }
    Ok(MptcpInfo::from_raw(&raw, len))
}

/// The connection state and all subflows in one consistent snapshot
/// (`MPTCP_FULL_INFO`, Linux 6.5).
///
/// Errors: [`Error::NotMptcp`] for plain TCP and fallen-back connections,
/// [`Error::Unsupported`] on kernels before 6.5 ([`subflows`] still works
/// there).
pub fn full_info(fd: BorrowedFd<'_>) -> Result<FullInfo> {
    full_info_from(fd, INITIAL_SUBFLOWS)
}

/// [`full_info`] with room for `capacity` subflows on the first try.
fn full_info_from(fd: BorrowedFd<'_>, mut capacity: usize) -> Result<FullInfo> {
    let mut attempt = 1;
    loop {
        let mut sfinfo = vec![0u8; capacity * size_of::<mptcp_subflow_info>()];
        let mut tcpinfo = vec![0u8; capacity * size_of::<tcp_info>()];
        let mut request = mptcp_full_info::zeroed();
        request.size_tcpinfo_user = size_of::<tcp_info>() as u32;
        request.size_sfinfo_user = size_of::<mptcp_subflow_info>() as u32;
        request.size_arrays_user = capacity as u32;
        // The kernel writes at most `size_arrays_user` elements of the
        // sizes above through these addresses (both buffers are that big);
        // they stay alive and untouched until the call returns.
        request.subflow_info = sfinfo.as_mut_ptr() as u64;
        request.tcp_info = tcpinfo.as_mut_ptr() as u64;
        let len = getsockopt(fd, SOL_MPTCP, MPTCP_FULL_INFO, &mut request)
            .map_err(|err| sol_mptcp_error(fd, err, "MPTCP_FULL_INFO", "6.5"))?;

        let total = request.num_subflows as usize;
        if total > capacity && attempt < LISTING_ATTEMPTS {
            attempt += 1;
            capacity = total.min(MAX_LISTED_SUBFLOWS) + 2;
            continue;
        }
        let info_len = len.saturating_sub(MPTCP_FULL_INFO_HEADER_SIZE);
        if info_len < MPTCP_INFO_SIZE_5_16 {
            return Err(Error::Io(invalid_data(format!(
                "MPTCP_FULL_INFO returned a {info_len}-byte mptcp_info"
            ))));
        }
        let mptcp = MptcpInfo::from_raw(&request.mptcp_info, info_len);
        let count = total.min(capacity);
        let sf_stride =
            stride::<mptcp_subflow_info>(request.size_sfinfo_user, "mptcp_subflow_info")?;
        let tcp_stride = stride::<tcp_info>(request.size_tcpinfo_user, "tcp_info")?;
        if count > 0 && sf_stride < size_of::<mptcp_subflow_info>() {
            return Err(Error::Io(invalid_data(format!(
                "MPTCP_FULL_INFO returned {sf_stride}-byte subflow entries"
            ))));
        }
        let subflows = sfinfo
            .chunks_exact(sf_stride)
            .zip(tcpinfo.chunks_exact(tcp_stride))
            .take(count)
            .map(|(sf, tcp)| {
                let sf = mptcp_subflow_info::read_prefix(sf);
                let (local, remote) = addresses(&sf.addrs)?;
                let tcp = TcpInfo::from_raw(&tcp_info::read_prefix(tcp), tcp_stride)?;
                Ok(Subflow {
                    id: Some(sf.id),
                    local,
                    remote,
                    tcp,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        return Ok(FullInfo { mptcp, subflows });
    }
}

/// The subflows of a connection, the initial one first: addresses and
/// `tcp_info` of each. Uses `MPTCP_FULL_INFO` (6.5+), else
/// `MPTCP_SUBFLOW_ADDRS` and `MPTCP_TCPINFO` (5.16+; two snapshots, paired
/// by position).
///
/// Errors: [`Error::NotMptcp`] for plain TCP and fallen-back connections,
/// [`Error::Unsupported`] on kernels before 5.16.
pub fn subflows(fd: BorrowedFd<'_>) -> Result<Vec<Subflow>> {
    match full_info(fd) {
        Ok(full) => Ok(full.subflows),
        Err(Error::Unsupported { .. }) => subflows_by_parts(fd, INITIAL_SUBFLOWS),
        Err(err) => Err(err),
    }
}

/// The subflows from `MPTCP_SUBFLOW_ADDRS` and `MPTCP_TCPINFO` (5.16+),
/// with room for `capacity` subflows on the first try.
fn subflows_by_parts(fd: BorrowedFd<'_>, capacity: usize) -> Result<Vec<Subflow>> {
    let (addrs, _) = subflow_array::<mptcp_subflow_addrs>(
        fd,
        MPTCP_SUBFLOW_ADDRS,
        "MPTCP_SUBFLOW_ADDRS",
        capacity,
    )?;
    let (tcp, tcp_len) = subflow_array::<tcp_info>(fd, MPTCP_TCPINFO, "MPTCP_TCPINFO", capacity)?;
    let subflows = addrs
        .iter()
        .zip(&tcp)
        .map(|(addrs, tcp)| {
            let (local, remote) = addresses(addrs)?;
            let tcp = TcpInfo::from_raw(tcp, tcp_len)?;
            Ok(Subflow {
                id: None,
                local,
                remote,
                tcp,
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(subflows)
}

/// Reads an `MPTCP_TCPINFO` / `MPTCP_SUBFLOW_ADDRS` answer: a
/// `mptcp_subflow_data` header, then one element per subflow at a stride of
/// the `size_user` the kernel reports (`min(size_of::<T>(), size_kernel)`).
/// Returns the elements and that stride (the bytes of each that are real).
/// Grows the buffer when the kernel reports more subflows than fit.
fn subflow_array<T: Pod>(
    fd: BorrowedFd<'_>,
    optname: libc::c_int,
    option: &'static str,
    mut capacity: usize,
) -> Result<(Vec<T>, usize)> {
    const HEADER: usize = size_of::<mptcp_subflow_data>();
    let mut attempt = 1;
    loop {
        let mut buf = vec![0u8; HEADER + capacity * size_of::<T>()];
        let request = mptcp_subflow_data {
            size_subflow_data: HEADER as u32,
            num_subflows: 0,
            size_kernel: 0,
            size_user: size_of::<T>() as u32,
        };
        request.write_to(&mut buf);
        let len = getsockopt_bytes(fd, SOL_MPTCP, optname, &mut buf)
            .map_err(|err| sol_mptcp_error(fd, err, option, "5.16"))?;
        let answer = mptcp_subflow_data::read_prefix(&buf[..len.min(HEADER)]);
        let total = answer.num_subflows as usize;
        if total > capacity && attempt < LISTING_ATTEMPTS {
            attempt += 1;
            capacity = total.min(MAX_LISTED_SUBFLOWS) + 2;
            continue;
        }
        let stride = stride::<T>(answer.size_user, option)?;
        // The kernel reports the header plus the bytes it copied.
        let end = len.clamp(HEADER, buf.len());
        let elements = buf[HEADER..end]
            .chunks_exact(stride)
            .take(total)
            .map(T::read_prefix)
            .collect();
        return Ok((elements, stride));
    }
}

/// Validates the element size the kernel says it wrote: between 1 and our
/// element size (the kernel takes the minimum of its size and ours).
fn stride<T>(size_user: u32, what: &str) -> io::Result<usize> {
    let stride = size_user as usize;
    if stride == 0 || stride > size_of::<T>() {
        return Err(invalid_data(format!(
            "the kernel reported {stride}-byte {what} elements (at most {} expected)",
            size_of::<T>()
        )));
    }
    Ok(stride)
}

fn addresses(addrs: &mptcp_subflow_addrs) -> io::Result<(SocketAddr, SocketAddr)> {
    Ok((
        socket_addr(&addrs.ss_local)?,
        socket_addr(&addrs.ss_remote)?,
    ))
}

fn socket_addr(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: `sockaddr_storage` is larger and at least as aligned as
            // `sockaddr_in`, all its bytes are initialised (`Pod`), and the
            // family says the kernel wrote a `sockaddr_in` there.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Ok(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )
            .into())
        }
        family => Err(invalid_data(format!(
            "subflow address of unknown family {family}"
        ))),
    }
}

/// Maps a failed `SOL_MPTCP` getsockopt: "unknown option" means either the
/// connection is not MPTCP (fallback or plain TCP) or the kernel predates
/// the option; [`is_mptcp`] tells which.
fn sol_mptcp_error(
    fd: BorrowedFd<'_>,
    err: io::Error,
    option: &'static str,
    since: &'static str,
) -> Error {
    if !is_unknown_option(&err) {
        return Error::Io(err);
    }
    match is_mptcp(fd) {
        Ok(false) => Error::NotMptcp,
        Ok(true) => Error::Unsupported { option, since },
        Err(err) => Error::Io(err),
    }
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// MPTCP queries on anything that holds a socket descriptor:
/// [`std::net::TcpStream`], [`std::net::TcpListener`], [`socket2::Socket`], `OwnedFd`,
/// `BorrowedFd` (for a raw descriptor, `BorrowedFd::borrow_raw`).
///
/// ```
/// use mptcp_core::info::MptcpExt;
/// use mptcp_core::socket::{self, Fallback};
///
/// let listener = socket::bind_listener("127.0.0.1:0", Fallback::Tcp)?;
/// let client = socket::connect(listener.local_addr()?, Fallback::Tcp)?;
/// if client.is_mptcp()? {
///     let info = client.mptcp_info()?;
///     let subflows = client.subflows()?;
///     assert_eq!(subflows.len(), usize::from(info.subflows) + 1);
///     println!("{} -> {}", subflows[0].local, subflows[0].remote);
/// }
/// # Ok::<(), mptcp_core::socket::Error>(())
/// ```
pub trait MptcpExt: AsFd {
    /// See [`crate::socket::is_mptcp`].
    fn is_mptcp(&self) -> io::Result<bool> {
        is_mptcp(self.as_fd())
    }

    /// See [`mptcp_info()`].
    fn mptcp_info(&self) -> Result<MptcpInfo> {
        mptcp_info(self.as_fd())
    }

    /// See [`subflows()`].
    fn subflows(&self) -> Result<Vec<Subflow>> {
        subflows(self.as_fd())
    }

    /// See [`full_info()`].
    fn full_info(&self) -> Result<FullInfo> {
        full_info(self.as_fd())
    }
}

impl<T: AsFd + ?Sized> MptcpExt for T {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::{Fallback, bind_listener, connect};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::fd::AsFd;
    use std::time::Instant;

    /// The first 104 bytes of `tcp_info` (up to `total_retrans`), to make
    /// the kernel write shorter elements than it has.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct TcpInfoPrefix([u32; 26]);
    // SAFETY: an array of integers.
    unsafe impl Pod for TcpInfoPrefix {}

    /// A connection over two links of the test bed, with both subflows up.
    fn two_subflows() -> (mptcp_testbed::TwoLinks, TcpStream, TcpStream) {
        let bed = mptcp_testbed::two_links(2, None).expect("the test bed (needs root)");
        let listener = bed
            .server
            .run(|| bind_listener((bed.server_addr(), 0), Fallback::Fail))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let client = bed.client.run(|| connect(addr, Fallback::Fail)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        // The client's path manager adds subflows once the connection is
        // fully established, which takes a data exchange.
        let mut byte = [0u8; 1];
        (&client).write_all(b"x").unwrap();
        server.read_exact(&mut byte).unwrap();
        server.write_all(b"y").unwrap();
        (&client).read_exact(&mut byte).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while subflows(client.as_fd()).unwrap().len() < 2 {
            assert!(
                Instant::now() < deadline,
                "the second subflow never came up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        (bed, client, server)
    }

    #[test]
    fn listings_grow_past_the_first_buffer_and_use_the_kernel_stride() {
        let (_bed, client, _server) = two_subflows();
        let fd = client.as_fd();
        let full = full_info_from(fd, 1).unwrap();
        assert_eq!(full.subflows.len(), 2);
        let by_parts = subflows_by_parts(fd, 1).unwrap();
        let addrs = |list: &[Subflow]| list.iter().map(|s| (s.local, s.remote)).collect::<Vec<_>>();
        assert_eq!(addrs(&by_parts), addrs(&full.subflows));
        assert!(by_parts.iter().all(|s| s.id.is_none()));
        assert!(full.subflows.iter().all(|s| s.id.is_some()));

        // Elements shorter than the kernel's: it writes them at our size,
        // packed; the second one is read from the right place.
        let (prefixes, stride) =
            subflow_array::<TcpInfoPrefix>(fd, MPTCP_TCPINFO, "MPTCP_TCPINFO", 1).unwrap();
        assert_eq!(stride, size_of::<TcpInfoPrefix>());
        assert_eq!(prefixes.len(), 2);
        for (prefix, subflow) in prefixes.iter().zip(&full.subflows) {
            assert_eq!(
                prefix.0[0] & 0xff,
                u32::from(subflow.tcp.state),
                "tcpi_state"
            );
            assert_eq!(
                prefix.0[4], subflow.tcp.snd_mss,
                "tcpi_snd_mss at offset 16"
            );
            assert_eq!(prefix.0[15], subflow.tcp.pmtu, "tcpi_pmtu at offset 60");
        }
    }

    #[test]
    fn by_parts_agrees_with_full_info_on_loopback() {
        let listener = bind_listener("[::1]:0", Fallback::Fail).unwrap();
        let client = connect(listener.local_addr().unwrap(), Fallback::Fail).unwrap();
        let _server = listener.accept().unwrap();
        let by_parts = subflows_by_parts(client.as_fd(), INITIAL_SUBFLOWS).unwrap();
        let full = full_info(client.as_fd()).unwrap();
        assert_eq!(by_parts.len(), 1);
        assert_eq!(by_parts[0].local, client.local_addr().unwrap());
        assert_eq!(by_parts[0].remote, client.peer_addr().unwrap());
        assert_eq!(full.subflows[0].local, by_parts[0].local);
        assert_eq!(full.subflows[0].remote, by_parts[0].remote);
    }

    #[test]
    fn mptcp_info_fields_follow_the_returned_length() {
        let mut raw = mptcp_info::zeroed();
        raw.mptcpi_retransmits = 7;
        raw.mptcpi_subflows_total = 2;
        raw.mptcpi_last_data_sent = 5;
        let old = MptcpInfo::from_raw(&raw, MPTCP_INFO_SIZE_5_16);
        assert_eq!(
            (old.retransmits, old.bytes_sent, old.subflows_total),
            (None, None, None)
        );
        let v6_5 = MptcpInfo::from_raw(&raw, MPTCP_INFO_SIZE_6_5);
        assert_eq!((v6_5.retransmits, v6_5.subflows_total), (Some(7), None));
        let v6_8 = MptcpInfo::from_raw(&raw, MPTCP_INFO_SIZE_6_8);
        assert_eq!((v6_8.subflows_total, v6_8.last_data_sent), (Some(2), None));
        let v6_10 = MptcpInfo::from_raw(&raw, MPTCP_INFO_SIZE_6_10);
        assert_eq!(v6_10.last_data_sent, Some(Duration::from_millis(5)));
    }

    #[test]
    fn tcp_info_fields_follow_the_returned_length() {
        let mut raw = tcp_info::zeroed();
        raw.tcpi_rcv_wnd = 1000;
        raw.tcpi_total_rto = 3;
        assert!(TcpInfo::from_raw(&raw, TCP_INFO_SIZE_5_5 - 4).is_err());
        let old = TcpInfo::from_raw(&raw, TCP_INFO_SIZE_5_5).unwrap();
        assert_eq!((old.rcv_wnd, old.total_rto), (None, None));
        let v6_2 = TcpInfo::from_raw(&raw, TCP_INFO_SIZE_6_2).unwrap();
        assert_eq!((v6_2.rcv_wnd, v6_2.total_rto), (Some(1000), None));
        let v6_7 = TcpInfo::from_raw(&raw, TCP_INFO_SIZE_6_7).unwrap();
        assert_eq!(v6_7.total_rto, Some(3));
    }
}
