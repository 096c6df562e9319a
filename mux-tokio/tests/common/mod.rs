//! Helpers shared by the loopback test files: servers, a raw HTTP upgrade client, a raw
//! mux peer on tokio-tungstenite (for peers that break the rules), and bounded waiting.
#![allow(dead_code)]

pub mod hostile;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use mux_proto::frame::{decode_message, encode_message, Frame, Setting, Settings};
use mux_tokio::{
    AllowAll, AuthError, Authenticator, Authorizer, HandshakeRequest, OriginPolicy, Principal,
    Server, ServerConfig, ServerHandle, Session,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The bound on every wait in these tests: nothing legitimate takes this long on loopback.
pub const WAIT: Duration = Duration::from_secs(5);

/// `127.0.0.1:0`: every test listens on loopback only.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A server config that admits clients without an `Origin` (services, the test client).
pub fn open_config() -> ServerConfig {
    ServerConfig::default().origins(OriginPolicy::default().allow_missing(true))
}

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Polls `condition` every few milliseconds until it holds, for at most [`WAIT`]. Only for
/// state that has no event to await (server-wide counters).
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the server holds no connection and no per-IP or per-principal state.
pub async fn wait_idle(handle: &ServerHandle) {
    wait_until("the server has no connections and tracks no keys", || {
        handle.stats().connections == 0 && handle.tracked_keys() == (0, 0)
    })
    .await;
}

/// Binds a server on loopback; returns it with its `ws://` URL.
pub async fn bind(
    config: ServerConfig,
    authenticator: impl Authenticator,
    authorizer: impl Authorizer,
) -> (Server, String) {
    let server = Server::bind(loopback(), config, authenticator, authorizer)
        .await
        .expect("bind loopback");
    let url = format!("ws://{}/", server.local_addr());
    (server, url)
}

/// Echoes every message of every session back on the same session.
pub async fn echo(mut session: Session) {
    while let Some(message) = session.recv().await {
        if session.send(message).await.is_err() {
            break;
        }
    }
}

/// Starts an echo server with `AllowAll` authentication and authorization.
pub async fn echo_server(config: ServerConfig) -> (String, ServerHandle, SocketAddr) {
    let (mut server, url) = bind(config, AllowAll, AllowAll).await;
    let handle = server.handle();
    let addr = server.local_addr();
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            tokio::spawn(echo(session));
        }
    });
    (url, handle, addr)
}

/// Accepts only the token `good-token` (principal `alice`); the principal of any other
/// token `principal:<name>` is `<name>` (for per-principal limits).
pub fn token_authenticator(request: &HandshakeRequest) -> Result<Principal, AuthError> {
    match request.token.as_ref().map(|t| t.expose()) {
        Some("good-token") => Ok(Principal::new("alice")),
        Some(t) if t.starts_with("principal:") => Ok(Principal::new(&t["principal:".len()..])),
        Some(_) => Err(AuthError::Invalid),
        None => Err(AuthError::Missing),
    }
}

/// The answer to a hand-made HTTP/1.1 upgrade request.
pub struct RawResponse {
    /// The status code of the status line.
    pub status: u16,
    /// The status line and headers, as received.
    pub head: String,
    /// Bytes after the head (WebSocket data once upgraded).
    pub rest: Vec<u8>,
    /// The connection, still open if the server keeps it.
    pub stream: TcpStream,
}

impl RawResponse {
    /// The value of the response header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Opens a TCP connection, writes a WebSocket upgrade request for `/` with the standard
/// headers plus `extra`, and reads the response head. The start of any raw client.
pub async fn raw_upgrade(addr: SocketAddr, extra: &[(&str, &str)]) -> RawResponse {
    within("a raw HTTP upgrade", async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut request = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (name, value) in extra {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.expect("read response");
            assert!(
                n > 0,
                "connection closed before a full response head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            assert!(buf.len() < 64 * 1024, "response head too large");
        };
        let head = String::from_utf8(buf[..end].to_vec()).expect("ASCII head");
        let rest = buf[end..].to_vec();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        RawResponse {
            status,
            head,
            rest,
            stream,
        }
    })
    .await
}

/// Headers that pass the `mux.v1` check.
pub const MUX: (&str, &str) = ("Sec-WebSocket-Protocol", "mux.v1");

/// One masked (as a client must) binary WebSocket frame carrying `payload`. The mask key is
/// zero, so the payload goes out as is.
pub fn ws_binary_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x82];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// One WebSocket message of mux frames.
pub fn encode(frames: &[Frame]) -> Bytes {
    encode_message(frames.iter()).freeze()
}

/// SETTINGS with every value at its default.
pub fn default_settings() -> Frame {
    Frame::Settings(Settings::default())
}

/// SETTINGS granting the server a huge initial window on every session.
pub fn generous_settings() -> Frame {
    Frame::Settings(
        Settings::default()
            .with(Setting::InitialCreditMessages, u32::MAX)
            .with(Setting::InitialCreditBytes, u32::MAX)
            .with(Setting::MaxMessageSize, 1 << 20),
    )
}

/// A mux peer speaking raw frames over tokio-tungstenite: it can break every rule.
pub struct RawPeer {
    pub ws: WebSocketStream<TcpStream>,
}

