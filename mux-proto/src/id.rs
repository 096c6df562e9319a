//! Session identifiers and the parity rules that say which side opened a session.

use std::fmt;

/// Which side of a connection an endpoint is, or which side opened a session.
///
/// spec/frames.md#session-ids: clients open odd IDs, servers open even IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum Side {
    /// The endpoint that initiated the WebSocket connection.
    Client,
    /// The endpoint that accepted the WebSocket connection.
    Server,
}

impl Side {
    /// The other side.
    pub fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

/// A fixed-width 32-bit session identifier, unique within one connection.
///
/// Session 0 is the connection's control channel; odd IDs are opened by the client, even
/// non-zero IDs by the server (spec/frames.md#session-ids). IDs are never reused.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct SessionId(pub u32);

impl SessionId {
    /// The connection's control channel; never a session.
    pub const CONTROL: SessionId = SessionId(0);
    /// The first ID a client opens.
    pub const FIRST_CLIENT: SessionId = SessionId(1);
    /// The first ID a server opens.
    pub const FIRST_SERVER: SessionId = SessionId(2);

    /// The raw wire value.
    pub fn get(self) -> u32 {
        self.0
    }

    /// True for the control channel (ID 0).
    pub fn is_control(self) -> bool {
        self.0 == 0
    }

    /// The side that may open this ID, or `None` for the control channel.
    pub fn initiator(self) -> Option<Side> {
        match self.0 {
            0 => None,
            n if n % 2 == 1 => Some(Side::Client),
            _ => Some(Side::Server),
        }
    }

    /// The next ID the same side may open, or `None` when the ID space is exhausted.
    pub fn next(self) -> Option<SessionId> {
        self.0.checked_add(2).map(SessionId)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<u32> for SessionId {
    fn from(v: u32) -> Self {
        SessionId(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_names_the_initiator() {
        assert_eq!(SessionId(0).initiator(), None);
        assert_eq!(SessionId(1).initiator(), Some(Side::Client));
        assert_eq!(SessionId(2).initiator(), Some(Side::Server));
        assert_eq!(SessionId(u32::MAX).initiator(), Some(Side::Client));
        assert_eq!(SessionId(u32::MAX - 1).initiator(), Some(Side::Server));
    }

    #[test]
    fn next_stops_at_the_end_of_the_id_space() {
        assert_eq!(SessionId(1).next(), Some(SessionId(3)));
        assert_eq!(SessionId(u32::MAX - 1).next(), None);
        assert_eq!(SessionId(u32::MAX).next(), None);
    }
}
