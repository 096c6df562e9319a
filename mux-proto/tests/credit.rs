#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Credit (spec/frames.md#credit): a receiver that does not read holds exactly its window,
//! credit returns when the application reads, explicit grants add to it, and a peer that
//! overruns or overflows it loses the session with 4004.

mod common;

use common::{assert_alive, config, ms, msg, resets};
use mux_proto::testing::{frames, Pair, RawPeer};
use mux_proto::{CloseCode, Event, Grant, LimitKind, SessionError, SessionId};

fn receiver_window(messages: u32) -> mux_proto::Config {
    config(|c| c.limits.initial_credit_messages = messages)
}

/// Messages the server holds unread on `id`.
fn held(pair: &Pair, id: SessionId) -> u32 {
    pair.server
        .conn
        .session_stats(id)
        .unwrap()
        .recv_queued_messages
}

#[test]
fn a_receiver_that_does_not_read_gets_exactly_its_window_of_three() {
    let mut pair = Pair::connected_with(Default::default(), receiver_window(3));
    let id = pair.open_accepted("conduit", Grant::full());
    let now = pair.now;
    for i in 0..10u8 {
        pair.client.conn.send(now, id, msg(100, i)).unwrap();
    }
    pair.drive();
    pair.advance(ms(1_000));
    assert_eq!(held(&pair, id), 3);
    assert_eq!(pair.server.conn.stats().messages_received, 3);
    let sender = pair.client.conn.session_stats(id).unwrap();
    assert_eq!(sender.messages_sent, 3);
    assert_eq!(sender.send_queued_messages, 7);
    assert_eq!(sender.send_credit.0, 0);
    assert!(sender.credit_stalls >= 1);
}

#[test]
fn a_window_of_five_then_a_grant_of_seven_delivers_exactly_twelve() {
    let mut pair = Pair::connected_with(Default::default(), receiver_window(5));
    let id = pair.open_accepted("conduit", Grant::full());
    let now = pair.now;
    for i in 0..20u8 {
        pair.client.conn.send(now, id, msg(100, i)).unwrap();
    }
    pair.drive();
    assert_eq!(held(&pair, id), 5);

    pair.server.conn.grant_credit(now, id, 7, 700).unwrap();
    pair.drive();
    pair.advance(ms(1_000));
    assert_eq!(held(&pair, id), 12);
    assert_eq!(pair.server.conn.stats().messages_received, 12);
    assert_eq!(
        pair.client
            .conn
            .session_stats(id)
            .unwrap()
            .send_queued_messages,
        8
    );
    // In order, and intact.
    let got = pair.server.recv_all(now, id);
    assert_eq!(got.len(), 12);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(*m, msg(100, i as u8));
    }
}

#[test]
fn credit_returns_when_the_application_reads_not_when_data_arrives() {
    let mut pair = Pair::connected_with(Default::default(), receiver_window(4));
    let id = pair.open_accepted("conduit", Grant::full());
    let now = pair.now;
    for i in 0..10u8 {
        pair.client.conn.send(now, id, msg(10, i)).unwrap();
    }
    pair.drive();
    assert_eq!(held(&pair, id), 4);
    let credit_frames = pair.server.conn.stats().frames_sent;
    // Time passes; nothing is read; nothing more arrives and no CREDIT is sent.
    pair.advance(ms(100));
    assert_eq!(held(&pair, id), 4);
    assert_eq!(pair.server.conn.stats().frames_sent, credit_frames);

    // Reading one message returns one message of credit.
    assert_eq!(pair.server.conn.recv(now, id), Some(msg(10, 0)));
    pair.drive();
    assert_eq!(held(&pair, id), 4);
    assert_eq!(pair.server.conn.stats().messages_received, 5);
    assert_eq!(pair.client.conn.session_stats(id).unwrap().send_credit.0, 0);
}

