#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Timers on the virtual clock: keepalive, the SETTINGS deadline, session idleness,
//! graceful shutdown with its grace period, and PING/PONG coalescing.

mod common;

use bytes::{Bytes, BytesMut};
use common::{assert_alive, config, ms, msg};
use mux_proto::frame::{decode_message, Frame, Setting, Settings};
use mux_proto::testing::{frames, Pair, RawPeer};
use mux_proto::{
    CloseCode, Config, Connection, Event, Grant, Initiator, OpenError, Side, Timestamp,
};

fn pings(peer: &RawPeer) -> Vec<u64> {
    peer.received
        .iter()
        .filter_map(|f| match f {
            Frame::Ping(p) => Some(*p),
            _ => None,
        })
        .collect()
}

fn keepalive(interval_ms: u64, timeout_ms: u64) -> Config {
    config(|c| {
        c.timeouts.keepalive_interval = Some(ms(interval_ms));
        c.timeouts.keepalive_timeout = ms(timeout_ms);
        c.timeouts.session_idle = None;
    })
}

/// No keepalive (a raw peer does not answer PINGs by itself).
fn quiet(f: impl FnOnce(&mut Config)) -> Config {
    config(|c| {
        c.timeouts.keepalive_interval = None;
        f(c);
    })
}

// ---- keepalive --------------------------------------------------------------------------

#[test]
fn a_ping_goes_out_after_the_keepalive_interval_of_silence() {
    let mut peer = RawPeer::server(keepalive(15_000, 10_000));
    peer.advance(ms(14_999));
    assert!(pings(&peer).is_empty());
    peer.advance(ms(1));
    assert_eq!(pings(&peer).len(), 1);
    assert_alive(&peer);
}

#[test]
fn no_answer_within_the_keepalive_timeout_closes_with_4006() {
    let mut peer = RawPeer::server(keepalive(15_000, 10_000));
    peer.advance(ms(15_000));
    assert_eq!(pings(&peer).len(), 1);
    peer.advance(ms(9_999));
    assert_alive(&peer);
    peer.advance(ms(1));
    assert_eq!(peer.conn_close_code(), Some(CloseCode::TIMEOUT));
    assert_eq!(
        peer.take_event(|e| matches!(e, Event::ConnectionClosed { .. })),
        Some(Event::ConnectionClosed {
            code: CloseCode::TIMEOUT,
            initiator: Initiator::Local,
            reason: mux_proto::Text::from_static("keepalive timeout"),
        })
    );
    assert!(peer.conn.is_closed());
    assert_eq!(peer.conn.poll_timeout(), None);
}

#[test]
fn the_pong_clears_the_keepalive_deadline() {
    let mut peer = RawPeer::server(keepalive(15_000, 10_000));
    peer.advance(ms(15_000));
    let ping = pings(&peer)[0];
    peer.received.clear();
    peer.advance(ms(5_000));
    peer.send([frames::pong(ping)]);
    // Ten seconds after the PING: no close, and the next PING is 15 s after the PONG.
    peer.advance(ms(14_999));
    assert_alive(&peer);
    assert!(pings(&peer).is_empty());
    peer.advance(ms(1));
    assert_eq!(pings(&peer).len(), 1);
}

#[test]
fn any_received_frame_clears_the_keepalive_deadline() {
    let mut peer = RawPeer::server(keepalive(15_000, 10_000));
    let id = peer.open_accepted(1, Grant::full());
    peer.advance(ms(15_000));
    assert_eq!(pings(&peer).len(), 1);
    peer.advance(ms(9_000));
    peer.send([frames::data(1, b"still here", true)]);
    peer.advance(ms(9_000));
    assert_alive(&peer);
    assert!(peer.conn.recv(peer.now, id).is_some());
}

#[test]
fn traffic_postpones_the_keepalive() {
    let mut peer = RawPeer::server(keepalive(15_000, 10_000));
    for _ in 0..10 {
        peer.advance(ms(10_000));
        peer.send([frames::ping(0)]);
    }
    assert!(pings(&peer).is_empty(), "no PING while the peer talks");
    assert_alive(&peer);
}

#[test]
fn a_connected_pair_keeps_itself_alive() {
    let mut pair = Pair::connected();
    pair.advance(std::time::Duration::from_secs(600));
    assert!(pair.client.conn.is_open());
    assert!(pair.server.conn.is_open());
}

