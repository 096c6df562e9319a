#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Every limit, crossed by exactly one: at the limit all is well, one more trips it, with
//! the code and the scope (session or connection) the spec gives.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::{assert_alive, config, ms, msg, resets};
use mux_proto::frame::FrameType;
use mux_proto::frame::{Frame, Header, RateLimits, Setting, Settings, FLAG_END};
use mux_proto::testing::{frames, Pair, RawPeer};
use mux_proto::{
    CloseCode, Event, Grant, LimitKind, OpenError, RatePolicy, SendError, SessionError, SessionId,
    Side,
};

fn limit_hit(peer: &mut RawPeer, limit: LimitKind) -> bool {
    peer.take_event(|e| matches!(e, Event::LimitHit { limit: l, .. } if *l == limit))
        .is_some()
}

// ---- frame and message size -------------------------------------------------------------

#[test]
fn a_frame_over_max_frame_size_closes_the_connection_with_1009() {
    let server = config(|c| c.limits.max_frame_size = 2048);
    let mut peer = RawPeer::server(server);
    peer.open_accepted(1, Grant::full());
    peer.send([frames::data(1, &[1u8; 2048], true)]);
    assert_alive(&peer);
    peer.send([frames::data(1, &[1u8; 2049], true)]);
    assert_eq!(peer.conn_close_code(), Some(CloseCode::MESSAGE_TOO_BIG));
    assert!(limit_hit(&mut peer, LimitKind::FrameSize));
}

#[test]
fn the_frame_size_limit_is_checked_from_the_header_alone() {
    // A header announcing an oversized DATA frame is refused as such, before its payload
    // (which never comes) is waited for or looked at.
    let server = config(|c| c.limits.max_frame_size = 2048);
    let mut peer = RawPeer::server(server);
    peer.open_accepted(1, Grant::full());
    let mut wire = BytesMut::new();
    Header {
        frame_type: FrameType::Data,
        flags: FLAG_END,
        session_id: SessionId(1),
        len: 1_000_000,
    }
    .encode(&mut wire);
    wire.put_slice(&[0u8; 100]);
    peer.send_bytes(wire.freeze());
    assert_eq!(peer.conn_close_code(), Some(CloseCode::MESSAGE_TOO_BIG));
}

#[test]
fn a_message_over_the_session_maximum_resets_that_session_with_1009() {
    let server = config(|c| c.limits.max_message_size = 1000);
    let mut peer = RawPeer::server(server);
    let big = peer.open_accepted(1, Grant::full());
    let other = peer.open_accepted(3, Grant::full());
    peer.send([frames::data(3, b"keep me", true)]);
    let held = peer.conn.stats().recv_buffered;
    assert_eq!(held, 7 + 64);

    peer.send([frames::data(1, &[0u8; 1000], true)]);
    assert_alive(&peer);
    assert!(resets(&peer).is_empty());
    assert_eq!(peer.conn.recv(peer.now, big).map(|m| m.len()), Some(1000));

    peer.send([frames::data(1, &[0u8; 1001], true)]);
    assert_alive(&peer);
    assert_eq!(resets(&peer), vec![(big, 1009)]);
    assert!(limit_hit(&mut peer, LimitKind::MessageSize));
    // Refused from the header: not one byte of it was buffered.
    assert_eq!(peer.conn.stats().recv_buffered, held);
    assert_eq!(peer.conn.stats().bytes_received, 7 + 1000);
    assert_eq!(
        peer.conn.recv(peer.now, other),
        Some(Bytes::from_static(b"keep me"))
    );
}

#[test]
fn a_fragmented_message_over_the_maximum_is_refused_at_the_frame_that_crosses_it() {
    let server = config(|c| c.limits.max_message_size = 3000);
    let mut peer = RawPeer::server(server);
    let id = peer.open_accepted(1, Grant::full());
    // Exactly 3000 in three frames: fine.
    peer.send([
        frames::data(1, &[1u8; 1024], false),
        frames::data(1, &[1u8; 1024], false),
        frames::data(1, &[1u8; 952], true),
    ]);
    assert_eq!(peer.conn.recv(peer.now, id).map(|m| m.len()), Some(3000));
    // 3001: the third frame crosses the limit.
    peer.send([
        frames::data(1, &[1u8; 1024], false),
        frames::data(1, &[1u8; 1024], false),
    ]);
    assert_eq!(peer.conn.stats().recv_buffered, 2048 + 64);
    let received = peer.conn.stats().bytes_received;
    peer.send([frames::data(1, &[1u8; 953], true)]);
    assert_alive(&peer);
    assert_eq!(resets(&peer), vec![(id, 1009)]);
    assert_eq!(peer.conn.stats().bytes_received, received);
    assert_eq!(peer.conn.stats().recv_buffered, 0);
}

