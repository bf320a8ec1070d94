//! The relays' multiplexing protocol: many TCP connections carried as
//! streams of one long-lived MPTCP connection (a *session*) between a local
//! and a remote relay. A new LAN connection then costs no MPTCP handshake,
//! no subflow join and no round trip to the remote relay before its first
//! byte: the OPEN frame and the first data leave together. Pure code over
//! byte slices, like [`crate::socks5`]; the relay engine does the I/O.
//!
//! # Starting a session
//! A session begins as a SOCKS5 connection: greeting, authentication, and a
//! [`Command::Multiplex`](crate::socks5::Command::Multiplex) request whose
//! destination is `0.0.0.0:`[`VERSION`]. A server that multiplexes answers
//! "succeeded" with the same port as its bound address; any other SOCKS5
//! server (dante) answers "command not supported", and the client falls
//! back to one CONNECT per connection. Then each side sends a SETTINGS
//! frame, and frames follow in both directions.
//!
//! # Frames
//! A 10-byte header, then `length` bytes of payload:
//!
//! ```text
//! +------+-------+--------------------+--------------------+-----------
//! | type | flags | stream (u32, BE)   | length (u32, BE)   | payload...
//! +------+-------+--------------------+--------------------+-----------
//! ```
//!
//! | type | stream | payload | meaning |
//! |---|---|---|---|
//! | 0 DATA | id | bytes | stream data, in order |
//! | 1 OPEN | new id | `ATYP ADDR PORT` as in SOCKS5 | client: connect to this destination; DATA may follow at once |
//! | 2 REPLY | id | `REP ATYP BND.ADDR BND.PORT` | server: how connecting went, as a SOCKS5 reply |
//! | 3 FIN | id | none | the sender sends no more on this stream (half-close) |
//! | 4 RESET | id | `REP` | the stream is aborted in both directions |
//! | 5 WINDOW | id | increment (u32, BE) | the receiver took this many more bytes |
//! | 6 SETTINGS | 0 | (id u16, value u32)* | the sender's parameters; its first frame |
//! | 7 GOAWAY | 0 | last stream id (u32, BE) | no new streams on this session |
//! | 8 PING | 0 | opaque (u64, BE) | answer with PONG (only if the peer's SETTINGS offered it) |
//! | 9 PONG | 0 | the PING's payload | the answer: the other relay is alive |
//! | 10 DATAGRAM | flow id | `ATYP ADDR PORT`, then the datagram | one UDP datagram of a flow (only if the peer's SETTINGS offered it) |
//! | 11 BLOCKED | id | none | the sender has data for the stream and no credit left (once per time it runs out) |
//!
//! Settings: 1 is the initial window of every stream (bytes); 2 set to 1
//! says the sender answers PING; 3 set to 1 says the sender takes
//! DATAGRAM frames (a peer without it is sent none).
//!
//! # Datagrams
//! UDP crosses a session as DATAGRAM frames. A flow (a LAN host's port
//! talking to one destination) has an id of the local relay's choosing,
//! its own id space beside the streams'. Every datagram carries its
//! address: towards the remote relay the destination, back the sender of
//! the answer. That costs 7 bytes per IPv4 datagram and needs no
//! per-flow handshake, so a flow moves to another session (the first one
//! failed) without a setup the new remote side could miss. The remote
//! relay sends each flow's datagrams from its own UDP port (as a NAT
//! maps each source apart), forgets a flow idle for `udp_idle_timeout_secs`
//! and keeps at most `udp_max_flows` per session. Datagrams have no flow
//! control: one that finds the session's output buffer full is dropped
//! and counted, never queued (UDP stays UDP: no old datagram makes new
//! ones wait). A local relay PINGs a remote that offers
//! it every half second and takes a PING unanswered for 3 s for a remote
//! that is gone (a peer of version 1 without the setting is never PINGed:
//! it would skip the frames).
//!
//! Stream ids are chosen by the client, increasing from 1, never reused in
//! a session. Flags are 0. Unknown frame types are skipped and unknown
//! settings ignored, so later versions can add both.
//!
//! # Flow control
//! Per stream and direction, a sender may have sent at most the receiver's
//! initial window ([`Settings::initial_window`]) plus the increments of the
//! WINDOW frames it received. A receiver therefore never has to stop
//! reading the session because one stream's reader is slow: at most a
//! window per stream waits in its buffers, and the other streams go on.
//!
//! The initial window is a starting point, not a limit: a stream whose
//! window is smaller than what the path between the relays holds (rate ×
//! round trip) runs out of credit a round trip after each window it sent.
//! Its sender then says BLOCKED, and a receiver whose reader keeps up
//! (under a quarter window waits in its buffers) doubles its window with
//! a WINDOW frame, up to its maximum (`stream_window_max`, which the relay
//! leaves at the initial window unless configured). So the window follows
//! the measured path, and only a stream that needs it holds a large one.
//! A receiver of version 1 skips BLOCKED and keeps its window.
//!
//! ```
//! use mptcp_core::mux::{Control, Header, FrameType};
//! use mptcp_core::socks5::{Progress, TargetAddr};
//! let mut wire = Vec::new();
//! Control::Open(TargetAddr::Domain("example.test".into(), 443)).encode(1, &mut wire).unwrap();
//! let Ok(Progress::Done(header, used)) = Header::parse(&wire) else { panic!() };
//! assert_eq!((header.kind, header.stream), (FrameType::Open, 1));
//! let open = Control::parse(&header, &wire[used..]).unwrap();
//! assert_eq!(open, Some(Control::Open(TargetAddr::Domain("example.test".into(), 443))));
//! ```
#![forbid(unsafe_code)]
//!
//! # Code
//! - `frame`: the wire codec (re-exported here: [`Header`], [`Control`],
//!   [`Settings`], ...);
//! - [`stream`]: one stream's protocol state: flow-control windows in both
//!   directions, half-close, reply and reset ([`StreamState`]);
//! - [`session`]: a session's protocol state: SETTINGS first, stream ids,
//!   GOAWAY ([`SessionState`]).
//!
//! All three are pure state machines; the relay engine
//! (`relay::session`, `relay::stream`) drives them with its sockets.

mod frame;
pub mod session;
pub mod stream;

pub use frame::*;
pub use session::SessionState;
pub use stream::StreamState;
