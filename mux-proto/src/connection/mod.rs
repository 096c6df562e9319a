//! The connection state machine: it coordinates sessions, limits, credit, scheduling and
//! timers, and only emits actions.

mod arena;
mod commands;
mod recv;
mod timers;
mod transmit;

pub use transmit::MIN_TRANSMIT;

use std::collections::VecDeque;

use crate::code::CloseCode;
use crate::config::{Config, PeerSettings};
use crate::event::{Event, Initiator, LimitKind};
use crate::frame::{ConnClose, Frame, SessionClose, Text, MAX_REASON_LEN, MIN_FRAGMENT};
use crate::id::{SessionId, Side};
use crate::rate::TokenBucket;
use crate::session::{Phase, Session, Store, Window};
use crate::stats::{ConnCounters, ConnectionStats, SessionStats};
use crate::time::Timestamp;

use arena::Arena;
use timers::Timers;

/// A control frame waiting to be sent. CREDIT is built when sent, so several consumptions
/// coalesce into one frame.
#[derive(Debug)]
enum Control {
    Frame(Frame),
    Credit(SessionId),
}

/// The connection's lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for the peer's SETTINGS.
    Handshaking,
    /// Running.
    Open,
    /// CONN_CLOSE is queued; nothing else will be sent or processed.
    Closing,
    /// Done.
    Closed,
}

/// One endpoint of one multiplexed connection. Fully deterministic: no I/O, no clock.
///
/// Public methods fall in four groups (the quinn-proto shape):
///
/// - **A. getters** (`&self`): [`side`](Connection::side), [`stats`](Connection::stats),
///   [`session_stats`](Connection::session_stats), [`is_closed`](Connection::is_closed), ...
/// - **B. inputs** from the peer or the clock: [`handle_message`](Connection::handle_message),
///   [`handle_text_message`](Connection::handle_text_message),
///   [`handle_transport_control`](Connection::handle_transport_control),
///   [`handle_timeout`](Connection::handle_timeout),
///   [`handle_transport_closed`](Connection::handle_transport_closed).
/// - **C. commands** from the application: [`open`](Connection::open),
///   [`accept`](Connection::accept), [`reject`](Connection::reject),
///   [`send`](Connection::send), [`recv`](Connection::recv), [`finish`](Connection::finish),
///   [`close_session`](Connection::close_session), [`reset`](Connection::reset),
///   [`revoke`](Connection::revoke), [`grant_credit`](Connection::grant_credit),
///   [`go_away`](Connection::go_away), [`close`](Connection::close).
/// - **D. outputs**: [`poll_transmit`](Connection::poll_transmit),
///   [`poll_event`](Connection::poll_event), [`poll_timeout`](Connection::poll_timeout).
///
/// The contract: after every B or C call, drain the D outputs until they are empty, then
/// sleep until `poll_timeout()` or the next input.
#[derive(Debug)]
pub struct Connection {
    side: Side,
    config: Config,
    state: State,
    peer: Option<PeerSettings>,
    settings_sent: bool,
    close_code: Option<CloseCode>,
    sessions: Store,
    /// Highest ID the peer opened (0 before any).
    last_peer_id: u32,
    /// Highest ID this side opened (0 before any).
    last_local_id: u32,
    /// Sessions open now, by who opened them.
    local_live: u32,
    peer_live: u32,
    /// Live peer opens waiting for the application, in arrival order (so deadline order).
    pending: VecDeque<(SessionId, Timestamp)>,
    /// Sessions this side opened that await ACCEPT, in open order (so deadline order).
    opening: VecDeque<(SessionId, Timestamp)>,
    /// Σ of live sessions' receive windows, overhead included: never above max_recv_buffer.
    recv_reserved: u64,
    /// The two sessions that received DATA most recently, with when: a window grows only
    /// while no other session is receiving (commands.rs, `maybe_grow_window`).
    recent_data: [(SessionId, Timestamp); 2],
    recv_buffered: u64,
    /// Chunks small received messages are copied into (arena.rs); boxed on first use and
    /// freed when idle, so an idle connection pays one pointer for it.
    arena: Option<Box<Arena>>,
    send_buffered: u64,
    control: VecDeque<Control>,
    /// Bound on `control`: beyond it the connection stops asking for input (wants_read).
    control_high_water: usize,
    pending_pong: Option<u64>,
    ping_due: Option<u64>,
    ping_counter: u64,
    goaway_sent: Option<SessionId>,
    /// `go_away` called before the peer's SETTINGS: sent once they arrive.
    goaway_requested: Option<(CloseCode, String)>,
    goaway_received: Option<SessionId>,
    /// Deficit round robin ring of sessions with sendable data.
    ring: VecDeque<SessionId>,
    /// Sessions owed `Writable` once the connection's send buffer has room.
    blocked: VecDeque<SessionId>,
    /// Sessions whose credit is withheld by the throttle policy.
    throttled: VecDeque<SessionId>,
    /// Paces this side's control frames to the peer's CONTROL_BUDGET (spec/sessions.md#control-budget).
    pace: TokenBucket,
    /// CREDITs waiting for the pacer, outside the control queue so they hold nothing back.
    paced_credits: VecDeque<SessionId>,
    /// Sessions this side opened whose DATA waits for their granted rates (each at most
    /// once: `SendHalf::paced`); they rejoin the ring when the data pacing timer fires.
    paced_sessions: VecDeque<SessionId>,
    events: VecDeque<Event>,
    control_budget: TokenBucket,
    open_bucket: TokenBucket,
    conn_messages: TokenBucket,
    conn_bytes: TokenBucket,
    timers: Timers,
    stats: ConnCounters,
}

