//! Lock-free arrays mapped in chunks on demand ([`Chunked`]: the
//! per-descriptor table) and pools of fixed-size records on top of them
//! ([`Pool`]: the state only some sockets need, recorded options and relay
//! destinations, so the per-descriptor table stays a few bytes per
//! descriptor).
//!
//! A [`Chunked`] array is a directory of chunk pointers; the directory is
//! mapped with `mmap` when the array is first written, and a chunk when an
//! index first lands in it, and neither is ever unmapped. So an unused array
//! is one pointer of the library's `.bss`: a `.bss` larger than the page
//! after `.data` would cost every program started under the library one
//! more mapping. Free
//! records form a stack (a Treiber stack whose head carries a counter, so a
//! record popped and pushed back meanwhile cannot fool a `compare_exchange`);
//! records never used come from a bump counter. No lock and no `malloc`: safe
//! in any hook and in the child of a multithreaded `fork()`.

use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

/// A type whose all-zero bytes are a valid (empty) value and whose fields
/// are all atomics.
///
/// # Safety
///
/// Implementors are valid when zero-filled and sound to share between
/// threads through `&` references (only atomic fields).
pub unsafe trait Zeroed: Sync + 'static {}

/// A record type of a [`Pool`].
pub trait Record: Zeroed {
    /// The record's free-stack link (the next free index + 1, 0 for none).
    fn link(&self) -> &AtomicU32;
}

/// Chunk pointers per array.
const CHUNKS: usize = 4096;

/// An array of `CHUNK * 4096` values of `T`, each chunk mapped when first
/// needed.
pub struct Chunked<T: Zeroed, const CHUNK: usize> {
    /// `CHUNKS` chunk pointers, or null while nothing was mapped.
    directory: AtomicPtr<AtomicPtr<T>>,
}

