#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! The protocol behind an axum route, with every check of the plain server: Origin,
//! `mux.v1`, authentication, caps, quotas, the memory budget and the handshake deadline,
//! answered with spec/http.md's statuses by `mux_tokio::axum::upgrade`.
//!
//! `cargo run -p mux-tokio --features axum --example axum`, then connect a mux client to
//! `ws://127.0.0.1:3000/mux` with `Authorization: Bearer demo`.

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use mux_tokio::{
    AllowAll, AuthError, HandshakeRequest, OriginPolicy, Principal, Server, ServerConfig,
    ServerHandle,
};

async fn mux(
    ws: WebSocketUpgrade,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    State(server): State<ServerHandle>,
) -> Response {
    mux_tokio::axum::upgrade(&server, ws, peer, &headers, &uri).await
}

fn authenticate(request: &HandshakeRequest) -> Result<Principal, AuthError> {
    match request.token.as_ref().map(|t| t.expose()) {
        Some("demo") => Ok(Principal::new("demo-user")),
        Some(_) => Err(AuthError::Invalid),
        None => Err(AuthError::Missing),
    }
}

#[tokio::main]
async fn main() {
    let config = ServerConfig::default()
        .origins(OriginPolicy::allow(["http://localhost:3000"]).allow_missing(true));
    let mut server = Server::detached(config, authenticate, AllowAll);
    let router = Router::new()
        .route("/mux", any(mux))
        .with_state(server.handle());
    tokio::spawn(async move {
        while let Some(mut session) = server.accept().await {
            tokio::spawn(async move {
                while let Some(message) = session.recv().await {
                    let _ = session.send(message).await;
                }
            });
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000")
        .await
        .expect("bind");
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("serve");
}
