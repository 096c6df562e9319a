//! D. output: one WebSocket message of coalesced frames per call. Control frames go first,
//! then DATA by deficit round robin across sessions (spec/sessions.md#scheduling).

use bytes::BytesMut;

use super::{Connection, Control, State};
use crate::event::{Event, Initiator};
use crate::frame::{Credit, Data, Frame, SessionClose, HEADER_LEN};
use crate::id::SessionId;
use crate::session::{FramePlan, Pace, Window};
use crate::time::Timestamp;

/// Smallest size a transmit may grow to, whatever the peer's frame size: every receiver
/// accepts messages of 65,536 bytes (spec/frames.md#transport).
pub const MIN_TRANSMIT: usize = 65_536;

impl Connection {
    /// The largest message `poll_transmit` produces: 64 KiB, or one maximal frame.
    pub fn max_transmit_size(&self) -> usize {
        let frame = usize::try_from(self.now_peer().max_frame_size).unwrap_or(usize::MAX);
        MIN_TRANSMIT.max(frame.saturating_add(HEADER_LEN))
    }

    /// Appends the next WebSocket message to send to `buf` (which should be empty) and
    /// returns true, or returns false if there is nothing to send now. Call until false.
    pub fn poll_transmit(&mut self, now: Timestamp, buf: &mut BytesMut) -> bool {
        if self.state == State::Closed {
            return false;
        }
        let start = buf.len();
        let limit = self.max_transmit_size();
        let mut frames = 0u64;
        if !self.settings_sent {
            self.settings_sent = true;
            Frame::Settings(self.config.settings()).encode(buf);
            frames = frames.saturating_add(1);
        }
        if self.state == State::Closing {
            // CONN_CLOSE is last in the control queue, after the frames a graceful shutdown
            // keeps (maybe_finish_shutdown). They may not fit one message: each transmit stays
            // within `L` (spec/sessions.md#transport-message-size), and the connection is
            // closed once CONN_CLOSE is out.
            while let Some(Control::Frame(frame)) = self.control.front() {
                let used = buf.len().saturating_sub(start);
                if used > 0 && used.saturating_add(frame.encoded_len()) > limit {
                    break;
                }
                frame.encode(buf);
                frames = frames.saturating_add(1);
                self.control.pop_front();
            }
            if self.control.is_empty() {
                self.state = State::Closed;
            }
            self.count_transmit(now, frames);
            return buf.len() > start;
        }
        if self.peer.is_some() {
            frames = frames.saturating_add(self.write_control(now, buf, start, limit));
            // DATA only once every control frame is out: a session's DATA must never
            // overtake its OPEN or ACCEPT queued before it.
            if self.control.is_empty() {
                frames = frames.saturating_add(self.write_data(now, buf, start, limit));
            }
        }
        self.count_transmit(now, frames);
        buf.len() > start
    }

    fn count_transmit(&mut self, now: Timestamp, frames: u64) {
        if frames > 0 {
            self.stats.frames_sent = self.stats.frames_sent.saturating_add(frames);
            self.stats.transmits = self.stats.transmits.saturating_add(1);
            self.timers.on_send(now);
        }
    }

    fn write_control(
        &mut self,
        now: Timestamp,
        buf: &mut BytesMut,
        start: usize,
        limit: usize,
    ) -> u64 {
        let mut frames = 0u64;
        let fits = |buf: &BytesMut, frame: &Frame| {
            buf.len()
                .saturating_sub(start)
                .saturating_add(frame.encoded_len())
                <= limit
        };
        // spec/sessions.md#control-budget: every control frame this side sends takes a token
        // of the peer's budget, and none goes out without one. A frame that finds the bucket
        // empty waits (with everything queued behind it, so the order within a session holds)
        // until the pace timer fires; only CREDIT steps aside, since it coalesces.
        let mut starved = false;
        if self.pending_pong.is_some() {
            if self.pace.try_take(now, 1) {
                if let Some(payload) = self.pending_pong.take() {
                    Frame::Pong(payload).encode(buf);
                    frames = frames.saturating_add(1);
                }
            } else {
                starved = true;
            }
        }
        if !starved && self.ping_due.is_some() {
            if self.pace.try_take(now, 1) {
                if let Some(payload) = self.ping_due.take() {
                    Frame::Ping(payload).encode(buf);
                    frames = frames.saturating_add(1);
                }
            } else {
                starved = true;
            }
        }
        while let Some(control) = self.control.front() {
            if starved {
                break;
            }
            let frame = match control {
                Control::Frame(frame) => frame.clone(),
                Control::Credit(id) => match self.credit_frame(*id) {
                    Some(frame) => frame,
                    None => {
                        self.control.pop_front();
                        continue;
                    }
                },
            };
            if !fits(buf, &frame) {
                break;
            }
            let is_credit = matches!(frame, Frame::Credit(_));
            if !self.pace.can_take(now, 1) {
                if is_credit {
                    // A CREDIT waits aside, so it holds back neither the control frames
                    // behind it nor DATA.
                    if let Some(Control::Credit(id)) = self.control.pop_front() {
                        self.paced_credits.push_back(id);
                    }
                    continue;
                }
                starved = true;
                break;
            }
            self.control.pop_front();
            self.pace.force_take(now, 1);
            if let Frame::Credit(credit) = &frame {
                self.commit_credit(credit);
            }
            frame.encode(buf);
            frames = frames.saturating_add(1);
        }
        if starved || !self.paced_credits.is_empty() {
            let wait = self
                .pace
                .time_until(now, 1)
                .max(std::time::Duration::from_micros(1));
            self.timers.arm_pace(now.saturating_add(wait));
        }
        frames
    }

