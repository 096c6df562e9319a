#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Presence across nodes through a real Redis: snapshots list every node's members, joins
//! and leaves reach every node once per member (not per session or node), and a node that
//! dies has its members leave everywhere once their TTL passes.

mod support;

use mux_redis::testing::RedisServer;
use mux_tokio::topic::TopicEvent;
use mux_tokio::Session;
use support::{next_event, numbered, Node, NodeConfig};

fn snapshot(mut members: Vec<&str>) -> TopicEvent {
    members.sort_unstable();
    TopicEvent::Snapshot {
        members: members.into_iter().map(str::to_owned).collect(),
        truncated: false,
    }
}

/// The next event, with a snapshot's members sorted (Redis lists them in no order).
async fn next(session: &mut Session) -> TopicEvent {
    match next_event(session).await {
        TopicEvent::Snapshot {
            mut members,
            truncated,
        } => {
            members.sort_unstable();
            TopicEvent::Snapshot { members, truncated }
        }
        other => other,
    }
}

/// Publishes a marker and checks it is the next event of each session: nothing else came.
async fn nothing_else(node: &Node, sessions: &mut [&mut Session], marker: u64) {
    mux_tokio::topic::Hub::publish(&node.hub, "room", numbered(marker))
        .await
        .unwrap();
    for s in sessions.iter_mut() {
        assert_eq!(support::payload_of(&next(s).await), Some(&numbered(marker)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_cross_nodes_once_per_member() {
    let redis = RedisServer::start();
    let config = NodeConfig::new(&redis.url(), "presence:").presence("room");
    let mut a = Node::start(config.clone()).await;
    let mut b = Node::start(config.clone()).await;
    let mut c = Node::start(config).await;

    let mut ann_a = a.client("ann").await;
    let mut ann_room = a.subscribe(&mut ann_a, "room").await;
    assert_eq!(next(&mut ann_room).await, snapshot(vec![]));

    let mut bob_b = b.client("bob").await;
    let mut bob_room = b.subscribe(&mut bob_b, "room").await;
    assert_eq!(next(&mut bob_room).await, snapshot(vec!["ann"]));
    assert_eq!(next(&mut ann_room).await, TopicEvent::Join("bob".into()));

    let mut cy_c = c.client("cy").await;
    let mut cy_room = c.subscribe(&mut cy_c, "room").await;
    assert_eq!(next(&mut cy_room).await, snapshot(vec!["ann", "bob"]));
    assert_eq!(next(&mut ann_room).await, TopicEvent::Join("cy".into()));
    assert_eq!(next(&mut bob_room).await, TopicEvent::Join("cy".into()));

    // Ann on a second node: already present, so nobody hears a join.
    let mut ann_b = b.client("ann").await;
    let mut ann_room2 = b.subscribe(&mut ann_b, "room").await;
    assert_eq!(
        next(&mut ann_room2).await,
        snapshot(vec!["ann", "bob", "cy"])
    );
    nothing_else(&c, &mut [&mut bob_room, &mut cy_room, &mut ann_room], 1).await;
    assert_eq!(
        support::payload_of(&next(&mut ann_room2).await),
        Some(&numbered(1))
    );

    // Her first session ends: still present on B, no leave.
    drop(ann_room);
    drop(ann_a);
    nothing_else(&a, &mut [&mut bob_room, &mut cy_room, &mut ann_room2], 2).await;

    // Her last one ends: everyone else hears it, on every node.
    drop(ann_room2);
    assert_eq!(next(&mut bob_room).await, TopicEvent::Leave("ann".into()));
    assert_eq!(next(&mut cy_room).await, TopicEvent::Leave("ann".into()));

    // Bob's connection drops: Cy hears it.
    drop(bob_room);
    drop(bob_b);
    assert_eq!(next(&mut cy_room).await, TopicEvent::Leave("bob".into()));
    nothing_else(&b, &mut [&mut cy_room], 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_members_leave_everywhere_within_the_ttl() {
    let redis = RedisServer::start();
    let config = NodeConfig::new(&redis.url(), "ttl:").presence("room");
    let mut a = Node::start(config.clone()).await;
    // Node C runs on its own runtime, so that it can die at once: no task of it runs again
    // (no refresh, no leave), as when its process is killed.
    let c_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut c = c_runtime.spawn(Node::start(config)).await.unwrap();

    let mut ann_a = a.client("ann").await;
    let mut ann_room = a.subscribe(&mut ann_a, "room").await;
    assert_eq!(next(&mut ann_room).await, snapshot(vec![]));
    let mut dee_c = c.client("dee").await;
    let mut dee_room = c.subscribe(&mut dee_c, "room").await;
    assert_eq!(next(&mut dee_room).await, snapshot(vec!["ann"]));
    assert_eq!(next(&mut ann_room).await, TopicEvent::Join("dee".into()));

    c_runtime.shutdown_background();
    // Dee's entry is not refreshed any more: node A sweeps it once it expires (at most the
    // TTL, 900 ms here, after its last refresh) and everyone hears her leave.
    assert_eq!(next(&mut ann_room).await, TopicEvent::Leave("dee".into()));
    let entries: Vec<String> =
        redis.query(redis::cmd("ZRANGE").arg("ttl:pz:{room}").arg(0).arg(-1));
    assert_eq!(entries.len(), 1, "only ann's entry is left: {entries:?}");
    let mut bob_a = a.client("bob").await;
    let mut bob_room = a.subscribe(&mut bob_a, "room").await;
    assert_eq!(next(&mut bob_room).await, snapshot(vec!["ann"]));
    drop((dee_room, dee_c, c));
}
