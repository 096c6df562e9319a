#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! This side's own control frames stay within the peer's CONTROL_BUDGET, an opener's DATA
//! stays within the rates its peer granted, and opens the peer never answers are given up
//! (spec/sessions.md#control-budget, #rates, #authorization).

use std::time::Duration;

use bytes::Bytes;
use mux_proto::frame::{Frame, Setting, Settings};
use mux_proto::testing::{Pair, RawPeer};
use mux_proto::{
    CloseCode, Config, Event, Grant, Initiator, LimitKind, OpenRequest, RateLimits, RatePolicy,
    SessionId, Side,
};

/// 100 sessions of request/response with a small budget on both sides: without pacing the
/// receivers' CREDITs alone exceed the budget and the connection closes with 1008.
#[test]
fn credits_are_paced_to_the_peers_budget_and_nobody_trips_1008() {
    let mut config = Config::default();
    config.limits.control_budget = 200;
    config.limits.initial_credit_messages = 4;
    // A fixed 4-message window: each read returns credit, so CREDITs are many.
    config.limits.max_window_growth = 1;
    config.limits.opens_per_sec = 1000;
    config.limits.opens_burst = 1000;
    config.limits.max_pending_opens = 200;
    config.timeouts.keepalive_interval = None;
    let mut pair = Pair::connected_with(config.clone(), config);
    let ids: Vec<_> = (0..100)
        .map(|_| pair.open_accepted("chat", Grant::full()))
        .collect();
    const PER_SESSION: usize = 40;
    let mut sent = vec![0usize; ids.len()];
    let mut received = vec![0usize; ids.len()];
    let mut rounds = 0;
    while received.iter().any(|r| *r < PER_SESSION) {
        rounds += 1;
        assert!(rounds < 10_000, "no progress: {received:?}");
        for (i, id) in ids.iter().enumerate() {
            while sent[i] < PER_SESSION
                && pair
                    .client
                    .conn
                    .send(pair.now, *id, Bytes::from_static(b"x"))
                    .is_ok()
            {
                sent[i] += 1;
            }
        }
        pair.drive();
        for (i, id) in ids.iter().enumerate() {
            received[i] += pair.server.recv_all(pair.now, *id).len();
        }
        // Virtual time passes so the pacer (and the peer's budget) refill.
        pair.advance(Duration::from_millis(10));
    }
    for endpoint in [&pair.client, &pair.server] {
        assert!(endpoint.conn.is_open(), "{:?}", endpoint.conn.close_code());
        assert_eq!(endpoint.conn.stats().closes(CloseCode::POLICY_VIOLATION), 0);
    }
    // 4,000 messages with a 4-message window need ~1,000 CREDITs: at 200/s that takes time.
    let elapsed = pair.now.as_micros() / 1000;
    assert!(elapsed >= 3_000, "{elapsed} ms: credits were not paced");
}

/// A burst of CREDITs past the pacer waits aside: DATA and other control frames still flow.
#[test]
fn paced_credits_do_not_hold_back_data() {
    let mut config = Config::default();
    config.timeouts.keepalive_interval = None;
    let settings = Settings::default()
        .with(Setting::ControlBudget, 2)
        .with(Setting::InitialCreditMessages, 64);
    let mut peer = RawPeer::with_settings(Side::Server, config, settings);
    // The raw client opens three sessions; the server accepts and sends on each.
    peer.send([
        mux_proto::testing::frames::open(1, "a"),
        mux_proto::testing::frames::open(3, "b"),
        mux_proto::testing::frames::open(5, "c"),
    ]);
    let incoming = peer.accept_all_incoming(Grant::full());
    assert_eq!(incoming.len(), 3);
    // The ACCEPTs are paced too: one per half second at 2/s with a burst of one.
    let mut accepts = 0;
    for _ in 0..4 {
        accepts += peer
            .take_frames()
            .iter()
            .filter(|f| matches!(f, Frame::Accept(_)))
            .count();
        if accepts == 3 {
            break;
        }
        peer.advance(Duration::from_millis(500));
    }
    assert_eq!(accepts, 3);
    // Each session receives and reads enough to owe a CREDIT; the peer allows 2 frames/s.
    for id in [1u32, 3, 5] {
        let frames: Vec<_> = (0..16)
            .map(|_| mux_proto::testing::frames::data(id, b"m", true))
            .collect();
        peer.send(frames);
    }
    for id in &incoming {
        while peer.conn.recv(peer.now, *id).is_some() {}
    }
    peer.conn
        .send(peer.now, incoming[2], Bytes::from_static(b"reply"))
        .unwrap();
    peer.collect();
    let frames = peer.take_frames();
    let credits = frames
        .iter()
        .filter(|f| matches!(f, Frame::Credit(_)))
        .count();
    let data = frames
        .iter()
        .filter(|f| matches!(f, Frame::Data(_)))
        .count();
    assert!(
        credits <= 1,
        "{credits} CREDITs in the same instant against a budget of 2/s"
    );
    assert_eq!(
        data, 1,
        "DATA must not wait behind paced CREDITs: {frames:?}"
    );
    // At 2/s with a burst of one (half the peer's budget), the CREDITs leave one per half
    // second.
    let mut more = 0;
    for _ in 0..6 {
        peer.advance(Duration::from_millis(500));
        let now = peer
            .take_frames()
            .iter()
            .filter(|f| matches!(f, Frame::Credit(_)))
            .count();
        assert!(
            now <= 1,
            "{now} CREDITs in one instant against a burst of one"
        );
        more += now;
    }
    assert_eq!(
        credits + more,
        3,
        "one CREDIT per session once the debt is repaid"
    );
    assert!(peer.conn.is_open());
}

