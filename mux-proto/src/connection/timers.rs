//! Connection timers: a fixed table, next deadline = the minimum over it. Per-session
//! deadlines live in FIFO queues (same timeout, so arrival order is deadline order) or are
//! checked by a periodic sweep, so `poll_timeout` is O(1) whatever the session count.

use std::time::Duration;

use super::{arena, Connection, State};
use crate::code::CloseCode;
use crate::config::Timeouts;
use crate::event::Initiator;
use crate::frame::{Frame, SessionClose};
use crate::session::Phase;
use crate::time::Timestamp;

#[derive(Debug)]
pub(super) struct Timers {
    /// The peer's SETTINGS must arrive by then.
    settings: Timestamp,
    /// Send a PING then (silence since the last receipt).
    keepalive: Timestamp,
    /// Receive silence before a PING (the configured keepalive interval).
    interval: Option<Duration>,
    /// Half the peer's IDLE_TIMEOUT_MS, if it has one and keepalive is on.
    peer_idle_half: Option<Duration>,
    /// Send a PING then if nothing else was sent: the peer closes the connection after its
    /// IDLE_TIMEOUT_MS without receiving a frame.
    send_idle: Timestamp,
    /// Something must arrive by then after a PING.
    pong: Timestamp,
    /// After GOAWAY, close by then.
    shutdown: Timestamp,
    /// Next idle sweep over the sessions.
    idle_sweep: Timestamp,
    /// Next sweep for messages that take too long to complete; armed only while some
    /// session holds a message in part, so idle connections get no wake-ups from it.
    assembly_sweep: Timestamp,
    /// Next re-check of throttled sessions.
    throttle: Timestamp,
    /// When paced CREDITs may go out again.
    pace: Timestamp,
    /// When the earliest session waiting for its granted rates may send again.
    data_pace: Timestamp,
    /// Next look at the receive arena, to free its chunks once unused; armed only while it
    /// holds some (arena.rs).
    arena: Timestamp,
}

impl Timers {
    pub(super) fn new(t: &Timeouts, now: Timestamp) -> Self {
        Timers {
            settings: now.saturating_add(t.settings_timeout),
            keepalive: t
                .keepalive_interval
                .map_or(Timestamp::NEVER, |i| now.saturating_add(i)),
            interval: t.keepalive_interval,
            peer_idle_half: None,
            send_idle: Timestamp::NEVER,
            pong: Timestamp::NEVER,
            shutdown: Timestamp::NEVER,
            idle_sweep: t
                .session_idle
                .map_or(Timestamp::NEVER, |i| now.saturating_add(sweep_period(i))),
            assembly_sweep: Timestamp::NEVER,
            throttle: Timestamp::NEVER,
            pace: Timestamp::NEVER,
            data_pace: Timestamp::NEVER,
            arena: Timestamp::NEVER,
        }
    }

    /// The receive arena holds chunks: look at it again in an [`arena::IDLE`] period (if
    /// it was used meanwhile, the look finds when to look next).
    pub(super) fn arm_arena(&mut self, now: Timestamp) {
        if self.arena == Timestamp::NEVER {
            self.arena = now.saturating_add(arena::IDLE);
        }
    }

    /// A session's DATA waits for its granted rates until `at`.
    pub(super) fn arm_data_pace(&mut self, at: Timestamp) {
        self.data_pace = self.data_pace.min(at);
    }

    /// CREDITs wait for the pacer until `at`.
    pub(super) fn pace_armed(&self) -> bool {
        self.pace != Timestamp::NEVER
    }

    pub(super) fn arm_pace(&mut self, at: Timestamp) {
        self.pace = self.pace.min(at);
    }

    /// Anything received proves the peer alive: push the keepalive back, clear the PONG wait.
    pub(super) fn on_receive(&mut self, now: Timestamp) {
        self.keepalive = self
            .interval
            .map_or(Timestamp::NEVER, |i| now.saturating_add(i));
        self.pong = Timestamp::NEVER;
    }

    /// The peer closes the connection after `idle_ms` without receiving a frame (0: never):
    /// from now on, a PING goes out whenever nothing was sent for half of it, so an idle
    /// but healthy connection survives (spec/sessions.md#timers). A keepalive the
    /// configuration disabled stays disabled.
    pub(super) fn on_peer_idle_timeout(&mut self, idle_ms: u32, now: Timestamp) {
        if self.interval.is_none() || idle_ms == 0 {
            return;
        }
        let half = Duration::from_millis(u64::from(idle_ms / 2)).max(Duration::from_millis(1));
        self.peer_idle_half = Some(half);
        self.send_idle = now.saturating_add(half);
    }

