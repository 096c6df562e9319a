#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Resuming topic subscriptions over real loopback sockets (spec/topics.md#resuming): a
//! client whose connection the server kicks, or whose TCP connection drops, comes back with
//! its position and receives exactly what was published meanwhile, or one gap for what the
//! history no longer holds, or a gap of unknown count when the hub's stream is a new one.
//!
//! No test waits on time: the server-side subscription's end is awaited before publishing,
//! and a `TopicStream` re-subscribes only when read, so what is published while it is away
//! can only reach it through the history.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::loopback;
use mux_proto::{CloseCode, Grant};
use mux_tokio::topic::{
    LocalHub, SlowConsumerPolicy, StreamPosition, SubscribeOptions, Subscription, TopicEvent,
    TopicKind, TopicOptions, TopicStream,
};
use mux_tokio::{
    AuthError, Backoff, Client, ClientConfig, HandshakeRequest, OpenInfo, Principal, Rejection,
    Server, ServerHandle, Session,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

fn authenticate(request: &HandshakeRequest) -> Result<Principal, AuthError> {
    match request.token.as_ref().map(|t| t.expose()) {
        Some(t) => Ok(Principal::new(t)),
        None => Err(AuthError::Missing),
    }
}

/// Decides on the topic, not on the whole kind (which carries a resume position).
async fn authorize(_: Principal, open: OpenInfo) -> Result<Grant, Rejection> {
    match TopicKind::parse(&open.kind) {
        Ok(kind) if !kind.topic.starts_with("secret") => Ok(Grant::receive_only()),
        Ok(_) => Err(Rejection::forbidden("not your topic")),
        Err(_) => Err(Rejection::forbidden("malformed topic kind")),
    }
}

/// A server whose every session is attached to the hub of the moment (a test can swap it
/// for a new one: a restarted hub), and handed to the test with its subscription.
struct Node {
    addr: SocketAddr,
    handle: ServerHandle,
    hub: Arc<Mutex<LocalHub>>,
    attached: mpsc::Receiver<(Session, Subscription)>,
}

async fn node(
    topic: TopicOptions,
    subscribe: SubscribeOptions,
    protocol: mux_proto::Config,
) -> Node {
    let config = common::open_config().protocol(protocol);
    let mut server = Server::bind(loopback(), config, authenticate, authorize)
        .await
        .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let hub = Arc::new(Mutex::new(hub_with(topic)));
    let (tx, attached) = mpsc::channel(64);
    let current = hub.clone();
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            let hub = current.lock().unwrap().clone();
            let sub = hub.attach(&session, subscribe).expect("attach");
            if tx.send((session, sub)).await.is_err() {
                break;
            }
        }
    });
    Node {
        addr,
        handle,
        hub,
        attached,
    }
}

fn hub_with(topic: TopicOptions) -> LocalHub {
    let hub = LocalHub::new();
    hub.configure_topic("news", topic);
    hub
}

impl Node {
    fn hub(&self) -> LocalHub {
        self.hub.lock().unwrap().clone()
    }

    fn publish(&self, n: u64) {
        for _ in 0..n {
            let hub = self.hub();
            let offset = hub.position("news").unwrap().offset + 1;
            let report = hub.publish("news", Bytes::from(offset.to_be_bytes().to_vec()));
            assert_eq!(report.position.unwrap().offset, offset);
        }
    }

    /// Kicks every connection and waits until the server-side subscription `sub` ended.
    async fn kick(&self, mut sub: Subscription) {
        for c in self.handle.connections() {
            c.close(CloseCode::TRY_AGAIN_LATER, "kicked").await;
        }
        sub.finished().await;
    }
}

fn history(len: usize) -> TopicOptions {
    TopicOptions::default().history(len, Duration::from_secs(300))
}

async fn client(addr: SocketAddr) -> Client {
    let config = ClientConfig::default().token("ann").backoff(Backoff::new(
        Duration::from_millis(1),
        Duration::from_millis(20),
        None,
    ));
    Client::connect(&format!("ws://{addr}/"), config)
        .await
        .unwrap()
}

