//! Multipath TCP for Rust: sockets with a fallback policy, connection and
//! subflow inspection, the kernel path manager, and a relay engine that
//! carries plain TCP over MPTCP.
#![deny(missing_docs)]

pub mod sys;

pub mod info;
pub mod kernel;
pub mod probe;
pub mod socket;
pub mod socks5;

#[cfg(feature = "pm")]
pub mod diag;
#[cfg(feature = "pm")]
pub mod paths;
#[cfg(feature = "pm")]
pub mod pm;

#[cfg(feature = "relay")]
pub mod http;
#[cfg(feature = "relay")]
pub mod mux;
#[cfg(feature = "relay")]
pub mod relay;
