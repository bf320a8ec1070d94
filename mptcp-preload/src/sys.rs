//! System interfaces the library needs besides the hooked functions: the
//! process id, the fork handler, the environment, file and socket
//! identities and the list of open descriptors. Nothing here allocates or
//! takes a lock.

use libc::c_int;

use crate::real;

/// The calling process's id (a system call: glibc no longer caches it, and a
/// cache would be wrong in a `vfork` child, which shares our memory).
pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

/// Whether a variable of the process environment has a name starting with
/// `prefix`: one pass over `environ`, comparing bytes in place (no lock, no
/// allocation, unlike `std::env`).
pub fn environment_has_prefix(prefix: &str) -> bool {
    // SAFETY: `environ` is libc's NULL-terminated array of NUL-terminated
    // strings (or NULL); nothing in this library changes it.
    let mut entry = unsafe { libc::environ }.cast_const();
    while !entry.is_null() {
        // SAFETY: `entry` points into the array, at or before its NULL.
        let var = unsafe { *entry };
        if var.is_null() {
            break;
        }
        // SAFETY: every entry is a NUL-terminated string.
        if unsafe { std::ffi::CStr::from_ptr(var) }
            .to_bytes()
            .starts_with(prefix.as_bytes())
        {
            return true;
        }
        // SAFETY: `entry` is not the array's NULL yet, so the next one is
        // inside the array.
        entry = unsafe { entry.add(1) };
    }
    false
}

/// Runs `handler` in the child of every `fork()` that goes through libc
/// (not in `vfork`/`posix_spawn` children, which share the parent's memory,
/// nor after a raw `clone`).
pub fn on_fork_child(handler: unsafe extern "C" fn()) {
    // SAFETY: registers a function pointer that stays valid for the life of
    // the process (the library is never unloaded: it is preloaded).
    unsafe { libc::pthread_atfork(None, None, Some(handler)) };
}

/// The kernel's cookie of the socket on `fd`: a 64-bit number that no other
/// socket gets while the system runs. `None` for a descriptor that is not a
/// socket (or not open).
pub fn socket_cookie(fd: c_int) -> Option<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are writable for the sizes given.
    let r = unsafe {
        real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    (r == 0 && cookie != 0).then_some(cookie)
}

/// The identity of the file open on `fd` (device and inode), or `None`
/// when `fd` is not open.
pub fn file_identity(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: `stat` is plain integers; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (fstat(fd, &mut st) == 0).then_some((st.st_dev, st.st_ino))
}

/// `fstat(2)` made directly: the constructor calls it in every program
/// started under the library, and libc's `fstat` sits on a page of libc
/// that a short-lived program would not touch otherwise (the page fault
/// cost about 0.8% of a preloaded `/bin/true` on a virtual machine).
/// Returns 0 or a negated errno.
#[cfg(target_arch = "x86_64")]
fn fstat(fd: c_int, st: &mut libc::stat) -> i64 {
    let ret: i64;
    // SAFETY: the x86-64 `fstat` system call (its `struct stat` is libc's)
    // writes at most one `struct stat` into `st`; `syscall` clobbers only
    // rcx and r11 besides rax, and touches no stack.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") libc::SYS_fstat => ret,
            in("rdi") i64::from(fd),
            in("rsi") std::ptr::from_mut(st),
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// `fstat(2)` through libc. Returns 0 or -1.
#[cfg(not(target_arch = "x86_64"))]
fn fstat(fd: c_int, st: &mut libc::stat) -> i64 {
    // SAFETY: `st` is a writable stat buffer.
    i64::from(unsafe { libc::fstat(fd, st) })
}

/// Calls `f` with every descriptor open in this process (from
/// `/proc/self/fd`, read with `getdents64` into a stack buffer). Returns
/// false when the list cannot be read.
pub fn for_each_open_fd(mut f: impl FnMut(c_int)) -> bool {
    // SAFETY: a NUL-terminated path and flags for a new descriptor that we
    // close below.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return false;
    }
    let mut buf = [0u8; 4096];
    let complete = loop {
        // SAFETY: `buf` is writable for its length; getdents64 writes at
        // most that many bytes of `linux_dirent64` records.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            break false;
        }
        if n == 0 {
            break true;
        }
        let mut at = 0usize;
        while at + 19 < n as usize {
            // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8,
            // then the NUL-terminated name.
            let reclen = usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
            if reclen == 0 {
                break;
            }
            let name = &buf[at + 19..(at + reclen).min(n as usize)];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            let fd = std::str::from_utf8(name)
                .ok()
                .and_then(|n| n.parse::<c_int>().ok());
            if let Some(fd) = fd
                && fd != dir
            {
                f(fd);
            }
            at += reclen;
        }
    };
    // SAFETY: `dir` is our own descriptor.
    unsafe { real::close(dir) };
    complete
}
