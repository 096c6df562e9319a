#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Threat catalogue row 32 (configuration plumbing), server side: every knob of
//! `ServerConfig`, set off its default, takes effect at exactly its value on the real server
//! over loopback; and the protocol configuration it carries is what the server advertises
//! in its SETTINGS frame (the effective-config snapshot) and enforces.
//!
//! The protocol knobs themselves are tripped one by one in mux-proto/tests/effective_config.rs;
//! `read_buffer_size` is a buffer size with no trip point, so its plumbing into tungstenite's
//! configuration is a unit test in src/server/mod.rs.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::hostile::{wire, Hostile, Options};
use common::{wait_idle, wait_until, within};
use mux_proto::Grant;
use mux_tokio::{
    AllowAll, AuthError, AuthorizeFuture, Authorizer, HandshakeRequest, OpenInfo, OriginPolicy,
    Principal, Server, ServerConfig, ServerHandle, Session,
};
use tokio::io::AsyncReadExt;

/// The principal is the bearer token, else the peer's IP.
fn by_token(request: &HandshakeRequest) -> Result<Principal, AuthError> {
    Ok(match &request.token {
        Some(t) => Principal::new(t.expose()),
        None => Principal::new(request.peer.ip().to_string()),
    })
}

/// Grants at once, except kind `hang`, which is never decided.
struct Hangs;

impl Authorizer for Hangs {
    fn authorize(&self, _: Principal, open: OpenInfo) -> AuthorizeFuture {
        let hang = open.kind == "hang";
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            Ok(Grant::full())
        })
    }
}

/// A server whose application hands every session to `app`.
async fn serve(
    config: ServerConfig,
    app: impl Fn(Session) + Send + 'static,
) -> (std::net::SocketAddr, ServerHandle) {
    let mut server = Server::bind(common::loopback(), config, by_token, Hangs)
        .await
        .expect("bind");
    let (addr, handle) = (server.local_addr(), server.handle());
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            app(session);
        }
    });
    (addr, handle)
}

fn echo(session: Session) {
    tokio::spawn(common::echo(session));
}

fn open() -> ServerConfig {
    common::open_config()
}

/// `protocol`: the SETTINGS the server sends carry the configured limits (not the defaults),
/// and they are enforced over the wire.
#[tokio::test]
async fn protocol_limits_are_advertised_and_enforced() {
    let mut protocol = mux_proto::Config::default();
    protocol.limits.max_frame_size = 2000;
    protocol.limits.max_sessions = 7;
    protocol.limits.initial_credit_messages = 5;
    protocol.limits.initial_credit_bytes = 3000;
    protocol.limits.max_message_size = 2500;
    protocol.limits.control_budget = 37;
    protocol.limits.max_open_metadata = 100;
    protocol.timeouts.keepalive_interval = Some(Duration::from_millis(7000));
    protocol.timeouts.keepalive_timeout = Duration::from_millis(3000);
    let (addr, handle) = serve(open().protocol(protocol), echo).await;
    let mut h = Hostile::connect(addr, &[]).await;
    let mut settings = h.server_settings.clone();
    settings.sort_unstable();
    assert_eq!(
        settings,
        vec![
            (wire::MAX_FRAME_SIZE, 2000),
            (wire::MAX_SESSIONS, 7),
            (wire::INITIAL_CREDIT_MESSAGES, 5),
            (wire::INITIAL_CREDIT_BYTES, 3000),
            (wire::MAX_MESSAGE_SIZE, 2500),
            (wire::CONTROL_BUDGET, 37),
            (wire::MAX_OPEN_METADATA, 100),
            (wire::IDLE_TIMEOUT_MS, 10_000),
        ]
    );
    h.send(&[
        wire::open(1, b"echo", b""),
        wire::data(1, wire::END, &[0; 2000]),
    ])
    .await;
    h.expect("the echo", |f| (f.is_data() && f.sid == 1).then_some(()))
        .await;
    h.send(&[wire::data(1, wire::END, &[0; 2001])]).await;
    assert_eq!(h.until_closed().await.codes(), (Some(1009), Some(1009)));
    wait_idle(&handle).await;
}

