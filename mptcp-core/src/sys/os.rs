//! Small system calls outside sockets' data: the kernel release, an
//! interface's name, waiting for a descriptor to become readable.

use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;

/// Calls `f` with the kernel release string from `uname(2)`, without
/// allocating.
pub fn with_kernel_release<R>(f: impl FnOnce(&CStr) -> R) -> io::Result<R> {
    let mut uts = std::mem::MaybeUninit::<libc::utsname>::uninit();
    // SAFETY: `uts` is a valid, writable `utsname` buffer; uname only
    // writes into it.
    super::cvt(unsafe { libc::uname(uts.as_mut_ptr()) })?;
    // SAFETY: uname succeeded, so it initialised the whole struct.
    let uts = unsafe { uts.assume_init() };
    // SAFETY: the kernel NUL-terminates `release` within the array, which
    // lives until the end of this function.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) };
    Ok(f(release))
}

/// The name of interface `ifindex` in the calling thread's namespace.
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write,
    // including the terminating NUL.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success if_indextoname wrote a NUL-terminated string into `buf`.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Waits at most `timeout_ms` for `fd` to be readable (`poll(2)`, again
/// after a signal); false on timeout.
pub fn wait_readable(fd: RawFd, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pollfd` is a valid, initialised array of one element
        // that outlives the call.
        let n = unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
