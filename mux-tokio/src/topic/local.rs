//! The in-process hub: topics in a map, subscribers with bounded queues, and no task per
//! subscriber. A publish queues the shared bytes straight into each subscriber's session
//! while it has room; a subscriber whose session is out of credit keeps the rest in its own
//! bounded queue and is pumped again by its session's waker when credit returns.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use mux_proto::CloseCode;
use tokio::sync::Notify;

use super::envelope;
use super::{AttachError, PublishReport, SlowConsumerPolicy, SubscribeOptions, TopicOptions};
use crate::session::{Session, SessionSender};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a subscriber holds that its session had no room for yet.
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Bytes>,
    /// Messages dropped since the subscriber was last told (a gap event is owed).
    dropped: u64,
    /// The queue overflowed under the close policy.
    overflowed: bool,
    /// The subscription ended.
    closed: bool,
    /// Attached with [`LocalHub::attach_held`]: nothing is sent before
    /// [`Subscription::release`].
    held: bool,
}

/// The outcome of offering one message to one subscriber.
enum Offer {
    Queued,
    Dropped,
    Closed,
    Gone,
}

/// One session subscribed to one topic.
///
/// Lock order: a subscriber's `queue`, then its connection's state. The connection wakes
/// this subscriber's wakers only after releasing its lock, only one pump runs at a time
/// (`pumping`), and a publish walks a snapshot of the subscribers with no lock held, so a
/// pump that ends its subscription can leave the topic from anywhere.
struct Subscriber {
    id: u64,
    member: String,
    policy: SlowConsumerPolicy,
    capacity: usize,
    queue: Mutex<Queue>,
    sender: SessionSender,
    /// Woken when the session may have room again: pumps.
    writable: Waker,
    /// Woken once when the session ends: notes it, then pumps.
    end: Waker,
    session_ended: AtomicBool,
    /// A pump is running; another caller only sets `again` and leaves it the work.
    pumping: AtomicBool,
    again: AtomicBool,
    /// `Subscription::finished` waits here.
    ended: Notify,
    hub: Weak<Inner>,
    topic: Weak<Topic>,
    topic_name: String,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("id", &self.id)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

/// The wakers a subscriber hands its session; weak, so a session never keeps an ended
/// subscription alive.
struct SubscriberWaker {
    sub: Weak<Subscriber>,
    end: bool,
}

impl Wake for SubscriberWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(sub) = self.sub.upgrade() {
            if self.end {
                sub.session_ended.store(true, Ordering::Release);
            }
            sub.pump();
        }
    }
}

impl Subscriber {
    /// Adds `message` to the queue under the slow-consumer policy. The caller pumps.
    fn offer(&self, message: Bytes) -> Offer {
        let mut q = lock(&self.queue);
        if q.closed || q.overflowed {
            return Offer::Gone;
        }
        if q.items.len() < self.capacity {
            q.items.push_back(message);
            return Offer::Queued;
        }
        match self.policy {
            SlowConsumerPolicy::DropOldest => {
                // A queued gap (messages a broker lost, see `LocalHub::deliver`) stands for
                // its count, so dropping it keeps `received + Σ gaps = published`.
                let oldest = q.items.pop_front();
                let missed = oldest.as_ref().and_then(envelope::gap_count).unwrap_or(1);
                q.dropped = q.dropped.saturating_add(missed);
                q.items.push_back(message);
                Offer::Dropped
            }
            SlowConsumerPolicy::Close => {
                q.overflowed = true;
                q.items.clear();
                Offer::Closed
            }
        }
    }

    /// Moves what the session has room for out of the queue. Whoever finds a pump running
    /// leaves the work to it: that pump looks at the queue once more before it stops.
    fn pump(self: &Arc<Self>) {
        self.again.store(true, Ordering::Release);
        while self.again.load(Ordering::Acquire) {
            if self.pumping.swap(true, Ordering::AcqRel) {
                return;
            }
            self.again.store(false, Ordering::Release);
            let ended = self.move_queued();
            self.pumping.store(false, Ordering::Release);
            if ended {
                self.leave();
                return;
            }
        }
    }

    /// One pass of `pump`; true when the subscription has just ended.
    fn move_queued(&self) -> bool {
        let mut q = lock(&self.queue);
        if q.closed {
            return false;
        }
        if q.overflowed {
            q.closed = true;
            drop(q);
            self.sender
                .reset_now(CloseCode::SLOW_CONSUMER, "subscriber too slow");
            return true;
        }
        if self.session_ended.load(Ordering::Acquire) {
            q.closed = true;
            return true;
        }
        if q.held {
            return false;
        }
        let mut cx = Context::from_waker(&self.writable);
        loop {
            let gap = q.dropped > 0;
            let mut next = if gap {
                Some(envelope::gap(q.dropped))
            } else {
                q.items.front().cloned()
            };
            if next.is_none() {
                return false;
            }
            match self.sender.poll_send(&mut cx, &mut next) {
                Poll::Ready(Ok(())) if gap => q.dropped = 0,
                Poll::Ready(Ok(())) => drop(q.items.pop_front()),
                // The session is out of room: `writable` is registered with it.
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => {
                    q.closed = true;
                    return true;
                }
            }
        }
    }

