//! The encrypted channel between a local and a remote relay: the Noise
//! protocol framework (`Noise_IK_25519_AESGCM_SHA256`, the snow crate).
//!
//! Each relay has a static Curve25519 key pair ([`SecretKey`],
//! [`PublicKey`]); the local relay pins the remote's public key, and the
//! remote may pin the local relays' keys. IK: the initiator (local) knows
//! the responder's key beforehand, so the handshake is one round trip, and
//! a responder that is not the pinned one cannot finish it; the responder
//! learns the initiator's key in the first message and checks it. Both
//! sides mix fresh ephemeral keys in, so recorded traffic stays secret
//! when a static key leaks later (forward secrecy).
//!
//! On the wire, each handshake message and each encrypted record is a
//! 2-byte big-endian length and that many bytes. A record carries at most
//! [`MAX_PLAINTEXT`] bytes (plus the 16-byte tag). The first byte of an
//! encrypted connection is the high byte of the first message's length
//! (0), never SOCKS5's version byte (5), so one listener tells both apart.
//!
//! After the handshake, records are Noise transport messages (AES-256-GCM,
//! the nonce a 64-bit counter per direction, no associated data), sealed
//! and opened with ring on the two keys of Noise's Split: the writer
//! ([`Sealer`]) seals records in place in its output buffer, straight
//! where the plaintext was read to (snow's transport API copies every
//! record once more), and writer and reader ([`Opener`]) need no lock.
//!
//! ```
//! use mptcp_core::relay::SecretKey;
//! let key = SecretKey::generate();
//! let text = key.to_string();
//! let back: SecretKey = text.parse().unwrap();
//! assert_eq!(back.public_key(), key.public_key());
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use snow::HandshakeState;

use crate::sys;

/// The Noise protocol name.
const PATTERN: &str = "Noise_IK_25519_AESGCM_SHA256";
/// Bound into the handshake: both ends speak this protocol and version.
const PROLOGUE: &[u8] = b"mptcp relay session v1";
/// The longest Noise message: the room a record needs to be opened in.
pub(crate) const MAX_MESSAGE: usize = 65535;
/// The AEAD tag of every record.
const TAG: usize = 16;
/// The most plaintext one record carries.
pub const MAX_PLAINTEXT: usize = MAX_MESSAGE - TAG;
/// Bytes of each record's length prefix.
const LEN_PREFIX: usize = 2;
/// Ciphertext read from the socket at once: several records.
const READ_AHEAD: usize = 256 * 1024;

/// Why a key given as text was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

fn decode_key(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|e| KeyError(format!("not a base64 key: {e}")))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| KeyError(format!("a key is 32 bytes, this one {}", b.len())))
}

/// A relay's public key: what the other relay pins (44 characters of
/// base64, as WireGuard writes them).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<PublicKey, KeyError> {
        decode_key(s).map(PublicKey)
    }
}

/// A relay's secret key. Its `Debug` never shows it; `Display` writes
/// it as base64 (for `mptcp relay keygen`).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// A new random key.
    pub fn generate() -> SecretKey {
        let pair = builder()
            .generate_keypair()
            .expect("Curve25519 key generation with the OS random source");
        let mut secret = [0; 32];
        secret.copy_from_slice(&pair.private);
        SecretKey(secret)
    }

    /// The public key that goes with it.
    pub fn public_key(&self) -> PublicKey {
        let mut dh = snow::resolvers::DefaultResolver
            .resolve_dh(&snow::params::DHChoice::Curve25519)
            .expect("Curve25519 is built in");
        dh.set(&self.0);
        let mut public = [0; 32];
        public.copy_from_slice(dh.pubkey());
        PublicKey(public)
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public_key())
    }
}

impl FromStr for SecretKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<SecretKey, KeyError> {
        decode_key(s).map(SecretKey)
    }
}

/// A local relay's encryption towards its remote: its own key and the
/// remote's, pinned.
#[derive(Debug)]
pub(crate) struct DialKeys {
    pub own: SecretKey,
    pub remote: PublicKey,
}

