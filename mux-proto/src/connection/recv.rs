//! B. inputs from the peer: one WebSocket message at a time (spec/frames.md, spec/sessions.md).

use std::time::Duration;

use bytes::Bytes;

use super::{Arena, Connection, State};
use crate::code::CloseCode;
use crate::config::{PeerSettings, RatePolicy};
use crate::event::{Event, Initiator, LimitKind};
use crate::frame::{
    split_frame, Accept, Credit, Frame, FrameType, GoAway, Header, Open, SessionClose,
};
use crate::id::SessionId;
use crate::session::{Pacer, PendingClose, Phase, RecvHalf, SendHalf, Session, Window};
use crate::time::Timestamp;

impl Connection {
    /// Feeds one WebSocket **binary** message from the peer.
    ///
    /// Frames are processed in order; a malformed frame closes the connection with its code
    /// (spec/frames.md#errors) and the rest of the message is ignored. Then drain the outputs.
    pub fn handle_message(&mut self, now: Timestamp, mut message: Bytes) {
        if !matches!(self.state, State::Handshaking | State::Open) {
            return;
        }
        self.timers.on_receive(now);
        if message.is_empty() {
            self.fail(CloseCode::PROTOCOL_ERROR, "empty message");
            return;
        }
        let input_len = message.len();
        while !message.is_empty() {
            // spec/frames.md#frame-header: what the header alone decides is decided before
            // the payload is waited for or looked at.
            match Header::parse(&message) {
                Ok(header) => {
                    if !self.check_header(&header) {
                        return;
                    }
                }
                Err(e) => {
                    self.fail(e.close_code(), &e.to_string());
                    return;
                }
            }
            let (header, payload) = match split_frame(&mut message) {
                Ok(split) => split,
                Err(e) => {
                    self.fail(e.close_code(), &e.to_string());
                    return;
                }
            };
            self.stats.frames_received = self.stats.frames_received.saturating_add(1);
            self.handle_frame(now, header, payload, input_len);
            if self.state != State::Open {
                // Closed, or SETTINGS not yet in (only possible after an error).
                return;
            }
        }
    }

    /// A WebSocket-level ping or pong arrived (RFC 6455 §5.5.2–3). The WebSocket layer
    /// answers pings itself; this charges the control budget one unit, like a PING
    /// (spec/sessions.md#control-budget), so a ping flood below the mux frames ends with
    /// 1008 too. It also counts as liveness, as any received transport message does.
    pub fn handle_transport_control(&mut self, now: Timestamp) {
        if !matches!(self.state, State::Handshaking | State::Open) {
            return;
        }
        self.timers.on_receive(now);
        self.charge_control(now);
    }

    /// Feeds a WebSocket **text** message: always a connection error 1003.
    pub fn handle_text_message(&mut self, _now: Timestamp) {
        self.fail(
            CloseCode::UNSUPPORTED_DATA,
            "text messages are not part of the protocol",
        );
    }

    /// The transport ended without CONN_CLOSE (or after it). Every session ends.
    pub fn handle_transport_closed(&mut self, _now: Timestamp) {
        match self.state {
            State::Closed => {}
            State::Closing => self.state = State::Closed,
            State::Handshaking | State::Open => {
                self.begin_close(CloseCode::ABNORMAL, "transport closed", 0, Initiator::Peer);
            }
        }
    }

    /// The checks a header alone decides (the codec already checked its grammar). Returns
    /// false if the connection closed.
    fn check_header(&mut self, header: &Header) -> bool {
        if self.state == State::Handshaking && header.frame_type != FrameType::Settings {
            self.fail(
                CloseCode::PROTOCOL_ERROR,
                "the first frame must be SETTINGS",
            );
            return false;
        }
        // spec/frames.md#data: the frame limit is checked from the header alone.
        if header.frame_type == FrameType::Data && header.len > self.config.limits.max_frame_size {
            self.limit_hit(None, LimitKind::FrameSize);
            self.fail(
                CloseCode::MESSAGE_TOO_BIG,
                "frame larger than MAX_FRAME_SIZE",
            );
            return false;
        }
        true
    }

