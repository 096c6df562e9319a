//! The state one connection shares between its driver future and its handles: the
//! `mux_proto::Connection` and the wakers of the tasks waiting on it, behind one lock
//! (quinn's and h2's shape). Handles call into the protocol directly; only I/O goes
//! through the driver.
//!
//! Nothing here blocks, awaits or runs application code, so the lock is held for
//! O(batch) work. Wakers are collected in a [`WakeList`] and woken after the lock is
//! released. No value whose `Drop` takes the lock (a `Session`) is ever dropped under it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use mux_proto::{
    CloseCode, Config, Connection, Credential, Event, Initiator, OpenRequest, SessionId, Side,
    Timestamp,
};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::wake::{register, register_in, WakeList};
use crate::budget::{Charge, Part};
use crate::error::{OpenError, SendError, SessionClosed};

/// Send-buffer movement that makes a sender report to the memory budget itself.
const ACCOUNT_STEP: u64 = 16 * 1024;

/// What a connection's driver and handles share.
pub(crate) struct Inner {
    state: Mutex<State>,
    /// Woken whenever a session or the connection ends, for `closed()` waiters. One per
    /// connection rather than one per session: waiting for an end is rare, sessions are not.
    pub(crate) ended: Notify,
}

impl Inner {
    pub(crate) fn new(side: Side, mut config: Config) -> Inner {
        if config.hash_seed == 0 {
            config.hash_seed = random_seed();
        }
        Inner {
            state: Mutex::new(State {
                conn: Connection::new(side, config, Timestamp::ZERO),
                epoch: Instant::now(),
                driver: None,
                sessions: HashMap::new(),
                opening: HashMap::new(),
                settings_waiters: Vec::new(),
                incoming: VecDeque::new(),
                deciding: HashMap::new(),
                ended: false,
                charge: None,
                accounted_send: 0,
                quota: None,
            }),
            ended: Notify::new(),
        }
    }

    /// Runs `f` under the lock, then wakes whom it collected, after the lock is released.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State, &mut WakeList) -> R) -> R {
        let mut wakers = WakeList::default();
        let result = f(&mut self.lock(), &mut wakers);
        wakers.wake_all();
        if wakers.ended {
            self.ended.notify_waiters();
        }
        result
    }

    /// Takes the lock. A panic while it was held cannot leave the protocol half-updated
    /// in a way later calls would trust less than a fresh error, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A session this side opened, until the peer answers and the `open` future takes it.
pub(crate) struct Opening {
    waker: Option<Waker>,
    /// The peer's answer: `Ok(may_send)` once accepted.
    outcome: Option<Result<bool, OpenError>>,
}

/// The handles' record of one session. The protocol keeps its queues and credit. Kept
/// small (P7: one per idle session, inline in the table): what only a blocked sender, a
/// close watcher or an ended session needs is boxed on first use.
#[derive(Default)]
pub(crate) struct Slot {
    /// The `Session` waiting in `recv`.
    reader: Option<Waker>,
    /// Tasks waiting for room or for the end; kept once allocated (a sender that blocked
    /// once is likely to block again).
    waiters: Option<Box<Waiters>>,
    /// How the session ended, once it has.
    closed: Option<Box<SessionClosed>>,
    /// The peer half-closed: once the queue is empty, `recv` returns `None`.
    peer_finished: bool,
    /// Whether this side may send DATA (and so FIN), per its grant.
    may_send: bool,
    /// Live handles (`Session` and `SessionSender`s). The slot goes once the session has
    /// ended and no handle is left to ask how.
    handles: u32,
    /// Times a send's wait for room, for the credit-stall histogram (feature `metrics`).
    stall: crate::observe::Stopwatch,
}

/// The tasks waiting on one session other than its reader.
#[derive(Default)]
struct Waiters {
    /// Tasks waiting in `send` for room (the `Session` and its `SessionSender`s).
    writers: Vec<Waker>,
    /// Woken once when the session ends (a topic subscriber leaving its topic).
    watchers: Vec<Waker>,
}

impl Slot {
    fn waiters(&mut self) -> &mut Waiters {
        self.waiters.get_or_insert_with(Box::default)
    }

