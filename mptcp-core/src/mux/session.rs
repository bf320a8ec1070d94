//! A session's protocol state, as one end sees it, once the SOCKS5
//! handshake is done: SETTINGS must be the first frame (and only the
//! first), stream ids grow and are never reused, and after GOAWAY no new
//! stream starts.
//!
//! ```
//! use mptcp_core::mux::{Control, SessionState, Settings};
//! let mut client = SessionState::opener();
//! let mut server = SessionState::acceptor();
//! client.on_settings(&Settings { initial_window: 65536, pings: false, datagrams: false }).unwrap();
//! server.on_settings(&Settings::default()).unwrap();
//! let id = client.open_stream().unwrap();
//! assert!(server.accept_stream(id).unwrap());
//! assert!(server.accept_stream(id).is_err(), "ids are never reused");
//! let Some(Control::GoAway { last_stream }) = server.go_away() else { panic!() };
//! client.on_go_away();
//! assert_eq!((last_stream, client.open_stream()), (id, None));
//! ```

use std::fmt;

use super::{Control, DEFAULT_WINDOW, Settings};

/// How the peer broke the session's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// A frame before SETTINGS, or a second SETTINGS.
    SettingsOrder,
    /// OPEN with an id not above every earlier one.
    StreamIdOrder,
    /// OPEN sent to the end that opens streams.
    UnexpectedOpen,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SessionError::SettingsOrder => "SETTINGS must be the first frame, and only the first",
            SessionError::StreamIdOrder => "stream id reused or out of order",
            SessionError::UnexpectedOpen => "OPEN sent to the end that opens streams",
        })
    }
}

impl std::error::Error for SessionError {}

/// Which end opens the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ids {
    /// The client (local relay): the id of its next stream.
    Opener { next: u32 },
    /// The server (remote relay): the highest id seen.
    Acceptor { last: u32 },
}

/// A session's protocol state at one end.
#[derive(Debug, Clone)]
pub struct SessionState {
    ids: Ids,
    /// The peer's SETTINGS arrived.
    open: bool,
    /// The initial window of each stream towards the peer.
    peer_window: u32,
    /// The peer answers PING (its SETTINGS said so).
    peer_pings: bool,
    /// The peer takes DATAGRAM frames (its SETTINGS said so).
    peer_datagrams: bool,
    /// No new streams: GOAWAY sent or received, or ids used up.
    going_away: bool,
}

impl SessionState {
    /// The end that opens streams (ids from 1).
    pub fn opener() -> SessionState {
        SessionState::new(Ids::Opener { next: 1 })
    }

    /// The end whose peer opens streams.
    pub fn acceptor() -> SessionState {
        SessionState::new(Ids::Acceptor { last: 0 })
    }

    fn new(ids: Ids) -> SessionState {
        SessionState {
            ids,
            open: false,
            peer_window: DEFAULT_WINDOW,
            peer_pings: false,
            peer_datagrams: false,
            going_away: false,
        }
    }

    /// Checks the order of a frame of the peer's: SETTINGS first, and once.
    pub fn check_order(&self, control: Option<&Control>) -> Result<(), SessionError> {
        let is_settings = matches!(control, Some(Control::Settings(_)));
        if self.open == is_settings {
            return Err(SessionError::SettingsOrder);
        }
        Ok(())
    }

    /// The peer's SETTINGS: the session is open.
    pub fn on_settings(&mut self, settings: &Settings) -> Result<(), SessionError> {
        if self.open {
            return Err(SessionError::SettingsOrder);
        }
        self.open = true;
        self.peer_window = settings.initial_window;
        self.peer_pings = settings.pings;
        self.peer_datagrams = settings.datagrams;
        Ok(())
    }

    /// Whether the peer answers PING with PONG.
    pub fn peer_pings(&self) -> bool {
        self.peer_pings
    }

    /// Whether the peer takes DATAGRAM frames (never before its SETTINGS).
    pub fn peer_datagrams(&self) -> bool {
        self.peer_datagrams
    }

    /// Whether the peer's SETTINGS arrived.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The peer's initial window for each stream.
    pub fn peer_window(&self) -> u32 {
        self.peer_window
    }

    /// Whether a new stream may be opened now.
    pub fn accepts_streams(&self) -> bool {
        self.open && !self.going_away
    }

