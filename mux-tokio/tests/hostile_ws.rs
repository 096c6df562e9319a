#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Threat catalogue, NET layer, below the mux frames: the HTTP upgrade and RFC 6455 framing,
//! attacked by the raw client of `common::hostile` against the real server on loopback.
//!
//! Rows covered here (see SECURITY.md): 13 (WebSocket continuation flood), 14 (2^63 length,
//! exactly L / L+1), 21 (handshake parse DoS), 22 (slowloris), 24 (connection flood and load
//! shedding), 25 (cross-site WebSocket hijacking), 26 (token in the query string),
//! 28 (permessage-deflate), 29 (RFC 6455 violations, in place of the Autobahn suite),
//! 31 (I/O-contract faults). Catalogue figures are scaled down so each test takes well under
//! a second or two on 2 cores; each says by how much.

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::hostile::{self, wire, ws, Capture, Honest, Hostile, Options};
use common::{bind, echo_server, open_config, wait_idle, wait_until, within};
use mux_tokio::{
    AllowAll, AuthError, HandshakeRate, HandshakeRequest, OriginPolicy, Principal, ServerConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// L for the default MAX_FRAME_SIZE (64 KiB): max(65,536, 65,536 + 10), the largest
/// WebSocket message the server accepts.
const L: usize = 65_546;

/// The most of an unfinished handshake head the server reads before refusing it.
/// The request head the server reads at most by default (`ServerConfig::max_request_head`).
const HEAD_LIMIT: usize = 8 * 1024;

// ---- row 29: RFC 6455 violations (in place of Autobahn sections 1-7) --------------------

/// Each violation, and the close the server must answer with: CONN_CLOSE then the
/// WebSocket Close, both with the code RFC 6455 §7.4.1 gives the failure.
#[tokio::test]
async fn websocket_protocol_violations_close_with_the_rfc_6455_code() {
    let (_, handle, addr) = echo_server(open_config()).await;
    let ping = wire::ping(1);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // §5.1: a client MUST mask every frame.
        (
            "unmasked client frame",
            ws::frame_with(true, 0, ws::BINARY, None, None, &ping),
            1002,
        ),
        // §5.2: RSV bits without a negotiated extension (RSV1 is permessage-deflate's bit).
        (
            "RSV1 (compressed) bit",
            ws::frame_with(true, 4, ws::BINARY, Some(ws::MASK), None, &ping),
            1002,
        ),
        (
            "RSV2 bit",
            ws::frame_with(true, 2, ws::BINARY, Some(ws::MASK), None, &ping),
            1002,
        ),
        (
            "RSV3 bit",
            ws::frame_with(true, 1, ws::BINARY, Some(ws::MASK), None, &ping),
            1002,
        ),
        (
            "reserved data opcode 0x3",
            ws::frame_with(true, 0, 0x3, Some(ws::MASK), None, b"x"),
            1002,
        ),
        (
            "reserved control opcode 0xb",
            ws::frame_with(true, 0, 0xb, Some(ws::MASK), None, b"x"),
            1002,
        ),
        // §5.5: control frames are never fragmented and carry at most 125 bytes.
        (
            "fragmented ping",
            ws::frame_with(false, 0, ws::PING, Some(ws::MASK), None, b"x"),
            1002,
        ),
        ("ping of 126 bytes", ws::frame(ws::PING, &[0u8; 126]), 1002),
        // §5.4: a continuation with no message to continue.
        (
            "continuation without a start",
            ws::frame_with(true, 0, ws::CONTINUATION, Some(ws::MASK), None, b"x"),
            1002,
        ),
        // §5.4: a new data frame while a fragmented message is open.
        (
            "data frame inside a fragmented message",
            [
                ws::frame_with(false, 0, ws::BINARY, Some(ws::MASK), None, b"ab"),
                ws::frame(ws::BINARY, b"cd"),
            ]
            .concat(),
            1002,
        ),
        // §8.1: text must be UTF-8 (1007); valid text is refused by mux itself (1003).
        (
            "invalid UTF-8 text",
            ws::frame(ws::TEXT, &[0xce, 0xff]),
            1007,
        ),
        ("valid text", ws::frame(ws::TEXT, b"hello"), 1003),
    ];
    for (what, bytes, code) in cases {
        let mut h = Hostile::connect(addr, &[]).await;
        h.write_raw(&bytes).await.expect("write");
        let ending = h.until_closed().await;
        assert_eq!(ending.codes(), (Some(code), Some(code)), "{what}");
    }
    wait_idle(&handle).await;
}

