//! A raw hostile client for the NET tests of the threat catalogue (issue #6).
//!
//! Nothing here goes through `mux-proto` or tungstenite on the way out: the HTTP upgrade is
//! written by hand over a `TcpStream`, WebSocket frames are built byte by byte from RFC 6455
//! ([`ws`]), and mux frames byte by byte from `spec/frames.md` ([`wire`]). So the client can
//! break any rule at any layer (an unmasked frame, RSV bits, a 2^63 length, a frame type
//! that does not exist, a DATA frame beyond credit), stop reading (with a shrunk
//! `SO_RCVBUF`, so the server's writes really block), trickle bytes, and measure what comes
//! back: the CONN_CLOSE code, the WebSocket Close code, and when they arrived.
//!
//! [`Honest`] is the other half of every baseline: sessions on *other* connections, through
//! the real [`Client`], whose echo latency is measured before and during an attack.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mux_tokio::{Client, ClientConfig, ServerHandle, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{within, WAIT};

/// mux v1 frames, written byte by byte from spec/frames.md (not through `mux_proto::frame`),
/// and a minimal independent parser for what the server sends back.
pub mod wire {
    pub const DATA: u8 = 0x0;
    pub const OPEN: u8 = 0x1;
    pub const ACCEPT: u8 = 0x2;
    pub const CREDIT: u8 = 0x3;
    pub const CLOSE: u8 = 0x4;
    pub const RESET: u8 = 0x5;
    pub const SETTINGS: u8 = 0x6;
    pub const PING: u8 = 0x7;
    pub const PONG: u8 = 0x8;
    pub const GOAWAY: u8 = 0x9;
    pub const CONN_CLOSE: u8 = 0xa;

    pub const END: u8 = 0x01;
    pub const FIN: u8 = 0x02;

    /// SETTINGS ids (spec/frames.md#settings).
    pub const MAX_FRAME_SIZE: u16 = 0x1;
    pub const MAX_SESSIONS: u16 = 0x2;
    pub const INITIAL_CREDIT_MESSAGES: u16 = 0x3;
    pub const INITIAL_CREDIT_BYTES: u16 = 0x4;
    pub const MAX_MESSAGE_SIZE: u16 = 0x5;
    pub const CONTROL_BUDGET: u16 = 0x6;
    pub const MAX_OPEN_METADATA: u16 = 0x7;
    pub const IDLE_TIMEOUT_MS: u16 = 0x8;

