#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Session lifecycle: opening from either side, accepting and rejecting, half-close, graceful
//! close, reset, revoke, releasing state, and the tombstones that absorb late frames.

mod common;

use bytes::Bytes;
use common::{assert_alive, config, ms, msg};
use mux_proto::frame::Frame;
use mux_proto::testing::{frames, Pair, RawPeer};
use mux_proto::{
    CloseCode, Event, Grant, Initiator, OpenRequest, Phase, SendError, SessionError, SessionId,
};

fn open(pair: &mut Pair, client: bool, kind: &str) -> SessionId {
    let now = pair.now;
    let ep = if client {
        &mut pair.client
    } else {
        &mut pair.server
    };
    ep.conn
        .open(now, kind, Bytes::new(), OpenRequest::default())
        .expect("open")
}

/// Both sides of a pair hold no session state and no buffered bytes.
fn assert_released(pair: &Pair) {
    for (name, ep) in [("client", &pair.client), ("server", &pair.server)] {
        let stats = ep.conn.stats();
        assert_eq!(ep.conn.session_count(), 0, "{name} sessions");
        assert_eq!(ep.conn.recv_reserved(), 0, "{name} recv_reserved");
        assert_eq!(stats.recv_buffered, 0, "{name} recv_buffered");
        assert_eq!(stats.send_buffered, 0, "{name} send_buffered");
        assert_eq!(stats.sessions_live, 0, "{name} sessions_live");
    }
}

#[test]
fn the_client_opens_odd_ids_in_increasing_order() {
    let mut pair = Pair::connected();
    let ids: Vec<_> = (0..3).map(|_| open(&mut pair, true, "chat")).collect();
    assert_eq!(ids, vec![SessionId(1), SessionId(3), SessionId(5)]);
    pair.drive();
    assert_eq!(pair.server.take_incoming(), ids);
    assert_eq!(pair.server.conn.pending_open_count(), 3);
    for id in &ids {
        assert_eq!(pair.client.conn.session_phase(*id), Some(Phase::Opening));
        assert_eq!(pair.server.conn.session_phase(*id), Some(Phase::Pending));
    }
}

#[test]
fn the_server_opens_even_ids_and_the_client_accepts() {
    let mut pair = Pair::connected();
    let first = open(&mut pair, false, "push");
    let second = open(&mut pair, false, "push");
    assert_eq!((first, second), (SessionId(2), SessionId(4)));
    pair.drive();
    assert_eq!(pair.client.take_incoming(), vec![first, second]);

    let now = pair.now;
    pair.client.conn.accept(now, first, Grant::full()).unwrap();
    pair.drive();
    assert!(pair
        .server
        .take_event(|e| matches!(e, Event::Opened { id, .. } if *id == first))
        .is_some());
    pair.server.conn.send(now, first, msg(10, 7)).unwrap();
    pair.client.conn.send(now, first, msg(20, 8)).unwrap();
    pair.drive();
    assert_eq!(pair.client.recv_all(now, first), vec![msg(10, 7)]);
    assert_eq!(pair.server.recv_all(now, first), vec![msg(20, 8)]);
    // The second is still pending on the client.
    assert_eq!(pair.client.conn.session_phase(second), Some(Phase::Pending));
}

#[test]
fn incoming_carries_kind_auth_and_request() {
    let mut pair = Pair::connected();
    let request = OpenRequest {
        max_message_size: 1000,
        messages_per_sec: 5,
        bytes_per_sec: 5000,
    };
    let id = pair
        .client
        .conn
        .open(
            pair.now,
            "orders",
            Bytes::from_static(b"token-123"),
            request,
        )
        .unwrap();
    pair.drive();
    match pair.server.events.pop_front() {
        Some(Event::Incoming {
            id: got,
            kind,
            auth,
            request: got_request,
        }) => {
            assert_eq!(got, id);
            assert_eq!(kind.as_str(), "orders");
            assert_eq!(&auth.expose()[..], b"token-123");
            assert_eq!(got_request, request);
        }
        other => panic!("expected Incoming, got {other:?}"),
    }
}

