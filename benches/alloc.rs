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
use std::sync::atomic::{AtomicU64, Ordering};

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

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters are plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
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

// ---- (a) mux-proto alone -------------------------------------------------------------

struct Direct {
    client: Connection,
    server: Connection,
    now: u64,
    buf: BytesMut,
}

impl Direct {
    fn new() -> Direct {
        let cfg = common::bench_config();
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
            while self.client.poll_transmit(now, &mut self.buf) {
                self.server.handle_message(now, self.buf.split().freeze());
                moved = true;
            }
            while self.server.poll_transmit(now, &mut self.buf) {
                self.client.handle_message(now, self.buf.split().freeze());
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
        println!("ratio (b)/(c) at {size} B: {:.2}", b / c);
    }
    println!();
    println!("== P10 allocations per session open -> first byte -> close (both endpoints; {OPENS} opens) ==");
    let a = mux_proto_opens();
    let c = rt.block_on(yamux_opens());
    row("(a) mux-proto alone", &a);
    row("(c) rust-yamux over duplex", &c);
}
