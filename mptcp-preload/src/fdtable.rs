//! Per-descriptor state: a table of small atomic cells indexed by fd.
//!
//! The table is a fixed array of chunk pointers; a chunk of [`CHUNK_LEN`]
//! cells is mapped with `mmap` the first time a socket lands in its range
//! and never freed. No locks and no `malloc` anywhere: the `socket()` path
//! is safe in the child of a multithreaded `fork()` (the child inherits the
//! mapping together with the descriptors it describes), and a lookup is one
//! atomic load plus an index.
//!
//! Every field is an atomic, so concurrent hooks on the same descriptor
//! from several threads cannot cause undefined behaviour; the kernel gives
//! no ordering for such calls either, so neither do we.
//!
//! # Entries never outlive their socket
//!
//! The library cannot see every close (`closefrom`, `close_range` called
//! inside libc, `fclose` of an `fdopen`ed socket, `syscall(SYS_close)`), so
//! a cell may describe a descriptor number that now holds another file.
//! Each cell therefore records the kernel's cookie of its socket
//! (`SO_COOKIE`, unique while the system runs), and [`lookup`] trusts a cell
//! only when the descriptor's socket still has that cookie. The check is
//! one `getsockopt` and is made only when the cell's flags say the hook has
//! something to do; [`track`] pays one more on the `socket()` path.
//! [`restrict`] needs no check: what it does to a stale cell is harmless.
//!
//! A `vfork` child (`posix_spawn`, CPython's `subprocess`) runs in the
//! parent's memory until it execs, and its `close`, `close_range` and `dup2`
//! calls would rewrite the parent's table. The table belongs to one process
//! (the one that loaded the library, then each child of a libc `fork()`,
//! through an `atfork` handler), and [`forget`], [`clear_range`] and
//! [`copy`] do nothing in any other process (one `getpid`, only when there
//! is a cell to change). Other writes are not checked: POSIX allows a
//! `vfork` child nothing but `_exit` and `exec`, and a child that creates a
//! socket anyway can at worst make the parent forget a socket's record,
//! never act on another socket (the cookie would not match).

use std::ptr::null_mut;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use crate::sys;

/// Cells per chunk.
pub const CHUNK_LEN: usize = 256;
/// Chunks: descriptors up to `CHUNK_LEN * MAX_CHUNKS` (1 Mi) are tracked;
/// larger ones are left alone (the hooks call straight through).
const MAX_CHUNKS: usize = 4096;

static CHUNKS: [AtomicPtr<Chunk>; MAX_CHUNKS] = [const { AtomicPtr::new(null_mut()) }; MAX_CHUNKS];

struct Chunk {
    cells: [Cell; CHUNK_LEN],
}

/// Cell flags.
pub mod flag {
    /// An `AF_INET`/`AF_INET6` stream socket created through the hook.
    pub const INET_STREAM: u32 = 1 << 0;
    /// The hook turned it into an MPTCP socket.
    pub const CONVERTED: u32 = 1 << 1;
    /// `connect()` was called: options are no longer recorded and the
    /// socket is no longer replaceable.
    pub const CONNECT_CALLED: u32 = 1 << 2;
    /// An option could not be recorded (log full or value too large): the
    /// socket cannot be rebuilt faithfully, so it is not replaced.
    pub const OPTIONS_INCOMPLETE: u32 = 1 << 3;
    /// Relay hop: connecting to the relay, SOCKS5 handshake not done.
    pub const RELAY_PENDING: u32 = 1 << 4;
    /// Relay hop: handshake done; `getpeername` reports the destination.
    pub const RELAY_READY: u32 = 1 << 5;
    /// Relay hop: the handshake failed; the error is reported once.
    pub const RELAY_FAILED: u32 = 1 << 6;
}

/// Options recorded per socket.
pub const OPTION_SLOTS: usize = 8;
/// Largest option value recorded (bytes).
pub const OPTION_MAX_LEN: usize = 64;
const OPTION_WORDS: usize = OPTION_MAX_LEN / 8;
const SLOT_VALID: u64 = 1 << 63;

struct OptionSlot {
    /// `SLOT_VALID | level << 32 | name << 8 | len`.
    header: AtomicU64,
    value: [AtomicU64; OPTION_WORDS],
}

/// Largest socket address stored (`sockaddr_in6`).
pub const ADDR_MAX_LEN: usize = 28;

/// The state of one descriptor. All-zero bytes (a fresh `mmap`) is the
/// empty state.
pub struct Cell {
    flags: AtomicU32,
    /// The `SO_COOKIE` of the socket this cell describes.
    cookie: AtomicU64,
    /// `domain << 32 | type` as passed to `socket()`.
    socket_args: AtomicU64,
    /// Relay hop: the errno to report once through `SO_ERROR`.
    relay_error: AtomicI32,
    option_count: AtomicU32,
    options: [OptionSlot; OPTION_SLOTS],
    /// Relay hop: the destination the program asked for (raw sockaddr).
    dest: [AtomicU64; ADDR_MAX_LEN.div_ceil(8)],
    dest_len: AtomicU32,
}