impl Connection {
    /// A new connection for `side`. SETTINGS is queued at once; call
    /// [`poll_transmit`](Connection::poll_transmit) to send it.
    pub fn new(side: Side, config: Config, now: Timestamp) -> Connection {
        let l = &config.limits;
        let control_high_water = usize::try_from(
            u64::from(l.max_sessions)
                .saturating_add(u64::from(l.max_pending_opens))
                .saturating_add(u64::from(l.control_budget))
                .saturating_add(64),
        )
        .unwrap_or(usize::MAX);
        let timers = Timers::new(&config.timeouts, now);
        Connection {
            side,
            state: State::Handshaking,
            peer: None,
            settings_sent: false,
            close_code: None,
            sessions: Store::new(config.hash_seed, l.max_tombstones),
            last_peer_id: 0,
            last_local_id: 0,
            local_live: 0,
            peer_live: 0,
            pending: VecDeque::new(),
            opening: VecDeque::new(),
            recv_reserved: 0,
            recent_data: [(SessionId(0), Timestamp::NEVER); 2],
            recv_buffered: 0,
            arena: None,
            send_buffered: 0,
            control: VecDeque::new(),
            control_high_water,
            pending_pong: None,
            ping_due: None,
            ping_counter: 0,
            goaway_sent: None,
            goaway_requested: None,
            goaway_received: None,
            ring: VecDeque::new(),
            blocked: VecDeque::new(),
            throttled: VecDeque::new(),
            pace: TokenBucket::unlimited(),
            paced_credits: VecDeque::new(),
            paced_sessions: VecDeque::new(),
            events: VecDeque::new(),
            control_budget: TokenBucket::new(l.control_budget, l.control_budget, now),
            open_bucket: TokenBucket::new(l.opens_per_sec, l.opens_burst, now),
            conn_messages: TokenBucket::new(
                l.connection_rate.messages_per_sec,
                l.connection_rate.burst_messages,
                now,
            ),
            conn_bytes: TokenBucket::new(
                l.connection_rate.bytes_per_sec,
                l.connection_rate.burst_bytes,
                now,
            ),
            timers,
            stats: ConnCounters::default(),
            config,
        }
    }