    /// One frame; `input_len` is the size of the WebSocket message it came in.
    fn handle_frame(&mut self, now: Timestamp, header: Header, payload: Bytes, input_len: usize) {
        if header.frame_type == FrameType::Data {
            self.on_data(now, header, payload, input_len);
            return;
        }
        let frame = match Frame::decode_body(&header, payload) {
            Ok(frame) => frame,
            Err(e) => {
                self.fail(e.close_code(), &e.to_string());
                return;
            }
        };
        if frame.frame_type() != FrameType::Settings && !self.charge_control(now) {
            return;
        }
        match frame {
            Frame::Settings(settings) => {
                self.on_settings(now, PeerSettings::from_settings(&settings))
            }
            Frame::Open(open) => self.on_open(now, open),
            Frame::Accept(accept) => self.on_accept(now, accept),
            Frame::Credit(credit) => self.on_credit(now, credit),
            Frame::Close(close) => self.on_close(now, close),
            Frame::Reset(reset) => self.on_reset(now, reset),
            // spec/frames.md#ping: at most one PONG pending; a newer PING replaces it.
            Frame::Ping(payload) => self.pending_pong = Some(payload),
            Frame::Pong(_) => {}
            Frame::GoAway(goaway) => self.on_goaway(now, goaway),
            Frame::ConnClose(close) => {
                let reason = close.reason.as_str().to_owned();
                self.begin_close(close.code, &reason, 0, Initiator::Peer);
            }
            Frame::Data(_) => {}
        }
    }

    fn on_settings(&mut self, now: Timestamp, peer: PeerSettings) {
        if self.peer.is_some() {
            self.fail(CloseCode::PROTOCOL_ERROR, "second SETTINGS");
            return;
        }
        self.timers.on_peer_idle_timeout(peer.idle_timeout_ms, now);
        // Half the peer's burst: room for the frames that cannot wait (they take debt).
        self.pace = crate::rate::TokenBucket::new(
            peer.control_budget,
            (peer.control_budget / 2).max(1),
            now,
        );
        self.peer = Some(peer);
        self.state = State::Open;
        self.emit(Event::Connected { settings: peer });
        if let Some((code, reason)) = self.goaway_requested.take() {
            self.go_away(now, code, &reason);
        }
    }

    /// Classifies a frame for a session that is not live (spec/frames.md#session-ids).
    /// `charged` says whether the frame already cost a control charge (every frame but
    /// DATA does), so a late frame is never charged twice. Returns false if the connection
    /// closed.
    fn on_not_live(&mut self, now: Timestamp, id: SessionId, charged: bool) -> bool {
        let never_opened = if id.initiator() == Some(self.side) {
            id.0 > self.last_local_id
        } else {
            id.0 > self.last_peer_id
        };
        if never_opened {
            self.fail(
                CloseCode::UNKNOWN_SESSION,
                "frame for a session never opened",
            );
            return false;
        }
        self.stats.late_frames = self.stats.late_frames.saturating_add(1);
        // spec/sessions.md#late-frames: free while the tombstone lasts (DATA: as much as the
        // peer could still have had in flight), charged after.
        if charged || self.sessions.absorb_late_data(id) {
            return true;
        }
        self.charge_control(now)
    }

