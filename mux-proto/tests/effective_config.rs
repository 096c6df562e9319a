#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Threat catalogue row 32 (configuration plumbing): every knob of `Limits` and `Timeouts`,
//! set to a value that is *not* its default, trips at exactly that value — one under (or
//! one tick before) is fine, the value itself is the edge. A limit that exists but is not
//! wired up (hyper #3782 passed one knob into another, silently disabling it) fails here.
//! The effective configuration is also pinned as the SETTINGS frame it produces.
//!
//! The server-side knobs (`mux_tokio::ServerConfig`) are in mux-tokio/tests/effective_config.rs.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{assert_alive, config, ms, msg, resets};
use mux_proto::frame::{decode_message, Frame, RateLimits, Setting, Settings};
use mux_proto::testing::{frames, RawPeer};
use mux_proto::{
    CloseCode, Config, Connection, Event, Grant, OpenRequest, RatePolicy, SendError, SessionId,
    Side, Timestamp,
};

/// No timers of their own unless a test sets them.
fn quiet(f: impl FnOnce(&mut Config)) -> Config {
    config(|c| {
        c.timeouts.keepalive_interval = None;
        c.timeouts.session_idle = None;
        f(c);
    })
}

fn server(f: impl FnOnce(&mut Config)) -> RawPeer {
    RawPeer::server(quiet(f))
}

fn closed_with(peer: &RawPeer) -> Option<CloseCode> {
    peer.conn_close_code()
}

fn reset_code(peer: &mut RawPeer, id: u32) -> Option<CloseCode> {
    peer.take_reset(SessionId(id)).map(|r| r.code)
}

fn at(peer: &mut RawPeer, t: Duration) {
    let target = Timestamp::from_millis(1) + t;
    peer.now = target;
    peer.conn.handle_timeout(target);
    peer.collect();
}

// ---- the SETTINGS snapshot -------------------------------------------------------------

/// The effective configuration, as the peer sees it: every advertised limit, non-default,
/// is in the SETTINGS frame the connection sends first, with IDLE_TIMEOUT_MS = keepalive
/// interval + timeout.
#[test]
fn settings_carry_every_advertised_limit() {
    let c = config(|c| {
        c.limits.max_frame_size = 2000;
        c.limits.max_sessions = 7;
        c.limits.initial_credit_messages = 5;
        c.limits.initial_credit_bytes = 3000;
        c.limits.max_message_size = 2500;
        c.limits.control_budget = 37;
        c.limits.max_open_metadata = 100;
        c.timeouts.keepalive_interval = Some(ms(700));
        c.timeouts.keepalive_timeout = ms(300);
    });
    let expected = Settings::default()
        .with(Setting::MaxFrameSize, 2000)
        .with(Setting::MaxSessions, 7)
        .with(Setting::InitialCreditMessages, 5)
        .with(Setting::InitialCreditBytes, 3000)
        .with(Setting::MaxMessageSize, 2500)
        .with(Setting::ControlBudget, 37)
        .with(Setting::MaxOpenMetadata, 100)
        .with(Setting::IdleTimeoutMs, 1000);
    assert_eq!(c.settings(), expected);
    let mut conn = Connection::new(Side::Server, c, Timestamp::from_millis(1));
    let mut buf = BytesMut::new();
    assert!(conn.poll_transmit(Timestamp::from_millis(1), &mut buf));
    assert_eq!(
        decode_message(buf.freeze()).unwrap(),
        vec![Frame::Settings(expected)]
    );
}

// ---- Limits ---------------------------------------------------------------------------

#[test]
fn max_frame_size() {
    let mut peer = server(|c| c.limits.max_frame_size = 2000);
    peer.open_accepted(1, Grant::full());
    peer.send([frames::data(1, &[0; 2000], true)]);
    assert_alive(&peer);
    peer.send([frames::data(1, &[0; 2001], true)]);
    assert_eq!(closed_with(&peer), Some(CloseCode::MESSAGE_TOO_BIG));
}

#[test]
fn max_message_size() {
    let mut peer = server(|c| c.limits.max_message_size = 3000);
    let id = peer.open_accepted(1, Grant::full());
    peer.send([
        frames::data(1, &[0; 1024], false),
        frames::data(1, &[0; 1024], false),
        frames::data(1, &[0; 952], true),
    ]);
    assert_eq!(peer.conn.recv(peer.now, id).map(|m| m.len()), Some(3000));
    peer.send([
        frames::data(1, &[0; 1024], false),
        frames::data(1, &[0; 1024], false),
        frames::data(1, &[0; 953], true),
    ]);
    assert_eq!(reset_code(&mut peer, 1), Some(CloseCode::MESSAGE_TOO_BIG));
}

