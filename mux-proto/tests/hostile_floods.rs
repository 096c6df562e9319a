#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Threat catalogue, SM layer: floods of frames that make the receiver work (the 2019
//! HTTP/2 CVEs, Rapid Reset, MadeYouReset, accept-queue stacking, tombstone growth, session
//! and message-rate floods), against a real `Connection` through the scripted raw peer on
//! the virtual clock. Deterministic: every count below is exact.
//!
//! Volumes are the catalogue's scaled to 100k frames (from 1M–10M) so each test takes well
//! under a second in a debug build. A peer that "does not read" is one whose output this
//! test never polls: the connection is fed only while `wants_read()` says so, as a driver
//! would, and what it queues meanwhile is measured.
//!
//! Memory bounds (live bytes against a declared budget) are measured with a counting
//! allocator in the root package: tests/hostile_memory.rs.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{assert_alive, config, ms};
use mux_proto::frame::{Frame, RateLimits};
use mux_proto::testing::{frames, Pair, RawPeer};
use mux_proto::{CloseCode, Config, Event, Grant, OpenRequest, RatePolicy, SessionId, Timestamp};
use proptest::prelude::*;

/// The catalogue's 1M–10M frames, scaled.
const FLOOD: u32 = 100_000;

/// A configuration with no timers running on their own (no keepalive, no idle sweep), so
/// "back to baseline" includes `poll_timeout() == None`.
fn quiet(f: impl FnOnce(&mut Config)) -> Config {
    config(|c| {
        c.timeouts.keepalive_interval = None;
        c.timeouts.session_idle = None;
        f(c);
    })
}

/// B.d for the state machine: no session, no tombstone once expired, nothing queued, no
/// timer armed, no buffered byte.
fn assert_baseline(peer: &mut RawPeer) {
    peer.advance(peer.conn.config().timeouts.tombstone_ttl);
    peer.collect();
    assert_eq!(peer.conn.session_count(), 0, "sessions left");
    assert_eq!(peer.conn.tombstone_count(), 0, "tombstones left");
    assert_eq!(peer.conn.pending_open_count(), 0, "pending opens left");
    assert_eq!(peer.conn.queued_control_frames(), 0, "control frames left");
    assert_eq!(peer.conn.poll_timeout(), None, "a timer is still armed");
    let stats = peer.conn.stats();
    assert_eq!((stats.recv_buffered, stats.send_buffered), (0, 0));
    assert_eq!(peer.conn.recv_reserved(), 0);
}

/// Feeds one message per item while the connection wants input, without ever polling its
/// output (a peer that does not read). Returns how many were fed and the most control
/// frames that were ever queued.
fn feed_unread(peer: &mut RawPeer, messages: impl IntoIterator<Item = Vec<Frame>>) -> (u32, usize) {
    let mut fed = 0;
    let mut most = 0;
    for message in messages {
        if !peer.conn.wants_read() {
            break;
        }
        peer.deliver(message);
        fed += 1;
        most = most.max(peer.conn.queued_control_frames());
    }
    (fed, most)
}

fn conn_closed_with(peer: &mut RawPeer) -> Option<CloseCode> {
    peer.collect();
    peer.conn_close_code()
}

// ---- row 2: ping flood ----------------------------------------------------------------