#[test]
fn a_rejected_open_ends_on_both_sides_with_the_apps_code() {
    let mut pair = Pair::connected();
    let id = open(&mut pair, true, "admin");
    pair.drive();
    assert_eq!(pair.server.take_incoming(), vec![id]);
    let now = pair.now;
    pair.server
        .conn
        .reject(now, id, CloseCode::FORBIDDEN, "no")
        .unwrap();
    pair.drive();
    assert_eq!(
        pair.client.take_closed(id),
        Some((CloseCode::FORBIDDEN, Initiator::Peer))
    );
    assert_eq!(
        pair.server.take_closed(id),
        Some((CloseCode::FORBIDDEN, Initiator::Local))
    );
    assert_eq!(pair.server.conn.stats().opens_refused, 1);
    // A decided session cannot be decided again.
    assert_eq!(
        pair.server.conn.accept(now, id, Grant::full()),
        Err(SessionError::UnknownSession(id))
    );
    assert_released(&pair);
}

#[test]
fn half_close_from_both_sides_ends_the_session_normally() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("chat", Grant::full());
    let now = pair.now;

    pair.client.conn.send(now, id, msg(5, 1)).unwrap();
    pair.client.conn.finish(now, id).unwrap();
    pair.drive();
    assert_eq!(pair.server.recv_all(now, id), vec![msg(5, 1)]);
    assert!(pair
        .server
        .take_event(|e| matches!(e, Event::Finished { id: i } if *i == id))
        .is_some());
    // Half-closed: the client may not send, the server still may.
    assert_eq!(
        pair.client.conn.send(now, id, msg(1, 0)),
        Err(SendError::Finished)
    );
    assert_eq!(pair.server.conn.session_count(), 1);

    pair.server.conn.send(now, id, msg(6, 2)).unwrap();
    pair.server.conn.finish(now, id).unwrap();
    pair.drive();
    assert_eq!(pair.client.recv_all(now, id), vec![msg(6, 2)]);
    assert_eq!(
        pair.client.take_closed(id).map(|c| c.0),
        Some(CloseCode::NORMAL)
    );
    assert_eq!(
        pair.server.take_closed(id).map(|c| c.0),
        Some(CloseCode::NORMAL)
    );
    assert_released(&pair);
    assert_eq!(pair.server.conn.stats().closes(CloseCode::NORMAL), 1);
}

#[test]
fn half_close_acceptor_first_also_ends_normally() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("feed", Grant::full());
    let now = pair.now;
    pair.server.conn.finish(now, id).unwrap();
    pair.drive();
    assert!(pair
        .client
        .take_event(|e| matches!(e, Event::Finished { id: i } if *i == id))
        .is_some());
    pair.client.conn.finish(now, id).unwrap();
    pair.drive();
    assert_eq!(
        pair.client.take_closed(id).map(|c| c.0),
        Some(CloseCode::NORMAL)
    );
    assert_eq!(
        pair.server.take_closed(id).map(|c| c.0),
        Some(CloseCode::NORMAL)
    );
    assert_released(&pair);
}

#[test]
fn a_session_with_unread_messages_ends_only_after_they_are_read() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("chat", Grant::full());
    let now = pair.now;
    pair.client.conn.send(now, id, msg(3, 1)).unwrap();
    pair.client.conn.send(now, id, msg(3, 2)).unwrap();
    pair.client.conn.finish(now, id).unwrap();
    pair.server.conn.finish(now, id).unwrap();
    pair.drive();
    // Both directions are finished but two messages are unread: still live.
    assert_eq!(pair.server.conn.session_count(), 1);
    assert!(pair.server.take_closed(id).is_none());
    assert_eq!(pair.server.conn.recv(now, id), Some(msg(3, 1)));
    assert_eq!(pair.server.conn.session_count(), 1);
    assert_eq!(pair.server.conn.recv(now, id), Some(msg(3, 2)));
    assert_eq!(
        pair.server.take_closed(id).map(|c| c.0),
        Some(CloseCode::NORMAL)
    );
    pair.drive();
    assert_released(&pair);
}

