//! The proxy configs in `deploy/` run for real: nginx and HAProxy as child processes in
//! front of two mux nodes on loopback, TLS ending at the proxy (a CA and a certificate made
//! at test time, the client trusting only that CA). Through each proxy: the handshake
//! matrix, the client's address taken from the proxy's header (and a forged one ignored),
//! a connection idle for longer than the proxy's timeout (kept up by keepalive, cut
//! without it), the probes, and a rolling restart (drain, readiness off, the clients
//! reconnecting to the other node while a stream of echoes goes on).
//!
//! These are real processes, so waits are in real time, each bounded; nothing asserts how
//! fast anything is. A missing nginx or haproxy fails with the Debian package to install.
#![cfg(feature = "tls")]
#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;
#[path = "proxy/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "proxy/pki.rs"]
mod pki;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use harness::{Kind, Options, Proxy};
use mux_tokio::rustls;
use mux_tokio::{
    AllowAll, AuthError, Backoff, Client, ClientConfig, ClientEvent, ConnectError,
    HandshakeRequest, OpenError, OriginPolicy, Principal, Server, ServerConfig, ServerHandle,
    Session,
};
use pki::Pki;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

/// The one browser origin the nodes admit.
const ORIGIN: &str = "https://app.example.com";

/// Awaits `future` for at most `secs` seconds of real time.
async fn within<T>(secs: u64, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {secs} s waiting for {what}"),
    }
}

/// Every authentication a node saw: the token and the client's address.
type Seen = Arc<Mutex<Vec<(String, SocketAddr)>>>;

/// A mux node: sessions echo; a `whoami` session first sends the node's name.
struct Node {
    name: &'static str,
    handle: ServerHandle,
    addr: SocketAddr,
    seen: Seen,
}

/// `good-token` is alice; `capped-*` tokens are the principal `capped`; a `user-*` token
/// is a principal of that name. A principal may have two connections on a node at once
/// (a third gets 429 with Retry-After); any other token is 401.
async fn node(name: &'static str) -> Node {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let authenticate = move |request: &HandshakeRequest| {
        let token = request.token.as_ref().map(|t| t.expose().to_owned());
        record
            .lock()
            .unwrap()
            .push((token.clone().unwrap_or_default(), request.peer));
        match token.as_deref() {
            Some("good-token") => Ok(Principal::new("alice")),
            Some(t) if t.starts_with("capped-") => Ok(Principal::new("capped")),
            Some(t) if t.starts_with("user-") => Ok(Principal::new(t)),
            Some(_) => Err(AuthError::Invalid),
            None => Err(AuthError::Missing),
        }
    };
    let config = ServerConfig::default()
        .origins(OriginPolicy::allow([ORIGIN]).allow_missing(true))
        .trusted_proxies(["127.0.0.1"])
        .connection_limits(1000, 1000, 2);
    let mut server = Server::bind(common::loopback(), config, authenticate, AllowAll)
        .await
        .expect("bind a node");
    let handle = server.handle();
    let addr = server.local_addr();
    let (tx, rx) = tokio::sync::mpsc::channel::<Session>(64);
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            if tx.send(session).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(serve_sessions(name, rx));
    Node {
        name,
        handle,
        addr,
        seen,
    }
}

async fn serve_sessions(name: &'static str, mut sessions: tokio::sync::mpsc::Receiver<Session>) {
    while let Some(mut session) = sessions.recv().await {
        tokio::spawn(async move {
            if session.kind() == "whoami" && session.send(Bytes::from(name)).await.is_err() {
                return;
            }
            common::echo(session).await;
        });
    }
}

/// Two nodes behind a proxy.
struct Setup {
    pki: Pki,
    nodes: [Node; 2],
    proxy: Proxy,
}

impl Setup {
    async fn new(kind: Kind, overrides: &[(&str, &str)]) -> Setup {
        let pki = Pki::new();
        let nodes = [node("a").await, node("b").await];
        let options = Options {
            nodes: [nodes[0].addr, nodes[1].addr],
            cert_pem: pki.cert_pem.clone(),
            key_pem: pki.key_pem.clone(),
            overrides: overrides
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
            max_connections: 256,
        };
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let proxy = tokio::task::spawn_blocking(move || Proxy::start(kind, &deploy, &options))
            .await
            .expect("start the proxy");
        Setup { pki, nodes, proxy }
    }