/// The process that owns the table; 0 until the first hook or the
/// constructor sets it.
static OWNER: AtomicI32 = AtomicI32::new(0);

/// Whether the calling process owns the table (it is not a `vfork` child
/// running in its parent's memory).
pub fn owned() -> bool {
    let pid = sys::getpid();
    match OWNER.compare_exchange(0, pid, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => true,
        Err(owner) => owner == pid,
    }
}

/// Makes the calling process the owner: from the constructor and in the
/// child of a libc `fork()`, whose copy of the table is its own.
pub fn claim() {
    OWNER.store(sys::getpid(), Ordering::Relaxed);
}

/// The cell of `fd` if its flags satisfy `wanted` (checked first, without
/// a system call) and it still describes the socket on `fd`.
#[inline]
pub fn lookup(fd: libc::c_int, wanted: impl FnOnce(u32) -> bool) -> Option<&'static Cell> {
    let cell = get(fd)?;
    let flags = cell.flags();
    if flags == 0 || !wanted(flags) {
        return None;
    }
    (sys::socket_cookie(fd) == Some(cell.cookie())).then_some(cell)
}

/// Sets `set` on the cell of `fd` if its flags satisfy `wanted`, without
/// checking which socket the cell describes: for flags that only take
/// power away (`CONNECT_CALLED`), which change nothing on a stale cell.
#[inline]
pub fn restrict(fd: libc::c_int, wanted: impl FnOnce(u32) -> bool, set: u32) {
    if let Some(cell) = get(fd)
        && wanted(cell.flags())
    {
        cell.update(set, 0);
    }
}

/// Starts tracking the socket on `fd` (just created, or found untracked)
/// with `flags`. `None` when it cannot be tracked: not a socket, or no
/// memory.
pub fn track(
    fd: libc::c_int,
    flags: u32,
    domain: libc::c_int,
    ty: libc::c_int,
) -> Option<&'static Cell> {
    if fd < 0 {
        return None;
    }
    let cookie = sys::socket_cookie(fd)?;
    let cell = get_or_create(fd)?;
    cell.reset(flags, domain, ty, cookie);
    Some(cell)
}

/// Forgets `fd` (closed, or reused by a descriptor the library does not
/// track), in the owner process only.
#[inline]
pub fn forget(fd: libc::c_int) {
    if let Some(cell) = get(fd)
        && cell.flags() != 0
        && owned()
    {
        cell.clear();
    }
}

/// After `dup2(old, new)` (or `dup3`), in the owner process only: `new`
/// names the socket of `old`, with its state and the `extra` flags, or it
/// forgets what it described.
pub fn copy(old: libc::c_int, new: libc::c_int, extra: u32) {
    let tracked = |fd| get(fd).is_some_and(|c| c.flags() != 0);
    if old == new || !(tracked(old) || tracked(new)) || !owned() {
        return;
    }
    match lookup(old, |_| true) {
        Some(source) => {
            if let Some(cell) = get_or_create(new) {
                let (domain, ty) = source.socket_args();
                let (dest, dest_len) = source.dest();
                cell.reset(source.flags() | extra, domain, ty, source.cookie());
                cell.set_dest(&dest[..dest_len]);
            }
        }
        None => {
            if let Some(cell) = get(new) {
                cell.clear();
            }
        }
    }
}

/// The cell of `fd`, if its chunk exists, whatever it describes.
#[inline]
fn get(fd: libc::c_int) -> Option<&'static Cell> {
    let fd = usize::try_from(fd).ok()?;
    let chunk = CHUNKS.get(fd / CHUNK_LEN)?.load(Ordering::Acquire);
    // SAFETY: non-null chunk pointers come from `get_or_create`, point to a
    // zero-initialised mapping of a `Chunk` that is never unmapped, and
    // every field is an atomic, so shared references are sound.
    unsafe { chunk.as_ref() }.map(|chunk| &chunk.cells[fd % CHUNK_LEN])
}

