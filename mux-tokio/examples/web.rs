#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! The browser client in a real page: `cargo run -p mux-tokio --example web`, then open the
//! printed address.
//!
//! Before serving, the example builds the page with esbuild from `mux-js/web/` (it runs
//! `npm --prefix mux-js run build:web`; `--no-build` serves the last build). It then serves,
//! on loopback:
//!
//! - the page over HTTP (`--port`, default 8080): `/`, `/react.html` (the React binding under
//!   StrictMode), `/bench.html` (mux vs plain WebSockets), `/config.json` (where the sockets
//!   are) and `/status` (server-side counters, JSON);
//! - a mux server (`--mux-port`, default any free port) whose sessions are three chat rooms
//!   (`chat/general`, `chat/random`, `chat/help`: topics the page sends into), a refused room
//!   (`chat/secret`, 4001), a `presence` topic, a live `counter` topic, a `flood` session
//!   granted 20 messages/s (the client paces its sends to the grant), a `feed` whose producer
//!   sends as fast as the reader's credit allows, and `echo`;
//! - a plain WebSocket echo server (`--echo-port`, default any free port) for the benchmark.
//!
//! The token is the user's name (`?user=alice`), enough for a demo on loopback; a real server
//! verifies a signed token in `authenticate`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use mux_tokio::topic::{LocalHub, SubscribeOptions, TopicOptions};
use mux_tokio::{
    AuthError, Grant, HandshakeRequest, OpenInfo, OriginPolicy, Principal, RateLimits, RatePolicy,
    Rejection, Server, ServerConfig, ServerHandle, Session,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ROOMS: [&str; 3] = ["chat/general", "chat/random", "chat/help"];
/// The flood's grant: what the page shows it is held to.
const FLOOD_RATE: u32 = 20;

/// A feed's producer count (messages its `send` queued) and its session, for the counters.
type Feed = (Arc<AtomicU64>, Arc<Session>);

/// Server-side state the status endpoint reports.
#[derive(Default)]
struct Shared {
    /// The latest `feed` session per principal: what its producer queued, and the session
    /// for its counters.
    feeds: Mutex<HashMap<String, Feed>>,
    /// Per (principal, kind): sessions live now and sessions opened so far.
    sessions: Mutex<BTreeMap<(String, String), (u64, u64)>>,
}

/// Counts a session as live while it is held.
struct Live {
    shared: Arc<Shared>,
    key: (String, String),
}

impl Live {
    fn new(shared: &Arc<Shared>, principal: &str, kind: &str) -> Live {
        let key = (principal.to_owned(), kind.to_owned());
        let mut sessions = shared.sessions.lock().unwrap();
        let entry = sessions.entry(key.clone()).or_default();
        entry.0 += 1;
        entry.1 += 1;
        Live {
            shared: shared.clone(),
            key,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Ok(mut sessions) = self.shared.sessions.lock() {
            if let Some(entry) = sessions.get_mut(&self.key) {
                entry.0 = entry.0.saturating_sub(1);
            }
        }
    }
}

fn authenticate(request: &HandshakeRequest) -> Result<Principal, AuthError> {
    let name = request.token.as_ref().map(|t| t.expose()).unwrap_or("");
    let valid = !name.is_empty()
        && name.len() <= 24
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(Principal::new(name))
    } else {
        Err(AuthError::other("a user name of letters, digits, - and _"))
    }
}

async fn authorize(open: OpenInfo) -> Result<Grant, Rejection> {
    match open.kind.as_str() {
        k if ROOMS.contains(&k) => Ok(Grant::full()),
        "presence" | "counter" | "feed" => Ok(Grant::receive_only()),
        "flood" => {
            let rate = RateLimits {
                messages_per_sec: FLOOD_RATE,
                bytes_per_sec: 0,
                burst_messages: 10,
                burst_bytes: 0,
            };
            Ok(Grant::full().with_rate(rate, RatePolicy::Throttle))
        }
        "echo" => Ok(Grant::full()),
        _ => Err(Rejection::forbidden("members only")),
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn serve(mut session: Session, hub: LocalHub, shared: Arc<Shared>) {
    let principal = session
        .principal()
        .map(|p| p.id.clone())
        .unwrap_or_default();
    let kind = session.kind().to_owned();
    let _live = Live::new(&shared, &principal, &kind);
    match kind.as_str() {
        // A chat room: the session is subscribed to its room, and what it sends is published
        // there with the sender's name.
        k if ROOMS.contains(&k) => {
            let Ok(_subscription) = hub.attach(&session, SubscribeOptions::default()) else {
                return;
            };
            while let Some(message) = session.recv().await {
                let text: String = String::from_utf8_lossy(&message)
                    .chars()
                    .take(500)
                    .collect();
                let event = format!(
                    "{{\"from\":{},\"text\":{}}}",
                    json_str(&principal),
                    json_str(&text)
                );
                hub.publish(&kind, Bytes::from(event));
            }
        }
        "presence" | "counter" => {
            let Ok(_subscription) = hub.attach(&session, SubscribeOptions::default()) else {
                return;
            };
            while session.recv().await.is_some() {}
        }
        // The producer queues as fast as `send` lets it: credit is what holds it back.
        "feed" => {
            let produced = Arc::new(AtomicU64::new(0));
            let sender = session.sender();
            let session = Arc::new(session);
            shared
                .feeds
                .lock()
                .unwrap()
                .insert(principal.clone(), (produced.clone(), session.clone()));
            let mut n = 0u64;
            loop {
                n += 1;
                if sender.send(Bytes::from(n.to_string())).await.is_err() {
                    break;
                }
                produced.store(n, Ordering::SeqCst);
            }
            session.closed().await;
        }
        _ => {
            while let Some(message) = session.recv().await {
                if session.send(message).await.is_err() {
                    break;
                }
            }
        }
    }
}

async fn status(shared: &Shared, handle: &ServerHandle) -> String {
    let feeds: Vec<(String, Arc<AtomicU64>, Arc<Session>)> = shared
        .feeds
        .lock()
        .unwrap()
        .iter()
        .map(|(k, (p, s))| (k.clone(), p.clone(), s.clone()))
        .collect();
    let mut feed_json = Vec::new();
    for (principal, produced, session) in feeds {
        let produced = produced.load(Ordering::SeqCst);
        let line = match session.stats().await {
            Some(s) => format!(
                "{}:{{\"produced\":{produced},\"sent\":{},\"queued\":{},\"credit\":{},\"open\":true}}",
                json_str(&principal),
                s.messages_sent,
                s.send_queued_messages,
                s.send_credit.0
            ),
            None => format!(
                "{}:{{\"produced\":{produced},\"open\":false}}",
                json_str(&principal)
            ),
        };
        feed_json.push(line);
    }
    let mut by_principal: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((principal, kind), (live, opened)) in shared.sessions.lock().unwrap().iter() {
        by_principal
            .entry(principal.clone())
            .or_default()
            .push(format!(
                "{}:{{\"live\":{live},\"opened\":{opened}}}",
                json_str(kind)
            ));
    }
    let sessions: Vec<String> = by_principal
        .iter()
        .map(|(p, kinds)| format!("{}:{{{}}}", json_str(p), kinds.join(",")))
        .collect();
    let mut rate_limit_hits = 0;
    for connection in handle.connections() {
        if let Some(s) = connection.stats().await {
            rate_limit_hits += s.rate_limit_hits;
        }
    }
    format!(
        "{{\"connections\":{},\"rate_limit_hits\":{rate_limit_hits},\"flood_rate\":{FLOOD_RATE},\"feeds\":{{{}}},\"sessions\":{{{}}}}}",
        handle.stats().connections,
        feed_json.join(","),
        sessions.join(",")
    )
}

/// One HTTP/1.1 request per connection: static files of the page, its config and the status.
async fn http(
    mut stream: TcpStream,
    dir: Arc<PathBuf>,
    config: Arc<String>,
    shared: Arc<Shared>,
    handle: ServerHandle,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let request = String::from_utf8_lossy(&buf);
    let path = request
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_owned();
    let (code, kind, body): (&str, &str, Vec<u8>) = match path.as_str() {
        "/favicon.ico" => ("204 No Content", "text/plain", Vec::new()),
        "/config.json" => ("200 OK", "application/json", config.as_bytes().to_vec()),
        "/status" => (
            "200 OK",
            "application/json",
            status(&shared, &handle).await.into_bytes(),
        ),
        p => {
            let name = if p == "/" { "index.html" } else { &p[1..] };
            let safe = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                && !name.starts_with('.');
            let kind = if name.ends_with(".js") {
                "text/javascript"
            } else if name.ends_with(".html") {
                "text/html; charset=utf-8"
            } else {
                "application/octet-stream"
            };
            match safe.then(|| std::fs::read(dir.join(name))) {
                Some(Ok(body)) => ("200 OK", kind, body),
                _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
            }
        }
    };
    let head = format!(
        "HTTP/1.1 {code}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

/// A plain WebSocket echo server: the benchmark's baseline.
async fn plain_echo(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(message)) = rx.next().await {
                if message.is_binary() || message.is_text() {
                    if tx.send(message).await.is_err() {
                        break;
                    }
                } else if message.is_close() {
                    break;
                }
            }
        });
    }
}

fn build_page(js_dir: &Path) {
    println!("building the page: npm --prefix mux-js run build:web");
    let status = std::process::Command::new("npm")
        .arg("--prefix")
        .arg(js_dir)
        .args(["run", "--silent", "build:web"])
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("building the page failed ({s}); run `npm ci` in mux-js first"),
        Err(e) => panic!("npm is needed to build the page: {e}"),
    }
}

