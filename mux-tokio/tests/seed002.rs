#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Seed 002's eight vulnerability tests, rewritten for this design, over loopback.
//!
//! The seed's system had one global WebSocket manager for every user; its tests asked
//! whether that instance was shared, whether messages crossed between users, whether
//! concurrent users raced on shared state, whether one user's state changes reached the
//! others, whether memory accumulated, whether broadcasts were scoped, whether a connection
//! could be hijacked, and whether cleaning up one user touched the others. Here every
//! connection owns its own protocol state machine and task; the only state shared across
//! users is the connection registry (per-IP and per-principal counts) and a topic hub. Each
//! test checks the property on the real server, with several users at once, and checks the
//! shared state afterwards.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::hostile::{self, wire, Hostile, Options};
use common::{wait_until, within};
use mux_proto::Grant;
use mux_tokio::topic::{decode, LocalHub, SubscribeOptions, TopicEvent};
use mux_tokio::{
    AuthError, Client, ClientConfig, HandshakeRate, HandshakeRequest, OpenError, OpenInfo,
    OriginPolicy, Principal, Rejection, Server, ServerConfig, ServerHandle, Session,
};

fn authenticate(request: &HandshakeRequest) -> Result<Principal, AuthError> {
    let token = request.token.as_ref().map(|t| t.expose().to_owned());
    match token.as_deref().and_then(|t| t.strip_prefix("user:")) {
        Some(name) => Ok(Principal::new(name)),
        None => Err(AuthError::Missing),
    }
}

/// `topic/<name>`: anyone, receive-only. `admin-events`: only `admin`, receive-only.
/// `inbox/<owner>`: only its owner. `echo`: anyone.
async fn authorize(principal: Principal, open: OpenInfo) -> Result<Grant, Rejection> {
    let kind = open.kind.as_str();
    if kind.starts_with("topic/") {
        Ok(Grant::receive_only())
    } else if kind == "admin-events" {
        if principal.id == "admin" {
            Ok(Grant::receive_only())
        } else {
            Err(Rejection::forbidden("admins only"))
        }
    } else if let Some(owner) = kind.strip_prefix("inbox/") {
        if owner == principal.id {
            Ok(Grant::full())
        } else {
            Err(Rejection::forbidden("not your inbox"))
        }
    } else {
        Ok(Grant::full())
    }
}

struct Seed {
    url: String,
    addr: std::net::SocketAddr,
    handle: ServerHandle,
    hub: LocalHub,
    /// Topic sessions whose subscription is still running (the application holds each
    /// until it finishes).
    subscribed: Arc<AtomicUsize>,
}

/// The server's application: echo sessions answer `<principal>:<message>`; inboxes get
/// their owner's secret first; topic sessions are attached to the hub and held until their
/// subscription finishes.
async fn start() -> Seed {
    let config = ServerConfig::default()
        .origins(OriginPolicy::default().allow_missing(true))
        .connection_limits(10_000, 1_000, 100)
        // Every simulated user connects from 127.0.0.1.
        .handshake_rate(HandshakeRate::UNLIMITED);
    let mut server = Server::bind(common::loopback(), config, authenticate, authorize)
        .await
        .expect("bind");
    let addr = server.local_addr();
    let url = format!("ws://{addr}/");
    let handle = server.handle();
    let hub = LocalHub::new();
    let subscribed = Arc::new(AtomicUsize::new(0));
    let (app_hub, app_subscribed) = (hub.clone(), subscribed.clone());
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            let kind = session.kind().to_owned();
            if kind.starts_with("topic/") || kind == "admin-events" {
                // A user may close its session before the application attaches it: then
                // there is nothing to subscribe (AttachError::Closed), and nothing leaks.
                let mut sub = match app_hub.attach(&session, SubscribeOptions::default()) {
                    Ok(sub) => sub,
                    Err(mux_tokio::topic::AttachError::Closed) => continue,
                    Err(e) => panic!("attach: {e}"),
                };
                let subscribed = app_subscribed.clone();
                subscribed.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    // The subscription ends when the session does (dropping the session
                    // handle would cancel it).
                    sub.finished().await;
                    drop((sub, session));
                    subscribed.fetch_sub(1, Ordering::SeqCst);
                });
            } else {
                tokio::spawn(run(session));
            }
        }
    });
    Seed {
        url,
        addr,
        handle,
        hub,
        subscribed,
    }
}