#[test]
fn graceful_close_delivers_queued_data_before_the_close() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("log", Grant::full());
    let now = pair.now;
    for i in 0..5u8 {
        pair.client.conn.send(now, id, msg(100, i)).unwrap();
    }
    pair.client
        .conn
        .close_session(now, id, CloseCode::NORMAL, "done")
        .unwrap();
    // Nothing may be sent after a close.
    assert_eq!(
        pair.client.conn.send(now, id, msg(1, 0)),
        Err(SendError::Finished)
    );
    pair.drive();
    assert_eq!(
        pair.client.take_closed(id),
        Some((CloseCode::NORMAL, Initiator::Local))
    );
    // The server holds all five; the session ends when the application has read them.
    assert!(pair.server.take_closed(id).is_none());
    let got = pair.server.recv_all(now, id);
    assert_eq!(got, (0..5u8).map(|i| msg(100, i)).collect::<Vec<_>>());
    assert_eq!(
        pair.server.take_closed(id),
        Some((CloseCode::NORMAL, Initiator::Peer))
    );
    pair.drive();
    assert_released(&pair);
}

#[test]
fn reset_discards_undelivered_data_on_the_receiver() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("bulk", Grant::full());
    let now = pair.now;
    for i in 0..3u8 {
        pair.client.conn.send(now, id, msg(1000, i)).unwrap();
    }
    pair.drive();
    assert_eq!(pair.server.conn.stats().recv_buffered, 3 * (1000 + 64));
    pair.client
        .conn
        .reset(now, id, CloseCode::CANCELLED, "abort")
        .unwrap();
    pair.drive();
    assert_eq!(
        pair.server.take_closed(id),
        Some((CloseCode::CANCELLED, Initiator::Peer))
    );
    assert_eq!(pair.server.conn.recv(now, id), None);
    assert_released(&pair);
}

#[test]
fn reset_discards_unsent_data_on_the_sender() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("bulk", Grant::full());
    let now = pair.now;
    for i in 0..3u8 {
        pair.client.conn.send(now, id, msg(1000, i)).unwrap();
    }
    assert_eq!(pair.client.conn.stats().send_buffered, 3 * (1000 + 64));
    pair.client
        .conn
        .reset(now, id, CloseCode::CANCELLED, "")
        .unwrap();
    assert_eq!(pair.client.conn.stats().send_buffered, 0);
    pair.drive();
    // Only the RESET went out: the server never saw a message.
    assert_eq!(pair.server.conn.stats().messages_received, 0);
    assert_eq!(
        pair.server.take_closed(id).map(|c| c.0),
        Some(CloseCode::CANCELLED)
    );
    assert_released(&pair);
}

#[test]
fn revoke_ends_the_session_with_4007_on_the_peer() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("account", Grant::full());
    let other = pair.open_accepted("account", Grant::full());
    let now = pair.now;
    pair.client.conn.send(now, id, msg(10, 1)).unwrap();
    pair.drive();
    pair.server.conn.revoke(now, id, "token expired").unwrap();
    pair.drive();
    assert_eq!(
        pair.client.take_closed(id),
        Some((CloseCode::REVOKED, Initiator::Peer))
    );
    assert_eq!(
        pair.server.take_closed(id),
        Some((CloseCode::REVOKED, Initiator::Local))
    );
    // Nothing more is delivered or sent on it.
    assert_eq!(pair.server.conn.recv(now, id), None);
    assert_eq!(
        pair.client.conn.send(now, id, msg(1, 0)),
        Err(SendError::UnknownSession(id))
    );
    // The other session is untouched.
    pair.client.conn.send(now, other, msg(4, 4)).unwrap();
    pair.drive();
    assert_eq!(pair.server.recv_all(now, other), vec![msg(4, 4)]);
}

#[test]
fn every_way_of_ending_a_session_releases_its_state() {
    let mut pair = Pair::connected();
    let now = pair.now;
    let reserved_per_session = pair.client.conn.recv_reserved();
    assert_eq!(reserved_per_session, 0);

    let a = pair.open_accepted("a", Grant::full());
    let b = pair.open_accepted("b", Grant::full());
    let c = pair.open_accepted("c", Grant::full());
    let d = pair.open_accepted("d", Grant::full());
    // Default window: 64 messages × 64 overhead + 64 KiB, per session, on each side.
    assert_eq!(pair.server.conn.recv_reserved(), 4 * (64 * 64 + 65_536));
    for id in [a, b, c, d] {
        pair.client.conn.send(now, id, msg(500, 1)).unwrap();
        pair.server.conn.send(now, id, msg(700, 2)).unwrap();
    }
    pair.drive();
    // a: graceful close with unread data on the peer; b: reset; c: revoke; d: half-closes.
    pair.client
        .conn
        .close_session(now, a, CloseCode::NORMAL, "")
        .unwrap();
    pair.client
        .conn
        .reset(now, b, CloseCode::CANCELLED, "")
        .unwrap();
    pair.server.conn.revoke(now, c, "").unwrap();
    pair.client.conn.finish(now, d).unwrap();
    pair.server.conn.finish(now, d).unwrap();
    pair.drive();
    for id in [a, d] {
        pair.server.recv_all(now, id);
        pair.client.recv_all(now, id);
    }
    pair.drive();
    assert_released(&pair);
    assert_eq!(pair.client.conn.tombstone_count(), 4);
}