fn port_arg(args: &[String], name: &str, default: u16) -> u16 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a port number"))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let js_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mux-js");
    if !args.iter().any(|a| a == "--no-build") {
        build_page(&js_dir);
    }
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let web = TcpListener::bind(loopback(port_arg(&args, "--port", 8080))).await?;
    let echo = TcpListener::bind(loopback(port_arg(&args, "--echo-port", 0))).await?;
    let http_port = web.local_addr()?.port();
    let echo_port = echo.local_addr()?.port();
    let page_origins = [
        format!("http://127.0.0.1:{http_port}"),
        format!("http://localhost:{http_port}"),
    ];
    let config = ServerConfig::default()
        .origins(OriginPolicy::allow(page_origins.iter().map(String::as_str)));
    let mut server = Server::from_listener(
        TcpListener::bind(loopback(port_arg(&args, "--mux-port", 0))).await?,
        config,
        authenticate,
        |_: Principal, open: OpenInfo| authorize(open),
    )?;
    let mux_port = server.local_addr().port();
    let handle = server.handle();
    let hub = LocalHub::new();
    hub.configure_topic("presence", TopicOptions::with_presence(64));
    let shared = Arc::new(Shared::default());

    let (h, s) = (hub.clone(), shared.clone());
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            tokio::spawn(serve(session, h.clone(), s.clone()));
        }
    });
    let h = hub.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        for n in 0u64.. {
            tick.tick().await;
            h.publish("counter", Bytes::from(n.to_string()));
        }
    });
    tokio::spawn(plain_echo(echo));
    let dir = Arc::new(js_dir.join("build/web"));
    let config = Arc::new(format!(
        "{{\"mux\":\"ws://127.0.0.1:{mux_port}/\",\"echo\":\"ws://127.0.0.1:{echo_port}/\"}}"
    ));
    let (s, h) = (shared.clone(), handle.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = web.accept().await {
            tokio::spawn(http(
                stream,
                dir.clone(),
                config.clone(),
                s.clone(),
                h.clone(),
            ));
        }
    });
    println!(
        "mux web example: open http://127.0.0.1:{http_port}/?user=alice (and ?user=bob in another window)"
    );
    println!("listening http={http_port} mux={mux_port} echo={echo_port}");
    match mux_tokio::shutdown_signal().await {
        Ok(signal) => println!("{signal}: shutting down"),
        Err(e) => println!("no signal handlers ({e}): shutting down"),
    }
    handle.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