#[test]
fn the_advertised_idle_timeout_covers_interval_and_timeout() {
    let c = keepalive(15_000, 10_000);
    assert_eq!(c.settings().get(Setting::IdleTimeoutMs), Some(25_000));
    let c = quiet(|_| {});
    assert_eq!(c.settings().get(Setting::IdleTimeoutMs), Some(0));
}

#[test]
fn pings_come_often_enough_for_the_peers_idle_timeout() {
    // The peer closes after 4 s without a frame: PING after 2 s of silence, not 15.
    let settings = Settings::default().with(Setting::IdleTimeoutMs, 4_000);
    let mut peer = RawPeer::with_settings(Side::Server, keepalive(15_000, 10_000), settings);
    peer.advance(ms(1_999));
    assert!(pings(&peer).is_empty());
    peer.advance(ms(1));
    assert_eq!(pings(&peer).len(), 1);
    peer.send([frames::pong(pings(&peer)[0])]);
    peer.received.clear();
    peer.advance(ms(2_000));
    assert_eq!(pings(&peer).len(), 1);

    // A keepalive the configuration disabled stays disabled.
    let settings = Settings::default().with(Setting::IdleTimeoutMs, 4_000);
    let mut peer = RawPeer::with_settings(Side::Server, quiet(|_| {}), settings);
    peer.advance(ms(60_000));
    assert!(pings(&peer).is_empty());
    assert_eq!(peer.conn.poll_timeout(), None);
}

#[test]
fn a_ping_goes_out_when_nothing_was_sent_for_half_the_peers_idle_timeout() {
    // This side receives all the time (so its own keepalive never fires) but sends nothing:
    // the peer, which closes after 4 s without receiving a frame, still gets one every 2 s.
    let settings = Settings::default().with(Setting::IdleTimeoutMs, 4_000);
    let mut peer = RawPeer::with_settings(Side::Server, keepalive(15_000, 10_000), settings);
    peer.open_accepted(1, Grant::full());
    let mut last_sent = peer.now;
    let mut longest = std::time::Duration::ZERO;
    for step in 0..100 {
        peer.advance(ms(100));
        if step % 5 == 0 {
            // Unread DATA: no CREDIT goes back, nothing is sent but PINGs.
            peer.send([frames::data(1, b"tick", true)]);
        }
        if !peer.received.is_empty() {
            assert!(peer.received.iter().all(|f| matches!(f, Frame::Ping(_))));
            peer.received.clear();
            longest = longest.max(peer.now.saturating_duration_since(last_sent));
            last_sent = peer.now;
        }
    }
    assert!(
        longest > ms(0) && longest <= ms(2_000),
        "silent for {longest:?}"
    );
    assert_alive(&peer);
}

// ---- the SETTINGS deadline --------------------------------------------------------------

#[test]
fn a_peer_that_never_sends_settings_is_closed_with_4006() {
    let mut c = Config::default();
    c.timeouts.settings_timeout = ms(10_000);
    let start = Timestamp::from_millis(1);
    let mut conn = Connection::new(Side::Server, c, start);
    assert_eq!(conn.poll_timeout(), Some(start + ms(10_000)));
    conn.handle_timeout(start + ms(9_999));
    assert!(!conn.is_closed());
    conn.handle_timeout(start + ms(10_000));
    assert_eq!(conn.close_code(), Some(CloseCode::TIMEOUT));
    let mut buf = BytesMut::new();
    let mut sent = Vec::new();
    while conn.poll_transmit(start + ms(10_000), &mut buf) {
        sent.extend(decode_message(buf.split().freeze()).unwrap());
    }
    assert!(matches!(sent.last(), Some(Frame::ConnClose(c)) if c.code == CloseCode::TIMEOUT));
    assert!(conn.is_closed());
}

#[test]
fn settings_in_time_disarm_the_deadline() {
    let mut pair = Pair::connected_with(quiet(|_| {}), quiet(|_| {}));
    pair.advance(ms(60_000));
    assert!(pair.client.conn.is_open() && pair.server.conn.is_open());
}

// ---- session idleness -------------------------------------------------------------------