#[test]
fn a_peer_close_with_a_message_half_received_releases_everything() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(1, Grant::full());
    // One complete message, then the first fragment of a second, then CLOSE.
    peer.send([
        frames::data(1, b"complete", true),
        frames::data(1, &[9u8; 2048], false),
        frames::close(1, CloseCode::NORMAL),
    ]);
    assert_alive(&peer);
    assert_eq!(
        peer.conn.session_count(),
        1,
        "the complete message is unread"
    );
    assert_eq!(
        peer.conn.recv(peer.now, id),
        Some(Bytes::from_static(b"complete"))
    );
    assert_eq!(peer.conn.recv(peer.now, id), None);
    peer.collect();
    assert_eq!(
        peer.take_closed(id),
        Some((CloseCode::NORMAL, Initiator::Peer))
    );
    assert_eq!(peer.conn.session_count(), 0);
    assert_eq!(peer.conn.stats().recv_buffered, 0);
    assert_eq!(peer.conn.recv_reserved(), 0);
}

#[test]
fn a_peer_close_discards_what_this_side_had_queued() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(1, Grant::full());
    // Queued, not yet transmitted, when the peer's data and CLOSE arrive.
    for i in 0..3u8 {
        peer.conn.send(peer.now, id, msg(300, i)).unwrap();
    }
    assert_eq!(peer.conn.stats().send_buffered, 3 * (300 + 64));
    peer.send([
        frames::data(1, b"last words", true),
        frames::close(1, CloseCode::NORMAL),
    ]);
    assert!(peer.take_data(id).is_empty(), "sent after the peer's CLOSE");
    assert_eq!(peer.conn.stats().send_buffered, 0);
    assert_eq!(
        peer.conn.recv(peer.now, id),
        Some(Bytes::from_static(b"last words"))
    );
    assert_eq!(
        peer.take_closed(id),
        Some((CloseCode::NORMAL, Initiator::Peer))
    );
    assert_eq!(peer.conn.stats().send_buffered, 0);
    assert_eq!(peer.conn.stats().recv_buffered, 0);
}

#[test]
fn a_reset_with_a_message_half_received_releases_everything() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(1, Grant::full());
    peer.send([
        frames::data(1, b"complete", true),
        frames::data(1, &[9u8; 2048], false),
    ]);
    assert_eq!(peer.conn.stats().recv_buffered, 8 + 64 + 2048 + 64);
    peer.send([frames::reset(1, CloseCode::CANCELLED)]);
    assert_eq!(
        peer.take_closed(id),
        Some((CloseCode::CANCELLED, Initiator::Peer))
    );
    assert_eq!(peer.conn.stats().recv_buffered, 0);
    assert_eq!(peer.conn.recv_reserved(), 0);
}

#[test]
fn tombstones_are_bounded_by_max_tombstones() {
    let server = config(|c| c.limits.max_tombstones = 4);
    let mut peer = RawPeer::server(server);
    for i in 0..10u32 {
        let id = 2 * i + 1;
        peer.open_accepted(id, Grant::full());
        peer.send([frames::reset(id, CloseCode::CANCELLED)]);
    }
    assert_eq!(peer.conn.session_count(), 0);
    assert_eq!(peer.conn.tombstone_count(), 4);
    // A late frame for an evicted tombstone is still absorbed (it is charged instead).
    let charged = peer.conn.stats().control_frames_charged;
    peer.send([frames::data(1, b"late", true)]);
    assert_alive(&peer);
    assert_eq!(peer.conn.stats().late_frames, 1);
    assert_eq!(peer.conn.stats().control_frames_charged, charged + 1);
}

