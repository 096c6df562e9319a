//! [`RedisHub`]: topics across nodes. Each node keeps its subscribers in a [`LocalHub`]
//! (their bounded queues, slow-consumer policies and gaps work as on one node) and feeds it
//! from one Redis pub/sub connection, subscribed to a topic's channel only while the node has
//! subscribers of it. A publish is one script in Redis (one round trip, whatever the number
//! of subscribers or nodes) that numbers the message in its topic, keeps it in the topic's
//! history and publishes it; every node, the publisher's included, delivers it as it comes
//! back from Redis at the offset Redis gave it, so every subscriber on every node sees a
//! topic's messages in the one order Redis gave them, at the same offsets (`stream.rs`).
//!
//! Three tasks per hub and no task per subscriber: the link (the pub/sub connection: connect,
//! subscribe, read, reconnect), the keeper (subscriptions and presence follow the local
//! subscribers; presence refreshed every third of its TTL), and the subscribers' own pumps
//! in the `LocalHub`.

mod link;
mod own;
mod presence;
mod stream;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use mux_tokio::topic::{
    AttachError, Epoch, Hub, HubError, LocalHub, PublishReport, StreamPosition, SubscribeOptions,
    Subscription, TopicEvent, TopicKind, TopicOptions,
};
use mux_tokio::Session;
use redis::aio::{ConnectionManager, PubSubSink};
use tokio::sync::{watch, Notify};

use crate::script::Scripts;
use crate::wire::{self, Names};
use crate::{BrokerError, PublishError, RedisOptions};

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A [`Hub`] shared by every node connected to one Redis. Cheap to clone; the clones share
/// everything. Its tasks end when the last clone is dropped; then the node's presence
/// entries expire within the TTL, as if it had died (call [`RedisHub::leave_all`] first for
/// a planned shutdown).
///
/// [`Hub::publish`]'s report counts only what this node delivered during the call (while
/// its link is down); otherwise every node, this one included, delivers the message as it
/// comes back from Redis. Its position is the message's in the topic's stream, the same on
/// every node (`None` when Redis did not number it). [`RedisHub::publish_to`] also returns its number and how many
/// nodes received it.
///
/// While Redis is unreachable the node keeps working alone: its publishes reach its own
/// subscribers (in a stream of this node's own, announced as a reset) and fail with
/// [`PublishError`]; attaches succeed, with a snapshot of this node's members only, marked
/// truncated, and resume from this node's stream. When Redis returns, the hub subscribes
/// again, hands each subscriber the messages it missed that the topic's history in Redis
/// still holds, in order and before newer ones, tells it how many it missed beyond those (a
/// gap), and refreshes presence.
#[derive(Debug, Clone)]
pub struct RedisHub {
    shared: Arc<Shared>,
}

/// What [`RedisHub::publish_to`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The message's number in its topic (1, 2, ...; restarts when Redis loses the topic).
    pub seq: u64,
    /// Nodes subscribed to the topic that Redis handed it to (this one included).
    pub nodes: u64,
    /// What this node's subscribers got during the call: nothing while linked (they get it
    /// from Redis, like every other node's); everything while the link is down. Its
    /// `position` is the message's in the topic's stream: Redis's epoch and `seq`.
    pub local: PublishReport,
}

/// Counters since the hub was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisHubStats {
    /// Publishes Redis confirmed.
    pub published: u64,
    /// Publishes that failed ([`PublishError`]).
    pub publish_failures: u64,
    /// Messages received from Redis for topics with subscribers here.
    pub received: u64,
    /// Messages this node missed while its link was down and could not get back from
    /// Redis's history (the holes in the offsets it delivered, which its subscribers see as
    /// gaps).
    pub missed: u64,
    /// Reads of Redis's stream of a topic that failed (Redis did not answer, or the link
    /// was down): an attach that needed one started from this node's stream; a link that
    /// came back left its subscribers a gap for what it missed.
    pub read_failures: u64,
    /// Times the pub/sub link was established.
    pub links: u64,
    /// The pub/sub link is up now.
    pub linked: bool,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    publish_failures: AtomicU64,
    received: AtomicU64,
    missed: AtomicU64,
    read_failures: AtomicU64,
    links: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The pub/sub connection while it is up.
#[derive(Debug)]
pub(crate) struct Link {
    sink: PubSubSink,
    /// Tells the link task to drop this connection and reconnect.
    broken: Arc<Notify>,
}

/// What this node holds in Redis, changed only under `Shared::control`, so that an attach,
/// the last detach of a topic and a reconnect never interleave their decisions.
#[derive(Debug, Default)]
pub(crate) struct Control {
    link: Option<Link>,
    /// Channels the link is subscribed to (topics).
    subscribed: HashSet<String>,
    /// Presence entries of this node in Redis: members per topic.
    registered: HashMap<String, HashSet<String>>,
    /// After `RedisHub::leave_all`: this node's members are not added again.
    leaving: bool,
}

