#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! The basic story: connect, open, accept, exchange messages, close.

use bytes::Bytes;
use mux_proto::testing::Pair;
use mux_proto::{CloseCode, Event, Grant, Initiator};

#[test]
fn open_accept_send_receive_close() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("chat", Grant::full());
    let now = pair.now;
    pair.client
        .conn
        .send(now, id, Bytes::from_static(b"hello"))
        .unwrap();
    pair.server
        .conn
        .send(now, id, Bytes::from_static(b"world"))
        .unwrap();
    pair.drive();
    assert_eq!(
        pair.client.recv_all(now, id),
        vec![Bytes::from_static(b"world")]
    );
    assert!(pair
        .server
        .take_event(|e| matches!(e, Event::Readable { id: i } if *i == id))
        .is_some());
    assert_eq!(
        pair.server.recv_all(now, id),
        vec![Bytes::from_static(b"hello")]
    );
    pair.client
        .conn
        .close_session(now, id, CloseCode::NORMAL, "bye")
        .unwrap();
    pair.drive();
    let closed = pair
        .server
        .take_event(|e| matches!(e, Event::SessionClosed { .. }))
        .unwrap();
    assert!(
        matches!(
            closed,
            Event::SessionClosed {
                code: CloseCode::NORMAL,
                initiator: Initiator::Peer,
                ..
            }
        ),
        "{closed:?}"
    );
    assert_eq!(pair.server.conn.session_count(), 0);
    assert_eq!(pair.client.conn.session_count(), 0);
}

#[test]
fn large_message_is_fragmented_and_reassembled() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("bulk", Grant::full());
    let big: Vec<u8> = (0..60_000u32).map(|i| i as u8).collect();
    pair.client
        .conn
        .send(pair.now, id, Bytes::from(big.clone()))
        .unwrap();
    pair.drive();
    let got = pair.server.recv_all(pair.now, id);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0][..], &big[..]);
}

#[test]
fn credit_returns_as_the_application_reads() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("stream", Grant::full());
    // 64 messages of credit by default: send 200, read as they come.
    let mut sent = 0;
    let mut received = 0;
    while received < 200 {
        while sent < 200
            && pair
                .client
                .conn
                .send(pair.now, id, Bytes::from(vec![1u8; 100]))
                .is_ok()
        {
            sent += 1;
        }
        pair.drive();
        received += pair.server.recv_all(pair.now, id).len();
    }
    assert_eq!(received, 200);
}

/// `shrink_to_fit` only gives memory back: sessions carry on as before on both sides,
/// whether it is called between messages or with work queued.
#[test]
fn shrinking_the_queues_changes_nothing_observable() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("chat", Grant::full());
    let now = pair.now;
    pair.client.conn.shrink_to_fit();
    pair.server.conn.shrink_to_fit();
    pair.client
        .conn
        .send(now, id, Bytes::from_static(b"one"))
        .unwrap();
    // Queued and not yet sent: shrinking must keep it.
    pair.client.conn.shrink_to_fit();
    pair.drive();
    pair.server.conn.shrink_to_fit();
    assert_eq!(
        pair.server.recv_all(now, id),
        vec![Bytes::from_static(b"one")]
    );
    pair.server.conn.shrink_to_fit();
    pair.server
        .conn
        .send(now, id, Bytes::from_static(b"two"))
        .unwrap();
    pair.drive();
    assert_eq!(
        pair.client.recv_all(now, id),
        vec![Bytes::from_static(b"two")]
    );
    assert!(pair.client.conn.is_open() && pair.server.conn.is_open());
}
