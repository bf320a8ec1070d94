//! Per-descriptor state: a table of small atomic cells indexed by fd.
//!
//! The table is a fixed array of chunk pointers; a chunk of [`CHUNK_LEN`]
//! cells (24 bytes each, a page per 170 descriptors) is mapped with `mmap`
//! the first time a socket lands in its range and never freed. What only
//! some sockets need lives in [`pool`](crate::pool)s: the options set
//! before `connect()` (freed at `connect()`, `close()`, or when the number
//! is reused) and the relay hop's destination. No locks and no `malloc` anywhere: the `socket()` path
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
//! [`mark_connected`] needs no check: what it does to a stale cell is harmless.
//!
//! A `vfork` child (`posix_spawn`, CPython's `subprocess`) runs in the
//! parent's memory until it execs, and its `close`, `close_range` and `dup2`
//! calls would rewrite the parent's table. The table belongs to one process
//! (the one that made the first socket, then each child of a libc `fork()`,
//! through an `atfork` handler registered then), and [`forget`], [`closed`],
//! [`clear_range`] and [`copy`] do nothing in any other process (one `getpid`, only when there
//! is a cell to change). Other writes are not checked: POSIX allows a
//! `vfork` child nothing but `_exit` and `exec`, and a child that creates a
//! socket anyway can at worst make the parent forget a socket's record,
//! never act on another socket (the cookie would not match).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

use crate::pool::{Chunked, Pool, Record, Zeroed};
use crate::sys;

/// Cells per chunk.
pub const CHUNK_LEN: usize = 512;

/// The table: descriptors up to 2 Mi are tracked; larger ones are left
/// alone (the hooks call straight through).
static CELLS: Chunked<Cell, CHUNK_LEN> = Chunked::new();

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
    /// The socket is `AF_INET6` (otherwise `AF_INET`).
    pub const IPV6: u32 = 1 << 7;
    /// Relay hop: the SOCKS5 greeting, credentials and request are sent;
    /// the relay's answers are awaited.
    pub const RELAY_SENT: u32 = 1 << 8;
    /// Relay hop: a thread is advancing it (others leave it alone, so no
    /// byte of the relay's answers is consumed twice).
    pub const RELAY_BUSY: u32 = 1 << 9;
}

/// Options recorded per socket.
pub const OPTION_SLOTS: usize = 8;
/// Largest option value recorded (bytes): ints, `linger`, `timeval`,
/// interface and congestion-control names. A larger value makes the socket
/// impossible to rebuild (`OPTIONS_INCOMPLETE`).
pub const OPTION_MAX_LEN: usize = 16;
const OPTION_WORDS: usize = OPTION_MAX_LEN / 8;
const SLOT_VALID: u64 = 1 << 63;

struct OptionSlot {
    /// `SLOT_VALID | level << 32 | name << 8 | len`.
    header: AtomicU64,
    value: [AtomicU64; OPTION_WORDS],
}

/// The options set on a socket that may still be rebuilt (before
/// `connect()`), to replay on the replacement.
struct OptionLog {
    link: AtomicU32,
    count: AtomicU32,
    /// The cookie of the socket the log belongs to.
    owner: AtomicU64,
    slots: [OptionSlot; OPTION_SLOTS],
}

// SAFETY: only atomics; all-zero is an empty log.
unsafe impl Zeroed for OptionLog {}

impl Record for OptionLog {
    fn link(&self) -> &AtomicU32 {
        &self.link
    }
}

/// Largest socket address stored (`sockaddr_in6`).
pub const ADDR_MAX_LEN: usize = 28;

/// Relay hop: the destination the program asked for, the errno to
/// report once, and how far the relay's answers were consumed.
struct RelayInfo {
    link: AtomicU32,
    error: AtomicI32,
    /// The cookie of the socket the record belongs to.
    owner: AtomicU64,
    dest_len: AtomicU32,
    /// How far the relay's answers were read (relay.rs packs it).
    answers: AtomicU32,
    dest: [AtomicU64; ADDR_MAX_LEN.div_ceil(8)],
}

// SAFETY: only atomics; all-zero is an empty record.
unsafe impl Zeroed for RelayInfo {}

impl Record for RelayInfo {
    fn link(&self) -> &AtomicU32 {
        &self.link
    }
}

