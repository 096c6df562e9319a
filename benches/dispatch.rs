//! P5: DATA dispatch cost against the number of open sessions.
//!
//! A server `Connection` with 1, 100 or 10,000 open sessions is fed 64 KiB WebSocket
//! messages, pre-encoded, of 64 one-frame DATA messages (1 KiB payload, END set), spread
//! over the sessions round robin (one frame per session per message when there are more
//! sessions than frames; consecutive messages continue the rotation). Each iteration
//! handles one such message and drains everything the way a driver does: every event
//! (`Readable`), `recv` of every message on the sessions it names (which returns their
//! credit), and every transmit (the CREDIT frames) into a reused buffer.
//!
//! Before each iteration, untimed, the message is copied into a fresh buffer, as a driver
//! reads it from the socket: the input is then in cache whatever the session count (cycling
//! through the 157 pre-encoded messages that 10,000 sessions need would otherwise charge
//! that case for 10 MB of cold input, not for its sessions).
//!
//! A second group, `dispatch_per_message`, sends all 64 frames of a message to one session
//! and rotates messages through the sessions: the one-session traffic with N sessions open.
//!
//! Throughput is in frames, so the three session counts are directly comparable; the
//! per-frame cost should not grow with the session count. What does grow is memory
//! traffic: with 10,000 sessions each frame is for a session whose state has left the
//! cache (spec-level work per frame is O(1)).
//!
//! ```text
//! cargo bench --bench dispatch -- --warm-up-time 1 --measurement-time 3
//! ```

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use mux_proto::frame::{encode_message, Data, Frame, Open, Setting, Settings};
use mux_proto::{Config, Connection, Event, Grant, OpenRequest, SessionId, Side, Text, Timestamp};

const FRAMES: usize = 64;
const FRAME_PAYLOAD: usize = 1024;
/// Peer OPENs per setup message (kept within one transport message).
const OPENS_PER_MESSAGE: usize = 500;

fn now() -> Timestamp {
    Timestamp::from_millis(1)
}

/// Limits raised so that `sessions` sessions, all receiving, fit: sessions, pending opens,
/// open rate, control budget and the receive buffer covering every window. The window
/// (256 messages, 256 KiB) holds a whole message's 64 frames on one session.
fn config(sessions: usize) -> Config {
    let n = u32::try_from(sessions).expect("session count");
    let mut c = Config::default();
    let l = &mut c.limits;
    l.max_sessions = n;
    l.max_pending_opens = n;
    l.opens_per_sec = n;
    l.opens_burst = n;
    l.control_budget = u32::MAX;
    l.initial_credit_messages = 256;
    l.initial_credit_bytes = 256 * 1024;
    l.max_recv_buffer = u64::MAX;
    c.hash_seed = 0x5eed_cafe_f00d_d00d;
    c
}

/// The scripted client's SETTINGS: defaults, but a control budget that never paces the
/// CREDIT frames the server sends it (the clock does not move here).
fn peer_settings() -> Settings {
    Settings::default().with(Setting::ControlBudget, u32::MAX)
}

fn drain(conn: &mut Connection, buf: &mut BytesMut) {
    loop {
        buf.clear();
        if !conn.poll_transmit(now(), buf) {
            break;
        }
    }
}

/// A server whose (scripted) client has opened `sessions` sessions, all accepted.
fn server(sessions: usize) -> (Connection, Vec<SessionId>) {
    let mut conn = Connection::new(Side::Server, config(sessions), now());
    let mut buf = BytesMut::with_capacity(256 * 1024);
    drain(&mut conn, &mut buf);
    conn.handle_message(
        now(),
        encode_message([&Frame::Settings(peer_settings())]).freeze(),
    );
    let ids: Vec<SessionId> = (0..sessions)
        .map(|i| SessionId(u32::try_from(2 * i + 1).expect("session id")))
        .collect();
    for chunk in ids.chunks(OPENS_PER_MESSAGE) {
        let opens: Vec<Frame> = chunk
            .iter()
            .map(|&session_id| {
                Frame::Open(Open {
                    session_id,
                    request: OpenRequest::default(),
                    kind: Text::from_static("bench"),
                    auth: mux_proto::Credential::EMPTY,
                })
            })
            .collect();
        conn.handle_message(now(), encode_message(opens.iter()).freeze());
        while let Some(e) = conn.poll_event() {
            match e {
                Event::Incoming { id, .. } => {
                    conn.accept(now(), id, Grant::full()).expect("accept")
                }
                Event::Connected { .. } => {}
                other => panic!("setup: {other:?}"),
            }
        }
        drain(&mut conn, &mut buf);
    }
    assert_eq!(conn.session_count(), sessions);
    (conn, ids)
}

/// How a message's frames are spread over the sessions.
#[derive(Clone, Copy)]
enum Spread {
    /// Frame `i` of message `m` is for session `m * FRAMES + i` (round robin): with more
    /// sessions than frames, every frame is for a different, cache-cold session. The worst
    /// case for memory traffic.
    EveryFrame,
    /// All frames of message `m` are for session `m`: the same traffic as the one-session
    /// case, with N sessions open and messages rotating through all of them.
    PerMessage,
}

/// Pre-encoded messages of `FRAMES` one-frame DATA messages each, enough of them for the
/// rotation to visit every session.
fn messages(ids: &[SessionId], spread: Spread) -> Vec<Bytes> {
    let payload = Bytes::from(vec![0x5a; FRAME_PAYLOAD]);
    let count = match spread {
        Spread::EveryFrame => ids.len().div_ceil(FRAMES),
        Spread::PerMessage => ids.len(),
    };
    (0..count)
        .map(|m| {
            let frames: Vec<Frame> = (0..FRAMES)
                .map(|i| {
                    let session = match spread {
                        Spread::EveryFrame => (m * FRAMES + i) % ids.len(),
                        Spread::PerMessage => m,
                    };
                    Frame::Data(Data {
                        session_id: ids[session],
                        end: true,
                        fin: false,
                        payload: payload.clone(),
                    })
                })
                .collect();
            encode_message(frames.iter()).freeze()
        })
        .collect()
}

fn dispatch(c: &mut Criterion) {
    dispatch_group(c, "dispatch", Spread::EveryFrame);
    dispatch_group(c, "dispatch_per_message", Spread::PerMessage);
}

fn dispatch_group(c: &mut Criterion, name: &str, spread: Spread) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(FRAMES as u64));
    for sessions in [1usize, 100, 10_000] {
        let (mut conn, ids) = server(sessions);
        let messages = messages(&ids, spread);
        let mut buf = BytesMut::with_capacity(256 * 1024);
        let mut next = 0usize;
        group.bench_with_input(BenchmarkId::new("sessions", sessions), &sessions, |b, _| {
            b.iter_batched(
                || {
                    // The driver has just read the message into a fresh buffer: copy it (not
                    // timed) so it is in cache whatever the session count, as it would be.
                    let message = Bytes::copy_from_slice(&messages[next]);
                    next = (next + 1) % messages.len();
                    drop(message.clone());
                    message
                },
                |message| {
                    conn.handle_message(now(), message);
                    let mut received = 0usize;
                    while let Some(event) = conn.poll_event() {
                        match event {
                            Event::Readable { id } => {
                                while let Some(m) = conn.recv(now(), id) {
                                    received += m.len();
                                }
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    drain(&mut conn, &mut buf);
                    assert_eq!(received, FRAMES * FRAME_PAYLOAD);
                    received
                },
                BatchSize::PerIteration,
            )
        });
        assert!(conn.is_open(), "{:?}", conn.close_code());
        assert_eq!(conn.session_count(), sessions);
    }
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
