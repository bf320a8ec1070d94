//! The zero-copy data path: `splice(2)` from a socket into a pipe and from
//! the pipe into the other socket, one [`Flow`] per direction.
//!
//! Pipes are taken from a per-worker [`PipePool`] only while data is in
//! flight and handed back as soon as they are empty, so an idle connection
//! holds no pipe (2 file descriptors instead of 6). A pipe that still holds
//! data when its connection closes is closed, never pooled.
//!
//! If the kernel refuses splice on a socket (EINVAL), or no pipe can be
//! created (EMFILE), the flow switches to a buffered copy; the caller counts
//! and logs each switch (`splice_fallbacks`).
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::sys;

/// One pipe: its read and write ends, and how many bytes it holds.
#[derive(Debug)]
pub(crate) struct Pipe {
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
    pub(crate) capacity: usize,
}

impl Pipe {
    fn new(size: usize) -> io::Result<Pipe> {
        let (read, write) = sys::fd::pipe()?;
        let mut pipe = Pipe {
            read,
            write,
            capacity: DEFAULT_PIPE_SIZE,
        };
        // Failure (EPERM above pipe-max-size for unprivileged users) leaves
        // the default size, which works too.
        let _ = pipe.resize(size);
        Ok(pipe)
    }

    /// Asks the kernel for `size` bytes of room; on success the pipe's
    /// capacity is what the kernel granted (a power of two pages).
    fn resize(&mut self, size: usize) -> io::Result<()> {
        self.capacity = sys::fd::set_pipe_size(self.write.as_raw_fd(), size)?;
        Ok(())
    }
}

/// The kernel's default pipe size (16 pages).
const DEFAULT_PIPE_SIZE: usize = 64 * 1024;

/// Grown pipes a pool keeps as they are, for the next bulk transfer.
const WARM_PIPES: usize = 4;

/// Empty pipes kept for reuse by one worker.
#[derive(Debug)]
pub(crate) struct PipePool {
    free: Vec<Pipe>,
    /// Grown pipes, not shrunk: a multiplexed stream takes a pipe per
    /// frame, and a bulk one should not grow a fresh pipe every time.
    warm: Vec<Pipe>,
    /// The size of a new pipe.
    size: usize,
    /// How far a bulk flow's pipe may grow; lowered to what the kernel
    /// grants when it refuses more, so a refusal is not asked again.
    max_size: usize,
    max_free: usize,
}

impl PipePool {
    pub(crate) fn new(size: usize, max_size: usize, max_free: usize) -> PipePool {
        PipePool {
            free: Vec::new(),
            warm: Vec::new(),
            size,
            max_size: max_size.max(size),
            max_free,
        }
    }

    /// Grows a pipe that a single read filled (a bulk flow), four times at
    /// a step, up to `max_size`.
    pub(crate) fn grow(&mut self, pipe: &mut Pipe) {
        if pipe.capacity >= self.max_size {
            return;
        }
        let want = (pipe.capacity * 4).min(self.max_size);
        if pipe.resize(want).is_err() {
            self.max_size = pipe.capacity;
        }
    }

    pub(crate) fn get(&mut self) -> io::Result<Pipe> {
        match self.free.pop() {
            Some(p) => Ok(p),
            None => Pipe::new(self.size),
        }
    }

    /// A pipe for a transfer known to be bulk: a grown one if the pool
    /// kept one.
    pub(crate) fn get_bulk(&mut self) -> io::Result<Pipe> {
        match self.warm.pop() {
            Some(p) => Ok(p),
            None => self.get(),
        }
    }

    /// Takes back a pipe that holds no data. A few grown ones are kept for
    /// [`PipePool::get_bulk`]; the others shrink back to the starting
    /// size: the next connection is most likely a short one, and short
    /// connections relay faster over small pipes.
    pub(crate) fn put(&mut self, mut pipe: Pipe) {
        if pipe.capacity > self.size && self.warm.len() < WARM_PIPES {
            self.warm.push(pipe);
            return;
        }
        if self.free.len() < self.max_free
            && (pipe.capacity == self.size || pipe.resize(self.size).is_ok())
        {
            self.free.push(pipe);
        }
    }
}

