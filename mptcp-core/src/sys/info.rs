//! Connection-inspection ABI: the `SOL_MPTCP` options and the structures
//! they fill (`include/uapi/linux/mptcp.h`), and `struct tcp_info`
//! (`include/uapi/linux/tcp.h`) as of Linux 6.7 (what later kernels add is
//! not read).
//!
//! Each structure grew over kernel versions. The kernel copies
//! `min(its size, the size we pass)` and reports that length, so the length
//! tells which fields are real. The `*_SIZE_*` constants are the sizes of the
//! older versions of each structure (with their padding): a field introduced
//! by version V is present when the returned length is at least V's size.
#![allow(non_camel_case_types)]

use std::mem::{align_of, offset_of, size_of};

use super::Pod;

/// `MPTCP_INFO` (5.16): `struct mptcp_info` of the connection.
pub const MPTCP_INFO: libc::c_int = 1;
/// `MPTCP_TCPINFO` (5.16): `struct mptcp_subflow_data` + one `tcp_info` per
/// subflow.
pub const MPTCP_TCPINFO: libc::c_int = 2;
/// `MPTCP_SUBFLOW_ADDRS` (5.16): `struct mptcp_subflow_data` + one
/// `struct mptcp_subflow_addrs` per subflow.
pub const MPTCP_SUBFLOW_ADDRS: libc::c_int = 3;
/// `MPTCP_FULL_INFO` (6.5): `struct mptcp_full_info`, all of the above at once.
pub const MPTCP_FULL_INFO: libc::c_int = 4;

/// `MPTCP_INFO_FLAG_FALLBACK`: the connection fell back to TCP.
pub const MPTCP_INFO_FLAG_FALLBACK: u32 = 1 << 0;
/// `MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED`: the peer's key was received.
pub const MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED: u32 = 1 << 1;

/// `struct mptcp_info` (96 bytes since Linux 6.10).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mptcp_info {
    pub mptcpi_subflows: u8,
    pub mptcpi_add_addr_signal: u8,
    pub mptcpi_add_addr_accepted: u8,
    pub mptcpi_subflows_max: u8,
    pub mptcpi_add_addr_signal_max: u8,
    pub mptcpi_add_addr_accepted_max: u8,
    pub mptcpi_flags: u32,
    pub mptcpi_token: u32,
    pub mptcpi_write_seq: u64,
    pub mptcpi_snd_una: u64,
    pub mptcpi_rcv_nxt: u64,
    pub mptcpi_local_addr_used: u8,
    pub mptcpi_local_addr_max: u8,
    pub mptcpi_csum_enabled: u8,
    /// Linux 6.5 (in what was padding before).
    pub mptcpi_retransmits: u32,
    /// Linux 6.5.
    pub mptcpi_bytes_retrans: u64,
    pub mptcpi_bytes_sent: u64,
    pub mptcpi_bytes_received: u64,
    pub mptcpi_bytes_acked: u64,
    /// Linux 6.8.
    pub mptcpi_subflows_total: u8,
    /// Reserved (zero) before Linux 6.18.
    pub mptcpi_endp_laminar_max: u8,
    /// Reserved (zero) before Linux 6.18.
    pub mptcpi_endp_fullmesh_max: u8,
    pub reserved: u8,
    /// Linux 6.10.
    pub mptcpi_last_data_sent: u32,
    pub mptcpi_last_data_recv: u32,
    pub mptcpi_last_ack_recv: u32,
}

/// Size of `struct mptcp_info` in Linux 5.16 to 6.4 (up to `csum_enabled`).
pub const MPTCP_INFO_SIZE_5_16: usize = 48;
/// Size in Linux 6.5 to 6.7 (up to `bytes_acked`).
pub const MPTCP_INFO_SIZE_6_5: usize = 80;
/// Size in Linux 6.8 and 6.9 (up to `subflows_total`).
pub const MPTCP_INFO_SIZE_6_8: usize = 88;
/// Size since Linux 6.10 (up to `last_ack_recv`).
pub const MPTCP_INFO_SIZE_6_10: usize = 96;

