//! One connection: the state its handles share ([`state`]), the future that does its I/O
//! ([`io`]), and the handle to it ([`ConnectionHandle`]).
//!
//! Every queue is bounded: the protocol caps each session's queues and the connection's
//! buffers; the handles keep only wakers of tasks that are waiting; authorization tasks are
//! bounded by the protocol's pending-open cap.

mod io;
pub(crate) mod state;
mod wake;

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use mux_proto::{CloseCode, Config, ConnectionStats, Credential, SessionId, Side};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::auth::{Authorizer, Principal};
use crate::budget::Charge;
use crate::error::OpenError;
use crate::quota::QuotaPolicy;
use crate::session::Session;
use crate::transport::Transport;
pub(crate) use state::random_seed;
use state::Inner;

/// Knobs of the connection driver.
#[derive(Debug, Clone)]
pub(crate) struct DriverOptions {
    /// A write that does not complete in this long means the peer stopped reading.
    pub(crate) write_timeout: Duration,
    /// Deadline for the authorization hook.
    pub(crate) authorize_timeout: Duration,
    /// The account of the server's memory budget this connection reports to.
    pub(crate) charge: Option<Arc<Charge>>,
    /// Bytes charged for the connection's fixed state (its read buffer included).
    pub(crate) fixed_cost: usize,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            write_timeout: Duration::from_secs(10),
            authorize_timeout: Duration::from_secs(4),
            charge: None,
            fixed_cost: 0,
        }
    }
}

/// Where sessions the peer opens go: the authorizer decides, accepted ones are queued here.
#[derive(Clone)]
pub(crate) struct Acceptor {
    /// Shared with every session the connection accepts (no copy per session).
    pub(crate) principal: Option<Arc<Principal>>,
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) accepted: mpsc::Sender<Session>,
    /// Quotas per principal (server side only).
    pub(crate) quotas: Option<QuotaPolicy>,
}

/// How a connection ended.
#[derive(Debug, Clone)]
pub struct ConnectionOutcome {
    /// The close code, if the connection closed with one.
    pub code: Option<CloseCode>,
    /// The final counters.
    pub stats: ConnectionStats,
}

/// A cheap handle to a running connection.
///
/// Its methods act on the connection's shared state directly; none of them waits for the
/// driver, so none of them has a cancellation hazard beyond what each documents.
#[derive(Clone)]
pub struct ConnectionHandle {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl ConnectionHandle {
    /// Opens a session and waits for the peer's decision.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it resolves cancels the session: an OPEN still
    /// unanswered is reset with 4010 CANCELLED, one the peer already accepted is closed
    /// with 4010. No session is left behind.
    pub async fn open(
        &self,
        kind: &str,
        auth: impl Into<Credential>,
    ) -> Result<Session, OpenError> {
        let auth = auth.into();
        let mut open = PendingOpen {
            inner: &self.inner,
            id: None,
        };
        let (id, may_send) = poll_fn(|cx| {
            self.inner
                .with(|state, wakers| state.poll_open(cx, kind, &auth, &mut open.id, wakers))
        })
        .await?;
        Ok(Session::new(
            self.inner.clone(),
            id,
            Arc::from(kind),
            None,
            may_send,
        ))
    }

    /// The connection's counters; `None` once it has ended.
    pub async fn stats(&self) -> Option<ConnectionStats> {
        let state = self.inner.lock();
        (!state.ended).then(|| state.conn.stats())
    }

    /// Starts a graceful shutdown (GOAWAY, then close 1001 when sessions finish).
    pub async fn go_away(&self) {
        self.inner.with(|state, wakers| {
            let now = state.now();
            state
                .conn
                .go_away(now, CloseCode::GOING_AWAY, "shutting down");
            state.after_command(wakers);
        });
    }

    /// Closes the connection now.
    pub async fn close(&self, code: CloseCode, reason: &str) {
        self.close_soon(code, reason);
    }

