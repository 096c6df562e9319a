#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! This side's own control frames stay within the peer's CONTROL_BUDGET, and opens the peer
//! never answers are given up (spec/sessions.md#control-budget, #authorization).

use std::time::Duration;

use bytes::Bytes;
use mux_proto::frame::{Frame, Setting, Settings};
use mux_proto::testing::{Pair, RawPeer};
use mux_proto::{CloseCode, Config, Event, Grant, Initiator, OpenRequest, Side};

/// 100 sessions of request/response with a small budget on both sides: without pacing the
/// receivers' CREDITs alone exceed the budget and the connection closes with 1008.
#[test]
fn credits_are_paced_to_the_peers_budget_and_nobody_trips_1008() {
    let mut config = Config::default();
    config.limits.control_budget = 200;
    config.limits.initial_credit_messages = 4;
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
    let incoming: Vec<_> = peer
        .events
        .drain(..)
        .filter_map(|e| match e {
            Event::Incoming { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(incoming.len(), 3);
    for id in &incoming {
        peer.conn.accept(peer.now, *id, Grant::full()).unwrap();
    }
    peer.collect();
    peer.take_frames();
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
    // The three ACCEPTs could not wait and put the pacer two frames into debt. At 2/s with
    // a burst of one (half the peer's budget), the CREDITs then leave one per half second.
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