#[test]
fn an_idle_session_is_reset_with_4006_and_a_busy_one_is_not() {
    let mut peer = RawPeer::server(quiet(|c| c.timeouts.session_idle = Some(ms(60_000))));
    let idle = peer.open_accepted(1, Grant::full());
    let busy = peer.open_accepted(3, Grant::full());
    let opened = peer.now;
    let mut reset_at = None;
    for _ in 0..100 {
        peer.advance(ms(1_000));
        if peer.now.saturating_duration_since(opened).as_secs() % 10 == 0 {
            peer.send([frames::data(3, b"tick", true)]);
            while peer.conn.recv(peer.now, busy).is_some() {}
        }
        if reset_at.is_none() {
            if let Some(r) = peer.take_reset(idle) {
                assert_eq!(r.code, CloseCode::TIMEOUT);
                reset_at = Some(peer.now.saturating_duration_since(opened));
            }
        }
    }
    let after = reset_at.expect("the idle session was never reset");
    // Swept four times per timeout: between 1× and 1.25× the idle timeout.
    assert!(
        after >= ms(60_000) && after <= ms(75_000),
        "reset after {after:?}"
    );
    assert_eq!(
        peer.take_closed(idle),
        Some((CloseCode::TIMEOUT, Initiator::Local))
    );
    assert!(peer.conn.session_phase(busy).is_some());
    assert!(peer.take_reset(busy).is_none());
    assert_alive(&peer);
}

/// spec/sessions.md#timers, assembly (set to 20 s, off its 30 s default): a message
/// trickled in 1 KiB fragments, one every 5 s, is reset with 4006 between 20 s and 25 s
/// after its first fragment (each fragment keeps the session from being idle, but not the
/// message from being late); a neighbour that completes its messages is untouched, and so
/// is one that finishes a message in 15 s.
#[test]
fn a_message_that_takes_too_long_to_complete_is_reset_with_4006() {
    let mut peer = RawPeer::server(quiet(|c| {
        c.timeouts.message_assembly = Some(ms(20_000));
        c.timeouts.session_idle = Some(ms(60_000));
    }));
    let slow = peer.open_accepted(1, Grant::full());
    let steady = peer.open_accepted(3, Grant::full());
    let on_time = peer.open_accepted(5, Grant::full());
    let started = peer.now;
    let fragment = vec![7u8; 1024];
    let mut reset_at = None;
    for step in 0..10u64 {
        peer.send([
            frames::data(1, &fragment, false),
            frames::data(3, b"whole", true),
        ]);
        // Session 5 sends 4 fragments over 15 s, the last with its END.
        if step <= 3 {
            peer.send([frames::data(5, &fragment, step == 3)]);
        }
        while peer.conn.recv(peer.now, steady).is_some() {}
        while peer.conn.recv(peer.now, on_time).is_some() {}
        peer.advance(ms(5_000));
        if reset_at.is_none() {
            if let Some(r) = peer.take_reset(slow) {
                assert_eq!(r.code, CloseCode::TIMEOUT);
                reset_at = Some(peer.now.saturating_duration_since(started));
            }
        }
    }
    let after = reset_at.expect("the slow message was never reset");
    assert!(
        after >= ms(20_000) && after <= ms(25_000),
        "reset after {after:?}"
    );
    assert!(peer.take_reset(steady).is_none());
    assert!(peer.take_reset(on_time).is_none());
    assert!(peer.conn.session_phase(steady).is_some());
    assert!(peer.conn.session_phase(on_time).is_some());
    assert_alive(&peer);
}

#[test]
fn sending_counts_as_activity_too() {
    let mut peer = RawPeer::server(quiet(|c| c.timeouts.session_idle = Some(ms(60_000))));
    let id = peer.open_accepted(1, Grant::full());
    for _ in 0..12 {
        peer.advance(ms(10_000));
        peer.conn.send(peer.now, id, msg(1, 0)).unwrap();
        peer.collect();
    }
    assert!(peer.take_reset(id).is_none());
    assert!(peer.conn.session_phase(id).is_some());
}

// ---- graceful shutdown ------------------------------------------------------------------