    /// Any header at all: version nibble, type nibble, flags, session, and a declared length
    /// that need not match the payload.
    pub fn raw(version: u8, ty: u8, flags: u8, sid: u32, len: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + payload.len());
        out.push((version << 4) | (ty & 0x0f));
        out.push(flags);
        out.extend_from_slice(&sid.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A version-1 frame whose length is its payload's.
    pub fn frame(ty: u8, flags: u8, sid: u32, payload: &[u8]) -> Vec<u8> {
        raw(1, ty, flags, sid, payload.len() as u32, payload)
    }

    pub fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        for (id, value) in entries {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&value.to_be_bytes());
        }
        frame(SETTINGS, 0, 0, &p)
    }

    pub fn open(sid: u32, kind: &[u8], auth: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 12];
        p.push(kind.len() as u8);
        p.extend_from_slice(kind);
        p.extend_from_slice(&(auth.len() as u16).to_be_bytes());
        p.extend_from_slice(auth);
        frame(OPEN, 0, sid, &p)
    }

    pub fn data(sid: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        frame(DATA, flags, sid, payload)
    }

    /// A one-frame message.
    pub fn message(sid: u32, payload: &[u8]) -> Vec<u8> {
        data(sid, END, payload)
    }

    pub fn credit(sid: u32, messages: u32, bytes: u32) -> Vec<u8> {
        let mut p = messages.to_be_bytes().to_vec();
        p.extend_from_slice(&bytes.to_be_bytes());
        frame(CREDIT, 0, sid, &p)
    }

    fn close_payload(code: u16) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(&0u32.to_be_bytes());
        p
    }

    pub fn reset(sid: u32, code: u16) -> Vec<u8> {
        frame(RESET, 0, sid, &close_payload(code))
    }

    pub fn close(sid: u32, code: u16) -> Vec<u8> {
        frame(CLOSE, 0, sid, &close_payload(code))
    }

    pub fn conn_close(code: u16) -> Vec<u8> {
        frame(CONN_CLOSE, 0, 0, &close_payload(code))
    }

    pub fn ping(payload: u64) -> Vec<u8> {
        frame(PING, 0, 0, &payload.to_be_bytes())
    }

    pub fn pong(payload: u64) -> Vec<u8> {
        frame(PONG, 0, 0, &payload.to_be_bytes())
    }

    /// One frame as the server sent it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RawFrame {
        pub ty: u8,
        pub flags: u8,
        pub sid: u32,
        pub payload: Vec<u8>,
    }

    impl RawFrame {
        /// The code of a CLOSE, RESET or CONN_CLOSE (the first two payload bytes); of a
        /// GOAWAY, the two bytes after `last_session_id`.
        pub fn code(&self) -> Option<u16> {
            let at = match self.ty {
                CLOSE | RESET | CONN_CLOSE => 0,
                GOAWAY => 4,
                _ => return None,
            };
            let b = self.payload.get(at..at + 2)?;
            Some(u16::from_be_bytes([b[0], b[1]]))
        }

        /// `retry_after_ms` of a CLOSE, RESET or CONN_CLOSE.
        pub fn retry_after_ms(&self) -> Option<u32> {
            matches!(self.ty, CLOSE | RESET | CONN_CLOSE).then(|| {
                let b = &self.payload[2..6];
                u32::from_be_bytes([b[0], b[1], b[2], b[3]])
            })
        }

        /// The entries of a SETTINGS frame.
        pub fn settings(&self) -> Vec<(u16, u32)> {
            assert_eq!(self.ty, SETTINGS);
            self.payload
                .chunks_exact(6)
                .map(|e| {
                    (
                        u16::from_be_bytes([e[0], e[1]]),
                        u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
                    )
                })
                .collect()
        }

        pub fn is_data(&self) -> bool {
            self.ty == DATA
        }

        pub fn end(&self) -> bool {
            self.flags & END != 0
        }
    }

    /// Splits one binary WebSocket message into frames. The server must only send
    /// well-formed frames, so anything else fails the test.
    pub fn parse(mut message: &[u8]) -> Vec<RawFrame> {
        let mut out = Vec::new();
        assert!(!message.is_empty(), "the server sent an empty message");
        while !message.is_empty() {
            assert!(message.len() >= 10, "truncated header from the server");
            assert_eq!(message[0] >> 4, 1, "version from the server");
            let len = u32::from_be_bytes([message[6], message[7], message[8], message[9]]) as usize;
            assert!(message.len() >= 10 + len, "truncated frame from the server");
            out.push(RawFrame {
                ty: message[0] & 0x0f,
                flags: message[1],
                sid: u32::from_be_bytes([message[2], message[3], message[4], message[5]]),
                payload: message[10..10 + len].to_vec(),
            });
            message = &message[10 + len..];
        }
        out
    }
}

/// RFC 6455 framing by hand, so a client can send frames tungstenite would never produce.
pub mod ws {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xa;

    /// The mask every masked frame here uses (non-zero, so unmasking is exercised).
    pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A frame with every header bit chosen by the caller. `len` overrides the payload
    /// length written in the header (to lie about it, e.g. 2^63).
    pub fn frame_with(
        fin: bool,
        rsv: u8,
        opcode: u8,
        mask: Option<[u8; 4]>,
        len: Option<u64>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | ((rsv & 0x7) << 4) | (opcode & 0x0f)];
        let masked = if mask.is_some() { 0x80 } else { 0 };
        let n = len.unwrap_or(payload.len() as u64);
        if n < 126 {
            out.push(masked | n as u8);
        } else if n <= u64::from(u16::MAX) {
            out.push(masked | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(masked | 127);
            out.extend_from_slice(&n.to_be_bytes());
        }
        match mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    /// A masked, final frame: what a well-behaved client sends.
    pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame_with(true, 0, opcode, Some(MASK), None, payload)
    }

    pub fn binary(payload: &[u8]) -> Vec<u8> {
        frame(BINARY, payload)
    }

    /// A Close frame with `code` (and no reason).
    pub fn close(code: u16) -> Vec<u8> {
        frame(CLOSE, &code.to_be_bytes())
    }

