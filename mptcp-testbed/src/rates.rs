//! Transfers timed by their receiver, either way: a server that sends or
//! receives the test pattern as its client asks, and the client's side.
//!
//! The rate is the receiver's, from [`RAMP_UP`] after the first byte to
//! the end, so that slow start over a long round trip and what sits in
//! the senders' buffers do not count. Neither side needs a half-close: an
//! upload's rate is known when the receiving server has timed enough and
//! answers it, which also works through relays that close both ways on a
//! FIN (shadowsocks-libev); the client then waits for the server's close,
//! so the tail of what it sent is not still crossing the links when the
//! next transfer starts.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use mptcp_testbed::rates::{self, Way};
//! use mptcp_testbed::{Proto, two_links};
//!
//! let bed = two_links(2, Some(20))?;
//! let at = SocketAddr::new(bed.server_addr().into(), 5000);
//! rates::serve(&bed.server, Proto::Mptcp, at)?;
//! let mbit = bed.client.run(|| rates::measure(Proto::Mptcp, at, Way::Up, Duration::from_secs(4)))?;
//! println!("{mbit:.1} Mbit/s");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::transfer::{self, Proto};
use crate::{Host, RelayPath, Side, data};

/// What the rates leave out at the start of a transfer.
pub const RAMP_UP: Duration = Duration::from_secs(1);

/// How long either side waits for the other at most.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Which way a transfer goes, seen from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// The server sends.
    Down,
    /// The client sends.
    Up,
}

/// Serves [`measure`]'s clients on `at` in `host`, a thread each, for the
/// life of the process.
pub fn serve(host: &Host, proto: Proto, at: SocketAddr) -> io::Result<()> {
    let listener: TcpListener = host.run(|| transfer::listen(proto, at))?;
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            std::thread::spawn(move || answer(s));
        }
    });
    Ok(())
}

/// One client of [`serve`]: a byte for the way (`d` or `u`) and the
/// transfer's length in milliseconds (8 bytes, little-endian).
fn answer(mut s: TcpStream) -> io::Result<()> {
    s.set_read_timeout(Some(STALL_TIMEOUT))?;
    let mut request = [0u8; 9];
    s.read_exact(&mut request)?;
    let length = Duration::from_millis(u64::from_le_bytes(request[1..].try_into().unwrap()));
    if request[0] == b'd' {
        data::send_pattern_for(&mut s, length)?;
        return Ok(());
    }
    let rate = receive_rate(&mut s, Some(length))?;
    s.write_all(&rate.to_le_bytes())?;
    // The client stops sending when it reads the rate; what it sent until
    // then is read to its end, so that the close is not a reset and tells
    // the client that everything arrived.
    io::copy(&mut s, &mut io::sink())?;
    Ok(())
}

/// A transfer of `length` with a [`serve`]d `to`, from the calling thread's
/// namespace: the receiver's Mbit/s after [`RAMP_UP`], every byte checked.
pub fn measure(proto: Proto, to: SocketAddr, way: Way, length: Duration) -> io::Result<f64> {
    let mut s = transfer::connect(proto, to)?;
    s.set_read_timeout(Some(STALL_TIMEOUT))?;
    s.set_write_timeout(Some(STALL_TIMEOUT))?;
    let millis = u64::try_from(length.as_millis()).unwrap_or(u64::MAX);
    let mut request = vec![if way == Way::Down { b'd' } else { b'u' }];
    request.extend(millis.to_le_bytes());
    s.write_all(&request)?;
    if way == Way::Down {
        return receive_rate(&mut s, None);
    }
    let answered = Arc::new(AtomicBool::new(false));
    let sender = {
        let mut s = s.try_clone()?;
        let answered = Arc::clone(&answered);
        std::thread::spawn(move || {
            let mut writer = StopWriter {
                inner: &mut s,
                stop: &answered,
            };
            // Ends with the server's answer (an error by design).
            let _ = data::send_pattern_for(&mut writer, STALL_TIMEOUT);
        })
    };
    let mut rate = [0u8; 8];
    let read = s.read_exact(&mut rate);
    answered.store(true, Ordering::Relaxed);
    let _ = sender.join();
    read?;
    // What the sender queued after the answer still crosses the links: the
    // server's close says it has all of it, and the next transfer does not
    // share the links with this one's tail.
    s.shutdown(Shutdown::Write)?;
    io::copy(&mut s, &mut io::sink())?;
    Ok(f64::from_le_bytes(rate))
}

/// Each WAN link of `rp` alone: one TCP connection from the local node to
/// the remote node's address on that link, where [`serve`] runs on `port`
/// (bound to any address); all links at once, since they share nothing.
/// Returns each link's (download, upload) Mbit/s.
pub fn links_alone(rp: &RelayPath, port: u16, length: Duration) -> io::Result<Vec<(f64, f64)>> {
    let one_way = |way| -> io::Result<Vec<f64>> {
        let threads: Vec<_> = rp
            .wan
            .iter()
            .map(|link| {
                let far = SocketAddr::new(link.addr(Side::B).into(), port);
                rp.local
                    .spawn(move || measure(Proto::Tcp, far, way, length))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| io::Error::other("a link's transfer panicked"))?
            })
            .collect()
    };
    let down = one_way(Way::Down)?;
    let up = one_way(Way::Up)?;
    Ok(down.into_iter().zip(up).collect())
}

/// Reads the test pattern, checked, to its end or for `length` after the
/// first byte; Mbit/s from [`RAMP_UP`] after the first byte.
fn receive_rate(r: &mut impl Read, length: Option<Duration>) -> io::Result<f64> {
    let mut timed = TimedReader {
        inner: r,
        length,
        started: None,
        bytes: 0,
        mark: None,
    };
    data::receive_and_check(&mut timed)?;
    let end = Instant::now();
    let (at, bytes) = timed.mark.ok_or_else(|| {
        io::Error::other(format!(
            "the transfer ended within {RAMP_UP:?} of its first byte"
        ))
    })?;
    Ok(data::mbit_per_s(timed.bytes - bytes, end - at))
}

/// Counts what passes, notes the count [`RAMP_UP`] after the first byte,
/// and ends the stream `length` after it.
struct TimedReader<'a, R> {
    inner: &'a mut R,
    length: Option<Duration>,
    started: Option<Instant>,
    bytes: u64,
    mark: Option<(Instant, u64)>,
}

impl<R: Read> Read for TimedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let (Some(started), Some(length)) = (self.started, self.length)
            && started.elapsed() >= length
        {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        let now = Instant::now();
        let started = *self.started.get_or_insert(now);
        if self.mark.is_none() && now - started >= RAMP_UP {
            self.mark = Some((now, self.bytes));
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A writer that fails once `stop` is set: ends the sender of an upload.
struct StopWriter<'a> {
    inner: &'a mut TcpStream,
    stop: &'a AtomicBool,
}

impl Write for StopWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("the receiver has its rate"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
