//! The in-process hub: topics in a map, subscribers with bounded queues, and no task per
//! subscriber. A publish gives the message its offset in the topic's stream, keeps it in the
//! topic's bounded history, and hands the shared bytes to each subscriber's session, or to
//! the subscriber's queue when the session has no room or the subscriber is still behind; a
//! subscriber out of credit is pumped again by its session's waker when credit returns. A
//! subscriber that resumes reads what it missed from the history before its queue
//! (spec/topics.md#resuming).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use mux_proto::CloseCode;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::envelope;
use super::history::{Fill, History, Placed, Start};
use super::queue::{start_items, Item, Offer, Queue, Step};
use super::{
    AttachError, Epoch, HubOptions, PublishReport, SlowConsumerPolicy, StreamPosition,
    SubscribeOptions, TopicKind, TopicOptions,
};
use crate::session::{Session, SessionSender};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One session subscribed to one topic.
///
/// Lock order: the hub's topic map, a topic's `order`, a subscriber's `queue`, then the
/// topic's `history` or the connection's state. The connection wakes this subscriber's
/// wakers only after releasing its lock, only one pump runs at a time (`pumping`), and a
/// publish pumps with no lock held, so a pump that ends its subscription can leave the topic
/// from anywhere.
struct Subscriber {
    id: u64,
    member: String,
    policy: SlowConsumerPolicy,
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
    /// Adds `item` to the queue under the slow-consumer policy. The caller pumps.
    fn offer(&self, item: Item) -> Offer {
        lock(&self.queue).offer(item, self.policy)
    }

    /// Hands the live message `offset` of `epoch` straight to the session when it is all
    /// this subscriber waits for (nothing queued, nothing to replay, not held or ending);
    /// otherwise queues it as [`Subscriber::offer`] does. The common case of a publish then
    /// takes this subscriber's lock once, with no queue traffic and no pump after it. Under
    /// the queue's lock, so it cannot overtake a pump (which holds it while it sends). True
    /// when the subscriber still needs a pump.
    fn send_or_offer(&self, epoch: Epoch, offset: u64, event: &Bytes) -> (Offer, bool) {
        let mut q = lock(&self.queue);
        if !q.idle_at(epoch, offset) || self.session_ended.load(Ordering::Acquire) {
            let item = Item::Message {
                offset,
                event: event.clone(),
            };
            return (q.offer(item, self.policy), true);
        }
        let mut cx = Context::from_waker(&self.writable);
        let mut next = Some(event.clone());
        match self.sender.poll_send(&mut cx, &mut next) {
            Poll::Ready(Ok(())) => {
                q.advance(Step::Replayed);
                (Offer::Queued, false)
            }
            // Out of room (`writable` is registered and pumps when it returns), or the
            // session failed (the pump finds out and leaves the topic): queued, pumped.
            Poll::Pending | Poll::Ready(Err(_)) => {
                let item = Item::Message {
                    offset,
                    event: event.clone(),
                };
                (q.offer(item, self.policy), true)
            }
        }
    }