fn secret_of(owner: &str) -> Bytes {
    Bytes::from(format!("secret-of-{owner}-7c1d"))
}

async fn run(mut session: Session) {
    let principal = session
        .principal()
        .map(|p| p.id.clone())
        .unwrap_or_default();
    if session.kind().strip_prefix("inbox/").is_some() {
        let _ = session.send(secret_of(&principal)).await;
    }
    while let Some(m) = session.recv().await {
        let reply = [principal.as_bytes(), b":", &m].concat();
        if session.send(Bytes::from(reply)).await.is_err() {
            break;
        }
    }
}

async fn user(url: &str, name: &str) -> Client {
    let config = ClientConfig::default()
        .token(format!("user:{name}"))
        .reconnect(false);
    within("a user to connect", Client::connect(url, config))
        .await
        .expect("connect")
}

async fn ask(session: &mut Session, message: &str) -> String {
    within("an echo", session.send(Bytes::from(message.to_owned())))
        .await
        .expect("send");
    let reply = within("an echo", session.recv()).await.expect("echo");
    String::from_utf8(reply.to_vec()).expect("UTF-8")
}

async fn next_topic_message(session: &mut Session) -> Bytes {
    loop {
        let m = within("a topic message", session.recv())
            .await
            .expect("topic open");
        if let Ok(TopicEvent::Message { payload, .. }) = decode(&m) {
            return payload;
        }
    }
}

/// Nothing but the position a topic subscription starts with arrives on `session` within
/// 200 ms.
async fn silent(session: &mut Session) {
    loop {
        let got = tokio::time::timeout(Duration::from_millis(200), session.recv()).await;
        match &got {
            Ok(Some(m)) if matches!(decode(m), Ok(TopicEvent::Position(_))) => continue,
            _ => assert!(got.is_err(), "unexpected: {got:?}"),
        }
        return;
    }
}

/// The shared state is empty: no connection, no registry key, no subscribed topic, no
/// subscription; the topics kept idle for subscribers that resume stay within the hub's bound.
async fn assert_nothing_shared_left(seed: &Seed) {
    common::wait_idle(&seed.handle).await;
    wait_until("every subscription has finished", || {
        seed.subscribed.load(Ordering::SeqCst) == 0 && seed.hub.topic_count() == 0
    })
    .await;
    let bound = mux_tokio::topic::HubOptions::default().max_idle_topics;
    assert!(seed.hub.idle_topic_count() <= bound);
}

/// Seed test 1, "singleton instance shared across users": each connection has its own
/// protocol instance. Two users both get session ID 1 on their own connections; each is
/// answered as itself, and ending one user's session 1 leaves the other's working.
#[tokio::test]
async fn each_user_gets_a_protocol_instance_of_their_own() {
    let seed = start().await;
    let mut alice = user(&seed.url, "alice").await;
    let mut bob = user(&seed.url, "bob").await;
    let a = alice.open("echo", Bytes::new()).await.unwrap();
    let mut b = bob.open("echo", Bytes::new()).await.unwrap();
    assert_eq!(
        (a.id().get(), b.id().get()),
        (1, 1),
        "IDs are per connection"
    );
    assert_eq!(seed.handle.connections().len(), 2);
    let mut a = a;
    assert_eq!(ask(&mut a, "hi").await, "alice:hi");
    assert_eq!(ask(&mut b, "hi").await, "bob:hi");
    a.reset(mux_proto::CloseCode::CANCELLED, "").await;
    assert_eq!(ask(&mut b, "still").await, "bob:still");
    drop(b);
    alice.close().await;
    bob.close().await;
    assert_nothing_shared_left(&seed).await;
}

