//! Shared workloads for the side-by-side benches (`mux_vs_yamux`, `alloc`).
//!
//! Every workload runs both of its endpoints as tasks on the caller's runtime (the benches
//! use one `current_thread` runtime, so a figure is the whole CPU cost of moving a message
//! from one application to the other) over one `tokio::io::duplex(1 MiB)`:
//!
//! - **mux**: two `mux_proto::Connection`s driven inline by [`run_endpoint`] (the
//!   application callbacks run in the same loop as the I/O; no task per session), over either
//!   a 4-byte length prefix ([`Framing::Len`]) or real WebSocket framing from
//!   tokio-tungstenite ([`Framing::Ws`], the client side masking as RFC 6455 requires).
//! - **yamux**: rust-yamux's `Connection` driven by one task per side, one task per stream,
//!   with its default `Config` (256 KiB stream window, 16 KiB split-send size).
//! - **raw**: the same bytes written straight to the duplex.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

/// The yamux connection driver, shared with the load tool.
#[path = "../load/yamux_drive.rs"]
mod yamux_drive;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{
    AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _, SinkExt as _, StreamExt as _,
};
use mux_proto::{
    CloseCode, Config, Connection, Event, Grant, OpenRequest, SendError, SessionId, Side, Timestamp,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::compat::TokioAsyncReadCompatExt as _;

/// Capacity of the in-memory pipe, each direction.
pub const DUPLEX: usize = 1 << 20;

/// The mux configuration of the comparisons: per-session windows as large as yamux's
/// (256 KiB, and enough message credit that 64 B messages are bound by bytes, as in yamux),
/// and limits that protect a browser-facing server (control budget, open rate) lifted so the
/// benchmark measures the data path, not a policy.
pub fn bench_config() -> Config {
    let mut c = Config::default();
    c.limits.initial_credit_bytes = 256 * 1024;
    c.limits.initial_credit_messages = 4096;
    c.limits.max_queued_messages = 1024;
    c.limits.max_send_buffer = 16 * 1024 * 1024;
    c.limits.max_recv_buffer = 1 << 30;
    c.limits.control_budget = 10_000_000;
    c.limits.opens_per_sec = 10_000_000;
    c.limits.opens_burst = 10_000_000;
    c.limits.max_pending_opens = 1024;
    c.limits.max_sessions = 10_000;
    c.hash_seed = 0x5eed;
    // What-if knob: a larger frame size (default 16 KiB) sends a 64 KiB message as one
    // frame, which the receiver hands over without reassembling it.
    if let Some(frame) = std::env::var("MUX_BENCH_MAX_FRAME")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        c.limits.max_frame_size = frame;
    }
    c
}

/// How mux messages are delimited on the byte pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A 4-byte big-endian length before each message.
    Len,
    /// WebSocket binary messages (tokio-tungstenite, as mux-tokio configures it).
    Ws,
}

impl Framing {
    pub fn name(self) -> &'static str {
        match self {
            Framing::Len => "mux",
            Framing::Ws => "mux-ws",
        }
    }
}

/// A message-oriented pipe end.
pub enum Wire {
    Len(Framed<DuplexStream, LengthDelimitedCodec>),
    Ws(Box<WebSocketStream<DuplexStream>>),
}

fn ws_config() -> WebSocketConfig {
    let max = mux_proto::MIN_TRANSMIT + mux_proto::frame::HEADER_LEN + 16 * 1024;
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * max)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

impl Wire {
    pub async fn new(io: DuplexStream, framing: Framing, side: Side) -> Wire {
        match framing {
            Framing::Len => Wire::Len(Framed::new(io, LengthDelimitedCodec::new())),
            Framing::Ws => {
                let role = match side {
                    Side::Client => Role::Client,
                    Side::Server => Role::Server,
                };
                Wire::Ws(Box::new(
                    WebSocketStream::from_raw_socket(io, role, Some(ws_config())).await,
                ))
            }
        }
    }

