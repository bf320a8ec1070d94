//! Log lines, formatted on the stack and written with one `write(2)`: no
//! allocation and no lock, so logging is safe from any hook.
//!
//! The target is standard error, or the file named by
//! `MPTCP_PRELOAD_LOG_FILE`, opened for each line (logging is rare: errors
//! and one line per fallback kind) so that a program that closes or reuses
//! descriptors never receives our lines in one of its files. For the same
//! reason a line goes to descriptor 2 only while it still holds the file it
//! held when the library loaded (a daemon that closed its standard error and
//! got a data file or a socket on descriptor 2 gets no line there); the
//! line is dropped otherwise.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::config::LogLevel;

const LINE_MAX: usize = 512;

struct LineBuf {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Keep one byte for the newline; truncate rather than fail.
        let room = LINE_MAX - 1 - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Standard error as the library found it at load time: device, inode,
/// and one of the `STDERR_*` states.
static STDERR_DEV: AtomicU64 = AtomicU64::new(0);
static STDERR_INO: AtomicU64 = AtomicU64::new(0);
static STDERR_STATE: AtomicU8 = AtomicU8::new(STDERR_UNKNOWN);
const STDERR_UNKNOWN: u8 = 0;
const STDERR_OPEN: u8 = 1;
const STDERR_CLOSED: u8 = 2;

/// Remembers which file descriptor 2 is (from the load-time constructor,
/// or the first line if a hook logs before it).
pub fn remember_stderr() {
    match crate::sys::file_identity(libc::STDERR_FILENO) {
        Some((dev, ino)) => {
            STDERR_DEV.store(dev, Ordering::Relaxed);
            STDERR_INO.store(ino, Ordering::Relaxed);
            STDERR_STATE.store(STDERR_OPEN, Ordering::Release);
        }
        None => STDERR_STATE.store(STDERR_CLOSED, Ordering::Release),
    }
}

/// Whether descriptor 2 still holds the standard error the program started
/// with.
fn stderr_is_original() -> bool {
    if STDERR_STATE.load(Ordering::Acquire) == STDERR_UNKNOWN {
        remember_stderr();
    }
    STDERR_STATE.load(Ordering::Acquire) == STDERR_OPEN
        && crate::sys::file_identity(libc::STDERR_FILENO)
            == Some((
                STDERR_DEV.load(Ordering::Relaxed),
                STDERR_INO.load(Ordering::Relaxed),
            ))
}

/// Whether lines of `level` are written.
pub fn enabled(level: LogLevel) -> bool {
    level != LogLevel::Off && level <= crate::config().log_level
}

/// Writes one line at `level` (if enabled).
pub fn line(level: LogLevel, args: fmt::Arguments<'_>) {
    if enabled(level) {
        write_line(crate::config().log_file.as_deref(), args);
    }
}

/// Writes `mptcp-preload: <args>\n` to `file`, or to standard error if
/// descriptor 2 still is the program's standard error.
pub fn write_line(file: Option<&std::ffi::CStr>, args: fmt::Arguments<'_>) {
    let mut line = LineBuf {
        buf: [0; LINE_MAX],
        len: 0,
    };
    let _ = line.write_str("mptcp-preload: ");
    let _ = line.write_fmt(args);
    line.buf[line.len] = b'\n';
    let bytes = &line.buf[..=line.len];
    // The errno of the hooked call must survive logging.
    // SAFETY: errno is a thread-local int, always readable and writable.
    let saved_errno = unsafe { *libc::__errno_location() };
    match file {
        None => {
            if stderr_is_original() {
                write_all(libc::STDERR_FILENO, bytes);
            }
        }
        Some(path) => {
            // SAFETY: `path` is NUL-terminated; the flags ask for a new
            // descriptor that we close below.
            let fd = unsafe {
                libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd >= 0 {
                write_all(fd, bytes);
                // SAFETY: `fd` is the descriptor opened just above.
                unsafe { crate::real::close(fd) };
            }
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved_errno };
}

fn write_all(fd: libc::c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid slice for the duration of the call.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// One bit per event kind already logged by [`once`].
static LOGGED_ONCE: AtomicU64 = AtomicU64::new(0);

/// Writes the line only the first time for `kind` (0..64) in this process.
pub fn once(kind: u32, level: LogLevel, args: fmt::Arguments<'_>) {
    let bit = 1u64 << (kind % 64);
    if LOGGED_ONCE.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
        line(level, args);
    }
}
