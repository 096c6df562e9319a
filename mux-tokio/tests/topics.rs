#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Topics over real loopback sockets: scope, slow subscribers, gaps, presence, fan-out.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mux_proto::{CloseCode, Grant};
use mux_tokio::topic::{
    decode, LocalHub, SlowConsumerPolicy, SubscribeOptions, TopicEvent, TopicKind, TopicOptions,
};
use mux_tokio::{
    AuthError, Client, ClientConfig, HandshakeRequest, OpenError, OpenInfo, OriginPolicy,
    Principal, Rejection, Server, ServerConfig, Session,
};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(20);

fn authenticate(request: &HandshakeRequest) -> Result<Principal, AuthError> {
    let token = request
        .token
        .as_ref()
        .map(|t| t.expose().to_owned())
        .unwrap_or_default();
    match token.strip_prefix("user:") {
        Some(name) => Ok(Principal::new(name)),
        None => Err(AuthError::Missing),
    }
}

/// "admin-events" only for the principal "admin"; "private/<name>" only for <name>; the rest
/// is public, decided on the topic (a resumption's kind carries a position after it).
/// Receive-only: subscribers cannot send on topic sessions.
async fn authorize(principal: Principal, open: OpenInfo) -> Result<Grant, Rejection> {
    let Ok(kind) = TopicKind::parse(&open.kind) else {
        return Err(Rejection::forbidden("malformed topic kind"));
    };
    let allowed = match kind.topic {
        "admin-events" => principal.id == "admin",
        kind => kind
            .strip_prefix("private/")
            .is_none_or(|owner| owner == principal.id),
    };
    if allowed {
        Ok(Grant::receive_only())
    } else {
        Err(Rejection::forbidden("not your topic"))
    }
}

struct Setup {
    url: String,
    hub: LocalHub,
    /// Sessions the server attached, with their subscriptions, kept alive by the test.
    attached: mpsc::Receiver<(Session, mux_tokio::topic::Subscription)>,
}

async fn setup(options: SubscribeOptions) -> Setup {
    setup_with(options, mux_proto::Config::default()).await
}

async fn setup_with(options: SubscribeOptions, protocol: mux_proto::Config) -> Setup {
    let config = ServerConfig::default()
        .origins(OriginPolicy::default().allow_missing(true))
        .protocol(protocol)
        .connection_limits(10_000, 1_000, 1_000);
    let mut server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        config,
        authenticate,
        authorize,
    )
    .await
    .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let hub = LocalHub::new();
    hub.configure_topic("room", TopicOptions::with_presence(2));
    let (tx, attached) = mpsc::channel(4096);
    let attach_hub = hub.clone();
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            let sub = attach_hub.attach(&session, options).expect("attach");
            if tx.send((session, sub)).await.is_err() {
                break;
            }
        }
    });
    Setup { url, hub, attached }
}

async fn client(url: &str, user: &str) -> Client {
    let config = ClientConfig::default()
        .token(format!("user:{user}"))
        .reconnect(false);
    Client::connect(url, config).await.unwrap()
}

/// Opens `kind` and waits until the server attached it.
async fn subscribe(
    setup: &mut Setup,
    client: &mut Client,
    kind: &str,
) -> (Session, Session, mux_tokio::topic::Subscription) {
    let session = client.open(kind, Bytes::new()).await.unwrap();
    let (server_side, sub) = setup.attached.recv().await.unwrap();
    assert_eq!(server_side.kind(), kind);
    (session, server_side, sub)
}

/// The next event but the position every subscription starts with.
async fn next_event(session: &mut Session) -> TopicEvent {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), session.recv())
            .await
            .expect("an event within 5 s")
            .expect("session open");
        match decode(&message).expect("well-formed topic event") {
            TopicEvent::Position(_) => continue,
            event => return event,
        }
    }
}

async fn next_message(session: &mut Session) -> Bytes {
    loop {
        if let TopicEvent::Message { payload, .. } = next_event(session).await {
            return payload;
        }
    }
}

