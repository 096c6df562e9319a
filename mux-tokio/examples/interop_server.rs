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
//! message size and the credit to carry it), `forbidden` (refused with 4001), `shutdown`
//! (starts a graceful shutdown: GOAWAY to every connection), the topic `news` (receive-only,
//! with a history of 1,000 messages, so a subscriber can resume: spec/topics.md#resuming),
//! and `publish` (each message received is published to `news`, and its offset sent back as
//! a decimal string).
//!
//! Connections without an `Origin` are admitted; so is the origin given as the first argument
//! (the page of the browser tests).

use std::time::Duration;

use bytes::Bytes;
use mux_tokio::topic::{LocalHub, SubscribeOptions, TopicKind, TopicOptions};
use mux_tokio::{
    AuthError, Grant, HandshakeRequest, OpenInfo, OriginPolicy, Principal, Rejection, Server,
    ServerConfig, Session,
};

const BIG: u32 = 256 * 1024;

fn authenticate(request: &HandshakeRequest) -> Result<Principal, AuthError> {
    match &request.token {
        Some(token) if token.expose() == "interop-token" => Ok(Principal::new("interop")),
        _ => Err(AuthError::Invalid),
    }
}

async fn authorize(open: OpenInfo) -> Result<Grant, Rejection> {
    if TopicKind::parse(&open.kind).is_ok_and(|k| k.topic == "news") {
        return Ok(Grant::receive_only());
    }
    match open.kind.as_str() {
        "echo" | "shutdown" | "publish" => Ok(Grant::full()),
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
    let hub = LocalHub::new();
    hub.configure_topic(
        "news",
        TopicOptions::default().history(1000, Duration::from_secs(300)),
    );
    while let Some(session) = server.accept().await {
        if session.kind() == "shutdown" {
            let handle = handle.clone();
            tokio::spawn(async move { handle.shutdown(Duration::from_secs(5)).await });
        }
        tokio::spawn(serve(session, hub.clone()));
    }
    Ok(())
}

async fn serve(mut session: Session, hub: LocalHub) {
    if TopicKind::parse(session.kind()).is_ok_and(|k| k.topic == "news") {
        if let Ok(mut subscription) = hub.attach(&session, SubscribeOptions::default()) {
            subscription.finished().await;
        }
        return;
    }
    let publish = session.kind() == "publish";
    while let Some(message) = session.recv().await {
        let reply = if publish {
            let offset = hub
                .publish("news", message)
                .position
                .map_or(0, |p| p.offset);
            Bytes::from(offset.to_string())
        } else {
            message
        };
        if session.send(reply).await.is_err() {
            break;
        }
    }
}
