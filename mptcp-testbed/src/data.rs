//! A deterministic byte source, a checking sink and a throughput meter.
//!
//! The byte at stream offset `i` is a pure function of `i`, so the sink
//! detects a lost, duplicated or reordered byte at the first wrong offset,
//! and both ends compute the same 64-bit checksum of what passed.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;
/// Length of the pattern's period: a prime, so that no write or read size
/// lines up with it, and large enough that a lost or repeated piece of data
/// shows at once (a piece of exactly k periods still changes the byte count).
const PERIOD: usize = 1_048_573;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// The test pattern: byte `i` of the stream is byte `i % PERIOD` of a
/// pseudo-random table (splitmix64 words). Sending and checking are copies
/// and comparisons of slices, fast even in debug builds.
#[derive(Debug, Default, Clone)]
struct Pattern {
    offset: u64,
}

fn pattern_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..PERIOD.div_ceil(8) as u64)
            .flat_map(|i| splitmix64(i).to_le_bytes())
            .take(PERIOD)
            .collect()
    })
}

impl Pattern {
    /// Calls `f` with consecutive pieces of the table that make up the next
    /// `len` bytes of the stream, and their position in the caller's buffer;
    /// stops early when `f` returns false.
    fn walk(&mut self, len: usize, mut f: impl FnMut(usize, &[u8]) -> bool) -> bool {
        let table = pattern_table();
        let mut done = 0;
        while done < len {
            let at = (self.offset % PERIOD as u64) as usize;
            let piece = &table[at..(at + len - done).min(PERIOD)];
            if !f(done, piece) {
                return false;
            }
            done += piece.len();
            self.offset += piece.len() as u64;
        }
        true
    }

    /// Fills `buf` with the next bytes of the stream.
    fn fill(&mut self, buf: &mut [u8]) {
        self.walk(buf.len(), |at, piece| {
            buf[at..at + piece.len()].copy_from_slice(piece);
            true
        });
    }