    /// Closes the connection with `code` without waiting (for `Drop`).
    pub(crate) fn close_soon(&self, code: CloseCode, reason: &str) {
        self.inner.with(|state, wakers| {
            let now = state.now();
            state.conn.close(now, code, reason);
            state.after_command(wakers);
        });
    }

    /// Revokes every live session of the connection with 4007 REVOKED (its principal's
    /// rights changed): each ends at once, nothing more is delivered or sent on it, and the
    /// connection stays up for sessions opened afterwards. Returns how many were revoked.
    pub fn revoke_sessions(&self, reason: &str) -> usize {
        self.inner.with(|state, wakers| {
            let now = state.now();
            let ids: Vec<SessionId> = state.conn.session_ids().collect();
            let revoked = ids
                .into_iter()
                .filter(|id| state.conn.revoke(now, *id, reason).is_ok())
                .count();
            state.after_command(wakers);
            revoked
        })
    }

    /// True once the connection's driver has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().ended
    }
}

/// The part of an `open` that must be undone if its future is dropped.
struct PendingOpen<'a> {
    inner: &'a Arc<Inner>,
    id: Option<SessionId>,
}

impl Drop for PendingOpen<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.inner
                .with(|state, wakers| state.abandon_open(id, wakers));
        }
    }
}

/// The connection's handle and its driver future, for a caller that runs the driver in a
/// task it already has (the server's per-connection task): one task per connection.
pub(crate) fn connection<T: Transport>(
    transport: T,
    side: Side,
    config: Config,
    options: DriverOptions,
    acceptor: Acceptor,
    span: tracing::Span,
) -> (
    ConnectionHandle,
    impl std::future::Future<Output = ConnectionOutcome> + Send + 'static,
) {
    let inner = Arc::new(Inner::new(side, config));
    inner.lock().charge = options.charge.clone();
    let handle = ConnectionHandle {
        inner: inner.clone(),
    };
    let driver = io::Driver::new(inner, transport, options, acceptor);
    (handle, driver.run().instrument(span))
}

/// Starts the connection's driver on `transport` as its own task.
pub(crate) fn spawn_connection<T: Transport>(
    transport: T,
    side: Side,
    config: Config,
    options: DriverOptions,
    acceptor: Acceptor,
    span: tracing::Span,
) -> (ConnectionHandle, tokio::task::JoinHandle<ConnectionOutcome>) {
    let (handle, driver) = connection(transport, side, config, options, acceptor, span);
    (handle, tokio::spawn(driver))
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use super::*;
    use crate::transport::TungsteniteTransport;

    type Ws = TungsteniteTransport<tokio::io::DuplexStream>;

    fn output_size<A, R>(_: fn(A) -> R) -> usize {
        size_of::<R>()
    }

    /// What every idle session costs the driver (BENCHMARKS.md P7): its slot, inline in the
    /// handles' table, and its `Session` handle. Waiters and the close reason are boxed on
    /// first use; a change that grows these should box something too.
    #[test]
    fn an_idle_session_costs_the_driver_little() {
        // 104 bytes with the waiter lists and the close reason inline.
        let stopwatch = size_of::<crate::observe::Stopwatch>();
        assert!(size_of::<state::Slot>() <= 40 + stopwatch);
        // 120 bytes with a `String` kind, the principal copied and the reason inline.
        assert!(size_of::<Session>() <= 56, "{}", size_of::<Session>());
    }

    /// The connection's future holds the driver once, not twice (an `async fn` taking
    /// `self` stores it as the argument and again as the binding), and not the close path's
    /// futures either: together those were 1.1 KB of every connection's task.
    #[test]
    fn the_driver_future_is_the_driver() {
        let driver = size_of::<io::Driver<Ws>>();
        let future = output_size(io::Driver::<Ws>::run);
        assert!(future <= driver + 64, "future {future}, driver {driver}");
    }
}