    /// Moves what the session has room for out of the queue and the history. Whoever finds
    /// a pump running leaves the work to it: that pump looks once more before it stops.
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
        let topic = self.topic.upgrade();
        let now = Instant::now();
        let mut history = |epoch: Epoch, next: u64, until: u64| match &topic {
            Some(topic) => lock(&topic.history).fill(epoch, next, until, now),
            None => {
                (next <= until).then(|| Fill::Gap(until.saturating_add(1).saturating_sub(next)))
            }
        };
        let mut cx = Context::from_waker(&self.writable);
        loop {
            let Some((bytes, step)) = q.peek(&mut history) else {
                return false;
            };
            let mut next = Some(bytes);
            match self.sender.poll_send(&mut cx, &mut next) {
                Poll::Ready(Ok(())) => q.advance(step),
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
            hub.detach(&topic, self);
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
    name: String,
    options: TopicOptions,
    subscribers: Mutex<Subscribers>,
    /// Sessions per member id, for presence (bounded by the subscriber count).
    members: Mutex<HashMap<String, usize>>,
    /// Held from giving a message its offset until it is in every subscriber's queue, so
    /// each queue holds a topic's messages in offset order.
    order: Mutex<()>,
    history: Mutex<History>,
}

impl Topic {
    fn new(name: &str, options: TopicOptions) -> Self {
        Topic {
            name: name.to_owned(),
            options,
            subscribers: Mutex::new(Arc::new(Vec::new())),
            members: Mutex::new(HashMap::new()),
            order: Mutex::new(()),
            history: Mutex::new(History::new(
                Epoch::random(),
                options.history_len,
                options.history_age,
            )),
        }
    }

    /// Publishes `payload` at the stream's next offset.
    fn publish(&self, payload: &[u8], now: Instant) -> PublishReport {
        let order = lock(&self.order);
        let (position, items) = {
            let mut history = lock(&self.history);
            let mut items = Vec::new();
            let appended = match history.append(payload, now) {
                Some(appended) => appended,
                None => {
                    // Every offset of the epoch is used: a new epoch, announced as a reset.
                    history.restart(Epoch::random());
                    items.extend(restart(history.reset_start(now)));
                    match history.append(payload, now) {
                        Some(appended) => appended,
                        // Unreachable: a restarted stream is at offset 0.
                        None => return PublishReport::default(),
                    }
                }
            };
            let (offset, event) = appended;
            items.push(Item::Message { offset, event });
            (StreamPosition::new(history.epoch(), offset), items)
        };
        let mut report = self.fan_out(position, &items, order);
        report.position = Some(position);
        report
    }

    /// Publishes a message a broker placed at `position`.
    fn publish_at(&self, position: StreamPosition, payload: &[u8], now: Instant) -> PublishReport {
        let order = lock(&self.order);
        let items = match lock(&self.history).place(position, payload, now) {
            Placed::Stale => Vec::new(),
            Placed::Appended(event) => vec![Item::Message {
                offset: position.offset,
                event,
            }],
            Placed::Restarted(start, event) => restart(start)
                .chain([Item::Message {
                    offset: position.offset,
                    event,
                }])
                .collect(),
        };
        let mut report = self.fan_out(position, &items, order);
        report.position = Some(position);
        report
    }

    /// Hands a publish's `items` to every subscriber, then releases `order` and pumps those
    /// that need it. A lone message (the common case) goes straight into the session of
    /// each subscriber that waits for nothing else ([`Subscriber::send_or_offer`]).
    fn fan_out(
        &self,
        position: StreamPosition,
        items: &[Item],
        order: std::sync::MutexGuard<'_, ()>,
    ) -> PublishReport {
        let [Item::Message { offset, event }] = items else {
            let (report, subscribers) = self.offer_all(items, None);
            drop(order);
            pump_all(&subscribers);
            return report;
        };
        let mut report = PublishReport::default();
        let subscribers = self.snapshot();
        // Allocated only when some subscriber is behind.
        let mut behind = Vec::new();
        for sub in subscribers.iter() {
            let (outcome, pump) = sub.send_or_offer(position.epoch, *offset, event);
            report.count(outcome);
            if pump {
                behind.push(sub);
            }
        }
        drop(order);
        for sub in behind {
            sub.pump();
        }
        report
    }

    /// Offers `items` to every subscriber but `except`; the report, and the subscribers to
    /// pump once the caller released `order`.
    fn offer_all(&self, items: &[Item], except: Option<u64>) -> (PublishReport, Subscribers) {
        let mut report = PublishReport::default();
        let subscribers = self.snapshot();
        if items.is_empty() {
            return (report, subscribers);
        }
        for sub in subscribers.iter().filter(|s| Some(s.id) != except) {
            let mut outcome = Offer::Gone;
            for item in items {
                match sub.offer(item.clone()) {
                    Offer::Queued if outcome == Offer::Gone => outcome = Offer::Queued,
                    Offer::Queued | Offer::Gone => {}
                    worse => outcome = worse,
                }
            }
            report.count(outcome);
        }
        (report, subscribers)
    }

    /// A presence event to every subscriber but `except`.
    fn announce(&self, event: Bytes, except: Option<u64>) {
        let item = Item::Event {
            event,
            droppable: true,
        };
        let (_, subscribers) = self.offer_all(&[item], except);
        pump_all(&subscribers);
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

impl PublishReport {
    /// Counts one subscriber's outcome.
    fn count(&mut self, outcome: Offer) {
        match outcome {
            Offer::Queued => self.queued = self.queued.saturating_add(1),
            Offer::Dropped => {
                self.queued = self.queued.saturating_add(1);
                self.dropped = self.dropped.saturating_add(1);
            }
            Offer::Closed => self.closed = self.closed.saturating_add(1),
            Offer::Gone => {}
        }
    }
}

/// What live subscribers get when the stream restarts in a new epoch.
fn restart(start: Start) -> impl Iterator<Item = Item> {
    let mark = Item::Restart {
        epoch: start.position.epoch,
        next: start.next,
        until: start.until,
    };
    std::iter::once(mark).chain(start_items(start))
}

fn pump_all(subscribers: &Subscribers) {
    for sub in subscribers.iter() {
        sub.pump();
    }
}

/// The topics in memory: those with subscribers, and idle ones kept for subscribers that
/// come back, oldest idle first.
#[derive(Debug, Default)]
struct Topics {
    map: HashMap<String, Arc<Topic>>,
    /// When each idle topic lost its last subscriber; at most `max_idle_topics` after a sweep.
    idle: VecDeque<(Instant, Arc<Topic>)>,
}

impl Topics {
    /// Drops idle topics over the count or past their time; their epochs end with them.
    fn sweep(&mut self, options: &HubOptions, now: Instant) {
        while let Some((since, _)) = self.idle.front() {
            let expired = now.saturating_duration_since(*since) >= options.idle_ttl;
            if !expired && self.idle.len() <= options.max_idle_topics {
                break;
            }
            if let Some((_, topic)) = self.idle.pop_front() {
                let current = self
                    .map
                    .get(&topic.name)
                    .is_some_and(|t| Arc::ptr_eq(t, &topic));
                if current && topic.snapshot().is_empty() {
                    self.map.remove(&topic.name);
                }
            }
        }
    }

    fn set_idle(&mut self, topic: &Arc<Topic>, now: Instant) {
        if !self.idle.iter().any(|(_, t)| Arc::ptr_eq(t, topic)) {
            self.idle.push_back((now, topic.clone()));
        }
    }

    fn set_busy(&mut self, topic: &Arc<Topic>) {
        if let Some(at) = self.idle.iter().position(|(_, t)| Arc::ptr_eq(t, topic)) {
            self.idle.remove(at);
        }
    }
}

#[derive(Debug)]
struct Inner {
    topics: Mutex<Topics>,
    configured: Mutex<HashMap<String, TopicOptions>>,
    options: HubOptions,
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

    fn detach(&self, topic: &Arc<Topic>, sub: &Arc<Subscriber>) {
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
                topic.announce(envelope::leave(&sub.member), None);
            }
        }
        // An empty topic is kept a while, bounded, for subscribers that resume. An attach
        // holds the map's lock until its subscriber is on the topic, so it cannot land on a
        // topic a sweep removes.
        let mut topics = lock(&self.topics);
        let empty = topic.snapshot().is_empty();
        let current = topics
            .map
            .get(&topic.name)
            .is_some_and(|t| Arc::ptr_eq(t, topic));
        if empty && current {
            let now = Instant::now();
            topics.set_idle(topic, now);
            topics.sweep(&self.options, now);
        }
        drop(topics);
        if removed {
            self.touched(&topic.name);
        }
    }
}

/// The in-process [`Hub`](super::Hub). Cheap to clone; all clones share the topics.
///
/// Its methods are synchronous: nothing in-process needs to wait. A multi-node hub wraps
/// one for its local fan-out and adds its broker behind the async [`Hub`](super::Hub),
/// feeding it with [`LocalHub::publish_at`] and [`LocalHub::sync`].
///
/// # Memory
///
/// Per topic: its history (at most [`TopicOptions::history_len`] messages), and per
/// subscriber its queue (at most [`SubscribeOptions::queue_capacity`] live events). A topic
/// without subscribers is kept at most [`HubOptions::idle_ttl`], and at most
/// [`HubOptions::max_idle_topics`] of them.
#[derive(Debug, Clone)]
pub struct LocalHub {
    inner: Arc<Inner>,
}

impl Default for LocalHub {
    fn default() -> Self {
        LocalHub::with_options(HubOptions::default())
    }
}

impl LocalHub {
    /// An empty hub with the default [`HubOptions`].
    pub fn new() -> Self {
        LocalHub::default()
    }

    /// An empty hub with these options.
    pub fn with_options(options: HubOptions) -> Self {
        LocalHub {
            inner: Arc::new(Inner {
                topics: Mutex::new(Topics::default()),
                configured: Mutex::new(HashMap::new()),
                options,
                next_id: AtomicU64::new(0),
                watch: Mutex::new(None),
            }),
        }
    }

    /// Sets a topic's options (presence, history) before anyone subscribes to it.
    pub fn configure_topic(&self, topic: &str, options: TopicOptions) {
        lock(&self.inner.configured).insert(topic.to_owned(), options);
    }

    /// Subscribers of `topic` now.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        lock(&self.inner.topics)
            .map
            .get(topic)
            .map_or(0, |t| t.snapshot().len())
    }

    /// Topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        let topics = lock(&self.inner.topics);
        topics.map.len().saturating_sub(topics.idle.len())
    }

