//! Typed errors: what Redis did (or did not do), and what a failed publish still did here.

use std::time::Duration;

use mux_tokio::topic::PublishReport;

/// Why a call to Redis failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within [`RedisOptions::command_timeout`](crate::RedisOptions).
    #[error("redis did not answer within {after:?}")]
    Timeout {
        /// The timeout that passed.
        after: Duration,
    },
    /// Redis answered something the scripts never return (another program on the keys?).
    #[error("unexpected reply from redis: {0}")]
    Reply(&'static str),
    /// An option is unusable (see the option's documentation).
    #[error("invalid option: {0}")]
    InvalidOption(&'static str),
}

/// A publish that did not reach Redis, or whose outcome Redis did not confirm.
///
/// The message was still handed to this node's subscribers (`local`), so delivery on this
/// node continues while Redis is away; other nodes did not receive it, or may have if Redis
/// ran it but its answer was lost. Publishing it again delivers it here twice.
///
/// [`RedisHub`](crate::RedisHub)'s [`Hub::publish`](mux_tokio::topic::Hub::publish) returns
/// it inside [`HubError::Backend`](mux_tokio::topic::HubError::Backend); downcast to read it.
#[derive(Debug, thiserror::Error)]
#[error("publish not confirmed by redis (delivered on this node only): {source}")]
#[non_exhaustive]
pub struct PublishError {
    /// What this node's subscribers got.
    pub local: PublishReport,
    /// Why Redis did not confirm it.
    #[source]
    pub source: BrokerError,
}
