//! Generic netlink ABI of the kernel path manager (`include/uapi/linux/mptcp_pm.h`)
//! and the few netlink / rtnetlink numbers the `pm` and `paths` modules need
//! that the netlink crates do not export.

/// Name of the MPTCP path-manager generic netlink family.
pub const MPTCP_PM_NAME: &str = "mptcp_pm";
/// Version of the family this code speaks.
pub const MPTCP_PM_VER: u8 = 1;
/// Multicast group carrying connection and listener events.
pub const MPTCP_PM_EV_GRP_NAME: &str = "mptcp_pm_events";

// Commands (`enum mptcp_pm_command`).
pub const MPTCP_PM_CMD_ADD_ADDR: u8 = 1;
pub const MPTCP_PM_CMD_DEL_ADDR: u8 = 2;
pub const MPTCP_PM_CMD_GET_ADDR: u8 = 3;
pub const MPTCP_PM_CMD_FLUSH_ADDRS: u8 = 4;
pub const MPTCP_PM_CMD_SET_LIMITS: u8 = 5;
pub const MPTCP_PM_CMD_GET_LIMITS: u8 = 6;
pub const MPTCP_PM_CMD_SET_FLAGS: u8 = 7;
pub const MPTCP_PM_CMD_ANNOUNCE: u8 = 8;
pub const MPTCP_PM_CMD_REMOVE: u8 = 9;
pub const MPTCP_PM_CMD_SUBFLOW_CREATE: u8 = 10;
pub const MPTCP_PM_CMD_SUBFLOW_DESTROY: u8 = 11;

// Top-level attributes (`enum mptcp_pm_attrs`).
pub const MPTCP_PM_ATTR_ADDR: u16 = 1;
pub const MPTCP_PM_ATTR_RCV_ADD_ADDRS: u16 = 2;
pub const MPTCP_PM_ATTR_SUBFLOWS: u16 = 3;
pub const MPTCP_PM_ATTR_TOKEN: u16 = 4;
pub const MPTCP_PM_ATTR_LOC_ID: u16 = 5;
pub const MPTCP_PM_ATTR_ADDR_REMOTE: u16 = 6;

// Attributes nested in `MPTCP_PM_ATTR_ADDR` / `_ADDR_REMOTE` (`enum mptcp_pm_addr_attrs`).
pub const MPTCP_PM_ADDR_ATTR_FAMILY: u16 = 1;
pub const MPTCP_PM_ADDR_ATTR_ID: u16 = 2;
pub const MPTCP_PM_ADDR_ATTR_ADDR4: u16 = 3;
pub const MPTCP_PM_ADDR_ATTR_ADDR6: u16 = 4;
/// u16 in host byte order (unlike the event attributes).
pub const MPTCP_PM_ADDR_ATTR_PORT: u16 = 5;
pub const MPTCP_PM_ADDR_ATTR_FLAGS: u16 = 6;
pub const MPTCP_PM_ADDR_ATTR_IF_IDX: u16 = 7;

// Endpoint flags (`MPTCP_PM_ADDR_FLAG_*`).
pub const MPTCP_PM_ADDR_FLAG_SIGNAL: u32 = 1 << 0;
pub const MPTCP_PM_ADDR_FLAG_SUBFLOW: u32 = 1 << 1;
pub const MPTCP_PM_ADDR_FLAG_BACKUP: u32 = 1 << 2;
pub const MPTCP_PM_ADDR_FLAG_FULLMESH: u32 = 1 << 3;
pub const MPTCP_PM_ADDR_FLAG_IMPLICIT: u32 = 1 << 4;
pub const MPTCP_PM_ADDR_FLAG_LAMINAR: u32 = 1 << 5;

/// Most endpoints and largest limit the in-kernel path manager accepts
/// (`MPTCP_PM_ADDR_MAX`).
pub const MPTCP_PM_ADDR_MAX: usize = 8;

