#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! The protocol behind an axum route: axum authenticates and checks the Origin with its own
//! extractors before the upgrade, then `mux_tokio` runs the sessions.
//!
//! `cargo run -p mux-tokio --features axum --example axum`, then connect a mux client to
//! `ws://127.0.0.1:3000/mux` with `Authorization: Bearer demo`.

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use mux_tokio::axum::AxumTransport;
use mux_tokio::{bearer_token, AllowAll, OriginPolicy, Principal, Session, SUBPROTOCOL};
use tokio::sync::mpsc;

#[derive(Clone)]
struct App {
    origins: OriginPolicy,
    sessions: mpsc::Sender<Session>,
}

async fn mux(ws: WebSocketUpgrade, headers: HeaderMap, State(app): State<App>) -> Response {
    // Every check before the 101, with a real status.
    let origin = headers.get("origin").and_then(|v| v.to_str().ok());
    if !app.origins.admits(origin) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let Some(principal) = token
        .filter(|t| t.expose() == "demo")
        .map(|_| Principal::new("demo-user"))
    else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    ws.protocols([SUBPROTOCOL])
        .on_upgrade(move |socket| async move {
            let (_, done) = mux_tokio::serve_transport(
                AxumTransport::new(socket),
                mux_tokio::Config::default(),
                principal,
                AllowAll,
                app.sessions.clone(),
            );
            let _ = done.await;
        })
}

#[tokio::main]
async fn main() {
    let (sessions, mut accepted) = mpsc::channel(64);
    let app = App {
        origins: OriginPolicy::allow(["http://localhost:3000"]).allow_missing(true),
        sessions,
    };
    tokio::spawn(async move {
        while let Some(mut session) = accepted.recv().await {
            tokio::spawn(async move {
                while let Some(message) = session.recv().await {
                    let _ = session.send(message).await;
                }
            });
        }
    });
    let router = Router::new().route("/mux", any(mux)).with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000")
        .await
        .expect("bind");
    axum::serve(listener, router).await.expect("serve");
}