/// §5.5.1 / §7.4: the server answers a Close; with a code that is not allowed on the wire
/// (or a malformed body) it answers 1002; with an invalid UTF-8 reason, 1007.
#[tokio::test]
async fn a_peer_close_is_answered_and_invalid_close_frames_get_1002() {
    let (_, handle, addr) = echo_server(open_config()).await;
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(&[0xc3, 0x28]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("close 1000", ws::close(1000), 1000),
        ("close 4001", ws::close(4001), 4001),
        ("close 999", ws::close(999), 1002),
        ("close 1005 (never on the wire)", ws::close(1005), 1002),
        ("close 1006 (never on the wire)", ws::close(1006), 1002),
        ("close 5000", ws::close(5000), 1002),
        ("close with a 1-byte body", ws::frame(ws::CLOSE, &[3]), 1002),
        (
            "close with an invalid UTF-8 reason",
            ws::frame(ws::CLOSE, &bad_reason),
            1007,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut h = Hostile::connect(addr, &[]).await;
        h.write_raw(&bytes).await.expect("write");
        let ending = h.until_closed().await;
        assert_eq!(ending.ws_close, Some(code), "{what}: {ending:?}");
    }
    wait_idle(&handle).await;
}

// ---- rows 13 and 14: oversized and endless WebSocket messages -------------------------

/// Row 13 (CONTINUATION flood, WebSocket half): a binary message that never ends, in
/// 1-byte continuation frames. The catalogue says "forever"; the message is refused with
/// 1009 at its 65th frame (`ServerConfig::max_message_frames`), long before it could pass
/// L. (The client writes a bounded flood, so the server's close is not lost to a TCP reset.)
#[tokio::test]
async fn an_endless_fragmented_message_is_closed_with_1009_at_l() {
    let (_, handle, addr) = echo_server(open_config()).await;
    let mut h = Hostile::connect(addr, &[]).await;
    let one = ws::frame_with(false, 0, ws::CONTINUATION, Some(ws::MASK), None, b"x");
    let mut flood = ws::frame_with(false, 0, ws::BINARY, Some(ws::MASK), None, b"x");
    flood.extend(one.repeat(L));
    h.write_raw(&flood).await.expect("write");
    let ending = h.until_closed().await;
    assert_eq!(ending.codes(), (Some(1009), Some(1009)));
    wait_idle(&handle).await;
}

/// Row 14: a WebSocket length of 2^63 is refused from the header (1009) without waiting for
/// or allocating the payload; a message of exactly L passes and L + 1 is refused.
#[tokio::test]
async fn oversized_websocket_messages_are_refused_from_the_header() {
    let (_, handle, addr) = echo_server(open_config()).await;
    let rss = hostile::rss_bytes();
    let mut h = Hostile::connect(addr, &[]).await;
    let started = Instant::now();
    h.write_raw(&ws::frame_with(
        true,
        0,
        ws::BINARY,
        Some(ws::MASK),
        Some(1 << 63),
        &[],
    ))
    .await
    .expect("write");
    let ending = h.until_closed().await;
    assert_eq!(ending.codes(), (Some(1009), Some(1009)));
    println!("a 2^63-byte header refused after {:?}", started.elapsed());
    // Nothing near 2^63 (or even L) was reserved for it.
    assert!(hostile::rss_bytes() < rss + 16 * 1024 * 1024);

    // Exactly L: one session's message of L - 40 bytes in four DATA frames (4 headers).
    let mut h = Hostile::connect(addr, &[]).await;
    h.send(&[wire::open(1, b"echo", b"")]).await;
    let payload = common::filler(14, L - 40);
    let chunk = (L - 40).div_ceil(4);
    let frames: Vec<Vec<u8>> = payload
        .chunks(chunk)
        .enumerate()
        .map(|(i, c)| wire::data(1, if i == 3 { wire::END } else { 0 }, c))
        .collect();
    assert_eq!(frames.concat().len(), L);
    h.send(&frames).await;
    let mut echoed = Vec::new();
    while echoed.len() < payload.len() {
        let frames = h.next_frames().await.expect("the echo");
        for f in frames.into_iter().filter(|f| f.is_data() && f.sid == 1) {
            echoed.extend_from_slice(&f.payload);
        }
    }
    assert_eq!(echoed, payload.to_vec(), "a message of exactly L must pass");
    // L + 1: one byte more in the same shape, split across two WebSocket fragments so
    // that the server has read every byte when it refuses the message.
    let mut frames = frames;
    frames[0] = wire::data(1, 0, &payload[..=chunk]);
    let message = frames.concat();
    assert_eq!(message.len(), L + 1);
    let (a, b) = message.split_at(L / 2);
    let mut bytes = ws::frame_with(false, 0, ws::BINARY, Some(ws::MASK), None, a);
    bytes.extend(ws::frame_with(
        true,
        0,
        ws::CONTINUATION,
        Some(ws::MASK),
        None,
        b,
    ));
    h.write_raw(&bytes).await.expect("write");
    let ending = h.until_closed().await;
    assert_eq!(ending.codes(), (Some(1009), Some(1009)));
    wait_idle(&handle).await;
}

/// A message of empty continuation frames never grows, so no size limit ends it: the frame
/// cap does, with 1009 at the 65th frame, while another connection keeps echoing.
#[tokio::test]
async fn a_message_of_endless_empty_continuation_frames_is_cut_at_the_frame_cap() {
    let (_, handle, addr) = echo_server(open_config()).await;
    let mut honest = Hostile::connect(addr, &[]).await;
    let mut h = Hostile::connect(addr, &[]).await;
    let empty = ws::frame_with(false, 0, ws::CONTINUATION, Some(ws::MASK), None, b"");
    let mut flood = ws::frame_with(false, 0, ws::BINARY, Some(ws::MASK), None, b"");
    flood.extend(empty.repeat(64));
    // 65 frames pass: the message's first frame and 64 continuations, one too many.
    h.write_raw(&flood).await.expect("write");
    let ending = h.until_closed().await;
    assert_eq!(ending.codes(), (Some(1009), Some(1009)));
    // Sixty-four frames in one message are still fine on the honest connection.
    honest.send(&[wire::open(1, b"echo", b"")]).await;
    let mut fragmented = ws::frame_with(false, 0, ws::BINARY, Some(ws::MASK), None, &[]);
    fragmented.extend(empty.repeat(62));
    let data = wire::data(1, wire::END, b"whole");
    fragmented.extend(ws::frame_with(
        true,
        0,
        ws::CONTINUATION,
        Some(ws::MASK),
        None,
        &data,
    ));
    honest.write_raw(&fragmented).await.expect("write");
    let mut echoed = Vec::new();
    while echoed.is_empty() {
        let frames = honest.next_frames().await.expect("the echo");
        echoed.extend(
            frames
                .into_iter()
                .filter(|f| f.is_data() && f.sid == 1)
                .map(|f| f.payload),
        );
    }
    assert_eq!(echoed[0].as_slice(), b"whole");
    drop(honest);
    wait_idle(&handle).await;
}

/// A fragmented message that never completes is cut at its deadline even while the peer
/// keeps the connection busy with pings: 1008, no sooner than the deadline.
#[tokio::test]
async fn a_partial_message_kept_alive_by_pings_is_cut_at_its_deadline() {
    let deadline = Duration::from_millis(300);
    let mut config = open_config();
    config.message_deadline = deadline;
    // The pings inside the message would trip the frame cap first; this is about time.
    config.max_message_frames = u32::MAX;
    let (_, handle, addr) = echo_server(config).await;
    let mut h = Hostile::connect(addr, &[]).await;
    let started = Instant::now();
    h.write_raw(&ws::frame_with(
        false,
        0,
        ws::BINARY,
        Some(ws::MASK),
        None,
        b"x",
    ))
    .await
    .expect("write");
    let ping = ws::frame_with(true, 0, ws::PING, Some(ws::MASK), None, b"alive");
    // The attack's pace: a ping every 50 ms keeps the connection busy but stays far inside
    // the control budget, so only the message deadline can end it.
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let mut writing = true;
    let code = within("the partial message to be cut", async {
        loop {
            if writing {
                pace.tick().await;
                // Once the server has closed, writes fail; what it sent is still to be read.
                writing = h.write_raw(&ping).await.is_ok();
            }
            match h.next_ws_within(Duration::from_millis(10)).await {
                // Pongs come back while the message is pending.
                Some(Some(frame)) if frame.opcode == ws::CLOSE => break frame.close_code(),
                Some(Some(_)) | None => {}
                Some(None) => break None,
            }
        }
    })
    .await;
    assert_eq!(code, Some(1008));
    assert!(
        started.elapsed() >= deadline,
        "cut after {:?}",
        started.elapsed()
    );
    wait_idle(&handle).await;
}

// ---- row 21: handshake parse DoS -------------------------------------------------------

/// Sends `bytes` as an upgrade request's head (never finished), then waits for the server
/// to hang up; returns how long it took from the first byte.
async fn rejected_after(addr: SocketAddr, bytes: &[u8], chunk: usize, delay: Duration) -> Duration {
    let mut tcp = hostile::tcp(addr, &Options::default())
        .await
        .expect("connect");
    let started = Instant::now();
    hostile::trickle(&mut tcp, bytes, chunk, delay).await;
    hostile::drain_to_eof(&mut tcp).await;
    started.elapsed()
}

/// This process's CPU time (all threads, user + system), from /proc/self/stat. Its unit
/// is the clock tick (10 ms here), so callers average over many repetitions.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name may contain spaces; the fields after it are space-separated.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Row 21: a header of 20 MB (scaled: 1 MiB) and 2,000 headers are refused long before
/// the handshake deadline with 431, after at most `max_request_head` (8 KiB) has been read,
/// and the slot is freed. A head dribbled a byte at a time meets the handshake deadline
/// (`handshake_timeout_counts_the_whole_upgrade` and the slowloris tests).
#[tokio::test]
async fn handshake_parse_attacks_are_refused_within_the_head_bound() {
    // A deadline far past `drain_to_eof`'s 5 s bound, so every refusal that comes at all
    // is the parser's, not the clock's.
    let config = open_config().handshake_timeout(Duration::from_secs(60));
    let (_, handle, addr) = echo_server(config).await;
    let head = "GET / HTTP/1.1\r\nHost: x\r\nX-Big: ";

    // One byte short of the bound, an unfinished head is still waited for (the deadline
    // would end it)...
    let mut under = head.as_bytes().to_vec();
    under.resize(HEAD_LIMIT - 1, b'a');
    let mut tcp = hostile::tcp(addr, &Options::default())
        .await
        .expect("connect");
    tcp.write_all(&under).await.expect("write");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await;
    assert!(
        read.is_err(),
        "a head under the bound must not be refused yet: {read:?}"
    );
    // ...and the byte that fills the bound without ending the head is refused at once.
    tcp.write_all(b"a").await.expect("write");
    let mut answer = [0u8; 13];
    tcp.read_exact(&mut answer).await.expect("an answer");
    assert_eq!(&answer, b"HTTP/1.1 431 ");
    hostile::drain_to_eof(&mut tcp).await;
    // Each refusal costs well under the catalogue's 10 ms of CPU (averaged over 20, since
    // the clock ticks every 10 ms; the client's own writes are included).
    let mut over = under.clone();
    over.push(b'a');
    let cpu = cpu_time();
    for _ in 0..20 {
        rejected_after(addr, &over, over.len(), Duration::ZERO).await;
    }
    let spent = cpu_time().saturating_sub(cpu) / 20;
    // The catalogue's 10 ms is a speed goal, measured (printed) here, not asserted.
    println!("refusing an 8 KiB head cost {spent:?} of CPU");

    // 1 MiB (the catalogue's 20 MB, scaled) in one go.
    let mut big = head.as_bytes().to_vec();
    big.resize(1 << 20, b'a');
    // Each refusal below comes within `drain_to_eof`'s 5 s bound, far inside the 60 s
    // handshake deadline: it is the parser's, not the clock's. The times are printed.
    let took = rejected_after(addr, &big, 64 * 1024, Duration::ZERO).await;
    println!("a 1 MiB head refused after {took:?}");

    // 2,000 headers (the server reads at most 64).
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..2000 {
        let _ = write!(many, "X-H{i}: v\r\n");
    }
    many.push_str("\r\n");
    let took = rejected_after(addr, many.as_bytes(), many.len(), Duration::ZERO).await;
    println!("2,000 headers refused after {took:?}");

    wait_idle(&handle).await;
    let stats = handle.stats();
    assert_eq!(stats.handshake_failed, 23, "{stats:?}");
    assert_eq!(stats.upgraded, 0);
}

// ---- row 22: slowloris -------------------------------------------------------------------

/// Row 22: 5,000 trickling sockets plus 1,000 stalled ones (scaled: 150 + 100, from two
/// addresses, with a 1 s deadline). Every admitted one is dropped at the deadline ±1 s, the
/// per-IP cap holds exactly, an honest handshake from a third address completes in under
/// 100 ms throughout, honest sessions keep their latency, and everything is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_sockets_are_dropped_at_the_deadline_and_the_cap_holds() {
    let _serial = hostile::serial().await;
    const DEADLINE: Duration = Duration::from_secs(1);
    const PER_IP: usize = 64;
    let config = open_config()
        .handshake_timeout(DEADLINE)
        .connection_limits(10_000, PER_IP, 16);
    let (url, handle, addr) = echo_server(config).await;
    let mut honest = Honest::start(&url, 4, 2).await;
    let unloaded = honest.p99(50).await;
    let tasks = hostile::alive_tasks();

    // Attackers: 150 trickling one byte per 300 ms from 127.0.0.3, 100 silent from .4.
    // Each reports whether it was admitted (held until the server hung up) or refused (an
    // immediate 429), and for how long it held its socket.
    // The sockets connect one after the other (250 at once would overflow the listen
    // backlog, and SYN retries would stagger them by a second).
    let request = hostile::upgrade_request(addr, &Options::default());
    let mut attackers = Vec::new();
    for (ip, count, trickles) in [(3u8, 150usize, true), (4, 100, false)] {
        for _ in 0..count {
            let request = request.clone();
            let options = Options::default().source_ip(ip);
            let mut tcp = hostile::tcp(addr, &options).await.expect("connect");
            let started = Instant::now();
            attackers.push(tokio::spawn(async move {
                let mut buf = [0u8; 512];
                let mut next = request.iter();
                loop {
                    if trickles {
                        if let Some(byte) = next.next() {
                            let _ = tcp.write_all(std::slice::from_ref(byte)).await;
                        }
                    }
                    let pause = Duration::from_millis(300);
                    match tokio::time::timeout(pause, tcp.read(&mut buf)).await {
                        // Still held: keep trickling; the join below bounds the wait.
                        Err(_) => {}
                        Ok(Ok(n)) if n > 0 => {
                            assert!(buf.starts_with(b"HTTP/1.1 429"), "{:?}", &buf[..n]);
                            return (false, started.elapsed());
                        }
                        Ok(_) => return (true, started.elapsed()),
                    }
                }
            }));
        }
    }
    wait_until("every attacker is admitted or refused", || {
        let s = handle.stats();
        s.connections + s.refused_429 as usize == 250 + honest.connections()
    })
    .await;
    // While they hold their slots: an honest handshake from another address is quick, and
    // so are honest sessions.
    assert_eq!(
        handle.stats().connections,
        2 * PER_IP + honest.connections()
    );
    let started = Instant::now();
    let quick = Hostile::connect_with(addr, &Options::default().source_ip(2), &[]).await;
    let connect = started.elapsed();
    println!("honest handshake under slowloris: {connect:?}");
    // The catalogue asks for < 100 ms: a speed goal, printed above. What is asserted is
    // that the honest handshake got through at all while the slowloris held its sockets.
    drop(quick);
    let loaded = honest.p99(50).await;

    let mut admitted = 0;
    for attacker in attackers {
        let (was_admitted, held) = within("a slowloris socket to be dropped", attacker)
            .await
            .expect("attacker task");
        if was_admitted {
            admitted += 1;
            assert!(
                held >= DEADLINE - Duration::from_millis(50) && held <= DEADLINE * 2,
                "an admitted slowloris socket was dropped after {held:?}"
            );
        } else {
            assert!(held < DEADLINE, "a refusal took {held:?}");
        }
    }
    assert_eq!(admitted, 2 * PER_IP, "the per-IP cap must hold exactly");
    hostile::assert_latency("slowloris", &[(unloaded, loaded)]);
    hostile::assert_back_to_baseline(&handle, honest.connections(), (1, 1), tasks).await;
    let stats = handle.stats();
    assert_eq!(stats.refused_429, 250 - 2 * PER_IP as u64);
    assert_eq!(stats.handshake_failed, 2 * PER_IP as u64);
    honest.close().await;
    wait_idle(&handle).await;
}

