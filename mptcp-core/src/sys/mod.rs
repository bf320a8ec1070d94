//! Raw kernel ABI: constants and `#[repr(C)]` structures from the Linux uapi
//! headers, with compile-time size and offset checks. Nothing here has
//! behaviour beyond thin syscall wrappers; the safe API lives in the modules
//! named after each concept ([`crate::socket`], [`crate::info`]).
//!
//! Names follow the kernel headers so that they can be grepped for in
//! `include/uapi/linux/mptcp.h` and `include/uapi/linux/tcp.h`.
#![allow(missing_docs)]

#[cfg(feature = "pm")]
pub mod diag;
#[cfg(feature = "relay")]
pub mod fd;
pub mod info;
pub mod os;
#[cfg(feature = "pm")]
pub mod pm;
#[cfg(feature = "pm")]
pub mod probe_sock;
pub mod process;
pub mod socket;
#[cfg(feature = "relay")]
pub mod udp;

use std::io;

/// Turns the C convention "-1 and `errno`" into an [`io::Result`], like
/// socket2's `syscall!`. Allocation-free: the error is an OS error code.
///
/// Callers write the `unsafe` block (with its `// SAFETY:` comment) around
/// the libc call themselves, so every unsafe call stays visible at its site.
#[inline]
pub fn cvt(res: libc::c_int) -> io::Result<libc::c_int> {
    if res == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(res)
    }
}

/// Plain old data: a `#[repr(C)]` struct made only of integers (and integer
/// arrays), for which every byte pattern, including all zeroes, is a valid
/// value. The kernel fills such structs through `getsockopt`.
///
/// # Safety
///
/// Implement only for `Copy` types without references, pointers with
/// validity requirements, `bool`, `char`, enums or niches.
pub unsafe trait Pod: Copy + 'static {
    /// The all-zero value.
    fn zeroed() -> Self {
        // SAFETY: by the contract of `Pod`, all-zero bytes are a valid value.
        unsafe { std::mem::zeroed() }
    }

    /// Reads a value from the first bytes of `bytes`: copies
    /// `min(bytes.len(), size_of::<Self>())` bytes over a zeroed value, so a
    /// short kernel answer leaves the remaining fields at zero (callers decide
    /// from the length which fields are real). Never reads past `bytes`.
    fn read_prefix(bytes: &[u8]) -> Self {
        let mut value = Self::zeroed();
        let len = bytes.len().min(std::mem::size_of::<Self>());
        // SAFETY: `value` is a `Pod` of `size_of::<Self>()` bytes, `len` is
        // at most that and at most `bytes.len()`; the regions do not overlap
        // (one is a local); any byte pattern is a valid `Self`.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&raw mut value).cast::<u8>(), len);
        }
        value
    }
}

// SAFETY: integers of every width: any byte pattern is valid.
unsafe impl Pod for libc::c_int {}
