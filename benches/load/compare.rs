//! `compare` (issue 16): mux-tokio through its public API against rust-yamux over one
//! tokio-tungstenite WebSocket, one tokio-tungstenite WebSocket per session, and (for bulk)
//! raw TCP, all on loopback in this process on one multi-thread runtime. The sides of each
//! case run alternately in the same run (the order flipped every round) and the figure to
//! quote is the median per-round ratio.
//!
//! - `echo-64B`, `echo-1KiB`: 100 sessions × 16 messages in flight on one connection, closed
//!   loop; echoes/s and process CPU per echo (client and server together).
//! - `bulk-64KiB`: one session sending 64 KiB messages as fast as it may, default settings;
//!   MB/s counted where the receiver reads.
//! - `churn`: open → one message and its echo → close, 16 in flight; sessions/s.
//!
//! Each side is one `async fn` per case below; only the `mux` ones touch mux-tokio
//! (`Client::connect`, `Client::connection`, `ConnectionHandle::open`, `Session::send`,
//! `Session::recv`, `Session::close`), with the server from `server::start`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, Sink, SinkExt as _, Stream, StreamExt as _};
use mux_proto::CloseCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::echo::connect_all;
use crate::{median, seconds, server, sys, yamux_drive, CompareArgs};

type Ws = WebSocketStream<TcpStream>;

/// Bridges a WebSocket's binary messages to a byte stream: each write is one binary
/// message, reads return the received messages' bytes in order (for yamux over WebSocket).
pub struct WsIo {
    ws: Ws,
    pending: Bytes,
}

impl WsIo {
    pub fn new(ws: Ws) -> Self {
        WsIo {
            ws,
            pending: Bytes::new(),
        }
    }
}

impl futures::AsyncRead for WsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        while self.pending.is_empty() {
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.pending = b,
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(0)),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
            }
        }
        let n = buf.len().min(self.pending.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), self.pending.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.pending.advance(n);
        Poll::Ready(Ok(n))
    }
}

impl futures::AsyncWrite for WsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let ws = Pin::new(&mut self.ws);
        ready!(ws.poll_ready(cx)).map_err(std::io::Error::other)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(std::io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_flush(cx)
            .map_err(std::io::Error::other)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_close(cx)
            .map_err(std::io::Error::other)
    }
}

/// The peers' servers, all on 127.0.0.1 on the current runtime.
struct Servers {
    /// mux-tokio (`server::start`): `echo` and `sink` sessions.
    mux_url: String,
    /// rust-yamux over one WebSocket per connection (`server::serve_yamux`).
    yamux_ws: std::net::SocketAddr,
    /// One WebSocket per session: path `/sink` reads and drops, any other echoes.
    ws: std::net::SocketAddr,
    /// Raw TCP sink.
    tcp: std::net::SocketAddr,
    _mux: server::Running,
}

async fn start_servers() -> Result<Servers, String> {
    let mux = server::start(([127, 0, 0, 1], 0).into(), server::Options::default(), None)
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let bind = || async {
        TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| format!("bind: {e}"))
    };
    let yamux_ws = bind().await?;
    let ws = bind().await?;
    let tcp = bind().await?;
    let servers = Servers {
        mux_url: format!("ws://{}/", mux.addr),
        yamux_ws: yamux_ws.local_addr().map_err(|e| e.to_string())?,
        ws: ws.local_addr().map_err(|e| e.to_string())?,
        tcp: tcp.local_addr().map_err(|e| e.to_string())?,
        _mux: mux,
    };
    tokio::spawn(async move {
        while let Ok((tcp, _)) = yamux_ws.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                    server::serve_yamux(WsIo::new(ws)).await;
                }
            });
        }
    });
    tokio::spawn(async move {
        while let Ok((tcp, _)) = ws.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve_ws(tcp));
        }
    });
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = tcp.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt as _;
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                    server::sunk(n);
                }
            });
        }
    });
    Ok(servers)
}

