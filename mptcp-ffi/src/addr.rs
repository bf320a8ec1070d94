//! Addresses between Rust and C: `struct sockaddr_storage` for programs
//! that pass them on to the socket API, text for programs that print them,
//! and parsing of the address strings C callers pass in.

use std::ffi::c_char;
use std::net::{IpAddr, SocketAddr};

use crate::error::{Error, Result};
use crate::out::fill_text;

/// Bytes of the text form of an address in the structs of this library:
/// room for `[ffff:...:255.255.255.255%scope]:65535` and the NUL.
pub const MPTCP_ADDR_TEXT_LEN: usize = 64;

/// `addr` as a `sockaddr_in` or `sockaddr_in6` inside a zeroed
/// `sockaddr_storage`.
pub(crate) fn to_storage(addr: SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain integers; all zeroes is valid (and
    // AF_UNSPEC).
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is by definition large enough and
            // aligned for every sockaddr_* type; the cast view is unique
            // while `storage` is borrowed here.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_scope_id = v6.scope_id();
        }
    }
    storage
}

/// Fills an address pair of fields: the socket address and its text.
pub(crate) fn fill(
    storage: &mut libc::sockaddr_storage,
    text: &mut [c_char; MPTCP_ADDR_TEXT_LEN],
    addr: SocketAddr,
) {
    *storage = to_storage(addr);
    fill_text(text, &addr.to_string());
}

/// Parses an IP address argument (`"198.18.0.1"`, `"::1"`).
pub(crate) fn parse_ip(text: &str, name: &str) -> Result<IpAddr> {
    text.parse().map_err(|_| {
        Error::invalid(format!(
            "`{name}` is {text:?}, not an IP address (e.g. \"198.18.0.1\" or \"2001:db8::1\")"
        ))
    })
}

/// Parses a socket address argument (`"198.18.0.1:80"`, `"[::1]:80"`).
pub(crate) fn parse_socket_addr(text: &str, name: &str) -> Result<SocketAddr> {
    text.parse().map_err(|_| {
        Error::invalid(format!(
            "`{name}` is {text:?}, not an address with a port (e.g. \"198.18.0.2:80\" or \
             \"[2001:db8::1]:80\")"
        ))
    })
}
