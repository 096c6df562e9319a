//! C. commands from the application.

use bytes::{Bytes, BytesMut};

use super::{reason_text, Connection, Control, State};
use crate::code::CloseCode;
use crate::config::Grant;
use crate::error::{OpenError, SendError, SessionError};
use crate::event::{Event, Initiator};
use crate::frame::{
    Accept, Credential, Frame, GoAway, Open, OpenRequest, RateLimits, SessionClose, Text,
    HEADER_LEN, MAX_KIND_LEN, OPEN_FIXED_LEN,
};
use crate::id::SessionId;
use crate::rate::TokenBucket;
use crate::session::{PendingClose, Phase, RecvHalf, SendHalf, Session, Window};
use crate::time::Timestamp;

/// How long no other session may have received DATA for a window to grow.
const GROWTH_QUIET: std::time::Duration = std::time::Duration::from_millis(100);

impl Connection {
    /// Opens a session of `kind` with credentials `auth` (a [`Credential`], or anything that
    /// becomes one: `Bytes`, `Vec<u8>`, a static string). DATA may be sent at once, within
    /// the peer's initial credit; [`Event::Opened`] or [`Event::SessionClosed`] follows.
    pub fn open(
        &mut self,
        now: Timestamp,
        kind: &str,
        auth: impl Into<Credential>,
        request: OpenRequest,
    ) -> Result<SessionId, OpenError> {
        let auth = auth.into();
        if self.state != State::Open {
            return Err(OpenError::NotOpen);
        }
        if self.goaway_received.is_some() || self.goaway_sent.is_some() {
            return Err(OpenError::GoingAway);
        }
        let peer = self.now_peer();
        if self.local_live >= peer.max_sessions {
            return Err(OpenError::TooManySessions {
                max: peer.max_sessions,
            });
        }
        let metadata = kind.len().saturating_add(auth.len());
        // spec/sessions.md#transport-message-size: every frame fits in one transport message,
        // so an OPEN carries at most L - 25 bytes of metadata (10 header + 15 fixed).
        let fits_transport = self
            .max_transmit_size()
            .saturating_sub(HEADER_LEN.saturating_add(OPEN_FIXED_LEN));
        let max_metadata = usize::try_from(peer.max_open_metadata)
            .unwrap_or(usize::MAX)
            .min(fits_transport);
        if kind.len() > MAX_KIND_LEN
            || auth.len() > usize::from(u16::MAX)
            || metadata > max_metadata
        {
            return Err(OpenError::MetadataTooLarge {
                len: metadata,
                max: max_metadata.min(MAX_KIND_LEN.saturating_add(usize::from(u16::MAX))),
            });
        }
        let id = match self.last_local_id {
            0 => match self.side {
                crate::Side::Client => SessionId::FIRST_CLIENT,
                crate::Side::Server => SessionId::FIRST_SERVER,
            },
            last => SessionId(last).next().ok_or(OpenError::IdsExhausted)?,
        };
        let limits = &self.config.limits;
        let window = Window::new(limits.initial_credit_messages, limits.initial_credit_bytes);
        if !self.reserve_window(window) {
            return Err(OpenError::RecvBufferFull);
        }
        let limits = &self.config.limits;
        let send = SendHalf::new(
            Window::new(peer.initial_credit_messages, peer.initial_credit_bytes),
            peer.max_message_for_initial_window(),
        );
        let recv = RecvHalf::new(
            window,
            limits.max_message_size.min(window.bytes),
            limits.rate_policy,
        );
        self.sessions
            .insert(Session::new(id, Phase::Opening, send, recv, now));
        self.last_local_id = id.0;
        let deadline = now.saturating_add(self.config.timeouts.open_timeout);
        self.opening.push_back((id, deadline));
        self.local_live = self.local_live.saturating_add(1);
        self.control.push_back(Control::Frame(Frame::Open(Open {
            session_id: id,
            request,
            kind: Text::truncated(kind, MAX_KIND_LEN),
            auth,
        })));
        Ok(id)
    }

