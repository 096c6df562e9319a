//! The in-process hub: topics in a map, subscribers with bounded queues and a forwarding
//! task each.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use mux_proto::CloseCode;
use tokio::sync::Notify;

use super::envelope;
use super::{AttachError, Hub, PublishReport, SlowConsumerPolicy, SubscribeOptions, TopicOptions};
use crate::session::{Session, SessionSender};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Messages a forwarding task takes from its queue at once.
const BATCH: usize = 32;

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Bytes>,
    /// Messages dropped since the subscriber was last told.
    dropped: u64,
    /// The queue overflowed under the close policy.
    overflowed: bool,
    /// The subscription ended.
    closed: bool,
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    member: String,
    policy: SlowConsumerPolicy,
    capacity: usize,
    queue: Mutex<Queue>,
    wake: Notify,
}

enum Offer {
    Queued,
    Dropped,
    Closed,
    Gone,
}

impl Subscriber {
    fn offer(&self, message: Bytes) -> Offer {
        let mut q = lock(&self.queue);
        if q.closed || q.overflowed {
            return Offer::Gone;
        }
        let outcome = if q.items.len() < self.capacity {
            q.items.push_back(message);
            Offer::Queued
        } else {
            match self.policy {
                SlowConsumerPolicy::DropOldest => {
                    q.items.pop_front();
                    q.dropped = q.dropped.saturating_add(1);
                    q.items.push_back(message);
                    Offer::Dropped
                }
                SlowConsumerPolicy::Close => {
                    q.overflowed = true;
                    q.items.clear();
                    Offer::Closed
                }
            }
        };
        drop(q);
        self.wake.notify_one();
        outcome
    }

    fn close(&self) {
        lock(&self.queue).closed = true;
        self.wake.notify_one();
    }
}

#[derive(Debug)]
struct Topic {
    options: TopicOptions,
    subscribers: RwLock<Vec<Arc<Subscriber>>>,
    /// Sessions per member id, for presence (bounded by the subscriber count).
    members: Mutex<HashMap<String, usize>>,
}

impl Topic {
    fn publish_raw(&self, message: &Bytes, except: Option<u64>) -> PublishReport {
        let mut report = PublishReport::default();
        let subscribers = self
            .subscribers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for sub in subscribers.iter().filter(|s| Some(s.id) != except) {
            match sub.offer(message.clone()) {
                Offer::Queued => report.queued = report.queued.saturating_add(1),
                Offer::Dropped => {
                    report.queued = report.queued.saturating_add(1);
                    report.dropped = report.dropped.saturating_add(1);
                }
                Offer::Closed => report.closed = report.closed.saturating_add(1),
                Offer::Gone => {}
            }
        }
        report
    }
}

#[derive(Debug, Default)]
struct Inner {
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    options: Mutex<HashMap<String, TopicOptions>>,
    next_id: AtomicU64,
}

/// The in-process [`Hub`]. Cheap to clone; all clones share the topics.
#[derive(Debug, Clone, Default)]
pub struct LocalHub {
    inner: Arc<Inner>,
}

impl LocalHub {
    /// An empty hub.
    pub fn new() -> Self {
        LocalHub::default()
    }

    /// Sets a topic's options (presence) before anyone subscribes to it.
    pub fn configure_topic(&self, topic: &str, options: TopicOptions) {
        lock(&self.inner.options).insert(topic.to_owned(), options);
    }

    /// Subscribers of `topic` now.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        lock(&self.inner.topics).get(topic).map_or(0, |t| {
            t.subscribers
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .len()
        })
    }

    /// Topics with at least one subscriber (empty topics are removed).
    pub fn topic_count(&self) -> usize {
        lock(&self.inner.topics).len()
    }

    /// The topic `name`, created if missing, with the map's guard handed back.
    fn topic_in<'a>(
        &self,
        mut topics: std::sync::MutexGuard<'a, HashMap<String, Arc<Topic>>>,
        name: &str,
    ) -> (
        std::sync::MutexGuard<'a, HashMap<String, Arc<Topic>>>,
        Arc<Topic>,
    ) {
        let topic = topics
            .entry(name.to_owned())
            .or_insert_with(|| {
                let options = lock(&self.inner.options)
                    .get(name)
                    .copied()
                    .unwrap_or_default();
                Arc::new(Topic {
                    options,
                    subscribers: RwLock::new(Vec::new()),
                    members: Mutex::new(HashMap::new()),
                })
            })
            .clone();
        (topics, topic)
    }

    fn detach(&self, name: &str, topic: &Arc<Topic>, sub: &Arc<Subscriber>) {
        sub.close();
        let mut removed = false;
        {
            let mut subs = topic
                .subscribers
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(pos) = subs.iter().position(|s| s.id == sub.id) {
                subs.swap_remove(pos);
                removed = true;
            }
        }
        if removed && topic.options.presence {
            let left = {
                let mut members = lock(&topic.members);
                match members.get_mut(&sub.member) {
                    Some(n) if *n > 1 => {
                        *n = n.saturating_sub(1);
                        false
                    }
                    _ => {
                        members.remove(&sub.member);
                        true
                    }
                }
            };
            if left {
                topic.publish_raw(&envelope::leave(&sub.member), None);
            }
        }
        // Forget the topic once empty, so topics do not accumulate.
        let mut topics = lock(&self.inner.topics);
        let empty = topic
            .subscribers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty();
        if empty && topics.get(name).is_some_and(|t| Arc::ptr_eq(t, topic)) {
            topics.remove(name);
        }
    }
}

