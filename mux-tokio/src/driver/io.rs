//! The one future per connection that does its I/O: it reads WebSocket messages into the
//! protocol, writes every pending transmit with one flush per batch, sleeps on one timer,
//! and runs the authorizer for sessions the peer opens. Handles never wait on it; they
//! only wake it when they gave it something to write.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use mux_proto::{CloseCode, Grant, Phase, SessionId};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant, Sleep};
use tracing::{debug, trace, warn};

use super::state::{IncomingOpen, Inner};
use super::{Acceptor, ConnectionOutcome, DriverOptions};
use crate::auth::{Principal, Rejection};
use crate::budget::Part;
use crate::quota::{QuotaDecision, QuotaKey, QuotaKind, QuotaPolicy, MESSAGE_LEASE};
use crate::session::{OpenInfo, Session};
use crate::transport::{Transport, WsMessage};

/// How long a closing connection keeps reading (and discarding) for the peer's answer to
/// its Close; see [`Driver::linger`].
const LINGER: Duration = Duration::from_secs(1);

/// A lingering close ends once the peer has sent nothing for this long.
const LINGER_QUIET: Duration = Duration::from_millis(100);

/// What the driver reads in one poll before it yields to the scheduler, in units of one
/// per WebSocket message plus one per [`READ_UNIT_BYTES`] of it: a peer flooding small
/// messages or control frames, or one sending large ones, holds the worker thread for a
/// bounded stretch (tens of microseconds) before other connections run, which is what keeps
/// their latency when one connection is busy or hostile.
const READ_SLICE: usize = 64;

/// Bytes of a message that cost one more unit of the read slice.
const READ_UNIT_BYTES: usize = 4096;

/// Transmits written per pass before one flush.
const WRITE_BATCH: usize = 32;

/// The smallest transmit buffer reserved: what an idle connection keeps (P7). A control
/// frame or a small message fits; a larger transmit sizes the next reservation.
const SMALL_TRANSMIT: usize = 256;
/// An idle connection keeps a transmit buffer up to this size; a larger one is released.
const KEPT_TRANSMIT_BUFFER: usize = 16 * 1024;

/// The queues a burst of opens grew are freed at most this often (see `shrink_queues`).
const SHRINK_EVERY: Duration = Duration::from_secs(1);

/// How long a connection shed for memory tells its peer to wait before reconnecting.
const SHED_RETRY_AFTER_MS: u32 = 1000;

/// Passes per poll before the driver yields to the scheduler, so one busy connection
/// cannot hold a worker thread from the others (quinn's `MAX_TRANSMIT_DATAGRAMS`).
const PASSES: usize = 4;

/// An authorization outcome: the session, its kind, the decision, and a place in the
/// accept queue reserved under the same deadline.
type Decision = (
    SessionId,
    String,
    Result<Grant, Option<Rejection>>,
    Option<mpsc::OwnedPermit<Session>>,
);

/// Why the I/O loop stopped.
enum Stop {
    /// The protocol closed and CONN_CLOSE is written: close the WebSocket with the code.
    Closed,
    /// The transport is gone (or stopped reading): nothing more can be written.
    Gone,
}

