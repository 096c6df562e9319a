#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Connection caps over real loopback sockets: per IP (429), per principal (429) and global
//! (503) trip at exactly their configured value, and a closed connection frees its place.

mod common;

use bytes::Bytes;
use common::{bind, open_config, raw_upgrade, token_authenticator, wait_until, within, MUX};
use mux_tokio::{AllowAll, Client, ClientConfig, ConnectError, ServerConfig, ServerHandle};

const N: usize = 3;

/// A server whose sessions echo, with `token_authenticator`.
async fn server(config: ServerConfig) -> (std::net::SocketAddr, ServerHandle, String) {
    let (mut server, url) = bind(config, token_authenticator, AllowAll).await;
    let addr = server.local_addr();
    let handle = server.handle();
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            tokio::spawn(common::echo(session));
        }
    });
    (addr, handle, url)
}

async fn connect(url: &str, token: &str) -> Result<Client, ConnectError> {
    let config = ClientConfig::default().token(token).reconnect(false);
    within("connect", Client::connect(url, config)).await
}

/// The connection is really usable, not just upgraded.
async fn round_trip(client: &mut Client) {
    within("a round trip", async {
        let mut session = client.open("echo", Bytes::new()).await.expect("open");
        session
            .send(Bytes::from_static(b"ping"))
            .await
            .expect("send");
        assert_eq!(session.recv().await.as_deref(), Some(&b"ping"[..]));
    })
    .await;
}

fn refused_with(result: Result<Client, ConnectError>, status: &str) {
    match result {
        Ok(_) => panic!("expected HTTP {status}"),
        Err(ConnectError::Refused { status: got, .. }) => assert_eq!(got.to_string(), status),
        Err(e) => panic!("expected HTTP {status}, got {e:?}"),
    }
}

/// Closes `client` and waits until the server has released its place.
async fn close_one(client: Client, handle: &ServerHandle, left: usize) {
    within("close", client.close()).await;
    wait_until("the closed connection is released", || {
        handle.stats().connections == left
    })
    .await;
}

#[tokio::test]
async fn per_ip_cap_trips_at_exactly_n() {
    let config = open_config().connection_limits(100, N, 100);
    let (addr, handle, url) = server(config).await;
    let mut clients = Vec::new();
    for i in 0..N {
        // Different principals, so only the per-IP cap can trip.
        let mut client = connect(&url, &format!("principal:p{i}"))
            .await
            .expect("within cap");
        round_trip(&mut client).await;
        clients.push(client);
    }
    assert_eq!(handle.stats().connections, N);
    refused_with(connect(&url, "principal:extra").await, "429");
    let raw = raw_upgrade(addr, &[MUX, ("Authorization", "Bearer principal:raw")]).await;
    assert_eq!(raw.status, 429, "{}", raw.head);
    assert!(raw.header("retry-after").is_some());
    drop(raw);
    assert_eq!(handle.stats().refused_429, 2);
    assert_eq!(handle.stats().upgraded, N as u64);

    let first = clients.remove(0);
    close_one(first, &handle, N - 1).await;
    let mut again = connect(&url, "principal:again")
        .await
        .expect("a place is free again");
    round_trip(&mut again).await;
    refused_with(connect(&url, "principal:extra").await, "429");
    clients.push(again);

    for client in clients {
        within("close", client.close()).await;
    }
    common::wait_idle(&handle).await;
}

#[tokio::test]
async fn per_principal_cap_trips_at_exactly_n() {
    let config = open_config().connection_limits(100, 100, N);
    let (addr, handle, url) = server(config).await;
    let mut alice = Vec::new();
    for _ in 0..N {
        alice.push(connect(&url, "principal:alice").await.expect("within cap"));
    }
    refused_with(connect(&url, "principal:alice").await, "429");
    // Retryable, so it says when (spec/http.md).
    let raw = raw_upgrade(addr, &[MUX, ("Authorization", "Bearer principal:alice")]).await;
    assert_eq!(raw.status, 429, "{}", raw.head);
    assert_eq!(raw.header("retry-after"), Some("1"), "{}", raw.head);
    drop(raw);
    assert_eq!(handle.stats().refused_429, 2);
    // Another principal from the same IP is unaffected.
    let mut bob = connect(&url, "principal:bob")
        .await
        .expect("bob has his own cap");
    round_trip(&mut bob).await;
    assert_eq!(handle.tracked_keys(), (1, 2));

    let first = alice.remove(0);
    close_one(first, &handle, N).await;
    let mut again = connect(&url, "principal:alice")
        .await
        .expect("alice has a place again");
    round_trip(&mut again).await;
    refused_with(connect(&url, "principal:alice").await, "429");
    alice.push(again);

    for client in alice.into_iter().chain([bob]) {
        within("close", client.close()).await;
    }
    common::wait_idle(&handle).await;
}

#[tokio::test]
async fn global_cap_sheds_with_503_at_exactly_n() {
    let config = open_config().connection_limits(N, 100, 100);
    let (addr, handle, url) = server(config).await;
    let mut clients = Vec::new();
    for i in 0..N {
        clients.push(
            connect(&url, &format!("principal:p{i}"))
                .await
                .expect("within cap"),
        );
    }
    refused_with(connect(&url, "principal:extra").await, "503");
    let raw = raw_upgrade(addr, &[MUX, ("Authorization", "Bearer principal:raw")]).await;
    assert_eq!(raw.status, 503, "{}", raw.head);
    drop(raw);
    assert_eq!(handle.stats().refused_503, 2);
    assert_eq!(handle.stats().refused_429, 0);

    let first = clients.remove(0);
    close_one(first, &handle, N - 1).await;
    let mut again = connect(&url, "principal:again")
        .await
        .expect("a place is free again");
    round_trip(&mut again).await;
    refused_with(connect(&url, "principal:extra").await, "503");
    clients.push(again);

    for client in clients {
        within("close", client.close()).await;
    }
    common::wait_idle(&handle).await;
}