impl RawPeer {
    /// Connects to `addr` offering `mux.v1`, and exchanges SETTINGS (`settings` goes out).
    pub async fn connect(addr: SocketAddr, settings: Frame) -> RawPeer {
        within("a raw mux peer to connect", async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let mut request = format!("ws://{addr}/")
                .into_client_request()
                .expect("request");
            request
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static("mux.v1"));
            let (ws, response) = tokio_tungstenite::client_async(request, tcp)
                .await
                .expect("upgrade");
            assert_eq!(response.status().as_u16(), 101);
            let mut peer = RawPeer { ws };
            peer.send(&[settings]).await;
            let first = peer.next_frames().await.expect("server SETTINGS");
            assert!(
                matches!(first.first(), Some(Frame::Settings(_))),
                "first frame: {first:?}"
            );
            peer
        })
        .await
    }

    /// Sends one WebSocket message carrying `frames`.
    pub async fn send(&mut self, frames: &[Frame]) {
        self.ws
            .send(Message::Binary(encode(frames)))
            .await
            .expect("raw send");
    }

    /// The frames of the next binary message (`None` once the connection ended).
    pub async fn next_frames(&mut self) -> Option<Vec<Frame>> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Binary(b)) => return Some(decode_message(b).expect("valid frames")),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads frames until `pick` returns something, failing after [`WAIT`].
    pub async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(&Frame) -> Option<T>) -> T {
        within(what, async {
            loop {
                let frames = self
                    .next_frames()
                    .await
                    .unwrap_or_else(|| panic!("connection ended while waiting for {what}"));
                if let Some(found) = frames.iter().find_map(&mut pick) {
                    return found;
                }
            }
        })
        .await
    }
}

/// A payload of `len` bytes whose content is derived from `seed`.
pub fn filler(seed: u64, len: usize) -> BytesMut {
    let mut rng = XorShift(seed | 1);
    let mut out = BytesMut::with_capacity(len);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A small deterministic PRNG (no dependency needed).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-ish in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// Splits unmasked (server to client) WebSocket frames: `(opcode, payload)` pairs. A
/// truncated last frame is dropped.
pub fn ws_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        assert_eq!(bytes[1] & 0x80, 0, "server frames are never masked");
        let (len, start) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 if bytes.len() >= 10 => (
                u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            n if n < 126 => (usize::from(n), 2),
            _ => break,
        };
        if bytes.len() < start + len {
            break;
        }
        out.push((opcode, bytes[start..start + len].to_vec()));
        bytes = &bytes[start + len..];
    }
    out
}

/// Reads `stream` until EOF (or an error such as a reset), bounded by [`WAIT`].
pub async fn read_to_end(stream: &mut TcpStream, mut buf: Vec<u8>) -> Vec<u8> {
    within("the server to close the connection", async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return buf,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
}

/// The configuration the handshake matrix expects: one allowed origin, missing origins
/// refused, at most 2 connections per principal.
pub fn matrix_config() -> ServerConfig {
    ServerConfig::default()
        .origins(OriginPolicy::allow(["https://example.com"]))
        .connection_limits(1000, 1000, 2)
}

/// spec/http.md's checks in order against a server built from [`matrix_config`] with
/// [`token_authenticator`], whatever serves it (the plain server, axum): each refusal has
/// its status (and `Retry-After` where the spec asks), each success echoes `mux.v1` and
/// never the token.
pub async fn handshake_matrix(addr: SocketAddr) {
    const ORIGIN: (&str, &str) = ("Origin", "https://example.com");
    const GOOD: (&str, &str) = ("Authorization", "Bearer good-token");
    let cases: &[(&[(&str, &str)], u16)] = &[
        (&[MUX, GOOD], 403),
        (&[("Origin", "https://evil.example"), MUX, GOOD], 403),
        (&[("Origin", "null"), MUX, GOOD], 403),
        (&[ORIGIN, GOOD], 400),
        (&[ORIGIN, ("Sec-WebSocket-Protocol", "mux.v2"), GOOD], 400),
        (&[ORIGIN, MUX], 401),
        (&[ORIGIN, MUX, ("Authorization", "Bearer wrong")], 401),
        (&[ORIGIN, MUX, GOOD], 101),
        (
            &[
                ORIGIN,
                ("Sec-WebSocket-Protocol", "mux.v1, bearer.good-token"),
            ],
            101,
        ),
    ];
    for (headers, want) in cases {
        let response = raw_upgrade(addr, headers).await;
        assert_eq!(response.status, *want, "{headers:?}: {}", response.head);
        if *want == 101 {
            assert_eq!(response.header("sec-websocket-protocol"), Some("mux.v1"));
        }
        assert!(!response.head.contains("good-token"), "{}", response.head);
    }
    // The per-principal cap (2): the third connection of one principal gets 429 with
    // Retry-After while the first two are open.
    let p = ("Authorization", "Bearer principal:capped");
    let first = raw_upgrade(addr, &[ORIGIN, MUX, p]).await;
    let second = raw_upgrade(addr, &[ORIGIN, MUX, p]).await;
    assert_eq!((first.status, second.status), (101, 101));
    let third = raw_upgrade(addr, &[ORIGIN, MUX, p]).await;
    assert_eq!(third.status, 429, "{}", third.head);
    assert!(third.header("retry-after").is_some(), "{}", third.head);
}