    /// Something was sent: the peer's idle timer restarts.
    pub(super) fn on_send(&mut self, now: Timestamp) {
        if let Some(half) = self.peer_idle_half {
            self.send_idle = now.saturating_add(half);
        }
    }

    /// A message began arriving in part: sweep for late ones from now on.
    pub(super) fn arm_assembly(&mut self, t: &Timeouts, now: Timestamp) {
        if let Some(limit) = t.message_assembly {
            if self.assembly_sweep == Timestamp::NEVER {
                self.assembly_sweep = now.saturating_add(sweep_period(limit));
            }
        }
    }

    pub(super) fn start_shutdown(&mut self, t: &Timeouts, now: Timestamp) {
        self.shutdown = now.saturating_add(t.shutdown_grace);
    }
}

/// Sessions are swept for idleness four times per idle timeout, so a session is reset
/// between 1× and 1.25× its idle timeout after its last DATA.
fn sweep_period(idle: Duration) -> Duration {
    idle.checked_div(4)
        .unwrap_or(idle)
        .max(Duration::from_millis(1))
}

impl Connection {
    /// When [`handle_timeout`](Connection::handle_timeout) should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.state == State::Closed {
            return None;
        }
        let t = &self.timers;
        let mut next = t
            .pong
            .min(t.shutdown)
            .min(t.throttle)
            .min(t.pace)
            .min(t.data_pace);
        if self.peer.is_none() {
            next = next.min(t.settings);
        }
        if self.state == State::Open {
            next = next.min(t.keepalive).min(t.send_idle).min(t.arena);
            if self.sessions.len() > 0 {
                next = next.min(t.idle_sweep).min(t.assembly_sweep);
            }
        }
        if let Some((_, deadline)) = self.pending.front() {
            next = next.min(*deadline);
        }
        if let Some((_, deadline)) = self.opening.front() {
            next = next.min(*deadline);
        }
        if let Some(expiry) = self.sessions.next_expiry() {
            next = next.min(expiry);
        }
        (next != Timestamp::NEVER).then_some(next)
    }

    /// Advances the clock to `now`, firing every deadline at or before it. Then drain.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if !matches!(self.state, State::Handshaking | State::Open) {
            return;
        }
        if self.peer.is_none() && now >= self.timers.settings {
            self.fail(CloseCode::TIMEOUT, "SETTINGS not received in time");
            return;
        }
        if now >= self.timers.pong {
            self.fail(CloseCode::TIMEOUT, "keepalive timeout");
            return;
        }
        if now >= self.timers.shutdown {
            self.fail(CloseCode::GOING_AWAY, "shutdown deadline passed");
            return;
        }
        if self.state == State::Open && now >= self.timers.keepalive {
            self.ping_counter = self.ping_counter.wrapping_add(1);
            self.ping_due = Some(self.ping_counter);
            self.timers.keepalive = Timestamp::NEVER;
            self.timers.pong = now.saturating_add(self.config.timeouts.keepalive_timeout);
        }
        if self.state == State::Open && now >= self.timers.send_idle {
            // Nothing sent for half the peer's idle timeout: a PING keeps the peer from
            // closing an idle but healthy connection. Re-armed when it goes out.
            self.timers.send_idle = Timestamp::NEVER;
            self.ping_counter = self.ping_counter.wrapping_add(1);
            self.ping_due = Some(self.ping_counter);
            if self.timers.pong == Timestamp::NEVER {
                self.timers.pong = now.saturating_add(self.config.timeouts.keepalive_timeout);
            }
        }
        self.expire_pending(now);
        self.expire_opening(now);
        self.sessions.expire(now);
        if now >= self.timers.pace {
            // The pacer has a token again: paced CREDITs rejoin the control queue (in order),
            // and write_control parks them again if the budget is still short.
            self.timers.pace = Timestamp::NEVER;
            while let Some(id) = self.paced_credits.pop_front() {
                self.control.push_back(super::Control::Credit(id));
            }
        }
        if now >= self.timers.data_pace {
            // Sessions waiting for their granted rates rejoin the ring; write_data paces
            // again (and re-arms this timer) any whose buckets are still short.
            self.timers.data_pace = Timestamp::NEVER;
            while let Some(id) = self.paced_sessions.pop_front() {
                if let Some(s) = self.sessions.get_mut(id) {
                    s.send.paced = false;
                }
                self.schedule(id);
            }
        }
        if now >= self.timers.idle_sweep {
            self.sweep_idle(now);
        }
        if now >= self.timers.assembly_sweep {
            self.sweep_assembly(now);
        }
        if now >= self.timers.throttle {
            self.recheck_throttled(now);
        }
        if now >= self.timers.arena {
            self.recheck_arena(now);
        }
    }

    /// Frees the receive arena's chunks once it has gone unused for a period, so an idle
    /// connection keeps none (BENCHMARKS.md P7); looks again while some remain.
    fn recheck_arena(&mut self, now: Timestamp) {
        let next = self.arena.as_mut().and_then(|a| a.release_unused(now));
        if next.is_none() {
            self.arena = None;
        }
        self.timers.arena = next.unwrap_or(Timestamp::NEVER);
    }

    /// Gives up on sessions this side opened that the peer never answered: RESET 4006, so
    /// neither side keeps the session's window and slot (spec/sessions.md#authorization).
    fn expire_opening(&mut self, now: Timestamp) {
        while let Some(&(id, deadline)) = self.opening.front() {
            if deadline > now {
                break;
            }
            self.opening.pop_front();
            if self.session_phase(id) == Some(Phase::Opening) {
                let close = SessionClose::new(id, CloseCode::TIMEOUT, "no answer to OPEN");
                self.end_session(now, id, close, Initiator::Local, Some(Frame::Reset));
            }
        }
    }

    /// Refuses peer opens the application did not decide on in time (spec/sessions.md#authorization).
    fn expire_pending(&mut self, now: Timestamp) {
        while let Some(&(id, deadline)) = self.pending.front() {
            if deadline > now {
                break;
            }
            self.pending.pop_front();
            if self.session_phase(id) == Some(Phase::Pending) {
                self.stats.opens_refused = self.stats.opens_refused.saturating_add(1);
                let close =
                    SessionClose::new(id, CloseCode::TIMEOUT, "authorization deadline passed");
                self.end_session(now, id, close, Initiator::Local, Some(Frame::Reset));
            }
        }
    }

    fn sweep_idle(&mut self, now: Timestamp) {
        let Some(idle) = self.config.timeouts.session_idle else {
            self.timers.idle_sweep = Timestamp::NEVER;
            return;
        };
        self.timers.idle_sweep = now.saturating_add(sweep_period(idle));
        let expired: Vec<_> = self
            .sessions
            .iter()
            .filter(|s| {
                s.phase == Phase::Open && now.saturating_duration_since(s.last_activity) >= idle
            })
            .map(|s| s.id)
            .collect();
        for id in expired {
            let close = SessionClose::new(id, CloseCode::TIMEOUT, "session idle");
            self.end_session(now, id, close, Initiator::Local, Some(Frame::Reset));
        }
    }

    /// Resets sessions whose message in progress began more than `message_assembly` ago:
    /// a fragmented message has a completion deadline that trickled fragments do not
    /// extend (spec/sessions.md#timers).
    fn sweep_assembly(&mut self, now: Timestamp) {
        let Some(limit) = self.config.timeouts.message_assembly else {
            self.timers.assembly_sweep = Timestamp::NEVER;
            return;
        };
        let mut still_partial = false;
        let expired: Vec<_> = self
            .sessions
            .iter()
            .filter(|s| {
                let Some(t) = s.recv.partial.as_ref().and_then(|p| p.since) else {
                    return false;
                };
                let late = now.saturating_duration_since(t) >= limit;
                still_partial |= !late;
                late
            })
            .map(|s| s.id)
            .collect();
        self.timers.assembly_sweep = if still_partial {
            now.saturating_add(sweep_period(limit))
        } else {
            Timestamp::NEVER
        };
        for id in expired {
            let close = SessionClose::new(id, CloseCode::TIMEOUT, "message not completed in time");
            self.end_session(now, id, close, Initiator::Local, Some(Frame::Reset));
        }
    }

    fn recheck_throttled(&mut self, now: Timestamp) {
        self.timers.throttle = Timestamp::NEVER;
        let count = self.throttled.len();
        for _ in 0..count {
            let Some(id) = self.throttled.pop_front() else {
                break;
            };
            if let Some(s) = self.sessions.get_mut(id) {
                s.recv.throttled = false;
            }
            self.maybe_announce(now, id);
        }
        self.arm_throttle(now);
    }

    /// Arms the throttle re-check for when the first throttled session's buckets refill.
    pub(super) fn arm_throttle(&mut self, now: Timestamp) {
        let mut next = Timestamp::NEVER;
        let conn_wait = self
            .conn_messages
            .time_until(now, 1)
            .max(self.conn_bytes.time_until(now, 1));
        for id in self.throttled.iter() {
            if let Some(s) = self.sessions.get_mut(*id) {
                let wait = s
                    .recv
                    .rate_wait(now, 1, 1)
                    .max(conn_wait)
                    .max(Duration::from_millis(1));
                next = next.min(now.saturating_add(wait));
            }
        }
        self.timers.throttle = next;
    }
}
