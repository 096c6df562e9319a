//! The attack classes: what one attacking connection does, the cut the server's defaults
//! are expected to answer it with, and the volumes `mux-load attack` runs by default.
//! tests/attack_suite.rs runs the same classes against an in-process server and asserts
//! the expected cuts, so the benchmark and the test cannot drift apart.
//!
//! Adding an attack: write a `fn(Arc<Target>, Stop) -> Attack` below and a row in
//! [`CLASSES`] (and a test in tests/attack_suite.rs; a test there fails until it has one).

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::raw::{self, mux, ws, Conn, Cut, Ended, Stop};

/// One attacking connection, from connect to cut.
pub type Attack = Pin<Box<dyn Future<Output = Ended> + Send>>;

/// The server under attack, and the source addresses the attackers come from.
pub struct Target {
    pub addr: SocketAddr,
    next_source: AtomicU32,
    /// Connections being set up at once: a burst of thousands would overflow the listen
    /// backlog, and the SYN retries would stagger them by a second.
    connecting: Semaphore,
}

impl Target {
    pub fn new(addr: SocketAddr) -> Arc<Target> {
        Arc::new(Target {
            addr,
            next_source: AtomicU32::new(0),
            connecting: Semaphore::new(64),
        })
    }

    /// A loopback address no earlier attacking connection came from (127.10.1.1, then
    /// onwards; all of 127/8 reaches the server), so per-IP caps see distinct peers.
    pub fn source(&self) -> Ipv4Addr {
        let n = self.next_source.fetch_add(1, Ordering::Relaxed);
        let (hi, lo) = (n / (254 * 254), n % (254 * 254));
        Ipv4Addr::new(
            127,
            10u32.saturating_add(hi).min(254) as u8,
            (lo / 254 + 1) as u8,
            (lo % 254 + 1) as u8,
        )
    }

    /// A TCP connection from a fresh source address.
    pub async fn tcp(&self, recv_buffer: Option<u32>) -> Result<TcpStream, Cut> {
        let _permit = self.connecting.acquire().await.map_err(|_| Cut::Failed)?;
        raw::tcp(self.addr, self.source(), recv_buffer)
            .await
            .map_err(|_| Cut::Failed)
    }

    /// An upgraded connection with SETTINGS exchanged (`settings` sent).
    pub async fn connect(
        &self,
        recv_buffer: Option<u32>,
        settings: &[(u16, u32)],
    ) -> Result<Conn, Cut> {
        let _permit = self.connecting.acquire().await.map_err(|_| Cut::Failed)?;
        let tcp = raw::tcp(self.addr, self.source(), recv_buffer)
            .await
            .map_err(|_| Cut::Failed)?;
        let mut conn = Conn::upgrade(tcp, self.addr).await?;
        conn.settings(settings).await?;
        Ok(conn)
    }
}

/// What the server is expected to do with each attacking connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A WebSocket Close (after CONN_CLOSE) with this code.
    Close(u16),
    /// The TCP connection dropped, without a Close (EOF or reset).
    TcpCut,
    /// The handshake refused with this HTTP status.
    Http(u16),
    /// Nothing: the attack stays within every limit the defaults set.
    NotCut,
}

impl Expect {
    pub fn admits(self, cut: Cut) -> bool {
        match self {
            Expect::Close(code) => cut == Cut::Close(code),
            Expect::TcpCut => matches!(cut, Cut::Eof | Cut::Reset),
            Expect::Http(status) => cut == Cut::Http(status),
            Expect::NotCut => cut == Cut::Held,
        }
    }
}

/// One attack class.
pub struct Class {
    pub name: &'static str,
    /// Rows of the threat catalogue it belongs to.
    pub rows: &'static str,
    /// What each attacking connection does.
    pub what: &'static str,
    pub expect: Expect,
    /// The expected cut in words (with the default that makes it).
    pub expected: &'static str,
    /// Attackers the benchmark runs at once by default (each one connection at a time).
    pub attackers: usize,
    /// Seconds the benchmark runs it by default: a repeating attack for this long; otherwise
    /// each connection is held at most this long from its own start (the attack ends
    /// sooner when every connection has been cut).
    pub seconds: f64,
    /// A cut attacker comes back on a fresh connection (the floods); otherwise each
    /// attacker is one connection, held until the server cuts it or the attack stops.
    pub repeat: bool,
    pub run: fn(Arc<Target>, Stop) -> Attack,
}

