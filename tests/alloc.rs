//! Heap allocations on mux-proto's hot paths, counted by a `#[global_allocator]`.
//!
//! A counting wrapper around the system allocator counts, per thread, every `alloc`,
//! `alloc_zeroed` and `realloc`; each phase below is measured on its own, after a warm-up
//! that lets every queue reach its steady-state capacity. The inputs are pre-encoded
//! WebSocket messages whose `Bytes` are already shared (cloning one is a reference-count
//! increment), as a driver's would be, so only the connection's own allocations count.
//!
//! - **receive**: `handle_message` + `poll_event` + `recv` of one message, on a server;
//! - **credit out**: the `poll_transmit` (into a reused `BytesMut`) that returns its credit;
//! - **send**: `send` of one message, on a client;
//! - **transmit**: the `poll_transmit` calls (into a reused `BytesMut`) that write it;
//! - **credit in**: `handle_message` + `poll_event` of the CREDIT that replenishes it.
//!
//! Receiving a one-frame message must not allocate at all, alone in its WebSocket message or
//! sharing it with others (then it is copied into the receive arena), and neither may
//! turning down a malformed frame (`Header::parse` and `Frames` on a header that breaks each
//! rule in turn, and on a missing payload). The numbers are printed
//! (`cargo test --test alloc -- --nocapture`) and held to the bounds measured when this
//! test was written.
//!
//! This lives in the root package because a global allocator needs `unsafe impl`, which
//! the workspace lints forbid in mux-proto's own targets.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use mux_proto::frame::{encode_message, Accept, Credit, Data, Frame, Open, Setting, Settings};
use mux_proto::{
    Config, Connection, Event, Grant, OpenRequest, Permissions, RateLimits, SessionId, Side, Text,
    Timestamp,
};

// ---- the counting allocator ----------------------------------------------------------

struct Counting;

