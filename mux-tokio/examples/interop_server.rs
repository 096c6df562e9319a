#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! A tiny server for the mux-js interop tests: prints its port on stdout, then serves.
//!
//! Session kinds: `echo` (full grant, echoes every message), `big` (echo with a 256 KiB
//! message size and the credit to carry it), `forbidden` (refused with 4001), and
//! `shutdown` (starts a graceful shutdown: GOAWAY to every connection).
//!
//! Connections without an `Origin` are admitted; so is the origin given as the first argument
//! (the page of the browser tests).

use std::time::Duration;

use mux_tokio::{
    AuthError, Grant, HandshakeRequest, OpenInfo, OriginPolicy, Principal, Rejection, Server,
    ServerConfig,
};

const BIG: u32 = 256 * 1024;

fn authenticate(request: &HandshakeRequest) -> Result<Principal, AuthError> {
    match &request.token {
        Some(token) if token.expose() == "interop-token" => Ok(Principal::new("interop")),
        _ => Err(AuthError::Invalid),
    }
}

async fn authorize(open: OpenInfo) -> Result<Grant, Rejection> {
    match open.kind.as_str() {
        "echo" | "shutdown" => Ok(Grant::full()),
        "big" => Ok(Grant::full()
            .with_max_message_size(BIG)
            .with_extra_credit(0, BIG)),
        _ => Err(Rejection::forbidden("not for you")),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let origin = std::env::args().nth(1);
    let config =
        ServerConfig::default().origins(OriginPolicy::allow(origin.as_deref()).allow_missing(true));
    let mut server = Server::bind(
        "127.0.0.1:0".parse().expect("loopback address"),
        config,
        authenticate,
        |_: Principal, open: OpenInfo| authorize(open),
    )
    .await?;
    println!("{}", server.local_addr().port());
    let handle = server.handle();
    while let Some(mut session) = server.accept().await {
        if session.kind() == "shutdown" {
            let handle = handle.clone();
            tokio::spawn(async move { handle.shutdown(Duration::from_secs(5)).await });
        }
        tokio::spawn(async move {
            while let Some(message) = session.recv().await {
                if session.send(message).await.is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}
