#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! A self-contained tour: a server and clients on loopback, default limits, four stories.
//!
//! Run with `cargo run --release -p mux-tokio --example demo`. It ends by itself, or earlier on
//! SIGTERM or Ctrl-C, with a graceful shutdown (GOAWAY, draining, close 1001) either way.

use std::time::{Duration, Instant};

use bytes::Bytes;
use mux_tokio::topic::{decode, LocalHub, SubscribeOptions, TopicEvent, TopicOptions};
use mux_tokio::{
    AuthError, Client, ClientConfig, CloseCode, Grant, HandshakeRequest, OpenError, OpenInfo,
    OriginPolicy, Principal, RateLimits, RatePolicy, Rejection, Server, ServerConfig, ServerHandle,
    Session,
};

/// Tokens map to principals; a real server would verify a signed token here.
fn authenticate(request: &HandshakeRequest) -> Result<Principal, AuthError> {
    match request.token.as_ref().map(|t| t.expose()) {
        Some("alice-token") => Ok(Principal::new("alice")),
        Some("bob-token") => Ok(Principal::new("bob")),
        _ => Err(AuthError::Invalid),
    }
}

/// Per-session decisions: anyone may chat; only admins open "admin"; "flood" is rate limited.
async fn authorize(principal: Principal, open: OpenInfo) -> Result<Grant, Rejection> {
    match open.kind.as_str() {
        "admin" if principal.id != "root" => Err(Rejection::forbidden("admins only")),
        // Topics: anyone may watch the lobby, receive-only.
        "lobby" => Ok(Grant::receive_only()),
        "flood" => {
            let rate = RateLimits {
                messages_per_sec: 500,
                bytes_per_sec: 0,
                burst_messages: 50,
                burst_bytes: 0,
            };
            Ok(Grant::full().with_rate(rate, RatePolicy::Throttle))
        }
        _ => Ok(Grant::full()),
    }
}

async fn serve(mut session: Session, hub: LocalHub) {
    match session.kind() {
        // Topic sessions: attached to the hub for as long as the session lives.
        "lobby" => {
            let _subscription = hub
                .attach(&session, SubscribeOptions::default())
                .expect("attach");
            while session.recv().await.is_some() {}
        }
        // The server produces as fast as credit lets it; the client reads slowly.
        "slow" => {
            let mut sent = 0u64;
            while session.send(Bytes::from(vec![7u8; 1024])).await.is_ok() {
                sent += 1;
                if sent == 5_000 {
                    break;
                }
            }
        }
        // Everything else echoes.
        _ => {
            while let Some(message) = session.recv().await {
                if session.send(message).await.is_err() {
                    break;
                }
            }
        }
    }
}

async fn echo_rtt(session: &mut Session, payload: &[u8]) -> Duration {
    let start = Instant::now();
    session
        .send(Bytes::copy_from_slice(payload))
        .await
        .expect("send");
    let back = session.recv().await.expect("echo");
    assert_eq!(
        &back[..],
        payload,
        "echo came back on the wrong session or corrupted"
    );
    start.elapsed()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index.min(samples.len() - 1)]
}

/// The next topic event but the position each subscription starts with.
async fn next_topic_event(session: &mut Session) -> TopicEvent {
    loop {
        let message = session.recv().await.expect("topic event");
        match decode(&message).expect("well-formed topic event") {
            TopicEvent::Position(_) => continue,
            event => return event,
        }
    }
}

#[tokio::main]
async fn main() {
    tokio::time::timeout(Duration::from_secs(30), run())
        .await
        .expect("the demo should finish within 30 s");
}

async fn run() {
    let config = ServerConfig::default()
        .origins(OriginPolicy::allow(["https://app.example.com"]).allow_missing(true));
    let mut server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        config,
        authenticate,
        authorize,
    )
    .await
    .expect("bind");
    let url = format!("ws://{}/", server.local_addr());
    let handle = server.handle();
    let hub = LocalHub::new();
    hub.configure_topic("lobby", TopicOptions::with_presence(16));
    let server_hub = hub.clone();
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            tokio::spawn(serve(session, server_hub.clone()));
        }
    });
    println!("mux demo: server on {url}\n");

    // The stories run until they end, or until the process is asked to stop (SIGTERM or
    // Ctrl-C): either way the server shuts down gracefully.
    tokio::select! {
        () = stories(url, handle.clone(), hub) => {}
        signal = mux_tokio::shutdown_signal() => {
            println!("\n{}: shutting down", signal.expect("signal handlers"));
        }
    }
    handle.shutdown(Duration::from_secs(2)).await;
    println!("\nshutdown complete: GOAWAY, sessions drained, connections closed with 1001");
}

