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
#[cfg(any(feature = "pm", feature = "relay"))]
pub mod links;
#[cfg(feature = "relay")]
pub mod mux;
#[cfg(feature = "relay")]
pub mod relay;

/// The message of a caught panic (`panic!("...")` or a formatted one), if
/// it has one: what the relay's workers, the C library and the preload
/// library log when they catch one.
///
/// ```
/// let caught = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
/// assert_eq!(mptcp_core::panic_message(&*caught), Some("boom 1"));
/// ```
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}