#[test]
fn max_sessions() {
    let mut peer = server(|c| c.limits.max_sessions = 7);
    for i in 0..7 {
        peer.open_accepted(2 * i + 1, Grant::full());
    }
    peer.send([frames::open(15, "x")]);
    assert_eq!(
        reset_code(&mut peer, 15),
        Some(CloseCode::TOO_MANY_SESSIONS)
    );
    assert_eq!(peer.conn.session_count(), 7);
}

#[test]
fn initial_credit_messages() {
    let mut peer = server(|c| c.limits.initial_credit_messages = 5);
    peer.open_accepted(1, Grant::full());
    peer.send(
        (0..5)
            .map(|_| frames::data(1, b"m", true))
            .collect::<Vec<_>>(),
    );
    assert!(resets(&peer).is_empty());
    peer.send([frames::data(1, b"m", true)]);
    assert_eq!(reset_code(&mut peer, 1), Some(CloseCode::FLOW_CONTROL));
}

#[test]
fn initial_credit_bytes() {
    let mut peer = server(|c| c.limits.initial_credit_bytes = 3000);
    peer.open_accepted(1, Grant::full());
    peer.send([
        frames::data(1, &[0; 2000], true),
        frames::data(1, &[0; 1000], true),
    ]);
    assert!(resets(&peer).is_empty());
    peer.send([frames::data(1, b"x", true)]);
    assert_eq!(reset_code(&mut peer, 1), Some(CloseCode::FLOW_CONTROL));
}

#[test]
fn control_budget() {
    let mut peer = server(|c| c.limits.control_budget = 37);
    peer.send((0..37).map(frames::ping).collect::<Vec<_>>());
    assert_alive(&peer);
    peer.send([frames::ping(37)]);
    assert_eq!(closed_with(&peer), Some(CloseCode::POLICY_VIOLATION));
}

#[test]
fn max_open_metadata() {
    let mut peer = server(|c| c.limits.max_open_metadata = 100);
    let kind = "k".repeat(40);
    let kind: &'static str = Box::leak(kind.into_boxed_str());
    let auth: &'static [u8] = Box::leak(vec![b'a'; 60].into_boxed_slice());
    peer.send([frames::open_with_auth(1, kind, auth)]);
    assert!(peer
        .take_event(|e| matches!(e, Event::Incoming { .. }))
        .is_some());
    let auth: &'static [u8] = Box::leak(vec![b'a'; 61].into_boxed_slice());
    peer.send([frames::open_with_auth(3, kind, auth)]);
    assert_eq!(reset_code(&mut peer, 3), Some(CloseCode::MESSAGE_TOO_BIG));
}

#[test]
fn opens_per_sec_and_opens_burst() {
    let mut peer = server(|c| {
        c.limits.opens_per_sec = 3;
        c.limits.opens_burst = 5;
    });
    let open_and_reset = |peer: &mut RawPeer, id: u32| {
        peer.send([
            frames::open(id, "x"),
            frames::reset(id, CloseCode::CANCELLED),
        ]);
        reset_code(peer, id)
    };
    for i in 0..5 {
        assert_eq!(
            open_and_reset(&mut peer, 2 * i + 1),
            None,
            "open {i} of the burst"
        );
    }
    assert_eq!(open_and_reset(&mut peer, 11), Some(CloseCode::RATE_LIMITED));
    // 3 a second: the next token is 333,334 µs away (in millionths of a token).
    at(&mut peer, Duration::from_micros(333_333));
    assert_eq!(open_and_reset(&mut peer, 13), Some(CloseCode::RATE_LIMITED));
    at(&mut peer, Duration::from_micros(333_334));
    assert_eq!(open_and_reset(&mut peer, 15), None);
    assert_eq!(open_and_reset(&mut peer, 17), Some(CloseCode::RATE_LIMITED));
}

#[test]
fn max_pending_opens() {
    let mut peer = server(|c| c.limits.max_pending_opens = 3);
    peer.send(
        (0..3)
            .map(|i| frames::open(2 * i + 1, "x"))
            .collect::<Vec<_>>(),
    );
    assert_eq!(peer.conn.pending_open_count(), 3);
    peer.send([frames::open(7, "x")]);
    assert_eq!(reset_code(&mut peer, 7), Some(CloseCode::TOO_MANY_SESSIONS));
}