#[test]
fn an_open_the_peer_never_answers_is_reset_with_4006() {
    let mut config = Config::default();
    config.timeouts.keepalive_interval = None;
    config.timeouts.open_timeout = Duration::from_secs(3);
    let mut peer = RawPeer::new(Side::Client, config);
    let id = peer
        .conn
        .open(peer.now, "silent", Bytes::new(), OpenRequest::default())
        .unwrap();
    peer.collect();
    assert!(matches!(peer.take_frames().as_slice(), [Frame::Open(_)]));
    peer.advance(Duration::from_millis(2999));
    assert!(peer.take_reset(id).is_none());
    peer.advance(Duration::from_millis(1));
    assert_eq!(peer.take_reset(id).unwrap().code, CloseCode::TIMEOUT);
    assert!(peer.events.iter().any(|e| matches!(
        e,
        Event::SessionClosed { id: i, code: CloseCode::TIMEOUT, initiator: Initiator::Local, .. } if *i == id
    )));
    assert_eq!(peer.conn.session_count(), 0);
    assert_eq!(peer.conn.recv_reserved(), 0);
    assert_eq!(peer.conn.open_answer_deadlines().count(), 0);
}

// ---- DATA within the granted rates -------------------------------------------------------

fn rate(
    messages_per_sec: u32,
    burst_messages: u32,
    bytes_per_sec: u32,
    burst_bytes: u32,
) -> RateLimits {
    RateLimits {
        messages_per_sec,
        bytes_per_sec,
        burst_messages,
        burst_bytes,
    }
}

fn quiet_pair() -> Pair {
    let mut config = Config::default();
    config.timeouts.keepalive_interval = None;
    config.limits.max_message_size = 256 * 1024;
    config.limits.initial_credit_bytes = 256 * 1024;
    Pair::connected_with(config.clone(), config)
}

/// Reads what arrived on `id` in 1 ms steps until `expected` messages have or `limit`
/// passes, and returns each message with the milliseconds since the start.
fn read_timed(
    pair: &mut Pair,
    id: SessionId,
    expected: usize,
    limit: Duration,
) -> Vec<(u64, Bytes)> {
    let start = pair.now;
    let mut got = Vec::new();
    while got.len() < expected && pair.now.saturating_duration_since(start) < limit {
        pair.advance(Duration::from_millis(1));
        let elapsed = pair.now.saturating_duration_since(start).as_millis() as u64;
        got.extend(
            pair.server
                .recv_all(pair.now, id)
                .into_iter()
                .map(|m| (elapsed, m)),
        );
    }
    got
}

/// Neither the session nor the connection was ended or limited for its rate.
fn assert_rate_never_tripped(pair: &mut Pair, id: SessionId) {
    assert!(pair.server.take_closed(id).is_none(), "session closed");
    assert!(pair.client.take_closed(id).is_none(), "session closed");
    assert!(pair.server.conn.is_open() && pair.client.conn.is_open());
    assert!(!pair.server.has_event(|e| matches!(
        e,
        Event::LimitHit {
            limit: LimitKind::SessionRate,
            ..
        }
    )));
    assert_eq!(pair.server.conn.stats().closes(CloseCode::RATE_LIMITED), 0);
}

/// A burst queued at once goes out at the granted message rate: the acceptor, which resets
/// the session (4002) at the first message over its rate, never has to.
#[test]
fn an_opener_sends_no_faster_than_the_granted_message_rate() {
    let mut pair = quiet_pair();
    let id = pair.open_accepted(
        "feed",
        Grant::full().with_rate(rate(10, 3, 0, 0), RatePolicy::CloseSession),
    );
    for i in 0..13u8 {
        pair.client
            .conn
            .send(pair.now, id, Bytes::from(vec![i; 10]))
            .unwrap();
    }
    let got = read_timed(&mut pair, id, 13, Duration::from_secs(3));
    assert_rate_never_tripped(&mut pair, id);
    let order: Vec<u8> = got.iter().map(|(_, m)| m[0]).collect();
    assert_eq!(order, (0..13).collect::<Vec<_>>());
    // The burst of 3 at once, then one per 100 ms as granted, stretched by the mirror's
    // 1/32 margin: message k no earlier than the grant allows, (k - 2) × 100 ms, and no later
    // than (k - 2) × 100 × 32/31 ms plus a step.
    for (k, (at, _)) in got.iter().enumerate() {
        let paced = (k as u64).saturating_sub(2);
        let granted = paced * 100;
        let mirrored = (paced * 100 * 32).div_ceil(31);
        assert!(
            *at >= granted.max(1) && *at <= mirrored + 2,
            "message {k} at {at} ms: granted {granted} ms, mirrored {mirrored} ms"
        );
    }
}