    fn on_open(&mut self, now: Timestamp, open: Open) {
        let id = open.session_id;
        if id.initiator() == Some(self.side) || id.0 <= self.last_peer_id {
            self.fail(
                CloseCode::PROTOCOL_ERROR,
                "OPEN with a reused, backwards or wrong-parity ID",
            );
            return;
        }
        self.last_peer_id = id.0;
        let limits = &self.config.limits;
        let metadata = open.kind.len().saturating_add(open.auth.len());
        if self.goaway_sent.is_some() {
            self.refuse_open(now, id, CloseCode::REFUSED, 0, "going away");
            return;
        }
        if metadata > usize::try_from(limits.max_open_metadata).unwrap_or(usize::MAX) {
            self.limit_hit(Some(id), LimitKind::OpenMetadata);
            self.refuse_open(
                now,
                id,
                CloseCode::MESSAGE_TOO_BIG,
                0,
                "open metadata too large",
            );
            return;
        }
        if !self.open_bucket.try_take(now, 1) {
            let retry = super::retry_ms(self.open_bucket.time_until(now, 1));
            self.limit_hit(Some(id), LimitKind::OpenRate);
            self.refuse_open(
                now,
                id,
                CloseCode::RATE_LIMITED,
                retry,
                "too many opens per second",
            );
            return;
        }
        let pending = u32::try_from(self.pending_open_count()).unwrap_or(u32::MAX);
        if self.peer_live >= limits.max_sessions || pending >= limits.max_pending_opens {
            // spec/sessions.md#authorization, step 7: a full pending-open cap frees a place no
            // later than the earliest authorization deadline, so that is the hint. A full
            // MAX_SESSIONS has no such bound (sessions end when they end): no hint.
            let retry = if self.peer_live < limits.max_sessions {
                self.pending_open_deadlines()
                    .map(|(_, deadline)| deadline)
                    .min()
                    .map_or(0, |d| {
                        super::retry_ms(d.saturating_duration_since(now)).max(1)
                    })
            } else {
                0
            };
            self.limit_hit(Some(id), LimitKind::Sessions);
            self.refuse_open(
                now,
                id,
                CloseCode::TOO_MANY_SESSIONS,
                retry,
                "too many sessions",
            );
            return;
        }
        let window = Window::new(limits.initial_credit_messages, limits.initial_credit_bytes);
        if !self.reserve_window(window) {
            self.limit_hit(Some(id), LimitKind::RecvBuffer);
            self.refuse_open(
                now,
                id,
                CloseCode::TOO_MANY_SESSIONS,
                0,
                "receive buffer full",
            );
            return;
        }
        let peer = self.now_peer();
        let send = SendHalf::new(
            Window::new(peer.initial_credit_messages, peer.initial_credit_bytes),
            peer.max_message_for_initial_window(),
        );
        let limits = &self.config.limits;
        let max_message = limits.max_message_size.min(window.bytes);
        let recv = RecvHalf::new(window, max_message, limits.rate_policy);
        self.sessions
            .insert(Session::new(id, Phase::Pending, send, recv, now));
        self.peer_live = self.peer_live.saturating_add(1);
        let deadline = now.saturating_add(self.config.timeouts.authorization);
        self.pending.push_back((id, deadline));
        self.emit(Event::Incoming {
            id,
            kind: open.kind,
            auth: open.auth,
            request: open.request,
        });
    }

    /// Reserves receive buffer for a session window; false if it does not fit.
    /// Records that session `id` received DATA at `now` (the two most recent sessions).
    fn note_receiving(&mut self, now: Timestamp, id: SessionId) {
        let [latest, _] = self.recent_data;
        if latest.0 != id {
            self.recent_data = [(id, now), latest];
        } else if let Some(first) = self.recent_data.first_mut() {
            first.1 = now;
        }
    }

    /// Whether a session other than `id` received DATA within `window` before `now`.
    pub(super) fn others_receiving(&self, now: Timestamp, id: SessionId, window: Duration) -> bool {
        self.recent_data.iter().any(|&(other, at)| {
            other != id && at != Timestamp::NEVER && at.saturating_add(window) >= now
        })
    }

    pub(super) fn reserve_window(&mut self, window: Window) -> bool {
        let cost = window.memory_cost(self.config.limits.per_message_overhead);
        match self.recv_reserved.checked_add(cost) {
            Some(total) if total <= self.config.limits.max_recv_buffer => {
                self.recv_reserved = total;
                true
            }
            _ => false,
        }
    }

