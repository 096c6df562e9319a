#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Session IDs (spec/frames.md#session-ids): parity, strictly increasing OPENs, frames for
//! IDs never opened, and frames for IDs opened and since closed.

mod common;

use common::{assert_alive, config};
use mux_proto::frame::{Frame, Permissions};
use mux_proto::testing::{frames, RawPeer};
use mux_proto::{CloseCode, Event, Grant, Initiator, Side};

/// The connection closed itself with `code`: CONN_CLOSE went out, the event was reported,
/// and nothing follows.
fn assert_conn_closed(peer: &mut RawPeer, code: CloseCode) {
    assert_eq!(peer.conn_close_code(), Some(code), "{:?}", peer.received);
    assert!(matches!(peer.received.back(), Some(Frame::ConnClose(_))));
    assert!(peer.conn.is_closed());
    assert_eq!(peer.conn.close_code(), Some(code));
    let event = peer.take_event(|e| matches!(e, Event::ConnectionClosed { .. }));
    assert!(
        matches!(event, Some(Event::ConnectionClosed { code: c, initiator: Initiator::Local, .. }) if c == code),
        "{event:?}"
    );
}

#[test]
fn an_open_with_the_receivers_own_parity_is_a_protocol_error() {
    // A client opened an even ID: only servers may.
    let mut server = RawPeer::server(Default::default());
    server.send([frames::open(2, "x")]);
    assert_conn_closed(&mut server, CloseCode::PROTOCOL_ERROR);
    assert!(server.events.is_empty(), "no Incoming: {:?}", server.events);

    // A server opened an odd ID: only clients may.
    let mut client = RawPeer::new(Side::Client, Default::default());
    client.send([frames::open(1, "x")]);
    assert_conn_closed(&mut client, CloseCode::PROTOCOL_ERROR);
}

#[test]
fn a_server_may_open_even_ids_towards_a_client() {
    let mut client = RawPeer::new(Side::Client, Default::default());
    client.send([frames::open(2, "push"), frames::open(4, "push")]);
    assert_alive(&client);
    let ids: Vec<_> = client
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Incoming { id, .. } => Some(id.0),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec![2, 4]);
}

#[test]
fn a_duplicate_open_of_a_live_session_is_a_protocol_error() {
    let mut peer = RawPeer::server(Default::default());
    peer.open_accepted(1, Grant::full());
    peer.send([frames::open(1, "again")]);
    assert_conn_closed(&mut peer, CloseCode::PROTOCOL_ERROR);
}

#[test]
fn reopening_a_closed_id_is_a_protocol_error() {
    let mut peer = RawPeer::server(Default::default());
    peer.open_accepted(1, Grant::full());
    peer.send([frames::reset(1, CloseCode::CANCELLED)]);
    assert_alive(&peer);
    peer.send([frames::open(1, "reuse")]);
    assert_conn_closed(&mut peer, CloseCode::PROTOCOL_ERROR);
}

#[test]
fn an_open_going_backwards_is_a_protocol_error() {
    let mut peer = RawPeer::server(Default::default());
    peer.send([frames::open(5, "x")]);
    assert_alive(&peer);
    // 3 was skipped, and may never be opened now.
    peer.send([frames::open(3, "x")]);
    assert_conn_closed(&mut peer, CloseCode::PROTOCOL_ERROR);
}

#[test]
fn ids_may_skip_values() {
    let mut peer = RawPeer::server(Default::default());
    peer.send([
        frames::open(1, "x"),
        frames::open(7, "x"),
        frames::open(1001, "x"),
    ]);
    assert_alive(&peer);
    assert_eq!(peer.conn.pending_open_count(), 3);
}

#[test]
fn session_frames_for_a_never_opened_peer_id_close_the_connection_with_4005() {
    let cases: Vec<(&str, Frame)> = vec![
        ("DATA", frames::data(3, b"x", true)),
        ("CREDIT", frames::credit(3, 1, 1)),
        ("CLOSE", frames::close(3, CloseCode::NORMAL)),
        ("RESET", frames::reset(3, CloseCode::CANCELLED)),
    ];
    for (name, frame) in cases {
        let mut peer = RawPeer::server(Default::default());
        peer.open_accepted(1, Grant::full());
        peer.send([frame]);
        assert_eq!(
            peer.conn_close_code(),
            Some(CloseCode::UNKNOWN_SESSION),
            "{name}: {:?}",
            peer.received
        );
        assert!(peer.conn.is_closed(), "{name}");
    }
}