// ---- row 24: connection flood and load shedding ----------------------------------------

/// Row 24: 50k connects from one IP and from 1k IPs (scaled: 100 from one address, one
/// from each of 50 others), with a per-IP cap of 16 and a global cap of 40. The caps are
/// exact (16 from the one address, then 503 once 40 are live), refusals are cheap, an idle
/// connection costs a bounded number of KiB, and honest sessions keep their latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_floods_meet_exact_caps_and_cheap_refusals() {
    let _serial = hostile::serial().await;
    const TOTAL: usize = 40;
    const PER_IP: usize = 16;
    let config = open_config().connection_limits(TOTAL, PER_IP, 100);
    let (url, handle, addr) = echo_server(config).await;
    let mut honest = Honest::start(&url, 2, 4).await;
    let unloaded = honest.p99(50).await;
    let tasks = hostile::alive_tasks();

    let mut kept = Vec::new();
    let mut refusal_times = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let attempts = (0..100).map(|_| 5u8).chain((0..50).map(|i| 100 + i as u8));
    for ip in attempts {
        let started = Instant::now();
        match Hostile::upgrade(addr, &Options::default().source_ip(ip)).await {
            Ok(h) => {
                *statuses.entry(101).or_default() += 1;
                kept.push(h);
            }
            Err((status, _)) => {
                refusal_times.push(started.elapsed());
                *statuses.entry(status).or_default() += 1;
            }
        }
    }
    let loaded = honest.p99(50).await;
    // 16 from 127.0.0.5, then the other addresses until 40 are live (2 honest + 38).
    let expected: std::collections::BTreeMap<u16, usize> = [
        (101, TOTAL - 2),
        (429, 100 - PER_IP),
        (503, 50 - (TOTAL - 2 - PER_IP)),
    ]
    .into();
    assert_eq!(statuses, expected);
    assert_eq!(handle.stats().connections, TOTAL);
    let mean = refusal_times.iter().sum::<Duration>() / refusal_times.len() as u32;
    println!("a refusal (connect to status line, client side) took {mean:?} on average");
    // The catalogue's 50 µs is a speed goal, printed above, not asserted.
    hostile::assert_latency("connection flood", &[(unloaded, loaded)]);
    drop(kept);
    hostile::assert_back_to_baseline(&handle, 2, (1, 1), tasks).await;
    honest.close().await;
    wait_idle(&handle).await;
}