/// With the default limits the message maximum equals the byte window (64 KiB). A message
/// one byte over it breaks both limits at once; the size is checked first, so the answer is
/// the 1009 frames.md promises, not 4004 (issue 14; spec/sessions.md#data-checks D6, D7).
#[test]
fn a_message_one_byte_over_a_maximum_equal_to_the_window_is_1009_not_4004() {
    let mut peer = RawPeer::server(config(|_| {}));
    let id = peer.open_accepted(1, Grant::full());
    let mut fragments: Vec<Frame> = (0..4)
        .map(|_| frames::data(1, &[7u8; 16_384], false))
        .collect();
    fragments.push(frames::data(1, b"x", true));
    peer.send(fragments);
    assert_eq!(
        peer.take_reset(id).map(|r| r.code),
        Some(CloseCode::MESSAGE_TOO_BIG)
    );
    assert!(limit_hit(&mut peer, LimitKind::MessageSize));
    assert_alive(&peer);
}

#[test]
fn a_grant_overrides_the_message_maximum_for_its_session_only() {
    let server = config(|c| c.limits.max_message_size = 1000);
    let mut peer = RawPeer::server(server);
    let small = peer.open_accepted(1, Grant::full().with_max_message_size(500));
    let normal = peer.open_accepted(3, Grant::full());
    peer.send([frames::data(1, &[0u8; 500], true)]);
    peer.send([frames::data(3, &[0u8; 501], true)]);
    assert!(resets(&peer).is_empty());
    peer.send([frames::data(1, &[0u8; 501], true)]);
    assert_alive(&peer);
    assert_eq!(resets(&peer), vec![(small, 1009)]);
    assert_eq!(peer.conn.recv(peer.now, normal).map(|m| m.len()), Some(501));
}

