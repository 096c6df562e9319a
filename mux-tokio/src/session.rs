//! Session handles: what the application holds for one logical session.

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::Stream;
use mux_proto::{CloseCode, Credential, SessionId, SessionStats};

use crate::driver::state::Inner;
use crate::error::{SendError, SessionClosed, TrySendError};

/// Facts about a session the peer opened, for the authorization hook.
#[derive(Debug, Clone)]
pub struct OpenInfo {
    /// The session.
    pub id: SessionId,
    /// What it is for: a topic, channel or service name.
    pub kind: String,
    /// Per-session credentials from the OPEN; redacted in `Debug`.
    pub auth: Credential,
}

/// One logical session over a shared WebSocket connection.
///
/// `send` waits for credit (real backpressure); `recv` returns messages as the peer sends
/// them and returns credit as they are read.
///
/// # Ending a session
///
/// Nothing this side already sent is lost unless it asks for that with
/// [`reset`](Session::reset) (spec/sessions.md#dropping-a-session):
///
/// - [`finish`](Session::finish) half-closes: FIN follows the queued messages, `recv` goes on.
/// - [`close`](Session::close) sends the queued messages, then CLOSE with its code.
/// - [`reset`](Session::reset) ends the session at once with RESET: queued messages are
///   discarded on both sides.
/// - Dropping the handle after the peer's FIN (`recv` returned `None` with no close reason)
///   is an implicit `finish`: FIN follows the queued messages and the session ends normally
///   (1000) on both sides. So the echo loop `while let Some(m) = session.recv().await {
///   session.send(m).await?; }` delivers its last echo.
/// - Dropping it before the peer's FIN closes gracefully with 4010 CANCELLED: the queued
///   messages go out first, messages the peer still sends are discarded.
pub struct Session {
    inner: Arc<Inner>,
    id: SessionId,
    /// Shared rather than a `String`: a session's handle is held for as long as the
    /// session, and the driver gives sessions of the same kind one copy of it (P7).
    kind: Arc<str>,
    principal: Option<Arc<crate::auth::Principal>>,
    /// Whether this side may send DATA on the session, per its grant.
    may_send: bool,
    /// `close` or `reset` already ended it: dropping is not an implicit end.
    done: bool,
    /// How it ended, kept once seen so `close_reason` can lend it (boxed: most handles
    /// never ask).
    closed: OnceLock<Box<SessionClosed>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("may_send", &self.may_send)
            .finish_non_exhaustive()
    }
}

/// A cloneable handle that sends on a session (for example from a fan-out task) while the
/// [`Session`] itself keeps receiving. Sends from all handles keep their order per handle.
pub struct SessionSender {
    inner: Arc<Inner>,
    id: SessionId,
    closed: OnceLock<Box<SessionClosed>>,
}

impl fmt::Debug for SessionSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSender")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Clone for SessionSender {
    fn clone(&self) -> Self {
        self.inner.lock().add_handle(self.id);
        SessionSender {
            inner: self.inner.clone(),
            id: self.id,
            closed: OnceLock::new(),
        }
    }
}

impl Drop for SessionSender {
    fn drop(&mut self) {
        self.inner.lock().release_handle(self.id);
    }
}

/// Queues `message` on session `id`, waiting for room: the one send path of every handle.
async fn send_on(inner: &Inner, id: SessionId, message: Bytes) -> Result<(), SendError> {
    let mut message = Some(message);
    poll_fn(|cx| inner.with(|state, wakers| state.poll_send(cx, id, &mut message, wakers))).await
}

/// How the session ended, cached in `cell` once known so a reference can be handed out.
fn close_reason<'a>(
    inner: &Inner,
    id: SessionId,
    cell: &'a OnceLock<Box<SessionClosed>>,
) -> Option<&'a SessionClosed> {
    if cell.get().is_none() {
        let closed = inner.lock().close_reason(id)?;
        let _ = cell.set(Box::new(closed));
    }
    cell.get().map(|closed| &**closed)
}

/// Waits until the session has ended (by either side, or with its connection).
async fn closed_on(inner: &Inner, id: SessionId) {
    loop {
        let notified = inner.ended.notified();
        tokio::pin!(notified);
        // Registered before the check, so an end in between is not missed.
        notified.as_mut().enable();
        if inner.lock().close_reason(id).is_some() {
            return;
        }
        notified.await;
    }
}

impl SessionSender {
    /// The session's ID.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Sends one message, waiting for credit like [`Session::send`].
    ///
    /// # Cancel safety
    ///
    /// As [`Session::send`]: the message is queued only if the future returns `Ok`; a
    /// dropped future never sends it later.
    pub async fn send(&self, message: Bytes) -> Result<(), SendError> {
        send_on(&self.inner, self.id, message).await
    }

