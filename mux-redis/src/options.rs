//! Options shared by the hub and the quota store, every default justified.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::BrokerError;

/// How to use Redis. `#[non_exhaustive]`: start from [`RedisOptions::default`] and use the
/// builder methods.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Prepended to every key and channel, so several applications (or test runs) share one
    /// Redis. Default `mux:`.
    pub prefix: String,
    /// Every command's deadline, reconnection included; past it the call fails
    /// ([`PublishError`](crate::PublishError), a
    /// [`QuotaError`](mux_tokio::quota::QuotaError)). Default 500 ms: a handshake waits at
    /// most this long for its quota, well inside the server's handshake deadline.
    pub command_timeout: Duration,
    /// One connection attempt's deadline. Default 1 s.
    pub connect_timeout: Duration,
    /// The pub/sub link's reconnection backoff: from `reconnect_min`, doubling, up to
    /// `reconnect_max`. Default 50 ms to 2 s: a restarted Redis is back in use within 2 s.
    pub reconnect_min: Duration,
    /// See `reconnect_min`.
    pub reconnect_max: Duration,
    /// How often the pub/sub link is pinged, so a Redis that stopped answering without
    /// closing the connection is noticed. Default 5 s.
    pub ping_interval: Duration,
    /// A node's members leave every other node at most this long after it stops refreshing
    /// them (it died or lost Redis). Refreshed every third of it. Default 30 s.
    pub presence_ttl: Duration,
    /// How long a topic's sequence number (and so its epoch) outlives its last publish.
    /// Default 24 h; when it expires the numbering restarts in a new epoch, which subscribers
    /// see as a reset (a position event and a gap of unknown count) and resuming clients
    /// cannot resume exactly. A history (`TopicOptions::history`) expires sooner, with its
    /// age; a resumption after that gets an exact gap.
    pub sequence_ttl: Duration,
    /// This node's id in presence entries and published messages: letters, digits, `-` and
    /// `_` only, at most 64. Default: 16 random hex digits per hub.
    pub node_id: Option<String>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "mux:".to_owned(),
            command_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            ping_interval: Duration::from_secs(5),
            presence_ttl: Duration::from_secs(30),
            sequence_ttl: Duration::from_secs(24 * 3600),
            node_id: None,
        }
    }
}

impl RedisOptions {
    /// Builder: the key and channel prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Builder: every command's deadline.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Builder: the presence TTL (at least 30 ms, so that a third of it is a usable period).
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.presence_ttl = ttl.max(Duration::from_millis(30));
        self
    }

    /// Builder: the pub/sub link's ping period.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Builder: the pub/sub link's reconnection backoff.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// Builder: this node's id (see [`RedisOptions::node_id`]).
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// The node id to use: the configured one, checked, or a random one.
    pub(crate) fn resolve_node_id(&self) -> Result<String, BrokerError> {
        match &self.node_id {
            Some(id) => {
                let valid = !id.is_empty()
                    && id.len() <= 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if valid {
                    Ok(id.clone())
                } else {
                    Err(BrokerError::InvalidOption(
                        "node_id: 1 to 64 letters, digits, '-' or '_'",
                    ))
                }
            }
            None => {
                // RandomState is seeded from the OS per process and varies per instance.
                let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
                hasher.write_u32(std::process::id());
                Ok(format!("{:016x}", hasher.finish()))
            }
        }
    }

    /// The ConnectionManager settings of the hub and the quota store: our deadlines, and a
    /// reconnection that gives up quickly so a command fails within `command_timeout` (the
    /// next command tries again).
    pub(crate) fn manager_config(&self) -> redis::aio::ConnectionManagerConfig {
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_number_of_retries(1)
            .set_min_delay(self.reconnect_min)
            .set_max_delay(self.reconnect_max)
    }

    /// Milliseconds of `d` for Redis, at least 1.
    pub(crate) fn millis(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    }
}