/// Every attack, in the order the benchmark runs them.
pub static CLASSES: &[Class] = &[
    Class {
        name: "ws-continuations",
        rows: "13",
        what: "a non-final binary frame, then empty continuation frames without end",
        expect: Expect::Close(1009),
        expected: "1009 after 64 frames",
        attackers: 4,
        seconds: 5.0,
        repeat: true,
        run: ws_continuations,
    },
    Class {
        name: "ws-partial-ping",
        rows: "13",
        what: "a message's first frame, then a WebSocket ping every 500 ms and never the rest",
        expect: Expect::Close(1008),
        expected: "1008 at the 10 s message deadline",
        attackers: 16,
        seconds: 12.0,
        repeat: false,
        run: ws_partial_ping,
    },
    Class {
        name: "slowloris",
        rows: "22",
        what: "an upgrade request head sent one byte every 500 ms, never finished",
        expect: Expect::TcpCut,
        expected: "TCP close at the 5 s handshake timeout",
        attackers: 1000,
        seconds: 7.0,
        repeat: false,
        run: slowloris,
    },
    Class {
        name: "slow-readers",
        rows: "7",
        what: "64 echo sessions asked for 4 x 16,000 B each, then never read (4 KiB SO_RCVBUF)",
        expect: Expect::TcpCut,
        expected: "TCP cut at the 10 s write timeout",
        attackers: 8,
        seconds: 13.0,
        repeat: false,
        run: slow_readers,
    },
    Class {
        name: "half-messages",
        rows: "13, 18",
        what: "100 sessions, each sent 65,535 B of a mux message that never ends",
        expect: Expect::NotCut,
        expected: "not cut: 6.4 MiB held per connection, within its 16 MiB receive cap",
        attackers: 16,
        seconds: 6.0,
        repeat: false,
        run: half_messages,
    },
    Class {
        name: "rapid-reset",
        rows: "9",
        what: "4,000 OPEN + RESET pairs, not reading for 200 ms (4 KiB SO_RCVBUF)",
        expect: Expect::Close(1008),
        expected: "1008 when the control budget runs out",
        attackers: 2,
        seconds: 5.0,
        repeat: true,
        run: rapid_reset,
    },
    Class {
        name: "ping-flood",
        rows: "2",
        what: "5,000 WebSocket pings and 5,000 mux PINGs, not reading for 200 ms",
        expect: Expect::Close(1008),
        expected: "1008 when the control budget runs out",
        attackers: 2,
        seconds: 5.0,
        repeat: true,
        run: ping_flood,
    },
    Class {
        name: "forced-errors",
        rows: "4, 10",
        what: "2,000 sessions each made to fail by a credit overflow, not reading for 200 ms",
        expect: Expect::Close(1008),
        expected: "1008 when the control budget runs out",
        attackers: 2,
        seconds: 5.0,
        repeat: true,
        run: forced_errors,
    },
    Class {
        name: "handshake-parse",
        rows: "21",
        what: "an upgrade request head that fills the 8 KiB bound without ending",
        expect: Expect::Http(431),
        expected: "431 at the 8 KiB head bound",
        attackers: 4,
        seconds: 4.0,
        repeat: true,
        run: handshake_parse,
    },
    Class {
        name: "conn-flood",
        rows: "24",
        what: "idle upgraded connections, one per source address",
        expect: Expect::NotCut,
        expected: "not cut: under the 10,000-connection cap",
        attackers: 2000,
        seconds: 6.0,
        repeat: false,
        run: conn_flood,
    },
];

/// The class called `name` (for tests/attack_suite.rs).
#[allow(dead_code)]
pub fn find(name: &str) -> Option<&'static Class> {
    CLASSES.iter().find(|c| c.name == name)
}

