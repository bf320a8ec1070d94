//! A deterministic byte source, a checking sink and a throughput meter.
//!
//! The byte at stream offset `i` is a pure function of `i`, so the sink
//! detects a lost, duplicated or reordered byte at the first wrong offset,
//! and both ends compute the same 64-bit checksum (FNV-1a) of what passed.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// The test pattern: byte `i` of the stream is byte `i % 8` of
/// splitmix64(`i / 8`), little endian.
#[derive(Debug, Default, Clone)]
struct Pattern {
    offset: u64,
}

impl Pattern {
    /// Calls `f` with each next byte of the stream, `len` times, computing
    /// each 8-byte word once.
    fn for_next(&mut self, len: usize, mut f: impl FnMut(usize, u8) -> bool) -> bool {
        let mut word = splitmix64(self.offset / 8).to_le_bytes();
        for i in 0..len {
            let lane = (self.offset % 8) as usize;
            if lane == 0 {
                word = splitmix64(self.offset / 8).to_le_bytes();
            }
            if !f(i, word[lane]) {
                return false;
            }
            self.offset += 1;
        }
        true
    }

    /// Fills `buf` with the next bytes of the stream.
    fn fill(&mut self, buf: &mut [u8]) {
        self.for_next(buf.len(), |i, b| {
            buf[i] = b;
            true
        });
    }

    /// Checks that `buf` holds the next bytes of the stream; on a mismatch,
    /// returns the stream offset of the first wrong byte.
    fn check(&mut self, buf: &[u8]) -> Result<(), u64> {
        if self.for_next(buf.len(), |i, b| buf[i] == b) {
            Ok(())
        } else {
            Err(self.offset)
        }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a 64 of a stream, fed piece by piece.
#[derive(Debug, Clone, Copy)]
struct Checksum(u64);

impl Checksum {
    fn new() -> Checksum {
        Checksum(FNV_OFFSET)
    }

    fn update(&mut self, buf: &[u8]) {
        for &b in buf {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
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
    Ok((sent, sum.0))
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
            Ok(0) => return Ok((received, sum.0)),
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
