#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Threat catalogue, SM layer: attacks on the data path (dribbled credit, endless and
//! oversized messages, credit arithmetic, credit leaks under hostile cancels, undrained
//! sessions, heartbeats behind bulk data) and totality under any chunking, against a real
//! `Connection` through the scripted raw peer on the virtual clock.
//!
//! What the existing scenario files already pin is not repeated here; SECURITY.md maps each
//! row to every test that covers it.

mod common;

use bytes::Bytes;
use common::{assert_alive, config, ms, msg};
use mux_proto::frame::{Frame, Setting, Settings};
use mux_proto::testing::{frames, RawPeer};
use mux_proto::{CloseCode, Config, Event, Grant, SessionId, Side, Timestamp};
use proptest::prelude::*;

fn quiet(f: impl FnOnce(&mut Config)) -> Config {
    config(|c| {
        c.timeouts.keepalive_interval = None;
        c.timeouts.session_idle = None;
        f(c);
    })
}

/// Every DATA frame in `frames` for session `id`: (payload length, END).
fn data_of(frames: &[Frame], id: SessionId) -> Vec<(usize, bool)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Data(d) if d.session_id == id => Some((d.payload.len(), d.end)),
            _ => None,
        })
        .collect()
}

/// The DATA rule of row 1: no non-final frame under 1,024 bytes, and per message at most
/// `bytes / 1024 + 1` frames (a message cut short counts as far as it went).
fn assert_no_dribble(data: &[(usize, bool)]) {
    let (mut frames, mut bytes) = (0usize, 0usize);
    for &(len, end) in data {
        assert!(end || len >= 1024, "a non-final frame of {len} bytes");
        frames += 1;
        bytes += len;
        if end {
            assert!(
                frames <= bytes / 1024 + 1,
                "{frames} frames for {bytes} bytes"
            );
            (frames, bytes) = (0, 0);
        }
    }
    assert!(
        frames <= bytes / 1024 + 1,
        "{frames} frames for {bytes} bytes"
    );
}

// ---- row 1: data dribble ------------------------------------------------------------------

/// Row 1 (CVE-2019-9511): 20 sessions (scaled from 200) pull 64 KiB messages; after the
/// initial window the peer grants one byte per session per millisecond of virtual time,
/// each CREDIT its own message, for 4 seconds (4 KiB per session). The sender never sends a
/// non-final fragment under 1,024 bytes, so frames ≤ bytes/1024 + 1 per message, and each
/// session's send queue stays within its bound (64 messages) while the application is told
/// to wait. With the default budget instead, 20 CREDITs per millisecond end with 1008.
#[test]
fn dribbled_credit_never_buys_frames_under_1024_bytes() {
    const SESSIONS: u32 = 20;
    let server = quiet(|c| c.limits.control_budget = 1_000_000);
    let client_settings = Settings::default()
        .with(Setting::InitialCreditBytes, 65_536)
        .with(Setting::MaxMessageSize, 65_536);
    let mut peer = RawPeer::with_settings(Side::Server, server, client_settings);
    let ids: Vec<SessionId> = (0..SESSIONS)
        .map(|i| peer.open_accepted(2 * i + 1, Grant::full()))
        .collect();
    // Two messages a session (2.5 MiB in all, within the 4 MiB send buffer); a third
    // message anywhere is refused: the application is told to wait, nothing grows.
    let message = msg(65_536, 7);
    for &id in &ids {
        for _ in 0..2 {
            peer.conn.send(peer.now, id, message.clone()).unwrap();
        }
    }
    for _ in 0..100 {
        let _ = peer.conn.send(peer.now, ids[0], message.clone());
    }
    assert!(peer.conn.stats().send_buffered <= 4 * 1024 * 1024);
    assert!(
        peer.conn
            .session_stats(ids[0])
            .unwrap()
            .send_queued_messages
            <= 64
    );
    peer.collect();
    let mut sent = peer.take_frames();
    for _ in 0..4_000 {
        peer.now = Timestamp::from_micros(peer.now.as_micros() + 1_000);
        for i in 0..SESSIONS {
            peer.send([frames::credit(2 * i + 1, 0, 1)]);
        }
        sent.extend(peer.take_frames());
    }
    for &id in &ids {
        let data = data_of(&sent, id);
        let bytes: usize = data.iter().map(|d| d.0).sum();
        assert!(bytes > 65_536 + 2_048 && bytes <= 65_536 + 4_000, "{bytes}");
        assert_no_dribble(&data);
    }
    assert_alive(&peer);

    // The same dribble against the default budget (1,000/s) is cut off.
    let client_settings = Settings::default();
    let mut peer = RawPeer::with_settings(Side::Server, quiet(|_| {}), client_settings);
    for i in 0..SESSIONS {
        peer.open_accepted(2 * i + 1, Grant::full());
    }
    let mut rounds = 0;
    while peer.conn.is_open() {
        peer.now = Timestamp::from_micros(peer.now.as_micros() + 1_000);
        let credits: Vec<Frame> = (0..SESSIONS)
            .map(|i| frames::credit(2 * i + 1, 0, 1))
            .collect();
        peer.send(credits);
        rounds += 1;
        assert!(rounds < 1_000);
    }
    assert_eq!(peer.conn_close_code(), Some(CloseCode::POLICY_VIOLATION));
}