/// Row 2 (CVE-2019-9512): 100k PINGs from a peer that never reads. With the budget out of
/// the way, exactly one PONG is ever pending (each PING replaces it) and nothing is queued;
/// with the configured budget (200/s here) the 201st PING closes with 1008, and WebSocket
/// pings reported by the driver are charged the same way.
#[test]
fn a_ping_flood_keeps_one_pending_pong_then_exhausts_the_budget() {
    let mut peer = RawPeer::server(quiet(|c| c.limits.control_budget = u32::MAX));
    let (fed, most) = feed_unread(
        &mut peer,
        (0..u64::from(FLOOD)).map(|i| vec![frames::ping(i)]),
    );
    assert_eq!(fed, FLOOD);
    assert_eq!(most, 0, "PONGs must not queue");
    peer.collect();
    assert_eq!(peer.take_frames(), vec![Frame::Pong(u64::from(FLOOD) - 1)]);
    assert_baseline(&mut peer);

    let mut peer = RawPeer::server(quiet(|c| c.limits.control_budget = 200));
    let (fed, _) = feed_unread(&mut peer, (0..1000u64).map(|i| vec![frames::ping(i)]));
    assert_eq!(fed, 201, "the 201st PING is the one over the budget");
    assert_eq!(
        conn_closed_with(&mut peer),
        Some(CloseCode::POLICY_VIOLATION)
    );
    assert!(!peer.received.iter().any(|f| matches!(f, Frame::Pong(_))));

    // WebSocket-level pings, below the mux frames: the same budget.
    let mut peer = RawPeer::server(quiet(|c| c.limits.control_budget = 200));
    for _ in 0..200 {
        peer.conn.handle_transport_control(peer.now);
    }
    assert_alive(&peer);
    peer.conn.handle_transport_control(peer.now);
    assert_eq!(
        conn_closed_with(&mut peer),
        Some(CloseCode::POLICY_VIOLATION)
    );
}

// ---- row 3: unknown frame types (the resource-loop analog) -----------------------------

/// Row 3 (CVE-2019-9513): mux has no priority frames; a frame type the receiver does not
/// know is a connection error 1002 at once, and nothing after it in the message is
/// processed (never a silent loop). Churning the scheduler instead (CREDIT on 1,000
/// sessions, 100k times) costs a bounded time per frame: at most 1 µs in a release build
/// (20 µs in the debug build of the default test run).
#[test]
fn unknown_frame_types_close_with_1002_and_scheduler_churn_is_cheap() {
    for ty in 0xbu8..=0xf {
        let mut peer = RawPeer::server(quiet(|_| {}));
        let mut bytes = vec![0x10 | ty, 0, 0, 0, 0, 0, 0, 0, 0, 8];
        bytes.extend_from_slice(&[0; 8]);
        let ping = mux_proto::frame::encode_message([&frames::ping(7)]);
        bytes.extend_from_slice(&ping);
        peer.send_bytes(Bytes::from(bytes));
        assert_eq!(
            peer.conn_close_code(),
            Some(CloseCode::PROTOCOL_ERROR),
            "type {ty:#x}"
        );
        assert!(!peer.received.iter().any(|f| matches!(f, Frame::Pong(_))));
    }

    const SESSIONS: u32 = 1000;
    let mut peer = RawPeer::server(quiet(|c| {
        c.limits.control_budget = u32::MAX;
        c.limits.max_sessions = SESSIONS;
        c.limits.opens_per_sec = u32::MAX;
        c.limits.opens_burst = u32::MAX;
        c.limits.max_recv_buffer = 1 << 30;
    }));
    for i in 0..SESSIONS {
        peer.open_accepted(2 * i + 1, Grant::full());
    }
    let credits: Vec<Frame> = (0..FLOOD)
        .map(|i| frames::credit(2 * (i % SESSIONS) + 1, 1, 1))
        .collect();
    let started = Instant::now();
    for chunk in credits.chunks(100) {
        peer.send(chunk.to_vec());
        peer.received.clear();
    }
    let per_frame = started.elapsed() / FLOOD;
    println!("scheduler churn: {per_frame:?} per CREDIT across {SESSIONS} sessions");
    let bound = if cfg!(debug_assertions) { 20 } else { 1 };
    assert!(per_frame <= Duration::from_micros(bound), "{per_frame:?}");
    assert_alive(&peer);
}

// ---- rows 4 and 5: forced errors and reply floods while not reading -------------------