/// Runs `attackers` attackers of `class` until each is done (cut, for a class that does
/// not `repeat` or when `repeat` is false) or `stop` fires; returns how every attacking
/// connection ended. With `hold`, a class that does not repeat also stops each connection
/// that long after its attack began.
pub async fn run(
    class: &'static Class,
    target: Arc<Target>,
    attackers: usize,
    repeat: bool,
    hold: Option<Duration>,
    stop: Stop,
) -> Vec<Ended> {
    let mut set = JoinSet::new();
    let hold = hold.filter(|_| !class.repeat);
    for _ in 0..attackers {
        let (target, mut stop) = (target.clone(), stop.held(hold));
        set.spawn(async move {
            let mut ended = Vec::new();
            loop {
                let began = Instant::now();
                ended.push((class.run)(target.clone(), stop.clone()).await);
                if !(repeat && class.repeat) || stop.is_stopped() {
                    return ended;
                }
                // A remote attacker spends its own CPU; this one shares the machine with
                // the server, so it rests as long as it worked (a 50% duty cycle, as in
                // the hostile tests) and its client-side work is not taken for the
                // server's.
                let rest = began.elapsed().min(Duration::from_secs(1));
                tokio::select! {
                    _ = tokio::time::sleep(rest) => {}
                    _ = stop.stopped() => return ended,
                }
            }
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(ended) => all.extend(ended),
            Err(_) => all.push(Ended {
                cut: Cut::Failed,
                after: Duration::ZERO,
            }),
        }
    }
    all
}

/// A setup that failed before the attack began.
fn refused(cut: Cut) -> Ended {
    Ended {
        cut,
        after: Duration::ZERO,
    }
}

/// Opens `n` sessions `1, 3, 5, …` of `kind`, in batches of 10 each answered before the
/// next (the pending-open cap is 16); a refused OPEN fails the setup.
pub async fn open_sessions(conn: &mut Conn, kind: &[u8], n: u32) -> Result<Vec<u32>, Cut> {
    let mut opened = Vec::with_capacity(n as usize);
    while (opened.len() as u32) < n {
        let from = opened.len() as u32;
        let batch: Vec<u32> = (from..(from + 10).min(n)).map(|i| 2 * i + 1).collect();
        let opens: Vec<u8> = batch.iter().flat_map(|&sid| mux::open(sid, kind)).collect();
        conn.write(&ws::binary(&opens)).await?;
        let mut answered = 0;
        while answered < batch.len() {
            let frame = conn.next_frame().await?.ok_or(Cut::Eof)?;
            match frame.opcode {
                ws::BINARY => {
                    for (ty, _, _) in mux::parse(&frame.payload) {
                        match ty {
                            mux::ACCEPT => answered += 1,
                            mux::RESET | mux::CONN_CLOSE => return Err(Cut::Failed),
                            _ => {}
                        }
                    }
                }
                ws::CLOSE => return Err(frame.close_code().map_or(Cut::Eof, Cut::Close)),
                _ => {}
            }
        }
        opened.extend(batch);
    }
    Ok(opened)
}

// ---- the attacks ------------------------------------------------------------------------

/// Row 13, WebSocket half: a message of empty continuation frames never grows, so only the
/// frame cap (`ServerConfig::max_message_frames`) ends it.
fn ws_continuations(t: Arc<Target>, mut stop: Stop) -> Attack {
    Box::pin(async move {
        let mut c = match t.connect(None, &[]).await {
            Ok(c) => c,
            Err(cut) => return refused(cut),
        };
        let started = Instant::now();
        stop.begin();
        let first = ws::frame(false, ws::BINARY, b"");
        let rest = ws::frame(false, ws::CONTINUATION, b"").repeat(256);
        c.flood(&first, &rest, 1024, Duration::ZERO, started, &mut stop)
            .await
    })
}

/// Row 13, the deadline: pings keep the connection busy (fewer than 64 frames in 10 s, so
/// the frame cap is not what trips), the message never completes.
fn ws_partial_ping(t: Arc<Target>, mut stop: Stop) -> Attack {
    Box::pin(async move {
        let mut c = match t.connect(None, &[]).await {
            Ok(c) => c,
            Err(cut) => return refused(cut),
        };
        let started = Instant::now();
        stop.begin();
        if let Err(cut) = c.write(&ws::frame(false, ws::BINARY, b"x")).await {
            return Ended::at(cut, started);
        }
        let mut pace = tokio::time::interval(Duration::from_millis(500));
        pace.tick().await;
        let mut writing = true;
        loop {
            tokio::select! {
                _ = pace.tick(), if writing => {
                    // Once the server has hung up, what it sent is still to be read.
                    writing = c.write(&ws::ping(b"alive")).await.is_ok();
                }
                frame = c.next_frame() => match frame {
                    Err(cut) => return Ended::at(cut, started),
                    Ok(None) => return Ended::at(Cut::Eof, started),
                    Ok(Some(f)) if f.opcode == ws::CLOSE => {
                        let ended = Ended::at(c.closed(&f).await, started);
                        c.drain().await;
                        return ended;
                    }
                    Ok(Some(_)) => {}
                },
                _ = stop.stopped() => return Ended::at(Cut::Held, started),
            }
        }
    })
}

/// Row 22: a request head trickled a byte at a time holds a pre-authentication slot until
/// the handshake deadline (tungstenite's 128 B/read check needs 64 reads first).
fn slowloris(t: Arc<Target>, mut stop: Stop) -> Attack {
    Box::pin(async move {
        let mut tcp = match t.tcp(None).await {
            Ok(tcp) => tcp,
            Err(cut) => return refused(cut),
        };
        let started = Instant::now();
        stop.begin();
        let head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nX-Slow: ";
        let mut next = 0usize;
        let mut pace = tokio::time::interval(Duration::from_millis(500));
        let mut buf = [0u8; 512];
        let mut writing = true;
        loop {
            tokio::select! {
                _ = pace.tick(), if writing => {
                    let byte = head.get(next).copied().unwrap_or(b'a');
                    next += 1;
                    writing = tcp.write_all(&[byte]).await.is_ok();
                }
                read = tcp.read(&mut buf) => {
                    let cut = match read {
                        Ok(0) => Cut::Eof,
                        Ok(n) => raw::status_of(&buf[..n]).map_or(Cut::Failed, Cut::Http),
                        Err(_) => Cut::Reset,
                    };
                    return Ended::at(cut, started);
                }
                _ = stop.stopped() => return Ended::at(Cut::Held, started),
            }
        }
    })
}

/// Sessions per slow reader, and what each asks to have echoed (within the initial credit
/// of 64 messages and 64 KiB): 4 MiB per connection, the send buffer's cap.
const SLOW_SESSIONS: u32 = 64;
const SLOW_MESSAGES: usize = 4;
const SLOW_SIZE: usize = 16_000;

/// Row 7: the client grants all the credit there is, asks for echoes and never reads; the
/// server's writes stall and the write deadline ends the connection. Writing a ping every
/// 100 ms finds out when: the server's reset fails the write.
fn slow_readers(t: Arc<Target>, mut stop: Stop) -> Attack {
    Box::pin(async move {
        let settings = [
            (mux::INITIAL_CREDIT_MESSAGES, u32::MAX),
            (mux::INITIAL_CREDIT_BYTES, u32::MAX),
            (mux::MAX_MESSAGE_SIZE, 64 * 1024),
        ];
        let mut c = match t.connect(Some(4096), &settings).await {
            Ok(c) => c,
            Err(cut) => return refused(cut),
        };
        let sids = match open_sessions(&mut c, b"echo", SLOW_SESSIONS).await {
            Ok(sids) => sids,
            Err(cut) => return refused(cut),
        };
        let started = Instant::now();
        stop.begin();
        let payload = vec![0x5a; SLOW_SIZE];
        let mut requests = Vec::with_capacity(sids.len() * SLOW_MESSAGES * (SLOW_SIZE + 24));
        for _ in 0..SLOW_MESSAGES {
            for &sid in &sids {
                requests.extend(ws::binary(&mux::data(sid, mux::END, &payload)));
            }
        }
        let written = tokio::select! {
            written = c.write(&requests) => written,
            _ = stop.stopped() => return Ended::at(Cut::Held, started),
        };
        if let Err(cut) = written {
            return Ended::at(cut, started);
        }
        let probe = ws::ping(b"?");
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = pace.tick() => {
                    if let Err(cut) = c.write(&probe).await {
                        return Ended::at(cut, started);
                    }
                }
                _ = stop.stopped() => return Ended::at(Cut::Held, started),
            }
        }
    })
}