#[test]
fn a_grant_cannot_raise_the_message_maximum_beyond_the_window() {
    let mut peer = RawPeer::server(Default::default());
    peer.send([frames::open(1, "x")]);
    peer.conn
        .accept(
            peer.now,
            SessionId(1),
            Grant::full().with_max_message_size(10_000_000),
        )
        .unwrap();
    peer.collect();
    match peer.received.pop_front() {
        Some(Frame::Accept(a)) => assert_eq!(a.max_message_size, 65_536),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_sender_refuses_messages_over_the_peers_maximum() {
    let server = config(|c| c.limits.max_message_size = 1000);
    let mut pair = Pair::connected_with(Default::default(), server);
    let id = pair.open_accepted("x", Grant::full().with_max_message_size(600));
    let now = pair.now;
    assert_eq!(pair.client.conn.send(now, id, msg(600, 0)), Ok(()));
    assert_eq!(
        pair.client.conn.send(now, id, msg(601, 0)),
        Err(SendError::TooLarge { len: 601, max: 600 })
    );
}

// ---- sessions and opens -----------------------------------------------------------------

#[test]
fn max_sessions_refuses_the_next_open_with_4003_and_the_connection_lives() {
    let server = config(|c| c.limits.max_sessions = 3);
    let mut peer = RawPeer::server(server);
    peer.open_accepted(1, Grant::full());
    peer.open_accepted(3, Grant::full());
    // Pending sessions count too.
    peer.send([frames::open(5, "x")]);
    assert!(peer.received.is_empty());
    peer.send([frames::open(7, "x")]);
    assert_alive(&peer);
    assert_eq!(resets(&peer), vec![(SessionId(7), 4003)]);
    assert!(limit_hit(&mut peer, LimitKind::Sessions));

    // One ends: there is room again.
    peer.received.clear();
    peer.send([frames::reset(1, CloseCode::CANCELLED)]);
    peer.send([frames::open(9, "x")]);
    assert!(resets(&peer).is_empty());
    assert_eq!(peer.conn.session_count(), 3);
}

/// A full pending-open cap is retryable, and says when: the earliest authorization
/// deadline frees a place at the latest (issue 14, item 4).
#[test]
fn a_full_pending_cap_refuses_with_4003_and_the_time_to_the_first_deadline() {
    let mut peer = RawPeer::server(config(|c| c.limits.max_pending_opens = 2));
    peer.send([frames::open(1, "a")]);
    peer.advance(ms(1000));
    peer.send([frames::open(3, "a"), frames::open(5, "a")]);
    let reset = peer
        .take_reset(SessionId(5))
        .expect("the third pending OPEN is refused");
    assert_eq!(reset.code, CloseCode::TOO_MANY_SESSIONS);
    // The authorization deadline is 5 s; session 1 has waited 1 s of it.
    assert_eq!(reset.retry_after_ms, 4000);
}

/// The acceptor's reply is bounded by the opener's own MAX_MESSAGE_SIZE: a larger one
/// fails locally with a typed error and nothing is sent, instead of reaching the opener as
/// a session error (issue 14, item 4).
#[test]
fn a_reply_over_the_openers_max_message_size_fails_locally() {
    let settings = Settings::default()
        .with(Setting::MaxMessageSize, 100)
        .with(Setting::ControlBudget, u32::MAX);
    let mut peer = RawPeer::with_settings(Side::Server, config(|_| {}), settings);
    let id = peer.open_accepted(1, Grant::full());
    assert_eq!(
        peer.conn.send(peer.now, id, Bytes::from(vec![0u8; 101])),
        Err(SendError::TooLarge { len: 101, max: 100 })
    );
    peer.collect();
    assert!(peer.take_data(id).is_empty());
    assert!(peer.take_reset(id).is_none());
    assert!(peer
        .conn
        .send(peer.now, id, Bytes::from(vec![0u8; 100]))
        .is_ok());
}

#[test]
fn the_opener_respects_the_peers_max_sessions() {
    let server = config(|c| c.limits.max_sessions = 2);
    let mut pair = Pair::connected_with(Default::default(), server);
    let now = pair.now;
    for _ in 0..2 {
        pair.client
            .conn
            .open(now, "x", Bytes::new(), Default::default())
            .unwrap();
    }
    assert_eq!(
        pair.client
            .conn
            .open(now, "x", Bytes::new(), Default::default()),
        Err(OpenError::TooManySessions { max: 2 })
    );
}

#[test]
fn the_open_rate_refuses_with_4002_and_a_retry_hint() {
    let server = config(|c| {
        c.limits.opens_per_sec = 10;
        c.limits.opens_burst = 5;
    });
    let mut peer = RawPeer::server(server);
    let opens: Vec<Frame> = (0..5u32).map(|i| frames::open(2 * i + 1, "x")).collect();
    peer.send(opens);
    assert!(peer.received.is_empty());
    assert_eq!(peer.conn.pending_open_count(), 5);

    peer.send([frames::open(11, "x")]);
    assert_alive(&peer);
    let reset = peer.take_reset(SessionId(11)).expect("RESET");
    assert_eq!(reset.code, CloseCode::RATE_LIMITED);
    // One open every 100 ms.
    assert_eq!(reset.retry_after_ms, 100);
    assert!(limit_hit(&mut peer, LimitKind::OpenRate));

    // Continuous refill: 99 ms is not enough, 100 ms is.
    peer.advance(ms(99));
    peer.send([frames::open(13, "x")]);
    let reset = peer.take_reset(SessionId(13)).expect("RESET");
    assert_eq!(reset.code, CloseCode::RATE_LIMITED);
    assert_eq!(reset.retry_after_ms, 1);
    peer.advance(ms(1));
    peer.send([frames::open(15, "x")]);
    assert!(peer.take_reset(SessionId(15)).is_none());
    assert_eq!(peer.conn.pending_open_count(), 6);
}

#[test]
fn open_metadata_over_the_limit_is_refused_with_1009() {
    let server = config(|c| c.limits.max_open_metadata = 16);
    let mut peer = RawPeer::server(server);
    // kind 8 + auth 8 = 16: fine.
    peer.send([frames::open_with_auth(1, "abcdefgh", b"12345678")]);
    assert!(peer.received.is_empty());
    assert_eq!(peer.conn.pending_open_count(), 1);
    // 17: refused, and the connection lives.
    peer.send([frames::open_with_auth(3, "abcdefgh", b"123456789")]);
    assert_alive(&peer);
    assert_eq!(resets(&peer), vec![(SessionId(3), 1009)]);
    assert!(limit_hit(&mut peer, LimitKind::OpenMetadata));
    assert!(!peer
        .events
        .iter()
        .any(|e| matches!(e, Event::Incoming { id, .. } if id.0 == 3)));
}

#[test]
fn the_opener_refuses_metadata_the_peer_would_refuse() {
    let server = config(|c| c.limits.max_open_metadata = 16);
    let mut pair = Pair::connected_with(Default::default(), server);
    let now = pair.now;
    assert!(pair
        .client
        .conn
        .open(
            now,
            "abcdefgh",
            Bytes::from_static(b"12345678"),
            Default::default()
        )
        .is_ok());
    assert_eq!(
        pair.client.conn.open(
            now,
            "abcdefgh",
            Bytes::from_static(b"123456789"),
            Default::default()
        ),
        Err(OpenError::MetadataTooLarge { len: 17, max: 16 })
    );
}

#[test]
fn an_open_always_fits_in_one_transport_message() {
    // The peer would accept 100,000 bytes of metadata, but a transport message holds
    // 65,536: an OPEN carries at most 65,536 - 25 bytes of kind and auth.
    let settings = Settings::default().with(Setting::MaxOpenMetadata, 100_000);
    let mut client = RawPeer::with_settings(Side::Client, Default::default(), settings);
    let now = client.now;
    assert_eq!(
        client
            .conn
            .open(now, "k", Bytes::from(vec![0u8; 65_511]), Default::default()),
        Err(OpenError::MetadataTooLarge {
            len: 65_512,
            max: 65_511
        })
    );
    let id = client
        .conn
        .open(now, "k", Bytes::from(vec![0u8; 65_510]), Default::default())
        .unwrap();
    let mut buf = BytesMut::new();
    assert!(client.conn.poll_transmit(now, &mut buf));
    assert_eq!(buf.len(), 65_536);
    let frames = mux_proto::frame::decode_message(buf.freeze()).unwrap();
    assert!(matches!(&frames[..], [Frame::Open(o)] if o.session_id == id));
}

// ---- the control budget -----------------------------------------------------------------

#[test]
fn a_ping_flood_exhausts_the_control_budget_at_exactly_the_budget() {
    let server = config(|c| c.limits.control_budget = 50);
    let mut peer = RawPeer::server(server);
    let pings: Vec<Frame> = (0..50).map(frames::ping).collect();
    peer.send(pings);
    assert_alive(&peer);
    assert_eq!(peer.conn.stats().control_frames_charged, 50);
    // One PONG for fifty PINGs: the last payload.
    assert_eq!(peer.received.len(), 1);
    assert_eq!(peer.received[0], Frame::Pong(49));
    peer.received.clear();

    peer.send([frames::ping(50)]);
    assert_eq!(peer.conn_close_code(), Some(CloseCode::POLICY_VIOLATION));
    assert_eq!(peer.conn.stats().control_frames_charged, 51);
    assert!(limit_hit(&mut peer, LimitKind::ControlBudget));
    // No PONG for the frame that broke the budget.
    assert!(!peer.received.iter().any(|f| matches!(f, Frame::Pong(_))));
}

#[test]
fn the_control_budget_refills_continuously() {
    let server = config(|c| c.limits.control_budget = 50);
    let mut peer = RawPeer::server(server);
    peer.send((0..50).map(frames::ping).collect::<Vec<_>>());
    // 50 per second: one token every 20 ms.
    peer.advance(ms(20));
    peer.send([frames::ping(1)]);
    assert_alive(&peer);
    peer.advance(ms(19));
    peer.send([frames::ping(2)]);
    assert_eq!(peer.conn_close_code(), Some(CloseCode::POLICY_VIOLATION));
}

#[test]
fn a_loop_of_forced_session_errors_exhausts_the_control_budget() {
    // MadeYouReset: the peer sends frames that are cheap for it (an OPEN, then DATA over
    // the message limit) and makes this side generate a RESET each time. Each generated
    // error is charged, so the loop ends at the budget.
    let server = config(|c| {
        c.limits.control_budget = 40;
        c.limits.max_message_size = 100;
        c.limits.opens_per_sec = 1_000_000;
        c.limits.opens_burst = 1_000_000;
    });
    let mut peer = RawPeer::server(server);
    let mut loops = 0u32;
    while peer.conn.is_open() {
        let id = 2 * loops + 1;
        peer.send([frames::open(id, "x"), frames::data(id, &[0u8; 101], true)]);
        loops += 1;
        assert!(loops < 100, "the budget never ran out");
    }
    // 20 loops cost 2 charges each (OPEN + our RESET); the 21st OPEN is the 41st charge.
    assert_eq!(loops, 21);
    assert_eq!(peer.conn.stats().control_frames_charged, 41);
    assert_eq!(peer.conn_close_code(), Some(CloseCode::POLICY_VIOLATION));
    let n_resets = peer
        .received
        .iter()
        .filter(|f| matches!(f, Frame::Reset(r) if r.code == CloseCode::MESSAGE_TOO_BIG))
        .count();
    assert_eq!(n_resets, 20);
}

#[test]
fn forced_resets_on_existing_sessions_are_charged_too() {
    // Only DATA (which is never charged itself) triggers the errors here.
    let server = config(|c| c.limits.control_budget = 30);
    let mut peer = RawPeer::server(server);
    for i in 0..20u32 {
        peer.open_accepted(2 * i + 1, Grant::receive_only());
    }
    assert_eq!(peer.conn.stats().control_frames_charged, 20);
    let violations: Vec<Frame> = (0..20u32)
        .map(|i| frames::data(2 * i + 1, b"x", true))
        .collect();
    peer.send(violations);
    // Ten errors fit in the budget; the eleventh closes the connection.
    assert_eq!(peer.conn.stats().control_frames_charged, 31);
    assert_eq!(peer.conn_close_code(), Some(CloseCode::POLICY_VIOLATION));
}

// ---- rate limits ------------------------------------------------------------------------

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

#[test]
fn a_session_message_rate_under_close_session_resets_with_4002_and_a_hint() {
    let mut peer = RawPeer::server(Default::default());
    let limited = peer.open_accepted(
        1,
        Grant::full().with_rate(rate(10, 5, 0, 0), RatePolicy::CloseSession),
    );
    let free = peer.open_accepted(3, Grant::full());
    let burst: Vec<Frame> = (0..5).map(|_| frames::data(1, b"m", true)).collect();
    peer.send(burst);
    assert!(resets(&peer).is_empty());
    peer.send([frames::data(1, b"m", true), frames::data(3, b"other", true)]);
    assert_alive(&peer);
    let reset = peer.take_reset(limited).expect("RESET");
    assert_eq!(reset.code, CloseCode::RATE_LIMITED);
    assert_eq!(reset.retry_after_ms, 100);
    assert!(limit_hit(&mut peer, LimitKind::SessionRate));
    assert_eq!(
        peer.conn.recv(peer.now, free),
        Some(Bytes::from_static(b"other"))
    );
}

#[test]
fn a_session_message_rate_refills_continuously() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(
        1,
        Grant::full().with_rate(rate(10, 5, 0, 0), RatePolicy::CloseSession),
    );
    peer.send(
        (0..5)
            .map(|_| frames::data(1, b"m", true))
            .collect::<Vec<_>>(),
    );
    peer.advance(ms(100));
    peer.send([frames::data(1, b"m", true)]);
    assert!(resets(&peer).is_empty());
    peer.advance(ms(50));
    peer.send([frames::data(1, b"m", true)]);
    let reset = peer.take_reset(id).expect("half a token is not enough");
    assert_eq!(reset.retry_after_ms, 50);
}

#[test]
fn a_session_byte_rate_under_close_session_resets_with_4002_and_a_hint() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(
        1,
        Grant::full().with_rate(rate(0, 0, 1000, 2000), RatePolicy::CloseSession),
    );
    peer.send([
        frames::data(1, &[0u8; 1000], true),
        frames::data(1, &[0u8; 1000], true),
    ]);
    assert!(resets(&peer).is_empty());
    peer.send([frames::data(1, &[0u8; 1], true)]);
    let reset = peer.take_reset(id).expect("RESET");
    assert_eq!(reset.code, CloseCode::RATE_LIMITED);
    assert_eq!(reset.retry_after_ms, 1);
    assert_alive(&peer);
}