pub(crate) struct Shared {
    local: LocalHub,
    options: RedisOptions,
    node: String,
    names: Names,
    commands: ConnectionManager,
    scripts: Scripts,
    topics: Mutex<HashMap<String, TopicOptions>>,
    control: tokio::sync::Mutex<Control>,
    linked: watch::Sender<bool>,
    /// Topics whose stream on this node left Redis's for a node-local epoch (failed
    /// publishes delivered here), with that epoch; bounded by the topics with subscribers.
    offline: Mutex<HashMap<String, Epoch>>,
    own: Mutex<own::Own>,
    counter: AtomicU64,
    stats: Counters,
    /// Dropped with the hub: its tasks see the channel close and end.
    _closed: watch::Sender<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("node", &self.node)
            .field("linked", &*self.linked.borrow())
            .finish_non_exhaustive()
    }
}

/// A session's member id, as [`LocalHub`] names it: its principal, or the session.
fn member_of(session: &Session) -> String {
    session.principal().map_or_else(
        || format!("session-{}", session.id().get()),
        |p| p.id.clone(),
    )
}

impl RedisHub {
    /// A hub on the Redis at `url` (`redis://host:port/db`). Returns at once, without
    /// waiting for Redis (which may be down: the hub connects in the background and works
    /// alone meanwhile); fails only on a malformed URL or option. Call from a tokio runtime:
    /// it spawns the hub's tasks.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<RedisHub, BrokerError> {
        let client = redis::Client::open(url)?;
        let node = options.resolve_node_id()?;
        let commands =
            ConnectionManager::new_lazy_with_config(client.clone(), options.manager_config())?;
        let local = LocalHub::new();
        let watch = local.watch();
        let (closed, closed_rx) = watch::channel(());
        let relinked = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            local,
            names: Names::new(&options.prefix),
            options,
            node,
            commands,
            scripts: Scripts::new(),
            topics: Mutex::new(HashMap::new()),
            control: tokio::sync::Mutex::new(Control::default()),
            linked: watch::Sender::new(false),
            offline: Mutex::new(HashMap::new()),
            own: Mutex::new(own::Own::default()),
            counter: AtomicU64::new(0),
            stats: Counters::default(),
            _closed: closed,
        });
        tokio::spawn(link::run(
            Arc::downgrade(&shared),
            client,
            closed_rx.clone(),
            relinked.clone(),
        ));
        tokio::spawn(presence::keeper(
            Arc::downgrade(&shared),
            watch,
            closed_rx,
            relinked,
        ));
        Ok(RedisHub { shared })
    }

    /// This node's id (in presence entries and messages).
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }

    /// The subscribers on this node (counts, topics).
    pub fn local(&self) -> &LocalHub {
        &self.shared.local
    }

    /// Sets a topic's options before anyone subscribes to it. With presence, members are
    /// kept in Redis with a TTL, so every node's subscribers see every node's members.
    /// Every node must configure a topic the same way.
    ///
    /// A history (`TopicOptions::history(max_len, max_age)`) is kept in Redis, appended by
    /// the publish script, and by each node for its subscribers; offsets are Redis's, the
    /// same on every node, so a subscriber resumes on any node (spec/topics.md#resuming).
    pub fn configure_topic(&self, topic: &str, options: TopicOptions) {
        lock(&self.shared.topics).insert(topic.to_owned(), options);
        // Presence spans the nodes through Redis: the local hub only keeps the history.
        let mut local = options;
        local.presence = false;
        self.shared.local.configure_topic(topic, local);
    }

    /// Whether the pub/sub link is up now.
    pub fn is_linked(&self) -> bool {
        *self.shared.linked.borrow()
    }

    /// Waits until the pub/sub link is up (it may never be: bound the wait).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only observes.
    pub async fn linked(&self) {
        let mut rx = self.shared.linked.subscribe();
        // The sender lives as long as `self`; an error cannot happen while we hold it.
        let _ = rx.wait_for(|linked| *linked).await;
    }

    /// Counters since the hub was created.
    pub fn stats(&self) -> RedisHubStats {
        let s = &self.shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RedisHubStats {
            published: get(&s.published),
            publish_failures: get(&s.publish_failures),
            received: get(&s.received),
            missed: get(&s.missed),
            read_failures: get(&s.read_failures),
            links: get(&s.links),
            linked: self.is_linked(),
        }
    }

    /// Publishes `message` to every subscriber of `topic` on every node, and says what
    /// happened. [`Hub::publish`] is this without the details.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the message published or not, as for any request.
    pub async fn publish_to(&self, topic: &str, message: Bytes) -> Result<Published, PublishError> {
        self.shared.publish(topic, message).await
    }

    /// Removes this node's presence entries from every topic now (a `leave` where no other
    /// node holds the member), for a planned shutdown; its subscribers stay subscribed.
    pub async fn leave_all(&self) -> Result<(), BrokerError> {
        self.shared.leave_all().await
    }
}

