#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! The server under pressure that no per-connection limit catches: a slowloris spread over
//! many source addresses, handshake bursts from one address, a slow authenticator, and the
//! sum of many connections' memory against the server-wide budget.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::hostile::{self, wire, Hostile, Options};
use common::{loopback, open_config, wait_until, within};
use mux_tokio::{
    authenticate_async, AllowAll, AuthError, Client, ClientConfig, HandshakeRate, HandshakeRequest,
    Principal, Server, ServerConfig, ServerHandle, Session,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TCP connection from `127.a.b.c` (every 127/8 address reaches the server).
async fn tcp_from(addr: SocketAddr, ip: Ipv4Addr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    socket.connect(addr).await
}

/// The status of the server's answer to a full upgrade request from `options`.
async fn status_of(addr: SocketAddr, options: &Options) -> u16 {
    match Hostile::upgrade(addr, options).await {
        Ok(_) => 101,
        Err((status, _)) => status,
    }
}

/// The target of the issue: 10,000 half-sent handshakes from 250 addresses, while honest
/// clients connect from others (each its own, as users are; one address connecting in a
/// loop would meet its handshake rate). The unauthenticated places (1,024) are recycled oldest
/// first, so none of the 20 honest clients is refused, and no attacker is refused either:
/// they are evicted, so the global cap never fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_half_open_handshakes_do_not_keep_honest_clients_out() {
    let _serial = hostile::serial().await;
    let config = open_config().handshake_timeout(Duration::from_secs(60));
    let (_url, handle, addr) = common::echo_server(config).await;
    let attack = tokio::spawn(async move {
        let mut sockets = Vec::with_capacity(10_000);
        for i in 0..10_000u32 {
            let ip = Ipv4Addr::new(127, 1, (i % 250) as u8, 1);
            let mut tcp = tcp_from(addr, ip).await.expect("connect");
            // A head that never ends.
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .expect("write");
            sockets.push(tcp);
        }
        sockets
    });
    let mut honest = 0u32;
    while !attack.is_finished() || honest < 20 {
        let options = Options {
            local_ip: Some(IpAddr::V4(Ipv4Addr::new(
                127,
                2,
                (honest / 250 % 250) as u8,
                (honest % 250) as u8 + 1,
            ))),
            ..Options::default()
        };
        assert_eq!(
            status_of(addr, &options).await,
            101,
            "honest client {honest}"
        );
        honest += 1;
    }
    let sockets = attack.await.expect("the attack");
    // Every attacking socket is either in a place or was evicted from one.
    wait_until("the server has taken every attacking socket", || {
        let s = handle.stats();
        s.handshakes_evicted + s.unauthenticated as u64 >= 10_000
    })
    .await;
    let stats = handle.stats();
    println!("after {honest} honest upgrades: {stats:?}");
    assert_eq!((stats.refused_429, stats.refused_503), (0, 0), "{stats:?}");
    assert!(stats.unauthenticated <= 1024, "{stats:?}");
    assert!(stats.handshakes_evicted >= 10_000 - 1024, "{stats:?}");
    drop(sockets);
    wait_until("every handshake place is free", || {
        handle.stats().unauthenticated == 0
    })
    .await;
}

/// Past its burst, a source address gets 429 with `Retry-After` before anything is read;
/// other addresses are not affected. The paused clock keeps the bucket from refilling.
#[tokio::test(start_paused = true)]
async fn handshakes_past_the_per_ip_rate_get_429_and_others_do_not() {
    let config = open_config()
        .handshake_timeout(Duration::from_secs(3600))
        .handshake_rate(HandshakeRate {
            per_second: 1,
            burst: 3,
        });
    let (_url, handle, addr) = common::echo_server(config).await;
    let a = Ipv4Addr::new(127, 0, 0, 2);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tcp_from(addr, a).await.expect("connect"));
    }
    let mut fourth = tcp_from(addr, a).await.expect("connect");
    let mut answer = Vec::new();
    fourth.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    assert!(answer.contains("Retry-After: 1\r\n"), "{answer}");
    assert_eq!(status_of(addr, &Options::default().source_ip(3)).await, 101);
    assert_eq!(handle.stats().refused_429, 1);
}