/// A message larger than the byte burst goes out in fragments the bucket holds (never under
/// the 1,024-byte minimum fragment), at the granted byte rate, and arrives whole.
#[test]
fn an_opener_fragments_a_large_message_within_the_granted_byte_rate() {
    let mut pair = quiet_pair();
    let id = pair.open_accepted(
        "upload",
        Grant::full().with_rate(rate(0, 0, 8192, 4096), RatePolicy::CloseSession),
    );
    let message: Bytes = (0..20_480u32).map(|i| i as u8).collect::<Vec<u8>>().into();
    pair.client
        .conn
        .send(pair.now, id, message.clone())
        .unwrap();
    let got = read_timed(&mut pair, id, 1, Duration::from_secs(5));
    assert_rate_never_tripped(&mut pair, id);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, message);
    // The grant allows it no sooner than 4,096 bytes of burst then 16,384 at 8,192 B/s:
    // 2.0 s. The mirror holds a quarter of the burst back and runs 1/32 slow: 3,072 bytes,
    // then 17,408 at 7,936 B/s, 2.194 s, plus at most one minimum fragment's wait (129 ms).
    let at = got[0].0;
    assert!((2000..=2330).contains(&at), "delivered at {at} ms");
}

/// Waiting for its rate takes a session off the scheduler, not the connection: an unpaced
/// session's messages go out at once while the paced one trickles.
#[test]
fn a_paced_session_does_not_hold_back_the_others() {
    let mut pair = quiet_pair();
    let slow = pair.open_accepted(
        "slow",
        Grant::full().with_rate(rate(1, 1, 0, 0), RatePolicy::CloseSession),
    );
    let fast = pair.open_accepted("fast", Grant::full());
    for _ in 0..3 {
        pair.client
            .conn
            .send(pair.now, slow, Bytes::from_static(b"s"))
            .unwrap();
    }
    for _ in 0..40 {
        pair.client
            .conn
            .send(pair.now, fast, Bytes::from_static(b"f"))
            .unwrap();
    }
    pair.drive();
    assert_eq!(pair.server.recv_all(pair.now, fast).len(), 40);
    assert_eq!(pair.server.recv_all(pair.now, slow).len(), 1);
    // The pacer's deadline is what the driver sleeps until: one token at 1/s, on the
    // mirror's clock that runs 1/32 slow.
    let wake = pair.client.conn.poll_timeout().expect("a pacing deadline");
    assert_eq!(
        wake.saturating_duration_since(pair.now).as_micros(),
        (Duration::from_secs(1) * 32 / 31 + Duration::from_micros(1)).as_micros()
    );
    pair.advance(Duration::from_millis(1032));
    assert_eq!(pair.server.recv_all(pair.now, slow).len(), 0);
    pair.advance(Duration::from_millis(1));
    assert_eq!(pair.server.recv_all(pair.now, slow).len(), 1);
    assert_rate_never_tripped(&mut pair, slow);
}

/// A paced session that ends while it waits leaves nothing behind: its timer firing later
/// finds nothing to do, and new sessions are unaffected.
#[test]
fn a_paced_session_can_end_while_it_waits() {
    let mut pair = quiet_pair();
    let slow = pair.open_accepted(
        "slow",
        Grant::full().with_rate(rate(1, 1, 0, 0), RatePolicy::CloseSession),
    );
    for _ in 0..2 {
        pair.client
            .conn
            .send(pair.now, slow, Bytes::from_static(b"s"))
            .unwrap();
    }
    pair.drive();
    pair.client
        .conn
        .reset(pair.now, slow, CloseCode::NORMAL, "done")
        .unwrap();
    pair.advance(Duration::from_secs(2));
    assert!(pair.server.take_closed(slow).is_some());
    assert!(pair.client.conn.poll_timeout().is_none_or(|t| t > pair.now));
    let next = pair.open_accepted("next", Grant::full());
    pair.client
        .conn
        .send(pair.now, next, Bytes::from_static(b"n"))
        .unwrap();
    pair.drive();
    assert_eq!(pair.server.recv_all(pair.now, next).len(), 1);
}