/// Sessions per connection (the default MAX_SESSIONS) and the part of a message each is
/// sent: one byte short of the session's 64 KiB of credit and of the message maximum.
const HALF_SESSIONS: u32 = 100;
const HALF_SIZE: usize = 65_535;

/// Rows 13 and 18, mux half: every session holds a message that never ends, so the server
/// holds its bytes; the connection otherwise behaves (answers keepalive PINGs).
fn half_messages(t: Arc<Target>, mut stop: Stop) -> Attack {
    Box::pin(async move {
        let mut c = match t.connect(None, &[]).await {
            Ok(c) => c,
            Err(cut) => return refused(cut),
        };
        let sids = match open_sessions(&mut c, b"echo", HALF_SESSIONS).await {
            Ok(sids) => sids,
            Err(cut) => return refused(cut),
        };
        let started = Instant::now();
        stop.begin();
        let payload = vec![0x5a; HALF_SIZE];
        for sid in sids {
            if let Err(cut) = c.write(&ws::binary(&mux::data(sid, 0, &payload))).await {
                return Ended::at(cut, started);
            }
        }
        c.hold(started, &mut stop).await
    })
}

/// Row 9: OPEN then RESET on fresh IDs, pipelined, while the receive window is shut.
fn rapid_reset(t: Arc<Target>, mut stop: Stop) -> Attack {
    Box::pin(async move {
        let mut c = match t.connect(Some(4096), &[]).await {
            Ok(c) => c,
            Err(cut) => return refused(cut),
        };
        let started = Instant::now();
        stop.begin();
        let mut flood = Vec::new();
        for i in 0..4000u32 {
            let sid = 2 * i + 1;
            flood.extend(ws::binary(
                &[mux::open(sid, b"echo"), mux::reset(sid, 4010)].concat(),
            ));
        }
        let pause = Duration::from_millis(200);
        c.flood(&flood, &[], 0, pause, started, &mut stop).await
    })
}