#[test]
fn session_rate_with_the_close_session_policy() {
    let mut peer = server(|c| {
        c.limits.session_rate = RateLimits {
            messages_per_sec: 4,
            burst_messages: 2,
            ..RateLimits::default()
        };
        c.limits.rate_policy = RatePolicy::CloseSession;
    });
    peer.open_accepted(1, Grant::full());
    peer.send([frames::data(1, b"1", true), frames::data(1, b"2", true)]);
    assert!(resets(&peer).is_empty());
    peer.send([frames::data(1, b"3", true)]);
    assert_eq!(reset_code(&mut peer, 1), Some(CloseCode::RATE_LIMITED));
    assert_alive(&peer);
}

#[test]
fn session_byte_rate() {
    let mut peer = server(|c| {
        c.limits.session_rate = RateLimits {
            bytes_per_sec: 1000,
            burst_bytes: 1500,
            ..RateLimits::default()
        };
        c.limits.rate_policy = RatePolicy::CloseSession;
    });
    peer.open_accepted(1, Grant::full());
    peer.send([
        frames::data(1, &[0; 1000], true),
        frames::data(1, &[0; 500], true),
    ]);
    assert!(resets(&peer).is_empty());
    peer.send([frames::data(1, b"x", true)]);
    assert_eq!(reset_code(&mut peer, 1), Some(CloseCode::RATE_LIMITED));
}

#[test]
fn connection_rate_with_the_close_connection_policy() {
    let mut peer = server(|c| {
        c.limits.connection_rate = RateLimits {
            messages_per_sec: 10,
            burst_messages: 3,
            ..RateLimits::default()
        };
        c.limits.rate_policy = RatePolicy::CloseConnection;
    });
    peer.open_accepted(1, Grant::full());
    peer.open_accepted(3, Grant::full());
    peer.send([
        frames::data(1, b"1", true),
        frames::data(3, b"2", true),
        frames::data(1, b"3", true),
    ]);
    assert_alive(&peer);
    peer.send([frames::data(3, b"4", true)]);
    assert_eq!(closed_with(&peer), Some(CloseCode::POLICY_VIOLATION));
}

#[test]
fn max_recv_buffer() {
    // A window costs 65,536 + 64 × 64 = 69,632 bytes: room for exactly three.
    let mut peer = server(|c| c.limits.max_recv_buffer = 3 * 69_632);
    for i in 0..3 {
        peer.open_accepted(2 * i + 1, Grant::full());
    }
    peer.send([frames::open(7, "x")]);
    assert_eq!(reset_code(&mut peer, 7), Some(CloseCode::TOO_MANY_SESSIONS));
    assert_eq!(peer.conn.recv_reserved(), 3 * 69_632);
}

#[test]
fn max_send_buffer() {
    // 1,000-byte messages cost 1,064 with the overhead: nine fit in 10,000 bytes.
    let mut peer = server(|c| c.limits.max_send_buffer = 10_000);
    let id = peer.open_accepted(1, Grant::full());
    for _ in 0..9 {
        peer.conn.send(peer.now, id, msg(1000, 1)).unwrap();
    }
    assert_eq!(
        peer.conn.send(peer.now, id, msg(1000, 1)),
        Err(SendError::Blocked)
    );
    assert_eq!(peer.conn.stats().send_buffered, 9 * 1064);
}

#[test]
fn max_queued_messages() {
    let mut peer = server(|c| c.limits.max_queued_messages = 4);
    let id = peer.open_accepted(1, Grant::full());
    for _ in 0..4 {
        peer.conn.send(peer.now, id, msg(10, 1)).unwrap();
    }
    assert_eq!(
        peer.conn.send(peer.now, id, msg(10, 1)),
        Err(SendError::Blocked)
    );
}

#[test]
fn per_message_overhead() {
    let mut peer = server(|c| {
        c.limits.per_message_overhead = 1000;
        // The window's cost uses the overhead too: 65,536 + 64 × 1,000 for one session.
        c.limits.max_recv_buffer = 65_536 + 64 * 1000;
    });
    peer.open_accepted(1, Grant::full());
    assert_eq!(peer.conn.recv_reserved(), 65_536 + 64 * 1000);
    peer.send([frames::data(1, &[0; 10], true)]);
    assert_eq!(peer.conn.stats().recv_buffered, 1010);
    peer.send([frames::open(3, "x")]);
    assert_eq!(reset_code(&mut peer, 3), Some(CloseCode::TOO_MANY_SESSIONS));
}