    // ---- A. getters -------------------------------------------------------------------

    /// Which side this endpoint is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The peer's limits, once its SETTINGS arrived.
    pub fn peer_settings(&self) -> Option<&PeerSettings> {
        self.peer.as_ref()
    }

    /// True once the peer's SETTINGS arrived and until the connection starts closing.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// True once nothing more will be sent: close the transport with [`Connection::close_code`].
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The code the connection closed (or is closing) with.
    pub fn close_code(&self) -> Option<CloseCode> {
        self.close_code
    }

    /// Whether the driver should read more input now. False while the receive buffer or
    /// the queue of control replies is full (the reader pauses instead of buffering), and
    /// after close.
    pub fn wants_read(&self) -> bool {
        matches!(self.state, State::Handshaking | State::Open)
            && self.recv_buffered < self.config.limits.max_recv_buffer
            && self.control.len() < self.control_high_water
    }

    /// Connection counters, with current buffer levels.
    pub fn stats(&self) -> ConnectionStats {
        let mut s = self.stats.snapshot();
        s.sessions_live = self.local_live.saturating_add(self.peer_live);
        s.recv_buffered = self.recv_buffered;
        s.send_buffered = self.send_buffered;
        s
    }

    /// Frees the buffers of the connection's queues that are empty now (events, control
    /// frames, pending opens, the scheduler's rings, tombstones) and the receive arena's
    /// chunks that no message holds, which otherwise keep the capacity of their busiest
    /// moment. For a host whose connection has gone quiet after a burst (BENCHMARKS.md P7:
    /// an idle connection keeps nothing it does not use); the next use of a freed queue
    /// allocates again, so not for every message. Changes no protocol state.
    pub fn shrink_to_fit(&mut self) {
        fn shrink<T>(queue: &mut VecDeque<T>) {
            if queue.is_empty() {
                queue.shrink_to_fit();
            }
        }
        shrink(&mut self.events);
        shrink(&mut self.control);
        shrink(&mut self.pending);
        shrink(&mut self.opening);
        shrink(&mut self.ring);
        shrink(&mut self.blocked);
        shrink(&mut self.throttled);
        shrink(&mut self.paced_credits);
        shrink(&mut self.paced_sessions);
        self.sessions.shrink_to_fit();
        if self.arena.as_mut().is_some_and(|a| !a.release_free()) {
            self.arena = None;
        }
    }

    /// Bytes held now: (received and not yet read, queued for sending). The two buffer
    /// levels of [`stats`](Self::stats), without copying the counters.
    pub fn buffered(&self) -> (u64, u64) {
        (self.recv_buffered, self.send_buffered)
    }

    /// Bytes the receive arena's chunks take now, held by received messages or kept for the
    /// next ones. Small one-frame messages are copied into 8 KiB chunks that are recycled
    /// as the application drops them; a new chunk is cut only while the chunks stay within
    /// the larger of 32 KiB and what the receive buffer is charged then, so this never
    /// exceeds the larger of 32 KiB and `max_recv_buffer`. 0 once the connection has been
    /// idle for a second (or closed) and no received message holds a chunk.
    pub fn recv_arena_bytes(&self) -> usize {
        self.arena.as_ref().map_or(0, |a| a.allocated())
    }

    /// A session's counters, if it is live.
    pub fn session_stats(&self, id: SessionId) -> Option<SessionStats> {
        self.sessions.get(id).map(Session::snapshot)
    }

    /// When the message [`recv`](Self::recv) would return next for `id` arrived (its last
    /// frame), if there is one: the driver subtracts it from `now` to observe how long
    /// received messages wait for the application.
    pub fn recv_queued_since(&self, id: SessionId) -> Option<Timestamp> {
        let session = self.sessions.get(id)?;
        (session.phase == Phase::Open)
            .then(|| session.recv.queue.front().map(|(_, at)| *at))
            .flatten()
    }