/// Reads events until `n` messages came; returns every event read.
async fn read_messages(stream: &mut TopicStream, n: usize) -> Vec<TopicEvent> {
    let mut events = Vec::new();
    let mut messages = 0;
    while messages < n {
        let event = stream.next().await.expect("an event");
        messages += usize::from(matches!(event, TopicEvent::Message { .. }));
        events.push(event);
    }
    events
}

/// The offsets of the messages among `events`, checking that each payload is its offset.
fn offsets(events: &[TopicEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            TopicEvent::Message { offset, payload } => {
                assert_eq!(payload[..], offset.to_be_bytes(), "payload of {offset}");
                Some(*offset)
            }
            _ => None,
        })
        .collect()
}

fn position_of(event: &TopicEvent) -> StreamPosition {
    match event {
        TopicEvent::Position(p) => *p,
        other => panic!("expected a position, got {other:?}"),
    }
}

/// Subscribes to "news" and reads its first event: the position it starts at.
async fn subscribe(
    node: &mut Node,
    client: &Client,
) -> (TopicStream, Subscription, Session, StreamPosition) {
    let mut stream = client.subscribe("news", Bytes::new()).await.unwrap();
    let (session, sub) = node.attached.recv().await.unwrap();
    let start = position_of(&stream.next().await.unwrap());
    (stream, sub, session, start)
}

#[tokio::test]
async fn a_client_the_server_kicks_resumes_with_exactly_the_100_it_missed() {
    let mut n = node(
        history(200),
        SubscribeOptions::default(),
        Default::default(),
    )
    .await;
    let client = client(n.addr).await;
    let (mut news, sub, _session, start) = subscribe(&mut n, &client).await;
    assert_eq!(start.offset, 0, "a fresh stream starts at 0");
    n.publish(10);
    assert_eq!(
        offsets(&read_messages(&mut news, 10).await),
        (1..=10).collect::<Vec<_>>()
    );
    n.kick(sub).await;
    n.publish(100);
    // Reading again re-subscribes on the new connection from (epoch, 10).
    let events = read_messages(&mut news, 100).await;
    assert_eq!(
        position_of(&events[0]),
        StreamPosition::new(start.epoch, 10)
    );
    assert_eq!(
        offsets(&events),
        (11..=110).collect::<Vec<_>>(),
        "exactly the 100, in order"
    );
    assert!(
        !events.iter().any(|e| matches!(e, TopicEvent::Gap(_))),
        "no gap: {events:?}"
    );
    assert_eq!(events.len(), 101, "the position, then the 100 messages");
    // Live again after the replay: the next publish arrives once.
    let (_session, _sub) = n.attached.recv().await.unwrap();
    n.publish(1);
    assert_eq!(offsets(&read_messages(&mut news, 1).await), vec![111]);
    assert_eq!(news.position(), Some(StreamPosition::new(start.epoch, 111)));
}

/// Forwards TCP connections to `target` until `cut` changes: then every connection made
/// before drops at once, as a network failure would (no close frame on either side).
async fn proxy(target: SocketAddr) -> (SocketAddr, watch::Sender<u64>) {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, cuts) = watch::channel(0u64);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut cuts = cuts.clone();
            let generation = *cuts.borrow_and_update();
            tokio::spawn(async move {
                let mut outbound = TcpStream::connect(target).await.unwrap();
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cuts.wait_for(|g| *g != generation) => {}
                }
                let _ = inbound.shutdown().await;
                let _ = outbound.shutdown().await;
            });
        }
    });
    (addr, cut)
}

#[tokio::test]
async fn a_client_whose_connection_drops_resumes_with_exactly_the_100_it_missed() {
    let mut n = node(
        history(200),
        SubscribeOptions::default(),
        Default::default(),
    )
    .await;
    let (through, cut) = proxy(n.addr).await;
    let client = client(through).await;
    let (mut news, sub, _session, start) = subscribe(&mut n, &client).await;
    n.publish(5);
    assert_eq!(
        offsets(&read_messages(&mut news, 5).await),
        (1..=5).collect::<Vec<_>>()
    );
    cut.send_modify(|g| *g += 1);
    let mut sub = sub;
    sub.finished().await;
    n.publish(100);
    let events = read_messages(&mut news, 100).await;
    assert_eq!(position_of(&events[0]), StreamPosition::new(start.epoch, 5));
    assert_eq!(offsets(&events), (6..=105).collect::<Vec<_>>());
    assert_eq!(events.len(), 101, "no gap, no duplicate: {events:?}");
}