/// Row 24, memory: an idle upgraded connection costs at most 64 KiB of server memory
/// (tungstenite's 8 KiB read buffer, the driver's state and its task), measured as the
/// RSS growth over 300 idle connections (this process's raw clients cost a socket each).
#[tokio::test]
async fn an_idle_connection_costs_a_bounded_amount_of_memory() {
    let _serial = hostile::serial().await;
    let config = open_config()
        .connection_limits(10_000, 1_000, 1_000)
        // 350 connections from one address and principal, as fast as they go.
        .handshake_rate(HandshakeRate::UNLIMITED)
        .quotas(mux_tokio::quota::QuotaPolicy::none());
    let (_, handle, addr) = echo_server(config).await;
    // Warm up allocator arenas and the runtime with a first batch, then measure a second.
    let mut warm = Vec::new();
    for _ in 0..50 {
        warm.push(Hostile::connect(addr, &[]).await);
    }
    let before = hostile::rss_bytes();
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(Hostile::connect(addr, &[]).await);
    }
    let per = (hostile::rss_bytes().saturating_sub(before)) / 300;
    println!("an idle connection costs {} KiB of RSS", per / 1024);
    assert!(per <= 64 * 1024, "{} KiB per idle connection", per / 1024);
    drop((warm, idle));
    wait_idle(&handle).await;
}

