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
use crate::session::{OpenInfo, Session};
use crate::transport::{Transport, WsMessage};

/// How long a closing connection keeps reading (and discarding) for the peer's answer to
/// its Close; see [`Driver::linger`].
const LINGER: Duration = Duration::from_secs(1);

/// A lingering close ends once the peer has sent nothing for this long.
const LINGER_QUIET: Duration = Duration::from_millis(100);

/// WebSocket messages read per pass before the driver looks at its other work.
const READ_BATCH: usize = 32;

/// Transmits written per pass before one flush.
const WRITE_BATCH: usize = 32;

/// The smallest transmit buffer reserved.
const SMALL_TRANSMIT: usize = 1024;
/// An idle connection keeps a transmit buffer up to this size; a larger one is released.
const KEPT_TRANSMIT_BUFFER: usize = 16 * 1024;

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
    /// Messages were written since the last flush.
    unflushed: bool,
    /// The one protocol timer, reset only when its deadline changes.
    timer: Pin<Box<Sleep>>,
    timer_deadline: Option<Instant>,
    /// Armed while the socket refuses to take or flush our bytes: a peer that stops reading
    /// for this long is cut off (spec/sessions.md: slow consumers).
    write_timer: Pin<Box<Sleep>>,
    write_stalled: bool,
    reading: bool,
    /// The peer closed or the transport failed: nothing more can be read.
    peer_gone: bool,
}

impl<T: Transport> Driver<T> {
    pub(crate) fn new(
        inner: Arc<Inner>,
        transport: T,
        options: DriverOptions,
        acceptor: Acceptor,
    ) -> Self {
        let now = Instant::now();
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
            unflushed: false,
            timer: Box::pin(sleep_until(now)),
            timer_deadline: None,
            write_timer: Box::pin(sleep_until(now)),
            write_stalled: false,
            reading: true,
            peer_gone: false,
        }
    }

    pub(crate) async fn run(mut self) -> ConnectionOutcome {
        let stop = poll_fn(|cx| self.poll_io(cx)).await;
        if matches!(stop, Stop::Closed) {
            self.close_websocket().await;
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

    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        for _ in 0..PASSES {
            let mut progress = false;
            match self.read(cx) {
                Ok(read) => progress |= read,
                Err(stop) => return Poll::Ready(stop),
            }
            progress |= self.authorize(cx);
            match self.write(cx) {
                Ok(wrote) => progress |= wrote,
                Err(stop) => return Poll::Ready(stop),
            }
            progress |= self.timers(cx);
            if self.write_stalled && self.write_timer.as_mut().poll(cx).is_ready() {
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
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads what the socket has, up to a batch, while the protocol wants input.
    /// `Ok(progress)`, or the reason to stop.
    fn read(&mut self, cx: &mut Context<'_>) -> Result<bool, Stop> {
        let mut progress = false;
        let mut wants_read = self.reading && self.inner.lock().conn.wants_read();
        for _ in 0..READ_BATCH {
            if !wants_read {
                break;
            }
            let message = match Pin::new(&mut self.transport).poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(message) => message,
            };
            progress = true;
            let mut answer_close = false;
            wants_read = self.inner.with(|state, wakers| {
                let now = state.now();
                match message {
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        trace!(len = bytes.len(), "message in");
                        state.conn.handle_message(now, bytes);
                    }
                    Some(Ok(WsMessage::Text)) => state.conn.handle_text_message(now),
                    Some(Ok(WsMessage::Control)) => state.conn.handle_transport_control(now),
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
                self.reading && state.conn.wants_read()
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
            .clone()
            .unwrap_or_else(|| Principal::new("peer"));
        let authorizer = self.acceptor.authorizer.clone();
        let accepted = self.acceptor.accepted.clone();
        let deadline = self.options.authorize_timeout;
        let info = OpenInfo {
            id,
            kind: kind.clone(),
            auth,
        };
        let task = self.authorizing.spawn(async move {
            let decision = match timeout(deadline, authorizer.authorize(principal, info)).await {
                Ok(Ok(grant)) => Ok(grant),
                Ok(Err(rejection)) => Err(Some(rejection)),
                Err(_) => Err(None),
            };
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
                    None => self.release_buffer = self.buf.capacity() > KEPT_TRANSMIT_BUFFER,
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
                self.unflushed = true;
                progress = true;
            }
        }
        if self.unflushed {
            match Pin::new(&mut self.transport).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
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
            self.write_timer.as_mut().reset(deadline);
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