    /// Topics without subscribers still in memory, for subscribers that resume (bounded by
    /// [`HubOptions`]).
    pub fn idle_topic_count(&self) -> usize {
        lock(&self.inner.topics).idle.len()
    }

    /// Messages `topic`'s history keeps now (at most its `history_len`).
    pub fn history_len(&self, topic: &str) -> usize {
        self.find(topic).map_or(0, |t| lock(&t.history).len())
    }

    /// Where `topic`'s stream stands (its epoch and last offset), if the hub holds it.
    pub fn position(&self, topic: &str) -> Option<StreamPosition> {
        let topic = self.find(topic)?;
        let position = lock(&topic.history).position();
        Some(position)
    }

    /// Gives `message` the next offset of `topic`'s stream, keeps it in the topic's history
    /// and queues it for every current subscriber on this node, encoded once and shared.
    /// Never waits for a subscriber. A topic the hub does not hold (never subscribed, or idle
    /// too long) keeps nothing: the report's position is `None`.
    pub fn publish(&self, topic: &str, message: Bytes) -> PublishReport {
        match self.find(topic) {
            Some(topic) => topic.publish(&message, Instant::now()),
            None => PublishReport::default(),
        }
    }

    /// Fans out a message whose position a broker assigned (a multi-node hub): kept in the
    /// topic's history, queued for this node's subscribers, ignored if its offset is not past
    /// the stream's last one. Another epoch restarts the stream: subscribers get a position
    /// event and a gap of unknown count first (spec/topics.md#resuming). Do not mix with
    /// [`LocalHub::publish`] on one topic.
    pub fn publish_at(
        &self,
        topic: &str,
        position: StreamPosition,
        message: Bytes,
    ) -> PublishReport {
        match self.find(topic) {
            Some(topic) => topic.publish_at(position, &message, Instant::now()),
            None => PublishReport::default(),
        }
    }