#[test]
fn a_session_rate_under_close_connection_closes_with_1008() {
    let mut peer = RawPeer::server(Default::default());
    peer.open_accepted(
        1,
        Grant::full().with_rate(rate(10, 5, 0, 0), RatePolicy::CloseConnection),
    );
    peer.send(
        (0..5)
            .map(|_| frames::data(1, b"m", true))
            .collect::<Vec<_>>(),
    );
    assert_alive(&peer);
    peer.send([frames::data(1, b"m", true)]);
    assert_eq!(peer.conn_close_code(), Some(CloseCode::POLICY_VIOLATION));
}

#[test]
fn the_configured_session_rate_applies_to_every_session() {
    let server = config(|c| {
        c.limits.session_rate = rate(10, 2, 0, 0);
        c.limits.rate_policy = RatePolicy::CloseSession;
    });
    let mut peer = RawPeer::server(server);
    let a = peer.open_accepted(1, Grant::full());
    let b = peer.open_accepted(3, Grant::full());
    // Each session has its own bucket of two.
    peer.send([
        frames::data(1, b"m", true),
        frames::data(1, b"m", true),
        frames::data(3, b"m", true),
        frames::data(3, b"m", true),
    ]);
    assert!(resets(&peer).is_empty());
    peer.send([frames::data(3, b"m", true)]);
    assert_eq!(resets(&peer), vec![(b, 4002)]);
    assert!(peer.conn.session_phase(a).is_some());
}