    /// Accepts a session the peer opened ([`Event::Incoming`]) with the application's
    /// authorization decision. Early data it already sent becomes readable if the grant
    /// lets it send; otherwise the session is closed with 1008.
    pub fn accept(
        &mut self,
        now: Timestamp,
        id: SessionId,
        grant: Grant,
    ) -> Result<(), SessionError> {
        let session = self
            .sessions
            .get(id)
            .ok_or(SessionError::UnknownSession(id))?;
        if session.phase != Phase::Pending {
            return Err(SessionError::NotPending(id));
        }
        let extra = grant
            .extra_credit
            .map(|(m, b)| Window::new(m, b))
            .unwrap_or_default();
        let new_window = session
            .recv
            .window
            .checked_add(extra)
            .ok_or(SessionError::CreditOverflow)?;
        if !extra.is_zero() && !self.reserve_window(extra) {
            return Err(SessionError::RecvBufferFull);
        }
        let limits = &self.config.limits;
        let rate = grant.rate.unwrap_or(limits.session_rate);
        let policy = grant.rate_policy.unwrap_or(limits.rate_policy);
        let max_message = grant
            .max_message_size
            .unwrap_or(limits.max_message_size)
            .min(new_window.bytes)
            .max(1);
        let Some(session) = self.sessions.get_mut(id) else {
            return Err(SessionError::UnknownSession(id));
        };
        session.phase = Phase::Open;
        session.weight = u32::from(grant.weight.max(1));
        session.recv.permitted = grant.permissions.opener_may_send();
        session.send.permitted = grant.permissions.acceptor_may_send();
        session.recv.window = new_window;
        session.recv.unannounced = session.recv.unannounced.checked_add(extra).unwrap_or(extra);
        session.recv.max_message = max_message;
        session.recv.policy = policy;
        session.recv.set_rate(
            bucket(rate.messages_per_sec, rate.burst_messages, now),
            bucket(rate.bytes_per_sec, rate.burst_bytes, now),
        );
        let early_messages = !session.recv.queue.is_empty();
        let early_any = early_messages || session.recv.partial.is_some() || session.recv.fin;
        let early_too_big = session
            .recv
            .queue
            .iter()
            .map(|(m, _)| m.len())
            .chain(std::iter::once(session.recv.partial_len()))
            .any(|len| len > usize::try_from(max_message).unwrap_or(usize::MAX));
        let early_fin = session.recv.fin;
        let permitted = session.recv.permitted;
        let credit_now = !extra.is_zero() && !session.recv.credit_queued;
        if credit_now {
            session.recv.credit_queued = true;
        }
        self.control.push_back(Control::Frame(Frame::Accept(Accept {
            session_id: id,
            permissions: grant.permissions,
            max_message_size: max_message,
            rate: RateLimits { ..rate },
        })));
        if credit_now {
            self.control.push_back(Control::Credit(id));
        }
        self.stats.sessions_opened = self.stats.sessions_opened.saturating_add(1);
        self.forget_pending(id);
        if early_any && !permitted {
            self.session_error(
                now,
                id,
                CloseCode::POLICY_VIOLATION,
                "sending is not permitted",
            );
            return Ok(());
        }
        if early_too_big {
            self.session_error(now, id, CloseCode::MESSAGE_TOO_BIG, "message too big");
            return Ok(());
        }
        if early_messages {
            self.emit(Event::Readable { id });
        }
        if early_fin {
            self.emit(Event::Finished { id });
        }
        self.schedule(id);
        Ok(())
    }

    /// Refuses a session the peer opened, with a code (e.g. 4000 UNAUTHORIZED, 4001 FORBIDDEN).
    pub fn reject(
        &mut self,
        now: Timestamp,
        id: SessionId,
        code: CloseCode,
        reason: &str,
    ) -> Result<(), SessionError> {
        let session = self
            .sessions
            .get(id)
            .ok_or(SessionError::UnknownSession(id))?;
        if session.phase != Phase::Pending {
            return Err(SessionError::NotPending(id));
        }
        check_code(code)?;
        self.stats.opens_refused = self.stats.opens_refused.saturating_add(1);
        // Refusing a pending open is a RESET like any other (spec/frames.md#close).
        self.reset(now, id, code, reason)
    }