    /// One frame from the server.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct WsFrame {
        pub fin: bool,
        pub opcode: u8,
        pub payload: Vec<u8>,
    }

    impl WsFrame {
        /// The status code of a Close frame, if it has one.
        pub fn close_code(&self) -> Option<u16> {
            (self.opcode == CLOSE && self.payload.len() >= 2)
                .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
        }
    }

    /// Takes one whole server frame off the front of `buf`, if it is all there.
    pub fn take(buf: &mut Vec<u8>) -> Option<WsFrame> {
        if buf.len() < 2 {
            return None;
        }
        assert_eq!(buf[1] & 0x80, 0, "server frames are never masked");
        let (len, start) = match buf[1] & 0x7f {
            126 => {
                if buf.len() < 4 {
                    return None;
                }
                (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return None;
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (usize::from(n), 2),
        };
        if buf.len() < start + len {
            return None;
        }
        let frame = WsFrame {
            fin: buf[0] & 0x80 != 0,
            opcode: buf[0] & 0x0f,
            payload: buf[start..start + len].to_vec(),
        };
        buf.drain(..start + len);
        Some(frame)
    }
}

/// How to open the TCP connection.
#[derive(Debug, Clone)]
pub struct Options {
    /// Shrink `SO_RCVBUF` (before connecting, so the window scale follows): with a client that
    /// stops reading, the server's writes block after a few KiB instead of megabytes.
    pub recv_buffer: Option<u32>,
    /// Connect from this loopback address (127.0.0.0/8 all reach the server): a distinct
    /// "IP" for per-IP caps.
    pub local_ip: Option<IpAddr>,
    /// Extra request headers (`mux.v1` is offered unless `no_subprotocol`).
    pub headers: Vec<(String, String)>,
    /// The request target.
    pub path: String,
    pub no_subprotocol: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            recv_buffer: None,
            local_ip: None,
            headers: Vec::new(),
            path: "/".into(),
            no_subprotocol: false,
        }
    }
}

impl Options {
    pub fn source_ip(mut self, last_octet: u8) -> Self {
        self.local_ip = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet)));
        self
    }

    pub fn small_recv_buffer(mut self) -> Self {
        self.recv_buffer = Some(4096);
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = path.into();
        self
    }
}

