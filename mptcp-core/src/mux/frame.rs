//! The wire codec of the multiplexing protocol: frame headers, control
//! frames and settings, parsed from and encoded into byte slices (the
//! format is described in [`crate::mux`]).

use std::fmt;

use crate::socks5::{self, Progress, ReplyCode, TargetAddr};

/// The protocol version, sent as the port of the SOCKS5 request and reply.
pub const VERSION: u16 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 10;
/// The longest payload of a frame other than DATA.
pub const MAX_CONTROL_LEN: u32 = 1024;
/// The longest DATA payload.
pub const MAX_DATA_LEN: u32 = 16 << 20;
/// The initial window a peer assumes until SETTINGS says otherwise.
pub const DEFAULT_WINDOW: u32 = 256 * 1024;
/// The largest initial window a SETTINGS frame may announce.
pub const MAX_WINDOW: u32 = 1 << 30;
/// Setting id: the initial window of every stream, in bytes.
pub const SETTING_INITIAL_WINDOW: u16 = 1;
/// Setting id: 1 when the sender answers PING with PONG (peers that do
/// not send it skip PING frames as unknown, so the other end must not
/// take their silence for a failure).
pub const SETTING_PINGS: u16 = 2;
/// Setting id: 1 when the sender takes DATAGRAM frames (UDP carried in
/// the session); a peer without it is never sent one.
pub const SETTING_DATAGRAMS: u16 = 3;
/// The longest DATAGRAM payload (address and datagram): a whole frame
/// fits the receiver's 64 KiB input buffer, where it is parsed in one
/// piece.
pub const MAX_DATAGRAM_FRAME_LEN: u32 = 65_000;

/// What a frame is; the first header byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    /// 0: stream data.
    Data,
    /// 1: open a stream.
    Open,
    /// 2: the answer to OPEN.
    Reply,
    /// 3: no more data from the sender on this stream.
    Fin,
    /// 4: the stream is aborted.
    Reset,
    /// 5: flow-control credit.
    Window,
    /// 6: the sender's parameters.
    Settings,
    /// 7: no new streams.
    GoAway,
    /// 8: are you there? (answered with PONG)
    Ping,
    /// 9: the answer to PING, with its payload.
    Pong,
    /// 10: a UDP datagram of a flow, with its peer's address.
    Datagram,
    /// 11: the sender has data for the stream and no credit left.
    Blocked,
    /// Any other value: skipped.
    Unknown(u8),
}

impl FrameType {
    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            FrameType::Data => 0,
            FrameType::Open => 1,
            FrameType::Reply => 2,
            FrameType::Fin => 3,
            FrameType::Reset => 4,
            FrameType::Window => 5,
            FrameType::Settings => 6,
            FrameType::GoAway => 7,
            FrameType::Ping => 8,
            FrameType::Pong => 9,
            FrameType::Datagram => 10,
            FrameType::Blocked => 11,
            FrameType::Unknown(v) => v,
        }
    }

    /// The type of a wire value.
    pub fn from_u8(v: u8) -> FrameType {
        match v {
            0 => FrameType::Data,
            1 => FrameType::Open,
            2 => FrameType::Reply,
            3 => FrameType::Fin,
            4 => FrameType::Reset,
            5 => FrameType::Window,
            6 => FrameType::Settings,
            7 => FrameType::GoAway,
            8 => FrameType::Ping,
            9 => FrameType::Pong,
            10 => FrameType::Datagram,
            11 => FrameType::Blocked,
            v => FrameType::Unknown(v),
        }
    }

    /// Frames about the session as a whole carry stream 0.
    fn is_session_frame(self) -> bool {
        matches!(
            self,
            FrameType::Settings | FrameType::GoAway | FrameType::Ping | FrameType::Pong
        )
    }
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame type.
    pub kind: FrameType,
    /// The stream (0 for SETTINGS and GOAWAY).
    pub stream: u32,
    /// Payload bytes after the header.
    pub len: u32,
}

