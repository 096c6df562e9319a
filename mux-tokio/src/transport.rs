//! The transport the driver runs over: any WebSocket that is a `Stream` + `Sink` of
//! [`WsMessage`]s. tokio-tungstenite and axum sockets are adapted to it; their types stay out
//! of the rest of the API.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};

/// A WebSocket message, independent of the WebSocket library underneath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A binary message: one or more mux frames.
    Binary(Bytes),
    /// A text message: always a protocol violation here (close 1003).
    Text,
    /// A WebSocket-level ping or pong: answered by the WebSocket library, charged to the
    /// control budget by the driver (spec/sessions.md#control-budget).
    Control,
    /// The peer's close frame, with its code if it sent one.
    Close(Option<u16>),
}

/// The underlying error a [`TransportError`] keeps as its `source`: whatever the
/// WebSocket library reported, since a [`Transport`] may be any library's.
type Source = Box<dyn std::error::Error + Send + Sync>;

/// Why the transport failed: what happened ([`kind`](TransportError::kind)) and, as its
/// [`source`](std::error::Error::source), the WebSocket library's own error.
#[derive(Debug)]
pub struct TransportError {
    kind: TransportErrorKind,
    source: Option<Source>,
}

/// What kind of failure a [`TransportError`] is; it decides how the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// The socket failed (a reset, a broken pipe, an unexpected end of the stream): the
    /// connection is gone and nothing more can be sent on it.
    Io,
    /// TLS failed under the WebSocket (a bad record, an alert from the peer).
    Tls,
    /// The WebSocket was already closed, or the peer ended it without a close handshake.
    Closed,
    /// The peer broke RFC 6455 itself (an unmasked frame, reserved bits or opcodes, invalid
    /// UTF-8, a message over the size limit) but the socket still works: the connection is
    /// failed with `code` (1002, 1007, 1008 or 1009, RFC 6455 §7.4.1), sent as CONN_CLOSE and
    /// as the WebSocket Close.
    Violation {
        /// The WebSocket close code.
        code: u16,
    },
    /// Anything else the WebSocket library reported.
    Other,
}

impl TransportError {
    /// A failure of `kind`, caused by `source` (an error, or a message).
    pub fn new(kind: TransportErrorKind, source: impl Into<Source>) -> Self {
        TransportError {
            kind,
            source: Some(source.into()),
        }
    }

    /// The WebSocket is closed ([`TransportErrorKind::Closed`]).
    pub fn closed() -> Self {
        TransportError {
            kind: TransportErrorKind::Closed,
            source: None,
        }
    }