/// A bare TCP connection to `addr` with `options` applied (nothing written yet).
pub async fn tcp(addr: SocketAddr, options: &Options) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = options.recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(ip) = options.local_ip {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// The upgrade request `options` describe, as bytes.
pub fn upgrade_request(addr: SocketAddr, options: &Options) -> Vec<u8> {
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        options.path
    );
    if !options.no_subprotocol {
        request.push_str("Sec-WebSocket-Protocol: mux.v1\r\n");
    }
    for (name, value) in &options.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// What the server sent until the connection ended.
#[derive(Debug, Default)]
pub struct Ending {
    /// The code of the CONN_CLOSE frame, if one came.
    pub conn_close: Option<u16>,
    /// The code of the WebSocket Close frame, if one came.
    pub ws_close: Option<u16>,
    /// Every mux frame received on the way (CONN_CLOSE included).
    pub frames: Vec<wire::RawFrame>,
    /// When the Close frame (or EOF) arrived.
    pub at: Option<Instant>,
}

impl Ending {
    /// (CONN_CLOSE code, WebSocket Close code).
    pub fn codes(&self) -> (Option<u16>, Option<u16>) {
        (self.conn_close, self.ws_close)
    }

    /// RESETs received, as (session, code).
    pub fn resets(&self) -> Vec<(u32, u16)> {
        self.frames
            .iter()
            .filter(|f| f.ty == wire::RESET)
            .map(|f| (f.sid, f.code().unwrap_or(0)))
            .collect()
    }
}

/// A client that speaks WebSocket and mux by hand.
pub struct Hostile {
    pub stream: TcpStream,
    inbuf: Vec<u8>,
    /// The server's SETTINGS entries (after [`Hostile::connect`]).
    pub server_settings: Vec<(u16, u32)>,
    /// The WebSocket Close code, once one arrived.
    pub ws_close: Option<u16>,
    /// The CONN_CLOSE code, once one arrived.
    pub conn_close: Option<u16>,
}

impl Hostile {
    /// Upgrades by hand. `Err` carries the status and head of a refusal.
    pub async fn upgrade(addr: SocketAddr, options: &Options) -> Result<Hostile, (u16, String)> {
        let mut stream = tcp(addr, options).await.expect("connect");
        stream
            .write_all(&upgrade_request(addr, options))
            .await
            .expect("write the upgrade request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = within("the upgrade response", async {
            loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let n = stream.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break 0;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        if end == 0 {
            return Err((0, String::from_utf8_lossy(&buf).into_owned()));
        }
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status != 101 {
            return Err((status, head));
        }
        Ok(Hostile {
            stream,
            inbuf: buf[end..].to_vec(),
            server_settings: Vec::new(),
            ws_close: None,
            conn_close: None,
        })
    }

    /// Upgrades and exchanges SETTINGS (`settings` goes out first; the server's are kept).
    pub async fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> Hostile {
        Hostile::connect_with(addr, &Options::default(), settings).await
    }

    pub async fn connect_with(
        addr: SocketAddr,
        options: &Options,
        settings: &[(u16, u32)],
    ) -> Hostile {
        let mut h = Hostile::upgrade(addr, options)
            .await
            .unwrap_or_else(|(status, head)| panic!("upgrade refused: {status} {head}"));
        h.send(&[wire::settings(settings)]).await;
        let first = h.next_frames().await.expect("the server's SETTINGS");
        assert_eq!(first[0].ty, wire::SETTINGS, "first frame: {first:?}");
        h.server_settings = first[0].settings();
        h
    }

    /// Writes raw bytes (anything at all).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends the concatenated `frames` as one masked binary WebSocket message.
    pub async fn send(&mut self, frames: &[Vec<u8>]) {
        let _ = self.try_send(frames).await;
    }

    /// As [`Hostile::send`], reporting a write error (the server may have hung up).
    pub async fn try_send(&mut self, frames: &[Vec<u8>]) -> std::io::Result<()> {
        let message: Vec<u8> = frames.concat();
        self.stream.write_all(&ws::binary(&message)).await
    }

    /// Writes `bytes` `chunk` bytes at a time, `delay` apart; stops at the first error.
    pub async fn trickle(&mut self, bytes: &[u8], chunk: usize, delay: Duration) -> usize {
        trickle(&mut self.stream, bytes, chunk, delay).await
    }

    /// The next WebSocket frame, or `None` at EOF or error. Bounded by [`WAIT`].
    pub async fn next_ws(&mut self) -> Option<ws::WsFrame> {
        self.next_ws_within(WAIT).await.unwrap_or_else(|| {
            panic!("nothing from the server for {WAIT:?}");
        })
    }

    /// The next WebSocket frame within `limit`: `None` if nothing came, `Some(None)` at EOF.
    pub async fn next_ws_within(&mut self, limit: Duration) -> Option<Option<ws::WsFrame>> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(frame) = ws::take(&mut self.inbuf) {
                if frame.opcode == ws::CLOSE {
                    self.ws_close = frame.close_code();
                    // Answer it, as every WebSocket client does (RFC 6455 §5.5.1).
                    let _ = self
                        .stream
                        .write_all(&ws::frame(ws::CLOSE, &frame.payload))
                        .await;
                }
                return Some(Some(frame));
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(None),
                Ok(Ok(n)) => self.inbuf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The mux frames of the next binary message; `None` once a Close frame or EOF came.
    pub async fn next_frames(&mut self) -> Option<Vec<wire::RawFrame>> {
        loop {
            let frame = self.next_ws().await?;
            match frame.opcode {
                ws::BINARY => {
                    let frames = wire::parse(&frame.payload);
                    for f in &frames {
                        if f.ty == wire::CONN_CLOSE {
                            self.conn_close = f.code();
                        }
                    }
                    return Some(frames);
                }
                ws::CLOSE => return None,
                _ => {}
            }
        }
    }

    /// Reads frames until `pick` returns something; panics if the connection ends first.
    pub async fn expect<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&wire::RawFrame) -> Option<T>,
    ) -> T {
        within(what, async {
            loop {
                let frames = self
                    .next_frames()
                    .await
                    .unwrap_or_else(|| panic!("the connection ended while waiting for {what}"));
                if let Some(found) = frames.iter().find_map(&mut pick) {
                    return found;
                }
            }
        })
        .await
    }

    /// Reads everything until the connection ends (bounded by [`WAIT`]).
    pub async fn until_closed(&mut self) -> Ending {
        let mut ending = Ending::default();
        within("the server to close the connection", async {
            while let Some(frames) = self.next_frames().await {
                ending.frames.extend(frames);
            }
        })
        .await;
        ending.at = Some(Instant::now());
        ending.conn_close = self.conn_close;
        ending.ws_close = self.ws_close;
        ending
    }

    /// Writes `flood` without reading for `pause` (the server's writes back pile up against
    /// a shut window), then reads everything until the server closes, while the rest of the
    /// flood is still being written. A server that stopped reading after closing never
    /// blocks the client: the writer gives up when the connection is gone.
    pub async fn flood(&mut self, flood: &[u8], pause: Duration) -> Ending {
        let (mut reader, mut writer) = self.stream.split();
        let inbuf = &mut self.inbuf;
        let write = async {
            let _ = writer.write_all(flood).await;
        };
        let read = async {
            tokio::time::sleep(pause).await;
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match reader.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
                }
                // Stop at the server's Close; it is answered below, once the flood is out.
                let mut scan = inbuf.clone();
                while let Some(frame) = ws::take(&mut scan) {
                    if frame.opcode == ws::CLOSE {
                        return;
                    }
                }
            }
        };
        within("the flood and the server's answer", async {
            tokio::join!(write, read);
        })
        .await;
        // Answer the Close (the server's lingering close ends with it) and read to the end.
        let _ = self.stream.write_all(&ws::close(1000)).await;
        let mut chunk = vec![0u8; 64 * 1024];
        within("the server to hang up", async {
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        let mut ending = Ending {
            at: Some(Instant::now()),
            ..Ending::default()
        };
        while let Some(frame) = ws::take(&mut self.inbuf) {
            match frame.opcode {
                ws::BINARY => {
                    for f in wire::parse(&frame.payload) {
                        if f.ty == wire::CONN_CLOSE {
                            ending.conn_close = f.code();
                        }
                        ending.frames.push(f);
                    }
                }
                ws::CLOSE => ending.ws_close = frame.close_code(),
                _ => {}
            }
        }
        self.conn_close = ending.conn_close;
        self.ws_close = ending.ws_close;
        ending
    }

    /// Waits until the server closes the TCP connection, discarding what it sends; returns
    /// when that happened. For a client that has stopped reading and then drains.
    pub async fn until_eof(&mut self) -> Instant {
        drain_to_eof(&mut self.stream).await
    }
}

/// Writes `bytes` `chunk` bytes at a time, `delay` apart; returns how many were written
/// before the first error.
pub async fn trickle(stream: &mut TcpStream, bytes: &[u8], chunk: usize, delay: Duration) -> usize {
    let mut written = 0;
    for piece in bytes.chunks(chunk.max(1)) {
        if stream.write_all(piece).await.is_err() {
            break;
        }
        written += piece.len();
        tokio::time::sleep(delay).await;
    }
    written
}

/// Reads and discards until EOF or error (bounded by [`WAIT`]); returns when it ended.
pub async fn drain_to_eof(stream: &mut TcpStream) -> Instant {
    within("the server to close the connection", async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await
}

// ---- the baseline: honest sessions on other connections ---------------------------------

/// Honest echo sessions on their own connections (the real [`Client`]), for B.c: their p99
/// round-trip latency is measured unloaded and under attack, in the same test.
pub struct Honest {
    clients: Vec<Client>,
    sessions: Vec<Session>,
}

impl Honest {
    /// `connections` clients with `per_connection` echo sessions each.
    pub async fn start(url: &str, connections: usize, per_connection: usize) -> Honest {
        let mut clients = Vec::new();
        let mut sessions = Vec::new();
        for _ in 0..connections {
            let mut client = within(
                "an honest client to connect",
                Client::connect(url, ClientConfig::default().reconnect(false)),
            )
            .await
            .expect("honest connect");
            for _ in 0..per_connection {
                sessions.push(
                    within("an honest open", client.open("echo", Bytes::new()))
                        .await
                        .expect("honest open"),
                );
            }
            clients.push(client);
        }
        let mut honest = Honest { clients, sessions };
        // Warm up every path (allocations, first scheduling) before anything is measured.
        honest.latencies(4).await;
        honest
    }

    pub fn connections(&self) -> usize {
        self.clients.len()
    }

    /// `rounds` 64-byte echo round trips on every session, round-robin with one request
    /// in flight (so one scheduler stall costs one sample, not one per session); returns
    /// every sample.
    pub async fn latencies(&mut self, rounds: usize) -> Vec<Duration> {
        let sessions = &mut self.sessions;
        within_long("honest round trips", async move {
            let mut samples = Vec::with_capacity(rounds * sessions.len());
            for i in 0..rounds {
                for (s, session) in sessions.iter_mut().enumerate() {
                    let m = Bytes::from(format!("{s:04}-{i:08}-{:0>48}", ""));
                    let started = Instant::now();
                    session.send(m.clone()).await.expect("honest send");
                    let echoed = session.recv().await.expect("honest echo");
                    samples.push(started.elapsed());
                    assert_eq!(echoed, m, "an honest session got someone else's bytes");
                }
            }
            samples
        })
        .await
    }

    /// p99 of [`Honest::latencies`].
    pub async fn p99(&mut self, rounds: usize) -> Duration {
        p99(self.latencies(rounds).await)
    }

    pub async fn close(self) {
        drop(self.sessions);
        for client in self.clients {
            client.close().await;
        }
    }
}

/// The 99th percentile (nearest rank).
pub fn p99(mut samples: Vec<Duration>) -> Duration {
    assert!(!samples.is_empty());
    samples.sort();
    let rank = (samples.len() * 99).div_ceil(100).max(1);
    samples[rank - 1]
}

/// Slack added to 2× the unloaded p99. The attacker, the server and the honest clients
/// share one process and the test machine's two cores (with whatever else runs there), so
/// a few scheduler quanta of noise are not the server's doing; a debug build (the default
/// test run) spends about ten times longer per frame, so the same interleaving costs ten
/// times more. Documented in SECURITY.md; the release soak reports the plain ratio.
pub const LATENCY_SLACK: Duration = if cfg!(debug_assertions) {
    Duration::from_millis(5)
} else {
    Duration::from_millis(1)
};

/// Whether a loaded p99 is within 2× the unloaded one (plus [`LATENCY_SLACK`]).
pub fn within_latency_bound(unloaded: Duration, loaded: Duration) -> bool {
    loaded <= unloaded * 2 + LATENCY_SLACK
}

/// B.c over up to three (unloaded, loaded) measurements taken in this test: it passes if
/// one of them is within the bound. Noise from the rest of the machine (this box runs
/// builds and fuzzers next to the tests) can spoil one measurement; a server that really
/// lets an attacker slow its other connections fails all three.
pub fn assert_latency(what: &str, attempts: &[(Duration, Duration)]) {
    assert!(!attempts.is_empty());
    for (unloaded, loaded) in attempts {
        println!(
            "{what}: honest p99 unloaded {unloaded:?}, under attack {loaded:?} ({:.2}x)",
            loaded.as_secs_f64() / unloaded.as_secs_f64()
        );
    }
    assert!(
        attempts.iter().any(|(u, l)| within_latency_bound(*u, *l)),
        "{what}: honest p99 under attack exceeded 2 x unloaded + {LATENCY_SLACK:?} in every \
         attempt: {attempts:?}"
    );
}

/// Like [`within`] with a longer bound (a measurement, not a single wait).
pub async fn within_long<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT * 4, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {:?} waiting for {what}", WAIT * 4),
    }
}

