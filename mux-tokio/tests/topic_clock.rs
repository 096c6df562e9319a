#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! The topic history's time bounds on tokio's paused clock, over an in-memory WebSocket: a
//! message older than the history's age is a gap for a resumer, and a topic left without
//! subscribers longer than the hub keeps idle topics comes back as a new epoch. Time only
//! moves when the test advances it.

use std::time::Duration;

use bytes::Bytes;
use mux_proto::Config;
use mux_tokio::topic::{
    decode, HubOptions, LocalHub, StreamPosition, SubscribeOptions, Subscription, TopicEvent,
    TopicKind, TopicOptions,
};
use mux_tokio::{
    connect_transport, serve_transport, AllowAll, ConnectionHandle, Principal, Session,
    TungsteniteTransport,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// No timer of the connection's own runs while a test waits (keepalive, idle).
fn quiet() -> Config {
    let mut config = Config::default();
    config.timeouts.keepalive_interval = None;
    config.timeouts.session_idle = None;
    config
}

/// A client connection to a server whose sessions arrive on the returned receiver.
async fn pair() -> (ConnectionHandle, mpsc::Receiver<Session>) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let (accepted_tx, accepted) = mpsc::channel(16);
    let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
    let _server = serve_transport(
        TungsteniteTransport::new(server),
        quiet(),
        Principal::new("p"),
        AllowAll,
        accepted_tx,
    );
    let (incoming_tx, _incoming) = mpsc::channel(1);
    let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
    let (client, _) = connect_transport(
        TungsteniteTransport::new(client),
        quiet(),
        AllowAll,
        incoming_tx,
    );
    (client, accepted)
}

/// Opens `kind` and attaches the server's side of it to `hub`.
async fn subscribe(
    client: &ConnectionHandle,
    accepted: &mut mpsc::Receiver<Session>,
    hub: &LocalHub,
    kind: &str,
) -> (Session, Session, Subscription) {
    let session = client.open(kind, Bytes::new()).await.unwrap();
    let served = accepted.recv().await.unwrap();
    let sub = hub.attach(&served, SubscribeOptions::default()).unwrap();
    (session, served, sub)
}

async fn event(session: &mut Session) -> TopicEvent {
    decode(&session.recv().await.expect("an event")).expect("well-formed")
}

fn resume(topic: &str, at: StreamPosition) -> String {
    TopicKind::new(topic, Some(at)).unwrap().to_string()
}

#[tokio::test(start_paused = true)]
async fn messages_older_than_the_history_age_are_a_gap_and_an_idle_topic_expires_into_a_new_epoch()
{
    let hub =
        LocalHub::with_options(HubOptions::default().idle_topics(16, Duration::from_secs(60)));
    hub.configure_topic(
        "news",
        TopicOptions::default().history(100, Duration::from_secs(10)),
    );
    let (client, mut accepted) = pair().await;
    let (mut first, served, sub) = subscribe(&client, &mut accepted, &hub, "news").await;
    let TopicEvent::Position(start) = event(&mut first).await else {
        panic!("a subscription starts with its position");
    };
    let t0 = Instant::now();
    for _ in 0..3 {
        hub.publish("news", Bytes::from_static(b"early"));
    }
    tokio::time::advance(Duration::from_secs(6)).await;
    for _ in 0..2 {
        hub.publish("news", Bytes::from_static(b"late"));
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    // At 11 s the first three are 11 s old, over the 10 s age; the last two are 5 s old.
    let (mut again, served_again, sub_again) =
        subscribe(&client, &mut accepted, &hub, &resume("news", start)).await;
    assert_eq!(event(&mut again).await, TopicEvent::Position(start));
    assert_eq!(event(&mut again).await, TopicEvent::Gap(Some(3)));
    for offset in [4, 5] {
        assert_eq!(
            event(&mut again).await,
            TopicEvent::Message {
                offset,
                payload: Bytes::from_static(b"late")
            }
        );
    }
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(11),
        "only the test moved the clock"
    );
    assert_eq!(hub.history_len("news"), 2);

    // Everyone leaves; the topic is kept 60 s, then forgotten with its epoch.
    let last = hub.position("news").unwrap();
    drop((first, again, served, served_again));
    let (mut sub, mut sub_again) = (sub, sub_again);
    sub.finished().await;
    sub_again.finished().await;
    assert_eq!((hub.topic_count(), hub.idle_topic_count()), (0, 1));
    tokio::time::advance(Duration::from_secs(60)).await;
    let (mut late, _served_late, _sub_late) =
        subscribe(&client, &mut accepted, &hub, &resume("news", last)).await;
    let TopicEvent::Position(fresh) = event(&mut late).await else {
        panic!("a position first");
    };
    assert_ne!(fresh.epoch, last.epoch, "a forgotten topic is a new epoch");
    assert_eq!(fresh.offset, 0);
    assert_eq!(event(&mut late).await, TopicEvent::Gap(None));
}

#[tokio::test(start_paused = true)]
async fn the_hub_keeps_at_most_its_bound_of_idle_topics_dropping_the_oldest() {
    let hub =
        LocalHub::with_options(HubOptions::default().idle_topics(1, Duration::from_secs(300)));
    let (client, mut accepted) = pair().await;
    for topic in ["a", "b"] {
        let (session, served, mut sub) = subscribe(&client, &mut accepted, &hub, topic).await;
        hub.publish(topic, Bytes::from_static(b"x"));
        drop((session, served));
        sub.finished().await;
    }
    assert_eq!(hub.idle_topic_count(), 1);
    assert_eq!(hub.position("a"), None, "the one idle longest is gone");
    assert_eq!(hub.position("b").map(|p| p.offset), Some(1));
    assert_eq!(
        hub.publish("a", Bytes::from_static(b"to nobody")).position,
        None,
        "a topic the hub does not hold keeps nothing"
    );
}
