//! A raw attacking client: the HTTP upgrade written by hand over a `TcpStream`, RFC 6455
//! frames and mux frames built byte by byte (spec/frames.md), so an attacker can break any
//! rule, stop reading, trickle bytes and connect from any 127/8 address, and learn how the
//! server cut it: the WebSocket Close code, an HTTP status, EOF or a reset, and when.
//!
//! Shared by `mux-load attack` (benches/load/attack.rs) and the test that runs the same
//! attacks in `cargo test` (tests/attack_suite.rs), so it uses tokio and std only.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// RFC 6455 framing, client side (every frame masked).
pub mod ws {
    pub const CONTINUATION: u8 = 0x0;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;

    /// The mask of every frame (non-zero, so the server really unmasks).
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked frame.
    pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push((u8::from(fin) << 7) | (opcode & 0x0f));
        let n = payload.len();
        if n < 126 {
            out.push(0x80 | n as u8);
        } else if n <= usize::from(u16::MAX) {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    /// One whole binary message.
    pub fn binary(payload: &[u8]) -> Vec<u8> {
        frame(true, BINARY, payload)
    }

    /// A ping with `payload`.
    pub fn ping(payload: &[u8]) -> Vec<u8> {
        frame(true, PING, payload)
    }

    /// A Close with `code`.
    pub fn close(code: u16) -> Vec<u8> {
        frame(true, CLOSE, &code.to_be_bytes())
    }

    /// One frame from the server (never masked).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Frame {
        pub opcode: u8,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// The code of a Close frame, if it has one.
        pub fn close_code(&self) -> Option<u16> {
            match (self.opcode, self.payload.as_slice()) {
                (CLOSE, [a, b, ..]) => Some(u16::from_be_bytes([*a, *b])),
                _ => None,
            }
        }
    }

    /// Takes one whole frame off the front of `buf`, if it is all there.
    pub fn take(buf: &mut Vec<u8>) -> Option<Frame> {
        let (&b0, rest) = buf.split_first()?;
        let (&b1, rest) = rest.split_first()?;
        let (len, start): (usize, usize) = match b1 & 0x7f {
            126 => (
                usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
                4,
            ),
            127 => (
                usize::try_from(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?)).ok()?,
                10,
            ),
            n => (usize::from(n), 2),
        };
        let payload = buf.get(start..start.checked_add(len)?)?.to_vec();
        buf.drain(..start + len);
        Some(Frame {
            opcode: b0 & 0x0f,
            payload,
        })
    }
}

/// mux v1 frames (spec/frames.md), written by hand.
pub mod mux {
    pub const DATA: u8 = 0x0;
    pub const OPEN: u8 = 0x1;
    pub const ACCEPT: u8 = 0x2;
    pub const CREDIT: u8 = 0x3;
    pub const RESET: u8 = 0x5;
    pub const SETTINGS: u8 = 0x6;
    pub const PING: u8 = 0x7;
    pub const PONG: u8 = 0x8;
    pub const CONN_CLOSE: u8 = 0xa;

    pub const END: u8 = 0x01;

    /// SETTINGS ids (spec/frames.md#settings).
    pub const INITIAL_CREDIT_MESSAGES: u16 = 0x3;
    pub const INITIAL_CREDIT_BYTES: u16 = 0x4;
    pub const MAX_MESSAGE_SIZE: u16 = 0x5;

    /// Header: version and type, flags, session, payload length.
    pub fn frame(ty: u8, flags: u8, sid: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + payload.len());
        out.push(0x10 | (ty & 0x0f));
        out.push(flags);
        out.extend_from_slice(&sid.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::with_capacity(entries.len() * 6);
        for (id, value) in entries {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&value.to_be_bytes());
        }
        frame(SETTINGS, 0, 0, &p)
    }

    /// An OPEN of `kind` with no metadata and no early credit.
    pub fn open(sid: u32, kind: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 12];
        p.push(kind.len() as u8);
        p.extend_from_slice(kind);
        p.extend_from_slice(&0u16.to_be_bytes());
        frame(OPEN, 0, sid, &p)
    }

    pub fn data(sid: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        frame(DATA, flags, sid, payload)
    }

    pub fn credit(sid: u32, messages: u32, bytes: u32) -> Vec<u8> {
        let mut p = messages.to_be_bytes().to_vec();
        p.extend_from_slice(&bytes.to_be_bytes());
        frame(CREDIT, 0, sid, &p)
    }

    pub fn reset(sid: u32, code: u16) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(&0u32.to_be_bytes());
        frame(RESET, 0, sid, &p)
    }

    pub fn ping(payload: u64) -> Vec<u8> {
        frame(PING, 0, 0, &payload.to_be_bytes())
    }

    /// One frame as the server sent it: (type, session, payload).
    pub type Frame<'a> = (u8, u32, &'a [u8]);

    /// The frames of one binary message (a malformed tail is ignored).
    pub fn parse(mut message: &[u8]) -> Vec<Frame<'_>> {
        let mut out = Vec::new();
        while let Some(header) = message.get(..10) {
            let ty = header[0] & 0x0f;
            let sid = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
            let len = u32::from_be_bytes([header[6], header[7], header[8], header[9]]) as usize;
            let Some(payload) = message.get(10..10 + len) else {
                break;
            };
            out.push((ty, sid, payload));
            message = &message[10 + len..];
        }
        out
    }
}