/// Option logs: only sockets with options set before `connect()` hold one,
/// until they connect or close.
static OPTION_LOGS: Pool<OptionLog, 256> = Pool::new();
/// Relay records: one per relayed descriptor.
static RELAY_INFO: Pool<RelayInfo, 1024> = Pool::new();

/// The state of one descriptor: 24 bytes; the rest lives in the pools,
/// only for the sockets that need it. All-zero bytes (a fresh `mmap`) is the
/// empty state.
pub struct Cell {
    flags: AtomicU32,
    /// Index + 1 of the socket's option log (0: none).
    options: AtomicU32,
    /// Index + 1 of the socket's relay record (0: none).
    relay: AtomicU32,
    /// The `SO_COOKIE` of the socket this cell describes.
    cookie: AtomicU64,
}

// SAFETY: only atomics; all-zero is the empty state.
unsafe impl Zeroed for Cell {}

/// The process that owns the table; 0 until the first socket is tracked
/// (an empty table needs no owner: nothing in it can be changed).
static OWNER: AtomicI32 = AtomicI32::new(0);

/// Whether the calling process owns the table (it is not a `vfork` child
/// running in its parent's memory).
pub fn owned() -> bool {
    OWNER.load(Ordering::Relaxed) == sys::getpid()
}

/// Makes the calling process the owner: in the child of a libc `fork()`,
/// whose copy of the table is its own.
extern "C" fn claim() {
    OWNER.store(sys::getpid(), Ordering::Relaxed);
}

/// Before the first socket enters the table: the calling process becomes
/// its owner, and so will each child of a later `fork()`. Done here rather
/// than when the library loads, so a program that makes no socket pays
/// neither the `getpid` nor the `atfork` registration. The first socket is
/// made by the process that loaded the library (a `vfork` child may only
/// `exec`), so the owner is the same as if the constructor had claimed it.
/// `pthread_atfork` takes libc's fork-handler lock, which no thread can hold
/// in a `fork()` child (`fork` holds it itself while it forks), so the first
/// socket of such a child cannot hang on it.
#[inline]
fn claim_before_first_socket() {
    if OWNER.load(Ordering::Relaxed) != 0 {
        return;
    }
    static FORK_HANDLER: AtomicBool = AtomicBool::new(false);
    if !FORK_HANDLER.swap(true, Ordering::AcqRel) {
        sys::on_fork_child(claim);
    }
    let _ = OWNER.compare_exchange(0, sys::getpid(), Ordering::Relaxed, Ordering::Relaxed);
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

/// Marks the cell of `fd` connected if its flags satisfy `wanted`, without
/// checking which socket the cell describes: `CONNECT_CALLED` only takes
/// power away, and the option log it frees is useless on a stale cell too.
#[inline]
pub fn mark_connected(fd: libc::c_int, wanted: impl FnOnce(u32) -> bool) {
    if let Some(cell) = get(fd)
        && wanted(cell.flags())
    {
        cell.update(flag::CONNECT_CALLED, 0);
        cell.forget_options();
    }
}

/// Starts tracking the socket on `fd` (just created, or found untracked)
/// with `flags`. `None` when it cannot be tracked: not a socket, or no
/// memory.
pub fn track(fd: libc::c_int, flags: u32, domain: libc::c_int) -> Option<&'static Cell> {
    let index = usize::try_from(fd).ok()?;
    let cookie = sys::socket_cookie(fd)?;
    claim_before_first_socket();
    let cell = CELLS.get_or_map(index)?;
    cell.reset(flags, domain, cookie);
    Some(cell)
}

/// Forgets `fd` (reused by a descriptor the library does not track), in
/// the owner process only.
#[inline]
pub fn forget(fd: libc::c_int) {
    if let Some(cell) = get(fd)
        && cell.flags() != 0
        && owned()
    {
        cell.clear();
    }
}