/// How a flow moves bytes.
#[derive(Debug)]
enum Path {
    /// Zero-copy; `pipe` is held only while `in_pipe > 0`.
    Splice { pipe: Option<Pipe>, in_pipe: usize },
    /// Buffered copy (fallback): bytes `start..end` of `buf` are pending.
    Copy {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
}

/// One direction of a relayed connection.
#[derive(Debug)]
pub(crate) struct Flow {
    /// Bytes to send before relaying (handshake leftovers, replies).
    prefix: Vec<u8>,
    prefix_pos: usize,
    path: Path,
    /// The source reached EOF.
    eof: bool,
    /// EOF was passed on: the destination's write side is shut down.
    shut: bool,
}

/// What one call to [`Flow::pump`] did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Pumped {
    /// Bytes written to the destination.
    pub bytes: u64,
    /// Stopped because the read budget ran out, not because a socket would
    /// block: call again soon (edge-triggered readiness will not).
    pub budget_exhausted: bool,
    /// The flow switched to a buffered copy during this call (why).
    pub fell_back: Option<&'static str>,
}

const COPY_BUF: usize = 64 * 1024;

impl Flow {
    pub(crate) fn new(prefix: Vec<u8>) -> Flow {
        Flow {
            prefix,
            prefix_pos: 0,
            path: Path::Splice {
                pipe: None,
                in_pipe: 0,
            },
            eof: false,
            shut: false,
        }
    }

    /// The source ended and the destination was told (write side shut), or
    /// will be by the close that follows.
    pub(crate) fn done(&self) -> bool {
        self.shut
    }

    /// Moves bytes from `src` to `dst` until one would block, the source
    /// ends, or `budget` reads were made. `closing_at_eof`: the other
    /// direction is done, so the caller closes both sockets as soon as this
    /// one ends, and that close sends the FIN: EOF then costs no
    /// `shutdown` call.
    pub(crate) fn pump(
        &mut self,
        src: RawFd,
        dst: RawFd,
        pool: &mut PipePool,
        budget: usize,
        closing_at_eof: bool,
    ) -> io::Result<Pumped> {
        let mut result = Pumped::default();
        let mut reads = 0;
        let outcome: io::Result<()> = (|| loop {
            if self.shut {
                return Ok(());
            }
            if self.prefix_pos < self.prefix.len() {
                let n = send(dst, &self.prefix[self.prefix_pos..])?;
                self.prefix_pos += n;
                result.bytes += n as u64;
                if self.prefix_pos == self.prefix.len() {
                    self.prefix = Vec::new();
                    self.prefix_pos = 0;
                }
                continue;
            }
            if self.pending() > 0 {
                result.bytes += self.write_pending(dst)? as u64;
                continue;
            }
            if self.eof {
                if !closing_at_eof {
                    shutdown_write(dst)?;
                }
                self.shut = true;
                return Ok(());
            }
            if reads == budget {
                result.budget_exhausted = true;
                return Ok(());
            }
            reads += 1;
            if self.read(src, pool, &mut result)? == 0 {
                self.eof = true;
            }
        })();
        // An empty pipe goes back to the pool, so idle connections hold none.
        if let Path::Splice { pipe, in_pipe: 0 } = &mut self.path
            && let Some(p) = pipe.take()
        {
            pool.put(p);
        }
        match outcome {
            Ok(()) => Ok(result),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(result),
            Err(e) => Err(e),
        }
    }

    fn pending(&self) -> usize {
        match &self.path {
            Path::Splice { in_pipe, .. } => *in_pipe,
            Path::Copy { start, end, .. } => end - start,
        }
    }

    fn write_pending(&mut self, dst: RawFd) -> io::Result<usize> {
        match &mut self.path {
            Path::Splice { pipe, in_pipe } => {
                let p = pipe.as_ref().expect("a pipe holds the pending bytes");
                let n = splice(p.read.as_raw_fd(), dst, *in_pipe)?;
                *in_pipe -= n;
                Ok(n)
            }
            Path::Copy { buf, start, end } => {
                let n = send(dst, &buf[*start..*end])?;
                *start += n;
                Ok(n)
            }
        }
    }

    /// Reads once from `src`; 0 means EOF.
    fn read(&mut self, src: RawFd, pool: &mut PipePool, result: &mut Pumped) -> io::Result<usize> {
        if let Path::Splice { pipe, in_pipe } = &mut self.path {
            let p = match pipe {
                Some(p) => p,
                None => match pool.get() {
                    Ok(p) => pipe.insert(p),
                    Err(e) if is_fd_exhaustion(&e) => {
                        return self.fall_back(src, result, "no file descriptor for a pipe");
                    }
                    Err(e) => return Err(e),
                },
            };
            return match splice(src, p.write.as_raw_fd(), p.capacity) {
                Ok(n) => {
                    *in_pipe = n;
                    if n == p.capacity {
                        pool.grow(p);
                    }
                    Ok(n)
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.fall_back(src, result, "splice() refused with EINVAL")
                }
                Err(e) => Err(e),
            };
        }
        let Path::Copy { buf, start, end } = &mut self.path else {
            unreachable!()
        };
        let n = recv(src, buf)?;
        (*start, *end) = (0, n);
        Ok(n)
    }