/// The four stories, over the server at `url`.
async fn stories(url: String, handle: ServerHandle, hub: LocalHub) {
    // 1. Many sessions over one WebSocket per client.
    let mut alice = Client::connect(&url, ClientConfig::default().token("alice-token"))
        .await
        .expect("alice connects");
    let mut bob = Client::connect(&url, ClientConfig::default().token("bob-token"))
        .await
        .expect("bob connects");
    let mut sessions = Vec::new();
    for (name, client) in [("alice", &mut alice), ("bob", &mut bob)] {
        for room in ["general", "random", "help"] {
            let session = client
                .open(&format!("chat/{room}"), Bytes::new())
                .await
                .expect("open chat");
            sessions.push((format!("{name}:{room}"), session));
        }
    }
    let mut echoes = 0;
    for round in 0..50 {
        for (label, session) in sessions.iter_mut() {
            echo_rtt(session, format!("{label}#{round}").as_bytes()).await;
            echoes += 1;
        }
    }
    println!("1. multiplexing   2 clients x 3 sessions on one WebSocket each: {echoes} echoes, every one on its own session");

    // 2. Per-session authorization: the refusal does not disturb the other sessions.
    match alice.open("admin", Bytes::new()).await {
        Err(OpenError::Refused { code, reason, .. }) => {
            println!(
                "2. authorization  alice opens \"admin\" -> refused with {} {} ({reason})",
                code.get(),
                code.name().unwrap_or("")
            );
        }
        other => panic!("admin should be refused, got {other:?}"),
    }
    let rtt = echo_rtt(&mut sessions[0].1, b"still here").await;
    println!("                  her \"chat/general\" keeps working: echo in {rtt:.1?}");

    // 3. A flooding session is held to its granted rate (the opener paces its DATA; the
    //    server's throttle stands behind it) while its neighbour stays fast.
    let mut quiet = alice
        .open("chat/quiet", Bytes::new())
        .await
        .expect("open quiet");
    let mut unloaded: Vec<Duration> = Vec::new();
    for _ in 0..200 {
        unloaded.push(echo_rtt(&mut quiet, b"ping").await);
    }
    let mut flood = alice.open("flood", Bytes::new()).await.expect("open flood");
    let flood_task = tokio::spawn(async move {
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < Duration::from_secs(2) {
            if flood.send(Bytes::from_static(&[0u8; 64])).await.is_err() {
                break;
            }
            sent += 1;
            // Drain the echoes so only the rate limit, not our own reading, paces the flood.
            while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, flood.recv()).await {}
        }
        (sent, start.elapsed())
    });
    let mut loaded: Vec<Duration> = Vec::new();
    let load_start = Instant::now();
    while load_start.elapsed() < Duration::from_millis(1800) {
        loaded.push(echo_rtt(&mut quiet, b"ping").await);
    }
    let (flood_sent, flood_time) = flood_task.await.expect("flood task");
    let rate = flood_sent as f64 / flood_time.as_secs_f64();
    println!(
        "3. rate limiting  \"flood\" (limit 500 msg/s) pushed {flood_sent} messages in {flood_time:.1?} = {rate:.0} msg/s: held to its grant"
    );
    println!(
        "                  neighbour echo p50/p99: unloaded {:.2?}/{:.2?}, during the flood {:.2?}/{:.2?}",
        percentile(&mut unloaded, 0.5),
        percentile(&mut unloaded, 0.99),
        percentile(&mut loaded, 0.5),
        percentile(&mut loaded, 0.99),
    );

    // 4. A slow consumer: the server's producer is paced by the client's reading.
    let mut slow = bob.open("slow", Bytes::new()).await.expect("open slow");
    let mut read = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        if slow.recv().await.is_none() {
            break;
        }
        read += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = slow.stats().await.expect("stats");
    println!(
        "4. backpressure   bob reads \"slow\" at ~200 msg/s: read {read} in {:.1?}; buffered on his side now: {} messages, {} bytes",
        start.elapsed(),
        stats.recv_queued_messages,
        stats.recv_queued_bytes
    );
    println!("                  the server's producer waits in send().await instead of queueing: memory stays bounded");
    slow.reset(CloseCode::CANCELLED, "done").await;

    // 5. A topic with presence: fan-out to every authorized subscriber, join/leave events.
    let mut alice_lobby = alice
        .open("lobby", Bytes::new())
        .await
        .expect("alice joins the lobby");
    let first = next_topic_event(&mut alice_lobby).await;
    let mut bob_lobby = bob
        .open("lobby", Bytes::new())
        .await
        .expect("bob joins the lobby");
    let bob_first = next_topic_event(&mut bob_lobby).await;
    let joined = next_topic_event(&mut alice_lobby).await;
    let report = hub.publish("lobby", Bytes::from_static(b"welcome, everyone"));
    let alice_got = next_topic_event(&mut alice_lobby).await;
    let bob_got = next_topic_event(&mut bob_lobby).await;
    println!("5. topics         \"lobby\" with presence: alice's snapshot {first:?}; bob's {bob_first:?}");
    println!(
        "                  alice saw {joined:?}; one publish queued for {} subscribers:",
        report.queued
    );
    println!("                  alice got {alice_got:?}, bob got {bob_got:?}");
    drop(bob_lobby);
    let left = next_topic_event(&mut alice_lobby).await;
    println!("                  bob closes his session: alice sees {left:?}");

    let server_stats = handle.stats();
    println!(
        "\nserver: {} connections upgraded, {} live",
        server_stats.upgraded, server_stats.connections
    );
    for connection in handle.connections() {
        if let Some(s) = connection.stats().await {
            println!(
                "  connection: {} sessions opened, {} msgs in / {} out, {} rate-limit hits, {} credit stalls, closes: 1000x{} 4001x{}",
                s.sessions_opened,
                s.messages_received,
                s.messages_sent,
                s.rate_limit_hits,
                s.credit_stalls,
                s.closes(CloseCode::NORMAL),
                s.closes(CloseCode::FORBIDDEN)
            );
        }
    }
    alice.close().await;
    bob.close().await;
}
