#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Ending a session without losing data (spec/sessions.md#dropping-a-session): for each order
//! in which the two sides finish, every message sent arrives and both sides see how the
//! session ended.

mod common;

use bytes::Bytes;
use common::{bind, open_config, within};
use mux_proto::CloseCode;
use mux_tokio::{AllowAll, Client, ClientConfig, Session, SessionSender};
use tokio::sync::mpsc;

fn message(session: usize, i: usize) -> Bytes {
    Bytes::from(format!("s{session}-m{i}"))
}

/// The README's handler: echo until the peer's FIN, then let the session go.
async fn readme_loop(mut session: Session) -> SessionSender {
    let sender = session.sender();
    while let Some(m) = session.recv().await {
        if session.send(m).await.is_err() {
            break;
        }
    }
    sender
}

/// Reads until the session ends; returns what arrived.
async fn read_all(session: &mut Session) -> Vec<Bytes> {
    let mut got = Vec::new();
    while let Some(m) = session.recv().await {
        got.push(m);
    }
    got
}

/// A server whose every session is handled by `handler`; each handler's session sender,
/// once the session has ended, goes to the returned channel.
async fn server_with<F, Fut>(handler: F) -> (String, mpsc::UnboundedReceiver<SessionSender>)
where
    F: Fn(Session) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = SessionSender> + Send + 'static,
{
    let (mut server, url) = bind(open_config(), AllowAll, AllowAll).await;
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let handler = std::sync::Arc::new(handler);
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            let done_tx = done_tx.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let sender = handler(session).await;
                sender.closed().await;
                let _ = done_tx.send(sender);
            });
        }
    });
    (url, done_rx)
}

fn code_of(sender: &SessionSender) -> Option<CloseCode> {
    sender.close_reason().map(|c| c.code)
}

/// Messages `0..count` of `session`, in order.
fn messages(session: usize, count: usize) -> Vec<Bytes> {
    (0..count).map(|i| message(session, i)).collect()
}

/// Waits for the next session the server reports ended, and checks it ended with 1000.
async fn server_session_ends_normally(done: &mut mpsc::UnboundedReceiver<SessionSender>) {
    let server_side = within("the server's session ends", done.recv())
        .await
        .unwrap();
    assert_eq!(code_of(&server_side), Some(CloseCode::NORMAL));
}

#[tokio::test]
async fn client_finishes_first_and_the_readme_loop_delivers_its_last_echo() {
    let (url, mut done) = server_with(readme_loop).await;
    let mut client = Client::connect(&url, ClientConfig::default())
        .await
        .unwrap();
    let mut session = client.open("echo", Bytes::new()).await.unwrap();
    for i in 0..10 {
        session.send(message(0, i)).await.unwrap();
    }
    session.finish().await;
    let got = within("all echoes", read_all(&mut session)).await;
    assert_eq!(got, messages(0, 10));
    assert_eq!(
        session.close_reason().map(|c| c.code),
        Some(CloseCode::NORMAL)
    );
    server_session_ends_normally(&mut done).await;
}

#[tokio::test]
async fn fifty_concurrent_readme_loops_deliver_every_echo_and_see_fin() {
    let (url, mut done) = server_with(readme_loop).await;
    let mut client = Client::connect(&url, ClientConfig::default())
        .await
        .unwrap();
    let mut sessions = Vec::new();
    for _ in 0..50 {
        sessions.push(client.open("echo", Bytes::new()).await.unwrap());
    }
    let mut runs = tokio::task::JoinSet::new();
    for (n, mut session) in sessions.into_iter().enumerate() {
        runs.spawn(async move {
            // Send everything (the window holds 20 small messages), then FIN, then read
            // every echo.
            for i in 0..20 {
                session.send(message(n, i)).await.unwrap();
            }
            session.finish().await;
            let got = read_all(&mut session).await;
            (n, got, session.close_reason().map(|c| c.code))
        });
    }
    let mut finished = 0;
    while let Some(run) = within("the 50 sessions", runs.join_next()).await {
        let (n, got, code) = run.unwrap();
        assert_eq!(got, messages(n, 20), "session {n}");
        assert_eq!(code, Some(CloseCode::NORMAL), "session {n}");
        finished += 1;
    }
    assert_eq!(finished, 50);
    for _ in 0..50 {
        let server_side = within("the server's sessions end", done.recv())
            .await
            .unwrap();
        assert_eq!(code_of(&server_side), Some(CloseCode::NORMAL));
    }
}

