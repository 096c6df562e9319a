//! Shared helpers for the scenario tests: configurations, payloads and assertions.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use bytes::Bytes;
use mux_proto::frame::Frame;
use mux_proto::testing::RawPeer;
use mux_proto::{Config, Event, SessionId};

/// A default configuration changed by `f`.
pub fn config(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    f(&mut c);
    c
}

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A message of `n` bytes, all `fill`.
pub fn msg(n: usize, fill: u8) -> Bytes {
    Bytes::from(vec![fill; n])
}

/// The connection is still open and sent no CONN_CLOSE.
pub fn assert_alive(peer: &RawPeer) {
    assert_eq!(
        peer.conn_close_code(),
        None,
        "unexpected CONN_CLOSE: {:?}",
        peer.received
    );
    assert!(
        peer.conn.is_open(),
        "connection closed: {:?}",
        peer.conn.close_code()
    );
}

/// Every RESET the connection sent, as (session, code), in order.
pub fn resets(peer: &RawPeer) -> Vec<(SessionId, u16)> {
    peer.received
        .iter()
        .filter_map(|f| match f {
            Frame::Reset(r) => Some((r.session_id, r.code.0)),
            _ => None,
        })
        .collect()
}

/// Messages delivered so far by `Incoming` events' IDs.
pub fn incoming_ids(events: &[Event]) -> Vec<SessionId> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Incoming { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}
