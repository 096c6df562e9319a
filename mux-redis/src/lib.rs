//! Redis for [`mux_tokio`] across nodes: a topic [`Hub`](mux_tokio::topic::Hub) over Redis
//! pub/sub with presence, and a [`QuotaStore`](mux_tokio::quota::QuotaStore) whose budgets
//! every node shares.
//!
//! - [`RedisHub`]: a publish on any node reaches every subscriber of the topic on every node,
//!   once, in one order per topic (Redis's). Each node subscribes to a topic's channel only
//!   while it has subscribers of it, and keeps them in a
//!   [`LocalHub`](mux_tokio::topic::LocalHub), so queues, slow-consumer policies and gaps
//!   work as on one node (`spec/topics.md`); a node that missed messages while its link was
//!   down hands its subscribers those the topic's history in Redis still holds, in order,
//!   and tells them how many it lost beyond those. A publish is one Redis round trip whatever the
//!   number of subscribers. Presence is kept in Redis with a TTL that each node refreshes:
//!   snapshots list every node's members, joins and leaves reach every node, and a node that
//!   dies has its members leave everywhere within the TTL.
//! - [`RedisQuotas`]: handshakes, session opens and messages per principal (or address),
//!   charged by one atomic Lua GCRA script; a client that reconnects to another node stays
//!   inside one budget. While Redis is unreachable the server's
//!   [`QuotaPolicy::on_error`](mux_tokio::quota::QuotaPolicy) fails open or closed.
//!
//! Redis restarting or unreachable never panics a node or blocks it: every command has a
//! deadline ([`RedisOptions::command_timeout`]), local delivery goes on, publishes fail with
//! [`PublishError`], and everything recovers when Redis is back. One Redis (or a primary
//! with replicas); Redis Cluster is not supported yet, though every key of a topic shares
//! a hash tag.
//!
//! ```no_run
//! use mux_redis::{RedisHub, RedisOptions, RedisQuotas};
//! use mux_tokio::quota::{OnStoreError, Quotas};
//! use mux_tokio::topic::{Hub, SubscribeOptions, TopicOptions};
//! use mux_tokio::{AllowAll, OriginPolicy, Server, ServerConfig};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "redis://127.0.0.1:6379/";
//! let options = RedisOptions::default();
//! let hub = RedisHub::connect(url, options.clone()).await?;
//! hub.configure_topic("room", TopicOptions::with_presence(100));
//! let quotas = RedisQuotas::connect(url, &options, Quotas::default())?;
//! let config = ServerConfig::default()
//!     .origins(OriginPolicy::default().allow_missing(true))
//!     .quotas(quotas.policy(OnStoreError::Allow));
//! let mut server = Server::bind("127.0.0.1:9001".parse()?, config, AllowAll, AllowAll).await?;
//! while let Some(session) = server.accept().await {
//!     // Every session subscribes to the topic it was opened (and authorized) for.
//!     let subscription = hub.attach(&session, SubscribeOptions::default()).await?;
//!     tokio::spawn(async move {
//!         let _subscribed = subscription;
//!         session.closed().await;
//!     });
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Each topic has one stream across nodes (spec/topics.md#streams): the publish script numbers
//! every message in Redis (an epoch, the time Redis created the topic's counter, and a
//! sequence) and, for a topic configured with `TopicOptions::history(max_len, max_age)`,
//! appends it to a Redis Stream of at most `max_len` entries (expiring `max_age` after the
//! last publish), in the same atomic step and the same one round trip. Every node delivers
//! messages at Redis's offsets, so a position means the same on every node: a client that
//! reconnects to another node resumes there (spec/topics.md#resuming). The node reads the
//! topic's position and the history after the resume position from Redis before attaching
//! (one more round trip per resumption, and per first subscriber of a topic on a node), so
//! the subscriber receives exactly what it missed, or one gap with the exact count of what
//! Redis's history no longer holds. When Redis lost the counter (restarted without
//! persistence, or the key expired: [`RedisOptions::sequence_ttl`]) the next publish starts a
//! new epoch, which subscribers see as the documented reset: a position event and a gap of
//! unknown count. A resumption while Redis is unreachable starts from the node's own stream
//! (the same reset if it is not in the subscriber's epoch) within the command timeout; a
//! publish Redis did not number reaches this node's subscribers in a node-local epoch, and
//! the next numbered message brings them back to Redis's, both as resets.
#![forbid(unsafe_code)]

mod error;
mod hub;
mod options;
mod quota;
mod script;
#[cfg(feature = "testing")]
pub mod testing;
mod wire;

/// The redis crate this one runs on: [`BrokerError::Redis`] carries its errors.
pub use redis;

pub use error::{BrokerError, PublishError};
pub use hub::{Published, RedisHub, RedisHubStats};
pub use options::RedisOptions;
pub use quota::RedisQuotas;