    /// Queues one whole message. It is fragmented into frames of at most the peer's
    /// MAX_FRAME_SIZE and sent as credit allows, interleaved fairly with other sessions.
    ///
    /// [`SendError::Blocked`] is backpressure: wait for [`Event::Writable`] and retry. A
    /// session blocked by the connection's send buffer is woken once the message it was
    /// refused fits; a message that could not fit even in an empty buffer is
    /// [`SendError::TooLarge`].
    pub fn send(&mut self, now: Timestamp, id: SessionId, message: Bytes) -> Result<(), SendError> {
        let overhead = u64::from(self.config.limits.per_message_overhead);
        let max_queued = self.config.limits.max_queued_messages;
        let max_buffer = self.config.limits.max_send_buffer;
        let send_buffered = self.send_buffered;
        let session = self
            .sessions
            .get_mut(id)
            .ok_or(SendError::UnknownSession(id))?;
        if session.phase == Phase::Pending || !session.send.permitted {
            return Err(SendError::NotPermitted);
        }
        if session.send.fin_requested
            || session.local_close.is_some()
            || session.peer_close.is_some()
        {
            return Err(SendError::Finished);
        }
        if message.len() > usize::try_from(session.send.max_message).unwrap_or(usize::MAX) {
            return Err(SendError::TooLarge {
                len: message.len(),
                max: session.send.max_message,
            });
        }
        let cost = u64::try_from(message.len())
            .unwrap_or(u64::MAX)
            .saturating_add(overhead);
        if cost > max_buffer {
            // Would not fit even in an empty send buffer: blocking would be forever.
            return Err(SendError::TooLarge {
                len: message.len(),
                max: u32::try_from(max_buffer.saturating_sub(overhead)).unwrap_or(u32::MAX),
            });
        }
        let queue_full = u32::try_from(session.send.queue.len()).unwrap_or(u32::MAX) >= max_queued;
        let buffer_full = send_buffered.saturating_add(cost) > max_buffer;
        if queue_full || buffer_full {
            session.send.blocked_cost = cost;
            if !session.send.owes_writable {
                session.send.owes_writable = true;
                if buffer_full && !queue_full {
                    self.blocked.push_back(id);
                }
            }
            return Err(SendError::Blocked);
        }
        session.send.queued_bytes = session
            .send
            .queued_bytes
            .saturating_add(u64::try_from(message.len()).unwrap_or(u64::MAX));
        session.send.queue.push_back(message);
        self.send_buffered = self.send_buffered.saturating_add(cost);
        self.schedule(id);
        // A message queued behind exhausted credit starts a stall as surely as credit
        // running out behind queued messages.
        self.note_stall(now, id);
        Ok(())
    }

    /// Takes the next complete message of a session, if any. Reading is what returns credit
    /// to the peer (spec/sessions.md#credit), so a session the application does not read
    /// holds at most its window.
    pub fn recv(&mut self, now: Timestamp, id: SessionId) -> Option<Bytes> {
        let overhead = self.config.limits.per_message_overhead;
        let session = self.sessions.get_mut(id)?;
        if session.phase != Phase::Open {
            return None;
        }
        let (message, _) = session.recv.queue.pop_front()?;
        let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
        session.recv.queued_bytes = session.recv.queued_bytes.saturating_sub(u64::from(len));
        session.recv.unannounced = session
            .recv
            .unannounced
            .checked_add(Window::new(1, len))
            .unwrap_or(session.recv.window);
        self.recv_buffered = self
            .recv_buffered
            .saturating_sub(u64::from(len).saturating_add(u64::from(overhead)));
        self.maybe_grow_window(now, id);
        self.maybe_announce(now, id);
        self.maybe_complete(now, id);
        Some(message)
    }