/// A new zero-filled private mapping of `len` bytes (page-aligned), or
/// `None` when the kernel refuses memory.
fn map_zeroed(len: usize) -> Option<*mut libc::c_void> {
    // SAFETY: an anonymous private mapping with no address hint; the result
    // is checked against MAP_FAILED.
    let mem = unsafe {
        libc::mmap(
            null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    (mem != libc::MAP_FAILED).then_some(mem)
}

/// `*slot`, or else a new zero-filled mapping of `len` bytes published in
/// it (when another thread publishes one first, ours is unmapped and
/// theirs returned).
fn get_or_map_into<P>(slot: &AtomicPtr<P>, len: usize) -> Option<*mut P> {
    let current = slot.load(Ordering::Acquire);
    if !current.is_null() {
        return Some(current);
    }
    let mem = map_zeroed(len)?;
    match slot.compare_exchange(null_mut(), mem.cast(), Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Some(mem.cast()),
        Err(theirs) => {
            // SAFETY: `mem` is our own mapping of `len` bytes, never
            // published.
            unsafe { libc::munmap(mem, len) };
            Some(theirs)
        }
    }
}

impl<T: Zeroed, const CHUNK: usize> Chunked<T, CHUNK> {
    /// Indices the array can hold.
    pub const LEN: usize = CHUNK * CHUNKS;

    /// An array with nothing mapped.
    pub const fn new() -> Self {
        Chunked {
            directory: AtomicPtr::new(null_mut()),
        }
    }

    /// The pointer slot of chunk `chunk`, if the directory is mapped.
    #[inline]
    fn slot(&self, chunk: usize) -> Option<&AtomicPtr<T>> {
        let directory = self.directory.load(Ordering::Acquire);
        if directory.is_null() || chunk >= CHUNKS {
            return None;
        }
        // SAFETY: a non-null directory is a mapping of CHUNKS atomic
        // pointers that is never unmapped, zero-filled (null) until written.
        Some(unsafe { &*directory.add(chunk) })
    }

    /// The value at `index`, if its chunk is mapped.
    #[inline]
    pub fn get(&self, index: usize) -> Option<&T> {
        let chunk = self.slot(index / CHUNK)?.load(Ordering::Acquire);
        if chunk.is_null() {
            return None;
        }
        // SAFETY: non-null chunk pointers point to a mapping of CHUNK values
        // of T that is never unmapped; zero-filled or later written values
        // of T are valid (Zeroed's contract), and only shared references to
        // atomics are made.
        Some(unsafe { &*chunk.add(index % CHUNK) })
    }

    /// Whether the chunk holding `index` is mapped.
    #[inline]
    pub fn is_mapped(&self, index: usize) -> bool {
        self.slot(index / CHUNK)
            .is_some_and(|c| !c.load(Ordering::Acquire).is_null())
    }

    /// The value at `index`, mapping the directory and its chunk if
    /// needed. `None` beyond the array or when the kernel refuses memory.
    pub fn get_or_map(&self, index: usize) -> Option<&T> {
        if let Some(value) = self.get(index) {
            return Some(value);
        }
        if index >= Self::LEN {
            return None;
        }
        get_or_map_into(&self.directory, size_of::<AtomicPtr<T>>() * CHUNKS)?;
        get_or_map_into(self.slot(index / CHUNK)?, size_of::<T>() * CHUNK)?;
        self.get(index)
    }
}

impl<T: Zeroed, const CHUNK: usize> Default for Chunked<T, CHUNK> {
    fn default() -> Self {
        Self::new()
    }
}

/// A pool of `CHUNK * 4096` records of `T`, indexed by `u32`.
pub struct Pool<T: Record, const CHUNK: usize> {
    records: Chunked<T, CHUNK>,
    /// `counter << 32 | (index + 1)` of the top free record (0: none).
    free: AtomicU64,
    /// Records never handed out start here.
    fresh: AtomicU32,
}

impl<T: Record, const CHUNK: usize> Pool<T, CHUNK> {
    /// An empty pool (nothing mapped).
    pub const fn new() -> Self {
        Pool {
            records: Chunked::new(),
            free: AtomicU64::new(0),
            fresh: AtomicU32::new(0),
        }
    }

    const CAPACITY: u32 = Chunked::<T, CHUNK>::LEN as u32;

    /// The record at `index`, if it was ever handed out.
    #[inline]
    pub fn get(&self, index: u32) -> Option<&T> {
        self.records.get(index as usize)
    }

    /// A record for exclusive use until [`Pool::release`]: reused ones keep
    /// what their last user wrote (the caller resets what it reads).
    /// `None` when the pool is full or the kernel refuses memory.
    pub fn take(&self) -> Option<u32> {
        let mut head = self.free.load(Ordering::Acquire);
        while head as u32 != 0 {
            let index = head as u32 - 1;
            let next = self.get(index)?.link().load(Ordering::Relaxed);
            let popped = ((head >> 32).wrapping_add(1) << 32) | u64::from(next);
            match self
                .free
                .compare_exchange_weak(head, popped, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(index),
                Err(now) => head = now,
            }
        }
        let index = self
            .fresh
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < Self::CAPACITY).then_some(n + 1)
            })
            .ok()?;
        self.records.get_or_map(index as usize)?;
        Some(index)
    }

    /// Gives back a record obtained from [`Pool::take`].
    pub fn release(&self, index: u32) {
        let Some(record) = self.get(index) else {
            return;
        };
        let mut head = self.free.load(Ordering::Acquire);
        loop {
            record.link().store(head as u32, Ordering::Relaxed);
            let pushed = ((head >> 32).wrapping_add(1) << 32) | u64::from(index + 1);
            match self
                .free
                .compare_exchange_weak(head, pushed, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }
}

impl<T: Record, const CHUNK: usize> Default for Pool<T, CHUNK> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Item {
        link: AtomicU32,
        value: AtomicU32,
    }

    // SAFETY: only atomics; all-zero is valid.
    unsafe impl Zeroed for Item {}

    impl Record for Item {
        fn link(&self) -> &AtomicU32 {
            &self.link
        }
    }

    #[test]
    fn records_are_reused_after_release_and_the_capacity_holds() {
        static POOL: Pool<Item, 2> = Pool::new();
        let a = POOL.take().unwrap();
        let b = POOL.take().unwrap();
        let c = POOL.take().unwrap();
        assert_eq!((a, b, c), (0, 1, 2));
        POOL.get(b).unwrap().value.store(7, Ordering::Relaxed);
        POOL.release(b);
        POOL.release(a);
        assert_eq!(POOL.take(), Some(a));
        let again = POOL.take().unwrap();
        assert_eq!(again, b);
        assert_eq!(POOL.get(again).unwrap().value.load(Ordering::Relaxed), 7);
        assert_eq!(POOL.take(), Some(3));
        assert!(POOL.get(4).is_none(), "chunk 2 is not mapped yet");
    }

    #[test]
    fn threads_never_share_a_record() {
        static POOL: Pool<Item, 64> = Pool::new();
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                std::thread::spawn(move || {
                    for round in 0..2000u32 {
                        let i = POOL.take().unwrap();
                        let item = POOL.get(i).unwrap();
                        let mark = (t << 16) | (round & 0xffff) | 1 << 31;
                        assert_eq!(item.value.swap(mark, Ordering::AcqRel), 0);
                        std::hint::spin_loop();
                        assert_eq!(item.value.swap(0, Ordering::AcqRel), mark);
                        POOL.release(i);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(
            POOL.fresh.load(Ordering::Relaxed) <= 4,
            "records are reused"
        );
    }
}