/// A remote relay's encryption: its own key, the local relays' keys it
/// lets in (any, when empty), and whether plain SOCKS5 clients are served
/// too.
#[derive(Debug)]
pub(crate) struct AcceptKeys {
    pub own: SecretKey,
    pub peers: Vec<PublicKey>,
    pub plain: bool,
}

impl AcceptKeys {
    /// Whether a local relay with `key` may come in.
    pub(crate) fn admits(&self, key: &PublicKey) -> bool {
        self.peers.is_empty() || self.peers.contains(key)
    }

    /// Whether `key` is one of the pinned peers (which need no password).
    pub(crate) fn pinned(&self, key: &PublicKey) -> bool {
        self.peers.contains(key)
    }
}

/// Whether the first bytes of a connection start a handshake (rather than
/// SOCKS5, whose first byte is its version, 5).
pub(crate) fn starts_handshake(first: u8) -> bool {
    first != crate::socks5::VERSION
}

use snow::resolvers::CryptoResolver;

fn builder() -> snow::Builder<'static> {
    snow::Builder::new(PATTERN.parse().expect("a valid Noise pattern"))
}

fn noise_error(e: snow::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("encryption: {e}"))
}

/// Frames a handshake message.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEN_PREFIX + message.len());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// A whole framed message at the front of `buf`: its body and the bytes
/// it takes.
fn take_framed(buf: &[u8]) -> Option<(&[u8], usize)> {
    let len = usize::from(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]));
    let body = buf.get(LEN_PREFIX..LEN_PREFIX + len)?;
    Some((body, LEN_PREFIX + len))
}

/// The two halves of an established channel.
pub(crate) struct Channel {
    pub sealer: Sealer,
    pub opener: Opener,
    /// The other relay's static key.
    pub peer: PublicKey,
}

fn channel(mut handshake: HandshakeState) -> io::Result<Channel> {
    let peer = handshake
        .get_remote_static()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .map(PublicKey)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no static key from the peer"))?;
    if !handshake.is_handshake_finished() {
        return Err(io::Error::other("the handshake is not finished"));
    }
    // Noise's Split: the first key encrypts what the initiator sends.
    let (initiator_sends, responder_sends) = handshake.dangerously_get_raw_split();
    let (send, receive) = if handshake.is_initiator() {
        (initiator_sends, responder_sends)
    } else {
        (responder_sends, initiator_sends)
    };
    // Boxed: an expanded AES key is large, and channels move around.
    let key = |bytes: [u8; 32]| {
        UnboundKey::new(&AES_256_GCM, &bytes)
            .map(|k| Box::new(LessSafeKey::new(k)))
            .map_err(|_| io::Error::other("encryption: a bad key length"))
    };
    Ok(Channel {
        sealer: Sealer {
            key: key(send)?,
            nonce: 0,
            out: Vec::new(),
            out_pos: 0,
            out_end: 0,
        },
        opener: Opener {
            key: key(receive)?,
            nonce: 0,
            buf: Vec::new(),
            start: 0,
        },
        peer,
    })
}

/// Noise's AES-GCM nonce for counter `n`: 32 zero bits, then `n` big-endian.
fn nonce(n: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// A record's error: the stream was tampered with (or the keys differ).
fn decrypt_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "encryption: a record failed authentication",
    )
}

/// The initiator's side of the handshake (the local relay).
pub(crate) struct Initiator(Option<HandshakeState>);

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Initiator")
    }
}

impl Initiator {
    /// Starts a handshake with the responder whose key is `remote`;
    /// returns the first message, framed, to send.
    pub(crate) fn start(own: &SecretKey, remote: &PublicKey) -> io::Result<(Initiator, Vec<u8>)> {
        let mut hs = builder()
            .local_private_key(&own.0)
            .and_then(|b| b.remote_public_key(&remote.0))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_initiator())
            .map_err(noise_error)?;
        let mut message = [0u8; 256];
        let n = hs.write_message(&[], &mut message).map_err(noise_error)?;
        Ok((Initiator(Some(hs)), framed(&message[..n])))
    }

    /// Reads the responder's answer from `buf`: `None` while incomplete;
    /// then the channel and the bytes of `buf` it used. An answer from
    /// anyone but the pinned responder fails.
    pub(crate) fn finish(&mut self, buf: &[u8]) -> io::Result<Option<(Channel, usize)>> {
        let Some((message, used)) = take_framed(buf) else {
            return Ok(None);
        };
        let mut hs = self
            .0
            .take()
            .ok_or_else(|| io::Error::other("the handshake is over"))?;
        let mut payload = [0u8; 256];
        hs.read_message(message, &mut payload)
            .map_err(noise_error)?;
        Ok(Some((channel(hs)?, used)))
    }
}

