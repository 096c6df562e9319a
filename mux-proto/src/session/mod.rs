//! One session's state: its phase, its send half (queue, credit) and its receive half
//! (reassembly, delivered queue, window, rate buckets).

mod pacer;
mod store;
mod window;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

pub(crate) use pacer::{Pace, Pacer};
pub(crate) use store::Store;
pub use window::Window;

use crate::code::CloseCode;
use crate::config::RatePolicy;
use crate::frame::{Text, MIN_FRAGMENT};
use crate::id::SessionId;
use crate::rate::TokenBucket;
use crate::stats::SessionStats;
use crate::time::Timestamp;

/// Where a session is in its lifecycle (spec/sessions.md#states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// This side sent OPEN and waits for ACCEPT or RESET.
    Opening,
    /// The peer sent OPEN; the application has not decided yet.
    Pending,
    /// Accepted: DATA may flow per the grant.
    Open,
}

/// The next DATA frame a session can send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FramePlan {
    pub(crate) len: usize,
    pub(crate) end: bool,
    pub(crate) fin: bool,
}

/// This side's sending on one session.
#[derive(Debug)]
pub(crate) struct SendHalf {
    /// The grant allows this side to send.
    pub(crate) permitted: bool,
    /// Credit the peer has given and this side has not used.
    pub(crate) credit: Window,
    /// Largest message the peer accepts on this session.
    pub(crate) max_message: u32,
    /// Whole messages waiting; the front one may be partly sent.
    pub(crate) queue: VecDeque<Bytes>,
    /// Bytes of `queue` not yet sent.
    pub(crate) queued_bytes: u64,
    /// Bytes of the front message already sent.
    pub(crate) offset: usize,
    /// The application half-closed; FIN goes out after the queue.
    pub(crate) fin_requested: bool,
    /// FIN went out.
    pub(crate) fin_sent: bool,
    /// The application saw `Blocked` and is owed `Writable`.
    pub(crate) owes_writable: bool,
    /// What the message refused for lack of send-buffer room would cost (payload plus
    /// per-message overhead): `Writable` waits until that much is free.
    pub(crate) blocked_cost: u64,
    /// Since when the session has data but no credit.
    pub(crate) stalled_since: Option<Timestamp>,
    /// The granted rates, mirrored, on a session this side opened (boxed: most sessions
    /// have none).
    pub(crate) pacer: Option<Box<Pacer>>,
    /// Waiting for the pacer: off the scheduler's ring until the pacing timer fires.
    pub(crate) paced: bool,
}

impl SendHalf {
    pub(crate) fn new(credit: Window, max_message: u32) -> Self {
        SendHalf {
            permitted: true,
            credit,
            max_message,
            queue: VecDeque::new(),
            queued_bytes: 0,
            offset: 0,
            fin_requested: false,
            fin_sent: false,
            owes_writable: false,
            blocked_cost: 0,
            stalled_since: None,
            pacer: None,
            paced: false,
        }
    }

    /// The next frame credit allows, if any (spec/sessions.md#sending).
    pub(crate) fn plan(&self, max_frame: u32) -> Option<FramePlan> {
        let Some(front) = self.queue.front() else {
            // Only a pure half-close is left to send, if asked for.
            return (self.fin_requested && !self.fin_sent).then_some(FramePlan {
                len: 0,
                end: false,
                fin: true,
            });
        };
        let remaining = front.len().saturating_sub(self.offset);
        let starting = self.offset == 0;
        if starting && self.credit.messages == 0 {
            return None;
        }
        let credit = usize::try_from(self.credit.bytes).unwrap_or(usize::MAX);
        let frame = usize::try_from(max_frame).unwrap_or(usize::MAX);
        let len = remaining.min(credit).min(frame);
        let end = len == remaining;
        // spec/frames.md#data: a fragment that does not end the message carries at least
        // MIN_FRAGMENT bytes; with less credit than that, wait (no data dribble).
        let min_fragment = usize::try_from(MIN_FRAGMENT).unwrap_or(usize::MAX);
        if !end && len < min_fragment {
            return None;
        }
        let fin = end && self.fin_requested && self.queue.len() == 1;
        Some(FramePlan { len, end, fin })
    }

    /// Whether the session has something it cannot send for lack of credit.
    pub(crate) fn is_stalled(&self, max_frame: u32) -> bool {
        !self.queue.is_empty() && self.plan(max_frame).is_none()
    }
}