    /// The CREDIT a session owes now, built from what the application consumed.
    fn credit_frame(&self, id: SessionId) -> Option<Frame> {
        let s = self.sessions.get(id)?;
        // spec/sessions.md#sending, rule 4: the peer sends no more DATA after its FIN or
        // CLOSE, so credit for it SHOULD NOT be sent; one queued before they arrived is
        // dropped here.
        if s.recv.fin || s.peer_close.is_some() {
            return None;
        }
        let owed = s.recv.unannounced;
        (!owed.is_zero()).then_some(Frame::Credit(Credit {
            session_id: id,
            messages: owed.messages,
            bytes: owed.bytes,
        }))
    }

    /// The CREDIT is going out: from now on the peer may use it.
    fn commit_credit(&mut self, credit: &Credit) {
        if let Some(s) = self.sessions.get_mut(credit.session_id) {
            let granted = Window::new(credit.messages, credit.bytes);
            // credit + held + unannounced == window, so this cannot overflow the window.
            s.recv.credit = s.recv.credit.checked_add(granted).unwrap_or(s.recv.window);
            s.recv.unannounced = Window::ZERO;
            s.recv.credit_queued = false;
        }
    }

    fn write_data(
        &mut self,
        now: Timestamp,
        buf: &mut BytesMut,
        start: usize,
        limit: usize,
    ) -> u64 {
        let max_frame = self.now_peer().max_frame_size;
        let quantum = u64::from(max_frame);
        let overhead = u64::from(self.config.limits.per_message_overhead);
        let mut frames = 0u64;
        let mut full = false;
        while let Some(id) = self.ring.pop_front() {
            let Some(s) = self.sessions.get_mut(id) else {
                continue;
            };
            s.in_ring = false;
            let resuming = std::mem::take(&mut s.resume);
            if !s.wants_to_send(max_frame) {
                s.deficit = 0;
                self.note_stall(now, id);
                continue;
            }
            // A session cut off by a full transmit finishes its turn first, on what is left
            // of its deficit: a fresh quantum per transmit would let it crowd out the others.
            if !resuming {
                s.deficit = s
                    .deficit
                    .saturating_add(quantum.saturating_mul(u64::from(s.weight)));
            }
            let mut sent_any = resuming;
            let mut paced = None;
            while let Some(s) = self.sessions.get_mut(id) {
                let Some(mut plan) = s.send.plan(max_frame) else {
                    break;
                };
                let starting = s.send.offset == 0 && !s.send.queue.is_empty();
                if let Some(pacer) = s.send.pacer.as_mut() {
                    match pacer.admit(now, starting, plan.len, plan.len > 0) {
                        Pace::Send(len) if len < plan.len => {
                            // A shorter, non-final fragment: what the granted rate allows.
                            plan = FramePlan {
                                len,
                                end: false,
                                fin: false,
                            };
                        }
                        Pace::Send(_) => {}
                        Pace::Wait(wait) => {
                            paced = Some(wait);
                            break;
                        }
                    }
                }
                let len = u64::try_from(plan.len).unwrap_or(u64::MAX);
                if sent_any && len > s.deficit {
                    break;
                }
                let used = buf.len().saturating_sub(start);
                if used.saturating_add(HEADER_LEN).saturating_add(plan.len) > limit {
                    full = true;
                    break;
                }
                s.deficit = s.deficit.saturating_sub(len);
                if let Some(pacer) = s.send.pacer.as_mut() {
                    pacer.charge(now, starting, plan.len);
                }
                sent_any = true;
                frames = frames.saturating_add(1);
                let payload = match s.send.queue.front() {
                    Some(front) => {
                        front.slice(s.send.offset..s.send.offset.saturating_add(plan.len))
                    }
                    None => bytes::Bytes::new(),
                };
                let used_credit = Window::new(
                    u32::from(starting),
                    u32::try_from(plan.len).unwrap_or(u32::MAX),
                );
                s.send.credit = s.send.credit.checked_sub(used_credit).unwrap_or_default();
                s.send.offset = s.send.offset.saturating_add(plan.len);
                s.stats.bytes_sent = s.stats.bytes_sent.saturating_add(len);
                if plan.end {
                    if let Some(message) = s.send.queue.pop_front() {
                        let mlen = u64::try_from(message.len()).unwrap_or(u64::MAX);
                        s.send.queued_bytes = s.send.queued_bytes.saturating_sub(mlen);
                        self.send_buffered = self
                            .send_buffered
                            .saturating_sub(mlen.saturating_add(overhead));
                    }
                    s.send.offset = 0;
                    s.stats.messages_sent = s.stats.messages_sent.saturating_add(1);
                    self.stats.messages_sent = self.stats.messages_sent.saturating_add(1);
                }
                if plan.fin {
                    s.send.fin_sent = true;
                }
                s.last_activity = now;
                self.stats.bytes_sent = self.stats.bytes_sent.saturating_add(len);
                Frame::Data(Data {
                    session_id: id,
                    end: plan.end,
                    fin: plan.fin,
                    payload,
                })
                .encode(buf);
            }
            self.after_send(now, id);
            if let Some(wait) = paced {
                // Off the ring until the granted rates allow its next frame.
                if let Some(s) = self.sessions.get_mut(id) {
                    s.deficit = 0;
                    if !s.send.paced {
                        s.send.paced = true;
                        self.paced_sessions.push_back(id);
                    }
                }
                let wait = wait.max(std::time::Duration::from_micros(1));
                self.timers.arm_data_pace(now.saturating_add(wait));
                continue;
            }
            if full {
                if let Some(s) = self.sessions.get_mut(id) {
                    if !s.in_ring && s.wants_to_send(max_frame) {
                        s.in_ring = true;
                        s.resume = true;
                        self.ring.push_front(id);
                    }
                }
                break;
            }
            if let Some(s) = self.sessions.get_mut(id) {
                if s.wants_to_send(max_frame) {
                    s.in_ring = true;
                    self.ring.push_back(id);
                } else {
                    s.deficit = 0;
                }
            }
            self.note_stall(now, id);
        }
        self.wake_blocked();
        frames
    }

