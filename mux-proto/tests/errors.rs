#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Connection errors at the transport level: text and empty messages, malformed frames in
//! the middle of a message, the SETTINGS handshake, and what happens after a close.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::msg;
use mux_proto::frame::{encode_message, Frame, Settings};
use mux_proto::testing::{frames, Pair, RawPeer};
use mux_proto::{CloseCode, Config, Connection, Event, Grant, Initiator, Side, Timestamp};

fn conn_closed_event(peer: &mut RawPeer) -> Option<(CloseCode, Initiator)> {
    match peer.take_event(|e| matches!(e, Event::ConnectionClosed { .. }))? {
        Event::ConnectionClosed {
            code, initiator, ..
        } => Some((code, initiator)),
        _ => None,
    }
}

#[test]
fn a_text_message_closes_the_connection_with_1003() {
    let mut peer = RawPeer::server(Default::default());
    peer.conn.handle_text_message(peer.now);
    peer.collect();
    assert_eq!(peer.conn_close_code(), Some(CloseCode::UNSUPPORTED_DATA));
    assert_eq!(
        conn_closed_event(&mut peer),
        Some((CloseCode::UNSUPPORTED_DATA, Initiator::Local))
    );
}

#[test]
fn an_empty_message_closes_the_connection_with_1002() {
    let mut peer = RawPeer::server(Default::default());
    peer.send_bytes(Bytes::new());
    assert_eq!(peer.conn_close_code(), Some(CloseCode::PROTOCOL_ERROR));
}

#[test]
fn frames_before_a_malformed_frame_take_effect_and_the_rest_is_dropped() {
    let mut peer = RawPeer::server(Default::default());
    let mut wire = encode_message(&[frames::open(1, "chat"), frames::data(1, b"before", true)]);
    // An unassigned frame type (0xb), then a frame that would have been fine.
    wire.put_slice(&[0x1b, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    frames::open(3, "after").encode(&mut wire);
    peer.send_bytes(wire.freeze());

    assert_eq!(peer.conn_close_code(), Some(CloseCode::PROTOCOL_ERROR));
    // The OPEN and the DATA before the bad frame were processed...
    assert!(peer
        .events
        .iter()
        .any(|e| matches!(e, Event::Incoming { id, .. } if id.0 == 1)));
    assert_eq!(peer.conn.stats().messages_received, 1);
    assert_eq!(peer.conn.stats().bytes_received, 6);
    // ...the OPEN after it was not.
    assert!(!peer
        .events
        .iter()
        .any(|e| matches!(e, Event::Incoming { id, .. } if id.0 == 3)));
    assert_eq!(peer.conn.stats().frames_received, 1 + 2);
}

#[test]
fn a_truncated_frame_mid_message_is_a_protocol_error() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(1, Grant::full());
    let mut wire = encode_message(&[frames::data(1, b"ok", true)]);
    let mut tail = BytesMut::new();
    frames::data(1, b"cut short", true).encode(&mut tail);
    wire.put_slice(&tail[..tail.len() - 3]);
    peer.send_bytes(wire.freeze());
    assert_eq!(peer.conn_close_code(), Some(CloseCode::PROTOCOL_ERROR));
    assert_eq!(peer.conn.stats().messages_received, 1);
    // The connection is gone, and so is everything it held.
    assert_eq!(peer.conn.recv(peer.now, id), None);
    assert_eq!(peer.conn.stats().recv_buffered, 0);
}

#[test]
fn invalid_utf8_in_a_kind_closes_with_1007() {
    let mut peer = RawPeer::server(Default::default());
    let mut wire = BytesMut::new();
    // OPEN header: type 1, session 1, length 15 + 2.
    wire.put_slice(&[0x11, 0, 0, 0, 0, 1, 0, 0, 0, 17]);
    wire.put_slice(&[0; 12]);
    wire.put_u8(2);
    wire.put_slice(&[0xff, 0xfe]);
    wire.put_u16(0);
    peer.send_bytes(wire.freeze());
    assert_eq!(peer.conn_close_code(), Some(CloseCode::INVALID_DATA));
}

#[test]
fn a_reset_with_a_code_not_valid_on_the_wire_closes_with_1002() {
    let mut peer = RawPeer::server(Default::default());
    peer.open_accepted(1, Grant::full());
    let mut wire = BytesMut::new();
    wire.put_slice(&[0x15, 0, 0, 0, 0, 1, 0, 0, 0, 6]);
    wire.put_u16(1006);
    wire.put_u32(0);
    peer.send_bytes(wire.freeze());
    assert_eq!(peer.conn_close_code(), Some(CloseCode::PROTOCOL_ERROR));
}

#[test]
fn a_pure_fin_inside_a_message_is_a_session_error() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(1, Grant::full());
    peer.send([frames::data(1, &[0u8; 1024], false), frames::fin(1)]);
    assert_eq!(
        peer.take_reset(id).map(|r| r.code),
        Some(CloseCode::PROTOCOL_ERROR)
    );
    assert!(peer.conn.is_open());
}

#[test]
fn data_after_fin_is_a_session_error() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(1, Grant::full());
    peer.send([frames::data_fin(1, b"last"), frames::data(1, b"more", true)]);
    assert_eq!(
        peer.take_reset(id).map(|r| r.code),
        Some(CloseCode::PROTOCOL_ERROR)
    );
    assert!(peer.conn.is_open());
}

#[test]
fn an_empty_message_on_a_session_is_delivered() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(1, Grant::full());
    peer.send([frames::data(1, b"", true)]);
    assert_eq!(peer.conn.recv(peer.now, id), Some(Bytes::new()));
}

