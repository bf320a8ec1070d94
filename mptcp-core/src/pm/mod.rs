//! The kernel's MPTCP path manager over generic netlink (`mptcp_pm`).
//!
//! The kernel opens extra subflows only on paths it has been told about.
//! [`PathManager`] speaks the whole `mptcp_pm` interface: endpoints (what
//! `ip mptcp endpoint` manages), limits (`ip mptcp limits`) and the
//! userspace path manager commands (`net.mptcp.pm_type=1`). [`EventListener`]
//! receives connection and subflow events (`ip mptcp monitor`).
//!
//! Everything is blocking and needs no async runtime. Sockets are opened by
//! the calling thread and therefore live in that thread's network namespace.
//!
//! ```no_run
//! use mptcp_core::pm::{Endpoint, EndpointFlags, Limits, PathManager};
//!
//! let mut pm = PathManager::open()?;
//! pm.set_limits(Limits { subflows: 2, add_addr_accepted: 2 })?;
//! pm.add_endpoint(&Endpoint::new("198.18.1.1".parse().unwrap(), EndpointFlags::SUBFLOW))?;
//! for endpoint in pm.endpoints()? {
//!     println!("{endpoint}"); // 198.18.1.1 id 1 subflow
//! }
//! # Ok::<(), mptcp_core::pm::Error>(())
//! ```
#![forbid(unsafe_code)]

mod error;
mod event;
mod message;
pub(crate) mod transport;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    ops::{BitOr, BitOrAssign},
    str::FromStr,
};

use netlink_packet_generic::{
    GenlMessage,
    ctrl::{
        GenlCtrl, GenlCtrlCmd,
        nlas::{GenlCtrlAttrs, McastGrpAttrs},
    },
};
use netlink_sys::protocols::NETLINK_GENERIC;

pub use self::{
    error::{Error, Result},
    event::{Event, EventFlags, EventKind, EventListener},
};
use self::{
    message::{AddrAttr, PmAttr, PmMessage},
    transport::{Kind, Transport},
};
use crate::sys::pm::*;

/// Flags of an endpoint, as `ip mptcp endpoint` spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EndpointFlags(u32);

impl EndpointFlags {
    /// No flag: the endpoint is known but neither announced nor used.
    pub const NONE: Self = Self(0);
    /// Announce this address to the peer (`ADD_ADDR`); for servers.
    pub const SIGNAL: Self = Self(MPTCP_PM_ADDR_FLAG_SIGNAL);
    /// Open a subflow from this address towards the peer; for clients.
    pub const SUBFLOW: Self = Self(MPTCP_PM_ADDR_FLAG_SUBFLOW);
    /// Subflows on this address are backups, used when the others fail.
    pub const BACKUP: Self = Self(MPTCP_PM_ADDR_FLAG_BACKUP);
    /// Open a subflow from this address to every address of the peer.
    pub const FULLMESH: Self = Self(MPTCP_PM_ADDR_FLAG_FULLMESH);
    /// Set by the kernel on addresses it learnt from connections.
    pub const IMPLICIT: Self = Self(MPTCP_PM_ADDR_FLAG_IMPLICIT);
    /// Use this address for subflows towards addresses the peer announces
    /// (kernels 6.18 and later).
    pub const LAMINAR: Self = Self(MPTCP_PM_ADDR_FLAG_LAMINAR);

