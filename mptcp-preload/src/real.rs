//! The real libc functions behind the hooks, found with
//! `dlsym(RTLD_NEXT, name)` the first time each is needed and cached in
//! atomics.
//!
//! Never call `libc::socket`, `libc::connect`, ... for a hooked name inside
//! this crate: the call would bind to our own exported hook. Use the
//! functions of this module instead.
//!
//! Nothing is looked up when the library loads: a program pays one lookup
//! per hook it calls, and `/bin/true` none (all 26 lookups in the load-time
//! constructor cost about 20 us per `exec` on the project's virtual machine,
//! 4% of a `/bin/true`). A first lookup may happen in the child of
//! a multithreaded `fork()`: glibc reinitializes the dynamic loader's lock
//! there (`__rtld_lock_initialize(GL(dl_load_lock))` in `fork.c`), so it
//! cannot wait for a thread that is gone. Two threads racing on the first
//! call both look up and store the same address.

use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{
    addrinfo, c_char, c_int, c_uint, c_void, fd_set, iovec, msghdr, nfds_t, pollfd, sigset_t,
    size_t, sockaddr, socklen_t, ssize_t, timespec, timeval,
};

/// Looks up the next definition of `name` after this library.
fn lookup(name: &std::ffi::CStr) -> usize {
    // SAFETY: `name` is NUL-terminated; RTLD_NEXT is a valid pseudo-handle
    // for a call made from a shared object.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) as usize }
}

/// A NUL-terminated literal as a `CStr`, without allocating.
const fn symbol_name(with_nul: &'static str) -> &'static std::ffi::CStr {
    match std::ffi::CStr::from_bytes_with_nul(with_nul.as_bytes()) {
        Ok(name) => name,
        Err(_) => panic!("symbol names are NUL-terminated literals"),
    }
}

macro_rules! real_functions {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty; )*) => {
        #[allow(non_upper_case_globals)]
        mod slots {
            use super::AtomicUsize;
            $( pub static $name: AtomicUsize = AtomicUsize::new(0); )*
        }

        $(
            $(#[$doc])*
            ///
            /// # Safety
            ///
            /// The same contract as the libc function of this name.
            #[inline]
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                let mut addr = slots::$name.load(Ordering::Relaxed);
                if addr == 0 {
                    addr = lookup(const { symbol_name(concat!(stringify!($name), "\0")) });
                    if addr == 0 {
                        // No libc below us: behave like a missing syscall.
                        // SAFETY: errno is thread-local and always writable.
                        unsafe { *libc::__errno_location() = libc::ENOSYS };
                        return -1;
                    }
                    slots::$name.store(addr, Ordering::Relaxed);
                }
                // SAFETY: `addr` is the address dlsym returned for this
                // libc function, whose C prototype is exactly this
                // signature; a function address fits a usize.
                let real: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { std::mem::transmute(addr) };
                // SAFETY: forwarded under the caller's contract.
                unsafe { real($($arg),*) }
            }
        )*
    };
}

real_functions! {
    /// `socket(2)`.
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    /// `connect(2)`.
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    /// `setsockopt(2)`.
    fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: socklen_t) -> c_int;
    /// `getsockopt(2)`.
    fn getsockopt(fd: c_int, level: c_int, name: c_int, value: *mut c_void, len: *mut socklen_t) -> c_int;
    /// `getpeername(2)`.
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    /// `accept(2)`.
    fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    /// `accept4(2)`.
    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    /// `close(2)`.
    fn close(fd: c_int) -> c_int;
    /// `dup2(2)`.
    fn dup2(old: c_int, new: c_int) -> c_int;
    /// `dup3(2)`.
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
    /// `getaddrinfo(3)`.
    fn getaddrinfo(node: *const c_char, service: *const c_char, hints: *const addrinfo, res: *mut *mut addrinfo) -> c_int;
    /// `close_range(2)`.
    fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int;
    /// `read(2)`.
    fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t;
    /// `readv(2)`.
    fn readv(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t;
    /// `recv(2)`.
    fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t;
    /// `recvfrom(2)`.
    fn recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, addr_len: *mut socklen_t) -> ssize_t;
    /// `recvmsg(2)`.
    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    /// `read(2)` checked by `_FORTIFY_SOURCE`.
    fn __read_chk(fd: c_int, buf: *mut c_void, count: size_t, buf_len: size_t) -> ssize_t;
    /// `recv(2)` checked by `_FORTIFY_SOURCE`.
    fn __recv_chk(fd: c_int, buf: *mut c_void, len: size_t, buf_len: size_t, flags: c_int) -> ssize_t;
    /// `recvfrom(2)` checked by `_FORTIFY_SOURCE`.
    fn __recvfrom_chk(fd: c_int, buf: *mut c_void, len: size_t, buf_len: size_t, flags: c_int, addr: *mut sockaddr, addr_len: *mut socklen_t) -> ssize_t;
    /// `poll(2)`.
    fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int;
    /// `ppoll(2)`.
    fn ppoll(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t) -> c_int;
    /// `poll(2)` checked by `_FORTIFY_SOURCE`.
    fn __poll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: c_int, fds_len: size_t) -> c_int;
    /// `select(2)`.
    fn select(nfds: c_int, read: *mut fd_set, write: *mut fd_set, except: *mut fd_set, timeout: *mut timeval) -> c_int;
    /// `pselect(2)`.
    fn pselect(nfds: c_int, read: *mut fd_set, write: *mut fd_set, except: *mut fd_set, timeout: *const timespec, sigmask: *const sigset_t) -> c_int;
    /// `ppoll(2)` checked by `_FORTIFY_SOURCE`.
    fn __ppoll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t, fds_len: size_t) -> c_int;
}
