#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Topics across nodes through a real Redis: every subscriber on every node gets every
//! publish once, in one order per topic; a node subscribes to a topic only while it has
//! subscribers; one Redis round trip per publish; slow subscribers and gaps as on one node.

mod support;

use std::collections::HashMap;

use mux_redis::testing::RedisServer;
use mux_tokio::topic::{Hub, SlowConsumerPolicy, SubscribeOptions, TopicEvent, TopicOptions};
use support::{
    next_event, next_message, nodes_subscribed, number, numbered, wait_until, within, Node,
    NodeConfig,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_one_node_reaches_every_node_once_in_order() {
    let redis = RedisServer::start();
    let mut config = NodeConfig::new(&redis.url(), "fanout:");
    // Room for every message: this test reads one subscriber after another.
    config.subscribe = SubscribeOptions::default().queue_capacity(512);
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(config.clone()).await);
    }
    // Two subscribers on each of the three nodes, on two connections.
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for (n, node) in nodes.iter_mut().enumerate() {
        for c in 0..2 {
            let mut client = node.client(&format!("user{n}{c}")).await;
            sessions.push(node.subscribe(&mut client, "news").await);
            clients.push(client);
        }
    }
    assert_eq!(nodes_subscribed(&redis, "fanout:", "news"), 3);
    // Node A and node B publish at once, interleaved as they please: every subscriber must
    // see the same order, with each node's own messages in the order it published them.
    const EACH: u64 = 100;
    let (a, b) = (nodes[0].hub.clone(), nodes[1].hub.clone());
    let from_a = tokio::spawn(async move {
        for i in 0..EACH {
            a.publish("news", numbered(i)).await.expect("publish on A");
        }
    });
    let from_b = tokio::spawn(async move {
        for i in 0..EACH {
            b.publish("news", numbered(1_000 + i))
                .await
                .expect("publish on B");
        }
    });
    from_a.await.unwrap();
    from_b.await.unwrap();
    let mut orders = Vec::new();
    for session in &mut sessions {
        let mut order = Vec::new();
        for _ in 0..2 * EACH {
            order.push(number(&next_message(session).await));
        }
        orders.push(order);
    }
    for order in &orders {
        assert_eq!(order, &orders[0], "one order per topic on every node");
        let a: Vec<u64> = order.iter().copied().filter(|&n| n < 1_000).collect();
        let b: Vec<u64> = order.iter().copied().filter(|&n| n >= 1_000).collect();
        assert_eq!(
            a,
            (0..EACH).collect::<Vec<_>>(),
            "A's publishes in order, once"
        );
        assert_eq!(b, (1_000..1_000 + EACH).collect::<Vec<_>>());
    }
    // Nothing more arrives: a marker published from C is the next thing everyone sees.
    nodes[2].hub.publish("news", numbered(7_777)).await.unwrap();
    for session in &mut sessions {
        assert_eq!(number(&next_message(session).await), 7_777);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_trip_per_publish_whatever_the_subscribers() {
    let redis = RedisServer::start();
    // With a history: appending to it is part of the one publish script.
    let config = NodeConfig::new(&redis.url(), "trips:").topic(
        "t",
        TopicOptions::default().history(100, std::time::Duration::from_secs(60)),
    );
    let mut a = Node::start(config.clone()).await;
    let mut b = Node::start(config).await;
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for (node, who) in [(&mut a, "a"), (&mut b, "b")] {
        let mut client = node.client(who).await;
        for _ in 0..50 {
            sessions.push(node.subscribe(&mut client, "t").await);
        }
        clients.push(client);
    }
    const PUBLISHES: u64 = 40;
    // Once warm (the script loaded), count every command Redis runs for the publishes.
    a.hub.publish("t", numbered(0)).await.unwrap();
    for s in &mut sessions {
        next_message(s).await;
    }
    redis.reset_stats();
    for i in 1..=PUBLISHES {
        a.hub.publish("t", numbered(i)).await.unwrap();
    }
    for s in &mut sessions {
        for i in 1..=PUBLISHES {
            assert_eq!(number(&next_message(s).await), i);
        }
    }
    let calls: HashMap<String, u64> = redis.command_calls();
    println!(
        "INFO commandstats after {PUBLISHES} publishes to 100 subscribers on 2 nodes: {calls:?}"
    );
    assert_eq!(calls.get("evalsha"), Some(&PUBLISHES), "{calls:?}");
    // The script's own commands, once per publish; nothing per subscriber or per node.
    assert_eq!(calls.get("publish"), Some(&PUBLISHES), "{calls:?}");
    assert_eq!(calls.get("xadd"), Some(&PUBLISHES), "{calls:?}");
    assert_eq!(calls.get("eval"), None, "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_subscribes_only_while_it_has_subscribers() {
    let redis = RedisServer::start();
    let config = NodeConfig::new(&redis.url(), "subs:");
    let mut a = Node::start(config.clone()).await;
    let mut b = Node::start(config).await;
    let mut ann = a.client("ann").await;
    let mut bob = b.client("bob").await;
    assert_eq!(nodes_subscribed(&redis, "subs:", "room"), 0);
    let mut on_a = a.subscribe(&mut ann, "room").await;
    assert_eq!(nodes_subscribed(&redis, "subs:", "room"), 1);
    let on_b = b.subscribe(&mut bob, "room").await;
    let on_b2 = b.subscribe(&mut bob, "room").await;
    assert_eq!(nodes_subscribed(&redis, "subs:", "room"), 2);
    drop(on_b);
    drop(on_b2);
    wait_until("B unsubscribed after its last subscriber left", || {
        nodes_subscribed(&redis, "subs:", "room") == 1
    })
    .await;
    assert_eq!(b.hub.local().topic_count(), 0);
    // B's only subscriber leaves and a new one arrives, over and over, so that each attach
    // races the keeper undoing the last detach: once an attach returned, B is subscribed
    // and a publish from A reaches it.
    for round in 0..100u64 {
        let mut s = b.subscribe(&mut bob, "room").await;
        a.hub.publish("room", numbered(round)).await.unwrap();
        assert_eq!(number(&next_message(&mut s).await), round, "round {round}");
        assert_eq!(number(&next_message(&mut on_a).await), round);
        drop(s);
    }
    wait_until("B unsubscribed again", || {
        nodes_subscribed(&redis, "subs:", "room") == 1
    })
    .await;
    let calls = redis.command_calls();
    println!(
        "subscribe {:?}, unsubscribe {:?}",
        calls.get("subscribe"),
        calls.get("unsubscribe")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscribers_on_another_node_get_exact_gaps_or_4008() {
    let redis = RedisServer::start();
    let mut protocol = mux_tokio::Config::default();
    protocol.limits.initial_credit_messages = 2;
    let mut config = NodeConfig::new(&redis.url(), "slow:");
    config.protocol = protocol.clone();
    let a = Node::start(config.clone()).await;
    config.subscribe = SubscribeOptions::default().queue_capacity(4);
    let mut b = Node::start(config.clone()).await;
    config.subscribe = SubscribeOptions::default()
        .queue_capacity(4)
        .policy(SlowConsumerPolicy::Close);
    let mut c = Node::start(config).await;
    let client_config = |who: &str| {
        mux_tokio::ClientConfig::default()
            .token(format!("user:{who}"))
            .reconnect(false)
            .protocol(protocol.clone())
    };
    let mut ann = mux_tokio::Client::connect(&b.url, client_config("ann"))
        .await
        .unwrap();
    let mut bob = mux_tokio::Client::connect(&c.url, client_config("bob"))
        .await
        .unwrap();
    let mut dropping = b.subscribe(&mut ann, "burst").await;
    let mut closing = c.subscribe(&mut bob, "burst").await;
    const PUBLISHED: u64 = 300;
    for i in 0..PUBLISHED {
        a.hub.publish("burst", numbered(i)).await.unwrap();
    }
    // Drop-oldest on B: every message is received or counted in the gap before the next.
    let (mut expected, mut gaps) = (0u64, 0u64);
    while expected < PUBLISHED {
        match next_event(&mut dropping).await {
            TopicEvent::Gap(Some(n)) => {
                gaps += n;
                expected += n;
            }
            TopicEvent::Message { payload: m, .. } => {
                assert_eq!(number(&m), expected, "lost without a gap, or reordered");
                expected += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(gaps > 0, "a 4-message queue should have overflowed");
    // Close on C: reset with 4008, and C leaves the topic.
    within("C's slow subscriber closed", async {
        while closing.recv().await.is_some() {}
    })
    .await;
    assert_eq!(closing.close_reason().unwrap().code.get(), 4008);
    wait_until("C unsubscribed", || {
        nodes_subscribed(&redis, "slow:", "burst") == 1
    })
    .await;
}