impl Header {
    /// Parses a header and checks what it can alone: flags, the stream id
    /// for the type, and the payload length (at most [`MAX_DATA_LEN`] for
    /// DATA, [`MAX_CONTROL_LEN`] for the rest).
    pub fn parse(buf: &[u8]) -> Result<Progress<Header>, Error> {
        let Some(raw) = buf.get(..HEADER_LEN) else {
            return Ok(Progress::NeedMore);
        };
        let kind = FrameType::from_u8(raw[0]);
        if raw[1] != 0 {
            return Err(Error("frame flags are not zero"));
        }
        let stream = u32::from_be_bytes(raw[2..6].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(raw[6..10].try_into().expect("4 bytes"));
        let max = match kind {
            FrameType::Data => MAX_DATA_LEN,
            FrameType::Datagram => MAX_DATAGRAM_FRAME_LEN,
            _ => MAX_CONTROL_LEN,
        };
        if len > max {
            return Err(Error("frame longer than the protocol allows"));
        }
        if !matches!(kind, FrameType::Unknown(_)) && (stream == 0) != kind.is_session_frame() {
            return Err(Error("stream id does not fit the frame type"));
        }
        Ok(Progress::Done(Header { kind, stream, len }, HEADER_LEN))
    }

    /// The header's wire bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.kind.to_u8();
        out[2..6].copy_from_slice(&self.stream.to_be_bytes());
        out[6..10].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// The header of a DATA frame.
    pub fn data(stream: u32, len: u32) -> Header {
        Header {
            kind: FrameType::Data,
            stream,
            len,
        }
    }
}

/// A session's parameters, sent in its first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Bytes the peer may send on each new stream before a WINDOW frame.
    pub initial_window: u32,
    /// The sender answers PING ([`SETTING_PINGS`]).
    pub pings: bool,
    /// The sender takes DATAGRAM frames ([`SETTING_DATAGRAMS`]).
    pub datagrams: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            initial_window: DEFAULT_WINDOW,
            pings: false,
            datagrams: false,
        }
    }
}

/// Any frame but DATA, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Connect the new stream to this destination.
    Open(TargetAddr),
    /// How connecting went (`code` is `Succeeded` or the failure), and the
    /// address the server connected from.
    Reply {
        /// The outcome.
        code: ReplyCode,
        /// The server's address towards the destination (0.0.0.0:0 if
        /// unknown or failed).
        bound: TargetAddr,
    },
    /// The sender sends no more data on the stream.
    Fin,
    /// The stream is aborted; why, as a SOCKS5 reply code.
    Reset(ReplyCode),
    /// The receiver took this many more bytes (at least 1), or grew its
    /// window by as much.
    Window(u32),
    /// The sender has more data for the stream than its credit: the
    /// receiver's window may be smaller than the path holds.
    Blocked,
    /// The sender's parameters.
    Settings(Settings),
    /// No new streams; streams up to this id are served.
    GoAway {
        /// The highest stream id the sender accepted.
        last_stream: u32,
    },
    /// Liveness: the peer answers with PONG and the same payload (the
    /// sender's clock, for the round-trip time).
    Ping(u64),
    /// The answer to PING.
    Pong(u64),
}

impl Control {
    /// Decodes the payload of the frame `header` announced. `Ok(None)`: a
    /// frame type this version does not know (skip it), or DATA (not a
    /// control frame).
    pub fn parse(header: &Header, payload: &[u8]) -> Result<Option<Control>, Error> {
        if payload.len() != header.len as usize {
            return Err(Error("payload length differs from the header"));
        }
        let control = match header.kind {
            FrameType::Data | FrameType::Datagram | FrameType::Unknown(_) => return Ok(None),
            FrameType::Open => Control::Open(whole_address(payload)?),
            FrameType::Reply => {
                let (&code, rest) = payload.split_first().ok_or(Error("REPLY without a code"))?;
                Control::Reply {
                    code: ReplyCode::from_u8(code),
                    bound: whole_address(rest)?,
                }
            }
            FrameType::Fin => {
                if !payload.is_empty() {
                    return Err(Error("FIN with a payload"));
                }
                Control::Fin
            }
            FrameType::Blocked => {
                if !payload.is_empty() {
                    return Err(Error("BLOCKED with a payload"));
                }
                Control::Blocked
            }
            FrameType::Reset => match payload {
                [code] => Control::Reset(ReplyCode::from_u8(*code)),
                _ => return Err(Error("RESET payload is not one code byte")),
            },
            FrameType::Window => match u32_of(payload) {
                Some(0) | None => return Err(Error("WINDOW increment is not a positive u32")),
                Some(n) => Control::Window(n),
            },
            FrameType::Settings => Control::Settings(parse_settings(payload)?),
            FrameType::GoAway => Control::GoAway {
                last_stream: u32_of(payload).ok_or(Error("GOAWAY payload is not a u32"))?,
            },
            FrameType::Ping => {
                Control::Ping(u64_of(payload).ok_or(Error("PING payload is not a u64"))?)
            }
            FrameType::Pong => {
                Control::Pong(u64_of(payload).ok_or(Error("PONG payload is not a u64"))?)
            }
        };
        Ok(Some(control))
    }