    async fn feed(&mut self, b: Bytes) -> io::Result<()> {
        match self {
            Wire::Len(f) => f.feed(b).await,
            Wire::Ws(w) => w.feed(Message::Binary(b)).await.map_err(io::Error::other),
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Wire::Len(f) => futures::SinkExt::<Bytes>::flush(f).await,
            Wire::Ws(w) => w.flush().await.map_err(io::Error::other),
        }
    }

    /// The next message; `None` at the end of the pipe.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            match self {
                Wire::Len(f) => return f.next().await.and_then(Result::ok).map(BytesMut::freeze),
                Wire::Ws(w) => match w.next().await? {
                    Ok(Message::Binary(b)) => return Some(b),
                    Ok(_) => continue,
                    Err(_) => return None,
                },
            }
        }
    }
}

/// The application half of an inline mux endpoint.
pub trait App {
    /// One event from the connection.
    fn on_event(&mut self, conn: &mut Connection, now: Timestamp, event: Event);
    /// Called once per loop after the events; returns true if it queued anything.
    fn work(&mut self, _conn: &mut Connection, _now: Timestamp) -> bool {
        false
    }
    /// True when the endpoint should stop.
    fn done(&self) -> bool;
}

fn stamp(epoch: Instant) -> Timestamp {
    Timestamp::from_micros(epoch.elapsed().as_micros() as u64)
}

/// Drives one mux-proto `Connection` over `wire` with `app` inline: drain events, let the app
/// queue, coalesce every pending transmit into the pipe and flush once, then read (up to 32
/// messages that are already there, without waiting for more) or sleep until the next timer.
/// Returns when the app is done or the pipe ends.
pub async fn run_endpoint<A: App>(
    mut conn: Connection,
    mut wire: Wire,
    app: &mut A,
    epoch: Instant,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let now = stamp(epoch);
        // Only queued messages and written transmits count as progress: an event alone (a
        // `Writable` while the send buffer is still too full for the next message) would
        // otherwise spin this loop without ever reading.
        while let Some(event) = conn.poll_event() {
            app.on_event(&mut conn, now, event);
        }
        let mut progressed = app.work(&mut conn, now);
        let mut wrote = false;
        while conn.poll_transmit(now, &mut buf) {
            if wire.feed(buf.split().freeze()).await.is_err() {
                return Ok(());
            }
            wrote = true;
        }
        if wrote && wire.flush().await.is_err() {
            return Ok(());
        }
        while let Some(event) = conn.poll_event() {
            app.on_event(&mut conn, now, event);
        }
        progressed |= app.work(&mut conn, now);
        if app.done() {
            return Ok(());
        }
        if progressed || wrote {
            continue;
        }
        if conn.is_closed() {
            return Ok(());
        }
        let deadline = conn
            .poll_timeout()
            .map(|t| tokio::time::Instant::from_std(epoch + Duration::from_micros(t.as_micros())));
        let reading = conn.wants_read();
        tokio::select! {
            message = wire.next(), if reading => {
                let Some(message) = message else { return Ok(()) };
                let now = stamp(epoch);
                conn.handle_message(now, message);
                for _ in 0..32 {
                    if !conn.wants_read() {
                        break;
                    }
                    match wire.next().now_or_never() {
                        Some(Some(message)) => conn.handle_message(now, message),
                        Some(None) => return Ok(()),
                        None => break,
                    }
                }
            }
            () = sleep_opt(deadline) => conn.handle_timeout(stamp(epoch)),
        }
    }
}

async fn sleep_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Opens `sessions` sessions and sends `per_session` copies of `payload` on each, as fast as
/// credit allows, round robin.
pub struct BulkSender {
    sessions: usize,
    per_session: u64,
    payload: Bytes,
    ids: Vec<(SessionId, u64, bool)>,
}

