//! The `mptcp_pm` generic netlink messages: commands with their attributes,
//! and the raw attribute list of events. Encoding goes through
//! netlink-packet-core's `Nla` / `Emitable` and netlink-packet-generic's
//! `GenlFamily`, so this file only maps attribute numbers to values.

use std::net::IpAddr;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLA_F_NESTED, Nla, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized, emit_i32, emit_u16, emit_u32, parse_i32, parse_ip, parse_u8, parse_u16,
    parse_u32,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use crate::sys::pm::*;

/// One `mptcp_pm` request or reply: a command and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PmMessage {
    pub(crate) cmd: u8,
    pub(crate) attrs: Vec<PmAttr>,
}

/// Top-level attributes (`MPTCP_PM_ATTR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PmAttr {
    Addr(Vec<AddrAttr>),
    AddrRemote(Vec<AddrAttr>),
    RcvAddAddrs(u32),
    Subflows(u32),
    Token(u32),
    LocId(u8),
    Other(DefaultNla),
}

/// Attributes of a nested address (`MPTCP_PM_ADDR_ATTR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AddrAttr {
    Family(u16),
    Id(u8),
    Addr(IpAddr),
    /// Host byte order.
    Port(u16),
    Flags(u32),
    IfIdx(i32),
    Other(DefaultNla),
}

impl AddrAttr {
    /// The attributes describing `addr`: its family and the address itself.
    pub(crate) fn address(addr: IpAddr) -> [AddrAttr; 2] {
        let family = match addr {
            IpAddr::V4(_) => libc::AF_INET,
            IpAddr::V6(_) => libc::AF_INET6,
        };
        [AddrAttr::Family(family as u16), AddrAttr::Addr(addr)]
    }
}