    /// A live session's phase.
    pub fn session_phase(&self, id: SessionId) -> Option<Phase> {
        self.sessions.get(id).map(|s| s.phase)
    }

    /// IDs of live sessions (in no particular order).
    pub fn session_ids(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.sessions.ids()
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Entries in the lists of sessions waiting for something (the pacer, send-buffer room,
    /// throttled credit): each holds a live session at most once, so never more than
    /// `session_count` (checked by the model test and the fuzz target).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn wait_list_lengths(&self) -> [usize; 3] {
        [
            self.paced_sessions.len(),
            self.blocked.len(),
            self.throttled.len(),
        ]
    }

    /// Closed sessions still remembered to absorb late frames.
    pub fn tombstone_count(&self) -> usize {
        self.sessions.tombstone_count()
    }

    /// Peer opens waiting for an authorization decision.
    pub fn pending_open_count(&self) -> usize {
        self.pending.len()
    }

    /// Authorization deadlines of peer opens waiting for a decision, earliest first.
    pub fn pending_open_deadlines(&self) -> impl Iterator<Item = (SessionId, Timestamp)> + '_ {
        self.pending.iter().copied()
    }

    /// Answer deadlines of sessions this side opened that await ACCEPT, earliest first.
    pub fn open_answer_deadlines(&self) -> impl Iterator<Item = (SessionId, Timestamp)> + '_ {
        self.opening.iter().copied()
    }

    /// Control frames queued for sending.
    pub fn queued_control_frames(&self) -> usize {
        self.control.len()
    }

    /// Whether queued control frames wait for the peer's CONTROL_BUDGET to refill: they go
    /// out after the pace deadline, which `poll_timeout` includes.
    pub fn control_waits_for_budget(&self) -> bool {
        self.timers.pace_armed()
    }

    /// Bytes reserved for the receive windows of live sessions (overhead included).
    pub fn recv_reserved(&self) -> u64 {
        self.recv_reserved
    }

    // ---- D. outputs -------------------------------------------------------------------

    /// The next event, if any. Drain after every input and command.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- internals shared by the input, command and output halves ---------------------

    fn emit(&mut self, event: Event) {
        self.events.push_back(event);
    }

    fn limit_hit(&mut self, id: Option<SessionId>, limit: LimitKind) {
        self.emit(Event::LimitHit { id, limit });
    }

    fn now_peer(&self) -> PeerSettings {
        self.peer.unwrap_or(PeerSettings::DEFAULT)
    }

    /// Charges one control frame (received, or an error this side generates). Returns false
    /// if the budget is exhausted, after closing the connection with 1008.
    fn charge_control(&mut self, now: Timestamp) -> bool {
        self.stats.control_frames_charged = self.stats.control_frames_charged.saturating_add(1);
        if self.control_budget.try_take(now, 1) {
            return true;
        }
        self.limit_hit(None, LimitKind::ControlBudget);
        self.fail(
            CloseCode::POLICY_VIOLATION,
            "control frame budget exhausted",
        );
        false
    }

    /// A connection error detected locally: queue CONN_CLOSE and stop.
    fn fail(&mut self, code: CloseCode, reason: &str) {
        self.begin_close(code, reason, 0, Initiator::Local);
    }

    fn begin_close(
        &mut self,
        code: CloseCode,
        reason: &str,
        retry_after_ms: u32,
        initiator: Initiator,
    ) {
        if matches!(self.state, State::Closing | State::Closed) {
            return;
        }
        self.close_code = Some(code);
        let mut frame = ConnClose::new(code, reason);
        frame.retry_after_ms = retry_after_ms;
        self.release_all_sessions(code);
        // Nothing is received any more: the chunks live as long as the messages cut from
        // them, and no new one is cut (the arena's bound holds).
        self.arena = None;
        self.control.clear();
        self.ring.clear();
        self.blocked.clear();
        self.throttled.clear();
        self.pending.clear();
        self.opening.clear();
        self.paced_credits.clear();
        self.paced_sessions.clear();
        self.pending_pong = None;
        self.ping_due = None;
        self.emit(Event::ConnectionClosed {
            code,
            initiator,
            reason: frame.reason.clone(),
        });
        if initiator == Initiator::Local {
            self.control
                .push_back(Control::Frame(Frame::ConnClose(frame)));
            self.state = State::Closing;
        } else {
            self.state = State::Closed;
        }
    }

    /// Drops every session at connection close. Their end is reported by ConnectionClosed.
    fn release_all_sessions(&mut self, code: CloseCode) {
        let count = self.sessions.len();
        for _ in self.sessions.drain() {}
        for _ in 0..count {
            self.stats.record_close(code);
        }
        self.local_live = 0;
        self.peer_live = 0;
        self.recv_reserved = 0;
        self.recv_buffered = 0;
        self.send_buffered = 0;
    }

    /// Ends a live session: releases its state, remembers its ID as a tombstone, queues
    /// `frame` (RESET or CLOSE) if given, and reports it unless the application never saw it.
    fn end_session(
        &mut self,
        now: Timestamp,
        id: SessionId,
        close: SessionClose,
        initiator: Initiator,
        send: Option<fn(SessionClose) -> Frame>,
    ) {
        let Some(session) = self.sessions.remove(id) else {
            return;
        };
        // The wait lists hold each live session at most once; drop this one so they stay
        // bounded by the live sessions however many end while listed.
        if session.send.paced {
            self.paced_sessions.retain(|&paced| paced != id);
        }
        if session.send.owes_writable {
            self.blocked.retain(|&blocked| blocked != id);
        }
        if session.recv.throttled {
            self.throttled.retain(|&throttled| throttled != id);
        }
        match session.phase {
            Phase::Pending => self.forget_pending(id),
            Phase::Opening => self.forget_opening(id),
            Phase::Open => {}
        }
        let overhead = self.config.limits.per_message_overhead;
        self.recv_reserved = self
            .recv_reserved
            .saturating_sub(session.recv.window.memory_cost(overhead));
        let held = u64::from(session.recv.held_messages()).saturating_mul(u64::from(overhead));
        self.recv_buffered = self
            .recv_buffered
            .saturating_sub(session.recv.queued_bytes.saturating_add(held));
        let queued = u64::try_from(session.send.queue.len())
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(overhead));
        self.send_buffered = self
            .send_buffered
            .saturating_sub(session.send.queued_bytes.saturating_add(queued));
        if id.initiator() == Some(self.side) {
            self.local_live = self.local_live.saturating_sub(1);
        } else {
            self.peer_live = self.peer_live.saturating_sub(1);
        }
        let expires = now.saturating_add(self.config.timeouts.tombstone_ttl);
        self.sessions
            .bury(id, expires, late_allowance(session.recv.credit));
        self.stats.record_close(close.code);
        let event = Event::SessionClosed {
            id,
            code: close.code,
            initiator,
            reason: close.reason.clone(),
            retry_after_ms: close.retry_after_ms,
        };
        if let Some(build) = send {
            self.control.push_back(Control::Frame(build(close)));
        }
        self.emit(event);
        self.maybe_finish_shutdown();
    }

    /// A session error this side detected: charge it to the control budget (so forced
    /// errors cannot be free, spec/sessions.md#control-budget), then reset the session.
    fn session_error(&mut self, now: Timestamp, id: SessionId, code: CloseCode, reason: &str) {
        if !self.charge_control(now) {
            return;
        }
        let close = SessionClose::new(id, code, reason);
        self.end_session(now, id, close, Initiator::Local, Some(Frame::Reset));
    }

    /// Refuses a peer OPEN before the application saw it: RESET, tombstone, no event.
    fn refuse_open(
        &mut self,
        now: Timestamp,
        id: SessionId,
        code: CloseCode,
        retry_after_ms: u32,
        reason: &str,
    ) {
        self.stats.opens_refused = self.stats.opens_refused.saturating_add(1);
        if !self.charge_control(now) {
            return;
        }
        let mut close = SessionClose::new(id, code, reason);
        close.retry_after_ms = retry_after_ms;
        // The peer may have sent early data within the initial window.
        let limits = &self.config.limits;
        let window = Window::new(limits.initial_credit_messages, limits.initial_credit_bytes);
        let expires = now.saturating_add(self.config.timeouts.tombstone_ttl);
        self.sessions.bury(id, expires, late_allowance(window));
        self.stats.record_close(code);
        self.control.push_back(Control::Frame(Frame::Reset(close)));
    }

    /// Drops a peer open's authorization deadline once it is decided or gone, so
    /// `pending` holds exactly the live pending sessions (at most `max_pending_opens`).
    /// Decisions usually come in arrival order, so this is the front entry and O(1).
    fn forget_pending(&mut self, id: SessionId) {
        if self.pending.front().is_some_and(|(first, _)| *first == id) {
            self.pending.pop_front();
        } else {
            self.pending.retain(|(pending, _)| *pending != id);
        }
    }

    /// Drops an open's answer deadline once it is answered or gone. Answers usually come in
    /// open order, so this is the front entry and O(1).
    fn forget_opening(&mut self, id: SessionId) {
        if self.opening.front().is_some_and(|(first, _)| *first == id) {
            self.opening.pop_front();
        } else {
            self.opening.retain(|(opening, _)| *opening != id);
        }
    }

    /// Puts a session in the scheduler ring if it has something to send.
    fn schedule(&mut self, id: SessionId) {
        let max_frame = self.now_peer().max_frame_size;
        if let Some(s) = self.sessions.get_mut(id) {
            if !s.in_ring && !s.send.paced && s.wants_to_send(max_frame) {
                s.in_ring = true;
                self.ring.push_back(id);
            }
        }
    }

    /// After GOAWAY, close the connection once no session is left.
    fn maybe_finish_shutdown(&mut self) {
        if self.goaway_sent.is_some() && self.sessions.len() == 0 && self.state == State::Open {
            // A graceful end: the GOAWAY and the CLOSE/RESET of the last sessions, if still
            // queued, go out before CONN_CLOSE (a connection error discards them instead),
            // and so do the OPEN and ACCEPT they follow, or the peer would see frames for
            // sessions never opened (4005). Only CREDIT, for sessions now gone, is dropped.
            let keep: VecDeque<Control> = self
                .control
                .drain(..)
                .filter(|c| matches!(c, Control::Frame(_)))
                .collect();
            self.fail(CloseCode::GOING_AWAY, "shutdown complete");
            for control in keep.into_iter().rev() {
                self.control.push_front(control);
            }
        }
    }
}

/// Cuts `reason` to what a close frame carries.
pub(crate) fn reason_text(reason: &str) -> Text {
    Text::truncated(reason, MAX_REASON_LEN)
}

/// Late DATA frames a tombstone absorbs for free: at most what the peer could still have had
/// in flight when the session ended, given the credit it had left (spec/sessions.md#late-frames):
/// a frame per message of credit, one per MIN_FRAGMENT bytes, a short last fragment and a pure
/// FIN. Late DATA beyond it is charged like late DATA without a tombstone.
fn late_allowance(credit: Window) -> u32 {
    let fragments = credit.bytes.checked_div(MIN_FRAGMENT).unwrap_or(0);
    credit.messages.saturating_add(fragments).saturating_add(2)
}

/// Converts a duration in µs-precision to whole milliseconds for retry hints, rounding up.
pub(crate) fn retry_ms(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u32::MAX)
}
