#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Fair scheduling (deficit round robin): a bulk transfer cannot hold back a small message
//! for more than one frame, weights divide the bandwidth, and control frames go first.

mod common;

use bytes::Bytes;
use common::{config, msg};
use mux_proto::frame::Frame;
use mux_proto::testing::{frames, RawPeer};
use mux_proto::{Config, Grant, SessionId};

const MAX_FRAME: usize = 16_384;
const MAX_MESSAGE: usize = 65_536;

/// A server that may queue a 64 MiB stream.
fn bulk_server() -> Config {
    config(|c| {
        c.limits.max_queued_messages = 4096;
        c.limits.max_send_buffer = 128 * 1024 * 1024;
    })
}

/// The raw peer opens sessions `ids` with these weights and gives each a practically
/// unlimited window, so credit never limits the scheduler.
fn open_weighted(peer: &mut RawPeer, sessions: &[(u32, u8)]) -> Vec<SessionId> {
    sessions
        .iter()
        .map(|&(id, weight)| {
            let sid = peer.open_accepted(id, Grant::full().with_weight(weight));
            peer.send([frames::credit(id, u32::MAX - 64, u32::MAX - 65_536)]);
            sid
        })
        .collect()
}

/// DATA frames of the next transmit, as (session, payload length).
fn next_data(peer: &mut RawPeer) -> Option<Vec<(u32, usize)>> {
    let frames = peer.poll_one()?;
    Some(
        frames
            .into_iter()
            .filter_map(|f| match f {
                Frame::Data(d) => Some((d.session_id.0, d.payload.len())),
                _ => None,
            })
            .collect(),
    )
}

#[test]
fn a_small_message_waits_at_most_one_frame_behind_a_64_mib_stream() {
    let mut peer = RawPeer::server(bulk_server());
    let ids = open_weighted(&mut peer, &[(1, 1), (3, 1)]);
    let (bulk, small) = (ids[0], ids[1]);
    let chunk = Bytes::from(vec![0xab; MAX_MESSAGE]);
    let total = 64 * 1024 * 1024;
    for _ in 0..total / MAX_MESSAGE {
        peer.conn.send(peer.now, bulk, chunk.clone()).unwrap();
    }
    // The stream is under way.
    let mut bulk_bytes = 0usize;
    for _ in 0..10 {
        for (id, len) in next_data(&mut peer).unwrap() {
            assert_eq!(id, 1);
            assert!(len <= MAX_FRAME);
            bulk_bytes += len;
        }
    }

    peer.conn.send(peer.now, small, msg(100, 7)).unwrap();
    let mut bulk_frames_before_small = 0;
    let mut small_seen = false;
    while !small_seen {
        for (id, len) in next_data(&mut peer).expect("the stream ended first") {
            if id == 3 {
                assert_eq!(len, 100);
                small_seen = true;
                continue;
            }
            if !small_seen {
                bulk_frames_before_small += 1;
            }
            bulk_bytes += len;
        }
    }
    assert!(
        bulk_frames_before_small <= 1,
        "the small message waited behind {bulk_frames_before_small} bulk frames"
    );

    // And the whole stream still goes through, in max-size frames.
    while let Some(data) = next_data(&mut peer) {
        for (id, len) in data {
            assert_eq!(id, 1);
            assert!(len <= MAX_FRAME);
            bulk_bytes += len;
        }
    }
    assert_eq!(bulk_bytes, total);
    assert_eq!(peer.conn.stats().send_buffered, 0);
}

#[test]
fn a_small_message_queued_with_a_stream_goes_out_in_the_first_transmit() {
    let mut peer = RawPeer::server(bulk_server());
    let ids = open_weighted(&mut peer, &[(1, 1), (3, 1)]);
    for _ in 0..16 {
        peer.conn
            .send(peer.now, ids[0], msg(MAX_MESSAGE, 1))
            .unwrap();
    }
    peer.conn.send(peer.now, ids[1], msg(100, 2)).unwrap();
    let first = next_data(&mut peer).unwrap();
    assert_eq!(first[0], (1, MAX_FRAME));
    assert_eq!(first[1], (3, 100));
}