impl Hub for RedisHub {
    async fn publish(&self, topic: &str, message: Bytes) -> Result<PublishReport, HubError> {
        match self.shared.publish(topic, message).await {
            Ok(published) => Ok(published.local),
            Err(e) => Err(HubError::Backend(Box::new(e))),
        }
    }

    async fn attach(
        &self,
        session: &Session,
        options: SubscribeOptions,
    ) -> Result<Subscription, AttachError> {
        self.shared.attach(session, options).await
    }
}

impl Shared {
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let after = self.options.command_timeout;
        tokio::time::timeout(after, call)
            .await
            .unwrap_or(Err(BrokerError::Timeout { after }))
    }

    fn presence_of(&self, topic: &str) -> Option<usize> {
        lock(&self.topics)
            .get(topic)
            .filter(|o| o.presence)
            .map(|o| {
                if o.max_snapshot == 0 {
                    256
                } else {
                    o.max_snapshot
                }
            })
    }

    async fn publish(&self, topic: &str, message: Bytes) -> Result<Published, PublishError> {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        let linked = *self.linked.borrow();
        // While the link is down nothing comes back from Redis: this node delivers its own
        // message itself, in Redis's numbering (after a gap for what it missed), and flags
        // it so that it skips it if the link is back before it arrives.
        let flags = if linked {
            lock(&self.own).sent(counter);
            0
        } else {
            wire::DELIVERED_AT_ORIGIN
        };
        let sequence = self.names.sequence(topic);
        let history = self.names.history(topic);
        let channel = self.names.channel(topic);
        let header = wire::message_header(&self.node, counter, flags);
        let ttl = RedisOptions::millis(self.options.sequence_ttl);
        let (max_len, max_age) = self.history_of(topic);
        let age = RedisOptions::millis(max_age);
        let mut con = self.commands.clone();
        let result = self
            .bounded(
                self.scripts
                    .publish
                    .run::<(u64, u64, u64)>(&mut con, 2, |c| {
                        c.arg(&sequence)
                            .arg(&history)
                            .arg(&channel)
                            .arg(&header)
                            .arg(&message[..])
                            .arg(ttl)
                            .arg(max_len)
                            .arg(age);
                    }),
            )
            .await;
        match result {
            Ok((seq, nodes, epoch)) => {
                let at = StreamPosition::new(Epoch::new(epoch), seq);
                let mut local = PublishReport::default();
                if linked {
                    lock(&self.own).confirmed(counter);
                } else if self.local.subscriber_count(topic) > 0 {
                    // Others published before it while the link was down: what the history
                    // holds of them goes first, so this message does not show them as a gap.
                    self.fill_before(topic, at).await;
                    local = self.deliver_numbered(topic, at, message);
                }
                local.position = Some(at);
                bump(&self.stats.published, 1);
                Ok(Published { seq, nodes, local })
            }
            Err(source) => {
                bump(&self.stats.publish_failures, 1);
                // Unless it already came back through Redis, this node's subscribers get it
                // now; if it reached Redis after all, its echo is skipped.
                let mut local = PublishReport::default();
                if !linked || lock(&self.own).failed(counter) {
                    local = self.deliver_unnumbered(topic, message);
                    // Not a position in the topic's stream: Redis never numbered it.
                    local.position = None;
                }
                Err(PublishError { local, source })
            }
        }
    }

    async fn attach(
        &self,
        session: &Session,
        options: SubscribeOptions,
    ) -> Result<Subscription, AttachError> {
        // The kind may carry a resume position (spec/topics.md#resuming): the topic is its
        // name.
        let kind = TopicKind::parse(session.kind())?;
        let (topic, resume) = (kind.topic.to_owned(), kind.resume);
        if !session.may_send() {
            return Err(AttachError::NotPermitted);
        }
        let member = member_of(session);
        let presence = self.presence_of(&topic);
        // Under the control lock until the subscriber is on the topic, so the keeper (which
        // takes it to unsubscribe a topic left without subscribers) cannot undo the
        // subscription in between.
        let mut control = self.control.lock().await;
        // Subscribed before the stream is read, and the topic held here from then on: what
        // Redis numbers after the read arrives and is kept, even before the subscriber is on
        // the topic.
        self.hold(&topic);
        self.subscribe(&mut control, &topic).await;
        self.catch_up(&control, &topic, resume).await;
        // Held until its first event is known.
        let sub = self.local.attach_held(session, options)?;
        let first = match presence {
            Some(max) => Some(self.join(&mut control, &topic, &member, max).await),
            None => None,
        };
        drop(control);
        sub.release(first.as_ref());
        Ok(sub)
    }

    /// Subscribes the link to `topic` unless it is already (or down: it subscribes every
    /// topic when it comes back). A failure drops the link, which reconnects.
    async fn subscribe(&self, control: &mut Control, topic: &str) {
        if control.subscribed.contains(topic) {
            return;
        }
        let Some(link) = control.link.as_mut() else {
            return;
        };
        let channel = self.names.channel(topic);
        let after = self.options.command_timeout;
        match tokio::time::timeout(after, link.sink.subscribe(&channel)).await {
            Ok(Ok(())) => {
                control.subscribed.insert(topic.to_owned());
            }
            Ok(Err(e)) => {
                tracing::warn!(topic, error = %e, "redis SUBSCRIBE failed; reconnecting");
                self.drop_link(control);
            }
            Err(_) => {
                tracing::warn!(topic, "redis SUBSCRIBE timed out; reconnecting");
                self.drop_link(control);
            }
        }
    }

    /// Unsubscribes the link from `topic`, which has no subscriber here any more.
    async fn unsubscribe(&self, control: &mut Control, topic: &str) {
        lock(&self.offline).remove(topic);
        if !control.subscribed.remove(topic) {
            return;
        }
        let Some(link) = control.link.as_mut() else {
            return;
        };
        let channel = self.names.channel(topic);
        let after = self.options.command_timeout;
        match tokio::time::timeout(after, link.sink.unsubscribe(&channel)).await {
            Ok(Ok(())) => {}
            _ => {
                tracing::warn!(topic, "redis UNSUBSCRIBE failed; reconnecting");
                self.drop_link(control);
            }
        }
    }

    /// Marks the link down now and tells its task to reconnect.
    fn drop_link(&self, control: &mut Control) {
        if let Some(link) = control.link.take() {
            link.broken.notify_one();
        }
        control.subscribed.clear();
        self.linked.send_replace(false);
    }

    /// The new subscriber's snapshot, adding its member to Redis (a join elsewhere if new).
    async fn join(
        &self,
        control: &mut Control,
        topic: &str,
        member: &str,
        max: usize,
    ) -> TopicEvent {
        if control.link.is_some() {
            let joining = if control.leaving {
                Vec::new()
            } else {
                vec![member.to_owned()]
            };
            match self.touch(topic, &joining, Some(max)).await {
                Ok((total, members)) => {
                    if !joining.is_empty() {
                        control
                            .registered
                            .entry(topic.to_owned())
                            .or_default()
                            .insert(member.to_owned());
                    }
                    let listed = u64::try_from(members.len()).unwrap_or(u64::MAX);
                    return TopicEvent::Snapshot {
                        truncated: total > listed,
                        members,
                    };
                }
                Err(e) => tracing::warn!(topic, error = %e, "presence join failed"),
            }
        }
        // Without Redis only this node's members are known: the keeper adds this member
        // once Redis is back, and the snapshot says it may be incomplete.
        let members = self
            .local
            .members(topic)
            .into_iter()
            .filter(|(m, sessions)| m != member || *sessions > 1)
            .map(|(m, _)| m)
            .take(max)
            .collect();
        TopicEvent::Snapshot {
            members,
            truncated: true,
        }
    }

    /// One message from the link, in Redis's order.
    fn receive(&self, channel: &str, payload: &[u8]) {
        let Some(topic) = self.names.topic_of(channel) else {
            return;
        };
        if self.local.position(topic).is_none() {
            // Not held here: left over from a subscription undone long ago.
            return;
        }
        match wire::decode(payload) {
            Some(wire::Wire::Message {
                epoch,
                seq,
                origin,
                counter,
                flags,
                payload,
            }) => {
                bump(&self.stats.received, 1);
                if origin == self.node && lock(&self.own).skip_echo(counter, flags) {
                    return;
                }
                let at = StreamPosition::new(Epoch::new(epoch), seq);
                self.deliver_numbered(topic, at, Bytes::copy_from_slice(payload));
            }
            Some(wire::Wire::Join(member)) if self.presence_of(topic).is_some() => {
                let event = TopicEvent::Join(member.to_owned());
                self.local.deliver(topic, &event, Some(member));
            }
            Some(wire::Wire::Leave(member)) if self.presence_of(topic).is_some() => {
                let event = TopicEvent::Leave(member.to_owned());
                self.local.deliver(topic, &event, None);
            }
            Some(_) => {}
            None => tracing::warn!(topic, "malformed message on a topic channel ignored"),
        }
    }
}