#[tokio::test]
async fn server_finishes_first_and_the_client_loop_delivers_its_last_echo() {
    let (url, mut done) = server_with(|mut session: Session| async move {
        for i in 0..10 {
            session.send(message(1, i)).await.unwrap();
        }
        session.finish().await;
        let got = read_all(&mut session).await;
        assert_eq!(got, messages(1, 10));
        session.sender()
    })
    .await;
    let mut client = Client::connect(&url, ClientConfig::default())
        .await
        .unwrap();
    let session = client.open("echo", Bytes::new()).await.unwrap();
    let client_side = within("the client's loop", readme_loop(session)).await;
    server_session_ends_normally(&mut done).await;
    within("the client's session ends", client_side.closed()).await;
    assert_eq!(code_of(&client_side), Some(CloseCode::NORMAL));
}

#[tokio::test]
async fn both_finish_before_reading_and_everything_arrives() {
    let (url, mut done) = server_with(|mut session: Session| async move {
        for i in 0..10 {
            session.send(message(2, i)).await.unwrap();
        }
        session.finish().await;
        let got = read_all(&mut session).await;
        assert_eq!(got, messages(3, 10));
        session.sender()
    })
    .await;
    let mut client = Client::connect(&url, ClientConfig::default())
        .await
        .unwrap();
    let mut session = client.open("both", Bytes::new()).await.unwrap();
    for i in 0..10 {
        session.send(message(3, i)).await.unwrap();
    }
    session.finish().await;
    let got = within("the server's messages", read_all(&mut session)).await;
    assert_eq!(got, messages(2, 10));
    // The peer's FIN ends `recv`; the session ends once our own FIN is out too.
    within("the client's session ends", session.closed()).await;
    assert_eq!(
        session.close_reason().map(|c| c.code),
        Some(CloseCode::NORMAL)
    );
    server_session_ends_normally(&mut done).await;
}

#[tokio::test]
async fn dropping_before_the_peer_finishes_still_delivers_what_was_sent() {
    let (url, mut done) = server_with(|mut session: Session| async move {
        let got = read_all(&mut session).await;
        assert_eq!(got, messages(4, 10));
        session.sender()
    })
    .await;
    let mut client = Client::connect(&url, ClientConfig::default())
        .await
        .unwrap();
    let session = client.open("drop", Bytes::new()).await.unwrap();
    let sender = session.sender();
    for i in 0..10 {
        sender.send(message(4, i)).await.unwrap();
    }
    drop(session);
    let server_side = within("the server's session ends", done.recv())
        .await
        .unwrap();
    let closed = server_side.close_reason().unwrap();
    assert_eq!(closed.code, CloseCode::CANCELLED);
    assert!(closed.by_peer);
    within("the client's session ends", sender.closed()).await;
    assert_eq!(code_of(&sender), Some(CloseCode::CANCELLED));
}

#[tokio::test]
async fn an_explicit_reset_ends_the_session_with_its_code() {
    let (url, mut done) = server_with(|mut session: Session| async move {
        let _ = read_all(&mut session).await;
        session.sender()
    })
    .await;
    let mut client = Client::connect(&url, ClientConfig::default())
        .await
        .unwrap();
    let mut session = client.open("reset", Bytes::new()).await.unwrap();
    session.send(message(5, 0)).await.unwrap();
    session.reset(CloseCode::REVOKED, "gone").await;
    let server_side = within("the server's session ends", done.recv())
        .await
        .unwrap();
    let closed = server_side.close_reason().unwrap();
    assert_eq!(closed.code, CloseCode::REVOKED);
    assert!(closed.by_peer);
}

/// A split session: a writer task sends and finishes through the sending half while this
/// task reads every echo through the receiving half, and both sides end normally.
#[tokio::test]
async fn a_split_session_writes_in_one_task_and_reads_in_another() {
    let (url, mut done) = server_with(readme_loop).await;
    let mut client = Client::connect(&url, ClientConfig::default())
        .await
        .unwrap();
    let session = client.open("echo", Bytes::new()).await.unwrap();
    let (mut receiver, sender) = session.into_split();
    assert_eq!(receiver.id(), sender.id());
    assert_eq!(receiver.kind(), "echo");
    let writer = tokio::spawn(async move {
        for i in 0..10 {
            sender.send(message(1, i)).await.unwrap();
        }
        sender.finish().await;
        sender
    });
    let mut got = Vec::new();
    while let Some(m) = within("an echo", receiver.recv()).await {
        got.push(m);
    }
    assert_eq!(got, messages(1, 10));
    assert_eq!(
        receiver.close_reason().map(|c| c.code),
        Some(CloseCode::NORMAL)
    );
    let sender = within("the writer", writer).await.unwrap();
    assert!(
        sender.send(message(1, 10)).await.is_err(),
        "nothing is sent after FIN"
    );
    server_session_ends_normally(&mut done).await;
}