    /// Checks that `buf` holds the next bytes of the stream; on a mismatch,
    /// returns the stream offset of the first wrong byte.
    fn check(&mut self, buf: &[u8]) -> Result<(), u64> {
        let mut bad = None;
        let offset = self.offset;
        self.walk(buf.len(), |at, piece| {
            let got = &buf[at..at + piece.len()];
            if got == piece {
                return true;
            }
            let first = got.iter().zip(piece).position(|(a, b)| a != b);
            bad = Some(offset + (at + first.unwrap_or(0)) as u64);
            false
        });
        bad.map_or(Ok(()), Err)
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a over the stream's 64-bit little-endian words in [`LANES`]
/// interleaved lanes (word `i` goes to lane `i % LANES`; a final partial
/// block is zero-padded), folded together with the length at the end. The
/// lanes are independent multiply chains, so the checksum keeps up with the
/// relay on the same cores instead of competing with it for them.
#[derive(Debug, Clone, Copy)]
struct Checksum {
    lanes: [u64; LANES],
    pending: [u8; BLOCK],
    n_pending: usize,
    len: u64,
}

const LANES: usize = 4;
const BLOCK: usize = 8 * LANES;

fn fnv_mix(hash: u64, word: u64) -> u64 {
    (hash ^ word).wrapping_mul(FNV_PRIME)
}

impl Checksum {
    fn new() -> Checksum {
        Checksum {
            lanes: [FNV_OFFSET; LANES],
            pending: [0; BLOCK],
            n_pending: 0,
            len: 0,
        }
    }

    fn mix(&mut self, block: &[u8]) {
        for (lane, word) in self.lanes.iter_mut().zip(block.chunks_exact(8)) {
            *lane = fnv_mix(*lane, u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
    }

    fn update(&mut self, mut buf: &[u8]) {
        self.len += buf.len() as u64;
        if self.n_pending > 0 {
            let take = buf.len().min(BLOCK - self.n_pending);
            self.pending[self.n_pending..self.n_pending + take].copy_from_slice(&buf[..take]);
            self.n_pending += take;
            buf = &buf[take..];
            if self.n_pending < BLOCK {
                return;
            }
            let block = self.pending;
            self.mix(&block);
            self.n_pending = 0;
        }
        let mut blocks = buf.chunks_exact(BLOCK);
        for block in &mut blocks {
            self.mix(block);
        }
        let rest = blocks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.n_pending = rest.len();
    }

    fn finish(mut self) -> u64 {
        if self.n_pending > 0 {
            let mut last = [0; BLOCK];
            last[..self.n_pending].copy_from_slice(&self.pending[..self.n_pending]);
            self.mix(&last);
        }
        let folded = self
            .lanes
            .iter()
            .fold(FNV_OFFSET, |h, &lane| fnv_mix(h, lane));
        fnv_mix(folded, self.len)
    }
}

/// Writes the first `n_bytes` of the test pattern to `w` and returns their
/// checksum.
pub fn send_pattern(w: &mut impl Write, n_bytes: u64) -> io::Result<u64> {
    send(w, |sent| sent >= n_bytes, n_bytes).map(|(_, sum)| sum)
}

/// Writes the test pattern to `w` until `duration` has passed; returns the
/// number of bytes written and their checksum.
pub fn send_pattern_for(w: &mut impl Write, duration: Duration) -> io::Result<(u64, u64)> {
    let deadline = Instant::now() + duration;
    send(w, |_| Instant::now() >= deadline, u64::MAX)
}

fn send(
    w: &mut impl Write,
    mut done: impl FnMut(u64) -> bool,
    limit: u64,
) -> io::Result<(u64, u64)> {
    let mut pattern = Pattern::default();
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    while !done(sent) {
        let len = (limit - sent).min(CHUNK as u64) as usize;
        let chunk = &mut buf[..len];
        pattern.fill(chunk);
        w.write_all(chunk)?;
        sum.update(chunk);
        sent += len as u64;
    }
    w.flush()?;
    Ok((sent, sum.finish()))
}

/// Reads and discards up to `n` bytes of `r` (fewer at EOF); returns how
/// many. Dropping a socket after it, with data still unread, resets the
/// connection: a destination that gives up mid-upload.
pub fn discard(r: &mut impl Read, n: u64) -> io::Result<u64> {
    io::copy(&mut r.take(n), &mut io::sink())
}

/// Reads `r` to its end, checking that it carries the test pattern; returns
/// the number of bytes and their checksum (to compare with the sender's).
///
/// A byte that differs from the pattern (lost, duplicated, reordered or
/// corrupted data) is an `InvalidData` error naming its offset.
pub fn receive_and_check(r: &mut impl Read) -> io::Result<(u64, u64)> {
    let mut pattern = Pattern::default();
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok((received, sum.finish())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        pattern.check(&buf[..n]).map_err(|offset| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("received data differs from the sent pattern at byte {offset}"),
            )
        })?;
        sum.update(&buf[..n]);
        received += n as u64;
    }
}

/// Counts bytes as they pass and gives the throughput.
///
/// Clones share the same counter: one thread counts (through
/// [`Meter::reader`] or [`Meter::add`]), another samples for live progress.
#[derive(Debug, Clone)]
pub struct Meter {
    bytes: Arc<AtomicU64>,
    start: Instant,
}

/// A reading of a [`Meter`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Time since the meter started.
    pub elapsed: Duration,
    /// Bytes counted since the meter started.
    pub bytes: u64,
}

impl Sample {
    /// Mbit/s between an earlier sample and this one.
    pub fn mbit_per_s_since(&self, earlier: &Sample) -> f64 {
        mbit_per_s(
            self.bytes - earlier.bytes,
            self.elapsed.saturating_sub(earlier.elapsed),
        )
    }
}

impl Default for Meter {
    fn default() -> Self {
        Meter::new()
    }
}

impl Meter {
    /// A meter at zero, whose clock starts now.
    pub fn new() -> Meter {
        Meter {
            bytes: Arc::new(AtomicU64::new(0)),
            start: Instant::now(),
        }
    }