    /// Polls to queue `message`, like [`Session::poll_send`]: on `Ready(Ok)` the option has
    /// been emptied; on `Pending` the message stays with the caller and `cx` is woken when
    /// the session may have room.
    pub fn poll_send(
        &self,
        cx: &mut Context<'_>,
        message: &mut Option<Bytes>,
    ) -> Poll<Result<(), SendError>> {
        let id = self.id;
        self.inner
            .with(|state, wakers| state.poll_send(cx, id, message, wakers))
    }

    /// Queues `message` if the session has room now, never waiting: for fan-out that must
    /// not be held up by one slow receiver.
    pub fn try_send(&self, message: Bytes) -> Result<(), TrySendError> {
        let mut message = Some(message);
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_send(&mut cx, &mut message) {
            Poll::Ready(Ok(())) => Ok(()),
            Poll::Ready(Err(e)) => Err(TrySendError::Failed(e)),
            Poll::Pending => Err(TrySendError::Full(message.unwrap_or_default())),
        }
    }

    /// Registers `waker` to be woken once when the session ends; false if it already has.
    pub(crate) fn watch_close(&self, waker: &Waker) -> bool {
        let id = self.id;
        self.inner.lock().watch_close(id, waker)
    }

    /// [`reset`](SessionSender::reset) without a future, for code that cannot wait.
    pub(crate) fn reset_now(&self, code: CloseCode, reason: &str) {
        let id = self.id;
        self.inner
            .with(|state, wakers| state.end_session(id, code, reason, false, wakers));
    }

    /// Half-closes: FIN follows the messages already queued, and no handle of this session
    /// sends after it; receiving goes on.
    ///
    /// # Cancel safety
    ///
    /// Acts at its first poll and never waits.
    pub async fn finish(&self) {
        let id = self.id;
        self.inner.with(|state, wakers| state.finish(id, wakers));
    }

    /// Closes the session with RESET and `code` (e.g. 4007 REVOKED, 4008 SLOW_CONSUMER).
    ///
    /// # Cancel safety
    ///
    /// Acts at its first poll and never waits.
    pub async fn reset(&self, code: CloseCode, reason: &str) {
        let id = self.id;
        self.inner
            .with(|state, wakers| state.end_session(id, code, reason, false, wakers));
    }

    /// How the session ended, once it has.
    pub fn close_reason(&self) -> Option<&SessionClosed> {
        close_reason(&self.inner, self.id, &self.closed)
    }

    /// This handle as a [`Sink`](futures_util::Sink) of messages: each item waits for credit
    /// like [`SessionSender::send`] before the sink is ready for the next one.
    pub fn into_sink(self) -> impl futures_util::Sink<Bytes, Error = SendError> + Send + 'static {
        futures_util::sink::unfold(self, |sender, message: Bytes| async move {
            sender.send(message).await?;
            Ok::<_, SendError>(sender)
        })
    }

    /// Waits until the session has ended (by either side, or with its connection); then
    /// [`close_reason`](SessionSender::close_reason) says how.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only observes.
    pub async fn closed(&self) {
        closed_on(&self.inner, self.id).await;
    }
}

impl Session {
    /// A handle for a session whose slot the shared state already holds (one handle).
    pub(crate) fn new(
        inner: Arc<Inner>,
        id: SessionId,
        kind: Arc<str>,
        principal: Option<Arc<crate::auth::Principal>>,
        may_send: bool,
    ) -> Session {
        Session {
            inner,
            id,
            kind,
            principal,
            may_send,
            done: false,
            closed: OnceLock::new(),
        }
    }

    /// The session's ID on its connection.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// What the session is for (its kind or topic).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// On the server: the authenticated principal of the connection that opened it.
    pub fn principal(&self) -> Option<&crate::auth::Principal> {
        self.principal.as_deref()
    }

    /// Sends one message, waiting while the session cannot take it (credit exhausted, its
    /// send queue or the connection's send buffer full): this is where backpressure reaches
    /// the application.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the message is queued in the poll that returns `Ok`, and only then. A
    /// future dropped before it resolved did not queue its message and never sends it
    /// later, so `timeout(d, session.send(m))` in a loop neither duplicates nor buffers.
    pub async fn send(&mut self, message: Bytes) -> Result<(), SendError> {
        send_on(&self.inner, self.id, message).await
    }

