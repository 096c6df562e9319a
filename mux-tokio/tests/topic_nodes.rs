#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! A multi-node hub written outside the crate through the public API, as a networked hub
//! (Redis, for example) would be: a broker owns each topic's stream (its epoch and offsets,
//! and the history), every node fans out what the broker placed with `LocalHub::publish_at`,
//! and a node brings its local stream to the broker's with `LocalHub::sync` before attaching.
//! A subscriber that moves to another node resumes there with no loss and no duplicate; a
//! broker that lost its stream is a new epoch for the subscribers still attached.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::loopback;
use mux_proto::Grant;
use mux_tokio::topic::{
    AttachError, Epoch, Hub, HubError, LocalHub, PublishReport, StreamPosition, SubscribeOptions,
    Subscription, TopicEvent, TopicKind, TopicOptions, TopicStream,
};
use mux_tokio::{
    AuthError, Client, ClientConfig, HandshakeRequest, OpenInfo, Principal, Rejection, Server,
    Session,
};
use tokio::sync::mpsc;

/// The broker: one stream per topic (here one topic), with its whole log as history.
struct Broker {
    stream: Mutex<(Epoch, Vec<Bytes>)>,
    nodes: Mutex<Vec<LocalHub>>,
}

impl Broker {
    fn new(epoch: u64) -> Arc<Self> {
        Arc::new(Broker {
            stream: Mutex::new((Epoch::new(epoch), Vec::new())),
            nodes: Mutex::new(Vec::new()),
        })
    }

    /// Places `message` at the stream's next offset and delivers it to every node.
    fn publish(&self, topic: &str, message: Bytes) -> PublishReport {
        let position = {
            let mut stream = self.stream.lock().unwrap();
            stream.1.push(message.clone());
            StreamPosition::new(stream.0, stream.1.len() as u64)
        };
        let mut report = PublishReport::default();
        for node in self.nodes.lock().unwrap().iter() {
            report.queued += node.publish_at(topic, position, message.clone()).queued;
        }
        report.position = Some(position);
        report
    }

    /// The stream's position and what it holds after `from` (everything for another epoch).
    fn read(&self, from: Option<StreamPosition>) -> (StreamPosition, Vec<(u64, Bytes)>) {
        let stream = self.stream.lock().unwrap();
        let skip = match from {
            Some(p) if p.epoch == stream.0 => p.offset as usize,
            _ => 0,
        };
        let backlog = stream.1.iter().enumerate().skip(skip);
        let backlog = backlog.map(|(i, m)| (i as u64 + 1, m.clone())).collect();
        (
            StreamPosition::new(stream.0, stream.1.len() as u64),
            backlog,
        )
    }

    /// The broker lost its stream: a new epoch starts at offset 0.
    fn lose_everything(&self, epoch: u64) {
        *self.stream.lock().unwrap() = (Epoch::new(epoch), Vec::new());
    }
}

/// One node's hub: its own `LocalHub` for its subscribers, the shared broker for streams.
struct NodeHub {
    local: LocalHub,
    broker: Arc<Broker>,
}

impl Hub for NodeHub {
    async fn publish(&self, topic: &str, message: Bytes) -> Result<PublishReport, HubError> {
        tokio::task::yield_now().await;
        Ok(self.broker.publish(topic, message))
    }

    async fn attach(
        &self,
        session: &Session,
        options: SubscribeOptions,
    ) -> Result<Subscription, AttachError> {
        let kind = TopicKind::parse(session.kind())?;
        // Stands in for the broker round trip that reads the history after the position.
        tokio::task::yield_now().await;
        let (position, backlog) = self.broker.read(kind.resume);
        self.local.sync(kind.topic, position, backlog);
        self.local.attach(session, options)
    }
}

fn authenticate(_: &HandshakeRequest) -> Result<Principal, AuthError> {
    Ok(Principal::new("ann"))
}

async fn authorize(_: Principal, open: OpenInfo) -> Result<Grant, Rejection> {
    TopicKind::parse(&open.kind)
        .map(|_| Grant::receive_only())
        .map_err(|_| Rejection::forbidden("malformed topic kind"))
}