    const NAMES: [(Self, &'static str); 6] = [
        (Self::SIGNAL, "signal"),
        (Self::SUBFLOW, "subflow"),
        (Self::BACKUP, "backup"),
        (Self::FULLMESH, "fullmesh"),
        (Self::IMPLICIT, "implicit"),
        (Self::LAMINAR, "laminar"),
    ];

    /// The kernel's bit value.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Flags from the kernel's bit value (unknown bits are kept).
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` without the flags of `other`.
    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Refuses what iproute2 refuses: `signal` with `fullmesh`, and the
    /// kernel-only `implicit` flag.
    fn validate(self) -> Result<()> {
        if self.contains(Self::SIGNAL | Self::FULLMESH) {
            return Err(Error::Invalid(
                "flags mustn't have both signal and fullmesh: a fullmesh endpoint opens subflows, \
                 it is not announced"
                    .into(),
            ));
        }
        if self.contains(Self::IMPLICIT) {
            return Err(Error::Invalid(
                "the implicit flag is set by the kernel only, it cannot be requested".into(),
            ));
        }
        Ok(())
    }
}

impl BitOr for EndpointFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for EndpointFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for EndpointFlags {
    /// Space-separated flag names (`signal backup`), empty for none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        let mut known = 0;
        for (flag, name) in Self::NAMES {
            known |= flag.0;
            if self.contains(flag) {
                write!(f, "{sep}{name}")?;
                sep = " ";
            }
        }
        if self.0 & !known != 0 {
            write!(f, "{sep}flags {:#x}", self.0 & !known)?;
        }
        Ok(())
    }
}

impl FromStr for EndpointFlags {
    type Err = Error;

    /// Parses flag names separated by spaces or commas (`"subflow,backup"`).
    fn from_str(s: &str) -> Result<Self> {
        s.split([' ', ','])
            .filter(|word| !word.is_empty())
            .try_fold(Self::NONE, |flags, word| {
                Self::NAMES
                    .iter()
                    .find(|(_, name)| name.eq_ignore_ascii_case(word))
                    .map(|(flag, _)| flags | *flag)
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "unknown endpoint flag {word:?}: expected signal, subflow, backup, \
                             fullmesh or laminar"
                        ))
                    })
            })
    }
}

/// A path-manager endpoint: a local address the kernel may announce or
/// open subflows from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Endpoint id (1..=255); 0 when adding means "let the kernel choose".
    pub id: u8,
    /// The local address.
    pub addr: IpAddr,
    /// Port to announce and listen on (`signal` endpoints only).
    pub port: Option<u16>,
    /// Interface the subflows are bound to (`dev`).
    pub ifindex: Option<u32>,
    /// Flags.
    pub flags: EndpointFlags,
}

impl Endpoint {
    /// An endpoint on `addr` with `flags`, id chosen by the kernel.
    pub fn new(addr: IpAddr, flags: EndpointFlags) -> Self {
        Endpoint {
            id: 0,
            addr,
            port: None,
            ifindex: None,
            flags,
        }
    }

    /// Refuses what iproute2 refuses before asking the kernel.
    fn validate(&self) -> Result<()> {
        self.flags.validate()?;
        if self.port.is_some() && !self.flags.contains(EndpointFlags::SIGNAL) {
            return Err(Error::Invalid(format!(
                "endpoint {self}: flags must have signal when using port (the port is announced \
                 to the peer)"
            )));
        }
        Ok(())
    }

    fn attrs(&self) -> Vec<AddrAttr> {
        let mut attrs = AddrAttr::address(self.addr).to_vec();
        if self.id != 0 {
            attrs.push(AddrAttr::Id(self.id));
        }
        if let Some(port) = self.port {
            attrs.push(AddrAttr::Port(port));
        }
        attrs.push(AddrAttr::Flags(self.flags.bits()));
        if let Some(ifindex) = self.ifindex {
            attrs.push(AddrAttr::IfIdx(ifindex as i32));
        }
        attrs
    }

    fn from_attrs(attrs: &[AddrAttr]) -> Result<Self> {
        let mut endpoint = Endpoint::new(IpAddr::from([0, 0, 0, 0]), EndpointFlags::NONE);
        let mut has_addr = false;
        for attr in attrs {
            match *attr {
                AddrAttr::Id(id) => endpoint.id = id,
                AddrAttr::Addr(addr) => {
                    endpoint.addr = addr;
                    has_addr = true;
                }
                AddrAttr::Port(port) => endpoint.port = (port != 0).then_some(port),
                AddrAttr::Flags(flags) => endpoint.flags = EndpointFlags(flags),
                AddrAttr::IfIdx(ifindex) => {
                    endpoint.ifindex = (ifindex > 0).then_some(ifindex as u32)
                }
                AddrAttr::Family(_) | AddrAttr::Other(_) => {}
            }
        }
        if !has_addr {
            return Err(Error::Decode("an endpoint without an address".into()));
        }
        Ok(endpoint)
    }
}

impl fmt::Display for Endpoint {
    /// `ip mptcp endpoint` syntax: `198.18.0.1 port 8080 id 3 signal dev eth1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if let Some(port) = self.port {
            write!(f, " port {port}")?;
        }
        if self.id != 0 {
            write!(f, " id {}", self.id)?;
        }
        if self.flags != EndpointFlags::NONE {
            write!(f, " {}", self.flags)?;
        }
        if let Some(ifindex) = self.ifindex {
            match interface_name(ifindex) {
                Some(name) => write!(f, " dev {name}")?,
                None => write!(f, " dev-index {ifindex}")?,
            }
        }
        Ok(())
    }
}