/// Seed test 2, "message cross-contamination": 8 users × 3 sessions exchange 100 tagged
/// messages each, all at once. Every reply is attributed to its own user and carries its
/// own session's next tag, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_never_cross_between_users() {
    let seed = start().await;
    let mut runs = Vec::new();
    for u in 0..8 {
        let url = seed.url.clone();
        runs.push(tokio::spawn(async move {
            let name = format!("user{u}");
            let mut client = user(&url, &name).await;
            let mut sessions = Vec::new();
            for _ in 0..3 {
                sessions.push(client.open("echo", Bytes::new()).await.unwrap());
            }
            let work = sessions.iter_mut().enumerate().map(|(s, session)| {
                let name = name.clone();
                async move {
                    for i in 0..100 {
                        let tag = format!("{name}/{s}/{i}");
                        assert_eq!(ask(session, &tag).await, format!("{name}:{tag}"));
                    }
                }
            });
            futures_util::future::join_all(work).await;
            drop(sessions);
            client.close().await;
        }));
    }
    for run in runs {
        hostile::within_long("every user", run)
            .await
            .expect("a user failed");
    }
    assert_nothing_shared_left(&seed).await;
}

/// Seed test 3, "concurrent user race condition": 50 users connect, open a session and a
/// subscription, talk and leave, all at once, three times over. Every operation succeeds
/// and the shared registry and hub end empty, with exact counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_users_leave_the_shared_state_consistent() {
    let seed = start().await;
    for round in 0..3 {
        let mut runs = Vec::new();
        for u in 0..50 {
            let url = seed.url.clone();
            runs.push(tokio::spawn(async move {
                let name = format!("u{round}-{u}");
                let mut client = user(&url, &name).await;
                let mut echo = client.open("echo", Bytes::new()).await.unwrap();
                let topic = client.open("topic/race", Bytes::new()).await.unwrap();
                assert_eq!(ask(&mut echo, "x").await, format!("{name}:x"));
                drop((echo, topic));
                client.close().await;
            }));
        }
        for run in runs {
            hostile::within_long("every user", run)
                .await
                .expect("a user failed");
        }
        assert_nothing_shared_left(&seed).await;
    }
    let stats = seed.handle.stats();
    assert_eq!(stats.upgraded, 150);
    assert_eq!(stats.connections, 0);
}

/// Seed test 4, "state mutation affects all users": every budget and limit is per
/// connection. Alice floods PINGs until her connection is closed with 1008; Bob, right after,
/// may still send almost a whole budget's worth (900 PINGs) and keeps working; Alice's
/// protocol error changes nothing for Bob either.
#[tokio::test]
async fn one_users_violations_change_nothing_for_the_others() {
    let seed = start().await;
    let as_user =
        |name: &str| Options::default().header("Authorization", &format!("Bearer user:{name}"));
    let mut alice = Hostile::connect_with(seed.addr, &as_user("alice"), &[]).await;
    let mut bob = Hostile::connect_with(seed.addr, &as_user("bob"), &[]).await;
    bob.send(&[wire::open(1, b"echo", b"")]).await;
    let pings: Vec<Vec<u8>> = (0..1500).map(wire::ping).collect();
    alice.send(&pings).await;
    assert_eq!(alice.until_closed().await.codes(), (Some(1008), Some(1008)));
    let pings: Vec<Vec<u8>> = (0..900).map(wire::ping).collect();
    bob.send(&pings).await;
    bob.send(&[wire::message(1, b"ok")]).await;
    let echo = bob
        .expect("Bob's echo", |f| {
            (f.is_data() && f.sid == 1).then(|| f.payload.clone())
        })
        .await;
    assert_eq!(echo, b"bob:ok");
    // A protocol error from a third user: Bob is untouched again.
    let mut carol = Hostile::connect_with(seed.addr, &as_user("carol"), &[]).await;
    carol.send(&[wire::message(0, b"x")]).await;
    assert_eq!(carol.until_closed().await.codes(), (Some(1002), Some(1002)));
    bob.send(&[wire::message(1, b"again")]).await;
    let echo = bob
        .expect("Bob's echo", |f| {
            (f.is_data() && f.sid == 1).then(|| f.payload.clone())
        })
        .await;
    assert_eq!(echo, b"bob:again");
    bob.send(&[wire::conn_close(1000)]).await;
    bob.until_closed().await;
    assert_nothing_shared_left(&seed).await;
}