    fn on_accept(&mut self, now: Timestamp, accept: Accept) {
        let id = accept.session_id;
        let Some(session) = self.sessions.get_mut(id) else {
            self.on_not_live(now, id, true);
            return;
        };
        if session.phase != Phase::Opening {
            self.session_error(now, id, CloseCode::PROTOCOL_ERROR, "unexpected ACCEPT");
            return;
        }
        session.phase = Phase::Open;
        self.forget_opening(id);
        let Some(session) = self.sessions.get_mut(id) else {
            return;
        };
        session.send.permitted = accept.permissions.opener_may_send();
        session.recv.permitted = accept.permissions.acceptor_may_send();
        // spec/sessions.md#rates: DATA from now on is paced within the granted rates.
        session.send.pacer = Pacer::for_grant(&accept.rate, now).map(Box::new);
        // spec/sessions.md#limits: the acceptor's grant is the opener's limit from now on
        // (it never exceeds the acceptor's window for the session).
        session.send.max_message = accept.max_message_size;
        // spec/sessions.md#authorization (the opener's side): messages queued before the
        // ACCEPT are bound by it too. One the grant forbids is never started; the session
        // ends here with the code the acceptor would have sent.
        let limit = usize::try_from(accept.max_message_size).unwrap_or(usize::MAX);
        let started = usize::from(session.send.offset > 0);
        let refused = if !session.send.permitted && !session.send.queue.is_empty() {
            Some((CloseCode::POLICY_VIOLATION, "sending is not permitted"))
        } else if session
            .send
            .queue
            .iter()
            .skip(started)
            .any(|m| m.len() > limit)
        {
            Some((
                CloseCode::MESSAGE_TOO_BIG,
                "a queued message exceeds the granted maximum",
            ))
        } else {
            None
        };
        self.stats.sessions_opened = self.stats.sessions_opened.saturating_add(1);
        self.emit(Event::Opened { id, grant: accept });
        if let Some((code, reason)) = refused {
            let close = SessionClose::new(id, code, reason);
            self.end_session(now, id, close, Initiator::Local, Some(Frame::Reset));
            return;
        }
        self.schedule(id);
    }

    fn on_credit(&mut self, now: Timestamp, credit: Credit) {
        let id = credit.session_id;
        let max_frame = self.now_peer().max_frame_size;
        let Some(session) = self.sessions.get_mut(id) else {
            self.on_not_live(now, id, true);
            return;
        };
        let Some(total) = session
            .send
            .credit
            .checked_add(Window::new(credit.messages, credit.bytes))
        else {
            self.limit_hit(Some(id), LimitKind::Credit);
            self.session_error(now, id, CloseCode::FLOW_CONTROL, "credit window overflow");
            return;
        };
        session.send.credit = total;
        if let Some(since) = session.send.stalled_since {
            if !session.send.is_stalled(max_frame) {
                session.send.stalled_since = None;
                let stalled = now.saturating_duration_since(since);
                session.stats.stalled = session.stats.stalled.saturating_add(stalled);
            }
        }
        self.schedule(id);
    }

    fn on_close(&mut self, now: Timestamp, close: SessionClose) {
        let id = close.session_id;
        let Some(session) = self.sessions.get_mut(id) else {
            self.on_not_live(now, id, true);
            return;
        };
        // spec/sessions.md#closing: the peer has sent everything; this side stops sending.
        // What the application has not read yet is still delivered, then the session ends.
        let nothing_to_read = session.recv.queue.is_empty() || session.phase == Phase::Pending;
        if nothing_to_read {
            self.end_session(now, id, close, Initiator::Peer, None);
            return;
        }
        session.peer_close = Some(Box::new(PendingClose {
            code: close.code,
            reason: close.reason,
            retry_after_ms: close.retry_after_ms,
        }));
        // A message the peer left unfinished is never delivered, and what this side had
        // queued is never sent: release both from the buffer accounting now, or
        // `end_session` (which counts only what is still held) would leak them.
        let overhead = u64::from(self.config.limits.per_message_overhead);
        if let Some(partial) = session.recv.partial.take() {
            let len = u64::try_from(partial.buf.len()).unwrap_or(u64::MAX);
            session.recv.queued_bytes = session.recv.queued_bytes.saturating_sub(len);
            self.recv_buffered = self
                .recv_buffered
                .saturating_sub(len.saturating_add(overhead));
        }
        let unsent = u64::try_from(session.send.queue.len())
            .unwrap_or(u64::MAX)
            .saturating_mul(overhead)
            .saturating_add(session.send.queued_bytes);
        self.send_buffered = self.send_buffered.saturating_sub(unsent);
        session.send.queue.clear();
        session.send.queued_bytes = 0;
        session.send.offset = 0;
        session.send.fin_requested = true;
        session.send.fin_sent = true;
    }

