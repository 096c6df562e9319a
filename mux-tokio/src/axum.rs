//! Runs the protocol over axum's `WebSocket` (feature `axum`).
//!
//! axum does the HTTP side: routing, extractors (authentication, Origin), and the upgrade.
//! [`AxumTransport`] adapts the upgraded socket to [`Transport`](crate::Transport), and
//! [`serve_transport`](crate::serve_transport) runs a connection over it.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{Sink, Stream};

use crate::transport::{TransportError, TransportErrorKind, WsMessage};

/// axum's upgraded WebSocket as a [`Transport`](crate::Transport).
#[derive(Debug)]
pub struct AxumTransport {
    inner: WebSocket,
}

impl AxumTransport {
    /// Wraps an upgraded socket (from `WebSocketUpgrade::on_upgrade`).
    pub fn new(inner: WebSocket) -> Self {
        AxumTransport { inner }
    }
}

/// axum wraps tungstenite's error; unwrapped (when the versions match) it keeps its kind,
/// so a peer's RFC 6455 violation still fails the connection with its close code.
fn err(e: axum::Error, reading: bool) -> TransportError {
    match e
        .into_inner()
        .downcast::<tokio_tungstenite::tungstenite::Error>()
    {
        Ok(ws) => crate::transport::from_tungstenite(*ws, reading),
        Err(other) => TransportError::new(TransportErrorKind::Other, other),
    }
}

fn read_err(e: axum::Error) -> TransportError {
    err(e, true)
}

fn write_err(e: axum::Error) -> TransportError {
    err(e, false)
}

impl Stream for AxumTransport {
    type Item = Result<WsMessage, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|r| {
                r.map(|m| match m {
                    Message::Binary(b) => WsMessage::Binary(b),
                    Message::Text(_) => WsMessage::Text,
                    Message::Ping(_) | Message::Pong(_) => WsMessage::Control,
                    Message::Close(frame) => WsMessage::Close(frame.map(|f| f.code)),
                })
                .map_err(read_err)
            })
        })
    }
}

impl Sink<WsMessage> for AxumTransport {
    type Error = TransportError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx).map_err(write_err)
    }

    fn start_send(mut self: Pin<&mut Self>, item: WsMessage) -> Result<(), Self::Error> {
        let message = match item {
            WsMessage::Binary(b) => Message::Binary(b),
            WsMessage::Close(code) => Message::Close(code.map(|code| CloseFrame {
                code,
                reason: "".into(),
            })),
            WsMessage::Text | WsMessage::Control => return Ok(()),
        };
        Pin::new(&mut self.inner)
            .start_send(message)
            .map_err(write_err)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(write_err)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx).map_err(write_err)
    }
}