    fn wake_writers(&mut self, wakers: &mut WakeList) {
        if let Some(w) = &mut self.waiters {
            for waker in w.writers.drain(..) {
                wakers.push(waker);
            }
        }
    }
}

/// A peer-opened session for the driver to run through the authorizer.
pub(crate) struct IncomingOpen {
    pub(crate) id: SessionId,
    pub(crate) kind: String,
    pub(crate) auth: Credential,
}

/// Everything behind the connection's lock.
pub(crate) struct State {
    pub(crate) conn: Connection,
    epoch: Instant,
    /// The driver's waker, set when it has nothing to write; taken by whoever gives it work.
    driver: Option<Waker>,
    sessions: HashMap<SessionId, Slot>,
    opening: HashMap<SessionId, Opening>,
    /// `open` calls made before the peer's SETTINGS arrived (the protocol refuses opens
    /// until then). One waker per waiting task.
    settings_waiters: Vec<Waker>,
    /// Peer opens waiting for the driver to start their authorization.
    pub(crate) incoming: VecDeque<IncomingOpen>,
    /// The authorization task of each pending peer open, aborted when the session ends
    /// before a decision (a reset OPEN must not keep the application's hook running:
    /// rapid reset). At most the protocol's pending-open cap.
    pub(crate) deciding: HashMap<SessionId, AbortHandle>,
    /// The driver has finished: every handle operation fails from now on.
    pub(crate) ended: bool,
    /// The server's memory budget account, and the send buffer level last reported to it.
    pub(crate) charge: Option<Arc<Charge>>,
    pub(crate) accounted_send: u64,
    /// The principal's message quota, when one applies: `recv` spends it.
    pub(crate) quota: Option<MessageQuota>,
}

/// Messages the application may still read under its principal's quota; readers that
/// found it empty wait here until the driver has a new lease from the store.
#[derive(Default)]
pub(crate) struct MessageQuota {
    left: u32,
    waiting: Vec<Waker>,
}

impl MessageQuota {
    /// Whether a reader waits for a lease.
    pub(crate) fn wants_lease(&self) -> bool {
        self.left == 0 && !self.waiting.is_empty()
    }

    /// A new lease: every waiting reader tries again.
    pub(crate) fn grant(&mut self, messages: u32, wakers: &mut WakeList) {
        self.left = self.left.saturating_add(messages);
        for w in self.waiting.drain(..) {
            wakers.push(w);
        }
    }

    /// Takes one message of the lease, or registers `waker` for the next one.
    fn take(&mut self, waker: &Waker) -> bool {
        if self.left > 0 {
            self.left = self.left.saturating_sub(1);
            return true;
        }
        if !self.waiting.iter().any(|w| w.will_wake(waker)) {
            self.waiting.push(waker.clone());
        }
        false
    }

    /// A message taken but not there to read gives its unit back.
    fn give_back(&mut self) {
        self.left = self.left.saturating_add(1);
    }
}