#[test]
fn nothing_is_delivered_beyond_byte_credit() {
    let server = config(|c| {
        c.limits.initial_credit_bytes = 4096;
        c.limits.max_message_size = 4096;
    });
    let mut pair = Pair::connected_with(Default::default(), server);
    let id = pair.open_accepted("conduit", Grant::full());
    let now = pair.now;
    for i in 0..3u8 {
        pair.client.conn.send(now, id, msg(1500, i)).unwrap();
    }
    pair.drive();
    // Two whole messages (3,000 bytes) and a 1,096-byte fragment of the third: exactly the
    // 4,096 bytes of credit.
    assert_eq!(held(&pair, id), 2);
    assert_eq!(pair.server.conn.stats().bytes_received, 4096);
    assert_eq!(pair.client.conn.session_stats(id).unwrap().send_credit.1, 0);
    pair.server.recv_all(now, id);
    pair.drive();
    assert_eq!(pair.server.recv_all(now, id), vec![msg(1500, 2)]);
}

#[test]
fn the_receiver_never_holds_more_than_its_window() {
    let server = config(|c| {
        c.limits.initial_credit_messages = 8;
        c.limits.initial_credit_bytes = 8192;
        c.limits.max_message_size = 8192;
    });
    let client = config(|c| c.limits.max_queued_messages = 1000);
    let mut pair = Pair::connected_with(client, server);
    let id = pair.open_accepted("conduit", Grant::full());
    let now = pair.now;
    let sizes: Vec<usize> = (0..300).map(|i| (i * 7919) % 3000 + 1).collect();
    for (i, n) in sizes.iter().enumerate() {
        pair.client.conn.send(now, id, msg(*n, i as u8)).unwrap();
    }
    let mut got = Vec::new();
    for round in 0..10_000 {
        pair.step();
        let s = pair.server.conn.session_stats(id).unwrap();
        assert!(s.recv_queued_messages <= 8, "round {round}: {s:?}");
        assert!(s.recv_queued_bytes <= 8192, "round {round}: {s:?}");
        // A slow reader: one message every other round.
        if round % 2 == 0 {
            if let Some(m) = pair.server.conn.recv(pair.now, id) {
                got.push(m.len());
            }
        }
        if got.len() == sizes.len() {
            break;
        }
    }
    assert_eq!(got, sizes);
}

#[test]
fn grant_credit_refuses_an_overflowing_window() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("x", Grant::full());
    let now = pair.now;
    assert_eq!(
        pair.server.conn.grant_credit(now, id, u32::MAX, 0),
        Err(SessionError::CreditOverflow)
    );
    assert_eq!(
        pair.server.conn.grant_credit(now, SessionId(99), 1, 1),
        Err(SessionError::UnknownSession(SessionId(99)))
    );
}

#[test]
fn a_peer_that_sends_beyond_its_message_credit_is_reset_with_4004() {
    let mut peer = RawPeer::server(receiver_window(2));
    let id = peer.open_accepted(1, Grant::full());
    let other = peer.open_accepted(3, Grant::full());
    peer.send([
        frames::data(1, b"one", true),
        frames::data(1, b"two", true),
        frames::data(3, b"fine", true),
    ]);
    assert!(resets(&peer).is_empty());
    peer.send([frames::data(1, b"three", true)]);
    assert_alive(&peer);
    assert_eq!(resets(&peer), vec![(id, 4004)]);
    assert!(peer
        .take_event(|e| matches!(
            e,
            Event::LimitHit {
                limit: LimitKind::Credit,
                ..
            }
        ))
        .is_some());
    assert_eq!(peer.conn.stats().recv_buffered, 4 + 64);
    assert!(peer.conn.session_phase(other).is_some());
}

#[test]
fn a_peer_that_sends_beyond_its_byte_credit_is_reset_with_4004() {
    let server = config(|c| {
        c.limits.initial_credit_bytes = 2048;
        c.limits.max_message_size = 2048;
    });
    let mut peer = RawPeer::server(server);
    let id = peer.open_accepted(1, Grant::full());
    peer.send([frames::data(1, &[0u8; 1500], true)]);
    peer.send([frames::data(1, &[0u8; 548], true)]);
    assert!(resets(&peer).is_empty(), "exactly the credit is fine");
    peer.send([frames::data(1, &[], true)]);
    // An empty message still needs a message of credit, which it has; bytes are at 0.
    assert!(resets(&peer).is_empty());
    peer.send([frames::data(1, &[0u8; 1], true)]);
    assert_eq!(resets(&peer), vec![(id, 4004)]);
    assert_alive(&peer);
}

