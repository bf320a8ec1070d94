//! The header of a datagram relayed by a SOCKS5 UDP association (RFC 1928,
//! section 7): `RSV(2) FRAG(1) ATYP DST.ADDR DST.PORT DATA`, sans I/O.
//!
//! A client prefixes each datagram with the destination; the server
//! prefixes each reply with the address it came from. Fragments
//! (`FRAG != 0`) are refused: the RFC lets a server drop them, and no
//! common client sends them.
//!
//! ```
//! use mptcp_core::socks5::{udp, TargetAddr};
//! let dest = TargetAddr::Domain("dns.test".into(), 53);
//! let mut datagram = Vec::new();
//! udp::encode_header(&dest, &mut datagram).unwrap();
//! datagram.extend_from_slice(b"query");
//! let (to, payload) = udp::parse(&datagram).unwrap();
//! assert_eq!((to, &datagram[payload..]), (dest, &b"query"[..]));
//! ```

use std::fmt;

use super::{EncodeError, Progress, TargetAddr};

/// Largest header: RSV, FRAG, ATYP, a 255-byte name with its length, port.
pub const MAX_HEADER: usize = 3 + 1 + 1 + 255 + 2;

/// Why a datagram's header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Shorter than its header says.
    Short,
    /// RSV is not zero.
    Reserved,
    /// A fragment (`FRAG != 0`), which this server does not reassemble.
    Fragment,
    /// An address type that is not IPv4, a domain name or IPv6.
    AddressType,
    /// An empty or non-UTF-8 domain name.
    Name,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderError::Short => "datagram shorter than its SOCKS5 UDP header",
            HeaderError::Reserved => "reserved bytes of the SOCKS5 UDP header are not zero",
            HeaderError::Fragment => "a fragment (FRAG is not 0), which is not reassembled",
            HeaderError::AddressType => "unknown address type",
            HeaderError::Name => "empty or non-UTF-8 domain name",
        })
    }
}

impl std::error::Error for HeaderError {}

/// Parses a client's datagram: its destination and where its payload
/// starts.
pub fn parse(datagram: &[u8]) -> Result<(TargetAddr, usize), HeaderError> {
    let Some(head) = datagram.get(..3) else {
        return Err(HeaderError::Short);
    };
    if head[..2] != [0, 0] {
        return Err(HeaderError::Reserved);
    }
    if head[2] != 0 {
        return Err(HeaderError::Fragment);
    }
    match TargetAddr::parse(&datagram[3..]) {
        Ok(Progress::Done(dest, used)) => Ok((dest, 3 + used)),
        Ok(Progress::NeedMore) => Err(HeaderError::Short),
        Err(e) if e.reply == super::ReplyCode::AddressTypeNotSupported => {
            Err(HeaderError::AddressType)
        }
        Err(_) => Err(HeaderError::Name),
    }
}

/// Appends the header for a datagram to or from `addr` (not a fragment).
pub fn encode_header(addr: &TargetAddr, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0]);
    addr.encode(out).inspect_err(|_| out.truncate(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::SocketAddr;

    #[test]
    fn headers_of_each_address_type_round_trip() {
        for dest in [
            TargetAddr::Ip("198.18.0.1:53".parse().unwrap()),
            TargetAddr::Ip("[2001:db8::1]:443".parse().unwrap()),
            TargetAddr::Domain("a".repeat(255), 1),
        ] {
            let mut d = Vec::new();
            encode_header(&dest, &mut d).unwrap();
            assert!(d.len() <= MAX_HEADER);
            d.extend_from_slice(b"payload");
            let (got, at) = parse(&d).unwrap();
            assert_eq!((got, &d[at..]), (dest, &b"payload"[..]));
        }
    }

    #[test]
    fn malformed_headers_are_told_apart() {
        let v4 = [0, 0, 0, 1, 198, 18, 0, 1, 0, 53];
        assert_eq!(
            parse(&v4),
            Ok((TargetAddr::Ip("198.18.0.1:53".parse().unwrap()), 10))
        );
        assert_eq!(parse(&v4[..2]), Err(HeaderError::Short));
        assert_eq!(parse(&v4[..9]), Err(HeaderError::Short));
        let mut frag = v4;
        frag[2] = 1;
        assert_eq!(parse(&frag), Err(HeaderError::Fragment));
        let mut rsv = v4;
        rsv[1] = 1;
        assert_eq!(parse(&rsv), Err(HeaderError::Reserved));
        let mut atyp = v4;
        atyp[3] = 2;
        assert_eq!(parse(&atyp), Err(HeaderError::AddressType));
        assert_eq!(parse(&[0, 0, 0, 3, 0, 0, 53]), Err(HeaderError::Name));
        assert_eq!(parse(&[0, 0, 0, 3, 1, 0xff, 0, 53]), Err(HeaderError::Name));
        let too_long = TargetAddr::Domain("a".repeat(256), 1);
        let mut out = vec![9];
        assert!(encode_header(&too_long, &mut out).is_err());
        assert_eq!(out, [9], "nothing half-written");
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_payload_is_inside(d in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok((_, at)) = parse(&d) {
                prop_assert!(at <= d.len());
            }
        }

        #[test]
        fn ip_headers_round_trip(ip in any::<std::net::IpAddr>(), port in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let dest = TargetAddr::Ip(SocketAddr::new(ip, port));
            let mut d = Vec::new();
            encode_header(&dest, &mut d).unwrap();
            d.extend_from_slice(&payload);
            let (got, at) = parse(&d).unwrap();
            prop_assert_eq!(got, dest);
            prop_assert_eq!(&d[at..], &payload[..]);
        }
    }
}