    /// Polls to queue `message`: `Ready(Ok)` once it is queued (and `message` is `None`),
    /// `Pending` while the session has no room (the message stays in `message`).
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        message: &mut Option<Bytes>,
    ) -> Poll<Result<(), SendError>> {
        let id = self.id;
        self.inner
            .with(|state, wakers| state.poll_send(cx, id, message, wakers))
    }

    /// Splits the session into its receiving half and a sending half, for a reader and a
    /// writer in different tasks without sharing `&mut Session`.
    ///
    /// The receiving half keeps the session's ending rules: dropping it ends the session as
    /// dropping the `Session` does (an implicit finish after the peer's FIN, else 4010), so
    /// the writer's sends fail from then on. Finish from the writer with
    /// [`SessionSender::finish`].
    pub fn into_split(self) -> (SessionReceiver, SessionSender) {
        let sender = self.sender();
        (SessionReceiver { session: self }, sender)
    }

    /// A cloneable send handle for this session.
    pub fn sender(&self) -> SessionSender {
        self.inner.lock().add_handle(self.id);
        SessionSender {
            inner: self.inner.clone(),
            id: self.id,
            closed: OnceLock::new(),
        }
    }

    /// Whether this side may send on the session (its grant's permissions).
    pub fn may_send(&self) -> bool {
        self.may_send
    }

    /// The next message, or `None` once the session has ended (see [`Session::close_reason`])
    /// or the peer finished and everything it sent was read. Taking a message is what
    /// returns its credit to the peer.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a dropped `recv` future took no message.
    pub async fn recv(&mut self) -> Option<Bytes> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message (see [`recv`](Session::recv)).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let id = self.id;
        self.inner
            .with(|state, wakers| state.poll_recv(cx, id, wakers))
    }

    /// Half-closes: this side sends nothing more after what it queued; `recv` keeps working.
    ///
    /// # Cancel safety
    ///
    /// Acts at its first poll and never waits.
    pub async fn finish(&mut self) {
        let id = self.id;
        self.inner.with(|state, wakers| state.finish(id, wakers));
    }

    /// Closes the session gracefully: queued messages go out, then CLOSE with `code`.
    ///
    /// # Cancel safety
    ///
    /// Acts at its first poll and never waits, so it cannot be cut short.
    pub async fn close(mut self, code: CloseCode, reason: &str) {
        self.done = true;
        let id = self.id;
        self.inner
            .with(|state, wakers| state.end_session(id, code, reason, true, wakers));
    }

    /// Aborts the session with RESET and `code`: messages still queued on either side are
    /// discarded (spec/sessions.md#reset-abort).
    ///
    /// # Cancel safety
    ///
    /// Acts at its first poll and never waits.
    pub async fn reset(mut self, code: CloseCode, reason: &str) {
        self.done = true;
        let id = self.id;
        self.inner
            .with(|state, wakers| state.end_session(id, code, reason, false, wakers));
    }

    /// How the session ended, once it has.
    pub fn close_reason(&self) -> Option<&SessionClosed> {
        close_reason(&self.inner, self.id, &self.closed)
    }

    /// Waits until the session has ended; then [`close_reason`](Session::close_reason)
    /// says how.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only observes.
    pub async fn closed(&self) {
        closed_on(&self.inner, self.id).await;
    }

    /// The session's counters.
    pub async fn stats(&self) -> Option<SessionStats> {
        self.inner.lock().conn.session_stats(self.id)
    }
}

/// The receiving half of a [`Session`], from [`Session::into_split`]. It owns the session's
/// end: dropping it is dropping the session.
pub struct SessionReceiver {
    session: Session,
}

impl fmt::Debug for SessionReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionReceiver")
            .field("id", &self.session.id)
            .field("kind", &self.session.kind)
            .finish_non_exhaustive()
    }
}

impl SessionReceiver {
    /// The session's ID on its connection.
    pub fn id(&self) -> SessionId {
        self.session.id()
    }

    /// What the session is for (its kind or topic).
    pub fn kind(&self) -> &str {
        self.session.kind()
    }

    /// On the server: the authenticated principal of the connection that opened it.
    pub fn principal(&self) -> Option<&crate::auth::Principal> {
        self.session.principal()
    }

    /// The next message, as [`Session::recv`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a dropped `recv` future took no message.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.session.recv().await
    }

    /// Polls for the next message (see [`recv`](SessionReceiver::recv)).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.session.poll_recv(cx)
    }

    /// Closes the session gracefully, as [`Session::close`].
    ///
    /// # Cancel safety
    ///
    /// Acts at its first poll and never waits.
    pub async fn close(self, code: CloseCode, reason: &str) {
        self.session.close(code, reason).await;
    }

    /// Aborts the session with RESET, as [`Session::reset`].
    ///
    /// # Cancel safety
    ///
    /// Acts at its first poll and never waits.
    pub async fn reset(self, code: CloseCode, reason: &str) {
        self.session.reset(code, reason).await;
    }

    /// How the session ended, once it has.
    pub fn close_reason(&self) -> Option<&SessionClosed> {
        self.session.close_reason()
    }

    /// Waits until the session has ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only observes.
    pub async fn closed(&self) {
        self.session.closed().await;
    }

    /// The session's counters.
    pub async fn stats(&self) -> Option<SessionStats> {
        self.session.stats().await
    }
}

impl Stream for SessionReceiver {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.session.poll_recv(cx)
    }
}

impl Stream for Session {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.poll_recv(cx)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let (id, done) = (self.id, self.done);
        self.inner.with(|state, wakers| {
            if !done {
                state.dropped(id, wakers);
            }
            state.release_handle(id);
        });
    }
}