    /// Opener: the id of a new stream, or `None` when the session takes no
    /// more (GOAWAY, or before SETTINGS). The last id of the range makes
    /// the session go away.
    pub fn open_stream(&mut self) -> Option<u32> {
        let Ids::Opener { next } = &mut self.ids else {
            return None;
        };
        if !self.open || self.going_away {
            return None;
        }
        let id = *next;
        match id.checked_add(1) {
            Some(n) => *next = n,
            None => self.going_away = true,
        }
        Some(id)
    }

    /// Acceptor: the peer's OPEN of stream `id`. `Ok(false)`: refuse it
    /// (going away); an id not above every earlier one is an error.
    pub fn accept_stream(&mut self, id: u32) -> Result<bool, SessionError> {
        let Ids::Acceptor { last } = &mut self.ids else {
            return Err(SessionError::UnexpectedOpen);
        };
        if id <= *last {
            return Err(SessionError::StreamIdOrder);
        }
        *last = id;
        Ok(!self.going_away)
    }

    /// Acceptor: no new streams from now on; returns the GOAWAY to send
    /// (naming the last stream that may still run), once.
    pub fn go_away(&mut self) -> Option<Control> {
        let Ids::Acceptor { last } = self.ids else {
            return None;
        };
        if self.going_away {
            return None;
        }
        self.going_away = true;
        Some(Control::GoAway { last_stream: last })
    }

    /// The peer's GOAWAY: no new streams here.
    pub fn on_go_away(&mut self) {
        self.going_away = true;
    }

    /// This end starts no new streams here either (the session was
    /// replaced, or it carries one stream only): as after a GOAWAY.
    pub fn retire(&mut self) {
        self.going_away = true;
    }

    /// Whether no new streams start on this session.
    pub fn is_going_away(&self) -> bool {
        self.going_away
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn settings_come_first_and_once() {
        let mut s = SessionState::acceptor();
        let fin = Control::Fin;
        let settings = Control::Settings(Settings::default());
        assert_eq!(s.check_order(Some(&fin)), Err(SessionError::SettingsOrder));
        assert_eq!(s.check_order(None), Err(SessionError::SettingsOrder));
        assert_eq!(s.check_order(Some(&settings)), Ok(()));
        s.on_settings(&Settings::default()).unwrap();
        assert_eq!(
            s.check_order(Some(&settings)),
            Err(SessionError::SettingsOrder)
        );
        assert_eq!(s.check_order(Some(&fin)), Ok(()));
        assert_eq!(s.check_order(None), Ok(()), "DATA after SETTINGS");
    }

    #[test]
    fn no_stream_before_settings_and_the_last_id_goes_away() {
        let mut s = SessionState::opener();
        assert_eq!(s.open_stream(), None);
        s.on_settings(&Settings::default()).unwrap();
        s.ids = Ids::Opener { next: u32::MAX };
        assert_eq!(s.open_stream(), Some(u32::MAX));
        assert!(s.is_going_away());
        assert_eq!(s.open_stream(), None);
    }

    #[test]
    fn only_the_acceptor_accepts_and_says_goaway_once() {
        let mut opener = SessionState::opener();
        assert_eq!(opener.accept_stream(1), Err(SessionError::UnexpectedOpen));
        assert_eq!(opener.go_away(), None);
        let mut acceptor = SessionState::acceptor();
        assert!(acceptor.accept_stream(3).unwrap());
        assert_eq!(acceptor.go_away(), Some(Control::GoAway { last_stream: 3 }));
        assert_eq!(acceptor.go_away(), None);
        assert_eq!(acceptor.accept_stream(4), Ok(false), "refused after GOAWAY");
    }

    proptest! {
        /// Whatever the interleaving of opens and a GOAWAY, the acceptor
        /// takes every id the opener hands out, in order, and none after
        /// the opener saw GOAWAY.
        #[test]
        fn ids_from_the_opener_are_always_accepted(
            opens in 1usize..200,
            goaway_at in proptest::option::of(0usize..200),
        ) {
            let mut opener = SessionState::opener();
            let mut acceptor = SessionState::acceptor();
            opener.on_settings(&Settings::default()).unwrap();
            acceptor.on_settings(&Settings::default()).unwrap();
            let mut last = 0;
            for i in 0..opens {
                if goaway_at == Some(i) {
                    prop_assert!(acceptor.go_away().is_some());
                    opener.on_go_away();
                }
                match opener.open_stream() {
                    Some(id) => {
                        prop_assert!(id > last);
                        last = id;
                        prop_assert_eq!(acceptor.accept_stream(id), Ok(true));
                    }
                    None => prop_assert!(goaway_at.is_some_and(|g| g <= i)),
                }
            }
        }
    }
}
