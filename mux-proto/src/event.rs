//! Events: what happened, for the driver to act on and log. mux-proto never logs.

use crate::code::CloseCode;
use crate::config::PeerSettings;
use crate::frame::{Accept, Credential, OpenRequest, Text};
use crate::id::SessionId;

/// Who ended a session or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// This endpoint (its application, or its enforcement of a limit).
    Local,
    /// The peer.
    Peer,
}

/// A limit that was hit, for observability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitKind {
    /// A session's rate limit (the policy decides what follows).
    SessionRate,
    /// The connection's rate limit.
    ConnectionRate,
    /// Too many OPENs per second.
    OpenRate,
    /// MAX_SESSIONS or the pending-open cap.
    Sessions,
    /// The receive buffer could not cover another session.
    RecvBuffer,
    /// A message larger than the session maximum.
    MessageSize,
    /// A frame larger than MAX_FRAME_SIZE.
    FrameSize,
    /// Sending beyond credit.
    Credit,
    /// The control-frame budget.
    ControlBudget,
    /// OPEN metadata over MAX_OPEN_METADATA.
    OpenMetadata,
}

/// Something the driver should know about. Drain with
/// [`Connection::poll_event`](crate::Connection::poll_event) after every input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The peer's SETTINGS arrived: sessions may now be opened.
    Connected {
        /// The peer's limits.
        settings: PeerSettings,
    },
    /// The peer opened a session. Answer with
    /// [`accept`](crate::Connection::accept) or [`reject`](crate::Connection::reject) before
    /// the authorization deadline.
    Incoming {
        /// The new session.
        id: SessionId,
        /// What it is for (topic, service).
        kind: Text,
        /// Its credentials, for the authorization decision; redacted in `Debug`.
        auth: Credential,
        /// The limits the peer asked for.
        request: OpenRequest,
    },
    /// The peer accepted a session this side opened.
    Opened {
        /// The session.
        id: SessionId,
        /// The peer's grant.
        grant: Accept,
    },
    /// A session has at least one complete message: call
    /// [`recv`](crate::Connection::recv) until it returns `None`.
    Readable {
        /// The session.
        id: SessionId,
    },
    /// A session that returned [`SendError::Blocked`](crate::SendError::Blocked) can take
    /// messages again.
    Writable {
        /// The session.
        id: SessionId,
    },
    /// The peer half-closed: it sends no more messages after those already received.
    Finished {
        /// The session.
        id: SessionId,
    },
    /// A session ended. Its ID is dead; undelivered messages were discarded unless the close
    /// was graceful, in which case they were all handed out first.
    SessionClosed {
        /// The session.
        id: SessionId,
        /// Why.
        code: CloseCode,
        /// Who ended it.
        initiator: Initiator,
        /// The reason text (from the peer, or ours).
        reason: Text,
        /// Retry hint in milliseconds (0: none).
        retry_after_ms: u32,
    },
    /// The peer announced shutdown: open no more sessions on this connection.
    GoAway {
        /// The last session of ours the peer will process.
        last_session_id: SessionId,
        /// Why.
        code: CloseCode,
    },
    /// A limit was hit (the consequence is reported separately, e.g. as a close).
    LimitHit {
        /// The session, if the limit is per session.
        id: Option<SessionId>,
        /// Which limit.
        limit: LimitKind,
    },
    /// The connection ended. The driver closes the WebSocket with `code` after sending the
    /// last transmit.
    ConnectionClosed {
        /// Why.
        code: CloseCode,
        /// Who ended it.
        initiator: Initiator,
        /// The reason text.
        reason: Text,
    },
}