/// How an attacking connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cut {
    /// The server sent a WebSocket Close with this code (after a CONN_CLOSE with the same
    /// code, when the connection was upgraded).
    Close(u16),
    /// The server refused the handshake with this HTTP status.
    Http(u16),
    /// The server closed the TCP connection without a Close frame.
    Eof,
    /// The connection was reset (a read or write failed).
    Reset,
    /// Still open when the attack was stopped.
    Held,
    /// The attack could not be set up (connect failed, an unexpected answer).
    Failed,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cut::Close(code) => write!(f, "close {code}"),
            Cut::Http(status) => write!(f, "HTTP {status}"),
            Cut::Eof => f.write_str("TCP close"),
            Cut::Reset => f.write_str("TCP reset"),
            Cut::Held => f.write_str("not cut"),
            Cut::Failed => f.write_str("failed"),
        }
    }
}

/// One attacking connection's end: how, and how long after its attack began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub cut: Cut,
    pub after: Duration,
}

impl Ended {
    pub fn at(cut: Cut, started: Instant) -> Ended {
        Ended {
            cut,
            after: started.elapsed(),
        }
    }
}

/// The cut a failed read or write stands for.
fn io_cut(e: &io::Error) -> Cut {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => Cut::Eof,
        _ => Cut::Reset,
    }
}

/// A TCP connection to `addr` from `source`, with `SO_RCVBUF` shrunk to `recv_buffer`
/// (before connecting, so the window scale follows) when given.
pub async fn tcp(
    addr: SocketAddr,
    source: Ipv4Addr,
    recv_buffer: Option<u32>,
) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.bind(SocketAddr::from((source, 0)))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The upgrade request a browser would send (no Origin), offering `mux.v1`.
pub fn upgrade_request(addr: SocketAddr) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mux.v1\r\n\r\n"
    )
    .into_bytes()
}

/// The status code of an HTTP response head.
pub fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let code = line.split(|&b| b == b' ').nth(1)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// Fires when the attack is to stop (or its sender is gone), or once a connection has been
/// attacking for its hold limit, counted from [`Stop::begin`].
#[derive(Debug, Clone)]
pub struct Stop {
    rx: tokio::sync::watch::Receiver<bool>,
    hold: Option<Duration>,
    deadline: Option<tokio::time::Instant>,
}

impl Stop {
    /// The switch and a first receiver.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Stop) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (
            tx,
            Stop {
                rx,
                hold: None,
                deadline: None,
            },
        )
    }

    /// This stop, which also fires `hold` after [`Stop::begin`].
    pub fn held(&self, hold: Option<Duration>) -> Stop {
        Stop {
            hold,
            deadline: None,
            ..self.clone()
        }
    }

    /// The attack begins now: the hold limit counts from here (setting up the connection,
    /// which may wait for a SYN retry when the listen queue overflowed, does not count).
    pub fn begin(&mut self) {
        self.deadline = self.hold.map(|hold| tokio::time::Instant::now() + hold);
    }

    /// Returns once the attack is to stop.
    pub async fn stopped(&mut self) {
        match self.deadline {
            Some(deadline) => tokio::select! {
                _ = self.rx.wait_for(|stop| *stop) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            },
            None => {
                let _ = self.rx.wait_for(|stop| *stop).await;
            }
        }
    }

    pub fn is_stopped(&self) -> bool {
        *self.rx.borrow()
            || self
                .deadline
                .is_some_and(|d| tokio::time::Instant::now() >= d)
    }
}

/// An upgraded connection, spoken to by hand.
pub struct Conn {
    pub stream: TcpStream,
    inbuf: Vec<u8>,
}