impl State {
    pub(crate) fn now(&self) -> Timestamp {
        Timestamp::from_micros(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// `t` on tokio's clock; `None` if it is too far ahead to represent (no deadline).
    pub(crate) fn instant(&self, t: Timestamp) -> Option<Instant> {
        self.epoch.checked_add(Duration::from_micros(t.as_micros()))
    }

    /// Hands the driver new work: it runs again even if it was idle.
    pub(crate) fn wake_driver(&mut self, wakers: &mut WakeList) {
        if let Some(waker) = self.driver.take() {
            wakers.push(waker);
        }
    }

    /// Frees the buffers of empty queues, the protocol's and the handles' (for a driver
    /// whose burst of opens is over: P7).
    pub(crate) fn shrink_to_fit(&mut self) {
        self.conn.shrink_to_fit();
        if self.incoming.is_empty() {
            self.incoming.shrink_to_fit();
        }
        if self.deciding.is_empty() {
            self.deciding.shrink_to_fit();
        }
        if self.opening.is_empty() {
            self.opening.shrink_to_fit();
        }
    }

    /// Called by the driver, under the same lock that saw nothing left to write, so work
    /// queued right after finds the waker (h2's `poll_complete`).
    pub(crate) fn park_driver(&mut self, waker: &Waker) {
        register(&mut self.driver, waker);
    }

    // ---- sessions -------------------------------------------------------------------

    fn insert_slot(&mut self, id: SessionId, may_send: bool) {
        self.sessions.insert(
            id,
            Slot {
                may_send,
                handles: 1,
                ..Slot::default()
            },
        );
    }

    /// Registers the handle of a session the authorizer accepted.
    pub(crate) fn accepted(&mut self, id: SessionId, may_send: bool) {
        self.insert_slot(id, may_send);
    }

    pub(crate) fn add_handle(&mut self, id: SessionId) {
        if let Some(slot) = self.sessions.get_mut(&id) {
            slot.handles = slot.handles.saturating_add(1);
        }
    }

    /// A handle went away: forget the slot once nothing can ask about it.
    pub(crate) fn release_handle(&mut self, id: SessionId) {
        if let Some(slot) = self.sessions.get_mut(&id) {
            slot.handles = slot.handles.saturating_sub(1);
            if slot.handles == 0 && slot.closed.is_some() {
                self.sessions.remove(&id);
            }
        }
    }

    pub(crate) fn close_reason(&self, id: SessionId) -> Option<SessionClosed> {
        match self.sessions.get(&id) {
            Some(slot) => slot.closed.as_deref().cloned(),
            None if self.ended => Some(connection_ended()),
            None => None,
        }
    }

    fn closed_error(&self, id: SessionId) -> SendError {
        SendError::Closed(
            self.sessions
                .get(&id)
                .and_then(|s| s.closed.as_deref().cloned())
                .unwrap_or_else(connection_ended),
        )
    }

    /// One attempt to queue `message`; on backpressure the caller's waker waits for
    /// `Writable`. Cancel-safe: the message is either queued now or handed back.
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        id: SessionId,
        message: &mut Option<Bytes>,
        wakers: &mut WakeList,
    ) -> Poll<Result<(), SendError>> {
        let now = self.now();
        let Some(bytes) = message.as_ref() else {
            return Poll::Ready(Ok(()));
        };
        if self.ended || self.sessions.get(&id).is_none_or(|s| s.closed.is_some()) {
            return Poll::Ready(Err(self.closed_error(id)));
        }
        match self.conn.send(now, id, bytes.clone()) {
            Ok(()) => {
                *message = None;
                #[cfg(feature = "metrics")]
                if let Some(slot) = self.sessions.get_mut(&id) {
                    crate::observe::send_unblocked(&mut slot.stall);
                }
                self.account_send();
                self.wake_driver(wakers);
                Poll::Ready(Ok(()))
            }
            Err(mux_proto::SendError::Blocked) => {
                if let Some(slot) = self.sessions.get_mut(&id) {
                    register_in(&mut slot.waiters().writers, cx.waker());
                    slot.stall.start();
                }
                // Blocking can change the timers (a paced session); let the driver see it.
                self.wake_driver(wakers);
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(self.map_send_error(id, e))),
        }
    }

    /// Reports the protocol's holdings to the memory budget once the send buffer has moved
    /// by [`ACCOUNT_STEP`] since the last report: a driver stalled on a slow reader does not
    /// run, and the application may still be filling the buffer.
    fn account_send(&mut self) {
        let Some(charge) = &self.charge else {
            return;
        };
        let (recv, send) = self.conn.buffered();
        if send.abs_diff(self.accounted_send) < ACCOUNT_STEP {
            return;
        }
        self.accounted_send = send;
        let sessions = self.conn.session_count();
        let held = usize::try_from(recv.saturating_add(send))
            .unwrap_or(usize::MAX)
            .saturating_add(sessions.saturating_mul(crate::budget::SESSION_STATE));
        charge.set(Part::Protocol, held);
    }

    fn map_send_error(&self, id: SessionId, e: mux_proto::SendError) -> SendError {
        match e {
            mux_proto::SendError::TooLarge { len, max } => SendError::TooLarge { len, max },
            mux_proto::SendError::NotPermitted => SendError::NotPermitted,
            mux_proto::SendError::Finished => SendError::Finished,
            _ => self.closed_error(id),
        }
    }

    /// The next message, taken from the protocol's own queue: this is what returns credit
    /// to the peer (spec/sessions.md#credit), at the pace the application reads.
    pub(crate) fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        id: SessionId,
        wakers: &mut WakeList,
    ) -> Poll<Option<Bytes>> {
        let now = self.now();
        // Over the principal's message quota, reading waits for the driver's next lease.
        if let Some(quota) = &mut self.quota {
            if !quota.take(cx.waker()) {
                self.wake_driver(wakers);
                return Poll::Pending;
            }
        }
        #[cfg(feature = "metrics")]
        let arrived = self.conn.recv_queued_since(id);
        let message = self.conn.recv(now, id);
        if message.is_none() {
            if let Some(quota) = &mut self.quota {
                quota.give_back();
            }
        }
        if let Some(message) = message {
            #[cfg(feature = "metrics")]
            if let Some(at) = arrived {
                crate::observe::received_after(now.saturating_duration_since(at));
            }
            // Reading may queue a CREDIT, complete the session, or let a stopped read resume.
            self.process_events(wakers);
            self.wake_driver(wakers);
            return Poll::Ready(Some(message));
        }
        let Some(slot) = self.sessions.get_mut(&id) else {
            return Poll::Ready(None);
        };
        if self.ended || slot.closed.is_some() || slot.peer_finished {
            return Poll::Ready(None);
        }
        register(&mut slot.reader, cx.waker());
        Poll::Pending
    }