/// A GOAWAY asked for before the peer's SETTINGS has arrived (a server told to drain while
/// a client is mid-handshake) is held, then sent right after SETTINGS; with no session, the
/// connection then closes with 1001.
#[test]
fn go_away_before_the_peers_settings_goes_out_once_they_arrive() {
    use mux_proto::frame::encode_message;
    let now = Timestamp::from_millis(1);
    let mut conn = Connection::new(Side::Server, quiet(|_| {}), now);
    conn.go_away(now, CloseCode::GOING_AWAY, "drain");
    let mut sent = Vec::new();
    let mut buf = BytesMut::new();
    while conn.poll_transmit(now, &mut buf) {
        sent.extend(decode_message(buf.split().freeze()).unwrap());
    }
    assert!(
        sent.iter().all(|f| matches!(f, Frame::Settings(_))),
        "only SETTINGS before the peer's: {sent:?}"
    );
    let settings = encode_message([Frame::Settings(Settings::default())].iter()).freeze();
    conn.handle_message(now, settings);
    let mut after = Vec::new();
    while conn.poll_transmit(now, &mut buf) {
        after.extend(decode_message(buf.split().freeze()).unwrap());
    }
    assert!(
        matches!(after.first(), Some(Frame::GoAway(g)) if g.code == CloseCode::GOING_AWAY),
        "{after:?}"
    );
    assert!(after
        .iter()
        .any(|f| matches!(f, Frame::ConnClose(c) if c.code == CloseCode::GOING_AWAY)));
}

#[test]
fn go_away_refuses_new_opens_lets_sessions_finish_then_closes_with_1001() {
    let mut peer = RawPeer::server(quiet(|_| {}));
    let live = peer.open_accepted(1, Grant::full());
    peer.conn
        .go_away(peer.now, CloseCode::GOING_AWAY, "restart");
    peer.collect();
    match peer.received.pop_front() {
        Some(Frame::GoAway(g)) => {
            assert_eq!(g.last_session_id.0, 1);
            assert_eq!(g.code, CloseCode::GOING_AWAY);
        }
        other => panic!("{other:?}"),
    }

    // A new OPEN is refused with 4009 (safe to retry elsewhere); the connection lives.
    peer.send([frames::open(3, "late")]);
    let reset = peer.take_reset(mux_proto::SessionId(3)).expect("RESET");
    assert_eq!(reset.code, CloseCode::REFUSED);
    assert!(!peer
        .events
        .iter()
        .any(|e| matches!(e, Event::Incoming { .. })));
    assert_alive(&peer);

    // The live session carries on both ways.
    peer.send([frames::data(1, b"working", true)]);
    assert_eq!(
        peer.conn.recv(peer.now, live),
        Some(Bytes::from_static(b"working"))
    );
    peer.conn.send(peer.now, live, msg(3, 3)).unwrap();
    peer.collect();
    assert_eq!(peer.take_data(live).len(), 1);

    // It finishes: then, and only then, the connection closes with 1001.
    peer.conn.finish(peer.now, live).unwrap();
    peer.collect();
    assert_alive(&peer);
    peer.send([frames::fin(1)]);
    assert_eq!(peer.conn_close_code(), Some(CloseCode::GOING_AWAY));
    assert!(peer.conn.is_closed());
}

#[test]
fn the_shutdown_grace_closes_with_1001_anyway() {
    let mut peer = RawPeer::server(quiet(|c| c.timeouts.shutdown_grace = ms(30_000)));
    peer.open_accepted(1, Grant::full());
    peer.conn.go_away(peer.now, CloseCode::GOING_AWAY, "");
    peer.collect();
    peer.advance(ms(29_999));
    assert_alive(&peer);
    peer.advance(ms(1));
    assert_eq!(peer.conn_close_code(), Some(CloseCode::GOING_AWAY));
}

#[test]
fn go_away_with_no_sessions_closes_at_once() {
    let mut peer = RawPeer::server(quiet(|_| {}));
    peer.conn.go_away(peer.now, CloseCode::GOING_AWAY, "");
    peer.collect();
    let kinds: Vec<_> = peer.received.iter().map(Frame::frame_type).collect();
    assert_eq!(
        kinds,
        vec![
            mux_proto::frame::FrameType::GoAway,
            mux_proto::frame::FrameType::ConnClose
        ]
    );
    assert_eq!(peer.conn_close_code(), Some(CloseCode::GOING_AWAY));
}

#[test]
fn the_last_sessions_close_frame_goes_out_before_the_final_conn_close() {
    let mut peer = RawPeer::server(quiet(|_| {}));
    let id = peer.open_accepted(1, Grant::full());
    peer.conn.go_away(peer.now, CloseCode::GOING_AWAY, "");
    peer.collect();
    peer.received.clear();
    peer.conn
        .close_session(peer.now, id, CloseCode::NORMAL, "done")
        .unwrap();
    peer.collect();
    let sent = peer.take_frames();
    assert!(
        matches!(&sent[..], [Frame::Close(c), Frame::ConnClose(cc)]
            if c.session_id == id && c.code == CloseCode::NORMAL && cc.code == CloseCode::GOING_AWAY),
        "{sent:?}"
    );
}

