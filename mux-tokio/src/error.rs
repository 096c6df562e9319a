//! Errors of the driver's API.

use mux_proto::CloseCode;

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session closed with {code} ({reason})")]
pub struct SessionClosed {
    /// The close code.
    pub code: CloseCode,
    /// The reason text.
    pub reason: String,
    /// Whether the peer ended it.
    pub by_peer: bool,
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The session (or its connection) has ended.
    #[error(transparent)]
    Closed(SessionClosed),
    /// The message is larger than the peer accepts on this session, or than this side's
    /// whole send buffer holds (less the per-message overhead): it can never be sent.
    #[error("message of {len} bytes exceeds the maximum of {max} this session can send")]
    TooLarge {
        /// The message length.
        len: usize,
        /// The largest message this session can send.
        max: u32,
    },
    /// The session's grant does not allow this side to send.
    #[error("sending is not permitted on this session")]
    NotPermitted,
    /// This side already finished or closed the session.
    #[error("the session is finished for sending")]
    Finished,
}

/// Why [`SessionSender::try_send`](crate::SessionSender::try_send) did not queue a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrySendError {
    /// The session has no room now (credit and its send queue are used up); the message is
    /// handed back.
    #[error("the session has no room for the message now")]
    Full(bytes::Bytes),
    /// The message can never be sent, as with [`SendError`].
    #[error(transparent)]
    Failed(SendError),
}

/// Why opening a session failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The peer refused it with a code (4000 unauthorized, 4001 forbidden, ...).
    #[error("refused with {code} ({reason})")]
    Refused {
        /// The code.
        code: CloseCode,
        /// The reason text.
        reason: String,
        /// The peer's retry hint in milliseconds (0: none).
        retry_after_ms: u32,
    },
    /// The protocol refused locally (limits, going away).
    #[error(transparent)]
    Local(#[from] mux_proto::OpenError),
    /// The connection is gone.
    #[error("the connection is closed")]
    ConnectionClosed,
}