    /// Registers `waker` to be woken when the session ends; false if it already has.
    pub(crate) fn watch_close(&mut self, id: SessionId, waker: &Waker) -> bool {
        match self.sessions.get_mut(&id) {
            Some(slot) if slot.closed.is_none() && !self.ended => {
                register_in(&mut slot.waiters().watchers, waker);
                true
            }
            _ => false,
        }
    }

    /// Half-closes this side of a session.
    pub(crate) fn finish(&mut self, id: SessionId, wakers: &mut WakeList) {
        let now = self.now();
        let _ = self.conn.finish(now, id);
        self.after_command(wakers);
    }

    /// Ends a session gracefully (CLOSE after queued messages) or at once (RESET).
    pub(crate) fn end_session(
        &mut self,
        id: SessionId,
        code: CloseCode,
        reason: &str,
        graceful: bool,
        wakers: &mut WakeList,
    ) {
        let now = self.now();
        let _ = if graceful {
            self.conn.close_session(now, id, code, reason)
        } else {
            self.conn.reset(now, id, code, reason)
        };
        self.after_command(wakers);
    }

    /// Ends a session whose `Session` was dropped without `close` or `reset`, without
    /// losing what the application already sent (spec/sessions.md#dropping-a-session):
    /// after the peer's FIN it is an implicit finish, our FIN following the queued
    /// messages, and the session ends normally (1000); before it, a graceful CLOSE 4010
    /// CANCELLED after the queued messages. Nobody reads any more, so what the peer sent
    /// and was not read is discarded (its credit goes back).
    pub(crate) fn dropped(&mut self, id: SessionId, wakers: &mut WakeList) {
        let now = self.now();
        let Some(slot) = self.sessions.get_mut(&id) else {
            return;
        };
        slot.reader = None;
        if slot.closed.is_some() {
            return;
        }
        if slot.peer_finished {
            let may_send = slot.may_send;
            while self.conn.recv(now, id).is_some() {}
            if !(may_send && self.conn.finish(now, id).is_ok()) {
                // This side may not send, so it has no FIN (spec/sessions.md#closing).
                let _ = self.conn.close_session(now, id, CloseCode::NORMAL, "");
            }
        } else {
            let _ = self.conn.close_session(now, id, CloseCode::CANCELLED, "");
        }
        self.after_command(wakers);
    }

    /// After any command from a handle: apply its events and let the driver write.
    pub(crate) fn after_command(&mut self, wakers: &mut WakeList) {
        self.process_events(wakers);
        self.wake_driver(wakers);
    }

    // ---- opening --------------------------------------------------------------------