    /// Marks the subscription ended and wakes `finished`.
    fn close(&self) {
        lock(&self.queue).closed = true;
        self.ended.notify_waiters();
    }

    fn is_closed(&self) -> bool {
        lock(&self.queue).closed
    }

    /// The session ended or overflowed: leave the topic now, not at the next publish.
    fn leave(self: &Arc<Self>) {
        if let (Some(hub), Some(topic)) = (self.hub.upgrade(), self.topic.upgrade()) {
            hub.detach(&self.topic_name, &topic, self);
        } else {
            self.close();
        }
    }
}

/// The subscribers of a topic: replaced whole on attach and detach, so a publish takes a
/// snapshot and walks it without holding the lock.
type Subscribers = Arc<Vec<Arc<Subscriber>>>;

#[derive(Debug)]
struct Topic {
    options: TopicOptions,
    subscribers: Mutex<Subscribers>,
    /// Sessions per member id, for presence (bounded by the subscriber count).
    members: Mutex<HashMap<String, usize>>,
}

impl Topic {
    /// Offers `message` to every subscriber but `except` and pumps each: the same `Bytes`
    /// for all, no task and no wait per subscriber.
    fn publish_raw(&self, message: &Bytes, except: Option<u64>) -> PublishReport {
        let mut report = PublishReport::default();
        let subscribers = self.snapshot();
        for sub in subscribers.iter().filter(|s| Some(s.id) != except) {
            match sub.offer(message.clone()) {
                Offer::Queued => report.queued = report.queued.saturating_add(1),
                Offer::Dropped => {
                    report.queued = report.queued.saturating_add(1);
                    report.dropped = report.dropped.saturating_add(1);
                }
                Offer::Closed => report.closed = report.closed.saturating_add(1),
                Offer::Gone => continue,
            }
            sub.pump();
        }
        report
    }

    fn snapshot(&self) -> Subscribers {
        lock(&self.subscribers).clone()
    }

    /// Replaces the subscriber list with `change` applied to a copy; returns `change`'s answer.
    fn edit<R>(&self, change: impl FnOnce(&mut Vec<Arc<Subscriber>>) -> R) -> R {
        let mut subscribers = lock(&self.subscribers);
        let mut next = Vec::clone(&subscribers);
        let answer = change(&mut next);
        *subscribers = Arc::new(next);
        answer
    }
}

#[derive(Debug, Default)]
struct Inner {
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    options: Mutex<HashMap<String, TopicOptions>>,
    next_id: AtomicU64,
    /// The [`TopicWatch`], if a broker hub mirrors this hub's topics.
    watch: Mutex<Option<Arc<Watched>>>,
}

/// Topics whose subscribers changed since the watcher last looked. At most one entry per
/// topic name, and each attach or detach adds at most one, so it is bounded by the
/// subscriber changes between two looks.
#[derive(Debug, Default)]
struct Watched {
    topics: Mutex<std::collections::HashSet<String>>,
    notify: Notify,
}

impl Inner {
    /// Tells the watcher, if any, that `name` gained or lost a subscriber.
    fn touched(&self, name: &str) {
        let watch = lock(&self.watch).clone();
        if let Some(watch) = watch {
            lock(&watch.topics).insert(name.to_owned());
            watch.notify.notify_one();
        }
    }

    fn detach(&self, name: &str, topic: &Arc<Topic>, sub: &Arc<Subscriber>) {
        sub.close();
        let removed = topic.edit(|subs| match subs.iter().position(|s| s.id == sub.id) {
            Some(pos) => {
                subs.swap_remove(pos);
                true
            }
            None => false,
        });
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
        // Forget the topic once empty, so topics do not accumulate. An attach holds the
        // map's lock until its subscriber is on the topic, so it cannot land on a topic
        // removed here.
        let mut topics = lock(&self.topics);
        let empty = topic.snapshot().is_empty();
        if empty && topics.get(name).is_some_and(|t| Arc::ptr_eq(t, topic)) {
            topics.remove(name);
        }
        drop(topics);
        if removed {
            self.touched(name);
        }
    }
}