/// Row 4 (CVE-2019-9514): 100k frames that each force a session error (a credit overflow
/// on a fresh session) from a peer that never reads. Every error is charged, so the queue
/// of RESETs never grows past the budget (1,000), the 1,001st unit closes with 1008, and
/// the reader would have stopped at the control reply bound long before memory mattered.
#[test]
fn forced_errors_while_not_reading_are_bounded_by_the_budget() {
    let mut peer = RawPeer::server(quiet(|c| {
        c.limits.opens_per_sec = u32::MAX;
        c.limits.opens_burst = u32::MAX;
    }));
    let messages = (0..FLOOD).map(|i| {
        let id = 2 * i + 1;
        vec![
            frames::open(id, "x"),
            frames::credit(id, u32::MAX, 0),
            frames::credit(id, u32::MAX, 0),
        ]
    });
    let (fed, most) = feed_unread(&mut peer, messages);
    // OPEN, two CREDITs and the error: 4 units a session; the 251st session's OPEN is the
    // 1,001st unit.
    assert_eq!(fed, 251);
    assert!(most <= 1000, "{most} control frames queued");
    assert_eq!(
        conn_closed_with(&mut peer),
        Some(CloseCode::POLICY_VIOLATION)
    );
    // Closing discards the queued RESETs: CONN_CLOSE is all that goes out.
    assert!(matches!(&peer.take_frames()[..], [Frame::ConnClose(_)]));
}

/// Row 5 (CVE-2019-9515): every frame that demands a reply, from a peer that never reads.
/// A second SETTINGS is a connection error (errors.rs::a_second_settings_closes_with_1002);
/// PINGs share one pending PONG (above); an OPEN is answered once (ACCEPT or RESET), and
/// past the pending cap (16) and the open rate (100/s) the refusals are charged as well.
/// So every queued reply has been paid for with at least two units: the queue never holds
/// more than half the budget, and the flood ends with 1008. (The control reply bound at
/// which the reader stops, MAX_SESSIONS + pending cap + budget + 64, is thus a backstop a
/// peer cannot reach; outgoing CREDITs the pacing holds back wait outside that queue.)
#[test]
fn reply_floods_queue_at_most_one_paid_reply_each() {
    let mut peer = RawPeer::server(quiet(|_| {}));
    let messages =
        (0..FLOOD).map(|i| vec![frames::open(2 * i + 1, "x"), frames::ping(u64::from(i))]);
    let (fed, most) = feed_unread(&mut peer, messages);
    let charged = peer.conn.stats().control_frames_charged;
    assert!(
        most as u64 <= charged / 2,
        "{most} replies queued for {charged} units"
    );
    assert!(fed < 1000, "{fed}");
    assert_eq!(
        conn_closed_with(&mut peer),
        Some(CloseCode::POLICY_VIOLATION)
    );
}

// ---- row 8: empty and tiny frames -------------------------------------------------------

/// Row 8 (CVE-2019-9518): 100k empty and one-byte messages interleaved over 1,000 sessions
/// the application never reads. Each message costs one message of credit (64 a session) and
/// its overhead in the receive buffer, so what is held stays within the reserved windows;
/// past the credit each session is reset with 4004 (charged), late frames past its
/// tombstone's allowance are charged too, and the flood ends with 1008.
#[test]
fn tiny_frame_floods_are_bounded_by_message_credit_then_the_budget() {
    const SESSIONS: u32 = 1000;
    let mut peer = RawPeer::server(quiet(|c| {
        c.limits.max_sessions = SESSIONS;
        c.limits.opens_per_sec = u32::MAX;
        c.limits.opens_burst = u32::MAX;
        c.limits.initial_credit_bytes = 4096;
        c.limits.max_recv_buffer = 1 << 30;
    }));
    for i in 0..SESSIONS {
        peer.open_accepted(2 * i + 1, Grant::full());
    }
    // The 1,000 OPENs used the budget's burst; let it refill before the flood.
    peer.advance(Duration::from_secs(1));
    let overhead = u64::from(peer.conn.config().limits.per_message_overhead);
    let reserved = peer.conn.recv_reserved();
    let messages = (0..FLOOD).map(|i| {
        let payload: &[u8] = if i % 2 == 0 { b"" } else { b"x" };
        vec![frames::data(2 * (i % SESSIONS) + 1, payload, true)]
    });
    let mut most_held = 0;
    let mut fed = 0;
    for message in messages {
        if !peer.conn.is_open() {
            break;
        }
        peer.deliver(message);
        fed += 1;
        most_held = most_held.max(peer.conn.stats().recv_buffered);
    }
    // 64 messages per session (half of them 1 byte) plus their overhead, at most.
    let held_bound = u64::from(SESSIONS) * 64 * (overhead + 1);
    assert!(most_held <= held_bound, "{most_held} > {held_bound}");
    assert!(
        most_held <= reserved,
        "{most_held} > the {reserved} B reserved"
    );
    assert!(fed < FLOOD, "the flood was never cut off");
    assert_eq!(
        conn_closed_with(&mut peer),
        Some(CloseCode::POLICY_VIOLATION)
    );
    let resets = peer
        .received
        .iter()
        .filter(|f| matches!(f, Frame::Reset(r) if r.code == CloseCode::FLOW_CONTROL))
        .count();
    assert_eq!(resets, 0, "RESETs queued at close are discarded");
    println!("tiny-frame flood: cut off after {fed} frames, most held {most_held} B");
}

