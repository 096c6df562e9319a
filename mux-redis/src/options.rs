//! Options for Redis, every default justified.

use std::time::Duration;

/// How to use Redis. `#[non_exhaustive]`: start from [`RedisOptions::default`] and use the
/// builder methods.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Prepended to every key, so several applications (or test runs) share one Redis.
    /// Default `mux:`.
    pub prefix: String,
    /// Every command's deadline, reconnection included; past it the call fails (a
    /// [`QuotaError`](mux_tokio::quota::QuotaError)). Default 500 ms: a handshake waits at
    /// most this long for its quota, well inside the server's handshake deadline.
    pub command_timeout: Duration,
    /// One connection attempt's deadline. Default 1 s.
    pub connect_timeout: Duration,
    /// The reconnection backoff: from `reconnect_min`, doubling, up to `reconnect_max`.
    /// Default 50 ms to 2 s: a restarted Redis is back in use within 2 s.
    pub reconnect_min: Duration,
    /// See `reconnect_min`.
    pub reconnect_max: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "mux:".to_owned(),
            command_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
        }
    }
}

impl RedisOptions {
    /// Builder: the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Builder: every command's deadline.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Builder: the reconnection backoff.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// The ConnectionManager settings: our deadlines, and a reconnection that gives up
    /// quickly so a command fails within `command_timeout` (the next command tries again).
    pub(crate) fn manager_config(&self) -> redis::aio::ConnectionManagerConfig {
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_number_of_retries(1)
            .set_min_delay(self.reconnect_min)
            .set_max_delay(self.reconnect_max)
    }
}
