//! Quotas that outlive a connection: handshakes, session opens and messages per second,
//! summed over all of a principal's (or an address's) connections, so a client that
//! reconnects gets no fresh budget (seed 003 §3.3). Behind [`QuotaStore`], so a store shared
//! by several nodes (Redis) can replace the in-memory default.
//!
//! Messages are charged in leases: a connection takes [`MESSAGE_LEASE`] messages at a time
//! from the store and spends them locally, so the store is asked once per lease, not once
//! per message. What a principal can exceed its rate by is at most one lease per live
//! connection.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::server::HandshakeRate;

/// Messages a connection takes from the store at once.
pub const MESSAGE_LEASE: u32 = 64;

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuotaKind {
    /// Upgrades that passed authentication.
    Handshakes,
    /// Sessions the peer opens.
    Opens,
    /// DATA messages the peer sends.
    Messages,
}

/// Whose budget.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuotaKey {
    /// An authenticated principal (its [`Principal::id`](crate::Principal)).
    Principal(String),
    /// A client address.
    Ip(IpAddr),
}

/// A store's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaDecision {
    /// Charged.
    Allowed,
    /// Over the quota: nothing charged; the next unit is available after this long.
    Limited {
        /// When to try again.
        retry_after: Duration,
    },
}

/// Why a store could not decide (a shared store that is unreachable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quota store unavailable: {0}")]
pub struct QuotaError(pub String);

/// A boxed store decision.
pub type QuotaFuture = Pin<Box<dyn Future<Output = Result<QuotaDecision, QuotaError>> + Send>>;

/// Where quotas are kept and charged. The server calls it once per handshake, once per
/// session open, and once per [`MESSAGE_LEASE`] messages of a connection.
///
/// A store error is handled by the server's [`QuotaPolicy::on_error`]: admit (fail open) or
/// refuse (fail closed).
pub trait QuotaStore: Send + Sync + 'static {
    /// Charges `cost` units of `kind` to `key`, or says when they would be available.
    fn charge(&self, kind: QuotaKind, key: &QuotaKey, cost: u32) -> QuotaFuture;

    /// Forgets what no longer limits anyone (keys whose budget is whole again), so that a
    /// burst of many principals leaves no memory behind once it has passed. The server
    /// calls it about once a second; it must not wait. The default does nothing (a shared
    /// store expires its keys itself).
    fn sweep(&self) {}
}

/// What the server does when its store cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreError {
    /// Admit, as if there were no quota (availability first). The default.
    #[default]
    Allow,
    /// Refuse, as if over the quota (enforcement first).
    Refuse,
}

/// The quotas the server applies, and where it keeps them.
#[derive(Clone)]
pub struct QuotaPolicy {
    /// The store; the in-memory [`MemoryQuotas`] unless the application sets another.
    pub store: Arc<dyn QuotaStore>,
    /// Whether the server asks the store about a kind at all (a kind the store has no
    /// quota for costs nothing, but a shared store would still be asked).
    pub kinds: QuotaKinds,
    /// What a store error means.
    pub on_error: OnStoreError,
}

/// Which kinds the server charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaKinds {
    /// Handshakes per principal.
    pub handshakes: bool,
    /// Session opens per principal.
    pub opens: bool,
    /// Messages per principal.
    pub messages: bool,
}

impl fmt::Debug for QuotaPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaPolicy")
            .field("kinds", &self.kinds)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

impl Default for QuotaPolicy {
    /// Handshakes per principal, 16/s with bursts of 64, in memory; opens and messages
    /// are limited per connection by the protocol and per principal only when configured.
    fn default() -> Self {
        QuotaPolicy::memory(Quotas::default())
    }
}

impl QuotaPolicy {
    /// No quotas per principal (the per-connection limits of the protocol still apply).
    pub fn none() -> Self {
        QuotaPolicy::memory(Quotas {
            handshakes: HandshakeRate::UNLIMITED,
            opens: HandshakeRate::UNLIMITED,
            messages: HandshakeRate::UNLIMITED,
        })
    }

    /// In-memory quotas (one node).
    pub fn memory(quotas: Quotas) -> Self {
        QuotaPolicy {
            kinds: QuotaKinds {
                handshakes: quotas.handshakes.per_second > 0,
                opens: quotas.opens.per_second > 0,
                messages: quotas.messages.per_second > 0,
            },
            store: Arc::new(MemoryQuotas::new(quotas)),
            on_error: OnStoreError::Allow,
        }
    }

    /// Asks the store; a store error becomes the policy's answer.
    pub(crate) async fn charge(&self, kind: QuotaKind, key: &QuotaKey, cost: u32) -> QuotaDecision {
        match self.store.charge(kind, key, cost).await {
            Ok(decision) => decision,
            Err(e) => {
                tracing::warn!(error = %e, ?kind, "quota store unavailable");
                match self.on_error {
                    OnStoreError::Allow => QuotaDecision::Allowed,
                    OnStoreError::Refuse => QuotaDecision::Limited {
                        retry_after: Duration::from_secs(1),
                    },
                }
            }
        }
    }
}