#[test]
fn the_connection_rate_under_close_session_resets_the_session_that_crossed_it() {
    let server = config(|c| {
        c.limits.connection_rate = rate(10, 4, 0, 0);
        c.limits.rate_policy = RatePolicy::CloseSession;
    });
    let mut peer = RawPeer::server(server);
    let a = peer.open_accepted(1, Grant::full());
    let b = peer.open_accepted(3, Grant::full());
    peer.send([
        frames::data(1, b"m", true),
        frames::data(3, b"m", true),
        frames::data(1, b"m", true),
        frames::data(3, b"m", true),
    ]);
    assert!(resets(&peer).is_empty());
    peer.send([frames::data(3, b"m", true)]);
    assert_alive(&peer);
    let reset = peer.take_reset(b).expect("RESET");
    assert_eq!(reset.code, CloseCode::RATE_LIMITED);
    assert_eq!(
        reset.retry_after_ms, 100,
        "the hint comes from the connection's bucket"
    );
    assert!(limit_hit(&mut peer, LimitKind::ConnectionRate));
    assert!(peer.conn.session_phase(a).is_some());
}

#[test]
fn the_connection_byte_rate_under_close_connection_closes_with_1008() {
    let server = config(|c| {
        c.limits.connection_rate = rate(0, 0, 1000, 1500);
        c.limits.rate_policy = RatePolicy::CloseConnection;
    });
    let mut peer = RawPeer::server(server);
    peer.open_accepted(1, Grant::full());
    peer.open_accepted(3, Grant::full());
    peer.send([
        frames::data(1, &[0u8; 1000], true),
        frames::data(3, &[0u8; 500], true),
    ]);
    assert_alive(&peer);
    peer.send([frames::data(1, &[0u8; 1], true)]);
    assert_eq!(peer.conn_close_code(), Some(CloseCode::POLICY_VIOLATION));
}

#[test]
fn a_rejected_frame_does_not_consume_tokens() {
    // A frame refused by the session rate must not also eat the connection's tokens.
    let server = config(|c| {
        c.limits.connection_rate = rate(1, 3, 0, 0);
        c.limits.rate_policy = RatePolicy::CloseSession;
    });
    let mut peer = RawPeer::server(server);
    let a = peer.open_accepted(
        1,
        Grant::full().with_rate(rate(1, 1, 0, 0), RatePolicy::CloseSession),
    );
    let b = peer.open_accepted(3, Grant::full());
    peer.send([frames::data(1, b"m", true)]);
    peer.send([frames::data(1, b"m", true)]);
    assert_eq!(resets(&peer), vec![(a, 4002)]);
    // One of the connection's three tokens was used; two remain for session 3.
    peer.send([frames::data(3, b"m", true), frames::data(3, b"m", true)]);
    assert_eq!(resets(&peer), vec![(a, 4002)]);
    assert!(peer.conn.session_phase(b).is_some());
}