    /// Records the start of a credit stall.
    pub(super) fn note_stall(&mut self, now: Timestamp, id: SessionId) {
        let max_frame = self.now_peer().max_frame_size;
        if let Some(s) = self.sessions.get_mut(id) {
            if s.send.stalled_since.is_none() && s.send.is_stalled(max_frame) {
                s.send.stalled_since = Some(now);
                s.stats.credit_stalls = s.stats.credit_stalls.saturating_add(1);
                self.stats.credit_stalls = self.stats.credit_stalls.saturating_add(1);
            }
        }
    }

    /// After a session sent: owed `Writable`, a graceful close whose queue drained, or both
    /// directions finished.
    fn after_send(&mut self, now: Timestamp, id: SessionId) {
        let max_queued =
            usize::try_from(self.config.limits.max_queued_messages).unwrap_or(usize::MAX);
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        if s.send.owes_writable && s.send.queue.len() < max_queued {
            s.send.owes_writable = false;
            self.emit(Event::Writable { id });
        }
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        if s.send.queue.is_empty() {
            if let Some(close) = s.local_close.take() {
                let close = SessionClose {
                    session_id: id,
                    code: close.code,
                    retry_after_ms: close.retry_after_ms,
                    reason: close.reason,
                };
                self.end_session(now, id, close, Initiator::Local, Some(Frame::Close));
                return;
            }
        }
        self.maybe_complete(now, id);
    }

    /// Sessions blocked by the connection's send buffer get `Writable` once the message each
    /// was refused fits in the room there is: a wake-up that could only be answered with
    /// another `Blocked` is not sent. One pass in blocking order; the room a session is woken
    /// for is not offered to the next, and a session whose message does not fit keeps its
    /// place without holding back smaller ones behind it.
    fn wake_blocked(&mut self) {
        let mut room = self
            .config
            .limits
            .max_send_buffer
            .saturating_sub(self.send_buffered);
        if room == 0 {
            return;
        }
        for _ in 0..self.blocked.len() {
            let Some(id) = self.blocked.pop_front() else {
                break;
            };
            let Some(s) = self.sessions.get_mut(id) else {
                continue;
            };
            if !s.send.owes_writable {
                // Woken already because its own queue drained.
                continue;
            }
            if s.send.blocked_cost > room {
                self.blocked.push_back(id);
                continue;
            }
            room = room.saturating_sub(s.send.blocked_cost);
            s.send.owes_writable = false;
            self.emit(Event::Writable { id });
        }
    }
}
