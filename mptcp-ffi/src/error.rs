//! The one path every exported function takes: [`call`] catches panics and
//! turns errors into a negative `errno` plus a message kept per thread.
//! The rest of the boundary: [`crate::args`] checks the caller's pointers
//! and hands out handles, [`crate::out`] writes into the caller's memory.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};
use std::io;
use std::panic::{self, AssertUnwindSafe};

use mptcp_core::{pm, relay, socket};

/// An error for the C caller: a positive `errno` (returned negated) and
/// the message `mptcp_last_error()` gives.
#[derive(Debug)]
pub(crate) struct Error {
    errno: i32,
    message: String,
}

/// `Result` with the C-facing [`Error`].
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(errno: i32, message: impl Into<String>) -> Self {
        Error {
            errno,
            message: message.into(),
        }
    }

    /// `EINVAL` with a message naming the bad argument.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::new(libc::EINVAL, message)
    }
}

impl From<socket::Error> for Error {
    fn from(err: socket::Error) -> Self {
        match err {
            // An address that does not parse ("host:http", a port past
            // 65535) is `InvalidInput`: EINVAL, as io errors map.
            socket::Error::Io(err) => err.into(),
            err => Error::new(err.raw_os_error().unwrap_or(libc::EIO), err.to_string()),
        }
    }
}

impl From<pm::Error> for Error {
    fn from(err: pm::Error) -> Self {
        Error::new(err.raw_os_error().unwrap_or(libc::EIO), err.to_string())
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        let errno = err.raw_os_error().unwrap_or(match err.kind() {
            io::ErrorKind::InvalidInput => libc::EINVAL,
            io::ErrorKind::Unsupported => libc::EOPNOTSUPP,
            _ => libc::EIO,
        });
        Error::new(errno, err.to_string())
    }
}

impl From<relay::ConfigError> for Error {
    fn from(err: relay::ConfigError) -> Self {
        Error::invalid(err.to_string())
    }
}

thread_local! {
    /// The message of the last failed call on this thread. Replaced only by
    /// the next failure, so a pointer to it stays valid across successful
    /// calls.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn store(message: &str) {
    // An interior NUL would cut the C string short; no message of ours has
    // one, but a kernel or config text might.
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = Some(message));
}

/// Calls `f` with `LAST_ERROR`'s message.
pub(crate) fn with_last_error<R>(f: impl FnOnce(&CStr) -> R) -> R {
    LAST_ERROR.with(|last| f(last.borrow().as_deref().unwrap_or(c"")))
}

/// The pointer to the last message, valid until the next failure on this
/// thread (the `CString` is only replaced on failure, and its heap buffer
/// does not move while it lives).
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_deref().unwrap_or(c"").as_ptr())
}

/// Runs the body of an exported function: its value on success, the
/// negated `errno` on error (the message stored for `mptcp_last_error`),
/// `-EIO` with a message if it panicked. No panic crosses into C.
pub(crate) fn call(function: &str, f: impl FnOnce() -> Result<c_int>) -> c_int {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => value,
        Ok(Err(err)) => {
            store(&format!("{function}: {}", err.message));
            -err.errno
        }
        Err(payload) => {
            let what = mptcp_core::panic_message(&*payload).unwrap_or("unknown panic");
            // Storing must not panic again: `store` only allocates.
            store(&format!(
                "{function}: internal error in libmptcp (please report it): {what}"
            ));
            -libc::EIO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        with_last_error(|message| message.to_string_lossy().into_owned())
    }

    #[test]
    fn a_panic_becomes_eio_with_a_message() {
        let rc = call("mptcp_test", || panic!("boom {}", 42));
        assert_eq!(rc, -libc::EIO);
        assert!(
            last().starts_with("mptcp_test: internal error in libmptcp"),
            "{}",
            last()
        );
        assert!(last().ends_with("boom 42"), "{}", last());
    }

    #[test]
    fn errors_keep_their_errno_and_successes_keep_the_message() {
        assert_eq!(
            call("f", || Err(Error::new(libc::ENOENT, "gone"))),
            -libc::ENOENT
        );
        assert_eq!(call("g", || Ok(7)), 7);
        assert_eq!(last(), "f: gone");
        // An interior NUL does not cut the message short.
        call("h", || Err(Error::invalid("a\0b")));
        assert_eq!(last(), "h: a b");
    }
}
