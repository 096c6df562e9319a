#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! The hooks a broker hub (e.g. over Redis) feeds a `LocalHub` through: a held attach whose
//! first event comes later, events delivered from outside (a gap that keeps the accounting
//! exact under drop-oldest, a join its member does not hear), members and topic changes.

mod common;

use bytes::Bytes;
use common::{bind, open_config, token_authenticator, within};
use mux_tokio::topic::{decode, LocalHub, SubscribeOptions, TopicEvent};
use mux_tokio::{AllowAll, Client, ClientConfig, Server, Session};

async fn client(url: &str, who: &str) -> Client {
    let config = ClientConfig::default()
        .token(format!("principal:{who}"))
        .reconnect(false);
    Client::connect(url, config).await.unwrap()
}

/// Opens `kind` on `client`; returns the client's end and the server's.
async fn open(server: &mut Server, client: &mut Client, kind: &str) -> (Session, Session) {
    let mine = client.open(kind, Bytes::new()).await.unwrap();
    let theirs = within("the server's session", server.accept())
        .await
        .unwrap();
    (mine, theirs)
}

async fn next_event(session: &mut Session) -> TopicEvent {
    loop {
        let message = within("a topic event", session.recv()).await.unwrap();
        match decode(&message).expect("a well-formed event") {
            // Every subscription starts with its stream's position.
            TopicEvent::Position(_) => {}
            event => return event,
        }
    }
}

/// The payload of a message event.
fn payload(event: TopicEvent) -> Bytes {
    match event {
        TopicEvent::Message { payload, .. } => payload,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_held_subscriber_gets_its_first_event_before_what_waited() {
    let (mut server, url) = bind(open_config(), token_authenticator, AllowAll).await;
    let mut ann = client(&url, "ann").await;
    let (mut mine, theirs) = open(&mut server, &mut ann, "room").await;
    let hub = LocalHub::new();
    let sub = hub
        .attach_held(&theirs, SubscribeOptions::default())
        .unwrap();
    for i in 0..3u8 {
        assert_eq!(hub.publish("room", Bytes::from(vec![i])).queued, 1);
    }
    // Its position event and the three messages.
    assert_eq!(sub.queued(), 1 + 3, "nothing is sent while held");
    let snapshot = TopicEvent::Snapshot {
        members: vec!["bob".into()],
        truncated: true,
    };
    sub.release(Some(&snapshot));
    assert_eq!(next_event(&mut mine).await, snapshot);
    for i in 0..3u8 {
        assert_eq!(payload(next_event(&mut mine).await), Bytes::from(vec![i]));
    }
    // A second release changes nothing.
    sub.release(Some(&snapshot));
    hub.publish("room", Bytes::from_static(b"live"));
    assert_eq!(
        payload(next_event(&mut mine).await),
        Bytes::from_static(b"live")
    );
}

#[tokio::test]
async fn a_delivered_gap_keeps_drop_oldest_accounting_exact() {
    let mut protocol = mux_tokio::Config::default();
    protocol.limits.initial_credit_messages = 2;
    let (mut server, url) = bind(
        open_config().protocol(protocol.clone()),
        token_authenticator,
        AllowAll,
    )
    .await;
    let config = ClientConfig::default()
        .token("principal:ann")
        .reconnect(false)
        .protocol(protocol);
    let mut ann = Client::connect(&url, config).await.unwrap();
    let (mut mine, theirs) = open(&mut server, &mut ann, "burst").await;
    let hub = LocalHub::new();
    let _sub = hub
        .attach(&theirs, SubscribeOptions::default().queue_capacity(4))
        .unwrap();
    // 200 published here, and 1,000 a broker lost in the middle: some gaps get dropped from
    // the full queue, and each must still count for what it stood for.
    const HERE: u64 = 200;
    const LOST: u64 = 1000;
    for i in 0..HERE {
        if i == HERE / 2 {
            hub.deliver("burst", &TopicEvent::Gap(Some(LOST)), None);
        }
        hub.publish("burst", Bytes::from(i.to_be_bytes().to_vec()));
    }
    let (mut messages, mut gaps, mut last) = (0u64, 0u64, None);
    while messages + gaps < HERE + LOST {
        match next_event(&mut mine).await {
            TopicEvent::Gap(Some(n)) => gaps += n,
            TopicEvent::Message { payload: m, .. } => {
                let seq = u64::from_be_bytes(m[..].try_into().unwrap());
                assert!(last < Some(seq), "in order");
                last = Some(seq);
                messages += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(messages + gaps, HERE + LOST);
    assert_eq!(last, Some(HERE - 1));
}

#[tokio::test]
async fn joins_skip_their_member_and_the_watch_sees_every_change() {
    let (mut server, url) = bind(open_config(), token_authenticator, AllowAll).await;
    let hub = LocalHub::new();
    let mut watch = hub.watch();
    let mut ann = client(&url, "ann").await;
    let mut bob = client(&url, "bob").await;
    let (mut ann_mine, ann_theirs) = open(&mut server, &mut ann, "room").await;
    let (mut bob_mine, bob_theirs) = open(&mut server, &mut bob, "room").await;
    let (_ann2_mine, ann2_theirs) = open(&mut server, &mut ann, "room").await;
    let a = hub
        .attach(&ann_theirs, SubscribeOptions::default())
        .unwrap();
    assert_eq!(within("a change", watch.changed()).await, ["room"]);
    let b = hub
        .attach(&bob_theirs, SubscribeOptions::default())
        .unwrap();
    let a2 = hub
        .attach(&ann2_theirs, SubscribeOptions::default())
        .unwrap();
    assert_eq!(within("changes", watch.changed()).await, ["room"]);
    let mut members = hub.members("room");
    members.sort();
    assert_eq!(members, [("ann".to_owned(), 2), ("bob".to_owned(), 1)]);
    assert_eq!(hub.topics(), ["room"]);

    hub.deliver("room", &TopicEvent::Join("bob".into()), Some("bob"));
    hub.publish("room", Bytes::from_static(b"after"));
    assert_eq!(
        next_event(&mut ann_mine).await,
        TopicEvent::Join("bob".into())
    );
    assert_eq!(
        payload(next_event(&mut bob_mine).await),
        Bytes::from_static(b"after"),
        "bob does not hear his own join"
    );

    drop((a, a2, b));
    assert_eq!(within("the detaches", watch.changed()).await, ["room"]);
    assert!(hub.members("room").is_empty());
    assert!(hub.topics().is_empty());
}