#[test]
fn max_tombstones() {
    let mut peer = server(|c| c.limits.max_tombstones = 3);
    for i in 0..5 {
        peer.open_accepted(2 * i + 1, Grant::full());
        peer.send([frames::reset(2 * i + 1, CloseCode::CANCELLED)]);
        assert_eq!(peer.conn.tombstone_count(), (i as usize + 1).min(3));
    }
}

// ---- Timeouts -------------------------------------------------------------------------

#[test]
fn keepalive_interval_and_timeout() {
    let mut peer = RawPeer::server(config(|c| {
        c.timeouts.keepalive_interval = Some(ms(700));
        c.timeouts.keepalive_timeout = ms(300);
        c.timeouts.session_idle = None;
    }));
    let pings = |peer: &RawPeer| {
        peer.received
            .iter()
            .filter(|f| matches!(f, Frame::Ping(_)))
            .count()
    };
    // The last receipt was at t = 1 ms (the peer's SETTINGS).
    at(&mut peer, ms(699));
    assert_eq!(pings(&peer), 0);
    at(&mut peer, ms(700));
    assert_eq!(pings(&peer), 1);
    at(&mut peer, ms(999));
    assert_alive(&peer);
    at(&mut peer, ms(1000));
    assert_eq!(closed_with(&peer), Some(CloseCode::TIMEOUT));
}

#[test]
fn settings_timeout() {
    let c = config(|c| c.timeouts.settings_timeout = ms(2000));
    let start = Timestamp::from_millis(1);
    let mut conn = Connection::new(Side::Server, c, start);
    conn.handle_timeout(start + ms(1999));
    assert!(conn.close_code().is_none());
    conn.handle_timeout(start + ms(2000));
    assert_eq!(conn.close_code(), Some(CloseCode::TIMEOUT));
}

#[test]
fn authorization_deadline() {
    let mut peer = server(|c| c.timeouts.authorization = ms(1500));
    peer.send([frames::open(1, "x")]);
    at(&mut peer, ms(1499));
    assert_eq!(reset_code(&mut peer, 1), None);
    at(&mut peer, ms(1500));
    assert_eq!(reset_code(&mut peer, 1), Some(CloseCode::TIMEOUT));
}

#[test]
fn open_timeout() {
    let mut peer = RawPeer::new(Side::Client, quiet(|c| c.timeouts.open_timeout = ms(2500)));
    let id = peer
        .conn
        .open(peer.now, "x", Bytes::new(), OpenRequest::default())
        .unwrap();
    peer.collect();
    at(&mut peer, ms(2499));
    assert_eq!(reset_code(&mut peer, id.0), None);
    at(&mut peer, ms(2500));
    assert_eq!(reset_code(&mut peer, id.0), Some(CloseCode::TIMEOUT));
}

#[test]
fn session_idle() {
    // Swept every quarter of the timeout: reset between 1× and 1.25× after the last DATA.
    let mut peer = RawPeer::server(config(|c| {
        c.timeouts.keepalive_interval = None;
        c.timeouts.session_idle = Some(ms(2000));
    }));
    peer.open_accepted(1, Grant::full());
    peer.send([frames::data(1, b"x", true)]);
    at(&mut peer, ms(1999));
    assert_eq!(reset_code(&mut peer, 1), None);
    at(&mut peer, ms(2501));
    assert_eq!(reset_code(&mut peer, 1), Some(CloseCode::TIMEOUT));
}

#[test]
fn shutdown_grace() {
    let mut peer = server(|c| c.timeouts.shutdown_grace = ms(3000));
    peer.open_accepted(1, Grant::full());
    peer.conn.go_away(peer.now, CloseCode::GOING_AWAY, "");
    peer.collect();
    at(&mut peer, ms(2999));
    assert_alive(&peer);
    at(&mut peer, ms(3001));
    assert_eq!(closed_with(&peer), Some(CloseCode::GOING_AWAY));
}

#[test]
fn tombstone_ttl() {
    let mut peer = server(|c| c.timeouts.tombstone_ttl = ms(4000));
    peer.open_accepted(1, Grant::full());
    // Buried at t = 0 (the clock starts at 1 ms): kept until 3,999 ms, gone at 4,000.
    peer.send([frames::reset(1, CloseCode::CANCELLED)]);
    at(&mut peer, ms(3999));
    assert_eq!(peer.conn.tombstone_count(), 1);
    at(&mut peer, ms(4000));
    assert_eq!(peer.conn.tombstone_count(), 0);
}