#[test]
fn credit_returned_by_reading_lets_the_peer_continue() {
    let mut peer = RawPeer::server(receiver_window(2));
    let id = peer.open_accepted(1, Grant::full());
    peer.send([frames::data(1, b"a", true), frames::data(1, b"b", true)]);
    assert_eq!(peer.conn.recv(peer.now, id).as_deref(), Some(&b"a"[..]));
    peer.collect();
    assert_eq!(peer.take_credit(id), (1, 1));
    peer.send([frames::data(1, b"c", true)]);
    assert!(resets(&peer).is_empty());
    peer.send([frames::data(1, b"d", true)]);
    assert_eq!(resets(&peer), vec![(id, 4004)]);
}

#[test]
fn a_credit_overflowing_the_window_resets_with_4004() {
    // The raw peer's SETTINGS are the defaults: the server may send 64 messages and 64 KiB.
    let mut peer = RawPeer::server(Default::default());
    let a = peer.open_accepted(1, Grant::full());
    let b = peer.open_accepted(3, Grant::full());
    // Up to exactly 2^32 − 1 is fine.
    peer.send([frames::credit(1, u32::MAX - 64, 1)]);
    assert!(resets(&peer).is_empty());
    assert_eq!(
        peer.conn.session_stats(a).unwrap().send_credit,
        (u32::MAX, 65_537)
    );
    peer.send([frames::credit(1, 1, 0)]);
    assert_eq!(resets(&peer), vec![(a, 4004)]);
    // Bytes overflow too.
    peer.send([frames::credit(3, 0, u32::MAX - 65_535)]);
    assert_eq!(resets(&peer), vec![(a, 4004), (b, 4004)]);
    assert_alive(&peer);
}

#[test]
fn the_sender_uses_credit_it_is_given() {
    let mut peer = RawPeer::server(config(|c| c.limits.max_queued_messages = 100));
    let id = peer.open_accepted(1, Grant::full());
    // The raw peer allows 64 messages; the server queues 70.
    for _ in 0..70 {
        peer.conn.send(peer.now, id, msg(1, 0)).unwrap();
    }
    peer.collect();
    assert_eq!(peer.take_data(id).len(), 64);
    peer.send([frames::credit(1, 4, 4)]);
    assert_eq!(peer.take_data(id).len(), 4);
    peer.send([frames::credit(1, 10, 10)]);
    assert_eq!(peer.take_data(id).len(), 2);
    assert_eq!(
        peer.conn.session_stats(id).unwrap().send_credit,
        (8, 65_536 - 70 + 4 + 10)
    );
}

#[test]
fn reading_many_messages_is_announced_in_few_credits() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("x", Grant::full());
    let now = pair.now;
    for _ in 0..64 {
        pair.client.conn.send(now, id, msg(1, 0)).unwrap();
    }
    pair.drive();
    let before = pair.server.conn.stats().frames_sent;
    assert_eq!(pair.server.recv_all(now, id).len(), 64);
    pair.drive();
    // One CREDIT per quarter window at most: 64 messages read cost at most 4 frames.
    let credits = pair.server.conn.stats().frames_sent - before;
    assert!((1..=4).contains(&credits), "{credits} CREDIT frames");
    // The reader emptied a window that had stalled the sender, so the window doubled, and
    // the sender was told all of it.
    let window = pair.server.conn.session_stats(id).unwrap().recv_window;
    assert_eq!(window, (128, 128 * 1024));
    assert_eq!(
        pair.client.conn.session_stats(id).unwrap().send_credit,
        window
    );
}

