#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Quotas in Redis are one budget for every node: a principal that reconnects to another
//! node gets no fresh handshakes or messages.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mux_redis::testing::RedisServer;
use mux_redis::{RedisOptions, RedisQuotas};
use mux_tokio::quota::{
    OnStoreError, QuotaDecision, QuotaFuture, QuotaKey, QuotaKind, QuotaStore, Quotas,
    MESSAGE_LEASE,
};
use mux_tokio::{
    AllowAll, Client, ClientConfig, ConnectError, HandshakeRate, OriginPolicy, Server, ServerConfig,
};
use support::{authenticate, wait_until};

fn rate(per_second: u32, burst: u32) -> HandshakeRate {
    HandshakeRate { per_second, burst }
}

/// A store that counts the refusals it hands out, so a test can wait for one.
struct Counting {
    inner: RedisQuotas,
    limited: Arc<AtomicUsize>,
}

impl QuotaStore for Counting {
    fn charge(&self, kind: QuotaKind, key: &QuotaKey, cost: u32) -> QuotaFuture {
        let charge = self.inner.charge(kind, key, cost);
        let limited = self.limited.clone();
        Box::pin(async move {
            let decision = charge.await;
            if let Ok(QuotaDecision::Limited { .. }) = decision {
                limited.fetch_add(1, Ordering::SeqCst);
            }
            decision
        })
    }
}

/// A node that counts the messages its application reads, with quotas in `redis`.
struct Node {
    url: String,
    read: Arc<AtomicUsize>,
    limited: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn node(redis: &RedisServer, quotas: Quotas) -> Node {
    let options = RedisOptions::default().prefix("quota:");
    let store = RedisQuotas::connect(&redis.url(), &options, quotas).unwrap();
    let limited = Arc::new(AtomicUsize::new(0));
    let mut policy = store.clone().policy(OnStoreError::Refuse);
    policy.store = Arc::new(Counting {
        inner: store,
        limited: limited.clone(),
    });
    let config = ServerConfig::default()
        .origins(OriginPolicy::default().allow_missing(true))
        .quotas(policy);
    let mut server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        config,
        authenticate,
        AllowAll,
    )
    .await
    .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let read = Arc::new(AtomicUsize::new(0));
    let counted = read.clone();
    let task = tokio::spawn(async move {
        while let Some(mut session) = server.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                while session.recv().await.is_some() {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    Node {
        url,
        read,
        limited,
        _task: task,
    }
}

fn alice() -> ClientConfig {
    ClientConfig::default().token("user:alice").reconnect(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_to_another_node_stays_inside_one_handshake_budget() {
    let redis = RedisServer::start();
    let quotas = Quotas {
        handshakes: rate(1, 5),
        ..Quotas::default()
    };
    let nodes = [node(&redis, quotas).await, node(&redis, quotas).await];
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for i in 0..10 {
        // Alternately on node A and node B, each connection closed before the next.
        match Client::connect(&nodes[i % 2].url, alice()).await {
            Ok(client) => {
                client.close().await;
                outcomes.push(101);
            }
            Err(ConnectError::Refused { status, .. }) => outcomes.push(status),
            Err(e) => panic!("connect {i}: {e}"),
        }
    }
    let elapsed = started.elapsed();
    println!("{outcomes:?} in {elapsed:?}");
    assert_eq!(outcomes[..5], [101; 5], "the burst of 5 is admitted");
    // One handshake a second refills the budget: however slow the machine, no more than
    // that was admitted past the burst, on both nodes together.
    let admitted = outcomes.iter().filter(|&&s| s == 101).count() as u64;
    assert!(
        admitted <= 5 + elapsed.as_secs() + 1,
        "{admitted} admitted in {elapsed:?}: {outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|&s| s == 101 || s == 429),
        "{outcomes:?}"
    );
    if elapsed < Duration::from_secs(1) {
        assert_eq!(outcomes[5..], [429; 5]);
    }
    // Another principal has a budget of its own.
    let bob = ClientConfig::default().token("user:bob").reconnect(false);
    Client::connect(&nodes[1].url, bob).await.unwrap();
}

/// Alice connects to `url` and sends 150 messages from a task (sends wait for credit, which
/// a reader held back by its quota does not return).
async fn send_150(url: &str) -> (Client, tokio::task::JoinHandle<()>) {
    let mut client = Client::connect(url, alice()).await.unwrap();
    let mut session = client.open("x", Bytes::new()).await.unwrap();
    let sender = tokio::spawn(async move {
        for i in 0..150u32 {
            if session
                .send(Bytes::from(i.to_be_bytes().to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
        session.closed().await;
    });
    (client, sender)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_budget_spent_on_one_node_is_spent_on_the_other() {
    let redis = RedisServer::start();
    // 1 message a second, bursts of 128: two leases of 64, then one lease a minute.
    let quotas = Quotas {
        messages: rate(1, 128),
        ..Quotas::default()
    };
    let (a, b) = (node(&redis, quotas).await, node(&redis, quotas).await);
    let (client, sender) = send_150(&a.url).await;
    let lease = MESSAGE_LEASE as usize;
    wait_until("node A read the burst, two leases", || {
        a.read.load(Ordering::SeqCst) == 2 * lease
    })
    .await;
    wait_until("node A was refused a third lease", || {
        a.limited.load(Ordering::SeqCst) > 0
    })
    .await;
    let spent = Instant::now();
    sender.abort();
    drop(client);

    // Alice reconnects to node B: the budget she spent on A is spent there too.
    let (_client, _sender) = send_150(&b.url).await;
    wait_until("node B was refused its first lease", || {
        b.limited.load(Ordering::SeqCst) > 0
    })
    .await;
    // A lease refills in 64 s at 1 message a second; before that B reads nothing.
    let read = b.read.load(Ordering::SeqCst);
    let refilled = spent.elapsed().as_secs() / 64;
    assert!(
        read as u64 <= refilled * MESSAGE_LEASE as u64,
        "node B read {read} messages of a spent budget"
    );
    assert_eq!(a.read.load(Ordering::SeqCst), 2 * lease);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_budgets_are_shared_too() {
    let redis = RedisServer::start();
    let quotas = Quotas {
        opens: rate(1, 2),
        ..Quotas::default()
    };
    let options = RedisOptions::default().prefix("ip:");
    let one = RedisQuotas::connect(&redis.url(), &options, quotas).unwrap();
    let two = RedisQuotas::connect(&redis.url(), &options, quotas).unwrap();
    let ip = QuotaKey::Ip("192.0.2.7".parse().unwrap());
    let charge = |store: &RedisQuotas| store.charge(QuotaKind::Opens, &ip, 1);
    assert_eq!(charge(&one).await, Ok(QuotaDecision::Allowed));
    assert_eq!(charge(&two).await, Ok(QuotaDecision::Allowed));
    match charge(&one).await {
        Ok(QuotaDecision::Limited { retry_after }) => {
            assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The key expires once it holds nothing: here within 2 s of the last charge (-2: it
    // has already; -1 would be a key that never does).
    let ttl: i64 = redis.query(redis::cmd("PTTL").arg("ip:q:o:ip:192.0.2.7"));
    assert!(ttl == -2 || (1..=2_001).contains(&ttl), "{ttl}");
    // Kinds without a rate never reach Redis.
    assert_eq!(
        one.charge(QuotaKind::Messages, &ip, 1_000_000).await,
        Ok(QuotaDecision::Allowed)
    );
}