/// The name of interface `ifindex` in the calling thread's namespace.
pub(crate) fn interface_name(ifindex: u32) -> Option<String> {
    crate::sys::os::interface_name(ifindex)
}

/// How many extra subflows and accepted announcements the in-kernel path
/// manager allows per connection (`ip mptcp limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Limits {
    /// Most extra subflows per connection (0..=8).
    pub subflows: u32,
    /// Most addresses announced by the peer that are accepted (0..=8).
    pub add_addr_accepted: u32,
}

impl fmt::Display for Limits {
    /// `ip mptcp limits` syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "add_addr_accepted {} subflows {}",
            self.add_addr_accepted, self.subflows
        )
    }
}

/// The resolved `mptcp_pm` family.
#[derive(Debug, Clone, Copy)]
struct Family {
    id: u16,
    events_group: Option<u32>,
}

impl Family {
    fn resolve(transport: &mut Transport) -> Result<Self> {
        let request = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(MPTCP_PM_NAME.into())],
        });
        let replies = match transport.request("resolve the mptcp_pm family", request, 0, Kind::Do) {
            Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT => {
                return Err(Error::FamilyNotFound(format!(
                    "{MPTCP_PM_NAME:?} generic netlink family"
                )));
            }
            other => other?,
        };
        let mut family = None;
        let mut events_group = None;
        for attr in replies.into_iter().flat_map(|reply| reply.payload.nlas) {
            match attr {
                GenlCtrlAttrs::FamilyId(id) => family = Some(id),
                GenlCtrlAttrs::McastGroups(groups) => {
                    for group in groups {
                        let name = group.iter().find_map(|a| match a {
                            McastGrpAttrs::Name(name) => Some(name.as_str()),
                            _ => None,
                        });
                        let id = group.iter().find_map(|a| match a {
                            McastGrpAttrs::Id(id) => Some(*id),
                            _ => None,
                        });
                        if name == Some(MPTCP_PM_EV_GRP_NAME) {
                            events_group = id;
                        }
                    }
                }
                _ => {}
            }
        }
        let id = family.ok_or_else(|| Error::Decode("the family reply has no family id".into()))?;
        Ok(Family { id, events_group })
    }
}

/// A connection to the kernel path manager of the calling thread's network
/// namespace.
#[derive(Debug)]
pub struct PathManager {
    transport: Transport,
    family: Family,
}

impl PathManager {
    /// Opens a generic netlink socket and resolves the `mptcp_pm` family.
    pub fn open() -> Result<Self> {
        let mut transport = Transport::open(NETLINK_GENERIC)?;
        let family = Family::resolve(&mut transport)?;
        Ok(PathManager { transport, family })
    }

    fn request(
        &mut self,
        what: &str,
        cmd: u8,
        attrs: Vec<PmAttr>,
        kind: Kind,
    ) -> Result<Vec<PmMessage>> {
        let mut message = GenlMessage::from_payload(PmMessage { cmd, attrs });
        message.set_resolved_family_id(self.family.id);
        let replies = self.transport.request(what, message, 0, kind)?;
        Ok(replies.into_iter().map(|reply| reply.payload).collect())
    }

