//! Prometheus metrics for a mux server: `metrics-exporter-prometheus` installed as the
//! `metrics` recorder, histogram buckets set (so that histograms add up across nodes, which
//! the exporter's default summaries do not), and `GET /metrics` served on its own port.
//! A demo client makes some traffic so that every series in DEPLOYMENT.md ("Metrics") has
//! a value.
//!
//! ```sh
//! cargo run -p mux-tokio --features metrics --example prometheus
//! curl -s http://127.0.0.1:9464/metrics | grep ^mux_
//! ```
//!
//! The exporter is a dev-dependency of mux-tokio, without its own HTTP listener: the
//! library links only the `metrics` facade, the application picks the exporter, and an
//! application usually mounts `PrometheusHandle::render` on a route of the HTTP server it
//! already runs (an axum `Router`, say). This example serves it with a few lines of tokio
//! instead of pulling hyper into mux-tokio's test builds. `tests/prometheus.rs` runs these
//! functions and scrapes the endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use mux_tokio::{
    AuthError, Client, ClientConfig, Grant, HandshakeRequest, OpenInfo, OriginPolicy, Principal,
    Rejection, Server, ServerConfig, Session,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Bucket bounds of every `mux_*_seconds` histogram: 100 µs to 10 s, about three per
/// decade, which covers a loopback write and a slow authorization backend alike.
pub const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Installs the exporter as the process's recorder. Call once, before the server starts.
pub fn install() -> PrometheusHandle {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .unwrap_or_else(|e| panic!("install the Prometheus recorder: {e}"))
}

/// Answers `GET /metrics` on `listener` with the exporter's text format; anything else
/// is 404. Each request is read up to 8 KiB for at most 5 s.
pub async fn serve_metrics(listener: TcpListener, handle: PrometheusHandle) {
    while let Ok((mut tcp, _)) = listener.accept().await {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    }
                }
                true
            });
            if !matches!(read.await, Ok(true)) {
                return;
            }
            let (status, body) = if head.starts_with(b"GET /metrics ") {
                ("200 OK", handle.render())
            } else {
                ("404 Not Found", String::new())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(response.as_bytes()).await;
            let _ = tcp.shutdown().await;
        });
    }
}

/// The demo token the authenticator accepts.
pub const TOKEN: &str = "demo-token";

/// Sessions a connection may open per second in this demo, and in a burst (small, so the
/// demo client can show a limit being hit; the default is 100 in a burst).
const OPENS_PER_SEC: u32 = 10;
const OPENS_BURST: u32 = 8;

fn authenticate(request: &HandshakeRequest) -> Result<Principal, AuthError> {
    match request.token.as_ref().map(|t| t.expose()) {
        Some(TOKEN) => Ok(Principal::new("demo")),
        Some(_) => Err(AuthError::Invalid),
        None => Err(AuthError::Missing),
    }
}

async fn authorize(_: Principal, open: OpenInfo) -> Result<Grant, Rejection> {
    match open.kind.as_str() {
        "admin" => Err(Rejection::forbidden("admins only")),
        _ => Ok(Grant::full()),
    }
}

/// `echo` sessions echo; a `burst` session gets 200 messages of 1 KiB at once, more than
/// its receiver's credit, so the server's sends wait for credit.
async fn serve_session(mut session: Session) {
    if session.kind() == "burst" {
        for _ in 0..200 {
            if session.send(Bytes::from(vec![0u8; 1024])).await.is_err() {
                return;
            }
        }
    }
    while let Some(message) = session.recv().await {
        if session.send(message).await.is_err() {
            return;
        }
    }
}

/// Starts a mux server on `addr`; returns its `ws://` URL.
pub async fn start_server(addr: SocketAddr) -> std::io::Result<String> {
    let mut protocol = mux_tokio::Config::default();
    protocol.limits.opens_per_sec = OPENS_PER_SEC;
    protocol.limits.opens_burst = OPENS_BURST;
    let config = ServerConfig::default()
        .origins(OriginPolicy::default().allow_missing(true))
        .protocol(protocol);
    let mut server = Server::bind(addr, config, authenticate, authorize).await?;
    let url = format!("ws://{}/", server.local_addr());
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            tokio::spawn(serve_session(session));
        }
    });
    Ok(url)
}

/// A client that makes every series move: a refused handshake, echoes, a refused session,
/// a burst read slowly (credit stalls, messages waiting to be read), opens past the open
/// rate (refused with 4002), and a normal close.
pub async fn traffic(url: &str) -> Result<(), String> {
    let refused = Client::connect(url, ClientConfig::default().token("wrong").reconnect(false));
    if refused.await.is_ok() {
        return Err("a wrong token was accepted".into());
    }
    let config = ClientConfig::default().token(TOKEN).reconnect(false);
    let mut client = Client::connect(url, config)
        .await
        .map_err(|e| e.to_string())?;
    let mut echo = client
        .open("echo", Bytes::new())
        .await
        .map_err(|e| e.to_string())?;
    for i in 0..20u8 {
        echo.send(Bytes::from(vec![i; 64]))
            .await
            .map_err(|e| e.to_string())?;
        echo.recv().await.ok_or("echo ended")?;
    }
    if client.open("admin", Bytes::new()).await.is_ok() {
        return Err("admin was granted".into());
    }
    let mut burst = client
        .open("burst", Bytes::new())
        .await
        .map_err(|e| e.to_string())?;
    // Not reading for a while: the server runs out of credit and its messages queue here.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..200 {
        burst.recv().await.ok_or("burst ended")?;
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    // Opens in a quick row: past the burst the server refuses them (4002 RATE_LIMITED).
    let mut extra = Vec::new();
    for _ in 0..2 * OPENS_BURST {
        match client.open("echo", Bytes::new()).await {
            Ok(s) => extra.push(s),
            Err(_) => break,
        }
    }
    drop((echo, burst, extra));
    client.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let handle = install();
    let metrics_addr: SocketAddr = std::env::var("MUX_METRICS_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:9464".into())
        .parse()?;
    let listener = TcpListener::bind(metrics_addr).await?;
    println!("metrics on http://{}/metrics", listener.local_addr()?);
    tokio::spawn(serve_metrics(listener, handle));
    let url = start_server(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    println!("mux server on {url}; demo traffic every 5 s (Ctrl-C stops)");
    loop {
        if let Err(e) = traffic(&url).await {
            eprintln!("demo traffic: {e}");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = mux_tokio::shutdown_signal() => return Ok(()),
        }
    }
}