    /// Doubles a session's receive window when the window, not the reader, is what limits the
    /// peer (spec/sessions.md#window-growth): the application has just read everything queued
    /// while the peer's credit is under a quarter window, so the sender is waiting for credit
    /// and the reader for data. A reader that falls behind leaves messages queued and never
    /// grows its window, so memory follows only what the application keeps up with. Only a
    /// session receiving alone grows: more bytes in flight for one would queue ahead of the
    /// others' messages on the shared connection (P8).
    fn maybe_grow_window(&mut self, now: Timestamp, id: SessionId) {
        if self.others_receiving(now, id, GROWTH_QUIET) {
            self.take_back_growth(id);
            return;
        }
        let limits = &self.config.limits;
        let growth = limits.max_window_growth.max(1);
        let most = Window::new(
            limits.initial_credit_messages.saturating_mul(growth),
            limits.initial_credit_bytes.saturating_mul(growth),
        );
        let Some(session) = self.sessions.get(id) else {
            return;
        };
        let recv = &session.recv;
        let starved = recv.queue.is_empty()
            && recv.partial.is_none()
            && (recv.credit.messages < recv.window.messages / 4
                || recv.credit.bytes < recv.window.bytes / 4);
        if !starved || recv.fin || !recv.permitted || session.peer_close.is_some() {
            return;
        }
        let extra = Window::new(
            recv.window
                .messages
                .min(most.messages.saturating_sub(recv.window.messages)),
            recv.window
                .bytes
                .min(most.bytes.saturating_sub(recv.window.bytes)),
        );
        if extra.is_zero() {
            return;
        }
        let (Some(window), Some(unannounced)) = (
            recv.window.checked_add(extra),
            recv.unannounced.checked_add(extra),
        ) else {
            return;
        };
        if !self.reserve_window(extra) {
            return;
        }
        if let Some(session) = self.sessions.get_mut(id) {
            session.recv.window = window;
            session.recv.unannounced = unannounced;
            session.recv.grown = session.recv.grown.checked_add(extra).unwrap_or(extra);
        }
    }

    /// Another session is receiving: what growth added to this window is taken back from
    /// the consumed credit not yet announced, so the sender's bytes in flight fall back to
    /// the initial window and stop queueing ahead of the others (spec/sessions.md#window-growth).
    /// Never below the window before growth, so explicit grants and the message maximum hold.
    fn take_back_growth(&mut self, id: SessionId) {
        let overhead = self.config.limits.per_message_overhead;
        let Some(session) = self.sessions.get_mut(id) else {
            return;
        };
        let recv = &mut session.recv;
        let back = Window::new(
            recv.grown.messages.min(recv.unannounced.messages),
            recv.grown.bytes.min(recv.unannounced.bytes),
        );
        if back.is_zero() {
            return;
        }
        recv.window = recv.window.checked_sub(back).unwrap_or(recv.window);
        recv.unannounced = recv.unannounced.checked_sub(back).unwrap_or_default();
        recv.grown = recv.grown.checked_sub(back).unwrap_or_default();
        self.recv_reserved = self
            .recv_reserved
            .saturating_sub(back.memory_cost(overhead));
    }

    /// Adds `messages` and `bytes` to a session's receive window and announces them at once
    /// (an explicit request for more, like RSocket's REQUEST_N).
    pub fn grant_credit(
        &mut self,
        _now: Timestamp,
        id: SessionId,
        messages: u32,
        bytes: u32,
    ) -> Result<(), SessionError> {
        let extra = Window::new(messages, bytes);
        let session = self
            .sessions
            .get(id)
            .ok_or(SessionError::UnknownSession(id))?;
        let window = session
            .recv
            .window
            .checked_add(extra)
            .ok_or(SessionError::CreditOverflow)?;
        let unannounced = session
            .recv
            .unannounced
            .checked_add(extra)
            .ok_or(SessionError::CreditOverflow)?;
        if !self.reserve_window(extra) {
            return Err(SessionError::RecvBufferFull);
        }
        let Some(session) = self.sessions.get_mut(id) else {
            return Err(SessionError::UnknownSession(id));
        };
        session.recv.window = window;
        session.recv.unannounced = unannounced;
        if !session.recv.credit_queued && !unannounced.is_zero() {
            session.recv.credit_queued = true;
            self.control.push_back(Control::Credit(id));
        }
        Ok(())
    }

