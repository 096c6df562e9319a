//! Typed errors: what Redis did, or did not do.

use std::time::Duration;

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
}