impl BulkSender {
    pub fn new(sessions: usize, per_session: u64, payload: Bytes) -> Self {
        BulkSender {
            sessions,
            per_session,
            payload,
            ids: Vec::new(),
        }
    }
}

impl App for BulkSender {
    fn on_event(&mut self, conn: &mut Connection, now: Timestamp, event: Event) {
        match event {
            Event::Connected { .. } => {
                for _ in 0..self.sessions {
                    let id = conn
                        .open(now, "bench", Bytes::new(), OpenRequest::default())
                        .expect("open");
                    self.ids.push((id, self.per_session, false));
                }
            }
            Event::Writable { id } => {
                if let Some(s) = self.ids.iter_mut().find(|s| s.0 == id) {
                    s.2 = false;
                }
            }
            Event::SessionClosed { code, .. } => panic!("bench session closed: {code:?}"),
            Event::ConnectionClosed { code, reason, .. } => {
                panic!("bench connection closed: {code:?} {reason:?}")
            }
            _ => {}
        }
    }

    fn work(&mut self, conn: &mut Connection, now: Timestamp) -> bool {
        let mut queued = false;
        for (id, left, blocked) in &mut self.ids {
            while *left > 0 && !*blocked {
                match conn.send(now, *id, self.payload.clone()) {
                    Ok(()) => {
                        *left -= 1;
                        queued = true;
                    }
                    Err(SendError::Blocked) => *blocked = true,
                    Err(e) => panic!("send: {e:?}"),
                }
            }
        }
        queued
    }

    fn done(&self) -> bool {
        false
    }
}

/// Accepts every session and reads every message until `target` messages arrived.
pub struct BulkReceiver {
    pub target: u64,
    pub received: u64,
    pub bytes: u64,
}

impl App for BulkReceiver {
    fn on_event(&mut self, conn: &mut Connection, now: Timestamp, event: Event) {
        match event {
            Event::Incoming { id, .. } => conn.accept(now, id, Grant::full()).expect("accept"),
            Event::Readable { id } => {
                while let Some(m) = conn.recv(now, id) {
                    self.received += 1;
                    self.bytes += m.len() as u64;
                }
            }
            Event::ConnectionClosed { code, reason, .. } => {
                panic!("bench connection closed: {code:?} {reason:?}")
            }
            _ => {}
        }
    }

    fn done(&self) -> bool {
        self.received >= self.target
    }
}

/// mux: `sessions` × `per_session` messages of `size` bytes, one direction. Returns the
/// time from start until the receiver has read the last message.
pub async fn mux_bulk(
    framing: Framing,
    sessions: usize,
    per_session: u64,
    size: usize,
) -> Duration {
    let (a, b) = tokio::io::duplex(DUPLEX);
    let payload = Bytes::from(vec![0xa5u8; size]);
    let start = Instant::now();
    let epoch = start;
    let sender = tokio::spawn(async move {
        let wire = Wire::new(a, framing, Side::Client).await;
        let conn = Connection::new(Side::Client, bench_config(), stamp(epoch));
        let mut app = BulkSender::new(sessions, per_session, payload);
        let _ = run_endpoint(conn, wire, &mut app, epoch).await;
    });
    let wire = Wire::new(b, framing, Side::Server).await;
    let conn = Connection::new(Side::Server, bench_config(), stamp(epoch));
    let mut app = BulkReceiver {
        target: sessions as u64 * per_session,
        received: 0,
        bytes: 0,
    };
    run_endpoint(conn, wire, &mut app, epoch)
        .await
        .expect("receiver");
    let elapsed = start.elapsed();
    assert_eq!(app.received, sessions as u64 * per_session);
    sender.await.expect("sender task");
    elapsed
}