    /// Half-closes: no more messages from this side after those queued. On a session the
    /// grant does not let this side send on, no FIN is sent (spec/sessions.md#closing): such
    /// a session ends with [`close_session`](Connection::close_session) or a reset.
    pub fn finish(&mut self, _now: Timestamp, id: SessionId) -> Result<(), SessionError> {
        let session = self
            .sessions
            .get_mut(id)
            .ok_or(SessionError::UnknownSession(id))?;
        session.send.fin_requested = true;
        self.schedule(id);
        Ok(())
    }

    /// Closes a session gracefully: queued messages go out, then CLOSE with `code`.
    /// Messages still arriving are discarded.
    pub fn close_session(
        &mut self,
        now: Timestamp,
        id: SessionId,
        code: CloseCode,
        reason: &str,
    ) -> Result<(), SessionError> {
        check_code(code)?;
        let session = self
            .sessions
            .get_mut(id)
            .ok_or(SessionError::UnknownSession(id))?;
        if session.phase == Phase::Pending {
            return self.reject(now, id, code, reason);
        }
        if session.send.queue.is_empty() {
            let close = SessionClose::new(id, code, reason);
            self.end_session(now, id, close, Initiator::Local, Some(Frame::Close));
            return Ok(());
        }
        session.local_close = Some(Box::new(PendingClose {
            code,
            reason: reason_text(reason),
            retry_after_ms: 0,
        }));
        // Stop delivering: what was received but not read is discarded as if read, so its
        // credit goes back to the peer (a peer closing too must be able to drain its queue,
        // or both would wait for each other's credit forever). A message still arriving
        // keeps its message credit, and its overhead, until its END (see `discard_data`).
        let overhead = u64::from(self.config.limits.per_message_overhead);
        let complete = u32::try_from(session.recv.queue.len()).unwrap_or(u32::MAX);
        let released = session
            .recv
            .queued_bytes
            .saturating_add(u64::from(complete).saturating_mul(overhead));
        let freed = Window::new(
            complete,
            u32::try_from(session.recv.queued_bytes).unwrap_or(u32::MAX),
        );
        session.recv.unannounced = session
            .recv
            .unannounced
            .checked_add(freed)
            .unwrap_or(session.recv.window);
        session.recv.queue.clear();
        if let Some(partial) = session.recv.partial.as_mut() {
            partial.buf = BytesMut::new();
        }
        session.recv.queued_bytes = 0;
        self.recv_buffered = self.recv_buffered.saturating_sub(released);
        self.maybe_announce(now, id);
        Ok(())
    }

    /// Aborts a session at once with RESET; undelivered data is discarded on both sides.
    pub fn reset(
        &mut self,
        now: Timestamp,
        id: SessionId,
        code: CloseCode,
        reason: &str,
    ) -> Result<(), SessionError> {
        check_code(code)?;
        if self.sessions.get(id).is_none() {
            return Err(SessionError::UnknownSession(id));
        }
        let close = SessionClose::new(id, code, reason);
        self.end_session(now, id, close, Initiator::Local, Some(Frame::Reset));
        Ok(())
    }

    /// Revokes a session's authorization: it ends at once with 4007 REVOKED, nothing more is
    /// delivered or sent on it, and its credit is released.
    pub fn revoke(
        &mut self,
        now: Timestamp,
        id: SessionId,
        reason: &str,
    ) -> Result<(), SessionError> {
        self.reset(now, id, CloseCode::REVOKED, reason)
    }