    /// The frame type that carries this control.
    pub fn kind(&self) -> FrameType {
        match self {
            Control::Open(_) => FrameType::Open,
            Control::Reply { .. } => FrameType::Reply,
            Control::Fin => FrameType::Fin,
            Control::Reset(_) => FrameType::Reset,
            Control::Window(_) => FrameType::Window,
            Control::Blocked => FrameType::Blocked,
            Control::Settings(_) => FrameType::Settings,
            Control::GoAway { .. } => FrameType::GoAway,
            Control::Ping(_) => FrameType::Ping,
            Control::Pong(_) => FrameType::Pong,
        }
    }

    /// Appends the whole frame (header and payload) for `stream` (0 for
    /// SETTINGS and GOAWAY). Fails only for a domain name that SOCKS5
    /// cannot carry; nothing is appended then.
    pub fn encode(&self, stream: u32, out: &mut Vec<u8>) -> Result<(), socks5::EncodeError> {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        let written = match self {
            Control::Open(dest) => dest.encode(out),
            Control::Reply { code, bound } => {
                out.push(code.to_u8());
                bound.encode(out)
            }
            Control::Fin | Control::Blocked => Ok(()),
            Control::Reset(code) => {
                out.push(code.to_u8());
                Ok(())
            }
            Control::Window(n) => {
                out.extend_from_slice(&n.to_be_bytes());
                Ok(())
            }
            Control::Settings(s) => {
                out.extend_from_slice(&SETTING_INITIAL_WINDOW.to_be_bytes());
                out.extend_from_slice(&s.initial_window.to_be_bytes());
                for (id, on) in [(SETTING_PINGS, s.pings), (SETTING_DATAGRAMS, s.datagrams)] {
                    if on {
                        out.extend_from_slice(&id.to_be_bytes());
                        out.extend_from_slice(&1u32.to_be_bytes());
                    }
                }
                Ok(())
            }
            Control::Ping(v) | Control::Pong(v) => {
                out.extend_from_slice(&v.to_be_bytes());
                Ok(())
            }
            Control::GoAway { last_stream } => {
                out.extend_from_slice(&last_stream.to_be_bytes());
                Ok(())
            }
        };
        if let Err(e) = written {
            out.truncate(start);
            return Err(e);
        }
        let len =
            u32::try_from(out.len() - start - HEADER_LEN).expect("control payloads are short");
        let header = Header {
            kind: self.kind(),
            stream,
            len,
        };
        out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
        Ok(())
    }
}

/// Appends a DATAGRAM frame of flow `flow` (not 0): `peer` (the
/// destination, from the local relay; the sender of an answer, from the
/// remote) and the datagram. Fails, appending nothing, for a name SOCKS5
/// cannot carry or a datagram longer than a frame takes.
pub fn encode_datagram(
    flow: u32,
    peer: &TargetAddr,
    datagram: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), DatagramError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if peer.encode(out).is_err() {
        out.truncate(start);
        return Err(DatagramError::Address);
    }
    let len = out.len() - start - HEADER_LEN + datagram.len();
    let Some(len) = u32::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_DATAGRAM_FRAME_LEN)
    else {
        out.truncate(start);
        return Err(DatagramError::TooLarge);
    };
    out.extend_from_slice(datagram);
    let header = Header {
        kind: FrameType::Datagram,
        stream: flow,
        len,
    };
    out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok(())
}