/// Late DATA is free while the tombstone lasts only up to what the peer could still have
/// had in flight: its remaining credit (messages, and 1 KiB fragments) plus two frames.
/// Past that allowance every late frame is charged (spec/sessions.md#late-frames).
#[test]
fn free_late_data_is_bounded_by_the_credit_the_peer_had_left() {
    let mut peer = RawPeer::server(quiet(|_| {}));
    let id = peer.open_accepted(1, Grant::full());
    peer.send([frames::data(1, b"read", true)]);
    // The peer has 63 messages and 65,532 bytes of credit left: 63 + 63 + 2 free frames.
    let stats = peer.conn.session_stats(id).unwrap();
    assert_eq!(stats.recv_credit, (63, 65_532));
    peer.conn
        .reset(peer.now, id, CloseCode::CANCELLED, "")
        .unwrap();
    peer.collect();
    let charged = peer.conn.stats().control_frames_charged;
    let late: Vec<Frame> = (0..128).map(|_| frames::data(1, b"x", true)).collect();
    peer.send(late);
    assert_eq!(
        peer.conn.stats().control_frames_charged,
        charged,
        "in flight: free"
    );
    peer.send([frames::data(1, b"x", true), frames::data(1, b"", true)]);
    assert_eq!(peer.conn.stats().control_frames_charged, charged + 2);
    assert_alive(&peer);

    // A refused OPEN: the initial window counts (64 + 64 + 2 free).
    let mut peer = RawPeer::server(quiet(|c| c.limits.max_sessions = 0));
    peer.send([frames::open(1, "x")]);
    assert!(peer.take_reset(SessionId(1)).is_some());
    let charged = peer.conn.stats().control_frames_charged;
    peer.send(
        (0..130)
            .map(|_| frames::data(1, b"", true))
            .collect::<Vec<_>>(),
    );
    assert_eq!(peer.conn.stats().control_frames_charged, charged);
    peer.send([frames::data(1, b"", true)]);
    assert_eq!(peer.conn.stats().control_frames_charged, charged + 1);
}

// ---- row 9: rapid reset -----------------------------------------------------------------