// Events (`enum mptcp_event_type`).
pub const MPTCP_EVENT_CREATED: u8 = 1;
pub const MPTCP_EVENT_ESTABLISHED: u8 = 2;
pub const MPTCP_EVENT_CLOSED: u8 = 3;
pub const MPTCP_EVENT_ANNOUNCED: u8 = 6;
pub const MPTCP_EVENT_REMOVED: u8 = 7;
pub const MPTCP_EVENT_SUB_ESTABLISHED: u8 = 10;
pub const MPTCP_EVENT_SUB_CLOSED: u8 = 11;
pub const MPTCP_EVENT_SUB_PRIORITY: u8 = 13;
pub const MPTCP_EVENT_LISTENER_CREATED: u8 = 15;
pub const MPTCP_EVENT_LISTENER_CLOSED: u8 = 16;

// Event attributes (`enum mptcp_event_attr`).
pub const MPTCP_ATTR_TOKEN: u16 = 1;
pub const MPTCP_ATTR_FAMILY: u16 = 2;
pub const MPTCP_ATTR_LOC_ID: u16 = 3;
pub const MPTCP_ATTR_REM_ID: u16 = 4;
pub const MPTCP_ATTR_SADDR4: u16 = 5;
pub const MPTCP_ATTR_SADDR6: u16 = 6;
pub const MPTCP_ATTR_DADDR4: u16 = 7;
pub const MPTCP_ATTR_DADDR6: u16 = 8;
/// be16 (network byte order).
pub const MPTCP_ATTR_SPORT: u16 = 9;
/// be16 (network byte order).
pub const MPTCP_ATTR_DPORT: u16 = 10;
pub const MPTCP_ATTR_BACKUP: u16 = 11;
pub const MPTCP_ATTR_ERROR: u16 = 12;
pub const MPTCP_ATTR_FLAGS: u16 = 13;
pub const MPTCP_ATTR_TIMEOUT: u16 = 14;
pub const MPTCP_ATTR_IF_IDX: u16 = 15;
pub const MPTCP_ATTR_RESET_REASON: u16 = 16;
pub const MPTCP_ATTR_RESET_FLAGS: u16 = 17;
pub const MPTCP_ATTR_SERVER_SIDE: u16 = 18;

// Bits of `MPTCP_ATTR_FLAGS`.
pub const MPTCP_PM_EV_FLAG_DENY_JOIN_ID0: u16 = 1 << 0;
pub const MPTCP_PM_EV_FLAG_SERVER_SIDE: u16 = 1 << 1;

// Extended-ACK error reports (`include/uapi/linux/netlink.h`).
/// `nlmsghdr.nlmsg_flags` of an NLMSG_ERROR: the echoed request is capped to its header.
pub const NLM_F_CAPPED: u16 = 0x100;
/// `nlmsghdr.nlmsg_flags` of an NLMSG_ERROR: extended-ACK TLVs follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
pub const NLMSGERR_ATTR_MSG: u16 = 1;
/// Length of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;

// rtnetlink multicast groups (`enum rtnetlink_groups`, 1-based numbers for NETLINK_ADD_MEMBERSHIP).
pub const RTNLGRP_LINK: u32 = 1;
pub const RTNLGRP_IPV4_IFADDR: u32 = 5;
pub const RTNLGRP_IPV4_ROUTE: u32 = 7;
pub const RTNLGRP_IPV6_IFADDR: u32 = 9;
pub const RTNLGRP_IPV6_ROUTE: u32 = 11;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_distinct_bits() {
        let all = [
            MPTCP_PM_ADDR_FLAG_SIGNAL,
            MPTCP_PM_ADDR_FLAG_SUBFLOW,
            MPTCP_PM_ADDR_FLAG_BACKUP,
            MPTCP_PM_ADDR_FLAG_FULLMESH,
            MPTCP_PM_ADDR_FLAG_IMPLICIT,
            MPTCP_PM_ADDR_FLAG_LAMINAR,
        ];
        assert_eq!(all.iter().fold(0, |acc, f| acc | f), 0x3f);
    }
}
