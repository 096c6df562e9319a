//! The transport the driver runs over: any WebSocket that is a `Stream` + `Sink` of
//! [`WsMessage`]s. tokio-tungstenite and axum sockets are adapted to it; their types stay out
//! of the rest of the API.

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

/// Why the transport failed.
#[derive(Debug, thiserror::Error)]
#[error("transport error: {message}")]
pub struct TransportError {
    message: String,
    close_code: Option<u16>,
}

impl TransportError {
    /// The WebSocket failed (an I/O error, a reset, an unexpected end): the connection is
    /// gone and nothing more can be sent on it.
    pub fn new(message: impl Into<String>) -> Self {
        TransportError {
            message: message.into(),
            close_code: None,
        }
    }

    /// The peer broke RFC 6455 itself (an unmasked frame, reserved bits or opcodes, invalid
    /// UTF-8, a message over the size limit) but the socket still works: the connection is
    /// failed with `code` (1002, 1007 or 1009, RFC 6455 §7.4.1), sent as CONN_CLOSE and as
    /// the WebSocket Close.
    pub fn violation(code: u16, message: impl Into<String>) -> Self {
        TransportError {
            message: message.into(),
            close_code: Some(code),
        }
    }

    /// The close code of a [`violation`](TransportError::violation); `None` when the
    /// transport itself failed.
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
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
        inner: WebSocketStream<S>,
    }

    impl<S> TungsteniteTransport<S> {
        /// Wraps an established WebSocket.
        pub fn new(inner: WebSocketStream<S>) -> Self {
            TungsteniteTransport { inner }
        }
    }

    fn err(e: impl std::fmt::Display) -> TransportError {
        TransportError::new(e.to_string())
    }

    /// A read error: the peer's RFC 6455 violations become a close code (§7.4.1), so the
    /// connection is failed with the right code instead of vanishing; I/O errors and an end
    /// without a close handshake stay plain errors.
    fn read_err(e: WsError) -> TransportError {
        let code = match &e {
            WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
                | ProtocolError::SendAfterClosing
                | ProtocolError::ReceivedAfterClosing,
            ) => None,
            WsError::Protocol(_) => Some(1002),
            WsError::Utf8(_) => Some(1007),
            WsError::Capacity(_) => Some(1009),
            WsError::Io(io)
                if io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<MessageTooFragmented>()) =>
            {
                Some(1009)
            }
            WsError::Io(io)
                if io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<MessageTooSlow>()) =>
            {
                Some(1008)
            }
            _ => None,
        };
        match code {
            Some(code) => TransportError::violation(code, e.to_string()),
            None => err(e),
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> Stream for TungsteniteTransport<S> {
        type Item = Result<WsMessage, TransportError>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Pin::new(&mut self.inner).poll_next(cx).map(|item| {
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
            Pin::new(&mut self.inner).poll_ready(cx).map_err(err)
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
            match Pin::new(&mut self.inner).start_send(message) {
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
            Pin::new(&mut self.inner).poll_flush(cx).map_err(err)
        }

        fn poll_close(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.inner).poll_close(cx).map_err(err)
        }
    }
}

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