/// An async authenticator (a lookup that takes time) admits at the end of its await; one
/// that is still deciding at the handshake deadline gets 503 with `Retry-After`, counted.
#[tokio::test(start_paused = true)]
async fn async_authentication_runs_under_the_handshake_deadline() {
    let authenticate = authenticate_async(|request: HandshakeRequest| async move {
        let slow = request.path.contains("slow");
        tokio::time::sleep(if slow {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(500)
        })
        .await;
        match request.headers.get("cookie").map(|v| v.as_bytes()) {
            Some(b"session=good") => Ok(Principal::new("alice")),
            _ => Err(AuthError::Invalid),
        }
    });
    let config = open_config().handshake_timeout(Duration::from_secs(2));
    let (_server, url) = common::bind(config, authenticate, AllowAll).await;
    let addr: SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .expect("addr");
    let good = Options::default().header("Cookie", "session=good");
    assert_eq!(status_of(addr, &good).await, 101);
    let bad = Options::default().header("Cookie", "session=bad");
    assert_eq!(status_of(addr, &bad).await, 401);
    let started = tokio::time::Instant::now();
    let slow = Options::default()
        .path("/slow")
        .header("Cookie", "session=good");
    let status = match Hostile::upgrade(addr, &slow).await {
        Ok(_) => 101,
        Err((status, head)) => {
            assert!(head.contains("Retry-After: 1\r\n"), "{head}");
            status
        }
    };
    assert_eq!(status, 503);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

/// A server whose application streams into sessions of peers that do not read.
struct Firehose {
    handle: ServerHandle,
    addr: SocketAddr,
    producers: Arc<AtomicUsize>,
}

/// Sessions of kind `firehose` get 16 KiB messages as fast as credit allows; every other
/// session is echoed.
async fn firehose(config: ServerConfig) -> Firehose {
    let mut server = Server::bind(loopback(), config, AllowAll, AllowAll)
        .await
        .expect("bind");
    let handle = server.handle();
    let addr = server.local_addr();
    let producers = Arc::new(AtomicUsize::new(0));
    let live = producers.clone();
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            if session.kind() == "firehose" {
                let mut session = session;
                let live = live.clone();
                tokio::spawn(async move {
                    live.fetch_add(1, Ordering::SeqCst);
                    let message = Bytes::from(vec![7u8; 16 * 1024]);
                    while session.send(message.clone()).await.is_ok() {}
                    live.fetch_sub(1, Ordering::SeqCst);
                });
            } else {
                tokio::spawn(common::echo(session));
            }
        }
    });
    Firehose {
        handle,
        addr,
        producers,
    }
}

/// Settings that give the server all the credit it could want towards this client.
fn generous() -> Vec<(u16, u32)> {
    vec![
        (wire::INITIAL_CREDIT_MESSAGES, u32::MAX),
        (wire::INITIAL_CREDIT_BYTES, u32::MAX),
        (wire::MAX_MESSAGE_SIZE, 16 * 1024),
    ]
}

/// A client that opens `sessions` firehose sessions and then never reads.
async fn hog(addr: SocketAddr, sessions: u32) -> Hostile {
    let mut h =
        Hostile::connect_with(addr, &Options::default().small_recv_buffer(), &generous()).await;
    let opens: Vec<Vec<u8>> = (0..sessions)
        .map(|i| wire::open(2 * i + 1, b"firehose", b""))
        .collect();
    h.send(&opens).await;
    h
}

async fn echo_once(session: &mut Session) {
    session
        .send(Bytes::from_static(b"ping"))
        .await
        .expect("send");
    let back = within("the echo", session.recv()).await;
    assert_eq!(back.as_deref(), Some(&b"ping"[..]));
}

/// A peer that does not read while the application streams to it holds the server's
/// send buffer; past the budget it is the one closed (1013, or dropped at once since its
/// socket takes nothing), its memory comes back, and an honest client on another
/// connection keeps working throughout. The budget's peak stays within a frame batch of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_budget_the_costliest_connection_is_shed_and_the_rest_keep_working() {
    let _serial = hostile::serial().await;
    let budget = 3 * 1024 * 1024;
    let net = firehose(open_config().memory_budget(budget)).await;
    let mut client = Client::connect(&format!("ws://{}/", net.addr), ClientConfig::default())
        .await
        .expect("connect");
    let mut honest = client.open("echo", Bytes::new()).await.expect("open");
    echo_once(&mut honest).await;
    let idle = net.handle.stats().memory.held;
    let h = hog(net.addr, 8).await;
    wait_until("the budget sheds a connection", || {
        net.handle.stats().memory.shed >= 1
    })
    .await;
    wait_until("the hog's producers learn it", || {
        net.producers.load(Ordering::SeqCst) == 0
    })
    .await;
    wait_until("the hog's memory is back", || {
        net.handle.stats().memory.held <= idle + 64 * 1024
    })
    .await;
    let stats = net.handle.stats();
    println!("idle {idle} B held, after the hog {stats:?}");
    assert_eq!(stats.memory.shed, 1, "{stats:?}");
    assert!(stats.memory.peak <= budget + 2 * 1024 * 1024, "{stats:?}");
    assert_eq!(stats.connections, 1);
    echo_once(&mut honest).await;
    drop(h);
}

