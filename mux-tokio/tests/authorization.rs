#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Per-session authorization end to end over loopback: full, receive-only, rate-limited and
//! refused grants, enforcement against a peer that ignores its grant, a client that keeps
//! to its granted rate by itself, and the authorization deadline.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{bind, open_config, within, RawPeer};
use mux_proto::frame::{Data, Frame, Open, OpenRequest, Text};
use mux_proto::{CloseCode, Grant, Permissions, RateLimits, RatePolicy, SessionId};
use mux_tokio::{
    Client, ClientConfig, OpenError, OpenInfo, Principal, Rejection, SendError, Session,
};
use tokio::sync::mpsc;

const AUTHORIZE_TIMEOUT: Duration = Duration::from_millis(200);

/// The `metered` grant: 200 messages a second, 40 at once.
const METERED: RateLimits = RateLimits {
    messages_per_sec: 200,
    bytes_per_sec: 0,
    burst_messages: 40,
    burst_bytes: 0,
};

/// public: full; metered: full within a message rate, reset at the first message over it;
/// feed: receive-only; admin: forbidden; stall: never answers.
async fn authorizer(_: Principal, open: OpenInfo) -> Result<Grant, Rejection> {
    match open.kind.as_str() {
        "public" => Ok(Grant::full()),
        "metered" => Ok(Grant::full().with_rate(METERED, RatePolicy::CloseSession)),
        "feed" => Ok(Grant::receive_only()),
        "stall" => std::future::pending().await,
        _ => Err(Rejection::forbidden("admins only")),
    }
}

/// Starts the server: `public` sessions echo, `feed` sessions are handed to the test.
async fn server() -> (String, std::net::SocketAddr, mpsc::Receiver<Session>) {
    let config = open_config().authorize_timeout(AUTHORIZE_TIMEOUT);
    let (mut server, url) = bind(config, mux_tokio::AllowAll, authorizer).await;
    let addr = server.local_addr();
    let (feeds_tx, feeds) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            match session.kind() {
                "public" | "metered" => {
                    tokio::spawn(common::echo(session));
                }
                "feed" => {
                    let _ = feeds_tx.send(session).await;
                }
                other => panic!("the authorizer let {other:?} through"),
            }
        }
    });
    (url, addr, feeds)
}

async fn echo_once(session: &mut Session, text: &str) {
    within("an echo", async {
        session
            .send(Bytes::copy_from_slice(text.as_bytes()))
            .await
            .expect("send");
        assert_eq!(session.recv().await.as_deref(), Some(text.as_bytes()));
    })
    .await;
}

#[tokio::test]
async fn grants_and_refusals_per_session() {
    let (url, _, mut feeds) = server().await;
    let mut client = within(
        "connect",
        Client::connect(&url, ClientConfig::default().reconnect(false)),
    )
    .await
    .expect("connect");

    let mut public = within("open public", client.open("public", Bytes::new()))
        .await
        .expect("public is granted");
    echo_once(&mut public, "one").await;

    // admin is refused with 4001 FORBIDDEN; the connection and its sessions live on.
    match within(
        "open admin",
        client.open("admin", Bytes::from_static(b"creds")),
    )
    .await
    {
        Err(OpenError::Refused { code, .. }) => assert_eq!(code, CloseCode::FORBIDDEN),
        other => panic!("admin: {other:?}"),
    }
    echo_once(&mut public, "two").await;
    let mut second = within("open public again", client.open("public", Bytes::new()))
        .await
        .expect("another public session");
    echo_once(&mut second, "three").await;

    // feed is receive-only: the server may send, the client may not.
    let mut feed = within("open feed", client.open("feed", Bytes::new()))
        .await
        .expect("feed is granted");
    let mut server_feed = within("the server's feed session", feeds.recv())
        .await
        .expect("feed session");
    server_feed
        .send(Bytes::from_static(b"tick-1"))
        .await
        .expect("server may send on feed");
    assert_eq!(
        within("tick", feed.recv()).await.as_deref(),
        Some(&b"tick-1"[..])
    );
    // A well-behaved client learns from the ACCEPT and refuses locally, sending nothing.
    assert_eq!(
        within("send on feed", feed.send(Bytes::from_static(b"nope"))).await,
        Err(SendError::NotPermitted)
    );
    server_feed
        .send(Bytes::from_static(b"tick-2"))
        .await
        .expect("feed still open");
    assert_eq!(
        within("tick", feed.recv()).await.as_deref(),
        Some(&b"tick-2"[..])
    );
    assert!(feed.close_reason().is_none());
    echo_once(&mut public, "four").await;
}

