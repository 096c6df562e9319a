//! P6 (and P10's allocation count): heap allocations per delivered message, counted by a
//! global allocator that wraps the system one, in one run:
//!
//! - **(a) mux-proto alone**: two `Connection`s wired back to back in memory (no runtime, no
//!   I/O), the driver pattern of mux-tokio (`poll_transmit` into a reused `BytesMut`, then
//!   `split().freeze()` into the peer's `handle_message`); one session, one direction.
//! - **(b) mux-tokio** over tokio-tungstenite on 127.0.0.1 (client and server in this
//!   process): `Session::send(..).await` on one side, `Session::recv().await` on the other.
//! - **(c) rust-yamux** over a `tokio::io::duplex`: `write_all` on one stream, `read_exact`
//!   on the other.
//!
//! Both endpoints' allocations count (sender and receiver), after a warm-up, on one
//! `current_thread` runtime, so the figure is what one message costs the whole path. Also:
//! allocations per session open → first byte → close, for (a) and (c).
//!
//! Run: `cargo bench --bench alloc` (prints a table; no criterion).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use mux_proto::{
    CloseCode, Connection, Event, Grant, OpenRequest, SendError, SessionId, Side, Timestamp,
};
use mux_tokio::{AllowAll, Client, ClientConfig, OriginPolicy, Server, ServerConfig};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Live heap bytes, attributed to the side whose call is running (see [`on_side`]).
static LIVE: [AtomicI64; 3] = [AtomicI64::new(0), AtomicI64::new(0), AtomicI64::new(0)];
static SIDE: AtomicUsize = AtomicUsize::new(0);

const OTHER: usize = 0;
const CLIENT: usize = 1;
const SERVER: usize = 2;

/// Runs `f` with allocations and frees attributed to `side`.
fn on_side<T>(side: usize, f: impl FnOnce() -> T) -> T {
    let before = SIDE.swap(side, Ordering::Relaxed);
    let out = f();
    SIDE.store(before, Ordering::Relaxed);
    out
}

fn live(side: usize) -> i64 {
    LIVE[side].load(Ordering::Relaxed)
}

fn grow(size: usize) {
    LIVE[SIDE.load(Ordering::Relaxed) % 3].fetch_add(size as i64, Ordering::Relaxed);
}