#[test]
fn session_frames_for_a_never_opened_own_id_close_the_connection_with_4005() {
    // The server opened nothing, so no even ID exists yet.
    let cases: Vec<(&str, Frame)> = vec![
        ("DATA", frames::data(2, b"x", true)),
        ("CREDIT", frames::credit(2, 1, 1)),
        ("ACCEPT", frames::accept(2, Permissions::BOTH, 100)),
        ("CLOSE", frames::close(2, CloseCode::NORMAL)),
        ("RESET", frames::reset(2, CloseCode::CANCELLED)),
    ];
    for (name, frame) in cases {
        let mut peer = RawPeer::server(Default::default());
        peer.send([frame]);
        assert_eq!(
            peer.conn_close_code(),
            Some(CloseCode::UNKNOWN_SESSION),
            "{name}: {:?}",
            peer.received
        );
    }
}

#[test]
fn frames_for_an_id_opened_and_closed_are_discarded() {
    let mut peer = RawPeer::server(Default::default());
    peer.open_accepted(1, Grant::full());
    peer.send([frames::reset(1, CloseCode::CANCELLED)]);
    peer.events.clear();
    for frame in [
        frames::data(1, b"x", true),
        frames::credit(1, 1, 1),
        frames::close(1, CloseCode::NORMAL),
        frames::reset(1, CloseCode::CANCELLED),
    ] {
        peer.send([frame]);
    }
    assert_alive(&peer);
    assert!(peer.received.is_empty(), "{:?}", peer.received);
    assert!(peer.events.is_empty(), "{:?}", peer.events);
    assert_eq!(peer.conn.stats().late_frames, 4);
}

#[test]
fn frames_for_a_skipped_id_below_the_last_are_discarded_as_closed() {
    // spec/frames.md#session-ids: only IDs above last_peer_id are "never opened".
    let mut peer = RawPeer::server(Default::default());
    peer.send([frames::open(5, "x")]);
    peer.send([frames::data(3, b"x", true), frames::credit(3, 1, 1)]);
    assert_alive(&peer);
    assert_eq!(peer.conn.stats().late_frames, 2);
}

#[test]
fn frames_for_an_id_the_server_opened_and_closed_are_discarded() {
    let mut client = RawPeer::new(Side::Client, Default::default());
    let id = client
        .conn
        .open(client.now, "x", bytes::Bytes::new(), Default::default())
        .unwrap();
    assert_eq!(id.0, 1);
    client.collect();
    client.send([frames::reset(1, CloseCode::FORBIDDEN)]);
    assert_eq!(
        client.take_closed(id),
        Some((CloseCode::FORBIDDEN, Initiator::Peer))
    );
    client.send([
        frames::accept(1, Permissions::BOTH, 100),
        frames::data(1, b"late", true),
    ]);
    assert_alive(&client);
    assert_eq!(client.conn.stats().late_frames, 2);
}

#[test]
fn an_accept_for_a_session_the_peer_opened_is_a_session_error() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(1, Grant::full());
    let other = peer.open_accepted(3, Grant::full());
    // The client "accepts" its own session: the server resets that session only.
    peer.send([frames::accept(1, Permissions::BOTH, 100)]);
    assert_alive(&peer);
    let reset = peer.take_reset(id).expect("RESET");
    assert_eq!(reset.code, CloseCode::PROTOCOL_ERROR);
    assert_eq!(peer.conn.session_count(), 1);
    assert!(peer.conn.session_phase(other).is_some());
}

#[test]
fn a_second_accept_is_a_session_error() {
    let mut client = RawPeer::new(Side::Client, Default::default());
    let id = client
        .conn
        .open(client.now, "x", bytes::Bytes::new(), Default::default())
        .unwrap();
    client.collect();
    client.send([frames::accept(1, Permissions::BOTH, 100)]);
    assert!(client
        .take_event(|e| matches!(e, Event::Opened { .. }))
        .is_some());
    client.send([frames::accept(1, Permissions::BOTH, 100)]);
    assert_alive(&client);
    assert_eq!(
        client.take_reset(id).map(|r| r.code),
        Some(CloseCode::PROTOCOL_ERROR)
    );
}

#[test]
fn the_rest_of_a_message_after_an_id_error_is_not_processed() {
    let mut peer = RawPeer::server(config(|_| {}));
    peer.send([
        frames::open(1, "ok"),
        frames::open(2, "wrong parity"),
        frames::open(3, "never seen"),
        frames::ping(7),
    ]);
    assert_eq!(peer.conn_close_code(), Some(CloseCode::PROTOCOL_ERROR));
    // The OPEN before the error took effect (and was reported); nothing after it did.
    assert_eq!(peer.conn.stats().frames_received, 2 + 1);
    assert!(!peer.received.iter().any(|f| matches!(f, Frame::Pong(_))));
    let incoming: Vec<_> = peer
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Incoming { id, .. } => Some(id.0),
            _ => None,
        })
        .collect();
    assert_eq!(incoming, vec![1]);
}