/// The responder's side (the remote relay): answers a first message from
/// `buf`. `Ok(None)` while it is incomplete; then the channel, the framed
/// answer to send, and the bytes of `buf` used. The initiator's key is in
/// the channel, for the caller to check.
pub(crate) fn respond(
    own: &SecretKey,
    buf: &[u8],
) -> io::Result<Option<(Channel, Vec<u8>, usize)>> {
    let Some((message, used)) = take_framed(buf) else {
        if buf.len() >= LEN_PREFIX + MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handshake too long",
            ));
        }
        return Ok(None);
    };
    let mut hs = builder()
        .local_private_key(&own.0)
        .and_then(|b| b.prologue(PROLOGUE))
        .and_then(|b| b.build_responder())
        .map_err(noise_error)?;
    let mut payload = [0u8; 256];
    hs.read_message(message, &mut payload)
        .map_err(noise_error)?;
    let mut answer = [0u8; 256];
    let n = hs.write_message(&[], &mut answer).map_err(noise_error)?;
    let channel = channel(hs)?;
    Ok(Some((channel, framed(&answer[..n]), used)))
}

/// The sending half: plaintext in, records out, written as the socket
/// takes them.
pub(crate) struct Sealer {
    key: Box<LessSafeKey>,
    nonce: u64,
    /// Records to write, `out[out_pos..out_end]`; the buffer keeps its
    /// length, so that it is not zeroed for every batch.
    out: Vec<u8>,
    out_pos: usize,
    out_end: usize,
}

impl Sealer {
    /// Encrypts `plain` (any length) into records queued for the socket.
    pub(crate) fn seal(&mut self, plain: &[u8]) -> io::Result<()> {
        let mut rest = plain;
        while !rest.is_empty() {
            let n = rest.len().min(MAX_PLAINTEXT);
            let (chunk, tail) = rest.split_at(n);
            self.seal_record(n, |room| {
                room.copy_from_slice(chunk);
                Ok(n)
            })?;
            rest = tail;
        }
        Ok(())
    }

    /// Encrypts up to `len` bytes that `fill` writes straight into the
    /// records' places (a read from a pipe, say), a record at a time, until
    /// it gives fewer than asked. Returns the plaintext bytes sealed; an
    /// error of `fill` is returned only if nothing was sealed.
    pub(crate) fn seal_from(
        &mut self,
        len: usize,
        mut fill: impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut sealed = 0;
        while sealed < len {
            let want = (len - sealed).min(MAX_PLAINTEXT);
            match self.seal_record(want, &mut fill) {
                Ok(0) => break,
                Ok(n) => sealed += n,
                Err(e) if sealed == 0 => return Err(e),
                Err(_) => break,
            }
            if sealed % MAX_PLAINTEXT != 0 {
                break;
            }
        }
        Ok(sealed)
    }

