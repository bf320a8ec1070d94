//! Socket diagnostics ABI (`NETLINK_SOCK_DIAG`, `include/uapi/linux/inet_diag.h`,
//! `sock_diag.h`, the `MPTCP_SUBFLOW_ATTR_*` enum of `mptcp.h`): what
//! `ss -M` and `ss -ti` read.
//!
//! All multi-byte fields of [`inet_diag_sockid`] that hold ports and
//! addresses are in network byte order; everything else is host order.

use std::mem::{offset_of, size_of};

use super::Pod;

/// Netlink protocol of the socket diagnostics family (`NETLINK_SOCK_DIAG`).
pub const NETLINK_SOCK_DIAG: libc::c_int = 4;
/// Message type of a dump request by address family (`SOCK_DIAG_BY_FAMILY`).
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// Netlink flags for a dump request: `NLM_F_REQUEST | NLM_F_DUMP`.
pub const NLM_F_REQUEST: u16 = 0x01;
/// `NLM_F_ROOT | NLM_F_MATCH`.
pub const NLM_F_DUMP: u16 = 0x300;
/// End of a multipart dump.
pub const NLMSG_DONE: u16 = 3;
/// Error (or acknowledgement) message: payload is `struct nlmsgerr`.
pub const NLMSG_ERROR: u16 = 2;
/// Size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Size of `struct nlattr` (also `struct rtattr`).
pub const NLA_HDRLEN: usize = 4;
/// Bit of `nla_type` set on nested attributes by some senders.
pub const NLA_F_NESTED: u16 = 1 << 15;
/// Mask that removes the `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER` bits.
pub const NLA_TYPE_MASK: u16 = !(3 << 14);

/// `struct inet_diag_sockid`: identifies one socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct inet_diag_sockid {
    /// Source port, network byte order.
    pub idiag_sport: u16,
    /// Destination port, network byte order.
    pub idiag_dport: u16,
    /// Source address (IPv4 in the first word), network byte order.
    pub idiag_src: [u32; 4],
    /// Destination address, network byte order.
    pub idiag_dst: [u32; 4],
    pub idiag_if: u32,
    pub idiag_cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`: the dump request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct inet_diag_req_v2 {
    pub sdiag_family: u8,
    /// Only 8 bits: protocols above 255 (MPTCP, 262) go in an
    /// [`INET_DIAG_REQ_PROTOCOL`] attribute after the struct.
    pub sdiag_protocol: u8,
    /// Bit `1 << (attr - 1)` asks for attribute `attr` (attributes 1 to 8).
    pub idiag_ext: u8,
    pub pad: u8,
    /// Bit `1 << state` selects sockets in TCP state `state`.
    pub idiag_states: u32,
    pub id: inet_diag_sockid,
}

/// `struct inet_diag_msg`: one socket in a dump answer, followed by
/// attributes (`INET_DIAG_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct inet_diag_msg {
    pub idiag_family: u8,
    /// TCP state (`TCP_ESTABLISHED` = 1, ..., `TCP_LISTEN` = 10).
    pub idiag_state: u8,
    pub idiag_timer: u8,
    pub idiag_retrans: u8,
    pub id: inet_diag_sockid,
    pub idiag_expires: u32,
    pub idiag_rqueue: u32,
    pub idiag_wqueue: u32,
    pub idiag_uid: u32,
    pub idiag_inode: u32,
}

const _: () = {
    assert!(size_of::<inet_diag_sockid>() == 48);
    assert!(offset_of!(inet_diag_sockid, idiag_src) == 4);
    assert!(offset_of!(inet_diag_sockid, idiag_dst) == 20);
    assert!(offset_of!(inet_diag_sockid, idiag_if) == 36);
    assert!(offset_of!(inet_diag_sockid, idiag_cookie) == 40);
    assert!(size_of::<inet_diag_req_v2>() == 56);
    assert!(offset_of!(inet_diag_req_v2, idiag_states) == 4);
    assert!(offset_of!(inet_diag_req_v2, id) == 8);
    assert!(size_of::<inet_diag_msg>() == 72);
    assert!(offset_of!(inet_diag_msg, id) == 4);
    assert!(offset_of!(inet_diag_msg, idiag_expires) == 52);
    assert!(offset_of!(inet_diag_msg, idiag_uid) == 64);
    assert!(offset_of!(inet_diag_msg, idiag_inode) == 68);
};

