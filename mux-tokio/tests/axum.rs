#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! The protocol over axum's WebSocket: the same client talks to an axum route, and the
//! route with `mux_tokio::axum::upgrade` runs every check of the plain server.
#![cfg(feature = "axum")]

mod common;

use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use mux_tokio::axum::AxumTransport;
use mux_tokio::{AllowAll, Client, ClientConfig, Principal, Session, SUBPROTOCOL};
use tokio::sync::mpsc;

async fn mux(ws: WebSocketUpgrade, State(sessions): State<mpsc::Sender<Session>>) -> Response {
    ws.protocols([SUBPROTOCOL])
        .on_upgrade(move |socket| async move {
            let (_, done) = mux_tokio::serve_transport(
                AxumTransport::new(socket),
                mux_proto::Config::default(),
                Principal::new("test"),
                AllowAll,
                sessions,
            );
            let _ = done.await;
        })
}

#[tokio::test]
async fn sessions_run_over_an_axum_websocket() {
    let (sessions, mut accepted) = mpsc::channel::<Session>(16);
    let router = Router::new().route("/mux", any(mux)).with_state(sessions);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    tokio::spawn(async move {
        while let Some(mut session) = accepted.recv().await {
            tokio::spawn(async move {
                while let Some(m) = session.recv().await {
                    let reply = Bytes::from([session.kind().as_bytes(), b":", &m[..]].concat());
                    if session.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let work = async {
        let mut client = Client::connect(
            &format!("ws://{addr}/mux"),
            ClientConfig::default().reconnect(false),
        )
        .await
        .unwrap();
        let mut a = client.open("a", Bytes::new()).await.unwrap();
        let mut b = client.open("b", Bytes::new()).await.unwrap();
        for i in 0..20 {
            b.send(Bytes::from(format!("{i}"))).await.unwrap();
            a.send(Bytes::from(format!("{i}"))).await.unwrap();
            assert_eq!(a.recv().await.unwrap(), Bytes::from(format!("a:{i}")));
            assert_eq!(b.recv().await.unwrap(), Bytes::from(format!("b:{i}")));
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .unwrap();
}

/// An axum app whose `/` route is `mux_tokio::axum::upgrade` on a detached server.
async fn checked_app(config: mux_tokio::ServerConfig) -> (std::net::SocketAddr, mux_tokio::Server) {
    use axum::extract::ConnectInfo;
    use axum::http::{HeaderMap, Uri};
    use std::net::SocketAddr;
    async fn route(
        ws: WebSocketUpgrade,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        headers: HeaderMap,
        uri: Uri,
        State(server): State<mux_tokio::ServerHandle>,
    ) -> Response {
        mux_tokio::axum::upgrade(&server, ws, peer, &headers, &uri).await
    }
    let server = mux_tokio::Server::detached(config, common::token_authenticator, AllowAll);
    let router = Router::new()
        .route("/", any(route))
        .with_state(server.handle());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    (addr, server)
}

/// The handshake matrix of the plain server (tests/handshake.rs), through axum.
#[tokio::test]
async fn the_axum_route_runs_the_handshake_matrix() {
    let (addr, _server) = checked_app(common::matrix_config()).await;
    common::handshake_matrix(addr).await;
}

/// Through the checked axum route, sessions reach the detached server's `accept`, and the
/// server's limits apply (the message size L here).
#[tokio::test]
async fn sessions_through_the_checked_route_reach_the_server() {
    let config = common::open_config();
    let (addr, mut server) = checked_app(config).await;
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            tokio::spawn(common::echo(session));
        }
    });
    let mut client = Client::connect(
        &format!("ws://{addr}/"),
        ClientConfig::default().token("good-token").reconnect(false),
    )
    .await
    .unwrap();
    let mut s = client.open("echo", Bytes::new()).await.unwrap();
    s.send(Bytes::from_static(b"over axum")).await.unwrap();
    assert_eq!(
        common::within("the echo", s.recv()).await.unwrap(),
        Bytes::from_static(b"over axum")
    );
}
