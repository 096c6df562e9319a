//! Errors for local misuse or refusal. A misbehaving *peer* is never an `Err`: it becomes a
//! closed session or connection with a code, reported through events.

use crate::code::CloseCode;
use crate::id::SessionId;

/// Why [`Connection::open`](crate::Connection::open) refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The peer's MAX_SESSIONS is reached; retry when one of ours has closed.
    #[error("the peer allows at most {max} sessions opened by this side")]
    TooManySessions {
        /// The peer's limit.
        max: u32,
    },
    /// Our receive buffer cannot cover another session's window.
    #[error("the receive buffer cannot cover another session window")]
    RecvBufferFull,
    /// `kind` plus `auth` exceed what the peer accepts, or `kind` exceeds 255 bytes.
    #[error("open metadata of {len} bytes exceeds the limit of {max}")]
    MetadataTooLarge {
        /// Bytes of kind plus auth.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The peer sent GOAWAY or this side is shutting down: open a new connection.
    #[error("the connection is going away")]
    GoingAway,
    /// This side has used every session ID: open a new connection.
    #[error("session IDs are exhausted")]
    IdsExhausted,
    /// The connection is not ready (peer SETTINGS not yet received) or already closed.
    #[error("the connection is not open")]
    NotOpen,
}

/// Why [`Connection::send`](crate::Connection::send) refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The session's send queue or the connection's send buffer is full. Wait for
    /// [`Event::Writable`](crate::Event::Writable) and retry: this is backpressure.
    #[error("send queue full")]
    Blocked,
    /// The message is larger than the peer accepts on this session, or than this side's
    /// whole send buffer holds (less the per-message overhead): it can never be sent.
    #[error("message of {len} bytes exceeds the maximum of {max} this session can send")]
    TooLarge {
        /// The message length.
        len: usize,
        /// The largest message this session can send.
        max: u32,
    },
    /// The grant does not allow this side to send on the session.
    #[error("sending is not permitted on this session")]
    NotPermitted,
    /// This side already half-closed or closed the session.
    #[error("the session is finished for sending")]
    Finished,
    /// No such live session.
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
}

/// Why a session command ([`accept`](crate::Connection::accept),
/// [`reject`](crate::Connection::reject), [`close_session`](crate::Connection::close_session),
/// ...) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// No such live session.
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    /// The session is not waiting for an authorization decision.
    #[error("session {0} is not awaiting a decision")]
    NotPending(SessionId),
    /// The receive buffer cannot cover the extra credit asked for.
    #[error("the receive buffer cannot cover the requested credit")]
    RecvBufferFull,
    /// The credit would overflow the 32-bit window.
    #[error("credit overflow")]
    CreditOverflow,
    /// The code may not be sent on the wire (spec/close-codes.md#valid-values).
    #[error("close code {0} is not valid on the wire")]
    InvalidCode(CloseCode),
}