/// The cell of `fd`, mapping its chunk if needed. `None` for descriptors
/// beyond the table or when the kernel refuses memory.
fn get_or_create(fd: libc::c_int) -> Option<&'static Cell> {
    if let Some(cell) = get(fd) {
        return Some(cell);
    }
    let slot = CHUNKS.get(usize::try_from(fd).ok()? / CHUNK_LEN)?;
    let size = std::mem::size_of::<Chunk>();
    // SAFETY: an anonymous private mapping with no address hint; the result
    // is checked against MAP_FAILED.
    let mem = unsafe {
        libc::mmap(
            null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return None;
    }
    // Anonymous mappings are zero-filled and page-aligned: a valid `Chunk`
    // of empty cells.
    if let Err(winner) =
        slot.compare_exchange(null_mut(), mem.cast(), Ordering::AcqRel, Ordering::Acquire)
    {
        // Another thread mapped this chunk first.
        // SAFETY: `mem` is our own mapping of `size` bytes, never published.
        unsafe { libc::munmap(mem, size) };
        debug_assert!(!winner.is_null());
    }
    get(fd)
}

/// Forgets every descriptor in `first..=last` (for `close_range`), in the
/// owner process only.
pub fn clear_range(first: u32, last: u32) {
    let Ok(first) = usize::try_from(first) else {
        return;
    };
    if !owned() {
        return;
    }
    let last = usize::try_from(last)
        .unwrap_or(usize::MAX)
        .min(CHUNK_LEN * MAX_CHUNKS - 1);
    let mut fd = first;
    while fd <= last {
        let chunk = CHUNKS[fd / CHUNK_LEN].load(Ordering::Acquire);
        if chunk.is_null() {
            fd = (fd / CHUNK_LEN + 1) * CHUNK_LEN;
            continue;
        }
        if let Some(cell) = get(fd as libc::c_int) {
            cell.clear();
        }
        fd += 1;
    }
}

impl Cell {
    /// Starts tracking a new socket, whose cookie is `cookie`.
    pub fn reset(&self, flags: u32, domain: libc::c_int, ty: libc::c_int, cookie: u64) {
        self.cookie.store(cookie, Ordering::Relaxed);
        self.option_count.store(0, Ordering::Relaxed);
        self.dest_len.store(0, Ordering::Relaxed);
        self.relay_error.store(0, Ordering::Relaxed);
        self.socket_args.store(
            (u64::from(domain as u32) << 32) | u64::from(ty as u32),
            Ordering::Relaxed,
        );
        self.flags.store(flags, Ordering::Release);
    }

    /// Forgets the descriptor (closed or reused).
    #[inline]
    pub fn clear(&self) {
        if self.flags.load(Ordering::Relaxed) != 0 {
            self.flags.store(0, Ordering::Release);
            self.option_count.store(0, Ordering::Relaxed);
        }
    }

    /// The `SO_COOKIE` of the socket this cell describes.
    #[inline]
    pub fn cookie(&self) -> u64 {
        self.cookie.load(Ordering::Relaxed)
    }

    /// Records that another socket now sits on the descriptor (after a
    /// rebuild).
    pub fn set_cookie(&self, cookie: u64) {
        self.cookie.store(cookie, Ordering::Release);
    }