/// Raw: `count` writes of `size` bytes straight into the duplex, read back in `size` chunks.
pub async fn raw_bulk(count: u64, size: usize) -> Duration {
    let (mut a, mut b) = tokio::io::duplex(DUPLEX);
    let payload = vec![0xa5u8; size];
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..count {
            a.write_all(&payload).await.expect("write");
        }
        a.flush().await.expect("flush");
        a
    });
    let mut buf = vec![0u8; size];
    for _ in 0..count {
        b.read_exact(&mut buf).await.expect("read");
    }
    let elapsed = start.elapsed();
    drop(writer.await.expect("writer"));
    elapsed
}

// ---- yamux ---------------------------------------------------------------------------

pub type OpenRequestTx = yamux_drive::OpenRequests;

/// A yamux client and server over one duplex, their drivers spawned. Returns the client's
/// open-request sender and the server's inbound streams.
pub fn yamux_pair() -> (OpenRequestTx, mpsc::UnboundedReceiver<yamux::Stream>) {
    yamux_pair_with(yamux::Config::default())
}

pub fn yamux_pair_with(
    config: yamux::Config,
) -> (OpenRequestTx, mpsc::UnboundedReceiver<yamux::Stream>) {
    let (a, b) = tokio::io::duplex(DUPLEX);
    let client = yamux::Connection::new(a.compat(), config.clone(), yamux::Mode::Client);
    let server = yamux::Connection::new(b.compat(), config, yamux::Mode::Server);
    let (open_tx, open_rx) = mpsc::channel(1024);
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    tokio::spawn(yamux_drive::drive(client, Some(open_rx), None));
    tokio::spawn(yamux_drive::drive(server, None, Some(in_tx)));
    (open_tx, in_rx)
}

pub async fn yamux_open(opens: &OpenRequestTx) -> yamux::Stream {
    yamux_drive::open(opens).await.expect("yamux open")
}

/// yamux: `sessions` streams × `per_session` writes of `size` bytes, one direction; the
/// receiver reads each message with `read_exact`. Same clock as [`mux_bulk`].
pub async fn yamux_bulk(sessions: usize, per_session: u64, size: usize) -> Duration {
    let start = Instant::now();
    let (opens, mut inbound) = yamux_pair();
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let target = sessions as u64 * per_session;
    let payload = vec![0xa5u8; size];
    let mut writers = Vec::new();
    for _ in 0..sessions {
        let opens = opens.clone();
        let payload = payload.clone();
        writers.push(tokio::spawn(async move {
            let mut stream = yamux_open(&opens).await;
            for _ in 0..per_session {
                stream.write_all(&payload).await.expect("yamux write");
            }
            stream.flush().await.expect("yamux flush");
            stream
        }));
    }
    let readers = {
        let received = received.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for _ in 0..sessions {
                let mut stream = inbound.recv().await.expect("inbound stream");
                let received = received.clone();
                let done = done.clone();
                tasks.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; size];
                    for _ in 0..per_session {
                        stream.read_exact(&mut buf).await.expect("yamux read");
                        if received.fetch_add(1, Ordering::Relaxed) + 1 == target {
                            done.notify_one();
                        }
                    }
                    stream
                }));
            }
            tasks
        })
    };
    done.notified().await;
    let elapsed = start.elapsed();
    assert_eq!(received.load(Ordering::Relaxed), target);
    for w in writers {
        drop(w.await.expect("writer"));
    }
    for r in readers.await.expect("readers") {
        drop(r.await.expect("reader"));
    }
    elapsed
}

// ---- churn (P10) ---------------------------------------------------------------------

/// Opens sessions with at most `window` in flight; each sends one byte, the server reads
/// it and closes the session; done after `total` closes.
pub struct ChurnClient {
    pub total: u64,
    pub window: u64,
    pub started: u64,
    pub closed: u64,
    connected: bool,
}

impl ChurnClient {
    pub fn new(total: u64, window: u64) -> Self {
        ChurnClient {
            total,
            window,
            started: 0,
            closed: 0,
            connected: false,
        }
    }
}

static ONE_BYTE: &[u8] = b"x";