// ---- row 25: cross-site WebSocket hijacking ---------------------------------------------

/// Row 25: the Origin matrix, checked before authentication: only the exact tuples get
/// 101, everything else 403 without the authenticator ever running, and a request that
/// carries only a cookie is refused by an authenticator that reads tokens only.
#[tokio::test]
async fn only_exact_origins_upgrade_and_refusals_come_before_authentication() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let authenticate = move |request: &HandshakeRequest| {
        counted.fetch_add(1, Ordering::SeqCst);
        match request.token.as_ref().map(|t| t.expose()) {
            Some("good-token") => Ok(Principal::new("alice")),
            _ => Err(AuthError::Invalid),
        }
    };
    let origins = OriginPolicy::allow(["https://example.com", "http://localhost:3000"]);
    let (mut server, _) = bind(
        ServerConfig::default().origins(origins),
        authenticate,
        AllowAll,
    )
    .await;
    let addr = server.local_addr();
    let handle = server.handle();
    tokio::spawn(async move { while server.accept().await.is_some() {} });

    let upgrade = |origin: Option<&'static str>, auth: &'static str| async move {
        let mut options = Options::default().header("Cookie", "session=alice-session");
        if let Some(origin) = origin {
            options = options.header("Origin", origin);
        }
        if !auth.is_empty() {
            options = options.header("Authorization", auth);
        }
        match Hostile::upgrade(addr, &options).await {
            Ok(_) => 101,
            Err((status, _)) => status,
        }
    };
    for origin in [
        None,
        Some("null"),
        Some("https://evil.com"),
        Some("https://example.com.evil.com"),
        Some("https://evil-example.com"),
        Some("http://example.com"),
        Some("https://example.com:8443"),
        Some("http://localhost:3001"),
        Some("https://example.com/"),
        Some("https://example.com@evil.com"),
    ] {
        assert_eq!(
            upgrade(origin, "Bearer good-token").await,
            403,
            "{origin:?}"
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "authentication ran for a refused origin"
    );
    // The exact tuples (host case is not part of an origin's identity, RFC 6454).
    for origin in [
        "https://example.com",
        "https://EXAMPLE.com:443",
        "http://localhost:3000",
    ] {
        assert_eq!(
            upgrade(Some(origin), "Bearer good-token").await,
            101,
            "{origin}"
        );
    }
    // Same origin with only the ambient cookie: never authenticated.
    assert_eq!(upgrade(Some("https://example.com"), "").await, 401);
    wait_idle(&handle).await;
    assert_eq!(handle.stats().refused_403, 10);
}