    /// Brings `topic`'s stream on this node to a broker's: its epoch, at least its last
    /// offset, and `backlog`, the `(offset, payload)` the broker still holds after the
    /// position this node (or a resuming subscriber) had. Messages already here win over
    /// backlog copies. Creates the topic (idle) if the hub does not hold it.
    ///
    /// Call it before a resuming session is attached, and when this node comes back to a
    /// broker it lost for a while (the messages published meanwhile never reached it). Every
    /// live subscriber moves on through the stream's new last offset: after what is queued
    /// for it, it gets the backlog's messages in order, then one gap with the exact count of
    /// the offsets the backlog no longer holds, before any newer live message, which is
    /// never duplicated (a live copy of a message up to that offset is ignored). Another
    /// epoch is a reset for them (a position event, a gap of unknown count, then what the
    /// history holds). So `position.offset` must be the broker's last offset as of the
    /// backlog: every offset up to it is in the backlog or lost.
    pub fn sync(
        &self,
        topic: &str,
        position: StreamPosition,
        backlog: impl IntoIterator<Item = (u64, Bytes)>,
    ) {
        let now = Instant::now();
        let topic = {
            let mut topics = lock(&self.inner.topics);
            topics.sweep(&self.inner.options, now);
            let (topic, created) = self.topic_in(&mut topics, topic);
            if created {
                topics.set_idle(&topic, now);
            }
            topic
        };
        let order = lock(&topic.order);
        let (items, reached) = {
            let mut history = lock(&topic.history);
            if history.sync(position, backlog, now) {
                // Replays the new epoch's history to every live subscriber.
                (restart(history.reset_start(now)).collect(), None)
            } else {
                (Vec::new(), Some(history.position()))
            }
        };
        let (_, subscribers) = topic.offer_all(&items, None);
        if let Some(reached) = reached {
            // Under `order`: no message past `reached` is queued yet, so the replay comes
            // before every newer live one.
            for sub in subscribers.iter() {
                lock(&sub.queue).reach(reached.epoch, reached.offset);
            }
        }
        drop(order);
        pump_all(&subscribers);
    }