    /// One record of up to `want` bytes, which `fill` writes in place.
    fn seal_record(
        &mut self,
        want: usize,
        fill: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if self.out_pos == self.out_end {
            self.out_pos = 0;
            self.out_end = 0;
        }
        let at = self.out_end;
        let needed = at + LEN_PREFIX + want + TAG;
        if self.out.len() < needed {
            self.out.resize(needed, 0);
        }
        let body = at + LEN_PREFIX;
        let n = fill(&mut self.out[body..body + want])?.min(want);
        if n == 0 {
            return Ok(0);
        }
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.nonce),
                Aad::empty(),
                &mut self.out[body..body + n],
            )
            .map_err(|_| io::Error::other("encryption failed"))?;
        self.nonce += 1;
        self.out[body + n..body + n + TAG].copy_from_slice(tag.as_ref());
        let record = u16::try_from(n + TAG).expect("records fit a u16 length");
        self.out[at..body].copy_from_slice(&record.to_be_bytes());
        self.out_end = body + n + TAG;
        Ok(n)
    }

    /// Ciphertext not yet written.
    pub(crate) fn pending(&self) -> usize {
        self.out_end - self.out_pos
    }

    /// Writes queued records; `Ok(true)` once none is left, `Ok(false)`
    /// when the socket would block.
    pub(crate) fn drain(&mut self, fd: RawFd) -> io::Result<bool> {
        while self.out_pos < self.out_end {
            match sys::fd::send(fd, &self.out[self.out_pos..self.out_end], false) {
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// What [`Opener::read`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opened {
    /// This many plaintext bytes were written.
    Bytes(usize),
    /// Nothing now (the socket would block).
    Blocked,
    /// The peer closed.
    Eof,
}

/// The receiving half: records in, plaintext out.
pub(crate) struct Opener {
    key: Box<LessSafeKey>,
    nonce: u64,
    /// Ciphertext read and not yet opened, from `start`.
    buf: Vec<u8>,
    start: usize,
}

impl Opener {
    /// Ciphertext that arrived with the handshake.
    pub(crate) fn preload(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Opens whole records buffered while they fit in `out`; returns the
    /// plaintext bytes written. A record that fails authentication is an
    /// error: the stream was tampered with.
    fn open_buffered(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut written = 0;
        while let Some((record, used)) = take_framed(&self.buf[self.start..]) {
            if record.len() < TAG || out.len() - written < record.len() {
                break;
            }
            // Opened in the caller's buffer, where the plaintext goes.
            let in_out = &mut out[written..written + record.len()];
            in_out.copy_from_slice(record);
            let n = self
                .key
                .open_in_place(nonce(self.nonce), Aad::empty(), in_out)
                .map_err(|_| decrypt_error())?
                .len();
            self.nonce += 1;
            written += n;
            self.start += used;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(written)
    }

    /// Reads and opens what `fd` has, into `out` (which must have room for
    /// a whole record with its tag, [`MAX_MESSAGE`] bytes, or more).
    pub(crate) fn read(&mut self, fd: RawFd, out: &mut [u8]) -> io::Result<Opened> {
        loop {
            let n = self.open_buffered(out)?;
            if n > 0 {
                return Ok(Opened::Bytes(n));
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            match sys::fd::recv_append(fd, &mut self.buf, READ_AHEAD) {
                Ok(0) => return Ok(Opened::Eof),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Opened::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads plaintext into `buf` until the socket would block or `buf`
    /// holds `limit` bytes (a record may take it past). Returns whether the
    /// peer closed.
    pub(crate) fn read_to(
        &mut self,
        fd: RawFd,
        buf: &mut Vec<u8>,
        limit: usize,
    ) -> io::Result<bool> {
        while buf.len() < limit {
            // Records are opened straight into `buf`'s new tail.
            let have = buf.len();
            buf.resize(have + MAX_MESSAGE, 0);
            let opened = self.read(fd, &mut buf[have..]);
            let n = match &opened {
                Ok(Opened::Bytes(n)) => *n,
                _ => 0,
            };
            buf.truncate(have + n);
            match opened? {
                Opened::Bytes(_) => {}
                Opened::Blocked => return Ok(false),
                Opened::Eof => return Ok(true),
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn handshake(remote_pinned: &PublicKey, remote: &SecretKey) -> io::Result<(Channel, Channel)> {
        let local = SecretKey::generate();
        let (mut initiator, first) = Initiator::start(&local, remote_pinned)?;
        assert_eq!(
            initiator.finish(&first[..1])?.map(|(_, n)| n),
            None,
            "incomplete"
        );
        let (server, answer, used) = respond(remote, &first)?.expect("a whole message");
        assert_eq!(used, first.len());
        assert_eq!(
            server.peer,
            local.public_key(),
            "the responder learns who called"
        );
        let (client, used) = initiator.finish(&answer)?.expect("a whole answer");
        assert_eq!(used, answer.len());
        Ok((client, server))
    }

    #[test]
    fn records_cross_a_socket_in_order_and_a_wrong_pin_fails() {
        let remote = SecretKey::generate();
        let (mut client, mut server) = handshake(&remote.public_key(), &remote).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let message: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        client.sealer.seal(&message).unwrap();
        client.sealer.seal(b"and more").unwrap();
        let mut got = Vec::new();
        let mut out = vec![0u8; 2 * MAX_MESSAGE];
        while got.len() < message.len() + 8 {
            client.sealer.drain(a.as_raw_fd()).unwrap();
            match server.opener.read(b.as_raw_fd(), &mut out).unwrap() {
                Opened::Bytes(n) => got.extend_from_slice(&out[..n]),
                Opened::Blocked => {}
                Opened::Eof => panic!("eof"),
            }
        }
        assert_eq!(&got[..message.len()], &message[..]);
        assert_eq!(&got[message.len()..], b"and more");

        // Another responder than the pinned one cannot finish the handshake.
        let impostor = SecretKey::generate();
        assert!(handshake(&remote.public_key(), &impostor).is_err());
    }

    #[test]
    fn records_are_noise_transport_messages_and_fills_are_sealed_in_place() {
        // Our sealer against snow's own transport state on the other end.
        let remote = SecretKey::generate();
        let local = SecretKey::generate();
        let (mut initiator, first) = Initiator::start(&local, &remote.public_key()).unwrap();
        let mut responder = builder()
            .local_private_key(&remote.0)
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_responder())
            .unwrap();
        let mut payload = [0u8; 256];
        responder
            .read_message(&first[LEN_PREFIX..], &mut payload)
            .unwrap();
        let mut answer = [0u8; 256];
        let n = responder.write_message(&[], &mut answer).unwrap();
        let (mut client, _) = initiator.finish(&framed(&answer[..n])).unwrap().unwrap();
        let mut snow_end = responder.into_transport_mode().unwrap();

        let message: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
        // `fill` hands over short pieces: each becomes a record, and the
        // sealing stops at the first short one.
        let mut fed = 0;
        let sealed = client
            .sealer
            .seal_from(message.len(), |room| {
                let n = room.len().min(message.len() - fed).min(40_000);
                room[..n].copy_from_slice(&message[fed..fed + n]);
                fed += n;
                Ok(n)
            })
            .unwrap();
        assert_eq!(sealed, 40_000, "a short fill ends the batch");
        client.sealer.seal(&message[sealed..]).unwrap();
        let wire = &client.sealer.out[client.sealer.out_pos..client.sealer.out_end];
        let mut got = Vec::new();
        let mut at = 0;
        while let Some((record, used)) = take_framed(&wire[at..]) {
            let mut plain = vec![0u8; record.len()];
            let n = snow_end
                .read_message(record, &mut plain)
                .expect("a Noise message");
            got.extend_from_slice(&plain[..n]);
            at += used;
        }
        assert_eq!(at, wire.len());
        assert_eq!(got, message);
        // An error of `fill` before anything was sealed is the caller's.
        let refused = client
            .sealer
            .seal_from(10, |_| Err(io::ErrorKind::WouldBlock.into()));
        assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_flipped_bit_is_an_error_not_data() {
        let remote = SecretKey::generate();
        let (mut client, mut server) = handshake(&remote.public_key(), &remote).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        client.sealer.seal(b"secret password").unwrap();
        let mut wire = client.sealer.out[..client.sealer.out_end].to_vec();
        assert!(
            !wire.windows(6).any(|w| w == b"secret"),
            "no plaintext on the wire"
        );
        wire[5] ^= 1;
        use std::io::Write;
        (&a).write_all(&wire).unwrap();
        let mut out = vec![0u8; MAX_MESSAGE];
        assert!(server.opener.read(b.as_raw_fd(), &mut out).is_err());
    }

    #[test]
    fn keys_round_trip_as_text_and_bad_text_is_refused() {
        let key = SecretKey::generate();
        let public = key.public_key();
        assert_eq!(public.to_string().len(), 44);
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
        assert!(
            !format!("{key:?}").contains(&key.to_string()),
            "Debug hides the secret"
        );
        assert!("not base64!".parse::<PublicKey>().is_err());
        assert!(
            "AAAA"
                .parse::<PublicKey>()
                .unwrap_err()
                .to_string()
                .contains("32 bytes")
        );
    }
}