/// Row 9 (CVE-2023-44487): OPEN then RESET on fresh IDs, pipelined. A reset pending session
/// is gone (and reported) within the same input; live sessions never exceed MAX_SESSIONS
/// nor pending ones the cap; the open rate admits its burst (100) and refuses the rest with
/// 4002; every frame and refusal is charged, so the flood ends with 1008 at exactly the
/// 367th pair (100 admitted × 2 units + 266 refused × 3 units + the 367th's third unit).
#[test]
fn rapid_reset_admits_the_open_burst_and_ends_at_the_budget() {
    let mut peer = RawPeer::server(quiet(|_| {}));
    let mut pairs = 0u32;
    let mut admitted = 0u32;
    while peer.conn.is_open() && pairs < FLOOD {
        let id = 2 * pairs + 1;
        peer.deliver([
            frames::open(id, "x"),
            frames::reset(id, CloseCode::CANCELLED),
        ]);
        pairs += 1;
        peer.pull_events();
        if peer
            .take_event(|e| matches!(e, Event::Incoming { .. }))
            .is_some()
        {
            admitted += 1;
            // The application hears of the session and of its end in the same input.
            assert!(peer.take_closed(SessionId(id)).is_some());
        }
        assert!(peer.conn.session_count() <= 100);
        assert!(peer.conn.pending_open_count() <= 16);
        assert_eq!(
            peer.conn.session_count(),
            0,
            "a reset session outlived its RESET"
        );
    }
    assert_eq!(admitted, 100);
    assert_eq!(pairs, 367);
    assert_eq!(
        conn_closed_with(&mut peer),
        Some(CloseCode::POLICY_VIOLATION)
    );
    let stats = peer.conn.stats();
    assert_eq!(stats.opens_refused, 267);
}

// ---- row 10: MadeYouReset ---------------------------------------------------------------

/// Row 10 (CVE-2025-8671), negative side: an honest client that opens and cancels sessions
/// at 10k per minute for a whole (virtual) minute never trips the budget, with the open
/// rate set to 200/s (10k/min is 167/s; at the default 100/s some opens are refused with a
/// retryable 4002, which is not the budget tripping either). The positive side — forced
/// errors charged until 1008 — is limits.rs::a_loop_of_forced_session_errors_exhausts_the_
/// control_budget and forced_resets_on_existing_sessions_are_charged_too.
#[test]
fn honest_cancels_at_10k_per_minute_never_trip_the_budget() {
    for opens_per_sec in [200, 100] {
        let server = quiet(|c| c.limits.opens_per_sec = opens_per_sec);
        let mut pair = Pair::connected_with(quiet(|_| {}), server);
        let mut refused = 0;
        for _ in 0..10_000 {
            let id = pair
                .client
                .conn
                .open(pair.now, "x", Bytes::new(), OpenRequest::default())
                .unwrap();
            pair.drive();
            for incoming in pair.server.take_incoming() {
                pair.server
                    .conn
                    .accept(pair.now, incoming, Grant::full())
                    .unwrap();
            }
            pair.drive();
            assert!(pair.server.take_conn_closed().is_none());
            pair.server.events.clear();
            let closed = pair.client.take_closed(id);
            pair.client.events.clear();
            match closed {
                Some((CloseCode::RATE_LIMITED, _)) => refused += 1,
                Some(other) => panic!("{other:?}"),
                None => {
                    pair.client
                        .conn
                        .reset(pair.now, id, CloseCode::CANCELLED, "")
                        .unwrap();
                }
            }
            pair.advance(ms(6));
        }
        assert!(pair.server.conn.is_open() && pair.client.conn.is_open());
        assert!(pair.server.take_conn_closed().is_none());
        println!("open rate {opens_per_sec}/s: {refused} of 10,000 opens refused with 4002");
        if opens_per_sec == 200 {
            assert_eq!(refused, 0);
        }
    }
}

// ---- row 11: accept-queue stacking ------------------------------------------------------

