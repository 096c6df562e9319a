//! Topics: scoped fan-out with per-subscriber backpressure, presence, and resumable streams
//! (spec/topics.md).
//!
//! A session becomes a subscriber only by being *attached* after the application's
//! authorizer accepted it, and only to the topic it was authorized for: its kind. A client's
//! claim alone never subscribes anything. Publishing never waits for any subscriber: the
//! message goes straight into each subscriber's session while it has credit, and into the
//! subscriber's own bounded queue when it has not, so a slow subscriber only ever delays
//! itself. No task runs per subscriber.
//!
//! Every message of a topic has an offset in the topic's stream, named by an [`Epoch`]. A
//! client that reconnects opens the topic again with its last [`StreamPosition`] in the kind
//! ([`TopicKind`]) and receives what it missed from the topic's bounded history, or one gap
//! event with the exact count of what history no longer holds. [`Client::subscribe`](crate::Client::subscribe)
//! (crate::Client::subscribe) does this across reconnects.
//!
//! # Server side
//!
//! ```no_run
//! # async fn run(mut server: mux_tokio::Server) {
//! use std::time::Duration;
//! use mux_tokio::topic::{LocalHub, SubscribeOptions, TopicOptions};
//!
//! let hub = LocalHub::new();
//! // The last 1,000 messages of "news", for up to 5 minutes, for subscribers that resume.
//! hub.configure_topic("news", TopicOptions::default().history(1_000, Duration::from_secs(300)));
//! while let Some(session) = server.accept().await {
//!     // The authorizer already decided on the topic (`TopicKind::parse(&open.kind)`).
//!     if let Ok(mut subscription) = hub.attach(&session, SubscribeOptions::default()) {
//!         // The subscription lasts while both the session and the subscription are held.
//!         tokio::spawn(async move {
//!             subscription.finished().await;
//!             drop(session);
//!         });
//!     }
//! }
//! # }
//! ```

mod envelope;
mod history;
mod kind;
mod local;
mod queue;
mod stream;

pub use envelope::{decode, MalformedEvent, TopicEvent};
pub use kind::{KindError, TopicKind, MAX_TOPIC_LEN};
pub use local::{LocalHub, Subscription, TopicWatch};
pub use stream::{TopicStream, TopicStreamError};

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::session::Session;

/// One lifetime of a topic's memory (spec/topics.md#streams). A new epoch means the stream
/// may have forgotten messages, so positions from another epoch cannot be resumed exactly.
///
/// Written as 16 lowercase hexadecimal digits, as the resumption kind carries it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(u64);

impl Epoch {
    /// The epoch with this value (for example a broker's, in a multi-node hub).
    pub const fn new(value: u64) -> Self {
        Epoch(value)
    }

    /// A random epoch, for a stream that starts now: two lifetimes of a topic do not share
    /// one (spec/topics.md, M-TOPIC-4).
    pub fn random() -> Self {
        Epoch(crate::driver::random_seed())
    }

    /// The value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Parses exactly 16 lowercase hexadecimal digits.
    pub fn parse(text: &str) -> Option<Self> {
        let lower = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
        if text.len() != 16 || !text.as_bytes().iter().all(lower) {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(Epoch)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({self})")
    }
}

/// Where a subscriber stands in a topic's stream: the epoch and the offset of the last
/// message it received or was told it will not receive (spec/topics.md#resuming, M-TOPIC-7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// The stream's epoch.
    pub epoch: Epoch,
    /// The offset; 0 before the stream's first message.
    pub offset: u64,
}

impl StreamPosition {
    /// A position.
    pub const fn new(epoch: Epoch, offset: u64) -> Self {
        StreamPosition { epoch, offset }
    }

    /// This position moved on by `event`, as a resuming client tracks it (M-TOPIC-7): a
    /// position event replaces it, a message sets the offset, a known gap adds its count.
    pub fn after(self, event: &TopicEvent) -> Self {
        match event {
            TopicEvent::Position(p) => *p,
            TopicEvent::Message { offset, .. } => StreamPosition {
                offset: *offset,
                ..self
            },
            TopicEvent::Gap(Some(n)) => StreamPosition {
                offset: self.offset.saturating_add(*n),
                ..self
            },
            _ => self,
        }
    }
}

/// What to do when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Drop the oldest queued message. It is delivered from history if history still holds
    /// it when the subscriber catches up; otherwise the subscriber gets a gap.
    #[default]
    DropOldest,
    /// Close the session with 4008 SLOW_CONSUMER (retryable: the client can resume).
    Close,
}

/// Per-subscriber choices, made at attach time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// What a full queue does. Default drop-oldest.
    pub policy: SlowConsumerPolicy,
    /// Live events queued for this subscriber at most. Default 64. A resumption's replay is
    /// read from the history, not queued.
    pub queue_capacity: usize,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            policy: SlowConsumerPolicy::DropOldest,
            queue_capacity: 64,
        }
    }
}

impl SubscribeOptions {
    /// Builder: the slow-consumer policy.
    pub fn policy(mut self, policy: SlowConsumerPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Builder: the queue bound (at least 1).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }
}