    /// Counts `n` more bytes.
    pub fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// The bytes counted and the time elapsed, now.
    pub fn sample(&self) -> Sample {
        Sample {
            elapsed: self.start.elapsed(),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// Average Mbit/s since the meter started.
    pub fn mbit_per_s(&self) -> f64 {
        let s = self.sample();
        mbit_per_s(s.bytes, s.elapsed)
    }

    /// Wraps a reader so that every byte read is counted.
    pub fn reader<R: Read>(&self, inner: R) -> MeteredReader<R> {
        MeteredReader {
            inner,
            meter: self.clone(),
        }
    }
}

/// Mbit/s for `bytes` over `elapsed` (0 for no time).
pub fn mbit_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 * 8.0 / secs / 1e6
    }
}

/// A reader that counts what it reads on a [`Meter`].
#[derive(Debug)]
pub struct MeteredReader<R> {
    inner: R,
    meter: Meter,
}

impl<R: Read> Read for MeteredReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.add(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_round_trip_has_same_checksum() {
        let mut wire = Vec::new();
        let sum = send_pattern(&mut wire, 200_001).unwrap();
        assert_eq!(wire.len(), 200_001);
        let (n, recv_sum) = receive_and_check(&mut wire.as_slice()).unwrap();
        assert_eq!((n, recv_sum), (200_001, sum));
    }

    #[test]
    fn checksum_does_not_depend_on_how_the_stream_is_cut() {
        let mut wire = Vec::new();
        let whole = send_pattern(&mut wire, 3 * PERIOD as u64 + 5).unwrap();
        let mut pieces = Checksum::new();
        for (i, piece) in wire.chunks(1 + 13 * 7).enumerate() {
            let (a, b) = piece.split_at(i % piece.len());
            pieces.update(a);
            pieces.update(b);
        }
        assert_eq!(pieces.finish(), whole);
        // Reading in odd sizes across the period boundary checks the same way.
        struct Dribble<'a>(&'a [u8], usize);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.1 = self.1 % 9973 + 7919;
                let n = self.0.len().min(buf.len()).min(self.1);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let (n, sum) = receive_and_check(&mut Dribble(&wire, 0)).unwrap();
        assert_eq!((n, sum), (wire.len() as u64, whole));
        // A different length has a different checksum, even with zero bytes.
        assert_ne!(Checksum::new().finish(), {
            let mut c = Checksum::new();
            c.update(&[0]);
            c.finish()
        });
    }

    #[test]
    fn lost_byte_is_reported_at_its_offset() {
        let mut wire = Vec::new();
        send_pattern(&mut wire, 100_000).unwrap();
        wire.remove(70_000);
        let err = receive_and_check(&mut wire.as_slice()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Removing a byte shifts the rest; the first mismatch is at or after
        // the removed offset (the next byte may equal the removed one).
        let offset: u64 = err.to_string().rsplit(' ').next().unwrap().parse().unwrap();
        assert!((70_000..70_016).contains(&offset), "offset {offset}");
    }

    #[test]
    fn timed_send_matches_receiver() {
        let mut wire = Vec::new();
        let (n, sum) = send_pattern_for(&mut wire, Duration::from_millis(20)).unwrap();
        assert!(n > 0);
        let meter = Meter::new();
        let (m, recv_sum) = receive_and_check(&mut meter.reader(wire.as_slice())).unwrap();
        assert_eq!((m, recv_sum), (n, sum));
        assert_eq!(meter.sample().bytes, n);
    }

    #[test]
    fn mbit_per_s_of_one_second() {
        assert_eq!(mbit_per_s(2_500_000, Duration::from_secs(1)), 20.0);
        assert_eq!(mbit_per_s(1, Duration::ZERO), 0.0);
    }
}