/// A throttled session: the peer's credit is withheld while the bucket is empty.
#[test]
fn throttle_withholds_credit_until_the_bucket_refills() {
    let server = config(|c| c.limits.initial_credit_messages = 4);
    let mut peer = RawPeer::server(server);
    let id = peer.open_accepted(
        1,
        Grant::full().with_rate(rate(2, 4, 0, 0), RatePolicy::Throttle),
    );
    peer.send(
        (0..4)
            .map(|_| frames::data(1, b"m", true))
            .collect::<Vec<_>>(),
    );
    assert_eq!(peer.conn.session_stats(id).unwrap().recv_credit.0, 0);
    // The application reads everything at once, but the bucket is empty: no CREDIT.
    assert_eq!(
        peer.conn.recv(peer.now, id).unwrap(),
        Bytes::from_static(b"m")
    );
    while peer.conn.recv(peer.now, id).is_some() {}
    peer.collect();
    assert_eq!(peer.take_credit(id), (0, 0));
    peer.advance(ms(499));
    assert_eq!(peer.take_credit(id), (0, 0));
    assert_eq!(peer.conn.session_stats(id).unwrap().recv_credit.0, 0);
    // 2/s: one token after 500 ms, and the credit flows.
    peer.advance(ms(1));
    let (messages, _) = peer.take_credit(id);
    assert!(messages >= 1, "no CREDIT after the refill");
    assert_alive(&peer);
    assert!(resets(&peer).is_empty());
}

#[test]
fn a_byte_rate_throttle_withholds_credit_until_the_excess_is_earned_back() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(
        1,
        Grant::full().with_rate(rate(0, 0, 1000, 1000), RatePolicy::Throttle),
    );
    // 20,000 bytes within credit but 19,000 over the bucket: accepted, never closed.
    let burst: Vec<Frame> = (0..20)
        .map(|_| frames::data(1, &[0u8; 1000], true))
        .collect();
    peer.send(burst);
    assert!(resets(&peer).is_empty());
    while peer.conn.recv(peer.now, id).is_some() {}
    peer.collect();
    assert_eq!(peer.take_credit(id), (0, 0));
    // At 1,000 bytes/s the 19,000-byte excess takes 19 s to earn back, plus a token.
    peer.advance(ms(19_000));
    assert_eq!(peer.take_credit(id), (0, 0));
    peer.advance(ms(1));
    assert_eq!(peer.take_credit(id), (20, 20_000));
    assert_alive(&peer);
}

#[test]
fn a_throttled_sender_is_held_to_the_rate_over_time() {
    // 10 messages/s, burst 10, window 20: over 10 virtual seconds a sender that always has
    // data gets about burst + window + 10 × 10 messages through, not more.
    let server = config(|c| {
        c.limits.initial_credit_messages = 20;
        c.limits.session_rate = rate(10, 10, 0, 0);
        c.limits.rate_policy = RatePolicy::Throttle;
    });
    let client = config(|c| c.limits.max_queued_messages = 1000);
    let mut pair = Pair::connected_with(client, server);
    let id = pair.open_accepted("x", Grant::full());
    let start = pair.now;
    let mut delivered = 0usize;
    for _ in 0..1000 {
        pair.client.conn.send(pair.now, id, msg(10, 0)).unwrap();
    }
    for _ in 0..1000 {
        pair.advance(ms(10));
        let now = pair.now;
        delivered += pair.server.recv_all(now, id).len();
    }
    let elapsed = pair.now.saturating_duration_since(start).as_secs_f64();
    assert!((elapsed - 10.0).abs() < 0.01);
    // burst 10 + 10/s × 10 s, plus at most one window of 20 accepted on trust.
    assert!(
        (100..=130).contains(&delivered),
        "delivered {delivered} in {elapsed} s at 10/s"
    );
    assert!(
        pair.server.conn.session_stats(id).is_some(),
        "throttle never closes"
    );
}

#[test]
fn the_connection_rate_under_throttle_withholds_credit_too() {
    let server = config(|c| {
        c.limits.initial_credit_messages = 4;
        c.limits.connection_rate = rate(2, 4, 0, 0);
        c.limits.rate_policy = RatePolicy::Throttle;
    });
    let mut peer = RawPeer::server(server);
    let id = peer.open_accepted(1, Grant::full());
    peer.send(
        (0..4)
            .map(|_| frames::data(1, b"m", true))
            .collect::<Vec<_>>(),
    );
    while peer.conn.recv(peer.now, id).is_some() {}
    peer.collect();
    assert_eq!(
        peer.take_credit(id),
        (0, 0),
        "credit flowed past the connection rate"
    );
    peer.advance(ms(500));
    assert!(peer.take_credit(id).0 >= 1);
}

// ---- buffers ----------------------------------------------------------------------------

/// 4 messages and 4 KiB of window, 64 bytes overhead each: 4,352 bytes per session.
fn small_windows(c: &mut mux_proto::Config) {
    c.limits.initial_credit_messages = 4;
    c.limits.initial_credit_bytes = 4096;
    c.limits.max_message_size = 4096;
    c.limits.per_message_overhead = 64;
}

#[test]
fn opens_beyond_the_reservable_receive_buffer_are_refused_with_4003() {
    let server = config(|c| {
        small_windows(c);
        c.limits.max_recv_buffer = 2 * 4352;
    });
    let mut peer = RawPeer::server(server);
    peer.open_accepted(1, Grant::full());
    peer.open_accepted(3, Grant::full());
    assert_eq!(peer.conn.recv_reserved(), 2 * 4352);
    peer.send([frames::open(5, "x")]);
    assert_alive(&peer);
    assert_eq!(resets(&peer), vec![(SessionId(5), 4003)]);
    assert!(limit_hit(&mut peer, LimitKind::RecvBuffer));
}