/// The in-process [`Hub`](super::Hub). Cheap to clone; all clones share the topics.
///
/// Its methods are synchronous: nothing in-process needs to wait. A multi-node hub wraps
/// one for its local fan-out and adds its broker behind the async [`Hub`](super::Hub).
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
        lock(&self.inner.topics)
            .get(topic)
            .map_or(0, |t| t.snapshot().len())
    }

    /// Topics with at least one subscriber (empty topics are removed).
    pub fn topic_count(&self) -> usize {
        lock(&self.inner.topics).len()
    }

    /// Queues `message` for every current subscriber of `topic` on this node, encoded once
    /// and shared. Never waits for a subscriber.
    pub fn publish(&self, topic: &str, message: Bytes) -> PublishReport {
        let Some(topic) = lock(&self.inner.topics).get(topic).cloned() else {
            return PublishReport::default();
        };
        topic.publish_raw(&envelope::message(&message), None)
    }

    /// Subscribes an accepted `session` to the topic it was authorized for (its kind), until
    /// the returned [`Subscription`] is dropped or the session ends.
    pub fn attach(
        &self,
        session: &Session,
        options: SubscribeOptions,
    ) -> Result<Subscription, AttachError> {
        self.attach_as(session, options, false)
    }

    fn attach_as(
        &self,
        session: &Session,
        options: SubscribeOptions,
        held: bool,
    ) -> Result<Subscription, AttachError> {
        if !session.may_send() {
            return Err(AttachError::NotPermitted);
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
        let sub = Arc::new_cyclic(|weak: &Weak<Subscriber>| Subscriber {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            member: member.clone(),
            policy: options.policy,
            capacity: options.queue_capacity.max(1),
            queue: Mutex::new(Queue {
                held,
                ..Queue::default()
            }),
            sender: session.sender(),
            writable: Waker::from(Arc::new(SubscriberWaker {
                sub: weak.clone(),
                end: false,
            })),
            end: Waker::from(Arc::new(SubscriberWaker {
                sub: weak.clone(),
                end: true,
            })),
            session_ended: AtomicBool::new(false),
            pumping: AtomicBool::new(false),
            again: AtomicBool::new(false),
            ended: Notify::new(),
            hub: Arc::downgrade(&self.inner),
            topic: Arc::downgrade(&topic),
            topic_name: name.clone(),
        });
        if !sub.sender.watch_close(&sub.end) {
            drop(topics);
            self.inner.detach(&name, &topic, &sub);
            return Err(AttachError::Closed);
        }
        let joined = if topic.options.presence {
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
            // The snapshot is the new subscriber's first event; the others hear the join.
            lock(&sub.queue).items.push_back(snapshot);
            joined
        } else {
            false
        };
        topic.edit(|subs| subs.push(sub.clone()));
        // Publishing can end a subscription, and ending one takes the topics map: only
        // once it is released.
        drop(topics);
        self.inner.touched(&name);
        if joined {
            topic.publish_raw(&envelope::join(&member), Some(sub.id));
        }
        sub.pump();
        Ok(Subscription {
            hub: self.clone(),
            topic,
            sub,
        })
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
                    subscribers: Mutex::new(Arc::new(Vec::new())),
                    members: Mutex::new(HashMap::new()),
                })
            })
            .clone();
        (topics, topic)
    }
}

impl super::Hub for LocalHub {
    async fn publish(&self, topic: &str, message: Bytes) -> Result<PublishReport, super::HubError> {
        Ok(LocalHub::publish(self, topic, message))
    }

    async fn attach(
        &self,
        session: &Session,
        options: SubscribeOptions,
    ) -> Result<Subscription, AttachError> {
        LocalHub::attach(self, session, options)
    }
}

/// A live subscription. Dropping it unsubscribes; [`Subscription::revoke`] also closes the
/// session with 4007 REVOKED.
#[derive(Debug)]
pub struct Subscription {
    hub: LocalHub,
    topic: Arc<Topic>,
    sub: Arc<Subscriber>,
}

impl Subscription {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.sub.topic_name
    }

    /// Messages waiting in this subscriber's queue for room in its session.
    pub fn queued(&self) -> usize {
        lock(&self.sub.queue).items.len()
    }

    /// Revokes the subscriber's authorization: it stops receiving at once and its session is
    /// closed with 4007 REVOKED.
    pub async fn revoke(self, reason: &str) {
        self.hub
            .inner
            .detach(&self.sub.topic_name, &self.topic, &self.sub);
        self.sub.sender.reset(CloseCode::REVOKED, reason).await;
    }

    /// Waits until the subscription has ended: its session ended, it overflowed under the
    /// close policy, or it was detached.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only observes.
    pub async fn finished(&mut self) {
        loop {
            let notified = self.sub.ended.notified();
            tokio::pin!(notified);
            // Registered before the check, so an end in between is not missed.
            notified.as_mut().enable();
            if self.sub.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub
            .inner
            .detach(&self.sub.topic_name, &self.topic, &self.sub);
    }
}