    /// Starts a graceful shutdown: GOAWAY now, no new peer sessions, and CONN_CLOSE 1001 once
    /// the live sessions finish or `Timeouts::shutdown_grace` passes. A code not valid on the
    /// wire (spec/close-codes.md#valid-values) is sent as 1001 GOING_AWAY.
    ///
    /// Before the peer's SETTINGS has arrived, the GOAWAY is held and sent as soon as it
    /// does: a server told to drain reaches connections still in their handshake too.
    pub fn go_away(&mut self, now: Timestamp, code: CloseCode, reason: &str) {
        if self.state == State::Handshaking {
            self.goaway_requested = Some((code, reason.to_owned()));
            return;
        }
        if self.state != State::Open || self.goaway_sent.is_some() {
            return;
        }
        let last = SessionId(self.last_peer_id);
        self.goaway_sent = Some(last);
        self.control.push_back(Control::Frame(Frame::GoAway(GoAway {
            last_session_id: last,
            code: wire_code_or(code, CloseCode::GOING_AWAY),
            reason: reason_text(reason),
        })));
        self.timers.start_shutdown(&self.config.timeouts, now);
        self.maybe_finish_shutdown();
    }

    /// Closes the connection now with `code`: CONN_CLOSE is the last frame sent. A code not
    /// valid on the wire (spec/close-codes.md#valid-values) is replaced by 1011
    /// INTERNAL_ERROR, so the peer never receives a CONN_CLOSE it must reject.
    pub fn close(&mut self, now: Timestamp, code: CloseCode, reason: &str) {
        self.close_retry_after(now, code, reason, 0);
    }

    /// Like [`close`](Self::close), with CONN_CLOSE's `retry_after_ms` set: how long the peer
    /// should wait before it reconnects (1013 TRY_AGAIN_LATER when shedding load,
    /// spec/close-codes.md).
    pub fn close_retry_after(
        &mut self,
        _now: Timestamp,
        code: CloseCode,
        reason: &str,
        retry_after_ms: u32,
    ) {
        let code = wire_code_or(code, CloseCode::INTERNAL_ERROR);
        self.begin_close(code, reason, retry_after_ms, Initiator::Local);
    }

    /// Queues a CREDIT if enough was consumed, unless throttled (spec/sessions.md#credit).
    pub(super) fn maybe_announce(&mut self, now: Timestamp, id: SessionId) {
        let Some(session) = self.sessions.get_mut(id) else {
            return;
        };
        // spec/sessions.md#credit: after the peer's CLOSE it sends nothing more.
        if session.peer_close.is_some() || !session.recv.should_announce() {
            return;
        }
        // Credit waits for the session's buckets and the connection's (both throttle).
        let throttling = session.recv.policy == crate::config::RatePolicy::Throttle
            && !(session.recv.rate_has_token(now)
                && self.conn_messages.has_token(now)
                && self.conn_bytes.has_token(now));
        if throttling {
            if !session.recv.throttled {
                session.recv.throttled = true;
                self.throttled.push_back(id);
                self.arm_throttle(now);
            }
            return;
        }
        session.recv.credit_queued = true;
        self.control.push_back(Control::Credit(id));
    }
}

fn bucket(rate: u32, burst: u32, now: Timestamp) -> TokenBucket {
    if rate == 0 {
        TokenBucket::unlimited()
    } else {
        TokenBucket::new(rate, burst.max(1), now)
    }
}

/// `code` if it may be sent, else `fallback` (for commands that cannot refuse).
fn wire_code_or(code: CloseCode, fallback: CloseCode) -> CloseCode {
    if code.is_valid_on_wire() {
        code
    } else {
        fallback
    }
}

fn check_code(code: CloseCode) -> Result<(), SessionError> {
    if code.is_valid_on_wire() {
        Ok(())
    } else {
        Err(SessionError::InvalidCode(code))
    }
}