/// The peer's sending on one session, as this side receives it.
#[derive(Debug)]
pub(crate) struct RecvHalf {
    /// The grant allows the peer to send.
    pub(crate) permitted: bool,
    /// The window: what the peer may have outstanding at most.
    pub(crate) window: Window,
    /// Credit the peer has left, as announced and not yet used.
    pub(crate) credit: Window,
    /// Consumed by the application and not yet announced back.
    pub(crate) unannounced: Window,
    /// The part of `window` that window growth added, which it may take back.
    pub(crate) grown: Window,
    /// A CREDIT for this session is in the control queue.
    pub(crate) credit_queued: bool,
    /// Complete messages not yet read, each with when its last frame arrived (how long it
    /// waits for the application is an observable: `Connection::recv_queued_since`).
    pub(crate) queue: VecDeque<(Bytes, Timestamp)>,
    /// Payload bytes in `queue` and `partial`.
    pub(crate) queued_bytes: u64,
    /// The message being reassembled from several frames (boxed: only a message larger
    /// than a frame has one, and it allocates for its bytes anyway).
    pub(crate) partial: Option<Box<Partial>>,
    /// The box of the last message reassembled, kept for the next: a session that
    /// receives large messages allocates it once, not once per message.
    pub(crate) spare: Option<Box<Partial>>,
    /// Largest message the peer may send.
    pub(crate) max_message: u32,
    /// The peer half-closed.
    pub(crate) fin: bool,
    /// Rate buckets on the peer's DATA; `None` while the session has no rate (the default),
    /// so an unlimited session does not carry two idle buckets.
    pub(crate) rate: Option<Box<RecvRate>>,
    pub(crate) policy: RatePolicy,
    /// Credit is being withheld until the rate buckets refill.
    pub(crate) throttled: bool,
}

impl RecvHalf {
    pub(crate) fn new(window: Window, max_message: u32, policy: RatePolicy) -> Self {
        RecvHalf {
            permitted: true,
            window,
            credit: window,
            unannounced: Window::ZERO,
            grown: Window::ZERO,
            credit_queued: false,
            queue: VecDeque::new(),
            queued_bytes: 0,
            partial: None,
            spare: None,
            max_message,
            fin: false,
            rate: None,
            policy,
            throttled: false,
        }
    }

    /// Sets the rates policed on the peer's DATA; both unlimited keeps no buckets.
    pub(crate) fn set_rate(&mut self, messages: TokenBucket, bytes: TokenBucket) {
        self.rate = (!messages.is_unlimited() || !bytes.is_unlimited())
            .then(|| Box::new(RecvRate { messages, bytes }));
    }

    /// Whether both buckets hold `messages` and `bytes` tokens (nothing is taken).
    pub(crate) fn rate_can_take(&mut self, now: Timestamp, messages: u64, bytes: u64) -> bool {
        match &mut self.rate {
            Some(r) => r.messages.can_take(now, messages) && r.bytes.can_take(now, bytes),
            None => true,
        }
    }

    /// Takes the tokens of a frame, into debt where they are missing.
    pub(crate) fn rate_force_take(&mut self, now: Timestamp, messages: u64, bytes: u64) {
        if let Some(r) = &mut self.rate {
            r.messages.force_take(now, messages);
            r.bytes.force_take(now, bytes);
        }
    }

    /// Whether both buckets hold a token.
    pub(crate) fn rate_has_token(&mut self, now: Timestamp) -> bool {
        match &mut self.rate {
            Some(r) => r.messages.has_token(now) && r.bytes.has_token(now),
            None => true,
        }
    }

    /// How long until both buckets hold `messages` and `bytes` tokens.
    pub(crate) fn rate_wait(&mut self, now: Timestamp, messages: u64, bytes: u64) -> Duration {
        match &mut self.rate {
            Some(r) => r
                .messages
                .time_until(now, messages)
                .max(r.bytes.time_until(now, bytes)),
            None => Duration::ZERO,
        }
    }

    pub(crate) fn partial_len(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.buf.len())
    }

    /// Messages held: complete ones plus one being reassembled.
    pub(crate) fn held_messages(&self) -> u32 {
        let partial = u32::from(self.partial.is_some());
        u32::try_from(self.queue.len())
            .unwrap_or(u32::MAX)
            .saturating_add(partial)
    }

    /// Whether consumed credit should be announced now (spec/sessions.md#credit): a quarter
    /// of the window in either unit, or everything once the application has read all.
    pub(crate) fn should_announce(&self) -> bool {
        if self.credit_queued || self.unannounced.is_zero() || self.fin {
            return false;
        }
        let quarter_messages = (self.window.messages / 4).max(1);
        let quarter_bytes = self.window.bytes / 4;
        if self.unannounced.messages >= quarter_messages || self.unannounced.bytes >= quarter_bytes
        {
            return true;
        }
        // Everything complete has been read, yet the peer may be stalled: its credit cannot
        // start a message or carry a minimum fragment, and what was read is under a quarter
        // window, so the rule above would never fire. Announce now rather than deadlock; with
        // ample credit left, wait, so request/response traffic does not cost a CREDIT per
        // message (spec/sessions.md#credit).
        let low_credit = self.credit.messages < quarter_messages
            || self.credit.bytes < quarter_bytes.max(MIN_FRAGMENT);
        self.queue.is_empty() && low_credit
    }
}

/// A message being reassembled.
#[derive(Debug, Default)]
pub(crate) struct Partial {
    pub(crate) buf: BytesMut,
    /// When its first frame arrived (spec/sessions.md#timers: assembly).
    pub(crate) since: Option<Timestamp>,
}

/// The rate buckets of a session whose grant sets a rate (out of line: most have none).
#[derive(Debug)]
pub(crate) struct RecvRate {
    messages: TokenBucket,
    bytes: TokenBucket,
}