#[test]
fn a_received_go_away_stops_new_opens_and_refuses_sessions_above_the_last_id() {
    let mut client = RawPeer::new(Side::Client, quiet(|_| {}));
    let ids: Vec<_> = (0..3)
        .map(|_| {
            client
                .conn
                .open(client.now, "x", Bytes::new(), Default::default())
                .unwrap()
        })
        .collect();
    client.collect();
    client.received.clear();
    client.send([frames::goaway(3, CloseCode::GOING_AWAY)]);
    assert_alive(&client);
    assert!(client
        .take_event(
            |e| matches!(e, Event::GoAway { last_session_id, .. } if last_session_id.0 == 3)
        )
        .is_some());
    assert_eq!(
        client.take_closed(ids[2]),
        Some((CloseCode::REFUSED, Initiator::Peer))
    );
    assert!(client.conn.session_phase(ids[0]).is_some());
    assert!(client.conn.session_phase(ids[1]).is_some());
    assert_eq!(
        client
            .conn
            .open(client.now, "x", Bytes::new(), Default::default()),
        Err(OpenError::GoingAway)
    );
    // A later GOAWAY may lower the last ID, never raise it.
    client.send([frames::goaway(1, CloseCode::GOING_AWAY)]);
    assert_eq!(
        client.take_closed(ids[1]),
        Some((CloseCode::REFUSED, Initiator::Peer))
    );
    assert_alive(&client);
    client.send([frames::goaway(5, CloseCode::GOING_AWAY)]);
    assert_eq!(client.conn_close_code(), Some(CloseCode::PROTOCOL_ERROR));
}

#[test]
fn go_away_end_to_end() {
    let mut pair = Pair::connected_with(quiet(|_| {}), quiet(|_| {}));
    let id = pair.open_accepted("x", Grant::full());
    let now = pair.now;
    pair.server.conn.go_away(now, CloseCode::GOING_AWAY, "bye");
    pair.drive();
    assert!(pair
        .client
        .take_event(|e| matches!(e, Event::GoAway { .. }))
        .is_some());
    assert_eq!(
        pair.client
            .conn
            .open(now, "x", Bytes::new(), Default::default()),
        Err(OpenError::GoingAway)
    );
    pair.client.conn.send(now, id, msg(5, 5)).unwrap();
    pair.client.conn.finish(now, id).unwrap();
    pair.server.conn.finish(now, id).unwrap();
    pair.drive();
    assert_eq!(pair.server.recv_all(now, id), vec![msg(5, 5)]);
    pair.drive();
    assert_eq!(
        pair.server.take_conn_closed(),
        Some((CloseCode::GOING_AWAY, Initiator::Local))
    );
    assert_eq!(
        pair.client.take_conn_closed(),
        Some((CloseCode::GOING_AWAY, Initiator::Peer))
    );
}

// ---- PING and PONG ----------------------------------------------------------------------

#[test]
fn two_pings_in_one_message_get_one_pong_with_the_last_payload() {
    let mut peer = RawPeer::server(quiet(|_| {}));
    peer.send([frames::ping(1), frames::ping(2)]);
    assert_eq!(peer.take_frames(), vec![Frame::Pong(2)]);
}

#[test]
fn pings_arriving_before_the_pong_is_sent_share_one_pong() {
    let mut peer = RawPeer::server(quiet(|_| {}));
    peer.deliver([frames::ping(10)]);
    peer.deliver([frames::ping(11)]);
    peer.deliver([frames::ping(12)]);
    let mut sent = Vec::new();
    while let Some(frames) = peer.poll_one() {
        sent.extend(frames);
    }
    assert_eq!(sent, vec![Frame::Pong(12)]);
}

#[test]
fn each_ping_after_the_pong_went_out_gets_its_own() {
    let mut peer = RawPeer::server(quiet(|_| {}));
    peer.send([frames::ping(1)]);
    peer.send([frames::ping(2)]);
    assert_eq!(peer.take_frames(), vec![Frame::Pong(1), Frame::Pong(2)]);
}

#[test]
fn an_unexpected_pong_is_ignored() {
    let mut peer = RawPeer::server(quiet(|_| {}));
    peer.send([frames::pong(12345)]);
    assert_alive(&peer);
    assert!(peer.received.is_empty());
}