pub(crate) struct Driver<T> {
    inner: Arc<Inner>,
    transport: T,
    options: DriverOptions,
    acceptor: Acceptor,
    authorizing: JoinSet<Decision>,
    /// The encode buffer `poll_transmit` appends to; each transmit is split off and frozen.
    buf: BytesMut,
    /// Length of the last transmit, to size the next reservation.
    last_transmit: usize,
    /// The transmit buffer is large and was idle: release it at the next timer.
    release_buffer: bool,
    /// A transmit the socket was not ready for.
    stash: Option<WsMessage>,
    /// Sessions were authorized since the queues were last shrunk: once the answers are
    /// written, the queues the burst of opens grew are freed (P7), at most once per
    /// [`SHRINK_EVERY`] so a connection opening sessions all the time does not reallocate
    /// them for every open.
    shrink_queues: bool,
    last_shrink: Option<Instant>,
    /// The kind of the session accepted last, shared with the next of the same kind.
    last_kind: Option<Arc<str>>,
    /// Messages were written since the last flush.
    unflushed: bool,
    /// The one protocol timer, reset only when its deadline changes.
    timer: Pin<Box<Sleep>>,
    timer_deadline: Option<Instant>,
    /// Armed while the socket refuses to take or flush our bytes: a peer that stops reading
    /// for this long is cut off (spec/sessions.md: slow consumers). Allocated on the first
    /// stall: most connections never have one.
    write_timer: Option<Pin<Box<Sleep>>>,
    write_stalled: bool,
    reading: bool,
    /// The peer closed or the transport failed: nothing more can be read.
    peer_gone: bool,
    /// The memory budget chose this connection to close (1013).
    shed: bool,
    /// Armed while the memory budget keeps this connection from reading: one that stays
    /// paused for the write deadline is closed like a shed one, since a paused reader cannot
    /// even see its peer leave.
    pause_timer: Option<Pin<Box<Sleep>>>,
    paused: bool,
    /// The principal's message quota, charged a lease at a time.
    refill: Option<Refill>,
    /// From the first write of a batch to its flush (feature `metrics`).
    write_clock: crate::observe::Stopwatch,
}

/// The principal's message quota, refilled by the driver a lease at a time (the
/// application's `recv` spends it; see `State::quota`).
struct Refill {
    policy: QuotaPolicy,
    key: QuotaKey,
    asking: Option<Pin<Box<dyn Future<Output = QuotaDecision> + Send>>>,
    /// Over the quota: no asking again before this.
    retry: Option<Pin<Box<Sleep>>>,
}

impl Refill {
    /// Asks the store for another lease; `Some(messages)` once it grants one.
    fn poll_lease(&mut self, cx: &mut Context<'_>) -> Option<u32> {
        loop {
            if let Some(retry) = &mut self.retry {
                if retry.as_mut().poll(cx).is_pending() {
                    return None;
                }
                self.retry = None;
            }
            let asking = self.asking.get_or_insert_with(|| {
                let (policy, key) = (self.policy.clone(), self.key.clone());
                Box::pin(async move {
                    policy
                        .charge(QuotaKind::Messages, &key, MESSAGE_LEASE)
                        .await
                })
            });
            let decision = match asking.as_mut().poll(cx) {
                Poll::Pending => return None,
                Poll::Ready(decision) => decision,
            };
            self.asking = None;
            match decision {
                QuotaDecision::Allowed => return Some(MESSAGE_LEASE),
                QuotaDecision::Limited { retry_after } => {
                    let at = Instant::now()
                        .checked_add(retry_after)
                        .unwrap_or_else(far_future);
                    self.retry = Some(Box::pin(sleep_until(at)));
                }
            }
        }
    }
}

impl<T: Transport> Driver<T> {
    pub(crate) fn new(
        inner: Arc<Inner>,
        transport: T,
        options: DriverOptions,
        acceptor: Acceptor,
    ) -> Self {
        let now = Instant::now();
        let refill = acceptor.quotas.as_ref().and_then(|policy| {
            let principal = acceptor.principal.as_ref()?;
            policy.kinds.messages.then(|| Refill {
                policy: policy.clone(),
                key: QuotaKey::Principal(principal.id.clone()),
                asking: None,
                retry: None,
            })
        });
        if refill.is_some() {
            inner.lock().quota = Some(super::state::MessageQuota::default());
        }
        Driver {
            inner,
            transport,
            options,
            acceptor,
            authorizing: JoinSet::new(),
            buf: BytesMut::new(),
            last_transmit: 0,
            release_buffer: false,
            stash: None,
            shrink_queues: false,
            last_shrink: None,
            last_kind: None,
            unflushed: false,
            timer: Box::pin(sleep_until(now)),
            timer_deadline: None,
            write_timer: None,
            write_stalled: false,
            reading: true,
            peer_gone: false,
            shed: false,
            pause_timer: None,
            paused: false,
            refill,
            write_clock: crate::observe::Stopwatch::default(),
        }
    }