    fn fall_back(
        &mut self,
        src: RawFd,
        result: &mut Pumped,
        why: &'static str,
    ) -> io::Result<usize> {
        result.fell_back = Some(why);
        // Only reached with an empty pipe: nothing is lost by dropping it.
        self.path = Path::Copy {
            buf: vec![0; COPY_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
        };
        let Path::Copy { buf, start, end } = &mut self.path else {
            unreachable!()
        };
        let n = recv(src, buf)?;
        (*start, *end) = (0, n);
        Ok(n)
    }
}

pub(crate) fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOMEM)
    )
}

pub(crate) use crate::sys::fd::{recv, shutdown_write, splice};

/// `send` without `SIGPIPE`.
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    sys::fd::send(fd, buf, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    /// client -> relay_in | relay | relay_out -> server, over loopback;
    /// the relay's two sockets are non-blocking.
    fn relayed() -> [TcpStream; 4] {
        let (client, relay_in) = pair();
        let (relay_out, server) = pair();
        relay_in.set_nonblocking(true).unwrap();
        relay_out.set_nonblocking(true).unwrap();
        [client, relay_in, relay_out, server]
    }

    /// Pumps `flow` from `src` to `dst` until it is done (at most 20 s);
    /// `watch` sees the flow after each call.
    fn pump_until_done(
        flow: &mut Flow,
        (src, dst): (&TcpStream, &TcpStream),
        pool: &mut PipePool,
        budget: usize,
        mut watch: impl FnMut(&Flow),
    ) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !flow.done() {
            assert!(std::time::Instant::now() < deadline, "flow did not finish");
            flow.pump(src.as_raw_fd(), dst.as_raw_fd(), pool, budget, false)
                .unwrap();
            watch(flow);
        }
    }

    #[test]
    fn flow_moves_prefix_then_data_then_eof() {
        let [mut client, relay_in, relay_out, mut server] = relayed();
        let mut pool = PipePool::new(64 * 1024, 1024 * 1024, 4);
        let mut flow = Flow::new(b"hello ".to_vec());
        client.write_all(b"world").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        pump_until_done(&mut flow, (&relay_in, &relay_out), &mut pool, 4, |_| {});
        let mut got = String::new();
        server.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello world");
        assert_eq!(pool.free.len(), 1, "the empty pipe went back to the pool");
    }

    #[test]
    fn a_bulk_flow_grows_its_pipe_and_loses_nothing() {
        let [mut client, relay_in, relay_out, mut server] = relayed();
        let mut pool = PipePool::new(64 * 1024, 1024 * 1024, 4);
        let mut flow = Flow::new(Vec::new());
        // More than the sockets' buffers hold, so that the relay's pipe
        // still holds bytes while the reader below is slow to start.
        let data: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            client.write_all(&sent).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
        });
        let reader = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let mut got = Vec::new();
            server.read_to_end(&mut got).unwrap();
            got
        });
        let mut biggest = 0;
        pump_until_done(&mut flow, (&relay_in, &relay_out), &mut pool, 16, |flow| {
            if let Path::Splice { pipe: Some(p), .. } = &flow.path {
                biggest = biggest.max(p.capacity);
            }
        });
        writer.join().unwrap();
        assert!(
            reader.join().unwrap() == data,
            "bytes differ after relaying"
        );
        assert!(
            biggest > 64 * 1024 && biggest <= 1024 * 1024,
            "the pipe grew within bounds: {biggest}"
        );
        assert!(
            pool.free.iter().all(|p| p.capacity == 64 * 1024),
            "pooled pipes are back to their starting size"
        );
    }

    #[test]
    fn pipes_grow_by_four_up_to_the_limit() {
        let mut pool = PipePool::new(64 * 1024, 1024 * 1024, 4);
        let mut pipe = pool.get().unwrap();
        let mut sizes = vec![pipe.capacity];
        for _ in 0..3 {
            pool.grow(&mut pipe);
            sizes.push(pipe.capacity);
        }
        assert_eq!(sizes, [64 << 10, 256 << 10, 1 << 20, 1 << 20]);
    }
}