impl Hub for LocalHub {
    fn publish(&self, topic: &str, message: Bytes) -> PublishReport {
        let Some(topic) = lock(&self.inner.topics).get(topic).cloned() else {
            return PublishReport::default();
        };
        // Encoded once; every subscriber's queue holds the same bytes.
        topic.publish_raw(&envelope::message(&message), None)
    }

    fn attach(
        &self,
        session: &Session,
        options: SubscribeOptions,
    ) -> Result<Subscription, AttachError> {
        if !session.may_send() {
            return Err(AttachError::NotPermitted);
        }
        if session.close_reason().is_some() {
            return Err(AttachError::Closed);
        }
        let name = session.kind().to_owned();
        let member = session.principal().map_or_else(
            || format!("session-{}", session.id().get()),
            |p| p.id.clone(),
        );
        // The topics map stays locked until the subscriber is on the topic: a detach of the
        // last subscriber removes the topic under this lock once it is empty, so an attach
        // in between must not add itself to a topic no longer in the map. (Lock order:
        // topics map, then the topic's members and subscribers, as in `detach`.)
        let topics = lock(&self.inner.topics);
        let (topics, topic) = self.topic_in(topics, &name);
        let sub = Arc::new(Subscriber {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            member: member.clone(),
            policy: options.policy,
            capacity: options.queue_capacity.max(1),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
        });
        if topic.options.presence {
            let (snapshot, joined) = {
                let mut members = lock(&topic.members);
                let total = members.len();
                let max = if topic.options.max_snapshot == 0 {
                    256
                } else {
                    topic.options.max_snapshot
                };
                let snapshot = envelope::snapshot(members.keys().map(String::as_str), max, total);
                let n = members.entry(member.clone()).or_insert(0);
                *n = n.saturating_add(1);
                (snapshot, *n == 1)
            };
            // The snapshot is the new subscriber's first event; then the others hear the join.
            lock(&sub.queue).items.push_back(snapshot);
            if joined {
                topic.publish_raw(&envelope::join(&member), None);
            }
        }
        topic
            .subscribers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(sub.clone());
        drop(topics);
        let forwarder = tokio::spawn(forward(
            session.sender(),
            sub.clone(),
            self.clone(),
            name.clone(),
            topic.clone(),
        ));
        Ok(Subscription {
            hub: self.clone(),
            topic_name: name,
            topic,
            sub,
            forwarder,
            sender: session.sender(),
        })
    }
}

/// Moves a subscriber's queue into its session under credit; ends with the session.
async fn forward(
    sender: SessionSender,
    sub: Arc<Subscriber>,
    hub: LocalHub,
    name: String,
    topic: Arc<Topic>,
) {
    let mut batch: Vec<Bytes> = Vec::with_capacity(BATCH);
    loop {
        let (gap, overflowed, closed) = {
            let mut q = lock(&sub.queue);
            let take = q.items.len().min(BATCH);
            batch.extend(q.items.drain(..take));
            (std::mem::take(&mut q.dropped), q.overflowed, q.closed)
        };
        if overflowed {
            sender
                .reset(CloseCode::SLOW_CONSUMER, "subscriber too slow")
                .await;
            break;
        }
        if closed {
            break;
        }
        if batch.is_empty() && gap == 0 {
            // Wait for a publish, or for the session to end: a subscriber whose session
            // ended must leave the topic now, not at the next publish (which may never come).
            tokio::select! {
                () = sub.wake.notified() => continue,
                () = sender.closed() => break,
            }
        }
        if gap > 0 && sender.send(envelope::gap(gap)).await.is_err() {
            break;
        }
        let mut failed = false;
        for message in batch.drain(..) {
            if sender.send(message).await.is_err() {
                failed = true;
                break;
            }
        }
        if failed {
            break;
        }
    }
    hub.detach(&name, &topic, &sub);
}

/// A live subscription. Dropping it unsubscribes; [`Subscription::revoke`] also closes the
/// session with 4007 REVOKED.
#[derive(Debug)]
pub struct Subscription {
    hub: LocalHub,
    topic_name: String,
    topic: Arc<Topic>,
    sub: Arc<Subscriber>,
    forwarder: tokio::task::JoinHandle<()>,
    sender: SessionSender,
}

impl Subscription {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic_name
    }

    /// Messages waiting in this subscriber's queue.
    pub fn queued(&self) -> usize {
        lock(&self.sub.queue).items.len()
    }

    /// Revokes the subscriber's authorization: it stops receiving at once and its session is
    /// closed with 4007 REVOKED.
    pub async fn revoke(self, reason: &str) {
        self.hub.detach(&self.topic_name, &self.topic, &self.sub);
        self.sender.reset(CloseCode::REVOKED, reason).await;
    }

    /// Waits until the forwarding task has ended (the session ended or was detached).
    pub async fn finished(&mut self) {
        let _ = (&mut self.forwarder).await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.detach(&self.topic_name, &self.topic, &self.sub);
    }
}