#[test]
fn wants_read_is_false_exactly_at_the_receive_buffer_cap() {
    let server = config(|c| {
        small_windows(c);
        c.limits.max_recv_buffer = 4352;
    });
    // One byte short of the cap: still reading.
    let mut short = RawPeer::server(server.clone());
    short.open_accepted(1, Grant::full());
    short.send([
        frames::data(1, &[0u8; 1024], true),
        frames::data(1, &[0u8; 1024], true),
        frames::data(1, &[0u8; 1024], true),
        frames::data(1, &[0u8; 1023], true),
    ]);
    assert_eq!(short.conn.stats().recv_buffered, 4352 - 1);
    assert!(short.conn.wants_read());

    // The whole window filled: the cap is reached and the reader pauses.
    let mut full = RawPeer::server(server);
    let id = full.open_accepted(1, Grant::full());
    full.send([
        frames::data(1, &[0u8; 1024], true),
        frames::data(1, &[0u8; 1024], true),
        frames::data(1, &[0u8; 1024], true),
    ]);
    assert!(full.conn.wants_read());
    full.send([frames::data(1, &[0u8; 1024], true)]);
    assert_eq!(full.conn.stats().recv_buffered, 4352);
    assert!(!full.conn.wants_read());
    assert_alive(&full);
    // Reading one message resumes it.
    assert!(full.conn.recv(full.now, id).is_some());
    assert!(full.conn.wants_read());
}

#[test]
fn the_opener_cannot_reserve_beyond_its_receive_buffer() {
    let client = config(|c| {
        small_windows(c);
        c.limits.max_recv_buffer = 4352;
    });
    let mut pair = Pair::connected_with(client, Default::default());
    let now = pair.now;
    let id = pair
        .client
        .conn
        .open(now, "x", Bytes::new(), Default::default())
        .unwrap();
    assert_eq!(
        pair.client
            .conn
            .open(now, "x", Bytes::new(), Default::default()),
        Err(OpenError::RecvBufferFull)
    );
    assert_eq!(
        pair.client.conn.grant_credit(now, id, 1, 0),
        Err(SessionError::RecvBufferFull)
    );
}

#[test]
fn extra_credit_in_a_grant_must_fit_the_receive_buffer() {
    let server = config(|c| {
        small_windows(c);
        c.limits.max_recv_buffer = 4352 + 1000 + 64;
    });
    let mut peer = RawPeer::server(server);
    peer.send([frames::open(1, "x")]);
    let id = SessionId(1);
    // The initial window took 4,352; 1,064 are left: 1 message and 1,001 bytes do not fit.
    assert_eq!(
        peer.conn
            .accept(peer.now, id, Grant::full().with_extra_credit(1, 1001)),
        Err(SessionError::RecvBufferFull)
    );
    assert_eq!(peer.conn.pending_open_count(), 1);
    // 1 message and 1,000 bytes do, and are announced with the ACCEPT.
    peer.conn
        .accept(peer.now, id, Grant::full().with_extra_credit(1, 1000))
        .unwrap();
    peer.collect();
    assert!(matches!(peer.received.pop_front(), Some(Frame::Accept(_))));
    assert_eq!(peer.take_credit(id), (1, 1000));
    assert_eq!(peer.conn.recv_reserved(), 4352 + 1064);
}

#[test]
fn send_blocks_exactly_at_max_queued_messages_then_writable_after_drain() {
    let client = config(|c| c.limits.max_queued_messages = 4);
    let mut pair = Pair::connected_with(client, Default::default());
    let id = pair.open_accepted("x", Grant::full());
    let now = pair.now;
    for i in 0..4u8 {
        assert_eq!(pair.client.conn.send(now, id, msg(10, i)), Ok(()));
    }
    assert_eq!(
        pair.client.conn.send(now, id, msg(10, 9)),
        Err(SendError::Blocked)
    );
    assert!(!pair
        .client
        .has_event(|e| matches!(e, Event::Writable { .. })));
    pair.drive();
    assert!(pair
        .client
        .take_event(|e| matches!(e, Event::Writable { id: i } if *i == id))
        .is_some());
    assert_eq!(pair.client.conn.send(pair.now, id, msg(10, 9)), Ok(()));
    pair.drive();
    assert_eq!(pair.server.recv_all(pair.now, id).len(), 5);
}