/// Sends what the client's credit allows in `size`-byte messages, delivers it, and lets the
/// server read `read` of what it holds (all when `None`). Returns the server's window.
fn credit_round(pair: &mut Pair, id: SessionId, size: usize, read: Option<usize>) -> (u32, u32) {
    let now = pair.now;
    let (messages, bytes) = pair.client.conn.session_stats(id).unwrap().send_credit;
    let n = (messages as usize).min(bytes as usize / size).min(64);
    for _ in 0..n {
        pair.client.conn.send(now, id, msg(size, 7)).unwrap();
    }
    pair.drive();
    match read {
        None => drop(pair.server.recv_all(now, id)),
        Some(k) => {
            for _ in 0..k {
                pair.server.conn.recv(now, id);
            }
        }
    }
    pair.drive();
    pair.server.conn.session_stats(id).unwrap().recv_window
}

#[test]
fn a_window_grows_while_the_reader_keeps_up_and_stops_at_four_times() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("bulk", Grant::full());
    let mut windows = vec![pair.server.conn.session_stats(id).unwrap().recv_window];
    for _ in 0..40 {
        windows.push(credit_round(&mut pair, id, 16 * 1024, None));
    }
    assert!(windows.windows(2).all(|w| w[0] <= w[1]), "{windows:?}");
    assert_eq!(windows[0], (64, 64 * 1024));
    assert_eq!(*windows.last().unwrap(), (256, 256 * 1024), "{windows:?}");
    let reserved = pair.server.conn.recv_reserved();
    assert_eq!(
        reserved,
        256 * 1024 + 256 * 64,
        "window plus per-message overhead"
    );
}

#[test]
fn a_reader_that_falls_behind_never_grows_its_window() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("slow", Grant::full());
    for _ in 0..40 {
        // Reads half of a full window each round: messages stay queued.
        let window = credit_round(&mut pair, id, 1024, Some(32));
        assert_eq!(window, (64, 64 * 1024));
    }
    assert!(
        pair.server
            .conn
            .session_stats(id)
            .unwrap()
            .recv_held_messages
            > 0
    );
}

#[test]
fn a_window_does_not_grow_while_another_session_receives() {
    let mut pair = Pair::connected();
    let bulk = pair.open_accepted("bulk", Grant::full());
    let chat = pair.open_accepted("chat", Grant::full());
    for _ in 0..20 {
        // A chat message arrives with every round of bulk: the bulk session does not
        // receive alone, so more of its bytes in flight would queue ahead of the chat.
        let now = pair.now;
        pair.client.conn.send(now, chat, msg(64, 1)).unwrap();
        assert_eq!(
            credit_round(&mut pair, bulk, 16 * 1024, None),
            (64, 64 * 1024)
        );
        pair.server.recv_all(now, chat);
    }
    // Once the chat has been quiet for a while, the bulk session grows again.
    pair.advance(ms(200));
    for _ in 0..10 {
        credit_round(&mut pair, bulk, 16 * 1024, None);
    }
    let grown = pair.server.conn.session_stats(bulk).unwrap().recv_window;
    assert_eq!(grown.1, 256 * 1024, "{grown:?}");
    let reserved = pair.server.conn.recv_reserved();
    // The chat speaks again: the growth is taken back from the credit the bulk session's
    // reads would have returned, down to the initial window, and its reservation released.
    let now = pair.now;
    pair.client.conn.send(now, chat, msg(64, 1)).unwrap();
    pair.drive();
    pair.server.recv_all(now, chat);
    for _ in 0..10 {
        credit_round(&mut pair, bulk, 16 * 1024, None);
    }
    // Each unit comes back as fast as it is consumed: 16 KiB messages give back bytes
    // quickly and messages four at a time.
    let (messages, bytes) = pair.server.conn.session_stats(bulk).unwrap().recv_window;
    assert_eq!(bytes, 64 * 1024);
    assert!((64..grown.0).contains(&messages), "{messages}");
    assert_eq!(
        pair.client.conn.session_stats(bulk).unwrap().send_credit.1,
        64 * 1024,
        "the sender's bytes in flight are back to the initial window"
    );
    assert!(pair.server.conn.recv_reserved() < reserved);
    assert_alive_pair(&pair);
}