    /// One step of `open`: wait for the peer's SETTINGS, send OPEN, wait for the answer.
    /// `id` is where the future keeps its session once OPEN is queued.
    pub(crate) fn poll_open(
        &mut self,
        cx: &mut Context<'_>,
        kind: &str,
        auth: &Credential,
        id: &mut Option<SessionId>,
        wakers: &mut WakeList,
    ) -> Poll<Result<(SessionId, bool), OpenError>> {
        let Some(open_id) = *id else {
            if self.ended || self.conn.is_closed() {
                return Poll::Ready(Err(OpenError::ConnectionClosed));
            }
            if self.conn.peer_settings().is_none() && self.conn.close_code().is_none() {
                register_in(&mut self.settings_waiters, cx.waker());
                return Poll::Pending;
            }
            let now = self.now();
            match self
                .conn
                .open(now, kind, auth.clone(), OpenRequest::default())
            {
                Ok(new) => {
                    *id = Some(new);
                    self.opening.insert(
                        new,
                        Opening {
                            waker: Some(cx.waker().clone()),
                            outcome: None,
                        },
                    );
                    self.after_command(wakers);
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(OpenError::Local(e))),
            }
        };
        let Some(opening) = self.opening.get_mut(&open_id) else {
            return Poll::Ready(Err(OpenError::ConnectionClosed));
        };
        match opening.outcome.take() {
            Some(outcome) => {
                self.opening.remove(&open_id);
                *id = None;
                Poll::Ready(outcome.map(|may_send| (open_id, may_send)))
            }
            None => {
                register(&mut opening.waker, cx.waker());
                Poll::Pending
            }
        }
    }

    /// The `open` future was dropped while its session was in flight: nobody will take
    /// the session, so it is cancelled (RESET 4010 if still unanswered, a graceful
    /// CLOSE 4010 if the peer had already accepted it).
    pub(crate) fn abandon_open(&mut self, id: SessionId, wakers: &mut WakeList) {
        let now = self.now();
        match self.opening.remove(&id).and_then(|o| o.outcome) {
            Some(Ok(_)) => {
                self.dropped(id, wakers);
                self.release_handle(id);
            }
            Some(Err(_)) => {}
            None => {
                let _ = self.conn.reset(now, id, CloseCode::CANCELLED, "");
                self.after_command(wakers);
            }
        }
    }

    // ---- events ---------------------------------------------------------------------