// ---- row 26: tokens in the query string -------------------------------------------------

/// Row 26: a token in `?token=` (successful and failed authentication, then protocol errors
/// and closes on the connection) never shows up in any log event or span field the library
/// emits at any level, nor in the `Debug` of the request the authenticator sees.
/// (Single-use tickets and their TTL are the application's authenticator's business: see
/// SECURITY.md.)
#[tokio::test]
async fn a_token_in_the_query_string_never_reaches_logs() {
    const CANARY: &str = "CANARY-5d1e77b0";
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let debugs = seen.clone();
    let authenticate = move |request: &HandshakeRequest| {
        debugs.lock().unwrap().push(format!("{request:?}"));
        if request.path.contains("good") {
            Ok(Principal::new("alice"))
        } else {
            Err(AuthError::Invalid)
        }
    };
    let (mut server, _) = bind(open_config(), authenticate, AllowAll).await;
    let addr = server.local_addr();
    let handle = server.handle();
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            tokio::spawn(common::echo(session));
        }
    });
    // Refused, then admitted, then a session, a session error and a connection error.
    let refused =
        Hostile::upgrade(addr, &Options::default().path(&format!("/?token={CANARY}"))).await;
    assert_eq!(refused.err().map(|e| e.0), Some(401));
    let options = Options::default().path(&format!("/?ticket=good&token={CANARY}"));
    let mut h = Hostile::connect_with(addr, &options, &[]).await;
    h.send(&[
        wire::open(1, b"echo", CANARY.as_bytes()),
        wire::message(1, b"hi"),
    ])
    .await;
    h.expect("the echo", |f| (f.is_data() && f.sid == 1).then_some(()))
        .await;
    h.send(&[
        wire::data(1, wire::END, &[0u8; 70_000][..16_000]),
        wire::data(7, 0, b""),
    ])
    .await;
    let ending = h.until_closed().await;
    assert!(ending.conn_close.is_some());
    wait_idle(&handle).await;

    let logged = capture.text();
    assert!(logged.contains("event"), "nothing was captured: {logged}");
    assert!(
        !logged.contains(CANARY),
        "the token leaked into the logs:\n{logged}"
    );
    for debug in seen.lock().unwrap().iter() {
        assert!(
            !debug.contains(CANARY),
            "the token leaked through Debug: {debug}"
        );
    }
}