/// Row 11 (CVE-2023-26964): the application stops deciding while the peer churns opens and
/// resets. The table holds exactly the pending cap (16) — the 17th OPEN is refused with
/// 4003 — however the churn goes; at the authorization deadline every undecided open is
/// refused with 4006, and everything returns to baseline; churning on ends with 1008.
#[test]
fn undecided_opens_hold_exactly_the_pending_cap() {
    let mut peer = RawPeer::server(quiet(|c| {
        c.limits.opens_per_sec = u32::MAX;
        c.limits.opens_burst = u32::MAX;
    }));
    let opens: Vec<Frame> = (0..17).map(|i| frames::open(2 * i + 1, "x")).collect();
    peer.send(opens);
    assert_eq!(peer.conn.pending_open_count(), 16);
    assert_eq!(peer.conn.session_count(), 16);
    let refused = peer.take_reset(SessionId(33)).expect("the 17th is refused");
    assert_eq!(refused.code, CloseCode::TOO_MANY_SESSIONS);
    // Churn: reset one, open two; the table stays at exactly 16.
    let mut next = 35u32;
    for victim in (1..33).step_by(2) {
        peer.send([
            frames::reset(victim, CloseCode::CANCELLED),
            frames::open(next, "x"),
            frames::open(next + 2, "x"),
        ]);
        next += 4;
        assert_eq!(peer.conn.pending_open_count(), 16);
        assert_eq!(peer.conn.session_count(), 16);
    }
    peer.advance(peer.conn.config().timeouts.authorization);
    assert_eq!(peer.conn.pending_open_count(), 0);
    let timeouts = peer
        .received
        .iter()
        .filter(|f| matches!(f, Frame::Reset(r) if r.code == CloseCode::TIMEOUT))
        .count();
    assert_eq!(timeouts, 16);
    assert_baseline(&mut peer);
    // Churning on is charged like any other flood.
    let churn = (0..FLOOD).map(|i| {
        let id = next + 2 * i;
        vec![
            frames::open(id, "x"),
            frames::reset(id, CloseCode::CANCELLED),
        ]
    });
    feed_unread(&mut peer, churn);
    assert_eq!(
        conn_closed_with(&mut peer),
        Some(CloseCode::POLICY_VIOLATION)
    );
}

// ---- row 12: tombstone growth -----------------------------------------------------------

/// Row 12: 100k sessions closed (1M scaled), then a late frame for each. Tombstones never
/// exceed their cap (256), a late frame never re-creates state, and the tombstones expire
/// on the virtual clock, leaving nothing behind.
#[test]
fn tombstones_stay_bounded_and_late_frames_never_recreate_state() {
    let mut peer = RawPeer::server(quiet(|c| {
        c.limits.control_budget = u32::MAX;
        c.limits.opens_per_sec = u32::MAX;
        c.limits.opens_burst = u32::MAX;
    }));
    for i in 0..FLOOD {
        let id = 2 * i + 1;
        peer.deliver([frames::open(id, "x")]);
        peer.conn
            .accept(peer.now, SessionId(id), Grant::full())
            .unwrap();
        peer.deliver([frames::reset(id, CloseCode::CANCELLED)]);
        assert!(peer.conn.tombstone_count() <= 256);
        if i % 1000 == 0 {
            peer.collect();
            peer.received.clear();
            peer.events.clear();
        }
    }
    peer.collect();
    peer.received.clear();
    peer.events.clear();
    assert_eq!(peer.conn.tombstone_count(), 256);
    let started = Instant::now();
    for chunk in (0..FLOOD).collect::<Vec<_>>().chunks(1000) {
        let late: Vec<Frame> = chunk
            .iter()
            .flat_map(|i| {
                let id = 2 * i + 1;
                [frames::data(id, b"late", true), frames::credit(id, 1, 1)]
            })
            .collect();
        peer.send(late);
    }
    println!("{:?} per late frame", started.elapsed() / (2 * FLOOD));
    assert_alive(&peer);
    assert_eq!(peer.conn.session_count(), 0);
    assert_eq!(peer.conn.stats().late_frames, 2 * u64::from(FLOOD));
    assert!(
        peer.events.is_empty(),
        "late frames reached the application"
    );
    assert!(
        peer.received.is_empty(),
        "late frames were answered: {:?}",
        peer.received[0]
    );
    assert_baseline(&mut peer);
}

// ---- row 17: session flood -----------------------------------------------------------