async fn serve_ws(tcp: TcpStream) {
    let mut sink = false;
    // tungstenite's callback type returns its (large) `ErrorResponse` by value.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        sink = req.uri().path() == "/sink";
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Binary(b) => {
                if sink {
                    server::sunk(b.len());
                } else if ws.send(Message::Binary(b)).await.is_err() {
                    return;
                }
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}

async fn ws_connect(addr: std::net::SocketAddr, path: &str) -> Result<Ws, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp)
        .await
        .map_err(|e| format!("ws connect: {e}"))?;
    Ok(ws)
}

/// A yamux client over one WebSocket: its open-request sender and its driver.
async fn yamux_ws_client(
    addr: std::net::SocketAddr,
) -> Result<(yamux_drive::OpenRequests, tokio::task::JoinHandle<()>), String> {
    let ws = ws_connect(addr, "/").await?;
    let conn = yamux::Connection::new(WsIo::new(ws), yamux::Config::default(), yamux::Mode::Client);
    let (opens, opens_rx) = tokio::sync::mpsc::channel(64);
    let driver = tokio::spawn(yamux_drive::drive(conn, Some(opens_rx), None));
    Ok((opens, driver))
}

async fn yamux_stream(
    opens: &yamux_drive::OpenRequests,
    role: u8,
) -> Result<yamux::Stream, String> {
    let mut stream = yamux_drive::open(opens).await.ok_or("yamux open")?;
    stream.write_all(&[role]).await.map_err(|e| e.to_string())?;
    Ok(stream)
}

/// What a phase measured: `units` (echoes, bytes or sessions) in `secs`, with `cpu` of
/// this process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    units: f64,
    secs: f64,
    cpu: f64,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.units / self.secs
    }

    /// Process CPU µs per unit.
    fn cpu_us(&self) -> f64 {
        self.cpu * 1e6 / self.units.max(1.0)
    }
}

/// Lets the workers run `warmup`, then counts `counter` and this process's CPU over `span`.
async fn measure(counter: &AtomicU64, warmup: Duration, span: Duration) -> Sample {
    tokio::time::sleep(warmup).await;
    let (u0, c0, t0) = (
        counter.load(Ordering::Relaxed),
        sys::cpu_self(),
        Instant::now(),
    );
    tokio::time::sleep(span).await;
    let (u1, c1, secs) = (
        counter.load(Ordering::Relaxed),
        sys::cpu_self(),
        t0.elapsed().as_secs_f64(),
    );
    Sample {
        units: u1.saturating_sub(u0) as f64,
        secs,
        cpu: c1.saturating_sub(c0).as_secs_f64(),
    }
}

/// Phase timing, shared by every case.
#[derive(Debug, Clone, Copy)]
struct Timing {
    warmup: Duration,
    span: Duration,
}