/// Splits a DATAGRAM frame's payload into the peer's address and the
/// datagram.
pub fn parse_datagram(payload: &[u8]) -> Result<(TargetAddr, &[u8]), Error> {
    match TargetAddr::parse(payload) {
        Ok(Progress::Done(addr, used)) => Ok((addr, &payload[used..])),
        Ok(Progress::NeedMore) => Err(Error("DATAGRAM address cut short")),
        Err(e) => Err(Error(e.reason)),
    }
}

/// Why a datagram could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramError {
    /// A name longer than SOCKS5 carries.
    Address,
    /// More than [`MAX_DATAGRAM_FRAME_LEN`] with its address.
    TooLarge,
}

/// An address that must fill the payload exactly.
fn whole_address(payload: &[u8]) -> Result<TargetAddr, Error> {
    match TargetAddr::parse(payload) {
        Ok(Progress::Done(addr, used)) if used == payload.len() => Ok(addr),
        Ok(Progress::Done(..)) => Err(Error("bytes after the address")),
        Ok(Progress::NeedMore) => Err(Error("address cut short")),
        Err(e) => Err(Error(e.reason)),
    }
}

fn u64_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.try_into().ok()?))
}

fn u32_of(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.try_into().ok()?))
}

fn parse_settings(payload: &[u8]) -> Result<Settings, Error> {
    if !payload.len().is_multiple_of(6) {
        return Err(Error("SETTINGS payload is not (u16, u32) pairs"));
    }
    let mut settings = Settings::default();
    for pair in payload.chunks_exact(6) {
        let id = u16::from_be_bytes([pair[0], pair[1]]);
        let value = u32::from_be_bytes(pair[2..6].try_into().expect("4 bytes"));
        if id == SETTING_INITIAL_WINDOW {
            if !(1..=MAX_WINDOW).contains(&value) {
                return Err(Error("initial window out of range"));
            }
            settings.initial_window = value;
        } else if id == SETTING_PINGS {
            settings.pings = value == 1;
        } else if id == SETTING_DATAGRAMS {
            settings.datagrams = value == 1;
        }
    }
    Ok(settings)
}