#[tokio::test]
async fn authorizer_that_never_answers_is_refused_with_4006_in_time() {
    let (url, _, _feeds) = server().await;
    let mut client = within(
        "connect",
        Client::connect(&url, ClientConfig::default().reconnect(false)),
    )
    .await
    .expect("connect");
    let mut public = within("open public", client.open("public", Bytes::new()))
        .await
        .expect("public");
    let handle = client.connection().await.expect("live connection");

    let started = Instant::now();
    let stalled = tokio::spawn(async move { handle.open("stall", Bytes::new()).await });
    // While that authorization hangs, other sessions on the connection keep working.
    echo_once(&mut public, "meanwhile").await;
    let mut other = within("open public", client.open("public", Bytes::new()))
        .await
        .expect("open during a stalled authorization");
    echo_once(&mut other, "meanwhile-2").await;

    let result = within("the stalled open", stalled).await.expect("join");
    let elapsed = started.elapsed();
    match result {
        Err(OpenError::Refused { code, .. }) => assert_eq!(code, CloseCode::TIMEOUT),
        other => panic!("stall: {other:?}"),
    }
    assert!(
        elapsed >= AUTHORIZE_TIMEOUT,
        "refused after {elapsed:?}, before the deadline"
    );
    // How exactly the deadline fires is checked on the paused clock
    // (tests/paused_clock.rs); over real sockets only its lower bound is.
    echo_once(&mut public, "after").await;
}

#[tokio::test]
async fn data_on_a_receive_only_session_closes_it_with_1008() {
    let (_, addr, mut feeds) = server().await;
    // A peer that ignores its grant: raw frames, no local permission check.
    let mut peer = RawPeer::connect(addr, common::default_settings()).await;
    let open = |id: u32, kind: &'static str| {
        Frame::Open(Open {
            session_id: SessionId(id),
            request: OpenRequest::default(),
            kind: Text::from_static(kind),
            auth: mux_proto::Credential::EMPTY,
        })
    };
    let data = |id: u32, payload: &'static [u8]| {
        Frame::Data(Data {
            session_id: SessionId(id),
            end: true,
            fin: false,
            payload: Bytes::from_static(payload),
        })
    };
    peer.send(&[open(1, "feed")]).await;
    let permissions = peer
        .expect("ACCEPT of the feed", |f| match f {
            Frame::Accept(a) if a.session_id == SessionId(1) => Some(a.permissions),
            _ => None,
        })
        .await;
    assert_eq!(permissions, Permissions::RECEIVE);
    let mut server_feed = within("the server's feed session", feeds.recv())
        .await
        .expect("feed session");

    peer.send(&[data(1, b"not allowed")]).await;
    let code = peer
        .expect("RESET of the feed", |f| match f {
            Frame::Reset(r) if r.session_id == SessionId(1) => Some(r.code),
            _ => None,
        })
        .await;
    assert_eq!(code, CloseCode::POLICY_VIOLATION);
    // The application's handle ends with the same code; the violating message never arrives.
    assert_eq!(within("feed to end", server_feed.recv()).await, None);
    let reason = server_feed.close_reason().expect("close reason");
    assert_eq!(reason.code, CloseCode::POLICY_VIOLATION);
    let sent = server_feed.send(Bytes::from_static(b"x")).await;
    assert!(
        matches!(&sent, Err(SendError::Closed(c)) if c.code == CloseCode::POLICY_VIOLATION),
        "{sent:?}"
    );

    // The connection lives on: a public session on it still echoes.
    peer.send(&[open(3, "public"), data(3, b"still here")])
        .await;
    let echoed = peer
        .expect("the echo on session 3", |f| match f {
            Frame::Data(d) if d.session_id == SessionId(3) => Some(d.payload.clone()),
            _ => None,
        })
        .await;
    assert_eq!(&echoed[..], b"still here");
}

