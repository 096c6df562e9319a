#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! The driver's deadlines on tokio's paused clock over an in-memory WebSocket: the
//! authorization deadline, the keepalive and the write deadline fire exactly when
//! configured, with no real time passing and no wall-clock bound. (The clock jumps to the
//! next timer whenever every task is idle, so a deadline is observed at its own instant.)

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use mux_proto::frame::{Frame, Open, OpenRequest, Settings, Text};
use mux_proto::{CloseCode, Config, Grant, SessionId};
use mux_tokio::{
    connect_transport, serve_transport, AllowAll, ConnectionHandle, ConnectionOutcome, OpenError,
    OpenInfo, Principal, Rejection, Session, TungsteniteTransport,
};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Timer resolution of tokio's clock: a deadline fires within this of its instant.
const TICK: Duration = Duration::from_millis(2);

fn quiet() -> Config {
    let mut config = Config::default();
    config.timeouts.keepalive_interval = None;
    config
}

async fn websocket(stream: DuplexStream, role: Role) -> WebSocketStream<DuplexStream> {
    WebSocketStream::from_raw_socket(stream, role, None).await
}

type Side = (ConnectionHandle, JoinHandle<ConnectionOutcome>);

/// A server (with `authorizer`) and a client connected over an in-memory pipe.
async fn pair(
    server: Config,
    authorizer: impl mux_tokio::Authorizer,
) -> (Side, mpsc::Receiver<Session>, Side) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (accepted_tx, accepted) = mpsc::channel(16);
    let server = serve_transport(
        TungsteniteTransport::new(websocket(a, Role::Server).await),
        server,
        Principal::new("p"),
        authorizer,
        accepted_tx,
    );
    let (incoming_tx, _incoming) = mpsc::channel(1);
    let client = connect_transport(
        TungsteniteTransport::new(websocket(b, Role::Client).await),
        quiet(),
        AllowAll,
        incoming_tx,
    );
    (server, accepted, client)
}

/// "stall" never gets a decision; everything else is granted.
async fn stalling(_: Principal, open: OpenInfo) -> Result<Grant, Rejection> {
    if open.kind == "stall" {
        std::future::pending::<()>().await;
    }
    Ok(Grant::full())
}

fn within_a_tick(elapsed: Duration, deadline: Duration) {
    assert!(
        elapsed >= deadline && elapsed <= deadline + TICK,
        "fired at {elapsed:?}, configured {deadline:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_undecided_open_is_refused_with_4006_at_the_authorization_deadline() {
    let mut server = quiet();
    server.timeouts.authorization = Duration::from_secs(2);
    let ((_server, _), mut accepted, (client, _)) = pair(server, stalling).await;
    let started = Instant::now();
    let stalled = {
        let client = client.clone();
        tokio::spawn(async move { client.open("stall", Bytes::new()).await })
    };
    // Meanwhile another session on the connection opens and echoes at once.
    let mut other = client.open("echo", Bytes::new()).await.unwrap();
    let mut served = accepted.recv().await.unwrap();
    other.send(Bytes::from_static(b"meanwhile")).await.unwrap();
    let got = served.recv().await.unwrap();
    served.send(got).await.unwrap();
    assert_eq!(&other.recv().await.unwrap()[..], b"meanwhile");
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "nothing waited for the stalled open"
    );

    match stalled.await.unwrap() {
        Err(OpenError::Refused { code, .. }) => assert_eq!(code, CloseCode::TIMEOUT),
        other => panic!("{other:?}"),
    }
    within_a_tick(started.elapsed(), Duration::from_secs(2));
}

/// A peer that sent its SETTINGS and then went silent: the server pings after the
/// keepalive interval and closes with 4006 when no answer comes within the timeout.
#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_closed_with_4006_at_interval_plus_timeout() {
    let mut config = Config::default();
    config.timeouts.keepalive_interval = Some(Duration::from_secs(15));
    config.timeouts.keepalive_timeout = Duration::from_secs(10);
    config.timeouts.session_idle = None;
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (accepted_tx, _accepted) = mpsc::channel(1);
    let (_handle, server) = serve_transport(
        TungsteniteTransport::new(websocket(a, Role::Server).await),
        config,
        Principal::new("p"),
        AllowAll,
        accepted_tx,
    );
    let mut peer = websocket(b, Role::Client).await;
    let mut settings = BytesMut::new();
    Frame::Settings(Settings::default()).encode(&mut settings);
    peer.send(Message::Binary(settings.freeze())).await.unwrap();
    let started = Instant::now();
    // Read (and never answer) what the server sends, so its writes never stall.
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = peer.next().await {} });
    let outcome = server.await.unwrap();
    assert_eq!(outcome.code, Some(CloseCode::TIMEOUT));
    within_a_tick(started.elapsed(), Duration::from_secs(25));
    reader.abort();
}

/// A peer that stops reading: the server's write stalls and the connection ends at the
/// write deadline (10 s by default), not later and not sooner.
#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_reading_is_dropped_at_the_write_deadline() {
    let (a, b) = tokio::io::duplex(16 * 1024);
    let (accepted_tx, mut accepted) = mpsc::channel(1);
    let (_handle, server) = serve_transport(
        TungsteniteTransport::new(websocket(a, Role::Server).await),
        quiet(),
        Principal::new("p"),
        AllowAll,
        accepted_tx,
    );
    let mut peer = websocket(b, Role::Client).await;
    // SETTINGS with a large window and an OPEN, then the peer never reads again.
    let mut frames = BytesMut::new();
    Frame::Settings(Settings::default()).encode(&mut frames);
    Frame::Open(Open {
        session_id: SessionId(1),
        request: OpenRequest::default(),
        kind: Text::from_static("sink"),
        auth: mux_proto::Credential::EMPTY,
    })
    .encode(&mut frames);
    peer.send(Message::Binary(frames.freeze())).await.unwrap();
    let mut session = accepted.recv().await.unwrap();
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let message = Bytes::from(vec![7u8; 16 * 1024]);
        while session.send(message.clone()).await.is_ok() {}
    });
    let outcome = server.await.unwrap();
    within_a_tick(started.elapsed(), Duration::from_secs(10));
    assert_ne!(outcome.code, Some(CloseCode::NORMAL));
    sender.await.unwrap();
    drop(peer);
}