const _: () = {
    assert!(size_of::<mptcp_info>() == MPTCP_INFO_SIZE_6_10);
    assert!(align_of::<mptcp_info>() == 8);
    assert!(offset_of!(mptcp_info, mptcpi_add_addr_accepted_max) == 5);
    assert!(offset_of!(mptcp_info, mptcpi_flags) == 8);
    assert!(offset_of!(mptcp_info, mptcpi_token) == 12);
    assert!(offset_of!(mptcp_info, mptcpi_write_seq) == 16);
    assert!(offset_of!(mptcp_info, mptcpi_snd_una) == 24);
    assert!(offset_of!(mptcp_info, mptcpi_rcv_nxt) == 32);
    assert!(offset_of!(mptcp_info, mptcpi_local_addr_used) == 40);
    assert!(offset_of!(mptcp_info, mptcpi_local_addr_max) == 41);
    assert!(offset_of!(mptcp_info, mptcpi_csum_enabled) == 42);
    assert!(offset_of!(mptcp_info, mptcpi_retransmits) == 44);
    assert!(offset_of!(mptcp_info, mptcpi_bytes_retrans) == 48);
    assert!(offset_of!(mptcp_info, mptcpi_bytes_sent) == 56);
    assert!(offset_of!(mptcp_info, mptcpi_bytes_received) == 64);
    assert!(offset_of!(mptcp_info, mptcpi_bytes_acked) == 72);
    assert!(offset_of!(mptcp_info, mptcpi_subflows_total) == 80);
    assert!(offset_of!(mptcp_info, mptcpi_endp_laminar_max) == 81);
    assert!(offset_of!(mptcp_info, mptcpi_endp_fullmesh_max) == 82);
    assert!(offset_of!(mptcp_info, reserved) == 83);
    assert!(offset_of!(mptcp_info, mptcpi_last_data_sent) == 84);
    assert!(offset_of!(mptcp_info, mptcpi_last_data_recv) == 88);
    assert!(offset_of!(mptcp_info, mptcpi_last_ack_recv) == 92);
    // The older sizes end where the fields of the next version start
    // (rounded up to the 8-byte alignment).
    assert!(
        (offset_of!(mptcp_info, mptcpi_csum_enabled) + 1).next_multiple_of(8)
            == MPTCP_INFO_SIZE_5_16
    );
    assert!(offset_of!(mptcp_info, mptcpi_bytes_acked) + 8 == MPTCP_INFO_SIZE_6_5);
    assert!(
        (offset_of!(mptcp_info, mptcpi_subflows_total) + 1).next_multiple_of(8)
            == MPTCP_INFO_SIZE_6_8
    );
};

/// `struct mptcp_subflow_data`: the header of `MPTCP_TCPINFO` and
/// `MPTCP_SUBFLOW_ADDRS` answers. `num_subflows` and `size_kernel` must be
/// zero on input; the kernel sets `num_subflows` to the real number of
/// subflows (even when fewer fit), `size_kernel` to its element size and
/// `size_user` to `min(size_user, size_kernel)`, the stride of the array it
/// wrote right after `size_subflow_data` bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default)]
pub struct mptcp_subflow_data {
    pub size_subflow_data: u32,
    pub num_subflows: u32,
    pub size_kernel: u32,
    pub size_user: u32,
}

const _: () = {
    assert!(size_of::<mptcp_subflow_data>() == 16);
    assert!(align_of::<mptcp_subflow_data>() == 8);
    assert!(offset_of!(mptcp_subflow_data, num_subflows) == 4);
    assert!(offset_of!(mptcp_subflow_data, size_kernel) == 8);
    assert!(offset_of!(mptcp_subflow_data, size_user) == 12);
};

impl mptcp_subflow_data {
    /// Writes the header at the start of `buf` in native byte order (the
    /// struct has no padding, so this is its exact memory image).
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than 16 bytes.
    pub fn write_to(&self, buf: &mut [u8]) {
        let fields = [
            self.size_subflow_data,
            self.num_subflows,
            self.size_kernel,
            self.size_user,
        ];
        for (chunk, field) in buf[..size_of::<Self>()].chunks_exact_mut(4).zip(fields) {
            chunk.copy_from_slice(&field.to_ne_bytes());
        }
    }
}

/// `struct mptcp_subflow_addrs`: two unions of `sockaddr`, `sockaddr_in`,
/// `sockaddr_in6` and `__kernel_sockaddr_storage`, represented by the
/// storage member (same size and alignment).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct mptcp_subflow_addrs {
    pub ss_local: libc::sockaddr_storage,
    pub ss_remote: libc::sockaddr_storage,
}

const _: () = {
    assert!(size_of::<libc::sockaddr_storage>() == 128);
    assert!(size_of::<mptcp_subflow_addrs>() == 256);
    assert!(offset_of!(mptcp_subflow_addrs, ss_remote) == 128);
};

/// `struct mptcp_subflow_info` (6.5): the per-subflow entry of
/// `MPTCP_FULL_INFO`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct mptcp_subflow_info {
    pub id: u32,
    pub addrs: mptcp_subflow_addrs,
}