    /// The connection's future. Not an `async fn`: one of those stores its `self` twice (the
    /// argument and the binding it moves into), and this future lives as long as the
    /// connection (P7); the block captures `self` once.
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` would store `self` twice for the connection's life"
    )]
    pub(crate) fn run(mut self) -> impl Future<Output = ConnectionOutcome> + Send + 'static {
        async move {
            let stop = poll_fn(|cx| self.poll_io(cx)).await;
            if matches!(stop, Stop::Closed) {
                // Boxed: the close and linger futures (three timeouts) would otherwise be
                // part of every connection's future for its whole life.
                Box::pin(self.close_websocket()).await;
            }
            self.authorizing.abort_all();
            self.inner.with(|state, wakers| {
                state.fail_all(wakers);
                ConnectionOutcome {
                    code: state.conn.close_code(),
                    stats: state.conn.stats(),
                }
            })
        }
    }

    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        let polled = self.poll_passes(cx);
        self.account();
        polled
    }

    fn poll_passes(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        if let Err(stop) = self.check_shed(cx) {
            return Poll::Ready(stop);
        }
        let mut slice = READ_SLICE;
        for _ in 0..PASSES {
            let mut progress = false;
            match self.read(cx, &mut slice) {
                Ok(read) => progress |= read,
                Err(stop) => return Poll::Ready(stop),
            }
            progress |= self.authorize(cx);
            match self.write(cx) {
                Ok(wrote) => progress |= wrote,
                Err(stop) => return Poll::Ready(stop),
            }
            progress |= self.timers(cx);
            progress |= self.refill_quota(cx);
            let write_expired = self.write_stalled
                && self
                    .write_timer
                    .as_mut()
                    .is_some_and(|t| t.as_mut().poll(cx).is_ready());
            if write_expired {
                warn!(
                    reason = "peer did not read within the write deadline",
                    "closing connection"
                );
                self.transport_lost();
                return Poll::Ready(Stop::Gone);
            }
            if !progress {
                return Poll::Pending;
            }
            if slice == 0 {
                // The read slice is spent and the socket may hold more: run again after
                // the other tasks (the writes of this pass are already out).
                break;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reports what this connection holds to the memory budget: its fixed state, the
    /// protocol's buffers, the transmit buffer (the partial WebSocket message is reported
    /// by the frame meter), and the bytes it has delivered, by which the budget judges
    /// progress.
    fn account(&mut self) {
        let Some(charge) = &self.options.charge else {
            return;
        };
        let (buffered, sessions, delivered) = {
            let mut state = self.inner.lock();
            let s = state.conn.stats();
            state.accounted_send = s.send_buffered;
            (
                s.recv_buffered.saturating_add(s.send_buffered),
                state.conn.session_count(),
                s.bytes_received.saturating_add(s.bytes_sent),
            )
        };
        let stash = match &self.stash {
            Some(WsMessage::Binary(b)) => b.len(),
            _ => 0,
        };
        let protocol = usize::try_from(buffered)
            .unwrap_or(usize::MAX)
            .saturating_add(sessions.saturating_mul(crate::budget::SESSION_STATE));
        let driver = self
            .buf
            .capacity()
            .saturating_add(stash)
            .saturating_add(self.options.fixed_cost);
        charge.set(Part::Protocol, protocol);
        charge.set(Part::Driver, driver);
        charge.set_progress(delivered);
    }

    /// Closes the connection with 1013 once the memory budget has chosen it. A peer whose
    /// socket takes nothing is dropped at once: waiting for it to read the close is what
    /// would keep the memory.
    fn check_shed(&mut self, cx: &mut Context<'_>) -> Result<(), Stop> {
        let Some(charge) = &self.options.charge else {
            return Ok(());
        };
        if self.shed {
            return Ok(());
        }
        let paused_too_long = self.paused
            && self
                .pause_timer
                .as_mut()
                .is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if !paused_too_long && !charge.is_shed(cx.waker()) {
            return Ok(());
        }
        self.shed = true;
        warn!(
            reason = "server over its memory budget",
            "closing connection"
        );
        self.inner.with(|state, wakers| {
            let now = state.now();
            state.conn.close_retry_after(
                now,
                CloseCode::TRY_AGAIN_LATER,
                "server overloaded",
                SHED_RETRY_AFTER_MS,
            );
            state.process_events(wakers);
        });
        if self.write_stalled || self.paused {
            self.transport_lost();
            return Err(Stop::Gone);
        }
        Ok(())
    }

    /// Refills the principal's message quota when readers wait for it. Over the quota the
    /// application's `recv` waits, so credit is not returned and the peer is held back by
    /// flow control while the connection itself (pings, other frames) carries on.
    fn refill_quota(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(refill) = &mut self.refill else {
            return false;
        };
        if !self
            .inner
            .lock()
            .quota
            .as_ref()
            .is_some_and(|q| q.wants_lease())
        {
            return false;
        }
        let Some(messages) = refill.poll_lease(cx) else {
            return false;
        };
        self.inner.with(|state, wakers| {
            if let Some(quota) = &mut state.quota {
                quota.grant(messages, wakers);
            }
        });
        true
    }

    /// Arms the pause deadline when the budget first stops this connection's reads, and
    /// disarms it when they resume.
    fn set_paused(&mut self, paused: bool, cx: &mut Context<'_>) {
        if paused == self.paused {
            return;
        }
        self.paused = paused;
        if paused {
            let deadline = Instant::now()
                .checked_add(self.options.write_timeout)
                .unwrap_or_else(far_future);
            let timer = self
                .pause_timer
                .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
            timer.as_mut().reset(deadline);
            // Registers the timer's waker.
            let _ = timer.as_mut().poll(cx);
        }
    }

    /// Reads until the socket has nothing, the protocol or the memory budget wants no
    /// more, or `slice` is spent. `Ok(progress)`, or the reason to stop.
    fn read(&mut self, cx: &mut Context<'_>, slice: &mut usize) -> Result<bool, Stop> {
        let mut progress = false;
        let mut wants_read = self.reading && self.inner.lock().conn.wants_read();
        if wants_read {
            if let Some(charge) = &self.options.charge {
                wants_read = charge.may_read(cx.waker());
                self.set_paused(!wants_read, cx);
            }
        }

        while wants_read && *slice > 0 {
            let message = match Pin::new(&mut self.transport).poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(message) => message,
            };
            progress = true;
            let cost = match &message {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    (bytes.len() / READ_UNIT_BYTES).saturating_add(1)
                }
                _ => 1,
            };
            *slice = slice.saturating_sub(cost);
            let mut answer_close = false;
            wants_read = self.inner.with(|state, wakers| {
                let now = state.now();
                match message {
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        trace!(len = bytes.len(), "message in");
                        state.conn.handle_message(now, bytes);
                    }
                    Some(Ok(WsMessage::Text)) => state.conn.handle_text_message(now),
                    Some(Ok(WsMessage::Control)) => {
                        // The WebSocket library's answer (a pong) may be held back under
                        // it (`replies`): this pass's write flushes it.
                        self.unflushed = true;
                        state.conn.handle_transport_control(now);
                    }
                    Some(Err(e)) if e.close_code().is_some() => {
                        // The peer broke RFC 6455 itself; the socket still works, so the
                        // connection is failed with the code (CONN_CLOSE, then the
                        // WebSocket Close), not dropped as if the transport had died.
                        self.reading = false;
                        let code = CloseCode(e.close_code().unwrap_or(1002));
                        warn!(code = code.get(), error = %e, "websocket protocol violation");
                        state.conn.close(now, code, "websocket protocol violation");
                    }
                    Some(Ok(WsMessage::Close(_))) => {
                        // The WebSocket library queued its answer to the Close; closing
                        // our side flushes it (RFC 6455 §5.5.1).
                        self.reading = false;
                        self.peer_gone = true;
                        answer_close = true;
                        state.conn.handle_transport_closed(now);
                    }
                    Some(Err(_)) | None => {
                        self.reading = false;
                        self.peer_gone = true;
                        state.conn.handle_transport_closed(now);
                    }
                }
                state.process_events(wakers);
                let mut more = self.reading && state.conn.wants_read();
                // Each message is charged as it lands, so a batch cannot carry the server
                // past its budget between two looks.
                if let Some(charge) = &self.options.charge {
                    let (recv, send) = state.conn.buffered();
                    let sessions = state.conn.session_count();
                    let protocol = usize::try_from(recv.saturating_add(send))
                        .unwrap_or(usize::MAX)
                        .saturating_add(sessions.saturating_mul(crate::budget::SESSION_STATE));
                    charge.set(Part::Protocol, protocol);
                    more = more && charge.may_read(cx.waker());
                }
                more
            });
            if self.peer_gone {
                return Err(if answer_close {
                    Stop::Closed
                } else {
                    Stop::Gone
                });
            }
        }
        Ok(progress)
    }

    /// Starts authorization for new peer opens and applies finished decisions.
    fn authorize(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        loop {
            let next = {
                let mut state = self.inner.lock();
                let next = state.incoming.pop_front();
                // An OPEN already reset (pipelined behind it in the same read) is not
                // authorized at all: rapid reset must not start work for dead sessions.
                next.map(|open| {
                    let pending = state.conn.session_phase(open.id) == Some(Phase::Pending);
                    (open, pending)
                })
            };
            let Some((open, pending)) = next else {
                break;
            };
            if pending {
                self.spawn_authorization(open);
            }
            progress = true;
        }
        while !self.authorizing.is_empty() {
            match self.authorizing.poll_join_next(cx) {
                Poll::Ready(Some(Ok(decision))) => {
                    self.decide(decision);
                    progress = true;
                }
                Poll::Ready(Some(Err(_))) => progress = true,
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        progress
    }

    fn spawn_authorization(&mut self, open: IncomingOpen) {
        let IncomingOpen { id, kind, auth } = open;
        let principal = self
            .acceptor
            .principal
            .as_deref()
            .cloned()
            .unwrap_or_else(|| Principal::new("peer"));
        let authorizer = self.acceptor.authorizer.clone();
        let accepted = self.acceptor.accepted.clone();
        let deadline = self.options.authorize_timeout;
        let info = OpenInfo {
            id,
            kind: kind.clone(),
            auth,
        };
        let quota = self
            .acceptor
            .quotas
            .clone()
            .filter(|q| q.kinds.opens && self.acceptor.principal.is_some());
        let task = self.authorizing.spawn(async move {
            // Opens per principal, over all its connections, before the application's hook.
            if let Some(quota) = quota {
                let key = QuotaKey::Principal(principal.id.clone());
                if let QuotaDecision::Limited { .. } = quota.charge(QuotaKind::Opens, &key, 1).await
                {
                    let refused = Rejection {
                        code: CloseCode::RATE_LIMITED,
                        reason: "open quota".into(),
                    };
                    return (id, kind, Err(Some(refused)), None);
                }
            }
            let mut clock = crate::observe::Stopwatch::default();
            clock.start();
            let decision = match timeout(deadline, authorizer.authorize(principal, info)).await {
                Ok(Ok(grant)) => Ok(grant),
                Ok(Err(rejection)) => Err(Some(rejection)),
                Err(_) => Err(None),
            };
            let outcome = match &decision {
                Ok(_) => "granted",
                Err(Some(_)) => "refused",
                Err(None) => "timeout",
            };
            crate::observe::authorized(&mut clock, outcome);
            // Reserve a place in the accept queue within the same deadline, so an application
            // that stops accepting sessions pushes back on the peer instead of growing a queue.
            let permit = match decision {
                Ok(_) => timeout(deadline, accepted.reserve_owned())
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(_) => None,
            };
            (id, kind, decision, permit)
        });
        self.inner.lock().deciding.insert(id, task);
    }

    fn decide(&mut self, (id, kind, decision, permit): Decision) {
        self.shrink_queues = true;
        let accepted = self.inner.with(|state, wakers| {
            state.deciding.remove(&id);
            let now = state.now();
            let accepted = match (decision, permit.is_some()) {
                (Ok(grant), true) => {
                    if state.conn.accept(now, id, grant).is_ok() {
                        debug!(session_id = id.get(), kind = %kind, "session accepted");
                        crate::observe::session_opened();
                        let may_send = grant.permissions.acceptor_may_send();
                        state.accepted(id, may_send);
                        Some(may_send)
                    } else {
                        None
                    }
                }
                (Ok(_), false) => {
                    warn!(session_id = id.get(), "accept queue full: refusing session");
                    let _ = state
                        .conn
                        .reject(now, id, CloseCode::TOO_MANY_SESSIONS, "server busy");
                    None
                }
                (Err(Some(rejection)), _) => {
                    warn!(session_id = id.get(), kind = %kind, code = rejection.code.get(), "session refused");
                    let code = if rejection.code.is_valid_on_wire() {
                        rejection.code
                    } else {
                        CloseCode::FORBIDDEN
                    };
                    let _ = state.conn.reject(now, id, code, &rejection.reason);
                    None
                }
                (Err(None), _) => {
                    warn!(session_id = id.get(), kind = %kind, "authorization timed out");
                    let _ = state
                        .conn
                        .reject(now, id, CloseCode::TIMEOUT, "authorization timed out");
                    None
                }
            };
            state.process_events(wakers);
            accepted
        });
        // Outside the lock: a `Session` the accept queue refuses is dropped here, and its
        // `Drop` takes the lock.
        if let (Some(may_send), Some(permit)) = (accepted, permit) {
            let principal = self.acceptor.principal.clone();
            // Sessions of one connection mostly share a few kinds: one that matches the
            // last accepted shares its text instead of allocating its own (P7).
            let kind = match &self.last_kind {
                Some(last) if **last == *kind => last.clone(),
                _ => {
                    let new: Arc<str> = Arc::from(kind);
                    self.last_kind = Some(new.clone());
                    new
                }
            };
            permit.send(Session::new(
                self.inner.clone(),
                id,
                kind,
                principal,
                may_send,
            ));
        }
    }

    /// Writes pending transmits: up to a batch, then one flush. `Ok(progress)`, or the
    /// reason to stop.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<bool, Stop> {
        let mut progress = false;
        for _ in 0..WRITE_BATCH {
            if self.stash.is_none() {
                let buf = &mut self.buf;
                let last_len = self.last_transmit;
                let shrink_queues = &mut self.shrink_queues;
                let last_shrink = &mut self.last_shrink;
                let next = self.inner.with(|state, wakers| {
                    let now = state.now();
                    // Room for a transmit like the last one (a whole one after a large one),
                    // reused in place once the transport has dropped the previous transmit:
                    // no allocation per transmit, and no growing by doubling and copying.
                    let limit = state.conn.max_transmit_size();
                    buf.reserve(last_len.saturating_mul(2).clamp(SMALL_TRANSMIT, limit));
                    if state.conn.poll_transmit(now, buf) {
                        // Writing can make sessions writable or complete them.
                        state.process_events(wakers);
                        Some(WsMessage::Binary(buf.split().freeze()))
                    } else {
                        if *shrink_queues
                            && last_shrink.is_none_or(|at| at.elapsed() >= SHRINK_EVERY)
                        {
                            *shrink_queues = false;
                            *last_shrink = Some(Instant::now());
                            state.shrink_to_fit();
                        }
                        // Under the lock that saw nothing to write, so a handle queuing
                        // right after finds the waker.
                        state.park_driver(cx.waker());
                        None
                    }
                });
                match &next {
                    Some(WsMessage::Binary(bytes)) => {
                        self.last_transmit = bytes.len();
                        self.release_buffer = false;
                    }
                    Some(_) => {}
                    // Idle: a buffer grown for bulk is given back at the next timer if no
                    // write came in between (a pause for credit keeps it); a small one is
                    // kept for the next message (a topic publish then allocates nothing).
                    None => {
                        // Under memory pressure an idle buffer goes back at once.
                        if self
                            .options
                            .charge
                            .as_ref()
                            .is_some_and(|c| c.shrink_idle())
                        {
                            self.buf = BytesMut::new();
                        }
                        self.release_buffer = self.buf.capacity() > KEPT_TRANSMIT_BUFFER;
                    }
                }
                match next {
                    Some(message) => self.stash = Some(message),
                    None => break,
                }
            }
            match Pin::new(&mut self.transport).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(self.write_failed(&e)),
                Poll::Pending => {
                    self.stall();
                    return Ok(progress);
                }
            }
            if let Some(message) = self.stash.take() {
                if let Err(e) = Pin::new(&mut self.transport).start_send(message) {
                    return Err(self.write_failed(&e));
                }
                self.write_clock.start();
                self.unflushed = true;
                progress = true;
            }
        }
        if self.unflushed {
            match Pin::new(&mut self.transport).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    crate::observe::flushed(&mut self.write_clock);
                    self.unflushed = false;
                    self.write_stalled = false;
                }
                Poll::Ready(Err(e)) => return Err(self.write_failed(&e)),
                Poll::Pending => self.stall(),
            }
        } else if self.stash.is_none() {
            self.write_stalled = false;
        }
        if !self.unflushed && self.stash.is_none() && self.inner.lock().conn.is_closed() {
            return Err(Stop::Closed);
        }
        Ok(progress)
    }

    fn stall(&mut self) {
        if !self.write_stalled {
            self.write_stalled = true;
            let deadline = Instant::now()
                .checked_add(self.options.write_timeout)
                .unwrap_or_else(far_future);
            match &mut self.write_timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.write_timer = Some(Box::pin(sleep_until(deadline))),
            }
        }
    }

    fn write_failed(&mut self, e: &dyn std::fmt::Display) -> Stop {
        warn!(reason = %format_args!("write failed: {e}"), "closing connection");
        self.transport_lost();
        Stop::Gone
    }

    fn transport_lost(&mut self) {
        self.inner.with(|state, wakers| {
            let now = state.now();
            state.conn.handle_transport_closed(now);
            state.process_events(wakers);
        });
    }

    /// Fires the protocol's timer when due; otherwise arms the one `Sleep` for it.
    fn timers(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let (due, deadline) = self.inner.with(|state, wakers| {
                let Some(t) = state.conn.poll_timeout() else {
                    return (false, None);
                };
                // The clock is checked before the `Sleep`: under tokio's cooperative budget
                // an elapsed `Sleep` can still return `Pending` (quinn #2677).
                if t <= state.now() {
                    let now = state.now();
                    state.conn.handle_timeout(now);
                    state.process_events(wakers);
                    (true, None)
                } else {
                    (false, state.instant(t))
                }
            });
            if due {
                if std::mem::take(&mut self.release_buffer) {
                    self.buf = BytesMut::new();
                }
                return true;
            }
            let Some(deadline) = deadline else {
                self.timer_deadline = None;
                return false;
            };
            if self.timer_deadline != Some(deadline) {
                self.timer_deadline = Some(deadline);
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            // Elapsed by tokio's clock; loop to fire it by the protocol's.
            self.timer_deadline = None;
        }
    }

    /// CONN_CLOSE went out: close the WebSocket with the same code, then linger.
    async fn close_websocket(&mut self) {
        let write_timeout = self.options.write_timeout;
        let code = self
            .inner
            .lock()
            .conn
            .close_code()
            .unwrap_or(CloseCode::NORMAL);
        let code = if code.is_valid_on_wire() {
            code
        } else {
            CloseCode::NORMAL
        };
        let transport = &mut self.transport;
        let _ = timeout(write_timeout, async {
            transport.send(WsMessage::Close(Some(code.get()))).await?;
            transport.close().await
        })
        .await;
        if !self.peer_gone {
            self.linger().await;
        }
    }

    /// A lingering close: read and discard what the peer still sends until it answers our
    /// Close, goes quiet, or a short deadline passes. Dropping a socket with unread input
    /// resets it, and the reset destroys our Close still in flight: the peer would never
    /// learn the code. A quiet peer (nothing left to read) gets a clean close at once.
    async fn linger(&mut self) {
        let transport = &mut self.transport;
        let _ = timeout(LINGER.min(self.options.write_timeout), async {
            while let Ok(Some(Ok(message))) = timeout(LINGER_QUIET, transport.next()).await {
                if matches!(message, WsMessage::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

fn far_future() -> Instant {
    // About thirty years: what tokio itself uses for "never".
    Instant::now()
        .checked_add(Duration::from_secs(86_400 * 365 * 30))
        .unwrap_or_else(Instant::now)
}
