//! [`RedisQuotas`]: mux-tokio's per-principal (and per-address) quotas kept in Redis, so
//! every node charges one budget: a client that reconnects to another node gets no fresh
//! one. Each charge is one atomic GCRA script (the same algorithm as
//! [`MemoryQuotas`](mux_tokio::quota::MemoryQuotas)), one round trip, on Redis's clock;
//! each key expires once it holds no information.

use std::sync::Arc;
use std::time::Duration;

use mux_tokio::quota::{
    OnStoreError, QuotaDecision, QuotaError, QuotaFuture, QuotaKey, QuotaKind, QuotaKinds,
    QuotaPolicy, QuotaStore, Quotas,
};
use mux_tokio::HandshakeRate;
use redis::aio::ConnectionManager;

use crate::script::{Lua, GCRA};
use crate::wire::Names;
use crate::{BrokerError, RedisOptions};

/// A [`QuotaStore`] in Redis, shared by every node. Cheap to clone.
///
/// When Redis is unreachable or slower than `command_timeout`, a charge fails with
/// [`QuotaError`] and the server's [`QuotaPolicy::on_error`] decides: admit (fail open) or
/// refuse (fail closed). [`RedisQuotas::policy`] sets it.
#[derive(Clone)]
pub struct RedisQuotas {
    inner: Arc<Inner>,
}

struct Inner {
    quotas: Quotas,
    names: Names,
    timeout: Duration,
    commands: ConnectionManager,
    gcra: Lua,
}

impl std::fmt::Debug for RedisQuotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQuotas")
            .field("quotas", &self.inner.quotas)
            .finish_non_exhaustive()
    }
}

impl RedisQuotas {
    /// A store enforcing `quotas` in the Redis at `url`. Returns at once (connecting on first
    /// use); fails only on a malformed URL.
    pub fn connect(
        url: &str,
        options: &RedisOptions,
        quotas: Quotas,
    ) -> Result<RedisQuotas, BrokerError> {
        let client = redis::Client::open(url)?;
        let commands = ConnectionManager::new_lazy_with_config(client, options.manager_config())?;
        Ok(RedisQuotas {
            inner: Arc::new(Inner {
                quotas,
                names: Names::new(&options.prefix),
                timeout: options.command_timeout,
                commands,
                gcra: Lua::new(GCRA),
            }),
        })
    }

    /// The server's quota policy with this store: the kinds that have a rate are charged,
    /// and `on_error` decides while Redis is unreachable.
    pub fn policy(self, on_error: OnStoreError) -> QuotaPolicy {
        let quotas = self.inner.quotas;
        QuotaPolicy {
            kinds: QuotaKinds {
                handshakes: quotas.handshakes.per_second > 0,
                opens: quotas.opens.per_second > 0,
                messages: quotas.messages.per_second > 0,
            },
            store: Arc::new(self),
            on_error,
        }
    }

    /// Charges `cost` units of `kind` to `key` (what the server calls through
    /// [`QuotaStore::charge`]).
    pub async fn charge_now(
        &self,
        kind: QuotaKind,
        key: &QuotaKey,
        cost: u32,
    ) -> Result<QuotaDecision, BrokerError> {
        let (rate, tag) = match kind {
            QuotaKind::Handshakes => (self.inner.quotas.handshakes, "h"),
            QuotaKind::Opens => (self.inner.quotas.opens, "o"),
            QuotaKind::Messages => (self.inner.quotas.messages, "m"),
            // A kind added to mux-tokio later has no quota here until configured.
            _ => return Ok(QuotaDecision::Allowed),
        };
        let Some((interval, tolerance)) = gcra_params(rate) else {
            return Ok(QuotaDecision::Allowed);
        };
        if cost == 0 {
            return Ok(QuotaDecision::Allowed);
        }
        let whose = match key {
            QuotaKey::Principal(id) => format!("p:{id}"),
            QuotaKey::Ip(ip) => format!("ip:{ip}"),
            _ => return Ok(QuotaDecision::Allowed),
        };
        let key = self.inner.names.quota(tag, &whose);
        let mut con = self.inner.commands.clone();
        let after = self.inner.timeout;
        let call = self.inner.gcra.run::<(i64, i64)>(&mut con, 1, |c| {
            c.arg(&key).arg(interval).arg(tolerance).arg(cost);
        });
        let (allowed, wait_us) = tokio::time::timeout(after, call)
            .await
            .unwrap_or(Err(BrokerError::Timeout { after }))?;
        Ok(if allowed == 1 {
            QuotaDecision::Allowed
        } else {
            QuotaDecision::Limited {
                retry_after: Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)),
            }
        })
    }
}

/// GCRA's interval and tolerance in µs for `rate`; `None` when it has no limit.
fn gcra_params(rate: HandshakeRate) -> Option<(u64, u64)> {
    if rate.per_second == 0 {
        return None;
    }
    let interval = 1_000_000u64.checked_div(u64::from(rate.per_second))?.max(1);
    let tolerance = interval.saturating_mul(u64::from(rate.burst.saturating_sub(1)));
    Some((interval, tolerance))
}

impl QuotaStore for RedisQuotas {
    fn charge(&self, kind: QuotaKind, key: &QuotaKey, cost: u32) -> QuotaFuture {
        let store = self.clone();
        let key = key.clone();
        Box::pin(async move {
            store
                .charge_now(kind, &key, cost)
                .await
                .map_err(|e| QuotaError(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_params_match_the_in_memory_store() {
        let rate = |per_second, burst| HandshakeRate { per_second, burst };
        assert_eq!(gcra_params(rate(0, 10)), None);
        assert_eq!(gcra_params(rate(1, 5)), Some((1_000_000, 4_000_000)));
        assert_eq!(gcra_params(rate(4, 1)), Some((250_000, 0)));
        assert_eq!(gcra_params(rate(u32::MAX, 2)), Some((1, 1)));
    }
}