/// Per-topic choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicOptions {
    /// Send join/leave events and a snapshot of who is present to each new subscriber.
    pub presence: bool,
    /// Members listed in a snapshot at most; more are reported as truncated. Default 0 means
    /// 256.
    pub max_snapshot: usize,
    /// Messages kept for resuming subscribers at most. Default 0: no history. A history holds
    /// payloads the application published, so only it knows what `history_len` × its message
    /// size costs; without one, a resumption still learns the exact count it missed.
    pub history_len: usize,
    /// A message older than this leaves the history. Default 300 s.
    pub history_age: Duration,
}

impl Default for TopicOptions {
    fn default() -> Self {
        TopicOptions {
            presence: false,
            max_snapshot: 0,
            history_len: 0,
            history_age: Duration::from_secs(300),
        }
    }
}

impl TopicOptions {
    /// Presence on, with a snapshot of at most `max_snapshot` members.
    pub fn with_presence(max_snapshot: usize) -> Self {
        TopicOptions {
            presence: true,
            max_snapshot,
            ..TopicOptions::default()
        }
    }

    /// Builder: keep the last `max_len` messages, each for at most `max_age`.
    pub fn history(mut self, max_len: usize, max_age: Duration) -> Self {
        self.history_len = max_len;
        self.history_age = max_age;
        self
    }
}

/// Hub-wide choices for a [`LocalHub`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubOptions {
    /// The options of a topic not configured with [`LocalHub::configure_topic`].
    pub default_topic: TopicOptions,
    /// Topics without subscribers kept in memory at most (their epoch, offsets and history,
    /// for subscribers that come back); the one idle longest is dropped first. Default 1,024.
    pub max_idle_topics: usize,
    /// How long a topic without subscribers is kept. Default 300 s, the default history age,
    /// so a topic's history outlives a short absence of all its subscribers.
    pub idle_ttl: Duration,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            default_topic: TopicOptions::default(),
            max_idle_topics: 1024,
            idle_ttl: Duration::from_secs(300),
        }
    }
}

impl HubOptions {
    /// Builder: the options of unconfigured topics.
    pub fn default_topic(mut self, options: TopicOptions) -> Self {
        self.default_topic = options;
        self
    }

    /// Builder: how many idle topics are kept, and for how long.
    pub fn idle_topics(mut self, max: usize, ttl: Duration) -> Self {
        self.max_idle_topics = max;
        self.idle_ttl = ttl;
        self
    }
}

/// What one publish did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishReport {
    /// Subscribers the message was queued for.
    pub queued: usize,
    /// Subscribers whose oldest message was dropped to make room.
    pub dropped: usize,
    /// Subscribers closed as slow consumers.
    pub closed: usize,
    /// Where the message went in the topic's stream; `None` when the hub holds no stream for
    /// the topic (nobody subscribed and nobody is expected back), so the message went nowhere.
    pub position: Option<StreamPosition>,
}

/// Why a session could not be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The session's grant does not let the server send on it.
    #[error("the session's grant does not allow receiving topic messages")]
    NotPermitted,
    /// The session has already ended.
    #[error("the session has ended")]
    Closed,
    /// The kind names no topic: a U+0000 without a well-formed position after it
    /// (spec/topics.md, M-TOPIC-6).
    #[error(transparent)]
    InvalidKind(#[from] KindError),
}

/// Why a hub could not publish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The hub's broker (for a multi-node hub) failed or is unreachable.
    #[error("hub backend: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// A publish/subscribe hub. [`LocalHub`] is the in-process one; a multi-node broker (for
/// example over Redis) implements the same trait, usually around a `LocalHub` for the
/// subscribers on its own node, so application code does not change.
///
/// The methods are `async` so a hub can talk to its broker; [`LocalHub`]'s never wait.
///
/// # Streams across nodes
///
/// A multi-node hub owns the offsets: its broker assigns each message its [`StreamPosition`]
/// (an epoch for the broker's copy of the stream, which changes when the broker lost it), and
/// every node fans it out with [`LocalHub::publish_at`]. Before attaching any session, the
/// hub reads the broker's position and what the broker still holds after the session's
/// resume position ([`TopicKind::parse`] of its kind), and hands both to [`LocalHub::sync`]:
/// the local stream then has the broker's epoch (a fresh subscriber starts at the broker's
/// position, not at a node-local one), and the local attach replays the backlog,
/// deduplicated against what arrives live, with the same gap accounting as in one process.
/// `tests/topic_nodes.rs` is such a hub over a stand-in broker.
pub trait Hub: Send + Sync + 'static {
    /// Queues `message` for every current subscriber of `topic`, encoded once and shared,
    /// and reports the message's position in the topic's stream. Never waits for a
    /// subscriber; a networked hub may wait for its broker.
    fn publish(
        &self,
        topic: &str,
        message: Bytes,
    ) -> impl std::future::Future<Output = Result<PublishReport, HubError>> + Send;

    /// Subscribes an accepted `session` to the topic it was authorized for (the topic of its
    /// kind), until the returned [`Subscription`] is dropped or the session ends. A kind with
    /// a position resumes from it (spec/topics.md#resuming): the first event is a position,
    /// then the missed messages or a gap, then live ones.
    fn attach(
        &self,
        session: &Session,
        options: SubscribeOptions,
    ) -> impl std::future::Future<Output = Result<Subscription, AttachError>> + Send;
}