    /// Applies the protocol's events to the handles' records and collects whom to wake.
    pub(crate) fn process_events(&mut self, wakers: &mut WakeList) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                Event::Connected { settings } => {
                    debug!(?settings, "peer settings received");
                    for waker in self.settings_waiters.drain(..) {
                        wakers.push(waker);
                    }
                }
                Event::Incoming { id, kind, auth, .. } => {
                    self.incoming.push_back(IncomingOpen {
                        id,
                        kind: kind.as_str().to_owned(),
                        auth,
                    });
                    self.wake_driver(wakers);
                }
                Event::Opened { id, grant } => {
                    crate::observe::session_opened();
                    match self.opening.get_mut(&id) {
                        Some(opening) => {
                            let may_send = grant.permissions.opener_may_send();
                            opening.outcome = Some(Ok(may_send));
                            if let Some(waker) = opening.waker.take() {
                                wakers.push(waker);
                            }
                            self.insert_slot(id, may_send);
                        }
                        None => {
                            let now = self.now();
                            let _ = self.conn.close_session(now, id, CloseCode::CANCELLED, "");
                        }
                    }
                }
                Event::Readable { id } => {
                    if let Some(waker) = self.sessions.get_mut(&id).and_then(|s| s.reader.take()) {
                        wakers.push(waker);
                    }
                }
                Event::Writable { id } => {
                    if let Some(slot) = self.sessions.get_mut(&id) {
                        slot.wake_writers(wakers);
                    }
                }
                Event::Finished { id } => {
                    if let Some(slot) = self.sessions.get_mut(&id) {
                        slot.peer_finished = true;
                        if let Some(waker) = slot.reader.take() {
                            wakers.push(waker);
                        }
                    }
                }
                Event::SessionClosed {
                    id,
                    code,
                    initiator,
                    reason,
                    retry_after_ms,
                } => self.session_closed(
                    id,
                    code,
                    initiator,
                    reason.as_str(),
                    retry_after_ms,
                    wakers,
                ),
                Event::GoAway {
                    last_session_id,
                    code,
                } => {
                    debug!(
                        last_session_id = last_session_id.get(),
                        code = code.get(),
                        "peer is going away"
                    );
                }
                Event::LimitHit { id, limit } => {
                    crate::observe::limit_hit(limit);
                    warn!(session_id = id.map(SessionId::get), ?limit, "limit hit");
                }
                Event::ConnectionClosed {
                    code,
                    initiator,
                    reason,
                } => {
                    if initiator == Initiator::Local
                        && code != CloseCode::NORMAL
                        && code != CloseCode::GOING_AWAY
                    {
                        warn!(
                            code = code.get(),
                            reason = reason.as_str(),
                            "closing connection"
                        );
                    } else {
                        debug!(code = code.get(), ?initiator, "connection closed");
                    }
                    // Opens waiting for SETTINGS will never get them.
                    for waker in self.settings_waiters.drain(..) {
                        wakers.push(waker);
                    }
                }
                _ => {}
            }
        }
    }

    fn session_closed(
        &mut self,
        id: SessionId,
        code: CloseCode,
        initiator: Initiator,
        reason: &str,
        retry_after_ms: u32,
        wakers: &mut WakeList,
    ) {
        crate::observe::session_closed(code);
        if let Some(task) = self.deciding.remove(&id) {
            // Ended while its authorization was still running (reset by the peer, or past
            // the protocol's deadline): drop the hook's work now.
            task.abort();
        }
        let by_peer = initiator == Initiator::Peer;
        if let Some(opening) = self.opening.get_mut(&id) {
            if opening.outcome.is_none() {
                opening.outcome = Some(Err(OpenError::Refused {
                    code,
                    reason: reason.to_owned(),
                    retry_after_ms,
                }));
                if let Some(waker) = opening.waker.take() {
                    wakers.push(waker);
                }
                return;
            }
        }
        let Some(slot) = self.sessions.get_mut(&id) else {
            return;
        };
        slot.closed = Some(Box::new(SessionClosed {
            code,
            reason: reason.to_owned(),
            by_peer,
        }));
        wake_slot(slot, wakers);
        if slot.handles == 0 {
            self.sessions.remove(&id);
        }
        wakers.push_notify_later();
        if code != CloseCode::NORMAL && code != CloseCode::CANCELLED {
            debug!(
                session_id = id.get(),
                code = code.get(),
                by_peer,
                "session closed"
            );
        }
    }

    /// The driver ended: every waiting handle learns it.
    pub(crate) fn fail_all(&mut self, wakers: &mut WakeList) {
        self.ended = true;
        let code = self.conn.close_code().unwrap_or(CloseCode::ABNORMAL);
        for slot in self.sessions.values_mut() {
            if slot.closed.is_none() {
                slot.closed = Some(Box::new(SessionClosed {
                    code,
                    reason: "connection closed".into(),
                    by_peer: false,
                }));
            }
            wake_slot(slot, wakers);
        }
        self.sessions.retain(|_, slot| slot.handles > 0);
        for opening in self.opening.values_mut() {
            if opening.outcome.is_none() {
                opening.outcome = Some(Err(OpenError::ConnectionClosed));
            }
            if let Some(waker) = opening.waker.take() {
                wakers.push(waker);
            }
        }
        for waker in self.settings_waiters.drain(..) {
            wakers.push(waker);
        }
        for (_, task) in self.deciding.drain() {
            task.abort();
        }
        self.incoming.clear();
        self.driver = None;
        wakers.push_notify_later();
    }
}

fn wake_slot(slot: &mut Slot, wakers: &mut WakeList) {
    if let Some(waker) = slot.reader.take() {
        wakers.push(waker);
    }
    slot.wake_writers(wakers);
    if slot.closed.is_some() {
        if let Some(w) = &mut slot.waiters {
            for waker in w.watchers.drain(..) {
                wakers.push(waker);
            }
        }
    }
}

fn connection_ended() -> SessionClosed {
    SessionClosed {
        code: CloseCode::ABNORMAL,
        reason: "connection ended".into(),
        by_peer: false,
    }
}

/// A per-process random value for the session table's hasher (std's SipHash keys are random).
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x6d75_782e_7631);
    h.finish()
}