/// A protocol violation by the peer: the session cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error(pub &'static str);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "relay multiplexing protocol: {}", self.0)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::SocketAddr;

    fn round_trip(stream: u32, control: &Control) -> Control {
        let mut wire = Vec::new();
        control.encode(stream, &mut wire).unwrap();
        let Progress::Done(header, used) = Header::parse(&wire).unwrap() else {
            panic!("a whole header");
        };
        assert_eq!((header.stream, used), (stream, HEADER_LEN));
        assert_eq!(header.len as usize, wire.len() - HEADER_LEN);
        Control::parse(&header, &wire[used..]).unwrap().unwrap()
    }

    #[test]
    fn every_control_frame_round_trips() {
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let frames = [
            (7, Control::Open(TargetAddr::Domain("a.test".into(), 80))),
            (
                7,
                Control::Reply {
                    code: ReplyCode::ConnectionRefused,
                    bound: TargetAddr::Ip(v6),
                },
            ),
            (7, Control::Fin),
            (7, Control::Reset(ReplyCode::GeneralFailure)),
            (7, Control::Window(65536)),
            (7, Control::Blocked),
            (
                0,
                Control::Settings(Settings {
                    initial_window: 1 << 20,
                    pings: true,
                    datagrams: true,
                }),
            ),
            (0, Control::GoAway { last_stream: 42 }),
            (0, Control::Ping(u64::MAX - 7)),
            (0, Control::Pong(12_345)),
        ];
        for (stream, frame) in frames {
            assert_eq!(round_trip(stream, &frame), frame);
        }
    }

    #[test]
    fn data_header_round_trips_and_needs_ten_bytes() {
        let bytes = Header::data(3, 1000).to_bytes();
        for cut in 0..HEADER_LEN {
            assert_eq!(Header::parse(&bytes[..cut]), Ok(Progress::NeedMore));
        }
        assert_eq!(
            Header::parse(&bytes),
            Ok(Progress::Done(Header::data(3, 1000), HEADER_LEN))
        );
    }

    #[test]
    fn violations_are_errors() {
        let header = |kind: u8, stream: u32, len: u32| {
            let mut b = Header {
                kind: FrameType::from_u8(kind),
                stream,
                len,
            }
            .to_bytes();
            b[0] = kind;
            b
        };
        let too_long = header(0, 1, MAX_DATA_LEN + 1);
        assert!(Header::parse(&too_long).is_err());
        assert!(Header::parse(&header(5, 1, MAX_CONTROL_LEN + 1)).is_err());
        assert!(
            Header::parse(&header(6, 1, 6)).is_err(),
            "SETTINGS on a stream"
        );
        assert!(Header::parse(&header(1, 0, 7)).is_err(), "OPEN on stream 0");
        let mut flagged = header(0, 1, 0);
        flagged[1] = 1;
        assert!(Header::parse(&flagged).is_err());
        let window = Header {
            kind: FrameType::Window,
            stream: 1,
            len: 4,
        };
        assert!(
            Control::parse(&window, &[0, 0, 0, 0]).is_err(),
            "zero credit"
        );
        let settings = Header {
            kind: FrameType::Settings,
            stream: 0,
            len: 6,
        };
        assert!(Control::parse(&settings, &[0, 1, 0, 0, 0, 0]).is_err());
        let open = Header {
            kind: FrameType::Open,
            stream: 1,
            len: 8,
        };
        assert!(
            Control::parse(&open, &[1, 127, 0, 0, 1, 0, 80, 9]).is_err(),
            "trailing byte"
        );
    }

    #[test]
    fn unknown_types_and_settings_are_skipped() {
        let unknown = Header {
            kind: FrameType::Unknown(200),
            stream: 0,
            len: 3,
        };
        let bytes = unknown.to_bytes();
        assert_eq!(
            Header::parse(&bytes),
            Ok(Progress::Done(unknown, HEADER_LEN))
        );
        assert_eq!(Control::parse(&unknown, &[1, 2, 3]), Ok(None));
        let settings = Header {
            kind: FrameType::Settings,
            stream: 0,
            len: 12,
        };
        let payload = [0, 9, 1, 2, 3, 4, 0, 1, 0, 0, 0x40, 0];
        assert_eq!(
            Control::parse(&settings, &payload),
            Ok(Some(Control::Settings(Settings {
                initial_window: 0x4000,
                pings: false,
                datagrams: false,
            })))
        );
    }

    #[test]
    fn datagrams_round_trip_and_overlong_ones_are_refused() {
        let peer = TargetAddr::Ip("198.19.2.2:53".parse().unwrap());
        let mut wire = Vec::new();
        encode_datagram(9, &peer, b"query", &mut wire).unwrap();
        let Progress::Done(header, used) = Header::parse(&wire).unwrap() else {
            panic!("a whole header");
        };
        assert_eq!((header.kind, header.stream), (FrameType::Datagram, 9));
        assert_eq!(header.len as usize, wire.len() - HEADER_LEN);
        assert_eq!(Control::parse(&header, &wire[used..]), Ok(None));
        assert_eq!(
            parse_datagram(&wire[used..]),
            Ok((peer.clone(), &b"query"[..]))
        );
        let before = wire.len();
        let big = vec![0; MAX_DATAGRAM_FRAME_LEN as usize];
        assert_eq!(
            encode_datagram(9, &peer, &big, &mut wire),
            Err(DatagramError::TooLarge)
        );
        assert_eq!(wire.len(), before, "nothing appended");
        assert!(parse_datagram(&[1, 127, 0]).is_err());
        let on_zero = Header {
            kind: FrameType::Datagram,
            stream: 0,
            len: 7,
        };
        assert!(Header::parse(&on_zero.to_bytes()).is_err(), "flow 0");
        let overlong = Header {
            kind: FrameType::Datagram,
            stream: 1,
            len: MAX_DATAGRAM_FRAME_LEN + 1,
        };
        assert!(Header::parse(&overlong.to_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(Progress::Done(header, used)) = Header::parse(&buf) {
                let end = (used + header.len as usize).min(buf.len());
                let _ = Control::parse(&header, &buf[used..end]);
            }
        }

        #[test]
        fn reply_frames_round_trip(code in any::<u8>(), port in any::<u16>(), ip in any::<u32>(),
                                   stream in 1u32..) {
            let bound = TargetAddr::Ip(SocketAddr::from((ip.to_be_bytes(), port)));
            let frame = Control::Reply { code: ReplyCode::from_u8(code), bound };
            prop_assert_eq!(round_trip(stream, &frame), frame);
        }
    }
}