// ---- the handshake ----------------------------------------------------------------------

fn fresh(side: Side) -> (Connection, Timestamp) {
    let now = Timestamp::from_millis(1);
    (Connection::new(side, Config::default(), now), now)
}

fn output(conn: &mut Connection, now: Timestamp) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    while conn.poll_transmit(now, &mut buf) {
        out.extend(mux_proto::frame::decode_message(buf.split().freeze()).unwrap());
    }
    out
}

#[test]
fn a_frame_before_settings_closes_with_1002() {
    let (mut conn, now) = fresh(Side::Server);
    conn.handle_message(now, encode_message(&[frames::ping(1)]).freeze());
    assert_eq!(conn.close_code(), Some(CloseCode::PROTOCOL_ERROR));
}

#[test]
fn a_second_settings_closes_with_1002() {
    let (mut conn, now) = fresh(Side::Server);
    let settings = Frame::Settings(Settings::default());
    conn.handle_message(
        now,
        encode_message(std::slice::from_ref(&settings)).freeze(),
    );
    assert!(conn.is_open());
    conn.handle_message(now, encode_message(&[settings]).freeze());
    assert_eq!(conn.close_code(), Some(CloseCode::PROTOCOL_ERROR));
}

#[test]
fn settings_is_the_first_frame_sent_and_nothing_else_goes_before_the_peers() {
    let (mut conn, now) = fresh(Side::Client);
    assert_eq!(
        conn.open(now, "x", Bytes::new(), Default::default()),
        Err(mux_proto::OpenError::NotOpen)
    );
    let out = output(&mut conn, now);
    assert!(matches!(&out[..], [Frame::Settings(_)]), "{out:?}");
}

// ---- closing ----------------------------------------------------------------------------

#[test]
fn the_application_close_is_the_last_frame_and_ends_every_session() {
    let mut pair = Pair::connected();
    let a = pair.open_accepted("a", Grant::full());
    let now = pair.now;
    pair.client.conn.send(now, a, msg(10, 0)).unwrap();
    pair.client.conn.close(now, CloseCode::NORMAL, "bye");
    assert_eq!(pair.client.conn.session_count(), 0);
    assert_eq!(pair.client.conn.stats().send_buffered, 0);
    pair.drive();
    assert!(pair.client.conn.is_closed());
    assert_eq!(
        pair.server.take_conn_closed(),
        Some((CloseCode::NORMAL, Initiator::Peer))
    );
    // The queued message was not sent after the CONN_CLOSE.
    assert_eq!(pair.server.conn.stats().messages_received, 0);
    assert_eq!(pair.server.conn.session_count(), 0);
    assert!(pair.server.conn.is_closed());
}

#[test]
fn nothing_is_processed_or_sent_after_a_connection_error() {
    let mut peer = RawPeer::server(Default::default());
    peer.send([frames::open(2, "wrong parity")]);
    assert!(peer.conn.is_closed());
    let received = peer.conn.stats().frames_received;
    peer.received.clear();
    peer.send([frames::ping(1), frames::open(1, "x")]);
    peer.conn.handle_text_message(peer.now);
    peer.advance(std::time::Duration::from_secs(3600));
    assert!(peer.received.is_empty(), "{:?}", peer.received);
    assert_eq!(peer.conn.stats().frames_received, received);
    assert_eq!(peer.conn.close_code(), Some(CloseCode::PROTOCOL_ERROR));
}

#[test]
fn a_peer_conn_close_ends_everything_without_a_reply() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(1, Grant::full());
    peer.send([frames::conn_close(CloseCode::TRY_AGAIN_LATER)]);
    assert!(peer.received.is_empty(), "{:?}", peer.received);
    assert!(peer.conn.is_closed());
    assert_eq!(
        conn_closed_event(&mut peer),
        Some((CloseCode::TRY_AGAIN_LATER, Initiator::Peer))
    );
    assert_eq!(peer.conn.session_phase(id), None);
    assert_eq!(peer.conn.recv_reserved(), 0);
}

#[test]
fn a_transport_that_ends_without_conn_close_is_abnormal() {
    let mut peer = RawPeer::server(Default::default());
    peer.open_accepted(1, Grant::full());
    peer.conn.handle_transport_closed(peer.now);
    peer.collect();
    assert!(peer.received.is_empty());
    assert_eq!(
        conn_closed_event(&mut peer),
        Some((CloseCode::ABNORMAL, Initiator::Peer))
    );
    assert_eq!(peer.conn.session_count(), 0);
}

/// Shedding load: CONN_CLOSE 1013 carries the retry hint the caller gave, so the peer
/// knows when to come back (spec/close-codes.md).
#[test]
fn a_close_with_a_retry_hint_sends_it_in_conn_close() {
    let mut peer = RawPeer::server(Default::default());
    let now = peer.now;
    peer.conn
        .close_retry_after(now, CloseCode::TRY_AGAIN_LATER, "overloaded", 1500);
    peer.collect();
    let close = peer.received.iter().find_map(|f| match f {
        Frame::ConnClose(c) => Some(c.clone()),
        _ => None,
    });
    let close = close.expect("a CONN_CLOSE");
    assert_eq!(close.code, CloseCode::TRY_AGAIN_LATER);
    assert_eq!(close.retry_after_ms, 1500);
    // A plain close says nothing about retrying.
    let mut other = RawPeer::server(Default::default());
    let now = other.now;
    other
        .conn
        .close(now, CloseCode::TRY_AGAIN_LATER, "overloaded");
    other.collect();
    assert!(other
        .received
        .iter()
        .any(|f| matches!(f, Frame::ConnClose(c) if c.retry_after_ms == 0)));
}