/// Tasks alive in this runtime (each server connection runs as one task).
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// B.d: after the attacker left, the server is back to the honest connections only, its
/// per-IP/per-principal registry to the honest keys, and the runtime's alive tasks to at
/// most `tasks` (counted before the attack; short-lived helper tasks may have ended since),
/// all within 2 s.
pub async fn assert_back_to_baseline(
    handle: &ServerHandle,
    honest_connections: usize,
    keys: (usize, usize),
    tasks: usize,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let stats = handle.stats();
        let now = (stats.connections, handle.tracked_keys(), alive_tasks());
        if now.0 == honest_connections && now.1 == keys && now.2 <= tasks {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not back to baseline 2 s after the attacker left: (connections, keys, tasks) = \
             {now:?}, expected {:?} (tasks at most)",
            (honest_connections, keys, tasks)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serializes the tests that measure latency (tests of one binary run in parallel threads,
/// and two measurements at once would disturb each other).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// This process's resident set size (`VmRSS` in /proc/self/status), in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .expect("VmRSS")
}

// ---- logs: everything the library emits, for "no secret is ever logged" ---------------

/// Everything the tracing macros produce (event and span fields, names, messages), as text.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<String>>);

impl Capture {
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut out = self.0.lock().unwrap();
        let _ = write!(out, "\nspan {}", span.metadata().name());
        span.record(&mut Fields(&mut out));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Fields(&mut self.0.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut out = self.0.lock().unwrap();
        let _ = write!(out, "\nevent {}", event.metadata().target());
        event.record(&mut Fields(&mut out));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