#[test]
fn a_window_grows_only_within_the_receive_buffer() {
    // Room for two default windows with their per-message overhead, and no more.
    let cap = 2 * (64 * 1024 + 64 * 64);
    let server = config(|c| c.limits.max_recv_buffer = cap);
    let mut pair = Pair::connected_with(mux_proto::Config::default(), server);
    let id = pair.open_accepted("bulk", Grant::full());
    for _ in 0..20 {
        credit_round(&mut pair, id, 16 * 1024, None);
    }
    assert_eq!(
        pair.server.conn.session_stats(id).unwrap().recv_window,
        (128, 128 * 1024)
    );
    assert!(pair.server.conn.recv_reserved() <= cap);
    // The grown window still leaves the peer nothing over its credit: no 4004, no 1008.
    assert_alive_pair(&pair);
}

#[test]
fn growth_off_keeps_the_initial_window() {
    let no_growth = config(|c| c.limits.max_window_growth = 1);
    let mut pair = Pair::connected_with(mux_proto::Config::default(), no_growth);
    let id = pair.open_accepted("bulk", Grant::full());
    for _ in 0..20 {
        assert_eq!(
            credit_round(&mut pair, id, 16 * 1024, None),
            (64, 64 * 1024)
        );
    }
}

fn assert_alive_pair(pair: &Pair) {
    assert!(pair.client.conn.is_open() && pair.server.conn.is_open());
}

#[test]
fn a_closed_session_stops_returning_credit() {
    let mut peer = RawPeer::server(receiver_window(4));
    let id = peer.open_accepted(1, Grant::full());
    peer.send([frames::data(1, b"a", true), frames::data(1, b"b", true)]);
    peer.send([frames::reset(1, CloseCode::CANCELLED)]);
    assert_eq!(peer.conn.recv(peer.now, id), None);
    peer.collect();
    assert_eq!(peer.take_credit(id), (0, 0));
}

#[test]
fn no_credit_is_announced_after_the_peers_close() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(1, Grant::full());
    let mut burst: Vec<_> = (0..20).map(|_| frames::data(1, b"m", true)).collect();
    burst.push(frames::close(1, CloseCode::NORMAL));
    peer.send(burst);
    // Reading 16 messages is a quarter window, but the peer will send nothing more.
    for _ in 0..16 {
        assert!(peer.conn.recv(peer.now, id).is_some());
    }
    peer.collect();
    assert_eq!(peer.take_credit(id), (0, 0));
    assert!(peer.received.is_empty(), "{:?}", peer.received);
    while peer.conn.recv(peer.now, id).is_some() {}
    assert_eq!(
        peer.take_closed(id),
        Some((CloseCode::NORMAL, mux_proto::Initiator::Peer))
    );
}

#[test]
fn no_credit_is_announced_after_the_peers_fin() {
    let mut peer = RawPeer::server(Default::default());
    let id = peer.open_accepted(1, Grant::full());
    let mut burst: Vec<_> = (0..19).map(|_| frames::data(1, b"m", true)).collect();
    burst.push(frames::data_fin(1, b"m"));
    peer.send(burst);
    for _ in 0..20 {
        assert!(peer.conn.recv(peer.now, id).is_some());
    }
    peer.collect();
    assert_eq!(peer.take_credit(id), (0, 0));
}

/// `recv_queued_since` is when the next message to read arrived: the first message's
/// arrival while it waits, the second's once the first is read, nothing once all are read.
#[test]
fn recv_queued_since_is_the_arrival_of_the_next_unread_message() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("conduit", Grant::full());
    assert_eq!(pair.server.conn.recv_queued_since(id), None);
    let now = pair.now;
    pair.client.conn.send(now, id, msg(10, 1)).unwrap();
    pair.drive();
    let first = pair.now;
    pair.advance(ms(40));
    let now = pair.now;
    pair.client.conn.send(now, id, msg(10, 2)).unwrap();
    pair.drive();
    let second = pair.now;
    pair.advance(ms(40));
    assert_eq!(pair.server.conn.recv_queued_since(id), Some(first));
    let now = pair.now;
    assert!(pair.server.conn.recv(now, id).is_some());
    assert_eq!(pair.server.conn.recv_queued_since(id), Some(second));
    assert!(second > first);
    assert!(pair.server.conn.recv(now, id).is_some());
    assert_eq!(pair.server.conn.recv_queued_since(id), None);
}