/// `fd` is being closed: gives its pool records back, in the owner process
/// only. The cell of a connected socket without records is left as it is:
/// no hook acts on such a cell, and the cookie would not match the next
/// socket anyway, so the common `close()` costs no system call.
#[inline]
pub fn closed(fd: libc::c_int) {
    if let Some(cell) = get(fd) {
        let flags = cell.flags();
        let inert = flags & flag::CONNECT_CALLED != 0
            && cell.options.load(Ordering::Relaxed) == 0
            && cell.relay.load(Ordering::Relaxed) == 0;
        if flags != 0 && !inert && owned() {
            cell.clear();
        }
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
            if let Some(cell) = usize::try_from(new).ok().and_then(|i| CELLS.get_or_map(i)) {
                let (dest, dest_len) = source.dest();
                cell.reset(
                    (source.flags() & !flag::RELAY_BUSY) | extra,
                    source.domain(),
                    source.cookie(),
                );
                if dest_len > 0 && cell.set_dest(&dest[..dest_len]) {
                    cell.set_answer_progress(source.answer_progress());
                }
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
    CELLS.get(usize::try_from(fd).ok()?)
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
        .min(Chunked::<Cell, CHUNK_LEN>::LEN - 1);
    let mut fd = first;
    while fd <= last {
        if !CELLS.is_mapped(fd) {
            fd = (fd / CHUNK_LEN + 1) * CHUNK_LEN;
            continue;
        }
        if let Some(cell) = CELLS.get(fd) {
            cell.clear();
        }
        fd += 1;
    }
}

impl Cell {
    /// Starts tracking a new socket of `domain`, whose cookie is `cookie`.
    pub fn reset(&self, flags: u32, domain: libc::c_int, cookie: u64) {
        self.forget_options();
        self.forget_relay();
        self.cookie.store(cookie, Ordering::Relaxed);
        let family = if domain == libc::AF_INET6 {
            flag::IPV6
        } else {
            0
        };
        self.flags
            .store((flags & !flag::IPV6) | family, Ordering::Release);
    }

    /// Forgets the descriptor (closed or reused).
    #[inline]
    pub fn clear(&self) {
        if self.flags.load(Ordering::Relaxed) != 0 {
            self.flags.store(0, Ordering::Release);
            self.forget_options();
            self.forget_relay();
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

    /// Sets `flag`; whether it was clear before.
    pub fn try_set(&self, flag: u32) -> bool {
        self.flags.fetch_or(flag, Ordering::AcqRel) & flag == 0
    }

    /// Sets and clears flags at once.
    pub fn update(&self, set: u32, clear: u32) {
        let _ = self
            .flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                Some((f & !clear) | set)
            });
    }

    /// The socket's address family (`AF_INET` or `AF_INET6`).
    pub fn domain(&self) -> libc::c_int {
        if self.flags() & flag::IPV6 != 0 {
            libc::AF_INET6
        } else {
            libc::AF_INET
        }
    }

    /// The socket's option log, if it has one.
    fn option_log(&self) -> Option<&'static OptionLog> {
        let index = self.options.load(Ordering::Acquire).checked_sub(1)?;
        let log = OPTION_LOGS.get(index)?;
        (log.owner.load(Ordering::Acquire) == self.cookie()).then_some(log)
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
        let Some(log) = self.option_log().or_else(|| self.new_option_log()) else {
            self.update(flag::OPTIONS_INCOMPLETE, 0);
            return;
        };
        let key = SLOT_VALID | (u64::from(level) << 32) | (u64::from(name) << 8);
        let count = (log.count.load(Ordering::Acquire) as usize).min(OPTION_SLOTS);
        let index = match log.slots[..count]
            .iter()
            .position(|s| s.header.load(Ordering::Acquire) & !0xff == key)
        {
            Some(i) => i,
            None => {
                let i = log.count.fetch_add(1, Ordering::AcqRel) as usize;
                if i >= OPTION_SLOTS {
                    self.update(flag::OPTIONS_INCOMPLETE, 0);
                    return;
                }
                i
            }
        };
        let slot = &log.slots[index];
        for (word, chunk) in slot.value.iter().zip(value.chunks(8)) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
        }
        slot.header
            .store(key | value.len() as u64, Ordering::Release);
    }

    /// Takes an empty option log from the pool for this cell.
    fn new_option_log(&self) -> Option<&'static OptionLog> {
        let index = OPTION_LOGS.take()?;
        let log = OPTION_LOGS.get(index)?;
        log.count.store(0, Ordering::Relaxed);
        for slot in &log.slots {
            slot.header.store(0, Ordering::Relaxed);
        }
        log.owner.store(self.cookie(), Ordering::Release);
        if self
            .options
            .compare_exchange(0, index + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another thread gave the cell a log first.
            OPTION_LOGS.release(index);
            return self.option_log();
        }
        Some(log)
    }

    /// Calls `f(level, name, value)` for each recorded option, in order.
    pub fn for_each_option(&self, mut f: impl FnMut(libc::c_int, libc::c_int, &[u8])) {
        let Some(log) = self.option_log() else {
            return;
        };
        let count = (log.count.load(Ordering::Acquire) as usize).min(OPTION_SLOTS);
        for slot in &log.slots[..count] {
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

    /// Forgets the recorded options (after a replacement replayed them, or
    /// once the socket connects) and gives their log back.
    pub fn forget_options(&self) {
        if let Some(index) = self.options.swap(0, Ordering::AcqRel).checked_sub(1) {
            if let Some(log) = OPTION_LOGS.get(index) {
                log.owner.store(0, Ordering::Release);
            }
            OPTION_LOGS.release(index);
        }
    }

    /// The socket's relay record, if it has one.
    fn relay_info(&self) -> Option<&'static RelayInfo> {
        let index = self.relay.load(Ordering::Acquire).checked_sub(1)?;
        let info = RELAY_INFO.get(index)?;
        (info.owner.load(Ordering::Acquire) == self.cookie()).then_some(info)
    }

    /// Gives the relay record back.
    fn forget_relay(&self) {
        if let Some(index) = self.relay.swap(0, Ordering::AcqRel).checked_sub(1) {
            if let Some(info) = RELAY_INFO.get(index) {
                info.owner.store(0, Ordering::Release);
            }
            RELAY_INFO.release(index);
        }
    }

    /// Stores the relay-hop destination (a raw sockaddr). Returns false when
    /// no record is left for it.
    pub fn set_dest(&self, addr: &[u8]) -> bool {
        let info = match self.relay_info() {
            Some(info) => info,
            None => {
                let Some(index) = RELAY_INFO.take() else {
                    return false;
                };
                let Some(info) = RELAY_INFO.get(index) else {
                    return false;
                };
                info.error.store(0, Ordering::Relaxed);
                info.owner.store(self.cookie(), Ordering::Release);
                if let Some(old) = self.relay.swap(index + 1, Ordering::AcqRel).checked_sub(1) {
                    RELAY_INFO.release(old);
                }
                info
            }
        };
        let len = addr.len().min(ADDR_MAX_LEN);
        for (word, chunk) in info.dest.iter().zip(addr[..len].chunks(8)) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
        }
        info.answers.store(0, Ordering::Relaxed);
        info.dest_len.store(len as u32, Ordering::Release);
        true
    }

    /// The relay-hop destination: raw sockaddr bytes and their length (0
    /// when none was stored).
    pub fn dest(&self) -> ([u8; ADDR_MAX_LEN], usize) {
        let mut bytes = [0u8; ADDR_MAX_LEN];
        let Some(info) = self.relay_info() else {
            return (bytes, 0);
        };
        let len = (info.dest_len.load(Ordering::Acquire) as usize).min(ADDR_MAX_LEN);
        let mut words = [0u8; ADDR_MAX_LEN.div_ceil(8) * 8];
        for (word, out) in info.dest.iter().zip(words.chunks_mut(8)) {
            out.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        bytes.copy_from_slice(&words[..ADDR_MAX_LEN]);
        (bytes, len)
    }

    /// Stores the relay-hop error to report through `SO_ERROR` (after
    /// [`Cell::set_dest`]).
    pub fn set_relay_error(&self, errno: libc::c_int) {
        if let Some(info) = self.relay_info() {
            info.error.store(errno, Ordering::Release);
        }
    }

    /// Takes the relay-hop error (reported once, like the kernel's).
    pub fn take_relay_error(&self) -> libc::c_int {
        self.relay_info()
            .map_or(0, |info| info.error.swap(0, Ordering::AcqRel))
    }

    /// How far the relay's answers were read (0: not at all; the relay
    /// module gives the value its meaning).
    pub fn answer_progress(&self) -> u32 {
        self.relay_info()
            .map_or(0, |info| info.answers.load(Ordering::Acquire))
    }

    /// Records how far the relay's answers were read.
    pub fn set_answer_progress(&self, progress: u32) {
        if let Some(info) = self.relay_info() {
            info.answers.store(progress, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_recorded_deduplicated_bounded_and_freed() {
        // Descriptor numbers far from anything the test process opens.
        let cell = CELLS.get_or_map(900_001).unwrap();
        cell.reset(flag::INET_STREAM | flag::CONVERTED, libc::AF_INET6, 1);
        assert_eq!(cell.domain(), libc::AF_INET6);
        assert_eq!(
            cell.flags() & !flag::IPV6,
            flag::INET_STREAM | flag::CONVERTED
        );
        cell.record_option(1, 2, &1i32.to_ne_bytes());
        cell.record_option(6, 13, &[7u8; 16]);
        cell.record_option(1, 2, &0i32.to_ne_bytes());
        let seen = |cell: &Cell| {
            let mut seen = Vec::new();
            cell.for_each_option(|l, n, v| seen.push((l, n, v.to_vec())));
            seen
        };
        assert_eq!(
            seen(cell),
            vec![(1, 2, 0i32.to_ne_bytes().to_vec()), (6, 13, vec![7u8; 16])]
        );
        assert_eq!(cell.flags() & flag::OPTIONS_INCOMPLETE, 0);

        // A log belongs to its socket: after the descriptor got another
        // socket (a rebuild that did not replay), nothing is replayed.
        cell.set_cookie(2);
        assert!(seen(cell).is_empty());
        cell.set_cookie(1);
        assert_eq!(seen(cell).len(), 2);

        cell.record_option(1, 99, &[0u8; OPTION_MAX_LEN + 1]);
        assert_ne!(cell.flags() & flag::OPTIONS_INCOMPLETE, 0);
        cell.reset(flag::INET_STREAM, libc::AF_INET, 1);
        assert_eq!(cell.domain(), libc::AF_INET);
        assert!(seen(cell).is_empty(), "reset frees the log");
        for name in 0..OPTION_SLOTS as i32 {
            cell.record_option(1, name, &[1]);
        }
        assert_eq!(cell.flags() & flag::OPTIONS_INCOMPLETE, 0);
        cell.record_option(1, 100, &[1]);
        assert_ne!(cell.flags() & flag::OPTIONS_INCOMPLETE, 0);
        cell.forget_options();
        assert!(seen(cell).is_empty());
        cell.clear();
        assert_eq!(cell.flags(), 0);
    }

    #[test]
    fn destinations_round_trip_and_ranges_clear() {
        let cell = CELLS.get_or_map(900_300).unwrap();
        cell.reset(flag::INET_STREAM, libc::AF_INET, 5);
        assert_eq!(cell.dest().1, 0);
        let addr: Vec<u8> = (0..28).collect();
        assert!(cell.set_dest(&addr));
        cell.set_relay_error(libc::ECONNREFUSED);
        let (bytes, len) = cell.dest();
        assert_eq!(&bytes[..len], &addr[..]);
        assert_eq!(cell.take_relay_error(), libc::ECONNREFUSED);
        assert_eq!(cell.take_relay_error(), 0, "reported once");
        assert_eq!(cell.answer_progress(), 0);
        cell.set_answer_progress(0x0103_0004);
        assert_eq!(cell.answer_progress(), 0x0103_0004);
        cell.reset(flag::INET_STREAM, libc::AF_INET, 6);
        assert_eq!(cell.dest().1, 0, "a new socket has no destination");
        assert!(cell.set_dest(&addr[..16]));
        // From above the other test's descriptor (900_001): tests run in
        // parallel over one process-wide table.
        clear_range(900_200, u32::MAX);
        assert_eq!(cell.flags(), 0);
        assert_eq!(cell.dest().1, 0);
        assert!(get(-1).is_none());
        assert!(CELLS.get_or_map(i32::MAX as usize).is_none());
    }

    #[test]
    fn records_are_small_and_chunks_fill_whole_pages() {
        assert_eq!(size_of::<Cell>(), 24);
        assert_eq!(size_of::<OptionLog>(), 208);
        assert_eq!(size_of::<OptionLog>() * 256 % 4096, 0);
        assert_eq!(size_of::<RelayInfo>() * 1024 % 4096, 0);
    }
}