    /// Subscribes an accepted `session` to the topic of its kind (the one its authorizer
    /// decided on), until the returned [`Subscription`] is dropped or the session ends. A
    /// kind with a position resumes from it: the subscriber gets what it missed from the
    /// history, or one gap for what history no longer holds (spec/topics.md#resuming).
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
        let kind = TopicKind::parse(session.kind())?;
        let member = session.principal().map_or_else(
            || format!("session-{}", session.id().get()),
            |p| p.id.clone(),
        );
        let now = Instant::now();
        // The topics map stays locked until the subscriber is on the topic: a sweep removes
        // an idle topic under this lock, so an attach must not add itself to a topic no
        // longer in the map. (Lock order: topics map, then the topic's locks.)
        let mut topics = lock(&self.inner.topics);
        topics.sweep(&self.inner.options, now);
        let (topic, _) = self.topic_in(&mut topics, kind.topic);
        topics.set_busy(&topic);
        let sub = Arc::new_cyclic(|weak: &Weak<Subscriber>| Subscriber {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            member: member.clone(),
            policy: options.policy,
            queue: Mutex::new(Queue::new(options.queue_capacity).held(held)),
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
        });
        if !sub.sender.watch_close(&sub.end) {
            drop(topics);
            self.inner.detach(&topic, &sub);
            return Err(AttachError::Closed);
        }
        let (snapshot, joined) = if topic.options.presence {
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
            (Some(snapshot), *n == 1)
        } else {
            (None, false)
        };
        {
            // Under `order`: every message after the start position reaches the queue.
            let _order = lock(&topic.order);
            let start = lock(&topic.history).start(kind.resume, now);
            {
                let mut q = lock(&sub.queue);
                q.begin(start);
                if let Some(snapshot) = snapshot {
                    q.push_event(snapshot);
                }
            }
            topic.edit(|subs| subs.push(sub.clone()));
        }
        // Publishing can end a subscription, and ending one takes the topics map: only
        // once it is released.
        drop(topics);
        self.inner.touched(&topic.name);
        if joined {
            topic.announce(envelope::join(&member), Some(sub.id));
        }
        sub.pump();
        Ok(Subscription {
            hub: self.clone(),
            topic,
            sub,
        })
    }

    /// The topic `name` if the hub holds it.
    fn find(&self, name: &str) -> Option<Arc<Topic>> {
        lock(&self.inner.topics).map.get(name).cloned()
    }

    /// The topic `name`, created if missing (true then).
    fn topic_in(&self, topics: &mut Topics, name: &str) -> (Arc<Topic>, bool) {
        if let Some(topic) = topics.map.get(name) {
            return (topic.clone(), false);
        }
        let options = lock(&self.inner.configured)
            .get(name)
            .copied()
            .unwrap_or(self.inner.options.default_topic);
        let topic = Arc::new(Topic::new(name, options));
        topics.map.insert(name.to_owned(), topic.clone());
        (topic, true)
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
        &self.topic.name
    }

    /// Live events waiting in this subscriber's queue for room in its session.
    pub fn queued(&self) -> usize {
        lock(&self.sub.queue).len()
    }

    /// Revokes the subscriber's authorization: it stops receiving at once and its session is
    /// closed with 4007 REVOKED.
    pub async fn revoke(self, reason: &str) {
        self.hub.inner.detach(&self.topic, &self.sub);
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
        self.hub.inner.detach(&self.topic, &self.sub);
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
    /// `except_member`, encoded once and shared; never waits. For the events a broker sends
    /// that are not the topic's messages: joins, leaves, and a [`TopicEvent::Gap`](super::TopicEvent::Gap)
    /// (super::TopicEvent::Gap) for messages the broker lost (a reconnect), queued in order
    /// and never dropped for room, so each subscriber still has `messages received + Σ gaps
    /// = messages published`. A member does not hear its own join: pass it as
    /// `except_member`. Messages go through [`LocalHub::publish`] or
    /// [`LocalHub::publish_at`], which give them their offset: a message or position event
    /// here is ignored (an empty report).
    pub fn deliver(
        &self,
        topic: &str,
        event: &super::TopicEvent,
        except_member: Option<&str>,
    ) -> PublishReport {
        use super::TopicEvent;
        let droppable = match event {
            TopicEvent::Message { .. } | TopicEvent::Position(_) => {
                return PublishReport::default()
            }
            TopicEvent::Join(_) | TopicEvent::Leave(_) => true,
            _ => false,
        };
        let Some(topic) = self.find(topic) else {
            return PublishReport::default();
        };
        let item = Item::Event {
            event: envelope::encode(event),
            droppable,
        };
        let mut report = PublishReport::default();
        let subscribers = topic.snapshot();
        for sub in subscribers.iter() {
            if except_member.is_some_and(|m| m == sub.member) {
                continue;
            }
            match sub.offer(item.clone()) {
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
        let Some(topic) = self.find(topic) else {
            return Vec::new();
        };
        let mut counts: HashMap<String, usize> = HashMap::new();
        for sub in topic.snapshot().iter().filter(|s| !s.is_closed()) {
            let n = counts.entry(sub.member.clone()).or_insert(0);
            *n = n.saturating_add(1);
        }
        counts.into_iter().collect()
    }

    /// The topics with at least one subscriber on this node (not the idle ones kept for
    /// subscribers that resume).
    pub fn topics(&self) -> Vec<String> {
        lock(&self.inner.topics)
            .map
            .iter()
            .filter(|(_, t)| !t.snapshot().is_empty())
            .map(|(name, _)| name.clone())
            .collect()
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
    /// first event after its position (and the gap of a resume), before everything queued
    /// meanwhile. Does nothing on a subscription that was not held or was already released.
    pub fn release(&self, first: Option<&super::TopicEvent>) {
        {
            let mut q = lock(&self.sub.queue);
            if !q.held {
                return;
            }
            q.held = false;
            if let Some(event) = first {
                q.push_first(envelope::encode(event));
            }
        }
        self.sub.pump();
    }
}
