//! The SOCKS5 bytes of a relay hop on its socket, never waiting: the
//! pipelined request (greeting, credentials, CONNECT in one write) and the
//! relay's answers, consumed byte by byte as they arrive so that nothing of
//! the handshake lingers readable for the program, while the destination's
//! first bytes stay in the socket for it. [`relay`](crate::relay) decides
//! when these run.

use std::net::SocketAddr;

use libc::{c_int, socklen_t};
use mptcp_core::socks5::{self, ClientHandshake, Progress, ReplyCode, Request, TargetAddr};

use crate::config::{LogLevel, Relay};
use crate::fdtable::Cell;
use crate::relay::read_sockaddr;
use crate::{dns, errno, log, real};

/// The destination of the hop, as stored at `connect()`.
pub fn hop_dest(cell: &Cell) -> Option<SocketAddr> {
    let (raw, len) = cell.dest();
    // SAFETY: `raw` holds `len` bytes of a sockaddr we stored ourselves.
    unsafe { read_sockaddr(raw.as_ptr().cast(), len as socklen_t) }
}

/// Sends greeting, credentials and CONNECT in one write. The connection
/// to the relay has just come up, so its send buffer is empty and takes the
/// few hundred bytes at once.
pub fn send_request(fd: c_int, cell: &Cell, relay: &Relay) -> Result<(), c_int> {
    let dest = hop_dest(cell).ok_or(libc::EINVAL)?;
    let credentials = relay
        .credentials
        .as_ref()
        .map(|(u, p)| (u.as_str(), p.as_str()));
    let target = Request::connect(match dest {
        SocketAddr::V4(v4) if dns::is_placeholder(*v4.ip()) => {
            let name = dns::name_of(*v4.ip()).ok_or(libc::EHOSTUNREACH)?;
            TargetAddr::Domain(name, v4.port())
        }
        _ => TargetAddr::Ip(dest),
    });
    let mut request = Vec::with_capacity(300 + credentials.map_or(0, |(u, p)| u.len() + p.len()));
    socks5::encode_client_hello_auth_request(credentials, &target, &mut request)
        .map_err(|_| libc::EINVAL)?;
    loop {
        // SAFETY: the buffer is live for the call.
        let n = unsafe {
            libc::send(
                fd,
                request.as_ptr().cast(),
                request.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n == request.len() as isize {
            return Ok(());
        }
        let e = if n < 0 { errno() } else { libc::ENOBUFS };
        log::line(
            LogLevel::Error,
            format_args!(
                "could not send the SOCKS5 request for {dest} to the relay {}: errno {e}",
                relay.addr
            ),
        );
        return Err(e);
    }
}

/// The relay's answers before its reply to CONNECT when all goes well:
/// the method choice, then (with credentials) the authentication status.
fn expected_answers(with_auth: bool) -> &'static [u8] {
    if with_auth {
        &[
            socks5::VERSION,
            socks5::METHOD_USER_PASS,
            socks5::USER_PASS_VERSION,
            0,
        ]
    } else {
        &[socks5::VERSION, socks5::METHOD_NO_AUTH]
    }
}

/// Address types of a SOCKS5 reply (RFC 1928).
const ATYP_IPV4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_IPV6: u8 = 4;

/// How much of the relay's answers a hop has consumed, in the 32 bits its
/// record keeps: the byte count (low 16 bits) and the two bytes of the reply
/// to CONNECT that decide its length, the address type and the next byte
/// (a name's length). The other consumed bytes are known (the expected
/// method choice and authentication status, the reply's version and
/// success code) or never looked at (reserved byte, bound address), so the
/// parser can be replayed up to the reply's header, and once the header is
/// known the rest is skipped by count.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct AnswerProgress(u32);

impl AnswerProgress {
    /// Bytes consumed so far.
    fn consumed(self) -> usize {
        (self.0 & 0xffff) as usize
    }

    /// After `input` (the replayed and the newly arrived answers) was
    /// consumed up to `count` bytes; `expected` bytes precede the reply.
    fn after(input: &[u8], expected: usize, count: usize) -> AnswerProgress {
        let reply_byte = |k: usize| {
            let at = expected + k;
            if at < count {
                input.get(at).copied().unwrap_or(0)
            } else {
                0
            }
        };
        AnswerProgress(
            count as u32 | u32::from(reply_byte(3)) << 16 | u32::from(reply_byte(4)) << 24,
        )
    }

    /// The length of all the answers, once the reply's header is consumed.
    fn total(self, expected: usize) -> Option<usize> {
        let reply = self.consumed().checked_sub(expected)?;
        let address = match (self.0 >> 16) as u8 {
            ATYP_IPV4 if reply >= 4 => 4,
            ATYP_IPV6 if reply >= 4 => 16,
            ATYP_DOMAIN if reply >= 5 => 1 + (self.0 >> 24) as usize,
            _ => return None,
        };
        // VER REP RSV ATYP, the address, the port.
        Some(expected + 4 + address + 2)
    }

    /// Writes the consumed answers into `out` as the parser saw them (only
    /// called before the reply's header is complete); returns their length.
    fn replay(self, expected: &[u8], out: &mut [u8]) -> usize {
        let n = self.consumed().min(out.len());
        for (i, byte) in out[..n].iter_mut().enumerate() {
            *byte = match i.checked_sub(expected.len()) {
                None => expected[i],
                Some(0) => socks5::VERSION,
                Some(3) => (self.0 >> 16) as u8,
                Some(4) => (self.0 >> 24) as u8,
                // The success code; the reserved byte, unchecked.
                Some(_) => 0,
            };
        }
        n
    }
}

/// Reads what has arrived of the relay's answers, without waiting, and
/// consumes every byte of them (the progress kept in the cell), so nothing
/// of the handshake lingers readable for the program's event loop to spin
/// on. `Ok(true)` once the reply to CONNECT is consumed and was a success
/// (the destination's first bytes stay in the socket for the program).
pub fn read_answers(fd: c_int, cell: &Cell, relay: &Relay) -> Result<bool, c_int> {
    let with_auth = relay.credentials.is_some();
    let expected = expected_answers(with_auth);
    let progress = AnswerProgress(cell.answer_progress());
    let dest = hop_dest(cell).ok_or(libc::EINVAL)?;
    let closed = || {
        log::line(
            LogLevel::Error,
            format_args!(
                "the relay {} closed during the SOCKS5 handshake for {dest}",
                relay.addr
            ),
        );
        libc::ECONNRESET
    };
    if let Some(total) = progress.total(expected.len()) {
        // The rest of the reply is the bound address and port: skipped.
        let mut sink = [0u8; 262];
        let left = (total - progress.consumed()).min(sink.len());
        return match recv_available(fd, &mut sink[..left], 0)? {
            None => Ok(false),
            Some(0) => Err(closed()),
            Some(n) => {
                let count = progress.consumed() + n;
                cell.set_answer_progress(progress.0 & !0xffff | count as u32);
                Ok(count == total)
            }
        };
    }
    let mut input = [0u8; 4 + 512];
    let replayed = progress.replay(expected, &mut input);
    let n = match recv_available(fd, &mut input[replayed..], libc::MSG_PEEK)? {
        None => return Ok(false),
        Some(0) => return Err(closed()),
        Some(n) => n,
    };
    let input = &input[..replayed + n];
    match ClientHandshake::new(with_auth).advance(input) {
        Ok(Progress::NeedMore) => {
            // All of it belongs to the handshake.
            consume(fd, n)?;
            let progress = AnswerProgress::after(input, expected.len(), input.len());
            cell.set_answer_progress(progress.0);
            // A reply header completed just now: its address may be here.
            if progress.total(expected.len()).is_some() {
                return read_answers(fd, cell, relay);
            }
            Ok(false)
        }
        Ok(Progress::Done(_, used)) => {
            consume(fd, used - replayed)?;
            Ok(true)
        }
        Err(e) => {
            log::line(
                LogLevel::Error,
                format_args!("relay {} refused {dest}: {e}", relay.addr),
            );
            Err(reply_errno(e.reply))
        }
    }
}

/// One non-blocking `recv` into `buf` with `flags`: `None` when nothing is
/// waiting, `Some(0)` at end of file.
fn recv_available(fd: c_int, buf: &mut [u8], flags: c_int) -> Result<Option<usize>, c_int> {
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe {
            real::recv(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return Ok(None),
            e => return Err(e),
        }
    }
}

/// Reads and drops `count` bytes that are known to be waiting.
fn consume(fd: c_int, mut count: usize) -> Result<(), c_int> {
    let mut sink = [0u8; 512];
    while count > 0 {
        let len = count.min(sink.len());
        match recv_available(fd, &mut sink[..len], 0)? {
            Some(0) | None => return Err(libc::ECONNRESET),
            Some(n) => count -= n,
        }
    }
    Ok(())
}

/// The errno a program sees for a SOCKS5 reply.
pub fn reply_errno(reply: ReplyCode) -> c_int {
    match reply {
        ReplyCode::Succeeded => 0,
        ReplyCode::NotAllowed => libc::EACCES,
        ReplyCode::NetworkUnreachable => libc::ENETUNREACH,
        ReplyCode::HostUnreachable => libc::EHOSTUNREACH,
        ReplyCode::ConnectionRefused | ReplyCode::GeneralFailure => libc::ECONNREFUSED,
        ReplyCode::TtlExpired => libc::ETIMEDOUT,
        ReplyCode::CommandNotSupported => libc::EOPNOTSUPP,
        ReplyCode::AddressTypeNotSupported => libc::EAFNOSUPPORT,
        ReplyCode::Other(_) => libc::EPROTO,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::fdtable::{self, flag};
    use crate::relay::{Hop, advance, bytes_of, to_sockaddr};

    /// A hop on one end of a connected unix stream pair, the relay on the
    /// other; both closed when dropped.
    struct TestHop {
        hop: c_int,
        relay_end: c_int,
        cell: &'static Cell,
        relay: Relay,
    }

    impl TestHop {
        fn new(credentials: bool) -> TestHop {
            let mut fds = [0; 2];
            // SAFETY: `fds` is writable for two descriptors.
            let r =
                unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
            assert_eq!(r, 0);
            let cell = fdtable::track(fds[0], flag::INET_STREAM, libc::AF_INET).unwrap();
            let (dest, len) = to_sockaddr(&"198.18.0.9:80".parse().unwrap());
            assert!(cell.set_dest(bytes_of(&dest, len)));
            TestHop {
                hop: fds[0],
                relay_end: fds[1],
                cell,
                relay: Relay {
                    addr: "198.18.0.2:1080".parse().unwrap(),
                    credentials: credentials.then(|| ("u".to_owned(), "p".to_owned())),
                    timeout: Duration::from_secs(1),
                },
            }
        }

        /// The relay sends `bytes`.
        fn relay_sends(&self, bytes: &[u8]) {
            // SAFETY: `bytes` is readable for its length.
            let n = unsafe { libc::write(self.relay_end, bytes.as_ptr().cast(), bytes.len()) };
            assert_eq!(n, bytes.len() as isize);
        }

        /// What the program could read on the hop right now.
        fn readable(&self) -> Vec<u8> {
            let mut buf = [0u8; 64];
            match recv_available(self.hop, &mut buf, 0).unwrap() {
                Some(n) => buf[..n].to_vec(),
                None => Vec::new(),
            }
        }

        fn read_answers(&self) -> Result<bool, c_int> {
            read_answers(self.hop, self.cell, &self.relay)
        }
    }

    impl Drop for TestHop {
        fn drop(&mut self) {
            self.cell.clear();
            // SAFETY: our own descriptors.
            unsafe {
                libc::close(self.hop);
                libc::close(self.relay_end);
            }
        }
    }

    /// A successful reply with `bound` as its address.
    fn success(bound: &str) -> Vec<u8> {
        let mut reply = Vec::new();
        socks5::encode_reply(
            ReplyCode::Succeeded,
            Some(bound.parse().unwrap()),
            &mut reply,
        );
        reply
    }

    /// Feeds the answers with `reply` (then the destination's first bytes)
    /// to a hop one byte at a time: each byte is consumed as it arrives, the
    /// hop is done exactly at the last one, and the destination's bytes are
    /// intact.
    fn feed_byte_by_byte(credentials: bool, reply: &[u8]) {
        let t = TestHop::new(credentials);
        let answers = [expected_answers(credentials), reply].concat();
        for (i, byte) in answers.iter().enumerate() {
            t.relay_sends(&[*byte]);
            let done = t.read_answers().unwrap();
            assert_eq!(
                done,
                i == answers.len() - 1,
                "after byte {i} of {answers:?}"
            );
            assert!(t.readable().is_empty(), "byte {i} lingers");
        }
        t.relay_sends(b"HTTP/1.1 200");
        assert_eq!(t.readable(), b"HTTP/1.1 200");
    }

    #[test]
    fn answers_are_consumed_as_they_arrive_for_every_reply_type() {
        // A bound address given as a (non-ASCII) name, as no relay does.
        let name = "relay-é.example";
        let domain = [
            &[5, 0, 0, ATYP_DOMAIN, name.len() as u8][..],
            name.as_bytes(),
            &[0x0f, 0xa0],
        ]
        .concat();
        for credentials in [false, true] {
            for reply in [
                success("192.0.2.1:4000"),
                success("[2001:db8::1]:4000"),
                domain.clone(),
            ] {
                feed_byte_by_byte(credentials, &reply);
            }
        }
    }

    #[test]
    fn threads_advancing_one_hop_together_consume_each_byte_once() {
        let t = TestHop::new(true);
        t.cell.update(flag::RELAY_PENDING | flag::RELAY_SENT, 0);
        let answers = [expected_answers(true), &success("[2001:db8::1]:4000")].concat();
        let outcomes = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let until = Instant::now() + Duration::from_secs(5);
                        loop {
                            match advance(t.hop, t.cell, &t.relay) {
                                Hop::Answering if Instant::now() < until => std::hint::spin_loop(),
                                done => return done,
                            }
                        }
                    })
                })
                .collect();
            for byte in &answers {
                t.relay_sends(&[*byte]);
                std::thread::sleep(Duration::from_millis(1));
            }
            threads
                .into_iter()
                .map(|thread| thread.join().unwrap())
                .collect::<Vec<_>>()
        });
        assert!(outcomes.iter().all(|h| *h == Hop::Ready), "{outcomes:?}");
        t.relay_sends(b"first bytes");
        assert_eq!(t.readable(), b"first bytes");
        assert_eq!(t.cell.flags() & flag::RELAY_BUSY, 0);
    }

    #[test]
    fn a_refusal_is_its_errno_even_one_byte_at_a_time() {
        let t = TestHop::new(false);
        for byte in [5, 0, 5] {
            t.relay_sends(&[byte]);
            match t.read_answers() {
                Ok(done) => assert!(!done),
                Err(e) => assert_eq!((byte, e), (5, libc::ECONNREFUSED)),
            }
        }
        assert_eq!(
            AnswerProgress(t.cell.answer_progress()).consumed(),
            3,
            "the method choice and the reply's version were consumed"
        );
    }

    #[test]
    fn replies_map_to_distinct_errnos() {
        assert_eq!(
            reply_errno(ReplyCode::ConnectionRefused),
            libc::ECONNREFUSED
        );
        assert_eq!(reply_errno(ReplyCode::NotAllowed), libc::EACCES);
        assert_eq!(reply_errno(ReplyCode::HostUnreachable), libc::EHOSTUNREACH);
        assert_eq!(reply_errno(ReplyCode::TtlExpired), libc::ETIMEDOUT);
    }
}