const _: () = {
    assert!(offset_of!(mptcp_subflow_info, addrs) == 8);
    assert!(size_of::<mptcp_subflow_info>() == 264);
};

/// `struct mptcp_full_info` (6.5). `subflow_info` and `tcp_info` are user
/// pointers (as `__aligned_u64`) to arrays of `size_arrays_user` elements of
/// `size_sfinfo_user` and `size_tcpinfo_user` bytes. The kernel sets the
/// `*_kernel` sizes, lowers the `*_user` sizes to
/// `min(user, kernel)` (the strides it wrote), and sets `num_subflows` to the
/// real number of subflows. It returns `40 + min(optlen - 40, sizeof
/// mptcp_info)` as the length.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mptcp_full_info {
    pub size_tcpinfo_kernel: u32,
    pub size_tcpinfo_user: u32,
    pub size_sfinfo_kernel: u32,
    pub size_sfinfo_user: u32,
    pub num_subflows: u32,
    pub size_arrays_user: u32,
    pub subflow_info: u64,
    pub tcp_info: u64,
    pub mptcp_info: mptcp_info,
}

const _: () = {
    assert!(offset_of!(mptcp_full_info, num_subflows) == 16);
    assert!(offset_of!(mptcp_full_info, size_arrays_user) == 20);
    assert!(offset_of!(mptcp_full_info, subflow_info) == 24);
    assert!(offset_of!(mptcp_full_info, tcp_info) == 32);
    assert!(offset_of!(mptcp_full_info, mptcp_info) == MPTCP_FULL_INFO_HEADER_SIZE);
    assert!(size_of::<mptcp_full_info>() == 136);
};

/// Bytes of `struct mptcp_full_info` before its `mptcp_info` member (the
/// kernel's `MIN_FULL_INFO_OPTLEN_SIZE`).
pub const MPTCP_FULL_INFO_HEADER_SIZE: usize = 40;

/// `struct tcp_info` up to `tcpi_total_rto_time` (Linux 6.7). Newer kernels
/// have a longer struct; they copy only the prefix we ask for.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tcp_info {
    pub tcpi_state: u8,
    pub tcpi_ca_state: u8,
    pub tcpi_retransmits: u8,
    pub tcpi_probes: u8,
    pub tcpi_backoff: u8,
    pub tcpi_options: u8,
    /// Bit fields `snd_wscale:4, rcv_wscale:4`.
    pub tcpi_wscale: u8,
    /// Bit fields `delivery_rate_app_limited:1, fastopen_client_fail:2`.
    pub tcpi_flags: u8,
    pub tcpi_rto: u32,
    pub tcpi_ato: u32,
    pub tcpi_snd_mss: u32,
    pub tcpi_rcv_mss: u32,
    pub tcpi_unacked: u32,
    pub tcpi_sacked: u32,
    pub tcpi_lost: u32,
    pub tcpi_retrans: u32,
    pub tcpi_fackets: u32,
    pub tcpi_last_data_sent: u32,
    pub tcpi_last_ack_sent: u32,
    pub tcpi_last_data_recv: u32,
    pub tcpi_last_ack_recv: u32,
    pub tcpi_pmtu: u32,
    pub tcpi_rcv_ssthresh: u32,
    pub tcpi_rtt: u32,
    pub tcpi_rttvar: u32,
    pub tcpi_snd_ssthresh: u32,
    pub tcpi_snd_cwnd: u32,
    pub tcpi_advmss: u32,
    pub tcpi_reordering: u32,
    pub tcpi_rcv_rtt: u32,
    pub tcpi_rcv_space: u32,
    pub tcpi_total_retrans: u32,
    pub tcpi_pacing_rate: u64,
    pub tcpi_max_pacing_rate: u64,
    pub tcpi_bytes_acked: u64,
    pub tcpi_bytes_received: u64,
    pub tcpi_segs_out: u32,
    pub tcpi_segs_in: u32,
    pub tcpi_notsent_bytes: u32,
    pub tcpi_min_rtt: u32,
    pub tcpi_data_segs_in: u32,
    pub tcpi_data_segs_out: u32,
    pub tcpi_delivery_rate: u64,
    pub tcpi_busy_time: u64,
    pub tcpi_rwnd_limited: u64,
    pub tcpi_sndbuf_limited: u64,
    pub tcpi_delivered: u32,
    pub tcpi_delivered_ce: u32,
    pub tcpi_bytes_sent: u64,
    pub tcpi_bytes_retrans: u64,
    pub tcpi_dsack_dups: u32,
    pub tcpi_reord_seen: u32,
    pub tcpi_rcv_ooopack: u32,
    pub tcpi_snd_wnd: u32,
    /// Linux 6.2.
    pub tcpi_rcv_wnd: u32,
    pub tcpi_rehash: u32,
    /// Linux 6.7.
    pub tcpi_total_rto: u16,
    pub tcpi_total_rto_recoveries: u16,
    pub tcpi_total_rto_time: u32,
}