/// Seed test 5, "memory leak accumulation": 300 user lifecycles — half leave cleanly, half
/// vanish (TCP dropped mid-session), all with an echo session and a topic subscription that
/// never saw a publish. Afterwards no connection, registry key, topic, subscription or task
/// is left, and the process grew by less than 32 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_coming_and_going_leave_nothing_behind() {
    let seed = start().await;
    let tasks = hostile::alive_tasks();
    let rss = hostile::rss_bytes();
    for batch in 0..10 {
        let mut runs = Vec::new();
        for u in 0..30 {
            let (url, addr) = (seed.url.clone(), seed.addr);
            runs.push(tokio::spawn(async move {
                let name = format!("b{batch}-{u}");
                if u % 2 == 0 {
                    let mut client = user(&url, &name).await;
                    let mut echo = client.open("echo", Bytes::new()).await.unwrap();
                    let _topic = client
                        .open(&format!("topic/{name}"), Bytes::new())
                        .await
                        .unwrap();
                    assert_eq!(ask(&mut echo, "x").await, format!("{name}:x"));
                    client.close().await;
                } else {
                    let options =
                        Options::default().header("Authorization", &format!("Bearer user:{name}"));
                    let mut h = Hostile::connect_with(addr, &options, &[]).await;
                    let topic = format!("topic/{name}");
                    h.send(&[
                        wire::open(1, b"echo", b""),
                        wire::open(3, topic.as_bytes(), b""),
                        wire::message(1, b"x"),
                    ])
                    .await;
                    h.expect("the echo", |f| f.is_data().then_some(())).await;
                    drop(h); // vanishes without a close
                }
            }));
        }
        for run in runs {
            hostile::within_long("every user", run)
                .await
                .expect("a user failed");
        }
    }
    assert_nothing_shared_left(&seed).await;
    wait_until("tasks are back to the baseline", || {
        hostile::alive_tasks() <= tasks
    })
    .await;
    let grew = hostile::rss_bytes().saturating_sub(rss);
    println!("300 user lifecycles: RSS grew {} KiB", grew / 1024);
    assert!(grew < 32 << 20, "{grew}");
}

/// Seed test 6, "broadcast reaches all users": a publish reaches the subscribers of its
/// topic only; the admin topic is refused (4001) to a regular user at OPEN, so an admin
/// broadcast never reaches one.
#[tokio::test]
async fn broadcasts_reach_only_their_topic_and_its_authorized_subscribers() {
    let seed = start().await;
    let mut alice = user(&seed.url, "alice").await;
    let mut bob = user(&seed.url, "bob").await;
    let mut admin = user(&seed.url, "admin").await;
    let mut a = alice.open("topic/a", Bytes::new()).await.unwrap();
    let mut b = bob.open("topic/b", Bytes::new()).await.unwrap();
    let mut ops = admin.open("admin-events", Bytes::new()).await.unwrap();
    match bob.open("admin-events", Bytes::new()).await {
        Err(OpenError::Refused { code, .. }) => assert_eq!(code.get(), 4001),
        other => panic!("{other:?}"),
    }
    wait_until("three subscribers", || {
        seed.subscribed.load(Ordering::SeqCst) == 3
    })
    .await;
    assert_eq!(
        seed.hub
            .publish("topic/a", Bytes::from_static(b"for a"))
            .queued,
        1
    );
    assert_eq!(
        seed.hub
            .publish("admin-events", Bytes::from_static(b"root"))
            .queued,
        1
    );
    assert_eq!(next_topic_message(&mut a).await, "for a");
    assert_eq!(next_topic_message(&mut ops).await, "root");
    silent(&mut b).await;
    silent(&mut a).await;
    drop((a, b, ops));
    for c in [alice, bob, admin] {
        c.close().await;
    }
    assert_nothing_shared_left(&seed).await;
}