impl App for ChurnClient {
    fn on_event(&mut self, _conn: &mut Connection, _now: Timestamp, event: Event) {
        match event {
            Event::Connected { .. } => self.connected = true,
            Event::SessionClosed { code, .. } => {
                assert_eq!(code, CloseCode::NORMAL);
                self.closed += 1;
            }
            Event::ConnectionClosed { code, reason, .. } => {
                panic!("churn connection closed: {code:?} {reason:?}")
            }
            _ => {}
        }
    }

    fn work(&mut self, conn: &mut Connection, now: Timestamp) -> bool {
        let mut queued = false;
        while self.connected
            && self.started < self.total
            && self.started - self.closed < self.window
        {
            let id = conn
                .open(now, "churn", Bytes::new(), OpenRequest::default())
                .expect("open");
            conn.send(now, id, Bytes::from_static(ONE_BYTE))
                .expect("first byte");
            self.started += 1;
            queued = true;
        }
        queued
    }

    fn done(&self) -> bool {
        self.closed >= self.total
    }
}

/// Accepts, reads the first byte, closes.
#[derive(Default)]
pub struct ChurnServer {
    pub served: u64,
}

impl App for ChurnServer {
    fn on_event(&mut self, conn: &mut Connection, now: Timestamp, event: Event) {
        match event {
            Event::Incoming { id, .. } => conn.accept(now, id, Grant::full()).expect("accept"),
            Event::Readable { id } if conn.recv(now, id).is_some() => {
                self.served += 1;
                conn.close_session(now, id, CloseCode::NORMAL, "")
                    .expect("close");
            }
            _ => {}
        }
    }

    fn done(&self) -> bool {
        false
    }
}

/// mux churn: `total` sessions, `window` at a time. Returns the elapsed time.
pub async fn mux_churn(total: u64, window: u64) -> Duration {
    let (a, b) = tokio::io::duplex(DUPLEX);
    let start = Instant::now();
    let epoch = start;
    let server = tokio::spawn(async move {
        let wire = Wire::new(b, Framing::Len, Side::Server).await;
        let conn = Connection::new(Side::Server, bench_config(), stamp(epoch));
        let mut app = ChurnServer::default();
        let _ = run_endpoint(conn, wire, &mut app, epoch).await;
        app.served
    });
    let wire = Wire::new(a, Framing::Len, Side::Client).await;
    let conn = Connection::new(Side::Client, bench_config(), stamp(epoch));
    let mut app = ChurnClient::new(total, window);
    run_endpoint(conn, wire, &mut app, epoch)
        .await
        .expect("client");
    let elapsed = start.elapsed();
    assert_eq!(app.closed, total);
    let served = server.await.expect("server");
    assert_eq!(served, total);
    elapsed
}

/// yamux churn: open a stream, write one byte and FIN; the server reads it and closes; the
/// client reads to the end. `window` streams at a time.
pub async fn yamux_churn(total: u64, window: u64) -> Duration {
    let start = Instant::now();
    let (opens, mut inbound) = yamux_pair();
    let server = tokio::spawn(async move {
        let mut served = 0u64;
        while served < total {
            let Some(mut stream) = inbound.recv().await else {
                break;
            };
            served += 1;
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).await.expect("first byte");
                stream.close().await.expect("close");
            });
        }
        served
    });
    let semaphore = Arc::new(tokio::sync::Semaphore::new(window as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..total {
        let permit = semaphore.clone().acquire_owned().await.expect("semaphore");
        let opens = opens.clone();
        tasks.spawn(async move {
            let mut stream = yamux_open(&opens).await;
            stream.write_all(ONE_BYTE).await.expect("write");
            stream.close().await.expect("fin");
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.expect("read to end");
            drop(permit);
        });
        while let Some(done) = tasks.try_join_next() {
            done.expect("churn task");
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("churn task");
    }
    let elapsed = start.elapsed();
    assert_eq!(server.await.expect("server"), total);
    elapsed
}

/// The median of `values` (sorted in place).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