/// Bytes each session sends over `transmits` transmits while all always have data.
fn shares(sessions: &[(u32, u8)], transmits: usize) -> Vec<usize> {
    let mut peer = RawPeer::server(bulk_server());
    let ids = open_weighted(&mut peer, sessions);
    for id in &ids {
        for _ in 0..400 {
            peer.conn.send(peer.now, *id, msg(MAX_MESSAGE, 0)).unwrap();
        }
    }
    let mut bytes = vec![0usize; sessions.len()];
    for _ in 0..transmits {
        for (id, len) in next_data(&mut peer).unwrap() {
            let i = sessions.iter().position(|s| s.0 == id).unwrap();
            bytes[i] += len;
        }
    }
    bytes
}

fn assert_within_10_percent(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= expected * 0.10,
        "{what}: {actual:.3}, expected {expected:.3} ± 10%"
    );
}

#[test]
fn equal_weights_share_equally() {
    let bytes = shares(&[(1, 1), (3, 1)], 300);
    let total: usize = bytes.iter().sum();
    assert!(total > 50 * 1024 * 1024 / 4, "{total}");
    for b in &bytes {
        assert_within_10_percent(*b as f64 / total as f64, 0.5, "share");
    }
}

#[test]
fn weights_divide_the_bandwidth_within_ten_percent() {
    let bytes = shares(&[(1, 1), (3, 3)], 400);
    assert_within_10_percent(bytes[1] as f64 / bytes[0] as f64, 3.0, "3:1 ratio");

    let weights = [(1, 1), (3, 2), (5, 5)];
    let bytes = shares(&weights, 600);
    let total: usize = bytes.iter().sum();
    for (i, (_, w)) in weights.iter().enumerate() {
        assert_within_10_percent(
            bytes[i] as f64 / total as f64,
            f64::from(*w) / 8.0,
            &format!("weight {w}"),
        );
    }
}

#[test]
fn a_pong_goes_before_queued_data() {
    let mut peer = RawPeer::server(bulk_server());
    let ids = open_weighted(&mut peer, &[(1, 1)]);
    for _ in 0..64 {
        peer.conn
            .send(peer.now, ids[0], msg(MAX_MESSAGE, 0))
            .unwrap();
    }
    // Some of the stream is out; the rest is queued when the PING arrives.
    for _ in 0..5 {
        peer.poll_one().unwrap();
    }
    peer.deliver([frames::ping(42)]);
    let next = peer.poll_one().unwrap();
    assert_eq!(next[0], Frame::Pong(42), "{:?}", &next[..1]);
    assert!(next[1..].iter().all(|f| matches!(f, Frame::Data(_))));
}

#[test]
fn a_credit_goes_before_queued_data() {
    let mut peer = RawPeer::server(bulk_server());
    let ids = open_weighted(&mut peer, &[(1, 1), (3, 1)]);
    for _ in 0..64 {
        peer.conn
            .send(peer.now, ids[0], msg(MAX_MESSAGE, 0))
            .unwrap();
    }
    for _ in 0..5 {
        peer.poll_one().unwrap();
    }
    // The peer sends on session 3, and the application reads it all: credit is owed.
    let sixteen: Vec<Frame> = (0..16).map(|_| frames::data(3, b"x", true)).collect();
    peer.deliver(sixteen);
    while peer.conn.recv(peer.now, ids[1]).is_some() {}
    let next = peer.poll_one().unwrap();
    assert!(
        matches!(&next[0], Frame::Credit(c) if c.session_id == ids[1] && c.messages == 16),
        "{:?}",
        &next[..1]
    );
    assert!(next[1..].iter().all(|f| matches!(f, Frame::Data(_))));
}

#[test]
fn early_data_never_overtakes_its_open() {
    // The server opens a session and sends on it at once, within the initial window.
    let mut peer = RawPeer::server(Default::default());
    let id = peer
        .conn
        .open(peer.now, "push", Bytes::new(), Default::default())
        .unwrap();
    assert_eq!(id, SessionId(2));
    peer.conn.send(peer.now, id, msg(10, 1)).unwrap();
    peer.collect();
    let sent = peer.take_frames();
    assert!(
        matches!(&sent[..], [Frame::Open(o), Frame::Data(d)] if o.session_id == id && d.session_id == id),
        "{sent:?}"
    );
}
