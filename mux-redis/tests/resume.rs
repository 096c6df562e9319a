#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! One stream per topic across nodes, through a real Redis: Redis numbers every message and
//! keeps the topic's history, so a subscriber whose connection drops resumes on another node
//! with exactly what it missed (the Rust client's own reconnect path, through a forwarder
//! switched from node A to node B), or one gap with the exact count of what history no longer
//! holds; a Redis that lost the stream is a new epoch, announced as the documented reset.

mod support;

use std::time::Duration;

use bytes::Bytes;
use mux_redis::testing::RedisServer;
use mux_tokio::topic::{StreamPosition, TopicEvent, TopicOptions, TopicStream};
use mux_tokio::{Backoff, Client, ClientConfig};
use support::{number, numbered, within, Forwarder, Node, NodeConfig};

const AGE: Duration = Duration::from_secs(300);

/// A client of `user` through `url` that reconnects at once, again and again.
async fn reconnecting_client(url: &str, user: &str) -> Client {
    let config = ClientConfig::default()
        .token(format!("user:{user}"))
        .backoff(Backoff::new(
            Duration::from_millis(5),
            Duration::from_millis(50),
            None,
        ));
    Client::connect(url, config).await.expect("connect")
}

/// The next event, bounded.
async fn next(stream: &mut TopicStream) -> TopicEvent {
    within("a topic event", stream.next())
        .await
        .expect("a topic event")
}

/// The next `n` events must be the numbered messages `from..from + n`, at offsets
/// `offset..`: each once, in order.
async fn expect_messages(stream: &mut TopicStream, from: u64, n: u64, offset: u64) {
    for i in 0..n {
        match next(stream).await {
            TopicEvent::Message {
                offset: got,
                payload,
            } => {
                assert_eq!(
                    number(&payload),
                    from + i,
                    "a loss, a duplicate or disorder"
                );
                assert_eq!(got, offset + i, "offsets are Redis's on every node");
            }
            other => panic!("expected message {}, got {other:?}", from + i),
        }
    }
}

/// Two nodes of one Redis behind a forwarder to A, a reconnecting client subscribed through
/// it to `topic` (read up to its position event).
async fn setup(
    redis: &RedisServer,
    prefix: &str,
    topic: &'static str,
    history: usize,
) -> (Node, Node, Forwarder, Client, TopicStream, StreamPosition) {
    let config = NodeConfig::new(&redis.url(), prefix)
        .topic(topic, TopicOptions::default().history(history, AGE));
    let mut a = Node::start(config.clone()).await;
    let b = Node::start(config).await;
    let forwarder = Forwarder::start(a.addr).await;
    let client = reconnecting_client(&forwarder.url(), "ann").await;
    let mut stream = client.subscribe(topic, Bytes::new()).await.unwrap();
    assert_eq!(a.next_attach().await, topic);
    let start = match next(&mut stream).await {
        TopicEvent::Position(p) => p,
        other => panic!("expected the position first, got {other:?}"),
    };
    (a, b, forwarder, client, stream, start)
}