thread_local! {
    /// Allocations (alloc, alloc_zeroed, realloc) made by this thread.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the thread-local may already be gone while the thread exits.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter is a const-initialised thread-local `Cell` without a destructor, so touching it
// never allocates or re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Runs `f`, adding the allocations it made on this thread to `total`.
fn counted<R>(total: &mut u64, f: impl FnOnce() -> R) -> R {
    let before = allocations();
    let r = f();
    *total += allocations() - before;
    r
}

// ---- setup through the public API ------------------------------------------------------

const WARMUP: u64 = 2_000;
const MEASURED: u64 = 10_000;
const SESSION: SessionId = SessionId(1);

fn now() -> Timestamp {
    Timestamp::from_millis(1)
}

/// A WebSocket message of `frames`, shared so that clones do not allocate.
fn wire(frames: &[Frame]) -> Bytes {
    let message = encode_message(frames.iter()).freeze();
    // The first clone of a `Bytes` made from a buffer turns it into a shared one; do it now.
    drop(message.clone());
    message
}

/// The scripted peer's SETTINGS: defaults, but a control budget that never paces the
/// CREDIT frames the connection sends it (the clock does not move here).
fn peer_settings() -> Settings {
    Settings::default().with(Setting::ControlBudget, u32::MAX)
}

fn config() -> Config {
    let mut c = Config::default();
    // CREDIT frames count against the control budget and the clock does not move here.
    c.limits.control_budget = u32::MAX;
    c
}

fn drain(conn: &mut Connection, buf: &mut BytesMut) {
    loop {
        buf.clear();
        if !conn.poll_transmit(now(), buf) {
            break;
        }
    }
    while let Some(e) = conn.poll_event() {
        assert!(
            !matches!(
                e,
                Event::ConnectionClosed { .. } | Event::SessionClosed { .. }
            ),
            "{e:?}"
        );
    }
}

/// A server with session 1 opened by its (raw) client and accepted.
fn server() -> Connection {
    let mut conn = Connection::new(Side::Server, config(), now());
    let mut buf = BytesMut::new();
    drain(&mut conn, &mut buf);
    conn.handle_message(now(), wire(&[Frame::Settings(peer_settings())]));
    conn.handle_message(
        now(),
        wire(&[Frame::Open(Open {
            session_id: SESSION,
            request: OpenRequest::default(),
            kind: Text::from_static("alloc"),
            auth: mux_proto::Credential::EMPTY,
        })]),
    );
    assert!(matches!(conn.poll_event(), Some(Event::Connected { .. })));
    assert!(matches!(conn.poll_event(), Some(Event::Incoming { .. })));
    conn.accept(now(), SESSION, Grant::full()).unwrap();
    drain(&mut conn, &mut buf);
    conn
}

/// A client with session 1 opened and accepted by its (raw) server.
fn client() -> Connection {
    let mut conn = Connection::new(Side::Client, config(), now());
    let mut buf = BytesMut::new();
    conn.handle_message(now(), wire(&[Frame::Settings(peer_settings())]));
    let id = conn
        .open(now(), "alloc", Bytes::new(), OpenRequest::default())
        .unwrap();
    assert_eq!(id, SESSION);
    conn.handle_message(
        now(),
        wire(&[Frame::Accept(Accept {
            session_id: SESSION,
            permissions: Permissions::BOTH,
            max_message_size: 65_536,
            rate: RateLimits::default(),
        })]),
    );
    drain(&mut conn, &mut buf);
    conn
}

/// One message of `size` bytes as DATA frames of at most 16 KiB (the default
/// MAX_FRAME_SIZE), END on the last.
fn data_frames(size: usize) -> Vec<Frame> {
    let payload = Bytes::from(vec![0x5a; size]);
    let mut frames = Vec::new();
    let mut offset = 0;
    loop {
        let len = (size - offset).min(16_384);
        let end = offset + len == size;
        frames.push(Frame::Data(Data {
            session_id: SESSION,
            end,
            fin: false,
            payload: payload.slice(offset..offset + len),
        }));
        offset += len;
        if end {
            return frames;
        }
    }
}

// ---- the measurements ----------------------------------------------------------------

#[derive(Debug, Default)]
struct Counts {
    receive: u64,
    credit_out: u64,
    send: u64,
    transmit: u64,
    credit_in: u64,
}

impl Counts {
    fn per_message(&self, n: u64) -> [f64; 5] {
        [
            self.receive,
            self.credit_out,
            self.send,
            self.transmit,
            self.credit_in,
        ]
        .map(|c| c as f64 / n as f64)
    }
}

/// Receives `WARMUP + MEASURED` messages of `size` bytes on a server, counting the
/// measured ones.
fn receive(size: usize, counts: &mut Counts) {
    let mut conn = server();
    let message = wire(&data_frames(size));
    let mut buf = BytesMut::with_capacity(128 * 1024);
    for i in 0..WARMUP + MEASURED {
        let mut receive = 0;
        let mut credit_out = 0;
        counted(&mut receive, || {
            conn.handle_message(now(), message.clone());
            while let Some(e) = conn.poll_event() {
                assert!(matches!(e, Event::Readable { .. }), "{e:?}");
            }
            let got = conn.recv(now(), SESSION).expect("a message");
            assert_eq!(got.len(), size);
        });
        counted(&mut credit_out, || loop {
            buf.clear();
            if !conn.poll_transmit(now(), &mut buf) {
                break;
            }
        });
        if i >= WARMUP {
            counts.receive += receive;
            counts.credit_out += credit_out;
        }
    }
    assert!(conn.is_open());
}

/// Sends `WARMUP + MEASURED` messages of `size` bytes from a client whose peer returns the
/// credit after each, counting the measured ones.
fn send(size: usize, counts: &mut Counts) {
    let mut conn = client();
    let message = Bytes::from(vec![0xa5; size]);
    drop(message.clone());
    let credit = wire(&[Frame::Credit(Credit {
        session_id: SESSION,
        messages: 1,
        bytes: u32::try_from(size).unwrap(),
    })]);
    let mut buf = BytesMut::with_capacity(128 * 1024);
    for i in 0..WARMUP + MEASURED {
        let (mut send, mut transmit, mut credit_in) = (0, 0, 0);
        counted(&mut send, || {
            conn.send(now(), SESSION, message.clone()).unwrap();
        });
        let mut written = 0;
        counted(&mut transmit, || loop {
            buf.clear();
            if !conn.poll_transmit(now(), &mut buf) {
                break;
            }
            written += buf.len();
        });
        assert!(written > size, "the message was not sent");
        counted(&mut credit_in, || {
            conn.handle_message(now(), credit.clone());
            while let Some(e) = conn.poll_event() {
                assert!(!matches!(e, Event::ConnectionClosed { .. }), "{e:?}");
            }
        });
        if i >= WARMUP {
            counts.send += send;
            counts.transmit += transmit;
            counts.credit_in += credit_in;
        }
    }
    assert!(conn.is_open());
}

fn measure(size: usize) -> [f64; 5] {
    let mut counts = Counts::default();
    receive(size, &mut counts);
    send(size, &mut counts);
    let per = counts.per_message(MEASURED);
    let frames = data_frames(size).len();
    println!(
        "{size:>6} B ({frames} frame{}): allocations per message: receive {:.3}, credit out {:.3}, \
         send {:.3}, transmit {:.3}, credit in {:.3}",
        if frames == 1 { "" } else { "s" },
        per[0],
        per[1],
        per[2],
        per[3],
        per[4],
    );
    per
}

#[test]
fn the_counter_sees_allocations() {
    let mut n = 0;
    counted(&mut n, || drop(std::hint::black_box(vec![1u8; 100])));
    assert_eq!(n, 1);
}

#[test]
fn receiving_a_one_frame_message_allocates_nothing() {
    for size in [64, 1024] {
        let [receive, credit_out, send, transmit, credit_in] = measure(size);
        assert_eq!(receive, 0.0, "{size} B: handle_message + poll_event + recv");
        assert_eq!(credit_out, 0.0, "{size} B: the CREDIT transmit");
        assert_eq!(send, 0.0, "{size} B: send");
        assert_eq!(transmit, 0.0, "{size} B: poll_transmit");
        assert_eq!(credit_in, 0.0, "{size} B: the CREDIT received");
    }
}

/// Small messages that share their WebSocket message are copied (a slice would pin the
/// whole message), into the receive arena's recycled chunks: none allocates once warm.
#[test]
fn small_messages_sharing_a_websocket_message_allocate_nothing() {
    for size in [64, 1024] {
        let mut conn = server();
        let frame = || {
            Frame::Data(Data {
                session_id: SESSION,
                end: true,
                fin: false,
                payload: Bytes::from(vec![0x5a; size]),
            })
        };
        let message = wire(&[frame(), frame(), frame(), frame()]);
        let mut buf = BytesMut::with_capacity(128 * 1024);
        let mut receive = 0;
        for i in 0..WARMUP + MEASURED {
            let mut n = 0;
            counted(&mut n, || {
                conn.handle_message(now(), message.clone());
                while conn.poll_event().is_some() {}
                for _ in 0..4 {
                    let got = conn.recv(now(), SESSION).expect("a message");
                    assert_eq!(got.len(), size);
                }
                loop {
                    buf.clear();
                    if !conn.poll_transmit(now(), &mut buf) {
                        break;
                    }
                }
            });
            if i >= WARMUP {
                receive += n;
            }
        }
        assert!(conn.is_open());
        let per = receive as f64 / (4 * MEASURED) as f64;
        println!("{size:>6} B, 4 to a WebSocket message: allocations per message {per:.3}");
        assert_eq!(receive, 0, "{size} B: allocations while receiving");
    }
}

#[test]
fn multi_frame_messages_allocate_only_for_reassembly() {
    // 40 KiB: three DATA frames of 16 KiB, 16 KiB and 8 KiB.
    let [receive, credit_out, send, transmit, credit_in] = measure(40 * 1024);
    // Reassembly: the message buffer (allocated on the first fragment, grown on the next
    // two) and, at the END, the shared handle the frozen message needs.
    assert!(receive <= 4.0, "receive {receive}");
    assert_eq!(credit_out, 0.0);
    assert_eq!(send, 0.0);
    assert_eq!(transmit, 0.0);
    assert_eq!(credit_in, 0.0);
}

/// Malformed headers, one for each header rule, with the error each must get.
const MALFORMED: [(&str, &[u8]); 8] = [
    ("TruncatedHeader", &[0x10, 0x01, 0, 0, 0, 1, 0, 0]),
    ("UnsupportedVersion", &[0x20, 0x01, 0, 0, 0, 1, 0, 0, 0, 0]),
    ("UnknownType", &[0x1f, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]),
    ("ReservedFlags", &[0x10, 0x04, 0, 0, 0, 1, 0, 0, 0, 0]),
    ("InvalidFlags", &[0x10, 0x00, 0, 0, 0, 1, 0, 0, 0, 0]),
    ("WrongSession", &[0x10, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]),
    ("BadLength", &[0x17, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]),
    // A valid header whose payload is missing: only the frame decoder sees this one.
    ("TruncatedPayload", &[0x10, 0x01, 0, 0, 0, 1, 0, 0, 0, 5]),
];

#[test]
fn rejecting_a_malformed_frame_allocates_nothing() {
    for (kind, bytes) in MALFORMED {
        let message = Bytes::from_static(bytes);
        let mut n = 0;
        let header = counted(&mut n, || mux_proto::frame::Header::parse(bytes));
        if kind == "TruncatedPayload" {
            assert!(header.is_ok(), "{kind}: the header itself is valid");
        } else {
            assert_eq!(header.map_err(|e| e.kind()), Err(kind));
        }
        let first = counted(&mut n, || mux_proto::frame::Frames::new(message).next());
        let error = first.and_then(Result::err).map(|e| e.kind());
        assert_eq!(error, Some(kind));
        assert_eq!(n, 0, "{kind}: allocations while rejecting {bytes:02x?}");
    }
}