/// `origins`: exactly the configured origin (scheme, host, port) is admitted.
#[tokio::test]
async fn origins() {
    let config = ServerConfig::default().origins(OriginPolicy::allow(["https://app.test:8443"]));
    let (addr, handle) = serve(config, echo).await;
    let status = |origin: &'static str| async move {
        match Hostile::upgrade(addr, &Options::default().header("Origin", origin)).await {
            Ok(_) => 101,
            Err((status, _)) => status,
        }
    };
    assert_eq!(status("https://app.test:8443").await, 101);
    assert_eq!(status("https://app.test").await, 403);
    assert_eq!(status("http://app.test:8443").await, 403);
    wait_idle(&handle).await;
}

/// `max_connections`, `max_connections_per_ip`, `max_connections_per_principal`: each cap
/// (6, 2, 3 here) admits exactly its value.
#[tokio::test]
async fn connection_caps() {
    let (addr, handle) = serve(open().connection_limits(6, 2, 3), echo).await;
    let from = |ip: u8, token: &str| {
        let options = Options::default()
            .source_ip(ip)
            .header("Authorization", &format!("Bearer {token}"));
        async move { Hostile::upgrade(addr, &options).await.map_err(|e| e.0) }
    };
    // Per IP: two from 127.0.0.2, the third refused.
    let a = from(2, "p1").await.unwrap();
    let b = from(2, "p2").await.unwrap();
    assert_eq!(from(2, "p3").await.err(), Some(429));
    // Per principal: three for p4 (from three addresses), the fourth refused.
    let c = from(3, "p4").await.unwrap();
    let d = from(4, "p4").await.unwrap();
    let e = from(5, "p4").await.unwrap();
    assert_eq!(from(6, "p4").await.err(), Some(429));
    // Global: six live, the seventh shed.
    let f = from(7, "p5").await.unwrap();
    assert_eq!(handle.stats().connections, 6);
    assert_eq!(from(8, "p6").await.err(), Some(503));
    drop((a, b, c, d, e, f));
    wait_idle(&handle).await;
}

/// `handshake_timeout`: a socket that never completes its upgrade is dropped at 300 ms
/// (not the 5 s default).
#[tokio::test]
async fn handshake_timeout() {
    let config = open().handshake_timeout(Duration::from_millis(300));
    let (addr, handle) = serve(config, echo).await;
    let mut tcp = common::hostile::tcp(addr, &Options::default())
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let _ = within("the drop", tcp.read(&mut buf)).await;
    let took = started.elapsed();
    // Not before the configured 300 ms; that it was the configured value and not the
    // 5 s default shows in `within`'s bound, shorter than the default.
    assert!(took >= Duration::from_millis(290), "{took:?}");
    wait_idle(&handle).await;
}

/// `authorize_timeout`: a hook that never answers is cut at 250 ms (not 4 s), refusing the
/// session with 4006, well before the protocol's own 5 s deadline.
#[tokio::test]
async fn authorize_timeout() {
    let config = open().authorize_timeout(Duration::from_millis(250));
    let (addr, handle) = serve(config, echo).await;
    let mut h = Hostile::connect(addr, &[]).await;
    let started = Instant::now();
    h.send(&[wire::open(1, b"hang", b"")]).await;
    let code = h
        .expect("the refusal", |f| (f.ty == wire::RESET).then(|| f.code()))
        .await;
    let took = started.elapsed();
    assert_eq!(code, Some(4006));
    // The hook's own 250 ms, not the protocol's 5 s (which would be RESET after `within`'s
    // bound); its exact instant is checked on the paused clock (tests/paused_clock.rs).
    assert!(took >= Duration::from_millis(240), "{took:?}");
    drop(h);
    wait_idle(&handle).await;
}

/// `write_timeout`: a client that stops reading while the server streams to it is dropped
/// 400 ms (not 10 s) after the server's writes stop going through.
#[tokio::test]
async fn write_timeout() {
    let config = open().write_timeout(Duration::from_millis(400));
    let stream = |mut session: Session| {
        tokio::spawn(async move {
            while session
                .send(Bytes::from(vec![1u8; 16 * 1024]))
                .await
                .is_ok()
            {}
        });
    };
    let (addr, handle) = serve(config, stream).await;
    let options = Options::default().small_recv_buffer();
    let generous = [
        (wire::INITIAL_CREDIT_MESSAGES, u32::MAX),
        (wire::INITIAL_CREDIT_BYTES, u32::MAX),
        (wire::MAX_MESSAGE_SIZE, 16 * 1024),
    ];
    let mut h = Hostile::connect_with(addr, &options, &generous).await;
    h.send(&[wire::open(1, b"stream", b"")]).await;
    let stopped = Instant::now();
    wait_until("the server drops the connection", || {
        handle.stats().connections == 0
    })
    .await;
    let took = stopped.elapsed();
    // Not before the configured 400 ms; its exact instant is checked on the paused clock
    // (tests/paused_clock.rs), and `wait_until`'s bound is shorter than the 10 s default.
    assert!(took >= Duration::from_millis(400), "{took:?}");
}