impl inet_diag_req_v2 {
    /// The request as the kernel reads it.
    pub fn to_bytes(&self) -> [u8; size_of::<inet_diag_req_v2>()] {
        let mut out = [0u8; size_of::<inet_diag_req_v2>()];
        // SAFETY: `self` is a `#[repr(C)]` struct of integers without padding
        // (the size assert above equals the sum of its fields), so all of its
        // `out.len()` bytes are initialised; `out` is a distinct local.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self as *const Self).cast::<u8>(),
                out.as_mut_ptr(),
                out.len(),
            );
        }
        out
    }
}

// SAFETY: `#[repr(C)]` structs of integers and integer arrays only: every
// byte pattern is a valid value.
unsafe impl Pod for inet_diag_sockid {}
// SAFETY: as above.
unsafe impl Pod for inet_diag_req_v2 {}
// SAFETY: as above.
unsafe impl Pod for inet_diag_msg {}

/// Request attribute: `u32` protocol that overrides `sdiag_protocol`
/// (`INET_DIAG_REQ_PROTOCOL`, Linux 5.9+).
pub const INET_DIAG_REQ_PROTOCOL: u16 = 3;

/// Answer attribute: `tcp_info` for TCP sockets, `mptcp_info` for MPTCP
/// sockets (`INET_DIAG_INFO`).
pub const INET_DIAG_INFO: u16 = 2;
/// Answer attribute: nested upper-layer protocol information
/// (`INET_DIAG_ULP_INFO`), sent unasked for TCP sockets with a ULP.
pub const INET_DIAG_ULP_INFO: u16 = 19;

/// Nested in [`INET_DIAG_ULP_INFO`]: the ULP name, a NUL-terminated string.
pub const INET_ULP_INFO_NAME: u16 = 1;
/// Nested in [`INET_DIAG_ULP_INFO`]: the MPTCP subflow attributes.
pub const INET_ULP_INFO_MPTCP: u16 = 3;

/// `u32`: the connection token of the peer.
pub const MPTCP_SUBFLOW_ATTR_TOKEN_REM: u16 = 1;
/// `u32`: the local connection token (`mptcpi_token` of the MPTCP socket).
pub const MPTCP_SUBFLOW_ATTR_TOKEN_LOC: u16 = 2;
/// `u32`: `MPTCP_SUBFLOW_FLAG_*`.
pub const MPTCP_SUBFLOW_ATTR_FLAGS: u16 = 8;
/// `u8`: remote address id.
pub const MPTCP_SUBFLOW_ATTR_ID_REM: u16 = 9;
/// `u8`: local address id.
pub const MPTCP_SUBFLOW_ATTR_ID_LOC: u16 = 10;

/// The peer asked for a backup subflow (`MPTCP_SUBFLOW_FLAG_BKUP_REM`).
pub const MPTCP_SUBFLOW_FLAG_BKUP_REM: u32 = 1 << 4;
/// This side marked the subflow backup (`MPTCP_SUBFLOW_FLAG_BKUP_LOC`).
pub const MPTCP_SUBFLOW_FLAG_BKUP_LOC: u32 = 1 << 5;
/// `MPTCP_SUBFLOW_FLAG_FULLY_ESTABLISHED`.
pub const MPTCP_SUBFLOW_FLAG_FULLY_ESTABLISHED: u32 = 1 << 6;

/// All TCP states but `TCP_LISTEN` (10), `TCP_TIME_WAIT` (6),
/// `TCP_SYN_RECV` (3) and `TCP_NEW_SYN_RECV` (12): connections that carry data.
pub const STATES_CONNECTED: u32 = !((1 << 10) | (1 << 6) | (1 << 3) | (1 << 12)) & 0x1fff;