/// Row 17 (session flood): MAX_SESSIONS sessions that never send, then one more. The extra
/// OPEN is refused with 4003 and reserves nothing (only a tombstone remains); the others are
/// unaffected; no state is left once they end.
#[test]
fn the_open_past_max_sessions_is_refused_and_reserves_nothing() {
    let mut peer = RawPeer::server(quiet(|c| c.limits.max_sessions = 8));
    for i in 0..8 {
        peer.open_accepted(2 * i + 1, Grant::full());
    }
    let reserved = peer.conn.recv_reserved();
    let tombstones = peer.conn.tombstone_count();
    peer.send([frames::open(17, "x")]);
    assert_eq!(
        peer.take_reset(SessionId(17)).unwrap().code,
        CloseCode::TOO_MANY_SESSIONS
    );
    assert!(peer
        .events
        .iter()
        .all(|e| !matches!(e, Event::Incoming { .. })));
    assert_eq!(peer.conn.recv_reserved(), reserved);
    assert_eq!(peer.conn.session_count(), 8);
    assert_eq!(peer.conn.tombstone_count(), tombstones + 1);
    // The eight still work.
    peer.send(
        (0..8)
            .map(|i| frames::data(2 * i + 1, b"ok", true))
            .collect::<Vec<_>>(),
    );
    for i in 0..8 {
        assert_eq!(
            peer.conn.recv(peer.now, SessionId(2 * i + 1)).as_deref(),
            Some(&b"ok"[..])
        );
    }
    for i in 0..8 {
        peer.send([frames::reset(2 * i + 1, CloseCode::CANCELLED)]);
    }
    assert_baseline(&mut peer);
}

// ---- row 20: message-rate flood ----------------------------------------------------------

/// The token bucket of spec/sessions.md#rates in exact integer arithmetic (millionths of
/// a token): what the receiver must accept.
struct Model {
    rate: u64,
    cap: u64,
    tokens: u64,
    last: u64,
}

impl Model {
    fn admits(&mut self, at_us: u64) -> bool {
        let added = (at_us - self.last) * self.rate;
        self.tokens = (self.tokens + added).min(self.cap);
        self.last = at_us;
        if self.tokens >= 1_000_000 {
            self.tokens -= 1_000_000;
            true
        } else {
            false
        }
    }
}

fn gap() -> impl Strategy<Value = u64> {
    // Mostly back-to-back and sub-token gaps; sometimes exactly one token's worth, a
    // burst boundary, or a clock jump far past a full refill.
    prop_oneof![
        6 => 0u64..2_000,
        2 => Just(100_000u64),
        1 => 99_999u64..100_002,
        1 => 1_000_000u64..60_000_000,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Row 20 (message-rate flood): a session granted 10 messages/s with a burst of 5 under
    /// the close-connection policy gets messages at up to 10× the rate, with bursts at the
    /// boundaries and clock jumps. Accepted messages match the bucket exactly (so never
    /// more than burst + rate·t), the connection closes with 1008 on the very message that
    /// finds the bucket empty, and a bystander session on the same connection is untouched
    /// until then.
    #[test]
    fn a_session_rate_admits_exactly_the_bucket(gaps in proptest::collection::vec(gap(), 1..400)) {
        let mut peer = RawPeer::server(quiet(|_| {}));
        let rate = RateLimits { messages_per_sec: 10, burst_messages: 5, ..RateLimits::default() };
        let id = peer.open_accepted(1, Grant::full().with_rate(rate, RatePolicy::CloseConnection));
        let bystander = peer.open_accepted(3, Grant::full());
        let start = peer.now.as_micros();
        let mut model = Model { rate: 10, cap: 5_000_000, tokens: 5_000_000, last: start };
        let mut accepted = 0u64;
        for gap in gaps {
            peer.now = Timestamp::from_micros(peer.now.as_micros() + gap);
            let admits = model.admits(peer.now.as_micros());
            peer.send([frames::data(1, b"m", true), frames::data(3, b"b", true)]);
            while peer.conn.recv(peer.now, id).is_some() {}
            if !admits {
                prop_assert_eq!(peer.conn_close_code(), Some(CloseCode::POLICY_VIOLATION));
                break;
            }
            accepted += 1;
            prop_assert!(peer.conn.is_open());
            let elapsed = peer.now.as_micros() - start;
            prop_assert!(accepted * 1_000_000 <= 5_000_000 + 10 * elapsed);
            let got = peer.conn.recv(peer.now, bystander);
            prop_assert_eq!(got.as_deref(), Some(&b"b"[..]));
            peer.collect();
        }
    }
}