    /// The peer broke RFC 6455 and the connection is failed with `code`
    /// ([`TransportErrorKind::Violation`]).
    pub fn violation(code: u16, source: impl Into<Source>) -> Self {
        TransportError::new(TransportErrorKind::Violation { code }, source)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    /// The close code of a [`violation`](TransportError::violation); `None` when the
    /// transport itself failed.
    pub fn close_code(&self) -> Option<u16> {
        match self.kind {
            TransportErrorKind::Violation { code } => Some(code),
            _ => None,
        }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            TransportErrorKind::Io => f.write_str("the WebSocket's socket failed")?,
            TransportErrorKind::Tls => f.write_str("TLS failed under the WebSocket")?,
            TransportErrorKind::Closed => f.write_str("the WebSocket is closed")?,
            TransportErrorKind::Violation { code } => {
                write!(f, "the peer broke the WebSocket protocol (close {code})")?
            }
            TransportErrorKind::Other => f.write_str("the WebSocket failed")?,
        }
        match &self.source {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for TransportError {
    fn from(e: std::io::Error) -> Self {
        TransportError::new(TransportErrorKind::Io, e)
    }
}

/// What the driver needs from a WebSocket: read messages, write messages, close with a code.
///
/// Implemented for tokio-tungstenite's stream (see [`TungsteniteTransport`]); implement it
/// for any other WebSocket (axum's `WebSocket`, a browser bridge) to run the protocol over it.
pub trait Transport:
    Stream<Item = Result<WsMessage, TransportError>>
    + Sink<WsMessage, Error = TransportError>
    + Send
    + Unpin
    + 'static
{
}

impl<T> Transport for T where
    T: Stream<Item = Result<WsMessage, TransportError>>
        + Sink<WsMessage, Error = TransportError>
        + Send
        + Unpin
        + 'static
{
}

mod tungstenite_adapter {
    use super::*;
    use tokio::io::{AsyncRead, AsyncWrite};
    use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    /// tokio-tungstenite's WebSocket stream as a [`Transport`].
    #[derive(Debug)]
    pub struct TungsteniteTransport<S> {
        /// Boxed: the driver's future holds its transport for the connection's life, and
        /// `async fn`s on the way store their arguments twice (P7); a pointer is cheap to
        /// hold twice.
        inner: Box<WebSocketStream<S>>,
        /// Raised while tungstenite reads, for a [`crate::replies::Replies`] under it.
        reading: Option<crate::replies::Reading>,
    }

    impl<S> TungsteniteTransport<S> {
        /// Wraps an established WebSocket.
        pub fn new(inner: WebSocketStream<S>) -> Self {
            TungsteniteTransport {
                inner: Box::new(inner),
                reading: None,
            }
        }

        /// Wraps a WebSocket over a [`crate::replies::Replies`] stream driven by `reading`.
        pub(crate) fn with_reading(
            inner: WebSocketStream<S>,
            reading: crate::replies::Reading,
        ) -> Self {
            TungsteniteTransport {
                inner: Box::new(inner),
                reading: Some(reading),
            }
        }
    }

    /// A tungstenite error as a [`TransportError`]. Read errors that are the peer's RFC 6455
    /// violations keep their close code (§7.4.1), so the connection is failed with the right
    /// code instead of vanishing; on the write side there is no peer to blame.
    pub(crate) fn from_tungstenite(e: WsError, reading: bool) -> TransportError {
        match kind_of(&e) {
            TransportErrorKind::Violation { .. } if !reading => {
                TransportError::new(TransportErrorKind::Other, e)
            }
            kind => TransportError::new(kind, e),
        }
    }

    fn err(e: WsError) -> TransportError {
        from_tungstenite(e, false)
    }

    fn read_err(e: WsError) -> TransportError {
        from_tungstenite(e, true)
    }

    /// What a tungstenite error means for the connection.
    fn kind_of(e: &WsError) -> TransportErrorKind {
        match e {
            WsError::ConnectionClosed
            | WsError::AlreadyClosed
            | WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
                | ProtocolError::SendAfterClosing
                | ProtocolError::ReceivedAfterClosing,
            ) => TransportErrorKind::Closed,
            WsError::Protocol(_) => TransportErrorKind::Violation { code: 1002 },
            WsError::Utf8(_) => TransportErrorKind::Violation { code: 1007 },
            WsError::Capacity(_) => TransportErrorKind::Violation { code: 1009 },
            WsError::Io(io) => io_kind(io),
            _ => TransportErrorKind::Other,
        }
    }

    /// An I/O error's kind: the server's own frame and deadline checks travel as I/O errors
    /// and become violations; a TLS failure inside the stream is `Tls`.
    fn io_kind(io: &std::io::Error) -> TransportErrorKind {
        let Some(inner) = io.get_ref() else {
            return TransportErrorKind::Io;
        };
        if inner.is::<MessageTooFragmented>() {
            TransportErrorKind::Violation { code: 1009 }
        } else if inner.is::<MessageTooSlow>() {
            TransportErrorKind::Violation { code: 1008 }
        } else if crate::tls::is_tls_error(inner) {
            TransportErrorKind::Tls
        } else {
            TransportErrorKind::Io
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> Stream for TungsteniteTransport<S> {
        type Item = Result<WsMessage, TransportError>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let this = &mut *self;
            if let Some(reading) = &this.reading {
                reading.set(true);
            }
            let polled = Pin::new(&mut *this.inner).poll_next(cx);
            if let Some(reading) = &this.reading {
                reading.set(false);
            }
            polled.map(|item| {
                item.map(|r| {
                    r.map(|m| match m {
                        Message::Binary(b) => WsMessage::Binary(b),
                        Message::Text(_) => WsMessage::Text,
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                            WsMessage::Control
                        }
                        Message::Close(frame) => WsMessage::Close(frame.map(|f| u16::from(f.code))),
                    })
                    .map_err(read_err)
                })
            })
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> Sink<WsMessage> for TungsteniteTransport<S> {
        type Error = TransportError;

        fn poll_ready(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut *self.inner).poll_ready(cx).map_err(err)
        }

        fn start_send(mut self: Pin<&mut Self>, item: WsMessage) -> Result<(), Self::Error> {
            let (message, closing) = match item {
                WsMessage::Binary(b) => (Message::Binary(b), false),
                WsMessage::Close(code) => (
                    Message::Close(code.map(|c| CloseFrame {
                        code: WsCloseCode::from(c),
                        reason: "".into(),
                    })),
                    true,
                ),
                WsMessage::Text | WsMessage::Control => return Ok(()),
            };
            match Pin::new(&mut *self.inner).start_send(message) {
                // The peer closed first: tungstenite has already queued its reply to the
                // peer's Close (RFC 6455 §5.5.1), which the flush that follows sends.
                Err(WsError::Protocol(ProtocolError::SendAfterClosing)) if closing => Ok(()),
                result => result.map_err(err),
            }
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut *self.inner).poll_flush(cx).map_err(err)
        }

        fn poll_close(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut *self.inner).poll_close(cx).map_err(err)
        }
    }
}

#[cfg(feature = "axum")]
pub(crate) use tungstenite_adapter::from_tungstenite;
pub use tungstenite_adapter::TungsteniteTransport;

/// A client's WebSocket message had more frames than the server allows
/// (`ServerConfig::max_message_frames`): read as 1009, like a message too large.
#[derive(Debug, thiserror::Error)]
#[error("too many WebSocket frames in one message")]
pub(crate) struct MessageTooFragmented;

/// A client's fragmented WebSocket message did not complete within
/// `ServerConfig::message_deadline` (pings do not extend it): read as 1008.
#[derive(Debug, thiserror::Error)]
#[error("a fragmented WebSocket message did not complete in time")]
pub(crate) struct MessageTooSlow;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::error::Error as _;

    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};

    use super::tungstenite_adapter::from_tungstenite;
    use super::*;

    #[test]
    fn tungstenite_errors_keep_what_happened() {
        let read = |e| from_tungstenite(e, true);
        assert_eq!(
            read(WsError::ConnectionClosed).kind(),
            TransportErrorKind::Closed
        );
        assert_eq!(
            read(WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            ))
            .kind(),
            TransportErrorKind::Closed
        );
        let unmasked = read(WsError::Protocol(ProtocolError::UnmaskedFrameFromClient));
        assert_eq!(
            unmasked.kind(),
            TransportErrorKind::Violation { code: 1002 }
        );
        assert_eq!(unmasked.close_code(), Some(1002));
        let too_big = WsError::Capacity(CapacityError::MessageTooLong {
            size: 2,
            max_size: 1,
        });
        assert_eq!(read(too_big).close_code(), Some(1009));
        let fragmented = std::io::Error::other(MessageTooFragmented);
        assert_eq!(read(WsError::Io(fragmented)).close_code(), Some(1009));
        let slow = std::io::Error::other(MessageTooSlow);
        assert_eq!(read(WsError::Io(slow)).close_code(), Some(1008));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let io = read(WsError::Io(reset));
        assert_eq!(io.kind(), TransportErrorKind::Io);
        assert_eq!(io.close_code(), None);
        assert!(io.source().is_some(), "the library's error is the source");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_tls_failure_under_the_websocket_is_tls() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        let e = from_tungstenite(WsError::Io(io), true);
        assert_eq!(e.kind(), TransportErrorKind::Tls);
        assert_eq!(e.close_code(), None);
    }

    #[test]
    fn a_write_error_is_never_blamed_on_the_peer() {
        let e = from_tungstenite(
            WsError::Protocol(ProtocolError::UnmaskedFrameFromClient),
            false,
        );
        assert_eq!(e.kind(), TransportErrorKind::Other);
        assert_eq!(e.close_code(), None);
    }

    #[test]
    fn display_says_what_happened_then_why() {
        let e = TransportError::violation(1007, "invalid UTF-8");
        assert_eq!(
            e.to_string(),
            "the peer broke the WebSocket protocol (close 1007): invalid UTF-8"
        );
        assert_eq!(
            TransportError::closed().to_string(),
            "the WebSocket is closed"
        );
        let io: TransportError = std::io::Error::other("boom").into();
        assert_eq!(io.kind(), TransportErrorKind::Io);
        assert_eq!(io.to_string(), "the WebSocket's socket failed: boom");
    }
}