fn count(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

const SESSIONS: usize = 100;
const INFLIGHT: usize = 16;
const BULK: usize = 64 * 1024;

// ---- echo ------------------------------------------------------------------------------

async fn echo_mux(s: &Servers, size: usize, t: Timing) -> Result<Sample, String> {
    let mut clients = connect_all(&s.mux_url, 1, SESSIONS, "echo").await?;
    let (client, sessions) = clients.pop().ok_or("no connection")?;
    let counter = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from(vec![0x5a; size]);
    let mut workers = JoinSet::new();
    for mut session in sessions {
        let (counter, payload) = (counter.clone(), payload.clone());
        workers.spawn(async move {
            for _ in 0..INFLIGHT {
                session.send(payload.clone()).await.ok()?;
            }
            while let Some(message) = session.recv().await {
                count(&counter, 1);
                session.send(message).await.ok()?;
            }
            Some(())
        });
    }
    let sample = measure(&counter, t.warmup, t.span).await;
    workers.abort_all();
    let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
    Ok(sample)
}

async fn echo_yamux_ws(s: &Servers, size: usize, t: Timing) -> Result<Sample, String> {
    let (opens, driver) = yamux_ws_client(s.yamux_ws).await?;
    let counter = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..SESSIONS {
        let mut stream = yamux_stream(&opens, b'e').await?;
        let counter = counter.clone();
        workers.spawn(async move {
            let mut buf = vec![0x5a; size];
            for _ in 0..INFLIGHT {
                stream.write_all(&buf).await.ok()?;
            }
            while stream.read_exact(&mut buf).await.is_ok() {
                count(&counter, 1);
                stream.write_all(&buf).await.ok()?;
            }
            Some(())
        });
    }
    let sample = measure(&counter, t.warmup, t.span).await;
    workers.abort_all();
    driver.abort();
    Ok(sample)
}

async fn echo_ws_each(s: &Servers, size: usize, t: Timing) -> Result<Sample, String> {
    let counter = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from(vec![0x5a; size]);
    let mut workers = JoinSet::new();
    for _ in 0..SESSIONS {
        let mut ws = ws_connect(s.ws, "/").await?;
        let (counter, payload) = (counter.clone(), payload.clone());
        workers.spawn(async move {
            for _ in 0..INFLIGHT {
                ws.feed(Message::Binary(payload.clone())).await.ok()?;
            }
            ws.flush().await.ok()?;
            while let Some(Ok(message)) = ws.next().await {
                count(&counter, 1);
                ws.send(message).await.ok()?;
            }
            Some(())
        });
    }
    let sample = measure(&counter, t.warmup, t.span).await;
    workers.abort_all();
    Ok(sample)
}

// ---- bulk ------------------------------------------------------------------------------

/// Runs `sender` while counting what the sinks receive.
async fn bulk_phase<F>(sender: F, t: Timing) -> Sample
where
    F: std::future::Future<Output = Option<()>> + Send + 'static,
{
    let task = tokio::spawn(sender);
    let sample = measure(&server::SUNK, t.warmup, t.span).await;
    task.abort();
    let _ = task.await;
    sample
}

async fn bulk_mux(s: &Servers, t: Timing) -> Result<Sample, String> {
    let mut clients = connect_all(&s.mux_url, 1, 1, "sink").await?;
    let (client, mut sessions) = clients.pop().ok_or("no connection")?;
    let mut session = sessions.pop().ok_or("no session")?;
    let payload = Bytes::from(vec![0x5a; BULK]);
    let sender = async move {
        loop {
            session.send(payload.clone()).await.ok()?;
        }
    };
    let sample = bulk_phase(sender, t).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
    Ok(sample)
}

async fn bulk_yamux_ws(s: &Servers, t: Timing) -> Result<Sample, String> {
    let (opens, driver) = yamux_ws_client(s.yamux_ws).await?;
    let mut stream = yamux_stream(&opens, b's').await?;
    let payload = vec![0x5a; BULK];
    let sender = async move {
        loop {
            stream.write_all(&payload).await.ok()?;
        }
    };
    let sample = bulk_phase(sender, t).await;
    driver.abort();
    Ok(sample)
}

async fn bulk_ws(s: &Servers, t: Timing) -> Result<Sample, String> {
    let mut ws = ws_connect(s.ws, "/sink").await?;
    let payload = Bytes::from(vec![0x5a; BULK]);
    let sender = async move {
        loop {
            ws.send(Message::Binary(payload.clone())).await.ok()?;
        }
    };
    Ok(bulk_phase(sender, t).await)
}

async fn bulk_tcp(s: &Servers, t: Timing) -> Result<Sample, String> {
    use tokio::io::AsyncWriteExt as _;
    let mut tcp = TcpStream::connect(s.tcp).await.map_err(|e| e.to_string())?;
    let payload = vec![0x5a; BULK];
    let sender = async move {
        loop {
            tcp.write_all(&payload).await.ok()?;
        }
    };
    Ok(bulk_phase(sender, t).await)
}

// ---- churn -----------------------------------------------------------------------------

const ONE: &[u8] = b"x";

/// One churned mux session: open, one message, its echo, close.
async fn churn_one_mux(handle: mux_tokio::ConnectionHandle) -> Option<()> {
    let mut session = handle.open("echo", Bytes::new()).await.ok()?;
    session.send(Bytes::from_static(ONE)).await.ok()?;
    session.recv().await?;
    session.close(CloseCode::NORMAL, "").await;
    Some(())
}

/// One churned yamux stream: open, one message, its echo, close.
async fn churn_one_yamux(opens: yamux_drive::OpenRequests) -> Option<()> {
    let mut stream = yamux_stream(&opens, b'e').await.ok()?;
    stream.write_all(ONE).await.ok()?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await.ok()?;
    stream.close().await.ok()
}

/// Runs `INFLIGHT` loops of `one` (one churned session each call, `None` to stop) and
/// counts the sessions.
async fn churn_phase<C, F>(ctx: C, one: fn(C) -> F, t: Timing) -> Sample
where
    C: Clone + Send + 'static,
    F: std::future::Future<Output = Option<()>> + Send + 'static,
{
    let counter = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..INFLIGHT {
        let (ctx, counter) = (ctx.clone(), counter.clone());
        workers.spawn(async move {
            while one(ctx.clone()).await.is_some() {
                count(&counter, 1);
            }
        });
    }
    let sample = measure(&counter, t.warmup, t.span).await;
    workers.abort_all();
    sample
}

async fn churn_mux(s: &Servers, t: Timing) -> Result<Sample, String> {
    let mut clients = connect_all(&s.mux_url, 1, 0, "echo").await?;
    let (mut client, _) = clients.pop().ok_or("no connection")?;
    let handle = client.connection().await.ok_or("no connection")?;
    let sample = churn_phase(handle, churn_one_mux, t).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
    Ok(sample)
}

async fn churn_yamux_ws(s: &Servers, t: Timing) -> Result<Sample, String> {
    let (opens, driver) = yamux_ws_client(s.yamux_ws).await?;
    let sample = churn_phase(opens, churn_one_yamux, t).await;
    driver.abort();
    Ok(sample)
}

// ---- the table -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Case {
    Echo(usize),
    Bulk,
    Churn,
}