    fn on_reset(&mut self, now: Timestamp, reset: SessionClose) {
        let id = reset.session_id;
        if self.sessions.get(id).is_none() {
            self.on_not_live(now, id, true);
            return;
        }
        self.end_session(now, id, reset, Initiator::Peer, None);
    }

    fn on_goaway(&mut self, now: Timestamp, goaway: GoAway) {
        if let Some(previous) = self.goaway_received {
            if goaway.last_session_id > previous {
                self.fail(CloseCode::PROTOCOL_ERROR, "GOAWAY raised last_session_id");
                return;
            }
        }
        self.goaway_received = Some(goaway.last_session_id);
        // spec/frames.md#goaway: our sessions above the last ID were not processed.
        let refused: Vec<SessionId> = self
            .sessions
            .ids()
            .filter(|id| id.initiator() == Some(self.side) && *id > goaway.last_session_id)
            .collect();
        for id in refused {
            let close = SessionClose::new(id, CloseCode::REFUSED, "refused by GOAWAY");
            self.end_session(now, id, close, Initiator::Peer, None);
        }
        self.emit(Event::GoAway {
            last_session_id: goaway.last_session_id,
            code: goaway.code,
        });
    }

    fn on_data(&mut self, now: Timestamp, header: Header, payload: Bytes, input_len: usize) {
        let id = header.session_id;
        if self.sessions.get(id).is_none() {
            self.on_not_live(now, id, false);
            return;
        }
        let end = header.flags & crate::frame::FLAG_END != 0;
        let fin = header.flags & crate::frame::FLAG_FIN != 0;
        self.note_receiving(now, id);
        let Some(session) = self.sessions.get_mut(id) else {
            return;
        };
        if session.peer_close.is_some() {
            // spec/frames.md#close: nothing follows the peer's CLOSE.
            return;
        }
        if session.local_close.is_some() {
            // spec/frames.md#close: after CLOSE, DATA still arriving is discarded.
            self.discard_data(now, id, &header);
            return;
        }
        if session.phase == Phase::Opening {
            self.session_error(now, id, CloseCode::PROTOCOL_ERROR, "DATA before ACCEPT");
            return;
        }
        if !session.recv.permitted {
            self.session_error(
                now,
                id,
                CloseCode::POLICY_VIOLATION,
                "sending is not permitted",
            );
            return;
        }
        if session.recv.fin {
            self.session_error(now, id, CloseCode::PROTOCOL_ERROR, "DATA after FIN");
            return;
        }
        if !end && fin && session.recv.partial.is_some() {
            self.session_error(now, id, CloseCode::PROTOCOL_ERROR, "FIN inside a message");
            return;
        }
        let carries_message = end || header.len > 0;
        let starting = carries_message && session.recv.partial.is_none();
        let len = header.len;
        // spec/sessions.md#data-checks D6: the message size before credit, so a message one
        // byte over a maximum equal to the window is 1009, not 4004. From the header, before
        // any byte is buffered.
        let size = u64::try_from(session.recv.partial_len())
            .unwrap_or(u64::MAX)
            .saturating_add(u64::from(len));
        if size > u64::from(session.recv.max_message) {
            self.limit_hit(Some(id), LimitKind::MessageSize);
            self.session_error(now, id, CloseCode::MESSAGE_TOO_BIG, "message too big");
            return;
        }
        // spec/sessions.md#data-checks D7: credit, from the header too.
        if (starting && session.recv.credit.messages == 0) || session.recv.credit.bytes < len {
            self.limit_hit(Some(id), LimitKind::Credit);
            self.session_error(now, id, CloseCode::FLOW_CONTROL, "DATA beyond credit");
            return;
        }
        if carries_message && !self.admit_rate(now, id, starting, len) {
            return;
        }
        let overhead = self.config.limits.per_message_overhead;
        let Some(session) = self.sessions.get_mut(id) else {
            return;
        };
        let consumed = Window::new(u32::from(starting), len);
        // Both units were checked above; the fallback is unreachable.
        session.recv.credit = session
            .recv
            .credit
            .checked_sub(consumed)
            .unwrap_or_default();
        session.last_activity = now;
        let mut charged = u64::from(len);
        if starting {
            charged = charged.saturating_add(u64::from(overhead));
        }
        let mut completed = None;
        if carries_message {
            session.recv.queued_bytes = session.recv.queued_bytes.saturating_add(u64::from(len));
            session.stats.bytes_received =
                session.stats.bytes_received.saturating_add(u64::from(len));
            if end && session.recv.partial.is_none() {
                // One-frame message. A held slice of the input keeps the whole WebSocket
                // message alive, so tiny messages the application does not read, each sent
                // with other frames around it, would pin up to L bytes per held byte
                // (spec/sessions.md#must-slices-bounded). A small message is copied into the
                // receive arena, which recycles its chunks and bounds what they pin
                // (arena.rs); failing that, a message that is a small part of its input is
                // copied on its own (what it keeps is at most twice what it is charged for),
                // and any other is handed out as the slice, zero-copy.
                let charged = self.recv_buffered.min(self.config.limits.max_recv_buffer);
                completed = Some(
                    match Arena::copy_into(&mut self.arena, &payload, charged, now) {
                        Some(copy) => copy,
                        None if payload.len().saturating_mul(2) < input_len => {
                            Bytes::copy_from_slice(&payload)
                        }
                        None => payload,
                    },
                );
                if self.arena.is_some() {
                    self.timers.arm_arena(now);
                }
            } else {
                let spare = &mut session.recv.spare;
                let partial = session
                    .recv
                    .partial
                    .get_or_insert_with(|| spare.take().unwrap_or_default());
                partial.buf.extend_from_slice(&payload);
                if end {
                    completed = session.recv.partial.take().map(|mut done| {
                        let message = std::mem::take(&mut done.buf).freeze();
                        done.since = None;
                        session.recv.spare = Some(done);
                        message
                    });
                }
            }
        }
        let mut readable = false;
        if let Some(message) = completed {
            readable = session.recv.queue.is_empty() && session.phase == Phase::Open;
            session.recv.queue.push_back((message, now));
            session.stats.messages_received = session.stats.messages_received.saturating_add(1);
            self.stats.messages_received = self.stats.messages_received.saturating_add(1);
        }
        if fin {
            session.recv.fin = true;
        }
        let announce_fin = fin && session.phase == Phase::Open;
        let partial_held = session.recv.partial.is_some();
        let began = match session.recv.partial.as_mut() {
            Some(partial) if partial.since.is_none() => {
                partial.since = Some(now);
                true
            }
            _ => false,
        };
        if began {
            self.timers.arm_assembly(&self.config.timeouts, now);
        }
        self.recv_buffered = self.recv_buffered.saturating_add(charged);
        self.stats.bytes_received = self.stats.bytes_received.saturating_add(u64::from(len));
        if partial_held {
            // A fragment may leave the peer too little credit to finish its message after
            // the application has read everything complete, and no `recv` would follow to
            // announce what it read: check now (spec/sessions.md#credit).
            self.maybe_announce(now, id);
        }
        if readable {
            self.emit(Event::Readable { id });
        }
        if announce_fin {
            self.emit(Event::Finished { id });
            self.maybe_complete(now, id);
        }
    }