/// Reads 10 messages on A, loses the connection, has 100 published (alternately on A and
/// B) while it is away, and comes back through the forwarder on B: returns the stream, the
/// position it had when it left, and B.
async fn move_to_b_across_100(
    prefix: &str,
    topic: &'static str,
    history: usize,
    redis: &RedisServer,
) -> (TopicStream, StreamPosition, Node, Node, Forwarder, Client) {
    let (a, mut b, forwarder, client, mut stream, start) =
        setup(redis, prefix, topic, history).await;
    assert_eq!(start.offset, 0, "a fresh topic starts at Redis's offset 0");
    for i in 1..=10 {
        a.hub.publish_to(topic, numbered(i)).await.unwrap();
    }
    expect_messages(&mut stream, 1, 10, 1).await;
    let left_at = stream.position().unwrap();
    assert_eq!(left_at, StreamPosition::new(start.epoch, 10));
    // The connection dies; nothing can reach the client until it reconnects, to B.
    forwarder.switch(None);
    for i in 11..=110 {
        let node = if i % 2 == 0 { &a } else { &b };
        let published = node.hub.publish_to(topic, numbered(i)).await.unwrap();
        assert_eq!(published.seq, i);
        assert_eq!(
            published.local.position,
            Some(StreamPosition::new(start.epoch, i)),
            "the report names the message's place in the one stream"
        );
    }
    forwarder.switch(Some(b.addr));
    // The stream re-opens the topic by itself, resuming from its position.
    let resumed = next(&mut stream).await;
    assert_eq!(
        resumed,
        TopicEvent::Position(left_at),
        "the resumption starts where the client left"
    );
    let kind = b.next_attach().await;
    assert_eq!(
        kind,
        mux_tokio::topic::TopicKind::new(topic, Some(left_at))
            .unwrap()
            .to_string(),
        "B attached the resuming session"
    );
    (stream, left_at, a, b, forwarder, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_to_another_node_gets_exactly_the_100_it_missed() {
    let redis = RedisServer::start();
    let (mut stream, left_at, a, b, _forwarder, _client) =
        move_to_b_across_100("resume100:", "news", 1_000, &redis).await;
    expect_messages(&mut stream, 11, 100, 11).await;
    // Then live, once, from either node, at the next offset.
    a.hub.publish_to("news", numbered(111)).await.unwrap();
    b.hub.publish_to("news", numbered(112)).await.unwrap();
    expect_messages(&mut stream, 111, 2, 111).await;
    assert_eq!(
        stream.position(),
        Some(StreamPosition::new(left_at.epoch, 112))
    );
    assert_eq!(b.hub.local().position("news"), stream.position());
    assert_eq!(b.hub.stats().read_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_history_of_50_it_gets_one_gap_of_50_then_the_last_50() {
    let redis = RedisServer::start();
    let (mut stream, left_at, _a, b, _forwarder, _client) =
        move_to_b_across_100("resume50:", "news", 50, &redis).await;
    assert_eq!(next(&mut stream).await, TopicEvent::Gap(Some(50)));
    expect_messages(&mut stream, 61, 50, 61).await;
    b.hub.publish_to("news", numbered(111)).await.unwrap();
    expect_messages(&mut stream, 111, 1, 111).await;
    assert_eq!(
        stream.position(),
        Some(StreamPosition::new(left_at.epoch, 111))
    );
    // Redis keeps exactly the history's length.
    let kept: u64 = redis.query(redis::cmd("XLEN").arg("resume50:h:{news}"));
    assert_eq!(kept, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_already_follows_the_topic_serves_the_resumption_too() {
    let redis = RedisServer::start();
    let config = NodeConfig::new(&redis.url(), "following:")
        .topic("news", TopicOptions::default().history(1_000, AGE));
    let mut a = Node::start(config.clone()).await;
    let mut b = Node::start(config).await;
    // B follows the topic live (a subscriber of its own) before the client arrives.
    let mut bob = b.client("bob").await;
    let mut on_b = b.subscribe(&mut bob, "news").await;
    let forwarder = Forwarder::start(a.addr).await;
    let client = reconnecting_client(&forwarder.url(), "ann").await;
    let mut stream = client.subscribe("news", Bytes::new()).await.unwrap();
    assert_eq!(a.next_attach().await, "news");
    let TopicEvent::Position(start) = next(&mut stream).await else {
        panic!("expected the position first");
    };
    for i in 1..=5 {
        a.hub.publish_to("news", numbered(i)).await.unwrap();
    }
    expect_messages(&mut stream, 1, 5, 1).await;
    forwarder.switch(None);
    for i in 6..=105 {
        b.hub.publish_to("news", numbered(i)).await.unwrap();
    }
    // Bob on B got them all live, at the same offsets.
    for i in 1..=105 {
        assert_eq!(
            support::next_event(&mut on_b).await,
            TopicEvent::Message {
                offset: i,
                payload: numbered(i)
            }
        );
    }
    forwarder.switch(Some(b.addr));
    assert_eq!(
        next(&mut stream).await,
        TopicEvent::Position(StreamPosition::new(start.epoch, 5))
    );
    b.next_attach().await;
    expect_messages(&mut stream, 6, 100, 6).await;
    b.hub.publish_to("news", numbered(106)).await.unwrap();
    expect_messages(&mut stream, 106, 1, 106).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_the_stream_is_a_new_epoch_and_the_documented_reset() {
    let mut redis = RedisServer::start();
    let (a, mut b, forwarder, _client, mut stream, start) =
        setup(&redis, "reset:", "news", 1_000).await;
    for i in 1..=3 {
        a.hub.publish_to("news", numbered(i)).await.unwrap();
    }
    expect_messages(&mut stream, 1, 3, 1).await;
    forwarder.switch(None);
    // Redis restarts without persistence: the sequence and the history are gone.
    redis.restart();
    within("A's link back", a.hub.linked()).await;
    within("B's link back", b.hub.linked()).await;
    let mut published = 0;
    within("two publishes Redis confirms", async {
        while published < 2 {
            // The first command after the restart may still find a dead connection.
            if b.hub
                .publish_to("news", numbered(100 + published))
                .await
                .is_ok()
            {
                published += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await;
    forwarder.switch(Some(b.addr));
    // The old position's epoch is gone: a position in the new epoch, a gap of unknown
    // count, then everything the new epoch's history holds.
    let TopicEvent::Position(reset) = next(&mut stream).await else {
        panic!("expected a position event");
    };
    assert_ne!(reset.epoch, start.epoch, "a new epoch");
    assert_eq!(reset.offset, 0);
    assert_eq!(next(&mut stream).await, TopicEvent::Gap(None));
    b.next_attach().await;
    expect_messages(&mut stream, 100, 2, 1).await;
    a.hub.publish_to("news", numbered(102)).await.unwrap();
    expect_messages(&mut stream, 102, 1, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumption_while_redis_is_unreachable_starts_from_the_node_with_a_reset() {
    let mut redis = RedisServer::start();
    let (a, mut b, forwarder, _client, mut stream, start) =
        setup(&redis, "away:", "news", 1_000).await;
    for i in 1..=3 {
        a.hub.publish_to("news", numbered(i)).await.unwrap();
    }
    expect_messages(&mut stream, 1, 3, 1).await;
    forwarder.switch(None);
    redis.stop();
    forwarder.switch(Some(b.addr));
    // B cannot read the stream: within the command timeout the subscriber starts from
    // B's own stream, which is not the client's epoch.
    let TopicEvent::Position(here) = next(&mut stream).await else {
        panic!("expected a position event");
    };
    assert_ne!(here.epoch, start.epoch);
    assert_eq!(next(&mut stream).await, TopicEvent::Gap(None));
    b.next_attach().await;
    assert_eq!(b.hub.stats().read_failures, 1);
    // Redis back (empty): B's next numbered message is a new epoch for the subscriber.
    redis.restart();
    within("B's link back", b.hub.linked()).await;
    within("a publish Redis confirms", async {
        while a.hub.publish_to("news", numbered(7)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let TopicEvent::Position(back) = next(&mut stream).await else {
        panic!("expected a position event");
    };
    assert_ne!(back.epoch, here.epoch);
    assert_eq!(next(&mut stream).await, TopicEvent::Gap(None));
    expect_messages(&mut stream, 7, 1, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_again_and_again_while_messages_flow_loses_nothing() {
    let redis = RedisServer::start();
    let config = NodeConfig::new(&redis.url(), "flow:")
        .topic("news", TopicOptions::default().history(100_000, AGE));
    let mut b = Node::start(config).await;
    // B itself publishes without pause, on the connection its attaches read the stream on:
    // a message Redis numbers just after a read comes back on B's link at once, often
    // before the subscriber is on the topic.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (hub, stop) = (b.hub.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 1u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                hub.publish_to("news", numbered(n)).await.unwrap();
                n += 1;
            }
        })
    };
    let mut position: Option<StreamPosition> = None;
    for round in 0..30 {
        let client = b.client("ann").await;
        let mut stream = match position {
            None => client.subscribe("news", Bytes::new()).await.unwrap(),
            Some(p) => client
                .subscribe_from("news", Bytes::new(), p)
                .await
                .unwrap(),
        };
        b.next_attach().await;
        let start = match next(&mut stream).await {
            TopicEvent::Position(p) => p,
            other => panic!("round {round}: expected the position first, got {other:?}"),
        };
        if let Some(p) = position {
            assert_eq!(start, p, "round {round}: resumed where it left");
        }
        // A few messages, each the next offset: no gap, no duplicate.
        for i in 1..=5 {
            match next(&mut stream).await {
                TopicEvent::Message { offset, payload } => {
                    assert_eq!(offset, start.offset + i, "round {round}");
                    assert_eq!(number(&payload), offset, "round {round}");
                }
                other => panic!("round {round}: expected a message, got {other:?}"),
            }
        }
        position = stream.position();
        drop(stream);
        client.close().await;
        // B stops following the topic, so the next attach reads Redis's stream again.
        support::wait_until("B left the topic", || {
            b.hub.local().subscriber_count("news") == 0
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    within("the publisher", publisher).await.unwrap();
}