/// A server on loopback attaching every session through `hub`; the test holds each
/// attached session and subscription.
async fn serve(hub: Arc<NodeHub>) -> (String, mpsc::Receiver<(Session, Subscription)>) {
    let mut server = Server::bind(loopback(), common::open_config(), authenticate, authorize)
        .await
        .unwrap();
    let url = format!("ws://{}/", server.local_addr());
    let (tx, attached) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            let sub = hub
                .attach(&session, SubscribeOptions::default())
                .await
                .unwrap();
            if tx.send((session, sub)).await.is_err() {
                break;
            }
        }
    });
    (url, attached)
}

async fn node(
    broker: &Arc<Broker>,
) -> (
    Arc<NodeHub>,
    String,
    mpsc::Receiver<(Session, Subscription)>,
) {
    let local = LocalHub::new();
    // The node keeps as much as it may have to replay from a sync.
    local.configure_topic(
        "news",
        TopicOptions::default().history(1000, Duration::from_secs(300)),
    );
    broker.nodes.lock().unwrap().push(local.clone());
    let hub = Arc::new(NodeHub {
        local,
        broker: broker.clone(),
    });
    let (url, attached) = serve(hub.clone()).await;
    (hub, url, attached)
}

async fn client(url: &str) -> Client {
    Client::connect(url, ClientConfig::default().reconnect(false))
        .await
        .unwrap()
}

/// The next `n` events.
async fn events(stream: &mut TopicStream, n: usize) -> Vec<TopicEvent> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(stream.next().await.unwrap());
    }
    out
}

fn message(offset: u64) -> TopicEvent {
    TopicEvent::Message {
        offset,
        payload: Bytes::from(offset.to_be_bytes().to_vec()),
    }
}

fn publish(broker: &Broker, from: u64, to: u64) {
    for offset in from..=to {
        let report = broker.publish("news", Bytes::from(offset.to_be_bytes().to_vec()));
        assert_eq!(report.position.unwrap().offset, offset);
    }
}

#[tokio::test]
async fn a_subscriber_that_moves_to_another_node_resumes_there_without_loss_or_duplicate() {
    let broker = Broker::new(0xb0b);
    let (_a, url_a, mut attached_a) = node(&broker).await;
    let (b, url_b, mut attached_b) = node(&broker).await;
    let first = client(&url_a).await;
    let mut news = first.subscribe("news", Bytes::new()).await.unwrap();
    let (_session, mut sub_a) = attached_a.recv().await.unwrap();
    let epoch = Epoch::new(0xb0b);
    assert_eq!(
        news.next().await.unwrap(),
        TopicEvent::Position(StreamPosition::new(epoch, 0)),
        "a node's stream is the broker's"
    );
    publish(&broker, 1, 10);
    assert_eq!(
        events(&mut news, 10).await,
        (1..=10).map(message).collect::<Vec<_>>()
    );
    let saved = news.position().unwrap();
    drop(news);
    first.close().await;
    sub_a.finished().await;
    // Published while the subscriber is on no node.
    publish(&broker, 11, 30);
    let second = client(&url_b).await;
    let mut news = second
        .subscribe_from("news", Bytes::new(), saved)
        .await
        .unwrap();
    let (_session_b, _sub_b) = attached_b.recv().await.unwrap();
    let mut expected = vec![TopicEvent::Position(saved)];
    expected.extend((11..=30).map(message));
    assert_eq!(
        events(&mut news, 21).await,
        expected,
        "replayed from the broker's history"
    );
    publish(&broker, 31, 31);
    assert_eq!(news.next().await.unwrap(), message(31), "then live, once");
    assert_eq!(
        b.local.position("news"),
        Some(StreamPosition::new(epoch, 31))
    );
}

#[tokio::test]
async fn a_broker_that_lost_its_stream_is_a_new_epoch_for_attached_subscribers() {
    let broker = Broker::new(1);
    let (_a, url_a, mut attached_a) = node(&broker).await;
    let c = client(&url_a).await;
    let mut news = c.subscribe("news", Bytes::new()).await.unwrap();
    let (_session, _sub) = attached_a.recv().await.unwrap();
    news.next().await.unwrap();
    publish(&broker, 1, 2);
    events(&mut news, 2).await;
    broker.lose_everything(2);
    publish(&broker, 1, 1);
    assert_eq!(
        events(&mut news, 3).await,
        vec![
            TopicEvent::Position(StreamPosition::new(Epoch::new(2), 0)),
            TopicEvent::Gap(None),
            message(1),
        ]
    );
    assert_eq!(news.position(), Some(StreamPosition::new(Epoch::new(2), 1)));
}
