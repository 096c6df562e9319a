#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Quotas per principal outlive its connections: reconnecting gives no fresh budget for
//! handshakes, session opens or messages. On the paused clock, so no bucket refills unless
//! the test lets time pass.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::hostile::{Hostile, Options};
use common::{loopback, open_config, token_authenticator};
use mux_tokio::quota::{QuotaPolicy, Quotas};
use mux_tokio::{
    AllowAll, Client, ClientConfig, HandshakeRate, OpenError, Server, ServerConfig, ServerHandle,
};

fn rate(per_second: u32, burst: u32) -> HandshakeRate {
    HandshakeRate { per_second, burst }
}

/// A server with `quotas` that counts the messages its echo application reads.
async fn server(quotas: Quotas) -> (std::net::SocketAddr, ServerHandle, Arc<AtomicUsize>) {
    let config: ServerConfig = open_config().quotas(QuotaPolicy::memory(quotas));
    let mut server = Server::bind(loopback(), config, token_authenticator, AllowAll)
        .await
        .expect("bind");
    let (addr, handle) = (server.local_addr(), server.handle());
    let read = Arc::new(AtomicUsize::new(0));
    let counted = read.clone();
    tokio::spawn(async move {
        while let Some(mut session) = server.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                while session.recv().await.is_some() {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, handle, read)
}

fn alice() -> Options {
    Options::default().header("Authorization", "Bearer principal:alice")
}

/// The test: ten reconnects in a loop from one principal stay inside one budget
/// of 5 handshakes (the rest get 429 with `Retry-After`), whatever the connections; another
/// principal has its own budget.
#[tokio::test(start_paused = true)]
async fn ten_reconnects_stay_inside_one_handshake_budget() {
    let (addr, handle, _) = server(Quotas {
        handshakes: rate(1, 5),
        ..Quotas::default()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(match Hostile::upgrade(addr, &alice()).await {
            Ok(h) => {
                drop(h);
                101
            }
            Err((status, head)) => {
                assert!(head.contains("Retry-After: 1\r\n"), "{head}");
                status
            }
        });
    }
    assert_eq!(statuses, [101, 101, 101, 101, 101, 429, 429, 429, 429, 429]);
    let bob = Options::default().header("Authorization", "Bearer principal:bob");
    assert!(Hostile::upgrade(addr, &bob).await.is_ok());
    assert_eq!(handle.stats().refused_429, 5);
}

/// Session opens per principal are summed over its connections: with a budget of 3, two
/// on one connection and one on another pass, the fourth is refused with 4002.
#[tokio::test(start_paused = true)]
async fn session_opens_are_counted_across_connections() {
    let (addr, _, _) = server(Quotas {
        opens: rate(1, 3),
        ..Quotas::default()
    })
    .await;
    let url = format!("ws://{addr}/");
    let config = || ClientConfig::default().token("principal:alice");
    let mut a = Client::connect(&url, config()).await.expect("connect");
    let mut b = Client::connect(&url, config()).await.expect("connect");
    let _one = a.open("x", Bytes::new()).await.expect("open");
    let _two = a.open("x", Bytes::new()).await.expect("open");
    let _three = b.open("x", Bytes::new()).await.expect("open");
    match b.open("x", Bytes::new()).await {
        Err(OpenError::Refused { code, .. }) => assert_eq!(code.get(), 4002),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

/// Messages per principal (1/s, bursts of 128) over a reconnect: 300 messages, half on a
/// first connection and half on a second, cannot all be read before the quota lets them
/// through; without it they would all arrive at once. The bound allows the burst and one
/// lease of 64 per connection.
#[tokio::test(start_paused = true)]
async fn messages_are_counted_across_a_reconnect() {
    let (addr, _, read) = server(Quotas {
        messages: rate(1, 128),
        ..Quotas::default()
    })
    .await;
    let started = tokio::time::Instant::now();
    let url = format!("ws://{addr}/");
    for part in 0..2 {
        let mut client = Client::connect(&url, ClientConfig::default().token("principal:alice"))
            .await
            .expect("connect");
        let mut session = client.open("x", Bytes::new()).await.expect("open");
        for i in 0..150u32 {
            session
                .send(Bytes::from(i.to_be_bytes().to_vec()))
                .await
                .expect("send");
        }
        let want = 150 * (part + 1);
        // Virtual seconds pass while the quota refills; a bound far above what it needs.
        for _ in 0..1000 {
            if read.load(Ordering::SeqCst) >= want {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(
            read.load(Ordering::SeqCst) >= want,
            "part {part} was not read: {} of {want}",
            read.load(Ordering::SeqCst)
        );
        drop((session, client));
    }
    let elapsed = started.elapsed();
    println!("300 messages read after {elapsed:?} of virtual time");
    assert!(
        elapsed >= Duration::from_secs(300 - 128 - 2 * 64),
        "{elapsed:?}"
    );
}