    /// A client of the proxy with `token`, trusting the test CA, not reconnecting.
    fn config(&self, token: &str) -> ClientConfig {
        ClientConfig::default()
            .tls(self.pki.client_tls())
            .token(token)
            .reconnect(false)
    }

    async fn connect(&self, config: ClientConfig) -> Result<Client, ConnectError> {
        within(10, "a connection through the proxy", async {
            Client::connect(&self.proxy.url(), config).await
        })
        .await
    }

    async fn connected(&self, config: ClientConfig) -> Client {
        match self.connect(config).await {
            Ok(client) => client,
            Err(e) => panic!(
                "connect through {:?}: {e}\n{}",
                self.proxy.kind,
                self.proxy.log()
            ),
        }
    }

    async fn refused(&self, config: ClientConfig) -> (u16, Option<Duration>) {
        match self.connect(config).await {
            Ok(_) => panic!("the handshake through {:?} succeeded", self.proxy.kind),
            Err(ConnectError::Refused {
                status,
                retry_after,
            }) => (status, retry_after),
            Err(e) => panic!("not a refusal: {e}"),
        }
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    /// Every authentication either node saw, oldest first per node.
    fn seen(&self) -> Vec<(String, SocketAddr)> {
        self.nodes
            .iter()
            .flat_map(|n| n.seen.lock().unwrap().clone())
            .collect()
    }

    /// A raw request to the proxy over TLS from the loopback address `source`: the status
    /// and the response as text (the head only for a 101).
    async fn raw(&self, source: Ipv4Addr, request: &str) -> (u16, String) {
        raw_tls(&self.pki, self.proxy.addr, source, request).await
    }
}

async fn raw_tls(pki: &Pki, to: SocketAddr, source: Ipv4Addr, request: &str) -> (u16, String) {
    within(10, "a raw request through the proxy", async {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        let tcp = socket.connect(to).await.expect("connect to the proxy");
        let name = ServerName::try_from("127.0.0.1").unwrap().to_owned();
        let mut tls = TlsConnector::from(pki.client_tls())
            .connect(name, tcp)
            .await
            .expect("TLS with the proxy");
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tls.read(&mut chunk).await.unwrap_or(0);
            buf.extend_from_slice(&chunk[..n]);
            if n == 0 || response_complete(&String::from_utf8_lossy(&buf)) {
                break;
            }
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    })
    .await
}

/// Whether `text` holds a whole response: the head of a 101, or a head and as much body as
/// its Content-Length says (the proxy may keep the connection open after it).
fn response_complete(text: &str) -> bool {
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    if text.starts_with("HTTP/1.1 101") {
        return true;
    }
    header(text, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| text.len() >= end + 4 + len)
}

/// A WebSocket upgrade request for `/` with `extra` headers.
fn upgrade(extra: &[(&str, &str)]) -> String {
    let mut request = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n"
        .to_owned();
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request + "\r\n"
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
}

/// The value of header `name` in a response head.
fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The name of the node `client` is connected to.
async fn whoami(client: &mut Client) -> String {
    landed(client).await.expect("open whoami")
}

/// The name of the node `client` is connected to, or the refusal of a node that is going
/// away (a draining node sends GOAWAY at once to connections that arrive late).
async fn landed(client: &mut Client) -> Result<String, OpenError> {
    let mut session = within(10, "a whoami session", client.open("whoami", Bytes::new())).await?;
    let name = within(10, "the node's name", session.recv()).await.unwrap();
    Ok(String::from_utf8(name.to_vec()).unwrap())
}

async fn echo_once(session: &mut Session, payload: &'static [u8]) {
    within(10, "an echo", async {
        session.send(Bytes::from_static(payload)).await.unwrap();
        assert_eq!(session.recv().await.as_deref(), Some(payload));
    })
    .await;
}

// ---- the handshake matrix -------------------------------------------------------------

async fn handshake_matrix(kind: Kind) {
    let s = Setup::new(kind, &[]).await;
    // The token in `Authorization`; the client checks that `mux.v1` was selected.
    let mut client = s.connected(s.config("good-token")).await;
    let mut session = client.open("echo", Bytes::new()).await.unwrap();
    echo_once(&mut session, b"through the proxy").await;
    // The token as a `bearer.` entry of Sec-WebSocket-Protocol, as a browser sends it.
    let mut browser = s.config("good-token");
    browser.token_in_protocol = true;
    let _browser = s.connected(browser.origin(ORIGIN)).await;
    assert_eq!(
        s.seen().iter().filter(|(t, _)| t == "good-token").count(),
        2,
        "{:?}",
        s.seen()
    );
    // The answer selects `mux.v1` and never echoes the token entry.
    let (status, response) = s
        .raw(
            Ipv4Addr::new(127, 0, 0, 5),
            &upgrade(&[("Sec-WebSocket-Protocol", "mux.v1, bearer.good-token")]),
        )
        .await;
    assert_eq!(status, 101, "{response}");
    assert_eq!(header(&response, "sec-websocket-protocol"), Some("mux.v1"));
    // Origin: the allowed one upgrades, another is 403.
    let _allowed = s.connected(s.config("good-token").origin(ORIGIN)).await;
    assert_eq!(
        s.refused(s.config("good-token").origin("https://evil.example.com"))
            .await,
        (403, None)
    );
    // A bad token is 401; no `mux.v1` is 400.
    assert_eq!(s.refused(s.config("wrong-token")).await, (401, None));
    let (status, _) = s
        .raw(
            Ipv4Addr::new(127, 0, 0, 5),
            &upgrade(&[("Authorization", "Bearer good-token")]),
        )
        .await;
    assert_eq!(status, 400);
    // The per-principal cap (2 on each node): however the proxy spreads them, the fifth
    // connection at the latest finds both nodes full and gets 429 with Retry-After.
    let mut capped = Vec::new();
    let refusal = loop {
        assert!(
            capped.len() <= 4,
            "more than 2 × 2 connections of one principal"
        );
        match s
            .connect(s.config(&format!("capped-{}", capped.len())))
            .await
        {
            Ok(client) => capped.push(client),
            Err(ConnectError::Refused {
                status,
                retry_after,
            }) => break (status, retry_after),
            Err(e) => panic!("not a refusal: {e}"),
        }
    };
    assert_eq!(refusal, (429, Some(Duration::from_secs(1))));
    // Make sure both nodes are full for the raw look at the header.
    while capped.len() < 4 {
        match s.connect(s.config("capped-more")).await {
            Ok(client) => capped.push(client),
            Err(_) => break,
        }
    }
    let (status, response) = s
        .raw(
            Ipv4Addr::new(127, 0, 0, 5),
            &upgrade(&[
                ("Sec-WebSocket-Protocol", "mux.v1"),
                ("Authorization", "Bearer capped-4"),
            ]),
        )
        .await;
    assert_eq!(status, 429, "{response}");
    assert_eq!(header(&response, "retry-after"), Some("1"), "{response}");
}

#[tokio::test]
async fn nginx_passes_the_handshake_matrix() {
    handshake_matrix(Kind::Nginx).await;
}

#[tokio::test]
async fn haproxy_passes_the_handshake_matrix() {
    handshake_matrix(Kind::Haproxy).await;
}

// ---- the client's address ---------------------------------------------------------------

/// The node trusts only 127.0.0.1, the proxy's address towards it: the client's address
/// is the hop the proxy appended, and whatever the client wrote itself (a forged
/// X-Forwarded-For, a forged Forwarded) is not believed.
async fn client_address_from_the_proxy(kind: Kind) {
    let s = Setup::new(kind, &[]).await;
    let (status, response) = s
        .raw(
            Ipv4Addr::new(127, 0, 0, 7),
            &upgrade(&[
                ("Sec-WebSocket-Protocol", "mux.v1"),
                ("Authorization", "Bearer good-token"),
                ("X-Forwarded-For", "198.51.100.66"),
                ("Forwarded", "for=198.51.100.77"),
            ]),
        )
        .await;
    assert_eq!(status, 101, "{response}");
    let (status, _) = s
        .raw(
            Ipv4Addr::new(127, 0, 0, 8),
            &upgrade(&[
                ("Sec-WebSocket-Protocol", "mux.v1"),
                ("Authorization", "Bearer good-token"),
            ]),
        )
        .await;
    assert_eq!(status, 101);
    let mut seen: Vec<String> = s.seen().iter().map(|(_, a)| a.ip().to_string()).collect();
    seen.sort();
    assert_eq!(seen, ["127.0.0.7", "127.0.0.8"]);
}

#[tokio::test]
async fn nginx_forwards_the_client_address_and_forgeries_are_not_believed() {
    client_address_from_the_proxy(Kind::Nginx).await;
}

#[tokio::test]
async fn haproxy_forwards_the_client_address_and_forgeries_are_not_believed() {
    client_address_from_the_proxy(Kind::Haproxy).await;
}

// ---- idle connections and the proxy's timeout ------------------------------------------------

/// The proxy's idle timeout in these tests (production: 60 s).
const PROXY_IDLE: u64 = 3;

fn short_idle_timeout(kind: Kind) -> [(&'static str, &'static str); 1] {
    match kind {
        Kind::Nginx => [("proxy_read_timeout 60s;", "proxy_read_timeout 3s;")],
        Kind::Haproxy => [("timeout tunnel 60s", "timeout tunnel 3s")],
    }
}

/// A connection idle for more than twice the proxy's timeout stays up when the client
/// pings every second; one without keepalive is cut by the proxy.
async fn keepalive_outlives_the_proxy_timeout(kind: Kind) {
    let s = Setup::new(kind, &short_idle_timeout(kind)).await;
    let mut pinging = mux_tokio::Config::default();
    pinging.timeouts.keepalive_interval = Some(Duration::from_secs(1));
    pinging.timeouts.keepalive_timeout = Duration::from_secs(2);
    let mut silent = mux_tokio::Config::default();
    silent.timeouts.keepalive_interval = None;
    let mut kept = s.connected(s.config("good-token").protocol(pinging)).await;
    let mut cut = s.connected(s.config("good-token").protocol(silent)).await;
    let mut kept_session = kept.open("echo", Bytes::new()).await.unwrap();
    let mut cut_session = cut.open("echo", Bytes::new()).await.unwrap();
    echo_once(&mut kept_session, b"before").await;
    echo_once(&mut cut_session, b"before").await;
    // Idle for longer than twice the proxy's timeout: this wait is what is being tested.
    tokio::time::sleep(Duration::from_secs(PROXY_IDLE * 2 + 2)).await;
    // The silent connection was cut by the proxy (no close code: the proxy knows none).
    within(10, "the silent connection to be cut", async {
        loop {
            match cut.next_event().await {
                Some(ClientEvent::Disconnected { code }) => {
                    assert_eq!(code, None);
                    return;
                }
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await;
    // The pinging one is still up and works.
    while let Some(Some(event)) = kept.next_event().now_or_never() {
        assert!(
            !matches!(event, ClientEvent::Disconnected { .. }),
            "the kept connection dropped: {event:?}\n{}",
            s.proxy.log()
        );
    }
    echo_once(&mut kept_session, b"after").await;
}

#[tokio::test]
async fn nginx_keepalive_keeps_idle_connections_past_proxy_read_timeout() {
    keepalive_outlives_the_proxy_timeout(Kind::Nginx).await;
}

#[tokio::test]
async fn haproxy_keepalive_keeps_idle_connections_past_timeout_tunnel() {
    keepalive_outlives_the_proxy_timeout(Kind::Haproxy).await;
}

// ---- probes and rolling restarts -------------------------------------------------------------

fn fast_checks(kind: Kind) -> Vec<(&'static str, &'static str)> {
    match kind {
        Kind::Nginx => Vec::new(),
        Kind::Haproxy => vec![(
            "default-server inter 2s fall 2 rise 2",
            "default-server inter 200ms fall 1 rise 1",
        )],
    }
}

/// Numbered messages, one in flight, echoed on a session of `client`; when the session or
/// the connection ends, a new session (on the reconnected connection) carries on from the
/// first number whose echo had not arrived. Returns the numbers echoed, in order.
async fn numbered_stream(mut client: Client, count: u64, done: Arc<AtomicU64>) -> Vec<u64> {
    let mut echoed = Vec::new();
    let mut session: Option<Session> = None;
    let mut next = 0u64;
    while next < count {
        let current = match &mut session {
            Some(s) => s,
            None => {
                let opened = within(15, "a session after reconnecting", async {
                    loop {
                        if let Ok(s) = client.open("echo", Bytes::new()).await {
                            return s;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await;
                session.insert(opened)
            }
        };
        let sent = current.send(Bytes::from(next.to_be_bytes().to_vec())).await;
        let answer = match sent {
            Ok(()) => within(15, "an echo", current.recv()).await,
            Err(_) => None,
        };
        match answer {
            Some(bytes) => {
                let n = u64::from_be_bytes(bytes[..8].try_into().unwrap());
                echoed.push(n);
                next = n + 1;
                done.store(next, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None => session = None,
        }
    }
    echoed
}

/// Node `first` (the one the client landed on) drains: its readiness turns off at once,
/// its connection keeps working, (HAProxy) the proxy stops sending it new clients; then it
/// stops as a restarting process would, and the client reconnects through the proxy to the
/// other node, where its stream goes on with no number lost or repeated.
async fn rolling_restart(kind: Kind) {
    let s = Setup::new(kind, &fast_checks(kind)).await;
    let localhost = Ipv4Addr::new(127, 0, 0, 1);
    let (status, body) = s.raw(localhost, &get("/healthz")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.raw(localhost, &get("/readyz")).await;
    assert_eq!((status, body.ends_with("ready\n")), (200, true), "{body}");

    let config = s.config("good-token").reconnect(true).backoff(Backoff::new(
        Duration::from_millis(20),
        Duration::from_millis(200),
        None,
    ));
    let mut client = s.connected(config).await;
    let first = s.node(&whoami(&mut client).await);
    let second = s.nodes.iter().find(|n| n.name != first.name).unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let stream = tokio::spawn(numbered_stream(client, 300, done.clone()));
    let reached = |n: u64| {
        let done = done.clone();
        async move {
            while done.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    within(15, "the first echoes", reached(50)).await;

    first.handle.drain().await;
    assert!(!first.handle.is_ready());
    let direct = raw_plain(first.addr, "/readyz").await;
    assert!(direct.starts_with("HTTP/1.1 503") && direct.ends_with("draining\n"));
    if kind == Kind::Haproxy {
        // Readiness checks take the draining node out: three new clients at once all land
        // on the other one (with `leastconn` and the node still in, one would go to it).
        within(
            15,
            "the proxy to stop sending new clients to the draining node",
            async {
                loop {
                    let mut clients = Vec::new();
                    let mut names = Vec::new();
                    for i in 0..3 {
                        let mut c = s.connected(s.config(&format!("user-{i}"))).await;
                        names.push(landed(&mut c).await.unwrap_or_else(|e| format!("{e}")));
                        clients.push(c);
                    }
                    if names.iter().all(|n| n == second.name) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        )
        .await;
    }
    // The draining node's connection still carries the stream.
    let at_drain = done.load(Ordering::Relaxed);
    within(15, "echoes while draining", reached(at_drain + 20)).await;

    // The old process stops: its connections close with 1001 and its port closes.
    within(
        15,
        "the drained node to stop",
        first.handle.shutdown(Duration::from_millis(500)),
    )
    .await;
    assert_eq!(first.handle.stats().connections, 0);
    let echoed = within(60, "the stream to finish on the other node", stream)
        .await
        .unwrap();
    assert_eq!(echoed, (0..300).collect::<Vec<_>>(), "lost or repeated");
    assert!(
        second.handle.stats().connections >= 1,
        "the client reconnected to {}",
        second.name
    );
    let (status, body) = s.raw(localhost, &get("/readyz")).await;
    assert_eq!(status, 200, "{body}");
}

/// `GET path` straight to a node, without the proxy.
async fn raw_plain(addr: SocketAddr, path: &str) -> String {
    within(10, "a probe", async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(get(path).as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    })
    .await
}

#[tokio::test]
async fn nginx_rolling_restart_moves_clients_to_the_other_node() {
    rolling_restart(Kind::Nginx).await;
}

#[tokio::test]
async fn haproxy_rolling_restart_moves_clients_to_the_other_node() {
    rolling_restart(Kind::Haproxy).await;
}

// ---- the guide shows the files the tests run ----------------------------------------------

/// DEPLOYMENT.md includes each config verbatim, between `<!-- include deploy/NAME -->`
/// and the end of the fenced block that follows it.
#[test]
fn the_guide_includes_the_tested_configs_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guide = std::fs::read_to_string(root.join("DEPLOYMENT.md")).unwrap();
    for name in ["nginx.conf", "haproxy.cfg"] {
        let file = std::fs::read_to_string(root.join("deploy").join(name)).unwrap();
        let marker = format!("<!-- include deploy/{name} -->");
        let at = guide
            .find(&marker)
            .unwrap_or_else(|| panic!("DEPLOYMENT.md has no {marker}"));
        let rest = &guide[at + marker.len()..];
        let open = rest.find("```").unwrap();
        let body_start = open + rest[open..].find('\n').unwrap() + 1;
        let close = rest[body_start..].find("\n```").unwrap();
        let shown = &rest[body_start..body_start + close + 1];
        assert_eq!(
            shown, file,
            "DEPLOYMENT.md's copy of deploy/{name} differs from the file"
        );
    }
}
