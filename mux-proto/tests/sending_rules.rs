#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Rules this side keeps when it sends (spec/sessions.md#sending): transmits never exceed
//! `L`, even at the end of a graceful shutdown; every control frame stays within the peer's
//! CONTROL_BUDGET; no CREDIT after the peer's FIN or CLOSE (issue 14, item 7).

use std::time::Duration;

use bytes::Bytes;
use mux_proto::frame::{Frame, Setting, Settings};
use mux_proto::testing::{frames, RawPeer};
use mux_proto::{CloseCode, Config, Grant, SessionId, Side};

fn roomy_config() -> Config {
    let mut config = Config::default();
    config.limits.max_sessions = 1000;
    config.limits.max_pending_opens = 1000;
    config.limits.opens_per_sec = 1_000_000;
    config.limits.opens_burst = 1_000_000;
    config.limits.control_budget = 1_000_000;
    config.limits.initial_credit_messages = 1;
    config.limits.initial_credit_bytes = 1024;
    config.timeouts.keepalive_interval = None;
    config
}

/// A graceful shutdown whose last sessions all end at once leaves 600 RESETs of 139 bytes
/// queued before the CONN_CLOSE: more than one transport message holds. Each transmit
/// stays within `L`, and every frame still goes out, CONN_CLOSE last.
#[test]
fn the_frames_kept_at_the_end_of_a_shutdown_are_split_across_transmits() {
    let settings = Settings::default().with(Setting::ControlBudget, 1_000_000);
    let mut peer = RawPeer::with_settings(Side::Server, roomy_config(), settings);
    let ids: Vec<SessionId> = (0..600u32)
        .map(|i| peer.open_accepted(2 * i + 1, Grant::full()))
        .collect();
    peer.conn
        .go_away(peer.now, CloseCode::GOING_AWAY, "maintenance");
    peer.collect();
    peer.take_frames();
    let reason = "x".repeat(123);
    for id in &ids {
        peer.conn
            .reset(peer.now, *id, CloseCode::CANCELLED, &reason)
            .unwrap();
    }
    let limit = peer.conn.max_transmit_size();
    let mut buf = bytes::BytesMut::new();
    let mut decoded = Vec::new();
    let mut transmits = 0;
    while peer.conn.poll_transmit(peer.now, &mut buf) {
        transmits += 1;
        assert!(transmits < 100, "poll_transmit never ran dry");
        assert!(
            buf.len() <= limit,
            "a transmit of {} > L = {limit}",
            buf.len()
        );
        let message = buf.split().freeze();
        decoded.extend(mux_proto::frame::decode_message(message).unwrap());
    }
    assert!(transmits >= 2, "600 RESETs cannot fit one message");
    let resets = decoded
        .iter()
        .filter(|f| matches!(f, Frame::Reset(_)))
        .count();
    assert_eq!(resets, 600);
    assert!(
        matches!(decoded.last(), Some(Frame::ConnClose(c)) if c.code == CloseCode::GOING_AWAY),
        "{:?}",
        decoded.last()
    );
    assert!(peer.conn.is_closed());
}

/// The peer allows 20 control frames a second. 30 sessions accepted in one instant: the
/// ACCEPTs are not all sent at once, but at the pacer's rate, and none is lost.
#[test]
fn every_control_frame_is_paced_to_the_peers_budget() {
    let settings = Settings::default().with(Setting::ControlBudget, 20);
    let mut peer = RawPeer::with_settings(Side::Server, roomy_config(), settings);
    let opens: Vec<Frame> = (0..30u32).map(|i| frames::open(2 * i + 1, "a")).collect();
    peer.send(opens);
    let incoming = peer.accept_all_incoming(Grant::full());
    assert_eq!(incoming.len(), 30);
    let count = |frames: &[Frame]| {
        frames
            .iter()
            .filter(|f| matches!(f, Frame::Accept(_)))
            .count()
    };
    let first = count(&peer.take_frames());
    assert!(
        first <= 10,
        "{first} ACCEPTs in one instant against a budget of 20/s (burst 10 used)"
    );
    // What the peer's own bucket (20/s, burst 20) sees: it never runs short.
    let mut per_tick = vec![first];
    for _ in 0..40 {
        peer.advance(Duration::from_millis(100));
        per_tick.push(count(&peer.take_frames()));
    }
    assert_eq!(per_tick.iter().sum::<usize>(), 30, "{per_tick:?}");
    let mut tokens = 20i64;
    for (tick, sent) in per_tick.iter().enumerate() {
        if tick > 0 {
            tokens = (tokens + 2).min(20);
        }
        tokens -= i64::try_from(*sent).unwrap();
        assert!(
            tokens >= 0,
            "the peer's budget ran short at tick {tick}: {per_tick:?}"
        );
    }
    assert!(per_tick[1..].iter().all(|n| *n <= 2), "{per_tick:?}");
    assert!(peer.conn.is_open());
}

/// The peer sends three messages and then CLOSE (or FIN) before the application reads
/// them: reading them returns credit to nobody, so no CREDIT is sent.
#[test]
fn no_credit_is_sent_after_the_peers_close_or_fin() {
    for closing in [
        frames::close(1, CloseCode::NORMAL),
        frames::data_fin(1, b"last"),
    ] {
        let mut config = Config::default();
        config.limits.initial_credit_messages = 4;
        config.timeouts.keepalive_interval = None;
        let mut peer = RawPeer::server(config);
        let id = peer.open_accepted(1, Grant::full());
        peer.send([
            frames::data(1, b"a", true),
            frames::data(1, b"b", true),
            frames::data(1, b"c", true),
        ]);
        // The first read announces credit (a quarter window); the CREDIT is queued.
        assert_eq!(peer.conn.recv(peer.now, id), Some(Bytes::from_static(b"a")));
        // The peer's CLOSE or FIN arrives before the CREDIT is written.
        peer.deliver([closing.clone()]);
        while peer.conn.recv(peer.now, id).is_some() {}
        peer.collect();
        peer.advance(Duration::from_secs(1));
        let credits: Vec<_> = peer
            .take_frames()
            .into_iter()
            .filter(|f| matches!(f, Frame::Credit(_)))
            .collect();
        assert!(credits.is_empty(), "after {closing:?}: {credits:?}");
    }
}