#[tokio::test]
async fn a_topic_reaches_only_its_authorized_subscribers() {
    tokio::time::timeout(LIMIT, async {
        let mut s = setup(SubscribeOptions::default()).await;
        let mut ann = client(&s.url, "ann").await;
        let mut bob = client(&s.url, "bob").await;
        let mut admin = client(&s.url, "admin").await;
        let (mut ann_a, _a1, _sa1) = subscribe(&mut s, &mut ann, "topic-a").await;
        let (mut bob_b, _b1, _sb1) = subscribe(&mut s, &mut bob, "topic-b").await;
        let (mut admin_events, _c1, _sc1) = subscribe(&mut s, &mut admin, "admin-events").await;
        // Neither a regular user nor someone else's private topic: refused, nothing attached.
        for kind in ["admin-events", "private/ann"] {
            match bob.open(kind, Bytes::new()).await {
                Err(OpenError::Refused { code, .. }) => assert_eq!(code, CloseCode::FORBIDDEN),
                other => panic!("{kind} should be refused, got {other:?}"),
            }
        }
        assert_eq!(s.hub.subscriber_count("admin-events"), 1);
        assert_eq!(
            s.hub
                .publish("topic-a", Bytes::from_static(b"for A"))
                .queued,
            1
        );
        assert_eq!(
            s.hub
                .publish("admin-events", Bytes::from_static(b"secret"))
                .queued,
            1
        );
        assert_eq!(
            s.hub
                .publish("topic-b", Bytes::from_static(b"for B"))
                .queued,
            1
        );
        assert_eq!(next_message(&mut ann_a).await, Bytes::from_static(b"for A"));
        assert_eq!(next_message(&mut bob_b).await, Bytes::from_static(b"for B"));
        assert_eq!(
            next_message(&mut admin_events).await,
            Bytes::from_static(b"secret")
        );
        // Nothing else arrived anywhere: a marker published last is the next thing each sees.
        for (topic, session) in [
            ("topic-a", &mut ann_a),
            ("topic-b", &mut bob_b),
            ("admin-events", &mut admin_events),
        ] {
            s.hub.publish(topic, Bytes::from_static(b"marker"));
            assert_eq!(
                next_message(session).await,
                Bytes::from_static(b"marker"),
                "{topic}"
            );
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_slow_subscriber_does_not_delay_the_others() {
    tokio::time::timeout(LIMIT, async {
        let mut s = setup(SubscribeOptions::default().queue_capacity(16)).await;
        let mut slow_client = client(&s.url, "slow").await;
        // The slow one never reads: its credit, its inbox and its queue fill up.
        let (_slow, _s1, slow_sub) = subscribe(&mut s, &mut slow_client, "ticks").await;
        let mut fast = Vec::new();
        for i in 0..5 {
            let mut c = client(&s.url, &format!("fast{i}")).await;
            let (session, server_side, sub) = subscribe(&mut s, &mut c, "ticks").await;
            fast.push((c, session, server_side, sub));
        }
        for i in 0..300u32 {
            s.hub
                .publish("ticks", Bytes::from(i.to_be_bytes().to_vec()));
            for (_, session, _, _) in fast.iter_mut() {
                assert_eq!(
                    next_message(session).await,
                    Bytes::from(i.to_be_bytes().to_vec())
                );
            }
        }
        // The stuck subscriber's queue stayed bounded and the others received every
        // publish while it was stuck (latency is measured by `mux-load topics`).
        assert!(slow_sub.queued() <= 16, "{}", slow_sub.queued());
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn drop_oldest_reports_its_gaps_exactly() {
    tokio::time::timeout(LIMIT, async {
        // A small window so the queue, not the session's credit, absorbs the burst.
        let mut protocol = mux_proto::Config::default();
        protocol.limits.initial_credit_messages = 2;
        let mut s = setup_with(SubscribeOptions::default().queue_capacity(4), protocol).await;
        let mut c = client(&s.url, "ann").await;
        let (mut session, _server_side, _sub) = subscribe(&mut s, &mut c, "burst").await;
        const PUBLISHED: u64 = 500;
        for i in 0..PUBLISHED {
            s.hub
                .publish("burst", Bytes::from(i.to_be_bytes().to_vec()));
        }
        // Read everything: each message's sequence number must equal what came before it plus
        // the gap just reported, so messages + gaps account for every publish exactly, and
        // its offset is its sequence number plus one.
        let mut expected = 0u64;
        let mut gaps = 0u64;
        let mut messages = 0u64;
        while expected < PUBLISHED {
            match next_event(&mut session).await {
                TopicEvent::Gap(Some(n)) => {
                    gaps += n;
                    expected += n;
                }
                TopicEvent::Message { offset, payload } => {
                    let seq = u64::from_be_bytes(payload[..].try_into().unwrap());
                    assert_eq!(
                        seq, expected,
                        "a message was lost without a gap, or reordered"
                    );
                    assert_eq!(offset, seq + 1);
                    expected += 1;
                    messages += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(messages + gaps, PUBLISHED);
        assert!(
            gaps > 0,
            "the burst should have overflowed a 4-message queue"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_close_policy_ends_a_slow_subscriber_with_4008() {
    tokio::time::timeout(LIMIT, async {
        let mut protocol = mux_proto::Config::default();
        protocol.limits.initial_credit_messages = 2;
        let options = SubscribeOptions::default()
            .queue_capacity(4)
            .policy(SlowConsumerPolicy::Close);
        let mut s = setup_with(options, protocol).await;
        let mut c = client(&s.url, "ann").await;
        let (mut session, _server_side, _sub) = subscribe(&mut s, &mut c, "burst").await;
        for i in 0..100u32 {
            s.hub
                .publish("burst", Bytes::from(i.to_be_bytes().to_vec()));
        }
        while session.recv().await.is_some() {}
        assert_eq!(
            session.close_reason().unwrap().code,
            CloseCode::SLOW_CONSUMER
        );
        assert_eq!(s.hub.subscriber_count("burst"), 0);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn revoking_stops_delivery_and_closes_with_4007() {
    tokio::time::timeout(LIMIT, async {
        let mut s = setup(SubscribeOptions::default()).await;
        let mut c = client(&s.url, "ann").await;
        let (mut session, _server_side, sub) = subscribe(&mut s, &mut c, "news").await;
        s.hub.publish("news", Bytes::from_static(b"before"));
        assert_eq!(
            next_message(&mut session).await,
            Bytes::from_static(b"before")
        );
        sub.revoke("access withdrawn").await;
        assert_eq!(
            s.hub.publish("news", Bytes::from_static(b"after")).queued,
            0
        );
        while session.recv().await.is_some() {}
        assert_eq!(session.close_reason().unwrap().code, CloseCode::REVOKED);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn presence_sends_a_bounded_snapshot_then_joins_and_leaves() {
    tokio::time::timeout(LIMIT, async {
        let mut s = setup(SubscribeOptions::default()).await;
        let mut ann = client(&s.url, "ann").await;
        let (mut ann_room, _a, _sa) = subscribe(&mut s, &mut ann, "room").await;
        assert_eq!(
            next_event(&mut ann_room).await,
            TopicEvent::Snapshot {
                members: vec![],
                truncated: false
            }
        );
        let mut others = Vec::new();
        for name in ["bob", "cy", "dee"] {
            let mut c = client(&s.url, name).await;
            let (session, server_side, sub) = subscribe(&mut s, &mut c, "room").await;
            assert_eq!(
                next_event(&mut ann_room).await,
                TopicEvent::Join(name.into())
            );
            others.push((c, session, server_side, sub));
        }
        // The last joiner saw three members present, cut to the configured two.
        match next_event(&mut others[2].1).await {
            TopicEvent::Snapshot { members, truncated } => {
                assert_eq!(members.len(), 2);
                assert!(truncated);
            }
            other => panic!("expected a snapshot, got {other:?}"),
        }
        let (_c, bob_room, _server_side, bob_sub) = others.remove(0);
        drop(bob_sub);
        drop(bob_room);
        assert_eq!(
            next_event(&mut ann_room).await,
            TopicEvent::Leave("bob".into())
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_thousand_subscribers_each_receive_every_message_in_order() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut s = setup(SubscribeOptions::default()).await;
        let mut sessions = Vec::new();
        let mut server_sides = Vec::new();
        let mut clients = Vec::new();
        for c in 0..10 {
            let mut client = client(&s.url, &format!("user{c}")).await;
            for _ in 0..100 {
                let (session, server_side, sub) = subscribe(&mut s, &mut client, "fanout").await;
                sessions.push(session);
                server_sides.push((server_side, sub));
            }
            clients.push(client);
        }
        assert_eq!(s.hub.subscriber_count("fanout"), 1000);
        const MESSAGES: u32 = 20;
        for i in 0..MESSAGES {
            assert_eq!(
                s.hub
                    .publish("fanout", Bytes::from(i.to_be_bytes().to_vec()))
                    .queued,
                1000
            );
        }
        let results = Arc::new(tokio::sync::Semaphore::new(0));
        for mut session in sessions {
            let done = results.clone();
            tokio::spawn(async move {
                for i in 0..MESSAGES {
                    assert_eq!(
                        next_message(&mut session).await,
                        Bytes::from(i.to_be_bytes().to_vec())
                    );
                }
                done.add_permits(1);
            });
        }
        let all = results.acquire_many(1000).await.unwrap();
        all.forget();
    })
    .await
    .unwrap();
}

/// Subscribing spawns nothing: a publish hands the message to each subscriber's session
/// directly, so 50 subscribers cost no task each (tokio's own count of live tasks).
#[tokio::test]
async fn subscribers_cost_no_task_and_a_publish_reaches_every_one() {
    tokio::time::timeout(LIMIT, async {
        let mut s = setup(SubscribeOptions::default()).await;
        let mut client = client(&s.url, "ann").await;
        let metrics = tokio::runtime::Handle::current().metrics();
        let (mut first, _server_first, _sub_first) = subscribe(&mut s, &mut client, "fan").await;
        let before = metrics.num_alive_tasks();
        let mut held = Vec::new();
        for _ in 0..49 {
            held.push(subscribe(&mut s, &mut client, "fan").await);
        }
        assert_eq!(metrics.num_alive_tasks(), before, "a task per subscriber");
        assert_eq!(s.hub.subscriber_count("fan"), 50);
        let report = s.hub.publish("fan", Bytes::from_static(b"to all"));
        assert_eq!(report.queued, 50);
        assert_eq!(&next_message(&mut first).await[..], b"to all");
        for (session, _, _) in &mut held {
            assert_eq!(&next_message(session).await[..], b"to all");
        }
    })
    .await
    .expect("within the limit");
}

/// A hub written outside this crate, through the public trait only: it wraps a `LocalHub`
/// for its node's subscribers and records what it would forward to a broker.
mod outside {
    use std::sync::Mutex;

    use bytes::Bytes;
    use mux_tokio::topic::{
        AttachError, Hub, HubError, LocalHub, PublishReport, SubscribeOptions, Subscription,
    };
    use mux_tokio::Session;

    #[derive(Default)]
    pub struct RecordingHub {
        pub local: LocalHub,
        pub forwarded: Mutex<Vec<(String, Bytes)>>,
    }

    impl Hub for RecordingHub {
        async fn publish(&self, topic: &str, message: Bytes) -> Result<PublishReport, HubError> {
            self.forwarded
                .lock()
                .unwrap()
                .push((topic.to_owned(), message.clone()));
            // Stands in for a broker round trip before the local fan-out.
            tokio::task::yield_now().await;
            Ok(self.local.publish(topic, message))
        }

        async fn attach(
            &self,
            session: &Session,
            options: SubscribeOptions,
        ) -> Result<Subscription, AttachError> {
            self.local.attach(session, options)
        }
    }
}

/// Application code written against `impl Hub` works with either hub.
async fn publish_through(hub: &impl mux_tokio::topic::Hub, topic: &str, message: &'static [u8]) {
    hub.publish(topic, Bytes::from_static(message))
        .await
        .expect("publish");
}

#[tokio::test]
async fn a_hub_implemented_outside_the_crate_serves_subscribers() {
    use mux_tokio::topic::Hub as _;
    tokio::time::timeout(LIMIT, async {
        let mut s = setup(SubscribeOptions::default()).await;
        let mut client = client(&s.url, "ann").await;
        let session = client.open("news", Bytes::new()).await.unwrap();
        let (server_side, sub) = s.attached.recv().await.unwrap();
        drop(sub);
        let hub = outside::RecordingHub::default();
        let _sub = hub
            .attach(&server_side, SubscribeOptions::default())
            .await
            .expect("attach through the trait");
        let mut session = session;
        publish_through(&hub, "news", b"through the trait").await;
        assert_eq!(&next_message(&mut session).await[..], b"through the trait");
        assert_eq!(hub.forwarded.lock().unwrap().len(), 1);
        publish_through(&s.hub, "news", b"not attached there").await;
        assert_eq!(hub.local.subscriber_count("news"), 1);
    })
    .await
    .expect("within the limit");
}