/// `accept_queue`: with an application that never calls `accept`, exactly 2 sessions are
/// queued (ACCEPT); the third waits for a place until the authorization deadline and is
/// refused with 4003.
#[tokio::test]
async fn accept_queue() {
    let mut config = open().authorize_timeout(Duration::from_millis(300));
    config.accept_queue = 2;
    let server = Server::bind(common::loopback(), config, AllowAll, AllowAll)
        .await
        .expect("bind");
    let addr = server.local_addr();
    let mut h = Hostile::connect(addr, &[]).await;
    h.send(&[
        wire::open(1, b"x", b""),
        wire::open(3, b"x", b""),
        wire::open(5, b"x", b""),
    ])
    .await;
    let mut answers = Vec::new();
    while answers.len() < 3 {
        for f in h.next_frames().await.expect("answers") {
            match f.ty {
                wire::ACCEPT => answers.push((f.sid, None)),
                wire::RESET => answers.push((f.sid, f.code())),
                _ => {}
            }
        }
    }
    answers.sort_unstable();
    assert_eq!(answers, vec![(1, None), (3, None), (5, Some(4003))]);
    drop(server);
}

/// A session the application does not read keeps every message in the protocol, holding
/// its credit; each read takes exactly one (spec/sessions.md#credit).
#[tokio::test]
async fn unread_messages_stay_in_the_protocol_until_read() {
    let config = open();
    let (held_tx, mut held) = tokio::sync::mpsc::channel(1);
    let hold = move |session: Session| {
        let held_tx = held_tx.clone();
        tokio::spawn(async move {
            let _ = held_tx.send(session).await;
        });
    };
    let (addr, handle) = serve(config, hold).await;
    let mut h = Hostile::connect(addr, &[]).await;
    let messages: Vec<Vec<u8>> = (0..10u8).map(|i| wire::message(1, &[i])).collect();
    h.send(&[wire::open(1, b"x", b"")]).await;
    h.send(&messages).await;
    let session = within("the session", held.recv()).await.unwrap();
    let stats = within("stats", async {
        loop {
            let stats = session.stats().await.expect("stats");
            if stats.messages_received == 10 {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(stats.recv_queued_messages, 10);
    let mut session = session;
    for i in 0..3u8 {
        assert_eq!(session.recv().await.as_deref(), Some(&[i][..]));
    }
    let stats = session.stats().await.expect("stats");
    assert_eq!(stats.recv_queued_messages, 10 - 3);
    drop((session, h));
    wait_idle(&handle).await;
}

/// `max_unauthenticated`: with 2 places, a third unfinished handshake evicts the oldest
/// (which the server closes) and not the second.
#[tokio::test]
async fn max_unauthenticated() {
    let mut config = open();
    config.max_unauthenticated = 2;
    let (addr, handle) = serve(config, echo).await;
    let mut first = common::hostile::tcp(addr, &Options::default())
        .await
        .unwrap();
    let _second = common::hostile::tcp(addr, &Options::default())
        .await
        .unwrap();
    wait_until("two handshakes wait", || {
        handle.stats().unauthenticated == 2
    })
    .await;
    let _third = common::hostile::tcp(addr, &Options::default())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        within("the eviction", first.read(&mut buf)).await.unwrap(),
        0
    );
    let stats = handle.stats();
    assert_eq!((stats.handshakes_evicted, stats.unauthenticated), (1, 2));
}

/// `max_request_head`: at 1 KiB, a head of 1 KiB without its end is refused with 431
/// (the default reads 8 KiB).
#[tokio::test]
async fn max_request_head() {
    let mut config = open();
    config.max_request_head = 1024;
    let (addr, _handle) = serve(config, echo).await;
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ".to_vec();
    head.resize(1024, b'a');
    let mut tcp = common::hostile::tcp(addr, &Options::default())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &head)
        .await
        .unwrap();
    let mut answer = Vec::new();
    within("the refusal", tcp.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 431 "), "{answer:?}");
}
