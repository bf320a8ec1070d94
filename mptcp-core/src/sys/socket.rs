//! Socket-level MPTCP constants and the `getsockopt` wrappers that read
//! kernel structures. All functions are allocation-free.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{Pod, cvt};

/// `IPPROTO_MPTCP` (Linux 5.6): the protocol argument of `socket(2)` that
/// asks for a Multipath TCP stream socket.
pub const IPPROTO_MPTCP: libc::c_int = 262;

/// `SOL_MPTCP` (Linux 5.16): the `getsockopt` level of the MPTCP options
/// (`MPTCP_INFO`, `MPTCP_TCPINFO`, ... in [`super::info`]).
pub const SOL_MPTCP: libc::c_int = 284;

/// `TCP_IS_MPTCP` (Linux 6.10, level `SOL_TCP`): an `int`, 1 when the
/// connection currently uses MPTCP, 0 for plain TCP or after a fallback.
pub const TCP_IS_MPTCP: libc::c_int = 43;

/// `socket(…, IPPROTO_MPTCP)` on a kernel older than 5.6.
pub const ERRNO_KERNEL_TOO_OLD: libc::c_int = libc::EINVAL;
/// `socket(…, IPPROTO_MPTCP)` on a kernel built without `CONFIG_MPTCP`.
pub const ERRNO_NOT_BUILT: libc::c_int = libc::EPROTONOSUPPORT;
/// `socket(…, IPPROTO_MPTCP)` with the sysctl `net.mptcp.enabled=0`.
pub const ERRNO_DISABLED: libc::c_int = libc::ENOPROTOOPT;

const _: () = assert!(libc::IPPROTO_MPTCP == IPPROTO_MPTCP);

/// `getsockopt(fd, level, name, value, sizeof *value)`: the kernel writes at
/// most `size_of::<T>()` bytes into `value`. Returns the length the kernel
/// reports (the number of bytes it wrote for the options used here).
pub fn getsockopt<T: Pod>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &mut T,
) -> io::Result<usize> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `fd` is a borrowed open descriptor; `value` is a valid,
    // exclusive buffer of `len` bytes that outlives the call, and any bytes
    // the kernel writes form a valid `T` (`Pod`).
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *mut T).cast(),
            &mut len,
        )
    })?;
    Ok(len as usize)
}

/// `getsockopt` into a byte buffer (for options whose answer is a header
/// followed by an array). Returns the length the kernel reports.
pub fn getsockopt_bytes(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = libc::socklen_t::try_from(buf.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `fd` is a borrowed open descriptor; `buf` is a valid,
    // exclusive buffer of `len` bytes that outlives the call.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    Ok(len as usize)
}

/// Reads an `int` socket option.
pub fn getsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    getsockopt(fd, level, name, &mut value)?;
    Ok(value)
}
