#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Backpressure over loopback: a session whose application never reads stops its peer's
//! `send().await` after its credit plus small, configured allowances, while a neighbour
//! session on the same connection keeps echoing quickly.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{bind, open_config, within};
use mux_tokio::{AllowAll, Client, ClientConfig, Session};
use tokio::sync::{mpsc, watch};

/// The receiver's initial window, advertised to the sender (messages).
const INITIAL_CREDIT: usize = 16;
/// Messages the server's driver hands to a session handle ahead of the application.
/// Messages the sender's protocol queues per session beyond its credit.
const QUEUED: usize = 8;
/// Messages the sender attempts in all.
const TOTAL: usize = 200;
/// No send completing within this long means the sender is blocked.
const STALL: Duration = Duration::from_millis(750);

fn numbered(i: usize) -> Bytes {
    let mut m = vec![0u8; 100];
    m[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Bytes::from(m)
}

fn number(m: &[u8]) -> usize {
    u64::from_be_bytes(m[..8].try_into().expect("8 bytes")) as usize
}

#[tokio::test]
async fn unread_session_blocks_its_sender_but_not_its_neighbour() {
    let mut server_protocol = mux_proto::Config::default();
    server_protocol.limits.initial_credit_messages = INITIAL_CREDIT as u32;
    let config = open_config().protocol(server_protocol);
    let (mut server, url) = bind(config, AllowAll, AllowAll).await;
    let (sinks_tx, mut sinks) = mpsc::channel::<Session>(1);
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            if session.kind() == "sink" {
                // Handed to the test, which does not read it (yet).
                let _ = sinks_tx.send(session).await;
            } else {
                tokio::spawn(common::echo(session));
            }
        }
    });

    let mut client_protocol = mux_proto::Config::default();
    client_protocol.limits.max_queued_messages = QUEUED as u32;
    let client_config = ClientConfig::default()
        .protocol(client_protocol)
        .reconnect(false);
    let mut client = within("connect", Client::connect(&url, client_config))
        .await
        .expect("connect");
    let mut sink = within("open sink", client.open("sink", Bytes::new()))
        .await
        .expect("open sink");
    let mut echo = within("open echo", client.open("echo", Bytes::new()))
        .await
        .expect("open echo");
    let mut server_sink = within("the server's sink session", sinks.recv())
        .await
        .expect("sink");

    // The sender reports each completed send.
    let (progress_tx, mut progress) = watch::channel(0usize);
    let sender = tokio::spawn(async move {
        for i in 0..TOTAL {
            sink.send(numbered(i)).await.expect("send on sink");
            progress_tx.send_replace(i + 1);
        }
        sink
    });
    // Sends complete quickly until the credit and allowances are used up, then stop.
    loop {
        match tokio::time::timeout(STALL, progress.changed()).await {
            Ok(Ok(())) => assert!(*progress.borrow() < TOTAL, "sends never blocked"),
            Ok(Err(_)) => panic!("the sender ended: {:?}", sender.await),
            Err(_) => break,
        }
    }
    let completed = *progress.borrow();
    // Exactly the whole window plus the sender's queue: the receiver returns credit only
    // as its application reads, and it has read nothing.
    assert_eq!(
        completed,
        INITIAL_CREDIT + QUEUED,
        "backpressure is not exactly the window plus the send queue"
    );

    // The neighbour on the same connection is unaffected: it keeps echoing while the
    // blocked sender stays blocked. (How fast is P8's business, in BENCHMARKS.md.)
    for i in 0..20 {
        let m = Bytes::from(format!("neighbour-{i}"));
        within("neighbour send", echo.send(m.clone()))
            .await
            .expect("send");
        assert_eq!(within("neighbour echo", echo.recv()).await, Some(m));
    }
    assert_eq!(*progress.borrow(), completed, "the blocked sender moved");

    // Reading releases credit: everything arrives, in order, exactly once.
    within("draining the sink", async {
        for i in 0..TOTAL {
            let m = server_sink.recv().await.expect("sink message");
            assert_eq!(number(&m), i);
        }
    })
    .await;
    let sink = within("the sender to finish", sender)
        .await
        .expect("sender");
    assert_eq!(*progress.borrow(), TOTAL);
    let stats = within("stats", sink.stats()).await.expect("sink stats");
    assert!(stats.credit_stalls >= 1, "{stats:?}");
}