impl Conn {
    /// Upgrades over `stream`; a refusal or a hang-up is the cut it stands for.
    pub async fn upgrade(mut stream: TcpStream, addr: SocketAddr) -> Result<Conn, Cut> {
        stream
            .write_all(&upgrade_request(addr))
            .await
            .map_err(|e| io_cut(&e))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) => return Err(Cut::Eof),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(io_cut(&e)),
            }
            if buf.len() > 64 * 1024 {
                return Err(Cut::Failed);
            }
        };
        match status_of(&buf[..end]) {
            Some(101) => Ok(Conn {
                stream,
                inbuf: buf[end..].to_vec(),
            }),
            Some(status) => Err(Cut::Http(status)),
            None => Err(Cut::Failed),
        }
    }

    /// Sends SETTINGS with `entries` and reads the server's SETTINGS.
    pub async fn settings(&mut self, entries: &[(u16, u32)]) -> Result<(), Cut> {
        self.write(&ws::binary(&mux::settings(entries))).await?;
        loop {
            let frame = self.next_frame().await?.ok_or(Cut::Eof)?;
            match frame.opcode {
                ws::BINARY => {
                    let frames = mux::parse(&frame.payload);
                    return match frames.first() {
                        Some((mux::SETTINGS, _, _)) => Ok(()),
                        _ => Err(Cut::Failed),
                    };
                }
                ws::CLOSE => return Err(self.closed(&frame).await),
                _ => {}
            }
        }
    }

    /// Writes raw bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), Cut> {
        self.stream.write_all(bytes).await.map_err(|e| io_cut(&e))
    }

    /// The next WebSocket frame (`None` at EOF). Cancel-safe: what was read stays buffered.
    pub async fn next_frame(&mut self) -> Result<Option<ws::Frame>, Cut> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(frame) = ws::take(&mut self.inbuf) {
                return Ok(Some(frame));
            }
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Ok(None),
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(io_cut(&e)),
            }
        }
    }

    /// After the server's Close: answers it (as every client does) and returns the cut.
    pub async fn closed(&mut self, close: &ws::Frame) -> Cut {
        let _ = self
            .stream
            .write_all(&ws::frame(true, ws::CLOSE, &close.payload))
            .await;
        close.close_code().map_or(Cut::Eof, Cut::Close)
    }

    /// Reads until the server cuts the connection, answering its keepalive PINGs, or until
    /// `stop` fires (then [`Cut::Held`]). `started` is when the attack began.
    pub async fn hold(&mut self, started: Instant, stop: &mut Stop) -> Ended {
        loop {
            let frame = tokio::select! {
                frame = self.next_frame() => frame,
                _ = stop.stopped() => return Ended::at(Cut::Held, started),
            };
            match frame {
                Err(cut) => return Ended::at(cut, started),
                Ok(None) => return Ended::at(Cut::Eof, started),
                Ok(Some(frame)) if frame.opcode == ws::CLOSE => {
                    let ended = Ended::at(self.closed(&frame).await, started);
                    self.drain().await;
                    return ended;
                }
                Ok(Some(frame)) if frame.opcode == ws::BINARY => {
                    let pongs: Vec<u8> = mux::parse(&frame.payload)
                        .into_iter()
                        .filter(|(ty, _, _)| *ty == mux::PING)
                        .flat_map(|(_, _, payload)| {
                            ws::binary(&mux::frame(mux::PONG, 0, 0, payload))
                        })
                        .collect();
                    if !pongs.is_empty() {
                        let _ = self.stream.write_all(&pongs).await;
                    }
                }
                Ok(Some(_)) => {}
            }
        }
    }

    /// Writes `first`, then `rest` up to `times` times, while reading what comes back (after
    /// `read_pause`, to keep the receive window shut meanwhile), until the server's Close
    /// arrives; then answers it and reads to the end. A flood the server never cuts ends
    /// when `stop` fires. `started` is when the attack began.
    pub async fn flood(
        &mut self,
        first: &[u8],
        rest: &[u8],
        times: usize,
        read_pause: Duration,
        started: Instant,
        stop: &mut Stop,
    ) -> Ended {
        let (closed_tx, mut closed_rx) = tokio::sync::watch::channel(false);
        let (mut reader, mut writer) = self.stream.split();
        let inbuf = &mut self.inbuf;
        let write = async {
            if writer.write_all(first).await.is_err() {
                return;
            }
            for _ in 0..times {
                tokio::select! {
                    written = writer.write_all(rest) => if written.is_err() { return },
                    _ = closed_rx.wait_for(|c| *c) => return,
                }
            }
        };
        // The server's Close (and when), EOF, or a reset.
        let read = async {
            tokio::time::sleep(read_pause).await;
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                while let Some(frame) = ws::take(inbuf) {
                    if frame.opcode == ws::CLOSE {
                        let _ = closed_tx.send(true);
                        let cut = frame.close_code().map_or(Cut::Eof, Cut::Close);
                        return Ended::at(cut, started);
                    }
                }
                match reader.read(&mut chunk).await {
                    Ok(0) => return Ended::at(Cut::Eof, started),
                    Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
                    Err(e) => return Ended::at(io_cut(&e), started),
                }
            }
        };
        let ended = tokio::select! {
            (_, ended) = async { tokio::join!(write, read) } => ended,
            _ = stop.stopped() => return Ended::at(Cut::Held, started),
        };
        if matches!(ended.cut, Cut::Close(_)) {
            let _ = self.stream.write_all(&ws::close(1000)).await;
        }
        self.drain().await;
        ended
    }

    /// Reads and discards until the server hangs up (at most 2 s: its lingering close
    /// ends when the peer answers its Close).
    pub async fn drain(&mut self) {
        let mut chunk = vec![0u8; 64 * 1024];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(n) = self.stream.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}