    /// DATA for a session this side is closing gracefully: discarded unread, but its credit
    /// returns to the peer as if the application had read it, so a peer draining its own
    /// queue (to close as well, say) is never starved. Message boundaries are still tracked
    /// (`partial` is kept as an empty marker) so the credit returned is exactly what the
    /// peer consumed.
    fn discard_data(&mut self, now: Timestamp, id: SessionId, header: &Header) {
        let overhead = u64::from(self.config.limits.per_message_overhead);
        let Some(session) = self.sessions.get_mut(id) else {
            return;
        };
        let end = header.flags & crate::frame::FLAG_END != 0;
        let carries_message = end || header.len > 0;
        let held_before = session.recv.partial.is_some();
        let starting = carries_message && !held_before;
        let consumed = Window::new(u32::from(starting), header.len);
        let Some(credit) = session.recv.credit.checked_sub(consumed) else {
            self.limit_hit(Some(id), LimitKind::Credit);
            self.session_error(now, id, CloseCode::FLOW_CONTROL, "DATA beyond credit");
            return;
        };
        session.recv.credit = credit;
        session.last_activity = now;
        let ends_message = carries_message && end;
        if ends_message {
            session.recv.partial = None;
        } else if starting {
            session.recv.partial = Some(Box::default());
        }
        // A message holds its message credit (and its overhead) from its first frame to
        // its END, as if it were being reassembled; its bytes are returned at once.
        let returned = Window::new(u32::from(ends_message), header.len);
        session.recv.unannounced = session
            .recv
            .unannounced
            .checked_add(returned)
            .unwrap_or(session.recv.window);
        if starting && !ends_message {
            self.recv_buffered = self.recv_buffered.saturating_add(overhead);
        } else if held_before && ends_message {
            self.recv_buffered = self.recv_buffered.saturating_sub(overhead);
        }
        self.maybe_announce(now, id);
    }