/// Near the budget (90 %) new handshakes are refused with 503 and `Retry-After` before
/// anything is read, while the connections already there keep working; once the pressure
/// is gone the next handshake succeeds. The send buffer cap keeps the hog just under the
/// shedding point, so nothing is shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_budget_new_handshakes_get_503_until_it_eases() {
    let _serial = hostile::serial().await;
    let mut protocol = mux_proto::Config::default();
    protocol.limits.max_send_buffer = 1024 * 1024;
    // The hog's send buffer and its transmit and read buffers: about 93 % of this.
    let budget = 1024 * 1024 + 96 * 1024;
    let net = firehose(open_config().protocol(protocol).memory_budget(budget)).await;
    let mut client = Client::connect(&format!("ws://{}/", net.addr), ClientConfig::default())
        .await
        .expect("connect");
    let mut honest = client.open("echo", Bytes::new()).await.expect("open");
    let h = hog(net.addr, 4).await;
    wait_until("the hog fills the send buffer", || {
        net.handle.stats().memory.held * 10 >= budget * 9
    })
    .await;
    let refused = Hostile::upgrade(net.addr, &Options::default()).await;
    let Err((503, head)) = refused else {
        panic!("expected 503, got {:?}", refused.map(|_| 101));
    };
    assert!(head.contains("Retry-After: 1\r\n"), "{head}");
    // Readiness says the same to the load balancer.
    assert!(!net.handle.is_ready());
    echo_once(&mut honest).await;
    assert_eq!(net.handle.stats().memory.shed, 0);
    drop(h);
    wait_until("the hog's producers end", || {
        net.producers.load(Ordering::SeqCst) == 0
    })
    .await;
    wait_until("the pressure eases", || {
        net.handle.stats().memory.held * 10 < budget * 9
    })
    .await;
    assert_eq!(status_of(net.addr, &Options::default()).await, 101);
    assert!(net.handle.is_ready());
}

/// Peers that send messages in part and never finish them (the receive side) are paused
/// once the server nears its budget: the held total stays under the budget and nobody is
/// shed for it; a connection paused for the write deadline is closed (a paused reader
/// cannot see its peer leave), so it all comes back after they leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_messages_pause_their_senders_near_the_budget() {
    let _serial = hostile::serial().await;
    let budget = 2 * 1024 * 1024;
    let config = open_config()
        .memory_budget(budget)
        .write_timeout(Duration::from_secs(1));
    let (_url, handle, addr) = common::echo_server(config).await;
    let idle = handle.stats().memory.held;
    let mut hogs = Vec::new();
    for _ in 0..6 {
        let mut h = Hostile::connect(addr, &[]).await;
        let opens: Vec<Vec<u8>> = (0..12)
            .map(|i| wire::open(2 * i + 1, b"echo", b""))
            .collect();
        h.send(&opens).await;
        hogs.push(h);
    }
    // Each session: 60 KiB of a message that never ends (no END flag), inside its credit.
    let chunk = vec![1u8; 15 * 1024];
    for h in &mut hogs {
        for sid in (0..12u32).map(|i| 2 * i + 1) {
            for _ in 0..4 {
                // A write the server no longer reads is fine: it fills the socket.
                let _ = tokio::time::timeout(
                    Duration::from_millis(200),
                    h.send(&[wire::data(sid, 0, &chunk)]),
                )
                .await;
            }
        }
    }
    wait_until("some sender is paused", || {
        handle.stats().memory.read_pauses >= 1
    })
    .await;
    let stats = handle.stats();
    println!("idle {idle} B, under the half-sent messages {stats:?}");
    assert!(stats.memory.peak <= budget, "{stats:?}");
    assert_eq!(stats.memory.shed, 0, "{stats:?}");
    drop(hogs);
    wait_until("the memory is back", || {
        let s = handle.stats();
        s.connections == 0 && s.memory.held == 0
    })
    .await;
}