/// Seed test 7, "connection hijacking": Bob cannot reach Alice's session. Her session's ID
/// means nothing on his connection (DATA to it is a connection error 4005), opening her inbox
/// is refused (4001), whatever he sends is attributed to him, and her secret never reaches
/// him.
#[tokio::test]
async fn a_session_cannot_be_hijacked_from_another_connection() {
    let seed = start().await;
    let mut alice = user(&seed.url, "alice").await;
    let mut inbox = alice.open("inbox/alice", Bytes::new()).await.unwrap();
    let secret = within("Alice's secret", inbox.recv()).await.unwrap();
    assert_eq!(secret, secret_of("alice"));
    let bob_options = Options::default().header("Authorization", "Bearer user:bob");
    // Her session's ID, on his connection.
    let mut bob = Hostile::connect_with(seed.addr, &bob_options, &[]).await;
    bob.send(&[wire::message(inbox.id().get(), b"give me the secret")])
        .await;
    let ending = bob.until_closed().await;
    assert_eq!(ending.codes(), (Some(4005), Some(4005)));
    let mut got: Vec<u8> = ending
        .frames
        .iter()
        .flat_map(|f| f.payload.clone())
        .collect();
    // Her inbox by name.
    let mut bob = Hostile::connect_with(seed.addr, &bob_options, &[]).await;
    bob.send(&[wire::open(1, b"inbox/alice", b"")]).await;
    let refused = bob
        .expect("the refusal", |f| (f.ty == wire::RESET).then(|| f.code()))
        .await;
    assert_eq!(refused, Some(4001));
    // Whatever he opens is his.
    bob.send(&[wire::open(3, b"echo", b""), wire::message(3, b"I am alice")])
        .await;
    let echo = bob
        .expect("his echo", |f| {
            (f.is_data() && f.sid == 3).then(|| f.payload.clone())
        })
        .await;
    assert_eq!(echo, b"bob:I am alice");
    bob.send(&[wire::conn_close(1000)]).await;
    let ending = bob.until_closed().await;
    got.extend(ending.frames.iter().flat_map(|f| f.payload.clone()));
    let secret = secret_of("alice");
    assert!(!got.windows(secret.len()).any(|w| w == &secret[..]));
    // Alice's session is untouched.
    assert_eq!(ask(&mut inbox, "still mine").await, "alice:still mine");
    drop(inbox);
    alice.close().await;
    assert_nothing_shared_left(&seed).await;
}

/// Seed test 8, "cleanup affects wrong users": Alice has two connections, Bob one, all on
/// the same topic. Alice's first connection vanishes (its subscription and sessions are
/// cleaned up) and one of Bob's sessions is reset; Alice's other connection and Bob's other
/// sessions keep receiving, and the registry still counts exactly the survivors.
#[tokio::test]
async fn cleaning_up_one_connection_leaves_the_others_alone() {
    let seed = start().await;
    let options = Options::default().header("Authorization", "Bearer user:alice");
    let mut alice1 = Hostile::connect_with(seed.addr, &options, &[]).await;
    alice1
        .send(&[
            wire::open(1, b"topic/room", b""),
            wire::open(3, b"echo", b""),
        ])
        .await;
    alice1
        .expect("ACCEPT", |f| {
            (f.ty == wire::ACCEPT && f.sid == 3).then_some(())
        })
        .await;
    let mut alice2 = user(&seed.url, "alice").await;
    let mut bob = user(&seed.url, "bob").await;
    let mut a2 = alice2.open("topic/room", Bytes::new()).await.unwrap();
    let mut b_topic = bob.open("topic/room", Bytes::new()).await.unwrap();
    let mut b_echo = bob.open("echo", Bytes::new()).await.unwrap();
    let b_other = bob.open("echo", Bytes::new()).await.unwrap();
    wait_until("three subscribers", || {
        seed.hub.subscriber_count("topic/room") == 3
    })
    .await;
    assert_eq!(seed.handle.tracked_keys(), (1, 2));

    drop(alice1); // vanishes
    b_other.reset(mux_proto::CloseCode::CANCELLED, "").await;
    wait_until("Alice's first connection is cleaned up", || {
        seed.handle.stats().connections == 2 && seed.hub.subscriber_count("topic/room") == 2
    })
    .await;
    assert_eq!(
        seed.handle.tracked_keys(),
        (1, 2),
        "both principals still registered"
    );
    assert_eq!(
        seed.hub
            .publish("topic/room", Bytes::from_static(b"after"))
            .queued,
        2
    );
    assert_eq!(next_topic_message(&mut a2).await, "after");
    assert_eq!(next_topic_message(&mut b_topic).await, "after");
    assert_eq!(ask(&mut b_echo, "fine").await, "bob:fine");
    drop((a2, b_topic, b_echo));
    alice2.close().await;
    bob.close().await;
    assert_nothing_shared_left(&seed).await;
}
