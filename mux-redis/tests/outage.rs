#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Redis going away mid-run: nothing panics or blocks, each node keeps delivering its own
//! publishes, publishes fail with `PublishError`, quotas fail open or closed as configured,
//! and everything recovers when Redis is back; a dropped pub/sub link gets what it missed
//! from the topic's history when it comes back, and a gap, counted exactly, for the rest.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mux_redis::testing::RedisServer;
use mux_redis::{PublishError, RedisQuotas};
use mux_tokio::quota::{OnStoreError, Quotas};
use mux_tokio::topic::{Hub, HubError, SubscribeOptions, TopicEvent, TopicOptions};
use mux_tokio::{Client, ClientConfig, ConnectError, HandshakeRate, Session};
use support::{next_event, next_message, number, numbered, wait_until, within, Node, NodeConfig};

/// Publishes on `node` and expects Redis's refusal: delivered on this node only.
async fn publish_fails(node: &Node, message: Bytes) {
    match node.hub.publish("news", message).await {
        Err(HubError::Backend(e)) => {
            let e = e
                .downcast_ref::<PublishError>()
                .expect("a mux_redis::PublishError");
            assert!(e.local.queued <= 1, "{e:?}");
        }
        other => panic!("expected the publish to fail, got {other:?}"),
    }
}