#[tokio::test]
async fn with_a_history_of_50_a_resumer_gets_one_gap_of_50_then_the_last_50() {
    let mut n = node(history(50), SubscribeOptions::default(), Default::default()).await;
    let client = client(n.addr).await;
    let (mut news, sub, _session, start) = subscribe(&mut n, &client).await;
    n.kick(sub).await;
    n.publish(100);
    let events = read_messages(&mut news, 50).await;
    assert_eq!(position_of(&events[0]), StreamPosition::new(start.epoch, 0));
    assert_eq!(
        events[1],
        TopicEvent::Gap(Some(50)),
        "one gap for the 50 evicted"
    );
    assert_eq!(offsets(&events), (51..=100).collect::<Vec<_>>());
    assert_eq!(events.len(), 52);
    assert_eq!(
        n.hub().history_len("news"),
        50,
        "the history stays at its bound"
    );
}

#[tokio::test]
async fn without_history_a_resumer_learns_exactly_how_many_it_missed() {
    let mut n = node(
        TopicOptions::default(),
        SubscribeOptions::default(),
        Default::default(),
    )
    .await;
    let client = client(n.addr).await;
    let (mut news, sub, _session, start) = subscribe(&mut n, &client).await;
    n.publish(2);
    read_messages(&mut news, 2).await;
    n.kick(sub).await;
    // The topic has no subscriber now, and is kept (idle) with its offsets.
    assert_eq!((n.hub().topic_count(), n.hub().idle_topic_count()), (0, 1));
    n.publish(7);
    let first = news.next().await.unwrap();
    assert_eq!(position_of(&first), StreamPosition::new(start.epoch, 2));
    assert_eq!(news.next().await.unwrap(), TopicEvent::Gap(Some(7)));
    let (_session, _sub) = n.attached.recv().await.unwrap();
    n.publish(1);
    assert_eq!(offsets(&read_messages(&mut news, 1).await), vec![10]);
}

#[tokio::test]
async fn a_restarted_hub_is_a_new_epoch_one_gap_of_unknown_count_then_what_it_holds() {
    let mut n = node(
        history(200),
        SubscribeOptions::default(),
        Default::default(),
    )
    .await;
    let client = client(n.addr).await;
    let (mut news, sub, _session, old) = subscribe(&mut n, &client).await;
    n.publish(3);
    read_messages(&mut news, 3).await;
    n.kick(sub).await;
    // The hub restarts: its streams are new. Someone subscribes there first, then 5 are
    // published on the new stream.
    *n.hub.lock().unwrap() = hub_with(history(200));
    let other = client_on(&n).await;
    let (_other_stream, _other_sub, _other_session, fresh) = subscribe(&mut n, &other).await;
    assert_ne!(fresh.epoch, old.epoch, "a new epoch");
    n.publish(5);
    let events = read_messages(&mut news, 5).await;
    assert_eq!(position_of(&events[0]), StreamPosition::new(fresh.epoch, 0));
    assert_eq!(
        events[1],
        TopicEvent::Gap(None),
        "what was missed cannot be counted"
    );
    assert_eq!(
        offsets(&events),
        (1..=5).collect::<Vec<_>>(),
        "then all the new stream holds"
    );
    assert_eq!(events.len(), 7);
    assert_eq!(news.position(), Some(StreamPosition::new(fresh.epoch, 5)));
}

async fn client_on(n: &Node) -> Client {
    client(n.addr).await
}