    fn endpoints_in(replies: Vec<PmMessage>) -> Result<Vec<Endpoint>> {
        replies
            .iter()
            .flat_map(|reply| &reply.attrs)
            .filter_map(|attr| match attr {
                PmAttr::Addr(attrs) => Some(Endpoint::from_attrs(attrs)),
                _ => None,
            })
            .collect()
    }

    /// Lists the endpoints (`ip mptcp endpoint show`).
    pub fn endpoints(&mut self) -> Result<Vec<Endpoint>> {
        let replies = self.request(
            "list endpoints",
            MPTCP_PM_CMD_GET_ADDR,
            Vec::new(),
            Kind::Dump,
        )?;
        Self::endpoints_in(replies)
    }

    /// The endpoint with `id` (`ip mptcp endpoint show id ID`).
    pub fn endpoint(&mut self, id: u8) -> Result<Endpoint> {
        let what = format!("get endpoint id {id}");
        let attrs = vec![PmAttr::Addr(vec![AddrAttr::Id(id)])];
        let replies = self.request(&what, MPTCP_PM_CMD_GET_ADDR, attrs, Kind::Do)?;
        Self::endpoints_in(replies)?
            .pop()
            .ok_or_else(|| Error::Decode(format!("{what}: the reply has no address")))
    }

    /// Adds an endpoint (`ip mptcp endpoint add`). `endpoint.id` 0 lets the
    /// kernel choose the id. Checks flags and port as iproute2 does; the
    /// kernel refuses a ninth endpoint and duplicates.
    pub fn add_endpoint(&mut self, endpoint: &Endpoint) -> Result<()> {
        endpoint.validate()?;
        let what = format!("add endpoint {endpoint}");
        let attrs = vec![PmAttr::Addr(endpoint.attrs())];
        self.request(&what, MPTCP_PM_CMD_ADD_ADDR, attrs, Kind::Do)?;
        Ok(())
    }

    /// Removes the endpoint with `id` (`ip mptcp endpoint delete id ID`).
    pub fn remove_endpoint(&mut self, id: u8) -> Result<()> {
        if id == 0 {
            return Err(Error::Invalid(
                "endpoint id 0 needs an address: use remove_endpoint_by_addr".into(),
            ));
        }
        let attrs = vec![PmAttr::Addr(vec![AddrAttr::Id(id)])];
        self.request(
            &format!("remove endpoint id {id}"),
            MPTCP_PM_CMD_DEL_ADDR,
            attrs,
            Kind::Do,
        )?;
        Ok(())
    }

    /// Removes the endpoint on `addr`. When no endpoint has that address,
    /// asks the kernel to stop using `addr` as the id-0 address (the one
    /// of the initial subflows), as `ip mptcp endpoint delete id 0 ADDR`.
    pub fn remove_endpoint_by_addr(&mut self, addr: IpAddr) -> Result<()> {
        if let Some(endpoint) = self.endpoints()?.into_iter().find(|e| e.addr == addr) {
            return self.remove_endpoint(endpoint.id);
        }
        let mut nested = AddrAttr::address(addr).to_vec();
        nested.push(AddrAttr::Id(0));
        let what = format!("remove endpoint id 0 {addr}");
        self.request(
            &what,
            MPTCP_PM_CMD_DEL_ADDR,
            vec![PmAttr::Addr(nested)],
            Kind::Do,
        )?;
        Ok(())
    }

    /// Removes every endpoint (`ip mptcp endpoint flush`). Note that the
    /// kernel also resets `add_addr_accepted` then.
    pub fn flush(&mut self) -> Result<()> {
        self.request(
            "flush endpoints",
            MPTCP_PM_CMD_FLUSH_ADDRS,
            Vec::new(),
            Kind::Do,
        )?;
        Ok(())
    }

