//! Small system calls outside sockets' data: the kernel release, an
//! interface's name, the host's addresses, waiting for a descriptor to
//! become readable.

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

/// The index of interface `name` in the calling thread's namespace.
pub fn interface_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The IP addresses of every interface in the calling thread's network
/// namespace (`getifaddrs(3)`), loopback included.
pub fn interface_addresses() -> io::Result<Vec<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `list` is a valid place for the pointer getifaddrs allocates.
    super::cvt(unsafe { libc::getifaddrs(&mut list) })?;
    let mut addrs = Vec::new();
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is an element of the list getifaddrs returned, which
        // stays allocated until freeifaddrs below.
        let entry = unsafe { &*at };
        if !entry.ifa_addr.is_null() {
            // SAFETY: a non-null `ifa_addr` points to a sockaddr whose
            // family field says which struct it is; only the two IP
            // families are read, each as its own struct.
            let ip = unsafe {
                match i32::from((*entry.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*entry.ifa_addr.cast::<libc::sockaddr_in>();
                        Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))))
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*entry.ifa_addr.cast::<libc::sockaddr_in6>();
                        Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                    }
                    _ => None,
                }
            };
            addrs.extend(ip);
        }
        at = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once; no reference
    // into it outlives this line.
    unsafe { libc::freeifaddrs(list) };
    Ok(addrs)
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