impl Case {
    fn name(self) -> String {
        match self {
            Case::Echo(64) => "echo-64B".into(),
            Case::Echo(size) => format!("echo-{}KiB", size / 1024),
            Case::Bulk => "bulk-64KiB".into(),
            Case::Churn => "churn".into(),
        }
    }

    /// The sides, mux first (the numerator of every ratio).
    fn sides(self) -> &'static [&'static str] {
        match self {
            Case::Echo(_) => &["mux", "yamux-ws", "ws-each"],
            Case::Bulk => &["mux", "yamux-ws", "ws", "tcp"],
            Case::Churn => &["mux", "yamux-ws"],
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Case::Echo(_) => "echoes/s",
            Case::Bulk => "MB/s",
            Case::Churn => "sessions/s",
        }
    }

    fn per(self) -> &'static str {
        match self {
            Case::Echo(_) => "echo",
            Case::Bulk => "MB",
            Case::Churn => "session",
        }
    }

    /// Units per second as printed (bulk counts bytes and prints MB/s).
    fn scale(self) -> f64 {
        match self {
            Case::Bulk => 1e-6,
            _ => 1.0,
        }
    }

    async fn run(self, s: &Servers, side: usize, t: Timing) -> Result<Sample, String> {
        match (self, side) {
            (Case::Echo(size), 0) => echo_mux(s, size, t).await,
            (Case::Echo(size), 1) => echo_yamux_ws(s, size, t).await,
            (Case::Echo(size), _) => echo_ws_each(s, size, t).await,
            (Case::Bulk, 0) => bulk_mux(s, t).await,
            (Case::Bulk, 1) => bulk_yamux_ws(s, t).await,
            (Case::Bulk, 2) => bulk_ws(s, t).await,
            (Case::Bulk, _) => bulk_tcp(s, t).await,
            (Case::Churn, 0) => churn_mux(s, t).await,
            (Case::Churn, _) => churn_yamux_ws(s, t).await,
        }
    }
}