#[tokio::test]
async fn a_slow_consumer_closed_with_4008_resumes_from_the_history_without_loss() {
    let mut protocol = mux_proto::Config::default();
    protocol.limits.initial_credit_messages = 2;
    let options = SubscribeOptions::default()
        .queue_capacity(4)
        .policy(SlowConsumerPolicy::Close);
    let mut n = node(history(500), options, protocol).await;
    let client = client(n.addr).await;
    let (mut news, mut sub, _session, start) = subscribe(&mut n, &client).await;
    // Not reading: the window and the queue overflow, and the server resets with 4008.
    n.publish(200);
    sub.finished().await;
    // The stream re-subscribes by itself from where it stood and replays from the history.
    let events = read_messages(&mut news, 200).await;
    assert_eq!(
        offsets(&events),
        (1..=200).collect::<Vec<_>>(),
        "every message once"
    );
    assert!(
        !events.iter().any(|e| matches!(e, TopicEvent::Gap(_))),
        "no gap"
    );
    let positions: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            TopicEvent::Position(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert!(!positions.is_empty(), "it re-subscribed");
    assert!(positions.iter().all(|p| p.epoch == start.epoch));
}

#[tokio::test]
async fn a_saved_position_resumes_in_a_new_client() {
    let mut n = node(
        history(100),
        SubscribeOptions::default(),
        Default::default(),
    )
    .await;
    let first = client(n.addr).await;
    let (mut news, sub, _session, _) = subscribe(&mut n, &first).await;
    n.publish(4);
    read_messages(&mut news, 4).await;
    let saved = news.position().unwrap();
    drop(news);
    first.close().await;
    let mut sub = sub;
    sub.finished().await;
    n.publish(3);
    let second = client(n.addr).await;
    let mut news = second
        .subscribe_from("news", Bytes::new(), saved)
        .await
        .unwrap();
    let events = read_messages(&mut news, 3).await;
    assert_eq!(position_of(&events[0]), saved);
    assert_eq!(offsets(&events), vec![5, 6, 7]);
}

#[tokio::test]
async fn a_malformed_resume_kind_is_refused_and_subscribes_nothing() {
    let n = node(history(10), SubscribeOptions::default(), Default::default()).await;
    let mut client = client(n.addr).await;
    match client.open("news\u{0}nonsense", Bytes::new()).await {
        Err(mux_tokio::OpenError::Refused { code, .. }) => assert_eq!(code, CloseCode::FORBIDDEN),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(n.hub().subscriber_count("news"), 0);
    assert!(matches!(
        client.subscribe("bad\u{0}topic", Bytes::new()).await,
        Err(mux_tokio::topic::TopicStreamError::InvalidTopic(_))
    ));
}

/// The hand-over from the history to live messages, and an attach, under publishes from
/// another thread: a subscriber kicked mid-stream, while the second half is published,
/// still reads every offset exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_racing_concurrent_publishes_delivers_every_message_once() {
    const TOTAL: u64 = 3000;
    let mut n = node(
        history(5000),
        SubscribeOptions::default(),
        Default::default(),
    )
    .await;
    let client = client(n.addr).await;
    let (mut news, _sub, _session, start) = subscribe(&mut n, &client).await;
    assert_eq!(start.offset, 0);
    let hub = n.hub();
    // Half before the kick; the other half once it happened, racing the re-subscription.
    let (kick_done, wait_kick) = std::sync::mpsc::channel::<()>();
    let publisher = std::thread::spawn(move || {
        for i in 1..=TOTAL {
            if i == TOTAL / 2 + 1 {
                wait_kick.recv().unwrap();
            }
            hub.publish("news", Bytes::from(i.to_be_bytes().to_vec()));
        }
    });
    let mut got = Vec::new();
    let mut kicked = false;
    while got.last() != Some(&TOTAL) {
        match news.next().await.unwrap() {
            event @ TopicEvent::Message { .. } => got.extend(offsets(&[event])),
            TopicEvent::Position(p) => assert_eq!(p.epoch, start.epoch),
            other => panic!("unexpected {other:?} after {:?}", got.last()),
        }
        if !kicked && got.len() == 500 {
            // Publishing goes on meanwhile.
            for c in n.handle.connections() {
                c.close(CloseCode::TRY_AGAIN_LATER, "kicked").await;
            }
            kick_done.send(()).unwrap();
            kicked = true;
        }
    }
    publisher.join().unwrap();
    assert!(kicked);
    assert_eq!(
        got,
        (1..=TOTAL).collect::<Vec<_>>(),
        "every offset once, in order"
    );
}