    /// Sets the `backup` and `fullmesh` flags of endpoint `id` to exactly
    /// those in `flags` (`ip mptcp endpoint change id ID [no]backup [no]fullmesh`).
    pub fn set_flags(&mut self, id: u8, flags: EndpointFlags) -> Result<()> {
        if flags.without(EndpointFlags::BACKUP | EndpointFlags::FULLMESH) != EndpointFlags::NONE {
            return Err(Error::Invalid(format!(
                "only backup and fullmesh can be changed on an endpoint, not {flags}"
            )));
        }
        if id == 0 {
            return Err(Error::Invalid("endpoint id 0 cannot be changed".into()));
        }
        let attrs = vec![PmAttr::Addr(vec![
            AddrAttr::Id(id),
            AddrAttr::Flags(flags.bits()),
        ])];
        let what = format!("change endpoint id {id} to {{{flags}}}");
        self.request(&what, MPTCP_PM_CMD_SET_FLAGS, attrs, Kind::Do)?;
        Ok(())
    }

    /// The limits (`ip mptcp limits show`).
    pub fn limits(&mut self) -> Result<Limits> {
        let replies = self.request("get limits", MPTCP_PM_CMD_GET_LIMITS, Vec::new(), Kind::Do)?;
        let mut limits = Limits::default();
        for attr in replies.iter().flat_map(|reply| &reply.attrs) {
            match *attr {
                PmAttr::Subflows(n) => limits.subflows = n,
                PmAttr::RcvAddAddrs(n) => limits.add_addr_accepted = n,
                _ => {}
            }
        }
        Ok(limits)
    }

    /// Sets the limits (`ip mptcp limits set`); the kernel refuses values
    /// above 8.
    pub fn set_limits(&mut self, limits: Limits) -> Result<()> {
        let attrs = vec![
            PmAttr::RcvAddAddrs(limits.add_addr_accepted),
            PmAttr::Subflows(limits.subflows),
        ];
        self.request(
            &format!("set limits {limits}"),
            MPTCP_PM_CMD_SET_LIMITS,
            attrs,
            Kind::Do,
        )?;
        Ok(())
    }

    /// Userspace path manager: announces `addr` (with id `id`, non-zero, and
    /// an optional port) to the peer of connection `token`.
    pub fn announce(&mut self, token: u32, id: u8, addr: IpAddr, port: Option<u16>) -> Result<()> {
        if id == 0 {
            return Err(Error::Invalid(
                "an announced address needs a non-zero id".into(),
            ));
        }
        let endpoint = Endpoint {
            id,
            addr,
            port,
            ifindex: None,
            flags: EndpointFlags::SIGNAL,
        };
        let attrs = vec![PmAttr::Token(token), PmAttr::Addr(endpoint.attrs())];
        let what = format!("announce {endpoint} on connection {token:#010x}");
        self.request(&what, MPTCP_PM_CMD_ANNOUNCE, attrs, Kind::Do)?;
        Ok(())
    }

    /// Userspace path manager: withdraws the address announced with `id` on
    /// connection `token` and closes its subflows.
    pub fn remove(&mut self, token: u32, id: u8) -> Result<()> {
        let attrs = vec![PmAttr::Token(token), PmAttr::LocId(id)];
        let what = format!("remove address id {id} from connection {token:#010x}");
        self.request(&what, MPTCP_PM_CMD_REMOVE, attrs, Kind::Do)?;
        Ok(())
    }

    /// Userspace path manager: opens a subflow of connection `token` from
    /// local address `local` (id `local_id`, 0 to let the kernel choose)
    /// to `remote`.
    pub fn create_subflow(
        &mut self,
        token: u32,
        local_id: u8,
        local: IpAddr,
        remote: SocketAddr,
    ) -> Result<()> {
        let mut local_attrs = AddrAttr::address(local).to_vec();
        if local_id != 0 {
            local_attrs.push(AddrAttr::Id(local_id));
        }
        let attrs = vec![
            PmAttr::Token(token),
            PmAttr::Addr(local_attrs),
            PmAttr::AddrRemote(socket_attrs(remote)),
        ];
        let what = format!("create subflow {local} -> {remote} on connection {token:#010x}");
        self.request(&what, MPTCP_PM_CMD_SUBFLOW_CREATE, attrs, Kind::Do)?;
        Ok(())
    }