fn shrink(size: usize) {
    LIVE[SIDE.load(Ordering::Relaxed) % 3].fetch_sub(size as i64, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters are plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        grow(layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        grow(layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        shrink(layout.size());
        grow(new_size);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy)]
struct Snapshot {
    allocs: u64,
    reallocs: u64,
    bytes: u64,
}

fn snapshot() -> Snapshot {
    Snapshot {
        allocs: ALLOCS.load(Ordering::Relaxed),
        reallocs: REALLOCS.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
    }
}

/// Allocations (alloc + realloc) and bytes per unit between two snapshots.
struct Cost {
    allocs: f64,
    reallocs: f64,
    bytes: f64,
}

impl Cost {
    fn between(a: Snapshot, b: Snapshot, units: u64) -> Cost {
        let n = units as f64;
        Cost {
            allocs: (b.allocs - a.allocs) as f64 / n,
            reallocs: (b.reallocs - a.reallocs) as f64 / n,
            bytes: (b.bytes - a.bytes) as f64 / n,
        }
    }

    fn total(&self) -> f64 {
        self.allocs + self.reallocs
    }
}

const WARMUP: u64 = 2_000;
const MESSAGES: u64 = 50_000;
const OPENS: u64 = 5_000;
const IDLE: u64 = 10_000;

// ---- (a) mux-proto alone -------------------------------------------------------------

struct Direct {
    client: Connection,
    server: Connection,
    now: u64,
    buf: BytesMut,
}

impl Direct {
    fn new() -> Direct {
        Direct::with(common::bench_config())
    }

    fn with(cfg: mux_proto::Config) -> Direct {
        let mut d = Direct {
            client: Connection::new(Side::Client, cfg.clone(), Timestamp::ZERO),
            server: Connection::new(Side::Server, cfg, Timestamp::ZERO),
            now: 0,
            buf: BytesMut::with_capacity(64 * 1024),
        };
        d.shuttle();
        while d.client.poll_event().is_some() {}
        while d.server.poll_event().is_some() {}
        d
    }

    fn now(&mut self) -> Timestamp {
        self.now += 1;
        Timestamp::from_micros(self.now)
    }

    /// Moves every pending transmit both ways until both are quiet.
    fn shuttle(&mut self) {
        loop {
            let now = self.now();
            let mut moved = false;
            let (client, server, buf) = (&mut self.client, &mut self.server, &mut self.buf);
            while on_side(CLIENT, || client.poll_transmit(now, buf)) {
                let message = on_side(CLIENT, || buf.split().freeze());
                on_side(SERVER, || server.handle_message(now, message));
                moved = true;
            }
            while on_side(SERVER, || server.poll_transmit(now, buf)) {
                let message = on_side(SERVER, || buf.split().freeze());
                on_side(CLIENT, || client.handle_message(now, message));
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    /// The server side: accept, read everything; returns messages read.
    fn serve(&mut self) -> u64 {
        let now = self.now();
        let mut read = 0;
        while let Some(event) = self.server.poll_event() {
            match event {
                Event::Incoming { id, .. } => self.server.accept(now, id, Grant::full()).unwrap(),
                Event::Readable { id } => {
                    while let Some(m) = self.server.recv(now, id) {
                        drop(m);
                        read += 1;
                    }
                }
                _ => {}
            }
        }
        read
    }
}

fn mux_proto_messages(size: usize) -> Cost {
    let mut d = Direct::new();
    let now = d.now();
    let id = d
        .client
        .open(now, "alloc", Bytes::new(), OpenRequest::default())
        .unwrap();
    let payload = Bytes::from(vec![7u8; size]);
    let mut delivered = 0u64;
    let mut start = None;
    let target = WARMUP + MESSAGES;
    while delivered < target {
        let now = d.now();
        loop {
            match d.client.send(now, id, payload.clone()) {
                Ok(()) => {}
                Err(SendError::Blocked) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
        d.shuttle();
        delivered += d.serve();
        d.shuttle();
        while d.client.poll_event().is_some() {}
        if start.is_none() && delivered >= WARMUP {
            start = Some((snapshot(), delivered));
        }
    }
    let end = snapshot();
    let (s, at) = start.unwrap();
    Cost::between(s, end, delivered - at)
}

fn mux_proto_opens() -> Cost {
    let mut d = Direct::new();
    let mut start = None;
    for i in 0..(OPENS + 100) {
        if i == 100 {
            start = Some(snapshot());
        }
        let now = d.now();
        let id = d
            .client
            .open(now, "churn", Bytes::new(), OpenRequest::default())
            .unwrap();
        d.client.send(now, id, Bytes::from_static(b"x")).unwrap();
        d.shuttle();
        let now = d.now();
        let mut served: Option<SessionId> = None;
        while let Some(event) = d.server.poll_event() {
            match event {
                Event::Incoming { id, .. } => d.server.accept(now, id, Grant::full()).unwrap(),
                Event::Readable { id } => {
                    while d.server.recv(now, id).is_some() {}
                    served = Some(id);
                }
                _ => {}
            }
        }
        let sid = served.expect("first byte");
        d.server
            .close_session(now, sid, CloseCode::NORMAL, "")
            .unwrap();
        d.shuttle();
        let mut closed = false;
        while let Some(event) = d.client.poll_event() {
            closed |= matches!(event, Event::SessionClosed { .. });
        }
        while d.server.poll_event().is_some() {}
        assert!(closed, "client saw the close");
    }
    Cost::between(start.unwrap(), snapshot(), OPENS)
}

/// Live heap per idle session: `IDLE` sessions opened, accepted and left idle, attributed
/// to the server and the client endpoint. Returns (server, client) bytes per session.
fn mux_proto_idle() -> (f64, f64) {
    // Default windows (64 messages, 64 KiB), as the load tool's P7 server uses.
    let mut cfg = mux_proto::Config::default();
    cfg.limits.max_sessions = IDLE as u32 + 16;
    cfg.limits.max_pending_opens = 1024;
    cfg.limits.opens_per_sec = 1_000_000;
    cfg.limits.opens_burst = 1_000_000;
    cfg.limits.control_budget = 10_000_000;
    cfg.limits.max_recv_buffer = 1 << 40;
    let mut d = Direct::with(cfg);
    // Let every session's OPEN and ACCEPT go out in a few transmits, as a real driver would.
    let (s0, c0) = (live(SERVER), live(CLIENT));
    let mut opened = 0u64;
    while opened < IDLE {
        let now = d.now();
        for _ in 0..100 {
            on_side(CLIENT, || {
                d.client
                    .open(now, "idle", Bytes::new(), OpenRequest::default())
                    .unwrap()
            });
            opened += 1;
        }
        d.shuttle();
        let now = d.now();
        let server = &mut d.server;
        on_side(SERVER, || {
            while let Some(event) = server.poll_event() {
                if let Event::Incoming { id, .. } = event {
                    server.accept(now, id, Grant::full()).unwrap();
                }
            }
        });
        d.shuttle();
        on_side(CLIENT, || while d.client.poll_event().is_some() {});
    }
    assert_eq!(d.server.session_count() as u64, IDLE);
    // Release the transmit buffer's spare capacity so it is not counted.
    d.buf = BytesMut::new();
    let n = IDLE as f64;
    (
        (live(SERVER) - s0) as f64 / n,
        (live(CLIENT) - c0) as f64 / n,
    )
}

/// The same for rust-yamux: `IDLE` streams opened (one byte written so the peer sees each),
/// accepted and held. Both endpoints together, bytes per stream.
async fn yamux_idle() -> f64 {
    let mut config = yamux::Config::default();
    config.set_max_connection_receive_window(None);
    config.set_max_num_streams(IDLE as usize + 16);
    let (opens, mut inbound) = common::yamux_pair_with(config);
    let base = live(OTHER);
    let mut held = Vec::with_capacity(IDLE as usize);
    let mut accepted = Vec::with_capacity(IDLE as usize);
    // One at a time with a one-byte answer: yamux lets at most 256 streams wait for the
    // acceptor's ACK, which rides on the acceptor's first frame.
    for _ in 0..IDLE {
        let mut stream = common::yamux_open(&opens).await;
        stream.write_all(b"x").await.expect("write");
        let mut peer = inbound.recv().await.expect("inbound");
        let mut byte = [0u8; 1];
        peer.read_exact(&mut byte).await.expect("read");
        peer.write_all(b"y").await.expect("answer");
        stream.read_exact(&mut byte).await.expect("answer");
        held.push(stream);
        accepted.push(peer);
    }
    let per = (live(OTHER) - base) as f64 / IDLE as f64;
    drop((held, accepted));
    per
}

// ---- (b) mux-tokio over tokio-tungstenite on loopback -----------------------------------

async fn mux_tokio_messages(size: usize) -> Cost {
    let config = ServerConfig::default()
        .origins(OriginPolicy::allow(["http://localhost"]).allow_missing(true))
        .protocol(common::bench_config());
    let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), config, AllowAll, AllowAll)
        .await
        .expect("bind");
    let url = format!("ws://{}/", server.local_addr());
    let receiver = tokio::spawn(async move {
        let mut session = server.accept().await.expect("session");
        let mut delivered = 0u64;
        let mut start = None;
        while let Some(m) = session.recv().await {
            drop(m);
            delivered += 1;
            if delivered == WARMUP {
                start = Some(snapshot());
            }
            if delivered == WARMUP + MESSAGES {
                return Cost::between(start.unwrap(), snapshot(), MESSAGES);
            }
        }
        panic!("session ended early");
    });
    let mut client = Client::connect(
        &url,
        ClientConfig::default()
            .reconnect(false)
            .protocol(common::bench_config()),
    )
    .await
    .expect("connect");
    let mut session = client.open("alloc", Bytes::new()).await.expect("open");
    let payload = Bytes::from(vec![7u8; size]);
    for _ in 0..(WARMUP + MESSAGES) {
        session.send(payload.clone()).await.expect("send");
    }
    let cost = receiver.await.expect("receiver");
    drop(session);
    client.close().await;
    cost
}

// ---- (c) rust-yamux over a duplex ------------------------------------------------------

async fn yamux_messages(size: usize) -> Cost {
    let (opens, mut inbound) = common::yamux_pair();
    let receiver = tokio::spawn(async move {
        let mut stream = inbound.recv().await.expect("inbound");
        let mut buf = vec![0u8; size];
        let mut start = None;
        for delivered in 1..=(WARMUP + MESSAGES) {
            stream.read_exact(&mut buf).await.expect("read");
            if delivered == WARMUP {
                start = Some(snapshot());
            }
        }
        let cost = Cost::between(start.unwrap(), snapshot(), MESSAGES);
        (cost, stream)
    });
    let mut stream = common::yamux_open(&opens).await;
    let payload = vec![7u8; size];
    for _ in 0..(WARMUP + MESSAGES) {
        stream.write_all(&payload).await.expect("write");
    }
    stream.flush().await.expect("flush");
    let (cost, other) = receiver.await.expect("receiver");
    drop((stream, other));
    cost
}

async fn yamux_opens() -> Cost {
    let (opens, mut inbound) = common::yamux_pair();
    let server = tokio::spawn(async move {
        while let Some(mut stream) = inbound.recv().await {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.expect("first byte");
            stream.close().await.expect("close");
        }
    });
    let mut start = None;
    for i in 0..(OPENS + 100) {
        if i == 100 {
            start = Some(snapshot());
        }
        let mut stream = common::yamux_open(&opens).await;
        stream.write_all(b"x").await.expect("write");
        stream.close().await.expect("fin");
        let mut rest = [0u8; 1];
        let n = stream.read(&mut rest).await.expect("read to end");
        assert_eq!(n, 0);
    }
    let cost = Cost::between(start.unwrap(), snapshot(), OPENS);
    drop(opens);
    server.abort();
    cost
}

fn row(name: &str, c: &Cost) {
    println!(
        "{:<44} {:>10.3} {:>10.3} {:>10.3} {:>12.1}",
        name,
        c.total(),
        c.allocs,
        c.reallocs,
        c.bytes
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "== P6 allocations per delivered message (both endpoints; {MESSAGES} messages after {WARMUP} of warm-up) =="
    );
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>12}",
        "case", "allocs", "alloc()", "realloc()", "bytes"
    );
    let mut table = Vec::new();
    for size in [64usize, 1024, 16 * 1024] {
        let a = mux_proto_messages(size);
        let b = rt.block_on(mux_tokio_messages(size));
        let c = rt.block_on(yamux_messages(size));
        row(&format!("(a) mux-proto alone, {size} B"), &a);
        row(
            &format!("(b) mux-tokio + tungstenite loopback, {size} B"),
            &b,
        );
        row(&format!("(c) rust-yamux over duplex, {size} B"), &c);
        table.push((size, b.total(), c.total()));
    }
    println!();
    for (size, b, c) in table {
        println!("ratio (b)/(c) at {size} B: {:.3}", b / c);
    }
    println!();
    println!("== P10 allocations per session open -> first byte -> close (both endpoints; {OPENS} opens) ==");
    let a = mux_proto_opens();
    let c = rt.block_on(yamux_opens());
    row("(a) mux-proto alone", &a);
    row("(c) rust-yamux over duplex", &c);
    println!();
    println!("== P7 breakdown: live heap per idle session, {IDLE} sessions on one connection ==");
    let (server, client) = mux_proto_idle();
    println!("(a) mux-proto alone: server endpoint {server:.0} B, client endpoint {client:.0} B per session");
    let y = rt.block_on(yamux_idle());
    println!(
        "(c) rust-yamux: both endpoints {y:.0} B per stream (vectors holding the handles included)"
    );
}
