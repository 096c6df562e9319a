#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Per-session authorization: what the application sees of an OPEN, grants and their
//! permissions, early data, rejection, the authorization deadline and the pending-open cap.

mod common;

use bytes::Bytes;
use common::{assert_alive, config, ms, msg, resets};
use mux_proto::frame::{Frame, OpenRequest, Permissions, Setting, Settings};
use mux_proto::testing::{frames, Pair, RawPeer};
use mux_proto::{
    CloseCode, Credential, Event, Grant, Initiator, Phase, SendError, SessionError, SessionId, Side,
};

#[test]
fn incoming_carries_the_kind_the_credentials_and_the_request() {
    let mut peer = RawPeer::server(Default::default());
    let request = OpenRequest {
        max_message_size: 4096,
        messages_per_sec: 10,
        bytes_per_sec: 40_960,
    };
    peer.send([
        frames::open_with_auth(1, "prices.eur", b"bearer abc"),
        frames::open_with_request(3, "prices.usd", request),
    ]);
    match peer.events.pop_front() {
        Some(Event::Incoming {
            id,
            kind,
            auth,
            request,
        }) => {
            assert_eq!(id, SessionId(1));
            assert_eq!(kind.as_str(), "prices.eur");
            assert_eq!(auth, Credential::from_static(b"bearer abc"));
            assert_eq!(request, OpenRequest::default());
        }
        other => panic!("{other:?}"),
    }
    match peer.events.pop_front() {
        Some(Event::Incoming {
            id,
            request: got,
            auth,
            ..
        }) => {
            assert_eq!(id, SessionId(3));
            assert_eq!(got, request);
            assert!(auth.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // Nothing is answered until the application decides.
    assert!(peer.received.is_empty(), "{:?}", peer.received);
    assert_eq!(peer.conn.pending_open_count(), 2);
}

#[test]
fn the_accept_carries_the_grant() {
    let mut peer = RawPeer::server(Default::default());
    peer.send([frames::open(1, "x")]);
    let grant = Grant::receive_only().with_max_message_size(1000);
    peer.conn.accept(peer.now, SessionId(1), grant).unwrap();
    peer.collect();
    match peer.received.pop_front() {
        Some(Frame::Accept(a)) => {
            assert_eq!(a.session_id, SessionId(1));
            assert_eq!(a.permissions, Permissions::RECEIVE);
            assert_eq!(a.max_message_size, 1000);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn data_on_a_receive_only_session_resets_that_session_only() {
    let mut peer = RawPeer::server(Default::default());
    let ro = peer.open_accepted(1, Grant::receive_only());
    let rw = peer.open_accepted(3, Grant::full());
    // The server may still send on the receive-only session.
    peer.conn.send(peer.now, ro, msg(3, 1)).unwrap();
    peer.collect();
    assert_eq!(peer.take_data(ro).len(), 1);

    peer.send([
        frames::data(1, b"not allowed", true),
        frames::data(3, b"fine", true),
    ]);
    assert_alive(&peer);
    assert_eq!(resets(&peer), vec![(ro, 1008)]);
    assert_eq!(
        peer.take_closed(ro),
        Some((CloseCode::POLICY_VIOLATION, Initiator::Local))
    );
    assert_eq!(peer.conn.recv(peer.now, ro), None);
    assert_eq!(
        peer.conn.recv(peer.now, rw),
        Some(Bytes::from_static(b"fine"))
    );
    assert_eq!(peer.conn.session_phase(rw), Some(Phase::Open));
}

#[test]
fn the_opener_of_a_receive_only_session_may_not_send() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("ticker", Grant::receive_only());
    let now = pair.now;
    assert_eq!(
        pair.client.conn.send(now, id, msg(1, 0)),
        Err(SendError::NotPermitted)
    );
    pair.server.conn.send(now, id, msg(8, 8)).unwrap();
    pair.drive();
    assert_eq!(pair.client.recv_all(now, id), vec![msg(8, 8)]);
}

#[test]
fn the_acceptor_of_a_send_only_session_may_not_send() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("upload", Grant::send_only());
    let now = pair.now;
    assert_eq!(
        pair.server.conn.send(now, id, msg(1, 0)),
        Err(SendError::NotPermitted)
    );
    pair.client.conn.send(now, id, msg(8, 8)).unwrap();
    pair.drive();
    assert_eq!(pair.server.recv_all(now, id), vec![msg(8, 8)]);
}

#[test]
fn data_from_an_acceptor_that_granted_itself_no_sending_resets_the_session() {
    // The connection is the opener; the raw server accepts with SEND only (it will not
    // send), then sends anyway.
    let mut client = RawPeer::new(Side::Client, Default::default());
    let id = client
        .conn
        .open(client.now, "upload", Bytes::new(), OpenRequest::default())
        .unwrap();
    client.collect();
    client.received.clear();
    client.send([
        frames::accept(1, Permissions::SEND, 65_536),
        frames::data(1, b"sneaky", true),
    ]);
    assert_alive(&client);
    assert_eq!(
        client.take_reset(id).map(|r| r.code),
        Some(CloseCode::POLICY_VIOLATION)
    );
}

#[test]
fn early_data_is_held_until_accept_and_then_delivered() {
    let mut peer = RawPeer::server(Default::default());
    peer.send([
        frames::open(1, "chat"),
        frames::data(1, b"first", true),
        frames::data(1, b"second", true),
    ]);
    let id = SessionId(1);
    assert!(peer
        .take_event(|e| matches!(e, Event::Incoming { .. }))
        .is_some());
    // Held, not readable: the application has not authorized the session.
    assert!(peer.events.is_empty(), "{:?}", peer.events);
    assert_eq!(peer.conn.recv(peer.now, id), None);
    assert_eq!(peer.conn.stats().recv_buffered, 5 + 6 + 2 * 64);

    peer.conn.accept(peer.now, id, Grant::full()).unwrap();
    peer.collect();
    assert!(peer
        .take_event(|e| matches!(e, Event::Readable { id: i } if *i == id))
        .is_some());
    assert_eq!(
        peer.conn.recv(peer.now, id),
        Some(Bytes::from_static(b"first"))
    );
    assert_eq!(
        peer.conn.recv(peer.now, id),
        Some(Bytes::from_static(b"second"))
    );
    assert_eq!(peer.conn.recv(peer.now, id), None);
}

#[test]
fn an_early_half_close_is_reported_after_accept() {
    let mut peer = RawPeer::server(Default::default());
    peer.send([frames::open(1, "x"), frames::data_fin(1, b"only")]);
    let id = SessionId(1);
    assert!(!peer
        .events
        .iter()
        .any(|e| matches!(e, Event::Finished { .. })));
    peer.conn.accept(peer.now, id, Grant::full()).unwrap();
    peer.collect();
    assert!(peer
        .take_event(|e| matches!(e, Event::Finished { id: i } if *i == id))
        .is_some());
    assert_eq!(
        peer.conn.recv(peer.now, id),
        Some(Bytes::from_static(b"only"))
    );
}

#[test]
fn early_data_flows_end_to_end_within_the_initial_credit() {
    let mut pair = Pair::connected();
    let now = pair.now;
    let id = pair
        .client
        .conn
        .open(now, "chat", Bytes::new(), OpenRequest::default())
        .unwrap();
    // Sent right after OPEN, before any ACCEPT.
    pair.client.conn.send(now, id, msg(10, 1)).unwrap();
    pair.client.conn.send(now, id, msg(10, 2)).unwrap();
    pair.drive();
    assert_eq!(pair.server.take_incoming(), vec![id]);
    assert_eq!(
        pair.server
            .conn
            .session_stats(id)
            .unwrap()
            .recv_queued_messages,
        2
    );
    assert_eq!(pair.server.conn.recv(now, id), None);
    pair.server.conn.accept(now, id, Grant::full()).unwrap();
    pair.drive();
    assert_eq!(pair.server.recv_all(now, id), vec![msg(10, 1), msg(10, 2)]);
}

#[test]
fn a_rejection_resets_with_the_apps_code_and_discards_early_data() {
    let mut peer = RawPeer::server(Default::default());
    peer.send([
        frames::open_with_auth(1, "admin", b"bad token"),
        frames::data(1, &[7u8; 5000], true),
    ]);
    let id = SessionId(1);
    assert!(peer.conn.stats().recv_buffered > 0);
    peer.conn
        .reject(peer.now, id, CloseCode::UNAUTHORIZED, "invalid token")
        .unwrap();
    peer.collect();
    let reset = peer.take_reset(id).expect("RESET");
    assert_eq!(reset.code, CloseCode::UNAUTHORIZED);
    assert_eq!(reset.reason.as_str(), "invalid token");
    assert_eq!(peer.conn.recv(peer.now, id), None);
    assert_eq!(peer.conn.stats().recv_buffered, 0);
    assert_eq!(peer.conn.recv_reserved(), 0);
    assert_eq!(peer.conn.session_count(), 0);
    assert_alive(&peer);
}

#[test]
fn early_data_on_a_session_granted_receive_only_resets_it_with_1008() {
    let mut peer = RawPeer::server(Default::default());
    peer.send([frames::open(1, "feed"), frames::data(1, b"early", true)]);
    let id = SessionId(1);
    peer.conn
        .accept(peer.now, id, Grant::receive_only())
        .unwrap();
    peer.collect();
    // ACCEPT went out, then the RESET: the peer learns the grant and the violation.
    assert!(matches!(peer.received.pop_front(), Some(Frame::Accept(_))));
    assert_eq!(
        peer.take_reset(id).map(|r| r.code),
        Some(CloseCode::POLICY_VIOLATION)
    );
    assert!(!peer
        .events
        .iter()
        .any(|e| matches!(e, Event::Readable { .. })));
    assert_eq!(peer.conn.stats().recv_buffered, 0);
}

#[test]
fn early_data_larger_than_the_grant_resets_it_with_1009() {
    let mut peer = RawPeer::server(Default::default());
    peer.send([frames::open(1, "x"), frames::data(1, &[0u8; 101], true)]);
    let id = SessionId(1);
    peer.conn
        .accept(peer.now, id, Grant::full().with_max_message_size(100))
        .unwrap();
    peer.collect();
    assert_eq!(
        peer.take_reset(id).map(|r| r.code),
        Some(CloseCode::MESSAGE_TOO_BIG)
    );
    assert_eq!(peer.conn.stats().recv_buffered, 0);
}

#[test]
fn an_unanswered_open_is_refused_with_4006_at_the_authorization_deadline() {
    let server = config(|c| c.timeouts.authorization = ms(5_000));
    let mut peer = RawPeer::server(server);
    peer.send([frames::open(1, "slow"), frames::data(1, b"early", true)]);
    let id = SessionId(1);
    peer.events.clear();
    peer.advance(ms(4_999));
    assert_eq!(peer.conn.session_phase(id), Some(Phase::Pending));
    assert!(peer.take_reset(id).is_none());

    peer.advance(ms(1));
    let reset = peer.take_reset(id).expect("RESET at the deadline");
    assert_eq!(reset.code, CloseCode::TIMEOUT);
    assert_eq!(
        peer.take_closed(id),
        Some((CloseCode::TIMEOUT, Initiator::Local))
    );
    assert_eq!(peer.conn.session_count(), 0);
    assert_eq!(peer.conn.stats().recv_buffered, 0);
    assert_eq!(peer.conn.stats().opens_refused, 1);
    assert_alive(&peer);
    // Too late to decide now.
    assert_eq!(
        peer.conn.accept(peer.now, id, Grant::full()),
        Err(SessionError::UnknownSession(id))
    );
}

#[test]
fn the_authorization_deadline_spares_sessions_already_decided() {
    let server = config(|c| c.timeouts.authorization = ms(1_000));
    let mut peer = RawPeer::server(server);
    peer.send([frames::open(1, "a"), frames::open(3, "b")]);
    peer.conn
        .accept(peer.now, SessionId(1), Grant::full())
        .unwrap();
    peer.advance(ms(1_000));
    assert_eq!(resets(&peer), vec![(SessionId(3), 4006)]);
    assert_eq!(peer.conn.session_phase(SessionId(1)), Some(Phase::Open));
}

#[test]
fn pending_opens_are_capped_and_the_connection_lives() {
    let server = config(|c| c.limits.max_pending_opens = 3);
    let mut peer = RawPeer::server(server);
    peer.send([
        frames::open(1, "a"),
        frames::open(3, "b"),
        frames::open(5, "c"),
    ]);
    assert!(peer.received.is_empty(), "at the cap: {:?}", peer.received);
    assert_eq!(peer.conn.pending_open_count(), 3);

    peer.send([frames::open(7, "d")]);
    assert_alive(&peer);
    assert_eq!(resets(&peer), vec![(SessionId(7), 4003)]);
    assert_eq!(peer.conn.pending_open_count(), 3);
    // The application never saw the refused one.
    assert!(!peer
        .events
        .iter()
        .any(|e| matches!(e, Event::Incoming { id, .. } if id.0 == 7)));

    // Deciding one frees a slot.
    peer.received.clear();
    peer.conn
        .accept(peer.now, SessionId(1), Grant::full())
        .unwrap();
    peer.send([frames::open(9, "e")]);
    assert!(peer.take_reset(SessionId(9)).is_none());
    assert_eq!(peer.conn.pending_open_count(), 3);
}

#[test]
fn messages_queued_before_accept_over_the_granted_maximum_are_never_sent() {
    // The raw server's initial window holds one message: the second waits in the queue.
    let settings = Settings::default().with(Setting::InitialCreditMessages, 1);
    let mut client = RawPeer::with_settings(Side::Client, Default::default(), settings);
    let id = client
        .conn
        .open(client.now, "upload", Bytes::new(), OpenRequest::default())
        .unwrap();
    client.conn.send(client.now, id, msg(10, 1)).unwrap();
    client.conn.send(client.now, id, msg(5000, 2)).unwrap();
    client.collect();
    assert_eq!(
        client.take_data(id).len(),
        1,
        "early data within the window"
    );
    client.received.clear();

    // The grant allows 1,000 bytes: the queued 5,000-byte message may not be started.
    client.send([
        frames::accept(1, Permissions::BOTH, 1000),
        frames::credit(1, 10, 10_000),
    ]);
    assert!(client.take_data(id).is_empty(), "{:?}", client.received);
    assert_eq!(
        client.take_reset(id).map(|r| r.code),
        Some(CloseCode::MESSAGE_TOO_BIG)
    );
    assert_eq!(
        client.take_closed(id),
        Some((CloseCode::MESSAGE_TOO_BIG, Initiator::Local))
    );
    assert_eq!(client.conn.stats().send_buffered, 0);
    assert!(client.conn.is_open());
}

#[test]
fn messages_queued_before_accept_within_the_granted_maximum_are_sent() {
    let settings = Settings::default().with(Setting::InitialCreditMessages, 1);
    let mut client = RawPeer::with_settings(Side::Client, Default::default(), settings);
    let id = client
        .conn
        .open(client.now, "upload", Bytes::new(), OpenRequest::default())
        .unwrap();
    client.conn.send(client.now, id, msg(10, 1)).unwrap();
    client.conn.send(client.now, id, msg(1000, 2)).unwrap();
    client.collect();
    client.received.clear();
    client.send([
        frames::accept(1, Permissions::BOTH, 1000),
        frames::credit(1, 10, 10_000),
    ]);
    let data = client.take_data(id);
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].payload.len(), 1000);
    assert!(client.take_reset(id).is_none());
}

#[test]
fn messages_queued_before_a_receive_only_accept_are_never_sent() {
    let settings = Settings::default().with(Setting::InitialCreditMessages, 1);
    let mut client = RawPeer::with_settings(Side::Client, Default::default(), settings);
    let id = client
        .conn
        .open(client.now, "feed", Bytes::new(), OpenRequest::default())
        .unwrap();
    client.conn.send(client.now, id, msg(10, 1)).unwrap();
    client.conn.send(client.now, id, msg(10, 2)).unwrap();
    client.collect();
    client.received.clear();
    // RECEIVE only: the opener may not send.
    client.send([
        frames::accept(1, Permissions::RECEIVE, 1000),
        frames::credit(1, 10, 10_000),
    ]);
    assert!(client.take_data(id).is_empty(), "{:?}", client.received);
    assert_eq!(
        client.take_reset(id).map(|r| r.code),
        Some(CloseCode::POLICY_VIOLATION)
    );
}

#[test]
fn a_side_that_may_not_send_sends_no_fin() {
    let mut peer = RawPeer::server(Default::default());
    // The acceptor grants itself no sending (SEND only: the opener sends).
    let id = peer.open_accepted(1, Grant::send_only());
    peer.conn.finish(peer.now, id).unwrap();
    peer.collect();
    assert!(peer.take_data(id).is_empty(), "{:?}", peer.received);
    // The session goes on; the opener's data is still accepted.
    peer.send([frames::data(1, b"x", true)]);
    assert_eq!(peer.conn.recv(peer.now, id), Some(Bytes::from_static(b"x")));
    assert!(resets(&peer).is_empty());
}