#[test]
fn send_blocks_exactly_at_max_send_buffer_then_writable_after_drain() {
    // Three 100-byte messages with 64 bytes of overhead each fill 492 bytes exactly.
    let client = config(|c| {
        c.limits.max_send_buffer = 3 * (100 + 64);
        c.limits.per_message_overhead = 64;
    });
    let mut pair = Pair::connected_with(client, Default::default());
    let a = pair.open_accepted("a", Grant::full());
    let b = pair.open_accepted("b", Grant::full());
    let now = pair.now;
    assert_eq!(pair.client.conn.send(now, a, msg(100, 1)), Ok(()));
    assert_eq!(pair.client.conn.send(now, a, msg(100, 2)), Ok(()));
    assert_eq!(pair.client.conn.send(now, b, msg(100, 3)), Ok(()));
    assert_eq!(pair.client.conn.stats().send_buffered, 492);
    // The buffer is shared: any session is blocked now, even by one byte.
    assert_eq!(
        pair.client.conn.send(now, b, msg(1, 4)),
        Err(SendError::Blocked)
    );
    assert_eq!(
        pair.client.conn.send(now, a, msg(1, 4)),
        Err(SendError::Blocked)
    );
    pair.drive();
    assert_eq!(pair.client.conn.stats().send_buffered, 0);
    for id in [a, b] {
        assert!(
            pair.client
                .take_event(|e| matches!(e, Event::Writable { id: i } if *i == id))
                .is_some(),
            "no Writable for {id}"
        );
    }
    assert_eq!(pair.client.conn.send(pair.now, b, msg(1, 4)), Ok(()));
}

/// A session blocked by the shared send buffer is woken when its message fits, not when
/// any byte frees: a wake-up it could only answer with another `Blocked` is not sent.
#[test]
fn writable_waits_until_the_blocked_message_fits_the_send_buffer() {
    // Every session has one message of credit until the server reads.
    let server = config(|c| c.limits.initial_credit_messages = 1);
    let client = config(|c| {
        c.limits.per_message_overhead = 64;
        c.limits.max_send_buffer = 2 * 74 + 964 + 26;
    });
    let mut pair = Pair::connected_with(client, server);
    let small = pair.open_accepted("small", Grant::full());
    let big = pair.open_accepted("big", Grant::full());
    let waiting = pair.open_accepted("waiting", Grant::full());
    let tiny = pair.open_accepted("tiny", Grant::full());
    // One message of each goes out and uses the session's credit; what follows is stuck:
    // 2 × 74 + 964 bytes, leaving 26 bytes of room.
    pair.client.conn.send(pair.now, small, msg(10, 0)).unwrap();
    pair.client.conn.send(pair.now, big, msg(10, 0)).unwrap();
    pair.drive();
    let now = pair.now;
    for i in 1..3 {
        pair.client.conn.send(now, small, msg(10, i)).unwrap();
    }
    pair.client.conn.send(now, big, msg(900, 1)).unwrap();
    pair.drive();
    assert_eq!(pair.client.conn.stats().send_buffered, 2 * 74 + 964);
    assert_eq!(
        pair.client.conn.send(pair.now, waiting, msg(100, 2)),
        Err(SendError::Blocked)
    );
    assert_eq!(
        pair.client.conn.send(pair.now, tiny, msg(10, 3)),
        Err(SendError::Blocked)
    );
    // The server reads one small message: 74 bytes free, room 100. The tiny message fits
    // (and is not held back by the larger one blocked before it); 164 bytes do not.
    assert_eq!(pair.server.recv_all(pair.now, small).len(), 1);
    pair.drive();
    assert_eq!(pair.client.conn.stats().send_buffered, 74 + 964);
    assert!(pair
        .client
        .take_event(|e| matches!(e, Event::Writable { id } if *id == tiny))
        .is_some());
    assert!(!pair
        .client
        .has_event(|e| matches!(e, Event::Writable { .. })));
    // Another: room 174, and the message fits.
    assert_eq!(pair.server.recv_all(pair.now, small).len(), 1);
    pair.drive();
    assert!(pair
        .client
        .take_event(|e| matches!(e, Event::Writable { id } if *id == waiting))
        .is_some());
    assert_eq!(
        pair.client.conn.send(pair.now, waiting, msg(100, 2)),
        Ok(())
    );
}

/// A message that could not fit the connection's send buffer even when it is empty is
/// refused as too large rather than blocked forever.
#[test]
fn a_message_larger_than_the_whole_send_buffer_is_too_large() {
    let client = config(|c| {
        c.limits.per_message_overhead = 64;
        c.limits.max_send_buffer = 500;
    });
    let mut pair = Pair::connected_with(client, Default::default());
    let id = pair.open_accepted("x", Grant::full());
    assert_eq!(
        pair.client.conn.send(pair.now, id, msg(437, 0)),
        Err(SendError::TooLarge { len: 437, max: 436 })
    );
    assert_eq!(pair.client.conn.send(pair.now, id, msg(436, 0)), Ok(()));
}

#[test]
fn a_blocked_sender_stays_blocked_while_the_peer_does_not_read() {
    let client = config(|c| c.limits.max_queued_messages = 2);
    let server = config(|c| c.limits.initial_credit_messages = 2);
    let mut pair = Pair::connected_with(client, server);
    let id = pair.open_accepted("x", Grant::full());
    let now = pair.now;
    for _ in 0..4 {
        let _ = pair.client.conn.send(now, id, msg(10, 0));
        pair.drive();
    }
    assert_eq!(
        pair.client.conn.send(now, id, msg(10, 0)),
        Err(SendError::Blocked)
    );
    pair.drive();
    assert!(!pair
        .client
        .has_event(|e| matches!(e, Event::Writable { .. })));
    // The server reads: credit returns, the queue drains, Writable follows.
    pair.server.recv_all(now, id);
    pair.drive();
    assert!(pair
        .client
        .take_event(|e| matches!(e, Event::Writable { id: i } if *i == id))
        .is_some());
}