// ---- row 13: endless messages (the CONTINUATION-flood analog) --------------------------

/// Row 13 (CONTINUATION flood, 2024): a message that never ends. A non-final fragment under
/// 1,024 bytes is a connection error 1002 at once; 1 KiB fragments are accepted up to the
/// session's maximum (so at most max/1024 + 1 frames a message) and the one that crosses it
/// resets that session with 1009; across 1,000 sessions the partial messages stay within
/// the reserved windows; and a message that stops growing is ended by the session idle
/// timeout (4006), the assembly deadline.
#[test]
fn endless_messages_are_bounded_in_size_frames_memory_and_time() {
    let mut peer = RawPeer::server(quiet(|_| {}));
    peer.open_accepted(1, Grant::full());
    peer.send([frames::data(1, b"x", false)]);
    assert_eq!(peer.conn_close_code(), Some(CloseCode::PROTOCOL_ERROR));

    const SESSIONS: u32 = 1000;
    let mut peer = RawPeer::server(quiet(|c| {
        c.limits.max_sessions = SESSIONS;
        c.limits.opens_per_sec = u32::MAX;
        c.limits.opens_burst = u32::MAX;
        c.limits.control_budget = u32::MAX;
        // A window larger than the maximum, so it is the size check that trips (credit is
        // checked first: spec/sessions.md#data-checks).
        c.limits.max_message_size = 8 * 1024;
        c.limits.initial_credit_bytes = 16 * 1024;
        c.limits.max_recv_buffer = 1 << 30;
    }));
    for i in 0..SESSIONS {
        peer.open_accepted(2 * i + 1, Grant::full());
    }
    let reserved = peer.conn.recv_reserved();
    let chunk = [0u8; 1024];
    let mut resets = 0;
    for round in 0..9 {
        let fragments: Vec<Frame> = (0..SESSIONS)
            .map(|i| frames::data(2 * i + 1, &chunk, false))
            .collect();
        peer.send(fragments);
        assert!(peer.conn.stats().recv_buffered <= reserved);
        let crossed = peer
            .take_frames()
            .into_iter()
            .filter(|f| matches!(f, Frame::Reset(r) if r.code == CloseCode::MESSAGE_TOO_BIG))
            .count();
        // Eight fragments make 8 KiB, the maximum; the ninth crosses it.
        assert_eq!(crossed, if round == 8 { SESSIONS as usize } else { 0 });
        resets += crossed;
    }
    assert_eq!(resets, SESSIONS as usize);
    assert_eq!(peer.conn.session_count(), 0);
    assert_eq!(peer.conn.stats().recv_buffered, 0);
    assert_alive(&peer);

    // The assembly deadline: a half-received message that stops growing.
    let mut peer = RawPeer::server(config(|c| {
        c.timeouts.keepalive_interval = None;
        c.timeouts.session_idle = Some(ms(1_000));
    }));
    let id = peer.open_accepted(1, Grant::full());
    peer.send([frames::data(1, &chunk, false)]);
    peer.advance(ms(999));
    assert!(peer.take_reset(id).is_none());
    peer.advance(ms(300));
    assert_eq!(peer.take_reset(id).unwrap().code, CloseCode::TIMEOUT);
    assert_eq!(peer.conn.stats().recv_buffered, 0);
}