impl Nla for AddrAttr {
    fn value_len(&self) -> usize {
        match self {
            AddrAttr::Family(_) | AddrAttr::Port(_) => 2,
            AddrAttr::Id(_) => 1,
            AddrAttr::Addr(IpAddr::V4(_)) => 4,
            AddrAttr::Addr(IpAddr::V6(_)) => 16,
            AddrAttr::Flags(_) | AddrAttr::IfIdx(_) => 4,
            AddrAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            AddrAttr::Family(_) => MPTCP_PM_ADDR_ATTR_FAMILY,
            AddrAttr::Id(_) => MPTCP_PM_ADDR_ATTR_ID,
            AddrAttr::Addr(IpAddr::V4(_)) => MPTCP_PM_ADDR_ATTR_ADDR4,
            AddrAttr::Addr(IpAddr::V6(_)) => MPTCP_PM_ADDR_ATTR_ADDR6,
            AddrAttr::Port(_) => MPTCP_PM_ADDR_ATTR_PORT,
            AddrAttr::Flags(_) => MPTCP_PM_ADDR_ATTR_FLAGS,
            AddrAttr::IfIdx(_) => MPTCP_PM_ADDR_ATTR_IF_IDX,
            AddrAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        // The slices have exactly `value_len()` bytes, so the emits cannot fail.
        match self {
            AddrAttr::Family(v) | AddrAttr::Port(v) => emit_u16(buffer, *v).expect("2 bytes"),
            AddrAttr::Id(v) => buffer[0] = *v,
            AddrAttr::Addr(IpAddr::V4(a)) => buffer.copy_from_slice(&a.octets()),
            AddrAttr::Addr(IpAddr::V6(a)) => buffer.copy_from_slice(&a.octets()),
            AddrAttr::Flags(v) => emit_u32(buffer, *v).expect("4 bytes"),
            AddrAttr::IfIdx(v) => emit_i32(buffer, *v).expect("4 bytes"),
            AddrAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for AddrAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            MPTCP_PM_ADDR_ATTR_FAMILY => AddrAttr::Family(parse_u16(v)?),
            MPTCP_PM_ADDR_ATTR_ID => AddrAttr::Id(parse_u8(v)?),
            MPTCP_PM_ADDR_ATTR_ADDR4 | MPTCP_PM_ADDR_ATTR_ADDR6 => AddrAttr::Addr(parse_ip(v)?),
            MPTCP_PM_ADDR_ATTR_PORT => AddrAttr::Port(parse_u16(v)?),
            MPTCP_PM_ADDR_ATTR_FLAGS => AddrAttr::Flags(parse_u32(v)?),
            MPTCP_PM_ADDR_ATTR_IF_IDX => AddrAttr::IfIdx(parse_i32(v)?),
            _ => AddrAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

fn parse_nested<A>(value: &[u8]) -> Result<Vec<A>, DecodeError>
where
    A: for<'a> Parseable<NlaBuffer<&'a [u8]>>,
{
    NlasIterator::new(value)
        .map(|nla| nla.and_then(|nla| A::parse(&nla)))
        .collect()
}

impl Nla for PmAttr {
    fn value_len(&self) -> usize {
        match self {
            PmAttr::Addr(attrs) | PmAttr::AddrRemote(attrs) => attrs.as_slice().buffer_len(),
            PmAttr::RcvAddAddrs(_) | PmAttr::Subflows(_) | PmAttr::Token(_) => 4,
            PmAttr::LocId(_) => 1,
            PmAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            PmAttr::Addr(_) => MPTCP_PM_ATTR_ADDR | NLA_F_NESTED,
            PmAttr::AddrRemote(_) => MPTCP_PM_ATTR_ADDR_REMOTE | NLA_F_NESTED,
            PmAttr::RcvAddAddrs(_) => MPTCP_PM_ATTR_RCV_ADD_ADDRS,
            PmAttr::Subflows(_) => MPTCP_PM_ATTR_SUBFLOWS,
            PmAttr::Token(_) => MPTCP_PM_ATTR_TOKEN,
            PmAttr::LocId(_) => MPTCP_PM_ATTR_LOC_ID,
            PmAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            PmAttr::Addr(attrs) | PmAttr::AddrRemote(attrs) => attrs.as_slice().emit(buffer),
            PmAttr::RcvAddAddrs(v) | PmAttr::Subflows(v) | PmAttr::Token(v) => {
                emit_u32(buffer, *v).expect("4 bytes")
            }
            PmAttr::LocId(v) => buffer[0] = *v,
            PmAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for PmAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            MPTCP_PM_ATTR_ADDR => PmAttr::Addr(parse_nested(v)?),
            MPTCP_PM_ATTR_ADDR_REMOTE => PmAttr::AddrRemote(parse_nested(v)?),
            MPTCP_PM_ATTR_RCV_ADD_ADDRS => PmAttr::RcvAddAddrs(parse_u32(v)?),
            MPTCP_PM_ATTR_SUBFLOWS => PmAttr::Subflows(parse_u32(v)?),
            MPTCP_PM_ATTR_TOKEN => PmAttr::Token(parse_u32(v)?),
            MPTCP_PM_ATTR_LOC_ID => PmAttr::LocId(parse_u8(v)?),
            _ => PmAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

impl GenlFamily for PmMessage {
    fn family_name() -> &'static str {
        MPTCP_PM_NAME
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        MPTCP_PM_VER
    }
}

impl Emitable for PmMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for PmMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(PmMessage {
            cmd: header.cmd,
            attrs: parse_nested(buf)?,
        })
    }
}

/// An event from the `mptcp_pm_events` group: its type and raw attributes
/// as (type, value) pairs (the event attribute space `MPTCP_ATTR_*` differs
/// from the commands', and events are only ever received).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventMessage {
    pub(crate) kind: u8,
    pub(crate) attrs: Vec<(u16, Vec<u8>)>,
}

impl ParseableParametrized<[u8], GenlHeader> for EventMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.map(|nla| (nla.kind(), nla.value().to_vec())))
            .collect::<Result<_, _>>()?;
        Ok(EventMessage {
            kind: header.cmd,
            attrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_address_round_trips() {
        let attrs = vec![
            PmAttr::Token(0xdead_beef),
            PmAttr::Addr(vec![
                AddrAttr::Family(libc::AF_INET6 as u16),
                AddrAttr::Addr("2001:db8::1".parse().unwrap()),
                AddrAttr::Id(7),
                AddrAttr::Port(8080),
                AddrAttr::Flags(MPTCP_PM_ADDR_FLAG_SIGNAL | MPTCP_PM_ADDR_FLAG_BACKUP),
                AddrAttr::IfIdx(3),
            ]),
        ];
        let message = PmMessage {
            cmd: MPTCP_PM_CMD_ANNOUNCE,
            attrs,
        };
        let mut buf = vec![0; message.buffer_len()];
        message.emit(&mut buf);
        // The nested attribute carries NLA_F_NESTED on the wire, as iproute2 sends it.
        let nested = NlasIterator::new(&buf[..]).nth(1).unwrap().unwrap();
        assert!(nested.nested_flag());
        let parsed = PmMessage::parse_with_param(
            &buf,
            GenlHeader {
                cmd: MPTCP_PM_CMD_ANNOUNCE,
                version: 1,
            },
        )
        .unwrap();
        assert_eq!(parsed, message);
    }

    #[test]
    fn ipv4_addresses_are_in_network_order() {
        let mut buf = vec![0; AddrAttr::Addr("198.18.0.1".parse().unwrap()).buffer_len()];
        AddrAttr::Addr("198.18.0.1".parse().unwrap()).emit(&mut buf);
        assert_eq!(&buf[4..8], &[198, 18, 0, 1]);
    }
}
