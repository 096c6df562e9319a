//! Topics: scoped fan-out with per-subscriber backpressure and presence (spec/topics.md).
//!
//! A session becomes a subscriber only by being *attached* after the application's
//! authorizer accepted it, and only to the topic it was authorized for: its kind. A client's
//! claim alone never subscribes anything. Publishing never waits for any subscriber: the
//! message goes straight into each subscriber's session while it has credit, and into the
//! subscriber's own bounded queue when it has not, so a slow subscriber only ever delays
//! itself. No task runs per subscriber.

mod envelope;
mod local;

pub use envelope::{decode, TopicEvent};
pub use local::{LocalHub, Subscription, TopicWatch};

use bytes::Bytes;

use crate::session::Session;

/// What to do when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Drop the oldest queued message and tell the subscriber how many it missed (a gap).
    #[default]
    DropOldest,
    /// Close the session with 4008 SLOW_CONSUMER.
    Close,
}

/// Per-subscriber choices, made at attach time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// What a full queue does. Default drop-oldest.
    pub policy: SlowConsumerPolicy,
    /// Messages queued for this subscriber at most. Default 64.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TopicOptions {
    /// Send join/leave events and a snapshot of who is present to each new subscriber.
    pub presence: bool,
    /// Members listed in a snapshot at most; more are reported as truncated. Default 0 means
    /// 256.
    pub max_snapshot: usize,
}

impl TopicOptions {
    /// Presence on, with a snapshot of at most `max_snapshot` members.
    pub fn with_presence(max_snapshot: usize) -> Self {
        TopicOptions {
            presence: true,
            max_snapshot,
        }
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
pub trait Hub: Send + Sync + 'static {
    /// Queues `message` for every current subscriber of `topic`, encoded once and shared.
    /// Never waits for a subscriber; a networked hub may wait for its broker.
    fn publish(
        &self,
        topic: &str,
        message: Bytes,
    ) -> impl std::future::Future<Output = Result<PublishReport, HubError>> + Send;

    /// Subscribes an accepted `session` to the topic it was authorized for (its kind), until
    /// the returned [`Subscription`] is dropped or the session ends.
    fn attach(
        &self,
        session: &Session,
        options: SubscribeOptions,
    ) -> impl std::future::Future<Output = Result<Subscription, AttachError>> + Send;
}
