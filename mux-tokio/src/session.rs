//! Session handles: what the application holds for one logical session.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use mux_proto::{CloseCode, SessionId, SessionStats};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::driver::Command;
use crate::error::{SendError, SessionClosed};

/// State shared between a session handle and its connection task.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The connection task holds messages it could not hand over (the inbox was full).
    pub(crate) starved: AtomicBool,
    /// How the session ended, once it has.
    pub(crate) closed: OnceLock<SessionClosed>,
    /// Woken once `closed` is set (see [`Shared::end`]).
    ended: Notify,
}

impl Shared {
    /// Records how the session ended and wakes whoever waits for it.
    pub(crate) fn end(&self, closed: SessionClosed) {
        let _ = self.closed.set(closed);
        self.ended.notify_waiters();
    }

    /// Waits until the session has ended.
    async fn ended(&self) {
        let notified = self.ended.notified();
        tokio::pin!(notified);
        // Registered before the check, so an `end` in between is not missed.
        notified.as_mut().enable();
        if self.closed.get().is_none() {
            notified.await;
        }
    }
}

/// Facts about a session the peer opened, for the authorization hook.
#[derive(Clone)]
pub struct OpenInfo {
    /// The session.
    pub id: SessionId,
    /// What it is for: a topic, channel or service name.
    pub kind: String,
    /// Per-session credentials from the OPEN. Never logged; redacted in `Debug`.
    pub auth: Bytes,
}

impl fmt::Debug for OpenInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenInfo")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field(
                "auth",
                &format_args!("<{} bytes redacted>", self.auth.len()),
            )
            .finish()
    }
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
#[derive(Debug)]
pub struct Session {
    pub(crate) id: SessionId,
    pub(crate) kind: String,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) inbox: mpsc::Receiver<Bytes>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) principal: Option<crate::auth::Principal>,
    /// Whether this side may send DATA on the session, per its grant.
    pub(crate) may_send: bool,
    pub(crate) done: bool,
}

/// A cloneable handle that sends on a session (for example from a fan-out task) while the
/// [`Session`] itself keeps receiving. Sends from all handles keep their order per handle.
#[derive(Debug, Clone)]
pub struct SessionSender {
    id: SessionId,
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
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
    /// As [`Session::send`]: a dropped future never sends its message later.
    pub async fn send(&self, message: Bytes) -> Result<(), SendError> {
        send_on(&self.commands, &self.shared, self.id, message).await
    }

    /// Closes the session with RESET and `code` (e.g. 4007 REVOKED, 4008 SLOW_CONSUMER).
    pub async fn reset(&self, code: CloseCode, reason: &str) {
        close_on(&self.commands, self.id, code, reason, false).await;
    }

    /// How the session ended, once it has.
    pub fn close_reason(&self) -> Option<&SessionClosed> {
        self.shared.closed.get()
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
    pub async fn closed(&self) {
        self.shared.ended().await;
    }
}

/// Asks the connection task to end session `id`: gracefully (CLOSE after queued messages) or
/// at once (RESET).
async fn close_on(
    commands: &mpsc::Sender<Command>,
    id: SessionId,
    code: CloseCode,
    reason: &str,
    graceful: bool,
) {
    let command = Command::Close {
        id,
        code,
        reason: reason.to_owned(),
        graceful,
    };
    // A closed channel means the connection already ended, and the session with it.
    let _ = commands.send(command).await;
}

async fn send_on(
    commands: &mpsc::Sender<Command>,
    shared: &Shared,
    id: SessionId,
    message: Bytes,
) -> Result<(), SendError> {
    let (reply, done) = oneshot::channel();
    let closed = || closed_error(shared);
    commands
        .send(Command::Send { id, message, reply })
        .await
        .map_err(|_| closed())?;
    match done.await {
        // The connection task forgets a session once it ended; how it ended is recorded in
        // `shared`, so report that rather than the task's generic "gone".
        Ok(Err(SendError::Closed(_))) | Err(_) => Err(closed()),
        Ok(result) => result,
    }
}

fn closed_error(shared: &Shared) -> SendError {
    SendError::Closed(shared.closed.get().cloned().unwrap_or(SessionClosed {
        code: CloseCode::ABNORMAL,
        reason: "connection ended".into(),
        by_peer: false,
    }))
}

impl Session {
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
        self.principal.as_ref()
    }

    /// Sends one message, waiting while the session's send queue is full (credit exhausted):
    /// this is where backpressure reaches the application.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe in the sense that matters for `select!` and timeouts: once the future is
    /// dropped, the message is never sent later. A future dropped while it still waits for
    /// room has not sent its message; one dropped in the instant its send was taken (the
    /// reply not yet seen) may have sent it. `Ok` means it was queued, in order.
    pub async fn send(&mut self, message: Bytes) -> Result<(), SendError> {
        send_on(&self.commands, &self.shared, self.id, message).await
    }

    /// A cloneable send handle for this session.
    pub fn sender(&self) -> SessionSender {
        SessionSender {
            id: self.id,
            commands: self.commands.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Whether this side may send on the session (its grant's permissions).
    pub fn may_send(&self) -> bool {
        self.may_send
    }

    /// The next message, or `None` once the session has ended (see [`Session::close_reason`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a dropped `recv` future took no message.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let message = self.inbox.recv().await;
        self.after_recv();
        message
    }

    fn after_recv(&self) {
        // Tell the connection task there is room again if it was holding messages back.
        if self.shared.starved.swap(false, Ordering::AcqRel) {
            notify(&self.commands, Command::Drained { id: self.id });
        }
    }

    /// Half-closes: this side sends nothing more; `recv` keeps working.
    pub async fn finish(&mut self) {
        let _ = self.commands.send(Command::Finish { id: self.id }).await;
    }

    /// Closes the session gracefully: queued messages go out, then CLOSE with `code`.
    pub async fn close(mut self, code: CloseCode, reason: &str) {
        self.done = true;
        close_on(&self.commands, self.id, code, reason, true).await;
    }

    /// Aborts the session with RESET and `code`: messages still queued on either side are
    /// discarded (spec/sessions.md#reset-abort).
    pub async fn reset(mut self, code: CloseCode, reason: &str) {
        self.done = true;
        close_on(&self.commands, self.id, code, reason, false).await;
    }

    /// How the session ended, once it has.
    pub fn close_reason(&self) -> Option<&SessionClosed> {
        self.shared.closed.get()
    }

    /// The session's counters, from its connection task.
    pub async fn stats(&self) -> Option<SessionStats> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::SessionStats { id: self.id, reply })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }
}

impl Stream for Session {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let polled = self.inbox.poll_recv(cx);
        if polled.is_ready() {
            self.after_recv();
        }
        polled
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.done && self.shared.closed.get().is_none() {
            notify(&self.commands, Command::Dropped { id: self.id });
        }
    }
}

/// Queues `command` for the connection task without waiting. These notifications must not
/// be lost (a lost `Drained` leaves the session's messages held forever; a lost cancel leaks
/// the session), so when the queue is full the command is delivered from a spawned task.
/// Each session has at most one of each in flight (the starved flag, drop), so this is
/// bounded.
fn notify(commands: &mpsc::Sender<Command>, command: Command) {
    if let Err(mpsc::error::TrySendError::Full(command)) = commands.try_send(command) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let commands = commands.clone();
            runtime.spawn(async move {
                let _ = commands.send(command).await;
            });
        }
    }
}
