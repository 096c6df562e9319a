#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! A rolling restart behind the real proxies (the configs in `deploy/`, TLS ending at the
//! proxy), with the two nodes sharing one `RedisHub` topic: a subscriber (the Rust client,
//! through the proxy) counts every message published while its node drains (GOAWAY, readiness
//! off) and stops; it reconnects through the proxy to the other node, resumes its topic
//! session there from Redis's history, and ends with every message exactly once, in order,
//! with no gap.
//!
//! Real processes (nginx or HAProxy, redis-server), so waits are in real time, each bounded;
//! nothing asserts how fast anything is. Feature `proxies`:
//! `cargo test -p mux-redis --features proxies --test rolling_restart`.

#[path = "../../mux-tokio/tests/proxy/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../../mux-tokio/tests/proxy/pki.rs"]
mod pki;
mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use harness::{Kind, Options, Proxy};
use mux_redis::testing::RedisServer;
use mux_tokio::topic::{TopicEvent, TopicOptions, TopicStreamError};
use mux_tokio::{Backoff, Client, ClientConfig};
use pki::Pki;
use support::{number, numbered, wait_until, within, Node, NodeConfig};

/// The last message the publisher sends: the subscriber stops there.
const END: u64 = u64::MAX;

/// HAProxy's readiness checks, fast enough for a test (nginx has none: it fails over when
/// the node refuses connections).
fn fast_checks(kind: Kind) -> Vec<(String, String)> {
    match kind {
        Kind::Nginx => Vec::new(),
        Kind::Haproxy => vec![(
            "default-server inter 2s fall 2 rise 2".to_owned(),
            "default-server inter 200ms fall 1 rise 1".to_owned(),
        )],
    }
}

/// What the subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    messages: Vec<u64>,
    offsets: Vec<u64>,
    gaps: Vec<Option<u64>>,
    /// Each subscription's position event (the first, then one per resumption), with how
    /// many messages were published when it arrived.
    positions: Vec<(u64, u64)>,
}

/// Reads the topic until the end marker, through reconnects; `received` counts messages.
async fn subscriber(client: Client, received: Arc<AtomicU64>, published: Arc<AtomicU64>) -> Seen {
    let mut stream = client.subscribe("feed", Bytes::new()).await.unwrap();
    let mut seen = Seen::default();
    loop {
        match stream.next().await {
            Ok(TopicEvent::Message { offset, payload }) => {
                let n = number(&payload);
                if n == END {
                    return seen;
                }
                seen.messages.push(n);
                seen.offsets.push(offset);
                received.fetch_add(1, Ordering::SeqCst);
            }
            Ok(TopicEvent::Gap(n)) => seen.gaps.push(n),
            Ok(TopicEvent::Position(p)) => {
                let now = published.load(Ordering::SeqCst);
                seen.positions.push((p.offset, now));
            }
            Ok(_) => {}
            // A re-subscription refused while the connection changes node: the next call
            // tries again, from the same position.
            Err(TopicStreamError::Refused(_)) => {}
            Err(e) => panic!("the topic stream failed: {e}"),
        }
    }
}

async fn rolling_restart(kind: Kind) {
    let redis = RedisServer::start();
    let prefix = match kind {
        Kind::Nginx => "roll-nginx:",
        Kind::Haproxy => "roll-haproxy:",
    };
    let config = NodeConfig::new(&redis.url(), prefix).topic(
        "feed",
        TopicOptions::default().history(10_000, Duration::from_secs(300)),
    );
    let nodes = [Node::start(config.clone()).await, Node::start(config).await];
    let pki = Pki::new();
    let options = Options {
        nodes: [nodes[0].addr, nodes[1].addr],
        cert_pem: pki.cert_pem.clone(),
        key_pem: pki.key_pem.clone(),
        overrides: fast_checks(kind),
        max_connections: 256,
    };
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let proxy = tokio::task::spawn_blocking(move || Proxy::start(kind, &deploy, &options))
        .await
        .expect("start the proxy");

    let client_config = ClientConfig::default()
        .tls(pki.client_tls())
        .token("user:ann")
        .backoff(Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
            None,
        ));
    let client = within("a connection through the proxy", async {
        Client::connect(&proxy.url(), client_config).await
    })
    .await
    .unwrap_or_else(|e| panic!("connect through {kind:?}: {e}\n{}", proxy.log()));
    let received = Arc::new(AtomicU64::new(0));
    let published = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(subscriber(client, received.clone(), published.clone()));
    let on = |n: &Node| n.hub.local().subscriber_count("feed");
    wait_until("the subscriber attached on a node", || {
        on(&nodes[0]) + on(&nodes[1]) == 1
    })
    .await;
    let (first, second) = if on(&nodes[0]) == 1 {
        (&nodes[0], &nodes[1])
    } else {
        (&nodes[1], &nodes[0])
    };

    // The surviving node publishes throughout, paced so the restart falls mid-stream.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let hub = second.hub.clone();
        let stop = stop.clone();
        let published = published.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                hub.publish_to("feed", numbered(n)).await.expect("publish");
                n += 1;
                published.store(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            hub.publish_to("feed", numbered(END))
                .await
                .expect("publish");
            n
        })
    };
    let count = || received.load(Ordering::SeqCst);
    wait_until("the first messages", || count() >= 50).await;

    // Drain: GOAWAY, readiness off; the draining node's connection still delivers.
    first.handle.drain().await;
    assert!(!first.handle.is_ready());
    let at_drain = count();
    wait_until("messages while draining", || count() >= at_drain + 20).await;
    // The old process stops: its connections close and its port closes.
    within(
        "the drained node to stop",
        first.handle.shutdown(Duration::from_millis(500)),
    )
    .await;
    let at_stop = count();
    // The subscriber is back, on the other node, and messages flow again.
    wait_until("the subscriber resumed on the other node", || {
        on(second) == 1
    })
    .await;
    let connections_after = second.handle.stats().connections;
    wait_until("messages after the restart", || count() >= at_stop + 50).await;
    stop.store(true, Ordering::SeqCst);
    let published = within("the publisher", publisher).await.unwrap();
    let seen = within("the subscriber to read to the end", reader)
        .await
        .unwrap();
    println!(
        "{kind:?}: {published} published, {} received ({at_drain} before the drain, {at_stop} \
         before the stop); subscriptions at (offset, published then): {:?}",
        seen.messages.len(),
        seen.positions
    );
    assert_eq!(seen.gaps, Vec::<Option<u64>>::new(), "no gap");
    assert_eq!(
        seen.messages,
        (0..published).collect::<Vec<_>>(),
        "every message exactly once, in order"
    );
    assert_eq!(
        seen.offsets,
        (1..=published).collect::<Vec<_>>(),
        "at Redis's offsets on both nodes"
    );
    assert!(
        seen.positions.len() >= 2,
        "the subscriber resumed at least once"
    );
    assert!(
        connections_after >= 1,
        "the client reconnected through the proxy to the other node"
    );
    assert_eq!(first.handle.stats().connections, 0);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_rolling_restart_resumes_the_topic_on_the_other_node_without_loss() {
    rolling_restart(Kind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_rolling_restart_resumes_the_topic_on_the_other_node_without_loss() {
    rolling_restart(Kind::Haproxy).await;
}