/// Rates per principal, each `per_second` with bursts of `burst` (0 per second: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Authenticated handshakes. Default 16/s, bursts of 64.
    pub handshakes: HandshakeRate,
    /// Session opens. Default none (the protocol limits each connection to 100/s).
    pub opens: HandshakeRate,
    /// DATA messages. Default none (the protocol's rate limits apply per session and
    /// connection).
    pub messages: HandshakeRate,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            handshakes: HandshakeRate {
                per_second: 16,
                burst: 64,
            },
            opens: HandshakeRate::UNLIMITED,
            messages: HandshakeRate::UNLIMITED,
        }
    }
}

/// Keys remembered per kind at most; stale ones are swept first, and past the bound a new
/// key is admitted without being stored (see `server::rate`).
const MAX_KEYS: usize = 65_536;

/// GCRA quotas in memory, for one node: one timestamp per key and kind, bounded.
pub struct MemoryQuotas {
    quotas: Quotas,
    tables: Mutex<[crate::server::KeyedRate<QuotaKey>; 3]>,
}

impl fmt::Debug for MemoryQuotas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryQuotas")
            .field("quotas", &self.quotas)
            .finish_non_exhaustive()
    }
}

impl MemoryQuotas {
    /// A store enforcing `quotas`.
    pub fn new(quotas: Quotas) -> Self {
        let table = |rate| crate::server::KeyedRate::new(rate, MAX_KEYS);
        MemoryQuotas {
            quotas,
            tables: Mutex::new([
                table(quotas.handshakes),
                table(quotas.opens),
                table(quotas.messages),
            ]),
        }
    }

    /// Charges synchronously (the store never waits).
    pub fn charge_now(&self, kind: QuotaKind, key: &QuotaKey, cost: u32) -> QuotaDecision {
        let index = match kind {
            QuotaKind::Handshakes => 0,
            QuotaKind::Opens => 1,
            QuotaKind::Messages => 2,
        };
        let mut tables = self
            .tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(table) = tables.get_mut(index) else {
            return QuotaDecision::Allowed;
        };
        match table.check_n(key, cost, Instant::now()) {
            Ok(()) => QuotaDecision::Allowed,
            Err(retry_after) => QuotaDecision::Limited { retry_after },
        }
    }

    /// Keys remembered now, over every kind (zero once every budget is whole again and the
    /// store has been swept).
    pub fn remembered(&self) -> usize {
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(crate::server::KeyedRate::len)
            .sum()
    }
}

impl QuotaStore for MemoryQuotas {
    fn charge(&self, kind: QuotaKind, key: &QuotaKey, cost: u32) -> QuotaFuture {
        Box::pin(std::future::ready(Ok(self.charge_now(kind, key, cost))))
    }

    fn sweep(&self) {
        let now = Instant::now();
        let mut tables = self
            .tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for table in tables.iter_mut() {
            table.sweep(now);
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_principals_is_forgotten_once_their_budgets_are_whole() {
        let store = MemoryQuotas::new(Quotas::default());
        for i in 0..3000 {
            let key = QuotaKey::Principal(format!("p{i}"));
            assert_eq!(
                store.charge_now(QuotaKind::Handshakes, &key, 1),
                QuotaDecision::Allowed
            );
        }
        assert_eq!(store.remembered(), 3000);
        // 16/s: one handshake each is whole again after 1/16 s. Not yet:
        tokio::time::advance(Duration::from_millis(40)).await;
        store.sweep();
        assert_eq!(store.remembered(), 3000);
        tokio::time::advance(Duration::from_millis(40)).await;
        store.sweep();
        assert_eq!(store.remembered(), 0);
        let capacity = store
            .tables
            .lock()
            .unwrap()
            .iter()
            .map(crate::server::KeyedRate::capacity)
            .max()
            .unwrap();
        assert!(capacity <= 128, "capacity {capacity} after the sweep");
    }

    #[tokio::test(start_paused = true)]
    async fn principals_share_one_budget_and_kinds_are_separate() {
        let store = MemoryQuotas::new(Quotas {
            handshakes: HandshakeRate {
                per_second: 1,
                burst: 2,
            },
            opens: HandshakeRate {
                per_second: 10,
                burst: 10,
            },
            messages: HandshakeRate::UNLIMITED,
        });
        let alice = QuotaKey::Principal("alice".into());
        let bob = QuotaKey::Principal("bob".into());
        assert_eq!(
            store.charge_now(QuotaKind::Handshakes, &alice, 1),
            QuotaDecision::Allowed
        );
        assert_eq!(
            store.charge_now(QuotaKind::Handshakes, &alice, 1),
            QuotaDecision::Allowed
        );
        assert!(matches!(
            store.charge_now(QuotaKind::Handshakes, &alice, 1),
            QuotaDecision::Limited { .. }
        ));
        assert_eq!(
            store.charge_now(QuotaKind::Handshakes, &bob, 1),
            QuotaDecision::Allowed
        );
        assert_eq!(
            store.charge_now(QuotaKind::Opens, &alice, 10),
            QuotaDecision::Allowed
        );
        assert!(matches!(
            store.charge_now(QuotaKind::Opens, &alice, 1),
            QuotaDecision::Limited { .. }
        ));
        assert_eq!(
            store.charge_now(QuotaKind::Messages, &alice, 1_000_000),
            QuotaDecision::Allowed
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            store.charge_now(QuotaKind::Handshakes, &alice, 1),
            QuotaDecision::Allowed
        );
    }
}