/// Row 2: pings that each ask for a pong, at line rate, while the receive window is shut.
fn ping_flood(t: Arc<Target>, mut stop: Stop) -> Attack {
    Box::pin(async move {
        let mut c = match t.connect(Some(4096), &[]).await {
            Ok(c) => c,
            Err(cut) => return refused(cut),
        };
        let started = Instant::now();
        stop.begin();
        let mut flood = Vec::new();
        for i in 0..5000u64 {
            flood.extend(ws::ping(&i.to_be_bytes()));
            flood.extend(ws::binary(&mux::ping(i)));
        }
        let pause = Duration::from_millis(200);
        c.flood(&flood, &[], 0, pause, started, &mut stop).await
    })
}

/// Rows 4 and 10: valid sessions the server is made to reset (a credit overflow), while
/// the receive window is shut.
fn forced_errors(t: Arc<Target>, mut stop: Stop) -> Attack {
    Box::pin(async move {
        let mut c = match t.connect(Some(4096), &[]).await {
            Ok(c) => c,
            Err(cut) => return refused(cut),
        };
        let started = Instant::now();
        stop.begin();
        let mut flood = Vec::new();
        for i in 0..2000u32 {
            let sid = 2 * i + 1;
            flood.extend(ws::binary(
                &[
                    mux::open(sid, b"echo"),
                    mux::credit(sid, u32::MAX, 0),
                    mux::credit(sid, u32::MAX, 0),
                ]
                .concat(),
            ));
        }
        let pause = Duration::from_millis(200);
        c.flood(&flood, &[], 0, pause, started, &mut stop).await
    })
}

/// Row 21: a head that reaches the server's bound (`max_request_head`, 8 KiB) without its
/// end: answered 431 at once.
fn handshake_parse(t: Arc<Target>, mut stop: Stop) -> Attack {
    Box::pin(async move {
        let mut tcp = match t.tcp(None).await {
            Ok(tcp) => tcp,
            Err(cut) => return refused(cut),
        };
        let started = Instant::now();
        stop.begin();
        let mut head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ".to_vec();
        head.resize(8 * 1024, b'a');
        let _ = tcp.write_all(&head).await;
        let mut buf = [0u8; 512];
        tokio::select! {
            read = tcp.read(&mut buf) => {
                let cut = match read {
                    Ok(0) => Cut::Eof,
                    Ok(n) => raw::status_of(&buf[..n]).map_or(Cut::Failed, Cut::Http),
                    Err(_) => Cut::Reset,
                };
                Ended::at(cut, started)
            }
            _ = stop.stopped() => Ended::at(Cut::Held, started),
        }
    })
}

/// Row 24: upgraded connections that do nothing but answer keepalive PINGs.
fn conn_flood(t: Arc<Target>, mut stop: Stop) -> Attack {
    Box::pin(async move {
        let mut c = match t.connect(None, &[]).await {
            Ok(c) => c,
            Err(cut) => return refused(cut),
        };
        let started = Instant::now();
        stop.begin();
        c.hold(started, &mut stop).await
    })
}