    /// Userspace path manager: closes the subflow `local` -> `remote` of
    /// connection `token`.
    pub fn destroy_subflow(
        &mut self,
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<()> {
        let attrs = vec![
            PmAttr::Token(token),
            PmAttr::Addr(socket_attrs(local)),
            PmAttr::AddrRemote(socket_attrs(remote)),
        ];
        let what = format!("destroy subflow {local} -> {remote} on connection {token:#010x}");
        self.request(&what, MPTCP_PM_CMD_SUBFLOW_DESTROY, attrs, Kind::Do)?;
        Ok(())
    }

    /// Userspace path manager: marks the subflow `local` -> `remote` of
    /// connection `token` as backup (or not) and tells the peer (`MP_PRIO`).
    pub fn set_backup(
        &mut self,
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
        backup: bool,
    ) -> Result<()> {
        let flags = if backup {
            EndpointFlags::BACKUP
        } else {
            EndpointFlags::NONE
        };
        let mut local_attrs = socket_attrs(local);
        local_attrs.push(AddrAttr::Flags(flags.bits()));
        let attrs = vec![
            PmAttr::Token(token),
            PmAttr::Addr(local_attrs),
            PmAttr::AddrRemote(socket_attrs(remote)),
        ];
        let what = format!(
            "set subflow {local} -> {remote} of connection {token:#010x} to {}",
            if backup { "backup" } else { "nobackup" }
        );
        self.request(&what, MPTCP_PM_CMD_SET_FLAGS, attrs, Kind::Do)?;
        Ok(())
    }
}

/// Nested attributes for an address and port.
fn socket_attrs(addr: SocketAddr) -> Vec<AddrAttr> {
    let mut attrs = AddrAttr::address(addr.ip()).to_vec();
    attrs.push(AddrAttr::Port(addr.port()));
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_and_parse_like_iproute2() {
        let flags = EndpointFlags::SUBFLOW | EndpointFlags::BACKUP | EndpointFlags::FULLMESH;
        assert_eq!(flags.to_string(), "subflow backup fullmesh");
        assert_eq!(
            "subflow,backup fullmesh".parse::<EndpointFlags>().unwrap(),
            flags
        );
        assert!("sigal".parse::<EndpointFlags>().is_err());
        assert_eq!(
            EndpointFlags::from_bits(0x41).to_string(),
            "signal flags 0x40"
        );
    }

    #[test]
    fn endpoint_prints_as_ip_mptcp_arguments() {
        let mut e = Endpoint::new("198.18.0.1".parse().unwrap(), EndpointFlags::SIGNAL);
        e.id = 3;
        e.port = Some(8080);
        assert_eq!(e.to_string(), "198.18.0.1 port 8080 id 3 signal");
    }

    #[test]
    fn iproute2_rules_are_enforced_locally() {
        let addr: IpAddr = "198.18.0.1".parse().unwrap();
        let both = Endpoint::new(addr, EndpointFlags::SIGNAL | EndpointFlags::FULLMESH);
        assert!(
            both.validate()
                .unwrap_err()
                .to_string()
                .contains("signal and fullmesh")
        );
        let mut port = Endpoint::new(addr, EndpointFlags::SUBFLOW);
        port.port = Some(1000);
        assert!(
            port.validate()
                .unwrap_err()
                .to_string()
                .contains("signal when using port")
        );
        port.flags = EndpointFlags::SIGNAL;
        assert!(port.validate().is_ok());
    }

    #[test]
    fn endpoint_attributes_round_trip() {
        let e = Endpoint {
            id: 4,
            addr: "2001:db8::4".parse().unwrap(),
            port: Some(4000),
            ifindex: Some(2),
            flags: EndpointFlags::SIGNAL | EndpointFlags::BACKUP,
        };
        assert_eq!(Endpoint::from_attrs(&e.attrs()).unwrap(), e);
    }
}
