//! The multiplexed session under abuse, on loopback: every stream of one
//! session at once, bulk both ways, short and long, clients that abort
//! mid-download, destinations that close mid-upload, streams reset or
//! half-closed, writes of random sizes. Whatever a stream's peer does, the
//! session keeps its place in the byte stream: every transfer that
//! completes is checked byte for byte, and no session breaks.
#![cfg(feature = "relay")]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mptcp_core::relay::EngineConfig;
use mptcp_testbed::data;

mod support;
use support::*;

/// A small deterministic generator (xorshift64*), one per thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A writer that passes each write on in pieces of random size (1 byte to
/// 256 KiB), so that the relay sees every kind of read.
struct Choppy<W> {
    inner: W,
    rng: Rng,
}

impl<W: Write> Write for Choppy<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let max = match self.rng.below(4) {
            0 => 1 + self.rng.below(64),
            1 => 1 + self.rng.below(4096),
            _ => 1 + self.rng.below(256 * 1024),
        } as usize;
        self.inner.write(&buf[..buf.len().min(max)])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A destination that reads 1 MB of an upload and then closes with the
/// rest unread (a reset towards the remote relay).
fn closing_sink(mut s: TcpStream) {
    let _ = data::discard(&mut s, 1 << 20);
}

/// What one client did.
#[derive(Debug)]
enum Outcome {
    /// A transfer that had to complete did, intact.
    Complete,
    /// A transfer that was cut short on purpose.
    Cut,
}

/// One client's turn: a transfer of the kind `kind` picks.
fn client(
    proxy: SocketAddr,
    source: SocketAddr,
    sink: SocketAddr,
    closer: SocketAddr,
    seed: u64,
) -> Outcome {
    let mut rng = Rng::new(seed);
    let len = match rng.below(3) {
        0 => 1 + rng.below(64 * 1024),
        _ => (1 << 20) + rng.below(12 << 20),
    };
    match seed % 6 {
        // A download read to its end.
        0 => {
            let mut s = request_download(proxy, source, len);
            let (n, _) = data::receive_and_check(&mut s).expect("download intact");
            assert_eq!(n, len, "download of {len} bytes");
            Outcome::Complete
        }
        // An upload in random pieces, checked by the sink.
        1 => {
            let s = connect_via(proxy, sink).unwrap();
            let mut w = Choppy {
                inner: s.try_clone().unwrap(),
                rng: Rng::new(seed ^ 0xabc),
            };
            let sum = data::send_pattern(&mut w, len).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut answer = [0u8; 16];
            (&s).read_exact(&mut answer).expect("the sink's answer");
            let n = u64::from_le_bytes(answer[..8].try_into().unwrap());
            let got = u64::from_le_bytes(answer[8..].try_into().unwrap());
            assert_eq!((n, got), (len, sum), "upload of {len} bytes");
            Outcome::Complete
        }
        // A download the client abandons part way, with bytes unread (its
        // close is a reset).
        2 => {
            let mut s = request_download(proxy, source, 64 << 20);
            let mut buf = vec![0u8; 64 * 1024];
            let stop_at = rng.below(8 << 20);
            let mut n = 0u64;
            while n < stop_at {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k as u64,
                }
            }
            Outcome::Cut
        }
        // An upload to a destination that closes after 1 MB.
        3 => {
            let mut s = connect_via(proxy, closer).unwrap();
            let _ = data::send_pattern(&mut s, 32 << 20);
            Outcome::Cut
        }
        // A download the client resets (SO_LINGER 0) mid-way.
        4 => {
            let mut s = request_download(proxy, source, 64 << 20);
            let mut buf = vec![0u8; 1 + rng.below(512 * 1024) as usize];
            let _ = s.read_exact(&mut buf);
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            Outcome::Cut
        }
        // An upload half-closed at once after a few bytes, then the
        // answer read: the FIN must come after all the data.
        _ => {
            let mut s = connect_via(proxy, sink).unwrap();
            let small = 1 + rng.below(1000);
            let sum = data::send_pattern(&mut s, small).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut answer = [0u8; 16];
            s.read_exact(&mut answer).expect("the sink's answer");
            let n = u64::from_le_bytes(answer[..8].try_into().unwrap());
            let got = u64::from_le_bytes(answer[8..].try_into().unwrap());
            assert_eq!((n, got), (small, sum), "half-closed upload");
            Outcome::Complete
        }
    }
}

/// Rounds of `clients` concurrent clients on `chain`; returns how many
/// transfers completed.
fn rounds(chain: &Chain, rounds: u64, clients: u64) -> u64 {
    let proxy = chain.socks();
    let (source, sink, closer) = (
        server(pattern_source),
        server(pattern_sink),
        server(closing_sink),
    );
    let mut complete = 0;
    for round in 0..rounds {
        let threads: Vec<_> = (0..clients)
            .map(|i| {
                let seed = round * clients + i;
                std::thread::spawn(move || client(proxy, source, sink, closer, seed))
            })
            .collect();
        for t in threads {
            if let Outcome::Complete = t.join().expect("a client failed") {
                complete += 1;
            }
        }
    }
    complete
}

#[test]
fn aborted_and_reset_streams_never_break_the_shared_session() {
    let chain = Chain::one_session();
    let started = Instant::now();
    let complete = rounds(&chain, 20, 12);
    let during = chain.local.stats();
    let (l, r) = chain.finish();
    assert!(complete >= 20 * 4, "{complete} complete transfers");
    assert_eq!(
        (l.session_errors, r.session_errors),
        (0, 0),
        "no session broke\nlocal {l}\nremote {r}"
    );
    assert_eq!(
        during.sessions, 1,
        "the one session carried everything: {during}"
    );
    eprintln!("{complete} transfers checked in {:?}", started.elapsed());
}

#[test]
fn the_shared_session_survives_abuse_with_small_windows_and_two_workers() {
    // Small windows make streams stop and resume on credit all the time;
    // two workers on each side split the streams over two sessions.
    let engine = EngineConfig {
        stream_window: 256 * 1024,
        ..engine()
    };
    let chain = Chain::with_local(engine, 1);
    let complete = rounds(&chain, 16, 12);
    let (l, r) = chain.finish();
    assert!(complete >= 16 * 4, "{complete} complete transfers");
    assert_eq!(
        (l.session_errors, r.session_errors),
        (0, 0),
        "no session broke\nlocal {l}\nremote {r}"
    );
}