/// Hooks for a hub that feeds this one from a broker (a multi-node hub over Redis, say): it
/// mirrors this hub's topics and members in the broker, and delivers what the broker sends
/// to this node's subscribers through their queues, policies and gap accounting.
impl LocalHub {
    /// Like [`LocalHub::attach`], but the subscriber receives nothing until
    /// [`Subscription::release`]: events delivered meanwhile wait in its queue (under its
    /// policy). For a hub that must send a first event it does not have yet (a snapshot of
    /// members on every node), without missing what is published while it asks.
    pub fn attach_held(
        &self,
        session: &Session,
        options: SubscribeOptions,
    ) -> Result<Subscription, AttachError> {
        self.attach_as(session, options, true)
    }

    /// Hands `event` to every subscriber of `topic` on this node but the sessions of
    /// `except_member`, encoded once and shared; never waits. A [`TopicEvent::Gap`] is
    /// queued in order, for messages the broker lost (a reconnect), so each subscriber
    /// still has `messages received + Σ gaps = messages published`. A member does not hear
    /// its own join: pass it as `except_member`.
    pub fn deliver(
        &self,
        topic: &str,
        event: &super::TopicEvent,
        except_member: Option<&str>,
    ) -> PublishReport {
        let Some(topic) = lock(&self.inner.topics).get(topic).cloned() else {
            return PublishReport::default();
        };
        let encoded = envelope::encode(event);
        let mut report = PublishReport::default();
        for sub in topic.snapshot().iter() {
            if except_member.is_some_and(|m| m == sub.member) {
                continue;
            }
            match sub.offer(encoded.clone()) {
                Offer::Queued => report.queued = report.queued.saturating_add(1),
                Offer::Dropped => {
                    report.queued = report.queued.saturating_add(1);
                    report.dropped = report.dropped.saturating_add(1);
                }
                Offer::Closed => report.closed = report.closed.saturating_add(1),
                Offer::Gone => continue,
            }
            sub.pump();
        }
        report
    }

    /// The members subscribed to `topic` on this node, each with its number of sessions,
    /// whether or not the topic has presence here.
    pub fn members(&self, topic: &str) -> Vec<(String, usize)> {
        let Some(topic) = lock(&self.inner.topics).get(topic).cloned() else {
            return Vec::new();
        };
        let mut counts: HashMap<String, usize> = HashMap::new();
        for sub in topic.snapshot().iter().filter(|s| !s.is_closed()) {
            let n = counts.entry(sub.member.clone()).or_insert(0);
            *n = n.saturating_add(1);
        }
        counts.into_iter().collect()
    }

    /// The topics with at least one subscriber on this node.
    pub fn topics(&self) -> Vec<String> {
        lock(&self.inner.topics).keys().cloned().collect()
    }

    /// Starts telling the returned watch which topics gain or lose subscribers. One watch
    /// per hub: a new one replaces the previous, which then never fires again.
    pub fn watch(&self) -> TopicWatch {
        let watched = Arc::new(Watched::default());
        *lock(&self.inner.watch) = Some(watched.clone());
        TopicWatch { watched }
    }
}

/// Which topics of a [`LocalHub`] gained or lost subscribers, from [`LocalHub::watch`].
#[derive(Debug)]
pub struct TopicWatch {
    watched: Arc<Watched>,
}

impl TopicWatch {
    /// Waits until some topic changed, then returns every topic that changed since the last
    /// call (each once). Read the topics' state afterwards ([`LocalHub::subscriber_count`],
    /// [`LocalHub::members`]): it is at least as new as the change.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a change stays recorded until a call returns it.
    pub async fn changed(&mut self) -> Vec<String> {
        loop {
            let changed: Vec<String> = lock(&self.watched.topics).drain().collect();
            if !changed.is_empty() {
                return changed;
            }
            self.watched.notify.notified().await;
        }
    }
}

impl Subscription {
    /// Ends the hold of [`LocalHub::attach_held`]: `first`, if any, is this subscriber's
    /// first event, before everything queued meanwhile. Does nothing on a subscription that
    /// was not held or was already released.
    pub fn release(&self, first: Option<&super::TopicEvent>) {
        {
            let mut q = lock(&self.sub.queue);
            if !q.held {
                return;
            }
            q.held = false;
            if let Some(event) = first {
                q.items.push_front(envelope::encode(event));
            }
        }
        self.sub.pump();
    }
}