/// A graceful close waiting for something: this side's queue to drain before CLOSE goes
/// out, or the application to read what the peer sent before its CLOSE.
#[derive(Debug, Clone)]
pub(crate) struct PendingClose {
    pub(crate) code: CloseCode,
    pub(crate) reason: Text,
    pub(crate) retry_after_ms: u32,
}

/// A session's own counters; [`Session::snapshot`] adds the queue depths and credit that
/// [`SessionStats`] reports, so they are not stored twice.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    pub(crate) messages_sent: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) messages_received: u64,
    pub(crate) bytes_received: u64,
    pub(crate) stalled: Duration,
    /// Saturating at 2^32−1: a session stalls at most once per CREDIT it waits for.
    pub(crate) credit_stalls: u32,
    /// Saturating at 2^32−1.
    pub(crate) rate_limit_hits: u32,
}

/// One session.
///
/// `repr(C)` keeps the fields in this order: what receiving a DATA frame touches comes first
/// (the receive half, activity, phase, the close states, then the counters), so that with
/// thousands of sessions a frame for a cold one fetches about three cache lines rather than
/// all five (benches/dispatch.rs). What an idle session does not use (rate buckets, a close
/// waiting for its queue, a message in reassembly) is boxed on first use, so the box stays
/// small (P7).
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Session {
    pub(crate) recv: RecvHalf,
    pub(crate) last_activity: Timestamp,
    pub(crate) id: SessionId,
    pub(crate) phase: Phase,
    pub(crate) in_ring: bool,
    /// The transmit filled up during this session's turn: it resumes the same turn, with
    /// the deficit it has left and no new quantum.
    pub(crate) resume: bool,
    /// This side asked for a graceful close; CLOSE goes out when the send queue is empty.
    /// Boxed, like `peer_close`: only a close that waits for something has one.
    pub(crate) local_close: Option<Box<PendingClose>>,
    /// The peer closed gracefully; the session ends when the application has read all.
    pub(crate) peer_close: Option<Box<PendingClose>>,
    pub(crate) stats: Counters,
    pub(crate) send: SendHalf,
    /// Deficit round robin state.
    pub(crate) weight: u32,
    pub(crate) deficit: u64,
}

impl Session {
    pub(crate) fn new(
        id: SessionId,
        phase: Phase,
        send: SendHalf,
        recv: RecvHalf,
        now: Timestamp,
    ) -> Self {
        Session {
            id,
            phase,
            send,
            recv,
            local_close: None,
            peer_close: None,
            weight: 1,
            deficit: 0,
            in_ring: false,
            resume: false,
            last_activity: now,
            stats: Counters::default(),
        }
    }

    /// Whether the scheduler should visit this session.
    pub(crate) fn wants_to_send(&self, max_frame: u32) -> bool {
        // A direction the grant does not permit sends nothing, not even a FIN.
        self.phase != Phase::Pending && self.send.permitted && self.send.plan(max_frame).is_some()
    }

    /// Both directions finished and everything read: the session can end normally.
    pub(crate) fn is_done(&self) -> bool {
        self.send.fin_sent
            && self.recv.fin
            && self.recv.queue.is_empty()
            && self.recv.partial.is_none()
    }

    /// A snapshot of the counters with the current queue depths.
    pub(crate) fn snapshot(&self) -> SessionStats {
        let c = &self.stats;
        let mut s = SessionStats {
            messages_sent: c.messages_sent,
            bytes_sent: c.bytes_sent,
            messages_received: c.messages_received,
            bytes_received: c.bytes_received,
            credit_stalls: u64::from(c.credit_stalls),
            stalled: c.stalled,
            rate_limit_hits: u64::from(c.rate_limit_hits),
            ..SessionStats::default()
        };
        s.send_queued_messages = u32::try_from(self.send.queue.len()).unwrap_or(u32::MAX);
        s.send_queued_bytes = self.send.queued_bytes;
        s.recv_queued_messages = u32::try_from(self.recv.queue.len()).unwrap_or(u32::MAX);
        s.recv_queued_bytes = self.recv.queued_bytes;
        s.send_credit = (self.send.credit.messages, self.send.credit.bytes);
        s.recv_credit = (self.recv.credit.messages, self.recv.credit.bytes);
        s.recv_window = (self.recv.window.messages, self.recv.window.bytes);
        s.recv_unannounced = (self.recv.unannounced.messages, self.recv.unannounced.bytes);
        s.recv_held_messages = self.recv.held_messages();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle session's footprint (BENCHMARKS.md P7): the table boxes one `Session` per
    /// live session, so every byte here is paid by each of them. Cold state (rates, close
    /// states, reassembly) lives out of line; a change that grows this should move
    /// something out too.
    #[test]
    fn an_idle_session_stays_small() {
        // 560 bytes with the rate buckets, close states, reassembly and full `SessionStats`
        // inline.
        assert!(
            std::mem::size_of::<Session>() <= 320,
            "{}",
            std::mem::size_of::<Session>()
        );
        assert!(std::mem::size_of::<Counters>() <= 56);
    }
}