#[test]
fn tombstones_expire_after_their_ttl() {
    let server = config(|c| c.timeouts.tombstone_ttl = ms(10_000));
    let mut peer = RawPeer::server(server);
    peer.open_accepted(1, Grant::full());
    peer.send([frames::reset(1, CloseCode::CANCELLED)]);
    assert_eq!(peer.conn.tombstone_count(), 1);
    let expiry = peer.conn.poll_timeout().unwrap();
    assert!(expiry <= peer.now + ms(10_000));
    peer.advance(ms(9_999));
    assert_eq!(peer.conn.tombstone_count(), 1);
    peer.advance(ms(1));
    assert_eq!(peer.conn.tombstone_count(), 0);
    assert_alive(&peer);
}

#[test]
fn late_frames_for_closed_sessions_are_absorbed() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(1, Grant::full());
    peer.conn
        .reset(peer.now, id, CloseCode::CANCELLED, "")
        .unwrap();
    peer.collect();
    assert!(peer.take_reset(id).is_some());
    assert!(peer.take_closed(id).is_some());

    // The peer had these in flight when our RESET crossed them.
    peer.send([
        frames::data(1, b"in flight", true),
        frames::credit(1, 1, 100),
        frames::close(1, CloseCode::NORMAL),
        frames::reset(1, CloseCode::CANCELLED),
    ]);
    assert_alive(&peer);
    assert!(peer.received.is_empty(), "{:?}", peer.received);
    assert_eq!(peer.conn.stats().late_frames, 4);
    assert!(peer.events.is_empty(), "{:?}", peer.events);

    // After the tombstone is gone the frames are still discarded.
    peer.advance(peer.conn.config().timeouts.tombstone_ttl);
    assert_eq!(peer.conn.tombstone_count(), 0);
    peer.send([frames::data(1, b"very late", true)]);
    assert_alive(&peer);
    assert_eq!(peer.conn.stats().late_frames, 5);
}

#[test]
fn late_data_within_the_tombstone_is_free() {
    let mut peer = RawPeer::server(Default::default());
    peer.open_accepted(1, Grant::full());
    peer.send([frames::reset(1, CloseCode::CANCELLED)]);
    let charged = peer.conn.stats().control_frames_charged;
    let late: Vec<Frame> = (0..50).map(|_| frames::data(1, b"x", true)).collect();
    peer.send(late);
    assert_alive(&peer);
    assert_eq!(peer.conn.stats().control_frames_charged, charged);
    assert_eq!(peer.conn.stats().late_frames, 50);
}

#[test]
fn late_control_frames_are_charged_once() {
    let mut peer = RawPeer::server(Default::default());
    peer.open_accepted(1, Grant::full());
    peer.send([frames::reset(1, CloseCode::CANCELLED)]);
    // With the tombstone: a CREDIT costs what any control frame costs.
    let before = peer.conn.stats().control_frames_charged;
    peer.send([frames::credit(1, 1, 1)]);
    assert_eq!(peer.conn.stats().control_frames_charged, before + 1);
    // Without it: still one charge, not two.
    peer.advance(peer.conn.config().timeouts.tombstone_ttl);
    let before = peer.conn.stats().control_frames_charged;
    peer.send([frames::credit(1, 1, 1)]);
    assert_eq!(peer.conn.stats().control_frames_charged, before + 1);
    assert_alive(&peer);
}

#[test]
fn ending_a_session_twice_is_refused_locally() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("x", Grant::full());
    let now = pair.now;
    pair.client
        .conn
        .reset(now, id, CloseCode::CANCELLED, "")
        .unwrap();
    assert_eq!(
        pair.client.conn.reset(now, id, CloseCode::CANCELLED, ""),
        Err(SessionError::UnknownSession(id))
    );
    assert_eq!(
        pair.client
            .conn
            .close_session(now, id, CloseCode::NORMAL, ""),
        Err(SessionError::UnknownSession(id))
    );
    // Codes that may not go on the wire are refused.
    let other = pair.open_accepted("y", Grant::full());
    assert_eq!(
        pair.client.conn.reset(now, other, CloseCode(1005), ""),
        Err(SessionError::InvalidCode(CloseCode(1005)))
    );
}

#[test]
fn a_session_message_is_one_frame_with_end_when_it_fits() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(1, Grant::full());
    peer.conn.send(peer.now, id, msg(100, 3)).unwrap();
    peer.collect();
    let data = peer.take_data(id);
    assert_eq!(data.len(), 1);
    assert!(data[0].end && !data[0].fin);
    assert_eq!(data[0].payload, msg(100, 3));
}
