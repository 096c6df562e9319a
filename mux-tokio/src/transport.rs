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
    /// A WebSocket-level ping or pong (answered by the WebSocket library, ignored here).
    Control,
    /// The peer's close frame, with its code if it sent one.
    Close(Option<u16>),
}

/// Why the transport failed.
#[derive(Debug, thiserror::Error)]
#[error("transport error: {0}")]
pub struct TransportError(pub String);

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
        TransportError(e.to_string())
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
                    .map_err(err)
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
            let message = match item {
                WsMessage::Binary(b) => Message::Binary(b),
                WsMessage::Close(code) => Message::Close(code.map(|c| CloseFrame {
                    code: WsCloseCode::from(c),
                    reason: "".into(),
                })),
                WsMessage::Text | WsMessage::Control => return Ok(()),
            };
            Pin::new(&mut self.inner).start_send(message).map_err(err)
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
