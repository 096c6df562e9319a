//! Runs the protocol behind an axum route (feature `axum`).
//!
//! [`upgrade`] is the whole server on an axum route: it runs every check of
//! [`Server`](crate::Server)'s own listener (Origin → 403, `mux.v1` → 400, authentication
//! → 401, caps and quotas → 429, memory → 503, the handshake deadline, trusted proxies,
//! the message size L) and answers with the same statuses, then runs the connection over
//! axum's WebSocket. Build the server with [`Server::detached`](crate::Server::detached).
//! [`AxumTransport`] is the adapter underneath, for applications that do their own checks
//! and call [`serve_transport`](crate::serve_transport).

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{Sink, Stream};

use crate::transport::{TransportError, TransportErrorKind, WsMessage};

/// Upgrades with every check of the server (see the module docs and
/// [`ServerHandle::upgrade_axum`](crate::ServerHandle::upgrade_axum)).
pub async fn upgrade(
    server: &crate::ServerHandle,
    ws: axum::extract::ws::WebSocketUpgrade,
    peer: std::net::SocketAddr,
    headers: &axum::http::HeaderMap,
    uri: &axum::http::Uri,
) -> axum::response::Response {
    server.upgrade_axum(ws, peer, headers, uri).await
}

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