// ---- row 14: oversized messages and frames ------------------------------------------------

/// Row 14: a DATA header announcing 2^32 - 1 bytes is refused from the header alone (1009,
/// nothing waited for); a message of exactly the maximum passes and one byte more, across
/// fragments, resets only its own session (limits.rs pins the byte-exact boundary).
#[test]
fn oversized_frames_are_refused_from_the_header_and_only_their_session_pays() {
    let mut peer = RawPeer::server(quiet(|_| {}));
    peer.open_accepted(1, Grant::full());
    let header = [0x10, 0x01, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
    peer.send_bytes(Bytes::copy_from_slice(&header));
    assert_eq!(peer.conn_close_code(), Some(CloseCode::MESSAGE_TOO_BIG));

    // A grant of 32 KiB in a 64 KiB window (so the size check, not credit, trips).
    let mut peer = RawPeer::server(quiet(|_| {}));
    let big = peer.open_accepted(1, Grant::full().with_max_message_size(32_768));
    let bystander = peer.open_accepted(3, Grant::full());
    let max = 32_768;
    peer.send([
        frames::data(1, &[1u8; 16_384], false),
        frames::data(1, &[1u8; 16_384], true),
    ]);
    assert_eq!(peer.conn.recv(peer.now, big).map(|m| m.len()), Some(max));
    peer.collect();
    // Past the maximum, across fragments: the third crosses it.
    let over = vec![
        frames::data(1, &[1u8; 16_384], false),
        frames::data(1, &[1u8; 16_384], false),
        frames::data(1, &[2u8; 1024], false),
        frames::data(3, b"still here", true),
    ];
    peer.send(over);
    assert_eq!(
        peer.take_reset(big).unwrap().code,
        CloseCode::MESSAGE_TOO_BIG
    );
    assert_eq!(
        peer.conn.recv(peer.now, bystander).as_deref(),
        Some(&b"still here"[..])
    );
    assert_alive(&peer);
}

// ---- row 15: credit arithmetic -------------------------------------------------------------

fn grant() -> impl Strategy<Value = (u32, u32)> {
    prop_oneof![
        Just((0u32, 0u32)),
        Just((u32::MAX, 0)),
        Just((0, u32::MAX)),
        Just((u32::MAX, u32::MAX)),
        (0u32..4, 0u32..4096),
        (any::<u32>(), any::<u32>()),
        (u32::MAX - 70..=u32::MAX, u32::MAX - 70_000..=u32::MAX),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Row 15 (credit arithmetic): any sequence of CREDITs, in any amounts. The sending
    /// side's credit never wraps and never exceeds 2^32 - 1 in either unit: the grant that
    /// would overflow resets the session with 4004, a CREDIT of zero in both units is a
    /// connection error 1002, and everything else adds exactly. (The receiving side — DATA
    /// beyond credit is never buffered — is the second property below.)
    #[test]
    fn credit_grants_never_wrap(grants in proptest::collection::vec(grant(), 1..40)) {
        let mut peer = RawPeer::server(quiet(|c| c.limits.control_budget = u32::MAX));
        let id = peer.open_accepted(1, Grant::full());
        let (messages, bytes) = peer.conn.session_stats(id).unwrap().send_credit;
        let (mut messages, mut bytes) = (u64::from(messages), u64::from(bytes));
        for (m, b) in grants {
            peer.send([frames::credit(1, m, b)]);
            if (m, b) == (0, 0) {
                prop_assert_eq!(peer.conn_close_code(), Some(CloseCode::PROTOCOL_ERROR));
                return Ok(());
            }
            messages += u64::from(m);
            bytes += u64::from(b);
            if messages > u64::from(u32::MAX) || bytes > u64::from(u32::MAX) {
                prop_assert_eq!(peer.take_reset(id).map(|r| r.code), Some(CloseCode::FLOW_CONTROL));
                prop_assert!(peer.conn.session_stats(id).is_none());
                prop_assert!(peer.conn.is_open());
                return Ok(());
            }
            let credit = peer.conn.session_stats(id).unwrap().send_credit;
            prop_assert_eq!((u64::from(credit.0), u64::from(credit.1)), (messages, bytes));
        }
    }

    /// Row 15, receiving side: DATA beyond the credit this side announced — by one message
    /// or one byte — resets the session with 4004 without buffering a byte of it, whatever
    /// was sent before.
    #[test]
    fn data_beyond_credit_is_never_buffered(
        sizes in proptest::collection::vec(0usize..3000, 1..80),
    ) {
        let mut peer = RawPeer::server(quiet(|_| {}));
        let id = peer.open_accepted(1, Grant::full());
        for size in sizes {
            let received = peer.conn.stats().bytes_received;
            let credit = peer.conn.session_stats(id).unwrap().recv_credit;
            let payload = vec![0u8; size];
            peer.send([frames::data(1, &payload, true)]);
            let over = credit.0 == 0 || size as u64 > u64::from(credit.1);
            if over {
                prop_assert_eq!(peer.take_reset(id).map(|r| r.code), Some(CloseCode::FLOW_CONTROL));
                // Not a byte of the offending frame was taken in.
                prop_assert_eq!(peer.conn.stats().bytes_received, received);
                prop_assert_eq!(peer.conn.stats().recv_buffered, 0);
                return Ok(());
            }
            prop_assert!(peer.conn.stats().recv_buffered <= 65_536 + 64 * 64);
            // Never read: the credit only shrinks.
        }
    }
}

// ---- row 16: credit leaks under hostile cancels ---------------------------------------------

/// Row 16 (credit leak / lockout): a peer that resets, closes, half-closes and abandons
/// sessions in the middle of messages, mixed with honest traffic. After every step, on every
/// live session, credit left + held + unannounced equals the window; honest sessions keep
/// flowing; and when the transport dies, every reservation and buffer returns to zero.
/// (The model test, model.rs, checks the same invariant over random interleavings of both
/// sides.)
#[test]
fn credit_is_conserved_when_a_peer_abandons_sessions_mid_message() {
    let mut peer = RawPeer::server(quiet(|_| {}));
    let ids: Vec<SessionId> = (0..12)
        .map(|i| peer.open_accepted(2 * i + 1, Grant::full()))
        .collect();
    let check = |peer: &RawPeer| {
        for id in peer.conn.session_ids().collect::<Vec<_>>() {
            let s = peer.conn.session_stats(id).unwrap();
            let held = (s.recv_held_messages, s.recv_queued_bytes);
            assert_eq!(
                (
                    u64::from(s.recv_credit.0)
                        + u64::from(held.0)
                        + u64::from(s.recv_unannounced.0),
                    u64::from(s.recv_credit.1) + held.1 + u64::from(s.recv_unannounced.1),
                ),
                (u64::from(s.recv_window.0), u64::from(s.recv_window.1)),
                "{id:?}: {s:?}"
            );
        }
        assert!(peer.conn.stats().recv_buffered <= peer.conn.recv_reserved());
    };
    let half = [3u8; 2048];
    for round in 0..20u32 {
        // Every session starts a message; the honest ones (the last four) finish theirs.
        let mut step: Vec<Frame> = ids
            .iter()
            .map(|id| frames::data(id.0, &half, false))
            .collect();
        step.extend(ids[8..].iter().map(|id| frames::data(id.0, b"end", true)));
        peer.send(step);
        check(&peer);
        for &id in &ids[8..] {
            while peer.conn.recv(peer.now, id).is_some() {}
        }
        peer.collect();
        check(&peer);
        if round == 5 {
            // Abandon mid-message: RESET, CLOSE, and a FIN inside a message (a session error).
            peer.send([
                frames::reset(ids[0].0, CloseCode::CANCELLED),
                frames::close(ids[1].0, CloseCode::NORMAL),
                frames::fin(ids[2].0),
            ]);
            check(&peer);
            // This side gives up on two more with data held.
            peer.conn
                .reset(peer.now, ids[3], CloseCode::CANCELLED, "")
                .unwrap();
            peer.conn
                .close_session(peer.now, ids[4], CloseCode::NORMAL, "")
                .unwrap();
            peer.collect();
            check(&peer);
        }
        if round >= 5 {
            // Sessions 0-4 are gone (or closing); the rest keep their messages in progress
            // within the window until the window is used up.
            if peer
                .conn
                .session_stats(ids[5])
                .is_some_and(|s| s.recv_credit.1 < 2048)
            {
                break;
            }
        }
    }
    // Honest sessions never stalled: each got every message.
    for &id in &ids[8..] {
        assert!(peer.conn.session_stats(id).unwrap().messages_received >= 6);
    }
    peer.conn.handle_transport_closed(peer.now);
    peer.collect();
    assert_eq!(peer.conn.session_count(), 0);
    let stats = peer.conn.stats();
    assert_eq!(
        (
            stats.recv_buffered,
            stats.send_buffered,
            peer.conn.recv_reserved()
        ),
        (0, 0, 0)
    );
}

// ---- row 18: an undrained session ------------------------------------------------------------

/// Row 18 (undrained session): the application never reads session S while the peer fills
/// it and 50 other sessions. S holds exactly its window (64 messages) and the 65th message
/// is refused (4004); reading never pauses for it (`wants_read` stays true) and the other
/// sessions' messages keep being delivered (and their credit returned).
#[test]
fn an_unread_session_holds_its_window_and_the_rest_keep_flowing() {
    let mut peer = RawPeer::server(quiet(|_| {}));
    let s = peer.open_accepted(1, Grant::full());
    let others: Vec<SessionId> = (1..=50)
        .map(|i| peer.open_accepted(2 * i + 1, Grant::full()))
        .collect();
    for round in 0..80u32 {
        let mut step = vec![frames::data(1, &[9u8; 512], true)];
        step.extend(
            others
                .iter()
                .map(|id| frames::data(id.0, &round.to_be_bytes(), true)),
        );
        peer.send(step);
        assert!(
            peer.conn.wants_read(),
            "reading paused for one unread session"
        );
        for &id in &others {
            assert_eq!(
                peer.conn.recv(peer.now, id).as_deref(),
                Some(&round.to_be_bytes()[..])
            );
        }
        // 20 ms a round: the CREDITs returned for the other sessions are paced to the
        // peer's CONTROL_BUDGET (200/s by default), as they would be on a real clock.
        peer.advance(ms(20));
        if round < 64 {
            let held = peer.conn.session_stats(s).unwrap();
            assert_eq!(held.recv_queued_messages, round + 1);
            assert!(held.recv_queued_bytes <= 65_536);
        } else if round == 64 {
            assert_eq!(peer.take_reset(s).unwrap().code, CloseCode::FLOW_CONTROL);
        }
    }
    assert_alive(&peer);
}

// ---- row 19: heartbeats behind bulk data -------------------------------------------------------

/// Row 19 (head-of-line blocking), heartbeats: while a session has megabytes queued, the
/// keepalive PING this side owes goes out first in the very next transmit, so it is never
/// delayed behind data (scheduling.rs pins PONG and CREDIT first, the one-frame bound for
/// small messages and the weighted shares).
#[test]
fn a_due_keepalive_ping_is_never_queued_behind_bulk_data() {
    let server = config(|c| {
        c.timeouts.keepalive_interval = Some(ms(1_000));
        c.timeouts.session_idle = None;
    });
    let settings = Settings::default()
        .with(Setting::InitialCreditBytes, u32::MAX)
        .with(Setting::InitialCreditMessages, u32::MAX)
        .with(Setting::MaxMessageSize, 1 << 20);
    let mut peer = RawPeer::with_settings(Side::Server, server, settings);
    let id = peer.open_accepted(1, Grant::full());
    for _ in 0..3 {
        peer.conn.send(peer.now, id, msg(1 << 20, 5)).unwrap();
    }
    for _ in 0..5 {
        peer.poll_one().unwrap();
    }
    peer.now = Timestamp::from_micros(peer.now.as_micros() + 1_000_000);
    peer.conn.handle_timeout(peer.now);
    let next = peer.poll_one().unwrap();
    assert!(matches!(next[0], Frame::Ping(_)), "{:?}", &next[..1]);
    assert!(next[1..].iter().all(|f| matches!(f, Frame::Data(_))));
}

// ---- row 30: totality and split invariance ---------------------------------------------------

fn hostile_frame() -> impl Strategy<Value = Frame> {
    let id = prop_oneof![
        Just(1u32),
        Just(3),
        Just(5),
        Just(7),
        Just(2),
        Just(0),
        Just(99)
    ];
    prop_oneof![
        id.clone().prop_map(|i| frames::open(i, "k")),
        (id.clone(), 0usize..2100, any::<bool>()).prop_map(|(i, n, end)| frames::data(
            i,
            &vec![1u8; n],
            end
        )),
        (id.clone(), 0u32..70, 0u32..70_000).prop_map(|(i, m, b)| frames::credit(i, m, b)),
        id.clone()
            .prop_map(|i| frames::reset(i, CloseCode::CANCELLED)),
        id.clone().prop_map(|i| frames::close(i, CloseCode::NORMAL)),
        id.prop_map(frames::fin),
        any::<u64>().prop_map(frames::ping),
        any::<u64>().prop_map(frames::pong),
    ]
}

/// Feeds `frames` to a fresh server, grouped into WebSocket messages at the `cuts`
/// (indexes into `frames`), with nothing else happening in between (the application does
/// not act; the output is polled once, at the end); returns every event and every frame it
/// sent.
fn run_grouped(frames: &[Frame], cuts: &[usize]) -> (Vec<Event>, Vec<Frame>) {
    let mut peer = RawPeer::server(quiet(|c| c.limits.control_budget = 40));
    let mut bounds: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < frames.len())
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    bounds.push(frames.len());
    let mut start = 0;
    for end in bounds {
        peer.deliver(frames[start..end].to_vec());
        start = end;
    }
    peer.collect();
    (peer.events.drain(..).collect(), peer.take_frames())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Row 30 (panics on malformed input), split invariance: any sequence of hostile frames
    /// (wrong parity, ID 0, never-opened IDs, DATA beyond credit and while pending, tiny
    /// fragments, resets mid-message, floods of control frames over a budget of 40)
    /// produces no panic, and the same events and the same frames whichever way it is
    /// grouped into WebSocket messages (frames never span messages, so grouping is the only
    /// chunking there is).
    /// (Raw bytes, truncations and mutations are in codec_props.rs and the fuzz targets.)
    #[test]
    fn hostile_sequences_give_the_same_outcome_under_any_grouping(
        frames in proptest::collection::vec(hostile_frame(), 1..60),
        cuts_a in proptest::collection::vec(0usize..60, 0..20),
        cuts_b in proptest::collection::vec(0usize..60, 0..20),
    ) {
        let (events_a, out_a) = run_grouped(&frames, &cuts_a);
        let (events_b, out_b) = run_grouped(&frames, &cuts_b);
        let one: Vec<usize> = (1..frames.len()).collect();
        let (events_c, out_c) = run_grouped(&frames, &one);
        prop_assert_eq!(&events_a, &events_b);
        prop_assert_eq!(&events_a, &events_c);
        prop_assert_eq!(&out_a, &out_b);
        prop_assert_eq!(&out_a, &out_c);
    }
}