#[tokio::test]
async fn a_full_accept_queue_refuses_with_4003_after_the_deadline() {
    let mut config = open_config().authorize_timeout(AUTHORIZE_TIMEOUT);
    config.accept_queue = 1;
    // The application does not call accept() for now.
    let (mut server, url) = bind(config, mux_tokio::AllowAll, authorizer).await;
    let mut client = within(
        "connect",
        Client::connect(&url, ClientConfig::default().reconnect(false)),
    )
    .await
    .expect("connect");
    let queued = within("open the first", client.open("public", Bytes::new()))
        .await
        .expect("the first session fits the queue");

    let started = Instant::now();
    match within("open the second", client.open("public", Bytes::new())).await {
        Err(OpenError::Refused { code, .. }) => assert_eq!(code, CloseCode::TOO_MANY_SESSIONS),
        other => panic!("second open: {other:?}"),
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= AUTHORIZE_TIMEOUT, "refused after {elapsed:?}");

    // Once the application takes the queued session, there is room again.
    let mut first = within("accept", server.accept()).await.expect("queued");
    assert_eq!(first.id(), queued.id());
    let mut queued = queued;
    queued
        .send(Bytes::from_static(b"hello"))
        .await
        .expect("send");
    assert_eq!(
        within("recv", first.recv()).await.as_deref(),
        Some(&b"hello"[..])
    );
    let third = within("open the third", client.open("public", Bytes::new()))
        .await
        .expect("room again");
    let accepted = within("accept", server.accept()).await.expect("third");
    assert_eq!(accepted.id(), third.id());
}

#[tokio::test]
async fn dropping_a_session_cancels_it_on_the_peer_with_4010() {
    let (url, _, mut feeds) = server().await;
    let mut client = within(
        "connect",
        Client::connect(&url, ClientConfig::default().reconnect(false)),
    )
    .await
    .expect("connect");
    let feed = within("open feed", client.open("feed", Bytes::new()))
        .await
        .expect("feed");
    let mut server_feed = within("the server's feed session", feeds.recv())
        .await
        .expect("feed session");
    drop(feed);
    assert_eq!(within("the feed to end", server_feed.recv()).await, None);
    let reason = server_feed.close_reason().expect("close reason");
    assert_eq!(reason.code, CloseCode::CANCELLED);
    assert!(reason.by_peer);
}

/// The server resets a `metered` session (4002) at the first message over its rate; the
/// client, sending as fast as `send` lets it, paces itself within the grant it received, so
/// every message arrives and is echoed, in order, and it takes at least as long as the rate
/// allows.
#[tokio::test]
async fn a_client_keeps_to_its_granted_rate_by_itself() {
    const MESSAGES: u32 = 80;
    let (url, _, _feeds) = server().await;
    let mut client = within(
        "connect",
        Client::connect(&url, ClientConfig::default().reconnect(false)),
    )
    .await
    .expect("connect");
    let mut metered = within("open metered", client.open("metered", Bytes::new()))
        .await
        .expect("metered is granted");
    let start = Instant::now();
    let sender = metered.sender();
    let sending = tokio::spawn(async move {
        for i in 0..MESSAGES {
            sender.send(Bytes::from(i.to_be_bytes().to_vec())).await?;
        }
        Ok::<_, SendError>(())
    });
    for i in 0..MESSAGES {
        let echo = within("an echo", metered.recv()).await;
        assert_eq!(echo.as_deref(), Some(&i.to_be_bytes()[..]), "echo {i}");
    }
    within("the sender", sending)
        .await
        .expect("task")
        .expect("every send");
    // 10 at once, then 50 more at 200/s: at least 250 ms.
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(245),
        "{elapsed:?}: not paced"
    );
    echo_once(&mut metered, "still open").await;
}