// ---- row 31: I/O-contract faults ---------------------------------------------------------

/// What the mock socket does at its fault point.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Reads return `Ok(0)` (EOF) from this offset on.
    Eof(usize),
    /// Reads fail with ECONNRESET from this offset on.
    ReadError(usize),
    /// Reads return `Pending` forever from this offset, and never wake the task.
    Stall(usize),
    /// The n-th write returns `Ok(0)`.
    WriteZero(usize),
    /// The n-th write fails.
    WriteError(usize),
}

/// An in-memory socket that plays `input` to the server and injects one fault. It counts
/// how often it is polled, to catch busy loops.
struct Mock {
    input: Vec<u8>,
    at: usize,
    writes: usize,
    fault: Fault,
    polls: Arc<AtomicUsize>,
}

impl tokio::io::AsyncRead for Mock {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        self.polls.fetch_add(1, Ordering::Relaxed);
        let stop = match self.fault {
            Fault::Eof(n) | Fault::ReadError(n) | Fault::Stall(n) => n.min(self.input.len()),
            _ => self.input.len(),
        };
        if self.at < stop {
            // Byte by byte, so every offset is a read boundary.
            let byte = self.input[self.at];
            buf.put_slice(&[byte]);
            self.at += 1;
            return Poll::Ready(Ok(()));
        }
        match self.fault {
            Fault::ReadError(_) => Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into())),
            Fault::Stall(_) => Poll::Pending,
            // EOF, and for the write faults: end of the script.
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl tokio::io::AsyncWrite for Mock {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.writes += 1;
        match self.fault {
            Fault::WriteZero(n) if self.writes == n => Poll::Ready(Ok(0)),
            Fault::WriteError(n) if self.writes == n => {
                Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
            }
            _ => Poll::Ready(Ok(buf.len())),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The client's side of a short conversation, as WebSocket frames: SETTINGS, an OPEN with
/// early data, two more messages, a PING.
fn script() -> Vec<u8> {
    [
        ws::binary(&wire::settings(&[])),
        ws::binary(&[wire::open(1, b"echo", b""), wire::message(1, b"early")].concat()),
        ws::binary(&wire::message(1, b"second")),
        ws::binary(&[wire::message(1, b"third"), wire::ping(9)].concat()),
    ]
    .concat()
}

/// Runs the server side over a mock with `fault`; returns the outcome's close code (None
/// for a transport that vanished) and the polls the mock saw.
async fn serve_mock(fault: Fault) -> (Option<u16>, usize) {
    use tokio_tungstenite::tungstenite::protocol::Role;
    let polls = Arc::new(AtomicUsize::new(0));
    let mock = Mock {
        input: script(),
        at: 0,
        writes: 0,
        fault,
        polls: polls.clone(),
    };
    let socket =
        tokio_tungstenite::WebSocketStream::from_raw_socket(mock, Role::Server, None).await;
    let mut protocol = mux_proto::Config::default();
    // A stalled socket is found by the keepalive; keep it short.
    protocol.timeouts.keepalive_interval = Some(Duration::from_millis(100));
    protocol.timeouts.keepalive_timeout = Duration::from_millis(100);
    protocol.timeouts.settings_timeout = Duration::from_millis(200);
    let (accepted, mut sessions) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(session) = sessions.recv().await {
            tokio::spawn(common::echo(session));
        }
    });
    let (_, join) = mux_tokio::serve_transport(
        mux_tokio::TungsteniteTransport::new(socket),
        protocol,
        Principal::new("mock"),
        AllowAll,
        accepted,
    );
    let outcome = within("the connection task to end", join)
        .await
        .unwrap_or_else(|e| panic!("{fault:?}: the connection task panicked: {e}"));
    (outcome.code.map(|c| c.get()), polls.load(Ordering::Relaxed))
}

/// Row 31: EOF, read errors, `Ok(0)` writes and write errors injected at every byte offset
/// (reads) and every write never panic and always end the connection; a socket that
/// stalls (endless `Pending`, never woken) is not spun on: it is polled a handful of times,
/// then the keepalive deadline ends it.
#[tokio::test]
async fn io_faults_at_every_offset_end_the_connection_without_panics_or_spinning() {
    let len = script().len();
    for at in 0..=len {
        for fault in [Fault::Eof(at), Fault::ReadError(at)] {
            serve_mock(fault).await;
        }
    }
    for n in 1..=8 {
        for fault in [Fault::WriteZero(n), Fault::WriteError(n)] {
            serve_mock(fault).await;
        }
    }
    for at in [0, 7, len / 2, len] {
        let started = Instant::now();
        let (code, polls) = serve_mock(Fault::Stall(at)).await;
        println!(
            "stall at {at}: closed with {code:?} after {:?}, {polls} polls",
            started.elapsed()
        );
        assert_eq!(code, Some(4006), "stall at {at}");
        // One read per input byte, the writes, and a few wake-ups from the timers.
        assert!(polls <= len * 2 + 64, "stall at {at}: {polls} polls");
    }
}