async fn connect(url: &str, user: &str) -> Result<Client, ConnectError> {
    let config = ClientConfig::default()
        .token(format!("user:{user}"))
        .reconnect(false);
    Client::connect(url, config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_mid_run_degrades_and_recovers() {
    let mut redis = RedisServer::start();
    let config = NodeConfig::new(&redis.url(), "outage:").presence("room");
    let quotas = Quotas {
        handshakes: HandshakeRate {
            per_second: 100,
            burst: 100,
        },
        ..Quotas::default()
    };
    let store = RedisQuotas::connect(&redis.url(), &config.options, quotas).unwrap();
    let mut a = Node::start(
        config
            .clone()
            .quotas(store.clone().policy(OnStoreError::Allow)),
    )
    .await;
    let mut b = Node::start(config.clone().quotas(store.policy(OnStoreError::Refuse))).await;

    let mut ann = a.client("ann").await;
    let mut bob = b.client("bob").await;
    let mut ann_news = a.subscribe(&mut ann, "news").await;
    let mut bob_news = b.subscribe(&mut bob, "news").await;
    let mut ann_room = a.subscribe(&mut ann, "room").await;
    assert!(matches!(
        next_event(&mut ann_room).await,
        TopicEvent::Snapshot { .. }
    ));
    let mut bob_room = b.subscribe(&mut bob, "room").await;
    assert!(matches!(
        next_event(&mut bob_room).await,
        TopicEvent::Snapshot { .. }
    ));
    assert_eq!(
        next_event(&mut ann_room).await,
        TopicEvent::Join("bob".into())
    );
    a.hub.publish("news", numbered(1)).await.unwrap();
    assert_eq!(number(&next_message(&mut ann_news).await), 1);
    assert_eq!(number(&next_message(&mut bob_news).await), 1);

    redis.stop();
    // Publishes fail with the documented error, and A's own subscriber still gets them, in
    // a stream of A's own (Redis never numbered them): announced as a reset, a position
    // event and a gap of unknown count (spec/topics.md#resuming).
    publish_fails(&a, numbered(100)).await;
    assert_eq!(next_event(&mut ann_news).await, TopicEvent::Gap(None));
    assert_eq!(number(&next_message(&mut ann_news).await), 100);
    for i in 101..105 {
        publish_fails(&a, numbered(i)).await;
        assert_eq!(number(&next_message(&mut ann_news).await), i);
    }
    wait_until("both links noticed", || {
        !a.hub.is_linked() && !b.hub.is_linked()
    })
    .await;
    assert!(a.hub.stats().publish_failures >= 5);
    // Quotas: node A fails open, node B fails closed.
    connect(&a.url, "cy").await.expect("fail open: admitted");
    match connect(&b.url, "cy").await {
        Err(ConnectError::Refused { status: 429, .. }) => {}
        other => panic!("fail closed: expected 429, got {:?}", other.map(|_| ())),
    }
    // Attaching still works, with this node's members only, marked incomplete.
    let mut ann2 = a.client("dee").await;
    let mut dee_room = a.subscribe(&mut ann2, "room").await;
    assert_eq!(
        next_event(&mut dee_room).await,
        TopicEvent::Snapshot {
            members: vec!["ann".into()],
            truncated: true
        }
    );

    redis.restart();
    within("A's link back", a.hub.linked()).await;
    within("B's link back", b.hub.linked()).await;
    // Publishes succeed again (the first after the restart may still find a dead connection).
    let mut probe = 1_000;
    within("a publish that Redis confirms", async {
        loop {
            probe += 1;
            if a.hub.publish("news", numbered(probe)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Bob gets the first confirmed one next (nothing from the outage reached Redis), after
    // the reset: Redis lost the stream, so it is a new epoch. Ann got every probe, the failed
    // ones from her own node, then the same reset back into Redis's stream.
    assert_eq!(next_event(&mut bob_news).await, TopicEvent::Gap(None));
    assert_eq!(number(&next_message(&mut bob_news).await), probe);
    for i in 1_001..probe {
        assert_eq!(number(&next_message(&mut ann_news).await), i);
    }
    assert_eq!(next_event(&mut ann_news).await, TopicEvent::Gap(None));
    assert_eq!(number(&next_message(&mut ann_news).await), probe);
    for i in 2_000..2_010 {
        b.hub.publish("news", numbered(i)).await.unwrap();
    }
    for i in 2_000..2_010 {
        assert_eq!(number(&next_message(&mut ann_news).await), i);
        assert_eq!(number(&next_message(&mut bob_news).await), i);
    }
    // Quotas are charged again: node B admits.
    let mut admitted = None;
    within("node B admitting again", async {
        loop {
            match connect(&b.url, "eve").await {
                Ok(client) => return admitted = Some(client),
                Err(ConnectError::Refused { status: 429, .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    drop(admitted);
    // Presence is back in Redis (Redis lost it): refreshed by both nodes, so a new
    // subscriber sees every member of every node.
    wait_until("presence refreshed", || {
        let n: u64 = redis.query(redis::cmd("HLEN").arg("outage:pm:{room}"));
        n == 3
    })
    .await;
    let mut fay = b.client("fay").await;
    let mut fay_room = b.subscribe(&mut fay, "room").await;
    match next_event(&mut fay_room).await {
        TopicEvent::Snapshot {
            mut members,
            truncated,
        } => {
            members.sort();
            assert_eq!(members, ["ann", "bob", "dee"]);
            assert!(!truncated);
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    assert!(a.hub.stats().links >= 2 && b.hub.stats().links >= 2);
}

/// Reads `total` numbered messages' worth of events: each message once, in order, and
/// `received + Σ gaps = total`.
async fn account(session: &mut Session, total: u64) -> (u64, u64) {
    let (mut received, mut gaps, mut last) = (0u64, 0u64, None);
    while received + gaps < total {
        match next_event(session).await {
            TopicEvent::Gap(Some(n)) => gaps += n,
            TopicEvent::Message { payload: m, .. } => {
                let n = number(&m);
                assert!(
                    last < Some(n),
                    "{n} after {last:?}: a duplicate or out of order"
                );
                last = Some(n);
                received += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received + gaps, total);
    (received, gaps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_pub_sub_link_is_a_gap_counted_exactly() {
    let redis = RedisServer::start();
    let mut config = NodeConfig::new(&redis.url(), "gap:");
    config.subscribe = SubscribeOptions::default().queue_capacity(100_000);
    let mut a = Node::start(config.clone()).await;
    let mut b = Node::start(config).await;
    let mut ann = a.client("ann").await;
    let mut bob = b.client("bob").await;
    let mut on_a = a.subscribe(&mut ann, "news").await;
    let mut on_b = b.subscribe(&mut bob, "news").await;

    const TOTAL: u64 = 3_000;
    let publisher = a.hub.clone();
    let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = published.clone();
    let task = tokio::spawn(async move {
        for i in 0..TOTAL {
            publisher
                .publish("news", numbered(i))
                .await
                .expect("Redis is up");
            count.store(i + 1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    wait_until("a tenth published", || {
        published.load(std::sync::atomic::Ordering::SeqCst) >= TOTAL / 10
    })
    .await;
    // Redis drops every subscriber connection, as when it sheds a slow one; commands go on.
    let killed: u64 = redis.query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"));
    assert_eq!(killed, 2);
    within("the publisher", task).await.unwrap();
    let (received_a, gaps_a) = within("A's events", account(&mut on_a, TOTAL)).await;
    let (received_b, gaps_b) = within("B's events", account(&mut on_b, TOTAL)).await;
    println!(
        "A: {received_a} received, {gaps_a} in gaps; B: {received_b} received, {gaps_b} in gaps"
    );
    assert!(gaps_b > 0, "B's link was down while A published");
    assert_eq!(a.hub.stats().missed, gaps_a);
    assert_eq!(b.hub.stats().missed, gaps_b);
    assert!(b.hub.stats().links >= 2);
}

/// How long the tests' histories keep a message: far longer than any test runs.
const AGE: Duration = Duration::from_secs(600);

/// Node B's own Redis user, so that a test cuts B's pub/sub link alone and keeps it down:
/// taking the user's channel permissions away makes Redis disconnect its subscriber
/// connection and refuse its SUBSCRIBE, while its commands (the history reads) go on.
struct NodeUser<'a> {
    redis: &'a RedisServer,
    name: &'static str,
}

impl<'a> NodeUser<'a> {
    fn create(redis: &'a RedisServer, name: &'static str) -> Self {
        let _: String = redis.query(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(name)
                .arg("on")
                .arg(">secret")
                .arg("~*")
                .arg("&*")
                .arg("+@all"),
        );
        NodeUser { redis, name }
    }

    fn url(&self) -> String {
        format!(
            "redis://{}:secret@127.0.0.1:{}/",
            self.name,
            self.redis.port()
        )
    }

    /// Applies ACL `rules` to the user.
    fn set(&self, rules: &[&str]) {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(self.name);
        for rule in rules {
            cmd.arg(*rule);
        }
        let _: String = self.redis.query(&cmd);
    }
}

/// Nodes A and B on one Redis, B as its own user; `bob` subscribed to "news" on B and
/// already following the stream live (he got message 0).
async fn two_nodes_and_bob<'a>(
    redis: &'a RedisServer,
    prefix: &str,
    history: usize,
) -> (Node, Node, NodeUser<'a>, Client, Session) {
    let user = NodeUser::create(redis, "node-b");
    let config = NodeConfig::new(&redis.url(), prefix)
        .topic("news", TopicOptions::default().history(history, AGE));
    let a = Node::start(config.clone()).await;
    let mut b_config = config;
    b_config.redis_url = user.url();
    let mut b = Node::start(b_config).await;
    let mut bob = b.client("bob").await;
    let mut on_b = b.subscribe(&mut bob, "news").await;
    a.hub.publish("news", numbered(0)).await.unwrap();
    assert_eq!(number(&next_message(&mut on_b).await), 0);
    (a, b, user, bob, on_b)
}

/// Cuts B's pub/sub link and keeps it down while A publishes messages 1 to `n`, each
/// confirmed by Redis; then lets it come back with `rules` applied to B's user.
async fn publish_while_b_is_cut_off(
    a: &Node,
    b: &Node,
    user: &NodeUser<'_>,
    n: u64,
    rules: &[&str],
) {
    user.set(&["resetchannels"]);
    wait_until("B noticed its link down", || !b.hub.is_linked()).await;
    for i in 1..=n {
        a.hub.publish("news", numbered(i)).await.unwrap();
    }
    user.set(rules);
    within("B's link back", b.hub.linked()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_comes_back_gets_what_it_missed_from_the_history() {
    let redis = RedisServer::start();
    let (a, b, user, _bob, mut on_b) = two_nodes_and_bob(&redis, "relink:", 1_000).await;
    const N: u64 = 100;
    publish_while_b_is_cut_off(&a, &b, &user, N, &["allchannels"]).await;
    a.hub.publish("news", numbered(N + 1)).await.unwrap();
    // Every message once, in order, with no gap (`next_message` fails on one), the one
    // published after the link was back last.
    for i in 1..=N + 1 {
        assert_eq!(number(&next_message(&mut on_b).await), i);
    }
    assert_eq!(b.hub.stats().missed, 0);
    assert!(b.hub.stats().links >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_comes_back_gets_one_gap_for_what_the_history_no_longer_holds() {
    let redis = RedisServer::start();
    const HISTORY: u64 = 40;
    const N: u64 = 100;
    let (a, b, user, _bob, mut on_b) =
        two_nodes_and_bob(&redis, "relink-short:", HISTORY as usize).await;
    publish_while_b_is_cut_off(&a, &b, &user, N, &["allchannels"]).await;
    // Without a publish after the link is back: the history's messages come by themselves.
    assert_eq!(
        next_event(&mut on_b).await,
        TopicEvent::Gap(Some(N - HISTORY))
    );
    for i in N - HISTORY + 1..=N {
        assert_eq!(number(&next_message(&mut on_b).await), i);
    }
    a.hub.publish("news", numbered(N + 1)).await.unwrap();
    assert_eq!(number(&next_message(&mut on_b).await), N + 1);
    assert_eq!(b.hub.stats().missed, N - HISTORY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_comes_back_while_the_history_cannot_be_read_gets_the_exact_gap() {
    let redis = RedisServer::start();
    const N: u64 = 30;
    let (a, b, user, _bob, mut on_b) = two_nodes_and_bob(&redis, "relink-fail:", 1_000).await;
    // B may subscribe again but not run the read script.
    publish_while_b_is_cut_off(&a, &b, &user, N, &["allchannels", "-@scripting"]).await;
    a.hub.publish("news", numbered(N + 1)).await.unwrap();
    assert_eq!(next_event(&mut on_b).await, TopicEvent::Gap(Some(N)));
    assert_eq!(number(&next_message(&mut on_b).await), N + 1);
    assert_eq!(b.hub.stats().missed, N);
    assert!(b.hub.stats().read_failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_while_the_link_is_down_comes_after_what_others_published_meanwhile() {
    let redis = RedisServer::start();
    const N: u64 = 20;
    let (a, b, user, _bob, mut on_b) = two_nodes_and_bob(&redis, "relink-own:", 1_000).await;
    // B's link stays down (it may not SUBSCRIBE), but B may publish: Redis numbers B's
    // message after A's, and B hands it to its own subscriber itself.
    user.set(&["resetchannels"]);
    wait_until("B noticed its link down", || !b.hub.is_linked()).await;
    user.set(&["allchannels", "-subscribe"]);
    for i in 1..=N {
        a.hub.publish("news", numbered(i)).await.unwrap();
    }
    b.hub.publish("news", numbered(N + 1)).await.unwrap();
    for i in 1..=N + 1 {
        assert_eq!(number(&next_message(&mut on_b).await), i);
    }
    assert_eq!(b.hub.stats().missed, 0);
    user.set(&["+subscribe"]);
    within("B's link back", b.hub.linked()).await;
    a.hub.publish("news", numbered(N + 2)).await.unwrap();
    assert_eq!(number(&next_message(&mut on_b).await), N + 2);
}