pub fn main(args: CompareArgs) -> Result<(), String> {
    let rt = crate::runtime(args.threads.clamp(1, 64), sys::Role::Other, "compare")?;
    let timing = Timing {
        warmup: seconds(args.warmup),
        span: seconds(args.duration),
    };
    let rounds = args.rounds.clamp(1, 20);
    let cases: Vec<Case> = [Case::Echo(64), Case::Echo(1024), Case::Bulk, Case::Churn]
        .into_iter()
        .filter(|c| args.only.as_deref().is_none_or(|f| c.name().contains(f)))
        .collect();
    println!("{}", crate::machine_line());
    println!(
        "compare: one multi-thread runtime, {} workers, everything on loopback in this process; {:.1} s warm-up + {:.1} s per phase, {rounds} rounds alternating",
        args.threads,
        timing.warmup.as_secs_f64(),
        timing.span.as_secs_f64()
    );
    let servers = rt.block_on(start_servers())?;
    let mut summary = Vec::new();
    for case in cases {
        let sides = case.sides();
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); sides.len()];
        for round in 0..rounds {
            let mut order: Vec<usize> = (0..sides.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let name = sides.get(i).copied().unwrap_or("?");
                if args.side.as_deref().is_some_and(|only| only != name) {
                    continue;
                }
                let sample = rt.block_on(case.run(&servers, i, timing))?;
                println!(
                    "  round {round} {:<11} {:<9} {:>12.0} {:<10} {:>8.2} µs CPU per {}",
                    case.name(),
                    sides.get(i).copied().unwrap_or("?"),
                    sample.rate() * case.scale(),
                    case.unit(),
                    sample.cpu_us() / case.scale(),
                    case.per(),
                );
                if let Some(v) = samples.get_mut(i) {
                    v.push(sample);
                }
            }
        }
        summary.push((case, samples));
    }
    if args.side.is_some() {
        return Ok(());
    }
    println!();
    println!("== median of the rounds; ratios are mux / side, the median of per-round ratios ==");
    println!(
        "{:<11} {:<9} {:>12} {:<10} {:>10} {:>9} {:>9}",
        "case", "side", "rate", "unit", "CPU µs/u", "rate", "CPU/u"
    );
    println!(
        "{:<11} {:<9} {:>12} {:<10} {:>10} {:>9} {:>9}",
        "", "", "", "", "", "mux/side", "mux/side"
    );
    for (case, samples) in &summary {
        let Some(mux) = samples.first() else { continue };
        for (name, side) in case.sides().iter().zip(samples) {
            let rate = median(
                &side
                    .iter()
                    .map(|s| s.rate() * case.scale())
                    .collect::<Vec<_>>(),
            );
            let cpu = median(
                &side
                    .iter()
                    .map(|s| s.cpu_us() / case.scale())
                    .collect::<Vec<_>>(),
            );
            let ratio = |f: fn(&Sample) -> f64| {
                median(
                    &mux.iter()
                        .zip(side)
                        .map(|(m, o)| f(m) / f(o))
                        .collect::<Vec<_>>(),
                )
            };
            println!(
                "{:<11} {:<9} {:>12.0} {:<10} {:>10.3} {:>9.2} {:>9.2}",
                case.name(),
                name,
                rate,
                case.unit(),
                cpu,
                ratio(Sample::rate),
                ratio(Sample::cpu_us),
            );
        }
    }
    println!("(CPU µs/u: per echo, per MB for bulk, per session for churn; process CPU, client and server together)");
    Ok(())
}