/// Size of `struct tcp_info` in Linux 5.5 to 6.1 (up to `snd_wnd`): every
/// kernel with `MPTCP_TCPINFO` (5.16+) returns at least this much.
pub const TCP_INFO_SIZE_5_5: usize = 232;
/// Size in Linux 6.2 to 6.6 (up to `rehash`).
pub const TCP_INFO_SIZE_6_2: usize = 240;
/// Size in Linux 6.7 (up to `total_rto_time`), the prefix read here.
pub const TCP_INFO_SIZE_6_7: usize = 248;

const _: () = {
    assert!(size_of::<tcp_info>() == TCP_INFO_SIZE_6_7);
    assert!(align_of::<tcp_info>() == 8);
    assert!(offset_of!(tcp_info, tcpi_wscale) == 6);
    assert!(offset_of!(tcp_info, tcpi_rto) == 8);
    assert!(offset_of!(tcp_info, tcpi_unacked) == 24);
    assert!(offset_of!(tcp_info, tcpi_lost) == 32);
    assert!(offset_of!(tcp_info, tcpi_retrans) == 36);
    assert!(offset_of!(tcp_info, tcpi_last_data_sent) == 44);
    assert!(offset_of!(tcp_info, tcpi_last_ack_recv) == 56);
    assert!(offset_of!(tcp_info, tcpi_pmtu) == 60);
    assert!(offset_of!(tcp_info, tcpi_rtt) == 68);
    assert!(offset_of!(tcp_info, tcpi_rttvar) == 72);
    assert!(offset_of!(tcp_info, tcpi_snd_ssthresh) == 76);
    assert!(offset_of!(tcp_info, tcpi_snd_cwnd) == 80);
    assert!(offset_of!(tcp_info, tcpi_total_retrans) == 100);
    assert!(offset_of!(tcp_info, tcpi_pacing_rate) == 104);
    assert!(offset_of!(tcp_info, tcpi_bytes_acked) == 120);
    assert!(offset_of!(tcp_info, tcpi_bytes_received) == 128);
    assert!(offset_of!(tcp_info, tcpi_segs_out) == 136);
    assert!(offset_of!(tcp_info, tcpi_notsent_bytes) == 144);
    assert!(offset_of!(tcp_info, tcpi_min_rtt) == 148);
    assert!(offset_of!(tcp_info, tcpi_delivery_rate) == 160);
    assert!(offset_of!(tcp_info, tcpi_busy_time) == 168);
    assert!(offset_of!(tcp_info, tcpi_delivered) == 192);
    assert!(offset_of!(tcp_info, tcpi_bytes_sent) == 200);
    assert!(offset_of!(tcp_info, tcpi_bytes_retrans) == 208);
    assert!(offset_of!(tcp_info, tcpi_dsack_dups) == 216);
    assert!(offset_of!(tcp_info, tcpi_rcv_ooopack) == 224);
    assert!(offset_of!(tcp_info, tcpi_snd_wnd) == 228);
    assert!(offset_of!(tcp_info, tcpi_rcv_wnd) == TCP_INFO_SIZE_5_5);
    assert!(offset_of!(tcp_info, tcpi_rehash) == 236);
    assert!(offset_of!(tcp_info, tcpi_total_rto) == TCP_INFO_SIZE_6_2);
    assert!(offset_of!(tcp_info, tcpi_total_rto_recoveries) == 242);
    assert!(offset_of!(tcp_info, tcpi_total_rto_time) == 244);
};

// SAFETY: all of these are `#[repr(C)]` structs of integers and integer
// arrays (`sockaddr_storage` included): every byte pattern is valid.
unsafe impl Pod for mptcp_info {}
// SAFETY: as above.
unsafe impl Pod for mptcp_subflow_data {}
// SAFETY: as above.
unsafe impl Pod for mptcp_subflow_addrs {}
// SAFETY: as above.
unsafe impl Pod for mptcp_subflow_info {}
// SAFETY: as above (the two `u64` are addresses the kernel only reads).
unsafe impl Pod for mptcp_full_info {}
// SAFETY: as above.
unsafe impl Pod for tcp_info {}
