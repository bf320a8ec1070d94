//! libmptcp: the C API of the MPTCP toolkit. Builds `libmptcp.so.0`
//! (shared, soname `libmptcp.so.0`) and `libmptcp.a`; the header
//! `include/mptcp.h` is generated from this crate by cbindgen (see
//! `tests/header.rs`).
//!
//! Conventions of every function:
//! - Errors are negative `errno` values; `mptcp_last_error()` then gives a
//!   message saying what failed and what to do. The message is kept per
//!   thread and replaced only by the next failure.
//! - Every pointer is checked: NULL where a value is needed gives
//!   `-EINVAL`. No Rust panic crosses into C: it becomes `-EIO` with a
//!   message.
//! - Structs that may grow start with `size_t struct_size`: set it to
//!   `sizeof` the struct before the call; the library writes no more than
//!   that. Arrays are caller-provided with the caller's element size and a
//!   `size_t *count` (capacity in, total out).
//! - Descriptors returned are owned by the caller (`close(2)`); descriptors
//!   passed in are only borrowed. Handles (`mptcp_pm_t`, `mptcp_pm_events_t`,
//!   `mptcp_relay_t`, `mptcp_diag_t`) are freed by their `_close`/`_stop`
//!   function; strings returned as `const char *` are static unless said
//!   otherwise.
#![allow(non_camel_case_types)]

mod addr;
mod args;
mod diag;
mod error;
mod out;
mod pm;
mod probe;
mod relay;
mod socket;

use std::ffi::{c_char, c_int};

pub use addr::MPTCP_ADDR_TEXT_LEN;
pub use diag::*;
pub use pm::*;
pub use probe::*;
pub use relay::*;
pub use socket::*;

/// The version of libmptcp (`"0.1.0"`). The string is static.
#[unsafe(no_mangle)]
pub extern "C" fn mptcp_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

/// The message of the last call that failed on the calling thread (empty
/// when none failed yet), e.g. `"mptcp_connect: Connection refused (os error
/// 111)"`. The pointer stays valid until the next libmptcp call fails on
/// this thread; copy the text to keep it longer. Never free it.
#[unsafe(no_mangle)]
pub extern "C" fn mptcp_last_error() -> *const c_char {
    error::last_error_ptr()
}

/// Copies the last error message of the calling thread into `buf` like
/// `snprintf`: at most `len - 1` bytes and a NUL. Returns the full length
/// of the message (0 when none), so a return `>= len` means truncated.
///
/// # Safety
/// `buf` is NULL (with `len` 0) or writable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_last_error_message(buf: *mut c_char, len: usize) -> c_int {
    let message = error::with_last_error(|message| message.to_bytes().to_vec());
    error::call("mptcp_last_error_message", || {
        // SAFETY: guaranteed by the caller.
        unsafe { out::write_str(buf, len, &message) }
    })
}