    /// The current flags.
    #[inline]
    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Acquire)
    }

    /// Sets and clears flags at once.
    pub fn update(&self, set: u32, clear: u32) {
        let _ = self
            .flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                Some((f & !clear) | set)
            });
    }

    /// `(domain, type)` as passed to `socket()`.
    pub fn socket_args(&self) -> (libc::c_int, libc::c_int) {
        let v = self.socket_args.load(Ordering::Relaxed);
        ((v >> 32) as u32 as libc::c_int, v as u32 as libc::c_int)
    }

    /// Records a successful `setsockopt` so it can be replayed on a
    /// replacement socket. Marks the cell incomplete when it cannot.
    pub fn record_option(&self, level: libc::c_int, name: libc::c_int, value: &[u8]) {
        let (Ok(level), Ok(name)) = (u16::try_from(level), u16::try_from(name)) else {
            self.update(flag::OPTIONS_INCOMPLETE, 0);
            return;
        };
        if value.len() > OPTION_MAX_LEN {
            self.update(flag::OPTIONS_INCOMPLETE, 0);
            return;
        }
        let key = SLOT_VALID | (u64::from(level) << 32) | (u64::from(name) << 8);
        let count = (self.option_count.load(Ordering::Acquire) as usize).min(OPTION_SLOTS);
        let index = match self.options[..count]
            .iter()
            .position(|s| s.header.load(Ordering::Acquire) & !0xff == key)
        {
            Some(i) => i,
            None => {
                let i = self.option_count.fetch_add(1, Ordering::AcqRel) as usize;
                if i >= OPTION_SLOTS {
                    self.update(flag::OPTIONS_INCOMPLETE, 0);
                    return;
                }
                i
            }
        };
        let slot = &self.options[index];
        for (word, chunk) in slot.value.iter().zip(value.chunks(8)) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
        }
        slot.header
            .store(key | value.len() as u64, Ordering::Release);
    }

    /// Calls `f(level, name, value)` for each recorded option, in order.
    pub fn for_each_option(&self, mut f: impl FnMut(libc::c_int, libc::c_int, &[u8])) {
        let count = (self.option_count.load(Ordering::Acquire) as usize).min(OPTION_SLOTS);
        for slot in &self.options[..count] {
            let header = slot.header.load(Ordering::Acquire);
            if header & SLOT_VALID == 0 {
                continue;
            }
            let mut bytes = [0u8; OPTION_MAX_LEN];
            for (word, out) in slot.value.iter().zip(bytes.chunks_mut(8)) {
                out.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
            }
            let len = (header & 0xff) as usize;
            f(
                ((header >> 32) & 0xffff) as libc::c_int,
                ((header >> 8) & 0xffff) as libc::c_int,
                &bytes[..len.min(OPTION_MAX_LEN)],
            );
        }
    }

    /// Forgets the recorded options (after a replacement replayed them).
    pub fn forget_options(&self) {
        self.option_count.store(0, Ordering::Release);
    }

    /// Stores the relay-hop destination (a raw sockaddr).
    pub fn set_dest(&self, addr: &[u8]) {
        let len = addr.len().min(ADDR_MAX_LEN);
        for (word, chunk) in self.dest.iter().zip(addr[..len].chunks(8)) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
        }
        self.dest_len.store(len as u32, Ordering::Release);
    }

    /// The relay-hop destination: raw sockaddr bytes and their length.
    pub fn dest(&self) -> ([u8; ADDR_MAX_LEN], usize) {
        let len = (self.dest_len.load(Ordering::Acquire) as usize).min(ADDR_MAX_LEN);
        let mut words = [0u8; ADDR_MAX_LEN.div_ceil(8) * 8];
        for (word, out) in self.dest.iter().zip(words.chunks_mut(8)) {
            out.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        let mut bytes = [0u8; ADDR_MAX_LEN];
        bytes.copy_from_slice(&words[..ADDR_MAX_LEN]);
        (bytes, len)
    }

    /// Stores the relay-hop error to report through `SO_ERROR`.
    pub fn set_relay_error(&self, errno: libc::c_int) {
        self.relay_error.store(errno, Ordering::Release);
    }

    /// Takes the relay-hop error (reported once, like the kernel's).
    pub fn take_relay_error(&self) -> libc::c_int {
        self.relay_error.swap(0, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_recorded_deduplicated_and_bounded() {
        // Descriptor numbers far from anything the test process opens.
        let cell = get_or_create(900_001).unwrap();
        cell.reset(
            flag::INET_STREAM | flag::CONVERTED,
            libc::AF_INET6,
            libc::SOCK_STREAM,
            1,
        );
        assert_eq!(cell.socket_args(), (libc::AF_INET6, libc::SOCK_STREAM));
        cell.record_option(1, 2, &1i32.to_ne_bytes());
        cell.record_option(6, 13, &[7u8; 16]);
        cell.record_option(1, 2, &0i32.to_ne_bytes());
        let mut seen = Vec::new();
        cell.for_each_option(|l, n, v| seen.push((l, n, v.to_vec())));
        assert_eq!(
            seen,
            vec![(1, 2, 0i32.to_ne_bytes().to_vec()), (6, 13, vec![7u8; 16])]
        );
        assert_eq!(cell.flags() & flag::OPTIONS_INCOMPLETE, 0);

        cell.record_option(1, 99, &[0u8; OPTION_MAX_LEN + 1]);
        assert_ne!(cell.flags() & flag::OPTIONS_INCOMPLETE, 0);
        cell.reset(flag::INET_STREAM, libc::AF_INET, libc::SOCK_STREAM, 1);
        for name in 0..OPTION_SLOTS as i32 {
            cell.record_option(1, name, &[1]);
        }
        assert_eq!(cell.flags() & flag::OPTIONS_INCOMPLETE, 0);
        cell.record_option(1, 100, &[1]);
        assert_ne!(cell.flags() & flag::OPTIONS_INCOMPLETE, 0);
        cell.clear();
        assert_eq!(cell.flags(), 0);
    }

    #[test]
    fn destinations_round_trip_and_ranges_clear() {
        let cell = get_or_create(900_300).unwrap();
        let addr: Vec<u8> = (0..28).collect();
        cell.set_dest(&addr);
        let (bytes, len) = cell.dest();
        assert_eq!(&bytes[..len], &addr[..]);
        cell.reset(flag::INET_STREAM, libc::AF_INET, libc::SOCK_STREAM, 1);
        // From above the other test's descriptor (900_001): tests run in
        // parallel over one process-wide table.
        clear_range(900_200, u32::MAX);
        assert_eq!(cell.flags(), 0);
        assert!(get(-1).is_none());
        assert!(get_or_create(i32::MAX).is_none());
    }
}
