#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Memory handed back after a flood (issue 17): a burst of handshakes from many source
//! addresses and principals leaves nothing behind in the server once it has passed, even
//! when no handshake follows it. On tokio's paused clock over in-memory streams (a
//! detached server, [`ServerHandle::serve`] with a made-up peer address per connection), so
//! the housekeeping tick is observed at its own instant and no real time passes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mux_tokio::quota::{MemoryQuotas, OnStoreError, QuotaKinds, QuotaPolicy, Quotas};
use mux_tokio::{AllowAll, OriginPolicy, Server, ServerConfig, ServerHandle};
use tokio::io::DuplexStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::WebSocketStream;

mod common;

/// Sources in the flood (each its own address, and so its own principal with `AllowAll`).
const SOURCES: u16 = 300;

/// Upgrades one in-memory connection from `peer`.
async fn upgrade(handle: &ServerHandle, peer: SocketAddr) -> WebSocketStream<DuplexStream> {
    let (client, server) = tokio::io::duplex(16 * 1024);
    let handle = handle.clone();
    tokio::spawn(async move { handle.serve(server, peer).await });
    let mut request = "ws://localhost/".into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("mux.v1"));
    let (ws, response) = tokio_tungstenite::client_async(request, client)
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 101);
    ws
}

#[tokio::test(start_paused = true)]
async fn a_flood_from_many_sources_is_forgotten_without_another_handshake() {
    let quotas = Arc::new(MemoryQuotas::new(Quotas::default()));
    let mut config = ServerConfig::default()
        .origins(OriginPolicy::allow(["http://localhost"]).allow_missing(true));
    config.quotas = QuotaPolicy {
        store: quotas.clone(),
        kinds: QuotaKinds {
            handshakes: true,
            opens: false,
            messages: false,
        },
        on_error: OnStoreError::Allow,
    };
    let server = Server::detached(config, AllowAll, AllowAll);
    let handle = server.handle();
    let mut flood = Vec::new();
    for i in 0..SOURCES {
        let [hi, lo] = i.to_be_bytes();
        let peer = SocketAddr::from(([10, 0, hi, lo], 40_000));
        flood.push(upgrade(&handle, peer).await);
    }
    let stats = handle.stats();
    assert_eq!(stats.connections, usize::from(SOURCES));
    // Each source and principal is within its burst: remembered, as the limits need.
    assert_eq!(stats.rate_limited_sources, usize::from(SOURCES));
    assert_eq!(quotas.remembered(), usize::from(SOURCES));

    drop(flood);
    common::wait_idle(&handle).await;
    // One handshake each is whole again after 1/32 s (per address) and 1/16 s (per
    // principal); the next housekeeping tick, at most 1 s later, forgets them all, with no
    // handshake arriving to trigger a sweep.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(handle.stats().rate_limited_sources, 0);
    assert_eq!(quotas.remembered(), 0);
    drop(server);
}