    /// Applies the session and connection rate limits to a DATA frame. Returns false if
    /// the frame must be dropped because the session or connection was closed.
    fn admit_rate(&mut self, now: Timestamp, id: SessionId, starting: bool, len: u32) -> bool {
        let messages = u64::from(starting);
        let bytes = u64::from(len);
        let Some(session) = self.sessions.get_mut(id) else {
            return false;
        };
        // Check every bucket before taking from any, so a refused frame costs no tokens.
        let session_ok = session.recv.rate_can_take(now, messages, bytes);
        let conn_ok =
            self.conn_messages.can_take(now, messages) && self.conn_bytes.can_take(now, bytes);
        let policy = session.recv.policy;
        if (session_ok && conn_ok) || policy == RatePolicy::Throttle {
            // Under the throttle an over-rate frame is accepted (it was within credit) and
            // its tokens become debt, so the credit it would earn back is withheld for as
            // long as the excess takes to refill: the sender is held to the rate over time.
            session.recv.rate_force_take(now, messages, bytes);
            self.conn_messages.force_take(now, messages);
            self.conn_bytes.force_take(now, bytes);
        }
        if !session_ok {
            session.stats.rate_limit_hits = session.stats.rate_limit_hits.saturating_add(1);
        }
        if session_ok && conn_ok {
            return true;
        }
        self.stats.rate_limit_hits = self.stats.rate_limit_hits.saturating_add(1);
        let limit = if session_ok {
            LimitKind::ConnectionRate
        } else {
            LimitKind::SessionRate
        };
        self.limit_hit(Some(id), limit);
        match policy {
            // Accepted (it was within credit); credit returns only as the buckets refill.
            RatePolicy::Throttle => true,
            RatePolicy::CloseSession => {
                // The frame needed every bucket: the hint is the wait for the slowest.
                let session_wait = match self.sessions.get_mut(id) {
                    Some(s) => s.recv.rate_wait(now, messages, bytes),
                    None => std::time::Duration::ZERO,
                };
                let retry = session_wait
                    .max(self.conn_messages.time_until(now, messages))
                    .max(self.conn_bytes.time_until(now, bytes));
                if self.charge_control(now) {
                    let mut close =
                        SessionClose::new(id, CloseCode::RATE_LIMITED, "rate limit exceeded");
                    close.retry_after_ms = super::retry_ms(retry);
                    self.end_session(now, id, close, Initiator::Local, Some(Frame::Reset));
                }
                false
            }
            RatePolicy::CloseConnection => {
                self.fail(CloseCode::POLICY_VIOLATION, "rate limit exceeded");
                false
            }
        }
    }

    /// Ends a session whose both directions are finished and fully read.
    pub(super) fn maybe_complete(&mut self, now: Timestamp, id: SessionId) {
        let Some(session) = self.sessions.get(id) else {
            return;
        };
        if let Some(close) = &session.peer_close {
            if session.recv.queue.is_empty() {
                let close = SessionClose {
                    session_id: id,
                    code: close.code,
                    retry_after_ms: close.retry_after_ms,
                    reason: close.reason.clone(),
                };
                self.end_session(now, id, close, Initiator::Peer, None);
            }
            return;
        }
        if session.is_done() {
            let close = SessionClose::new(id, CloseCode::NORMAL, "");
            self.end_session(now, id, close, Initiator::Local, None);
        }
    }
}
